//! The `experiment_totals` operator: live totals per experiment variation, over every session
//! of the run, kept up to date window by window with differential dataflow.
//!
//! Each session that was in an experiment counts once per `(experiment_id, variation_id)` pair
//! it has, with its latest snapshot's figures (a session's experiments and event count only
//! grow; its revenue and its project, the first event's, may still change). The
//! per-session values come from [`SessionCollection`]; the figures ride in the collection's
//! difference type ([`VariationTotals`]), so `count_total` keeps one accumulated record per
//! variation, not one per session: memory follows the variations and the open sessions.

use std::collections::BTreeMap;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use super::collection::SessionCollection;
use super::state::Snapshot;
use crate::json;

/// An experiment variation of a project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Variation {
    /// The sessions' `project_id` (their first event's).
    pub project_id: u64,
    /// `experiment_id` of the pair.
    pub experiment_id: u64,
    /// `variation_id` of the pair.
    pub variation_id: u64,
}

/// Figures of the sessions in a variation; also the collection's difference type (they add up
/// and cancel out as sessions change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VariationTotals {
    /// Sessions with the pair.
    pub sessions: i64,
    /// Of those, sessions whose revenue is above 0 (converted).
    pub sessions_with_revenue: i64,
    /// Accepted events of those sessions.
    pub events: i64,
    /// Revenue of those sessions, minor units.
    pub revenue: i128,
}

impl VariationTotals {
    /// One session's contribution.
    pub fn of_session(event_count: u64, revenue: i128) -> Self {
        VariationTotals {
            sessions: 1,
            sessions_with_revenue: i64::from(revenue > 0),
            events: i64::try_from(event_count).unwrap_or(i64::MAX),
            revenue,
        }
    }
}

impl IsZero for VariationTotals {
    fn is_zero(&self) -> bool {
        *self == VariationTotals::default()
    }
}

impl Semigroup for VariationTotals {
    fn plus_equals(&mut self, rhs: &Self) {
        self.sessions += rhs.sessions;
        self.sessions_with_revenue += rhs.sessions_with_revenue;
        self.events += rhs.events;
        self.revenue += rhs.revenue;
    }
}

impl Monoid for VariationTotals {
    fn zero() -> Self {
        VariationTotals::default()
    }
}

impl Abelian for VariationTotals {
    fn negate(&mut self) {
        self.sessions = -self.sessions;
        self.sessions_with_revenue = -self.sessions_with_revenue;
        self.events = -self.events;
        self.revenue = -self.revenue;
    }
}

impl Multiply<isize> for VariationTotals {
    type Output = VariationTotals;
    fn multiply(self, rhs: &isize) -> VariationTotals {
        // A collection's records come and go one at a time (`rhs` is 1 or -1); any other
        // multiplicity scales every figure alike.
        let k = *rhs as i64;
        VariationTotals {
            sessions: self.sessions * k,
            sessions_with_revenue: self.sessions_with_revenue * k,
            events: self.events * k,
            revenue: self.revenue * i128::from(k),
        }
    }
}

/// What a session in an experiment contributes: its project, figures and pairs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionFacts {
    /// The session's `project_id`.
    pub project_id: u64,
    /// Its totals as one session.
    pub totals: VariationTotals,
    /// Its sorted `(experiment_id, variation_id)` pairs.
    pub experiments: Vec<(u64, u64)>,
}

impl SessionFacts {
    /// The facts of a snapshot's session, if it is in any experiment.
    pub fn of(s: &Snapshot) -> Option<SessionFacts> {
        (!s.experiments.is_empty()).then(|| SessionFacts {
            project_id: s.project_id,
            totals: VariationTotals::of_session(s.event_count, s.revenue),
            experiments: s.experiments.clone(),
        })
    }

    /// The session's contribution to each of its variations.
    pub fn contributions(self) -> impl Iterator<Item = (Variation, VariationTotals)> {
        let (project_id, totals) = (self.project_id, self.totals);
        self.experiments.into_iter().map(move |(experiment_id, variation_id)| {
            let v = Variation {
                project_id,
                experiment_id,
                variation_id,
            };
            (v, totals)
        })
    }
}

