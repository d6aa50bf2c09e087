//! Gnocchi's dynamic aggregates (`POST /v1/aggregates`): the operation language and its
//! evaluation over the series of several metrics, as Gnocchi's `rest/aggregates` computes
//! them with numpy.
//!
//! An operation is a prefix expression, as text (`(aggregate mean (metric (ID mean) (ID
//! max)))`) or nested JSON lists. The series it names — each a reference `(metric, method)`,
//! by metric id or, over resources, by metric name or wildcard — are aligned per granularity
//! on the union of their timestamps into a grid (a row per timestamp, a column per series),
//! gaps filled as `fill` says (or the overlap checked as `needed_overlap` says), and the
//! operation is applied to the grid:
//!
//! - `metric`: the columns of the references it names;
//! - `aggregate M`: one column, M of each row across the columns (numpy's nan-aware
//!   reductions); `rate:M`: the differences of M between consecutive rows;
//! - `rolling M N`: M over each window of N rows, per column;
//! - `resample M S`: each column regrouped into buckets of S, as a metric's measures are;
//! - arithmetic, comparisons (1 or 0), `abs`, `neg`, `cos`, `sin`, `tan`, `floor`, `ceil`,
//!   `clip`, `clip_min`, `clip_max`, `max`, `rateofchange`, `rateofchangesec`.
//!
//! Once a result combines series (`aggregate`, or two grids in one operation), the answer is
//! one series (`aggregated`); otherwise each reference keeps its own.

use std::fmt;

use serde_json::{json, Value};

use super::{parse_timespan, resampled, Across, Method, MAX_GRANULARITY, NANOS};

/// How deep an operation may nest.
pub const MAX_DEPTH: usize = 32;
/// How many operations (nodes other than numbers) one request may hold.
pub const MAX_NODES: usize = 512;

/// Why an operation cannot be answered, as Gnocchi answers (all are 400s).
#[derive(Clone, Debug, PartialEq)]
pub enum AggregatesError {
    /// The operation is malformed (Gnocchi's schema validation: `Invalid input: ...`).
    Invalid(String),
    /// The operations text does not parse (Gnocchi's `Invalid operations`).
    Unparsable(String),
    /// The series cannot be combined (Gnocchi's `Metrics cannot be aggregated`: no common
    /// granularity, not enough overlap, a window longer than the series, ...); `detail` names
    /// the references involved.
    Unaggregable {
        /// Gnocchi's reason.
        reason: String,
        /// The references (`[name, aggregation]`, or with the granularity) involved.
        detail: Value,
    },
}

impl AggregatesError {
    /// The error body's `description`, in Gnocchi's shape.
    pub fn description(&self) -> Value {
        match self {
            AggregatesError::Invalid(why) => Value::from(format!("Invalid input: {why}")),
            AggregatesError::Unparsable(why) => json!({
                "cause": "Invalid operations",
                "reason": "Fail to parse the operations string",
                "detail": why,
            }),
            AggregatesError::Unaggregable { reason, detail } => json!({
                "cause": "Metrics cannot be aggregated",
                "reason": reason,
                "detail": detail,
            }),
        }
    }
}

impl fmt::Display for AggregatesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Value::String(s) => f.write_str(&s),
            other => write!(f, "{other}"),
        }
    }
}

fn invalid(why: impl Into<String>) -> AggregatesError {
    AggregatesError::Invalid(why.into())
}

/// A reduction of `aggregate` and `rolling`: [`Across`], optionally `rate:` (the
/// differences between consecutive results).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reduction {
    /// The reduction.
    pub across: Across,
    /// `rate:`.
    pub rate: bool,
}

impl Reduction {
    fn parse(name: &str) -> Option<Reduction> {
        let (rate, base) = match name.strip_prefix("rate:") {
            Some(base) => (true, base),
            None => (false, name),
        };
        Some(Reduction {
            across: base.parse().ok()?,
            rate,
        })
    }
}

/// Element-wise operations on one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    /// `abs`, `absolute`.
    Abs,
    /// `neg`, `negative`.
    Neg,
    /// `cos`.
    Cos,
    /// `sin`.
    Sin,
    /// `tan`.
    Tan,
    /// `floor`.
    Floor,
    /// `ceil`.
    Ceil,
    /// `rateofchange`: the difference with the previous row (the first row is dropped).
    RateOfChange,
    /// `rateofchangesec`: that difference per second (the first row is NaN).
    RateOfChangeSec,
}

impl Unary {
    fn parse(name: &str) -> Option<Unary> {
        Some(match name {
            "abs" | "absolute" => Unary::Abs,
            "neg" | "negative" => Unary::Neg,
            "cos" => Unary::Cos,
            "sin" => Unary::Sin,
            "tan" => Unary::Tan,
            "floor" => Unary::Floor,
            "ceil" => Unary::Ceil,
            "rateofchange" => Unary::RateOfChange,
            "rateofchangesec" => Unary::RateOfChangeSec,
            _ => return None,
        })
    }

    fn apply(self, v: f64) -> f64 {
        match self {
            Unary::Abs => v.abs(),
            Unary::Neg => -v,
            Unary::Cos => v.cos(),
            Unary::Sin => v.sin(),
            Unary::Tan => v.tan(),
            Unary::Floor => v.floor(),
            Unary::Ceil => v.ceil(),
            Unary::RateOfChange | Unary::RateOfChangeSec => unreachable!("row-wise"),
        }
    }
}

