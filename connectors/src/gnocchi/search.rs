//! Gnocchi's resource search filter (the JSON body of `POST /v1/search/resource/TYPE`, and the
//! `query` of Aodh's `gnocchi_aggregation_by_resources_threshold` rules), matched against a
//! resource as the API shows it.
//!
//! ```json
//! {"and": [{"=": {"server_group": "web"}}, {"not": {"like": {"host": "test-%"}}}]}
//! ```
//! Comparisons: `=` `==` `eq`, `!=` `≠` `ne`, `<` `lt`, `<=` `≤` `le`, `>` `gt`, `>=` `≥` `ge`,
//! `in` (a list), `like` / `ilike` (SQL patterns: `%` any run, `_` one character); logic:
//! `and` `∧`, `or` `∨` (lists), `not` `¬`. A field the resource lacks (or holds null) matches
//! only `= null`. Values of `id` are compared as Gnocchi keys them (a non-UUID id becomes its
//! uuid5).

use serde_json::Value;

use super::{canonical_uuid, resource_uuid};

/// A comparison operator of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`, `==`, `eq`.
    Eq,
    /// `!=`, `≠`, `ne`.
    Ne,
    /// `<`, `lt`.
    Lt,
    /// `<=`, `≤`, `le`.
    Le,
    /// `>`, `gt`.
    Gt,
    /// `>=`, `≥`, `ge`.
    Ge,
    /// `in`: equal to one of a list.
    In,
    /// `like`: an SQL pattern.
    Like,
    /// `ilike`: an SQL pattern, ignoring case.
    ILike,
}

/// A parsed search filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Every filter holds (an empty `and` always holds).
    And(Vec<Filter>),
    /// Some filter holds.
    Or(Vec<Filter>),
    /// The filter does not hold.
    Not(Box<Filter>),
    /// A comparison of one field.
    Compare {
        /// The operator.
        op: Op,
        /// The resource field.
        field: String,
        /// The value compared with (for `in`, a list).
        value: Value,
    },
}

impl Filter {
    /// Parses Gnocchi's JSON filter; an empty object matches every resource. The error says
    /// where the filter is wrong.
    ///
    /// # Examples
    /// ```
    /// use meterflow_connectors::gnocchi::search::Filter;
    /// use serde_json::json;
    /// let f = Filter::parse(&json!({"and": [{"=": {"host": "h1"}}, {">": {"vcpus": 2}}]})).unwrap();
    /// assert!(f.matches(&json!({"host": "h1", "vcpus": 4})));
    /// assert!(!f.matches(&json!({"host": "h2", "vcpus": 4})));
    /// assert!(Filter::parse(&json!({"~": {"host": "h1"}})).unwrap_err().contains("~"));
    /// ```
    pub fn parse(v: &Value) -> Result<Filter, String> {
        Self::parse_at(v, "query")
    }

    fn parse_at(v: &Value, path: &str) -> Result<Filter, String> {
        let Value::Object(map) = v else {
            return Err(format!(
                "{path}: a filter is an object such as {{\"=\": {{\"host\": \"h1\"}}}}"
            ));
        };
        if map.is_empty() {
            return Ok(Filter::And(Vec::new()));
        }
        if map.len() != 1 {
            return Err(format!(
                "{path}: a filter has exactly one operator; combine several with {{\"and\": [...]}}"
            ));
        }
        let (key, arg) = map.iter().next().expect("one entry");
        let here = format!("{path}.{key}");
        let list = |arg: &Value| -> Result<Vec<Filter>, String> {
            let Value::Array(items) = arg else {
                return Err(format!("{here}: takes a list of filters"));
            };
            items
                .iter()
                .enumerate()
                .map(|(i, item)| Self::parse_at(item, &format!("{here}[{i}]")))
                .collect()
        };
        match key.to_ascii_lowercase().as_str() {
            "and" | "∧" => return Ok(Filter::And(list(arg)?)),
            "or" | "∨" => return Ok(Filter::Or(list(arg)?)),
            "not" | "¬" => return Ok(Filter::Not(Box::new(Self::parse_at(arg, &here)?))),
            _ => {}
        }
        let op = match key.to_ascii_lowercase().as_str() {
            "=" | "==" | "eq" => Op::Eq,
            "!=" | "≠" | "ne" => Op::Ne,
            "<" | "lt" => Op::Lt,
            "<=" | "≤" | "le" => Op::Le,
            ">" | "gt" => Op::Gt,
            ">=" | "≥" | "ge" => Op::Ge,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::ILike,
            other => {
                return Err(format!(
                    "{path}: unknown operator {other:?}; Gnocchi's are =, !=, <, <=, >, >=, in, like, ilike, and, or, not"
                ))
            }
        };
        let Value::Object(fields) = arg else {
            return Err(format!(
                "{here}: takes one field and its value, e.g. {{\"{key}\": {{\"host\": \"h1\"}}}}"
            ));
        };
        if fields.len() != 1 {
            return Err(format!("{here}: takes exactly one field"));
        }
        let (field, value) = fields.iter().next().expect("one field");
        match (op, value) {
            (Op::In, Value::Array(_)) => {}
            (Op::In, _) => return Err(format!("{here}.{field}: `in` takes a list of values")),
            (Op::Like | Op::ILike, Value::String(_)) => {}
            (Op::Like | Op::ILike, _) => {
                return Err(format!("{here}.{field}: `{key}` takes a string pattern"))
            }
            _ => {}
        }
        let value = if field == "id" {
            id_value(value)
        } else {
            value.clone()
        };
        Ok(Filter::Compare {
            op,
            field: field.clone(),
            value,
        })
    }

