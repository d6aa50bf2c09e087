//! Checkpoints of transformer state: taking one (save, write, sync, publish) and restoring
//! one (read, verify, decode, restore, keep the worker's share) for rate_of_change holding
//! the previous sample of 10,000 and of 1,000,000 resources. Prints the bytes per resource.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use meterflow_engine::partition::route;
use meterflow_operators::transform::{build_chain, Chain, TransformerSpec};
use meterflow_pipelines::checkpoint::{Checkpoints, SinkState, WorkerState};

fn chain() -> Chain {
    build_chain(&[TransformerSpec {
        name: "rate_of_change".into(),
        parameters: serde_yaml::from_str("{target: {name: cpu_util, type: gauge}}").expect("yaml"),
    }])
    .expect("builds")
}

/// A chain that has seen one cpu sample of each of `resources` resources.
fn warm(resources: u32) -> Chain {
    let mut chain = chain();
    let mut diag = Diag::default();
    let mut out = Vec::new();
    for s in meterflow_benches::samples(u64::from(resources), resources) {
        chain.handle(s, &mut out, &mut diag);
    }
    chain
}

fn state(chain: &Chain) -> WorkerState {
    WorkerState {
        sinks: vec![SinkState {
            name: "rates".into(),
            chain: "rate_of_change".into(),
            stages: chain.save(),
        }],
    }
}

fn checkpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    for resources in [10_000u32, 1_000_000] {
        let warm = warm(resources);
        let dir = tempfile::tempdir().expect("temp dir");
        let checkpoints = Checkpoints::open(dir.path()).expect("opens");
        let number = checkpoints.next_number();
        let bytes = checkpoints
            .write_part(number, 0, &state(&warm))
            .expect("written");
        checkpoints
            .publish(number, 1, Vec::new())
            .expect("published");
        eprintln!(
            "checkpoint of rate_of_change over {resources} resources: {bytes} bytes, {:.1} bytes per resource",
            bytes as f64 / f64::from(resources)
        );
        group.throughput(Throughput::Elements(u64::from(resources)));
        group.bench_function(format!("take/{resources}"), |b| {
            b.iter(|| {
                let number = checkpoints.next_number();
                checkpoints
                    .write_part(number, 0, &state(&warm))
                    .expect("written");
                checkpoints
                    .publish(number, 1, Vec::new())
                    .expect("published")
            })
        });
        group.bench_function(format!("restore/{resources}"), |b| {
            b.iter(|| {
                let loaded = checkpoints.newest().expect("a checkpoint");
                let mut restored = chain();
                restored
                    .restore(&loaded.parts[0].sinks[0].stages)
                    .expect("restores");
                restored.retain(&|r: Sym| route(r.as_str()) % 2 < 2);
                restored
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
