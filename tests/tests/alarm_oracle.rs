//! Alarms in the dataflow against a plain sequential evaluator on seeded random streams: per
//! resource, the bucket values are computed directly from the samples, and Aodh's decision is
//! run at every bucket boundary from the first closed bucket to the last (the end of input closes
//! it); the notifications every alarm sends must be the same, in the same order, with 1 and 4
//! workers and any chunking. Alarms over several metrics (by_metrics, aggregated across as
//! Gnocchi's `aggregate` operation does) are checked the same way on streams where every
//! metric keeps up with the others.

use std::collections::BTreeMap;

use meterflow_connectors::file::source::InputSpec;
use meterflow_operators::alarm::threshold::{decide, evaluate, AlarmState, Comparison};
use meterflow_pipelines::dataflow::RunOptions;
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::service;
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
        let buckets: BTreeMap<i64, f64> = buckets
            .into_iter()
            .map(|(t, v)| (t, f64::from(v)))
            .collect();
        let sent = notifications(&buckets, (a.periods, a.op, a.threshold, a.repeat), false);
        out.insert(format!("a{i}"), sent);
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// Aodh's decision at every boundary from the first bucket's end to the last one's, over
/// `buckets` (with `rate`, their differences), for (periods, operator, threshold,
/// repeat_actions): the notifications, as (previous, current, reason, data). A gap (boundaries
/// whose window holds no value) is evaluated at its first boundary.
fn notifications(
    buckets: &BTreeMap<i64, f64>,
    (periods, op, threshold, repeat): (usize, usize, i32, bool),
    rate: bool,
) -> Vec<Value> {
    let (Some(&first), Some(&last)) = (buckets.keys().next(), buckets.keys().last()) else {
        return Vec::new();
    };
    let mut state = AlarmState::InsufficientData;
    let mut sent = Vec::new();
    let mut gap = false;
    let mut now = first + G;
    while now <= last + G {
        let mut values: Vec<f64> = buckets
            .range(now - G * (periods as i64 + 1)..now)
            .map(|(_, &v)| v)
            .collect();
        if rate {
            values = values.windows(2).map(|w| w[1] - w[0]).collect();
        }
        if values.is_empty() && gap {
            now += G;
            continue;
        }
        gap = values.is_empty();
        let e = evaluate(&values, periods, OPS[op].1, f64::from(threshold));
        if let Some(r) = decide(state, repeat, &e) {
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
    sent
}

fn dataflow_run(
    alarms: &[AlarmSpec],
    samples: &[(u8, i64, i32)],
    workers: usize,
    chunk_bytes: usize,
) -> BTreeMap<String, Vec<Value>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let yaml = definition(alarms, &out.display().to_string());
    run_definition(&yaml, dir.path(), samples, workers, chunk_bytes)
}

/// Runs `yaml` (whose actions write `dir/notifications.jsonl`) over `samples` and reads the
/// notifications back by alarm.
fn run_definition(
    yaml: &str,
    dir: &std::path::Path,
    samples: &[(u8, i64, i32)],
    workers: usize,
    chunk_bytes: usize,
) -> BTreeMap<String, Vec<Value>> {
    let out = dir.join("notifications.jsonl");
    let plan = Plan::from_yaml(yaml, "oracle").unwrap();
    let input = dir.join("in.jsonl");
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
        store: dir.join("store"),
        ..RunOptions::default()
    };
    service::run(plan, &[InputSpec::File(input)], &options, None).unwrap();
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

/// The definition of [`definition`] with a `no_data_grace` (in granularities) on every alarm.
fn graced_definition(alarms: &[AlarmSpec], graces: &[i64], out: &str) -> String {
    let mut yaml = definition(alarms, out);
    for (i, grace) in graces.iter().enumerate() {
        let name = format!("{{name: a{i}, ");
        let with = format!("{{name: a{i}, no_data_grace: {}, ", grace * G);
        yaml = yaml.replacen(&name, &with, 1);
    }
    yaml
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `no_data_grace` alarms are judged by the engine's watermark, which travels in band: the
    /// notifications are the same with 1, 2 and 4 workers (resources fall silent and come
    /// back, so graced boundaries are evaluated without data, and data arrives after them).
    #[test]
    fn no_data_grace_does_not_depend_on_the_worker_count(
        alarms in prop::collection::vec(alarm(), 1..6),
        graces in prop::collection::vec(1i64..4, 6),
        // Per sample: resource, seconds forward on the engine's clock, value; resource 2 is
        // often silent for long stretches.
        steps in prop::collection::vec((0u8..3, 0i64..90, 0i32..10), 1..160),
        chunk_bytes in 64usize..2048,
    ) {
        let mut now = START;
        let samples: Vec<(u8, i64, i32)> = steps
            .into_iter()
            .enumerate()
            .filter(|(i, (r, _, _))| *r != 2 || (i / 40) % 2 == 0)
            .map(|(_, (r, dt, v))| {
                now += dt;
                (r, now, v * 10)
            })
            .collect();
        let mut first = None;
        for workers in [1, 2, 4] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("notifications.jsonl");
            let yaml = graced_definition(&alarms, &graces[..alarms.len()], &out.display().to_string());
            let got = run_definition(&yaml, dir.path(), &samples, workers, chunk_bytes);
            match &first {
                None => first = Some(got),
                Some(want) => prop_assert_eq!(&got, want, "{} workers", workers),
            }
        }
    }
}

