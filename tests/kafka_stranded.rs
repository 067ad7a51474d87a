//! On the real broker, how the Kafka clients meet a changing cluster: the workarounds for a
//! librdkafka fault that strands a client (a broker shutting down answers a metadata request
//! with no brokers, and a client that gets it while still connected forgets every broker and
//! never bootstraps again, see `sink::kafka`), and partitions added to the input topic.
//!
//! - The Kafka sink replaces such a producer: the old one's unsent messages go to the new one,
//!   which sends them once and in order, before anything newer; the acknowledged frontier then
//!   passes every window. The first producer bootstraps from a port where nothing listens, so
//!   every message it gets stays queued, as in the stranded producer; the replacement
//!   bootstraps from the real broker (a hidden hook: the fault cannot be caused at will).
//! - The Kafka source stops with a clear error when partitions are added to its topic (it
//!   reads the partitions it started with; a restart reads them all), and a live run then
//!   stops without writing any window its failed sources held; and when its topic is deleted.
//! - The Kafka source replaces a stranded consumer by one that resumes right after the last
//!   message read (every message once, in order; commits on the new one), and never replaces
//!   one that is not stranded.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sessionflow::generate::GenerateArgs;
use sessionflow_operators::event::parse_event;
use sessionflow_operators::record::DeadLetter;
use sessionflow_operators::sink::kafka::{ensure_topic, KafkaSink, KafkaSinkConfig, SinkKafka, STRANDED_AFTER};
use sessionflow_operators::source::kafka::{block_on, KafkaReader, KafkaSourceConfig, StartOffset};
use sessionflow_operators::source::{Cut, PartitionReader, RawRecord, Watermarks};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::InputHandle;

const PARTITIONS: u32 = 3;
/// Dead-letter keys are their source partition: messages of one key must stay in order.
const KEYS: u64 = 5;

fn letter(seq: u64) -> DeadLetter {
    DeadLetter {
        partition: (seq % KEYS) as u32,
        offset: seq,
        reason: "invalid: test".into(),
        raw: format!("{{\"seq\":{seq}}}"),
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_replaced_producer_hands_its_unsent_messages_to_the_next_in_order_once() {
    let topic = unique("sink-replace");
    let deadline = Instant::now() + Duration::from_secs(60);
    ensure_topic(&brokers(), &topic, PARTITIONS, &[], deadline).unwrap();
    let cfg = KafkaSinkConfig {
        // Nothing listens there: the first producer can deliver nothing.
        brokers: "127.0.0.1:1".into(),
        topic: topic.clone(),
        options: vec![],
    };
    let sink = KafkaSink::create(&cfg, "test sink").unwrap();
    let status = sink.status();
    let (before, after) = (700u64, 500u64);

    timely::execute_directly(move |worker| {
        let mut input = InputHandle::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| scope.input_from(&mut input).sink_kafka(sink).probe().0);
        let step_until = |worker: &mut timely::worker::Worker, what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                worker.step_or_park(Some(Duration::from_millis(10)));
            }
        };
        // Two windows for the first producer, which cannot send them.
        for seq in 0..before {
            input.send(letter(seq));
            if seq == before / 2 {
                input.advance_to(1);
            }
        }
        input.advance_to(2);
        step_until(worker, "the first messages in the producer", &|| {
            status.in_flight() == before
        });
        for _ in 0..50 {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        assert_eq!(status.acked(), 0, "the first producer delivered");
        assert!(probe.less_equal(&0), "a window passed without its acknowledgements");

        status.request_replacement(&brokers());
        // Newer messages, of a later window, arrive while the old producer retires.
        for seq in before..before + after {
            input.send(letter(seq));
        }
        input.advance_to(3);
        drop(input);
        step_until(worker, "every acknowledgement", &|| probe.done());
        assert_eq!(status.error(), None);
        assert_eq!(status.replacements(), 1);
        assert_eq!((status.acked(), status.in_flight()), (before + after, 0));
    });

    // Once each, and per key in the order sent.
    let msgs = consume_all(&topic, PARTITIONS);
    assert_eq!(msgs.len() as u64, before + after, "messages in the topic");
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut seen = vec![false; (before + after) as usize];
    for m in &msgs {
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        let seq = v["offset"].as_i64().unwrap();
        assert!(!seen[seq as usize], "message {seq} twice");
        seen[seq as usize] = true;
        let key = m.key.clone().unwrap();
        assert_eq!(key, (seq as u64 % KEYS).to_string().into_bytes());
        if let Some(prev) = last.insert(key, seq) {
            assert!(prev < seq, "message {seq} after {prev} of the same key");
        }
    }
}

