//! Alarms inside the store's operator: each threshold alarm lives on the worker that owns its
//! metric, and is evaluated (Aodh's decision, [`Evaluator`]) whenever a batch closes buckets of
//! its granularity — in event time, at stream speed, with no exchange. Transitions are
//! recorded in the store's alarm history, state is checkpointed with the measures, and
//! notifications go to the [`Notifier`] without waiting for any receiver. Changes made through
//! the API arrive as [`AlarmEdit`]s on the same worker; alarms with a `no_data_grace` are also
//! evaluated as the shared watermark moves ([`Alarms::on_watermark`]). Alarms over several
//! metrics (by_metrics, by_resources, composite) live in the same structure on the worker their
//! id routes to, inside the cross operator, and are evaluated from what their metrics send
//! ([`Alarms::on_feed`], [`Alarms::run_cross`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meterflow_connectors::gnocchi::store::{
    AlarmHistoryRecord, AlarmRecord, Checkpoint, StoredPoint,
};
use meterflow_connectors::gnocchi::{random_uuid, resource_key};
use meterflow_connectors::notify::{python_json, Notification, Notifier, Payload};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use meterflow_engine::model::Event;
use meterflow_engine::partition::route;
use meterflow_operators::aggregate::{ArchivePolicy, Metric};
use meterflow_operators::alarm::constraints::Constraints;
use meterflow_operators::alarm::cross::{is_cross, CrossMemory, Shape};
use meterflow_operators::alarm::definition::{AlarmDefinition, Rule, Target};
use meterflow_operators::alarm::evaluator::{granularity_ns, Conduct, Evaluator, Outcome};
use meterflow_operators::alarm::event::{hits, project_of};
use meterflow_operators::alarm::threshold::{AlarmState, Evaluation, ReasonData, Refresh};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where an alarm came from: a definition file's `alarms:` (removed from the file → deleted)
/// or the API (kept until deleted there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The definition's `alarms:`.
    Definition,
    /// `POST /v2/alarms`.
    Api,
}

/// What the store keeps of an alarm's evaluation (the `evaluation` column).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredEvaluation {
    /// Where the alarm came from.
    pub origin: Origin,
    /// When the state last changed (wall clock, ns).
    #[serde(default)]
    pub state_timestamp_ns: i64,
    /// The evaluation memory.
    pub evaluator: Evaluator,
    /// What an alarm over several metrics holds besides (its contributors' buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<CrossMemory>,
}

/// An alarm read back from the store.
#[derive(Clone, Debug)]
pub struct StoredAlarm {
    /// The definition.
    pub definition: AlarmDefinition,
    /// Its evaluation.
    pub evaluation: StoredEvaluation,
    /// When the row was written.
    pub updated_ns: i64,
}

/// Every live alarm in the store (deleted ones and unreadable rows left out, the latter
/// reported), by id.
pub fn stored_alarms(records: &BTreeMap<String, AlarmRecord>) -> BTreeMap<String, StoredAlarm> {
    let mut out = BTreeMap::new();
    for (id, record) in records {
        let (Some(definition), Some(evaluation)) = (&record.definition, &record.evaluation) else {
            continue;
        };
        let parsed = serde_json::from_str(definition)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                AlarmDefinition::from_json(&v, |_| id.clone()).map_err(|p| {
                    p.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            });
        let evaluation = serde_json::from_str::<StoredEvaluation>(evaluation);
        match (parsed, evaluation) {
            (Ok(definition), Ok(evaluation)) => {
                out.insert(
                    id.clone(),
                    StoredAlarm {
                        definition,
                        evaluation,
                        updated_ns: record.updated_ns,
                    },
                );
            }
            (Err(e), _) => tracing::error!("alarm {id} in the store cannot be read ({e}); it is not evaluated"),
            (_, Err(e)) => tracing::error!("alarm {id}'s evaluation state in the store cannot be read ({e}); it is not evaluated"),
        }
    }
    out
}

/// Every alarm over several metrics that runs (the definition's, and the stored ones
/// [`Alarms::load`] keeps): each store operator works out which of its metrics feed them.
pub fn cross_definitions(
    (defined, declared): (&[Arc<AlarmDefinition>], bool),
    stored: &BTreeMap<String, StoredAlarm>,
) -> Vec<Arc<AlarmDefinition>> {
    let mut out: Vec<Arc<AlarmDefinition>> =
        defined.iter().filter(|a| is_cross(a)).cloned().collect();
    let ids: HashSet<&str> = defined.iter().map(|d| d.alarm_id.as_str()).collect();
    for (id, s) in stored {
        if !ids.contains(id.as_str())
            && is_cross(&s.definition)
            && (s.evaluation.origin == Origin::Api || !declared)
        {
            out.push(Arc::new(s.definition.clone()));
        }
    }
    out
}

/// Nanoseconds since the epoch as Aodh writes times.
fn iso(ns: i64) -> String {
    meterflow_engine::time::format_iso_utc(ns.div_euclid(1000))
}

