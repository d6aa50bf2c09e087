//! The Python-expression subset Ceilometer evaluates in `scale` and `arithmetic` expressions,
//! parsed once and evaluated safely (no `eval`).
//!
//! Supported: int and float literals (`10**9`, `1e-3`), strings, `True`/`False`/`None`,
//! `+ - * / // % **`, unary `+ - not`, comparisons (`< <= > >= == !=`), `and` / `or` (returning
//! an operand, as Python does), `x if c else y`, parentheses, the calls `abs min max round int
//! float`, names with attribute paths (`volume`, `resource_metadata.flavor.ram`) and, for the
//! arithmetic transformer, meter references `$(memory.usage)` optionally followed by an
//! attribute path (`$(memory).resource_metadata.x`). Ints stay ints, `/` gives a float, errors
//! (division by zero, wrong operand types) are values the caller turns into dropped samples.

use std::borrow::Cow;
use std::fmt;

use meterflow_engine::json::Lookup;
use meterflow_engine::model::{Sample, Volume};

/// A value during evaluation, with Python's semantics.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(Cow<'a, str>),
    /// A namespace (a dict, or Ceilometer's empty namespace for a missing attribute).
    Namespace {
        /// Whether it is empty (and so false-y).
        empty: bool,
    },
}

impl Value<'_> {
    fn truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Namespace { empty } => !empty,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Namespace { .. } => "namespace (missing or dict attribute)",
        }
    }

    fn number(&self) -> Option<Num> {
        match self {
            Value::Bool(b) => Some(Num::I(i64::from(*b))),
            Value::Int(i) => Some(Num::I(*i)),
            Value::Float(f) => Some(Num::F(*f)),
            _ => None,
        }
    }

    /// The value as a sample volume; an error for non-numbers.
    pub fn to_volume(&self) -> Result<Volume, EvalError> {
        match self.number() {
            Some(Num::I(i)) => Ok(Volume::Int(i)),
            Some(Num::F(f)) => Ok(Volume::Float(f)),
            None => Err(EvalError(format!(
                "the expression gave a {}, not a number",
                self.type_name()
            ))),
        }
    }

    fn into_owned(self) -> Value<'static> {
        match self {
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Float(f),
            Value::Namespace { empty } => Value::Namespace { empty },
        }
    }
}

impl<'a> From<Lookup<'a>> for Value<'a> {
    fn from(l: Lookup<'a>) -> Self {
        match l {
            Lookup::Missing => Value::Namespace { empty: true },
            Lookup::Null => Value::None,
            Lookup::Bool(b) => Value::Bool(b),
            Lookup::Int(i) => Value::Int(i),
            Lookup::Float(f) => Value::Float(f),
            Lookup::Str(s) => Value::Str(s),
            Lookup::Object { empty } => Value::Namespace { empty },
            Lookup::Array { empty } => Value::Namespace { empty },
        }
    }
}

#[derive(Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }
}

/// An evaluation failure (Python would raise); the sample it was for is dropped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// A syntax error, with the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid expression {text:?} at offset {offset}: {message}")]
pub struct ParseError {
    /// The expression text.
    pub text: String,
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// What names and meter references resolve to during evaluation.
pub trait Scope {
    /// The value of a name with its attribute path (`["resource_metadata", "cpu_number"]`).
    fn name<'s>(&'s self, path: &[String]) -> Result<Value<'s>, EvalError>;
    /// The value of meter reference `meter` (an index into [`Expr::meters`]) with its path
    /// (empty path: the volume).
    fn meter<'s>(&'s self, meter: usize, path: &[String]) -> Result<Value<'s>, EvalError> {
        let _ = (meter, path);
        Err(EvalError(
            "meter references are only allowed in arithmetic".into(),
        ))
    }
}

/// A sample as a scope: its fields by Ceilometer's `as_dict()` names.
impl Scope for Sample {
    fn name<'s>(&'s self, path: &[String]) -> Result<Value<'s>, EvalError> {
        sample_attribute(self, path)
    }
}

