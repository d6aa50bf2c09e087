//! Ceilometer's wire formats: decoding input lines into samples, encoding samples as JSON.
//!
//! A line is one of:
//! - an oslo notification `{"event_type", "priority", "publisher_id", "message_id", "timestamp",
//!   "payload"}`; for `telemetry.polling` the payload is `{"samples": [...]}`, for Ceilometer's
//!   `metering` notifications it is a list of samples;
//! - the oslo.messaging 2.0 envelope `{"oslo.version": "2.0", "oslo.message": "<JSON text>"}`
//!   around such a notification (what the Kafka driver writes);
//! - one bare sample dict with the `counter_*` keys.
//!
//! Decoding is one pass over the line, borrowing from it: the payload is streamed sample by
//! sample into a callback as soon as the `event_type` is known.

pub mod encode;
mod fast;

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::intern::Sym;
use crate::metrics::DropReason;
use crate::model::notification::{METERING, TELEMETRY_POLLING};
use crate::model::{RawJson, Sample, SampleType, Text, Timestamp, Volume, DEFAULT_SAMPLE_SOURCE};

/// One item a line decodes into.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A valid sample.
    Sample(Sample),
    /// A sample that cannot enter a pipeline, with why.
    Rejected(Rejected),
}

/// A sample dropped at decoding, with enough of it to name it in a warning.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Why.
    pub reason: DropReason,
    /// The meter, when the sample had one (routing decides whether the drop is reported).
    pub name: Option<Sym>,
    /// What is wrong, naming the key and the fix.
    pub detail: String,
}

/// What a line turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum LineKind {
    /// A notification carrying samples (`telemetry.polling`, `metering`).
    SampleNotification,
    /// A bare sample dict.
    BareSample,
    /// A service notification; meter definitions are needed to turn it into samples.
    ServiceNotification {
        /// Its `event_type`.
        event_type: String,
    },
}

/// Why a whole line could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON.
    #[error("not valid JSON ({0}); each line must be one JSON object")]
    BadJson(#[source] serde_json::Error),
    /// Not UTF-8 (so not JSON).
    #[error("not valid UTF-8 ({0}); each line must be one JSON object in UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// JSON, but neither a notification nor a sample.
    #[error("{0}")]
    NotANotification(String),
}

impl LineError {
    /// The drop reason this error is counted under.
    pub fn reason(&self) -> DropReason {
        match self {
            LineError::BadJson(_) | LineError::NotUtf8(_) => DropReason::BadJson,
            LineError::NotANotification(_) => DropReason::NotANotification,
        }
    }
}

type Emit<'e> = dyn FnMut(Decoded) + 'e;

/// Decodes one input line (a sub-slice of a chunk, so samples can borrow it), passing each
/// sample to `emit` in order.
pub fn decode_line(line: &Bytes, emit: &mut Emit<'_>) -> Result<LineKind, LineError> {
    // One UTF-8 check per line, so the parsers need not check each string they borrow.
    let text = std::str::from_utf8(line).map_err(LineError::NotUtf8)?;
    match fast::scan(text) {
        Some(fast::Fast::Notification { samples, polling }) => {
            for mut s in samples {
                if polling {
                    s.monotonic_time = None;
                }
                emit(s.into_decoded(line));
            }
            Ok(LineKind::SampleNotification)
        }
        Some(fast::Fast::Service(event_type)) => Ok(LineKind::ServiceNotification {
            event_type: event_type.to_owned(),
        }),
        Some(fast::Fast::Bare(s)) => {
            emit(s.into_decoded(line));
            Ok(LineKind::BareSample)
        }
        Some(fast::Fast::Envelope(inner)) => decode_line(&Bytes::from(inner), emit),
        None => decode_general(line, text, emit),
    }
}

