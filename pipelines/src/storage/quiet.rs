//! Releasing quiet metrics: a metric that no measure reached for `--forget-after` of event
//! time (the engine's watermark, which travels in band) leaves memory; the store keeps its
//! record, final buckets, open buckets and raw measures, and the metric is resumed from there
//! when it speaks again, aggregating exactly as if it had stayed (a restart resumes metrics
//! the same way). Metrics an alarm reads stay in memory, so alarm semantics do not change.
//!
//! A released metric's state must be on disk before its memory goes: one dirty at release is
//! written into the next commit, and the entry waits, parked, until that commit is written;
//! if it speaks while parked it simply comes back. What stays per released metric is a hash
//! of its key (8 bytes, in a set), which tells a metric to reload from a new one.
//!
//! Sweeps happen as the watermark moves, at most once per eighth of the span of event time,
//! so their cost (one pass over the metrics in memory) is spread thin.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use rustc_hash::{FxHashMap, FxHasher};

use super::{Aggregator, Entry, Measure};

/// Nanoseconds per second.
const NS: i64 = 1_000_000_000;

/// The release bookkeeping of one worker's aggregation.
#[derive(Default)]
pub(super) struct Quiet {
    /// Event time (ns) without a measure after which a metric leaves memory; `None`: never.
    pub(super) span: Option<i64>,
    /// The watermark at which the next sweep is due.
    next_sweep: i64,
    /// Released entries waiting for the commit that carries their state, by key, with that
    /// commit's number.
    parked: FxHashMap<(Sym, Sym), (u64, Entry)>,
    /// The same, oldest commit first (an entry parked twice is queued twice; the number in
    /// `parked` tells which is current).
    parking: VecDeque<(u64, (Sym, Sym))>,
    /// Hashes of the keys of stored metrics not in memory (released this run, or quiet
    /// since before it), counted: two keys may share one.
    released: FxHashMap<u64, u32>,
}

/// The hash [`Quiet::released`] keeps of metric (resource key, name).
fn key_hash(resource: &str, name: &str) -> u64 {
    let mut h = FxHasher::default();
    (resource, name).hash(&mut h);
    h.finish()
}

impl Quiet {
    /// Counts metric (resource key, name) among the released.
    fn release(&mut self, resource: &str, name: &str) {
        *self.released.entry(key_hash(resource, name)).or_default() += 1;
    }

    /// Counts a released metric read back.
    fn reloaded(&mut self, resource: &str, name: &str) {
        let hash = key_hash(resource, name);
        if let Some(count) = self.released.get_mut(&hash) {
            *count -= 1;
            if *count == 0 {
                self.released.remove(&hash);
            }
        }
    }

    /// Whether metric (resource key, name) may be among the released.
    fn is_released(&self, resource: &str, name: &str) -> bool {
        self.released.contains_key(&key_hash(resource, name))
    }
}

impl Aggregator {
    /// Releases a metric from memory once the watermark has passed its newest measure by
    /// `span` of event time (see the module doc); `None` keeps every metric in memory.
    pub fn forget_after(&mut self, span: Option<std::time::Duration>) {
        self.quiet.span = span.map(|s| i64::try_from(s.as_nanos()).unwrap_or(i64::MAX));
    }

