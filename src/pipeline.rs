//! The whole job, top to bottom.
//!
//! ```text
//!  replay files / Kafka partitions / in-memory demo events
//!        |  PartitionReader (partition p read by worker p % workers)
//!        v
//!  partitioned_source: parse + validate, per-partition watermark -> window assignment,
//!        |             capability = smallest window a live partition holds,
//!        |             throttled against the sink's frontier (probe)
//!        |----------------------------------------------> invalid dead letters --+
//!        v                                                                       |
//!  [ enrich ... ]  (compose more operators on the event stream here)             |
//!        |                                                                       |
//!  sessionize: exchange to the session key's owner (`Routing`); per window, when |
//!        |     the frontier passes it: apply events in order, dedup, close,      |
//!        |     emit snapshots                                                    |
//!        |----------------------------------------------> session_closed --------+
//!        v                                                                       v
//!  snapshots (time = window) --> snapshot file sink (sorted)          dead-letter file sink
//!        |                  |--> [extra sinks: Kafka, HBase ...]
//!        |                  \--> [experiment totals: sessions as a differential collection
//!        |                       (-previous +new; the open sessions' values held by key),
//!        |                       explode into per-variation totals, count_total --> file,
//!        |                       metrics]
//!        v
//!  probe: the frontier of everything written; the source throttles on it
//!  durable probe (with `commit_on_durable`): the frontier the extra sinks acknowledged;
//!        the source commits input offsets (consistent cuts) as it advances
//!  commit gate (SessionDB): the source's acknowledged commits; the HBase sink writes at most
//!        max_versions - 2 windows past them, so a restart can always restore exactly
//!  graceful stop (`Job::control`): the sources read nothing more but keep their windows;
//!        `Job::drained` once the acknowledged commits reached the sources' frontier
//! ```
//!
//! After the dataflow completes, [`gather_stats`] sums every worker's counters at worker 0.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use sessionflow_operators::record::{DeadLetter, Sourced};
use sessionflow_operators::session::operator::SessionGauges;
use sessionflow_operators::session::{ExperimentTotals, SessionStore, Sessionize, Snapshot};
use sessionflow_operators::sink::experiments::{SharedTotals, SinkExperiments};
use sessionflow_operators::sink::files::{SharedLineFile, SinkDeadLetterFile, SinkSnapshotFile};
use sessionflow_operators::source::{partitioned_source, Cut, PartitionReader, SourceControl, SourceGauges};
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Concat, Exchange, Inspect, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

use crate::config::JobConfig;
use crate::stats::Stats;

/// Where a job's output goes (each `None` is off; files are `Some` on worker 0 only).
#[derive(Default)]
pub struct Outputs<'a> {
    /// Snapshot JSON-lines file, sorted by `(window, session_id, line)`.
    pub snapshot_file: Option<SharedLineFile>,
    /// Dead-letter JSON-lines file, sorted by `(partition, offset)`.
    pub dead_letter_file: Option<SharedLineFile>,
    /// Compute the totals per experiment variation (`experiment_totals`); set it on every
    /// worker alike (they all build the same dataflow).
    pub experiments: bool,
    /// The experiment totals' JSON-lines file, sorted by `(window, project_id, experiment_id,
    /// variation_id)` (with `experiments`; `Some` on worker 0 only).
    pub experiment_file: Option<SharedLineFile>,
    /// The experiment totals as of the latest window, for the metrics (with `experiments`;
    /// `Some` on worker 0 only).
    pub latest_experiments: Option<SharedTotals>,
    /// Further sinks on the snapshot stream.
    pub snapshot_sinks: Vec<Box<dyn Attach<Snapshot> + 'a>>,
    /// Further sinks on the dead-letter stream.
    pub dead_letter_sinks: Vec<Box<dyn Attach<DeadLetter> + 'a>>,
    /// Commit input offsets as the further sinks acknowledge writes (their frontiers form the
    /// durable probe). Set it on every worker alike, and only when those sinks are all the
    /// output: files are durable only once a bounded run completed.
    pub commit_on_durable: bool,
    /// Build no file sinks (live runs: the dead-letter file sink keeps everything until the
    /// input ends).
    pub no_file_sinks: bool,
    /// \[hbase\] Further sinks on the stream of valid events (the event-per-cell HBase mode).
    pub event_sinks: Vec<Box<dyn Attach<Sourced> + 'a>>,
    /// \[hbase\] Probes the source's acknowledged commits (`SourceStreams::committed`), for a
    /// sink that must not run ahead of them (SessionDB).
    pub commit_gate: Option<ProbeHandle<u64>>,
    /// \[hbase\] A session store restored from SessionDB (`sessiondb::restore`) at the resume
    /// window: sessionize starts from it instead of an empty store.
    pub restored_sessions: Option<SessionStore>,
}

