//! Internal metrics: what came in, what went out, and what was dropped and why.
//!
//! Each worker owns a [`Counters`] (plain integers, no atomics on the hot path) and merges it
//! into the run's total at the end of a batch or of the run. Drops are data: every rejected
//! record is counted under a bounded [`DropReason`] and the first few of each reason are logged
//! with their place, so a flood of bad input never floods the log.

use std::fmt;

use serde::Serialize;

/// Why a line, sample or output was dropped. The set is closed so it can index counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A line that is not valid JSON.
    BadJson,
    /// Valid JSON that is neither a notification nor a sample dict.
    NotANotification,
    /// A service notification for which no meter definition exists.
    NoMeterDefinition,
    /// A sample whose `counter_volume` is null or absent.
    VolumeMissing,
    /// A sample whose `counter_volume` is not a number or a numeric string.
    VolumeNotANumber,
    /// A sample without `counter_name`, `resource_id`, `counter_type` or `timestamp`.
    MissingField,
    /// A sample whose `counter_type` is not gauge, delta or cumulative.
    BadCounterType,
    /// A sample whose timestamp is not ISO 8601, has an offset of a day or more, or lies
    /// outside the years 1678 to 2199 (refused as input, before any transformer).
    BadTimestamp,
    /// A transformer expression failed (division by zero, NaN, wrong operand types).
    ExpressionError,
    /// A publisher failed to write.
    PublishError,
    /// A measure older than its archive policy's `back_window` allows (Gnocchi drops these
    /// silently; meterflow counts them).
    LateMeasure,
    /// A measure whose value is NaN or infinite, or whose time is before 1970.
    InvalidMeasure,
    /// A sample for `gnocchi://` whose meter its resource definitions do not list (Ceilometer
    /// skips these too).
    NoResourceDefinition,
    /// A sample older than the previous one of its (meter, resource) series, which
    /// `rate_of_change` and `delta` drop (as Ceilometer does) keeping the newer one.
    OutOfOrder,
    /// The first sample of a (meter, resource) series, which `rate_of_change` and `delta`
    /// only remember: a rate or a difference needs a predecessor (as in Ceilometer).
    NoPredecessor,
    /// An input line longer than `--max-line-bytes`: skipped without being read into memory.
    LineTooLong,
}

impl DropReason {
    /// Every reason, in a stable order.
    pub const ALL: [DropReason; 16] = [
        DropReason::BadJson,
        DropReason::NotANotification,
        DropReason::NoMeterDefinition,
        DropReason::VolumeMissing,
        DropReason::VolumeNotANumber,
        DropReason::MissingField,
        DropReason::BadCounterType,
        DropReason::BadTimestamp,
        DropReason::ExpressionError,
        DropReason::PublishError,
        DropReason::LateMeasure,
        DropReason::InvalidMeasure,
        DropReason::NoResourceDefinition,
        DropReason::OutOfOrder,
        DropReason::NoPredecessor,
        DropReason::LineTooLong,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadJson => "bad_json",
            DropReason::NotANotification => "not_a_notification",
            DropReason::NoMeterDefinition => "no_meter_definition",
            DropReason::VolumeMissing => "volume_missing",
            DropReason::VolumeNotANumber => "volume_not_a_number",
            DropReason::MissingField => "missing_field",
            DropReason::BadCounterType => "bad_counter_type",
            DropReason::BadTimestamp => "bad_timestamp",
            DropReason::ExpressionError => "expression_error",
            DropReason::PublishError => "publish_error",
            DropReason::LateMeasure => "late_measure",
            DropReason::InvalidMeasure => "invalid_measure",
            DropReason::NoResourceDefinition => "no_resource_definition",
            DropReason::OutOfOrder => "out_of_order",
            DropReason::NoPredecessor => "no_predecessor",
            DropReason::LineTooLong => "line_too_long",
        }
    }

    /// Whether the record was rejected as input (bad JSON, a bad sample, nothing to make of a
    /// notification): what `--dead-letter` keeps for repair and replay. The others happen
    /// later, to good records (a transformer, a publisher, the store).
    pub fn is_input_rejection(self) -> bool {
        matches!(
            self,
            DropReason::BadJson
                | DropReason::NotANotification
                | DropReason::NoMeterDefinition
                | DropReason::VolumeMissing
                | DropReason::VolumeNotANumber
                | DropReason::MissingField
                | DropReason::BadCounterType
                | DropReason::BadTimestamp
                | DropReason::LineTooLong
        )
    }

    /// Whether the drop is the expected working of a transformer rather than a problem (the
    /// first sample of a series): logged at debug level only.
    pub fn is_expected(self) -> bool {
        self == DropReason::NoPredecessor
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Samples that entered and left one sink's transformer chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    /// Samples routed into the sink.
    pub samples_in: u64,
    /// Samples published by the sink.
    pub samples_out: u64,
    /// Events the sink published (an event sink's).
    pub events: u64,
}

