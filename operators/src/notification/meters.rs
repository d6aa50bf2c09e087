//! Ceilometer's meter definitions (`meters.yaml`, `ceilometer/meter/notifications.py`): each
//! `metric:` entry whose `event_type` regular expression matches a notification turns it into
//! samples.
//!
//! As Ceilometer: `event_type` patterns are regular expressions matched at the start of the
//! type; every matching definition yields its samples (not only the first); within a file the
//! last definition of a meter name wins, across files the first file; `user_id` and
//! `project_id` fall back to `ctxt.user_id|ctxt.user` and `ctxt.tenant_id|ctxt.tenant`; an
//! empty `metadata` gives the payload plus `event_type` and `host`; `user_metadata` copies the
//! `metering.` keys; `lookup` makes one sample per element of list-valued fields; the timestamp
//! is the definition's or the notification's, written ISO 8601 with `+00:00`. Every attribute,
//! the name and unit included, is read as a path first, so `name: $.payload.metrics[*].name`
//! works and a plain `name: memory` stays `memory`.

use fancy_regex::Regex;
use serde_json::{Map, Value};
use serde_yaml::Value as Yaml;

use meterflow_engine::metrics::DropReason;
use meterflow_engine::model::{RawJson, Text, Timestamp, DEFAULT_SAMPLE_SOURCE};
use meterflow_engine::wire::{Decoded, Rejected};
use meterflow_engine::{Sample, SampleType, Sym, Volume};

use super::field::Field;
use super::{each_document, python_str, text_list, truthy, DefinitionProblem};

/// The sample attributes a definition may set, in Ceilometer's order.
const ATTRIBUTES: [&str; 8] = [
    "name",
    "type",
    "volume",
    "unit",
    "timestamp",
    "user_id",
    "project_id",
    "resource_id",
];
const NAME: usize = 0;
const TYPE: usize = 1;
const VOLUME: usize = 2;
const UNIT: usize = 3;
const TIMESTAMP: usize = 4;
const USER: usize = 5;
const PROJECT: usize = 6;
const RESOURCE: usize = 7;

/// Keys a `metric:` entry may have besides the [`ATTRIBUTES`].
const OTHER_KEYS: [&str; 4] = ["event_type", "metadata", "user_metadata", "lookup"];

/// Ceilometer's `reserved_metadata_length`: user metadata text is cut to this many characters.
const RESERVED_METADATA_LENGTH: usize = 256;

/// A loaded set of meter definitions, in the order Ceilometer applies them.
#[derive(Clone, Debug, Default)]
pub struct MeterDefinitions {
    definitions: Vec<MeterDefinition>,
}

/// One `metric:` entry.
#[derive(Clone, Debug)]
struct MeterDefinition {
    /// The configured `name`, `type` and `unit` texts (the values unless their paths find one).
    name: String,
    kind: String,
    unit: String,
    event_types: Vec<Regex>,
    attributes: [Option<Field>; 8],
    metadata: Vec<(String, Field)>,
    user_metadata: Option<Field>,
    lookup: Vec<String>,
}

impl MeterDefinitions {
    /// Loads `meters.yaml` documents `(origin, text)` in order. Returns the definitions that
    /// are valid and every problem (Ceilometer logs and skips a bad definition; validation
    /// reports it).
    pub fn load(files: &[(String, String)]) -> (MeterDefinitions, Vec<DefinitionProblem>) {
        let mut definitions: Vec<MeterDefinition> = Vec::new();
        let problems = each_document(files, |doc, problem| {
            let entries = match doc.get("metric") {
                Some(Yaml::Sequence(entries)) => entries,
                Some(Yaml::Null) => return,
                _ => {
                    problem(
                        "metric".into(),
                        "a meter definition file needs a top-level metric: list".into(),
                    );
                    return;
                }
            };
            let mut from_file = Vec::new();
            for (i, entry) in entries.iter().enumerate().rev() {
                match MeterDefinition::from_yaml(entry) {
                    Ok(d) => {
                        if definitions
                            .iter()
                            .chain(&from_file)
                            .any(|o| o.name == d.name)
                        {
                            continue;
                        }
                        from_file.push(d);
                    }
                    Err((key, message)) => problem(format!("metric[{i}]{key}"), message),
                }
            }
            definitions.extend(from_file);
        });
        (MeterDefinitions { definitions }, problems)
    }

