//! Writing samples as Ceilometer sample dicts (one JSON object per line), allocation-free.

use crate::model::{Sample, Volume};

/// Options for [`write_sample`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Also write `message_id` (a fresh UUID for samples a transformer built).
    pub message_id: bool,
}

/// Appends `sample` as one JSON line (keys in Ceilometer's order, Python's `json.dumps` spacing).
///
/// # Examples
/// ```
/// use meterflow_engine::{Sample, wire::encode::{write_sample, EncodeOptions}};
/// let mut out = Vec::new();
/// write_sample(&Sample::gauge("memory", "vm-1", 512.0, "2021-07-30T02:00:00"), EncodeOptions::default(), &mut out);
/// let line = String::from_utf8(out).unwrap();
/// assert!(line.starts_with(r#"{"counter_name": "memory", "counter_type": "gauge""#));
/// assert!(line.contains(r#""counter_volume": 512.0"#));
/// assert!(line.ends_with("\"monotonic_time\": null}\n"));
/// ```
pub fn write_sample(sample: &Sample, options: EncodeOptions, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"counter_name\": ");
    write_str(sample.name.as_str().as_bytes(), out);
    out.extend_from_slice(b", \"counter_type\": \"");
    out.extend_from_slice(sample.kind.as_str().as_bytes());
    out.extend_from_slice(b"\", \"counter_unit\": ");
    write_str(sample.unit.as_str().as_bytes(), out);
    out.extend_from_slice(b", \"counter_volume\": ");
    write_volume(sample.volume, out);
    out.extend_from_slice(b", \"user_id\": ");
    write_opt(sample.user_id.map(|s| s.as_str().as_bytes()), out);
    out.extend_from_slice(b", \"project_id\": ");
    write_opt(sample.project_id.map(|s| s.as_str().as_bytes()), out);
    out.extend_from_slice(b", \"resource_id\": ");
    write_str(sample.resource_id.as_str().as_bytes(), out);
    out.extend_from_slice(b", \"timestamp\": ");
    write_str(sample.timestamp.as_str().as_bytes(), out);
    out.extend_from_slice(b", \"resource_metadata\": ");
    out.extend_from_slice(sample.resource_metadata.as_str().as_bytes());
    out.extend_from_slice(b", \"source\": ");
    write_str(sample.source.as_str().as_bytes(), out);
    if options.message_id {
        out.extend_from_slice(b", \"message_id\": ");
        match &sample.message_id {
            Some(id) => write_str(id.as_bytes(), out),
            None => write_uuid4(out),
        }
    }
    out.extend_from_slice(b", \"monotonic_time\": ");
    match sample.monotonic_time {
        Some(t) => write_f64(t, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

/// Appends a volume: integers without a fraction, floats in shortest round-trip form.
pub fn write_volume(volume: Volume, out: &mut Vec<u8>) {
    match volume {
        Volume::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Volume::Float(f) => write_f64(f, out),
    }
}

/// Appends a float as JSON (`null` for NaN and infinities, which JSON cannot hold).
pub fn write_f64(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        let mut buf = ryu::Buffer::new();
        out.extend_from_slice(buf.format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_opt(text: Option<&[u8]>, out: &mut Vec<u8>) {
    match text {
        Some(t) => write_str(t, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `text` as a JSON string, escaping quotes, backslashes and control characters.
pub fn write_str(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    // Jump from one byte that needs escaping to the next, 8 bytes a step.
    while let Some(i) = super::fast::special(text, start) {
        out.extend_from_slice(&text[start..i]);
        match text[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

/// A random (version 4) UUID in its usual text form, for message ids meterflow makes.
pub fn uuid4() -> String {
    let mut out = Vec::with_capacity(38);
    write_uuid4(&mut out);
    String::from_utf8_lossy(&out[1..out.len() - 1]).into_owned()
}

/// Appends a random UUID as a JSON string.
fn write_uuid4(out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    out.push(b'"');
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SampleType;

    #[test]
    fn output_is_json_that_decodes_back() {
        let s = Sample::gauge("cpu\"util", "vm\n1", 0.25, "2021-07-30T02:00:00")
            .with_kind(SampleType::Delta)
            .with_volume(Volume::Int(-3))
            .with_metadata(r#"{"a": [1, 2]}"#);
        let mut out = Vec::new();
        write_sample(&s, EncodeOptions { message_id: true }, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["counter_name"], "cpu\"util");
        assert_eq!(v["resource_id"], "vm\n1");
        assert_eq!(v["counter_volume"], -3);
        assert_eq!(v["counter_type"], "delta");
        assert_eq!(v["resource_metadata"]["a"][1], 2);
        assert_eq!(v["message_id"].as_str().unwrap().len(), 36);
        assert!(v["user_id"].is_null());
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips(text in ".*") {
            let mut out = Vec::new();
            write_str(text.as_bytes(), &mut out);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn uuids_have_the_version_4_form() {
        let u = uuid4();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert_ne!(uuid4(), u);
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = Vec::new();
        write_str(b"a\x01b", &mut out);
        assert_eq!(out, b"\"a\\u0001b\"");
    }
}
