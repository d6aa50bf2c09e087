//! What `unit_conversion`, `rate_of_change`, `delta` and `aggregator` share: the `source` and
//! `target` blocks (renaming, regex name/unit mapping, scaling, a cap) and how they build a new
//! sample (Ceilometer's `ScalingTransformer._convert`).

use meterflow_engine::intern::Sym;
use meterflow_engine::model::{RawJson, DEFAULT_SAMPLE_SOURCE};
use meterflow_engine::{Sample, SampleType, Volume};
use regex::Regex;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::ConfigProblem;
use crate::expr::{EvalError, Expr};

/// The `source` block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Only samples of this unit are converted (`unit_conversion`); others pass unchanged.
    #[serde(default)]
    pub unit: Option<String>,
    /// Regexes over the input name/unit, used with `target.map_to`.
    #[serde(default)]
    pub map_from: Option<MapSpec>,
}

/// A `map_from` / `map_to` block: a regex (from) or a replacement template (to) per field.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// For the meter name.
    #[serde(default)]
    pub name: Option<String>,
    /// For the unit.
    #[serde(default)]
    pub unit: Option<String>,
}

/// A `scale`: a number multiplies the volume; a string is an expression over the sample
/// whose value replaces it.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Scale {
    /// An integer factor.
    Int(i64),
    /// A float factor.
    Float(f64),
    /// A Python expression over the sample (`volume * 8`, `resource_metadata.cpu_number`).
    Expr(String),
}

/// The `target` block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// New meter name (kept when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// New unit (kept when absent).
    #[serde(default)]
    pub unit: Option<String>,
    /// New type (kept when absent).
    #[serde(default, rename = "type")]
    pub kind: Option<SampleType>,
    /// Scale factor or expression.
    #[serde(default)]
    pub scale: Option<Scale>,
    /// Upper cap on the output volume (ignored when 0).
    #[serde(default)]
    pub max: Option<f64>,
    /// Replacement templates (`\1` back-references) for `source.map_from`.
    #[serde(default)]
    pub map_to: Option<MapSpec>,
}

/// How one field (name or unit) of the output is chosen.
enum Mapper {
    Keep,
    Fixed(Sym),
    Regex {
        re: Regex,
        template: String,
        fallback: Option<Sym>,
        memo: FxHashMap<Sym, Sym>,
    },
}

impl Mapper {
    fn new(
        field: &str,
        from: Option<&String>,
        to: Option<&String>,
        fixed: Option<&String>,
        problems: &mut Vec<ConfigProblem>,
    ) -> Mapper {
        let fallback = fixed.map(|f| Sym::new(f));
        match (from, to) {
            (Some(from), Some(to)) if !from.is_empty() && !to.is_empty() => {
                match Regex::new(from) {
                    Ok(re) => Mapper::Regex {
                        re,
                        template: python_template(to),
                        fallback,
                        memo: FxHashMap::default(),
                    },
                    Err(e) => {
                        problems.push(ConfigProblem::new(
                            format!("source.map_from.{field}"),
                            format!("invalid regular expression {from:?}: {e}"),
                        ));
                        Mapper::Keep
                    }
                }
            }
            _ => fallback.map_or(Mapper::Keep, Mapper::Fixed),
        }
    }

    fn apply(&mut self, value: Sym) -> Sym {
        match self {
            Mapper::Keep => value,
            Mapper::Fixed(s) => *s,
            Mapper::Regex {
                re,
                template,
                fallback,
                memo,
            } => *memo.entry(value).or_insert_with(|| {
                let mapped = re.replace_all(value.as_str(), template.as_str());
                if mapped.is_empty() {
                    fallback.unwrap_or(value)
                } else {
                    Sym::new(&mapped)
                }
            }),
        }
    }
}

/// Turns a Python `re.sub` template (`\1`, `\g<name>`) into the regex crate's (`${1}`).
fn python_template(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        let name: String = chars.by_ref().take_while(|c| *c != '>').collect();
                        out.push_str(&format!("${{{name}}}"));
                    } else {
                        out.push_str("\\g");
                    }
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