/// An alarm as Aodh's API returns it: the definition with its state fields.
pub fn alarm_json(alarm: &StoredAlarm) -> serde_json::Value {
    let e = &alarm.evaluation;
    let mut v = alarm.definition.to_json();
    v["state"] = json!(e.evaluator.state.as_str());
    v["state_reason"] = json!(e.evaluator.state_reason);
    v["state_timestamp"] = json!(iso(e.state_timestamp_ns));
    v["timestamp"] = json!(iso(alarm.updated_ns));
    v
}

/// A history entry as Aodh's API returns it.
pub fn history_json(h: &AlarmHistoryRecord) -> serde_json::Value {
    json!({
        "alarm_id": h.alarm_id,
        "event_id": h.event_id,
        "type": h.kind,
        "detail": h.detail,
        "severity": h.severity,
        "timestamp": iso(h.timestamp_ns),
        "event_time": iso(h.event_time_ns),
    })
}

/// The alarm `key` names: its id, or its name when exactly one alarm has it.
pub fn find_alarm<'a>(
    alarms: &'a BTreeMap<String, StoredAlarm>,
    key: &str,
) -> Result<&'a StoredAlarm, String> {
    if let Some(a) = alarms.get(key) {
        return Ok(a);
    }
    let named: Vec<&StoredAlarm> = alarms
        .values()
        .filter(|a| a.definition.name == key)
        .collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "Alarm {key} not found: no alarm has that id or name (meterflow alarms list shows them)"
        )),
        _ => Err(format!(
            "{} alarms are named {key:?}; give the alarm_id instead",
            named.len()
        )),
    }
}

/// The worker route of an alarm: the route of its metric for an alarm that reads one (it is
/// evaluated where the metric is aggregated), else of its id (alarms over several metrics,
/// evaluated from what their contributors send); `None` for alarms not evaluated here.
pub fn alarm_route(alarm: &AlarmDefinition) -> Option<u64> {
    if in_cross_operator(alarm) {
        return Some(route(&alarm.alarm_id));
    }
    match &alarm.threshold()?.target {
        Target::Resource { resource_id, .. } => Some(route(&resource_key(resource_id))),
        _ => None,
    }
}

/// Whether worker `index` of `peers` evaluates `alarm`: the store's operator (`cross`
/// false) the alarms on one metric, the cross operator (`cross` true) the others.
pub fn owns(alarm: &AlarmDefinition, (index, peers): (usize, usize), cross: bool) -> bool {
    in_cross_operator(alarm) == cross
        && alarm_route(alarm).is_some_and(|r| (r % peers as u64) as usize == index)
}

/// Whether the cross operator evaluates `alarm` (alarms over several metrics, and event
/// alarms, which every worker's events reach), rather than the store operator of its metric.
pub fn in_cross_operator(alarm: &AlarmDefinition) -> bool {
    is_cross(alarm) || matches!(alarm.rule, Rule::Event(_))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A change to one alarm made through the API, on its way to the worker that owns the
/// alarm (the API checked it and worked out its history entry). A change to an alarm over
/// several metrics goes to every store operator (each works out which of its metrics feed
/// the alarm), and from the owner's on to the cross operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlarmEdit {
    /// The alarm's route ([`alarm_route`]).
    pub route: u64,
    /// Whether the alarm is one over several metrics ([`is_cross`]).
    #[serde(default)]
    pub cross: bool,
    /// For the copies of a cross alarm's change: the worker this copy is for.
    #[serde(default)]
    pub copy: Option<u64>,
    /// The alarm.
    pub alarm_id: String,
    /// What changes.
    pub change: AlarmChange,
    /// The history entry to record with it: (type, detail).
    pub history: Option<(String, serde_json::Value)>,
}

impl AlarmEdit {
    /// A change to alarm `alarm_id`, whose definition (the old one for a removal) is
    /// `alarm`.
    pub fn new(
        alarm: &AlarmDefinition,
        alarm_id: &str,
        change: AlarmChange,
        history: Option<(String, serde_json::Value)>,
    ) -> Option<AlarmEdit> {
        Some(AlarmEdit {
            route: alarm_route(alarm)?,
            cross: in_cross_operator(alarm),
            copy: None,
            alarm_id: alarm_id.to_owned(),
            change,
            history,
        })
    }

    /// The exchange key: the worker a copy is for, else the alarm's route.
    pub fn target(&self) -> u64 {
        self.copy.unwrap_or(self.route)
    }
}

