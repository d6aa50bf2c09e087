//! The embedded store, black box through the CLI: Gnocchi's reference cases through
//! `meterflow run ... --store` and `meterflow measures`, with 1 and 4 workers; replays and
//! kill-and-rerun give the same measures; bad input and bad stores fail clearly; the Parquet
//! files open in pyarrow.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A definition with the case's policy and one `gnocchi://` publisher using it.
fn pipeline_for(policy: &Path, dir: &Path) -> PathBuf {
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policy).unwrap()).unwrap();
    store_definition(dir, &policy, &[])
}

fn resource_of(input: &Path) -> String {
    let line = std::fs::read_to_string(input).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    first["payload"]["samples"][0]["resource_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn run(pipeline: &Path, input: &Path, store: &Path, workers: &str) {
    let out = run_into_store(pipeline, input, store, &["--workers", workers]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `meterflow run PIPELINE --input INPUT --store STORE` must fail with `needle` in its stderr.
fn run_fails_with(pipeline: &Path, input: &Path, store: &Path, needle: &str) {
    assert_failed_with(&run_into_store(pipeline, input, store, &[]), needle);
}

fn measures(
    store: &Path,
    resource: &str,
    metric: &str,
    method: &str,
    g: &str,
) -> Vec<(String, f64, f64)> {
    let out = meterflow(&[
        "measures",
        "--store",
        store.to_str().unwrap(),
        "--resource",
        resource,
        "--metric",
        metric,
        "--aggregation",
        method,
        "--granularity",
        g,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(expected: &GnocchiExpected, store: &Path, resource: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (method, by_granularity) in expected {
        for (g, points) in by_granularity {
            let got = measures(store, resource, "cpu_util", method, g);
            if got.len() != points.len() {
                problems.push(format!(
                    "{method}@{g}: expected {} points, got {}",
                    points.len(),
                    got.len()
                ));
                continue;
            }
            for (got, want) in got.iter().zip(points) {
                if !same_point(got, want) {
                    problems.push(format!("{method}@{g}: expected {want:?}, got {got:?}"));
                }
            }
        }
    }
    problems
}

#[test]
fn gnocchi_reference_cases_pass_through_run_and_measures() {
    let mut failures = Vec::new();
    for case in gnocchi_cases() {
        let expected: GnocchiExpected =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let input = case.join("input.jsonl");
        let resource = resource_of(&input);
        for workers in ["1", "4"] {
            let dir = tempfile::tempdir().unwrap();
            let pipeline = pipeline_for(&case.join("archive_policy.json"), dir.path());
            let store = dir.path().join("store");
            run(&pipeline, &input, &store, workers);
            let mut problems = check(&expected, &store, &resource);
            // The same input again into the same store changes nothing (no double counting).
            run(&pipeline, &input, &store, "2");
            problems.extend(
                check(&expected, &store, &resource)
                    .into_iter()
                    .map(|p| format!("after replay: {p}")),
            );
            if !problems.is_empty() {
                problems.truncate(10);
                failures.push(format!(
                    "{} with {workers} workers:\n{}",
                    case.display(),
                    problems.join("\n")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Synthetic polling notifications: `resources` instances, one cpu_util sample each per
/// 10 s step, `steps` steps, one notification per step.
fn synthetic(path: &Path, resources: usize, steps: usize, from_step: usize) {
    polling(path, resources, from_step..from_step + steps, |_, _| true);
}

/// One polling notification per 10 s step of `steps`, with a cpu_util sample of each of
/// `resources` instances that `speaks(step, instance)`.
fn polling(
    path: &Path,
    resources: usize,
    steps: std::ops::Range<usize>,
    speaks: impl Fn(usize, usize) -> bool,
) {
    let mut text = String::new();
    for step in steps {
        let t = 1_627_610_400 + step as i64 * 10;
        let (h, m, s) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
        let samples: Vec<String> = (0..resources)
            .filter(|&r| speaks(step, r))
            .map(|r| {
                let v = ((step * 7 + r * 13) % 100) as f64 + 0.25;
                format!(r#"{{"counter_name": "cpu_util", "counter_type": "gauge", "counter_unit": "%", "counter_volume": {v}, "user_id": "u", "project_id": "p", "resource_id": "vm-{r}/disk", "timestamp": "2021-07-30T{h:02}:{m:02}:{s:02}.5", "resource_metadata": {{}}, "source": "openstack"}}"#)
            })
            .collect();
        text.push_str(&format!(
            r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "p", "message_id": "m{step}", "timestamp": "2021-07-30 00:00:00", "payload": {{"samples": [{}]}}}}"#,
            samples.join(", ")
        ));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

const POLICY: &str = r#"{"name": "p3", "back_window": 1, "aggregation_methods": ["mean", "sum", "count", "max", "last", "std", "rate:sum"], "definition": [{"granularity": 60, "points": 1000}, {"granularity": 300, "points": 100}]}"#;

type Snapshot = Vec<(String, Vec<(String, f64, f64)>)>;

fn snapshot(store: &Path, resources: usize) -> Snapshot {
    let mut all = Vec::new();
    for r in (0..resources).step_by(7) {
        for method in ["mean", "sum", "count", "max", "last", "std", "rate:sum"] {
            for g in ["60", "300"] {
                let points = measures(store, &format!("vm-{r}/disk"), "cpu_util", method, g);
                all.push((format!("vm-{r} {method}@{g}"), points));
            }
        }
    }
    all
}

/// The first difference between two snapshots, readable.
fn same(got: &Snapshot, want: &Snapshot, what: &str) {
    for ((series, a), (_, b)) in got.iter().zip(want) {
        if a.len() != b.len() {
            panic!("{what}: {series}: {} points, expected {}", a.len(), b.len());
        }
        // Values within 1e-12 relative: the resumed metric may recompute a bucket the
        // uninterrupted one kept as running sums (same measures, another summation order).
        let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
        if let Some((x, y)) = a
            .iter()
            .zip(b)
            .find(|(x, y)| x.0 != y.0 || x.1 != y.1 || !close(x.2, y.2))
        {
            panic!("{what}: {series}: got {x:?}, expected {y:?}");
        }
    }
}

#[test]
fn replays_and_killed_runs_leave_the_same_measures() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let pipeline = pipeline_for(&policy, dir.path());
    let (resources, steps) = (40, 600);
    let first = dir.path().join("first.jsonl");
    let all = dir.path().join("all.jsonl");
    synthetic(&first, resources, steps / 2, 0);
    synthetic(&all, resources, steps, 0);

    let clean = dir.path().join("clean");
    run(&pipeline, &all, &clean, "2");
    let want = snapshot(&clean, resources);
    assert!(want.iter().all(|s| !s.1.is_empty()));

    // Half the input, then all of it: the replayed half is not counted twice.
    let replayed = dir.path().join("replayed");
    run(&pipeline, &first, &replayed, "1");
    run(&pipeline, &all, &replayed, "4");
    same(&snapshot(&replayed, resources), &want, "replay");

    // Killed mid-run (SIGKILL), then run again: nothing half-written shows, nothing is lost.
    let killed = dir.path().join("killed");
    run(&pipeline, &first, &killed, "2");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args([
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            all.to_str().unwrap(),
            "--store",
            killed.to_str().unwrap(),
            "--workers",
            "2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let _ = child.kill();
    let _ = child.wait();
    run(&pipeline, &all, &killed, "3");
    same(&snapshot(&killed, resources), &want, "kill and rerun");
}

/// Polling notifications every 10 s for 3 hours of event time: instance `r` reports in
/// 30-minute turns (quiet every third turn, then back, often inside the same hour bucket),
/// and a third of the instances stop for good after 2 hours.
fn in_turns(path: &Path, resources: usize) {
    polling(path, resources, 0..1080, |step, r| {
        (step / 180 + r) % 3 != 0 && (step < 720 || r % 3 != 1)
    });
}

#[test]
fn quiet_metrics_leave_memory_and_resume_from_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        POLICY.replace(
            r#"{"granularity": 300, "points": 100}"#,
            r#"{"granularity": 3600, "points": 100}"#,
        ),
    )
    .unwrap();
    let pipeline = pipeline_for(&policy, dir.path());
    let resources = 30;
    let input = dir.path().join("in.jsonl");
    in_turns(&input, resources);
    let snapshot = |store: &Path| {
        let mut all = Vec::new();
        // (Every other instance: each `measures` is a process.)
        for r in (0..resources).step_by(2) {
            for method in ["mean", "std", "count", "rate:sum"] {
                for g in ["60", "3600"] {
                    let points = measures(store, &format!("vm-{r}/disk"), "cpu_util", method, g);
                    all.push((format!("vm-{r} {method}@{g}"), points));
                }
            }
        }
        all
    };
    let mut want = None;
    for workers in ["1", "3"] {
        for forget in ["0", "600"] {
            let store = dir.path().join(format!("store-{workers}-{forget}"));
            let out = run_into_store(
                &pipeline,
                &input,
                &store,
                &[
                    "--workers",
                    workers,
                    "--forget-after",
                    forget,
                    "--chunk-bytes",
                    "100000",
                    "--summary-json",
                    "--no-progress",
                ],
            );
            assert!(out.status.success(), "{}", text(&out));
            let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let (released, reloaded) = (
                summary["metrics_released"].as_u64().unwrap(),
                summary["metrics_reloaded"].as_u64().unwrap(),
            );
            let what = format!("{workers} workers, --forget-after {forget}: {summary}");
            if forget == "0" {
                assert_eq!((released, reloaded), (0, 0), "{what}");
                assert_eq!(summary["metrics_open"], resources, "{what}");
            } else {
                // Every instance goes quiet for 30 minutes at least once, and most come back.
                assert!(released >= resources as u64, "{what}");
                assert!(reloaded >= resources as u64 / 2, "{what}");
                assert!(
                    summary["metrics_open"].as_u64().unwrap() < resources as u64,
                    "{what}"
                );
            }
            let got = snapshot(&store);
            assert!(got.iter().all(|s| !s.1.is_empty()), "{what}");
            match &want {
                None => want = Some(got),
                Some(want) => same(&got, want, &what),
            }
        }
    }
}

#[test]
fn bad_measures_and_bad_stores_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let pipeline = pipeline_for(&policy, dir.path());
    let input = dir.path().join("in.jsonl");
    let sample = |v: &str, t: &str| {
        format!(
            r#"{{"counter_name": "cpu_util", "counter_type": "gauge", "counter_unit": "%", "counter_volume": {v}, "resource_id": "vm", "timestamp": "{t}"}}"#
        )
    };
    let lines = [
        sample("1.5", "2021-07-30T00:00:10"),
        sample("\"NaN\"", "2021-07-30T00:00:20"),
        sample("\"inf\"", "2021-07-30T00:00:25"),
        sample("2.5", "2021-07-30T00:00:30"),
        sample("3", "half past nine"),
        sample("4", "2021-07-30T00:00:40"),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let store = dir.path().join("store");
    let out = run_into_store(&pipeline, &input, &store, &["--summary-json"]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Non-finite volumes are refused as input, before any stage (issue 19).
    assert_eq!(summary["dropped"]["volume_not_a_number"], 2, "{summary}");
    assert_eq!(summary["dropped"]["bad_timestamp"], 1, "{summary}");
    assert_eq!(
        measures(&store, "vm", "cpu_util", "count", "60"),
        [("2021-07-30T00:00:00+00:00".to_owned(), 60.0, 3.0)]
    );

    // Unknown names, a policy that contradicts the stored one, foreign and unusable stores.
    let s = store.to_str().unwrap();
    assert_fails_with(
        &[
            "measures",
            "--store",
            s,
            "--resource",
            "vm",
            "--metric",
            "memory",
        ],
        "does not exist",
    );
    assert_fails_with(
        &[
            "measures",
            "--store",
            s,
            "--resource",
            "vm",
            "--metric",
            "cpu_util",
            "--aggregation",
            "90pct",
        ],
        "Aggregation method '90pct'",
    );
    assert_fails_with(
        &[
            "measures",
            "--store",
            s,
            "--resource",
            "vm",
            "--metric",
            "cpu_util",
            "--start",
            "soon",
        ],
        "not a valid timestamp",
    );
    let changed = dir.path().join("changed.json");
    std::fs::write(
        &changed,
        POLICY.replace("\"back_window\": 1", "\"back_window\": 2"),
    )
    .unwrap();
    let changed_dir = dir.path().join("changed-dir");
    std::fs::create_dir(&changed_dir).unwrap();
    let changed_pipeline = pipeline_for(&changed, &changed_dir);
    run_fails_with(
        &changed_pipeline,
        &input,
        &store,
        "differs from the one in the definition",
    );
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    run_fails_with(&pipeline, &input, &foreign, "is not a meterflow store");
    assert!(foreign.join("notes.txt").exists());
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    run_fails_with(&pipeline, &input, &file, "cannot create store directory");
    assert_fails_with(
        &[
            "measures",
            "--store",
            dir.path().join("none").to_str().unwrap(),
            "--resource",
            "vm",
            "--metric",
            "cpu_util",
        ],
        "no meterflow store",
    );
    // The first store is intact after all that.
    assert_eq!(measures(&store, "vm", "cpu_util", "count", "60").len(), 1);
}

#[test]
fn parquet_files_open_in_pyarrow_with_self_explaining_columns() {
    let python = std::process::Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "pyarrow is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: python3 with pyarrow is not installed (pip install pyarrow)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let pipeline = pipeline_for(&policy, dir.path());
    let input = dir.path().join("in.jsonl");
    synthetic(&input, 5, 100, 0);
    let store = dir.path().join("store");
    run(&pipeline, &input, &store, "2");
    let script = r#"
import glob, json, sys
import pyarrow.dataset as ds
store = sys.argv[1]
manifest = json.load(open(store + "/manifest.json"))
files = [store + "/" + f["path"] for f in manifest["files"] if f["table"] == "aggregates"]
t = ds.dataset(files, format="parquet").to_table()
print(json.dumps({"columns": t.column_names, "rows": t.num_rows,
    "timestamp": str(t.schema.field("timestamp").type),
    "count_60": sum(v for v, a, g, r in zip(t["value"].to_pylist(), t["aggregation"].to_pylist(), t["granularity_seconds"].to_pylist(), t["resource_id"].to_pylist()) if a == "count" and g == 60.0 and r == "vm-0_disk")}))
m = ds.dataset([store + "/" + f["path"] for f in manifest["files"] if f["table"] == "metrics"], format="parquet").to_table()
print(json.dumps(sorted(m["original_resource_id"].to_pylist())))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, store.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let t: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        t["columns"],
        serde_json::json!([
            "resource_id",
            "metric_name",
            "aggregation",
            "granularity_seconds",
            "timestamp",
            "value",
            "generation"
        ])
    );
    assert_eq!(t["timestamp"], "timestamp[ns, tz=UTC]");
    assert_eq!(
        t["count_60"], 100.0,
        "one measure every 10 s for 1000 s: {t}"
    );
    let resources: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        resources,
        [
            "vm-0/disk",
            "vm-1/disk",
            "vm-2/disk",
            "vm-3/disk",
            "vm-4/disk"
        ]
    );
}
