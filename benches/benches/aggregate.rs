// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]
//! Gnocchi aggregation: measures per second through `Metric::add_batch` for a policy with three
//! granularities and eight methods, one measure per batch (one notification per poll) and 50;
//! and through the store's operator step (`Aggregator::process`: grouping an epoch's measures
//! into batches per metric, finding each metric, aggregating, collecting final buckets, writing
//! them to Parquet when a million are buffered) for 10,000 metrics.

use std::sync::Arc;

/// The allocator the `meterflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_connectors::gnocchi::store::Store;
use meterflow_connectors::gnocchi::GnocchiOptions;
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use meterflow_operators::aggregate::{ArchivePolicy, Metric, NANOS};
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::storage::{Aggregator, Measure, Origin, Share, StoreOptions};

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

/// The operator step: epochs of one measure per metric for 10,000 metrics, 10 s apart (ten
/// minutes of polling), with the metrics known, and the cost of creating them.
fn operator(c: &mut Criterion) {
    let plan = Arc::new(
        Plan::from_yaml(
            r#"
archive_policies:
  - name: bench
    back_window: 0
    aggregation_methods: [mean, sum, min, max, count, last, std, 95pct]
    definition:
      - {granularity: 60, points: 1440}
      - {granularity: 300, points: 2016}
      - {granularity: 3600, points: 720}
sources: [{name: all, meters: ["*"], sinks: [store]}]
sinks: [{name: store, publishers: ["gnocchi://?archive_policy=bench"]}]
"#,
            "bench",
        )
        .expect("plan"),
    );
    let options = StoreOptions {
        publishers: vec![Some(GnocchiOptions {
            archive_policy: Some("bench".into()),
            resource_type: "generic".into(),
            ..GnocchiOptions::default()
        })],
        ..StoreOptions::default()
    };
    let metrics: u64 = std::env::var("BENCH_METRICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let epochs = 61i64;
    let resources: Vec<Sym> = (0..metrics)
        .map(|i| Sym::new(&format!("instance-{i:05}")))
        .collect();
    let (name, unit) = (Sym::new("cpu_util"), Sym::new("%"));
    let epoch = |e: i64| -> Vec<Measure> {
        resources
            .iter()
            .enumerate()
            .map(|(i, &r)| Measure {
                route: i as u64,
                batch: (e as u64) << 32 | i as u64,
                origin: Origin::Sink {
                    sink: 0,
                    publisher: 0,
                },
                resource_key: r,
                resource_id: r,
                name,
                unit,
                user_id: None,
                project_id: None,
                resource_type: None,
                attributes: None,
                policy: None,
                timestamp_ns: (1_627_610_400 + e * 10 + (i as i64 % 10)) * NANOS,
                value: ((i as i64 * 7919 + e) % 1000) as f64 / 10.0,
            })
            .collect()
    };
    let input: Vec<Vec<Measure>> = (0..epochs).map(epoch).collect();
    let fresh = || {
        let dir = TempStore(std::env::temp_dir().join(format!(
            "meterflow-bench-store-{}-{}",
            std::process::id(),
            fastrand_u64()
        )));
        let store = Store::create(&dir.0).expect("store");
        let aggregator = Aggregator::new(store, plan.clone(), Share::default(), false);
        (dir, aggregator)
    };
    let mut group = c.benchmark_group("operator");
    group.sample_size(10);
    // Metrics already known (the steady state of a long-running engine).
    group.throughput(Throughput::Elements(metrics * (epochs as u64 - 1)));
    group.bench_function("3x8_10k_metrics_steady", |b| {
        b.iter_batched(
            || {
                let (dir, mut aggregator) = fresh();
                let mut diag = Diag::with_sinks(1);
                aggregator.process(&mut input[0].clone(), &options, &mut diag);
                (dir, aggregator, input[1..].to_vec())
            },
            |(dir, mut aggregator, input)| {
                let mut diag = Diag::with_sinks(1);
                for mut measures in input {
                    aggregator.process(&mut measures, &options, &mut diag);
                }
                assert_eq!(diag.counters.dropped_total(), 0);
                (dir, aggregator)
            },
            BatchSize::PerIteration,
        )
    });
    // The first measure of each metric: creating it (id, record, state).
    group.throughput(Throughput::Elements(metrics));
    group.bench_function("3x8_10k_new_metrics", |b| {
        b.iter_batched(
            || (fresh(), input[0].clone()),
            |((dir, mut aggregator), mut measures)| {
                let mut diag = Diag::with_sinks(1);
                aggregator.process(&mut measures, &options, &mut diag);
                (dir, aggregator)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A bench store directory, removed when dropped (outside the timed part).
struct TempStore(std::path::PathBuf);

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

criterion_group!(benches, aggregate, operator);
criterion_main!(benches);
