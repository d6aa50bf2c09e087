//! `gnocchi://` in an event sink: what Ceilometer's gnocchi publisher does with events.
//!
//! The first resource definition (of the publisher's `resources_definition_file`, else the
//! shipped `gnocchi_resources.yaml`) whose `event_create`, `event_delete` or `event_update`
//! pattern matches the event type decides, checked in that order within a definition:
//! - create: the resource is created with the `event_attributes` read from the event's traits
//!   (a resource created before keeps its first creation, as Gnocchi refuses a second one);
//! - delete: the resource, and every resource of each `event_associated_resources` type that
//!   its search filter (`%s` = the resource id) finds, get `ended_at`;
//! - update: nothing, as in Ceilometer.
//!
//! `ended_at` is the event's `generated` time, not the wall clock as in Ceilometer, so that a
//! replayed input gives the same store. The changes are committed to the store at the end of
//! each epoch, before a Kafka input's offsets are.

use std::sync::Arc;

use meterflow_connectors::gnocchi::resource_key;
use meterflow_connectors::gnocchi::resources::{ResourceDefinitions, ResourceEventSpec};
use meterflow_connectors::gnocchi::search::Filter;
use meterflow_connectors::gnocchi::store::{
    Checkpoint, Partition, ResourceOp, ResourceRecord, ResourceState, ResourceView, Store,
    StoreError,
};
use meterflow_engine::model::{Event, TraitValue};
use meterflow_operators::glob::Glob;
use serde_json::Value;

/// One definition's event rules, compiled.
#[derive(Debug)]
struct Rules {
    resource_type: String,
    create: Vec<Glob>,
    delete: Vec<Glob>,
    update: Vec<Glob>,
    spec: ResourceEventSpec,
}

/// What an event does to resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `event_create`.
    Create,
    /// `event_delete`.
    Delete,
    /// `event_update` (nothing is done).
    Update,
}

/// The resource-event rules of one `gnocchi://` publisher, shared by the workers.
#[derive(Debug)]
pub struct ResourceEventRules {
    rules: Vec<Rules>,
}

impl ResourceEventRules {
    /// Compiles the `event_*` keys of `definitions`.
    pub fn new(definitions: &ResourceDefinitions) -> ResourceEventRules {
        let globs = |p: &[String]| p.iter().map(|p| Glob::new(p)).collect();
        ResourceEventRules {
            rules: definitions
                .resources
                .iter()
                .map(|d| Rules {
                    resource_type: d.resource_type.clone(),
                    create: globs(&d.events.create),
                    delete: globs(&d.events.delete),
                    update: globs(&d.events.update),
                    spec: d.events.clone(),
                })
                .collect(),
        }
    }

    /// The rules for `event_type` and what they do, as Ceilometer's `event_match` finds them.
    fn find(&self, event_type: &str) -> Option<(&Rules, Operation)> {
        self.rules.iter().find_map(|r| {
            let any = |g: &[Glob]| g.iter().any(|g| g.matches(event_type));
            if any(&r.create) {
                Some((r, Operation::Create))
            } else if any(&r.delete) {
                Some((r, Operation::Delete))
            } else if any(&r.update) {
                Some((r, Operation::Update))
            } else {
                None
            }
        })
    }
}

/// One worker's resource events for one `gnocchi://` publisher: what its events did, held
/// until [`ResourceEvents::commit`].
pub struct ResourceEvents {
    rules: Arc<ResourceEventRules>,
    store: Arc<Store>,
    partition: Partition,
    pending: Checkpoint,
}

impl ResourceEvents {
    /// A worker's handle; `partition` names its files (the worker and the worker count).
    pub fn new(
        rules: Arc<ResourceEventRules>,
        store: Arc<Store>,
        partition: Partition,
    ) -> ResourceEvents {
        ResourceEvents {
            rules,
            store,
            partition,
            pending: Checkpoint::default(),
        }
    }

    /// Applies one event; `Ok(None)` when no definition takes its type. An error says why the
    /// event could not be applied (no id trait, no parseable time).
    pub fn take(&mut self, event: &Event) -> Result<Option<Operation>, String> {
        let Some((rules, operation)) = self.rules.find(&event.event_type) else {
            return Ok(None);
        };
        if operation == Operation::Update {
            return Ok(Some(operation));
        }
        let mut attributes = serde_json::Map::new();
        for (attribute, trait_name) in &rules.spec.attributes {
            let value = event
                .traits
                .iter()
                .find(|t| &t.name == trait_name)
                .and_then(|t| match &t.value {
                    TraitValue::Int(i) => Some(Value::from(*i)),
                    TraitValue::Float(f) => Some(Value::from(*f)),
                    TraitValue::Text(s) => Some(Value::from(s.as_str())),
                    TraitValue::None => None,
                });
            if let Some(v) = value {
                attributes.insert(attribute.clone(), v);
            }
        }
        let id = match attributes.remove("id") {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => {
                return Err(format!(
                    "event {} ({}): no trait {} for the {} resource's id (event_attributes of resource type {}); check the event definitions",
                    event.message_id,
                    event.event_type,
                    rules
                        .spec
                        .attributes
                        .iter()
                        .find(|(a, _)| a == "id")
                        .map_or("id", |(_, t)| t.as_str()),
                    rules.resource_type,
                    rules.resource_type
                ))
            }
        };
        let at_ns = meterflow_engine::time::parse_micros(&event.generated)
            .and_then(|us| us.checked_mul(1000))
            .ok_or_else(|| {
                format!(
                    "event {} ({}): generated {:?} is not a time",
                    event.message_id, event.event_type, event.generated
                )
            })?;
        let key = resource_key(&id);
        match operation {
            Operation::Create => self.pending.resources.push(ResourceRecord {
                resource_id: key,
                resource_type: rules.resource_type.clone(),
                op: ResourceOp::Create,
                attributes: (!attributes.is_empty()).then(|| Value::Object(attributes).to_string()),
                at_ns,
            }),
            Operation::Delete => {
                let mut ended = vec![(key, rules.resource_type.clone())];
                for (kind, query) in &rules.spec.associated {
                    ended.extend(
                        self.associated(kind, &query.replace("%s", &id))?
                            .into_iter()
                            .map(|k| (k, kind.clone())),
                    );
                }
                for (resource_id, resource_type) in ended {
                    self.pending.resources.push(ResourceRecord {
                        resource_id,
                        resource_type,
                        op: ResourceOp::End,
                        attributes: None,
                        at_ns,
                    });
                }
            }
            Operation::Update => {}
        }
        Ok(Some(operation))
    }

