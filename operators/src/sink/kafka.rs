//! Kafka sinks: snapshots (key = session id, value = the snapshot JSON) and dead letters
//! (key = source partition, value = the spec's dead-letter JSON with partition and offset).
//!
//! Each worker produces its own share of the stream (no exchange) through an rdkafka
//! [`BaseProducer`], polled by a thread of its own, whose delivery callback counts
//! acknowledgements per window. The
//! operator holds a capability for every window with a message not yet acknowledged, so the
//! stream it returns passes window `m` only once every message of the windows `<= m` was
//! acknowledged by the broker (all in-sync replicas): this is the frontier offset commits trust.
//!
//! Retries are librdkafka's (idempotent producer: no duplicates, no reordering); a message
//! that still fails (after `message.timeout.ms`, 5 min by default, or at once when it is too
//! large) is a permanent failure: [`KafkaSinkStatus::error`] says why and the failed window is
//! never released, so nothing is committed past it. Never a silent loss.
//!
//! One librdkafka (2.12) fault is worked around: when a broker answers a metadata request with
//! no brokers while it shuts down (a single-node cluster restarting), the producer can forget
//! every broker it knew before it notices the connection is down; it then never bootstraps
//! again and its messages wait until they time out, although the broker is back. The sink
//! watches the producer's statistics; a producer that has known no broker for
//! [`STRANDED_AFTER`] is replaced: its queued messages (never sent: with no broker there is
//! nothing in flight) are purged, collected from their delivery reports and sent again, in
//! their order, through a new producer with the same settings, before anything newer.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;

use crate::record::DeadLetter;
use crate::session::Snapshot;
use crate::source::kafka::{
    block_on, client_config, metadata_config, request_timeout, retry, served_topic_partitions, ClientKind, ClientLog,
};

/// Settings of one Kafka sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers: a comma-separated list of `host:port`.
    pub brokers: String,
    /// Topic written to (a name).
    pub topic: String,
    /// librdkafka options as `(key, value)`, applied after ours (`-X key=value`; a key
    /// prefixed `producer:` applies to producers only, `consumer:` ones are skipped); one that
    /// would change a [`FIXED_OPTIONS`](crate::source::kafka::FIXED_OPTIONS) option is an error.
    pub options: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    /// The settings of the sink's producer: ours, then the `-X` options (an error if one would
    /// change a fixed option). Nothing connects: `run` calls it first to reject such an option
    /// before any dataflow starts.
    pub fn producer_config(&self) -> Result<ClientConfig, String> {
        let mut ours: Vec<(&str, String)> = PRODUCER_OPTIONS.map(|(k, v)| (k, v.to_string())).into();
        ours.extend([
            // Names this sink in the broker's logs.
            ("client.id", format!("sessionflow-sink-{}", self.topic)),
            // The brokers the producer knows, to notice it lost them all (see the module doc).
            ("statistics.interval.ms", STATS_INTERVAL_MS.to_string()),
        ]);
        client_config(&self.brokers, &ours, &self.options, ClientKind::Producer)
    }
}

/// How a record becomes a Kafka message.
pub trait KafkaMessage {
    /// Appends the message key to `out`.
    fn key(&self, out: &mut Vec<u8>);
    /// Appends the message value to `out`.
    fn value(&self, out: &mut Vec<u8>);
}

impl KafkaMessage for Snapshot {
    /// The session id.
    fn key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.session_id.as_bytes());
    }

    /// The snapshot JSON object.
    fn value(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.json.as_bytes());
    }
}

impl KafkaMessage for DeadLetter {
    /// The source partition (decimal): one source partition's dead letters stay in order.
    fn key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.partition.to_string().as_bytes());
    }

    /// The spec's dead-letter JSON: `{"reason":..,"partition":p,"offset":o,"raw":..}`.
    fn value(&self, out: &mut Vec<u8>) {
        self.write_json(out);
    }
}

#[derive(Debug, Default)]
struct Acks {
    /// Window -> messages sent (or queued to send) and not yet acknowledged.
    outstanding: BTreeMap<u64, u64>,
    /// Messages acknowledged.
    acked: u64,
    /// The first permanent failure.
    error: Option<String>,
}

