//! Gnocchi's read side over the embedded store: a metric's measures for one aggregation
//! method, as Gnocchi's measures API returns them (`[timestamp, granularity, value]`, coarser
//! granularities first, retention applied relative to each series' newest point, `start`
//! rounded down to the granularity, `stop` exclusive).

use meterflow_connectors::gnocchi::store::{MetricRecord, Store, StoreError};
use meterflow_engine::partition::route;
use meterflow_engine::time::{format_seconds_utc, Instant, TimeError};
pub use meterflow_operators::aggregate::resampled;
use meterflow_operators::aggregate::{ArchivePolicy, Method, MAX_GRANULARITY, NANOS};

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct MeasuresQuery {
    /// The resource: its id as sent, as Gnocchi keys it, or its UUID.
    pub resource: String,
    /// The metric name.
    pub metric: String,
    /// The aggregation method (default `mean`).
    pub aggregation: Option<String>,
    /// Only this granularity, in seconds.
    pub granularity: Option<f64>,
    /// Only buckets at or after this time (rounded down to the granularity), nanoseconds.
    pub start: Option<i64>,
    /// Only buckets before this time, nanoseconds.
    pub stop: Option<i64>,
    /// Re-aggregate the chosen granularity's points into buckets of this many seconds with
    /// the same method (Gnocchi's `resample`; needs `granularity`).
    pub resample: Option<f64>,
}

/// Why a query has no answer, in Gnocchi's terms (the HTTP status it maps to is `status`).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No such metric.
    #[error("Metric {metric} of resource {resource} does not exist (the store has no measures for it; check the names with the resource's samples)")]
    MetricNotFound {
        /// The resource asked for.
        resource: String,
        /// The metric asked for.
        metric: String,
    },
    /// The metric's policy has no such method or granularity (Gnocchi's wording, then what
    /// the policy has).
    #[error("{0}")]
    AggregationNotFound(String),
    /// A parameter is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueryError {
    /// The HTTP status Gnocchi answers with.
    pub fn status(&self) -> u16 {
        match self {
            QueryError::MetricNotFound { .. } | QueryError::AggregationNotFound(_) => 404,
            QueryError::Invalid(_) => 400,
            QueryError::Store(_) => 500,
        }
    }
}

/// Parses a time as Gnocchi's API takes it: ISO 8601 (naive = UTC) or seconds since the epoch.
///
/// # Examples
/// ```
/// use meterflow_pipelines::query::parse_time;
/// assert_eq!(parse_time("1970-01-01T00:01:00+00:00").unwrap(), 60_000_000_000);
/// assert_eq!(parse_time("60").unwrap(), 60_000_000_000);
/// assert!(parse_time("yesterday").is_err());
/// ```
pub fn parse_time(text: &str) -> Result<i64, QueryError> {
    let text = text.trim();
    parse_instant(text).map(Instant::nanos).map_err(|why| {
        let why = match why {
            TimeError::Malformed => "is not a valid timestamp".to_owned(),
            other => other.to_string(),
        };
        QueryError::Invalid(format!(
            "Timestamp {text:?} {why}; give ISO 8601 (2021-07-30T02:00:00+00:00) or seconds since the epoch"
        ))
    })
}

/// [`parse_time`]'s checked time: epoch seconds when `text` is a number, else ISO 8601.
pub fn parse_instant(text: &str) -> Result<Instant, TimeError> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(seconds) => Instant::from_seconds(seconds),
        Err(_) => Instant::parse(text),
    }
}

/// Finds a metric by resource (any of its ids) and name.
pub fn find_metric(
    store: &Store,
    resource: &str,
    metric: &str,
) -> Result<MetricRecord, QueryError> {
    let catalog = store.catalog()?;
    catalog
        .resource(resource)
        .and_then(|key| catalog.get(key, metric))
        .cloned()
        .ok_or_else(|| QueryError::MetricNotFound {
            resource: resource.to_owned(),
            metric: metric.to_owned(),
        })
}

/// The archive policy a stored metric is aggregated by.
pub fn policy_of(store: &Store, record: &MetricRecord) -> Result<ArchivePolicy, QueryError> {
    let json = store
        .archive_policies()
        .remove(&record.archive_policy_name)
        .ok_or_else(|| {
            QueryError::Invalid(format!(
                "archive policy {} of metric {} is not recorded in the store",
                record.archive_policy_name, record.metric_name
            ))
        })?;
    ArchivePolicy::from_json(&json).map_err(|e| QueryError::Invalid(e.to_string()))
}

