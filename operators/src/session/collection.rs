//! The `session_collection` operator: the snapshot stream as a differential-dataflow
//! collection holding one record per session, its latest snapshot's value.
//!
//! A snapshot overwrites its session's previous one (as SessionDB's row does), so the
//! collection changes by `-previous, +new` at each window that changed the session. The
//! previous values are the open sessions' (a keyed, frontier-driven operator holds them, one
//! per open session of the collection); a session that closes leaves that state and its final
//! value stays in the collection for good, so memory follows the open sessions however long
//! the job runs, while the collection still counts every session of the run. A session merged
//! into another (gap-based sessions) leaves the collection: its events are the survivor's now.
//! The collection is a plain differential collection: arrange it, join it, reduce it (see
//! [`super::experiments`]).

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::{Operator, OutputBuilder};
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::operator::key_hash;
use super::state::Snapshot;

/// What names a session for its whole life: a hash of its output id (which routes it), the id,
/// the project of the event that opened it and the window it opened in (a client id reused
/// after its closed-set entry expired names a new session; gap-based ids repeat across
/// projects).
pub type SessionKey = (u64, String, u64, u64);

/// The key of a snapshot's session.
pub fn session_key(s: &Snapshot) -> SessionKey {
    // With an id, the key hash is of the id alone (the project and visitor are not read).
    let hash = key_hash(Some(&s.session_id), s.opened_project, "");
    (hash, s.session_id.to_string(), s.opened_project, s.opened_window)
}

/// What one snapshot does to the collection (see [`change_of`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChange<V> {
    /// The session.
    pub key: SessionKey,
    /// The session's value while open (`None`: no longer open).
    pub open: Option<V>,
    /// The value the session keeps for good: its final snapshot's, when it closed.
    pub closed: Option<V>,
}

/// How a snapshot changes the collection, given its value (`None`: the session is not in the
/// collection, and never was while open: see [`SessionCollection::session_collection`]): an
/// open session's snapshot replaces its open value; a final snapshot removes it and adds the
/// final value for good, unless the session was merged into another (its events moved).
pub fn change_of<V>(s: &Snapshot, value: Option<V>) -> Option<SessionChange<V>> {
    let value = value?;
    let key = session_key(s);
    Some(if !s.closed {
        SessionChange {
            key,
            open: Some(value),
            closed: None,
        }
    } else if s.merged_into.is_some() {
        SessionChange {
            key,
            open: None,
            closed: None,
        }
    } else {
        SessionChange {
            key,
            open: None,
            closed: Some(value),
        }
    })
}

/// Applies one change to the open sessions' values, giving the collection's updates to
/// `emit` (`+1` for a value in, `-1` for a value out): a new value replaces the previous one
/// (nothing when they are equal), a final value takes the session out of `open` and stays in
/// the collection, a merged session's value leaves.
pub fn apply_change<V: Clone + PartialEq>(
    open: &mut HashMap<SessionKey, V>,
    c: SessionChange<V>,
    mut emit: impl FnMut(V, isize),
) {
    match (c.open, c.closed) {
        (Some(next), _) => match open.entry(c.key) {
            Entry::Occupied(mut e) => {
                if *e.get() != next {
                    emit(e.insert(next.clone()), -1);
                    emit(next, 1);
                }
            }
            Entry::Vacant(e) => {
                e.insert(next.clone());
                emit(next, 1);
            }
        },
        (None, last) => {
            let prev = open.remove(&c.key);
            if prev == last {
                return;
            }
            if let Some(prev) = prev {
                emit(prev, -1);
            }
            if let Some(last) = last {
                emit(last, 1);
            }
        }
    }
}

