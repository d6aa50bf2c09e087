//! End to end against a real Kafka-protocol broker (`KAFKA_BOOTSTRAP`, started by `.ci/run`):
//! oslo-enveloped notifications in, the same output as the file run, offsets committed only
//! after output, and a restart resuming where the last run stopped.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn bootstrap() -> Option<String> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
            panic!("KAFKA_BOOTSTRAP is not set in CI: .ci/run must start the broker")
        }
        _ => {
            eprintln!("skipping: set KAFKA_BOOTSTRAP=HOST:PORT to run the broker tests");
            None
        }
    }
}

fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))
    .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer")
}

/// Produces each line as oslo.messaging's Kafka driver writes notifications.
fn produce(bootstrap: &str, topic: &str, lines: &[impl AsRef<str>]) {
    let producer = producer(bootstrap);
    for line in lines {
        let mut inner: serde_json::Value = serde_json::from_str(line.as_ref()).unwrap();
        inner["_context"] = serde_json::json!({});
        let value = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner.to_string()})
            .to_string();
        loop {
            match producer.send(BaseRecord::<(), _>::to(topic).payload(&value)) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

fn produce_raw(bootstrap: &str, topic: &str, value: &str) {
    let producer = producer(bootstrap);
    producer
        .send(BaseRecord::<(), _>::to(topic).payload(value))
        .map_err(|(e, _)| e)
        .expect("queued");
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Reads `topic` from its start to its end (group `group`) and writes what a source of `kind`
/// (`meters` or `events`) takes of it to `output`, unchanged; returns the run.
fn copy_topic(
    bootstrap: &str,
    (topic, group): (&str, &str),
    kind: &str,
    output: &std::path::Path,
) -> std::process::Output {
    let definition = output.with_extension("yaml");
    std::fs::write(
        &definition,
        format!(
            "sources: [{{name: all, {kind}: ['*'], sinks: [copy]}}]\nsinks: [{{name: copy, publishers: ['file://{}']}}]\n",
            output.display()
        ),
    )
    .unwrap();
    meterflow(&[
        "run",
        definition.to_str().unwrap(),
        "--no-progress",
        "--input",
        &format!("kafka://{bootstrap}/{topic}?group={group}&eof=true"),
    ])
}

/// `n` polling notifications of one `disk.usage` sample each, the volume numbering them (so a
/// lost or repeated sample shows), over 7 resources.
fn disk_usage_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "payload": {{"samples": [{{"counter_name": "disk.usage", "counter_type": "gauge", "counter_unit": "B", "counter_volume": {i}, "user_id": null, "project_id": null, "resource_id": "vm-{}", "timestamp": "2021-07-30T02:00:00", "resource_metadata": {{}}, "source": "openstack"}}]}}}}"#,
                i % 7
            )
        })
        .collect()
}

/// How many times each of the `n` numbered samples of [`disk_usage_lines`] (by its volume)
/// is in the file at `path`.
fn copies_by_volume(path: &std::path::Path, n: usize) -> Vec<u32> {
    let mut seen = vec![0u32; n];
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen[v["counter_volume"].as_u64().unwrap() as usize] += 1;
    }
    seen
}

#[test]
fn kafka_input_matches_the_file_run_and_resumes_from_committed_offsets() {
    let Some(bootstrap) = bootstrap() else { return };
    let case = golden_dir().join("roc_cpu_util");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("mf-test-{}-{nanos}", std::process::id());
    create_topic(&bootstrap, &topic);
    let input = std::fs::read_to_string(case.join("input.jsonl")).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    produce(&bootstrap, &topic, &lines);
    produce_raw(&bootstrap, &topic, "{a poison message");
    // The first notification again: its samples are older than their instances' last, so
    // rate_of_change rejects them after decoding, which names the same position.
    produce(&bootstrap, &topic, &lines[..1]);

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let pipeline = pipeline_with_output(&case.join("pipeline.yaml"), dir.path(), &output);
    let url = format!("kafka://{bootstrap}/{topic}?group=mf-{nanos}&eof=true");
    let run = || {
        meterflow(&[
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            &url,
            "--summary-json",
            "--dead-letter",
            dead.to_str().unwrap(),
        ])
    };

    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    compare(&case.join("expected.jsonl"), &output)
        .unwrap_or_else(|d| panic!("{d}\n{}", text(&out)));
    // The poison message is counted, kept with its offset, and consumption went on; the
    // transformer's rejections carry their message's position in the same form.
    let dead_records = std::fs::read_to_string(&dead).unwrap();
    let records: Vec<serde_json::Value> = dead_records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 5, "{dead_records}");
    let poison = records.iter().find(|r| r["reason"] == "bad_json").unwrap();
    assert_eq!(poison["position"], format!("{topic}/0@{}", lines.len()));
    assert_eq!(poison["record"], "{a poison message");
    for r in records.iter().filter(|r| r["reason"] != "bad_json") {
        assert_eq!(r["reason"], "out_of_order", "{r}");
        assert_eq!(
            r["position"],
            format!("{topic}/0@{}", lines.len() + 1),
            "{r}"
        );
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], lines.len() + 1);

    // Same group again: everything was committed, nothing is read twice.
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], 0, "{}", text(&out));
    compare(&case.join("expected.jsonl"), &output).unwrap();
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap(),
        dead_records,
        "nothing read twice"
    );

    // New data: only it is read.
    produce(&bootstrap, &topic, &lines[..1]);
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], 1, "{}", text(&out));
}

