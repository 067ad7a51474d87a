//! On the real broker: malformed, empty, null, oversized and non-UTF-8 messages go to the
//! dead-letter topic (and file) with their partition and offset, are counted, and never stop
//! the job; a broker that is down at start gives logged retries, then a clear error; so does a
//! group other consumers still use (it would refuse every commit).
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use sessionflow_operators::sink::kafka::ensure_topic;
use sessionflow_operators::source::kafka::{block_on, KafkaReader, KafkaSourceConfig};
use sessionflow_operators::source::Cut;

/// (partition, payload or `None` for a null message, expected reason prefix or `None` if valid)
type Message = (i32, Option<Vec<u8>>, Option<&'static str>);

fn event(id: &str, ts: i64) -> Vec<u8> {
    format!(r#"{{"event_id":"{id}","session_id":"s-{id}","visitor_id":"v","project_id":1,"timestamp":{ts},"type":"pageview"}}"#)
        .into_bytes()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn bad_messages_become_dead_letters_with_partition_and_offset() {
    let topic = unique("bad");
    let dead_topic = unique("bad-dead");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new = NewTopic::new(&topic, 2, TopicReplication::Fixed(1));
    for r in block_on(admin.create_topics([&new], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    let t0 = 1_700_000_000_000;
    let mut big = event("big", t0);
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(r#","tags":{{"pad":"{}"}}}}"#, "x".repeat(70_000)).as_bytes());
    let messages: Vec<Message> = vec![
        (0, Some(event("a", t0)), None),
        (0, Some(Vec::new()), Some("invalid: empty message")),
        (0, None, Some("invalid: empty message")),
        (0, Some(b"{\"event_id\": ".to_vec()), Some("invalid")),
        (0, Some(big), Some("invalid")),
        (0, Some(event("b", t0 + 1_000)), None),
        (0, Some(vec![0xff, 0xfe, b'{', b'}']), Some("invalid")),
        (1, Some(event("c", t0 + 2_000)), None),
        (1, Some(b"   ".to_vec()), Some("invalid")),
        (1, Some(b"[1,2,3]".to_vec()), Some("invalid")),
        (
            1,
            Some(br#"{"event_id":"d","visitor_id":"v","project_id":1,"timestamp":5,"type":"x"}"#.to_vec()),
            Some("invalid"),
        ),
    ];
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    for (p, payload, _) in &messages {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic).partition(*p);
        if let Some(v) = payload {
            rec = rec.payload(v.as_slice());
        }
        producer.send(rec).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let mut expected: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    let mut next = [0u64; 2];
    for (p, _, reason) in &messages {
        let offset = next[*p as usize];
        next[*p as usize] += 1;
        if let Some(r) = reason {
            expected.insert((*p as u32, offset), r);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "bad");
    let mut args = run_flags(&topic, &unique("bad-g"), 2);
    args.extend(["--stop-at-end".into(), "--dead-letter-topic".into(), dead_topic.clone()]);
    args.extend(files.flags());
    run_ok(sessionflow(&args), Duration::from_secs(120));

    let stats = files.stats_json();
    assert_eq!(stats["events_read"], messages.len(), "{stats}");
    assert_eq!(stats["invalid"], expected.len(), "{stats}");
    assert_eq!(stats["accepted"], 3, "{stats}");
    // The dead-letter file and topic both hold each bad message once, with partition and offset.
    let from_file: Vec<serde_json::Value> = std::fs::read_to_string(&files.dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Created by the run with the input's partition count (not auto-created with the broker's).
    assert_eq!(partition_count(&dead_topic), 2);
    let topic_msgs = consume_all(&dead_topic, 2);
    let from_topic: Vec<serde_json::Value> = topic_msgs
        .iter()
        .map(|m| serde_json::from_slice(&m.value).unwrap())
        .collect();
    for (what, letters) in [("file", &from_file), ("topic", &from_topic)] {
        let mut got: BTreeMap<(u32, u64), String> = BTreeMap::new();
        for d in letters {
            let key = (d["partition"].as_u64().unwrap() as u32, d["offset"].as_u64().unwrap());
            assert!(
                got.insert(key, d["reason"].as_str().unwrap().to_string()).is_none(),
                "{what}: {key:?} twice"
            );
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{what}"
        );
        for (k, reason) in &got {
            assert!(reason.starts_with(expected[k]), "{what} {k:?}: {reason}");
        }
    }
    // Dead letters are keyed by their source partition.
    for m in &topic_msgs {
        let d: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        assert_eq!(m.key.as_deref(), Some(d["partition"].to_string().as_bytes()));
    }
    let empty = from_topic
        .iter()
        .find(|d| d["partition"] == 0 && d["offset"] == 1)
        .unwrap();
    assert_eq!(empty["raw"], "");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn broker_down_at_start_retries_then_fails_clearly() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = [
        "run",
        "--brokers",
        &format!("127.0.0.1:{port}"),
        "--topic",
        "t",
        "--group",
        "g",
        "--connect-timeout",
        "10s",
        "--stop-at-end",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let out = run_capture(&mut sessionflow(&args), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // It gives up at its --connect-timeout, not a whole request timeout (3 s) past it.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "took {took:?}"
    );
    assert!(stderr.contains("retrying in"), "no retry logged:\n{stderr}");
    assert!(
        stderr.contains(&format!("error: cannot reach topic t on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("gave up after"), "{stderr}");
}

/// A group other consumers still use (the job this one replaces, say) refuses every commit
/// from outside it: a clear error before anything runs, naming the members; once they left,
/// the same job runs and commits.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_group_with_active_members_is_a_clear_error_before_the_job_starts() {
    let topic = unique("busy-group");
    let deadline = Instant::now() + Duration::from_secs(60);
    ensure_topic(&brokers(), &topic, 2, &[], deadline).unwrap();
    let group = unique("busy");
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .set("client.id", "the-old-job")
        .create()
        .unwrap();
    member.subscribe(&[&topic]).unwrap();
    while member.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the member never joined its group");
        member.poll(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "busy");
    let mut run = run_flags(&topic, &group, 1);
    run.push("--stop-at-end".into());
    run.extend(files.flags());
    let out = run_capture(&mut sessionflow(&run), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: consumer group {group} has 1 active member(s) (the-old-job at 127.0.0.1"
        )) && stderr.contains("choose another --group"),
        "{stderr}"
    );
    assert!(!files.output.exists(), "the refused job wrote its output");
    // A member that joins after the start: the source's commits fail, and say why.
    let cfg = KafkaSourceConfig {
        brokers: brokers(),
        topic: topic.clone(),
        group: group.clone(),
        final_commit_timeout_ms: 2_000,
        ..KafkaSourceConfig::default()
    };
    let reader = KafkaReader::connect(&cfg, 0, 1).unwrap();
    let cut = Cut {
        partition: 0,
        offset: 0,
        frontier: 1,
        max_ts: None,
    };
    let error = reader.committer().commit_sync(&[cut]).unwrap_err();
    assert!(
        error.contains(&format!("consumer group {group} has members now")),
        "{error}"
    );
    drop(reader);
    // Closing leaves the group; then the job runs.
    drop(member);
    run_ok(sessionflow(&run), Duration::from_secs(60));
    assert_eq!(files.stats_json()["events_read"], 0);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_message_the_broker_cannot_take_is_a_clear_job_error() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("toolarge");
    let args = sessionflow::generate::GenerateArgs {
        events: 3_000,
        partitions: 2,
        seed: 5,
        out_dir: dir.path().join("in"),
        ..sessionflow::generate::GenerateArgs::default()
    };
    produce_generated(&args, &topic);
    let group = unique("toolarge-g");
    let mut run = run_flags(&topic, &group, 2);
    // Snapshots of sessions with a few events are over 1000 bytes: librdkafka refuses them.
    run.extend(
        [
            "--stop-at-end",
            "--snapshot-topic",
            &unique("toolarge-snap"),
            "-X",
            "producer:message.max.bytes=1000",
        ]
        .map(String::from),
    );
    let out = run_capture(&mut sessionflow(&run), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error: cannot produce to topic"), "{stderr}");
    assert!(stderr.contains("too large"), "{stderr}");
    // Nothing was committed past the failed window: at most the first windows, never the end.
    let ends = end_offsets(&topic, 2);
    for (c, end) in committed(&group, &topic, 2).iter().zip(&ends) {
        assert!(c.as_ref().is_none_or(|(o, _)| o < end), "committed {c:?} of {end}");
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn an_idle_partition_stops_holding_the_frontier_after_the_timeout() {
    let topic = unique("idle");
    let snap_topic = unique("idle-snap");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new = [&topic, &snap_topic].map(|t| NewTopic::new(t, 2, TopicReplication::Fixed(1)));
    for r in block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    // Partition 0: one session over 10 minutes; partition 1: nothing at all.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let t0 = 1_700_000_000_000;
    for i in 0..20 {
        let v = event(&format!("i{i}"), t0 + i * 30_000);
        producer
            .send(
                BaseRecord::<'_, [u8], [u8]>::to(&topic)
                    .partition(0)
                    .payload(v.as_slice()),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    for (idle, expect_snapshots) in [(None, false), (Some("1s"), true)] {
        let group = unique("idle-g");
        let mut live = run_flags(&topic, &group, 1);
        live.extend(["--snapshot-topic", &snap_topic].map(String::from));
        if let Some(t) = idle {
            live.extend(["--idle-timeout", t].map(String::from));
        }
        // Killed on a panic too, not left running.
        let mut guard = KillOnDrop(Some(
            sessionflow(&live)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let child = guard.0.as_mut().unwrap();
        let before = end_offsets(&snap_topic, 2).iter().sum::<i64>();
        let started = Instant::now();
        let mut got = 0;
        while started.elapsed() < Duration::from_secs(if expect_snapshots { 30 } else { 8 }) {
            got = end_offsets(&snap_topic, 2).iter().sum::<i64>() - before;
            if got > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got > 0, expect_snapshots, "idle timeout {idle:?}: {got} snapshots");
    }
}
