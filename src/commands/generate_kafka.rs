//! `sessionflow generate`: the synthetic click stream into files (`--out-dir`) or, with
//! `--brokers` and `--topic`, into a Kafka topic.
//!
//! To Kafka, every line goes explicitly to its generator partition (so partition `p` of the
//! topic holds exactly the lines of `p{p}.jsonl` written for the same flags, in order: the
//! producer is idempotent, so retries neither duplicate nor reorder), keyed like a client
//! would key it: by `session_id`, or `"{project_id}:{visitor_id}"` without one (see
//! [`crate::generate::partition_key`]); invalid lines that carry no such fields have no key.
//! The topic is created with `--partitions` partitions when missing.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Deserialize;
use sessionflow_operators::sink::kafka::{ensure_topic, PolledProducer};
use sessionflow_operators::source::kafka::{
    client_config, options_with_file, parse_brokers, parse_option, parse_topic, ClientKind, ClientLog,
};

use crate::config::parse_duration_ms;
use crate::generate::{partition_key, GenerateArgs, Generator};

/// Flags of `sessionflow generate`: the generator's, plus the Kafka destination.
#[derive(Args, Clone, Debug)]
#[command(mut_arg("out_dir", |a| a.required(false).required_unless_present("brokers").default_value("generated").hide_default_value(true)))]
pub struct GenerateCommand {
    /// Kafka destination (instead of `--out-dir`).
    #[command(flatten)]
    pub kafka: KafkaGenerateArgs,
    /// The generated stream.
    #[command(flatten)]
    pub generate: GenerateArgs,
}

/// Where `generate` produces to Kafka.
#[derive(Args, Clone, Debug)]
pub struct KafkaGenerateArgs {
    /// Bootstrap brokers (comma-separated `host:port`): produce to Kafka instead of files.
    #[arg(long, requires = "topic", value_parser = parse_brokers)]
    pub brokers: Option<String>,
    /// Topic to produce to (created with --partitions partitions when missing).
    #[arg(long, requires = "brokers", value_parser = parse_topic)]
    pub topic: Option<String>,
    /// Pace production at --rate lines per second of wall-clock time (a live stream); by
    /// default lines are produced as fast as the broker takes them.
    #[arg(long, requires = "brokers")]
    pub realtime: bool,
    /// A librdkafka option `key=value` for the producer (applied after ours; repeat);
    /// `acks` and `enable.idempotence` may only repeat ours (all, true).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_option, requires = "brokers")]
    pub options: Vec<(String, String)>,
    /// librdkafka options from a file, one `key=value` per line (`#` comments), applied before
    /// the -X options (which override them): for secrets such as `sasl.password`.
    #[arg(long, value_name = "FILE", requires = "brokers")]
    pub kafka_config: Option<PathBuf>,
    /// How long to keep retrying to reach the brokers at start (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub connect_timeout: u64,
}

/// Runs `sessionflow generate` (files, or Kafka with `--brokers`).
pub fn run(cmd: GenerateCommand) -> Result<(), String> {
    match (&cmd.kafka.brokers, &cmd.kafka.topic) {
        (Some(brokers), Some(topic)) => produce(&cmd.generate, &cmd.kafka, brokers, topic).map(|s| {
            println!(
                "produced {} messages ({:.1} MB) to topic {topic} in {:.2} s ({:.0} messages/s): partitions [{}]",
                s.messages,
                s.bytes as f64 / 1e6,
                s.seconds,
                s.messages as f64 / s.seconds.max(1e-9),
                s.per_partition
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }),
        _ => crate::generate::run(cmd.generate),
    }
}

/// What [`produce`] wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Produced {
    /// Messages acknowledged (count).
    pub messages: u64,
    /// Payload bytes (bytes).
    pub bytes: u64,
    /// Messages per partition (count), index = partition.
    pub per_partition: Vec<u64>,
    /// Wall-clock time (seconds).
    pub seconds: f64,
}

#[derive(Deserialize)]
struct KeyFields<'a> {
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    project_id: Option<u64>,
    #[serde(borrow, default)]
    visitor_id: Option<Cow<'a, str>>,
}

/// The message key of a generated line (`None` for lines without the fields).
pub fn line_key(line: &[u8]) -> Option<Vec<u8>> {
    let f: KeyFields<'_> = serde_json::from_slice(line).ok()?;
    match (f.session_id, f.project_id, f.visitor_id) {
        (Some(s), _, _) => Some(s.as_bytes().to_vec()),
        (None, Some(p), Some(v)) => Some(partition_key(None, p, &v)),
        _ => None,
    }
}

