//! Kafka: oslo.messaging's notification topics as an input, and a publisher writing samples
//! as notifications in the same format.

pub mod bench;
pub mod sink;
pub mod source;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::Url;

/// librdkafka's client callbacks: its errors logged once through `tracing`, without the
/// end-of-partition notices a bounded run (`eof=true`) asks for.
pub(crate) struct ConsumerLog;

impl ClientContext for ConsumerLog {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !end {
            tracing::warn!("kafka consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ConsumerLog {}

/// The consumer settings meterflow reads with (the engine's source and the bench's raw
/// consumer alike): offsets committed by hand, group `group`, starting at `offset` when the
/// group has none, end-of-partition reported when `eof`.
pub(crate) fn consumer_config(brokers: &str, group: &str, offset: &str, eof: bool) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", offset)
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "50")
        // librdkafka prefetches up to 64 MB; when that is full it waits this long before
        // fetching again (1 s by default: a consumer slower than the network then starves
        // for a second each time its queue fills).
        .set("fetch.queue.backoff.ms", "5");
    config
}

/// The producer settings meterflow publishes with (the `kafka://` publisher and the bench's
/// raw copy alike): every write acknowledged by all in-sync replicas, idempotent, batched
/// for up to 5 ms, compressed with `compression`.
pub(crate) fn producer_config(brokers: &str, compression: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("compression.type", compression)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    config
}

/// Appends oslo.messaging's Kafka envelope around the notification `inner` (JSON) to `value`:
/// `{"oslo.version": "2.0", "oslo.message": "<inner as a JSON string>"}`.
pub(crate) fn write_envelope(inner: &[u8], value: &mut Vec<u8>) {
    value.extend_from_slice(b"{\"oslo.version\": \"2.0\", \"oslo.message\": ");
    meterflow_engine::wire::encode::write_str(inner, value);
    value.push(b'}');
}

/// A validated `kafka://` input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `HOST:PORT[,HOST:PORT]`.
    pub brokers: String,
    /// Topics to consume (oslo services write `notifications.info`, polling agents
    /// `notifications.sample`).
    pub topics: Vec<String>,
    /// Consumer group; committed offsets are kept per group.
    pub group: String,
    /// Stop once every assigned partition is read to its end (bounded runs, tests, replays).
    pub eof: bool,
    /// Where a group with no committed offset starts: `earliest` (default) or `latest`.
    pub offset: String,
}

impl KafkaSpec {
    /// Parses `kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]?group=NAME[&eof=true][&offset=...]`.
    pub fn from_url(url: &Url) -> Result<KafkaSpec, String> {
        url.reject_options(&["group", "eof", "offset"])?;
        let (brokers, topics) = url
            .target
            .split_once('/')
            .unwrap_or((url.target.as_str(), ""));
        if brokers.is_empty() {
            return Err("kafka:// needs brokers: kafka://HOST:PORT/TOPIC?group=NAME".into());
        }
        let topics: Vec<String> = topics
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if topics.is_empty() {
            return Err(format!("kafka://{brokers}: name the topic(s) after the brokers, e.g. kafka://{brokers}/notifications.sample"));
        }
        let eof = url.flag("eof")?;
        let offset = match url.option("offset") {
            None => "earliest".to_owned(),
            Some(o @ ("earliest" | "latest")) => o.to_owned(),
            Some(other) => {
                return Err(format!(
                    "kafka://: offset={other:?}: use earliest or latest"
                ))
            }
        };
        Ok(KafkaSpec {
            brokers: brokers.to_owned(),
            topics,
            group: url
                .option("group")
                .filter(|g| !g.is_empty())
                .unwrap_or("meterflow")
                .to_owned(),
            eof,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kafka_urls() {
        let spec = KafkaSpec::from_url(
            &Url::parse(
                "kafka://a:9092,b:9092/notifications.info,notifications.sample?group=mf&eof=true",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(spec.brokers, "a:9092,b:9092");
        assert_eq!(spec.topics, ["notifications.info", "notifications.sample"]);
        assert_eq!(
            (spec.group.as_str(), spec.eof, spec.offset.as_str()),
            ("mf", true, "earliest")
        );
        for (bad, needle) in [
            ("kafka://a:9092", "name the topic"),
            ("kafka:///t", "needs brokers"),
            ("kafka://a:9092/t?offset=middle", "earliest or latest"),
            ("kafka://a:9092/t?partition=3", "unknown option"),
        ] {
            let err = KafkaSpec::from_url(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
