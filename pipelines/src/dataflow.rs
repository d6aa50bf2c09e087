//! The timely dataflow a plan runs as.
//!
//! ```text
//!  worker 0 reads inputs ──chunks, one epoch each──> Decode (round-robin by chunk)
//!    ──(sink, notification, sample) exchanged by resource (or to one worker for sinks whose
//!      transformers keep cross-resource state)──> Transform: per sink, in epoch order,
//!      sample by sample through the chain, flushed at every notification boundary, published
//!    ──measures for gnocchi:// publishers, exchanged by resource──> Aggregate: per metric,
//!      one batch per notification, Gnocchi's aggregation, alarms evaluated as buckets
//!      close; final buckets and checkpoints to the store
//!  the API's measures (worker 0) ──exchanged by resource──> Aggregate
//!  the API's alarm changes (worker 0) ──exchanged by the alarm's metric (to every worker for
//!    alarms over several metrics)──> Aggregate (second input: an epoch's changes before its
//!    measures)
//!  Aggregate ──feeds (closed buckets and event time of the metrics that feed alarms over
//!    several metrics, their API changes, each worker's newest event time), exchanged by
//!    alarm──> Cross: evaluates those alarms at every instant all their metrics reached;
//!    checkpoints to the store; the probe is after it
//! ```
//! Epochs that are ready together share one store commit, and pass only after it.
//! Each epoch is one chunk of input parsed by one worker, so a (resource, meter) key sees its
//! samples in input order: the channel from that worker is FIFO and Transform processes epochs
//! in order once the frontier has passed them. Results are identical (as multisets) for any
//! number of workers.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meterflow_connectors::file::deadletter::{DeadLetter, DeadLetterHandle};
use meterflow_connectors::file::source::{ChunkReader, InputSpec};
use meterflow_connectors::gnocchi::resources::{ResourceDefinition, ResourceDefinitions};
use meterflow_connectors::gnocchi::store::{Partition as StorePartition, Store, StoreError};
use meterflow_connectors::gnocchi::{resource_key, GnocchiOptions};
use meterflow_connectors::notify::{Notifier, NotifierOptions};
use meterflow_connectors::PublisherSpec;
use meterflow_engine::chunk::{Chunk, ChunkSource};
use meterflow_engine::component::{PublishError, Publisher, PublisherFactory};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Counters, Diag, DropReason};
use meterflow_engine::model::Event;
use meterflow_engine::wire::{decode_line, Decoded, LineKind};
use meterflow_engine::Sample;
use meterflow_operators::transform::{Chain, Partition};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Capability, Concat, Operator, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::alarms::{cross_definitions, owns, stored_alarms, AlarmEdit, Alarms};
use crate::api::{ListenOptions, Live, Requests, Server};
use crate::committer::Checkpointed;
use crate::feeds::Feed;
use crate::plan::Plan;
use crate::resource_events::{ResourceEventRules, ResourceEvents};
use crate::storage::{load_shares, open_store, Aggregator, CrossStage, Measure, Share};
use meterflow_operators::notification::message_view;

/// A sample on its way to one sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Routed {
    /// Exchange key: the resource's hash, or the sink for sinks that run on one worker.
    pub route: u64,
    /// The notification it came in (flush boundaries): the chunk's sequence number in the
    /// high 32 bits, the line's index in the chunk in the low ones.
    pub notification: u64,
    /// Its place among everything its chunk's decoding emitted (samples and events), which
    /// restores input order whatever order the exchange delivers an epoch's batches in.
    pub order: u32,
    /// Index of the sink.
    pub sink: u16,
    /// The sample.
    pub sample: Sample,
}

impl Placed for Routed {
    fn place(&self) -> u64 {
        (self.notification & !u64::from(u32::MAX)) | u64::from(self.order)
    }
}

/// An event on its way to the event sinks and event alarms, numbered in its chunk's input
/// order like [`Routed::order`] (the chunk's sequence number in the high 32 bits).
#[derive(Clone, Debug)]
pub struct OrderedEvent {
    /// Its place in input order.
    pub order: u64,
    /// The event.
    pub event: Arc<Event>,
}

impl Placed for OrderedEvent {
    fn place(&self) -> u64 {
        self.order
    }
}

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

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub workers: usize,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Chunk size for inputs (bytes).
    pub chunk_bytes: usize,
    /// Where rejected input records go (JSONL), if anywhere.
    pub dead_letter: Option<std::path::PathBuf>,
    /// The embedded store `gnocchi://` publishers write to.
    pub store: std::path::PathBuf,
    /// Serve Gnocchi's API (and `/metrics`) while running, and keep running after the inputs
    /// end until SIGINT or SIGTERM.
    pub listen: Option<ListenOptions>,
    /// How alarm notifications are delivered (their journal goes to `STORE/notifier`).
    pub notifier: NotifierOptions,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: false,
            chunk_bytes: ChunkReader::TARGET_BYTES,
            dead_letter: None,
            store: std::path::PathBuf::from("data"),
            listen: None,
            notifier: NotifierOptions::default(),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Everything counted, merged over workers.
    pub counters: Counters,
    /// Sink names, for the summary.
    pub sinks: Vec<String>,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Workers used.
    pub workers: usize,
    /// Bytes read.
    pub bytes: u64,
    /// What the alarm notifiers did, when alarms ran.
    pub notifier: Option<NotifierTotals>,
    /// When the first input data arrived, after the start (a Kafka input first joins its
    /// group: benchmarks time from here).
    pub first_input: Option<Duration>,
}

/// What the alarm notifiers did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifierTotals {
    /// Notifications handed to the notifiers.
    pub sent: u64,
    /// Delivered.
    pub delivered: u64,
    /// Written to the dead-letter file.
    pub dead_lettered: u64,
}

/// How long the end of a run waits for alarm notifications to be delivered; what is still
/// undelivered then stays in the notifier's journal and is sent at the next start.
pub const NOTIFY_GRACE: Duration = Duration::from_secs(15);

/// The stable hash that spreads resources over workers (the same in every process).
pub fn resource_route(resource: Sym) -> u64 {
    meterflow_engine::partition::route(resource.as_str())
}

/// Turns chunks into routed samples; counts and reports bad input.
pub struct Decoder {
    plan: Arc<Plan>,
    routes: FxHashMap<Sym, Box<[u16]>>,
    inputs: Arc<Vec<String>>,
    dead: Option<DeadLetterHandle>,
    /// Whether notifications also become events (for event sinks or event alarms).
    events: bool,
    /// Per event type, the publishers its events go to.
    event_routes: EventRoutes,
}

/// Per event type, the event sinks that take it and their publishers (looked up once per
/// type).
#[derive(Default)]
struct EventRoutes(FxHashMap<String, EventRoute>);

/// The sinks and publishers one event type goes to.
struct EventRoute {
    sinks: Box<[u16]>,
    publishers: Box<[usize]>,
}

impl EventRoutes {
    fn get(&mut self, plan: &Plan, event_type: &str) -> &EventRoute {
        if !self.0.contains_key(event_type) {
            let (sinks, publishers) = plan.event_route(event_type);
            let route = EventRoute {
                sinks: sinks.into_boxed_slice(),
                publishers: publishers.into_boxed_slice(),
            };
            self.0.insert(event_type.to_owned(), route);
        }
        &self.0[event_type]
    }
}

impl Decoder {
    /// A decoder for `plan`; `inputs` names the inputs in messages.
    pub fn new(plan: Arc<Plan>, inputs: Arc<Vec<String>>) -> Decoder {
        Decoder {
            plan,
            routes: FxHashMap::default(),
            inputs,
            dead: None,
            events: false,
            event_routes: EventRoutes::default(),
        }
    }

    /// Also turns service notifications into events (by the plan's event definitions), for
    /// event sinks and event alarms.
    pub fn with_events(mut self, events: bool) -> Decoder {
        self.events = events;
        self
    }

    /// Also writes every rejected record to a dead-letter file.
    pub fn with_dead_letter(mut self, dead: Option<DeadLetterHandle>) -> Decoder {
        self.dead = dead;
        self
    }

