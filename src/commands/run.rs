//! `sessionflow run`: the live job on a Kafka topic.
//!
//! Every worker reads its share of the topic's partitions (`partition % workers == index`,
//! over all processes) with its own consumer, and writes snapshots and dead letters to Kafka
//! topics (`--snapshot-topic`, `--dead-letter-topic`) and/or, with `--stop-at-end`, to the
//! replay files (`--output`, `--dead-letter`, `--stats`).
//!
//! Offsets: in a live run with Kafka sinks, the sources commit a consistent cut of their
//! partitions each time the sinks' acknowledged frontier advances (at most every
//! `--commit-interval`). A `--stop-at-end` run commits once, when it completed and its files
//! are in place (files are durable only then), with one frontier for all partitions: the
//! smallest partition window, so records appended later are never taken for processed ones.
//! A live run with no Kafka sink commits nothing.
//!
//! `--idle-timeout` trades determinism for progress: an idle partition stops holding the
//! frontier, so windows close without it, but its next records are assigned no earlier than
//! the frontier (not by their own watermark), so the output depends on arrival times; and a
//! restart is exact only if no partition was idle when the last commits were made (the
//! committed frontier may exceed an idle partition's window; its next records below that
//! frontier would be skipped as processed).
//!
//! With `--stop-at-end` each worker stops at the end offsets its partitions had when it
//! started; the run then behaves like `sessionflow replay` over one file per partition (the
//! dead-letter offsets are Kafka offsets) and its files are byte-identical to replay's.
//! Without it the job runs until it is stopped; offsets committed so far are where a restart
//! with the same `--group` resumes (exactly, see `sessionflow_operators::source`). SIGINT or
//! SIGTERM stops it gracefully: the sources read nothing more, the windows they completed
//! become durable and their offsets are committed, and the job exits once the commits reach
//! the sources' frontier (or after `--shutdown-timeout`). The windows still open are not
//! closed early: a restart reads them again. A second signal, or `kill -9`, exits at once,
//! which is as safe (a restart resumes from the last commit) but reads more again. In a
//! cluster, a signal to any process stops every worker (the request travels through a small
//! dataflow of its own), so the processes stop together.
//!
//! What a run is doing: the progress line on stderr (`--progress`), and with `--metrics
//! HOST:PORT` the same figures, the spec's counters and the sinks' in the Prometheus text
//! format ([`crate::metrics`]), both summed from what each worker refreshes (`Live`).

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use sessionflow_operators::record::DeadLetter;
use sessionflow_operators::sink::experiments::SharedTotals;
use sessionflow_operators::sink::files::{finish_all, LineFile};
use sessionflow_operators::sink::kafka::{
    ensure_topic_with, KafkaMessage, KafkaSink, KafkaSinkConfig, KafkaSinkStatus, SinkKafka,
};
use sessionflow_operators::source::kafka::{
    options_with_file, parse_brokers, parse_option, parse_topic, ConsumerLag, KafkaReader, KafkaSourceConfig,
    MetadataClient, StartOffset,
};
use sessionflow_operators::source::{Cut, PartitionPosition, PartitionReader};
use timely::dataflow::operators::vec::{Broadcast, Input};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::StreamVec;
use timely::worker::Worker;

use crate::cluster::ClusterArgs;
use crate::commands::hbase_args::{self, HbaseArgs};
use crate::commands::replay::{check_writable, json_file};
use crate::config::{format_utc, parse_duration_ms, parse_time_ms, SessionArgs};
use crate::metrics;
use crate::pipeline::{self, Attach, Outputs};
use crate::sessiondb::SinkMode;
use crate::stats::Stats;

/// Parses a `--*-topic-config` value, `key=value` (the broker checks the key and the value).
fn parse_topic_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!(
            "bad topic config {text:?}: expected key=value, e.g. retention.ms=604800000"
        )),
    }
}

/// The configs of a created snapshot topic: `cleanup.policy=compact` unless `given` sets it,
/// then `given`.
fn snapshot_topic_configs(given: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = Vec::new();
    if !given.iter().any(|(k, _)| k == "cleanup.policy") {
        all.push(("cleanup.policy".to_string(), "compact".to_string()));
    }
    all.extend(given.iter().cloned());
    all
}

/// Parses `--start`: `earliest`, `latest`, or a time ([`parse_time_ms`]).
fn parse_start(text: &str) -> Result<StartOffset, String> {
    match text.trim() {
        "earliest" => Ok(StartOffset::Earliest),
        "latest" => Ok(StartOffset::Latest),
        t => parse_time_ms(t)
            .map(StartOffset::Time)
            .map_err(|e| format!("{e}; or earliest, or latest")),
    }
}

/// A job's input topic and consumer group (`run`, and `offsets`, which reads where a job's
/// group stands).
#[derive(Args, Clone, Debug)]
pub struct JobTopicArgs {
    /// Bootstrap brokers: comma-separated `host:port` list.
    #[arg(long, value_parser = parse_brokers)]
    pub brokers: String,
    /// Input topic (every partition is read).
    #[arg(long, value_parser = parse_topic)]
    pub topic: String,
    /// Consumer group: offsets are committed under it; a restart with the same group resumes.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub group: String,
}

