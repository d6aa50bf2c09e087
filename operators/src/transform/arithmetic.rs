//! `arithmetic`: computes a new meter from several meters of the same resource.
//!
//! `target.expr` refers to meters as `$(meter.name)` (their volume) or
//! `$(meter.name).resource_metadata.x` (another field), e.g. `100 * $(memory.usage) / $(memory)`.
//! The latest sample of each referenced meter is cached per resource; every input sample is
//! swallowed. At each flush, every resource that has all referenced meters yields one sample:
//! name/unit/type from `target` or else from the first referenced meter, volume = the
//! expression as a float, user/project/metadata from the first referenced meter's sample,
//! timestamp = that of the last sample the transformer handled (of any meter); then that
//! resource's cache is cleared. Division by zero or a NaN result drops the output with a
//! warning; partial caches wait for later batches.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample};
//! use meterflow_operators::transform::{find, Transform};
//! let params = serde_yaml::from_str("{target: {name: memory_util, unit: '%', expr: '100 * $(memory.usage) / $(memory)'}}").unwrap();
//! let mut t = find("arithmetic").unwrap().build(&params).unwrap();
//! let (mut out, mut d) = (Vec::new(), Diag::default());
//! t.handle(Sample::gauge("memory", "vm-1", 2048.0, "2021-01-01T00:00:00"), &mut d);
//! t.flush(&mut out, &mut d);
//! assert!(out.is_empty());
//! t.handle(Sample::gauge("memory.usage", "vm-1", 512.0, "2021-01-01T00:01:00"), &mut d);
//! t.flush(&mut out, &mut d);
//! assert_eq!((out[0].name.as_str(), out[0].volume.as_f64()), ("memory_util", 25.0));
//! assert_eq!(out[0].timestamp.as_str(), "2021-01-01T00:01:00");
//! ```

use indexmap::IndexMap;
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::model::{Timestamp, DEFAULT_SAMPLE_SOURCE};
use meterflow_engine::{Sample, SampleType, Volume};
use serde::Deserialize;

use super::{ConfigProblem, Partition, Transform, TransformerConfig};
use crate::expr::{sample_attribute, EvalError, Expr, Scope, Value};

/// The `target` block of `arithmetic`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticTarget {
    /// Output meter name (default: the first referenced meter's).
    #[serde(default)]
    pub name: Option<String>,
    /// Output unit (default: the first referenced meter's).
    #[serde(default)]
    pub unit: Option<String>,
    /// Output type (default: the first referenced meter's).
    #[serde(default, rename = "type")]
    pub kind: Option<SampleType>,
    /// The expression over `$(meter)` references.
    pub expr: String,
}

/// Parameters of `arithmetic`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArithmeticConfig {
    /// `name`, `unit`, `type`, `expr`.
    pub target: ArithmeticTarget,
}

/// The `arithmetic` runtime.
pub struct Arithmetic {
    expr: Expr,
    meters: Vec<Sym>,
    name: Option<Sym>,
    unit: Option<Sym>,
    kind: Option<SampleType>,
    cache: IndexMap<Sym, Slots>,
    latest: Option<Timestamp>,
    source: Sym,
    /// Event time (µs) after which a resource's cached samples are forgotten.
    forget_after: Option<i64>,
}

impl TransformerConfig for ArithmeticConfig {
    const NAME: &'static str = "arithmetic";
    const DESCRIPTION: &'static str =
        "compute a meter from several meters of a resource ($(memory.usage) / $(memory))";
    const PARTITION: Partition = Partition::Global;
    type Runtime = Arithmetic;

    fn build(self) -> Result<Arithmetic, Vec<ConfigProblem>> {
        let expr = Expr::parse(&self.target.expr, true)
            .map_err(|e| vec![ConfigProblem::new("target.expr", e.to_string())])?;
        if expr.meters().is_empty() {
            tracing::warn!(
                "arithmetic: target.expr {:?} refers to no meter ($(name)); like Ceilometer, the transformer will swallow every sample and emit nothing",
                self.target.expr
            );
        }
        Ok(Arithmetic {
            meters: expr.meters().iter().map(|m| Sym::new(m)).collect(),
            expr,
            name: self.target.name.as_deref().map(Sym::new),
            unit: self.target.unit.as_deref().map(Sym::new),
            kind: self.target.kind,
            cache: IndexMap::new(),
            latest: None,
            source: Sym::new(DEFAULT_SAMPLE_SOURCE),
            forget_after: None,
        })
    }
}

