//! Transform: each sink's transformer chain, sample by sample in input order, flushed at every
//! notification boundary as Ceilometer's sink does, then published.
//!
//! Samples arrive exchanged by resource (or, for a sink whose transformers keep cross-resource
//! state, all at the sink's one worker). Each epoch is processed once every input has passed
//! it, its batches back in input order; its output is written out (one sync or broker round
//! trip for all the epochs that were ready) and the epoch passes only once that is durable.
//! Samples for `gnocchi://` publishers leave as measures for the Aggregate operator.
//!
//! A checkpoint's barrier at an epoch makes the operator save its chains' state before it
//! processes that epoch (see [`crate::checkpoint`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use meterflow_connectors::file::deadletter::DeadLetterHandle;
use meterflow_connectors::gnocchi::resources::{ResourceDefinition, ResourceDefinitions};
use meterflow_connectors::gnocchi::store::{Partition as StorePartition, Store, StoreError};
use meterflow_connectors::gnocchi::{resource_key, GnocchiOptions};
use meterflow_connectors::PublisherSpec;
use meterflow_engine::chunk::{input_name, Place};
use meterflow_engine::component::{PublishError, Publisher, PublisherFactory};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::model::Event;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};
use meterflow_engine::Sample;
use meterflow_operators::transform::{Chain, Partition, StageState};
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use super::decode::{resource_route, EventRoutes, OrderedEvent, Routed};
use super::epoch::{ready, EpochStash, Owing};
use crate::checkpoint::{Barrier, Checkpoints, Loaded, SinkState, WorkerState};
use crate::plan::Plan;
use crate::resource_events::{ResourceEventRules, ResourceEvents};
use crate::retry::retry_with_backoff;
use crate::storage::{Measure, Origin};

/// One sink's runtime on one worker.
struct SinkRuntime {
    chain: Chain,
    /// Its transformers as configured (see [`chain_fingerprint`]).
    fingerprint: String,
    publishers: Vec<usize>,
    notification: Option<u64>,
    /// The place of the last sample it took (what its flush rejects is named by it).
    last_at: Place,
    out: Vec<Sample>,
    /// The place of the sample that produced each of `out` (a flush's: the last taken).
    out_at: Vec<Place>,
}

impl SinkRuntime {
    /// Runs one step of the chain (taking a sample, or a flush) with `at` as the place of
    /// what it rejects and produces. A non-finite result (a rate or sum that overflowed)
    /// is rejected there, as decoding rejects a non-finite volume, so no publisher writes
    /// `null` and the store never sees it.
    fn step(
        &mut self,
        at: Place,
        diag: &mut Diag,
        step: impl FnOnce(&mut Chain, &mut Vec<Sample>, &mut Diag),
    ) {
        let from = self.out.len();
        diag.at = Some(at);
        step(&mut self.chain, &mut self.out, diag);
        if self.out[from..]
            .iter()
            .any(|s| !s.volume.as_f64().is_finite())
        {
            let mut i = from;
            while i < self.out.len() {
                if self.out[i].volume.as_f64().is_finite() {
                    i += 1;
                    continue;
                }
                let s = self.out.remove(i);
                diag.drop(DropReason::InvalidMeasure, || {
                    format!("meter {} of resource {}: the transformers made a non-finite volume ({}) of it, which cannot be published or stored; check the chain's scale and inputs", s.name, s.resource_id, s.volume.as_f64())
                });
            }
        }
        diag.at = None;
        self.out_at.resize(self.out.len(), at);
    }

    /// Empties what was published.
    fn clear_out(&mut self) {
        self.out.clear();
        self.out_at.clear();
    }
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
    /// Where its checkpoint parts go, and this worker's index.
    checkpoints: Option<(Arc<Checkpoints>, usize)>,
    /// Event time (µs) after which a quiet series is forgotten, and the newest event time
    /// the last release of such state ran at.
    forget: Option<(i64, i64)>,
    plan: Arc<Plan>,
    /// Where what a transformer rejects goes, if anywhere.
    dead: Option<DeadLetterHandle>,
}

