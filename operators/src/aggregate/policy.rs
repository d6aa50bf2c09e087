//! Archive policies in Gnocchi's JSON form, with Gnocchi's built-in policies.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::method::Method;
use super::NANOS;

/// The coarsest granularity taken: 50 years (of 365 days), in nanoseconds.
pub const MAX_GRANULARITY: i64 = 50 * 365 * 86_400 * NANOS;

/// One resolution of a policy: buckets of `granularity`, keeping `points` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granule {
    /// Bucket width in nanoseconds.
    pub granularity: i64,
    /// How many buckets are kept (`None`: unlimited).
    pub points: Option<u64>,
}

impl Granule {
    /// `granularity × points` in nanoseconds (`None`: unlimited).
    pub fn timespan(&self) -> Option<i64> {
        self.points
            .map(|p| self.granularity.saturating_mul(p as i64))
    }

    /// The granularity in seconds, as Gnocchi prints it (`300.0`).
    pub fn seconds(&self) -> f64 {
        self.granularity as f64 / NANOS as f64
    }
}

/// A validated archive policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePolicy {
    /// Its name.
    pub name: String,
    /// How many blocks (of the largest granularity) late measures may reach back.
    pub back_window: u64,
    /// The aggregation methods, sorted.
    pub methods: Vec<Method>,
    /// The resolutions, coarsest first.
    pub definition: Vec<Granule>,
}

/// Why a policy is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("archive policy {name:?}: {message}")]
pub struct PolicyError {
    /// The policy's name (or `?`).
    pub name: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    name: String,
    #[serde(default, deserialize_with = "count")]
    back_window: Option<u64>,
    #[serde(default)]
    aggregation_methods: Option<Vec<String>>,
    definition: Vec<GranuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GranuleSpec {
    #[serde(default)]
    granularity: Option<Span>,
    #[serde(default, deserialize_with = "count")]
    points: Option<u64>,
    #[serde(default)]
    timespan: Option<Span>,
}

/// A count given as a number or as text (`"60"`), as Gnocchi's API takes it (the clients
/// send what the user typed).
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u64),
        Text(String),
    }
    match Option::<Count>::deserialize(d)? {
        None => Ok(None),
        Some(Count::Number(n)) => Ok(Some(n)),
        Some(Count::Text(t)) => t.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("{t:?} is not a whole number of 0 or more"))
        }),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Span {
    Seconds(f64),
    Text(String),
}

impl Span {
    /// Nanoseconds: a number of seconds, or text like `60`, `5 min`, `1 hour`, `30 days`, `1h`.
    fn nanos(&self) -> Result<i64, String> {
        let seconds = match self {
            Span::Seconds(s) => *s,
            Span::Text(t) => parse_timespan(t).ok_or_else(|| format!("{t:?} is not a timespan; write seconds (300) or text like \"5 minutes\", \"1 hour\", \"30 days\""))?,
        };
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(format!("{seconds} must be a positive number of seconds"));
        }
        Ok((seconds * NANOS as f64).round() as i64)
    }
}

