//! The timely dataflow a plan runs as: one file per operator, over one epoch protocol.
//!
//! ```text
//!  worker 0 reads inputs (feed) ──chunks, one epoch each──> Decode (round-robin by chunk)
//!    ──(sink, sample) numbered in input order, exchanged by resource (or to one worker for
//!      sinks whose transformers keep cross-resource state)──> Transform: per sink, epoch by
//!      epoch in input order, through the chain, flushed at every notification, published
//!    ──measures for gnocchi:// publishers, exchanged by resource──> Aggregate: per metric,
//!      Gnocchi's aggregation, alarms evaluated as buckets close; checkpoints to the store;
//!      each worker's newest event time back to every worker (a feedback edge: the watermark)
//!  the API's measures and alarm changes (worker 0) ──exchanged by resource or alarm──> Aggregate
//!  Aggregate ──feeds of the alarms over several metrics, exchanged by alarm──> Cross;
//!    the probe is after it
//! ```
//! [`epoch`] holds the protocol every stateful operator follows: stash each epoch, process
//! epochs in order once every input has passed them (each in input order), hold them until
//! what they wrote is durable, then release them. Progress travels in band: the end of input
//! and the watermark are timely frontiers and streams, so results are the same for any
//! number of workers.

pub mod aggregate;
pub mod cross;
pub mod decode;
pub mod epoch;
mod feed;
pub mod transform;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meterflow_connectors::file::deadletter::DeadLetter;
use meterflow_connectors::file::source::{ChunkReader, InputSpec};
use meterflow_connectors::gnocchi::store::Store;
use meterflow_connectors::notify::{
    ActionPolicy, ActionSource, Notifier, NotifierOptions, NotifierStats,
};
use meterflow_connectors::PublisherSpec;
use meterflow_engine::chunk::SourcePosition;
use meterflow_engine::component::PublisherFactory;
use meterflow_engine::metrics::Counters;
use meterflow_operators::alarm::definition::AlarmDefinition;

use crate::alarms::{cross_definitions, stored_alarms, StoredAlarm};
use crate::checkpoint::{CheckpointStats, CheckpointTotals, Checkpoints, Loaded};
use crate::control::{ListenOptions, Live, Requests};
use crate::plan::Plan;
use crate::resource_events::ResourceEventRules;
use crate::storage::{load_shares, open_store, Share, StoreOptions};
pub use decode::{resource_route, Decoder, OrderedEvent, Routed};
use feed::Readers;
use transform::resource_event_rules;
pub use transform::Transformer;

/// How far worker 0 has read the inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadProgress {
    /// Reading starts; the inputs' total size when known.
    Started {
        /// Bytes in all inputs (files), if known.
        total_bytes: Option<u64>,
    },
    /// Bytes read so far.
    Read {
        /// Bytes handed to the dataflow.
        bytes: u64,
    },
    /// Every input is read and processed.
    Finished,
}

/// Called by worker 0 as it reads the inputs (on its thread: keep it cheap).
#[derive(Clone)]
pub struct ProgressCallback(pub Arc<dyn Fn(ReadProgress) + Send + Sync>);

impl ProgressCallback {
    /// Tells the callback.
    pub fn report(&self, progress: ReadProgress) {
        (self.0)(progress)
    }
}

