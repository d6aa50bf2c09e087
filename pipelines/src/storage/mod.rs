//! The `gnocchi://` publisher's runtime: measures aggregated per metric by archive policy,
//! exactly as Gnocchi's storage does (`meterflow_operators::aggregate::Metric`), with final
//! buckets and resumable state checkpointed into the embedded store.
//!
//! Each notification a sink publishes is one batch of measures per metric (what `back_window`
//! counts in). A bucket is final once the metric's own newest measure has moved so far on that
//! no later measure can reach it (`floor(last, block) − block × back_window`); final buckets
//! leave memory for the store. At a checkpoint (every epoch with an input that commits
//! offsets, and at the end of the input) every changed metric's open buckets and raw measures
//! are written too, so the store shows the newest values and a later run resumes exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterflow_connectors::gnocchi::store::{
    Checkpoint, MetricRecord, MetricState, Partition, Store, StoreError,
};
use meterflow_connectors::gnocchi::{metric_uuid, GnocchiOptions};
use meterflow_connectors::PublisherSpec;
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::partition::route;
use meterflow_operators::aggregate::{ArchivePolicy, Metric};
use meterflow_operators::alarm::definition::AlarmDefinition;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::alarms::{AlarmEdit, Alarms};
use crate::committer::{Cadence, Checkpointed, Commits};
use crate::feeds::{Feed, Feeds, MetricView};
use crate::plan::Plan;

mod quiet;

use quiet::Quiet;

/// A sample on its way to the store: one measure of metric (resource, meter).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measure {
    /// Exchange key: the route of `resource_key`.
    pub route: u64,
    /// The notification it was published for (one batch, for `back_window`).
    pub batch: u64,
    /// Where it came from: a sink's `gnocchi://` publisher, or the API.
    pub origin: Origin,
    /// The resource id as Gnocchi keys it (`/` replaced by `_`).
    pub resource_key: Sym,
    /// The resource id as the sample carried it.
    pub resource_id: Sym,
    /// The metric (the meter name).
    pub name: Sym,
    /// The sample's unit.
    pub unit: Sym,
    /// The sample's user.
    pub user_id: Option<Sym>,
    /// The sample's project.
    pub project_id: Option<Sym>,
    /// The resource type its resource definition gives (else the publisher's).
    pub resource_type: Option<Sym>,
    /// The resource attributes its resource definition takes from the sample (JSON object).
    pub attributes: Option<Arc<str>>,
    /// The archive policy the request that sent it names for the metric, if it names one
    /// (Gnocchi's batch API); otherwise the publisher's, then the archive-policy rules decide.
    pub policy: Option<Sym>,
    /// Nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// The value.
    pub value: f64,
}

/// Where a measure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// Published by a sink (index in the plan) through a `gnocchi://` publisher (index into
    /// the plan's publishers).
    Sink {
        /// The sink.
        sink: u16,
        /// The publisher.
        publisher: u16,
    },
    /// Posted to the API (answered once its epoch is committed).
    Api,
    /// A metric created through the API without measures (`POST /v1/metric`, or a batch
    /// naming a new metric with an empty list): the metric is made and its record
    /// committed; the measure carries no point.
    ApiCreate,
}

/// The `gnocchi://` options measures are stored under, by origin.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Per publisher of the plan, its options if it is a `gnocchi://` one.
    pub publishers: Vec<Option<GnocchiOptions>>,
    /// The API's: the archive-policy rules pick the policy of metrics a request does not name
    /// one for.
    pub api: GnocchiOptions,
}

impl StoreOptions {
    /// The options of `plan`'s `gnocchi://` publishers, and the API's.
    pub fn of(plan: &Plan) -> StoreOptions {
        StoreOptions {
            publishers: plan
                .publishers
                .iter()
                .map(|p| match &p.spec {
                    PublisherSpec::Gnocchi(o) => Some(o.clone()),
                    _ => None,
                })
                .collect(),
            api: GnocchiOptions {
                resource_type: "generic".into(),
                ..GnocchiOptions::default()
            },
        }
    }

