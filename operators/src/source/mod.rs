//! Partitioned input with per-partition watermarks and window assignment.
//!
//! [`Watermarks`] is the pure part: for each partition `p` it keeps `WM_p = (max timestamp
//! read) - L`, assigns each event to `max(w(timestamp), w(WM_p))` and tells the smallest window a
//! worker must still hold a capability for. [`partitioned_source`] is the timely operator that
//! every input (replay files, Kafka) plugs into through a [`PartitionReader`]: it parses,
//! validates, assigns windows, emits dead letters for invalid input, downgrades its capability
//! as the watermarks move, drops it when every partition ended, and throttles itself against a
//! probe on the sink so memory stays bounded when the output lags.
//!
//! # Offsets, consistent cuts and exact resumption
//!
//! Events are assigned windows that are not monotonic in offset order (a late event gets the
//! partition's watermark window, an on-time one its own, possibly older, window). When the
//! durable frontier `F` (a probe on the sinks that acknowledge writes) says every window `< F`
//! is durable, the source computes for each partition a [`Cut`]: the smallest offset whose
//! record was assigned a window `>= F` (else the next offset to read), the partition's largest
//! timestamp before that offset, and `F`. A reader that can commit offsets
//! ([`PartitionReader::commit`], e.g. Kafka) stores the cut.
//!
//! A restarted source gets the cuts back ([`PartitionReader::resume_points`]) with one resume
//! frontier `D` for all of them: the largest `F` committed for any partition. The durable
//! frontier is global (every partition's records flow into the same sinks), so once it passed
//! `D` every record of every partition assigned a window `< D` was reflected in durable output;
//! and a partition's records from its cut on include every record with a window `>= F_p`,
//! hence `>= D`. The source restores each partition's watermark from its cut (every record from
//! there on is assigned exactly the window it had before) and drops the records whose window is
//! `< D` (counted as `skipped_on_resume`, not in `events_read`). The job then recomputes windows
//! `>= D` exactly, given the session state as of window `D - 1` (restored from SessionDB).

mod batch_queue;
pub mod files;
pub mod kafka;
pub mod memory;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};
use timely::scheduling::SyncActivator;

use crate::caps::{self, Caps};
use crate::event::parse_event_owned;
use crate::record::{DeadLetter, Sourced};

/// How often a stopped source looks at the sinks' frontier to commit (see [`SourceControl`]).
const STOPPED_RECHECK: Duration = Duration::from_millis(10);

/// Watermark state of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionClock {
    /// Largest valid timestamp read so far (ms), if any.
    pub max_ts: Option<i64>,
    /// `w(WM_p)`: windows below it are complete for this partition.
    pub low: u64,
    /// The partition ended (bounded input) and holds nothing back any more.
    pub ended: bool,
    /// The partition is idle (no data for the idle timeout) and holds nothing back for now.
    pub idle: bool,
}

/// Per-partition watermarks of one worker's partitions.
#[derive(Clone, Debug)]
pub struct Watermarks {
    window_ms: u64,
    lateness_ms: u64,
    clocks: Vec<(u32, PartitionClock)>,
    /// The sinks' frontier and how many windows ahead of it the source may read.
    alignment: Option<(u64, u64)>,
}

impl Watermarks {
    /// Watermarks for the given partitions, all at window 0.
    pub fn new(window_ms: u64, lateness_ms: u64, partitions: &[u32]) -> Self {
        let clocks = partitions.iter().map(|&p| (p, PartitionClock::default())).collect();
        Watermarks {
            window_ms: window_ms.max(1),
            lateness_ms,
            clocks,
            alignment: None,
        }
    }

    fn clock_mut(&mut self, p: u32) -> &mut PartitionClock {
        let i = match self.clocks.iter().position(|(q, _)| *q == p) {
            Some(i) => i,
            None => {
                self.clocks.push((p, PartitionClock::default()));
                self.clocks.len() - 1
            }
        };
        &mut self.clocks[i].1
    }

    fn window_of(&self, t: i64) -> u64 {
        if t <= 0 {
            0
        } else {
            t as u64 / self.window_ms
        }
    }

    /// Reads a valid event of partition `p` at time `ts` and returns its assigned window
    /// `max(w(ts), w(WM_p))`, `WM_p` counting this event. `floor` is the worker's current
    /// capability: an event of a partition that was idle is assigned no earlier than it.
    pub fn observe(&mut self, p: u32, ts: i64, floor: u64) -> u64 {
        let lateness = self.lateness_ms as i64;
        let window_ms = self.window_ms;
        let c = self.clock_mut(p);
        let max = c.max_ts.map_or(ts, |m| m.max(ts));
        c.max_ts = Some(max);
        let wm = max.saturating_sub(lateness);
        let low = if wm <= 0 { 0 } else { wm as u64 / window_ms };
        c.low = c.low.max(low);
        let woke = std::mem::replace(&mut c.idle, false);
        let a = self.window_of(ts).max(low);
        if woke {
            a.max(floor)
        } else {
            a
        }
    }

    /// Restores partition `p` after a restart: `max_ts` is its largest valid timestamp before
    /// the resume offset (from the last commit's [`Cut`]), so the records read from there on
    /// are assigned exactly the windows they had before.
    pub fn restore(&mut self, p: u32, max_ts: Option<i64>) {
        let lateness = self.lateness_ms as i64;
        let window_ms = self.window_ms;
        let c = self.clock_mut(p);
        c.max_ts = max_ts;
        c.low = match max_ts.map(|m| m.saturating_sub(lateness)) {
            Some(wm) if wm > 0 => wm as u64 / window_ms,
            _ => 0,
        };
    }

    /// Partition `p`'s largest valid timestamp so far (ms), if any.
    pub fn max_ts(&self, p: u32) -> Option<i64> {
        self.clocks.iter().find(|(q, _)| *q == p).and_then(|(_, c)| c.max_ts)
    }

    /// Partition `p`'s `w(WM_p)` (0 for a partition not seen yet).
    pub fn low_of(&self, p: u32) -> u64 {
        self.clocks.iter().find(|(q, _)| *q == p).map_or(0, |(_, c)| c.low)
    }

    /// Marks partition `p` as ended: it no longer holds the frontier.
    pub fn end(&mut self, p: u32) {
        self.clock_mut(p).ended = true;
    }

    /// Marks partition `p` idle (it no longer holds the frontier until it has data again).
    pub fn set_idle(&mut self, p: u32) {
        self.clock_mut(p).idle = true;
    }

    /// The smallest window still held by a live partition; `None` when none holds anything.
    pub fn low(&self) -> Option<u64> {
        self.clocks
            .iter()
            .filter(|(_, c)| !c.ended && !c.idle)
            .map(|(_, c)| c.low)
            .min()
    }

    /// The window a worker's capability may be downgraded to: [`Watermarks::low`], or when
    /// every live partition is idle, the largest of their windows (an idle partition holds
    /// nothing back, but without any clock the worker cannot claim more than its own data).
    pub fn hold(&self) -> Option<u64> {
        self.low()
            .or_else(|| self.clocks.iter().filter(|(_, c)| !c.ended).map(|(_, c)| c.low).max())
    }

    /// The live partition with the smallest window (the one to read next for aligned progress).
    pub fn laggard(&self) -> Option<u32> {
        self.clocks
            .iter()
            .filter(|(_, c)| !c.ended)
            .min_by_key(|(p, c)| (c.low, *p))
            .map(|(p, _)| *p)
    }

    /// Sets the sinks' frontier and how many windows the source may read ahead of it
    /// (`max_windows_ahead`); `None`: no limit.
    pub fn set_alignment(&mut self, alignment: Option<(u64, u64)>) {
        self.alignment = alignment;
    }

