//! Alarms that read more than one metric — `gnocchi_aggregation_by_metrics_threshold`,
//! `gnocchi_aggregation_by_resources_threshold` and `composite` — evaluated in event time.
//!
//! Such an alarm has **leaves**: its threshold rule, or each threshold rule of its composite
//! tree (depth first, Aodh's `rule1`, `rule2`, …). Every metric a leaf reads (a
//! **contributor**) sends the buckets of the leaf's granularity and series as they close, and
//! how far its event time has come. An **instant** (a multiple of the finest leaf
//! granularity) is evaluated once every live contributor's event time has reached it: then
//! the leaves' windows hold every bucket Aodh would read at that instant, aggregated across
//! contributors as Gnocchi's `aggregate` operation does (`needed_overlap=0`: the metrics with
//! a value at a timestamp). A contributor more than the alarm's tolerance behind the newest
//! (its `no_data_grace`, else twice the coarsest leaf granularity) no longer holds instants
//! back: a deleted instance does not stop a by_resources alarm. With `no_data_grace`, instants
//! the engine's watermark passed by that grace are evaluated whatever the contributors say.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::definition::{AlarmDefinition, Composite, Rule, Target, ThresholdRule};
use super::evaluator::{granularity_ns, Conduct, Evaluator, Outcome};
use super::threshold::{evaluate, AlarmState, Evaluation, ReasonData, Refresh};
pub use crate::aggregate::Across;
use crate::aggregate::Method;

/// What a leaf reads from each metric and how it combines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The series each contributor sends: Aodh asks Gnocchi for `aggregation_method` with
    /// `rate:` stripped (for one metric, the method itself).
    pub series: Method,
    /// The reduction across metrics; `None` for a leaf that reads one metric.
    pub across: Option<Across>,
    /// `rate:`: the differences between consecutive aggregated values.
    pub rate: bool,
}

impl Reading {
    /// What `rule` reads, or why it cannot be evaluated.
    pub fn of(rule: &ThresholdRule) -> Result<Reading, String> {
        if let Target::Resource { .. } = rule.target {
            return Ok(Reading {
                series: rule.aggregation_method,
                across: None,
                rate: false,
            });
        }
        let name = rule.aggregation_method_name.as_str();
        let (rate, base) = match name.strip_prefix("rate:") {
            Some(base) => (true, base),
            None => (false, name),
        };
        let across = match base.parse::<Across>() {
            Ok(across) if across != Across::Var => across,
            _ => {
                return Err(format!(
                    "aggregation_method {name} cannot be aggregated across metrics (Gnocchi's aggregate operation refuses it, so Aodh would never get a value); use mean, median, std, min, max, sum or count, optionally with rate:"
                ))
            }
        };
        let series = base
            .parse::<Method>()
            .map_err(|e| format!("aggregation_method: {e}"))?;
        Ok(Reading {
            series,
            across: Some(across),
            rate,
        })
    }
}

/// One leaf of an alarm over several metrics.
#[derive(Clone, Debug)]
pub struct Leaf<'a> {
    /// Its threshold rule.
    pub rule: &'a ThresholdRule,
    /// The rule as given (Aodh's `causative_rules` show it).
    pub json: &'a Value,
    /// What it reads.
    pub reading: Reading,
    /// Its granularity, ns.
    pub granularity: i64,
}

/// The leaves of an alarm over several metrics, and the instants it is evaluated at.
#[derive(Clone, Debug)]
pub struct Shape<'a> {
    /// Depth first.
    pub leaves: Vec<Leaf<'a>>,
    /// The composite tree, if the alarm is a composite.
    pub tree: Option<&'a Composite>,
    /// Instants are multiples of this (the finest leaf granularity), ns.
    pub step: i64,
    /// How far behind the newest contributor one may be and still hold instants back, ns.
    pub tolerance: i64,
}

