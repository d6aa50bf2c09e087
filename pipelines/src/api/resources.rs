//! Gnocchi's resource management: resource types (`/v1/resource_type`: list, show, create,
//! JSON-patch, delete) and resources (`POST /v1/resource/TYPE`, `PATCH` and `DELETE
//! /v1/resource/TYPE/ID`, batch delete by search, `GET .../history`), validated against
//! their type's attribute schema as Gnocchi validates them.
//!
//! What these calls do to resources is written to the store as resource records under
//! [`Partition::API`], one call at a time; metrics a call creates go through the dataflow
//! as every created metric does.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meterflow_connectors::gnocchi::resource_types::ResourceType;
use meterflow_connectors::gnocchi::resource_uuid;
use meterflow_connectors::gnocchi::search::Filter;
use meterflow_connectors::gnocchi::store::{
    Catalog, Checkpoint, MetricRecord, Partition, ResourceOp, ResourceRecord, ResourceView,
};
use meterflow_connectors::PublisherSpec;
use serde_json::{json, Map, Value};

use super::{
    batch_resource_key, find_resource, json_body, make_metrics, resource_json, ApiError, ApiResult,
    ApiState, NewMetric, Shared,
};

/// The fields every resource has, which no type's schema lists.
const GENERIC_FIELDS: [&str; 6] = [
    "id",
    "user_id",
    "project_id",
    "started_at",
    "ended_at",
    "metrics",
];

/// Every resource type: `generic`, those of the pipeline's resource definitions (their
/// attributes take any value, as Ceilometer's setup types them), and those created through
/// the API.
pub(super) fn resource_types(state: &ApiState) -> BTreeMap<String, (ResourceType, Origin)> {
    use meterflow_connectors::gnocchi::resource_types::{Attribute, Kind};
    let mut out = BTreeMap::new();
    out.insert(
        "generic".to_owned(),
        (ResourceType::generic(), Origin::Builtin),
    );
    for p in &state.plan.publishers {
        let PublisherSpec::Gnocchi(o) = &p.spec else {
            continue;
        };
        if o.resource_type != "generic" {
            out.entry(o.resource_type.clone()).or_insert_with(|| {
                (
                    ResourceType {
                        name: o.resource_type.clone(),
                        attributes: BTreeMap::new(),
                    },
                    Origin::Definition,
                )
            });
        }
        for d in o.resources.iter().flat_map(|r| r.resources.iter()) {
            let (t, _) = out.entry(d.resource_type.clone()).or_insert_with(|| {
                (
                    ResourceType {
                        name: d.resource_type.clone(),
                        attributes: BTreeMap::new(),
                    },
                    Origin::Definition,
                )
            });
            for (name, _) in &d.attributes {
                t.attributes.entry(name.clone()).or_insert(Attribute {
                    kind: Kind::Any,
                    required: false,
                });
            }
        }
    }
    for (name, json) in state.store.resource_types() {
        if let Ok(t) = ResourceType::from_json(&json) {
            out.entry(name).or_insert((t, Origin::Api));
        }
    }
    out
}

/// Where a resource type comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// `generic`.
    Builtin,
    /// The pipeline definition (a `gnocchi://` publisher's resource definitions).
    Definition,
    /// Created through the API (recorded in the store).
    Api,
}

fn no_such_type(name: &str) -> ApiError {
    ApiError::not_found(format!("Resource type {name} does not exist"))
}

fn type_of(state: &ApiState, name: &str) -> ApiResult<(ResourceType, Origin)> {
    resource_types(state)
        .remove(name)
        .ok_or_else(|| no_such_type(name))
}

/// `GET /v1/resource_type`.
pub(super) async fn list_types(State(state): Shared) -> Json<Value> {
    Json(Value::Array(
        resource_types(&state)
            .values()
            .map(|(t, _)| t.to_json())
            .collect(),
    ))
}