/// A resource's latest sample of each meter the expression names.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Slots {
    samples: Vec<Option<Sample>>,
    /// The newest event time (µs) among them, kept only when quiet resources are forgotten
    /// (`None`: not known, never released).
    newest: Option<i64>,
}

/// What [`Arithmetic`] saves: each resource's cached samples, and the newest timestamp.
type SavedState = (Vec<(Sym, Slots)>, Option<Timestamp>);

struct Cached<'a>(&'a [Option<Sample>]);

impl Scope for Cached<'_> {
    fn name<'s>(&'s self, path: &[String]) -> Result<Value<'s>, EvalError> {
        Err(EvalError(format!(
            "name {:?} is not defined; refer to meters as $(meter.name)",
            path.join(".")
        )))
    }

    fn meter<'s>(&'s self, meter: usize, path: &[String]) -> Result<Value<'s>, EvalError> {
        let sample = self.0[meter]
            .as_ref()
            .ok_or_else(|| EvalError("meter missing".into()))?;
        if path.is_empty() {
            sample_attribute(sample, &["volume".to_owned()])
        } else {
            sample_attribute(sample, path)
        }
    }
}

impl Transform for Arithmetic {
    fn handle(&mut self, s: Sample, _: &mut Diag) -> Option<Sample> {
        self.latest = Some(s.timestamp.detached());
        if let Some(slot) = self.meters.iter().position(|m| *m == s.name) {
            let slots = self.cache.entry(s.resource_id).or_insert_with(|| Slots {
                samples: vec![None; self.meters.len()],
                newest: None,
            });
            // A resource quiet for longer than the span starts afresh.
            if let (Some(span), Some(now)) = (self.forget_after, s.timestamp.micros()) {
                if slots.newest.is_some_and(|t| now.saturating_sub(t) > span) {
                    slots.samples.iter_mut().for_each(|slot| *slot = None);
                    slots.newest = None;
                }
                slots.newest = Some(slots.newest.map_or(now, |t| t.max(now)));
            }
            slots.samples[slot] = Some(s.detached());
        }
        None
    }

    fn flush(&mut self, out: &mut Vec<Sample>, diag: &mut Diag) {
        let Some(latest) = &self.latest else { return };
        let expr = &self.expr;
        let (name, unit, kind, source) = (self.name, self.unit, self.kind, self.source);
        self.cache.retain(|resource, slots| {
            let slots = &slots.samples;
            if slots.iter().any(Option::is_none) {
                return true;
            }
            let result = expr.eval(&Cached(slots)).and_then(|v| v.to_volume());
            let reference = slots[0].as_ref().expect("complete");
            match result {
                Ok(v) if v.as_f64().is_finite() => out.push(Sample {
                    name: name.unwrap_or(reference.name),
                    unit: unit.unwrap_or(reference.unit),
                    kind: kind.unwrap_or(reference.kind),
                    volume: Volume::Float(v.as_f64()),
                    timestamp: latest.clone(),
                    source,
                    message_id: None,
                    monotonic_time: None,
                    ..reference.clone()
                }),
                Ok(v) => diag.drop(DropReason::ExpressionError, || {
                    format!("arithmetic: {expr:?} for resource {resource} gave {}; no sample emitted", v.as_f64())
                }),
                Err(e) => diag.drop(DropReason::ExpressionError, || {
                    format!("arithmetic: {expr:?} for resource {resource} failed: {e}; no sample emitted")
                }),
            }
            false
        });
    }

    fn forget_after(&mut self, span: i64) {
        self.forget_after = Some(span);
    }