/// Flags of `sessionflow run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Brokers, input topic and consumer group.
    #[command(flatten)]
    pub input: JobTopicArgs,
    /// Where a partition without a committed offset starts: `earliest` (its oldest message),
    /// `latest` (its end: only messages produced after the start) or a time, RFC 3339
    /// (`2026-12-07T10:00:00Z`, `2026-12-07T11:00:00+01:00`, `2026-12-07` for its midnight
    /// UTC) or ms since the Unix epoch: its first message with a Kafka timestamp at or after
    /// it (the record's timestamp, not the event's; the end where none is).
    #[arg(long, default_value = "earliest", value_parser = parse_start, value_name = "earliest|latest|TIME")]
    pub start: StartOffset,
    /// Topic receiving the snapshots (key = session id, value = snapshot JSON); created with
    /// the input's partition count when missing.
    #[arg(long, value_parser = parse_topic)]
    pub snapshot_topic: Option<String>,
    /// Topic receiving the dead letters (value = `{"reason","partition","offset","raw"}`).
    #[arg(long, value_parser = parse_topic)]
    pub dead_letter_topic: Option<String>,
    /// A topic config (`key=value`, repeat) for the snapshot topic when sessionflow creates it,
    /// over the default `cleanup.policy=compact` (snapshots are upserts by session id: the
    /// topic keeps each session's latest, as SessionDB's row does). An existing topic keeps
    /// its own.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_topic_config, requires = "snapshot_topic")]
    pub snapshot_topic_config: Vec<(String, String)>,
    /// A topic config (`key=value`, repeat) for the dead-letter topic when sessionflow creates
    /// it (else the broker's defaults). An existing topic keeps its own.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_topic_config, requires = "dead_letter_topic")]
    pub dead_letter_topic_config: Vec<(String, String)>,
    /// Snapshot file, as replay's --output (requires --stop-at-end or --stop-at).
    #[arg(long, requires = "bounded")]
    pub output: Option<PathBuf>,
    /// Dead-letter file, as replay's --dead-letter (requires --stop-at-end or --stop-at).
    #[arg(long, requires = "bounded")]
    pub dead_letter: Option<PathBuf>,
    /// Counters file, as replay's --stats (requires --stop-at-end or --stop-at).
    #[arg(long, requires = "bounded")]
    pub stats: Option<PathBuf>,
    /// Totals per experiment variation, as replay's --experiments (requires --stop-at-end or
    /// --stop-at).
    #[arg(long, value_name = "FILE", requires = "bounded")]
    pub experiments: Option<PathBuf>,
    /// Stop once every partition reached the end offset it had when the job started.
    #[arg(long, group = "bounded")]
    pub stop_at_end: bool,
    /// Stop each partition before its first message with a Kafka timestamp at or after this
    /// time (as --start takes it), or at its end offset at start where that comes first: a
    /// bounded run like --stop-at-end, over a time range of the topic with --start TIME.
    #[arg(long, value_name = "TIME", value_parser = parse_time_ms, group = "bounded")]
    pub stop_at: Option<i64>,
    /// A librdkafka option `key=value` for every Kafka client (applied after ours; repeat).
    /// Prefix the key with `consumer:` or `producer:` for one kind of client only. Options the
    /// job's guarantees rest on (group.id, enable.auto.commit, enable.auto.offset.store,
    /// auto.offset.reset, enable.partition.eof, acks, enable.idempotence, bootstrap.servers)
    /// may only repeat the value the job sets.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// librdkafka options from a file, one `key=value` per line (`#` comments), applied before
    /// the -X options (which override them): for secrets such as `sasl.password`, which anyone
    /// on the host can read on a command line (`ps`).
    #[arg(long, value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
    /// A partition without a message for this long stops holding the frontier (e.g. 30s).
    /// Off by default: with it, window assignment depends on arrival times (not deterministic).
    #[arg(long, value_parser = parse_duration_ms)]
    pub idle_timeout: Option<u64>,
    /// How far the source may run ahead of the acknowledged output (windows).
    #[arg(long, default_value_t = 3)]
    pub max_windows_ahead: u64,
    /// Least time between two offset commits (e.g. 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    pub commit_interval: u64,
    /// How long to keep retrying to reach the brokers at start (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub connect_timeout: u64,
    /// With --stop-at-end: how long to keep retrying the final offset commit while the brokers
    /// are unreachable (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration_ms)]
    pub final_commit_timeout: u64,
    /// Interval of the progress line on stderr (e.g. 5s); 0 is off.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub progress: u64,
    /// Serve the run's figures (counters, open sessions, lag, frontier and committed window)
    /// in the Prometheus text format at `http://HOST:PORT/metrics` (port 0: a free one, printed
    /// at start). Each process of a cluster serves its own workers'.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    /// Also serve the totals per experiment variation (as --experiments computes them) at
    /// --metrics, one series per variation and figure; the cluster's process 0 serves them.
    #[arg(long, requires = "metrics")]
    pub experiment_metrics: bool,
    /// On SIGINT or SIGTERM a live run stops reading and waits this long at most for what it
    /// read to become durable and its offsets committed, then exits (e.g. 30s). A second
    /// signal exits at once.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    pub shutdown_timeout: u64,
    /// Session semantics.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Workers and cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// \[hbase\] The HBase sink (SessionDB or event-per-cell) and its restore on resume.
    #[command(flatten)]
    pub hbase: HbaseArgs,
}

/// The `--stats` file of a run: replay's counters, plus `skipped_on_resume` when non-zero
/// (records read again after a restart whose window was already durable), so that a fresh run
/// writes exactly replay's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// The spec's counters (`events_read` excludes the skipped records).
    #[serde(flatten)]
    pub stats: Stats,
    /// Records read again after a restart and dropped as already reflected (count).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_on_resume: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a worker reports at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Report {
    stats: Stats,
    skipped_on_resume: u64,
    error: Option<String>,
    /// The smallest frontier of the worker's end cuts.
    end_frontier: Option<u64>,
}

/// What one worker last reported, for the progress line.
#[derive(Clone, Debug, Default)]
struct Figures {
    /// The worker's counters ([`pipeline::Job::stats`]).
    stats: Stats,
    skipped_on_resume: u64,
    open_sessions: u64,
    pending_events: u64,
    window: Option<u64>,
    commits: u64,
    /// The broker acknowledged commits up to this frontier (only while committing).
    acknowledged: Option<u64>,
    /// Commits issued again (not acknowledged within an interval).
    commit_retries: u64,
    /// Where each of the worker's partitions stands.
    positions: Vec<PartitionPosition>,
}

