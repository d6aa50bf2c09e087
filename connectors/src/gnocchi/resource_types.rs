//! Gnocchi's resource types: a name and the attributes its resources carry, each with a type
//! (`string`, `uuid`, `number`, `bool`, `datetime`) and whether it is required, validated
//! as Gnocchi validates them when a type is created and when a resource is created or
//! updated.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// Names a resource attribute may not take: the fields every resource has.
pub const RESERVED: [&str; 14] = [
    "id",
    "type",
    "metrics",
    "revision",
    "revision_start",
    "revision_end",
    "started_at",
    "ended_at",
    "user_id",
    "project_id",
    "created_by_user_id",
    "created_by_project_id",
    "get_metric",
    "creator",
];

/// What values one attribute takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A string of `min_length` to `max_length` characters.
    String {
        /// Fewest characters.
        min_length: u64,
        /// Most characters.
        max_length: u64,
    },
    /// A UUID.
    Uuid,
    /// A number within `min` and `max` when given.
    Number {
        /// Smallest value.
        min: Option<f64>,
        /// Largest value.
        max: Option<f64>,
    },
    /// `true` or `false`.
    Bool,
    /// A time (ISO 8601 or seconds since the epoch).
    Datetime,
    /// Any value: the attributes of a resource definition (`gnocchi_resources.yaml`), whose
    /// types Ceilometer's own setup decides.
    Any,
}

/// One attribute of a resource type.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Its values.
    pub kind: Kind,
    /// Whether every resource must have it.
    pub required: bool,
}

/// A resource type.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// Its name.
    pub name: String,
    /// Its attributes, by name.
    pub attributes: BTreeMap<String, Attribute>,
}

fn invalid(why: impl std::fmt::Display) -> String {
    format!("Invalid input: {why}")
}

