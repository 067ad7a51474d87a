//! The `sessionize` operator: thin operator glue around [`SessionStore`] (one input, two
//! outputs: snapshots and `session_closed` dead letters).
//!
//! Events are exchanged to the worker that owns their session key (see
//! [`Routing`](super::Routing)), buffered per window, and each window
//! is processed once the input frontier has passed it. The operator holds its capabilities
//! (one per output, moved together) at the smallest window that still has work (buffered
//! events or sessions due to close), so windows without data still close sessions and nothing
//! downstream waits longer than needed.
//! A window with many outputs is processed in slices, one per activation, so the operators
//! downstream take each slice before the next is built (see [`SessionStore::process_some`]).

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use super::state::{SessionConfig, Snapshot};
use super::store::{SessionCounters, SessionOutput, SessionStore};
use crate::caps::{self, Caps};
use crate::local_exchange::local_first;
use crate::record::{DeadLetter, Sourced};

/// Live figures of one worker's sessionize operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionGauges {
    /// Counters so far.
    pub counters: SessionCounters,
    /// Sessions open now.
    pub open_sessions: u64,
    /// Events buffered for windows the frontier has not passed yet.
    pub pending_events: u64,
}

/// The streams and live figures `sessionize` produces.
pub struct Sessionized<'scope> {
    /// Snapshots, at the time (window) they describe.
    pub snapshots: StreamVec<'scope, u64, Snapshot>,
    /// `session_closed` dead letters, at the window that rejected them.
    pub dead_letters: StreamVec<'scope, u64, DeadLetter>,
    /// This worker's counters and gauges, updated as windows are processed.
    pub gauges: Rc<RefCell<SessionGauges>>,
}

/// Extension trait: `stream.sessionize(cfg)`.
pub trait Sessionize<'scope> {
    /// Turns events (timely time = assigned window) into session snapshots, exactly as
    /// `shared/spec/sessions.md` describes.
    ///
    /// ```
    /// use sessionflow_operators::event::Event;
    /// use sessionflow_operators::record::Sourced;
    /// use sessionflow_operators::session::{SessionConfig, Sessionize};
    /// use timely::dataflow::operators::{Capture, capture::Extract, ToStream};
    /// use timely::dataflow::operators::vec::Map;
    ///
    /// let ev = |id: &str, ts: i64| Sourced {
    ///     partition: 0, offset: 0, raw: String::new(),
    ///     event: Event { event_id: id.into(), session_id: Some("s1".into()),
    ///         visitor_id: "v1".into(), project_id: 7, timestamp: ts, kind: "pageview".into(),
    ///         name: None, revenue: None, value: None, attributes: None, tags: None,
    ///         experiments: None },
    /// };
    /// let cfg = SessionConfig::default();
    /// let captured = timely::example(move |scope| {
    ///     let events = vec![ev("e1", 1_700_000_000_000), ev("e2", 1_700_000_010_000)];
    ///     // Both events are in window 0 (`to_stream` sends at time 0). With a bounded input
    ///     // every window is processed, so the session also closes (30 min after its end).
    ///     events.to_stream(scope).sessionize(cfg).snapshots
    ///         .map(|s| (s.session_id.to_string(), s.event_count, s.closed))
    ///         .capture()
    /// });
    /// let snaps: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(snaps, [("s1".to_string(), 2, false), ("s1".to_string(), 2, true)]);
    /// ```
    fn sessionize(self, cfg: SessionConfig) -> Sessionized<'scope>;

    /// Like [`Sessionize::sessionize`], starting from a store that already holds restored
    /// state (sessions open and closed-set entries at a resume point, see
    /// [`SessionStore::restore_open`]). The store must hold only keys this worker owns
    /// (`store.config().routing.owner(key, peers) == index`).
    fn sessionize_from(self, store: SessionStore) -> Sessionized<'scope>;
}

/// The hash of an event's session key: `session_id`, else `(project_id, visitor_id)`. It orders
/// a window's keys, and with [`Routing::Hash`](super::Routing::Hash) it routes them.
/// Portable (FNV-1a then a 64-bit finalizer), so every process of a cluster routes alike.
pub fn route_hash(rec: &Sourced) -> u64 {
    key_hash(
        rec.event.session_id.as_deref(),
        rec.event.project_id,
        &rec.event.visitor_id,
    )
}

