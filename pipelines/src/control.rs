//! What the HTTP API and the running dataflow share, so that neither imports the other: the
//! live counters, failure and shutdown ([`Live`]), and the requests the API hands the
//! dataflow ([`Requests`]: POSTed measures and alarm changes, each answered once committed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meterflow_connectors::notify::NotifierStats;
use meterflow_engine::metrics::Counters;
use tokio::sync::{mpsc, oneshot};

use crate::alarms::AlarmEdit;
use crate::checkpoint::CheckpointStats;
use crate::storage::Measure;

/// What the running dataflow shares with the API: live counters, failure, shutdown.
#[derive(Debug)]
pub struct Live {
    workers: Mutex<Vec<Counters>>,
    /// The inputs' names (the API's ingest is the input after them).
    pub(crate) inputs: Vec<String>,
    /// The sinks' names.
    pub(crate) sinks: Vec<String>,
    failure: Mutex<Option<String>>,
    stopping: AtomicBool,
    /// When the run started.
    pub(crate) started: Instant,
    notifier: Option<Arc<NotifierStats>>,
    /// What checkpoints do, when the run takes them.
    pub(crate) checkpoints: Option<Arc<CheckpointStats>>,
}

impl Live {
    /// Shared state for `workers` workers; `inputs` names the inputs (the API's ingest is the
    /// input after them), `sinks` the sinks.
    pub fn new(workers: usize, inputs: Vec<String>, sinks: Vec<String>) -> Live {
        Live {
            workers: Mutex::new(vec![Counters::with_sinks(sinks.len()); workers]),
            inputs,
            sinks,
            failure: Mutex::new(None),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            notifier: None,
            checkpoints: None,
        }
    }

    /// Shares what checkpoints do (for `/metrics`).
    pub fn with_checkpoints(mut self, stats: Option<Arc<CheckpointStats>>) -> Live {
        self.checkpoints = stats;
        self
    }

    /// Shares the alarm notifier's counters (for `/metrics`).
    pub fn with_notifier(mut self, stats: Option<Arc<NotifierStats>>) -> Live {
        self.notifier = stats;
        self
    }

    /// The alarm notifier's counters, if alarms run.
    pub fn notifier(&self) -> Option<&NotifierStats> {
        self.notifier.as_deref()
    }

    /// Worker `index` reports its counters.
    pub fn publish(&self, index: usize, counters: &Counters) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = workers.get_mut(index) {
            slot.clone_from(counters);
        }
    }

    /// How many workers the run has.
    pub fn worker_count(&self) -> usize {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The counters of every worker, merged.
    pub fn totals(&self) -> Counters {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = Counters::with_sinks(self.sinks.len());
        for c in workers.iter() {
            total.merge(c);
        }
        total
    }

    /// Records why the run cannot go on (the first reason wins).
    pub fn fail(&self, why: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert_with(|| why.to_owned());
    }

    /// Why the run cannot go on, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the run to finish (SIGINT, SIGTERM).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether the run was asked to finish.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Measures a POST carried, on their way to the dataflow; `reply` is answered once they are
/// committed to the store (or cannot be).
#[derive(Debug)]
pub struct IngestRequest {
    /// The measures (`batch` is set by the feeder; one batch per request and metric).
    pub measures: Vec<Measure>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Alarm changes made through the API (`/v2/alarms`), on their way to the dataflow; `reply`
/// is answered once they are committed to the store (or cannot be).
#[derive(Debug)]
pub struct AlarmRequest {
    /// The changes, each routed to the worker that owns its alarm.
    pub edits: Vec<AlarmEdit>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What the API hands the dataflow: measures and alarm changes.
#[derive(Debug)]
pub struct Requests {
    /// POSTed measures.
    pub measures: mpsc::Receiver<IngestRequest>,
    /// Alarm changes.
    pub alarms: mpsc::Receiver<AlarmRequest>,
}

/// One accepted API token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// What the client sends (`Authorization: Bearer`, or `X-Auth-Token`).
    pub secret: String,
    /// What it may do.
    pub access: Access,
}

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everything (the caller's `X-Roles` and `X-Project-Id` still apply when sent).
    Admin,
    /// Read: `GET`, and the `POST`s that only read (searches, queries, aggregates).
    ReadOnly,
    /// Everything, limited to one project, whatever headers the caller sends.
    Project(String),
}

/// Where and how to serve the API.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// `HOST:PORT`, `:PORT` or `PORT` (host defaults to 127.0.0.1; port 0 picks a free one).
    pub addr: String,
    /// The tokens a request may carry (every request except `/healthcheck` must carry one
    /// when there are any), each with what it may do.
    pub tokens: Vec<Token>,
    /// What one client may hold of the server.
    pub limits: ServerLimits,
    /// Whether an address beyond loopback may be served without a token.
    pub allow_open: bool,
    /// What one project may own before the API creates no more for it.
    pub quotas: Quotas,
}

/// Per-project quotas on what the API creates. A project is the request's `X-Project-Id`
/// (what keystonemiddleware sets, and Gnocchi's and Aodh's noauth modes read); requests
/// without one share the project of the store's unowned data. What a project owns counts
/// however it was created; only the API's creations are refused (ingestion never is).
#[derive(Clone, Copy, Debug)]
pub struct Quotas {
    /// Metrics a project may own.
    pub metrics: usize,
    /// Resources a project may own.
    pub resources: usize,
    /// Alarms a project may own.
    pub alarms: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            metrics: 100_000,
            resources: 10_000,
            alarms: 10_000,
        }
    }
}

/// The HTTP server's limits (see the README's "Security and limits").
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// How long the server waits for a request's headers, from when it starts waiting: on a
    /// new connection, and on a kept-alive one between requests (the idle timeout).
    pub header_timeout: std::time::Duration,
    /// How long reading one request's body may take.
    pub body_timeout: std::time::Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1000,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(60),
        }
    }
}
