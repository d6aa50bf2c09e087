//! Aodh's v2 alarm API over the running engine: alarms are read from the store (committed
//! state) and changed by [`AlarmEdit`]s sent into the dataflow, to the worker that owns each
//! alarm's metric; a change is answered once its checkpoint is committed, so a read after the
//! answer sees it, and an alarm created here is evaluated from the next bucket that closes.
//!
//! Routes: `GET/POST /v2/alarms`, `GET/PUT/DELETE /v2/alarms/ID`, `GET/PUT
//! /v2/alarms/ID/state`, `GET /v2/alarms/ID/history`. Errors have Aodh's shape:
//! `{"error_message": {"faultcode": "Client", "faultstring": ..., "debuginfo": null}}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meterflow_connectors::gnocchi::random_uuid;
use meterflow_connectors::notify::ActionSource;
use meterflow_operators::alarm::definition::AlarmDefinition;
use meterflow_operators::alarm::threshold::AlarmState;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::complex_query::{self, ComplexQuery, Model};
use super::{AlarmRequest, ApiState, Shared};
use crate::alarms::{
    alarm_json, alarm_route, history_json, in_cross_operator, stored_alarms, AlarmChange,
    AlarmEdit, Origin, StoredAlarm, MANUAL_REASON,
};
use crate::plan::cannot_run;

/// The `/v2/alarms` routes.
pub(super) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v2/alarms", get(list).post(create))
        .route("/v2/alarms/{id}", get(show).put(replace).delete(remove))
        .route("/v2/alarms/{id}/state", get(state).put(set_state))
        .route("/v2/alarms/{id}/history", get(history))
        .route("/v2/capabilities", get(capabilities))
        .route("/v2/quotas", get(quotas).post(set_quotas))
        .route("/v2/query/alarms", axum::routing::post(query_alarms))
        .route(
            "/v2/query/alarms/history",
            axum::routing::post(query_history),
        )
}

/// The alarm quota of `project`: the one set through the API, else `--quota-alarms`
/// (`None`: unlimited).
fn alarm_quota(state: &ApiState, project: Option<&str>) -> Option<usize> {
    let set = project.and_then(|p| state.store.alarm_quotas().get(p).copied());
    match set {
        Some(limit) => usize::try_from(limit).ok(),
        None => Some(state.quotas.alarms),
    }
}

/// Aodh's quota body for `project`.
fn quota_json(state: &ApiState, project: &str) -> Value {
    let limit = alarm_quota(state, Some(project)).map_or(-1, |l| l as i64);
    json!({"project_id": project, "quotas": [{"resource": "alarms", "limit": limit}]})
}

/// `GET /v2/quotas[?project_id=P]` (`aodh quota show`): a project's alarm quota, the
/// caller's (`X-Project-Id`) when none is named.
async fn quotas(
    State(state): Shared,
    Query(params): Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> AodhResult<Json<Value>> {
    let project = params
        .get("project_id")
        .cloned()
        .or_else(|| super::project_of(&headers))
        .ok_or_else(|| {
            AodhError::client("Invalid input: give project_id (or send X-Project-Id)")
        })?;
    Ok(Json(quota_json(&state, &project)))
}

/// `POST /v2/quotas` with `{"project_id": P, "quotas": [{"resource": "alarms", "limit": N}]}`
/// (`aodh quota set P --alarm N`; -1 is unlimited): recorded in the store, checked when the
/// project creates an alarm.
async fn set_quotas(State(state): Shared, body: axum::body::Bytes) -> AodhResult<Json<Value>> {
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| AodhError::client(format!("Invalid input: the body is not JSON ({e})")))?;
    let project = body
        .get("project_id")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| AodhError::client("Invalid input: give project_id"))?
        .to_owned();
    let quotas = body
        .get("quotas")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            AodhError::client("Invalid input: give quotas, a list of {resource, limit}")
        })?;
    let mut limits = Vec::new();
    for q in quotas {
        let resource = q
            .get("resource")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if resource != "alarms" {
            return Err(AodhError::client(format!(
                "Invalid input for field/attribute resource. Value: '{resource}'. Value should be one of: alarms"
            )));
        }
        let limit = q
            .get("limit")
            .and_then(Value::as_i64)
            .filter(|l| *l >= -1)
            .ok_or_else(|| {
                AodhError::client(
                    "Invalid input: limit must be a whole number of -1 (unlimited) or more",
                )
            })?;
        limits.push(limit);
    }
    for limit in limits {
        state
            .store
            .set_alarm_quota(&project, limit)
            .map_err(store_error)?;
    }
    Ok(Json(quota_json(&state, &project)))
}