    /// Whether partition `p` ran so far past the sinks' frontier (more than twice
    /// `max_windows_ahead`) that a reader able to hold partitions back one by one (Kafka)
    /// should leave it unread for now: a partition far ahead of a lagging one (or of one that
    /// has not delivered yet) must not pile its records up in memory. The partition holding
    /// the frontier is never that far ahead while the source reads at all (the source itself
    /// stops when the frontier is `max_windows_ahead` past the sinks').
    pub fn far_ahead(&self, p: u32) -> bool {
        self.alignment
            .is_some_and(|(f, ahead)| self.low_of(p) > f.saturating_add(ahead.saturating_mul(2)))
    }

    /// Every partition's clock.
    pub fn clocks(&self) -> &[(u32, PartitionClock)] {
        &self.clocks
    }
}

/// One raw record read from a partition.
#[derive(Clone, Debug, Default)]
pub struct RawRecord {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The bytes of the line or message (no newline).
    pub bytes: Vec<u8>,
}

/// What a read call achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Read what it could; call again soon.
    More,
    /// Nothing available now; call again after the given delay.
    Idle(Duration),
    /// Every partition of this reader ended.
    Done,
}

/// A consistent cut of one partition: what to commit once windows `< frontier` are durable,
/// and what a restarted source needs to resume exactly (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cut {
    /// Partition.
    pub partition: u32,
    /// First offset whose record is not reflected in durable output (the offset to commit).
    pub offset: u64,
    /// Frontier `F`, a window index: every record assigned a window `< F` is reflected in
    /// durable output, and every record of this partition from `offset` on has a window `>= F`
    /// or is one of those. In a resume point, the job's resume frontier `D` (see module docs).
    pub frontier: u64,
    /// Largest valid timestamp of the records before `offset` (ms since the Unix epoch), to
    /// restore the partition's watermark; `None` when there was none.
    pub max_ts: Option<i64>,
}

/// A reader of this worker's partitions, plugged into [`partitioned_source`].
pub trait PartitionReader: 'static {
    /// The partitions this worker reads (fixed for the reader's life).
    fn partitions(&self) -> Vec<u32>;
    /// Reads up to `budget` records into `out`, preferring the partitions `marks` says lag.
    /// Calls `marks.end(p)` for each partition that ended and `marks.set_idle(p)` for one
    /// that went idle. Never blocks.
    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String>;
    /// Hands the reader a thread-safe activator of its source operator, for readers woken by
    /// another thread (e.g. a Kafka consumer's queue callback). Called once, when the source is
    /// built. The default ignores it (the source polls again after [`ReadStatus::Idle`]).
    fn set_activator(&mut self, activator: SyncActivator) {
        let _ = activator;
    }
    /// Where partitions resume after a restart (from the last committed cuts), all with the
    /// same `frontier`, the resume frontier `D`; the source restores their watermarks and skips
    /// the records assigned a window `< D` (already reflected). Default: none.
    fn resume_points(&self) -> Vec<Cut> {
        Vec::new()
    }
    /// Records `cuts` (the windows below each cut's frontier are durable), e.g. commits Kafka
    /// offsets. Must not block for long; an error stops the source. Default: nothing to do.
    fn commit(&mut self, cuts: &[Cut]) -> Result<(), String> {
        let _ = cuts;
        Ok(())
    }
    /// Adds to `out` each partition whose next offset moved past offsets that hold no record
    /// since the last call, with the new next offset: Kafka's transaction markers and the
    /// messages of aborted transactions, which a read-committed consumer never sees. Commits
    /// may then point past them (after a transactional producer's last commit marker, a
    /// caught-up group shows no lag). Called after each [`PartitionReader::read`], whose
    /// records all lie below the offsets reported. Default: none.
    fn skipped(&mut self, out: &mut Vec<(u32, u64)>) {
        let _ = out;
    }
    /// The largest frontier of a commit the external system acknowledged so far (`None`: none
    /// yet). The source calls it on every activation, throttled or not, so it must not block.
    /// `issued` is the frontier of the last [`PartitionReader::commit`] call (or the resume
    /// frontier); the default, for a synchronous `commit`, returns it.
    fn acknowledged(&mut self, issued: Option<u64>) -> Option<u64> {
        issued
    }
    /// Serves the client's own events (statistics, errors, logs) without reading records:
    /// called instead of [`PartitionReader::read`] while the source reads nothing (throttled
    /// behind the sinks, or stopped), so what those events feed (a consumer's lag gauge, its
    /// check for lost brokers) stays current. Anything record-like it receives must wait for
    /// the next `read`. Must not block. Default: nothing to serve.
    fn serve(&mut self) {}
}

/// Settings of a partitioned source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Window length `W`, in milliseconds.
    pub window_ms: u64,
    /// Out-of-orderness bound `L`, in milliseconds.
    pub lateness_ms: u64,
    /// Records read per activation, in records.
    pub batch: usize,
    /// How far the source may run ahead of the sink's frontier, in windows.
    pub max_windows_ahead: u64,
    /// Least time between two offset commits (with a durable probe), in milliseconds.
    pub commit_interval_ms: u64,
    /// Commit anyway, before `commit_interval_ms` elapsed, once the durable frontier moved
    /// this many windows past the last commit, in windows (0: never). A sink gated on the
    /// acknowledged commits (SessionDB writes at most `max_versions - 2` windows past them)
    /// would otherwise wait for the interval: catching up on a backlog, hundreds of windows
    /// can become durable within one.
    pub commit_every_windows: u64,
    /// Whether the source keeps its capability when its input fails (boolean). On: no window
    /// the failed input could still have added to completes downstream, so no sink gets a
    /// window that lacks its events; the job must watch [`SourceGauges::error`] and drop the
    /// dataflow (`sessionflow run` does). Off, the default: the source releases its capability
    /// and the dataflow completes, for a bounded run that reports the error at the end.
    pub hold_on_error: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            window_ms: 60_000,
            lateness_ms: 5_000,
            batch: 4096,
            max_windows_ahead: 3,
            commit_interval_ms: 1_000,
            commit_every_windows: 2,
            hold_on_error: false,
        }
    }
}

/// Where one partition of a source stands (the progress line's and the metrics' view of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: u32,
    /// Next offset to read; `None` until a record was read (or the partition resumed).
    pub next_offset: Option<u64>,
    /// `w(WM_p)`, the partition's watermark window: windows below it are complete for it
    /// (window index; 0 before its first valid event).
    pub window: u64,
    /// Its largest valid event timestamp so far (ms), if any.
    pub max_ts: Option<i64>,
    /// It ended (bounded input) and holds nothing back any more.
    pub ended: bool,
    /// It is idle (no data for the idle timeout) and holds nothing back for now.
    pub idle: bool,
}

impl PartitionPosition {
    /// Whether it can hold the frontier back: neither ended nor idle.
    pub fn live(&self) -> bool {
        !self.ended && !self.idle
    }

    /// Whether it holds a frontier at `window` back: a live partition whose watermark has
    /// not passed that window.
    pub fn holds(&self, window: u64) -> bool {
        self.live() && self.window <= window
    }
}

