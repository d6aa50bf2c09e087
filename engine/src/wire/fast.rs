//! A fast path for the shape nearly every line has: a notification whose `event_type` comes
//! before its `payload`, or a bare sample, with no escapes in the fields meterflow reads.
//!
//! It scans the line once with a small validating JSON scanner and returns the samples'
//! fields borrowed from it. Anything it does not expect (an escape in a field it keeps, the
//! payload before the event type, a malformed value) makes it return `None` before anything
//! is emitted, and the line goes through the general serde path, which handles every form and
//! reports errors. Both paths give the same result for every line (a property test checks it).
//!
//! The oslo.messaging envelope (`{"oslo.version": "2.0", "oslo.message": "<notification as a
//! JSON string>"}`, what the Kafka driver writes) is scanned in place: the same scanner reads
//! the escaped notification where it lies (its quotes are `\"`), borrowing its fields from the
//! envelope's text, and only `resource_metadata` (kept as JSON text) is unescaped. An envelope
//! with escapes of its own beyond that is unescaped whole and the result scanned.

use std::borrow::Cow;

use super::{carries_samples, WireSample, WireVolume};
use crate::model::notification::TELEMETRY_POLLING;
use crate::model::Volume;

/// What the fast path made of a line.
pub(super) enum Fast<'a> {
    /// A sample-carrying notification and its samples; `polling` for `telemetry.polling`.
    Notification {
        /// The samples, in order.
        samples: Vec<WireSample<'a>>,
        /// Whether the event type is `telemetry.polling`.
        polling: bool,
    },
    /// A service notification with this event type.
    Service(&'a str),
    /// A bare sample.
    Bare(Box<WireSample<'a>>),
    /// The oslo.messaging 2.0 envelope (`oslo.version` and `oslo.message` only) whose
    /// notification could not be scanned in place: its text, unescaped from the `oslo.message`
    /// string. (One that could is returned as what it carries.)
    Envelope(String),
}

/// Position of the first `"`, `\\` or control character at or after `from` (8 bytes a step).
pub(super) fn special(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut i = from;
    while i + 8 <= b.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[i..i + 8]);
        let x = u64::from_le_bytes(word);
        let hits = has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if hits != 0 {
            // The lowest flagged byte is exact (borrows only run upwards from a true hit).
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < b.len() {
        if matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A scanner over `text`; `ESCAPED` when it scans a notification in place inside the
/// envelope's `oslo.message` string, where each of its quotes is `\"` and each of its
/// backslashes `\\`.
struct Scanner<'a, const ESCAPED: bool> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 128;

pub(super) fn scan(text: &str) -> Option<Fast<'_>> {
    let mut s = Scanner::<false> {
        text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let result = s.top()?;
    s.ws();
    (s.i == s.b.len()).then_some(result)
}

impl<'a, const ESCAPED: bool> Scanner<'a, ESCAPED> {
    fn ws(&mut self) {
        // Escaped, only a space is whitespace as itself (a newline would be `\n`: the
        // general path takes such a line).
        while let Some(c) = self.b.get(self.i) {
            if !(*c == b' ' || (!ESCAPED && matches!(c, b'\t' | b'\n' | b'\r'))) {
                break;
            }
            self.i += 1;
        }
    }

    /// Whether a quote is at the current position (`\"` when escaped).
    fn at_quote(&self) -> bool {
        if ESCAPED {
            self.b.get(self.i..self.i + 2) == Some(b"\\\"")
        } else {
            self.b.get(self.i) == Some(&b'"')
        }
    }

    fn eat_quote(&mut self) -> Option<()> {
        self.ws();
        self.at_quote()
            .then(|| self.i += if ESCAPED { 2 } else { 1 })
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// The next byte after whitespace; a quote as `"` also when escaped, and anything else
    /// that cannot start a value there as 0.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        let c = *self.b.get(self.i)?;
        Some(match c {
            b'\\' | b'"' if ESCAPED => {
                if self.at_quote() {
                    b'"'
                } else {
                    0
                }
            }
            c => c,
        })
    }

    /// A string without escapes, borrowed; `None` (bail out) for escapes or invalid strings.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat_quote()?;
        let start = self.i;
        let end = special(self.b, start)?;
        self.i = end;
        if !self.at_quote() {
            return None;
        }
        self.i += if ESCAPED { 2 } else { 1 };
        Some(&self.text[start..end])
    }

    /// Skips a string, escapes included, validating it.
    fn skip_string(&mut self) -> Option<()> {
        if !ESCAPED {
            return self.string(None);
        }
        self.eat_quote()?;
        loop {
            let at = special(self.b, self.i)?;
            if self.b[at] != b'\\' {
                return None; // the envelope's string ends, or a raw control character
            }
            // `\"` ends the string; `\\` starts one of its escapes, itself escaped: `\\\"`
            // and `\\\\` for a quote and a backslash, `\\n`, `\\u0041`, ... for the others.
            // Any other escape of the envelope (a `\n` between tokens, a `\u00e9` of its own)
            // leaves the line to the general path.
            self.i = at
                + match (self.b.get(at + 1)?, self.b.get(at + 2)?) {
                    (b'"', _) => {
                        self.i = at + 2;
                        return Some(());
                    }
                    (b'\\', b'\\') => match self.b.get(at + 3)? {
                        b'"' | b'\\' => 4,
                        _ => return None,
                    },
                    (b'\\', b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 3,
                    (b'\\', b'u') => {
                        // Surrogates (and their pairing) are left to the general path.
                        if (0xD800..=0xDFFF).contains(&self.hex4(at + 3)?) {
                            return None;
                        }
                        7
                    }
                    _ => return None,
                };
        }
    }

    /// The notification in the envelope's `oslo.message` string at the current position,
    /// scanned where it lies: its fields are borrowed from the envelope's text as they are
    /// when they have no escapes of their own. `None` (the caller unescapes it instead) for
    /// anything else.
    fn in_place(&mut self) -> Option<Fast<'a>> {
        if ESCAPED || self.peek()? != b'"' {
            return None;
        }
        let mut inner = Scanner::<true> {
            text: self.text,
            b: self.b,
            i: self.i + 1,
            depth: self.depth,
        };
        let found = inner.top()?;
        inner.ws();
        if inner.b.get(inner.i) != Some(&b'"') {
            return None;
        }
        self.i = inner.i + 1;
        Some(found)
    }

    /// A string with its escapes resolved, exactly as serde_json reads it.
    fn unescaped_string(&mut self) -> Option<String> {
        let mut out = String::with_capacity(self.b.len().saturating_sub(self.i));
        self.string(Some(&mut out))?;
        Some(out)
    }

    /// Scans a string, validating its escapes, and writes its value to `out` when given;
    /// `None` (bail out) for an invalid string or a lone surrogate (the general path reports
    /// those).
    fn string(&mut self, out: Option<&mut String>) -> Option<()> {
        self.eat(b'"')?;
        self.content(out, true)
    }

    /// Walks a string's content from the current position as [`Scanner::string`] does: up to
    /// its closing quote when `quoted`, else to the end of the text (a span of a string's
    /// content, which has no quote of its own).
    fn content(&mut self, mut out: Option<&mut String>, quoted: bool) -> Option<()> {
        loop {
            let at = match special(self.b, self.i) {
                Some(at) => at,
                None if !quoted => self.b.len(),
                None => return None,
            };
            if let Some(out) = out.as_deref_mut() {
                out.push_str(&self.text[self.i..at]);
            }
            match self.b.get(at) {
                None => {
                    self.i = at;
                    return Some(());
                }
                Some(b'"') if quoted => {
                    self.i = at + 1;
                    return Some(());
                }
                Some(b'\\') => {}
                _ => return None, // a raw control character, or a quote in a span
            }
            let (c, len) = self.escape(at)?;
            if let Some(out) = out.as_deref_mut() {
                out.push(c);
            }
            self.i = at + len;
        }
    }

    /// The escape sequence at `at` (a backslash): the character it stands for and its length;
    /// `None` for an invalid escape or a lone surrogate.
    fn escape(&self, at: usize) -> Option<(char, usize)> {
        Some(match *self.b.get(at + 1)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let first = self.hex4(at + 2)?;
                let (code, len) = match first {
                    0xD800..=0xDBFF => {
                        if self.b.get(at + 6..at + 8)? != b"\\u" {
                            return None;
                        }
                        let low = self.hex4(at + 8)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        (0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00), 12)
                    }
                    0xDC00..=0xDFFF => return None,
                    code => (code, 6),
                };
                (char::from_u32(code)?, len)
            }
            _ => return None,
        })
    }

    /// The four hex digits of a `\u` escape at `i`, as a number.
    fn hex4(&self, i: usize) -> Option<u32> {
        let hex = std::str::from_utf8(self.b.get(i..i + 4)?).ok()?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }

    /// Scans a JSON number, returning its text.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let digits = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == digits {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == digits {
                return None;
            }
        }
        self.i = i;
        Some(&self.text[start..i])
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Skips any JSON value, validating it.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.sequence(b'{', b'}', |this| {
                this.skip_string()?;
                this.eat(b':')?;
                this.skip_value()
            }),
            b'[' => self.sequence(b'[', b']', Self::skip_value),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    /// Runs `each` for every element of an object or array delimited by `open` and `close`.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.enter()?;
        if self.peek()? == close {
            self.i += 1;
        } else {
            loop {
                each(self)?;
                match self.peek()? {
                    b',' => self.i += 1,
                    c if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A value's raw text (for `resource_metadata`), validated; escaped, resolved as the
    /// envelope's string would be.
    fn raw_value(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        let raw = &self.text[start..self.i];
        if !ESCAPED {
            return Some(Cow::Borrowed(raw));
        }
        let mut span = Scanner::<false> {
            text: raw,
            b: raw.as_bytes(),
            i: 0,
            depth: 0,
        };
        let mut out = String::with_capacity(raw.len());
        span.content(Some(&mut out), false)?;
        Some(Cow::Owned(out))
    }

    /// A string field: a plain string, or null.
    fn text_field(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.plain_string().map(|s| Some(Cow::Borrowed(s)))
    }

    fn volume(&mut self) -> Option<WireVolume<'a>> {
        Some(match self.peek()? {
            b'"' => WireVolume::Text(Cow::Borrowed(self.plain_string()?)),
            b'n' => {
                self.literal(b"null")?;
                WireVolume::Absent
            }
            b't' => {
                self.literal(b"true")?;
                WireVolume::Number(Volume::Int(1))
            }
            b'f' => {
                self.literal(b"false")?;
                WireVolume::Number(Volume::Int(0))
            }
            b'{' | b'[' => {
                self.skip_value()?;
                WireVolume::Other
            }
            _ => {
                let n = self.number()?;
                if n.bytes().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                    // Out-of-range floats are errors on the general path.
                    WireVolume::Number(Volume::Float(
                        n.parse::<f64>().ok().filter(|f| f.is_finite())?,
                    ))
                } else {
                    match n.parse::<i64>() {
                        Ok(i) => WireVolume::Number(Volume::Int(i)),
                        // Integers beyond 64 bits: the general path's rounding decides.
                        Err(_) => WireVolume::Number(Volume::Float(n.parse::<u64>().ok()? as f64)),
                    }
                }
            }
        })
    }

    /// One sample field; unknown keys are skipped. Returns whether it was a sample key.
    fn field(&mut self, key: &str, s: &mut WireSample<'a>) -> Option<bool> {
        // Length and one byte pick the only candidate; one comparison confirms it.
        let b = key.as_bytes();
        let candidate = match (
            b.len(),
            b.first().copied().unwrap_or(0),
            b.get(8).copied().unwrap_or(0),
        ) {
            (6, _, _) => "source",
            (7, _, _) => "user_id",
            (9, _, _) => "timestamp",
            (10, b'p', _) => "project_id",
            (10, b'm', _) => "message_id",
            (11, _, _) => "resource_id",
            (12, _, b'n') => "counter_name",
            (12, _, b't') => "counter_type",
            (12, _, b'u') => "counter_unit",
            (14, b'c', _) => "counter_volume",
            (14, b'm', _) => "monotonic_time",
            (17, b'r', _) => "resource_metadata",
            _ => "",
        };
        if candidate != key {
            self.skip_value()?;
            return Some(false);
        }
        match candidate {
            "counter_name" => s.counter_name = self.text_field()?,
            "counter_type" => s.counter_type = self.text_field()?,
            "counter_unit" => s.counter_unit = self.text_field()?,
            "counter_volume" => s.counter_volume = self.volume()?,
            "user_id" => s.user_id = self.text_field()?,
            "project_id" => s.project_id = self.text_field()?,
            "resource_id" => s.resource_id = self.text_field()?,
            "timestamp" => s.timestamp = self.text_field()?,
            "resource_metadata" => s.resource_metadata = Some(self.raw_value()?),
            "source" => s.source = self.text_field()?,
            "message_id" => s.message_id = self.text_field()?,
            "monotonic_time" => {
                s.monotonic_time = match self.peek()? {
                    b'n' => {
                        self.literal(b"null")?;
                        None
                    }
                    _ => Some(
                        self.number()?
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.is_finite())?,
                    ),
                }
            }
            _ => {
                self.skip_value()?;
                return Some(false);
            }
        }
        s.any = true;
        Some(true)
    }

    /// Runs `each` for every `"key": value` of an object (the callback consumes the value).
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.sequence(b'{', b'}', |this| {
            let key = this.plain_string()?;
            this.eat(b':')?;
            each(this, key)
        })
    }

    fn sample(&mut self) -> Option<WireSample<'a>> {
        let mut s = WireSample::default();
        self.object(|this, key| this.field(key, &mut s).map(|_| ()))?;
        Some(s)
    }

    fn samples(&mut self, out: &mut Vec<WireSample<'a>>) -> Option<()> {
        self.sequence(b'[', b']', |this| {
            if this.peek()? != b'{' {
                return None;
            }
            out.push(this.sample()?);
            Some(())
        })
    }

    fn top(&mut self) -> Option<Fast<'a>> {
        let mut event_type: Option<&'a str> = None;
        let mut samples: Option<Vec<WireSample<'a>>> = None;
        let mut payloads = 0;
        let mut bare = WireSample::default();
        // The notification an envelope carries: scanned in place, or else its unescaped text.
        let mut envelope: Option<Fast<'a>> = None;
        self.object(|this, key| match key {
            // A repeated event type or payload is left to the general path.
            "event_type" if event_type.is_none() => {
                event_type = Some(this.plain_string()?);
                Some(())
            }
            "event_type" => None,
            "payload" => {
                payloads += 1;
                let et = event_type.filter(|_| payloads == 1)?;
                if !carries_samples(et) {
                    return this.skip_value();
                }
                let mut out = Vec::with_capacity(64);
                match this.peek()? {
                    b'[' => this.samples(&mut out)?,
                    b'{' => this.object(|this, key| {
                        if key == "samples" {
                            this.samples(&mut out)
                        } else {
                            this.skip_value()
                        }
                    })?,
                    _ => return None,
                }
                samples = Some(out);
                Some(())
            }
            "oslo.message" if ESCAPED => None,
            "oslo.message" if envelope.is_none() => {
                let start = this.i;
                envelope = Some(match this.in_place() {
                    Some(found) => found,
                    None => {
                        this.i = start;
                        Fast::Envelope(this.unescaped_string()?)
                    }
                });
                Some(())
            }
            "oslo.version" => this.skip_value(),
            "oslo.message" => None,
            other => this.field(other, &mut bare).map(|_| ()),
        })?;
        if let Some(inner) = envelope {
            // Anything beside the envelope's own keys is left to the general path.
            let alone = event_type.is_none() && payloads == 0 && !bare.any;
            return alone.then_some(inner);
        }
        match (event_type, samples) {
            (Some(et), Some(samples)) if carries_samples(et) => Some(Fast::Notification {
                samples,
                polling: et == TELEMETRY_POLLING,
            }),
            (Some(et), _) if !carries_samples(et) => Some(Fast::Service(et)),
            (None, None) if bare.any => Some(Fast::Bare(Box::new(bare))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::{decode_general, decode_line, Decoded};

    const SAMPLE: &str = r#"{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": 230454583686, "user_id": "user-1", "project_id": null, "resource_id": "e111babf", "timestamp": "2021-07-30T02:00:00.624803", "resource_metadata": {"display_name": "inst-0", "flavor": {"name": "m1.large", "ram": 4096, "x": [1, -2.5e3, true, null, "\u00e9\"\\"]}, "cpu_number": 2}, "source": "openstack", "message_id": "fbfb51b4", "message_signature": "33d2", "monotonic_time": null}"#;

    fn corpus() -> Vec<String> {
        let second = SAMPLE
            .replace("230454583686", "\"12.5\"")
            .replace("\"user-1\"", "null")
            .replace("\"monotonic_time\": null", "\"monotonic_time\": 12.25");
        let odd = SAMPLE
            .replace("230454583686", "1.5e-3")
            .replace("e111babf", "e111\\u0062abf");
        let mut lines = vec![
            format!(r#"{{"event_type": "telemetry.polling", "priority": "SAMPLE", "payload": {{"samples": [{SAMPLE}, {second}]}}, "timestamp": "2021-07-30 02:00:00"}}"#),
            format!(r#"{{"event_type": "metering", "payload": [{SAMPLE}, {odd}, 7]}}"#),
            format!(r#"{{"payload": {{"samples": [{SAMPLE}]}}, "event_type": "telemetry.polling"}}"#),
            format!(r#"{{"event_type": "compute.instance.create.end", "payload": {{"samples": [{SAMPLE}]}}}}"#),
            SAMPLE.to_owned(),
            SAMPLE.replace("230454583686", "18446744073709551616").replace("\"cpu\"", "\"cpu.x\""),
            SAMPLE.replace("230454583686", "true").replace("\"counter_unit\": \"ns\", ", ""),
            serde_json::json!({"oslo.version": "2.0", "oslo.message": format!(r#"{{"event_type": "telemetry.polling", "payload": {{"samples": [{SAMPLE}]}}}}"#)}).to_string(),
            // Python's json.dumps (ensure_ascii) at both levels: non-ASCII as \u escapes in the
            // notification's text, and in the envelope's string (one a surrogate pair).
            format!(
                r#"{{"oslo.message": "{}", "oslo.version": "2.0"}}"#,
                format!(r#"{{"event_type": "metering", "payload": [{SAMPLE}]}}"#)
                    .replace("inst-0", r"inst-ZZ-\u00e9")
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace("ZZ", r"\u00e9\ud83d\ude00")
            ),
        ];
        // The first lines in the envelope as serde_json writes it (non-ASCII as itself).
        for i in [0, 1, 3, 4, 5] {
            let wrapped = serde_json::json!({"oslo.version": "2.0", "oslo.message": lines[i]});
            lines.push(wrapped.to_string());
        }
        lines
    }

    type Outcome = (Result<String, String>, Vec<Decoded>);

    fn both(line: &str) -> (Outcome, Outcome) {
        let bytes = Bytes::copy_from_slice(line.as_bytes());
        let mut a = Vec::new();
        let ra = decode_line(&bytes, &mut |d| a.push(d))
            .map(|k| format!("{k:?}"))
            .map_err(|e| e.to_string());
        let mut b = Vec::new();
        let rb = decode_general(&bytes, line, &mut |d| b.push(d))
            .map(|k| format!("{k:?}"))
            .map_err(|e| e.to_string());
        ((ra, a), (rb, b))
    }

    #[test]
    fn special_finds_the_first_quote_backslash_or_control() {
        for text in [
            "",
            "abc",
            "abcdefgh\"",
            "abcdefghijklmnop\\x",
            "a\u{1}b",
            "\"",
            "0123456789abcdef0123456\"",
        ] {
            let expect = text
                .bytes()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f));
            assert_eq!(super::special(text.as_bytes(), 0), expect, "{text:?}");
        }
        let all: Vec<u8> = (0u8..=255).collect();
        for from in 0..all.len() {
            let expect = all[from..]
                .iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))
                .map(|p| p + from);
            assert_eq!(super::special(&all, from), expect);
        }
    }

    #[test]
    fn fast_path_takes_the_common_shapes_and_agrees() {
        for (i, line) in corpus().iter().enumerate() {
            let (fast, general) = both(line);
            assert_eq!(fast, general, "corpus line {i}");
        }
        // The common shapes really take the fast path.
        assert!(
            matches!(super::scan(&corpus()[0]), Some(super::Fast::Notification { samples, polling: true }) if samples.len() == 2)
        );
        assert!(matches!(
            super::scan(&corpus()[3]),
            Some(super::Fast::Service(_))
        ));
        assert!(matches!(
            super::scan(&corpus()[4]),
            Some(super::Fast::Bare(_))
        ));
        assert!(
            super::scan(&corpus()[2]).is_none(),
            "payload first goes the general way"
        );
        // An envelope's notification is scanned where it lies ...
        assert!(
            matches!(super::scan(&corpus()[7]), Some(super::Fast::Notification { samples, polling: true }) if samples.len() == 1)
        );
        assert!(
            matches!(super::scan(&corpus()[10]), Some(super::Fast::Envelope(_))),
            "an escape in a field it keeps (the odd sample's resource_id) leaves it to unescaping"
        );
        assert!(matches!(
            super::scan(&corpus()[11]),
            Some(super::Fast::Service(_))
        ));
        assert!(matches!(
            super::scan(&corpus()[12]),
            Some(super::Fast::Bare(_))
        ));
        // ... unless the envelope's string has escapes of its own (here \u00e9): unescaped.
        let Some(super::Fast::Envelope(inner)) = super::scan(&corpus()[8]) else {
            panic!("an escaped envelope takes the fast path");
        };
        assert!(
            inner.contains(r#""display_name": "inst-é😀-\u00e9""#),
            "{inner}"
        );
        let ((decoded, samples), _) = both(&corpus()[8]);
        assert!(decoded.is_ok() && samples.len() == 1, "{decoded:?}");
    }

    fn mutate(line: &str, edits: &[(usize, u8, usize)]) -> Option<String> {
        const BYTES: &[u8] = b"{}[]\",:\\ 0123456789.eE+-ntfaul\x01/";
        let mut b = line.as_bytes().to_vec();
        for &(pos, kind, choice) in edits {
            if b.is_empty() {
                break;
            }
            let pos = pos % b.len();
            let c = BYTES[choice % BYTES.len()];
            match kind % 3 {
                0 => {
                    b.remove(pos);
                }
                1 => b.insert(pos, c),
                _ => b[pos] = c,
            }
        }
        String::from_utf8(b).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn fast_and_general_paths_agree_on_mutated_lines(
            which in 0usize..14,
            edits in prop::collection::vec((0usize..100_000, 0u8..3, 0usize..64), 1..4),
        ) {
            let base = &corpus()[which];
            if let Some(line) = mutate(base, &edits) {
                let (fast, general) = both(&line);
                prop_assert_eq!(fast, general, "line: {}", line);
            }
        }
    }
}
