//! Bucket close → webhook latency, open loop: an engine (`run --listen`, in this process)
//! with one alarm per host flipping state at every closed bucket; a driver POSTs one measure
//! per host per tick at a fixed rate without waiting for answers (each tick's event time is the
//! next bucket, so it closes the previous one for every host); a webhook receiver on
//! 127.0.0.1 stamps each notification. Latency = receipt − the send of the tick that closed
//! the bucket. Prints p50/p90/p99/max per rate.
//!
//! `cargo bench -p meterflow-benches --bench alarm_latency [-- RATE... ]` (ticks per second;
//! default 50 200 500), `ALARMS=N` hosts (default 20), `TICKS=N` per rate (default 1000).

// A bench reports on stdout.
#![allow(clippy::print_stdout)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use meterflow_pipelines::api::ListenOptions;
use meterflow_pipelines::dataflow::RunOptions;
use meterflow_pipelines::plan::Plan;
use meterflow_pipelines::service;
use serde_json::{json, Value};

/// Notifications received: (alarm name, receipt).
type Received = Arc<Mutex<Vec<(String, Instant)>>>;

fn main() {
    let rates: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rates = if rates.is_empty() {
        vec![50, 200, 500]
    } else {
        rates
    };
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (alarms, ticks) = (env("ALARMS", 20), env("TICKS", 1000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let received: Received = Arc::default();
    let hook = runtime.block_on(receiver(received.clone()));
    println!("alarm_latency: {alarms} alarms, {ticks} ticks per rate, webhook {hook}");
    for (round, rate) in rates.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let base = engine(dir.path(), round);
        let client = reqwest::Client::new();
        runtime.block_on(async {
            for i in 0..alarms {
                let body = alarm(i, &hook);
                let r = client
                    .post(format!("{base}/v2/alarms"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
            }
        });
        received.lock().unwrap().clear();
        let sent = runtime.block_on(drive(&client, &base, alarms, ticks, rate));
        // Every alarm flips at every closed bucket: ticks − 1 notifications each.
        let want = alarms * (ticks - 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.lock().unwrap().len() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let got = received.lock().unwrap().clone();
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut latencies: Vec<f64> = got
            .iter()
            .filter_map(|(name, at)| {
                let n = seen.entry(name.clone()).or_default();
                *n += 1;
                // The n-th notification of an alarm comes from the bucket tick n closed.
                let tick = sent.get(*n)?;
                Some(at.duration_since(*tick).as_secs_f64() * 1e3)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        // Ticks sent on separate connections can overtake each other: an older one that
        // arrives after its bucket closed is dropped as late (back_window 0), and each alarm
        // makes one transition fewer. The engine counts those.
        let late = reqwest::blocking::get(format!("{base}/metrics"))
            .and_then(|r| r.text())
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("meterflow_late_measures_total"))
                    .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN);
        println!(
            "rate {rate} ticks/s ({} notifications/s): {} of {want} received ({late} late measures); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            rate * alarms as u64,
            latencies.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    }
    // The engines serve until the process ends.
    std::process::exit(0);
}

/// Starts an engine serving the API in this process; its base URL.
fn engine(dir: &std::path::Path, round: usize) -> String {
    let definition = json!({
        "archive_policies": [{"name": "minute", "aggregation_methods": ["mean"],
            "definition": [{"granularity": 60, "points": 100}]}],
        "sources": [{"name": "all", "meters": ["*"], "sinks": ["store"]}],
        "sinks": [{"name": "store", "publishers": ["gnocchi://?archive_policy=minute"]}],
    });
    let plan = Plan::from_yaml(&definition.to_string(), "bench").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = RunOptions {
        workers: 2,
        store: dir.join(format!("store-{round}")),
        listen: Some(ListenOptions {
            addr: format!("127.0.0.1:{port}"),
            tokens: Vec::new(),
            limits: Default::default(),
            allow_open: false,
            quotas: Default::default(),
        }),
        ..RunOptions::default()
    };
    std::thread::spawn(move || service::run(plan, &[], &options, None));
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::blocking::get(format!("{base}/healthcheck")).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the engine did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    base
}

fn alarm(i: usize, hook: &str) -> Value {
    json!({
        "name": format!("flip-{i}"),
        "type": "gnocchi_resources_threshold",
        "alarm_actions": [hook],
        "ok_actions": [hook],
        "gnocchi_resources_threshold_rule": {
            "metric": "load", "resource_id": format!("host-{i}"), "resource_type": "generic",
            "aggregation_method": "mean", "granularity": 60, "comparison_operator": "gt",
            "threshold": 50, "evaluation_periods": 1,
        },
    })
}

/// Sends `ticks` batches at `rate` per second, open loop; the send instant of each.
async fn drive(
    client: &reqwest::Client,
    base: &str,
    alarms: usize,
    ticks: usize,
    rate: u64,
) -> Vec<Instant> {
    let url = format!("{base}/v1/batch/resources/metrics/measures?create_metrics=true");
    let mut interval = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::with_capacity(ticks);
    let mut answers = Vec::with_capacity(ticks);
    for k in 0..ticks {
        let value = if k % 2 == 0 { 0.0 } else { 100.0 };
        let mut body = serde_json::Map::new();
        for i in 0..alarms {
            body.insert(
                format!("host-{i}"),
                json!({"load": {"archive_policy_name": "minute", "measures": [
                    {"timestamp": 1_700_000_000 + 60 * k as i64, "value": value}
                ]}}),
            );
        }
        interval.tick().await;
        sent.push(Instant::now());
        answers.push(tokio::spawn(client.post(&url).json(&body).send()));
    }
    for a in answers {
        let r = a.await.unwrap().unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    sent
}

/// A webhook receiver on 127.0.0.1; its URL.
async fn receiver(received: Received) -> String {
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let received = received.clone();
            async move {
                let at = Instant::now();
                let name = body["alarm_name"].as_str().unwrap_or_default().to_owned();
                received.lock().unwrap().push((name, at));
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}
