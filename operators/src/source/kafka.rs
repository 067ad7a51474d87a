//! Kafka input: one rdkafka [`BaseConsumer`] per worker, statically assigned partitions.
//!
//! - Worker `i` of `n` (all processes together) reads the partitions `p` with `p % n == i`,
//!   through `assign()`: the consumer group is only where offsets are committed, it never
//!   rebalances. A worker without partitions creates no consumer and its source drops its
//!   capability at once.
//! - The worker never blocks: [`PartitionReader::read`] polls with a zero timeout until the
//!   queue is empty, and the consumer queue's "non-empty" callback wakes the source operator
//!   through a [`SyncActivator`] (with a 100 ms re-check as a safety net).
//! - Start offsets: the group's committed offset of each partition, else `earliest`, `latest`
//!   or the first message at or after a time ([`StartOffset`]; the broker's record timestamps,
//!   looked up with `offsets_for_times`). A committed offset written by sessionflow carries the
//!   partition's [`Cut`] as commit metadata (`{"v":"sessionflow/1","frontier":F,"max_ts":T}`);
//!   every worker reads the commits of all partitions and resumes its own at the job's resume
//!   frontier `D` = the largest `F` (see [`super`] for why that is exact). A partition without
//!   a sessionflow commit then resumes from its start offset with a fresh watermark.
//! - `stop_at_end`: each worker fetches its partitions' high watermarks when it starts and
//!   ends a partition once it read up to there (bounded run, like a replay); with
//!   `end_time_ms`, at its first message at or after that time where that comes first.
//! - `idle_timeout_ms`: a partition without a message for that long is marked idle and stops
//!   holding the frontier; it holds it again from its next message, which is assigned no
//!   earlier than the worker's capability. Off by default: idleness depends on arrival times,
//!   so with it, window assignment (and so the output) is no longer a function of the data
//!   alone, and a restart is exact only if no partition was idle at the last commits (the
//!   committed frontier may pass an idle partition's window). Without it, a partition that
//!   receives nothing holds every window open (standard event-time semantics).
//! - Each partition has its own queue (`split_partition_queue`), read laggard first, up to
//!   256 messages per librdkafka call (`rd_kafka_consume_batch_queue`, see `batch_queue`).
//!   Watermark alignment: a partition whose watermark window ran more than twice
//!   `max_windows_ahead` windows past the sinks' frontier is left in its queue (librdkafka
//!   stops fetching it once `queued.max.messages.kbytes` is reached) until the frontier
//!   catches up, so when one partition lags, or has not delivered its first
//!   message yet, the others do not pile their records up in memory (the whole-source
//!   throttle alone cannot see that: the worker's window is the laggard's). Pausing it
//!   instead would drop its prefetched messages and stall on a new fetch at every resume.
//! - Commits run on a thread of the reader's own ([`PartitionReader::commit`] only hands the
//!   cuts over): a synchronous commit there returns once the broker stored the offsets, which
//!   is what [`PartitionReader::acknowledged`] reports (librdkafka reports nothing back for an
//!   asynchronous commit without a configured callback). Cut sets waiting behind a slow commit
//!   merge into one; a commit never stores a cut older than one already stored.
//! - Broker down at start: every blocking call made before the dataflow runs (metadata,
//!   committed offsets, watermarks) is retried with backoff until `connect_timeout_ms` (a
//!   request's own timeout ends there too), each failure logged on stderr; then a clear error.
//!   Once running, librdkafka reconnects by itself (its errors are logged, rate-limited); only
//!   fatal consumer errors stop the source.
//! - Partitions added to the topic while the job runs stop it with an error that says so (each
//!   worker's partitions are fixed at the start; leaving new ones unread would lose their
//!   events silently, with `latest` for good): a restart reads them, from `start`. The
//!   consumer learns of them with its metadata refresh (`topic.metadata.refresh.interval.ms`,
//!   5 min by default) and its statistics report them. Not with `stop_at_end`, which reads
//!   what the topic held at the start.
//! - Transactional input: only committed transactions are read (librdkafka's default
//!   `isolation.level=read_committed`). Their markers, and aborted messages, take offsets no
//!   message has: a caught-up reader compares the consumer's position with the offset after
//!   the last message taken, so the cuts (the final ones above all) point past them.
//! - A topic deleted while the job runs stops it with an error that says so, rather than
//!   waiting for a topic that may come back under the name with offsets of other events: the
//!   consumer's statistics flag assigned partitions the metadata no longer lists (librdkafka
//!   decides so ~30 s after a metadata refresh first misses them).
//! - One librdkafka fault is worked around (the Kafka sinks do the same for their producers,
//!   see `sink::kafka`): a consumer whose statistics have listed no broker for
//!   `STRANDED_AFTER` (a broker that shut down told it there are none, and it never
//!   bootstraps again) is replaced by a new one with the same settings, assigned each
//!   partition right after the last message the reader took; its commits go through the new
//!   one too.
//!
//! The helpers here ([`client_config`], [`ClientLog`], [`retry`], [`block_on`],
//! [`parse_option`]) are shared with the Kafka sinks.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::Client;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};
use timely::scheduling::SyncActivator;

use super::batch_queue::{BatchQueue, Polled};
use super::{Cut, PartitionReader, RawRecord, ReadStatus, Watermarks};
use crate::sink::kafka::{knows_a_broker, StrandedClock, STRANDED_AFTER};

/// How long a blocking metadata/offset request may take before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The least time a request retried until a deadline is given, even at the deadline.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);
/// Re-check delay when the queue is empty (the non-empty callback usually wakes us first).
const IDLE_RECHECK: Duration = Duration::from_millis(100);
/// How soon a source holding a partition back (watermark alignment) looks again.
const HELD_RECHECK: Duration = Duration::from_millis(2);
/// How often a caught-up reader asks the consumer for its positions (see
/// [`KafkaReader::check_positions`]): a marker after the last message is committed past within
/// about this long (plus the commit interval).
const POSITION_RECHECK: Duration = Duration::from_secs(1);
/// Least time between two log lines of one client (more are counted, then summarised).
const LOG_EVERY: Duration = Duration::from_secs(2);
/// Most messages taken from a partition queue in one call (count): enough to make the
/// per-call cost vanish, small enough for one call's copies to stay in the cache.
const BATCH: usize = 256;

/// Where a partition without a committed offset starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartOffset {
    /// The oldest message still in the partition.
    #[default]
    Earliest,
    /// The end of the partition: only messages produced after the start.
    Latest,
    /// The first message whose Kafka timestamp (the record's, `CreateTime` or
    /// `LogAppendTime` as the topic keeps them, not the event's `timestamp`) is at or after
    /// this time, in ms since the Unix epoch; the end of a partition without one.
    Time(i64),
}

impl StartOffset {
    /// The `auto.offset.reset` of this start: where a partition whose committed offset is no
    /// longer in the log (retention removed it) starts. After a time: `earliest`, the oldest
    /// message kept, which is later than the committed offset's.
    fn reset(self) -> &'static str {
        match self {
            StartOffset::Earliest | StartOffset::Time(_) => "earliest",
            StartOffset::Latest => "latest",
        }
    }
}

/// Settings of the Kafka source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers: a comma-separated list of `host:port`.
    pub brokers: String,
    /// Topic to read (all of its partitions, spread over the workers).
    pub topic: String,
    /// Consumer group the offsets are committed under (a name; the group never rebalances).
    pub group: String,
    /// Where a partition without a committed offset starts (`earliest`, `latest`, or a time
    /// in ms since the Unix epoch).
    pub start: StartOffset,
    /// Stop each partition at the end offset it had when the job started (bounded run).
    pub stop_at_end: bool,
    /// With `stop_at_end`: end each partition at its first message with a Kafka timestamp at
    /// or after this time (ms since the Unix epoch) instead, where that comes first (a time
    /// range of a topic, with `start`); `None`: at the end offset.
    pub end_time_ms: Option<i64>,
    /// A partition without a message for this long stops holding the frontier, in
    /// milliseconds; `None` (the default) never: deterministic output.
    pub idle_timeout_ms: Option<u64>,
    /// How long to keep retrying to reach the brokers at start, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a bounded run keeps retrying its final offset commit (after its outputs are
    /// in place) while the brokers are unreachable, in milliseconds.
    pub final_commit_timeout_ms: u64,
    /// Interval of librdkafka statistics (the consumer lag gauge, and the brokers the consumer
    /// knows), in milliseconds; 0 is the default, 1000 (`-X statistics.interval.ms=0` turns
    /// them off, and with them the check for a consumer that lost every broker).
    pub stats_interval_ms: u64,
    /// librdkafka options as `(key, value)`, applied after ours (`-X key=value`); a key
    /// prefixed `consumer:` or `producer:` applies to that kind of client only.
    pub options: Vec<(String, String)>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        KafkaSourceConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: String::new(),
            group: String::new(),
            start: StartOffset::Earliest,
            stop_at_end: false,
            end_time_ms: None,
            idle_timeout_ms: None,
            connect_timeout_ms: 60_000,
            final_commit_timeout_ms: 300_000,
            stats_interval_ms: 0,
            options: Vec::new(),
        }
    }
}

impl KafkaSourceConfig {
    /// The settings of worker `index`'s consumer: ours, then the `-X` options (an error if one
    /// would change a [`FIXED_OPTIONS`] option). Nothing connects: `run` calls it first to
    /// reject such an option before any dataflow starts.
    pub fn consumer_config(&self, index: usize) -> Result<ClientConfig, String> {
        let mut ours = vec![
            // Offsets are committed under this group; partitions are assigned, never
            // subscribed, so the group never rebalances.
            ("group.id", self.group.clone()),
            // Offsets are committed only once the output is durable (consistent cuts).
            ("enable.auto.commit", "false".to_string()),
            // ... and never stored implicitly by poll() either.
            ("enable.auto.offset.store", "false".to_string()),
            // A committed offset no longer in the log (retention removed it) restarts here, as
            // does a partition started at `earliest` (see `StartOffset::reset`).
            ("auto.offset.reset", self.start.reset().to_string()),
            // --stop-at-end: an EOF event tells that a partition reached its end even when its
            // last offsets are not messages (transaction markers, compaction).
            ("enable.partition.eof", self.stop_at_end.to_string()),
            // Names this worker in the broker's logs.
            ("client.id", format!("sessionflow-source-{index}")),
        ];
        ours.extend(PREFETCH_OPTIONS.map(|(k, v)| (k, v.to_string())));
        // The consumer-lag gauge of the progress line and the brokers the consumer knows (to
        // notice it lost them all, see `KafkaReader::read`) come from librdkafka's statistics.
        let stats_ms = if self.stats_interval_ms > 0 {
            self.stats_interval_ms
        } else {
            1000
        };
        ours.push(("statistics.interval.ms", stats_ms.to_string()));
        client_config(&self.brokers, &ours, &self.options, ClientKind::Consumer)
    }
}

