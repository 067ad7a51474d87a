//! The HBase sink: SessionDB (one row per session) or event-per-cell, written through HBase's
//! Thrift1 gateway with the `hbase-thrift` crate.
//!
//! - **Idempotent, frontier-driven.** Every cell of window `m` is written with timestamp
//!   [`schema::cell_ts`]`(m)` (the last millisecond of `m`), so replaying a window rewrites the
//!   same versions and an older snapshot never hides a newer one. The operator holds a
//!   capability for every window not yet acknowledged and drops it only when HBase acknowledged
//!   every row of that window: its output frontier passes `m` only once all of `m` is durable.
//!   That frontier is what the job probes (and what the Kafka source commits offsets on).
//! - **The worker never blocks.** Each worker's sink feeds its own writer thread through a
//!   channel; acknowledgements come back through a channel and a `SyncActivator`. A failed call
//!   is retried with exponential backoff (reconnecting when the socket broke or sat idle; the
//!   server drops connections idle for 60 s), logging each retry. The backlog stays bounded
//!   because the source throttles on the probe.
//! - **History kept for restores, then dropped.** A snapshot of an open session carries its
//!   state (`s:state`); earlier versions stay readable (the table keeps
//!   [`HbaseSinkConfig::max_versions`] versions) so a restart can read the table as of the
//!   committed window. Once a closed row's closed-set entry has expired
//!   ([`HbaseSinkConfig::retain_windows`] windows after it closed) the sink deletes every older
//!   version of it, state included: a finished session is one version of its query columns and
//!   its snapshot JSON.
//! - **Never ahead of the commits.** With [`HbaseSink::commit_gate`] (a probe on the source's
//!   acknowledged commits, frontier `a`) window `m` is written only once
//!   `m <= a + max_versions - 2` and a closed row's history is dropped only once it closed
//!   before `a`: whenever the job crashes, the table still holds the versions a restart at its
//!   committed frontier (`>= a`) reads.

pub mod client;
pub mod schema;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hbase_thrift::hbase::BatchMutation;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::record::Sourced;
use crate::session::Snapshot;

use client::{Backoff, HbaseError, Timeouts};
use schema::Columns;
pub use writer::SinkStats;
use writer::{Ack, StopOnDrop, WriteJob, WriterSettings};

/// What the sink writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// SessionDB: one row per session (snapshots).
    #[default]
    Sessions,
    /// Event-per-cell: one row and one cell per event (the design SessionDB replaced).
    Events,
}

/// Settings of the HBase sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HbaseSinkConfig {
    /// HBase Thrift1 server (buffered binary transport), `host:port`.
    pub thrift: String,
    /// Table name (text); created when missing.
    pub table: String,
    /// Data column family (text): snapshots, states, the meta row, event-per-cell events.
    pub family: String,
    /// Query column family (text) of SessionDB tables: the small columns queries read
    /// (`start`, `visitor_id`, `revenue` ...), kept apart so a query never reads snapshots.
    pub query_family: String,
    /// What to write: `sessions` (SessionDB) or `events` (event-per-cell).
    pub mode: SinkMode,
    /// Most rows per `mutateRowsTs` call, in rows.
    pub batch_rows: usize,
    /// Most cell bytes per `mutateRowsTs` call (a single larger row still goes alone), in bytes.
    pub batch_bytes: usize,
    /// TCP connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Read and write timeout of every Thrift call, in milliseconds.
    pub io_timeout_ms: u64,
    /// First wait before retrying a failed call, in milliseconds (doubles each retry).
    pub retry_initial_ms: u64,
    /// Longest wait between retries, in milliseconds.
    pub retry_max_ms: u64,
    /// Reconnect before a call when the connection sat idle this long, in milliseconds
    /// (HBase's Thrift server drops connections idle for 60 s).
    pub idle_reconnect_ms: u64,
    /// How long to keep retrying to reach HBase at start-up before failing, in milliseconds.
    pub startup_timeout_ms: u64,
    /// Versions kept per cell when the sink creates the table, in versions; 0 derives
    /// `retain_windows + 2` (sessions) or 1 (events). An exact restore needs the version as of
    /// the committed window, so this bounds how far the job may write past its last commit.
    pub max_versions: u32,
    /// Compression of every column family when the sink creates the table: an HBase
    /// algorithm name (`GZ`, the default: pure Java, on every HBase; `NONE`, `SNAPPY`, `LZ4`,
    /// `ZSTD` ..., whichever codecs the region servers have; the server refuses others when
    /// the table is created). A table that already exists keeps its own. Unit: none (a name).
    pub compression: String,
    /// How long a closed session row keeps its history (older versions, state) after it
    /// closed, in windows; 0 derives `ceil(gap / W)`, when its closed-set entry expires.
    pub retain_windows: u64,
    /// Window length `W`, in milliseconds (the job's; cell timestamps derive from it).
    pub window_ms: u64,
    /// Session gap, in milliseconds (the job's; `retain_windows` derives from it).
    pub gap_ms: u64,
}

