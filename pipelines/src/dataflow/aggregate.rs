//! Aggregate: Gnocchi's aggregation of every metric this worker owns, the alarms on them, and
//! the engine's watermark carried in band.
//!
//! Measures arrive exchanged by resource (from the sinks' `gnocchi://` publishers and the
//! API), alarm changes by the alarm's metric. Epoch by epoch, once every input has passed it:
//! alarm changes first, then the measures, one batch per (notification, metric). The epochs
//! pass once the store checkpoint they owe is written (off this thread).
//!
//! **Progress in band.** After an epoch in which its newest measure moved, each worker sends
//! that event time to every worker through a feedback edge that adds one to the epoch: an
//! epoch is processed only once every worker's progress from the epochs before it has
//! arrived, so the watermark `no_data_grace` alarms are judged by at epoch `e` is the newest
//! measure of all epochs before `e`, whatever the number of workers or processes. When every
//! input, the feedback included, is exhausted, every worker has aggregated everything: the
//! watermark is final, and the end of a bounded input closes every alarm's last bucket.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use meterflow_engine::metrics::Diag;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::{Capability, ConnectLoop, Feedback};
use timely::dataflow::StreamVec;

use super::epoch::{ready, waker, EpochStash, Owing};
use crate::alarms::AlarmEdit;
use crate::committer::Checkpointed;
use crate::control::Live;
use crate::feeds::Feed;
use crate::storage::{Aggregator, Measure, StoreOptions};

/// One worker's newest event time (ns), on its way to worker `route`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// The worker it goes to.
    pub route: u64,
    /// The newest measure the sending worker has aggregated.
    pub newest: i64,
}

/// What the Aggregate operator works with besides its inputs.
pub struct AggregateParts {
    /// This worker's aggregation, alarms and checkpoints.
    pub aggregator: Rc<RefCell<Aggregator>>,
    /// The `gnocchi://` options of each origin of measures.
    pub options: Arc<StoreOptions>,
    /// Counters.
    pub diag: Rc<RefCell<Diag>>,
    /// Where a store failure is reported.
    pub live: Arc<Live>,
    /// Serving the API: the end of the inputs is not the end of the data, so alarms' last
    /// buckets stay open.
    pub listening: bool,
}