/// Compressed as `compression=` asks (lz4 by default, zstd: both codecs are built in).
#[test]
fn kafka_publisher_round_trips_through_a_topic() {
    let Some(bootstrap) = bootstrap() else { return };
    for compression in ["lz4", "zstd"] {
        publisher_round_trip(&bootstrap, compression);
    }
}

fn publisher_round_trip(bootstrap: &str, compression: &str) {
    let case = golden_dir().join("roc_cpu_util");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (input_topic, output_topic) = (format!("mf-in-{nanos}"), format!("mf-out-{nanos}"));
    create_topic(bootstrap, &input_topic);
    create_topic(bootstrap, &output_topic);
    let input = std::fs::read_to_string(case.join("input.jsonl")).unwrap();
    produce(bootstrap, &input_topic, &input.lines().collect::<Vec<_>>());

    // Stage 1: the case's pipeline, publishing to a Kafka topic.
    let dir = tempfile::tempdir().unwrap();
    let stage1 = dir.path().join("stage1.yaml");
    let yaml = std::fs::read_to_string(case.join("pipeline.yaml"))
        .unwrap()
        .replace(
            "file://OUTPUT",
            &format!("kafka://{bootstrap}?topic={output_topic}&compression={compression}"),
        );
    std::fs::write(&stage1, yaml).unwrap();
    let out = meterflow(&[
        "run",
        stage1.to_str().unwrap(),
        "--input",
        &format!("kafka://{bootstrap}/{input_topic}?group=s1-{nanos}&eof=true"),
    ]);
    assert!(out.status.success(), "{compression}: {}", text(&out));

    // Stage 2: read that topic back and write it to a file, unchanged.
    let output = dir.path().join("out.jsonl");
    let group = format!("s2-{nanos}");
    let out = copy_topic(bootstrap, (&output_topic, &group), "meters", &output);
    assert!(out.status.success(), "{compression}: {}", text(&out));
    compare(&case.join("expected.jsonl"), &output)
        .unwrap_or_else(|d| panic!("{compression}: {d}\n{}", text(&out)));
}

