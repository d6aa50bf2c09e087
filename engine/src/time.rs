//! Timestamps as Ceilometer and oslo write them, parsed to microseconds since the Unix epoch,
//! and the one checked time type every boundary (input, API, store, query) goes through.
//!
//! Accepted: `2021-07-30T02:37:21.211598`, `2021-07-30 02:37:21.211598` (oslo envelopes), with
//! or without fraction (1 to 9 digits), naive (UTC) or with `Z` / `+HH:MM` / `-HH:MM` / `+HHMM`
//! (an offset under a day, as Python's `timezone` allows). Refused: anything else, a time
//! outside [`EARLIEST`, `END`) (what the store's nanosecond timestamps hold, with room for a
//! bucket's end), and non-finite or out-of-range epoch seconds.

use std::fmt;

/// The earliest time taken: 1678-01-01T00:00:00 UTC, in microseconds since the epoch (the
/// store's nanoseconds in an i64 begin in September 1677).
pub const EARLIEST: i64 = -9_214_560_000_000_000;
/// The first time no longer taken: 2200-01-01T00:00:00 UTC, in microseconds. The store's
/// nanoseconds end in April 2262; the 62 years between leave room for a bucket's end (a
/// granularity is at most 50 years).
pub const END: i64 = 7_258_118_400_000_000;

/// Why a time was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeError {
    /// Not ISO 8601 (or not a number, where seconds are expected).
    Malformed,
    /// A UTC offset of a day or more, or with minutes over 59.
    Offset,
    /// NaN or infinite epoch seconds.
    NotFinite,
    /// Outside what the store holds (years 1678 to 2199).
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeError::Malformed => "is not an ISO 8601 time such as 2021-07-30T02:37:21.211598 (naive = UTC, or with Z or +HH:MM)",
            TimeError::Offset => "has a UTC offset of a day or more (or minutes over 59); offsets run from -23:59 to +23:59",
            TimeError::NotFinite => "is not a finite number of seconds",
            TimeError::OutOfRange => "is outside the years 1678 to 2199, the times meterflow's nanosecond timestamps hold (with room for a bucket's end)",
        })
    }
}

impl std::error::Error for TimeError {}

/// A checked point in time: microseconds since the epoch within [`EARLIEST`, `END`), so its
/// nanoseconds always fit an i64 and a bucket's end after it does too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(i64);

impl Instant {
    /// Parses an ISO 8601 timestamp (see the module doc).
    ///
    /// # Examples
    /// ```
    /// use meterflow_engine::time::{Instant, TimeError};
    /// assert_eq!(Instant::parse("1970-01-01T00:00:01Z").unwrap().nanos(), 1_000_000_000);
    /// assert_eq!(Instant::parse("9999-01-01T00:00:00"), Err(TimeError::OutOfRange));
    /// assert_eq!(Instant::parse("2021-07-30T02:00:00+99:00"), Err(TimeError::Offset));
    /// ```
    pub fn parse(text: &str) -> Result<Instant, TimeError> {
        Instant::from_micros(parse_unchecked(text)?)
    }

    /// A time from microseconds since the epoch.
    pub fn from_micros(micros: i64) -> Result<Instant, TimeError> {
        if (EARLIEST..END).contains(&micros) {
            Ok(Instant(micros))
        } else {
            Err(TimeError::OutOfRange)
        }
    }

    /// A time from seconds since the epoch, as Gnocchi's API takes them (`1e20`, `inf` and
    /// `nan` are refused, not wrapped).
    pub fn from_seconds(seconds: f64) -> Result<Instant, TimeError> {
        if !seconds.is_finite() {
            return Err(TimeError::NotFinite);
        }
        let micros = (seconds * 1e6).round();
        if micros < EARLIEST as f64 || micros >= END as f64 {
            return Err(TimeError::OutOfRange);
        }
        Ok(Instant(micros as i64))
    }

    /// Microseconds since the epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// Nanoseconds since the epoch (never overflows).
    pub fn nanos(self) -> i64 {
        self.0 * 1000
    }
}

/// Parses an ISO 8601 timestamp to microseconds since the epoch (UTC); `None` if malformed or
/// outside what [`Instant`] takes.
///
/// # Examples
/// ```
/// use meterflow_engine::time::parse_micros;
/// assert_eq!(parse_micros("1970-01-01T00:00:01.5"), Some(1_500_000));
/// assert_eq!(parse_micros("1970-01-01 01:00:00+01:00"), Some(0));
/// assert_eq!(parse_micros("yesterday"), None);
/// assert_eq!(parse_micros("9999-12-31T00:00:00"), None);
/// ```
pub fn parse_micros(text: &str) -> Option<i64> {
    Instant::parse(text).ok().map(Instant::micros)
}

