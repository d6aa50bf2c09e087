//! Checkpoints of transformer state: taking a whole one (save, write, sync, publish), taking
//! one of changes after 1 % of the resources reported, and restoring (read, verify, decode,
//! restore, keep the worker's share) for rate_of_change holding the previous sample of
//! 10,000 and of 1,000,000 resources. Prints the bytes per resource.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use meterflow_engine::partition::route;
use meterflow_operators::transform::{build_chain, Chain, StageState, TransformerSpec};
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

fn state(chain: &mut Chain, full: bool) -> WorkerState {
    WorkerState {
        sinks: vec![SinkState {
            name: "rates".into(),
            chain: "rate_of_change".into(),
            stages: chain.save_checkpoint(full),
        }],
    }
}

/// A later sample of every hundredth series.
fn hundredth(resources: u32) -> Vec<meterflow_engine::Sample> {
    meterflow_benches::samples(2 * u64::from(resources), resources)
        .into_iter()
        .skip(resources as usize)
        .step_by(100)
        .collect()
}

/// Hands `samples` to the chain.
fn touch(chain: &mut Chain, samples: &[meterflow_engine::Sample]) {
    let mut diag = Diag::default();
    let mut out = Vec::new();
    for s in samples {
        chain.handle(s.clone(), &mut out, &mut diag);
    }
}

/// The bytes of a worker's part.
fn bincode_len(state: &WorkerState) -> usize {
    state
        .sinks
        .iter()
        .flat_map(|s| &s.stages)
        .map(|s| s.bytes.len())
        .sum()
}

/// Takes one checkpoint of `chain` (whole when there is no `previous`); its number and the
/// part's bytes.
fn take(checkpoints: &Checkpoints, chain: &mut Chain, previous: Option<u64>) -> (u64, u64) {
    let number = checkpoints.next_number();
    let bytes = checkpoints
        .write_part(number, 0, &state(chain, previous.is_none()))
        .expect("written");
    checkpoints
        .publish(number, 1, Vec::new(), previous)
        .expect("published");
    (number, bytes)
}

fn checkpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    for resources in [10_000u32, 1_000_000] {
        let mut warm = warm(resources);
        let dir = tempfile::tempdir().expect("temp dir");
        let checkpoints = Checkpoints::open(dir.path()).expect("opens");
        let (_, bytes) = take(&checkpoints, &mut warm, None);
        eprintln!(
            "checkpoint of rate_of_change over {resources} resources: {bytes} bytes, {:.1} bytes per resource",
            bytes as f64 / f64::from(resources)
        );
        group.throughput(Throughput::Elements(u64::from(resources)));
        group.bench_function(format!("take/{resources}"), |b| {
            b.iter(|| take(&checkpoints, &mut warm, None))
        });
        let later = hundredth(resources);
        let mut previous = checkpoints.newest().expect("a checkpoint").number;
        group.bench_function(format!("take-changes-1pct/{resources}"), |b| {
            b.iter_custom(|iters| {
                let mut took = std::time::Duration::ZERO;
                for _ in 0..iters {
                    touch(&mut warm, &later);
                    let started = std::time::Instant::now();
                    previous = take(&checkpoints, &mut warm, Some(previous)).0;
                    took += started.elapsed();
                }
                took
            })
        });
        // What a restore reads at the most: a whole checkpoint and FULL_EVERY - 1 of changes.
        let mut previous = take(&checkpoints, &mut warm, None).0;
        for _ in 1..meterflow_pipelines::checkpoint::FULL_EVERY {
            touch(&mut warm, &later);
            previous = take(&checkpoints, &mut warm, Some(previous)).0;
        }
        let changes = checkpoints.newest().expect("a checkpoint");
        eprintln!(
            "a checkpoint of changes after 1 % of {resources} resources reported: {} bytes; restoring reads {} checkpoints",
            bincode_len(&changes.chain[changes.chain.len() - 1][0]),
            changes.chain.len()
        );
        group.bench_function(format!("restore/{resources}"), |b| {
            b.iter(|| {
                let loaded = checkpoints.newest().expect("a checkpoint");
                let mut restored = chain();
                let run: Vec<Vec<&[StageState]>> = loaded
                    .chain
                    .iter()
                    .map(|parts| vec![parts[0].sinks[0].stages.as_slice()])
                    .collect();
                restored.restore_checkpoints(&run).expect("restores");
                restored.retain(&|r: Sym| route(r.as_str()) % 2 < 2);
                restored
            })
        });
    }
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