/// One worker's (or, merged, the run's) counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Input lines read.
    pub lines: u64,
    /// Notifications decoded (a bare sample line counts as one).
    pub notifications: u64,
    /// Samples decoded, valid or not.
    pub samples_in: u64,
    /// Valid samples that no source's meter list accepts.
    pub samples_unrouted: u64,
    /// Drops by reason, indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Per sink, indexed by the sink's position in the definition.
    pub sinks: Vec<SinkCounts>,
    /// Samples still held by transformers (accumulator, aggregator, arithmetic) at the end.
    pub held: u64,
    /// Series whose transformer state was released after a span of event time without a
    /// sample (rate_of_change's and delta's previous samples).
    pub state_forgotten: u64,
    /// Metrics the store's aggregation released from memory after a span of event time
    /// without a measure (their state stays in the store).
    pub metrics_released: u64,
    /// Released metrics read back from the store because they spoke again.
    pub metrics_reloaded: u64,
    /// Measures handed to the embedded store (`gnocchi://`).
    pub measures: u64,
    /// Bucket values written to the store.
    pub buckets_written: u64,
    /// Metrics held in memory by the store's aggregation (a gauge).
    pub metrics_open: u64,
    /// Buckets held in memory, not yet final, as of the last checkpoint (a gauge).
    pub buckets_open: u64,
    /// Events made from notifications by the event definitions (for event sinks and alarms).
    pub events: u64,
    /// Events handed to publishers (one per event and publisher).
    pub events_published: u64,
    /// Alarm evaluations made (one per alarm per closed bucket boundary; one per event that
    /// hits an event alarm).
    pub alarm_evaluations: u64,
    /// Alarm state transitions.
    pub alarm_transitions: u64,
    /// Alarm notifications handed to the notifiers (one per action URL).
    pub alarm_notifications: u64,
    /// Alarms held next to their metric (a gauge).
    pub alarms: u64,
    /// Alarms over several metrics held by the cross operator (a gauge).
    pub alarms_cross: u64,
    /// Per input (by its position; the API's ingest after the inputs), the newest event time
    /// seen, microseconds since the epoch (`i64::MIN` before the first).
    pub newest_event_us: Vec<i64>,
}

impl Counters {
    /// Counters for a definition with `sinks` sinks.
    pub fn with_sinks(sinks: usize) -> Counters {
        Counters {
            sinks: vec![SinkCounts::default(); sinks],
            ..Counters::default()
        }
    }

    /// Records that input `input` carried an event at `micros`.
    #[inline]
    pub fn saw_event(&mut self, input: usize, micros: i64) {
        if self.newest_event_us.len() <= input {
            self.newest_event_us.resize(input + 1, i64::MIN);
        }
        let newest = &mut self.newest_event_us[input];
        *newest = (*newest).max(micros);
    }

