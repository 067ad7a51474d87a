//! Kafka sinks: snapshots (key = session id, value = the snapshot JSON) and dead letters
//! (key = source partition, value = the spec's dead-letter JSON with partition and offset).
//!
//! Each worker produces its own share of the stream (no exchange) through an rdkafka
//! [`ThreadedProducer`] whose delivery callback counts acknowledgements per window. The
//! operator holds a capability for every window with a message not yet acknowledged, so the
//! stream it returns passes window `m` only once every message of the windows `<= m` was
//! acknowledged by the broker (all in-sync replicas): this is the frontier offset commits trust.
//!
//! Retries are librdkafka's (idempotent producer: no duplicates, no reordering); a message
//! that still fails (after `message.timeout.ms`, 5 min by default, or at once when it is too
//! large) is a permanent failure: [`KafkaSinkStatus::error`] says why and the failed window is
//! never released, so nothing is committed past it. Never a silent loss.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;

use crate::record::DeadLetter;
use crate::session::Snapshot;
use crate::source::kafka::{block_on, client_config, retry, topic_partitions, ClientKind, ClientLog};

/// Settings of one Kafka sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers: a comma-separated list of `host:port`.
    pub brokers: String,
    /// Topic written to (a name).
    pub topic: String,
    /// librdkafka options as `(key, value)`, applied after ours (`-X key=value`; a key
    /// prefixed `producer:` applies to producers only, `consumer:` ones are skipped).
    pub options: Vec<(String, String)>,
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

#[derive(Debug)]
struct Shared {
    topic: String,
    acks: Mutex<Acks>,
    activator: OnceLock<SyncActivator>,
}

impl Shared {
    fn fail(&self, message: String) {
        if let Ok(mut a) = self.acks.lock() {
            a.error.get_or_insert(message);
        }
        self.wake();
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
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.note(&format!("{error}: {reason}"));
    }
}

impl ProducerContext for SinkContext {
    /// The window of the message.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, window: usize) {
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
}

/// A producer to one topic; hand it to [`SinkKafka::sink_kafka`].
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    shared: Arc<Shared>,
}

impl KafkaSink {
    /// Creates the producer (it connects lazily; nothing blocks here). `label` names it in logs.
    pub fn create(cfg: &KafkaSinkConfig, label: &str) -> Result<KafkaSink, String> {
        let log = Arc::new(ClientLog::new(label.to_string()));
        let shared = Arc::new(Shared {
            topic: cfg.topic.clone(),
            acks: Mutex::new(Acks::default()),
            activator: OnceLock::new(),
        });
        let ours = [
            // A message counts as written once every in-sync replica has it: the offset commit
            // trusts these acknowledgements.
            ("acks", "all".to_string()),
            // librdkafka's retries never duplicate nor reorder a message.
            ("enable.idempotence", "true".to_string()),
            // The partition a Java client picks for the same key (murmur2 of the session id).
            ("partitioner", "murmur2_random".to_string()),
            // Snapshots are repetitive JSON: cheap to compress, much less to ship and store.
            ("compression.type", "lz4".to_string()),
            // Names this sink in the broker's logs.
            ("client.id", format!("sessionflow-sink-{}", cfg.topic)),
        ];
        let config = client_config(&cfg.brokers, &ours, &cfg.options, ClientKind::Producer);
        let context = SinkContext {
            log,
            shared: Arc::clone(&shared),
        };
        let producer: ThreadedProducer<SinkContext> = config
            .create_with_context(context)
            .map_err(|e| format!("cannot create a Kafka producer for topic {}: {e}", cfg.topic))?;
        Ok(KafkaSink { producer, shared })
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
        match self.producer.send(record) {
            Ok(()) => Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(false),
            Err((e, _)) => Err(format!("cannot produce to topic {}: {e}", self.shared.topic)),
        }
    }
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
            let mut backlog: VecDeque<(u64, Vec<u8>, Vec<u8>)> = VecDeque::new();
            let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(4096));
            move |(input, _frontier), _output| {
                let shared = &sink.shared;
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
                        if !backlog.is_empty() {
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
                while let Some((t, k, v)) = backlog.front() {
                    match sink.send(*t, k, v) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => shared.fail(e),
                    }
                    backlog.pop_front();
                }
                if !backlog.is_empty() {
                    retry_later.activate_after(Duration::from_millis(1));
                }
                // Release every window whose messages were all acknowledged (none after a
                // permanent failure: nothing may be committed past it).
                if let Ok(a) = shared.acks.lock() {
                    if a.error.is_none() {
                        held.retain(|t, _| a.outstanding.contains_key(t));
                    }
                }
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
    let log = Arc::new(ClientLog::new(format!("kafka admin {brokers}")));
    let ours = [
        // Names this process in the broker's logs.
        ("client.id", "sessionflow-admin".to_string()),
        // A metadata query must not create the topic with the broker's defaults: we create it.
        ("allow.auto.create.topics", "false".to_string()),
    ];
    let config = client_config(brokers, &ours, extra, ClientKind::Admin);
    let admin: AdminClient<crate::source::kafka::LogContext> = config
        .create_with_context(crate::source::kafka::LogContext(Arc::clone(&log)))
        .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let mut created = false;
    retry(
        log.label(),
        &format!("cannot create topic {topic} on {brokers}"),
        deadline,
        || {
            match topic_partitions(admin.inner(), topic) {
                Ok(n) => return Ok(n),
                Err(e) if created || !e.ends_with("does not exist") => return Err(e),
                Err(_) => {}
            }
            let new = NewTopic::new(topic, partitions.max(1) as i32, TopicReplication::Fixed(-1));
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let results = block_on(admin.create_topics([&new], &opts)).map_err(|e| e.to_string())?;
            for r in results {
                match r {
                    Ok(_) => eprintln!(
                        "{}: created topic {topic} with {} partitions",
                        log.label(),
                        partitions.max(1)
                    ),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => return Err(format!("cannot create topic {name}: {code}")),
                }
            }
            created = true;
            topic_partitions(admin.inner(), topic)
        },
    )
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
