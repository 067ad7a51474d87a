//! `sessionflow replay`: the deterministic reference run over files, one per partition.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use clap::Args;
use sessionflow_operators::sink::files::{finish_all, LineFile};
use sessionflow_operators::source::files::FileReader;

use crate::cluster::ClusterArgs;
use crate::config::SessionArgs;
use crate::pipeline::{self, Outputs};
use crate::stats::Stats;

/// Flags of `sessionflow replay`.
#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Input JSON-lines file of one partition; repeat in partition order.
    #[arg(long = "input", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Snapshot output: one JSON object per line, sorted by (window, session_id, line).
    #[arg(long)]
    pub output: PathBuf,
    /// Dead-letter output: one JSON object per line, sorted by (partition, offset).
    #[arg(long)]
    pub dead_letter: PathBuf,
    /// Counters output: one JSON object.
    #[arg(long)]
    pub stats: PathBuf,
    /// Totals per experiment variation: for each window, one JSON object per variation the
    /// window changed, with its totals after it (sessions, sessions with revenue, events,
    /// revenue over every session of the run with the pair; each session's latest snapshot).
    #[arg(long, value_name = "FILE")]
    pub experiments: Option<PathBuf>,
    /// Session semantics.
    #[command(flatten)]
    pub session: SessionArgs,
    /// Workers and cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Checks an output path can be created (clear error, before any work).
pub fn check_writable(path: &Path) -> Result<(), String> {
    let mut probe = path.as_os_str().to_owned();
    probe.push(".tmp");
    std::fs::File::create(&probe).map_err(|e| format!("cannot create output {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes a JSON value to `path` atomically (temporary file, then rename).
pub fn write_json_file<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    json_file(path, value)?.finish()
}

/// A [`LineFile`] at `path` holding a JSON value, not yet finished (see [`finish_all`]).
pub fn json_file<T: serde::Serialize>(path: &Path, value: &T) -> Result<LineFile, String> {
    let mut file = LineFile::create(path)?;
    let text = serde_json::to_vec(value).map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    file.write_line(&text);
    Ok(file)
}

/// Runs a replay; returns the counters (process 0) once every output is in place.
pub fn run(args: ReplayArgs) -> Result<Option<Stats>, String> {
    let job = args.session.job()?;
    let config = args.cluster.timely_config()?;
    FileReader::check(&args.inputs)?;
    let writes = args.cluster.writes_outputs();
    if writes {
        for p in [&args.output, &args.dead_letter, &args.stats]
            .into_iter()
            .chain(&args.experiments)
        {
            check_writable(p)?;
        }
    }
    let args = std::sync::Arc::new(args);
    let guards = timely::execute(config, move |worker| -> Result<Option<Stats>, String> {
        let index = worker.index();
        let peers = worker.peers();
        // Input file `p` is partition `p`: sessions follow the partitioner that wrote them
        // when the workers divide the files (see `Routing`).
        let job = job.routed(args.inputs.len(), peers);
        let reader = FileReader::open(&args.inputs, index, peers);
        let (reader, open_error) = match reader {
            Ok(r) => (r, None),
            // Every worker must build the same dataflow: carry on with nothing to read.
            Err(e) => (FileReader::empty(), Some(e)),
        };
        let files = if index == 0 && writes {
            let create = |p: &Path| LineFile::create(p).map(|f| Rc::new(RefCell::new(f)));
            let experiments = args.experiments.as_deref().map(create).transpose();
            match (create(&args.output), create(&args.dead_letter), experiments) {
                (Ok(s), Ok(d), Ok(e)) => Some((s, d, e)),
                (s, d, e) => return Err(s.err().or(d.err()).or(e.err()).unwrap_or_default()),
            }
        } else {
            None
        };
        let outputs = Outputs {
            snapshot_file: files.as_ref().map(|f| Rc::clone(&f.0)),
            dead_letter_file: files.as_ref().map(|f| Rc::clone(&f.1)),
            experiments: args.experiments.is_some(),
            experiment_file: files.as_ref().and_then(|f| f.2.clone()),
            ..Outputs::default()
        };
        let built = pipeline::build(worker, &job, reader, outputs);
        pipeline::run_to_completion(worker, &built, Duration::from_secs(3600), |_| {});
        let error = open_error.or_else(|| built.source.borrow().error.clone());
        let gathered = pipeline::gather_stats(worker, built.stats(), error);
        let Some((stats, errors)) = gathered else {
            return Ok(None);
        };
        let Some((snaps, dead, experiments)) = files else {
            return Ok(Some(stats));
        };
        let checked = match errors.into_iter().next() {
            Some(e) => Err(e),
            None if !stats.balanced() => Err(format!("internal error: counters do not balance: {stats:?}")),
            None => json_file(&args.stats, &stats).map(RefCell::new),
        };
        let stats_file = match checked {
            Ok(f) => f,
            Err(e) => {
                snaps.borrow_mut().abandon();
                dead.borrow_mut().abandon();
                experiments.iter().for_each(|f| f.borrow_mut().abandon());
                return Err(e);
            }
        };
        // All of them in place, or none.
        finish_all([&*snaps, &*dead, &stats_file].into_iter().chain(experiments.as_deref()))?;
        Ok(Some(stats))
    })?;
    let mut result = None;
    for r in guards.join() {
        match r {
            Ok(Ok(Some(s))) => result = Some(s),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("worker failed: {e}")),
        }
    }
    Ok(result)
}