/// A window's updates of [`ExperimentTotals::experiment_totals`] as each changed variation's
/// totals after the window, sorted by variation: a variation whose sessions all left (merged
/// away) reports zeros.
pub fn totals_after(
    updates: impl IntoIterator<Item = ((Variation, VariationTotals), isize)>,
) -> Vec<(Variation, VariationTotals)> {
    let mut changed: Vec<(Variation, bool, VariationTotals)> =
        updates.into_iter().map(|((v, t), diff)| (v, diff > 0, t)).collect();
    // Per variation, its new totals (diff +1) last.
    changed.sort_unstable();
    let mut out: Vec<(Variation, VariationTotals)> = Vec::new();
    for (v, added, t) in changed {
        match out.last_mut() {
            Some(last) if last.0 == v => {
                if added {
                    last.1 = t;
                }
            }
            _ => out.push((v, if added { t } else { VariationTotals::default() })),
        }
    }
    out
}

/// Writes one variation's totals after window `m` as a JSON line (without newline):
/// `{"window":m,"project_id":..,"experiment_id":..,"variation_id":..,"sessions":..,
/// "sessions_with_revenue":..,"events":..,"revenue":..}`.
pub fn write_totals_json(out: &mut Vec<u8>, m: u64, v: &Variation, t: &VariationTotals) {
    let fields: [(&str, i128); 8] = [
        ("window", m.into()),
        ("project_id", v.project_id.into()),
        ("experiment_id", v.experiment_id.into()),
        ("variation_id", v.variation_id.into()),
        ("sessions", t.sessions.into()),
        ("sessions_with_revenue", t.sessions_with_revenue.into()),
        ("events", t.events.into()),
        ("revenue", t.revenue),
    ];
    for (i, (name, value)) in fields.into_iter().enumerate() {
        out.push(if i == 0 { b'{' } else { b',' });
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        json::write_int(out, value);
    }
    out.push(b'}');
}

/// Extension trait: `snapshots.experiment_totals()`.
pub trait ExperimentTotals<'scope> {
    /// The totals of every experiment variation over the run's sessions, as a differential
    /// collection of `(variation, totals)` records: at each window, `-old, +new` for every
    /// variation whose totals the window's snapshots changed ([`totals_after`] reads them).
    /// A session counts in each variation it has, with its latest snapshot's figures; closed
    /// sessions keep counting, sessions merged into another stop (their events are the
    /// survivor's). The same for any number of workers. The snapshots pass through unchanged,
    /// returned first (see [`SessionCollection::session_collection`]).
    ///
    /// ```
    /// use sessionflow_operators::session::{ExperimentTotals, Snapshot, Variation, VariationTotals};
    /// use timely::dataflow::operators::{Capture, capture::Extract, ToStream};
    ///
    /// let snap = |id: &str, revenue: i128, exps: Vec<(u64, u64)>| Snapshot {
    ///     session_id: id.into(), gap_based: false, project_id: 7, visitor_id: "v".into(),
    ///     start: 0, end: 0, event_count: 3, revenue, experiments: exps, window: 0,
    ///     closed: false, opened_window: 0, opened_project: 7, merged_into: None,
    ///     json: String::new(), state: None };
    /// let captured = timely::example(move |scope| {
    ///     vec![snap("a", 500, vec![(1, 2)]), snap("b", 0, vec![(1, 2), (4, 1)]), snap("c", 0, vec![])]
    ///         .to_stream(scope)
    ///         .experiment_totals()
    ///         .1
    ///         .inner
    ///         .capture()
    /// });
    /// let mut totals: Vec<_> = captured.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// totals.sort();
    /// let v = |e, v| Variation { project_id: 7, experiment_id: e, variation_id: v };
    /// let t = |sessions, converted, events, revenue| VariationTotals {
    ///     sessions, sessions_with_revenue: converted, events, revenue };
    /// assert_eq!(totals, [
    ///     ((v(1, 2), t(2, 1, 6, 500)), 0, 1),
    ///     ((v(4, 1), t(1, 0, 3, 0)), 0, 1),
    /// ]);
    /// ```
    fn experiment_totals(self) -> (Self, VecCollection<'scope, u64, (Variation, VariationTotals), isize>)
    where
        Self: Sized;
}