/// Live figures of one worker's source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceGauges {
    /// Lines or messages read (empty replay lines are not counted).
    pub events_read: u64,
    /// Of those, invalid ones.
    pub invalid: u64,
    /// The source's current capability (window), if it still holds one.
    pub window: Option<u64>,
    /// Times the source paused because the sink lagged.
    pub throttled: u64,
    /// A read error that stopped the source.
    pub error: Option<String>,
    /// Where each of the worker's partitions stands.
    pub positions: Vec<PartitionPosition>,
    /// Records read again after a restart and dropped because their window was already durable
    /// (not counted in `events_read`).
    pub skipped_on_resume: u64,
    /// The resume frontier `D` (windows below it were durable before the restart), if resumed.
    pub resume_frontier: Option<u64>,
    /// Commits made through [`PartitionReader::commit`] (count).
    pub commits: u64,
    /// The cuts last handed to [`PartitionReader::commit`].
    pub committed: Vec<Cut>,
    /// The largest commit frontier the external system acknowledged (see
    /// [`SourceStreams::committed`]).
    pub acknowledged: Option<u64>,
    /// Commits issued again because the last one was not acknowledged within
    /// `commit_interval_ms` (a broker restart, a coordinator change).
    pub commit_retries: u64,
    /// Once every partition ended: the cuts to commit when the whole job's output is durable
    /// (the command commits them after the dataflow completed and the files are in place,
    /// with the smallest frontier of all workers' end cuts: see `end_cut`).
    pub end_cuts: Vec<Cut>,
}

/// The streams and live figures of a partitioned source.
pub struct SourceStreams<'scope> {
    /// Valid events at their assigned window.
    pub events: StreamVec<'scope, u64, Sourced>,
    /// Invalid input, with reasons.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
    /// A stream without data whose frontier is the smallest acknowledged commit frontier of
    /// the workers still committing: once it passed window `a`, every such worker's last
    /// acknowledged commit says windows `< a` are durable, so a restart resumes at `a` or later.
    /// Empty once no worker commits any more (no durable probe, no partition, the input ended
    /// or failed). Sinks that keep history for exact restores gate on it (SessionDB).
    pub committed: StreamVec<'scope, u64, ()>,
    /// This worker's figures.
    pub gauges: Rc<RefCell<SourceGauges>>,
    /// Stops this worker's source from reading (a graceful stop).
    pub control: SourceControl,
}

/// Stops a partitioned source from reading, for a graceful stop of a live job.
///
/// A stopped source reads nothing more but keeps its capability, so the windows it has not
/// completed stay open (their sessions are not closed early), and it keeps committing as the
/// sinks acknowledge the windows it did complete: once the source streams' frontier and
/// [`SourceStreams::committed`] meet, everything read that can become durable is durable and
/// committed, and the job can end without losing or recounting anything on its restart.
#[derive(Clone, Default)]
pub struct SourceControl {
    stopped: Rc<Cell<bool>>,
    activator: Rc<OnceCell<timely::scheduling::Activator>>,
}

impl SourceControl {
    /// Stops reading (idempotent); the source operator is woken to notice.
    pub fn stop(&self) {
        self.stopped.set(true);
        if let Some(a) = self.activator.get() {
            a.activate();
        }
    }

    /// Whether [`SourceControl::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.get()
    }
}

/// What the source shares with its commit tracker on the same worker.
#[derive(Default)]
struct CommitTrack {
    /// Largest acknowledged commit frontier.
    acked: u64,
    /// The source still commits (else the tracker drops its capability).
    open: bool,
    /// Wakes the tracker.
    activator: Option<timely::scheduling::Activator>,
}

impl CommitTrack {
    fn update(&mut self, acked: Option<u64>, open: bool) {
        let acked = acked.unwrap_or(0).max(self.acked);
        if acked != self.acked || open != self.open {
            self.acked = acked;
            self.open = open;
            if let Some(a) = &self.activator {
                a.activate();
            }
        }
    }
}

/// Stops a partitioned source: drops its capability (so the frontier can pass) and closes its
/// commit tracker (so the sinks no longer wait for its acknowledgements).
fn stop_source(cap: &mut Option<Caps>, track: &RefCell<CommitTrack>) {
    *cap = None;
    track.borrow_mut().update(None, false);
}

/// Records a failure of the source's input (reading or committing) in `gauges.error` and
/// stops the source: it releases its capability, or with `hold` keeps it (and its commit
/// tracker's) and does nothing more (the recorded error says so), so the windows it holds
/// never complete.
fn fail_source(
    e: String,
    hold: bool,
    cap: &mut Option<Caps>,
    track: &RefCell<CommitTrack>,
    gauges: &RefCell<SourceGauges>,
) {
    gauges.borrow_mut().error = Some(e);
    if !hold {
        stop_source(cap, track);
    }
}

/// The operator behind [`SourceStreams::committed`]: holds a capability at the worker's
/// acknowledged commit frontier while its source commits.
fn commit_tracker<'scope>(
    scope: Scope<'scope, u64>,
    name: &str,
    track: Rc<RefCell<CommitTrack>>,
) -> StreamVec<'scope, u64, ()> {
    source::<_, CapacityContainerBuilder<Vec<()>>, _, _>(scope, name, move |cap, info| {
        track.borrow_mut().activator = Some(scope.activator_for(info.address));
        let mut cap = Some(cap);
        move |_output| {
            let t = track.borrow();
            if !t.open {
                cap = None;
            } else if let Some(c) = cap.as_mut() {
                if t.acked > *c.time() {
                    c.downgrade(&t.acked);
                }
            }
        }
    })
}

/// Parses one raw record into an event or a dead letter.
pub fn parse_record(rec: RawRecord) -> Result<Sourced, DeadLetter> {
    if rec.bytes.is_empty() {
        // Replay skips empty lines; an empty (or null) Kafka message is invalid input.
        let (partition, offset) = (rec.partition, rec.offset);
        return Err(DeadLetter {
            partition,
            offset,
            reason: "invalid: empty message".into(),
            raw: String::new(),
        });
    }
    let (raw, parsed) = parse_event_owned(rec.bytes);
    match parsed {
        Ok(event) => Ok(Sourced {
            partition: rec.partition,
            offset: rec.offset,
            raw,
            event,
        }),
        Err(e) => Err(DeadLetter {
            partition: rec.partition,
            offset: rec.offset,
            reason: e.to_string(),
            raw,
        }),
    }
}

/// Per-partition bookkeeping of the offsets behind each window, for consistent cuts.
#[derive(Clone, Debug)]
struct OffsetTrack {
    partition: u32,
    /// Next offset to read; `None` until a record was read (or the partition resumed).
    next: Option<u64>,
    /// Window -> (smallest offset read with that window, largest timestamp before it). Reading
    /// in offset order, the first record seen with a window has its smallest offset.
    first: BTreeMap<u64, (u64, Option<i64>)>,
    /// Largest window emitted.
    max_window: Option<u64>,
    /// The cut this partition resumed from, if any.
    resume: Option<Cut>,
    /// Last `(offset, frontier)` committed (or resumed from).
    committed: Option<(u64, u64)>,
}

impl OffsetTrack {
    fn new(partition: u32) -> Self {
        OffsetTrack {
            partition,
            next: None,
            first: BTreeMap::new(),
            max_window: None,
            resume: None,
            committed: None,
        }
    }

    /// Whether a record assigned `window` was already reflected before a restart.
    fn reflected(&self, window: u64) -> bool {
        self.resume.as_ref().is_some_and(|r| window < r.frontier)
    }

    /// Notes a record at `offset` emitted at `window`; `before` is the partition's largest
    /// timestamp before it.
    fn emitted(&mut self, offset: u64, window: u64, before: Option<i64>) {
        self.first.entry(window).or_insert((offset, before));
        self.max_window = Some(self.max_window.map_or(window, |m| m.max(window)));
    }