impl std::fmt::Debug for ProgressCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressCallback")
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Worker threads.
    pub workers: usize,
    /// Told how far reading the inputs has got (the binary draws a progress bar with it).
    pub progress: Option<ProgressCallback>,
    /// Chunk size for inputs (bytes).
    pub chunk_bytes: usize,
    /// The longest input line taken (bytes); longer ones are skipped, counted and
    /// dead-lettered (their head).
    pub max_line_bytes: usize,
    /// Where rejected input records go (JSONL), if anywhere.
    pub dead_letter: Option<std::path::PathBuf>,
    /// The embedded store `gnocchi://` publishers write to.
    pub store: std::path::PathBuf,
    /// Serve Gnocchi's API (and `/metrics`) while running, and keep running after the inputs
    /// end until SIGINT or SIGTERM.
    pub listen: Option<ListenOptions>,
    /// How alarm notifications are delivered (their journal goes to `STORE/notifier`).
    pub notifier: NotifierOptions,
    /// Where checkpoints go (`--state DIR`); without it, `STORE/checkpoints` when the run has
    /// a store, else none.
    pub state: Option<std::path::PathBuf>,
    /// How often a checkpoint is taken; zero takes none.
    pub checkpoint_every: Duration,
    /// How long of event time a series may be quiet before the transformers forget it
    /// (`--forget-after`); `None`: never, as in Ceilometer.
    pub forget_after: Option<Duration>,
    /// Resume from the newest checkpoint (the transformers' state and the inputs' positions)
    /// even when no input is a Kafka topic (Kafka inputs always resume, as a consumer group).
    pub resume: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: None,
            chunk_bytes: ChunkReader::TARGET_BYTES,
            max_line_bytes: ChunkReader::MAX_LINE_BYTES,
            dead_letter: None,
            store: std::path::PathBuf::from("data"),
            listen: None,
            notifier: NotifierOptions::default(),
            state: None,
            checkpoint_every: CHECKPOINT_EVERY,
            forget_after: Some(FORGET_AFTER),
            resume: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Everything counted, merged over workers.
    pub counters: Counters,
    /// Sink names, for the summary.
    pub sinks: Vec<String>,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Workers used.
    pub workers: usize,
    /// Bytes read.
    pub bytes: u64,
    /// What the alarm notifiers did, when alarms ran.
    pub notifier: Option<NotifierTotals>,
    /// When the first input data arrived, after the start (a Kafka input first joins its
    /// group: benchmarks time from here).
    pub first_input: Option<Duration>,
    /// What checkpoints did, when they were taken.
    pub checkpoints: Option<CheckpointTotals>,
}

/// What the alarm notifiers did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifierTotals {
    /// Notifications handed to the notifiers.
    pub sent: u64,
    /// Delivered.
    pub delivered: u64,
    /// Written to the dead-letter file.
    pub dead_lettered: u64,
}

/// How long the end of a run waits for alarm notifications to be delivered; what is still
/// undelivered then stays in the notifier's journal and is sent at the next start.
pub const NOTIFY_GRACE: Duration = Duration::from_secs(15);

/// How long of event time a series may be quiet before the transformers forget it, by
/// default (`--forget-after`).
pub const FORGET_AFTER: Duration = Duration::from_secs(86_400);

/// How often a listening engine checkpoints what the store's operator holds, and the
/// default interval of the engine's checkpoints (`--checkpoint-every`).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What a run is made of once prepared (by [`prepare`]): the plan, its publishers, store,
/// alarms and notifier, checkpoints and inputs, shared by every worker; [`execute`] runs it.
pub struct Prepared {
    plan: Arc<Plan>,
    workers: usize,
    started: Instant,
    listening: bool,
    durable: bool,
    factories: Vec<Option<Arc<dyn PublisherFactory>>>,
    store: Option<StoreParts>,
    /// Taken back once the workers are done, to drain it.
    notifier: Mutex<Option<Arc<Notifier>>>,
    notifier_stats: Option<Arc<NotifierStats>>,
    store_options: Arc<StoreOptions>,
    dead_letter: Option<Arc<DeadLetter>>,
    checkpointing: Option<Checkpointing>,
    readers: Readers,
    total_bytes: Option<u64>,
    names: Arc<Vec<String>>,
    sink_names: Vec<String>,
    first_data: std::sync::OnceLock<Instant>,
    progress: Option<ProgressCallback>,
    forget_after: Option<Duration>,
    live: Arc<Live>,
    resource_rules: Vec<Option<Arc<ResourceEventRules>>>,
    requests: Mutex<Option<Requests>>,
    actions: ActionPolicy,
    max_line: usize,
}

/// The store's side of a run.
struct StoreParts {
    store: Arc<Store>,
    /// Each worker's share of the metrics' state, taken by the worker when it starts.
    shares: Mutex<Vec<Option<Share>>>,
    stored_alarms: std::collections::BTreeMap<String, StoredAlarm>,
    cross_alarms: Vec<Arc<AlarmDefinition>>,
}

