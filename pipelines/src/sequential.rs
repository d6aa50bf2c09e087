//! The plain sequential implementation of a plan: no timely, no exchange, one loop.
//!
//! It is the reference the dataflow is checked against (same output as a multiset for any
//! number of workers) and mirrors Ceilometer's notification agent literally: for each
//! notification, each sample goes through every sink its meter is routed to, then every sink
//! is flushed.

use bytes::Bytes;
use meterflow_engine::metrics::Diag;
use meterflow_engine::wire::{decode_line, Decoded, LineKind};
use meterflow_engine::Sample;
use meterflow_operators::notification::message_view;

use crate::plan::Plan;

/// Runs `lines` through `plan`, returning `(sink index, sample)` in publish order.
pub fn run(plan: &Plan, lines: &[&str]) -> Vec<(usize, Sample)> {
    let mut chains = plan.build_chains();
    let mut diag = Diag::with_sinks(plan.sinks.len());
    let mut published = Vec::new();
    let mut out = Vec::new();
    for line in lines {
        let mut samples = Vec::new();
        let bytes = Bytes::copy_from_slice(line.as_bytes());
        let mut keep = |d| {
            if let Decoded::Sample(s) = d {
                samples.push(s);
            }
        };
        if let Ok(LineKind::ServiceNotification { event_type }) = decode_line(&bytes, &mut keep) {
            if plan.unmetered(&event_type).is_none() {
                if let Ok(view) = message_view(line) {
                    plan.meters.samples(&view, &mut keep);
                }
            }
        }
        for sample in samples {
            for sink in plan.route(sample.name.as_str()) {
                let sink = usize::from(sink);
                chains[sink].handle(sample.clone(), &mut out, &mut diag);
                published.extend(out.drain(..).map(|s| (sink, s)));
            }
        }
        for (sink, chain) in chains.iter_mut().enumerate() {
            chain.flush(&mut out, &mut diag);
            published.extend(out.drain(..).map(|s| (sink, s)));
        }
    }
    published
}
