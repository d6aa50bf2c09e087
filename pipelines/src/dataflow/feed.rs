//! Worker 0's loop: reads the inputs chunk by chunk, one epoch each, feeds the API's accepted
//! requests in, steps the dataflow, tells each source what is processed and answers the API
//! once the probe has passed a request's epoch.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterflow_engine::chunk::{Chunk, ChunkSource};
use meterflow_engine::metrics::Diag;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle};

use super::{ProgressCallback, ReadProgress};
use crate::alarms::AlarmEdit;
use crate::checkpoint::{self, Barrier, CheckpointStats, Checkpoints, InputRecord};
use crate::control::{Live, Requests};
use crate::storage::Measure;

/// The inputs, handed to worker 0 when it starts.
pub(super) type Readers = Arc<Mutex<Option<Vec<Box<dyn ChunkSource>>>>>;

/// How often workers hand their counters to the API's `/metrics`.
pub(super) const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How often an idle, listening engine moves its epoch on.
const TICK_EVERY: Duration = Duration::from_millis(500);

/// The API's side of worker 0's loop: accepted POSTs (measures, alarm changes) come in on
/// `requests`, go into the dataflow through `input` and `alarm_input`, and are answered once
/// the probe has passed their epoch.
pub(super) struct ApiFeed {
    pub(super) requests: Requests,
    pub(super) input: InputHandle<u64, CapacityContainerBuilder<Vec<Measure>>>,
    pub(super) alarm_input: InputHandle<u64, CapacityContainerBuilder<Vec<AlarmEdit>>>,
    pub(super) pending: Vec<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    /// How many workers the dataflow has.
    pub(super) peers: u64,
}

/// Worker 0's side of checkpoints: every `every` it marks the current epoch as a
/// checkpoint (a barrier to every worker's Transform, with the inputs' positions before the
/// epoch); once the probe has passed that epoch it publishes the checkpoint, and only then
/// may the sources commit what it covers.
pub(super) struct CheckpointFeed {
    pub(super) checkpoints: Arc<Checkpoints>,
    pub(super) every: Duration,
    pub(super) input: Option<InputHandle<u64, CapacityContainerBuilder<Vec<Barrier>>>>,
    pub(super) names: Arc<Vec<String>>,
    pub(super) stats: Arc<CheckpointStats>,
    pub(super) peers: u64,
    pub(super) next_number: u64,
    pub(super) last: Instant,
    pub(super) in_flight: Option<InFlight>,
    /// The last checkpoint this run published; `None` before the first and after one
    /// that could not be published (the next one is then whole).
    pub(super) published: Option<u64>,
    /// Checkpoints of changes published since the last whole one.
    pub(super) changes: u64,
}

/// A checkpoint marked and not yet published.
pub(super) struct InFlight {
    number: u64,
    epoch: u64,
    inputs: Vec<InputRecord>,
    marked: Instant,
    /// The checkpoint it holds the changes since; `None` for a whole one.
    previous: Option<u64>,
}

impl CheckpointFeed {
    /// Whether a checkpoint is due (none in flight, `every` passed).
    fn due(&self) -> bool {
        self.in_flight.is_none() && self.last.elapsed() >= self.every
    }

    /// Marks epoch `seq` (nothing of it sent yet) as the next checkpoint.
    fn mark(&mut self, seq: u64, sources: &[Box<dyn ChunkSource>]) {
        let number = self.next_number;
        self.next_number += 1;
        let inputs = self
            .names
            .iter()
            .zip(sources)
            .map(|(name, source)| InputRecord {
                name: name.clone(),
                position: source.position(),
            })
            .collect();
        let previous = self
            .published
            .filter(|_| self.changes + 1 < checkpoint::FULL_EVERY);
        let full = previous.is_none();
        if let Some(input) = self.input.as_mut() {
            for route in 0..self.peers {
                input.send(Barrier {
                    route,
                    number,
                    full,
                });
            }
        }
        self.in_flight = Some(InFlight {
            number,
            epoch: seq,
            inputs,
            marked: Instant::now(),
            previous,
        });
        self.last = Instant::now();
    }

    /// Moves the barriers' input to epoch `seq`.
    fn advance_to(&mut self, seq: u64) {
        if let Some(input) = self.input.as_mut() {
            input.advance_to(seq);
        }
    }

    /// Closes the barriers' input (no checkpoint is marked after).
    fn close(&mut self) {
        self.input = None;
    }

    /// Publishes the checkpoint in flight once the probe has passed its epoch; returns the
    /// last epoch it covers (the sources may commit through it).
    fn settle(&mut self, probe: &ProbeHandle<u64>) -> Option<u64> {
        let epoch = self.in_flight.as_ref()?.epoch;
        if probe.less_equal(&epoch) {
            return None;
        }
        let InFlight {
            number,
            epoch,
            inputs,
            marked,
            previous,
        } = self.in_flight.take()?;
        match self
            .checkpoints
            .publish(number, self.peers as usize, inputs, previous)
        {
            Ok(published) => {
                self.stats.published(published, marked.elapsed());
                self.published = Some(number);
                self.changes = if previous.is_some() {
                    self.changes + 1
                } else {
                    0
                };
                epoch.checked_sub(1)
            }
            Err(e) => {
                self.stats.failed();
                self.published = None;
                tracing::error!(
                    "checkpoint {number} in {} could not be published: {e}; the next one tries again (input offsets stay uncommitted meanwhile)",
                    self.checkpoints.root().display()
                );
                None
            }
        }
    }
}