    /// The cut once every window `< frontier` is durable, or `None` when there is nothing new
    /// to commit (or the partition is still re-reading records it read before a restart).
    fn cut(&mut self, frontier: u64, max_ts_now: Option<i64>) -> Option<Cut> {
        let next = self.next?;
        // Windows below the durable frontier are reflected: forget their offsets.
        self.first = self.first.split_off(&frontier);
        if self.resume.as_ref().is_some_and(|r| frontier < r.frontier) {
            // A commit below the resume frontier would lose what it says is reflected.
            return None;
        }
        let (offset, max_ts) = self
            .first
            .values()
            .min_by_key(|(o, _)| *o)
            .copied()
            .unwrap_or((next, max_ts_now));
        if let Some((o, f)) = self.committed {
            if offset < o || frontier < f || (offset, frontier) == (o, f) {
                return None;
            }
        }
        Some(Cut {
            partition: self.partition,
            offset,
            frontier,
            max_ts,
        })
    }

    /// The cut once the partition ended and the whole job's output is durable. Its frontier is
    /// `low`, the smallest partition window of the worker (or the resume frontier if larger):
    /// the command lowers it to the smallest over all workers before committing, because a
    /// record appended later to any partition gets a window no lower than that partition's.
    fn end_cut(&self, max_ts_now: Option<i64>, low: u64) -> Option<Cut> {
        let next = self.next?;
        let frontier = self.resume.as_ref().map_or(low, |r| r.frontier.max(low));
        Some(Cut {
            partition: self.partition,
            offset: next,
            frontier,
            max_ts: max_ts_now,
        })
    }
}