/// The Aggregate operator: aggregates `measures`, applies alarm `edits`, evaluates the alarms
/// on this worker's metrics; out come the feeds of the alarms over several metrics (for the
/// Cross operator).
pub fn aggregate<'s>(
    measures: StreamVec<'s, u64, Measure>,
    edits: StreamVec<'s, u64, AlarmEdit>,
    parts: AggregateParts,
) -> StreamVec<'s, u64, Feed> {
    let AggregateParts {
        aggregator,
        options,
        diag,
        live,
        listening,
    } = parts;
    let scope = measures.scope();
    let peers = scope.peers() as u64;
    let (loop_handle, progress) = scope.feedback::<Vec<Progress>>(1);
    let mut builder = OperatorBuilder::new("Aggregate".to_owned(), scope);
    let info = builder.operator_info();
    let mut measures = builder.new_input(measures, Exchange::new(|m: &Measure| m.route));
    let mut edits = builder.new_input(edits, Exchange::new(|e: &AlarmEdit| e.target()));
    let mut progress = builder.new_input(progress, Exchange::new(|p: &Progress| p.route));
    let (feeds_out, feeds) = builder.new_output::<Vec<Feed>>();
    let (progress_out, progress_stream) = builder.new_output::<Vec<Progress>>();
    let mut feeds_out = OutputBuilder::from(feeds_out);
    let mut progress_out = OutputBuilder::from(progress_out);
    progress_stream.connect_loop(loop_handle);
    aggregator
        .borrow_mut()
        .wake_with(waker(scope.worker(), &info.address));
    builder.build(move |mut capabilities| {
        // Progress goes out only at epochs this worker aggregated measures in: its default
        // capability would hold every worker's feedback back.
        capabilities.truncate(1);
        // Held until the store has the last epoch: the probe passing the end means every
        // checkpoint is committed.
        let mut last = capabilities.pop();
        let mut stash = EpochStash::default();
        let mut changes = EpochStash::default();
        let mut arrived = EpochStash::default();
        // Per epoch with measures, the capability to send this worker's progress at it.
        let mut to_report: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        let mut reported = i64::MIN;
        let mut owing = Owing::default();
        move |frontiers| {
            let (frontier, edits_frontier, progress_frontier) =
                (&frontiers[0], &frontiers[1], &frontiers[2]);
            stash.absorb_with(&mut measures, |cap| {
                if let Some(time) = cap.least() {
                    to_report
                        .entry(*time)
                        .or_insert_with(|| cap.delayed(time, 1));
                }
            });
            changes.absorb(&mut edits);
            arrived.absorb(&mut progress);
            let mut feeds_handle = feeds_out.activate();
            let mut progress_handle = progress_out.activate();
            let mut diag = diag.borrow_mut();
            let mut aggregator = aggregator.borrow_mut();
            // Epoch by epoch, once every input passed it: the watermark the epochs before it
            // reached, then alarm changes, then the measures. The epochs pass (their
            // capabilities dropped) once the checkpoint they owe is written: one commit for
            // all that were ready, and for all processed while one was in flight.
            let mut done = Vec::new();
            while let Some(epoch) = ready(
                &[frontier, edits_frontier, progress_frontier],
                &[stash.oldest(), changes.oldest(), arrived.oldest()],
            ) {
                let mut held = Vec::new();
                if let Some((capability, batches)) = arrived.take(epoch) {
                    let newest = batches.iter().flatten().map(|p| p.newest).max();
                    aggregator.advance_watermark(newest.unwrap_or(i64::MIN), &mut diag);
                    held.push(capability);
                }
                if let Some((capability, batches)) = changes.take(epoch) {
                    aggregator.edit_alarms(batches.into_iter().flatten().collect(), &mut diag);
                    held.push(capability);
                }
                if let Some((capability, batches)) = stash.take(epoch) {
                    let mut measures: Vec<Measure> = batches.into_iter().flatten().collect();
                    aggregator.process(&mut measures, &options, &mut diag);
                    held.push(capability);
                }
                if let Some(capability) = to_report.remove(&epoch) {
                    let newest = aggregator.newest();
                    if newest > reported {
                        reported = newest;
                        let mut session = progress_handle.session(&capability);
                        for route in 0..peers {
                            session.give(Progress { route, newest });
                        }
                    }
                }
                // What the epoch sends the cross operators goes out at the epoch.
                let mut feeds = aggregator.take_feeds();
                if let (false, Some(cap)) = (feeds.is_empty(), held.first()) {
                    feeds_handle.session(cap).give_container(&mut feeds);
                }
                done.append(&mut held);
            }
            if let Some(ticket) = aggregator.settle(&mut diag) {
                owing.hold(ticket, done);
            }
            aggregator.checkpoint_if_due(&mut diag);
            let exhausted = [frontier, edits_frontier, progress_frontier]
                .iter()
                .all(|f| f.is_empty());
            if exhausted {
                // Every worker has aggregated everything and its progress has arrived: the
                // watermark is final, so what no_data_grace alarms decide does not depend on
                // which worker got here first.
                if let Some(cap) = last.take() {
                    // The end of a bounded input closes every bucket.
                    if !listening {
                        aggregator.close_alarms(&mut diag);
                        let mut feeds = aggregator.take_feeds();
                        if !feeds.is_empty() {
                            // After every epoch of every worker: each metric's last word.
                            feeds_handle
                                .session(&cap.delayed(&u64::MAX))
                                .give_container(&mut feeds);
                        }
                    }
                    aggregator.checkpoint_all(&mut diag);
                    if let Some(why) = aggregator.failure() {
                        live.fail(why);
                    }
                    drop(cap);
                }
            } else if let (Some(cap), Some(t)) = (
                last.as_mut(),
                [frontier, edits_frontier, progress_frontier]
                    .iter()
                    .filter_map(|f| f.frontier().iter().min().copied())
                    .min(),
            ) {
                if *cap.time() < t {
                    cap.downgrade(&t);
                }
            }
            let committed = aggregator.committed(&mut diag);
            owing.release_while(|ticket| *ticket <= committed);
            if let Some(why) = aggregator.failure() {
                live.fail(why);
            }
        }
    });
    feeds
}