/// Element-wise operations on two operands (numpy's ufuncs of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `=`, `==`, `eq`.
    Eq,
    /// `!=`, `≠`, `ne`.
    Ne,
    /// `<`, `lt`.
    Lt,
    /// `>`, `gt`.
    Gt,
    /// `<=`, `≤`, `le`.
    Le,
    /// `>=`, `≥`, `ge`.
    Ge,
    /// `%`, `mod` (floored: the sign of the divisor).
    Mod,
    /// `+`, `add`.
    Add,
    /// `-`, `sub`.
    Sub,
    /// `*`, `×`, `mul`.
    Mul,
    /// `/`, `÷`, `div`.
    Div,
    /// `**`, `^`, `pow`.
    Pow,
    /// `clip_min`: at least the second operand (NaN stays NaN).
    ClipMin,
    /// `clip_max`: at most the second operand (NaN stays NaN).
    ClipMax,
    /// `max`: the larger, a NaN operand ignored (numpy's `fmax`).
    Max,
}

impl Binary {
    /// The operator a name (or symbol) stands for.
    pub fn parse(name: &str) -> Option<Binary> {
        Some(match name {
            "=" | "==" | "eq" => Binary::Eq,
            "!=" | "≠" | "ne" => Binary::Ne,
            "<" | "lt" => Binary::Lt,
            ">" | "gt" => Binary::Gt,
            "<=" | "≤" | "le" => Binary::Le,
            ">=" | "≥" | "ge" => Binary::Ge,
            "%" | "mod" => Binary::Mod,
            "+" | "add" => Binary::Add,
            "-" | "sub" => Binary::Sub,
            "*" | "×" | "mul" => Binary::Mul,
            "/" | "÷" | "div" => Binary::Div,
            "**" | "^" | "pow" => Binary::Pow,
            "clip_min" => Binary::ClipMin,
            "clip_max" => Binary::ClipMax,
            "max" => Binary::Max,
            _ => return None,
        })
    }

    /// Applies it (a comparison gives 1 or 0).
    pub fn apply(self, a: f64, b: f64) -> f64 {
        let truth = |t: bool| if t { 1.0 } else { 0.0 };
        match self {
            Binary::Eq => truth(a == b),
            Binary::Ne => truth(a != b),
            Binary::Lt => truth(a < b),
            Binary::Gt => truth(a > b),
            Binary::Le => truth(a <= b),
            Binary::Ge => truth(a >= b),
            Binary::Mod => {
                let r = a % b;
                if r != 0.0 && (r < 0.0) != (b < 0.0) {
                    r + b
                } else {
                    r
                }
            }
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
            Binary::ClipMin => nan_max(a, b),
            Binary::ClipMax => nan_min(a, b),
            Binary::Max => a.max(b),
        }
    }
}

/// numpy's `maximum`: NaN if either is.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// numpy's `minimum`: NaN if either is.
fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// A reference a `metric` node names: (metric id, name or wildcard; aggregation method).
pub type MetricRef = (String, String);

/// One parsed operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A constant.
    Number(f64),
    /// `(metric REF AGG)` or `(metric (REF AGG) ...)`: the columns of these references.
    Metric(Vec<(String, String)>),
    /// `(aggregate M NODE)`.
    Aggregate(Reduction, Box<Node>),
    /// `(rolling M WINDOW NODE)`.
    Rolling(Reduction, usize, Box<Node>),
    /// `(resample M SECONDS NODE)`: `sampling` in ns.
    Resample(Method, i64, Box<Node>),
    /// A unary operation.
    Unary(Unary, Box<Node>),
    /// A binary operation.
    Binary(Binary, Box<Node>, Box<Node>),
    /// `(clip NODE MIN [MAX])`.
    Clip(Box<Node>, Box<Node>, Option<Box<Node>>),
}

impl Node {
    /// Parses an operation as Gnocchi's API takes it: a JSON string holding the prefix
    /// expression, or the nested lists themselves.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::dynamic::Node;
    /// let text = serde_json::json!("(aggregate mean (metric (a mean) (b mean)))");
    /// let lists = serde_json::json!(["aggregate", "mean", ["metric", ["a", "mean"], ["b", "mean"]]]);
    /// assert_eq!(Node::parse(&text).unwrap(), Node::parse(&lists).unwrap());
    /// assert_eq!(Node::parse(&text).unwrap().references(), vec![("a".into(), "mean".into()), ("b".into(), "mean".into())]);
    /// assert!(Node::parse(&serde_json::json!("(aggregate avg (metric a mean))")).is_err());
    /// ```
    pub fn parse(operations: &Value) -> Result<Node, AggregatesError> {
        let lists;
        let value = match operations {
            Value::String(text) => {
                lists = parse_text(text)?;
                &lists
            }
            other => other,
        };
        if !value.is_array() {
            return Err(invalid(
                "operations must be a list such as [\"aggregate\", \"mean\", [\"metric\", \"ID\", \"mean\"]] or its text form \"(aggregate mean (metric ID mean))\"",
            ));
        }
        let mut budget = MAX_NODES;
        node(value, 0, &mut budget)
    }