/// A Kafka sink as an extra sink of the pipeline.
struct KafkaAttach(KafkaSink);

impl<D: KafkaMessage + Clone + 'static> Attach<D> for KafkaAttach {
    fn attach<'s>(self: Box<Self>, stream: StreamVec<'s, u64, D>) -> StreamVec<'s, u64, ()> {
        stream.sink_kafka(self.0)
    }
}

fn sink_config(args: &RunArgs, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: args.input.brokers.clone(),
        topic: topic.to_string(),
        options: args.options.clone(),
    }
}

/// Runs the job; returns the counters (process 0 of a `--stop-at-end` run) once every output
/// is in place and the final offsets are committed. A live run returns on error, or `None`
/// after a graceful stop on SIGINT/SIGTERM (reading stops; the run waits up to
/// `--shutdown-timeout` for what it read to be durable and committed). A signal abandons a
/// `--stop-at-end` run: no file is written and nothing committed.
pub fn run(mut args: RunArgs) -> Result<Option<RunStats>, String> {
    args.options = options_with_file(args.kafka_config.as_deref(), &args.options)?;
    // --stop-at is a bounded run that ends its partitions earlier.
    args.stop_at_end |= args.stop_at.is_some();
    let mut job = args.session.job()?;
    let source = KafkaSourceConfig {
        brokers: args.input.brokers.clone(),
        topic: args.input.topic.clone(),
        group: args.input.group.clone(),
        start: args.start,
        stop_at_end: args.stop_at_end,
        end_time_ms: args.stop_at,
        idle_timeout_ms: args.idle_timeout,
        connect_timeout_ms: args.connect_timeout,
        final_commit_timeout_ms: args.final_commit_timeout,
        // librdkafka's statistics give the lag the progress line and the metrics show: at the
        // line's interval, else the source's default (every second).
        stats_interval_ms: if args.progress > 0 {
            args.progress.clamp(1_000, 60_000)
        } else {
            0
        },
        options: args.options.clone(),
    };
    // An output topic that is the input would feed the job its own output (dead letters of
    // dead letters without end); two outputs in one topic would mix their records.
    for (flag, topic) in [
        ("--snapshot-topic", &args.snapshot_topic),
        ("--dead-letter-topic", &args.dead_letter_topic),
    ] {
        if topic.as_deref() == Some(args.input.topic.as_str()) {
            return Err(format!(
                "{flag} {} is the input topic: the job would read its own output",
                args.input.topic
            ));
        }
    }
    if let (Some(s), Some(d)) = (&args.snapshot_topic, &args.dead_letter_topic) {
        if s == d {
            return Err(format!(
                "--snapshot-topic and --dead-letter-topic are both {s}: each needs a topic of its own"
            ));
        }
    }
    // An -X option that would change what the job's guarantees rest on: an error at once.
    source.consumer_config(0)?;
    for topic in [&args.snapshot_topic, &args.dead_letter_topic].into_iter().flatten() {
        sink_config(&args, topic).producer_config()?;
    }
    job.source.max_windows_ahead = args.max_windows_ahead;
    job.source.commit_interval_ms = args.commit_interval;
    // A failed input (or commit) keeps the windows it held open until the loop below stops
    // the run, so no sink gets a window without that input's events.
    job.source.hold_on_error = true;
    // [hbase] Sink settings (turns emit_state on for SessionDB); the table is checked or
    // created, with logged retries, before any dataflow starts.
    let mut hbase = args.hbase.sink_config(&mut job)?;
    if let Some(h) = &mut hbase {
        // The table's own versions bound how far the sink may write past the commits.
        h.max_versions = h.prepare().map_err(|e| e.to_string())?;
    }
    let restores_sessiondb = hbase.as_ref().is_some_and(|h| h.mode == SinkMode::Sessions);
    let hbase_stats = Arc::new(sessionflow_operators::sink::hbase::SinkStats::default());
    let config = args.cluster.timely_config()?;
    let writes = args.cluster.writes_outputs();
    let files =
        args.output.is_some() || args.dead_letter.is_some() || args.stats.is_some() || args.experiments.is_some();
    if writes {
        for p in [&args.output, &args.dead_letter, &args.stats, &args.experiments]
            .into_iter()
            .flatten()
        {
            check_writable(p)?;
        }
    }
    // [hbase] The HBase sink acknowledges writes like the Kafka sinks.
    let kafka_sinks = args.snapshot_topic.is_some() || args.dead_letter_topic.is_some() || args.hbase.hbase.is_some();
    if !files && !kafka_sinks {
        eprintln!("run: no output configured (snapshots and dead letters are dropped)");
    }
    if !args.stop_at_end && !kafka_sinks {
        eprintln!("run: no Kafka sink: offsets are never committed");
    }

    let workers = args.cluster.workers;
    let live = Live {
        figures: Arc::new(Mutex::new(vec![Figures::default(); workers])),
        lags: Arc::default(),
        kafka_sinks: Arc::default(),
        hbase: args.hbase.hbase.is_some().then(|| Arc::clone(&hbase_stats)),
        experiments: args.experiment_metrics.then(SharedTotals::default),
    };
    let window_ms = args.session.window;
    if let Some(addr) = &args.metrics {
        let info = metrics::Info {
            topic: args.input.topic.clone(),
            group: args.input.group.clone(),
            snapshot_topic: args.snapshot_topic.clone(),
            dead_letter_topic: args.dead_letter_topic.clone(),
            process: args.cluster.process_id,
            processes: args.cluster.processes,
            workers,
            window_ms,
            start_time_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        let live = live.clone();
        let bound = metrics::serve(addr, move || metrics::render(&info, &live.sample()))?;
        eprintln!("run: metrics at http://{bound}/metrics");
    }

    // Clear errors (with logged retries) before any dataflow starts.
    let deadline = Instant::now() + Duration::from_millis(args.connect_timeout);
    let metadata = MetadataClient::new(&args.input.brokers, &args.options)?;
    let partitions = metadata.wait_for_topic(&args.input.topic, deadline)?;
    metadata.check_group_unused(&args.input.group, deadline)?;
    // Its threads are not needed past the checks.
    drop(metadata);
    let outputs = [
        (
            &args.snapshot_topic,
            snapshot_topic_configs(&args.snapshot_topic_config),
        ),
        (&args.dead_letter_topic, args.dead_letter_topic_config.clone()),
    ];
    for (topic, configs) in outputs {
        if let Some(topic) = topic {
            ensure_topic_with(
                &args.input.brokers,
                topic,
                partitions,
                &args.options,
                &configs,
                deadline,
            )?;
        }
    }

    let abort: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    // Dropping `done` ends the progress thread at once (it waits on the channel, not a timer).
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let printer = (args.progress > 0).then(|| {
        let live = live.clone();
        let every = Duration::from_millis(args.progress);
        std::thread::spawn(move || progress_loop(&live, &done_rx, every, window_ms, started))
    });

    let signals = StopSignals::register()?;
    let stop = Arc::new(Mutex::new(StopReport::default()));
    let (group, shutdown_timeout) = (args.input.group.clone(), args.shutdown_timeout);

    let args = Arc::new(args);
    let shared = (live, Arc::clone(&abort), Arc::clone(&hbase_stats));
    let (signalled, stop_report) = (signals.flag(), Arc::clone(&stop));
    let guards = timely::execute(config, move |worker| -> Result<Option<RunStats>, String> {
        let (live, abort) = (&shared.0, &shared.1);
        let index = worker.index();
        let local = index % workers.max(1);
        let fail = |e: String| {
            if let Ok(mut a) = abort.lock() {
                a.get_or_insert(e);
            }
        };
        // A stop request from any worker reaches every worker, so a signal to one process of a
        // cluster stops them all (built first, the same on every worker).
        let requested = Rc::new(Cell::new(false));
        let mut stop_input = {
            let seen = Rc::clone(&requested);
            worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<u64>();
                stream.broadcast().inspect(move |_| seen.set(true));
                input
            })
        };
        // Sessions follow the topic's partitioner when the workers divide its partitions (see
        // `Routing`). The routing must be one for all workers: every process read the count,
        // and process 0's is the one (it differs only if partitions were added meanwhile).
        // A SessionDB job routes by key hash: a restore reads each worker's keys from the salt
        // buckets it owns, and the salt is the key hash (under the partitioner's routing every
        // worker would scan every bucket).
        // (`restores_sessiondb` comes from the flags, the same in every process, so either
        // every worker takes part in the broadcast or none does.)
        let job = if restores_sessiondb {
            job.clone()
        } else {
            let count = broadcast_from_0(worker, Some(u64::from(partitions))).unwrap_or(u64::from(partitions));
            job.routed(usize::try_from(count).unwrap_or(0), worker.peers())
        };
        let reader = match KafkaReader::connect(&source, index, worker.peers()) {
            Ok(r) => r,
            Err(e) => {
                // Every worker must build the same dataflow: carry on with nothing to read.
                fail(e);
                KafkaReader::empty(&args.input.topic)
            }
        };
        let committer = reader.committer();
        if let Ok(mut l) = live.lags.lock() {
            l.push(reader.lag_gauge());
        }
        let line_files = if index == 0 && writes {
            // A failure stops every worker in the loop below (they all build the dataflow).
            let open = |p: &Option<PathBuf>| {
                let file = p
                    .as_ref()
                    .map(|p| LineFile::create(p).map(|f| Rc::new(RefCell::new(f))));
                file.transpose().unwrap_or_else(|e| {
                    fail(e);
                    None
                })
            };
            Some((open(&args.output), open(&args.dead_letter), open(&args.experiments)))
        } else {
            None
        };
        let mut statuses: Vec<KafkaSinkStatus> = Vec::new();
        let mut outputs = Outputs {
            snapshot_file: line_files.as_ref().and_then(|f| f.0.clone()),
            dead_letter_file: line_files.as_ref().and_then(|f| f.1.clone()),
            experiments: args.experiments.is_some() || args.experiment_metrics,
            experiment_file: line_files.as_ref().and_then(|f| f.2.clone()),
            latest_experiments: live.experiments.clone().filter(|_| index == 0),
            // A bounded run commits once, at the end: while it runs, partitions that ended hold
            // no frontier, so a frontier committed then could exceed an ended partition's
            // window and a later run would skip records appended to it.
            commit_on_durable: kafka_sinks && !files && !args.stop_at_end,
            no_file_sinks: !files,
            ..Outputs::default()
        };
        if let Some(topic) = &args.snapshot_topic {
            let sink = KafkaSink::create(
                &sink_config(&args, topic),
                &format!("kafka snapshot sink (worker {index})"),
            )?;
            statuses.push(sink.status());
            live.add_sink(SinkKind::Snapshots, sink.status());
            outputs.snapshot_sinks.push(Box::new(KafkaAttach(sink)));
        }
        if let Some(topic) = &args.dead_letter_topic {
            let sink = KafkaSink::create(
                &sink_config(&args, topic),
                &format!("kafka dead-letter sink (worker {index})"),
            )?;
            statuses.push(sink.status());
            live.add_sink(SinkKind::DeadLetters, sink.status());
            let attach: Box<dyn Attach<DeadLetter>> = Box::new(KafkaAttach(sink));
            outputs.dead_letter_sinks.push(attach);
        }
        // [hbase] Restore this worker's sessions on a resume, then attach the sink. On a failed
        // restore nothing is written to HBase and the run stops with the error.
        if let Some(h) = &hbase {
            let resume = reader.resume_points();
            if let Err(e) = hbase_args::wire(h, &shared.2, &job, index, worker.peers(), &resume, &mut outputs) {
                fail(e);
            }
        }
        let built = pipeline::build(worker, &job, reader, outputs);

        // Step until the output is complete; stop at once on any worker's failure, and
        // gracefully on a signal.
        let mut last = Instant::now();
        let refresh = figures_refresh(args.progress);
        let mut stopping: Option<Instant> = None;
        while !built.probe.done() {
            worker.step_or_park(Some(Duration::from_millis(5)));
            if let Some(e) = built.source.borrow().error.clone() {
                fail(e);
            }
            for s in &statuses {
                if let Some(e) = s.error() {
                    fail(e);
                }
            }
            // [hbase] A write HBase rejected for good stops the run (nothing past it is durable).
            if let Some(e) = shared.2.fatal() {
                fail(e);
            }
            if let Some(e) = abort.lock().ok().and_then(|a| a.clone()) {
                abandon(&line_files);
                // timely steps a worker until its dataflows complete even after this closure
                // returned, and a failed sink never completes: drop them.
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
                return Err(e);
            }
            if signalled.load(Ordering::SeqCst) && !requested.get() {
                // Tell every worker (this one included).
                requested.set(true);
                stop_input.send(index as u64);
                stop_input.flush();
            }
            if requested.get() && stopping.is_none() {
                if args.stop_at_end {
                    fail("interrupted by a signal: no file written, no offset committed".into());
                    continue;
                }
                // Read nothing more; the windows already read complete and commit meanwhile.
                built.control.stop();
                stopping = Some(Instant::now());
                if local == 0 {
                    eprintln!(
                        "run: stopping on a signal: reading stopped, waiting up to {:.1} s for the output read so far to be durable and committed (a second signal exits at once)",
                        args.shutdown_timeout as f64 / 1000.0
                    );
                }
            }
            if let Some(since) = stopping {
                let drained = built.drained();
                if drained || since.elapsed() >= Duration::from_millis(args.shutdown_timeout) {
                    if let Ok(mut r) = stop_report.lock() {
                        r.record(drained, built.commit_frontier(), built.source.borrow().events_read);
                    }
                    // The open windows stay open: their sessions are not closed, and a restart
                    // with the same group reads them again from the committed offsets.
                    for id in worker.installed_dataflows() {
                        worker.drop_dataflow(id);
                    }
                    return Ok(None);
                }
            }
            if last.elapsed() >= refresh {
                last = Instant::now();
                let (src, ses) = (built.source.borrow(), built.session.borrow());
                if let Ok(mut f) = live.figures.lock() {
                    f[local] = Figures {
                        stats: Stats::from_parts(&src, &ses.counters),
                        skipped_on_resume: src.skipped_on_resume,
                        open_sessions: ses.open_sessions,
                        pending_events: ses.pending_events,
                        window: src.window,
                        commits: src.commits,
                        acknowledged: src.acknowledged.filter(|_| src.window.is_some()),
                        commit_retries: src.commit_retries,
                        positions: src.positions.clone(),
                    };
                }
            }
        }

        // The stop channel is not needed any more (its dataflow completes once every worker
        // closed it).
        stop_input.close();

        // Bounded run complete: counters, files, then the final offsets.
        let (end_cuts, report) = {
            let src = built.source.borrow();
            let report = Report {
                stats: built.stats(),
                skipped_on_resume: src.skipped_on_resume,
                error: src.error.clone(),
                end_frontier: src.end_cuts.iter().map(|c| c.frontier).min(),
            };
            (src.end_cuts.clone(), report)
        };
        let gathered = gather(worker, report);
        let mut result: Result<Option<RunStats>, String> = Ok(None);
        let mut frontier = None;
        if let Some(reports) = gathered {
            result = finish(&args, &line_files, &reports);
            // One frontier for every partition: the smallest of all workers' (see `end_cut`).
            frontier = result
                .is_ok()
                .then(|| reports.iter().filter_map(|r| r.end_frontier).min().unwrap_or(0));
        }
        // Offsets are committed only once worker 0 reports every output in place.
        match broadcast_from_0(worker, frontier) {
            Some(f) => {
                let cuts: Vec<_> = end_cuts.into_iter().map(|c| Cut { frontier: f, ..c }).collect();
                committer.commit_sync(&cuts)?;
            }
            None if index != 0 => return Err("worker 0 failed to complete the output".into()),
            None => {}
        }
        result
    });
    let guards = match guards {
        Ok(g) => g,
        Err(e) => {
            drop(done);
            return Err(e);
        }
    };
    let mut result = None;
    let mut error = None;
    for r in guards.join() {
        match r {
            Ok(Ok(Some(s))) => result = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(e) => {
                error.get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    drop(done);
    if let Some(p) = printer {
        let _ = p.join();
    }
    drop(signals);
    if error.is_none() {
        if let Ok(r) = stop.lock() {
            if let Some(line) = r.describe(&group, shutdown_timeout, window_ms) {
                eprintln!("{line}");
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(result),
    }
}

/// SIGINT and SIGTERM, while a run lasts: the first sets a flag (the run stops gracefully),
/// a second one exits the process at once with status 130.
struct StopSignals {
    flag: Arc<AtomicBool>,
    hooks: Vec<signal_hook::SigId>,
}

impl StopSignals {
    fn register() -> Result<StopSignals, String> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut hooks = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag as it was before this signal set it.
            let exit = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag));
            let set = exit.and_then(|h| {
                hooks.push(h);
                signal_hook::flag::register(sig, Arc::clone(&flag))
            });
            hooks.push(set.map_err(|e| format!("cannot handle signal {sig}: {e}"))?);
        }
        Ok(StopSignals { flag, hooks })
    }

    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for h in self.hooks.drain(..) {
            signal_hook::low_level::unregister(h);
        }
    }
}

