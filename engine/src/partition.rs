//! How keyed data is spread over workers: one stable hash, the same in every process and run,
//! so the store's files can say which resources they hold.

use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;

/// The route of a key (a resource id): timely exchanges by it, the store partitions by it.
///
/// # Examples
/// ```
/// use meterflow_engine::partition::route;
/// assert_eq!(route("vm-1"), route("vm-1"));
/// assert_ne!(route("vm-1"), route("vm-2"));
/// ```
pub fn route(key: &str) -> u64 {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    let x = h.finish();
    // Mix so that low bits (timely takes a modulus) depend on every input bit.
    (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (x >> 32)
}
