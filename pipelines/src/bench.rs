//! `meterflow bench`: synthetic telemetry through a pipeline, measured end to end.
//!
//! The generator writes Ceilometer polling notifications (the same shape and size as real
//! ones: about 470 bytes per sample) for a fleet of instances to a temporary JSONL file; the
//! timed part is `run` over that file, from reading and parsing through the transformers to
//! the file publisher.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use meterflow_connectors::file::source::InputSpec;
use meterflow_connectors::kafka::bench::RawConsume;
use meterflow_connectors::PublisherSpec;

use crate::dataflow::{RunOptions, RunReport};
use crate::plan::Plan;
use crate::service;

/// The pipeline `bench` runs when none is given.
pub const DEFAULT_PIPELINE: &str = include_str!("../examples/rate-and-delta.yaml");

/// What to generate and how to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Samples to generate.
    pub samples: u64,
    /// Distinct instances.
    pub resources: u32,
    /// Samples per notification (Ceilometer's polling batch_size, default 50).
    pub batch: u32,
    /// Rounds an instance lives before a new one takes its place (0: never).
    pub churn: u32,
    /// How to run.
    pub run: RunOptions,
    /// Where file publishers write (default: a temporary file, removed afterwards).
    pub output: Option<PathBuf>,
    /// Where gnocchi:// publishers write (default: a temporary store, removed afterwards).
    pub store: Option<PathBuf>,
}

impl BenchOptions {
    /// Writes the bench's input (its samples, resources and batch, always the same seed).
    fn generate(&self, out: &mut dyn Write) -> std::io::Result<()> {
        generate(
            out,
            (self.samples, self.resources, self.batch, self.churn),
            42,
        )
    }

    /// How to run, with the store under `dir` unless one was given.
    fn run_options(&self, dir: &Path) -> RunOptions {
        RunOptions {
            store: self
                .store
                .clone()
                .unwrap_or_else(|| dir.join("bench-store")),
            ..self.run.clone()
        }
    }
}