/// How the workers of this process ended a graceful stop.
#[derive(Debug, Default)]
struct StopReport {
    /// Workers that stopped (all of this process's, once the run returned).
    workers: usize,
    /// Of those, the ones whose wait ran out before the commits reached the sources' frontier.
    timed_out: usize,
    /// Smallest acknowledged commit frontier seen (`None`: nothing commits).
    committed: Option<u64>,
    /// Events read by those workers.
    events_read: u64,
}

impl StopReport {
    fn record(&mut self, drained: bool, committed: Option<u64>, events_read: u64) {
        self.workers += 1;
        self.timed_out += usize::from(!drained);
        self.committed = match (self.committed, committed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.events_read += events_read;
    }

    /// The line to print, once the workers stopped on a signal; `window_ms` (W) dates the
    /// committed window.
    fn describe(&self, group: &str, timeout_ms: u64, window_ms: u64) -> Option<String> {
        if self.workers == 0 {
            return None;
        }
        let read = self.events_read;
        Some(match (self.timed_out, self.committed) {
            (0, Some(w)) => format!(
                "run: stopped on a signal after {read} events read: every window below {w} is durable (events before {}) and its offsets are committed; a restart with --group {group} resumes there",
                window_start(w, window_ms)
            ),
            (0, None) => format!(
                "run: stopped on a signal after {read} events read (this run commits no offsets)"
            ),
            (n, w) => format!(
                "run: stopped on a signal after {read} events read; {n} worker(s) gave up waiting after {:.1} s (--shutdown-timeout): offsets committed for the windows below {}, a restart with --group {group} reads the rest again",
                timeout_ms as f64 / 1000.0,
                w.map_or_else(|| "none".to_string(), |w| w.to_string())
            ),
        })
    }
}

/// Worker 0's snapshot, dead-letter and experiment files (each if asked for).
type Files = Option<(
    Option<Rc<RefCell<LineFile>>>,
    Option<Rc<RefCell<LineFile>>>,
    Option<Rc<RefCell<LineFile>>>,
)>;

fn abandon(files: &Files) {
    if let Some((s, d, e)) = files {
        for f in [s, d, e].into_iter().flatten() {
            f.borrow_mut().abandon();
        }
    }
}

/// Worker 0, after the run: checks the counters, puts the files in place.
fn finish(args: &RunArgs, files: &Files, reports: &[Report]) -> Result<Option<RunStats>, String> {
    let mut total = RunStats::default();
    let mut error = None;
    for r in reports {
        total.stats.add(&r.stats);
        total.skipped_on_resume += r.skipped_on_resume;
        if error.is_none() {
            error.clone_from(&r.error);
        }
    }
    if let Some(e) = error {
        abandon(files);
        return Err(e);
    }
    if !total.stats.balanced() {
        abandon(files);
        return Err(format!("internal error: counters do not balance: {:?}", total.stats));
    }
    if let Some((s, d, e)) = files {
        let stats_file = match args.stats.as_deref().map(|p| json_file(p, &total)).transpose() {
            Ok(f) => f.map(RefCell::new),
            Err(e) => {
                abandon(files);
                return Err(e);
            }
        };
        // Every output in place, or none of them.
        let all = [s.as_deref(), d.as_deref(), e.as_deref(), stats_file.as_ref()];
        finish_all(all.into_iter().flatten())?;
    }
    Ok(Some(total))
}

/// Gathers one value from every worker at worker 0 (which gets `Some`, in worker order).
fn gather<T: timely::ExchangeData + Clone>(worker: &mut Worker, value: T) -> Option<Vec<T>> {
    let all: Rc<RefCell<Vec<(usize, T)>>> = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&all);
    let index = worker.index();
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(usize, T)>();
        let probe = stream
            .exchange(|_| 0)
            .inspect(move |x: &(usize, T)| sink.borrow_mut().push(x.clone()))
            .probe()
            .0;
        (input, probe)
    });
    input.send((index, value));
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    if index != 0 {
        return None;
    }
    let mut v = all.take();
    v.sort_by_key(|(i, _)| *i);
    Some(v.into_iter().map(|(_, t)| t).collect())
}

