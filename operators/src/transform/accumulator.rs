//! `accumulator`: holds samples and releases them all, unchanged, once it holds `size`.
//!
//! The check happens at each flush (the end of a notification), so a release may exceed `size`.
//! `size` below 1 passes every sample straight through.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample};
//! use meterflow_operators::transform::{find, Transform};
//! let mut t = find("accumulator").unwrap().build(&serde_yaml::from_str("{size: 3}").unwrap()).unwrap();
//! let (mut out, mut d) = (Vec::new(), Diag::default());
//! for batch in [1, 1, 2] {
//!     for _ in 0..batch {
//!         assert!(t.handle(Sample::gauge("m", "r", 1.0, "2021-01-01T00:00:00"), &mut d).is_none());
//!     }
//!     t.flush(&mut out, &mut d);
//! }
//! assert_eq!(out.len(), 4); // nothing after batches 1 and 2, all four after batch 3
//! ```

use meterflow_engine::metrics::Diag;
use meterflow_engine::Sample;
use serde::Deserialize;

use super::{ConfigProblem, Partition, Transform, TransformerConfig};

/// Parameters of `accumulator`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccumulatorConfig {
    /// Release when at least this many samples are held (default 1; below 1: pass through).
    #[serde(default = "default_size")]
    pub size: f64,
}

fn default_size() -> f64 {
    1.0
}

/// The `accumulator` runtime.
pub struct Accumulator {
    size: f64,
    held: Vec<Sample>,
}

impl TransformerConfig for AccumulatorConfig {
    const NAME: &'static str = "accumulator";
    const DESCRIPTION: &'static str = "hold samples, release all unchanged once `size` are held";
    const PARTITION: Partition = Partition::Global;
    type Runtime = Accumulator;

    fn build(self) -> Result<Accumulator, Vec<ConfigProblem>> {
        if !self.size.is_finite() {
            return Err(vec![ConfigProblem::new("size", "must be a finite number")]);
        }
        Ok(Accumulator {
            size: self.size,
            held: Vec::new(),
        })
    }
}

impl Transform for Accumulator {
    fn handle(&mut self, sample: Sample, _: &mut Diag) -> Option<Sample> {
        if self.size >= 1.0 {
            self.held.push(sample);
            None
        } else {
            Some(sample)
        }
    }

    fn flush(&mut self, out: &mut Vec<Sample>, _: &mut Diag) {
        if self.size >= 1.0 && self.held.len() as f64 >= self.size {
            out.append(&mut self.held);
        }
    }

    fn held(&self) -> usize {
        self.held.len()
    }

    fn save(&self) -> Vec<u8> {
        super::encode_state(&self.held)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let held: Vec<Sample> = super::decode_state(AccumulatorConfig::NAME, state)?;
        self.held.extend(held);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn releases_in_arrival_order_at_threshold() {
        let mut t = build("accumulator", "{size: 2}");
        let s = |v| gauge("m", "r", v, "2021-01-01T00:00:00");
        let (out, _) = run(
            &mut *t,
            vec![vec![s(1.0)], vec![s(2.0), s(3.0)], vec![s(4.0)]],
        );
        assert_eq!(volumes(&out), [1.0, 2.0, 3.0]);
        assert_eq!(t.held(), 1);
    }

    #[test]
    fn size_zero_passes_through() {
        let mut t = build("accumulator", "{size: 0}");
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("m", "r", 1.0, "2021-01-01T00:00:00")]],
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("accumulator", "{size: many}").contains("size"));
        assert!(build_err("accumulator", "{max_time: 3}").contains("max_time"));
    }
}