    /// Counts one drop.
    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.lines += other.lines;
        self.notifications += other.notifications;
        self.samples_in += other.samples_in;
        self.measures += other.measures;
        self.buckets_written += other.buckets_written;
        self.samples_unrouted += other.samples_unrouted;
        self.held += other.held;
        self.state_forgotten += other.state_forgotten;
        self.metrics_released += other.metrics_released;
        self.metrics_reloaded += other.metrics_reloaded;
        self.metrics_open += other.metrics_open;
        self.buckets_open += other.buckets_open;
        self.alarm_evaluations += other.alarm_evaluations;
        self.alarm_transitions += other.alarm_transitions;
        self.alarm_notifications += other.alarm_notifications;
        self.events += other.events;
        self.events_published += other.events_published;
        self.alarms += other.alarms;
        self.alarms_cross += other.alarms_cross;
        for (i, &t) in other.newest_event_us.iter().enumerate() {
            self.saw_event(i, t);
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        if self.sinks.len() < other.sinks.len() {
            self.sinks.resize(other.sinks.len(), SinkCounts::default());
        }
        for (a, b) in self.sinks.iter_mut().zip(&other.sinks) {
            a.samples_in += b.samples_in;
            a.samples_out += b.samples_out;
            a.events += b.events;
        }
    }
}

/// Counts drops and logs the first [`Diag::LOGGED_PER_REASON`] of each reason with their place.
#[derive(Debug, Default)]
pub struct Diag {
    /// The counters drops are added to.
    pub counters: Counters,
    logged: [u32; DropReason::ALL.len()],
    /// The place of the record being handled, while a stage after decoding handles one: its
    /// drops are logged with it and kept in [`Diag::rejected`].
    pub at: Option<crate::chunk::Place>,
    /// Drops made while [`Diag::at`] was set, with their messages (for the dead-letter file).
    pub rejected: Vec<(DropReason, crate::chunk::Place, String)>,
    /// The run's input names, for places in messages.
    pub inputs: std::sync::Arc<Vec<String>>,
}

impl Diag {
    /// How many drops of one reason are logged per worker before the rest are only counted.
    pub const LOGGED_PER_REASON: u32 = 10;

    /// A diagnostics sink over fresh counters for `sinks` sinks.
    pub fn with_sinks(sinks: usize) -> Diag {
        Diag {
            counters: Counters::with_sinks(sinks),
            logged: [0; DropReason::ALL.len()],
            at: None,
            rejected: Vec::new(),
            inputs: std::sync::Arc::default(),
        }
    }

    /// Names the run's inputs, for places in messages.
    pub fn with_inputs(mut self, inputs: std::sync::Arc<Vec<String>>) -> Diag {
        self.inputs = inputs;
        self
    }

    /// Counts a drop; logs `message()` (which should name the place and the fix) while under
    /// the per-reason limit.
    pub fn drop(&mut self, reason: DropReason, message: impl FnOnce() -> String) {
        self.counters.drop(reason);
        let logged = &mut self.logged[reason.index()];
        if reason.is_expected() {
            tracing::debug!(reason = reason.as_str(), "{}", message());
        } else if let Some(at) = self.at {
            // A rejection after decoding: kept with its place for the dead-letter file.
            let message = message();
            if *logged < Self::LOGGED_PER_REASON {
                *logged += 1;
                let place = at.describe(&self.inputs);
                tracing::warn!(reason = reason.as_str(), "{place}: {message}");
                if *logged == Self::LOGGED_PER_REASON {
                    tracing::warn!(
                        reason = reason.as_str(),
                        "further drops for this reason are counted, not logged"
                    );
                }
            }
            self.rejected.push((reason, at, message));
        } else if *logged < Self::LOGGED_PER_REASON {
            *logged += 1;
            tracing::warn!(reason = reason.as_str(), "{}", message());
            if *logged == Self::LOGGED_PER_REASON {
                tracing::warn!(
                    reason = reason.as_str(),
                    "further drops for this reason are counted, not logged"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_slot() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Counters::with_sinks(1);
        a.drop(DropReason::BadJson);
        a.sinks[0].samples_in = 2;
        let mut b = Counters::with_sinks(2);
        b.drop(DropReason::BadJson);
        b.sinks[1].samples_out = 3;
        b.lines = 4;
        a.merge(&b);
        assert_eq!(a.dropped(DropReason::BadJson), 2);
        assert_eq!(a.sinks.len(), 2);
        assert_eq!(a.sinks[1].samples_out, 3);
        assert_eq!(a.lines, 4);
        assert_eq!(a.dropped_total(), 2);
    }
}