/// Resolves `path` against a sample (`volume`, `name`, `resource_metadata.x.y`, ...).
pub fn sample_attribute<'s>(s: &'s Sample, path: &[String]) -> Result<Value<'s>, EvalError> {
    let (first, rest) = path
        .split_first()
        .ok_or_else(|| EvalError("empty name".into()))?;
    let text = |t: &'s str| Value::Str(Cow::Borrowed(t));
    let value = match first.as_str() {
        "resource_metadata" => return Ok(s.resource_metadata.lookup(rest).into()),
        "volume" => match s.volume {
            Volume::Int(i) => Value::Int(i),
            Volume::Float(f) => Value::Float(f),
        },
        "name" => text(s.name.as_str()),
        "unit" => text(s.unit.as_str()),
        "type" => text(s.kind.as_str()),
        "resource_id" => text(s.resource_id.as_str()),
        "user_id" => s.user_id.map_or(Value::None, |u| text(u.as_str())),
        "project_id" => s.project_id.map_or(Value::None, |p| text(p.as_str())),
        "timestamp" => text(s.timestamp.as_str()),
        "source" => text(s.source.as_str()),
        "id" | "message_id" => s
            .message_id
            .as_ref()
            .map_or(Value::None, |m| text(m.as_str())),
        "monotonic_time" => s.monotonic_time.map_or(Value::None, Value::Float),
        _ => Value::Namespace { empty: true },
    };
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(EvalError(format!(
            "{} has no attribute {:?}",
            first, rest[0]
        )))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(Value<'static>),
    Name(Vec<String>),
    Meter(usize, Vec<String>),
    Neg(Box<Node>),
    Pos(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Func {
    Abs,
    Min,
    Max,
    Round,
    Int,
    Float,
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    text: String,
    root: Node,
    meters: Vec<String>,
    uses_names: bool,
    only_metadata: bool,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Expr {
    /// Parses `text`; `$(meter)` references are accepted only when `allow_meters` is set.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::expr::Expr;
    /// use meterflow_engine::Sample;
    /// let e = Expr::parse("100.0 / (10**9 * (resource_metadata.cpu_number or 1))", false).unwrap();
    /// let s = Sample::gauge("cpu", "vm-1", 1.0, "2021-07-30T00:00:00").with_metadata(r#"{"cpu_number": 2}"#);
    /// assert_eq!(e.eval(&s).unwrap().to_volume().unwrap().as_f64(), 5e-8);
    /// let no_cpus = Sample::gauge("cpu", "vm-1", 1.0, "2021-07-30T00:00:00");
    /// assert_eq!(e.eval(&no_cpus).unwrap().to_volume().unwrap().as_f64(), 1e-7);
    /// ```
    pub fn parse(text: &str, allow_meters: bool) -> Result<Expr, ParseError> {
        let tokens = lex(text, allow_meters)?;
        let mut p = Parser {
            text,
            tokens,
            pos: 0,
            meters: Vec::new(),
            uses_names: false,
            only_metadata: true,
            depth: 0,
        };
        if p.tokens.len() > MAX_TOKENS {
            return Err(p.error(&format!(
                "the expression has {} tokens, more than the {MAX_TOKENS} taken; a transformer's expression is a formula, not a program",
                p.tokens.len()
            )));
        }
        let root = p.ternary()?;
        if p.pos < p.tokens.len() {
            return Err(p.error("unexpected text after the expression"));
        }
        let root = fold(root);
        Ok(Expr {
            text: text.to_owned(),
            root,
            meters: p.meters,
            uses_names: p.uses_names,
            only_metadata: p.only_metadata,
        })
    }

    /// The meters referenced with `$(...)`, in order of first mention.
    pub fn meters(&self) -> &[String] {
        &self.meters
    }

    /// Whether the expression reads nothing but `resource_metadata.*` (so its value for a
    /// sample depends only on the sample's metadata, and can be reused while that is unchanged).
    pub fn reads_only_metadata(&self) -> bool {
        self.meters.is_empty() && self.only_metadata
    }

    /// Whether the expression reads names or meters (if not, it is a constant).
    pub fn is_constant(&self) -> bool {
        !self.uses_names && self.meters.is_empty()
    }

    /// Evaluates against `scope`.
    pub fn eval<'s>(&self, scope: &'s dyn Scope) -> Result<Value<'s>, EvalError> {
        eval(&self.root, scope)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(Value<'static>),
    Str(String),
    Ident(String),
    Meter(String),
    Op(&'static str),
}

fn lex(text: &str, allow_meters: bool) -> Result<Vec<(usize, Tok)>, ParseError> {
    let b = text.as_bytes();
    let err = |offset: usize, message: &str| ParseError {
        text: text.to_owned(),
        offset,
        message: message.to_owned(),
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
            let mut float = false;
            if i < b.len() && b[i] == b'.' {
                float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    float = true;
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let lit = text[start..i].replace('_', "");
            let value = if float {
                Value::Float(lit.parse().map_err(|_| err(start, "bad number"))?)
            } else {
                match lit.parse::<i64>() {
                    Ok(v) => Value::Int(v),
                    Err(_) => Value::Float(lit.parse().map_err(|_| err(start, "bad number"))?),
                }
            };
            out.push((start, Tok::Num(value)));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(text[start..i].to_owned())));
            continue;
        }
        if c == b'\'' || c == b'"' {
            i += 1;
            let mut s = String::new();
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch = text[i..].chars().next().unwrap_or('\0');
                s.push(ch);
                i += ch.len_utf8();
            }
            if i >= b.len() {
                return Err(err(start, "unterminated string"));
            }
            i += 1;
            out.push((start, Tok::Str(s)));
            continue;
        }
        if c == b'$' {
            if !allow_meters {
                return Err(err(
                    start,
                    "$(meter) references are only allowed in the arithmetic transformer's expr",
                ));
            }
            if b.get(i + 1) != Some(&b'(') {
                return Err(err(start, "expected $(meter.name)"));
            }
            i += 2;
            let name_start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-' | b':'))
            {
                i += 1;
            }
            if i >= b.len() || b[i] != b')' || i == name_start {
                return Err(err(
                    start,
                    "expected $(meter.name) with a name of letters, digits, '_', '.', '-'",
                ));
            }
            out.push((start, Tok::Meter(text[name_start..i].to_owned())));
            i += 1;
            continue;
        }
        const OPS: [&str; 19] = [
            "**", "//", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "(", ")", ".", ",", "<",
            ">", "[", "]",
        ];
        match OPS.iter().find(|op| text[i..].starts_with(**op)) {
            Some(op) if *op != "[" && *op != "]" => {
                i += op.len();
                out.push((start, Tok::Op(op)));
            }
            _ => return Err(err(start, "unexpected character")),
        }
    }
    Ok(out)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    meters: Vec<String>,
    uses_names: bool,
    only_metadata: bool,
    /// How deep the recursive descent is (see [`MAX_DEPTH`]).
    depth: u32,
}

/// The deepest nesting taken (parentheses, calls, `not`, unary signs, `if ... else`
/// chains). Python's parser stops at 200 nested parentheses; each level here is about ten
/// frames of the descent, and 200 of them overflow a 2 MiB thread stack in a debug build,
/// so the limit is half that (a real expression nests a few levels).
pub const MAX_DEPTH: u32 = 100;

/// The most tokens an expression may have (which bounds the depth of its tree, and so the
/// stack its evaluation needs; a transformer's formula has a few dozen).
pub const MAX_TOKENS: usize = 500;

impl Parser<'_> {
    fn error(&self, message: &str) -> ParseError {
        ParseError {
            text: self.text.to_owned(),
            offset: self.tokens.get(self.pos).map_or(self.text.len(), |t| t.0),
            message: message.to_owned(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.1)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Runs `f` one level deeper, refusing to go past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Node, ParseError>,
    ) -> Result<Node, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(&format!(
                "the expression nests more than {MAX_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let node = f(self);
        self.depth -= 1;
        node
    }

    fn ternary(&mut self) -> Result<Node, ParseError> {
        self.nested(Self::ternary_inner)
    }

    fn ternary_inner(&mut self) -> Result<Node, ParseError> {
        let body = self.or()?;
        if self.eat_word("if") {
            let cond = self.or()?;
            if !self.eat_word("else") {
                return Err(self.error("expected 'else'"));
            }
            let other = self.ternary()?;
            return Ok(Node::If(Box::new(cond), Box::new(body), Box::new(other)));
        }
        Ok(body)
    }

    fn or(&mut self) -> Result<Node, ParseError> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            left = Node::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        if self.eat_word("not") {
            return Ok(Node::Not(Box::new(self.nested(Self::not)?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, ParseError> {
        let left = self.sum()?;
        let op = match self.peek() {
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.sum()?;
        Ok(Node::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> Result<Node, ParseError> {
        let mut left = self.product()?;
        loop {
            let op = if self.eat_op("+") {
                BinOp::Add
            } else if self.eat_op("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            left = Node::Bin(op, Box::new(left), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_op("*") {
                BinOp::Mul
            } else if self.eat_op("/") {
                BinOp::Div
            } else if self.eat_op("//") {
                BinOp::FloorDiv
            } else if self.eat_op("%") {
                BinOp::Mod
            } else {
                return Ok(left);
            };
            left = Node::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.eat_op("-") {
            return Ok(Node::Neg(Box::new(self.nested(Self::unary)?)));
        }
        if self.eat_op("+") {
            return Ok(Node::Pos(Box::new(self.nested(Self::unary)?)));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Node, ParseError> {
        let base = self.primary()?;
        if self.eat_op("**") {
            let exp = self.nested(Self::unary)?;
            return Ok(Node::Bin(BinOp::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn attributes(&mut self) -> Result<Vec<String>, ParseError> {
        let mut path = Vec::new();
        while self.eat_op(".") {
            match self.peek().cloned() {
                Some(Tok::Ident(name)) => {
                    self.pos += 1;
                    path.push(name);
                }
                _ => return Err(self.error("expected an attribute name after '.'")),
            }
        }
        Ok(path)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("unexpected end of expression"));
        };
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(Node::Lit(v)),
            Tok::Str(s) => Ok(Node::Lit(Value::Str(Cow::Owned(s)))),
            Tok::Meter(name) => {
                let idx = match self.meters.iter().position(|m| *m == name) {
                    Some(i) => i,
                    None => {
                        self.meters.push(name);
                        self.meters.len() - 1
                    }
                };
                let path = self.attributes()?;
                Ok(Node::Meter(idx, path))
            }
            Tok::Op("(") => {
                let inner = self.ternary()?;
                if !self.eat_op(")") {
                    return Err(self.error("expected ')'"));
                }
                Ok(inner)
            }
            Tok::Ident(word) => match word.as_str() {
                "True" => Ok(Node::Lit(Value::Bool(true))),
                "False" => Ok(Node::Lit(Value::Bool(false))),
                "None" => Ok(Node::Lit(Value::None)),
                "and" | "or" | "not" | "if" | "else" | "lambda" | "import" => {
                    self.pos -= 1;
                    Err(self.error("unexpected keyword"))
                }
                _ if self.eat_op("(") => {
                    let func = match word.as_str() {
                        "abs" => Func::Abs,
                        "min" => Func::Min,
                        "max" => Func::Max,
                        "round" => Func::Round,
                        "int" => Func::Int,
                        "float" => Func::Float,
                        _ => {
                            self.pos -= 2;
                            return Err(self.error(
                                "unknown function; known: abs, min, max, round, int, float",
                            ));
                        }
                    };
                    let mut args = Vec::new();
                    if !self.eat_op(")") {
                        loop {
                            args.push(self.ternary()?);
                            if self.eat_op(")") {
                                break;
                            }
                            if !self.eat_op(",") {
                                return Err(self.error("expected ',' or ')'"));
                            }
                        }
                    }
                    Ok(Node::Call(func, args))
                }
                _ => {
                    let mut path = vec![word];
                    path.extend(self.attributes()?);
                    self.uses_names = true;
                    self.only_metadata &= path[0] == "resource_metadata";
                    Ok(Node::Name(path))
                }
            },
            Tok::Op(_) => {
                self.pos -= 1;
                Err(self.error("expected a number, a name or '('"))
            }
        }
    }
}

/// Replaces every subtree that reads no name or meter by its value (`10**9` is computed once),
/// leaving subtrees whose evaluation fails as they are, so the failure still happens per sample.
fn fold(node: Node) -> Node {
    struct NoNames;
    impl Scope for NoNames {
        fn name<'s>(&'s self, _: &[String]) -> Result<Value<'s>, EvalError> {
            Err(EvalError("not constant".into()))
        }
    }
    let node = match node {
        Node::Neg(x) => Node::Neg(Box::new(fold(*x))),
        Node::Pos(x) => Node::Pos(Box::new(fold(*x))),
        Node::Not(x) => Node::Not(Box::new(fold(*x))),
        Node::Bin(op, a, b) => Node::Bin(op, Box::new(fold(*a)), Box::new(fold(*b))),
        Node::Cmp(op, a, b) => Node::Cmp(op, Box::new(fold(*a)), Box::new(fold(*b))),
        Node::And(a, b) => Node::And(Box::new(fold(*a)), Box::new(fold(*b))),
        Node::Or(a, b) => Node::Or(Box::new(fold(*a)), Box::new(fold(*b))),
        Node::If(c, a, b) => Node::If(Box::new(fold(*c)), Box::new(fold(*a)), Box::new(fold(*b))),
        Node::Call(f, args) => Node::Call(f, args.into_iter().map(fold).collect()),
        leaf => leaf,
    };
    if matches!(node, Node::Lit(_) | Node::Name(_) | Node::Meter(..)) || reads_names(&node) {
        return node;
    }
    match eval(&node, &NoNames) {
        Ok(v) => Node::Lit(v.into_owned()),
        Err(_) => node,
    }
}

fn reads_names(node: &Node) -> bool {
    match node {
        Node::Name(_) | Node::Meter(..) => true,
        Node::Lit(_) => false,
        Node::Neg(x) | Node::Pos(x) | Node::Not(x) => reads_names(x),
        Node::Bin(_, a, b) | Node::Cmp(_, a, b) | Node::And(a, b) | Node::Or(a, b) => {
            reads_names(a) || reads_names(b)
        }
        Node::If(c, a, b) => reads_names(c) || reads_names(a) || reads_names(b),
        Node::Call(_, args) => args.iter().any(reads_names),
    }
}

fn type_error(op: &str, a: &Value, b: &Value) -> EvalError {
    EvalError(format!(
        "unsupported operand types for {op}: {} and {}",
        a.type_name(),
        b.type_name()
    ))
}

fn eval<'s>(node: &Node, scope: &'s dyn Scope) -> Result<Value<'s>, EvalError> {
    Ok(match node {
        Node::Lit(v) => v.clone(),
        Node::Name(path) => scope.name(path)?,
        Node::Meter(i, path) => scope.meter(*i, path)?,
        Node::Neg(x) => match eval(x, scope)?.number() {
            Some(Num::I(i)) => i
                .checked_neg()
                .map_or(Value::Float(-(i as f64)), Value::Int),
            Some(Num::F(f)) => Value::Float(-f),
            None => return Err(EvalError("bad operand type for unary -".into())),
        },
        Node::Pos(x) => match eval(x, scope)?.number() {
            Some(Num::I(i)) => Value::Int(i),
            Some(Num::F(f)) => Value::Float(f),
            None => return Err(EvalError("bad operand type for unary +".into())),
        },
        Node::Not(x) => Value::Bool(!eval(x, scope)?.truthy()),
        Node::And(a, b) => {
            let a = eval(a, scope)?;
            if a.truthy() {
                eval(b, scope)?
            } else {
                a
            }
        }
        Node::Or(a, b) => {
            let a = eval(a, scope)?;
            if a.truthy() {
                a
            } else {
                eval(b, scope)?
            }
        }
        Node::If(c, a, b) => {
            if eval(c, scope)?.truthy() {
                eval(a, scope)?
            } else {
                eval(b, scope)?
            }
        }
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, scope)?, eval(b, scope)?);
            let ord = match (a.number(), b.number(), &a, &b) {
                (Some(x), Some(y), _, _) => match (x, y) {
                    (Num::I(x), Num::I(y)) => x.partial_cmp(&y),
                    (x, y) => x.f().partial_cmp(&y.f()),
                },
                (_, _, Value::Str(x), Value::Str(y)) => x.partial_cmp(y),
                _ => match op {
                    CmpOp::Eq => return Ok(Value::Bool(a == b)),
                    CmpOp::Ne => return Ok(Value::Bool(a != b)),
                    _ => return Err(type_error("comparison", &a, &b)),
                },
            };
            use std::cmp::Ordering::*;
            Value::Bool(match (op, ord) {
                (_, None) => matches!(op, CmpOp::Ne),
                (CmpOp::Lt, Some(o)) => o == Less,
                (CmpOp::Le, Some(o)) => o != Greater,
                (CmpOp::Gt, Some(o)) => o == Greater,
                (CmpOp::Ge, Some(o)) => o != Less,
                (CmpOp::Eq, Some(o)) => o == Equal,
                (CmpOp::Ne, Some(o)) => o != Equal,
            })
        }
        Node::Bin(op, a, b) => {
            let (a, b) = (eval(a, scope)?, eval(b, scope)?);
            binary(*op, a, b)?
        }
        Node::Call(func, args) => {
            let args = args
                .iter()
                .map(|a| eval(a, scope).map(Value::into_owned))
                .collect::<Result<Vec<_>, _>>()?;
            call(*func, args)?
        }
    })
}

fn binary<'s>(op: BinOp, a: Value<'s>, b: Value<'s>) -> Result<Value<'s>, EvalError> {
    let (x, y) = match (a.number(), b.number()) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            if let (BinOp::Add, Value::Str(x), Value::Str(y)) = (op, &a, &b) {
                return Ok(Value::Str(Cow::Owned(format!("{x}{y}"))));
            }
            let sym = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
                BinOp::Div => "/",
                BinOp::FloorDiv => "//",
                BinOp::Mod => "%",
                BinOp::Pow => "**",
            };
            return Err(type_error(sym, &a, &b));
        }
    };
    let zero = || EvalError("division by zero".into());
    Ok(match (op, x, y) {
        (BinOp::Add, Num::I(x), Num::I(y)) => x
            .checked_add(y)
            .map_or(Value::Float(x as f64 + y as f64), Value::Int),
        (BinOp::Sub, Num::I(x), Num::I(y)) => x
            .checked_sub(y)
            .map_or(Value::Float(x as f64 - y as f64), Value::Int),
        (BinOp::Mul, Num::I(x), Num::I(y)) => x
            .checked_mul(y)
            .map_or(Value::Float(x as f64 * y as f64), Value::Int),
        (BinOp::Add, x, y) => Value::Float(x.f() + y.f()),
        (BinOp::Sub, x, y) => Value::Float(x.f() - y.f()),
        (BinOp::Mul, x, y) => Value::Float(x.f() * y.f()),
        (BinOp::Div, x, y) => {
            if y.f() == 0.0 {
                return Err(zero());
            }
            Value::Float(x.f() / y.f())
        }
        (BinOp::FloorDiv, Num::I(x), Num::I(y)) => {
            if y == 0 {
                return Err(zero());
            }
            Value::Int(x.div_euclid(y) - i64::from(y < 0 && x.rem_euclid(y) != 0))
        }
        (BinOp::FloorDiv, x, y) => {
            if y.f() == 0.0 {
                return Err(zero());
            }
            Value::Float((x.f() / y.f()).floor())
        }
        (BinOp::Mod, Num::I(x), Num::I(y)) => {
            if y == 0 {
                return Err(zero());
            }
            let r = x % y;
            Value::Int(if r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            })
        }
        (BinOp::Mod, x, y) => {
            let (x, y) = (x.f(), y.f());
            if y == 0.0 {
                return Err(zero());
            }
            let r = x % y;
            Value::Float(if r != 0.0 && (r < 0.0) != (y < 0.0) {
                r + y
            } else {
                r
            })
        }
        (BinOp::Pow, Num::I(x), Num::I(y)) if y >= 0 => u32::try_from(y)
            .ok()
            .and_then(|y| x.checked_pow(y))
            .map_or(Value::Float((x as f64).powf(y as f64)), Value::Int),
        (BinOp::Pow, x, y) => {
            let (x, y) = (x.f(), y.f());
            if x == 0.0 && y < 0.0 {
                return Err(EvalError("0.0 cannot be raised to a negative power".into()));
            }
            if x < 0.0 && y.fract() != 0.0 {
                return Err(EvalError(
                    "a negative number raised to a fractional power is complex".into(),
                ));
            }
            Value::Float(x.powf(y))
        }
    })
}

fn round_half_even(f: f64) -> f64 {
    let r = f.round();
    if (f - f.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - f.signum()
    } else {
        r
    }
}

fn call(func: Func, args: Vec<Value<'static>>) -> Result<Value<'static>, EvalError> {
    let num = |v: &Value| {
        v.number()
            .ok_or_else(|| EvalError(format!("expected a number, got {}", v.type_name())))
    };
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(EvalError(format!(
                "expected {n} argument(s), got {}",
                args.len()
            )))
        }
    };
    Ok(match func {
        Func::Abs => {
            arity(1)?;
            match num(&args[0])? {
                Num::I(i) => Value::Int(i.saturating_abs()),
                Num::F(f) => Value::Float(f.abs()),
            }
        }
        Func::Min | Func::Max => {
            if args.is_empty() {
                return Err(EvalError("min/max need at least one argument".into()));
            }
            let mut best = args[0].clone();
            for a in &args[1..] {
                let (x, y) = (num(&best)?.f(), num(a)?.f());
                if (func == Func::Min && y < x) || (func == Func::Max && y > x) {
                    best = a.clone();
                }
            }
            num(&best)?;
            best
        }
        Func::Round => match args.len() {
            1 => match num(&args[0])? {
                Num::I(i) => Value::Int(i),
                Num::F(f) => Value::Int(round_half_even(f) as i64),
            },
            2 => {
                let digits = match num(&args[1])? {
                    Num::I(d) => d,
                    Num::F(_) => return Err(EvalError("round() digits must be an int".into())),
                };
                let scale = 10f64.powi(digits as i32);
                match num(&args[0])? {
                    Num::I(i) if digits >= 0 => Value::Int(i),
                    x => Value::Float(round_half_even(x.f() * scale) / scale),
                }
            }
            n => {
                return Err(EvalError(format!(
                    "round() takes 1 or 2 arguments, got {n}"
                )))
            }
        },
        Func::Int => {
            arity(1)?;
            match &args[0] {
                Value::Str(s) => Value::Int(
                    s.trim()
                        .parse()
                        .map_err(|_| EvalError(format!("invalid literal for int(): {s:?}")))?,
                ),
                v => match num(v)? {
                    Num::I(i) => Value::Int(i),
                    Num::F(f) if f.is_finite() => Value::Int(f.trunc() as i64),
                    Num::F(_) => {
                        return Err(EvalError("cannot convert a non-finite float to int".into()))
                    }
                },
            }
        }
        Func::Float => {
            arity(1)?;
            match &args[0] {
                Value::Str(s) => {
                    Value::Float(s.trim().parse().map_err(|_| {
                        EvalError(format!("could not convert string to float: {s:?}"))
                    })?)
                }
                v => Value::Float(num(v)?.f()),
            }
        }
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn nesting_and_length_are_bounded_as_python_bounds_them() {
        let deep = |n: usize| format!("{}volume{}", "(".repeat(n), ")".repeat(n));
        assert!(Expr::parse(&deep(90), false).is_ok());
        assert!(Expr::parse(&deep(150), false).is_err());
        for text in [
            deep(1000),
            deep(10_000),
            "-".repeat(5000) + "1",
            "not ".repeat(300) + "1",
        ] {
            let e = Expr::parse(&text, false).unwrap_err().to_string();
            assert!(e.contains("levels deep") || e.contains("tokens"), "{e}");
        }
        let long = vec!["1"; 300].join(" + ");
        let e = Expr::parse(&long, false).unwrap_err().to_string();
        assert!(e.contains("more than the 500 taken"), "{e}");
        assert!(Expr::parse(&vec!["1"; 200].join(" + "), false).is_ok());
    }
    use super::*;

    struct Vars;
    impl Scope for Vars {
        fn name<'s>(&'s self, path: &[String]) -> Result<Value<'s>, EvalError> {
            Ok(match path[0].as_str() {
                "volume" => Value::Int(7),
                "half" => Value::Float(0.5),
                "label" => Value::Str("x".into()),
                _ => Value::Namespace { empty: true },
            })
        }
    }

    fn ev(text: &str) -> Result<Value<'static>, EvalError> {
        Expr::parse(text, false)
            .unwrap()
            .eval(&Vars)
            .map(Value::into_owned)
    }

    #[test]
    fn python_arithmetic() {
        assert_eq!(ev("10**9"), Ok(Value::Int(1_000_000_000)));
        assert_eq!(ev("2**-1"), Ok(Value::Float(0.5)));
        assert_eq!(ev("-2**2"), Ok(Value::Int(-4)));
        assert_eq!(ev("2**3**2"), Ok(Value::Int(512)));
        assert_eq!(ev("7 / 2"), Ok(Value::Float(3.5)));
        assert_eq!(ev("7 // 2"), Ok(Value::Int(3)));
        assert_eq!(ev("-7 // 2"), Ok(Value::Int(-4)));
        assert_eq!(ev("-7 % 3"), Ok(Value::Int(2)));
        assert_eq!(ev("7 % -3"), Ok(Value::Int(-2)));
        assert_eq!(ev("volume * 8"), Ok(Value::Int(56)));
        assert_eq!(ev("volume * 1.0 / 1024"), Ok(Value::Float(7.0 / 1024.0)));
        assert_eq!(ev("1e3 + .5"), Ok(Value::Float(1000.5)));
        assert_eq!(ev("round(2.5) + round(3.5)"), Ok(Value::Int(6)));
        assert_eq!(ev("max(1, half, 3.5)"), Ok(Value::Float(3.5)));
        assert_eq!(ev("abs(-3)"), Ok(Value::Int(3)));
    }

    #[test]
    fn python_boolean_operators_return_operands() {
        assert_eq!(ev("missing or 1"), Ok(Value::Int(1)));
        assert_eq!(ev("0 or half"), Ok(Value::Float(0.5)));
        assert_eq!(ev("volume and half"), Ok(Value::Float(0.5)));
        assert_eq!(ev("not missing"), Ok(Value::Bool(true)));
        assert_eq!(ev("1 if volume > 3 else 2"), Ok(Value::Int(1)));
        assert_eq!(ev("label == 'x'"), Ok(Value::Bool(true)));
    }

    #[test]
    fn errors_are_values() {
        assert!(ev("1 / 0").is_err());
        assert!(ev("1 // 0").is_err());
        assert!(ev("volume * missing").is_err());
        assert!(ev("label + 1").is_err());
        assert!(ev("(-8) ** 0.5").is_err());
    }

    #[test]
    fn syntax_errors_name_the_offset() {
        let e = Expr::parse("1 +", false).unwrap_err();
        assert_eq!(e.offset, 3);
        assert!(Expr::parse("(1", false).is_err());
        assert!(Expr::parse("1 2", false).is_err());
        assert!(Expr::parse("__import__('os')", false).is_err());
        assert!(Expr::parse("$(cpu)", false).is_err());
        assert!(Expr::parse("a[0]", false).is_err());
    }

    #[test]
    fn constant_subtrees_are_folded_but_errors_stay_per_evaluation() {
        let e = Expr::parse("100.0 / (10**9 * (missing or 1))", false).unwrap();
        let Node::Bin(BinOp::Div, lhs, rhs) = &e.root else {
            panic!("{:?}", e.root)
        };
        assert_eq!(**lhs, Node::Lit(Value::Float(100.0)));
        let Node::Bin(BinOp::Mul, nine, _) = &**rhs else {
            panic!("{rhs:?}")
        };
        assert_eq!(**nine, Node::Lit(Value::Int(1_000_000_000)));
        assert_eq!(
            Expr::parse("2 * 3 + 1", false).unwrap().root,
            Node::Lit(Value::Int(7))
        );
        assert!(Expr::parse("1 / 0", false).unwrap().eval(&Vars).is_err());
    }

    #[test]
    fn meter_references_in_order_of_mention() {
        let e = Expr::parse(
            "100 * $(memory.usage) / $(memory) + $(memory.usage).resource_metadata.x",
            true,
        )
        .unwrap();
        assert_eq!(e.meters(), ["memory.usage", "memory"]);
        assert!(!e.is_constant());
        assert!(Expr::parse("100.0 / 3", false).unwrap().is_constant());
        assert!(
            Expr::parse("1 / (resource_metadata.cpu_number or 1)", false)
                .unwrap()
                .reads_only_metadata()
        );
        assert!(!Expr::parse("volume * resource_metadata.x", false)
            .unwrap()
            .reads_only_metadata());
    }
}
