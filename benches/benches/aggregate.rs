// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]
//! Gnocchi aggregation: measures per second through `Metric::add_batch` for a policy with three
//! granularities and eight methods, one measure per batch (one notification per poll) and 50.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_operators::aggregate::{ArchivePolicy, Metric, NANOS};

fn aggregate(c: &mut Criterion) {
    let policy = Arc::new(
        ArchivePolicy::from_json(&serde_json::json!({
            "name": "bench", "back_window": 0,
            "aggregation_methods": ["mean", "sum", "min", "max", "count", "last", "std", "95pct"],
            "definition": [
                {"granularity": 60, "points": 1440},
                {"granularity": 300, "points": 2016},
                {"granularity": 3600, "points": 720}
            ]
        }))
        .expect("policy"),
    );
    // One measure every 10 s for about 28 hours.
    let measures: Vec<(i64, f64)> = (0..10_000i64)
        .map(|i| {
            (
                1_627_610_400 * NANOS + i * 10 * NANOS,
                ((i * 7919) % 1000) as f64 / 10.0,
            )
        })
        .collect();
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(measures.len() as u64));
    for batch in [1usize, 50] {
        group.bench_function(format!("3x8_batch_{batch}"), |b| {
            b.iter_batched(
                || Metric::new(policy.clone()),
                |mut metric| {
                    for chunk in measures.chunks(batch) {
                        metric.add_batch(chunk.to_vec());
                    }
                    metric
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
