//! Aodh's event alarms (`aodh/evaluator/event.py`): an event whose type matches the rule's
//! `event_type` (fnmatch) and whose traits satisfy every query condition fires the alarm.
//!
//! As Aodh: the event's project is the value of its `tenant_id` or `project_id` trait (the
//! last one listed), else `""`; conditions on `traits.NAME` compare the trait (by its dtype)
//! with the query value (by its `type`) using the operator, a missing trait or values of
//! different kinds satisfying only `ne` (Python's `None == x` is false, `None != x` true and
//! `None < x` raises, which Aodh catches); conditions on other fields never hold (Aodh's code cannot call their
//! operator, so such alarms never fire).

use meterflow_engine::model::{Event, TraitValue};
use serde_json::Value;

use super::definition::{EventCondition, EventRule};
use crate::glob::Glob;

/// The project an event belongs to, as Aodh works it out.
///
/// # Examples
/// ```
/// use meterflow_engine::model::{Event, Trait, TraitValue};
/// use meterflow_operators::alarm::event::project_of;
/// let t = |n: &str, v: &str| Trait { name: n.into(), dtype: 1, value: TraitValue::Text(v.into()) };
/// let e = Event { message_id: "m".into(), event_type: "x".into(), generated: String::new(),
///     traits: vec![t("project_id", "p1"), t("tenant_id", "p2")], raw: serde_json::json!({}) };
/// assert_eq!(project_of(&e), "p2");
/// ```
pub fn project_of(event: &Event) -> String {
    event
        .traits
        .iter()
        .rev()
        .find(|t| t.name == "tenant_id" || t.name == "project_id")
        .map(|t| match &t.value {
            TraitValue::Text(s) => s.clone(),
            TraitValue::Int(i) => i.to_string(),
            TraitValue::Float(f) => f.to_string(),
            TraitValue::None => String::new(),
        })
        .unwrap_or_default()
}

/// Whether `event` hits `rule`: its type matches and every condition holds.
pub fn hits(rule: &EventRule, event: &Event) -> bool {
    Glob::new(&rule.event_type).matches(&event.event_type)
        && rule.query.iter().all(|c| holds(c, event))
}

fn holds(condition: &EventCondition, event: &Event) -> bool {
    let Some(name) = condition.field.strip_prefix("traits.") else {
        return false;
    };
    let trait_value = event
        .traits
        .iter()
        .rev()
        .find(|t| t.name == name)
        .map_or(&TraitValue::None, |t| &t.value);
    let ordering = match (trait_value, &condition.value) {
        (TraitValue::Text(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (TraitValue::Int(a), Value::Number(b)) => match b.as_i64() {
            Some(b) => Some(a.cmp(&b)),
            None => (*a as f64).partial_cmp(&b.as_f64().unwrap_or(f64::NAN)),
        },
        (TraitValue::Float(a), Value::Number(b)) => a.partial_cmp(&b.as_f64().unwrap_or(f64::NAN)),
        (TraitValue::Int(a), Value::Bool(b)) => Some(a.cmp(&i64::from(*b))),
        _ => None,
    };
    condition.op.holds(ordering)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::threshold::Comparison;
    use meterflow_engine::model::Trait;
    use serde_json::json;

    fn event(traits: Vec<(&str, TraitValue)>) -> Event {
        Event {
            message_id: "m1".into(),
            event_type: "compute.instance.delete.end".into(),
            generated: "2024-05-01T12:00:00".into(),
            traits: traits
                .into_iter()
                .map(|(n, v)| Trait {
                    name: n.into(),
                    dtype: match v {
                        TraitValue::Int(_) => 2,
                        TraitValue::Float(_) => 3,
                        _ => 1,
                    },
                    value: v,
                })
                .collect(),
            raw: json!({}),
        }
    }

    fn rule(event_type: &str, query: Vec<(&str, Comparison, Value)>) -> EventRule {
        EventRule {
            event_type: event_type.into(),
            query: query
                .into_iter()
                .map(|(f, op, value)| EventCondition {
                    field: f.into(),
                    op,
                    value,
                })
                .collect(),
        }
    }

    #[test]
    fn type_pattern_and_every_condition() {
        let e = event(vec![
            ("instance_id", TraitValue::Text("vm-1".into())),
            ("memory_mb", TraitValue::Int(2048)),
        ]);
        assert!(hits(&rule("compute.instance.*", vec![]), &e));
        assert!(!hits(&rule("image.*", vec![]), &e));
        let id = |v: &str| ("traits.instance_id", Comparison::Eq, json!(v));
        assert!(hits(&rule("*", vec![id("vm-1")]), &e));
        assert!(!hits(&rule("*", vec![id("vm-2")]), &e));
        assert!(hits(
            &rule(
                "*",
                vec![
                    id("vm-1"),
                    ("traits.memory_mb", Comparison::Ge, json!(2048))
                ]
            ),
            &e
        ));
        assert!(!hits(
            &rule(
                "*",
                vec![
                    id("vm-1"),
                    ("traits.memory_mb", Comparison::Gt, json!(2048))
                ]
            ),
            &e
        ));
        // A missing trait, kinds that differ, a field that is not a trait: never hold.
        assert!(!hits(
            &rule("*", vec![("traits.state", Comparison::Eq, json!("x"))]),
            &e
        ));
        assert!(!hits(
            &rule(
                "*",
                vec![("traits.memory_mb", Comparison::Eq, json!("2048"))]
            ),
            &e
        ));
        assert!(!hits(
            &rule(
                "*",
                vec![(
                    "event_type",
                    Comparison::Eq,
                    json!("compute.instance.delete.end")
                )]
            ),
            &e
        ));
        // Python: None != "x".
        assert!(hits(
            &rule("*", vec![("traits.state", Comparison::Ne, json!("x"))]),
            &e
        ));
        assert_eq!(project_of(&e), "");
    }
}
