//! The Gnocchi reference cases through the aggregation core: per notification, the measures of
//! each (resource, meter) form one batch; every method and granularity must equal Gnocchi's
//! output (timestamps exactly, values within 1e-9 relative).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use meterflow_engine::time::format_seconds_utc;
use meterflow_engine::wire::{decode_line, Decoded};
use meterflow_operators::aggregate::{ArchivePolicy, Metric, NANOS};

/// `expected.json`: method → granularity → `[timestamp, granularity, value]` points.
type Expected = BTreeMap<String, BTreeMap<String, Vec<(String, f64, f64)>>>;

fn run_case(dir: &Path) -> Result<(), String> {
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("archive_policy.json")).unwrap())
            .unwrap();
    let policy = Arc::new(ArchivePolicy::from_json(&policy).map_err(|e| e.to_string())?);
    let mut metrics: BTreeMap<(String, String), Metric> = BTreeMap::new();
    for line in std::fs::read_to_string(dir.join("input.jsonl"))
        .unwrap()
        .lines()
    {
        let line = Bytes::copy_from_slice(line.as_bytes());
        let mut batches: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
        decode_line(&line, &mut |d| {
            if let Decoded::Sample(s) = d {
                let ts = s.timestamp.micros().expect("timestamps parse") * 1000;
                batches
                    .entry((s.resource_id.to_string(), s.name.to_string()))
                    .or_default()
                    .push((ts, s.volume.as_f64()));
            }
        })
        .map_err(|e| e.to_string())?;
        for (key, batch) in batches {
            metrics
                .entry(key)
                .or_insert_with(|| Metric::new(policy.clone()))
                .add_batch(batch);
        }
    }
    if metrics.len() != 1 {
        return Err(format!("expected one metric, got {}", metrics.len()));
    }
    let metric = metrics.values().next().unwrap();
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut problems = Vec::new();
    for (method, by_granularity) in &expected {
        for (granularity, points) in by_granularity {
            let g = (granularity.parse::<f64>().unwrap() * NANOS as f64) as i64;
            let got = metric.measures(method.parse().map_err(|e| format!("{e}"))?, Some(g));
            if got.len() != points.len() {
                problems.push(format!(
                    "{method}@{granularity}: expected {} points, got {}",
                    points.len(),
                    got.len()
                ));
                continue;
            }
            for ((ts, gs, v), (ets, egs, ev)) in got.iter().zip(points) {
                let ts = format_seconds_utc(ts / 1000);
                let close = v == ev || (v - ev).abs() <= 1e-9 * v.abs().max(ev.abs());
                if ts != *ets || gs != egs || !close {
                    problems.push(format!("{method}@{granularity}: expected [{ets}, {egs}, {ev}], got [{ts}, {gs}, {v}]"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(20);
        Err(problems.join("\n"))
    }
}

#[test]
fn every_gnocchi_reference_case_matches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden-gnocchi");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 4);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_case(c).err().map(|e| format!("{}:\n{e}", c.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