/// Whether `alarm` reads more than one metric (or its one metric through a composite), so it
/// is evaluated from the buckets its contributors send rather than next to its metric.
pub fn is_cross(alarm: &AlarmDefinition) -> bool {
    match &alarm.rule {
        Rule::Threshold(t) => !matches!(t.target, Target::Resource { .. }),
        Rule::Composite(_) => true,
        Rule::Event(_) => false,
    }
}

impl<'a> Shape<'a> {
    /// The shape of `alarm`, or why it cannot be evaluated (a method that cannot be
    /// aggregated across metrics). `None` for alarms that are not [`is_cross`].
    pub fn of(alarm: &'a AlarmDefinition) -> Option<Result<Shape<'a>, String>> {
        let mut leaves = Vec::new();
        let tree = match &alarm.rule {
            Rule::Threshold(t) if is_cross(alarm) => {
                leaves.push((t, &alarm.rule_json));
                None
            }
            Rule::Composite(c) => {
                collect(c, &alarm.rule_json, &mut leaves);
                Some(c)
            }
            _ => return None,
        };
        let leaves: Result<Vec<Leaf>, String> = leaves
            .into_iter()
            .enumerate()
            .map(|(i, (rule, json))| {
                let reading = Reading::of(rule).map_err(|e| match tree {
                    Some(_) => format!("rule{}: {e}", i + 1),
                    None => e,
                })?;
                Ok(Leaf {
                    rule,
                    json,
                    reading,
                    granularity: granularity_ns(rule),
                })
            })
            .collect();
        Some(leaves.map(|leaves| {
            let step = leaves
                .iter()
                .map(|l| l.granularity)
                .min()
                .unwrap_or(1)
                .max(1);
            let coarsest = leaves.iter().map(|l| l.granularity).max().unwrap_or(1);
            let tolerance = match alarm.options.no_data_grace {
                Some(grace) => grace as i64 * 1_000_000_000,
                None => coarsest.saturating_mul(2),
            };
            Shape {
                leaves,
                tree,
                step,
                tolerance,
            }
        }))
    }

    /// The longest window of any leaf (granularity × (evaluation_periods + 1)), ns.
    pub fn span(&self) -> i64 {
        self.leaves
            .iter()
            .map(|l| {
                l.granularity
                    .saturating_mul(l.rule.evaluation_periods as i64 + 1)
            })
            .max()
            .unwrap_or(0)
    }
}

/// The composite's leaves depth first, each with its JSON.
fn collect<'a>(
    node: &'a Composite,
    json: &'a Value,
    out: &mut Vec<(&'a ThresholdRule, &'a Value)>,
) {
    match node {
        Composite::Leaf(rule) => out.push((rule, json)),
        Composite::And(children) | Composite::Or(children) => {
            let key = if matches!(node, Composite::And(_)) {
                "and"
            } else {
                "or"
            };
            let items = json.get(key).and_then(Value::as_array);
            for (i, child) in children.iter().enumerate() {
                let child_json = items.and_then(|a| a.get(i)).unwrap_or(&Value::Null);
                collect(child, child_json, out);
            }
        }
    }
}

/// One metric feeding a leaf: its id and how far its event time has come (ns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    /// The metric id.
    pub id: String,
    /// Its newest measure's event time, as last reported.
    pub newest: i64,
    /// Its input ended (a bounded input): it holds no instant back.
    #[serde(default)]
    pub ended: bool,
}

/// What one leaf holds: its contributors and the closed buckets inside its window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeafMemory {
    /// Every metric that has fed it.
    pub contributors: Vec<Contributor>,
    /// Closed buckets by start time: (contributor index, value).
    pub points: BTreeMap<i64, Vec<(u32, f64)>>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

/// The memory of an alarm over several metrics besides its [`Evaluator`] (whose `through` is
/// the last instant evaluated). Plain data, checkpointed with the alarm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrossMemory {
    /// One per leaf.
    pub leaves: Vec<LeafMemory>,
}

