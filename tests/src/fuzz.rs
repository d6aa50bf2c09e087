//! A mutation fuzzer for every decoder and parser that takes outside input: notification
//! lines, oslo envelopes, pipeline definitions, alarm definitions, meter definitions (and the
//! notifications they read), expressions, JSONPath, API bodies, Aodh complex queries,
//! Gnocchi's dynamic aggregates operations (evaluated), resource types and metric value
//! queries.
//!
//! Each execution takes a seed input of its target, applies one to four mutations (byte
//! flips, inserted tokens that parsers find hard — brackets, quotes, `1e400`, `NaN`, escapes —
//! deleted ranges, a slice repeated up to 200 times, splices with another seed, truncation)
//! and runs the target on it. A panic is a crash; an execution over the hang limit is a hang
//! (a watchdog reports the input and aborts); a stack overflow aborts the process. Seeded, so
//! a finding is replayed by its seed.
//!
//! `cargo test -p meterflow-tests --test fuzz` runs each target for `MF_FUZZ_SECONDS` (default
//! 2); `cargo run --release -p meterflow-tests --example fuzz -- --execs 10000000` runs them
//! by hand. With `MF_FUZZ_SAVE=DIR` the first inputs that crash are written there whole.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterflow_engine::wire::decode_line;
use meterflow_engine::Sample;
use meterflow_operators::alarm::definition::AlarmDefinition;
use meterflow_operators::expr::Expr;
use meterflow_operators::notification::message_view;
use meterflow_operators::notification::meters::MeterDefinitions;
use meterflow_operators::notification::path::Path;
use meterflow_pipelines::plan::Plan;

