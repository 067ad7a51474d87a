//! On the real broker: `kill -9` a live `sessionflow run` (Kafka sinks, offsets committed as
//! the sinks acknowledge) once it committed, restart it with the same group and
//! `--stop-at-end`: the restart resumes from the committed cuts and skips every record whose
//! window was already durable, so no window below the resume frontier `D` is computed twice,
//! no input record is lost, and the committed offsets end at the end offsets. With 2 workers
//! and with 3 (which do not divide the 4 partitions evenly: worker 0 reads two of them), and a
//! 1-worker run restarted with 3 (scaling out).
//!
//! What this cannot check without the session state restore (SessionDB, another module): the
//! restarted job starts with no open session, so sessions spanning `D` are split (their
//! snapshots from `D` on lack the events before `D`), an `event_id` accepted before `D` and
//! seen again after it is accepted twice, a late event for a session closed just before `D`
//! opens a new session instead of being dead-lettered, and the windows in `[D, kill)` that the
//! first run already wrote are written again with different content. With the state of every
//! session as of window `D - 1` restored (open sessions with their dedup sets, the closed set,
//! gap sessions), the windows `>= D` are recomputed exactly.
//!
//! The same with SIGTERM: the graceful stop commits everything it made durable before it
//! exits, so nothing the first run wrote lies at or past `D`.
//!
//! A cluster that loses a process (SIGKILL) stops: the other process exits 1 with one clear
//! line.
//!
//! `#[ignore]`d: needs Kafka (`scripts/test.sh` starts it; `KAFKA_BROKERS`).
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kafka_support::*;
use serde_json::Value;
use sessionflow::generate::GenerateArgs;

const PARTITIONS: u32 = 4;

fn event_ids(snapshot: &Value) -> impl Iterator<Item = String> + '_ {
    snapshot["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn killed_live_run_resumes_without_recounting_durable_windows() {
    killed_live_run_resumes(2, 2, 99, Stop::Kill);
}

/// 3 workers on 4 partitions: worker 0 reads partitions 0 and 3, workers 1 and 2 one each.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn killed_live_run_with_3_workers_resumes_without_recounting_durable_windows() {
    killed_live_run_resumes(3, 3, 7, Stop::Kill);
}

/// Scaling out is a restart with more workers: a 1-worker job killed, restarted with 3 (which
/// split its partitions 2 + 1 + 1), resumes exactly as with as many workers.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_killed_live_run_restarted_with_more_workers_resumes_without_recounting() {
    killed_live_run_resumes(1, 3, 17, Stop::Kill);
}

/// SIGTERM instead of SIGKILL: the job stops reading, waits until what it read is durable and
/// committed, and exits 0; so nothing it made durable lies past its commits, and across the two
/// runs every (session, window) snapshot is written exactly once.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn terminated_live_run_commits_what_it_wrote_and_exits_cleanly() {
    killed_live_run_resumes(3, 3, 11, Stop::Term);
}

/// The same as a two-process timely cluster (1 worker each) where only process 1 gets the
/// SIGTERM: the stop request reaches process 0 through the dataflow and both stop gracefully.
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_signal_to_one_process_stops_the_whole_cluster_gracefully() {
    killed_live_run_resumes(2, 2, 13, Stop::TermOneOfTwoProcesses);
}

