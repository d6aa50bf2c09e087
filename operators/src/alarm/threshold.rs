//! Aodh's threshold decision, as its evaluator makes it for every gnocchi threshold rule: the
//! last `evaluation_periods` values of the rule's granularity are compared with the threshold;
//! all breaching → `alarm`, none → `ok`, mixed → the trend of the newest value, too few →
//! insufficient data; then whether that changes (or, with `repeat_actions`, refreshes) the
//! alarm, with Aodh's reason text and `reason_data`.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

/// An alarm's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AlarmState {
    /// `ok`.
    #[serde(rename = "ok")]
    Ok,
    /// `alarm`.
    #[serde(rename = "alarm")]
    Alarm,
    /// `insufficient data`.
    #[serde(rename = "insufficient data")]
    InsufficientData,
}

impl AlarmState {
    /// Aodh's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "ok",
            AlarmState::Alarm => "alarm",
            AlarmState::InsufficientData => "insufficient data",
        }
    }
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AlarmState {
    type Err = String;
    fn from_str(text: &str) -> Result<AlarmState, String> {
        match text {
            "ok" => Ok(AlarmState::Ok),
            "alarm" => Ok(AlarmState::Alarm),
            "insufficient data" => Ok(AlarmState::InsufficientData),
            other => Err(format!(
                "state {other:?} is not one of: ok, alarm, insufficient data"
            )),
        }
    }
}

/// A rule's `comparison_operator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `lt`: value < threshold breaches.
    Lt,
    /// `le`.
    Le,
    /// `eq`.
    Eq,
    /// `ne`.
    Ne,
    /// `ge`.
    Ge,
    /// `gt`.
    Gt,
}

impl FromStr for Comparison {
    type Err = String;
    fn from_str(text: &str) -> Result<Comparison, String> {
        Ok(match text {
            "lt" => Comparison::Lt,
            "le" => Comparison::Le,
            "eq" => Comparison::Eq,
            "ne" => Comparison::Ne,
            "ge" => Comparison::Ge,
            "gt" => Comparison::Gt,
            other => {
                return Err(format!(
                    "comparison_operator {other:?} is not one of: lt, le, eq, ne, ge, gt"
                ))
            }
        })
    }
}

impl Comparison {
    /// Whether `value` breaches `threshold`.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Gt => value > threshold,
        }
    }
}

/// What the last `evaluation_periods` values say.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    /// Fewer values than needed (or none could be read): `reason` is Aodh's text.
    Insufficient {
        /// Why, in Aodh's words (e.g. `3 datapoints are unknown`).
        reason: String,
        /// The rule's `evaluation_periods` (Aodh's `count` in `reason_data`).
        periods: usize,
        /// The newest value, if any.
        most_recent: Option<f64>,
    },
    /// Every value breaches (`Alarm`) or none does (`Ok`).
    Definite {
        /// The state.
        state: AlarmState,
        /// How many values breach.
        outside: usize,
        /// Values compared.
        values: usize,
        /// The newest value.
        most_recent: f64,
    },
    /// Some values breach: `trend` is the state the newest value points to.
    Mixed {
        /// `alarm` when the newest value breaches, else `ok`.
        trend: AlarmState,
        /// How many values breach.
        outside: usize,
        /// Values compared.
        values: usize,
        /// The newest value.
        most_recent: f64,
    },
}

/// Compares the newest `periods` of `values` (oldest first) with `threshold`.
///
/// # Examples
/// ```
/// use meterflow_operators::alarm::threshold::{evaluate, AlarmState, Comparison, Evaluation};
/// let e = evaluate(&[60.0, 85.0, 90.0, 70.0], 3, Comparison::Gt, 80.0);
/// assert!(matches!(e, Evaluation::Mixed { trend: AlarmState::Ok, outside: 2, .. }));
/// let e = evaluate(&[85.0], 3, Comparison::Gt, 80.0);
/// assert!(matches!(e, Evaluation::Insufficient { .. }));
/// ```
pub fn evaluate(values: &[f64], periods: usize, op: Comparison, threshold: f64) -> Evaluation {
    if values.len() < periods || periods == 0 {
        return Evaluation::Insufficient {
            reason: format!("{periods} datapoints are unknown"),
            periods,
            most_recent: values.last().copied(),
        };
    }
    let window = &values[values.len() - periods..];
    let outside = window
        .iter()
        .filter(|&&v| op.breaches(v, threshold))
        .count();
    let most_recent = *window.last().expect("periods >= 1");
    if outside == window.len() || outside == 0 {
        Evaluation::Definite {
            state: if outside == 0 {
                AlarmState::Ok
            } else {
                AlarmState::Alarm
            },
            outside,
            values: window.len(),
            most_recent,
        }
    } else {
        Evaluation::Mixed {
            trend: if op.breaches(most_recent, threshold) {
                AlarmState::Alarm
            } else {
                AlarmState::Ok
            },
            outside,
            values: window.len(),
            most_recent,
        }
    }
}