impl CrossMemory {
    /// Memory for `leaves` leaves.
    pub fn new(leaves: usize) -> CrossMemory {
        CrossMemory {
            leaves: vec![LeafMemory::default(); leaves],
        }
    }

    /// Takes what contributor `id` sent leaf `leaf`: buckets that closed (start, value) and
    /// its newest event time (`ended`: its input ended there). A bucket sent again replaces
    /// the first; buckets too old for any window to come are dropped by the next
    /// [`CrossMemory::run`].
    pub fn feed(
        &mut self,
        leaf: usize,
        id: &str,
        (points, newest, ended): (&[(i64, f64)], i64, bool),
    ) {
        let Some(memory) = self.leaves.get_mut(leaf) else {
            return;
        };
        if memory.index.len() != memory.contributors.len() {
            memory.index = memory
                .contributors
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id.clone(), i as u32))
                .collect();
        }
        let c = match memory.index.get(id) {
            Some(&c) => c,
            None => {
                let c = memory.contributors.len() as u32;
                memory.contributors.push(Contributor {
                    id: id.to_owned(),
                    newest,
                    ended,
                });
                memory.index.insert(id.to_owned(), c);
                c
            }
        };
        let known = &mut memory.contributors[c as usize];
        known.newest = known.newest.max(newest);
        known.ended = ended;
        for &(t, v) in points {
            let at = memory.points.entry(t).or_default();
            match at.iter_mut().find(|(i, _)| *i == c) {
                Some(slot) => slot.1 = v,
                None => at.push((c, v)),
            }
        }
    }

    /// Where buckets stop mattering for an alarm evaluated through `through`: a window
    /// starts up to one of its leaf's buckets before `instant − span` (Gnocchi rounds the
    /// start down), so the coarsest granularity is kept besides the longest span.
    fn horizon(shape: &Shape, through: Option<i64>) -> Option<i64> {
        let coarsest = shape
            .leaves
            .iter()
            .map(|l| l.granularity)
            .max()
            .unwrap_or(0);
        through.map(|t| t.saturating_sub(shape.span()).saturating_sub(coarsest))
    }

    /// The newest instant every live contributor has reached (see the module doc), or with
    /// `no_data_grace` the engine's `watermark` less that grace if later.
    fn closable(&self, shape: &Shape, grace: Option<i64>, watermark: i64) -> Option<i64> {
        let all = || self.leaves.iter().flat_map(|l| &l.contributors);
        let newest = all().map(|c| c.newest).max();
        let by_data = newest.map(|n| {
            let live_from = n.saturating_sub(shape.tolerance);
            // One whose input ended holds nothing back.
            let waiting = all()
                .filter(|c| c.newest >= live_from && !c.ended)
                .map(|c| c.newest)
                .min();
            waiting.map_or(n, |w| w.min(n))
        });
        let by_grace = grace.and_then(|g| (watermark != i64::MIN).then(|| watermark - g));
        let at = match (by_data, by_grace) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        Some(at.div_euclid(shape.step) * shape.step)
    }

    /// Leaf `l`'s values at instant `at` (the aggregated closed buckets of its window, oldest
    /// first; for `rate:`, their differences) into `out`.
    fn window(&self, shape: &Shape, l: usize, at: i64, scratch: &mut Vec<f64>, out: &mut Vec<f64>) {
        out.clear();
        let leaf = &shape.leaves[l];
        let g = leaf.granularity;
        let lo = (at - g.saturating_mul(leaf.rule.evaluation_periods as i64 + 1)).div_euclid(g) * g;
        let mut previous = None;
        for (&t, values) in self.leaves[l].points.range(lo..) {
            if t + g > at {
                break;
            }
            scratch.clear();
            scratch.extend(values.iter().map(|&(_, v)| v));
            let v = match leaf.reading.across {
                Some(across) => across.reduce(scratch),
                None => scratch[0],
            };
            if leaf.reading.rate {
                if let Some(p) = previous {
                    out.push(v - p);
                }
                previous = Some(v);
            } else {
                out.push(v);
            }
        }
    }

    /// The first instant after `at` whose window holds a bucket not in any window at `at`.
    fn next_with_data(&self, shape: &Shape, at: i64) -> Option<i64> {
        shape
            .leaves
            .iter()
            .zip(&self.leaves)
            .filter_map(|(leaf, memory)| {
                let (&t, _) = memory.points.range(at - leaf.granularity + 1..).next()?;
                let due = t + leaf.granularity;
                // The first multiple of the step at or after `due`.
                Some(-(-due).div_euclid(shape.step) * shape.step)
            })
            .min()
    }

    /// Evaluates every instant now closable (see the module doc) that `evaluator` has not
    /// evaluated, calling `out` for each outcome; `allowed(at)` is false for a disabled alarm
    /// or outside its time constraints. Returns the evaluations made.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        shape: &Shape,
        evaluator: &mut Evaluator,
        conduct: Conduct,
        watermark: i64,
        allowed: &dyn Fn(i64) -> bool,
        out: &mut dyn FnMut(Outcome),
    ) -> u64 {
        let grace = conduct
            .options
            .no_data_grace
            .map(|g| g as i64 * 1_000_000_000);
        let Some(until) = self.closable(shape, grace, watermark) else {
            return 0;
        };
        let step = shape.step;
        let start = match evaluator.through {
            Some(t) => t,
            None => {
                // The first buckets ever: evaluate from the end of the oldest one.
                let Some(first) = self
                    .leaves
                    .iter()
                    .filter_map(|l| l.points.keys().next())
                    .min()
                else {
                    return 0;
                };
                first.div_euclid(step) * step
            }
        };
        let (mut scratch, mut values) = (Vec::new(), Vec::new());
        let mut evaluations = 0;
        let mut at = start + step;
        while at <= until {
            let mut empty = true;
            let evaluations_now: Vec<Evaluation> = (0..shape.leaves.len())
                .map(|l| {
                    self.window(shape, l, at, &mut scratch, &mut values);
                    empty &= values.is_empty();
                    let rule = shape.leaves[l].rule;
                    evaluate(
                        &values,
                        rule.evaluation_periods,
                        rule.comparison,
                        rule.threshold,
                    )
                })
                .collect();
            if empty && evaluator.gap {
                // In a gap every answer is the same: skip to where data comes back.
                match self.next_with_data(shape, at) {
                    Some(next) => at = next.max(at + step),
                    None => break,
                }
                continue;
            }
            if allowed(at) {
                evaluator.gap = empty;
                evaluations += 1;
                match shape.tree {
                    None => evaluator.apply(at, conduct, &evaluations_now[0], out),
                    Some(tree) => {
                        let refresh = composite(
                            tree,
                            shape,
                            &evaluations_now,
                            evaluator.state,
                            conduct.repeat,
                        );
                        evaluator.apply_refresh(at, conduct, refresh, out);
                    }
                }
            }
            at += step;
        }
        evaluator.through = Some(until.max(start));
        if let Some(horizon) = Self::horizon(shape, evaluator.through) {
            for leaf in &mut self.leaves {
                while leaf
                    .points
                    .first_key_value()
                    .is_some_and(|(&t, _)| t < horizon)
                {
                    leaf.points.pop_first();
                }
            }
        }
        evaluations
    }
}

