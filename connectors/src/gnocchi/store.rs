//! The embedded store under `--store DIR`: metrics, their aggregates and the state that later
//! measures can still change, as Parquet files that a manifest makes visible atomically.
//!
//! ```text
//! DIR/manifest.json                      the commit point: format, generation, archive policies, files
//! DIR/metrics/g000000000007-p0of2.parquet    one row per metric (id, resource, name, unit, policy, ...)
//! DIR/aggregates/g000000000007-p0of2.parquet bucket values: resource_id, metric_name, aggregation,
//!                                            granularity_seconds, timestamp, value, generation
//! DIR/state/g000000000007-p0of2.parquet      per metric, the raw measures inside the back window
//!                                            (aggregation null) and the buckets still open
//! DIR/alarms/g000000000007-p0of2.parquet     per alarm: its definition (Aodh's JSON; null once
//!                                            deleted) and its evaluation state (JSON)
//! DIR/alarm_history/g000000000007-p0of2.parquet  every alarm change and state transition
//! DIR/resources/g000000000007-p0of2.parquet  resources that events created or ended
//! ```
//! Each checkpoint of each worker writes one file per table (temp file, fsync, rename) and then
//! a new manifest (temp file, fsync, rename, directory fsync): a crash before the manifest
//! leaves files that no manifest names, which the next writer deletes; nothing half-written is
//! ever visible. Files are partitioned by the resource hash that spread metrics over workers
//! (`p{index}of{count}`), so reading one metric opens one file per checkpoint. Rows of a newer
//! generation override older rows with the same key, so replaying input (after a crash, or the
//! same file twice) never counts a measure twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use meterflow_engine::intern::Sym;
use meterflow_engine::partition::route;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// What `manifest.json` says it is.
pub const FORMAT: &str = "meterflow-store";
/// The layout version this build reads and writes.
pub const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// Compaction merges two files only while together they hold at most this many rows.
pub const MERGE_MAX_ROWS: u64 = 256 << 10;
/// How long a file compaction replaced stays on disk for reads that listed it.
pub const RETIRE_AFTER: Duration = Duration::from_secs(30);
const LOCK: &str = ".lock";

/// A store operation failed. Every message names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory has files but no meterflow manifest.
    #[error("{dir} is not a meterflow store (it is not empty and has no manifest.json with format {FORMAT:?}); give an empty or new directory with --store")]
    NotOurs {
        /// The directory.
        dir: String,
    },
    /// No store at that path (reading).
    #[error("no meterflow store at {dir} (no manifest.json); run `meterflow run` with a gnocchi:// publisher and --store {dir} first")]
    Missing {
        /// The directory.
        dir: String,
    },
    /// Another process holds the store.
    #[error("store {dir} is in use by another meterflow process (it holds {dir}/.lock); stop it or give another --store")]
    Locked {
        /// The directory.
        dir: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}; check that the store directory is writable and the disk has space")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not what the manifest says.
    #[error(
        "store file {path} is damaged: {message}; restore it from a backup or remove the store"
    )]
    Corrupt {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (a full disk may clear; a foreign directory will not).
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }

    /// Whether the disk (or the user's quota on it) is full: worth waiting for, not failing.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) || matches!(source.raw_os_error(), Some(28 | 122))
                    // Parquet's writer hands the I/O error back as text.
                    || {
                        let text = source.to_string();
                        text.contains("(os error 28)") || text.contains("(os error 122)")
                    }
            }
            _ => false,
        }
    }
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Io { what, path, source }
}

/// The store's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// One row per metric.
    Metrics,
    /// Bucket values.
    Aggregates,
    /// Raw measures and open buckets, for resuming.
    State,
    /// One row per alarm and change: definition and evaluation state.
    Alarms,
    /// Alarm history: creations, changes, deletions and state transitions.
    AlarmHistory,
    /// Resources created or ended by events.
    Resources,
}

impl Table {
    const ALL: [Table; 6] = [
        Table::Metrics,
        Table::Aggregates,
        Table::State,
        Table::Alarms,
        Table::AlarmHistory,
        Table::Resources,
    ];

    fn dir(self) -> &'static str {
        match self {
            Table::Metrics => "metrics",
            Table::Aggregates => "aggregates",
            Table::State => "state",
            Table::Alarms => "alarms",
            Table::AlarmHistory => "alarm_history",
            Table::Resources => "resources",
        }
    }
}

/// Which worker's share of the metrics a file holds: resources whose route modulo `count` is
/// `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The worker.
    pub index: u32,
    /// The number of workers of the run that wrote it.
    pub count: u32,
}

impl Partition {
    /// Where the API writes what no worker owns (resources created, changed or deleted
    /// through it): a count of 0 is no run's layout, so its files never mix with a worker's.
    pub const API: Partition = Partition { index: 0, count: 0 };

    /// Whether a resource with this route belongs here.
    pub fn holds(&self, route: u64) -> bool {
        self.count <= 1 || route % u64::from(self.count) == u64::from(self.index)
    }
}

/// One file the manifest makes visible.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the store directory.
    pub path: String,
    /// Its table.
    pub table: Table,
    /// The checkpoint that wrote it; newer generations override older rows with the same key.
    pub generation: u64,
    /// The resources it holds.
    pub partition: Partition,
    /// Rows in it.
    pub rows: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version.
    pub version: u32,
    /// The newest checkpoint.
    pub generation: u64,
    /// Archive policies by name, in Gnocchi's JSON form.
    #[serde(default)]
    pub archive_policies: BTreeMap<String, serde_json::Value>,
    /// Archive policy rules created through the API, by name, in Gnocchi's JSON form.
    #[serde(default)]
    pub archive_policy_rules: BTreeMap<String, serde_json::Value>,
    /// Per-project alarm quotas set through Aodh's API (-1: unlimited), by project id.
    #[serde(default)]
    pub alarm_quotas: BTreeMap<String, i64>,
    /// Resource types created through the API, by name, in Gnocchi's JSON form.
    #[serde(default)]
    pub resource_types: BTreeMap<String, serde_json::Value>,
    /// The visible files.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

impl Manifest {
    fn new() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            generation: 0,
            archive_policies: BTreeMap::new(),
            archive_policy_rules: BTreeMap::new(),
            alarm_quotas: BTreeMap::new(),
            resource_types: BTreeMap::new(),
            files: Vec::new(),
        }
    }
}

/// One series' stored buckets: `(granularity ns, timestamp ns, value)`.
pub type SeriesPoints = Vec<(i64, i64, f64)>;

/// A metric as the store records it (Gnocchi's metric plus its resource's identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricRecord {
    /// The metric's UUID (derived from resource and name, so re-runs give the same id).
    pub metric_id: String,
    /// The resource id as Gnocchi keys it (`/` replaced by `_`).
    pub resource_id: String,
    /// The resource id as the samples carry it.
    pub original_resource_id: String,
    /// The metric name (the meter).
    pub metric_name: String,
    /// The unit of the first sample.
    pub unit: String,
    /// The archive policy it is aggregated by.
    pub archive_policy_name: String,
    /// The resource type (`generic` unless a resource definition says otherwise).
    pub resource_type: String,
    /// The user of the first sample.
    pub user_id: Option<String>,
    /// The project of the first sample.
    pub project_id: Option<String>,
    /// The resource's attributes (a JSON object) from its resource definition, newest first
    /// wins; `None` without attributes.
    pub resource_attributes: Option<String>,
}

/// A resource's own fields as Gnocchi's API shows them (no attributes, no `metrics`), for the
/// resource keyed `resource_id`.
pub fn resource_fields(
    resource_id: &str,
    resource_type: &str,
    (user_id, project_id): (Option<&str>, Option<&str>),
) -> serde_json::Value {
    serde_json::json!({
        "id": super::resource_uuid(resource_id),
        "type": resource_type,
        "original_resource_id": resource_id,
        "user_id": user_id,
        "project_id": project_id,
        "started_at": null,
        "ended_at": null,
        "revision_start": null,
        "revision_end": null,
        "creator": null,
        "created_by_user_id": null,
        "created_by_project_id": null,
    })
}

impl MetricRecord {
    /// Its resource as Gnocchi's API shows one (without the `metrics` map), with the
    /// resource type's `attributes` (a JSON object; `None`: this record's) as fields: what
    /// search filters match against.
    pub fn resource_json(&self, attributes: Option<&str>) -> serde_json::Value {
        let mut resource = resource_fields(
            &self.resource_id,
            &self.resource_type,
            (self.user_id.as_deref(), self.project_id.as_deref()),
        );
        let attributes = attributes
            .or(self.resource_attributes.as_deref())
            .and_then(|a| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(a).ok()
            });
        if let (Some(attributes), serde_json::Value::Object(resource)) = (attributes, &mut resource)
        {
            for (k, v) in attributes {
                resource.entry(k).or_insert(v);
            }
        }
        resource
    }
}

/// An alarm as the store records it; the newest row of an alarm id wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmRecord {
    /// The alarm's id.
    pub alarm_id: String,
    /// Its definition in Aodh's JSON form; `None` once deleted.
    pub definition: Option<String>,
    /// Its evaluation state (JSON: state, reason, the closed buckets it still needs).
    pub evaluation: Option<String>,
    /// When this row was written (wall clock, ns since the epoch).
    pub updated_ns: i64,
}

/// One entry of an alarm's history, as Aodh's `GET /v2/alarms/ID/history` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmHistoryRecord {
    /// The alarm.
    pub alarm_id: String,
    /// A unique id of the entry.
    pub event_id: String,
    /// `creation`, `rule change`, `state transition` or `deletion`.
    pub kind: String,
    /// Aodh's `detail`: a JSON string.
    pub detail: String,
    /// The alarm's severity then.
    pub severity: String,
    /// When it was recorded (wall clock, ns).
    pub timestamp_ns: i64,
    /// For state transitions: the event time of the evaluation (the end of the bucket that
    /// closed), ns; else the wall clock.
    pub event_time_ns: i64,
}

