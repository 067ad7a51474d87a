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

    let want = table_contents(&a, "s", ALL_COLUMNS);
    let got = table_contents(&b, "s", ALL_COLUMNS);
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
