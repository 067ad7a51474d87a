//! Command-line behaviour: clear errors naming paths, no half-written outputs, the demo and
//! generate commands end to end.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sessionflow"))
}

fn replay(dir: &Path, inputs: &[&Path], output: &Path) -> std::process::Output {
    replay_with(dir, inputs, output, &[])
}

/// `replay` with `extra` flags.
fn replay_with(dir: &Path, inputs: &[&Path], output: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = bin();
    c.arg("replay");
    for i in inputs {
        c.arg("--input").arg(i);
    }
    c.arg("--output").arg(output);
    c.arg("--dead-letter").arg(dir.join("dead.jsonl"));
    c.arg("--stats").arg(dir.join("stats.json"));
    c.args(extra);
    c.output().unwrap()
}

/// A run that wrote to `/dev/full` failed naming it, and left only its input `p0.jsonl` in
/// `dir`: no output was put in place.
#[cfg(target_os = "linux")]
fn assert_full_device_left_only_the_input(out: &std::process::Output, dir: &Path) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write output /dev/full"), "stderr: {err}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["p0.jsonl"], "only the input is left");
}

const LINE: &str = r#"{"event_id":"e1","session_id":"s1","visitor_id":"v1","project_id":7,"timestamp":1700000000000,"type":"pageview"}"#;

#[test]
fn missing_input_is_a_clear_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let out = replay(dir.path(), &[&missing], &dir.path().join("out.jsonl"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.jsonl"), "stderr: {err}");
    assert!(!dir.path().join("out.jsonl").exists());
    assert!(!dir.path().join("stats.json").exists());
}

/// `-X` cannot turn off what the job's guarantees rest on: the run stops before it connects
/// (no broker listens on port 1, and the connect timeout would take a minute).
#[test]
fn an_option_that_would_commit_offsets_ahead_of_the_output_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |options: &[&str]| {
        let mut c = bin();
        c.args(["run", "--brokers", "127.0.0.1:1", "--topic", "t", "--group", "g"]);
        c.args(["--stop-at-end", "--snapshot-topic", "snaps", "--output"]);
        c.arg(dir.path().join("out.jsonl"));
        c.args(options);
        let start = std::time::Instant::now();
        let out = c.output().unwrap();
        (out, start.elapsed())
    };
    for (option, says) in [
        (
            "enable.auto.commit=true",
            "sessionflow sets enable.auto.commit=false itself",
        ),
        (
            "consumer:enable.auto.offset.store=1",
            "sessionflow sets enable.auto.offset.store=false itself",
        ),
        ("producer:acks=1", "sessionflow sets acks=all itself"),
        ("group.id=other", "sessionflow sets group.id=g itself (--group sets it)"),
        (
            "enable.partition.eof=false",
            "sessionflow sets enable.partition.eof=true itself",
        ),
    ] {
        // The same from the command line and from an options file.
        let file = dir.path().join("client.properties");
        std::fs::write(&file, format!("# fixed\n{option}\n")).unwrap();
        let file = file.display().to_string();
        for how in [["-X", option], ["--kafka-config", file.as_str()]] {
            let (out, took) = run(&how);
            assert!(!out.status.success(), "{how:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("Kafka option {option} (-X or --kafka-config): {says}")),
                "stderr: {err}"
            );
            assert!(took < std::time::Duration::from_secs(30), "{how:?}: took {took:?}");
        }
    }
    assert!(!dir.path().join("out.jsonl").exists());
}

