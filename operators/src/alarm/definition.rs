//! Alarm definitions in Aodh's API JSON form (`POST /v2/alarms` bodies), validated as Aodh's
//! API validates them, every problem reported with its place.
//!
//! ```json
//! {"name": "cpu_high", "type": "gnocchi_resources_threshold", "severity": "critical",
//!  "alarm_actions": ["http://127.0.0.1:8080/hook"],
//!  "gnocchi_resources_threshold_rule": {"metric": "cpu_util", "resource_id": "vm-1",
//!    "resource_type": "instance", "aggregation_method": "mean", "granularity": 300,
//!    "comparison_operator": "gt", "threshold": 80, "evaluation_periods": 3}}
//! ```

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::threshold::{AlarmState, Comparison};
use crate::aggregate::Method;

/// `severity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `low` (Aodh's default).
    Low,
    /// `moderate`.
    Moderate,
    /// `critical`.
    Critical,
}

impl Severity {
    /// Aodh's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Moderate => "moderate",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(text: &str) -> Result<Severity, String> {
        match text {
            "low" => Ok(Severity::Low),
            "moderate" => Ok(Severity::Moderate),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "severity {other:?} is not one of: low, moderate, critical"
            )),
        }
    }
}

/// Which metrics a threshold rule reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// `gnocchi_resources_threshold`: one metric of one resource.
    Resource {
        /// The metric name.
        metric: String,
        /// The resource id (as the samples carry it).
        resource_id: String,
        /// The resource type.
        resource_type: String,
    },
    /// `gnocchi_aggregation_by_metrics_threshold`: metrics by id, aggregated across.
    Metrics {
        /// Metric ids.
        metrics: Vec<String>,
    },
    /// `gnocchi_aggregation_by_resources_threshold`: one metric name over the resources a
    /// query selects, aggregated across.
    Resources {
        /// The metric name.
        metric: String,
        /// The resource type.
        resource_type: String,
        /// Gnocchi's search filter (parsed from the JSON string Aodh takes).
        query: Value,
    },
}

/// The fields every gnocchi threshold rule shares, and its target.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdRule {
    /// What it reads.
    pub target: Target,
    /// `comparison_operator` (default `eq`).
    pub comparison: Comparison,
    /// `threshold`.
    pub threshold: f64,
    /// `aggregation_method`.
    pub aggregation_method: Method,
    /// The method as written (Aodh echoes it).
    pub aggregation_method_name: String,
    /// `evaluation_periods` (1..=100, default 1).
    pub evaluation_periods: usize,
    /// `granularity` in seconds (1..=31 536 000, default 60).
    pub granularity: u64,
}

/// A node of a composite rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Composite {
    /// `{"and": [...]}`.
    And(Vec<Composite>),
    /// `{"or": [...]}`.
    Or(Vec<Composite>),
    /// A threshold rule with its `type`.
    Leaf(Box<ThresholdRule>),
}

/// One condition of an event rule's query.
#[derive(Clone, Debug, PartialEq)]
pub struct EventCondition {
    /// `field`, e.g. `traits.instance_id`.
    pub field: String,
    /// `op` (default `eq`).
    pub op: Comparison,
    /// `value` converted by `type`.
    pub value: Value,
}

/// An event rule.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRule {
    /// `event_type`, an fnmatch pattern (default `*`).
    pub event_type: String,
    /// Every condition must hold.
    pub query: Vec<EventCondition>,
}

/// An alarm's rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// One of the three gnocchi threshold types.
    Threshold(ThresholdRule),
    /// `composite`.
    Composite(Composite),
    /// `event`.
    Event(EventRule),
}

/// One `time_constraints` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeConstraint {
    /// Unique within the alarm.
    pub name: String,
    /// The cron expression (5 fields).
    pub start: String,
    /// Seconds from each start.
    pub duration: u64,
    /// IANA time zone, empty for UTC.
    pub timezone: String,
}

/// meterflow's options beyond Aodh, each off unless given (seconds of event time), so an
/// alarm without them behaves exactly as Aodh's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlarmOptions {
    /// `no_data_grace`: once the engine's watermark (the newest event time of any metric) is
    /// this far past a bucket boundary of the alarm, the boundary is evaluated even though the
    /// alarm's metric sent nothing for it: a metric that stops goes to insufficient data
    /// instead of keeping its last state forever.
    pub no_data_grace: Option<u64>,
    /// `for`: a transition to `alarm` takes effect only once every evaluation for this long
    /// said so (Prometheus' `for`); until then the alarm stays as it is.
    pub pending_for: Option<u64>,
    /// `hold`: a state is kept at least this long after it was entered before a transition
    /// out of it takes effect (notifications at most once per hold, the last state always
    /// notified).
    pub hold: Option<u64>,
}

