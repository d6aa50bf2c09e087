//! Events: service notifications reduced to typed traits by Ceilometer's event definitions
//! (`event_definitions.yaml`, `ceilometer/event/converter.py`).
//!
//! As Ceilometer: definitions are tried last first and the first whose `event_type` list
//! (fnmatch globs, `!` exclusions; only exclusions mean "everything else") matches wins; every
//! definition has the default traits `service`, `request_id`, `project_id`, `user_id` and
//! `tenant_id`; a trait whose value is missing (or `""` for a non-text type) is left out; text is
//! cut to 255 characters; datetimes become naive UTC. Unless `drop_unmatched` is set, a
//! catch-all definition with only the default traits makes every notification an event.
//! Where Ceilometer's conversion raises (an `int` trait of `"abc"`), the trait is left out and
//! the event kept.

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

use meterflow_engine::model::{Event, Trait, TraitValue};

use crate::glob::MeterMatcher;
use crate::notification::field::Field;
use crate::notification::{each_document, python_str, text_list, DefinitionProblem};

/// Ceilometer's trait types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TraitType {
    Text = 1,
    Int = 2,
    Float = 3,
    Datetime = 4,
}

impl TraitType {
    fn parse(name: &str) -> Option<TraitType> {
        match name {
            "text" => Some(TraitType::Text),
            "int" => Some(TraitType::Int),
            "float" => Some(TraitType::Float),
            "datetime" => Some(TraitType::Datetime),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
struct TraitDefinition {
    name: String,
    kind: TraitType,
    field: Field,
}

#[derive(Clone, Debug)]
struct EventDefinition {
    types: MeterMatcher,
    catch_all: bool,
    traits: Vec<TraitDefinition>,
}

/// A loaded `event_definitions.yaml`, ready to turn notifications into events.
#[derive(Clone, Debug)]
pub struct EventDefinitions {
    /// In matching order (the file's last definition first).
    definitions: Vec<EventDefinition>,
}

/// The traits every definition has (Ceilometer's `DEFAULT_TRAITS`), in its order.
const DEFAULT_TRAITS: [(&str, &[&str]); 5] = [
    ("service", &["publisher_id"]),
    ("request_id", &["ctxt.request_id"]),
    ("project_id", &["payload.tenant_id", "ctxt.tenant"]),
    ("user_id", &["payload.user_id", "ctxt.user_id"]),
    ("tenant_id", &["payload.tenant_id", "ctxt.tenant"]),
];

impl EventDefinitions {
    /// Loads event definition documents `(origin, text)` (each a list of `{event_type,
    /// traits}`), later files after earlier ones; with `drop_unmatched` false a catch-all is
    /// added unless one exists. Returns the definitions that are valid and every problem.
    pub fn load(
        files: &[(String, String)],
        drop_unmatched: bool,
    ) -> (EventDefinitions, Vec<DefinitionProblem>) {
        let mut listed = Vec::new();
        let problems = each_document(files, |doc, problem| {
            let entries = match doc {
                Yaml::Sequence(entries) => entries,
                Yaml::Null => return,
                _ => {
                    problem(
                        String::new(),
                        "an event definition file is a list of {event_type, traits}".into(),
                    );
                    return;
                }
            };
            for (i, entry) in entries.iter().enumerate() {
                match EventDefinition::from_yaml(entry) {
                    Ok(d) => listed.push(d),
                    Err((key, message)) => problem(format!("[{i}]{key}"), message),
                }
            }
        });
        listed.reverse();
        if !drop_unmatched && !listed.iter().any(|d| d.catch_all) {
            listed.push(EventDefinition::with_traits(
                MeterMatcher::new(&["*".into()]),
                true,
                Vec::new(),
            ));
        }
        (
            EventDefinitions {
                definitions: listed,
            },
            problems,
        )
    }

    /// How many definitions there are (the catch-all included).
    pub fn len(&self) -> usize {
        self.definitions.len()
    }

    /// Whether there are none (every notification is dropped).
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }

    /// The event the notification `view` (see [`crate::notification::message_view`]) makes,
    /// if some definition takes its type.
    pub fn event(&self, view: &Value) -> Option<Event> {
        let event_type = view.get("event_type")?.as_str()?;
        let definition = self
            .definitions
            .iter()
            .find(|d| d.types.accepts(event_type))?;
        let generated = view
            .pointer("/metadata/timestamp")
            .and_then(Value::as_str)
            .and_then(meterflow_engine::time::parse_micros)
            .map(meterflow_engine::time::format_iso_naive)
            .unwrap_or_default();
        let traits = definition
            .traits
            .iter()
            .filter_map(|t| t.trait_of(view))
            .collect();
        Some(Event {
            message_id: view
                .pointer("/metadata/message_id")
                .map(python_str)
                .unwrap_or_default(),
            event_type: event_type.to_owned(),
            generated,
            traits,
            raw: json!({}),
        })
    }
}

impl EventDefinition {
    fn with_traits(
        types: MeterMatcher,
        catch_all: bool,
        mut own: Vec<TraitDefinition>,
    ) -> EventDefinition {
        // The defaults first, in their order; a definition's trait of the same name replaces
        // the default in place (a Python dict keeps the first insertion's position).
        let mut traits: Vec<TraitDefinition> = DEFAULT_TRAITS
            .iter()
            .map(|(name, fields)| TraitDefinition {
                name: (*name).to_owned(),
                kind: TraitType::Text,
                field: Field::from_yaml(&Yaml::Sequence(
                    fields
                        .iter()
                        .map(|f| Yaml::String((*f).to_owned()))
                        .collect(),
                ))
                .expect("valid default trait"),
            })
            .collect();
        for t in own.drain(..) {
            match traits.iter_mut().find(|d| d.name == t.name) {
                Some(slot) => *slot = t,
                None => traits.push(t),
            }
        }
        EventDefinition {
            types,
            catch_all,
            traits,
        }
    }

    fn from_yaml(entry: &Yaml) -> Result<EventDefinition, (String, String)> {
        let Yaml::Mapping(map) = entry else {
            return Err((
                String::new(),
                "an event definition is {event_type, traits}".into(),
            ));
        };
        for key in map.keys() {
            let k = key.as_str().unwrap_or("?");
            if !matches!(k, "event_type" | "traits") {
                return Err((
                    format!(".{k}"),
                    format!("unknown key {k:?} (known: event_type, traits)"),
                ));
            }
        }
        let types = text_list(
            map.get("event_type"),
            "event_type",
            "event_type is a glob or a list of globs",
        )?
        .ok_or((
            String::new(),
            "Required field event_type not specified".to_owned(),
        ))?;
        let catch_all = types.iter().any(|t| t == "*") && !types.iter().any(|t| t.starts_with('!'));
        let own = match map.get("traits") {
            None => return Err((String::new(), "Required field traits not specified".into())),
            Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Mapping(traits)) => traits
                .iter()
                .map(|(name, cfg)| {
                    let name = name.as_str().unwrap_or("?").to_owned();
                    let place = format!(".traits.{name}");
                    let kind = match cfg.get("type") {
                        None => TraitType::Text,
                        Some(t) => t.as_str().and_then(TraitType::parse).ok_or_else(|| {
                            (place.clone() + ".type", format!("Invalid trait type {t:?} for trait {name} (text, int, float, datetime)"))
                        })?,
                    };
                    let field = Field::from_yaml(cfg).map_err(|e| (place, e))?;
                    Ok(TraitDefinition { name, kind, field })
                })
                .collect::<Result<_, (String, String)>>()?,
            Some(other) => return Err((".traits".into(), format!("traits is a mapping of names to fields, got {other:?}"))),
        };
        Ok(EventDefinition::with_traits(
            MeterMatcher::new(&types),
            catch_all,
            own,
        ))
    }
}

impl TraitDefinition {
    fn trait_of(&self, view: &Value) -> Option<Trait> {
        let value = self.field.first(view)?;
        if self.kind != TraitType::Text && value.as_str() == Some("") {
            return None;
        }
        let value = match self.kind {
            TraitType::Text => TraitValue::Text(python_str(&value).chars().take(255).collect()),
            TraitType::Int => TraitValue::Int(match &value {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().map(|f| f.trunc() as i64))?,
                Value::String(s) => s.trim().parse().ok()?,
                Value::Bool(b) => i64::from(*b),
                _ => return None,
            }),
            TraitType::Float => TraitValue::Float(match &value {
                Value::Number(n) => n.as_f64()?,
                Value::String(s) => s.trim().parse().ok()?,
                Value::Bool(b) => f64::from(u8::from(*b)),
                _ => return None,
            }),
            TraitType::Datetime => TraitValue::Text(meterflow_engine::time::format_iso_naive(
                value
                    .as_str()
                    .and_then(meterflow_engine::time::parse_micros)?,
            )),
        };
        Some(Trait {
            name: self.name.clone(),
            dtype: self.kind as u8,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Value {
        json!({"ctxt": {"request_id": "req-1", "tenant": "p-ctx", "user_id": "u-ctx"},
            "publisher_id": "compute.h1", "event_type": "compute.instance.create.end",
            "payload": {"instance_id": "vm-1", "tenant_id": "p1", "memory_mb": "2048", "vcpus": "",
                        "launched_at": "2024-05-01 12:00:00.5", "state": "active", "bad": "x"},
            "metadata": {"message_id": "m1", "timestamp": "2024-05-01 12:00:01+00:00"}})
    }

    #[test]
    fn last_matching_definition_wins_with_default_traits() {
        let yaml = r#"
- event_type: compute.instance.*
  traits: &instance_traits
    instance_id: {fields: payload.instance_id}
    state: {fields: payload.state}
- event_type: compute.instance.create.*
  traits:
    <<: *instance_traits
    memory_mb: {type: int, fields: payload.memory_mb}
    vcpus: {type: int, fields: payload.vcpus}
    launched_at: {type: datetime, fields: payload.launched_at}
    broken: {type: int, fields: payload.bad}
    project_id: {fields: payload.instance_id}
"#;
        let (defs, problems) = EventDefinitions::load(&[("e.yaml".into(), yaml.into())], false);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(defs.len(), 3, "two and the catch-all");
        let e = defs.event(&view()).unwrap();
        assert_eq!(e.generated, "2024-05-01T12:00:01");
        assert_eq!(e.message_id, "m1");
        let traits: Vec<(&str, u8, String)> = e
            .traits
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.dtype,
                    serde_json::to_string(&t.value).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            traits,
            vec![
                ("service", 1, "\"compute.h1\"".into()),
                ("request_id", 1, "\"req-1\"".into()),
                ("project_id", 1, "\"vm-1\"".into()),
                ("user_id", 1, "\"u-ctx\"".into()),
                ("tenant_id", 1, "\"p1\"".into()),
                ("instance_id", 1, "\"vm-1\"".into()),
                ("state", 1, "\"active\"".into()),
                ("memory_mb", 2, "2048".into()),
                ("launched_at", 4, "\"2024-05-01T12:00:00.500000\"".into()),
            ]
        );
        // Another type: the catch-all, default traits only.
        let mut other = view();
        other["event_type"] = json!("image.upload");
        assert_eq!(defs.event(&other).unwrap().traits.len(), 5);
        let (strict, _) = EventDefinitions::load(&[("e.yaml".into(), yaml.into())], true);
        assert!(strict.event(&other).is_none());
    }

    #[test]
    fn bitfield_traits_set_a_bit_per_flag_found() {
        // Ceilometer's example: the state flags of an instance as one integer trait.
        let yaml = r#"
- event_type: compute.instance.*
  traits:
    flags:
      type: int
      fields: [payload.state, payload.tenant_id, payload.missing, payload.memory_mb]
      plugin:
        name: bitfield
        parameters:
          initial_bitfield: 256
          flags:
            - {path: payload.state, bit: 0, value: active}
            - {path: payload.state, bit: 1, value: deleted}
            - {path: payload.tenant_id, bit: 2}
            - {path: payload.missing, bit: 3}
            - {path: payload.memory_mb, bit: 4, value: '2048'}
            - {path: payload.memory_mb, bit: 5, value: 2048}
"#;
        let (defs, problems) = EventDefinitions::load(&[("e.yaml".into(), yaml.into())], false);
        assert!(problems.is_empty(), "{problems:?}");
        let e = defs.event(&view()).unwrap();
        let flags = e.traits.iter().find(|t| t.name == "flags").unwrap();
        assert_eq!(
            serde_json::to_value(&flags.value).unwrap(),
            json!(256 | 1 | 4 | 16)
        );
        assert_eq!(flags.dtype, 2);

        let bad = "- event_type: x\n  traits:\n    f: {fields: payload.a, plugin: {name: bitfield, parameters: {flags: [{path: $.payload.a, bit: 1}]}}}\n";
        let (_, problems) = EventDefinitions::load(&[("e.yaml".into(), bad.into())], false);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("write \"payload.a\""),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn exclusions_and_problems() {
        let yaml = "- event_type: ['!image.*']\n  traits: {}\n- event_type: x\n  traits: {a: {type: blob, fields: payload.a}}\n- traits: {}\n";
        let (defs, problems) = EventDefinitions::load(&[("e.yaml".into(), yaml.into())], false);
        let places: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(places, vec!["[1].traits.a.type", "[2]"]);
        let mut v = view();
        v["event_type"] = json!("image.upload");
        // Not the exclusion definition; the catch-all.
        assert!(defs.event(&v).is_some());
        assert_eq!(defs.len(), 2);
    }
}