    /// Whether `resource` (a JSON object, as `GET /v1/resource/TYPE/ID` shows it) matches.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::And(all) => all.iter().all(|f| f.matches(resource)),
            Filter::Or(any) => any.iter().any(|f| f.matches(resource)),
            Filter::Not(f) => !f.matches(resource),
            Filter::Compare { op, field, value } => {
                let have = resource.get(field).unwrap_or(&Value::Null);
                compare(*op, have, value)
            }
        }
    }
}

impl Filter {
    /// Parses Gnocchi's text form of a filter (the `filter` query parameter of a search, what
    /// `gnocchi resource search "host='h1' and vcpus>=2"` sends): comparisons `FIELD OP VALUE`
    /// with the operators of the JSON form (`=`, `!=`, `<`, `<=`, `>`, `>=`, `like`, `ilike`,
    /// `in`, and their word forms), values quoted (`'web-1'`, `"web-1"`), numbers, `null`,
    /// `true`/`false`, bare words, or lists for `in` (`in ('a', 'b')` or `in ["a", "b"]`);
    /// `not` binds tighter than `and`, `and` than `or`; parentheses group.
    ///
    /// # Examples
    /// ```
    /// use meterflow_connectors::gnocchi::search::Filter;
    /// use serde_json::json;
    /// let f = Filter::parse_text("host = 'h1' and not (vcpus < 2 or flavor in ('tiny', 'nano'))").unwrap();
    /// assert!(f.matches(&json!({"host": "h1", "vcpus": 4, "flavor": "large"})));
    /// assert!(!f.matches(&json!({"host": "h1", "vcpus": 4, "flavor": "tiny"})));
    /// assert!(Filter::parse_text("host = ").is_err());
    /// ```
    pub fn parse_text(text: &str) -> Result<Filter, String> {
        const MAX_LEN: usize = 64 * 1024;
        if text.len() > MAX_LEN {
            return Err(format!("filter: longer than {MAX_LEN} bytes"));
        }
        let tokens = tokens(text)?;
        let mut at = 0;
        let json = or_expression(&tokens, &mut at, 0)?;
        if at != tokens.len() {
            return Err(format!(
                "filter: unexpected {:?} after a whole expression",
                tokens[at]
            ));
        }
        Self::parse_at(&json, "filter")
    }
}

/// A token of the text form.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(f64),
    Symbol(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("filter: a {c}-quoted value is not closed")),
                    Some(&q) if q == c => break,
                    Some('\\') if chars.get(i + 1).is_some() => {
                        s.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    Some(&other) => s.push(other),
                }
                i += 1;
            }
            i += 1;
            out.push(Token::Text(s));
            continue;
        }
        const SYMBOLS: [&str; 14] = [
            "<=", ">=", "!=", "==", "≤", "≥", "≠", "=", "<", ">", "(", ")", "[", "]",
        ];
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        if let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            out.push(Token::Symbol(sym));
            i += sym.chars().count();
            continue;
        }
        if c == ',' {
            out.push(Token::Symbol(","));
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !"()[],=<>!≤≥≠'\"".contains(chars[i])
        {
            i += 1;
        }
        if start == i {
            return Err(format!("filter: unexpected {c:?}"));
        }
        let word: String = chars[start..i].iter().collect();
        match word.parse::<f64>() {
            Ok(n) if n.is_finite() => out.push(Token::Number(n)),
            _ => out.push(Token::Word(word)),
        }
    }
    Ok(out)
}