    fn forget_before(&mut self, micros: i64) -> usize {
        let before = self.cache.len();
        self.cache
            .retain(|_, slots| slots.newest.is_none_or(|t| t >= micros));
        before - self.cache.len()
    }

    fn save(&self) -> Vec<u8> {
        let cache: Vec<_> = self.cache.iter().collect();
        super::encode_state(&(cache, &self.latest))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let (cache, latest): SavedState = super::decode_state(ArithmeticConfig::NAME, state)?;
        if cache
            .iter()
            .any(|(_, slots)| slots.samples.len() != self.meters.len())
        {
            return Err(format!(
                "arithmetic: the saved state is for another expression ({} meters expected)",
                self.meters.len()
            ));
        }
        self.cache.extend(cache);
        self.latest = self.latest.take().or(latest);
        Ok(())
    }

    fn held(&self) -> usize {
        self.cache
            .values()
            .map(|s| s.samples.iter().flatten().count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use meterflow_engine::metrics::DropReason;

    const EXPR: &str =
        "{target: {name: util, unit: '%', type: gauge, expr: '100 * $(used) / $(total)'}}";

    #[test]
    fn a_resource_quiet_longer_than_the_span_starts_afresh() {
        let mut t = build("arithmetic", EXPR);
        t.forget_after(60_000_000);
        let (out, _) = run(
            &mut *t,
            vec![
                vec![gauge("total", "a", 200.0, "2021-01-01T00:00:00")],
                // An hour later: the old total is forgotten, so no result yet.
                vec![gauge("used", "a", 50.0, "2021-01-01T01:00:00")],
                vec![gauge("total", "a", 100.0, "2021-01-01T01:00:30")],
            ],
        );
        assert_eq!(volumes(&out), [50.0]);
        let (_, _) = run(
            &mut *t,
            vec![vec![gauge("used", "b", 1.0, "2021-01-01T02:00:00")]],
        );
        assert_eq!(
            t.forget_before(i64::MAX),
            1,
            "b's partial cache is released"
        );
    }

    #[test]
    fn waits_for_all_meters_then_clears() {
        let mut t = build("arithmetic", EXPR);
        let (out, _) = run(
            &mut *t,
            vec![
                vec![
                    gauge("total", "a", 200.0, "2021-01-01T00:00:00"),
                    gauge("used", "b", 1.0, "2021-01-01T00:00:01"),
                ],
                vec![
                    gauge("used", "a", 50.0, "2021-01-01T00:01:00"),
                    gauge("other", "c", 1.0, "2021-01-01T00:01:05"),
                ],
                vec![gauge("used", "a", 60.0, "2021-01-01T00:02:00")],
            ],
        );
        assert_eq!(volumes(&out), [25.0]);
        assert_eq!(out[0].timestamp.as_str(), "2021-01-01T00:01:05");
        assert_eq!(out[0].name.as_str(), "util");
        assert_eq!(t.held(), 2); // b's used, a's new used
    }

    #[test]
    fn division_by_zero_drops_and_clears() {
        let mut t = build("arithmetic", EXPR);
        let (out, diag) = run(
            &mut *t,
            vec![vec![
                gauge("total", "a", 0.0, "2021-01-01T00:00:00"),
                gauge("used", "a", 5.0, "2021-01-01T00:00:00"),
            ]],
        );
        assert!(out.is_empty());
        assert_eq!(diag.counters.dropped(DropReason::ExpressionError), 1);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn attributes_of_referenced_samples() {
        let mut t = build(
            "arithmetic",
            "{target: {expr: '$(m) * $(m).resource_metadata.factor'}}",
        );
        let s = gauge("m", "a", 3.0, "2021-01-01T00:00:00").with_metadata(r#"{"factor": 4}"#);
        let (out, _) = run(&mut *t, vec![vec![s]]);
        assert_eq!(volumes(&out), [12.0]);
        assert_eq!(out[0].name.as_str(), "m");
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("arithmetic", "{target: {expr: '$(a) +'}}").contains("target.expr"));
        assert!(build_err("arithmetic", "{target: {name: x}}").contains("expr"));
        assert!(build_err("arithmetic", "{}").contains("target"));
    }
}
