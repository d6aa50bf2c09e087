//! Alarms in the dataflow against a plain sequential evaluator on seeded random streams: per
//! resource, the bucket values are computed directly from the samples, and Aodh's decision is
//! run at every bucket boundary from the first closed bucket to the last (the end of input closes
//! it); the notifications every alarm sends must be the same, in the same order, with 1 and 4
//! workers and any chunking.

use std::collections::BTreeMap;

use meterflow_connectors::file::source::InputSpec;
use meterflow_operators::alarm::threshold::{decide, evaluate, AlarmState, Comparison};
use meterflow_pipelines::dataflow::{self, RunOptions};
use meterflow_pipelines::plan::Plan;
use proptest::prelude::*;
use serde_json::{json, Value};

const G: i64 = 60;
const START: i64 = 1_700_000_040; // a minute boundary

/// One alarm: resource, method, operator, threshold, evaluation_periods, repeat_actions.
#[derive(Clone, Debug)]
struct AlarmSpec {
    resource: u8,
    max: bool,
    op: usize,
    threshold: i32,
    periods: usize,
    repeat: bool,
}

const OPS: [(&str, Comparison); 6] = [
    ("lt", Comparison::Lt),
    ("le", Comparison::Le),
    ("eq", Comparison::Eq),
    ("ne", Comparison::Ne),
    ("ge", Comparison::Ge),
    ("gt", Comparison::Gt),
];

fn definition(alarms: &[AlarmSpec], out: &str) -> String {
    let mut yaml = String::from(
        "sources: [{name: s, meters: [cpu], sinks: [k]}]\nsinks: [{name: k, publishers: ['gnocchi://?archive_policy=p']}]\narchive_policies: [{name: p, aggregation_methods: [max, min], definition: [{granularity: 60, points: 10000}]}]\nalarms:\n",
    );
    for (i, a) in alarms.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: a{i}, type: gnocchi_resources_threshold, repeat_actions: {}, alarm_actions: ['file://{out}'], ok_actions: ['file://{out}'], insufficient_data_actions: ['file://{out}'], gnocchi_resources_threshold_rule: {{metric: cpu, resource_id: r{}, resource_type: generic, aggregation_method: {}, granularity: 60, comparison_operator: {}, threshold: {}, evaluation_periods: {}}}}}\n",
            a.repeat,
            a.resource,
            if a.max { "max" } else { "min" },
            OPS[a.op].0,
            a.threshold,
            a.periods
        ));
    }
    yaml
}

/// The notifications each alarm sends, computed directly: (previous, current, reason, data).
fn reference(alarms: &[AlarmSpec], samples: &[(u8, i64, i32)]) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for (i, a) in alarms.iter().enumerate() {
        // As in Gnocchi, a later measure at the same timestamp replaces the earlier one.
        let measures: BTreeMap<i64, i32> = samples
            .iter()
            .filter(|s| s.0 == a.resource)
            .map(|&(_, t, v)| (t, v))
            .collect();
        let mut buckets: BTreeMap<i64, i32> = BTreeMap::new();
        for (&t, &v) in &measures {
            let slot = buckets.entry(t.div_euclid(G) * G).or_insert(v);
            *slot = if a.max {
                (*slot).max(v)
            } else {
                (*slot).min(v)
            };
        }
        let (Some(&first), Some(&last)) = (buckets.keys().next(), buckets.keys().last()) else {
            continue;
        };
        let mut state = AlarmState::InsufficientData;
        let mut sent = Vec::new();
        // A gap (boundaries whose window holds no bucket) is evaluated at its first boundary.
        let mut gap = false;
        let mut now = first + G;
        let end = last + G;
        while now <= end {
            let values: Vec<f64> = buckets
                .range(now - G * (a.periods as i64 + 1)..now)
                .map(|(_, &v)| f64::from(v))
                .collect();
            if values.is_empty() && gap {
                now += G;
                continue;
            }
            gap = values.is_empty();
            let e = evaluate(&values, a.periods, OPS[a.op].1, f64::from(a.threshold));
            if let Some(r) = decide(state, a.repeat, &e) {
                sent.push(json!([
                    state.as_str(),
                    r.state.as_str(),
                    r.reason,
                    r.reason_data
                ]));
                state = r.state;
            }
            now += G;
        }
        out.insert(format!("a{i}"), sent);
    }
    out.retain(|_, v| !v.is_empty());
    out
}

fn dataflow_run(
    alarms: &[AlarmSpec],
    samples: &[(u8, i64, i32)],
    workers: usize,
    chunk_bytes: usize,
) -> BTreeMap<String, Vec<Value>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let plan = Plan::from_yaml(&definition(alarms, &out.display().to_string()), "oracle").unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = samples
        .iter()
        .map(|&(r, t, v)| {
            json!({"counter_name": "cpu", "counter_type": "gauge", "counter_unit": "%",
                   "counter_volume": v, "resource_id": format!("r{r}"),
                   "timestamp": meterflow_engine::time::format_iso_naive(t * 1_000_000)})
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let options = RunOptions {
        workers,
        chunk_bytes,
        store: dir.path().join("store"),
        ..RunOptions::default()
    };
    dataflow::run(plan, &[InputSpec::File(input)], &options).unwrap();
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap_or_default().lines() {
        let p: Value = serde_json::from_str(line).unwrap();
        got.entry(p["alarm_name"].as_str().unwrap().to_owned())
            .or_default()
            .push(json!([
                p["previous"],
                p["current"],
                p["reason"],
                p["reason_data"]
            ]));
    }
    got
}

fn alarm() -> impl Strategy<Value = AlarmSpec> {
    (
        0u8..3,
        any::<bool>(),
        0usize..6,
        20i32..80,
        1usize..4,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(resource, max, op, threshold, periods, repeat)| AlarmSpec {
                resource,
                max,
                op,
                threshold,
                periods,
                repeat,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn alarms_match_the_sequential_evaluator(
        alarms in prop::collection::vec(alarm(), 1..8),
        // Per sample: resource, seconds forward on that resource's clock (gaps of minutes
        // happen), value (coarse, so eq and ne breach sometimes).
        steps in prop::collection::vec((0u8..3, 0i64..200, 0i32..10), 1..120),
        chunk_bytes in 64usize..4096,
    ) {
        let mut clocks = [START; 3];
        let samples: Vec<(u8, i64, i32)> = steps
            .into_iter()
            .map(|(r, dt, v)| {
                clocks[r as usize] += dt;
                (r, clocks[r as usize], v * 10)
            })
            .collect();
        let want = reference(&alarms, &samples);
        for workers in [1, 4] {
            let got = dataflow_run(&alarms, &samples, workers, chunk_bytes);
            prop_assert_eq!(&got, &want, "{} workers", workers);
        }
    }
}