/// A state change (or, with `repeat_actions`, a refresh) to record and notify.
#[derive(Clone, Debug, PartialEq)]
pub struct Refresh {
    /// The new state.
    pub state: AlarmState,
    /// Whether it differs from the current state (a transition, recorded in history).
    pub changed: bool,
    /// Aodh's reason text.
    pub reason: String,
    /// Aodh's `reason_data`.
    pub reason_data: Value,
}

/// Aodh's transition step: what `evaluation` does to an alarm in state `current`; `None` when
/// nothing is recorded or sent.
///
/// # Examples
/// ```
/// use meterflow_operators::alarm::threshold::{decide, evaluate, AlarmState, Comparison};
/// let e = evaluate(&[85.0, 90.0, 70.0], 3, Comparison::Gt, 80.0);
/// let r = decide(AlarmState::InsufficientData, false, &e).unwrap();
/// assert_eq!(r.reason, "Transition to ok due to 1 samples inside threshold, most recent: 70.0");
/// assert!(decide(AlarmState::Alarm, false, &e).is_none());
/// ```
pub fn decide(current: AlarmState, repeat: bool, evaluation: &Evaluation) -> Option<Refresh> {
    match evaluation {
        Evaluation::Insufficient {
            reason,
            periods,
            most_recent,
        } => {
            if current != AlarmState::InsufficientData {
                let data = json!({
                    "type": "threshold",
                    "disposition": "unknown",
                    "count": periods,
                    "most_recent": most_recent,
                });
                Some(Refresh {
                    state: AlarmState::InsufficientData,
                    changed: true,
                    reason: reason.clone(),
                    reason_data: data,
                })
            } else if repeat {
                // Aodh's code path for this case reports no samples and no value.
                Some(Refresh {
                    state: AlarmState::InsufficientData,
                    changed: false,
                    reason: "Remaining as insufficient data due to 0 samples outside threshold, most recent: None".into(),
                    reason_data: json!({
                        "type": "threshold",
                        "disposition": "outside",
                        "count": 0,
                        "most_recent": Value::Null,
                    }),
                })
            } else {
                None
            }
        }
        Evaluation::Definite {
            state,
            outside,
            values,
            most_recent,
        } => {
            let changed = *state != current;
            (changed || repeat).then(|| refresh(*state, changed, *outside, *values, *most_recent))
        }
        Evaluation::Mixed {
            trend,
            outside,
            values,
            most_recent,
        } => {
            if current == AlarmState::InsufficientData {
                Some(refresh(*trend, true, *outside, *values, *most_recent))
            } else if repeat {
                Some(refresh(current, false, *outside, *values, *most_recent))
            } else {
                None
            }
        }
    }
}

fn refresh(
    state: AlarmState,
    changed: bool,
    outside: usize,
    values: usize,
    most_recent: f64,
) -> Refresh {
    let (disposition, count) = if state == AlarmState::Ok {
        ("inside", values - outside)
    } else {
        ("outside", outside)
    };
    let verb = if changed {
        "Transition to"
    } else {
        "Remaining as"
    };
    Refresh {
        state,
        changed,
        reason: format!(
            "{verb} {state} due to {count} samples {disposition} threshold, most recent: {}",
            python_float(most_recent)
        ),
        reason_data: json!({
            "type": "threshold",
            "disposition": disposition,
            "count": count,
            "most_recent": most_recent,
        }),
    }
}

