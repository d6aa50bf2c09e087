//! Service notifications (nova, cinder, glance, neutron, swift, ...) turned into samples by
//! Ceilometer's meter definitions (`meters.yaml`), and the pieces event definitions share.
//!
//! A definition addresses the notification as Ceilometer's notification agent sees it
//! ([`message_view`]): `{"ctxt", "publisher_id", "event_type", "priority", "payload",
//! "metadata": {"message_id", "timestamp"}}`, through the JSONPath dialect in [`path`] and the
//! field forms in [`field`]. [`meters::MeterDefinitions`] holds a `meters.yaml`.

pub mod field;
pub mod meters;
pub mod path;

use serde_json::{Map, Value};
use serde_yaml::Value as Yaml;

/// The notification in `text` as Ceilometer's definitions address it: the oslo.messaging 2.0
/// envelope unwrapped; the context (`_context`, `ctxt`, or the rabbit driver's flattened
/// `_context_*` keys) under `ctxt`; `message_id` and `timestamp` under `metadata`.
///
/// # Examples
/// ```
/// use meterflow_operators::notification::message_view;
/// let line = r#"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"image.upload\", \"publisher_id\": \"image.host1\", \"message_id\": \"m1\", \"timestamp\": \"2024-05-01 12:00:00\", \"payload\": {\"size\": 5}, \"_context\": {\"user\": \"u1\"}}"}"#;
/// let view = message_view(line).unwrap();
/// assert_eq!(view["ctxt"]["user"], "u1");
/// assert_eq!(view["metadata"]["timestamp"], "2024-05-01 12:00:00");
/// assert_eq!(view["payload"]["size"], 5);
/// ```
pub fn message_view(text: &str) -> Result<Value, String> {
    let outer: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(mut body) = (match outer.get("oslo.message") {
        Some(Value::String(inner)) => serde_json::from_str(inner)
            .map_err(|e| format!("oslo.message is not valid JSON ({e})"))?,
        Some(_) => return Err("oslo.message must be a JSON string".into()),
        None => outer,
    }) else {
        return Err("a notification must be a JSON object".into());
    };
    let mut ctxt = match body.remove("_context").or_else(|| body.remove("ctxt")) {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    let flattened: Vec<String> = body
        .keys()
        .filter(|k| k.starts_with("_context_"))
        .cloned()
        .collect();
    for key in flattened {
        if let Some(v) = body.remove(&key) {
            ctxt.insert(key["_context_".len()..].to_owned(), v);
        }
    }
    let mut take = |key: &str| body.remove(key).unwrap_or(Value::Null);
    let mut metadata = Map::new();
    metadata.insert("message_id".into(), take("message_id"));
    metadata.insert("timestamp".into(), take("timestamp"));
    let mut view = Map::new();
    view.insert("ctxt".into(), Value::Object(ctxt));
    view.insert("publisher_id".into(), take("publisher_id"));
    view.insert("event_type".into(), take("event_type"));
    view.insert("priority".into(), take("priority"));
    view.insert("payload".into(), take("payload"));
    view.insert("metadata".into(), Value::Object(metadata));
    Ok(Value::Object(view))
}

/// Python's `str()` of a JSON value (`True`, `None`, `1.0`), as Ceilometer's plugins see it.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Whether Python would take `v` as true (`if value:`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Resolves YAML merge keys (`<<: *anchor`) as PyYAML does: the merged entries come first, in
/// order (of several merged mappings the first wins), and the mapping's own keys override them
/// in place. (`serde_yaml`'s own merge appends the merged keys instead, which reorders
/// Ceilometer's traits and metadata.)
pub fn apply_merge(doc: &mut serde_yaml::Value) -> Result<(), String> {
    use serde_yaml::{Mapping, Value as Yaml};
    match doc {
        Yaml::Mapping(map) => {
            for (_, v) in map.iter_mut() {
                apply_merge(v)?;
            }
            let Some(merge) = map.remove("<<") else {
                return Ok(());
            };
            let sources = match merge {
                Yaml::Mapping(m) => vec![m],
                Yaml::Sequence(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Yaml::Mapping(m) => Ok(m),
                        other => Err(format!("a merge key (<<) takes mappings, got {other:?}")),
                    })
                    .collect::<Result<_, _>>()?,
                other => return Err(format!("a merge key (<<) takes a mapping, got {other:?}")),
            };
            let mut merged = Mapping::new();
            for source in sources {
                for (k, v) in source {
                    if !merged.contains_key(&k) {
                        merged.insert(k, v);
                    }
                }
            }
            for (k, v) in std::mem::take(map) {
                merged.insert(k, v);
            }
            *map = merged;
            Ok(())
        }
        Yaml::Sequence(items) => items.iter_mut().try_for_each(apply_merge),
        _ => Ok(()),
    }
}

/// A problem in a meter or event definition file, with its place.
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionProblem {
    /// The file (its origin as given to `load`).
    pub file: String,
    /// The key path in it, e.g. `metric[3].volume`.
    pub place: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

/// One definition file `(origin, text)` as YAML with its merge keys resolved, or the problem
/// that stops it being read.
fn read_document(origin: &str, text: &str) -> Result<Yaml, DefinitionProblem> {
    let problem = |place: String, message: String| DefinitionProblem {
        file: origin.to_owned(),
        place,
        message,
    };
    meterflow_engine::files::check_nesting(text).map_err(|m| problem(String::new(), m))?;
    let mut doc: Yaml = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        problem(at, format!("not valid YAML: {e}"))
    })?;
    apply_merge(&mut doc)
        .map_err(|e| problem(String::new(), format!("bad YAML merge key (<<): {e}")))?;
    Ok(doc)
}

/// Reads each definition file `(origin, text)` in order and hands its document to `each`,
/// with a function recording a problem `(place, message)` in that file; a file that cannot be
/// read is a problem of its own. Returns every problem.
pub fn each_document(
    files: &[(String, String)],
    mut each: impl FnMut(Yaml, &mut dyn FnMut(String, String)),
) -> Vec<DefinitionProblem> {
    let mut problems = Vec::new();
    for (origin, text) in files {
        match read_document(origin, text) {
            Ok(doc) => each(doc, &mut |place, message| {
                problems.push(DefinitionProblem {
                    file: origin.clone(),
                    place,
                    message,
                })
            }),
            Err(p) => problems.push(p),
        }
    }
    problems
}

/// A definition key that is one text or a list of texts (`event_type`, `lookup`): `None` when
/// absent; otherwise the texts, or `(".KEY", what)` naming what is accepted.
pub fn text_list(
    value: Option<&Yaml>,
    key: &str,
    what: &str,
) -> Result<Option<Vec<String>>, (String, String)> {
    match value {
        None => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .map(Some)
            .ok_or_else(|| (format!(".{key}"), what.to_owned())),
        Some(other) => Err((format!(".{key}"), format!("{what}, got {other:?}"))),
    }
}
