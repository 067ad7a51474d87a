//! Shared helpers of the HBase tests (they need `scripts/services.sh up hbase`).
#![allow(dead_code, clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbase_thrift::hbase::TScan;
use sessionflow::config::JobConfig;
use sessionflow::pipeline::{self, Outputs};
use sessionflow::sessiondb::{HbaseClient, HbaseEvents, HbaseSessions, HbaseSink, HbaseSinkConfig, SinkMode};
use sessionflow_operators::session::{SessionConfig, Snapshot};
use sessionflow_operators::sink::hbase::client::Timeouts;
use sessionflow_operators::source::memory::MemoryReader;
use sessionflow_operators::source::{Cut, PartitionReader, RawRecord, ReadStatus, Watermarks};

/// `HBASE_THRIFT` or 127.0.0.1:9090.
pub fn thrift() -> String {
    std::env::var("HBASE_THRIFT").unwrap_or_else(|_| "127.0.0.1:9090".into())
}

/// A connection, or a panic that says how to start HBase.
pub fn client() -> HbaseClient {
    let t = Timeouts {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(120),
    };
    match HbaseClient::connect(&thrift(), t).and_then(|mut c| c.table_names().map(|_| c)) {
        Ok(c) => c,
        Err(e) => panic!("HBase Thrift server unreachable at {} ({e}); start it with `scripts/services.sh up hbase` and set HBASE_THRIFT", thrift()),
    }
}

/// Every column of a session row (`s:snapshot`, its query columns and `s:state`): what the
/// tests compare the tables of two runs on.
pub const ALL_COLUMNS: &[&str] = &[
    "snapshot",
    "start",
    "end",
    "event_count",
    "revenue",
    "visitor_id",
    "project_id",
    "experiments",
    "names",
    "window",
    "closed",
    "merged_into",
    "state",
];

/// [`ALL_COLUMNS`] without `state` (what `hbase_outage.rs` compares).
pub fn columns_without_state() -> Vec<&'static str> {
    ALL_COLUMNS.iter().copied().filter(|c| *c != "state").collect()
}

/// A fresh table name (dropped first if it exists).
pub fn fresh_table(prefix: &str) -> String {
    let name = format!(
        "t_{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    );
    client().drop_table(&name).unwrap();
    name
}

/// Sink settings for `table` with the job's window and gap.
pub fn sink_cfg(table: &str, session: &SessionConfig, mode: SinkMode) -> HbaseSinkConfig {
    HbaseSinkConfig {
        thrift: thrift(),
        table: table.into(),
        mode,
        window_ms: session.window_ms,
        gap_ms: session.gap_ms,
        startup_timeout_ms: 30_000,
        ..HbaseSinkConfig::default()
    }
}

/// The job settings for tests (the spec's defaults, state on).
pub fn job() -> JobConfig {
    job_gap(SessionConfig::default().gap_ms)
}

/// The job settings with another session gap (ms).
pub fn job_gap(gap_ms: u64) -> JobConfig {
    JobConfig::for_session(SessionConfig {
        emit_state: true,
        gap_ms,
        ..SessionConfig::default()
    })
}

/// Generated lines, one Vec per partition.
pub fn generate(events: u64, partitions: u32, seed: u64) -> Vec<Vec<Vec<u8>>> {
    generate_with(events, partitions, seed, &[])
}

/// Generated lines with extra `generate` flags.
pub fn generate_with(events: u64, partitions: u32, seed: u64, extra: &[&str]) -> Vec<Vec<Vec<u8>>> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sessionflow"))
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--partitions",
            &partitions.to_string(),
            "--seed",
            &seed.to_string(),
            "--out-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (0..partitions)
        .map(|p| {
            let text = std::fs::read(dir.path().join(format!("p{p}.jsonl"))).unwrap();
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                .collect()
        })
        .collect()
}

/// Committed cuts, shared across a simulated crash.
pub type Commits = Arc<Mutex<BTreeMap<u32, Cut>>>;

/// An in-memory partition reader that commits cuts like Kafka and resumes from them; it can
/// stop delivering after `limit` records per partition (the "crash" point: the run is then
/// abandoned) without ending its partitions. A [`MemoryReader`] (resumed from the committed
/// cuts, with the limit) that also commits, in reads of at most 256 records.
pub struct ResumableReader {
    inner: MemoryReader,
    commits: Commits,
    /// Acknowledges commits only up to this frontier (a commit path that lags or fails).
    pub ack_cap: Option<Arc<AtomicU64>>,
}