    /// The references the operation names, each once, in the order it names them (Gnocchi's
    /// `extract_references`).
    pub fn references(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        self.visit(&mut |refs| {
            for r in refs {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        });
        out
    }

    fn visit(&self, f: &mut dyn FnMut(&[MetricRef])) {
        match self {
            Node::Number(_) => {}
            Node::Metric(refs) => f(refs),
            Node::Aggregate(_, n)
            | Node::Rolling(_, _, n)
            | Node::Resample(_, _, n)
            | Node::Unary(_, n) => n.visit(f),
            Node::Binary(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Node::Clip(a, b, c) => {
                a.visit(f);
                b.visit(f);
                if let Some(c) = c {
                    c.visit(f);
                }
            }
        }
    }
}

/// Gnocchi's text form (pyparsing's `nestedExpr`): the first parenthesized expression, its
/// words split at blanks and parentheses, quoted words kept whole; what follows it is
/// ignored, as pyparsing ignores it.
fn parse_text(text: &str) -> Result<Value, AggregatesError> {
    let unparsable = |why: String| AggregatesError::Unparsable(why);
    let mut chars = text.char_indices().peekable();
    while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    match chars.next() {
        Some((_, '(')) => {}
        Some((at, c)) => {
            return Err(unparsable(format!(
                "Expected \"(\", found {c:?} (at char {at})"
            )))
        }
        None => return Err(unparsable("Expected \"(\", found end of text".into())),
    }
    let mut stack: Vec<Vec<Value>> = vec![Vec::new()];
    loop {
        let Some((at, c)) = chars.next() else {
            return Err(unparsable(format!(
                "Expected \")\", found end of text ({} left open)",
                stack.len()
            )));
        };
        match c {
            '(' => {
                if stack.len() >= MAX_DEPTH {
                    return Err(unparsable(format!(
                        "nested deeper than {MAX_DEPTH} levels (at char {at})"
                    )));
                }
                stack.push(Vec::new());
            }
            ')' => {
                let done = Value::Array(stack.pop().expect("one open at least"));
                match stack.last_mut() {
                    Some(parent) => parent.push(done),
                    None => return Ok(done),
                }
            }
            c if c.is_whitespace() => {}
            '"' | '\'' => {
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) => {
                            if let Some((_, e)) = chars.next() {
                                word.push(e);
                            }
                        }
                        Some((_, other)) => word.push(other),
                        None => {
                            return Err(unparsable(format!(
                                "the quote opened at char {at} is not closed"
                            )))
                        }
                    }
                }
                stack.last_mut().expect("open").push(Value::String(word));
            }
            c => {
                let mut word = String::from(c);
                while let Some((_, c)) =
                    chars.next_if(|(_, c)| !c.is_whitespace() && !"()".contains(*c))
                {
                    word.push(c);
                }
                stack.last_mut().expect("open").push(Value::String(word));
            }
        }
    }
}

/// A word or number as a constant (voluptuous's `Coerce(float)`).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn node(v: &Value, depth: usize, budget: &mut usize) -> Result<Node, AggregatesError> {
    if let Some(n) = number(v) {
        return Ok(Node::Number(n));
    }
    let Value::Array(items) = v else {
        return Err(invalid(format!(
            "{v} is neither an operation (a list) nor a number"
        )));
    };
    if depth >= MAX_DEPTH {
        return Err(invalid(format!(
            "operations nest deeper than {MAX_DEPTH} levels"
        )));
    }
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| invalid(format!("more than {MAX_NODES} operations")))?;
    let Some(op) = items.first().and_then(Value::as_str) else {
        return Err(invalid(format!(
            "{v}: an operation starts with its name (metric, aggregate, rolling, resample, an operator)"
        )));
    };
    let args = &items[1..];
    let sub = |i: usize, budget: &mut usize| node(&args[i], depth + 1, budget).map(Box::new);
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(invalid(format!(
                "'{op}' takes {n} argument(s), got {}: {v}",
                args.len()
            )))
        }
    };
    let reduction = |name: &Value| {
        name.as_str().and_then(Reduction::parse).ok_or_else(|| {
            invalid(format!(
                "'{op}': {name} is not one of mean, median, std, min, max, sum, var, count (optionally rate:)"
            ))
        })
    };
    match op {
        "metric" => metric(args, v).map(Node::Metric),
        "aggregate" => {
            arity(2)?;
            Ok(Node::Aggregate(reduction(&args[0])?, sub(1, budget)?))
        }
        "rolling" => {
            arity(3)?;
            let window = number(&args[1])
                .filter(|w| w.is_finite() && *w >= 1.0 && *w <= 1e9)
                .ok_or_else(|| {
                    invalid(format!(
                        "'rolling': the window {} is not a whole number of points, at least 1",
                        args[1]
                    ))
                })?;
            Ok(Node::Rolling(
                reduction(&args[0])?,
                window as usize,
                sub(2, budget)?,
            ))
        }
        "resample" => {
            arity(3)?;
            let method = args[0]
                .as_str()
                .and_then(|m| m.parse::<Method>().ok())
                .filter(|m| {
                    use super::method::Base;
                    !m.rate
                        || matches!(
                            m.base,
                            Base::Mean
                                | Base::Median
                                | Base::Std
                                | Base::Min
                                | Base::Max
                                | Base::Sum
                                | Base::Count
                        )
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "'resample': {} is not a method it takes (mean, median, std, min, max, sum, count, each optionally rate:; first, last, NNpct)",
                        args[0]
                    ))
                })?;
            let seconds = match &args[1] {
                Value::String(s) => parse_timespan(s),
                other => number(other),
            }
            .filter(|s| {
                // At least a nanosecond: buckets of nothing would divide by zero.
                s.is_finite() && s * NANOS as f64 >= 1.0 && s * NANOS as f64 <= MAX_GRANULARITY as f64
            })
            .ok_or_else(|| {
                invalid(format!(
                    "'resample': {} is not a timespan from 1 ns to 50 years (seconds, or e.g. \"1 hour\")",
                    args[1]
                ))
            })?;
            Ok(Node::Resample(
                method,
                (seconds * NANOS as f64).round() as i64,
                sub(2, budget)?,
            ))
        }
        "clip" => {
            if !(2..=3).contains(&args.len()) {
                return Err(invalid(format!(
                    "'clip' takes 2 or 3 arguments (series, min[, max]), got {}: {v}",
                    args.len()
                )));
            }
            let high = if args.len() == 3 {
                Some(sub(2, budget)?)
            } else {
                None
            };
            Ok(Node::Clip(sub(0, budget)?, sub(1, budget)?, high))
        }
        _ => {
            if let Some(b) = Binary::parse(op) {
                arity(2)?;
                return Ok(Node::Binary(b, sub(0, budget)?, sub(1, budget)?));
            }
            if let Some(u) = Unary::parse(op) {
                arity(1)?;
                return Ok(Node::Unary(u, sub(0, budget)?));
            }
            Err(invalid(format!("'{op}' operation invalid")))
        }
    }
}

