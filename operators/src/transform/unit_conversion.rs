//! `unit_conversion`: rescales, renames and retypes samples (Ceilometer's `ScalingTransformer`).
//!
//! `target.scale` (a number multiplies the volume; an expression over the sample replaces it;
//! `0` leaves it unchanged), `target.name` / `unit` / `type` or `source.map_from` +
//! `target.map_to` rename, `target.max` caps when non-zero. With `source.unit` set, samples of
//! another unit pass through untouched. Built samples get `source: openstack` and a new id.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample, Volume};
//! use meterflow_operators::transform::{find, Transform};
//! let params = serde_yaml::from_str("{target: {name: disk.kilobytes, unit: KB, scale: 'volume * 1.0 / 1024'}}").unwrap();
//! let mut t = find("unit_conversion").unwrap().build(&params).unwrap();
//! let s = Sample::gauge("disk.bytes", "vm-1", 0.0, "2021-07-30T00:00:00").with_volume(Volume::Int(2048));
//! let out = t.handle(s, &mut Diag::default()).unwrap();
//! assert_eq!((out.name.as_str(), out.unit.as_str(), out.volume), ("disk.kilobytes", "KB", Volume::Float(2.0)));
//! ```

use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::{Sample, Volume};
use serde::Deserialize;

use super::convert::{Converter, SourceSpec, TargetSpec};
use super::{ConfigProblem, Partition, Transform, TransformerConfig};

/// Parameters of `unit_conversion`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConversionConfig {
    /// `unit` (only convert samples of this unit) and `map_from`.
    #[serde(default)]
    pub source: SourceSpec,
    /// `name`, `unit`, `type`, `scale`, `max`, `map_to`.
    #[serde(default)]
    pub target: TargetSpec,
}

/// The `unit_conversion` runtime (stateless).
pub struct UnitConversion {
    converter: Converter,
}

impl TransformerConfig for UnitConversionConfig {
    const NAME: &'static str = "unit_conversion";
    const DESCRIPTION: &'static str = "rescale (number or expression), rename and retype samples";
    const PARTITION: Partition = Partition::ByResource;
    type Runtime = UnitConversion;

    fn build(self) -> Result<UnitConversion, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let converter = Converter::new(&self.source, &self.target, None, &mut problems);
        if problems.is_empty() {
            Ok(UnitConversion { converter })
        } else {
            Err(problems)
        }
    }
}

impl Transform for UnitConversion {
    fn handle(&mut self, sample: Sample, diag: &mut Diag) -> Option<Sample> {
        if self.converter.source_unit.is_some_and(|u| u != sample.unit) {
            return Some(sample);
        }
        match self.converter.convert(&sample, Volume::Int(1)) {
            Ok(s) => Some(s),
            Err(e) => {
                diag.drop(DropReason::ExpressionError, || {
                    format!(
                        "unit_conversion: dropping {} of {} at {}: target.scale failed: {e}",
                        sample.name,
                        sample.resource_id,
                        sample.timestamp.as_str()
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
    use meterflow_engine::{Sym, Volume};

    #[test]
    fn numeric_scale_multiplies_and_keeps_ints() {
        let mut t = build("unit_conversion", "{target: {scale: 8, name: bits}}");
        let (out, _) = run(
            &mut *t,
            vec![vec![cum("bytes", "r", 5, "2021-01-01T00:00:00")]],
        );
        assert_eq!(out[0].volume, Volume::Int(40));
        assert_eq!(out[0].name.as_str(), "bits");
        assert_eq!(out[0].source.as_str(), "openstack");
        assert_eq!(out[0].message_id, None);
    }

    #[test]
    fn zero_scale_is_unchanged_and_max_caps() {
        let mut t = build("unit_conversion", "{target: {scale: 0, max: 3}}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                gauge("m", "r", 2.0, "2021-01-01T00:00:00"),
                gauge("m", "r", 5.0, "2021-01-01T00:00:00"),
            ]],
        );
        assert_eq!(volumes(&out), [2.0, 3.0]);
    }

    #[test]
    fn other_units_pass_untouched() {
        let mut t = build(
            "unit_conversion",
            "{source: {unit: B}, target: {unit: KB, scale: 'volume / 1024'}}",
        );
        let mut s = gauge("m", "r", 2048.0, "2021-01-01T00:00:00");
        s.unit = Sym::new("MB");
        let (out, _) = run(&mut *t, vec![vec![s.clone()]]);
        assert_eq!(out, [s.clone()]);
        s.unit = Sym::new("B");
        let (out, _) = run(&mut *t, vec![vec![s]]);
        assert_eq!((out[0].volume.as_f64(), out[0].unit.as_str()), (2.0, "KB"));
    }

    #[test]
    fn failing_expression_drops_and_counts() {
        let mut t = build(
            "unit_conversion",
            "{target: {scale: 'volume / resource_metadata.zero'}}",
        );
        let s = gauge("m", "r", 1.0, "2021-01-01T00:00:00").with_metadata(r#"{"zero": 0}"#);
        let (out, diag) = run(&mut *t, vec![vec![s]]);
        assert!(out.is_empty());
        assert_eq!(
            diag.counters
                .dropped(meterflow_engine::metrics::DropReason::ExpressionError),
            1
        );
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("unit_conversion", "{target: {type: counter}}").contains("target.type"));
        assert!(build_err("unit_conversion", "{target: {scale: '1 +'}}").contains("target.scale"));
        assert!(build_err("unit_conversion", "{size: 1}").contains("size"));
    }
}