/// A validated alarm definition.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmDefinition {
    /// `alarm_id` (given, or derived from the name for definition files).
    pub alarm_id: String,
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: String,
    /// `type`.
    pub kind: String,
    /// `enabled`.
    pub enabled: bool,
    /// The state it starts in (`state`, default insufficient data).
    pub state: AlarmState,
    /// `state_reason`.
    pub state_reason: String,
    /// `severity`.
    pub severity: Severity,
    /// `repeat_actions`.
    pub repeat_actions: bool,
    /// `ok_actions`.
    pub ok_actions: Vec<String>,
    /// `alarm_actions`.
    pub alarm_actions: Vec<String>,
    /// `insufficient_data_actions`.
    pub insufficient_data_actions: Vec<String>,
    /// `time_constraints`.
    pub time_constraints: Vec<TimeConstraint>,
    /// The rule.
    pub rule: Rule,
    /// The rule object as given (with defaults filled in), for the API and reason data.
    pub rule_json: Value,
    /// `user_id`, `project_id` (optional).
    pub user_id: Option<String>,
    /// See `user_id`.
    pub project_id: Option<String>,
    /// meterflow's options beyond Aodh (`no_data_grace`, `for`, `hold`).
    pub options: AlarmOptions,
}

/// One problem with a definition: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionProblem {
    /// Key path inside the alarm, e.g. `gnocchi_resources_threshold_rule.threshold`.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for DefinitionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The threshold types (the rule object is `<type>_rule`).
pub const THRESHOLD_TYPES: [&str; 3] = [
    "gnocchi_resources_threshold",
    "gnocchi_aggregation_by_metrics_threshold",
    "gnocchi_aggregation_by_resources_threshold",
];

/// Every type Aodh's gnocchi deployment knows.
pub const TYPES: [&str; 5] = [
    "gnocchi_resources_threshold",
    "gnocchi_aggregation_by_metrics_threshold",
    "gnocchi_aggregation_by_resources_threshold",
    "composite",
    "event",
];

/// Action URL schemes meterflow delivers to.
pub const ACTION_SCHEMES: [&str; 5] = ["http", "https", "log", "file", "kafka"];

const FIELDS: [&str; 23] = [
    "alarm_id",
    "name",
    "description",
    "type",
    "enabled",
    "state",
    "state_reason",
    "severity",
    "repeat_actions",
    "ok_actions",
    "alarm_actions",
    "insufficient_data_actions",
    "time_constraints",
    "user_id",
    "project_id",
    // meterflow's options beyond Aodh.
    "no_data_grace",
    "for",
    "hold",
    // Server-set fields Aodh returns; accepted (and ignored) so a GET body can be PUT back.
    "timestamp",
    "state_timestamp",
    "evaluate_timestamp",
    "severity_reason",
    "rule",
];

/// Collects problems with their places.
struct Check {
    problems: Vec<DefinitionProblem>,
}

