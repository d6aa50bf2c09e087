//! Aodh's v2 alarm API on a running engine (`meterflow serve`, real HTTP on 127.0.0.1) while
//! measures flow in: an alarm created through the API is evaluated from the next closed
//! bucket, a replaced one follows its new rule, a deleted one stops, the state can be set by
//! hand, and an alarm of the definition keeps its state and window through all of it and a
//! restart. Errors have Aodh's shape.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const POLICY: &str = "minute";

fn definition(dir: &Path, notifications: &Path) -> PathBuf {
    let policy = json!({"name": POLICY, "aggregation_methods": ["mean", "max"], "definition": [{"granularity": 60, "points": 100}]});
    let path = store_definition(dir, &policy, &[]);
    let mut definition: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    definition["alarms"] = json!([alarm("b-def", "host-2", 50.0, 1, notifications)]);
    std::fs::write(&path, definition.to_string()).unwrap();
    path
}

fn alarm(name: &str, resource: &str, threshold: f64, periods: u32, out: &Path) -> Value {
    let action = format!("file://{}", out.display());
    json!({
        "name": name,
        "type": "gnocchi_resources_threshold",
        "alarm_actions": [action],
        "ok_actions": [action],
        "gnocchi_resources_threshold_rule": {
            "metric": "load",
            "resource_type": "generic",
            "resource_id": resource,
            "comparison_operator": "gt",
            "threshold": threshold,
            "aggregation_method": "mean",
            "granularity": 60,
            "evaluation_periods": periods,
        },
    })
}

/// POSTs one measure per host at `time` (12:MM:SS on 2024-05-01) and expects a 202.
fn measure(engine: &Engine, time: &str, values: &[(&str, f64)]) {
    let mut body = serde_json::Map::new();
    for (host, value) in values {
        body.insert(
            (*host).to_owned(),
            json!({"load": {"archive_policy_name": POLICY, "measures": [
                {"timestamp": format!("2024-05-01T12:{time}"), "value": value}
            ]}}),
        );
    }
    let (status, answer) = engine.post(
        "/v1/batch/resources/metrics/measures?create_metrics=true",
        &Value::Object(body).to_string(),
    );
    assert_eq!(status, 202, "{answer}");
}

/// The notifications written so far, as (alarm name, previous, current), once there are `n`.
fn notifications(path: &Path, n: usize) -> Vec<(String, String, String)> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<(String, String, String)> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().to_owned();
                (s("alarm_name"), s("previous"), s("current"))
            })
            .collect();
        if got.len() >= n || started.elapsed() > Duration::from_secs(30) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn t(name: &str, previous: &str, current: &str) -> (String, String, String) {
    (name.into(), previous.into(), current.into())
}

fn state_of(engine: &Engine, id: &str) -> String {
    let (status, state) = engine.get(&format!("/v2/alarms/{id}/state"));
    assert_eq!(status, 200, "{state}");
    state.as_str().unwrap().to_owned()
}