/// The body of a complex query, read with Aodh's messages.
fn complex_query(body: &[u8], model: &Model) -> AodhResult<ComplexQuery> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| AodhError::client(format!("Invalid input: the body is not JSON ({e})")))?
    };
    ComplexQuery::parse(&value, model).map_err(AodhError::client)
}

/// `POST /v2/query/alarms`: the alarms a complex query selects (what `aodh alarm show
/// --name` and `alarm list --query` send).
async fn query_alarms(State(state): Shared, body: axum::body::Bytes) -> AodhResult<Json<Value>> {
    let query = complex_query(&body, &complex_query::ALARM)?;
    let rows = visible(&state)?.values().map(alarm_json).collect();
    Ok(Json(Value::Array(query.apply(rows))))
}

/// `POST /v2/query/alarms/history`: the history entries of every alarm a complex query
/// selects (`aodh alarm-history search`).
async fn query_history(State(state): Shared, body: axum::body::Bytes) -> AodhResult<Json<Value>> {
    let query = complex_query(&body, &complex_query::ALARM_CHANGE)?;
    // A caller limited to its project sees the history of its project's alarms.
    let seen = if super::scoped() {
        Some(visible(&state)?)
    } else {
        None
    };
    let rows = state
        .store
        .alarm_history(None)
        .map_err(store_error)?
        .iter()
        .filter(|h| {
            seen.as_ref()
                .is_none_or(|seen| seen.contains_key(&h.alarm_id))
        })
        .map(history_json)
        .collect();
    Ok(Json(Value::Array(query.apply(rows))))
}

/// `GET /v2/capabilities`: what Aodh's API and storage support, in Aodh's form (history is
/// listed per alarm, without a simple query).
async fn capabilities() -> Json<Value> {
    Json(json!({
        "api": {
            "alarms:query:simple": true,
            "alarms:query:complex": true,
            "alarms:history:query:simple": false,
            "alarms:history:query:complex": true,
        },
        "alarm_storage": {"storage:production_ready": true},
    }))
}

/// An error as Aodh answers it.
#[derive(Debug)]
pub struct AodhError {
    status: StatusCode,
    message: String,
}

impl AodhError {
    fn new(status: StatusCode, message: impl Into<String>) -> AodhError {
        AodhError {
            status,
            message: message.into(),
        }
    }

    fn client(message: impl Into<String>) -> AodhError {
        AodhError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(id: &str) -> AodhError {
        AodhError::new(StatusCode::NOT_FOUND, format!("Alarm {id} not found"))
    }
}

impl IntoResponse for AodhError {
    fn into_response(self) -> Response {
        let fault = if self.status.is_client_error() {
            "Client"
        } else {
            "Server"
        };
        let body = json!({"error_message": {
            "faultcode": fault,
            "faultstring": self.message,
            "debuginfo": null,
        }});
        let mut response = (self.status, Json(body)).into_response();
        super::retry_later(&mut response);
        response
    }
}

type AodhResult<T> = Result<T, AodhError>;

fn store_error(e: impl std::fmt::Display) -> AodhError {
    AodhError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the store cannot be read: {e}"),
    )
}

/// Every alarm the store holds, by id.
fn all(state: &ApiState) -> AodhResult<BTreeMap<String, StoredAlarm>> {
    Ok(stored_alarms(&state.store.alarms().map_err(store_error)?))
}

