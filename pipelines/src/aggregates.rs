//! Gnocchi's cross-metric read side over the embedded store: the series several references
//! `(metric, aggregation)` name, at the granularities they share, read in one pass over the
//! store and evaluated by an operation of the dynamic aggregates language
//! ([`meterflow_operators::aggregate::dynamic`]) — what `POST /v1/aggregates` and the
//! `/v1/aggregation/...` routes answer.

use std::collections::HashMap;
use std::sync::Arc;

use meterflow_connectors::gnocchi::store::{MetricRecord, Store, StoreError};
use meterflow_operators::aggregate::dynamic::{
    evaluate, AggregatesError, Answer, Fetched, Node, Window,
};
use meterflow_operators::aggregate::{ArchivePolicy, Method, NANOS};
use serde_json::{json, Value};

/// One series an operation reads.
#[derive(Clone, Debug)]
pub struct Reference<'r> {
    /// The metric.
    pub metric: &'r MetricRecord,
    /// Its aggregation method.
    pub aggregation: &'r str,
    /// What `metric` nodes name it by (a metric id, or over resources a name or wildcard),
    /// with the aggregation.
    pub lookup: (String, String),
}

/// Why the series cannot be read or combined.
#[derive(Debug, thiserror::Error)]
pub enum CrossError {
    /// A 400 of Gnocchi's aggregates API.
    #[error("{0}")]
    Aggregates(AggregatesError),
    /// References whose archive policy has no such method (Gnocchi's 404 `Metrics with
    /// unknown aggregation`): `(name, aggregation)`.
    #[error("Metrics with unknown aggregation: {0:?}")]
    UnknownAggregation(Vec<(String, String)>),
    /// A metric's archive policy is not recorded, or does not parse.
    #[error("{0}")]
    Policy(String),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AggregatesError> for CrossError {
    fn from(e: AggregatesError) -> CrossError {
        CrossError::Aggregates(e)
    }
}

/// The archive policies of a store, parsed once per request.
pub struct Policies {
    parsed: HashMap<String, Arc<ArchivePolicy>>,
}

impl Policies {
    /// Every policy the store records.
    pub fn of(store: &Store) -> Policies {
        let parsed = store
            .archive_policies()
            .into_iter()
            .filter_map(|(name, json)| {
                Some((name, Arc::new(ArchivePolicy::from_json(&json).ok()?)))
            })
            .collect();
        Policies { parsed }
    }

    /// The policy of `metric`.
    pub fn of_metric(&self, metric: &MetricRecord) -> Result<&ArchivePolicy, CrossError> {
        self.parsed
            .get(&metric.archive_policy_name)
            .map(|p| p.as_ref())
            .ok_or_else(|| {
                CrossError::Policy(format!(
                    "archive policy {} of metric {} is not recorded in the store",
                    metric.archive_policy_name, metric.metric_id
                ))
            })
    }
}

/// The granularities (ns) every reference's policy has, in the order the first policy lists
/// them (Gnocchi's "granularities in common").
pub fn common_granularities(
    policies: &Policies,
    references: &[Reference<'_>],
) -> Result<Vec<i64>, CrossError> {
    let mut counts: Vec<(i64, usize)> = Vec::new();
    for r in references {
        for granule in &policies.of_metric(r.metric)?.definition {
            match counts.iter_mut().find(|(g, _)| *g == granule.granularity) {
                Some((_, n)) => *n += 1,
                None => counts.push((granule.granularity, 1)),
            }
        }
    }
    Ok(counts
        .into_iter()
        .filter(|&(_, n)| n == references.len())
        .map(|(g, _)| g)
        .collect())
}

fn lookups(references: &[Reference<'_>]) -> Value {
    Value::from(
        references
            .iter()
            .map(|r| json!([r.lookup.0, r.lookup.1]))
            .collect::<Vec<_>>(),
    )
}

/// Reads the references' series and evaluates `node` over them (Gnocchi's
/// `processor.get_measures`): at `granularity`, else at every granularity all share (400
/// when none); a method a policy lacks is a 404, a granularity one lacks a 400. Retention
/// applies as in the measures API, relative to each series' newest point.
pub fn cross(
    store: &Store,
    policies: &Policies,
    references: &[Reference<'_>],
    node: &Node,
    granularity: Option<i64>,
    window: Window,
) -> Result<Answer, CrossError> {
    let granularities = match granularity {
        Some(g) => vec![g],
        None => common_granularities(policies, references)?,
    };
    if granularities.is_empty() {
        return Err(AggregatesError::Unaggregable {
            reason: "No granularity match".into(),
            detail: lookups(references),
        }
        .into());
    }
    let mut missing = Vec::new();
    for r in references {
        let policy = policies.of_metric(r.metric)?;
        let known = r
            .aggregation
            .parse::<Method>()
            .is_ok_and(|m| policy.methods.contains(&m));
        if !known {
            return Err(CrossError::UnknownAggregation(vec![(
                r.lookup.0.clone(),
                r.aggregation.to_owned(),
            )]));
        }
        if let Some(g) = granularities
            .iter()
            .find(|g| !policy.definition.iter().any(|d| d.granularity == **g))
        {
            missing.push(json!([r.lookup.0, r.aggregation, *g as f64 / NANOS as f64]));
        }
    }
    if !missing.is_empty() {
        return Err(AggregatesError::Unaggregable {
            reason: "Granularities are missing".into(),
            detail: Value::from(missing),
        }
        .into());
    }
    let wanted: Vec<(&str, &str, &str)> = references
        .iter()
        .map(|r| {
            (
                r.metric.resource_id.as_str(),
                r.metric.metric_name.as_str(),
                r.aggregation,
            )
        })
        .collect();
    let stored = store.series_of(&wanted)?;
    // (reference, granularity) and its points, side by side.
    let mut slots: Vec<(usize, i64)> = Vec::new();
    let mut series: Vec<Vec<(i64, f64)>> = Vec::new();
    for (i, (r, points)) in references.iter().zip(&stored).enumerate() {
        let policy = policies.of_metric(r.metric)?;
        for &g in &granularities {
            let of_g =
                &points[points.partition_point(|p| p.0 < g)..points.partition_point(|p| p.0 <= g)];
            let timespan = policy
                .definition
                .iter()
                .find(|d| d.granularity == g)
                .and_then(|d| d.timespan());
            let oldest = match (of_g.last(), timespan) {
                (Some(&(_, last, _)), Some(span)) => last - span,
                _ => i64::MIN,
            };
            let kept = of_g
                .iter()
                .filter(|p| p.1 > oldest)
                .map(|p| (p.1, p.2))
                .collect();
            slots.push((i, g));
            series.push(kept);
        }
    }
    let fetched: Vec<Fetched> = slots
        .iter()
        .zip(&series)
        .map(|((reference, granularity), points)| Fetched {
            reference: *reference,
            granularity: *granularity,
            points,
        })
        .collect();
    let keys: Vec<(String, String)> = references.iter().map(|r| r.lookup.clone()).collect();
    Ok(evaluate(node, &keys, &fetched, window)?)
}

/// Points as Gnocchi writes them: `[timestamp, granularity seconds, value]`, a gap (NaN)
/// as `null`.
pub fn points_json(points: &[(i64, i64, f64)]) -> Value {
    Value::Array(
        points
            .iter()
            .map(|&(t, g, v)| {
                json!([
                    meterflow_engine::time::format_seconds_utc(t.div_euclid(1000)),
                    g as f64 / NANOS as f64,
                    v.is_finite().then_some(v)
                ])
            })
            .collect(),
    )
}