/// Worker 0's `value`, delivered to every worker.
fn broadcast_from_0(worker: &mut Worker, flag: Option<u64>) -> Option<u64> {
    let got = Rc::new(RefCell::new(None));
    let sink = Rc::clone(&got);
    let (index, peers) = (worker.index(), worker.peers());
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(u64, Option<u64>)>();
        let probe = stream
            .exchange(|x: &(u64, Option<u64>)| x.0)
            .inspect(move |x: &(u64, Option<u64>)| *sink.borrow_mut() = x.1)
            .probe()
            .0;
        (input, probe)
    });
    if index == 0 {
        for i in 0..peers {
            input.send((i as u64, flag));
        }
    }
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    let v = *got.borrow();
    v
}

/// How often each worker refreshes the figures the progress line prints, for a line every
/// `progress_ms` (0: none): a tenth of that, within 5-200 ms. The line's events/s compares two
/// samples of the figures; refreshed every 200 ms, lines 100 ms apart showed 0 and double the
/// rate in turn. (A worker refreshes between steps, so one busy with a large window for longer
/// still shows its count late.)
pub(super) fn figures_refresh(progress_ms: u64) -> Duration {
    let ms = if progress_ms == 0 {
        200
    } else {
        (progress_ms / 10).clamp(5, 200)
    };
    Duration::from_millis(ms)
}