/// A message waiting to be sent: `(window, key, value)`.
type Pending = (u64, Vec<u8>, Vec<u8>);

/// How long a producer may know no broker before it is replaced (see the module doc).
pub const STRANDED_AFTER: Duration = Duration::from_secs(10);

/// How often a sink's producer reports its statistics, in ms (they show the brokers it knows).
const STATS_INTERVAL_MS: u64 = 1000;

/// Since when a client's statistics have shown no broker it can reach or bootstrap from (see
/// the module doc): the Kafka sink's producer and the Kafka source's consumer each have one.
#[derive(Debug, Default)]
pub(crate) struct StrandedClock(Mutex<Option<Instant>>);

impl StrandedClock {
    /// One statistics report of the client: whether it knows a broker ([`knows_a_broker`]).
    pub(crate) fn report(&self, knows_a_broker: bool) {
        if let Ok(mut since) = self.0.lock() {
            if knows_a_broker {
                *since = None;
            } else {
                since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Whether, at `now`, the client has known no broker for [`STRANDED_AFTER`].
    pub(crate) fn stranded(&self, now: Instant) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| s.is_some_and(|at| now.saturating_duration_since(at) >= STRANDED_AFTER))
    }

    /// Starts afresh (a new client).
    fn reset(&self) {
        self.report(true);
    }
}

#[derive(Debug)]
struct Shared {
    topic: String,
    acks: Mutex<Acks>,
    activator: OnceLock<SyncActivator>,
    /// Since when the current producer's statistics show no broker.
    stranded: StrandedClock,
    /// Messages purged from a replaced producer, `(window, key, value)` in delivery-report
    /// order (per partition the order they were sent in), to send again.
    purged: Mutex<Vec<Pending>>,
    /// Producers replaced so far (count).
    replacements: AtomicU64,
    /// A replacement asked for through [`KafkaSinkStatus::request_replacement`] (tests), with
    /// the brokers the new producer bootstraps from.
    replacement_request: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, message: String) {
        if let Ok(mut a) = self.acks.lock() {
            a.error.get_or_insert(message);
        }
        self.wake();
    }

    /// A statistics report of the current producer: whether it knows a broker.
    fn on_statistics(&self, knows_a_broker: bool) {
        self.stranded.report(knows_a_broker);
        if !knows_a_broker {
            // The operator checks how long this lasted: on every report, as a stalled job
            // (backpressure) sends it nothing else that would wake it.
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(a) = self.activator.get() {
            // Fails only when the worker is gone.
            let _ = a.activate();
        }
    }
}

/// The producer's context: logs, and acknowledgements counted per window.
struct SinkContext {
    log: Arc<ClientLog>,
    shared: Arc<Shared>,
    /// Messages given to this producer whose delivery report was not handled yet (count).
    unreported: AtomicU64,
    /// Set once this producer is replaced: its statistics no longer speak for the sink.
    replaced: AtomicBool,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.note(&format!("{error}: {reason}"));
    }

    fn stats(&self, statistics: Statistics) {
        if self.replaced.load(Ordering::Relaxed) {
            return;
        }
        self.shared.on_statistics(knows_a_broker(&statistics));
    }
}

/// Whether a client's statistics show a broker it can reach or bootstrap from (one given in
/// `bootstrap.servers` or learned from metadata), not only its internal and logical ones.
pub(crate) fn knows_a_broker(statistics: &Statistics) -> bool {
    statistics
        .brokers
        .values()
        .any(|b| b.source == "learned" || b.source == "configured")
}

impl ProducerContext for SinkContext {
    /// The window of the message.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, window: usize) {
        self.handle(result, window);
        // After the report's effect, so a retiring producer at zero has nothing more to give.
        self.unreported.fetch_sub(1, Ordering::Release);
    }
}

