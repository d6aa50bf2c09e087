//! A sink's transformers in order, with Ceilometer's sink semantics.
//!
//! A sample enters transformer 0; what it returns enters transformer 1, and so on; `None`
//! stops it. At the end of each batch (notification) the chain is flushed: transformer i's
//! flush output passes through transformers i+1.. (so cascades complete in one flush) and what
//! leaves the last transformer goes to the publishers.

use meterflow_engine::metrics::Diag;
use meterflow_engine::Sample;

use super::Transform;

/// A sink's transformer chain.
pub struct Chain {
    stages: Vec<Box<dyn Transform>>,
    scratch: Vec<Sample>,
}

impl Chain {
    /// A chain of these stages, applied in order.
    pub fn new(stages: Vec<Box<dyn Transform>>) -> Chain {
        Chain {
            stages,
            scratch: Vec::new(),
        }
    }

    /// Handles one sample; what leaves the chain is appended to `out`.
    pub fn handle(&mut self, sample: Sample, out: &mut Vec<Sample>, diag: &mut Diag) {
        self.push_from(0, sample, out, diag);
    }

    fn push_from(&mut self, first: usize, sample: Sample, out: &mut Vec<Sample>, diag: &mut Diag) {
        let mut sample = sample;
        for stage in &mut self.stages[first..] {
            match stage.handle(sample, diag) {
                Some(next) => sample = next,
                None => return,
            }
        }
        out.push(sample);
    }

    /// Flushes every transformer in order (the end of a batch); releases go to `out`.
    pub fn flush(&mut self, out: &mut Vec<Sample>, diag: &mut Diag) {
        for i in 0..self.stages.len() {
            let mut released = std::mem::take(&mut self.scratch);
            self.stages[i].flush(&mut released, diag);
            for sample in released.drain(..) {
                self.push_from(i + 1, sample, out, diag);
            }
            self.scratch = released;
        }
    }

    /// Samples held by the chain's transformers, not yet released.
    pub fn held(&self) -> usize {
        self.stages.iter().map(|s| s.held()).sum()
    }

    /// Whether the chain has no transformers (samples pass straight to the publishers).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::transform::{build_chain, TransformerSpec};

    fn spec(name: &str, yaml: &str) -> TransformerSpec {
        TransformerSpec {
            name: name.into(),
            parameters: serde_yaml::from_str(yaml).unwrap(),
        }
    }

    #[test]
    fn flush_output_cascades_through_later_transformers() {
        // accumulator(size 2) releases at flush; its release must pass unit_conversion too.
        let mut chain = build_chain(&[
            spec("accumulator", "{size: 2}"),
            spec("unit_conversion", "{target: {scale: 2}}"),
        ])
        .unwrap();
        let mut out = Vec::new();
        let mut diag = Diag::default();
        chain.handle(
            gauge("m", "r", 1.0, "2021-01-01T00:00:00"),
            &mut out,
            &mut diag,
        );
        chain.flush(&mut out, &mut diag);
        assert!(out.is_empty());
        assert_eq!(chain.held(), 1);
        chain.handle(
            gauge("m", "r", 3.0, "2021-01-01T00:00:01"),
            &mut out,
            &mut diag,
        );
        chain.flush(&mut out, &mut diag);
        assert_eq!(volumes(&out), [2.0, 6.0]);
        assert_eq!(chain.held(), 0);
    }

    #[test]
    fn empty_chain_passes_samples_unchanged() {
        let mut chain = build_chain(&[]).unwrap();
        assert!(chain.is_empty());
        let mut out = Vec::new();
        let s = gauge("m", "r", 1.0, "2021-01-01T00:00:00");
        chain.handle(s.clone(), &mut out, &mut Diag::default());
        assert_eq!(out, [s]);
    }
}
