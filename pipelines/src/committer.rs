//! A worker's store commits on a thread of their own: the worker hands a checkpoint over and
//! goes on aggregating and evaluating the next epochs while the disk writes (Parquet files,
//! `fsync`, the manifest: 10–20 ms on a small VM). Commits of one worker stay in order, one at
//! a time; each has a number, so the epochs that owe a commit are held until
//! [`Committer::committed`] reaches theirs (at-least-once: nothing they carry is acknowledged
//! before it is on disk).

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meterflow_connectors::gnocchi::store::{Checkpoint, Partition, Store, StoreError};
use meterflow_engine::metrics::Diag;

use crate::retry::retry_with_backoff;

/// How long a store that fails with a retryable error (a full disk) is retried.
const RETRY_LIMIT: Duration = Duration::from_secs(60);

/// What a finished commit reports: the aggregate rows it wrote, or why it failed.
type Done = Result<u64, String>;

/// One worker's committer (see the module doc).
pub struct Committer {
    store: Arc<Store>,
    partition: Partition,
    /// Called by the commit thread when a commit finishes (wakes the worker's operator).
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    thread: Option<Worker>,
    /// Commits started, and finished; one is in flight while they differ.
    started: u64,
    finished: u64,
    failure: Option<String>,
}

/// The commit thread and its two channels.
struct Worker {
    jobs: Sender<Checkpoint>,
    done: Receiver<Done>,
    handle: JoinHandle<()>,
}

impl Committer {
    /// Commits worker `partition`'s checkpoints into `store`.
    pub fn new(store: Arc<Store>, partition: Partition) -> Committer {
        Committer {
            store,
            partition,
            wake: None,
            thread: None,
            started: 0,
            finished: 0,
            failure: None,
        }
    }

    /// Calls `wake` (from the commit thread) each time a commit finishes.
    pub fn wake_with(&mut self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.wake = Some(wake);
    }

    /// Whether a commit is in flight.
    pub fn busy(&self) -> bool {
        self.started > self.finished
    }

    /// The number the next commit will have.
    pub fn next(&self) -> u64 {
        self.started + 1
    }

    /// The number of the last commit finished (all before it finished too).
    pub fn committed(&mut self, diag: &mut Diag) -> u64 {
        self.poll(diag, false);
        self.finished
    }

    /// Why the store could not be written, if it could not (nothing is committed after).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Starts committing `checkpoint` (taken; left empty), after the commit in flight if there
    /// is one (this waits for it). Returns its number. Nothing is written after a failure, and
    /// an empty checkpoint finishes at once.
    pub fn start(&mut self, checkpoint: &mut Checkpoint, diag: &mut Diag) -> u64 {
        self.wait(diag);
        self.started += 1;
        if checkpoint.is_empty() || self.failure.is_some() {
            self.finished = self.started;
            return self.started;
        }
        let job = std::mem::take(checkpoint);
        let worker = self
            .thread
            .get_or_insert_with(|| spawn(self.store.clone(), self.partition, self.wake.clone()));
        if worker.jobs.send(job).is_err() {
            self.failure = Some("the store's commit thread stopped; see the log".into());
            self.finished = self.started;
        }
        self.started
    }

    /// Commits `checkpoint` and waits until it is written.
    pub fn commit_now(&mut self, checkpoint: &mut Checkpoint, diag: &mut Diag) {
        self.start(checkpoint, diag);
        self.wait(diag);
    }

    /// Waits for the commit in flight, if any.
    pub fn wait(&mut self, diag: &mut Diag) {
        self.poll(diag, true);
    }