impl SinkContext {
    fn handle(&self, result: &DeliveryResult<'_>, window: usize) {
        match result {
            Ok(_) => {
                let Ok(mut a) = self.shared.acks.lock() else { return };
                a.acked += 1;
                let w = window as u64;
                let done = match a.outstanding.get_mut(&w) {
                    Some(n) => {
                        *n = n.saturating_sub(1);
                        *n == 0
                    }
                    None => false,
                };
                if done {
                    a.outstanding.remove(&w);
                    drop(a);
                    self.shared.wake();
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue), m)) => {
                // Purged from a replaced producer, never sent: it is sent again.
                let key = m.key().unwrap_or_default().to_vec();
                let value = m.payload().unwrap_or_default().to_vec();
                if let Ok(mut p) = self.shared.purged.lock() {
                    p.push((window as u64, key, value));
                }
            }
            Err((e, _)) => {
                let message = format!(
                    "cannot deliver a message of window {window} to topic {}: {e}",
                    self.shared.topic
                );
                self.log.note(&message);
                self.shared.fail(message);
            }
        }
    }
}

/// A handle on a sink's progress and failure, for the command running the job.
#[derive(Clone, Debug)]
pub struct KafkaSinkStatus(Arc<Shared>);

impl KafkaSinkStatus {
    /// The first permanent failure, if any: the job must stop with it.
    pub fn error(&self) -> Option<String> {
        self.0.acks.lock().ok().and_then(|a| a.error.clone())
    }

    /// Messages acknowledged by the broker so far (count).
    pub fn acked(&self) -> u64 {
        self.0.acks.lock().map(|a| a.acked).unwrap_or(0)
    }

    /// Messages sent and not yet acknowledged (count).
    pub fn in_flight(&self) -> u64 {
        self.0.acks.lock().map(|a| a.outstanding.values().sum()).unwrap_or(0)
    }

    /// Producers replaced because they had lost every broker (count).
    pub fn replacements(&self) -> u64 {
        self.0.replacements.load(Ordering::Relaxed)
    }

    /// Tells the sink its producer's statistics show no broker, as librdkafka's report does
    /// every second in the fault the replacement works around: for tests.
    #[doc(hidden)]
    pub fn report_no_broker(&self) {
        self.0.on_statistics(false);
    }

    /// Replaces the producer now as if it had lost every broker, the new one bootstrapping
    /// from `brokers`: for tests of the replacement (the fault it works around cannot be
    /// caused at will).
    #[doc(hidden)]
    pub fn request_replacement(&self, brokers: &str) {
        if let Ok(mut r) = self.0.replacement_request.lock() {
            *r = Some(brokers.to_string());
        }
        self.0.wake();
    }
}

/// A producer to one topic; hand it to [`SinkKafka::sink_kafka`].
pub struct KafkaSink {
    producer: PolledProducer<SinkContext>,
    shared: Arc<Shared>,
    log: Arc<ClientLog>,
    /// The producer's settings, for a replacement.
    config: ClientConfig,
    /// A replaced producer, until the delivery reports of its purged messages are all in.
    retiring: Option<PolledProducer<SinkContext>>,
}

/// How long the polling thread of a sink's producer waits for delivery reports at a time
/// (a report ends the wait at once): also the longest a dropped sink waits for the thread.
const POLL_WAIT: Duration = Duration::from_millis(25);

/// A producer whose delivery reports a thread of its own serves (what rdkafka's
/// `ThreadedProducer` does, but that one waits 100 ms at a time and joins its thread when
/// dropped, so every sink took up to 100 ms to drop, at the end of every bounded run). Idle,
/// the thread wakes 40 times a second. Derefs to the [`BaseProducer`].
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Starts the polling thread of `producer`.
    pub fn start(producer: BaseProducer<C>) -> Result<PolledProducer<C>, String> {
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("kafka-sink-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(POLL_WAIT);
                    }
                })
                .map_err(|e| format!("cannot start a Kafka producer's polling thread: {e}"))?
        };
        Ok(PolledProducer {
            producer,
            stop,
            thread: Some(thread),
        })
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sink producer's delivery and encoding options (librdkafka's), public so that a
/// benchmark can produce the job's output as the sink does.
pub const PRODUCER_OPTIONS: [(&str, &str); 4] = [
    // A message counts as written once every in-sync replica has it: the offset commit
    // trusts these acknowledgements.
    ("acks", "all"),
    // librdkafka's retries never duplicate nor reorder a message.
    ("enable.idempotence", "true"),
    // The partition a Java client picks for the same key (murmur2 of the session id).
    ("partitioner", "murmur2_random"),
    // Snapshots are repetitive JSON: cheap to compress, much less to ship and store.
    ("compression.type", "lz4"),
];