/// Builds a partitioned source on `scope` reading through `reader`.
///
/// `throttle`: a probe on the sink; the source reads only while the probe's frontier is
/// within `max_windows_ahead` windows of the source's own capability.
///
/// `durable`: a probe on the sinks whose frontier means "acknowledged by the external system";
/// when given, the source hands [`PartitionReader::commit`] a consistent [`Cut`] per partition
/// each time that frontier advances (at most every `commit_interval_ms`, unless it moved
/// `commit_every_windows` windows since the last commit), and issues the last cuts again
/// while [`PartitionReader::acknowledged`] stays below them for `commit_interval_ms`. Without
/// it nothing is committed while running; [`SourceGauges::end_cuts`] has the final cuts of a
/// bounded run. [`SourceStreams::committed`] tracks the acknowledged commits.
pub fn partitioned_source<'scope, R: PartitionReader>(
    scope: Scope<'scope, u64>,
    name: &str,
    cfg: SourceConfig,
    mut reader: R,
    throttle: Option<ProbeHandle<u64>>,
    durable: Option<ProbeHandle<u64>>,
) -> SourceStreams<'scope> {
    let gauges = Rc::new(RefCell::new(SourceGauges::default()));
    let shared = Rc::clone(&gauges);
    let track = Rc::new(RefCell::new(CommitTrack {
        open: true,
        ..CommitTrack::default()
    }));
    let committed = commit_tracker(scope, &format!("{name}Commits"), Rc::clone(&track));
    let control = SourceControl::default();
    let stop = control.clone();
    // One operator, two outputs: events and invalid records leave it apart (no `ok_err` step
    // that would move every record once more).
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (events_out, events) = builder.new_output::<Vec<Sourced>>();
    let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
    let mut events_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<Sourced>>> = OutputBuilder::from(events_out);
    let mut dead_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<DeadLetter>>> = OutputBuilder::from(dead_out);
    builder.build(move |caps| {
        // One capability per output, always moved together.
        let caps: Option<Caps> = caps.try_into().ok();
        reader.set_activator(scope.worker().sync_activator_for(info.address.to_vec()));
        let _ = stop.activator.set(scope.activator_for(info.address.clone()));
        let activator = scope.activator_for(info.address);
        let partitions = reader.partitions();
        let mut marks = Watermarks::new(cfg.window_ms, cfg.lateness_ms, &partitions);
        let mut tracks: Vec<OffsetTrack> = partitions.iter().map(|&p| OffsetTrack::new(p)).collect();
        for point in reader.resume_points() {
            let Some(t) = tracks.iter_mut().find(|t| t.partition == point.partition) else {
                continue;
            };
            marks.restore(point.partition, point.max_ts);
            t.next = Some(point.offset);
            t.committed = Some((point.offset, point.frontier));
            let mut g = shared.borrow_mut();
            g.resume_frontier = Some(g.resume_frontier.map_or(point.frontier, |f| f.min(point.frontier)));
            t.resume = Some(point);
        }
        let mut cap = if partitions.is_empty() { None } else { caps };
        let mut raw = Vec::with_capacity(cfg.batch);
        let mut skips: Vec<(u32, u64)> = Vec::new();
        // The records read in one activation, by window (events and invalid records apart),
        // each window's in the order read (no sort: a record is a few hundred bytes to
        // move). The buffers are kept for the next activations, so they grow once.
        let mut by_window: Vec<(u64, Vec<Sourced>, Vec<DeadLetter>)> = Vec::new();
        let mut spare: Vec<(Vec<Sourced>, Vec<DeadLetter>)> = Vec::new();
        let mut last_commit: Option<(Instant, u64)> = None;
        // Frontier of the last commit issued (or resumed from), and its cuts (issued again
        // while not acknowledged: the sinks may wait for it).
        let mut issued: Option<u64> = shared.borrow().resume_frontier;
        let mut last_cuts: Vec<Cut> = Vec::new();
        move |_frontiers| {
            // A failed input whose windows are held (`hold_on_error`): nothing more to do.
            if shared.borrow().error.is_some() {
                return;
            }
            let Some(c) = cap.as_mut() else {
                track.borrow_mut().update(None, false);
                return;
            };
            let floor = *c[0].time();
            if let Some(probe) = &durable {
                let acked = reader.acknowledged(issued);
                shared.borrow_mut().acknowledged = acked;
                track.borrow_mut().update(acked, true);
                let frontier = probe.with_frontier(|f| f.first().copied());
                let interval = Duration::from_millis(cfg.commit_interval_ms);
                let due = last_commit.is_none_or(|(at, last)| {
                    at.elapsed() >= interval
                        || (cfg.commit_every_windows > 0
                            && frontier.is_some_and(|f| f >= last.saturating_add(cfg.commit_every_windows)))
                });
                let mut cuts: Vec<Cut> = Vec::new();
                let mut retry = false;
                if let (true, Some(f)) = (due, frontier) {
                    if last_commit.is_none_or(|(_, last)| f > last) {
                        cuts = tracks
                            .iter_mut()
                            .filter_map(|t| t.cut(f, marks.max_ts(t.partition)))
                            .collect();
                        last_commit = Some((Instant::now(), f));
                    } else if acked < issued
                        && !last_cuts.is_empty()
                        && last_commit.is_some_and(|(at, _)| at.elapsed() >= interval)
                    {
                        // Not acknowledged within an interval (it failed, or the broker
                        // is away): issue it again, nothing else would.
                        cuts = last_cuts.clone();
                        retry = true;
                        last_commit = last_commit.map(|(_, last)| (Instant::now(), last));
                    }
                }
                if !cuts.is_empty() {
                    if let Err(e) = reader.commit(&cuts) {
                        fail_source(e, cfg.hold_on_error, &mut cap, &track, &shared);
                        return;
                    }
                    for cut in &cuts {
                        if let Some(t) = tracks.iter_mut().find(|t| t.partition == cut.partition) {
                            t.committed = Some((cut.offset, cut.frontier));
                        }
                    }
                    issued = cuts.iter().map(|c| c.frontier).max().max(issued);
                    let mut g = shared.borrow_mut();
                    if retry {
                        g.commit_retries += 1;
                    } else {
                        g.commits += 1;
                    }
                    g.committed = cuts.clone();
                    last_cuts = cuts;
                }
            } else {
                track.borrow_mut().update(None, false);
            }
            if stop.stopped() {
                // Read nothing more, but look again soon: the commits above follow the
                // sinks as they catch up with what was read.
                reader.serve();
                activator.activate_after(STOPPED_RECHECK);
                return;
            }
            if let Some(probe) = &throttle {
                if probe.less_than(&floor.saturating_sub(cfg.max_windows_ahead)) {
                    reader.serve();
                    shared.borrow_mut().throttled += 1;
                    activator.activate_after(Duration::from_millis(1));
                    return;
                }
            }
            let sinks = throttle
                .as_ref()
                .and_then(|probe| probe.with_frontier(|f| f.first().copied()));
            marks.set_alignment(sinks.map(|f| (f, cfg.max_windows_ahead)));
            raw.clear();
            let status = match reader.read(&mut marks, cfg.batch, &mut raw) {
                Ok(s) => s,
                Err(e) => {
                    // A broken input stops this source; the job reports the error.
                    fail_source(e, cfg.hold_on_error, &mut cap, &track, &shared);
                    return;
                }
            };
            let mut g = shared.borrow_mut();
            for rec in raw.drain(..) {
                let (p, offset) = (rec.partition, rec.offset);
                let i = match tracks.iter().position(|t| t.partition == p) {
                    Some(i) => i,
                    None => {
                        tracks.push(OffsetTrack::new(p));
                        tracks.len() - 1
                    }
                };
                let before = marks.max_ts(p);
                let (w, item) = match parse_record(rec) {
                    Ok(s) => (marks.observe(p, s.event.timestamp, floor), Ok(s)),
                    // Invalid input does not move the watermark; it goes out at the
                    // partition's own window, which a restarted source derives the same.
                    Err(d) => (marks.low_of(p).max(floor), Err(d)),
                };
                let t = &mut tracks[i];
                t.next = Some(offset + 1);
                if t.reflected(w) {
                    g.skipped_on_resume += 1;
                    continue;
                }
                g.events_read += 1;
                g.invalid += u64::from(item.is_err());
                t.emitted(offset, w, before);
                // Usually the window of the record before; a batch spans few windows.
                let at = match by_window.iter().rposition(|(x, _, _)| *x == w) {
                    Some(at) => at,
                    None => {
                        let (ev, dl) = spare.pop().unwrap_or_default();
                        by_window.push((w, ev, dl));
                        by_window.len() - 1
                    }
                };
                match item {
                    Ok(s) => by_window[at].1.push(s),
                    Err(d) => by_window[at].2.push(d),
                }
            }
            // Offsets without records after those read (transaction markers): only for a
            // partition that read a record or resumed, whose cuts already say which windows
            // its later records get; one that read nothing still commits nothing.
            reader.skipped(&mut skips);
            for (p, next) in skips.drain(..) {
                if let Some(t) = tracks.iter_mut().find(|t| t.partition == p) {
                    if t.next.is_some_and(|n| next > n) {
                        t.next = Some(next);
                    }
                }
            }
            by_window.sort_unstable_by_key(|(w, _, _)| *w);
            let (mut ev, mut dl) = (events_out.activate(), dead_out.activate());
            for (w, mut events, mut dead) in by_window.drain(..) {
                // Each window's records go on as the container they were collected in, not
                // record by record through an output buffer (a copy of every record and a
                // buffer per ~26 records). The exchange downstream drains it and leaves its
                // capacity here for the next batch (a single worker's channel keeps it). A
                // container handed back may hold anything: cleared before reuse.
                if !events.is_empty() {
                    ev.session(&c[0].delayed(&w)).give_container(&mut events);
                    events.clear();
                }
                if !dead.is_empty() {
                    dl.session(&c[1].delayed(&w)).give_container(&mut dead);
                    dead.clear();
                }
                spare.push((events, dead));
            }
            g.positions.clear();
            g.positions
                .extend(marks.clocks().iter().map(|(p, c)| PartitionPosition {
                    partition: *p,
                    next_offset: tracks.iter().find(|t| t.partition == *p).and_then(|t| t.next),
                    window: c.low,
                    max_ts: c.max_ts,
                    ended: c.ended,
                    idle: c.idle,
                }));
            let ended = matches!(status, ReadStatus::Done) || marks.clocks().iter().all(|(_, c)| c.ended);
            if ended {
                let low = marks.clocks().iter().map(|(_, c)| c.low).min().unwrap_or(0);
                g.end_cuts = tracks
                    .iter()
                    .filter_map(|t| t.end_cut(marks.max_ts(t.partition), low))
                    .collect();
                stop_source(&mut cap, &track);
            } else {
                if let Some(low) = marks.hold() {
                    if low > floor {
                        caps::downgrade(c, &low);
                    }
                }
                match status {
                    ReadStatus::Idle(d) => activator.activate_after(d),
                    _ => activator.activate(),
                }
            }
            g.window = cap.as_ref().map(|c| *c[0].time());
        }
    });
    SourceStreams {
        events,
        dead_letters,
        committed,
        gauges,
        control,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::MAX_LINE_BYTES;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn assignment_follows_the_partition_watermark() {
        let mut m = Watermarks::new(60_000, 5_000, &[0, 1]);
        // First event of p0 at 10:00.000 -> window of its own time.
        let t0 = 1_700_000_040_000; // 40 s into window 28333334
        assert_eq!(m.observe(0, t0, 0), t0 as u64 / 60_000);
        // p0 moves to 1 min + 10 s later: WM = t - 5 s, in the next window.
        let t1 = t0 + 30_000;
        assert_eq!(m.observe(0, t1, 0), t1 as u64 / 60_000);
        // An old event on p0 is assigned to w(WM_p0) (late).
        assert_eq!(m.observe(0, t0 - 120_000, 0), (t1 as u64 - 5_000) / 60_000);
        // p1 is independent: the same old event there is on time.
        assert_eq!(m.observe(1, t0 - 120_000, 0), (t0 as u64 - 120_000) / 60_000);
        // The worker holds the smaller of the two partition windows.
        assert_eq!(m.low(), Some((t0 as u64 - 125_000) / 60_000));
        m.end(1);
        assert_eq!(m.low(), Some((t1 as u64 - 5_000) / 60_000));
        m.end(0);
        assert_eq!(m.low(), None);
    }

    #[test]
    fn partitions_far_past_the_sinks_frontier_are_far_ahead() {
        let mut m = Watermarks::new(1_000, 0, &[0, 1]);
        m.observe(0, 10_500, 0); // window 10
        assert!(!m.far_ahead(0), "no alignment, nothing is ahead");
        // Sinks at 0, 3 windows ahead allowed: p0 (window 10 > 0 + 2 * 3) is far ahead, p1
        // (no data) is not.
        m.set_alignment(Some((0, 3)));
        assert!(m.far_ahead(0));
        assert!(!m.far_ahead(1));
        m.set_alignment(Some((4, 3)));
        assert!(!m.far_ahead(0));
    }

    #[test]
    fn idle_partitions_release_the_frontier_and_wake_at_the_floor() {
        let mut m = Watermarks::new(1_000, 0, &[0, 1]);
        m.observe(0, 946_684_800_000 + 50_000, 0);
        m.set_idle(1);
        let low = m.low().unwrap();
        assert_eq!(low, 946_684_850);
        // p1 wakes with an old event: assigned no earlier than the held capability.
        assert_eq!(m.observe(1, 946_684_800_000, low), low);
    }

    #[test]
    fn oversized_and_invalid_lines_become_dead_letters() {
        let big = RawRecord {
            partition: 3,
            offset: 9,
            bytes: vec![b' '; MAX_LINE_BYTES + 1],
        };
        let d = parse_record(big).unwrap_err();
        assert_eq!(d.reason, format!("invalid: line over {MAX_LINE_BYTES} bytes"));
        assert_eq!((d.partition, d.offset), (3, 9));
        // Over the limit and not UTF-8: the length is the reason, as in `parse_event`.
        let mut big_bad = vec![b' '; MAX_LINE_BYTES + 1];
        big_bad[0] = 0xff;
        let d = parse_record(RawRecord {
            partition: 0,
            offset: 0,
            bytes: big_bad,
        })
        .unwrap_err();
        assert_eq!(d.reason, format!("invalid: line over {MAX_LINE_BYTES} bytes"));
        let bad = RawRecord {
            partition: 0,
            offset: 1,
            bytes: vec![b'{', 0xff, b'}'],
        };
        let d = parse_record(bad).unwrap_err();
        assert_eq!(d.reason, "invalid: not UTF-8 (byte 1)");
        assert_eq!(
            d.reason,
            crate::event::parse_event(&[b'{', 0xff, b'}']).unwrap_err().to_string()
        );
        assert_eq!(d.raw, "{\u{fffd}}");
        // A valid line parses to the same event as `parse_event` gives.
        let line = br#"{"event_id":"e","visitor_id":"v","project_id":1,"timestamp":1700000000000,"type":"click"}"#;
        let ok = parse_record(RawRecord {
            partition: 0,
            offset: 2,
            bytes: line.to_vec(),
        })
        .unwrap();
        assert_eq!(ok.event, crate::event::parse_event(line).unwrap());
        assert_eq!(ok.raw.as_bytes(), line);
    }

    /// One partition of lines, with resume points, recording the commits it gets.
    struct Lines {
        lines: Vec<Vec<u8>>,
        next: usize,
        resume: Vec<Cut>,
        commits: std::sync::Arc<std::sync::Mutex<Vec<Cut>>>,
        /// Offsets without records after the last line (transaction markers): the next offset
        /// reported through `skipped` once every line was read.
        markers_to: Option<u64>,
        skips: Vec<(u32, u64)>,
        /// Calls of `serve` (the source reading nothing).
        served: Arc<AtomicU64>,
    }

    impl Lines {
        /// `lines` read from line `next` on, resuming at `resume`, no commit yet.
        fn new(lines: Vec<Vec<u8>>, next: usize, resume: Vec<Cut>) -> Lines {
            Lines {
                lines,
                next,
                resume,
                commits: Arc::new(std::sync::Mutex::new(Vec::new())),
                markers_to: None,
                skips: Vec::new(),
                served: Arc::new(AtomicU64::new(0)),
            }
        }
    }

    /// [`Lines`] that stays open after its last line until `end` is set, and acknowledges
    /// commits only up to `ack_cap`.
    struct Held {
        lines: Lines,
        ack_cap: std::sync::Arc<std::sync::atomic::AtomicU64>,
        end: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl PartitionReader for Held {
        fn partitions(&self) -> Vec<u32> {
            vec![0]
        }

        fn read(
            &mut self,
            marks: &mut Watermarks,
            budget: usize,
            out: &mut Vec<RawRecord>,
        ) -> Result<ReadStatus, String> {
            let keep = self.lines.lines.len() - 1;
            if self.end.load(std::sync::atomic::Ordering::Relaxed) {
                return self.lines.read(marks, budget, out);
            }
            // Everything but the last line, then wait (a live partition).
            if self.lines.next < keep {
                return self.lines.read(marks, budget.min(keep - self.lines.next), out);
            }
            Ok(ReadStatus::Idle(Duration::from_millis(1)))
        }

        fn commit(&mut self, cuts: &[Cut]) -> Result<(), String> {
            self.lines.commit(cuts)
        }

        fn acknowledged(&mut self, issued: Option<u64>) -> Option<u64> {
            issued.map(|i| i.min(self.ack_cap.load(std::sync::atomic::Ordering::Relaxed)))
        }
    }

    /// `Held` over `sample()`: acknowledges commits up to `ack_cap`, live until `end`.
    fn held(ack_cap: &Arc<AtomicU64>, end: &Arc<AtomicBool>) -> Held {
        Held {
            lines: Lines::new(sample(), 0, Vec::new()),
            ack_cap: Arc::clone(ack_cap),
            end: Arc::clone(end),
        }
    }

    /// Probes of a committing source: its streams as the sinks would acknowledge them
    /// (`durable`), its acknowledged commits (`gate`) and its own frontier (`input`).
    struct CommitProbes {
        durable: ProbeHandle<u64>,
        gate: ProbeHandle<u64>,
        input: ProbeHandle<u64>,
    }

    /// Builds a committing source on `reader` (batches of 16, commits every 20 ms, no
    /// throttle), every stream probed.
    fn committing_source(
        worker: &mut timely::worker::Worker,
        reader: Held,
    ) -> (Rc<RefCell<SourceGauges>>, SourceControl, CommitProbes) {
        use timely::dataflow::operators::Probe;
        let p = CommitProbes {
            durable: ProbeHandle::new(),
            gate: ProbeHandle::new(),
            input: ProbeHandle::new(),
        };
        let (gauges, control) = worker.dataflow::<u64, _, _>(|scope| {
            let cfg = SourceConfig {
                batch: 16,
                max_windows_ahead: 1_000,
                commit_interval_ms: 20,
                ..SourceConfig::default()
            };
            let s = partitioned_source(scope, "Source", cfg, reader, None, Some(p.durable.clone()));
            s.events.probe_with(&p.durable).probe_with(&p.input);
            s.dead_letters.probe_with(&p.durable);
            s.committed.probe_with(&p.gate);
            (s.gauges, s.control)
        });
        (gauges, control, p)
    }

    fn frontier(p: &ProbeHandle<u64>) -> Option<u64> {
        p.with_frontier(|f| f.first().copied())
    }

    /// Steps `worker` until `done`, failing after 20 s.
    fn step_until(worker: &mut timely::worker::Worker, what: &str, done: &dyn Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }

    #[test]
    fn the_committed_stream_follows_acknowledgements_and_unacknowledged_cuts_are_issued_again() {
        let ack_cap = Arc::new(AtomicU64::new(0));
        let end = Arc::new(AtomicBool::new(false));
        let reader = held(&ack_cap, &end);
        timely::execute_directly(move |worker| {
            let (gauges, _, p) = committing_source(worker, reader);
            // 1. Nothing acknowledged: the gate stays at 0 while cuts are issued, and the last
            //    one is issued again every interval.
            step_until(worker, "retries", &|| gauges.borrow().commit_retries >= 3);
            let issued = gauges.borrow().committed.iter().map(|c| c.frontier).max().unwrap();
            assert!(gauges.borrow().commits > 1);
            assert_eq!(frontier(&p.gate), Some(0));
            // 2. Acknowledged up to `issued - 1`, then everything: the gate follows.
            ack_cap.store(issued - 1, Ordering::Relaxed);
            step_until(worker, "the gate at issued - 1", &|| {
                frontier(&p.gate) == Some(issued - 1)
            });
            assert_eq!(gauges.borrow().acknowledged, Some(issued - 1));
            ack_cap.store(u64::MAX, Ordering::Relaxed);
            step_until(worker, "the gate at issued", &|| frontier(&p.gate) == Some(issued));
            // 3. The input ends: no more commits, the gate opens.
            end.store(true, Ordering::Relaxed);
            step_until(worker, "the end", &|| p.durable.done() && p.gate.done());
        });
    }

    /// A stopped source reads nothing more and keeps its capability (its open windows stay
    /// open), while its commits follow the sinks up to its own frontier.
    #[test]
    fn a_stopped_source_holds_its_window_and_commits_up_to_it() {
        let reader = held(&Arc::new(AtomicU64::new(u64::MAX)), &Arc::new(AtomicBool::new(false)));
        timely::execute_directly(move |worker| {
            let (gauges, control, p) = committing_source(worker, reader);
            step_until(worker, "100 records read", &|| gauges.borrow().events_read >= 100);
            control.stop();
            assert!(control.stopped());
            let read = gauges.borrow().events_read;
            assert!(read < 400, "read {read} of 500 before the stop: too late to test it");
            step_until(worker, "the commits at the source's frontier", &|| {
                frontier(&p.gate) == frontier(&p.input)
            });
            let held = frontier(&p.input);
            for _ in 0..200 {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            assert_eq!(gauges.borrow().events_read, read, "read after the stop");
            assert_eq!(frontier(&p.input), held, "the stopped source moved its frontier");
            assert!(held.is_some_and(|w| w > 0), "the stopped source dropped its window");
            assert_eq!(gauges.borrow().window, held);
            assert_eq!(gauges.borrow().acknowledged, held, "commits short of the source");
            // The dataflow never completes on its own now: drop it, as `run` does.
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
        });
    }

    /// [`Lines`] whose input fails after `fail_at` lines.
    struct Failing {
        lines: Lines,
        fail_at: usize,
    }

    impl PartitionReader for Failing {
        fn partitions(&self) -> Vec<u32> {
            vec![0]
        }

        fn read(
            &mut self,
            marks: &mut Watermarks,
            budget: usize,
            out: &mut Vec<RawRecord>,
        ) -> Result<ReadStatus, String> {
            if self.lines.next >= self.fail_at {
                return Err("the disk caught fire".into());
            }
            self.lines.read(marks, budget.min(self.fail_at - self.lines.next), out)
        }
    }

    /// A source whose input fails after 200 of 500 records, with `hold_on_error` on and off:
    /// the frontier of its output after the failure, and the gauges.
    fn frontier_after_failure(hold: bool) -> (Option<u64>, SourceGauges) {
        use timely::dataflow::operators::Probe;
        let reader = Failing {
            lines: Lines::new(sample(), 0, Vec::new()),
            fail_at: 200,
        };
        timely::execute_directly(move |worker| {
            let probe = ProbeHandle::new();
            let gauges = worker.dataflow::<u64, _, _>(|scope| {
                let cfg = SourceConfig {
                    batch: 16,
                    max_windows_ahead: 1_000,
                    hold_on_error: hold,
                    ..SourceConfig::default()
                };
                let s = partitioned_source(scope, "Source", cfg, reader, None, None);
                s.events.probe_with(&probe);
                s.dead_letters.probe_with(&probe);
                s.gauges
            });
            step_until(worker, "the failure", &|| gauges.borrow().error.is_some());
            for _ in 0..200 {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            let at = frontier(&probe);
            for id in worker.installed_dataflows() {
                worker.drop_dataflow(id);
            }
            let g = gauges.borrow().clone();
            (at, g)
        })
    }

    /// With `hold_on_error` a failed input keeps the windows it could still add to open (no
    /// sink gets them incomplete); without, the source lets the frontier pass.
    #[test]
    fn a_failed_input_holds_its_windows_only_when_asked() {
        let lines = sample();
        let last_ts = lines[..200]
            .iter()
            .filter_map(|l| crate::event::parse_event(l).ok())
            .map(|e| e.timestamp)
            .max()
            .unwrap();
        // The partition's watermark window after its 200th record.
        let low = (last_ts - 5_000) as u64 / 60_000;
        let (held, g) = frontier_after_failure(true);
        assert_eq!(g.error.as_deref(), Some("the disk caught fire"));
        assert_eq!(g.events_read, 200);
        assert_eq!(held, Some(low), "the failed source did not hold its window");
        assert_eq!(g.window, Some(low));
        let (released, g) = frontier_after_failure(false);
        assert_eq!(g.error.as_deref(), Some("the disk caught fire"));
        assert_eq!(released, None, "the failed source kept the frontier");
    }

    impl PartitionReader for Lines {
        fn partitions(&self) -> Vec<u32> {
            vec![0]
        }

        fn serve(&mut self) {
            self.served.fetch_add(1, Ordering::Relaxed);
        }

        fn read(
            &mut self,
            marks: &mut Watermarks,
            budget: usize,
            out: &mut Vec<RawRecord>,
        ) -> Result<ReadStatus, String> {
            let end = (self.next + budget).min(self.lines.len());
            for (i, line) in self.lines[self.next..end].iter().enumerate() {
                out.push(RawRecord {
                    partition: 0,
                    offset: (self.next + i) as u64,
                    bytes: line.clone(),
                });
            }
            self.next = end;
            if end == self.lines.len() {
                self.skips.extend(self.markers_to.take().map(|to| (0, to)));
                marks.end(0);
                return Ok(ReadStatus::Done);
            }
            Ok(ReadStatus::More)
        }

        fn skipped(&mut self, out: &mut Vec<(u32, u64)>) {
            out.append(&mut self.skips);
        }

        fn resume_points(&self) -> Vec<Cut> {
            self.resume.clone()
        }

        fn commit(&mut self, cuts: &[Cut]) -> Result<(), String> {
            self.commits.lock().unwrap().extend_from_slice(cuts);
            Ok(())
        }
    }

    const T0: i64 = 1_700_000_000_000;

    /// Backpressure: while the sinks' frontier stays behind, the source reads at most
    /// `max_windows_ahead` windows past it and then stops reading (`throttled`), however much
    /// input is waiting; as the sinks move on it reads on, to the end.
    #[test]
    fn the_source_stops_reading_while_the_sinks_lag_and_reads_on_as_they_advance() {
        use std::cell::Cell;
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::Operator;
        use timely::dataflow::operators::Probe;
        timely::execute_directly(move |worker| {
            let sinks = ProbeHandle::new();
            // The sink acknowledges nothing at or past `release` (a stalled writer).
            let release = Rc::new(Cell::new(0u64));
            let hold = Rc::clone(&release);
            let served: Cell<Option<Arc<AtomicU64>>> = Cell::new(None);
            let gauges = worker.dataflow::<u64, _, _>(|scope| {
                let cfg = SourceConfig {
                    batch: 16,
                    max_windows_ahead: 2,
                    ..SourceConfig::default()
                };
                let lines = Lines::new(sample(), 0, Vec::new());
                served.set(Some(Arc::clone(&lines.served)));
                let s = partitioned_source(scope, "Source", cfg, lines, Some(sinks.clone()), None);
                s.events
                    .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Sink", move |cap, info| {
                        let wake = scope.activator_for(info.address);
                        let mut cap = Some(cap);
                        move |(input, frontier), _| {
                            input.for_each(|_, _| {});
                            let upto = frontier.frontier().first().copied().unwrap_or(u64::MAX).min(hold.get());
                            if upto == u64::MAX {
                                cap = None;
                            } else if let Some(c) = cap.as_mut() {
                                if *c.time() < upto {
                                    c.downgrade(&upto);
                                }
                            }
                            wake.activate();
                        }
                    })
                    .probe_with(&sinks);
                s.gauges
            });
            let w0 = (T0 / 60_000) as u64;
            let read = || gauges.borrow().events_read;
            // Let the source run against the stalled sink until it has paused many times.
            let settle = |worker: &mut timely::worker::Worker, what: &str| {
                let paused = gauges.borrow().throttled;
                step_until(worker, what, &|| gauges.borrow().throttled > paused + 50);
            };
            // 1. The sink at 0: the source takes its first batch (it holds no window yet),
            //    then reads nothing more.
            settle(worker, "the source paused behind a sink at 0");
            let first = read();
            let serves = served.take().unwrap();
            let before = serves.load(Ordering::Relaxed);
            settle(worker, "more pauses");
            assert_eq!(read(), first, "it read on while the sink was far behind");
            // Each pause served the reader's own events (a consumer's statistics) instead.
            assert!(serves.load(Ordering::Relaxed) >= before + 50, "not served while paused");
            assert!(first <= 16, "read {first}");
            // 2. The sink at w0 + 10: the source reads while its window is at most 2 past it;
            //    its last batch (16 lines, 5 s apart) can carry it up to 2 windows further.
            release.set(w0 + 10);
            settle(worker, "the source paused behind a sink at w0 + 10");
            let second = read();
            settle(worker, "more pauses");
            assert_eq!(read(), second, "it read on while the sink was 2 windows behind");
            let window = gauges.borrow().window.unwrap();
            assert!(
                (w0 + 13..=w0 + 14).contains(&window),
                "source window {window}, sink {}",
                w0 + 10
            );
            // 12 lines a window: far from all 500, but past the first batch.
            assert!(second > first && second < 250, "read {second}");
            // 3. The sink writes again: everything is read and the dataflow completes.
            release.set(u64::MAX);
            step_until(worker, "the end", &|| sinks.done());
            assert_eq!(read(), 500);
        });
    }

    /// 500 records 5 s apart: every 7th 150 s late, every 13th invalid.
    fn sample() -> Vec<Vec<u8>> {
        (0..500i64)
            .map(|i| {
                if i % 13 == 5 {
                    return b"{bad".to_vec();
                }
                let ts = T0 + i * 5_000 - if i % 7 == 3 { 150_000 } else { 0 };
                format!(r#"{{"event_id":"e{i}","session_id":"s{}","visitor_id":"v","project_id":1,"timestamp":{ts},"type":"x"}}"#, i % 11)
                    .into_bytes()
            })
            .collect()
    }

    /// Runs a source over `reader` with a durable probe right behind it: every emitted
    /// record as `(offset, window, valid)`, the gauges, the commits.
    fn run(reader: Lines) -> (Vec<(u64, u64, bool)>, SourceGauges, Vec<Cut>) {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::generic::Operator;
        use timely::dataflow::operators::Probe;
        let commits = std::sync::Arc::clone(&reader.commits);
        let (records, gauges) = timely::execute_directly(move |worker| {
            let records = Rc::new(RefCell::new(Vec::new()));
            let probe = ProbeHandle::new();
            let (r1, r2) = (Rc::clone(&records), Rc::clone(&records));
            let gauges = worker.dataflow::<u64, _, _>(|scope| {
                let cfg = SourceConfig {
                    batch: 16,
                    max_windows_ahead: 1_000,
                    commit_interval_ms: 0,
                    ..SourceConfig::default()
                };
                let s = partitioned_source(scope, "Source", cfg, reader, None, Some(probe.clone()));
                s.events
                    .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Events", move |_, _| {
                        move |input, _| {
                            input.for_each(|time, data| {
                                let t = *time.least().unwrap();
                                r1.borrow_mut().extend(data.drain(..).map(|s| (s.offset, t, true)));
                            })
                        }
                    })
                    .probe_with(&probe);
                s.dead_letters
                    .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Dead", move |_, _| {
                        move |input, _| {
                            input.for_each(|time, data| {
                                let t = *time.least().unwrap();
                                r2.borrow_mut().extend(data.drain(..).map(|d| (d.offset, t, false)));
                            })
                        }
                    })
                    .probe_with(&probe);
                s.gauges
            });
            while !probe.done() {
                worker.step();
            }
            let mut records = records.take();
            records.sort_unstable();
            let gauges = gauges.borrow().clone();
            (records, gauges)
        });
        let commits = commits.lock().unwrap().clone();
        (records, gauges, commits)
    }

    fn max_ts_before(lines: &[Vec<u8>], offset: u64) -> Option<i64> {
        lines[..offset as usize]
            .iter()
            .filter_map(|l| crate::event::parse_event(l).ok())
            .map(|e| e.timestamp)
            .max()
    }

    /// Offsets without records after the last one read (a transactional producer's last
    /// commit marker) move the final cut past them, so the group shows no lag; a partition
    /// that read no record still gets no cut (its later records' windows are unknown).
    #[test]
    fn the_end_cut_passes_offsets_without_records_after_the_last_one_read() {
        let lines = sample();
        let mut reader = Lines::new(lines.clone(), 0, Vec::new());
        reader.markers_to = Some(lines.len() as u64 + 2);
        let (_, gauges, _) = run(reader);
        assert_eq!(gauges.end_cuts.len(), 1);
        assert_eq!(gauges.end_cuts[0].offset, lines.len() as u64 + 2);
        assert_eq!(gauges.end_cuts[0].max_ts, max_ts_before(&lines, lines.len() as u64));

        let mut empty = Lines::new(Vec::new(), 0, Vec::new());
        empty.markers_to = Some(3);
        let (_, gauges, _) = run(empty);
        assert!(gauges.end_cuts.is_empty(), "{:?}", gauges.end_cuts);
    }

    #[test]
    fn commits_are_consistent_cuts_and_resuming_from_one_is_exact() {
        let lines = sample();
        let fresh = |resume: Vec<Cut>, from: usize| Lines::new(lines.clone(), from, resume);
        let (full, gauges, commits) = run(fresh(Vec::new(), 0));
        assert_eq!(full.len(), lines.len());
        assert_eq!(gauges.events_read, lines.len() as u64);
        // Windows are not monotonic in offset order: late events go back to the watermark.
        assert!(full.windows(2).any(|w| w[1].1 < w[0].1));
        assert!(commits.len() > 5, "{} commits", commits.len());
        for cut in &commits {
            // Every record before the cut is in a window below the frontier, the cut record
            // itself (if any) is not, and max_ts is the largest timestamp before the cut.
            assert!(
                full.iter().filter(|r| r.0 < cut.offset).all(|r| r.1 < cut.frontier),
                "{cut:?}"
            );
            if let Some(r) = full.iter().find(|r| r.0 == cut.offset) {
                assert!(r.1 >= cut.frontier, "{cut:?}: {r:?}");
            }
            assert_eq!(cut.max_ts, max_ts_before(&lines, cut.offset), "{cut:?}");
        }
        assert!(commits
            .windows(2)
            .all(|w| w[0].offset <= w[1].offset && w[0].frontier < w[1].frontier));
        // The end cut: everything read, at the partition's own window.
        assert_eq!(gauges.end_cuts.len(), 1);
        assert_eq!(gauges.end_cuts[0].offset, lines.len() as u64);

        // Resuming from any commit emits exactly the records of windows >= its frontier, at the
        // same windows, and skips the re-read ones below it.
        let mut skipped_total = 0;
        for cut in commits.iter().step_by(3) {
            let d = cut.frontier;
            let (resumed, g, _) = run(fresh(vec![cut.clone()], cut.offset as usize));
            let expected: Vec<_> = full.iter().filter(|r| r.1 >= d).copied().collect();
            assert_eq!(resumed, expected, "resumed from {cut:?}");
            let skipped = full.iter().filter(|r| r.0 >= cut.offset && r.1 < d).count() as u64;
            assert_eq!(
                (g.skipped_on_resume, g.events_read),
                (skipped, expected.len() as u64),
                "{cut:?}"
            );
            assert_eq!(g.resume_frontier, Some(d));
            skipped_total += skipped;
        }
        assert!(skipped_total > 0, "no resume re-read a record of a durable window");
    }
}