/// A sink's transformers as configured, to tell whether a saved state is this chain's.
fn chain_fingerprint(plan: &Plan, sink: usize) -> String {
    plan.sinks[sink]
        .transformers
        .iter()
        .map(|t| {
            let parameters = serde_yaml::to_string(&t.parameters).unwrap_or_default();
            format!("{}: {}", t.name, parameters.trim())
        })
        .collect::<Vec<_>>()
        .join("\n")
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
                .enumerate()
                .map(|(k, (chain, sink))| SinkRuntime {
                    chain,
                    fingerprint: chain_fingerprint(plan, k),
                    publishers: sink.publishers.clone(),
                    notification: None,
                    last_at: Place::default(),
                    out: Vec::new(),
                    out_at: Vec::new(),
                })
                .collect(),
            events: vec![Vec::new(); publishers.len()],
            resource_events: publishers.iter().map(|_| None).collect(),
            publishers,
            urls: plan.publishers.iter().map(|p| p.url.clone()).collect(),
            event_routes: EventRoutes::default(),
            checkpoints: None,
            forget: None,
            plan: plan.clone(),
            dead: None,
        }
    }

    /// Forgets a series (rate_of_change's and delta's previous sample) once it has been
    /// quiet for `span` of event time, and releases such state as event time moves on.
    pub fn forget_after(mut self, span: std::time::Duration) -> Transformer {
        let span = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
        for sink in &mut self.sinks {
            sink.chain.forget_after(span);
        }
        self.forget = Some((span, i64::MIN));
        self
    }

    /// Releases the state of series quiet for longer than the span, each time event time
    /// (the newest this worker decoded) has moved an eighth of the span on.
    fn release_quiet(&mut self, diag: &mut Diag) {
        let Some((span, swept)) = self.forget else {
            return;
        };
        let Some(&newest) = diag.counters.newest_event_us.iter().max() else {
            return;
        };
        if newest == i64::MIN || newest.saturating_sub(swept) < (span / 8).max(1) {
            return;
        }
        let before = newest.saturating_sub(span);
        let forgotten: usize = self
            .sinks
            .iter_mut()
            .map(|s| s.chain.forget_before(before))
            .sum();
        diag.counters.state_forgotten += forgotten as u64;
        // What the store publishers cache per resource is rebuilt by each live resource's
        // next sample; the resources gone for good leave with it.
        self.store_caches.forget_resources();
        self.forget = Some((span, newest));
    }

    /// Writes this worker's (`index`) checkpoint parts into `checkpoints`.
    pub fn with_checkpoints(mut self, checkpoints: Arc<Checkpoints>, index: usize) -> Transformer {
        self.checkpoints = Some((checkpoints, index));
        self
    }

    /// What the chains keep between notifications (taken between epochs: every sink is
    /// flushed and published then): all of it with `full`, else what changed since the last
    /// save where a transformer can tell.
    pub fn save(&mut self, full: bool) -> WorkerState {
        WorkerState {
            sinks: self
                .sinks
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| !s.chain.is_empty())
                .map(|(k, s)| SinkState {
                    name: self.plan.sinks[k].name.clone(),
                    chain: s.fingerprint.clone(),
                    stages: s.chain.save_checkpoint(full),
                })
                .collect(),
        }
    }

    /// Restores the state `loaded` holds for the sinks worker `index` of `peers` runs: a
    /// sink spread by resource keeps its resources' share of every part, a sink on one
    /// worker the whole of it. A sink whose transformers changed since starts empty (said
    /// in the returned messages).
    pub fn restore(&mut self, loaded: &Loaded, (index, peers): (usize, usize)) -> Vec<String> {
        let mut messages = Vec::new();
        for k in 0..self.sinks.len() {
            let sink = &self.plan.sinks[k];
            if self.sinks[k].chain.is_empty() {
                continue;
            }
            let by_resource = sink.partition == Partition::ByResource;
            if !by_resource && k % peers != index {
                continue;
            }
            let fingerprint = &self.sinks[k].fingerprint;
            // Per checkpoint of the run to restore, the sink's part of every worker's.
            let saved: Vec<Vec<&SinkState>> = loaded
                .chain
                .iter()
                .map(|parts| {
                    parts
                        .iter()
                        .flat_map(|p| &p.sinks)
                        .filter(|s| s.name == sink.name)
                        .collect()
                })
                .collect();
            if saved.iter().flatten().any(|s| &s.chain != fingerprint) {
                messages.push(format!(
                    "sink {}: its transformers changed since checkpoint {}, so their state starts empty",
                    sink.name, loaded.number
                ));
                continue;
            }
            let checkpoints: Vec<Vec<&[StageState]>> = saved
                .iter()
                .map(|parts| parts.iter().map(|s| s.stages.as_slice()).collect())
                .collect();
            if let Err(e) = self.sinks[k].chain.restore_checkpoints(&checkpoints) {
                messages.push(format!(
                    "sink {}: the state of checkpoint {} cannot be restored ({e}); it starts empty",
                    sink.name, loaded.number
                ));
                // What the stages before the failing one took is dropped with them.
                let mut fresh = self.plan.build_chains().swap_remove(k);
                if let Some((span, _)) = self.forget {
                    fresh.forget_after(span);
                }
                self.sinks[k].chain = fresh;
            }
            if by_resource {
                let peers = peers as u64;
                let index = index as u64;
                self.sinks[k]
                    .chain
                    .retain(&|resource| resource_route(resource) % peers == index);
            }
        }
        messages.sort();
        messages.dedup();
        messages
    }

    /// Saves this worker's part of checkpoint `number` (whole with `full`).
    fn save_part(&mut self, number: u64, full: bool) {
        let Some((checkpoints, index)) = self.checkpoints.clone() else {
            return;
        };
        if let Err(e) = checkpoints.write_part(number, index, &self.save(full)) {
            // The checkpoint then cannot be published (counted there); the next one tries again.
            tracing::error!("checkpoint {number}: {e}; the next checkpoint tries again");
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
    /// What a transformer rejects is logged with the sample's place and dead-lettered.
    pub fn handle(&mut self, r: Routed, diag: &mut Diag) {
        let k = usize::from(r.sink);
        let sink = &mut self.sinks[k];
        if sink.notification != Some(r.notification) {
            if let Some(previous) = sink.notification {
                // What the flush rejects belongs to the previous notification.
                sink.step(sink.last_at, diag, |chain, out, diag| {
                    chain.flush(out, diag)
                });
                self.dead_letter(None, diag);
                if self.per_notification[k] {
                    self.publish(k, previous, diag);
                }
            }
            self.sinks[k].notification = Some(r.notification);
        }
        let sink = &mut self.sinks[k];
        sink.last_at = r.at;
        diag.counters.sinks[k].samples_in += 1;
        // Kept only to be dead-lettered (a clone shares the sample's text).
        let kept = self.dead.is_some().then(|| r.sample.clone());
        sink.step(r.at, diag, |chain, out, diag| {
            chain.handle(r.sample, out, diag)
        });
        self.dead_letter(kept.as_ref(), diag);
        if self.sinks[k].out.len() >= Self::PUBLISH_BATCH {
            self.publish(k, r.notification, diag);
        }
    }

    /// Writes what a stage rejected since the last call to the dead-letter file: the sample
    /// it was given when known (replayable as a bare sample line), with place and reason.
    fn dead_letter(&mut self, sample: Option<&Sample>, diag: &mut Diag) {
        dead_letter(&mut self.dead, sample, diag);
    }

    /// Also writes what a transformer rejects to the dead-letter file.
    pub fn with_dead_letter(mut self, dead: Option<DeadLetterHandle>) -> Transformer {
        self.dead = dead;
        self
    }

    /// Ends a batch of notifications: flushes every sink that saw one and publishes (the
    /// publishers may still buffer: [`Transformer::start_write_out`] writes it out).
    pub fn end_epoch(&mut self, diag: &mut Diag) {
        for k in 0..self.sinks.len() {
            let sink = &mut self.sinks[k];
            let notification = sink.notification.take();
            if notification.is_some() {
                sink.step(sink.last_at, diag, |chain, out, diag| {
                    chain.flush(out, diag)
                });
                self.dead_letter(None, diag);
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
                    None => flush_with_retry(p.as_mut(), url, false, diag),
                }
            }
        }
        tickets
    }

    /// Starts making what every publisher has written durable (files synced, off this
    /// thread) before a checkpoint counts it as published: tickets for
    /// [`Transformer::written`]. A publisher whose flush fails is retried like a flush, at
    /// once, and what fails is counted.
    fn start_sync(&mut self, diag: &mut Diag) -> Vec<(usize, u64)> {
        let mut tickets = Vec::new();
        for (i, (p, url)) in self.publishers.iter_mut().zip(&self.urls).enumerate() {
            if let Target::Io(p) = p {
                match p.sync_async() {
                    Ok(Some(ticket)) => tickets.push((i, ticket)),
                    Ok(None) => {}
                    Err(_) => flush_with_retry(p.as_mut(), url, true, diag),
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
                    (&sink.out, &sink.out_at),
                    (notification, k as u16, *index),
                    options,
                    &mut self.store_caches,
                    &mut self.measures,
                    (diag, &mut self.dead),
                ),
            }
        }
        sink.clear_out();
    }
}

