//! The JSONPath dialect of Ceilometer's meter and event definitions (`jsonpath_rw` with the
//! `jsonpath_rw_ext` extensions), evaluated over a notification as `serde_json` values.
//!
//! Supported: `$` (root), `@` / `` `this` `` (the current value), `a.b`, `a..b` (descendants),
//! fields (`name`, `'quoted.name'`, `*`, `a,b`), `[n]`, `[*]`, `[a:b]`, filters
//! `[?(@.name='x')]`, `[?key=value & n>2]` (`= == != < <= > >=`), unions `a|b`, parentheses,
//! arithmetic `+ - * /` between paths, numbers and strings (`$.host + "_" + $.node`; a lone
//! bare word is a string, as `jsonpath_rw_ext` reads it), `a where b` (the matches of `a` in
//! which `b` finds something), sorting (`` `sorted` ``, `[/key]`, `[\key]` descending), and the
//! named operators `` `len` ``,
//! `` `split(SEP, SEGMENT, MAXSPLIT)` `` and `` `sub(/REGEX/, REPLACEMENT)` ``.
//!
//! # Examples
//! ```
//! use meterflow_operators::notification::path::Path;
//! let doc: serde_json::Value = serde_json::json!({"payload": {"metrics": [
//!     {"name": "cpu.frequency", "value": 1600}, {"name": "cpu.percent", "value": 0.25}]}});
//! let p = Path::parse("$.payload.metrics[?(@.name='cpu.percent')].value * 100").unwrap();
//! assert_eq!(p.find(&doc), vec![serde_json::json!(25.0)]);
//! ```

use std::borrow::Cow;
use std::fmt;

use serde_json::{Number, Value};

use crate::alarm::threshold::Comparison;

/// A parsed path expression.
#[derive(Clone, Debug)]
pub struct Path {
    node: Node,
    text: String,
}

/// Why a path expression does not parse.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("cannot parse JSONPath {text:?}: {message}")]
pub struct PathError {
    text: String,
    message: String,
}

#[derive(Clone, Debug)]
enum Node {
    Root,
    This,
    Fields(Vec<String>),
    Index(usize),
    Slice(Option<i64>, Option<i64>),
    Filter(Vec<Condition>),
    Child(Box<Node>, Box<Node>),
    Descendants(Box<Node>, Box<Node>),
    Union(Box<Node>, Box<Node>),
    Arith(Box<Operand>, ArithOp, Box<Operand>),
    Literal(Value),
    Len,
    /// `left where right`: the matches of `left` in which `right` finds something.
    Where(Box<Node>, Box<Node>),
    /// `` `sorted` `` (no keys) or `[/key, \key]`.
    Sorted(Vec<SortKey>),
    Split {
        separator: String,
        segment: usize,
        max_split: Option<usize>,
    },
    Sub {
        regex: regex::Regex,
        replacement: String,
    },
}

