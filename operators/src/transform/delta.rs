//! `delta`: the difference between successive volumes of a meter per resource.
//!
//! The first sample of a key emits nothing; a sample older than the cached one is dropped and
//! the cache keeps the newer. The output is a `delta` sample with the same unit and volume =
//! new − previous (no reset handling, no division by time); `growth_only: true` drops negative
//! differences (the cache still advances). `target.name` or `map_from`/`map_to` rename.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample, SampleType, Volume};
//! use meterflow_operators::transform::{find, Transform};
//! let params = serde_yaml::from_str("{target: {name: cpu.delta}, growth_only: true}").unwrap();
//! let mut t = find("delta").unwrap().build(&params).unwrap();
//! let cpu = |v: i64, t: &str| Sample::gauge("cpu", "vm-1", 0.0, t).with_kind(SampleType::Cumulative).with_volume(Volume::Int(v));
//! let mut d = Diag::default();
//! assert!(t.handle(cpu(10, "2024-05-01T12:00:00"), &mut d).is_none());
//! assert_eq!(t.handle(cpu(13, "2024-05-01T12:00:30"), &mut d).unwrap().volume, Volume::Int(3));
//! assert!(t.handle(cpu(2, "2024-05-01T12:01:00"), &mut d).is_none()); // negative, growth_only
//! assert_eq!(t.handle(cpu(5, "2024-05-01T12:01:30"), &mut d).unwrap().volume, Volume::Int(3));
//! ```

use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::{Sample, SampleType, Volume};
use serde::Deserialize;

use super::convert::{Converter, SourceSpec, TargetSpec};
use super::series::{Series, Timed};
use super::{ConfigProblem, Partition, Transform, TransformerConfig};

/// Parameters of `delta`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// `map_from` for renaming.
    #[serde(default)]
    pub source: SourceSpec,
    /// `name` or `map_to` (other target fields are not used by `delta`).
    #[serde(default)]
    pub target: TargetSpec,
    /// Drop negative differences.
    #[serde(default)]
    pub growth_only: bool,
}

/// The `delta` runtime.
pub struct Delta {
    converter: Converter,
    growth_only: bool,
    cache: Series<Last>,
}

/// A series' last volume and its time (µs).
#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Last(Volume, i64);

impl Timed for Last {
    fn micros(&self) -> i64 {
        self.1
    }
}

impl TransformerConfig for DeltaConfig {
    const NAME: &'static str = "delta";
    const DESCRIPTION: &'static str =
        "difference to the previous volume per (resource, meter); growth_only";
    const PARTITION: Partition = Partition::ByResource;
    type Runtime = Delta;

    fn build(self) -> Result<Delta, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let converter = Converter::new(&self.source, &self.target, None, &mut problems);
        if problems.is_empty() {
            Ok(Delta {
                converter,
                growth_only: self.growth_only,
                cache: Series::new(),
            })
        } else {
            Err(problems)
        }
    }
}

impl Transform for Delta {
    fn save(&self) -> Vec<u8> {
        self.cache.save()
    }

    fn save_checkpoint(&mut self, full: bool) -> (bool, Vec<u8>) {
        self.cache.save_checkpoint(full)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.cache.restore(DeltaConfig::NAME, state)
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
                    "delta: dropping {} of {}: timestamp {:?} is not ISO 8601",
                    s.name,
                    s.resource_id,
                    s.timestamp.as_str()
                )
            });
            return None;
        };
        let key = (s.name, s.resource_id);
        let Some(Last(prev_volume, prev_micros)) = self.cache.replace(key, Last(s.volume, micros))
        else {
            diag.drop(DropReason::NoPredecessor, || {
                format!(
                    "delta: {} of {} is its series' first sample: remembered, no difference yet",
                    s.name, s.resource_id
                )
            });
            return None;
        };
        if micros < prev_micros {
            self.cache.put_back(key, Last(prev_volume, prev_micros));
            diag.drop(DropReason::OutOfOrder, || {
                format!(
                    "delta: dropping {} of {} at {}: older than the sample before it (as Ceilometer does)",
                    s.name,
                    s.resource_id,
                    s.timestamp.as_str()
                )
            });
            return None;
        }
        let delta = s.volume - prev_volume;
        if self.growth_only && delta.as_f64() < 0.0 {
            return None;
        }
        Some(Sample {
            name: self.converter.map_name(s.name),
            kind: SampleType::Delta,
            volume: delta,
            source: self.converter.sample_source(),
            message_id: None,
            monotonic_time: None,
            ..s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use meterflow_engine::{SampleType, Volume};

    #[test]
    fn a_series_quiet_longer_than_the_span_starts_afresh() {
        let mut t = build("delta", "{}");
        t.forget_after(60_000_000);
        let (out, _) = run(
            &mut *t,
            vec![vec![
                cum("cpu", "a", 10, "2024-05-01T12:00:00"),
                cum("cpu", "a", 15, "2024-05-01T12:00:30"),
                cum("cpu", "a", 40, "2024-05-01T12:05:00"),
                cum("cpu", "a", 42, "2024-05-01T12:05:30"),
            ]],
        );
        assert_eq!(volumes(&out), [5.0, 2.0]);
        assert_eq!(t.forget_before(i64::MAX), 1);
    }

    #[test]
    fn differences_keep_unit_and_type_delta() {
        let mut t = build("delta", "{}");
        let (out, _) = run(
            &mut *t,
            vec![
                vec![cum("n", "a", 10, "2024-05-01T12:00:00")],
                vec![
                    cum("n", "a", 25, "2024-05-01T12:01:00"),
                    cum("n", "a", 20, "2024-05-01T12:02:00"),
                ],
            ],
        );
        assert_eq!(
            out.iter().map(|s| s.volume).collect::<Vec<_>>(),
            [Volume::Int(15), Volume::Int(-5)]
        );
        assert!(out
            .iter()
            .all(|s| s.kind == SampleType::Delta && s.name.as_str() == "n"));
    }

    #[test]
    fn backwards_time_is_dropped_and_equal_time_is_not() {
        let mut t = build("delta", "{}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                cum("n", "a", 10, "2024-05-01T12:01:00"),
                cum("n", "a", 99, "2024-05-01T12:00:00"),
                cum("n", "a", 12, "2024-05-01T12:01:00"),
            ]],
        );
        assert_eq!(volumes(&out), [2.0]);
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("delta", "{growth_only: maybe}").contains("growth_only"));
    }
}