/// Seconds from a number or a `N unit` timespan as Gnocchi takes them (`300`, `5 minutes`,
/// `1h`, `30 days`, `1 year`).
///
/// # Examples
/// ```
/// use meterflow_operators::aggregate::parse_timespan;
/// assert_eq!(parse_timespan("300"), Some(300.0));
/// assert_eq!(parse_timespan("5 minutes"), Some(300.0));
/// assert_eq!(parse_timespan("1h"), Some(3600.0));
/// assert_eq!(parse_timespan("soon"), None);
/// ```
pub fn parse_timespan(text: &str) -> Option<f64> {
    let t = text.trim();
    if let Ok(s) = t.parse::<f64>() {
        return Some(s);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().ok()?;
    let unit = unit.trim().trim_end_matches('s');
    let scale = match unit {
        "" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        "w" | "week" => 604_800.0,
        "y" | "year" => 31_536_000.0,
        _ => return None,
    };
    Some(n * scale)
}

/// A duration in nanoseconds as Python's `str(datetime.timedelta)` writes it (microseconds,
/// truncated).
///
/// # Examples
/// ```
/// use meterflow_operators::aggregate::python_timedelta;
/// const S: i64 = 1_000_000_000;
/// assert_eq!(python_timedelta(300 * S), "0:05:00");
/// assert_eq!(python_timedelta(86_400 * S), "1 day, 0:00:00");
/// assert_eq!(python_timedelta(30 * 86_400 * S + 3_723 * S), "30 days, 1:02:03");
/// assert_eq!(python_timedelta(S / 2), "0:00:00.500000");
/// assert_eq!(python_timedelta(-S), "-1 day, 23:59:59");
/// ```
pub fn python_timedelta(ns: i64) -> String {
    let micros = ns.div_euclid(1_000);
    let (days, rest) = (
        micros.div_euclid(86_400_000_000),
        micros.rem_euclid(86_400_000_000),
    );
    let (seconds, fraction) = (rest / 1_000_000, rest % 1_000_000);
    let mut s = format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    if days != 0 {
        let plural = if days.abs() != 1 { "s" } else { "" };
        s = format!("{days} day{plural}, {s}");
    }
    if fraction != 0 {
        s.push_str(&format!(".{fraction:06}"));
    }
    s
}

/// Gnocchi's `default_aggregation_methods`.
pub const DEFAULT_METHODS: [&str; 6] = ["mean", "min", "max", "sum", "std", "count"];

impl ArchivePolicy {
    /// Parses a policy in Gnocchi's API JSON form (also accepted as YAML).
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::ArchivePolicy;
    /// let p = ArchivePolicy::from_json(&serde_json::json!({
    ///     "name": "p", "back_window": 0,
    ///     "definition": [{"granularity": "1 minute", "timespan": "1 hour"}, {"granularity": 3600, "points": 24}],
    ///     "aggregation_methods": ["-std", "+rate:mean"]})).unwrap();
    /// assert_eq!(p.definition[0].granularity, 3600 * 1_000_000_000);
    /// assert_eq!(p.definition[1].points, Some(60));
    /// let names: Vec<String> = p.methods.iter().map(|m| m.to_string()).collect();
    /// assert_eq!(names, ["mean", "sum", "min", "max", "count", "rate:mean"]);
    /// assert_eq!(p.effective_back_window(), 1);
    /// ```
    pub fn from_json(value: &serde_json::Value) -> Result<ArchivePolicy, PolicyError> {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_owned();
        let fail = |message: String| PolicyError {
            name: name.clone(),
            message,
        };
        let spec: PolicySpec =
            serde_json::from_value(value.clone()).map_err(|e| fail(e.to_string()))?;
        let mut definition = Vec::new();
        for (i, g) in spec.definition.iter().enumerate() {
            let at = |m: String| fail(format!("definition[{i}]: {m}"));
            let granularity = g
                .granularity
                .as_ref()
                .map(Span::nanos)
                .transpose()
                .map_err(at)?;
            let timespan = g
                .timespan
                .as_ref()
                .map(Span::nanos)
                .transpose()
                .map_err(at)?;
            let positive = |v: i64, what: &str| {
                if v > 0 {
                    Ok(v)
                } else {
                    Err(at(format!("{what} must be positive")))
                }
            };
            let (granularity, points) = match (granularity, g.points, timespan) {
                (Some(gr), Some(p), _) => (gr, Some(p)),
                (Some(gr), None, Some(ts)) => {
                    let gr = positive(gr, "granularity")?;
                    (gr, Some((positive(ts, "timespan")? / gr) as u64))
                }
                (Some(gr), None, None) => (gr, None),
                (None, Some(p), Some(ts)) if p > 0 => {
                    let p64 =
                        i64::try_from(p).map_err(|_| at(format!("points {p} is too many")))?;
                    (positive(ts, "timespan")? / p64, Some(p))
                }
                _ => return Err(at("give two of granularity, points, timespan".into())),
            };
            if granularity <= 0 {
                return Err(at("granularity must be positive".into()));
            }
            // A bucket's end must fit the store's nanosecond times (see engine::time::END).
            if granularity > MAX_GRANULARITY {
                return Err(at(
                    "granularity must be at most 50 years (1,576,800,000 s)".into()
                ));
            }
            if points == Some(0) {
                return Err(at(
                    "points must be at least 1 (the timespan is shorter than one granularity)"
                        .into(),
                ));
            }
            definition.push(Granule {
                granularity,
                points,
            });
        }
        if definition.is_empty() {
            return Err(fail("definition must list at least one granularity".into()));
        }
        let mut seen = BTreeSet::new();
        for g in &definition {
            if !seen.insert(g.granularity) {
                return Err(fail(format!(
                    "granularity {} s appears twice; each must be unique",
                    g.seconds()
                )));
            }
        }
        definition.sort_by_key(|g| std::cmp::Reverse(g.granularity));
        let methods = methods(spec.aggregation_methods.as_deref()).map_err(fail)?;
        Ok(ArchivePolicy {
            name: spec.name,
            back_window: spec.back_window.unwrap_or(0),
            methods,
            definition,
        })
    }

    /// Gnocchi's built-in policies (`bool`, `low`, `medium`, `high`) and Ceilometer's
    /// (`ceilometer-low`, `ceilometer-low-rate`, `ceilometer-high`, `ceilometer-high-rate`).
    pub fn builtin(name: &str) -> Option<ArchivePolicy> {
        ArchivePolicy::from_json(&Self::builtin_json(name)?).ok()
    }

    /// Every built-in policy, parsed once.
    pub fn builtins() -> &'static [ArchivePolicy] {
        static ALL: std::sync::OnceLock<Vec<ArchivePolicy>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            ArchivePolicy::BUILTIN
                .iter()
                .filter_map(|n| ArchivePolicy::builtin(n))
                .collect()
        })
    }

    /// Names of the built-in policies.
    pub const BUILTIN: [&'static str; 8] = [
        "bool",
        "low",
        "medium",
        "high",
        "ceilometer-low",
        "ceilometer-low-rate",
        "ceilometer-high",
        "ceilometer-high-rate",
    ];

    /// The policy in Gnocchi's API JSON form, every field explicit (what the store records).
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::ArchivePolicy;
    /// let low = ArchivePolicy::builtin("low").unwrap();
    /// assert_eq!(ArchivePolicy::from_json(&low.to_json()).unwrap(), low);
    /// assert_eq!(low.to_json()["definition"][0]["timespan"], 2_592_000.0);
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        let seconds = |ns: i64| ns as f64 / NANOS as f64;
        serde_json::json!({
            "name": self.name,
            "back_window": self.back_window,
            "aggregation_methods": self.methods.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "definition": self.definition.iter().map(|g| serde_json::json!({
                "granularity": seconds(g.granularity),
                "points": g.points,
                "timespan": g.timespan().map(seconds),
            })).collect::<Vec<_>>(),
        })
    }

    /// The policy as Gnocchi's REST API shows it: durations written as Python's
    /// `str(timedelta)` (`0:05:00`, `30 days, 0:00:00`), as the clients print them.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::ArchivePolicy;
    /// let low = ArchivePolicy::builtin("low").unwrap().to_api_json();
    /// assert_eq!(low["definition"][0]["granularity"], "0:05:00");
    /// assert_eq!(low["definition"][0]["timespan"], "30 days, 0:00:00");
    /// assert_eq!(low["definition"][0]["points"], 8640);
    /// ```
    pub fn to_api_json(&self) -> serde_json::Value {
        let mut v = self.to_json();
        for (item, g) in v["definition"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(&self.definition)
        {
            item["granularity"] = python_timedelta(g.granularity).into();
            item["timespan"] = g.timespan().map(python_timedelta).into();
        }
        v
    }

    fn builtin_json(name: &str) -> Option<serde_json::Value> {
        Some(match name {
            "bool" => {
                serde_json::json!({"name": "bool", "back_window": 3600, "aggregation_methods": ["last"],
                "definition": [{"granularity": 1, "points": 31_536_000}]})
            }
            "low" => {
                serde_json::json!({"name": "low", "definition": [{"granularity": 300, "points": 8640}]})
            }
            "medium" => serde_json::json!({"name": "medium", "definition": [
                {"granularity": 60, "points": 10_080}, {"granularity": 3600, "points": 8760}]}),
            "high" => serde_json::json!({"name": "high", "definition": [
                {"granularity": 1, "points": 3600}, {"granularity": 60, "points": 10_080}, {"granularity": 3600, "points": 8760}]}),
            "ceilometer-low" => serde_json::json!({"name": name, "aggregation_methods": ["mean"],
                "definition": [{"granularity": 300, "timespan": 2_592_000}]}),
            "ceilometer-low-rate" => {
                serde_json::json!({"name": name, "aggregation_methods": ["mean", "rate:mean"],
                "definition": [{"granularity": 300, "timespan": 2_592_000}]})
            }
            "ceilometer-high" => {
                serde_json::json!({"name": name, "aggregation_methods": ["mean"], "definition": [
                {"granularity": 1, "timespan": 3600}, {"granularity": 60, "timespan": 86_400}, {"granularity": 3600, "timespan": 31_536_000}]})
            }
            "ceilometer-high-rate" => {
                serde_json::json!({"name": name, "aggregation_methods": ["mean", "rate:mean"], "definition": [
                {"granularity": 1, "timespan": 3600}, {"granularity": 60, "timespan": 86_400}, {"granularity": 3600, "timespan": 31_536_000}]})
            }
            _ => return None,
        })
    }

    /// The largest granularity (Gnocchi's block size for late measures), in nanoseconds.
    pub fn block(&self) -> i64 {
        self.definition[0].granularity
    }

    /// `back_window`, plus one when any method is a `rate:` (which needs the previous point).
    pub fn effective_back_window(&self) -> u64 {
        self.back_window + u64::from(self.methods.iter().any(|m| m.rate))
    }
}