    /// The keys of the resources of type `kind` that `query` finds, matched as the API shows
    /// them: those with metrics in the store and those events created (committed, or held
    /// here).
    fn associated(&self, kind: &str, query: &str) -> Result<Vec<String>, String> {
        let filter = serde_json::from_str::<Value>(query)
            .map_err(|e| e.to_string())
            .and_then(|v| Filter::parse(&v))
            .map_err(|e| format!("event_associated_resources {kind}: {e}: {query}"))?;
        let catalog = self.store.catalog().map_err(|e| e.to_string())?;
        let mut found: Vec<String> = catalog
            .resources()
            .into_iter()
            .filter(|view| view.resource_type() == kind && filter.matches(&view.to_json()))
            .map(|view| view.key.to_owned())
            .collect();
        for r in self
            .pending
            .resources
            .iter()
            .filter(|r| r.op == ResourceOp::Create)
        {
            if found.contains(&r.resource_id) || catalog.resource_view(&r.resource_id).is_some() {
                continue;
            }
            let mut state = ResourceState::default();
            state.apply(r);
            let view = ResourceView {
                key: &r.resource_id,
                metrics: Vec::new(),
                state: Some(&state),
            };
            if view.resource_type() == kind && filter.matches(&view.to_json()) {
                found.push(r.resource_id.clone());
            }
        }
        Ok(found)
    }

    /// Commits what the events since the last commit did.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.store
            .commit(self.partition, &mut self.pending)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_engine::model::Trait;

    const DEFINITIONS: &str = r#"
resources:
  - resource_type: instance
    metrics: [cpu]
    event_delete: compute.instance.delete.start
    event_attributes: {id: instance_id}
    event_associated_resources:
      instance_disk: '{"=": {"instance_id": "%s"}}'
  - resource_type: instance_disk
    metrics: [disk.device.read.bytes]
    attributes: {instance_id: resource_metadata.instance_id}
  - resource_type: volume
    metrics: [volume.size]
    event_create: volume.create.end
    event_delete: [volume.delete.end]
    event_update: volume.transfer.*
    event_attributes: {id: resource_id, project_id: project_id}
"#;

    fn event(event_type: &str, generated: &str, traits: &[(&str, &str)]) -> Event {
        Event {
            message_id: "m".into(),
            event_type: event_type.into(),
            generated: generated.into(),
            traits: traits
                .iter()
                .map(|(n, v)| Trait {
                    name: (*n).into(),
                    dtype: 1,
                    value: TraitValue::Text((*v).into()),
                })
                .collect(),
            raw: Value::Null,
        }
    }

    #[test]
    fn creates_ends_and_ignores_as_ceilometer_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let definitions = ResourceDefinitions::from_yaml(DEFINITIONS, "test").unwrap();
        let rules = Arc::new(ResourceEventRules::new(&definitions));
        let mut events =
            ResourceEvents::new(rules, store.clone(), Partition { index: 0, count: 1 });
        let create = event(
            "volume.create.end",
            "2024-05-01T10:00:00",
            &[("resource_id", "v1"), ("project_id", "p1")],
        );
        assert_eq!(events.take(&create), Ok(Some(Operation::Create)));
        let update = event("volume.transfer.accept.end", "2024-05-01T10:01:00", &[]);
        assert_eq!(events.take(&update), Ok(Some(Operation::Update)));
        let other = event("compute.instance.update", "2024-05-01T10:01:00", &[]);
        assert_eq!(events.take(&other), Ok(None));
        let no_id = event("volume.delete.end", "2024-05-01T10:02:00", &[]);
        assert!(events
            .take(&no_id)
            .unwrap_err()
            .contains("no trait resource_id"));
        events.commit().unwrap();
        let delete = event(
            "volume.delete.end",
            "2024-05-01T11:00:00",
            &[("resource_id", "v1")],
        );
        assert_eq!(events.take(&delete), Ok(Some(Operation::Delete)));
        // A replay of the creation changes nothing.
        assert_eq!(events.take(&create), Ok(Some(Operation::Create)));
        events.commit().unwrap();
        let states = store.resource_states().unwrap();
        let v1 = &states["v1"];
        assert_eq!(v1.resource_type, "volume");
        assert_eq!(
            v1.created,
            Some((
                1_714_557_600_000_000_000,
                Some(r#"{"project_id":"p1"}"#.into())
            ))
        );
        assert_eq!(v1.ended_at_ns, Some(1_714_561_200_000_000_000));
        assert_eq!(states.len(), 1);
    }
}