/// An empty or illegal topic, group or broker list is a usage error at once, not a minute of
/// retried metadata requests.
#[test]
fn bad_topic_group_and_broker_values_are_usage_errors_at_once() {
    for (args, says) in [
        (
            ["--brokers", "127.0.0.1:1", "--topic", "", "--group", "g"],
            "a topic name cannot be empty",
        ),
        (
            ["--brokers", "127.0.0.1:1", "--topic", "my topic", "--group", "g"],
            "has ' '",
        ),
        (["--brokers", "127.0.0.1:1", "--topic", "t", "--group", ""], "--group"),
        (["--brokers", "", "--topic", "t", "--group", "g"], "bad broker list"),
        (["--brokers", "a:1,", "--topic", "t", "--group", "g"], "bad broker list"),
    ] {
        let out = bin().arg("run").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A --start time without its offset from UTC, or not a time at all.
    for start in ["2026-12-07T10:00:00", "yesterday", "2026-02-30"] {
        let out = bin()
            .args([
                "run",
                "--brokers",
                "127.0.0.1:1",
                "--topic",
                "t",
                "--group",
                "g",
                "--start",
                start,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{start}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("bad time \"{start}\"")) && err.contains("or earliest, or latest"),
            "{start}: {err}"
        );
    }
    // Files need a bounded run; --stop-at bounds it by a time, and is one or the other; the
    // live experiment totals are served with the metrics.
    for (args, says) in [
        (vec!["--output", "o.jsonl"], "<--stop-at-end|--stop-at <TIME>>"),
        (vec!["--experiments", "e.jsonl"], "<--stop-at-end|--stop-at <TIME>>"),
        (vec!["--experiment-metrics"], "--metrics <HOST:PORT>"),
        (vec!["--stop-at-end", "--stop-at", "2026-01-01"], "cannot be used with"),
        (vec!["--stop-at", "2026-01-01T00:00"], "bad time"),
    ] {
        let out = bin()
            .args(["run", "--brokers", "127.0.0.1:1", "--topic", "t", "--group", "g"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = bin()
        .args(["generate", "--brokers", "b:1", "--topic", "a/b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has '/'"));
}

/// A `--metrics` address that cannot be listened on is an error before any broker is tried
/// (the brokers here do not exist: tried first, they would be the error, after a minute of
/// retries).
#[test]
fn a_metrics_address_in_use_is_refused_before_connecting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .args(["run", "--brokers", "127.0.0.1:1", "--topic", "clicks", "--group", "g"])
        .args(["--metrics", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics {addr}: cannot listen: ")),
        "stderr: {err}"
    );
}

/// An output topic that is the input (or the other output) is refused before connecting.
#[test]
fn an_output_topic_that_is_the_input_or_the_other_output_is_refused() {
    for (topics, says) in [
        (
            ["--dead-letter-topic", "clicks"],
            "--dead-letter-topic clicks is the input topic: the job would read its own output",
        ),
        (
            ["--snapshot-topic", "clicks"],
            "--snapshot-topic clicks is the input topic: the job would read its own output",
        ),
    ] {
        let out = bin()
            .args(["run", "--brokers", "127.0.0.1:1", "--topic", "clicks", "--group", "g"])
            .args(topics)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "stderr: {err}");
    }
    let out = bin()
        .args(["run", "--brokers", "127.0.0.1:1", "--topic", "clicks", "--group", "g"])
        .args(["--snapshot-topic", "out", "--dead-letter-topic", "out"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--snapshot-topic and --dead-letter-topic are both out: each needs a topic of its own"),
        "stderr: {err}"
    );
}

#[test]
fn unwritable_output_is_a_clear_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p0.jsonl");
    std::fs::write(&input, format!("{LINE}\n")).unwrap();
    let output = dir.path().join("no-such-dir").join("out.jsonl");
    let out = replay(dir.path(), &[&input], &output);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-dir"), "stderr: {err}");
    assert!(!dir.path().join("dead.jsonl").exists());
    assert!(!dir.path().join("stats.json").exists());
}

/// An output that cannot be written (`/dev/full` fails every write, as a full disk does):
/// a clear error naming it, and neither the dead letters nor the counters are put in place.
#[cfg(target_os = "linux")]
#[test]
fn a_full_output_is_a_clear_error_and_puts_nothing_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p0.jsonl");
    std::fs::write(&input, format!("{LINE}\n{{\"a\":1}}\n")).unwrap();
    let out = replay(dir.path(), &[&input], Path::new("/dev/full"));
    assert_full_device_left_only_the_input(&out, dir.path());
}

/// An experiment totals file that cannot be written fails the replay like the others: nothing
/// is put in place.
#[cfg(target_os = "linux")]
#[test]
fn a_full_experiments_file_fails_the_run_and_puts_nothing_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p0.jsonl");
    let line = LINE.replace(
        "\"pageview\"",
        "\"pageview\",\"experiments\":[{\"experiment_id\":1,\"variation_id\":2}]",
    );
    std::fs::write(&input, format!("{line}\n")).unwrap();
    let output = dir.path().join("out.jsonl");
    let out = replay_with(dir.path(), &[&input], &output, &["--experiments", "/dev/full"]);
    assert_full_device_left_only_the_input(&out, dir.path());
}

#[test]
fn replay_writes_all_three_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("p0.jsonl");
    std::fs::write(&input, format!("{LINE}\r\n\n   \n{{\"a\":1e400}}\n{LINE}")).unwrap();
    let output = dir.path().join("out.jsonl");
    let out = replay(dir.path(), &[&input], &output);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snaps = std::fs::read_to_string(&output).unwrap();
    assert_eq!(snaps.lines().count(), 2, "{snaps}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap()).unwrap();
    // 4 non-empty lines: 1 accepted, 1 duplicate, 2 invalid (spaces, 1e400).
    assert_eq!(stats["events_read"], 4);
    assert_eq!(stats["accepted"], 1);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["invalid"], 2);
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let offsets: Vec<u64> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [2, 3]);
    assert!(!dir.path().join("out.jsonl.tmp").exists());
}

#[test]
fn generate_then_replay_is_identical_for_1_and_3_workers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let st = bin()
        .args([
            "generate",
            "--events",
            "20000",
            "--partitions",
            "3",
            "--seed",
            "7",
            "--out-dir",
        ])
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    let mut outs = Vec::new();
    for w in ["1", "3"] {
        let o = dir.path().join(format!("out{w}.jsonl"));
        let mut c = bin();
        c.arg("replay");
        for p in 0..3 {
            c.arg("--input").arg(data.join(format!("p{p}.jsonl")));
        }
        c.arg("--output")
            .arg(&o)
            .arg("--dead-letter")
            .arg(dir.path().join(format!("dead{w}.jsonl")));
        c.arg("--stats")
            .arg(dir.path().join(format!("stats{w}.json")))
            .args(["--workers", w]);
        let r = c.output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        outs.push((
            std::fs::read(&o).unwrap(),
            std::fs::read(dir.path().join(format!("dead{w}.jsonl"))).unwrap(),
            std::fs::read(dir.path().join(format!("stats{w}.json"))).unwrap(),
        ));
    }
    assert!(!outs[0].0.is_empty());
    assert!(outs[0] == outs[1], "outputs differ between 1 and 3 workers");
}

#[test]
fn demo_runs_and_prints_the_variation_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["demo", "--events", "20000", "--workers", "2", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("(all sessions)") && table.contains("exp "), "{table}");
    let rows = std::fs::read_to_string(dir.path().join("sessiondb.jsonl")).unwrap();
    assert!(rows.lines().count() > 100);
    assert!(rows.lines().all(|l| l.contains("\"closed\":true")));
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["events_read"], 20000);
}
