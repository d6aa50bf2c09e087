//! One threshold alarm's evaluation in event time: each time a bucket of the rule's
//! granularity closes (the metric's newest measure reaches the bucket's end), Aodh's
//! decision runs as if Aodh had polled at that instant — over the window
//! `[now − granularity × (evaluation_periods + 1), now)` of closed buckets, keeping the newest
//! `evaluation_periods` values — and the alarm moves as Aodh's `_refresh` moves it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::definition::{AlarmDefinition, AlarmOptions, ThresholdRule};
use super::threshold::{decide, evaluate, AlarmState, Evaluation, ReasonData, Refresh};

/// What one evaluation did to an alarm (a transition, or with `repeat_actions` a refresh).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The event time the evaluation ran at (the end of the bucket that closed), ns.
    pub at_ns: i64,
    /// The state before.
    pub previous: AlarmState,
    /// The decision.
    pub refresh: Refresh,
}

/// The memory of one alarm's evaluation: its state and the closed buckets its next
/// evaluations need. Plain data, so it is checkpointed with the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluator {
    /// The alarm's state.
    pub state: AlarmState,
    /// The reason of the last transition.
    pub state_reason: String,
    /// `reason_data` of the last transition.
    pub reason_data: ReasonData,
    /// The bucket boundary (ns) evaluated last; `None` before the first closed bucket.
    pub through: Option<i64>,
    /// Closed buckets still inside the evaluation window: (bucket start ns, value), oldest
    /// first.
    pub recent: VecDeque<(i64, f64)>,
    /// The last evaluation saw an empty window: the boundaries after it with empty windows
    /// too belong to the same gap and are not evaluated again.
    #[serde(default)]
    pub gap: bool,
    /// The event time the state was entered by a transition (for `hold`).
    #[serde(default)]
    pub entered_ns: Option<i64>,
    /// Since when every evaluation has wanted `alarm` without it taking effect yet (for
    /// `for`).
    #[serde(default)]
    pub pending_since: Option<i64>,
}

/// How an alarm acts on its decisions: Aodh's `repeat_actions` and meterflow's options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conduct {
    /// Notify the same state again at every evaluation.
    pub repeat: bool,
    /// `no_data_grace`, `for`, `hold`.
    pub options: AlarmOptions,
}

impl Conduct {
    /// An alarm's conduct.
    pub fn of(alarm: &AlarmDefinition) -> Conduct {
        Conduct {
            repeat: alarm.repeat_actions,
            options: alarm.options,
        }
    }
}

impl Evaluator {
    /// A fresh evaluation starting in `state`.
    pub fn new(state: AlarmState, state_reason: &str) -> Evaluator {
        Evaluator {
            state,
            state_reason: state_reason.to_owned(),
            reason_data: ReasonData::None,
            through: None,
            recent: VecDeque::new(),
            gap: false,
            entered_ns: None,
            pending_since: None,
        }
    }

    /// Forgets the window (the rule changed): the next closed buckets start it anew; the
    /// state stays.
    pub fn restart_window(&mut self) {
        self.through = None;
        self.recent.clear();
        self.gap = false;
    }

    /// The buckets of `rule` closed by a metric whose newest measure is at `newest_ns`:
    /// `[from, until)`, where `from` is where the last call stopped (`None`: from the oldest
    /// bucket held). Empty when nothing new closed.
    pub fn closing(&self, rule: &ThresholdRule, newest_ns: i64) -> Option<(Option<i64>, i64)> {
        let g = granularity_ns(rule);
        let until = newest_ns.div_euclid(g) * g;
        match self.through {
            Some(through) if through >= until => None,
            through => Some((through, until)),
        }
    }

    /// Takes the buckets that closed (`closed`, oldest first, the range [`Evaluator::closing`]
    /// gave) and evaluates at every bucket boundary up to `until`, calling `out` for each
    /// outcome. `evaluate` is false for disabled alarms or outside their time constraints
    /// (the buckets are remembered, nothing is decided). `allowed(at_ns)` tells whether the
    /// time constraints allow an evaluation at an event time. Returns the evaluations made.
    pub fn advance(
        &mut self,
        rule: &ThresholdRule,
        conduct: Conduct,
        until: i64,
        closed: &mut dyn Iterator<Item = (i64, f64)>,
        allowed: &dyn Fn(i64) -> bool,
        out: &mut dyn FnMut(Outcome),
    ) -> u64 {
        let g = granularity_ns(rule);
        let periods = rule.evaluation_periods;
        let span = g.saturating_mul(periods as i64 + 1);
        let mut first = None;
        for (t, v) in closed {
            if t >= until {
                break;
            }
            if self.recent.back().is_some_and(|&(last, _)| last >= t) {
                continue;
            }
            first.get_or_insert(t);
            self.recent.push_back((t, v));
        }
        let start = match (self.through, first) {
            (Some(through), _) => through,
            // The first buckets ever: evaluate from the end of the oldest one.
            (None, Some(t)) => t,
            (None, None) => {
                self.through = Some(until);
                return 0;
            }
        };
        let mut now = start + g;
        // A window holds at most evaluation_periods + 1 buckets (≤ 101): no allocation.
        let mut buffer = [0f64; 101];
        let mut evaluations = 0;
        while now <= until {
            let from = now - span;
            let mut n = 0;
            for &(_, v) in self.recent.iter().filter(|&&(t, _)| t >= from && t < now) {
                if n == buffer.len() {
                    buffer.copy_within(1.., 0);
                    n -= 1;
                }
                buffer[n] = v;
                n += 1;
            }
            let values = &buffer[..n];
            // In a gap every window is empty and every answer the same: the gap is evaluated
            // at its first boundary only, then at the first boundary that sees data again.
            let empty = values.is_empty();
            if empty && self.gap {
                match self.recent.iter().find(|&&(t, _)| t >= now) {
                    Some(&(t, _)) => now = (t + g).max(now + g),
                    None => break,
                }
                continue;
            }
            if allowed(now) {
                self.gap = empty;
                evaluations += 1;
                let evaluation = evaluate(values, periods, rule.comparison, rule.threshold);
                self.apply(now, conduct, &evaluation, out);
            }
            now += g;
        }
        self.through = Some(until.max(start));
        let keep_from = until - span;
        while self.recent.front().is_some_and(|&(t, _)| t < keep_from) {
            self.recent.pop_front();
        }
        evaluations
    }

