//! The data model: samples, notifications and events as Ceilometer defines them.
//!
//! A [`Sample`] is one measurement of one meter for one resource. Fields that name things are
//! interned [`Sym`]s; text that is unique per sample ([`Text`], [`RawJson`]) is a zero-copy
//! slice of the input chunk, so building a sample allocates nothing.

pub mod event;
pub mod notification;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::intern::Sym;
use crate::time;

pub use event::{Event, Trait, TraitValue};
pub use notification::Notification;

/// The kind of a meter, as Ceilometer's `counter_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleType {
    /// An absolute level (memory used, vcpus).
    Gauge,
    /// The change since the previous report.
    Delta,
    /// A counter that only grows; a decrease means it restarted.
    Cumulative,
}

impl SampleType {
    /// Parses Ceilometer's spelling.
    pub fn parse(text: &str) -> Option<SampleType> {
        match text {
            "gauge" => Some(SampleType::Gauge),
            "delta" => Some(SampleType::Delta),
            "cumulative" => Some(SampleType::Cumulative),
            _ => None,
        }
    }

    /// Ceilometer's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleType::Gauge => "gauge",
            SampleType::Delta => "delta",
            SampleType::Cumulative => "cumulative",
        }
    }
}

impl fmt::Display for SampleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sample's volume: an integer stays an integer (as in Python) until arithmetic makes it a float.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Volume {
    /// An integral volume, written without a fraction.
    Int(i64),
    /// A floating-point volume.
    Float(f64),
}

impl Volume {
    /// The volume as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Volume::Int(i) => i as f64,
            Volume::Float(f) => f,
        }
    }

    /// Parses a numeric string the way Python's `float()`/`int()` accept it (`" 12.5 "`, `"1e3"`).
    pub fn parse(text: &str) -> Option<Volume> {
        let t = text.trim();
        if let Ok(i) = t.parse::<i64>() {
            return Some(Volume::Int(i));
        }
        let f: f64 = t.parse().ok()?;
        Some(Volume::Float(f))
    }
}

/// Python's arithmetic on two volumes: two ints stay an int (unless the result overflows).
macro_rules! python_op {
    ($trait:ident, $method:ident, $checked:ident, $op:tt) => {
        impl std::ops::$trait for Volume {
            type Output = Volume;
            fn $method(self, other: Volume) -> Volume {
                match (self, other) {
                    (Volume::Int(a), Volume::Int(b)) => a
                        .$checked(b)
                        .map_or(Volume::Float(a as f64 $op b as f64), Volume::Int),
                    (a, b) => Volume::Float(a.as_f64() $op b.as_f64()),
                }
            }
        }
    };
}

python_op!(Add, add, checked_add, +);
python_op!(Sub, sub, checked_sub, -);
python_op!(Mul, mul, checked_mul, *);

impl PartialOrd for Volume {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Volume::Int(a), Volume::Int(b)) => a.partial_cmp(b),
            _ => self.as_f64().partial_cmp(&other.as_f64()),
        }
    }
}

/// UTF-8 text held as a zero-copy slice of the buffer it was parsed from (unescaped content).
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Text(Bytes);

impl Text {
    /// Text from a static string.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Text borrowed from `buf` when `s` lies inside it, copied otherwise.
    pub fn slice_of(buf: &Bytes, s: &str) -> Text {
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let start = s.as_ptr() as usize;
        if range.contains(&start) && start + s.len() <= range.end {
            Text(buf.slice_ref(s.as_bytes()))
        } else {
            Text(Bytes::copy_from_slice(s.as_bytes()))
        }
    }