/// The kind of Kafka client an option list is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// A consumer (the source).
    Consumer,
    /// A producer (the sinks, `generate`).
    Producer,
    /// An admin or metadata-only client.
    Admin,
}

/// Parses one `-X key=value` option (kcat style). Errors say what is wrong.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("bad Kafka option {text:?}: expected key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("bad Kafka option {text:?}: empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The librdkafka options of a `--kafka-config` file (kcat's `-F`) followed by the `-X` ones
/// (so a `-X` option overrides the file's): one `key=value` per line; blank lines and lines
/// starting with `#` are skipped. For secrets (`sasl.password`, `ssl.key.password`), which on
/// the command line anyone on the host can read with `ps`. An error names the file and line,
/// never the line's text (it may hold a secret).
pub fn options_with_file(file: Option<&Path>, options: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
    let mut all = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the Kafka options file {}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `parse_option`'s own error quotes the line: not repeated here.
            let option = parse_option(line).map_err(|_| {
                format!(
                    "{}:{}: expected a librdkafka option key=value (or a # comment)",
                    path.display(),
                    i + 1
                )
            })?;
            all.push(option);
        }
    }
    all.extend(options.iter().cloned());
    Ok(all)
}

/// Checks a topic name by Kafka's rules (1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`),
/// so a bad name is a clear error at once, not a minute of retried metadata requests.
pub fn parse_topic(text: &str) -> Result<String, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() {
        return Err("a topic name cannot be empty".into());
    }
    if text == "." || text == ".." {
        return Err(format!("{text:?} is not a topic name Kafka allows"));
    }
    if let Some(c) = text.chars().find(|c| !legal(*c)) {
        return Err(format!(
            "topic name {text:?} has {c:?}: Kafka allows only a-z, A-Z, 0-9, '.', '_' and '-'"
        ));
    }
    // All ASCII from here: its length in bytes is its length in characters.
    if text.len() > 249 {
        return Err(format!(
            "topic name of {} characters: Kafka allows at most 249",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// Checks a `--brokers` list: comma-separated, no entry empty (librdkafka would otherwise
/// retry a list of nothing until the connect timeout).
pub fn parse_brokers(text: &str) -> Result<String, String> {
    if text.split(',').any(|b| b.trim().is_empty()) {
        return Err(format!("bad broker list {text:?}: expected host:port[,host:port...]"));
    }
    Ok(text.to_string())
}

/// How a [`FIXED_OPTIONS`] value is compared: librdkafka takes several spellings of some.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spelling {
    /// Compared as written (names, addresses).
    Exact,
    /// A boolean: `true`, `t`, `1` or `false`, `f`, `0`, in any case.
    Bool,
    /// `acks`: `all` or `-1`, else a number.
    Acks,
    /// `auto.offset.reset`: `earliest` (`smallest`, `beginning`) or `latest` (`largest`,
    /// `end`), in any case.
    Reset,
}

/// The options sessionflow's guarantees rest on, each with why. Where a client sets one,
/// `-X` may repeat its value (in any spelling librdkafka takes), never change it: a changed
/// one is an error before anything connects, not a job that silently commits offsets ahead of
/// its output or loses acknowledged snapshots. Every other option `-X` overrides.
pub const FIXED_OPTIONS: [(&str, &str); 8] = [
    ("bootstrap.servers", "--brokers sets it"),
    ("group.id", "--group sets it"),
    (
        "enable.auto.commit",
        "offsets are committed only once the output is durable, by sessionflow",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only once the output is durable, by sessionflow",
    ),
    ("auto.offset.reset", "--start sets it"),
    ("enable.partition.eof", "--stop-at-end finds each partition's end by it"),
    ("acks", "a message counts as written once every in-sync replica has it"),
    (
        "enable.idempotence",
        "a retried message must be neither duplicated nor reordered",
    ),
];

/// librdkafka's other names for [`FIXED_OPTIONS`] keys.
const FIXED_ALIASES: [(&str, &str); 3] = [
    ("metadata.broker.list", "bootstrap.servers"),
    ("auto.commit.enable", "enable.auto.commit"),
    ("request.required.acks", "acks"),
];

fn spelling(key: &str) -> Spelling {
    match key {
        "enable.auto.commit" | "enable.auto.offset.store" | "enable.partition.eof" | "enable.idempotence" => {
            Spelling::Bool
        }
        "acks" => Spelling::Acks,
        "auto.offset.reset" => Spelling::Reset,
        _ => Spelling::Exact,
    }
}

/// `value` as librdkafka reads it, for comparing two spellings of one option.
fn canonical(spelling: Spelling, value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    match (spelling, lower.as_str()) {
        // A group " g" is not the group "g".
        (Spelling::Exact, _) => value.to_string(),
        (Spelling::Bool, "true" | "t" | "1") => "true".into(),
        (Spelling::Bool, "false" | "f" | "0") => "false".into(),
        (Spelling::Acks, "all" | "-1") => "all".into(),
        (Spelling::Reset, "earliest" | "smallest" | "beginning") => "earliest".into(),
        (Spelling::Reset, "latest" | "largest" | "end") => "latest".into(),
        _ => lower,
    }
}

/// An error if the user's `key=value` (`typed` as given, with its prefix) would change a
/// [`FIXED_OPTIONS`] option that `cfg` (the client's settings so far) sets.
fn check_fixed(cfg: &ClientConfig, typed: &str, key: &str, value: &str) -> Result<(), String> {
    let name = FIXED_ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, name)| *name);
    let Some((_, why)) = FIXED_OPTIONS.iter().find(|(k, _)| *k == name) else {
        return Ok(());
    };
    let Some(ours) = cfg.get(name) else {
        return Ok(());
    };
    let spelling = spelling(name);
    if canonical(spelling, ours) == canonical(spelling, value) {
        return Ok(());
    }
    Err(format!(
        "Kafka option {typed}={value} (-X or --kafka-config): sessionflow sets {name}={ours} itself ({why}); remove the option"
    ))
}

/// A client configuration: `ours` (each hard-coded option is commented where it is set), then
/// the user's `extra` options, which win, except over the [`FIXED_OPTIONS`] (an error). An
/// extra key prefixed `consumer:` or `producer:` applies to that kind of client only (admin
/// clients take the unprefixed ones).
pub fn client_config(
    brokers: &str,
    ours: &[(&str, String)],
    extra: &[(String, String)],
    kind: ClientKind,
) -> Result<ClientConfig, String> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    // Our log callback decides what to print; librdkafka need not format debug lines.
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    // librdkafka's first (bootstrap) connection also waits out its "sparse connection"
    // interval, half of this backoff: with the default 100 ms, a new client's first metadata
    // request waited ~50 ms for a broker it was already connecting to, and a job took ~120 ms
    // to its first message (a metadata client, then the consumers). 20 ms makes it 25-45 ms.
    // A lost broker is retried after 20 ms, then 40, 80 ... up to `reconnect.backoff.max.ms`
    // (10 s), as before.
    cfg.set("reconnect.backoff.ms", "20");
    for (k, v) in ours {
        cfg.set(*k, v.as_str());
    }
    for (k, v) in extra {
        let key = match (k.split_once(':'), kind) {
            (Some(("consumer", rest)), ClientKind::Consumer) | (Some(("producer", rest)), ClientKind::Producer) => rest,
            (Some(("consumer" | "producer", _)), _) => continue,
            _ => k.as_str(),
        };
        check_fixed(&cfg, k, key, v)?;
        cfg.set(key, v.as_str());
    }
    // rust-rdkafka applies this level after librdkafka read the options, over the one `debug`
    // implies: a user's `debug` or `log_level` option would otherwise print nothing.
    if cfg.get("debug").is_some_and(|d| !d.is_empty()) {
        cfg.set_log_level(RDKafkaLogLevel::Debug);
    } else if let Some(level) = cfg.get("log_level").and_then(|l| l.trim().parse::<u8>().ok()) {
        cfg.set_log_level(log_level(level));
    }
    Ok(cfg)
}

/// librdkafka's (syslog) level number as rust-rdkafka's level.
fn log_level(level: u8) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// Rate-limited stderr logging of one Kafka client (librdkafka's log lines and errors).
#[derive(Debug)]
pub struct ClientLog {
    label: String,
    state: Mutex<(Option<Instant>, u64)>,
    /// The last error librdkafka reported (for a final error message to name it).
    last_error: Mutex<Option<String>>,
}

impl ClientLog {
    /// A log whose lines start with `label` (e.g. `kafka source (worker 0)`).
    pub fn new(label: impl Into<String>) -> Self {
        ClientLog {
            label: label.into(),
            state: Mutex::new((None, 0)),
            last_error: Mutex::new(None),
        }
    }

    /// Prints `message`, unless a line was printed less than 2 s ago (then it is counted and
    /// the count shows on the next printed line).
    pub fn note(&self, message: &str) {
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        if s.0.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            s.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut s.1);
        s.0 = Some(now);
        drop(s);
        if suppressed > 0 {
            eprintln!("{}: {message} ({suppressed} more messages suppressed)", self.label);
        } else {
            eprintln!("{}: {message}", self.label);
        }
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// For `ClientContext::error`: notes the error (rate-limited) and keeps it as the last one,
    /// unless it only says that no broker is up (a consequence: the cause came before it).
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let message = format!("{error}: {reason}");
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.remember(&message);
        }
        self.note(&message);
    }

    fn remember(&self, message: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message.to_string());
        }
    }

    /// The last error [`ClientLog::error`] was given, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// `e`, followed by the last error librdkafka reported, if any: a request that failed for
    /// want of a broker (a transport failure, a timeout) says why there was none (a refused
    /// authentication, a certificate that did not verify, an unknown host).
    pub fn explain(&self, e: String) -> String {
        match self.last_error() {
            Some(last) => {
                let hint = tls_hint(&last).map_or(String::new(), |h| format!(" ({h})"));
                format!("{e}; the client's last error: {last}{hint}")
            }
            None => e,
        }
    }

    /// For `ClientContext::log`: warnings and worse are noted (rate-limited); milder lines
    /// arrive only when the user asked for them (`debug` or `log_level`), and all are printed.
    /// Errors and worse are also kept as the last error (a broker connection's failure is
    /// logged so, with its cause).
    pub fn librdkafka(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            let line = format!("librdkafka {fac}: {message}");
            if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
                self.remember(&line);
            }
            self.note(&line);
        } else {
            eprintln!("{}: librdkafka {fac}: {message}", self.label);
        }
    }
}

