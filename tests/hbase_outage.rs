//! HBase outage: `scripts/services.sh down hbase` for 60 s in the middle of a `sessionflow run
//! --hbase` (Kafka input), then `up` again. The job logs its retries, back-pressures the source
//! (nothing is committed while HBase is away), loses nothing (the final table equals an
//! uninterrupted run's) and its memory stays bounded (peak RSS from /proc, printed); its
//! `--metrics` show the retries and the writes waiting.
//! Needs Kafka and HBase (`scripts/services.sh up`); takes several minutes.
#![allow(clippy::unwrap_used)]

#[path = "hbase_common/mod.rs"]
mod hbase_common;
#[path = "kafka_support/mod.rs"]
mod kafka_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::{
    committed, metrics_address, produce_generated, run_flags, run_ok, scrape, sessionflow, unique, wait_timeout,
    KillOnDrop,
};
use sessionflow::generate::GenerateArgs;

const PARTITIONS: u32 = 4;

fn services(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = Command::new("bash").args([script, action, "hbase"]).output().unwrap();
    assert!(
        out.status.success(),
        "services.sh {action} hbase: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs Kafka and HBase: scripts/services.sh up; stops and restarts HBase"]
fn a_60_second_hbase_outage_loses_nothing_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("hbout");
    let args = GenerateArgs {
        events: 150_000,
        partitions: PARTITIONS,
        seed: 8,
        out_dir: dir.path().join("in"),
        rate: 40.0,
        ..GenerateArgs::default()
    };
    produce_generated(&args, &topic);
    let (a, b) = (hbase_common::fresh_table("out_a"), hbase_common::fresh_table("out_b"));
    let flags = |group: &str, table: &str| {
        let mut f = run_flags(&topic, group, 2);
        f.extend(
            [
                "--hbase",
                &hbase_common::thrift(),
                "--table",
                table,
                "--stop-at-end",
                "--max-windows-ahead",
                "2",
            ]
            .map(String::from),
        );
        f
    };
    run_ok(sessionflow(&flags(&unique("hbout-a"), &a)), Duration::from_secs(900));

    let group = unique("hbout-b");
    let log = dir.path().join("b.log");
    // Killed on a panic too, not left running.
    let mut with_metrics = flags(&group, &b);
    with_metrics.extend(["--metrics", "127.0.0.1:0"].map(String::from));
    let mut guard = KillOnDrop(Some(
        sessionflow(&with_metrics)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let pid = guard.0.as_ref().unwrap().id();
    let metrics = metrics_address(&log, Instant::now() + Duration::from_secs(120));
    // Wait for some progress (rows in SessionDB: a --stop-at-end run commits offsets only at
    // the end), then take HBase away for 60 s.
    let started = Instant::now();
    let exists = |t: &str| {
        hbase_common::client()
            .table_names()
            .is_ok_and(|n| n.iter().any(|x| x.as_slice() == t.as_bytes()))
    };
    while !exists(&b) || hbase_common::table_contents(&b, &["window"]).len() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no progress: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (m, text) = scrape(&metrics);
    assert!(m["sessionflow_hbase_rows_total"] > 0.0, "{text}");
    services("down");
    let down_at = Instant::now();
    let before = committed(&group, &topic, PARTITIONS);
    let mut peak_during = 0;
    while down_at.elapsed() < Duration::from_secs(60) {
        peak_during = peak_during.max(kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        committed(&group, &topic, PARTITIONS),
        before,
        "offsets were committed while HBase was down"
    );
    // The outage shows in the metrics: failed writes retried, writes waiting.
    let (m, text) = scrape(&metrics);
    assert!(m["sessionflow_hbase_retries_total"] > 0.0, "{text}");
    assert!(m["sessionflow_hbase_in_flight_jobs"] > 0.0, "{text}");
    eprintln!(
        "outage: metrics after 60 s: {} retries, {} jobs and {} bytes in flight",
        m["sessionflow_hbase_retries_total"],
        m["sessionflow_hbase_in_flight_jobs"],
        m["sessionflow_hbase_in_flight_bytes"]
    );
    services("up");
    let peak = kib(pid, "VmHWM:");
    let out = wait_timeout(guard.0.take().unwrap(), Duration::from_secs(900));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "the run failed after the outage: {text}");
    let retries = text.lines().filter(|l| l.contains("retrying in")).count();
    eprintln!(
        "outage: {retries} logged retries; peak RSS {} MiB (max RSS seen during the outage {} MiB)",
        peak / 1024,
        peak_during / 1024
    );
    assert!(retries > 0, "no retry was logged");
    assert!(peak < 2 * 1024 * 1024, "peak RSS {peak} KiB");

    let columns = hbase_common::columns_without_state();
    let want = hbase_common::table_contents(&a, &columns);
    let got = hbase_common::table_contents(&b, &columns);
    assert!(want.len() > 1000);
    assert!(want == got, "the tables differ after the outage");
    let mut c = hbase_common::client();
    c.drop_table(&a).unwrap();
    c.drop_table(&b).unwrap();
}
