//! Timestamps as Ceilometer and oslo write them, parsed to microseconds since the Unix epoch.
//!
//! Accepted: `2021-07-30T02:37:21.211598`, `2021-07-30 02:37:21.211598` (oslo envelopes), with
//! or without fraction (1 to 9 digits), naive (UTC) or with `Z` / `+HH:MM` / `-HH:MM` / `+HHMM`.

/// Parses an ISO 8601 timestamp to microseconds since the epoch (UTC); `None` if malformed.
///
/// # Examples
/// ```
/// use meterflow_engine::time::parse_micros;
/// assert_eq!(parse_micros("1970-01-01T00:00:01.5"), Some(1_500_000));
/// assert_eq!(parse_micros("1970-01-01 01:00:00+01:00"), Some(0));
/// assert_eq!(parse_micros("yesterday"), None);
/// ```
pub fn parse_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return None;
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
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
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
            return None;
        }
    }
    let mut offset_secs = 0i64;
    if i < b.len() {
        match b[i] {
            b'Z' | b'z' if i + 1 == b.len() => {}
            sign @ (b'+' | b'-') => {
                let rest = &text[i + 1..];
                let (h, m) = match rest.len() {
                    5 if rest.as_bytes()[2] == b':' => (&rest[0..2], &rest[3..5]),
                    4 => (&rest[0..2], &rest[2..4]),
                    2 => (&rest[0..2], "00"),
                    _ => return None,
                };
                let h: i64 = h.parse().ok()?;
                let m: i64 = m.parse().ok()?;
                offset_secs = (h * 3600 + m * 60) * if sign == b'+' { 1 } else { -1 };
            }
            _ => return None,
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
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
        ] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_dates() {
        for days in [-800_000i64, -1, 0, 1, 11_016, 18_838, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