/// What a record does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceOp {
    /// Created (by an event, or through the API), with its attributes.
    Create,
    /// Ended (`ended_at`) by an event.
    End,
    /// Attributes changed through the API (`PATCH`): the record's attributes replace theirs.
    Update,
    /// Deleted through the API: it and its metrics are no longer shown.
    Delete,
    /// One of its metrics deleted through the API (`{"metric": NAME}`): no longer shown.
    DeleteMetric,
    /// A deleted metric created again through the API (`{"metric": NAME}`).
    RestoreMetric,
}

impl ResourceOp {
    /// The name in the `op` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceOp::Create => "create",
            ResourceOp::End => "end",
            ResourceOp::Update => "update",
            ResourceOp::Delete => "delete",
            ResourceOp::DeleteMetric => "delete_metric",
            ResourceOp::RestoreMetric => "restore_metric",
        }
    }

    fn parse(text: &str) -> Option<ResourceOp> {
        Some(match text {
            "create" => ResourceOp::Create,
            "end" => ResourceOp::End,
            "update" => ResourceOp::Update,
            "delete" => ResourceOp::Delete,
            "delete_metric" => ResourceOp::DeleteMetric,
            "restore_metric" => ResourceOp::RestoreMetric,
            _ => return None,
        })
    }
}

/// What an event (Ceilometer's gnocchi publisher on `event_create` and `event_delete`) or an
/// API call did to a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRecord {
    /// The resource id as Gnocchi keys it (`/` replaced by `_`).
    pub resource_id: String,
    /// Its resource type.
    pub resource_type: String,
    /// What was done.
    pub op: ResourceOp,
    /// The attributes it was created with, or that changed (a JSON object).
    pub attributes: Option<String>,
    /// When (ns since the epoch): the event's time, or the API call's.
    pub at_ns: i64,
}

/// A resource as the records so far left it, whatever order they are read in: the earliest
/// creation wins (Gnocchi refuses a second one), the latest end and deletion win, changes
/// apply in time order, and a deletion drops everything before it (a creation after it
/// starts the resource anew).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceState {
    /// Its resource type.
    pub resource_type: String,
    /// When it was created (ns), with the attributes it carried.
    pub created: Option<(i64, Option<String>)>,
    /// When an event ended it (ns).
    pub ended_at_ns: Option<i64>,
    /// Its changes through the API, oldest first: when, and the attributes changed (a JSON
    /// object).
    pub updates: Vec<(i64, String)>,
    /// When it was deleted through the API.
    pub deleted_at_ns: Option<i64>,
    /// Its metrics deleted through the API, by name: when last deleted, and when last created
    /// again (hidden while the deletion is the newer).
    pub metric_marks: BTreeMap<String, (i64, i64)>,
}

impl ResourceState {
    /// Applies one record.
    pub fn apply(&mut self, r: &ResourceRecord) {
        if self.resource_type.is_empty() {
            self.resource_type.clone_from(&r.resource_type);
        }
        // What a deletion covers is gone, whichever is read first.
        if self.deleted_at_ns.is_some_and(|d| r.at_ns <= d) && r.op != ResourceOp::Delete {
            return;
        }
        match r.op {
            ResourceOp::Create => {
                if self.created.as_ref().is_none_or(|(at, _)| r.at_ns < *at) {
                    self.resource_type.clone_from(&r.resource_type);
                    self.created = Some((r.at_ns, r.attributes.clone()));
                }
            }
            ResourceOp::End => {
                self.ended_at_ns = Some(self.ended_at_ns.map_or(r.at_ns, |e| e.max(r.at_ns)));
            }
            ResourceOp::Update => {
                let at = self.updates.partition_point(|(t, _)| *t <= r.at_ns);
                self.updates
                    .insert(at, (r.at_ns, r.attributes.clone().unwrap_or_default()));
            }
            ResourceOp::DeleteMetric | ResourceOp::RestoreMetric => {
                let Some(name) = r
                    .attributes
                    .as_deref()
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                    .and_then(|a| a.get("metric")?.as_str().map(str::to_owned))
                else {
                    return;
                };
                let (deleted, restored) = self
                    .metric_marks
                    .entry(name)
                    .or_insert((i64::MIN, i64::MIN));
                let at = if r.op == ResourceOp::DeleteMetric {
                    deleted
                } else {
                    restored
                };
                *at = (*at).max(r.at_ns);
            }
            ResourceOp::Delete => {
                let d = self.deleted_at_ns.map_or(r.at_ns, |d| d.max(r.at_ns));
                self.metric_marks.retain(|_, (deleted, restored)| {
                    for at in [&mut *deleted, &mut *restored] {
                        if *at <= d {
                            *at = i64::MIN;
                        }
                    }
                    (*deleted, *restored) != (i64::MIN, i64::MIN)
                });
                self.deleted_at_ns = Some(d);
                if self.created.as_ref().is_some_and(|(at, _)| *at <= d) {
                    self.created = None;
                }
                if self.ended_at_ns.is_some_and(|e| e <= d) {
                    self.ended_at_ns = None;
                }
                self.updates.retain(|(t, _)| *t > d);
            }
        }
    }

    /// Whether it is deleted (and not created again since).
    pub fn is_deleted(&self) -> bool {
        self.deleted_at_ns.is_some() && self.created.is_none()
    }

    /// Whether its metric `name` is deleted (and not created again since).
    pub fn metric_deleted(&self, name: &str) -> bool {
        self.metric_marks
            .get(name)
            .is_some_and(|(deleted, restored)| deleted > restored)
    }

    /// The records that rebuild this state.
    fn records(&self, resource_id: &str) -> Vec<ResourceRecord> {
        let record = |op, attributes: Option<String>, at_ns| ResourceRecord {
            resource_id: resource_id.to_owned(),
            resource_type: self.resource_type.clone(),
            op,
            attributes,
            at_ns,
        };
        let mut out = Vec::new();
        if let Some(at) = self.deleted_at_ns {
            out.push(record(ResourceOp::Delete, None, at));
        }
        if let Some((at, attributes)) = &self.created {
            out.push(record(ResourceOp::Create, attributes.clone(), *at));
        }
        if let Some(at) = self.ended_at_ns {
            out.push(record(ResourceOp::End, None, at));
        }
        for (at, attributes) in &self.updates {
            out.push(record(ResourceOp::Update, Some(attributes.clone()), *at));
        }
        for (name, &(deleted, restored)) in &self.metric_marks {
            let name = Some(serde_json::json!({"metric": name}).to_string());
            for (op, at) in [
                (ResourceOp::DeleteMetric, deleted),
                (ResourceOp::RestoreMetric, restored),
            ] {
                if at != i64::MIN {
                    out.push(record(op, name.clone(), at));
                }
            }
        }
        out
    }
}

/// One resource as the store knows it: its metrics and what events did to it (it exists when
/// it has a metric or an event created it).
#[derive(Clone, Debug)]
pub struct ResourceView<'c> {
    /// Its key (the id as Gnocchi keys it).
    pub key: &'c str,
    /// Its metrics, by name.
    pub metrics: Vec<&'c MetricRecord>,
    /// What events did to it.
    pub state: Option<&'c ResourceState>,
}

impl ResourceView<'_> {
    /// Its resource type: the one it was created with (by an event or the API), else its
    /// metrics'.
    pub fn resource_type(&self) -> &str {
        match (self.metrics.first(), self.state) {
            (_, Some(s)) if s.created.is_some() => &s.resource_type,
            (Some(m), _) => &m.resource_type,
            (None, Some(s)) => &s.resource_type,
            (None, None) => "generic",
        }
    }

    /// The resource as Gnocchi's API shows it, without the `metrics` map (what search filters
    /// match against): its fields, the resource type's attributes (its metrics', then those it
    /// was created with), `started_at` from its creation and `ended_at` from its end.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        let created = self.state.and_then(|s| s.created.as_ref());
        let mut resource = match self.metrics.first() {
            Some(m) => m.resource_json(
                self.metrics
                    .iter()
                    .find_map(|m| m.resource_attributes.as_deref()),
            ),
            None => resource_fields(self.key, self.resource_type(), (None, None)),
        };
        resource["type"] = Value::from(self.resource_type());
        if let Some(Ok(Value::Object(attributes))) = created
            .and_then(|(_, a)| a.as_deref())
            .map(serde_json::from_str::<Value>)
        {
            for (k, v) in attributes {
                if resource.get(&k).is_none_or(Value::is_null) {
                    resource[k] = v;
                }
            }
        }
        let iso = |ns: i64| Value::from(meterflow_engine::time::format_iso_utc(ns / 1000));
        if let Some((at, _)) = created {
            if resource["started_at"].is_null() {
                resource["started_at"] = iso(*at);
            }
            resource["revision_start"] = iso(*at);
        }
        if let Some(ended) = self.state.and_then(|s| s.ended_at_ns) {
            resource["ended_at"] = iso(ended);
        }
        for (at, changed) in self.state.map_or(&[][..], |s| &s.updates[..]) {
            if let Ok(Value::Object(changed)) = serde_json::from_str::<Value>(changed) {
                for (k, v) in changed {
                    resource[k] = v;
                }
            }
            resource["revision_start"] = iso(*at);
        }
        resource
    }
}

