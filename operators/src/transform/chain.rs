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

    /// Each stage's saved state ([`Transform::save`]), for a checkpoint.
    pub fn save(&self) -> Vec<Vec<u8>> {
        self.stages.iter().map(|s| s.save()).collect()
    }

    /// Adds the states [`Chain::save`] gave (of this chain or another worker's copy of it).
    /// Fails if they are not this chain's: a different number of stages changes nothing; a
    /// stage whose state does not decode stops the restore there (the stages before it keep
    /// what they took, so the caller should start the chain afresh).
    pub fn restore(&mut self, states: &[Vec<u8>]) -> Result<(), String> {
        if states.len() != self.stages.len() {
            return Err(format!(
                "the saved state has {} transformers, the sink has {}",
                states.len(),
                self.stages.len()
            ));
        }
        for (i, (stage, state)) in self.stages.iter_mut().zip(states).enumerate() {
            if !state.is_empty() {
                stage
                    .restore(state)
                    .map_err(|e| format!("transformer {}: {e}", i + 1))?;
            }
        }
        Ok(())
    }

    /// Sets every stage's span of event time after which a quiet series is forgotten (see
    /// [`Transform::forget_after`]).
    pub fn forget_after(&mut self, span: i64) {
        for stage in &mut self.stages {
            stage.forget_after(span);
        }
    }

    /// Releases the state of series quiet since before `micros`; how many were forgotten.
    pub fn forget_before(&mut self, micros: i64) -> usize {
        self.stages
            .iter_mut()
            .map(|s| s.forget_before(micros))
            .sum()
    }

    /// Keeps only the state of resources `keep` accepts (see [`Transform::retain`]).
    pub fn retain(&mut self, keep: &dyn Fn(meterflow_engine::intern::Sym) -> bool) {
        for stage in &mut self.stages {
            stage.retain(keep);
        }
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

    /// A chain stopped after any notification and restored from its saved state gives what
    /// the uninterrupted chain gives, for every transformer that keeps state.
    #[test]
    fn a_restored_chain_continues_as_if_never_stopped() {
        let chains: [&[(&str, &str)]; 5] = [
            &[("rate_of_change", "{}")],
            &[("delta", "{}")],
            &[("accumulator", "{size: 4}")],
            &[("aggregator", "{size: 5}")],
            &[("arithmetic", "{target: {name: s, expr: '$(cpu) + $(mem)'}}")],
        ];
        let input: Vec<Vec<Sample>> = (0..8)
            .map(|n| {
                (0..3)
                    .flat_map(|r| {
                        let ts = format!("2021-01-01T00:00:{:02}", n * 5 + r);
                        let res = format!("r{r}");
                        [
                            cum("cpu", &res, n * 10 + r, &ts),
                            gauge("mem", &res, (n * r) as f64, &ts),
                        ]
                    })
                    .collect()
            })
            .collect();
        let run = |chain: &mut Chain, batches: &[Vec<Sample>], out: &mut Vec<Sample>| {
            let mut diag = Diag::default();
            for batch in batches {
                for s in batch {
                    chain.handle(s.clone(), out, &mut diag);
                }
                chain.flush(out, &mut diag);
            }
        };
        for specs in chains {
            let specs: Vec<_> = specs.iter().map(|(n, p)| spec(n, p)).collect();
            let mut whole = Vec::new();
            run(&mut build_chain(&specs).unwrap(), &input, &mut whole);
            for cut in 0..=input.len() {
                let mut first = build_chain(&specs).unwrap();
                let mut out = Vec::new();
                run(&mut first, &input[..cut], &mut out);
                let saved = first.save();
                drop(first);
                let mut second = build_chain(&specs).unwrap();
                second.restore(&saved).unwrap();
                run(&mut second, &input[cut..], &mut out);
                let key = |s: &Sample| {
                    (
                        s.name,
                        s.resource_id,
                        s.timestamp.as_str().to_owned(),
                        s.volume.as_f64().to_bits(),
                    )
                };
                assert_eq!(
                    out.iter().map(key).collect::<Vec<_>>(),
                    whole.iter().map(key).collect::<Vec<_>>(),
                    "{} cut after {cut}",
                    specs[0].name
                );
            }
        }
    }

    #[test]
    fn state_of_another_chain_is_refused() {
        let mut chain = build_chain(&[spec("rate_of_change", "{}")]).unwrap();
        assert!(chain.restore(&[]).is_err());
        assert!(chain.restore(&[vec![1, 2, 3]]).is_err());
    }

    #[test]
    fn retain_keeps_a_workers_share() {
        let mut chain = build_chain(&[spec("rate_of_change", "{}")]).unwrap();
        let mut out = Vec::new();
        let mut diag = Diag::default();
        for r in ["a", "b"] {
            chain.handle(cum("cpu", r, 1, "2021-01-01T00:00:00"), &mut out, &mut diag);
        }
        chain.retain(&|r| r.as_str() == "a");
        for r in ["a", "b"] {
            chain.handle(cum("cpu", r, 2, "2021-01-01T00:00:10"), &mut out, &mut diag);
        }
        assert_eq!(out.len(), 1, "only a's predecessor was kept");
        assert_eq!(out[0].resource_id.as_str(), "a");
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