/// The message of an Aodh error body.
fn fault(body: &Value) -> String {
    body["error_message"]["faultstring"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn id_of(engine: &Engine, name: &str) -> String {
    let list = engine.get_ok(&format!("/v2/alarms?q.field=name&q.op=eq&q.value={name}"));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    list[0]["alarm_id"].as_str().unwrap().to_owned()
}

/// Serves `pipeline` over `store`; alarms created through the API may write files in the
/// store's parent directory (the tests' notification files).
fn serve(pipeline: &Path, store: &Path) -> Engine {
    serve_with(pipeline, store, &["--allow-api-file-actions"])
}

fn serve_with(pipeline: &Path, store: &Path, extra: &[&str]) -> Engine {
    let actions = store.parent().unwrap().to_str().unwrap();
    let mut args = vec![
        "serve",
        pipeline.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--listen",
        "0",
        "--workers",
        "2",
        "--action-dir",
        actions,
    ];
    args.extend_from_slice(extra);
    Engine::start(&args, None)
}

/// Issue 19, finding 1: an alarm action could append to any file (the store's own Parquet
/// files included) and call any host. Now each is checked against the operator's rules when
/// the API takes it (400 naming the rule), when a definition is loaded (the start fails) and
/// before delivery.
#[test]
fn alarm_actions_follow_the_operators_rules() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let pipeline = definition(dir.path(), &out);
    let store = dir.path().join("store");
    let engine = serve_with(
        &pipeline,
        &store,
        &["--action-hosts", "127.0.0.1,*.example.com"],
    );
    let post = |action: &str| {
        let mut a = alarm("x", "host-1", 1.0, 1, &out);
        a["alarm_actions"] = json!([action]);
        a["ok_actions"] = json!([]);
        engine.post("/v2/alarms", &a.to_string())
    };
    // Without --allow-api-file-actions no file:// action comes through the API.
    let (status, body) = post(&format!("file://{}", out.display()));
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("--allow-api-file-actions"), "{body}");
    let (status, body) = post("http://169.254.169.254/latest/meta-data");
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("--action-hosts"), "{body}");
    let (status, body) = post("kafka://evil.org:9092/t");
    assert_eq!(status, 400, "{body}");
    let (status, body) = post("http://hooks.example.com/x");
    assert_eq!(status, 201, "{body}");
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");

    // Allowed in the action directory, never in the store inside it.
    let engine = serve(&pipeline, &store);
    let parquet = std::fs::read_dir(store.join("metrics"))
        .map(|d| d.flatten().map(|e| e.path()).next())
        .ok()
        .flatten()
        .unwrap_or_else(|| store.join("metrics/g000000000001-p0of1.parquet"));
    for target in [
        format!("file://{}", parquet.display()),
        format!("file://{}/alarms/../store/x", dir.path().display()),
        "file:///etc/passwd".to_owned(),
        "file:///dev/zero".to_owned(),
        "file://relative.jsonl".to_owned(),
    ] {
        let mut a = alarm("y", "host-1", 1.0, 1, &out);
        a["ok_actions"] = json!([target]);
        let (status, body) = engine.post("/v2/alarms", &a.to_string());
        assert_eq!(status, 400, "{target}: {body}");
        assert!(
            fault(&body).starts_with("ok_actions: action file://"),
            "{body}"
        );
    }
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");

    // A definition whose action writes into the store does not start.
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(&pipeline).unwrap()).unwrap();
    bad["alarms"][0]["alarm_actions"] = json!([format!("file://{}/x.jsonl", store.display())]);
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args([
            "serve",
            bad_path.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("alarm b-def") && err.contains("engine's own"),
        "{err}"
    );
}

