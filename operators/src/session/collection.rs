//! The `session_collection` operator: the snapshot stream as a differential-dataflow
//! collection holding one record per session, its latest snapshot's value.
//!
//! A snapshot overwrites its session's previous one (as SessionDB's row does), so the
//! collection changes by `-previous, +new` at each window that changed the session. The open
//! sessions are an upsert arrangement keyed by the session (differential's
//! `arrange_from_upsert`, which finds the `-previous` in its trace); a session that closes is
//! taken out of it and its final value joins a plain insert-only collection, so the
//! arrangement holds the open sessions only, however long the job runs, while the collection
//! still counts every session of the run. A session merged into another (gap-based sessions)
//! leaves the collection: its events are the survivor's now.

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use super::state::Snapshot;

/// What names a session for its whole life: its output id, the project of the event that
/// opened it and the window it opened in (a client id reused after its closed-set entry expired
/// names a new session; gap-based ids repeat across projects).
pub type SessionKey = (String, u64, u64);

/// The key of a snapshot's session.
pub fn session_key(s: &Snapshot) -> SessionKey {
    (s.session_id.to_string(), s.opened_project, s.opened_window)
}

/// What one snapshot does to the collection (see [`change_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionChange<V> {
    /// The session.
    pub key: SessionKey,
    /// The session's value while open (`None`: not in the open part, or no longer).
    pub open: Option<V>,
    /// The value the session keeps for good: its final snapshot's, when it closed.
    pub closed: Option<V>,
}

/// How a snapshot changes the collection, given its value (`None`: the session is not kept).
/// An open session's snapshot replaces its open value; a final snapshot removes it and adds
/// the final value for good, unless the session was merged into another (its events moved).
pub fn change_of<V>(s: &Snapshot, value: Option<V>) -> SessionChange<V> {
    let key = session_key(s);
    if !s.closed {
        SessionChange {
            key,
            open: value,
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
            closed: value,
        }
    }
}

/// Extension trait: `snapshots.session_collection(value)`.
pub trait SessionCollection<'scope> {
    /// The collection of every session's latest value: `value` of the session's latest
    /// snapshot at each window, one record per session (`None` keeps the session out). Its
    /// updates at window `m` are exactly the changes `m`'s snapshots made: `-previous, +new`
    /// for a session that changed (nothing when the value did not), `+new` for a new one,
    /// `-previous` for one merged away. Sessions that closed stay with their final value.
    ///
    /// The open sessions are arranged by [`SessionKey`] (exchanged by its hash, one value each,
    /// so memory follows the open sessions); a closed session's final value is a one-off
    /// insert. The result is independent of the number of workers.
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
    ///         snapshots.session_collection(|s| Some(s.event_count)).inner.capture_into(send);
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
    /// // One event at 3; at 4 the value moves from 1 to 2; closing at 40 keeps it (the open
    /// // value leaves, the final one stays).
    /// assert_eq!(updates, [(3, 1, 1), (4, 1, -1), (4, 2, 1), (40, 2, -1), (40, 2, 1)]);
    /// ```
    fn session_collection<V, F>(self, value: F) -> VecCollection<'scope, u64, V, isize>
    where
        V: ExchangeData,
        F: FnMut(&Snapshot) -> Option<V> + 'static;
}

impl<'scope> SessionCollection<'scope> for StreamVec<'scope, u64, Snapshot> {
    fn session_collection<V, F>(self, mut value: F) -> VecCollection<'scope, u64, V, isize>
    where
        V: ExchangeData,
        F: FnMut(&Snapshot) -> Option<V> + 'static,
    {
        // Snapshots are large (their JSON): take what the collection needs right away, on
        // the snapshot's worker, and move only that.
        let changes = self.unary(Pipeline, "SessionChanges", move |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    let mut session = output.session(&cap);
                    for s in data.iter() {
                        let change = change_of(s, value(s));
                        session.give((change, t));
                    }
                })
            }
        });
        let finals = changes
            .clone()
            .flat_map(|(c, t): (SessionChange<V>, u64)| c.closed.map(|v| (v, t, 1isize)))
            .as_collection();
        let upserts = changes.map(|(c, t)| (c.key, c.open, t));
        let open =
            arrange_from_upsert::<ValBuilder<SessionKey, V, u64, isize>, ValSpine<SessionKey, V, u64, isize>, _, _>(
                upserts,
                "OpenSessions",
            );
        open.as_collection(|_key, v| v.clone()).concat(finals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(closed: bool, merged: Option<&str>) -> Snapshot {
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
        let key = ("s".to_string(), 9, 2);
        assert_eq!(
            change_of(&snap(false, None), Some(1)),
            SessionChange {
                key: key.clone(),
                open: Some(1),
                closed: None
            }
        );
        assert_eq!(
            change_of(&snap(true, None), Some(1)),
            SessionChange {
                key: key.clone(),
                open: None,
                closed: Some(1)
            }
        );
        assert_eq!(
            change_of(&snap(true, Some("t")), Some(1)),
            SessionChange {
                key: key.clone(),
                open: None,
                closed: None
            }
        );
        assert_eq!(
            change_of::<u8>(&snap(false, None), None),
            SessionChange {
                key,
                open: None,
                closed: None
            }
        );
    }
}