fn keyword(tokens: &[Token], at: usize, word: &str) -> bool {
    matches!(tokens.get(at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
}

fn or_expression(tokens: &[Token], at: &mut usize, depth: usize) -> Result<Value, String> {
    joined(tokens, at, depth, "or", and_expression)
}

fn and_expression(tokens: &[Token], at: &mut usize, depth: usize) -> Result<Value, String> {
    joined(tokens, at, depth, "and", unary)
}

/// Operands read by `operand` joined by the keyword `word`: `{word: [...]}`, or the one
/// operand alone.
fn joined(
    tokens: &[Token],
    at: &mut usize,
    depth: usize,
    word: &str,
    operand: fn(&[Token], &mut usize, usize) -> Result<Value, String>,
) -> Result<Value, String> {
    let mut items = vec![operand(tokens, at, depth)?];
    while keyword(tokens, *at, word) {
        *at += 1;
        items.push(operand(tokens, at, depth)?);
    }
    Ok(if items.len() == 1 {
        items.remove(0)
    } else {
        serde_json::json!({ word: items })
    })
}

fn unary(tokens: &[Token], at: &mut usize, depth: usize) -> Result<Value, String> {
    if depth > 100 {
        return Err("filter: nested deeper than 100 levels".into());
    }
    if keyword(tokens, *at, "not") {
        *at += 1;
        return Ok(serde_json::json!({ "not": unary(tokens, at, depth + 1)? }));
    }
    if tokens.get(*at) == Some(&Token::Symbol("(")) {
        *at += 1;
        let inner = or_expression(tokens, at, depth + 1)?;
        if tokens.get(*at) != Some(&Token::Symbol(")")) {
            return Err("filter: a parenthesis is not closed".into());
        }
        *at += 1;
        return Ok(inner);
    }
    let Some(Token::Word(field)) = tokens.get(*at) else {
        return Err(format!(
            "filter: expected a field name at {:?}",
            tokens.get(*at)
        ));
    };
    *at += 1;
    let op = match tokens.get(*at) {
        Some(Token::Symbol(s)) if !matches!(*s, "(" | ")" | "[" | "]" | ",") => (*s).to_owned(),
        Some(Token::Word(w)) => w.to_ascii_lowercase(),
        other => {
            return Err(format!(
                "filter: expected an operator after {field}, got {other:?}"
            ))
        }
    };
    *at += 1;
    let value = if op == "in" {
        let close = match tokens.get(*at) {
            Some(Token::Symbol("(")) => ")",
            Some(Token::Symbol("[")) => "]",
            other => {
                return Err(format!(
                    "filter: `in` takes a list, e.g. in ('a', 'b'); got {other:?}"
                ))
            }
        };
        *at += 1;
        let mut list = Vec::new();
        loop {
            list.push(scalar(tokens, at)?);
            match tokens.get(*at) {
                Some(Token::Symbol(",")) => *at += 1,
                Some(Token::Symbol(s)) if *s == close => {
                    *at += 1;
                    break;
                }
                other => {
                    return Err(format!(
                        "filter: expected , or {close} in a list, got {other:?}"
                    ))
                }
            }
        }
        Value::Array(list)
    } else {
        scalar(tokens, at)?
    };
    Ok(serde_json::json!({ op: { field.clone(): value } }))
}

fn scalar(tokens: &[Token], at: &mut usize) -> Result<Value, String> {
    let value = match tokens.get(*at) {
        Some(Token::Text(s)) => Value::String(s.clone()),
        Some(Token::Number(n)) => serde_json::json!(n),
        Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
            "null" | "none" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(w.clone()),
        },
        other => return Err(format!("filter: expected a value, got {other:?}")),
    };
    *at += 1;
    Ok(value)
}

/// A queried `id` as Gnocchi keys it.
fn id_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(canonical_uuid(s).unwrap_or_else(|| resource_uuid(s))),
        Value::Array(items) => Value::Array(items.iter().map(id_value).collect()),
        other => other.clone(),
    }
}

