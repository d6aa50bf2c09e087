//! Gnocchi's cross-metric routes: the dynamic aggregates API (`POST /v1/aggregates`, by
//! metric id or over the resources a search selects, grouped or not) and the older
//! `/v1/aggregation/metric` and `/v1/aggregation/resource/TYPE/metric/NAME`, and the search of
//! metrics' values (`POST /v1/search/metric`), with Gnocchi's parameters, answers and errors.
//! The computing is in [`crate::aggregates`].

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use meterflow_connectors::gnocchi::search::Filter;
use meterflow_connectors::gnocchi::store::{Catalog, MetricRecord, ResourceView};
use meterflow_connectors::gnocchi::{canonical_uuid, resource_uuid};
use meterflow_operators::aggregate::dynamic::{AggregatesError, Answer, Fill, Node, Window};
use meterflow_operators::aggregate::NANOS;
use meterflow_operators::glob::Glob;
use serde_json::{json, Map, Value};

use super::{json_body, metric_json, resource_json, seconds, ApiError, ApiResult, Shared};
use crate::aggregates::{cross, points_json, CrossError, Policies, Reference};
use crate::query;

/// The routes, merged into the API's router.
pub(super) fn routes() -> Router<std::sync::Arc<super::ApiState>> {
    Router::new()
        .route("/v1/aggregates", post(aggregates))
        .route(
            "/v1/aggregation/metric",
            get(aggregation_metric_get).post(aggregation_metric_post),
        )
        .route(
            "/v1/aggregation/resource/{kind}/metric/{name}",
            post(aggregation_resource),
        )
        .route("/v1/search/metric", post(search_metric))
}

impl From<CrossError> for ApiError {
    fn from(e: CrossError) -> ApiError {
        match e {
            CrossError::Aggregates(e) => ApiError::bad_request(e.description()),
            CrossError::UnknownAggregation(refs) => ApiError::not_found(json!({
                "cause": "Metrics with unknown aggregation",
                "detail": refs.iter().map(|(n, a)| json!([n, a])).collect::<Vec<_>>(),
            })),
            CrossError::Policy(why) => ApiError::bad_request(why),
            CrossError::Store(e) => e.into(),
        }
    }
}

/// The query parameters every cross-metric route reads.
struct Params<'p> {
    all: &'p [(String, String)],
}

impl<'p> Params<'p> {
    fn get(&self, name: &str) -> Option<&'p str> {
        self.all
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all_of(&self, name: &str) -> Vec<&'p str> {
        self.all
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn flag(&self, name: &str) -> ApiResult<bool> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "yes" | "on" | "y") => Ok(true),
            Some("false" | "0" | "no" | "off" | "n") => Ok(false),
            Some(other) => Err(argument_error(name, &format!("{other:?} is not a boolean"))),
        }
    }

    fn time(&self, name: &str) -> ApiResult<Option<i64>> {
        self.get(name)
            .map(|t| {
                query::parse_time(t)
                    .map_err(|_| argument_error(name, "Must be a datetime or a timestamp"))
            })
            .transpose()
    }

    fn timespan(&self, name: &str) -> ApiResult<Option<i64>> {
        self.get(name)
            .map(|t| {
                seconds(t)
                    .filter(|s| *s * 1e9 >= 1.0 && *s < 1e10)
                    .map(|s| (s * NANOS as f64).round() as i64)
                    .ok_or_else(|| argument_error(name, "Timespan must be positive"))
            })
            .transpose()
    }

    /// `start`, `stop`, `fill` with `needed_overlap`.
    fn window(&self, default_overlap: Option<f64>) -> ApiResult<Window> {
        Ok(Window {
            start: self.time("start")?,
            stop: self.time("stop")?,
            fill: Fill::from_query(
                self.get("fill"),
                self.get("needed_overlap"),
                default_overlap,
            )
            .map_err(|e| match e {
                AggregatesError::Unaggregable { reason, detail } => {
                    argument_error(detail.as_str().unwrap_or("fill"), &reason)
                }
                other => ApiError::bad_request(other.description()),
            })?,
        })
    }
}

/// Gnocchi's `Argument value error`.
fn argument_error(name: &str, reason: &str) -> ApiError {
    ApiError::bad_request(json!({
        "cause": "Argument value error",
        "detail": name,
        "reason": reason,
    }))
}