impl Default for HbaseSinkConfig {
    fn default() -> Self {
        HbaseSinkConfig {
            thrift: "127.0.0.1:9090".into(),
            table: "sessions".into(),
            family: schema::DATA_FAMILY.into(),
            query_family: schema::QUERY_FAMILY.into(),
            mode: SinkMode::Sessions,
            batch_rows: 500,
            batch_bytes: 4 << 20,
            connect_timeout_ms: 5_000,
            io_timeout_ms: 60_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            idle_reconnect_ms: 45_000,
            startup_timeout_ms: 300_000,
            max_versions: 0,
            compression: "GZ".into(),
            retain_windows: 0,
            window_ms: 60_000,
            gap_ms: 30 * 60_000,
        }
    }
}

impl HbaseSinkConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .thrift
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("HBase Thrift address must be HOST:PORT, got {:?}", self.thrift));
        }
        if self.table.is_empty()
            || self
                .table
                .contains(|c: char| !(c.is_ascii_alphanumeric() || "_-.:".contains(c)))
        {
            return Err(format!(
                "bad HBase table name {:?} (letters, digits, _ - . and a namespace colon)",
                self.table
            ));
        }
        for family in [&self.family, &self.query_family] {
            if family.is_empty() || family.contains(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))) {
                return Err(format!("bad HBase column family {family:?} (letters, digits, _ - .)"));
            }
        }
        if self.family == self.query_family {
            return Err(format!(
                "the HBase data and query column families must differ (both {:?})",
                self.family
            ));
        }
        if self.batch_rows == 0 || self.window_ms == 0 {
            return Err("HBase batch rows and window must be at least 1".into());
        }
        if self.compression.is_empty() || !self.compression.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "bad HBase compression {:?} (an algorithm name such as NONE or GZ)",
                self.compression
            ));
        }
        if self.max_versions > i32::MAX as u32 {
            return Err("HBase max versions is too large".into());
        }
        Ok(())
    }

    /// Windows a closed row keeps its history.
    pub fn retain(&self) -> u64 {
        if self.retain_windows > 0 {
            self.retain_windows
        } else {
            self.gap_ms.div_ceil(self.window_ms.max(1)).max(1)
        }
    }

    /// Versions kept per cell for a table the sink creates.
    pub fn versions(&self) -> i32 {
        match (self.max_versions, self.mode) {
            (0, SinkMode::Events) => 1,
            (0, SinkMode::Sessions) => (self.retain() + 2).min(i32::MAX as u64) as i32,
            (v, _) => v as i32,
        }
    }

    /// Connection timeouts.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(self.connect_timeout_ms),
            io: Duration::from_millis(self.io_timeout_ms),
        }
    }

    /// Retry policy.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_millis(self.retry_initial_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(1)),
        }
    }

    /// The column families of the table: data and query (sessions), data only (events).
    pub fn families(&self) -> Vec<&str> {
        match self.mode {
            SinkMode::Sessions => vec![&self.family, &self.query_family],
            SinkMode::Events => vec![&self.family],
        }
    }

    /// The column names of the table's families.
    pub fn columns(&self) -> Columns {
        Columns::new(&self.family, &self.query_family)
    }

    /// Connects (retrying for `startup_timeout_ms`, logging each retry) and makes sure the
    /// table exists with its families, creating it when missing. Call once before the job
    /// starts: a table that exists without one of them is an error naming both. Returns the
    /// versions the families keep (the fewest, of the existing table, or as created).
    pub fn prepare(&self) -> Result<u32, HbaseError> {
        let deadline = Duration::from_millis(self.startup_timeout_ms);
        let who = format!("hbase ({})", self.thrift);
        let mut c = client::connect_with_retry(&self.thrift, self.timeouts(), self.backoff(), deadline, &who)?;
        let found = client::retry(self.backoff(), deadline, &who, "create table", || {
            if c.idle() > Duration::from_millis(self.idle_reconnect_ms) {
                c = client::HbaseClient::connect(&self.thrift, self.timeouts())?;
            }
            c.ensure_table(&self.table, &self.families(), self.versions(), &self.compression)
        })?;
        // A table that existed keeps its compression: say so when it is not the one asked for.
        if let Some(note) = compression_note(&self.table, &self.compression, &found, &self.families()) {
            eprintln!("{who}: {note}");
        }
        let versions = client::family_versions(&self.table, &found, &self.families())?;
        Ok(versions.max(1) as u32)
    }
}