    /// The options measures of `origin` are stored under.
    pub fn get(&self, origin: Origin) -> Option<&GnocchiOptions> {
        match origin {
            Origin::Sink { publisher, .. } => self
                .publishers
                .get(usize::from(publisher))
                .and_then(Option::as_ref),
            Origin::Api | Origin::ApiCreate => Some(&self.api),
        }
    }
}

/// Opens the store a plan writes to: refuses a foreign, read-only or busy directory and a
/// definition whose archive policy contradicts one the store already holds, then records the
/// plan's and the built-in policies.
pub fn open_store(plan: &Plan, dir: &Path) -> anyhow::Result<Arc<Store>> {
    let store = Store::create(dir)?;
    let stored = store.archive_policies();
    let mut record = Vec::new();
    for name in ArchivePolicy::BUILTIN {
        if let Some(p) = ArchivePolicy::builtin(name) {
            record.push(p);
        }
    }
    for policy in &plan.archive_policies {
        record.retain(|p| p.name != policy.name);
        record.push(policy.clone());
    }
    for policy in &record {
        if let Some(json) = stored.get(&policy.name) {
            let existing = ArchivePolicy::from_json(json).with_context(|| {
                format!("store {}: archive policy {}", dir.display(), policy.name)
            })?;
            if existing != *policy {
                anyhow::bail!(
                    "archive policy {:?} in store {} differs from the one in the definition (stored: {}; defined: {}); Gnocchi never changes a policy under existing metrics: give the new one another name, or use another --store",
                    policy.name,
                    dir.display(),
                    json,
                    policy.to_json()
                );
            }
        }
    }
    let recorded = store.put_archive_policies(
        record
            .iter()
            .filter(|p| !stored.contains_key(&p.name))
            .map(|p| (p.name.clone(), p.to_json())),
    );
    match recorded {
        // Recorded with the first commit once there is space (no metric uses them yet).
        Err(e) if e.is_full() => {
            tracing::error!(
                "store {}: the disk is full; new archive policies are recorded once there is space",
                dir.display()
            );
        }
        result => result?,
    }
    Ok(store)
}

/// One worker's share of what the store holds: its resources' metrics and their state.
#[derive(Default)]
pub struct Share {
    partition: Partition,
    known: HashMap<(String, String), MetricRecord>,
    states: HashMap<(String, String), MetricState>,
}

/// Reads the store's metrics and state once and splits them over `peers` workers by the
/// route that sends each resource's measures to its worker.
pub fn load_shares(store: &Store, peers: usize) -> Result<Vec<Share>, StoreError> {
    let mut shares: Vec<Share> = (0..peers)
        .map(|index| Share {
            partition: Partition {
                index: index as u32,
                count: peers as u32,
            },
            ..Share::default()
        })
        .collect();
    let worker = |resource: &str| (route(resource) % peers as u64) as usize;
    for record in store.metrics(&|_| true)? {
        let key = (record.resource_id.clone(), record.metric_name.clone());
        shares[worker(&key.0)].known.insert(key, record);
    }
    for (key, state) in store.states(&|_| true)? {
        shares[worker(&key.0)].states.insert(key, state);
    }
    Ok(shares)
}

/// A policy with its method names interned for the store's rows.
struct Policy {
    policy: Arc<ArchivePolicy>,
    methods: Vec<Sym>,
}

struct Entry {
    key: (Sym, Sym),
    metric: Metric,
    policy: Arc<Policy>,
    /// Its record (as stored, or as the next checkpoint writes it).
    record: MetricRecord,
    dirty: bool,
    /// The number of the commit that carries its state as last collected.
    collected: u64,
    /// Buckets it held in memory at the last checkpoint (for the `buckets_open` gauge).
    held: u64,
    /// Its id (alarms over several metrics name their contributors by it).
    id: Arc<str>,
}