/// The hash of a session key (see [`route_hash`]); under
/// [`Routing::Hash`](super::Routing::Hash) worker `key_hash % peers` owns it (timely's exchange
/// takes the hash modulo the number of workers).
pub fn key_hash(session_id: Option<&str>, project_id: u64, visitor_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match session_id {
        Some(s) => {
            eat(b"s");
            eat(s.as_bytes());
        }
        None => {
            eat(b"g");
            eat(&project_id.to_le_bytes());
            eat(visitor_id.as_bytes());
        }
    }
    // splitmix64 finalizer: timely routes on the low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Outputs (snapshots, dead letters) the operator emits per activation at most, about: a
/// larger window is processed in slices of this size (see [`SessionStore::process_some`]), so
/// the snapshots of one window are not all in flight at once (~2 KB each: ~16 MB a slice).
const EMIT_SLICE: usize = 8192;

impl<'scope> Sessionize<'scope> for StreamVec<'scope, u64, Sourced> {
    fn sessionize(self, cfg: SessionConfig) -> Sessionized<'scope> {
        self.sessionize_from(SessionStore::new(cfg))
    }

    fn sessionize_from(self, store: SessionStore) -> Sessionized<'scope> {
        let gauges = Rc::new(RefCell::new(SessionGauges::default()));
        let shared = Rc::clone(&gauges);
        let scope = self.scope();
        // One operator, two outputs: snapshots and `session_closed` dead letters leave it
        // apart (no `ok_err` step that would move every snapshot once more).
        let mut builder = OperatorBuilder::new("Sessionize".to_owned(), scope);
        let info = builder.operator_info();
        // Each event to the worker that owns its session key (see [`Routing`]); those this
        // worker owns stay in their container (see [`local_first`]).
        let routing = store.config().routing;
        let route = move |r: &Sourced| {
            let e = &r.event;
            routing.route(e.session_id.as_deref(), e.project_id, &e.visitor_id)
        };
        let mut input = builder.new_input(self, local_first(scope.index(), route));
        let (snap_out, snapshots) = builder.new_output::<Vec<Snapshot>>();
        let (dead_out, dead_letters) = builder.new_output::<Vec<DeadLetter>>();
        let mut snap_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<Snapshot>>> = OutputBuilder::from(snap_out);
        let mut dead_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<DeadLetter>>> = OutputBuilder::from(dead_out);
        builder.build(move |initial| {
            let activator = scope.activator_for(info.address);
            let mut store = store;
            // One capability per output, always moved together, at the smallest window with
            // work (restored sessions due to close count as work from the start).
            let initial: Option<Caps> = initial.try_into().ok();
            let mut caps: Option<Caps> = initial.and_then(|c| store.next_window().map(|w| c.map(|c| c.delayed(&w))));
            move |frontiers| {
                let frontier = &frontiers[0];
                input.for_each(|time, data| {
                    let Some(&t) = time.least() else { return };
                    if caps.as_ref().is_none_or(|c| t < *c[0].time()) {
                        caps = Some([time.delayed(&t, 0), time.delayed(&t, 1)]);
                    }
                    store.insert_batch(t, data);
                });
                let mut worked = false;
                let (mut snaps, mut dead) = (snap_out.activate(), dead_out.activate());
                while let Some(m) = store.next_window() {
                    if frontier.less_equal(&m) {
                        break;
                    }
                    let Some(c) = caps.as_ref() else { break };
                    let (at_snap, at_dead) = (c[0].delayed(&m), c[1].delayed(&m));
                    let mut snap = snaps.session(&at_snap);
                    let mut letter = dead.session(&at_dead);
                    let done = store.process_some(m, EMIT_SLICE, &mut |o| match o {
                        SessionOutput::Snapshot(s) => snap.give(s),
                        SessionOutput::DeadLetter(d) => letter.give(d),
                    });
                    worked = true;
                    if !done {
                        // The rest of the window after the operators downstream took this
                        // slice (the capabilities stay at `m` meanwhile).
                        activator.activate();
                        break;
                    }
                }
                match store.next_window() {
                    Some(next) => {
                        if let Some(c) = caps.as_mut() {
                            if *c[0].time() < next {
                                caps::downgrade(c, &next);
                            }
                        }
                    }
                    None => caps = None,
                }
                if worked || shared.borrow().pending_events != store.pending_events() as u64 {
                    let mut g = shared.borrow_mut();
                    g.counters = *store.counters();
                    g.open_sessions = store.open_sessions() as u64;
                    g.pending_events = store.pending_events() as u64;
                }
            }
        });
        Sessionized {
            snapshots,
            dead_letters,
            gauges,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use timely::dataflow::operators::capture::Event as CaptureEvent;
    use timely::dataflow::operators::{Capture, ToStream};

    use super::*;
    use crate::event::Event;

    fn ev(i: u64) -> Sourced {
        Sourced {
            partition: 0,
            offset: i,
            raw: String::new(),
            event: Event::minimal(
                &format!("e{i}"),
                Some(&format!("s{i}")),
                "v",
                7,
                1_700_000_000_000 + i as i64,
            ),
        }
    }

    /// A window with more outputs than `EMIT_SLICE` is emitted over several activations (the
    /// operator wakes itself for the rest): every snapshot arrives, as one `process` gives
    /// them, and the dataflow completes.
    #[test]
    fn a_window_larger_than_a_slice_is_emitted_whole() {
        let n = 2 * EMIT_SLICE as u64 + 100;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let captured = timely::example(move |scope| {
                (0..n)
                    .map(ev)
                    .to_stream(scope)
                    .sessionize(SessionConfig::default())
                    .snapshots
                    .capture()
            });
            let batches: Vec<(u64, Vec<Snapshot>)> = captured
                .try_iter()
                .filter_map(|e| match e {
                    CaptureEvent::Messages(t, v) => Some((*t.expect_singleton(), v)),
                    CaptureEvent::Progress(_) => None,
                })
                .collect();
            let _ = tx.send(batches);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the dataflow did not complete: the operator stopped mid-window");
        let mut store = SessionStore::new(SessionConfig::default());
        for i in 0..n {
            store.insert(0, ev(i));
        }
        let mut want: Vec<(u64, Snapshot)> = Vec::new();
        while let Some(m) = store.next_window() {
            store.process(m, &mut |o| {
                if let SessionOutput::Snapshot(s) = o {
                    want.push((m, s));
                }
            });
        }
        let got: Vec<(u64, Snapshot)> = got
            .into_iter()
            .flat_map(|(t, v)| v.into_iter().map(move |s| (t, s)))
            .collect();
        assert_eq!(got.len(), 2 * n as usize, "an open and a closed snapshot per session");
        assert_eq!(got, want);
    }
}