impl ApiFeed {
    /// Requests handed in at once (one epoch); more wait for the next.
    const MAX_PER_EPOCH: usize = 256;

    /// Sends waiting requests into epoch `seq`, each its own batch; true if any.
    fn take(&mut self, seq: u64, api_input: usize, diag: &RefCell<Diag>) -> bool {
        let mut taken = 0usize;
        while taken < Self::MAX_PER_EPOCH {
            let Ok(request) = self.requests.alarms.try_recv() else {
                break;
            };
            // A change to an alarm over several metrics goes to every store operator.
            let mut edits = Vec::new();
            for edit in request.edits {
                if edit.cross {
                    for worker in 0..self.peers {
                        let mut copy = edit.clone();
                        copy.copy = Some(worker);
                        edits.push(copy);
                    }
                } else {
                    edits.push(edit);
                }
            }
            self.alarm_input.send_batch(&mut edits);
            self.pending.push((seq, request.reply));
            taken += 1;
        }
        while taken < Self::MAX_PER_EPOCH {
            let Ok(mut request) = self.requests.measures.try_recv() else {
                break;
            };
            let batch = (seq << 32) | taken as u64;
            let mut diag = diag.borrow_mut();
            for m in &mut request.measures {
                m.batch = batch;
                // A metric created without measures carries no time.
                if m.origin != crate::storage::Origin::ApiCreate {
                    diag.counters
                        .saw_event(api_input, m.timestamp_ns.div_euclid(1000));
                }
            }
            self.input.send_batch(&mut request.measures);
            self.pending.push((seq, request.reply));
            taken += 1;
        }
        taken > 0
    }

    /// Moves both inputs to epoch `seq`.
    fn advance_to(&mut self, seq: u64) {
        self.input.advance_to(seq);
        self.alarm_input.advance_to(seq);
    }

    /// Whether no request waits.
    fn is_idle(&self) -> bool {
        self.requests.measures.is_empty() && self.requests.alarms.is_empty()
    }

    /// Closes the request channels; requests that got in after the loop ended are refused
    /// (their senders see an error).
    fn refuse_the_rest(&mut self) {
        self.requests.measures.close();
        self.requests.alarms.close();
        while let Ok(request) = self.requests.measures.try_recv() {
            let _ = request.reply.send(Err(
                "meterflow stopped before taking these measures in; send them again".into(),
            ));
        }
        while let Ok(request) = self.requests.alarms.try_recv() {
            let _ = request.reply.send(Err(
                "meterflow stopped before making this alarm change; make it again".into(),
            ));
        }
    }

