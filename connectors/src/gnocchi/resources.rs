//! Ceilometer's `gnocchi_resources.yaml`: for each meter, the type of its resource, the
//! archive policy of its metric, and the resource attributes taken from its samples.
//!
//! ```yaml
//! archive_policy_default: ceilometer-low
//! archive_policies:                 # created when missing (Gnocchi's JSON form)
//!   - {name: ceilometer-low, aggregation_methods: [mean], back_window: 0,
//!      definition: [{granularity: 5 minutes, timespan: 30 days}]}
//! resources:
//!   - resource_type: instance
//!     metrics:
//!       memory.usage:
//!       cpu: {archive_policy_name: ceilometer-low-rate}
//!     attributes:
//!       host: resource_metadata.(instance_host|host)
//!       flavor_id: resource_metadata.(instance_flavor_id|(flavor.id)|flavor_id)
//! ```
//! As in Ceilometer, a meter maps to one definition (the last that lists it), and a sample
//! whose meter no definition lists is not stored. Attribute paths are Ceilometer's JSONPath
//! subset: dotted fields of the sample (`resource_metadata.a.b`, `project_id`), with
//! `(x|y.z|w)` alternatives, the first non-null winning.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

/// A parsed `gnocchi_resources.yaml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDefinitions {
    /// Where it was read from (for messages).
    pub origin: String,
    /// The policy of metrics whose definition names none.
    pub archive_policy_default: Option<String>,
    /// Policies to create when missing, in Gnocchi's JSON form.
    pub archive_policies: Vec<Value>,
    /// The definitions, in file order.
    pub resources: Vec<ResourceDefinition>,
    /// Meter → (definition, the metric's own policy); the last definition listing it wins.
    by_meter: HashMap<String, (usize, Option<String>)>,
}

/// One `resources:` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceDefinition {
    /// The Gnocchi resource type.
    pub resource_type: String,
    /// Attribute name → where in the sample it comes from.
    pub attributes: Vec<(String, AttributePath)>,
    /// What events do to resources of this type.
    pub events: ResourceEventSpec,
}

/// What events do to a definition's resources, as Ceilometer's gnocchi publisher reads
/// `event_create`, `event_delete`, `event_update` (fnmatch patterns of event types),
/// `event_attributes` and `event_associated_resources`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceEventSpec {
    /// Event types that create the resource.
    pub create: Vec<String>,
    /// Event types that end it (and its associated resources).
    pub delete: Vec<String>,
    /// Event types that update it (nothing is done, as in Ceilometer).
    pub update: Vec<String>,
    /// Resource attribute → the trait it is read from; `id` names the resource.
    pub attributes: Vec<(String, String)>,
    /// Resource type → a search filter (Gnocchi's JSON, `%s` standing for the resource id)
    /// finding the resources that end with it.
    pub associated: Vec<(String, String)>,
}

/// Where an attribute's value is in a sample: alternatives of dotted paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributePath {
    text: String,
    alternatives: Vec<Vec<String>>,
}