/// What a TLS alert in librdkafka's error means for the user, where OpenSSL's words leave it
/// open: the broker's "bad certificate" (42) or "certificate required" (116) is about the
/// client's certificate, which it refused or did not get.
fn tls_hint(error: &str) -> Option<&'static str> {
    (error.contains("alert bad certificate") || error.contains("alert certificate required")).then_some(
        "the broker refused this client's certificate, or its lack of one: a listener with mutual TLS \
         wants ssl.certificate.location and ssl.key.location, or ssl.keystore.location, with a \
         certificate it trusts",
    )
}

/// Runs `attempt` until it succeeds or `deadline` passes, sleeping 0.2 s, 0.4 s ... (at most
/// 5 s) between attempts and logging every failure on stderr. The final error names `what`.
/// Each attempt is given the timeout of its blocking request (`request_timeout`).
pub fn retry<T>(
    label: &str,
    what: &str,
    deadline: Instant,
    mut attempt: impl FnMut(Duration) -> Result<T, String>,
) -> Result<T, String> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match attempt(request_timeout(deadline)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "{what}: {e} (gave up after {:.0} s)",
                        started.elapsed().as_secs_f64()
                    ));
                }
                let wait = pause.min(deadline - now);
                eprintln!(
                    "{label}: {what}: {e}; retrying in {:.1} s ({:.0} s left)",
                    wait.as_secs_f64(),
                    (deadline - now).as_secs_f64()
                );
                std::thread::sleep(wait);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The timeout of one blocking request retried until `deadline` (see [`retry`]):
/// [`REQUEST_TIMEOUT`], but no later than the deadline, so that the retries end there
/// (`--connect-timeout 5s` gives up after 5 s, not after the last 3 s request), and at least
/// [`MIN_REQUEST_TIMEOUT`].
pub(crate) fn request_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(MIN_REQUEST_TIMEOUT, REQUEST_TIMEOUT)
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread (for rdkafka's admin futures, which are
/// completed by rdkafka's own thread; no async runtime needed).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// The number of partitions of `topic` (an error when it does not exist or has none), asked
/// with a metadata request of at most `timeout`.
pub fn topic_partitions<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Result<u32, String> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot fetch metadata: {e}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| format!("topic {topic} not in metadata"))?;
    if let Some(e) = t.error() {
        let code = RDKafkaErrorCode::from(e);
        return Err(if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            format!("topic {topic} does not exist")
        } else {
            format!("topic {topic}: {code}")
        });
    }
    match t.partitions().len() {
        0 => Err(format!("topic {topic} has no partitions (yet)")),
        n => Ok(n as u32),
    }
}

/// The settings of a client that only asks for metadata (a plain client with no group, or an
/// admin client), named `client_id` in the broker's logs, with the user's `extra` options.
pub fn metadata_config(brokers: &str, client_id: &str, extra: &[(String, String)]) -> Result<ClientConfig, String> {
    let ours = [
        // Names this process in the broker's logs.
        ("client.id", client_id.to_string()),
        // Asking for a missing topic must not create it (with the broker's defaults).
        ("allow.auto.create.topics", "false".to_string()),
    ];
    client_config(brokers, &ours, extra, ClientKind::Admin)
}

/// Waits (retrying, see [`retry`]) until `topic` exists on `brokers`; returns its partition
/// count. For a clear error before any dataflow starts.
pub fn wait_for_topic(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
    deadline: Instant,
) -> Result<u32, String> {
    MetadataClient::new(brokers, extra)?.wait_for_topic(topic, deadline)
}

/// One metadata-only client for the checks `run` makes before any dataflow starts (one
/// librdkafka client, its threads and its bootstrap connection, for all of them).
pub struct MetadataClient {
    brokers: String,
    log: Arc<ClientLog>,
    client: BaseConsumer<LogContext>,
    /// The client's settings (for a consumer of a group, see `group_positions`).
    config: ClientConfig,
}

/// Where a consumer group stands on one partition (see [`MetadataClient::group_positions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPosition {
    /// The partition.
    pub partition: u32,
    /// The group's committed offset, if any.
    pub committed: Option<u64>,
    /// The cut sessionflow committed with it, if it was sessionflow's.
    pub cut: Option<Cut>,
    /// The partition's oldest offset still in the log.
    pub low: u64,
    /// The partition's end offset (high watermark).
    pub high: u64,
}

impl MetadataClient {
    /// A client of `brokers` with the user's `extra` options (security, ...); connects lazily.
    pub fn new(brokers: &str, extra: &[(String, String)]) -> Result<MetadataClient, String> {
        let log = Arc::new(ClientLog::new(format!("kafka {brokers}")));
        let config = metadata_config(brokers, "sessionflow-metadata", extra)?;
        let client = config
            .create_with_context(LogContext(Arc::clone(&log)))
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        Ok(MetadataClient {
            brokers: brokers.to_string(),
            log,
            client,
            config,
        })
    }

    /// See [`wait_for_topic`].
    pub fn wait_for_topic(&self, topic: &str, deadline: Instant) -> Result<u32, String> {
        retry(
            self.log.label(),
            &format!("cannot reach topic {topic} on {}", self.brokers),
            deadline,
            |timeout| served_topic_partitions(&self.client, topic, timeout).map_err(|e| self.log.explain(e)),
        )
    }

    /// Where `group` stands on each of `topic`'s partitions: its committed offset and cut (as
    /// sessionflow wrote them), and the partition's low and high watermarks. For `sessionflow
    /// offsets`, which shows where a stopped job will resume. Retried until `deadline`.
    pub fn group_positions(&self, topic: &str, group: &str, deadline: Instant) -> Result<Vec<GroupPosition>, String> {
        let count = self.wait_for_topic(topic, deadline)?;
        // Committed offsets are read through a consumer of the group; it never joins it.
        let consumer: BaseConsumer<LogContext> = self
            .config
            .clone()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create_with_context(LogContext(Arc::clone(&self.log)))
            .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
        let what = format!("cannot read the committed offsets of group {group}");
        let committed = retry(self.log.label(), &what, deadline, |timeout| {
            committed_cuts(&consumer, topic, count, timeout).map_err(|e| self.log.explain(e.to_string()))
        })?;
        let mut out = Vec::with_capacity(count as usize);
        for (p, (offset, cut)) in (0..count).zip(committed) {
            let what = format!("cannot read the watermarks of partition {p}");
            let (low, high) = retry(self.log.label(), &what, deadline, |timeout| {
                consumer
                    .fetch_watermarks(topic, p as i32, timeout)
                    .map_err(|e| self.log.explain(e.to_string()))
            })?;
            out.push(GroupPosition {
                partition: p,
                committed: offset,
                cut,
                low: low.max(0) as u64,
                high: high.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Checks that no consumer is a member of `group`. sessionflow commits under the group
    /// without joining it (its partitions are assigned), and the broker refuses such commits
    /// while the group has members (`UNKNOWN_MEMBER_ID`): the job would run without its
    /// offsets ever moving. This happens when the group is still used by the job sessionflow
    /// replaces, so it is an error before any dataflow starts, naming the members. Best
    /// effort: a broker that does not answer (or does not let us describe the group) passes
    /// the check, with a warning.
    pub fn check_group_unused(&self, group: &str, deadline: Instant) -> Result<(), String> {
        // Not retried, so longer than one request's `request_timeout`: finding the group's
        // coordinator and describing the group are two round trips.
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(MIN_REQUEST_TIMEOUT, REQUEST_TIMEOUT * 3);
        let groups = self.client.fetch_group_list(Some(group), timeout);
        serve_events(&self.client);
        let groups = match groups {
            Ok(g) => g,
            Err(e) => {
                eprintln!(
                    "{}: warning: cannot describe consumer group {group} ({e}): not checked for other members",
                    self.log.label()
                );
                return Ok(());
            }
        };
        let Some(info) = groups.groups().iter().find(|g| g.name() == group) else {
            return Ok(());
        };
        let members = info.members();
        if members.is_empty() {
            return Ok(());
        }
        let mut who: Vec<String> = members
            .iter()
            .map(|m| format!("{} at {}", m.client_id(), m.client_host().trim_start_matches('/')))
            .collect();
        who.sort();
        who.dedup();
        Err(format!(
            "consumer group {group} has {} active member(s) ({}; state {}): Kafka refuses offset \
             commits from outside a group while it has members, so this job could never commit. \
             Stop those consumers (the job this one replaces?) or choose another --group",
            members.len(),
            who.join(", "),
            info.state()
        ))
    }
}

/// [`topic_partitions`] through a metadata client (no group), whose queued events are then
/// served (its main queue polled), so that what librdkafka said about a failure has reached
/// the client's log (and [`ClientLog::explain`]).
pub fn served_topic_partitions<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<u32, String> {
    let found = topic_partitions(client.client(), topic, timeout);
    serve_events(client);
    found
}

/// Serves the events queued on a client with no group (its main queue): librdkafka's log lines
/// and errors reach its context only so. A client that is never polled otherwise (one that
/// only asks for metadata) would keep to itself why it cannot reach a broker.
fn serve_events<C: ConsumerContext>(client: &BaseConsumer<C>) {
    // Bounded: the queue holds what happened during one request, not an endless stream.
    for _ in 0..1000 {
        if client.poll(Duration::ZERO).is_none() {
            break;
        }
    }
}

/// A client context that logs through a [`ClientLog`].
#[derive(Clone, Debug)]
pub struct LogContext(pub Arc<ClientLog>);

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl ConsumerContext for LogContext {}

/// The consumer lag of one reader's partitions, from librdkafka's statistics (read by the
/// progress line and the metrics).
#[derive(Debug, Default)]
pub struct ConsumerLag {
    /// `(partition, messages)` of each partition the consumer has a position in, as of its
    /// latest statistics; `None` until the first.
    partitions: Mutex<Option<Vec<(u32, i64)>>>,
}

impl ConsumerLag {
    fn report(&self, lags: Vec<(u32, i64)>) {
        if let Ok(mut p) = self.partitions.lock() {
            *p = Some(lags);
        }
    }

    /// Messages not read yet, over the partitions; `None` until the first statistics (or
    /// with statistics off).
    pub fn total(&self) -> Option<i64> {
        let p = self.partitions.lock().ok()?;
        p.as_ref().map(|v| v.iter().map(|(_, l)| l).sum())
    }

    /// `(partition, messages not read yet)` of each partition with a position, by partition.
    pub fn partitions(&self) -> Vec<(u32, i64)> {
        self.partitions.lock().ok().and_then(|p| p.clone()).unwrap_or_default()
    }
}

/// The source consumer's context: logs, the lag gauge, commit results.
struct SourceContext {
    log: Arc<ClientLog>,
    topic: String,
    lag: Arc<ConsumerLag>,
    /// Since when the consumer's statistics show no broker.
    stranded: Arc<StrandedClock>,
    /// The most partitions of the topic its statistics listed (count; 0 until the first).
    partitions_seen: Arc<AtomicU32>,
    /// Partitions this consumer is assigned that its latest statistics report gone from the
    /// cluster's metadata (librdkafka's "desired partition is no longer available").
    partitions_gone: Arc<AtomicU32>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.stranded.report(knows_a_broker(&statistics));
        if let Some(t) = statistics.topics.get(&self.topic) {
            // Partitions the metadata shows (not the ones only asked for, nor the internal -1).
            let known = t.partitions.values().filter(|p| p.partition >= 0 && !p.unknown).count();
            self.partitions_seen
                .fetch_max(u32::try_from(known).unwrap_or(u32::MAX), Ordering::Relaxed);
            // Partitions leave a topic only with the topic: librdkafka flags an assigned one
            // the metadata no longer lists (after its propagation grace, ~30 s) and logs it.
            let gone = t
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired && p.unknown)
                .count();
            self.partitions_gone
                .store(u32::try_from(gone).unwrap_or(u32::MAX), Ordering::Relaxed);
            // Messages not read yet: last stable offset (or high watermark) minus the position.
            let mut lags: Vec<(u32, i64)> = t
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.app_offset >= 0)
                .map(|p| {
                    let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
                    (p.partition as u32, (end - p.app_offset).max(0))
                })
                .collect();
            lags.sort_unstable();
            self.lag.report(lags);
        }
    }
}

impl ConsumerContext for SourceContext {}

type SourceConsumer = BaseConsumer<SourceContext>;

/// How long closing a consumer may take before it is left to rdkafka's own close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A shared source consumer. The last handle dropped closes the consumer promptly (see
/// [`close_promptly`]); partition queues hold plain references to it and must go first.
#[derive(Clone)]
struct ConsumerHandle(Arc<SourceConsumer>);

impl std::ops::Deref for ConsumerHandle {
    type Target = Arc<SourceConsumer>;

