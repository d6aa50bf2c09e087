//! `aggregator`: merges samples of the same meter and resource until a size or a retention time.
//!
//! Samples merge when they share meter name, resource and each of `user_id` / `project_id` not
//! given as a parameter (a null value keys as its own). A parameter `user_id: first|last`
//! (likewise `project_id`) takes the field out of the key and keeps the first or last value;
//! `resource_metadata: first|last|drop` (default last) likewise; `timestamp: first|last`
//! (default first). Volumes: gauge → mean, cumulative → last, delta → sum; `target` scaling
//! applies to each input. At each flush (batch end) everything held is released when the
//! number of samples held across all keys reached `size` (default 1) or the first held sample
//! is older than `retention_time` seconds by the wall clock.
//!
//! # Examples
//! ```
//! use meterflow_engine::{metrics::Diag, Sample};
//! use meterflow_operators::transform::{find, Transform};
//! let mut t = find("aggregator").unwrap().build(&serde_yaml::from_str("{size: 4}").unwrap()).unwrap();
//! let (mut out, mut d) = (Vec::new(), Diag::default());
//! for (res, v) in [("vm-1", 10.0), ("vm-1", 20.0), ("vm-1", 60.0), ("vm-2", 5.0)] {
//!     t.handle(Sample::gauge("memory.usage", res, v, "2021-01-01T00:00:00"), &mut d);
//! }
//! t.flush(&mut out, &mut d);
//! let v: Vec<_> = out.iter().map(|s| (s.resource_id.as_str(), s.volume.as_f64())).collect();
//! assert_eq!(v, [("vm-1", 30.0), ("vm-2", 5.0)]);
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::model::RawJson;
use meterflow_engine::{Sample, SampleType, Volume};
use serde::Deserialize;

use super::convert::{Converter, SourceSpec, TargetSpec};
use super::{ConfigProblem, Partition, Transform, TransformerConfig};

/// Parameters of `aggregator`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Release when this many samples are held across all keys (default 1 unless
    /// `retention_time` is set). A numeric string is accepted, as Ceilometer's `int(size)` does.
    #[serde(default, deserialize_with = "number_or_numeric_string")]
    pub size: Option<f64>,
    /// Release when the first held sample is older than this many seconds (a number or a
    /// numeric string, as Ceilometer's `float(retention_time)` accepts).
    #[serde(default, deserialize_with = "number_or_numeric_string")]
    pub retention_time: Option<f64>,
    /// `first` or `last`: merge across users keeping that one; absent: group by user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// `first` or `last`: merge across projects keeping that one; absent: group by project.
    #[serde(default)]
    pub project_id: Option<String>,
    /// `first`, `last` (default) or `drop` (empty metadata).
    #[serde(default = "default_last")]
    pub resource_metadata: String,
    /// `first` (default) or `last`.
    #[serde(default = "default_first")]
    pub timestamp: String,
    /// `map_from`.
    #[serde(default)]
    pub source: SourceSpec,
    /// `name`, `unit`, `type`, `scale`, `max`, `map_to` applied to each input.
    #[serde(default)]
    pub target: TargetSpec,
}

fn number_or_numeric_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Number(f64),
        Text(String),
    }
    match Option::<Lenient>::deserialize(d)? {
        None => Ok(None),
        Some(Lenient::Number(n)) => Ok(Some(n)),
        Some(Lenient::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number"))),
    }
}

fn default_last() -> String {
    "last".into()
}

fn default_first() -> String {
    "first".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// The field is part of the grouping key.
    Key,
    First,
    Last,
    Drop,
}