/// The alarms the caller may see: all, or for a caller without the admin role those of its
/// project (Aodh's rule).
fn visible(state: &ApiState) -> AodhResult<BTreeMap<String, StoredAlarm>> {
    let mut alarms = all(state)?;
    alarms.retain(|_, a| super::in_scope(a.definition.project_id.as_deref()));
    Ok(alarms)
}

fn one(state: &ApiState, id: &str) -> AodhResult<StoredAlarm> {
    visible(state)?
        .remove(id)
        .ok_or_else(|| AodhError::not_found(id))
}

/// Hands alarm changes to the dataflow and waits until they are committed.
async fn send(state: &ApiState, edits: Vec<AlarmEdit>) -> AodhResult<()> {
    let unavailable = |why: String| AodhError::new(StatusCode::SERVICE_UNAVAILABLE, why);
    if state.live.stopping() {
        return Err(unavailable(
            "meterflow is shutting down and takes no more alarm changes; make them again on the next run".into(),
        ));
    }
    if !state.store.recheck_space() {
        return Err(unavailable(super::DISK_FULL.into()));
    }
    let gone = || {
        unavailable("the engine is not running any more (it stopped or failed; see its log)".into())
    };
    let (reply, done) = oneshot::channel();
    state
        .alarms
        .send(AlarmRequest { edits, reply })
        .await
        .map_err(|_| gone())?;
    match done.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(unavailable(format!(
            "the alarm change could not be stored: {why}"
        ))),
        Err(_) => Err(gone()),
    }
}

/// Parses and checks an alarm body as Aodh's API does, plus meterflow's own check that the
/// alarm can run next to the plan's archive policies; and whether the body gave a `state`.
fn parse(state: &ApiState, body: &[u8], id: &str) -> AodhResult<(AlarmDefinition, bool)> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| AodhError::client(format!("Invalid input: the body is not JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(AodhError::client(
            "Invalid input: the body must be an alarm, a JSON object",
        ));
    };
    // The id is the server's: a POST gets a new one, a PUT keeps the URL's.
    obj.insert("alarm_id".into(), json!(id));
    let gave_state = obj.contains_key("state");
    let alarm = AlarmDefinition::from_json(&value, |_| id.to_owned()).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        AodhError::client(text.join("; "))
    })?;
    if let Some((field, why)) = cannot_run(&alarm, &state.plan.archive_policies) {
        return Err(AodhError::client(format!("{field}: {why}")));
    }
    for (field, url) in alarm.actions() {
        state
            .actions
            .check(url, ActionSource::Api)
            .map_err(|why| AodhError::client(format!("{field}: {why}")))?;
    }
    Ok((alarm, gave_state))
}

fn name_taken(alarms: &BTreeMap<String, StoredAlarm>, name: &str) -> AodhResult<()> {
    if alarms.values().any(|a| a.definition.name == name) {
        return Err(AodhError::new(
            StatusCode::CONFLICT,
            format!("Alarm with name='{name}' exists"),
        ));
    }
    Ok(())
}

/// A change to `alarm` (the old definition for a removal) on its way to its worker.
fn edit(
    alarm: &AlarmDefinition,
    alarm_id: &str,
    change: AlarmChange,
    history: Option<(String, Value)>,
) -> AodhResult<AlarmEdit> {
    AlarmEdit::new(alarm, alarm_id, change, history).ok_or_else(|| {
        AodhError::client(format!(
            "alarms of type {} are not evaluated by this build yet",
            alarm.kind
        ))
    })
}

