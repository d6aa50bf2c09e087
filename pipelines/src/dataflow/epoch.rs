//! The one epoch protocol every stateful operator of the dataflow follows.
//!
//! 1. **Stash**: an epoch's input batches wait in an [`EpochStash`] with a capability that
//!    holds the operator's output frontier back.
//! 2. **Process in order**: once every input's frontier has passed an epoch ([`ready`]), the
//!    epochs are taken oldest first, and inside an epoch the batches are put back in input
//!    order ([`restore_input_order`]): timely hands over one time's batches in no particular
//!    order.
//! 3. **Hold until durable**: the capabilities of processed epochs wait in [`Owing`] until what
//!    they wrote is durable (a broker's acknowledgement, a store commit).
//! 4. **Release**: they are dropped oldest first, so the probe passing an epoch means its
//!    output is written, and only then are input positions committed or API requests answered.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use timely::communication::Pull;
use timely::dataflow::channels::Message;
use timely::dataflow::operators::generic::InputHandleCore;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// Something that knows its place in the input order of its epoch.
pub trait Placed {
    /// The place: larger is later in the input.
    fn place(&self) -> u64;
}

/// Puts one epoch's batches back in input order. Timely delivers the batches of one time in
/// no particular order (an input handle sorts them by time with an unstable sort), while each
/// batch keeps the order its sender gave it: sorting the batches by their first item restores
/// the order, and a full sort backs that up should batches ever interleave.
pub fn restore_input_order<T: Placed>(batches: &mut Vec<Vec<T>>) {
    batches.retain(|b| !b.is_empty());
    batches.sort_by_key(|b| b[0].place());
    let mut last = 0u64;
    let ordered = batches.iter().flatten().all(|item| {
        let place = item.place();
        let ok = place >= last;
        last = place;
        ok
    });
    if !ordered {
        let mut all: Vec<T> = batches.drain(..).flatten().collect();
        all.sort_by_key(Placed::place);
        batches.push(all);
    }
}

/// Each epoch's batches held until every input's frontier has passed the epoch, with a
/// capability that holds the output frontier back until the epoch is processed.
pub struct EpochStash<T> {
    epochs: BTreeMap<u64, (Capability<u64>, Vec<Vec<T>>)>,
}

impl<T> Default for EpochStash<T> {
    fn default() -> Self {
        EpochStash {
            epochs: BTreeMap::new(),
        }
    }
}

impl<T> EpochStash<T> {
    /// Holds the `batches` of epoch `time`, taking them out of the input's containers
    /// (`capability` is called for an epoch's first batch).
    pub fn hold<'a>(
        &mut self,
        time: u64,
        capability: impl FnOnce() -> Capability<u64>,
        batches: impl Iterator<Item = &'a mut Vec<T>>,
    ) where
        T: 'a,
    {
        let held = self
            .epochs
            .entry(time)
            .or_insert_with(|| (capability(), Vec::new()));
        held.1.extend(batches.map(std::mem::take));
    }

    /// Stashes everything `input` has received, each epoch with a capability for output port
    /// 0.
    pub fn absorb<P: Pull<Message<u64, Vec<T>>>>(
        &mut self,
        input: &mut InputHandleCore<u64, Vec<T>, P>,
    ) {
        self.absorb_with(input, |_| {});
    }

    /// [`EpochStash::absorb`], calling `each` with the capability of every batch received
    /// (to retain capabilities for other outputs).
    pub fn absorb_with<P: Pull<Message<u64, Vec<T>>>>(
        &mut self,
        input: &mut InputHandleCore<u64, Vec<T>, P>,
        mut each: impl FnMut(&InputCapability<u64>),
    ) {
        input.for_each_stamp(|cap, data| {
            if let Some(time) = cap.least() {
                each(&cap);
                self.hold(*time, || cap.delayed(time, 0), data);
            }
        });
    }

    /// The oldest epoch held.
    pub fn oldest(&self) -> Option<u64> {
        self.epochs.keys().next().copied()
    }

    /// Epoch `time`'s batches, in the order they arrived, with their capability.
    pub fn take(&mut self, time: u64) -> Option<(Capability<u64>, Vec<Vec<T>>)> {
        self.epochs.remove(&time)
    }

    /// Epoch `time`'s batches in input order, with their capability.
    pub fn take_in_order(&mut self, time: u64) -> Option<(Capability<u64>, Vec<Vec<T>>)>
    where
        T: Placed,
    {
        let (capability, mut batches) = self.epochs.remove(&time)?;
        restore_input_order(&mut batches);
        Some((capability, batches))
    }

    /// The oldest epoch `frontier` has passed, with its capability.
    pub fn next_ready(
        &mut self,
        frontier: &MutableAntichain<u64>,
    ) -> Option<(Capability<u64>, Vec<Vec<T>>)> {
        let entry = self.epochs.first_entry()?;
        if frontier.less_equal(entry.key()) {
            return None;
        }
        Some(entry.remove())
    }
}

/// The oldest of the `held` epochs, if every input's frontier has passed it.
pub fn ready(frontiers: &[&MutableAntichain<u64>], held: &[Option<u64>]) -> Option<u64> {
    let oldest = held.iter().flatten().min().copied()?;
    frontiers
        .iter()
        .all(|f| !f.less_equal(&oldest))
        .then_some(oldest)
}

/// Processed epochs' capabilities, each with what it waits for (`W`: a store commit's ticket,
/// a publisher's acknowledgements), released oldest first once that is durable: the probe
/// passing an epoch then means its output is written.
pub struct Owing<W>(VecDeque<(W, Vec<Capability<u64>>)>);

