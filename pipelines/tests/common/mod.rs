//! Helpers shared by the CLI tests: running the binary, comparing sample files.

#![allow(dead_code)]

pub mod http;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The golden folders (`tests/golden` at the workspace root).
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden")
}

/// Runs the `meterflow` binary with `args`.
pub fn meterflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the meterflow binary runs")
}

/// `meterflow run DEFINITION --input INPUT --store STORE`, then `extra`, run.
pub fn run_into_store(definition: &Path, input: &Path, store: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        definition.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    meterflow(&args)
}

/// A definition storing every meter through one `gnocchi://` publisher under `policy` (Gnocchi's
/// JSON form), with `rules` as its archive_policy_rules, written into `dir`.
pub fn store_definition(
    dir: &Path,
    policy: &serde_json::Value,
    rules: &[serde_json::Value],
) -> PathBuf {
    let name = policy["name"].as_str().unwrap();
    let mut definition = serde_json::json!({
        "archive_policies": [policy],
        "sources": [{"name": "all", "meters": ["*"], "sinks": ["store"]}],
        "sinks": [{"name": "store", "publishers": [format!("gnocchi://?archive_policy={name}")]}],
    });
    if !rules.is_empty() {
        definition["archive_policy_rules"] = serde_json::json!(rules);
    }
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, definition.to_string()).unwrap();
    path
}

/// Runs the binary and asserts it fails with `needle` in its stderr.
pub fn assert_fails_with(args: &[&str], needle: &str) {
    assert_failed_with(&meterflow(args), needle);
}

/// Asserts that a run failed with `needle` in its stderr.
pub fn assert_failed_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure: {}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "expected {needle:?} in stderr: {}",
        text(out)
    );
}

/// Stdout and stderr of a run, as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn load(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(serde_json::Value::Object(mut m)) => {
                m.remove("message_id");
                m.remove("message_signature");
                m
            }
            other => panic!(
                "{}: not a JSON object line: {l} ({other:?})",
                path.display()
            ),
        })
        .collect()
}

/// Compares published samples with expected ones: keys equal, volumes within 1e-9 relative,
/// order free across resources but kept within one. Returns a readable diff on mismatch.
pub fn compare(expected: &Path, got: &Path) -> Result<(), String> {
    let (exp, got_rows) = (load(expected), load(got));
    let mut problems = Vec::new();
    if exp.len() != got_rows.len() {
        problems.push(format!(
            "expected {} samples, got {}",
            exp.len(),
            got_rows.len()
        ));
    }
    let group = |rows: Vec<serde_json::Map<String, serde_json::Value>>| {
        let mut by: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for r in rows {
            by.entry(
                r.get("resource_id")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .or_default()
            .push(r);
        }
        by
    };
    let (e, g) = (group(exp), group(got_rows));
    for resource in e
        .keys()
        .chain(g.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (a, b) = (
            e.get(resource).cloned().unwrap_or_default(),
            g.get(resource).cloned().unwrap_or_default(),
        );
        if a.len() != b.len() {
            problems.push(format!(
                "resource {resource}: expected {} samples, got {}",
                a.len(),
                b.len()
            ));
            continue;
        }
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let keys_x: Vec<_> = x.keys().collect();
            let keys_y: Vec<_> = y.keys().collect();
            if keys_x != keys_y {
                problems.push(format!(
                    "resource {resource} #{i}: keys {keys_x:?} != {keys_y:?}"
                ));
                continue;
            }
            for (k, vx) in x {
                let vy = &y[k];
                let same = if k == "counter_volume" {
                    match (vx.as_f64(), vy.as_f64()) {
                        (Some(p), Some(q)) => {
                            p == q || (p - q).abs() <= 1e-9 * p.abs().max(q.abs())
                        }
                        _ => vx == vy,
                    }
                } else {
                    vx == vy
                };
                if !same {
                    problems.push(format!(
                        "resource {resource} #{i}: {k}: expected {vx}, got {vy}"
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Writes `pipeline` with `file://OUTPUT` pointing at `output` into `dir`, returning its path.
pub fn pipeline_with_output(pipeline: &Path, dir: &Path, output: &Path) -> PathBuf {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let path = dir.join("pipeline.yaml");
    std::fs::write(
        &path,
        text.replace("file://OUTPUT", &format!("file://{}", output.display())),
    )
    .unwrap();
    path
}

/// A Gnocchi reference case's `expected.json`: method → granularity → `[timestamp,
/// granularity, value]` points.
pub type GnocchiExpected = BTreeMap<String, BTreeMap<String, Vec<(String, f64, f64)>>>;

/// The case folders of `tests/<folder>/`, sorted; at least `at_least` of them.
pub fn cases(folder: &str, at_least: usize) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(folder);
    let mut cases: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= at_least, "{folder} cases missing: {cases:?}");
    cases
}

/// The Gnocchi reference cases (`tests/golden-gnocchi/*/`), sorted.
pub fn gnocchi_cases() -> Vec<PathBuf> {
    cases("golden-gnocchi", 4)
}

/// Whether a measure read back matches the expected one: timestamp and granularity equal,
/// value within 1e-9 relative.
pub fn same_point(got: &(String, f64, f64), want: &(String, f64, f64)) -> bool {
    let close = got.2 == want.2 || (got.2 - want.2).abs() <= 1e-9 * got.2.abs().max(want.2.abs());
    got.0 == want.0 && got.1 == want.1 && close
}

/// The lines of the file at `path`, sorted (a multiset to compare runs by).
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}
