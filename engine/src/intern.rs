//! Process-wide string interning for the names samples are keyed and routed by.
//!
//! Meter names, resource ids, users, projects, units and sources repeat across millions of
//! samples, so each distinct string is stored once, for the life of the process, and samples
//! carry an 8-byte [`Sym`]: a pointer to the one stored copy. Comparing and hashing a symbol
//! touch only the pointer; [`Sym::as_str`] is a plain dereference with no lookup. A per-thread
//! cache in front of the shared table makes interning a known string one hash of the borrowed
//! input with no lock and no allocation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, OnceLock};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

type Table = Mutex<HashMap<&'static str, Sym>>;

/// Bytes of text interned so far (for the interned-size metric).
static INTERNED_BYTES: AtomicUsize = AtomicUsize::new(0);

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

thread_local! {
    static CACHE: RefCell<FxHashMap<&'static str, Sym>> = RefCell::new(FxHashMap::default());
}

/// An interned string: cheap to copy, hash and compare; resolves to its text with [`Sym::as_str`].
///
/// Symbols are process-local; across processes (cluster mode) they serialise as their text.
#[derive(Clone, Copy)]
pub struct Sym(&'static String);

impl Sym {
    /// Interns `text`, returning the symbol every equal string maps to.
    pub fn new(text: &str) -> Sym {
        CACHE.with(|cache| {
            if let Some(sym) = cache.borrow().get(text) {
                return *sym;
            }
            let sym = {
                let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
                match table.get(text) {
                    Some(sym) => *sym,
                    None => {
                        let stored: &'static String = Box::leak(Box::new(text.to_owned()));
                        INTERNED_BYTES.fetch_add(text.len(), AtomicOrdering::Relaxed);
                        let sym = Sym(stored);
                        table.insert(stored.as_str(), sym);
                        sym
                    }
                }
            };
            let mut cache = cache.borrow_mut();
            // Bound the per-thread cache; the shared table stays the source of truth.
            if cache.len() > 1 << 20 {
                cache.clear();
            }
            cache.insert(sym.0.as_str(), sym);
            sym
        })
    }

    /// The interned text.
    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    /// How many distinct strings the process has interned (reported as a metric).
    pub fn interned_count() -> usize {
        table().lock().map_or(0, |t| t.len())
    }

    /// Bytes of text the process has interned (every distinct string is kept for its life,
    /// so a stream of ever-new resource ids grows this: reported as a metric).
    pub fn interned_bytes() -> usize {
        INTERNED_BYTES.load(AtomicOrdering::Relaxed)
    }
}

impl PartialEq for Sym {
    fn eq(&self, other: &Sym) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Sym {}

impl Hash for Sym {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0 as *const String as usize).hash(state);
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Sym) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    /// Orders by text, so sorted output does not depend on interning order.
    fn cmp(&self, other: &Sym) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
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
        assert!(Sym::new("a") < Sym::new("b"));
        assert!(Sym::interned_count() >= 3);
        assert!(Sym::interned_bytes() >= 3);
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