    fn routes<'r>(
        routes: &'r mut FxHashMap<Sym, Box<[u16]>>,
        plan: &Plan,
        meter: Sym,
    ) -> &'r [u16] {
        routes
            .entry(meter)
            .or_insert_with(|| plan.route(meter.as_str()).into_boxed_slice())
    }

    /// Decodes every line of `chunk`, calling `emit` for each (sink, sample) and `emit_event`
    /// for each event, in input order and numbered in it (see [`Routed::order`]).
    pub fn decode(
        &mut self,
        chunk: &Chunk,
        diag: &mut Diag,
        emit: &mut dyn FnMut(Routed),
        emit_event: &mut dyn FnMut(OrderedEvent),
    ) {
        let Decoder {
            plan,
            routes,
            inputs,
            dead,
            events,
            event_routes,
        } = self;
        let input = inputs
            .get(chunk.input as usize)
            .map_or("<input>", String::as_str);
        // The place of the next thing emitted (a chunk holds far fewer than 2^32).
        let order = std::cell::Cell::new(0u32);
        let next = || {
            let n = order.get();
            order.set(n.wrapping_add(1));
            n
        };
        let base = chunk.seq << 32;
        let mut emit_event = |event: Event| {
            emit_event(OrderedEvent {
                order: base | u64::from(next()),
                event: Arc::new(event),
            })
        };
        for (index, (line_no, line)) in chunk.lines().enumerate() {
            diag.counters.lines += 1;
            let notification = (chunk.seq << 32) | index as u64;
            let mut handle = |diag: &mut Diag, decoded: Decoded| match decoded {
                Decoded::Sample(sample) => {
                    diag.counters.samples_in += 1;
                    if let Some(micros) = sample.timestamp.micros() {
                        diag.counters.saw_event(chunk.input as usize, micros);
                    }
                    let sinks = Self::routes(routes, plan, sample.name);
                    if sinks.is_empty() {
                        diag.counters.samples_unrouted += 1;
                        return;
                    }
                    let route = resource_route(sample.resource_id);
                    let (last, rest) = sinks.split_last().expect("non-empty");
                    let routed = |sink: u16, sample: Sample| Routed {
                        route: match plan.sinks[sink as usize].partition {
                            Partition::ByResource => route,
                            Partition::Global => u64::from(sink),
                        },
                        notification,
                        order: next(),
                        sink,
                        sample,
                    };
                    for &sink in rest {
                        emit(routed(sink, sample.clone()));
                    }
                    emit(routed(*last, sample));
                }
                Decoded::Rejected(r) => {
                    diag.counters.samples_in += 1;
                    let volume = matches!(
                        r.reason,
                        DropReason::VolumeMissing | DropReason::VolumeNotANumber
                    );
                    // Like Ceilometer, volumes are only checked for samples some pipeline takes.
                    if volume
                        && r.name
                            .is_some_and(|n| Self::routes(routes, plan, n).is_empty())
                    {
                        diag.counters.samples_unrouted += 1;
                        return;
                    }
                    diag.drop(r.reason, || {
                        format!("{}: {}", chunk.place(input, line_no), r.detail)
                    });
                    if let Some(dead) = dead.as_mut() {
                        let position = chunk.position(line_no);
                        dead.record(
                            input,
                            line_no,
                            position.as_deref(),
                            r.reason,
                            &r.detail,
                            &line,
                        );
                    }
                }
            };
            let kind = decode_line(&line, &mut |decoded| handle(diag, decoded));
            let failed = match kind {
                Ok(LineKind::SampleNotification | LineKind::BareSample) => {
                    diag.counters.notifications += 1;
                    None
                }
                Ok(LineKind::ServiceNotification { event_type })
                    if *events && SERIALIZED_EVENTS.contains(&&*event_type) =>
                {
                    diag.counters.notifications += 1;
                    // Events already made (Ceilometer's notifier publisher names the
                    // notification after its topic, `event` or Aodh's `alarm.all`; a kafka://
                    // event sink writes `event`): the payload is a list of serialized events.
                    let text = std::str::from_utf8(&line).unwrap_or_default();
                    match serialized_events(text) {
                        Ok(list) => {
                            diag.counters.events += list.len() as u64;
                            list.into_iter().for_each(&mut emit_event);
                            None
                        }
                        Err(why) => Some((DropReason::NotANotification, why)),
                    }
                }
                Ok(LineKind::ServiceNotification { event_type }) => {
                    diag.counters.notifications += 1;
                    let text = std::str::from_utf8(&line).unwrap_or_default();
                    // Read once, for the meter definitions and the event definitions.
                    let unmetered = plan.unmetered(&event_type);
                    let view = (unmetered.is_none() || *events).then(|| message_view(text));
                    // Whether an event sink keeps it (then it is not dropped for want of meters).
                    let mut published = false;
                    if let (true, Some(Ok(view))) = (*events, &view) {
                        if let Some(event) = plan.events.event(view) {
                            diag.counters.events += 1;
                            published = !event_routes.get(plan, &event.event_type).sinks.is_empty();
                            emit_event(event);
                        }
                    }
                    let skipped = match (unmetered, view) {
                        (Some(_), _) if published => None,
                        (Some(why), _) | (None, Some(Err(why))) => Some(why),
                        (None, Some(Ok(view))) => {
                            plan.meters.samples(&view, &mut |d| handle(diag, d));
                            None
                        }
                        (None, None) => unreachable!("read whenever a definition takes it"),
                    };
                    skipped.map(|detail| (DropReason::NoMeterDefinition, detail))
                }
                Err(e) => Some((e.reason(), e.to_string())),
            };
            if let Some((reason, detail)) = failed {
                if let Some(dead) = dead.as_mut() {
                    let position = chunk.position(line_no);
                    dead.record(input, line_no, position.as_deref(), reason, &detail, &line);
                }
                diag.drop(reason, || {
                    format!("{}: {detail}", chunk.place(input, line_no))
                });
            }
        }
        if let Some(dead) = dead.as_mut() {
            if let Err(e) = dead.flush() {
                tracing::error!("{e}");
            }
        }
    }
}

/// The event types of notifications that carry serialized events.
const SERIALIZED_EVENTS: [&str; 2] = ["event", "alarm.all"];

/// The events of an `event` notification (its payload: a list of serialized events).
fn serialized_events(text: &str) -> Result<Vec<Event>, String> {
    let view = message_view(text)?;
    let Some(list) = view["payload"].as_array() else {
        return Err("an \"event\" notification carries a list of serialized events as its payload; this payload is not a list".into());
    };
    list.iter()
        .map(|e| Event::deserialize(e).map_err(|why| format!("\"event\" notification: {why}")))
        .collect()
}

/// One sink's runtime on one worker.
struct SinkRuntime {
    chain: Chain,
    publishers: Vec<usize>,
    notification: Option<u64>,
    out: Vec<Sample>,
}

/// Where a sink's published samples go.
enum Target {
    /// A publisher that writes them.
    Io(Box<dyn Publisher>),
    /// `gnocchi://`: they become measures for the Aggregate operator.
    Store(u16, GnocchiOptions),
}

/// Runs the transformer chains of every sink a worker is responsible for.
pub struct Transformer {
    sinks: Vec<SinkRuntime>,
    publishers: Vec<Target>,
    urls: Vec<String>,
    /// Measures for the store, handed downstream at the end of each epoch.
    measures: Vec<Measure>,
    /// What turning samples into measures looks up again and again.
    store_caches: StoreCaches,
    /// Whether some sink publishes to the store (publish at every notification boundary, so
    /// each notification is one batch of measures).
    per_notification: Vec<bool>,
    /// Per event type, the publishers of the event sinks that take it.
    event_routes: EventRoutes,
    /// Events for each publisher, published at the end of the epoch.
    events: Vec<Vec<Arc<Event>>>,
    /// Per publisher, for `gnocchi://` ones: what events do to the store's resources.
    resource_events: Vec<Option<ResourceEvents>>,
    plan: Arc<Plan>,
}