    fn deref(&self) -> &Arc<SourceConsumer> {
        &self.0
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        // Two last handles dropped at once on two threads may both see the other: then
        // rdkafka's own (slower) close runs, which is still correct.
        if Arc::strong_count(&self.0) == 1 {
            close_promptly(&self.0);
        }
    }
}

/// Closes a group consumer without waiting on a timer. rdkafka's drop starts the close and
/// then polls the consumer's queue in 100 ms waits that the close's completion does not
/// end, so every consumer took ~100 ms to drop: at the end of every bounded run, and at the
/// start on a worker without partitions. Here the queue is served without blocking until
/// the consumer reports itself closed (a message still queued is dropped with it); rdkafka's
/// drop then finds it closed and returns at once (it logs that through the `log` crate).
fn close_promptly(consumer: &SourceConsumer) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while !consumer.closed() && Instant::now() < deadline {
        // Serves the close's own operations; what it returns is of no use any more.
        let _ = consumer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Part {
    id: u32,
    /// `stop_at_end`: the high watermark at start (exclusive end offset).
    end: Option<u64>,
    ended: bool,
    last_data: Instant,
    /// Where a new consumer resumes this partition: after the last message taken, else where
    /// the first consumer started.
    next: Offset,
    /// The partition's own message queue (split from the consumer's).
    queue: Option<PartQueue>,
}

/// A partition's own queue: rdkafka's split queue, which keeps it apart from the consumer's
/// queue and wakes the source when it becomes non-empty, and the handle it is read through,
/// in batches. Fields drop in order: the batch handle before the split queue.
struct PartQueue {
    batch: BatchQueue<SourceContext>,
    _split: PartitionQueue<SourceContext>,
}

/// The commit metadata of a [`Cut`] (what the offset itself does not say).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CutMeta {
    /// Format marker: `"sessionflow/1"`.
    v: String,
    /// Resume frontier (window index).
    frontier: u64,
    /// Largest timestamp before the offset, ms.
    max_ts: Option<i64>,
}

const META_VERSION: &str = "sessionflow/1";

/// The commit metadata string of `cut`.
pub fn cut_metadata(cut: &Cut) -> String {
    let meta = CutMeta {
        v: META_VERSION.into(),
        frontier: cut.frontier,
        max_ts: cut.max_ts,
    };
    serde_json::to_string(&meta).unwrap_or_default()
}

/// The cut of a committed `offset` of `partition` with `metadata`; `None` when the metadata
/// was not written by sessionflow.
pub fn parse_cut(partition: u32, offset: u64, metadata: &str) -> Option<Cut> {
    let m: CutMeta = serde_json::from_str(metadata).ok()?;
    (m.v == META_VERSION).then_some(Cut {
        partition,
        offset,
        frontier: m.frontier,
        max_ts: m.max_ts,
    })
}

/// Reads this worker's share of a topic's partitions (see the module docs).
pub struct KafkaReader {
    topic: String,
    log: Arc<ClientLog>,
    consumer: Option<ConsumerHandle>,
    /// The consumer's settings, for a replacement (`None` without a consumer).
    client_cfg: Option<ClientConfig>,
    /// Consumers replaced so far (count).
    replacements: u64,
    parts: Vec<Part>,
    resume: Vec<Cut>,
    activator: Arc<OnceLock<SyncActivator>>,
    idle_timeout: Option<Duration>,
    final_commit_timeout: Duration,
    stop_at_end: bool,
    lag: Arc<ConsumerLag>,
    /// Since when the current consumer's statistics show no broker (see
    /// [`KafkaReader::replace_consumer`]).
    stranded: Arc<StrandedClock>,
    /// The topic's partitions when the job started (count).
    topic_partitions: u32,
    /// The most partitions the consumer's statistics have listed since (count).
    partitions_seen: Arc<AtomicU32>,
    /// Assigned partitions the current consumer's statistics report gone (count).
    partitions_gone: Arc<AtomicU32>,
    told_ended: bool,
    /// Commit state shared with the commit thread and [`KafkaCommitter`].
    commits: Option<Arc<CommitShared>>,
    /// The commit thread, started at the first commit.
    commit_thread: Option<CommitThread>,
    /// Messages taken from a partition queue and not yet handled (kept: empty between calls).
    polled: Vec<Polled>,
    /// What [`PartitionReader::serve`] took from the consumer's own queue that is not an event
    /// (a message or an error), handled by the next `read` before anything else.
    deferred: Vec<Polled>,
    /// Partitions whose next offset moved past offsets without messages (see
    /// [`KafkaReader::check_positions`]), for [`PartitionReader::skipped`].
    skips: Vec<(u32, u64)>,
    /// When the consumer's positions were last compared with what was read.
    positions_checked: Option<Instant>,
}

/// What the commit thread and the final commit share.
struct CommitShared {
    topic: String,
    group: String,
    log: Arc<ClientLog>,
    /// The reader's current consumer (swapped when it is replaced).
    consumer: Mutex<ConsumerHandle>,
    /// 1 + the largest frontier the broker acknowledged (0: none).
    acked: AtomicU64,
    /// Per partition, the `(frontier, offset)` last stored: held while committing, so commits
    /// are serialized and never go back.
    stored: Mutex<BTreeMap<u32, (u64, u64)>>,
}

impl CommitShared {
    /// Commits the cuts newer than what is stored, synchronously (blocks until the broker
    /// answered); on success records them and the acknowledged frontier.
    fn commit(&self, cuts: &[Cut]) -> Result<(), String> {
        let mut stored = self.stored.lock().map_err(|_| "commit state poisoned".to_string())?;
        let fresh: Vec<Cut> = cuts
            .iter()
            .filter(|c| stored.get(&c.partition).is_none_or(|&old| (c.frontier, c.offset) > old))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            let tpl = cut_list(&self.topic, &fresh)?;
            let consumer = self
                .consumer
                .lock()
                .map_err(|_| "commit state poisoned".to_string())?
                .clone();
            consumer.commit(&tpl, CommitMode::Sync).map_err(|e| match e {
                // The group has members now: `run` checked it had none at the start.
                KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::IllegalGeneration) => {
                    format!(
                        "{e}: consumer group {} has members now (another consumer joined it), and \
                         Kafka refuses commits from outside a group while it has members: stop them",
                        self.group
                    )
                }
                e => e.to_string(),
            })?;
            for c in &fresh {
                stored.insert(c.partition, (c.frontier, c.offset));
            }
        }
        if let Some(f) = cuts.iter().map(|c| c.frontier).max() {
            self.acked.fetch_max(f.saturating_add(1), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The reader's commit thread: takes cut sets from a channel, merges the ones waiting, commits
/// them (see [`CommitShared::commit`]); a failure is logged and the source issues the cuts
/// again. Dropping it lets the thread finish its commit and waits for it.
struct CommitThread {
    tx: Option<mpsc::Sender<Vec<Cut>>>,
    handle: Option<JoinHandle<()>>,
}

impl CommitThread {
    fn spawn(shared: Arc<CommitShared>) -> Result<CommitThread, String> {
        let (tx, rx) = mpsc::channel::<Vec<Cut>>();
        let handle = std::thread::Builder::new()
            .name("kafka-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut merged: BTreeMap<u32, Cut> = BTreeMap::new();
                    for cuts in std::iter::once(first).chain(rx.try_iter()) {
                        for c in cuts {
                            merged.insert(c.partition, c);
                        }
                    }
                    let cuts: Vec<Cut> = merged.into_values().collect();
                    if let Err(e) = shared.commit(&cuts) {
                        // The source issues them (or later ones) again; nothing is lost.
                        shared.log.note(&format!("offset commit failed (retried): {e}"));
                    }
                }
            })
            .map_err(|e| format!("cannot start the Kafka commit thread: {e}"))?;
        Ok(CommitThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }
}

impl Drop for CommitThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // The partition queues refer to the consumer and the commit thread to the commit
        // state, which holds a handle: both go first, so that the consumer's last handle,
        // here or in a `KafkaCommitter`, sees itself last and closes it promptly.
        self.drop_queues();
        self.commit_thread = None;
    }
}

/// Commits cuts on behalf of a [`KafkaReader`] after its dataflow completed.
#[derive(Clone)]
pub struct KafkaCommitter {
    log: Arc<ClientLog>,
    shared: Option<Arc<CommitShared>>,
    timeout: Duration,
}

