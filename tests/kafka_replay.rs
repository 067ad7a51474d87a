//! On the real broker: a generated stream (invalid, duplicate, late events) in a 4-partition
//! topic; `sessionflow run --stop-at-end` with 1, 2 and 3 workers writes byte-for-byte what
//! `sessionflow replay` writes for the same per-partition files (2 workers divide the 4
//! partitions, so sessions follow them, `Routing::Partitions`; 3 route by key hash); the
//! committed offsets are the end offsets with the frontier in their metadata, and a second run
//! of the group reads nothing. The same stream compressed with each codec reads the same.
//! The experiment totals (`--experiments`) are replay's too, with 1 to 3 workers and across
//! two processes.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`, default
//! 127.0.0.1:9092).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use kafka_support::*;
use sessionflow::generate::GenerateArgs;
use sessionflow_operators::event::parse_event;

const PARTITIONS: u32 = 4;

struct Fixture {
    topic: String,
    inputs: Vec<PathBuf>,
    dir: tempfile::TempDir,
    reference: Files,
}

/// The fixture's stream, its files under `dir/in`.
fn fixture_args(dir: &std::path::Path) -> GenerateArgs {
    GenerateArgs {
        events: 40_000,
        partitions: PARTITIONS,
        seed: 2024,
        out_dir: dir.join("in"),
        // More late events than the default, so some land in closed sessions.
        late: 0.01,
        ..GenerateArgs::default()
    }
}

