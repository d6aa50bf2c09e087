//! The `meterflow` binary: parses arguments, calls the library, prints, maps errors to exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meterflow_connectors::file::source::InputSpec;
use meterflow_connectors::notify::{ActionPolicy, NotifierOptions};
use meterflow_engine::metrics::DropReason;
use meterflow_pipelines::api::{self, ListenOptions};
use meterflow_pipelines::bench::{self, BenchOptions};
use meterflow_pipelines::control::{Quotas, ServerLimits};
use meterflow_pipelines::dataflow::{ProgressCallback, ReadProgress, RunOptions};
use meterflow_pipelines::plan::{Plan, PlanError};
use meterflow_pipelines::service;
use meterflow_pipelines::{alarms, query, summary};

/// mimalloc: the engine allocates and frees many small objects across worker threads
/// (definitions, batches, strings), where glibc's allocator spent a fifth of a large
/// definition's load consolidating its free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// meterflow: Ceilometer pipelines, Gnocchi aggregation and Aodh alarms in one dataflow engine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `meterflow run`'s arguments.
#[derive(clap::Args)]
struct RunArgs {
    /// The pipeline definition (Ceilometer's pipeline.yaml format).
    pipeline: PathBuf,
    /// Input URL: a path or file://PATH (JSONL), - for stdin, kafka://..., poll://...
    /// Repeatable; read in order. Without any, the definition's polling sources (those
    /// with an `interval`) poll.
    #[arg(long = "input", short = 'i')]
    inputs: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Directory of the embedded store that gnocchi:// publishers write to.
    #[arg(long, default_value = "./data")]
    store: PathBuf,
    /// Print the summary as JSON on stdout instead of text on stderr.
    #[arg(long)]
    summary_json: bool,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Append every rejected input record (bad JSON, bad samples, notifications without a
    /// meter definition) to this JSONL file, with its place and reason.
    #[arg(long)]
    dead_letter: Option<PathBuf>,
    /// Also serve Gnocchi's REST API and /metrics on this address (HOST:PORT or PORT;
    /// 127.0.0.1 unless a host is given), and keep running after the inputs end until
    /// SIGINT or SIGTERM.
    #[arg(long)]
    listen: Option<String>,
    /// Require `Authorization: Bearer <token>` (or `X-Auth-Token`) on the API: one token a
    /// line, each optionally followed by `admin` (the default), `read-only` or `project=ID`.
    #[arg(long, requires = "listen")]
    token_file: Option<PathBuf>,
    /// Where checkpoints of the transformers' state and the inputs' positions go
    /// (default: STORE/checkpoints when a gnocchi:// publisher or --listen uses the store).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Seconds between checkpoints; 0 takes none.
    #[arg(long, default_value_t = 1.0)]
    checkpoint_every: f64,
    /// Seconds of event time a series (rate_of_change's, delta's previous sample) may be
    /// quiet before the transformers forget it; its next sample then starts it afresh. A
    /// store metric quiet that long leaves memory too (kept in the store, read back with no
    /// change to its results if it speaks again). 0 never forgets (Ceilometer's behaviour,
    /// memory grows with every resource ever seen).
    #[arg(long, default_value_t = 86_400.0)]
    forget_after: f64,
    /// Bytes of input read per step (epoch): smaller steps make progress, no_data_grace and
    /// quiet-metric release finer grained, larger ones cost less per byte.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(256..=(1 << 28)))]
    chunk_bytes: u64,
    /// The longest input line (or Kafka message) taken, in bytes; a longer one is skipped
    /// as it streams by, counted as line_too_long and its first 4 KiB dead-lettered.
    #[arg(long, default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    max_line_bytes: u64,
    /// Read on from the newest checkpoint (state and input positions) when the inputs are
    /// files; Kafka inputs always do.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    notify: NotifyArgs,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline definition over inputs to their end, then print a summary.
    Run(RunArgs),
    /// Serve Gnocchi's REST API over a store (reads, and measures POSTed in, aggregated by the
    /// same operator `run` uses) until SIGINT or SIGTERM.
    Serve {
        /// A definition whose archive_policies and archive_policy_rules apply to metrics the
        /// API creates (default: Gnocchi's built-in policies and its `*` → low rule).
        pipeline: Option<PathBuf>,
        /// Directory of the store.
        #[arg(long, default_value = "./data")]
        store: PathBuf,
        /// Address to listen on (HOST:PORT or PORT; 127.0.0.1 unless a host is given).
        #[arg(long, default_value = "127.0.0.1:8041")]
        listen: String,
        /// Require `Authorization: Bearer <token>` (or `X-Auth-Token`): one token a line,
        /// each optionally followed by `admin` (the default), `read-only` or `project=ID`.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long, short = 'w')]
        workers: Option<usize>,
        #[command(flatten)]
        notify: NotifyArgs,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Print a metric's measures from the store as Gnocchi's JSON: [[timestamp, granularity, value], ...].
    Measures {
        /// Directory of the store.
        #[arg(long, default_value = "./data")]
        store: PathBuf,
        /// The resource id (as the samples carry it, as Gnocchi keys it, or its UUID).
        #[arg(long)]
        resource: String,
        /// The metric (meter) name.
        #[arg(long)]
        metric: String,
        /// The aggregation method (mean, sum, min, max, first, last, count, std, median, NNpct, rate:M).
        #[arg(long, default_value = "mean")]
        aggregation: String,
        /// Only this granularity, in seconds.
        #[arg(long)]
        granularity: Option<f64>,
        /// Only buckets from this time on (ISO 8601 or epoch seconds; rounded down to the granularity).
        #[arg(long)]
        start: Option<String>,
        /// Only buckets before this time (exclusive).
        #[arg(long)]
        stop: Option<String>,
        /// Re-aggregate the --granularity points into buckets of this many seconds.
        #[arg(long, requires = "granularity")]
        resample: Option<f64>,
    },
    /// Show the alarms a store holds: their state and history (Aodh's JSON form).
    Alarms {
        /// What to show.
        #[command(subcommand)]
        what: AlarmsCommand,
    },
    /// Check a pipeline definition and report every problem with its place.
    Validate {
        /// The pipeline definition.
        pipeline: PathBuf,
    },
    /// List the registered transformers, publishers and inputs.
    List,
    /// Measure throughput: synthetic telemetry through a pipeline (default: rate_of_change +
    /// delta to a file), printing samples per second and the machine.
    Bench(BenchArgs),
}

/// `meterflow bench`'s options.
#[derive(clap::Args)]
struct BenchArgs {
    /// The pipeline definition (default: the embedded rate-and-delta pipeline).
    pipeline: Option<PathBuf>,
    /// Samples to generate.
    #[arg(long, default_value_t = 2_000_000)]
    samples: u64,
    /// Distinct instances.
    #[arg(long, default_value_t = 10_000)]
    resources: u32,
    /// Samples per notification.
    #[arg(long, default_value_t = 50)]
    batch: u32,
    /// Rounds (a minute of event time each) an instance lives before a new one with a new
    /// id takes its place, staggered over the fleet; 0 keeps the same instances.
    #[arg(long, default_value_t = 0)]
    churn: u32,
    /// As `run --forget-after`: seconds of event time after which quiet series and store
    /// metrics leave memory; 0 never.
    #[arg(long, default_value_t = 86_400.0)]
    forget_after: f64,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Where file publishers write (default: a temporary file).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Where gnocchi:// publishers write (default: a temporary store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Take checkpoints (every --checkpoint-every seconds) into this directory, as `run
    /// --state` does (with a gnocchi:// publisher they are taken into the store anyway).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Seconds between checkpoints; 0 takes none.
    #[arg(long, default_value_t = 1.0)]
    checkpoint_every: f64,
    /// Kafka to Kafka through this broker (HOST:PORT): the notifications are loaded into a
    /// fresh topic, read once by a plain consumer (the raw consume rate), copied once to a
    /// third topic by a plain consumer and producer (the raw copy rate), then run through
    /// the pipeline with its file publishers writing to a second fresh topic.
    #[arg(long, value_name = "HOST:PORT")]
    kafka: Option<String>,
    /// Partitions of the bench's topics (with --kafka).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
}

/// How alarm notifications are delivered (`run` and `serve`).
#[derive(clap::Args)]
struct NotifyArgs {
    /// Attempts per alarm notification before it goes to STORE/notifier/dead-letter.jsonl.
    #[arg(long, default_value_t = 6)]
    notify_attempts: u32,
    /// Seconds each notification attempt may take (connect and answer).
    #[arg(long, default_value_t = 10.0)]
    notify_timeout: f64,
    /// The longest wait between attempts, in seconds (backoff doubles from 0.2 s, full jitter).
    #[arg(long, default_value_t = 30.0)]
    notify_max_backoff: f64,
    /// Notifications queued per receiver; more are dead-lettered at once (a receiver that
    /// is down never holds evaluation back).
    #[arg(long, default_value_t = 10_000)]
    notify_queue: usize,
    /// The directory file:// alarm actions must write in (created if missing). Without it,
    /// a definition's file:// actions may name any path outside the store, the state and the
    /// run's inputs and outputs.
    #[arg(long, value_name = "DIR")]
    action_dir: Option<PathBuf>,
    /// Lets alarms created through the API have file:// actions (inside --action-dir).
    #[arg(long, requires = "action_dir")]
    allow_api_file_actions: bool,
    /// Hosts http(s):// and kafka:// alarm actions may reach, comma-separated: host,
    /// host:port, *.domain, a network (10.0.0.0/8), or * (every host but link-local and
    /// unspecified addresses, e.g. the metadata service 169.254.169.254); empty: none.
    #[arg(long, value_name = "LIST", default_value = "*")]
    action_hosts: String,
}

impl NotifyArgs {
    fn options(&self) -> anyhow::Result<NotifierOptions> {
        let seconds = |flag: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!(
                    "--{flag} {v}: give a number of seconds above 0"
                ))
            }
        };
        if self.notify_attempts == 0 || self.notify_queue == 0 {
            anyhow::bail!("--notify-attempts and --notify-queue must be at least 1");
        }
        Ok(NotifierOptions {
            max_attempts: self.notify_attempts,
            timeout: seconds("notify-timeout", self.notify_timeout)?,
            max_backoff: seconds("notify-max-backoff", self.notify_max_backoff)?,
            queue_capacity: self.notify_queue,
            policy: ActionPolicy::new(
                self.action_dir.as_deref(),
                self.allow_api_file_actions,
                &self.action_hosts,
            )
            .map_err(anyhow::Error::msg)?,
            ..NotifierOptions::default()
        })
    }
}