#[test]
fn graced_alarms_notify_without_data() {
    // Guards the property above against passing vacuously: r2 falls silent while r0 goes on,
    // so a0's boundaries past the grace are evaluated without data (insufficient data).
    let alarms = [AlarmSpec {
        resource: 2,
        max: true,
        op: 5,
        threshold: 50,
        periods: 1,
        repeat: false,
    }];
    let mut samples: Vec<(u8, i64, i32)> = (0..5).map(|i| (2, START + i * G, 90)).collect();
    samples.extend((5..30).map(|i| (0, START + i * G, 10)));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("notifications.jsonl");
    let yaml = graced_definition(&alarms, &[2], &out.display().to_string());
    let got = run_definition(&yaml, dir.path(), &samples, 4, 256);
    let states: Vec<&Value> = got["a0"].iter().map(|n| &n[1]).collect();
    assert_eq!(
        states,
        [&json!("alarm"), &json!("insufficient data")],
        "{got:?}"
    );
}

/// A by_metrics alarm: which of r0..r2 it reads, the method across (with the per-metric
/// series of the same name), operator, threshold, periods, repeat_actions.
#[derive(Clone, Debug)]
struct CrossSpec {
    members: Vec<u8>,
    method: &'static str,
    op: usize,
    threshold: i32,
    periods: usize,
    repeat: bool,
}

const CROSS_METHODS: [&str; 5] = ["mean", "max", "sum", "median", "rate:max"];

fn metric_id(r: u8) -> String {
    meterflow_connectors::gnocchi::metric_uuid(&format!("r{r}"), "cpu")
}

fn cross_definition(alarms: &[CrossSpec], out: &str) -> String {
    let mut yaml = String::from(
        "sources: [{name: s, meters: [cpu], sinks: [k]}]\nsinks: [{name: k, publishers: ['gnocchi://?archive_policy=p']}]\narchive_policies: [{name: p, aggregation_methods: [max, mean, sum, median], definition: [{granularity: 60, points: 10000}]}]\nalarms:\n",
    );
    for (i, a) in alarms.iter().enumerate() {
        let ids: Vec<String> = a.members.iter().map(|&r| metric_id(r)).collect();
        yaml.push_str(&format!(
            "  - {{name: c{i}, type: gnocchi_aggregation_by_metrics_threshold, repeat_actions: {}, alarm_actions: ['file://{out}'], ok_actions: ['file://{out}'], insufficient_data_actions: ['file://{out}'], gnocchi_aggregation_by_metrics_threshold_rule: {{metrics: [{}], aggregation_method: '{}', granularity: 60, comparison_operator: {}, threshold: {}, evaluation_periods: {}}}}}\n",
            a.repeat,
            ids.join(", "),
            a.method,
            OPS[a.op].0,
            a.threshold,
            a.periods
        ));
    }
    yaml
}

