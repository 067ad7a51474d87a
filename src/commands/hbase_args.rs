//! \[hbase\] The HBase flags of `sessionflow run` (`#[command(flatten)]` them) and the per-worker
//! wiring: restore from SessionDB on a resume, then attach the sink.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use sessionflow_operators::source::Cut;
use timely::dataflow::ProbeHandle;

use crate::config::JobConfig;
use crate::pipeline::Outputs;
use crate::sessiondb::{self, schema, HbaseEvents, HbaseSessions, HbaseSink, HbaseSinkConfig, SinkMode, SinkStats};

/// What the HBase sink writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum HbaseMode {
    /// SessionDB: one row per session (the default).
    #[default]
    Sessions,
    /// Event-per-cell: one row and cell per event (the design SessionDB replaced).
    Events,
}

/// `--hbase HOST:PORT --table NAME ...`.
#[derive(Args, Clone, Debug, Default)]
pub struct HbaseArgs {
    /// HBase Thrift1 server (HOST:PORT): turns the HBase sink on.
    #[arg(long, value_name = "HOST:PORT")]
    pub hbase: Option<String>,
    /// HBase table (created when missing).
    #[arg(long, default_value = "sessions")]
    pub table: String,
    /// What the HBase sink writes.
    #[arg(long = "hbase-mode", value_enum, default_value = "sessions")]
    pub mode: HbaseMode,
    /// Data column family: snapshots, states (and events, in events mode).
    #[arg(long = "hbase-family", default_value = schema::DATA_FAMILY)]
    pub family: String,
    /// Query column family of SessionDB: the small columns queries read.
    #[arg(long = "hbase-query-family", default_value = schema::QUERY_FAMILY)]
    pub query_family: String,
    /// Most rows per mutateRowsTs call (rows).
    #[arg(long = "hbase-batch", default_value_t = 500)]
    pub batch_rows: usize,
    /// Versions kept per cell when creating the table (0 = retain windows + 2).
    #[arg(long = "hbase-max-versions", default_value_t = 0)]
    pub max_versions: u32,
    /// Compression of the column families when creating the table: an HBase algorithm name
    /// (GZ, the default, works on any HBase; NONE, SNAPPY, LZ4, ZSTD ... as the region
    /// servers support).
    #[arg(long = "hbase-compression", value_name = "ALGORITHM")]
    pub compression: Option<String>,
    /// Windows a closed row keeps its history before the sink drops it (0 = ceil(gap / W)).
    #[arg(long = "hbase-retain-windows", default_value_t = 0)]
    pub retain_windows: u64,
    /// JSON file with every sink setting (`HbaseSinkConfig`); the flags above override it.
    #[arg(long = "hbase-config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl HbaseArgs {
    /// The sink settings, or `None` without `--hbase`. In sessions mode it also turns the
    /// job's `emit_state` on (SessionDB stores the state that restores need).
    pub fn sink_config(&self, job: &mut JobConfig) -> Result<Option<HbaseSinkConfig>, String> {
        let Some(addr) = &self.hbase else { return Ok(None) };
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                serde_json::from_str::<HbaseSinkConfig>(&text)
                    .map_err(|e| format!("bad HBase sink config {}: {e}", p.display()))?
            }
            None => HbaseSinkConfig::default(),
        };
        cfg.thrift = addr.clone();
        cfg.table = self.table.clone();
        cfg.family = self.family.clone();
        cfg.query_family = self.query_family.clone();
        cfg.batch_rows = self.batch_rows;
        if self.max_versions > 0 {
            cfg.max_versions = self.max_versions;
        }
        if let Some(c) = &self.compression {
            cfg.compression = c.clone();
        }
        if self.retain_windows > 0 {
            cfg.retain_windows = self.retain_windows;
        }
        cfg.mode = match self.mode {
            HbaseMode::Sessions => SinkMode::Sessions,
            HbaseMode::Events => SinkMode::Events,
        };
        cfg.window_ms = job.session.window_ms;
        cfg.gap_ms = job.session.gap_ms;
        cfg.validate()?;
        if cfg.mode == SinkMode::Sessions {
            job.session.emit_state = true;
        }
        Ok(Some(cfg))
    }
}

/// The resume window `F` of a set of cuts: windows below it are durable for every partition.
/// Errors when partitions resumed at different frontiers (SessionDB holds one state per
/// window: an exact restore needs every partition cut at the same frontier).
pub fn resume_window(cuts: &[Cut]) -> Result<Option<u64>, String> {
    let lo = cuts.iter().map(|c| c.frontier).min();
    let hi = cuts.iter().map(|c| c.frontier).max();
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo != hi => Err(format!(
            "cannot restore SessionDB exactly: partitions were committed at different frontiers ({lo}..={hi}); SessionDB restores one window for all"
        )),
        (lo, _) => Ok(lo),
    }
}

/// \[hbase\] Per-worker wiring for `run`: on a resume (`cuts` non-empty, sessions mode)
/// restores this worker's sessions from SessionDB as of the resume window and hands the store
/// to the pipeline; then attaches the sink to `outputs`. Call [`HbaseSinkConfig::prepare`]
/// once before the workers start. `stats` may be shared by all workers of the process.
pub fn wire(
    cfg: &HbaseSinkConfig,
    stats: &Arc<SinkStats>,
    job: &JobConfig,
    worker_index: usize,
    peers: usize,
    cuts: &[Cut],
    outputs: &mut Outputs<'_>,
) -> Result<(), String> {
    let mut sink = HbaseSink {
        cfg: cfg.clone(),
        stats: Arc::clone(stats),
        pending_compactions: Vec::new(),
        commit_gate: None,
    };
    match cfg.mode {
        SinkMode::Events => outputs.event_sinks.push(Box::new(HbaseEvents(sink))),
        SinkMode::Sessions => {
            if let Some(f) = resume_window(cuts)? {
                let r = sessiondb::restore(worker_index, peers, f, cfg, &job.session).map_err(|e| e.to_string())?;
                eprintln!(
                    "hbase restore (worker {worker_index}): window {f}: {} open sessions, {} closed-set entries ({} rows scanned)",
                    r.open, r.closed, r.rows_scanned
                );
                sink.pending_compactions = r.pending_compactions;
                outputs.restored_sessions = Some(r.store);
            }
            // SessionDB stays restorable: writes wait for the commits (see `commit_gate`).
            let gate = ProbeHandle::new();
            sink.commit_gate = Some(gate.clone());
            outputs.commit_gate = Some(gate);
            outputs.snapshot_sinks.push(Box::new(HbaseSessions(sink)));
        }
    }
    Ok(())
}
