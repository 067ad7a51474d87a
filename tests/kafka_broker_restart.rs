//! On the real broker: `scripts/services.sh down kafka` in the middle of a `sessionflow run
//! --stop-at-end` (2 workers, file outputs and Kafka snapshot/dead-letter topics), ~12 s
//! without a broker, then `up kafka`. The job rides it out: it finishes on its own, its files are
//! byte for byte `sessionflow replay`'s of the same per-partition data, the committed offsets
//! are the end offsets, and the snapshot and dead-letter topics hold exactly the files' lines
//! (the idempotent producers neither lost nor duplicated a message across the restart).
//!
//! The outage is made to land while the job still needs the broker for both reading and
//! writing: the consumers prefetch little (`queued.min.messages`, `queued.max.messages.kbytes`,
//! `fetch.message.max.bytes`), the producers batch for 100 ms (`linger.ms`) and the source may
//! run only one window ahead of the acknowledged output (`--max-windows-ahead 1`); the broker is
//! stopped once a twentieth of the snapshots are in their topic. The test then checks that it did:
//! fewer events than the topic holds were read when the broker came back (the job's progress
//! line), and snapshots were produced after the broker had stopped (their create time).
//!
//! It stops the shared broker, so it is the only test of its binary (cargo runs test binaries
//! one after another); a guard starts the broker again however the test ends.
//! `#[ignore]`d: needs Kafka managed by `scripts/services.sh` (`scripts/test.sh` starts it).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_support::*;
use rdkafka::consumer::Consumer;
use sessionflow::generate::GenerateArgs;

const PARTITIONS: u32 = 4;
/// The script that manages the broker.
const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
/// How long the broker stays stopped (after `down` returned, before `up` is called).
const OUTAGE: Duration = Duration::from_secs(12);

fn services(action: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("bash").args([SERVICES, action, "kafka"]).output().unwrap();
    assert!(
        out.status.success(),
        "services.sh {action} kafka: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// Starts the broker again when dropped, however the test ends (a failed assertion included).
struct RestoreBroker;

impl Drop for RestoreBroker {
    fn drop(&mut self) {
        match Command::new("bash").args([SERVICES, "up", "kafka"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "RestoreBroker: services.sh up kafka failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("RestoreBroker: cannot run services.sh up kafka: {e}"),
        }
    }
}

/// The broker's side of a failure: `services.sh status kafka` and the end of its server log.
fn broker_side() -> String {
    let status = match Command::new("bash").args([SERVICES, "status", "kafka"]).output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("cannot run services.sh status kafka: {e}"),
    };
    let dir = std::env::var_os("SESSIONFLOW_SERVICES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.services").into());
    let server_log = dir.join("kafka/logs/server.log");
    let tail = match std::fs::read_to_string(&server_log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(80)..].join("\n")
        }
        Err(e) => format!("cannot read {}: {e}", server_log.display()),
    };
    format!(
        "broker now: {}\nlast lines of {}:\n{tail}",
        status.trim(),
        server_log.display()
    )
}

