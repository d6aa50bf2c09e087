//! Issue 19's findings, each through the real binary: hostile or broken input is refused with
//! its place and reason, counted and dead-lettered, and never shifts, wipes or stalls anything
//! else. Every test runs with 1 and 3 workers over many interleaved resources.

mod common;

use std::path::{Path, PathBuf};

use common::http::*;
use common::*;
use serde_json::{json, Value};

const PIPELINE: &str = "
sources:
  - name: cpu_source
    meters: [cpu]
    sinks: [rates, raw]
sinks:
  - name: rates
    transformers:
      - name: rate_of_change
        parameters: {target: {name: cpu_rate, type: gauge}}
    publishers: ['file://RATES']
  - name: raw
    publishers: ['file://RAW']
";

fn sample(resource: usize, volume: &str, t: &str) -> String {
    format!(
        r#"{{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": {volume}, "user_id": "u", "project_id": "p", "resource_id": "vm-{resource}", "timestamp": "{t}", "resource_metadata": {{}}, "source": "openstack"}}"#
    )
}

/// 20 instances, 30 rounds each, interleaved: good samples every line but the `bad` ones,
/// which take the place of the sample at their line (1-based).
fn input(dir: &Path, bad: &[(usize, String)]) -> (PathBuf, usize) {
    let mut lines = Vec::new();
    for round in 0..30 {
        for r in 0..20 {
            let t = format!("2021-07-30T00:{round:02}:{r:02}");
            lines.push(sample(r, &format!("{}", 1000 * round + r), &t));
        }
    }
    for (line, text) in bad {
        lines[line - 1] = text.clone();
    }
    let path = dir.join("in.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, lines.len())
}

struct Run {
    summary: Value,
    rates: Vec<Value>,
    raw: Vec<Value>,
    dead: Vec<Value>,
}

fn run(dir: &Path, input: &Path, workers: &str, extra: &[&str]) -> Run {
    let out = dir.join(format!("w{workers}-{}", extra.join("_")));
    std::fs::create_dir_all(&out).unwrap();
    let (rates, raw, dead) = (
        out.join("rates.jsonl"),
        out.join("raw.jsonl"),
        out.join("dead.jsonl"),
    );
    let pipeline = out.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        PIPELINE
            .replace("RATES", rates.to_str().unwrap())
            .replace("RAW", raw.to_str().unwrap()),
    )
    .unwrap();
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--workers",
        workers,
        "--chunk-bytes",
        "2048",
        "--dead-letter",
        dead.to_str().unwrap(),
        "--summary-json",
    ];
    args.extend_from_slice(extra);
    let output = meterflow(&args);
    assert!(output.status.success(), "{}", text(&output));
    let lines = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Run {
        summary: serde_json::from_slice(&output.stdout).unwrap(),
        rates: lines(&rates),
        raw: lines(&raw),
        dead: lines(&dead),
    }
}

/// The dead-letter records as (line, reason), sorted.
fn dead_lines(run: &Run) -> Vec<(u64, String)> {
    let mut got: Vec<(u64, String)> = run
        .dead
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    got
}

