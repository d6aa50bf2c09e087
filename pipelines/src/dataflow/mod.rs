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

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meterflow_connectors::file::deadletter::DeadLetter;
use meterflow_connectors::file::source::{ChunkReader, InputSpec};
use meterflow_connectors::gnocchi::store::Partition as StorePartition;
use meterflow_connectors::notify::{Notifier, NotifierOptions};
use meterflow_connectors::PublisherSpec;
use meterflow_engine::chunk::{Chunk, SourcePosition};
use meterflow_engine::component::PublisherFactory;
use meterflow_engine::metrics::{Counters, Diag};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::alarms::{cross_definitions, owns, stored_alarms, AlarmEdit, Alarms};
use crate::api::{ListenOptions, Live, Server};
use crate::checkpoint::{Barrier, CheckpointStats, CheckpointTotals, Checkpoints, Loaded};
use crate::feeds::Feed;
use crate::plan::Plan;
use crate::storage::{
    load_shares, open_store, Aggregator, CrossStage, Measure, Share, StoreOptions,
};
use aggregate::AggregateParts;
pub use decode::{resource_route, Decoder, OrderedEvent, Routed};
use feed::{feed, ApiFeed, CheckpointFeed, PUBLISH_EVERY};
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
            dead_letter: None,
            store: std::path::PathBuf::from("data"),
            listen: None,
            notifier: NotifierOptions::default(),
            state: None,
            checkpoint_every: CHECKPOINT_EVERY,
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

