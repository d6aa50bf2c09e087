//! Alarm notifiers: where an alarm's transitions go. `http(s)://` POSTs Aodh's webhook payload,
//! `log://` writes Aodh's log line, `file://PATH` appends one payload per line, `kafka://`
//! produces the payload to a topic.
//!
//! Delivery never stalls evaluation: [`Notifier::send`] only appends to a journal and a
//! bounded queue per receiver. Each receiver has its own task on the notifier's runtime, so a
//! slow or dead receiver delays only its own queue. An HTTP receiver has [`HTTP_LANES`]
//! queues, an alarm always in the same one: one alarm's notifications arrive in order, and
//! several are in flight to the receiver at once. Failures (connection errors, timeouts,
//! 5xx, 408, 429) are retried with exponential backoff and full jitter; what finally fails, a
//! permanent 4xx, or what finds its queue full is appended to the dead-letter file. The
//! journal (`DIR/journal.jsonl`) records each notification when it is sent and each outcome;
//! a restart resends what has none, so nothing is lost across a crash (at least once).
//!
//! Before each delivery the action is checked against the operator's [`ActionPolicy`]; one
//! it refuses is dead-lettered with the rule, never carried out.

pub mod policy;

pub use policy::{ActionPolicy, ActionSource};

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Aodh's webhook payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The alarm's name.
    pub alarm_name: String,
    /// The alarm's id.
    pub alarm_id: String,
    /// `low`, `moderate` or `critical`.
    pub severity: String,
    /// The state before.
    pub previous: String,
    /// The state now.
    pub current: String,
    /// Aodh's reason text.
    pub reason: String,
    /// Aodh's `reason_data`.
    pub reason_data: Value,
}

impl Payload {
    /// The body Aodh's REST notifier posts: Python's `json.dumps` (keys in Aodh's order,
    /// `", "` and `": "` separators).
    ///
    /// # Examples
    /// ```
    /// use meterflow_connectors::notify::Payload;
    /// let p = Payload { alarm_name: "a".into(), alarm_id: "1".into(), severity: "low".into(),
    ///     previous: "ok".into(), current: "alarm".into(), reason: "r".into(),
    ///     reason_data: serde_json::json!({"type": "threshold", "count": 1})};
    /// assert_eq!(p.body(), r#"{"alarm_name": "a", "alarm_id": "1", "severity": "low", "previous": "ok", "current": "alarm", "reason": "r", "reason_data": {"type": "threshold", "count": 1}}"#);
    /// ```
    pub fn body(&self) -> String {
        python_json(&serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// Aodh's `log://` line.
    pub fn log_line(&self, url: &str) -> String {
        format!(
            "Notifying alarm {} {} of {} priority from {} to {} with action {url} because {}.",
            self.alarm_name, self.alarm_id, self.severity, self.previous, self.current, self.reason
        )
    }
}

/// `value` as Python's `json.dumps` writes it with default separators.
pub fn python_json(value: &Value) -> String {
    struct Python;
    /// Python's item separator, before every item but the first.
    fn separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for Python {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Python);
    if value.serialize(&mut ser).is_err() {
        return value.to_string();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// One notification to deliver: a payload for one action URL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The action URL.
    pub url: String,
    /// What to send.
    pub payload: Payload,
}

/// How to deliver.
#[derive(Clone, Debug)]
pub struct NotifierOptions {
    /// Where the journal and the dead-letter file live (`journal.jsonl`, `dead-letter.jsonl`);
    /// `None`: in memory only (nothing survives a restart).
    pub dir: Option<PathBuf>,
    /// Attempts per notification before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's backoff; it doubles up to `max_backoff` (full jitter).
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Notifications queued per receiver before more are dead-lettered.
    pub queue_capacity: usize,
    /// Which actions may be carried out.
    pub policy: ActionPolicy,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            dir: None,
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            queue_capacity: 10_000,
            policy: ActionPolicy::default(),
        }
    }
}

/// What the notifier did, for the summary and `/metrics`.
#[derive(Debug, Default)]
pub struct NotifierStats {
    /// Notifications handed in.
    pub sent: AtomicU64,
    /// Delivered (2xx, written, produced).
    pub delivered: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    /// Given up on and written to the dead-letter file.
    pub dead_lettered: AtomicU64,
}

/// A journal line: a notification sent, or the outcome of one.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum JournalLine {
    Sent {
        seq: u64,
        notification: Box<Notification>,
    },
    Done {
        done: u64,
    },
}

struct Shared {
    options: NotifierOptions,
    stats: Arc<NotifierStats>,
    journal: Mutex<Option<File>>,
    dead: Mutex<Option<File>>,
    http: reqwest::Client,
    files: Mutex<HashMap<PathBuf, Arc<Mutex<File>>>>,
}