/// A producer context that counts acknowledged messages and keeps the first delivery error;
/// librdkafka's log lines and client errors go to its [`ClientLog`].
pub struct Deliveries {
    log: ClientLog,
    acked: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Deliveries {
    /// A context whose log lines are labelled `label`.
    pub fn new(label: String) -> Deliveries {
        Deliveries {
            log: ClientLog::new(label),
            acked: AtomicU64::new(0),
            error: Mutex::new(None),
        }
    }

    /// Messages acknowledged so far (count).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// The first delivery error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.note(&format!("{error}: {reason}"));
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert_with(|| format!("cannot deliver a message: {e}"));
                }
            }
        }
    }
}

/// Produces the stream `args` describes to `topic` (see the module docs).
pub fn produce(args: &GenerateArgs, kafka: &KafkaGenerateArgs, brokers: &str, topic: &str) -> Result<Produced, String> {
    args.validate()?;
    let ours = [
        // Every message acknowledged by all in-sync replicas.
        ("acks", "all".to_string()),
        // Retries neither duplicate nor reorder: partition p holds p{p}.jsonl's lines in order.
        ("enable.idempotence", "true".to_string()),
        // Names this producer in the broker's logs.
        ("client.id", "sessionflow-generate".to_string()),
    ];
    let options = options_with_file(kafka.kafka_config.as_deref(), &kafka.options)?;
    // Before the topic is created: an -X option that would change ours is an error at once.
    let config = client_config(brokers, &ours, &options, ClientKind::Producer)?;
    let deadline = Instant::now() + Duration::from_millis(kafka.connect_timeout);
    let count = ensure_topic(brokers, topic, args.partitions, &options, deadline)?;
    if count < args.partitions {
        return Err(format!(
            "topic {topic} has {count} partitions, fewer than --partitions {}",
            args.partitions
        ));
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::new(format!("generate -> {topic}")))
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let producer = PolledProducer::start(producer)?;

    let started = Instant::now();
    let mut out = Produced {
        per_partition: vec![0; args.partitions as usize],
        ..Produced::default()
    };
    let mut generator = Generator::new(args);
    let mut line = Vec::with_capacity(1024);
    let mut next_report = started + Duration::from_secs(5);
    while let Some(p) = generator.next_line(&mut line) {
        if kafka.realtime {
            let due = started + Duration::from_secs_f64(out.messages as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let key = line_key(&line);
        loop {
            let mut record = BaseRecord::to(topic).partition(p as i32).payload(&line);
            if let Some(k) = &key {
                record = record.key(k);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(format!("cannot produce to topic {topic}: {e}")),
            }
        }
        out.messages += 1;
        out.bytes += line.len() as u64;
        out.per_partition[p as usize] += 1;
        if out.messages.is_multiple_of(4096) {
            if let Some(e) = producer.context().error() {
                return Err(format!("topic {topic}: {e}"));
            }
            if Instant::now() >= next_report {
                next_report += Duration::from_secs(5);
                eprintln!(
                    "generate: {} messages sent, {} acknowledged, {:.0} messages/s",
                    out.messages,
                    producer.context().acked(),
                    out.messages as f64 / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("cannot flush the producer of topic {topic}: {e}"))?;
    if let Some(e) = producer.context().error() {
        return Err(format!("topic {topic}: {e}"));
    }
    let acked = producer.context().acked();
    if acked != out.messages {
        return Err(format!(
            "topic {topic}: {acked} of {} messages acknowledged",
            out.messages
        ));
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_partitioning_key() {
        assert_eq!(
            line_key(br#"{"session_id":"s1","project_id":3,"visitor_id":"v"}"#),
            Some(b"s1".to_vec())
        );
        assert_eq!(
            line_key(br#"{"session_id":null,"project_id":3,"visitor_id":"v"}"#),
            Some(b"3:v".to_vec())
        );
        assert_eq!(line_key(b"{not json"), None);
        assert_eq!(line_key(br#"{"project_id":"x","visitor_id":"v"}"#), None);
    }

    #[test]
    fn generate_parses_with_out_dir_or_with_brokers() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cmd: GenerateCommand,
        }
        let files = <Cli as clap::Parser>::try_parse_from(["x", "--out-dir", "d"]).unwrap();
        assert_eq!(files.cmd.generate.out_dir, std::path::PathBuf::from("d"));
        assert!(files.cmd.kafka.brokers.is_none());
        let kafka =
            <Cli as clap::Parser>::try_parse_from(["x", "--brokers", "b:1", "--topic", "t", "-X", "linger.ms=5"])
                .unwrap();
        assert_eq!(kafka.cmd.kafka.topic.as_deref(), Some("t"));
        assert_eq!(
            kafka.cmd.kafka.options,
            vec![("linger.ms".to_string(), "5".to_string())]
        );
        assert!(<Cli as clap::Parser>::try_parse_from(["x"]).is_err());
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--brokers", "b:1"]).is_err());
    }
}