/// Writes `samples` synthetic samples as polling notifications of `batch` samples to `out`.
/// Each round every one of `resources` instances reports `cpu` (cumulative ns) and
/// network/disk byte counters, 60 s apart; about 1 in 500 counters resets. With `churn`, an
/// instance is replaced by a new one (new id, counters from 0) every `churn` rounds,
/// instances staggered so that the fleet changes a little every round.
pub fn generate(
    out: &mut dyn Write,
    (samples, resources, batch, churn): (u64, u32, u32, u32),
    seed: u64,
) -> std::io::Result<()> {
    const METERS: [(&str, &str, &str); 5] = [
        ("cpu", "cumulative", "ns"),
        ("network.incoming.bytes", "cumulative", "B"),
        ("network.outgoing.bytes", "cumulative", "B"),
        ("disk.read.bytes", "cumulative", "B"),
        ("memory.usage", "gauge", "MB"),
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    let resources = resources.max(1) as u64;
    let batch = batch.max(1) as u64;
    let id = |i: u64| {
        let h = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 20) & 0xfff,
            h & 0xffff_ffff_ffff
        )
    };
    let mut ids: Vec<String> = (0..resources).map(id).collect();
    // Each slot's instance generation (with churn).
    let mut generations = vec![0u64; resources as usize];
    let mut counters = vec![0u64; (resources as usize) * METERS.len()];
    let mut line = String::with_capacity(64 * 1024);
    let mut written = 0u64;
    while written < samples {
        let n = batch.min(samples - written);
        line.clear();
        let base = 1_627_610_400 + written / (METERS.len() as u64 * resources) * 60;
        let _ = write!(
            line,
            r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "publisher_id": "ceilometer.polling", "message_id": "{:032x}", "timestamp": "{}", "payload": {{"samples": ["#,
            rng.u128(..),
            meterflow_engine::time::format_iso_naive(base as i64 * 1_000_000).replace('T', " ")
        );
        for i in 0..n {
            let k = written + i;
            let meter = (k % METERS.len() as u64) as usize;
            let res = ((k / METERS.len() as u64) % resources) as usize;
            let round = k / (METERS.len() as u64 * resources);
            let (name, kind, unit) = METERS[meter];
            if churn > 0 {
                let generation = (round + res as u64) / u64::from(churn);
                if generation != generations[res] {
                    generations[res] = generation;
                    ids[res] = id(res as u64 + resources * generation);
                    counters[res * METERS.len()..(res + 1) * METERS.len()].fill(0);
                }
            }
            let slot = res * METERS.len() + meter;
            let volume = if kind == "gauge" {
                rng.u64(100..8192)
            } else if rng.u32(..500) == 0 {
                counters[slot] = rng.u64(..1_000_000);
                counters[slot]
            } else {
                counters[slot] += rng.u64(1_000..5_000_000_000);
                counters[slot]
            };
            let micros = (1_627_610_400 + round * 60) * 1_000_000 + rng.u64(..2_000_000);
            if i > 0 {
                line.push_str(", ");
            }
            let _ = write!(
                line,
                r#"{{"counter_name": "{name}", "counter_type": "{kind}", "counter_unit": "{unit}", "counter_volume": {volume}, "user_id": "user-{}", "project_id": "proj-{}", "resource_id": "{}", "timestamp": "{}", "resource_metadata": {{"display_name": "inst-{res}", "flavor": {{"name": "m1.small", "ram": 2048}}, "cpu_number": {}}}, "source": "openstack", "message_id": "{:032x}", "message_signature": "{:064x}", "monotonic_time": null}}"#,
                res % 7,
                res % 3,
                ids[res],
                meterflow_engine::time::format_iso_naive(micros as i64),
                1 + res % 4,
                rng.u128(..),
                rng.u128(..),
            );
        }
        line.push_str("]}}\n");
        out.write_all(line.as_bytes())?;
        written += n;
    }
    Ok(())
}

/// Generates the data, runs `plan` over it and returns the report.
pub fn run(mut plan: Plan, options: &BenchOptions) -> anyhow::Result<(RunReport, u64)> {
    let dir = tempfile::tempdir()?;
    let input_path = dir.path().join("bench-input.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input_path)?);
    options.generate(&mut file)?;
    file.flush()?;
    // Let the kernel write the generated input back now, so its writeback does not compete
    // with (and throttle) the timed run's own output.
    file.get_ref().sync_all()?;
    drop(file);
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| dir.path().join("bench-output.jsonl"));
    redirect_files(&mut plan, &output);
    let input_bytes = std::fs::metadata(&input_path)?.len();
    let run = options.run_options(dir.path());
    let report = service::run(plan, &[InputSpec::File(input_path)], &run, None)?;
    Ok((report, input_bytes))
}

/// What `bench --kafka` measured.
#[derive(Debug)]
pub struct KafkaBenchReport {
    /// Messages in the input topic (one notification each).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The raw consume of the input topic (the ceiling).
    pub raw: RawConsume,
    /// The raw copy of the input topic to a third one (consume and produce, no processing):
    /// the Kafka side's own cost on this broker and machine.
    pub copy: RawConsume,
    /// The engine's run, Kafka to Kafka.
    pub report: RunReport,
    /// The engine's time from its first input message to the end (its group join excluded,
    /// as the raw consume's).
    pub engine: std::time::Duration,
}

/// `bench --kafka`: loads a fresh topic on `brokers` with the generated notifications (oslo's
/// envelope, one per message), measures a plain consumer reading it and a plain consumer and
/// producer copying it to a third topic, then runs `plan` from
/// that topic with every `file://` publisher replaced by a `kafka://` one on a second fresh
/// topic (so Kafka → transformers → Kafka, acknowledged by the broker before offsets commit).
pub fn run_kafka(
    mut plan: Plan,
    options: &BenchOptions,
    brokers: &str,
    partitions: i32,
) -> anyhow::Result<KafkaBenchReport> {
    use meterflow_connectors::kafka::{bench as kafka, sink::KafkaPublisherOptions, KafkaSpec};
    let mut data = Vec::new();
    options.generate(&mut data)?;
    let text = std::str::from_utf8(&data)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let (input, output, copied) = (
        format!("meterflow-bench-in-{nanos}"),
        format!("meterflow-bench-out-{nanos}"),
        format!("meterflow-bench-copy-{nanos}"),
    );
    kafka::create_topics(brokers, &[&input, &output, &copied], partitions.max(1))
        .map_err(anyhow::Error::msg)?;
    let values: Vec<String> = text.lines().map(kafka::oslo_envelope).collect();
    drop(data);
    let bytes = values.iter().map(|v| v.len() as u64).sum();
    let messages = kafka::produce(brokers, &input, values.iter().map(String::as_str))
        .map_err(anyhow::Error::msg)?;
    drop(values);
    let raw = kafka::raw_consume(brokers, &input, &format!("meterflow-bench-raw-{nanos}"))
        .map_err(anyhow::Error::msg)?;
    let copy = kafka::raw_copy(
        brokers,
        &input,
        &copied,
        &format!("meterflow-bench-copy-{nanos}"),
    )
    .map_err(anyhow::Error::msg)?;
    for p in &mut plan.publishers {
        if let PublisherSpec::File(_) = p.spec {
            p.url = format!("kafka://{brokers}?topic={output}");
            p.spec = PublisherSpec::Kafka(KafkaPublisherOptions {
                brokers: brokers.to_owned(),
                topic: output.clone(),
                compression: "lz4".into(),
            });
        }
    }
    let dir = tempfile::tempdir()?;
    let run = options.run_options(dir.path());
    let spec = InputSpec::Kafka(KafkaSpec {
        brokers: brokers.to_owned(),
        topics: vec![input],
        group: format!("meterflow-bench-{nanos}"),
        eof: true,
        offset: "earliest".into(),
    });
    let report = service::run(plan, &[spec], &run, None)?;
    let engine = report.elapsed - report.first_input.unwrap_or_default();
    Ok(KafkaBenchReport {
        messages,
        bytes,
        raw,
        copy,
        report,
        engine,
    })
}

fn redirect_files(plan: &mut Plan, output: &Path) {
    for p in &mut plan.publishers {
        if let PublisherSpec::File(options) = &mut p.spec {
            options.path = output.to_path_buf();
            p.url = format!("file://{}", output.display());
        }
    }
}

/// One line describing the machine (CPU model and cores) for benchmark records.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{model}, {cores} cores available, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// What `meterflow bench` prints: the machine, the pipeline (`name`), the input and the rates.
pub fn render(report: &RunReport, bytes: u64, name: &str, options: &BenchOptions) -> String {
    let mut s = String::new();
    let secs = report.elapsed.as_secs_f64();
    let rate = report.counters.samples_in as f64 / secs;
    let _ = writeln!(s, "machine: {}", machine());
    let _ = writeln!(s, "pipeline: {name}");
    let _ = writeln!(
        s,
        "{} samples ({:.1} MB JSONL, {} resources, {} per notification) in {:.3}s with {} worker{}",
        report.counters.samples_in,
        bytes as f64 / 1e6,
        options.resources,
        options.batch,
        secs,
        report.workers,
        if report.workers == 1 { "" } else { "s" }
    );
    let out: u64 = report.counters.sinks.iter().map(|s| s.samples_out).sum();
    let _ = writeln!(
        s,
        "samples/s: {rate:.0} ({:.0} per worker); samples out: {out}",
        rate / report.workers as f64
    );
    if report.counters.measures > 0 {
        let _ = writeln!(
            s,
            "measures/s into the store: {:.0} ({} measures, {} bucket values written)",
            report.counters.measures as f64 / secs,
            report.counters.measures,
            report.counters.buckets_written
        );
    }
    if let Some(peak) = peak_memory() {
        let _ = writeln!(s, "peak memory (VmHWM, generator included): {peak}");
    }
    let _ = writeln!(
        s,
        "interned strings: {} ({:.1} MiB of text)",
        meterflow_engine::Sym::interned_count(),
        meterflow_engine::Sym::interned_bytes() as f64 / (1024.0 * 1024.0)
    );
    s
}

/// The process's peak resident memory, as `/proc/self/status` tells it (Linux).
fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.0} MiB", kib / 1024.0))
}