/// Gnocchi's answer when no resource has a metric the operation names.
fn no_such_metrics(references: &[(String, String)]) -> ApiError {
    let mut names: Vec<&str> = references.iter().map(|(m, _)| m.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let listed: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    ApiError::not_found(format!("Metric [{}] does not exist", listed.join(", ")))
}

/// `POST /v1/aggregates`: `{"operations": ..., ["resource_type": T, "search": FILTER]}`.
async fn aggregates(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let params = Params { all: &params };
    let body = json_body(&body)?;
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request(
            "Invalid input: the body is an object: {\"operations\": ..., optionally \"resource_type\" and \"search\"}",
        ));
    };
    if let Some(extra) = object
        .keys()
        .find(|k| !["operations", "resource_type", "search"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input: extra keys not allowed @ data['{extra}']"
        )));
    }
    let operations = object.get("operations").ok_or_else(|| {
        ApiError::bad_request("Invalid input: required key not provided @ data['operations']")
    })?;
    let node = Node::parse(operations).map_err(|e| ApiError::bad_request(e.description()))?;
    let references = node.references();
    if references.is_empty() {
        return Err(ApiError::bad_request(json!({
            "cause": "Operations is invalid",
            "reason": "At least one 'metric' is required",
            "detail": operations,
        })));
    }
    let details = params.flag("details")?;
    let granularity = params.timespan("granularity")?;
    let window = params.window(None)?;
    let store = &state.store;
    let catalog = store.catalog()?;
    let policies = Policies::of(store);
    let Some(kind) = object.get("resource_type") else {
        // By metric id.
        let mut metrics: Vec<&MetricRecord> = Vec::new();
        let mut unknown = Vec::new();
        for (id, _) in &references {
            let canonical = canonical_uuid(id).ok_or_else(|| {
                ApiError::bad_request(json!({
                    "cause": "Invalid metric references",
                    "reason": format!("badly formed hexadecimal UUID string: {id}"),
                    "detail": references.iter().map(|(m, a)| json!([m, a])).collect::<Vec<_>>(),
                }))
            })?;
            match catalog.by_id(&canonical) {
                Some(m) => metrics.push(m),
                None => unknown.push(canonical),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            return Err(ApiError::not_found(json!({
                "cause": "Unknown metrics",
                "reason": "Provided metrics don't exists",
                "detail": unknown,
            })));
        }
        let refs: Vec<Reference> = references
            .iter()
            .zip(&metrics)
            .map(|((id, aggregation), m)| Reference {
                metric: m,
                aggregation,
                lookup: (id.clone(), aggregation.clone()),
            })
            .collect();
        let answer = cross(store, &policies, &refs, &node, granularity, window)?;
        let mut out = json!({"measures": render(&answer, &refs, false)});
        if details {
            let all = super::policies(&state);
            let mut seen: Vec<&str> = Vec::new();
            out["references"] = Value::Array(
                metrics
                    .iter()
                    .filter(|m| {
                        let new = !seen.contains(&m.metric_id.as_str());
                        seen.push(&m.metric_id);
                        new
                    })
                    .map(|m| metric_json(m, all.get(&m.archive_policy_name).cloned()))
                    .collect(),
            );
        }
        return Ok(Json(out));
    };
    let Some(kind) = kind.as_str() else {
        return Err(ApiError::bad_request(
            "Invalid input: resource_type is a string",
        ));
    };
    let filter = match object.get("search") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(Filter::parse_text(text)),
        Some(json) => Some(Filter::parse(json)),
    }
    .transpose()
    .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))?;
    if params.flag("use_history")? {
        return Err(ApiError::bad_request(
            "use_history=true is not supported: meterflow keeps no history of resource attributes; leave it false",
        ));
    }
    let groupby = params.all_of("groupby");
    let resources = select(&state, &catalog, kind, filter.as_ref(), &groupby)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let wildcards: Vec<(Glob, &(String, String))> =
        references.iter().map(|r| (Glob::new(&r.0), r)).collect();
    fn by_name<'a>(
        group: &[(ResourceView<'a>, Value)],
        wildcards: &'a [(Glob, &(String, String))],
    ) -> Vec<Reference<'a>> {
        let mut refs = Vec::new();
        for (view, _) in group {
            for (glob, (wildcard, aggregation)) in wildcards {
                for m in view.metrics.iter().filter(|m| glob.matches(&m.metric_name)) {
                    refs.push(Reference {
                        metric: m,
                        aggregation,
                        lookup: (wildcard.clone(), aggregation.clone()),
                    });
                }
            }
        }
        refs
    }
    let measured = |group: &[(ResourceView<'_>, Value)]| -> ApiResult<Option<Value>> {
        let refs = by_name(group, &wildcards);
        if refs.is_empty() {
            return Ok(None);
        }
        let answer = cross(store, &policies, &refs, &node, granularity, window)?;
        let mut out = json!({"measures": render(&answer, &refs, true)});
        if details {
            out["references"] = Value::Array(
                group
                    .iter()
                    .filter(|(view, _)| refs.iter().any(|r| r.metric.resource_id == view.key))
                    .map(|(_, json)| json.clone())
                    .collect(),
            );
        }
        Ok(Some(out))
    };
    if groupby.is_empty() {
        return measured(&resources)?
            .map(Json)
            .ok_or_else(|| no_such_metrics(&references));
    }
    let mut results = Vec::new();
    for (key, group) in groups(&resources, &groupby) {
        if let Some(mut out) = measured(group)? {
            results.push(json!({"group": key, "measures": out.take()}));
        }
    }
    if results.is_empty() {
        return Err(no_such_metrics(&references));
    }
    Ok(Json(Value::Array(results)))
}