/// How often a listening engine checkpoints what the store's operator holds, and the
/// default interval of the engine's checkpoints (`--checkpoint-every`).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Calls `attempt` until it succeeds, fails with an error `retryable` rejects, or `limit` has
/// passed, sleeping with exponential backoff (50 ms, doubling up to 5 s) after each retryable
/// failure. While it retries the worker waits, so the whole dataflow pauses and a Kafka input
/// stops consuming and committing: nothing is acknowledged that is not written.
pub(crate) fn retry_with_backoff<E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt() {
            Err(e) if retryable(&e) && started.elapsed() < limit => {
                tracing::warn!("{what}: {e}; retrying in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Runs `plan` over `inputs` to their end.
pub fn run(plan: Plan, inputs: &[InputSpec], options: &RunOptions) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let listening = options.listen.is_some();
    let has_store = plan.uses_store() || listening || !plan.alarms.is_empty();
    let checkpoint_root = checkpoint_root(options, has_store, inputs, &plan);
    // With an input that commits offsets, or checkpoints that skip input on a restart,
    // output must be on disk (and in the store) before its epoch passes.
    let durable =
        checkpoint_root.is_some() || inputs.iter().any(|i| matches!(i, InputSpec::Kafka(_)));
    let factories: Vec<Option<Arc<dyn PublisherFactory>>> = plan
        .publishers
        .iter()
        .map(|p| {
            let mut spec = p.spec.clone();
            // Without checkpoints a Kafka input commits each epoch's offsets once its output
            // is durable; with them, files are synced at each checkpoint instead.
            if let PublisherSpec::File(options) = &mut spec {
                options.fsync |= durable && checkpoint_root.is_none();
            }
            spec.open(&p.url).map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<_>>()?;
    let workers = options.workers.max(1);
    let store = if has_store {
        let store = open_store(&plan, &options.store)?;
        let shares = load_shares(&store, workers)?;
        Some((
            store,
            Arc::new(Mutex::new(shares.into_iter().map(Some).collect::<Vec<_>>())),
        ))
    } else {
        None
    };
    let stored_alarms = match &store {
        Some((store, _)) => Arc::new(stored_alarms(&store.alarms()?)),
        None => Arc::default(),
    };
    let cross_alarms = Arc::new(cross_definitions(
        (&plan.alarms, plan.alarms_declared),
        &stored_alarms,
    ));
    // Listening, alarms may be created through the API at any time.
    let notifier = match &store {
        Some((store, _)) if !plan.alarms.is_empty() || !stored_alarms.is_empty() || listening => {
            Some(Arc::new(
                Notifier::start(NotifierOptions {
                    dir: Some(store.dir().join("notifier")),
                    ..options.notifier.clone()
                })
                .map_err(anyhow::Error::msg)?,
            ))
        }
        _ => None,
    };
    let notifier_stats = notifier.as_ref().map(|n| n.stats());
    let store_options = Arc::new(StoreOptions::of(&plan));
    let dead_letter = options
        .dead_letter
        .as_deref()
        .map(|p| DeadLetter::open(p, durable))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // (After the store: a new store's directory must be empty when it is created.)
    let checkpoints = checkpoint_root
        .map(|root| Checkpoints::open(&root).map(Arc::new))
        .transpose()?;
    let identities: Arc<Vec<String>> = Arc::new(inputs.iter().map(input_identity).collect());
    let (loaded, positions) = resume_point(checkpoints.as_deref(), options, &identities)?;
    let checkpoint_stats = checkpoints
        .as_ref()
        .map(|_| Arc::new(CheckpointStats::default()));
    if let (Some(stats), Some(loaded)) = (&checkpoint_stats, &loaded) {
        stats.restored(loaded.number);
    }
    let next_checkpoint = checkpoints.as_ref().map_or(1, |c| c.next_number());
    let restore_messages = Arc::new(Mutex::new(std::collections::BTreeSet::<String>::new()));
    let readers = inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            spec.open(i as u32, options.chunk_bytes, positions[i].as_ref())
                .with_context(|| format!("input {}", spec.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total_bytes: Option<u64> = inputs.iter().map(InputSpec::size_bytes).sum();
    let names = Arc::new(inputs.iter().map(InputSpec::display).collect::<Vec<_>>());
    let sink_names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
    let sink_count = plan.sinks.len();
    let plan = Arc::new(plan);
    let readers = Arc::new(Mutex::new(Some(readers)));
    let first_data = Arc::new(std::sync::OnceLock::<Instant>::new());
    let worker_first_data = first_data.clone();
    let progress = options.progress.clone();
    let live = Arc::new(
        Live::new(workers, names.to_vec(), sink_names.clone())
            .with_notifier(notifier_stats.clone())
            .with_checkpoints(checkpoint_stats.clone()),
    );
    let mut server = None;
    let mut api_requests = None;
    if let (Some(listen), Some((store, _))) = (&options.listen, &store) {
        let (s, requests) = Server::start(listen, store.clone(), plan.clone(), live.clone())?;
        eprintln!(
            "meterflow: serving the Gnocchi API and /metrics on http://{} (SIGINT or SIGTERM stops)",
            s.addr()
        );
        server = Some(s);
        api_requests = Some(requests);
    }
    let api_requests = Arc::new(Mutex::new(api_requests));
    let resource_rules = resource_event_rules(&plan)?;
    let worker_live = live.clone();
    let worker_notifier = notifier.clone();
    let every_checkpoint = options.checkpoint_every;
    let worker_checkpoint_stats = checkpoint_stats.clone();

    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers() as u64;
        let live = worker_live.clone();
        let diag = Rc::new(RefCell::new(Diag::with_sinks(sink_count)));
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<Chunk>>>::new();
        let mut api_input = InputHandle::<u64, CapacityContainerBuilder<Vec<Measure>>>::new();
        let mut alarm_input = InputHandle::<u64, CapacityContainerBuilder<Vec<AlarmEdit>>>::new();
        let mut barrier_input = InputHandle::<u64, CapacityContainerBuilder<Vec<Barrier>>>::new();
        let probe = ProbeHandle::new();
        let plan = plan.clone();
        let factories = factories.clone();
        let names = names.clone();
        let dead_letter = dead_letter.clone();
        let aggregator = store.as_ref().map(|(store, shares)| {
            let share: Share = shares.lock().unwrap_or_else(|p| p.into_inner())[index]
                .take()
                .unwrap_or_default();
            let alarms = Alarms::load(
                (&plan.alarms, plan.alarms_declared),
                &stored_alarms,
                &|a| owns(a, (index, workers), false),
                worker_notifier.clone(),
            );
            let mut aggregator = Aggregator::new(store.clone(), plan.clone(), share, durable)
                .with_alarms(alarms)
                .with_cross_alarms(cross_alarms.iter());
            if listening {
                aggregator.checkpoint_every(CHECKPOINT_EVERY);
            }
            Rc::new(RefCell::new(aggregator))
        });
        let cross = store.as_ref().map(|(store, _)| {
            let alarms = Alarms::load(
                (&plan.alarms, plan.alarms_declared),
                &stored_alarms,
                &|a| owns(a, (index, workers), true),
                worker_notifier.clone(),
            );
            let mut stage = CrossStage::new(store.clone(), (index, workers), alarms, durable);
            if listening {
                stage.checkpoint_every(CHECKPOINT_EVERY);
            }
            stage
        });
        let store_options = store_options.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            // Events for event alarms when those can exist (defined, or created through the
            // API), and for event sinks.
            let alarm_events = cross.is_some() && (listening || plan.has_event_alarms());
            let decoder = Decoder::new(plan.clone(), names)
                .with_dead_letter(dead_letter.as_ref().map(|d| d.handle()))
                .with_events(alarm_events || plan.publishes_events());
            let (routed, events) = decode::decode(input.to_stream(scope), decoder, diag.clone());
            let mut transformer = Transformer::new(&plan, &factories);
            if let Some(checkpoints) = &checkpoints {
                transformer = transformer.with_checkpoints(checkpoints.clone(), index);
            }
            if let Some(loaded) = &loaded {
                for message in transformer.restore(loaded, (index, workers)) {
                    let mut said = restore_messages.lock().unwrap_or_else(|p| p.into_inner());
                    if said.insert(message.clone()) {
                        tracing::warn!("{message}");
                    }
                }
            }
            if let Some((store, _)) = &store {
                transformer = transformer.with_resource_events(
                    &resource_rules,
                    store,
                    StorePartition {
                        index: index as u32,
                        count: workers as u32,
                    },
                );
            }
            let measures = transform::transform(
                routed,
                events.clone(),
                barrier_input.to_stream(scope),
                transformer,
                diag.clone(),
            );
            match (aggregator.clone(), cross) {
                (Some(aggregator), Some(stage)) => {
                    // Every worker's cross operator holds every event alarm.
                    let copies = if alarm_events { peers } else { 0 };
                    let events = events.flat_map(move |e| {
                        (0..copies).map(move |route| Feed::Event {
                            route,
                            event: e.event.clone(),
                        })
                    });
                    let parts = AggregateParts {
                        aggregator,
                        options: store_options,
                        diag: diag.clone(),
                        live: live.clone(),
                        listening,
                    };
                    let feeds = aggregate::aggregate(
                        measures.concat(api_input.to_stream(scope)),
                        alarm_input.to_stream(scope),
                        parts,
                    );
                    cross::cross(feeds.concat(events), stage, diag.clone(), live.clone())
                        .probe_with(&probe);
                }
                _ => {
                    measures.probe_with(&probe);
                }
            }
        });

        let mut result = Ok(0);
        if index == 0 {
            let api = api_requests
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(|requests| ApiFeed {
                    requests,
                    input: api_input,
                    alarm_input,
                    pending: Vec::new(),
                    peers,
                });
            let checkpoint = checkpoints.clone().map(|checkpoints| CheckpointFeed {
                checkpoints,
                every: every_checkpoint,
                input: Some(barrier_input),
                names: identities.clone(),
                stats: worker_checkpoint_stats.clone().unwrap_or_default(),
                peers,
                next_number: next_checkpoint,
                last: Instant::now(),
                in_flight: None,
            });
            result = feed(
                worker,
                input,
                api,
                checkpoint,
                &probe,
                (&readers, &worker_first_data),
                progress.clone().map(|p| (p, total_bytes)),
                peers,
                &live,
                &diag,
            );
        } else {
            drop(input);
            drop(api_input);
            drop(alarm_input);
            drop(barrier_input);
            // (Worker 0 runs the dataflow to its end inside `feed`; once no dataflow is left,
            // `step_or_park` returns false, so each worker loops exactly once more.)
            let mut published = Instant::now();
            while worker.step_or_park(Some(Duration::from_millis(100))) {
                if published.elapsed() >= PUBLISH_EVERY {
                    live.publish(index, &diag.borrow().counters);
                    published = Instant::now();
                }
            }
        }
        let counters = diag.borrow().counters.clone();
        live.publish(index, &counters);
        if let Some(e) = aggregator
            .as_ref()
            .and_then(|a| a.borrow().failure().map(str::to_owned))
        {
            result = result.and(Err(e));
        }
        result.map(|bytes| (counters, bytes))
    })
    .map_err(|e| anyhow::anyhow!("cannot start {workers} workers: {e}"))?;

    let mut counters = Counters::with_sinks(sink_count);
    let mut bytes = 0;
    let results = guards.join();
    if let Some(server) = server {
        server.shutdown();
    }
    shut_down_notifier(notifier);
    let notifier = notifier_stats.map(|s| NotifierTotals {
        sent: s.sent.load(Ordering::Relaxed),
        delivered: s.delivered.load(Ordering::Relaxed),
        dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
    });
    for result in results {
        let (c, b) = result
            .map_err(|e| anyhow::anyhow!("a worker failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
        counters.merge(&c);
        bytes += b;
    }
    Ok(RunReport {
        counters,
        sinks: sink_names,
        elapsed: started.elapsed(),
        workers,
        bytes,
        notifier,
        first_input: first_data.get().map(|t| t.duration_since(started)),
        checkpoints: checkpoint_stats.map(|s| s.totals()),
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

/// The checkpoint a run resumes from (Kafka inputs always, others with `--resume`), and
/// each input's position in it.
#[allow(clippy::type_complexity)]
fn resume_point(
    checkpoints: Option<&Checkpoints>,
    options: &RunOptions,
    identities: &[String],
) -> anyhow::Result<(Option<Arc<Loaded>>, Vec<Option<SourcePosition>>)> {
    let afresh = || (None, vec![None; identities.len()]);
    let kafka = identities.iter().any(|i| i.starts_with("kafka://"));
    let Some(checkpoints) = checkpoints.filter(|_| options.resume || kafka) else {
        if options.resume {
            anyhow::bail!(
                "--resume needs checkpoints: give --state DIR (or a gnocchi:// store), and a --checkpoint-every above 0"
            );
        }
        return Ok(afresh());
    };
    let Some(loaded) = checkpoints.newest() else {
        if options.resume {
            tracing::info!(
                "no checkpoint in {} yet: starting from the beginning",
                checkpoints.root().display()
            );
        }
        return Ok(afresh());
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
        return Ok(afresh());
    }
    tracing::info!(
        "resuming from checkpoint {} in {}",
        loaded.number,
        checkpoints.root().display()
    );
    let positions = loaded.inputs.iter().map(|i| i.position.clone()).collect();
    Ok((Some(Arc::new(loaded)), positions))
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
