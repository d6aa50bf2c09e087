//! The store operator's side of alarms over several metrics: which of a worker's metrics
//! feed which alarm leaves (a `gnocchi_resources_threshold` leaf of a composite: its metric;
//! by_metrics: the metrics listed by id; by_resources: the metric of every resource of the
//! type whose attributes match the query), and the [`Feed`]s that carry their closed buckets
//! and event time to the worker that evaluates the alarm ([`crate::alarms::Alarms::on_feed`]).
//! With no such alarm, a metric costs one emptiness check.

use std::collections::BTreeMap;
use std::sync::Arc;

use meterflow_connectors::gnocchi::resource_key;
use meterflow_connectors::gnocchi::search::Filter;
use meterflow_connectors::gnocchi::store::StoredPoint;
use meterflow_engine::intern::Sym;
use meterflow_engine::model::Event;
use meterflow_operators::aggregate::Metric;
use meterflow_operators::alarm::cross::Shape;
use meterflow_operators::alarm::definition::{AlarmDefinition, Target};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::alarms::{alarm_route, window_values, AlarmChange, AlarmEdit};

/// What flows from the store operators to the cross operator, exchanged by [`Feed::route`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Feed {
    /// A change to an alarm over several metrics, for the worker that evaluates it.
    Edit(AlarmEdit),
    /// Buckets of one leaf's series that a contributing metric closed, and how far its event
    /// time has come.
    Points {
        /// The alarm's route.
        route: u64,
        /// The alarm.
        alarm_id: Arc<str>,
        /// The leaf (0 for a threshold alarm; depth-first order in a composite).
        leaf: u16,
        /// The contributing metric's id.
        metric_id: Arc<str>,
        /// Closed buckets (start ns, value), oldest first.
        points: Vec<(i64, f64)>,
        /// The metric's newest measure (ns); at the end of a bounded input, the end of its
        /// last bucket.
        newest: i64,
        /// The end of a bounded input: the metric sends nothing more.
        #[serde(default)]
        ended: bool,
    },
    /// An event (for event alarms), sent to every worker.
    Event {
        /// The worker it is for.
        route: u64,
        /// The event.
        event: Arc<Event>,
    },
    /// A store operator's newest event time after an epoch, sent to every worker.
    Tick {
        /// The worker it is for.
        route: u64,
        /// The newest measure that operator aggregated (ns).
        newest: i64,
    },
}

impl Feed {
    /// The exchange key.
    pub fn route(&self) -> u64 {
        match self {
            Feed::Edit(e) => e.route,
            Feed::Points { route, .. } | Feed::Tick { route, .. } | Feed::Event { route, .. } => {
                *route
            }
        }
    }
}

/// One cross alarm as the store operators know it.
struct Watched {
    definition: Arc<AlarmDefinition>,
    route: u64,
    /// Per leaf, the parsed query of a by_resources leaf.
    filters: Vec<Option<Filter>>,
}

/// One leaf a metric feeds.
#[derive(Clone, Debug)]
struct Sub {
    alarm_id: Arc<str>,
    route: u64,
    leaf: u16,
    /// Granule and method in the metric's policy.
    gi: usize,
    mi: usize,
    granularity: i64,
    /// The longest window of the alarm.
    span: i64,
    /// The alarm's step: progress is reported when the event time crosses one.
    step: i64,
    /// Buckets before this were sent; `None` until the window was primed.
    sent: Option<i64>,
    /// The event time last reported.
    reported: i64,
}

impl Sub {
    /// What metric `metric_id` sends this leaf.
    fn feed(
        &self,
        metric_id: &Arc<str>,
        points: Vec<(i64, f64)>,
        newest: i64,
        ended: bool,
    ) -> Feed {
        Feed::Points {
            route: self.route,
            alarm_id: self.alarm_id.clone(),
            leaf: self.leaf,
            metric_id: metric_id.clone(),
            points,
            newest,
            ended,
        }
    }
}

/// One worker's table of which of its metrics feed which cross alarms.
#[derive(Default)]
pub struct Feeds {
    alarms: BTreeMap<String, Watched>,
    /// Bumped on every change of `alarms`: each metric's subscriptions are worked out again.
    generation: u64,
    subs: FxHashMap<(Sym, Sym), (u64, Vec<Sub>)>,
}