/// The answer as Gnocchi writes it: `{"aggregated": [...]}`, else per metric id and method,
/// or over resources per resource id, metric name and method.
fn render(answer: &Answer, refs: &[Reference<'_>], by_resource: bool) -> Value {
    match answer {
        Answer::Aggregated(points) => json!({"aggregated": points_json(points)}),
        Answer::PerReference(series) => {
            let mut out = Map::new();
            for (r, points) in refs.iter().zip(series) {
                let at = if by_resource {
                    out.entry(resource_uuid(&r.metric.resource_id))
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("an object")
                        .entry(r.metric.metric_name.clone())
                        .or_insert_with(|| json!({}))
                } else {
                    out.entry(r.lookup.0.clone()).or_insert_with(|| json!({}))
                };
                let listed = points_json(points);
                match at.get_mut(r.aggregation) {
                    Some(Value::Array(existing)) => {
                        existing.extend(listed.as_array().cloned().unwrap_or_default())
                    }
                    _ => at[r.aggregation] = listed,
                }
            }
            Value::Object(out)
        }
    }
}

/// The resources of `kind` that `filter` selects, with their JSON, sorted by the `groupby`
/// attributes (then by id).
fn select<'c>(
    state: &super::ApiState,
    catalog: &'c Catalog,
    kind: &str,
    filter: Option<&Filter>,
    groupby: &[&str],
) -> Result<Vec<(ResourceView<'c>, Value)>, String> {
    let mut any_of_kind = false;
    let mut out: Vec<(ResourceView<'c>, Value)> = catalog
        .resources()
        .into_iter()
        .filter(|view| {
            let of_kind = kind == "generic" || view.resource_type() == kind;
            any_of_kind |= of_kind;
            of_kind
        })
        .map(|view| {
            let json = resource_json(&view);
            (view, json)
        })
        .filter(|(_, json)| super::in_scope(json["project_id"].as_str()))
        .filter(|(_, json)| filter.is_none_or(|f| f.matches(json)))
        .collect();
    super::known_type(state, kind, any_of_kind)
        .map_err(|_| format!("Resource type {kind} does not exist"))?;
    if let Some(unknown) = groupby.iter().find(|attr| {
        !super::GENERIC_ATTRIBUTES.contains(attr)
            && out.iter().all(|(_, j)| j.get(**attr).is_none())
    }) {
        if !out.is_empty() {
            return Err(format!(
                "Invalid groupby attribute: {unknown} is not an attribute of the {kind} resources selected"
            ));
        }
    }
    let key = |json: &Value| -> Vec<String> {
        groupby
            .iter()
            .map(|attr| match json.get(*attr) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            })
            .collect()
    };
    out.sort_by(|a, b| {
        key(&a.1)
            .cmp(&key(&b.1))
            .then_with(|| a.1["id"].as_str().cmp(&b.1["id"].as_str()))
    });
    Ok(out)
}