impl Attribute {
    /// Parses Gnocchi's JSON of one attribute (`{"type": "string", "required": false,
    /// "max_length": 64}`), its defaults applied (`required` true, strings of 0 to 256 characters).
    pub fn from_json(name: &str, v: &Value) -> Result<Attribute, String> {
        let valid_name = name.len() <= 63
            && !RESERVED.contains(&name)
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(invalid(format!(
                "Resource attribute name {name} is invalid"
            )));
        }
        let Some(o) = v.as_object() else {
            return Err(invalid(format!(
                "attribute {name} is an object such as {{\"type\": \"string\", \"required\": false}}"
            )));
        };
        let allowed: &[&str] = match o.get("type").and_then(Value::as_str) {
            Some("string") => &["type", "required", "min_length", "max_length", "options"],
            Some("number") => &["type", "required", "min", "max", "options"],
            Some("uuid" | "bool" | "datetime") => &["type", "required", "options"],
            other => {
                return Err(invalid(format!(
                    "attribute {name}: type {} is not one of string, uuid, number, bool, datetime",
                    other.map_or("(none)".to_owned(), str::to_owned)
                )))
            }
        };
        if let Some(extra) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(invalid(format!(
                "extra keys not allowed @ data['attributes']['{name}']['{extra}']"
            )));
        }
        let required = match o.get("required") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid(format!(
                    "expected bool @ data['attributes']['{name}']['required'], got {other}"
                )))
            }
        };
        let whole = |key: &str, default: u64| -> Result<u64, String> {
            match o.get(key) {
                None => Ok(default),
                Some(v) => v.as_u64().filter(|n| *n <= 256).ok_or_else(|| {
                    invalid(format!(
                        "{key} of attribute {name} is a whole number from 0 to 256, not {v}"
                    ))
                }),
            }
        };
        let number = |key: &str| -> Result<Option<f64>, String> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    invalid(format!("{key} of attribute {name} is a number, not {v}"))
                }),
            }
        };
        let kind = match o["type"].as_str() {
            Some("string") => {
                let (min_length, max_length) = (whole("min_length", 0)?, whole("max_length", 256)?);
                if min_length > max_length {
                    return Err(invalid(format!(
                        "Resource attribute value min (or min_length) {min_length} must be less than or equal to max (or max_length) {max_length}!"
                    )));
                }
                Kind::String {
                    min_length,
                    max_length,
                }
            }
            Some("number") => {
                let (min, max) = (number("min")?, number("max")?);
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(invalid(format!(
                            "Resource attribute value min (or min_length) {lo} must be less than or equal to max (or max_length) {hi}!"
                        )));
                    }
                }
                Kind::Number { min, max }
            }
            Some("uuid") => Kind::Uuid,
            Some("bool") => Kind::Bool,
            _ => Kind::Datetime,
        };
        Ok(Attribute { kind, required })
    }

    /// Gnocchi's JSON of the attribute.
    pub fn to_json(&self) -> Value {
        let mut v = match &self.kind {
            Kind::String {
                min_length,
                max_length,
            } => json!({"type": "string", "min_length": min_length, "max_length": max_length}),
            Kind::Any => json!({"type": "string", "min_length": 0, "max_length": 256}),
            Kind::Uuid => json!({"type": "uuid"}),
            Kind::Number { min, max } => json!({"type": "number", "min": min, "max": max}),
            Kind::Bool => json!({"type": "bool"}),
            Kind::Datetime => json!({"type": "datetime"}),
        };
        v["required"] = Value::Bool(self.required);
        v
    }

    /// Checks one value (`null` is taken where the attribute is not required).
    pub fn check(&self, name: &str, v: &Value) -> Result<(), String> {
        let bad = |expected: &str| {
            Err(invalid(format!(
                "{expected} for dictionary value @ data['{name}']"
            )))
        };
        if v.is_null() {
            return match (&self.kind, self.required) {
                (Kind::Any, _) | (_, false) => Ok(()),
                _ => bad("expected a value, not null,"),
            };
        }
        match &self.kind {
            Kind::Any => Ok(()),
            Kind::String {
                min_length,
                max_length,
            } => match v.as_str() {
                None => bad("expected str"),
                Some(s) => {
                    let n = s.chars().count() as u64;
                    if n < *min_length {
                        bad(&format!("length of value must be at least {min_length}"))
                    } else if n > *max_length {
                        bad(&format!("length of value must be at most {max_length}"))
                    } else {
                        Ok(())
                    }
                }
            },
            Kind::Uuid => match v.as_str().and_then(super::canonical_uuid) {
                Some(_) => Ok(()),
                None => bad("badly formed hexadecimal UUID string"),
            },
            Kind::Number { min, max } => match v.as_f64() {
                Some(x) if v.is_number() => {
                    if min.is_some_and(|m| x < m) {
                        bad(&format!(
                            "value must be at least {}",
                            min.unwrap_or_default()
                        ))
                    } else if max.is_some_and(|m| x > m) {
                        bad(&format!(
                            "value must be at most {}",
                            max.unwrap_or_default()
                        ))
                    } else {
                        Ok(())
                    }
                }
                _ => bad("expected Real"),
            },
            Kind::Bool => match v {
                Value::Bool(_) => Ok(()),
                _ => bad("expected bool"),
            },
            Kind::Datetime => match v {
                Value::String(s)
                    if meterflow_engine::time::parse_micros(s).is_some()
                        || s.parse::<f64>().is_ok() =>
                {
                    Ok(())
                }
                Value::Number(_) => Ok(()),
                _ => bad("expected a datetime"),
            },
        }
    }
}

impl ResourceType {
    /// `generic`: the attributes every resource has, nothing more.
    pub fn generic() -> ResourceType {
        ResourceType {
            name: "generic".into(),
            attributes: BTreeMap::new(),
        }
    }

