//! The experiment totals' sink: a JSON-lines file (replay, bounded runs) and the latest totals
//! for the metrics of a live run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::VecCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use super::files::SharedLineFile;
use crate::session::experiments::{totals_after, write_totals_json};
use crate::session::{Variation, VariationTotals};

/// Every variation's totals as of the latest window the sink completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatestTotals {
    /// The latest window whose changes are in `totals` (`None`: none yet).
    pub window: Option<u64>,
    /// Totals by variation (variations that emptied are left out).
    pub totals: BTreeMap<Variation, VariationTotals>,
}

impl LatestTotals {
    /// Takes window `m`'s changes ([`totals_after`]).
    pub fn apply(&mut self, m: u64, changes: &[(Variation, VariationTotals)]) {
        for (v, t) in changes {
            if *t == VariationTotals::default() {
                self.totals.remove(v);
            } else {
                self.totals.insert(*v, *t);
            }
        }
        self.window = Some(m);
    }
}

/// [`LatestTotals`] shared with another thread (the metrics server).
pub type SharedTotals = Arc<Mutex<LatestTotals>>;

/// Extension trait: `totals.sink_experiments(file, latest)`.
pub trait SinkExperiments<'scope> {
    /// Routes the experiment totals' updates to worker 0, which, once the frontier passed each
    /// window, writes a line per variation the window changed with its totals after it
    /// ([`totals_after`], [`write_totals_json`]) to `file`, sorted by variation (the file is
    /// sorted by `(window, project_id, experiment_id, variation_id)`, each variation's last
    /// line holds its final totals, byte-identical for any number of workers), and brings
    /// `latest` up to that window. Workers other than 0 pass `None` for both. Returns an empty
    /// stream whose frontier is the written frontier (to probe).
    ///
    /// ```
    /// use sessionflow_operators::sink::experiments::{LatestTotals, SinkExperiments};
    /// use sessionflow_operators::sink::files::LineFile;
    /// use sessionflow_operators::session::{Variation, VariationTotals};
    /// use differential_dataflow::AsCollection;
    /// use timely::dataflow::operators::{Probe, ToStream};
    /// use std::{cell::RefCell, rc::Rc, sync::{Arc, Mutex}};
    ///
    /// let path = std::env::temp_dir().join(format!("sf-doc-exp-{}.jsonl", std::process::id()));
    /// let v = |e| Variation { project_id: 1, experiment_id: e, variation_id: 0 };
    /// let t = |n| VariationTotals { sessions: n, sessions_with_revenue: 0, events: n, revenue: 0 };
    /// let latest = Arc::new(Mutex::new(LatestTotals::default()));
    /// let (p, l) = (path.clone(), Arc::clone(&latest));
    /// timely::execute_directly(move |worker| {
    ///     let file = Rc::new(RefCell::new(LineFile::create(&p).unwrap()));
    ///     let f = Some(file.clone());
    ///     let probe = worker.dataflow::<u64, _, _>(move |scope| {
    ///         // At window 0, variation 2 goes from 1 session to 2 and variation 1 appears.
    ///         vec![((v(2), t(1)), 0u64, -1isize), ((v(2), t(2)), 0, 1), ((v(1), t(1)), 0, 1)]
    ///             .to_stream(scope).as_collection().sink_experiments(f, Some(l)).probe().0
    ///     });
    ///     while !probe.done() { worker.step(); }
    ///     file.borrow_mut().finish().unwrap();
    /// });
    /// let text = std::fs::read_to_string(&path).unwrap();
    /// let lines: Vec<&str> = text.lines().collect();
    /// assert_eq!(lines.len(), 2);
    /// assert!(lines[0].starts_with("{\"window\":0,\"project_id\":1,\"experiment_id\":1,"));
    /// assert!(lines[1].contains("\"experiment_id\":2,\"variation_id\":0,\"sessions\":2,"));
    /// let latest = latest.lock().unwrap();
    /// assert_eq!(latest.window, Some(0));
    /// assert_eq!(latest.totals.get(&v(2)), Some(&t(2)));
    /// ```
    fn sink_experiments(self, file: Option<SharedLineFile>, latest: Option<SharedTotals>)
        -> StreamVec<'scope, u64, ()>;
}

impl<'scope> SinkExperiments<'scope> for VecCollection<'scope, u64, (Variation, VariationTotals), isize> {
    fn sink_experiments(
        self,
        file: Option<SharedLineFile>,
        latest: Option<SharedTotals>,
    ) -> StreamVec<'scope, u64, ()> {
        type Update = ((Variation, VariationTotals), u64, isize);
        type Window = Vec<((Variation, VariationTotals), isize)>;
        self.inner.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &Update| 0u64),
            "Experiments",
            move |_cap, _info| {
                let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
                move |(input, frontier), _output| {
                    input.for_each(|_time, data| {
                        for (d, t, r) in data.drain(..) {
                            windows.entry(t).or_default().push((d, r));
                        }
                    });
                    while let Some(entry) = windows.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let m = *entry.key();
                        let totals = totals_after(entry.remove());
                        if let Some(f) = &file {
                            let mut f = f.borrow_mut();
                            let mut line = Vec::with_capacity(256);
                            for (v, t) in &totals {
                                line.clear();
                                write_totals_json(&mut line, m, v, t);
                                f.write_line(&line);
                            }
                        }
                        if let Some(l) = &latest {
                            if let Ok(mut l) = l.lock() {
                                l.apply(m, &totals);
                            }
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_totals_follow_the_windows_and_drop_emptied_variations() {
        let v = |e| Variation {
            project_id: 1,
            experiment_id: e,
            variation_id: 0,
        };
        let t = |n| VariationTotals {
            sessions: n,
            sessions_with_revenue: 0,
            events: n,
            revenue: 0,
        };
        let mut l = LatestTotals::default();
        l.apply(3, &[(v(1), t(1)), (v(2), t(2))]);
        l.apply(4, &[(v(1), VariationTotals::default()), (v(2), t(5))]);
        assert_eq!(l.window, Some(4));
        assert_eq!(l.totals.into_iter().collect::<Vec<_>>(), [(v(2), t(5))]);
    }
}