impl Check {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(DefinitionProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.fail(
                    join(path, key),
                    format!("must be a string, got {}", kind(other)),
                );
                None
            }
        }
    }

    fn required_string(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> String {
        match self.string(obj, key, path) {
            Some(s) if !s.is_empty() => s,
            Some(_) => {
                self.fail(join(path, key), "must not be empty");
                String::new()
            }
            None => {
                if obj.get(key).is_none_or(|v| v.is_null()) {
                    self.fail(join(path, key), "Mandatory field missing.");
                }
                String::new()
            }
        }
    }

    fn boolean(&mut self, obj: &Map<String, Value>, key: &str, default: bool) -> bool {
        match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.fail(key, format!("must be true or false, got {}", kind(other)));
                default
            }
        }
    }

    fn number(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<f64> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            // Aodh's wsme float type takes numeric strings.
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => s.trim().parse().ok(),
            Some(other) => {
                self.fail(
                    join(path, key),
                    format!("must be a number, got {}", kind(other)),
                );
                None
            }
        }
    }

    fn integer_in(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        default: u64,
        (min, max): (u64, u64),
    ) -> u64 {
        let Some(v) = self.number(obj, key, path) else {
            return default;
        };
        if v.fract() != 0.0 || v < min as f64 || v > max as f64 {
            self.fail(
                join(path, key),
                format!("Value {v} is invalid (should be an integer from {min} to {max})"),
            );
            return default;
        }
        v as u64
    }

    fn actions(&mut self, obj: &Map<String, Value>, key: &str) -> Vec<String> {
        let items = match obj.get(key) {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.fail(
                    key,
                    format!("must be a list of action URLs, got {}", kind(other)),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            let Some(url) = item.as_str() else {
                self.fail(path, format!("must be a URL string, got {}", kind(item)));
                continue;
            };
            let scheme = url.split_once("://").map(|(s, _)| s);
            match scheme {
                Some(s) if ACTION_SCHEMES.contains(&s) => {
                    if s == "file" && url.len() <= "file://".len() {
                        self.fail(path, "file:// needs a path, e.g. file:///var/log/alarms.jsonl");
                        continue;
                    }
                    // Aodh silently drops duplicates.
                    if !out.iter().any(|u| u == url) {
                        out.push(url.to_owned());
                    }
                }
                Some(s) => self.fail(
                    path,
                    format!(
                        "Unsupported action {url}: scheme {s:?} is not one of {}",
                        ACTION_SCHEMES.join(", ")
                    ),
                ),
                None => self.fail(
                    path,
                    format!("Unsupported action {url}: an action is a URL such as http://host:port/path, log://, file:///path or kafka://host:port/topic"),
                ),
            }
        }
        out
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Serialized as its API JSON (so alarm changes can cross workers).
impl serde::Serialize for AlarmDefinition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_json(), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for AlarmDefinition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <Value as serde::Deserialize>::deserialize(deserializer)?;
        AlarmDefinition::from_json(&value, |_| String::new()).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            <D::Error as serde::de::Error>::custom(text.join("; "))
        })
    }
}