/// A sink (or any consumer) attached to a stream of `D`.
pub trait Attach<D> {
    /// Consumes `stream`; returns a stream whose frontier says what is durably written (probed).
    fn attach<'s>(self: Box<Self>, stream: StreamVec<'s, u64, D>) -> StreamVec<'s, u64, ()>;
}

/// Handles on a built job.
pub struct Job {
    /// Frontier of everything written.
    pub probe: ProbeHandle<u64>,
    /// This worker's source figures.
    pub source: Rc<RefCell<SourceGauges>>,
    /// This worker's sessionize figures.
    pub session: Rc<RefCell<SessionGauges>>,
    /// Where this worker's partitions resumed (empty on a fresh start), every cut with the
    /// job's resume frontier `D` as `frontier`: every record assigned a window `< D` is already
    /// reflected in durable output and is not read again, so the session state must be
    /// restored as of window `D - 1` (the SessionDB hook).
    pub resume: Vec<Cut>,
    /// Stops this worker's source from reading (a graceful stop of a live job).
    pub control: SourceControl,
    /// Frontier of the source streams: the smallest window any worker's source still holds
    /// (probed on the dead letters, which have the events' frontier).
    pub input: ProbeHandle<u64>,
    /// Frontier of the sources' acknowledged commits ([`SourceStreams::committed`]).
    ///
    /// [`SourceStreams::committed`]: sessionflow_operators::source::SourceStreams::committed
    pub committed: ProbeHandle<u64>,
}

impl Job {
    /// This worker's counters.
    pub fn stats(&self) -> Stats {
        Stats::from_parts(&self.source.borrow(), &self.session.borrow().counters)
    }

    /// The acknowledged commit frontier of every worker's source: each window below it is
    /// durable and its offsets committed (`None`: no source commits any more).
    pub fn commit_frontier(&self) -> Option<u64> {
        self.committed.with_frontier(|f| f.first().copied())
    }

    /// Once every worker's source stopped reading ([`Job::control`]): whether everything read
    /// that can become durable is durable and its offsets committed (acknowledged), i.e. the
    /// commits reached the sources' frontier, or nothing commits at all. The windows from that
    /// frontier on cannot complete without more input: a restart reads them again.
    pub fn drained(&self) -> bool {
        let input = self.input.with_frontier(|f| f.first().copied());
        match (self.commit_frontier(), input) {
            (None, _) => true,
            (Some(c), Some(i)) => c >= i,
            (Some(_), None) => false,
        }
    }
}