impl Transformer {
    const PUBLISH_BATCH: usize = 1024;

    /// A worker's transformers and publisher handles for `plan` (`None`: `gnocchi://`).
    pub fn new(plan: &Arc<Plan>, factories: &[Option<Arc<dyn PublisherFactory>>]) -> Transformer {
        let publishers: Vec<Target> = factories
            .iter()
            .zip(&plan.publishers)
            .enumerate()
            .map(|(i, (f, p))| match (f, &p.spec) {
                (Some(f), _) => Target::Io(f.clone().handle()),
                (None, PublisherSpec::Gnocchi(options)) => Target::Store(i as u16, options.clone()),
                (None, _) => unreachable!("only gnocchi:// has no factory"),
            })
            .collect();
        let per_notification = plan
            .sinks
            .iter()
            .map(|s| {
                s.publishers
                    .iter()
                    .any(|&p| matches!(publishers[p], Target::Store(..)))
            })
            .collect();
        Transformer {
            measures: Vec::new(),
            store_caches: StoreCaches::default(),
            per_notification,
            sinks: plan
                .build_chains()
                .into_iter()
                .zip(&plan.sinks)
                .map(|(chain, sink)| SinkRuntime {
                    chain,
                    publishers: sink.publishers.clone(),
                    notification: None,
                    out: Vec::new(),
                })
                .collect(),
            events: vec![Vec::new(); publishers.len()],
            resource_events: publishers.iter().map(|_| None).collect(),
            publishers,
            urls: plan.publishers.iter().map(|p| p.url.clone()).collect(),
            event_routes: EventRoutes::default(),
            plan: plan.clone(),
        }
    }

    /// Lets events published to `gnocchi://` publishers create and end resources of `store`
    /// (`rules` per publisher; `partition`: this worker's).
    pub fn with_resource_events(
        mut self,
        rules: &[Option<Arc<ResourceEventRules>>],
        store: &Arc<Store>,
        partition: StorePartition,
    ) -> Transformer {
        for (slot, rules) in self.resource_events.iter_mut().zip(rules) {
            *slot = rules
                .as_ref()
                .map(|r| ResourceEvents::new(r.clone(), store.clone(), partition));
        }
        self
    }

    /// Takes an event for the publishers of every event sink that accepts its type.
    pub fn handle_event(&mut self, event: Arc<Event>, diag: &mut Diag) {
        let route = self.event_routes.get(&self.plan, &event.event_type);
        for &k in route.sinks.iter() {
            diag.counters.sinks[usize::from(k)].events += 1;
        }
        if let Some((&last, rest)) = route.publishers.split_last() {
            for &p in rest {
                self.events[p].push(event.clone());
            }
            self.events[last].push(event);
        }
    }

    /// Takes the measures published for the store so far.
    pub fn take_measures(&mut self) -> Vec<Measure> {
        std::mem::take(&mut self.measures)
    }

    /// Handles one routed sample (flushing the sink first when a new notification starts).
    pub fn handle(&mut self, r: Routed, diag: &mut Diag) {
        let k = usize::from(r.sink);
        let sink = &mut self.sinks[k];
        if sink.notification != Some(r.notification) {
            if let Some(previous) = sink.notification {
                sink.chain.flush(&mut sink.out, diag);
                if self.per_notification[k] {
                    self.publish(k, previous, diag);
                }
            }
            self.sinks[k].notification = Some(r.notification);
        }
        let sink = &mut self.sinks[k];
        diag.counters.sinks[k].samples_in += 1;
        sink.chain.handle(r.sample, &mut sink.out, diag);
        if sink.out.len() >= Self::PUBLISH_BATCH {
            self.publish(k, r.notification, diag);
        }
    }

    /// Ends a batch of notifications: flushes every sink that saw one and publishes (the
    /// publishers may still buffer: [`Transformer::start_write_out`] writes it out).
    pub fn end_epoch(&mut self, diag: &mut Diag) {
        for k in 0..self.sinks.len() {
            let sink = &mut self.sinks[k];
            let notification = sink.notification.take();
            if notification.is_some() {
                sink.chain.flush(&mut sink.out, diag);
            }
            // Samples an earlier epoch left held (none today) would publish as their own batch.
            self.publish(k, notification.unwrap_or(u64::MAX), diag);
        }
        for (((p, url), events), resource_events) in self
            .publishers
            .iter_mut()
            .zip(&self.urls)
            .zip(&mut self.events)
            .zip(&mut self.resource_events)
        {
            let Target::Io(p) = p else {
                if let Some(r) = resource_events.as_mut() {
                    diag.counters.events_published += events.len() as u64;
                    for event in events.drain(..) {
                        if let Err(e) = r.take(&event) {
                            diag.drop(DropReason::PublishError, || format!("{url}: {e}"));
                        }
                    }
                }
                events.clear();
                continue;
            };
            if !events.is_empty() {
                diag.counters.events_published += events.len() as u64;
                if let Err(e) = p.publish_events(events) {
                    for _ in 0..events.len() {
                        diag.drop(DropReason::PublishError, || format!("{url}: {e}"));
                    }
                }
                events.clear();
            }
        }
        diag.counters.held = self.sinks.iter().map(|s| s.chain.held() as u64).sum();
    }

    /// Writes out what the publishers buffer: publishers that only write synchronously
    /// (files: written and synced) are durable on return, retrying what fails (see
    /// `flush_with_retry`); for the others (a broker's acknowledgement) the tickets to wait
    /// for with [`Transformer::written`].
    pub fn start_write_out(&mut self, diag: &mut Diag) -> Vec<(usize, u64)> {
        let mut tickets = Vec::new();
        for (r, url) in self.resource_events.iter_mut().zip(&self.urls) {
            let Some(r) = r.as_mut() else { continue };
            let committed =
                retry_with_backoff(url, PUBLISH_RETRY_LIMIT, StoreError::retryable, || {
                    r.commit()
                });
            if let Err(e) = committed {
                diag.drop(DropReason::PublishError, || {
                    format!("{url}: resource events: {e}; tried again at the next epoch")
                });
            }
        }
        for (i, (p, url)) in self.publishers.iter_mut().zip(&self.urls).enumerate() {
            if let Target::Io(p) = p {
                match p.flush_async() {
                    Some(ticket) => tickets.push((i, ticket)),
                    None => flush_with_retry(p.as_mut(), url, diag),
                }
            }
        }
        tickets
    }

    /// Whether every ticket of [`Transformer::start_write_out`] is durable (those that are
    /// are removed; what a publisher finally lost is counted).
    pub fn written(&mut self, tickets: &mut Vec<(usize, u64)>, diag: &mut Diag) -> bool {
        tickets.retain(|&(i, ticket)| {
            let Target::Io(p) = &mut self.publishers[i] else {
                return false;
            };
            match p.durable(ticket) {
                Ok(done) => !done,
                Err(e) => {
                    diag.drop(DropReason::PublishError, || {
                        format!("{}: {e}", self.urls[i])
                    });
                    false
                }
            }
        });
        tickets.is_empty()
    }

    fn publish(&mut self, k: usize, notification: u64, diag: &mut Diag) {
        let sink = &mut self.sinks[k];
        if sink.out.is_empty() {
            return;
        }
        diag.counters.sinks[k].samples_out += sink.out.len() as u64;
        for &p in &sink.publishers {
            match &mut self.publishers[p] {
                Target::Io(publisher) => {
                    if let Err(e) = publisher.publish(&sink.out) {
                        for _ in 0..sink.out.len() {
                            diag.drop(DropReason::PublishError, || {
                                format!("{}: {e}", self.urls[p])
                            });
                        }
                    }
                }
                Target::Store(index, options) => to_measures(
                    &sink.out,
                    (notification, k as u16, *index),
                    options,
                    &mut self.store_caches,
                    &mut self.measures,
                    diag,
                ),
            }
        }
        sink.out.clear();
    }
}