/// Consecutive resources with the same `groupby` values, with those values.
fn groups<'a, 'c>(
    resources: &'a [(ResourceView<'c>, Value)],
    groupby: &[&str],
) -> Vec<(Value, &'a [(ResourceView<'c>, Value)])> {
    let key = |json: &Value| -> Map<String, Value> {
        groupby
            .iter()
            .map(|attr| {
                (
                    (*attr).to_owned(),
                    json.get(*attr).cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=resources.len() {
        if i == resources.len() || key(&resources[i].1) != key(&resources[start].1) {
            out.push((
                Value::Object(key(&resources[start].1)),
                &resources[start..i],
            ));
            start = i;
        }
    }
    out
}

/// `GET /v1/aggregation/metric?metric=ID&metric=ID...`.
async fn aggregation_metric_get(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let ids: Vec<String> = Params { all: &params }
        .all_of("metric")
        .into_iter()
        .map(str::to_owned)
        .collect();
    aggregation_metric(&state, &params, ids)
}

/// `POST /v1/aggregation/metric` with a JSON list of metric ids.
async fn aggregation_metric_post(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let ids = match json_body(&body)? {
        Value::Array(ids) => ids
            .into_iter()
            .map(|id| match id {
                Value::String(id) => Ok(id),
                other => Err(ApiError::bad_request(format!(
                    "Invalid input: {other} is not a metric id"
                ))),
            })
            .collect::<ApiResult<Vec<String>>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input: the body is a list of metric ids",
            ))
        }
    };
    aggregation_metric(&state, &params, ids)
}

fn aggregation_metric(
    state: &super::ApiState,
    params: &[(String, String)],
    ids: Vec<String>,
) -> ApiResult<Json<Value>> {
    let catalog = state.store.catalog()?;
    let mut metrics = Vec::new();
    for id in &ids {
        let canonical = canonical_uuid(id).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input: expected UUID for metric: {id} is not one"
            ))
        })?;
        metrics.push(
            catalog
                .by_id(&canonical)
                .ok_or_else(|| ApiError::not_found(format!("Metric {canonical} does not exist")))?,
        );
    }
    cross_metric(state, &Params { all: params }, &metrics).map(Json)
}

/// `POST /v1/aggregation/resource/TYPE/metric/NAME`: the metric NAME of the resources a
/// filter (the body, or `?filter=`) selects, aggregated, optionally per `groupby` group.
async fn aggregation_resource(
    State(state): Shared,
    Path((kind, name)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let p = Params { all: &params };
    let filter = match p.get("filter") {
        Some(text) => Some(Filter::parse_text(text)),
        None if body.iter().all(u8::is_ascii_whitespace) => None,
        None => Some(Filter::parse(&json_body(&body)?)),
    }
    .transpose()
    .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))?;
    let catalog = state.store.catalog()?;
    let groupby = p.all_of("groupby");
    let resources = select(&state, &catalog, &kind, filter.as_ref(), &groupby).map_err(|e| {
        if e.starts_with("Resource type") {
            ApiError::not_found(e)
        } else {
            ApiError::bad_request(e)
        }
    })?;
    fn metrics_of<'c>(group: &[(ResourceView<'c>, Value)], name: &str) -> Vec<&'c MetricRecord> {
        group
            .iter()
            .filter_map(|(view, _)| view.metrics.iter().find(|m| m.metric_name == name).copied())
            .collect()
    }
    if groupby.is_empty() {
        return cross_metric(&state, &p, &metrics_of(&resources, &name)).map(Json);
    }
    let mut results = Vec::new();
    for (key, group) in groups(&resources, &groupby) {
        results.push(
            json!({"group": key, "measures": cross_metric(&state, &p, &metrics_of(group, &name))?}),
        );
    }
    Ok(Json(Value::Array(results)))
}

