//! One field of a meter or event definition (Ceilometer's `declarative.Definition`): a JSONPath
//! (or a list of them, tried in order), an integer constant, or `{fields: ..., plugin: ...}`
//! with a trait plugin (`split`, `timedelta`) applied to what the paths found.

use serde_json::Value;
use serde_yaml::Value as Yaml;

use super::path::Path;
use super::python_str;

/// A field definition, ready to evaluate against a notification.
#[derive(Clone, Debug)]
pub struct Field {
    getter: Getter,
    plugin: Option<Plugin>,
}

#[derive(Clone, Debug)]
enum Getter {
    Constant(Value),
    Paths(Vec<Path>),
}

/// Ceilometer's trait plugins (`ceilometer.event.trait_plugins`).
#[derive(Clone, Debug)]
enum Plugin {
    /// The `segment`th piece of the value (as text) split at `separator`, at most `max_split`
    /// times.
    Split {
        separator: String,
        segment: usize,
        max_split: Option<usize>,
    },
    /// The absolute difference in seconds between exactly two timestamps.
    Timedelta,
}

impl Field {
    /// Reads a field from its YAML form; the error says what is accepted.
    pub fn from_yaml(cfg: &Yaml) -> Result<Field, String> {
        let (fields, plugin) = match cfg {
            Yaml::Mapping(map) => {
                let fields = map.get("fields").ok_or(
                    "the field 'fields' is required when a field is a mapping ({fields: PATH or [PATHS], plugin: ...})",
                )?;
                for key in map.keys() {
                    if !matches!(key.as_str(), Some("fields" | "plugin" | "type")) {
                        return Err(format!(
                            "unknown key {key:?} in a field (known: fields, plugin, type)"
                        ));
                    }
                }
                let plugin = map.get("plugin").map(Plugin::from_yaml).transpose()?;
                (fields, plugin)
            }
            other => (other, None),
        };
        let getter = match fields {
            Yaml::Number(n) if n.is_i64() || n.is_u64() => {
                Getter::Constant(serde_json::to_value(n).map_err(|e| e.to_string())?)
            }
            Yaml::Number(n) => Getter::Constant(
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or("a constant field must be a finite number")?,
            ),
            Yaml::String(s) => Getter::Paths(vec![Path::parse(s).map_err(|e| e.to_string())?]),
            Yaml::Sequence(items) if !items.is_empty() => Getter::Paths(
                items
                    .iter()
                    .map(|i| match i {
                        Yaml::String(s) => Path::parse(s).map_err(|e| e.to_string()),
                        other => Err(format!("a list of fields must hold JSONPath strings, got {other:?}")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(format!(
                    "a field is a JSONPath string, a list of them, an integer or {{fields: ..., plugin: ...}}, got {other:?}"
                ))
            }
        };
        Ok(Field { getter, plugin })
    }

    /// The first non-null value found (Ceilometer's `parse(message)`).
    pub fn first(&self, message: &Value) -> Option<Value> {
        self.values(message, false).into_iter().next()
    }

    /// Every value found; with `keep_nulls`, nulls too (Ceilometer's `return_all_values`).
    pub fn values(&self, message: &Value, keep_nulls: bool) -> Vec<Value> {
        let paths = match &self.getter {
            Getter::Constant(c) => return vec![c.clone()],
            Getter::Paths(paths) => paths,
        };
        let mut found: Vec<Value> = paths.iter().flat_map(|p| p.find(message)).collect();
        if !keep_nulls {
            found.retain(|v| !v.is_null());
        }
        match &self.plugin {
            None => found,
            Some(plugin) => plugin
                .apply(&found)
                .into_iter()
                .filter(|v| !v.is_null())
                .collect(),
        }
    }

    /// Whether the field is one bare word such as `GB` or `memory` (the configured text is the
    /// value unless the message has such a key).
    pub fn is_bare_word(&self) -> bool {
        matches!(&self.getter, Getter::Paths(p) if p.len() == 1 && p[0].is_single_field())
    }
}

impl Plugin {
    fn from_yaml(cfg: &Yaml) -> Result<Plugin, String> {
        let (name, params) = match cfg {
            Yaml::String(name) => (name.as_str(), None),
            Yaml::Mapping(map) => (
                map.get("name")
                    .and_then(Yaml::as_str)
                    .ok_or("plugin specified, but no plugin name supplied (plugin: {name: split, parameters: {...}})")?,
                map.get("parameters"),
            ),
            other => return Err(format!("plugin must be a name or {{name, parameters}}, got {other:?}")),
        };
        let param = |key: &str| params.and_then(|p| p.get(key));
        match name {
            "split" => Ok(Plugin::Split {
                separator: match param("separator") {
                    None => ".".into(),
                    Some(Yaml::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(format!("split: separator must be text, got {other:?}"))
                    }
                },
                segment: match param("segment") {
                    None => 0,
                    Some(v) => v.as_u64().ok_or("split: segment must be a whole number")? as usize,
                },
                max_split: match param("max_split") {
                    None | Some(Yaml::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok_or("split: max_split must be a whole number")?
                            as usize,
                    ),
                },
            }),
            "timedelta" => Ok(Plugin::Timedelta),
            other => Err(format!(
                "no plugin named {other} available (known: split, timedelta)"
            )),
        }
    }

    fn apply(&self, values: &[Value]) -> Vec<Value> {
        match self {
            Plugin::Split {
                separator,
                segment,
                max_split,
            } => values
                .iter()
                .map(|v| {
                    let text = python_str(v);
                    let piece = match max_split {
                        Some(n) => text.splitn(n + 1, separator.as_str()).nth(*segment),
                        None => text.split(separator.as_str()).nth(*segment),
                    };
                    piece.map_or(Value::Null, |p| Value::String(p.to_owned()))
                })
                .collect(),
            Plugin::Timedelta => {
                let micros = |v: &Value| v.as_str().and_then(meterflow_engine::time::parse_micros);
                match values {
                    [start, end] => match (micros(start), micros(end)) {
                        (Some(s), Some(e)) => {
                            vec![serde_json::Number::from_f64((e - s).abs() as f64 / 1e6)
                                .map_or(Value::Null, Value::Number)]
                        }
                        _ => vec![Value::Null],
                    },
                    _ => vec![Value::Null],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(yaml: &str) -> Field {
        Field::from_yaml(&serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn paths_lists_constants_and_plugins() {
        let msg = json!({"payload": {"a": null, "b": 2, "created_at": "2024-05-01 12:00:00",
            "launched_at": "2024-05-01T12:00:42.500000", "name": "host@be#pool"}});
        assert_eq!(field("$.payload.b").first(&msg), Some(json!(2)));
        assert_eq!(
            field("[$.payload.a, $.payload.b]").first(&msg),
            Some(json!(2))
        );
        assert_eq!(
            field("[$.payload.a, $.payload.b]").values(&msg, true),
            vec![json!(null), json!(2)]
        );
        assert_eq!(field("1").first(&msg), Some(json!(1)));
        assert_eq!(
            field("{fields: [$.payload.created_at, $.payload.launched_at], plugin: timedelta}")
                .first(&msg),
            Some(json!(42.5))
        );
        assert_eq!(
            field("{fields: $.payload.name, plugin: {name: split, parameters: {separator: '#', segment: 1}}}").first(&msg),
            Some(json!("pool"))
        );
        assert_eq!(
            field("{fields: $.payload.b, plugin: split}").first(&msg),
            Some(json!("2"))
        );
    }

    #[test]
    fn bad_fields_say_what_is_accepted() {
        for (yaml, want) in [
            ("{plugin: split}", "'fields' is required"),
            (
                "{fields: $.a, plugin: bitfield}",
                "no plugin named bitfield",
            ),
            ("{fields: $.a, plugin: {parameters: {}}}", "no plugin name"),
            ("$.a[", "cannot parse JSONPath"),
            ("[]", "a field is"),
        ] {
            let e = Field::from_yaml(&serde_yaml::from_str(yaml).unwrap()).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