/// Writes what a stage rejected since the last call (`diag.rejected`) to the dead-letter
/// file: the sample it was given when known (replayable as a bare sample line), with place
/// and reason.
fn dead_letter(dead: &mut Option<DeadLetterHandle>, sample: Option<&Sample>, diag: &mut Diag) {
    if diag.rejected.is_empty() {
        return;
    }
    let Some(dead) = dead.as_mut() else {
        diag.rejected.clear();
        return;
    };
    let mut raw = Vec::new();
    if let Some(sample) = sample {
        write_sample(sample, EncodeOptions::default(), &mut raw);
        if raw.last() == Some(&b'\n') {
            raw.pop();
        }
    }
    for (reason, at, detail) in diag.rejected.drain(..) {
        let input = input_name(&diag.inputs, at.input);
        dead.record(
            input,
            at.line,
            at.position().as_deref(),
            reason,
            &detail,
            &raw,
        );
    }
    if let Err(e) = dead.flush() {
        tracing::error!("{e}");
    }
}

/// Samples published to `gnocchi://` as measures of (resource, meter), as Ceilometer's
/// gnocchi publisher posts them (`/` in resource ids replaced, the project filter applied).
///
/// A sample the store cannot hold is rejected with the place of the input that produced it,
/// and dead-lettered; one its resource definitions leave out is only counted (a filter, as
/// a source's `meters` are).
fn to_measures(
    (samples, places): (&[Sample], &[Place]),
    (batch, sink, publisher): (u64, u16, u16),
    options: &GnocchiOptions,
    caches: &mut StoreCaches,
    out: &mut Vec<Measure>,
    (diag, dead): (&mut Diag, &mut Option<DeadLetterHandle>),
) {
    let mut reject = |diag: &mut Diag, i: usize, reason, message: &dyn Fn() -> String| {
        diag.at = places.get(i).copied();
        diag.drop(reason, message);
        diag.at = None;
        dead_letter(dead, samples.get(i), diag);
    };
    for (i, s) in samples.iter().enumerate() {
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
            reject(diag, i, DropReason::BadTimestamp, &|| {
                format!("meter {} of resource {}: timestamp {:?} is not ISO 8601, so it cannot be stored; write e.g. 2021-07-30T02:37:21.211598", s.name, s.resource_id, s.timestamp.as_str())
            });
            continue;
        };
        if micros < 0 {
            reject(diag, i, DropReason::InvalidMeasure, &|| {
                format!("meter {} of resource {}: timestamp {} is before 1970, which Gnocchi does not store; the sample is in the dead-letter file", s.name, s.resource_id, s.timestamp.as_str())
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
            origin: Origin::Sink { sink, publisher },
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
    /// Empties the per-resource caches (they hold every resource ever seen otherwise).
    fn forget_resources(&mut self) {
        self.keys = FxHashMap::default();
        self.attributes = FxHashMap::default();
    }

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

/// Flushes a publisher (with `sync`, also making all it wrote durable: see
/// [`Publisher::sync`]), retrying retryable failures (see [`retry_with_backoff`]); what
/// finally fails is counted and tried again at the next flush.
fn flush_with_retry(publisher: &mut dyn Publisher, url: &str, sync: bool, diag: &mut Diag) {
    let flushed = retry_with_backoff(
        url,
        PUBLISH_RETRY_LIMIT,
        |e: &PublishError| e.retry,
        || {
            if sync {
                publisher.sync()
            } else {
                publisher.flush()
            }
        },
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
pub(super) fn resource_event_rules(
    plan: &Plan,
) -> anyhow::Result<Vec<Option<Arc<ResourceEventRules>>>> {
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

/// The Transform operator: runs every sink's chain on the samples routed to this worker and
/// publishes (events: on the worker that made them); saves its state at each checkpoint's
/// `barriers`; out come the measures for the store.
pub fn transform<'s>(
    routed: StreamVec<'s, u64, Routed>,
    events: StreamVec<'s, u64, OrderedEvent>,
    barriers: StreamVec<'s, u64, Barrier>,
    mut transformer: Transformer,
    diag: Rc<RefCell<Diag>>,
) -> StreamVec<'s, u64, Measure> {
    let scope = routed.scope();
    let mut builder = OperatorBuilder::new("Transform".to_owned(), scope);
    let info = builder.operator_info();
    let mut routed = builder.new_input(routed, Exchange::new(|r: &Routed| r.route));
    // An event is published by the worker that made it.
    let mut events = builder.new_input(events, Pipeline);
    let mut barriers = builder.new_input(barriers, Exchange::new(|b: &Barrier| b.route));
    let (output, measures) = builder.new_output::<Vec<Measure>>();
    let mut output = OutputBuilder::from(output);
    let activator = scope.activator_for(info.address.clone());
    builder.build(move |capabilities| {
        drop(capabilities);
        let mut stash = EpochStash::default();
        let mut event_stash = EpochStash::default();
        let mut barrier_stash = EpochStash::default();
        // Epochs processed whose output a broker has yet to acknowledge, oldest first: the
        // worker goes on meanwhile.
        let mut writing = Owing::default();
        move |frontiers| {
            stash.absorb(&mut routed);
            event_stash.absorb(&mut events);
            barrier_stash.absorb(&mut barriers);
            let mut output = output.activate();
            let mut diag = diag.borrow_mut();
            // Every epoch that is ready is processed, then their output is written out at
            // once, and only then do they pass.
            let mut done = Vec::new();
            let mut checkpointed = false;
            while let Some(epoch) = ready(
                &[&frontiers[0], &frontiers[1], &frontiers[2]],
                &[stash.oldest(), event_stash.oldest(), barrier_stash.oldest()],
            ) {
                let mut held = Vec::new();
                // A checkpoint at this epoch holds the state every epoch before it left.
                if let Some((capability, batches)) = barrier_stash.take(epoch) {
                    for b in batches.into_iter().flatten() {
                        transformer.save_part(b.number, b.full);
                    }
                    checkpointed = true;
                    held.push(capability);
                }
                if let Some((capability, batches)) = event_stash.take_in_order(epoch) {
                    for e in batches.into_iter().flatten() {
                        transformer.handle_event(e.event, &mut diag);
                    }
                    held.push(capability);
                }
                if let Some((capability, batches)) = stash.take_in_order(epoch) {
                    for r in batches.into_iter().flatten() {
                        transformer.handle(r, &mut diag);
                    }
                    held.push(capability);
                }
                transformer.end_epoch(&mut diag);
                transformer.release_quiet(&mut diag);
                let mut measures = transformer.take_measures();
                if let (false, Some(capability)) = (measures.is_empty(), held.first()) {
                    output.session(capability).give_container(&mut measures);
                }
                done.append(&mut held);
            }
            if !done.is_empty() {
                let mut tickets = transformer.start_write_out(&mut diag);
                // The checkpoint passes once the output of every epoch before it is durable.
                if checkpointed {
                    tickets.extend(transformer.start_sync(&mut diag));
                }
                writing.hold(tickets, done);
            }
            if !writing.release_while(|tickets| transformer.written(tickets, &mut diag)) {
                activator.activate_after(ACK_POLL);
            }
        }
    });
    measures
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
        flush_with_retry(&mut p, "test://", false, &mut diag);
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
        flush_with_retry(&mut p, "test://", false, &mut diag);
        assert_eq!(p.calls, 1);
        assert_eq!(diag.counters.dropped(DropReason::PublishError), 1);
    }
}
