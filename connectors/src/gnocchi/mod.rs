//! Gnocchi-style storage: the `gnocchi://` publisher's options, Gnocchi's identifiers, and the
//! embedded Parquet store ([`store`]) that the aggregation operator writes and `meterflow
//! measures` / `serve` read.

pub mod resource_types;
pub mod resources;
pub mod search;
pub mod store;

use std::sync::Arc;

use crate::url::Url;

/// `gnocchi://[?archive_policy=NAME][&filter_project=ID][&resource_type=TYPE]`: samples become
/// measures of the metric (resource, meter) in the embedded store.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GnocchiOptions {
    /// Overrides every metric's archive policy (Ceilometer's `archive_policy` option).
    pub archive_policy: Option<String>,
    /// Samples of this project id are not stored (Ceilometer's `filter_project`, which names
    /// Gnocchi's own project; there is no Keystone to look the name up in, so give the id).
    pub filter_project: Option<String>,
    /// The resource type of new resources (default `generic`) when no resource definitions
    /// are given.
    pub resource_type: String,
    /// Ceilometer's `resources_definition_file` (a `gnocchi_resources.yaml`): resource types,
    /// metric policies and attributes per meter; meters it does not list are not stored.
    pub resources: Option<Arc<resources::ResourceDefinitions>>,
}

impl GnocchiOptions {
    /// Options Ceilometer's gnocchi publisher takes that have no meaning here (no remote
    /// Gnocchi, no Keystone); accepted and ignored so an unmodified pipeline.yaml validates.
    const IGNORED: [&'static str; 4] = [
        "timeout",
        "enable_filter_project",
        "filter_domain",
        "archive_policy_default",
    ];

    /// Reads the options of a `gnocchi://` URL.
    pub fn from_url(url: &Url) -> Result<GnocchiOptions, String> {
        let mut known = vec![
            "archive_policy",
            "filter_project",
            "resource_type",
            "resources_definition_file",
        ];
        known.extend(Self::IGNORED);
        url.reject_options(&known)?;
        if !url.target.is_empty() && url.target != "/" {
            return Err(format!(
                "gnocchi://{} names a remote Gnocchi; this build writes the embedded store under --store (use gnocchi:// with options only)",
                url.target
            ));
        }
        let non_empty = |key: &str| -> Result<Option<String>, String> {
            match url.option(key) {
                Some("") => Err(format!("option {key} needs a value, e.g. {key}=low")),
                v => Ok(v.map(str::to_owned)),
            }
        };
        Ok(GnocchiOptions {
            archive_policy: non_empty("archive_policy")?,
            filter_project: non_empty("filter_project")?,
            resource_type: non_empty("resource_type")?.unwrap_or_else(|| "generic".into()),
            resources: non_empty("resources_definition_file")?
                .map(|path| resources::ResourceDefinitions::from_path(&path).map(Arc::new))
                .transpose()?,
        })
    }
}

/// Gnocchi's namespace for resource ids that are not UUIDs (`gnocchi/utils.py`).
const RESOURCE_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("0a7a15ff-aa13-4ac2-897c-9bdf30ce175b");

/// meterflow's namespace for the ids of alarms a definition file names without `alarm_id`.
const ALARM_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("6d1f3c2e-52a4-4f0e-9a53-1c8e7b0d4a11");

/// The id of an alarm a definition file defines by name only: the same on every start, so
/// its state and history carry over.
///
/// # Examples
/// ```
/// use meterflow_connectors::gnocchi::alarm_uuid;
/// assert_eq!(alarm_uuid("cpu_high"), alarm_uuid("cpu_high"));
/// assert_ne!(alarm_uuid("cpu_high"), alarm_uuid("cpu_low"));
/// ```
pub fn alarm_uuid(name: &str) -> String {
    uuid::Uuid::new_v5(&ALARM_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// A random (version 4) UUID, hyphenated: request ids, history event ids.
///
/// # Examples
/// ```
/// let id = meterflow_connectors::gnocchi::random_uuid();
/// assert_eq!((id.len(), &id[14..15]), (36, "4"));
/// ```
pub fn random_uuid() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The resource id Gnocchi keys a resource by: Ceilometer replaces `/` by `_`.
///
/// # Examples
/// ```
/// assert_eq!(meterflow_connectors::gnocchi::resource_key("inst-1/vda"), "inst-1_vda");
/// ```
pub fn resource_key(original: &str) -> String {
    original.replace('/', "_")
}

/// What the key of a metric without a resource starts with (`POST /v1/metric` without
/// `resource_id`): each such metric is kept under a key of its own, `metric/UUID`, which no
/// resource id can be (resource ids have no `/`).
pub const STANDALONE: &str = "metric/";

/// Whether `key` is a metric's own key rather than a resource's.
pub fn is_standalone(key: &str) -> bool {
    key.starts_with(STANDALONE)
}

/// The resource UUID Gnocchi gives `id`: itself when it is a UUID, else uuid5 of the text.
///
/// # Examples
/// ```
/// use meterflow_connectors::gnocchi::resource_uuid;
/// let id = "cf7133e7-ea43-4d00-81b2-253bb3684198";
/// assert_eq!(resource_uuid(id), id);
/// assert_eq!(resource_uuid("host-1").len(), 36);
/// ```
pub fn resource_uuid(id: &str) -> String {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.hyphenated().to_string(),
        Err(_) => uuid::Uuid::new_v5(&RESOURCE_ID_NAMESPACE, format!("{id}\0\0").as_bytes())
            .hyphenated()
            .to_string(),
    }
}

/// `id` in canonical UUID form when it is a UUID (in any form Gnocchi accepts), else `None`.
///
/// # Examples
/// ```
/// use meterflow_connectors::gnocchi::canonical_uuid;
/// let id = "cf7133e7-ea43-4d00-81b2-253bb3684198";
/// assert_eq!(canonical_uuid("CF7133E7EA434D0081B2253BB3684198").as_deref(), Some(id));
/// assert_eq!(canonical_uuid("host-1"), None);
/// ```
pub fn canonical_uuid(id: &str) -> Option<String> {
    uuid::Uuid::try_parse(id)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// A metric's id: derived from its resource and name, so every run and every worker gives
/// the same metric the same id.
pub fn metric_uuid(resource_key: &str, metric: &str) -> String {
    let namespace = uuid::Uuid::new_v5(&RESOURCE_ID_NAMESPACE, b"meterflow-metric");
    uuid::Uuid::new_v5(&namespace, format!("{resource_key}\0{metric}").as_bytes())
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = GnocchiOptions::from_url(
            &Url::parse("gnocchi://?archive_policy=low&timeout=5").unwrap(),
        )
        .unwrap();
        assert_eq!(o.archive_policy.as_deref(), Some("low"));
        assert_eq!(o.resource_type, "generic");
        assert!(GnocchiOptions::from_url(&Url::parse("gnocchi://?colour=red").unwrap()).is_err());
        assert!(
            GnocchiOptions::from_url(&Url::parse("gnocchi://gnocchi.example:8041").unwrap())
                .unwrap_err()
                .contains("embedded store")
        );
        assert_eq!(metric_uuid("r", "cpu"), metric_uuid("r", "cpu"));
        assert_ne!(metric_uuid("r", "cpu"), metric_uuid("r", "cpux"));
    }
}