/// Finding 2: a sample at year 9999 was stored at 1816, one at 2263 at 1678, an offset of
/// +99:00 was taken, all with `dropped: 0`. Now each is refused at input with its place.
#[test]
fn times_that_do_not_fit_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (41, sample(0, "2000", "9999-01-01T00:00:00")),
        (62, sample(1, "2001", "2263-01-01T00:00:00")),
        (103, sample(2, "3002", "2021-07-30T02:00:00+99:00")),
        (124, sample(3, "4003", "1600-01-01T00:00:00")),
        (205, sample(4, "9004", "2021-02-30T00:00:00")),
    ];
    let (path, n) = input(dir.path(), &bad);
    let mut outputs = Vec::new();
    for workers in ["1", "3"] {
        let run = run(dir.path(), &path, workers, &[]);
        assert_eq!(
            run.summary["dropped"]["bad_timestamp"], 5,
            "{}",
            run.summary
        );
        let want: Vec<(u64, String)> = bad
            .iter()
            .map(|(l, _)| (*l as u64, "bad_timestamp".to_owned()))
            .collect();
        assert_eq!(dead_lines(&run), want);
        let why = run.dead[0]["detail"].as_str().unwrap();
        assert!(
            why.contains("outside the years 1678 to 2199")
                || why.contains("offset")
                || why.contains("ISO 8601"),
            "{why}"
        );
        assert!(run
            .dead
            .iter()
            .any(|d| d["detail"].as_str().unwrap().contains("UTC offset")));
        assert_eq!(run.raw.len(), n - bad.len());
        // Nothing published carries a shifted year.
        for s in run.raw.iter().chain(&run.rates) {
            assert!(
                s["timestamp"].as_str().unwrap().starts_with("2021-07-30"),
                "{s}"
            );
        }
        outputs.push((run.rates.len(), run.raw.len()));
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// Finding 3: volumes "NaN", "Infinity", "-inf" and 1e400 passed rate_of_change and were
/// published as `"counter_volume": null`, uncounted. Now they are refused before any
/// transformer, counted and dead-lettered with their line.
#[test]
fn non_finite_volumes_never_reach_a_transformer() {
    let dir = tempfile::tempdir().unwrap();
    let t = |round: usize, r: usize| format!("2021-07-30T00:{round:02}:{r:02}");
    let bad = [
        (45, sample(4, "\"NaN\"", &t(2, 4))),
        (66, sample(5, "\"Infinity\"", &t(3, 5))),
        (87, sample(6, "\"-inf\"", &t(4, 6))),
        (108, sample(7, "\"1e400\"", &t(5, 7))),
        (129, sample(8, "1e400", &t(6, 8))),
    ];
    let (path, n) = input(dir.path(), &bad);
    for workers in ["1", "3"] {
        let run = run(dir.path(), &path, workers, &[]);
        let dropped = &run.summary["dropped"];
        // serde_json refuses the bare 1e400 as JSON; the other four are not finite numbers.
        assert_eq!(
            dropped["volume_not_a_number"].as_u64().unwrap()
                + dropped["bad_json"].as_u64().unwrap(),
            5,
            "{dropped}"
        );
        assert_eq!(run.dead.len(), 5);
        let lines: Vec<u64> = dead_lines(&run).iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [45, 66, 87, 108, 129]);
        assert_eq!(run.raw.len(), n - 5);
        for s in run.raw.iter().chain(&run.rates) {
            assert!(
                s["counter_volume"].as_f64().is_some_and(f64::is_finite),
                "{s}"
            );
        }
        // Each instance with a refused sample rates over the gap (the next sample's
        // predecessor is the one before the refused one): 20 × 29 rates less nothing.
        assert_eq!(run.rates.len(), 20 * 29 - 5, "{}", run.summary);
    }
}

/// Finding 5: one line over 1 MiB took quadratic time (4 MiB: over 120 s). Now reading is
/// linear, and a line over --max-line-bytes is skipped as it streams by, counted and its head
/// dead-lettered; the lines after it keep their numbers.
#[test]
fn long_lines_are_read_in_linear_time_and_skipped_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big = "y".repeat(6 << 20);
    let long_sample = sample(9, "9009", "2021-07-30T00:10:09").replace(
        "\"resource_metadata\": {}",
        &format!("\"resource_metadata\": {{\"blob\": \"{big}\"}}"),
    );
    let junk = format!("{{\"{}\": 1}}", "z".repeat(12 << 20));
    let bad = [(210, long_sample), (300, junk)];
    let (path, n) = input(dir.path(), &bad);
    for workers in ["1", "3"] {
        let run = run(dir.path(), &path, workers, &[]);
        assert_eq!(
            run.summary["dropped"]["line_too_long"], 1,
            "{}",
            run.summary
        );
        assert_eq!(dead_lines(&run), [(300, "line_too_long".to_owned())]);
        assert_eq!(run.dead[0]["record"].as_str().unwrap().len(), 4096);
        assert_eq!(run.raw.len(), n - 1);
        // A lower limit refuses the 6 MiB sample too.
        let run = run_low(dir.path(), &path, workers);
        assert_eq!(
            run.summary["dropped"]["line_too_long"], 2,
            "{}",
            run.summary
        );
        assert_eq!(
            dead_lines(&run),
            [
                (210, "line_too_long".to_owned()),
                (300, "line_too_long".to_owned())
            ]
        );
        assert_eq!(run.raw.len(), n - 2);
    }
}