impl Entry {
    /// Adds its open buckets (as aggregates and as state) and raw measures to `checkpoint`,
    /// the commit numbered `number`.
    fn write_state(&mut self, checkpoint: &mut Checkpoint, number: u64, diag: &mut Diag) {
        let (resource, name) = self.key;
        self.dirty = false;
        self.collected = number;
        let methods = &self.policy.methods;
        let definition = &self.policy.policy.definition;
        let (aggregates, state) = (&mut checkpoint.aggregates, &mut checkpoint.state);
        let mut held = 0;
        self.metric.provisional(&mut |gi, mi, t, v| {
            let g = definition[gi].granularity;
            aggregates.push(resource, name, Some(methods[mi]), g, t, v);
            state.push(resource, name, Some(methods[mi]), g, t, v);
            held += 1;
        });
        let gauge = &mut diag.counters.buckets_open;
        *gauge = (*gauge + held).saturating_sub(self.held);
        self.held = held;
        for &(t, v) in self.metric.raw() {
            state.push(resource, name, None, 0, t, v);
        }
    }
}

/// The metrics in memory, in the order they arrived, found by (resource, name) once per
/// batch.
#[derive(Default)]
struct Metrics {
    index: FxHashMap<(Sym, Sym), u32>,
    entries: Vec<Entry>,
}

impl Metrics {
    fn find(&self, key: &(Sym, Sym)) -> Option<usize> {
        self.index.get(key).map(|&i| i as usize)
    }

    fn get(&self, key: &(Sym, Sym)) -> Option<&Entry> {
        self.find(key).map(|i| &self.entries[i])
    }

    fn get_mut(&mut self, key: &(Sym, Sym)) -> Option<&mut Entry> {
        self.find(key).map(|i| &mut self.entries[i])
    }

    fn contains_key(&self, key: &(Sym, Sym)) -> bool {
        self.index.contains_key(key)
    }

    /// Adds a metric not held yet; its position.
    fn insert(&mut self, entry: Entry) -> usize {
        let i = self.entries.len();
        let position = u32::try_from(i).expect("fewer than 2^32 metrics per worker");
        self.index.insert(entry.key, position);
        self.entries.push(entry);
        i
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes out the entries `leave` picks; the rest keep their order.
    fn take_where(&mut self, mut leave: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let (out, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| leave(e));
        if out.is_empty() {
            self.entries = kept;
            return out;
        }
        self.index.clear();
        for entry in kept {
            self.insert(entry);
        }
        out
    }
}

/// One worker's share of the metrics: aggregation state, checkpoints into the store.
pub struct Aggregator {
    store: Arc<Store>,
    partition: Partition,
    plan: Arc<Plan>,
    policies: HashMap<String, Arc<Policy>>,
    /// The store's policies version `policies` and `rules` were read at.
    policies_version: u64,
    /// The archive policy rules: the definition's and those created through the API.
    rules: Vec<crate::plan::ArchivePolicyRule>,
    metrics: Metrics,
    /// The metrics in memory of each resource.
    by_resource: FxHashMap<Sym, Vec<Sym>>,
    /// The records and states of stored metrics not in memory yet (read at the start, or
    /// reloaded for metrics released earlier that speak again).
    known: HashMap<(String, String), MetricRecord>,
    states: HashMap<(String, String), MetricState>,
    /// Quiet metrics released from memory (see [`Aggregator::forget_after`]).
    quiet: Quiet,
    /// What the next checkpoint writes, when, and the thread that writes it.
    commits: Commits,
    durable: bool,
    failure: Option<String>,
    /// The engine's watermark as this worker knows it (ns): the newest measure any worker
    /// had aggregated by the end of the epochs before the current one, which `no_data_grace`
    /// alarms are judged by. It travels in band (see `dataflow::aggregate`).
    watermark: i64,
    /// The alarms on this worker's metrics.
    alarms: Alarms,
    /// Which of its metrics feed alarms over several metrics.
    feeds: Feeds,
    /// What goes to the cross operator after the current epoch.
    outbox: Vec<Feed>,
    /// The newest event time last reported to the cross operators.
    ticked: i64,
}

impl Aggregator {
    /// Final buckets buffered before a checkpoint writes them out (bounds memory).
    const MAX_BUFFERED_ROWS: usize = 1 << 20;