/// Gnocchi's `get_cross_metric_measures_from_objs`: one metric's measures as they are, or
/// several metrics' `aggregation` series aggregated across by `reaggregation` (default the
/// same), optionally resampled first; `needed_overlap` defaults to 100.
fn cross_metric(
    state: &super::ApiState,
    p: &Params<'_>,
    metrics: &[&MetricRecord],
) -> ApiResult<Value> {
    let window = p.window(Some(100.0))?;
    let granularity = p.timespan("granularity")?;
    let resample = p.timespan("resample")?;
    let aggregation = p.get("aggregation").unwrap_or("mean");
    let reaggregation = p.get("reaggregation").unwrap_or(aggregation);
    if metrics.is_empty() {
        return Ok(json!([]));
    }
    if resample.is_some() && granularity.is_none() {
        return Err(ApiError::bad_request(
            "A granularity must be specified to resample",
        ));
    }
    let store = &state.store;
    let policies = Policies::of(store);
    let refs: Vec<Reference> = metrics
        .iter()
        .map(|m| Reference {
            metric: m,
            aggregation,
            lookup: (m.metric_id.clone(), aggregation.to_owned()),
        })
        .collect();
    let granularities = match granularity {
        Some(g) => vec![g],
        None => crate::aggregates::common_granularities(&policies, &refs)?,
    };
    if granularities.is_empty() {
        return Err(CrossError::Aggregates(AggregatesError::Unaggregable {
            reason: "No granularity match".into(),
            detail: Value::from(
                refs.iter()
                    .map(|r| json!([r.lookup.0, aggregation]))
                    .collect::<Vec<_>>(),
            ),
        })
        .into());
    }
    for m in metrics {
        let policy = policies.of_metric(m)?;
        let known = aggregation
            .parse::<meterflow_operators::aggregate::Method>()
            .is_ok_and(|method| policy.methods.contains(&method));
        if let Some(g) = granularities
            .iter()
            .find(|g| !known || !policy.definition.iter().any(|d| d.granularity == **g))
        {
            if metrics.len() == 1 && !known {
                break;
            }
            return Err(ApiError::not_found(format!(
                "Aggregation method '{aggregation}' at granularity '{}' for metric {} does not exist",
                *g as f64 / NANOS as f64,
                m.metric_id
            )));
        }
    }
    if let [metric] = metrics {
        let q = query::MeasuresQuery {
            aggregation: Some(aggregation.to_owned()),
            granularity: granularity.map(|g| g as f64 / NANOS as f64),
            start: window.start,
            stop: window.stop,
            resample: resample.map(|r| r as f64 / NANOS as f64),
            ..query::MeasuresQuery::default()
        };
        return match query::measures_of(store, metric, &q) {
            Err(query::QueryError::AggregationNotFound(_)) => Err(ApiError::not_found(json!({
                "cause": "Aggregation method does not exist for this metric",
                "detail": {"metric": metric.metric_id, "aggregation_method": aggregation},
            }))),
            other => Ok(query::to_json(&other?)),
        };
    }
    let mut series = json!(["metric"]);
    for m in metrics {
        series
            .as_array_mut()
            .expect("a list")
            .push(json!([m.metric_id, aggregation]));
    }
    if let Some(r) = resample {
        series = json!(["resample", aggregation, r as f64 / NANOS as f64, series]);
    }
    let node = Node::parse(&json!(["aggregate", reaggregation, series]))
        .map_err(|e| ApiError::bad_request(e.description()))?;
    match cross(store, &policies, &refs, &node, granularity, window)? {
        Answer::Aggregated(points) => Ok(points_json(&points)),
        Answer::PerReference(_) => unreachable!("an aggregate operation aggregates"),
    }
}

/// A predicate over one value, as `POST /v1/search/metric` takes it (Gnocchi's
/// `MeasureQuery`): `{"OP": OPERAND}` applies OP to the value and the operand, `{"OP": [A,
/// B]}` to two operands, each a number or a predicate of the value; `and`/`∧` and `or`/`∨`
/// over a list. A comparison gives 1 or 0; a value is kept when the result is not 0.
#[derive(Clone, Debug)]
enum ValueQuery {
    /// The value searched.
    Measured,
    Constant(f64),
    Binary(
        meterflow_operators::aggregate::dynamic::Binary,
        Vec<ValueQuery>,
    ),
    All(Vec<ValueQuery>),
    Any(Vec<ValueQuery>),
}

/// How deep a value query may nest.
const MAX_QUERY_DEPTH: usize = 32;

