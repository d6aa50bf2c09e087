//! Aodh's complex query (`POST /v2/query/alarms`, `POST /v2/query/alarms/history`): a body
//! `{"filter": "<JSON>", "orderby": "<JSON>", "limit": N}` whose filter is a tree of `and`/`or`
//! (two or more operands), `not`, the comparisons `=`, `!=`, `<`, `<=` (`=<`), `>`, `>=`
//! (`=>`), `=~` (a regular expression, searched) and `in` (a non-empty list), each naming one
//! field of the model, operators in any case; `orderby` a list of `{"field": "asc"|"desc"}`.
//! Checked as Aodh's JSON schema checks it, with its messages; times (`timestamp`,
//! `state_timestamp`) compared as times. Matched against the JSON the API returns: a field
//! that is absent or null matches no comparison (as SQL's NULL).

use std::cmp::Ordering;

use meterflow_engine::time::Instant;
use serde_json::Value;

/// How deep a filter may nest (the JSON reader stops at 128 levels of JSON before this for
/// `and`/`or`, which take two levels each).
const MAX_DEPTH: usize = 50;

/// What a query may name: the model's fields, and Aodh's `user`/`project` aliases.
pub(super) struct Model {
    /// The fields a filter or an ordering may name.
    pub fields: &'static [&'static str],
}

/// The alarm model's fields (Aodh's `models.Alarm`).
pub(super) const ALARM: Model = Model {
    fields: &[
        "alarm_id",
        "enabled",
        "type",
        "name",
        "description",
        "timestamp",
        "user_id",
        "project_id",
        "state",
        "state_reason",
        "state_timestamp",
        "ok_actions",
        "alarm_actions",
        "insufficient_data_actions",
        "repeat_actions",
        "rule",
        "time_constraints",
        "severity",
        "evaluate_timestamp",
    ],
};

/// The alarm history model's fields (Aodh's `models.AlarmChange`).
pub(super) const ALARM_CHANGE: Model = Model {
    fields: &[
        "event_id",
        "alarm_id",
        "type",
        "detail",
        "user_id",
        "project_id",
        "on_behalf_of",
        "timestamp",
        "severity",
    ],
};

/// Fields compared as times.
const TIMES: [&str; 2] = ["timestamp", "state_timestamp"];

/// A checked query.
#[derive(Debug)]
pub(super) struct ComplexQuery {
    filter: Option<Node>,
    /// (field, descending), in order of precedence; newest first when none is given.
    orderby: Vec<(String, bool)>,
    limit: Option<usize>,
}

#[derive(Debug)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Compare(Comparison, String, Operand),
    In(String, Vec<Operand>),
    Matches(String, regex::Regex),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value to compare with: a time for the time fields, else the JSON value.
#[derive(Debug)]
enum Operand {
    Time(i64),
    Plain(Value),
}