/// Reads with `reader` (`budget` messages a call, a call every 20 ms) until `done` or `within`
/// passed; the messages read are appended to `got`.
fn read_for(
    reader: &mut KafkaReader,
    marks: &mut Watermarks,
    got: &mut Vec<RawRecord>,
    budget: usize,
    within: Duration,
    done: impl Fn(&KafkaReader, &[RawRecord]) -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < within && !done(reader, got) {
        let mut batch = Vec::new();
        reader.read(marks, budget, &mut batch).unwrap();
        got.append(&mut batch);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads on until `got` holds `total` messages (60 s at most), and for 1 s more so that any
/// extra message shows; checks that each of the `parts` partitions' offsets run from `first`
/// with no gap or repeat. Returns each partition's next offset.
fn read_rest_in_order(
    reader: &mut KafkaReader,
    marks: &mut Watermarks,
    got: &mut Vec<RawRecord>,
    total: usize,
    first: u64,
    parts: u32,
) -> Vec<u64> {
    read_for(reader, marks, got, 500, Duration::from_secs(60), |_, g| {
        g.len() >= total
    });
    read_for(reader, marks, got, 500, Duration::from_secs(1), |_, _| false);
    let mut next = vec![first; parts as usize];
    for r in got.iter() {
        let p = r.partition as usize;
        assert_eq!(
            r.offset, next[p],
            "partition {p}: offset {} where {} was due",
            r.offset, next[p]
        );
        next[p] += 1;
    }
    next
}

fn source_config(statistics: bool, partitions: u32) -> KafkaSourceConfig {
    let topic = unique("stranded-source");
    let deadline = Instant::now() + Duration::from_secs(60);
    ensure_topic(&brokers(), &topic, partitions, &[], deadline).unwrap();
    let mut options = Vec::new();
    if !statistics {
        options.push(("statistics.interval.ms".to_string(), "0".to_string()));
    }
    KafkaSourceConfig {
        brokers: brokers(),
        topic,
        group: unique("stranded-g"),
        options,
        ..KafkaSourceConfig::default()
    }
}

/// Produces `per_partition` messages `"{p}/{i}"` to each partition of `topic`.
fn produce_numbered(topic: &str, partitions: u32, per_partition: u32) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for i in 0..per_partition {
        for p in 0..partitions {
            let payload = format!("{p}/{i}");
            let mut record = BaseRecord::<(), str>::to(topic).partition(p as i32).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_stranded_consumer_is_replaced_and_the_source_reads_on_without_gap_or_repeat() {
    const PARTS: u32 = 3;
    const EACH: u32 = 1_000;
    let cfg = source_config(false, PARTS);
    produce_numbered(&cfg.topic, PARTS, EACH);
    let mut reader = KafkaReader::connect(&cfg, 0, 1).unwrap();
    let mut marks = Watermarks::new(60_000, 5_000, &reader.partitions());
    let mut got = Vec::new();
    // Some messages read; the consumer has fetched (far) more than the reader took.
    read_for(
        &mut reader,
        &mut marks,
        &mut got,
        50,
        Duration::from_secs(30),
        |_, g| g.len() >= 200,
    );
    assert!(got.len() >= 200, "read {} before the fault", got.len());
    // The fault, as the consumer's statistics would show it; reading on slowly meanwhile.
    reader.report_no_broker();
    let stranded_at = Instant::now();
    read_for(&mut reader, &mut marks, &mut got, 2, STRANDED_AFTER * 2, |r, _| {
        r.replacements() > 0
    });
    let after = stranded_at.elapsed();
    assert_eq!(reader.replacements(), 1, "not replaced within {after:?}");
    assert!(
        after >= STRANDED_AFTER - Duration::from_millis(200),
        "replaced after {after:?}"
    );
    let at_replacement = got.len();
    assert!(
        at_replacement < (PARTS * EACH) as usize,
        "nothing left for the new consumer"
    );
    // The new consumer delivers the rest: every message once, per partition in order.
    let total = (PARTS * EACH) as usize;
    let next = read_rest_in_order(&mut reader, &mut marks, &mut got, total, 0, PARTS);
    assert_eq!(reader.replacements(), 1);
    for r in &got {
        assert_eq!(r.bytes, format!("{}/{}", r.partition, r.offset).into_bytes());
    }
    assert_eq!(
        next,
        vec![u64::from(EACH); PARTS as usize],
        "read {} of {total}",
        got.len()
    );
    // Commits go through the new consumer.
    let cut = Cut {
        partition: 1,
        offset: u64::from(EACH),
        frontier: 7,
        max_ts: None,
    };
    reader.commit(&[cut]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.acknowledged(None) != Some(7) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reader.acknowledged(None), Some(7));
    let stored = committed(&cfg.group, &cfg.topic, PARTS);
    assert_eq!(stored[1].as_ref().map(|(o, _)| *o), Some(i64::from(EACH)));
    eprintln!("replaced after {after:?} with {at_replacement} of {total} read; all {total} read once, in order");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_consumer_started_at_latest_and_replaced_before_reading_resumes_where_it_started() {
    const PARTS: u32 = 2;
    let cfg = KafkaSourceConfig {
        start: StartOffset::Latest,
        ..source_config(false, PARTS)
    };
    produce_numbered(&cfg.topic, PARTS, 100);
    let mut reader = KafkaReader::connect(&cfg, 0, 1).unwrap();
    let mut marks = Watermarks::new(60_000, 5_000, &reader.partitions());
    let mut got = Vec::new();
    reader.report_no_broker();
    // Produced after the start: to be read. Nothing is taken before the replacement.
    produce_numbered(&cfg.topic, PARTS, 150);
    read_for(&mut reader, &mut marks, &mut got, 0, STRANDED_AFTER * 2, |r, _| {
        r.replacements() > 0
    });
    assert_eq!(reader.replacements(), 1);
    assert!(got.is_empty());
    let next = read_rest_in_order(&mut reader, &mut marks, &mut got, 300, 100, PARTS);
    assert_eq!(next, vec![250; PARTS as usize], "read {} of 300", got.len());
}

/// A reader of a new 2-partition topic holding `per_partition` numbered messages in each
/// partition, with metadata refreshed every second (5 min by default, so that changes to the
/// topic show soon), which read them all in 3 s without an error (statistics arrive every
/// second).
fn reader_of_new_topic(per_partition: u32) -> (KafkaSourceConfig, KafkaReader, Watermarks) {
    let mut cfg = source_config(true, 2);
    cfg.options
        .push(("topic.metadata.refresh.interval.ms".to_string(), "1000".to_string()));
    produce_numbered(&cfg.topic, 2, per_partition);
    let mut reader = KafkaReader::connect(&cfg, 0, 1).unwrap();
    let mut marks = Watermarks::new(60_000, 5_000, &reader.partitions());
    let mut got = Vec::new();
    read_for(
        &mut reader,
        &mut marks,
        &mut got,
        100,
        Duration::from_secs(3),
        |_, _| false,
    );
    assert_eq!(got.len(), 2 * per_partition as usize);
    (cfg, reader, marks)
}

/// Reads on (nothing new arrives) until `reader` fails, within `within` after `what`
/// happened; the error.
fn read_until_error(reader: &mut KafkaReader, marks: &mut Watermarks, within: Duration, what: &str) -> String {
    let started = Instant::now();
    let error = loop {
        assert!(started.elapsed() < within, "no error {within:?} after {what}");
        let mut batch = Vec::new();
        if let Err(e) = reader.read(marks, 100, &mut batch) {
            break e;
        }
        assert!(batch.is_empty(), "read {} messages after {what}", batch.len());
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("stopped {:?} after {what}: {error}", started.elapsed());
    error
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn partitions_added_while_running_stop_the_source_with_a_clear_error() {
    let (cfg, mut reader, mut marks) = reader_of_new_topic(0);
    grow_topic(&cfg.topic, 3);
    let error = read_until_error(&mut reader, &mut marks, Duration::from_secs(30), "the growth");
    assert!(
        error.contains("now has 3 partitions, 2 when the job started"),
        "{error}"
    );
    assert!(error.contains("a restart reads the new ones"), "{error}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_topic_deleted_while_running_stops_the_source_with_a_clear_error() {
    let (cfg, mut reader, mut marks) = reader_of_new_topic(50);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in block_on(admin.delete_topics(&[cfg.topic.as_str()], &opts)).unwrap() {
        r.unwrap();
    }
    // librdkafka gives a partition up ~30 s after a metadata refresh first misses it.
    let error = read_until_error(&mut reader, &mut marks, Duration::from_secs(90), "the deletion");
    assert!(
        error.contains(&format!(
            "topic {}: 2 of this worker's partitions are no longer",
            cfg.topic
        )),
        "{error}"
    );
}

/// Grows `topic` to `partitions` partitions.
fn grow_topic(topic: &str, partitions: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in block_on(admin.create_partitions(&[NewPartitions::new(topic, partitions)], &opts)).unwrap() {
        r.unwrap();
    }
}

/// The window of each snapshot in the messages `msgs` of a snapshot topic.
fn snapshot_windows(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
            v["window"].as_u64().unwrap()
        })
        .collect()
}

/// A live 2-worker run whose topic grows stops with the error, and writes no window its
/// failed sources held: every snapshot is below the smallest partition watermark's window.
/// (Sources that let go of their windows would end the input: every open session would be
/// written closed, at windows the input never reached.)
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_live_run_on_a_growing_topic_stops_without_writing_the_windows_it_held() {
    let topic = unique("grow-run");
    let snapshots = format!("{topic}-snapshots");
    let dir = tempfile::tempdir().unwrap();
    // 3,000 events over ~10 minutes of event time on 2 partitions.
    let gen = GenerateArgs {
        events: 3_000,
        partitions: 2,
        out_dir: dir.path().join("in"),
        seed: 11,
        rate: 5.0,
        ..GenerateArgs::default()
    };
    let files = produce_generated(&gen, &topic);
    // The window each partition's watermark reaches once all of it is read: the live run's
    // frontier stops at the smallest, so only windows below it complete.
    let floor = files
        .iter()
        .map(|f| {
            let text = std::fs::read(f).unwrap();
            let max_ts = text
                .split(|b| *b == b'\n')
                .filter_map(|l| parse_event(l).ok())
                .map(|e| e.timestamp)
                .max()
                .unwrap();
            (max_ts - 5_000) as u64 / 60_000
        })
        .min()
        .unwrap();
    let mut args = run_flags(&topic, &unique("grow-run"), 2);
    args.extend(
        [
            "--snapshot-topic",
            &snapshots,
            "-X",
            "topic.metadata.refresh.interval.ms=1000",
        ]
        .map(String::from),
    );
    let child = sessionflow(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the windows below the frontier to be written, then grow the topic.
    let started = Instant::now();
    let written = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no snapshot written in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        let parts = partition_count(&snapshots) as u32;
        if parts == 0 {
            continue;
        }
        let n: i64 = end_offsets(&snapshots, parts).iter().sum();
        if n > 0 {
            break n;
        }
    };
    grow_topic(&topic, 3);
    let out = wait_timeout(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("now has 3 partitions, 2 when the job started"),
        "{stderr}"
    );
    let msgs = consume_all(&snapshots, partition_count(&snapshots) as u32);
    let windows = snapshot_windows(&msgs);
    assert!(windows.len() as i64 >= written);
    let past: Vec<u64> = windows.iter().copied().filter(|w| *w >= floor).collect();
    assert!(
        past.is_empty(),
        "{} of {} snapshots at or past the frontier {floor}: {:?}",
        past.len(),
        windows.len(),
        &past[..past.len().min(10)]
    );
    eprintln!(
        "{} snapshots, windows {:?}..={:?}, frontier {floor}; stopped {:?} after the growth",
        windows.len(),
        windows.iter().min(),
        windows.iter().max(),
        started.elapsed()
    );
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_connected_consumer_is_never_taken_for_a_stranded_one() {
    // librdkafka's real reports, once a second: they list the broker it learned.
    let mut reader = KafkaReader::connect(&source_config(true, 1), 0, 1).unwrap();
    let mut marks = Watermarks::new(60_000, 5_000, &reader.partitions());
    let mut got = Vec::new();
    let within = STRANDED_AFTER + Duration::from_secs(3);
    read_for(&mut reader, &mut marks, &mut got, 100, within, |_, _| false);
    assert_eq!(reader.replacements(), 0);
}