impl AlarmDefinition {
    /// Validates one alarm in Aodh's JSON form. Without `alarm_id`, `default_id` gives one
    /// (definition files derive it from the name, so state survives restarts).
    pub fn from_json(
        value: &Value,
        default_id: impl FnOnce(&str) -> String,
    ) -> Result<AlarmDefinition, Vec<DefinitionProblem>> {
        let mut c = Check {
            problems: Vec::new(),
        };
        let Some(obj) = value.as_object() else {
            c.fail(
                "",
                format!(
                    "an alarm must be an object with name, type and <type>_rule, got {}",
                    kind(value)
                ),
            );
            return Err(c.problems);
        };
        let kind_name = c.required_string(obj, "type", "");
        let rule_key = format!("{kind_name}_rule");
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) && *key != rule_key {
                let hint = if key.ends_with("_rule") {
                    format!("the rule of type {kind_name:?} goes under {rule_key}")
                } else {
                    format!("known: {}, and <type>_rule", FIELDS[..18].join(", "))
                };
                c.fail(key.as_str(), format!("unknown field {key:?} ({hint})"));
            }
        }
        let name = c.required_string(obj, "name", "");
        if !kind_name.is_empty() && !TYPES.contains(&kind_name.as_str()) {
            c.fail(
                "type",
                format!(
                    "Unsupported alarm type {kind_name:?}; one of: {}",
                    TYPES.join(", ")
                ),
            );
        }
        let enabled = c.boolean(obj, "enabled", true);
        let repeat_actions = c.boolean(obj, "repeat_actions", false);
        let state = match c.string(obj, "state", "") {
            None => AlarmState::InsufficientData,
            Some(s) => s.parse().unwrap_or_else(|e: String| {
                c.fail("state", e);
                AlarmState::InsufficientData
            }),
        };
        let severity = match c.string(obj, "severity", "") {
            None => Severity::Low,
            Some(s) => s.parse().unwrap_or_else(|e: String| {
                c.fail("severity", e);
                Severity::Low
            }),
        };
        let ok_actions = c.actions(obj, "ok_actions");
        let alarm_actions = c.actions(obj, "alarm_actions");
        let insufficient_data_actions = c.actions(obj, "insufficient_data_actions");
        let time_constraints = time_constraints(&mut c, obj.get("time_constraints"));
        if let Err(problems) = super::constraints::Constraints::compile(&time_constraints) {
            c.problems.extend(problems);
        }
        let rule_value = obj.get(&rule_key);
        let (rule, rule_json) = match (TYPES.contains(&kind_name.as_str()), rule_value) {
            (false, _) => (None, Value::Null),
            (true, None | Some(Value::Null)) => {
                c.fail(
                    rule_key.as_str(),
                    format!("{rule_key} must be set for {kind_name} type alarm"),
                );
                (None, Value::Null)
            }
            (true, Some(v)) => {
                let (rule, json) = parse_rule(&mut c, &kind_name, v, &rule_key);
                (rule, json)
            }
        };
        let description = c
            .string(obj, "description", "")
            .unwrap_or_else(|| match &rule {
                Some(Rule::Event(e)) => format!("Alarm when {} event occurred.", e.event_type),
                _ => format!("{kind_name} alarm rule"),
            });
        let alarm_id = c
            .string(obj, "alarm_id", "")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default_id(&name));
        if alarm_id.contains('/') {
            c.fail(
                "alarm_id",
                "must not contain '/' (it is a path segment of the API)",
            );
        }
        let state_reason = c
            .string(obj, "state_reason", "")
            .unwrap_or_else(|| "Not evaluated yet".into());
        let user_id = c.string(obj, "user_id", "");
        let project_id = c.string(obj, "project_id", "");
        let mut seconds = |key: &str| {
            let given = obj.get(key).is_some_and(|v| !v.is_null());
            given.then(|| c.integer_in(obj, key, "", 1, (1, 31_536_000)))
        };
        let options = AlarmOptions {
            no_data_grace: seconds("no_data_grace"),
            pending_for: seconds("for"),
            hold: seconds("hold"),
        };
        match rule {
            Some(rule) if c.problems.is_empty() => Ok(AlarmDefinition {
                alarm_id,
                name,
                description,
                kind: kind_name,
                enabled,
                state,
                state_reason,
                severity,
                repeat_actions,
                ok_actions,
                alarm_actions,
                insufficient_data_actions,
                time_constraints,
                rule,
                rule_json,
                user_id,
                project_id,
                options,
            }),
            _ => {
                if c.problems.is_empty() {
                    c.fail("", "the alarm has no valid rule");
                }
                Err(c.problems)
            }
        }
    }

    /// The actions for entering `state`.
    pub fn actions_for(&self, state: AlarmState) -> &[String] {
        match state {
            AlarmState::Ok => &self.ok_actions,
            AlarmState::Alarm => &self.alarm_actions,
            AlarmState::InsufficientData => &self.insufficient_data_actions,
        }
    }

    /// Every action with the field it is listed under (`alarm_actions`, `ok_actions`,
    /// `insufficient_data_actions`).
    pub fn actions(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        [
            ("alarm_actions", &self.alarm_actions),
            ("ok_actions", &self.ok_actions),
            ("insufficient_data_actions", &self.insufficient_data_actions),
        ]
        .into_iter()
        .flat_map(|(field, urls)| urls.iter().map(move |u| (field, u.as_str())))
    }

    /// The threshold rule, for the threshold types.
    pub fn threshold(&self) -> Option<&ThresholdRule> {
        match &self.rule {
            Rule::Threshold(t) => Some(t),
            _ => None,
        }
    }

    /// The definition in Aodh's JSON form (what the API returns, without the server-set
    /// state fields, which the caller adds).
    pub fn to_json(&self) -> Value {
        let mut obj = json!({
            "alarm_id": self.alarm_id,
            "name": self.name,
            "description": self.description,
            "type": self.kind,
            "enabled": self.enabled,
            "severity": self.severity.as_str(),
            "repeat_actions": self.repeat_actions,
            "ok_actions": self.ok_actions,
            "alarm_actions": self.alarm_actions,
            "insufficient_data_actions": self.insufficient_data_actions,
            "time_constraints": self.time_constraints.iter().map(|t| json!({
                "name": t.name, "start": t.start, "duration": t.duration, "timezone": t.timezone,
            })).collect::<Vec<_>>(),
            "user_id": self.user_id,
            "project_id": self.project_id,
        });
        obj[format!("{}_rule", self.kind)] = self.rule_json.clone();
        let options = [
            ("no_data_grace", self.options.no_data_grace),
            ("for", self.options.pending_for),
            ("hold", self.options.hold),
        ];
        for (key, value) in options {
            if let Some(v) = value {
                obj[key] = json!(v);
            }
        }
        obj
    }
}