/// `metric`'s references: `REF AGG` or `(REF AGG) (REF AGG) ...`.
fn metric(args: &[Value], whole: &Value) -> Result<Vec<(String, String)>, AggregatesError> {
    let pair = |a: &Value, b: &Value| {
        match (a.as_str(), b.as_str()) {
        (Some(a), Some(b)) => Ok((a.to_owned(), b.to_owned())),
        _ => Err(invalid(format!(
            "{whole}: a metric reference is a metric (id, name or wildcard) and an aggregation method, both strings"
        ))),
    }
    };
    match args {
        [] => Err(invalid("'metric' needs at least one reference")),
        [Value::Array(_), ..] => args
            .iter()
            .map(|r| match r.as_array().map(Vec::as_slice) {
                Some([a, b]) => pair(a, b),
                _ => Err(invalid(format!(
                    "{whole}: each reference is a list of two: [metric, aggregation]"
                ))),
            })
            .collect(),
        [a, b] => Ok(vec![pair(a, b)?]),
        _ => Err(invalid(format!(
            "{whole}: 'metric' takes a metric and an aggregation, or lists of them"
        ))),
    }
}

/// How gaps are filled when series are aligned (Gnocchi's `fill`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// No fill: the series must overlap by `needed_overlap` percent.
    Overlap(f64),
    /// `null`: gaps stay empty (NaN), and so do results computed from them.
    Null,
    /// `dropna`: gaps are left out of reductions; empty results are dropped.
    Dropna,
    /// `ffill`: a gap takes the previous value of its series.
    Ffill,
    /// `bfill`: a gap takes the next value of its series.
    Bfill,
    /// `full_ffill`: `ffill`, then `bfill` for leading gaps.
    FullFfill,
    /// `full_bfill`: `bfill`, then `ffill` for trailing gaps.
    FullBfill,
    /// A number.
    Value(f64),
}

impl Fill {
    /// Gnocchi's query parameters: `fill` (a number or a mode) and `needed_overlap`
    /// (percent); `default_overlap` when neither is given (`None`: `dropna`, as
    /// `/v1/aggregates` does; the legacy `/v1/aggregation` routes use 100).
    pub fn from_query(
        fill: Option<&str>,
        needed_overlap: Option<&str>,
        default_overlap: Option<f64>,
    ) -> Result<Fill, AggregatesError> {
        let argument = |detail: &str, reason: &str| AggregatesError::Unaggregable {
            reason: reason.to_owned(),
            detail: Value::from(detail),
        };
        let overlap = match needed_overlap {
            Some(text) => Some(
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| !v.is_nan())
                    .ok_or_else(|| argument("needed_overlap", "Must be a number"))?,
            ),
            None => None,
        };
        let Some(fill) = fill else {
            return Ok(match overlap.or(default_overlap) {
                Some(o) => Fill::Overlap(o),
                None => Fill::Dropna,
            });
        };
        if let Ok(v) = fill.trim().parse::<f64>() {
            return Ok(Fill::Value(v));
        }
        Ok(match fill {
            "null" => Fill::Null,
            "dropna" => Fill::Dropna,
            "ffill" => Fill::Ffill,
            "bfill" => Fill::Bfill,
            "full_ffill" => Fill::FullFfill,
            "full_bfill" => Fill::FullBfill,
            _ => return Err(argument(
                "fill",
                "Must be a float, 'dropna', 'null', 'ffill', 'bfill', 'full_ffill' or 'full_bfill'",
            )),
        })
    }

    fn drops_empty(self) -> bool {
        matches!(
            self,
            Fill::Dropna | Fill::Ffill | Fill::Bfill | Fill::FullFfill | Fill::FullBfill
        )
    }
}

/// The series of one reference at one granularity, read from the store.
#[derive(Clone, Debug)]
pub struct Fetched<'a> {
    /// Which reference (an index into the references given to [`evaluate`]).
    pub reference: usize,
    /// Its granularity (ns).
    pub granularity: i64,
    /// Its points `(timestamp ns, value)`, oldest first.
    pub points: &'a [(i64, f64)],
}

/// Where and how the series are read.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Only points at or after this time (rounded down to each granularity), ns.
    pub start: Option<i64>,
    /// Only points before this time, ns.
    pub stop: Option<i64>,
    /// How gaps are filled.
    pub fill: Fill,
}

/// What an operation gives: `(timestamp ns, granularity ns, value)` points, coarser
/// granularities first; a NaN value is a gap (`fill=null`).
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// One series (the operation combined the references).
    Aggregated(Vec<(i64, i64, f64)>),
    /// A series per reference, in the order of the references given.
    PerReference(Vec<Vec<(i64, i64, f64)>>),
}

/// Values over timestamps: a constant, or a grid (a row per timestamp, a column per series,
/// row-major).
#[derive(Clone, Debug)]
enum Val {
    Num(f64),
    Grid { cols: usize, data: Vec<f64> },
}

#[derive(Clone, Debug)]
struct Frame {
    granularity: i64,
    times: Vec<i64>,
    val: Val,
    aggregated: bool,
}