/// What an [`AlarmEdit`] does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AlarmChange {
    /// Create the alarm or replace its definition. A new alarm starts from `carried` (an
    /// alarm moving here from another worker) or afresh, reading the closed buckets already
    /// held so that its first evaluation, at the next closed bucket, sees a full window. A
    /// replaced one keeps its state unless `set_state` (the body gave one), and starts its
    /// window anew when the rule changed.
    Put {
        /// The definition.
        definition: Arc<AlarmDefinition>,
        /// Where it came from.
        origin: Origin,
        /// The evaluation it brings along, if it moves here from another worker.
        carried: Option<Box<StoredEvaluation>>,
        /// Take the definition's `state` and `state_reason` as the alarm's state.
        set_state: bool,
    },
    /// Delete the alarm (or move it away from this worker, with no history entry).
    Remove,
    /// Set the state, as Aodh's `PUT /v2/alarms/ID/state` does (nothing is notified).
    State(AlarmState),
}

/// One alarm on its worker.
struct Slot {
    definition: Arc<AlarmDefinition>,
    origin: Origin,
    constraints: Constraints,
    evaluator: Evaluator,
    state_timestamp_ns: i64,
    /// Granule and method index in the metric's policy, once resolved (or why not).
    resolved: Option<Result<(usize, usize), String>>,
    /// For an alarm over several metrics: its contributors' buckets.
    cross: Option<CrossMemory>,
    dirty: bool,
}

/// One worker's alarms.
#[derive(Default)]
pub struct Alarms {
    slots: Vec<Slot>,
    /// Alarms by the metric they read: (resource key, metric name).
    watches: FxHashMap<(Sym, Sym), Vec<usize>>,
    notifier: Option<Arc<Notifier>>,
    history: Vec<AlarmHistoryRecord>,
    /// Deletions to record at the next checkpoint.
    deleted: Vec<AlarmRecord>,
    /// Slot index by alarm id.
    by_id: FxHashMap<String, usize>,
    /// The alarms with a `no_data_grace`, by id (evaluated as the watermark moves).
    graced: BTreeSet<String>,
    /// The watermark they were last evaluated at.
    swept: i64,
    /// Alarms over several metrics fed since they were last evaluated, by id.
    touched: BTreeSet<String>,
    /// The engine's watermark as the cross operator knows it (the newest event time any
    /// store operator reported), for `no_data_grace` and the start of created alarms.
    watermark: i64,
}

impl Alarms {
    /// The alarms `mine` picks (see [`owns`]): the definition's, and those the store holds
    /// (API-created ones kept; definition ones no longer defined, deleted). Stored state is
    /// resumed; a definition whose rule changed keeps its state but starts its window anew.
    pub fn load(
        (defined, declared): (&[Arc<AlarmDefinition>], bool),
        stored: &BTreeMap<String, StoredAlarm>,
        mine: &dyn Fn(&AlarmDefinition) -> bool,
        notifier: Option<Arc<Notifier>>,
    ) -> Alarms {
        let mut alarms = Alarms {
            notifier,
            watermark: i64::MIN,
            ..Alarms::default()
        };
        let now = now_ns();
        for definition in defined.iter().filter(|a| mine(a)) {
            let slot = match stored.get(&definition.alarm_id) {
                Some(s) => {
                    let mut evaluator = s.evaluation.evaluator.clone();
                    let mut cross = s.evaluation.cross.clone();
                    let changed = s.definition.to_json() != definition.to_json();
                    if changed {
                        if s.definition.rule_json != definition.rule_json {
                            evaluator.restart_window();
                            cross = None;
                        }
                        alarms.record(definition, "rule change", definition.to_json(), now, now);
                    }
                    let since = s.evaluation.state_timestamp_ns;
                    Slot::new(
                        definition.clone(),
                        Origin::Definition,
                        (evaluator, cross),
                        since,
                        changed,
                    )
                }
                None => {
                    alarms.record(definition, "creation", definition.to_json(), now, now);
                    let evaluator = Evaluator::new(definition.state, &definition.state_reason);
                    Slot::new(
                        definition.clone(),
                        Origin::Definition,
                        (evaluator, None),
                        now,
                        true,
                    )
                }
            };
            alarms.add(slot);
        }
        let defined: HashSet<&str> = defined.iter().map(|d| d.alarm_id.as_str()).collect();
        for (id, s) in stored {
            if defined.contains(id.as_str()) || !mine(&s.definition) {
                continue;
            }
            if s.evaluation.origin == Origin::Api || !declared {
                alarms.add(Slot::new(
                    Arc::new(s.definition.clone()),
                    s.evaluation.origin,
                    (s.evaluation.evaluator.clone(), s.evaluation.cross.clone()),
                    s.evaluation.state_timestamp_ns,
                    false,
                ));
            } else {
                alarms.record(&s.definition, "deletion", s.definition.to_json(), now, now);
                alarms.deleted.push(AlarmRecord {
                    alarm_id: id.clone(),
                    definition: None,
                    evaluation: None,
                    updated_ns: now,
                });
            }
        }
        alarms
    }

    fn add(&mut self, slot: Slot) -> usize {
        let index = self.slots.len();
        if let Some(key) = watch_key(&slot.definition) {
            self.watches.entry(key).or_default().push(index);
        }
        self.by_id.insert(slot.definition.alarm_id.clone(), index);
        if slot.definition.options.no_data_grace.is_some() {
            self.graced.insert(slot.definition.alarm_id.clone());
        }
        self.slots.push(slot);
        index
    }