fn parse_unchecked(text: &str) -> Result<i64, TimeError> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err(TimeError::Malformed);
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[range] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let malformed = TimeError::Malformed;
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't') {
        return Err(malformed);
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(malformed);
    }
    let field = |range| num(range).ok_or(TimeError::Malformed);
    let (year, month, day) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(malformed);
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(malformed);
    }
    let mut i = 19;
    let mut micros = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        let mut scale = 100_000i64;
        while i < b.len() && b[i].is_ascii_digit() {
            micros += i64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return Err(malformed);
        }
    }
    let mut offset_secs = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            sign @ (b'+' | b'-') => {
                let at = i + 1;
                let (h, m) = match b.len() - at {
                    5 if b[at + 2] == b':' => (field(at..at + 2)?, field(at + 3..at + 5)?),
                    4 => (field(at..at + 2)?, field(at + 2..at + 4)?),
                    2 => (field(at..at + 2)?, 0),
                    _ => return Err(malformed),
                };
                if h > 23 || m > 59 {
                    return Err(TimeError::Offset);
                }
                offset_secs = (h * 3600 + m * 60) * if sign == b'+' { 1 } else { -1 };
            }
            _ => return Err(malformed),
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1_000_000 + micros)
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS+00:00` (whole seconds).
pub fn format_seconds_utc(micros: i64) -> String {
    format!(
        "{}+00:00",
        format_iso_naive(micros - micros.rem_euclid(1_000_000))
    )
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (fraction
/// omitted when zero): Python's `isoformat()` of an aware UTC time.
///
/// # Examples
/// ```
/// use meterflow_engine::time::format_iso_utc;
/// assert_eq!(format_iso_utc(1_500_000), "1970-01-01T00:00:01.500000+00:00");
/// ```
pub fn format_iso_utc(micros: i64) -> String {
    format!("{}+00:00", format_iso_naive(micros))
}

/// Formats microseconds since the epoch as Python's naive `isoformat()`:
/// `YYYY-MM-DDTHH:MM:SS.ffffff` (fraction omitted when zero).
pub fn format_iso_naive(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ceilometer_and_oslo_forms() {
        let base = parse_micros("2021-07-30T02:37:21.211598").unwrap();
        assert_eq!(parse_micros("2021-07-30 02:37:21.211598"), Some(base));
        assert_eq!(parse_micros("2021-07-30T02:37:21.211598+00:00"), Some(base));
        assert_eq!(parse_micros("2021-07-30T02:37:21.211598Z"), Some(base));
        assert_eq!(parse_micros("2021-07-30T04:37:21.211598+02:00"), Some(base));
        assert_eq!(parse_micros("2021-07-30T02:37:21"), Some(base - 211_598));
        assert_eq!(format_iso_naive(base), "2021-07-30T02:37:21.211598");
        assert_eq!(format_seconds_utc(base), "2021-07-30T02:37:21+00:00");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2021-13-01T00:00:00",
            "2021-02-30T00:00:00",
            "2021-07-30X02:37:21",
            "2021-07-30T02:37:21.",
            "2021-07-30T02:37:21+0",
            "2021-07-30T02:37:21 junk",
            "2021-07-30T02:37:21+-1:00",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn refuses_what_the_store_cannot_hold() {
        assert_eq!(
            Instant::parse("1677-12-31T23:59:59.999999"),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            Instant::parse("1678-01-01T00:00:00").unwrap().micros(),
            EARLIEST
        );
        assert_eq!(
            Instant::parse("2199-12-31T23:59:59.999999")
                .unwrap()
                .micros(),
            END - 1
        );
        assert_eq!(
            Instant::parse("2200-01-01T00:00:00"),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            Instant::parse("2263-01-01T00:00:00"),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            Instant::parse("2021-07-30T02:00:00+24:00"),
            Err(TimeError::Offset)
        );
        assert_eq!(
            Instant::parse("2021-07-30T02:00:00-23:60"),
            Err(TimeError::Offset)
        );
        assert!(Instant::parse("2021-07-30T02:00:00-23:59").is_ok());
        assert_eq!(Instant::from_seconds(f64::NAN), Err(TimeError::NotFinite));
        assert_eq!(
            Instant::from_seconds(f64::INFINITY),
            Err(TimeError::NotFinite)
        );
        assert_eq!(Instant::from_seconds(1e20), Err(TimeError::OutOfRange));
        assert_eq!(Instant::from_seconds(-1e20), Err(TimeError::OutOfRange));
        assert_eq!(Instant::from_seconds(1.5).unwrap().nanos(), 1_500_000_000);
        assert_eq!(Instant::from_micros(i64::MAX), Err(TimeError::OutOfRange));
        assert_eq!(format_iso_naive(EARLIEST), "1678-01-01T00:00:00");
        assert_eq!(format_iso_naive(END), "2200-01-01T00:00:00");
        assert!(END.checked_mul(1000).is_some() && EARLIEST.checked_mul(1000).is_some());
    }

    #[test]
    fn round_trips_dates() {
        for days in [-800_000i64, -1, 0, 1, 11_016, 18_838, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