/// What can be fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Input lines: sample notifications, bare samples, service notifications.
    NotificationLine,
    /// Lines in oslo.messaging's envelope (`{"oslo.message": "<json text>"}`).
    OsloEnvelope,
    /// Pipeline definitions (YAML and JSON).
    PipelineDefinition,
    /// Alarm definitions in Aodh's JSON form.
    AlarmDefinition,
    /// Meter definitions, applied to a service notification.
    MeterDefinition,
    /// Service notifications read by the shipped meter definitions.
    ServiceNotification,
    /// Transformer expressions, evaluated on a sample.
    Expression,
    /// JSONPath, found in a notification.
    JsonPath,
    /// `POST /v1/batch/resources/metrics/measures` bodies.
    ApiBody,
    /// Aodh's complex queries (`POST /v2/query/alarms` bodies), applied to alarms.
    ComplexQuery,
    /// Gnocchi's dynamic aggregates operations (text or lists), evaluated over series.
    AggregatesOperations,
    /// Gnocchi resource types (`POST /v1/resource_type`), patched and checked on resources.
    ResourceType,
    /// `POST /v1/search/metric` value queries, applied to values.
    ValueQuery,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 13] = [
        Target::NotificationLine,
        Target::OsloEnvelope,
        Target::PipelineDefinition,
        Target::AlarmDefinition,
        Target::MeterDefinition,
        Target::ServiceNotification,
        Target::Expression,
        Target::JsonPath,
        Target::ApiBody,
        Target::ComplexQuery,
        Target::AggregatesOperations,
        Target::ResourceType,
        Target::ValueQuery,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::NotificationLine => "notification-line",
            Target::OsloEnvelope => "oslo-envelope",
            Target::PipelineDefinition => "pipeline-definition",
            Target::AlarmDefinition => "alarm-definition",
            Target::MeterDefinition => "meter-definition",
            Target::ServiceNotification => "service-notification",
            Target::Expression => "expression",
            Target::JsonPath => "jsonpath",
            Target::ApiBody => "api-body",
            Target::ComplexQuery => "complex-query",
            Target::AggregatesOperations => "aggregates-operations",
            Target::ResourceType => "resource-type",
            Target::ValueQuery => "value-query",
        }
    }

    fn seeds(self) -> Vec<String> {
        let lines: Vec<String> = include_str!("../../pipelines/examples/polling-sample.jsonl")
            .lines()
            .take(4)
            .map(str::to_owned)
            .collect();
        match self {
            Target::NotificationLine => {
                let mut seeds = lines;
                seeds.push(SAMPLE.to_owned());
                seeds.push(INSTANCE.to_owned());
                seeds
            }
            Target::OsloEnvelope => lines
                .iter()
                .chain([INSTANCE.to_owned()].iter())
                .map(|l| serde_json::json!({"oslo.version": "2.0", "oslo.message": l}).to_string())
                .collect(),
            Target::PipelineDefinition => vec![
                include_str!("../../pipelines/examples/rate-and-delta.yaml").to_owned(),
                include_str!("../../pipelines/examples/memory-util.yaml").to_owned(),
                include_str!("../../pipelines/examples/gnocchi-store.yaml").to_owned(),
                include_str!("../../pipelines/examples/ceilometer-default.yaml").to_owned(),
            ],
            Target::AlarmDefinition => vec![ALARM.to_owned(), COMPOSITE.to_owned()],
            Target::MeterDefinition => {
                // One meter a seed (a whole file costs a millisecond a run: its regexes and
                // paths), and one file's head for the anchors and merge keys.
                let mut seeds = vec![METER_FILES[0]
                    .lines()
                    .take(36)
                    .collect::<Vec<_>>()
                    .join("\n")];
                for file in METER_FILES {
                    let root: serde_yaml::Value =
                        serde_yaml::from_str(file).expect("a shipped file reads");
                    let metrics = root["metric"].as_sequence().expect("metric: a list");
                    seeds.extend(metrics.iter().map(|m| {
                        serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
                            "metric".into(),
                            serde_yaml::Value::Sequence(vec![m.clone()]),
                        )]))
                        .expect("a meter writes")
                    }));
                }
                seeds
            }
            Target::ServiceNotification => vec![INSTANCE.to_owned()],
            Target::Expression => EXPRESSIONS.iter().map(|e| (*e).to_owned()).collect(),
            Target::JsonPath => PATHS.iter().map(|e| (*e).to_owned()).collect(),
            Target::ApiBody => vec![
                r#"{"host-1": {"load": [{"timestamp": "2024-05-01T12:00:10", "value": 1.5}], "temp": {"archive_policy_name": "low", "unit": "C", "measures": [{"timestamp": 1714564800, "value": "2"}]}}}"#.to_owned(),
                r#"{"6f64dadd-35ae-5e35-b630-6acc0ec5f34c": {"cpu": [{"timestamp": "-5 minutes", "value": 3}, {"timestamp": "now", "value": 4}]}}"#.to_owned(),
            ],
            Target::ComplexQuery => vec![
                r#"{"filter": "{\"and\": [{\"=\": {\"name\": \"cpu_high\"}}, {\"or\": [{\">=\": {\"timestamp\": \"2024-05-01T12:00:00\"}}, {\"in\": {\"severity\": [\"low\", \"critical\"]}}]}]}", "orderby": "[{\"name\": \"desc\"}, {\"timestamp\": \"ASC\"}]", "limit": 3}"#.to_owned(),
                r#"{"filter": "{\"not\": {\"=~\": {\"name\": \"^cpu_(high|low)$\"}}}"}"#.to_owned(),
            ],
            Target::AggregatesOperations => vec![
                "(aggregate mean (metric (m0 mean) (m1 mean) (m2 max)))".to_owned(),
                "(rolling sum 2 (resample max 600 (* (metric (m0 mean) (m1 mean)) 2)))".to_owned(),
                r#"["clip", ["rateofchangesec", ["metric", "m*", "mean"]], 0, ["-", ["metric", "m1", "mean"], 1.5]]"#.to_owned(),
                "(aggregate rate:count (>= (abs (metric (m2 max) (m0 mean))) (metric m1 mean)))".to_owned(),
            ],
            Target::ResourceType => vec![
                r#"{"name": "box", "attributes": {"host": {"type": "string", "required": true, "max_length": 16}, "cores": {"type": "number", "required": false, "min": 1, "max": 64}, "image": {"type": "uuid", "required": false}, "up": {"type": "bool", "required": false}, "born": {"type": "datetime", "required": false}}}"#.to_owned(),
                r#"[{"op": "add", "path": "/attributes/zone", "value": {"type": "string", "required": true, "options": {"fill": "z1"}}}, {"op": "remove", "path": "/attributes/cores"}]"#.to_owned(),
                r#"{"id": "x", "host": "h1", "cores": 4, "user_id": null}"#.to_owned(),
            ],
            Target::ValueQuery => vec![
                r#"{"and": [{">=": 10}, {"or": [{"<": 20}, {"=": [{"*": 2}, 6]}]}]}"#.to_owned(),
                r#"{"∨": [{"%": [{"**": 2}, 3]}, {"≥": -1.5}]}"#.to_owned(),
            ],
        }
    }
}

/// The resource type the resource-type target patches and checks bodies against.
const RESOURCE_TYPE: &str = r#"{"name": "box", "attributes": {"host": {"type": "string", "required": true, "max_length": 16}, "cores": {"type": "number", "required": false, "min": 1}}}"#;