    /// Answers every request whose epoch the probe has passed (its checkpoint is committed).
    /// Call only after checking for a failure since the last step: a failing commit is
    /// reported before its epoch can pass.
    fn answer(&mut self, probe: &ProbeHandle<u64>) {
        let mut i = 0;
        while i < self.pending.len() {
            if probe.less_equal(&self.pending[i].0) {
                i += 1;
            } else {
                let (_, reply) = self.pending.swap_remove(i);
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// Worker 0's loop: reads every input in order, one epoch per chunk, keeping a bounded number
/// of chunks in flight, and tells each source which chunks are fully processed (so a Kafka
/// source commits only offsets whose output is written). With the API, measures it accepted
/// go in as epochs of their own, and the loop goes on after the inputs end until asked to
/// stop. Then it runs the dataflow to its end.
#[allow(clippy::too_many_arguments)]
pub(super) fn feed(
    worker: &mut timely::worker::Worker,
    mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Chunk>>>,
    mut api: Option<ApiFeed>,
    mut checkpoint: Option<CheckpointFeed>,
    probe: &ProbeHandle<u64>,
    (readers, first_data): (&Readers, &std::sync::OnceLock<Instant>),
    progress: Option<(ProgressCallback, Option<u64>)>,
    peers: u64,
    live: &Live,
    diag: &RefCell<Diag>,
) -> Result<u64, String> {
    let mut sources = readers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_default();
    if let Some((progress, total_bytes)) = &progress {
        progress.report(ReadProgress::Started {
            total_bytes: *total_bytes,
        });
    }
    let in_flight = 2 * peers + 2;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    let mut committed = None;
    let api_input_index = sources.len();
    let mut failure = None;
    let mut current = 0;
    let mut published = Instant::now();
    let mut ticked = Instant::now();
    loop {
        let mut sent = api
            .as_mut()
            .is_some_and(|api| api.take(seq, api_input_index, diag));
        if let Some(checkpoint) = checkpoint.as_mut().filter(|c| c.due()) {
            checkpoint.mark(seq, &sources);
        }
        if current < sources.len() && !live.stopping() {
            match sources[current].next_chunk(seq) {
                Ok(Some(chunk)) => {
                    if !chunk.data.is_empty() {
                        first_data.get_or_init(Instant::now);
                    }
                    bytes += chunk.data.len() as u64;
                    if let Some((progress, _)) = &progress {
                        progress.report(ReadProgress::Read { bytes });
                    }
                    input.send(chunk);
                    sent = true;
                }
                Ok(None) => current += 1,
                Err(e) => {
                    failure = Some(format!("reading input failed: {e}"));
                    break;
                }
            }
        }
        if sent {
            seq += 1;
            advance_to(seq, &mut input, api.as_mut(), checkpoint.as_mut());
        }
        worker.step();
        while probe.less_than(&seq.saturating_sub(in_flight)) {
            worker.step();
        }
        if let Err(e) = commit_inputs(&mut sources, &mut committed, checkpoint.as_mut(), probe) {
            failure = Some(e);
            break;
        }
        if let Some(why) = live.failure() {
            failure = Some(why);
            break;
        }
        if let Some(api) = api.as_mut() {
            api.answer(probe);
        }
        if published.elapsed() >= PUBLISH_EVERY {
            live.publish(0, &diag.borrow().counters);
            published = Instant::now();
        }
        if current >= sources.len() || live.stopping() {
            match &api {
                None => break,
                // Stopping: what was accepted before is taken in; then finish.
                Some(api) if live.stopping() && !sent && api.is_idle() => break,
                Some(_) if !sent => {
                    worker.step_or_park(Some(Duration::from_millis(2)));
                    // An empty epoch now and then lets the store's operator write what it
                    // holds (it checkpoints when due, see `Checkpointed::checkpoint_if_due`).
                    if ticked.elapsed() >= TICK_EVERY {
                        seq += 1;
                        advance_to(seq, &mut input, api.as_mut(), checkpoint.as_mut());
                        ticked = Instant::now();
                    }
                }
                Some(_) => {}
            }
        }
    }
    // Whatever happened, let every worker finish what was sent (and publish it) before
    // returning; only then is it safe to commit the last input progress. A last checkpoint
    // holds what the transformers keep at the end (unless the run failed).
    if let Some(checkpoint) = checkpoint.as_mut() {
        let marked_here = checkpoint.in_flight.as_ref().map(|f| f.epoch) == Some(seq);
        if failure.is_none() && !marked_here {
            if let Some(epoch) = checkpoint.in_flight.as_ref().map(|f| f.epoch) {
                // The inputs are past it: wait for it, then mark the last one.
                while probe.less_equal(&epoch) && live.failure().is_none() {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
                if let Err(e) =
                    commit_inputs(&mut sources, &mut committed, Some(&mut *checkpoint), probe)
                {
                    failure = Some(e);
                }
            }
            if failure.is_none() && live.failure().is_none() {
                checkpoint.mark(seq, &sources);
            }
        }
        checkpoint.close();
    }
    drop(input);
    if let Some(api) = api.as_mut() {
        api.refuse_the_rest();
    }
    let pending = api.map(|api| {
        drop(api.input);
        drop(api.alarm_input);
        api.pending
    });
    while worker.step_or_park(None) {}
    let failure = failure.or_else(|| live.failure());
    for (_, reply) in pending.into_iter().flatten() {
        let _ = reply.send(match &failure {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        });
    }
    if let Some(e) = failure {
        return Err(e);
    }
    commit_inputs(&mut sources, &mut committed, checkpoint.as_mut(), probe)?;
    if let Some((progress, _)) = &progress {
        progress.report(ReadProgress::Finished);
    }
    Ok(bytes)
}

/// Moves every input worker 0 feeds to epoch `seq`.
fn advance_to(
    seq: u64,
    input: &mut InputHandle<u64, CapacityContainerBuilder<Vec<Chunk>>>,
    api: Option<&mut ApiFeed>,
    checkpoint: Option<&mut CheckpointFeed>,
) {
    input.advance_to(seq);
    if let Some(api) = api {
        api.advance_to(seq);
    }
    if let Some(checkpoint) = checkpoint {
        checkpoint.advance_to(seq);
    }
}

/// Tells the sources what they may commit: with checkpoints, what the newest published one
/// covers; without, every epoch the probe has passed (processed and published).
fn commit_inputs(
    sources: &mut [Box<dyn ChunkSource>],
    committed: &mut Option<u64>,
    checkpoint: Option<&mut CheckpointFeed>,
    probe: &ProbeHandle<u64>,
) -> Result<(), String> {
    let through = match checkpoint {
        Some(checkpoint) => checkpoint.settle(probe),
        None => probe.with_frontier(|f| match f.first() {
            None => Some(u64::MAX),
            Some(0) => None,
            Some(t) => Some(t - 1),
        }),
    };
    let Some(through) = through else {
        return Ok(());
    };
    if *committed == Some(through) {
        return Ok(());
    }
    *committed = Some(through);
    sources
        .iter_mut()
        .try_for_each(|s| s.processed_through(through))
        .map_err(|e| format!("committing input progress failed: {e}"))
}
