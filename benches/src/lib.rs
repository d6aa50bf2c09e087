//! Shared inputs for meterflow's criterion benches (see `benches/`).

use bytes::Bytes;
use meterflow_engine::wire::{decode_line, Decoded};
use meterflow_engine::Sample;

/// `n` realistic samples (the `bench` command's generator), decoded, in input order.
pub fn samples(n: u64, resources: u32) -> Vec<Sample> {
    let mut buf = Vec::new();
    meterflow_pipelines::bench::generate(&mut buf, (n, resources, 50, 0), 7)
        .expect("in-memory write");
    let data = Bytes::from(buf);
    let mut out = Vec::with_capacity(n as usize);
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = data.slice_ref(line);
        decode_line(&line, &mut |d| {
            if let Decoded::Sample(s) = d {
                out.push(s);
            }
        })
        .expect("generated lines decode");
    }
    out
}

/// `n` samples as JSONL polling notifications of 50.
pub fn jsonl(n: u64, resources: u32) -> Bytes {
    let mut buf = Vec::new();
    meterflow_pipelines::bench::generate(&mut buf, (n, resources, 50, 0), 7)
        .expect("in-memory write");
    Bytes::from(buf)
}