impl ComplexQuery {
    /// Reads and checks a request body against `model`; the message is Aodh's.
    pub(super) fn parse(body: &Value, model: &Model) -> Result<ComplexQuery, String> {
        let Some(object) = body.as_object() else {
            return Err("Invalid input for field/attribute body: give a JSON object with filter, orderby and limit".into());
        };
        if let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "filter" | "orderby" | "limit"))
        {
            return Err(format!("Unknown attribute for argument body: {unknown}"));
        }
        let text = |name: &str| -> Result<Option<Value>, String> {
            match object.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => serde_json::from_str(s).map(Some).map_err(|e| {
                    let what = if name == "filter" { "Filter" } else { "Order-by" };
                    format!("{what} expression not valid: {e}")
                }),
                Some(other) => Err(format!(
                    "Invalid input for field/attribute {name}. Value: '{other}'. Wrong type. Expected '<class 'str'>', got '{}'",
                    json_type(other)
                )),
            }
        };
        let filter = text("filter")?
            .map(|f| node(&f, model, 0))
            .transpose()
            .map_err(|e| format!("Filter expression not valid: {e}"))?;
        let orderby = text("orderby")?
            .map(|o| orderby(&o, model))
            .transpose()
            .map_err(|e| format!("Order-by expression not valid: {e}"))?
            .unwrap_or_default();
        let limit = match object.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(_) => return Err("Limit should be positive".into()),
                None => {
                    return Err(format!(
                        "Invalid input for field/attribute limit. Value: '{v}'. Wrong type. Expected '<class 'int'>', got '{}'",
                        json_type(v)
                    ))
                }
            },
        };
        Ok(ComplexQuery {
            filter,
            orderby,
            limit,
        })
    }

    /// The rows that match, ordered and limited.
    pub(super) fn apply(&self, rows: Vec<Value>) -> Vec<Value> {
        let mut rows: Vec<Value> = rows
            .into_iter()
            .filter(|r| self.filter.as_ref().is_none_or(|f| f.holds(r)))
            .collect();
        let default = [("timestamp".to_owned(), true)];
        let order = if self.orderby.is_empty() {
            &default[..]
        } else {
            &self.orderby[..]
        };
        rows.sort_by(|a, b| {
            for (field, descending) in order {
                let o = order_values(field, a.get(field), b.get(field));
                let o = if *descending { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        if let Some(limit) = self.limit {
            rows.truncate(limit);
        }
        rows
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// The one key and value of a `{op: operand}` object.
fn single(v: &Value) -> Result<(&str, &Value), String> {
    match v.as_object() {
        Some(o) if o.len() == 1 => {
            let (k, v) = o.iter().next().expect("one entry");
            Ok((k.as_str(), v))
        }
        Some(o) if o.is_empty() => Err(format!("{v} does not have enough properties")),
        Some(_) => Err(format!("{v} has too many properties")),
        None => Err(format!("{v} is not of type 'object'")),
    }
}

/// `user` and `project` are Aodh's names for `user_id` and `project_id`.
fn field_name(name: &str, model: &Model) -> Result<String, String> {
    let name = match name {
        "user" => "user_id",
        "project" => "project_id",
        n => n,
    };
    if model.fields.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "'{name}' is not a field that can be queried; use one of {}",
            model.fields.join(", ")
        ))
    }
}

fn operand(field: &str, v: &Value) -> Result<Operand, String> {
    if TIMES.contains(&field) {
        let text = v.as_str().unwrap_or_default();
        return Instant::parse(text)
            .map(|t| Operand::Time(t.nanos()))
            .map_err(|_| format!("Failed to parse the timestamp value {v}"));
    }
    Ok(Operand::Plain(v.clone()))
}

fn node(v: &Value, model: &Model, depth: usize) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let (op, arg) = single(v)?;
    let lower = op.to_ascii_lowercase();
    match lower.as_str() {
        "and" | "or" => {
            let items = arg
                .as_array()
                .ok_or_else(|| format!("{arg} is not of type 'array'"))?;
            if items.len() < 2 {
                return Err(format!("{arg} is too short"));
            }
            let nodes = items
                .iter()
                .map(|i| node(i, model, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if lower == "and" {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            })
        }
        "not" => Ok(Node::Not(Box::new(node(arg, model, depth + 1)?))),
        "in" => {
            let (field, values) = single(arg)?;
            let field = field_name(field, model)?;
            let values = values
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{values} is not a non-empty array"))?;
            let values = values
                .iter()
                .map(|v| match v {
                    Value::String(_) | Value::Number(_) => operand(&field, v),
                    other => Err(format!("{other} is not of type 'string', 'number'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Node::In(field, values))
        }
        "=" | "!=" | "<" | "<=" | "=<" | ">" | ">=" | "=>" | "=~" => {
            let (field, value) = single(arg)?;
            let field = field_name(field, model)?;
            if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                return Err(format!("{value} is not of type 'string', 'number', 'boolean'"));
            }
            if lower == "=~" {
                let pattern = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                let regex = regex::RegexBuilder::new(&pattern)
                    .size_limit(1 << 20)
                    .nest_limit(MAX_DEPTH as u32)
                    .build()
                    .map_err(|e| format!("{value} is not a regular expression: {e}"))?;
                return Ok(Node::Matches(field, regex));
            }
            let comparison = match lower.as_str() {
                "=" => Comparison::Eq,
                "!=" => Comparison::Ne,
                "<" => Comparison::Lt,
                "<=" | "=<" => Comparison::Le,
                ">" => Comparison::Gt,
                _ => Comparison::Ge,
            };
            let value = operand(&field, value)?;
            Ok(Node::Compare(comparison, field, value))
        }
        _ => Err(format!(
            "{v} is not valid under any of the given schemas (operators: and, or, not, =, !=, <, <=, >, >=, =~, in)"
        )),
    }
}

fn orderby(v: &Value, model: &Model) -> Result<Vec<(String, bool)>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("{v} is not of type 'array'"))?;
    items
        .iter()
        .map(|item| {
            let (field, direction) = single(item)?;
            let field = field_name(field, model)?;
            match direction.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("asc") => Ok((field, false)),
                Some("desc") => Ok((field, true)),
                _ => Err(format!("{direction} does not match '(?i)^asc$|^desc$'")),
            }
        })
        .collect()
}

impl Node {
    fn holds(&self, row: &Value) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.holds(row)),
            Node::Or(nodes) => nodes.iter().any(|n| n.holds(row)),
            Node::Not(n) => !n.holds(row),
            Node::Compare(c, field, operand) => {
                compare(row.get(field), operand).is_some_and(|o| match c {
                    Comparison::Eq => o == Ordering::Equal,
                    Comparison::Ne => o != Ordering::Equal,
                    Comparison::Lt => o == Ordering::Less,
                    Comparison::Le => o != Ordering::Greater,
                    Comparison::Gt => o == Ordering::Greater,
                    Comparison::Ge => o != Ordering::Less,
                })
            }
            Node::In(field, operands) => operands
                .iter()
                .any(|o| compare(row.get(field), o) == Some(Ordering::Equal)),
            Node::Matches(field, regex) => match row.get(field) {
                Some(Value::String(s)) => regex.is_match(s),
                Some(Value::Null) | None => false,
                Some(other) => regex.is_match(&other.to_string()),
            },
        }
    }
}