    /// Lets parked metrics go whose state is written, and sweeps for quiet ones when the
    /// watermark has moved far enough since the last sweep.
    pub(super) fn release_quiet(&mut self, diag: &mut Diag) {
        self.drop_written(diag);
        let Some(span) = self.quiet.span else {
            return;
        };
        if self.watermark == i64::MIN || self.watermark < self.quiet.next_sweep {
            return;
        }
        self.quiet.next_sweep = self.watermark.saturating_add((span / 8).max(NS));
        let horizon = self.watermark.saturating_sub(span);
        let (alarms, feeds) = (&self.alarms, &self.feeds);
        let leaving = self.metrics.take_where(|e| {
            e.metric.newest().is_none_or(|n| n < horizon)
                && !alarms.watches(e.key)
                && !feeds.subscribed(e.key)
        });
        let number = self.commits.next();
        let mut written = false;
        for mut entry in leaving {
            let key = entry.key;
            let carried = if entry.dirty {
                entry.write_state(&mut self.commits.checkpoint, number, diag);
                written = true;
                number
            } else {
                entry.collected
            };
            if let Some(names) = self.by_resource.get_mut(&key.0) {
                names.retain(|&n| n != key.1);
                if names.is_empty() {
                    self.by_resource.remove(&key.0);
                }
            }
            self.feeds.forget(key);
            diag.counters.buckets_open = diag.counters.buckets_open.saturating_sub(entry.held);
            diag.counters.metrics_released += 1;
            self.quiet.parked.insert(key, (carried, entry));
            self.quiet.parking.push_back((carried, key));
        }
        // Stored metrics this run has not touched: their records and states go too.
        let (states, quiet) = (&mut self.states, &mut self.quiet);
        self.known.retain(|key, _| {
            let newest = states
                .get(key)
                .and_then(|s| s.iter().map(|p| p.timestamp_ns).max());
            if newest.is_some_and(|n| n >= horizon) {
                return true;
            }
            states.remove(key);
            quiet.release(&key.0, &key.1);
            false
        });
        diag.counters.metrics_open = self.metrics.len() as u64;
        if written {
            // A bounded input starts no other commit before its end.
            self.commits.start(diag);
        }
        self.drop_written(diag);
    }

    /// Drops the parked entries whose state the store has now.
    fn drop_written(&mut self, diag: &mut Diag) {
        let Some(&(oldest, _)) = self.quiet.parking.front() else {
            return;
        };
        let committed = self.commits.committed(diag);
        if oldest > committed {
            return;
        }
        let quiet = &mut self.quiet;
        while let Some(&(number, key)) = quiet.parking.front() {
            if number > committed {
                break;
            }
            quiet.parking.pop_front();
            if quiet.parked.get(&key).is_some_and(|(n, _)| *n == number) {
                quiet.parked.remove(&key);
                quiet.release(key.0.as_str(), key.1.as_str());
            }
        }
    }

    /// Whether metric `key` was released but could not be read back (see
    /// [`Aggregator::reload_released`]): aggregating it afresh would overwrite the store.
    pub(super) fn unreadable(&self, key: (Sym, Sym)) -> bool {
        self.failure.is_some() && self.quiet.is_released(key.0.as_str(), key.1.as_str())
    }

    /// Brings back a metric released but not yet let go; its position.
    pub(super) fn unpark(&mut self, key: (Sym, Sym)) -> Option<usize> {
        let (_, entry) = self.quiet.parked.remove(&key)?;
        self.by_resource.entry(key.0).or_default().push(key.1);
        Some(self.metrics.insert(entry))
    }

    /// Reads back from the store, in one pass, the released metrics `measures` speak for,
    /// so that they resume where they were.
    pub(super) fn reload_released(&mut self, measures: &[Measure], diag: &mut Diag) {
        if self.quiet.released.is_empty() {
            return;
        }
        let mut keys: HashSet<(String, String)> = HashSet::new();
        let mut last = None;
        for m in measures {
            let key = (m.resource_key, m.name);
            if last == Some(key) {
                continue;
            }
            last = Some(key);
            if self.metrics.contains_key(&key) || self.quiet.parked.contains_key(&key) {
                continue;
            }
            let (resource, name) = (m.resource_key.as_str(), m.name.as_str());
            if self.quiet.is_released(resource, name) {
                keys.insert((resource.to_owned(), name.to_owned()));
            }
        }
        if keys.is_empty() {
            return;
        }
        match self.store.reload(&keys) {
            Ok(reloaded) => {
                for (resource, name) in reloaded.records.keys() {
                    self.quiet.reloaded(resource, name);
                }
                diag.counters.metrics_reloaded += reloaded.records.len() as u64;
                self.known.extend(reloaded.records);
                self.states.extend(reloaded.states);
            }
            Err(e) => {
                // Aggregating them afresh would overwrite what the store holds.
                self.failure.get_or_insert(format!(
                    "cannot read {} released metrics back from the store ({e}); check the store's disk, then start again",
                    keys.len()
                ));
            }
        }
    }
}
