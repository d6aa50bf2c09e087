//! From a pipeline definition (Ceilometer's decoupled `pipeline.yaml`) to a validated plan.
//!
//! Parse, then validate, then build: every problem is collected with its key path, the value
//! received and what would be accepted, and `validate` and `run` share this one path. What
//! Ceilometer rejects is rejected with Ceilometer's own wording inside the message (so an
//! operator can search for it); what Ceilometer accepts is accepted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meterflow_connectors::gnocchi::alarm_uuid;
use meterflow_connectors::poll::{PollSpec, Pollster};
use meterflow_connectors::{parse_publisher, PublisherSpec};
use meterflow_operators::aggregate::{ArchivePolicy, Method};
use meterflow_operators::alarm::cross::Shape;
use meterflow_operators::alarm::definition::{AlarmDefinition, Rule, ThresholdRule};
use meterflow_operators::event::EventDefinitions;
use meterflow_operators::notification::meters::MeterDefinitions;
use meterflow_operators::notification::DefinitionProblem;
use meterflow_operators::transform::{
    build_chain, chain_partition, Chain, Partition, TransformerSpec,
};
use serde_yaml::Value;

use crate::matcher::MeterMatcher;

/// One problem in a definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `sinks[0].transformers[1].parameters.target.scale`.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Problems {
    /// Where the definition came from.
    pub origin: String,
    /// The problems, in document order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// What a source selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// Samples, by meter name (`meters:`, Ceilometer's pipeline.yaml).
    Meters,
    /// Events, by event type (`events:`, Ceilometer's event_pipeline.yaml).
    Events,
}

/// A source: which meters (or events) it takes and which sinks it feeds.
#[derive(Clone, Debug)]
pub struct SourcePlan {
    /// Its name.
    pub name: String,
    /// Whether it takes samples or events.
    pub kind: SourceKind,
    /// Its `meters` (or `events`) list.
    pub meters: Vec<String>,
    /// The compiled list.
    pub matcher: MeterMatcher,
    /// Indices into [`Plan::sinks`].
    pub sinks: Vec<usize>,
    /// What it polls when the run has no `--input` (polling.yaml's `interval` and
    /// `resources`): the host pollster, or each resource URL, every `interval` seconds.
    pub polls: Vec<PollSpec>,
}

/// A sink: its transformers and publishers.
#[derive(Clone, Debug)]
pub struct SinkPlan {
    /// Its name.
    pub name: String,
    /// Its transformers, validated.
    pub transformers: Vec<TransformerSpec>,
    /// How its samples may be spread over workers.
    pub partition: Partition,
    /// Indices into [`Plan::publishers`].
    pub publishers: Vec<usize>,
}

/// A publisher, shared by every sink that names the same URL (as Ceilometer shares them).
#[derive(Clone, Debug)]
pub struct PublisherPlan {
    /// The URL as written.
    pub url: String,
    /// Its validated form.
    pub spec: PublisherSpec,
}

/// A validated definition, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Sources in definition order.
    pub sources: Vec<SourcePlan>,
    /// Sinks in definition order.
    pub sinks: Vec<SinkPlan>,
    /// Distinct publishers.
    pub publishers: Vec<PublisherPlan>,
    /// The definition's `archive_policies` (Gnocchi's built-ins are available besides).
    pub archive_policies: Vec<ArchivePolicy>,
    /// The definition's `archive_policy_rules`, in Gnocchi's matching order, ending with
    /// Gnocchi's `default` rule (`*` → `low`) unless a rule already matches everything.
    pub archive_policy_rules: Vec<ArchivePolicyRule>,
    /// The definition's `alarms`, in Aodh's JSON form, validated.
    pub alarms: Vec<Arc<AlarmDefinition>>,
    /// Whether the definition has an `alarms:` key: then it is the whole list of the alarms
    /// it defines (one removed from it is deleted); without, the store's alarms are kept.
    pub alarms_declared: bool,
    /// Ceilometer meter definitions that turn service notifications into samples: the
    /// definition's `meter_definitions`, else the shipped ones.
    pub meters: Arc<MeterDefinitions>,
    /// Where `meters` came from, for messages (`the shipped meter_definitions`, file names).
    pub meters_from: String,
    /// Ceilometer event definitions that turn notifications into events (for event alarms):
    /// the definition's `event_definitions`, else the shipped ones.
    pub events: Arc<EventDefinitions>,
    /// Non-fatal remarks (unused sinks, ignored keys).
    pub warnings: Vec<Problem>,
}

/// Gnocchi's archive-policy rule: metrics whose name matches `metric_pattern` (fnmatch) and
/// that are created without a policy get `archive_policy_name`.
#[derive(Clone, Debug)]
pub struct ArchivePolicyRule {
    /// The rule's name.
    pub name: String,
    /// The fnmatch pattern.
    pub metric_pattern: String,
    /// The policy it gives.
    pub archive_policy_name: String,
    matcher: MeterMatcher,
}

impl ArchivePolicyRule {
    /// A rule giving metrics whose name matches `metric_pattern` (fnmatch) the policy named.
    pub fn new(name: &str, metric_pattern: &str, archive_policy_name: &str) -> ArchivePolicyRule {
        ArchivePolicyRule {
            name: name.to_owned(),
            metric_pattern: metric_pattern.to_owned(),
            archive_policy_name: archive_policy_name.to_owned(),
            matcher: MeterMatcher::new(&[metric_pattern.to_owned()]),
        }
    }
}

/// The policy the first of `rules` (in matching order) that accepts `metric` gives.
pub fn policy_by_rules<'a>(rules: &'a [ArchivePolicyRule], metric: &str) -> Option<&'a str> {
    rules
        .iter()
        .find(|r| r.matcher.accepts(metric))
        .map(|r| r.archive_policy_name.as_str())
}

/// Gnocchi's order: metric_pattern descending as a string, then name ascending.
fn sort_rules(rules: &mut [ArchivePolicyRule]) {
    rules.sort_by(|a, b| {
        b.metric_pattern
            .cmp(&a.metric_pattern)
            .then(a.name.cmp(&b.name))
    });
}

/// Reading a definition file failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file could not be read.
    #[error("cannot read pipeline definition {path}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The definition has problems.
    #[error(transparent)]
    Invalid(#[from] Problems),
}

const SOURCE_KEYS: &[&str] = &[
    "name",
    "meters",
    "events",
    "sinks",
    "interval",
    "resources",
    "discovery",
];
const SINK_KEYS: &[&str] = &["name", "transformers", "publishers"];