/// What `meterflow bench --kafka` prints: the raw consume and copy rates beside the
/// pipeline's (`name`) end-to-end rate, and their ratios.
pub fn render_kafka(
    k: &KafkaBenchReport,
    brokers: &str,
    name: &str,
    (batch, partitions): (u32, i32),
) -> String {
    let mut s = String::new();
    let raw = k.raw.elapsed.as_secs_f64().max(1e-9);
    let engine = k.engine.as_secs_f64().max(1e-9);
    let samples = k.report.counters.samples_in;
    let _ = writeln!(s, "machine: {}", machine());
    let _ = writeln!(
        s,
        "kafka://{brokers}: {} messages ({:.1} MB, {} samples, {batch} per notification, {partitions} partition{})",
        k.messages,
        k.bytes as f64 / 1e6,
        samples,
        if partitions == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "raw consume (plain rdkafka consumer): {:.3}s, {:.0} messages/s, {:.0} MB/s, {:.0} samples/s",
        raw,
        k.raw.messages as f64 / raw,
        k.raw.bytes as f64 / raw / 1e6,
        samples as f64 / raw
    );
    let copy = k.copy.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        s,
        "raw copy (plain consumer -> producer, lz4, acks=all, no processing): {} messages acknowledged in {:.3}s, {:.0} messages/s, {:.0} samples/s",
        k.copy.messages,
        copy,
        k.copy.messages as f64 / copy,
        samples as f64 / copy
    );
    let out: u64 = k.report.counters.sinks.iter().map(|s| s.samples_out).sum();
    let _ = writeln!(
        s,
        "end to end (kafka -> {name} -> kafka, {} worker{}): {:.3}s, {:.0} messages/s, {:.0} samples/s; samples out: {out}",
        k.report.workers,
        if k.report.workers == 1 { "" } else { "s" },
        engine,
        k.report.counters.lines as f64 / engine,
        samples as f64 / engine,
    );
    let _ = writeln!(
        s,
        "ratio end to end / raw consume: {:.2}; end to end / raw copy: {:.2}",
        raw / engine,
        copy / engine
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_replaces_instances_round_by_round() {
        // 4 instances, 5 meters: 20 samples a round; 12 rounds.
        let ids_of = |churn| {
            let mut buf = Vec::new();
            generate(&mut buf, (240, 4, 20, churn), 1).unwrap();
            let mut per_round = Vec::new();
            for line in String::from_utf8(buf).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let ids: std::collections::BTreeSet<String> = v["payload"]["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["resource_id"].as_str().unwrap().to_owned())
                    .collect();
                per_round.push(ids);
            }
            per_round
        };
        let steady = ids_of(0);
        assert!(steady.iter().all(|ids| ids == &steady[0] && ids.len() == 4));
        let churned = ids_of(3);
        assert!(churned.iter().all(|ids| ids.len() == 4));
        let all: std::collections::BTreeSet<&String> = churned.iter().flatten().collect();
        // Every instance is replaced every 3 rounds, staggered: about 4 + 12 * 4 / 3 ids.
        assert!((16..=20).contains(&all.len()), "{}", all.len());
        for pair in churned.windows(2) {
            assert!(pair[0] != pair[1], "some instance changes every round");
        }
    }

    #[test]
    fn generated_lines_decode_fully() {
        let mut buf = Vec::new();
        generate(&mut buf, (120, 4, 50, 0), 1).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 3);
        let mut n = 0;
        for line in text.lines() {
            let bytes = bytes::Bytes::copy_from_slice(line.as_bytes());
            meterflow_engine::wire::decode_line(&bytes, &mut |d| {
                assert!(matches!(d, meterflow_engine::wire::Decoded::Sample(_)));
                n += 1;
            })
            .unwrap();
        }
        assert_eq!(n, 120);
        let per_sample = text.len() / 120;
        assert!(
            (400..600).contains(&per_sample),
            "{per_sample} bytes per sample"
        );
    }
}