    /// Worker `share.partition.index`: the metrics and state of its resources come from
    /// [`load_shares`]. `durable`: checkpoint every epoch (an input commits offsets after each).
    pub fn new(store: Arc<Store>, plan: Arc<Plan>, share: Share, durable: bool) -> Aggregator {
        let Share {
            partition,
            known,
            states,
        } = share;
        let rules = plan.rules_with(&store.archive_policy_rules());
        Aggregator {
            commits: Commits::new(store.clone(), partition, Cadence::default()),
            store,
            partition,
            plan,
            policies: HashMap::new(),
            policies_version: 0,
            rules,
            metrics: Metrics::default(),
            by_resource: FxHashMap::default(),
            known,
            states,
            quiet: Quiet::default(),
            durable,
            failure: None,
            watermark: i64::MIN,
            alarms: Alarms::default(),
            feeds: Feeds::default(),
            outbox: Vec::new(),
            ticked: i64::MIN,
        }
    }

    /// Feeds the alarms over several metrics among `alarms` (all of them, whichever worker
    /// evaluates each) from this worker's metrics.
    pub fn with_cross_alarms<'a>(
        mut self,
        alarms: impl IntoIterator<Item = &'a Arc<AlarmDefinition>>,
    ) -> Aggregator {
        for alarm in alarms {
            self.feeds.watch(alarm.clone());
        }
        self
    }

    /// What goes to the cross operators for the epochs processed since the last call.
    pub fn take_feeds(&mut self) -> Vec<Feed> {
        std::mem::take(&mut self.outbox)
    }

    /// Evaluates `alarms` (this worker's) as the metrics they read close buckets.
    pub fn with_alarms(mut self, alarms: Alarms) -> Aggregator {
        self.commits.cadence.changed |= !alarms.is_empty();
        self.alarms = alarms;
        self
    }

    /// The newest measure this worker has aggregated (ns; `i64::MIN` before the first).
    pub fn newest(&self) -> i64 {
        self.ticked
    }

    /// The engine's watermark reached `watermark` (it only moves forward): evaluates the
    /// alarms with a `no_data_grace` whose boundaries it has passed by that grace, data or
    /// not.
    pub fn advance_watermark(&mut self, watermark: i64, diag: &mut Diag) {
        self.watermark = self.watermark.max(watermark);
        self.release_quiet(diag);
        let metrics = &self.metrics;
        self.alarms.on_watermark(
            self.watermark,
            |key| metrics.get(&key).map(|e| &e.metric),
            diag,
        );
    }

    /// Applies alarm changes made through the API; they are committed by the next
    /// [`Checkpointed::settle`] (the API answers once they are).
    pub fn edit_alarms(&mut self, edits: Vec<AlarmEdit>, diag: &mut Diag) {
        if edits.is_empty() {
            return;
        }
        let mut flushed = false;
        for mut edit in edits {
            if edit.cross {
                let prime = self.feeds.apply(&edit);
                let peers = u64::from(self.partition.count);
                if edit.route % peers == u64::from(self.partition.index) {
                    edit.copy = None;
                    self.outbox.push(Feed::Edit(edit));
                }
                if prime {
                    if !flushed {
                        self.commit_now(diag);
                        flushed = true;
                    }
                    let keys: Vec<(Sym, Sym)> =
                        self.metrics.entries.iter().map(|e| e.key).collect();
                    for key in keys {
                        self.prime_feeds(key);
                    }
                }
                continue;
            }
            let Some(i) = self.alarms.apply(edit) else {
                continue;
            };
            let Some((resource, name)) = self.alarms.watched(i) else {
                continue;
            };
            // A metric not in memory has no closed bucket newer than what its first
            // measures will close: those decide.
            if !self.metrics.contains_key(&(resource, name)) {
                continue;
            }
            if !flushed {
                // The final buckets buffered here go to the store first, to be read back.
                self.commit_now(diag);
                flushed = true;
            }
            let (id, metric) = (resource.as_str(), name.as_str());
            let stored = match self.store.aggregates(id, metric, route(id)) {
                Ok(points) => points,
                Err(e) => {
                    tracing::warn!("alarm on metric {metric} of {id}: its stored buckets cannot be read ({e}); its first evaluations see only the buckets in memory");
                    Vec::new()
                }
            };
            if let Some(entry) = self.metrics.get(&(resource, name)) {
                self.alarms.prime(i, &entry.metric, &stored);
            }
        }
        self.commits.cadence.owed = true;
    }