/// The events read so far, from the job's last progress line
/// (`run [   1.0s] 8192 events, ...`).
fn events_read(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.starts_with("run ["))?;
    line.split_once("] ")?.1.split_once(' ')?.0.parse().ok()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn sorted_lines(path: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn sorted_values(msgs: &[Msg]) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8(m.value.clone()).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_broker_restart_mid_run_loses_nothing() {
    // The broker is the one scripts/services.sh manages (it is restarted through it).
    services("status");
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("restart");
    let snap_topic = unique("restart-snap");
    let dead_topic = unique("restart-dead");
    let group = unique("restart-g");
    let args = GenerateArgs {
        events: 30_000,
        partitions: PARTITIONS,
        seed: 31,
        out_dir: dir.path().join("in"),
        // 10 events/s of event time: 3000 s, about 50 windows.
        rate: 10.0,
        late: 0.01,
        ..GenerateArgs::default()
    };
    let inputs = produce_generated(&args, &topic);
    let reference = Files::new(dir.path(), "replay");
    replay(&inputs, &reference);
    let expected = reference.read();
    let expected_stats = reference.stats_json();
    let total_snapshots = expected_stats["snapshots"].as_u64().unwrap();
    let ends = end_offsets(&topic, PARTITIONS);
    let total_events: i64 = ends.iter().sum();
    assert_eq!(total_events as u64, args.events);

    let files = Files::new(dir.path(), "run");
    let mut flags = run_flags(&topic, &group, 2);
    // A progress line every 0.5 s: the events read at any time.
    let at = flags.iter().position(|f| f == "--progress").unwrap();
    flags[at + 1] = "500ms".into();
    flags.extend(
        [
            "--stop-at-end",
            "--snapshot-topic",
            &snap_topic,
            "--dead-letter-topic",
            &dead_topic,
            "--max-windows-ahead",
            "1",
            // Little prefetched input: the consumers keep fetching from the broker to the end.
            "-X",
            "consumer:queued.min.messages=200",
            "-X",
            "consumer:queued.max.messages.kbytes=256",
            "-X",
            "consumer:fetch.message.max.bytes=32768",
            // Each batch of snapshots waits 100 ms: about a window per batch acknowledged.
            "-X",
            "producer:linger.ms=100",
        ]
        .map(String::from),
    );
    flags.extend(files.flags());
    let log = dir.path().join("run.log");

    let _restore = RestoreBroker;
    let child = sessionflow(&flags)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut job = KillOnDrop(Some(child));
    let job_started = Instant::now();
    let running = |job: &mut KillOnDrop, what: &str| {
        if let Some(status) = job.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the run exited ({status}) {what}:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
    };

    // 1. A twentieth of the snapshots acknowledged: take the broker away. One client, asked
    // every 20 ms: the job is quick (it can read every event within a few seconds), and a
    // loaded machine must not make the test notice the mark late (a client created per look
    // once let it notice at 70% of the snapshots, and every event was read before the outage).
    let watcher = client(None);
    let snapshots_in = || -> i64 {
        // The run creates the snapshot topic; until then (or on a slow answer) none.
        (0..PARTITIONS)
            .map(|p| {
                watcher
                    .fetch_watermarks(&snap_topic, p as i32, Duration::from_secs(1))
                    .map_or(0, |(_, high)| high.max(0))
            })
            .sum()
    };
    let before = loop {
        running(&mut job, "before the outage");
        assert!(
            job_started.elapsed() < Duration::from_secs(120),
            "fewer than {} snapshots within 120 s:\n{}",
            total_snapshots / 20,
            std::fs::read_to_string(&log).unwrap()
        );
        let n = snapshots_in();
        if n as u64 >= total_snapshots / 20 {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(watcher);
    let read_at_down = events_read(&log);
    let down_called = Instant::now();
    let stopping = services("down");
    let stopped_at_ms = now_ms();
    let stopped = Instant::now();
    running(&mut job, "when the broker had stopped");
    std::thread::sleep(OUTAGE);
    running(&mut job, "during the outage");
    let read_at_up = events_read(&log).unwrap_or(0);
    let starting = services("up");
    let unreachable = down_called.elapsed();
    let fully_down = stopped.elapsed();
    eprintln!(
        "broker: down after {}/{} snapshots and {read_at_down:?} events read ({:.1} s into the run); \
         `down` took {:.1} s, stopped for {:.1} s (`up` took {:.1} s, {:.1} s from `down` to ready); \
         {read_at_up} of {total_events} events read when it came back",
        before,
        total_snapshots,
        (down_called - job_started).as_secs_f64(),
        stopping.as_secs_f64(),
        fully_down.as_secs_f64(),
        starting.as_secs_f64(),
        unreachable.as_secs_f64(),
    );

    // 2. The job finishes by itself.
    let child = job.0.take().unwrap();
    let out = wait_timeout(child, Duration::from_secs(300));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.status.success(),
        "the run failed after the restart ({}):\n{text}\n{}",
        out.status,
        broker_side()
    );
    eprintln!(
        "run took {:.1} s; its log:\n{text}",
        job_started.elapsed().as_secs_f64()
    );

    // The outage hit a run with work left on both sides of the broker.
    assert!(
        (read_at_up as i64) < total_events,
        "every event was read before the broker came back ({read_at_up})"
    );
    let snaps = consume_all(&snap_topic, PARTITIONS);
    let after_stop = snaps
        .iter()
        .filter(|m| m.timestamp.is_some_and(|t| t >= stopped_at_ms))
        .count();
    eprintln!(
        "{after_stop} of {} snapshots were produced after the broker had stopped",
        snaps.len()
    );
    assert!(after_stop > 0, "every snapshot was produced before the outage");

    // 3. Nothing lost, nothing twice: the files are replay's, byte for byte.
    files.assert_same(&expected, "after the broker restart");
    // The committed offsets are the end offsets (with sessionflow's metadata).
    for (p, (c, end)) in committed(&group, &topic, PARTITIONS).iter().zip(&ends).enumerate() {
        let (offset, meta) = c.clone().unwrap_or_else(|| panic!("partition {p}: no commit"));
        assert_eq!(offset, *end, "partition {p}: committed offset is not the end offset");
        meta_frontier(&meta);
    }
    // The topics hold the files' lines, each once.
    assert_eq!(snaps.len() as u64, total_snapshots, "snapshot topic");
    assert!(
        sorted_values(&snaps) == sorted_lines(&files.output),
        "the snapshot topic differs from the snapshot file"
    );
    let dead = consume_all(&dead_topic, PARTITIONS);
    assert!(
        sorted_values(&dead) == sorted_lines(&files.dead),
        "the dead-letter topic differs from the dead-letter file ({} messages, {} lines)",
        dead.len(),
        sorted_lines(&files.dead).len()
    );
    eprintln!(
        "equal to replay: {} snapshots, {} dead letters, {} events; test took {:.1} s",
        total_snapshots,
        dead.len(),
        total_events,
        test_started.elapsed().as_secs_f64()
    );
}
