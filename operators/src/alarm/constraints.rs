//! Aodh's `time_constraints`: an alarm is evaluated only inside at least one window
//! `[latest cron start ≤ now, that start + duration]` (both ends inclusive, in the
//! constraint's time zone), or when now is in the same minute as a cron start. meterflow
//! takes "now" to be the evaluation's event time, so replays decide the same way.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use croner::Cron;

use super::definition::{DefinitionProblem, TimeConstraint};

/// An alarm's compiled time constraints; no constraint allows every time.
#[derive(Clone, Debug, Default)]
pub struct Constraints {
    windows: Vec<Window>,
}

#[derive(Clone, Debug)]
struct Window {
    cron: Cron,
    duration_s: i64,
    tz: chrono_tz::Tz,
}

impl Constraints {
    /// Compiles `constraints` (cron expression and time zone), every problem with its place.
    pub fn compile(constraints: &[TimeConstraint]) -> Result<Constraints, Vec<DefinitionProblem>> {
        let mut problems = Vec::new();
        let mut windows = Vec::new();
        for (i, c) in constraints.iter().enumerate() {
            let fields = c.start.split_whitespace().count();
            let cron = match Cron::from_str(&c.start) {
                Ok(cron) if fields == 5 => Some(cron),
                Ok(_) => {
                    problems.push(DefinitionProblem {
                        path: format!("time_constraints[{i}].start"),
                        message: format!("{:?} has {fields} fields; write 5: minute hour day month weekday, e.g. \"0 23 * * *\"", c.start),
                    });
                    None
                }
                Err(e) => {
                    problems.push(DefinitionProblem {
                        path: format!("time_constraints[{i}].start"),
                        message: format!("{:?} is not a valid cron expression ({e}); write 5 fields: minute hour day month weekday, e.g. \"0 23 * * *\"", c.start),
                    });
                    None
                }
            };
            let tz = if c.timezone.is_empty() {
                Some(chrono_tz::UTC)
            } else {
                match c.timezone.parse::<chrono_tz::Tz>() {
                    Ok(tz) => Some(tz),
                    Err(_) => {
                        problems.push(DefinitionProblem {
                            path: format!("time_constraints[{i}].timezone"),
                            message: format!("Timezone {} is not valid; use an IANA name such as Europe/Ljubljana or leave it empty for UTC", c.timezone),
                        });
                        None
                    }
                }
            };
            if let (Some(cron), Some(tz)) = (cron, tz) {
                windows.push(Window {
                    cron,
                    duration_s: c.duration.min(i64::MAX as u64 / 2) as i64,
                    tz,
                });
            }
        }
        if problems.is_empty() {
            Ok(Constraints { windows })
        } else {
            Err(problems)
        }
    }

    /// Whether an evaluation at `at_ns` (ns since the epoch) is inside some window.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::alarm::constraints::Constraints;
    /// use meterflow_operators::alarm::definition::TimeConstraint;
    /// let night = TimeConstraint { name: "night".into(), start: "0 23 * * *".into(),
    ///     duration: 3 * 3600, timezone: "Europe/Ljubljana".into() };
    /// let c = Constraints::compile(&[night]).unwrap();
    /// let at = |h: i64, m: i64| (1_700_000_000 / 86400 * 86400 + h * 3600 + m * 60) * 1_000_000_000;
    /// // 2023-11-14, UTC+1: 22:30 UTC is 23:30 local (inside), 12:00 UTC is not.
    /// assert!(c.allows(at(22, 30)));
    /// assert!(!c.allows(at(12, 0)));
    /// ```
    pub fn allows(&self, at_ns: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let secs = at_ns.div_euclid(1_000_000_000);
        let Some(utc) = DateTime::<Utc>::from_timestamp(secs, 0) else {
            return false;
        };
        self.windows.iter().any(|w| {
            let now = w.tz.from_utc_datetime(&utc.naive_utc());
            let Ok(minute) = now.with_second(0).ok_or(()) else {
                return false;
            };
            if w.cron.is_time_matching(&minute).unwrap_or(false) {
                return true;
            }
            match w.cron.find_previous_occurrence(&now, true) {
                Ok(start) => {
                    let start = start.timestamp();
                    start <= secs && secs <= start.saturating_add(w.duration_s)
                }
                Err(_) => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: &str, duration: u64, tz: &str) -> Result<Constraints, Vec<DefinitionProblem>> {
        Constraints::compile(&[TimeConstraint {
            name: "w".into(),
            start: start.into(),
            duration,
            timezone: tz.into(),
        }])
    }

    #[test]
    fn windows_are_inclusive_and_in_their_zone() {
        let day = 19_675 * 86_400i64; // 2023-11-14 00:00 UTC, a Tuesday
        let at = |s: i64| (day + s) * 1_000_000_000;
        let w = c("0 9 * * 1-5", 3600, "").unwrap();
        assert!(!w.allows(at(9 * 3600 - 1)));
        assert!(w.allows(at(9 * 3600)));
        assert!(w.allows(at(10 * 3600)), "the end is inclusive");
        assert!(!w.allows(at(10 * 3600 + 1)));
        // Duration 0: only the cron minute itself.
        let w = c("30 9 * * *", 0, "").unwrap();
        assert!(w.allows(at(9 * 3600 + 30 * 60 + 59)));
        assert!(!w.allows(at(9 * 3600 + 31 * 60)));
        // Saturday 2023-11-18 is outside a weekday window.
        assert!(!c("0 9 * * 1-5", 3600, "")
            .unwrap()
            .allows(at(4 * 86400 + 9 * 3600 + 60)));
        // 09:00 in New York is 14:00 UTC in November.
        let ny = c("0 9 * * *", 600, "America/New_York").unwrap();
        assert!(ny.allows(at(14 * 3600 + 300)) && !ny.allows(at(9 * 3600 + 300)));
        assert!(Constraints::default().allows(0));
    }

    #[test]
    fn bad_cron_and_zones_are_reported() {
        let p = c("61 * * * *", 1, "Mars/Olympus").unwrap_err();
        assert_eq!(p.len(), 2);
        assert!(p[0].path.ends_with(".start") && p[1].message.contains("Mars/Olympus"));
    }
}