/// When window `w` of `window_ms` starts, as UTC (`2023-11-14T22:13:00Z`): the progress and
/// stop lines date the windows they name. A start past `i64` milliseconds is named as
/// `window {w} of {window_ms} ms` instead.
pub(super) fn window_start(w: u64, window_ms: u64) -> String {
    let Some(ms) = w.checked_mul(window_ms).and_then(|ms| i64::try_from(ms).ok()) else {
        return format!("window {w} of {window_ms} ms");
    };
    format_utc(ms)
}

/// Which Kafka sink a status is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SinkKind {
    Snapshots,
    DeadLetters,
}

/// What the progress line and the metrics read: the workers' last reports, the consumers' lag
/// gauges, the Kafka sinks' statuses and the HBase sink's figures (shared by the process).
#[derive(Clone)]
struct Live {
    figures: Arc<Mutex<Vec<Figures>>>,
    lags: Arc<Mutex<Vec<Arc<ConsumerLag>>>>,
    kafka_sinks: Arc<Mutex<Vec<(SinkKind, KafkaSinkStatus)>>>,
    /// With `--hbase` only.
    hbase: Option<Arc<sessionflow_operators::sink::hbase::SinkStats>>,
    /// With `--experiment-metrics` only.
    experiments: Option<SharedTotals>,
}