    /// Runs Aodh's transition step for `evaluation` at event time `at_ns`, then the
    /// options beyond Aodh: with `for`, a transition to alarm waits until every evaluation
    /// for that long wanted it; with `hold`, a transition out of a state entered less than
    /// `hold` ago waits (and happens at the first evaluation after, if still wanted).
    pub fn apply(
        &mut self,
        at_ns: i64,
        conduct: Conduct,
        evaluation: &Evaluation,
        out: &mut dyn FnMut(Outcome),
    ) {
        let refresh = decide(self.state, conduct.repeat, evaluation);
        self.apply_refresh(at_ns, conduct, refresh, out);
    }

    /// [`Evaluator::apply`] for a decision already made (a composite's).
    pub fn apply_refresh(
        &mut self,
        at_ns: i64,
        conduct: Conduct,
        refresh: Option<Refresh>,
        out: &mut dyn FnMut(Outcome),
    ) {
        let to_alarm = refresh
            .as_ref()
            .is_some_and(|r| r.changed && r.state == AlarmState::Alarm);
        if !to_alarm {
            self.pending_since = None;
        }
        let Some(refresh) = refresh else {
            return;
        };
        let seconds = |s: Option<u64>| s.map(|s| s as i64 * 1_000_000_000);
        if refresh.changed {
            if let Some(wait) = seconds(conduct.options.pending_for).filter(|_| to_alarm) {
                let since = *self.pending_since.get_or_insert(at_ns);
                if at_ns - since < wait {
                    return;
                }
            }
            if let (Some(hold), Some(entered)) = (seconds(conduct.options.hold), self.entered_ns) {
                if at_ns - entered < hold {
                    return;
                }
            }
        }
        let previous = self.state;
        if refresh.changed {
            self.state = refresh.state;
            self.state_reason = refresh.reason.clone();
            self.reason_data = refresh.reason_data.clone();
            self.entered_ns = Some(at_ns);
            self.pending_since = None;
        }
        out(Outcome {
            at_ns,
            previous,
            refresh,
        });
    }
}