/// Ceilometer's `_init_attribute`: an unknown policy is not an error, it acts as `last`.
fn policy(field: &str, value: Option<&str>, allow_drop: bool) -> Policy {
    match value {
        None | Some("") => Policy::Key,
        Some("first") => Policy::First,
        Some("last") => Policy::Last,
        Some("drop") if allow_drop => Policy::Drop,
        Some(other) => {
            let known = if allow_drop {
                "first, last or drop"
            } else {
                "first or last"
            };
            tracing::warn!(
                "aggregator: {field} policy {other:?} is unknown, using last (known: {known})"
            );
            Policy::Last
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Key {
    name: Sym,
    resource: Sym,
    user: Option<Option<Sym>>,
    project: Option<Option<Sym>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    sample: Sample,
    count: u64,
}

/// The `aggregator` runtime.
pub struct Aggregator {
    converter: Converter,
    size: Option<f64>,
    retention_micros: Option<i64>,
    user: Policy,
    project: Policy,
    metadata: Policy,
    timestamp_last: bool,
    groups: IndexMap<Key, Entry>,
    held: u64,
    first_micros: Option<i64>,
}

impl TransformerConfig for AggregatorConfig {
    const NAME: &'static str = "aggregator";
    const DESCRIPTION: &'static str =
        "merge samples per meter/resource(/user/project) until size or retention_time";
    const PARTITION: Partition = Partition::Global;
    type Runtime = Aggregator;

    fn build(self) -> Result<Aggregator, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let converter = Converter::new(&self.source, &self.target, None, &mut problems);
        let user = policy("user_id", self.user_id.as_deref(), false);
        let project = policy("project_id", self.project_id.as_deref(), false);
        let metadata = match policy("resource_metadata", Some(&self.resource_metadata), true) {
            Policy::Key => Policy::Last,
            p => p,
        };
        let timestamp_last = match self.timestamp.as_str() {
            "last" => true,
            "first" => false,
            other => {
                tracing::warn!("aggregator: timestamp policy {other:?} is unknown, using first");
                false
            }
        };
        let size = self.size.filter(|s| *s != 0.0).map(f64::trunc);
        let retention = self.retention_time.filter(|r| *r != 0.0);
        for (field, v) in [("size", size), ("retention_time", retention)] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                problems.push(ConfigProblem::new(field, "must be a positive number"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Aggregator {
            converter,
            size: if size.is_none() && retention.is_none() {
                Some(1.0)
            } else {
                size
            },
            retention_micros: retention.map(|r| (r * 1e6) as i64),
            user,
            project,
            metadata,
            timestamp_last,
            groups: IndexMap::new(),
            held: 0,
            first_micros: None,
        })
    }
}

impl Aggregator {
    fn key(&self, s: &Sample) -> Key {
        Key {
            name: s.name,
            resource: s.resource_id,
            user: (self.user == Policy::Key).then_some(s.user_id),
            project: (self.project == Policy::Key).then_some(s.project_id),
        }
    }

    fn drop_expression(s: &Sample, diag: &mut Diag, e: impl std::fmt::Display) {
        diag.drop(DropReason::ExpressionError, || {
            format!(
                "aggregator: dropping {} of {} at {}: target.scale failed: {e}",
                s.name,
                s.resource_id,
                s.timestamp.as_str()
            )
        });
    }
}

impl Transform for Aggregator {
    fn handle(&mut self, s: Sample, diag: &mut Diag) -> Option<Sample> {
        if self.first_micros.is_none() {
            let Some(micros) = s.timestamp.micros() else {
                diag.drop(DropReason::BadTimestamp, || {
                    format!(
                        "aggregator: dropping {} of {}: timestamp {:?} is not ISO 8601",
                        s.name,
                        s.resource_id,
                        s.timestamp.as_str()
                    )
                });
                return None;
            };
            self.first_micros = Some(micros);
        }
        let key = self.key(&s);
        match self.groups.get_mut(&key) {
            None => {
                let mut converted = match self.converter.convert(&s, Volume::Int(1)) {
                    Ok(c) => c.detached(),
                    Err(e) => {
                        Self::drop_expression(&s, diag, e);
                        return None;
                    }
                };
                if self.metadata == Policy::Drop {
                    converted.resource_metadata = RawJson::EMPTY_OBJECT;
                }
                self.groups.insert(
                    key,
                    Entry {
                        sample: converted,
                        count: 1,
                    },
                );
            }
            Some(entry) => {
                let scaled = match self.converter.scale(&s) {
                    Ok(v) => v,
                    Err(e) => {
                        Self::drop_expression(&s, diag, e);
                        return None;
                    }
                };
                let stored = &mut entry.sample;
                entry.count += 1;
                stored.volume = if s.kind == SampleType::Cumulative {
                    scaled
                } else {
                    stored.volume + scaled
                };
                // Merged values replace the stored ones without a copy: they pin only the newest
                // chunk, and only until the next merge or flush.
                if self.timestamp_last {
                    stored.timestamp = s.timestamp.clone();
                }
                if self.user == Policy::Last {
                    stored.user_id = s.user_id;
                }
                if self.project == Policy::Last {
                    stored.project_id = s.project_id;
                }
                if self.metadata == Policy::Last {
                    stored.resource_metadata = s.resource_metadata.clone();
                }
            }
        }
        self.held += 1;
        None
    }

    fn flush(&mut self, out: &mut Vec<Sample>, _: &mut Diag) {
        let Some(first) = self.first_micros else {
            return;
        };
        let full = self.size.is_some_and(|size| self.held as f64 >= size);
        let expired = self.retention_micros.is_some_and(|r| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            now - first > r
        });
        if !(full || expired) {
            return;
        }
        for (_, entry) in self.groups.drain(..) {
            let mut s = entry.sample;
            if s.kind == SampleType::Gauge {
                s.volume = Volume::Float(s.volume.as_f64() / entry.count as f64);
            }
            out.push(s);
        }
        self.held = 0;
        self.first_micros = None;
    }

    fn held(&self) -> usize {
        self.groups.len()
    }

    fn save(&self) -> Vec<u8> {
        let groups: Vec<_> = self.groups.iter().collect();
        super::encode_state(&(groups, self.held, self.first_micros))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let (groups, held, first): (Vec<(Key, Entry)>, u64, Option<i64>) =
            super::decode_state(AggregatorConfig::NAME, state)?;
        self.groups.extend(groups);
        self.held += held;
        self.first_micros = match (self.first_micros, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use meterflow_engine::{Sym, Volume};

    const T: &str = "2021-01-01T00:00:00";

    #[test]
    fn gauge_mean_delta_sum_cumulative_last() {
        let mut t = build("aggregator", "{size: 9}");
        let d = |v| {
            sample(
                "net",
                "r",
                meterflow_engine::SampleType::Delta,
                Volume::Int(v),
                T,
            )
        };
        let (out, _) = run(
            &mut *t,
            vec![vec![
                gauge("mem", "r", 10.0, T),
                gauge("mem", "r", 20.0, T),
                gauge("mem", "r", 60.0, T),
                d(100),
                d(50),
                d(25),
                cum("cpu", "r", 1, T),
                cum("cpu", "r", 3, T),
                cum("cpu", "r", 2, T),
            ]],
        );
        assert_eq!(volumes(&out), [30.0, 175.0, 2.0]);
        assert_eq!(out[1].volume, Volume::Int(175));
    }

    #[test]
    fn size_counts_all_keys_and_is_checked_at_flush() {
        let mut t = build("aggregator", "{size: 3}");
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("a", "r", 1.0, T), gauge("b", "r", 1.0, T)]],
        );
        assert!(out.is_empty());
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("c", "r", 1.0, T), gauge("a", "r", 3.0, T)]],
        );
        assert_eq!(volumes(&out), [2.0, 1.0, 1.0]);
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn user_project_grouping_and_policies() {
        let with = |user: &str, v: f64, md: &str| {
            let mut s = gauge("m", "r", v, T).with_metadata(md);
            s.user_id = Some(Sym::new(user));
            s
        };
        // Default: user is part of the key.
        let mut t = build("aggregator", "{size: 3}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                with("u1", 1.0, "{}"),
                with("u2", 3.0, "{}"),
                with("u1", 5.0, "{}"),
            ]],
        );
        assert_eq!(volumes(&out), [3.0, 3.0]);
        // user_id: first merges users and keeps the first; metadata last by default.
        let mut t = build("aggregator", "{size: 2, user_id: first}");
        let (out, _) = run(
            &mut *t,
            vec![vec![
                with("u1", 1.0, r#"{"a": 1}"#),
                with("u2", 3.0, r#"{"a": 2}"#),
            ]],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].user_id, Some(Sym::new("u1")));
        assert_eq!(out[0].resource_metadata.as_str(), r#"{"a": 2}"#);
        // drop empties metadata; timestamp last.
        let mut t = build(
            "aggregator",
            "{size: 2, user_id: last, resource_metadata: drop, timestamp: last}",
        );
        let mut late = with("u2", 3.0, r#"{"a": 2}"#);
        late.timestamp = gauge("m", "r", 0.0, "2021-01-01T00:05:00").timestamp;
        let (out, _) = run(&mut *t, vec![vec![with("u1", 1.0, r#"{"a": 1}"#), late]]);
        assert_eq!(out[0].user_id, Some(Sym::new("u2")));
        assert_eq!(out[0].resource_metadata.as_str(), "{}");
        assert_eq!(out[0].timestamp.as_str(), "2021-01-01T00:05:00");
    }

    #[test]
    fn renamed_gauge_still_averages() {
        // Upstream divides by a zero count here and never emits again; meterflow does not.
        let mut t = build("aggregator", "{size: 2, target: {name: renamed}}");
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("m", "r", 1.0, T), gauge("m", "r", 3.0, T)]],
        );
        assert_eq!(volumes(&out), [2.0]);
        assert_eq!(out[0].name.as_str(), "renamed");
    }

    #[test]
    fn numeric_strings_are_accepted_like_ceilometer_int_and_float() {
        let mut t = build("aggregator", "{size: '2', retention_time: '3600'}");
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("m", "r", 1.0, "2199-01-01T00:00:00")]],
        );
        assert!(out.is_empty());
        let (out, _) = run(
            &mut *t,
            vec![vec![gauge("m", "r", 3.0, "2199-01-01T00:00:00")]],
        );
        assert_eq!(volumes(&out), [2.0]);
    }

    #[test]
    fn retention_time_releases_old_samples() {
        let mut t = build("aggregator", "{retention_time: 1}");
        let (out, _) = run(&mut *t, vec![vec![gauge("m", "r", 1.0, T)]]);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn unknown_policies_act_as_ceilometer_defaults() {
        let mut t = build(
            "aggregator",
            "{size: 2, user_id: sometimes, timestamp: middle}",
        );
        let mut a = gauge("m", "r", 1.0, T);
        a.user_id = Some(Sym::new("u1"));
        let mut b = gauge("m", "r", 3.0, "2021-01-01T00:09:00");
        b.user_id = Some(Sym::new("u2"));
        let (out, _) = run(&mut *t, vec![vec![a, b]]);
        assert_eq!(out[0].user_id, Some(Sym::new("u2")));
        assert_eq!(out[0].timestamp.as_str(), T);
    }

    #[test]
    fn bad_parameters() {
        assert!(build_err("aggregator", "{size: -3}").contains("size"));
        assert!(build_err("aggregator", "{size: lots}").contains("size"));
        assert!(build_err("aggregator", "{retention_time: [1]}").contains("retention_time"));
        assert!(build_err("aggregator", "{window: 3}").contains("window"));
    }
}
