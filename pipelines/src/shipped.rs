//! The definition files meterflow ships (`pipelines/examples/definitions/`), embedded so that
//! a pipeline definition without `meter_definitions:` / `event_definitions:` turns nova,
//! cinder, glance, neutron and swift notifications into samples and events as Ceilometer's
//! defaults do.

/// `meters.d/*.yaml`, in file-name order (the order Ceilometer reads a `meters.d` directory).
pub const METER_DEFINITIONS: [(&str, &str); 5] = [
    (
        "meters.d/cinder.yaml",
        include_str!("../examples/definitions/meters.d/cinder.yaml"),
    ),
    (
        "meters.d/glance.yaml",
        include_str!("../examples/definitions/meters.d/glance.yaml"),
    ),
    (
        "meters.d/neutron.yaml",
        include_str!("../examples/definitions/meters.d/neutron.yaml"),
    ),
    (
        "meters.d/nova.yaml",
        include_str!("../examples/definitions/meters.d/nova.yaml"),
    ),
    (
        "meters.d/swift.yaml",
        include_str!("../examples/definitions/meters.d/swift.yaml"),
    ),
];

/// `event_definitions.yaml`.
pub const EVENT_DEFINITIONS: [(&str, &str); 1] = [(
    "event_definitions.yaml",
    include_str!("../examples/definitions/event_definitions.yaml"),
)];

/// `gnocchi_resources.yaml`: what events published to `gnocchi://` do to resources when the
/// publisher names no `resources_definition_file` (as Ceilometer falls back to its own).
pub const GNOCCHI_RESOURCES: (&str, &str) = (
    "the shipped gnocchi_resources.yaml",
    include_str!("../examples/definitions/gnocchi_resources.yaml"),
);

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_operators::event::EventDefinitions;
    use meterflow_operators::notification::meters::MeterDefinitions;

    /// Plans read the shipped definitions once and without reporting their problems, so
    /// they must have none.
    #[test]
    fn shipped_definitions_load_without_problems() {
        let files = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect()
        };
        let (meters, problems) = MeterDefinitions::load(&files(&METER_DEFINITIONS));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(meters.len() > 20);
        let (_, problems) = EventDefinitions::load(&files(&EVENT_DEFINITIONS), false);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