enum ScaleRt {
    Unscaled,
    Factor(Volume),
    Expr(Expr),
    /// An expression over `resource_metadata` only: its value per resource is reused while the
    /// resource's metadata text is unchanged (it is, across most polling cycles).
    MetadataExpr(Expr, FxHashMap<Sym, (RawJson, Volume)>),
}

/// Bound on remembered per-resource expression values.
const MEMO_LIMIT: usize = 1 << 20;

/// The runtime of a `source`/`target` pair: builds converted samples.
pub struct Converter {
    name: Mapper,
    unit: Mapper,
    kind: Option<SampleType>,
    scale: ScaleRt,
    max: Option<f64>,
    /// `source.unit`, when given.
    pub source_unit: Option<Sym>,
    sample_source: Sym,
}

impl Converter {
    /// Builds from the blocks; `default_scale` applies when `target.scale` is absent or false-y
    /// (`rate_of_change` uses `"1"`).
    pub fn new(
        source: &SourceSpec,
        target: &TargetSpec,
        default_scale: Option<&str>,
        problems: &mut Vec<ConfigProblem>,
    ) -> Converter {
        let from = source.map_from.as_ref();
        let to = target.map_to.as_ref();
        let name = Mapper::new(
            "name",
            from.and_then(|m| m.name.as_ref()),
            to.and_then(|m| m.name.as_ref()),
            target.name.as_ref(),
            problems,
        );
        let unit = Mapper::new(
            "unit",
            from.and_then(|m| m.unit.as_ref()),
            to.and_then(|m| m.unit.as_ref()),
            target.unit.as_ref(),
            problems,
        );
        let scale_spec = match &target.scale {
            Some(Scale::Int(0)) | None => default_scale.map(|s| Scale::Expr(s.to_owned())),
            Some(Scale::Float(f)) if *f == 0.0 => default_scale.map(|s| Scale::Expr(s.to_owned())),
            Some(Scale::Expr(e)) if e.is_empty() => {
                default_scale.map(|s| Scale::Expr(s.to_owned()))
            }
            Some(s) => Some(s.clone()),
        };
        let scale = match scale_spec {
            None => ScaleRt::Unscaled,
            Some(Scale::Int(i)) => ScaleRt::Factor(Volume::Int(i)),
            Some(Scale::Float(f)) => ScaleRt::Factor(Volume::Float(f)),
            Some(Scale::Expr(text)) => match Expr::parse(&text, false) {
                Ok(e) if e.reads_only_metadata() && !e.is_constant() => {
                    ScaleRt::MetadataExpr(e, FxHashMap::default())
                }
                Ok(e) => ScaleRt::Expr(e),
                Err(e) => {
                    problems.push(ConfigProblem::new("target.scale", e.to_string()));
                    ScaleRt::Unscaled
                }
            },
        };
        Converter {
            name,
            unit,
            kind: target.kind,
            scale,
            max: target.max.filter(|m| *m != 0.0),
            source_unit: source.unit.as_deref().map(Sym::new),
            sample_source: Sym::new(DEFAULT_SAMPLE_SOURCE),
        }
    }

    /// The scaled volume of `s` (Ceilometer's `_scale`).
    pub fn scale(&mut self, s: &Sample) -> Result<Volume, EvalError> {
        match &mut self.scale {
            ScaleRt::Unscaled => Ok(s.volume),
            ScaleRt::Factor(f) => Ok(s.volume * *f),
            ScaleRt::Expr(e) => e.eval(s)?.to_volume(),
            ScaleRt::MetadataExpr(e, memo) => {
                if let Some((metadata, value)) = memo.get(&s.resource_id) {
                    if metadata.as_str() == s.resource_metadata.as_str() {
                        return Ok(*value);
                    }
                }
                let value = e.eval(s)?.to_volume()?;
                if memo.len() >= MEMO_LIMIT {
                    memo.clear();
                }
                memo.insert(s.resource_id, (s.resource_metadata.detached(), value));
                Ok(value)
            }
        }
    }

    /// The output name for an input name.
    pub fn map_name(&mut self, name: Sym) -> Sym {
        self.name.apply(name)
    }

