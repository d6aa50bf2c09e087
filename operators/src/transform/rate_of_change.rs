//! `rate_of_change`: turns successive values of a meter into a rate (e.g. `cpu` ns → `cpu_util` %).
//!
//! Per (meter, resource) it keeps the previous volume and time. The first sample of a key emits
//! nothing. Then rate = Δvolume / Δt (seconds; monotonic times when both samples have them),
//! where a `cumulative` decrease counts as a counter reset (Δvolume = the new volume), a gauge
//! may go negative, and equal times give 0.0. A sample older than the cached one is dropped and
//! the cache keeps the newer. Output volume = scale × rate: a string `scale` is evaluated on the
//! new sample, a number multiplies the new volume too (Ceilometer's quirk), no scale means 1;
//! `max` caps it.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample, SampleType, Volume};
//! use meterflow_operators::transform::{find, Transform};
//! let params = serde_yaml::from_str(
//!     "{target: {name: cpu_util, unit: '%', type: gauge, scale: '100.0 / (10**9 * (resource_metadata.cpu_number or 1))'}}").unwrap();
//! let mut t = find("rate_of_change").unwrap().build(&params).unwrap();
//! let cpu = |v: i64, t: &str| Sample::gauge("cpu", "vm-1", 0.0, t)
//!     .with_kind(SampleType::Cumulative).with_volume(Volume::Int(v)).with_metadata(r#"{"cpu_number": 2}"#);
//! let mut diag = Diag::default();
//! assert!(t.handle(cpu(10_000_000_000, "2024-05-01T12:00:00"), &mut diag).is_none());
//! let out = t.handle(cpu(13_000_000_000, "2024-05-01T12:00:30"), &mut diag).unwrap();
//! assert_eq!(out.name.as_str(), "cpu_util");
//! assert!((out.volume.as_f64() - 5.0).abs() < 1e-12);
//! ```

use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::{Sample, SampleType, Volume};
use serde::Deserialize;

use super::convert::{Converter, SourceSpec, TargetSpec};
use super::series::{Series, Timed};
use super::{ConfigProblem, Partition, Transform, TransformerConfig};

/// Parameters of `rate_of_change`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOfChangeConfig {
    /// `map_from` (and `unit`, which Ceilometer does not check here either).
    #[serde(default)]
    pub source: SourceSpec,
    /// `name`, `unit`, `type`, `scale` (default `"1"`), `max`, `map_to`.
    #[serde(default)]
    pub target: TargetSpec,
}

#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Previous {
    volume: Volume,
    micros: i64,
    monotonic: Option<f64>,
}

/// The `rate_of_change` runtime.
pub struct RateOfChange {
    converter: Converter,
    cache: Series<Previous>,
}

impl Timed for Previous {
    fn micros(&self) -> i64 {
        self.micros
    }
}

impl TransformerConfig for RateOfChangeConfig {
    const NAME: &'static str = "rate_of_change";
    const DESCRIPTION: &'static str =
        "rate of change per (resource, meter), scaled (cpu ns -> cpu_util %)";
    const PARTITION: Partition = Partition::ByResource;
    type Runtime = RateOfChange;

    fn build(self) -> Result<RateOfChange, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let converter = Converter::new(&self.source, &self.target, Some("1"), &mut problems);
        if problems.is_empty() {
            Ok(RateOfChange {
                converter,
                cache: Series::new(),
            })
        } else {
            Err(problems)
        }
    }
}

impl Transform for RateOfChange {
    fn save(&self) -> Vec<u8> {
        self.cache.save()
    }

    fn save_checkpoint(&mut self, full: bool) -> (bool, Vec<u8>) {
        self.cache.save_checkpoint(full)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.cache.restore(RateOfChangeConfig::NAME, state)
    }

    fn retain(&mut self, keep: &dyn Fn(Sym) -> bool) {
        self.cache.retain(keep);
    }

    fn forget_after(&mut self, span: i64) {
        self.cache.forget_after(span);
    }

    fn forget_before(&mut self, micros: i64) -> usize {
        self.cache.forget_before(micros)
    }

