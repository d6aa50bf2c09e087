//! Aodh's threshold decision, as its evaluator makes it for every gnocchi threshold rule: the
//! last `evaluation_periods` values of the rule's granularity are compared with the threshold;
//! all breaching → `alarm`, none → `ok`, mixed → the trend of the newest value, too few →
//! insufficient data; then whether that changes (or, with `repeat_actions`, refreshes) the
//! alarm, with Aodh's reason text and `reason_data`.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    /// Whether it holds for two values ordered as `ordering` (`None`: not comparable, e.g.
    /// of different kinds, or NaN): only `ne` holds for incomparable values, as Python's
    /// comparisons answer.
    ///
    /// # Examples
    /// ```
    /// use std::cmp::Ordering;
    /// use meterflow_operators::alarm::threshold::Comparison;
    /// assert!(Comparison::Le.holds(Some(Ordering::Equal)));
    /// assert!(Comparison::Ne.holds(None));
    /// assert!(!Comparison::Lt.holds(None));
    /// ```
    pub fn holds(self, ordering: Option<std::cmp::Ordering>) -> bool {
        use std::cmp::Ordering;
        match (self, ordering) {
            (Comparison::Ne, None) => true,
            (_, None) => false,
            (Comparison::Eq, Some(o)) => o == Ordering::Equal,
            (Comparison::Ne, Some(o)) => o != Ordering::Equal,
            (Comparison::Lt, Some(o)) => o == Ordering::Less,
            (Comparison::Le, Some(o)) => o != Ordering::Greater,
            (Comparison::Gt, Some(o)) => o == Ordering::Greater,
            (Comparison::Ge, Some(o)) => o != Ordering::Less,
        }
    }

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
        /// Why, in Aodh's words; `None` for Aodh's usual `N datapoints are unknown` (written
        /// only when a transition needs it).
        reason: Option<String>,
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
            reason: None,
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
    pub reason_data: ReasonData,
}

/// Aodh's `reason_data`. A threshold rule's is four plain fields, kept as such so that an
/// evaluation builds no JSON; it serializes to Aodh's JSON object
/// (`{"type": "threshold", "disposition": …, "count": …, "most_recent": …}`), and any other
/// rule's (composite, event) is that JSON.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum ReasonData {
    /// None yet (`null`).
    #[default]
    None,
    /// A threshold rule's.
    Threshold {
        /// `inside`, `outside` or `unknown`.
        disposition: Disposition,
        /// Values counted.
        count: usize,
        /// The newest value, if any.
        most_recent: Option<f64>,
    },
    /// Any other rule's, as JSON.
    Json(Value),
}

/// Where a threshold rule's counted values lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Inside the threshold (counted towards ok).
    Inside,
    /// Outside it (towards alarm).
    Outside,
    /// Unknown (too few values).
    Unknown,
}

impl Disposition {
    /// Aodh's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Inside => "inside",
            Disposition::Outside => "outside",
            Disposition::Unknown => "unknown",
        }
    }
}

impl ReasonData {
    /// The JSON Aodh stores and sends.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::alarm::threshold::{Disposition, ReasonData};
    /// let data = ReasonData::Threshold { disposition: Disposition::Inside, count: 1, most_recent: Some(70.0) };
    /// assert_eq!(
    ///     serde_json::to_string(&data.to_value()).unwrap(),
    ///     r#"{"type":"threshold","disposition":"inside","count":1,"most_recent":70.0}"#
    /// );
    /// ```
    pub fn to_value(&self) -> Value {
        match self {
            ReasonData::None => Value::Null,
            ReasonData::Threshold {
                disposition,
                count,
                most_recent,
            } => json!({
                "type": "threshold",
                "disposition": disposition.as_str(),
                "count": count,
                "most_recent": most_recent,
            }),
            ReasonData::Json(v) => v.clone(),
        }
    }

    /// Reads Aodh's JSON back (a checkpoint, the API): a threshold rule's object becomes
    /// [`ReasonData::Threshold`] again, anything else stays JSON.
    pub fn from_value(value: Value) -> ReasonData {
        let threshold = || {
            let object = value.as_object()?;
            if object.len() != 4 || object.get("type")?.as_str()? != "threshold" {
                return None;
            }
            let disposition = match object.get("disposition")?.as_str()? {
                "inside" => Disposition::Inside,
                "outside" => Disposition::Outside,
                "unknown" => Disposition::Unknown,
                _ => return None,
            };
            let count = object.get("count")?.as_u64()? as usize;
            let most_recent = match object.get("most_recent")? {
                Value::Null => None,
                v => Some(v.as_f64()?),
            };
            Some(ReasonData::Threshold {
                disposition,
                count,
                most_recent,
            })
        };
        match threshold() {
            Some(data) => data,
            None if value.is_null() => ReasonData::None,
            None => ReasonData::Json(value),
        }
    }
}