/// One produced topic and its replay reference, shared by the tests of this file.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique("replay");
        let args = fixture_args(dir.path());
        let inputs = produce_generated(&args, &topic);
        let reference = Files::new(dir.path(), "replay");
        replay(&inputs, &reference);
        Fixture {
            topic,
            inputs,
            dir,
            reference,
        }
    })
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn stop_at_end_equals_replay_with_1_2_and_3_workers() {
    let f = fixture();
    assert_eq!(f.inputs.len(), PARTITIONS as usize);
    let expected = f.reference.read();
    let stats: serde_json::Value = serde_json::from_slice(&expected.2).unwrap();
    assert!(
        stats["invalid"].as_u64().unwrap() > 0 && stats["duplicates"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["late"].as_u64().unwrap() > 0,
        "no event landed in a closed session: {stats}"
    );
    for workers in [1, 2, 3] {
        let files = Files::new(f.dir.path(), &format!("run{workers}"));
        let group = unique(&format!("g{workers}"));
        let mut args = run_flags(&f.topic, &group, workers);
        args.push("--stop-at-end".into());
        args.extend(files.flags());
        run_ok(sessionflow(&args), Duration::from_secs(120));
        files.assert_same(&expected, &format!("{workers} workers"));
        files.assert_same_experiments(&f.reference, &format!("{workers} workers"));
    }
}

/// Producers compress batches with whatever codec their teams chose: the job reads a topic of
/// each codec librdkafka knows (gzip, snappy, lz4, zstd) exactly as an uncompressed one.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn topics_of_every_compression_codec_equal_replay() {
    let f = fixture();
    let expected = f.reference.read();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = unique(&format!("codec-{codec}"));
        let args = GenerateArgs {
            out_dir: f.dir.path().join(format!("in-{codec}")),
            ..fixture_args(f.dir.path())
        };
        let inputs = produce_generated_with(&args, &topic, &[("compression.type", codec)]);
        for (a, b) in inputs.iter().zip(&f.inputs) {
            assert_eq!(
                std::fs::read(a).unwrap(),
                std::fs::read(b).unwrap(),
                "{codec}: not the fixture's stream"
            );
        }
        let files = Files::new(f.dir.path(), &format!("codec-{codec}"));
        let mut run = run_flags(&topic, &unique(&format!("codec-{codec}")), 2);
        run.push("--stop-at-end".into());
        run.extend(files.flags());
        run_ok(sessionflow(&run), Duration::from_secs(120));
        files.assert_same(&expected, codec);
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn offsets_are_the_end_offsets_and_a_second_run_reads_nothing() {
    let f = fixture();
    let group = unique("offsets");
    let files = Files::new(f.dir.path(), "offsets-1");
    let mut args = run_flags(&f.topic, &group, 2);
    args.push("--stop-at-end".into());
    args.extend(files.flags());
    run_ok(sessionflow(&args), Duration::from_secs(120));
    let ends = end_offsets(&f.topic, PARTITIONS);
    let commits = committed(&group, &f.topic, PARTITIONS);
    let mut frontiers = Vec::new();
    for (p, (c, end)) in commits.iter().zip(&ends).enumerate() {
        let (offset, meta) = c.clone().unwrap_or_else(|| panic!("partition {p}: no commit"));
        assert_eq!(offset, *end, "partition {p}: committed offset is not the end offset");
        frontiers.push(meta_frontier(&meta));
    }
    // One frontier for every partition: the smallest partition watermark window at the end,
    // min over p of w(max valid timestamp of p - 5 s) (data appended later to any partition
    // gets no lower window, so a later run skips none of it).
    let lows: Vec<u64> = f
        .inputs
        .iter()
        .map(|path| {
            let text = std::fs::read(path).unwrap();
            let max = text
                .split(|b| *b == b'\n')
                .filter_map(|l| parse_event(l).ok())
                .map(|e| e.timestamp)
                .max()
                .unwrap();
            (max - 5_000) as u64 / 60_000
        })
        .collect();
    let expected = *lows.iter().min().unwrap();
    assert!(
        frontiers.iter().all(|f| *f == expected),
        "frontiers {frontiers:?}, partition windows {lows:?}"
    );

    // `sessionflow offsets` reads the same back: every partition at its end, the resume window;
    // a group that never ran has no commit and all of the topic to read.
    let offsets = |group: &str| -> serde_json::Value {
        let args: Vec<String> = [
            "offsets",
            "--brokers",
            &brokers(),
            "--topic",
            &f.topic,
            "--group",
            group,
            "--json",
        ]
        .map(String::from)
        .to_vec();
        serde_json::from_slice(&run_ok(sessionflow(&args), Duration::from_secs(60)).stdout).unwrap()
    };
    let report = offsets(&group);
    assert_eq!(report["resume_window"], expected, "{report}");
    assert_eq!(report["lag"], 0, "{report}");
    for (p, end) in ends.iter().enumerate() {
        let part = &report["partitions"][p];
        assert_eq!(
            (&part["committed"], &part["end"]),
            (&(*end).into(), &(*end).into()),
            "{report}"
        );
        assert_eq!(part["frontier"], expected, "{report}");
    }
    let fresh = offsets(&unique("never-ran"));
    assert!(fresh["resume_window"].is_null(), "{fresh}");
    assert_eq!(fresh["lag"], ends.iter().sum::<i64>(), "{fresh}");

    // Same group again: nothing new to read, nothing written, the commits unchanged.
    let again = Files::new(f.dir.path(), "offsets-2");
    let mut args = run_flags(&f.topic, &group, 2);
    args.push("--stop-at-end".into());
    args.extend(again.flags());
    run_ok(sessionflow(&args), Duration::from_secs(120));
    let (out, dead, _) = again.read();
    assert!(out.is_empty() && dead.is_empty());
    let stats = again.stats_json();
    assert_eq!(stats["events_read"], 0, "{stats}");
    assert!(stats.get("skipped_on_resume").is_none(), "{stats}");
    assert_eq!(committed(&group, &f.topic, PARTITIONS), commits);
}

/// The output topics the job creates: the snapshot topic compacted (the latest snapshot of
/// each session stays), the dead-letter topic with the broker's defaults; each with the configs
/// given by `--snapshot-topic-config` / `--dead-letter-topic-config` instead, and a config the
/// broker refuses is an error at once, not a minute of retries.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn output_topics_are_created_with_their_configs() {
    let f = fixture();
    let run = |tag: &str, extra: &[&str]| {
        let mut args = run_flags(&f.topic, &unique(tag), 2);
        args.push("--stop-at-end".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        sessionflow(&args)
    };
    let (snap, dead) = (unique("cfg-snap"), unique("cfg-dead"));
    run_ok(
        run("cfg1", &["--snapshot-topic", &snap, "--dead-letter-topic", &dead]),
        Duration::from_secs(120),
    );
    assert_eq!(topic_configs(&snap)["cleanup.policy"], "compact");
    assert_eq!(topic_configs(&dead)["cleanup.policy"], "delete");

    let (snap, dead) = (unique("cfg-snap"), unique("cfg-dead"));
    let out = run_ok(
        run(
            "cfg2",
            &[
                "--snapshot-topic",
                &snap,
                "--snapshot-topic-config",
                "cleanup.policy=delete",
                "--snapshot-topic-config",
                "retention.ms=3600000",
                "--dead-letter-topic",
                &dead,
                "--dead-letter-topic-config",
                "retention.ms=86400000",
            ],
        ),
        Duration::from_secs(120),
    );
    let (s, d) = (topic_configs(&snap), topic_configs(&dead));
    assert_eq!(
        (s["cleanup.policy"].as_str(), s["retention.ms"].as_str()),
        ("delete", "3600000")
    );
    assert_eq!(d["retention.ms"], "86400000");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(cleanup.policy=delete, retention.ms=3600000)"),
        "the creation line does not name the configs"
    );

    let bad = unique("cfg-bad");
    let started = std::time::Instant::now();
    let out = run_capture(
        &mut run(
            "cfg3",
            &[
                "--snapshot-topic",
                &bad,
                "--snapshot-topic-config",
                "cleanup.policy=bogus",
            ],
        ),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot create topic {bad}:")) && err.contains("cleanup.policy=bogus"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retried a refused config: {err}"
    );
}