/// A leaf's standing in one composite evaluation (Aodh's `RuleTarget`).
#[derive(Clone, Copy, Debug)]
struct RuleTarget {
    evaluated: bool,
    state: Option<AlarmState>,
    trending: Option<AlarmState>,
}

/// Aodh's composite decision at one instant, given every leaf's evaluation (Aodh evaluates
/// leaves lazily; the evaluation is the same, but which leaves count as causes follows the
/// short-circuit, so it is replayed here): the alarm view, then the ok view; if neither
/// holds, every leaf is evaluated and the mixed ones take their trend (from insufficient
/// data) or the opposite of it (Aodh's code does this), and both views are tried again;
/// still neither → insufficient data.
pub fn composite(
    tree: &Composite,
    shape: &Shape,
    evaluations: &[Evaluation],
    current: AlarmState,
    repeat: bool,
) -> Option<Refresh> {
    let mut targets: Vec<RuleTarget> = vec![
        RuleTarget {
            evaluated: false,
            state: None,
            trending: None,
        };
        evaluations.len()
    ];
    let settle = |t: &mut RuleTarget, e: &Evaluation| {
        if !t.evaluated {
            t.evaluated = true;
            (t.state, t.trending) = match e {
                Evaluation::Insufficient { .. } => (Some(AlarmState::InsufficientData), None),
                Evaluation::Definite { state, .. } => (Some(*state), None),
                Evaluation::Mixed { trend, .. } => (None, Some(*trend)),
            };
        }
    };
    let form = expression(tree, &mut 0);
    let decided = |targets: &[RuleTarget], state: AlarmState| {
        let mut causes: Vec<(String, &Value)> = targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == Some(state))
            .map(|(i, _)| (format!("rule{}", i + 1), shape.leaves[i].json))
            .collect();
        let data = json!({
            "type": "composite",
            "composition_form": form,
            "causative_rules": causes.iter().map(|(n, j)| (n.clone(), (*j).clone())).collect::<serde_json::Map<_, _>>(),
        });
        causes.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = causes.iter().map(|(n, _)| n.as_str()).collect();
        let changed = state != current;
        let description = match state {
            AlarmState::Alarm => "outside their threshold.",
            AlarmState::Ok => "inside their threshold.",
            AlarmState::InsufficientData => "state evaluated to unknown.",
        };
        let verb = if changed {
            "transition to"
        } else {
            "remaining as"
        };
        Refresh {
            state,
            changed,
            reason: format!(
                "Composite rule alarm with composition form: {form} {verb} {state}, due to rules: {} {description}",
                names.join(", ")
            ),
            reason_data: ReasonData::Json(data),
        }
    };
    let refresh = |r: Refresh| (r.changed || repeat).then_some(r);
    for pass in 0..2 {
        if pass == 1 {
            for (t, e) in targets.iter_mut().zip(evaluations) {
                settle(t, e);
            }
            for t in &mut targets {
                if let Some(trend) = t.trending {
                    t.state = Some(if current == AlarmState::InsufficientData {
                        trend
                    } else if trend == AlarmState::Alarm {
                        AlarmState::Ok
                    } else {
                        AlarmState::Alarm
                    });
                }
            }
        }
        let mut eval = |i: usize, t: &mut [RuleTarget]| settle(&mut t[i], &evaluations[i]);
        if view(tree, AlarmState::Alarm, &mut 0, &mut targets, &mut eval) {
            return refresh(decided(&targets, AlarmState::Alarm));
        }
        if view(tree, AlarmState::Ok, &mut 0, &mut targets, &mut eval) {
            return refresh(decided(&targets, AlarmState::Ok));
        }
    }
    (current != AlarmState::InsufficientData)
        .then(|| decided(&targets, AlarmState::InsufficientData))
}