    /// Takes slot `i` out; the last slot moves into its place.
    fn take(&mut self, i: usize) -> Slot {
        let unwatch = |watches: &mut FxHashMap<(Sym, Sym), Vec<usize>>, slot: &Slot, i: usize| {
            if let Some(key) = watch_key(&slot.definition) {
                if let Some(list) = watches.get_mut(&key) {
                    list.retain(|&j| j != i);
                    if list.is_empty() {
                        watches.remove(&key);
                    }
                }
            }
        };
        unwatch(&mut self.watches, &self.slots[i], i);
        let last = self.slots.len() - 1;
        if last != i {
            let moved = &self.slots[last];
            if let Some(list) = watch_key(&moved.definition).and_then(|k| self.watches.get_mut(&k))
            {
                for j in list.iter_mut().filter(|j| **j == last) {
                    *j = i;
                }
            }
            self.by_id.insert(moved.definition.alarm_id.clone(), i);
        }
        let slot = self.slots.swap_remove(i);
        self.by_id.remove(&slot.definition.alarm_id);
        self.graced.remove(&slot.definition.alarm_id);
        self.touched.remove(&slot.definition.alarm_id);
        slot
    }

    /// Applies a change made through the API. Returns the slot of an alarm whose window
    /// starts anew (to [`Alarms::prime`] with its metric, if held).
    pub fn apply(&mut self, edit: AlarmEdit) -> Option<usize> {
        let now = now_ns();
        let AlarmEdit {
            alarm_id,
            change,
            history,
            ..
        } = edit;
        let existing = self.by_id.get(&alarm_id).copied();
        let (mut fresh, mut prime) = (false, None);
        let definition = match change {
            AlarmChange::Put {
                definition,
                origin,
                carried,
                set_state,
            } => {
                let (evaluator, since, mut cross) = match existing {
                    Some(i) => {
                        let mut slot = self.take(i);
                        if slot.definition.rule_json != definition.rule_json {
                            slot.evaluator.restart_window();
                            slot.cross = None;
                            fresh = true;
                        }
                        if set_state && slot.evaluator.state != definition.state {
                            slot.evaluator.state = definition.state;
                            slot.evaluator.state_reason = definition.state_reason.clone();
                            slot.state_timestamp_ns = now;
                        }
                        (slot.evaluator, slot.state_timestamp_ns, slot.cross)
                    }
                    None => match carried {
                        Some(c) => (c.evaluator, c.state_timestamp_ns, c.cross),
                        None => {
                            fresh = true;
                            let e = Evaluator::new(definition.state, &definition.state_reason);
                            (e, now, None)
                        }
                    },
                };
                let mut evaluator = evaluator;
                if fresh {
                    cross = None;
                    // Created or re-ruled while the engine runs: evaluated from the next
                    // instant its contributors reach after the engine's present.
                    if let Some(Ok(shape)) = Shape::of(&definition) {
                        if self.watermark != i64::MIN {
                            let at = self.watermark.div_euclid(shape.step) * shape.step;
                            evaluator.through = Some(at);
                        }
                    }
                }
                let slot = Slot::new(definition.clone(), origin, (evaluator, cross), since, true);
                let i = self.add(slot);
                prime = fresh.then_some(i);
                definition
            }
            AlarmChange::Remove => {
                let i = existing?;
                let slot = self.take(i);
                if history.is_some() {
                    self.deleted.push(AlarmRecord {
                        alarm_id: alarm_id.clone(),
                        definition: None,
                        evaluation: None,
                        updated_ns: now,
                    });
                }
                slot.definition
            }
            AlarmChange::State(state) => {
                let slot = &mut self.slots[existing?];
                if slot.evaluator.state != state {
                    slot.state_timestamp_ns = now;
                }
                slot.evaluator.state = state;
                slot.evaluator.state_reason = MANUAL_REASON.into();
                slot.dirty = true;
                slot.definition.clone()
            }
        };
        if let Some((kind, detail)) = history {
            self.record(&definition, &kind, detail, now, now);
        }
        prime
    }

    /// Whether an alarm reads metric `key` (resource key, name).
    pub fn watches(&self, key: (Sym, Sym)) -> bool {
        self.watches.contains_key(&key)
    }

    /// The metric alarm `i` reads.
    pub fn watched(&self, i: usize) -> Option<(Sym, Sym)> {
        watch_key(&self.slots.get(i)?.definition)
    }