/// Delivers alarm notifications in the background (see the module doc).
pub struct Notifier {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    queues: Mutex<HashMap<String, tokio::sync::mpsc::Sender<(u64, Notification)>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    seq: AtomicU64,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("dir", &self.shared.options.dir)
            .finish()
    }
}

impl Notifier {
    /// Starts delivering; resends what the journal in `options.dir` holds without an outcome.
    pub fn start(options: NotifierOptions) -> Result<Notifier, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("meterflow-notify")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the notifier: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| format!("cannot start the HTTP notifier: {e}"))?;
        let mut pending = Vec::new();
        let (journal, dead) = match &options.dir {
            None => (None, None),
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|e| {
                    format!(
                        "cannot create the notifier directory {}: {e}",
                        dir.display()
                    )
                })?;
                pending = recover(&dir.join("journal.jsonl"))?;
                let open = |name: &str, truncate: bool| {
                    let path = dir.join(name);
                    OpenOptions::new()
                        .create(true)
                        .append(!truncate)
                        .write(true)
                        .truncate(truncate)
                        .open(&path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))
                };
                let mut journal = open("journal.jsonl", true)?;
                for (seq, n) in &pending {
                    write_line(
                        &mut journal,
                        &JournalLine::Sent {
                            seq: *seq,
                            notification: Box::new(n.clone()),
                        },
                    )
                    .map_err(|e| format!("cannot write the notifier journal: {e}"))?;
                }
                (Some(journal), Some(open("dead-letter.jsonl", false)?))
            }
        };
        let notifier = Notifier {
            shared: Arc::new(Shared {
                options,
                stats: Arc::new(NotifierStats::default()),
                journal: Mutex::new(journal),
                dead: Mutex::new(dead),
                http,
                files: Mutex::new(HashMap::new()),
            }),
            runtime: Some(runtime),
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            seq: AtomicU64::new(pending.last().map_or(0, |p| p.0 + 1)),
        };
        for (seq, n) in pending {
            notifier.enqueue(seq, n);
        }
        Ok(notifier)
    }

    /// The counters.
    pub fn stats(&self) -> Arc<NotifierStats> {
        self.shared.stats.clone()
    }

    /// Hands a notification over: journaled, queued for its receiver; never blocks on the
    /// receiver.
    pub fn send(&self, notification: Notification) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if let Some(journal) = lock(&self.shared.journal).as_mut() {
            let line = JournalLine::Sent {
                seq,
                notification: Box::new(notification.clone()),
            };
            if let Err(e) = write_line(journal, &line) {
                tracing::error!("cannot write the notifier journal: {e}; the notification is still sent, but would not be resent after a crash");
            }
        }
        self.shared.stats.sent.fetch_add(1, Ordering::Relaxed);
        self.enqueue(seq, notification);
    }

    /// Makes what was sent so far durable (the journal reaches the disk).
    pub fn sync(&self) -> Result<(), String> {
        match lock(&self.shared.journal).as_mut() {
            Some(journal) => journal
                .sync_data()
                .map_err(|e| format!("cannot sync the notifier journal: {e}")),
            None => Ok(()),
        }
    }

    fn enqueue(&self, seq: u64, n: Notification) {
        let key = receiver_key(&n.url, &n.payload.alarm_id);
        let mut queues = lock(&self.queues);
        let tx = queues.entry(key).or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(self.shared.options.queue_capacity.max(1));
            let shared = self.shared.clone();
            if let Some(rt) = &self.runtime {
                lock(&self.tasks).push(rt.spawn(deliver_all(shared, rx)));
            }
            tx
        });
        if let Err(e) = tx.try_send((seq, n)) {
            let (seq, n) = match e {
                tokio::sync::mpsc::error::TrySendError::Full(v)
                | tokio::sync::mpsc::error::TrySendError::Closed(v) => v,
            };
            let why = format!(
                "the queue for {} is full ({} waiting): the receiver is too slow or down",
                n.url, self.shared.options.queue_capacity
            );
            dead_letter(&self.shared, seq, &n, 0, &why);
        }
    }

    /// Stops taking notifications and waits up to `grace` for the queues to drain; what is
    /// left stays in the journal for the next start.
    pub fn shutdown(mut self, grace: Duration) {
        lock(&self.queues).clear();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        if let Some(rt) = self.runtime.take() {
            rt.block_on(async {
                let all = async {
                    for t in tasks {
                        let _ = t.await;
                    }
                };
                let _ = tokio::time::timeout(grace, all).await;
            });
            rt.shutdown_background();
        }
        let _ = self.sync();
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_line(file: &mut File, line: &impl Serialize) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)
}