fn compare(op: Op, have: &Value, want: &Value) -> bool {
    use std::cmp::Ordering;
    if have.is_null() {
        return match op {
            Op::Eq => want.is_null(),
            Op::Ne => !want.is_null(),
            Op::In => matches!(want, Value::Array(v) if v.iter().any(Value::is_null)),
            _ => false,
        };
    }
    let order = |want: &Value| -> Option<Ordering> {
        match (have, want) {
            (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            // A number held as text (attributes taken from samples) compares as a number.
            (Value::String(a), Value::Number(b)) => {
                a.parse::<f64>().ok()?.partial_cmp(&b.as_f64()?)
            }
            _ => None,
        }
    };
    match op {
        Op::Eq => order(want) == Some(Ordering::Equal),
        Op::Ne => order(want) != Some(Ordering::Equal),
        Op::Lt => order(want) == Some(Ordering::Less),
        Op::Le => matches!(order(want), Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => order(want) == Some(Ordering::Greater),
        Op::Ge => matches!(order(want), Some(Ordering::Greater | Ordering::Equal)),
        Op::In => {
            matches!(want, Value::Array(v) if v.iter().any(|w| order(w) == Some(Ordering::Equal)))
        }
        Op::Like | Op::ILike => {
            let (Value::String(text), Value::String(pattern)) = (have, want) else {
                return false;
            };
            if op == Op::ILike {
                like(&text.to_lowercase(), &pattern.to_lowercase())
            } else {
                like(text, pattern)
            }
        }
    }
}

/// SQL `LIKE`: `%` matches any run of characters, `_` exactly one.
fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Greedy matching with backtracking to the last `%` (linear for typical patterns).
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == t[ti])) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(filter: Value, resource: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&resource)
    }

    #[test]
    fn comparisons_logic_and_patterns() {
        let r = json!({"host": "web-1", "vcpus": 4, "flavor": "m1.small", "image": null,
                       "id": resource_uuid("vm-1")});
        assert!(m(json!({"=": {"host": "web-1"}}), r.clone()));
        assert!(m(json!({"eq": {"vcpus": 4.0}}), r.clone()));
        assert!(m(json!({"!=": {"host": "web-2"}}), r.clone()));
        assert!(m(json!({"≥": {"vcpus": 4}}), r.clone()));
        assert!(!m(json!({"gt": {"vcpus": 4}}), r.clone()));
        assert!(m(
            json!({"in": {"flavor": ["m1.tiny", "m1.small"]}}),
            r.clone()
        ));
        assert!(m(json!({"like": {"host": "web-%"}}), r.clone()));
        assert!(m(json!({"like": {"host": "w_b-1"}}), r.clone()));
        assert!(!m(json!({"like": {"host": "web"}}), r.clone()));
        assert!(m(json!({"ilike": {"host": "WEB%"}}), r.clone()));
        assert!(m(json!({"like": {"host": "%-%1"}}), r.clone()));
        assert!(m(json!({"=": {"image": null}}), r.clone()));
        assert!(m(json!({"=": {"missing": null}}), r.clone()));
        assert!(!m(json!({"<": {"missing": 3}}), r.clone()));
        assert!(m(json!({"=": {"id": "vm-1"}}), r.clone()));
        assert!(m(
            json!({"and": [{"=": {"host": "web-1"}}, {"not": {"=": {"vcpus": 2}}}]}),
            r.clone()
        ));
        assert!(m(
            json!({"or": [{"=": {"host": "x"}}, {"<": {"vcpus": 8}}]}),
            r.clone()
        ));
        assert!(m(json!({}), r.clone()));
        // Text compares as text, a number held as text as a number.
        assert!(!m(json!({">": {"vcpus": "9"}}), json!({"vcpus": "10"})));
        assert!(m(json!({">": {"vcpus": 9}}), json!({"vcpus": "10"})));
        assert!(m(json!({">": {"vcpus": 3}}), json!({"vcpus": "4"})));
    }

    #[test]
    fn bad_filters_say_where() {
        let e = Filter::parse(&json!({"and": [{"=": {"a": 1}}, {"=": 3}]})).unwrap_err();
        assert!(e.contains("query.and[1].="), "{e}");
        let e = Filter::parse(&json!({"in": {"a": 1}})).unwrap_err();
        assert!(e.contains("list"), "{e}");
        let e = Filter::parse(&json!({"=": {"a": 1}, "!=": {"b": 2}})).unwrap_err();
        assert!(e.contains("exactly one operator"), "{e}");
        assert!(Filter::parse(&json!("host=h1")).is_err());
    }

    #[test]
    fn the_text_form_reads_as_the_json_form() {
        let same = |text: &str, json: Value| {
            assert_eq!(
                Filter::parse_text(text).unwrap(),
                Filter::parse(&json).unwrap(),
                "{text}"
            );
        };
        same("host = 'h1'", json!({"=": {"host": "h1"}}));
        same(
            "a=1 or b=2 and c=3",
            json!({"or": [{"=": {"a": 1.0}}, {"and": [{"=": {"b": 2.0}}, {"=": {"c": 3.0}}]}]}),
        );
        same("not a != null", json!({"not": {"!=": {"a": null}}}));
        same(
            "(a ge 2) and b in [\"x\", 'y']",
            json!({"and": [{"ge": {"a": 2.0}}, {"in": {"b": ["x", "y"]}}]}),
        );
        same("host ilike \"WEB%\"", json!({"ilike": {"host": "WEB%"}}));
        for bad in [
            "host =",
            "host 'h1'",
            "(a = 1",
            "a in ('x'",
            "a = 1 b = 2",
            "'x' = 1",
            "a = 'open",
        ] {
            assert!(Filter::parse_text(bad).is_err(), "{bad}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(200), ")".repeat(200));
        assert!(Filter::parse_text(&deep).unwrap_err().contains("deeper"));
    }
}