    /// Reads the closed buckets of alarm `i`'s window — those `metric` holds, and before them
    /// the `stored` ones (final buckets already written, in the store's order) — without
    /// evaluating them: the alarm's first evaluation comes at the next closed bucket, over a
    /// full window (as Aodh's next poll would read Gnocchi).
    pub fn prime(&mut self, i: usize, metric: &Metric, stored: &[StoredPoint]) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(rule) = slot.definition.threshold() else {
            return;
        };
        let Ok((gi, mi)) = *slot
            .resolved
            .get_or_insert_with(|| resolve(metric.policy(), &slot.definition))
        else {
            return;
        };
        let Some(newest) = metric.newest() else {
            return;
        };
        let Some((from, until)) = slot.evaluator.closing(rule, newest) else {
            return;
        };
        let g = granularity_ns(rule);
        let from = from
            .unwrap_or(i64::MIN)
            .max(until - g * (rule.evaluation_periods as i64 + 1));
        let values = window_values(metric, (gi, mi), stored, (from, until));
        // Evaluations start at the boundary after the oldest bucket: start at `until`.
        slot.evaluator.through = Some(until - g);
        slot.evaluator.advance(
            rule,
            Conduct::default(),
            until,
            &mut values.into_iter(),
            &|_| false,
            &mut |_| {},
        );
    }

    /// How many alarms this worker holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Evaluates the alarms on metric (`resource`, `name`) after a batch: every bucket
    /// boundary the batch closed. With `close_all`, the newest bucket closes too (the end of
    /// a bounded input).
    pub fn on_metric(
        &mut self,
        (resource, name): (Sym, Sym),
        metric: &Metric,
        close_all: bool,
        diag: &mut Diag,
    ) {
        if self.watches.is_empty() {
            return;
        }
        let Some(slots) = self.watches.get(&(resource, name)) else {
            return;
        };
        let Some(newest) = metric.newest() else {
            return;
        };
        let mut outcomes = Vec::new();
        let mut values = Vec::new();
        for &i in slots {
            let slot = &mut self.slots[i];
            let Some(rule) = slot.definition.threshold() else {
                continue;
            };
            let newest = if close_all {
                let g = granularity_ns(rule);
                newest.div_euclid(g) * g + g
            } else {
                newest
            };
            diag.counters.alarm_evaluations +=
                evaluate(i, slot, Some(metric), newest, &mut values, &mut outcomes);
        }
        for (i, outcome) in outcomes {
            self.outcome(i, outcome, diag);
        }
    }

    /// The engine's watermark (newest event time of any metric) reached `watermark`: alarms
    /// with a `no_data_grace` evaluate every boundary at least that grace behind it, whether
    /// or not their metric sent data for it (`metric` gives a metric held in memory).
    pub fn on_watermark<'m>(
        &mut self,
        watermark: i64,
        metric: impl Fn((Sym, Sym)) -> Option<&'m Metric>,
        diag: &mut Diag,
    ) {
        if self.graced.is_empty() || watermark <= self.swept {
            return;
        }
        self.swept = watermark;
        let mut outcomes = Vec::new();
        let mut values = Vec::new();
        for id in &self.graced {
            let Some(&i) = self.by_id.get(id) else {
                continue;
            };
            let slot = &mut self.slots[i];
            // (The store operator holds only alarms on one metric.)
            let (None, Some(grace)) = (&slot.cross, slot.definition.options.no_data_grace) else {
                continue;
            };
            let held = watch_key(&slot.definition).and_then(&metric);
            let due = watermark.saturating_sub(grace as i64 * 1_000_000_000);
            let newest = held.and_then(Metric::newest).map_or(due, |n| n.max(due));
            diag.counters.alarm_evaluations +=
                evaluate(i, slot, held, newest, &mut values, &mut outcomes);
        }
        for (i, outcome) in outcomes {
            self.outcome(i, outcome, diag);
        }
    }

    /// Takes what a contributor sent an alarm over several metrics (see [`crate::feeds::Feed::Points`]);
    /// the alarm is evaluated at the next [`Alarms::run_cross`].
    pub fn on_feed(
        &mut self,
        (alarm_id, leaf, metric_id): (&str, usize, &str),
        progress: (&[(i64, f64)], i64, bool),
    ) {
        let Some(&i) = self.by_id.get(alarm_id) else {
            return;
        };
        let slot = &mut self.slots[i];
        let Some(memory) = slot.cross.as_mut() else {
            return;
        };
        memory.feed(leaf, metric_id, progress);
        slot.dirty = true;
        self.touched.insert(alarm_id.to_owned());
    }

    /// An event (from the event definitions): every enabled event alarm of its project (any
    /// project for an alarm without one) whose rule it hits fires, as Aodh's event evaluator
    /// does — once, unless `repeat_actions` (then every hit notifies again). An event older
    /// than the newest the alarm handled, or as old, is taken for a replay and ignored.
    pub fn on_event(&mut self, event: &Event, diag: &mut Diag) {
        let project = project_of(event);
        let at = meterflow_engine::time::parse_micros(&event.generated).unwrap_or(0) * 1000;
        let mut outcomes = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Rule::Event(rule) = &slot.definition.rule else {
                continue;
            };
            let definition = &slot.definition;
            let repeat = definition.repeat_actions;
            if !definition.enabled
                || definition
                    .project_id
                    .as_ref()
                    .is_some_and(|p| *p != project)
                || (slot.evaluator.state == AlarmState::Alarm && !repeat)
                || !slot.constraints.allows(at)
                || slot.evaluator.through.is_some_and(|t| at <= t)
                || !hits(rule, event)
            {
                continue;
            }
            // Events not newer than the newest one handled are a replay (at-least-once input).
            slot.evaluator.through = Some(at);
            diag.counters.alarm_evaluations += 1;
            let query = definition
                .rule_json
                .get("query")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            let refresh = Refresh {
                state: AlarmState::Alarm,
                changed: slot.evaluator.state != AlarmState::Alarm,
                reason: format!(
                    "Event <id={},event_type={}> hits the query <query={}>.",
                    event.message_id,
                    event.event_type,
                    python_json(&sorted_keys(query))
                ),
                reason_data: ReasonData::Json(json!({"type": "event", "event": event.serialize()})),
            };
            slot.dirty = true;
            slot.evaluator
                .apply_refresh(at, Conduct::of(definition), Some(refresh), &mut |o| {
                    outcomes.push((i, o))
                });
        }
        for (i, outcome) in outcomes {
            self.outcome(i, outcome, diag);
        }
    }

    /// A store operator's newest event time: the engine's watermark is the newest of them.
    pub fn on_tick(&mut self, newest: i64) {
        if newest > self.watermark {
            self.watermark = newest;
            // (The cross operator holds only alarms over several metrics.)
            self.touched.extend(self.graced.iter().cloned());
        }
    }

    /// Evaluates the alarms over several metrics fed (or, with a `no_data_grace`, whose
    /// grace the watermark moved past) since the last call, at every instant now closed.
    pub fn run_cross(&mut self, diag: &mut Diag) {
        let mut outcomes = Vec::new();
        for id in std::mem::take(&mut self.touched) {
            let Some(&i) = self.by_id.get(&id) else {
                continue;
            };
            let slot = &mut self.slots[i];
            let (Some(memory), Some(Ok(shape))) =
                (slot.cross.as_mut(), Shape::of(&slot.definition))
            else {
                continue;
            };
            let enabled = slot.definition.enabled;
            let constraints = &slot.constraints;
            slot.dirty = true;
            diag.counters.alarm_evaluations += memory.run(
                &shape,
                &mut slot.evaluator,
                Conduct::of(&slot.definition),
                self.watermark,
                &|at| enabled && constraints.allows(at),
                &mut |o| outcomes.push((i, o)),
            );
        }
        for (i, outcome) in outcomes {
            self.outcome(i, outcome, diag);
        }
    }

    /// Records and notifies one outcome of alarm `i`.
    fn outcome(&mut self, i: usize, o: Outcome, diag: &mut Diag) {
        let now = now_ns();
        let definition = self.slots[i].definition.clone();
        if o.refresh.changed {
            diag.counters.alarm_transitions += 1;
            self.slots[i].state_timestamp_ns = now;
            let detail =
                json!({"state": o.refresh.state.as_str(), "transition_reason": o.refresh.reason});
            self.record(&definition, "state transition", detail, now, o.at_ns);
        }
        let actions = definition.actions_for(o.refresh.state);
        if actions.is_empty() {
            return;
        }
        let Some(notifier) = &self.notifier else {
            return;
        };
        let payload = Payload {
            alarm_name: definition.name.clone(),
            alarm_id: definition.alarm_id.clone(),
            severity: definition.severity.as_str().to_owned(),
            previous: o.previous.as_str().to_owned(),
            current: o.refresh.state.as_str().to_owned(),
            reason: o.refresh.reason.clone(),
            reason_data: o.refresh.reason_data.to_value(),
        };
        for url in actions {
            diag.counters.alarm_notifications += 1;
            notifier.send(Notification {
                url: url.clone(),
                payload: payload.clone(),
            });
        }
    }

    fn record(
        &mut self,
        definition: &AlarmDefinition,
        kind: &str,
        detail: serde_json::Value,
        now: i64,
        event_time_ns: i64,
    ) {
        self.history.push(AlarmHistoryRecord {
            alarm_id: definition.alarm_id.clone(),
            event_id: random_uuid(),
            kind: kind.to_owned(),
            detail: python_json(&detail),
            severity: definition.severity.as_str().to_owned(),
            timestamp_ns: now,
            event_time_ns,
        });
    }

    /// Moves what changed into `checkpoint`: the state of every alarm evaluated since the
    /// last one, history, deletions; and makes the notifications sent so far durable first
    /// (so a crash after the commit cannot lose one).
    pub fn checkpoint(&mut self, checkpoint: &mut Checkpoint) -> Result<(), String> {
        let now = now_ns();
        for slot in self.slots.iter_mut().filter(|s| s.dirty) {
            slot.dirty = false;
            let evaluation = StoredEvaluation {
                origin: slot.origin,
                state_timestamp_ns: slot.state_timestamp_ns,
                evaluator: slot.evaluator.clone(),
                cross: slot.cross.clone(),
            };
            checkpoint.alarms.push(AlarmRecord {
                alarm_id: slot.definition.alarm_id.clone(),
                definition: Some(slot.definition.to_json().to_string()),
                evaluation: serde_json::to_string(&evaluation).ok(),
                updated_ns: now,
            });
        }
        checkpoint.alarms.append(&mut self.deleted);
        checkpoint.history.append(&mut self.history);
        match &self.notifier {
            Some(n) => n.sync(),
            None => Ok(()),
        }
    }
}

