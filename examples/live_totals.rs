//! Composing differential dataflow on the sessions: live totals per project, window by window.
//!
//! Events are read from memory and sessionized; `session_collection` turns the snapshots into a
//! differential collection with one record per session (its latest snapshot's value, updated by
//! `-previous, +new`), and the rest is plain differential: `explode` moves each session's
//! figures into the difference type and `count_total` keeps one record per project. Each
//! window prints the projects whose totals it changed; the same holds with any number of
//! workers. (`experiment_totals` is this, by experiment variation.)
//!
//! ```sh
//! cargo run --release --example live_totals -- 2      # 2 worker threads
//! ```

use std::sync::Arc;

use differential_dataflow::operators::CountTotal;
use sessionflow_operators::session::{SessionCollection, SessionConfig, Sessionize};
use sessionflow_operators::source::memory::MemoryReader;
use sessionflow_operators::source::{partitioned_source, SourceConfig};
use timely::dataflow::operators::{Inspect, Probe};

fn main() {
    let workers: usize = std::env::args().nth(1).and_then(|w| w.parse().ok()).unwrap_or(2);
    // Two partitions; sessions of projects 1 and 2, one event every 20 s, some with revenue.
    let line = |p: u32, i: u32| {
        format!(
            r#"{{"event_id":"e{p}-{i}","session_id":"s{p}-{}","visitor_id":"v{p}","project_id":{},"timestamp":{},"type":"click","revenue":{}}}"#,
            i / 4,
            1 + (i / 4) % 2,
            1_700_000_000_000u64 + u64::from(i) * 20_000,
            if i.is_multiple_of(5) { 250 } else { 0 }
        )
        .into_bytes()
    };
    let lines: Vec<Vec<Vec<u8>>> = (0..2u32).map(|p| (0..16u32).map(|i| line(p, i)).collect()).collect();
    let lines = Arc::new(lines);

    let config = timely::Config::process(workers.max(1));
    let done = timely::execute(config, move |worker| {
        let reader = MemoryReader::new(Arc::clone(&lines), worker.index(), worker.peers());
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let input = partitioned_source(scope, "Events", SourceConfig::default(), reader, None, None);
            let snapshots = input.events.sessionize(SessionConfig::default()).snapshots;
            // Every session of the run, with its latest (project, revenue).
            let (_snapshots, sessions) = snapshots.session_collection(|s| Some((s.project_id, s.revenue)));
            sessions
                .explode(|(project, revenue)| Some((project, (1isize, revenue as isize))))
                .count_total()
                .inner
                .inspect(|((project, (sessions, revenue)), window, diff)| {
                    if *diff > 0 {
                        println!("window {window}: project {project}: {sessions} sessions, revenue {revenue}");
                    }
                })
                .probe()
                .0
        });
        while !probe.done() {
            worker.step();
        }
    });
    if let Err(e) = done {
        eprintln!("live_totals: {e}");
        std::process::exit(1);
    }
}
