//! The CLI end to end: bad input, summaries, stdin, list, bench.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const PIPELINE: &str = "
sources:
  - name: cpu_source
    meters: [cpu]
    sinks: [cpu_sink]
sinks:
  - name: cpu_sink
    transformers:
      - name: delta
    publishers: ['file://OUTPUT']
";

fn sample(volume: &str, t: &str) -> String {
    format!(
        r#"{{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": {volume}, "user_id": "u", "project_id": "p", "resource_id": "vm-1", "timestamp": "{t}", "resource_metadata": {{}}, "source": "openstack"}}"#
    )
}

struct Setup {
    dir: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    output: std::path::PathBuf,
}

fn setup(pipeline: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let pipeline_path = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline_path,
        pipeline.replace("file://OUTPUT", &format!("file://{}", output.display())),
    )
    .unwrap();
    Setup {
        dir,
        pipeline: pipeline_path,
        output,
    }
}

fn volumes(path: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["counter_volume"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn bad_lines_are_reported_by_line_and_good_samples_survive() {
    let s = setup(PIPELINE);
    let input = s.dir.path().join("in.jsonl");
    let lines = [
        sample("10", "2021-07-30T02:00:00"),
        "{this is not json".to_owned(),
        r#"{"hello": "world"}"#.to_owned(),
        sample("null", "2021-07-30T02:00:30"),
        sample("\"twelve\"", "2021-07-30T02:00:40"),
        sample("25", "2021-07-30T02:01:00").replace(r#""resource_id": "vm-1", "#, ""),
        r#"{"event_type": "compute.instance.create.start", "payload": {}}"#.to_owned(),
        sample("25", "2021-07-30T02:01:00"),
        String::new(),
        sample("\"40\"", "2021-07-30T02:02:00"),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let dead = s.dir.path().join("dead.jsonl");
    let out = meterflow(&[
        "run",
        s.pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--summary-json",
        "--dead-letter",
        dead.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(volumes(&s.output), [15.0, 15.0], "{}", text(&out));
    // Every rejected record is kept with its line and reason.
    let kept: Vec<(u64, String)> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(!v["record"].as_str().unwrap().is_empty());
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (2, "bad_json"),
        (3, "not_a_notification"),
        (4, "volume_missing"),
        (5, "volume_not_a_number"),
        (6, "missing_field"),
        (7, "no_meter_definition"),
    ]
    .iter()
    .map(|(l, r)| (*l, r.to_string()))
    .collect();
    assert_eq!(kept, expected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "in.jsonl:2: not valid JSON",
        "in.jsonl:3: a JSON object with neither",
        "in.jsonl:4: sample cpu of resource vm-1 at 2021-07-30T02:00:30: counter_volume is missing or null",
        "in.jsonl:5: sample cpu of resource vm-1 at 2021-07-30T02:00:40: counter_volume \"twelve\" is not a number",
        "in.jsonl:6: sample cpu of resource <no resource_id>",
        "in.jsonl:7: notification \"compute.instance.create.start\" skipped",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?}\n{}", text(&out));
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], 9);
    assert_eq!(summary["samples_in"], 6);
    assert_eq!(summary["dropped"]["bad_json"], 1);
    assert_eq!(summary["dropped"]["not_a_notification"], 1);
    assert_eq!(summary["dropped"]["volume_missing"], 1);
    assert_eq!(summary["dropped"]["volume_not_a_number"], 1);
    assert_eq!(summary["dropped"]["missing_field"], 1);
    assert_eq!(summary["dropped"]["no_meter_definition"], 1);
    assert_eq!(summary["sinks"]["cpu_sink"]["in"], 3);
    assert_eq!(summary["sinks"]["cpu_sink"]["out"], 2);
}

#[test]
fn text_summary_names_sinks_and_reasons() {
    let s = setup(PIPELINE);
    let input = s.dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n",
            sample("1", "2021-07-30T02:00:00"),
            sample("null", "2021-07-30T02:01:00")
        ),
    )
    .unwrap();
    let out = meterflow(&[
        "run",
        s.pipeline.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 lines, 2 notifications, 2 samples"),
        "{stderr}"
    );
    assert!(stderr.contains("sink cpu_sink: 1 in, 0 out"), "{stderr}");
    assert!(stderr.contains("volume_missing: 1"), "{stderr}");
    assert!(stderr.contains("pass --dead-letter FILE"), "{stderr}");
}

#[test]
fn stdin_input_and_multiple_inputs_in_order() {
    let s = setup(PIPELINE);
    let first = s.dir.path().join("a.jsonl");
    std::fs::write(&first, sample("100", "2021-07-30T02:00:00") + "\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args([
            "run",
            s.pipeline.to_str().unwrap(),
            "--input",
            first.to_str().unwrap(),
            "--input",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", sample("150", "2021-07-30T02:01:00")).unwrap();
    write!(stdin, "{}", sample("175", "2021-07-30T02:02:00")).unwrap(); // no final newline
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(volumes(&s.output), [50.0, 25.0]);
}

#[test]
fn whole_run_failures_exit_non_zero_with_one_clear_line() {
    let s = setup(PIPELINE);
    let pipeline = s.pipeline.to_str().unwrap();
    let missing = s.dir.path().join("missing.jsonl");
    assert_fails_with(
        &["run", pipeline, "--input", missing.to_str().unwrap()],
        "cannot open input",
    );
    assert_fails_with(
        &["run", pipeline, "--input", "ftp://host/file"],
        "unknown scheme",
    );
    assert_fails_with(
        &["run", pipeline, "--input", "-", "--workers", "0"],
        "--workers must be at least 1",
    );

    let broken = s.dir.path().join("broken.yaml");
    std::fs::write(&broken, "sources: [\n").unwrap();
    let broken = broken.to_str().unwrap();
    assert_fails_with(&["validate", broken], "not valid YAML");
    assert_fails_with(&["run", broken, "--input", "-"], "not valid YAML");

    let nope = s.dir.path().join("nope.yaml");
    assert_fails_with(
        &["validate", nope.to_str().unwrap()],
        "cannot read pipeline definition",
    );
}

#[test]
fn unwritable_publisher_fails_before_reading() {
    let s = setup(&PIPELINE.replace("file://OUTPUT", "file:///nonexistent-dir/out.jsonl"));
    assert_fails_with(
        &["run", s.pipeline.to_str().unwrap(), "--input", "-"],
        "directory exists",
    );
}

#[test]
fn validate_reports_every_problem() {
    let s = setup(
        "
sources:
  - name: a
    meters: [cpu, '!vcpus']
    sinks: [missing]
sinks:
  - name: k
    transformers:
      - name: rate_of_change
        parameters: {target: {scale: '100 / '}}
      - name: no_such
    publishers: ['udp://host']
",
    );
    let out = meterflow(&["validate", s.pipeline.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("5 problems"), "{stderr}");
    for needle in [
        "sources[0].meters",
        "sources[0].sinks[0]: Dangling sink missing",
        "sinks[0].transformers[0].parameters.target.scale",
        "sinks[0].transformers[1].name: No transformer named no_such loaded; known transformers: accumulator, aggregator, arithmetic, delta, rate_of_change, unit_conversion",
        "sinks[0].publishers[0]: publisher \"udp\" is not yet supported",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
}

#[test]
fn list_names_every_registry_entry() {
    let out = meterflow(&["list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "rate_of_change",
        "delta",
        "accumulator",
        "aggregator",
        "arithmetic",
        "unit_conversion",
        "file://",
        "log://",
        "kafka://",
        "poll://",
    ] {
        assert!(stdout.contains(name), "{name} missing from\n{stdout}");
    }
}

#[test]
fn bench_runs_and_reports_a_rate() {
    let out = meterflow(&[
        "bench",
        "--samples",
        "20000",
        "--resources",
        "100",
        "--workers",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("samples/s:"), "{stdout}");
    assert!(stdout.contains("20000 samples"), "{stdout}");
    assert!(stdout.contains("machine:"), "{stdout}");
}

#[test]
fn host_pollster_runs_the_ceilometer_cpu_util_pipeline_on_live_data() {
    let pipeline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rate-and-delta.yaml"
    ))
    .unwrap()
    .replace("file://meterflow-samples.jsonl", "file://OUTPUT");
    let s = setup(&pipeline);
    let out = meterflow(&[
        "run",
        s.pipeline.to_str().unwrap(),
        "--input",
        "poll://host?interval=0.5&count=3",
        "--summary-json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = std::fs::read_to_string(&s.output).unwrap();
    let util: Vec<f64> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["counter_name"] == "cpu_util")
        .map(|v| v["counter_volume"].as_f64().unwrap())
        .collect();
    // Three polls: the first sets the baseline, the next two give a rate each.
    assert_eq!(util.len(), 2, "{lines}");
    // A percentage, give or take the 10 ms resolution of /proc/stat over a 0.5 s interval.
    assert!(util.iter().all(|u| (0.0..=110.0).contains(u)), "{util:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], 3);
}

/// A real HTTP server on 127.0.0.1 answering each GET with the next of `bodies` (status and
/// JSON text), then 404; returns its address.
fn serve_json(bodies: Vec<(u16, String)>) -> String {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut bodies = bodies.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, body) = bodies.next().unwrap_or((404, "{}".into()));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// The HTTP-JSON pollster: each poll's document becomes a notification that inline meter
/// definitions turn into a sample, which then goes through rate_of_change; a failing poll (an
/// error status, a body that is not JSON) is logged and skipped.
#[test]
fn http_pollster_feeds_meter_definitions_and_transformers() {
    let doc = |requests: u64| format!(r#"{{"node": "web-1", "requests": {requests}}}"#);
    let addr = serve_json(vec![
        (200, doc(100)),
        (500, "{\"error\": \"busy\"}".into()),
        (200, doc(160)),
        (200, "not json".into()),
        (200, doc(220)),
    ]);
    let s = setup(
        r#"
sources:
  - {name: web, meters: [http.requests], sinks: [rate]}
sinks:
  - name: rate
    transformers:
      - name: rate_of_change
        parameters:
          source: {}
          target: {name: http.requests.rate, unit: request/s, type: gauge}
    publishers: ['file://OUTPUT']
meter_definitions:
  metric:
    - name: http.requests
      event_type: node.stats
      type: cumulative
      unit: request
      volume: $.payload.requests
      resource_id: $.payload.node
"#,
    );
    let out = meterflow(&[
        "run",
        s.pipeline.to_str().unwrap(),
        "--input",
        &format!("poll://http/{addr}/stats?interval=0.3&count=5&event_type=node.stats"),
        "--summary-json",
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("answered 500"), "{stderr}");
    assert!(stderr.contains("the body is not JSON"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], 3, "{summary}");
    assert_eq!(summary["samples_in"], 3, "{summary}");
    let rates: Vec<f64> = std::fs::read_to_string(&s.output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            assert_eq!(v["counter_name"], "http.requests.rate");
            assert_eq!(v["resource_id"], "web-1");
            v["counter_volume"].as_f64().unwrap()
        })
        .collect();
    // The first poll sets the baseline; then 60 requests per two intervals (0.6 s): ≈ 100/s.
    assert_eq!(rates.len(), 2, "{rates:?}");
    assert!(
        rates.iter().all(|r| (30.0..=110.0).contains(r)),
        "{rates:?}"
    );
}

/// Without --input, the definition's polling sources poll: here a resource URL (polling.yaml's
/// `interval` and `resources`); without any polling source, a run without input is refused.
#[test]
fn polling_sources_poll_when_no_input_is_given() {
    let addr = serve_json(vec![
        (200, r#"{"node": "web-1", "requests": 10}"#.into()),
        (200, r#"{"node": "web-1", "requests": 15}"#.into()),
    ]);
    let s = setup(&format!(
        r#"
sources:
  - name: web
    interval: 1
    resources: ['poll://http/{addr}/stats?event_type=node.stats&count=2&interval=0.2']
    meters: [http.requests]
    sinks: [out]
sinks:
  - {{name: out, publishers: ['file://OUTPUT']}}
meter_definitions:
  metric:
    - {{name: http.requests, event_type: node.stats, type: cumulative, unit: request, volume: $.payload.requests, resource_id: $.payload.node}}
"#
    ));
    let out = meterflow(&["run", s.pipeline.to_str().unwrap(), "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("polling poll http://{addr}/stats every 0.2s")),
        "{}",
        text(&out)
    );
    let volumes: Vec<i64> = std::fs::read_to_string(&s.output)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["counter_volume"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(volumes, [10, 15]);

    let plain = setup("sources: [{name: a, meters: ['*'], sinks: [o]}]\nsinks: [{name: o, publishers: ['file://OUTPUT']}]\n");
    assert_fails_with(
        &["run", plain.pipeline.to_str().unwrap()],
        "no input: give --input URL",
    );
    let bad = setup("sources: [{name: a, interval: 5, resources: ['snmp://h'], meters: ['*'], sinks: [o]}]\nsinks: [{name: o, publishers: ['file://OUTPUT']}]\n");
    assert_fails_with(
        &["validate", bad.pipeline.to_str().unwrap()],
        "sources[0].resources[0]: \"snmp://h\" is not a resource meterflow can poll",
    );
}

/// A series quiet for longer than `--forget-after` of event time starts afresh (its state
/// is released and counted); `--forget-after 0` keeps every series, as Ceilometer does.
/// Run with 1 and 3 workers: what is forgotten depends on each series' own times only.
#[test]
fn quiet_series_are_forgotten_after_the_span() {
    let s = setup(PIPELINE);
    let input = s.dir.path().join("in.jsonl");
    // vm-1: 10, 15 at day 1; then 40, 42 two days later. 20 other instances only on day 1,
    // and a clock (vm-x) that runs on to day 3, so event time moves past them.
    let mut lines = vec![
        sample("10", "2021-07-01T00:00:00"),
        sample("15", "2021-07-01T00:01:00"),
    ];
    for r in 0..20 {
        for (v, t) in [(1, "2021-07-01T00:00:00"), (2, "2021-07-01T00:01:00")] {
            lines.push(sample(&v.to_string(), t).replace("vm-1", &format!("vm-{}", r + 100)));
        }
    }
    for day in 1..=3 {
        let t = format!("2021-07-0{}T00:00:00", day + 1);
        lines.push(sample(&day.to_string(), &t).replace("vm-1", "vm-x"));
    }
    lines.push(sample("40", "2021-07-03T00:00:00"));
    lines.push(sample("42", "2021-07-03T00:01:00"));
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    for workers in ["1", "3"] {
        for (forget, want, forgotten) in [
            ("86400", vec![5.0, 2.0], true),
            ("0", vec![5.0, 25.0, 2.0], false),
        ] {
            let _ = std::fs::remove_file(&s.output);
            let out = meterflow(&[
                "run",
                s.pipeline.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--workers",
                workers,
                "--forget-after",
                forget,
                "--summary-json",
                "--no-progress",
            ]);
            assert!(out.status.success(), "{}", text(&out));
            let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let vm1: Vec<f64> = std::fs::read_to_string(&s.output)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["resource_id"] == "vm-1")
                .map(|v| v["counter_volume"].as_f64().unwrap())
                .collect();
            assert_eq!(vm1, want, "--forget-after {forget}, {workers} workers");
            assert_eq!(
                summary["forgotten"].as_u64().unwrap() > 0,
                forgotten,
                "--forget-after {forget}, {workers} workers: {summary}"
            );
        }
    }
}