impl Plan {
    /// Reads and validates a definition file.
    pub fn from_path(path: &Path) -> Result<Plan, PlanError> {
        let max = meterflow_engine::files::MAX_DEFINITION_BYTES;
        let text =
            meterflow_engine::files::read_text(path, max).map_err(|source| PlanError::Read {
                path: path.display().to_string(),
                source,
            })?;
        let base = path.parent().map(Path::to_path_buf);
        Ok(Plan::parse(&text, &path.display().to_string(), base)?)
    }

    /// Validates a definition; `origin` names it in messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Plan, Problems> {
        Plan::parse(text, origin, None)
    }

    fn parse(text: &str, origin: &str, base: Option<std::path::PathBuf>) -> Result<Plan, Problems> {
        let fail = |problems: Vec<Problem>| Problems {
            origin: origin.to_owned(),
            problems,
        };
        // A definition written as JSON (a generated one, a million alarms) is read as JSON,
        // an order of magnitude faster; anything else, or JSON that does not parse, as YAML
        // (JSON is YAML), which reports the place of an error.
        // Its alarms stay JSON (the form Aodh's parser takes), never converted to YAML's tree.
        let json = text.trim_start().starts_with('{');
        let parsed = json
            .then(|| serde_json::from_str::<serde_json::Value>(text).ok())
            .flatten()
            .and_then(|mut root| {
                let alarms = root.as_object_mut()?.shift_remove("alarms");
                let mut root: Value = serde_yaml::to_value(&root).ok()?;
                if alarms.is_some() {
                    // Declared (an `alarms:` key), read from the JSON.
                    root.as_mapping_mut()?.insert("alarms".into(), Value::Null);
                }
                Some((root, alarms))
            });
        let (root, json_alarms) = match parsed {
            Some(parsed) => parsed,
            None => (
                meterflow_engine::files::check_nesting(text)
                    .map_err(|message| {
                        fail(vec![Problem {
                            path: String::new(),
                            message: format!("not valid here: {message}"),
                        }])
                    })
                    .and_then(|()| {
                        serde_yaml::from_str(text).map_err(|e| {
                            let at = e
                                .location()
                                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                                .unwrap_or_default();
                            fail(vec![Problem {
                                path: at,
                                message: format!("not valid YAML: {e}"),
                            }])
                        })
                    })?,
                None,
            ),
        };
        let mut v = Validator {
            base,
            json_alarms,
            ..Validator::default()
        };
        let plan = v.plan(&root);
        if v.problems.is_empty() {
            let mut plan = plan.expect("a plan when there are no problems");
            plan.warnings = v.warnings;
            Ok(plan)
        } else {
            Err(fail(v.problems))
        }
    }

    /// Indices of the sinks a sample of `meter` goes to: each sink once, even when several
    /// sources route the meter to it.
    pub fn route(&self, meter: &str) -> Vec<u16> {
        let mut sinks = BTreeSet::new();
        for source in &self.sources {
            if source.kind == SourceKind::Meters && source.matcher.accepts(meter) {
                sinks.extend(source.sinks.iter().map(|&s| s as u16));
            }
        }
        sinks.into_iter().collect()
    }

    /// The sinks an event of `event_type` goes to (through every event source that accepts
    /// it) and their publishers, each once.
    pub fn event_route(&self, event_type: &str) -> (Vec<u16>, Vec<usize>) {
        let mut sinks = BTreeSet::new();
        for source in &self.sources {
            if source.kind == SourceKind::Events && source.matcher.accepts(event_type) {
                sinks.extend(source.sinks.iter().map(|&k| k as u16));
            }
        }
        let publishers: BTreeSet<usize> = sinks
            .iter()
            .flat_map(|&k| self.sinks[usize::from(k)].publishers.iter().copied())
            .collect();
        (
            sinks.into_iter().collect(),
            publishers.into_iter().collect(),
        )
    }

    /// What the definition's polling sources poll when a run is given no input: each
    /// resource URL of each source with an `interval`, and the host once (at the shortest
    /// interval of the sources that poll it).
    pub fn polling_inputs(&self) -> Vec<PollSpec> {
        let mut host: Option<PollSpec> = None;
        let mut polls: Vec<PollSpec> = Vec::new();
        for spec in self.sources.iter().flat_map(|s| &s.polls) {
            match spec.pollster {
                Pollster::Host => {
                    if host.as_ref().is_none_or(|h| spec.interval < h.interval) {
                        host = Some(spec.clone());
                    }
                }
                _ if polls.contains(spec) => {}
                _ => polls.push(spec.clone()),
            }
        }
        host.into_iter().chain(polls).collect()
    }

    /// Whether the definition has event sources (notifications then become events that are
    /// published).
    pub fn publishes_events(&self) -> bool {
        self.sources.iter().any(|s| s.kind == SourceKind::Events)
    }

    /// Whether publisher `p` (an index into `publishers`) is a sink's of an event source.
    pub fn publishes_events_to(&self, p: usize) -> bool {
        self.sources
            .iter()
            .filter(|s| s.kind == SourceKind::Events)
            .flat_map(|s| &s.sinks)
            .any(|&k| self.sinks[k].publishers.contains(&p))
    }

    /// The archive policy called `name`: the definition's, else Gnocchi's or Ceilometer's
    /// built-in one.
    pub fn archive_policy(&self, name: &str) -> Option<ArchivePolicy> {
        self.archive_policies
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .or_else(|| ArchivePolicy::builtin(name))
    }

    /// The policy Gnocchi's rules give a new metric called `metric`: rules are tried by
    /// `metric_pattern` descending (as strings), then name; the first match wins.
    pub fn policy_for_metric(&self, metric: &str) -> Option<&str> {
        policy_by_rules(&self.archive_policy_rules, metric)
    }

    /// The definition's rules with those created through the API (`stored`, Gnocchi's JSON
    /// by name; one that does not read is left out), in Gnocchi's matching order.
    pub fn rules_with(
        &self,
        stored: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Vec<ArchivePolicyRule> {
        let mut rules = self.archive_policy_rules.clone();
        for (name, rule) in stored {
            let text = |k: &str| rule.get(k).and_then(serde_json::Value::as_str);
            if let (Some(pattern), Some(policy)) =
                (text("metric_pattern"), text("archive_policy_name"))
            {
                rules.push(ArchivePolicyRule::new(name, pattern, policy));
            }
        }
        sort_rules(&mut rules);
        rules
    }

    /// Why no meter definition turns notifications of `event_type` into samples, if none does.
    pub fn unmetered(&self, event_type: &str) -> Option<String> {
        (!self.meters.matches(event_type)).then(|| format!(
            "notification {event_type:?} skipped: no meter definition takes this event_type (loaded: {}); add one under meter_definitions: to turn it into samples",
            self.meters_from
        ))
    }

    /// Whether the definition has event alarms (notifications then also become events).
    pub fn has_event_alarms(&self) -> bool {
        self.alarms.iter().any(|a| matches!(a.rule, Rule::Event(_)))
    }

    /// Whether any sink publishes to the embedded store.
    pub fn uses_store(&self) -> bool {
        self.publishers
            .iter()
            .any(|p| matches!(p.spec, PublisherSpec::Gnocchi(_)))
    }

    /// Fresh transformer chains, one per sink (each worker builds its own).
    pub fn build_chains(&self) -> Vec<Chain> {
        self.sinks
            .iter()
            .map(|s| build_chain(&s.transformers).unwrap_or_else(|_| unreachable!("validated")))
            .collect()
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The directory of the definition file, for files it names by relative path.
    base: Option<std::path::PathBuf>,
    /// A JSON definition's `alarms`, read as they are (see [`Plan::from_yaml`]).
    json_alarms: Option<serde_json::Value>,
}

/// The alarms of a definition as they are read.
struct Alarmset<'p> {
    out: Vec<Arc<AlarmDefinition>>,
    /// Where each name and id is defined (a million alarms are checked in linear time).
    seen: HashMap<String, String>,
    policies: &'p [ArchivePolicy],
}