/// Aodh's simple query: `q.field`, `q.op`, `q.value`, repeated; every condition must hold.
fn filters(params: &[(String, String)]) -> AodhResult<Vec<(String, String)>> {
    let pick = |key: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (fields, ops, values) = (pick("q.field"), pick("q.op"), pick("q.value"));
    if fields.len() != values.len() || (!ops.is_empty() && ops.len() != fields.len()) {
        return Err(AodhError::client(
            "Invalid input: give q.field and q.value (and q.op, if any) the same number of times",
        ));
    }
    const FIELDS: [&str; 7] = [
        "alarm_id",
        "name",
        "type",
        "state",
        "severity",
        "enabled",
        "project_id",
    ];
    let mut out = Vec::new();
    for (i, (field, value)) in fields.iter().zip(&values).enumerate() {
        let op = ops.get(i).copied().unwrap_or("eq");
        if op != "eq" {
            return Err(AodhError::client(format!(
                "Invalid input for field/attribute op. Value: '{op}'. unimplemented operator for {field}; alarm queries support eq"
            )));
        }
        if !FIELDS.contains(field) {
            return Err(AodhError::client(format!(
                "Unknown argument: \"{field}\": unrecognized field in query; use one of {}",
                FIELDS.join(", ")
            )));
        }
        out.push(((*field).to_owned(), (*value).to_owned()));
    }
    Ok(out)
}

fn matches(alarm: &Value, filters: &[(String, String)]) -> bool {
    filters
        .iter()
        .all(|(field, want)| match &alarm[field.as_str()] {
            Value::String(s) => s == want,
            Value::Bool(b) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
            Value::Null => want.is_empty() || want == "None",
            Value::Number(n) => n.as_f64() == want.parse::<f64>().ok(),
            _ => false,
        })
}

async fn list(
    State(state): Shared,
    Query(params): Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
) -> AodhResult<Response> {
    let filters = filters(&params)?;
    let page = super::page::Page::from_query(&params).map_err(AodhError::client)?;
    let out: Vec<(String, Value)> = visible(&state)?
        .iter()
        .map(|(id, a)| (id.clone(), alarm_json(a)))
        .filter(|(_, a)| matches(a, &filters))
        .collect();
    page.respond(out, &uri).map_err(AodhError::client)
}

async fn show(State(state): Shared, Path(id): Path<String>) -> AodhResult<Json<Value>> {
    Ok(Json(alarm_json(&one(&state, &id)?)))
}

