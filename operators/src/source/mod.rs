//! Partitioned input with per-partition watermarks and window assignment.
//!
//! [`Watermarks`] is the pure part: for each partition `p` it keeps `WM_p = max timestamp read
//! - L`, assigns each event to `max(w(timestamp), w(WM_p))` and tells the smallest window a
//! worker must still hold a capability for. [`partitioned_source`] is the timely operator that
//! every input (replay files, Kafka) plugs into through a [`PartitionReader`]: it parses,
//! validates, assigns windows, emits dead letters for invalid input, downgrades its capability
//! as the watermarks move, drops it when every partition ended, and throttles itself against a
//! probe on the sink so memory stays bounded when the output lags.

pub mod files;
pub mod memory;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::OkErr;
use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use crate::event::{parse_event, MAX_LINE_BYTES};
use crate::record::{DeadLetter, Sourced};

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
}

impl Watermarks {
    /// Watermarks for the given partitions, all at window 0.
    pub fn new(window_ms: u64, lateness_ms: u64, partitions: &[u32]) -> Self {
        let clocks = partitions.iter().map(|&p| (p, PartitionClock::default())).collect();
        Watermarks { window_ms: window_ms.max(1), lateness_ms, clocks }
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
        self.clocks.iter().filter(|(_, c)| !c.ended && !c.idle).map(|(_, c)| c.low).min()
    }

    /// The live partition with the smallest window (the one to read next for aligned progress).
    pub fn laggard(&self) -> Option<u32> {
        self.clocks.iter().filter(|(_, c)| !c.ended).min_by_key(|(p, c)| (c.low, *p)).map(|(p, _)| *p)
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

/// A reader of this worker's partitions, plugged into [`partitioned_source`].
pub trait PartitionReader: 'static {
    /// The partitions this worker reads (fixed for the reader's life).
    fn partitions(&self) -> Vec<u32>;
    /// Reads up to `budget` records into `out`, preferring the partitions `marks` says lag.
    /// Calls `marks.end(p)` for each partition that ended and `marks.set_idle(p)` for one
    /// that went idle. Never blocks.
    fn read(&mut self, marks: &mut Watermarks, budget: usize, out: &mut Vec<RawRecord>) -> Result<ReadStatus, String>;
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
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig { window_ms: 60_000, lateness_ms: 5_000, batch: 4096, max_windows_ahead: 3 }
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
    /// Per partition: `(partition, next offset to read, low window)`.
    pub positions: Vec<(u32, u64, u64)>,
}

/// The streams and live figures of a partitioned source.
pub struct SourceStreams<'scope> {
    /// Valid events at their assigned window.
    pub events: StreamVec<'scope, u64, Sourced>,
    /// Invalid input, with reasons.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
    /// This worker's figures.
    pub gauges: Rc<RefCell<SourceGauges>>,
}

