//! On the real broker: a topic written by a transactional producer, as Kafka Streams, Flink and
//! ksqlDB write with exactly-once on. Its partitions hold commit and abort markers (offsets
//! that are not messages) and the events of aborted transactions, which a reader must never
//! count. `sessionflow run --stop-at-end` reads only the committed events (librdkafka's
//! `isolation.level=read_committed`, the default) and writes what `replay` writes for them
//! (dead letters with their Kafka offsets), and commits each partition's end offset, past the
//! final marker, so a second run reads nothing and no lag is left.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`, default
//! 127.0.0.1:9092).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use sessionflow::generate::{write_files, GenerateArgs};
use sessionflow_operators::sink::kafka::ensure_topic;

const PARTITIONS: u32 = 3;
/// Lines of each partition per transaction.
const CHUNK: usize = 150;

/// The lines of a generated partition file.
fn lines(path: &std::path::Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap();
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    text.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

/// What an aborted transaction carries: the chunk's lines as new events (their ids changed,
/// so a reader that took them would accept them) and a line that is no event at all.
fn aborted_copy(chunk: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = chunk
        .iter()
        .map(|l| {
            String::from_utf8_lossy(l)
                .replacen("\"event_id\":\"", "\"event_id\":\"aborted-", 1)
                .into_bytes()
        })
        .collect();
    out.push(b"not an event: from an aborted transaction".to_vec());
    out
}

/// Produces `parts` (lines by partition) to `topic` in transactions of `CHUNK` lines per
/// partition, each committed one preceded by an aborted one on every third chunk.
fn produce_transactionally(topic: &str, parts: &[Vec<Vec<u8>>]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("txn-producer"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    let send = |p: usize, line: &[u8]| {
        let mut record = BaseRecord::<(), [u8]>::to(topic).partition(p as i32).payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    };
    let chunks = parts.iter().map(|l| l.len().div_ceil(CHUNK)).max().unwrap();
    for c in 0..chunks {
        let chunk = |p: usize| {
            let lines = &parts[p];
            &lines[(c * CHUNK).min(lines.len())..((c + 1) * CHUNK).min(lines.len())]
        };
        if c % 3 == 1 {
            producer.begin_transaction().unwrap();
            for p in 0..parts.len() {
                for line in aborted_copy(chunk(p)) {
                    send(p, &line);
                }
            }
            // Every message acknowledged first: an abort racing a produce request still in
            // flight failed once (`INVALID_TXN_STATE` from the coordinator, librdkafka #4849).
            producer.flush(timeout).unwrap();
            producer.abort_transaction(timeout).unwrap();
        }
        producer.begin_transaction().unwrap();
        for p in 0..parts.len() {
            for line in chunk(p) {
                send(p, line);
            }
        }
        producer.commit_transaction(timeout).unwrap();
    }
}

/// The offsets of the committed messages of each partition (as a read-committed reader sees
/// them), `counts[p]` of them.
fn committed_offsets(topic: &str, counts: &[usize]) -> Vec<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("txn-read"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..counts.len() {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = vec![Vec::new(); counts.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.iter().zip(counts).any(|(o, n)| o.len() < *n) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            assert!(
                !m.payload().unwrap_or_default().starts_with(b"not an event"),
                "a read-committed reader got an aborted message"
            );
            out[m.partition() as usize].push(m.offset());
        }
    }
    out
}

/// Replay's dead letters with each line number replaced by the Kafka offset of that line.
fn with_kafka_offsets(dead: &[u8], offsets: &[Vec<i64>]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in dead.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let p = v["partition"].as_u64().unwrap() as usize;
        let o = v["offset"].as_u64().unwrap();
        let text = String::from_utf8(line.to_vec()).unwrap();
        let kafka = offsets[p][o as usize];
        let text = text.replacen(&format!(",\"offset\":{o},"), &format!(",\"offset\":{kafka},"), 1);
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    out
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_transactional_topic_yields_its_committed_events_only_and_equals_replay() {
    let dir = tempfile::tempdir().unwrap();
    let args = GenerateArgs {
        events: 6_000,
        partitions: PARTITIONS,
        seed: 4242,
        out_dir: dir.path().join("in"),
        late: 0.01,
        ..GenerateArgs::default()
    };
    let inputs = write_files(&args).unwrap().files;
    let parts: Vec<Vec<Vec<u8>>> = inputs.iter().map(|p| lines(p)).collect();
    let reference = Files::new(dir.path(), "replay");
    replay(&inputs, &reference);
    let expected = reference.read();
    assert!(!expected.1.is_empty(), "the stream has no dead letters to check");

    let topic = unique("txn");
    let deadline = Instant::now() + Duration::from_secs(60);
    ensure_topic(&brokers(), &topic, PARTITIONS, &[], deadline).unwrap();
    produce_transactionally(&topic, &parts);
    let counts: Vec<usize> = parts.iter().map(Vec::len).collect();
    let offsets = committed_offsets(&topic, &counts);
    let ends = end_offsets(&topic, PARTITIONS);
    for (p, o) in offsets.iter().enumerate() {
        // Markers and aborted messages take offsets: the committed events do not fill them.
        assert!(
            *o.last().unwrap() + 1 < ends[p],
            "partition {p}: no marker after the last event"
        );
    }

    let files = Files::new(dir.path(), "txn");
    let group = unique("txn");
    let mut run = run_flags(&topic, &group, 2);
    run.push("--stop-at-end".into());
    run.extend(files.flags());
    run_ok(sessionflow(&run), Duration::from_secs(120));
    let expected = (expected.0, with_kafka_offsets(&expected.1, &offsets), expected.2);
    files.assert_same(&expected, "transactional topic");

    // Committed at the end offsets (past the last marker): nothing left to read, no lag.
    let commits = committed(&group, &topic, PARTITIONS);
    for (p, (c, end)) in commits.iter().zip(&ends).enumerate() {
        let (offset, _) = c.clone().unwrap_or_else(|| panic!("partition {p}: no commit"));
        assert_eq!(offset, *end, "partition {p}: committed offset");
    }
    let again = Files::new(dir.path(), "txn-again");
    let mut run = run_flags(&topic, &group, 2);
    run.push("--stop-at-end".into());
    run.extend(again.flags());
    run_ok(sessionflow(&run), Duration::from_secs(120));
    assert_eq!(again.stats_json()["events_read"], 0, "a second run read events again");
}