/// The notifications of a journal that have no outcome, in order.
fn recover(path: &Path) -> Result<Vec<(u64, Notification)>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut sent = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // A line cut short by a crash is the last one: nothing after it to lose.
        match serde_json::from_str::<JournalLine>(&line) {
            Ok(JournalLine::Sent { seq, notification }) => {
                sent.insert(seq, *notification);
            }
            Ok(JournalLine::Done { done }) => {
                sent.remove(&done);
            }
            Err(_) => {}
        }
    }
    Ok(sent.into_iter().collect())
}

/// Queues (each delivering in order, one request at a time) per HTTP receiver.
pub const HTTP_LANES: u64 = 4;

/// Where a URL's notifications for an alarm queue: one queue per receiver (scheme, host, port
/// or file), and for HTTP one of its [`HTTP_LANES`] lanes, chosen by the alarm.
fn receiver_key(url: &str, alarm_id: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match scheme {
        "http" | "https" => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let lane =
                std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, alarm_id) % HTTP_LANES;
            format!("{scheme}://{authority}#{lane}")
        }
        "kafka" => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            format!("{scheme}://{authority}")
        }
        "file" => url.split('?').next().unwrap_or(url).to_owned(),
        _ => format!("{scheme}://"),
    }
}

fn now_iso() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    meterflow_engine::time::format_iso_utc(micros)
}

fn record_done(shared: &Shared, seq: u64) {
    if let Some(journal) = lock(&shared.journal).as_mut() {
        if let Err(e) = write_line(journal, &JournalLine::Done { done: seq }) {
            tracing::warn!("cannot write the notifier journal: {e}; after a restart this notification may be sent again");
        }
    }
}

fn dead_letter(shared: &Shared, seq: u64, n: &Notification, attempts: u32, why: &str) {
    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        "alarm {} ({}): giving up on {} after {attempts} attempts: {why}; written to the dead-letter file",
        n.payload.alarm_name,
        n.payload.alarm_id,
        n.url
    );
    if let Some(dead) = lock(&shared.dead).as_mut() {
        let line = serde_json::json!({
            "at": now_iso(),
            "url": n.url,
            "attempts": attempts,
            "error": why,
            "payload": n.payload,
        });
        if let Err(e) = write_line(dead, &line).and_then(|()| dead.sync_data()) {
            tracing::error!("cannot write the notifier dead-letter file: {e}");
        }
    }
    record_done(shared, seq);
}

/// One receiver's queue, in order.
async fn deliver_all(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<(u64, Notification)>,
) {
    while let Some((seq, n)) = rx.recv().await {
        let mut backoff = shared.options.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match deliver(&shared, &n).await {
                Ok(()) => {
                    shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    record_done(&shared, seq);
                    break;
                }
                Err(Failure { message, retry }) => {
                    if !retry || attempt >= shared.options.max_attempts {
                        dead_letter(&shared, seq, &n, attempt, &message);
                        break;
                    }
                    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                    // Full jitter: anywhere up to the current backoff.
                    let wait = backoff
                        .mul_f64(fastrand::f64())
                        .max(Duration::from_millis(1));
                    tracing::warn!(
                        "alarm {}: {} failed ({message}); retrying in {} ms",
                        n.payload.alarm_id,
                        n.url,
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(shared.options.max_backoff);
                }
            }
        }
    }
}

struct Failure {
    message: String,
    retry: bool,
}