impl ResumableReader {
    pub fn new(
        lines: Arc<Vec<Vec<Vec<u8>>>>,
        index: usize,
        peers: usize,
        commits: Commits,
        limit: Option<usize>,
    ) -> Self {
        let cuts: Vec<Cut> = commits.lock().unwrap().values().cloned().collect();
        let inner = MemoryReader::new(lines, index, peers).resume_from(&cuts);
        let inner = match limit {
            Some(l) => inner.with_limit(l),
            None => inner,
        };
        ResumableReader {
            inner,
            commits,
            ack_cap: None,
        }
    }
}

impl PartitionReader for ResumableReader {
    fn partitions(&self) -> Vec<u32> {
        self.inner.partitions()
    }

    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String> {
        self.inner.read(marks, budget.min(256), out)
    }

    fn resume_points(&self) -> Vec<Cut> {
        self.inner.resume_points()
    }

    fn commit(&mut self, cuts: &[Cut]) -> Result<(), String> {
        let mut c = self.commits.lock().unwrap();
        for cut in cuts {
            c.insert(cut.partition, cut.clone());
        }
        Ok(())
    }

    fn acknowledged(&mut self, issued: Option<u64>) -> Option<u64> {
        match &self.ack_cap {
            Some(cap) => issued.map(|i| i.min(cap.load(Ordering::Relaxed))),
            None => issued,
        }
    }
}

/// The `s:written` marker of `table`'s meta row: the latest window the sink wrote.
pub fn written_marker(table: &str) -> Option<u64> {
    let cols = sessionflow::sessiondb::schema::Columns::default();
    let row = client()
        .get_row(
            table,
            sessionflow::sessiondb::schema::META_ROW,
            std::slice::from_ref(&cols.written),
            None,
        )
        .unwrap()?;
    let cells = row.columns.unwrap_or_default();
    cells
        .get(&cols.written)
        .and_then(|c| c.value.as_deref())
        .and_then(sessionflow::sessiondb::schema::decode_u64)
}

/// Runs the job on one worker into HBase (`mode`), optionally from a restored store; with
/// `stop_after` the run is abandoned once that many steps passed after the reader's limit.
/// Returns the snapshot lines (in-memory reference) when `capture`.
pub fn run_into(
    lines: Arc<Vec<Vec<Vec<u8>>>>,
    cfg: HbaseSinkConfig,
    commits: Commits,
    limit: Option<usize>,
    resume: Option<u64>,
) -> Option<(usize, usize)> {
    run_into_acking(lines, cfg, commits, limit, resume, None)
}

/// [`run_into`] with the reader's acknowledgements capped by `ack_cap` (see
/// [`ResumableReader::ack_cap`]).
pub fn run_into_acking(
    lines: Arc<Vec<Vec<Vec<u8>>>>,
    cfg: HbaseSinkConfig,
    commits: Commits,
    limit: Option<usize>,
    resume: Option<u64>,
    ack_cap: Option<Arc<AtomicU64>>,
) -> Option<(usize, usize)> {
    let job = job_gap(cfg.gap_ms);
    let counts = Arc::new(Mutex::new(None));
    let counts2 = Arc::clone(&counts);
    timely::execute_directly(move |worker| {
        let mut reader = ResumableReader::new(lines, 0, 1, commits, limit);
        reader.ack_cap = ack_cap;
        let mut sink = HbaseSink::new(cfg.clone());
        let mut outputs = Outputs {
            commit_on_durable: true,
            no_file_sinks: true,
            ..Outputs::default()
        };
        if let Some(f) = resume {
            // Restored inside the worker, as `run` does (the store is not `Send`).
            let r = sessionflow::sessiondb::restore(0, 1, f, &cfg, &job.session).unwrap();
            eprintln!(
                "restore at window {f}: {} open, {} closed, {} compactions pending, {} rows scanned",
                r.open,
                r.closed,
                r.pending_compactions.len(),
                r.rows_scanned
            );
            *counts2.lock().unwrap() = Some((r.open, r.closed));
            sink.pending_compactions = r.pending_compactions;
            outputs.restored_sessions = Some(r.store);
        }
        match cfg.mode {
            SinkMode::Sessions => {
                // Gated on the acknowledged commits, as `run` wires it.
                let gate = timely::dataflow::ProbeHandle::new();
                sink.commit_gate = Some(gate.clone());
                outputs.commit_gate = Some(gate);
                outputs.snapshot_sinks.push(Box::new(HbaseSessions(sink)))
            }
            SinkMode::Events => outputs.event_sinks.push(Box::new(HbaseEvents(sink))),
        }
        let built = pipeline::build(worker, &job, reader, outputs);
        match limit {
            None => pipeline::run_to_completion(worker, &built, Duration::from_secs(3600), |_| {}),
            Some(_) => {
                // Run until the source is starved and the sink has caught up, then "crash".
                let mut idle_since = std::time::Instant::now();
                let mut last = (u64::MAX, 0u64);
                loop {
                    worker.step_or_park(Some(Duration::from_millis(5)));
                    let now = (built.source.borrow().commits, built.source.borrow().events_read);
                    if now != last {
                        last = now;
                        idle_since = std::time::Instant::now();
                    }
                    if idle_since.elapsed() > Duration::from_secs(3) || built.probe.done() {
                        break;
                    }
                }
                // The crash: abandon the dataflow where it stands.
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
            }
        }
    });
    let c = *counts.lock().unwrap();
    c
}