fn run_low(dir: &Path, input: &Path, workers: &str) -> Run {
    run(dir, input, workers, &["--max-line-bytes", "1048576"])
}

/// Writes a definition storing every meter under policy `five` (5-minute buckets, `points` of
/// them) into `dir` and serves a store under `root` with it, plus `extra` flags: the
/// definition's path, the store's, and the engine.
fn serve_five(dir: &Path, root: &Path, points: u64, extra: &[&str]) -> (PathBuf, PathBuf, Engine) {
    let policy = json!({"name": "five", "aggregation_methods": ["mean"], "definition": [{"granularity": 300, "points": points}]});
    let definition = store_definition(dir, &policy, &[]);
    let store = root.join("store");
    let mut args = vec![
        "serve",
        definition.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--listen",
        "0",
    ];
    args.extend_from_slice(extra);
    let engine = Engine::start(&args, None);
    (definition, store, engine)
}

/// Finding 2 through the API: "inf" and 1e20 were stored at 2262, "nan" at 1970, year 9999
/// was refused as "before 1970", and one "inf" measure wiped a day of history (retention
/// runs from the newest point). Now each is a 400 with its reason and the history stays.
#[test]
fn api_times_that_do_not_fit_are_refused_and_the_history_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, engine) = serve_five(dir.path(), dir.path(), 288, &[]);
    let post = |measures: Value| {
        let body =
            json!({"host-1": {"load": {"archive_policy_name": "five", "measures": measures}}});
        engine.post(
            "/v1/batch/resources/metrics/measures?create_metrics=true",
            &body.to_string(),
        )
    };
    let day: Vec<Value> = (0..288)
        .map(|i| json!({"timestamp": 1_627_603_200 + i * 300, "value": i}))
        .collect();
    let (status, body) = post(Value::Array(day));
    assert_eq!(status, 202, "{body}");
    for (measure, reason) in [
        (json!({"timestamp": "inf", "value": 1}), "finite"),
        (json!({"timestamp": 1e20, "value": 1}), "1678 to 2199"),
        (json!({"timestamp": "nan", "value": 1}), "finite"),
        (
            json!({"timestamp": "9999-01-01T00:00:00", "value": 1}),
            "1678 to 2199",
        ),
        (
            json!({"timestamp": "2021-07-30T02:00:00+99:00", "value": 1}),
            "offset",
        ),
    ] {
        let (status, body) = post(json!([measure]));
        assert_eq!(status, 400, "{measure}: {body}");
        assert!(body.to_string().contains(reason), "{measure}: {body}");
    }
    let (status, body) =
        engine.get("/v1/resource/generic/host-1/metric/load/measures?refresh=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 288, "{body}");
    // Finding 8: a late measure POSTed to `serve` is counted (within /metrics' refresh of
    // 200 ms), and not as aggregated.
    let (status, body) = post(json!([{"timestamp": 1_627_603_200 - 86_400, "value": 5}]));
    assert_eq!(status, 202, "{body}");
    wait_for(&engine, "meterflow_late_measures_total", 1.0);
    let (_, metrics) = engine.get("/metrics");
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("meterflow_late_measures_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meterflow_measures_total 288\n"),
        "{metrics}"
    );
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}