impl KafkaSink {
    /// Creates the producer (it connects lazily; nothing blocks here). `label` names it in logs.
    pub fn create(cfg: &KafkaSinkConfig, label: &str) -> Result<KafkaSink, String> {
        let log = Arc::new(ClientLog::new(label.to_string()));
        let shared = Arc::new(Shared {
            topic: cfg.topic.clone(),
            acks: Mutex::new(Acks::default()),
            activator: OnceLock::new(),
            stranded: StrandedClock::default(),
            purged: Mutex::new(Vec::new()),
            replacements: AtomicU64::new(0),
            replacement_request: Mutex::new(None),
        });
        let config = cfg.producer_config()?;
        let producer = new_producer(&config, &log, &shared)?;
        Ok(KafkaSink {
            producer,
            shared,
            log,
            config,
            retiring: None,
        })
    }

    /// Whether the producer has known no broker for [`STRANDED_AFTER`].
    fn stranded(&self) -> bool {
        self.shared.stranded.stranded(Instant::now())
    }

    /// Replaces the producer by a new one with the same settings (`brokers` instead of the
    /// configured ones, if given: tests) and purges the old one's queued messages; their
    /// delivery reports collect them in `Shared::purged`. The old producer retires once every
    /// report is in ([`KafkaSink::retired`]).
    fn replace(&mut self, brokers: Option<&str>) -> Result<(), String> {
        let mut config = self.config.clone();
        if let Some(b) = brokers {
            config.set("bootstrap.servers", b);
        }
        let new = new_producer(&config, &self.log, &self.shared)?;
        self.shared.stranded.reset();
        let old = std::mem::replace(&mut self.producer, new);
        old.context().replaced.store(true, Ordering::Relaxed);
        // Only what was never sent: with no broker nothing is in flight, and a message in
        // flight (there is none) would stay with the old producer, delivered or failed there.
        old.purge(PurgeConfig::default().queue());
        let n = self.shared.replacements.fetch_add(1, Ordering::Relaxed) + 1;
        // Not rate-limited: it must show whatever librdkafka printed just before.
        eprintln!(
            "{}: the producer to topic {} knew no broker for {} s (a librdkafka fault after a \
             broker restart): replaced by a new one (replacement {n}); its unsent messages are \
             sent again",
            self.log.label(),
            self.shared.topic,
            STRANDED_AFTER.as_secs()
        );
        self.retiring = Some(old);
        Ok(())
    }

    /// Whether no replaced producer still has delivery reports to give (it is then dropped).
    fn retired(&mut self) -> bool {
        match &self.retiring {
            Some(old) if old.context().unreported.load(Ordering::Acquire) > 0 => false,
            Some(_) => {
                if let Some(old) = self.retiring.take() {
                    // Destroying a client joins its threads: not on the worker.
                    std::thread::spawn(move || drop(old));
                }
                true
            }
            None => true,
        }
    }

    /// A handle on the sink's progress and failure.
    pub fn status(&self) -> KafkaSinkStatus {
        KafkaSinkStatus(Arc::clone(&self.shared))
    }

    /// Sends one message of `window`; `Ok(false)` when librdkafka's queue is full (try later).
    fn send(&self, window: u64, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let record = BaseRecord::with_opaque_to(&self.shared.topic, window as usize)
            .key(key)
            .payload(value);
        // Counted first: its delivery report may come before `send` returns.
        let unreported = &self.producer.context().unreported;
        unreported.fetch_add(1, Ordering::Relaxed);
        let result = self.producer.send(record);
        if result.is_err() {
            unreported.fetch_sub(1, Ordering::Relaxed);
        }
        match result {
            Ok(()) => Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
            Err((e, _)) => Err(format!("cannot produce to topic {}: {e}", self.shared.topic)),
        }
    }
}

