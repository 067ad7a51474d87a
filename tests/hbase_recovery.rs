//! Recovery from SessionDB, in process: a run "crashes" (is abandoned mid-stream, with its
//! committed cuts kept like Kafka's) several times and resumes each time from the cuts and a
//! SessionDB restore; the final table must equal an uninterrupted run's. Needs HBase
//! (`scripts/services.sh up hbase`; HBASE_THRIFT). The same with `sessionflow run` on Kafka
//! and `kill -9` is `hbase_kill.rs`.
#![allow(clippy::unwrap_used)]

mod hbase_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hbase_common::*;
use sessionflow::commands::hbase_args::resume_window;
use sessionflow::sessiondb::{self, SinkMode};

static CLOSED: AtomicUsize = AtomicUsize::new(0);

fn resume(commits: &Commits) -> Option<u64> {
    let cuts: Vec<_> = commits.lock().unwrap().values().cloned().collect();
    resume_window(&cuts).unwrap()
}

#[test]
#[ignore = "needs HBase: scripts/services.sh up hbase"]
fn restores_after_crashes_give_the_table_of_an_uninterrupted_run() {
    // A slow stream and a 5-minute gap: the crashes fall among sessions opening, closing,
    // merging and expiring from the closed set, and closed rows being compacted.
    let lines = Arc::new(generate_with(24_000, 3, 11, &["--rate", "15"]));
    let session = job_gap(5 * 60_000).session;
    let a = fresh_table("rec_a");
    let cfg_a = sink_cfg(&a, &session, SinkMode::Sessions);
    cfg_a.prepare().unwrap();
    run_into(Arc::clone(&lines), cfg_a, Default::default(), None, None);

    let b = fresh_table("rec_b");
    let cfg_b = sink_cfg(&b, &session, SinkMode::Sessions);
    cfg_b.prepare().unwrap();
    let commits: Commits = Default::default();
    let longest = lines.iter().map(Vec::len).max().unwrap();
    for stop in [longest / 5, longest / 2, longest * 4 / 5] {
        let counts = run_into(
            Arc::clone(&lines),
            cfg_b.clone(),
            Arc::clone(&commits),
            Some(stop),
            resume(&commits),
        );
        CLOSED.fetch_add(counts.map_or(0, |c| c.1), Ordering::Relaxed);
        let cuts = commits.lock().unwrap().clone();
        eprintln!("crashed after offset {stop}: committed {cuts:?}");
        assert!(!cuts.is_empty(), "the run committed nothing before the crash");
    }
    assert!(CLOSED.load(Ordering::Relaxed) > 0, "no restore had closed-set entries");
    let last = run_into(Arc::clone(&lines), cfg_b, Arc::clone(&commits), None, resume(&commits));
    assert!(
        last.is_some_and(|(open, _)| open > 0),
        "the last restore found no open session"
    );

    let want = table_contents(&a, ALL_COLUMNS);
    let got = table_contents(&b, ALL_COLUMNS);
    assert!(want.len() > 1000, "{} rows", want.len());
    let diff: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, _)| sessiondb::schema::escape(k))
        .take(5)
        .collect();
    assert!(diff.is_empty(), "rows differ: {diff:?}");
    assert_eq!(want.len(), got.len());
    let mut c = client();
    c.drop_table(&a).unwrap();
    c.drop_table(&b).unwrap();
}

/// The sink never runs ahead of the acknowledged commits: with the reader acknowledging
/// nothing, nothing is written; acknowledging up to window `a`, it writes up to
/// `a + max_versions - 2` and stops there (a restart from `a` can still restore exactly);
/// released, the run completes with the table of an uninterrupted run.
#[test]
#[ignore = "needs HBase: scripts/services.sh up hbase"]
fn the_sink_waits_for_acknowledged_commits() {
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    let lines = Arc::new(generate_with(6_000, 2, 5, &["--rate", "15"]));
    let session = job_gap(5 * 60_000).session;
    let a = fresh_table("gate_a");
    let cfg_a = sink_cfg(&a, &session, SinkMode::Sessions);
    cfg_a.prepare().unwrap();
    run_into(Arc::clone(&lines), cfg_a, Default::default(), None, None);

    let b = fresh_table("gate_b");
    let cfg_b = sink_cfg(&b, &session, SinkMode::Sessions);
    let slack = u64::from(cfg_b.prepare().unwrap()) - 2;
    let commits: Commits = Default::default();
    let cap = Arc::new(AtomicU64::new(0));
    let run = {
        let (lines, cfg_b, commits, cap) = (
            Arc::clone(&lines),
            cfg_b.clone(),
            Arc::clone(&commits),
            Arc::clone(&cap),
        );
        std::thread::spawn(move || run_into_acking(lines, cfg_b, commits, None, None, Some(cap)))
    };
    // Waits until the written marker stopped moving for 3 s; returns it.
    let settle = || {
        let (mut last, mut since) = (written_marker(&b), Instant::now());
        while since.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(200));
            let now = written_marker(&b);
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        last
    };
    // 1. Nothing acknowledged: the source commits, the sink writes nothing.
    let first = loop {
        if let Some(f) = commits.lock().unwrap().values().map(|c| c.frontier).max() {
            break f;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(settle(), None, "written before any commit was acknowledged");
    // 2. Acknowledged up to `first + 2`: written up to `first + 2 + slack`, no further.
    let acked = first + 2;
    cap.store(acked, Ordering::Relaxed);
    let written = settle().expect("nothing written once commits were acknowledged");
    eprintln!("first commit at window {first}; acknowledged {acked}; written up to {written} (slack {slack})");
    assert!(written <= acked + slack, "written {written} past {acked} + {slack}");
    assert!(written >= acked, "written only up to {written}");
    // 3. Released: the run completes, and the table is the uninterrupted run's.
    cap.store(u64::MAX, Ordering::Relaxed);
    run.join().unwrap();
    let want = table_contents(&a, ALL_COLUMNS);
    let got = table_contents(&b, ALL_COLUMNS);
    assert!(want.len() > 100, "{} rows", want.len());
    assert!(want == got, "tables differ ({} rows vs {})", want.len(), got.len());
    let mut c = client();
    c.drop_table(&a).unwrap();
    c.drop_table(&b).unwrap();
}