/// Meter definition files the seeds come from.
const METER_FILES: [&str; 2] = [
    include_str!("../../pipelines/examples/definitions/meters.d/nova.yaml"),
    include_str!("../../pipelines/examples/definitions/meters.d/neutron.yaml"),
];

const SAMPLE: &str = r#"{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": 230454583686, "user_id": "u", "project_id": null, "resource_id": "vm-1", "timestamp": "2021-07-30T02:00:00.624803", "resource_metadata": {"display_name": "inst-0", "flavor": {"name": "m1.large", "ram": 4096}, "cpu_number": 2}, "source": "openstack", "message_id": "fbfb51b4", "monotonic_time": null}"#;

const INSTANCE: &str = r#"{"event_type": "compute.instance.exists", "priority": "INFO", "publisher_id": "nova-compute:h1", "message_id": "m1", "timestamp": "2021-07-30 02:00:00.1", "payload": {"instance_id": "vm-1", "tenant_id": "p", "user_id": "u", "memory_mb": 512, "vcpus": 2, "root_gb": 1, "disk_gb": 1, "state": "active", "host": "h1", "display_name": "web", "instance_type": "m1.tiny", "audit_period_beginning": "2021-07-30T01:00:00", "audit_period_ending": "2021-07-30T02:00:00", "image_meta": {"base_image_ref": "i"}}}"#;

const ALARM: &str = r#"{"name": "cpu_high", "type": "gnocchi_resources_threshold", "alarm_actions": ["http://127.0.0.1:8080/hook", "log://"], "ok_actions": ["file:///tmp/a.jsonl"], "severity": "critical", "repeat_actions": true, "time_constraints": [{"name": "day", "start": "0 9 * * *", "duration": 3600, "timezone": "Europe/Berlin"}], "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-1", "resource_type": "instance", "aggregation_method": "rate:mean", "granularity": 60, "comparison_operator": "gt", "threshold": 90, "evaluation_periods": 3}}"#;

const COMPOSITE: &str = r#"{"name": "web", "type": "composite", "composite_rule": {"or": [{"type": "gnocchi_resources_threshold", "metric": "cpu_util", "resource_id": "vm-1", "resource_type": "instance", "aggregation_method": "mean", "granularity": 60, "comparison_operator": "gt", "threshold": 90}, {"and": [{"type": "gnocchi_aggregation_by_resources_threshold", "metric": "cpu_util", "resource_type": "instance", "query": "{\"=\": {\"server_group\": \"web\"}}", "aggregation_method": "mean", "granularity": 60, "comparison_operator": "lt", "threshold": 5}]}]}}"#;

const EXPRESSIONS: [&str; 6] = [
    "100.0 / (10**9 * (resource_metadata.cpu_number or 1))",
    "volume * 1.0 / 1024",
    "(volume - 3) if resource_metadata.flavor.ram > 100 else -volume ** 2",
    "not (volume >= 2 and volume < 10) or resource_metadata.display_name == 'inst-0'",
    "abs(min(volume, 3.5e2, max(-1, 2)))",
    "$(cpu) + $(memory.usage) * 2",
];

const PATHS: [&str; 6] = [
    "$.payload.memory_mb",
    "$.payload.image_meta.base_image_ref",
    "$.payload.metrics[?(@.name='cpu.percent')].value * 100",
    "payload.[instance_id, host]",
    "$.payload.display_name + '_' + $.payload.host",
    "$..state | $.payload.`len`",
];

/// Tokens inserted by mutation: what breaks naive parsers.
const DICTIONARY: [&str; 28] = [
    "[",
    "]",
    "{",
    "}",
    "(",
    ")",
    "\"",
    "'",
    "\\",
    "\\u0000",
    "\\ud800",
    ":",
    ",",
    "\n",
    "- ",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "null",
    "$.",
    "..",
    "[?(",
    "`len`",
    "**",
    "9999-12-31T23:59:59+99:00",
    "\u{feff}",
    "&",
];

/// A deterministic mutator over one target's seeds.
struct Mutator {
    rng: fastrand::Rng,
    seeds: Vec<Vec<u8>>,
}

