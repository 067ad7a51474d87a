//! An exchange that hands the records staying on their worker on as the container they came
//! in: [`local_first`].
//!
//! Timely's `Exchange` pact copies every record into a buffer per target worker (a buffer of
//! ~8 KiB, sent when full), the records that stay on the worker included. When most records
//! already are where they belong (the session operator behind a source that reads the
//! partitions the keys were written to, see [`Routing`](crate::session::Routing)), that copy
//! is most of the exchange's work. [`LocalFirst`] instead takes out only the records bound
//! for other workers (each moved once, into the usual per-target buffers) and passes the rest
//! on in the sender's own container, which the channel to the worker itself moves as a whole.
//!
//! Which worker gets a record is the same as with `Exchange::new(hash)`: `hash % workers` (the
//! low bits when the workers are a power of two, the same number). The records of one
//! container reach their worker in another order (the removal swaps the last record into
//! each gap), so a consumer must not depend on the order within a time; the session store
//! sorts each window's records by a total order of its own.

use timely::communication::Push;
use timely::container::{CapacityContainerBuilder, ContainerBuilder, PushInto};
use timely::dataflow::channels::pact::DistributorPact;
use timely::dataflow::channels::pushers::exchange::Distributor;
use timely::dataflow::channels::Message;
use timely::progress::Stamp;

/// A pact like `Exchange::new(hash)` whose records for worker `local` (the worker that
/// connects it: `scope.index()`) stay in the sender's container (see the module doc).
pub fn local_first<D, H>(local: usize, hash: H) -> DistributorPact<impl FnOnce(usize) -> LocalFirst<D, H>>
where
    H: FnMut(&D) -> u64 + 'static,
{
    DistributorPact(move |peers| LocalFirst::new(local, peers, hash))
}

/// The [`Distributor`] of [`local_first`].
pub struct LocalFirst<D, H> {
    /// Index of the worker that sends (its own pusher gets the container).
    local: usize,
    /// Buffers of the records bound for each other worker.
    builders: Vec<CapacityContainerBuilder<Vec<D>>>,
    /// The record's target is `hash % workers`.
    hash: H,
}

impl<D, H> LocalFirst<D, H> {
    /// A distributor for worker `local` of `peers` workers.
    pub fn new(local: usize, peers: usize, hash: H) -> Self {
        LocalFirst {
            local,
            builders: std::iter::repeat_with(Default::default).take(peers).collect(),
            hash,
        }
    }
}

impl<D, H> Distributor<Vec<D>> for LocalFirst<D, H>
where
    D: 'static,
    H: FnMut(&D) -> u64,
{
    fn partition<T: Clone, P: Push<Message<T, Vec<D>>>>(
        &mut self,
        container: &mut Vec<D>,
        stamp: &Stamp<T>,
        pushers: &mut [P],
    ) {
        let peers = pushers.len() as u64;
        let local = self.local;
        // Remote records out, each moved once: the last record fills the gap and is looked
        // at next.
        let mut i = 0;
        while i < container.len() {
            let target = ((self.hash)(&container[i]) % peers) as usize;
            if target == local {
                i += 1;
                continue;
            }
            let builder = &mut self.builders[target];
            builder.push_into(container.swap_remove(i));
            while let Some(full) = builder.extract() {
                Message::push_at(full, stamp.clone(), &mut pushers[target]);
            }
        }
        if container.is_empty() {
            return;
        }
        // The rest goes on whole. The sender keeps a buffer of the same capacity for its
        // next batch (else it would grow one afresh, moving its records again as it does).
        let capacity = container.capacity();
        let mut batch = std::mem::replace(container, Vec::with_capacity(capacity));
        Message::push_at(&mut batch, stamp.clone(), &mut pushers[local]);
    }

    fn flush<T: Clone, P: Push<Message<T, Vec<D>>>>(&mut self, stamp: &Stamp<T>, pushers: &mut [P]) {
        for (builder, pusher) in self.builders.iter_mut().zip(pushers.iter_mut()) {
            while let Some(container) = builder.finish() {
                Message::push_at(container, stamp.clone(), pusher);
            }
        }
    }

    fn relax(&mut self) {
        for builder in &mut self.builders {
            builder.relax();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::operator::Operator;
    use timely::dataflow::operators::{Inspect, ToStream};

    use super::*;

    type Rec = (u64, usize);

    /// Every record reaches worker `hash % workers` exactly once, at its time, for worker
    /// counts that are and are not powers of two, from containers that mix local and remote
    /// records.
    #[test]
    fn every_record_reaches_its_worker_once_at_its_time() {
        for workers in [1usize, 2, 3, 4] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let shared = Arc::clone(&seen);
            timely::execute(timely::Config::process(workers), move |worker| {
                let index = worker.index();
                let seen = Arc::clone(&shared);
                worker.dataflow::<u64, _, _>(|scope| {
                    // Worker w sends (x, w) for x in 0..500 at time x % 5: each container
                    // holds records for every worker.
                    let records: Vec<Rec> = (0..500).map(|x| (x, index)).collect();
                    records
                        .to_stream(scope)
                        .unary::<CapacityContainerBuilder<Vec<Rec>>, _, _, _>(Pipeline, "AtTimes", |_, _| {
                            move |input, output| {
                                input.for_each(|time, data: &mut Vec<Rec>| {
                                    for r in data.drain(..) {
                                        output.session(&time.delayed(&(r.0 % 5), 0)).give(r);
                                    }
                                });
                            }
                        })
                        .unary::<CapacityContainerBuilder<Vec<(usize, u64, Rec)>>, _, _, _>(
                            local_first(index, |r: &Rec| r.0 * 7),
                            "Check",
                            move |_, _| {
                                move |input, output| {
                                    input.for_each(|time, data: &mut Vec<Rec>| {
                                        let t = time.least().copied().unwrap_or(u64::MAX);
                                        let cap = time.delayed(&t, 0);
                                        for r in data.drain(..) {
                                            output.session(&cap).give((index, t, r));
                                        }
                                    });
                                }
                            },
                        )
                        .inspect(move |x| seen.lock().expect("lock").push(*x));
                });
            })
            .expect("timely runs");
            let mut got = seen.lock().expect("lock").clone();
            got.sort();
            let mut want: Vec<(usize, u64, Rec)> = (0..workers)
                .flat_map(|from| (0..500u64).map(move |x| ((x * 7 % workers as u64) as usize, x % 5, (x, from))))
                .collect();
            want.sort();
            assert_eq!(got, want, "{workers} workers");
        }
    }
}
