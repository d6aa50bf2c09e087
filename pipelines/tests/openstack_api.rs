//! What OpenStack's own clients rely on beyond the routes' data (issue 20), over real HTTP on
//! 127.0.0.1 against `meterflow serve`: version discovery, Gnocchi's status and capabilities,
//! Aodh's capabilities, durations written as Gnocchi writes them, every error in the shape its
//! API's client parses (Gnocchi's under `/v1`, Aodh's under `/v2`, 405 included), request ids,
//! and keep-alive connections that survive any answer.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "os-token";

fn serve(dir: &std::path::Path, token: bool) -> Engine {
    let policy = json!({"name": "five", "aggregation_methods": ["mean"], "definition": [{"granularity": 300, "timespan": 86400}]});
    let pipeline = store_definition(dir, &policy, &[]);
    Engine::serve(dir, &pipeline, "3", token.then_some(TOKEN))
}

/// One HTTP/1.1 exchange on an open connection: the status, headers (lower-case names) and
/// body of the answer.
fn exchange(
    stream: &mut BufReader<TcpStream>,
    request: &str,
) -> (u16, Vec<(String, String)>, String) {
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn discovery_status_capabilities_and_durations_as_the_clients_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = serve(dir.path(), true);

    // Version discovery needs no token, as keystoneauth asks before it has one.
    let anonymous = Client {
        base: engine.base.clone(),
        token: None,
    };
    let versions = anonymous.get_ok("/");
    let ids: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["v1.0", "v2"], "{versions}");
    assert!(versions["versions"][0]["links"][0]["href"]
        .as_str()
        .unwrap()
        .ends_with("/v1/"));

    let status = engine.get_ok("/v1/status");
    assert_eq!(status["storage"]["summary"]["measures"], 0, "{status}");
    assert_eq!(status["storage"]["summary"]["metrics"], 0, "{status}");
    assert_eq!(
        status["metricd"]["processors"].as_array().unwrap().len(),
        3,
        "{status}"
    );

    let capabilities = engine.get_ok("/v1/capabilities");
    let methods: Vec<&str> = capabilities["aggregation_methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["mean", "rate:mean", "95pct", "rate:last", "count", "median"] {
        assert!(methods.contains(&m), "{m}: {methods:?}");
    }
    let mut sorted = methods.clone();
    sorted.sort_unstable();
    assert_eq!(methods, sorted);
    assert_eq!(methods.len(), 2 * (9 + 99));

    let aodh = engine.get_ok("/v2/capabilities");
    assert_eq!(aodh["api"]["alarms:query:simple"], true, "{aodh}");
    assert_eq!(aodh["alarm_storage"]["storage:production_ready"], true);

    // Durations as Python's str(timedelta), as `gnocchi archive-policy show` prints them.
    let five = engine.get_ok("/v1/archive_policy/five");
    assert_eq!(
        five["definition"],
        json!([{"granularity": "0:05:00", "points": 288, "timespan": "1 day, 0:00:00"}]),
        "{five}"
    );
    let all = engine.get_ok("/v1/archive_policy/");
    let low = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "low")
        .unwrap();
    assert_eq!(
        low["definition"][0]["timespan"], "30 days, 0:00:00",
        "{low}"
    );
    // Doubled slashes name the same route (gnocchiclient writes `archive_policy//NAME`).
    assert_eq!(engine.get_ok("/v1//archive_policy//five")["name"], "five");

    // An archive policy's life through the API: counts given as text (as the CLI sends
    // them), a taken name, a change of points, a change of granularities, in use, deleted.
    let made = json!({"name": "made", "back_window": "0", "aggregation_methods": ["max"],
        "definition": [{"granularity": "1m", "points": "60"}]});
    let (status, body) = engine.post("/v1/archive_policy", &made.to_string());
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["definition"][0]["timespan"], "1:00:00", "{body}");
    assert_eq!(engine.post("/v1/archive_policy", &made.to_string()).0, 409);
    let (status, body) = engine.post(
        "/v1/archive_policy",
        r#"{"name": "x", "definition": [{"granularity": 0, "points": 1}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        engine
            .post(
                "/v1/archive_policy",
                r#"{"name": "low", "definition": [{"granularity": 60, "points": 1}]}"#
            )
            .0,
        409
    );
    let patch = |definition: Value| {
        engine.call(
            reqwest::Method::PATCH,
            "/v1/archive_policy/made",
            Some(&json!({ "definition": definition }).to_string()),
        )
    };
    let (status, body) = patch(json!([{"granularity": 60, "points": 120}]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["definition"][0]["points"], 120, "{body}");
    let (status, body) = patch(json!([{"granularity": 300, "points": 120}]));
    assert_eq!(status, 400, "{body}");
    assert!(body["description"]
        .as_str()
        .unwrap()
        .contains("Cannot add or drop granularities"));
    let (status, body) = engine.call(reqwest::Method::DELETE, "/v1/archive_policy/low", None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        engine
            .call(reqwest::Method::DELETE, "/v1/archive_policy/five", None)
            .0,
        400
    );
    let batch = json!({"h": {"m": {"archive_policy_name": "made", "measures": [{"timestamp": "2024-05-01T12:00:10", "value": 3}]}}});
    assert_eq!(
        engine
            .post(
                "/v1/batch/resources/metrics/measures?create_metrics=true",
                &batch.to_string()
            )
            .0,
        202
    );
    let (status, body) = engine.call(reqwest::Method::DELETE, "/v1/archive_policy/made", None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("still in use"),
        "{body}"
    );
    let spare = json!({"name": "spare", "definition": [{"granularity": 60, "points": 5}]});
    assert_eq!(engine.post("/v1/archive_policy", &spare.to_string()).0, 201);
    // Metrics created without measures: by POST /v1/metric, and by a batch naming a new
    // metric with an empty list.
    let (status, body) = engine.post(
        "/v1/metric",
        r#"{"name": "empty", "resource_id": "h", "archive_policy_name": "five", "unit": "s"}"#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["archive_policy"]["name"], "five", "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(engine.get_ok(&format!("/v1/metric/{id}"))["unit"], "s");
    assert_eq!(
        engine.get_ok(&format!("/v1/metric/{id}/measures?granularity=300")),
        json!([])
    );
    assert_eq!(
        engine
            .post("/v1/metric", r#"{"name": "empty", "resource_id": "h"}"#)
            .0,
        409
    );
    // A metric of no resource, as Gnocchi makes one.
    let (status, solo) = engine.post(
        "/v1/metric",
        r#"{"name": "solo", "archive_policy_name": "five"}"#,
    );
    assert_eq!(status, 201, "{solo}");
    assert!(solo["resource_id"].is_null(), "{solo}");
    assert_eq!(
        engine
            .post(
                "/v1/metric",
                r#"{"name": "x", "resource_id": "h", "archive_policy_name": "nope"}"#
            )
            .0,
        400
    );
    // Named metrics added to a resource (what `gnocchi metric create --resource-id` sends).
    let (status, body) = engine.post(
        "/v1/resource/generic/h/metric",
        r#"{"a": {"archive_policy_name": "five"}, "b": {"unit": "%"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{body}");
    assert_eq!(body[0]["archive_policy_name"], "five");
    assert_eq!(
        engine
            .post("/v1/resource/generic/h/metric", r#"{"a": {}}"#)
            .0,
        409
    );
    assert_eq!(
        engine
            .post("/v1/resource/generic/nowhere/metric", r#"{"a": {}}"#)
            .0,
        404
    );
    assert_eq!(
        engine
            .get_ok("/v1/resource/generic/h/metric")
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let empty_batch = json!({"h2": {"quiet": {"archive_policy_name": "five", "measures": []}}});
    assert_eq!(
        engine
            .post(
                "/v1/batch/resources/metrics/measures?create_metrics=true",
                &empty_batch.to_string()
            )
            .0,
        202
    );
    assert_eq!(
        engine.get_ok("/v1/resource/generic/h2/metric/quiet")["name"],
        "quiet"
    );

    // Resource search: a JSON filter in the body, or the text form in `filter`.
    let (status, body) = engine.post(
        "/v1/search/resource/generic",
        r#"{"or": [{"=": {"original_resource_id": "h"}}, {"like": {"original_resource_id": "h2%"}}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let mut found: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["original_resource_id"].as_str().unwrap())
        .collect();
    found.sort_unstable();
    assert_eq!(found, ["h", "h2"], "{body}");
    let (status, body) = engine.post(
        "/v1/search/resource/generic?filter=original_resource_id%3D%27h2%27",
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(
        engine
            .post("/v1/search/resource/generic", r#"{"~": {"a": 1}}"#)
            .0,
        400
    );
    assert_eq!(engine.post("/v1/search/resource/nosuchtype", "{}").0, 404);

    // A rule created through the API holds its policy in use, until it is deleted.
    let rule = json!({"name": "r", "metric_pattern": "sp*", "archive_policy_name": "spare"});
    assert_eq!(
        engine.post("/v1/archive_policy_rule", &rule.to_string()).0,
        201
    );
    assert_eq!(
        engine.post("/v1/archive_policy_rule", &rule.to_string()).0,
        409
    );
    assert_eq!(
        engine.get_ok("/v1/archive_policy_rule/r")["metric_pattern"],
        "sp*"
    );
    assert_eq!(
        engine
            .call(reqwest::Method::DELETE, "/v1/archive_policy/spare", None)
            .0,
        400
    );
    assert_eq!(
        engine
            .call(reqwest::Method::DELETE, "/v1/archive_policy_rule/r", None)
            .0,
        204
    );
    assert_eq!(engine.get("/v1/archive_policy_rule/r").0, 404);
    assert_eq!(
        engine
            .call(reqwest::Method::DELETE, "/v1/archive_policy/spare", None)
            .0,
        204
    );
    assert_eq!(engine.get("/v1/archive_policy/spare").0, 404);
    assert_eq!(
        engine
            .call(reqwest::Method::DELETE, "/v1/archive_policy/spare", None)
            .0,
        404
    );
}

#[test]
fn every_error_has_its_apis_shape_and_the_connection_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = serve(dir.path(), true);
    let anonymous = Client {
        base: engine.base.clone(),
        token: None,
    };

    // Gnocchi's shape under /v1, Aodh's under /v2: 401, 404, 405, 400.
    let (status, body) = anonymous.get("/v2/alarms");
    assert_eq!(status, 401);
    assert!(
        body["error_message"]["faultstring"]
            .as_str()
            .unwrap()
            .contains("X-Auth-Token"),
        "{body}"
    );
    assert_eq!(body["error_message"]["faultcode"], "Client");
    let (status, body) = anonymous.get("/v1/metric");
    assert_eq!(status, 401);
    assert_eq!(body["code"], 401, "{body}");
    let (status, body) = engine.post("/v2/query/events", r#"{"filter": "{}"}"#);
    assert_eq!(status, 404);
    assert!(
        body["error_message"]["faultstring"]
            .as_str()
            .unwrap()
            .contains("/v2/query/events"),
        "{body}"
    );
    // A bad complex query: Aodh's message, as a 400.
    let (status, body) = engine.post("/v2/query/alarms", r#"{"filter": "{\"like\": {}}"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_message"]["faultstring"]
            .as_str()
            .unwrap()
            .starts_with("Filter expression not valid"),
        "{body}"
    );
    let (status, body) = engine.call(reqwest::Method::PUT, "/v1/status", None);
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["code"], 405, "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("PUT /v1/status"),
        "{body}"
    );
    let (status, body) = engine.call(reqwest::Method::PATCH, "/v2/alarms", Some("{}"));
    assert_eq!(status, 405, "{body}");
    assert!(body["error_message"]["faultstring"].is_string(), "{body}");
    let (status, body) = engine.post("/v1/batch/metrics/measures", "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body["description"].is_string(), "{body}");

    // One connection, many answers: errors to POSTs whose bodies no route read (unknown
    // routes, a wrong method, no token), then good requests, all on the same socket.
    let addr = engine.base.trim_start_matches("http://").to_owned();
    let mut conn = BufReader::new(TcpStream::connect(&addr).unwrap());
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let payload = "x".repeat(70_000);
    let mut ids = std::collections::BTreeSet::new();
    for round in 0..40 {
        let (path, auth) = match round % 4 {
            0 => ("/v1/nowhere", true),
            1 => ("/v2/alarms/some-id/state", true),
            2 => ("/v1/metric", false),
            _ => ("/v2/query/alarms/history", true),
        };
        let auth = if auth {
            format!("X-Auth-Token: {TOKEN}\r\n")
        } else {
            String::new()
        };
        let (status, headers, body) = exchange(
            &mut conn,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
                payload.len()
            ),
        );
        assert!((400..500).contains(&status), "{round}: {status} {body}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/json"),
            "{round}"
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert!(
            parsed["description"].is_string() || parsed["error_message"]["faultstring"].is_string(),
            "{round}: {body}"
        );
        ids.insert(
            header(&headers, "x-openstack-request-id")
                .unwrap()
                .to_owned(),
        );
        let (status, headers, body) = exchange(
            &mut conn,
            &format!(
                "GET /v1/capabilities HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {TOKEN}\r\n\r\n"
            ),
        );
        assert_eq!(status, 200, "{round}: {body}");
        ids.insert(
            header(&headers, "x-openstack-request-id")
                .unwrap()
                .to_owned(),
        );
    }
    // Every answer had its own request id, in OpenStack's form.
    assert_eq!(ids.len(), 80);
    assert!(ids
        .iter()
        .all(|id| id.starts_with("req-") && id.len() == 40));

    // A body over the limit is refused in Gnocchi's shape, and that connection is closed
    // (the rest of the body is never read).
    let mut big = BufReader::new(TcpStream::connect(&addr).unwrap());
    let huge = 3 * 1024 * 1024;
    big.get_mut()
        .write_all(
            format!(
                "POST /v1/batch/metrics/measures HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {huge}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let _ = big.get_mut().write_all(&vec![b' '; huge]);
    let mut line = String::new();
    big.read_line(&mut line).unwrap();
    assert!(line.contains(" 413 "), "{line}");
}

/// A caller whose `X-Roles` names no admin role (Gnocchi's and Aodh's noauth modes) sees
/// what its `X-Project-Id` owns: resources, metrics, aggregates over resources, alarms and
/// their history; an admin, or a caller without `X-Roles` (a token holder), sees everything.
#[test]
fn callers_without_the_admin_role_see_their_project() {
    let dir = tempfile::tempdir().unwrap();
    let engine = serve(dir.path(), false);
    let send =
        |method: reqwest::Method, path: &str, body: Option<Value>, who: Option<(&str, &str)>| {
            let mut request = engine.request(method, path);
            if let Some((project, roles)) = who {
                request = request
                    .header("X-Project-Id", project)
                    .header("X-User-Id", "u")
                    .header("X-Roles", roles);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().unwrap();
            let status = response.status().as_u16();
            let text = response.text().unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)),
            )
        };
    let get = |path: &str, who| send(reqwest::Method::GET, path, None, who);
    for (i, project) in ["p1", "p2", "p1"].iter().enumerate() {
        let body = json!({format!("host-{i}"): {"load": {"archive_policy_name": "five", "measures": [{"timestamp": "2024-01-01T00:00:00", "value": i}]}}});
        let (status, answer) = send(
            reqwest::Method::POST,
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            Some(body),
            Some((project, "member")),
        );
        assert_eq!(status, 202, "{answer}");
        let alarm = json!({"name": format!("a{i}"), "type": "gnocchi_resources_threshold", "gnocchi_resources_threshold_rule": {
            "metric": "load", "resource_type": "generic", "resource_id": format!("host-{i}"), "comparison_operator": "gt",
            "threshold": 1, "aggregation_method": "mean", "granularity": 300}});
        let (status, answer) = send(
            reqwest::Method::POST,
            "/v2/alarms",
            Some(alarm),
            Some((project, "member")),
        );
        assert_eq!(status, 201, "{answer}");
    }
    let member = Some(("p1", "member,reader"));
    let originals = |v: &Value, field: &str| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[field].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    };
    let (_, all) = get("/v1/resource/generic", None);
    assert_eq!(
        originals(&all, "original_resource_id"),
        ["host-0", "host-1", "host-2"]
    );
    let (_, admin) = get("/v1/resource/generic", Some(("p1", "Admin")));
    assert_eq!(admin.as_array().unwrap().len(), 3);
    let (_, mine) = get("/v1/resource/generic", member);
    assert_eq!(
        originals(&mine, "original_resource_id"),
        ["host-0", "host-2"]
    );
    let (_, found) = send(
        reqwest::Method::POST,
        "/v1/search/resource/generic",
        Some(json!({})),
        member,
    );
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    let (_, metrics) = get("/v1/metric", member);
    assert_eq!(metrics.as_array().unwrap().len(), 2, "{metrics}");
    let theirs = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["original_resource_id"] == "host-1")
        .unwrap();
    let their_metric = theirs["metrics"]["load"].as_str().unwrap();
    let (status, answer) = get(&format!("/v1/metric/{their_metric}"), member);
    assert_eq!(
        (status, answer["description"].as_str()),
        (403, Some("Access was denied to this resource."))
    );
    assert_eq!(
        get(&format!("/v1/metric/{their_metric}/measures"), member).0,
        403
    );
    assert_eq!(get("/v1/resource/generic/host-1", member).0, 403);
    assert_eq!(get(&format!("/v1/metric/{their_metric}"), None).0, 200);
    let (status, sums) = send(
        reqwest::Method::POST,
        "/v1/aggregates",
        Some(
            json!({"operations": "(aggregate sum (metric load mean))", "resource_type": "generic", "search": {}}),
        ),
        member,
    );
    assert_eq!(status, 200, "{sums}");
    assert_eq!(
        sums["measures"]["aggregated"][0][2], 2.0,
        "host-0 and host-2 only: {sums}"
    );

    let (_, alarms) = get("/v2/alarms", member);
    assert_eq!(originals(&alarms, "name"), ["a0", "a2"]);
    let (_, everyone) = get("/v2/alarms", None);
    assert_eq!(everyone.as_array().unwrap().len(), 3);
    let theirs = everyone
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "a1")
        .unwrap()["alarm_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&format!("/v2/alarms/{theirs}"), member).0, 404);
    assert_eq!(get(&format!("/v2/alarms/{theirs}/history"), member).0, 404);
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("/v2/alarms/{theirs}"),
            None,
            member
        )
        .0,
        404
    );
    let (_, queried) = send(
        reqwest::Method::POST,
        "/v2/query/alarms",
        Some(json!({})),
        member,
    );
    assert_eq!(originals(&queried, "name"), ["a0", "a2"]);
    let (_, history) = send(
        reqwest::Method::POST,
        "/v2/query/alarms/history",
        Some(json!({})),
        member,
    );
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["alarm_id"] != theirs.as_str()),
        "{history}"
    );
    assert_eq!(get(&format!("/v2/alarms/{theirs}"), None).0, 200);
    assert!(engine.terminate().0);
}

/// Several tokens, each with its access: `admin` does everything, `read-only` reads (the
/// searching and aggregating POSTs included) and is refused any change with a 403, and
/// `project=ID` sees and does only its project's, whatever headers it sends.
#[test]
fn tokens_carry_their_access() {
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"name": "five", "aggregation_methods": ["mean"], "definition": [{"granularity": 300, "timespan": 86400}]});
    let pipeline = store_definition(dir.path(), &policy, &[]);
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# who may do what\nroot-token\n\nreader-token read-only\ntenant-token project=p1\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let engine = Engine::start(
        &[
            "serve",
            pipeline.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ],
        Some("root-token"),
    );
    let with = |token: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let client = reqwest::blocking::Client::new();
        let mut request = client
            .request(method, format!("{}{path}", engine.base))
            .header("X-Auth-Token", token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str::<Value>(&response.text().unwrap()).unwrap_or(Value::Null),
        )
    };
    let batch = |project: &str, id: &str| {
        let client = reqwest::blocking::Client::new();
        let body = json!({id: {"load": {"archive_policy_name": "five", "measures": [{"timestamp": "2024-01-01T00:00:00", "value": 1}]}}});
        client
            .post(format!(
                "{}/v1/batch/resources/metrics/measures?create_metrics=true",
                engine.base
            ))
            .header("Authorization", "Bearer root-token")
            .header("X-Project-Id", project)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(batch("p1", "mine"), 202);
    assert_eq!(batch("p2", "theirs"), 202);
    use reqwest::Method;
    assert_eq!(with("wrong-token", Method::GET, "/v1/metric", None).0, 401);
    assert_eq!(
        with("root-token", Method::GET, "/v1/metric", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Read-only: reads, searches and aggregates; no changes.
    assert_eq!(
        with("reader-token", Method::GET, "/v1/metric", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        with(
            "reader-token",
            Method::POST,
            "/v1/search/resource/generic",
            Some(json!({}))
        )
        .0,
        200
    );
    assert_eq!(with("reader-token", Method::POST, "/v1/aggregates", Some(json!({"operations": "(aggregate sum (metric load mean))", "resource_type": "generic", "search": {}}))).0, 200);
    assert_eq!(
        with(
            "reader-token",
            Method::POST,
            "/v2/query/alarms",
            Some(json!({}))
        )
        .0,
        200
    );
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/batch/resources/metrics/measures",
            json!({}),
        ),
        (
            Method::POST,
            "/v1/archive_policy",
            json!({"name": "x", "definition": [{"granularity": 60, "points": 5}]}),
        ),
        (Method::DELETE, "/v1/resource/generic/mine", Value::Null),
        (Method::POST, "/v2/alarms", json!({})),
    ] {
        let (status, answer) = with("reader-token", method.clone(), path, Some(body));
        assert_eq!(status, 403, "{method} {path}: {answer}");
        // Gnocchi's error shape under /v1, Aodh's under /v2.
        assert!(
            answer.to_string().contains("the token is read-only"),
            "{answer}"
        );
    }
    // A project's token: its project only, whatever it claims.
    let client = reqwest::blocking::Client::new();
    let listed: Value = client
        .get(format!("{}/v1/resource/generic", engine.base))
        .header("X-Auth-Token", "tenant-token")
        .header("X-Roles", "admin")
        .header("X-Project-Id", "p2")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["original_resource_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mine"]);
    assert_eq!(
        with(
            "tenant-token",
            Method::GET,
            "/v1/resource/generic/theirs",
            None
        )
        .0,
        403
    );
    assert!(engine.terminate().0);
    // A token file that says something else is refused at start, naming the line.
    std::fs::write(&tokens, "root-token\nother-token writer\n").unwrap();
    assert_fails_with(
        &[
            "serve",
            pipeline.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ],
        "line 2: expected TOKEN [admin|read-only|project=ID]",
    );
}