/// Scale-out across processes: `run --stop-at-end` as a two-process timely cluster (timely's
/// own cluster mode over TCP on localhost, 2 workers each: every worker reads one of the 4
/// partitions, sessions are exchanged across the processes) writes what replay writes, and
/// commits the end offsets.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_two_process_cluster_equals_replay() {
    let f = fixture();
    let expected = f.reference.read();
    let ports = [
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    ]
    .map(|l| l.local_addr().unwrap().port());
    let hostfile = f.dir.path().join("hosts-cluster");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    let files = Files::new(f.dir.path(), "cluster");
    let group = unique("cluster");
    let children: Vec<_> = (0..2)
        .map(|id| {
            let mut args = run_flags(&f.topic, &group, 2);
            args.push("--stop-at-end".into());
            args.extend(files.flags());
            args.extend([
                "--processes".to_string(),
                "2".into(),
                "--process-id".into(),
                id.to_string(),
                "--hostfile".into(),
                hostfile.display().to_string(),
            ]);
            let mut cmd = sessionflow(&args);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for (id, child) in children.into_iter().enumerate() {
        let out = wait_timeout(child, Duration::from_secs(180));
        assert!(
            out.status.success(),
            "process {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    files.assert_same(&expected, "2 processes");
    files.assert_same_experiments(&f.reference, "2 processes");
    let ends = end_offsets(&f.topic, PARTITIONS);
    for (p, (c, end)) in committed(&group, &f.topic, PARTITIONS).iter().zip(&ends).enumerate() {
        assert_eq!(c.as_ref().map(|c| c.0), Some(*end), "partition {p}");
    }
}

/// `run --metrics`: a live run (2 workers, Kafka sinks, so it commits) serves its figures in
/// the Prometheus text format while it runs. Once it read the whole topic, the counters
/// account for every message (`read = accepted + duplicates + late + invalid + pending`), the
/// invalid count is replay's, the lag is 0, the committed window trails the frontier and the
/// snapshot topic's sinks acknowledged every snapshot emitted; with `--experiment-metrics`, the
/// experiment totals served are replay's as of their window; a SIGTERM then stops it
/// gracefully.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_live_run_serves_its_figures_as_prometheus_metrics() {
    let f = fixture();
    let expected = f.reference.stats_json();
    let log = f.dir.path().join("metrics.log");
    let (snap_topic, dead_topic) = (unique("metrics-snap"), unique("metrics-dead"));
    let mut args = run_flags(&f.topic, &unique("metrics"), 2);
    args.extend([
        "--snapshot-topic".to_string(),
        snap_topic.clone(),
        "--dead-letter-topic".into(),
        dead_topic.clone(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
        "--experiment-metrics".into(),
    ]);
    let mut child = KillOnDrop(Some(
        sessionflow(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let read_log = || std::fs::read_to_string(&log).unwrap();
    let addr = metrics_address(&log, deadline);
    let total = expected["events_read"].as_f64().unwrap();
    let snap_acked =
        format!("sessionflow_kafka_sink_acked_messages_total{{sink=\"snapshots\",topic=\"{snap_topic}\"}}");
    let (m, text) = loop {
        let (m, text) = scrape(&addr);
        let get = |name: &str| m.get(name).copied();
        let accounted = ["accepted", "duplicate", "late", "invalid"]
            .iter()
            .map(|c| get(&format!("sessionflow_events_{c}_total")).unwrap())
            .sum::<f64>()
            + get("sessionflow_pending_events").unwrap();
        if get("sessionflow_events_read_total") == Some(total)
            && accounted == total
            && get("sessionflow_consumer_lag_messages") == Some(0.0)
            && get("sessionflow_committed_window").is_some()
            && labelled(&text, &snap_acked) == get("sessionflow_snapshots_total")
            && get("sessionflow_experiment_window").is_some()
        {
            break (m, text);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the figures never settled on the whole topic ({total} events): {text}\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        m["sessionflow_events_invalid_total"],
        expected["invalid"].as_f64().unwrap(),
        "{text}"
    );
    assert!(m["sessionflow_events_accepted_total"] > 0.0, "{text}");
    assert!(m["sessionflow_snapshots_total"] > 0.0, "{text}");
    assert!(m["sessionflow_open_sessions"] > 0.0, "{text}");
    assert!(m["sessionflow_offset_commits_total"] > 0.0, "{text}");
    let (frontier, committed) = (m["sessionflow_frontier_window"], m["sessionflow_committed_window"]);
    assert!(committed <= frontier, "{text}");
    assert_eq!(m["sessionflow_frontier_timestamp_seconds"], frontier * 60.0, "{text}");
    assert!(
        text.contains(&format!("sessionflow_info{{topic=\"{}\",", f.topic)),
        "{text}"
    );
    // Every snapshot emitted is acknowledged (the wait above); none is left in flight, and the
    // dead-letter output has its own lines.
    let in_flight = format!("sessionflow_kafka_sink_in_flight_messages{{sink=\"snapshots\",topic=\"{snap_topic}\"}}");
    assert_eq!(labelled(&text, &in_flight), Some(0.0), "{text}");
    let dead_acked =
        format!("sessionflow_kafka_sink_acked_messages_total{{sink=\"dead_letters\",topic=\"{dead_topic}\"}}");
    assert!(labelled(&text, &dead_acked).is_some_and(|n| n > 0.0), "{text}");
    assert!(!text.contains("sessionflow_hbase_"), "{text}");
    // Each partition: read to its end, no lag, past the frontier, not idle, and none holds
    // the frontier back alone (the stream's partitions advance together).
    let ends = end_offsets(&f.topic, PARTITIONS);
    for p in 0..PARTITIONS {
        let get = |name: &str| labelled(&text, &format!("sessionflow_partition_{name}{{partition=\"{p}\"}}"));
        assert_eq!(get("next_offset"), Some(ends[p as usize] as f64), "{p}: {text}");
        assert_eq!(get("lag_messages"), Some(0.0), "{p}: {text}");
        assert!(get("watermark_window").is_some_and(|w| w >= frontier), "{p}: {text}");
        assert!(get("max_event_timestamp_seconds").is_some(), "{p}: {text}");
        assert_eq!(get("idle"), Some(0.0), "{p}: {text}");
        assert!(get("holds_frontier").is_some(), "{p}: {text}");
    }
    // The experiment totals as of their window are replay's at that window: each variation's
    // last line in replay's --experiments file up to it (variations that emptied are left out).
    let window = m["sessionflow_experiment_window"];
    assert!(window < frontier, "{text}");
    let mut want: std::collections::BTreeMap<String, [f64; 4]> = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(&f.reference.experiments).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["window"].as_f64().unwrap() > window {
            continue;
        }
        let labels = format!(
            "{{project_id=\"{}\",experiment_id=\"{}\",variation_id=\"{}\"}}",
            v["project_id"], v["experiment_id"], v["variation_id"]
        );
        let figures = ["sessions", "sessions_with_revenue", "events", "revenue"].map(|k| v[k].as_f64().unwrap());
        if figures[0] == 0.0 {
            want.remove(&labels);
        } else {
            want.insert(labels, figures);
        }
    }
    assert!(!want.is_empty(), "no experiment totals up to window {window}");
    let names = ["sessions", "sessions_with_revenue", "events", "revenue"];
    for (labels, figures) in &want {
        for (name, want) in names.iter().zip(figures) {
            let series = format!("sessionflow_experiment_{name}{labels}");
            assert_eq!(labelled(&text, &series), Some(*want), "{series}: {text}");
        }
    }
    let served = text
        .lines()
        .filter(|l| l.starts_with("sessionflow_experiment_sessions{"))
        .count();
    assert_eq!(served, want.len(), "{text}");
    let mut c = child.0.take().unwrap();
    terminate(&c);
    expect_graceful_exit(&mut c, std::time::Instant::now() + Duration::from_secs(60), &log);
}
