//! Gnocchi's REST API over real HTTP on 127.0.0.1: `meterflow run --listen` and `meterflow
//! serve` as child processes, queried and fed with a blocking HTTP client. Reference cases read
//! back through the API; POSTed measures aggregated by the same operator, committed before the
//! 202 (they survive a SIGKILL right after); Gnocchi-shaped errors; the bearer token;
//! `/metrics`; a clean stop on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

fn definition(dir: &Path, policy: &Value) -> PathBuf {
    let loads =
        json!({"name": "loads", "metric_pattern": "load*", "archive_policy_name": "medium"});
    store_definition(dir, policy, &[loads])
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

/// Every reference case, read back through both measures routes, equals `expected.json`.
#[test]
fn reference_cases_read_back_through_the_api() {
    for case in gnocchi_cases() {
        let dir = tempfile::tempdir().unwrap();
        let policy: Value = serde_json::from_str(
            &std::fs::read_to_string(case.join("archive_policy.json")).unwrap(),
        )
        .unwrap();
        let expected: GnocchiExpected =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let pipeline = definition(dir.path(), &policy);
        let store = dir.path().join("store");
        let input = case.join("input.jsonl");
        let engine = Engine::start(
            &[
                "run",
                pipeline.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
                "--workers",
                "2",
                "--listen",
                "127.0.0.1:0",
            ],
            None,
        );
        // The input is read to its end, then the engine keeps serving; wait for its last
        // checkpoint to show every input measure.
        let lines = std::fs::read_to_string(&input).unwrap();
        let samples: usize = lines
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["payload"]["samples"].as_array().map_or(1, Vec::len)
            })
            .sum();
        wait_for(&engine, "meterflow_measures_total", samples as f64);
        std::thread::sleep(Duration::from_millis(1500));
        let resources = engine.get_ok("/v1/resource/generic");
        let resource = &resources[0];
        let metric_id = resource["metrics"]["cpu_util"].as_str().unwrap().to_owned();
        let rid = resource["id"].as_str().unwrap().to_owned();
        assert_eq!(
            engine.get_ok(&format!("/v1/resource/generic/{rid}"))["metrics"]["cpu_util"],
            metric_id
        );
        let metric = engine.get_ok(&format!("/v1/metric/{metric_id}"));
        assert_eq!(metric["archive_policy"]["name"], policy["name"]);
        for (method, by_g) in &expected {
            for (g, points) in by_g {
                let query = format!("aggregation={}&granularity={g}", method.replace(':', "%3A"));
                for path in [
                    format!("/v1/metric/{metric_id}/measures?{query}"),
                    format!("/v1/resource/generic/{rid}/metric/cpu_util/measures?{query}"),
                ] {
                    let got: Vec<(String, f64, f64)> =
                        serde_json::from_value(engine.get_ok(&path)).unwrap();
                    assert_eq!(got.len(), points.len(), "{}: {path}", case.display());
                    for (got, want) in got.iter().zip(points) {
                        assert!(
                            same_point(got, want),
                            "{}: {path}: expected {want:?}, got {got:?}",
                            case.display()
                        );
                    }
                }
            }
        }
        let (clean, err) = engine.terminate();
        assert!(clean, "SIGTERM must stop the engine cleanly: {err}");
        assert!(err.contains("samples"), "the summary is printed: {err}");
    }
}

fn series(engine: &Engine, path: &str) -> Vec<(String, f64, f64)> {
    serde_json::from_value(engine.get_ok(path)).unwrap()
}

fn p(t: &str, g: f64, v: f64) -> (String, f64, f64) {
    (t.to_owned(), g, v)
}

