//! The `sessionize` operator: thin `unary_frontier` glue around [`SessionStore`].
//!
//! Events are exchanged by a hash of their session key, buffered per window, and each window
//! is processed once the input frontier has passed it. The operator holds a single capability,
//! at the smallest window that still has work (buffered events or sessions due to close), so
//! windows without data still close sessions and nothing downstream waits longer than needed.

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, OkErr};
use timely::dataflow::StreamVec;

use super::state::{SessionConfig, Snapshot};
use super::store::{SessionCounters, SessionOutput, SessionStore};
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
    ///         .map(|s| (s.session_id, s.event_count, s.closed))
    ///         .capture()
    /// });
    /// let snaps: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(snaps, [("s1".to_string(), 2, false), ("s1".to_string(), 2, true)]);
    /// ```
    fn sessionize(self, cfg: SessionConfig) -> Sessionized<'scope>;

    /// Like [`Sessionize::sessionize`], starting from a store that already holds restored
    /// state (sessions open and closed-set entries at a resume point, see
    /// [`SessionStore::restore_open`]). The store must hold only keys this worker owns
    /// (`key_hash % peers == index`).
    fn sessionize_from(self, store: SessionStore) -> Sessionized<'scope>;
}

/// The routing hash of an event's session key: `session_id`, else `(project_id, visitor_id)`.
/// Portable (FNV-1a then a 64-bit finalizer), so every process of a cluster routes alike.
pub fn route_hash(rec: &Sourced) -> u64 {
    key_hash(
        rec.event.session_id.as_deref(),
        rec.event.project_id,
        &rec.event.visitor_id,
    )
}

/// The routing hash of a session key (see [`route_hash`]); worker `key_hash % peers` owns it
/// (timely's exchange takes the hash modulo the number of workers).
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

impl<'scope> Sessionize<'scope> for StreamVec<'scope, u64, Sourced> {
    fn sessionize(self, cfg: SessionConfig) -> Sessionized<'scope> {
        self.sessionize_from(SessionStore::new(cfg))
    }

    fn sessionize_from(self, store: SessionStore) -> Sessionized<'scope> {
        let gauges = Rc::new(RefCell::new(SessionGauges::default()));
        let shared = Rc::clone(&gauges);
        let outputs: StreamVec<'scope, u64, SessionOutput> = self
            .unary_frontier::<CapacityContainerBuilder<Vec<SessionOutput>>, _, _, _>(
                Exchange::new(route_hash),
                "Sessionize",
                move |initial, _info| {
                    let mut store = store;
                    // One capability, at the smallest window with work (restored sessions due to close
                    // count as work from the start).
                    let mut cap: Option<Capability<u64>> = store.next_window().map(|w| initial.delayed(&w));
                    move |(input, frontier), output| {
                        input.for_each(|time, data| {
                            let Some(&t) = time.least() else { return };
                            if cap.as_ref().is_none_or(|c| t < *c.time()) {
                                cap = Some(time.delayed(&t, output.output_index()));
                            }
                            store.insert_batch(t, data);
                        });
                        let mut worked = false;
                        while let Some(m) = store.next_window() {
                            if frontier.less_equal(&m) {
                                break;
                            }
                            let Some(c) = cap.as_ref() else { break };
                            let at = c.delayed(&m);
                            let mut session = output.session(&at);
                            store.process(m, &mut |o| session.give(o));
                            worked = true;
                        }
                        match store.next_window() {
                            Some(next) => {
                                if let Some(c) = cap.as_mut() {
                                    if *c.time() < next {
                                        c.downgrade(&next);
                                    }
                                }
                            }
                            None => cap = None,
                        }
                        if worked || shared.borrow().pending_events != store.pending_events() as u64 {
                            let mut g = shared.borrow_mut();
                            g.counters = *store.counters();
                            g.open_sessions = store.open_sessions() as u64;
                            g.pending_events = store.pending_events() as u64;
                        }
                    }
                },
            );
        let (snapshots, dead_letters) = outputs.ok_err(|o: SessionOutput| match o {
            SessionOutput::Snapshot(s) => Ok(s),
            SessionOutput::DeadLetter(d) => Err(d),
        });
        Sessionized {
            snapshots,
            dead_letters,
            gauges,
        }
    }
}