    /// Takes what finished commits report; with `block`, until none is in flight.
    fn poll(&mut self, diag: &mut Diag, block: bool) {
        while self.busy() {
            let Some(worker) = &self.thread else {
                self.finished = self.started;
                break;
            };
            let done = if block {
                worker.done.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                worker.done.try_recv()
            };
            match done {
                Ok(Ok(rows)) => {
                    self.finished += 1;
                    diag.counters.buckets_written += rows;
                }
                Ok(Err(why)) => {
                    self.finished += 1;
                    self.failure.get_or_insert(why);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.failure
                        .get_or_insert("the store's commit thread stopped; see the log".into());
                    self.finished = self.started;
                }
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once the commit in flight is written.
        if let Some(Worker {
            jobs, done, handle, ..
        }) = self.thread.take()
        {
            drop(jobs);
            drop(done);
            let _ = handle.join();
        }
    }
}

/// Commits `checkpoint`, retrying what fails for [`RETRY_LIMIT`] — except a full disk, for
/// which it waits as long as it takes (the dataflow pauses behind it, the API answers writes
/// 503 and goes on serving reads) and resumes by itself once there is space.
fn commit_waiting_for_space(
    store: &Store,
    partition: Partition,
    checkpoint: &mut Checkpoint,
    what: &str,
) -> Result<(), StoreError> {
    let mut waited: Option<std::time::Instant> = None;
    let mut said = std::time::Instant::now();
    loop {
        let transient = |e: &StoreError| e.retryable() && !e.is_full();
        match retry_with_backoff(what, RETRY_LIMIT, transient, || {
            store.commit(partition, checkpoint).map(drop)
        }) {
            Err(e) if e.is_full() && store.waits_for_space() => {
                let since = *waited.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < Duration::from_millis(10)
                    || said.elapsed() >= Duration::from_secs(60)
                {
                    tracing::error!("{what}: the disk is full ({e}); waiting for space (the API answers writes 503 meanwhile, reads go on)");
                    said = std::time::Instant::now();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            result => {
                if let Some(since) = waited {
                    tracing::warn!(
                        "{what}: there is space again after {:.0?}; resuming",
                        since.elapsed()
                    );
                }
                return result;
            }
        }
    }
}

/// Starts worker `partition`'s commit thread.
fn spawn(
    store: Arc<Store>,
    partition: Partition,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
) -> Worker {
    let (jobs, inbox) = mpsc::channel::<Checkpoint>();
    let (outbox, done) = mpsc::channel::<Done>();
    let handle = std::thread::Builder::new()
        .name(format!("meterflow-commit-{}", partition.index))
        .spawn(move || {
            for mut checkpoint in inbox {
                let rows = checkpoint.aggregates.len() as u64;
                let what = format!("store {}", store.dir().display());
                let result = commit_waiting_for_space(&store, partition, &mut checkpoint, &what)
                    .map(|()| rows)
                    .map_err(|e| format!("cannot write the store: {e}"));
                if outbox.send(result).is_err() {
                    return;
                }
                if let Some(wake) = &wake {
                    wake();
                }
            }
        })
        .expect("a thread for the store's commits");
    Worker { jobs, done, handle }
}

/// When a stage checkpoints: when the epochs it processed owe a commit (they must not pass
/// before it), or, with an interval, once that long passed while something changed.
pub struct Cadence {
    /// Checkpoint at least this often while something changed (a long-running engine).
    pub interval: Option<Duration>,
    /// When the last checkpoint was collected.
    pub last: Instant,
    /// Something changed since the last checkpoint.
    pub changed: bool,
    /// The epochs processed since the last checkpoint must not pass before the next one.
    pub owed: bool,
}

impl Default for Cadence {
    fn default() -> Cadence {
        Cadence {
            interval: None,
            last: Instant::now(),
            changed: false,
            owed: false,
        }
    }
}

impl Cadence {
    /// Something changed and the interval has passed.
    fn due(&self) -> bool {
        self.changed && self.interval.is_some_and(|i| self.last.elapsed() >= i)
    }

    /// A checkpoint is being collected: nothing is owed or changed since.
    pub fn restart(&mut self) {
        self.changed = false;
        self.owed = false;
        self.last = Instant::now();
    }
}

/// A stage's way into the store: what the next checkpoint writes, when it is due, and the
/// [`Committer`] that writes it.
pub struct Commits {
    /// What the next checkpoint writes.
    pub checkpoint: Checkpoint,
    /// When it is due.
    pub cadence: Cadence,
    committer: Committer,
}

impl Commits {
    /// Worker `partition`'s commits into `store`.
    pub fn new(store: Arc<Store>, partition: Partition, cadence: Cadence) -> Commits {
        Commits {
            checkpoint: Checkpoint::default(),
            cadence,
            committer: Committer::new(store, partition),
        }
    }

    /// Starts committing what is buffered (after the commit in flight); its number.
    pub fn start(&mut self, diag: &mut Diag) -> u64 {
        self.committer.start(&mut self.checkpoint, diag)
    }

    /// Commits what is buffered and waits until it is written.
    pub fn commit_now(&mut self, diag: &mut Diag) {
        self.committer.commit_now(&mut self.checkpoint, diag);
    }

    /// The number the next commit started will have (the one that carries what is buffered).
    pub fn next(&self) -> u64 {
        self.committer.next()
    }

    /// The number of the last commit written (all before it were written too).
    pub fn committed(&mut self, diag: &mut Diag) -> u64 {
        self.committer.committed(diag)
    }

    /// Why the store could not be written, if it could not.
    pub fn failure(&self) -> Option<&str> {
        self.committer.failure()
    }
}

/// A stage that checkpoints into the store through its [`Commits`] (the aggregation
/// operator, the cross-alarm operator): how its operator settles epochs with the store.
pub trait Checkpointed {
    /// The stage's commits.
    fn commits(&mut self) -> &mut Commits;

    /// Adds what changed since the last checkpoint to `commits().checkpoint`, and restarts
    /// the cadence (clearing what is owed: [`Checkpointed::settle`] relies on it).
    fn collect(&mut self, diag: &mut Diag);

    /// Calls `wake` (from another thread) when a commit finishes: the operator holding
    /// epochs for it runs again.
    fn wake_with(&mut self, wake: Arc<dyn Fn() + Send + Sync>) {
        self.commits().committer.wake_with(wake);
    }

    /// Starts the checkpoint the epochs processed since the last call owe, if they owe one
    /// (an input that commits offsets, measures or alarm changes the API answers once
    /// committed), and returns the number of the commit they wait for
    /// ([`Checkpointed::committed`] reaching it); `None` when they owe none. The disk writes
    /// while the worker goes on; a checkpoint owed while a commit is in flight starts when it
    /// finishes and takes every epoch processed meanwhile (group commit).
    fn settle(&mut self, diag: &mut Diag) -> Option<u64> {
        // What is owed stays owed until a checkpoint is collected (which restarts the
        // cadence): the next commit to start carries it.
        let commits = self.commits();
        if !commits.cadence.owed {
            return None;
        }
        commits.committer.committed(diag);
        if commits.committer.busy() {
            return Some(commits.committer.next());
        }
        self.collect(diag);
        Some(self.commits().start(diag))
    }

    /// The number of the last commit written (see [`Checkpointed::settle`]).
    fn committed(&mut self, diag: &mut Diag) -> u64 {
        self.commits().committer.committed(diag)
    }

    /// Starts a checkpoint if something changed and the interval has passed (and no commit
    /// is in flight).
    fn checkpoint_if_due(&mut self, diag: &mut Diag) {
        let commits = self.commits();
        if commits.cadence.due() && !commits.committer.busy() {
            self.collect(diag);
            self.commits().start(diag);
        }
    }

    /// Collects everything that changed, commits it, and waits until it is written.
    fn checkpoint_all(&mut self, diag: &mut Diag) {
        self.collect(diag);
        self.commits().commit_now(diag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_engine::intern::Sym;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn commits_finish_in_order_and_wake_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let partition = Partition { index: 0, count: 1 };
        let mut committer = Committer::new(store.clone(), partition);
        let woken = Arc::new(AtomicUsize::new(0));
        let count = woken.clone();
        committer.wake_with(Arc::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        }));
        let mut diag = Diag::default();
        let name = Sym::new("cpu");
        let resource = Sym::new("vm");
        let mean = Some(Sym::new("mean"));
        let mut numbers = Vec::new();
        for i in 0..3 {
            let mut checkpoint = Checkpoint::default();
            checkpoint.aggregates.push(
                resource,
                name,
                mean,
                60_000_000_000,
                i * 60_000_000_000,
                1.0,
            );
            numbers.push(committer.start(&mut checkpoint, &mut diag));
            assert!(checkpoint.is_empty(), "the checkpoint is taken");
        }
        assert_eq!(numbers, [1, 2, 3]);
        committer.wait(&mut diag);
        assert_eq!(committer.committed(&mut diag), 3);
        assert!(!committer.busy());
        // The thread wakes the worker right after reporting each commit (so a woken
        // operator finds it done): the third wake may follow the report by a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while woken.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(woken.load(Ordering::SeqCst), 3);
        assert_eq!(diag.counters.buckets_written, 3);
        let route = meterflow_engine::partition::route("vm");
        assert_eq!(store.aggregates("vm", "cpu", route).unwrap().len(), 3);
        // An empty checkpoint finishes at once, with a number of its own.
        assert_eq!(committer.start(&mut Checkpoint::default(), &mut diag), 4);
        assert_eq!(committer.committed(&mut diag), 4);
        assert!(committer.failure().is_none());
    }
}