fn time_constraints(c: &mut Check, v: Option<&Value>) -> Vec<TimeConstraint> {
    let items = match v {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            c.fail(
                "time_constraints",
                format!(
                    "must be a list of {{name, start, duration, timezone}}, got {}",
                    kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<TimeConstraint> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("time_constraints[{i}]");
        let Some(obj) = item.as_object() else {
            c.fail(path, format!("must be an object, got {}", kind(item)));
            continue;
        };
        for key in obj.keys() {
            if !["name", "description", "start", "duration", "timezone"].contains(&key.as_str()) {
                c.fail(
                    join(&path, key),
                    format!("unknown field {key:?} (known: name, description, start, duration, timezone)"),
                );
            }
        }
        let name = c.required_string(obj, "name", &path);
        let start = c.required_string(obj, "start", &path);
        let duration = c.integer_in(obj, "duration", &path, 0, (0, u64::MAX >> 12));
        if !obj.contains_key("duration") {
            c.fail(join(&path, "duration"), "Mandatory field missing.");
        }
        let timezone = c.string(obj, "timezone", &path).unwrap_or_default();
        if out.iter().any(|t| t.name == name) {
            c.fail(
                join(&path, "name"),
                format!("Time constraint names must be unique for a given alarm: {name:?} is used twice"),
            );
        }
        out.push(TimeConstraint {
            name,
            start,
            duration,
            timezone,
        });
    }
    out
}

/// Parses `<type>_rule`, returning it and its JSON with Aodh's defaults filled in.
fn parse_rule(c: &mut Check, kind_name: &str, v: &Value, path: &str) -> (Option<Rule>, Value) {
    match kind_name {
        "composite" => {
            let node = composite(c, v, path);
            (node.map(Rule::Composite), v.clone())
        }
        "event" => event_rule(c, v, path),
        _ => {
            let (rule, json) = threshold_rule(c, kind_name, v, path);
            (rule.map(Rule::Threshold), json)
        }
    }
}

fn threshold_rule(
    c: &mut Check,
    kind_name: &str,
    v: &Value,
    path: &str,
) -> (Option<ThresholdRule>, Value) {
    let Some(obj) = v.as_object() else {
        c.fail(path, format!("must be an object, got {}", kind(v)));
        return (None, Value::Null);
    };
    let before = c.problems.len();
    let mut known = vec![
        "comparison_operator",
        "threshold",
        "aggregation_method",
        "evaluation_periods",
        "granularity",
    ];
    let target = match kind_name {
        "gnocchi_resources_threshold" => {
            known.extend(["metric", "resource_id", "resource_type"]);
            Target::Resource {
                metric: c.required_string(obj, "metric", path),
                resource_id: c.required_string(obj, "resource_id", path),
                resource_type: c.required_string(obj, "resource_type", path),
            }
        }
        "gnocchi_aggregation_by_metrics_threshold" => {
            known.push("metrics");
            let metrics = match obj.get("metrics") {
                Some(Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| match m.as_str() {
                        Some(s) if !s.is_empty() => Some(s.to_owned()),
                        _ => {
                            c.fail(
                                format!("{path}.metrics[{i}]"),
                                "must be a metric id (a string)",
                            );
                            None
                        }
                    })
                    .collect(),
                None | Some(Value::Null) => {
                    c.fail(join(path, "metrics"), "Mandatory field missing.");
                    Vec::new()
                }
                Some(other) => {
                    c.fail(
                        join(path, "metrics"),
                        format!(
                            "must be a non-empty list of metric ids, got {}",
                            kind(other)
                        ),
                    );
                    Vec::new()
                }
            };
            Target::Metrics { metrics }
        }
        _ => {
            known.extend(["metric", "resource_type", "query"]);
            let metric = c.required_string(obj, "metric", path);
            let resource_type = c.required_string(obj, "resource_type", path);
            let query = match obj.get("query") {
                None | Some(Value::Null) => {
                    c.fail(join(path, "query"), "Mandatory field missing.");
                    Value::Null
                }
                // Aodh takes the filter as a JSON string; an object is taken as it is.
                Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|e| {
                    c.fail(
                        join(path, "query"),
                        format!("is not JSON ({e}); write a Gnocchi search filter such as '{{\"=\": {{\"server_group\": \"web\"}}}}'"),
                    );
                    Value::Null
                }),
                Some(q @ Value::Object(_)) => q.clone(),
                Some(other) => {
                    c.fail(
                        join(path, "query"),
                        format!("must be a Gnocchi search filter (JSON string), got {}", kind(other)),
                    );
                    Value::Null
                }
            };
            Target::Resources {
                metric,
                resource_type,
                query,
            }
        }
    };
    for key in obj.keys() {
        // `type` appears on composite leaves.
        if !known.contains(&key.as_str()) && key != "type" {
            c.fail(
                join(path, key),
                format!(
                    "unknown field {key:?} for {kind_name} (known: {})",
                    known.join(", ")
                ),
            );
        }
    }
    let comparison = match c.string(obj, "comparison_operator", path) {
        None => Comparison::Eq,
        Some(s) => s.parse().unwrap_or_else(|e: String| {
            c.fail(join(path, "comparison_operator"), e);
            Comparison::Eq
        }),
    };
    let threshold = c.number(obj, "threshold", path).unwrap_or_else(|| {
        if obj.get("threshold").is_none_or(Value::is_null) {
            c.fail(join(path, "threshold"), "Mandatory field missing.");
        }
        0.0
    });
    if !threshold.is_finite() {
        c.fail(join(path, "threshold"), "must be a finite number");
    }
    let method_name = c.required_string(obj, "aggregation_method", path);
    let method = if method_name.is_empty() {
        None
    } else {
        match method_name.parse::<Method>() {
            Ok(m) => Some(m),
            Err(e) => {
                c.fail(join(path, "aggregation_method"), e.to_string());
                None
            }
        }
    };
    let evaluation_periods = c.integer_in(obj, "evaluation_periods", path, 1, (1, 100)) as usize;
    let granularity = c.integer_in(obj, "granularity", path, 60, (1, 31_536_000));
    if c.problems.len() > before {
        return (None, Value::Null);
    }
    let mut json = Value::Object(obj.clone());
    json["comparison_operator"] = json!(comparison_name(comparison));
    json["threshold"] = json!(threshold);
    json["evaluation_periods"] = json!(evaluation_periods);
    json["granularity"] = json!(granularity);
    if let Target::Resources { query, .. } = &target {
        // Aodh keeps the query as the JSON string it was given.
        json["query"] = json!(query.to_string());
    }
    (
        method.map(|m| ThresholdRule {
            target,
            comparison,
            threshold,
            aggregation_method: m,
            aggregation_method_name: method_name,
            evaluation_periods,
            granularity,
        }),
        json,
    )
}

fn comparison_name(c: Comparison) -> &'static str {
    match c {
        Comparison::Lt => "lt",
        Comparison::Le => "le",
        Comparison::Eq => "eq",
        Comparison::Ne => "ne",
        Comparison::Ge => "ge",
        Comparison::Gt => "gt",
    }
}

