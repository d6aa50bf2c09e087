//! meterflow-connectors: where samples come from and where they go.
//!
//! # Architecture
//! Sources turn an input URL into [`meterflow_engine::chunk::Chunk`]s of whole lines
//! ([`file::source`]); publishers turn a publisher URL from a sink into a
//! [`meterflow_engine::component::PublisherFactory`] that hands each worker its own buffered
//! writer ([`file::sink`], [`log`]); `gnocchi://` feeds the dataflow's aggregation operator,
//! which writes the embedded store ([`gnocchi::store`]). Both registries are explicit lists ([`INPUTS`],
//! [`PUBLISHERS`]) that the planner validates against and `meterflow list` prints; schemes
//! whose connector has not landed yet are listed with the issue that adds them and fail
//! validation with that message.
//!
//! # Example
//! ```
//! use meterflow_connectors::{parse_publisher, Url};
//! let url = Url::parse("file:///tmp/out.jsonl?message_id=true").unwrap();
//! assert_eq!(url.scheme, "file");
//! assert!(parse_publisher("file:///tmp/out.jsonl").is_ok());
//! assert!(parse_publisher("gnocchi://?archive_policy=low").is_ok());
//! assert!(parse_publisher("udp://127.0.0.1:4952").unwrap_err().contains("not yet supported"));
//! ```

pub mod file;
pub mod gnocchi;
pub mod kafka;
pub mod log;
pub mod notify;
pub mod poll;
mod url;

use std::sync::Arc;

use meterflow_engine::component::PublisherFactory;

pub use url::Url;

/// A publisher URL that validated; [`PublisherSpec::open`] opens it for a run.
#[derive(Clone, Debug, PartialEq)]
pub enum PublisherSpec {
    /// `file://PATH`: JSONL sample dicts appended to a file.
    File(file::sink::FileOptions),
    /// `log://`: each sample logged on stderr.
    Log,
    /// `kafka://HOST:PORT?topic=T`: samples as oslo notifications on a Kafka topic.
    Kafka(kafka::sink::KafkaPublisherOptions),
    /// `gnocchi://`: samples become measures aggregated into the embedded store. The dataflow
    /// routes them to its aggregation operator; there is nothing to open here.
    Gnocchi(gnocchi::GnocchiOptions),
}

impl PublisherSpec {
    /// Opens the publisher (creates the file, ...); `None` for `gnocchi://`, which the
    /// dataflow's aggregation operator serves.
    pub fn open(&self, url: &str) -> Result<Option<Arc<dyn PublisherFactory>>, String> {
        Ok(Some(match self {
            PublisherSpec::File(options) => {
                Arc::new(file::sink::FilePublisher::open(url, options.clone())?)
            }
            PublisherSpec::Log => Arc::new(log::LogPublisher::new(url)),
            PublisherSpec::Kafka(options) => {
                Arc::new(kafka::sink::KafkaPublisher::open(url, options)?)
            }
            PublisherSpec::Gnocchi(_) => return Ok(None),
        }))
    }
}

/// How far a scheme's connector is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Supported,
    /// Accepted by the parser, not yet implemented; the text says where it lands.
    Planned(&'static str),
}

/// A registry entry: a URL scheme, what it does and whether it works yet.
#[derive(Clone, Copy, Debug)]
pub struct Scheme {
    /// The scheme (`file`, `kafka`, ...).
    pub scheme: &'static str,
    /// One line for `meterflow list`.
    pub description: &'static str,
    /// Supported or planned.
    pub status: Status,
}

const fn scheme(scheme: &'static str, description: &'static str, status: Status) -> Scheme {
    Scheme {
        scheme,
        description,
        status,
    }
}

