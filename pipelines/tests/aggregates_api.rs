//! Gnocchi's cross-metric routes (issue 20) through the real binary over HTTP on 127.0.0.1,
//! with 1 and 3 workers: measures of 23 interleaved resources of three projects are POSTed
//! in many small batches, then `POST /v1/aggregates` (by metric id, and over resources with a
//! search and groupby), `/v1/aggregation/metric` and `/v1/aggregation/resource/...` are
//! checked against values computed here from what was sent, and bad requests get Gnocchi's
//! status and message.

mod common;

use std::collections::BTreeMap;

use common::http::*;
use common::*;
use serde_json::{json, Value};

const RESOURCES: usize = 23;
const T0: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// Resource `i`'s value at bucket `b` (5 minutes), or none: every resource misses a few.
fn value(i: usize, b: i64) -> Option<f64> {
    ((i as i64 + b) % 5 != 0).then(|| ((i as i64 * 37 + b * 11) % 100) as f64 - 20.0)
}

fn iso(b: i64) -> String {
    let t = T0 + b * 300;
    let (h, m) = (t % 86_400 / 3600, t % 3600 / 60);
    format!("2024-01-01T{h:02}:{m:02}:00+00:00")
}

fn post_as(engine: &Engine, project: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = engine
        .request(reqwest::Method::POST, path)
        .header("content-type", "application/json")
        .header("X-Project-Id", project)
        .body(body.to_string())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends every measure, interleaved across resources, a few per request.
fn feed(engine: &Engine) {
    for b in 0..12 {
        for chunk in (0..RESOURCES).collect::<Vec<_>>().chunks(4) {
            for &i in chunk {
                let Some(v) = value(i, b) else { continue };
                let body = json!({format!("vm-{i:02}"): {"cpu": {"archive_policy_name": "five", "measures": [{"timestamp": T0 + b * 300 + 7, "value": v}]}}});
                let (status, answer) = post_as(
                    engine,
                    &format!("p{}", i % 3),
                    "/v1/batch/resources/metrics/measures?create_metrics=true",
                    &body,
                );
                assert_eq!(status, 202, "{answer}");
            }
        }
    }
}

fn points(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list of points: {v}"))
        .iter()
        .map(|p| {
            assert_eq!(p[1], 300.0, "{p}");
            (p[0].as_str().unwrap().to_owned(), p[2].as_f64().unwrap())
        })
        .collect()
}

fn close(got: &[(String, f64)], want: &[(String, f64)]) {
    assert_eq!(got.len(), want.len(), "{got:?} != {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() < 1e-9, "{got:?} != {want:?}");
    }
}

/// Per bucket, `reduce` over the values of the resources `pick` selects (buckets where none has
/// a value are left out, as `dropna` does).
fn expected(pick: impl Fn(usize) -> bool, reduce: impl Fn(&[f64]) -> f64) -> Vec<(String, f64)> {
    (0..12)
        .filter_map(|b| {
            let vs: Vec<f64> = (0..RESOURCES)
                .filter(|&i| pick(i))
                .filter_map(|i| value(i, b))
                .collect();
            (!vs.is_empty()).then(|| (iso(b), reduce(&vs)))
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn check(workers: &str) {
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"name": "five", "aggregation_methods": ["mean", "max"], "definition": [{"granularity": 300, "timespan": 86400}]});
    let pipeline = store_definition(dir.path(), &policy, &[]);
    let engine = Engine::serve(dir.path(), &pipeline, workers, None);
    feed(&engine);
    let metrics = engine.get_ok("/v1/metric?limit=1000");
    let ids: BTreeMap<String, String> = metrics
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let resource = engine.get_ok(&format!(
                "/v1/resource/generic/{}",
                m["resource_id"].as_str().unwrap()
            ));
            (
                resource["original_resource_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ids.len(), RESOURCES);
    let id = |i: usize| ids[&format!("vm-{i:02}")].clone();

    // By metric id: the mean of three metrics, gaps left out (fill defaults to dropna).
    let ops = format!(
        "(aggregate mean (metric ({} mean) ({} mean) ({} mean)))",
        id(0),
        id(1),
        id(2)
    );
    let (status, answer) = engine.post("/v1/aggregates", &json!({"operations": ops}).to_string());
    assert_eq!(status, 200, "{answer}");
    close(
        &points(&answer["measures"]["aggregated"]),
        &expected(|i| i < 3, mean),
    );

    // Arithmetic between two series is aggregated; max per metric with details lists them.
    let ops = json!(["-", ["metric", id(3), "max"], ["metric", id(4), "max"]]);
    let (status, answer) = engine.post(
        "/v1/aggregates?fill=0",
        &json!({"operations": ops}).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let want: Vec<(String, f64)> = (0..12)
        .map(|b| {
            (
                iso(b),
                value(3, b).unwrap_or(0.0) - value(4, b).unwrap_or(0.0),
            )
        })
        .collect();
    close(&points(&answer["measures"]["aggregated"]), &want);
    let (_, answer) = engine.post(
        "/v1/aggregates?details=true&start=2024-01-01T00:30:00",
        &json!({"operations": format!("(* (metric {} max) 2)", id(5))}).to_string(),
    );
    let want: Vec<(String, f64)> = (6..12)
        .filter_map(|b| value(5, b).map(|v| (iso(b), v * 2.0)))
        .collect();
    close(&points(&answer["measures"][id(5)]["max"]), &want);
    assert_eq!(answer["references"][0]["id"], id(5), "{answer}");
    assert_eq!(answer["references"][0]["archive_policy"]["name"], "five");

    // Over resources: a search, wildcards, groupby project.
    let (status, answer) = engine.post(
        "/v1/aggregates?groupby=project_id",
        &json!({"operations": "(aggregate sum (metric cp* mean))", "resource_type": "generic", "search": "original_resource_id != 'vm-00'"}).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let groups = answer.as_array().unwrap();
    assert_eq!(groups.len(), 3, "{answer}");
    for (k, group) in groups.iter().enumerate() {
        assert_eq!(group["group"], json!({"project_id": format!("p{k}")}));
        let want = expected(|i| i != 0 && i % 3 == k, |v| v.iter().sum());
        close(&points(&group["measures"]["measures"]["aggregated"]), &want);
    }
    let (status, answer) = engine.post(
        "/v1/aggregates",
        &json!({"operations": "(metric cpu mean)", "resource_type": "generic", "search": {"=": {"original_resource_id": "vm-07"}}}).to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    let by_resource = answer["measures"].as_object().unwrap();
    assert_eq!(by_resource.len(), 1, "{answer}");
    let series = by_resource.values().next().unwrap();
    close(&points(&series["cpu"]["mean"]), &expected(|i| i == 7, mean));

    // Without fill, the overlap is checked.
    let ops = format!(
        "(aggregate mean (metric ({} mean) ({} mean)))",
        id(0),
        id(1)
    );
    let (status, answer) = engine.post(
        "/v1/aggregates?needed_overlap=100&start=2024-01-01T00:00:00",
        &json!({"operations": ops}).to_string(),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["description"]["cause"], "Metrics cannot be aggregated",
        "{answer}"
    );

    // The older routes.
    let answer = engine.get_ok(&format!(
        "/v1/aggregation/metric?metric={}&metric={}&aggregation=max&needed_overlap=0&fill=null",
        id(8),
        id(9)
    ));
    // `reaggregation` defaults to `aggregation`: the max across of each metric's max.
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    close(&points(&answer), &expected(|i| i == 8 || i == 9, max));
    let (status, answer) = engine.post("/v1/aggregation/resource/generic/metric/cpu?groupby=project_id&reaggregation=max&fill=dropna", "");
    assert_eq!(status, 200, "{answer}");
    for (k, group) in answer.as_array().unwrap().iter().enumerate() {
        let want = expected(|i| i % 3 == k, max);
        close(&points(&group["measures"]), &want);
    }

    // Searching metrics' values: the points a query accepts, per metric id.
    let (status, found) = engine.post(
        &format!(
            "/v1/search/metric?metric_id={}&metric_id={}&aggregation=max",
            id(10),
            id(11)
        ),
        &json!({"and": [{">=": 0}, {"<": 40}]}).to_string(),
    );
    assert_eq!(status, 200, "{found}");
    for i in [10, 11] {
        let want: Vec<(String, f64)> = (0..12)
            .filter_map(|b| {
                value(i, b)
                    .filter(|v| (0.0..40.0).contains(v))
                    .map(|v| (iso(b), v))
            })
            .collect();
        close(&points(&found[id(i)]), &want);
    }
    let (status, found) = engine.post(
        &format!("/v1/search/metric?metric_id={}", id(12)),
        &json!({">": [{"*": 2}, 100]}).to_string(),
    );
    assert_eq!(status, 200, "{found}");
    let want: Vec<(String, f64)> = (0..12)
        .filter_map(|b| {
            value(12, b)
                .filter(|v| v * 2.0 > 100.0)
                .map(|v| (iso(b), v))
        })
        .collect();
    close(&points(&found[id(12)]), &want);
    for (body, says) in [
        ("", "No query specified in body"),
        ("{\"not\": [{\"=\": 1}]}", "Unknown operator not"),
        ("{\"=\": [1, 2, 3]}", "needs 2 arguments"),
    ] {
        let (status, answer) =
            engine.post(&format!("/v1/search/metric?metric_id={}", id(12)), body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }

    // Bad requests: Gnocchi's status and message, never a 500.
    for (path, body, status, says) in [
        (
            "/v1/aggregates",
            json!({"operations": "aggregate mean"}),
            400,
            "Invalid operations",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(avg (metric cpu mean))", "resource_type": "generic"}),
            400,
            "operation invalid",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(metric cpu mean)", "resource_type": "nope"}),
            400,
            "Resource type nope does not exist",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(metric nope mean)", "resource_type": "generic"}),
            404,
            "Metric ['nope'] does not exist",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(metric cpu median)", "resource_type": "generic"}),
            404,
            "Metrics with unknown aggregation",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(metric abc mean)"}),
            400,
            "Invalid metric references",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(+ 1 2)"}),
            400,
            "At least one 'metric' is required",
        ),
        (
            "/v1/aggregates",
            json!({"ops": "(metric cpu mean)"}),
            400,
            "extra keys not allowed",
        ),
        (
            "/v1/aggregates?fill=sideways",
            json!({"operations": "(metric cpu mean)", "resource_type": "generic"}),
            400,
            "Must be a float",
        ),
        (
            "/v1/aggregates?groupby=flavor",
            json!({"operations": "(metric cpu mean)", "resource_type": "generic"}),
            400,
            "Invalid groupby attribute",
        ),
        (
            "/v1/aggregates",
            json!({"operations": "(rolling mean 100 (metric cpu mean))", "resource_type": "generic"}),
            400,
            "Rolling window",
        ),
        (
            "/v1/aggregation/resource/nope/metric/cpu",
            json!({}),
            404,
            "Resource type nope does not exist",
        ),
    ] {
        let (got, answer) = engine.post(path, &body.to_string());
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(answer.to_string().contains(says), "{path} {body}: {answer}");
    }
    let (got, answer) =
        engine.get("/v1/aggregation/metric?metric=00000000-0000-0000-0000-000000000000");
    assert_eq!(got, 404, "{answer}");
    // Buckets of less than a nanosecond (found by the fuzzer) are a 400, not a panic.
    for path in [
        format!(
            "/v1/metric/{}/measures?granularity=300&resample=0.0000000000001",
            id(0)
        ),
        format!(
            "/v1/aggregation/metric?metric={}&metric={}&granularity=300&resample=0.0000000000001",
            id(0),
            id(1)
        ),
    ] {
        let (got, answer) = engine.get(&path);
        assert_eq!(got, 400, "{path}: {answer}");
    }
    let (got, answer) = engine.get(&format!(
        "/v1/aggregation/metric?metric={}&resample=3600",
        id(0)
    ));
    assert_eq!(got, 400, "{answer}");
    assert!(answer
        .to_string()
        .contains("A granularity must be specified to resample"));
    assert!(engine.terminate().0);
}

#[test]
fn cross_metric_routes_answer_as_gnocchi_with_one_worker() {
    check("1");
}

#[test]
fn cross_metric_routes_answer_as_gnocchi_with_three_workers() {
    check("3");
}