    /// Works out which cross alarms metric `key` feeds and sends the window of those it has
    /// not sent yet (read from the store and memory: call after the buffered final buckets
    /// were committed, or before the metric's first batch of this run).
    fn prime_feeds(&mut self, key: (Sym, Sym)) {
        let view = || {
            let entry = self.metrics.get(&key)?;
            let record = &entry.record;
            Some(MetricView {
                metric_id: record.metric_id.clone(),
                resource: record.resource_json(record.resource_attributes.as_deref()),
                granularities: entry
                    .policy
                    .policy
                    .definition
                    .iter()
                    .map(|d| d.granularity)
                    .collect(),
                methods: entry.policy.methods.clone(),
            })
        };
        if !self.feeds.refresh(key, &view) {
            return;
        }
        let Some(entry) = self.metrics.get(&key) else {
            return;
        };
        let (id, name) = (key.0.as_str(), key.1.as_str());
        let stored = match self.store.aggregates(id, name, route(id)) {
            Ok(points) => points,
            Err(e) => {
                tracing::warn!("metric {name} of {id}: its stored buckets cannot be read ({e}); the alarms it feeds see only the buckets in memory");
                Vec::new()
            }
        };
        self.feeds
            .prime(key, &entry.id, &entry.metric, &stored, &mut self.outbox);
    }

    /// The end of a bounded input: every alarm's newest bucket closes and is evaluated.
    /// Call once the watermark is final: every progress [`Aggregator::advance_watermark`]
    /// took has already swept the alarms with a `no_data_grace`.
    pub fn close_alarms(&mut self, diag: &mut Diag) {
        let Aggregator {
            metrics, alarms, ..
        } = self;
        for entry in &metrics.entries {
            let key = entry.key;
            alarms.on_metric(key, &entry.metric, true, diag);
            self.feeds
                .on_metric(key, &entry.id, &entry.metric, true, &mut self.outbox);
        }
        self.commits.cadence.changed |= !alarms.is_empty();
    }

    /// Also checkpoints whenever [`Checkpointed::checkpoint_if_due`] finds `interval` passed
    /// since the last one (a long-running engine whose store is being read).
    pub fn checkpoint_every(&mut self, interval: Duration) {
        self.commits.cadence.interval = Some(interval);
    }