impl Mutator {
    fn next(&mut self) -> Vec<u8> {
        let mut input = self.seeds[self.rng.usize(..self.seeds.len())].clone();
        for _ in 0..self.rng.usize(1..=4) {
            self.mutate(&mut input);
        }
        input
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let at = |rng: &mut fastrand::Rng, len: usize| rng.usize(..=len);
        match self.rng.u8(..7) {
            0 if !input.is_empty() => {
                let i = self.rng.usize(..input.len());
                input[i] = self.rng.u8(..);
            }
            1 => {
                let token = DICTIONARY[self.rng.usize(..DICTIONARY.len())].as_bytes();
                let i = at(&mut self.rng, input.len());
                input.splice(i..i, token.iter().copied());
            }
            2 if !input.is_empty() => {
                let i = self.rng.usize(..input.len());
                let j = (i + self.rng.usize(1..=32)).min(input.len());
                input.drain(i..j);
            }
            3 if !input.is_empty() => {
                // Repeat a short slice: depth and length.
                let i = self.rng.usize(..input.len());
                let j = (i + self.rng.usize(1..=8)).min(input.len());
                let slice = input[i..j].to_vec();
                let times = self.rng.usize(1..=200);
                let at = at(&mut self.rng, input.len());
                let repeated: Vec<u8> = slice
                    .iter()
                    .copied()
                    .cycle()
                    .take(slice.len() * times)
                    .collect();
                input.splice(at..at, repeated);
            }
            4 => {
                let other = &self.seeds[self.rng.usize(..self.seeds.len())];
                let cut = at(&mut self.rng, input.len());
                let from = at(&mut self.rng, other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            5 if !input.is_empty() => {
                let keep = self.rng.usize(..input.len());
                input.truncate(keep);
            }
            _ => {
                let i = at(&mut self.rng, input.len());
                let digits = [
                    "0",
                    "-0",
                    "18446744073709551616",
                    "1e308",
                    "0.000000000000000000001",
                ];
                let d = digits[self.rng.usize(..digits.len())].as_bytes();
                input.splice(i..i, d.iter().copied());
            }
        }
    }
}

/// What one fuzzing run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Inputs that panicked, with the first few (escaped, shortened).
    pub crashes: Vec<String>,
    /// The slowest execution.
    pub slowest: Duration,
    /// Time spent.
    pub elapsed: Duration,
}

/// Runs `target` on mutated inputs until `execs` were run or `budget` passed, whichever is
/// first. An execution longer than `hang` aborts the process after printing the input.
pub fn run(target: Target, seed: u64, execs: u64, budget: Duration, hang: Duration) -> Report {
    let seeds: Vec<Vec<u8>> = target.seeds().into_iter().map(String::into_bytes).collect();
    let mut mutator = Mutator {
        rng: fastrand::Rng::with_seed(seed),
        seeds,
    };
    let runner = Runner::new(target);
    let current = Arc::new(Mutex::new(Vec::<u8>::new()));
    let started_ms = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (current, started_ms, done) = (current.clone(), started_ms.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let at = started_ms.load(Ordering::Relaxed);
                let now = clock.elapsed().as_millis() as u64;
                if at != u64::MAX && now.saturating_sub(at) > hang.as_millis() as u64 {
                    let input = current.lock().map(|c| shown(&c)).unwrap_or_default();
                    eprintln!(
                        "fuzz {}: HANG over {hang:?} (seed {seed}) on input {input}",
                        target.name()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let previous_hook = std::panic::take_hook();
    // The panic's message and place, for the report.
    let last_panic = Arc::new(Mutex::new(String::new()));
    {
        let last_panic = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut l) = last_panic.lock() {
                *l = info.to_string();
            }
        }));
    }
    let mut report = Report::default();
    while report.execs < execs && clock.elapsed() < budget {
        let input = mutator.next();
        if let Ok(mut c) = current.lock() {
            c.clone_from(&input);
        }
        let began = Instant::now();
        started_ms.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runner.run(&input)));
        started_ms.store(u64::MAX, Ordering::Relaxed);
        report.slowest = report.slowest.max(began.elapsed());
        report.execs += 1;
        if outcome.is_err() {
            let why = last_panic.lock().map(|l| l.clone()).unwrap_or_default();
            if report.crashes.len() < 5 {
                report
                    .crashes
                    .push(format!("{why} on input {}", shown(&input)));
                if let Some(dir) = std::env::var_os("MF_FUZZ_SAVE") {
                    let path = std::path::Path::new(&dir).join(format!(
                        "crash-{}-{}",
                        target.name(),
                        report.execs
                    ));
                    let _ = std::fs::write(path, &input);
                }
            } else {
                report.crashes.push(why);
            }
        }
    }
    std::panic::set_hook(previous_hook);
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    report.elapsed = clock.elapsed();
    report
}

/// An input as a short escaped string, for reports.
fn shown(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(input);
    let mut s: String = text.chars().take(400).collect();
    if text.chars().count() > 400 {
        s.push_str(&format!("… ({} bytes)", input.len()));
    }
    format!("{s:?}")
}

/// One target, with what it needs prepared once.
struct Runner {
    target: Target,
    meters: MeterDefinitions,
    notification: serde_json::Value,
    sample: Sample,
}