/// The measures of one metric: `(timestamp ns, granularity seconds, value)`, coarser
/// granularities first, oldest first within one.
pub fn measures(store: &Store, q: &MeasuresQuery) -> Result<Vec<(i64, f64, f64)>, QueryError> {
    let record = find_metric(store, &q.resource, &q.metric)?;
    measures_of(store, &record, q)
}

/// [`measures`] of a metric already found (`q.resource` and `q.metric` are not read).
pub fn measures_of(
    store: &Store,
    record: &MetricRecord,
    q: &MeasuresQuery,
) -> Result<Vec<(i64, f64, f64)>, QueryError> {
    let resample = match q.resample {
        None => None,
        Some(_) if q.granularity.is_none() => {
            return Err(QueryError::Invalid(
                "A granularity must be specified to resample".into(),
            ))
        }
        Some(r)
            if !(r.is_finite()
                && r * NANOS as f64 >= 1.0
                && r * NANOS as f64 <= MAX_GRANULARITY as f64) =>
        {
            return Err(QueryError::Invalid(format!(
                "Invalid value for resample: {r}; give a number of seconds from 1 ns to 50 years"
            )))
        }
        Some(r) => Some((r * NANOS as f64).round() as i64),
    };
    let policy = policy_of(store, record)?;
    let aggregation = q.aggregation.as_deref().unwrap_or("mean");
    let wanted_g = q.granularity.map(|g| (g * NANOS as f64).round() as i64);
    let known_method = aggregation
        .parse::<Method>()
        .is_ok_and(|m| policy.methods.contains(&m));
    let known_granularity =
        wanted_g.is_none_or(|g| policy.definition.iter().any(|d| d.granularity == g));
    if !known_method || !known_granularity {
        let methods: Vec<String> = policy.methods.iter().map(|m| m.to_string()).collect();
        let granularities: Vec<String> = policy
            .definition
            .iter()
            .map(|d| d.seconds().to_string())
            .collect();
        return Err(QueryError::AggregationNotFound(format!(
            "Aggregation method '{aggregation}' at granularity '{}' for metric {} does not exist (its archive policy {} has methods {} at granularities {})",
            q.granularity.map_or("*".into(), |g| g.to_string()),
            record.metric_id,
            policy.name,
            methods.join(", "),
            granularities.join(", ")
        )));
    }
    let rows = store.aggregates(
        &record.resource_id,
        &record.metric_name,
        route(&record.resource_id),
    )?;
    let mut out = Vec::new();
    for granule in &policy.definition {
        if wanted_g.is_some_and(|g| g != granule.granularity) {
            continue;
        }
        let g = granule.granularity;
        let series: Vec<(i64, f64)> = rows
            .iter()
            .filter(|p| p.granularity_ns == g && p.aggregation.as_deref() == Some(aggregation))
            .map(|p| (p.timestamp_ns, p.value))
            .collect();
        let Some(&(last, _)) = series.last() else {
            continue;
        };
        let oldest = granule.timespan().map_or(i64::MIN, |span| last - span);
        let start = q.start.map_or(i64::MIN, |s| s.div_euclid(g) * g);
        let stop = q.stop.unwrap_or(i64::MAX);
        let kept = series
            .into_iter()
            .filter(|&(t, _)| t > oldest && t >= start && t < stop);
        match resample {
            None => out.extend(kept.map(|(t, v)| (t, granule.seconds(), v))),
            Some(r) => {
                let method: Method = aggregation.parse().expect("checked above");
                let points: Vec<(i64, f64)> = kept.collect();
                out.extend(
                    resampled(&points, r, method)
                        .into_iter()
                        .map(|(t, v)| (t, r as f64 / NANOS as f64, v)),
                );
            }
        }
    }
    Ok(out)
}

/// Measures as Gnocchi's JSON: `[["2021-07-30T02:00:00+00:00", 60.0, 1.5], ...]`.
pub fn to_json(points: &[(i64, f64, f64)]) -> serde_json::Value {
    serde_json::Value::Array(
        points
            .iter()
            .map(|&(t, g, v)| serde_json::json!([format_seconds_utc(t.div_euclid(1000)), g, v]))
            .collect(),
    )
}