    /// Why the store could not be written, if it could not.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref().or(self.commits.failure())
    }

    /// Forgets the policies and rules read before the API changed them.
    fn follow_policy_changes(&mut self) {
        let version = self.store.policies_version();
        if version != self.policies_version {
            self.policies.clear();
            self.rules = self.plan.rules_with(&self.store.archive_policy_rules());
            self.policies_version = version;
        }
    }

    /// The policy named (cached; [`Aggregator::ensure`], its one caller, has brought the
    /// cache up to date with the API's changes).
    fn policy(&mut self, name: &str) -> Option<Arc<Policy>> {
        if let Some(p) = self.policies.get(name) {
            return Some(p.clone());
        }
        let policy = self.plan.archive_policy(name).or_else(|| {
            let stored = self.store.archive_policies();
            ArchivePolicy::from_json(stored.get(name)?).ok()
        })?;
        let policy = Arc::new(Policy {
            methods: policy
                .methods
                .iter()
                .map(|m| Sym::new(&m.to_string()))
                .collect(),
            policy: Arc::new(policy),
        });
        self.policies.insert(name.to_owned(), policy.clone());
        Some(policy)
    }

    /// Makes sure `m`'s metric is in memory (resumed from the store, or new); its position.
    /// `None` when its archive policy does not exist.
    fn ensure(&mut self, m: &Measure, options: &GnocchiOptions) -> Option<usize> {
        let key = (m.resource_key, m.name);
        if let Some(i) = self.metrics.find(&key) {
            return Some(i);
        }
        if let Some(i) = self.unpark(key) {
            return Some(i);
        }
        let skey = (
            m.resource_key.as_str().to_owned(),
            m.name.as_str().to_owned(),
        );
        self.follow_policy_changes();
        let policy_name = match self.known.get(&skey) {
            Some(record) => record.archive_policy_name.clone(),
            None => m
                .policy
                .map(|p| p.as_str().to_owned())
                .or_else(|| options.archive_policy.clone())
                .or_else(|| {
                    crate::plan::policy_by_rules(&self.rules, m.name.as_str()).map(str::to_owned)
                })
                .unwrap_or_else(|| "low".to_owned()),
        };
        let policy = self.policy(&policy_name)?;
        let metric = match self.states.remove(&skey) {
            Some(state) => resume(&policy, state),
            None => Metric::new(policy.policy.clone()),
        };
        // The metric's record: the store's, or a new one the next checkpoint writes.
        let record = match self.known.remove(&skey) {
            Some(known) => known,
            None => {
                let (resource_id, metric_name) = skey;
                let record = MetricRecord {
                    metric_id: metric_uuid(&resource_id, &metric_name),
                    resource_id,
                    original_resource_id: m.resource_id.as_str().to_owned(),
                    metric_name,
                    unit: m.unit.as_str().to_owned(),
                    archive_policy_name: policy_name,
                    resource_type: m
                        .resource_type
                        .map_or_else(|| options.resource_type.clone(), |t| t.as_str().to_owned()),
                    user_id: m.user_id.map(|s| s.as_str().to_owned()),
                    project_id: m.project_id.map(|s| s.as_str().to_owned()),
                    resource_attributes: m.attributes.as_deref().map(str::to_owned),
                };
                self.commits.checkpoint.metrics.push(record.clone());
                record
            }
        };
        let id: Arc<str> = Arc::from(record.metric_id.as_str());
        self.by_resource
            .entry(m.resource_key)
            .or_default()
            .push(m.name);
        Some(self.metrics.insert(Entry {
            key,
            metric,
            policy,
            record,
            dirty: false,
            collected: 0,
            held: 0,
            id,
        }))
    }

    /// Aggregates one epoch's measures: each (sink, notification, metric) is one batch, in
    /// notification order.
    pub fn process(
        &mut self,
        measures: &mut Vec<Measure>,
        options: &StoreOptions,
        diag: &mut Diag,
    ) {
        // Measures the API accepted are answered once committed: checkpoint their epoch.
        let from_api = measures
            .iter()
            .any(|m| matches!(m.origin, Origin::Api | Origin::ApiCreate));
        self.commits.cadence.changed |= !measures.is_empty();
        let ptr = |s: Sym| s.as_str().as_ptr() as usize;
        let order = |m: &Measure| (m.batch, m.origin, ptr(m.resource_key), ptr(m.name));
        // Measures usually arrive grouped already (a notification's together).
        if !measures.is_sorted_by_key(order) {
            measures.sort_by_key(order);
        }
        self.reload_released(measures, diag);
        let mut points = Vec::new();
        let mut newest = i64::MIN;
        for group in measures.chunk_by(|a, b| {
            (a.batch, a.origin, a.resource_key, a.name)
                == (b.batch, b.origin, b.resource_key, b.name)
        }) {
            let m = &group[0];
            let Some(options) = options.get(m.origin) else {
                continue;
            };
            points.clear();
            points.extend(group.iter().map(|m| (m.timestamp_ns, m.value)));
            if self.unreadable((m.resource_key, m.name)) {
                for _ in group {
                    diag.drop(DropReason::PublishError, || {
                        format!("metric {} of resource {}: its state could not be read back from the store (see the log), so its measures are not aggregated", m.name, m.resource_id)
                    });
                }
                continue;
            }
            let Some(i) = self.ensure(m, options) else {
                for _ in group {
                    diag.drop(DropReason::PublishError, || {
                        format!("metric {} of resource {}: its archive policy is not defined; define it under archive_policies:", m.name, m.resource_id)
                    });
                }
                continue;
            };
            if m.origin == Origin::ApiCreate {
                // Made (its record is in the next checkpoint); no point to add.
                continue;
            }
            let key = (m.resource_key, m.name);
            if let Some(new) = &m.attributes {
                let recorded = &self.metrics.entries[i].record.resource_attributes;
                if recorded.as_deref() != Some(&**new) {
                    self.update_attributes(m.resource_key, new);
                }
            }
            newest = points.iter().fold(newest, |n, p| n.max(p.0));
            if !self.feeds.is_empty() {
                self.prime_feeds(key);
            }
            let entry = &mut self.metrics.entries[i];
            let outcome = entry.metric.add_batch_from(&mut points);
            // Counted as aggregated: what was not dropped.
            diag.counters.measures += (group.len() - outcome.late - outcome.invalid) as u64;
            for _ in 0..outcome.late {
                diag.drop(DropReason::LateMeasure, || {
                    format!("metric {} of resource {}: a measure older than archive policy {}'s back_window allows was dropped (Gnocchi drops these too); raise back_window to accept later data", m.name, m.resource_id, entry.policy.policy.name)
                });
            }
            for _ in 0..outcome.invalid {
                diag.drop(DropReason::InvalidMeasure, || {
                    format!(
                        "metric {} of resource {}: a NaN or infinite value cannot be stored",
                        m.name, m.resource_id
                    )
                });
            }
            entry.dirty = true;
            self.alarms.on_metric(key, &entry.metric, false, diag);
            self.feeds
                .on_metric(key, &entry.id, &entry.metric, false, &mut self.outbox);
            let (resource, name, methods) = (m.resource_key, m.name, &entry.policy.methods);
            let definition = &entry.policy.policy.definition;
            let rows = &mut self.commits.checkpoint.aggregates;
            entry.metric.take_final(&mut |gi, mi, t, v| {
                rows.push(
                    resource,
                    name,
                    Some(methods[mi]),
                    definition[gi].granularity,
                    t,
                    v,
                );
            });
        }
        diag.counters.metrics_open = self.metrics.len() as u64;
        if newest > self.ticked {
            self.ticked = newest;
            for worker in 0..u64::from(self.partition.count) {
                self.outbox.push(Feed::Tick {
                    route: worker,
                    newest,
                });
            }
        }
        measures.clear();
        if self.durable || from_api {
            self.commits.cadence.owed = true;
        } else if self.commits.checkpoint.aggregates.len() >= Self::MAX_BUFFERED_ROWS {
            self.commits.start(diag);
        }
    }

    /// Ceilometer updates a resource's attributes with every batch: the newest are recorded
    /// on every metric of the resource (a newer metric record overrides the older).
    fn update_attributes(&mut self, resource: Sym, attributes: &str) {
        for &name in self.by_resource.get(&resource).into_iter().flatten() {
            self.feeds.invalidate((resource, name));
            let Some(entry) = self.metrics.get_mut(&(resource, name)) else {
                continue;
            };
            let record = &mut entry.record;
            if record.resource_attributes.as_deref() != Some(attributes) {
                record.resource_attributes = Some(attributes.to_string());
                self.commits.checkpoint.metrics.push(record.clone());
            }
        }
    }

    /// Commits what is buffered and waits until it is written (to read the store back).
    fn commit_now(&mut self, diag: &mut Diag) {
        if self.failure.is_none() {
            self.commits.commit_now(diag);
        }
    }
}

