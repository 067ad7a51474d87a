//! The Kafka sink operator on the real broker: a producer replaced mid-stream (what the sink
//! does when librdkafka loses every broker after a restart, a fault that cannot be caused at
//! will) hands its unsent messages to the new producer, which sends them once and in order,
//! before anything newer; the acknowledged frontier then passes every window.
//!
//! The first producer bootstraps from a port where nothing listens, so every message it gets
//! stays queued, as in the stranded producer; the replacement bootstraps from the real broker.
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_support::*;
use sessionflow_operators::record::DeadLetter;
use sessionflow_operators::sink::kafka::{ensure_topic, KafkaSink, KafkaSinkConfig, SinkKafka};
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