/// The notice for a table whose `families` are compressed otherwise than `wanted` (`found`:
/// the table's families, as HBase reports them), or `None` when they all match.
fn compression_note(table: &str, wanted: &str, found: &client::Families, families: &[&str]) -> Option<String> {
    let differ: Vec<String> = families
        .iter()
        .filter_map(|f| {
            found
                .get(*f)
                .filter(|x| !x.compression.eq_ignore_ascii_case(wanted))
                .map(|x| format!("{f} {}", x.compression))
        })
        .collect();
    (!differ.is_empty()).then(|| {
        format!(
            "table {table:?} already exists with compression {} (not {wanted}): the compression setting applies only to tables the sink creates",
            differ.join(", ")
        )
    })
}

/// A configured sink plus its live figures and, after a restore, the closed rows whose
/// history is still to be dropped.
pub struct HbaseSink {
    /// Settings.
    pub cfg: HbaseSinkConfig,
    /// Live figures (shareable across workers).
    pub stats: Arc<SinkStats>,
    /// `(closed window, row key)` of restored closed rows whose history is still to be
    /// dropped (see `restore` in the `sessionflow` crate).
    pub pending_compactions: Vec<(u64, Vec<u8>)>,
    /// A probe on the source's acknowledged commits (`SourceStreams::committed`). With it,
    /// SessionDB never gets ahead of what a restart can restore exactly: window `m` is written
    /// only once `m <= a + max_versions - 2`, and the history of rows closed in `c` is dropped
    /// only once `c < a`, where `a` is the probe's frontier (no limit once it is empty).
    pub commit_gate: Option<ProbeHandle<u64>>,
}

impl HbaseSink {
    /// A sink with fresh figures.
    pub fn new(cfg: HbaseSinkConfig) -> Self {
        HbaseSink {
            cfg,
            stats: Arc::new(SinkStats::default()),
            pending_compactions: Vec::new(),
            commit_gate: None,
        }
    }
}

/// Extension trait: `snapshots.sink_hbase(cfg)` (SessionDB).
pub trait SinkHbase<'scope> {
    /// Writes every snapshot as its session's row of SessionDB (see [`schema`]) and returns an
    /// empty stream whose frontier passes window `m` only once HBase acknowledged every row of
    /// `m` (probe it). Each worker writes the snapshots it holds, through its own writer thread.
    /// Call [`HbaseSinkConfig::prepare`] first (it creates the table).
    ///
    /// ```no_run
    /// use sessionflow_operators::session::{SessionConfig, Sessionize};
    /// use sessionflow_operators::sink::hbase::{HbaseSinkConfig, SinkHbase};
    /// use timely::dataflow::operators::{Probe, ToStream};
    ///
    /// let cfg = HbaseSinkConfig { thrift: "127.0.0.1:9090".into(), table: "sessions".into(), ..Default::default() };
    /// cfg.prepare().expect("HBase reachable");
    /// let session = SessionConfig { emit_state: true, ..SessionConfig::default() };
    /// timely::example(move |scope| {
    ///     let events = Vec::<sessionflow_operators::record::Sourced>::new().to_stream(scope);
    ///     let durable = events.sessionize(session).snapshots.sink_hbase(cfg);
    ///     durable.probe();
    /// });
    /// ```
    fn sink_hbase(self, cfg: HbaseSinkConfig) -> StreamVec<'scope, u64, ()>;

    /// Like [`SinkHbase::sink_hbase`], with shared figures and restored pending compactions.
    fn sink_hbase_with(self, sink: HbaseSink) -> StreamVec<'scope, u64, ()>;
}