/// `GET /v1/resource_type/NAME`.
pub(super) async fn show_type(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(type_of(&state, &name)?.0.to_json()))
}

fn created(location: String, body: Value) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(l) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, l);
    }
    response
}

/// `POST /v1/resource_type` with `{"name", "attributes"}`.
pub(super) async fn create_type(
    State(state): Shared,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    super::writable(&state)?;
    let t = ResourceType::from_json(&json_body(&body)?).map_err(ApiError::bad_request)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    if resource_types(&state).contains_key(&t.name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Resource type {} already exists", t.name),
        ));
    }
    state.store.set_resource_type(&t.name, Some(t.to_json()))?;
    Ok(created(
        format!("/v1/resource_type/{}", t.name),
        t.to_json(),
    ))
}

/// `PATCH /v1/resource_type/NAME` with a JSON patch adding or removing attributes; a
/// required attribute added gives existing resources its `options.fill`.
pub(super) async fn patch_type(
    State(state): Shared,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    super::writable(&state)?;
    let patch = json_body(&body)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let (t, origin) = type_of(&state, &name)?;
    if origin != Origin::Api {
        return Err(ApiError::bad_request(format!(
            "Resource type {name} is {}; it is not changed through the API",
            match origin {
                Origin::Builtin => "built in",
                _ => "defined by the pipeline definition's resource definitions: change it there",
            }
        )));
    }
    let (next, fills) = t.patched(&patch).map_err(ApiError::bad_request)?;
    if !fills.is_empty() {
        let catalog = state.store.catalog()?;
        let changed: Map<String, Value> = fills.into_iter().collect();
        let records = catalog
            .resources()
            .iter()
            .filter(|view| view.resource_type() == name)
            .map(|view| {
                record(
                    view.key,
                    &name,
                    ResourceOp::Update,
                    Some(&changed),
                    now_ns(),
                )
            })
            .collect();
        commit(&state, records)?;
    }
    state.store.set_resource_type(&name, Some(next.to_json()))?;
    Ok(Json(next.to_json()))
}

/// `DELETE /v1/resource_type/NAME`: refused while a resource has the type.
pub(super) async fn delete_type(
    State(state): Shared,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    super::writable(&state)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let (_, origin) = type_of(&state, &name)?;
    if origin != Origin::Api {
        return Err(ApiError::bad_request(format!(
            "Resource type {name} is not created through the API and cannot be deleted through it"
        )));
    }
    let catalog = state.store.catalog()?;
    if catalog
        .resources()
        .iter()
        .any(|view| view.resource_type() == name)
    {
        return Err(ApiError::bad_request(format!(
            "Resource type {name} is still in use"
        )));
    }
    state.store.set_resource_type(&name, None)?;
    Ok(StatusCode::NO_CONTENT)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn record(
    key: &str,
    kind: &str,
    op: ResourceOp,
    attributes: Option<&Map<String, Value>>,
    at_ns: i64,
) -> ResourceRecord {
    ResourceRecord {
        resource_id: key.to_owned(),
        resource_type: kind.to_owned(),
        op,
        attributes: attributes
            .filter(|a| !a.is_empty())
            .map(|a| Value::Object(a.clone()).to_string()),
        at_ns,
    }
}

/// Writes resource records (the caller holds `resource_writes`).
pub(super) fn commit(state: &ApiState, records: Vec<ResourceRecord>) -> ApiResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut checkpoint = Checkpoint {
        resources: records,
        ..Checkpoint::default()
    };
    state.store.commit(Partition::API, &mut checkpoint)?;
    Ok(())
}

/// A time field (`started_at`, `ended_at`): ns, and the form the API shows.
fn time_field(body: &Map<String, Value>, key: &str) -> ApiResult<Option<(i64, String)>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            let ns = crate::query::parse_time(&text).map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid input: {key}: {text:?} is not a datetime (ISO 8601 or seconds since the epoch)"
                ))
            })?;
            Ok(Some((
                ns,
                meterflow_engine::time::format_iso_utc(ns / 1000),
            )))
        }
    }
}

