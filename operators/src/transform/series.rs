//! What rate_of_change and delta remember per series (meter, resource): the previous
//! sample, with what checkpoints (save, restore, a worker's share) and forgetting quiet
//! series need, written once for both.

use meterflow_engine::intern::Sym;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

/// A remembered sample's event time.
pub(crate) trait Timed {
    /// Microseconds since the epoch.
    fn micros(&self) -> i64;
}

/// Per (meter, resource), the last sample remembered, with the save it changed after (for
/// checkpoints that write only what changed).
pub(crate) struct Series<V> {
    last: FxHashMap<(Sym, Sym), (V, u32)>,
    /// Event time (µs) after which a quiet series' last sample is forgotten.
    forget_after: Option<i64>,
    /// Saves taken: an entry stamped with the current count changed since the last one.
    saves: u32,
    /// Series forgotten since the last save.
    removed: Vec<(Sym, Sym)>,
}

/// What a save holds: series remembered (all, or those changed since the save before) and
/// series forgotten since the save before. Restoring saves in order rebuilds the state.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "V: DeserializeOwned"))]
struct Saved<V> {
    entries: Vec<((Sym, Sym), V)>,
    removed: Vec<(Sym, Sym)>,
}

impl<V: Timed + Copy + Serialize + DeserializeOwned> Series<V> {
    pub(crate) fn new() -> Series<V> {
        Series {
            last: FxHashMap::default(),
            forget_after: None,
            saves: 0,
            removed: Vec::new(),
        }
    }

    /// Remembers `current` for `key` and returns what was remembered before, unless the
    /// series was quiet for longer than the span (then it starts afresh).
    pub(crate) fn replace(&mut self, key: (Sym, Sym), current: V) -> Option<V> {
        let span = self.forget_after;
        self.last
            .insert(key, (current, self.saves))
            .map(|(previous, _)| previous)
            .filter(|previous| {
                span.is_none_or(|span| current.micros().saturating_sub(previous.micros()) <= span)
            })
    }

    /// Puts `previous` back for `key` (a sample older than it was dropped).
    pub(crate) fn put_back(&mut self, key: (Sym, Sym), previous: V) {
        self.last.insert(key, (previous, self.saves));
    }

    /// See [`super::Transform::save`].
    pub(crate) fn save(&self) -> Vec<u8> {
        let entries: Vec<_> = self.last.iter().map(|(k, (v, _))| (*k, *v)).collect();
        super::encode_state(&Saved {
            entries,
            removed: Vec::new(),
        })
    }

    /// See [`super::Transform::save_checkpoint`]: everything, or what changed since the
    /// last save.
    pub(crate) fn save_checkpoint(&mut self, full: bool) -> (bool, Vec<u8>) {
        let removed = std::mem::take(&mut self.removed);
        let bytes = if full {
            self.save()
        } else {
            let saves = self.saves;
            let entries: Vec<_> = self
                .last
                .iter()
                .filter(|(_, (_, stamp))| *stamp == saves)
                .map(|(k, (v, _))| (*k, *v))
                .collect();
            super::encode_state(&Saved { entries, removed })
        };
        self.saves = self.saves.wrapping_add(1);
        (full, bytes)
    }

    /// See [`super::Transform::restore`]; `name` is the transformer's.
    pub(crate) fn restore(&mut self, name: &str, state: &[u8]) -> Result<(), String> {
        let saved: Saved<V> = super::decode_state(name, state)?;
        // Forgotten first: a series forgotten and then seen again is among the entries.
        for key in saved.removed {
            self.last.remove(&key);
        }
        let saves = self.saves;
        self.last
            .extend(saved.entries.into_iter().map(|(k, v)| (k, (v, saves))));
        Ok(())
    }

    /// See [`super::Transform::retain`].
    pub(crate) fn retain(&mut self, keep: &dyn Fn(Sym) -> bool) {
        self.last.retain(|(_, resource), _| keep(*resource));
    }

    /// See [`super::Transform::forget_after`].
    pub(crate) fn forget_after(&mut self, span: i64) {
        self.forget_after = Some(span);
    }

    /// See [`super::Transform::forget_before`].
    pub(crate) fn forget_before(&mut self, micros: i64) -> usize {
        let before = self.last.len();
        let removed = &mut self.removed;
        self.last.retain(|key, (v, _)| {
            let keep = v.micros() >= micros;
            if !keep {
                removed.push(*key);
            }
            keep
        });
        before - self.last.len()
    }
}
