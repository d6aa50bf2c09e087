//! Ceilometer's sample transformers and the chain that runs them.
//!
//! A transformer is written once as a typed config ([`TransformerConfig`], serde, with its
//! defaults) that builds a runtime ([`Transform`]); [`TRANSFORMERS`] is the explicit registry
//! that `meterflow list` prints and the planner looks names up in. Adding a transformer is one
//! file and one line in that list.

mod accumulator;
mod aggregator;
mod arithmetic;
mod chain;
mod convert;
mod delta;
mod rate_of_change;
mod series;
mod unit_conversion;

use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::Diag;
use meterflow_engine::Sample;
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use accumulator::{Accumulator, AccumulatorConfig};
pub use aggregator::{Aggregator, AggregatorConfig};
pub use arithmetic::{Arithmetic, ArithmeticConfig};
pub use chain::{Chain, StageState};
pub use convert::{MapSpec, Scale, SourceSpec, TargetSpec};
pub use delta::{Delta, DeltaConfig};
pub use rate_of_change::{RateOfChange, RateOfChangeConfig};
pub use unit_conversion::{UnitConversion, UnitConversionConfig};

/// A transformer's runtime: takes samples one at a time, releases more at flush.
pub trait Transform: Send {
    /// Handles one sample; returns the sample to pass on, or `None` to stop it here.
    fn handle(&mut self, sample: Sample, diag: &mut Diag) -> Option<Sample>;

    /// Called at the end of every batch (notification); appends what the transformer releases.
    fn flush(&mut self, out: &mut Vec<Sample>, diag: &mut Diag) {
        let _ = (out, diag);
    }

    /// How many samples the transformer holds, not yet released.
    fn held(&self) -> usize {
        0
    }

    /// What the transformer keeps between notifications (its caches and held samples), for a
    /// checkpoint: opaque bytes that [`Transform::restore`] takes back. Empty when stateless.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    /// The state for checkpoint: `(true, all of it)` with `full` or for a transformer that
    /// cannot tell what changed (the default: [`Transform::save`]), else `(false, what
    /// changed since the last call)`, which [`Transform::restore`] applies on top of what the
    /// calls before it gave.
    fn save_checkpoint(&mut self, full: bool) -> (bool, Vec<u8>) {
        let _ = full;
        (true, self.save())
    }

    /// Adds a state [`Transform::save`] gave (by this worker's copy of the transformer or by
    /// another's: a restart may have another number of workers).
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// Forgets what it remembers of a series once its newest sample is more than `span`
    /// microseconds of event time older than a new sample of it (the series then starts
    /// afresh, as a first sample), and lets [`Transform::forget_before`] release such state.
    /// Without a span (the default) state lives as long as the run, as in Ceilometer.
    fn forget_after(&mut self, span: i64) {
        let _ = span;
    }

    /// Releases what it remembers of series whose newest sample is older than `micros`
    /// (event time); returns how many series it forgot. Samples held for release are never
    /// dropped.
    fn forget_before(&mut self, micros: i64) -> usize {
        let _ = micros;
        0
    }

    /// Forgets the state of every resource `keep` rejects: after restoring every worker's
    /// state, a worker of a sink spread by resource keeps only its share.
    fn retain(&mut self, keep: &dyn Fn(Sym) -> bool) {
        let _ = keep;
    }
}

/// Encodes a transformer's state for [`Transform::save`].
fn encode_state<T: serde::Serialize>(state: &T) -> Vec<u8> {
    bincode::serialize(state).expect("transformer state serialises")
}

/// Decodes what [`encode_state`] wrote; `name` says whose state it is in the error.
fn decode_state<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| format!("{name}: the saved state does not decode: {e}"))
}

/// How a transformer's state is keyed, which decides how its sink can be parallelised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// State is per (resource, meter) or absent: samples can be spread over workers by resource.
    ByResource,
    /// State spans resources (a size over all samples, a shared clock): the sink runs on one
    /// worker so its output is exactly Ceilometer's.
    Global,
}

