//! Test helpers shared by meterflow's integration tests: synthetic notification streams and
//! comparisons of published output.
//!
//! The golden cases live in `tests/golden/` (run black-box through the CLI by
//! `meterflow-pipelines`' own tests); this crate holds the oracle tests that check the
//! dataflow against the sequential reference on seeded random input.

pub mod fuzz;

use std::collections::BTreeMap;
use std::fmt::Write;

/// One synthetic sample: meter index, resource index, volume (`None` = null), seconds offset.
pub type SynthSample = (usize, usize, Option<i64>, i64);

/// The meters synthetic streams draw from: (name, type, unit).
pub const METERS: [(&str, &str, &str); 4] = [
    ("cpu", "cumulative", "ns"),
    ("memory.usage", "gauge", "MB"),
    ("network.outgoing.bytes", "delta", "B"),
    ("disk.usage", "gauge", "B"),
];

/// Renders notifications of synthetic samples as JSONL lines.
pub fn notifications(batches: &[Vec<SynthSample>]) -> Vec<String> {
    batches
        .iter()
        .enumerate()
        .map(|(n, batch)| {
            let mut line = format!(
                r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "ceilometer.polling", "message_id": "n{n}", "timestamp": "2021-07-30 02:00:00", "payload": {{"samples": ["#
            );
            for (i, (meter, res, volume, offset)) in batch.iter().enumerate() {
                let (name, kind, unit) = METERS[*meter];
                let volume = volume.map_or("null".to_owned(), |v| v.to_string());
                let t = meterflow_engine::time::format_iso_naive((1_627_610_400 + offset) * 1_000_000 + (i as i64) * 1000);
                if i > 0 {
                    line.push_str(", ");
                }
                let _ = write!(
                    line,
                    r#"{{"counter_name": "{name}", "counter_type": "{kind}", "counter_unit": "{unit}", "counter_volume": {volume}, "user_id": "u{}", "project_id": "p", "resource_id": "res-{res}", "timestamp": "{t}", "resource_metadata": {{"cpu_number": {}, "seq": {n}}}, "source": "openstack", "message_id": "m{n}-{i}", "monotonic_time": null}}"#,
                    res % 2,
                    1 + res % 3,
                );
            }
            line.push_str("]}}");
            line
        })
        .collect()
}

/// Groups JSON sample lines by resource, keeping their order within a resource.
pub fn by_resource<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON sample line");
        out.entry(v["resource_id"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(line.to_owned());
    }
    out
}