impl<'scope> ExperimentTotals<'scope> for StreamVec<'scope, u64, Snapshot> {
    fn experiment_totals(self) -> (Self, VecCollection<'scope, u64, (Variation, VariationTotals), isize>) {
        // A session's experiments only grow: once in one, it stays (`session_collection`'s rule).
        let (snapshots, sessions) = self.session_collection(SessionFacts::of);
        let deltas = sessions.explode(SessionFacts::contributions);
        // Each worker sums its window's deltas per variation first: one update per variation
        // and window leaves the worker, not one per session and pair.
        let summed = deltas
            .inner
            .unary_frontier::<CapacityContainerBuilder<Vec<(Variation, u64, VariationTotals)>>, _, _, _>(
                Pipeline,
                "VariationDeltas",
                |_cap, _info| {
                    let mut pending: BTreeMap<u64, (Capability<u64>, HashMap<Variation, VariationTotals>)> =
                        BTreeMap::new();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| {
                            let Some(&t) = cap.least() else { return };
                            let slot = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), HashMap::new()));
                            for (v, _t, d) in data.drain(..) {
                                slot.1.entry(v).or_default().plus_equals(&d);
                            }
                        });
                        while let Some(entry) = pending.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let (t, (cap, sums)) = entry.remove_entry();
                            let mut session = output.session(&cap);
                            for (v, d) in sums {
                                if !d.is_zero() {
                                    session.give((v, t, d));
                                }
                            }
                        }
                    }
                },
            )
            .as_collection();
        (snapshots, summed.count_total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        crate::session::collection::tests::snap(false, None)
    }

    fn v(e: u64) -> Variation {
        Variation {
            project_id: 1,
            experiment_id: e,
            variation_id: 0,
        }
    }

    fn t(sessions: i64, revenue: i128) -> VariationTotals {
        VariationTotals {
            sessions,
            sessions_with_revenue: i64::from(revenue > 0),
            events: sessions,
            revenue,
        }
    }

    #[test]
    fn totals_add_cancel_and_scale() {
        let mut a = VariationTotals::of_session(3, 250);
        assert_eq!(
            a,
            VariationTotals {
                sessions: 1,
                sessions_with_revenue: 1,
                events: 3,
                revenue: 250
            }
        );
        a.plus_equals(&VariationTotals::of_session(2, -5));
        assert_eq!(
            a,
            VariationTotals {
                sessions: 2,
                sessions_with_revenue: 1,
                events: 5,
                revenue: 245
            }
        );
        let mut minus = a;
        minus.negate();
        assert_eq!(minus, a.multiply(&-1));
        a.plus_equals(&minus);
        assert!(a.is_zero());
        assert_eq!(VariationTotals::zero(), VariationTotals::default());
    }

    #[test]
    fn only_sessions_in_an_experiment_have_facts_and_each_pair_gets_them() {
        let mut s = snapshot();
        assert_eq!(SessionFacts::of(&s), None);
        s.experiments = vec![(1, 2), (3, 4)];
        s.revenue = 10;
        s.event_count = 4;
        let facts = SessionFacts::of(&s).expect("in experiments");
        let per: Vec<_> = facts.contributions().collect();
        let totals = VariationTotals::of_session(4, 10);
        assert_eq!(
            per,
            [
                (
                    Variation {
                        project_id: s.project_id,
                        experiment_id: 1,
                        variation_id: 2
                    },
                    totals
                ),
                (
                    Variation {
                        project_id: s.project_id,
                        experiment_id: 3,
                        variation_id: 4
                    },
                    totals
                ),
            ]
        );
    }

    #[test]
    fn a_window_reports_each_changed_variation_once_with_its_new_totals() {
        let updates = vec![
            ((v(2), t(1, 0)), -1),
            ((v(1), t(3, 5)), 1),
            ((v(2), t(2, 9)), 1),
            ((v(1), t(2, 5)), -1),
            // A variation whose only session was merged away.
            ((v(3), t(1, 0)), -1),
        ];
        assert_eq!(
            totals_after(updates),
            [(v(1), t(3, 5)), (v(2), t(2, 9)), (v(3), VariationTotals::default())]
        );
    }

    #[test]
    fn totals_lines_are_json() {
        let mut out = Vec::new();
        let totals = VariationTotals {
            sessions: 2,
            sessions_with_revenue: 1,
            events: 9,
            revenue: -3,
        };
        write_totals_json(
            &mut out,
            5,
            &Variation {
                project_id: 1,
                experiment_id: 2,
                variation_id: 3,
            },
            &totals,
        );
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"window": 5, "project_id": 1, "experiment_id": 2, "variation_id": 3,
                "sessions": 2, "sessions_with_revenue": 1, "events": 9, "revenue": -3})
        );
    }
}