fn new_producer(
    config: &ClientConfig,
    log: &Arc<ClientLog>,
    shared: &Arc<Shared>,
) -> Result<PolledProducer<SinkContext>, String> {
    let context = SinkContext {
        log: Arc::clone(log),
        shared: Arc::clone(shared),
        unreported: AtomicU64::new(0),
        replaced: AtomicBool::new(false),
    };
    let producer = config
        .create_with_context(context)
        .map_err(|e| format!("cannot create a Kafka producer for topic {}: {e}", shared.topic))?;
    PolledProducer::start(producer)
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Everything the frontier released is acknowledged already; this only waits for
        // messages of a run that stopped early, and never for long.
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}

/// Extension trait: `stream.sink_kafka(sink)`.
pub trait SinkKafka<'scope> {
    /// Produces every record of this worker's share of the stream to the sink's topic and
    /// returns an empty stream whose frontier passes window `m` once every message of the
    /// windows `<= m` was acknowledged by the broker (probe it: it is what may be committed).
    ///
    /// ```no_run
    /// use sessionflow_operators::sink::kafka::{KafkaSink, KafkaSinkConfig, SinkKafka};
    /// use sessionflow_operators::record::DeadLetter;
    /// use timely::dataflow::operators::{Probe, ToStream};
    ///
    /// let cfg = KafkaSinkConfig {
    ///     brokers: "127.0.0.1:9092".into(),
    ///     topic: "dead-letters".into(),
    ///     options: vec![],
    /// };
    /// timely::example(move |scope| {
    ///     let sink = KafkaSink::create(&cfg, "dead-letter sink").unwrap();
    ///     let status = sink.status();
    ///     let d = DeadLetter { partition: 0, offset: 7, reason: "invalid: x".into(), raw: "{".into() };
    ///     let acked = vec![d].to_stream(scope).sink_kafka(sink).probe().0;
    ///     // `acked` passes a window once the broker acknowledged all of its messages;
    ///     // `status.error()` says why when a message cannot be delivered.
    ///     # let _ = (acked, status);
    /// });
    /// ```
    fn sink_kafka(self, sink: KafkaSink) -> StreamVec<'scope, u64, ()>;
}

impl<'scope, D: KafkaMessage + Clone + 'static> SinkKafka<'scope> for StreamVec<'scope, u64, D> {
    fn sink_kafka(self, sink: KafkaSink) -> StreamVec<'scope, u64, ()> {
        let scope = self.scope();
        self.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "KafkaSink", move |_cap, info| {
            let _ = sink
                .shared
                .activator
                .set(scope.worker().sync_activator_for(info.address.to_vec()));
            let retry_later = scope.activator_for(info.address);
            // One capability per window with messages not yet acknowledged.
            let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            // Messages librdkafka's queue had no room for, in order.
            let mut backlog: VecDeque<Pending> = VecDeque::new();
            let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(4096));
            let mut sink = sink;
            move |(input, _frontier), _output| {
                let shared = Arc::clone(&sink.shared);
                // A producer that lost every broker is replaced; until the old one reported all
                // its purged messages, nothing is sent, so they go out again before anything newer.
                let requested = shared.replacement_request.lock().ok().and_then(|mut r| r.take());
                if sink.retiring.is_none() && (requested.is_some() || sink.stranded()) {
                    if let Err(e) = sink.replace(requested.as_deref()) {
                        shared.fail(e);
                    }
                }
                let retiring = !sink.retired();
                if !retiring {
                    let purged = shared
                        .purged
                        .lock()
                        .map(|mut p| std::mem::take(&mut *p))
                        .unwrap_or_default();
                    for m in purged.into_iter().rev() {
                        backlog.push_front(m);
                    }
                }
                input.for_each(|time, data| {
                    let Some(&t) = time.least() else { return };
                    if let Entry::Vacant(slot) = held.entry(t) {
                        if let Some(c) = time.retain_least(0) {
                            slot.insert(c);
                        }
                    }
                    if let Ok(mut a) = shared.acks.lock() {
                        *a.outstanding.entry(t).or_default() += data.len() as u64;
                    }
                    for d in data.drain(..) {
                        key.clear();
                        value.clear();
                        d.key(&mut key);
                        d.value(&mut value);
                        if retiring || !backlog.is_empty() {
                            backlog.push_back((t, key.clone(), value.clone()));
                            continue;
                        }
                        match sink.send(t, &key, &value) {
                            Ok(true) => {}
                            Ok(false) => backlog.push_back((t, key.clone(), value.clone())),
                            Err(e) => shared.fail(e),
                        }
                    }
                });
                while let Some((t, k, v)) = backlog.front().filter(|_| !retiring) {
                    match sink.send(*t, k, v) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => shared.fail(e),
                    }
                    backlog.pop_front();
                }
                if retiring {
                    retry_later.activate_after(Duration::from_millis(10));
                } else if !backlog.is_empty() {
                    retry_later.activate_after(Duration::from_millis(1));
                }
                // Release every window whose messages were all acknowledged (none after a
                // permanent failure: nothing may be committed past it).
                if let Ok(a) = shared.acks.lock() {
                    if a.error.is_none() {
                        held.retain(|t, _| a.outstanding.contains_key(t));
                    }
                };
            }
        })
    }
}

