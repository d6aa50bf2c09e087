//! What rate_of_change and delta remember per series (meter, resource): the previous
//! sample, with what checkpoints (save, restore, a worker's share) and forgetting quiet
//! series need, written once for both.

use meterflow_engine::intern::Sym;
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A remembered sample's event time.
pub(crate) trait Timed {
    /// Microseconds since the epoch.
    fn micros(&self) -> i64;
}

/// Per (meter, resource), the last sample remembered.
pub(crate) struct Series<V> {
    last: FxHashMap<(Sym, Sym), V>,
    /// Event time (µs) after which a quiet series' last sample is forgotten.
    forget_after: Option<i64>,
}

impl<V: Timed + Copy + Serialize + DeserializeOwned> Series<V> {
    pub(crate) fn new() -> Series<V> {
        Series {
            last: FxHashMap::default(),
            forget_after: None,
        }
    }

    /// Remembers `current` for `key` and returns what was remembered before, unless the
    /// series was quiet for longer than the span (then it starts afresh).
    pub(crate) fn replace(&mut self, key: (Sym, Sym), current: V) -> Option<V> {
        let span = self.forget_after;
        self.last.insert(key, current).filter(|previous| {
            span.is_none_or(|span| current.micros().saturating_sub(previous.micros()) <= span)
        })
    }

    /// Puts `previous` back for `key` (a sample older than it was dropped).
    pub(crate) fn put_back(&mut self, key: (Sym, Sym), previous: V) {
        self.last.insert(key, previous);
    }

    /// See [`super::Transform::save`].
    pub(crate) fn save(&self) -> Vec<u8> {
        let entries: Vec<_> = self.last.iter().collect();
        super::encode_state(&entries)
    }

    /// See [`super::Transform::restore`]; `name` is the transformer's.
    pub(crate) fn restore(&mut self, name: &str, state: &[u8]) -> Result<(), String> {
        let entries: Vec<((Sym, Sym), V)> = super::decode_state(name, state)?;
        self.last.extend(entries);
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
        self.last.retain(|_, v| v.micros() >= micros);
        before - self.last.len()
    }
}
