//! Event pipelines (Ceilometer's event_pipeline.yaml: sources with `events:`): notifications
//! become events by the event definitions, are selected by event type and published by their
//! sinks; serialized events (`event` notifications, as Ceilometer's notifier publisher and
//! meterflow's kafka:// event sink write them) are read back as events.

mod common;

use std::path::Path;

use common::*;
use meterflow_pipelines::plan::Plan;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/notifications");
const FILES: [&str; 5] = ["cinder", "glance", "neutron", "nova", "swift"];

fn definition(dir: &Path, events: &str) -> std::path::PathBuf {
    let def = dir.join("def.yaml");
    std::fs::write(
        &def,
        format!(
            "sources:\n  - {{name: meters, meters: ['*'], sinks: [samples]}}\n  - {{name: instances, events: {events}, sinks: [events]}}\nsinks:\n  - {{name: samples, publishers: ['file://{}']}}\n  - {{name: events, publishers: ['file://{}']}}\n",
            dir.join("samples.jsonl").display(),
            dir.join("events.jsonl").display()
        ),
    )
    .unwrap();
    def
}

#[test]
fn event_sinks_publish_the_events_their_sources_select() {
    let events = "['compute.instance.*', 'volume.*']";
    // What the shipped event definitions make of the data, selected by the source's patterns.
    let plan = Plan::from_yaml(
        &format!("sources: [{{name: e, events: {events}, sinks: [s]}}]\nsinks: [{{name: s, publishers: ['log://']}}]\n"),
        "inline",
    )
    .unwrap();
    let mut want = Vec::new();
    let mut made = 0;
    for f in FILES {
        for line in std::fs::read_to_string(format!("{DATA}/{f}.jsonl"))
            .unwrap()
            .lines()
        {
            let view = meterflow_operators::notification::message_view(line).unwrap();
            let event = plan
                .events
                .event(&view)
                .expect("the catch-all makes every event");
            made += 1;
            if !plan.event_route(&event.event_type).0.is_empty() {
                want.push(event.serialize().to_string());
            }
        }
    }
    want.sort();
    assert_eq!(want.len(), 4, "{want:#?}");
    assert!(want
        .iter()
        .any(|e| e.contains("\"compute.instance.update\"")));
    for workers in ["1", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let def = definition(dir.path(), events);
        let mut args = vec![
            "run".to_owned(),
            def.display().to_string(),
            "--workers".into(),
            workers.into(),
            "--no-progress".into(),
            "--summary-json".into(),
        ];
        for f in FILES {
            args.extend(["--input".to_owned(), format!("{DATA}/{f}.jsonl")]);
        }
        let out = meterflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            sorted_lines(&dir.path().join("events.jsonl")),
            want,
            "{workers} workers"
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["events"]["made"], made);
        assert_eq!(summary["events"]["published"], 4);
        assert_eq!(summary["sinks"]["events"]["events"], 4);
        assert_eq!(summary["sinks"]["samples"]["out"], 41);
        // compute.instance.update has no meter definition but is published as an event: kept.
        assert_eq!(summary["dropped"]["no_meter_definition"], 0);
        assert_eq!(summary["samples_in"], 41);
    }
}

#[test]
fn without_an_event_sink_unmetered_notifications_are_still_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Only image events are published; compute.instance.update is dropped as before.
    let def = definition(dir.path(), "['image.*']");
    let out = meterflow(&[
        "run",
        def.to_str().unwrap(),
        "--input",
        &format!("{DATA}/nova.jsonl"),
        "--no-progress",
        "--summary-json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["dropped"]["no_meter_definition"], 1);
    assert_eq!(summary["events"]["published"], 0);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap(),
        ""
    );
}

/// A user's event definitions with the `bitfield` plugin, `where` and sorting, through the CLI.
#[test]
fn custom_event_definitions_with_bitfield_where_and_sorted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.yaml"),
        r#"
- event_type: compute.instance.create.end
  traits:
    instance_id: {fields: payload.instance_id}
    flags:
      type: int
      fields: [payload.state, payload.state_description, payload.image_meta.disk_format, 'payload.fixed_ips[*].version']
      plugin:
        name: bitfield
        parameters:
          initial_bitfield: 1024
          flags:
            - {path: payload.state, bit: 0, value: active}
            - {path: payload.state, bit: 1, value: error}
            - {path: payload.image_meta.disk_format, bit: 2}
            - {path: payload.image_meta.container_format, bit: 3}
            - {path: 'payload.fixed_ips.[0].version', bit: 4, value: 4.0}
    v4_address: {fields: '($.payload.fixed_ips[*] where address).address'}
    first_metadata_key: {fields: '$.payload.metadata.`sorted`[0]'}
