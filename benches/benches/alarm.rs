// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

//! Alarm evaluation per core: many threshold alarms, each advanced by one closed bucket per
//! round (the steady state of a stream: every alarm's metric closes one bucket), so each
//! element is one Aodh evaluation (window, comparison, transition decision).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meterflow_operators::alarm::definition::{AlarmDefinition, ThresholdRule};
use meterflow_operators::alarm::evaluator::{Conduct, Evaluator};
use meterflow_operators::alarm::threshold::AlarmState;
use serde_json::json;

fn rule() -> ThresholdRule {
    let v = json!({"name": "bench", "type": "gnocchi_resources_threshold",
        "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm",
            "resource_type": "instance", "aggregation_method": "mean", "granularity": 60,
            "comparison_operator": "gt", "threshold": 80, "evaluation_periods": 3}});
    AlarmDefinition::from_json(&v, |n| n.to_owned())
        .unwrap()
        .threshold()
        .unwrap()
        .clone()
}

fn evaluations(c: &mut Criterion) {
    let rule = rule();
    let g = 60_000_000_000i64;
    let mut group = c.benchmark_group("alarm");
    for alarms in [100_000usize, 1_000_000] {
        let mut evaluators: Vec<Evaluator> = (0..alarms)
            .map(|_| Evaluator::new(AlarmState::InsufficientData, ""))
            .collect();
        let mut bucket = 0i64;
        group.throughput(Throughput::Elements(alarms as u64));
        group.sample_size(10);
        group.bench_with_input(
            BenchmarkId::new("evaluate_one_bucket_each", alarms),
            &alarms,
            |b, _| {
                b.iter(|| {
                    let mut transitions = 0u64;
                    for (i, e) in evaluators.iter_mut().enumerate() {
                        // Values cross the threshold now and then, so states move.
                        let v = ((bucket / g) as usize * 7 + i) % 100;
                        let closed = [(bucket, v as f64)];
                        e.advance(
                            &rule,
                            Conduct::default(),
                            bucket + g,
                            &mut closed.iter().copied(),
                            &|_| true,
                            &mut |_| transitions += 1,
                        );
                    }
                    bucket += g;
                    transitions
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, evaluations);
criterion_main!(benches);
