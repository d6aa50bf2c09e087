//! A sink's transformers in order, with Ceilometer's sink semantics.
//!
//! A sample enters transformer 0; what it returns enters transformer 1, and so on; `None`
//! stops it. At the end of each batch (notification) the chain is flushed: transformer i's
//! flush output passes through transformers i+1.. (so cascades complete in one flush) and what
//! leaves the last transformer goes to the publishers.

use meterflow_engine::metrics::Diag;
use meterflow_engine::Sample;

use super::Transform;

/// One transformer's state in a checkpoint: all of it (`whole`), or what changed since the
/// checkpoint before.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageState {
    /// The whole state, not a change on top of the checkpoint before.
    pub whole: bool,
    /// The transformer's bytes ([`Transform::save_checkpoint`]).
    pub bytes: Vec<u8>,
}

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

    /// Each stage's state for a checkpoint (see [`Transform::save_checkpoint`]): all of it
    /// with `full`, else what changed since the last call where a stage can tell.
    pub fn save_checkpoint(&mut self, full: bool) -> Vec<StageState> {
        self.stages
            .iter_mut()
            .map(|s| {
                let (whole, bytes) = s.save_checkpoint(full);
                StageState { whole, bytes }
            })
            .collect()
    }

    /// Restores a run of checkpoints, oldest first, each given as the parts of the workers
    /// that saved it (this chain or other workers' copies of it; see
    /// [`Chain::save_checkpoint`]): each stage takes the parts of the newest checkpoint where
    /// its state is whole, then what changed in each later one. Fails if they are not this
    /// chain's: a different number of stages changes nothing; a stage whose state does not
    /// decode stops the restore there (the stages before it keep what they took, so the
    /// caller should start the chain afresh).
    pub fn restore_checkpoints(
        &mut self,
        checkpoints: &[Vec<&[StageState]>],
    ) -> Result<(), String> {
        for parts in checkpoints.iter().flatten() {
            if parts.len() != self.stages.len() {
                return Err(format!(
                    "the saved state has {} transformers, the sink has {}",
                    parts.len(),
                    self.stages.len()
                ));
            }
        }
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let from = checkpoints
                .iter()
                .rposition(|parts| parts.iter().any(|p| p[i].whole))
                .unwrap_or(0);
            for parts in &checkpoints[from..] {
                for state in parts.iter().map(|p| &p[i]).filter(|s| !s.bytes.is_empty()) {
                    stage
                        .restore(&state.bytes)
                        .map_err(|e| format!("transformer {}: {e}", i + 1))?;
                }
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
                let saved = first.save_checkpoint(true);
                drop(first);
                let mut second = build_chain(&specs).unwrap();
                second.restore_checkpoints(&[vec![&saved]]).unwrap();
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

    /// Checkpoints of what changed, restored in order after the whole one they build on,
    /// give the state the chain had: for the transformers that save changes (with series
    /// forgotten in between) and for those that save their whole state each time.
    #[test]
    fn checkpoints_of_changes_restore_the_state() {
        let chains: [&[(&str, &str)]; 4] = [
            &[("rate_of_change", "{}")],
            &[("delta", "{}")],
            &[("accumulator", "{size: 4}")],
            &[("rate_of_change", "{}"), ("accumulator", "{size: 3}")],
        ];
        // Resource r reports in batches where n % (r + 1) == 0: some go quiet, come back.
        let input: Vec<Vec<Sample>> = (0..12)
            .map(|n| {
                (0..4)
                    .filter(|r| n % (r + 1) == 0)
                    .map(|r| {
                        let ts = format!("2021-01-01T00:{n:02}:{r:02}");
                        cum("cpu", &format!("r{r}"), n * 10 + r, &ts)
                    })
                    .collect()
            })
            .collect();
        let key = |s: &Sample| (s.resource_id, s.timestamp.as_str().to_owned());
        for specs in chains {
            let specs: Vec<_> = specs.iter().map(|(n, p)| spec(n, p)).collect();
            let mut diag = Diag::default();
            let mut original = build_chain(&specs).unwrap();
            original.forget_after(600_000_000);
            let mut saves: Vec<Vec<StageState>> = Vec::new();
            for (n, batch) in input.iter().enumerate() {
                let mut out = Vec::new();
                for s in batch {
                    original.handle(s.clone(), &mut out, &mut diag);
                }
                original.flush(&mut out, &mut diag);
                if n == 6 {
                    // Releases r3 (quiet since 00:04:03; back at 00:08:03, within the span
                    // of 10 minutes, so only the release makes it start afresh).
                    let forgotten = original.forget_before(1_609_459_500_000_000);
                    let series = specs[0].name != "accumulator";
                    assert_eq!(forgotten, usize::from(series), "{}", specs[0].name);
                }
                saves.push(original.save_checkpoint(n == 0));
                let mut restored = build_chain(&specs).unwrap();
                restored.forget_after(600_000_000);
                let run: Vec<Vec<&[StageState]>> =
                    saves.iter().map(|s| vec![s.as_slice()]).collect();
                restored.restore_checkpoints(&run).unwrap();
                // Both go on alike over the rest, beside a twin that never stopped: the
                // same batches and release up to here.
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let mut twin = build_chain(&specs).unwrap();
                twin.forget_after(600_000_000);
                for (m, batch) in input[..=n].iter().enumerate() {
                    for s in batch {
                        twin.handle(s.clone(), &mut a, &mut diag);
                    }
                    twin.flush(&mut a, &mut diag);
                    if m == 6 {
                        twin.forget_before(1_609_459_500_000_000);
                    }
                }
                a.clear();
                for batch in &input[n + 1..] {
                    for s in batch {
                        twin.handle(s.clone(), &mut a, &mut diag);
                        restored.handle(s.clone(), &mut b, &mut diag);
                    }
                    twin.flush(&mut a, &mut diag);
                    restored.flush(&mut b, &mut diag);
                }
                assert_eq!(
                    b.iter().map(key).collect::<Vec<_>>(),
                    a.iter().map(key).collect::<Vec<_>>(),
                    "{} after batch {n}",
                    specs[0].name
                );
            }
        }
    }

    #[test]
    fn state_of_another_chain_is_refused() {
        let mut chain = build_chain(&[spec("rate_of_change", "{}")]).unwrap();
        assert!(chain.restore_checkpoints(&[vec![&[]]]).is_err());
        let garbage = StageState {
            whole: true,
            bytes: vec![1, 2, 3],
        };
        assert!(chain.restore_checkpoints(&[vec![&[garbage]]]).is_err());
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