impl Slot {
    /// An alarm with its evaluation; one over several metrics gets `memory` (if it fits its
    /// leaves) or a fresh one.
    fn new(
        definition: Arc<AlarmDefinition>,
        origin: Origin,
        (evaluator, memory): (Evaluator, Option<CrossMemory>),
        state_timestamp_ns: i64,
        dirty: bool,
    ) -> Slot {
        let cross = match Shape::of(&definition) {
            Some(Ok(shape)) => Some(
                memory
                    .filter(|m| m.leaves.len() == shape.leaves.len())
                    .unwrap_or_else(|| CrossMemory::new(shape.leaves.len())),
            ),
            _ => None,
        };
        Slot {
            constraints: Constraints::compile(&definition.time_constraints).unwrap_or_default(),
            definition,
            origin,
            evaluator,
            state_timestamp_ns,
            resolved: None,
            cross,
            dirty,
        }
    }
}

/// Evaluates alarm `i` at every boundary of its granularity up to `newest` (event time) not
/// evaluated yet, over its window and the new closed buckets `metric` holds (none when the
/// metric is not in memory: a gap). Outcomes go to `outcomes`; returns the evaluations made.
fn evaluate(
    i: usize,
    slot: &mut Slot,
    metric: Option<&Metric>,
    newest: i64,
    values: &mut Vec<(i64, f64)>,
    outcomes: &mut Vec<(usize, Outcome)>,
) -> u64 {
    let Some(rule) = slot.definition.threshold() else {
        return 0;
    };
    let conduct = Conduct::of(&slot.definition);
    let mut indices = None;
    if let Some(metric) = metric {
        let resolved = slot
            .resolved
            .get_or_insert_with(|| resolve(metric.policy(), &slot.definition));
        match resolved {
            Ok(r) => indices = Some(*r),
            Err(reason) => {
                // Aodh: the aggregation does not exist → insufficient data.
                if slot.evaluator.state != AlarmState::InsufficientData && slot.definition.enabled {
                    let evaluation = Evaluation::Insufficient {
                        reason: Some(reason.clone()),
                        periods: rule.evaluation_periods,
                        most_recent: None,
                    };
                    let g = granularity_ns(rule);
                    let at = newest.div_euclid(g) * g;
                    slot.evaluator
                        .apply(at, conduct, &evaluation, &mut |o| outcomes.push((i, o)));
                    slot.dirty = true;
                }
                return 0;
            }
        }
    } else if slot.evaluator.through.is_none() {
        // Never evaluated and no data: nothing to judge yet.
        return 0;
    }
    let Some((from, until)) = slot.evaluator.closing(rule, newest) else {
        return 0;
    };
    values.clear();
    if let (Some(metric), Some((gi, mi))) = (metric, indices) {
        metric.values_in(gi, mi, (from.unwrap_or(i64::MIN), until), &mut |t, v| {
            values.push((t, v))
        });
    }
    let enabled = slot.definition.enabled;
    let constraints = &slot.constraints;
    slot.dirty = true;
    slot.evaluator.advance(
        rule,
        conduct,
        until,
        &mut values.iter().copied(),
        &|at| enabled && constraints.allows(at),
        &mut |o| outcomes.push((i, o)),
    )
}

