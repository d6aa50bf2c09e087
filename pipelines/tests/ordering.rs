//! Per-resource input order through the real binary, whatever the worker count: the issue's
//! own reproduction (2,000 polling notifications × 20 samples, 200 instances each in every
//! tenth notification) through `rate_of_change`, a pass-through sink and an `aggregator` with
//! cross-resource state, with 1, 2 and 4 workers.
//!
//! Before the epoch's batches were put back in input order, 2 workers published 29–35 k rates
//! instead of 39,800 (uncounted), the pass-through file had thousands of per-instance
//! timestamp regressions, and the aggregator's output changed from run to run.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use common::*;

const PIPELINE: &str = "
sources:
  - name: cpu
    meters: [cpu]
    sinks: [roc, pass, agg]
sinks:
  - name: roc
    transformers:
      - name: rate_of_change
        parameters: {target: {name: cpu_rate, type: gauge}}
    publishers: ['file://OUT/roc.jsonl']
  - name: pass
    publishers: ['file://OUT/pass.jsonl']
  - name: agg
    transformers:
      - name: aggregator
        parameters: {size: 400}
    publishers: ['file://OUT/agg.jsonl']
";

/// The issue's generator: notification `i` carries instances `(i % 10) * 20 + r`, r < 20.
fn notifications() -> String {
    let mut text = String::new();
    for i in 0..2000u64 {
        text.push_str(
            r#"{"event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "x", "#,
        );
        let _ = write!(
            text,
            r#""message_id": "n-{i}", "timestamp": "2021-07-30 00:00:00", "payload": {{"samples": ["#
        );
        for r in 0..20u64 {
            if r > 0 {
                text.push_str(", ");
            }
            let _ = write!(
                text,
                r#"{{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": {}.0, "user_id": "u", "project_id": "p", "resource_id": "vm-{}", "timestamp": "2021-07-30T00:{:02}:{:02}", "resource_metadata": {{}}, "source": "openstack"}}"#,
                1_000_000_000 * i + 7 * r * i,
                (i % 10) * 20 + r,
                i / 60,
                i % 60,
            );
        }
        text.push_str("]}}\n");
    }
    text
}

/// Each resource's timestamps, in file order.
fn per_resource(path: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        out.entry(v["resource_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["timestamp"].as_str().unwrap().to_owned());
    }
    out
}

#[test]
fn every_worker_count_keeps_each_resources_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, notifications()).unwrap();
    let mut aggregated = None;
    for workers in ["1", "2", "4"] {
        let out = dir.path().join(format!("w{workers}"));
        std::fs::create_dir(&out).unwrap();
        let definition = dir.path().join(format!("p{workers}.yaml"));
        std::fs::write(
            &definition,
            PIPELINE.replace("file://OUT", &format!("file://{}", out.display())),
        )
        .unwrap();
        let run = meterflow(&[
            "run",
            definition.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--workers",
            workers,
            "--summary-json",
        ]);
        assert!(run.status.success(), "{}", text(&run));
        let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(
            summary["sinks"]["roc"]["out"], 39_800,
            "{workers} workers: {summary}"
        );
        assert_eq!(summary["dropped"]["out_of_order"], 0, "{workers} workers");
        assert_eq!(
            summary["dropped"]["no_predecessor"], 200,
            "{workers} workers"
        );
        let rates = per_resource(&out.join("roc.jsonl"));
        assert_eq!(rates.len(), 200);
        assert!(rates.values().all(|t| t.len() == 199), "{workers} workers");
        for (name, file) in [("roc", "roc.jsonl"), ("pass", "pass.jsonl")] {
            for (resource, times) in per_resource(&out.join(file)) {
                assert!(
                    times.is_sorted(),
                    "{workers} workers: sink {name} wrote {resource}'s samples out of order: {times:?}"
                );
            }
        }
        // One worker runs the aggregator over whole notifications in input order: its
        // output does not depend on the worker count.
        let agg = std::fs::read_to_string(out.join("agg.jsonl")).unwrap();
        assert!(
            !agg.is_empty(),
            "{workers} workers: the aggregator published nothing"
        );
        match &aggregated {
            None => aggregated = Some(agg),
            Some(first) => assert!(
                *first == agg,
                "{workers} workers: aggregator output differs"
            ),
        }
    }
}