/// Finding 5: ~1,000 nested parentheses in a `scale` passed `validate` and then aborted `run`
/// with a stack overflow; 10 k aborted `validate`; a definition naming /dev/zero or a FIFO
/// was read until memory ran out; a 100 k-deep YAML list took 19 s to refuse. Finding 8: a
/// directory as --input did not say which input, and a directory as the definition repeated
/// its cause. Each is now refused at once, saying where and why.
#[test]
fn definitions_and_inputs_are_bounded_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let scale = |depth: usize| {
        format!(
            "sources: [{{name: s, meters: [cpu], sinks: [k]}}]\nsinks:\n  - name: k\n    transformers:\n      - name: unit_conversion\n        parameters: {{target: {{scale: '{}volume{}'}}}}\n    publishers: ['file:///dev/null']\n",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    };
    for depth in [1_000, 10_000] {
        let p = write("deep-scale.yaml", &scale(depth));
        let out = meterflow(&["validate", p.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = text(&out);
        assert!(
            err.contains("levels deep") || err.contains("tokens"),
            "{err}"
        );
        assert!(err.contains("sinks[0].transformers[0]"), "{err}");
    }
    assert!(
        meterflow(&["validate", write("ok.yaml", &scale(50)).to_str().unwrap()])
            .status
            .success()
    );

    let flow = write(
        "flow.yaml",
        &format!("sources: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    );
    assert_fails_with(
        &["validate", flow.to_str().unwrap()],
        "nested more than 200 levels deep",
    );
    let block: String = (0..20_000)
        .map(|i| format!("{}- \n", " ".repeat(i)))
        .collect();
    let block = write("block.yaml", &format!("sources:\n{block}"));
    assert_fails_with(&["validate", block.to_str().unwrap()], "past column 1000");

    assert_fails_with(&["validate", "/dev/zero"], "not a regular file");
    let fifo = dir.path().join("fifo.yaml");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    assert_fails_with(&["validate", fifo.to_str().unwrap()], "not a regular file");
    let out = meterflow(&["validate", dir.path().to_str().unwrap()]);
    let err = text(&out);
    assert_eq!(err.matches("is a directory").count(), 1, "{err}");

    let pipeline = write(
        "p.yaml",
        &PIPELINE
            .replace("RATES", "/dev/null")
            .replace("RAW", "/dev/null"),
    );
    assert_fails_with(
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            dir.path().to_str().unwrap(),
        ],
        &format!("input {} is a directory", dir.path().display()),
    );
}

/// Finding 4: 200 connections trickling headers stayed open for the whole 40 s, and 1,100
/// idle sockets made the API unreachable with nothing logged; `--listen 0.0.0.0:PORT` without
/// a token started without a word. Now headers, bodies and idle keep-alive connections time
/// out, connections past the limit are closed and logged, and an open address needs a token
/// or --allow-open.
#[test]
fn the_api_bounds_connections_and_times_out_slow_clients() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (definition, store, engine) = serve_five(
        dir.path(),
        dir.path(),
        12,
        &[
            "--max-connections",
            "20",
            "--header-timeout",
            "1",
            "--body-timeout",
            "1",
        ],
    );
    let addr = engine.base.trim_start_matches("http://").to_owned();
    // Waits until the server closes `s` (EOF or reset); how long that took.
    let closed = |s: &mut TcpStream| {
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // 40 clients trickle half a request head; the first 20 hold every slot.
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /v1/metric HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    for s in &mut slow {
        assert!(
            closed(s) < Duration::from_secs(15),
            "a slow client was never closed"
        );
    }
    // With the slow ones gone the API answers again.
    let (status, _) = engine.get("/healthcheck");
    assert_eq!(status, 200);
    // A kept-alive connection left idle is closed after the header timeout.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed(&mut idle) < Duration::from_secs(15));
    // A body that never finishes arriving is cut off.
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(b"POST /v1/batch/resources/metrics/measures HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":").unwrap();
    assert!(closed(&mut body) < Duration::from_secs(15));
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
    assert!(err.contains("the --max-connections limit"), "{err}");

    // Beyond loopback: a token, or --allow-open.
    let open = [
        "serve",
        definition.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ];
    assert_fails_with(&open, "serves beyond this machine without a token");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args(open)
        .arg("--allow-open")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("http://") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.contains("without a token (--allow-open)"), "{seen}");
}

/// Follows `Link: <...>; rel="next"` from `path`, returning every item seen.
fn all_pages(engine: &Engine, path: &str) -> (Vec<Value>, usize) {
    let client = reqwest::blocking::Client::new();
    let mut url = format!("{}{path}", engine.base);
    let (mut items, mut pages) = (Vec::new(), 0);
    loop {
        let response = client.get(&url).send().unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let link = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Vec<Value> = response.json().unwrap();
        assert!(page.len() <= 1000);
        items.extend(page);
        pages += 1;
        match link {
            Some(l) => {
                let next = l
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
                url = format!("{}{next}", engine.base);
            }
            None => return (items, pages),
        }
    }
}

/// Finding 7: `GET /v1/metric` returned 20 MiB unpaginated. Every list now pages as
/// Gnocchi's and Aodh's do: at most 1,000 items (or `limit`), the next page by `marker`.
#[test]
fn every_list_is_paginated() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, engine) = serve_five(dir.path(), dir.path(), 12, &[]);
    let mut body = serde_json::Map::new();
    for r in 0..1250 {
        body.insert(
            format!("host-{r}"),
            json!({
                "load": {"archive_policy_name": "five", "measures": [{"timestamp": 1_627_603_200, "value": r}]},
                "temp": {"archive_policy_name": "five", "measures": [{"timestamp": 1_627_603_200, "value": r}]},
            }),
        );
    }
    let (status, answer) = engine.post(
        "/v1/batch/resources/metrics/measures?create_metrics=true",
        &Value::Object(body).to_string(),
    );
    assert_eq!(status, 202, "{answer}");
    let (metrics, pages) = all_pages(&engine, "/v1/metric");
    assert_eq!((metrics.len(), pages), (2500, 3));
    let mut ids: Vec<&str> = metrics.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2500);
    let (resources, pages) = all_pages(&engine, "/v1/resource/generic?limit=500");
    assert_eq!((resources.len(), pages), (1250, 3));
    let (status, body) = engine.get("/v1/metric?limit=0");
    assert_eq!(status, 400, "{body}");
    let (status, body) = engine.get("/v1/metric?marker=nope");
    assert_eq!(status, 400, "{body}");
    for name in ["a", "b", "c"] {
        let alarm = json!({"name": name, "type": "gnocchi_resources_threshold",
            "gnocchi_resources_threshold_rule": {"metric": "load", "resource_type": "generic", "resource_id": "host-1",
                "comparison_operator": "gt", "threshold": 1, "aggregation_method": "mean", "granularity": 300}});
        let (status, body) = engine.post("/v2/alarms", &alarm.to_string());
        assert_eq!(status, 201, "{body}");
    }
    let (alarms, pages) = all_pages(&engine, "/v2/alarms?limit=2");
    assert_eq!((alarms.len(), pages), (3, 2));
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}