/// Extension trait: `snapshots.session_collection(value)`.
pub trait SessionCollection<'scope> {
    /// The collection of every session's latest value: `value` of the session's latest
    /// snapshot at each window, one record per session. Its updates at window `m` are exactly
    /// the changes `m`'s snapshots made: `-previous, +new` for a session that changed
    /// (nothing when the value did not), `+new` for a new one, `-previous` for one merged away.
    /// Sessions that closed stay with their final value.
    ///
    /// `value` gives `None` for a session that is not in the collection, and a session's value,
    /// once `Some`, must stay `Some` while the session is open (a session only gains events:
    /// "is in an experiment" or "saw a conversion" are such predicates; "has revenue" is not,
    /// as revenue can be negative). Sessions that never had a value then cost nothing past this
    /// operator.
    ///
    /// Each session's open value is held by one worker (exchanged by its [`SessionKey`]'s hash;
    /// one value per open session of the collection, so memory follows those), which turns
    /// each window's changes into the collection's updates once the frontier passed the window
    /// ([`apply_change`]); a closed session's final value costs nothing after that. The result
    /// is independent of the number of workers. The snapshots pass through unchanged, returned
    /// first: read the stream only from there (a second reader of a stream gets a copy of
    /// every snapshot, its JSON included).
    ///
    /// ```
    /// use sessionflow_operators::session::{SessionCollection, Snapshot};
    /// use timely::dataflow::operators::vec::Input;
    /// use timely::dataflow::operators::{Capture, capture::Extract};
    ///
    /// let snap = |window: u64, events: u64, closed: bool| Snapshot {
    ///     session_id: "s1".into(), gap_based: false, project_id: 7, visitor_id: "v".into(),
    ///     start: 0, end: 0, event_count: events, revenue: 0, experiments: vec![], window,
    ///     closed, opened_window: 3, opened_project: 7, merged_into: None, json: String::new(),
    ///     state: None };
    /// let (send, recv) = std::sync::mpsc::channel();
    /// timely::execute_directly(move |worker| {
    ///     let mut input = worker.dataflow::<u64, _, _>(|scope| {
    ///         let (input, snapshots) = scope.new_input::<Snapshot>();
    ///         let (_snapshots, sessions) = snapshots.session_collection(|s| Some(s.event_count));
    ///         sessions.inner.capture_into(send);
    ///         input
    ///     });
    ///     // Timely time = window: the session changes at 3 and 4 and closes at 40.
    ///     for s in [snap(3, 1, false), snap(4, 2, false), snap(40, 2, true)] {
    ///         input.advance_to(s.window);
    ///         input.send(s);
    ///     }
    /// });
    /// let mut updates: Vec<(u64, u64, isize)> = recv.extract().into_iter()
    ///     .flat_map(|(_, v)| v.into_iter().map(|(d, t, r)| (t, d, r))).collect();
    /// updates.sort();
    /// // One event at 3; at 4 the value moves from 1 to 2; closing at 40 with that value
    /// // changes nothing: the session keeps it in the collection for good.
    /// assert_eq!(updates, [(3, 1, 1), (4, 1, -1), (4, 2, 1)]);
    /// ```
    fn session_collection<V, F>(self, value: F) -> (Self, VecCollection<'scope, u64, V, isize>)
    where
        Self: Sized,
        V: ExchangeData,
        F: FnMut(&Snapshot) -> Option<V> + 'static;
}

