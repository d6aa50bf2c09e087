//! Each transformer over realistic samples, one notification (50 samples) per flush.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_engine::metrics::Diag;
use meterflow_operators::transform::find;

const CONFIGS: &[(&str, &str)] = &[
    ("rate_of_change", "{target: {name: cpu_util, unit: '%', type: gauge, scale: '100.0 / (10**9 * (resource_metadata.cpu_number or 1))'}}"),
    ("delta", "{target: {name: cpu.delta}, growth_only: true}"),
    ("unit_conversion", "{target: {unit: KB, scale: 'volume * 1.0 / 1024'}}"),
    ("accumulator", "{size: 1000}"),
    ("aggregator", "{size: 1000}"),
    ("arithmetic", "{target: {name: ratio, expr: '$(network.incoming.bytes) / ($(network.outgoing.bytes) or 1)'}}"),
];

fn transformers(c: &mut Criterion) {
    let samples = meterflow_benches::samples(50_000, 1_000);
    let mut group = c.benchmark_group("transformer");
    group.throughput(Throughput::Elements(samples.len() as u64));
    for (name, params) in CONFIGS {
        let kind = find(name).expect("registered");
        let params: serde_yaml::Value = serde_yaml::from_str(params).expect("yaml");
        group.bench_function(*name, |b| {
            b.iter_batched(
                || (kind.build(&params).expect("builds"), samples.clone()),
                |(mut t, input)| {
                    let mut diag = Diag::default();
                    let mut out = Vec::with_capacity(input.len());
                    for (i, s) in input.into_iter().enumerate() {
                        out.extend(t.handle(s, &mut diag));
                        if i % 50 == 49 {
                            t.flush(&mut out, &mut diag);
                        }
                    }
                    out
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, transformers);
criterion_main!(benches);
