//! Every golden case, black box through the CLI, with 1 and 2 workers.

mod common;

use common::*;

#[test]
fn golden_cases_pass_through_the_cli() {
    let mut cases: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        for workers in ["1", "2"] {
            let dir = tempfile::tempdir().unwrap();
            let output = dir.path().join("out.jsonl");
            let pipeline = pipeline_with_output(&case.join("pipeline.yaml"), dir.path(), &output);
            let input = case.join("input.jsonl");
            let args = [
                "run",
                pipeline.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--workers",
                workers,
            ];
            if case.join("expected_error.txt").exists() {
                let reason = std::fs::read_to_string(case.join("expected_error.txt")).unwrap();
                let reason = reason.trim().rsplit(": ").next().unwrap().to_owned();
                for out in [
                    meterflow(&args),
                    meterflow(&["validate", pipeline.to_str().unwrap()]),
                ] {
                    if out.status.success()
                        || !String::from_utf8_lossy(&out.stderr).contains(&reason)
                    {
                        failures.push(format!(
                            "{name}: expected a rejection containing {reason:?}\n{}",
                            text(&out)
                        ));
                    }
                }
                assert!(
                    !output.exists(),
                    "{name}: a rejected definition must not write output"
                );
                continue;
            }
            let out = meterflow(&args);
            if !out.status.success() {
                failures.push(format!(
                    "{name} ({workers} workers): run failed\n{}",
                    text(&out)
                ));
                continue;
            }
            if let Err(diff) = compare(&case.join("expected.jsonl"), &output) {
                failures.push(format!("{name} ({workers} workers):\n{diff}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shipped_example_pipelines_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = meterflow(&["validate", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            n += 1;
        }
    }
    assert!(n >= 3);
}