impl Checkpointed for Aggregator {
    fn commits(&mut self) -> &mut Commits {
        &mut self.commits
    }

    /// Adds every changed metric's open buckets and state to the checkpoint, and the alarms'.
    fn collect(&mut self, diag: &mut Diag) {
        self.commits.cadence.restart();
        let number = self.commits.next();
        for entry in self.metrics.entries.iter_mut().filter(|e| e.dirty) {
            entry.write_state(&mut self.commits.checkpoint, number, diag);
        }
        diag.counters.alarms = self.alarms.len() as u64;
        if let Err(e) = self.alarms.checkpoint(&mut self.commits.checkpoint) {
            self.failure = Some(e);
        }
    }
}

/// One worker's cross operator: evaluates the alarms over several metrics it owns from the
/// [`Feed`]s the store operators send, and checkpoints their state and history into the
/// store beside the measures.
pub struct CrossStage {
    alarms: Alarms,
    /// What the next checkpoint writes, when, and the thread that writes it.
    commits: Commits,
    durable: bool,
    failure: Option<String>,
}

impl CrossStage {
    /// Worker `index` of `count` evaluating `alarms`; `durable`: checkpoint every epoch.
    pub fn new(
        store: Arc<Store>,
        (index, count): (usize, usize),
        alarms: Alarms,
        durable: bool,
    ) -> CrossStage {
        let partition = Partition {
            index: index as u32,
            count: count as u32,
        };
        let cadence = Cadence {
            changed: !alarms.is_empty(),
            ..Cadence::default()
        };
        CrossStage {
            commits: Commits::new(store, partition, cadence),
            alarms,
            durable,
            failure: None,
        }
    }