    /// A type as `POST /v1/resource_type` takes it: `{"name", "attributes"}`.
    pub fn from_json(v: &Value) -> Result<ResourceType, String> {
        let Some(o) = v.as_object() else {
            return Err(invalid(
                "a resource type is an object: {\"name\": ..., \"attributes\": {...}}",
            ));
        };
        if let Some(extra) = o
            .keys()
            .find(|k| !["name", "attributes", "state"].contains(&k.as_str()))
        {
            return Err(invalid(format!("extra keys not allowed @ data['{extra}']")));
        }
        let name = match o.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => return Err(invalid("required key not provided @ data['name']")),
        };
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        if !valid {
            return Err(invalid(format!(
                "resource type name {name:?} is invalid: letters, digits, _ and -, at most 255"
            )));
        }
        let mut attributes = BTreeMap::new();
        match o.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(attrs)) => {
                for (k, a) in attrs {
                    attributes.insert(k.clone(), Attribute::from_json(k, a)?);
                }
            }
            Some(other) => {
                return Err(invalid(format!(
                    "expected a dictionary @ data['attributes'], got {other}"
                )))
            }
        }
        Ok(ResourceType { name, attributes })
    }

    /// Gnocchi's JSON: `{"name", "state": "active", "attributes"}`.
    pub fn to_json(&self) -> Value {
        let attributes: Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, a)| (k.clone(), a.to_json()))
            .collect();
        json!({"name": self.name, "state": "active", "attributes": attributes})
    }

    /// Checks a resource's type-specific attributes: on creation (`update` false) every
    /// required attribute must be there; any key that is neither a generic field nor one of
    /// the type's is refused, as Gnocchi's schema refuses it.
    pub fn check(
        &self,
        body: &Map<String, Value>,
        generic: &[&str],
        update: bool,
    ) -> Result<(), String> {
        for (k, v) in body {
            if generic.contains(&k.as_str()) {
                continue;
            }
            match self.attributes.get(k) {
                Some(a) => a.check(k, v)?,
                None => return Err(invalid(format!("extra keys not allowed @ data['{k}']"))),
            }
        }
        if !update {
            if let Some((k, _)) = self
                .attributes
                .iter()
                .find(|(k, a)| a.required && !matches!(a.kind, Kind::Any) && !body.contains_key(*k))
            {
                return Err(invalid(format!("required key not provided @ data['{k}']")));
            }
        }
        Ok(())
    }

    /// Applies a JSON patch (RFC 6902) of `add` and `remove` operations on
    /// `/attributes/NAME`, as `PATCH /v1/resource_type/NAME` takes it. A required attribute
    /// added needs `options.fill`, the value existing resources get.
    pub fn patched(&self, patch: &Value) -> Result<(ResourceType, Vec<(String, Value)>), String> {
        let Some(ops) = patch.as_array() else {
            return Err(invalid("a JSON patch is a list of operations"));
        };
        let mut next = self.clone();
        let mut fills = Vec::new();
        for op in ops {
            let (Some(kind), Some(path)) = (
                op.get("op").and_then(Value::as_str),
                op.get("path").and_then(Value::as_str),
            ) else {
                return Err(invalid(format!(
                    "{op}: each operation has \"op\" and \"path\""
                )));
            };
            let Some(name) = path
                .strip_prefix("/attributes/")
                .filter(|n| !n.contains('/'))
            else {
                return Err(invalid(format!(
                    "{path}: only /attributes/NAME can be changed"
                )));
            };
            match kind {
                "add" => {
                    let value = op.get("value").cloned().unwrap_or(Value::Null);
                    let mut spec = value.clone();
                    let fill = spec
                        .as_object_mut()
                        .and_then(|o| o.remove("options"))
                        .and_then(|o| o.get("fill").cloned());
                    let attribute = Attribute::from_json(name, &spec)?;
                    if let Some(fill) = &fill {
                        attribute.check(name, fill).map_err(|e| {
                            invalid(format!(
                                "Option 'fill' of resource attribute {name} is invalid: {e}"
                            ))
                        })?;
                    }
                    if attribute.required && fill.is_none() {
                        return Err(invalid(format!(
                            "Option 'fill' of resource attribute {name} is invalid: must not be empty if required=True"
                        )));
                    }
                    if let Some(old) = self.attributes.get(name) {
                        if std::mem::discriminant(&old.kind)
                            != std::mem::discriminant(&attribute.kind)
                        {
                            return Err(format!(
                                "Type update is not available yet. Changing {} to {} for attribute {name} of resource {}",
                                old.to_json()["type"], attribute.to_json()["type"], self.name
                            ));
                        }
                    }
                    if let Some(fill) = fill {
                        fills.push((name.to_owned(), fill));
                    }
                    next.attributes.insert(name.to_owned(), attribute);
                }
                "remove" => {
                    if next.attributes.remove(name).is_none() {
                        return Err(format!("can't remove a non-existent object '{name}'"));
                    }
                }
                other => {
                    return Err(invalid(format!(
                    "operation {other:?} is not supported: use add or remove on /attributes/NAME"
                )))
                }
            }
        }
        Ok((next, fills))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_resources_are_validated_as_gnocchi_does() {
        let t = ResourceType::from_json(&json!({"name": "host", "attributes": {
            "host": {"type": "string", "required": true, "max_length": 8},
            "cores": {"type": "number", "required": false, "min": 1},
            "image": {"type": "uuid", "required": false}}}))
        .unwrap();
        assert_eq!(
            t.to_json()["attributes"]["host"],
            json!({"type": "string", "min_length": 0, "max_length": 8, "required": true})
        );
        let body = |v: Value| v.as_object().unwrap().clone();
        let generic = ["id", "user_id"];
        assert!(t
            .check(
                &body(json!({"id": "a", "host": "h1", "cores": 4})),
                &generic,
                false
            )
            .is_ok());
        for (b, says) in [
            (
                json!({"id": "a"}),
                "required key not provided @ data['host']",
            ),
            (json!({"host": 5}), "expected str"),
            (json!({"host": "far-too-long"}), "at most 8"),
            (json!({"host": "h", "cores": 0}), "at least 1"),
            (json!({"host": "h", "image": "x"}), "UUID"),
            (
                json!({"host": "h", "flavor": "x"}),
                "extra keys not allowed @ data['flavor']",
            ),
        ] {
            let err = t.check(&body(b.clone()), &generic, false).unwrap_err();
            assert!(err.contains(says), "{b}: {err}");
        }
        assert!(t.check(&body(json!({"cores": 2})), &generic, true).is_ok());
        for (v, says) in [
            (
                json!({"name": "x", "attributes": {"id": {"type": "string"}}}),
                "name id is invalid",
            ),
            (
                json!({"name": "x", "attributes": {"a": {"type": "text"}}}),
                "not one of",
            ),
            (
                json!({"name": "x", "attributes": {"a": {"type": "string", "min_length": 9, "max_length": 2}}}),
                "must be less than",
            ),
            (json!({"attributes": {}}), "data['name']"),
        ] {
            assert!(
                ResourceType::from_json(&v).unwrap_err().contains(says),
                "{v}"
            );
        }
        let (next, fills) = t
            .patched(&json!([{"op": "add", "path": "/attributes/zone", "value": {"type": "string", "required": true, "options": {"fill": "z1"}}},
                             {"op": "remove", "path": "/attributes/cores"}]))
            .unwrap();
        assert!(next.attributes.contains_key("zone") && !next.attributes.contains_key("cores"));
        assert_eq!(fills, vec![("zone".to_owned(), json!("z1"))]);
        assert!(t
            .patched(&json!([{"op": "add", "path": "/attributes/z", "value": {"type": "bool"}}]))
            .unwrap_err()
            .contains("fill"));
        assert!(t
            .patched(&json!([{"op": "remove", "path": "/attributes/nope"}]))
            .is_err());
    }
}