/// The rule's granularity in nanoseconds.
pub fn granularity_ns(rule: &ThresholdRule) -> i64 {
    rule.granularity as i64 * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::definition::Target;
    use crate::alarm::threshold::Comparison;

    const S: i64 = 1_000_000_000;

    fn rule(periods: usize) -> ThresholdRule {
        ThresholdRule {
            target: Target::Metrics { metrics: vec![] },
            comparison: Comparison::Gt,
            threshold: 80.0,
            aggregation_method: "mean".parse().unwrap(),
            aggregation_method_name: "mean".into(),
            evaluation_periods: periods,
            granularity: 300,
        }
    }

    fn run(
        e: &mut Evaluator,
        r: &ThresholdRule,
        repeat: bool,
        newest: i64,
        closed: &[(i64, f64)],
    ) -> Vec<String> {
        let conduct = Conduct {
            repeat,
            ..Conduct::default()
        };
        run_with(e, r, conduct, newest, closed)
    }

    fn run_with(
        e: &mut Evaluator,
        r: &ThresholdRule,
        conduct: Conduct,
        newest: i64,
        closed: &[(i64, f64)],
    ) -> Vec<String> {
        let mut out = Vec::new();
        let Some((_, until)) = e.closing(r, newest) else {
            return out;
        };
        e.advance(
            r,
            conduct,
            until,
            &mut closed.iter().copied(),
            &|_| true,
            &mut |o| {
                out.push(format!(
                    "{}@{} {}",
                    o.refresh.state,
                    o.at_ns / S,
                    o.refresh.reason
                ))
            },
        );
        out
    }

    /// One bucket per 300 s from 0, value `v` each, closed by a measure in the next.
    fn buckets(values: &[f64]) -> (i64, Vec<(i64, f64)>) {
        let closed: Vec<(i64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 300 * S, v))
            .collect();
        (values.len() as i64 * 300 * S, closed)
    }

    fn with(options: AlarmOptions) -> Conduct {
        Conduct {
            repeat: false,
            options,
        }
    }

    #[test]
    fn for_waits_until_the_breach_persisted() {
        let r = rule(1);
        let options = AlarmOptions {
            pending_for: Some(600),
            ..AlarmOptions::default()
        };
        // Evaluations at each boundary: ok at 300 as usual; breaching at 600 and 900 (pending
        // since 600, 300 s short), back under at 1200: nothing fires.
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let (newest, closed) = buckets(&[10.0, 90.0, 90.0, 10.0]);
        let out = run_with(&mut e, &r, with(options), newest, &closed);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("ok@300"), "{out:?}");
        // Breaching at 1800, 2100, 2400: fires at 2400, 600 s after the first breach.
        let (newest, closed) = buckets(&[10.0, 90.0, 90.0, 10.0, 10.0, 90.0, 90.0, 90.0]);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let out = run_with(&mut e, &r, with(options), newest, &closed);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[1].starts_with("alarm@2400"), "{out:?}");
        // Without `for`, the same stream flaps at every change, as Aodh does.
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let out = run_with(&mut e, &r, Conduct::default(), newest, &closed);
        assert_eq!(out.len(), 4, "{out:?}");
    }

    #[test]
    fn hold_keeps_a_state_before_leaving_it() {
        let r = rule(1);
        let options = AlarmOptions {
            hold: Some(900),
            ..AlarmOptions::default()
        };
        // Flapping every bucket: ok@300, then alarm wanted at 600 (held until 1200: ok entered
        // at 300), taken at the first evaluation that still wants it after the hold.
        let (newest, closed) = buckets(&[10.0, 90.0, 10.0, 90.0, 90.0, 10.0, 10.0]);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let out = run_with(&mut e, &r, with(options), newest, &closed);
        let at: Vec<&str> = out.iter().map(|o| o.split(' ').next().unwrap()).collect();
        assert_eq!(at, ["ok@300", "alarm@1200", "ok@2100"], "{out:?}");
        // The memory survives a checkpoint.
        let back: Evaluator = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_worked_example_at_each_bucket_close() {
        let r = rule(3);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "Not evaluated yet");
        // Buckets 0 (60), 300 (85), 600 (90), 900 (70) close when a measure at 1200 arrives.
        let closed = [(0, 60.0), (300 * S, 85.0), (600 * S, 90.0), (900 * S, 70.0)];
        let out = run(&mut e, &r, false, 1200 * S, &closed);
        assert_eq!(
            out,
            // [60] and [60, 85] are too few (already insufficient data: nothing); [60, 85, 90]
            // is mixed and the newest breaches, so insufficient data moves to the trend.
            ["alarm@900 Transition to alarm due to 2 samples outside threshold, most recent: 90.0"]
        );
        // [85, 90, 70] at 1200: mixed, state alarm, no repeat → nothing.
        assert_eq!(e.state, AlarmState::Alarm);
        let out = run(&mut e, &r, false, 1500 * S, &[(1200 * S, 60.0)]);
        assert!(out.is_empty(), "{out:?}");
        let out = run(&mut e, &r, false, 1800 * S, &[(1500 * S, 50.0)]);
        assert_eq!(
            out,
            ["ok@1800 Transition to ok due to 3 samples inside threshold, most recent: 50.0"]
        );
    }

    #[test]
    fn gaps_go_to_insufficient_data_once_and_repeat_refreshes() {
        let r = rule(1);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let out = run(&mut e, &r, false, 600 * S, &[(0, 90.0), (300 * S, 95.0)]);
        assert_eq!(out, ["alarm@300 Transition to alarm due to 1 samples outside threshold, most recent: 90.0"]);
        // A measure far later: the windows in between are empty.
        let out = run(&mut e, &r, false, 30_000 * S, &[]);
        assert_eq!(out, ["insufficient data@1200 1 datapoints are unknown"]);
        let mut e = Evaluator::new(AlarmState::Alarm, "");
        let out = run(&mut e, &r, true, 1500 * S, &[(0, 90.0), (300 * S, 95.0)]);
        // The gap from 1200 on is evaluated once, at its first boundary.
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[0].starts_with("alarm@300 Remaining as alarm due to 1 samples outside"));
        assert_eq!(out[3], "insufficient data@1200 1 datapoints are unknown");
        // Data again after the gap: evaluated from the first boundary that sees it.
        let out = run(&mut e, &r, true, 1900 * S, &[]);
        assert!(out.is_empty(), "1800 is not closed yet: {out:?}");
        let out = run(
            &mut e,
            &r,
            true,
            2400 * S,
            &[(1800 * S, 99.0), (2100 * S, 98.0)],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].starts_with("alarm@2100 Transition to alarm"),
            "{out:?}"
        );
    }
}