impl AttributePath {
    /// Parses `a.b`, `a.(b|c.d|e)` or `(a|b)`.
    ///
    /// # Examples
    /// ```
    /// use meterflow_connectors::gnocchi::resources::AttributePath;
    /// let p = AttributePath::parse("resource_metadata.(instance_flavor_id|(flavor.id)|flavor_id)").unwrap();
    /// let sample = serde_json::json!({"resource_metadata": {"flavor": {"id": "m1"}}});
    /// assert_eq!(p.find(&sample), Some(&serde_json::json!("m1")));
    /// assert!(AttributePath::parse("a.(b").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<AttributePath, String> {
        let text = text.trim();
        let bad = || {
            format!("attribute path {text:?} is not a dotted path with optional (a|b.c) alternatives, e.g. resource_metadata.(instance_host|host)")
        };
        let segments = |s: &str| -> Result<Vec<String>, String> {
            let s = s.trim().trim_start_matches('(').trim_end_matches(')');
            let parts: Vec<String> = s.split('.').map(|p| p.trim().to_owned()).collect();
            if parts.iter().any(|p| {
                p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || "_-:".contains(c))
            }) {
                return Err(bad());
            }
            Ok(parts)
        };
        let alternatives = match text.find('(') {
            None => vec![segments(text)?],
            Some(open) => {
                let (prefix, rest) = text.split_at(open);
                let prefix = prefix.trim_end_matches('.');
                if !rest.ends_with(')') || rest.matches('(').count() != rest.matches(')').count() {
                    return Err(bad());
                }
                let inner = &rest[1..rest.len() - 1];
                let mut out = Vec::new();
                for alternative in split_top_level(inner) {
                    let mut path = if prefix.is_empty() {
                        Vec::new()
                    } else {
                        segments(prefix)?
                    };
                    path.extend(segments(alternative)?);
                    out.push(path);
                }
                out
            }
        };
        Ok(AttributePath {
            text: text.to_owned(),
            alternatives,
        })
    }

    /// The first non-null value the path finds in `sample` (a sample as Ceilometer's dict).
    pub fn find<'v>(&self, sample: &'v Value) -> Option<&'v Value> {
        self.alternatives.iter().find_map(|path| {
            let mut at = sample;
            for key in path {
                at = at.get(key)?;
            }
            (!at.is_null()).then_some(at)
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Splits `a|(b|c)|d` on the `|`s outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

impl ResourceDefinitions {
    /// Reads and checks a file.
    pub fn from_path(path: &str) -> Result<ResourceDefinitions, String> {
        let max = meterflow_engine::files::MAX_INCLUDED_BYTES;
        let text = meterflow_engine::files::read_text(Path::new(path), max).map_err(|e| {
            format!("cannot read resources_definition_file {path}: {e}; give a readable gnocchi_resources.yaml")
        })?;
        ResourceDefinitions::from_yaml(&text, path)
    }

    /// Parses and checks a definition; `origin` names it in messages.
    ///
    /// # Examples
    /// ```
    /// use meterflow_connectors::gnocchi::resources::ResourceDefinitions;
    /// let d = ResourceDefinitions::from_yaml("
    /// archive_policy_default: low
    /// resources:
    ///   - resource_type: instance
    ///     metrics: {cpu: {archive_policy_name: ceilometer-low-rate}, memory.usage: }
    ///     attributes: {host: resource_metadata.host}
    /// ", "inline").unwrap();
    /// let (i, policy) = d.for_meter("cpu").unwrap();
    /// assert_eq!((d.resources[i].resource_type.as_str(), policy), ("instance", Some("ceilometer-low-rate")));
    /// assert_eq!(d.for_meter("memory.usage").unwrap().1, Some("low"));
    /// assert!(d.for_meter("disk.usage").is_none());
    /// ```
    pub fn from_yaml(text: &str, origin: &str) -> Result<ResourceDefinitions, String> {
        meterflow_engine::files::check_nesting(text).map_err(|m| format!("{origin}: {m}"))?;
        let root: Value =
            serde_yaml::from_str(text).map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
        let Some(root) = root.as_object() else {
            return Err(format!(
                "{origin}: must be a mapping with resources: (and optionally archive_policy_default:, archive_policies:)"
            ));
        };
        for key in root.keys() {
            if !["archive_policy_default", "archive_policies", "resources"].contains(&key.as_str())
            {
                return Err(format!(
                    "{origin}: unknown key {key:?}; known: archive_policy_default, archive_policies, resources"
                ));
            }
        }
        let archive_policy_default = match root.get("archive_policy_default") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(format!(
                    "{origin}: archive_policy_default must be a policy name, got {other}"
                ))
            }
        };
        let archive_policies = match root.get("archive_policies") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.clone(),
            Some(other) => {
                return Err(format!(
                    "{origin}: archive_policies must be a list of policies, got {other}"
                ))
            }
        };
        let Some(Value::Array(list)) = root.get("resources") else {
            return Err(format!(
                "{origin}: resources: must be a list of {{resource_type, metrics, attributes}}"
            ));
        };
        let mut resources = Vec::new();
        let mut by_meter = HashMap::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("{origin}: resources[{i}]");
            let Some(map) = item.as_object() else {
                return Err(format!("{at} must be a mapping"));
            };
            let resource_type = map
                .get("resource_type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("{at}: resource_type (a name such as instance) is missing"))?
                .to_owned();
            for key in map.keys() {
                if ![
                    "resource_type",
                    "metrics",
                    "attributes",
                    "event_create",
                    "event_delete",
                    "event_update",
                    "event_attributes",
                    "event_associated_resources",
                ]
                .contains(&key.as_str())
                {
                    return Err(format!("{at}: unknown key {key:?}"));
                }
            }
            // `metrics:` is a mapping meter → {archive_policy_name} or, in the legacy form, a list.
            let metrics: Vec<(String, Option<String>)> = match map.get("metrics") {
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(meter, v)| {
                        let policy = match v {
                            Value::Null => Ok(None),
                            Value::Object(o) => match o.get("archive_policy_name") {
                                None | Some(Value::Null) => Ok(None),
                                Some(Value::String(p)) => Ok(Some(p.clone())),
                                Some(other) => Err(format!(
                                    "{at}.metrics.{meter}.archive_policy_name must be a name, got {other}"
                                )),
                            },
                            other => Err(format!(
                                "{at}.metrics.{meter} must be empty or {{archive_policy_name: NAME}}, got {other}"
                            )),
                        }?;
                        Ok((meter.clone(), policy))
                    })
                    .collect::<Result<_, String>>()?,
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|m| {
                        m.as_str()
                            .map(|s| (s.to_owned(), None))
                            .ok_or_else(|| format!("{at}.metrics must list meter names"))
                    })
                    .collect::<Result<_, String>>()?,
                _ => return Err(format!("{at}: metrics: (meter names) is missing")),
            };
            let attributes = match map.get("attributes") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Object(attrs)) => {
                    let mut out = BTreeMap::new();
                    for (name, path) in attrs {
                        let path = path.as_str().ok_or_else(|| {
                            format!("{at}.attributes.{name} must be a path such as resource_metadata.host")
                        })?;
                        out.insert(
                            name.clone(),
                            AttributePath::parse(path)
                                .map_err(|e| format!("{at}.attributes.{name}: {e}"))?,
                        );
                    }
                    out.into_iter().collect()
                }
                Some(other) => {
                    return Err(format!(
                        "{at}.attributes must map attribute names to paths, got {other}"
                    ))
                }
            };
            for (meter, policy) in metrics {
                by_meter.insert(meter, (resources.len(), policy));
            }
            let events = event_spec(map, &at)?;
            resources.push(ResourceDefinition {
                resource_type,
                attributes,
                events,
            });
        }
        Ok(ResourceDefinitions {
            origin: origin.to_owned(),
            archive_policy_default,
            archive_policies,
            resources,
            by_meter,
        })
    }

    /// The index (into `resources`) of the definition of `meter`'s resource and its metric's
    /// policy (its own, else the default), or `None` when no definition lists it.
    pub fn for_meter(&self, meter: &str) -> Option<(usize, Option<&str>)> {
        let (i, policy) = self.by_meter.get(meter)?;
        Some((
            *i,
            policy.as_deref().or(self.archive_policy_default.as_deref()),
        ))
    }

    /// Every policy name the file refers to, with where (for validation).
    pub fn policy_names(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .by_meter
            .iter()
            .filter_map(|(meter, (_, p))| {
                p.clone()
                    .map(|p| (p, format!("{}: metric {meter}", self.origin)))
            })
            .collect();
        if let Some(p) = &self.archive_policy_default {
            out.push((
                p.clone(),
                format!("{}: archive_policy_default", self.origin),
            ));
        }
        out.sort();
        out
    }
}

