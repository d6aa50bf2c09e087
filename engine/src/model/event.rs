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
