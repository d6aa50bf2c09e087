//! The dataflow's aggregation into the store against a plain sequential implementation (one
//! recomputing `Metric` per metric, batch by batch): on seeded random notifications with late,
//! duplicate and out-of-order measures over several resources, the store read back with
//! Gnocchi's measures query equals the reference for every method and granularity, with 1 and
//! 4 workers and any chunking.

use std::collections::BTreeMap;
use std::sync::Arc;

use meterflow_connectors::file::source::InputSpec;
use meterflow_connectors::gnocchi::store::Store;
use meterflow_operators::aggregate::{ArchivePolicy, Metric, NANOS};
use meterflow_pipelines::dataflow::RunOptions;
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::query::{measures, MeasuresQuery};
use meterflow_pipelines::service;
use proptest::prelude::*;

const POLICY: &str = r#"{"name": "oracle", "back_window": 1,
  "aggregation_methods": ["mean", "sum", "min", "max", "first", "last", "count", "std", "median", "75pct", "rate:sum", "rate:last"],
  "definition": [{"granularity": 10, "points": 200}, {"granularity": 60, "points": 50}, {"granularity": 300, "points": 10}]}"#;

/// One notification: (resource, seconds, value) measures of meter `m`.
type Notification = Vec<(u8, i64, i32)>;

fn line(n: &Notification) -> String {
    let samples: Vec<serde_json::Value> = n
        .iter()
        .map(|&(r, t, v)| {
            serde_json::json!({"counter_name": "m", "counter_type": "gauge", "counter_unit": "u",
                "counter_volume": f64::from(v) / 4.0, "resource_id": format!("r{r}"),
                "timestamp": meterflow_engine::time::format_iso_naive(t * 1_000_000)})
        })
        .collect();
    serde_json::json!({"event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "p",
        "message_id": "x", "timestamp": "2021-01-01 00:00:00", "payload": {"samples": samples}})
    .to_string()
}

fn reference(notifications: &[Notification]) -> BTreeMap<u8, Metric> {
    let policy =
        Arc::new(ArchivePolicy::from_json(&serde_json::from_str(POLICY).unwrap()).unwrap());
    let mut metrics: BTreeMap<u8, Metric> = BTreeMap::new();
    for n in notifications {
        let mut batches: BTreeMap<u8, Vec<(i64, f64)>> = BTreeMap::new();
        for &(r, t, v) in n {
            batches
                .entry(r)
                .or_default()
                .push((t * NANOS, f64::from(v) / 4.0));
        }
        for (r, batch) in batches {
            metrics
                .entry(r)
                .or_insert_with(|| Metric::new(policy.clone()).without_running_aggregates())
                .add_batch(batch);
        }
    }
    metrics
}

fn store_run(
    notifications: &[Notification],
    workers: usize,
    chunk_bytes: usize,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "archive_policies: [{POLICY}]\nsources: [{{name: s, meters: ['*'], sinks: [k]}}]\nsinks: [{{name: k, publishers: ['gnocchi://?archive_policy=oracle']}}]\n"
    );
    let plan = Plan::from_yaml(&yaml, "oracle").unwrap();
    let input = dir.path().join("in.jsonl");
    let text: Vec<String> = notifications.iter().map(line).collect();
    std::fs::write(&input, text.join("\n")).unwrap();
    let options = RunOptions {
        workers,
        chunk_bytes,
        store: dir.path().join("store"),
        ..RunOptions::default()
    };
    service::run(plan, &[InputSpec::File(input)], &options, None).unwrap();
    dir
}

fn notification() -> impl Strategy<Value = Notification> {
    // Mostly forward in time, sometimes late (negative step), sometimes repeated timestamps.
    prop::collection::vec((0u8..5, -400i64..60, -400i32..400), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_sequential_reference(
        steps in prop::collection::vec(notification(), 1..40),
        chunk_bytes in 64usize..4096,
    ) {
        // Turn per-measure steps into absolute times on a shared clock.
        let mut clock = 1_600_000_000i64;
        let notifications: Vec<Notification> = steps
            .into_iter()
            .map(|n| {
                n.into_iter()
                    .map(|(r, step, v)| {
                        let t = clock + step;
                        clock = clock.max(t);
                        (r, t, v)
                    })
                    .collect()
            })
            .collect();
        let want = reference(&notifications);
        for workers in [1, 4] {
            let dir = store_run(&notifications, workers, chunk_bytes);
            let store = Store::open(&dir.path().join("store")).unwrap();
            for (r, metric) in &want {
                for method in metric.policy().methods.clone() {
                    for granule in metric.policy().definition.clone() {
                        let expected = metric.measures(method, Some(granule.granularity));
                        let got = measures(&store, &MeasuresQuery {
                            resource: format!("r{r}"),
                            metric: "m".into(),
                            aggregation: Some(method.to_string()),
                            granularity: Some(granule.seconds()),
                            ..MeasuresQuery::default()
                        }).unwrap();
                        prop_assert_eq!(got.len(), expected.len(), "r{} {}@{} with {} workers", r, method, granule.seconds(), workers);
                        for (g, e) in got.iter().zip(&expected) {
                            let close = g.2 == e.2 || (g.2 - e.2).abs() <= 1e-9 * g.2.abs().max(e.2.abs()).max(1.0);
                            prop_assert!(g.0 == e.0 && g.1 == e.1 && close, "r{} {}: got {:?}, expected {:?} ({} workers)", r, method, g, e, workers);
                        }
                    }
                }
            }
        }
    }
}