impl KafkaCommitter {
    /// Commits `cuts` synchronously, retrying with backoff for up to
    /// [`KafkaSourceConfig::final_commit_timeout_ms`] (a broker restart at the very end of a
    /// bounded run is ridden out like one in its middle). Serialized with the reader's commit
    /// thread; a cut older than one already stored is skipped.
    pub fn commit_sync(&self, cuts: &[Cut]) -> Result<(), String> {
        let Some(shared) = &self.shared else { return Ok(()) };
        if cuts.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        // A commit's own wait is librdkafka's (the final commit is not a start-up request).
        retry(self.log.label(), "cannot commit the final offsets", deadline, |_| {
            shared.commit(cuts)
        })
    }
}

/// A source consumer with `context`, whose own queue wakes the source through `activator`.
fn new_consumer(
    client_cfg: &ClientConfig,
    context: SourceContext,
    activator: &Arc<OnceLock<SyncActivator>>,
) -> Result<SourceConsumer, String> {
    let mut consumer: SourceConsumer = client_cfg
        .create_with_context(context)
        .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
    consumer.set_nonempty_callback(waker(activator));
    Ok(consumer)
}

/// A librdkafka queue's non-empty callback: wakes the source through `activator` (once set).
fn waker(activator: &Arc<OnceLock<SyncActivator>>) -> impl Fn() + Send + Sync + 'static {
    let wake = Arc::clone(activator);
    move || {
        if let Some(a) = wake.get() {
            // Fails only when the worker is gone; nothing left to wake then.
            let _ = a.activate();
        }
    }
}

/// The source consumer's prefetch options (librdkafka's), public so that a benchmark can read
/// a topic as the job does.
pub const PREFETCH_OPTIONS: [(&str, &str); 3] = [
    // Prefetch per partition (each partition has a queue of its own): 8 MB keeps the workers
    // fed; librdkafka's 64 MB default only adds memory (~200 MB more for 4 partitions, same
    // throughput).
    ("queued.max.messages.kbytes", "8192"),
    // Up to 4 MiB of a partition per fetch, not librdkafka's 1 MiB: a quarter of the fetch
    // requests, which halved the local broker's CPU while a 1M-event job read the topic and
    // took ~10% off the job's wall time (same CPU in the job, ~25 MB more peak memory). A
    // plain read of the topic is no faster with it, so the bench's limit stays as it was.
    ("max.partition.fetch.bytes", "4194304"),
    // A full queue (a partition held back by watermark alignment, or read behind a window
    // being processed) postpones that partition's next fetch by this much; librdkafka's 1 s
    // default left drained partitions waiting for data (the job ran ~15% slower, and 3-4x
    // slower with small queues).
    ("fetch.queue.backoff.ms", "10"),
];

fn cut_list(topic: &str, cuts: &[Cut]) -> Result<TopicPartitionList, String> {
    let mut tpl = TopicPartitionList::with_capacity(cuts.len());
    for cut in cuts {
        let offset = i64::try_from(cut.offset).map_err(|_| format!("offset {} out of range", cut.offset))?;
        let mut elem = tpl.add_partition(topic, cut.partition as i32);
        elem.set_offset(Offset::Offset(offset)).map_err(|e| e.to_string())?;
        elem.set_metadata(cut_metadata(cut));
    }
    Ok(tpl)
}

/// The consumer group's committed offset of each of `topic`'s `count` partitions, in partition
/// order, with the cut sessionflow committed with it (`(None, None)`: no commit; `(Some, None)`:
/// a commit that is not sessionflow's). One request, not retried.
fn committed_cuts<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    count: u32,
    timeout: Duration,
) -> KafkaResult<Vec<(Option<u64>, Option<Cut>)>> {
    let mut query = TopicPartitionList::with_capacity(count as usize);
    for p in 0..count {
        query.add_partition(topic, p as i32);
    }
    let committed = consumer.committed_offsets(query, timeout)?;
    Ok((0..count)
        .map(|p| match committed.find_partition(topic, p as i32) {
            Some(elem) => match elem.offset() {
                Offset::Offset(o) if o >= 0 => (Some(o as u64), parse_cut(p, o as u64, elem.metadata())),
                _ => (None, None),
            },
            None => (None, None),
        })
        .collect())
}

/// The offset of the first message of each of `partitions` whose Kafka timestamp is at or
/// after `ms` (`None`: no such message, the partition starts at its end). Retried until
/// `deadline`, as the other start-up requests.
fn offsets_at_time(
    consumer: &SourceConsumer,
    topic: &str,
    partitions: &[u32],
    ms: i64,
    label: &str,
    deadline: Instant,
) -> Result<BTreeMap<u32, Option<u64>>, String> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    // A negative time is no timestamp to this request (-1 and -2 mean "latest" and
    // "earliest", and the client refuses them): a time before 1970 asks for 0 instead (record
    // timestamps are never negative).
    let at = Offset::Offset(ms.max(0));
    let mut query = TopicPartitionList::with_capacity(partitions.len());
    for &p in partitions {
        query
            .add_partition_offset(topic, p as i32, at)
            .map_err(|e| e.to_string())?;
    }
    let what = format!("cannot look up the offsets of topic {topic} at time {ms} ms");
    retry(label, &what, deadline, |timeout| {
        let found = consumer
            .offsets_for_times(query.clone(), timeout)
            .map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for &p in partitions {
            let elem = found
                .find_partition(topic, p as i32)
                .ok_or_else(|| format!("partition {p} missing from the answer"))?;
            elem.error().map_err(|e| format!("partition {p}: {e}"))?;
            let offset = match elem.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                Offset::End => None,
                other => return Err(format!("partition {p}: unexpected offset {other:?} in the answer")),
            };
            out.insert(p, offset);
        }
        Ok(out)
    })
}

/// The line naming the offsets [`offsets_at_time`] found for time `ms`: `starting partitions
/// 0 at offset 12, 2 at its end (...)` (`what` starting, `at` at), or stopping ... before.
fn offsets_note(what: &str, at: &str, found: &BTreeMap<u32, Option<u64>>, ms: i64) -> String {
    let list: Vec<String> = found
        .iter()
        .map(|(p, o)| match o {
            Some(o) => format!("{p} {at} offset {o}"),
            None => format!("{p} at its end"),
        })
        .collect();
    format!(
        "{what} partitions {} (the first messages with a Kafka timestamp at or after {ms} ms)",
        list.join(", ")
    )
}

/// Whether [`KafkaReader::take`] does anything with a poll result: a message, a partition's
/// end, or an error that stops the source (any other error is transient: logged by the
/// consumer's context, retried by librdkafka).
fn acted_on(item: &Polled) -> bool {
    matches!(
        item,
        Ok(_)
            | Err(KafkaError::PartitionEOF(_) | KafkaError::MessageConsumptionFatal(_))
            | Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed
            ))
    )
}

impl KafkaReader {
    /// Connects worker `index` of `peers`: creates its consumer, reads the committed offsets
    /// (and their cuts), the end offsets with `stop_at_end`, and assigns its partitions.
    /// Blocking calls are retried until `connect_timeout_ms` (see the module docs).
    pub fn connect(cfg: &KafkaSourceConfig, index: usize, peers: usize) -> Result<KafkaReader, String> {
        let log = Arc::new(ClientLog::new(format!("kafka source (worker {index})")));
        let lag = Arc::new(ConsumerLag::default());
        let stranded = Arc::new(StrandedClock::default());
        let partitions_seen = Arc::new(AtomicU32::new(0));
        let partitions_gone = Arc::new(AtomicU32::new(0));
        let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
        let client_cfg = cfg.consumer_config(index)?;
        let activator: Arc<OnceLock<SyncActivator>> = Arc::new(OnceLock::new());
        let context = SourceContext {
            log: Arc::clone(&log),
            topic: cfg.topic.clone(),
            lag: Arc::clone(&lag),
            stranded: Arc::clone(&stranded),
            partitions_seen: Arc::clone(&partitions_seen),
            partitions_gone: Arc::clone(&partitions_gone),
        };
        // A handle from the start: however `connect` returns, the consumer closes promptly.
        let consumer = ConsumerHandle(Arc::new(new_consumer(&client_cfg, context, &activator)?));

        let what = format!("cannot reach topic {} on {}", cfg.topic, cfg.brokers);
        let count = retry(log.label(), &what, deadline, |timeout| {
            topic_partitions(consumer.client(), &cfg.topic, timeout)
        })?;
        let mine: Vec<u32> = (0..count).filter(|p| *p as usize % peers.max(1) == index).collect();
        let mut reader = KafkaReader {
            topic: cfg.topic.clone(),
            log: Arc::clone(&log),
            consumer: None,
            client_cfg: None,
            replacements: 0,
            parts: Vec::new(),
            resume: Vec::new(),
            activator,
            idle_timeout: cfg.idle_timeout_ms.map(Duration::from_millis),
            final_commit_timeout: Duration::from_millis(cfg.final_commit_timeout_ms),
            stop_at_end: cfg.stop_at_end,
            lag,
            stranded,
            topic_partitions: count,
            partitions_seen,
            partitions_gone,
            told_ended: false,
            commits: None,
            commit_thread: None,
            polled: Vec::new(),
            deferred: Vec::new(),
            skips: Vec::new(),
            positions_checked: None,
        };
        if mine.is_empty() {
            return Ok(reader);
        }

        // Committed offsets of every partition (and the cuts in their metadata): the resume
        // frontier D is the largest frontier committed for any partition of the topic.
        let what = format!("cannot read the committed offsets of group {}", cfg.group);
        let committed = retry(log.label(), &what, deadline, |timeout| {
            committed_cuts(&**consumer, &cfg.topic, count, timeout).map_err(|e| e.to_string())
        })?;
        let committed_at = |p: u32| committed[p as usize].clone();
        let resume_frontier = (0..count).filter_map(|p| committed_at(p).1).map(|c| c.frontier).max();

        // With a start time: the offsets of the first messages at or after it, for the
        // partitions without a committed offset (one request for all of them).
        let by_time = match cfg.start {
            StartOffset::Time(ms) => {
                let unstarted: Vec<u32> = mine.iter().copied().filter(|p| committed_at(*p).0.is_none()).collect();
                let found = offsets_at_time(&consumer, &cfg.topic, &unstarted, ms, log.label(), deadline)?;
                if !found.is_empty() {
                    log.note(&offsets_note("starting", "at", &found, ms));
                }
                found
            }
            StartOffset::Earliest | StartOffset::Latest => BTreeMap::new(),
        };

        // With an end time: where each partition stops, for all of them (committed or not).
        let end_by_time = match cfg.end_time_ms.filter(|_| cfg.stop_at_end) {
            Some(ms) => {
                let found = offsets_at_time(&consumer, &cfg.topic, &mine, ms, log.label(), deadline)?;
                log.note(&offsets_note("stopping", "before", &found, ms));
                found
            }
            None => BTreeMap::new(),
        };

        // Start offsets and assignment, with end offsets for --stop-at-end.
        let now = Instant::now();
        let mut assign = TopicPartitionList::with_capacity(mine.len());
        for &p in &mine {
            let (start, cut) = committed_at(p);
            if let (Some(o), None) = (start, &cut) {
                log.note(&format!("partition {p}: committed offset {o} has no sessionflow metadata; starting there without its watermark"));
            }
            let mut part = Part {
                id: p,
                end: None,
                ended: false,
                last_data: now,
                next: Offset::Beginning,
                queue: None,
            };
            let mut from = match (start, cfg.start) {
                (Some(o), _) => Offset::Offset(o as i64),
                (None, StartOffset::Earliest) => Offset::Beginning,
                // Both made a number below.
                (None, StartOffset::Latest | StartOffset::Time(_)) => Offset::End,
            };
            let mut first = start;
            // `latest` and a time as numbers: a replaced consumer (see `replace_consumer`) that
            // read nothing yet must resume where this one started, not at the end of its own
            // start; and a time's offset is clamped to the partition's.
            let numbered = start.is_none() && cfg.start != StartOffset::Earliest;
            if cfg.stop_at_end || numbered || (start.is_none() && resume_frontier.is_some()) {
                let what = format!("cannot read the end offset of partition {p}");
                let (low, high) = retry(log.label(), &what, deadline, |timeout| {
                    consumer
                        .fetch_watermarks(&cfg.topic, p as i32, timeout)
                        .map_err(|e| e.to_string())
                })?;
                let (low, high) = (low.max(0) as u64, high.max(0) as u64);
                let at = match (start, cfg.start) {
                    (Some(o), _) => o,
                    (None, StartOffset::Earliest) => low,
                    (None, StartOffset::Latest) => high,
                    (None, StartOffset::Time(_)) => {
                        by_time.get(&p).copied().flatten().map_or(high, |o| o.clamp(low, high))
                    }
                };
                from = Offset::Offset(at as i64);
                first = Some(at);
                if cfg.stop_at_end {
                    let end = end_by_time.get(&p).copied().flatten().map_or(high, |o| o.min(high));
                    part.end = Some(end);
                    part.ended = at >= end;
                }
            }
            if let (Some(d), Some(offset)) = (resume_frontier, first) {
                // Every partition resumes with the job's frontier D (see the source docs).
                let point = match cut {
                    Some(c) => Cut { frontier: d, ..c },
                    None => Cut {
                        partition: p,
                        offset,
                        frontier: d,
                        max_ts: None,
                    },
                };
                reader.resume.push(point);
            }
            part.next = from;
            if !part.ended {
                assign
                    .add_partition_offset(&cfg.topic, p as i32, from)
                    .map_err(|e| e.to_string())?;
            }
            reader.parts.push(part);
        }
        if assign.count() > 0 {
            consumer
                .assign(&assign)
                .map_err(|e| format!("cannot assign partitions: {e}"))?;
        }
        reader.open_queues(&consumer)?;
        reader.commits = Some(Arc::new(CommitShared {
            topic: cfg.topic.clone(),
            group: cfg.group.clone(),
            log: Arc::clone(&log),
            consumer: Mutex::new(consumer.clone()),
            // Committed before the restart: acknowledged by definition.
            acked: AtomicU64::new(resume_frontier.map_or(0, |d| d.saturating_add(1))),
            stored: Mutex::new(BTreeMap::new()),
        }));
        reader.consumer = Some(consumer);
        reader.client_cfg = Some(client_cfg);
        Ok(reader)
    }