#[test]
fn alarms_are_created_replaced_and_deleted_while_measures_flow() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let pipeline = definition(dir.path(), &out);
    let store = dir.path().join("store");
    let engine = serve(&pipeline, &store);

    // The definition's alarm goes to alarm when its first bucket closes.
    measure(&engine, "00:10", &[("host-1", 90.0), ("host-2", 90.0)]);
    measure(&engine, "01:10", &[("host-1", 90.0), ("host-2", 90.0)]);
    assert_eq!(
        notifications(&out, 1),
        [t("b-def", "insufficient data", "alarm")]
    );
    let b = id_of(&engine, "b-def");
    assert_eq!(state_of(&engine, &b), "alarm");

    // Created: nothing is evaluated until the next bucket closes, then over a full window
    // (the closed 12:00 bucket counts as one of its two periods).
    let (status, created) = engine.post(
        "/v2/alarms",
        &alarm("a-api", "host-1", 50.0, 2, &out).to_string(),
    );
    assert_eq!(status, 201, "{created}");
    let a = created["alarm_id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "insufficient data");
    assert_eq!(created["name"], "a-api");
    assert_eq!(state_of(&engine, &a), "insufficient data");
    measure(&engine, "02:10", &[("host-1", 95.0), ("host-2", 90.0)]);
    assert_eq!(
        notifications(&out, 2)[1..],
        [t("a-api", "insufficient data", "alarm")]
    );
    let payload: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["alarm_id"], a.as_str());
    assert_eq!(payload["reason_data"]["count"], 2, "{payload}");

    // Replaced: the new threshold holds from the next closed bucket; the state is kept.
    let mut replaced = alarm("a-api", "host-1", 95.0, 2, &out);
    replaced["description"] = json!("raised");
    let (status, body) = engine.call(
        Method::PUT,
        &format!("/v2/alarms/{a}"),
        Some(&replaced.to_string()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "alarm");
    assert_eq!(body["gnocchi_resources_threshold_rule"]["threshold"], 95.0);
    measure(&engine, "03:10", &[("host-1", 10.0), ("host-2", 90.0)]);
    assert_eq!(
        notifications(&out, 3)[2..],
        [t("a-api", "alarm", "ok")],
        "90 and 95 are not above 95"
    );

    // The state set by hand: recorded, nothing notified.
    let (status, body) = engine.call(
        Method::PUT,
        &format!("/v2/alarms/{a}/state"),
        Some("\"alarm\""),
    );
    assert_eq!((status, body), (200, json!("alarm")));
    assert_eq!(state_of(&engine, &a), "alarm");
    let shown = engine.get_ok(&format!("/v2/alarms/{a}"));
    assert_eq!(shown["state_reason"], "Manually set via API");
    let history = engine.get_ok(&format!("/v2/alarms/{a}/history"));
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "state transition",
            "state transition",
            "rule change",
            "state transition",
            "creation"
        ],
        "newest first: {history}"
    );
    let rule_change: Value = serde_json::from_str(history[2]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(rule_change["description"], "raised", "{rule_change}");
    assert!(
        rule_change.get("name").is_none(),
        "only what changed: {rule_change}"
    );

    // Deleted: gone, never evaluated again; the other alarm goes on from its own window.
    let (status, _) = engine.call(Method::DELETE, &format!("/v2/alarms/{a}"), None);
    assert_eq!(status, 204);
    let (status, body) = engine.get(&format!("/v2/alarms/{a}"));
    assert_eq!(status, 404);
    assert_eq!(
        body["error_message"]["faultstring"],
        format!("Alarm {a} not found")
    );
    measure(&engine, "04:10", &[("host-1", 10.0), ("host-2", 10.0)]);
    measure(&engine, "05:10", &[("host-1", 99.0), ("host-2", 10.0)]);
    let all = notifications(&out, 4);
    assert_eq!(all[3..], [t("b-def", "alarm", "ok")]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(notifications(&out, 4).len(), 4, "nothing more: {all:?}");
    let history = engine.get_ok(&format!("/v2/alarms/{a}/history"));
    assert_eq!(history[0]["type"], "deletion", "{history}");

    // Errors, in Aodh's shape.
    let (status, body) = engine.post(
        "/v2/alarms",
        &alarm("b-def", "host-1", 1.0, 1, &out).to_string(),
    );
    assert_eq!(
        (status, fault(&body)),
        (409, "Alarm with name='b-def' exists".to_owned())
    );
    let mut missing = alarm("c", "host-1", 1.0, 1, &out);
    missing["gnocchi_resources_threshold_rule"]
        .as_object_mut()
        .unwrap()
        .remove("threshold");
    let (status, body) = engine.post("/v2/alarms", &missing.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("threshold"), "{body}");
    let mut odd = alarm("c", "host-1", 1.0, 1, &out);
    odd["gnocchi_resources_threshold_rule"]["granularity"] = json!(7);
    let (status, body) = engine.post("/v2/alarms", &odd.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("granularity 7 s"), "{body}");
    let (status, body) = engine.call(
        Method::PUT,
        &format!("/v2/alarms/{b}/state"),
        Some("\"bogus\""),
    );
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("state invalid"), "{body}");
    let (status, body) = engine.get("/v2/alarms?q.field=colour&q.value=red");
    assert_eq!(status, 400, "{body}");
    let (status, body) = engine.post("/v2/alarms", "{nope");
    assert_eq!(status, 400, "{body}");
    let listed = engine.get_ok("/v2/alarms?q.field=state&q.op=eq&q.value=ok");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    wait_for(&engine, "meterflow_alarm_transitions_total", 4.0);
    let (_, metrics) = engine.get("/metrics");
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("meterflow_notifications_delivered_total 4"),
        "{metrics}"
    );
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");

    // A restart resumes the alarm that is left, with its state.
    let engine = serve(&pipeline, &store);
    let list = engine.get_ok("/v2/alarms");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "b-def");
    assert_eq!(list[0]["state"], "ok");
    measure(&engine, "06:10", &[("host-2", 10.0)]);
    measure(&engine, "07:10", &[("host-2", 70.0)]);
    measure(&engine, "08:10", &[("host-2", 70.0)]);
    assert_eq!(notifications(&out, 5)[4..], [t("b-def", "ok", "alarm")]);
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}

/// An alarm body of another type, acting on `out`.
fn typed(name: &str, kind: &str, rule: Value, out: &Path) -> Value {
    let action = format!("file://{}", out.display());
    let mut alarm = json!({
        "name": name,
        "type": kind,
        "alarm_actions": [action],
        "ok_actions": [action],
    });
    alarm[format!("{kind}_rule")] = rule;
    alarm
}

fn leaf(resource: &str, threshold: f64) -> Value {
    json!({"type": "gnocchi_resources_threshold", "metric": "load", "resource_type": "generic",
           "resource_id": resource, "comparison_operator": "gt", "threshold": threshold,
           "aggregation_method": "mean", "granularity": 60, "evaluation_periods": 1})
}