/// A two-process cluster where process 1 is killed (SIGKILL): process 0 cannot go on without
/// it and exits 1 at once with one line that says so, not timely's cascade of panics (101).
/// Nothing is lost: neither committed past what its sinks acknowledged (see above).
#[test]
#[ignore = "needs a Kafka broker: scripts/test.sh"]
fn a_process_of_the_cluster_killed_stops_the_other_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("lost-peer");
    let args = GenerateArgs {
        events: 5_000,
        partitions: PARTITIONS,
        seed: 17,
        out_dir: dir.path().join("in"),
        rate: 10.0,
        ..GenerateArgs::default()
    };
    produce_generated(&args, &topic);
    let hostfile = dir.path().join("hosts");
    write_hostfile(&hostfile, 2);
    let group = unique("lost-peer-g");
    let log_path = |id: usize| dir.path().join(format!("live{id}.log"));
    let read_log = |id: usize| std::fs::read_to_string(log_path(id)).unwrap();
    let mut guards: Vec<KillOnDrop> = (0..2)
        .map(|id| {
            let mut live = run_flags(&topic, &group, 1);
            // Progress lines show when the dataflow runs (both processes connected).
            if let Some(at) = live.iter().position(|a| a == "--progress") {
                live[at + 1] = "100ms".into();
            }
            live.extend(cluster_flags(2, id, &hostfile));
            spawn_logged(&live, &log_path(id))
        })
        .collect();
    let started = Instant::now();
    while !read_log(0)
        .lines()
        .any(|l| l.starts_with("run [") && !l.contains("] 0 events"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not running after 60 s: {}",
            read_log(0)
        );
        for (id, g) in guards.iter_mut().enumerate() {
            if let Some(status) = g.0.as_mut().unwrap().try_wait().unwrap() {
                panic!("process {id} exited ({status}): {}", read_log(id));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let killed = Instant::now();
    let peer = guards[1].0.as_mut().unwrap();
    peer.kill().unwrap();
    peer.wait().unwrap();
    let survivor = guards[0].0.as_mut().unwrap();
    let status = loop {
        if let Some(status) = survivor.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "process 0 still running 30 s after process 1 was killed: {}",
            read_log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = read_log(0);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("sessionflow: error: the connection to another process of the cluster broke"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    eprintln!("process 0 exited {:?} after process 1 was killed", killed.elapsed());
}

/// Writes a hostfile of `processes` free local ports.
fn write_hostfile(path: &std::path::Path, processes: usize) {
    let ports: Vec<u16> = (0..processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(path, hosts).unwrap();
}

/// The flags of process `id` of a `processes`-process cluster on `hostfile`.
fn cluster_flags(processes: usize, id: usize, hostfile: &std::path::Path) -> [String; 6] {
    [
        "--processes".to_string(),
        processes.to_string(),
        "--process-id".into(),
        id.to_string(),
        "--hostfile".into(),
        hostfile.display().to_string(),
    ]
}

/// Starts `sessionflow ARGS` with its stderr in the file `log` (killed when dropped).
fn spawn_logged(args: &[String], log: &std::path::Path) -> KillOnDrop {
    let log = std::fs::File::create(log).unwrap();
    KillOnDrop(Some(
        sessionflow(args).stdout(Stdio::null()).stderr(log).spawn().unwrap(),
    ))
}

/// How the first run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a graceful stop.
    Term,
    /// The first run is a two-process cluster; SIGTERM to process 1 only.
    TermOneOfTwoProcesses,
}

/// The live job with `workers` workers on a stream generated with `seed`, stopped by `stop`,
/// then restarted with `restart_workers` workers (in one process).
fn killed_live_run_resumes(workers: usize, restart_workers: usize, seed: u64, stop: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("resume");
    let snap_topic = unique("resume-snap");
    let dead_topic = unique("resume-dead");
    let group = unique("resume-g");
    let args = GenerateArgs {
        events: 60_000,
        partitions: PARTITIONS,
        seed,
        out_dir: dir.path().join("in"),
        late: 0.01,
        ..GenerateArgs::default()
    };
    let inputs = produce_generated(&args, &topic);
    let reference = Files::new(dir.path(), "replay");
    replay(&inputs, &reference);
    let ends = end_offsets(&topic, PARTITIONS);

    // 1. The live job, stopped once every partition has a commit past offset 0.
    let processes = if stop == Stop::TermOneOfTwoProcesses { 2 } else { 1 };
    let hostfile = dir.path().join("hosts");
    if processes > 1 {
        write_hostfile(&hostfile, processes);
    }
    let log_path = |id: usize| dir.path().join(format!("live{id}.log"));
    let read_log = |id: usize| std::fs::read_to_string(log_path(id)).unwrap();
    // Killed on a panic too, not left running.
    let mut guards: Vec<KillOnDrop> = (0..processes)
        .map(|id| {
            let mut live = run_flags(&topic, &group, workers / processes);
            live.extend(
                [
                    "--snapshot-topic",
                    &snap_topic,
                    "--dead-letter-topic",
                    &dead_topic,
                    "--commit-interval",
                    "200ms",
                ]
                .map(String::from),
            );
            if stop != Stop::Kill {
                // Sinks that acknowledge late keep the job busy, with written snapshots not
                // yet committed, when the signal comes: the stop has to wait for them.
                live.extend(["-X", "producer:linger.ms=1000"].map(String::from));
            }
            if processes > 1 {
                live.extend(cluster_flags(processes, id, &hostfile));
            }
            spawn_logged(&live, &log_path(id))
        })
        .collect();
    let started = Instant::now();
    let first = loop {
        for (id, g) in guards.iter_mut().enumerate() {
            if let Some(status) = g.0.as_mut().unwrap().try_wait().unwrap() {
                panic!("live process {id} exited ({status}): {}", read_log(id));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "no commit within 90 s");
        let c = committed(&group, &topic, PARTITIONS);
        // Some windows of every partition are durable and committed.
        if c.iter()
            .all(|x| x.as_ref().is_some_and(|(o, m)| *o > 0 && meta_frontier(m) > 0))
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped_at = Instant::now();
    if stop == Stop::Kill {
        for g in &mut guards {
            let child = g.0.as_mut().unwrap();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    } else {
        terminate(guards[processes - 1].0.as_ref().unwrap());
        let deadline = stopped_at + Duration::from_secs(60);
        for (id, g) in guards.iter_mut().enumerate() {
            expect_graceful_exit(g.0.as_mut().unwrap(), deadline, &log_path(id));
        }
    }
    eprintln!("{workers} workers: {stop:?} took {:?}", stopped_at.elapsed());
    std::thread::sleep(Duration::from_secs(1));

    let cuts = committed(&group, &topic, PARTITIONS);
    let cuts: Vec<(i64, u64)> = cuts
        .into_iter()
        .map(|c| c.map(|(o, m)| (o, meta_frontier(&m))).unwrap())
        .collect();
    for (p, ((offset, _), end)) in cuts.iter().zip(&ends).enumerate() {
        assert!(*offset <= *end, "partition {p}: committed {offset} past the end {end}");
    }
    assert!(
        cuts.iter().zip(&first).all(|(c, f)| c.0 >= f.as_ref().unwrap().0),
        "commits went backwards"
    );
    let d = cuts.iter().map(|c| c.1).max().unwrap();
    let snap_ends = end_offsets(&snap_topic, PARTITIONS);
    if stop != Stop::Kill {
        // The stop waited for the commits to reach the sources' frontier, and says where.
        for id in 0..processes {
            let log = read_log(id);
            assert!(
                log.contains(&format!("every window below {d} is durable")),
                "process {id}, D = {d}: {log}"
            );
        }
        assert!(cuts.iter().all(|c| c.1 == d), "cuts at different frontiers: {cuts:?}");
    }
    let left: i64 = cuts.iter().zip(&ends).map(|(c, e)| e - c.0).sum();
    eprintln!(
        "{workers} workers: killed after {:?}: cuts {cuts:?}, ends {ends:?}, D = {d}, {left} messages after the cuts",
        started.elapsed()
    );

    // 2. Restart with the same group, to the end.
    let files = Files::new(dir.path(), "resumed");
    let mut again = run_flags(&topic, &group, restart_workers);
    again.extend(
        [
            "--stop-at-end",
            "--snapshot-topic",
            &snap_topic,
            "--dead-letter-topic",
            &dead_topic,
        ]
        .map(String::from),
    );
    again.extend(files.flags());
    let out = run_ok(sessionflow(&again), Duration::from_secs(120));
    eprintln!(
        "{workers} workers, restart with {restart_workers}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every message from the cuts on was read once: counted, or skipped as already durable.
    let stats = files.stats_json();
    let field = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    assert_eq!(
        field("events_read") + field("skipped_on_resume"),
        left as u64,
        "{stats}"
    );
    assert_eq!(
        field("events_read"),
        field("accepted") + field("duplicates") + field("late") + field("invalid")
    );
    // The final commits are the end offsets.
    let end_commits = committed(&group, &topic, PARTITIONS);
    for (p, (c, end)) in end_commits.iter().zip(&ends).enumerate() {
        let (offset, meta) = c.clone().unwrap();
        assert_eq!(offset, *end, "partition {p}");
        assert!(meta_frontier(&meta) >= d, "partition {p}: frontier went back below {d}");
    }

    // No window below D is computed again: the restart's snapshots are all at windows >= D, in
    // the file and in the topic alike (the topic's messages after the first run's are exactly
    // the file's lines).
    let resumed = lines(&files.output);
    assert!(
        resumed.iter().all(|s| s["window"].as_u64().unwrap() >= d),
        "a snapshot below D = {d}"
    );
    let all = consume_all(&snap_topic, PARTITIONS);
    let (first_run, second_run): (Vec<&Msg>, Vec<&Msg>) =
        all.iter().partition(|m| m.offset < snap_ends[m.partition as usize]);
    let mut from_topic: Vec<String> = second_run
        .iter()
        .map(|m| String::from_utf8(m.value.clone()).unwrap())
        .collect();
    let mut from_file: Vec<String> = std::fs::read_to_string(&files.output)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    from_topic.sort();
    from_file.sort();
    assert!(
        from_topic == from_file,
        "the snapshot topic and file of the restart differ"
    );
    for m in &second_run {
        let v: Value = serde_json::from_slice(&m.value).unwrap();
        assert_eq!(m.key.as_deref(), Some(v["session_id"].as_str().unwrap().as_bytes()));
    }
    // Below D every (session, window) was written once, by the first run.
    let mut below: BTreeMap<(String, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
    for m in &all {
        let v: Value = serde_json::from_slice(&m.value).unwrap();
        let w = v["window"].as_u64().unwrap();
        if w < d {
            below
                .entry((v["session_id"].as_str().unwrap().to_string(), w))
                .or_default()
                .insert(m.value.clone());
        }
    }
    assert!(!below.is_empty(), "nothing was durable before the kill");
    for (k, contents) in &below {
        assert_eq!(contents.len(), 1, "{k:?} written with different contents");
    }
    if stop != Stop::Kill {
        // Nothing the first run wrote lies past its commits, so the restart wrote no
        // (session, window) again.
        for m in &first_run {
            let v: Value = serde_json::from_slice(&m.value).unwrap();
            let w = v["window"].as_u64().unwrap();
            assert!(w < d, "the stopped run wrote window {w}, past its commits (D = {d})");
        }
    }

    // No event lost: every event the replay reference accepted is in a snapshot the first run
    // made durable below D, or in the restart's output (a snapshot, or a session_closed dead
    // letter where the restart lacked the closed set).
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for m in &first_run {
        let v: Value = serde_json::from_slice(&m.value).unwrap();
        if v["window"].as_u64().unwrap() < d {
            seen.extend(event_ids(&v));
        }
    }
    for s in &resumed {
        seen.extend(event_ids(s));
    }
    for dl in lines(&files.dead) {
        if dl["reason"] == "session_closed" {
            let raw: Value = serde_json::from_str(dl["raw"].as_str().unwrap()).unwrap();
            seen.insert(raw["event_id"].as_str().unwrap().to_string());
        }
    }
    let mut missing = Vec::new();
    for s in lines(&reference.output) {
        missing.extend(event_ids(&s).filter(|id| !seen.contains(id)));
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