    /// Drops every partition queue. Each holds a reference to the consumer it was split from:
    /// the consumer's last [`ConsumerHandle`] sees itself last, and closes it, only once they
    /// are gone.
    fn drop_queues(&mut self) {
        for part in &mut self.parts {
            part.queue = None;
        }
    }

    /// Opens a queue per partition still read on `consumer`, each waking the source when it
    /// becomes non-empty. One queue per partition: the source reads the partitions in
    /// watermark order and leaves one that ran far ahead in librdkafka's queue (whose size
    /// bounds it) instead of pausing it, which would drop its prefetched messages and stall on
    /// a new fetch.
    fn open_queues(&mut self, consumer: &Arc<SourceConsumer>) -> Result<(), String> {
        for part in self.parts.iter_mut().filter(|p| !p.ended) {
            let mut queue = consumer
                .split_partition_queue(&self.topic, part.id as i32)
                .ok_or_else(|| format!("cannot open the queue of partition {}", part.id))?;
            queue.set_nonempty_callback(waker(&self.activator));
            let batch = BatchQueue::open(consumer, &self.topic, part.id as i32)
                .ok_or_else(|| format!("cannot open the queue of partition {}", part.id))?;
            part.queue = Some(PartQueue { batch, _split: queue });
        }
        Ok(())
    }

    /// Replaces a stranded consumer (see [`KafkaReader::read`]) by a new one with the same
    /// settings, assigned each partition at the offset after the last message this reader
    /// took (else where the first consumer started): what the old one had fetched but not
    /// handed over is dropped with it and fetched again, so no message is skipped or read
    /// twice. Commits go through the new consumer from then on.
    fn replace_consumer(&mut self) -> Result<(), String> {
        let Some(client_cfg) = &self.client_cfg else {
            return Ok(());
        };
        let stranded = Arc::new(StrandedClock::default());
        let context = SourceContext {
            log: Arc::clone(&self.log),
            topic: self.topic.clone(),
            lag: Arc::clone(&self.lag),
            stranded: Arc::clone(&stranded),
            partitions_seen: Arc::clone(&self.partitions_seen),
            // The new consumer's own view: it knows nothing gone yet.
            partitions_gone: Arc::new(AtomicU32::new(0)),
        };
        let partitions_gone = Arc::clone(&context.partitions_gone);
        let consumer = new_consumer(client_cfg, context, &self.activator)?;
        let mut assign = TopicPartitionList::with_capacity(self.parts.len());
        for part in self.parts.iter().filter(|p| !p.ended) {
            assign
                .add_partition_offset(&self.topic, part.id as i32, part.next)
                .map_err(|e| e.to_string())?;
        }
        if assign.count() > 0 {
            consumer
                .assign(&assign)
                .map_err(|e| format!("cannot assign partitions to the new consumer: {e}"))?;
        }
        let consumer = ConsumerHandle(Arc::new(consumer));
        // The old queues keep the old consumer alive; they go first.
        self.drop_queues();
        self.open_queues(&consumer)?;
        if let Some(shared) = &self.commits {
            if let Ok(mut c) = shared.consumer.lock() {
                *c = consumer.clone();
            }
        }
        self.stranded = stranded;
        self.partitions_gone = partitions_gone;
        self.replacements += 1;
        if let Some(old) = self.consumer.replace(consumer) {
            // Destroying a client joins its threads: not on the worker.
            std::thread::spawn(move || drop(old));
        }
        // Not rate-limited: it must show whatever librdkafka printed just before.
        eprintln!(
            "{}: the consumer of topic {} knew no broker for {} s (a librdkafka fault after a \
             broker restart): replaced by a new one (replacement {}), which resumes after the \
             last message read",
            self.log.label(),
            self.topic,
            STRANDED_AFTER.as_secs(),
            self.replacements
        );
        Ok(())
    }

    /// Consumers replaced so far because they were stranded (count).
    pub fn replacements(&self) -> u64 {
        self.replacements
    }

    /// A reader of no partition (its worker drops its capability at once).
    pub fn empty(topic: &str) -> KafkaReader {
        KafkaReader {
            topic: topic.to_string(),
            log: Arc::new(ClientLog::new("kafka source")),
            consumer: None,
            client_cfg: None,
            replacements: 0,
            parts: Vec::new(),
            resume: Vec::new(),
            activator: Arc::new(OnceLock::new()),
            idle_timeout: None,
            final_commit_timeout: Duration::ZERO,
            stop_at_end: true,
            lag: Arc::new(ConsumerLag::default()),
            stranded: Arc::new(StrandedClock::default()),
            topic_partitions: 0,
            partitions_seen: Arc::new(AtomicU32::new(0)),
            partitions_gone: Arc::new(AtomicU32::new(0)),
            told_ended: false,
            commits: None,
            commit_thread: None,
            polled: Vec::new(),
            deferred: Vec::new(),
            skips: Vec::new(),
            positions_checked: None,
        }
    }

    /// Tells the reader its consumer's statistics show no broker, as librdkafka's report does
    /// in the fault on which `read` replaces the consumer: for tests (set
    /// `statistics.interval.ms=0` so real reports do not clear it).
    #[doc(hidden)]
    pub fn report_no_broker(&self) {
        self.stranded.report(false);
    }

    /// A handle that commits cuts after the dataflow (and this reader) is gone.
    pub fn committer(&self) -> KafkaCommitter {
        KafkaCommitter {
            log: Arc::clone(&self.log),
            shared: self.commits.clone(),
            timeout: self.final_commit_timeout,
        }
    }

    /// The consumer lag of this worker's partitions (messages), from librdkafka's statistics.
    pub fn lag_gauge(&self) -> Arc<ConsumerLag> {
        Arc::clone(&self.lag)
    }