/// Why a valid `alarm` could not run next to archive `policies` (Gnocchi's built-in ones
/// count too), if it could not: (the field at fault, what is wrong and what to do).
pub fn cannot_run(alarm: &AlarmDefinition, policies: &[ArchivePolicy]) -> Option<(String, String)> {
    let field = format!("{}_rule", alarm.kind);
    // Each threshold rule (a composite's leaves) and the series it reads from a metric.
    let rules: Vec<(&ThresholdRule, Method)> = match Shape::of(alarm) {
        Some(Err(e)) => return Some((field, e)),
        Some(Ok(shape)) => shape
            .leaves
            .iter()
            .map(|l| (l.rule, l.reading.series))
            .collect(),
        None => {
            let rule = alarm.threshold()?;
            vec![(rule, rule.aggregation_method)]
        }
    };
    let all: Vec<&ArchivePolicy> = policies.iter().chain(ArchivePolicy::builtins()).collect();
    for (i, (rule, method)) in rules.iter().enumerate() {
        let g = rule.granularity as i64 * 1_000_000_000;
        let fits = |p: &&ArchivePolicy| {
            p.definition.iter().any(|d| d.granularity == g) && p.methods.contains(method)
        };
        if all.iter().any(fits) {
            continue;
        }
        let known: Vec<String> = all
            .iter()
            .map(|p| {
                let gs: Vec<String> = p
                    .definition
                    .iter()
                    .map(|d| (d.granularity / 1_000_000_000).to_string())
                    .collect();
                format!("{} ({} s)", p.name, gs.join(", "))
            })
            .collect();
        let which = match alarm.rule {
            Rule::Composite(_) => format!(" (rule{})", i + 1),
            _ => String::new(),
        };
        return Some((
            field,
            format!(
                "no archive policy aggregates {method} at granularity {} s{which}, so the alarm could never be evaluated; use a granularity and method of the metric's policy: {}",
                rule.granularity,
                known.join("; ")
            ),
        ));
    }
    None
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn list<'v>(&mut self, v: Option<&'v Value>, path: &str, what: &str) -> Option<&'v [Value]> {
        match v {
            Some(Value::Sequence(items)) => Some(items),
            Some(Value::Null) | None => None,
            Some(other) => {
                self.problem(
                    path,
                    format!("must be a list of {what}, got {}", describe(other)),
                );
                None
            }
        }
    }

    /// The items of list `path` with their places, each to be read as JSON (the form
    /// Gnocchi's and Aodh's parsers take) by [`Validator::json`] when its turn comes: a
    /// million alarms are never all held twice.
    fn items<'v>(
        &mut self,
        v: Option<&'v Value>,
        path: &str,
        what: &str,
    ) -> impl Iterator<Item = (String, &'v Value)> + 'v {
        let path = path.to_owned();
        let items = self.list(v, &path, what).unwrap_or_default();
        items
            .iter()
            .enumerate()
            .map(move |(i, item)| (format!("{path}[{i}]"), item))
    }

    /// `item` as JSON; one YAML can hold but JSON cannot is reported and left out.
    fn json(&mut self, place: &str, item: &Value) -> Option<serde_json::Value> {
        serde_json::to_value(item)
            .map_err(|e| self.problem(place, format!("not representable as JSON: {e}")))
            .ok()
    }

    fn unknown_keys(&mut self, map: &serde_yaml::Mapping, path: &str, known: &[&str]) {
        for key in map.keys() {
            let k = key.as_str().unwrap_or("");
            if !known.contains(&k) {
                self.problem(
                    format!("{path}.{}", k),
                    format!(
                        "unknown key {} (known: {})",
                        describe(key),
                        known.join(", ")
                    ),
                );
            }
        }
    }

    fn name(&mut self, map: &serde_yaml::Mapping, path: &str) -> Option<String> {
        match map.get("name") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Value::Null) => {
                self.problem(format!("{path}.name"), "Required field name not specified");
                None
            }
            Some(other) => {
                self.problem(
                    format!("{path}.name"),
                    format!("must be a non-empty string, got {}", describe(other)),
                );
                None
            }
        }
    }

    fn plan(&mut self, root: &Value) -> Option<Plan> {
        let Value::Mapping(root) = root else {
            self.problem(
                "",
                format!(
                    "a pipeline definition must be a mapping with sources: and sinks:, got {}",
                    describe(root)
                ),
            );
            return None;
        };
        for key in root.keys() {
            match key.as_str() {
                Some(
                    "sources" | "sinks" | "archive_policies" | "archive_policy_rules" | "alarms"
                    | "meter_definitions" | "event_definitions",
                ) => {}
                _ => self.problem(
                    key.as_str().unwrap_or("?"),
                    format!("unknown top-level key {} (known: sources, sinks, archive_policies, archive_policy_rules, alarms, meter_definitions, event_definitions)", describe(key)),
                ),
            }
        }
        let (Some(sources_v), Some(sinks_v)) = (root.get("sources"), root.get("sinks")) else {
            self.problem("", "Both sources & sinks are required: a pipeline definition needs a sources: list and a sinks: list");
            return None;
        };
        let archive_policies = self.archive_policies(root.get("archive_policies"));
        let known_policy = |name: &str| {
            archive_policies.iter().any(|p| p.name == name)
                || ArchivePolicy::builtin(name).is_some()
        };
        let policy_names = || {
            let mut names: Vec<&str> = archive_policies.iter().map(|p| p.name.as_str()).collect();
            names.extend(ArchivePolicy::BUILTIN);
            names.join(", ")
        };
        let archive_policy_rules = self.archive_policy_rules(
            root.get("archive_policy_rules"),
            &known_policy,
            &policy_names,
        );
        let sinks = self.sinks(sinks_v, &known_policy, &policy_names);
        let sources = self.sources(sources_v, &sinks);
        let mut archive_policies = archive_policies;
        self.resource_definition_policies(&sinks, &mut archive_policies);
        let alarms = self.alarms(root.get("alarms"), &archive_policies);
        let (meters, meters_from) = self.meter_definitions(root.get("meter_definitions"));
        let (events, _) = self.event_definitions(root.get("event_definitions"));
        let mut used = vec![false; sinks.len()];
        for s in &sources {
            for &k in &s.sinks {
                used[k] = true;
            }
        }
        for (i, sink) in sinks.iter().enumerate() {
            if !used[i] {
                self.warn(
                    format!("sinks[{i}]"),
                    format!("sink {:?} is not used by any source", sink.0.name),
                );
            }
        }
        let mut publishers: Vec<PublisherPlan> = Vec::new();
        let sinks = sinks
            .into_iter()
            .map(|(mut sink, urls)| {
                for (url, spec) in urls {
                    let index = match publishers.iter().position(|p| p.url == url) {
                        Some(i) => i,
                        None => {
                            publishers.push(PublisherPlan { url, spec });
                            publishers.len() - 1
                        }
                    };
                    sink.publishers.push(index);
                }
                sink
            })
            .collect();
        if alarms.iter().any(|a| !matches!(a.rule, Rule::Event(_)))
            && !publishers
                .iter()
                .any(|p| matches!(p.spec, PublisherSpec::Gnocchi(_)))
        {
            self.warn(
                "alarms",
                "no sink publishes to gnocchi://, so the alarms only see measures POSTed to the API (run --listen); add gnocchi:// to the publishers of the sink whose meters they watch",
            );
        }
        Some(Plan {
            sources,
            sinks,
            publishers,
            archive_policies,
            archive_policy_rules,
            alarms,
            alarms_declared: root.contains_key("alarms"),
            meters,
            meters_from,
            events,
            warnings: Vec::new(),
        })
    }

    /// The documents a definition-file key names: a file or a directory (its `*.yaml` in name
    /// order), a list of those, or the definitions inline (a mapping, or a list of mappings);
    /// without the key, `shipped`; `[]` for none. Also says where they came from.
    fn definition_files(
        &mut self,
        key: &str,
        v: Option<&Value>,
        shipped: &[(&str, &str)],
    ) -> (Vec<(String, String)>, String) {
        let mut files: Vec<(String, String)> = Vec::new();
        let mut read = |v: &mut Validator, place: String, name: &str| {
            let given = Path::new(name);
            let path = match &v.base {
                Some(base) if given.is_relative() && base.join(given).exists() => base.join(given),
                _ => given.to_path_buf(),
            };
            let listed = if path.is_dir() {
                match std::fs::read_dir(&path) {
                    Ok(entries) => {
                        let mut yaml: Vec<std::path::PathBuf> = entries
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                            .collect();
                        yaml.sort();
                        yaml
                    }
                    Err(e) => {
                        v.problem(place, format!("cannot list {}: {e}", path.display()));
                        return;
                    }
                }
            } else {
                vec![path]
            };
            for file in listed {
                let max = meterflow_engine::files::MAX_INCLUDED_BYTES;
                match meterflow_engine::files::read_text(&file, max) {
                    Ok(text) => files.push((file.display().to_string(), text)),
                    Err(e) => v.problem(
                        place.clone(),
                        format!("cannot read {}: {e}; give a definitions file or a directory of them, relative to the definition", file.display()),
                    ),
                }
            }
        };
        let inline = |v: &mut Validator, value: &Value, files: &mut Vec<(String, String)>| {
            match serde_yaml::to_string(value) {
                Ok(text) => files.push((String::new(), text)),
                Err(e) => v.problem(key, e.to_string()),
            }
        };
        let all_names = |items: &[Value]| items.iter().all(|i| matches!(i, Value::String(_)));
        match v {
            None => {
                let files = shipped
                    .iter()
                    .map(|(name, text)| (format!("shipped {name}"), (*text).to_owned()))
                    .collect();
                return (files, format!("the shipped {key}"));
            }
            Some(Value::Null) => {}
            Some(Value::String(name)) => read(self, key.into(), name),
            Some(Value::Sequence(items)) if all_names(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::String(name) = item {
                        read(self, format!("{key}[{i}]"), name);
                    }
                }
            }
            Some(value @ (Value::Mapping(_) | Value::Sequence(_))) => {
                inline(self, value, &mut files);
                return (files, format!("the definition's {key}"));
            }
            Some(other) => self.problem(
                key,
                format!("must be a definitions file or directory name, a list of them, or the definitions inline, got {}", describe(other)),
            ),
        }
        let from = if files.is_empty() {
            format!("no {key} ({key} is empty)")
        } else {
            files
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        (files, from)
    }

    fn definition_problems(&mut self, key: &str, problems: Vec<DefinitionProblem>) {
        for p in problems {
            let place = match p.file.as_str() {
                "" => format!(
                    "{key}{}{}",
                    if p.place.starts_with('[') { "" } else { "." },
                    p.place
                ),
                file => format!("{key}: {file}: {}", p.place),
            };
            self.problem(place, p.message);
        }
    }

    /// `meter_definitions:` (Ceilometer's `meters.yaml` / `meters.d`); the shipped ones without.
    fn meter_definitions(&mut self, v: Option<&Value>) -> (Arc<MeterDefinitions>, String) {
        const KEY: &str = "meter_definitions";
        if v.is_none() {
            // The shipped ones are read once per process (they take milliseconds to compile).
            // Shared, not copied: a plan is cheap to build again (validate, the fuzzer).
            static SHIPPED: std::sync::OnceLock<Arc<MeterDefinitions>> = std::sync::OnceLock::new();
            let shipped = SHIPPED.get_or_init(|| {
                let (files, _) =
                    self.definition_files(KEY, None, &crate::shipped::METER_DEFINITIONS);
                Arc::new(MeterDefinitions::load(&files).0)
            });
            return (shipped.clone(), format!("the shipped {KEY}"));
        }
        let (files, from) = self.definition_files(KEY, v, &crate::shipped::METER_DEFINITIONS);
        let (meters, problems) = MeterDefinitions::load(&files);
        self.definition_problems(KEY, problems);
        (Arc::new(meters), from)
    }

    /// `event_definitions:` (Ceilometer's `event_definitions.yaml`); the shipped ones without.
    fn event_definitions(&mut self, v: Option<&Value>) -> (Arc<EventDefinitions>, String) {
        const KEY: &str = "event_definitions";
        if v.is_none() {
            static SHIPPED: std::sync::OnceLock<Arc<EventDefinitions>> = std::sync::OnceLock::new();
            let shipped = SHIPPED.get_or_init(|| {
                let (files, _) =
                    self.definition_files(KEY, None, &crate::shipped::EVENT_DEFINITIONS);
                Arc::new(EventDefinitions::load(&files, false).0)
            });
            return (shipped.clone(), format!("the shipped {KEY}"));
        }
        let (files, from) = self.definition_files(KEY, v, &crate::shipped::EVENT_DEFINITIONS);
        let (events, problems) = EventDefinitions::load(&files, false);
        self.definition_problems(KEY, problems);
        (Arc::new(events), from)
    }

    /// Adds the policies `gnocchi://` publishers' resource definition files create (as
    /// Ceilometer creates them when missing), and checks every policy those files name.
    fn resource_definition_policies(
        &mut self,
        sinks: &[(SinkPlan, Vec<(String, PublisherSpec)>)],
        policies: &mut Vec<ArchivePolicy>,
    ) {
        let mut named = Vec::new();
        for (k, (_, urls)) in sinks.iter().enumerate() {
            for (j, (_, spec)) in urls.iter().enumerate() {
                let PublisherSpec::Gnocchi(options) = spec else {
                    continue;
                };
                let Some(definitions) = &options.resources else {
                    continue;
                };
                let path = format!("sinks[{k}].publishers[{j}]");
                for (i, json) in definitions.archive_policies.iter().enumerate() {
                    match ArchivePolicy::from_json(json) {
                        Ok(policy) => match policies.iter().find(|p| p.name == policy.name) {
                            Some(existing) if *existing != policy => self.problem(
                                &path,
                                format!(
                                    "{}: archive_policies[{i}] defines {:?} differently from the definition's archive_policies; give one of them another name",
                                    definitions.origin, policy.name
                                ),
                            ),
                            Some(_) => {}
                            None => policies.push(policy),
                        },
                        Err(e) => self.problem(
                            &path,
                            format!("{}: archive_policies[{i}]: {e}", definitions.origin),
                        ),
                    }
                }
                named.extend(
                    definitions
                        .policy_names()
                        .into_iter()
                        .map(|(name, place)| (path.clone(), name, place)),
                );
            }
        }
        for (path, name, place) in named {
            if !policies.iter().any(|p| p.name == name) && ArchivePolicy::builtin(&name).is_none() {
                let mut known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                known.extend(ArchivePolicy::BUILTIN);
                self.problem(
                    path,
                    format!(
                        "{place}: archive policy {name:?} does not exist; define it under archive_policies: (in the definition or the file) or use one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// A `gnocchi://` URL whose `resources_definition_file` is a relative path that exists
    /// beside the definition file, with that path made absolute (else the working directory's
    /// file is meant, as given).
    fn relative_files(&self, url: &str) -> String {
        const KEY: &str = "resources_definition_file=";
        let (Some(base), Some(at)) = (&self.base, url.find(KEY)) else {
            return url.to_owned();
        };
        let start = at + KEY.len();
        let end = url[start..].find('&').map_or(url.len(), |i| start + i);
        let file = Path::new(&url[start..end]);
        let beside = base.join(file);
        if !url.starts_with("gnocchi:") || file.is_absolute() || !beside.is_file() {
            return url.to_owned();
        }
        format!("{}{}{}", &url[..start], beside.display(), &url[end..])
    }

    /// `alarms:`: each in Aodh's JSON form; names unique (an alarm without `alarm_id` is
    /// identified by its name); a threshold rule's granularity and method must exist in some
    /// archive policy (which metric gets which policy is only known once it exists).
    fn alarms(
        &mut self,
        v: Option<&Value>,
        policies: &[ArchivePolicy],
    ) -> Vec<Arc<AlarmDefinition>> {
        let mut alarms = Alarmset {
            out: Vec::new(),
            seen: HashMap::new(),
            policies,
        };
        match self.json_alarms.take() {
            Some(serde_json::Value::Array(items)) => {
                for (i, json) in items.into_iter().enumerate() {
                    self.alarm(format!("alarms[{i}]"), &json, &mut alarms);
                }
            }
            Some(serde_json::Value::Null) | None => {
                for (path, item) in self.items(v, "alarms", "alarms in Aodh's JSON form") {
                    if let Some(json) = self.json(&path, item) {
                        self.alarm(path, &json, &mut alarms);
                    }
                }
            }
            Some(other) => self.problem(
                "alarms",
                format!(
                    "must be a list of alarms in Aodh's JSON form, got {}",
                    describe(&serde_yaml::to_value(&other).unwrap_or(Value::Null))
                ),
            ),
        }
        alarms.out
    }

    /// One alarm of `alarms:`, at `path`, added to `alarms` if valid and new.
    fn alarm(&mut self, path: String, json: &serde_json::Value, alarms: &mut Alarmset) {
        let alarm = match AlarmDefinition::from_json(json, alarm_uuid) {
            Ok(alarm) => alarm,
            Err(problems) => {
                for p in problems {
                    let place = if p.path.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}.{}", p.path)
                    };
                    self.problem(place, p.message);
                }
                return;
            }
        };
        let twice = [&alarm.name, &alarm.alarm_id]
            .into_iter()
            .find_map(|key| alarms.seen.get(key.as_str()));
        if let Some(first) = twice {
            self.problem(
                format!("{path}.name"),
                format!("alarm {:?} is defined twice (also {first}); alarms in a definition are known by name, so give each its own", alarm.name),
            );
            return;
        }
        if let Some((field, why)) = cannot_run(&alarm, alarms.policies) {
            self.problem(format!("{path}.{field}"), why);
            return;
        }
        alarms.seen.insert(alarm.name.clone(), path.clone());
        alarms.seen.insert(alarm.alarm_id.clone(), path);
        alarms.out.push(Arc::new(alarm));
    }

    fn archive_policies(&mut self, v: Option<&Value>) -> Vec<ArchivePolicy> {
        let mut out: Vec<ArchivePolicy> = Vec::new();
        let what = "archive policies in Gnocchi's JSON form";
        for (path, item) in self.items(v, "archive_policies", what) {
            let Some(json) = self.json(&path, item) else {
                continue;
            };
            match ArchivePolicy::from_json(&json) {
                Ok(p) if out.iter().any(|q| q.name == p.name) => self.problem(
                    format!("{path}.name"),
                    format!("Archive policy {} already exists (defined twice)", p.name),
                ),
                Ok(p) => out.push(p),
                Err(e) => self.problem(
                    path,
                    format!("{e}; a policy is {{name, back_window, aggregation_methods, definition: [{{granularity, points | timespan}}]}}"),
                ),
            }
        }
        out
    }

    fn archive_policy_rules(
        &mut self,
        v: Option<&Value>,
        known_policy: &dyn Fn(&str) -> bool,
        policy_names: &dyn Fn() -> String,
    ) -> Vec<ArchivePolicyRule> {
        let mut out: Vec<ArchivePolicyRule> = Vec::new();
        if let Some(items) = self.list(
            v,
            "archive_policy_rules",
            "{name, metric_pattern, archive_policy_name}",
        ) {
            for (i, item) in items.iter().enumerate() {
                let path = format!("archive_policy_rules[{i}]");
                let field = |key: &str| {
                    item.get(key)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                };
                let (Some(name), Some(pattern), Some(policy)) = (
                    field("name"),
                    field("metric_pattern"),
                    field("archive_policy_name"),
                ) else {
                    self.problem(path, "an archive policy rule needs name, metric_pattern and archive_policy_name (strings)");
                    continue;
                };
                if let Value::Mapping(map) = item {
                    self.unknown_keys(
                        map,
                        &path,
                        &["name", "metric_pattern", "archive_policy_name"],
                    );
                }
                if !known_policy(policy) {
                    self.problem(
                        format!("{path}.archive_policy_name"),
                        format!(
                            "archive policy {policy:?} does not exist; known: {}",
                            policy_names()
                        ),
                    );
                }
                if out.iter().any(|r| r.name == name) {
                    self.problem(
                        format!("{path}.name"),
                        format!("Archive policy rule {name} already exists"),
                    );
                }
                out.push(ArchivePolicyRule::new(name, pattern, policy));
            }
        }
        sort_rules(&mut out);
        if !out.iter().any(|r| r.metric_pattern == "*") {
            out.push(ArchivePolicyRule::new("default", "*", "low"));
        }
        out
    }

    fn sinks(
        &mut self,
        v: &Value,
        known_policy: &dyn Fn(&str) -> bool,
        policy_names: &dyn Fn() -> String,
    ) -> Vec<(SinkPlan, Vec<(String, PublisherSpec)>)> {
        let mut out = Vec::new();
        let Some(items) = self.list(Some(v), "sinks", "sinks") else {
            self.problem("sinks", "needs at least one sink");
            return out;
        };
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("sinks[{i}]");
            let Value::Mapping(map) = item else {
                self.problem(
                    path,
                    format!(
                        "must be a mapping with name, transformers, publishers; got {}",
                        describe(item)
                    ),
                );
                continue;
            };
            self.unknown_keys(map, &path, SINK_KEYS);
            let name = self.name(map, &path);
            if let Some(n) = &name {
                if !seen.insert(n.clone()) {
                    self.problem(
                        format!("{path}.name"),
                        format!("Duplicated sink names: {n}"),
                    );
                }
            }
            let mut transformers = Vec::new();
            if let Some(list) = self.list(
                map.get("transformers"),
                &format!("{path}.transformers"),
                "{name, parameters}",
            ) {
                for (j, t) in list.iter().enumerate() {
                    let tpath = format!("{path}.transformers[{j}]");
                    match serde_yaml::from_value::<TransformerSpec>(t.clone()) {
                        Ok(spec) => transformers.push(spec),
                        Err(e) => self.problem(
                            tpath,
                            format!(
                                "{e}; a transformer is {{name: <one of {}>, parameters: {{...}}}}",
                                meterflow_operators::transform::known_names()
                            ),
                        ),
                    }
                }
                if let Err(problems) = build_chain(&transformers) {
                    for p in problems {
                        self.problem(
                            format!("{path}.transformers[{}].{}", p.index, p.path),
                            p.message,
                        );
                    }
                }
            }
            let mut publishers = Vec::new();
            match self.list(map.get("publishers"), &format!("{path}.publishers"), "publisher URLs") {
                Some(list) if !list.is_empty() => {
                    for (j, p) in list.iter().enumerate() {
                        let ppath = format!("{path}.publishers[{j}]");
                        let Some(url) = p.as_str() else {
                            self.problem(ppath, format!("must be a URL string, got {}", describe(p)));
                            continue;
                        };
                        match parse_publisher(&self.relative_files(url)) {
                            Ok(PublisherSpec::Gnocchi(options))
                                if options.archive_policy.as_deref().is_some_and(|n| !known_policy(n)) =>
                            {
                                self.problem(
                                    ppath,
                                    format!(
                                        "archive policy {:?} does not exist; define it under archive_policies: or use one of: {}",
                                        options.archive_policy.unwrap_or_default(),
                                        policy_names()
                                    ),
                                );
                            }
                            Ok(spec) => publishers.push((url.to_owned(), spec)),
                            Err(e) => self.problem(ppath, e),
                        }
                    }
                }
                _ => self.problem(
                    format!("{path}.publishers"),
                    "No publisher specified; list at least one, e.g. publishers: [file:///var/lib/meterflow/samples.jsonl]",
                ),
            }
            out.push((
                SinkPlan {
                    name: name.unwrap_or_default(),
                    partition: chain_partition(&transformers),
                    transformers,
                    publishers: Vec::new(),
                },
                publishers,
            ));
        }
        out
    }

    fn sources(
        &mut self,
        v: &Value,
        sinks: &[(SinkPlan, Vec<(String, PublisherSpec)>)],
    ) -> Vec<SourcePlan> {
        let mut out = Vec::new();
        let Some(items) = self.list(Some(v), "sources", "sources") else {
            self.problem("sources", "needs at least one source");
            return out;
        };
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("sources[{i}]");
            let Value::Mapping(map) = item else {
                self.problem(
                    path,
                    format!(
                        "must be a mapping with name, meters, sinks; got {}",
                        describe(item)
                    ),
                );
                continue;
            };
            self.unknown_keys(map, &path, SOURCE_KEYS);
            let name = self.name(map, &path);
            let label = name.clone().unwrap_or_else(|| format!("#{i}"));
            if let Some(n) = &name {
                if !seen.insert(n.clone()) {
                    self.problem(
                        format!("{path}.name"),
                        format!("Duplicated source names: {n}"),
                    );
                }
            }
            let kind = if map.contains_key("events") {
                SourceKind::Events
            } else {
                SourceKind::Meters
            };
            let meters = match kind {
                SourceKind::Events if map.contains_key("meters") => {
                    self.problem(
                        path.clone(),
                        format!("source {label} has both meters: and events:; a source takes either samples (meters:) or events (events:), so split it in two"),
                    );
                    Vec::new()
                }
                SourceKind::Events => {
                    self.meters(map.get("events"), &format!("{path}.events"), &label)
                }
                SourceKind::Meters => {
                    self.meters(map.get("meters"), &format!("{path}.meters"), &label)
                }
            };
            let mut polls = Vec::new();
            if let Some(interval) = map.get("interval") {
                match interval.as_u64().filter(|n| *n > 0) {
                    None => self.problem(
                        format!("{path}.interval"),
                        format!(
                            "must be a positive integer (seconds), got {}",
                            describe(interval)
                        ),
                    ),
                    Some(seconds) => {
                        polls =
                            self.polls(map.get("resources"), seconds, &format!("{path}.resources"));
                    }
                }
            }
            for key in ["resources", "discovery"] {
                if let Some(v) = map.get(key) {
                    if !matches!(v, Value::Sequence(_) | Value::Null) {
                        self.problem(
                            format!("{path}.{key}"),
                            format!("must be a list, got {}", describe(v)),
                        );
                    }
                }
            }
            let mut sink_ids = Vec::new();
            match map.get("sinks") {
                None | Some(Value::Null) => self.problem(
                    format!("{path}.sinks"),
                    "Required field sinks not specified",
                ),
                Some(v) => match self.list(Some(v), &format!("{path}.sinks"), "sink names") {
                    Some([]) => self.problem(
                        format!("{path}.sinks"),
                        format!("No sink defined in source {label}"),
                    ),
                    Some(list) => {
                        for (j, s) in list.iter().enumerate() {
                            let Some(sink) = s.as_str() else {
                                self.problem(
                                    format!("{path}.sinks[{j}]"),
                                    format!("must be a sink name, got {}", describe(s)),
                                );
                                continue;
                            };
                            match sinks.iter().position(|(k, _)| k.name == sink) {
                                Some(k) if sink_ids.contains(&k) => self.problem(
                                    format!("{path}.sinks[{j}]"),
                                    format!("Duplicate pipeline name: {label}:{sink} (sink listed twice)"),
                                ),
                                Some(k) => sink_ids.push(k),
                                None => self.problem(
                                    format!("{path}.sinks[{j}]"),
                                    format!(
                                        "Dangling sink {sink} from source {label}; defined sinks: {}",
                                        sinks.iter().map(|(k, _)| k.name.as_str()).collect::<Vec<_>>().join(", ")
                                    ),
                                ),
                            }
                        }
                    }
                    None => {}
                },
            }
            if kind == SourceKind::Events {
                for &k in &sink_ids {
                    self.event_sink(&sinks[k], k, &label);
                }
            }
            out.push(SourcePlan {
                name: label,
                kind,
                matcher: MeterMatcher::new(&meters),
                meters,
                sinks: sink_ids,
                polls,
            });
        }
        out
    }

    /// What a polling source polls every `seconds`: each of its `resources` (`http(s)://`
    /// URLs or `poll://` inputs), or without any, the host.
    fn polls(&mut self, resources: Option<&Value>, seconds: u64, path: &str) -> Vec<PollSpec> {
        let resources: Vec<&Value> = match resources {
            Some(Value::Sequence(list)) => list.iter().collect(),
            _ => Vec::new(),
        };
        if resources.is_empty() {
            return vec![PollSpec {
                pollster: Pollster::Host,
                interval: Duration::from_secs(seconds),
                count: None,
            }];
        }
        let mut polls = Vec::new();
        for (j, r) in resources.into_iter().enumerate() {
            let url = match r.as_str() {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    format!("poll://{}", u.replacen("://", "/", 1))
                }
                Some(u) if u.starts_with("poll://") => u.to_owned(),
                _ => {
                    self.problem(
                        format!("{path}[{j}]"),
                        format!("{} is not a resource meterflow can poll; give http(s)://HOST:PORT/PATH[?event_type=T] (a JSON document) or poll://host", describe(r)),
                    );
                    continue;
                }
            };
            let parsed = meterflow_connectors::Url::parse(&url)
                .and_then(|u| Ok((PollSpec::from_url(&u)?, u.option("interval").is_some())));
            match parsed {
                // The source's interval, unless the resource names its own.
                Ok((mut spec, own_interval)) => {
                    if !own_interval {
                        spec.interval = Duration::from_secs(seconds);
                    }
                    polls.push(spec);
                }
                Err(e) => self.problem(format!("{path}[{j}]"), e),
            }
        }
        polls
    }

    /// What an event pipeline's sink may not have (Ceilometer: event sinks load no
    /// transformers).
    fn event_sink(
        &mut self,
        (sink, _): &(SinkPlan, Vec<(String, PublisherSpec)>),
        k: usize,
        source: &str,
    ) {
        for (j, t) in sink.transformers.iter().enumerate() {
            self.problem(
                format!("sinks[{k}].transformers[{j}]"),
                format!("No transformer named {} loaded for events: sink {} is fed by event source {source}, and event sinks take no transformers; give the events a sink of their own", t.name, sink.name),
            );
        }
    }

    fn meters(&mut self, v: Option<&Value>, path: &str, label: &str) -> Vec<String> {
        let events = path.ends_with(".events");
        let Some(v) = v.filter(|v| !v.is_null()) else {
            if events {
                self.problem(path, format!("No events specified in source {label}; list event types or patterns like compute.instance.* or \"*\""));
            } else {
                self.problem(path, format!("Missing meters value in source {label}; list meter names, patterns like disk.* or \"*\" (or events: for an event source)"));
            }
            return Vec::new();
        };
        let Some(items) = self.list(
            Some(v),
            path,
            if events { "event types" } else { "meter names" },
        ) else {
            return Vec::new();
        };
        if items.is_empty() {
            let what = if events { "events" } else { "meters" };
            self.problem(path, format!("No {what} specified in source {label}"));
            return Vec::new();
        }
        let mut meters = Vec::new();
        for (j, m) in items.iter().enumerate() {
            match m.as_str() {
                Some(s) if !s.is_empty() && s != "!" => meters.push(s.to_owned()),
                _ => self.problem(
                    format!("{path}[{j}]"),
                    format!("must be a meter name or pattern, got {}", describe(m)),
                ),
            }
        }
        let excluded = meters.iter().filter(|m| m.starts_with('!')).count();
        let wildcard = meters.iter().any(|m| m == "*");
        if excluded > 0 && excluded < meters.len() && !(wildcard && excluded == meters.len() - 1) {
            self.problem(
                path,
                format!("source {label}: Both included and excluded meters specified; list either meters to include, or only !exclusions (optionally with \"*\")"),
            );
        } else if wildcard && meters.len() > 1 && excluded == 0 {
            self.problem(
                path,
                format!("source {label}: Included meters specified with wildcard; \"*\" already includes every meter"),
            );
        }
        meters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        match Plan::from_yaml(yaml, "test.yaml") {
            Ok(_) => vec![],
            Err(p) => p.problems.iter().map(ToString::to_string).collect(),
        }
    }

    const OK: &str = "
