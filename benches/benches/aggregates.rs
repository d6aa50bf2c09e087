// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]
//! Gnocchi's dynamic aggregates over 10,000 metrics: `(aggregate mean (metric cpu_util
//! mean))` over every resource, as Grafana or an external Aodh evaluator asks it — the
//! evaluation alone, and the whole read (catalog, policies, one pass over the store's files,
//! evaluation) as `POST /v1/aggregates` does it.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use meterflow_connectors::gnocchi::metric_uuid;
use meterflow_connectors::gnocchi::store::{Checkpoint, MetricRecord, Partition, Store};
use meterflow_engine::intern::Sym;
use meterflow_operators::aggregate::dynamic::{evaluate, Fetched, Fill, Node, Window};
use meterflow_operators::aggregate::{ArchivePolicy, NANOS};
use meterflow_pipelines::aggregates::{cross, Policies, Reference};
use serde_json::json;

const METRICS: usize = 10_000;
/// Buckets per metric and method: one hour at the 5-minute granularity of `low`.
const BUCKETS: i64 = 12;
const T0: i64 = 1_700_000_000 / 300 * 300 * NANOS;

fn aggregates(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::create(dir.path()).expect("store");
    let low = ArchivePolicy::builtin("low").expect("built in");
    store
        .put_archive_policies([(low.name.clone(), low.to_json())])
        .expect("policy");
    let mut checkpoint = Checkpoint::default();
    let name = Sym::new("cpu_util");
    let g = low.definition[0].granularity;
    for i in 0..METRICS {
        let resource = format!("instance-{i:05}");
        checkpoint.metrics.push(MetricRecord {
            metric_id: metric_uuid(&resource, "cpu_util"),
            resource_id: resource.clone(),
            original_resource_id: resource.clone(),
            metric_name: "cpu_util".into(),
            unit: "%".into(),
            archive_policy_name: low.name.clone(),
            resource_type: "instance".into(),
            user_id: None,
            project_id: Some(format!("project-{}", i % 10)),
            resource_attributes: None,
        });
        let r = Sym::new(&resource);
        for method in &low.methods {
            let m = Sym::new(&method.to_string());
            for b in 0..BUCKETS {
                // Some metrics miss a bucket: the alignment has gaps to handle.
                if (i as i64 + b) % 97 == 0 {
                    continue;
                }
                let v = ((i as i64 * 7919 + b * 31) % 1000) as f64 / 10.0;
                checkpoint
                    .aggregates
                    .push(r, name, Some(m), g, T0 + b * g, v);
            }
        }
    }
    store
        .commit(Partition { index: 0, count: 1 }, &mut checkpoint)
        .expect("commit");
    let catalog = store.catalog().expect("catalog");
    let node = Node::parse(&json!("(aggregate mean (metric cpu_util mean))")).expect("ops");
    let window = Window {
        start: None,
        stop: None,
        fill: Fill::Dropna,
    };
    let mut group = c.benchmark_group("aggregates");
    group.sample_size(20);
    group.bench_function("10k_metrics_read_and_evaluate", |b| {
        b.iter(|| {
            let policies = Policies::of(&store);
            let metrics: Vec<&MetricRecord> = catalog
                .metrics()
                .filter(|m| m.metric_name == "cpu_util")
                .collect();
            let refs: Vec<Reference> = metrics
                .iter()
                .map(|m| Reference {
                    metric: m,
                    aggregation: "mean",
                    lookup: ("cpu_util".into(), "mean".into()),
                })
                .collect();
            let answer = cross(&store, &policies, &refs, &node, None, window).expect("answer");
            assert!(matches!(answer, meterflow_operators::aggregate::dynamic::Answer::Aggregated(ref p) if p.len() == BUCKETS as usize));
            answer
        })
    });
    // The evaluation alone, over series already read.
    let series: Vec<Vec<(i64, f64)>> = (0..METRICS as i64)
        .map(|i| {
            (0..BUCKETS)
                .filter(|b| (i + b) % 97 != 0)
                .map(|b| (T0 + b * g, ((i * 7919 + b * 31) % 1000) as f64 / 10.0))
                .collect()
        })
        .collect();
    let keys = vec![("cpu_util".to_owned(), "mean".to_owned()); METRICS];
    group.bench_function("10k_metrics_evaluate", |b| {
        b.iter_batched(
            || {
                series
                    .iter()
                    .enumerate()
                    .map(|(i, points)| Fetched {
                        reference: i,
                        granularity: g,
                        points,
                    })
                    .collect::<Vec<_>>()
            },
            |fetched| evaluate(&node, &keys, &fetched, window).expect("answer"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, aggregates);
criterion_main!(benches);