/// Samples published to `gnocchi://` as measures of (resource, meter), as Ceilometer's
/// gnocchi publisher posts them (`/` in resource ids replaced, the project filter applied).
fn to_measures(
    samples: &[Sample],
    (batch, sink, publisher): (u64, u16, u16),
    options: &GnocchiOptions,
    caches: &mut StoreCaches,
    out: &mut Vec<Measure>,
    diag: &mut Diag,
) {
    for s in samples {
        let (resource_type, policy, attributes) = match &options.resources {
            None => (None, None, None),
            Some(definitions) => {
                let Some(meter) = caches.meter(publisher, s.name, definitions) else {
                    diag.drop(DropReason::NoResourceDefinition, || {
                        format!("meter {} is not in resources_definition_file {}, so it is not stored (as in Ceilometer); add it under a resource's metrics:", s.name, definitions.origin)
                    });
                    continue;
                };
                let attributes = caches.attributes(publisher, s, &definitions.resources[meter.2]);
                // The publisher's archive_policy overrides the definitions' (Ceilometer's).
                let policy = meter.1.filter(|_| options.archive_policy.is_none());
                (Some(meter.0), policy, attributes)
            }
        };
        if options
            .filter_project
            .as_deref()
            .is_some_and(|p| s.project_id.is_some_and(|q| q.as_str() == p))
        {
            continue;
        }
        let Some(micros) = s.timestamp.micros() else {
            diag.drop(DropReason::BadTimestamp, || {
                format!("meter {} of resource {}: timestamp {:?} is not ISO 8601, so it cannot be stored; write e.g. 2021-07-30T02:37:21.211598", s.name, s.resource_id, s.timestamp.as_str())
            });
            continue;
        };
        if micros < 0 {
            diag.drop(DropReason::InvalidMeasure, || {
                format!("meter {} of resource {}: timestamp {} is before 1970, which Gnocchi does not store", s.name, s.resource_id, s.timestamp.as_str())
            });
            continue;
        }
        let resource_key = *caches.keys.entry(s.resource_id).or_insert_with(|| {
            if s.resource_id.as_str().contains('/') {
                Sym::new(&resource_key(s.resource_id.as_str()))
            } else {
                s.resource_id
            }
        });
        out.push(Measure {
            route: resource_route(resource_key),
            batch,
            sink,
            publisher,
            resource_key,
            resource_id: s.resource_id,
            name: s.name,
            unit: s.unit,
            user_id: s.user_id,
            project_id: s.project_id,
            resource_type,
            attributes,
            policy,
            timestamp_ns: micros * 1000,
            value: s.volume.as_f64(),
        });
    }
}

/// Lookups [`to_measures`] keeps per worker.
#[derive(Default)]
struct StoreCaches {
    /// Resource ids as Gnocchi keys them (`/` replaced), by resource.
    keys: FxHashMap<Sym, Sym>,
    /// Per (publisher, meter): its resource type, metric policy and definition index.
    meters: FxHashMap<(u16, Sym), Option<MeterDefinition>>,
    /// Per (publisher, resource): a hash of what the attributes are taken from, and them.
    attributes: FxHashMap<(u16, Sym), CachedAttributes>,
}

/// A hash of what a resource's attributes were taken from, and them.
type CachedAttributes = (u64, Option<Arc<str>>);

/// A meter's resource type, metric policy and definition index.
type MeterDefinition = (Sym, Option<Sym>, usize);

impl StoreCaches {
    fn meter(
        &mut self,
        publisher: u16,
        meter: Sym,
        definitions: &ResourceDefinitions,
    ) -> Option<MeterDefinition> {
        *self.meters.entry((publisher, meter)).or_insert_with(|| {
            let (index, policy) = definitions.for_meter(meter.as_str())?;
            Some((
                Sym::new(&definitions.resources[index].resource_type),
                policy.map(Sym::new),
                index,
            ))
        })
    }

    /// The attributes `definition` takes from `s`, reparsed only when the sample's metadata,
    /// user or project differ from the resource's previous sample.
    fn attributes(
        &mut self,
        publisher: u16,
        s: &Sample,
        definition: &ResourceDefinition,
    ) -> Option<Arc<str>> {
        if definition.attributes.is_empty() {
            return None;
        }
        let mut hasher = rustc_hash::FxHasher::default();
        std::hash::Hash::hash(s.resource_metadata.as_str(), &mut hasher);
        std::hash::Hash::hash(&s.user_id.map(Sym::as_str), &mut hasher);
        std::hash::Hash::hash(&s.project_id.map(Sym::as_str), &mut hasher);
        std::hash::Hash::hash(&s.source.as_str(), &mut hasher);
        let hash = std::hash::Hasher::finish(&hasher);
        let slot = self
            .attributes
            .entry((publisher, s.resource_id))
            .or_insert((hash.wrapping_add(1), None));
        if slot.0 != hash {
            let metadata: serde_json::Value =
                serde_json::from_str(s.resource_metadata.as_str()).unwrap_or_default();
            let dict = serde_json::json!({
                "resource_metadata": metadata,
                "resource_id": s.resource_id.as_str(),
                "user_id": s.user_id.map(Sym::as_str),
                "project_id": s.project_id.map(Sym::as_str),
                "source": s.source.as_str(),
                "counter_name": s.name.as_str(),
                "counter_unit": s.unit.as_str(),
                "counter_type": s.kind.as_str(),
            });
            *slot = (hash, definition.attributes_of(&dict).map(Arc::from));
        }
        slot.1.clone()
    }
}

/// How often an operator waiting for a broker's acknowledgements looks again.
const ACK_POLL: Duration = Duration::from_micros(500);

/// How long a publisher that fails with a retryable error (a full disk, a broker away) is
/// retried before its buffered samples are counted as dropped.
const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(300);

/// Epochs' capabilities held until the store commit they owe is written (see
/// [`crate::committer`]): answers to the API and source offsets wait for them. Released
/// oldest first.
#[derive(Default)]
struct Owing(VecDeque<(u64, Vec<Capability<u64>>)>);

impl Owing {
    /// Holds `capabilities` until commit `ticket` is written; with no ticket they owe
    /// nothing and are dropped.
    fn hold(&mut self, ticket: Option<u64>, capabilities: Vec<Capability<u64>>) {
        if let Some(ticket) = ticket {
            self.0.push_back((ticket, capabilities));
        }
    }

    /// Drops the capabilities of every commit up to `committed`.
    fn release(&mut self, committed: u64) {
        while self.0.front().is_some_and(|(t, _)| *t <= committed) {
            self.0.pop_front();
        }
    }
}

/// Something another thread calls to schedule operator `address` (a commit finished).
fn waker(worker: &timely::worker::Worker, address: &[usize]) -> Arc<dyn Fn() + Send + Sync> {
    let activator = Mutex::new(worker.sync_activator_for(address.to_vec()));
    Arc::new(move || {
        // A worker that has gone away has nothing left to wake.
        let _ = activator.lock().map(|a| a.activate());
    })
}

/// Each epoch's data held until the input frontier has passed the epoch, with a capability
/// that holds the output frontier back until the epoch is processed: the probe passing an
/// epoch means its output is written. Epochs come out oldest first.
struct EpochStash<T> {
    epochs: BTreeMap<u64, (Capability<u64>, Vec<T>)>,
}

impl<T> Default for EpochStash<T> {
    fn default() -> Self {
        EpochStash {
            epochs: BTreeMap::new(),
        }
    }
}

impl<T> EpochStash<T> {
    /// Holds `items` of epoch `time` (`capability` is called for an epoch's first items).
    fn hold(
        &mut self,
        time: u64,
        capability: impl FnOnce() -> Capability<u64>,
        items: impl IntoIterator<Item = T>,
    ) {
        let held = self
            .epochs
            .entry(time)
            .or_insert_with(|| (capability(), Vec::new()));
        held.1.extend(items);
    }

    /// The oldest epoch held.
    fn oldest(&self) -> Option<u64> {
        self.epochs.keys().next().copied()
    }

