//! On the real broker: watermark alignment bounds what a worker reads ahead. One worker reads
//! a 2-partition topic whose partition 0 holds 20 000 events over ~5.5 hours of event time and
//! whose partition 1 is empty. The empty partition holds the frontier at its start (standard
//! event-time semantics, no `--idle-timeout`), so nothing can be emitted; the source must then
//! stop fetching partition 0 once it is `--max-windows-ahead` windows past the frontier
//! instead of reading the whole partition into memory. One event on partition 1, later than
//! everything on partition 0, releases the frontier: partition 0 is fetched again and every
//! event is read.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sessionflow_operators::sink::kafka::ensure_topic;

const EVENTS: u64 = 20_000;
const T0: i64 = 1_700_000_000_000;

fn event(i: u64, ts: i64) -> String {
    format!(
        r#"{{"event_id":"e{i}","session_id":"s{}","visitor_id":"v{}","project_id":1,"timestamp":{ts},"type":"pageview"}}"#,
        i / 10,
        i / 10
    )
}

fn produce(topic: &str, partition: i32, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for l in lines {
        loop {
            match p.send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(l.as_str()),
            ) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(50));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The event count of a progress line `run [   1.0s] 1234 events, ...`.
fn events_of(line: &str) -> Option<u64> {
    line.strip_prefix("run [")?
        .split_once("] ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_partition_far_ahead_of_an_empty_one_is_paused_not_read_into_memory() {
    let topic = unique("align");
    ensure_topic(&brokers(), &topic, 2, &[], Instant::now() + Duration::from_secs(60)).unwrap();
    // One event per second of event time on partition 0: ~333 windows of 60 s.
    let lines: Vec<String> = (0..EVENTS).map(|i| event(i, T0 + i as i64 * 1_000)).collect();
    produce(&topic, 0, &lines);

    let mut flags = run_flags(&topic, &unique("align-g"), 1);
    // Progress every second (the last pair of run_flags is `--progress 0`).
    let n = flags.len();
    flags[n - 1] = "1s".into();
    flags.extend(["--max-windows-ahead", "2", "--metrics", "127.0.0.1:0"].map(String::from));
    // The live job, killed however the test ends (a failed assertion included).
    let mut child = sessionflow(&flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(Some(child));
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let read_until = |want: &dyn Fn(u64) -> bool, wait: Duration, log: &mut Vec<String>| -> Option<u64> {
        let deadline = Instant::now() + wait;
        let mut last = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else { break };
            if let Some(n) = events_of(&line) {
                last = Some(n);
                if want(n) {
                    return last;
                }
            }
            log.push(line);
        }
        last
    };
    let mut log = Vec::new();

    // 1. Six seconds with partition 1 empty: partition 0 is paused after the windows the
    //    ceiling allows (plus what librdkafka had already fetched), far from all of it.
    let held = read_until(&|_| false, Duration::from_secs(6), &mut log).unwrap_or(0);
    eprintln!("with partition 1 empty: {held} of {EVENTS} events read");
    assert!(
        held < EVENTS / 2,
        "read {held} of {EVENTS} events while the frontier could not move: not paused\n{}",
        log.join("\n")
    );

    // The progress line and the metrics name the partition the output waits for.
    assert!(
        log.iter()
            .any(|l| l.contains("held back by partition 1 (no event yet; see --idle-timeout)")),
        "no progress line names partition 1\n{}",
        log.join("\n")
    );
    let addr = log
        .iter()
        .find_map(|l| l.strip_prefix("run: metrics at http://"))
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics line\n{}", log.join("\n")));
    let (_, text) = scrape(addr);
    let get = |series: &str| labelled(&text, series);
    assert_eq!(
        get("sessionflow_partition_holds_frontier{partition=\"1\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get("sessionflow_partition_holds_frontier{partition=\"0\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        get("sessionflow_partition_watermark_window{partition=\"1\"}").is_none(),
        "{text}"
    );
    assert!(
        get("sessionflow_partition_watermark_window{partition=\"0\"}").is_some_and(|w| w > 0.0),
        "{text}"
    );

    // 2. Partition 1 catches up: the frontier moves and partition 0 is read to its end.
    produce(&topic, 1, &[event(EVENTS, T0 + EVENTS as i64 * 1_000 + 60_000)]);
    let all = read_until(&|n| n > EVENTS, Duration::from_secs(90), &mut log);
    drop(child);
    assert_eq!(
        all,
        Some(EVENTS + 1),
        "not every event was read after the frontier moved\n{}",
        log.join("\n")
    );
}