fn methods(entries: Option<&[String]>) -> Result<Vec<Method>, String> {
    let default = || {
        DEFAULT_METHODS
            .iter()
            .map(|m| m.parse::<Method>().expect("known"))
            .collect::<Vec<_>>()
    };
    let Some(entries) = entries else {
        return Ok(sorted(default()));
    };
    let all_signed = entries.iter().all(|e| e.starts_with(['+', '-']));
    let mut set: Vec<Method> = if all_signed { default() } else { Vec::new() };
    let every = || {
        let plain = Method::all_plain();
        let rates: Vec<Method> = plain.iter().map(|m| Method { rate: true, ..*m }).collect();
        plain.into_iter().chain(rates).collect::<Vec<_>>()
    };
    for entry in entries {
        let (remove, name) = match entry.as_bytes().first() {
            Some(b'-') => (true, &entry[1..]),
            Some(b'+') => (false, &entry[1..]),
            _ => (false, entry.as_str()),
        };
        let targets = if name == "*" {
            every()
        } else {
            vec![name
                .parse::<Method>()
                .map_err(|e| format!("aggregation_methods: {e}"))?]
        };
        for m in targets {
            if remove {
                set.retain(|x| *x != m);
            } else if !set.contains(&m) {
                set.push(m);
            }
        }
    }
    if set.is_empty() {
        return Err("aggregation_methods leaves no method; keep at least one".into());
    }
    Ok(sorted(set))
}