/// A resource's generic and type-specific fields of a create or update body, checked; the
/// attributes to record (the type's, `user_id`, `project_id`, `ended_at`).
fn attributes_of(
    t: &ResourceType,
    body: &Map<String, Value>,
    update: bool,
) -> ApiResult<Map<String, Value>> {
    t.check(body, &GENERIC_FIELDS, update)
        .map_err(ApiError::bad_request)?;
    let mut out = Map::new();
    for key in ["user_id", "project_id"] {
        match body.get(key) {
            None => {}
            Some(v @ (Value::Null | Value::String(_))) => {
                out.insert(key.to_owned(), v.clone());
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input: expected str for dictionary value @ data['{key}'], got {other}"
                )))
            }
        }
    }
    if let Some((_, iso)) = time_field(body, "ended_at")? {
        out.insert("ended_at".to_owned(), Value::from(iso));
    } else if update && body.get("ended_at").is_some_and(Value::is_null) {
        out.insert("ended_at".to_owned(), Value::Null);
    }
    for (k, v) in body {
        if !GENERIC_FIELDS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// The metrics of a create or update body that are to be created: `{"NAME":
/// {"archive_policy_name", "unit"}}`; a metric id in place of the object names one the
/// resource already has under that name (anything else: 400, metrics are not moved between
/// resources here).
fn new_metrics(
    catalog: &Catalog,
    key: Option<&str>,
    body: &Map<String, Value>,
) -> ApiResult<Vec<NewMetric>> {
    let Some(metrics) = body.get("metrics") else {
        return Ok(Vec::new());
    };
    let Some(metrics) = metrics.as_object() else {
        return Err(ApiError::bad_request(
            "Invalid input: metrics is {\"NAME\": {\"archive_policy_name\": ...}, ...}",
        ));
    };
    let mut out: Vec<NewMetric> = Vec::new();
    for (name, spec) in metrics {
        match spec {
            Value::String(id) => {
                let has = key
                    .and_then(|k| catalog.get(k, name))
                    .is_some_and(|m| m.metric_id == *id);
                if !has {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input: metric {name}: {id} is not this resource's metric {name}; meterflow does not attach a metric to another resource (create it with {{\"archive_policy_name\": ...}})"
                    )));
                }
            }
            spec => {
                if key.and_then(|k| catalog.get(k, name)).is_none() {
                    out.push(NewMetric::read(name.clone(), spec)?);
                }
            }
        }
    }
    Ok(out)
}

/// Checks that each metric to create has a policy (named, or by the rules) before anything
/// is written, so a refused metric leaves no resource behind.
fn check_policies(state: &ApiState, wanted: &[NewMetric]) -> ApiResult<()> {
    let (rules, known) = (super::rules(state), super::policies(state));
    for m in wanted {
        super::creation_policy(m.policy.clone(), &m.name, &rules, &known)?;
    }
    Ok(())
}

/// `POST /v1/resource/TYPE`: creates a resource (201), with its metrics.
pub(super) async fn create_resource(
    State(state): Shared,
    Path(kind): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    super::writable(&state)?;
    let body = json_body(&body)?;
    let Some(body) = body.as_object() else {
        return Err(ApiError::bad_request(
            "Invalid input: a resource is an object with at least \"id\"",
        ));
    };
    let (t, _) = type_of(&state, &kind)?;
    let id = match body.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input: expected str for dictionary value @ data['id'], got {other}"
            )))
        }
        None => {
            return Err(ApiError::bad_request(
                "Invalid input: required key not provided @ data['id']",
            ))
        }
    };
    let key = batch_resource_key(&id)?;
    let attributes = attributes_of(&t, body, false)?;
    let started = time_field(body, "started_at")?.map_or_else(now_ns, |(ns, _)| ns);
    let _one_at_a_time = state.resource_writes.lock().await;
    let wanted = {
        let catalog = state.store.catalog()?;
        if catalog.resource_view(&key).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Resource {} already exists", resource_uuid(&key)),
            ));
        }
        new_metrics(&catalog, None, body)?
    };
    check_policies(&state, &wanted)?;
    commit(
        &state,
        vec![record(
            &key,
            &kind,
            ResourceOp::Create,
            Some(&attributes),
            started,
        )],
    )?;
    if !wanted.is_empty() {
        make_metrics(&state, &headers, &key, wanted).await?;
    }
    let catalog = state.store.catalog()?;
    let view = find_resource(&catalog, &kind, &key)?;
    Ok(created(
        format!("/v1/resource/{kind}/{}", resource_uuid(&key)),
        resource_json(&view),
    ))
}

