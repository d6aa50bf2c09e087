//! One field of a meter or event definition (Ceilometer's `declarative.Definition`): a JSONPath
//! (or a list of them, tried in order), an integer constant, or `{fields: ..., plugin: ...}`
//! with a trait plugin (`split`, `timedelta`, `bitfield`) applied to what the paths found.

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
    /// An integer with a bit set for each flag whose path was found (with the flag's value,
    /// when it has one).
    Bitfield { initial: i64, flags: Vec<Flag> },
}

/// One flag of the `bitfield` plugin.
#[derive(Clone, Debug)]
struct Flag {
    /// The place of a match, as Ceilometer names it (`payload.foo`, `payload.a.[0]`).
    path: String,
    bit: u32,
    value: Option<Value>,
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
        let Some(plugin) = &self.plugin else {
            return found(paths, message, keep_nulls);
        };
        plugin
            .apply(paths, message, keep_nulls)
            .into_iter()
            .filter(|v| !v.is_null())
            .collect()
    }

    /// Why the field cannot give one value per match (a meter definition with `lookup` needs
    /// that): its plugin makes one value of all of them (Ceilometer: "Plugin X don't allows
    /// to return multiple values").
    pub fn single_valued(&self) -> Option<&'static str> {
        match self.plugin {
            Some(Plugin::Timedelta) => Some("timedelta"),
            Some(Plugin::Bitfield { .. }) => Some("bitfield"),
            Some(Plugin::Split { .. }) | None => None,
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
            "bitfield" => Ok(Plugin::Bitfield {
                initial: match param("initial_bitfield") {
                    None | Some(Yaml::Null) => 0,
                    Some(v) => v
                        .as_i64()
                        .ok_or("bitfield: initial_bitfield must be a whole number")?,
                },
                flags: match param("flags") {
                    None | Some(Yaml::Null) => Vec::new(),
                    Some(Yaml::Sequence(flags)) => flags
                        .iter()
                        .enumerate()
                        .map(|(i, f)| {
                            Flag::from_yaml(f).map_err(|e| format!("bitfield: flags[{i}]: {e}"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(format!(
                            "bitfield: flags must be a list of {{path, bit, value}}, got {other:?}"
                        ))
                    }
                },
            }),
            other => Err(format!(
                "no plugin named {other} available (known: bitfield, split, timedelta)"
            )),
        }
    }

    /// The plugin's values from what `paths` find in `message` (nulls kept with `keep_nulls`).
    fn apply(&self, paths: &[Path], message: &Value, keep_nulls: bool) -> Vec<Value> {
        match self {
            Plugin::Bitfield { initial, flags } => {
                let located: Vec<(String, Value)> = paths
                    .iter()
                    .flat_map(|p| p.find_located(message))
                    .filter(|(_, v)| keep_nulls || !v.is_null())
                    .collect();
                vec![Value::from(bitfield(*initial, flags, &located))]
            }
            Plugin::Split {
                separator,
                segment,
                max_split,
            } => found(paths, message, keep_nulls)
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
                match &found(paths, message, keep_nulls)[..] {
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

/// The values `paths` find in `message`, in order (nulls only with `keep_nulls`).
fn found(paths: &[Path], message: &Value, keep_nulls: bool) -> Vec<Value> {
    paths
        .iter()
        .flat_map(|p| p.find(message))
        .filter(|v| keep_nulls || !v.is_null())
        .collect()
}

impl Flag {
    fn from_yaml(cfg: &Yaml) -> Result<Flag, String> {
        let map = cfg
            .as_mapping()
            .ok_or_else(|| format!("a flag is {{path, bit, value}}, got {cfg:?}"))?;
        let path = map
            .get("path")
            .and_then(Yaml::as_str)
            .ok_or("'path' (the place of a field, such as payload.state) is required")?;
        if path.starts_with('$') {
            // Ceilometer compares the text with the matches' places, which never start with
            // the root: such a flag could never be set.
            return Err(format!(
                "'path' names a place as Ceilometer does, without the root: write {:?}, not {path:?}",
                path.trim_start_matches('$').trim_start_matches('.')
            ));
        }
        let path = path.to_owned();
        let bit = match map.get("bit") {
            Some(Yaml::Number(n)) => n.as_u64(),
            Some(Yaml::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|b| *b < 63)
        .ok_or("'bit' is required, a whole number from 0 (the lowest bit) to 62")?;
        let value = map
            .get("value")
            .map(|v| serde_json::to_value(v).map_err(|e| format!("'value': {e}")))
            .transpose()?;
        Ok(Flag {
            path,
            bit: bit as u32,
            value,
        })
    }
}

/// Ceilometer's `BitfieldTraitPlugin`: `initial` with the bit of every flag set whose path is
/// among the matches (the last match of a place counts), and, when the flag has a value, whose
/// match equals it as Python's `==` does.
fn bitfield(initial: i64, flags: &[Flag], found: &[(String, Value)]) -> i64 {
    flags.iter().fold(initial, |bits, flag| {
        let Some((_, v)) = found.iter().rev().find(|(at, _)| *at == flag.path) else {
            return bits;
        };
        if flag.value.as_ref().is_none_or(|want| python_eq(v, want)) {
            bits | (1 << flag.bit)
        } else {
            bits
        }
    })
}

/// Python's `==` between two JSON values: numbers and booleans by value (`1 == 1.0 == True`),
/// lists and mappings element by element.
fn python_eq(a: &Value, b: &Value) -> bool {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| python_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| python_eq(v, w)))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
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
    fn bitfield_reads_the_places_of_matches() {
        let msg = json!({"payload": {"a": [1, 2], "b": {"x": true, "y": null}, "c": 1.0}});
        let bits = |flags: &str| {
            field(&format!(
                "{{fields: ['$.payload.a[*]', '$.payload.b.*', payload.c], plugin: {{name: bitfield, parameters: {{flags: {flags}}}}}}}"
            ))
            .first(&msg)
        };
        assert_eq!(bits("[]"), Some(json!(0)));
        // Places are named as Ceilometer names them: `payload.a.[1]`, `payload.b.x`.
        assert_eq!(
            bits("[{path: 'payload.a.[1]', bit: 0}, {path: payload.b.x, bit: 1, value: 1}]"),
            Some(json!(3))
        );
        // A null is not found; a value compares as Python's == (1 == 1.0 == True).
        assert_eq!(
            bits("[{path: payload.b.y, bit: 0}, {path: payload.c, bit: 2, value: 1}, {path: payload.c, bit: 3, value: '1'}]"),
            Some(json!(4))
        );
        // The bit may be written as text, as Python's int() reads it.
        assert_eq!(
            bits("[{path: payload.c, bit: '62'}]"),
            Some(json!(1_i64 << 62))
        );
        assert!(field("$.payload.c").single_valued().is_none());
        assert_eq!(
            field("{fields: $.a, plugin: bitfield}").single_valued(),
            Some("bitfield")
        );
    }

    #[test]
    fn bad_fields_say_what_is_accepted() {
        for (yaml, want) in [
            ("{plugin: split}", "'fields' is required"),
            (
                "{fields: $.a, plugin: bitfeld}",
                "no plugin named bitfeld available (known: bitfield",
            ),
            (
                "{fields: $.a, plugin: {name: bitfield, parameters: {flags: [{path: a}]}}}",
                "bitfield: flags[0]: 'bit' is required",
            ),
            (
                "{fields: $.a, plugin: {name: bitfield, parameters: {flags: [{bit: 1}]}}}",
                "'path' (the place of a field",
            ),
            (
                "{fields: $.a, plugin: {name: bitfield, parameters: {flags: {path: a}}}}",
                "flags must be a list",
            ),
            (
                "{fields: $.a, plugin: {name: bitfield, parameters: {initial_bitfield: x}}}",
                "initial_bitfield must be a whole number",
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