impl<'scope> SinkHbase<'scope> for StreamVec<'scope, u64, Snapshot> {
    fn sink_hbase(self, cfg: HbaseSinkConfig) -> StreamVec<'scope, u64, ()> {
        self.sink_hbase_with(HbaseSink::new(cfg))
    }

    fn sink_hbase_with(self, sink: HbaseSink) -> StreamVec<'scope, u64, ()> {
        writer_operator(self, sink, "HbaseSessions", |mut s: Snapshot, cols: &Columns| {
            let closed = s.closed;
            let row = cols.snapshot_row(&mut s);
            (row, closed)
        })
    }
}

/// Extension trait: `events.sink_hbase_events(cfg)` (event-per-cell).
pub trait SinkHbaseEvents<'scope> {
    /// Writes every valid event as one row with one cell (`s:event`, the event's line), row key
    /// [`schema::event_row_key`], cell timestamp the end of its assigned window. Returns the
    /// acknowledged frontier, as [`SinkHbase::sink_hbase`] does.
    fn sink_hbase_events(self, sink: HbaseSink) -> StreamVec<'scope, u64, ()>;
}

impl<'scope> SinkHbaseEvents<'scope> for StreamVec<'scope, u64, Sourced> {
    fn sink_hbase_events(self, sink: HbaseSink) -> StreamVec<'scope, u64, ()> {
        writer_operator(self, sink, "HbaseEvents", |rec: Sourced, cols: &Columns| {
            (cols.event_row(&rec), false)
        })
    }
}

/// How soon a sink held back by the commit gate looks at it again.
const GATE_RECHECK: Duration = Duration::from_millis(5);

/// Work of one window: its capability, rows not yet sent, jobs in flight, and the rows closed
/// `retain` windows earlier whose history is dropped once the frontier passes it.
struct Window {
    /// Held until the window is complete and acknowledged (holding it is the point).
    _cap: Capability<u64>,
    rows: Vec<BatchMutation>,
    bytes: usize,
    in_flight: usize,
    compact: Vec<Vec<u8>>,
}