    /// Text that owns a copy of `s` (for long-lived state that must not pin an input chunk).
    pub fn copy_of(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The raw UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text (always valid UTF-8: it was built from `&str`).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// This text detached from the buffer it slices, so holding it does not pin the buffer.
    pub fn detached(&self) -> Text {
        Text(Bytes::copy_from_slice(&self.0))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A JSON value kept as its raw text (a sample's `resource_metadata`), written back verbatim.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RawJson(Text);

impl RawJson {
    /// The empty object `{}`.
    pub const EMPTY_OBJECT: RawJson = RawJson(Text::from_static("{}"));

    /// Wraps JSON text that the caller has already validated.
    pub fn from_text(text: Text) -> RawJson {
        RawJson(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The same JSON, detached from the input buffer.
    pub fn detached(&self) -> RawJson {
        RawJson(self.0.detached())
    }

    /// Looks up a nested member (`["flavor", "ram"]`); see [`crate::json::lookup`].
    pub fn lookup<S: AsRef<str>>(&self, path: &[S]) -> crate::json::Lookup<'_> {
        crate::json::lookup(self.as_str(), path)
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::EMPTY_OBJECT
    }
}

/// A sample's timestamp, kept exactly as received and parsed on demand.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timestamp(Text);

impl Timestamp {
    /// Wraps timestamp text.
    pub fn new(text: Text) -> Timestamp {
        Timestamp(text)
    }

    /// The text as received.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Microseconds since the epoch, `None` when the text is not an ISO 8601 timestamp.
    pub fn micros(&self) -> Option<i64> {
        time::parse_micros(self.as_str())
    }

    /// The same timestamp, detached from the input buffer.
    pub fn detached(&self) -> Timestamp {
        Timestamp(self.0.detached())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Ceilometer sample (`ceilometer.sample.Sample`), wire names in the comments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// `counter_name`: the meter.
    pub name: Sym,
    /// `counter_type`.
    pub kind: SampleType,
    /// `counter_unit`.
    pub unit: Sym,
    /// `counter_volume`.
    pub volume: Volume,
    /// `user_id`, may be null.
    pub user_id: Option<Sym>,
    /// `project_id`, may be null.
    pub project_id: Option<Sym>,
    /// `resource_id`.
    pub resource_id: Sym,
    /// `timestamp`, as received.
    pub timestamp: Timestamp,
    /// `resource_metadata`, raw JSON.
    pub resource_metadata: RawJson,
    /// `source`.
    pub source: Sym,
    /// `message_id`; `None` for samples a transformer built (a fresh id is made when written).
    pub message_id: Option<Text>,
    /// `monotonic_time`, may be null.
    pub monotonic_time: Option<f64>,
}

/// The `source` Ceilometer gives samples that a transformer builds (`sample_source`).
pub const DEFAULT_SAMPLE_SOURCE: &str = "openstack";

impl Sample {
    /// A gauge sample with the given name, resource, volume and timestamp and empty everything
    /// else; a convenience for tests, examples and synthetic data.
    pub fn gauge(name: &str, resource_id: &str, volume: f64, timestamp: &str) -> Sample {
        Sample {
            name: Sym::new(name),
            kind: SampleType::Gauge,
            unit: Sym::new(""),
            volume: Volume::Float(volume),
            user_id: None,
            project_id: None,
            resource_id: Sym::new(resource_id),
            timestamp: Timestamp::new(Text::copy_of(timestamp)),
            resource_metadata: RawJson::EMPTY_OBJECT,
            source: Sym::new(DEFAULT_SAMPLE_SOURCE),
            message_id: None,
            monotonic_time: None,
        }
    }

    /// The same sample with another type.
    pub fn with_kind(mut self, kind: SampleType) -> Sample {
        self.kind = kind;
        self
    }

    /// The same sample with another volume.
    pub fn with_volume(mut self, volume: Volume) -> Sample {
        self.volume = volume;
        self
    }

    /// The same sample with other metadata (`json` must be a JSON object).
    pub fn with_metadata(mut self, json: &str) -> Sample {
        self.resource_metadata = RawJson::from_text(Text::copy_of(json));
        self
    }

    /// This sample with its text detached from the input chunk, for transformers that hold
    /// samples across batches.
    pub fn detached(&self) -> Sample {
        Sample {
            timestamp: self.timestamp.detached(),
            resource_metadata: self.resource_metadata.detached(),
            message_id: self.message_id.as_ref().map(Text::detached),
            ..self.clone()
        }
    }
}