/// The buckets of granule `gi`, method `mi` of `metric` in `[from, until)`: those `stored`
/// holds (final ones already written, in the store's order), then those still in memory —
/// the window Aodh would read at once.
pub fn window_values(
    metric: &Metric,
    (gi, mi): (usize, usize),
    stored: &[StoredPoint],
    (from, until): (i64, i64),
) -> Vec<(i64, f64)> {
    let policy = metric.policy();
    let method = policy.methods[mi].to_string();
    let g = policy.definition[gi].granularity;
    let mut values: Vec<(i64, f64)> = stored
        .iter()
        .filter(|p| p.aggregation.as_deref() == Some(method.as_str()) && p.granularity_ns == g)
        .filter(|p| p.timestamp_ns >= from && p.timestamp_ns < until)
        .map(|p| (p.timestamp_ns, p.value))
        .collect();
    let held_from = values.last().map_or(from, |&(t, _)| t + 1);
    metric.values_in(gi, mi, (held_from, until), &mut |t, v| values.push((t, v)));
    values
}

/// The reason Aodh's API gives an alarm whose state was set by hand.
pub const MANUAL_REASON: &str = "Manually set via API";

/// The metric (resource key, name) an alarm reads, for the alarms that read one.
fn watch_key(alarm: &AlarmDefinition) -> Option<(Sym, Sym)> {
    match &alarm.threshold()?.target {
        Target::Resource {
            metric,
            resource_id,
            ..
        } => Some((Sym::new(&resource_key(resource_id)), Sym::new(metric))),
        _ => None,
    }
}