/// Parses one raw record into an event or a dead letter.
pub fn parse_record(rec: RawRecord) -> Result<Sourced, DeadLetter> {
    let parsed = if rec.bytes.len() > MAX_LINE_BYTES { None } else { Some(parse_event(&rec.bytes)) };
    let raw = match String::from_utf8(rec.bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    match parsed {
        Some(Ok(event)) => Ok(Sourced { partition: rec.partition, offset: rec.offset, raw, event }),
        Some(Err(e)) => Err(DeadLetter { partition: rec.partition, offset: rec.offset, reason: e.to_string(), raw }),
        None => Err(DeadLetter {
            partition: rec.partition,
            offset: rec.offset,
            reason: format!("invalid: line over {MAX_LINE_BYTES} bytes"),
            raw,
        }),
    }
}

/// Builds a partitioned source on `scope` reading through `reader`.
///
/// `throttle`: a probe on the sink; the source reads only while the probe's frontier is
/// within `max_windows_ahead` windows of the source's own capability.
pub fn partitioned_source<'scope, R: PartitionReader>(
    scope: Scope<'scope, u64>,
    name: &str,
    cfg: SourceConfig,
    mut reader: R,
    throttle: Option<ProbeHandle<u64>>,
) -> SourceStreams<'scope> {
    let gauges = Rc::new(RefCell::new(SourceGauges::default()));
    let shared = Rc::clone(&gauges);
    type Item = Result<(u64, Sourced), (u64, DeadLetter)>;
    let out: StreamVec<'scope, u64, Item> =
        source::<_, CapacityContainerBuilder<Vec<Item>>, _, _>(scope, name, move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut marks = Watermarks::new(cfg.window_ms, cfg.lateness_ms, &reader.partitions());
            let mut cap = if reader.partitions().is_empty() { None } else { Some(cap) };
            let mut raw = Vec::with_capacity(cfg.batch);
            let mut batch: Vec<(u64, Result<Sourced, DeadLetter>)> = Vec::with_capacity(cfg.batch);
            let mut next_offsets: Vec<(u32, u64)> = reader.partitions().iter().map(|&p| (p, 0)).collect();
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let floor = *c.time();
                if let Some(probe) = &throttle {
                    if probe.less_than(&floor.saturating_sub(cfg.max_windows_ahead)) {
                        shared.borrow_mut().throttled += 1;
                        activator.activate_after(Duration::from_millis(1));
                        return;
                    }
                }
                raw.clear();
                let status = match reader.read(&mut marks, cfg.batch, &mut raw) {
                    Ok(s) => s,
                    Err(e) => {
                        // A broken input stops this source; the job reports the error.
                        shared.borrow_mut().error = Some(e);
                        cap = None;
                        return;
                    }
                };
                let mut g = shared.borrow_mut();
                g.events_read += raw.len() as u64;
                for rec in raw.drain(..) {
                    match next_offsets.iter_mut().find(|(p, _)| *p == rec.partition) {
                        Some(slot) => slot.1 = rec.offset + 1,
                        None => next_offsets.push((rec.partition, rec.offset + 1)),
                    }
                    match parse_record(rec) {
                        Ok(s) => {
                            let w = marks.observe(s.partition, s.event.timestamp, floor);
                            batch.push((w, Ok(s)));
                        }
                        Err(d) => {
                            g.invalid += 1;
                            batch.push((floor, Err(d)));
                        }
                    }
                }
                // Emit grouped by window (stable: keeps partition order within a window).
                batch.sort_by_key(|(w, _)| *w);
                let mut rest = batch.drain(..).peekable();
                while let Some((w, first)) = rest.next() {
                    let at = c.delayed(&w);
                    let mut session = output.session(&at);
                    session.give(first.map(|s| (w, s)).map_err(|d| (w, d)));
                    while let Some((_, item)) = rest.next_if(|(w2, _)| *w2 == w) {
                        session.give(item.map(|s| (w, s)).map_err(|d| (w, d)));
                    }
                }
                drop(rest);
                g.positions = marks
                    .clocks()
                    .iter()
                    .map(|(p, c)| (*p, next_offsets.iter().find(|(q, _)| q == p).map_or(0, |x| x.1), c.low))
                    .collect();
                match (status, marks.low()) {
                    (ReadStatus::Done, _) => cap = None,
                    (_, None) if marks.clocks().iter().all(|(_, c)| c.ended) => cap = None,
                    (status, low) => {
                        if let Some(low) = low {
                            if low > floor {
                                c.downgrade(&low);
                            }
                        }
                        match status {
                            ReadStatus::Idle(d) => activator.activate_after(d),
                            _ => activator.activate(),
                        }
                    }
                }
                g.window = cap.as_ref().map(|c| *c.time());
            }
        });
    let (events, dead_letters) = out.ok_err(|item: Item| match item {
        Ok((_, s)) => Ok(s),
        Err((_, d)) => Err(d),
    });
    SourceStreams { events, dead_letters, gauges }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let big = RawRecord { partition: 3, offset: 9, bytes: vec![b' '; MAX_LINE_BYTES + 1] };
        let d = parse_record(big).unwrap_err();
        assert!(d.reason.starts_with("invalid"));
        assert_eq!((d.partition, d.offset), (3, 9));
        let bad = RawRecord { partition: 0, offset: 1, bytes: vec![0xff, b'{'] };
        let d = parse_record(bad).unwrap_err();
        assert!(d.reason.starts_with("invalid"));
        assert_eq!(d.raw, "\u{fffd}{");
    }
}