impl Live {
    fn add_sink(&self, kind: SinkKind, status: KafkaSinkStatus) {
        if let Ok(mut s) = self.kafka_sinks.lock() {
            s.push((kind, status));
        }
    }

    /// This process's figures: its workers' last reports, summed (the windows: their
    /// smallest), the consumers' lag (unknown until librdkafka's statistics reported one), and
    /// the sinks' figures.
    fn sample(&self) -> metrics::Sample {
        let mut out = metrics::Sample::default();
        if let Ok(f) = self.figures.lock() {
            for x in f.iter() {
                out.stats.add(&x.stats);
                out.skipped_on_resume += x.skipped_on_resume;
                out.open_sessions += x.open_sessions;
                out.pending_events += x.pending_events;
                out.commits += x.commits;
                out.commit_retries += x.commit_retries;
            }
            out.frontier = f.iter().filter_map(|x| x.window).min();
            out.committed = f.iter().filter_map(|x| x.acknowledged).min();
        }
        let mut lags: Vec<(u32, i64)> = Vec::new();
        if let Ok(l) = self.lags.lock() {
            let totals: Vec<i64> = l.iter().filter_map(|g| g.total()).collect();
            out.lag = (!totals.is_empty()).then(|| totals.iter().sum());
            lags.extend(l.iter().flat_map(|g| g.partitions()));
        }
        // Each partition is one worker's: its position, with the lag its consumer reported.
        if let Ok(f) = self.figures.lock() {
            out.partitions = f
                .iter()
                .flat_map(|x| x.positions.iter())
                .map(|p| metrics::PartitionFigures {
                    position: *p,
                    lag: lags.iter().find(|(q, _)| *q == p.partition).map(|(_, l)| *l),
                })
                .collect();
            out.partitions.sort_unstable_by_key(|p| p.position.partition);
        }
        if let Ok(sinks) = self.kafka_sinks.lock() {
            for (kind, status) in sinks.iter() {
                let sum = match kind {
                    SinkKind::Snapshots => &mut out.snapshot_sink,
                    SinkKind::DeadLetters => &mut out.dead_letter_sink,
                };
                let sum = sum.get_or_insert_with(Default::default);
                sum.acked += status.acked();
                sum.in_flight += status.in_flight();
                sum.replacements += status.replacements();
            }
        }
        // Worker 0's (in the other processes of a cluster they stay empty: no window).
        out.experiments = self.experiments.as_ref().and_then(|e| e.lock().ok().map(|l| l.clone()));
        out.hbase = self.hbase.as_ref().map(|h| metrics::HbaseFigures {
            rows: h.rows.load(Ordering::Relaxed),
            calls: h.calls.load(Ordering::Relaxed),
            retries: h.retries.load(Ordering::Relaxed),
            in_flight: h.in_flight.load(Ordering::Relaxed),
            in_flight_bytes: h.in_flight_bytes.load(Ordering::Relaxed),
        });
        out
    }
}

/// The progress line's note on the partitions holding the frontier back while another is two
/// windows or more past it (`, held back by partition 3 (no event yet; see --idle-timeout)`);
/// empty when there are none (partitions a window apart are the normal flow of a live topic).
/// At most three are named.
fn held_back(sample: &metrics::Sample) -> String {
    let holding = sample.holding(2);
    if holding.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = holding
        .iter()
        .take(3)
        .map(|p| match p.position.max_ts {
            Some(_) => p.position.partition.to_string(),
            None => format!("{} (no event yet; see --idle-timeout)", p.position.partition),
        })
        .collect();
    if holding.len() > 3 {
        names.push(format!("{} more", holding.len() - 3));
    }
    let s = if holding.len() > 1 { "s" } else { "" };
    format!(", held back by partition{s} {}", names.join(", "))
}

