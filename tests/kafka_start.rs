//! On the real broker: `run --start TIME` starts each partition at its first message with a
//! Kafka timestamp at or after TIME. A topic holds a stream A produced before TIME and a
//! stream B produced after it: the run writes byte for byte what replay writes for B's
//! per-partition files alone (TIME as RFC 3339 with 1 worker, as ms with 3). A time before 1970
//! reads everything, a time after every message starts every partition at its end; a group's
//! committed offsets win over `--start`.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_support::*;
use sessionflow::config::format_utc;
use sessionflow::generate::GenerateArgs;

const PARTITIONS: u32 = 4;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn stream(dir: &std::path::Path, tag: &str, seed: u64) -> GenerateArgs {
    GenerateArgs {
        events: 6_000,
        partitions: PARTITIONS,
        seed,
        out_dir: dir.join(tag),
        ..GenerateArgs::default()
    }
}

/// `TIME` as RFC 3339 to the millisecond (`2026-12-07T10:00:00.250Z`).
fn rfc3339_ms(ms: i64) -> String {
    let secs = format_utc(ms);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// A bounded run of `group` from `start` to the end offsets, its files under `dir` tagged
/// `tag`; returns the files and the run's stderr.
fn run_from(
    topic: &str,
    group: &str,
    workers: usize,
    start: &str,
    dir: &std::path::Path,
    tag: &str,
) -> (Files, String) {
    run_with(topic, group, workers, &["--stop-at-end", "--start", start], dir, tag)
}

/// A run of `group` with `flags` (which bound it), its files under `dir` tagged `tag`; returns
/// the files and the run's stderr.
fn run_with(
    topic: &str,
    group: &str,
    workers: usize,
    flags: &[&str],
    dir: &std::path::Path,
    tag: &str,
) -> (Files, String) {
    let files = Files::new(dir, tag);
    let mut args = run_flags(topic, group, workers);
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend(files.flags());
    let out = run_ok(sessionflow(&args), Duration::from_secs(120));
    (files, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Produces stream `tag` (generated with `seed`) to `topic`, then waits past the millisecond of
/// its last acknowledged message and returns the time after it: every message produced from
/// then on has a later Kafka timestamp.
fn produce_then_mark(dir: &std::path::Path, topic: &str, tag: &str, seed: u64) -> (Vec<PathBuf>, i64) {
    let files = produce_generated(&stream(dir, tag, seed), topic);
    std::thread::sleep(Duration::from_millis(50));
    let time = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    (files, time)
}

/// Asserts a run's files equal replay's `expected` of the stream produced after `base` (the
/// end offsets before it): the same bytes, but for the dead letters' offsets, which are
/// Kafka's (`base` more than the lines' in the replay's files).
fn assert_same_after(files: &Files, expected: &(Vec<u8>, Vec<u8>, Vec<u8>), base: &[i64], what: &str) {
    let got = files.read();
    assert!(got.0 == expected.0, "{what}: snapshots differ from replay");
    assert_eq!(
        String::from_utf8_lossy(&got.2),
        String::from_utf8_lossy(&expected.2),
        "{what}: stats"
    );
    let letters = |bytes: &[u8]| -> Vec<serde_json::Value> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    };
    let mut want = letters(&expected.1);
    assert!(!want.is_empty(), "the stream has no invalid event");
    for letter in &mut want {
        let p = letter["partition"].as_u64().unwrap() as usize;
        let offset = letter["offset"].as_i64().unwrap();
        letter["offset"] = (offset + base[p]).into();
    }
    assert_eq!(letters(&got.1), want, "{what}: dead letters");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_start_time_reads_what_was_produced_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("start");
    // Every message of A is acknowledged (so timestamped) before `time`, and B's are produced
    // after it.
    let (before, time) = produce_then_mark(dir.path(), &topic, "a", 31);
    assert_eq!(before.len(), PARTITIONS as usize);
    let base = end_offsets(&topic, PARTITIONS);
    assert!(base.iter().all(|o| *o > 0), "{base:?}");
    let after = produce_generated(&stream(dir.path(), "b", 32), &topic);
    let reference = Files::new(dir.path(), "replay-b");
    replay(&after, &reference);
    let expected = reference.read();
    assert!(!expected.0.is_empty());

    let group = unique("start-rfc3339");
    let (files, log) = run_from(&topic, &group, 1, &rfc3339_ms(time), dir.path(), "rfc3339");
    assert_same_after(&files, &expected, &base, "--start as RFC 3339, 1 worker");
    assert!(
        log.contains("starting partitions 0 at offset") && log.contains(&format!("at or after {time} ms")),
        "no line naming the start offsets: {log}"
    );
    let (files, _) = run_from(&topic, &unique("start-ms"), 3, &time.to_string(), dir.path(), "ms");
    assert_same_after(&files, &expected, &base, "--start as ms, 3 workers");

    // A time before 1970 (the request's -1 would mean "latest" to Kafka): every message.
    let (files, _) = run_from(
        &topic,
        &unique("start-1969"),
        2,
        "1969-12-31T23:59:59.999Z",
        dir.path(),
        "1969",
    );
    assert_eq!(
        files.stats_json()["events_read"],
        end_offsets(&topic, PARTITIONS).iter().sum::<i64>(),
        "a time before 1970 did not start at the beginning"
    );

    // The group committed its end offsets: they win over a --start before everything.
    let (files, _) = run_from(&topic, &group, 2, "1970-01-01", dir.path(), "committed");
    let stats = files.stats_json();
    assert_eq!(stats["events_read"], 0, "committed offsets ignored: {stats}");

    // A time after every message: each partition starts at its end.
    let (files, log) = run_from(
        &topic,
        &unique("start-future"),
        2,
        &rfc3339_ms(now_ms() + 3_600_000),
        dir.path(),
        "future",
    );
    let (out, dead, _) = files.read();
    assert!(out.is_empty() && dead.is_empty());
    assert_eq!(files.stats_json()["events_read"], 0);
    assert!(log.contains("0 at its end"), "{log}");
}

/// `--stop-at TIME`: a bounded run that ends each partition before its first message at or
/// after TIME. Streams A, B and C produced with times T1 and T2 between them: `--stop-at T1`
/// equals replay of A, `--start T1 --stop-at T2` replay of B; a stop before the start reads
/// nothing.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_time_range_reads_what_was_produced_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("range");
    let (a, t1) = produce_then_mark(dir.path(), &topic, "a", 41);
    let after_a = end_offsets(&topic, PARTITIONS);
    let (b, t2) = produce_then_mark(dir.path(), &topic, "b", 42);
    produce_generated(&stream(dir.path(), "c", 43), &topic);
    let reference = |inputs: &[PathBuf], tag: &str| {
        let files = Files::new(dir.path(), tag);
        replay(inputs, &files);
        files.read()
    };
    let (t1_text, t2_text) = (rfc3339_ms(t1), rfc3339_ms(t2));

    let (files, log) = run_with(&topic, &unique("range-a"), 2, &["--stop-at", &t1_text], dir.path(), "a");
    assert_same_after(
        &files,
        &reference(&a, "replay-a"),
        &[0; PARTITIONS as usize],
        "--stop-at T1",
    );
    assert!(
        log.contains("stopping partitions 0 before offset") && log.contains(&format!("at or after {t1} ms")),
        "no line naming the end offsets: {log}"
    );
    let (files, _) = run_with(
        &topic,
        &unique("range-b"),
        3,
        &["--start", &t1_text, "--stop-at", &t2_text],
        dir.path(),
        "b",
    );
    assert_same_after(&files, &reference(&b, "replay-b"), &after_a, "--start T1 --stop-at T2");

    let (files, _) = run_with(
        &topic,
        &unique("range-none"),
        2,
        &["--start", &t2_text, "--stop-at", &t1_text],
        dir.path(),
        "none",
    );
    assert_eq!(files.stats_json()["events_read"], 0);
}