impl ValueQuery {
    fn parse(v: &Value, depth: usize) -> Result<ValueQuery, String> {
        if depth > MAX_QUERY_DEPTH {
            return Err(format!(
                "the query nests deeper than {MAX_QUERY_DEPTH} levels"
            ));
        }
        let operator = |o: &Map<String, Value>| -> Result<(String, Value), String> {
            match o.iter().next() {
                Some((k, v)) if o.len() == 1 => Ok((k.clone(), v.clone())),
                _ => Err(format!("{v}: an operation is an object of one operator")),
            }
        };
        match v {
            Value::Number(n) => Ok(ValueQuery::Constant(n.as_f64().unwrap_or(f64::NAN))),
            Value::Object(o) => {
                let (op, nodes) = operator(o)?;
                match op.as_str() {
                    "and" | "∧" | "or" | "∨" => {
                        let Value::Array(nodes) = nodes else {
                            return Err(format!("{op} takes a list of operations"));
                        };
                        let parts = nodes
                            .iter()
                            .map(|n| ValueQuery::parse(n, depth + 1))
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(if matches!(op.as_str(), "and" | "∧") {
                            ValueQuery::All(parts)
                        } else {
                            ValueQuery::Any(parts)
                        })
                    }
                    name => {
                        let binary = meterflow_operators::aggregate::dynamic::Binary::parse(name)
                            .filter(|b| {
                                !matches!(
                                    b,
                                    meterflow_operators::aggregate::dynamic::Binary::ClipMin
                                        | meterflow_operators::aggregate::dynamic::Binary::ClipMax
                                        | meterflow_operators::aggregate::dynamic::Binary::Max
                                )
                            })
                            .ok_or_else(|| format!("Unknown operator {name}"))?;
                        match nodes {
                            Value::Array(pair) if pair.len() == 2 => Ok(ValueQuery::Binary(
                                binary,
                                pair.iter()
                                    .map(|n| ValueQuery::parse(n, depth + 1))
                                    .collect::<Result<Vec<_>, _>>()?,
                            )),
                            Value::Array(other) => Err(format!(
                                "Binary operator {name} needs 2 arguments, {} given",
                                other.len()
                            )),
                            Value::Number(n) => Ok(ValueQuery::Binary(
                                binary,
                                vec![
                                    ValueQuery::Measured,
                                    ValueQuery::Constant(n.as_f64().unwrap_or(f64::NAN)),
                                ],
                            )),
                            other => {
                                Err(format!("{name}: {other} is not a number or two operands"))
                            }
                        }
                    }
                }
            }
            other => Err(format!("{other} is not an operation or a number")),
        }
    }

    /// The query's result for `value`.
    fn eval(&self, value: f64) -> f64 {
        let truth = |t: bool| if t { 1.0 } else { 0.0 };
        match self {
            ValueQuery::Measured => value,
            ValueQuery::Constant(c) => *c,
            ValueQuery::Binary(op, operands) => {
                op.apply(operands[0].eval(value), operands[1].eval(value))
            }
            ValueQuery::All(parts) => truth(parts.iter().all(|p| p.eval(value) != 0.0)),
            ValueQuery::Any(parts) => truth(parts.iter().any(|p| p.eval(value) != 0.0)),
        }
    }
}

/// `POST /v1/search/metric?metric_id=ID...&aggregation=&granularity=&start=&stop=`: each
/// metric's points whose value the body's query accepts, by metric id.
pub(super) async fn search_metric(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let p = Params { all: &params };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("No query specified in body"));
    }
    let query = ValueQuery::parse(&json_body(&body)?, 0)
        .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))?;
    let start = p
        .time("start")
        .map_err(|_| ApiError::bad_request("Invalid value for start"))?;
    let stop = p
        .time("stop")
        .map_err(|_| ApiError::bad_request("Invalid value for stop"))?;
    let aggregation = p.get("aggregation").unwrap_or("mean");
    let mut granularities = Vec::new();
    for g in p.all_of("granularity") {
        granularities.push(
            seconds(g).filter(|s| *s > 0.0).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid value for granularity: {g}"))
            })?,
        );
    }
    granularities.sort_by(|a, b| b.total_cmp(a));
    let catalog = state.store.catalog()?;
    let mut out = Map::new();
    for id in p.all_of("metric_id") {
        let Some(metric) = canonical_uuid(id).and_then(|id| catalog.by_id(&id)) else {
            continue;
        };
        let wanted: Vec<Option<f64>> = if granularities.is_empty() {
            vec![None]
        } else {
            granularities.iter().copied().map(Some).collect()
        };
        let mut points = Vec::new();
        for granularity in wanted {
            let q = query::MeasuresQuery {
                aggregation: Some(aggregation.to_owned()),
                granularity,
                start,
                stop,
                ..query::MeasuresQuery::default()
            };
            match query::measures_of(&state.store, metric, &q) {
                Ok(found) => points.extend(found),
                Err(query::QueryError::AggregationNotFound(why)) => {
                    return Err(ApiError::bad_request(why))
                }
                Err(e) => return Err(e.into()),
            }
        }
        points.retain(|&(_, _, v)| query.eval(v) != 0.0);
        out.insert(metric.metric_id.clone(), query::to_json(&points));
    }
    Ok(Json(Value::Object(out)))
}

/// [`super::check_value_query`]'s work.
pub(super) fn check_value_query(body: &[u8]) -> Result<usize, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let query = ValueQuery::parse(&value, 0)?;
    Ok([-1.5, 0.0, 3.0, 1e300, f64::NAN]
        .into_iter()
        .filter(|v| query.eval(*v) != 0.0)
        .count())
}