/// How a row's value compares with an operand; `None` when they cannot be compared (a null,
/// or values of different kinds).
fn compare(value: Option<&Value>, operand: &Operand) -> Option<Ordering> {
    let value = value.filter(|v| !v.is_null())?;
    match operand {
        Operand::Time(t) => {
            let v = Instant::parse(value.as_str()?).ok()?.nanos();
            Some(v.cmp(t))
        }
        Operand::Plain(o) => plain_order(value, o).or_else(|| {
            // A number given as text (or the reverse), as SQL would convert it.
            let (a, b) = (number(value)?, number(o)?);
            a.partial_cmp(&b)
        }),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn plain_order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The order of two rows' values of `field` for `orderby`: nulls first, times as times.
fn order_values(field: &str, a: Option<&Value>, b: Option<&Value>) -> Ordering {
    if TIMES.contains(&field) {
        let t = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .and_then(|s| Instant::parse(s).ok())
                .map(|t| t.nanos())
        };
        if let (Some(x), Some(y)) = (t(a), t(b)) {
            return x.cmp(&y);
        }
    }
    super::page::json_order(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<Value> {
        vec![
            json!({"name": "cpu_high", "state": "alarm", "severity": "critical", "enabled": true, "project_id": "p1", "timestamp": "2024-05-01T12:00:00.000000+00:00"}),
            json!({"name": "cpu_low", "state": "ok", "severity": "low", "enabled": false, "project_id": null, "timestamp": "2024-05-02T12:00:00+00:00"}),
            json!({"name": "disk", "state": "insufficient data", "severity": "moderate", "enabled": true, "timestamp": "2024-05-03T00:00:00"}),
        ]
    }

    fn names(filter: Value, orderby: Option<Value>, limit: Option<i64>) -> Vec<String> {
        let mut body = json!({"filter": filter.to_string()});
        if let Some(o) = orderby {
            body["orderby"] = o.to_string().into();
        }
        if let Some(l) = limit {
            body["limit"] = l.into();
        }
        ComplexQuery::parse(&body, &ALARM)
            .unwrap()
            .apply(rows())
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn filters_order_and_limit_as_aodh_does() {
        assert_eq!(
            names(json!({"=": {"name": "cpu_high"}}), None, None),
            ["cpu_high"]
        );
        // Newest first by default.
        assert_eq!(
            names(json!({"=~": {"name": "^cpu"}}), None, None),
            ["cpu_low", "cpu_high"]
        );
        assert_eq!(
            names(
                json!({"OR": [{"=": {"state": "ok"}}, {"In": {"severity": ["critical", "moderate"]}}]}),
                Some(json!([{"name": "ASC"}])),
                Some(2)
            ),
            ["cpu_high", "cpu_low"]
        );
        assert_eq!(
            names(
                json!({"and": [{">": {"timestamp": "2024-05-01T13:00:00"}}, {"not": {"=": {"enabled": false}}}]}),
                None,
                None
            ),
            ["disk"]
        );
        // A null or absent field matches no comparison, not even !=.
        assert_eq!(
            names(json!({"!=": {"project": "p2"}}), None, None),
            ["cpu_high"]
        );
        assert_eq!(
            names(
                json!({"=<": {"timestamp": "2024-05-02T12:00:00Z"}}),
                Some(json!([{"timestamp": "asc"}])),
                None
            ),
            ["cpu_high", "cpu_low"]
        );
    }

    #[test]
    fn bad_queries_get_aodhs_messages() {
        let err = |body: Value| ComplexQuery::parse(&body, &ALARM).unwrap_err();
        assert!(err(json!({"filter": "{"})).starts_with("Filter expression not valid: "));
        assert!(err(json!({"filter": r#"{"=": {"colour": "red"}}"#}))
            .contains("'colour' is not a field"));
        assert!(err(json!({"filter": r#"{"and": [{"=": {"name": "a"}}]}"#})).contains("too short"));
        assert!(
            err(json!({"filter": r#"{"like": {"name": "a"}}"#})).contains("not valid under any")
        );
        assert!(
            err(json!({"filter": r#"{"=": {"name": "a", "state": "ok"}}"#}))
                .contains("too many properties")
        );
        assert!(err(json!({"filter": r#"{"in": {"name": []}}"#})).contains("non-empty"));
        assert!(
            err(json!({"filter": r#"{"=~": {"name": "("}}"#})).contains("not a regular expression")
        );
        assert_eq!(
            err(json!({"filter": r#"{">": {"timestamp": "soon"}}"#})),
            "Filter expression not valid: Failed to parse the timestamp value \"soon\""
        );
        assert!(err(json!({"orderby": r#"[{"name": "up"}]"#}))
            .starts_with("Order-by expression not valid: "));
        assert_eq!(err(json!({"limit": 0})), "Limit should be positive");
        assert!(err(json!({"filter": {"=": {"name": "a"}}})).contains("Wrong type"));
        assert!(err(json!({"colour": 1})).contains("Unknown attribute"));
        // Nesting is bounded: by the JSON reader, then by the tree's own limit.
        let deep = |n| (0..n).fold(json!({"=": {"name": "a"}}), |n, _| json!({"not": n}));
        assert!(err(json!({"filter": deep(200).to_string()})).contains("recursion limit"));
        assert!(err(json!({"filter": deep(60).to_string()})).contains("deeper than 50"));
        assert!(ComplexQuery::parse(&json!({"filter": deep(50).to_string()}), &ALARM).is_ok());
        // History names its own fields.
        assert!(ComplexQuery::parse(
            &json!({"filter": r#"{"=": {"on_behalf_of": "p"}}"#}),
            &ALARM_CHANGE
        )
        .is_ok());
        assert!(ComplexQuery::parse(
            &json!({"filter": r#"{"=": {"on_behalf_of": "p"}}"#}),
            &ALARM
        )
        .is_err());
    }
}