#[test]
fn a_killed_engine_loses_nothing_on_restart() {
    let Some(bootstrap) = bootstrap() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("mf-kill-{nanos}");
    create_topic(&bootstrap, &topic);
    // 40,000 notifications of one sample each; the pipeline is stateless, so every input
    // sample must come out at least once whatever the restarts.
    let lines = disk_usage_lines(40_000);
    produce(&bootstrap, &topic, &lines);

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "sources: [{{name: s, meters: [disk.usage], sinks: [k]}}]\nsinks: [{{name: k, transformers: [{{name: unit_conversion, parameters: {{target: {{unit: KB}}}}}}], publishers: ['file://{}']}}]\n",
            output.display()
        ),
    )
    .unwrap();
    let url = format!("kafka://{bootstrap}/{topic}?group=kill-{nanos}&eof=true");
    let args = [
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        &url,
        "--workers",
        "2",
    ];

    // Kill the first run with SIGKILL once it has written some output.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::metadata(&output).map_or(0, |m| m.len()) == 0
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .count();

    // Restart: resumes from the last committed offset and reads to the end.
    let out = meterflow(&args);
    assert!(out.status.success(), "{}", text(&out));
    let seen = copies_by_volume(&output, lines.len());
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    let replayed: u32 = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    eprintln!(
        "{after_kill} lines written before SIGKILL, {replayed} samples replayed after restart"
    );
    assert!(
        after_kill < lines.len(),
        "the kill came too late to test anything"
    );
    assert!(
        missing.is_empty(),
        "{} samples lost (first {:?}); {after_kill} lines before the kill",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Events published to a topic by a kafka:// event sink (one `event` notification each) and
/// read back from it are the events the file sink writes.
#[test]
fn kafka_event_sink_round_trips_through_a_topic() {
    let Some(bootstrap) = bootstrap() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("mf-events-{nanos}");
    create_topic(&bootstrap, &topic);
    let data = format!("{}/tests/data/notifications", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let direct = dir.path().join("direct.jsonl");
    let stage1 = dir.path().join("stage1.yaml");
    std::fs::write(
        &stage1,
        format!(
            "sources: [{{name: e, events: ['*'], sinks: [out]}}]\nsinks: [{{name: out, publishers: ['file://{}', 'kafka://{bootstrap}?topic={topic}']}}]\n",
            direct.display()
        ),
    )
    .unwrap();
    let mut args = vec![
        "run".to_owned(),
        stage1.display().to_string(),
        "--no-progress".into(),
    ];
    for f in ["cinder", "glance", "neutron", "nova", "swift"] {
        args.extend(["--input".to_owned(), format!("{data}/{f}.jsonl")]);
    }
    let out = meterflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));

    let back = dir.path().join("back.jsonl");
    let group = format!("ev-{nanos}");
    let out = copy_topic(&bootstrap, (&topic, &group), "events", &back);
    assert!(out.status.success(), "{}", text(&out));
    let want = sorted_lines(&direct);
    assert_eq!(want.len(), 17);
    assert_eq!(sorted_lines(&back), want);
}

/// A broker of this test's own (`TANSU`: the broker binary `.ci/run` installs), so pausing it
/// does not disturb the other tests; stopped when dropped.
struct OwnBroker {
    child: std::process::Child,
    bootstrap: String,
}