#[test]
fn alarms_over_several_metrics_are_created_and_deleted_while_measures_flow() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let policy = json!({"name": POLICY, "aggregation_methods": ["mean", "max"], "definition": [{"granularity": 60, "points": 100}]});
    let pipeline = store_definition(dir.path(), &policy, &[]);
    let store = dir.path().join("store");
    let engine = serve(&pipeline, &store);
    let hosts = |web1: f64, web2: f64| [("web-1", web1), ("web-2", web2), ("db-1", 99.0)];
    measure(&engine, "00:10", &hosts(40.0, 60.0));
    measure(&engine, "01:10", &hosts(70.0, 80.0));

    // The mean over the web hosts (db-1 is not selected): created now, evaluated from the
    // next closed bucket over a window read from the store (12:00 closed before it existed).
    let query = json!({"like": {"original_resource_id": "web-%"}}).to_string();
    let pool = typed(
        "web_pool",
        "gnocchi_aggregation_by_resources_threshold",
        json!({"metric": "load", "resource_type": "generic", "query": query,
               "comparison_operator": "gt", "threshold": 60.0, "aggregation_method": "mean",
               "granularity": 60, "evaluation_periods": 2}),
        &out,
    );
    let (status, created) = engine.post("/v2/alarms", &pool.to_string());
    assert_eq!(status, 201, "{created}");
    let pool_id = created["alarm_id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "insufficient data");
    let both = typed(
        "both_web_busy",
        "composite",
        json!({"and": [leaf("web-1", 50.0), leaf("web-2", 50.0)]}),
        &out,
    );
    let (status, created) = engine.post("/v2/alarms", &both.to_string());
    assert_eq!(status, 201, "{created}");
    let both_id = created["alarm_id"].as_str().unwrap().to_owned();
    // A method Gnocchi cannot aggregate across metrics is refused, saying so.
    let mut last = pool.clone();
    last["name"] = json!("web_last");
    last["gnocchi_aggregation_by_resources_threshold_rule"]["aggregation_method"] = json!("last");
    let (status, body) = engine.post("/v2/alarms", &last.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("cannot be aggregated across metrics"),
        "{body}"
    );

    // 12:01 closes: the pool's window is [50, 75] (mixed, newest breaching) → alarm; both
    // web hosts over 50 → the composite alarms.
    measure(&engine, "02:10", &hosts(80.0, 90.0));
    let mut got = notifications(&out, 2);
    got.sort();
    assert_eq!(
        got,
        [
            t("both_web_busy", "insufficient data", "alarm"),
            t("web_pool", "insufficient data", "alarm")
        ]
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("Transition to alarm due to 1 samples outside threshold, most recent: 75.0"),
        "{text}"
    );
    assert!(text.contains("(rule1 and rule2) transition to alarm, due to rules: rule1, rule2 outside their threshold."), "{text}");

    // Deleted, the composite is never evaluated again; the pool goes on.
    let (status, body) = engine.call(Method::DELETE, &format!("/v2/alarms/{both_id}"), None);
    assert_eq!(status, 204, "{body}");
    measure(&engine, "03:10", &hosts(10.0, 10.0));
    measure(&engine, "04:10", &hosts(10.0, 10.0));
    measure(&engine, "05:10", &hosts(10.0, 10.0));
    // 12:03 [85, 10] mixed → stays; 12:04 [10, 10] → ok.
    let got = notifications(&out, 3);
    assert_eq!(got[2..], [t("web_pool", "alarm", "ok")]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        notifications(&out, 3).len(),
        3,
        "the deleted composite notified"
    );
    let history = engine.get_ok(&format!("/v2/alarms/{both_id}/history"));
    assert_eq!(history[0]["type"], "deletion", "{history}");
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");

    // A restart resumes the pool with its state and window.
    let engine = serve(&pipeline, &store);
    assert_eq!(state_of(&engine, &pool_id), "ok");
    measure(&engine, "06:10", &hosts(90.0, 90.0));
    measure(&engine, "07:10", &hosts(90.0, 90.0));
    // 12:05 [10, 10] ok again; 12:06 [10, 90] mixed → stays ok; 12:07 [90, 90] → alarm.
    measure(&engine, "08:10", &hosts(90.0, 90.0));
    assert_eq!(notifications(&out, 4)[3..], [t("web_pool", "ok", "alarm")]);
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}