    fn handle(&mut self, s: Sample, diag: &mut Diag) -> Option<Sample> {
        let Some(micros) = s.timestamp.micros() else {
            diag.drop(DropReason::BadTimestamp, || {
                format!(
                    "rate_of_change: dropping {} of {}: timestamp {:?} is not ISO 8601",
                    s.name,
                    s.resource_id,
                    s.timestamp.as_str()
                )
            });
            return None;
        };
        let key = (s.name, s.resource_id);
        let current = Previous {
            volume: s.volume,
            micros,
            monotonic: s.monotonic_time,
        };
        let Some(previous) = self.cache.replace(key, current) else {
            diag.drop(DropReason::NoPredecessor, || {
                format!(
                    "rate_of_change: {} of {} is its series' first sample: remembered, no rate yet",
                    s.name, s.resource_id
                )
            });
            return None;
        };
        let seconds = match (s.monotonic_time, previous.monotonic) {
            (Some(now), Some(then)) => now - then,
            _ => (micros - previous.micros) as f64 / 1e6,
        };
        if seconds < 0.0 {
            // Older than what we have: drop it and keep the newer state.
            self.cache.put_back(key, previous);
            diag.drop(DropReason::OutOfOrder, || {
                format!(
                    "rate_of_change: dropping {} of {} at {}: older than the sample before it (as Ceilometer does)",
                    s.name,
                    s.resource_id,
                    s.timestamp.as_str()
                )
            });
            return None;
        }
        let delta = if previous.volume > s.volume && s.kind == SampleType::Cumulative {
            s.volume
        } else {
            s.volume - previous.volume
        };
        let rate = if seconds == 0.0 {
            0.0
        } else {
            delta.as_f64() / seconds
        };
        match self.converter.convert(&s, Volume::Float(rate)) {
            Ok(out) => Some(out),
            Err(e) => {
                diag.drop(DropReason::ExpressionError, || {
                    format!(
                        "rate_of_change: dropping {} of {} at {}: target.scale failed: {e}",
                        s.name,
                        s.resource_id,
                        s.timestamp.as_str()
                    )
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use meterflow_engine::metrics::DropReason;
    use meterflow_engine::SampleType;

    const T0: &str = "2024-05-01T12:00:00";
    const T30: &str = "2024-05-01T12:00:30";
    const T60: &str = "2024-05-01T12:01:00";
    const T50: &str = "2024-05-01T12:00:50";

    #[test]
    fn first_sample_of_each_key_is_dropped() {
        let mut t = build("rate_of_change", "{}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                cum("cpu", "a", 10, T0),
                cum("cpu", "b", 10, T0),
                cum("disk", "a", 1, T0),
            ]],
        );
        assert!(out.is_empty());
    }

    #[test]
    fn rate_reset_backwards_and_equal_times() {
        let mut t = build("rate_of_change", "{}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                cum("cpu", "a", 100, T0),
                cum("cpu", "a", 400, T30), // 300 / 30 = 10
                cum("cpu", "a", 60, T60),  // reset: 60 / 30 = 2
                cum("cpu", "a", 5, T50),   // backwards: dropped, cache stays at T60
                cum("cpu", "a", 90, T60),  // equal time: 0.0
            ]],
        );
        assert_eq!(volumes(&out), [10.0, 2.0, 0.0]);
    }

    #[test]
    fn gauge_may_go_negative() {
        let mut t = build("rate_of_change", "{}");
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("m", "a", 10.0, T0), gauge("m", "a", 4.0, T30)]],
        );
        assert_eq!(volumes(&out), [-0.2]);
        assert_eq!(out[0].kind, SampleType::Gauge);
    }

    #[test]
    fn numeric_scale_multiplies_volume_too_and_max_caps() {
        let mut t = build("rate_of_change", "{target: {scale: 2}}");
        let (out, _) = run(
            &mut *t,
            vec![vec![cum("c", "a", 0, T0), cum("c", "a", 30, T30)]],
        );
        assert_eq!(volumes(&out), [30.0 * 2.0 * 1.0]);
        let mut t = build("rate_of_change", "{target: {max: 0.5}}");
        let (out, _) = run(
            &mut *t,
            vec![vec![cum("c", "a", 0, T0), cum("c", "a", 30, T30)]],
        );
        assert_eq!(volumes(&out), [0.5]);
    }

    #[test]
    fn a_series_quiet_longer_than_the_span_starts_afresh() {
        let mut t = build("rate_of_change", "{}");
        t.forget_after(60_000_000);
        let (out, diag) = run(
            &mut *t,
            vec![vec![
                cum("cpu", "a", 0, "2024-05-01T12:00:00"),
                cum("cpu", "a", 30, "2024-05-01T12:00:30"), // 1.0
                cum("cpu", "a", 90, "2024-05-01T12:05:00"), // quiet 4.5 min: forgotten
                cum("cpu", "a", 150, "2024-05-01T12:06:00"), // 1.0
            ]],
        );
        assert_eq!(volumes(&out), [1.0, 1.0]);
        assert_eq!(diag.counters.dropped(DropReason::NoPredecessor), 2);
        assert_eq!(t.forget_before(i64::MAX), 1, "one series remembered");
        assert_eq!(t.forget_before(i64::MAX), 0);
    }

    #[test]
    fn monotonic_time_is_preferred_when_both_have_it() {
        let mut t = build("rate_of_change", "{}");
        let mut a = cum("c", "a", 0, T0);
        a.monotonic_time = Some(100.0);
        let mut b = cum("c", "a", 10, T30);
        b.monotonic_time = Some(102.0);
        let (out, _) = run(&mut *t, vec![vec![a, b]]);
        assert_eq!(volumes(&out), [5.0]);
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("rate_of_change", "{target: {scale: '100 / '}}").contains("target.scale"));
        assert!(build_err("rate_of_change", "{target: {type: rate}}").contains("target.type"));
        assert!(build_err(
            "rate_of_change",
            "{source: {map_from: {name: '(unclosed'}}, target: {map_to: {name: x}}}"
        )
        .contains("source.map_from.name"));
        assert!(build_err("rate_of_change", "{growth_only: true}").contains("growth_only"));
    }

    #[test]
    fn unparseable_timestamp_is_counted() {
        let mut t = build("rate_of_change", "{}");
        let (out, diag) = run(&mut *t, vec![vec![cum("c", "a", 0, "yesterday")]]);
        assert!(out.is_empty());
        assert_eq!(diag.counters.dropped(DropReason::BadTimestamp), 1);
    }
}