impl Feeds {
    /// Whether no cross alarm exists (then nothing here costs anything).
    pub fn is_empty(&self) -> bool {
        self.alarms.is_empty()
    }

    /// Starts watching `alarm` (or replaces it); ignores alarms that are not over several
    /// metrics or cannot be evaluated.
    pub fn watch(&mut self, alarm: Arc<AlarmDefinition>) {
        let Some(Ok(shape)) = Shape::of(&alarm) else {
            return;
        };
        let Some(route) = alarm_route(&alarm) else {
            return;
        };
        let filters = shape
            .leaves
            .iter()
            .map(|l| match &l.rule.target {
                Target::Resources { query, .. } => match Filter::parse(query) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::error!(
                            "alarm {}: its query cannot be used ({e}); no resource matches it",
                            alarm.alarm_id
                        );
                        Some(Filter::Or(Vec::new()))
                    }
                },
                _ => None,
            })
            .collect();
        self.alarms.insert(
            alarm.alarm_id.clone(),
            Watched {
                definition: alarm,
                route,
                filters,
            },
        );
        self.generation += 1;
    }

    /// Applies an API change to a cross alarm; true if metrics may now feed it anew (to
    /// prime).
    pub fn apply(&mut self, edit: &AlarmEdit) -> bool {
        match &edit.change {
            AlarmChange::Put { definition, .. } => {
                let same = self
                    .alarms
                    .get(&edit.alarm_id)
                    .is_some_and(|w| w.definition.rule_json == definition.rule_json);
                self.watch(definition.clone());
                !same && Shape::of(definition).is_some()
            }
            AlarmChange::Remove => {
                self.alarms.remove(&edit.alarm_id);
                self.generation += 1;
                false
            }
            AlarmChange::State(_) => false,
        }
    }

    /// Makes the subscriptions of metric `key` current (`view` describes it); true when
    /// one of them has not sent its window yet (see [`Feeds::prime`]).
    pub fn refresh(&mut self, key: (Sym, Sym), view: &dyn Fn() -> Option<MetricView>) -> bool {
        if self.alarms.is_empty() {
            return false;
        }
        let generation = self.generation;
        let current = self.subs.get(&key).is_some_and(|(g, _)| *g == generation);
        if !current {
            let old = self.subs.remove(&key).map(|(_, s)| s).unwrap_or_default();
            let mut subs = Vec::new();
            if let Some(v) = view() {
                self.subscribe(key, &v, &mut subs);
            }
            for sub in &mut subs {
                if let Some(o) = old
                    .iter()
                    .find(|o| o.alarm_id == sub.alarm_id && o.leaf == sub.leaf)
                {
                    sub.sent = o.sent;
                    sub.reported = o.reported;
                }
            }
            self.subs.insert(key, (generation, subs));
        }
        self.subs[&key].1.iter().any(|s| s.sent.is_none())
    }

    /// Whether metric `key` feeds a cross alarm (as of its last batch).
    pub fn subscribed(&self, key: (Sym, Sym)) -> bool {
        self.subs
            .get(&key)
            .is_some_and(|(_, subs)| !subs.is_empty())
    }

    /// Forgets what is known of metric `key` (it left memory; its next batch works its
    /// subscriptions out again).
    pub fn forget(&mut self, key: (Sym, Sym)) {
        self.subs.remove(&key);
    }

    /// The resource of metric `key` changed (attributes): its subscriptions are worked out
    /// again at its next batch.
    pub fn invalidate(&mut self, key: (Sym, Sym)) {
        if let Some((g, _)) = self.subs.get_mut(&key) {
            *g = u64::MAX;
        }
    }

    fn subscribe(&self, (resource, name): (Sym, Sym), v: &MetricView, out: &mut Vec<Sub>) {
        for (id, w) in &self.alarms {
            let Some(Ok(shape)) = Shape::of(&w.definition) else {
                continue;
            };
            let span = shape.span();
            for (leaf, l) in shape.leaves.iter().enumerate() {
                let feeds = match &l.rule.target {
                    Target::Resource {
                        metric,
                        resource_id,
                        ..
                    } => metric == name.as_str() && resource_key(resource_id) == resource.as_str(),
                    Target::Metrics { metrics } => metrics.contains(&v.metric_id),
                    Target::Resources {
                        metric,
                        resource_type,
                        ..
                    } => {
                        metric == name.as_str()
                            && v.resource.get("type").and_then(|t| t.as_str())
                                == Some(resource_type.as_str())
                            && w.filters[leaf]
                                .as_ref()
                                .is_some_and(|f| f.matches(&v.resource))
                    }
                };
                if !feeds {
                    continue;
                }
                let method = l.reading.series.to_string();
                let gi = v.granularities.iter().position(|&g| g == l.granularity);
                let mi = v.methods.iter().position(|m| m.as_str() == method);
                let (Some(gi), Some(mi)) = (gi, mi) else {
                    tracing::warn!(
                        "alarm {id}: metric {} of resource {} has no {method} at granularity {} s in its archive policy, so it does not feed the alarm (Gnocchi would refuse the aggregation)",
                        name.as_str(),
                        resource.as_str(),
                        l.granularity / 1_000_000_000
                    );
                    continue;
                };
                out.push(Sub {
                    alarm_id: Arc::from(id.as_str()),
                    route: w.route,
                    leaf: leaf as u16,
                    gi,
                    mi,
                    granularity: l.granularity,
                    span,
                    step: shape.step,
                    sent: None,
                    reported: i64::MIN,
                });
            }
        }
    }

    /// Sends the window of every subscription of metric `key` that has not sent it: the
    /// buckets `stored` holds (final ones already written, in the store's order) and then
    /// those `metric` holds, up to its newest closed bucket — what Aodh would read at once.
    pub fn prime(
        &mut self,
        key: (Sym, Sym),
        metric_id: &Arc<str>,
        metric: &Metric,
        stored: &[StoredPoint],
        out: &mut Vec<Feed>,
    ) {
        let Some((_, subs)) = self.subs.get_mut(&key) else {
            return;
        };
        let newest = metric.newest();
        for sub in subs.iter_mut().filter(|s| s.sent.is_none()) {
            let Some(newest) = newest else {
                sub.sent = Some(i64::MIN);
                continue;
            };
            let g = sub.granularity;
            let until = newest.div_euclid(g) * g;
            let points = window_values(metric, (sub.gi, sub.mi), stored, (until - sub.span, until));
            sub.sent = Some(until);
            sub.reported = newest;
            out.push(sub.feed(metric_id, points, newest, false));
        }
    }

    /// After a batch of metric `key`: sends each leaf it feeds the buckets it closed and,
    /// when its event time crossed a step of the alarm, how far it has come. With
    /// `close_all` (the end of a bounded input) its newest bucket closes too.
    pub fn on_metric(
        &mut self,
        key: (Sym, Sym),
        metric_id: &Arc<str>,
        metric: &Metric,
        close_all: bool,
        out: &mut Vec<Feed>,
    ) {
        if self.alarms.is_empty() {
            return;
        }
        let Some((_, subs)) = self.subs.get_mut(&key) else {
            return;
        };
        let Some(newest) = metric.newest() else {
            return;
        };
        for sub in subs.iter_mut() {
            let g = sub.granularity;
            let mut until = newest.div_euclid(g) * g;
            let mut reached = newest;
            if close_all {
                until += g;
                reached = until;
            }
            let sent = sub.sent.unwrap_or(until - sub.span);
            let crossed = reached.div_euclid(sub.step) > sub.reported.div_euclid(sub.step);
            if until <= sent && !crossed && !close_all {
                continue;
            }
            let mut points = Vec::new();
            if until > sent {
                metric.values_in(sub.gi, sub.mi, (sent, until), &mut |t, v| {
                    points.push((t, v))
                });
                sub.sent = Some(until);
            }
            sub.reported = sub.reported.max(reached);
            out.push(sub.feed(metric_id, points, reached, close_all));
        }
    }
}

/// What a metric is, for matching it with alarm leaves (built only when subscriptions are
/// worked out).
pub struct MetricView {
    /// Its id.
    pub metric_id: String,
    /// Its resource as the API shows it (for by_resources queries).
    pub resource: serde_json::Value,
    /// Its archive policy's granularities (ns).
    pub granularities: Vec<i64>,
    /// Its archive policy's method names.
    pub methods: Vec<Sym>,
}