#[derive(Clone, Debug)]
enum Operand {
    Path(Node),
    Value(Value),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// One key of a `[/key]` (ascending) or `[\key]` (descending) sort.
#[derive(Clone, Debug)]
struct SortKey {
    path: Node,
    descending: bool,
}

#[derive(Clone, Debug)]
struct Condition {
    target: Node,
    test: Option<(Comparison, Literal)>,
}

#[derive(Clone, Debug)]
enum Literal {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Path {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let fail = |message: String| PathError {
            text: text.to_owned(),
            message,
        };
        let tokens = lex(text).map_err(fail)?;
        if tokens.len() > MAX_TOKENS {
            return Err(fail(format!(
                "the path has {} tokens, more than the {MAX_TOKENS} taken",
                tokens.len()
            )));
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            depth: 0,
        };
        let node = parser.union().map_err(fail)?;
        if let Some(t) = parser.peek() {
            return Err(fail(format!("unexpected {t} after a complete expression")));
        }
        Ok(Path {
            node,
            text: text.to_owned(),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every value the expression finds in `doc`, in document order (nulls included).
    pub fn find(&self, doc: &Value) -> Vec<Value> {
        values(&self.node, doc, doc)
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    /// Every value found with its place (`payload.thing.bar`, `payload.items.[0]`; empty
    /// for computed values), as Ceilometer hands matches to trait plugins.
    pub fn find_located(&self, doc: &Value) -> Vec<(String, Value)> {
        find(&self.node, doc, &String::new(), doc)
            .into_iter()
            .map(|(v, at)| (at, v.into_owned()))
            .collect()
    }

    /// Whether the expression is one bare word (`memory`, `GB`): Ceilometer reads every sample
    /// attribute as a path, and a bare word that finds nothing leaves the configured text.
    pub fn is_single_field(&self) -> bool {
        matches!(&self.node, Node::Fields(f) if f.len() == 1)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a match lies in the document, tracked only when a trait plugin asks (`()` tracks
/// nothing and costs nothing).
trait Trail: Clone {
    /// The document's root, or a computed value: no path.
    fn none() -> Self;
    /// One step down to the field `name`.
    fn field(&self, name: &str) -> Self;
    /// One step down to the list element `i`.
    fn index(&self, i: usize) -> Self;
}

impl Trail for () {
    fn none() {}
    fn field(&self, _: &str) {}
    fn index(&self, _: usize) {}
}

/// Ceilometer's name for a match's place: its path elements from the root joined with `.`
/// (`payload.thing.bar`, `payload.items.[0]`); empty for the root and computed values.
impl Trail for String {
    fn none() -> String {
        String::new()
    }

    fn field(&self, name: &str) -> String {
        if self.is_empty() {
            name.to_owned()
        } else {
            format!("{self}.{name}")
        }
    }

    fn index(&self, i: usize) -> String {
        self.field(&format!("[{i}]"))
    }
}

type Found<'a, T> = Vec<(Cow<'a, Value>, T)>;

/// The values `node` finds, without their places.
fn values<'a>(node: &Node, datum: &'a Value, root: &'a Value) -> Vec<Cow<'a, Value>> {
    find(node, datum, &(), root)
        .into_iter()
        .map(|(v, ())| v)
        .collect()
}

fn computed<'a, T: Trail>(values: impl IntoIterator<Item = Value>) -> Found<'a, T> {
    values
        .into_iter()
        .map(|v| (Cow::Owned(v), T::none()))
        .collect()
}

fn find<'a, T: Trail>(node: &Node, datum: &'a Value, at: &T, root: &'a Value) -> Found<'a, T> {
    match node {
        Node::Root => vec![(Cow::Borrowed(root), T::none())],
        Node::This => vec![(Cow::Borrowed(datum), at.clone())],
        Node::Fields(names) => match datum {
            Value::Object(map) => names
                .iter()
                .flat_map(|name| -> Found<'a, T> {
                    if name == "*" {
                        map.iter()
                            .map(|(k, v)| (Cow::Borrowed(v), at.field(k)))
                            .collect()
                    } else {
                        map.get(name)
                            .map(|v| (Cow::Borrowed(v), at.field(name)))
                            .into_iter()
                            .collect()
                    }
                })
                .collect(),
            _ => Vec::new(),
        },
        Node::Index(i) => match datum {
            Value::Array(items) => items
                .get(*i)
                .map(|v| (Cow::Borrowed(v), at.index(*i)))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        },
        Node::Slice(start, end) => {
            let items: &[Value] = match datum {
                Value::Array(items) => items,
                other => std::slice::from_ref(other),
            };
            let len = items.len() as i64;
            let clamp = |i: i64| (if i < 0 { len + i } else { i }).clamp(0, len) as usize;
            let (s, e) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(len)));
            (s..e.max(s))
                .map(|i| (Cow::Borrowed(&items[i]), at.index(i)))
                .collect()
        }
        Node::Filter(conditions) => match datum {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter(|(_, item)| conditions.iter().all(|c| c.holds(item)))
                .map(|(i, item)| (Cow::Borrowed(item), at.index(i)))
                .collect(),
            _ => Vec::new(),
        },
        Node::Child(left, right) => find(left, datum, at, root)
            .into_iter()
            .flat_map(|(m, t)| match m {
                Cow::Borrowed(v) => find(right, v, &t, root),
                Cow::Owned(v) => find(right, &v, &t, root)
                    .into_iter()
                    .map(|(r, t)| (Cow::Owned(r.into_owned()), t))
                    .collect(),
            })
            .collect(),
        Node::Descendants(left, right) => {
            let mut out = Vec::new();
            for (m, t) in find(left, datum, at, root) {
                let mut stack = vec![(m.into_owned(), t)];
                while let Some((v, t)) = stack.pop() {
                    out.extend(
                        find(right, &v, &t, root)
                            .into_iter()
                            .map(|(r, t)| (Cow::Owned(r.into_owned()), t)),
                    );
                    match v {
                        Value::Object(map) => {
                            stack.extend(map.into_iter().rev().map(|(k, v)| (v, t.field(&k))))
                        }
                        Value::Array(items) => stack.extend(
                            items
                                .into_iter()
                                .enumerate()
                                .rev()
                                .map(|(i, v)| (v, t.index(i))),
                        ),
                        _ => {}
                    }
                }
            }
            out
        }
        Node::Union(left, right) => {
            let mut out = find(left, datum, at, root);
            out.extend(find(right, datum, at, root));
            out
        }
        Node::Where(left, right) => find(left, datum, at, root)
            .into_iter()
            .filter(|(m, _)| !values(right, m, root).is_empty())
            .collect(),
        Node::Arith(left, op, right) => computed(arith(left, *op, right, datum, root)),
        Node::Literal(v) => computed([v.clone()]),
        Node::Len => computed(match datum {
            Value::Array(items) => Some(Value::from(items.len())),
            Value::Object(map) => Some(Value::from(map.len())),
            Value::String(s) => Some(Value::from(s.chars().count())),
            _ => None,
        }),
        Node::Sorted(keys) => match datum {
            Value::Array(_) => computed(sorted(datum, keys, root)),
            Value::Object(_) if keys.is_empty() => computed(sorted(datum, keys, root)),
            // What is not a list, and a mapping sorted by keys, stays as it is.
            _ => vec![(Cow::Borrowed(datum), at.clone())],
        },
        Node::Split {
            separator,
            segment,
            max_split,
        } => {
            let Value::String(s) = datum else {
                return Vec::new();
            };
            let parts: Vec<&str> = match max_split {
                Some(n) => s.splitn(n + 1, separator.as_str()).collect(),
                None => s.split(separator.as_str()).collect(),
            };
            computed(parts.get(*segment).map(|p| Value::String((*p).to_owned())))
        }
        Node::Sub { regex, replacement } => computed(match datum {
            Value::String(s) => Some(Value::String(
                regex.replace_all(s, replacement.as_str()).into_owned(),
            )),
            _ => None,
        }),
    }
}

/// `jsonpath_rw_ext`'s `` `sorted` `` and `[/key]`/`[\key]`: a list sorted (by its values, or
/// by each key in turn, `\` descending), or a mapping's keys sorted; `None` where Python
/// cannot order the values.
fn sorted(datum: &Value, keys: &[SortKey], root: &Value) -> Option<Value> {
    use std::cmp::Ordering;
    let mut items: Vec<Value> = match datum {
        Value::Object(map) => map.keys().map(|k| Value::String(k.clone())).collect(),
        other => other.as_array().cloned().unwrap_or_default(),
    };
    let mut unorderable = false;
    if keys.is_empty() {
        items.sort_by(|a, b| {
            python_order(a, b).unwrap_or_else(|| {
                unorderable = true;
                Ordering::Equal
            })
        });
    } else {
        // Keys that find nothing, several values or unorderable ones do not decide, as in
        // jsonpath_rw_ext.
        items.sort_by(|a, b| {
            for key in keys {
                let (l, r) = (values(&key.path, a, root), values(&key.path, b, root));
                let ([l], [r]) = (&l[..], &r[..]) else {
                    continue;
                };
                match python_order(l, r) {
                    Some(Ordering::Equal) | None => continue,
                    Some(o) if key.descending => return o.reverse(),
                    Some(o) => return o,
                }
            }
            Ordering::Equal
        });
    }
    (!unorderable).then_some(Value::Array(items))
}

/// Python's `<` between two JSON values: numbers (and booleans) by value, text by code
/// point, lists element by element; `None` where Python raises `TypeError`.
fn python_order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match python_order(p, q)? {
                    std::cmp::Ordering::Equal => continue,
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

/// `jsonpath_rw_ext`'s arithmetic: paths on both sides combine pairwise (same number of
/// matches, else nothing); a literal side combines with every match of the other; a type error
/// (text + number) gives nothing.
fn arith(left: &Operand, op: ArithOp, right: &Operand, datum: &Value, root: &Value) -> Vec<Value> {
    let side = |o: &Operand| -> Result<Vec<Value>, Value> {
        match o {
            Operand::Path(node) => Ok(values(node, datum, root)
                .into_iter()
                .map(Cow::into_owned)
                .collect()),
            Operand::Value(v) => Err(v.clone()),
        }
    };
    let combined: Option<Vec<Value>> = match (side(left), side(right)) {
        (Ok(l), Ok(r)) => {
            if l.is_empty() || l.len() != r.len() {
                return Vec::new();
            }
            l.iter().zip(&r).map(|(a, b)| apply(a, op, b)).collect()
        }
        (Ok(l), Err(r)) => l.iter().map(|a| apply(a, op, &r)).collect(),
        (Err(l), Ok(r)) => r.iter().map(|b| apply(&l, op, b)).collect(),
        (Err(l), Err(r)) => apply(&l, op, &r).map(|v| vec![v]),
    };
    combined.unwrap_or_default()
}

/// Python's `+ - * /` on two JSON values; `None` where Python raises `TypeError`.
fn apply(a: &Value, op: ArithOp, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::String(x), Value::String(y)) if op == ArithOp::Add => {
            Some(Value::String(format!("{x}{y}")))
        }
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j), true) = (x.as_i64(), y.as_i64(), op != ArithOp::Div) {
                let r = match op {
                    ArithOp::Add => i.checked_add(j),
                    ArithOp::Sub => i.checked_sub(j),
                    _ => i.checked_mul(j),
                };
                if let Some(r) = r {
                    return Some(Value::from(r));
                }
            }
            let (x, y) = (x.as_f64()?, y.as_f64()?);
            let r = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div if y == 0.0 => return None,
                ArithOp::Div => x / y,
            };
            Number::from_f64(r).map(Value::Number)
        }
        _ => None,
    }
}