async fn deliver(shared: &Arc<Shared>, n: &Notification) -> Result<(), Failure> {
    // Alarms stored by an earlier run may predate the operator's present rules. Where an
    // alarm came from is not known here, so the rules every source shares apply.
    shared
        .options
        .policy
        .check(&n.url, ActionSource::Definition)
        .map_err(|message| Failure {
            message,
            retry: false,
        })?;
    let (scheme, rest) = n.url.split_once("://").unwrap_or(("", &n.url));
    match scheme {
        "http" | "https" => {
            let request_id = format!("req-{}", crate::gnocchi::random_uuid());
            let response = shared
                .http
                .post(&n.url)
                .header("content-type", "application/json")
                .header("x-openstack-request-id", request_id)
                .body(n.payload.body())
                .send()
                .await
                .map_err(|e| Failure {
                    message: format!("{e}"),
                    retry: true,
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(Failure {
                    message: format!("the receiver answered {status}"),
                    retry: status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429,
                })
            }
        }
        "log" => {
            eprintln!("{}", n.payload.log_line(&n.url));
            Ok(())
        }
        "file" => {
            let path = PathBuf::from(rest.split('?').next().unwrap_or(rest));
            let file = {
                let mut files = lock(&shared.files);
                match files.get(&path) {
                    Some(f) => f.clone(),
                    None => {
                        use std::os::unix::fs::OpenOptionsExt;
                        // Never through a link, never blocking on a FIFO (the policy refused
                        // both; this closes the window between its check and the open).
                        let f = OpenOptions::new()
                            .create(true)
                            .append(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                            .open(&path)
                            .map_err(|e| Failure {
                                message: format!("cannot open {}: {e}", path.display()),
                                retry: true,
                            })?;
                        let f = Arc::new(Mutex::new(f));
                        files.insert(path.clone(), f.clone());
                        f
                    }
                }
            };
            let mut line = n.payload.body().into_bytes();
            line.push(b'\n');
            let mut f = lock(&file);
            f.write_all(&line)
                .and_then(|()| f.flush())
                .map_err(|e| Failure {
                    message: format!("cannot write {}: {e}", path.display()),
                    retry: true,
                })
        }
        "kafka" => {
            let url = n.url.clone();
            let body = n.payload.body();
            let key = n.payload.alarm_id.clone();
            let timeout = shared.options.timeout;
            tokio::task::spawn_blocking(move || produce(&url, &key, &body, timeout))
                .await
                .map_err(|e| Failure {
                    message: format!("the Kafka notifier stopped: {e}"),
                    retry: true,
                })?
        }
        other => Err(Failure {
            message: format!("no notifier for scheme {other:?}"),
            retry: false,
        }),
    }
}

/// Produces one payload to `kafka://HOST:PORT[,HOST:PORT]/TOPIC`, keyed by alarm id.
fn produce(url: &str, key: &str, body: &str, timeout: Duration) -> Result<(), Failure> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let rest = url.trim_start_matches("kafka://");
    let (brokers, topic) = rest.split_once('/').unwrap_or((rest, "alarms"));
    let topic = topic.split('?').next().unwrap_or(topic);
    let topic = if topic.is_empty() { "alarms" } else { topic };
    let fail = |message: String| Failure {
        message,
        retry: true,
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .map_err(|e| fail(format!("cannot create a Kafka producer for {brokers}: {e}")))?;
    producer
        .send(BaseRecord::to(topic).key(key).payload(body))
        .map_err(|(e, _)| fail(format!("cannot produce to {topic}: {e}")))?;
    producer
        .flush(timeout)
        .map_err(|e| fail(format!("producing to {topic} on {brokers} failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(url: &str) -> Notification {
        Notification {
            url: url.into(),
            payload: Payload {
                alarm_name: "cpu".into(),
                alarm_id: "a-1".into(),
                severity: "low".into(),
                previous: "ok".into(),
                current: "alarm".into(),
                reason: "r".into(),
                reason_data: serde_json::json!({"type": "threshold"}),
            },
        }
    }

    #[test]
    fn files_get_one_payload_per_line_and_the_journal_resends_what_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("alarms.jsonl");
        let options = NotifierOptions {
            dir: Some(dir.path().join("notify")),
            ..NotifierOptions::default()
        };
        let n = Notifier::start(options.clone()).unwrap();
        n.send(notification(&format!("file://{}", out.display())));
        n.send(notification("log://"));
        n.shutdown(Duration::from_secs(5));
        let text = fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(
            text.starts_with(r#"{"alarm_name": "cpu", "alarm_id": "a-1""#),
            "{text}"
        );
        assert!(recover(&dir.path().join("notify/journal.jsonl"))
            .unwrap()
            .is_empty());
        // A journal with a sent line and no outcome (a crash) is resent at the next start.
        let journal = dir.path().join("notify/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        let line = JournalLine::Sent {
            seq: 7,
            notification: Box::new(notification(&format!("file://{}", out.display()))),
        };
        write_line(&mut f, &line).unwrap();
        drop(f);
        let n = Notifier::start(options).unwrap();
        n.shutdown(Duration::from_secs(5));
        assert_eq!(fs::read_to_string(&out).unwrap().lines().count(), 2);
    }

    #[test]
    fn unreachable_receivers_are_retried_then_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = Notifier::start(NotifierOptions {
            dir: Some(dir.path().to_owned()),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            ..NotifierOptions::default()
        })
        .unwrap();
        let stats = n.stats();
        n.send(notification(&format!("http://127.0.0.1:{port}/hook")));
        n.shutdown(Duration::from_secs(10));
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
        let dead = fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap();
        let dead: Value = serde_json::from_str(dead.trim()).unwrap();
        assert_eq!(dead["attempts"], 3);
        assert_eq!(dead["payload"]["alarm_id"], "a-1");
    }

    #[test]
    fn receivers_are_keyed_by_authority() {
        let lane = |id: &str| receiver_key("http://h:1/a?x=1", id);
        assert!(lane("a").starts_with("http://h:1#"));
        assert_eq!(lane("a"), lane("a"), "one alarm, one lane");
        let lanes: std::collections::HashSet<String> =
            (0..100).map(|i| lane(&format!("alarm-{i}"))).collect();
        assert_eq!(lanes.len() as u64, HTTP_LANES);
        assert_eq!(receiver_key("file:///tmp/a?x", "a"), "file:///tmp/a");
        assert_eq!(receiver_key("log://", "a"), "log://");
    }
}