/// The notifications each cross alarm sends, computed directly: per metric and bucket the
/// series (max, mean, sum, median of its measures), across metrics the method, at every
/// boundary from the first bucket's end to the last one's.
fn cross_reference(
    alarms: &[CrossSpec],
    samples: &[(u8, i64, i32)],
) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for (i, a) in alarms.iter().enumerate() {
        let base = a.method.trim_start_matches("rate:");
        let reduce = |v: &mut Vec<f64>, how: &str| -> f64 {
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            match how {
                "max" => v[v.len() - 1],
                "sum" => v.iter().sum(),
                "mean" => v.iter().sum::<f64>() / n,
                _ => {
                    let m = v.len() / 2;
                    if v.len() % 2 == 1 {
                        v[m]
                    } else {
                        (v[m - 1] + v[m]) / 2.0
                    }
                }
            }
        };
        // Per metric: bucket → values.
        let mut per_metric: BTreeMap<(u8, i64), Vec<f64>> = BTreeMap::new();
        for &(r, t, v) in samples.iter().filter(|s| a.members.contains(&s.0)) {
            per_metric
                .entry((r, t.div_euclid(G) * G))
                .or_default()
                .push(f64::from(v));
        }
        let mut across: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for ((_, t), mut values) in per_metric {
            let v = reduce(&mut values, base);
            across.entry(t).or_default().push(v);
        }
        let buckets: BTreeMap<i64, f64> = across
            .into_iter()
            .map(|(t, mut v)| (t, reduce(&mut v, base)))
            .collect();
        let rate = a.method.starts_with("rate:");
        let sent = notifications(&buckets, (a.periods, a.op, a.threshold, a.repeat), rate);
        out.insert(format!("c{i}"), sent);
    }
    out.retain(|_, v| !v.is_empty());
    out
}

fn cross_alarm() -> impl Strategy<Value = CrossSpec> {
    (
        prop::sample::subsequence(vec![0u8, 1, 2], 1..=3),
        0usize..CROSS_METHODS.len(),
        0usize..6,
        0i32..90,
        1usize..4,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(members, method, op, threshold, periods, repeat)| CrossSpec {
                members,
                method: CROSS_METHODS[method],
                op,
                threshold: if CROSS_METHODS[method] == "sum" {
                    threshold * 2
                } else {
                    threshold
                },
                periods,
                repeat,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn alarms_over_several_metrics_match_the_sequential_evaluator(
        alarms in prop::collection::vec(cross_alarm(), 1..5),
        // Per step: seconds forward on the shared clock, then one value per metric (each a
        // second after the one before). A metric reports its progress at each minute it
        // crosses, so with steps under a minute none falls more than twice the granularity
        // behind another as the alarm sees them: none is taken for gone, and the answer does
        // not depend on where epochs split the stream.
        steps in prop::collection::vec((1i64..58, [0i32..10, 0i32..10, 0i32..10]), 1..90),
        chunk_bytes in 64usize..4096,
    ) {
        let mut clock = START;
        let mut samples = Vec::new();
        for (dt, values) in steps {
            clock += dt;
            for r in 0..3u8 {
                samples.push((r, clock + i64::from(r), values[r as usize] * 10));
            }
        }
        let want = cross_reference(&alarms, &samples);
        for workers in [1, 4] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("notifications.jsonl");
            let yaml = cross_definition(&alarms, &out.display().to_string());
            let got = run_definition(&yaml, dir.path(), &samples, workers, chunk_bytes);
            prop_assert_eq!(&got, &want, "{} workers", workers);
        }
    }
}