fn composite(c: &mut Check, v: &Value, path: &str) -> Option<Composite> {
    let Some(obj) = v.as_object() else {
        c.fail(path, format!("must be {{\"and\": [...]}}, {{\"or\": [...]}} or a threshold rule with its type, got {}", kind(v)));
        return None;
    };
    if obj.len() == 1 {
        if let Some((op @ ("and" | "or"), children)) =
            obj.iter().next().map(|(k, v)| (k.as_str(), v))
        {
            let Some(items) = children.as_array().filter(|i| !i.is_empty()) else {
                c.fail(join(path, op), "must be a non-empty list of rules");
                return None;
            };
            let nodes: Vec<Option<Composite>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| composite(c, item, &format!("{path}.{op}[{i}]")))
                .collect();
            let nodes: Option<Vec<Composite>> = nodes.into_iter().collect();
            return nodes.map(|n| {
                if op == "and" {
                    Composite::And(n)
                } else {
                    Composite::Or(n)
                }
            });
        }
    }
    let leaf_type = c.required_string(obj, "type", path);
    if leaf_type.is_empty() {
        return None;
    }
    if !THRESHOLD_TYPES.contains(&leaf_type.as_str()) {
        c.fail(
            join(path, "type"),
            format!(
                "a composite leaf must be a threshold rule; type {leaf_type:?} is not one of {}",
                THRESHOLD_TYPES.join(", ")
            ),
        );
        return None;
    }
    let (rule, _) = threshold_rule(c, &leaf_type, v, path);
    rule.map(|r| Composite::Leaf(Box::new(r)))
}