/// Rows of the aggregates or state table, column by column (no allocation per row).
#[derive(Clone, Debug, Default)]
pub struct Points {
    /// Resource (Gnocchi form).
    pub resource_id: Vec<Sym>,
    /// Metric name.
    pub metric_name: Vec<Sym>,
    /// Aggregation method; `None` for a raw measure.
    pub aggregation: Vec<Option<Sym>>,
    /// Granularity in nanoseconds; 0 for a raw measure.
    pub granularity_ns: Vec<i64>,
    /// Bucket start (or measure time), nanoseconds since the epoch.
    pub timestamp_ns: Vec<i64>,
    /// The value.
    pub value: Vec<f64>,
}

impl Points {
    /// Adds a row.
    pub fn push(
        &mut self,
        resource: Sym,
        metric: Sym,
        aggregation: Option<Sym>,
        granularity_ns: i64,
        timestamp_ns: i64,
        value: f64,
    ) {
        self.resource_id.push(resource);
        self.metric_name.push(metric);
        self.aggregation.push(aggregation);
        self.granularity_ns.push(granularity_ns);
        self.timestamp_ns.push(timestamp_ns);
        self.value.push(value);
    }

    /// Appends every row of `other`.
    pub fn extend(&mut self, other: &Points) {
        self.resource_id.extend_from_slice(&other.resource_id);
        self.metric_name.extend_from_slice(&other.metric_name);
        self.aggregation.extend_from_slice(&other.aggregation);
        self.granularity_ns.extend_from_slice(&other.granularity_ns);
        self.timestamp_ns.extend_from_slice(&other.timestamp_ns);
        self.value.extend_from_slice(&other.value);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

/// What one worker hands the store at a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// Metrics created (or first seen by this store).
    pub metrics: Vec<MetricRecord>,
    /// Bucket values: every bucket that closed, and the current value of every open bucket of
    /// the metrics that changed.
    pub aggregates: Points,
    /// The whole state of every metric that changed: raw measures and open buckets.
    pub state: Points,
    /// Alarms created, changed, evaluated or deleted.
    pub alarms: Vec<AlarmRecord>,
    /// Alarm history entries.
    pub history: Vec<AlarmHistoryRecord>,
    /// Resources events created or ended.
    pub resources: Vec<ResourceRecord>,
}

impl Checkpoint {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Rows held, over all tables.
    pub fn rows(&self) -> usize {
        self.metrics.len()
            + self.aggregates.len()
            + self.state.len()
            + self.alarms.len()
            + self.history.len()
            + self.resources.len()
    }
}

/// One stored value of a metric, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPoint {
    /// Aggregation method; `None` for a raw measure.
    pub aggregation: Option<String>,
    /// Granularity in nanoseconds (0 for a raw measure).
    pub granularity_ns: i64,
    /// Timestamp, nanoseconds since the epoch.
    pub timestamp_ns: i64,
    /// The value.
    pub value: f64,
}

/// A metric's state read back for resuming: its raw measures and open buckets.
pub type MetricState = Vec<StoredPoint>;

/// What [`Store::reload`] read back: records and states by (resource, metric).
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The metrics' records.
    pub records: HashMap<(String, String), MetricRecord>,
    /// Their states (absent for a metric with none).
    pub states: HashMap<(String, String), MetricState>,
}

/// An open store.
pub struct Store {
    dir: PathBuf,
    manifest: Mutex<Manifest>,
    /// The last generation handed out: workers write their files at once, each under its own
    /// generation, and take the manifest's lock only to publish them.
    last_generation: AtomicU64,
    /// Every metric, read on first use and kept current by commits.
    catalog: Mutex<Option<Arc<Catalog>>>,
    /// Files compaction took out of the manifest, deleted once readers are done with them.
    retired: Mutex<Vec<(Instant, PathBuf)>>,
    /// Whether the last commit found the disk full (the API refuses writes meanwhile).
    full: AtomicBool,
    /// Set when the engine stops: commits no longer wait for space.
    stop_waiting: AtomicBool,
    /// When [`Store::recheck_space`] last wrote its probe.
    space_checked: Mutex<Option<Instant>>,
    /// Bumped at each change of the recorded archive policies, so what caches them can tell.
    policies_version: AtomicU64,
    _lock: Option<File>,
}

impl Drop for Store {
    fn drop(&mut self) {
        if self._lock.is_some() {
            self.remove_retired(true);
        }
    }
}

/// Every metric of a store, indexed the ways the API looks them up.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    by_key: BTreeMap<(String, String), MetricRecord>,
    by_metric_id: HashMap<String, (String, String)>,
    by_resource_uuid: HashMap<String, String>,
    /// Resources events created or ended, by resource key.
    resource_states: BTreeMap<String, ResourceState>,
}

impl Catalog {
    /// Lets the resource keyed `key` be found by its UUID.
    fn index_uuid(&mut self, key: &str) {
        self.by_resource_uuid
            .entry(super::resource_uuid(key))
            .or_insert_with(|| key.to_owned());
    }

    fn insert(&mut self, record: MetricRecord) {
        let key = (record.resource_id.clone(), record.metric_name.clone());
        self.by_metric_id
            .insert(record.metric_id.clone(), key.clone());
        self.index_uuid(&record.resource_id);
        self.by_key.insert(key, record);
    }

    fn apply(&mut self, record: &ResourceRecord) {
        self.index_uuid(&record.resource_id);
        fold(&mut self.resource_states, record);
    }