impl Condition {
    fn holds(&self, item: &Value) -> bool {
        let found = values(&self.target, item, item);
        let Some((op, literal)) = &self.test else {
            return !found.is_empty();
        };
        found.iter().any(|v| compare(v, *op, literal))
    }
}

/// `jsonpath_rw_ext`'s filter comparison: against an integer the value is converted with
/// Python's `int()` first (values it cannot convert never match).
fn compare(value: &Value, op: Comparison, literal: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match literal {
        Literal::Int(want) => {
            let have = match value {
                Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                Value::Bool(b) => Some(i64::from(*b)),
                _ => None,
            };
            let Some(have) = have else {
                return false;
            };
            Some(have.cmp(want))
        }
        Literal::Float(want) => match value {
            Value::Number(n) => n.as_f64().and_then(|h| h.partial_cmp(want)),
            _ => None,
        },
        Literal::Text(want) => match value {
            Value::String(s) => Some(s.as_str().cmp(want.as_str())),
            _ => None,
        },
    };
    op.holds(ordering)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Dollar,
    At,
    Dot,
    DotDot,
    Open,
    Close,
    LBracket,
    RBracket,
    Pipe,
    Amp,
    Plus,
    Minus,
    Star,
    Slash,
    Backslash,
    Question,
    Colon,
    Comma,
    Cmp(Comparison),
    /// A bare or quoted name (`jsonpath_rw` lexes quoted strings as IDs too).
    Id(String, bool),
    Int(i64),
    Float(f64),
    Named(String),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Id(s, _) => write!(f, "{s:?}"),
            Token::Int(i) => write!(f, "{i}"),
            Token::Float(x) => write!(f, "{x}"),
            Token::Named(n) => write!(f, "`{n}`"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        i += 1;
        let token = match c {
            ' ' | '\t' | '\n' | '\r' => continue,
            '$' => Token::Dollar,
            '.' if next == Some('.') => {
                i += 1;
                Token::DotDot
            }
            '.' => Token::Dot,
            '(' => Token::Open,
            ')' => Token::Close,
            '[' => Token::LBracket,
            ']' => Token::RBracket,
            '|' => Token::Pipe,
            '&' => Token::Amp,
            '+' => Token::Plus,
            '*' => Token::Star,
            '/' => Token::Slash,
            '\\' => Token::Backslash,
            '?' => Token::Question,
            ':' => Token::Colon,
            ',' => Token::Comma,
            '=' | '!' | '<' | '>' => {
                let two = next == Some('=');
                if two {
                    i += 1;
                }
                Token::Cmp(match (c, two) {
                    ('=', _) => Comparison::Eq,
                    ('!', true) => Comparison::Ne,
                    ('<', false) => Comparison::Lt,
                    ('<', true) => Comparison::Le,
                    ('>', false) => Comparison::Gt,
                    ('>', true) => Comparison::Ge,
                    _ => return Err(format!("'!' at {} must be followed by '='", i - 1)),
                })
            }
            '\'' | '"' => {
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string starting at {}", i)),
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some('\\') if i + 1 < chars.len() => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                Token::Id(s, true)
            }
            '`' => {
                let start = i;
                while i < chars.len() && chars[i] != '`' {
                    i += 1;
                }
                if i == chars.len() {
                    return Err(format!("unterminated `operator` starting at {}", start - 1));
                }
                let name: String = chars[start..i].iter().collect();
                i += 1;
                Token::Named(name)
            }
            '-' | '0'..='9' if c != '-' || next.is_some_and(|n| n.is_ascii_digit()) => {
                let start = i - 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    i += 1;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                    let s: String = chars[start..i].iter().collect();
                    Token::Float(s.parse().map_err(|_| format!("bad number {s}"))?)
                } else {
                    let s: String = chars[start..i].iter().collect();
                    Token::Int(s.parse().map_err(|_| format!("bad number {s}"))?)
                }
            }
            '-' => Token::Minus,
            '@' if !next.is_some_and(|n| n.is_alphabetic() || n == '_') => Token::At,
            c if c.is_alphabetic() || c == '_' || c == '@' => {
                let start = i - 1;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '@' | '-'))
                {
                    i += 1;
                }
                Token::Id(chars[start..i].iter().collect(), false)
            }
            other => return Err(format!("unexpected character {other:?} at {}", i - 1)),
        };
        out.push(token);
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// How many unions (parentheses, filters) deep the descent is.
    depth: u32,
}