impl<'scope> SessionCollection<'scope> for StreamVec<'scope, u64, Snapshot> {
    fn session_collection<V, F>(self, mut value: F) -> (Self, VecCollection<'scope, u64, V, isize>)
    where
        V: ExchangeData,
        F: FnMut(&Snapshot) -> Option<V> + 'static,
    {
        // One operator, two outputs: the snapshots, passed on as the containers they came in,
        // and what the collection needs of them, taken on the snapshot's worker.
        let mut builder = OperatorBuilder::new("SessionChanges".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        let (snap_out, snapshots) = builder.new_output::<Vec<Snapshot>>();
        let (change_out, changes) = builder.new_output::<Vec<SessionChange<V>>>();
        let mut snap_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<Snapshot>>> = OutputBuilder::from(snap_out);
        let mut change_out: OutputBuilder<u64, CapacityContainerBuilder<Vec<SessionChange<V>>>> =
            OutputBuilder::from(change_out);
        builder.build(move |_initial| {
            move |_frontiers| {
                let (mut snaps, mut changed) = (snap_out.activate(), change_out.activate());
                input.for_each(|time, data| {
                    let Some(&t) = time.least() else { return };
                    let at = time.delayed(&t, 1);
                    let mut session = changed.session(&at);
                    for s in data.iter() {
                        if let Some(change) = change_of(s, value(s)) {
                            session.give(change);
                        }
                    }
                    drop(session);
                    snaps.session(&time.delayed(&t, 0)).give_container(data);
                });
            }
        });
        // Each session's changes to the worker holding its open value, applied window by
        // window once the frontier passed the window (a session changes at most once a window).
        let updates = changes.unary_frontier::<CapacityContainerBuilder<Vec<(V, u64, isize)>>, _, _, _>(
            Exchange::new(|c: &SessionChange<V>| c.key.0),
            "SessionCollection",
            move |_cap, _info| {
                let mut open: HashMap<SessionKey, V> = HashMap::new();
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<SessionChange<V>>)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        let Some(&t) = cap.least() else { return };
                        let slot = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                        slot.1.append(data);
                    });
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (t, (cap, changes)) = entry.remove_entry();
                        let mut session = output.session(&cap);
                        for c in changes {
                            apply_change(&mut open, c, |v, r| session.give((v, t, r)));
                        }
                    }
                }
            },
        );
        (snapshots, updates.as_collection())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A snapshot of session `s` (opened in window 2 of project 9) at window 5.
    pub(crate) fn snap(closed: bool, merged: Option<&str>) -> Snapshot {
        Snapshot {
            session_id: "s".into(),
            gap_based: merged.is_some(),
            project_id: 1,
            visitor_id: "v".into(),
            start: 0,
            end: 0,
            event_count: 1,
            revenue: 0,
            experiments: vec![],
            window: 5,
            closed,
            opened_window: 2,
            opened_project: 9,
            merged_into: merged.map(str::to_string),
            json: String::new(),
            state: None,
        }
    }

    #[test]
    fn a_snapshot_replaces_removes_or_finalizes_its_session() {
        let key = session_key(&snap(false, None));
        assert_eq!((key.1.as_str(), key.2, key.3), ("s", 9, 2));
        assert_eq!(
            change_of(&snap(false, None), Some(1)),
            Some(SessionChange {
                key: key.clone(),
                open: Some(1),
                closed: None
            })
        );
        assert_eq!(
            change_of(&snap(true, None), Some(1)),
            Some(SessionChange {
                key: key.clone(),
                open: None,
                closed: Some(1)
            })
        );
        assert_eq!(
            change_of(&snap(true, Some("t")), Some(1)),
            Some(SessionChange {
                key,
                open: None,
                closed: None
            })
        );
        // Never in the collection: nothing to do, open, closed or merged.
        for (closed, merged) in [(false, None), (true, None), (true, Some("t"))] {
            assert_eq!(change_of::<u8>(&snap(closed, merged), None), None);
        }
    }

    fn change(open: Option<u32>, closed: Option<u32>) -> SessionChange<u32> {
        SessionChange {
            key: (1, "s".into(), 2, 3),
            open,
            closed,
        }
    }

    fn run(open: &mut HashMap<SessionKey, u32>, c: SessionChange<u32>) -> Vec<(u32, isize)> {
        let mut out = Vec::new();
        apply_change(open, c, |v, r| out.push((v, r)));
        out
    }

    #[test]
    fn changes_become_minus_previous_plus_new() {
        let mut open = HashMap::new();
        assert_eq!(run(&mut open, change(Some(1), None)), [(1, 1)]);
        assert_eq!(run(&mut open, change(Some(1), None)), []);
        assert_eq!(run(&mut open, change(Some(4), None)), [(1, -1), (4, 1)]);
        // Closing with the same value: the value stays, the state goes.
        assert_eq!(run(&mut open, change(None, Some(4))), []);
        assert!(open.is_empty());
        // A session that opens and closes in one window only ever had its final value.
        assert_eq!(run(&mut open, change(None, Some(7))), [(7, 1)]);
        assert!(open.is_empty());
        // Closing with a new value; a merge takes the value out.
        run(&mut open, change(Some(2), None));
        assert_eq!(run(&mut open, change(None, Some(5))), [(2, -1), (5, 1)]);
        run(&mut open, change(Some(2), None));
        assert_eq!(run(&mut open, change(None, None)), [(2, -1)]);
        assert!(open.is_empty());
    }
}
