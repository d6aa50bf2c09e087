//! One worker: builds its operators from the prepared run and runs them (worker 0 also reads
//! the inputs, see `feed`), reporting its counters.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use meterflow_connectors::gnocchi::store::Partition as StorePartition;
use meterflow_engine::chunk::Chunk;
use meterflow_engine::metrics::{Counters, Diag};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use super::aggregate::{self, AggregateParts};
use super::feed::{feed, ApiFeed, CheckpointFeed, PUBLISH_EVERY};
use super::{
    cross, decode, transform, Decoder, Prepared, StoreParts, Transformer, CHECKPOINT_EVERY,
};
use crate::alarms::{owns, AlarmEdit, Alarms};
use crate::checkpoint::Barrier;
use crate::feeds::Feed;
use crate::storage::{Aggregator, CrossStage, Measure};

/// The inputs worker 0 feeds (the others drop theirs).
struct Inputs {
    chunks: InputHandle<u64, CapacityContainerBuilder<Vec<Chunk>>>,
    measures: InputHandle<u64, CapacityContainerBuilder<Vec<Measure>>>,
    alarms: InputHandle<u64, CapacityContainerBuilder<Vec<AlarmEdit>>>,
    barriers: InputHandle<u64, CapacityContainerBuilder<Vec<Barrier>>>,
}

/// Runs one worker to the end; its counters and (worker 0) the bytes it read.
pub(super) fn run(
    worker: &mut timely::worker::Worker,
    shared: &Prepared,
) -> Result<(Counters, u64), String> {
    let index = worker.index();
    let diag = Rc::new(RefCell::new(
        Diag::with_sinks(shared.sink_names.len()).with_inputs(shared.names.clone()),
    ));
    let mut inputs = Inputs {
        chunks: InputHandle::new(),
        measures: InputHandle::new(),
        alarms: InputHandle::new(),
        barriers: InputHandle::new(),
    };
    let probe = ProbeHandle::new();
    let aggregator = aggregator(shared, index);
    build(
        worker,
        shared,
        &mut inputs,
        aggregator.clone(),
        &diag,
        &probe,
    );
    let live = &shared.live;
    let mut result = Ok(0);
    if index == 0 {
        result = feed_inputs(worker, shared, inputs, &probe, &diag);
    } else {
        drop(inputs);
        // (Worker 0 runs the dataflow to its end inside `feed`; once no dataflow is left,
        // `step_or_park` returns false, so each worker loops exactly once more.)
        let mut published = Instant::now();
        while worker.step_or_park(Some(Duration::from_millis(100))) {
            if published.elapsed() >= PUBLISH_EVERY {
                live.publish(index, &diag.borrow().counters);
                published = Instant::now();
            }
        }
    }
    let counters = diag.borrow().counters.clone();
    live.publish(index, &counters);
    if let Some(e) = aggregator
        .as_ref()
        .and_then(|a| a.borrow().failure().map(str::to_owned))
    {
        result = result.and(Err(e));
    }
    result.map(|bytes| (counters, bytes))
}

/// Worker 0: feeds the inputs, the API's requests and the checkpoints' barriers in.
fn feed_inputs(
    worker: &mut timely::worker::Worker,
    shared: &Prepared,
    inputs: Inputs,
    probe: &ProbeHandle<u64>,
    diag: &RefCell<Diag>,
) -> Result<u64, String> {
    let peers = worker.peers() as u64;
    let Inputs {
        chunks,
        measures,
        alarms,
        barriers,
    } = inputs;
    let api = shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|requests| ApiFeed {
            requests,
            input: measures,
            alarm_input: alarms,
            pending: Vec::new(),
            peers,
        });
    let checkpoint = shared.checkpointing.as_ref().map(|c| CheckpointFeed {
        checkpoints: c.checkpoints.clone(),
        every: c.every,
        input: Some(barriers),
        names: c.identities.clone(),
        stats: c.stats.clone(),
        peers,
        next_number: c.next_number,
        last: Instant::now(),
        in_flight: None,
        published: None,
        changes: 0,
    });
    feed(
        worker,
        chunks,
        api,
        checkpoint,
        probe,
        (&shared.readers, &shared.first_data),
        shared.progress.clone().map(|p| (p, shared.total_bytes)),
        peers,
        &shared.live,
        diag,
    )
}