impl<W> Default for Owing<W> {
    fn default() -> Self {
        Owing(VecDeque::new())
    }
}

impl<W> Owing<W> {
    /// Holds `capabilities` until `what` is durable.
    pub fn hold(&mut self, what: W, capabilities: Vec<Capability<u64>>) {
        self.0.push_back((what, capabilities));
    }

    /// Drops capabilities, oldest first, while `durable` says what they wait for is durable;
    /// true when none is left waiting.
    pub fn release_while(&mut self, mut durable: impl FnMut(&mut W) -> bool) -> bool {
        while let Some((what, _)) = self.0.front_mut() {
            if !durable(what) {
                return false;
            }
            self.0.pop_front();
        }
        true
    }
}

/// Something another thread calls to schedule operator `address` (a commit finished).
pub fn waker(worker: &timely::worker::Worker, address: &[usize]) -> Arc<dyn Fn() + Send + Sync> {
    let activator = Mutex::new(worker.sync_activator_for(address.to_vec()));
    Arc::new(move || {
        // A worker that has gone away has nothing left to wake.
        let _ = activator.lock().map(|a| a.activate());
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::{Operator, Probe};
    use timely::dataflow::{InputHandle, ProbeHandle};

    impl Placed for (u64, u32) {
        fn place(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn batches_are_put_back_in_input_order() {
        let mut batches = vec![
            vec![(7, 0), (9, 0)],
            vec![],
            vec![(1, 0), (2, 0)],
            vec![(3, 0), (5, 0)],
        ];
        restore_input_order(&mut batches);
        let places: Vec<u64> = batches.iter().flatten().map(|p| p.0).collect();
        assert_eq!(places, [1, 2, 3, 5, 7, 9]);
        // Interleaved batches (never sent by one sender, but possible from several).
        let mut batches = vec![vec![(2, 0), (8, 0)], vec![(1, 0), (5, 0), (9, 0)]];
        restore_input_order(&mut batches);
        let places: Vec<u64> = batches.iter().flatten().map(|p| p.0).collect();
        assert_eq!(places, [1, 2, 5, 8, 9]);
    }

    #[test]
    fn ready_waits_for_every_frontier() {
        let mut a = MutableAntichain::from_elem(0u64);
        let b = MutableAntichain::from_elem(3u64);
        assert_eq!(ready(&[&a, &b], &[Some(2), None]), None);
        a.update_iter([(0, -1), (5, 1)]);
        assert_eq!(ready(&[&a, &b], &[Some(2), None]), Some(2));
        assert_eq!(ready(&[&a, &b], &[Some(3), Some(4)]), None);
        assert_eq!(ready(&[&a, &b], &[None, None]), None);
    }

    /// Four workers each send thousands of numbered items of every epoch to worker 0 (many
    /// batches per epoch), in reverse epoch order; worker 0's stash must process epochs
    /// oldest first and each epoch in input order, and the probe must pass an epoch only once
    /// its capability is released from [`Owing`].
    #[test]
    fn a_stash_processes_epochs_in_order_and_in_input_order() {
        const EPOCHS: u64 = 4;
        const ITEMS: u32 = 5000;
        let results = timely::execute(timely::Config::process(4), |worker| {
            let index = worker.index() as u64;
            let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(u64, u32)>>>::new();
            let probe = ProbeHandle::new();
            let seen = Rc::new(RefCell::new(Vec::new()));
            let sink = seen.clone();
            worker.dataflow::<u64, _, _>(|scope| {
                input
                    .to_stream(scope)
                    .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                        Exchange::new(|_: &(u64, u32)| 0),
                        "Stash",
                        |_, _| {
                            let mut stash = EpochStash::default();
                            let mut owing = Owing::default();
                            move |(input, frontier), _output| {
                                stash.absorb(input);
                                while let Some(epoch) = ready(&[frontier], &[stash.oldest()]) {
                                    let (cap, batches) = stash.take_in_order(epoch).expect("held");
                                    sink.borrow_mut().push((
                                        epoch,
                                        batches.into_iter().flatten().collect::<Vec<_>>(),
                                    ));
                                    owing.hold(epoch, vec![cap]);
                                }
                                // Epochs are "durable" once a later one was processed, or
                                // at the end.
                                let newest = sink.borrow().last().map(|(e, _)| *e);
                                owing.release_while(|e| frontier.is_empty() || Some(*e) < newest);
                            }
                        },
                    )
                    .probe_with(&probe);
            });
            // Worker w's items of epoch e are numbered so that all of epoch e, across
            // workers, has one input order: place = w * ITEMS + i.
            input.advance_to(0);
            for epoch in 0..EPOCHS {
                for i in 0..ITEMS {
                    input.send((
                        epoch * 1_000_000 + index * u64::from(ITEMS) + u64::from(i),
                        i,
                    ));
                }
                input.advance_to(epoch + 1);
            }
            drop(input);
            while worker.step_or_park(None) {}
            assert!(probe.done());
            seen.take()
        })
        .unwrap()
        .join();
        let mut seen: Vec<_> = results.into_iter().map(Result::unwrap).collect();
        let worker0 = seen.remove(0);
        assert!(seen.iter().all(Vec::is_empty));
        let epochs: Vec<u64> = worker0.iter().map(|(e, _)| *e).collect();
        assert_eq!(epochs, (0..EPOCHS).collect::<Vec<_>>());
        for (epoch, items) in worker0 {
            assert_eq!(items.len(), 4 * ITEMS as usize);
            assert!(
                items.windows(2).all(|w| w[0].0 < w[1].0),
                "epoch {epoch} out of input order"
            );
        }
    }
}
