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
fn produce(bootstrap: &str, topic: &str, lines: &[&str]) {
    let producer = producer(bootstrap);
    for line in lines {
        let mut inner: serde_json::Value = serde_json::from_str(line).unwrap();
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
    // The poison message is counted, kept with its offset, and consumption went on.
    let dead_records = std::fs::read_to_string(&dead).unwrap();
    let record: serde_json::Value = serde_json::from_str(dead_records.trim()).unwrap();
    assert_eq!(record["reason"], "bad_json");
    assert_eq!(record["position"], format!("{topic}/0@{}", lines.len()));
    assert_eq!(record["record"], "{a poison message");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["notifications"], lines.len());

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

#[test]
fn kafka_publisher_round_trips_through_a_topic() {
    let Some(bootstrap) = bootstrap() else { return };
    let case = golden_dir().join("roc_cpu_util");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (input_topic, output_topic) = (format!("mf-in-{nanos}"), format!("mf-out-{nanos}"));
    create_topic(&bootstrap, &input_topic);
    create_topic(&bootstrap, &output_topic);
    let input = std::fs::read_to_string(case.join("input.jsonl")).unwrap();
    produce(&bootstrap, &input_topic, &input.lines().collect::<Vec<_>>());

    // Stage 1: the case's pipeline, publishing to a Kafka topic.
    let dir = tempfile::tempdir().unwrap();
    let stage1 = dir.path().join("stage1.yaml");
    let yaml = std::fs::read_to_string(case.join("pipeline.yaml"))
        .unwrap()
        .replace(
            "file://OUTPUT",
            &format!("kafka://{bootstrap}?topic={output_topic}"),
        );
    std::fs::write(&stage1, yaml).unwrap();
    let out = meterflow(&[
        "run",
        stage1.to_str().unwrap(),
        "--input",
        &format!("kafka://{bootstrap}/{input_topic}?group=s1-{nanos}&eof=true"),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Stage 2: read that topic back and write it to a file, unchanged.
    let output = dir.path().join("out.jsonl");
    let stage2 = dir.path().join("stage2.yaml");
    std::fs::write(
        &stage2,
        format!(
            "sources: [{{name: all, meters: ['*'], sinks: [copy]}}]\nsinks: [{{name: copy, publishers: ['file://{}']}}]\n",
            output.display()
        ),
    )
    .unwrap();
    let out = meterflow(&[
        "run",
        stage2.to_str().unwrap(),
        "--input",
        &format!("kafka://{bootstrap}/{output_topic}?group=s2-{nanos}&eof=true"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    compare(&case.join("expected.jsonl"), &output)
        .unwrap_or_else(|d| panic!("{d}\n{}", text(&out)));
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
    let lines: Vec<String> = (0..40_000)
        .map(|i| {
            format!(
                r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "payload": {{"samples": [{{"counter_name": "disk.usage", "counter_type": "gauge", "counter_unit": "B", "counter_volume": {i}, "user_id": null, "project_id": null, "resource_id": "vm-{}", "timestamp": "2021-07-30T02:00:00", "resource_metadata": {{}}, "source": "openstack"}}]}}}}"#,
                i % 7
            )
        })
        .collect();
    produce(
        &bootstrap,
        &topic,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );

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
    let mut seen = vec![0u32; lines.len()];
    for line in std::fs::read_to_string(&output).unwrap().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen[v["counter_volume"].as_u64().unwrap() as usize] += 1;
    }
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