/// This worker's aggregation of the store's metrics it owns, with their alarms.
fn aggregator(shared: &Prepared, index: usize) -> Option<Rc<RefCell<Aggregator>>> {
    let store = shared.store.as_ref()?;
    let plan = &shared.plan;
    let share = store.shares.lock().unwrap_or_else(|p| p.into_inner())[index]
        .take()
        .unwrap_or_default();
    let alarms = alarms(shared, store, index, false);
    let mut aggregator = Aggregator::new(store.store.clone(), plan.clone(), share, shared.durable)
        .with_alarms(alarms)
        .with_cross_alarms(store.cross_alarms.iter());
    if shared.listening {
        aggregator.checkpoint_every(CHECKPOINT_EVERY);
    }
    aggregator.forget_after(shared.forget_after);
    Some(Rc::new(RefCell::new(aggregator)))
}

/// This worker's evaluation of the alarms over several metrics it owns.
fn cross_stage(shared: &Prepared, index: usize) -> Option<CrossStage> {
    let store = shared.store.as_ref()?;
    let alarms = alarms(shared, store, index, true);
    let mut stage = CrossStage::new(
        store.store.clone(),
        (index, shared.workers),
        alarms,
        shared.durable,
    );
    if shared.listening {
        stage.checkpoint_every(CHECKPOINT_EVERY);
    }
    Some(stage)
}

/// The alarms worker `index` evaluates: those over one metric it owns, or (`cross`) those
/// over several metrics.
fn alarms(shared: &Prepared, store: &StoreParts, index: usize, cross: bool) -> Alarms {
    let plan = &shared.plan;
    let notifier = shared
        .notifier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Alarms::load(
        (&plan.alarms, plan.alarms_declared),
        &store.stored_alarms,
        &|a| owns(a, (index, shared.workers), cross),
        notifier,
    )
}

/// This worker's transformers, with the state the run resumes from.
fn transformer(shared: &Prepared, index: usize) -> Transformer {
    let mut transformer = Transformer::new(&shared.plan, &shared.factories)
        .with_dead_letter(shared.dead_letter.as_ref().map(|d| d.handle()));
    if let Some(span) = shared.forget_after {
        transformer = transformer.forget_after(span);
    }
    if let Some(c) = &shared.checkpointing {
        transformer = transformer.with_checkpoints(c.checkpoints.clone(), index);
        if let Some(loaded) = &c.loaded {
            for message in transformer.restore(loaded, (index, shared.workers)) {
                let mut said = c.said.lock().unwrap_or_else(|p| p.into_inner());
                if said.insert(message.clone()) {
                    tracing::warn!("{message}");
                }
            }
        }
    }
    if let Some(store) = &shared.store {
        transformer = transformer.with_resource_events(
            &shared.resource_rules,
            &store.store,
            StorePartition {
                index: index as u32,
                count: shared.workers as u32,
            },
        );
    }
    transformer
}

/// Builds the dataflow: Decode → Transform → (with a store) Aggregate → Cross, probed.
fn build(
    worker: &mut timely::worker::Worker,
    shared: &Prepared,
    inputs: &mut Inputs,
    aggregator: Option<Rc<RefCell<Aggregator>>>,
    diag: &Rc<RefCell<Diag>>,
    probe: &ProbeHandle<u64>,
) {
    let index = worker.index();
    let peers = worker.peers() as u64;
    let plan = &shared.plan;
    let cross = cross_stage(shared, index);
    let transformer = transformer(shared, index);
    worker.dataflow::<u64, _, _>(|scope| {
        // Events for event alarms when those can exist (defined, or created through the
        // API), and for event sinks.
        let alarm_events = cross.is_some() && (shared.listening || plan.has_event_alarms());
        let decoder = Decoder::new(plan.clone(), shared.names.clone())
            .with_dead_letter(shared.dead_letter.as_ref().map(|d| d.handle()))
            .with_max_line(shared.max_line)
            .with_events(alarm_events || plan.publishes_events());
        let (routed, events) =
            decode::decode(inputs.chunks.to_stream(scope), decoder, diag.clone());
        let measures = transform::transform(
            routed,
            events.clone(),
            inputs.barriers.to_stream(scope),
            transformer,
            diag.clone(),
        );
        let (Some(aggregator), Some(stage)) = (aggregator, cross) else {
            measures.probe_with(probe);
            return;
        };
        // Every worker's cross operator holds every event alarm.
        let copies = if alarm_events { peers } else { 0 };
        let events = events.flat_map(move |e| {
            (0..copies).map(move |route| Feed::Event {
                route,
                event: e.event.clone(),
            })
        });
        let parts = AggregateParts {
            aggregator,
            options: shared.store_options.clone(),
            diag: diag.clone(),
            live: shared.live.clone(),
            listening: shared.listening,
        };
        let feeds = aggregate::aggregate(
            measures.concat(inputs.measures.to_stream(scope)),
            inputs.alarms.to_stream(scope),
            parts,
        );
        cross::cross(
            feeds.concat(events),
            stage,
            diag.clone(),
            shared.live.clone(),
        )
        .probe_with(probe);
    });
}