/// The batch call Ceilometer's publisher makes, aggregated exactly, visible right after the
/// 202; the other ingest routes; every error case answered in Gnocchi's shape; the token.
#[test]
fn measures_posted_are_aggregated_and_errors_are_gnocchi_shaped() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let token = token_file(dir.path());
    let policy = json!({"name": "unused", "aggregation_methods": ["mean"], "definition": [{"granularity": 60, "points": 10}]});
    let pipeline = definition(dir.path(), &policy);
    let engine = Engine::start(
        &[
            "serve",
            pipeline.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().unwrap(),
            "--workers",
            "2",
        ],
        Some(TOKEN),
    );

    // The token: required everywhere but /healthcheck.
    let anonymous = Client {
        base: engine.base.clone(),
        token: None,
    };
    let (status, body) = anonymous.get("/v1/archive_policy");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], 401);
    assert!(body["description"].as_str().unwrap().contains("Bearer"));
    let wrong = Client {
        token: Some("nope".into()),
        base: engine.base.clone(),
    };
    assert_eq!(wrong.get("/metrics").0, 401);
    assert_eq!(anonymous.get("/healthcheck").0, 200);
    // keystoneauth's token plugins send X-Auth-Token (issue 20).
    let keystone = |token: &str| {
        reqwest::blocking::Client::new()
            .get(format!("{}/v1/archive_policy", engine.base))
            .header("x-auth-token", token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(keystone(TOKEN), 200);
    assert_eq!(keystone("nope"), 401);
    // The clients ask for `/v1/archive_policy/` (issue 20): a trailing slash is the same route.
    for path in [
        "/v1/archive_policy/",
        "/v1/metric/",
        "/v1/resource/generic/",
    ] {
        let (status, body) = engine.get(path);
        assert_eq!(status, 200, "{path}: {body}");
    }

    // Archive policies and rules.
    let policies = engine.get_ok("/v1/archive_policy");
    let names: Vec<&str> = policies
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["low", "medium", "high", "bool", "unused"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(engine.get_ok("/v1/archive_policy/medium")["back_window"], 0);
    let (status, body) = engine.get("/v1/archive_policy/nope");
    assert_eq!((status, body["title"].as_str()), (404, Some("Not Found")));
    assert_eq!(engine.get_ok("/v1/archive_policy_rule")[0]["name"], "loads");

    // Ceilometer's call: create_metrics, policy by entry, by rule, the old bare-list form.
    let batch = json!({
        "host-1": {
            "load": {"unit": "1", "measures": [
                {"timestamp": "2024-05-01T12:00:10", "value": 1.0},
                {"timestamp": "2024-05-01T12:00:40+00:00", "value": "3"},
                {"timestamp": "2024-05-01T12:01:30Z", "value": 5}]},
            "temp": {"archive_policy_name": "high", "measures": [
                {"timestamp": 1714564800.5, "value": 20.0}]}
        },
        "CF7133E7EA434D0081B2253BB3684198": {
            "mem": [{"timestamp": "1714564800", "value": 512}]
        }
    });
    let path = "/v1/batch/resources/metrics/measures?create_metrics=true";
    let (status, body) = engine.post(path, &batch.to_string());
    assert_eq!(status, 202, "{body}");
    let load = "/v1/resource/generic/host-1/metric/load/measures";
    assert_eq!(
        series(&engine, &format!("{load}?granularity=60")),
        vec![
            p("2024-05-01T12:00:00+00:00", 60.0, 2.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 5.0)
        ]
    );
    assert_eq!(
        series(&engine, &format!("{load}?aggregation=sum")),
        vec![
            p("2024-05-01T12:00:00+00:00", 3600.0, 9.0),
            p("2024-05-01T12:00:00+00:00", 60.0, 4.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 5.0)
        ]
    );
    // A later batch reaches back into the open hour (medium: back_window 0, 1 h blocks).
    let late = json!({"host-1": {"load": [{"timestamp": "2024-05-01T12:00:50", "value": 8.0}]}});
    assert_eq!(engine.batch(&late), 202);
    assert_eq!(
        series(&engine, &format!("{load}?granularity=60&aggregation=mean")),
        vec![
            p("2024-05-01T12:00:00+00:00", 60.0, 4.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 5.0)
        ]
    );
    // start (rounded down), stop (exclusive), resample.
    assert_eq!(
        series(
            &engine,
            &format!("{load}?granularity=60&start=2024-05-01T12:01:20&stop=2024-05-01T12:02:00")
        ),
        vec![p("2024-05-01T12:01:00+00:00", 60.0, 5.0)]
    );
    assert_eq!(
        series(
            &engine,
            &format!("{load}?granularity=60&aggregation=max&resample=3600")
        ),
        vec![p("2024-05-01T12:00:00+00:00", 3600.0, 8.0)]
    );
    // The resource and metric the batch created, by every id form.
    let resource = engine.get_ok("/v1/resource/generic/host-1");
    assert_eq!(resource["original_resource_id"], "host-1");
    assert_eq!(resource["type"], "generic");
    let rid = resource["id"].as_str().unwrap();
    assert_eq!(
        engine.get_ok(&format!("/v1/resource/generic/{rid}"))["id"],
        rid
    );
    let temp_id = resource["metrics"]["temp"].as_str().unwrap();
    let temp = engine.get_ok(&format!("/v1/metric/{temp_id}"));
    assert_eq!(temp["archive_policy_name"], "high");
    assert_eq!(temp["archive_policy"]["name"], "high");
    assert_eq!(
        series(
            &engine,
            &format!("/v1/metric/{temp_id}/measures?granularity=1")
        ),
        vec![p("2024-05-01T12:00:00+00:00", 1.0, 20.0)]
    );
    let load_id = resource["metrics"]["load"].as_str().unwrap();
    assert_eq!(
        engine.get_ok(&format!("/v1/metric/{load_id}"))["archive_policy_name"],
        "medium",
        "the archive-policy rule load* → medium applies"
    );
    let mem = engine.get_ok("/v1/resource/generic/cf7133e7-ea43-4d00-81b2-253bb3684198");
    assert_eq!(mem["metrics"].as_object().unwrap().len(), 1);
    assert_eq!(
        engine.get_ok(&format!(
            "/v1/metric/{}",
            mem["metrics"]["mem"].as_str().unwrap()
        ))["archive_policy_name"],
        "low",
        "Gnocchi's default rule"
    );
    let listed = engine.get_ok("/v1/metric");
    assert_eq!(listed.as_array().unwrap().len(), 3);
    // Each row embeds its archive policy, as Gnocchi's (gnocchiclient's `metric list` reads it).
    for m in listed.as_array().unwrap() {
        assert_eq!(m["archive_policy"]["name"], m["archive_policy_name"], "{m}");
        assert!(m["archive_policy"]["definition"].is_array(), "{m}");
    }
    assert_eq!(
        engine
            .get_ok("/v1/resource/generic/host-1/metric")
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The other ingest routes.
    let one = json!([{"timestamp": "2024-05-01T12:01:40", "value": 7.0}]).to_string();
    assert_eq!(
        engine
            .post(&format!("/v1/metric/{load_id}/measures"), &one)
            .0,
        202
    );
    let one = json!([{"timestamp": "2024-05-01T12:01:50", "value": 9.0}]).to_string();
    assert_eq!(engine.post(load, &one).0, 202);
    let by_id = json!({load_id: [{"timestamp": "2024-05-01T12:01:55", "value": 11.0}]});
    assert_eq!(
        engine
            .post("/v1/batch/metrics/measures", &by_id.to_string())
            .0,
        202
    );
    assert_eq!(
        series(&engine, &format!("{load}?granularity=60&aggregation=count")),
        vec![
            p("2024-05-01T12:00:00+00:00", 60.0, 3.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 4.0)
        ]
    );

    // Errors: status and Gnocchi's shape, nothing taken in.
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/batch/resources/metrics/measures",
            json!({"host-1": {"unknown": [{"timestamp": 1, "value": 1}]}}).to_string(),
            400,
            "Unknown metrics",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            "{not json".into(),
            400,
            "not JSON",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            json!({"h": {"x": [{"timestamp": "2024-05-01T12:00:00", "value": "NaN"}]}}).to_string(),
            400,
            "not a finite number",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            json!({"h": {"x": [{"timestamp": "yesterday-ish", "value": 1}]}}).to_string(),
            400,
            "not a valid timestamp",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            json!({"h": {"x": [{"timestamp": -5, "value": 1}]}}).to_string(),
            400,
            "before 1970",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            json!({"h": {"x": {"archive_policy_name": "gold", "measures": []}}}).to_string(),
            400,
            "Archive policy gold does not exist",
        ),
        (
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            json!({"a/b": {"x": []}}).to_string(),
            400,
            "'/' is not supported",
        ),
        (
            "/v1/batch/metrics/measures",
            json!({"0a7a15ff-0000-0000-0000-000000000000": []}).to_string(),
            400,
            "Unknown metrics",
        ),
        (
            "/v1/metric/0a7a15ff-0000-0000-0000-000000000000/measures",
            "[]".into(),
            404,
            "does not exist",
        ),
    ];
    for (path, body, want, needle) in cases {
        let (status, answer) = engine.post(path, &body);
        assert_eq!(status, want, "POST {path} {body}: {answer}");
        assert_eq!(answer["code"], want);
        assert!(
            answer["description"].to_string().contains(needle),
            "POST {path} {body}: {answer}"
        );
    }
    for (path, want, needle) in [
        (
            "/v1/resource/generic/nope",
            404,
            "Resource nope does not exist",
        ),
        (
            "/v1/resource/instance",
            404,
            "Resource type instance does not exist",
        ),
        ("/v1/metric/nope", 404, "Metric nope does not exist"),
        (
            &format!("{load}?aggregation=99pct") as &str,
            404,
            "Aggregation method '99pct'",
        ),
        (&format!("{load}?granularity=7"), 404, "does not exist"),
        (
            &format!("{load}?start=someday"),
            400,
            "not a valid timestamp",
        ),
        (
            &format!("{load}?resample=600"),
            400,
            "A granularity must be specified",
        ),
        (
            "/v1/resource/generic/host-1/metric/nope/measures",
            404,
            "Metric nope does not exist",
        ),
        ("/v1/nowhere", 404, "not part of meterflow's API"),
    ] {
        let (status, answer) = engine.get(path);
        assert_eq!(status, want, "GET {path}: {answer}");
        assert!(
            answer["description"].to_string().contains(needle),
            "GET {path}: {answer}"
        );
    }
    assert!(engine.get_ok("/v1/metric").as_array().unwrap().len() == 3);

    // Late data is accepted (202) and counted, as Gnocchi drops it silently.
    let too_late = json!({"host-1": {"load": [{"timestamp": "2024-05-01T10:00:00", "value": 1}]}});
    assert_eq!(engine.batch(&too_late), 202);
    wait_for(&engine, "meterflow_late_measures_total", 1.0);
    let metrics = engine.get_ok("/metrics");
    let metrics = metrics.as_str().unwrap();
    // The late one is not among the measures aggregated (issue 19).
    assert!(
        metrics.contains("meterflow_measures_total 9\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meterflow_watermark_seconds{input=\"api\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("meterflow_open_metrics 3"), "{metrics}");

    // A 202 means committed: a SIGKILL right after loses nothing.
    let last = json!({"host-1": {"load": [{"timestamp": "2024-05-01T12:02:10", "value": 100.0}]}});
    assert_eq!(engine.batch(&last), 202);
    drop(engine);
    let again = Engine::start(
        &["serve", "--store", store.to_str().unwrap(), "--listen", "0"],
        None,
    );
    assert_eq!(
        series(&again, &format!("{load}?granularity=60&aggregation=max")),
        vec![
            p("2024-05-01T12:00:00+00:00", 60.0, 8.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 11.0),
            p("2024-05-01T12:02:00+00:00", 60.0, 100.0)
        ]
    );
    // And it goes on from the resumed state.
    let more = json!({"host-1": {"load": [{"timestamp": "2024-05-01T12:02:20", "value": 0.0}]}});
    assert_eq!(again.batch(&more), 202);
    assert_eq!(
        series(
            &again,
            &format!("{load}?granularity=60&aggregation=mean&start=2024-05-01T12:02:00")
        ),
        vec![p("2024-05-01T12:02:00+00:00", 60.0, 50.0)]
    );
    let (clean, err) = again.terminate();
    assert!(clean, "{err}");
    let out = meterflow(&[
        "measures",
        "--store",
        store.to_str().unwrap(),
        "--resource",
        "host-1",
        "--metric",
        "load",
        "--granularity",
        "60",
        "--aggregation",
        "max",
        "--resample",
        "3600",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!([["2024-05-01T12:00:00+00:00", 3600.0, 100.0]]));
}

/// Bad `--listen`, a busy port, an empty token file and bad notifier options fail at start
/// with the fix.
#[test]
fn bad_listen_options_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    assert_fails_with(
        &["serve", "--store", store, "--listen", "localhost"],
        "is not an address",
    );
    assert_fails_with(
        &["serve", "--store", store, "--notify-timeout", "0"],
        "--notify-timeout 0: give a number of seconds above 0",
    );
    assert_fails_with(
        &["serve", "--store", store, "--notify-attempts", "0"],
        "--notify-attempts and --notify-queue must be at least 1",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert_fails_with(
        &[
            "serve",
            "--store",
            store,
            "--listen",
            "0",
            "--token-file",
            empty.to_str().unwrap(),
        ],
        "holds no token",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let other = dir.path().join("other");
    assert_fails_with(
        &[
            "serve",
            "--store",
            other.to_str().unwrap(),
            "--listen",
            &port,
        ],
        "cannot listen on 127.0.0.1",
    );
}

/// Ceilometer-style resource definitions: resource types, per-meter policies, attributes taken
/// from the samples (the newest wins), unlisted meters not stored; bad files fail validation.
#[test]
fn resource_definitions_give_types_policies_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let definitions = dir.path().join("gnocchi_resources.yaml");
    std::fs::write(
        &definitions,
        r#"
archive_policy_default: ceilometer-low
archive_policies:
  - {name: fast, aggregation_methods: [mean, max], back_window: 0, definition: [{granularity: 60, points: 60}]}
resources:
  - resource_type: instance
    metrics:
      cpu: {archive_policy_name: ceilometer-low-rate}
      memory.usage:
      vcpus: {archive_policy_name: fast}
    attributes:
      display_name: resource_metadata.display_name
      flavor_name: resource_metadata.(instance_type|(flavor.name)|flavor_name)
      host: resource_metadata.(instance_host|host)
"#,
    )
    .unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        json!({
            "sources": [{"name": "all", "meters": ["*"], "sinks": ["store"]}],
            "sinks": [{"name": "store", "publishers": [format!("gnocchi://?resources_definition_file={}", definitions.display())]}],
        })
        .to_string(),
    )
    .unwrap();
    let sample = |meter: &str, volume: f64, t: &str, metadata: Value| {
        json!({"counter_name": meter, "counter_type": "gauge", "counter_unit": "1",
               "counter_volume": volume, "resource_id": "vm-1", "user_id": "u", "project_id": "p",
               "timestamp": t, "resource_metadata": metadata})
        .to_string()
    };
    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        [
            sample("vcpus", 2.0, "2024-05-01T12:00:05", json!({"display_name": "web-1", "flavor": {"name": "m1.small"}})),
            sample("memory.usage", 512.0, "2024-05-01T12:00:05", json!({"display_name": "web-1", "flavor": {"name": "m1.small"}})),
            sample("disk.usage", 1.0, "2024-05-01T12:00:05", json!({})),
            sample("vcpus", 4.0, "2024-05-01T12:01:05", json!({"display_name": "web-1-renamed", "instance_type": "m1.large", "host": "cmp-3"})),
        ]
        .join("\n"),
    )
    .unwrap();
    let store = dir.path().join("store");
    let engine = Engine::start(
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "0",
        ],
        None,
    );
    wait_for(&engine, "meterflow_measures_total", 3.0);
    wait_for(
        &engine,
        "meterflow_dropped_total{reason=\"no_resource_definition\"}",
        1.0,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let resource = engine.get_ok("/v1/resource/instance/vm-1");
    assert_eq!(resource["type"], "instance");
    assert_eq!(resource["display_name"], "web-1-renamed", "{resource}");
    assert_eq!(resource["flavor_name"], "m1.large", "{resource}");
    assert_eq!(resource["host"], "cmp-3", "{resource}");
    let metrics = resource["metrics"].as_object().unwrap();
    assert_eq!(
        metrics.len(),
        2,
        "disk.usage is not listed, so not stored: {resource}"
    );
    let policy_of = |name: &str| {
        engine.get_ok(&format!("/v1/metric/{}", metrics[name].as_str().unwrap()))
            ["archive_policy_name"]
            .clone()
    };
    assert_eq!(policy_of("vcpus"), "fast");
    assert_eq!(policy_of("memory.usage"), "ceilometer-low");
    assert_eq!(
        engine
            .get_ok("/v1/resource/instance")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The generic listing shows generic attributes only (gnocchiclient's `resource list`
    // died on a row with display_name), the type's and `details=true` show them all.
    let generic = engine.get_ok("/v1/resource/generic");
    assert_eq!(generic.as_array().unwrap().len(), 1);
    assert_eq!(generic[0]["type"], "instance", "{generic}");
    assert!(generic[0].get("display_name").is_none(), "{generic}");
    assert!(generic[0]["metrics"].is_object(), "{generic}");
    let detailed = engine.get_ok("/v1/resource/generic?details=true");
    assert_eq!(detailed[0]["display_name"], "web-1-renamed", "{detailed}");
    let typed = engine.get_ok("/v1/resource/instance");
    assert_eq!(typed[0]["display_name"], "web-1-renamed", "{typed}");
    assert_eq!(engine.get("/v1/resource/volume").0, 404);
    assert_eq!(
        series(
            &engine,
            "/v1/resource/instance/vm-1/metric/vcpus/measures?aggregation=max"
        ),
        vec![
            p("2024-05-01T12:00:00+00:00", 60.0, 2.0),
            p("2024-05-01T12:01:00+00:00", 60.0, 4.0)
        ]
    );
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
    assert!(err.contains("no_resource_definition"), "{err}");

    // Bad files are validation errors naming the file and the place.
    for (text, needle) in [
        ("resources: [{metrics: [cpu]}]", "resource_type"),
        ("resources: [{resource_type: instance, metrics: {cpu: {archive_policy_name: gold}}}]", "archive policy \"gold\" does not exist"),
        ("resources: [{resource_type: instance, metrics: [cpu], attributes: {host: 'resource_metadata.(host'}}]", "attribute path"),
        ("resources: [: bad", "not valid YAML"),
    ] {
        std::fs::write(&definitions, text).unwrap();
        let out = meterflow(&["validate", pipeline.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}: {}", text_of(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(stderr.contains("gnocchi_resources.yaml"), "{stderr}");
    }
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

/// `gnocchi://` in an event sink, as Ceilometer's event_pipeline.yaml has it: by the shipped
/// gnocchi_resources.yaml, an instance's delete event ends it and the disks a search finds
/// (not another instance's), a volume's create event creates it with its attributes; the
/// changes survive a rerun of the same input unchanged (ended_at is the event's time). The
/// resources exist before the events come, as in a deployment: a disk whose first measure is
/// in the same epoch as its instance's delete event is not found by the search (documented).
#[test]
fn resource_events_end_and_create_resources() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/definitions/gnocchi_resources.yaml"
    );
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "sources:\n  - {{name: meters, meters: [memory.usage, disk.device.read.bytes], sinks: [store]}}\n  - {{name: events, events: ['*'], sinks: [resources]}}\nsinks:\n  - {{name: store, publishers: ['gnocchi://?resources_definition_file={shipped}']}}\n  - {{name: resources, publishers: ['gnocchi://']}}\n"
        ),
    )
    .unwrap();
    let sample = |meter: &str, resource: &str, metadata: Value| {
        json!({"counter_name": meter, "counter_type": "gauge", "counter_unit": "B",
               "counter_volume": 1.0, "resource_id": resource, "user_id": "u", "project_id": "p",
               "timestamp": "2024-05-01T12:00:05", "resource_metadata": metadata})
        .to_string()
    };
    let notification = |event_type: &str, time: &str, payload: Value| {
        json!({"event_type": event_type, "publisher_id": "compute.cmp-1", "priority": "INFO",
               "message_id": format!("m-{event_type}"), "timestamp": time, "payload": payload,
               "_context": {}})
        .to_string()
    };
    let samples = dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        [
            sample("memory.usage", "vm-1", json!({"display_name": "web-1"})),
            sample(
                "disk.device.read.bytes",
                "vm-1-vda",
                json!({"instance_id": "vm-1", "disk_name": "vda"}),
            ),
            sample(
                "disk.device.read.bytes",
                "vm-2-vda",
                json!({"instance_id": "vm-2", "disk_name": "vda"}),
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        [
            notification(
                "compute.instance.delete.start",
                "2024-05-01 12:10:00.000000",
                json!({"instance_id": "vm-1", "tenant_id": "p", "user_id": "u"}),
            ),
            notification(
                "volume.create.end",
                "2024-05-01 12:11:00.000000",
                json!({"volume_id": "vol-1", "tenant_id": "p-7", "display_name": "data"}),
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    let store = dir.path().join("store");
    let validate = meterflow(&["validate", pipeline.to_str().unwrap()]);
    assert!(validate.status.success(), "{}", text_of(&validate));
    let (samples, events) = (samples.to_str().unwrap(), events.to_str().unwrap());
    let first = meterflow(&[
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        samples,
        "--store",
        store.to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(first.status.success(), "{}", text_of(&first));
    // The events; then everything again (a replay).
    for run in [vec![events], vec![samples, events]] {
        let mut args = vec![
            "run",
            pipeline.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--workers",
            "2",
            "--listen",
            "0",
        ];
        for input in &run {
            args.extend(["--input", input]);
        }
        let engine = Engine::start(&args, None);
        wait_for(&engine, "meterflow_events_published_total", 2.0);
        std::thread::sleep(Duration::from_millis(1500));
        let vm1 = engine.get_ok("/v1/resource/instance/vm-1");
        assert_eq!(
            vm1["ended_at"], "2024-05-01T12:10:00+00:00",
            "{run:?}: {vm1}"
        );
        assert_eq!(vm1["display_name"], "web-1");
        let disk = |id: &str| engine.get_ok(&format!("/v1/resource/instance_disk/{id}"));
        assert_eq!(disk("vm-1-vda")["ended_at"], "2024-05-01T12:10:00+00:00");
        assert_eq!(
            disk("vm-2-vda")["ended_at"],
            Value::Null,
            "another instance's disk"
        );
        let volume = engine.get_ok("/v1/resource/volume/vol-1");
        assert_eq!(volume["type"], "volume", "{volume}");
        assert_eq!(volume["project_id"], "p-7", "{volume}");
        assert_eq!(
            volume["started_at"], "2024-05-01T12:11:00+00:00",
            "{volume}"
        );
        assert_eq!(volume["ended_at"], Value::Null);
        assert_eq!(volume["metrics"], json!({}));
        let volumes = engine.get_ok("/v1/resource/volume");
        assert_eq!(volumes.as_array().unwrap().len(), 1, "{volumes}");
        let generic = engine.get_ok("/v1/resource/generic");
        assert_eq!(generic.as_array().unwrap().len(), 4, "{generic}");
        let (clean, err) = engine.terminate();
        assert!(clean, "{err}");
    }

    // Bad event rules are validation errors naming the file and the key.
    let definitions = dir.path().join("gnocchi_resources.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "sources: [{{name: events, events: ['*'], sinks: [resources]}}]\nsinks: [{{name: resources, publishers: ['gnocchi://?resources_definition_file={}']}}]\n",
            definitions.display()
        ),
    )
    .unwrap();
    for (text, needle) in [
        ("resources: [{resource_type: instance, metrics: [cpu], event_delete: x.delete}]", "must name the trait that holds the resource id"),
        ("resources: [{resource_type: instance, metrics: [cpu], event_delete: 7, event_attributes: {id: instance_id}}]", "event_delete must be an event type"),
        ("resources: [{resource_type: instance, metrics: [cpu], event_delete: x, event_attributes: {id: instance_id}, event_associated_resources: {instance_disk: '{\"=\": '}}]", "event_associated_resources.instance_disk: not JSON"),
    ] {
        std::fs::write(&definitions, text).unwrap();
        let out = meterflow(&["validate", pipeline.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}: {}", text_of(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{text}: {stderr}");
    }
}