    /// Epoch `time`'s items, with their capability, if any are held.
    fn take(&mut self, time: u64) -> Option<(Capability<u64>, Vec<T>)> {
        self.epochs.remove(&time)
    }

    /// The oldest epoch the input frontier has passed, with its capability.
    fn next_ready(
        &mut self,
        frontier: &timely::progress::frontier::MutableAntichain<u64>,
    ) -> Option<(Capability<u64>, Vec<T>)> {
        let entry = self.epochs.first_entry()?;
        if frontier.less_equal(entry.key()) {
            return None;
        }
        Some(entry.remove())
    }
}

/// The oldest of the `held` epochs, if every input's frontier has passed it.
fn ready(
    frontiers: &[&timely::progress::frontier::MutableAntichain<u64>],
    held: [Option<u64>; 2],
) -> Option<u64> {
    let oldest = held.into_iter().flatten().min()?;
    frontiers
        .iter()
        .all(|f| !f.less_equal(&oldest))
        .then_some(oldest)
}

/// Calls `attempt` until it succeeds, fails with an error `retryable` rejects, or `limit` has
/// passed, sleeping with exponential backoff (50 ms, doubling up to 5 s) after each retryable
/// failure. While it retries the worker waits, so the whole dataflow pauses and a Kafka input
/// stops consuming and committing: nothing is acknowledged that is not written.
pub(crate) fn retry_with_backoff<E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt() {
            Err(e) if retryable(&e) && started.elapsed() < limit => {
                tracing::warn!("{what}: {e}; retrying in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Flushes a publisher, retrying retryable failures (see [`retry_with_backoff`]); what
/// finally fails is counted and tried again at the next flush.
fn flush_with_retry(publisher: &mut dyn Publisher, url: &str, diag: &mut Diag) {
    let flushed = retry_with_backoff(
        url,
        PUBLISH_RETRY_LIMIT,
        |e: &PublishError| e.retry,
        || publisher.flush(),
    );
    if let Err(e) = flushed {
        diag.drop(DropReason::PublishError, || {
            format!(
                "{url}: {e}; not retrying now (what is buffered is tried again at the next flush)"
            )
        });
    }
}

/// Per publisher, the resource-event rules of `gnocchi://` ones that event sinks use: from
/// its `resources_definition_file`, else the shipped `gnocchi_resources.yaml`.
fn resource_event_rules(plan: &Plan) -> anyhow::Result<Vec<Option<Arc<ResourceEventRules>>>> {
    let mut shipped: Option<Arc<ResourceEventRules>> = None;
    plan.publishers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let PublisherSpec::Gnocchi(options) = &p.spec else {
                return Ok(None);
            };
            if !plan.publishes_events_to(i) {
                return Ok(None);
            }
            Ok(Some(match &options.resources {
                Some(definitions) => Arc::new(ResourceEventRules::new(definitions)),
                None => match &shipped {
                    Some(rules) => rules.clone(),
                    None => {
                        let (origin, text) = crate::shipped::GNOCCHI_RESOURCES;
                        let definitions = ResourceDefinitions::from_yaml(text, origin)
                            .map_err(anyhow::Error::msg)?;
                        let rules = Arc::new(ResourceEventRules::new(&definitions));
                        shipped = Some(rules.clone());
                        rules
                    }
                },
            }))
        })
        .collect()
}

/// Runs `plan` over `inputs` to their end.
pub fn run(plan: Plan, inputs: &[InputSpec], options: &RunOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    // With an input that commits offsets, output must be on disk before a commit.
    let durable = inputs.iter().any(|i| matches!(i, InputSpec::Kafka(_)));
    let factories: Vec<Option<Arc<dyn PublisherFactory>>> = plan
        .publishers
        .iter()
        .map(|p| {
            let mut spec = p.spec.clone();
            if let PublisherSpec::File(options) = &mut spec {
                options.fsync |= durable;
            }
            spec.open(&p.url).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<_>>()?;
    let workers = options.workers.max(1);
    let listening = options.listen.is_some();
    let store = if plan.uses_store() || listening || !plan.alarms.is_empty() {
        let store = open_store(&plan, &options.store)?;
        let shares = load_shares(&store, workers)?;
        Some((
            store,
            Arc::new(Mutex::new(shares.into_iter().map(Some).collect::<Vec<_>>())),
        ))
    } else {
        None
    };
    let stored_alarms = match &store {
        Some((store, _)) => Arc::new(stored_alarms(&store.alarms()?)),
        None => Arc::default(),
    };
    let cross_alarms = Arc::new(cross_definitions(
        (&plan.alarms, plan.alarms_declared),
        &stored_alarms,
    ));
    // Listening, alarms may be created through the API at any time.
    let notifier = match &store {
        Some((store, _)) if !plan.alarms.is_empty() || !stored_alarms.is_empty() || listening => {
            Some(Arc::new(
                Notifier::start(NotifierOptions {
                    dir: Some(store.dir().join("notifier")),
                    ..options.notifier.clone()
                })
                .map_err(anyhow::Error::msg)?,
            ))
        }
        _ => None,
    };
    let notifier_stats = notifier.as_ref().map(|n| n.stats());
    // The API's measures count as one more gnocchi:// publisher, after the plan's: the
    // archive-policy rules pick the policy of metrics a request does not give one.
    let api_publisher = plan.publishers.len() as u16;
    let gnocchi_options: Arc<Vec<Option<GnocchiOptions>>> = Arc::new(
        plan.publishers
            .iter()
            .map(|p| match &p.spec {
                PublisherSpec::Gnocchi(o) => Some(o.clone()),
                _ => None,
            })
            .chain(std::iter::once(Some(GnocchiOptions {
                resource_type: "generic".into(),
                ..GnocchiOptions::default()
            })))
            .collect(),
    );
    let dead_letter = options
        .dead_letter
        .as_deref()
        .map(|p| DeadLetter::open(p, durable))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let readers = inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            spec.open(i as u32, options.chunk_bytes)
                .with_context(|| format!("input {}", spec.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total_bytes: Option<u64> = inputs.iter().map(InputSpec::size_bytes).sum();
    let names = Arc::new(inputs.iter().map(InputSpec::display).collect::<Vec<_>>());
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
    let sink_count = plan.sinks.len();
    let plan = Arc::new(plan);
    let readers = Arc::new(Mutex::new(Some(readers)));
    let first_data = Arc::new(std::sync::OnceLock::<Instant>::new());
    let worker_first_data = first_data.clone();
    let progress = options.progress;
    let live = Arc::new(
        Live::new(workers, names.to_vec(), sink_names.clone())
            .with_notifier(notifier_stats.clone()),
    );
    let mut server = None;
    let mut api_requests = None;
    if let (Some(listen), Some((store, _))) = (&options.listen, &store) {
        let (s, requests) = Server::start(
            listen,
            store.clone(),
            plan.clone(),
            live.clone(),
            api_publisher,
        )?;
        eprintln!(
            "meterflow: serving the Gnocchi API and /metrics on http://{} (SIGINT or SIGTERM stops)",
            s.addr()
        );
        server = Some(s);
        api_requests = Some(requests);
    }
    let api_requests = Arc::new(Mutex::new(api_requests));
    let resource_rules = resource_event_rules(&plan)?;
    let worker_live = live.clone();
    let worker_notifier = notifier.clone();
    let watermark = Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
    // How many workers' store operators have seen the end of their input.
    let at_end = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers() as u64;
        let live = worker_live.clone();
        let diag = Rc::new(RefCell::new(Diag::with_sinks(sink_count)));
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Chunk>>>::new();
        let mut api_input = InputHandle::<u64, CapacityContainerBuilder<Vec<Measure>>>::new();
        let mut alarm_input = InputHandle::<u64, CapacityContainerBuilder<Vec<AlarmEdit>>>::new();
        let probe = ProbeHandle::new();
        let plan = plan.clone();
        let factories = factories.clone();
        let names = names.clone();
        let dead_letter = dead_letter.clone();
        let aggregator = store.as_ref().map(|(store, shares)| {
            let share: Share = shares.lock().unwrap_or_else(|p| p.into_inner())[index]
                .take()
                .unwrap_or_default();
            let alarms = Alarms::load(
                (&plan.alarms, plan.alarms_declared),
                &stored_alarms,
                &|a| owns(a, (index, workers), false),
                worker_notifier.clone(),
            );
            let mut aggregator = Aggregator::new(store.clone(), plan.clone(), share, durable)
                .with_alarms(alarms)
                .with_cross_alarms(cross_alarms.iter())
                .with_watermark(watermark.clone());
            if listening {
                aggregator.checkpoint_every(CHECKPOINT_EVERY);
            }
            Rc::new(RefCell::new(aggregator))
        });
        let cross = store.as_ref().map(|(store, _)| {
            let alarms = Alarms::load(
                (&plan.alarms, plan.alarms_declared),
                &stored_alarms,
                &|a| owns(a, (index, workers), true),
                worker_notifier.clone(),
            );
            let mut stage = CrossStage::new(store.clone(), (index, workers), alarms, durable);
            if listening {
                stage.checkpoint_every(CHECKPOINT_EVERY);
            }
            stage
        });
        let gnocchi_options = gnocchi_options.clone();
        let aggregate_live = live.clone();
        let at_end = at_end.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let decode_diag = diag.clone();
            // Events for event alarms when those can exist (defined, or created through the
            // API), and for event sinks.
            let alarm_events = cross.is_some() && (listening || plan.has_event_alarms());
            let mut decoder = Decoder::new(plan.clone(), names)
                .with_dead_letter(dead_letter.as_ref().map(|d| d.handle()))
                .with_events(alarm_events || plan.publishes_events());
            // Two outputs: the samples, and the events (for event sinks and event alarms).
            let mut builder = OperatorBuilder::new("Decode".to_owned(), scope);
            let mut chunks = builder.new_input(
                input.to_stream(scope),
                Exchange::new(move |c: &Chunk| c.seq % peers),
            );
            let (samples_out, routed) = builder.new_output::<Vec<Routed>>();
            let (events_out, events) = builder.new_output::<Vec<OrderedEvent>>();
            let mut samples_out = OutputBuilder::from(samples_out);
            let mut events_out = OutputBuilder::from(events_out);
            builder.build(move |_| {
                move |_frontiers| {
                    let mut samples_handle = samples_out.activate();
                    let mut events_handle = events_out.activate();
                    chunks.for_each_stamp(|cap, data| {
                        let mut samples = samples_handle.session(&cap);
                        let mut events = events_handle.session(&cap);
                        let mut diag = decode_diag.borrow_mut();
                        for batch in data {
                            for chunk in batch.drain(..) {
                                decoder.decode(
                                    &chunk,
                                    &mut diag,
                                    &mut |r| samples.give(r),
                                    &mut |e| events.give(e),
                                );
                            }
                        }
                    });
                }
            });
            let transform_diag = diag.clone();
            let mut transformer = Transformer::new(&plan, &factories);
            if let Some((store, _)) = &store {
                transformer = transformer.with_resource_events(
                    &resource_rules,
                    store,
                    StorePartition {
                        index: index as u32,
                        count: workers as u32,
                    },
                );
            }
            let measures = routed
                .binary_frontier::<_, CapacityContainerBuilder<Vec<Measure>>, _, _, _, _>(
                    events.clone(),
                    Exchange::new(|r: &Routed| r.route),
                    // An event is published by the worker that made it.
                    Pipeline,
                    "Transform",
                    move |_, info| {
                        // Each epoch's data waits here, with a capability that holds the
                        // output frontier back until the epoch is processed and published:
                        // the probe passing an epoch means its output is written.
                        let mut stash = EpochStash::default();
                        let mut event_stash = EpochStash::default();
                        // Epochs processed whose output a broker has yet to acknowledge,
                        // oldest first: the worker goes on meanwhile.
                        let mut writing = std::collections::VecDeque::new();
                        let activator = scope.activator_for(info.address.clone());
                        move |(input, frontier), (events, events_frontier), output| {
                            input.for_each_stamp(|cap, data| {
                                if let Some(time) = cap.least() {
                                    stash.hold(
                                        *time,
                                        || cap.delayed(time, 0),
                                        data.map(std::mem::take),
                                    );
                                }
                            });
                            events.for_each_stamp(|cap, data| {
                                if let Some(time) = cap.least() {
                                    event_stash.hold(
                                        *time,
                                        || cap.delayed(time, 0),
                                        data.map(std::mem::take),
                                    );
                                }
                            });
                            let mut diag = transform_diag.borrow_mut();
                            // Every epoch that is ready is processed, then their output is
                            // written out at once (one sync or broker round trip for all of
                            // them), and only then do they pass.
                            let mut done = Vec::new();
                            while let Some(epoch) = ready(
                                &[frontier, events_frontier],
                                [stash.oldest(), event_stash.oldest()],
                            ) {
                                let mut held = Vec::new();
                                if let Some((capability, mut batches)) = event_stash.take(epoch) {
                                    restore_input_order(&mut batches);
                                    for e in batches.into_iter().flatten() {
                                        transformer.handle_event(e.event, &mut diag);
                                    }
                                    held.push(capability);
                                }
                                if let Some((capability, mut batches)) = stash.take(epoch) {
                                    restore_input_order(&mut batches);
                                    for batch in batches {
                                        for r in batch {
                                            transformer.handle(r, &mut diag);
                                        }
                                    }
                                    held.push(capability);
                                }
                                transformer.end_epoch(&mut diag);
                                let mut measures = transformer.take_measures();
                                if let (false, Some(capability)) =
                                    (measures.is_empty(), held.first())
                                {
                                    output.session(capability).give_container(&mut measures);
                                }
                                done.append(&mut held);
                            }
                            if !done.is_empty() {
                                let tickets = transformer.start_write_out(&mut diag);
                                writing.push_back((done, tickets));
                            }
                            while let Some((_, tickets)) = writing.front_mut() {
                                if !transformer.written(tickets, &mut diag) {
                                    activator.activate_after(ACK_POLL);
                                    break;
                                }
                                writing.pop_front();
                            }
                        }
                    },
                );
            match aggregator.clone() {
                None => {
                    measures.probe_with(&probe);
                }
                Some(aggregator) => {
                    let aggregate_diag = diag.clone();
                    let cross_diag = diag.clone();
                    let live = aggregate_live;
                    let cross_live = live.clone();
                    let mut cross = cross.expect("a store");
                    // Every worker's cross operator holds every event alarm.
                    let copies = if alarm_events { peers } else { 0 };
                    let events = events.flat_map(move |e| {
                        (0..copies).map(move |route| Feed::Event {
                            route,
                            event: e.event.clone(),
                        })
                    });
                    measures
                        .concat(api_input.to_stream(scope))
                        .binary_frontier::<_, CapacityContainerBuilder<Vec<Feed>>, _, _, _, _>(
                            alarm_input.to_stream(scope),
                            Exchange::new(|m: &Measure| m.route),
                            Exchange::new(|e: &AlarmEdit| e.target()),
                            "Aggregate",
                            move |default, info| {
                                // Held until the store has the last epoch: the probe passing
                                // the end means every checkpoint is committed.
                                let mut last = Some(default);
                                let activator = scope.activator_for(info.address.clone());
                                aggregator
                                    .borrow_mut()
                                    .wake_with(waker(scope.worker(), &info.address));
                                let mut arrived = false;
                                let mut stash = EpochStash::default();
                                let mut edits = EpochStash::default();
                                let mut owing = Owing::default();
                                move |(input, frontier), (alarm_input, alarm_frontier), output| {
                                    input.for_each_stamp(|cap, data| {
                                        if let Some(time) = cap.least() {
                                            let measures = data.flat_map(|batch| batch.drain(..));
                                            stash.hold(*time, || cap.delayed(time, 0), measures);
                                        }
                                    });
                                    alarm_input.for_each_stamp(|cap, data| {
                                        if let Some(time) = cap.least() {
                                            let changes = data.flat_map(|batch| batch.drain(..));
                                            edits.hold(*time, || cap.delayed(time, 0), changes);
                                        }
                                    });
                                    let mut diag = aggregate_diag.borrow_mut();
                                    let mut aggregator = aggregator.borrow_mut();
                                    // Epoch by epoch, once both inputs passed it: alarm changes
                                    // first, then the measures. The epochs pass (their
                                    // capabilities dropped) once the checkpoint they owe is
                                    // written, off this thread: one commit for all that were
                                    // ready, and for all processed while one was in flight.
                                    let mut done = Vec::new();
                                    while let Some(epoch) = ready(
                                        &[frontier, alarm_frontier],
                                        [stash.oldest(), edits.oldest()],
                                    ) {
                                        let mut held = Vec::new();
                                        if let Some((capability, changes)) = edits.take(epoch) {
                                            aggregator.edit_alarms(changes, &mut diag);
                                            held.push(capability);
                                        }
                                        if let Some((capability, mut measures)) = stash.take(epoch)
                                        {
                                            aggregator.process(
                                                &mut measures,
                                                &gnocchi_options,
                                                &mut diag,
                                            );
                                            held.push(capability);
                                        }
                                        // What the epoch sends the cross operators goes out
                                        // at the epoch.
                                        let mut feeds = aggregator.take_feeds();
                                        if let (false, Some(cap)) = (feeds.is_empty(), held.first())
                                        {
                                            output.session(cap).give_container(&mut feeds);
                                        }
                                        done.append(&mut held);
                                    }
                                    aggregator.sweep_alarms(&mut diag);
                                    let ticket = aggregator.settle(&mut diag);
                                    owing.hold(ticket, done);
                                    aggregator.checkpoint_if_due(&mut diag);
                                    if frontier.is_empty() && alarm_frontier.is_empty() {
                                        // Every worker has aggregated all it will before any
                                        // closes its alarms: the watermark is final, so what
                                        // no_data_grace alarms decide does not depend on
                                        // which worker got there first.
                                        if last.is_some() && !arrived {
                                            arrived = true;
                                            at_end.fetch_add(1, Ordering::SeqCst);
                                        }
                                        if last.is_some()
                                            && at_end.load(Ordering::SeqCst) < peers as usize
                                        {
                                            activator.activate();
                                        } else if let Some(cap) = last.take() {
                                            // The end of a bounded input closes every bucket.
                                            if !listening {
                                                aggregator.close_alarms(&mut diag);
                                                let mut feeds = aggregator.take_feeds();
                                                if !feeds.is_empty() {
                                                    // After every epoch of every worker:
                                                    // each metric's last word.
                                                    output
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
                                        frontier
                                            .frontier()
                                            .iter()
                                            .chain(alarm_frontier.frontier().iter())
                                            .min(),
                                    ) {
                                        if cap.time() < t {
                                            cap.downgrade(t);
                                        }
                                    }
                                    owing.release(aggregator.committed(&mut diag));
                                    if let Some(why) = aggregator.failure() {
                                        live.fail(why);
                                    }
                                }
                            },
                        )
                        .concat(events)
                        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                            Exchange::new(|f: &Feed| f.route()),
                            "Cross",
                            move |_, info| {
                                // Each epoch's feeds wait for the input frontier to pass it;
                                // the epoch passes once its checkpoint is written.
                                let mut stash = EpochStash::default();
                                let mut owing = Owing::default();
                                cross.wake_with(waker(scope.worker(), &info.address));
                                move |(input, frontier), _output| {
                                    input.for_each_stamp(|cap, data| {
                                        if let Some(time) = cap.least() {
                                            let feeds = data.flat_map(|batch| batch.drain(..));
                                            stash.hold(*time, || cap.delayed(time, 0), feeds);
                                        }
                                    });
                                    let mut diag = cross_diag.borrow_mut();
                                    let mut done = Vec::new();
                                    while let Some((capability, feeds)) = stash.next_ready(frontier)
                                    {
                                        cross.process(feeds, &mut diag);
                                        done.push(capability);
                                    }
                                    let ticket = cross.settle(&mut diag);
                                    owing.hold(ticket, done);
                                    if frontier.is_empty() {
                                        cross.checkpoint_all(&mut diag);
                                    } else {
                                        cross.checkpoint_if_due(&mut diag);
                                    }
                                    owing.release(cross.committed(&mut diag));
                                    if let Some(why) = cross.failure() {
                                        cross_live.fail(why);
                                    }
                                }
                            },
                        )
                        .probe_with(&probe);
                }
            }
        });

        let mut result = Ok(0);
        if index == 0 {
            let api = api_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(|requests| ApiFeed {
                    requests,
                    input: api_input,
                    alarm_input,
                    pending: Vec::new(),
                    peers,
                });
            result = feed(
                worker,
                input,
                api,
                &probe,
                (&readers, &worker_first_data),
                progress.then_some(total_bytes),
                peers,
                &live,
                &diag,
            );
        } else {
            drop(input);
            drop(api_input);
            drop(alarm_input);
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
    })
    .map_err(|e| anyhow::anyhow!("cannot start {workers} workers: {e}"))?;

    let mut counters = Counters::with_sinks(sink_count);
    let mut bytes = 0;
    let results = guards.join();
    if let Some(server) = server {
        server.shutdown();
    }
    shut_down_notifier(notifier);
    let notifier = notifier_stats.map(|s| NotifierTotals {
        sent: s.sent.load(Ordering::Relaxed),
        delivered: s.delivered.load(Ordering::Relaxed),
        dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
    });
    for result in results {
        let (c, b) = result
            .map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
        counters.merge(&c);
        bytes += b;
    }
    Ok(RunReport {
        counters,
        sinks: sink_names,
        elapsed: started.elapsed(),
        workers,
        bytes,
        notifier,
        first_input: first_data.get().map(|t| t.duration_since(started)),
    })
}

/// Shuts the notifier down once the workers let go of it, waiting [`NOTIFY_GRACE`] for its
/// queues to drain.
fn shut_down_notifier(notifier: Option<Arc<Notifier>>) {
    if let Some(notifier) = notifier {
        match Arc::try_unwrap(notifier) {
            Ok(notifier) => notifier.shutdown(NOTIFY_GRACE),
            Err(shared) => {
                if let Err(e) = shared.sync() {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

type Readers = Arc<Mutex<Option<Vec<Box<dyn ChunkSource>>>>>;

/// How often workers hand their counters to the API's `/metrics`.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How often an idle, listening engine moves its epoch on.
const TICK_EVERY: Duration = Duration::from_millis(500);

/// How often a listening engine checkpoints what the store's operator holds.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The API's side of worker 0's loop: accepted POSTs (measures, alarm changes) come in on
/// `requests`, go into the dataflow through `input` and `alarm_input`, and are answered once
/// the probe has passed their epoch.
struct ApiFeed {
    requests: Requests,
    input: InputHandle<u64, CapacityContainerBuilder<Vec<Measure>>>,
    alarm_input: InputHandle<u64, CapacityContainerBuilder<Vec<AlarmEdit>>>,
    pending: Vec<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    /// How many workers the dataflow has.
    peers: u64,
}

impl ApiFeed {
    /// Requests handed in at once (one epoch); more wait for the next.
    const MAX_PER_EPOCH: usize = 256;

    /// Sends waiting requests into epoch `seq`, each its own batch; true if any.
    fn take(&mut self, seq: u64, api_input: usize, diag: &RefCell<Diag>) -> bool {
        let mut taken = 0usize;
        while taken < Self::MAX_PER_EPOCH {
            let Ok(request) = self.requests.alarms.try_recv() else {
                break;
            };
            // A change to an alarm over several metrics goes to every store operator.
            let mut edits = Vec::new();
            for edit in request.edits {
                if edit.cross {
                    for worker in 0..self.peers {
                        let mut copy = edit.clone();
                        copy.copy = Some(worker);
                        edits.push(copy);
                    }
                } else {
                    edits.push(edit);
                }
            }
            self.alarm_input.send_batch(&mut edits);
            self.pending.push((seq, request.reply));
            taken += 1;
        }
        while taken < Self::MAX_PER_EPOCH {
            let Ok(mut request) = self.requests.measures.try_recv() else {
                break;
            };
            let batch = (seq << 32) | (1 << 31) | taken as u64;
            let mut diag = diag.borrow_mut();
            for m in &mut request.measures {
                m.batch = batch;
                diag.counters
                    .saw_event(api_input, m.timestamp_ns.div_euclid(1000));
            }
            self.input.send_batch(&mut request.measures);
            self.pending.push((seq, request.reply));
            taken += 1;
        }
        taken > 0
    }

    /// Moves both inputs to epoch `seq`.
    fn advance_to(&mut self, seq: u64) {
        self.input.advance_to(seq);
        self.alarm_input.advance_to(seq);
    }

    /// Whether no request waits.
    fn is_idle(&self) -> bool {
        self.requests.measures.is_empty() && self.requests.alarms.is_empty()
    }

    /// Closes the request channels; requests that got in after the loop ended are refused
    /// (their senders see an error).
    fn refuse_the_rest(&mut self) {
        self.requests.measures.close();
        self.requests.alarms.close();
        while let Ok(request) = self.requests.measures.try_recv() {
            let _ = request.reply.send(Err(
                "meterflow stopped before taking these measures in; send them again".into(),
            ));
        }
        while let Ok(request) = self.requests.alarms.try_recv() {
            let _ = request.reply.send(Err(
                "meterflow stopped before making this alarm change; make it again".into(),
            ));
        }
    }

    /// Answers every request whose epoch the probe has passed (its checkpoint is committed).
    /// Call only after checking for a failure since the last step: a failing commit is
    /// reported before its epoch can pass.
    fn answer(&mut self, probe: &ProbeHandle<u64>) {
        let mut i = 0;
        while i < self.pending.len() {
            if probe.less_equal(&self.pending[i].0) {
                i += 1;
            } else {
                let (_, reply) = self.pending.swap_remove(i);
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// Worker 0's loop: reads every input in order, one epoch per chunk, keeping a bounded number
/// of chunks in flight, and tells each source which chunks are fully processed (so a Kafka
/// source commits only offsets whose output is written). With the API, measures it accepted
/// go in as epochs of their own, and the loop goes on after the inputs end until asked to
/// stop. Then it runs the dataflow to its end.
#[allow(clippy::too_many_arguments)]
fn feed(
    worker: &mut timely::worker::Worker,
    mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Chunk>>>,
    mut api: Option<ApiFeed>,
    probe: &ProbeHandle<u64>,
    (readers, first_data): (&Readers, &std::sync::OnceLock<Instant>),
    progress_total: Option<Option<u64>>,
    peers: u64,
    live: &Live,
    diag: &RefCell<Diag>,
) -> Result<u64, String> {
    let mut sources = readers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_default();
    let bar = progress_total.map(|total| {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::no_length(),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let in_flight = 2 * peers + 2;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut committed = None;
    let report = |sources: &mut [Box<dyn ChunkSource>], committed: &mut Option<u64>| {
        // Every epoch before the probe's frontier has been processed and published.
        let through = probe.with_frontier(|f| match f.first() {
            None => Some(u64::MAX),
            Some(0) => None,
            Some(t) => Some(t - 1),
        });
        let Some(through) = through else {
            return Ok(());
        };
        if *committed == Some(through) {
            return Ok(());
        }
        *committed = Some(through);
        sources
            .iter_mut()
            .try_for_each(|s| s.processed_through(through))
            .map_err(|e| format!("committing input progress failed: {e}"))
    };
    let api_input_index = sources.len();
    let mut failure = None;
    let mut current = 0;
    let mut published = Instant::now();
    let mut ticked = Instant::now();
    loop {
        let mut sent = api
            .as_mut()
            .is_some_and(|api| api.take(seq, api_input_index, diag));
        if current < sources.len() && !live.stopping() {
            match sources[current].next_chunk(seq) {
                Ok(Some(chunk)) => {
                    if !chunk.data.is_empty() {
                        first_data.get_or_init(Instant::now);
                    }
                    bytes += chunk.data.len() as u64;
                    if let Some(bar) = &bar {
                        bar.inc(chunk.data.len() as u64);
                    }
                    input.send(chunk);
                    sent = true;
                }
                Ok(None) => current += 1,
                Err(e) => {
                    failure = Some(format!("reading input failed: {e}"));
                    break;
                }
            }
        }
        if sent {
            seq += 1;
            input.advance_to(seq);
            if let Some(api) = api.as_mut() {
                api.advance_to(seq);
            }
        }
        worker.step();
        while probe.less_than(&seq.saturating_sub(in_flight)) {
            worker.step();
        }
        if let Err(e) = report(&mut sources, &mut committed) {
            failure = Some(e);
            break;
        }
        if let Some(why) = live.failure() {
            failure = Some(why);
            break;
        }
        if let Some(api) = api.as_mut() {
            api.answer(probe);
        }
        if published.elapsed() >= PUBLISH_EVERY {
            live.publish(0, &diag.borrow().counters);
            published = Instant::now();
        }
        if current >= sources.len() || live.stopping() {
            match &api {
                None => break,
                // Stopping: what was accepted before is taken in; then finish.
                Some(api) if live.stopping() && !sent && api.is_idle() => break,
                Some(_) if !sent => {
                    worker.step_or_park(Some(Duration::from_millis(2)));
                    // An empty epoch now and then lets the store's operator write what it
                    // holds (it checkpoints when due, see `Checkpointed::checkpoint_if_due`).
                    if ticked.elapsed() >= TICK_EVERY {
                        seq += 1;
                        input.advance_to(seq);
                        if let Some(api) = api.as_mut() {
                            api.advance_to(seq);
                        }
                        ticked = Instant::now();
                    }
                }
                Some(_) => {}
            }
        }
    }
    // Whatever happened, let every worker finish what was sent (and publish it) before
    // returning; only then is it safe to commit the last input progress.
    drop(input);
    if let Some(api) = api.as_mut() {
        api.refuse_the_rest();
    }
    let pending = api.map(|api| {
        drop(api.input);
        drop(api.alarm_input);
        api.pending
    });
    while worker.step_or_park(None) {}
    let failure = failure.or_else(|| live.failure());
    for (_, reply) in pending.into_iter().flatten() {
        let _ = reply.send(match &failure {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        });
    }
    if let Some(e) = failure {
        return Err(e);
    }
    report(&mut sources, &mut committed)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        failures: u32,
        retry: bool,
        calls: u32,
    }

    impl Publisher for Flaky {
        fn publish(&mut self, _: &[Sample]) -> Result<(), PublishError> {
            Ok(())
        }
        fn publish_events(&mut self, _: &[Arc<Event>]) -> Result<(), PublishError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), PublishError> {
            self.calls += 1;
            if self.calls <= self.failures {
                return Err(PublishError {
                    target: "test://".into(),
                    message: "disk full".into(),
                    retry: self.retry,
                });
            }
            Ok(())
        }
    }

    #[test]
    fn retryable_flush_failures_are_retried_until_they_succeed() {
        let mut diag = Diag::with_sinks(0);
        let mut p = Flaky {
            failures: 3,
            retry: true,
            calls: 0,
        };
        flush_with_retry(&mut p, "test://", &mut diag);
        assert_eq!(p.calls, 4);
        assert_eq!(diag.counters.dropped_total(), 0);
    }

    #[test]
    fn permanent_flush_failures_are_counted() {
        let mut diag = Diag::with_sinks(0);
        let mut p = Flaky {
            failures: 1,
            retry: false,
            calls: 0,
        };
        flush_with_retry(&mut p, "test://", &mut diag);
        assert_eq!(p.calls, 1);
        assert_eq!(diag.counters.dropped(DropReason::PublishError), 1);
    }
}