/// The general path: every accepted form, and the error messages. `text` is `line` as UTF-8.
fn decode_general(line: &Bytes, text: &str, emit: &mut Emit<'_>) -> Result<LineKind, LineError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = TopSeed { buf: line, emit }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(LineError::BadJson)?;
    if let Some(inner) = top.oslo_message {
        // The oslo.messaging 2.0 envelope: the notification is JSON text inside a string.
        let inner = Bytes::from(inner.into_owned());
        return decode_line(&inner, emit);
    }
    match (top.event_type, top.payload) {
        (Some(event_type), payload) => {
            if carries_samples(&event_type) {
                match payload {
                    Payload::Streamed => {}
                    Payload::Raw(raw) => {
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        PayloadSeed {
                            buf: line,
                            emit,
                            polling: event_type == TELEMETRY_POLLING,
                        }
                        .deserialize(&mut de)
                            .map_err(LineError::BadJson)?;
                    }
                    Payload::Absent => {
                        return Err(LineError::NotANotification(format!(
                            "notification {event_type:?} has no payload; a {TELEMETRY_POLLING} notification needs \"payload\": {{\"samples\": [...]}}"
                        )))
                    }
                }
                Ok(LineKind::SampleNotification)
            } else {
                Ok(LineKind::ServiceNotification {
                    event_type: event_type.into_owned(),
                })
            }
        }
        (None, _) if top.sample.any => {
            emit(top.sample.into_decoded(line));
            Ok(LineKind::BareSample)
        }
        (None, _) => Err(LineError::NotANotification(
            "a JSON object with neither \"event_type\" (a notification) nor \"counter_name\" (a sample)"
                .into(),
        )),
    }
}

fn carries_samples(event_type: &str) -> bool {
    event_type == TELEMETRY_POLLING || event_type == METERING || event_type.starts_with("metering.")
}

enum Payload<'de> {
    Absent,
    Streamed,
    Raw(&'de RawValue),
}

struct Top<'de> {
    event_type: Option<Cow<'de, str>>,
    payload: Payload<'de>,
    oslo_message: Option<Cow<'de, str>>,
    sample: WireSample<'de>,
}

struct TopSeed<'b, 'e, 'f> {
    buf: &'b Bytes,
    emit: &'e mut Emit<'f>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_, '_> {
    type Value = Top<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_, '_> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object (a notification or a sample)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = Top {
            event_type: None,
            payload: Payload::Absent,
            oslo_message: None,
            sample: WireSample::default(),
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "event_type" => top.event_type = map.next_value::<Option<Str<'de>>>()?.map(|s| s.0),
                "payload" => {
                    top.payload = match &top.event_type {
                        Some(et) if carries_samples(et) => {
                            map.next_value_seed(PayloadSeed {
                                buf: self.buf,
                                emit: &mut *self.emit,
                                polling: et == TELEMETRY_POLLING,
                            })?;
                            Payload::Streamed
                        }
                        Some(_) => {
                            map.next_value::<IgnoredAny>()?;
                            Payload::Streamed
                        }
                        None => Payload::Raw(map.next_value::<&'de RawValue>()?),
                    }
                }
                "oslo.message" => {
                    top.oslo_message = map.next_value::<Option<Str<'de>>>()?.map(|s| s.0)
                }
                other => top.sample.accept(other, &mut map)?,
            }
        }
        Ok(top)
    }
}