    /// No definitions: every service notification is dropped as `no_meter_definition`.
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }

    /// How many definitions there are.
    pub fn len(&self) -> usize {
        self.definitions.len()
    }

    /// Whether some definition takes notifications of `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.definitions.iter().any(|d| d.matches(event_type))
    }

    /// Turns the notification `view` (see [`super::message_view`]) into samples, passing each,
    /// or why it cannot be one, to `emit`. Returns how many definitions matched.
    pub fn samples(&self, view: &Value, emit: &mut dyn FnMut(Decoded)) -> usize {
        let event_type = view.get("event_type").and_then(Value::as_str).unwrap_or("");
        let mut matched = 0;
        for d in self.definitions.iter().filter(|d| d.matches(event_type)) {
            matched += 1;
            d.samples(view, emit);
        }
        matched
    }
}

/// The attribute values of one sample before conversion.
struct Raw {
    values: [Value; 8],
    metadata: Map<String, Value>,
}

impl MeterDefinition {
    /// Reads one entry; an error is `(key path suffix, message)`.
    fn from_yaml(entry: &Yaml) -> Result<MeterDefinition, (String, String)> {
        let Yaml::Mapping(map) = entry else {
            return Err((
                String::new(),
                format!("a meter definition is a mapping, got {entry:?}"),
            ));
        };
        for key in map.keys() {
            let k = key.as_str().unwrap_or("?");
            if !ATTRIBUTES.contains(&k) && !OTHER_KEYS.contains(&k) {
                let known: Vec<&str> = ATTRIBUTES.iter().chain(&OTHER_KEYS).copied().collect();
                return Err((
                    format!(".{k}"),
                    format!("unknown key {k:?} (known: {})", known.join(", ")),
                ));
            }
        }
        let missing: Vec<&str> = [
            "name",
            "type",
            "event_type",
            "unit",
            "volume",
            "resource_id",
        ]
        .into_iter()
        .filter(|k| {
            map.get(*k)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
        })
        .collect();
        if !missing.is_empty() {
            return Err((
                String::new(),
                format!("required fields {missing:?} not specified"),
            ));
        }
        let text = |key: &str| -> Result<String, (String, String)> {
            match map.get(key) {
                Some(Yaml::String(s)) => Ok(s.clone()),
                Some(Yaml::Number(n)) => Ok(n.to_string()),
                other => Err((
                    format!(".{key}"),
                    format!("{key} must be text, got {other:?}"),
                )),
            }
        };
        let lookup = text_list(
            map.get("lookup").filter(|v| !v.is_null()),
            "lookup",
            "lookup is a list of attribute names",
        )?
        .unwrap_or_default();
        let kind = text("type")?;
        if !lookup.iter().any(|l| l == "type") && SampleType::parse(&kind).is_none() {
            return Err((
                ".type".into(),
                format!("Invalid type {kind} specified (gauge, delta or cumulative)"),
            ));
        }
        // Present: the required fields were checked above.
        let event_types = text_list(
            map.get("event_type"),
            "event_type",
            "event_type is a pattern or a list of patterns",
        )?
        .unwrap_or_default();
        let event_types = event_types
            .iter()
            .map(|p| {
                Regex::new(&format!(r"\A(?:{p})")).map_err(|e| {
                    (
                        ".event_type".into(),
                        format!("{p:?} is not a regular expression: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut attributes: [Option<Field>; 8] = Default::default();
        for (i, key) in ATTRIBUTES.iter().enumerate() {
            let Some(cfg) = map.get(*key).filter(|v| !v.is_null()) else {
                continue;
            };
            attributes[i] = match Field::from_yaml(cfg) {
                Ok(f) => Some(f),
                // The name, type and unit are their text when they are not paths (`B/s`, `%`).
                Err(_) if matches!(i, NAME | TYPE | UNIT) => None,
                Err(e) => return Err((format!(".{key}"), e)),
            };
            let plugin = attributes[i].as_ref().and_then(Field::single_valued);
            if let Some(plugin) = plugin.filter(|_| !lookup.is_empty()) {
                return Err((
                    format!(".{key}"),
                    format!("with lookup every field gives one value per match, and the {plugin} plugin gives one value in all (Ceilometer: \"Plugin {plugin} don't allows to return multiple values\"); drop lookup or the plugin"),
                ));
            }
        }
        let metadata = match map.get("metadata") {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let k = k.as_str().unwrap_or("?").to_owned();
                    Field::from_yaml(v)
                        .map(|f| (k.clone(), f))
                        .map_err(|e| (format!(".metadata.{k}"), e))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err((
                    ".metadata".into(),
                    format!("metadata is a mapping of names to fields, got {other:?}"),
                ))
            }
        };
        let user_metadata = map
            .get("user_metadata")
            .filter(|v| !v.is_null())
            .map(Field::from_yaml)
            .transpose()
            .map_err(|e| (".user_metadata".into(), e))?;
        Ok(MeterDefinition {
            name: text("name")?,
            kind,
            unit: text("unit")?,
            event_types,
            attributes,
            metadata,
            user_metadata,
            lookup,
        })
    }

    fn matches(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|r| r.is_match(event_type).unwrap_or(false))
    }

    fn samples(&self, view: &Value, emit: &mut dyn FnMut(Decoded)) {
        // Ceilometer's fallbacks `ctxt.user_id|ctxt.user`, `ctxt.tenant_id|ctxt.tenant`.
        let fallback = |keys: [&str; 2]| {
            keys.iter()
                .filter_map(|k| view.get("ctxt").and_then(|c| c.get(k)))
                .find(|v| !v.is_null())
                .cloned()
        };
        let mut metadata = Map::new();
        for (name, field) in &self.metadata {
            if let Some(v) = field.first(view).filter(truthy) {
                metadata.insert(name.clone(), v);
            }
        }
        if let Some(Value::Object(user)) = self.user_metadata.as_ref().and_then(|f| f.first(view)) {
            add_user_metadata(&user, &mut metadata);
        }
        let defaults = [
            Value::String(self.name.clone()),
            Value::String(self.kind.clone()),
            Value::Null,
            Value::String(self.unit.clone()),
            Value::Null,
            fallback(["user_id", "user"]).unwrap_or(Value::Null),
            fallback(["tenant_id", "tenant"]).unwrap_or(Value::Null),
            Value::Null,
        ];
        if self.lookup.is_empty() {
            let mut values = defaults;
            for (i, field) in self.attributes.iter().enumerate() {
                if let Some(v) = field.as_ref().and_then(|f| f.first(view)) {
                    values[i] = v;
                }
            }
            emit(self.sample(view, Raw { values, metadata }));
            return;
        }
        // One sample per element of the looked-up lists; single values repeat.
        let mut columns: Vec<Vec<Value>> = defaults.into_iter().map(|d| vec![d]).collect();
        for (i, field) in self.attributes.iter().enumerate() {
            let Some(field) = field else { continue };
            let found = field.values(view, true);
            let looked_up = i == NAME || self.lookup.iter().any(|l| l == ATTRIBUTES[i]);
            if looked_up || !found.is_empty() {
                columns[i] = found;
            }
        }
        let n = columns[NAME].len();
        for (i, column) in columns.iter().enumerate() {
            let repeats = column.len() == 1 && !self.lookup.iter().any(|l| l == ATTRIBUTES[i]);
            if column.len() != n && !repeats {
                emit(Decoded::Rejected(Rejected {
                    reason: DropReason::MissingField,
                    name: None,
                    detail: format!(
                        "meter definition {:?}: only {} of the {n} looked-up meters have a {:?} field; the notification gives no sample",
                        self.name,
                        column.len(),
                        ATTRIBUTES[i]
                    ),
                }));
                return;
            }
        }
        for k in 0..n {
            let values = std::array::from_fn(|i| {
                let column = &columns[i];
                column[if column.len() == n { k } else { 0 }].clone()
            });
            emit(self.sample(
                view,
                Raw {
                    values,
                    metadata: metadata.clone(),
                },
            ));
        }
    }

    /// Ceilometer's `Sample.from_notification`, then the checks a pipeline makes.
    fn sample(&self, view: &Value, raw: Raw) -> Decoded {
        let Raw { values, metadata } = raw;
        let text = |v: &Value| match v {
            Value::Null => None,
            other => Some(python_str(other)),
        };
        let name = text(&values[NAME]).unwrap_or_default();
        let reject = |reason: DropReason, detail: String| {
            Decoded::Rejected(Rejected {
                reason,
                name: Some(Sym::new(&name)),
                detail: format!(
                    "meter definition {:?}, {} notification: {detail}",
                    self.name,
                    view.get("event_type")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
            })
        };
        let Some(kind) = text(&values[TYPE]).as_deref().and_then(SampleType::parse) else {
            return reject(
                DropReason::BadCounterType,
                format!("type {} is not gauge, delta or cumulative", values[TYPE]),
            );
        };
        let volume =
            match &values[VOLUME] {
                Value::Null => return reject(
                    DropReason::VolumeMissing,
                    "its volume path found nothing; the sample is dropped as Ceilometer drops it"
                        .into(),
                ),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Volume::Int(i),
                    None => Volume::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::Bool(b) => Volume::Int(i64::from(*b)),
                Value::String(s) => match Volume::parse(s) {
                    Some(v) => v,
                    None => {
                        return reject(
                            DropReason::VolumeNotANumber,
                            format!("volume {s:?} is not a number"),
                        )
                    }
                },
                other => {
                    return reject(
                        DropReason::VolumeNotANumber,
                        format!("volume {other} is not a number"),
                    )
                }
            };
        let Some(resource_id) = text(&values[RESOURCE]) else {
            return reject(
                DropReason::MissingField,
                "its resource_id path found nothing; fix the definition's resource_id".into(),
            );
        };
        let timestamp = match &values[TIMESTAMP] {
            Value::Null => view
                .pointer("/metadata/timestamp")
                .cloned()
                .unwrap_or(Value::Null),
            v => v.clone(),
        };
        let Some(micros) = timestamp
            .as_str()
            .and_then(meterflow_engine::time::parse_micros)
        else {
            return reject(
                DropReason::BadTimestamp,
                format!("timestamp {timestamp} is not an ISO 8601 time"),
            );
        };
        let metadata = if metadata.is_empty() {
            let mut m = match view.get("payload") {
                Some(Value::Object(p)) => p.clone(),
                _ => Map::new(),
            };
            m.insert(
                "event_type".into(),
                view.get("event_type").cloned().unwrap_or(Value::Null),
            );
            m.insert(
                "host".into(),
                view.get("publisher_id").cloned().unwrap_or(Value::Null),
            );
            m
        } else {
            metadata
        };
        let metadata =
            serde_json::to_string(&Value::Object(metadata)).unwrap_or_else(|_| "{}".into());
        Decoded::Sample(Sample {
            name: Sym::new(&name),
            kind,
            unit: Sym::new(&text(&values[UNIT]).unwrap_or_default()),
            volume,
            user_id: text(&values[USER]).map(|u| Sym::new(&u)),
            project_id: text(&values[PROJECT]).map(|p| Sym::new(&p)),
            resource_id: Sym::new(&resource_id),
            timestamp: Timestamp::new(Text::copy_of(&meterflow_engine::time::format_iso_utc(
                micros,
            ))),
            resource_metadata: RawJson::from_text(Text::copy_of(&metadata)),
            source: Sym::new(DEFAULT_SAMPLE_SOURCE),
            message_id: None,
            monotonic_time: None,
        })
    }
}

/// Ceilometer's `add_reserved_user_metadata`: `metering.` keys of the instance metadata, the
/// prefix removed and `.` made `_`, text cut to 256 characters, under `user_metadata`.
fn add_user_metadata(source: &Map<String, Value>, metadata: &mut Map<String, Value>) {
    let mut user = Map::new();
    for (k, v) in source {
        let Some(rest) = k.strip_prefix("metering.") else {
            continue;
        };
        let key = rest.replace('.', "_");
        if metadata.contains_key(&key) {
            continue;
        }
        let v = match v {
            Value::String(s) => Value::String(s.chars().take(RESERVED_METADATA_LENGTH).collect()),
            other => other.clone(),
        };
        user.insert(key, v);
    }
    if !user.is_empty() {
        metadata.insert("user_metadata".into(), Value::Object(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(yaml: &str) -> MeterDefinitions {
        let (d, problems) = MeterDefinitions::load(&[("meters.yaml".into(), yaml.into())]);
        assert!(problems.is_empty(), "{problems:?}");
        d
    }

    fn samples(defs: &MeterDefinitions, view: Value) -> Vec<Decoded> {
        let mut out = Vec::new();
        defs.samples(&view, &mut |d| out.push(d));
        out
    }

    fn sample(d: &Decoded) -> &Sample {
        match d {
            Decoded::Sample(s) => s,
            Decoded::Rejected(r) => panic!("rejected: {r:?}"),
        }
    }

    #[test]
    fn regex_event_types_every_match_and_fallbacks() {
        let defs = load(
            r#"
metric:
  - name: memory
    event_type: &ev compute.instance.(?!create.start|update).*
    type: gauge
    unit: MB
    volume: $.payload.memory_mb
    resource_id: $.payload.instance_id
    user_metadata: $.payload.metadata
    metadata: &meta
      host: $.payload.host
      flavor_name: $.payload.instance_type
  - name: vcpus
    event_type: *ev
    type: gauge
    unit: vcpu
    volume: $.payload.vcpus
    resource_id: $.payload.instance_id
    project_id: $.payload.tenant_id
    metadata:
      <<: *meta
"#,
        );
        let view = json!({"ctxt": {"user": "u1", "tenant": "p-ctx"}, "event_type": "compute.instance.create.end",
            "publisher_id": "compute.h1", "payload": {"memory_mb": 512, "vcpus": 2, "instance_id": "vm-1",
            "tenant_id": "p1", "host": "h1", "instance_type": "m1.tiny",
            "metadata": {"metering.stack": "s1", "other": "x"}},
            "metadata": {"message_id": "m", "timestamp": "2024-05-01 12:00:00.5"}});
        let out = samples(&defs, view.clone());
        assert_eq!(out.len(), 2);
        let (vcpus, memory) = (sample(&out[0]), sample(&out[1]));
        assert_eq!(vcpus.name.as_str(), "vcpus");
        assert_eq!(vcpus.project_id.unwrap().as_str(), "p1");
        assert_eq!(memory.project_id.unwrap().as_str(), "p-ctx");
        assert_eq!(memory.user_id.unwrap().as_str(), "u1");
        assert_eq!(memory.volume, Volume::Int(512));
        assert_eq!(
            memory.timestamp.as_str(),
            "2024-05-01T12:00:00.500000+00:00"
        );
        assert_eq!(
            memory.resource_metadata.as_str(),
            r#"{"host":"h1","flavor_name":"m1.tiny","user_metadata":{"stack":"s1"}}"#
        );
        assert_eq!(
            vcpus.resource_metadata.as_str(),
            r#"{"host":"h1","flavor_name":"m1.tiny"}"#
        );
        let mut other = view;
        other["event_type"] = json!("compute.instance.update");
        assert!(samples(&defs, other).is_empty());
        assert!(!defs.matches("compute.instance.create.start"));
        assert!(defs.matches("compute.instance.delete.end"));
    }

    #[test]
    fn lookup_makes_one_sample_per_element() {
        let defs = load(
            r#"
metric:
  - name: $.payload.measurements.[*].metric.[*].name
    event_type: 'objectstore.http.request'
    type: 'delta'
    unit: $.payload.measurements.[*].metric.[*].unit
    volume: $.payload.measurements.[*].result
    resource_id: $.payload.target.id
    user_id: $.payload.initiator.id
    project_id: $.payload.initiator.project_id
    lookup: ['name', 'unit', 'volume']
"#,
        );
        let view = json!({"ctxt": {}, "event_type": "objectstore.http.request", "publisher_id": "swift",
            "payload": {"measurements": [{"metric": {"name": "storage.objects.outgoing.bytes", "unit": "B"}, "result": 28},
                                          {"metric": {"name": "storage.objects.incoming.bytes", "unit": "B"}, "result": 1}],
                        "target": {"id": "AUTH_p1"}, "initiator": {"id": "u1", "project_id": "p1"}},
            "metadata": {"message_id": "m", "timestamp": "2024-05-01T12:00:00"}});
        let out = samples(&defs, view);
        let got: Vec<(&str, Volume, &str)> = out
            .iter()
            .map(sample)
            .map(|s| (s.name.as_str(), s.volume, s.resource_id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("storage.objects.outgoing.bytes", Volume::Int(28), "AUTH_p1"),
                ("storage.objects.incoming.bytes", Volume::Int(1), "AUTH_p1")
            ]
        );
        // Empty metadata: the payload plus event_type and host.
        assert!(sample(&out[0])
            .resource_metadata
            .as_str()
            .ends_with(r#""event_type":"objectstore.http.request","host":"swift"}"#));
    }

    #[test]
    fn missing_volume_and_resource_are_rejected_with_the_definition() {
        let defs = load(
            "metric:\n  - {name: image.size, event_type: image.upload, type: gauge, unit: B, volume: $.payload.size, resource_id: $.payload.id}\n",
        );
        let base = json!({"event_type": "image.upload", "payload": {"id": "i1"}, "metadata": {"timestamp": "2024-05-01 00:00:00"}});
        match &samples(&defs, base)[0] {
            Decoded::Rejected(r) => {
                assert_eq!(r.reason, DropReason::VolumeMissing);
                assert!(r.detail.contains("\"image.size\""), "{}", r.detail);
            }
            other => panic!("{other:?}"),
        }
        let no_id = json!({"event_type": "image.upload", "payload": {"size": "12"}, "metadata": {"timestamp": "2024-05-01 00:00:00"}});
        match &samples(&defs, no_id)[0] {
            Decoded::Rejected(r) => assert_eq!(r.reason, DropReason::MissingField),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn problems_name_the_entry_and_key() {
        let (defs, problems) = MeterDefinitions::load(&[(
            "m.yaml".into(),
            "metric:\n  - {name: a, event_type: x, type: gauge, unit: B, volume: $.a, resource_id: $.b}\n  - {name: b, event_type: x, type: level, unit: B, volume: $.a, resource_id: $.b}\n  - {name: c, event_type: '(', type: gauge, unit: B, volume: $.a, resource_id: $.b}\n  - {name: d, event_type: x, type: gauge, unit: B, resource_id: $.b}\n  - {name: e, event_type: x, type: gauge, unit: B, volume: '$.a[', resource_id: $.b}\n  - {name: f, event_type: x, type: gauge, unit: B, volume: {fields: [$.a, $.b], plugin: timedelta}, resource_id: $.b, lookup: [name]}\n".into(),
        )]);
        assert_eq!(defs.len(), 1);
        let places: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(
            places,
            vec![
                "metric[5].volume",
                "metric[4].volume",
                "metric[3]",
                "metric[2].event_type",
                "metric[1].type"
            ]
        );
        assert!(problems.iter().all(|p| p.file == "m.yaml"));
        assert!(problems[2].message.contains("volume"), "{:?}", problems[2]);
        assert!(
            problems[0]
                .message
                .contains("the timedelta plugin gives one value"),
            "{:?}",
            problems[0]
        );
    }
}
