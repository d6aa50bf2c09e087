//! Decoding notifications into samples and encoding samples as JSON lines.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_engine::wire::decode_line;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};

fn wire(c: &mut Criterion) {
    let data = meterflow_benches::jsonl(50_000, 1_000);
    let lines: Vec<Bytes> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| data.slice_ref(l))
        .collect();
    let samples = meterflow_benches::samples(50_000, 1_000);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(samples.len() as u64));
    group.bench_function("decode_notifications", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for line in &lines {
                decode_line(line, &mut |_| n += 1).expect("decodes");
            }
            n
        })
    });
    // The same notifications in oslo.messaging's Kafka envelope, as the Kafka source reads them.
    let enveloped: Vec<Bytes> = lines
        .iter()
        .map(|l| {
            Bytes::from(meterflow_connectors::kafka::bench::oslo_envelope(
                std::str::from_utf8(l).unwrap(),
            ))
        })
        .collect();
    group.bench_function("decode_oslo_envelopes", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for line in &enveloped {
                decode_line(line, &mut |_| n += 1).expect("decodes");
            }
            n
        })
    });
    group.bench_function("encode_samples", |b| {
        let mut out = Vec::with_capacity(64 << 20);
        b.iter(|| {
            out.clear();
            for s in &samples {
                write_sample(s, EncodeOptions::default(), &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