async fn create(
    State(state): Shared,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> AodhResult<Response> {
    let id = random_uuid();
    let (mut alarm, _) = parse(&state, &body, &id)?;
    // The project and user it belongs to: the body's, else the caller's (Aodh's rule).
    if alarm.project_id.is_none() {
        alarm.project_id = super::project_of(&headers);
    }
    if alarm.user_id.is_none() {
        alarm.user_id = super::user_of(&headers);
    }
    let _one_at_a_time = state.alarm_writes.lock().await;
    let existing = all(&state)?;
    name_taken(&existing, &alarm.name)?;
    let owned = existing
        .values()
        .filter(|a| a.definition.project_id == alarm.project_id)
        .count();
    let quota = alarm_quota(&state, alarm.project_id.as_deref());
    if let Some(quota) = quota.filter(|q| owned >= *q) {
        let who = alarm
            .project_id
            .as_deref()
            .unwrap_or("without X-Project-Id");
        return Err(AodhError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Alarm quota exceeded for project {who}: it owns {owned}, the quota is {quota}; delete some, or ask the operator to raise it (aodh quota set, or --quota-alarms for every project)"
            ),
        ));
    }
    let detail = alarm.to_json();
    let definition = Arc::new(alarm);
    let change = AlarmChange::Put {
        definition: definition.clone(),
        origin: Origin::Api,
        carried: None,
        set_state: true,
    };
    let created = edit(&definition, &id, change, Some(("creation".into(), detail)))?;
    send(&state, vec![created]).await?;
    let created = alarm_json(&one(&state, &id)?);
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v2/alarms/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The top-level fields whose values differ (Aodh's `rule change` detail).
fn changed_fields(old: &Value, new: &Value) -> Value {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return new.clone();
    };
    let changed: serde_json::Map<String, Value> = new
        .iter()
        .filter(|(k, v)| old.get(k.as_str()) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(changed)
}

async fn replace(
    State(state): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> AodhResult<Json<Value>> {
    let _one_at_a_time = state.alarm_writes.lock().await;
    let alarms = all(&state)?;
    let old = alarms
        .get(&id)
        .filter(|a| super::in_scope(a.definition.project_id.as_deref()))
        .ok_or_else(|| AodhError::not_found(&id))?;
    let (mut alarm, gave_state) = parse(&state, &body, &id)?;
    if !gave_state {
        // Left out, the state stays as it is (Aodh would reset it to its default).
        alarm.state = old.evaluation.evaluator.state;
        alarm.state_reason = old.evaluation.evaluator.state_reason.clone();
    }
    if alarm.name != old.definition.name {
        name_taken(&alarms, &alarm.name)?;
    }
    let moves = alarm_route(&alarm) != alarm_route(&old.definition)
        || in_cross_operator(&alarm) != in_cross_operator(&old.definition);
    let change = changed_fields(&old.definition.to_json(), &alarm.to_json());
    let history = (change.as_object().is_some_and(|c| !c.is_empty()))
        .then(|| ("rule change".to_owned(), change));
    let definition = Arc::new(alarm);
    let mut edits = Vec::new();
    let mut carried = None;
    if moves {
        // The alarm moves to the worker of its new metric (or to the cross operator), with
        // its state.
        edits.push(edit(&old.definition, &id, AlarmChange::Remove, None)?);
        let mut evaluation = old.evaluation.clone();
        evaluation.evaluator.restart_window();
        evaluation.cross = None;
        carried = Some(Box::new(evaluation));
    }
    let change = AlarmChange::Put {
        definition: definition.clone(),
        origin: old.evaluation.origin,
        carried,
        set_state: gave_state,
    };
    edits.push(edit(&definition, &id, change, history)?);
    send(&state, edits).await?;
    Ok(Json(alarm_json(&one(&state, &id)?)))
}

async fn remove(State(state): Shared, Path(id): Path<String>) -> AodhResult<StatusCode> {
    let _one_at_a_time = state.alarm_writes.lock().await;
    let old = one(&state, &id)?;
    let detail = alarm_json(&old);
    let history = Some(("deletion".into(), detail));
    send(
        &state,
        vec![edit(&old.definition, &id, AlarmChange::Remove, history)?],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn state(State(state): Shared, Path(id): Path<String>) -> AodhResult<Json<Value>> {
    let alarm = one(&state, &id)?;
    Ok(Json(json!(alarm.evaluation.evaluator.state.as_str())))
}

async fn set_state(
    State(state): Shared,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> AodhResult<Json<Value>> {
    let wanted: AlarmState = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| {
            AodhError::client(
                "state invalid: send one of \"ok\", \"alarm\", \"insufficient data\" as a JSON string",
            )
        })?;
    let _one_at_a_time = state.alarm_writes.lock().await;
    let old = one(&state, &id)?;
    let detail = json!({"state": wanted.as_str(), "state_reason": MANUAL_REASON});
    let history = Some(("state transition".into(), detail));
    let change = AlarmChange::State(wanted);
    send(&state, vec![edit(&old.definition, &id, change, history)?]).await?;
    Ok(Json(json!(wanted.as_str())))
}

async fn history(State(state): Shared, Path(id): Path<String>) -> AodhResult<Json<Value>> {
    let entries = state.store.alarm_history(Some(&id)).map_err(store_error)?;
    let alarms = all(&state)?;
    let hidden = match alarms.get(&id) {
        Some(a) => !super::in_scope(a.definition.project_id.as_deref()),
        // A deleted alarm's project is not known: only an unlimited caller sees it.
        None => entries.is_empty() || super::scoped(),
    };
    if hidden {
        return Err(AodhError::not_found(&id));
    }
    // Newest first, as Aodh lists it.
    let out: Vec<Value> = entries.iter().rev().map(history_json).collect();
    Ok(Json(Value::Array(out)))
}
