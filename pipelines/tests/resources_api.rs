//! Gnocchi's resource management (issue 20) through the real binary over HTTP on 127.0.0.1,
//! with 1 and 3 workers: resource types created, patched and deleted; resources created with
//! metrics, measured, changed (each change a revision), deleted one by one and by search;
//! everything read back after a restart on the same store; bad input gets Gnocchi's status
//! and message.

mod common;

use common::http::*;
use common::*;
use serde_json::{json, Value};

fn call(engine: &Engine, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    engine.call(method, path, Some(&body.to_string()))
}

fn check(workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"name": "five", "aggregation_methods": ["mean"], "definition": [{"granularity": 300, "timespan": 86400}]});
    let pipeline = store_definition(dir.path(), &policy, &[]);
    let engine = Engine::serve(dir.path(), &pipeline, workers, None);

    let (status, t) = call(
        &engine,
        "POST",
        "/v1/resource_type",
        &json!({"name": "box", "attributes": {
        "host": {"type": "string", "required": true, "max_length": 16},
        "cores": {"type": "number", "required": false, "min": 1},
        "image": {"type": "uuid", "required": false}}}),
    );
    assert_eq!(status, 201, "{t}");
    assert_eq!(
        t["attributes"]["host"],
        json!({"type": "string", "required": true, "min_length": 0, "max_length": 16})
    );

    // Twelve resources, interleaved: created with a metric each, measured.
    for i in 0..12 {
        let (status, r) = call(
            &engine,
            "POST",
            "/v1/resource/box",
            &json!({
            "id": format!("box-{i:02}"), "host": format!("h{}", i % 3), "cores": i + 1,
            "project_id": format!("p{}", i % 2), "metrics": {"temp": {"archive_policy_name": "five"}}}),
        );
        assert_eq!(status, 201, "{r}");
        assert_eq!(r["type"], "box");
        assert_eq!(r["project_id"], format!("p{}", i % 2));
        assert!(r["started_at"].is_string(), "{r}");
    }
    for i in 0..12 {
        let (status, answer) = call(
            &engine,
            "POST",
            &format!("/v1/resource/box/box-{i:02}/metric/temp/measures"),
            &json!([{"timestamp": "2024-01-01T00:00:00", "value": i}]),
        );
        assert_eq!(status, 202, "{answer}");
    }
    let listed = engine.get_ok("/v1/resource/box?limit=1000");
    assert_eq!(listed.as_array().unwrap().len(), 12);

    // A change is a revision; the history lists them in order.
    let (status, r) = call(
        &engine,
        "PATCH",
        "/v1/resource/box/box-03",
        &json!({"host": "moved", "ended_at": "2024-02-01T00:00:00"}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["host"].as_str(), r["cores"].as_f64()),
        (Some("moved"), Some(4.0))
    );
    assert!(
        r["ended_at"]
            .as_str()
            .unwrap()
            .starts_with("2024-02-01T00:00:00"),
        "{r}"
    );
    let (status, _) = call(
        &engine,
        "PATCH",
        "/v1/resource/box/box-03",
        &json!({"cores": 8}),
    );
    assert_eq!(status, 200);
    let history = engine.get_ok("/v1/resource/box/box-03/history");
    let hosts: Vec<(&str, f64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["host"].as_str().unwrap(), h["cores"].as_f64().unwrap()))
        .collect();
    assert_eq!(hosts, [("h0", 4.0), ("moved", 4.0), ("moved", 8.0)]);
    assert_eq!(history[0]["revision_end"], history[1]["revision_start"]);
    assert!(history[2]["revision_end"].is_null());

    // Search sees the changes; deleting hides a resource and its metrics.
    let (_, found) = engine.post(
        "/v1/search/resource/box",
        &json!({"=": {"host": "moved"}}).to_string(),
    );
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let temp_of_5 = engine.get_ok("/v1/resource/box/box-05")["metrics"]["temp"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(&engine, "DELETE", "/v1/resource/box/box-05", &Value::Null);
    assert_eq!(status, 204);
    assert_eq!(engine.get("/v1/resource/box/box-05").0, 404);
    assert_eq!(engine.get(&format!("/v1/metric/{temp_of_5}")).0, 404);
    let (status, gone) = call(
        &engine,
        "DELETE",
        "/v1/resource/box",
        &json!({"=": {"host": "h1"}}),
    );
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["deleted"], 4, "{gone}"); // box-01, 04, 07, 10
    let (status, _) = call(&engine, "DELETE", "/v1/resource_type/box", &Value::Null);
    assert_eq!(status, 400, "a type in use stays");

    // Metrics deleted one by one: the resource stays; creating the name again shows it.
    let temp_of_0 = engine.get_ok("/v1/resource/box/box-00")["metrics"]["temp"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &engine,
        "DELETE",
        &format!("/v1/metric/{temp_of_0}"),
        &Value::Null,
    );
    assert_eq!(status, 204);
    assert_eq!(engine.get(&format!("/v1/metric/{temp_of_0}")).0, 404);
    assert_eq!(
        engine.get_ok("/v1/resource/box/box-00")["metrics"],
        json!({})
    );
    assert_eq!(
        call(
            &engine,
            "DELETE",
            &format!("/v1/metric/{temp_of_0}"),
            &Value::Null
        )
        .0,
        404
    );
    let (status, made) = engine.post(
        "/v1/resource/box/box-00/metric",
        &json!({"temp": {"archive_policy_name": "five"}}).to_string(),
    );
    assert_eq!(status, 200, "{made}");
    assert_eq!(made[0]["id"], temp_of_0.as_str());
    let (status, _) = call(
        &engine,
        "DELETE",
        "/v1/resource/box/box-02/metric/temp",
        &Value::Null,
    );
    assert_eq!(status, 204);
    assert_eq!(engine.get("/v1/resource/box/box-02/metric/temp").0, 404);
    let metrics = engine.get_ok("/v1/metric?limit=1000");
    assert_eq!(
        metrics.as_array().unwrap().len(),
        12 - 1 - 4 - 1,
        "{metrics}"
    );

    // Metrics of no resource: named or not, measured, listed with resource_id null, never
    // a resource.
    let (status, alone) = engine.post(
        "/v1/metric",
        &json!({"archive_policy_name": "five", "name": "alone", "unit": "B"}).to_string(),
    );
    assert_eq!(status, 201, "{alone}");
    assert!(
        alone["resource_id"].is_null() && alone["name"] == "alone",
        "{alone}"
    );
    let (status, unnamed) = engine.post(
        "/v1/metric",
        &json!({"archive_policy_name": "five"}).to_string(),
    );
    assert_eq!(status, 201, "{unnamed}");
    assert!(unnamed["name"].is_null(), "{unnamed}");
    assert_ne!(alone["id"], unnamed["id"]);
    let alone_id = alone["id"].as_str().unwrap().to_owned();
    let (status, _) = engine.post(&format!("/v1/metric/{alone_id}/measures"), &json!([{"timestamp": "2024-01-01T00:01:00", "value": 4}, {"timestamp": "2024-01-01T00:02:00", "value": 6}]).to_string());
    assert_eq!(status, 202);
    assert_eq!(
        engine.get_ok(&format!("/v1/metric/{alone_id}/measures")),
        json!([["2024-01-01T00:00:00+00:00", 300.0, 5.0]])
    );
    let resources = engine.get_ok("/v1/resource/generic?limit=1000");
    assert!(
        resources
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["original_resource_id"]
                .as_str()
                .unwrap()
                .starts_with("metric/")),
        "{resources}"
    );

    // Bad input: Gnocchi's status and message.
    for (method, path, body, status, says) in [
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "cores": 2}),
            400,
            "required key not provided @ data['host']",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "host": 7}),
            400,
            "expected str",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "host": "h", "cores": 0}),
            400,
            "at least 1",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "host": "h", "image": "nope"}),
            400,
            "UUID",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "host": "h", "colour": "red"}),
            400,
            "extra keys not allowed @ data['colour']",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"host": "h"}),
            400,
            "data['id']",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "box-00", "host": "h"}),
            409,
            "already exists",
        ),
        (
            "POST",
            "/v1/resource/crate",
            json!({"id": "x"}),
            404,
            "Resource type crate does not exist",
        ),
        (
            "POST",
            "/v1/resource/box",
            json!({"id": "x", "host": "h", "metrics": {"m": {"archive_policy_name": "nope"}}}),
            400,
            "nope",
        ),
        (
            "PATCH",
            "/v1/resource/box/box-00",
            json!({"cores": "many"}),
            400,
            "expected Real",
        ),
        (
            "PATCH",
            "/v1/resource/box/box-00",
            json!({"id": "y"}),
            400,
            "extra keys not allowed @ data['id']",
        ),
        (
            "PATCH",
            "/v1/resource/box/nobody",
            json!({"cores": 2}),
            404,
            "does not exist",
        ),
        ("DELETE", "/v1/resource/box", json!(null), 400, "filter"),
        (
            "POST",
            "/v1/resource_type",
            json!({"name": "bad", "attributes": {"id": {"type": "string"}}}),
            400,
            "Resource attribute name id is invalid",
        ),
        (
            "POST",
            "/v1/resource_type",
            json!({"name": "bad", "attributes": {"a": {"type": "blob"}}}),
            400,
            "not one of",
        ),
        (
            "POST",
            "/v1/resource_type",
            json!({"name": "box"}),
            409,
            "Resource type box already exists",
        ),
        (
            "PATCH",
            "/v1/resource_type/box",
            json!([{"op": "add", "path": "/attributes/zone", "value": {"type": "string", "required": true}}]),
            400,
            "fill",
        ),
        (
            "PATCH",
            "/v1/resource_type/generic",
            json!([]),
            400,
            "built in",
        ),
        (
            "DELETE",
            "/v1/resource_type/generic",
            json!(null),
            400,
            "cannot be deleted",
        ),
    ] {
        let (got, answer) = call(&engine, method, path, &body);
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert!(
            answer.to_string().contains(says),
            "{method} {path} {body}: {answer}"
        );
        assert!(
            answer["description"].is_string() || answer["description"].is_object(),
            "{answer}"
        );
    }
    // A required attribute added with a fill: existing resources get it.
    let (status, t) = call(
        &engine,
        "PATCH",
        "/v1/resource_type/box",
        &json!([{"op": "add", "path": "/attributes/zone", "value": {"type": "string", "required": true, "options": {"fill": "z1"}}}]),
    );
    assert_eq!(status, 200, "{t}");
    assert_eq!(engine.get_ok("/v1/resource/box/box-00")["zone"], "z1");
    assert!(engine.terminate().0);

    // What the API did is in the store: a restart reads it back.
    let engine = Engine::start(
        &[
            "serve",
            pipeline.to_str().unwrap(),
            "--store",
            dir.path().join("store").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
        ],
        None,
    );
    let listed = engine.get_ok("/v1/resource/box?limit=1000");
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["original_resource_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["box-00", "box-02", "box-03", "box-06", "box-08", "box-09", "box-11"]
    );
    let r = engine.get_ok("/v1/resource/box/box-03");
    assert_eq!(
        (r["host"].as_str(), r["cores"].as_f64(), r["zone"].as_str()),
        (Some("moved"), Some(8.0), Some("z1"))
    );
    assert_eq!(
        engine
            .get_ok("/v1/resource/box/box-03/history")
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let measures = engine.get_ok("/v1/resource/box/box-08/metric/temp/measures");
    assert_eq!(measures, json!([["2024-01-01T00:00:00+00:00", 300.0, 8.0]]));
    assert_eq!(engine.get("/v1/resource/box/box-05").0, 404);
    assert_eq!(engine.get("/v1/resource/box/box-02/metric/temp").0, 404);
    assert_eq!(
        engine
            .get_ok("/v1/metric?limit=1000")
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let listed = engine.get_ok("/v1/metric?limit=1000");
    let alone = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "alone")
        .unwrap();
    let measures = engine.get_ok(&format!(
        "/v1/metric/{}/measures",
        alone["id"].as_str().unwrap()
    ));
    assert_eq!(measures, json!([["2024-01-01T00:00:00+00:00", 300.0, 5.0]]));
    assert_eq!(
        engine.get_ok("/v1/resource_type/box")["attributes"]["zone"]["required"],
        true
    );
    // A deleted id can be created again, anew.
    let (status, r) = call(
        &engine,
        "POST",
        "/v1/resource/box",
        &json!({"id": "box-05", "host": "again", "zone": "z2"}),
    );
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["host"], "again");
    assert_eq!(r["metrics"], json!({}), "its old metrics stay deleted");
    assert!(engine.terminate().0);
}

#[test]
fn resources_and_their_types_are_managed_as_gnocchi_with_one_worker() {
    check("1");
}

#[test]
fn resources_and_their_types_are_managed_as_gnocchi_with_three_workers() {
    check("3");
}