/// Reads a definition's `event_*` keys.
fn event_spec(map: &serde_json::Map<String, Value>, at: &str) -> Result<ResourceEventSpec, String> {
    let patterns = |key: &str| -> Result<Vec<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(p)) => Ok(vec![p.clone()]),
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_str().map(str::to_owned).ok_or_else(|| {
                        format!("{at}.{key} must list event types such as compute.instance.delete.start")
                    })
                })
                .collect(),
            Some(other) => Err(format!(
                "{at}.{key} must be an event type or a list of them, got {other}"
            )),
        }
    };
    let names = |key: &str, what: &str| -> Result<Vec<(String, String)>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.clone(), v.to_owned()))
                        .ok_or_else(|| format!("{at}.{key}.{k} must be {what}, got {v}"))
                })
                .collect(),
            Some(other) => Err(format!("{at}.{key} must be a mapping, got {other}")),
        }
    };
    let spec = ResourceEventSpec {
        create: patterns("event_create")?,
        delete: patterns("event_delete")?,
        update: patterns("event_update")?,
        attributes: names("event_attributes", "a trait name such as instance_id")?,
        associated: names(
            "event_associated_resources",
            r#"a search filter such as '{"=": {"instance_id": "%s"}}'"#,
        )?,
    };
    let acts = !spec.create.is_empty() || !spec.delete.is_empty();
    if acts && !spec.attributes.iter().any(|(a, _)| a == "id") {
        return Err(format!(
            "{at}: event_attributes must name the trait that holds the resource id (id: instance_id)"
        ));
    }
    for (kind, query) in &spec.associated {
        let filled = query.replace("%s", "00000000-0000-0000-0000-000000000000");
        let parsed: Value = serde_json::from_str(&filled).map_err(|e| {
            format!("{at}.event_associated_resources.{kind}: not JSON ({e}): {query}")
        })?;
        super::search::Filter::parse(&parsed)
            .map_err(|e| format!("{at}.event_associated_resources.{kind}: {e}"))?;
    }
    Ok(spec)
}

impl ResourceDefinition {
    /// The attributes `sample` (as Ceilometer's dict) carries, as a JSON object text with keys
    /// sorted; `None` when the definition has none or the sample carries none of them.
    pub fn attributes_of(&self, sample: &Value) -> Option<String> {
        let mut out = serde_json::Map::new();
        for (name, path) in &self.attributes {
            if let Some(v) = path.find(sample) {
                out.insert(name.clone(), v.clone());
            }
        }
        (!out.is_empty()).then(|| Value::Object(out).to_string())
    }
}