    /// Handles one poll result, a message as `(partition, offset, payload)`, from partition
    /// `i`'s queue or (`None`) the consumer's queue.
    fn take(
        &mut self,
        from: Option<usize>,
        result: Polled,
        marks: &mut Watermarks,
        out: &mut Vec<RawRecord>,
        now: Instant,
    ) -> Result<(), String> {
        match result {
            Ok((partition, offset, payload)) => {
                let i = match from {
                    Some(i) => i,
                    None => match self.parts.iter().position(|p| p.id as i32 == partition) {
                        Some(i) => i,
                        None => return Ok(()),
                    },
                };
                let Ok(offset) = u64::try_from(offset) else {
                    return Ok(());
                };
                let part = &mut self.parts[i];
                if part.ended {
                    return Ok(());
                }
                if part.end.is_some_and(|end| offset >= end) {
                    self.end_part(i, marks);
                    return Ok(());
                }
                out.push(RawRecord {
                    partition: part.id,
                    offset,
                    bytes: payload.unwrap_or_default(),
                });
                part.next = Offset::Offset(offset.saturating_add(1) as i64);
                part.last_data = now;
                if part.end.is_some_and(|end| offset + 1 >= end) {
                    self.end_part(i, marks);
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                // The fetcher reached the partition's end (at least the one we started with).
                if self.stop_at_end {
                    if let Some(i) = self.parts.iter().position(|q| q.id as i32 == p) {
                        self.end_part(i, marks);
                    }
                }
            }
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                return Err(format!("Kafka consumer of topic {} failed: {e}", self.topic));
            }
            Err(KafkaError::MessageConsumption(
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed),
            )) => {
                return Err(format!("Kafka consumer of topic {}: {code}", self.topic));
            }
            // Transient (broker down, leader change ...): logged by the context, and
            // librdkafka retries by itself. (`acted_on` lists the errors handled above.)
            Err(_) => {}
        }
        Ok(())
    }

    /// Compares the consumer's position of each partition (librdkafka's application
    /// position: past every message and control record served so far) with the offset after
    /// the last message taken. Where it is further, only offsets without messages lie between:
    /// transaction markers, and the messages of aborted transactions, which a read-committed
    /// consumer never delivers. Reported through [`PartitionReader::skipped`] so a commit can
    /// point past them: after a transactional producer's last commit marker a caught-up group
    /// would otherwise show a lag of one for good. Capped at a bounded run's end offset, past
    /// which messages are dropped unread. A failed query only postpones the report.
    fn check_positions(&mut self) {
        let Some(consumer) = &self.consumer else { return };
        let Ok(positions) = consumer.position() else { return };
        for e in positions.elements_for_topic(&self.topic) {
            let (Offset::Offset(at), Some(part)) =
                (e.offset(), self.parts.iter_mut().find(|p| p.id as i32 == e.partition()))
            else {
                continue;
            };
            let Offset::Offset(next) = part.next else { continue };
            let at = part.end.map_or(at, |end| at.min(end as i64));
            if at > next {
                part.next = Offset::Offset(at);
                self.skips.push((part.id, at as u64));
            }
        }
    }

    fn end_part(&mut self, i: usize, marks: &mut Watermarks) {
        let part = &mut self.parts[i];
        if part.ended {
            return;
        }
        part.ended = true;
        part.queue = None;
        marks.end(part.id);
        if let Some(c) = &self.consumer {
            // Stop fetching what this run will not read; failing to pause only costs bandwidth.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, part.id as i32);
            let _ = c.pause(&tpl);
        }
    }
}

impl PartitionReader for KafkaReader {
    fn partitions(&self) -> Vec<u32> {
        self.parts.iter().map(|p| p.id).collect()
    }

    fn skipped(&mut self, out: &mut Vec<(u32, u64)>) {
        out.append(&mut self.skips);
    }

    fn set_activator(&mut self, activator: SyncActivator) {
        let _ = self.activator.set(activator);
    }

    fn resume_points(&self) -> Vec<Cut> {
        self.resume.clone()
    }

    fn commit(&mut self, cuts: &[Cut]) -> Result<(), String> {
        let Some(shared) = &self.commits else { return Ok(()) };
        if self.commit_thread.is_none() {
            self.commit_thread = Some(CommitThread::spawn(Arc::clone(shared))?);
        }
        if let Some(tx) = self.commit_thread.as_ref().and_then(|t| t.tx.as_ref()) {
            // Fails only if the thread is gone (it never exits while the sender lives).
            tx.send(cuts.to_vec())
                .map_err(|_| "the Kafka commit thread stopped".to_string())?;
        }
        Ok(())
    }

    fn acknowledged(&mut self, _issued: Option<u64>) -> Option<u64> {
        let shared = self.commits.as_ref()?;
        shared.acked.load(Ordering::Relaxed).checked_sub(1)
    }