    /// Builds the converted sample: `volume = scale(s) * growth`, capped by `max`.
    pub fn convert(&mut self, s: &Sample, growth: Volume) -> Result<Sample, EvalError> {
        let mut volume = self.scale(s)? * growth;
        if let Some(max) = self.max {
            if volume.as_f64() > max {
                volume = Volume::Float(max);
            }
        }
        Ok(Sample {
            name: self.name.apply(s.name),
            kind: self.kind.unwrap_or(s.kind),
            unit: self.unit.apply(s.unit),
            volume,
            user_id: s.user_id,
            project_id: s.project_id,
            resource_id: s.resource_id,
            timestamp: s.timestamp.clone(),
            resource_metadata: s.resource_metadata.clone(),
            source: self.sample_source,
            message_id: None,
            monotonic_time: None,
        })
    }

    /// The `source` a built sample gets.
    pub fn sample_source(&self) -> Sym {
        self.sample_source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_templates_translate() {
        assert_eq!(python_template(r"\1.\2.\3.rate"), "${1}.${2}.${3}.rate");
        assert_eq!(python_template(r"\g<x>/s$"), "${x}/s$$");
    }

    #[test]
    fn regex_mapping_renames_families_of_meters() {
        let source: SourceSpec = serde_yaml::from_str(
            r#"{map_from: {name: '(disk\.device|disk)\.(read|write)\.(bytes|requests)', unit: '(B|request)'}}"#,
        )
        .unwrap();
        let target: TargetSpec =
            serde_yaml::from_str(r#"{map_to: {name: '\1.\2.\3.rate', unit: '\1/s'}, type: gauge}"#)
                .unwrap();
        let mut problems = Vec::new();
        let mut c = Converter::new(&source, &target, Some("1"), &mut problems);
        assert!(problems.is_empty());
        let mut s = Sample::gauge("disk.device.read.bytes", "r", 2.0, "2021-01-01T00:00:00");
        s.unit = Sym::new("B");
        let out = c.convert(&s, Volume::Float(3.0)).unwrap();
        assert_eq!(out.name.as_str(), "disk.device.read.bytes.rate");
        assert_eq!(out.unit.as_str(), "B/s");
        assert_eq!(out.volume, Volume::Float(3.0));
        // A name the pattern does not match is kept (re.sub returns it unchanged).
        let other = Sample::gauge("cpu", "r", 2.0, "2021-01-01T00:00:00");
        assert_eq!(
            c.convert(&other, Volume::Int(1)).unwrap().name.as_str(),
            "cpu"
        );
    }

    #[test]
    fn metadata_expressions_are_reused_only_while_metadata_is_unchanged() {
        let target: TargetSpec =
            serde_yaml::from_str("{scale: '1.0 / (resource_metadata.n or 1)'}").unwrap();
        let mut c = Converter::new(&SourceSpec::default(), &target, None, &mut Vec::new());
        let s = |md: &str| Sample::gauge("m", "r", 1.0, "2021-01-01T00:00:00").with_metadata(md);
        assert_eq!(c.scale(&s(r#"{"n": 2}"#)).unwrap(), Volume::Float(0.5));
        assert_eq!(c.scale(&s(r#"{"n": 2}"#)).unwrap(), Volume::Float(0.5));
        assert_eq!(c.scale(&s(r#"{"n": 4}"#)).unwrap(), Volume::Float(0.25));
        assert_eq!(c.scale(&s(r#"{}"#)).unwrap(), Volume::Float(1.0));
        assert!(c.scale(&s(r#"{"n": "x"}"#)).is_err());
    }

    #[test]
    fn bad_regex_and_expression_are_problems() {
        let source: SourceSpec = serde_yaml::from_str("{map_from: {name: '('}}").unwrap();
        let target: TargetSpec = serde_yaml::from_str("{map_to: {name: x}, scale: '1 +'}").unwrap();
        let mut problems = Vec::new();
        Converter::new(&source, &target, None, &mut problems);
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["source.map_from.name", "target.scale"]);
    }
}