/// The samples of a payload: `{"samples": [...]}` or `[...]`.
struct PayloadSeed<'b, 'e, 'f> {
    buf: &'b Bytes,
    emit: &'e mut Emit<'f>,
    /// A `telemetry.polling` payload: like Ceilometer's polling endpoint, drop `monotonic_time`.
    polling: bool,
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload {\"samples\": [...]} or a list of samples")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(ElementSeed {
                buf: self.buf,
                emit: &mut *self.emit,
                polling: self.polling,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == "samples" {
                map.next_value_seed(PayloadSeed {
                    buf: self.buf,
                    emit: &mut *self.emit,
                    polling: self.polling,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A payload element: a sample dict, decoded and emitted in place (no intermediate value is
/// moved around), or something else that is reported and skipped.
struct ElementSeed<'b, 'e, 'f> {
    buf: &'b Bytes,
    emit: &'e mut Emit<'f>,
    polling: bool,
}

impl ElementSeed<'_, '_, '_> {
    fn junk(self) {
        (self.emit)(Decoded::Rejected(Rejected {
            reason: DropReason::MissingField,
            name: None,
            detail: "a payload element is not a sample object; each element of \"samples\" must be a dict with the counter_* keys".into(),
        }));
    }
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sample object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut s = WireSample::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            s.accept(&key.0, &mut map)?;
        }
        if self.polling {
            s.monotonic_time = None;
        }
        (self.emit)(s.into_decoded(self.buf));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.junk();
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.junk();
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.junk();
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.junk();
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.junk();
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.junk();
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.junk();
        Ok(())
    }
}

/// A sample dict's fields as they appear on the wire, borrowed from the line.
#[derive(Default)]
struct WireSample<'de> {
    any: bool,
    counter_name: Option<Cow<'de, str>>,
    counter_type: Option<Cow<'de, str>>,
    counter_unit: Option<Cow<'de, str>>,
    counter_volume: WireVolume<'de>,
    user_id: Option<Cow<'de, str>>,
    project_id: Option<Cow<'de, str>>,
    resource_id: Option<Cow<'de, str>>,
    timestamp: Option<Cow<'de, str>>,
    resource_metadata: Option<Cow<'de, str>>,
    source: Option<Cow<'de, str>>,
    message_id: Option<Cow<'de, str>>,
    monotonic_time: Option<f64>,
}

impl<'de> WireSample<'de> {
    /// Reads the value of `key` when it is a sample key, skips it otherwise.
    fn accept<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let text = |map: &mut A| map.next_value::<Option<Str<'de>>>().map(|s| s.map(|s| s.0));
        match key {
            "counter_name" => self.counter_name = text(map)?,
            "counter_type" => self.counter_type = text(map)?,
            "counter_unit" => self.counter_unit = text(map)?,
            "counter_volume" => self.counter_volume = map.next_value()?,
            "user_id" => self.user_id = text(map)?,
            "project_id" => self.project_id = text(map)?,
            "resource_id" => self.resource_id = text(map)?,
            "timestamp" => self.timestamp = text(map)?,
            "resource_metadata" => {
                self.resource_metadata =
                    Some(Cow::Borrowed(map.next_value::<&'de RawValue>()?.get()))
            }
            "source" => self.source = text(map)?,
            "message_id" => self.message_id = text(map)?,
            "monotonic_time" => self.monotonic_time = map.next_value::<Lenient>()?.0,
            _ => {
                map.next_value::<IgnoredAny>()?;
                return Ok(());
            }
        }
        self.any = true;
        Ok(())
    }

    fn into_decoded(self, buf: &Bytes) -> Decoded {
        match self.into_sample(buf) {
            Ok(s) => Decoded::Sample(s),
            Err(r) => Decoded::Rejected(r),
        }
    }

    fn into_sample(self, buf: &Bytes) -> Result<Sample, Rejected> {
        let name = self.counter_name.as_deref().map(Sym::new);
        let place = || {
            format!(
                "sample {} of resource {} at {}",
                name.map_or("<no counter_name>", Sym::as_str),
                self.resource_id.as_deref().unwrap_or("<no resource_id>"),
                self.timestamp.as_deref().unwrap_or("<no timestamp>")
            )
        };
        let missing = |key: &str| {
            Rejected {
            reason: DropReason::MissingField,
            name,
            detail: format!("{}: \"{key}\" is missing or null; every sample needs counter_name, counter_type, counter_unit, counter_volume, resource_id and timestamp", place()),
        }
        };
        let Some(name) = name else {
            return Err(missing("counter_name"));
        };
        let Some(resource_id) = self.resource_id.as_deref() else {
            return Err(missing("resource_id"));
        };
        let Some(kind_text) = self.counter_type.as_deref() else {
            return Err(missing("counter_type"));
        };
        let Some(kind) = SampleType::parse(kind_text) else {
            return Err(Rejected {
                reason: DropReason::BadCounterType,
                name: Some(name),
                detail: format!(
                    "{}: counter_type {kind_text:?} is not one of gauge, delta, cumulative",
                    place()
                ),
            });
        };
        let Some(unit) = self.counter_unit.as_deref() else {
            return Err(missing("counter_unit"));
        };
        let Some(timestamp) = self.timestamp.as_deref() else {
            return Err(missing("timestamp"));
        };
        let volume = match self.counter_volume {
            WireVolume::Number(v) => v,
            WireVolume::Text(t) => match Volume::parse(&t) {
                Some(v) => v,
                None => {
                    return Err(Rejected {
                        reason: DropReason::VolumeNotANumber,
                        name: Some(name),
                        detail: format!("{}: counter_volume {t:?} is not a number; the sample is dropped, as Ceilometer's pipeline does", place()),
                    })
                }
            },
            WireVolume::Other => {
                return Err(Rejected {
                    reason: DropReason::VolumeNotANumber,
                    name: Some(name),
                    detail: format!("{}: counter_volume is not a number; the sample is dropped, as Ceilometer's pipeline does", place()),
                })
            }
            WireVolume::Absent => {
                return Err(Rejected {
                    reason: DropReason::VolumeMissing,
                    name: Some(name),
                    detail: format!("{}: counter_volume is missing or null; the sample is dropped, as Ceilometer's pipeline does", place()),
                })
            }
        };
        let metadata = match self.resource_metadata {
            Some(raw) if raw != "null" => RawJson::from_text(Text::slice_of(buf, &raw)),
            _ => RawJson::EMPTY_OBJECT,
        };
        Ok(Sample {
            name,
            kind,
            unit: Sym::new(unit),
            volume,
            user_id: self.user_id.as_deref().map(Sym::new),
            project_id: self.project_id.as_deref().map(Sym::new),
            resource_id: Sym::new(resource_id),
            timestamp: Timestamp::new(Text::slice_of(buf, timestamp)),
            resource_metadata: metadata,
            source: Sym::new(self.source.as_deref().unwrap_or(DEFAULT_SAMPLE_SOURCE)),
            message_id: self.message_id.as_deref().map(|m| Text::slice_of(buf, m)),
            monotonic_time: self.monotonic_time,
        })
    }
}

/// `counter_volume` as found: a number, a string to try as a number, or something else.
#[derive(Default)]
enum WireVolume<'de> {
    #[default]
    Absent,
    Number(Volume),
    Text(Cow<'de, str>),
    Other,
}

impl<'de> de::Deserialize<'de> for WireVolume<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireVolume<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a volume")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireVolume::Number(Volume::Int(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(WireVolume::Number(
                    i64::try_from(v).map_or(Volume::Float(v as f64), Volume::Int),
                ))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(WireVolume::Number(Volume::Float(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                // Python's bool is an int, so Ceilometer lets True/False through as 1/0.
                Ok(WireVolume::Number(Volume::Int(i64::from(v))))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireVolume::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireVolume::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(WireVolume::Absent)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(WireVolume::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(WireVolume::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A float that may also arrive as null, a string or something else (then treated as null).
struct Lenient(Option<f64>);

impl<'de> de::Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lenient(match WireVolume::deserialize(d)? {
            WireVolume::Number(v) => Some(v.as_f64()),
            WireVolume::Text(t) => t.trim().parse().ok(),
            _ => None,
        }))
    }
}