/// The deepest nesting of parentheses and filters taken (as for expressions: half Python's
/// 200, so the descent fits a 2 MiB thread stack even in a debug build).
pub const MAX_DEPTH: u32 = 100;

/// The most tokens a path may have (which bounds its tree, and the stack finding needs: a
/// chain of 500 steps overflows a 2 MiB thread stack in a debug build; meter definitions'
/// paths have a few dozen).
pub const MAX_TOKENS: usize = 256;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, want: &Token) -> bool {
        if self.peek() == Some(want) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!("expected {want} but found {t}")),
            None => Err(format!("expected {want} but the expression ended")),
        }
    }

    fn union(&mut self) -> Result<Node, String> {
        if self.depth >= MAX_DEPTH {
            return Err(format!("the path nests more than {MAX_DEPTH} levels deep"));
        }
        self.depth += 1;
        let node = self.union_inner();
        self.depth -= 1;
        node
    }

    fn union_inner(&mut self) -> Result<Node, String> {
        let mut node = self.arith()?;
        while self.eat(&Token::Pipe) {
            let right = self.arith()?;
            node = Node::Union(Box::new(node), Box::new(right));
        }
        Ok(node)
    }

    fn arith(&mut self) -> Result<Node, String> {
        let mut node = self.term()?;
        loop {
            let op = match self.peek() {
                Some(Token::Plus) => ArithOp::Add,
                Some(Token::Minus) => ArithOp::Sub,
                _ => return Ok(node),
            };
            self.at += 1;
            let right = self.term()?;
            node = Node::Arith(Box::new(operand(node)), op, Box::new(operand(right)));
        }
    }

    fn term(&mut self) -> Result<Node, String> {
        let mut node = self.chain()?;
        loop {
            let op = match self.peek() {
                Some(Token::Star) => ArithOp::Mul,
                Some(Token::Slash) => ArithOp::Div,
                _ => return Ok(node),
            };
            self.at += 1;
            let right = self.chain()?;
            node = Node::Arith(Box::new(operand(node)), op, Box::new(operand(right)));
        }
    }

    /// An atom followed by `.step`, `..step` and `[...]`.
    fn chain(&mut self) -> Result<Node, String> {
        let mut node = self.atom()?;
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.at += 1;
                    let step = self.step()?;
                    node = Node::Child(Box::new(node), Box::new(step));
                }
                Some(Token::DotDot) => {
                    self.at += 1;
                    let step = self.step()?;
                    node = Node::Descendants(Box::new(node), Box::new(step));
                }
                Some(Token::LBracket) => {
                    self.at += 1;
                    let step = self.bracket()?;
                    node = Node::Child(Box::new(node), Box::new(step));
                }
                // `where` binds tighter than `.` in jsonpath_rw: `a where b.c` is
                // `(a where b).c`.
                Some(Token::Id(word, false)) if word == "where" => {
                    self.at += 1;
                    let mut right = self.atom()?;
                    while self.eat(&Token::LBracket) {
                        right = Node::Child(Box::new(right), Box::new(self.bracket()?));
                    }
                    node = Node::Where(Box::new(node), Box::new(right));
                }
                _ => return Ok(node),
            }
        }
    }

    /// After `[`: sort keys, each `/PATH` (ascending) or `\PATH` (descending), commas optional.
    fn sort_keys(&mut self) -> Result<Vec<SortKey>, String> {
        let mut keys = Vec::new();
        loop {
            let descending = match self.peek() {
                Some(Token::Slash) => false,
                Some(Token::Backslash) => true,
                _ if !keys.is_empty() => return Ok(keys),
                _ => return Err("expected '/' or '\\' before a sort key".into()),
            };
            self.at += 1;
            keys.push(SortKey {
                path: self.chain()?,
                descending,
            });
            self.eat(&Token::Comma);
        }
    }

    fn step(&mut self) -> Result<Node, String> {
        match self.peek() {
            Some(Token::Star) => {
                self.at += 1;
                Ok(Node::Fields(vec!["*".into()]))
            }
            Some(Token::LBracket) => {
                self.at += 1;
                self.bracket()
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.union()?;
                self.expect(Token::Close)?;
                Ok(inner)
            }
            Some(Token::Named(_)) | Some(Token::Id(..)) | Some(Token::At) => self.atom(),
            Some(t) => Err(format!("expected a field name after '.', found {t}")),
            None => Err("the expression ends after '.'".into()),
        }
    }

    /// After `[`: an index, a slice, `*`, a filter or quoted field names; consumes `]`.
    fn bracket(&mut self) -> Result<Node, String> {
        let node = match self.peek().cloned() {
            Some(Token::Star) => {
                self.at += 1;
                Node::Slice(None, None)
            }
            Some(Token::Question) => {
                self.at += 1;
                Node::Filter(self.conditions()?)
            }
            Some(Token::Int(_)) | Some(Token::Colon) => {
                let start = match self.peek() {
                    Some(Token::Int(i)) => {
                        let i = *i;
                        self.at += 1;
                        Some(i)
                    }
                    _ => None,
                };
                if self.eat(&Token::Colon) {
                    let end = match self.peek() {
                        Some(Token::Int(i)) => {
                            let i = *i;
                            self.at += 1;
                            Some(i)
                        }
                        _ => None,
                    };
                    Node::Slice(start, end)
                } else {
                    match start {
                        Some(i) if i >= 0 => Node::Index(i as usize),
                        _ => return Err("negative indexes are not supported".into()),
                    }
                }
            }
            Some(Token::Id(..)) => self.fields()?,
            Some(Token::Slash | Token::Backslash) => Node::Sorted(self.sort_keys()?),
            Some(t) => return Err(format!("unexpected {t} after '['")),
            None => return Err("the expression ends after '['".into()),
        };
        self.expect(Token::RBracket)?;
        Ok(node)
    }

    fn fields(&mut self) -> Result<Node, String> {
        let mut names = Vec::new();
        loop {
            match self.next() {
                Some(Token::Id(name, _)) => names.push(name),
                Some(Token::Star) => names.push("*".into()),
                Some(t) => return Err(format!("expected a field name, found {t}")),
                None => return Err("expected a field name, the expression ended".into()),
            }
            if !self.eat(&Token::Comma) {
                return Ok(Node::Fields(names));
            }
        }
    }

    fn conditions(&mut self) -> Result<Vec<Condition>, String> {
        let mut out = Vec::new();
        loop {
            if self.eat(&Token::Open) {
                out.extend(self.conditions()?);
                self.expect(Token::Close)?;
            } else {
                let target = self.chain()?;
                let test = match self.peek() {
                    Some(Token::Cmp(op)) => {
                        let op = *op;
                        self.at += 1;
                        let literal = match self.next() {
                            Some(Token::Id(s, _)) => Literal::Text(s),
                            Some(Token::Int(i)) => Literal::Int(i),
                            Some(Token::Float(f)) => Literal::Float(f),
                            Some(t) => {
                                return Err(format!("expected a value to compare with, found {t}"))
                            }
                            None => {
                                return Err(
                                    "expected a value to compare with, the expression ended".into(),
                                )
                            }
                        };
                        Some((op, literal))
                    }
                    _ => None,
                };
                out.push(Condition { target, test });
            }
            if !self.eat(&Token::Amp) {
                return Ok(out);
            }
        }
    }

    fn atom(&mut self) -> Result<Node, String> {
        match self.next() {
            Some(Token::Dollar) => Ok(Node::Root),
            Some(Token::At) => Ok(Node::This),
            Some(Token::Star) => Ok(Node::Fields(vec!["*".into()])),
            Some(Token::Id(name, _)) => {
                let mut names = vec![name];
                // `a,b` names fields; in sort keys, `, /c` starts the next key.
                while self.peek() == Some(&Token::Comma)
                    && !matches!(
                        self.tokens.get(self.at + 1),
                        Some(Token::Slash | Token::Backslash)
                    )
                {
                    self.at += 1;
                    match self.next() {
                        Some(Token::Id(n, _)) => names.push(n),
                        _ => return Err("expected a field name after ','".into()),
                    }
                }
                Ok(Node::Fields(names))
            }
            Some(Token::Int(i)) => Ok(Node::Literal(Value::from(i))),
            Some(Token::Float(f)) => Number::from_f64(f)
                .map(|n| Node::Literal(Value::Number(n)))
                .ok_or_else(|| "bad number".to_owned()),
            Some(Token::Open) => {
                let inner = self.union()?;
                self.expect(Token::Close)?;
                Ok(inner)
            }
            Some(Token::Named(name)) => named(&name),
            Some(t) => Err(format!("unexpected {t}")),
            None => Err("the expression is empty".into()),
        }
    }
}