/// The checkpoints' side of a run.
struct Checkpointing {
    checkpoints: Arc<Checkpoints>,
    /// The checkpoint the run resumes from.
    loaded: Option<Loaded>,
    stats: Arc<CheckpointStats>,
    every: Duration,
    next_number: u64,
    /// The inputs as checkpoints name them.
    identities: Arc<Vec<String>>,
    /// Restore messages already logged (each once, whichever worker finds it).
    said: Mutex<std::collections::BTreeSet<String>>,
}

impl Prepared {
    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The store, when the run has one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref().map(|s| &s.store)
    }

    /// The rules alarm actions follow (the API checks new alarms against them).
    pub fn actions(&self) -> &ActionPolicy {
        &self.actions
    }

    /// What the run shares with the API.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Lets the API's requests in (POSTed measures, alarm changes).
    pub fn with_requests(self, requests: Requests) -> Prepared {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()) = Some(requests);
        self
    }
}

/// Prepares `plan` to run over `inputs`: opens the publishers, the store and its alarms, the
/// notifier, the checkpoints (resuming from the newest when asked) and the inputs.
pub fn prepare(plan: Plan, inputs: &[InputSpec], options: &RunOptions) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    let listening = options.listen.is_some();
    let has_store = plan.uses_store() || listening || !plan.alarms.is_empty();
    let checkpoint_root = checkpoint_root(options, has_store, inputs, &plan);
    if options.resume && checkpoint_root.is_none() {
        anyhow::bail!(
            "--resume needs checkpoints: give --state DIR (or a gnocchi:// store), and a --checkpoint-every above 0"
        );
    }
    // With an input that commits offsets, or checkpoints that skip input on a restart,
    // output must be on disk (and in the store) before its epoch passes.
    let durable =
        checkpoint_root.is_some() || inputs.iter().any(|i| matches!(i, InputSpec::Kafka(_)));
    let factories = open_publishers(&plan, durable && checkpoint_root.is_none())?;
    let workers = options.workers.max(1);
    let store = if has_store {
        let store = open_store(&plan, &options.store)?;
        let shares = load_shares(&store, workers)?;
        let stored_alarms = stored_alarms(&store.alarms()?);
        let cross_alarms = cross_definitions((&plan.alarms, plan.alarms_declared), &stored_alarms);
        Some(StoreParts {
            store,
            shares: Mutex::new(shares.into_iter().map(Some).collect()),
            stored_alarms,
            cross_alarms,
        })
    } else {
        None
    };
    let actions = action_policy(
        &plan,
        inputs,
        options,
        store.as_ref(),
        checkpoint_root.as_deref(),
    )?;
    // Listening, alarms may be created through the API at any time.
    let notifier = match &store {
        Some(s) if !plan.alarms.is_empty() || !s.stored_alarms.is_empty() || listening => {
            Some(Arc::new(
                Notifier::start(NotifierOptions {
                    dir: Some(s.store.dir().join("notifier")),
                    policy: actions.clone(),
                    ..options.notifier.clone()
                })
                .map_err(anyhow::Error::msg)?,
            ))
        }
        _ => None,
    };
    let dead_letter = options
        .dead_letter
        .as_deref()
        .map(|p| DeadLetter::open(p, durable))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // (After the store: a new store's directory must be empty when it is created.)
    let checkpointing = checkpoint_root
        .map(|root| prepare_checkpoints(&root, options, inputs))
        .transpose()?;
    let positions: Vec<Option<SourcePosition>> = match &checkpointing {
        Some(Checkpointing {
            loaded: Some(loaded),
            ..
        }) => loaded.inputs.iter().map(|i| i.position.clone()).collect(),
        _ => vec![None; inputs.len()],
    };
    let readers = inputs
        .iter()
        .zip(&positions)
        .enumerate()
        .map(|(i, (spec, from))| {
            spec.open(
                i as u32,
                (options.chunk_bytes, options.max_line_bytes),
                from.as_ref(),
            )
            .with_context(|| format!("input {}", spec.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let names = Arc::new(inputs.iter().map(InputSpec::display).collect::<Vec<_>>());
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
    let notifier_stats = notifier.as_ref().map(|n| n.stats());
    let live = Live::new(workers, names.to_vec(), sink_names.clone())
        .with_notifier(notifier_stats.clone())
        .with_checkpoints(checkpointing.as_ref().map(|c| c.stats.clone()));
    Ok(Prepared {
        resource_rules: resource_event_rules(&plan)?,
        store_options: Arc::new(StoreOptions::of(&plan)),
        plan: Arc::new(plan),
        workers,
        started,
        listening,
        durable,
        factories,
        store,
        notifier: Mutex::new(notifier),
        notifier_stats,
        dead_letter,
        checkpointing,
        readers: Arc::new(Mutex::new(Some(readers))),
        total_bytes: inputs.iter().map(InputSpec::size_bytes).sum(),
        names,
        sink_names,
        first_data: std::sync::OnceLock::new(),
        progress: options.progress.clone(),
        forget_after: options.forget_after,
        live: Arc::new(live),
        requests: Mutex::new(None),
        actions,
        max_line: options.max_line_bytes,
    })
}

/// Opens every publisher but `gnocchi://` (`None`); with `fsync`, file publishers sync
/// every flush.
fn open_publishers(
    plan: &Plan,
    fsync: bool,
) -> anyhow::Result<Vec<Option<Arc<dyn PublisherFactory>>>> {
    plan.publishers
        .iter()
        .map(|p| {
            let mut spec = p.spec.clone();
            if let PublisherSpec::File(options) = &mut spec {
                options.fsync |= fsync;
            }
            spec.open(&p.url).map_err(anyhow::Error::msg)
        })
        .collect()
}

/// Opens the checkpoints under `root` and finds the one to resume from.
fn prepare_checkpoints(
    root: &std::path::Path,
    options: &RunOptions,
    inputs: &[InputSpec],
) -> anyhow::Result<Checkpointing> {
    let checkpoints = Checkpoints::open(root)?;
    let identities: Arc<Vec<String>> = Arc::new(inputs.iter().map(input_identity).collect());
    let loaded = resume_point(&checkpoints, options, &identities)?;
    let stats = Arc::new(CheckpointStats::default());
    if let Some(loaded) = &loaded {
        stats.restored(loaded.number);
    }
    Ok(Checkpointing {
        next_number: checkpoints.next_number(),
        checkpoints: Arc::new(checkpoints),
        loaded,
        stats,
        every: options.checkpoint_every,
        identities,
        said: Mutex::default(),
    })
}

/// Runs a prepared run on its workers to the end of its inputs (and, listening, until asked
/// to stop), then drains the notifier and reports.
pub fn execute(prepared: Prepared) -> anyhow::Result<RunReport> {
    let workers = prepared.workers;
    let shared = Arc::new(prepared);
    let worker_shared = shared.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        worker::run(worker, &worker_shared)
    })
    .map_err(|e| anyhow::anyhow!("cannot start {workers} workers: {e}"))?;
    let results = guards.join();
    let notifier = shared
        .notifier
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    shut_down_notifier(notifier);
    let notifier = shared.notifier_stats.as_ref().map(|s| NotifierTotals {
        sent: s.sent.load(Ordering::Relaxed),
        delivered: s.delivered.load(Ordering::Relaxed),
        dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
    });
    let mut counters = Counters::with_sinks(shared.sink_names.len());
    let mut bytes = 0;
    for result in results {
        let (c, b) = result
            .map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
        counters.merge(&c);
        bytes += b;
    }
    Ok(RunReport {
        counters,
        sinks: shared.sink_names.clone(),
        elapsed: shared.started.elapsed(),
        workers,
        bytes,
        notifier,
        first_input: shared
            .first_data
            .get()
            .map(|t| t.duration_since(shared.started)),
        checkpoints: shared.checkpointing.as_ref().map(|c| c.stats.totals()),
    })
}

/// How an input is named in a checkpoint: as displayed, and a Kafka input with its group
/// (another group reads the topic afresh).
fn input_identity(spec: &InputSpec) -> String {
    match spec {
        InputSpec::Kafka(k) => format!("{}?group={}", spec.display(), k.group),
        _ => spec.display(),
    }
}

/// Where the run's checkpoints go, when it takes any: `--state DIR`, else
/// `STORE/checkpoints` when it has a store.
/// The operator's action rules, with every path the engine keeps protected, checked against
/// the definition's alarms (an alarm whose action breaks them stops the start, naming both).
/// Alarms stored by earlier runs are checked at delivery instead: one whose action the rules
/// now refuse is dead-lettered, and the others still run.
fn action_policy(
    plan: &Plan,
    inputs: &[InputSpec],
    options: &RunOptions,
    store: Option<&StoreParts>,
    checkpoints: Option<&std::path::Path>,
) -> anyhow::Result<ActionPolicy> {
    let mut own: Vec<std::path::PathBuf> = Vec::new();
    own.extend(store.map(|s| s.store.dir().to_path_buf()));
    own.extend(options.state.clone());
    own.extend(checkpoints.map(std::path::Path::to_path_buf));
    own.extend(options.dead_letter.clone());
    own.extend(inputs.iter().filter_map(|i| match i {
        InputSpec::File(path) => Some(path.clone()),
        _ => None,
    }));
    own.extend(plan.publishers.iter().filter_map(|p| match &p.spec {
        PublisherSpec::File(f) => Some(f.path.clone()),
        _ => None,
    }));
    let policy = options.notifier.policy.clone().protect(own);
    for alarm in &plan.alarms {
        for (field, url) in alarm.actions() {
            policy
                .check(url, ActionSource::Definition)
                .map_err(|why| anyhow::anyhow!("alarm {}: {field}: {why}", alarm.name))?;
        }
    }
    Ok(policy)
}

fn checkpoint_root(
    options: &RunOptions,
    has_store: bool,
    inputs: &[InputSpec],
    plan: &Plan,
) -> Option<std::path::PathBuf> {
    if options.checkpoint_every.is_zero() || inputs.is_empty() {
        return None;
    }
    let root = match (&options.state, has_store) {
        (Some(dir), _) => dir.clone(),
        (None, true) => options.store.join("checkpoints"),
        (None, false) => {
            let kafka = inputs.iter().any(|i| matches!(i, InputSpec::Kafka(_)));
            if kafka && plan.sinks.iter().any(|s| !s.transformers.is_empty()) {
                tracing::warn!(
                    "no --state DIR and no store: what the transformers hold between notifications is not checkpointed, so a crash loses it; give --state DIR for exactly-once"
                );
            }
            return None;
        }
    };
    Some(root)
}

/// The checkpoint a run resumes from: Kafka inputs always, others with `--resume`.
fn resume_point(
    checkpoints: &Checkpoints,
    options: &RunOptions,
    identities: &[String],
) -> anyhow::Result<Option<Loaded>> {
    let kafka = identities.iter().any(|i| i.starts_with("kafka://"));
    if !options.resume && !kafka {
        return Ok(None);
    }
    let Some(loaded) = checkpoints.newest() else {
        if options.resume {
            tracing::info!(
                "no checkpoint in {} yet: starting from the beginning",
                checkpoints.root().display()
            );
        }
        return Ok(None);
    };
    let saved: Vec<&str> = loaded.inputs.iter().map(|i| i.name.as_str()).collect();
    if saved != identities {
        let why = format!(
            "checkpoint {} in {} was taken reading {saved:?}; this run reads {identities:?}",
            loaded.number,
            checkpoints.root().display()
        );
        if options.resume {
            anyhow::bail!(
                "{why}: give the same inputs to resume, or another --state DIR to start afresh"
            );
        }
        tracing::warn!("{why}: not resuming from it");
        return Ok(None);
    }
    tracing::info!(
        "resuming from checkpoint {} in {}",
        loaded.number,
        checkpoints.root().display()
    );
    Ok(Some(loaded))
}

/// Shuts the notifier down once the workers let go of it, waiting [`NOTIFY_GRACE`] for its
/// queues to drain.
fn shut_down_notifier(notifier: Option<Arc<Notifier>>) {
    if let Some(notifier) = notifier {
        match Arc::try_unwrap(notifier) {
            Ok(notifier) => notifier.shutdown(NOTIFY_GRACE),
            Err(shared) => {
                if let Err(e) = shared.sync() {
                    tracing::error!("{e}");
                }
            }
        }
    }
}