/// Makes sure `topic` exists: creates it with `partitions` partitions (broker-default
/// replication) through the admin API when missing, then waits until its metadata shows it.
/// Returns its partition count. Retries (logged) until `deadline`.
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
    extra: &[(String, String)],
    deadline: Instant,
) -> Result<u32, String> {
    ensure_topic_with(brokers, topic, partitions, extra, &[], deadline)
}

/// [`ensure_topic`], creating a missing topic with the topic configs `configs` (`key=value`,
/// e.g. `cleanup.policy=compact`; the broker checks them, and refuses the creation with a
/// clear error if one is wrong). An existing topic keeps its own.
pub fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: u32,
    extra: &[(String, String)],
    configs: &[(String, String)],
    deadline: Instant,
) -> Result<u32, String> {
    let log = Arc::new(ClientLog::new(format!("kafka admin {brokers}")));
    let config = metadata_config(brokers, "sessionflow-admin", extra)?;
    let context = || crate::source::kafka::LogContext(Arc::clone(&log));
    // Metadata through a plain client; an admin client only to create a missing topic: its
    // polling thread wakes every 100 ms, and dropping the client waits for it.
    let client: BaseConsumer<crate::source::kafka::LogContext> = config
        .create_with_context(context())
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let mut admin: Option<AdminClient<crate::source::kafka::LogContext>> = None;
    let mut created = false;
    // Ok(Err(..)): an error no retry mends (a topic config the broker refuses).
    retry(
        log.label(),
        &format!("cannot create topic {topic} on {brokers}"),
        deadline,
        |timeout| {
            match served_topic_partitions(&client, topic, timeout) {
                Ok(n) => return Ok(Ok(n)),
                Err(e) if created || !e.ends_with("does not exist") => return Err(log.explain(e)),
                Err(_) => {}
            }
            let admin = match &mut admin {
                Some(a) => a,
                None => admin.insert(
                    config
                        .create_with_context(context())
                        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?,
                ),
            };
            let mut new = NewTopic::new(topic, partitions.max(1) as i32, TopicReplication::Fixed(-1));
            for (k, v) in configs {
                new = new.set(k, v);
            }
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = block_on(admin.create_topics([&new], &opts)).map_err(|e| e.to_string())?;
            let listed: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            for r in results {
                match r {
                    Ok(_) => eprintln!(
                        "{}: created topic {topic} with {} partitions{}",
                        log.label(),
                        partitions.max(1),
                        if listed.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", listed.join(", "))
                        }
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    // A config the broker refuses: no retry makes it valid.
                    Err((name, code @ (RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation))) => {
                        return Ok(Err(format!(
                            "cannot create topic {name}: {code} (its topic configs: {})",
                            listed.join(", ")
                        )))
                    }
                    Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
                }
            }
            created = true;
            // The creation took part of the attempt's time: what is left of it, afresh.
            served_topic_partitions(&client, topic, request_timeout(deadline)).map(Ok)
        },
    )?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_dead_letters_and_snapshots() {
        let d = DeadLetter {
            partition: 2,
            offset: 9,
            reason: "invalid: x".into(),
            raw: "{".into(),
        };
        let (mut k, mut v) = (Vec::new(), Vec::new());
        d.key(&mut k);
        d.value(&mut v);
        assert_eq!(k, b"2");
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!((j["partition"].as_u64(), j["offset"].as_u64()), (Some(2), Some(9)));
    }

    #[test]
    fn a_producer_knowing_only_its_internal_brokers_knows_no_broker() {
        use rdkafka::statistics::Broker;
        let broker = |source: &str| Broker {
            source: source.into(),
            ..Broker::default()
        };
        let mut stats = Statistics::default();
        assert!(!knows_a_broker(&stats));
        stats.brokers.insert(":0/internal".into(), broker("internal"));
        stats.brokers.insert("GroupCoordinator".into(), broker("logical"));
        assert!(!knows_a_broker(&stats), "internal and logical brokers only");
        stats
            .brokers
            .insert("127.0.0.1:9092/bootstrap".into(), broker("configured"));
        assert!(knows_a_broker(&stats), "a bootstrap broker");
        stats.brokers.clear();
        stats.brokers.insert("127.0.0.1:9092/1".into(), broker("learned"));
        assert!(knows_a_broker(&stats), "a learned broker");
    }

    /// A job stalled by backpressure sends the sink nothing: the statistics reports alone must
    /// wake it to replace a producer that knows no broker.
    #[test]
    fn a_producer_knowing_no_broker_is_replaced_even_when_nothing_else_wakes_the_sink() {
        use timely::dataflow::operators::{Input, Probe};
        use timely::dataflow::InputHandle;
        let cfg = KafkaSinkConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            // No real reports (they would show the bootstrap broker): the test gives them.
            options: vec![("statistics.interval.ms".into(), "0".into())],
        };
        let sink = KafkaSink::create(&cfg, "test sink").unwrap();
        let status = sink.status();
        timely::execute_directly(move |worker| {
            let mut input = InputHandle::new();
            let dataflow = worker.next_dataflow_index();
            worker.dataflow::<u64, _, _>(|scope| {
                scope.input_from(&mut input).sink_kafka(sink).probe();
            });
            let d = DeadLetter {
                partition: 0,
                offset: 1,
                reason: "invalid: x".into(),
                raw: "{".into(),
            };
            input.send(d);
            input.advance_to(1);
            for _ in 0..20 {
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
            let started = Instant::now();
            while status.replacements() == 0 && started.elapsed() < STRANDED_AFTER * 2 {
                // librdkafka reports once a second.
                status.report_no_broker();
                let second = Instant::now();
                while second.elapsed() < Duration::from_secs(1) {
                    worker.step_or_park(Some(Duration::from_millis(100)));
                }
            }
            assert_eq!(status.replacements(), 1, "not replaced");
            assert!(started.elapsed() >= STRANDED_AFTER, "replaced too early");
            // The message went to the new producer: still outstanding, no failure.
            assert_eq!((status.in_flight(), status.error()), (1, None));
            // The message can never be delivered: the dataflow would never complete.
            worker.drop_dataflow(dataflow);
        });
    }

    #[test]
    fn a_sink_builds_without_a_broker_and_an_empty_stream_completes() {
        use timely::dataflow::operators::{Probe, ToStream};
        let cfg = KafkaSinkConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            options: vec![],
        };
        let sink = KafkaSink::create(&cfg, "test sink").unwrap();
        let status = sink.status();
        timely::example(move |scope| {
            let none: Vec<DeadLetter> = Vec::new();
            none.to_stream(scope).sink_kafka(sink).probe();
        });
        assert_eq!((status.acked(), status.in_flight(), status.error()), (0, 0, None));
    }
}
