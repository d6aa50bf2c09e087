//! The dataflow against the plain sequential implementation, on seeded random streams with
//! late, duplicate, out-of-order and invalid samples over many interleaved resources: every
//! sink publishes exactly the same samples, in the same order per resource (and, for sinks
//! with cross-resource state, in the same order overall), with 1, 2, 4 and 8 workers and
//! chunks from a few lines to many notifications.
//!
//! The streams are large enough that one epoch sends a worker several batches (timely's
//! buffers hold about a hundred samples): an earlier version with a few samples per chunk
//! could not see batches of one epoch delivered out of order, which broke per-resource order
//! with the default worker count.

use meterflow_connectors::file::source::InputSpec;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};
use meterflow_operators::transform::Partition;
use meterflow_pipelines::dataflow::RunOptions;
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::sequential;
use meterflow_pipelines::service;
use meterflow_tests::{by_resource, notifications, SynthSample};
use proptest::prelude::*;

/// Every transformer, sinks keyed by resource and global ones, overlapping sources.
const PIPELINE: &str = r#"
sources:
  - name: everything
    meters: ["*"]
    sinks: [roc, delta, acc, agg, arith, uc]
  - name: cpu_again
    meters: ["!memory.usage", "!disk.*", "!network.*"]
    sinks: [roc]
  - name: chained
    meters: ["cpu", "network.*"]
    sinks: [chain]
  - name: untouched
    meters: ["*"]
    sinks: [pass]
sinks:
  - name: roc
    transformers:
      - name: rate_of_change
        parameters:
          target: {name: cpu_util, type: gauge, scale: "100.0 / (10**9 * (resource_metadata.cpu_number or 1))"}
    publishers: ["file://OUT/roc.jsonl"]
  - name: delta
    transformers:
      - name: delta
        parameters: {growth_only: true, target: {name: grown}}
    publishers: ["file://OUT/delta.jsonl"]
  - name: acc
    transformers:
      - name: accumulator
        parameters: {size: 7}
    publishers: ["file://OUT/acc.jsonl"]
  - name: agg
    transformers:
      - name: aggregator
        parameters: {size: 9, project_id: last}
    publishers: ["file://OUT/agg.jsonl"]
  - name: arith
    transformers:
      - name: arithmetic
        parameters:
          target: {name: ratio, unit: "%", expr: "100 * $(memory.usage) / ($(disk.usage) or 1)"}
    publishers: ["file://OUT/arith.jsonl"]
  - name: uc
    transformers:
      - name: unit_conversion
        parameters: {source: {unit: B}, target: {unit: KB, scale: "volume / 1024"}}
    publishers: ["file://OUT/uc.jsonl"]
  - name: chain
    transformers:
      - name: delta
      - name: accumulator
        parameters: {size: 3}
      - name: unit_conversion
        parameters: {target: {scale: 2}}
    publishers: ["file://OUT/chain.jsonl"]
  - name: pass
    publishers: ["file://OUT/pass.jsonl"]
"#;

fn stream() -> impl Strategy<Value = Vec<Vec<SynthSample>>> {
    let sample = (
        0usize..4,
        0usize..40,
        prop::option::weighted(0.95, 0i64..1_000_000),
        0i64..40,
    );
    prop::collection::vec(prop::collection::vec(sample, 1..40), 1..50).prop_map(|batches| {
        // Mostly advancing time with jitter: some samples late, some with equal timestamps.
        batches
            .into_iter()
            .enumerate()
            .map(|(n, batch)| {
                batch
                    .into_iter()
                    .map(|(m, r, v, jitter)| (m, r, v, n as i64 * 30 + jitter - 10))
                    .collect()
            })
            .collect()
    })
}

fn reference(plan: &Plan, lines: &[String]) -> Vec<Vec<String>> {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut per_sink = vec![Vec::new(); plan.sinks.len()];
    for (sink, sample) in sequential::run(plan, &refs) {
        let mut buf = Vec::new();
        write_sample(&sample, EncodeOptions::default(), &mut buf);
        per_sink[sink].push(String::from_utf8(buf).unwrap().trim_end().to_owned());
    }
    per_sink
}

fn dataflow_output(lines: &[String], workers: usize, chunk_bytes: usize) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let yaml = PIPELINE.replace("file://OUT", &format!("file://{}", dir.path().display()));
    let plan = Plan::from_yaml(&yaml, "oracle").unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
    let options = RunOptions {
        workers,
        chunk_bytes,
        ..RunOptions::default()
    };
    service::run(plan, &[InputSpec::File(input)], &options, None).unwrap();
    names
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.path().join(format!("{n}.jsonl")))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_matches_sequential_reference(
        batches in stream(),
        chunk in prop_oneof![64usize..4096, 4096usize..262_144],
    ) {
        let lines = notifications(&batches);
        let plan = Plan::from_yaml(&PIPELINE.replace("file://OUT", "file:///tmp"), "oracle").unwrap();
        let expected = reference(&plan, &lines);
        for workers in [1, 2, 4, 8] {
            let got = dataflow_output(&lines, workers, chunk);
            for (k, sink) in plan.sinks.iter().enumerate() {
                if sink.partition == Partition::Global {
                    // One worker holds the cross-resource state and sees whole notifications
                    // in input order: the output is the reference's, in order.
                    prop_assert_eq!(&expected[k], &got[k], "sink {} with {} workers, chunks of {} bytes", sink.name, workers, chunk);
                }
                let e = by_resource(expected[k].iter().map(String::as_str));
                let g = by_resource(got[k].iter().map(String::as_str));
                prop_assert_eq!(&e, &g, "sink {} with {} workers, chunks of {} bytes", sink.name, workers, chunk);
            }
        }
    }
}

#[test]
fn the_oracle_pipeline_produces_output_on_every_sink() {
    // Guards the property test against passing vacuously.
    let batches: Vec<Vec<SynthSample>> = (0..30)
        .map(|n| {
            (0..4)
                .flat_map(|m| {
                    (0..3).map(move |r| (m, r, Some(1000 * n + 7 * r as i64 + m as i64), n * 30))
                })
                .collect()
        })
        .collect();
    let lines = notifications(&batches);
    let got = dataflow_output(&lines, 2, 1024);
    for (k, sink) in got.iter().enumerate() {
        assert!(!sink.is_empty(), "sink #{k} published nothing");
    }
}