/// Builds the job's dataflow on `worker`.
pub fn build<R: PartitionReader>(worker: &mut Worker, job: &JobConfig, reader: R, outputs: Outputs<'_>) -> Job {
    let probe = ProbeHandle::new();
    let durable = ProbeHandle::new();
    let (input_probe, committed) = (ProbeHandle::new(), ProbeHandle::new());
    let resume = reader.resume_points();
    let (source, session, control) = worker.dataflow::<u64, _, _>(|scope| {
        // 1. Partitioned input: parse, validate, assign windows by partition watermark.
        let commits = outputs.commit_on_durable.then(|| durable.clone());
        let input = partitioned_source(
            scope,
            "Source",
            job.source.clone(),
            reader,
            Some(probe.clone()),
            commits,
        );
        if let Some(gate) = &outputs.commit_gate {
            input.committed.clone().probe_with(gate);
        }
        input.committed.clone().probe_with(&committed);
        // The sources' frontier, read on the dead-letter stream: it has the events' frontier
        // (both leave the source's one output), and a second reader of a stream gets a clone
        // of every batch, which for the events would copy each one.
        input.dead_letters.clone().probe_with(&input_probe);

        // 2. Sessionize (exchanges each event to its session key's owner internally).
        // [hbase] Event sinks see every valid event; a restored store resumes sessionize.
        for sink in outputs.event_sinks {
            sink.attach(input.events.clone())
                .probe_with(&probe)
                .probe_with(&durable);
        }
        let mut sessions = match outputs.restored_sessions {
            Some(store) => input.events.sessionize_from(store),
            None => input.events.sessionize(job.session.clone()),
        };

        // 3. Sinks. Everything written is probed; the source throttles on it.
        let dead = input.dead_letters.concat(sessions.dead_letters);
        let no_dead_letter_sinks = outputs.dead_letter_sinks.is_empty();
        let no_snapshot_sinks = outputs.snapshot_sinks.is_empty();
        for sink in outputs.dead_letter_sinks {
            sink.attach(dead.clone()).probe_with(&probe).probe_with(&durable);
        }
        // Live totals per experiment variation: the sessions as a differential collection
        // (the snapshots pass through it, not copied).
        if outputs.experiments {
            let (snapshots, totals) = sessions.snapshots.experiment_totals();
            sessions.snapshots = snapshots;
            totals
                .sink_experiments(outputs.experiment_file, outputs.latest_experiments)
                .probe_with(&probe);
        }
        for sink in outputs.snapshot_sinks {
            sink.attach(sessions.snapshots.clone())
                .probe_with(&probe)
                .probe_with(&durable);
        }
        if !outputs.no_file_sinks {
            dead.sink_dead_letter_file(outputs.dead_letter_file).probe_with(&probe);
            sessions
                .snapshots
                .sink_snapshot_file(outputs.snapshot_file)
                .probe_with(&probe);
        } else {
            // The streams themselves say when the job is done, even with no sink at all. Only
            // a stream without a sink needs it: a sink's probed output already follows it, and
            // a second reader would get a clone of every batch.
            if no_dead_letter_sinks {
                dead.probe_with(&probe);
            }
            if no_snapshot_sinks {
                sessions.snapshots.probe_with(&probe);
            }
        }
        (input.gauges, sessions.gauges, input.control)
    });
    Job {
        probe,
        source,
        session,
        resume,
        control,
        input: input_probe,
        committed,
    }
}

/// Steps the worker until the job's probe is done, calling `tick` about every `every`.
pub fn run_to_completion(worker: &mut Worker, job: &Job, every: Duration, mut tick: impl FnMut(&Job)) {
    let mut last = std::time::Instant::now();
    while !job.probe.done() {
        worker.step_or_park(Some(Duration::from_millis(5)));
        if last.elapsed() >= every {
            tick(job);
            last = std::time::Instant::now();
        }
    }
    tick(job);
}

/// Sums every worker's counters (and read errors) at worker 0, which gets `Some`.
pub fn gather_stats(worker: &mut Worker, local: Stats, error: Option<String>) -> Option<(Stats, Vec<String>)> {
    let total = Rc::new(RefCell::new((Stats::default(), Vec::new())));
    let sink = Rc::clone(&total);
    let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
        let (input, stream) = scope.new_input::<(Stats, Option<String>)>();
        let probe = stream
            .exchange(|_| 0)
            .inspect(move |(s, e): &(Stats, Option<String>)| {
                let mut t = sink.borrow_mut();
                t.0.add(s);
                t.1.extend(e.clone());
            })
            .probe()
            .0;
        (input, probe)
    });
    input.send((local, error));
    input.close();
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(5)));
    }
    if worker.index() == 0 {
        let t = total.borrow();
        Some((t.0, t.1.clone()))
    } else {
        None
    }
}