/// The API server's limits (`run --listen` and `serve`).
#[derive(clap::Args)]
struct HttpArgs {
    /// Connections the API serves at once; more are closed at once, with a log line (the
    /// open-files limit is raised to fit, where the system allows).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Seconds a client has to send a request's headers, counted from when the server starts
    /// waiting for them: on a new connection and on a kept-alive one between requests (so
    /// this is also the idle keep-alive timeout).
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds reading one request's body may take.
    #[arg(long, default_value_t = 60.0)]
    body_timeout: f64,
    /// Serve an address beyond loopback without --token-file (only behind a proxy that
    /// authenticates; without this flag such a start is refused).
    #[arg(long)]
    allow_open: bool,
    /// Metrics one project (the request's X-Project-Id) may own before the API creates no
    /// more for it (403).
    #[arg(long, default_value_t = 100_000)]
    quota_metrics: usize,
    /// Resources one project may own before the API creates no more for it (403).
    #[arg(long, default_value_t = 10_000)]
    quota_resources: usize,
    /// Alarms one project may own before the API creates no more for it (403).
    #[arg(long, default_value_t = 10_000)]
    quota_alarms: usize,
}

impl HttpArgs {
    fn options(
        &self,
        addr: String,
        token_file: Option<&std::path::Path>,
    ) -> anyhow::Result<ListenOptions> {
        let seconds = |flag: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(std::time::Duration::from_secs_f64(v))
            } else {
                Err(anyhow::anyhow!(
                    "--{flag} {v}: give seconds above 0, at most a day"
                ))
            }
        };
        let wanted = self.max_connections as usize;
        Ok(ListenOptions {
            addr,
            tokens: token_file
                .map(api::read_tokens)
                .transpose()?
                .unwrap_or_default(),
            limits: ServerLimits {
                max_connections: fit_open_files(wanted),
                header_timeout: seconds("header-timeout", self.header_timeout)?,
                body_timeout: seconds("body-timeout", self.body_timeout)?,
            },
            allow_open: self.allow_open,
            quotas: Quotas {
                metrics: self.quota_metrics,
                resources: self.quota_resources,
                alarms: self.quota_alarms,
            },
        })
    }
}