    /// The resource keyed `key`, when it has a metric or an event created it.
    pub fn resource_view(&self, key: &str) -> Option<ResourceView<'_>> {
        if super::is_standalone(key) {
            return None;
        }
        let from = (key.to_owned(), String::new());
        let recorded = self
            .by_key
            .range(from..)
            .next()
            .filter(|((r, _), _)| r == key)
            .map(|((r, _), _)| r.as_str());
        let (key, state) = match self.resource_states.get_key_value(key) {
            Some((k, s)) => (k.as_str(), Some(s)),
            None => (recorded?, None),
        };
        if state.is_some_and(ResourceState::is_deleted) {
            return None;
        }
        let view = ResourceView {
            key,
            metrics: self.resource_metrics(key).collect(),
            state,
        };
        (recorded.is_some() || state.is_some_and(|s| s.created.is_some())).then_some(view)
    }

    /// Every resource (with a metric, or created by an event), by key.
    pub fn resources(&self) -> Vec<ResourceView<'_>> {
        let mut out: BTreeMap<&str, ResourceView<'_>> = BTreeMap::new();
        for m in self.by_key.values() {
            let view = out
                .entry(m.resource_id.as_str())
                .or_insert_with(|| ResourceView {
                    key: &m.resource_id,
                    metrics: Vec::new(),
                    state: self.resource_states.get(&m.resource_id),
                });
            if !self.hidden(m) {
                view.metrics.push(m);
            }
        }
        for (key, state) in &self.resource_states {
            if state.created.is_some() {
                out.entry(key).or_insert_with(|| ResourceView {
                    key,
                    metrics: Vec::new(),
                    state: Some(state),
                });
            }
        }
        out.into_values()
            .filter(|view| !view.state.is_some_and(ResourceState::is_deleted))
            .filter(|view| !super::is_standalone(view.key))
            .collect()
    }

    /// Whether the resource keyed `key` was deleted through the API (its metrics with it).
    fn deleted(&self, key: &str) -> bool {
        self.resource_states
            .get(key)
            .is_some_and(ResourceState::is_deleted)
    }

    /// Whether `m` was deleted through the API, or its resource was.
    fn hidden(&self, m: &MetricRecord) -> bool {
        self.resource_states
            .get(&m.resource_id)
            .is_some_and(|s| s.is_deleted() || s.metric_deleted(&m.metric_name))
    }

    /// Every metric, by (resource, metric name).
    pub fn metrics(&self) -> impl Iterator<Item = &MetricRecord> {
        self.by_key.values().filter(|m| !self.hidden(m))
    }

    /// The metric of resource `resource_key` named `name`.
    pub fn get(&self, resource_key: &str, name: &str) -> Option<&MetricRecord> {
        self.by_key
            .get(&(resource_key.to_owned(), name.to_owned()))
            .filter(|m| !self.hidden(m))
    }

    /// A metric deleted through the API (its record is kept): what creating it again restores.
    pub fn deleted_metric(&self, resource_key: &str, name: &str) -> Option<&MetricRecord> {
        self.by_key
            .get(&(resource_key.to_owned(), name.to_owned()))
            .filter(|m| self.hidden(m) && !self.deleted(&m.resource_id))
    }

    /// The metric with this UUID.
    pub fn by_id(&self, metric_id: &str) -> Option<&MetricRecord> {
        self.by_key
            .get(self.by_metric_id.get(metric_id)?)
            .filter(|m| !self.hidden(m))
    }

    /// The resource (its key) named by `id`: its UUID, its id as Gnocchi keys it, or as sent.
    pub fn resource(&self, id: &str) -> Option<&str> {
        if let Some(key) = self.by_resource_uuid.get(id) {
            return Some(key);
        }
        let key = super::resource_key(id);
        if let Some((k, _)) = self.resource_states.get_key_value(&key) {
            return Some(k);
        }
        self.resource_metrics(&key)
            .next()
            .map(|r| r.resource_id.as_str())
    }

    /// The metrics of one resource (by its key), by name.
    pub fn resource_metrics<'c>(
        &'c self,
        resource_key: &str,
    ) -> impl Iterator<Item = &'c MetricRecord> + 'c {
        let from = (resource_key.to_owned(), String::new());
        let key = resource_key.to_owned();
        self.by_key
            .range(from..)
            .take_while(move |((r, _), _)| *r == key)
            .map(|(_, m)| m)
            .filter(|m| !self.hidden(m))
    }

    /// Metrics held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (creating when missing or empty) a store to write to. Fails on a directory that
    /// holds other files, one that is not writable, and one another process is writing.
    /// Files a crashed writer left that no manifest names are removed.
    pub fn create(dir: &Path) -> Result<Arc<Store>, StoreError> {
        fs::create_dir_all(dir).map_err(io_error("cannot create store directory", dir))?;
        let manifest = match read_manifest(dir)? {
            Some(m) => m,
            None => {
                let foreign = fs::read_dir(dir)
                    .map_err(io_error("cannot list store directory", dir))?
                    .filter_map(Result::ok)
                    .any(|e| e.file_name() != LOCK);
                if foreign {
                    return Err(StoreError::NotOurs {
                        dir: dir.display().to_string(),
                    });
                }
                Manifest::new()
            }
        };
        let lock_path = dir.join(LOCK);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(
                "cannot write to the store (creating its lock file)",
                &lock_path,
            ))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.display().to_string(),
                })
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_error("cannot lock", &lock_path)(e));
            }
        }
        for table in Table::ALL {
            let sub = dir.join(table.dir());
            fs::create_dir_all(&sub).map_err(io_error("cannot create", &sub))?;
        }
        let store = Store {
            dir: dir.to_owned(),
            last_generation: AtomicU64::new(manifest.generation),
            manifest: Mutex::new(manifest),
            catalog: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
            stop_waiting: AtomicBool::new(false),
            space_checked: Mutex::new(None),
            policies_version: AtomicU64::new(0),
            _lock: Some(lock),
        };
        {
            let manifest = store.lock_manifest();
            match store.write_manifest(&manifest) {
                // A store that exists opens on a full disk: reads work, writes wait for space.
                Err(e) if e.is_full() && manifest.generation > 0 => {
                    tracing::error!("store {}: the disk is full ({e}); serving reads, refusing writes until there is space", dir.display());
                    store.full.store(true, Ordering::Relaxed);
                }
                result => result?,
            }
            store.remove_orphans(&manifest)?;
        }
        Ok(Arc::new(store))
    }

    /// While the disk is full: whether there is room again, checked by writing and removing a
    /// 1 MiB file at most once a second (clears [`Store::is_full`] when there is). Commits
    /// clear it too.
    pub fn recheck_space(&self) -> bool {
        if !self.is_full() {
            return true;
        }
        {
            let mut last = self.space_checked.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let probe = self.dir.join(".space-probe");
        let room = fs::write(&probe, vec![0u8; 1 << 20])
            .and_then(|()| fs::File::open(&probe)?.sync_all())
            .is_ok();
        let _ = fs::remove_file(&probe);
        if room {
            self.full.store(false, Ordering::Relaxed);
        }
        room
    }

    /// Opens an existing store to read.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
        let manifest = read_manifest(dir)?.ok_or_else(|| StoreError::Missing {
            dir: dir.display().to_string(),
        })?;
        Ok(Arc::new(Store {
            dir: dir.to_owned(),
            last_generation: AtomicU64::new(manifest.generation),
            manifest: Mutex::new(manifest),
            catalog: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
            stop_waiting: AtomicBool::new(false),
            space_checked: Mutex::new(None),
            policies_version: AtomicU64::new(0),
            _lock: None,
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_manifest(&self) -> std::sync::MutexGuard<'_, Manifest> {
        self.manifest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The archive policies recorded in the store, by name (Gnocchi's JSON form).
    pub fn archive_policies(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock_manifest().archive_policies.clone()
    }

    /// Records archive policies (by name; a name already recorded is replaced).
    pub fn put_archive_policies(
        &self,
        policies: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Result<(), StoreError> {
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.archive_policies.extend(policies);
        let written = self.write_manifest(&next);
        // On a full disk they are kept, and written with the next commit's manifest.
        if written.is_ok() || written.as_ref().is_err_and(StoreError::is_full) {
            *manifest = next;
            self.policies_version.fetch_add(1, Ordering::Release);
        }
        written
    }

    /// Forgets a recorded archive policy (the caller checked no metric uses it); whether it
    /// was recorded.
    pub fn remove_archive_policy(&self, name: &str) -> Result<bool, StoreError> {
        let mut manifest = self.lock_manifest();
        if !manifest.archive_policies.contains_key(name) {
            return Ok(false);
        }
        let mut next = manifest.clone();
        next.archive_policies.remove(name);
        self.write_manifest(&next)?;
        *manifest = next;
        self.policies_version.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// The archive policy rules created through the API, by name.
    pub fn archive_policy_rules(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock_manifest().archive_policy_rules.clone()
    }

    /// Records an archive policy rule (by name; one already recorded is replaced) or, with
    /// `None`, forgets it; whether it was recorded before.
    pub fn set_archive_policy_rule(
        &self,
        name: &str,
        rule: Option<serde_json::Value>,
    ) -> Result<bool, StoreError> {
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        let before = match rule {
            Some(rule) => next.archive_policy_rules.insert(name.to_owned(), rule),
            None => next.archive_policy_rules.remove(name),
        };
        self.write_manifest(&next)?;
        *manifest = next;
        self.policies_version.fetch_add(1, Ordering::Release);
        Ok(before.is_some())
    }

    /// The resource types created through the API, by name.
    pub fn resource_types(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock_manifest().resource_types.clone()
    }

    /// Records a resource type (by name; one already recorded is replaced) or, with `None`,
    /// forgets it.
    pub fn set_resource_type(
        &self,
        name: &str,
        kind: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        match kind {
            Some(kind) => next.resource_types.insert(name.to_owned(), kind),
            None => next.resource_types.remove(name),
        };
        self.write_manifest(&next)?;
        *manifest = next;
        Ok(())
    }

    /// The per-project alarm quotas set through the API.
    pub fn alarm_quotas(&self) -> BTreeMap<String, i64> {
        self.lock_manifest().alarm_quotas.clone()
    }

    /// Sets project `project`'s alarm quota (-1: unlimited).
    pub fn set_alarm_quota(&self, project: &str, limit: i64) -> Result<(), StoreError> {
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.alarm_quotas.insert(project.to_owned(), limit);
        self.write_manifest(&next)?;
        *manifest = next;
        Ok(())
    }

    /// Changes with every change of the recorded archive policies and rules (a cache of them
    /// is stale when this moved).
    pub fn policies_version(&self) -> u64 {
        self.policies_version.load(Ordering::Acquire)
    }

    /// The newest committed generation.
    pub fn generation(&self) -> u64 {
        self.lock_manifest().generation
    }

    /// Writes a worker's checkpoint: its files, then the manifest that makes them visible.
    /// On error nothing becomes visible and the checkpoint is left as it was, to be retried.
    pub fn commit(
        &self,
        partition: Partition,
        checkpoint: &mut Checkpoint,
    ) -> Result<u64, StoreError> {
        let result = self.commit_files(partition, checkpoint);
        let full = matches!(&result, Err(e) if e.is_full());
        self.full.store(full, Ordering::Relaxed);
        result
    }

    /// Tells commits waiting for space on a full disk to give up (the engine is stopping).
    pub fn stop_waiting_for_space(&self) {
        self.stop_waiting.store(true, Ordering::Relaxed);
    }

    /// Whether commits should still wait for space on a full disk.
    pub fn waits_for_space(&self) -> bool {
        !self.stop_waiting.load(Ordering::Relaxed)
    }

    /// Whether the last commit found the disk full; it clears once one succeeds.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn commit_files(
        &self,
        partition: Partition,
        checkpoint: &mut Checkpoint,
    ) -> Result<u64, StoreError> {
        if checkpoint.is_empty() {
            return Ok(self.generation());
        }
        // The files are written outside the manifest's lock (other workers commit meanwhile);
        // a partition's generations still grow with its commits, which is all reads need.
        let generation = self.last_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut entries = Vec::new();
        let name = format!(
            "g{generation:012}-p{}of{}.parquet",
            partition.index, partition.count
        );
        let tables: [(Table, usize); 6] = [
            (Table::Metrics, checkpoint.metrics.len()),
            (Table::Aggregates, checkpoint.aggregates.len()),
            (Table::State, checkpoint.state.len()),
            (Table::Alarms, checkpoint.alarms.len()),
            (Table::AlarmHistory, checkpoint.history.len()),
            (Table::Resources, checkpoint.resources.len()),
        ];
        for (table, rows) in tables {
            if rows == 0 {
                continue;
            }
            let batch = match table {
                Table::Metrics => metrics_batch(&checkpoint.metrics, generation),
                Table::Aggregates => points_batch(&checkpoint.aggregates, generation, false),
                Table::State => points_batch(&checkpoint.state, generation, true),
                Table::Alarms => alarms_batch(&checkpoint.alarms, generation),
                Table::AlarmHistory => history_batch(&checkpoint.history, generation),
                Table::Resources => resources_batch(&checkpoint.resources, generation),
            };
            let rel = format!("{}/{name}", table.dir());
            self.write_parquet(&rel, &batch)?;
            entries.push(FileEntry {
                path: rel,
                table,
                generation,
                partition,
                rows: rows as u64,
            });
        }
        let written: Vec<Table> = entries.iter().map(|e| e.table).collect();
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.generation = next.generation.max(generation);
        next.files.extend(entries);
        self.write_manifest(&next)?;
        *manifest = next;
        drop(manifest);
        if !checkpoint.metrics.is_empty() || !checkpoint.resources.is_empty() {
            let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(catalog) = catalog.as_mut() {
                let catalog = Arc::make_mut(catalog);
                for record in checkpoint.metrics.drain(..) {
                    catalog.insert(record);
                }
                for record in &checkpoint.resources {
                    catalog.apply(record);
                }
            }
        }
        *checkpoint = Checkpoint::default();
        self.compact(partition, &written)?;
        Ok(generation)
    }

    /// Keeps a partition's files few: while the newest two files of a table are of similar
    /// size (the older at most twice the newer, together under [`MERGE_MAX_ROWS`]: frequent
    /// small checkpoints merge, a bulk load's big ones stay), they are merged into one, newest
    /// row per key. Like a binary counter, a store written in equal
    /// checkpoints holds O(log n) files per table and partition and each row is rewritten
    /// O(log n) times. Merged files replace the two in one manifest write; the two are deleted
    /// [`RETIRE_AFTER`] later, so reads in flight still find them.
    fn compact(&self, partition: Partition, tables: &[Table]) -> Result<(), StoreError> {
        for &table in tables {
            loop {
                let all = self.files(table, None);
                let files: Vec<&FileEntry> =
                    all.iter().filter(|f| f.partition == partition).collect();
                let [.., older, newer] = files.as_slice() else {
                    break;
                };
                if older.rows > 2 * newer.rows || older.rows + newer.rows > MERGE_MAX_ROWS {
                    break;
                }
                // The merged file carries the newer generation for every row. A file of a
                // run with another number of workers, written between the two, may hold
                // newer rows for the same keys: merging would let the older file's rows win
                // over them. Such files stay apart.
                let between = all.iter().any(|f| {
                    f.partition.count != partition.count
                        && f.generation > older.generation
                        && f.generation < newer.generation
                });
                if between {
                    break;
                }
                self.merge(table, older, newer)?;
            }
        }
        self.remove_retired(false);
        Ok(())
    }

    /// Merges two adjacent files of one table and partition into one.
    fn merge(&self, table: Table, older: &FileEntry, newer: &FileEntry) -> Result<(), StoreError> {
        let batch = match table {
            Table::Metrics => {
                let mut by_key = BTreeMap::new();
                for entry in [older, newer] {
                    for record in self.metric_records(entry, &|_| true)? {
                        by_key.insert(
                            (record.resource_id.clone(), record.metric_name.clone()),
                            record,
                        );
                    }
                }
                let records: Vec<MetricRecord> = by_key.into_values().collect();
                metrics_batch(&records, newer.generation)
            }
            Table::Aggregates => {
                type Key = (Sym, Sym, Option<Sym>, i64, i64);
                let mut newest: BTreeMap<Key, f64> = BTreeMap::new();
                for entry in [older, newer] {
                    self.rows(entry, &mut |r, m, p| {
                        let a = p.aggregation.as_deref().map(Sym::new);
                        newest.insert((r, m, a, p.granularity_ns, p.timestamp_ns), p.value);
                    })?;
                }
                let mut points = Points::default();
                for ((r, m, a, g, t), v) in newest {
                    points.push(r, m, a, g, t, v);
                }
                points_batch(&points, newer.generation, false)
            }
            Table::State => {
                // A metric's state is whole in each file: the newer file's wins.
                let mut rows: HashMap<(Sym, Sym), (bool, Points)> = HashMap::new();
                for (is_newer, entry) in [(false, older), (true, newer)] {
                    self.rows(entry, &mut |r, m, p| {
                        let slot = rows.entry((r, m)).or_insert((is_newer, Points::default()));
                        if is_newer && !slot.0 {
                            *slot = (true, Points::default());
                        }
                        let a = p.aggregation.as_deref().map(Sym::new);
                        slot.1
                            .push(r, m, a, p.granularity_ns, p.timestamp_ns, p.value);
                    })?;
                }
                let mut points = Points::default();
                for (_, (_, p)) in rows {
                    points.extend(&p);
                }
                points_batch(&points, newer.generation, true)
            }
            Table::Alarms => {
                let mut by_id = BTreeMap::new();
                for entry in [older, newer] {
                    for record in self.alarm_records(entry)? {
                        by_id.insert(record.alarm_id.clone(), record);
                    }
                }
                let records: Vec<AlarmRecord> = by_id.into_values().collect();
                alarms_batch(&records, newer.generation)
            }
            Table::AlarmHistory => {
                let mut records = self.history_records(older, None)?;
                records.extend(self.history_records(newer, None)?);
                history_batch(&records, newer.generation)
            }
            Table::Resources => {
                let states = self.fold_resources(&[older.clone(), newer.clone()])?;
                let records: Vec<ResourceRecord> = states
                    .iter()
                    .flat_map(|(id, state)| state.records(id))
                    .collect();
                resources_batch(&records, newer.generation)
            }
        };
        let p = newer.partition;
        let rel = format!(
            "{}/g{:012}-p{}of{}-from-g{:012}.parquet",
            table.dir(),
            newer.generation,
            p.index,
            p.count,
            older.generation
        );
        self.write_parquet(&rel, &batch)?;
        let mut manifest = self.lock_manifest();
        let mut next = manifest.clone();
        next.files
            .retain(|f| f.path != older.path && f.path != newer.path);
        next.files.push(FileEntry {
            path: rel,
            table,
            generation: newer.generation,
            partition: p,
            rows: batch.num_rows() as u64,
        });
        self.write_manifest(&next)?;
        *manifest = next;
        drop(manifest);
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for entry in [older, newer] {
            retired.push((Instant::now(), self.dir.join(&entry.path)));
        }
        Ok(())
    }

    /// Deletes retired files (all of them, or those retired long enough ago).
    fn remove_retired(&self, all: bool) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|(when, path)| {
            if !all && when.elapsed() < RETIRE_AFTER {
                return true;
            }
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), "cannot remove a compacted file: {e}; the next start removes it");
                }
            }
            false
        });
    }

    /// Every row of an aggregates or state file, with its resource and metric.
    fn rows(
        &self,
        entry: &FileEntry,
        each: &mut dyn FnMut(Sym, Sym, StoredPoint),
    ) -> Result<(), StoreError> {
        for batch in self.batches(entry)? {
            let res = strings(&batch, "resource_id", &entry.path)?;
            let names = strings(&batch, "metric_name", &entry.path)?;
            for (i, p) in points_of(&batch, &entry.path, |_, _| true)? {
                each(Sym::new(res.value(i)), Sym::new(names.value(i)), p);
            }
        }
        Ok(())
    }

    fn write_parquet(&self, rel: &str, batch: &RecordBatch) -> Result<(), StoreError> {
        let path = self.dir.join(rel);
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(io_error("cannot create", &tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        let parquet_error = |e: parquet::errors::ParquetError| StoreError::Io {
            what: "cannot write",
            path: tmp.display().to_string(),
            source: io::Error::other(e.to_string()),
        };
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet_error)?;
        writer.write(batch).map_err(parquet_error)?;
        let file = writer.into_inner().map_err(parquet_error)?;
        file.sync_all().map_err(io_error("cannot sync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_error("cannot rename into place", &path))?;
        Ok(())
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let path = self.dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        crate::file::write_atomically(&path, &text).map_err(io_error("cannot write", &path))
    }

    fn remove_orphans(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let known: std::collections::HashSet<&str> =
            manifest.files.iter().map(|f| f.path.as_str()).collect();
        for table in Table::ALL {
            let sub = self.dir.join(table.dir());
            for entry in fs::read_dir(&sub).map_err(io_error("cannot list", &sub))? {
                let entry = entry.map_err(io_error("cannot list", &sub))?;
                let rel = format!("{}/{}", table.dir(), entry.file_name().to_string_lossy());
                if !known.contains(rel.as_str()) {
                    tracing::info!(file = %rel, "removing a file an interrupted checkpoint left");
                    fs::remove_file(entry.path())
                        .map_err(io_error("cannot remove", &entry.path()))?;
                }
            }
        }
        Ok(())
    }

    fn files(&self, table: Table, route: Option<u64>) -> Vec<FileEntry> {
        let mut files: Vec<FileEntry> = self
            .lock_manifest()
            .files
            .iter()
            .filter(|f| f.table == table && route.is_none_or(|r| f.partition.holds(r)))
            .cloned()
            .collect();
        files.sort_by_key(|f| f.generation);
        files
    }

    fn batches(&self, entry: &FileEntry) -> Result<Vec<RecordBatch>, StoreError> {
        let path = self.dir.join(&entry.path);
        let file = File::open(&path).map_err(io_error("cannot open", &path))?;
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| corrupt(&e))?
            .build()
            .map_err(|e| corrupt(&e))?;
        reader
            .map(|b| b.map_err(|e| corrupt(&e)))
            .collect::<Result<Vec<_>, _>>()
    }

    /// Every metric, indexed: read from the store's files once, then kept current by
    /// [`Store::commit`].
    pub fn catalog(&self) -> Result<Arc<Catalog>, StoreError> {
        let mut cached = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(catalog) = cached.as_ref() {
            return Ok(catalog.clone());
        }
        let mut catalog = Catalog::default();
        for record in self.metrics(&|_| true)? {
            catalog.insert(record);
        }
        for (key, state) in self.resource_states()? {
            catalog.index_uuid(&key);
            catalog.resource_states.insert(key, state);
        }
        let catalog = Arc::new(catalog);
        *cached = Some(catalog.clone());
        Ok(catalog)
    }

    /// Every metric whose resource `holds` accepts; the newest record of each wins.
    pub fn metrics(&self, holds: &dyn Fn(&str) -> bool) -> Result<Vec<MetricRecord>, StoreError> {
        self.reading(|| {
            let mut out: BTreeMap<(String, String), MetricRecord> = BTreeMap::new();
            for entry in self.files(Table::Metrics, None) {
                for record in self.metric_records(&entry, holds)? {
                    out.insert(
                        (record.resource_id.clone(), record.metric_name.clone()),
                        record,
                    );
                }
            }
            Ok(out.into_values().collect())
        })
    }

    /// Runs a read, again if a file it listed was compacted away meanwhile.
    fn reading<T>(&self, read: impl Fn() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            match read() {
                Err(StoreError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && tries < 3 =>
                {
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// The metric records of one metrics file whose resource `holds` accepts.
    fn metric_records(
        &self,
        entry: &FileEntry,
        holds: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<MetricRecord>, StoreError> {
        let mut out = Vec::new();
        for batch in self.batches(entry)? {
            let col = |name: &str| strings(&batch, name, &entry.path);
            let (ids, res, orig, names, units, policies, types, users, projects) = (
                col("metric_id")?,
                col("resource_id")?,
                col("original_resource_id")?,
                col("metric_name")?,
                col("unit")?,
                col("archive_policy_name")?,
                col("resource_type")?,
                col("user_id")?,
                col("project_id")?,
            );
            // (Absent in files written before resource definitions.)
            let attributes = batch
                .column_by_name("resource_attributes")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>());
            for i in 0..batch.num_rows() {
                if !holds(res.value(i)) {
                    continue;
                }
                let opt = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_owned());
                out.push(MetricRecord {
                    metric_id: ids.value(i).to_owned(),
                    resource_id: res.value(i).to_owned(),
                    original_resource_id: orig.value(i).to_owned(),
                    metric_name: names.value(i).to_owned(),
                    unit: units.value(i).to_owned(),
                    archive_policy_name: policies.value(i).to_owned(),
                    resource_type: types.value(i).to_owned(),
                    user_id: opt(users),
                    project_id: opt(projects),
                    resource_attributes: attributes.and_then(opt),
                });
            }
        }
        Ok(out)
    }

    /// The stored bucket values of one metric, each key's newest generation, sorted by
    /// (aggregation, granularity, timestamp). `route` is the resource's partition route.
    pub fn aggregates(
        &self,
        resource_id: &str,
        metric_name: &str,
        route: u64,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.reading(|| self.aggregates_once(resource_id, metric_name, route))
    }

    fn aggregates_once(
        &self,
        resource_id: &str,
        metric_name: &str,
        route: u64,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        let mut newest: BTreeMap<(String, i64, i64), f64> = BTreeMap::new();
        for entry in self.files(Table::Aggregates, Some(route)) {
            for batch in self.batches(&entry)? {
                for (_, p) in points_of(&batch, &entry.path, |r, m| {
                    r == resource_id && m == metric_name
                })? {
                    let key = (
                        p.aggregation.unwrap_or_default(),
                        p.granularity_ns,
                        p.timestamp_ns,
                    );
                    newest.insert(key, p.value);
                }
            }
        }
        Ok(newest
            .into_iter()
            .map(
                |((aggregation, granularity_ns, timestamp_ns), value)| StoredPoint {
                    aggregation: Some(aggregation),
                    granularity_ns,
                    timestamp_ns,
                    value,
                },
            )
            .collect())
    }

    /// The stored buckets of many series at once, reading each file of the partitions they
    /// fall in once: for each wanted `(resource_id, metric_name, aggregation)`, its points
    /// `(granularity ns, timestamp ns, value)`, each key's newest generation, sorted by
    /// granularity then timestamp. What the dynamic aggregates API reads.
    pub fn series_of(
        &self,
        wanted: &[(&str, &str, &str)],
    ) -> Result<Vec<SeriesPoints>, StoreError> {
        self.reading(|| self.series_of_once(wanted))
    }

    fn series_of_once(
        &self,
        wanted: &[(&str, &str, &str)],
    ) -> Result<Vec<SeriesPoints>, StoreError> {
        let mut by_metric: rustc_hash::FxHashMap<(&str, &str), Vec<(&str, usize)>> =
            rustc_hash::FxHashMap::default();
        let mut routes: Vec<u64> = Vec::new();
        for (i, &(resource, metric, aggregation)) in wanted.iter().enumerate() {
            by_metric
                .entry((resource, metric))
                .or_insert_with(|| {
                    routes.push(route(resource));
                    Vec::new()
                })
                .push((aggregation, i));
        }
        let mut out: Vec<SeriesPoints> = vec![Vec::new(); wanted.len()];
        let files: Vec<FileEntry> = self
            .files(Table::Aggregates, None)
            .into_iter()
            .filter(|f| routes.iter().any(|&r| f.partition.holds(r)))
            .collect();
        for entry in &files {
            for batch in self.batches(entry)? {
                let res = strings(&batch, "resource_id", &entry.path)?;
                let names = strings(&batch, "metric_name", &entry.path)?;
                let aggregation = strings(&batch, "aggregation", &entry.path)?;
                let granularity =
                    column::<Float64Array>(&batch, "granularity_seconds", &entry.path)?;
                let ts = column::<TimestampNanosecondArray>(&batch, "timestamp", &entry.path)?;
                let value = column::<Float64Array>(&batch, "value", &entry.path)?;
                for row in 0..batch.num_rows() {
                    let Some(wants) = by_metric.get(&(res.value(row), names.value(row))) else {
                        continue;
                    };
                    if !aggregation.is_valid(row) || !granularity.is_valid(row) {
                        continue;
                    }
                    let method = aggregation.value(row);
                    for &(_, i) in wants.iter().filter(|(a, _)| *a == method) {
                        out[i].push((
                            (granularity.value(row) * 1e9).round() as i64,
                            ts.value(row),
                            value.value(row),
                        ));
                    }
                }
            }
        }
        for points in &mut out {
            // Files were read oldest generation first: of equal keys, the last read wins.
            points.reverse();
            points.sort_by_key(|p| (p.0, p.1));
            points.dedup_by_key(|p| (p.0, p.1));
        }
        Ok(out)
    }

    /// The records and newest states of the metrics `keys` names (resource, metric), reading
    /// only the files of the partitions their resources fall in: how a metric released from
    /// memory is resumed when it speaks again. A key the store does not hold is absent.
    pub fn reload(&self, keys: &HashSet<(String, String)>) -> Result<Reloaded, StoreError> {
        let mut names: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (resource, name) in keys {
            names.entry(resource).or_default().insert(name);
        }
        let routes: Vec<u64> = names.keys().map(|r| route(r)).collect();
        let mine = |f: &FileEntry| routes.iter().any(|&r| f.partition.holds(r));
        let wanted = |r: &str, m: &str| names.get(r).is_some_and(|n| n.contains(m));
        self.reading(|| {
            let mut out = Reloaded::default();
            for entry in self.files(Table::Metrics, None).iter().filter(|f| mine(f)) {
                for record in self.metric_records(entry, &|r| names.contains_key(r))? {
                    if wanted(&record.resource_id, &record.metric_name) {
                        let key = (record.resource_id.clone(), record.metric_name.clone());
                        out.records.insert(key, record);
                    }
                }
            }
            let mut states: HashMap<(String, String), (u64, MetricState)> = HashMap::new();
            for entry in self.files(Table::State, None).iter().filter(|f| mine(f)) {
                self.states_into(entry, &wanted, &mut states)?;
            }
            out.states = states.into_iter().map(|(k, (_, v))| (k, v)).collect();
            Ok(out)
        })
    }

    /// Adds the state rows of one state file that `keep` accepts to `out`, keeping each
    /// metric's newest generation only (a metric's state is written whole at each checkpoint).
    fn states_into(
        &self,
        entry: &FileEntry,
        keep: &dyn Fn(&str, &str) -> bool,
        out: &mut HashMap<(String, String), (u64, MetricState)>,
    ) -> Result<(), StoreError> {
        for batch in self.batches(entry)? {
            let res = strings(&batch, "resource_id", &entry.path)?;
            let names = strings(&batch, "metric_name", &entry.path)?;
            for (i, p) in points_of(&batch, &entry.path, keep)? {
                let key = (res.value(i).to_owned(), names.value(i).to_owned());
                let slot = out.entry(key).or_insert((entry.generation, Vec::new()));
                if slot.0 < entry.generation {
                    *slot = (entry.generation, Vec::new());
                }
                slot.1.push(p);
            }
        }
        Ok(())
    }

    /// The newest state of every metric whose resource `holds` accepts, by (resource, metric).
    pub fn states(
        &self,
        holds: &dyn Fn(&str) -> bool,
    ) -> Result<HashMap<(String, String), MetricState>, StoreError> {
        let mut out: HashMap<(String, String), (u64, MetricState)> = HashMap::new();
        for entry in self.files(Table::State, None) {
            self.states_into(&entry, &|r, _| holds(r), &mut out)?;
        }
        Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
    }
}

impl Store {
    /// Every alarm's newest record (deleted ones included, with no definition), by id.
    pub fn alarms(&self) -> Result<BTreeMap<String, AlarmRecord>, StoreError> {
        self.reading(|| {
            let mut out: BTreeMap<String, (u64, AlarmRecord)> = BTreeMap::new();
            for entry in self.files(Table::Alarms, None) {
                for record in self.alarm_records(&entry)? {
                    let newer = out.get(&record.alarm_id).is_none_or(|(g, r)| {
                        (*g, r.updated_ns) <= (entry.generation, record.updated_ns)
                    });
                    if newer {
                        out.insert(record.alarm_id.clone(), (entry.generation, record));
                    }
                }
            }
            Ok(out.into_iter().map(|(k, (_, r))| (k, r)).collect())
        })
    }

    /// An alarm's history (or every alarm's with `None`), oldest first.
    pub fn alarm_history(
        &self,
        alarm_id: Option<&str>,
    ) -> Result<Vec<AlarmHistoryRecord>, StoreError> {
        self.reading(|| {
            let mut out = Vec::new();
            for entry in self.files(Table::AlarmHistory, None) {
                out.extend(self.history_records(&entry, alarm_id)?);
            }
            out.sort_by_key(|r| (r.timestamp_ns, r.event_time_ns));
            Ok(out)
        })
    }

    /// Every resource an event created or ended, as the events left it.
    pub fn resource_states(&self) -> Result<BTreeMap<String, ResourceState>, StoreError> {
        self.reading(|| self.fold_resources(&self.files(Table::Resources, None)))
    }

    /// The resource states the records of `entries` make.
    fn fold_resources(
        &self,
        entries: &[FileEntry],
    ) -> Result<BTreeMap<String, ResourceState>, StoreError> {
        let mut states = BTreeMap::new();
        for entry in entries {
            for r in self.resource_records(entry)? {
                fold(&mut states, &r);
            }
        }
        Ok(states)
    }

    fn resource_records(&self, entry: &FileEntry) -> Result<Vec<ResourceRecord>, StoreError> {
        let mut out = Vec::new();
        for batch in self.batches(entry)? {
            let ids = strings(&batch, "resource_id", &entry.path)?;
            let types = strings(&batch, "resource_type", &entry.path)?;
            let ops = strings(&batch, "op", &entry.path)?;
            let attributes = strings(&batch, "attributes", &entry.path)?;
            let at = column::<TimestampNanosecondArray>(&batch, "at", &entry.path)?;
            for i in 0..batch.num_rows() {
                let Some(op) = ResourceOp::parse(ops.value(i)) else {
                    return Err(StoreError::Corrupt {
                        path: entry.path.clone(),
                        message: format!("unknown resource op {:?}", ops.value(i)),
                    });
                };
                out.push(ResourceRecord {
                    resource_id: ids.value(i).to_owned(),
                    resource_type: types.value(i).to_owned(),
                    op,
                    attributes: attributes
                        .is_valid(i)
                        .then(|| attributes.value(i).to_owned()),
                    at_ns: at.value(i),
                });
            }
        }
        Ok(out)
    }

    fn alarm_records(&self, entry: &FileEntry) -> Result<Vec<AlarmRecord>, StoreError> {
        let mut out = Vec::new();
        for batch in self.batches(entry)? {
            let ids = strings(&batch, "alarm_id", &entry.path)?;
            let definitions = strings(&batch, "definition", &entry.path)?;
            let evaluations = strings(&batch, "evaluation", &entry.path)?;
            let updated = column::<TimestampNanosecondArray>(&batch, "updated", &entry.path)?;
            for i in 0..batch.num_rows() {
                let opt = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_owned());
                out.push(AlarmRecord {
                    alarm_id: ids.value(i).to_owned(),
                    definition: opt(definitions),
                    evaluation: opt(evaluations),
                    updated_ns: updated.value(i),
                });
            }
        }
        Ok(out)
    }

    fn history_records(
        &self,
        entry: &FileEntry,
        alarm_id: Option<&str>,
    ) -> Result<Vec<AlarmHistoryRecord>, StoreError> {
        let mut out = Vec::new();
        for batch in self.batches(entry)? {
            let col = |name: &str| strings(&batch, name, &entry.path);
            let (ids, events, kinds, details, severities) = (
                col("alarm_id")?,
                col("event_id")?,
                col("type")?,
                col("detail")?,
                col("severity")?,
            );
            let ts = column::<TimestampNanosecondArray>(&batch, "timestamp", &entry.path)?;
            let event_time = column::<TimestampNanosecondArray>(&batch, "event_time", &entry.path)?;
            for i in 0..batch.num_rows() {
                if alarm_id.is_some_and(|a| a != ids.value(i)) {
                    continue;
                }
                out.push(AlarmHistoryRecord {
                    alarm_id: ids.value(i).to_owned(),
                    event_id: events.value(i).to_owned(),
                    kind: kinds.value(i).to_owned(),
                    detail: details.value(i).to_owned(),
                    severity: severities.value(i).to_owned(),
                    timestamp_ns: ts.value(i),
                    event_time_ns: event_time.value(i),
                });
            }
        }
        Ok(out)
    }
}

/// Applies `record` to the state of its resource in `states`.
fn fold(states: &mut BTreeMap<String, ResourceState>, record: &ResourceRecord) {
    states
        .entry(record.resource_id.clone())
        .or_default()
        .apply(record);
}

fn resources_batch(rows: &[ResourceRecord], generation: u64) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("attributes", DataType::Utf8, true),
        Field::new("at", timestamp_type(), false),
        Field::new("generation", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.resource_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.resource_type),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.op.as_str()),
        )),
        Arc::new(
            rows.iter()
                .map(|r| r.attributes.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.at_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from(vec![generation; rows.len()])),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

fn alarms_batch(rows: &[AlarmRecord], generation: u64) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("alarm_id", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, true),
        Field::new("evaluation", DataType::Utf8, true),
        Field::new("updated", timestamp_type(), false),
        Field::new("generation", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.alarm_id),
        )),
        Arc::new(
            rows.iter()
                .map(|r| r.definition.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.evaluation.as_deref())
                .collect::<StringArray>(),
        ),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.updated_ns))
                .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from(vec![generation; rows.len()])),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