/// One problem in a transformer's parameters, at a path relative to `parameters`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path under `parameters` (empty for the block itself).
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The typed side of a transformer: its parameters, as written in `pipeline.yaml`.
pub trait TransformerConfig: DeserializeOwned {
    /// The name used in `pipeline.yaml`.
    const NAME: &'static str;
    /// One line for `meterflow list`.
    const DESCRIPTION: &'static str;
    /// How its state is keyed.
    const PARTITION: Partition;
    /// The runtime it builds.
    type Runtime: Transform + 'static;
    /// Checks the parameters and builds the runtime.
    fn build(self) -> Result<Self::Runtime, Vec<ConfigProblem>>;
}

/// Builds a transformer runtime from its `parameters`, or says what is wrong with them.
pub type BuildFn = fn(&serde_yaml::Value) -> Result<Box<dyn Transform>, Vec<ConfigProblem>>;

/// A registry entry: a transformer by name, with an erased builder.
#[derive(Clone, Copy)]
pub struct TransformerKind {
    /// The name used in `pipeline.yaml`.
    pub name: &'static str,
    /// One line for `meterflow list`.
    pub description: &'static str,
    /// How its state is keyed.
    pub partition: Partition,
    build: BuildFn,
}

impl TransformerKind {
    /// Builds a runtime from `parameters` (a YAML mapping or null).
    pub fn build(
        &self,
        parameters: &serde_yaml::Value,
    ) -> Result<Box<dyn Transform>, Vec<ConfigProblem>> {
        (self.build)(parameters)
    }
}

const fn kind<C: TransformerConfig>() -> TransformerKind {
    TransformerKind {
        name: C::NAME,
        description: C::DESCRIPTION,
        partition: C::PARTITION,
        build: build_erased::<C>,
    }
}

fn build_erased<C: TransformerConfig>(
    parameters: &serde_yaml::Value,
) -> Result<Box<dyn Transform>, Vec<ConfigProblem>> {
    let empty = serde_yaml::Value::Mapping(Default::default());
    let parameters = if parameters.is_null() {
        &empty
    } else {
        parameters
    };
    let config: C = serde_path_to_error::deserialize(parameters.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ConfigProblem::new(path, e.into_inner().to_string())]
    })?;
    Ok(Box::new(config.build()?))
}

/// Every transformer meterflow knows, by name.
pub const TRANSFORMERS: &[TransformerKind] = &[
    kind::<AccumulatorConfig>(),
    kind::<AggregatorConfig>(),
    kind::<ArithmeticConfig>(),
    kind::<DeltaConfig>(),
    kind::<RateOfChangeConfig>(),
    kind::<UnitConversionConfig>(),
];

/// Looks a transformer up by name.
pub fn find(name: &str) -> Option<&'static TransformerKind> {
    TRANSFORMERS.iter().find(|k| k.name == name)
}

