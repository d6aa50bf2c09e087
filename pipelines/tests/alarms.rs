//! Alarms black box: the golden cases through the CLI (1 and 4 workers), a real HTTP receiver
//! on 127.0.0.1, a dead one (retries, dead letter), and notifications that survive a SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Payloads grouped by alarm name, in order, without `alarm_id`.
fn by_alarm(lines: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("alarm_id");
        let name = v["alarm_name"].as_str().unwrap().to_owned();
        out.entry(name).or_default().push(v);
    }
    out
}

fn states(store: &Path) -> BTreeMap<String, String> {
    let out = meterflow(&[
        "alarms",
        "list",
        "--json",
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn golden_alarm_cases_pass_through_the_cli() {
    let mut failures = Vec::new();
    for case in cases("golden-alarms", 6) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let expected = by_alarm(&std::fs::read_to_string(case.join("expected.jsonl")).unwrap());
        let want_states: BTreeMap<String, String> = serde_json::from_str(
            &std::fs::read_to_string(case.join("expected_states.json")).unwrap(),
        )
        .unwrap();
        for workers in ["1", "4"] {
            let dir = tempfile::tempdir().unwrap();
            let output = dir.path().join("notifications.jsonl");
            let definition =
                pipeline_with_output(&case.join("definition.yaml"), dir.path(), &output);
            let store = dir.path().join("data");
            let input = case.join("input.jsonl");
            let run = || run_into_store(&definition, &input, &store, &["--workers", workers]);
            let out = run();
            if !out.status.success() {
                failures.push(format!(
                    "{name} ({workers} workers): run failed\n{}",
                    text(&out)
                ));
                continue;
            }
            let got = by_alarm(&std::fs::read_to_string(&output).unwrap_or_default());
            if got != expected {
                failures.push(format!(
                    "{name} ({workers} workers): notifications differ\n--- expected\n{}\n--- got\n{}",
                    serde_json::to_string_pretty(&expected).unwrap(),
                    serde_json::to_string_pretty(&got).unwrap()
                ));
            }
            let got_states = states(&store);
            if got_states != want_states {
                failures.push(format!(
                    "{name} ({workers} workers): states {got_states:?}, expected {want_states:?}"
                ));
            }
            // Every state change is in the history, with the event time it happened at.
            for (alarm, payloads) in &expected {
                let out = meterflow(&[
                    "alarms",
                    "history",
                    alarm,
                    "--store",
                    store.to_str().unwrap(),
                ]);
                let history: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let transitions = history
                    .iter()
                    .filter(|h| h["type"] == "state transition")
                    .count();
                let changes = payloads
                    .iter()
                    .filter(|p| p["previous"] != p["current"])
                    .count();
                if transitions != changes
                    || history.first().map(|h| &h["type"]) != Some(&"creation".into())
                {
                    failures.push(format!("{name}: alarm {alarm}: history {history:?} does not hold the {changes} transitions"));
                }
            }
            // Running the same input again changes nothing: no bucket closes twice.
            let again = run();
            assert!(again.status.success(), "{}", text(&again));
            let after = by_alarm(&std::fs::read_to_string(&output).unwrap_or_default());
            if after != expected {
                failures.push(format!(
                    "{name} ({workers} workers): a replay notified again: {after:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The requests a receiver got: headers and body of each.
type Requests = Arc<Mutex<Vec<(BTreeMap<String, String>, String)>>>;

/// A webhook receiver on 127.0.0.1: records (headers, body) of every POST, answers 200.
struct Receiver {
    got: Requests,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(listener: std::net::TcpListener) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let got: Requests = Arc::default();
        let sink = got.clone();
        listener.set_nonblocking(true).unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                    let sink = sink.clone();
                    async move {
                        let headers = headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        sink.lock().unwrap().push((headers, body));
                        "ok"
                    }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            got,
            _runtime: runtime,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The worked example's definition with its actions pointing at `alarm_url` and `ok_url`.
fn webhook_definition(dir: &Path, alarm_url: &str, ok_url: &str) -> PathBuf {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden-alarms/threshold_worked_example");
    let text = std::fs::read_to_string(case.join("definition.yaml"))
        .unwrap()
        .replace(
            "alarm_actions: ['file://OUTPUT']",
            &format!("alarm_actions: ['{alarm_url}']"),
        )
        .replace(
            "ok_actions: ['file://OUTPUT']",
            &format!("ok_actions: ['{ok_url}']"),
        )
        .replace(
            "insufficient_data_actions: ['file://OUTPUT']",
            "insufficient_data_actions: []",
        );
    let path = dir.join("definition.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn worked_example_input() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden-alarms/threshold_worked_example/input.jsonl")
}

#[test]
fn webhooks_get_aodh_payloads_and_a_dead_receiver_is_retried_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::start(listener);
    let dead = free_port();
    // Alarms go to the live receiver; ok goes to the live one and to one nobody listens on.
    let definition = webhook_definition(
        dir.path(),
        &format!("http://127.0.0.1:{port}/hook?source=meterflow"),
        &format!("http://127.0.0.1:{dead}/hook"),
    );
    let rewritten = std::fs::read_to_string(&definition).unwrap().replace(
        &format!("ok_actions: ['http://127.0.0.1:{dead}/hook']"),
        &format!("ok_actions: ['http://127.0.0.1:{dead}/hook', 'http://127.0.0.1:{port}/hook']"),
    );
    std::fs::write(&definition, rewritten).unwrap();
    let store = dir.path().join("data");
    let started = Instant::now();
    let out = run_into_store(
        &definition,
        &worked_example_input(),
        &store,
        &["--summary-json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["alarms"]["transitions"], 2, "{summary}");
    assert_eq!(summary["alarms"]["notifications"], 3, "{summary}");
    assert_eq!(summary["alarms"]["delivered"], 2, "{summary}");
    assert_eq!(summary["alarms"]["dead_lettered"], 1, "{summary}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // The live receiver got exactly the two payloads, in order, as Aodh posts them.
    let expected = by_alarm(
        &std::fs::read_to_string(worked_example_input().with_file_name("expected.jsonl")).unwrap(),
    );
    let mut bodies = receiver.bodies();
    for b in &mut bodies {
        assert_eq!(b["alarm_id"].as_str().unwrap().len(), 36);
        b.as_object_mut().unwrap().remove("alarm_id");
    }
    assert_eq!(bodies, expected["cpu_high"]);
    let got = receiver.got.lock().unwrap();
    for (headers, body) in got.iter() {
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers["x-openstack-request-id"].starts_with("req-"),
            "{headers:?}"
        );
        // Python's json.dumps separators.
        assert!(
            body.starts_with("{\"alarm_name\": \"cpu_high\", \"alarm_id\": "),
            "{body}"
        );
    }
    drop(got);
    // The dead receiver's notification was retried, then written to the dead-letter file.
    let dead_letter = std::fs::read_to_string(store.join("notifier/dead-letter.jsonl")).unwrap();
    let dead_letter: Vec<Value> = dead_letter
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead_letter.len(), 1, "{dead_letter:?}");
    assert_eq!(
        dead_letter[0]["url"],
        format!("http://127.0.0.1:{dead}/hook")
    );
    assert_eq!(dead_letter[0]["attempts"], 6);
    assert_eq!(dead_letter[0]["payload"]["current"], "ok");
}

#[test]
fn notifications_survive_a_sigkill_and_are_sent_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let definition = webhook_definition(dir.path(), &url, &url);
    let store = dir.path().join("data");
    // The receiver is down: the engine keeps retrying while it serves.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args([
            "run",
            definition.to_str().unwrap(),
            "--input",
            worked_example_input().to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            // Retried until the kill, however the jitter falls: nothing is dead-lettered.
            "--notify-attempts",
            "1000",
            "--notify-max-backoff",
            "0.5",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = store.join("notifier/journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"notification\""))
            .count();
        if sent == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not send both notifications"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let a checkpoint commit the alarm state, then crash.
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The receiver comes up on that port; the next start (no new input) delivers both.
    let receiver = Receiver::start(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = run_into_store(&definition, &empty, &store, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut bodies = receiver.bodies();
    for b in &mut bodies {
        b.as_object_mut().unwrap().remove("alarm_id");
    }
    let expected = by_alarm(
        &std::fs::read_to_string(worked_example_input().with_file_name("expected.jsonl")).unwrap(),
    );
    assert_eq!(bodies, expected["cpu_high"]);
    // And the state was not lost either.
    assert_eq!(states(&store)["cpu_high"], "ok");
}