/// Gnocchi's default methods first in their usual order, then the rest by name.
fn sorted(mut methods: Vec<Method>) -> Vec<Method> {
    methods.sort_by_key(|m| (m.rate, m.base));
    methods.dedup();
    methods
}

#[cfg(test)]
mod tests {

    /// Found by the fuzzer: a zero granularity with a timespan divided by zero.
    #[test]
    fn zero_or_negative_spans_are_refused_not_divided_by() {
        for definition in [
            serde_json::json!([{"granularity": 0, "timespan": 3600}]),
            serde_json::json!([{"granularity": -60, "timespan": -3600}]),
            serde_json::json!([{"points": 10, "timespan": -3600}]),
            serde_json::json!([{"points": u64::MAX, "timespan": 3600}]),
        ] {
            let p = serde_json::json!({"name": "p", "definition": definition});
            assert!(ArchivePolicy::from_json(&p).is_err(), "{p}");
        }
    }
    use super::*;

    fn policy(v: serde_json::Value) -> Result<ArchivePolicy, String> {
        ArchivePolicy::from_json(&v).map_err(|e| e.to_string())
    }

    #[test]
    fn derives_the_third_of_granularity_points_timespan() {
        let p = policy(serde_json::json!({"name": "x", "definition": [
            {"granularity": 60, "points": 10}, {"points": 24, "timespan": "1 day"}, {"granularity": "5min", "timespan": 1000}]}))
        .unwrap();
        let g: Vec<_> = p
            .definition
            .iter()
            .map(|g| (g.granularity / NANOS, g.points))
            .collect();
        assert_eq!(g, [(3600, Some(24)), (300, Some(3)), (60, Some(10))]);
        assert_eq!(p.definition[1].timespan(), Some(900 * NANOS));
        assert_eq!(p.block(), 3600 * NANOS);
    }