    /// Also checkpoints at least this often while something changed.
    pub fn checkpoint_every(&mut self, interval: Duration) {
        self.commits.cadence.interval = Some(interval);
    }

    /// Takes one epoch's feeds: alarm changes first, then buckets, then the store
    /// operators' event times; then evaluates every instant now closed.
    pub fn process(&mut self, mut feeds: Vec<Feed>, diag: &mut Diag) {
        if feeds.is_empty() {
            return;
        }
        // Events in their event-time order, whichever worker decoded them.
        fn key(f: &Feed) -> (u8, Option<(&str, &str)>) {
            match f {
                Feed::Edit(_) => (0, None),
                Feed::Points { .. } => (1, None),
                Feed::Tick { .. } => (2, None),
                Feed::Event { event, .. } => (3, Some((&event.generated, &event.message_id))),
            }
        }
        feeds.sort_by(|a, b| key(a).cmp(&key(b)));
        for feed in feeds {
            match feed {
                Feed::Edit(edit) => {
                    self.alarms.apply(edit);
                    self.commits.cadence.owed = true;
                }
                Feed::Points {
                    alarm_id,
                    leaf,
                    metric_id,
                    points,
                    newest,
                    ended,
                    ..
                } => {
                    self.alarms.on_feed(
                        (&alarm_id, leaf as usize, &metric_id),
                        (&points, newest, ended),
                    );
                    self.commits.cadence.changed = true;
                }
                Feed::Tick { newest, .. } => self.alarms.on_tick(newest),
                Feed::Event { event, .. } => {
                    self.alarms.on_event(&event, diag);
                    self.commits.cadence.changed = true;
                }
            }
        }
        self.alarms.run_cross(diag);
        self.commits.cadence.owed |= self.durable;
    }

    /// Why the store could not be written, if it could not.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref().or(self.commits.failure())
    }
}

impl Checkpointed for CrossStage {
    fn commits(&mut self) -> &mut Commits {
        &mut self.commits
    }

    /// Adds every changed alarm's state and the history to the checkpoint.
    fn collect(&mut self, diag: &mut Diag) {
        self.commits.cadence.restart();
        diag.counters.alarms_cross = self.alarms.len() as u64;
        if let Err(e) = self.alarms.checkpoint(&mut self.commits.checkpoint) {
            self.failure = Some(e);
        }
    }
}

/// A metric resumed from its stored state (raw measures, open buckets).
fn resume(policy: &Policy, state: MetricState) -> Metric {
    let mut raw = Vec::new();
    let mut buckets = Vec::new();
    for p in state {
        match p.aggregation {
            None => raw.push((p.timestamp_ns, p.value)),
            Some(name) => {
                let gi = policy
                    .policy
                    .definition
                    .iter()
                    .position(|g| g.granularity == p.granularity_ns);
                let mi = policy.methods.iter().position(|m| m.as_str() == name);
                if let (Some(gi), Some(mi)) = (gi, mi) {
                    buckets.push((gi, mi, p.timestamp_ns, p.value));
                }
            }
        }
    }
    Metric::restore(policy.policy.clone(), raw, buckets)
}
