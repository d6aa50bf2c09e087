//! The oslo.messaging notification envelope (what services and polling agents send).

use serde::{Deserialize, Serialize};

/// An oslo notification, as written to JSONL input or decoded from the Kafka 2.0 envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `event_type`, e.g. `telemetry.polling` or `compute.instance.create.end`.
    pub event_type: String,
    /// `priority`, upper case (`SAMPLE`, `INFO`, ...).
    #[serde(default)]
    pub priority: Option<String>,
    /// `publisher_id`, e.g. `ceilometer.polling`.
    #[serde(default)]
    pub publisher_id: Option<String>,
    /// `message_id`, a UUID.
    #[serde(default)]
    pub message_id: Option<String>,
    /// `timestamp`, `YYYY-MM-DD HH:MM:SS.ffffff`.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// `payload`: for `telemetry.polling`, `{"samples": [...]}`.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// The event type polling agents use for batches of samples.
pub const TELEMETRY_POLLING: &str = "telemetry.polling";
/// The event type Ceilometer's `notifier://` publisher uses (payload: a list of samples).
pub const METERING: &str = "metering";
