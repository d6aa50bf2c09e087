//! Process-wide string interning for the names samples are keyed and routed by.
//!
//! Meter names, resource ids, users, projects, units and sources repeat across millions of
//! samples, so each distinct string is stored once and samples carry a 4-byte [`Sym`]. A small
//! per-thread cache in front of the shared interner makes the common lookup a single hash of the
//! borrowed input bytes with no lock and no allocation.

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use lasso::{Spur, ThreadedRodeo};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn rodeo() -> &'static ThreadedRodeo<Spur> {
    static RODEO: OnceLock<ThreadedRodeo<Spur>> = OnceLock::new();
    RODEO.get_or_init(ThreadedRodeo::new)
}

thread_local! {
    static CACHE: RefCell<FxHashMap<&'static str, Sym>> = RefCell::new(FxHashMap::default());
}

/// An interned string: cheap to copy, hash and compare; resolves to its text with [`Sym::as_str`].
///
/// Symbols are process-local; across processes (cluster mode) they serialise as their text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(Spur);

impl Sym {
    /// Interns `text`, returning the symbol every equal string maps to.
    pub fn new(text: &str) -> Sym {
        CACHE.with(|cache| {
            if let Some(sym) = cache.borrow().get(text) {
                return *sym;
            }
            let sym = Sym(rodeo().get_or_intern(text));
            let stored: &'static str = rodeo().resolve(&sym.0);
            let mut cache = cache.borrow_mut();
            // Bound the per-thread cache; the shared interner stays the source of truth.
            if cache.len() > 1 << 20 {
                cache.clear();
            }
            cache.insert(stored, sym);
            sym
        })
    }

    /// The interned text.
    pub fn as_str(self) -> &'static str {
        rodeo().resolve(&self.0)
    }

    /// How many distinct strings the process has interned (reported as a metric).
    pub fn interned_count() -> usize {
        rodeo().len()
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Sym::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_text_gives_equal_symbols_across_threads() {
        let a = Sym::new("cpu");
        let b = std::thread::spawn(|| Sym::new("cpu")).join().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "cpu");
        assert_ne!(a, Sym::new("cpu_util"));
    }

    #[test]
    fn serialises_as_text() {
        let s = Sym::new("disk.read.bytes");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"disk.read.bytes\"");
        let back: Sym = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