    fn serve(&mut self) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        // Statistics and logs go to the context's callbacks inside `poll`; what it returns
        // (errors, and a message should one come this way) waits for `read`.
        while let Some(result) = consumer.poll(Duration::ZERO) {
            let item = result.map(|m| (m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec)));
            // Transient errors `take` would only drop (the context logged them) are not kept:
            // a long throttle during a broker outage would pile them up.
            if acted_on(&item) {
                self.deferred.push(item);
            }
        }
    }

    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String> {
        if !self.told_ended {
            self.told_ended = true;
            for p in self.parts.iter().filter(|p| p.ended) {
                marks.end(p.id);
            }
        }
        let now = Instant::now();
        // The librdkafka fault the Kafka sinks work around (see `sink::kafka`) can strand a
        // consumer too: it would wait forever. Replace it, resuming after what was read.
        if self.stranded.stranded(now) {
            self.replace_consumer()?;
        }
        if self.consumer.is_none() {
            return Ok(ReadStatus::Done);
        }
        // Partitions are assigned once, at the start: stop rather than leave new ones unread
        // (a bounded run reads what the topic held when it started, new partitions aside).
        let seen = self.partitions_seen.load(Ordering::Relaxed);
        if seen > self.topic_partitions && !self.stop_at_end {
            return Err(format!(
                "topic {} now has {seen} partitions, {} when the job started: a job reads the \
                 partitions it started with; stopping so that a restart reads the new ones too \
                 (from the committed offsets; the new ones from --start)",
                self.topic, self.topic_partitions
            ));
        }
        // A partition leaves a topic only with the topic: reading on would wait forever, or
        // read a topic created again under the name, from offsets that meant other events.
        let gone = self.partitions_gone.load(Ordering::Relaxed);
        if gone > 0 {
            return Err(format!(
                "topic {}: {gone} of this worker's partitions are no longer in the cluster's \
                 metadata (was the topic deleted?): stopping; a restart once the topic exists \
                 reads it from the committed offsets (from --start where they are out of range)",
                self.topic
            ));
        }
        // The consumer's own queue carries only events now (errors, statistics, commit
        // results): serve them, and handle what `serve` put aside, now and earlier.
        self.serve();
        for item in std::mem::take(&mut self.deferred) {
            self.take(None, item, marks, out, now)?;
        }
        // Read the partitions laggard first, so they advance together in event time; leave
        // one that ran far past the sinks' frontier in its queue (watermark alignment: its
        // records do not pile up in memory while another partition lags or has not delivered
        // yet; librdkafka stops fetching it once its queue is full).
        let mut order: Vec<usize> = (0..self.parts.len()).filter(|&i| !self.parts[i].ended).collect();
        order.sort_by_key(|&i| (marks.low_of(self.parts[i].id), self.parts[i].id));
        let mut held = false;
        let mut drained = true;
        // A partition queue read to its end, or a partition that ended: time to look for
        // offsets without messages after the last one taken (`check_positions`).
        let mut caught_up = false;
        let ended_before = self.parts.iter().filter(|p| p.ended).count();
        for i in order {
            if out.len() >= budget {
                drained = false;
                break;
            }
            if marks.far_ahead(self.parts[i].id) {
                held = true;
                // Held back is not idle.
                self.parts[i].last_data = now;
                continue;
            }
            while out.len() < budget && !self.parts[i].ended {
                let Some(queue) = self.parts[i].queue.as_mut() else {
                    break;
                };
                let mut polled = std::mem::take(&mut self.polled);
                if queue.batch.read((budget - out.len()).min(BATCH), &mut polled) == 0 {
                    self.polled = polled;
                    caught_up = true;
                    break;
                }
                // Every message taken is handled (an error stops the run after the batch).
                let mut result = Ok(());
                for item in polled.drain(..) {
                    if result.is_ok() {
                        result = self.take(Some(i), item, marks, out, now);
                    }
                }
                self.polled = polled;
                result?;
            }
            if out.len() >= budget {
                drained = false;
            }
        }
        let ended_now = self.parts.iter().filter(|p| p.ended).count() > ended_before;
        if ended_now
            || (caught_up
                && self
                    .positions_checked
                    .is_none_or(|t| now.duration_since(t) >= POSITION_RECHECK))
        {
            self.positions_checked = Some(now);
            self.check_positions();
        }
        if let Some(timeout) = self.idle_timeout {
            for p in self
                .parts
                .iter()
                .filter(|p| !p.ended && now.duration_since(p.last_data) >= timeout)
            {
                marks.set_idle(p.id);
            }
        }
        if self.parts.iter().all(|p| p.ended) {
            Ok(ReadStatus::Done)
        } else if !drained || !out.is_empty() {
            Ok(ReadStatus::More)
        } else if held {
            // The sinks' frontier moves without waking this source: look again soon.
            Ok(ReadStatus::Idle(HELD_RECHECK))
        } else {
            Ok(ReadStatus::Idle(IDLE_RECHECK))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_apply_by_kind() {
        assert_eq!(
            parse_option("fetch.min.bytes=1"),
            Ok(("fetch.min.bytes".into(), "1".into()))
        );
        assert_eq!(parse_option("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=x").is_err());
        let extra = vec![
            ("linger.ms".to_string(), "7".to_string()),
            ("consumer:fetch.min.bytes".to_string(), "9".to_string()),
            ("producer:acks".to_string(), "1".to_string()),
        ];
        let ours = [("linger.ms", "1".to_string())];
        let c = client_config("b:1", &ours, &extra, ClientKind::Consumer).unwrap();
        assert_eq!(c.get("linger.ms"), Some("7"));
        assert_eq!(c.get("fetch.min.bytes"), Some("9"));
        assert_eq!(c.get("acks"), None);
        let p = client_config("b:1", &ours, &extra, ClientKind::Producer).unwrap();
        assert_eq!(p.get("acks"), Some("1"));
        assert_eq!(p.get("fetch.min.bytes"), None);
        assert_eq!(p.get("bootstrap.servers"), Some("b:1"));
        assert_eq!(p.log_level as i32, RDKafkaLogLevel::Warning as i32);
        // Our short reconnect backoff (for a prompt first connection), which -X overrides.
        assert_eq!(p.get("reconnect.backoff.ms"), Some("20"));
        let slow = [("reconnect.backoff.ms".to_string(), "100".to_string())];
        let c = client_config("b:1", &[], &slow, ClientKind::Consumer).unwrap();
        assert_eq!(c.get("reconnect.backoff.ms"), Some("100"));
    }

    #[test]
    fn topic_names_and_broker_lists_are_checked_by_kafkas_rules() {
        for ok in ["clicks", "a.b_c-D9", "x", &"t".repeat(249)] {
            assert_eq!(parse_topic(ok).as_deref(), Ok(ok));
        }
        for (bad, says) in [
            ("", "cannot be empty"),
            (".", "not a topic name"),
            ("..", "not a topic name"),
            ("my topic", "has ' '"),
            ("a/b", "has '/'"),
            ("caf\u{e9}", "has '\u{e9}'"),
        ] {
            let err = parse_topic(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(parse_topic(&"t".repeat(250)).unwrap_err().contains("at most 249"));
        for ok in ["127.0.0.1:9092", "a:1,b:2", "kafka", "a:1, b:2"] {
            assert_eq!(parse_brokers(ok).as_deref(), Ok(ok));
        }
        for bad in ["", " ", "a:1,", ",a:1", "a:1,,b:2"] {
            assert!(parse_brokers(bad).unwrap_err().contains("bad broker list"), "{bad:?}");
        }
    }

    #[test]
    fn an_option_the_guarantees_rest_on_may_be_repeated_but_not_changed() {
        let source = KafkaSourceConfig {
            brokers: "b:1".into(),
            group: "g".into(),
            stop_at_end: true,
            ..KafkaSourceConfig::default()
        };
        let with = |options: &[(&str, &str)]| {
            let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            KafkaSourceConfig {
                options,
                ..source.clone()
            }
            .consumer_config(0)
        };
        // Each fixed option the consumer sets, changed (also by an alias): an error that names
        // the option, the value sessionflow sets and why.
        for (k, v, ours) in [
            ("enable.auto.commit", "true", "enable.auto.commit=false"),
            ("auto.commit.enable", "1", "enable.auto.commit=false"),
            (
                "consumer:enable.auto.offset.store",
                "true",
                "enable.auto.offset.store=false",
            ),
            ("group.id", "other", "group.id=g"),
            ("group.id", "G", "group.id=g"),
            ("group.id", "g ", "group.id=g"),
            ("auto.offset.reset", "latest", "auto.offset.reset=earliest"),
            ("enable.partition.eof", "false", "enable.partition.eof=true"),
            ("bootstrap.servers", "c:1", "bootstrap.servers=b:1"),
            ("metadata.broker.list", "c:1", "bootstrap.servers=b:1"),
        ] {
            let err = with(&[(k, v)]).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "Kafka option {k}={v} (-X or --kafka-config): sessionflow sets {ours} itself ("
                )),
                "{err}"
            );
        }
        // The same values in other spellings, an option for producers only, and every other
        // option (ours or not) are taken.
        let c = with(&[
            ("enable.auto.commit", "FALSE"),
            ("auto.commit.enable", "0"),
            ("enable.auto.offset.store", "f"),
            ("auto.offset.reset", "smallest"),
            ("enable.partition.eof", "1"),
            ("group.id", "g"),
            ("bootstrap.servers", "b:1"),
            ("producer:acks", "1"),
            ("queued.max.messages.kbytes", "4096"),
            ("statistics.interval.ms", "0"),
        ])
        .unwrap();
        assert_eq!(c.get("enable.auto.commit"), Some("FALSE"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(c.get("statistics.interval.ms"), Some("0"));
        assert_eq!(c.get("acks"), None);
        // A producer's fixed options (the sinks', `generate`'s); a consumer-only one is not
        // checked against it.
        let ours: Vec<(&str, String)> = crate::sink::kafka::PRODUCER_OPTIONS
            .map(|(k, v)| (k, v.to_string()))
            .into();
        let producer = |k: &str, v: &str| client_config("b:1", &ours, &[(k.into(), v.into())], ClientKind::Producer);
        for (k, v) in [
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("producer:enable.idempotence", "false"),
        ] {
            let err = producer(k, v).unwrap_err();
            assert!(err.contains("sessionflow sets"), "{err}");
        }
        for (k, v) in [
            ("acks", "-1"),
            ("enable.idempotence", "t"),
            ("compression.type", "none"),
            ("consumer:acks", "0"),
        ] {
            assert!(producer(k, v).is_ok(), "{k}={v}");
        }
    }

    #[test]
    fn a_debug_or_log_level_option_raises_the_log_level() {
        let opt = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let level = |extra: &[(String, String)], kind| client_config("b:1", &[], extra, kind).unwrap().log_level as i32;
        use RDKafkaLogLevel::{Debug, Error, Info, Warning};
        assert_eq!(level(&opt("debug", "broker,msg"), ClientKind::Consumer), Debug as i32);
        assert_eq!(level(&opt("producer:debug", "eos"), ClientKind::Producer), Debug as i32);
        assert_eq!(
            level(&opt("producer:debug", "eos"), ClientKind::Consumer),
            Warning as i32
        );
        assert_eq!(level(&opt("log_level", "6"), ClientKind::Admin), Info as i32);
        assert_eq!(level(&opt("log_level", "3"), ClientKind::Admin), Error as i32);
        assert_eq!(level(&opt("debug", ""), ClientKind::Admin), Warning as i32);
    }

    #[test]
    fn an_options_file_comes_before_the_x_options_and_names_a_bad_line_without_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        std::fs::write(
            &path,
            "# secrets\n\nsecurity.protocol=SASL_SSL\r\n  sasl.password = p=w\nsasl.username=u\n",
        )
        .unwrap();
        let x = vec![("sasl.username".to_string(), "v".to_string())];
        let all = options_with_file(Some(&path), &x).unwrap();
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // Keys trimmed, values kept after the first `=`; -X last, so it wins.
        assert_eq!(
            pairs,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.password", " p=w"),
                ("sasl.username", "u"),
                ("sasl.username", "v")
            ]
        );
        assert_eq!(options_with_file(None, &x).unwrap(), x);
        std::fs::write(&path, "a=b\nhunter2\n").unwrap();
        let e = options_with_file(Some(&path), &[]).unwrap_err();
        assert!(
            e.ends_with("client.properties:2: expected a librdkafka option key=value (or a # comment)"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = options_with_file(Some(&dir.path().join("missing")), &[]).unwrap_err();
        assert!(e.starts_with("cannot read the Kafka options file"), "{e}");
    }

    #[test]
    fn a_failed_request_is_explained_by_the_clients_last_error_but_not_by_all_brokers_down() {
        let log = ClientLog::new("test");
        assert_eq!(log.explain("timed out".into()), "timed out");
        log.librdkafka(RDKafkaLogLevel::Warning, "X", "a warning is no cause");
        assert_eq!(log.explain("timed out".into()), "timed out");
        log.librdkafka(RDKafkaLogLevel::Error, "FAIL", "SASL authentication error");
        log.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(
            log.explain("timed out".into()),
            "timed out; the client's last error: librdkafka FAIL: SASL authentication error"
        );
        log.error(&KafkaError::Global(RDKafkaErrorCode::Authentication), "bad password");
        assert!(log.explain("x".into()).ends_with("bad password"));
        // A TLS alert about the client's certificate gets a hint; other errors none.
        log.librdkafka(
            RDKafkaLogLevel::Error,
            "FAIL",
            "Receive failed: error:0A000412:SSL routines::ssl/tls alert bad certificate: SSL alert number 42",
        );
        assert!(log
            .explain("x".into())
            .ends_with("alert number 42 (the broker refused this client's certificate, or its lack of one: a listener with mutual TLS wants ssl.certificate.location and ssl.key.location, or ssl.keystore.location, with a certificate it trusts)"));
        log.librdkafka(RDKafkaLogLevel::Error, "FAIL", "certificate verify failed");
        assert!(log.explain("x".into()).ends_with("certificate verify failed"));
    }

    #[test]
    fn the_offsets_found_for_a_time_are_named() {
        let found = BTreeMap::from([(0, Some(12)), (2, None)]);
        assert_eq!(
            offsets_note("starting", "at", &found, 5),
            "starting partitions 0 at offset 12, 2 at its end (the first messages with a Kafka timestamp at or after 5 ms)"
        );
        assert!(offsets_note("stopping", "before", &found, 5).starts_with("stopping partitions 0 before offset 12, "));
    }

    #[test]
    fn cut_metadata_round_trips() {
        let cut = Cut {
            partition: 3,
            offset: 17,
            frontier: 28_333_334,
            max_ts: Some(1_700_000_000_123),
        };
        let text = cut_metadata(&cut);
        assert_eq!(parse_cut(3, 17, &text), Some(cut));
        assert_eq!(parse_cut(3, 17, ""), None);
        assert_eq!(
            parse_cut(3, 17, "{\"v\":\"other\",\"frontier\":1,\"max_ts\":null}"),
            None
        );
    }

    #[test]
    #[ignore = "needs a Kafka broker: scripts/test.sh"]
    fn a_consumer_closes_with_its_last_handle_and_not_before() {
        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let ours = [("group.id", "sf-test-close".to_string())];
        let context = SourceContext {
            log: Arc::new(ClientLog::new("test")),
            topic: "sf-test-close".into(),
            lag: Arc::new(ConsumerLag::default()),
            stranded: Arc::new(StrandedClock::default()),
            partitions_seen: Arc::new(AtomicU32::new(0)),
            partitions_gone: Arc::new(AtomicU32::new(0)),
        };
        let cfg = client_config(&brokers, &ours, &[], ClientKind::Consumer).unwrap();
        let consumer = new_consumer(&cfg, context, &Arc::new(OnceLock::new())).unwrap();
        let first = ConsumerHandle(Arc::new(consumer));
        // Reach the broker first, so that the close has a live group state to end.
        let answer = topic_partitions(first.client(), "sf-test-close-missing", REQUEST_TIMEOUT).unwrap_err();
        assert!(answer.ends_with("does not exist"), "{answer}");
        let second = first.clone();
        drop(first);
        assert!(!second.closed(), "closed while another handle still uses it");
        close_promptly(&second);
        assert!(second.closed(), "not closed within {CLOSE_WAIT:?}");
    }

    #[test]
    fn block_on_runs_a_ready_future() {
        assert_eq!(block_on(async { 41 + 1 }), 42);
    }

    #[test]
    fn a_retried_request_ends_at_the_deadline() {
        let now = Instant::now();
        assert_eq!(request_timeout(now + Duration::from_secs(60)), REQUEST_TIMEOUT);
        let near = request_timeout(now + Duration::from_millis(1500));
        assert!(
            near <= Duration::from_millis(1500) && near > Duration::from_millis(1000),
            "{near:?}"
        );
        assert_eq!(request_timeout(now), MIN_REQUEST_TIMEOUT);
        assert_eq!(request_timeout(now - Duration::from_secs(1)), MIN_REQUEST_TIMEOUT);
    }

    #[test]
    fn retry_gives_up_at_the_deadline_with_the_last_error() {
        let mut n = 0;
        let r: Result<(), String> = retry("test", "cannot do it", Instant::now(), |_| {
            n += 1;
            Err(format!("attempt {n}"))
        });
        assert_eq!(n, 1);
        let e = r.unwrap_err();
        assert!(e.starts_with("cannot do it: attempt 1"), "{e}");
    }
}