    #[test]
    fn rejects_what_gnocchi_rejects() {
        for (bad, needle) in [
            (
                serde_json::json!({"name": "x", "definition": []}),
                "at least one",
            ),
            (
                serde_json::json!({"name": "x", "definition": [{"granularity": 60}, {"granularity": 60, "points": 2}]}),
                "twice",
            ),
            (
                serde_json::json!({"name": "x", "definition": [{"points": 5}]}),
                "two of",
            ),
            (
                serde_json::json!({"name": "x", "definition": [{"granularity": -5, "points": 5}]}),
                "positive",
            ),
            (
                serde_json::json!({"name": "x", "definition": [{"granularity": 60, "timespan": 30}]}),
                "points must be",
            ),
            (
                serde_json::json!({"name": "x", "definition": [{"granularity": "soon", "points": 1}]}),
                "not a timespan",
            ),
            (
                serde_json::json!({"name": "x", "aggregation_methods": ["avg"], "definition": [{"granularity": 1}]}),
                "unknown aggregation method",
            ),
            (
                serde_json::json!({"name": "x", "aggregation_methods": ["-mean", "-min", "-max", "-sum", "-std", "-count"], "definition": [{"granularity": 1}]}),
                "no method",
            ),
            (
                serde_json::json!({"name": "x", "colour": 1, "definition": [{"granularity": 1}]}),
                "colour",
            ),
        ] {
            let err = policy(bad).unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn methods_default_star_and_signed() {
        let names = |v: serde_json::Value| -> Vec<String> {
            let mut j = serde_json::json!({"name": "x", "definition": [{"granularity": 1}]});
            if !v.is_null() {
                j["aggregation_methods"] = v;
            }
            policy(j)
                .unwrap()
                .methods
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            names(serde_json::Value::Null),
            ["mean", "sum", "min", "max", "count", "std"]
        );
        assert_eq!(
            names(serde_json::json!(["-std", "+median"])),
            ["mean", "sum", "min", "max", "count", "median"]
        );
        assert_eq!(names(serde_json::json!(["*"])).len(), 216);
        assert_eq!(names(serde_json::json!(["last"])), ["last"]);
    }

    #[test]
    fn builtins_exist() {
        for name in [
            "bool",
            "low",
            "medium",
            "high",
            "ceilometer-low",
            "ceilometer-low-rate",
            "ceilometer-high",
            "ceilometer-high-rate",
        ] {
            assert!(ArchivePolicy::builtin(name).is_some(), "{name}");
        }
        assert_eq!(ArchivePolicy::builtin("bool").unwrap().back_window, 3600);
        assert_eq!(
            ArchivePolicy::builtin("ceilometer-low-rate")
                .unwrap()
                .effective_back_window(),
            1
        );
        assert_eq!(ArchivePolicy::builtin("high").unwrap().definition.len(), 3);
    }
}