/// A map key, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

/// A string value, borrowed when it has no escapes; numbers and booleans become their text.
struct Str<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor).map(Str)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Cow::Owned(if v { "True" } else { "False" }.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("expected a string, found a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("expected a string, found an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> (Result<LineKind, String>, Vec<Decoded>) {
        let line = Bytes::copy_from_slice(text.as_bytes());
        let mut out = Vec::new();
        let kind = decode_line(&line, &mut |d| out.push(d)).map_err(|e| e.to_string());
        (kind, out)
    }

    const SAMPLE: &str = r#"{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": 10, "user_id": null, "project_id": "p", "resource_id": "vm-1", "timestamp": "2021-07-30T02:00:00.1", "resource_metadata": {"cpu_number": 2}, "source": "openstack", "message_id": "m1", "monotonic_time": null}"#;

    #[test]
    fn decodes_polling_notification_in_order() {
        let line = format!(
            r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "payload": {{"samples": [{SAMPLE}, {}]}}}}"#,
            SAMPLE.replace("\"vm-1\"", "\"vm-2\"")
        );
        let (kind, out) = decode(&line);
        assert_eq!(kind, Ok(LineKind::SampleNotification));
        let ids: Vec<_> = out
            .iter()
            .map(|d| match d {
                Decoded::Sample(s) => s.resource_id.as_str(),
                Decoded::Rejected(r) => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(ids, ["vm-1", "vm-2"]);
        let Decoded::Sample(s) = &out[0] else {
            unreachable!()
        };
        assert_eq!(s.user_id, None);
        assert_eq!(s.resource_metadata.as_str(), r#"{"cpu_number": 2}"#);
        assert_eq!(s.message_id.as_ref().unwrap().as_str(), "m1");
    }

    #[test]
    fn polling_notifications_drop_monotonic_time_like_ceilometer() {
        let with_mono = SAMPLE.replace("\"monotonic_time\": null", "\"monotonic_time\": 12.5");
        let mono = |line: String| {
            let (_, out) = decode(&line);
            match &out[0] {
                Decoded::Sample(s) => s.monotonic_time,
                Decoded::Rejected(r) => panic!("{r:?}"),
            }
        };
        for line in [
            format!(
                r#"{{"event_type": "telemetry.polling", "payload": {{"samples": [{with_mono}]}}}}"#
            ),
            format!(
                r#"{{"payload": {{"samples": [{with_mono}]}}, "event_type": "telemetry.polling"}}"#
            ),
        ] {
            assert_eq!(mono(line), None);
        }
        assert_eq!(
            mono(format!(
                r#"{{"event_type": "metering", "payload": [{with_mono}]}}"#
            )),
            Some(12.5)
        );
        assert_eq!(mono(with_mono.clone()), Some(12.5));
    }

    #[test]
    fn payload_before_event_type_and_oslo_envelope() {
        let inner = format!(
            r#"{{"payload": {{"samples": [{SAMPLE}]}}, "event_type": "telemetry.polling"}}"#
        );
        let (kind, out) = decode(&inner);
        assert_eq!(kind, Ok(LineKind::SampleNotification));
        assert_eq!(out.len(), 1);
        let wrapped = serde_json::json!({"oslo.version": "2.0", "oslo.message": inner}).to_string();
        let (kind, out) = decode(&wrapped);
        assert_eq!(kind, Ok(LineKind::SampleNotification));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn bad_volumes_are_rejected_with_reasons() {
        for (vol, reason) in [
            ("null", DropReason::VolumeMissing),
            ("\"twelve\"", DropReason::VolumeNotANumber),
            ("\"\"", DropReason::VolumeNotANumber),
            ("[1]", DropReason::VolumeNotANumber),
        ] {
            let (_, out) = decode(&SAMPLE.replace(
                "\"counter_volume\": 10",
                &format!("\"counter_volume\": {vol}"),
            ));
            match &out[0] {
                Decoded::Rejected(r) => assert_eq!(r.reason, reason, "{vol}"),
                Decoded::Sample(_) => panic!("{vol} accepted"),
            }
        }
        let (_, out) =
            decode(&SAMPLE.replace("\"counter_volume\": 10", "\"counter_volume\": \"12.5\""));
        let Decoded::Sample(s) = &out[0] else {
            panic!()
        };
        assert_eq!(s.volume, Volume::Float(12.5));
    }

    #[test]
    fn line_errors() {
        assert!(matches!(decode("{not json").0, Err(e) if e.contains("not valid JSON")));
        assert!(decode("[1, 2]").0.is_err());
        assert!(decode(r#"{"hello": 1}"#).0.is_err());
        assert_eq!(
            decode(r#"{"event_type": "compute.instance.create.end", "payload": {"x": 1}}"#).0,
            Ok(LineKind::ServiceNotification {
                event_type: "compute.instance.create.end".into()
            })
        );
        let (_, out) = decode(&SAMPLE.replace("\"resource_id\": \"vm-1\", ", ""));
        assert!(
            matches!(&out[0], Decoded::Rejected(r) if r.reason == DropReason::MissingField && r.detail.contains("resource_id"))
        );
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let (_, out) = decode(&SAMPLE.replace("vm-1", "vm\\u002d1"));
        let Decoded::Sample(s) = &out[0] else {
            panic!()
        };
        assert_eq!(s.resource_id.as_str(), "vm-1");
    }
}