/// An arithmetic operand: a lone field name is text (`"_"`), a number literal a number.
fn operand(node: Node) -> Operand {
    match node {
        Node::Fields(mut f) if f.len() == 1 && f[0] != "*" => {
            Operand::Value(Value::String(f.remove(0)))
        }
        Node::Literal(v) => Operand::Value(v),
        other => Operand::Path(other),
    }
}

fn named(name: &str) -> Result<Node, String> {
    let args = |prefix: &str| -> Option<&str> {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(')'))
    };
    if name == "this" {
        Ok(Node::This)
    } else if name == "len" {
        Ok(Node::Len)
    } else if name == "sorted" {
        Ok(Node::Sorted(Vec::new()))
    } else if let Some(inner) = args("split(") {
        let parts: Vec<&str> = inner.rsplitn(3, ',').collect();
        let [max, segment, separator] = parts[..] else {
            return Err(format!(
                "`{name}`: split takes (SEPARATOR, SEGMENT, MAXSPLIT)"
            ));
        };
        let segment = segment
            .trim()
            .parse()
            .map_err(|_| format!("`{name}`: SEGMENT must be a whole number"))?;
        let max_split = match max.trim() {
            "-1" => None,
            m => Some(
                m.parse()
                    .map_err(|_| format!("`{name}`: MAXSPLIT must be a whole number or -1"))?,
            ),
        };
        Ok(Node::Split {
            separator: separator.to_owned(),
            segment,
            max_split,
        })
    } else if let Some(inner) = args("sub(/") {
        let Some((pattern, replacement)) = inner.rsplit_once("/,") else {
            return Err(format!("`{name}`: sub takes (/REGEX/, REPLACEMENT)"));
        };
        let regex = regex::Regex::new(pattern).map_err(|e| format!("`{name}`: {e}"))?;
        Ok(Node::Sub {
            regex,
            replacement: replacement.trim().replace("\\", "$"),
        })
    } else {
        Err(format!(
            "unknown operator `{name}` (known: `this`, `len`, `sorted`, `split(SEP, SEGMENT, MAXSPLIT)`, `sub(/REGEX/, REPLACEMENT)`)"
        ))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn nesting_and_length_are_bounded() {
        let deep = |n: usize| format!("{}$.a{}", "(".repeat(n), ")".repeat(n));
        assert!(Path::parse(&deep(90)).is_ok());
        let e = Path::parse(&deep(10_000)).unwrap_err().to_string();
        assert!(e.contains("levels deep") || e.contains("tokens"), "{e}");
        let e = Path::parse(&deep(110)).unwrap_err().to_string();
        assert!(e.contains("levels deep"), "{e}");
        let long = format!("$.{}", vec!["a"; 200].join("."));
        let e = Path::parse(&long).unwrap_err().to_string();
        assert!(e.contains("tokens"), "{e}");
    }
    use super::*;
    use serde_json::json;

    fn find(path: &str, doc: &Value) -> Vec<Value> {
        Path::parse(path).unwrap().find(doc)
    }

    #[test]
    fn plain_paths_indexes_and_wildcards() {
        let doc = json!({"payload": {"size": 5, "volume_attachment": [{"server_id": "s1"}, {"server_id": "s2"}],
            "metrics": [{"name": "a", "unit": "B"}, {"name": "b", "unit": "s"}]}, "ctxt": {"user": "u"}});
        assert_eq!(find("$.payload.size", &doc), vec![json!(5)]);
        assert_eq!(find("payload.size", &doc), vec![json!(5)]);
        assert_eq!(
            find("$.payload.volume_attachment[0].server_id", &doc),
            vec![json!("s1")]
        );
        assert_eq!(
            find("$.payload.metrics.[*].name", &doc),
            vec![json!("a"), json!("b")]
        );
        assert_eq!(
            find("$.payload.metrics[*].unit", &doc),
            vec![json!("B"), json!("s")]
        );
        assert_eq!(find("$.payload.missing", &doc), Vec::<Value>::new());
        assert_eq!(find("$..server_id", &doc), vec![json!("s1"), json!("s2")]);
        assert_eq!(find("ctxt.user_id|ctxt.user", &doc), vec![json!("u")]);
        assert_eq!(
            find("(ctxt.user)|(payload.size)", &doc),
            vec![json!("u"), json!(5)]
        );
        assert_eq!(find("$.payload.'size'", &doc), vec![json!(5)]);
    }

    #[test]
    fn filters_compare_as_jsonpath_rw_ext_does() {
        let doc = json!({"g": [{"key": "image_id", "value": "i-1"}, {"key": "other", "value": "x"}],
            "m": [{"name": "cpu.frequency", "value": 1600, "n": "3"}, {"name": "cpu.percent", "value": 0.5}]});
        assert_eq!(find("$.g[?key=image_id].value", &doc), vec![json!("i-1")]);
        assert_eq!(
            find("$.m[?(@.name='cpu.frequency')].value", &doc),
            vec![json!(1600)]
        );
        assert_eq!(
            find("$.m[?(@.name=='cpu.percent')].value", &doc),
            vec![json!(0.5)]
        );
        assert_eq!(
            find("$.m[?(@.value>1000)].name", &doc),
            vec![json!("cpu.frequency")]
        );
        assert_eq!(
            find("$.m[?(@.n=3 & @.value>1)].name", &doc),
            vec![json!("cpu.frequency")]
        );
        assert_eq!(
            find("$.m[?(@.name!='cpu.percent')].value", &doc),
            vec![json!(1600)]
        );
    }

    #[test]
    fn arithmetic_and_named_operators() {
        let doc = json!({"payload": {"host": "h1", "nodename": "n1", "v": 0.25, "i": 3,
            "name_to_id": "host@backend#pool", "outcome": "success"}});
        assert_eq!(
            find("$.payload.host + \"_\" + $.payload.nodename", &doc),
            vec![json!("h1_n1")]
        );
        assert_eq!(find("$.payload.v * 100", &doc), vec![json!(25.0)]);
        assert_eq!(find("$.payload.i * 100", &doc), vec![json!(300)]);
        assert_eq!(find("$.payload.i / 2", &doc), vec![json!(1.5)]);
        assert_eq!(find("$.payload.host + 1", &doc), Vec::<Value>::new());
        assert_eq!(
            find("$.payload.name_to_id.`split(#, 0, 1)`", &doc),
            vec![json!("host@backend")]
        );
        assert_eq!(
            find("$.payload.name_to_id.`split(@, 1, -1)`", &doc),
            vec![json!("backend#pool")]
        );
        assert_eq!(
            find(
                "$.payload.outcome.`sub(/.*/, )` + 'identity.authenticate.' + $.payload.outcome",
                &doc
            ),
            vec![json!("identity.authenticate.success")]
        );
        assert_eq!(find("$.payload.`len`", &doc), vec![json!(6)]);
    }

    #[test]
    fn where_and_sorting() {
        let doc = json!({"payload": {"ports": [
            {"id": "p2", "ip": {"v4": "10.0.0.2"}, "n": 2},
            {"id": "p1", "n": 10},
            {"id": "p3", "ip": {"v6": "fe80::3"}, "n": 2}],
            "tags": {"b": 1, "a": 2}, "ints": [3, 1, 2], "mixed": [1, "x"]}});
        assert_eq!(
            find("$.payload.ports[*] where ip", &doc).len(),
            2,
            "the ports that have an ip"
        );
        assert_eq!(
            find("($.payload.ports[*] where ip).id", &doc),
            vec![json!("p2"), json!("p3")]
        );
        // `where` binds tighter than `.`, as in jsonpath_rw.
        assert_eq!(
            find("$.payload.ports[*] where ip.id", &doc),
            vec![json!("p2"), json!("p3")]
        );
        // ... so this is `(ports where ip).v6`, and a port has no `v6`.
        assert_eq!(find("$.payload.ports[*] where ip.v6", &doc).len(), 0);
        assert_eq!(
            find("$.payload.ports[*] where (ip.v6)", &doc),
            vec![doc["payload"]["ports"][2].clone()]
        );
        assert_eq!(
            find("$.payload.ints.`sorted`", &doc),
            vec![json!([1, 2, 3])]
        );
        assert_eq!(
            find("$.payload.tags.`sorted`", &doc),
            vec![json!(["a", "b"])]
        );
        assert_eq!(
            find("$.payload.ports[\\n, /id][*].id", &doc),
            vec![json!("p1"), json!("p2"), json!("p3")]
        );
        assert_eq!(
            find("$.payload.ports[/n][*].id", &doc),
            vec![json!("p2"), json!("p3"), json!("p1")],
            "a stable sort"
        );
        // Python cannot order 1 and "x": nothing is found.
        assert_eq!(find("$.payload.mixed.`sorted`", &doc), Vec::<Value>::new());
        assert_eq!(find("$.payload.ints[0].`sorted`", &doc), vec![json!(3)]);
    }

    #[test]
    fn matches_know_their_places() {
        let doc = json!({"payload": {"thing": {"bar": 12, "boing": 13}, "a": [{"b": 1}, {"b": 2}],
            "m": [{"name": "x", "v": 1}, {"name": "y", "v": 2}]}});
        let located = |p: &str| Path::parse(p).unwrap().find_located(&doc);
        assert_eq!(
            located("payload.thing.*"),
            vec![
                ("payload.thing.bar".into(), json!(12)),
                ("payload.thing.boing".into(), json!(13))
            ]
        );
        assert_eq!(
            located("$.payload.a[*].b"),
            vec![
                ("payload.a.[0].b".into(), json!(1)),
                ("payload.a.[1].b".into(), json!(2))
            ]
        );
        assert_eq!(
            located("$.payload.m[?(@.name='y')].v"),
            vec![("payload.m.[1].v".into(), json!(2))]
        );
        assert_eq!(
            located("$..b"),
            vec![
                ("payload.a.[0].b".into(), json!(1)),
                ("payload.a.[1].b".into(), json!(2))
            ]
        );
        assert_eq!(
            located("$.payload.thing.bar * 2"),
            vec![(String::new(), json!(24))]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for bad in [
            "$.payload.",
            "$.a[",
            "$.a[?x=]",
            "`nope`",
            "$.a !",
            "'open",
            "$.a[/]",
            "$.a where",
        ] {
            let e = Path::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(Path::parse("memory").unwrap().is_single_field());
        assert!(!Path::parse("$.memory").unwrap().is_single_field());
    }
}