fn history_batch(rows: &[AlarmHistoryRecord], generation: u64) -> RecordBatch {
    let text = |f: fn(&AlarmHistoryRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let time = |f: fn(&AlarmHistoryRecord) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let schema = Schema::new(vec![
        Field::new("alarm_id", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("generation", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.alarm_id),
        text(|r| &r.event_id),
        text(|r| &r.kind),
        text(|r| &r.detail),
        text(|r| &r.severity),
        time(|r| r.timestamp_ns),
        time(|r| r.event_time_ns),
        Arc::new(UInt64Array::from(vec![generation; rows.len()])),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, StoreError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read", &path)(e)),
    };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|_| StoreError::NotOurs {
        dir: dir.display().to_string(),
    })?;
    if manifest.format != FORMAT {
        return Err(StoreError::NotOurs {
            dir: dir.display().to_string(),
        });
    }
    if manifest.version != VERSION {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            message: format!(
                "layout version {} but this build reads version {VERSION}",
                manifest.version
            ),
        });
    }
    Ok(Some(manifest))
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn metrics_batch(rows: &[MetricRecord], generation: u64) -> RecordBatch {
    let text = |f: fn(&MetricRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let opt = |f: fn(&MetricRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let schema = Schema::new(vec![
        Field::new("metric_id", DataType::Utf8, false),
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("original_resource_id", DataType::Utf8, false),
        Field::new("metric_name", DataType::Utf8, false),
        Field::new("unit", DataType::Utf8, false),
        Field::new("archive_policy_name", DataType::Utf8, false),
        Field::new("resource_type", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("project_id", DataType::Utf8, true),
        Field::new("resource_attributes", DataType::Utf8, true),
        Field::new("generation", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.metric_id),
        text(|r| &r.resource_id),
        text(|r| &r.original_resource_id),
        text(|r| &r.metric_name),
        text(|r| &r.unit),
        text(|r| &r.archive_policy_name),
        text(|r| &r.resource_type),
        opt(|r| r.user_id.as_deref()),
        opt(|r| r.project_id.as_deref()),
        opt(|r| r.resource_attributes.as_deref()),
        Arc::new(UInt64Array::from(vec![generation; rows.len()])),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

fn points_batch(points: &Points, generation: u64, state: bool) -> RecordBatch {
    let syms = |v: &[Sym]| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(v.iter().map(|s| s.as_str())))
    };
    let aggregation: ArrayRef = Arc::new(
        points
            .aggregation
            .iter()
            .map(|a| a.map(|s| s.as_str()))
            .collect::<StringArray>(),
    );
    let granularity: ArrayRef = Arc::new(
        points
            .granularity_ns
            .iter()
            .map(|&g| (g > 0).then_some(g as f64 / 1e9))
            .collect::<Float64Array>(),
    );
    let schema = Schema::new(vec![
        Field::new("resource_id", DataType::Utf8, false),
        Field::new("metric_name", DataType::Utf8, false),
        Field::new("aggregation", DataType::Utf8, state),
        Field::new("granularity_seconds", DataType::Float64, state),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("value", DataType::Float64, false),
        Field::new("generation", DataType::UInt64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        syms(&points.resource_id),
        syms(&points.metric_name),
        aggregation,
        granularity,
        Arc::new(TimestampNanosecondArray::from(points.timestamp_ns.clone()).with_timezone("UTC")),
        Arc::new(Float64Array::from(points.value.clone())),
        Arc::new(UInt64Array::from(vec![generation; points.len()])),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

fn column<'b, T: 'static>(
    batch: &'b RecordBatch,
    name: &str,
    path: &str,
) -> Result<&'b T, StoreError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("column {name} is missing or of the wrong type"),
        })
}

fn strings<'b>(
    batch: &'b RecordBatch,
    name: &str,
    path: &str,
) -> Result<&'b StringArray, StoreError> {
    column::<StringArray>(batch, name, path)
}

/// The rows of an aggregates or state batch whose (resource, metric) `keep` accepts, with
/// their row numbers.
fn points_of(
    batch: &RecordBatch,
    path: &str,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Vec<(usize, StoredPoint)>, StoreError> {
    let res = strings(batch, "resource_id", path)?;
    let names = strings(batch, "metric_name", path)?;
    let aggregation = strings(batch, "aggregation", path)?;
    let granularity = column::<Float64Array>(batch, "granularity_seconds", path)?;
    let ts = column::<TimestampNanosecondArray>(batch, "timestamp", path)?;
    let value = column::<Float64Array>(batch, "value", path)?;
    let mut out = Vec::new();
    for i in 0..batch.num_rows() {
        if !keep(res.value(i), names.value(i)) {
            continue;
        }
        out.push((
            i,
            StoredPoint {
                aggregation: aggregation
                    .is_valid(i)
                    .then(|| aggregation.value(i).to_owned()),
                granularity_ns: if granularity.is_valid(i) {
                    (granularity.value(i) * 1e9).round() as i64
                } else {
                    0
                },
                timestamp_ns: ts.value(i),
                value: value.value(i),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(value: f64) -> Checkpoint {
        let (r, m) = (Sym::new("res-1"), Sym::new("cpu"));
        let mut cp = Checkpoint::default();
        cp.metrics.push(MetricRecord {
            metric_id: "id".into(),
            resource_id: "res-1".into(),
            original_resource_id: "res/1".into(),
            metric_name: "cpu".into(),
            unit: "ns".into(),
            archive_policy_name: "low".into(),
            resource_type: "generic".into(),
            user_id: None,
            project_id: Some("p".into()),
            resource_attributes: None,
        });
        cp.aggregates
            .push(r, m, Some(Sym::new("mean")), 300_000_000_000, 0, value);
        cp.state.push(r, m, None, 0, 5, value);
        cp
    }

    /// A resource's records give one state whatever order they are read in, and the records a
    /// state writes back (compaction) rebuild it.
    #[test]
    fn resource_records_fold_to_one_state_in_any_order() {
        let r = |op, attributes: Option<&str>, at_ns| ResourceRecord {
            resource_id: "r".into(),
            resource_type: "box".into(),
            op,
            attributes: attributes.map(str::to_owned),
            at_ns,
        };
        let records = [
            r(ResourceOp::Create, Some(r#"{"host":"a"}"#), 10),
            r(ResourceOp::Update, Some(r#"{"host":"b"}"#), 20),
            r(ResourceOp::End, None, 25),
            r(ResourceOp::Update, Some(r#"{"host":"c"}"#), 30),
            r(ResourceOp::Delete, None, 40),
            r(ResourceOp::Create, Some(r#"{"host":"d"}"#), 50),
            r(ResourceOp::Update, Some(r#"{"host":"e"}"#), 60),
        ];
        let fold = |order: &[usize]| {
            let mut s = ResourceState::default();
            for &i in order {
                s.apply(&records[i]);
            }
            s
        };
        let want = fold(&[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(want.created, Some((50, Some(r#"{"host":"d"}"#.into()))));
        assert_eq!(want.updates, vec![(60, r#"{"host":"e"}"#.into())]);
        assert!(!want.is_deleted());
        for order in [
            [6, 5, 4, 3, 2, 1, 0],
            [3, 0, 6, 4, 1, 5, 2],
            [1, 3, 0, 2, 4, 6, 5],
        ] {
            // Records of one API call are written in time order; across files any order.
            let got = fold(&order);
            assert_eq!(got.created, want.created, "{order:?}");
            assert_eq!(got.deleted_at_ns, want.deleted_at_ns, "{order:?}");
        }
        let mut rebuilt = ResourceState::default();
        for record in want.records("r") {
            rebuilt.apply(&record);
        }
        assert_eq!(rebuilt, want);
        let deleted = fold(&[0, 1, 4]);
        assert!(deleted.is_deleted() && deleted.updates.is_empty());
        // A metric deleted, then created again; a deletion of the resource covers both.
        let mark = |op, at| r(op, Some(r#"{"metric":"cpu"}"#), at);
        let mut s = ResourceState::default();
        for rec in [
            mark(ResourceOp::DeleteMetric, 70),
            r(ResourceOp::Create, None, 5),
        ] {
            s.apply(&rec);
        }
        assert!(s.metric_deleted("cpu") && !s.metric_deleted("mem"));
        s.apply(&mark(ResourceOp::RestoreMetric, 80));
        assert!(!s.metric_deleted("cpu"));
        s.apply(&mark(ResourceOp::DeleteMetric, 90));
        let mut rebuilt = ResourceState::default();
        for record in s.records("r") {
            rebuilt.apply(&record);
        }
        assert_eq!(rebuilt, s);
        s.apply(&r(ResourceOp::Delete, None, 100));
        assert!(s.metric_marks.is_empty() && s.is_deleted());
    }

    #[test]
    fn newer_generations_override_and_orphans_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let part = Partition { index: 0, count: 1 };
        {
            let store = Store::create(dir.path()).unwrap();
            store.commit(part, &mut checkpoint(1.0)).unwrap();
            store.commit(part, &mut checkpoint(2.0)).unwrap();
            assert!(matches!(
                Store::create(dir.path()).unwrap_err(),
                StoreError::Locked { .. }
            ));
        }
        fs::write(
            dir.path().join("aggregates/g999-p0of1.parquet.tmp"),
            b"half",
        )
        .unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert!(!dir
            .path()
            .join("aggregates/g999-p0of1.parquet.tmp")
            .exists());
        let points = store.aggregates("res-1", "cpu", 0).unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].value, 2.0);
        let states = store.states(&|_| true).unwrap();
        assert_eq!(states[&("res-1".to_owned(), "cpu".to_owned())].len(), 1);
        let metrics = store.metrics(&|_| true).unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].project_id.as_deref(), Some("p"));
    }

    /// Files of runs with other worker counts interleave: a run with two workers, then one
    /// with one, then two again. Merging the two-worker files around the one-worker file
    /// would give the first run's rows the newest generation over the second run's.
    #[test]
    fn compaction_never_lets_older_rows_win_over_another_layouts_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let (mean, cpu) = (Some(Sym::new("mean")), Sym::new("cpu"));
        // A resource worker 0 of two owns.
        let name = (0..)
            .map(|i| format!("vm-{i}"))
            .find(|r| route(r).is_multiple_of(2))
            .unwrap();
        let (res, other) = (Sym::new(&name), Sym::new("other"));
        let two = Partition { index: 0, count: 2 };
        let one = Partition { index: 0, count: 1 };
        let commit = |partition, resource, value| {
            let mut cp = Checkpoint::default();
            cp.aggregates.push(resource, cpu, mean, 60, 0, value);
            cp.state.push(resource, cpu, None, 0, 0, value);
            store.commit(partition, &mut cp).unwrap();
        };
        commit(two, res, 1.0);
        commit(one, res, 2.0);
        commit(two, other, 3.0);
        let got = store.aggregates(&name, "cpu", route(&name)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value, 2.0, "the one-worker run's newer value");
        let states = store.states(&|r| r == name).unwrap();
        assert_eq!(states[&(name.clone(), "cpu".into())][0].value, 2.0);
    }

    #[test]
    fn compaction_keeps_files_few_and_the_newest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let part = Partition { index: 0, count: 1 };
        let (mean, cpu) = (Some(Sym::new("mean")), Sym::new("cpu"));
        let resources: Vec<Sym> = (0..5).map(|i| Sym::new(&format!("res-{i}"))).collect();
        let mut expected: BTreeMap<(usize, i64), f64> = BTreeMap::new();
        let mut expected_state: HashMap<usize, f64> = HashMap::new();
        let checkpoints = 200;
        {
            let store = Store::create(dir.path()).unwrap();
            for n in 0..checkpoints {
                let mut cp = Checkpoint::default();
                for (r, &res) in resources.iter().enumerate() {
                    if n == r {
                        cp.metrics.push(MetricRecord {
                            metric_id: format!("id-{r}"),
                            resource_id: res.as_str().into(),
                            original_resource_id: res.as_str().into(),
                            metric_name: "cpu".into(),
                            unit: "ns".into(),
                            archive_policy_name: "low".into(),
                            resource_type: "generic".into(),
                            user_id: None,
                            project_id: None,
                            resource_attributes: None,
                        });
                    }
                    if (n + r) % 3 == 0 {
                        continue;
                    }
                    // Each checkpoint writes this bucket and rewrites the previous one.
                    for t in [n as i64 - 1, n as i64] {
                        let v = (n * 10 + r) as f64;
                        cp.aggregates.push(res, cpu, mean, 60, t.max(0) * 60, v);
                        expected.insert((r, t.max(0) * 60), v);
                    }
                    cp.state.push(res, cpu, None, 0, n as i64, n as f64);
                    cp.state.push(res, cpu, mean, 60, n as i64, n as f64);
                    expected_state.insert(r, n as f64);
                }
                store.commit(part, &mut cp).unwrap();
            }
            let files = store.lock_manifest().files.len();
            assert!(
                files <= 3 * 10,
                "{files} files after {checkpoints} checkpoints"
            );
            let check = |store: &Store| {
                for (r, &res) in resources.iter().enumerate() {
                    let got: Vec<(i64, f64)> = store
                        .aggregates(res.as_str(), "cpu", 0)
                        .unwrap()
                        .into_iter()
                        .map(|p| (p.timestamp_ns, p.value))
                        .collect();
                    let want: Vec<(i64, f64)> = expected
                        .iter()
                        .filter(|((er, _), _)| *er == r)
                        .map(|(&(_, t), &v)| (t, v))
                        .collect();
                    assert_eq!(got, want, "resource {r}");
                }
                let states = store.states(&|_| true).unwrap();
                for (r, &res) in resources.iter().enumerate() {
                    let state = &states[&(res.as_str().to_owned(), "cpu".to_owned())];
                    assert_eq!(state.len(), 2, "one checkpoint's state, whole");
                    assert!(state.iter().all(|p| p.value == expected_state[&r]));
                }
                assert_eq!(store.metrics(&|_| true).unwrap().len(), 5);
            };
            check(&store);
            drop(store);
            let store = Store::create(dir.path()).unwrap();
            check(&store);
        }
        // Only the files the manifest names are left.
        let on_disk: usize = Table::ALL
            .iter()
            .map(|t| fs::read_dir(dir.path().join(t.dir())).unwrap().count())
            .sum();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(on_disk, store.lock_manifest().files.len());
    }

    #[test]
    fn foreign_and_missing_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = Store::create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a meterflow store"), "{err}");
        let err = Store::open(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no meterflow store"), "{err}");
    }
}