/// Raises the open-files limit so `connections` fit beside the engine's own files (inputs,
/// store, outputs), and returns how many do fit when the system will not allow that many.
fn fit_open_files(connections: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    const OWN: u64 = 256;
    let want = connections as u64 + OWN;
    let limit = getrlimit(Resource::Nofile);
    // None is unlimited.
    let Some(mut current) = limit.current else {
        return connections;
    };
    if current < want {
        let raised = want.min(limit.maximum.unwrap_or(u64::MAX));
        let new = Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, new).is_ok() {
            current = raised;
        }
    }
    let fit = current.saturating_sub(OWN).max(1) as usize;
    if fit < connections {
        eprintln!(
            "meterflow: the open-files limit ({current}) leaves room for {fit} API connections, not the {connections} of --max-connections; raise it (ulimit -n) to serve more"
        );
    }
    fit.min(connections)
}

/// `meterflow alarms ...`.
#[derive(Subcommand)]
enum AlarmsCommand {
    /// Every alarm: id, type, name, state, severity, enabled (a table, or JSON with --json).
    List {
        /// Directory of the store.
        #[arg(long, default_value = "./data")]
        store: PathBuf,
        /// Print Aodh's JSON list instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One alarm in Aodh's JSON form, with its state.
    Show {
        /// The alarm's id or name.
        alarm: String,
        /// Directory of the store.
        #[arg(long, default_value = "./data")]
        store: PathBuf,
    },
    /// One alarm's history (creation, changes, state transitions), oldest first, as JSON.
    History {
        /// The alarm's id or name.
        alarm: String,
        /// Directory of the store.
        #[arg(long, default_value = "./data")]
        store: PathBuf,
    },
}

/// Says on stderr where the API listens (scripts and tests read the address from it).
fn announce_listening() -> service::ListeningCallback {
    service::ListeningCallback(std::sync::Arc::new(|addr| {
        eprintln!(
            "meterflow: serving the Gnocchi API and /metrics on http://{addr} (SIGINT or SIGTERM stops)"
        );
    }))
}

/// `--forget-after SECS` as a span of event time (0: never).
fn forget_span(seconds: f64) -> anyhow::Result<Option<std::time::Duration>> {
    if !(0.0..=3.2e9).contains(&seconds) {
        anyhow::bail!(
            "--forget-after {seconds}: give seconds of event time from 0 (never forget) up"
        );
    }
    Ok((seconds > 0.0).then(|| std::time::Duration::from_secs_f64(seconds)))
}

/// `--checkpoint-every SECS` as a duration (0: no checkpoints).
fn checkpoint_interval(seconds: f64) -> anyhow::Result<std::time::Duration> {
    if !(0.0..=86_400.0).contains(&seconds) {
        anyhow::bail!(
            "--checkpoint-every {seconds}: give seconds from 0 (no checkpoints) to 86400"
        );
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,meterflow::publisher::log=info".into()),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("meterflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Plan> {
    let plan = Plan::from_path(path).map_err(|e| match e {
        PlanError::Invalid(p) => anyhow::anyhow!("{p}"),
        other => anyhow::Error::new(other),
    })?;
    for w in &plan.warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(plan)
}

fn workers(n: Option<usize>) -> anyhow::Result<usize> {
    match n {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(RunOptions::default().workers),
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Run(args) => run_command(args, &mut stdout)?,
        Command::Measures {
            store,
            resource,
            metric,
            aggregation,
            granularity,
            start,
            stop,
            resample,
        } => {
            let store = meterflow_connectors::gnocchi::store::Store::open(&store)?;
            let query = query::MeasuresQuery {
                resource,
                metric,
                aggregation: Some(aggregation),
                granularity,
                start: start.as_deref().map(query::parse_time).transpose()?,
                stop: stop.as_deref().map(query::parse_time).transpose()?,
                resample,
            };
            let points = query::measures(&store, &query)?;
            writeln!(stdout, "{}", query::to_json(&points))?;
        }
        Command::Serve {
            pipeline,
            store,
            listen,
            token_file,
            workers: n,
            notify,
            http,
        } => {
            let plan = match &pipeline {
                Some(p) => load(p)?,
                None => Plan::from_yaml("sources: []\nsinks: []\n", "<no definition>")
                    .context("the empty definition")?,
            };
            let options = RunOptions {
                workers: workers(n)?,
                store,
                listen: Some(http.options(listen, token_file.as_deref())?),
                notifier: notify.options()?,
                ..RunOptions::default()
            };
            let report = service::run(plan, &[], &options, Some(announce_listening()))?;
            eprint!("{}", summary::render(&report));
        }
        Command::Alarms { what } => alarms_command(what, &mut stdout)?,
        Command::Validate { pipeline } => {
            let plan = load(&pipeline)?;
            writeln!(
                stdout,
                "{}: valid ({} sources, {} sinks, {} publishers)",
                pipeline.display(),
                plan.sources.len(),
                plan.sinks.len(),
                plan.publishers.len()
            )?;
        }
        Command::List => {
            writeln!(stdout, "transformers:")?;
            for t in meterflow_operators::transform::TRANSFORMERS {
                writeln!(stdout, "  {:<16} {}", t.name, t.description)?;
            }
            for (title, list) in [
                ("publishers", meterflow_connectors::PUBLISHERS),
                ("inputs", meterflow_connectors::INPUTS),
            ] {
                writeln!(stdout, "{title}:")?;
                for s in list {
                    let status = match s.status {
                        meterflow_connectors::Status::Supported => String::new(),
                        meterflow_connectors::Status::Planned(by) => {
                            format!(" (not yet: lands with {by})")
                        }
                    };
                    let scheme = if s.scheme == "-" {
                        "-".to_owned()
                    } else {
                        format!("{}://", s.scheme)
                    };
                    writeln!(stdout, "  {scheme:<16} {}{status}", s.description)?;
                }
            }
        }
        Command::Bench(args) => bench_command(args, &mut stdout)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `meterflow bench`: generates, runs and prints the rates.
fn bench_command(args: BenchArgs, stdout: &mut impl Write) -> anyhow::Result<()> {
    let BenchArgs {
        pipeline,
        samples,
        resources,
        batch,
        churn,
        forget_after,
        workers: n,
        output,
        store,
        state,
        checkpoint_every,
        kafka,
        partitions,
    } = args;
    let plan = match &pipeline {
        Some(p) => load(p)?,
        None => Plan::from_yaml(bench::DEFAULT_PIPELINE, "rate-and-delta.yaml")
            .context("embedded pipeline")?,
    };
    let options = BenchOptions {
        samples,
        resources,
        batch,
        churn,
        run: RunOptions {
            workers: workers(n)?,
            state,
            checkpoint_every: checkpoint_interval(checkpoint_every)?,
            forget_after: forget_span(forget_after)?,
            ..RunOptions::default()
        },
        output,
        store,
    };
    let name = pipeline.as_ref().map_or(
        "embedded rate-and-delta (rate_of_change + delta -> file)".into(),
        |p| p.display().to_string(),
    );
    let report = match kafka {
        Some(brokers) => {
            let k = bench::run_kafka(plan, &options, &brokers, partitions)?;
            write!(
                stdout,
                "{}",
                bench::render_kafka(&k, &brokers, &name, (batch, partitions))
            )?;
            k.report
        }
        None => {
            let (report, bytes) = bench::run(plan, &options)?;
            write!(stdout, "{}", bench::render(&report, bytes, &name, &options))?;
            report
        }
    };
    if report.counters.dropped_total() > 0 {
        eprint!("{}", summary::render(&report));
    }
    Ok(())
}

/// `meterflow run`: runs the pipeline over its inputs and prints the summary.
fn run_command(args: RunArgs, stdout: &mut impl Write) -> anyhow::Result<()> {
    let RunArgs {
        pipeline,
        inputs,
        workers: n,
        store,
        summary_json,
        no_progress,
        dead_letter,
        listen,
        token_file,
        state,
        checkpoint_every,
        forget_after,
        chunk_bytes,
        max_line_bytes,
        resume,
        notify,
        http,
    } = args;
    let plan = load(&pipeline)?;
    let listen = listen
        .map(|addr| http.options(addr, token_file.as_deref()))
        .transpose()?;
    let mut inputs = inputs
        .iter()
        .map(|i| InputSpec::parse(i).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if inputs.is_empty() {
        for p in plan.polling_inputs() {
            eprintln!(
                "meterflow: polling {} every {}s (a source with interval:, and no --input)",
                p.display(),
                p.interval.as_secs_f64()
            );
            inputs.push(InputSpec::Poll(p));
        }
        if inputs.is_empty() && listen.is_none() {
            anyhow::bail!(
                "{}: no input: give --input URL (a file, -, kafka://..., poll://host), or add interval: SECONDS to a source so that it polls",
                pipeline.display()
            );
        }
    }
    let options = RunOptions {
        workers: workers(n)?,
        progress: (!no_progress && std::io::stderr().is_terminal()).then(progress_bar),
        dead_letter: dead_letter.clone(),
        store,
        listen,
        notifier: notify.options()?,
        state,
        checkpoint_every: checkpoint_interval(checkpoint_every)?,
        forget_after: forget_span(forget_after)?,
        chunk_bytes: chunk_bytes as usize,
        max_line_bytes: max_line_bytes as usize,
        resume,
    };
    let report = service::run(plan, &inputs, &options, Some(announce_listening()))?;
    let decoding_drops: u64 = DropReason::ALL
        .into_iter()
        .filter(|r| r.is_input_rejection())
        .map(|r| report.counters.dropped(r))
        .sum();
    if dead_letter.is_none() && decoding_drops > 0 && !summary_json {
        eprintln!("meterflow: {decoding_drops} input records were rejected; pass --dead-letter FILE to keep them for repair and replay");
    }
    if summary_json {
        writeln!(stdout, "{}", summary::json(&report))?;
    } else {
        eprint!("{}", summary::render(&report));
    }
    Ok(())
}

/// `meterflow alarms list|show|history`: reads the alarms and their history from a store.
fn alarms_command(what: AlarmsCommand, stdout: &mut impl Write) -> anyhow::Result<()> {
    let dir = match &what {
        AlarmsCommand::List { store, .. }
        | AlarmsCommand::Show { store, .. }
        | AlarmsCommand::History { store, .. } => store,
    };
    let store = meterflow_connectors::gnocchi::store::Store::open(dir)?;
    let all = alarms::stored_alarms(&store.alarms()?);
    match what {
        AlarmsCommand::List { json: true, .. } => {
            let list: Vec<serde_json::Value> = all.values().map(alarms::alarm_json).collect();
            writeln!(stdout, "{}", serde_json::to_string_pretty(&list)?)?;
        }
        AlarmsCommand::List { .. } => {
            writeln!(
                stdout,
                "{:<36}  {:<44}  {:<24}  {:<17}  {:<8}  enabled",
                "alarm_id", "type", "name", "state", "severity"
            )?;
            for a in all.values() {
                let d = &a.definition;
                writeln!(
                    stdout,
                    "{:<36}  {:<44}  {:<24}  {:<17}  {:<8}  {}",
                    d.alarm_id,
                    d.kind,
                    d.name,
                    a.evaluation.evaluator.state.as_str(),
                    d.severity.as_str(),
                    d.enabled
                )?;
            }
        }
        AlarmsCommand::Show { alarm, .. } => {
            let a = alarms::find_alarm(&all, &alarm).map_err(anyhow::Error::msg)?;
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&alarms::alarm_json(a))?
            )?;
        }
        AlarmsCommand::History { alarm, .. } => {
            let id = match alarms::find_alarm(&all, &alarm) {
                Ok(a) => a.definition.alarm_id.clone(),
                // A deleted alarm's history is still there.
                Err(_) if store.alarms()?.contains_key(&alarm) => alarm,
                Err(e) => anyhow::bail!(e),
            };
            let history: Vec<serde_json::Value> = store
                .alarm_history(Some(&id))?
                .iter()
                .map(alarms::history_json)
                .collect();
            writeln!(stdout, "{}", serde_json::to_string_pretty(&history)?)?;
        }
    }
    Ok(())
}

/// A progress bar on stderr drawn from worker 0's reports of how far it has read.
fn progress_bar() -> ProgressCallback {
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    ProgressCallback(std::sync::Arc::new(move |progress| match progress {
        ReadProgress::Started { total_bytes } => {
            if let Some(n) = total_bytes {
                bar.set_length(n);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        ReadProgress::Read { bytes } => bar.set_position(bytes),
        ReadProgress::Finished => bar.finish_and_clear(),
    }))
}