/// `PATCH /v1/resource/TYPE/ID`: changes attributes, `ended_at`, adds metrics.
pub(super) async fn patch_resource(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    super::writable(&state)?;
    let body = json_body(&body)?;
    let Some(body) = body.as_object() else {
        return Err(ApiError::bad_request(
            "Invalid input: a change is an object of the attributes to change",
        ));
    };
    if let Some(k) = body
        .keys()
        .find(|k| ["id", "started_at"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input: extra keys not allowed @ data['{k}']"
        )));
    }
    let (t, _) = type_of(&state, &kind)?;
    let attributes = attributes_of(&t, body, true)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let (key, wanted, current_type) = {
        let catalog = state.store.catalog()?;
        let view = find_resource(&catalog, &kind, &id)?;
        let key = view.key.to_owned();
        let wanted = new_metrics(&catalog, Some(&key), body)?;
        if let Some(metrics) = body.get("metrics").and_then(Value::as_object) {
            if let Some(m) = view
                .metrics
                .iter()
                .find(|m| !metrics.contains_key(&m.metric_name))
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid input: metric {} is not in the list: meterflow does not detach metrics from their resource",
                    m.metric_name
                )));
            }
        }
        (key, wanted, view.resource_type().to_owned())
    };
    check_policies(&state, &wanted)?;
    let changed = {
        let catalog = state.store.catalog()?;
        let view = find_resource(&catalog, &kind, &key)?;
        let now = resource_json(&view);
        attributes
            .into_iter()
            .filter(|(k, v)| now.get(k) != Some(v))
            .collect::<Map<String, Value>>()
    };
    if !changed.is_empty() {
        commit(
            &state,
            vec![record(
                &key,
                &current_type,
                ResourceOp::Update,
                Some(&changed),
                now_ns(),
            )],
        )?;
    }
    if !wanted.is_empty() {
        make_metrics(&state, &headers, &key, wanted).await?;
    }
    let catalog = state.store.catalog()?;
    Ok(Json(resource_json(&find_resource(&catalog, &kind, &key)?)))
}

/// What deleting a resource writes: the deletion, then (a nanosecond later, so the deletion
/// does not cover them) its metrics' deletions, so a resource created again with the same id
/// does not show them until they are created again.
fn deletion(view: &ResourceView<'_>, at: i64) -> Vec<ResourceRecord> {
    let mut out = vec![record(
        view.key,
        view.resource_type(),
        ResourceOp::Delete,
        None,
        at,
    )];
    out.extend(view.metrics.iter().map(|m| ResourceRecord {
        at_ns: at + 1,
        ..metric_mark(m, false)
    }));
    out
}

