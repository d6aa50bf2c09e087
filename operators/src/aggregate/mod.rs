//! Gnocchi's time-series aggregation: archive policies, aggregation methods, and the per-metric
//! state that turns batches of measures into aggregates exactly as Gnocchi's storage does
//! (bucketing, `back_window`, late measures, retention).
//!
//! This is the pure core; the `gnocchi://` publisher and the store that persist and serve it
//! land with the storage work.

mod across;
pub mod dynamic;
mod method;
mod metric;
mod policy;
mod running;

pub use across::{Across, AcrossError};
pub use method::{resampled, Method, MethodError};
pub use metric::{BatchOutcome, Metric, Point};
pub use policy::{
    parse_timespan, python_timedelta, ArchivePolicy, Granule, PolicyError, MAX_GRANULARITY,
};

/// Nanoseconds per second (Gnocchi keeps timestamps at nanosecond resolution).
pub const NANOS: i64 = 1_000_000_000;