/// Finding 3: `expression_error` (and any rejection after decoding) was logged without its
/// place and never dead-lettered. Now it is logged with `input:line` and written to
/// --dead-letter with the sample it was given, replayable as a bare sample line.
#[test]
fn rejections_after_decoding_are_placed_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        "sources: [{name: s, meters: [cpu], sinks: [k]}]\nsinks:\n  - name: k\n    transformers:\n      - name: unit_conversion\n        parameters: {target: {name: cpu_per_core, scale: 'volume / resource_metadata.n'}}\n    publishers: ['file:///dev/null']\n",
    )
    .unwrap();
    let mut lines = Vec::new();
    let mut zero = Vec::new();
    for i in 0..400 {
        let n = if i % 37 == 5 { 0 } else { 2 };
        if n == 0 {
            zero.push(i as u64 + 1);
        }
        lines.push(
            sample(
                i % 23,
                &format!("{i}"),
                &format!("2021-07-30T01:{:02}:{:02}", i / 60, i % 60),
            )
            .replace(
                "\"resource_metadata\": {}",
                &format!("\"resource_metadata\": {{\"n\": {n}}}"),
            ),
        );
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for workers in ["1", "3"] {
        let dead = dir.path().join(format!("dead-{workers}.jsonl"));
        let out = meterflow(&[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--workers",
            workers,
            "--chunk-bytes",
            "1024",
            "--dead-letter",
            dead.to_str().unwrap(),
            "--summary-json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            summary["dropped"]["expression_error"],
            zero.len(),
            "{summary}"
        );
        let records: Vec<Value> = std::fs::read_to_string(&dead)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut got: Vec<u64> = records
            .iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, zero);
        for r in &records {
            assert_eq!(r["reason"], "expression_error", "{r}");
            assert_eq!(r["input"], input.to_str().unwrap(), "{r}");
            let replay: Value = serde_json::from_str(r["record"].as_str().unwrap()).unwrap();
            assert_eq!(replay["resource_metadata"]["n"], 0, "{r}");
            assert_eq!(replay["counter_name"], "cpu", "{r}");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:{}: ", input.display(), zero[0])),
            "{err}"
        );
    }
}