fn event_rule(c: &mut Check, v: &Value, path: &str) -> (Option<Rule>, Value) {
    let Some(obj) = v.as_object() else {
        c.fail(
            path,
            format!(
                "must be an object with event_type and query, got {}",
                kind(v)
            ),
        );
        return (None, Value::Null);
    };
    for key in obj.keys() {
        if key != "event_type" && key != "query" {
            c.fail(
                join(path, key),
                format!("unknown field {key:?} for event (known: event_type, query)"),
            );
        }
    }
    let event_type = c
        .string(obj, "event_type", path)
        .unwrap_or_else(|| "*".into());
    let mut query = Vec::new();
    match obj.get("query") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}.query[{i}]");
                let Some(q) = item.as_object() else {
                    c.fail(p, "must be {field, op, value, type}");
                    continue;
                };
                let field = c.required_string(q, "field", &p);
                let op = match c.string(q, "op", &p) {
                    None => Comparison::Eq,
                    Some(s) => s.parse().unwrap_or_else(|e: String| {
                        c.fail(join(&p, "op"), e.replace("comparison_operator", "op"));
                        Comparison::Eq
                    }),
                };
                let ty = c.string(q, "type", &p).unwrap_or_default();
                let raw = q.get("value").cloned().unwrap_or(Value::Null);
                let text = match &raw {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        c.fail(join(&p, "value"), "Mandatory field missing.");
                        continue;
                    }
                    other => other.to_string(),
                };
                let value = match ty.as_str() {
                    "" | "string" => Value::String(text),
                    "integer" => match text.trim().parse::<i64>() {
                        Ok(n) => json!(n),
                        Err(_) => {
                            c.fail(join(&p, "value"), format!("{text:?} is not an integer"));
                            continue;
                        }
                    },
                    "float" => match text.trim().parse::<f64>() {
                        Ok(n) => json!(n),
                        Err(_) => {
                            c.fail(join(&p, "value"), format!("{text:?} is not a float"));
                            continue;
                        }
                    },
                    "boolean" => match text.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "on" | "y" | "t" => json!(true),
                        "false" | "0" | "no" | "off" | "n" | "f" => json!(false),
                        _ => {
                            c.fail(join(&p, "value"), format!("{text:?} is not a boolean"));
                            continue;
                        }
                    },
                    other => {
                        c.fail(
                            join(&p, "type"),
                            format!(
                                "type {other:?} is not one of: string, integer, float, boolean"
                            ),
                        );
                        continue;
                    }
                };
                query.push(EventCondition { field, op, value });
            }
        }
        Some(other) => c.fail(
            join(path, "query"),
            format!(
                "must be a list of {{field, op, value, type}}, got {}",
                kind(other)
            ),
        ),
    }
    let mut json = Value::Object(obj.clone());
    json["event_type"] = json!(event_type);
    if json.get("query").is_none_or(Value::is_null) {
        json["query"] = json!([]);
    }
    (Some(Rule::Event(EventRule { event_type, query })), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<AlarmDefinition, Vec<String>> {
        AlarmDefinition::from_json(&v, |name| format!("id-{name}"))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    fn cpu() -> Value {
        json!({
            "name": "cpu_high", "type": "gnocchi_resources_threshold",
            "alarm_actions": ["http://127.0.0.1:9/hook", "http://127.0.0.1:9/hook"],
            "gnocchi_resources_threshold_rule": {
                "metric": "cpu_util", "resource_id": "vm-1", "resource_type": "instance",
                "aggregation_method": "mean", "granularity": 300, "threshold": 80,
                "comparison_operator": "gt", "evaluation_periods": 3}
        })
    }

    #[test]
    fn options_beyond_aodh_are_off_unless_given_and_checked() {
        let plain = parse(cpu()).unwrap();
        assert_eq!(plain.options, AlarmOptions::default());
        assert!(
            plain.to_json().get("for").is_none(),
            "Aodh's shape unchanged"
        );
        let mut v = cpu();
        v["no_data_grace"] = json!(600);
        v["for"] = json!(120);
        v["hold"] = json!(300);
        let a = parse(v).unwrap();
        assert_eq!(
            a.options,
            AlarmOptions {
                no_data_grace: Some(600),
                pending_for: Some(120),
                hold: Some(300)
            }
        );
        assert_eq!(
            parse(a.to_json()).unwrap(),
            a,
            "kept through the API's JSON"
        );
        let mut bad = cpu();
        bad["for"] = json!(0);
        bad["hold"] = json!("long");
        let problems = parse(bad).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("for: Value 0 is invalid")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("hold:")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_threshold_alarm_gets_aodh_defaults() {
        let a = parse(cpu()).unwrap();
        assert_eq!(a.alarm_id, "id-cpu_high");
        assert_eq!(a.state, AlarmState::InsufficientData);
        assert_eq!(a.state_reason, "Not evaluated yet");
        assert_eq!(a.severity, Severity::Low);
        assert!(a.enabled && !a.repeat_actions);
        assert_eq!(a.description, "gnocchi_resources_threshold alarm rule");
        assert_eq!(
            a.alarm_actions,
            ["http://127.0.0.1:9/hook"],
            "duplicates dropped"
        );
        let t = a.threshold().unwrap();
        assert_eq!((t.granularity, t.evaluation_periods), (300, 3));
        assert_eq!(t.comparison, Comparison::Gt);
        let mut v = cpu();
        v["gnocchi_resources_threshold_rule"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| {
                k != "comparison_operator" && k != "granularity" && k != "evaluation_periods"
            });
        let t = parse(v).unwrap().threshold().unwrap().clone();
        assert_eq!(
            (t.comparison, t.granularity, t.evaluation_periods),
            (Comparison::Eq, 60, 1)
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let mut v = cpu();
        v["severity"] = json!("urgent");
        v["ok_actions"] = json!(["smtp://x"]);
        let rule = &mut v["gnocchi_resources_threshold_rule"];
        rule["comparison_operator"] = json!("gte");
        rule["evaluation_periods"] = json!(0);
        rule["granularity"] = json!(0);
        rule["aggregation_method"] = json!("average");
        rule.as_object_mut().unwrap().remove("threshold");
        let p = parse(v).unwrap_err().join("\n");
        for needle in [
            "severity: severity \"urgent\"",
            "ok_actions[0]: Unsupported action smtp://x",
            "gnocchi_resources_threshold_rule.comparison_operator: comparison_operator \"gte\"",
            "gnocchi_resources_threshold_rule.evaluation_periods: Value 0 is invalid",
            "gnocchi_resources_threshold_rule.granularity: Value 0 is invalid",
            "gnocchi_resources_threshold_rule.aggregation_method: unknown aggregation method",
            "gnocchi_resources_threshold_rule.threshold: Mandatory field missing.",
        ] {
            assert!(p.contains(needle), "{needle:?} not in:\n{p}");
        }
        let p = parse(json!({"name": "x", "type": "threshold"}))
            .unwrap_err()
            .join("\n");
        assert!(p.contains("Unsupported alarm type \"threshold\""), "{p}");
        let p = parse(json!({"name": "x", "type": "gnocchi_resources_threshold"}))
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("gnocchi_resources_threshold_rule must be set"),
            "{p}"
        );
        let p = parse(json!({"type": "event", "event_rule": {}, "colour": 1}))
            .unwrap_err()
            .join("\n");
        assert!(
            p.contains("name: Mandatory field missing.") && p.contains("unknown field \"colour\""),
            "{p}"
        );
    }

    #[test]
    fn composite_event_and_constraints_parse() {
        let leaf = cpu()["gnocchi_resources_threshold_rule"].clone();
        let mut l1 = leaf.clone();
        l1["type"] = json!("gnocchi_resources_threshold");
        let v = json!({"name": "c", "type": "composite",
            "composite_rule": {"and": [l1, {"or": [l1, l1]}]}});
        assert!(
            matches!(parse(v).unwrap().rule, Rule::Composite(Composite::And(ref n)) if n.len() == 2)
        );
        let v = json!({"name": "c", "type": "composite", "composite_rule": {"and": [leaf]}});
        assert!(parse(v)
            .unwrap_err()
            .join("")
            .contains("composite_rule.and[0].type: Mandatory field missing."));
        let v = json!({"name": "e", "type": "event", "event_rule": {"event_type": "compute.instance.*",
            "query": [{"field": "traits.size", "op": "gt", "value": "5", "type": "integer"}]}});
        let e = parse(v).unwrap();
        assert_eq!(
            e.description,
            "Alarm when compute.instance.* event occurred."
        );
        let Rule::Event(rule) = &e.rule else { panic!() };
        assert_eq!(rule.query[0].value, json!(5));
        let mut v = cpu();
        v["time_constraints"] = json!([{"name": "night", "start": "0 23 * *", "duration": 3600},
                                       {"name": "night", "start": "0 23 * * *", "duration": 60}]);
        let p = parse(v).unwrap_err().join("\n");
        assert!(
            p.contains("time_constraints[0].start") && p.contains("time_constraints[1].name"),
            "{p}"
        );
    }
}