impl Serialize for ReasonData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ReasonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReasonData, D::Error> {
        Value::deserialize(deserializer).map(ReasonData::from_value)
    }
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
                Some(Refresh {
                    state: AlarmState::InsufficientData,
                    changed: true,
                    reason: match reason {
                        Some(reason) => reason.clone(),
                        None => format!("{periods} datapoints are unknown"),
                    },
                    reason_data: ReasonData::Threshold {
                        disposition: Disposition::Unknown,
                        count: *periods,
                        most_recent: *most_recent,
                    },
                })
            } else if repeat {
                // Aodh's code path for this case reports no samples and no value.
                Some(Refresh {
                    state: AlarmState::InsufficientData,
                    changed: false,
                    reason: "Remaining as insufficient data due to 0 samples outside threshold, most recent: None".into(),
                    reason_data: ReasonData::Threshold {
                        disposition: Disposition::Outside,
                        count: 0,
                        most_recent: None,
                    },
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
        (Disposition::Inside, values - outside)
    } else {
        (Disposition::Outside, outside)
    };
    let verb = if changed {
        "Transition to"
    } else {
        "Remaining as"
    };
    // One allocation: the text and the float written into one buffer.
    let mut reason = String::with_capacity(80);
    let _ = write!(
        reason,
        "{verb} {state} due to {count} samples {} threshold, most recent: ",
        disposition.as_str()
    );
    write_python_float(&mut reason, most_recent);
    Refresh {
        state,
        changed,
        reason,
        reason_data: ReasonData::Threshold {
            disposition,
            count,
            most_recent: Some(most_recent),
        },
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
    let mut text = String::new();
    write_python_float(&mut text, v);
    text
}

/// [`python_float`] appended to `out`, with no allocation of its own.
pub fn write_python_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("nan");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Shortest round-trip digits and the decimal exponent, from Rust's own shortest form
    // (`d.ddde±x`, at most 24 bytes), written on the stack.
    let mut sci = StackText::default();
    let _ = write!(sci, "{:e}", v.abs());
    let sci = sci.as_str();
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let mut digits = StackText::default();
    for c in mantissa.chars().filter(|c| *c != '.') {
        let _ = digits.write_char(c);
    }
    let digits = digits.as_str();
    if v < 0.0 {
        out.push('-');
    }
    let zeros = |out: &mut String, n: usize| out.extend(std::iter::repeat_n('0', n));
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            zeros(out, (-point) as usize);
            out.push_str(digits);
        } else if point as usize >= digits.len() {
            out.push_str(digits);
            zeros(out, point as usize - digits.len());
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let esign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{esign}{:02}", exp.abs());
    }
}

/// A short text written on the stack (a float's digits).
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("written from &str")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
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
            r.reason_data.to_value(),
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
    fn reason_data_reads_back_as_it_was_written() {
        let threshold = ReasonData::Threshold {
            disposition: Disposition::Unknown,
            count: 3,
            most_recent: None,
        };
        let text = serde_json::to_string(&threshold).unwrap();
        assert_eq!(
            text,
            r#"{"type":"threshold","disposition":"unknown","count":3,"most_recent":null}"#
        );
        assert_eq!(
            serde_json::from_str::<ReasonData>(&text).unwrap(),
            threshold
        );
        let composite = json!({"type": "composite", "causative_rules": {}});
        let back: ReasonData = serde_json::from_value(composite.clone()).unwrap();
        assert_eq!(back, ReasonData::Json(composite));
        assert_eq!(ReasonData::from_value(Value::Null), ReasonData::None);
        // A threshold-looking object with a field more is not ours: kept whole.
        let odd = json!({"type": "threshold", "disposition": "inside", "count": 1, "most_recent": 1.0, "x": 1});
        assert_eq!(ReasonData::from_value(odd.clone()).to_value(), odd);
    }

    #[test]
    fn insufficient_data_and_its_quirk() {
        let e = evaluate(&[90.0], 3, Comparison::Gt, 80.0);
        let r = decide(AlarmState::Ok, false, &e).unwrap();
        assert_eq!(r.state, AlarmState::InsufficientData);
        assert_eq!(r.reason, "3 datapoints are unknown");
        assert_eq!(
            r.reason_data.to_value(),
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