/// The references of one granularity: their lookup keys (what `metric` nodes name).
struct Context<'k> {
    keys: Vec<&'k (String, String)>,
}

/// Evaluates `node` over the fetched series (Gnocchi's `processor.aggregated`). `lookup`
/// holds each reference's lookup key — what `metric` nodes name (a metric id, or over
/// resources the metric name or wildcard) — and `fetched` its series, one per granularity.
pub fn evaluate(
    node: &Node,
    lookup: &[(String, String)],
    fetched: &[Fetched<'_>],
    window: Window,
) -> Result<Answer, AggregatesError> {
    let mut granularities: Vec<i64> = fetched.iter().map(|f| f.granularity).collect();
    granularities.sort_unstable_by(|a, b| b.cmp(a));
    granularities.dedup();
    let mut aggregated = Vec::new();
    let mut per_reference: Vec<Vec<(i64, i64, f64)>> = vec![Vec::new(); lookup.len()];
    let mut any_aggregated = false;
    for g in granularities {
        let series: Vec<&Fetched> = fetched.iter().filter(|f| f.granularity == g).collect();
        let context = Context {
            keys: series.iter().map(|f| &lookup[f.reference]).collect(),
        };
        let grid = align(&series, g, window, &context)?;
        let out = eval(node, &grid, &context)?;
        let Val::Grid { cols, data } = out.val else {
            return Err(invalid(
                "the operations give a constant, not a series: name a metric",
            ));
        };
        let keep = |v: f64| !window.fill.drops_empty() || v.is_finite();
        let rows = out.times.len();
        if out.aggregated {
            any_aggregated = true;
            for r in 0..rows {
                let v = data[r * cols];
                if keep(v) {
                    aggregated.push((out.times[r], out.granularity, v));
                }
            }
        } else {
            if cols != series.len() {
                return Err(invalid(format!(
                    "the operations give {cols} series for {} references",
                    series.len()
                )));
            }
            for (c, f) in series.iter().enumerate() {
                let into = &mut per_reference[f.reference];
                for r in 0..rows {
                    let v = data[r * cols + c];
                    if keep(v) {
                        into.push((out.times[r], out.granularity, v));
                    }
                }
            }
        }
    }
    Ok(if any_aggregated {
        Answer::Aggregated(aggregated)
    } else {
        Answer::PerReference(per_reference)
    })
}

/// Aligns one granularity's series on the union of their timestamps, fills gaps and checks
/// the overlap (the first half of Gnocchi's `aggregated`).
fn align(
    series: &[&Fetched],
    g: i64,
    window: Window,
    context: &Context,
) -> Result<Frame, AggregatesError> {
    let from = window.start.map(|s| s.div_euclid(g) * g);
    let slices: Vec<&[(i64, f64)]> = series
        .iter()
        .map(|f| {
            let lo = f.points.partition_point(|p| from.is_some_and(|f| p.0 < f));
            let hi = f
                .points
                .partition_point(|p| window.stop.is_none_or(|s| p.0 < s));
            &f.points[lo..hi.max(lo)]
        })
        .collect();
    let mut times: Vec<i64> = slices.iter().flat_map(|s| s.iter().map(|p| p.0)).collect();
    times.sort_unstable();
    times.dedup();
    let cols = series.len();
    let filler = match window.fill {
        Fill::Value(v) => v,
        _ => f64::NAN,
    };
    let mut data = vec![filler; times.len() * cols];
    for (c, slice) in slices.iter().enumerate() {
        let mut row = 0;
        for &(t, v) in slice.iter() {
            // Both are sorted: walk forward (a series may repeat no timestamp).
            while times[row] < t {
                row += 1;
            }
            data[row * cols + c] = v;
        }
    }
    let rows = times.len();
    let fill_forward = |data: &mut Vec<f64>| {
        for c in 0..cols {
            for r in 1..rows {
                if data[r * cols + c].is_nan() {
                    data[r * cols + c] = data[(r - 1) * cols + c];
                }
            }
        }
    };
    let fill_backward = |data: &mut Vec<f64>| {
        for c in 0..cols {
            for r in (0..rows.saturating_sub(1)).rev() {
                if data[r * cols + c].is_nan() {
                    data[r * cols + c] = data[(r + 1) * cols + c];
                }
            }
        }
    };
    match window.fill {
        Fill::Ffill => fill_forward(&mut data),
        Fill::Bfill => fill_backward(&mut data),
        Fill::FullFfill => {
            fill_forward(&mut data);
            fill_backward(&mut data);
        }
        Fill::FullBfill => {
            fill_backward(&mut data);
            fill_forward(&mut data);
        }
        _ => {}
    }
    let mut frame = Frame {
        granularity: g,
        times,
        val: Val::Grid { cols, data },
        aggregated: false,
    };
    if let Fill::Overlap(needed) = window.fill {
        check_overlap(&mut frame, needed, window, context)?;
    }
    Ok(frame)
}

/// With no fill: the rows where every series has a value must be at least `needed` percent
/// of the rows (between the first and last such row, where start or stop is not given).
fn check_overlap(
    frame: &mut Frame,
    needed: f64,
    window: Window,
    context: &Context,
) -> Result<(), AggregatesError> {
    let Val::Grid { cols, data } = &mut frame.val else {
        unreachable!("aligned series are a grid")
    };
    let cols = *cols;
    let unaggregable = |reason: String| AggregatesError::Unaggregable {
        reason,
        detail: Value::from(
            context
                .keys
                .iter()
                .map(|(n, a)| json!([n, a]))
                .collect::<Vec<_>>(),
        ),
    };
    let full: Vec<usize> = (0..frame.times.len())
        .filter(|&r| data[r * cols..(r + 1) * cols].iter().all(|v| !v.is_nan()))
        .collect();
    if full.is_empty() && needed > 0.0 {
        return Err(unaggregable("No overlap".into()));
    }
    if frame.times.is_empty() {
        return Ok(());
    }
    if let (Some(&first), Some(&last)) = (full.first(), full.last()) {
        if window.stop.is_none() {
            frame.times.truncate(last + 1);
            data.truncate((last + 1) * cols);
        }
        if window.start.is_none() {
            frame.times.drain(..first);
            data.drain(..first * cols);
        }
    }
    let percent = full.len() as f64 * 100.0 / frame.times.len() as f64;
    if percent < needed {
        return Err(unaggregable(format!(
            "Less than {needed:.6}% of datapoints overlap in this timespan ({percent:.2}%)"
        )));
    }
    Ok(())
}

fn eval(node: &Node, input: &Frame, context: &Context) -> Result<Frame, AggregatesError> {
    let unaggregable = |reason: String| AggregatesError::Unaggregable {
        reason,
        detail: Value::from(
            context
                .keys
                .iter()
                .map(|(n, a)| json!([n, a]))
                .collect::<Vec<_>>(),
        ),
    };
    let series_needed = |what: &str| invalid(format!("'{what}' needs a series, not a number"));
    match node {
        Node::Number(n) => Ok(Frame {
            val: Val::Num(*n),
            ..input.clone_shape()
        }),
        Node::Metric(refs) => {
            let Val::Grid { cols, data } = &input.val else {
                unreachable!("the input is a grid")
            };
            let chosen: Vec<usize> = (0..*cols)
                .filter(|&c| refs.contains(context.keys[c]))
                .collect();
            let rows = input.times.len();
            let data = if chosen.len() == *cols {
                data.clone()
            } else {
                let mut out = Vec::with_capacity(rows * chosen.len());
                for r in 0..rows {
                    out.extend(chosen.iter().map(|&c| data[r * cols + c]));
                }
                out
            };
            Ok(Frame {
                val: Val::Grid {
                    cols: chosen.len(),
                    data,
                },
                ..input.clone_shape()
            })
        }
        Node::Aggregate(reduction, sub) => {
            let f = eval(sub, input, context)?;
            let Val::Grid { cols, data } = &f.val else {
                return Err(series_needed("aggregate"));
            };
            let mut scratch = Vec::new();
            let mut values: Vec<f64> = (0..f.times.len())
                .map(|r| {
                    reduction
                        .across
                        .reduce_nan(&data[r * cols..(r + 1) * cols], &mut scratch)
                })
                .collect();
            let mut times = f.times;
            if reduction.rate {
                values = values.windows(2).map(|w| w[1] - w[0]).collect();
                if !times.is_empty() {
                    times.remove(0);
                }
            }
            Ok(Frame {
                granularity: f.granularity,
                times,
                val: Val::Grid {
                    cols: 1,
                    data: values,
                },
                aggregated: true,
            })
        }
        Node::Rolling(reduction, window, sub) => {
            let f = eval(sub, input, context)?;
            let Val::Grid { cols, data } = &f.val else {
                return Err(series_needed("rolling"));
            };
            let (cols, rows, window) = (*cols, f.times.len(), *window);
            if window > rows {
                return Err(unaggregable(format!(
                    "Rolling window '{window}' is greater than serie length '{rows}'"
                )));
            }
            let mut out = Vec::new();
            let mut scratch = Vec::new();
            let mut windowed = Vec::with_capacity(window);
            let mut columns = Vec::with_capacity(cols);
            for c in 0..cols {
                let mut reduced: Vec<f64> = (0..=rows - window)
                    .map(|start| {
                        windowed.clear();
                        windowed.extend((start..start + window).map(|r| data[r * cols + c]));
                        reduction.across.reduce_nan(&windowed, &mut scratch)
                    })
                    .collect();
                if reduction.rate {
                    reduced = reduced.windows(2).map(|w| w[1] - w[0]).collect();
                }
                columns.push(reduced);
            }
            let out_rows = columns.first().map_or(0, Vec::len);
            out.reserve(out_rows * cols);
            for r in 0..out_rows {
                out.extend(columns.iter().map(|column| column[r]));
            }
            let skip = window - 1 + usize::from(reduction.rate);
            Ok(Frame {
                granularity: f.granularity,
                times: f.times[skip.min(rows)..].to_vec(),
                val: Val::Grid { cols, data: out },
                aggregated: f.aggregated,
            })
        }
        Node::Resample(method, sampling, sub) => {
            let f = eval(sub, input, context)?;
            let Val::Grid { cols, data } = &f.val else {
                return Err(series_needed("resample"));
            };
            let (cols, rows) = (*cols, f.times.len());
            let mut times = Vec::new();
            let mut columns = Vec::with_capacity(cols);
            for c in 0..cols {
                let points: Vec<(i64, f64)> = (0..rows)
                    .map(|r| (f.times[r], data[r * cols + c]))
                    .collect();
                let out = resampled(&points, *sampling, *method);
                times = out.iter().map(|p| p.0).collect();
                columns.push(out);
            }
            let mut out = vec![f64::NAN; times.len() * cols];
            for (c, column) in columns.iter().enumerate() {
                for (r, &(_, v)) in column.iter().enumerate().take(times.len()) {
                    out[r * cols + c] = v;
                }
            }
            Ok(Frame {
                granularity: *sampling,
                times,
                val: Val::Grid { cols, data: out },
                aggregated: f.aggregated,
            })
        }
        Node::Unary(op, sub) => {
            let f = eval(sub, input, context)?;
            match (op, f.val) {
                (Unary::RateOfChange | Unary::RateOfChangeSec, Val::Num(_)) => {
                    Err(series_needed("rateofchange"))
                }
                (Unary::RateOfChange, Val::Grid { cols, data }) => {
                    let rows = f.times.len();
                    let out: Vec<f64> = (cols.min(data.len())..data.len())
                        .map(|i| data[i] - data[i - cols])
                        .collect();
                    Ok(Frame {
                        granularity: f.granularity,
                        times: f.times[1.min(rows)..].to_vec(),
                        val: Val::Grid { cols, data: out },
                        aggregated: f.aggregated,
                    })
                }
                (Unary::RateOfChangeSec, Val::Grid { cols, data }) => {
                    let out: Vec<f64> = (0..data.len())
                        .map(|i| {
                            let r = i / cols.max(1);
                            if r == 0 {
                                f64::NAN
                            } else {
                                let seconds = (f.times[r] - f.times[r - 1]) as f64 / NANOS as f64;
                                (data[i] - data[i - cols]) / seconds
                            }
                        })
                        .collect();
                    Ok(Frame {
                        val: Val::Grid { cols, data: out },
                        ..f
                    })
                }
                (op, Val::Num(n)) => Ok(Frame {
                    val: Val::Num(op.apply(n)),
                    ..f
                }),
                (op, Val::Grid { cols, mut data }) => {
                    data.iter_mut().for_each(|v| *v = op.apply(*v));
                    Ok(Frame {
                        val: Val::Grid { cols, data },
                        ..f
                    })
                }
            }
        }
        Node::Binary(op, a, b) => {
            let (a, b) = (eval(a, input, context)?, eval(b, input, context)?);
            combine(&[a, b], |v| op.apply(v[0], v[1]), context)
        }
        Node::Clip(a, low, high) => {
            let mut frames = vec![eval(a, input, context)?, eval(low, input, context)?];
            if let Some(high) = high {
                frames.push(eval(high, input, context)?);
            }
            combine(
                &frames,
                |v| {
                    let low = nan_max(v[0], v[1]);
                    match v.get(2) {
                        Some(&high) => nan_min(low, high),
                        None => low,
                    }
                },
                context,
            )
        }
    }
}

impl Frame {
    /// This frame's timestamps and granularity, with an empty value.
    fn clone_shape(&self) -> Frame {
        Frame {
            granularity: self.granularity,
            times: self.times.clone(),
            val: Val::Num(0.0),
            aggregated: self.aggregated,
        }
    }
}

/// Applies `f` element-wise across operands, numpy's broadcasting between grids of the same
/// timestamps (a single column against many) and constants. Two grids make the result
/// aggregated, as in Gnocchi.
fn combine(
    frames: &[Frame],
    f: impl Fn(&[f64]) -> f64,
    context: &Context,
) -> Result<Frame, AggregatesError> {
    let grids: Vec<&Frame> = frames
        .iter()
        .filter(|fr| matches!(fr.val, Val::Grid { .. }))
        .collect();
    let aggregated = frames.iter().any(|fr| fr.aggregated) || grids.len() >= 2;
    let Some(shape) = grids.first() else {
        let values: Vec<f64> = frames
            .iter()
            .map(|fr| match fr.val {
                Val::Num(n) => n,
                Val::Grid { .. } => unreachable!("no grid"),
            })
            .collect();
        return Ok(Frame {
            val: Val::Num(f(&values)),
            aggregated,
            ..frames[0].clone_shape()
        });
    };
    if grids
        .iter()
        .any(|g| g.times != shape.times || g.granularity != shape.granularity)
    {
        return Err(AggregatesError::Unaggregable {
            reason: "Can't compute timeseries with different granularity".into(),
            detail: Value::from(
                context
                    .keys
                    .iter()
                    .map(|(n, a)| json!([n, a]))
                    .collect::<Vec<_>>(),
            ),
        });
    }
    let widths: Vec<usize> = frames
        .iter()
        .map(|fr| match fr.val {
            Val::Grid { cols, .. } => cols,
            Val::Num(_) => 1,
        })
        .collect();
    let cols = widths.iter().copied().max().unwrap_or(1);
    if widths.iter().any(|&w| w != 1 && w != cols) {
        return Err(invalid(format!(
            "operands have {widths:?} series each: they must have as many, or one"
        )));
    }
    let rows = shape.times.len();
    let mut out = Vec::with_capacity(rows * cols);
    let mut operands = vec![0.0; frames.len()];
    for r in 0..rows {
        for c in 0..cols {
            for (o, fr) in operands.iter_mut().zip(frames) {
                *o = match &fr.val {
                    Val::Num(n) => *n,
                    Val::Grid { cols: 1, data } => data[r],
                    Val::Grid { cols: w, data } => data[r * w + c],
                };
            }
            out.push(f(&operands));
        }
    }
    Ok(Frame {
        granularity: shape.granularity,
        times: shape.times.clone(),
        val: Val::Grid { cols, data: out },
        aggregated,
    })
}

#[cfg(test)]
mod tests {
    //! Cases from Gnocchi's own `test_aggregates.py`, with the values it asserts.
    use super::*;

    const MIN: i64 = 60 * NANOS;
    const T0: i64 = 1_388_577_600 * NANOS; // 2014-01-01T12:00:00Z

    fn keys(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), "mean".to_owned()))
            .collect()
    }

    fn run(
        ops: Value,
        series: &[Vec<(i64, f64)>],
        g: i64,
        fill: Fill,
    ) -> Result<Answer, AggregatesError> {
        let names: Vec<String> = (0..series.len()).map(|i| format!("m{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let fetched: Vec<Fetched> = series
            .iter()
            .enumerate()
            .map(|(i, points)| Fetched {
                reference: i,
                granularity: g,
                points,
            })
            .collect();
        let window = Window {
            start: None,
            stop: None,
            fill,
        };
        evaluate(&Node::parse(&ops)?, &keys(&names), &fetched, window)
    }

    fn values(answer: Answer) -> Vec<f64> {
        match answer {
            Answer::Aggregated(points) => points.iter().map(|p| p.2).collect(),
            Answer::PerReference(_) => panic!("expected one series"),
        }
    }

    fn at(minutes: &[(i64, f64)], step: i64) -> Vec<(i64, f64)> {
        minutes.iter().map(|&(m, v)| (T0 + m * step, v)).collect()
    }

    #[test]
    fn some_overlap_with_fill_zero() {
        let a = at(&[(3, 9.), (4, 1.), (5, 2.), (6, 7.), (7, 5.), (8, 3.)], MIN);
        let b = at(
            &[
                (0, 6.),
                (1, 2.),
                (2, 13.),
                (3, 24.),
                (4, 4.),
                (5, 16.),
                (6, 12.),
            ],
            MIN,
        );
        let mean = json!([
            "aggregate",
            "mean",
            ["metric", ["m0", "mean"], ["m1", "mean"]]
        ]);
        assert_eq!(
            values(run(mean, &[a.clone(), b.clone()], MIN, Fill::Value(0.0)).unwrap()),
            [3.0, 1.0, 6.5, 16.5, 2.5, 9.0, 9.5, 2.5, 1.5]
        );
        let minus = json!(["-", ["metric", "m0", "mean"], ["metric", "m1", "mean"]]);
        assert_eq!(
            values(run(minus, &[a.clone(), b.clone()], MIN, Fill::Value(0.0)).unwrap()),
            [-6.0, -2.0, -13.0, -15.0, -3.0, -14.0, -5.0, 5.0, 3.0]
        );
        // Without fill, 4 of the 9 minutes overlap; between the first and last overlapping
        // one (no start or stop given) all 4 of 4 do.
        let mean = json!("(aggregate mean (metric (m0 mean) (m1 mean)))");
        assert_eq!(
            values(
                run(
                    mean.clone(),
                    &[a.clone(), b.clone()],
                    MIN,
                    Fill::Overlap(100.0)
                )
                .unwrap()
            ),
            [16.5, 2.5, 9.0, 9.5]
        );
        let disjoint = at(&[(20, 1.0)], MIN);
        let err = run(mean, &[a, disjoint], MIN, Fill::Overlap(100.0)).unwrap_err();
        assert!(err.to_string().contains("No overlap"), "{err}");
    }

    #[test]
    fn rolling_mix_and_bool() {
        let five = 5 * MIN;
        let a = at(&[(0, 69.), (1, 42.), (2, 4.), (3, 44.)], five);
        let b = at(&[(0, 9.), (1, 2.), (2, 4.), (3, 4.)], five);
        let rolling = json!([
            "/",
            [
                "rolling",
                "sum",
                2,
                ["metric", ["m0", "mean"], ["m1", "mean"]]
            ],
            2
        ]);
        match run(rolling, &[a.clone(), b.clone()], five, Fill::Overlap(100.0)).unwrap() {
            Answer::PerReference(per) => {
                let v: Vec<Vec<f64>> = per
                    .iter()
                    .map(|s| s.iter().map(|p| p.2).collect())
                    .collect();
                assert_eq!(v, [vec![55.5, 23.0, 24.0], vec![5.5, 3.0, 4.0]]);
                assert_eq!(per[0][0].0, T0 + five);
            }
            other => panic!("{other:?}"),
        }
        let mix = json!([
            "rolling",
            "sum",
            2,
            ["*", ["metric", "m0", "mean"], ["metric", "m1", "mean"]]
        ]);
        assert_eq!(
            values(run(mix, &[a.clone(), b.clone()], five, Fill::Overlap(100.0)).unwrap()),
            [705.0, 100.0, 192.0]
        );
        let gt = json!([
            "gt",
            [
                "/",
                [
                    "*",
                    ["*", ["metric", "m0", "mean"], ["metric", "m1", "mean"]],
                    100
                ],
                1000
            ],
            10
        ]);
        assert_eq!(
            values(run(gt, &[a, b], five, Fill::Overlap(100.0)).unwrap()),
            [1.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn bad_operations_are_named() {
        for (ops, says) in [
            (json!("aggregate mean"), "Fail to parse"),
            (json!("(aggregate mean (metric a mean)"), "Fail to parse"),
            (
                json!(["nope", ["metric", "a", "mean"]]),
                "'nope' operation invalid",
            ),
            (json!(["aggregate", "avg", ["metric", "a", "mean"]]), "avg"),
            (
                json!(["rolling", "sum", 0, ["metric", "a", "mean"]]),
                "window",
            ),
            (json!(["metric"]), "at least one"),
            // Found by the fuzzer: buckets of less than a nanosecond divided by zero.
            (
                json!("(resample max 0.0000000000016 (metric a mean))"),
                "from 1 ns",
            ),
            (json!(["metric", "a"]), "metric"),
            (json!(3), "operations must be a list"),
        ] {
            let err = Node::parse(&ops).unwrap_err().description().to_string();
            assert!(err.contains(says), "{ops}: {err}");
        }
        let deep = format!("{}metric a mean{}", "(abs ".repeat(40), ")".repeat(40));
        assert!(Node::parse(&json!(deep)).is_err());
    }
}