/// The granule and method of `policy` an alarm reads, or Aodh's reason why there is none.
fn resolve(policy: &ArchivePolicy, alarm: &AlarmDefinition) -> Result<(usize, usize), String> {
    let Some(rule) = alarm.threshold() else {
        return Err("not a threshold alarm".into());
    };
    let (metric, resource) = match &rule.target {
        Target::Resource {
            metric,
            resource_id,
            ..
        } => (metric.as_str(), resource_id.as_str()),
        _ => ("", ""),
    };
    let gi = policy
        .definition
        .iter()
        .position(|d| d.granularity == granularity_ns(rule));
    let mi = policy
        .methods
        .iter()
        .position(|m| *m == rule.aggregation_method);
    match (gi, mi) {
        (Some(gi), Some(mi)) => Ok((gi, mi)),
        (None, _) => Err(format!("No datapoint for granularity {}", rule.granularity)),
        (_, None) => Err(format!(
            "aggregation {} does not exist for metric {metric} of resource {resource}",
            rule.aggregation_method_name
        )),
    }
}

/// `value` with every object's keys sorted (Python's `json.dumps(..., sort_keys=True)`).
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(name: &str, resource: &str) -> Arc<AlarmDefinition> {
        let json = json!({
            "name": name,
            "type": "gnocchi_resources_threshold",
            "gnocchi_resources_threshold_rule": {
                "metric": "cpu", "resource_id": resource, "resource_type": "generic",
                "threshold": 1, "aggregation_method": "mean", "granularity": 60,
            },
        });
        Arc::new(AlarmDefinition::from_json(&json, |n| format!("id-{n}")).unwrap())
    }

    fn put(alarms: &mut Alarms, d: &Arc<AlarmDefinition>) {
        alarms.apply(AlarmEdit {
            route: 0,
            cross: false,
            copy: None,
            alarm_id: d.alarm_id.clone(),
            change: AlarmChange::Put {
                definition: d.clone(),
                origin: Origin::Api,
                carried: None,
                set_state: true,
            },
            history: Some(("creation".into(), json!({}))),
        });
    }

    /// Every watch points at a slot reading that metric, and every slot is watched once.
    fn consistent(alarms: &Alarms) {
        let mut seen = 0;
        for (key, list) in &alarms.watches {
            for &i in list {
                assert_eq!(watch_key(&alarms.slots[i].definition), Some(*key));
                seen += 1;
            }
        }
        assert_eq!(seen, alarms.slots.len());
        for (id, &i) in &alarms.by_id {
            assert_eq!(&alarms.slots[i].definition.alarm_id, id);
        }
        assert_eq!(alarms.by_id.len(), alarms.slots.len());
    }

    #[test]
    fn edits_keep_the_index_of_alarms_by_metric_and_id() {
        let mut alarms = Alarms::default();
        let defs: Vec<_> = [("a", "r1"), ("b", "r2"), ("c", "r1"), ("d", "r3")]
            .iter()
            .map(|(n, r)| definition(n, r))
            .collect();
        for d in &defs {
            put(&mut alarms, d);
        }
        consistent(&alarms);
        let remove = |alarms: &mut Alarms, id: &str| {
            alarms.apply(AlarmEdit {
                route: 0,
                cross: false,
                copy: None,
                alarm_id: id.into(),
                change: AlarmChange::Remove,
                history: Some(("deletion".into(), json!({}))),
            });
        };
        remove(&mut alarms, "id-a");
        consistent(&alarms);
        assert_eq!(alarms.len(), 3);
        // Replaced with another metric: watched under the new one only.
        put(&mut alarms, &definition("c", "r9"));
        consistent(&alarms);
        let r9 = (Sym::new(&resource_key("r9")), Sym::new("cpu"));
        assert_eq!(alarms.watches[&r9].len(), 1);
        remove(&mut alarms, "id-d");
        remove(&mut alarms, "id-nope");
        consistent(&alarms);
        assert_eq!(alarms.deleted.len(), 2);
        assert_eq!(alarms.history.len(), 4 + 1 + 2);
        // Set by hand: the state and Aodh's reason, no outcome.
        alarms.apply(AlarmEdit {
            route: 0,
            cross: false,
            copy: None,
            alarm_id: "id-b".into(),
            change: AlarmChange::State(AlarmState::Alarm),
            history: None,
        });
        let b = &alarms.slots[alarms.by_id["id-b"]];
        assert_eq!(b.evaluator.state, AlarmState::Alarm);
        assert_eq!(b.evaluator.state_reason, MANUAL_REASON);
    }
}