impl OwnBroker {
    fn start() -> Option<OwnBroker> {
        let tansu = match std::env::var("TANSU") {
            Ok(t) if !t.is_empty() => t,
            _ if std::env::var("CI").is_ok_and(|c| c == "true") => {
                panic!("TANSU is not set in CI: .ci/run must export the broker binary's path")
            }
            _ => {
                eprintln!("skipping: set TANSU=/path/to/tansu to run the broker-outage test");
                return None;
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bootstrap = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{bootstrap}"),
                "--advertised-listener-url",
                &format!("tcp://{bootstrap}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the broker starts");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "broker did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(OwnBroker { child, bootstrap })
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker stops answering mid-stream (SIGSTOP, as KAFKA.md advises for a memory-only
/// broker) for longer than the consumer's session timeout: the engine waits, reconnects when
/// it is back, and every sample reaches both the file and the output topic.
#[test]
fn a_broker_outage_mid_stream_loses_nothing() {
    let Some(broker) = OwnBroker::start() else {
        return;
    };
    let bootstrap = broker.bootstrap.clone();
    let (input, output_topic) = ("outage-in", "outage-out");
    create_topic(&bootstrap, input);
    create_topic(&bootstrap, output_topic);
    let n = 30_000;
    let lines = disk_usage_lines(n);
    produce(&bootstrap, input, &lines);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "sources: [{{name: s, meters: ['*'], sinks: [k]}}]\nsinks: [{{name: k, publishers: ['file://{}', 'kafka://{bootstrap}?topic={output_topic}']}}]\n",
            output.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args([
            "run",
            pipeline.to_str().unwrap(),
            "--input",
            &format!("kafka://{bootstrap}/{input}?group=outage&eof=true"),
            "--no-progress",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::metadata(&output).map_or(0, |m| m.len()) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.signal("-STOP");
    let before = std::fs::read_to_string(&output).unwrap().lines().count();
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the engine gave up while the broker was away"
    );
    broker.signal("-CONT");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(before < n, "the outage came after the end: nothing tested");

    let count = |path: &std::path::Path| {
        copies_by_volume(path, n)
            .iter()
            .filter(|&&c| c == 0)
            .count()
    };
    assert_eq!(count(&output), 0, "samples lost in the file; {stderr}");
    // What went to the output topic, read back by a second run.
    let back = dir.path().join("back.jsonl");
    let out = copy_topic(&bootstrap, (output_topic, "outage-check"), "meters", &back);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        count(&back),
        0,
        "samples lost in the output topic; {stderr}"
    );
    eprintln!("{before} samples written before the outage; engine log:\n{stderr}");
}

/// `bench --kafka` loads a topic, measures the raw consume, the raw copy and the engine end to
/// end, and every generated message goes through.
#[test]
fn bench_kafka_reports_both_rates() {
    let Some(bootstrap) = bootstrap() else { return };
    let out = meterflow(&[
        "bench",
        "--kafka",
        &bootstrap,
        "--samples",
        "5000",
        "--batch",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("500 messages") && stdout.contains("5000 samples, 10 per notification"),
        "{stdout}"
    );
    assert!(
        stdout.contains("raw consume (plain rdkafka consumer)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no processing): 500 messages acknowledged in "),
        "{stdout}"
    );
    assert!(stdout.contains("samples/s; samples out: "), "{stdout}");
    assert!(
        stdout.contains("ratio end to end / raw consume: ")
            && stdout.contains("; end to end / raw copy: "),
        "{stdout}"
    );
}

/// A small deterministic generator (the kill moments; its seed is printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `n` polling notifications over 24 instances, each with a cumulative `cpu`, and `memory`
/// and `memory.usage` gauges; event time moves 10 s a notification, and the cpu rate of
/// `vm-1` alternates between high and low every 40 notifications (so its alarm flips).
fn instance_lines(n: usize) -> Vec<String> {
    let mut cpu = [0u64; 24];
    (0..n)
        .map(|i| {
            let t = 10 * i;
            let ts = format!("2021-07-30T{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
            let mut samples = Vec::new();
            for (r, total) in cpu.iter_mut().enumerate() {
                let fast = (i / 40) % 2 == 0;
                *total += if fast { 9_000_000_000 } else { 1_000_000_000 } + r as u64 * 1_000;
                let sample = |name: &str, kind: &str, unit: &str, volume: serde_json::Value| {
                    serde_json::json!({"counter_name": name, "counter_type": kind, "counter_unit": unit,
                        "counter_volume": volume, "user_id": "u", "project_id": "p",
                        "resource_id": format!("vm-{r}"), "timestamp": ts,
                        "resource_metadata": {}, "source": "openstack"})
                };
                samples.push(sample("cpu", "cumulative", "ns", (*total).into()));
                samples.push(sample("memory", "gauge", "MB", 4096.into()));
                samples.push(sample("memory.usage", "gauge", "MB", ((i * 7 + r) % 4096).into()));
            }
            serde_json::json!({"event_type": "telemetry.polling", "priority": "SAMPLE",
                "publisher_id": "x", "message_id": format!("n-{i}"),
                "timestamp": "2021-07-30 00:00:00", "payload": {"samples": samples}})
            .to_string()
        })
        .collect()
}

/// A file's samples without their `message_id` (a transformer's new samples get a fresh
/// one each time they are written), as a sorted set.
fn sample_set(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            v.as_object_mut().unwrap().remove("message_id");
            v.to_string()
        })
        .collect()
}

/// What the store holds: every instance's cpu_util points (mean and count) and the alarm's
/// state transitions.
fn store_contents(store: &std::path::Path) -> Vec<String> {
    let store = store.to_str().unwrap();
    let mut contents = Vec::new();
    for r in 0..24 {
        for aggregation in ["mean", "count"] {
            let resource = format!("vm-{r}");
            let out = meterflow(&[
                "measures",
                "--store",
                store,
                "--resource",
                &resource,
                "--metric",
                "cpu_util",
                "--aggregation",
                aggregation,
            ]);
            assert!(out.status.success(), "{}", text(&out));
            contents.push(format!(
                "{resource} {aggregation} {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    let out = meterflow(&["alarms", "history", "cpu_high", "--store", store]);
    assert!(out.status.success(), "{}", text(&out));
    let history: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for entry in history {
        if entry["type"] == "state transition" {
            contents.push(format!("alarm {} {}", entry["event_time"], entry["detail"]));
        }
    }
    contents
}

/// The sinks of [`exactly_once_dir`]'s definition.
const EXACTLY_ONCE_SINKS: [&str; 5] = ["rates", "deltas", "held", "grouped", "util"];

/// A directory under `dir` with the exactly-once definition (rate_of_change + delta,
/// accumulator, aggregator, arithmetic, a store with a threshold alarm) writing into it.
fn exactly_once_dir(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let out = |sink: &str| format!("file://{}", root.join(format!("{sink}.jsonl")).display());
    let definition = serde_json::json!({
        "archive_policies": [{"name": "minutely", "aggregation_methods": ["mean", "count"],
            "definition": [{"granularity": 60, "points": 100000}]}],
        "sources": [
            {"name": "cpu", "meters": ["cpu"], "sinks": ["rates", "deltas", "held", "grouped"]},
            {"name": "memory", "meters": ["memory", "memory.usage"], "sinks": ["util"]},
        ],
        "sinks": [
            {"name": "rates", "transformers": [{"name": "rate_of_change", "parameters":
                {"target": {"name": "cpu_util", "unit": "%", "type": "gauge",
                    "scale": 0.0000001}}}],
             "publishers": [out("rates"), "gnocchi://?archive_policy=minutely"]},
            {"name": "deltas", "transformers": [{"name": "delta"}], "publishers": [out("deltas")]},
            {"name": "held", "transformers": [{"name": "accumulator", "parameters": {"size": 1000}}],
             "publishers": [out("held")]},
            {"name": "grouped", "transformers": [{"name": "aggregator", "parameters": {"size": 333}}],
             "publishers": [out("grouped")]},
            {"name": "util", "transformers": [{"name": "arithmetic", "parameters": {"target":
                {"name": "memory_util", "unit": "%", "type": "gauge",
                 "expr": "100 * $(memory.usage) / $(memory)"}}}],
             "publishers": [out("util")]},
        ],
        "alarms": [{"name": "cpu_high", "type": "gnocchi_resources_threshold",
            "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-1",
                "resource_type": "generic", "aggregation_method": "mean", "granularity": 60,
                "comparison_operator": "gt", "threshold": 50, "evaluation_periods": 1}}],
    });
    let path = root.join("pipeline.yaml");
    std::fs::write(&path, definition.to_string()).unwrap();
    root
}

/// `meterflow run` of [`exactly_once_dir`] `root` over `topic` as group `group`.
fn exactly_once_args(
    root: &std::path::Path,
    (bootstrap, topic, group): (&str, &str, &str),
    workers: usize,
) -> Vec<String> {
    vec![
        "run".into(),
        root.join("pipeline.yaml").display().to_string(),
        "--input".into(),
        format!("kafka://{bootstrap}/{topic}?group={group}&eof=true"),
        "--store".into(),
        root.join("store").display().to_string(),
        "--workers".into(),
        workers.to_string(),
        "--checkpoint-every".into(),
        "0.2".into(),
        "--no-progress".into(),
    ]
}

/// The runtime issue's "done when": rate_of_change + delta, accumulator, aggregator,
/// arithmetic and a gnocchi:// store with a threshold alarm, SIGKILLed at random moments
/// and restarted each time (with another worker count), then run to the end, give the
/// uninterrupted run's file outputs
/// (as sets), the same stored measures (none lost, none counted twice) and the same alarm
/// transitions.
#[test]
fn sigkills_at_random_moments_change_no_output() {
    let Some(bootstrap) = bootstrap() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = nanos as u64;
    eprintln!("seed {seed}");
    let mut random = Lcg(seed);
    let topic = format!("mf-exactly-once-{nanos}");
    create_topic(&bootstrap, &topic);
    let lines = instance_lines(3_000);
    produce(&bootstrap, &topic, &lines);

    let dir = tempfile::tempdir().unwrap();
    let sinks = EXACTLY_ONCE_SINKS;
    let run_dir = |name: &str| exactly_once_dir(dir.path(), name);
    let args = |root: &std::path::Path, group: &str, workers: usize| {
        exactly_once_args(root, (&bootstrap, &topic, group), workers)
    };
    let reference = run_dir("reference");
    let args_ref = args(&reference, &format!("reference-{nanos}"), 3);
    let out = meterflow(&args_ref.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));

    let killed = run_dir("killed");
    // Each restart with another worker count: every worker takes its share of each part of
    // the checkpoint and of the store, however many wrote them.
    let group = format!("killed-{nanos}");
    let written = || -> u64 {
        sinks
            .iter()
            .map(|s| std::fs::metadata(killed.join(format!("{s}.jsonl"))).map_or(0, |m| m.len()))
            .sum()
    };
    let mut kills = 0;
    for workers in [3, 1, 4, 2, 3, 1] {
        let before = written();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
            .args(args(&killed, &group, workers))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Once this run has made progress of its own, at a random moment.
        let started = std::time::Instant::now();
        while written() == before && started.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(random.below(800)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    eprintln!("{kills} SIGKILLs, {} bytes written by then", written());
    assert!(
        kills >= 5,
        "the runs ended before they could be killed; give more input"
    );
    let args_last = args(&killed, &group, 2);
    let out = meterflow(&args_last.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("resumed from checkpoint"),
        "{}",
        text(&out)
    );

    same_outputs(&reference, &killed, &format!("seed {seed}"));
}

/// Asserts that the runs in [`exactly_once_dir`]s `got` and `want` wrote the same samples
/// (as sets) to every file, and left the same measures and alarm transitions in the store.
fn same_outputs(want_dir: &std::path::Path, got_dir: &std::path::Path, what: &str) {
    for sink in EXACTLY_ONCE_SINKS {
        let want = sample_set(&want_dir.join(format!("{sink}.jsonl")));
        let got = sample_set(&got_dir.join(format!("{sink}.jsonl")));
        assert!(!want.is_empty(), "sink {sink} wrote nothing");
        let missing = want.difference(&got).count();
        let extra = got.difference(&want).count();
        assert!(
            missing == 0 && extra == 0,
            "sink {sink}: {missing} samples missing, {extra} not in the uninterrupted run ({what}); e.g. {:?}",
            want.difference(&got).next().or(got.difference(&want).next())
        );
    }
    let want = store_contents(&want_dir.join("store"));
    let got = store_contents(&got_dir.join("store"));
    assert!(
        want.iter().any(|l| l.starts_with("alarm ")),
        "the alarm never changed state: the test checks nothing of alarms"
    );
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        // Around the first character that differs (a line holds a whole series).
        let (g, w) = (
            got.get(i).map_or("", String::as_str),
            want.get(i).map_or("", String::as_str),
        );
        let at = g.bytes().zip(w.bytes()).take_while(|(a, b)| a == b).count();
        let window = |s: &str| {
            let bytes = &s.as_bytes()[at.saturating_sub(150).min(s.len())..(at + 250).min(s.len())];
            String::from_utf8_lossy(bytes).into_owned()
        };
        panic!(
            "the store differs ({what}): line {i} of {}, from byte {at}:\n got  {}\n want {}",
            want.len(),
            window(g),
            window(w)
        );
    }
}

/// A run that stops at the end of its topic and is started again, when more has arrived,
/// with another worker count: each new worker takes its share of the transformers' state
/// (rate_of_change's previous samples, samples the accumulator, aggregator and arithmetic
/// hold), the store's metrics and the alarm, and the outputs are those of one run over all.
#[test]
fn a_restart_with_another_worker_count_resumes_every_share() {
    let Some(bootstrap) = bootstrap() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (whole, parts) = (format!("mf-whole-{nanos}"), format!("mf-parts-{nanos}"));
    create_topic(&bootstrap, &whole);
    create_topic(&bootstrap, &parts);
    let lines = instance_lines(900);
    produce(&bootstrap, &whole, &lines);
    let dir = tempfile::tempdir().unwrap();
    let reference = exactly_once_dir(dir.path(), "reference");
    let args = exactly_once_args(&reference, (&bootstrap, &whole, "whole"), 1);
    let out = meterflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));

    let split = exactly_once_dir(dir.path(), "split");
    for (part, workers) in [
        (&lines[..300], 3),
        (&lines[300..650], 1),
        (&lines[650..], 4),
    ] {
        produce(&bootstrap, &parts, part);
        let args = exactly_once_args(&split, (&bootstrap, &parts, "parts"), workers);
        let out = meterflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", text(&out));
        if workers != 3 {
            assert!(
                text(&out).contains("resumed from checkpoint"),
                "{}",
                text(&out)
            );
        }
    }
    same_outputs(&reference, &split, "3, then 1, then 4 workers");
}