fn writer_operator<'scope, D, F>(
    stream: StreamVec<'scope, u64, D>,
    sink: HbaseSink,
    name: &str,
    mut encode: F,
) -> StreamVec<'scope, u64, ()>
where
    D: 'static,
    F: FnMut(D, &Columns) -> (BatchMutation, bool) + 'static,
{
    let scope = stream.scope();
    let worker = scope.worker().index();
    let HbaseSink {
        cfg,
        stats,
        pending_compactions,
        commit_gate,
    } = sink;
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, name, move |initial, info| {
        let cols = cfg.columns();
        let retain = cfg.retain();
        let sessions = cfg.mode == SinkMode::Sessions;
        let who = format!("hbase sink {} (worker {worker})", cfg.table);
        let (job_tx, job_rx) = mpsc::channel::<WriteJob>();
        let (ack_tx, ack_rx) = mpsc::channel::<Ack>();
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(Arc::clone(&stop));
        let settings = WriterSettings {
            addr: cfg.thrift.clone(),
            table: cfg.table.clone(),
            timeouts: cfg.timeouts(),
            backoff: cfg.backoff(),
            idle_reconnect: Duration::from_millis(cfg.idle_reconnect_ms),
            who: who.clone(),
        };
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        let wake = scope.activator_for(info.address.clone());
        // Windows a SessionDB write may run ahead of the acknowledged commits.
        let slack = (cfg.versions().max(2) - 2) as u64;
        let gate = if sessions { commit_gate } else { None };
        let spawned = writer::spawn(
            settings,
            job_rx,
            ack_tx,
            activator,
            Arc::clone(&stats),
            Arc::clone(&stop),
        );
        if let Err(e) = &spawned {
            let msg = format!("{who}: cannot start the writer thread: {e}");
            eprintln!("{msg}");
            if let Ok(mut f) = stats.fatal.lock() {
                f.get_or_insert(msg);
            }
        }
        let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
        // Restored closed rows: their history goes once the frontier passes `closed + retain`.
        for (closed, row) in pending_compactions {
            let at = closed + retain;
            let w = windows.entry(at).or_insert_with(|| Window {
                _cap: initial.delayed(&at),
                rows: Vec::new(),
                bytes: 0,
                in_flight: 0,
                compact: Vec::new(),
            });
            w.compact.push(row);
        }
        drop(initial);
        // Job id -> window it belongs to.
        let mut jobs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut next_job = 0u64;
        let mut failed = false;
        move |(input, frontier), _output| {
            let _keep = &_stop_guard;
            // 1. Acknowledgements.
            while let Ok(ack) = ack_rx.try_recv() {
                let id = match ack {
                    Ack::Done(id) => id,
                    Ack::Failed(id) => {
                        // Keep the window's capability forever: nothing past it is durable.
                        failed = true;
                        id
                    }
                };
                if let Some(w) = jobs.remove(&id) {
                    if let Some(win) = windows.get_mut(&w) {
                        if !failed {
                            win.in_flight -= 1;
                        }
                    }
                }
            }
            // 2. New data: encode, buffer per window, schedule compactions of closed rows.
            input.for_each(|time, data| {
                let Some(&t) = time.least() else { return };
                for d in data.drain(..) {
                    let (row, closed) = encode(d, &cols);
                    if sessions && closed {
                        if let Some(key) = row.row.clone() {
                            let at = t + retain;
                            let cap = time.delayed(&at, 0);
                            let w = windows.entry(at).or_insert_with(|| Window {
                                _cap: cap,
                                rows: Vec::new(),
                                bytes: 0,
                                in_flight: 0,
                                compact: Vec::new(),
                            });
                            w.compact.push(key);
                        }
                    }
                    let w = windows.entry(t).or_insert_with(|| Window {
                        _cap: time.delayed(&t, 0),
                        rows: Vec::new(),
                        bytes: 0,
                        in_flight: 0,
                        compact: Vec::new(),
                    });
                    w.bytes += writer::bytes_of(std::slice::from_ref(&row)) as usize;
                    w.rows.push(row);
                }
            });
            // 3. Send full batches at once, and everything of the windows the frontier passed.
            let mut send =
                |window: u64, ts: i64, rows: Vec<BatchMutation>, what: String, jobs: &mut BTreeMap<u64, u64>| {
                    let id = next_job;
                    next_job += 1;
                    stats.in_flight.fetch_add(1, Ordering::Relaxed);
                    stats
                        .in_flight_bytes
                        .fetch_add(writer::bytes_of(&rows), Ordering::Relaxed);
                    jobs.insert(id, window);
                    job_tx.send(WriteJob { id, ts, rows, what }).is_ok()
                };
            // Acknowledged commit frontier (`None`: nothing gates).
            let acked = gate.as_ref().and_then(|p| p.with_frontier(|f| f.first().copied()));
            let mut gated = false;
            for (&m, w) in windows.iter_mut() {
                let passed = !frontier.less_equal(&m);
                if acked.is_some_and(|a| m > a.saturating_add(slack)) {
                    // A restart resumes at `a` or later and must find the versions as of then.
                    gated |= !w.rows.is_empty() || !w.compact.is_empty();
                    continue;
                }
                while !w.rows.is_empty() && (passed || w.rows.len() >= cfg.batch_rows || w.bytes >= cfg.batch_bytes) {
                    let mut take = 0usize;
                    let mut bytes = 0usize;
                    while take < w.rows.len() && take < cfg.batch_rows && (take == 0 || bytes < cfg.batch_bytes) {
                        bytes += writer::bytes_of(std::slice::from_ref(&w.rows[take])) as usize;
                        take += 1;
                    }
                    if !passed && take == w.rows.len() && take < cfg.batch_rows && bytes < cfg.batch_bytes {
                        break;
                    }
                    let mut rows: Vec<BatchMutation> = w.rows.drain(..take).collect();
                    w.bytes -= bytes.min(w.bytes);
                    if sessions {
                        rows.push(cols.written_marker(m));
                    }
                    let what = format!("window {m} ({take} rows)");
                    if send(m, schema::cell_ts(m, cfg.window_ms), rows, what, &mut jobs) {
                        w.in_flight += 1;
                    }
                }
                if passed && !w.compact.is_empty() && acked.is_some_and(|a| m - retain >= a) {
                    // A restart at `a <= m - retain` reads these rows as they were before.
                    gated = true;
                } else if passed && !w.compact.is_empty() {
                    // Rows that closed in window `m - retain`: drop every version before their
                    // closed snapshot (one delete per row, at the closed snapshot's ts - 1).
                    let closed = m - retain;
                    let ts = schema::cell_ts(closed, cfg.window_ms) - 1;
                    let keys = std::mem::take(&mut w.compact);
                    for chunk in keys.chunks(cfg.batch_rows) {
                        let mut rows: Vec<BatchMutation> =
                            chunk.iter().map(|k| cols.delete_history(k.clone())).collect();
                        rows.push(cols.compacted_marker(closed));
                        let what = format!("history of {} rows closed in window {closed}", chunk.len());
                        if send(m, ts, rows, what, &mut jobs) {
                            w.in_flight += 1;
                        }
                    }
                }
            }
            if gated {
                // The commit frontier moves without waking this operator: look again soon.
                wake.activate_after(GATE_RECHECK);
            }
            // 4. Release the windows that are complete and acknowledged.
            if !failed {
                windows.retain(|&m, w| {
                    frontier.less_equal(&m) || !w.rows.is_empty() || !w.compact.is_empty() || w.in_flight > 0
                });
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names_are_checked_before_reaching_the_server() {
        let mut cfg = HbaseSinkConfig::default();
        assert_eq!(cfg.compression, "GZ");
        for ok in ["NONE", "GZ", "snappy", "LZ4", "ZSTD"] {
            cfg.compression = ok.into();
            assert_eq!(cfg.validate(), Ok(()), "{ok}");
        }
        for bad in ["", "gz; drop", "lz4 ", "zstd:3"] {
            cfg.compression = bad.into();
            assert!(cfg.validate().unwrap_err().contains("bad HBase compression"), "{bad:?}");
        }
    }

    #[test]
    fn an_existing_table_compressed_otherwise_gets_a_notice() {
        let family = |c: &str| client::Family {
            max_versions: 3,
            compression: c.to_string(),
        };
        let found: client::Families = [("s".to_string(), family("GZ")), ("q".to_string(), family("NONE"))].into();
        assert_eq!(compression_note("t", "gz", &found, &["s"]), None);
        let note = compression_note("t", "GZ", &found, &["s", "q"]).unwrap();
        assert!(
            note.contains("\"t\"") && note.contains("q NONE") && !note.contains("s GZ"),
            "{note}"
        );
        let note = compression_note("t", "LZ4", &found, &["s", "q"]).unwrap();
        assert!(note.contains("s GZ, q NONE") && note.contains("not LZ4"), "{note}");
        // Families the table lacks are the missing-family error's business, not this one's.
        assert_eq!(compression_note("t", "GZ", &found, &["s", "x"]), None);
    }

    #[test]
    fn a_config_file_may_set_the_compression() {
        let cfg: HbaseSinkConfig = serde_json::from_str(r#"{"table": "t", "compression": "LZ4"}"#).unwrap();
        assert_eq!((cfg.table.as_str(), cfg.compression.as_str()), ("t", "LZ4"));
        assert!(serde_json::from_str::<HbaseSinkConfig>(r#"{"compresion": "GZ"}"#).is_err());
    }
}