/// Aodh's "alarm view" (`want` alarm: and → all, or → any) or "ok view" (`want` ok: and →
/// any, or → all) of `node`, short-circuiting; leaves are numbered from `next`.
fn view(
    node: &Composite,
    want: AlarmState,
    next: &mut usize,
    targets: &mut [RuleTarget],
    eval: &mut dyn FnMut(usize, &mut [RuleTarget]),
) -> bool {
    match node {
        Composite::Leaf(_) => {
            let i = *next;
            *next += 1;
            eval(i, targets);
            targets[i].state == Some(want)
        }
        Composite::And(children) | Composite::Or(children) => {
            let all = matches!(node, Composite::And(_)) == (want == AlarmState::Alarm);
            let mut result = all;
            for child in children {
                if result != all {
                    // Short-circuited: the rest are skipped, their leaves numbered on.
                    *next += leaves(child);
                    continue;
                }
                let r = view(child, want, next, targets, eval);
                if r != all {
                    result = r;
                }
            }
            result
        }
    }
}

fn leaves(node: &Composite) -> usize {
    match node {
        Composite::Leaf(_) => 1,
        Composite::And(c) | Composite::Or(c) => c.iter().map(leaves).sum(),
    }
}

/// Aodh's `composition_form`: `(rule1 and (rule2 or rule3))`.
fn expression(node: &Composite, next: &mut usize) -> String {
    match node {
        Composite::Leaf(_) => {
            *next += 1;
            format!("rule{next}")
        }
        Composite::And(children) | Composite::Or(children) => {
            let sep = if matches!(node, Composite::And(_)) {
                " and "
            } else {
                " or "
            };
            let parts: Vec<String> = children.iter().map(|c| expression(c, next)).collect();
            format!("({})", parts.join(sep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: i64 = 1_000_000_000;

    fn alarm(v: Value) -> AlarmDefinition {
        AlarmDefinition::from_json(&v, |n| format!("id-{n}")).unwrap()
    }

    fn by_metrics(method: &str, periods: u64) -> AlarmDefinition {
        alarm(
            json!({"name": "m", "type": "gnocchi_aggregation_by_metrics_threshold",
            "gnocchi_aggregation_by_metrics_threshold_rule": {
                "metrics": ["a", "b"], "aggregation_method": method, "granularity": 60,
                "comparison_operator": "gt", "threshold": 50, "evaluation_periods": periods}}),
        )
    }

    fn run(m: &mut CrossMemory, a: &AlarmDefinition, e: &mut Evaluator) -> Vec<String> {
        let shape = Shape::of(a).unwrap().unwrap();
        let mut out = Vec::new();
        m.run(&shape, e, Conduct::of(a), i64::MIN, &|_| true, &mut |o| {
            out.push(format!(
                "{}@{} {}",
                o.refresh.state,
                o.at_ns / S,
                o.refresh.reason
            ))
        });
        out
    }

    #[test]
    fn instants_wait_for_every_live_contributor() {
        let a = by_metrics("mean", 1);
        let mut m = CrossMemory::new(1);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        // a closed 0..60 (40) and 60..120 (70); b only 0..60 (80), its event time at 90.
        m.feed(0, "a", (&[(0, 40.0), (60 * S, 70.0)], 125 * S, false));
        m.feed(0, "b", (&[(0, 80.0)], 90 * S, false));
        // Instant 60: mean(40, 80) = 60 > 50 → alarm. Instant 120 waits for b.
        assert_eq!(
            run(&mut m, &a, &mut e),
            ["alarm@60 Transition to alarm due to 1 samples outside threshold, most recent: 60.0"]
        );
        m.feed(0, "b", (&[(60 * S, 10.0)], 130 * S, false));
        // Instant 120: mean(70, 10) = 40 → ok.
        assert_eq!(
            run(&mut m, &a, &mut e),
            ["ok@120 Transition to ok due to 1 samples inside threshold, most recent: 40.0"]
        );
        // b stops; a goes on. Within twice the granularity b holds instants back, then not.
        m.feed(0, "a", (&[(120 * S, 90.0)], 185 * S, false));
        assert!(run(&mut m, &a, &mut e).is_empty());
        m.feed(
            0,
            "a",
            (&[(180 * S, 95.0), (240 * S, 99.0)], 305 * S, false),
        );
        let out = run(&mut m, &a, &mut e);
        assert_eq!(
            out[0],
            "alarm@180 Transition to alarm due to 1 samples outside threshold, most recent: 90.0"
        );
        assert_eq!(e.through, Some(300 * S));
    }

    #[test]
    fn methods_across_metrics_follow_gnocchi() {
        let mut v = [3.0, 1.0, 2.0, 10.0];
        assert_eq!(Across::Median.reduce(&mut v), 2.5);
        assert_eq!(Across::Count.reduce(&mut v), 4.0);
        assert_eq!(Across::Std.reduce(&mut [2.0, 4.0]), 1.0);
        assert!(Reading::of(by_metrics("last", 1).threshold().unwrap())
            .unwrap_err()
            .contains("cannot be aggregated across metrics"));
        let r = Reading::of(by_metrics("rate:max", 1).threshold().unwrap()).unwrap();
        assert!(r.rate && r.across == Some(Across::Max) && r.series.to_string() == "max");
        // rate: the differences of the aggregated values: 3 buckets give 2 values.
        let a = by_metrics("rate:sum", 2);
        let mut m = CrossMemory::new(1);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        m.feed(
            0,
            "a",
            (
                &[(0, 10.0), (60 * S, 50.0), (120 * S, 120.0)],
                200 * S,
                false,
            ),
        );
        m.feed(
            0,
            "b",
            (&[(0, 0.0), (60 * S, 20.0), (120 * S, 30.0)], 200 * S, false),
        );
        // Sums 10, 70, 150 → rates 60, 80: both over 50 at instant 180.
        let out = run(&mut m, &a, &mut e);
        assert_eq!(
            out.last().unwrap(),
            "alarm@180 Transition to alarm due to 2 samples outside threshold, most recent: 80.0"
        );
    }

    #[test]
    fn a_coarse_leaf_keeps_the_bucket_its_window_rounds_down_to() {
        // rule1: per minute, always breaching; rule2: rate over 5-minute buckets, rising.
        let leaf = |g: u64, method: &str| {
            json!({"type": "gnocchi_aggregation_by_metrics_threshold", "metrics": ["m"],
                   "aggregation_method": method, "granularity": g,
                   "comparison_operator": "gt", "threshold": -1, "evaluation_periods": 1})
        };
        let a = alarm(json!({"name": "c", "type": "composite",
            "composite_rule": {"and": [leaf(60, "mean"), leaf(300, "rate:mean")]}}));
        let mut m = CrossMemory::new(2);
        let mut e = Evaluator::new(AlarmState::InsufficientData, "");
        let minutes: Vec<(i64, f64)> = (0..14).map(|i| (i * 60 * S, 1.0)).collect();
        m.feed(0, "m", (&minutes[..5], 300 * S, false));
        m.feed(1, "m", (&[(0, 10.0)], 300 * S, false));
        assert!(
            run(&mut m, &a, &mut e).is_empty(),
            "rule2 needs two buckets"
        );
        m.feed(0, "m", (&minutes[5..10], 600 * S, false));
        m.feed(1, "m", (&[(300 * S, 20.0)], 600 * S, false));
        assert_eq!(run(&mut m, &a, &mut e).len(), 1);
        assert_eq!(e.state, AlarmState::Alarm);
        // Through 14:00 rule2's window still starts at the 0:00 bucket (14:00 − 10 min,
        // rounded down to 5 minutes): the rate stays 10 and nothing changes, also when the
        // evaluation stops at 12:00 in between (and forgets what no window needs).
        m.feed(0, "m", (&minutes[10..12], 720 * S, false));
        m.feed(1, "m", (&[], 720 * S, false));
        assert_eq!(run(&mut m, &a, &mut e), Vec::<String>::new());
        m.feed(0, "m", (&minutes[12..], 899 * S, false));
        m.feed(1, "m", (&[], 899 * S, false));
        assert_eq!(run(&mut m, &a, &mut e), Vec::<String>::new());
        assert_eq!(e.state, AlarmState::Alarm);
    }

    fn leaf(resource: &str, threshold: f64, periods: u64) -> Value {
        json!({"type": "gnocchi_resources_threshold", "metric": "cpu", "resource_id": resource,
               "resource_type": "generic", "aggregation_method": "mean", "granularity": 60,
               "comparison_operator": "gt", "threshold": threshold, "evaluation_periods": periods})
    }

    #[test]
    fn composite_follows_aodh_including_the_inverted_trend() {
        let tree = json!({"or": [leaf("r1", 50.0, 2), {"and": [leaf("r2", 50.0, 1), leaf("r3", 50.0, 1)]}]});
        let a = alarm(json!({"name": "c", "type": "composite", "composite_rule": tree}));
        let shape = Shape::of(&a).unwrap().unwrap();
        assert_eq!(
            expression(shape.tree.unwrap(), &mut 0),
            "(rule1 or (rule2 and rule3))"
        );
        let ev = |values: &[f64], periods| {
            evaluate(
                values,
                periods,
                crate::alarm::threshold::Comparison::Gt,
                50.0,
            )
        };
        let tree = shape.tree.unwrap();
        // rule1 alarm: the or short-circuits; rule2/3 not evaluated, so not causes.
        let r = composite(
            tree,
            &shape,
            &[ev(&[60.0, 70.0], 2), ev(&[60.0], 1), ev(&[60.0], 1)],
            AlarmState::Ok,
            false,
        )
        .unwrap();
        assert_eq!(r.reason, "Composite rule alarm with composition form: (rule1 or (rule2 and rule3)) transition to alarm, due to rules: rule1 outside their threshold.");
        assert_eq!(
            r.reason_data.to_value()["causative_rules"]
                .as_object()
                .unwrap()
                .len(),
            1
        );
        // rule1 mixed (trend ok), rule2 ok, rule3 alarm: pass 1 — alarm view false, ok view
        // needs rule1 ok (unknown yet) → false. Pass 2 from alarm: rule1's trend ok becomes
        // alarm (Aodh's inversion) → alarm view true: the alarm stays, nothing sent.
        let evals = [ev(&[60.0, 40.0], 2), ev(&[10.0], 1), ev(&[60.0], 1)];
        assert!(composite(tree, &shape, &evals, AlarmState::Alarm, false).is_none());
        // From ok: the same inversion makes it alarm.
        let r = composite(tree, &shape, &evals, AlarmState::Ok, false).unwrap();
        assert_eq!(r.state, AlarmState::Alarm);
        assert_eq!(r.reason, "Composite rule alarm with composition form: (rule1 or (rule2 and rule3)) transition to alarm, due to rules: rule1, rule3 outside their threshold.");
        // From insufficient data: rule1 takes its trend (ok); or-ok needs every side ok:
        // rule1 ok and (rule2 ok or rule3 ok) → ok.
        let r = composite(tree, &shape, &evals, AlarmState::InsufficientData, false).unwrap();
        assert_eq!(r.state, AlarmState::Ok);
        assert_eq!(r.reason, "Composite rule alarm with composition form: (rule1 or (rule2 and rule3)) transition to ok, due to rules: rule1, rule2 inside their threshold.");
        // Unknown leaves: neither view → insufficient data, once.
        let evals = [ev(&[], 2), ev(&[10.0], 1), ev(&[60.0], 1)];
        let r = composite(tree, &shape, &evals, AlarmState::Ok, true).unwrap();
        assert_eq!(r.state, AlarmState::InsufficientData);
        assert_eq!(r.reason, "Composite rule alarm with composition form: (rule1 or (rule2 and rule3)) transition to insufficient data, due to rules: rule1 state evaluated to unknown.");
        assert!(composite(tree, &shape, &evals, AlarmState::InsufficientData, true).is_none());
    }
}