sources:
  - name: a
    meters: ['*', '!cpu']
    sinks: [s1, s2]
  - name: b
    meters: ['cpu', 'memory']
    sinks: [s2]
sinks:
  - name: s1
    transformers:
    publishers: [log://]
  - name: s2
    transformers:
      - name: delta
        parameters: {growth_only: true}
    publishers: ['file:///tmp/x.jsonl', log://]
";

    #[test]
    fn routes_each_sink_once() {
        let plan = Plan::from_yaml(OK, "t").unwrap();
        assert_eq!(plan.route("memory"), [0, 1]);
        assert_eq!(plan.route("cpu"), [1]);
        assert_eq!(plan.publishers.len(), 2, "log:// is shared");
        assert_eq!(plan.sinks[1].publishers, [1, 0]);
        assert_eq!(plan.sinks[1].partition, Partition::ByResource);
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let p = problems(
            "
sources:
  - name: a
    meters: [cpu, '!vcpus']
    sinks: [nope]
  - name: a
    meters: []
    sinks: []
  - meters: ['*', cpu]
sinks:
  - name: s
    transformers:
      - name: rate_of_chnage
      - name: unit_conversion
        parameters: {target: {scale: '1 +'}}
    publishers: [udp://, 'smtp://x', 'gnocchi://?archive_policy=nope']
  - name: s
    publishers: []
",
        );
        let text = p.join("\n");
        for needle in [
            "sources[0].meters: source a: Both included and excluded meters specified",
            "sources[0].sinks[0]: Dangling sink nope from source a",
            "sources[1].name: Duplicated source names: a",
            "sources[1].meters: No meters specified",
            "sources[1].sinks: No sink defined in source a",
            "sources[2].name: Required field name not specified",
            "Included meters specified with wildcard",
            "sources[2].sinks: Required field sinks not specified",
            "sinks[0].transformers[0].name: No transformer named rate_of_chnage loaded",
            "sinks[0].transformers[1].parameters.target.scale: invalid expression",
            "sinks[0].publishers[0]: publisher \"udp\" is not yet supported",
            "sinks[0].publishers[1]: unknown publisher scheme \"smtp\"",
            "sinks[0].publishers[2]: archive policy \"nope\" does not exist",
            "sinks[1].name: Duplicated sink names: s",
            "sinks[1].publishers: No publisher specified",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    /// Alarms with a problem each (the second a duplicate of the first).
    fn alarms_yaml_items() -> &'static str {
        "- {name: a, type: gnocchi_resources_threshold, gnocchi_resources_threshold_rule: {metric: cpu, resource_id: r, resource_type: generic, aggregation_method: mean, granularity: 300, threshold: 1}}\n- {name: a, type: event, event_rule: {}}\n- {name: b, type: gnocchi_resources_threshold, severity: huge}\n- {name: c, type: event}\n- {name: d, type: gnocchi_resources_threshold, gnocchi_resources_threshold_rule: {metric: cpu, resource_id: r, resource_type: generic, aggregation_method: mean, granularity: 7, threshold: 1}}"
    }

    #[test]
    fn structural_errors() {
        assert!(problems("sources: []")
            .join("")
            .contains("Both sources & sinks are required"));
        assert!(problems(": [").join("").contains("not valid YAML"));
        assert!(problems("- 1").join("").contains("must be a mapping"));
        assert!(problems("sources: []\nsinks: []\nalarms: []").is_empty());
        let alarms = problems(&format!(
            "sources: []\nsinks: []\nalarms:\n{}",
            alarms_yaml_items()
        ))
        .join("\n");
        for needle in [
            "alarms[1].name: alarm \"a\" is defined twice",
            "alarms[2].severity: severity \"huge\"",
            "alarms[2].gnocchi_resources_threshold_rule: gnocchi_resources_threshold_rule must be set",
            "alarms[3].event_rule: event_rule must be set",
            "alarms[4].gnocchi_resources_threshold_rule: no archive policy aggregates mean at granularity 7 s",
        ] {
            assert!(alarms.contains(needle), "{needle:?} not in:\n{alarms}");
        }
        // The same alarms in a JSON definition (read as JSON, its alarms never converted):
        // the same problems at the same places.
        let yaml: Value = serde_yaml::from_str(&format!(
            "sources: []\nsinks: []\nalarms:\n{}",
            alarms_yaml_items()
        ))
        .unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        assert!(json.starts_with('{'));
        let from_json = problems(&json).join("\n");
        assert_eq!(from_json, alarms);
        assert!(problems(r#"{"sources": [], "sinks": [], "alarms": 3}"#)
            .join("")
            .contains("alarms: must be a list of alarms in Aodh's JSON form, got 3"));
        // A JSON definition declares its alarms as a YAML one does.
        let declared = Plan::from_yaml(r#"{"sources": [], "sinks": [], "alarms": []}"#, "t")
            .map(|p| p.alarms_declared);
        assert!(matches!(declared, Ok(true)));
        assert!(problems(&OK.replace(
            "meters: ['cpu', 'memory']",
            "meters: ['cpu']\n    colour: red"
        ))
        .join("")
        .contains("sources[1].colour: unknown key"));
    }

    #[test]
    fn accepts_legacy_polling_keys() {
        let yaml = OK.replace(
            "name: b\n",
            "name: b\n    interval: 600\n    resources: []\n    discovery: []\n",
        );
        assert!(Plan::from_yaml(&yaml, "t").is_ok());
    }
}