/// Publisher schemes (the URLs in a sink's `publishers`).
pub const PUBLISHERS: &[Scheme] = &[
    scheme(
        "file",
        "JSONL, one Ceilometer sample dict per line, appended (?message_id=true adds ids)",
        Status::Supported,
    ),
    scheme("log", "each sample logged on stderr", Status::Supported),
    scheme(
        "gnocchi",
        "gnocchi://[?archive_policy=NAME][&filter_project=ID][&resource_type=T]: measures aggregated by archive policy into the embedded store (--store DIR)",
        Status::Supported,
    ),
    scheme(
        "kafka",
        "kafka://HOST:PORT?topic=T[&compression=lz4|snappy|gzip|none]: oslo metering notifications keyed by resource, acknowledged before input offsets are committed",
        Status::Supported,
    ),
    scheme(
        "notifier",
        "oslo notifications on the message bus",
        Status::Planned("the Kafka backbone (issue 4)"),
    ),
    scheme(
        "http",
        "POST of JSON sample lists",
        Status::Planned("a later connector issue"),
    ),
    scheme(
        "https",
        "POST of JSON sample lists over TLS",
        Status::Planned("a later connector issue"),
    ),
    scheme(
        "udp",
        "msgpack datagrams",
        Status::Planned("a later connector issue"),
    ),
    scheme(
        "tcp",
        "length-prefixed msgpack",
        Status::Planned("a later connector issue"),
    ),
    scheme(
        "prometheus",
        "Prometheus pushgateway text format",
        Status::Planned("a later connector issue"),
    ),
    scheme(
        "zaqar",
        "Zaqar queues",
        Status::Planned("a later connector issue"),
    ),
];

/// Input schemes (`meterflow run --input URL`).
pub const INPUTS: &[Scheme] = &[
    scheme(
        "file",
        "JSONL file (a plain path works too): oslo notifications or bare sample dicts",
        Status::Supported,
    ),
    scheme("-", "standard input, JSONL", Status::Supported),
    scheme("poll", "built-in pollsters: poll://host?interval=SECONDS[&count=N] samples this machine from /proc; poll://http/HOST:PORT/PATH?interval=SECONDS[&event_type=T] polls a JSON document into a notification for the meter definitions", Status::Supported),
    scheme(
        "kafka",
        "kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]?group=NAME[&eof=true][&offset=earliest|latest]: oslo notifications (2.0 envelope) or plain JSON; offsets committed once the output is durable",
        Status::Supported,
    ),
];

/// Validates a publisher URL (Ceilometer accepts `name` as `name://`).
pub fn parse_publisher(text: &str) -> Result<PublisherSpec, String> {
    let url = Url::parse(text)?;
    let known = || {
        PUBLISHERS
            .iter()
            .map(|s| s.scheme)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(entry) = PUBLISHERS.iter().find(|s| s.scheme == url.scheme) else {
        return Err(format!(
            "unknown publisher scheme {:?} (known: {})",
            url.scheme,
            known()
        ));
    };
    match (entry.status, entry.scheme) {
        (Status::Planned(by), _) => Err(format!(
            "publisher {:?} is not yet supported by this build; it lands with {by}. Supported now: file://PATH, log://, kafka://HOST:PORT?topic=T, gnocchi://",
            url.scheme
        )),
        (Status::Supported, "file") => file::sink::FileOptions::from_url(&url).map(PublisherSpec::File),
        (Status::Supported, "kafka") => kafka::sink::KafkaPublisherOptions::from_url(&url).map(PublisherSpec::Kafka),
        (Status::Supported, "gnocchi") => gnocchi::GnocchiOptions::from_url(&url).map(PublisherSpec::Gnocchi),
        (Status::Supported, "log") => {
            url.reject_options(&[])?;
            Ok(PublisherSpec::Log)
        }
        (Status::Supported, other) => Err(format!(
            "publisher {other}:// is registered but has no builder (a bug: please report it)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_are_unique() {
        for list in [PUBLISHERS, INPUTS] {
            let mut names: Vec<_> = list.iter().map(|s| s.scheme).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), list.len());
        }
    }

    #[test]
    fn publisher_errors_are_clear() {
        assert!(parse_publisher("smtp://x")
            .unwrap_err()
            .contains("known: file, log"));
        assert!(parse_publisher("notifier://?topic=metering")
            .unwrap_err()
            .contains("issue 4"));
        assert!(parse_publisher("file://").unwrap_err().contains("path"));
        assert!(parse_publisher("log://?x=1").unwrap_err().contains("x"));
        assert_eq!(parse_publisher("log").unwrap(), PublisherSpec::Log);
    }
}
