//! Events (`ceilometer.event.models.Event`): a notification reduced to typed traits.

use serde::{Deserialize, Serialize};

/// A trait's value, typed as Ceilometer's dtype codes (0 none, 1 text, 2 int, 3 float, 4 datetime).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TraitValue {
    /// dtype 2.
    Int(i64),
    /// dtype 3.
    Float(f64),
    /// dtype 1 (text, at most 255 characters) and 4 (datetime, ISO 8601 naive UTC).
    Text(String),
    /// dtype 0.
    None,
}

/// One named trait of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trait {
    /// Trait name, e.g. `instance_id`.
    pub name: String,
    /// Ceilometer's dtype code.
    pub dtype: u8,
    /// The value.
    pub value: TraitValue,
}

/// An event built from a notification by event definitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The notification's `message_id`.
    pub message_id: String,
    /// The notification's `event_type`.
    pub event_type: String,
    /// When it was generated, ISO 8601 naive UTC.
    pub generated: String,
    /// The traits.
    pub traits: Vec<Trait>,
    /// The raw notification, when kept.
    #[serde(default)]
    pub raw: serde_json::Value,
}

impl Event {
    /// The event as Ceilometer serializes it for publishers and Aodh (`Event.serialize()`:
    /// `traits` as `[name, dtype, value]` triples).
    ///
    /// # Examples
    /// ```
    /// use meterflow_engine::model::{Event, Trait, TraitValue};
    /// let e = Event { message_id: "m1".into(), event_type: "image.upload".into(),
    ///     generated: "2024-05-01T12:00:00".into(),
    ///     traits: vec![Trait { name: "size".into(), dtype: 2, value: TraitValue::Int(5) }],
    ///     raw: serde_json::json!({}) };
    /// assert_eq!(e.serialize().to_string(),
    ///     r#"{"message_id":"m1","event_type":"image.upload","generated":"2024-05-01T12:00:00","traits":[["size",2,5]],"raw":{}}"#);
    /// assert_eq!(Event::deserialize(&e.serialize()).unwrap(), e);
    /// ```
    pub fn serialize(&self) -> serde_json::Value {
        let traits: Vec<serde_json::Value> = self
            .traits
            .iter()
            .map(|t| serde_json::json!([t.name, t.dtype, t.value]))
            .collect();
        serde_json::json!({
            "message_id": self.message_id,
            "event_type": self.event_type,
            "generated": self.generated,
            "traits": traits,
            "raw": self.raw,
        })
    }

    /// Reads an event back from its serialized form ([`Event::serialize`]; what Ceilometer's
    /// notifier publisher sends in an `event` notification's payload list, and what Aodh's
    /// event-alarm listener reads). Traits may also be `{name, dtype, value}` objects.
    pub fn deserialize(v: &serde_json::Value) -> Result<Event, String> {
        let text = |key: &str| -> Result<String, String> {
            v.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("a serialized event needs a {key} string"))
        };
        let mut traits = Vec::new();
        for t in v
            .get("traits")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let (name, dtype, value) = match t {
                serde_json::Value::Array(a) if a.len() == 3 => (&a[0], &a[1], &a[2]),
                serde_json::Value::Object(o) => (
                    o.get("name").unwrap_or(&serde_json::Value::Null),
                    o.get("dtype").unwrap_or(&serde_json::Value::Null),
                    o.get("value").unwrap_or(&serde_json::Value::Null),
                ),
                _ => {
                    return Err(format!(
                        "trait {t} is neither [name, dtype, value] nor {{name, dtype, value}}"
                    ))
                }
            };
            let (Some(name), Some(dtype)) = (name.as_str(), dtype.as_u64().filter(|d| *d <= 4))
            else {
                return Err(format!(
                    "trait {t}: needs a name string and a dtype from 0 to 4"
                ));
            };
            let value = match (dtype, value) {
                (_, serde_json::Value::Null) | (0, _) => TraitValue::None,
                (2, v) if v.is_i64() => TraitValue::Int(v.as_i64().unwrap_or_default()),
                (3, v) if v.is_number() => TraitValue::Float(v.as_f64().unwrap_or_default()),
                (1 | 4, serde_json::Value::String(s)) => TraitValue::Text(s.clone()),
                _ => {
                    return Err(format!(
                        "trait {name}: value {value} does not fit dtype {dtype}"
                    ))
                }
            };
            traits.push(Trait {
                name: name.to_owned(),
                dtype: dtype as u8,
                value,
            });
        }
        Ok(Event {
            message_id: text("message_id")?,
            event_type: text("event_type")?,
            generated: text("generated")?,
            traits,
            raw: v
                .get("raw")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
        })
    }

    /// The text of trait `name`, if the event has it as text.
    pub fn text_trait(&self, name: &str) -> Option<&str> {
        self.traits
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| match &t.value {
                TraitValue::Text(s) => Some(s.as_str()),
                _ => None,
            })
    }
}