/// The known names, comma-separated, for error messages.
pub fn known_names() -> String {
    TRANSFORMERS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A transformer as named in a sink: `{name, parameters}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSpec {
    /// The registry name.
    pub name: String,
    /// Its parameters (null means none).
    #[serde(default)]
    pub parameters: serde_yaml::Value,
}

/// A problem building a chain: which transformer (by position) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainProblem {
    /// Position of the transformer in the sink's list.
    pub index: usize,
    /// Path relative to the transformer entry (`name`, `parameters.target.scale`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Builds a chain from specs, reporting every problem of every transformer.
pub fn build_chain(specs: &[TransformerSpec]) -> Result<Chain, Vec<ChainProblem>> {
    let mut stages = Vec::new();
    let mut problems = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let Some(kind) = find(&spec.name) else {
            problems.push(ChainProblem {
                index,
                path: "name".into(),
                message: format!(
                    "No transformer named {} loaded; known transformers: {}",
                    spec.name,
                    known_names()
                ),
            });
            continue;
        };
        match kind.build(&spec.parameters) {
            Ok(stage) => stages.push(stage),
            Err(ps) => problems.extend(ps.into_iter().map(|p| ChainProblem {
                index,
                path: if p.path.is_empty() {
                    "parameters".into()
                } else {
                    format!("parameters.{}", p.path)
                },
                message: p.message,
            })),
        }
    }
    if problems.is_empty() {
        Ok(Chain::new(stages))
    } else {
        Err(problems)
    }
}

/// The partitioning a chain of these transformers allows (global if any one is global).
pub fn chain_partition(specs: &[TransformerSpec]) -> Partition {
    if specs
        .iter()
        .any(|s| find(&s.name).is_some_and(|k| k.partition == Partition::Global))
    {
        Partition::Global
    } else {
        Partition::ByResource
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the transformer unit tests.
    use meterflow_engine::metrics::Diag;
    use meterflow_engine::{Sample, SampleType, Volume};

    use super::{find, Transform};

    pub fn build(name: &str, yaml: &str) -> Box<dyn Transform> {
        let params: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        find(name)
            .unwrap()
            .build(&params)
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    pub fn build_err(name: &str, yaml: &str) -> String {
        let params: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        match find(name).unwrap().build(&params) {
            Ok(_) => panic!("{yaml} accepted"),
            Err(e) => format!("{e:?}"),
        }
    }

    pub fn sample(name: &str, res: &str, kind: SampleType, volume: Volume, ts: &str) -> Sample {
        Sample::gauge(name, res, 0.0, ts)
            .with_kind(kind)
            .with_volume(volume)
    }

    pub fn cum(name: &str, res: &str, v: i64, ts: &str) -> Sample {
        sample(name, res, SampleType::Cumulative, Volume::Int(v), ts)
    }

    pub fn gauge(name: &str, res: &str, v: f64, ts: &str) -> Sample {
        sample(name, res, SampleType::Gauge, Volume::Float(v), ts)
    }

    /// Runs batches through one transformer, flushing after each, returning all output.
    pub fn run(t: &mut dyn Transform, batches: Vec<Vec<Sample>>) -> (Vec<Sample>, Diag) {
        let mut diag = Diag::default();
        let mut out = Vec::new();
        for batch in batches {
            for s in batch {
                out.extend(t.handle(s, &mut diag));
            }
            t.flush(&mut out, &mut diag);
        }
        (out, diag)
    }

    pub fn volumes(out: &[Sample]) -> Vec<f64> {
        out.iter().map(|s| s.volume.as_f64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_defaults_build() {
        let mut names: Vec<_> = TRANSFORMERS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TRANSFORMERS.len());
        for k in TRANSFORMERS {
            let params = if k.name == "arithmetic" {
                serde_yaml::from_str("{target: {name: x, expr: '$(a) + $(b)'}}").unwrap()
            } else {
                serde_yaml::Value::Null
            };
            assert!(
                k.build(&params).is_ok(),
                "{} does not build with defaults",
                k.name
            );
        }
    }

    #[test]
    fn unknown_transformer_lists_the_known_ones() {
        let spec = TransformerSpec {
            name: "rate_of_chnage".into(),
            parameters: serde_yaml::Value::Null,
        };
        let problems = build_chain(&[spec]).err().unwrap();
        assert_eq!(problems[0].path, "name");
        assert!(problems[0].message.contains("rate_of_change"));
    }

    #[test]
    fn bad_parameters_name_their_path() {
        let spec = TransformerSpec {
            name: "unit_conversion".into(),
            parameters: serde_yaml::from_str("{target: {scael: 2}}").unwrap(),
        };
        let problems = build_chain(&[spec]).err().unwrap();
        assert_eq!(problems[0].path, "parameters.target.scael");
        assert!(
            problems[0].message.contains("scael"),
            "{}",
            problems[0].message
        );
    }
}