/// A float as Python's `str()` writes it: shortest round-trip digits, `.0` on integral
/// values, exponent form (`1e+16`, `1e-05`) outside `1e-4 ≤ |v| < 1e16`.
///
/// # Examples
/// ```
/// use meterflow_operators::alarm::threshold::python_float;
/// assert_eq!(python_float(70.0), "70.0");
/// assert_eq!(python_float(92.5), "92.5");
/// assert_eq!(python_float(0.1), "0.1");
/// assert_eq!(python_float(1e16), "1e+16");
/// assert_eq!(python_float(1.5e-5), "1.5e-05");
/// assert_eq!(python_float(0.0001), "0.0001");
/// assert_eq!(python_float(-3.0), "-3.0");
/// assert_eq!(python_float(f64::NAN), "nan");
/// assert_eq!(python_float(f64::INFINITY), "inf");
/// ```
pub fn python_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Shortest round-trip digits and the decimal exponent, from Rust's own shortest form.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if v < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{text}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(current: AlarmState, repeat: bool, values: &[f64]) -> Option<Refresh> {
        decide(current, repeat, &evaluate(values, 3, Comparison::Gt, 80.0))
    }

    /// SEMANTICS-UPSTREAM 5.3's worked example, cycle by cycle.
    #[test]
    fn the_worked_example() {
        let r = run(
            AlarmState::InsufficientData,
            false,
            &[60.0, 85.0, 90.0, 70.0],
        )
        .unwrap();
        assert_eq!(r.state, AlarmState::Ok);
        assert!(r.changed);
        assert_eq!(
            r.reason,
            "Transition to ok due to 1 samples inside threshold, most recent: 70.0"
        );
        assert_eq!(
            r.reason_data,
            json!({"type": "threshold", "disposition": "inside", "count": 1, "most_recent": 70.0})
        );
        assert_eq!(run(AlarmState::Alarm, false, &[85.0, 90.0, 70.0]), None);
        assert_eq!(run(AlarmState::Alarm, false, &[90.0, 70.0, 60.0]), None);
        let r = run(AlarmState::Alarm, false, &[70.0, 60.0, 50.0]).unwrap();
        assert_eq!(
            (r.state, r.reason.as_str()),
            (
                AlarmState::Ok,
                "Transition to ok due to 3 samples inside threshold, most recent: 50.0"
            )
        );
    }

    #[test]
    fn every_operator_and_repeat_actions() {
        let values = [1.0, 2.0, 3.0];
        for (op, state) in [
            ("lt", AlarmState::Alarm),
            ("le", AlarmState::Alarm),
            ("eq", AlarmState::Ok),
            ("ne", AlarmState::Alarm),
            ("ge", AlarmState::Ok),
            ("gt", AlarmState::Ok),
        ] {
            let e = evaluate(&values, 3, op.parse().unwrap(), 3.5);
            let r = decide(AlarmState::InsufficientData, false, &e).unwrap();
            assert_eq!(r.state, state, "{op}");
            // The same state again: nothing, unless repeat_actions.
            assert_eq!(decide(state, false, &e), None, "{op}");
            let again = decide(state, true, &e).unwrap();
            assert!(!again.changed);
            assert!(again.reason.starts_with("Remaining as"), "{}", again.reason);
        }
        assert!("gte".parse::<Comparison>().is_err());
        let e = evaluate(&[3.0, 3.0], 2, Comparison::Eq, 3.0);
        assert_eq!(
            decide(AlarmState::Ok, false, &e).unwrap().reason,
            "Transition to alarm due to 2 samples outside threshold, most recent: 3.0"
        );
    }

    #[test]
    fn insufficient_data_and_its_quirk() {
        let e = evaluate(&[90.0], 3, Comparison::Gt, 80.0);
        let r = decide(AlarmState::Ok, false, &e).unwrap();
        assert_eq!(r.state, AlarmState::InsufficientData);
        assert_eq!(r.reason, "3 datapoints are unknown");
        assert_eq!(
            r.reason_data,
            json!({"type": "threshold", "disposition": "unknown", "count": 3, "most_recent": 90.0})
        );
        assert_eq!(decide(AlarmState::InsufficientData, false, &e), None);
        let r = decide(AlarmState::InsufficientData, true, &e).unwrap();
        assert_eq!(
            r.reason,
            "Remaining as insufficient data due to 0 samples outside threshold, most recent: None"
        );
        // Mixed while insufficient: moves to the trend.
        let r = run(AlarmState::InsufficientData, false, &[70.0, 90.0, 95.0]).unwrap();
        assert_eq!(
            (r.state, r.reason.as_str()),
            (
                AlarmState::Alarm,
                "Transition to alarm due to 2 samples outside threshold, most recent: 95.0"
            )
        );
        // Mixed while ok with repeat: refreshes the current state.
        let r = run(AlarmState::Ok, true, &[70.0, 90.0, 95.0]).unwrap();
        assert_eq!(
            (r.state, r.changed, r.reason.as_str()),
            (
                AlarmState::Ok,
                false,
                "Remaining as ok due to 1 samples inside threshold, most recent: 95.0"
            )
        );
    }
}
