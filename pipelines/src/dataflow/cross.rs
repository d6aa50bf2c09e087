//! Cross: the alarms over several metrics (and the event alarms), evaluated at every instant
//! all their metrics have reached.
//!
//! Feeds (closed buckets and event times of the metrics that feed such alarms, their API
//! changes, events) arrive exchanged by alarm. Each epoch waits for the input frontier to pass
//! it and passes once its checkpoint is written.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use meterflow_engine::metrics::Diag;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Operator;
use timely::dataflow::StreamVec;

use super::epoch::{waker, EpochStash, Owing};
use crate::committer::Checkpointed;
use crate::control::Live;
use crate::feeds::Feed;
use crate::storage::CrossStage;

/// The Cross operator: evaluates the alarms over several metrics that `stage` holds.
pub fn cross<'s>(
    feeds: StreamVec<'s, u64, Feed>,
    mut stage: CrossStage,
    diag: Rc<RefCell<Diag>>,
    live: Arc<Live>,
) -> StreamVec<'s, u64, ()> {
    let scope = feeds.scope();
    feeds.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|f: &Feed| f.route()),
        "Cross",
        move |_, info| {
            let mut stash = EpochStash::default();
            let mut owing = Owing::default();
            stage.wake_with(waker(scope.worker(), &info.address));
            move |(input, frontier), _output| {
                stash.absorb(input);
                let mut diag = diag.borrow_mut();
                let mut done = Vec::new();
                while let Some((capability, batches)) = stash.next_ready(frontier) {
                    stage.process(batches.into_iter().flatten().collect(), &mut diag);
                    done.push(capability);
                }
                if let Some(ticket) = stage.settle(&mut diag) {
                    owing.hold(ticket, done);
                }
                if frontier.is_empty() {
                    stage.checkpoint_all(&mut diag);
                } else {
                    stage.checkpoint_if_due(&mut diag);
                }
                let committed = stage.committed(&mut diag);
                owing.release_while(|ticket| *ticket <= committed);
                if let Some(why) = stage.failure() {
                    live.fail(why);
                }
            }
        },
    )
}