"#,
    )
    .unwrap();
    let def = definition(dir.path(), "['compute.instance.create.end']");
    let mut text_def = std::fs::read_to_string(&def).unwrap();
    text_def.push_str(&format!(
        "event_definitions: ['{}']\n",
        dir.path().join("events.yaml").display()
    ));
    std::fs::write(&def, text_def).unwrap();
    let out = meterflow(&[
        "run",
        def.to_str().unwrap(),
        "--input",
        &format!("{DATA}/nova.jsonl"),
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let events = sorted_lines(&dir.path().join("events.jsonl"));
    assert_eq!(events.len(), 1, "{events:#?}");
    let event: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    let trait_of = |name: &str| {
        event["traits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t[0] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no trait {name} in {event}"))
    };
    assert_eq!(
        trait_of("flags"),
        serde_json::json!(["flags", 2, 1024 | 1 | 4 | 16])
    );
    assert_eq!(
        trait_of("v4_address"),
        serde_json::json!(["v4_address", 1, "10.0.0.12"])
    );
    assert_eq!(
        trait_of("first_metadata_key"),
        serde_json::json!(["first_metadata_key", 1, "metering.server_group"])
    );
}

#[test]
fn event_pipelines_are_validated_as_ceilometer_does() {
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("bad.yaml");
    std::fs::write(
        &def,
        "sources:\n  - {name: a, events: ['*'], sinks: [t]}\n  - {name: b, events: [], sinks: [t]}\n  - {name: c, meters: ['*'], events: ['*'], sinks: [t]}\n  - {name: d, events: ['*'], sinks: [g]}\nsinks:\n  - name: t\n    transformers: [{name: delta}]\n    publishers: ['log://']\n  - {name: g, publishers: ['gnocchi://']}\n",
    )
    .unwrap();
    let out = meterflow(&["validate", def.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "sinks[0].transformers[0]: No transformer named delta loaded for events",
        "sources[1].events: No events specified in source b",
        "sources[2]: source c has both meters: and events:",
    ] {
        assert!(err.contains(needle), "{needle:?} in:\n{err}");
    }
    // gnocchi:// takes events (resource events), as in Ceilometer's event_pipeline.yaml.
    assert!(!err.contains("sinks[1]"), "{err}");
}

/// Serialized events (an `event` notification, as Ceilometer's notifier publisher sends to
/// Aodh) reach event alarms exactly as the notifications they were made from: the golden
/// event-alarm case, its notifications turned into events by a first run.
#[test]
fn serialized_events_feed_event_alarms() {
    let case =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden-alarms/event_instance_deleted");
    let dir = tempfile::tempdir().unwrap();
    let def = definition(dir.path(), "['*']");
    let out = meterflow(&[
        "run",
        def.to_str().unwrap(),
        "--input",
        case.join("input.jsonl").to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let notifications: String = std::fs::read_to_string(dir.path().join("events.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, event)| {
            format!(
                "{{\"event_type\": \"event\", \"priority\": \"SAMPLE\", \"publisher_id\": \"telemetry.publisher.h1\", \"message_id\": \"n{i}\", \"timestamp\": \"2024-05-01 13:00:00\", \"payload\": [{event}]}}\n"
            )
        })
        .collect();
    let input = dir.path().join("events-in.jsonl");
    std::fs::write(&input, notifications).unwrap();
    let output = dir.path().join("alarms.jsonl");
    let alarm_def = dir.path().join("alarms.yaml");
    std::fs::write(
        &alarm_def,
        std::fs::read_to_string(case.join("definition.yaml"))
            .unwrap()
            .replace("OUTPUT", output.to_str().unwrap()),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = run_into_store(&alarm_def, &input, &store, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let payloads = |path: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("alarm_id");
                v
            })
            .collect()
    };
    assert_eq!(payloads(&output), payloads(&case.join("expected.jsonl")));

    // A payload that is not a list of events is counted and named.
    std::fs::write(
        &input,
        "{\"event_type\": \"event\", \"priority\": \"SAMPLE\", \"publisher_id\": \"p\", \"message_id\": \"m\", \"timestamp\": \"2024-05-01 13:00:00\", \"payload\": [{\"event_type\": \"x\"}]}\n",
    )
    .unwrap();
    let out = run_into_store(&alarm_def, &input, &store, &["--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a serialized event needs a message_id string"),
        "{err}"
    );
}