/// Finding 3, at the later stages: a rate that overflowed to infinity was published as
/// `"counter_volume": null` and counted `invalid_measure` by the store with no place, and a
/// sample from 1960 that the store cannot hold was dropped with no place and never
/// dead-lettered. Now both are rejected with the input line that produced them and written
/// to --dead-letter (the sample the store or publisher was given), whatever the worker
/// count, and every other sample still arrives.
#[test]
fn overflows_and_samples_the_store_refuses_are_placed_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let rates = dir.path().join("rates.jsonl");
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "archive_policies: [{{name: p, aggregation_methods: [count], definition: [{{granularity: 60, points: 1000}}]}}]\n\
             archive_policy_rules: [{{name: all, metric_pattern: '*', archive_policy_name: p}}]\n\
             sources: [{{name: s, meters: [cpu], sinks: [rates, stored]}}]\n\
             sinks:\n  - name: rates\n    transformers:\n      - name: rate_of_change\n        parameters: {{target: {{name: cpu_rate, type: gauge}}}}\n    publishers: ['file://{}']\n\
             \x20 - name: stored\n    publishers: ['gnocchi://']\n",
            rates.display()
        ),
    )
    .unwrap();
    // 23 instances interleaved over 20 rounds; vm-3 jumps from -1.7e308 to 1.7e308 (a rate
    // of +inf) and vm-7 has one sample from 1960 in place of its round-9 sample.
    let mut lines = Vec::new();
    let (mut overflow_line, mut old_line) = (0, 0);
    for round in 0..20 {
        for r in 0..23 {
            let t = format!("2021-07-30T00:{round:02}:{r:02}");
            let mut volume = format!("{}", 1000 * round + r);
            if r == 3 && round == 4 {
                volume = "-1.7e308".into();
            }
            if r == 3 && round == 5 {
                volume = "1.7e308".into();
                overflow_line = lines.len() as u64 + 1;
            }
            if r == 7 && round == 9 {
                lines.push(sample(r, &volume, "1960-01-01T00:00:00"));
                old_line = lines.len() as u64;
                continue;
            }
            lines.push(sample(r, &volume, &t));
        }
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut outputs = Vec::new();
    for workers in ["1", "3"] {
        let (store, dead) = (
            dir.path().join(format!("store-{workers}")),
            dir.path().join(format!("dead-{workers}.jsonl")),
        );
        let _ = std::fs::remove_file(&rates);
        let out = meterflow(&[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--workers",
            workers,
            "--chunk-bytes",
            "1024",
            "--dead-letter",
            dead.to_str().unwrap(),
            "--summary-json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["dropped"]["invalid_measure"], 2, "{summary}");
        let mut records: Vec<(u64, String, Value)> = std::fs::read_to_string(&dead)
            .unwrap()
            .lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).unwrap();
                assert_eq!(r["input"], input.to_str().unwrap(), "{r}");
                let record = serde_json::from_str(r["record"].as_str().unwrap()).unwrap();
                (
                    r["line"].as_u64().unwrap(),
                    r["reason"].as_str().unwrap().to_owned(),
                    record,
                )
            })
            .collect();
        records.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(
            records
                .iter()
                .map(|r| (r.0, r.1.as_str()))
                .collect::<Vec<_>>(),
            [
                (overflow_line, "invalid_measure"),
                (old_line, "invalid_measure"),
                (old_line, "out_of_order"),
            ],
            "{records:?}"
        );
        // Each with what it was given: the input sample that overflowed (replayable), and
        // the 1960 sample, which rate_of_change also drops (older than vm-7's last).
        assert_eq!(records[0].2["counter_volume"], 1.7e308);
        assert_eq!(records[0].2["resource_id"], "vm-3");
        for r in &records[1..] {
            assert_eq!(r.2["timestamp"], "1960-01-01T00:00:00");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        for line in [overflow_line, old_line] {
            assert!(
                err.contains(&format!("{}:{line}: ", input.display())),
                "{err}"
            );
        }
        let mut published: Vec<String> = std::fs::read_to_string(&rates)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let nulls: Vec<&String> = published
            .iter()
            .filter(|l| l.contains("\"counter_volume\": null"))
            .collect();
        assert!(nulls.is_empty(), "{nulls:?}");
        // 23 first samples have no predecessor, vm-7's 1960 one is out of order, vm-3's
        // overflow is refused: every other sample gives a rate.
        assert_eq!(published.len(), 20 * 23 - 23 - 1 - 1, "{summary}");
        published.sort();
        outputs.push(published);
        // vm-7 stored 19 of its 20 samples, vm-3 all 20.
        for (resource, count) in [("vm-7", 19.0), ("vm-3", 20.0)] {
            let stored = meterflow(&[
                "measures",
                "--store",
                store.to_str().unwrap(),
                "--resource",
                resource,
                "--metric",
                "cpu",
                "--aggregation",
                "count",
                "--granularity",
                "60",
            ]);
            assert!(stored.status.success(), "{}", text(&stored));
            let points: Vec<(String, f64, f64)> = serde_json::from_slice(&stored.stdout).unwrap();
            assert_eq!(
                points.iter().map(|p| p.2).sum::<f64>(),
                count,
                "{resource} {points:?}"
            );
        }
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// Finding 7: 100 k metrics created in 20 POSTs cost 690 MiB, with no quota. Now each
/// project (X-Project-Id) may own at most --quota-metrics metrics, --quota-resources
/// resources and --quota-alarms alarms before the API refuses to create more (403); measures
/// for what exists are still taken.
#[test]
fn the_api_creates_within_per_project_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, engine) = serve_five(
        dir.path(),
        dir.path(),
        12,
        &[
            "--quota-metrics",
            "5",
            "--quota-resources",
            "3",
            "--quota-alarms",
            "2",
        ],
    );
    let client = reqwest::blocking::Client::new();
    let post = |project: &str, path: &str, body: Value| -> (u16, String) {
        let r = client
            .post(format!("{}{path}", engine.base))
            .header("x-project-id", project)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let measures = |metrics: &[(&str, &str)]| {
        let mut body = serde_json::Map::new();
        for (resource, metric) in metrics {
            let entry = body
                .entry(resource.to_string())
                .or_insert_with(|| json!({}));
            entry[*metric] = json!({"archive_policy_name": "five", "measures": [{"timestamp": 1_627_603_200, "value": 1}]});
        }
        Value::Object(body)
    };
    let batch = "/v1/batch/resources/metrics/measures?create_metrics=true";
    let ok = post(
        "p1",
        batch,
        measures(&[("a", "m1"), ("a", "m2"), ("b", "m1"), ("b", "m2")]),
    );
    assert_eq!(ok.0, 202, "{ok:?}");
    let over = post("p1", batch, measures(&[("a", "m3"), ("a", "m4")]));
    assert_eq!(over.0, 403, "{over:?}");
    assert!(
        over.1.contains("Quota exceeded for metrics") && over.1.contains("--quota-metrics"),
        "{over:?}"
    );
    // Measures for metrics that exist are taken; one more metric fits.
    assert_eq!(
        post("p1", batch, measures(&[("a", "m1"), ("c", "m1")])).0,
        202
    );
    let resources = post(
        "p2",
        batch,
        measures(&[("x", "m"), ("y", "m"), ("z", "m"), ("w", "m")]),
    );
    assert_eq!(resources.0, 403, "{resources:?}");
    assert!(
        resources.1.contains("Quota exceeded for resources"),
        "{resources:?}"
    );
    assert_eq!(
        post("p2", batch, measures(&[("x", "m"), ("y", "m"), ("z", "m")])).0,
        202
    );

    let alarm = |name: &str| {
        json!({"name": name, "type": "gnocchi_resources_threshold",
            "gnocchi_resources_threshold_rule": {"metric": "m1", "resource_type": "generic", "resource_id": "a",
                "comparison_operator": "gt", "threshold": 1, "aggregation_method": "mean", "granularity": 300}})
    };
    assert_eq!(post("p1", "/v2/alarms", alarm("a1")).0, 201);
    assert_eq!(post("p1", "/v2/alarms", alarm("a2")).0, 201);
    let over = post("p1", "/v2/alarms", alarm("a3"));
    assert_eq!(over.0, 403, "{over:?}");
    assert!(
        over.1.contains("Alarm quota exceeded for project p1"),
        "{over:?}"
    );
    assert_eq!(post("p2", "/v2/alarms", alarm("a3")).0, 201);
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}

/// Finding 6: while the disk was full, API writes hung until the 60 s retry limit and then the
/// engine exited, and `serve` could not start. Now the engine waits for space (as long as it
/// takes), answers writes 503 with Retry-After meanwhile, goes on serving reads, resumes by
/// itself, and `serve` starts on a full disk serving reads. The store lies on
/// a small tmpfs, a real full disk; mounting one needs root, so elsewhere the test says it is
/// skipped.
#[test]
fn a_full_disk_pauses_writes_and_the_engine_resumes_by_itself() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=3m",
            "tmpfs",
            fs.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let (definition, store, engine) = serve_five(dir.path(), &fs, 12, &[]);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let post = |engine: &Engine, round: usize| {
        let mut body = serde_json::Map::new();
        for r in 0..50 {
            body.insert(
                format!("host-{round}-{r}"),
                json!({"load": {"archive_policy_name": "five", "measures": [{"timestamp": 1_627_603_200 + round, "value": r}]}}),
            );
        }
        client
            .post(format!(
                "{}/v1/batch/resources/metrics/measures?create_metrics=true",
                engine.base
            ))
            .header("content-type", "application/json")
            .body(Value::Object(body).to_string())
            .send()
    };
    assert_eq!(post(&engine, 0).unwrap().status(), 202);
    // Fill the disk.
    let filler = fs.join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .stderr(std::process::Stdio::null())
        .status();
    let started = Instant::now();
    let mut refused = None;
    for round in 1.. {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no write was refused while the disk was full"
        );
        if let Ok(r) = post(&engine, round) {
            if r.status() == 503 {
                refused = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert!(r.text().unwrap().contains("disk under the store is full"));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(refused.as_deref(), Some("30"));
    // Reads go on.
    let (status, body) = engine.get("/v1/metric?limit=10");
    assert_eq!(status, 200, "{body}");
    // Stopped while a commit waits for space, it gives up that commit (never acknowledged)
    // and says so, rather than waiting forever.
    let (_, err) = engine.terminate();
    assert!(err.contains("the disk is full"), "{err}");
    // `serve` starts on the full disk: reads, and writes refused until there is space.
    let engine = Engine::start(
        &[
            "serve",
            definition.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "0",
        ],
        None,
    );
    let (status, body) = engine.get("/v1/metric?limit=10");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 10, "{body}");
    assert_eq!(post(&engine, 2000).unwrap().status(), 503);
    // Space again: writes are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the engine did not resume"
        );
        if post(&engine, 1000).is_ok_and(|r| r.status() == 202) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, body) = engine.get("/v1/metric?limit=1000");
    assert_eq!(status, 200, "{body}");
    assert!(body.as_array().unwrap().len() > 50, "{body}");
    let (clean, err) = engine.terminate();
    assert!(clean, "{err}");
}