impl Runner {
    fn new(target: Target) -> Runner {
        let files: Vec<(String, String)> = METER_FILES
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("seed-{i}"), (*t).to_owned()))
            .collect();
        let (meters, problems) = MeterDefinitions::load(&files);
        assert!(problems.is_empty(), "{problems:?}");
        Runner {
            target,
            meters,
            notification: message_view(INSTANCE).expect("the seed notification reads"),
            sample: Sample::gauge("cpu", "vm-1", 3.0, "2021-07-30T00:00:00").with_metadata(
                r#"{"cpu_number": 2, "flavor": {"ram": 512}, "display_name": "inst-0"}"#,
            ),
        }
    }

    fn run(&self, input: &[u8]) {
        let text = || String::from_utf8_lossy(input);
        match self.target {
            Target::NotificationLine | Target::OsloEnvelope => {
                let line = Bytes::copy_from_slice(input);
                let mut n = 0usize;
                let _ = decode_line(&line, &mut |_| n += 1);
                // Service notifications go through the meter definitions.
                if let Ok(view) = message_view(&text()) {
                    self.meters.samples(&view, &mut |_| n += 1);
                }
            }
            Target::PipelineDefinition => {
                let _ = Plan::from_yaml(&text(), "fuzz");
            }
            Target::AlarmDefinition => {
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
                    let _ = AlarmDefinition::from_json(&value, |name| format!("id-{name}"));
                }
            }
            Target::MeterDefinition => {
                let (defs, _) = MeterDefinitions::load(&[("fuzz".into(), text().into_owned())]);
                defs.samples(&self.notification, &mut |_| {});
            }
            Target::ServiceNotification => {
                if let Ok(view) = message_view(&text()) {
                    self.meters.samples(&view, &mut |_| {});
                }
            }
            Target::Expression => {
                if let Ok(e) = Expr::parse(&text(), true) {
                    let _ = e.eval(&self.sample);
                }
            }
            Target::JsonPath => {
                if let Ok(p) = Path::parse(&text()) {
                    let _ = p.find(&self.notification);
                }
            }
            Target::ApiBody => {
                let _ = meterflow_pipelines::api::check_batch_body(input);
            }
            Target::ComplexQuery => {
                let _ = meterflow_pipelines::api::check_complex_query(input);
            }
            Target::AggregatesOperations => {
                use meterflow_operators::aggregate::dynamic::{
                    evaluate, Fetched, Fill, Node, Window,
                };
                let operations = serde_json::from_slice::<serde_json::Value>(input)
                    .unwrap_or_else(|_| serde_json::Value::from(text().into_owned()));
                let Ok(node) = Node::parse(&operations) else {
                    return;
                };
                let g = 300_000_000_000;
                let series: [Vec<(i64, f64)>; 3] = [
                    (0..12).map(|i| (i * g, i as f64)).collect(),
                    (3..9).map(|i| (i * g, -(i as f64) * 1.5)).collect(),
                    vec![(g, f64::MAX), (5 * g, 0.0), (20 * g, 7.0)],
                ];
                let keys = vec![
                    ("m0".to_owned(), "mean".to_owned()),
                    ("m1".to_owned(), "mean".to_owned()),
                    ("m2".to_owned(), "max".to_owned()),
                ];
                let fetched: Vec<Fetched> = series
                    .iter()
                    .enumerate()
                    .map(|(reference, points)| Fetched {
                        reference,
                        granularity: g,
                        points,
                    })
                    .collect();
                for fill in [
                    Fill::Dropna,
                    Fill::Overlap(50.0),
                    Fill::FullFfill,
                    Fill::Value(0.0),
                ] {
                    let window = Window {
                        start: Some(g),
                        stop: None,
                        fill,
                    };
                    let _ = evaluate(&node, &keys, &fetched, window);
                }
            }
            Target::ResourceType => {
                use meterflow_connectors::gnocchi::resource_types::ResourceType;
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) else {
                    return;
                };
                let seed: serde_json::Value = serde_json::from_str(RESOURCE_TYPE).expect("seed");
                let base = ResourceType::from_json(&seed).expect("the seed type reads");
                if let Ok(t) = ResourceType::from_json(&value) {
                    let _ = t.to_json();
                }
                // The same input as a patch, and as a resource of the seed type.
                let _ = base.patched(&value);
                if let Some(body) = value.as_object() {
                    let _ = base.check(body, &["id", "user_id"], false);
                    let _ = base.check(body, &["id", "user_id"], true);
                }
            }
            Target::ValueQuery => {
                let _ = meterflow_pipelines::api::check_value_query(input);
            }
        }
    }
}