fn progress_loop(live: &Live, done: &std::sync::mpsc::Receiver<()>, every: Duration, window_ms: u64, started: Instant) {
    let mut last = (Instant::now(), 0u64);
    let mut next = Instant::now() + every;
    loop {
        // Nothing is ever sent: the wait ends at the next line's time, or when the run drops
        // the sender.
        match done.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // After a stall the lines go on at least half an interval apart, not in a burst.
        next = (next + every).max(Instant::now() + every / 2);
        let sample = live.sample();
        let held = held_back(&sample);
        let metrics::Sample {
            stats,
            open_sessions: open,
            lag,
            frontier: window,
            committed: acked,
            commits,
            commit_retries: retries,
            ..
        } = sample;
        let read = stats.events_read;
        let rate = (read - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), read);
        eprintln!(
            "run [{:7.1}s] {read} events, {rate:.0} events/s, lag {}, open sessions {open}, window {}{held}, commits {commits}{}{}",
            started.elapsed().as_secs_f64(),
            lag.map_or("?".to_string(), |l| l.to_string()),
            window.map_or("-".to_string(), |w| format!("{w} ({})", window_start(w, window_ms))),
            acked.map_or(String::new(), |a| format!(" (acknowledged to window {a})")),
            if retries > 0 { format!(", {retries} commit retries") } else { String::new() },
        );
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_created_snapshot_topic_is_compacted_unless_told_otherwise() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(snapshot_topic_configs(&[]), [kv("cleanup.policy", "compact")]);
        assert_eq!(
            snapshot_topic_configs(&[kv("retention.ms", "1000")]),
            [kv("cleanup.policy", "compact"), kv("retention.ms", "1000")]
        );
        assert_eq!(
            snapshot_topic_configs(&[kv("cleanup.policy", "delete")]),
            [kv("cleanup.policy", "delete")]
        );
        assert_eq!(
            parse_topic_config(" segment.ms = 60000 "),
            Ok(kv("segment.ms", "60000"))
        );
        for bad in ["", "x", "=1", "x="] {
            assert!(
                parse_topic_config(bad).unwrap_err().starts_with("bad topic config"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_progress_line_names_the_partitions_the_output_waits_for() {
        let part = |partition: u32, window: u64, max_ts: Option<i64>| metrics::PartitionFigures {
            position: PartitionPosition {
                partition,
                window,
                max_ts,
                ..PartitionPosition::default()
            },
            lag: None,
        };
        let mut sample = metrics::Sample {
            frontier: Some(5),
            partitions: vec![part(0, 5, Some(1)), part(1, 7, Some(1))],
            ..metrics::Sample::default()
        };
        assert_eq!(held_back(&sample), ", held back by partition 0");
        sample.partitions[1].position.window = 6;
        assert_eq!(held_back(&sample), "", "a window apart");
        sample.partitions[1].position.window = 7;
        sample.partitions.push(part(2, 0, None));
        assert_eq!(
            held_back(&sample),
            ", held back by partitions 0, 2 (no event yet; see --idle-timeout)"
        );
        sample.partitions.extend([part(3, 5, Some(1)), part(4, 5, Some(1))]);
        assert_eq!(
            held_back(&sample),
            ", held back by partitions 0, 2 (no event yet; see --idle-timeout), 3, 1 more"
        );
        sample.partitions.retain(|p| p.position.partition != 1);
        assert_eq!(held_back(&sample), "", "every live partition at the frontier");
    }

    #[test]
    fn windows_are_dated_in_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(951_868_799_999), "2000-02-29T23:59:59Z");
        assert_eq!(format_utc(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_utc(253_402_300_799_000), "9999-12-31T23:59:59Z");
        assert_eq!(window_start(28_333_337, 60_000), "2023-11-14T22:17:00Z");
        assert_eq!(
            window_start(u64::MAX, 60_000),
            format!("window {} of 60000 ms", u64::MAX)
        );
    }

    #[test]
    fn the_x_help_names_every_fixed_option() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let cmd = <Cli as clap::CommandFactory>::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "options")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for (key, _) in sessionflow_operators::source::kafka::FIXED_OPTIONS {
            assert!(help.contains(key), "-X's help does not name {key}: {help}");
        }
    }

    #[test]
    fn figures_refresh_well_within_the_progress_interval() {
        assert_eq!(figures_refresh(5_000), Duration::from_millis(200));
        assert_eq!(figures_refresh(1_000), Duration::from_millis(100));
        assert_eq!(figures_refresh(100), Duration::from_millis(10));
        assert_eq!(figures_refresh(1), Duration::from_millis(5));
        assert_eq!(figures_refresh(0), Duration::from_millis(200));
    }

    #[test]
    fn stop_report_names_the_smallest_committed_window_and_any_timeout() {
        assert_eq!(StopReport::default().describe("g", 30_000, 60_000), None);
        let mut drained = StopReport::default();
        drained.record(true, Some(12), 100);
        drained.record(true, Some(10), 50);
        let line = drained.describe("g", 30_000, 60_000).unwrap();
        assert!(line.contains("after 150 events read"), "{line}");
        assert!(
            line.contains("every window below 10 is durable (events before 1970-01-01T00:10:00Z)"),
            "{line}"
        );
        assert!(line.contains("--group g resumes there"), "{line}");

        let mut late = StopReport::default();
        late.record(true, Some(10), 1);
        late.record(false, Some(7), 1);
        let line = late.describe("g", 2_500, 60_000).unwrap();
        assert!(line.contains("1 worker(s) gave up waiting after 2.5 s"), "{line}");
        assert!(line.contains("windows below 7"), "{line}");

        let mut none = StopReport::default();
        none.record(true, None, 3);
        assert!(none.describe("g", 1, 60_000).unwrap().contains("commits no offsets"));
    }

    #[test]
    fn run_stats_bytes_equal_replay_stats_unless_records_were_skipped() {
        let stats = Stats {
            events_read: 5,
            accepted: 3,
            duplicates: 1,
            late: 0,
            invalid: 1,
            ..Stats::default()
        };
        let plain = serde_json::to_string(&stats).unwrap();
        let run = RunStats {
            stats,
            skipped_on_resume: 0,
        };
        assert_eq!(serde_json::to_string(&run).unwrap(), plain);
        let resumed = RunStats {
            stats,
            skipped_on_resume: 7,
        };
        let text = serde_json::to_string(&resumed).unwrap();
        assert!(text.ends_with(",\"skipped_on_resume\":7}"), "{text}");
        assert_eq!(serde_json::from_str::<RunStats>(&text).unwrap(), resumed);
    }
}