/// `DELETE /v1/resource/TYPE/ID`: the resource and its metrics are no longer shown.
pub(super) async fn delete_resource(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    super::writable(&state)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let records = {
        let catalog = state.store.catalog()?;
        deletion(&find_resource(&catalog, &kind, &id)?, now_ns())
    };
    commit(&state, records)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/resource/TYPE` with a search filter (the JSON body, or `?filter=`): deletes
/// every resource it selects; `{"deleted": N}`.
pub(super) async fn batch_delete(
    State(state): Shared,
    Path(kind): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    super::writable(&state)?;
    let text = params.iter().find(|(k, _)| k == "filter").map(|(_, v)| v);
    let filter = match text {
        Some(text) => Filter::parse_text(text),
        None if body.iter().all(u8::is_ascii_whitespace) => {
            return Err(ApiError::bad_request(
                "Invalid input: give the resources to delete as a search filter (the body, or ?filter=); deleting every resource takes an explicit filter",
            ))
        }
        None => Filter::parse(&json_body(&body)?),
    }
    .map_err(|e| ApiError::bad_request(format!("Invalid input: {e}")))?;
    type_of(&state, &kind)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let records: Vec<Vec<ResourceRecord>> = {
        let catalog = state.store.catalog()?;
        let now = now_ns();
        catalog
            .resources()
            .iter()
            .filter(|view| kind == "generic" || view.resource_type() == kind)
            .filter(|view| filter.matches(&view.to_json()))
            .map(|view| deletion(view, now))
            .collect()
    };
    let deleted = records.len();
    let records = records.into_iter().flatten().collect();
    commit(&state, records)?;
    Ok(Json(json!({"deleted": deleted})))
}

/// `GET /v1/resource/TYPE/ID/history`: the resource as it was after its creation and after
/// each change, each with `revision_start` and `revision_end`.
pub(super) async fn history(
    State(state): Shared,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let catalog = state.store.catalog()?;
    let view = find_resource(&catalog, &kind, &id)?;
    let updates = view.state.map_or(0, |s| s.updates.len());
    let mut revisions = Vec::with_capacity(updates + 1);
    for n in 0..=updates {
        let state = view.state.map(|s| {
            let mut s = s.clone();
            s.updates.truncate(n);
            s
        });
        let at = ResourceView {
            key: view.key,
            metrics: view.metrics.clone(),
            state: state.as_ref(),
        };
        let mut json = resource_json(&at);
        json["revision_end"] = Value::Null;
        revisions.push(json);
    }
    for i in 1..revisions.len() {
        let start = revisions[i]["revision_start"].clone();
        revisions[i - 1]["revision_end"] = start;
    }
    Ok(Json(Value::Array(revisions)))
}

/// The record that deletes (`restore` false) or restores a metric.
pub(super) fn metric_mark(m: &MetricRecord, restore: bool) -> ResourceRecord {
    let op = if restore {
        ResourceOp::RestoreMetric
    } else {
        ResourceOp::DeleteMetric
    };
    let mut name = Map::new();
    name.insert("metric".into(), Value::from(m.metric_name.clone()));
    record(&m.resource_id, &m.resource_type, op, Some(&name), now_ns())
}

/// `DELETE /v1/metric/ID`: the metric is no longer shown (its measures stay in the store).
pub(super) async fn delete_metric(
    State(state): Shared,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    super::writable(&state)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let mark = {
        let catalog = state.store.catalog()?;
        let m = catalog
            .by_id(&id)
            .ok_or_else(|| ApiError::not_found(format!("Metric {id} does not exist")))?;
        metric_mark(m, false)
    };
    commit(&state, vec![mark])?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/resource/TYPE/ID/metric/NAME`.
pub(super) async fn delete_resource_metric(
    State(state): Shared,
    Path((kind, id, name)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    super::writable(&state)?;
    let _one_at_a_time = state.resource_writes.lock().await;
    let mark = {
        let catalog = state.store.catalog()?;
        let view = find_resource(&catalog, &kind, &id)?;
        let m = view
            .metrics
            .iter()
            .find(|m| m.metric_name == name)
            .ok_or_else(|| ApiError::not_found(format!("Metric {name} does not exist")))?;
        metric_mark(m, false)
    };
    commit(&state, vec![mark])?;
    Ok(StatusCode::NO_CONTENT)
}