/// The latest version of the `columns` (qualifiers, each in the family that holds it) of every
/// session row of `table`.
pub fn table_contents(table: &str, columns: &[&str]) -> BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut c = client();
    let mut out = BTreeMap::new();
    let names = sessionflow::sessiondb::schema::Columns::default();
    let cols = columns.iter().map(|q| names.named(q)).collect::<Vec<_>>();
    let scan = TScan {
        start_row: Some(vec![0]),
        stop_row: Some(vec![0xff]),
        timestamp: None,
        columns: Some(cols),
        caching: Some(1000),
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: None,
    };
    c.scan(table, scan, 1000, |r| {
        let row = r.row.unwrap_or_default();
        let cells = r
            .columns
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.value.unwrap_or_default()))
            .collect();
        out.insert(row, cells);
        true
    })
    .unwrap();
    out
}

/// Row key -> (window, snapshot JSON).
type Latest = BTreeMap<Vec<u8>, (u64, String)>;

/// The last snapshot JSON of every session in a reference run (in memory, no HBase).
pub fn reference_last_snapshots(lines: Arc<Vec<Vec<Vec<u8>>>>) -> BTreeMap<Vec<u8>, String> {
    let job = job();
    let last: Arc<Mutex<Latest>> = Arc::new(Mutex::new(BTreeMap::new()));
    let l2 = Arc::clone(&last);
    timely::execute_directly(move |worker| {
        let reader = MemoryReader::new(lines, 0, 1);
        let seen: Rc<RefCell<Vec<Snapshot>>> = Rc::new(RefCell::new(Vec::new()));
        let outputs = Outputs {
            no_file_sinks: true,
            snapshot_sinks: vec![Box::new(Collect(Rc::clone(&seen)))],
            ..Outputs::default()
        };
        let built = pipeline::build(worker, &job, reader, outputs);
        pipeline::run_to_completion(worker, &built, Duration::from_secs(3600), |_| {});
        let mut m = l2.lock().unwrap();
        for s in seen.borrow().iter() {
            let key = sessionflow::sessiondb::schema::RowKey::of(s).encode();
            let e = m.entry(key).or_insert((0, String::new()));
            if s.window >= e.0 {
                *e = (s.window, s.json.clone());
            }
        }
    });
    let m = last.lock().unwrap();
    m.iter().map(|(k, (_, j))| (k.clone(), j.clone())).collect()
}

struct Collect(Rc<RefCell<Vec<Snapshot>>>);

impl sessionflow::pipeline::Attach<Snapshot> for Collect {
    fn attach<'s>(
        self: Box<Self>,
        stream: timely::dataflow::StreamVec<'s, u64, Snapshot>,
    ) -> timely::dataflow::StreamVec<'s, u64, ()> {
        use timely::dataflow::operators::vec::Map;
        use timely::dataflow::operators::Inspect;
        let seen = self.0;
        stream.inspect(move |s| seen.borrow_mut().push(s.clone())).map(|_| ())
    }
}
