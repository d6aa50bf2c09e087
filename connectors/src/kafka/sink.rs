//! The `kafka://HOST:PORT[,HOST:PORT]?topic=T[&compression=...]` publisher: samples as oslo
//! notifications (the 2.0 envelope, `event_type` `metering`, payload a list of samples, as
//! Ceilometer's notifier publisher sends them), one message per resource per batch, keyed by
//! the resource so a resource's samples stay in order on one partition. From an event sink,
//! events as `event` notifications, one per event.
//!
//! A flush waits until the broker has acknowledged every message (`acks=all`, idempotent
//! producer), so an input's offsets are committed only after its output is on the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meterflow_engine::component::{PublishError, Publisher, PublisherFactory};
use meterflow_engine::model::Event;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};
use meterflow_engine::{Sample, Sym};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::Url;

/// How long a flush waits for acknowledgements before reporting failure.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a `kafka://` publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaPublisherOptions {
    /// `HOST:PORT[,HOST:PORT]`.
    pub brokers: String,
    /// The topic (Ceilometer's notifier publisher uses `metering.sample`).
    pub topic: String,
    /// `none`, `lz4`, `snappy` or `gzip`.
    pub compression: String,
}

impl KafkaPublisherOptions {
    /// Reads the options from a publisher URL.
    pub fn from_url(url: &Url) -> Result<KafkaPublisherOptions, String> {
        url.reject_options(&["topic", "compression"])?;
        let brokers = url.target.trim_end_matches('/');
        if brokers.is_empty() || brokers.contains('/') {
            return Err(
                "kafka:// publisher: write kafka://HOST:PORT[,HOST:PORT]?topic=TOPIC".into(),
            );
        }
        let topic = url.option("topic").filter(|t| !t.is_empty()).ok_or(
            "kafka:// publisher needs ?topic=TOPIC (Ceilometer's notifier uses metering.sample)",
        )?;
        let compression = match url.option("compression").unwrap_or("lz4") {
            c @ ("none" | "lz4" | "snappy" | "gzip") => c.to_owned(),
            "zstd" => return Err("kafka:// publisher: compression=zstd is not built into this binary; use lz4, snappy, gzip or none".into()),
            other => return Err(format!("kafka:// publisher: compression={other:?}: use none, lz4, snappy or gzip")),
        };
        Ok(KafkaPublisherOptions {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            compression,
        })
    }
}

/// Counts messages the broker did not accept.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("kafka publisher: a message was not delivered: {e}");
        }
    }
}

/// An open `kafka://` publisher (one producer shared by every worker).
pub struct KafkaPublisher {
    url: String,
    topic: String,
    producer: ThreadedProducer<Deliveries>,
}

impl KafkaPublisher {
    /// Creates the producer.
    pub fn open(url: &str, options: &KafkaPublisherOptions) -> Result<KafkaPublisher, String> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .set("compression.type", &options.compression)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(Deliveries::default())
            .map_err(|e| format!("publisher {url}: cannot create a Kafka producer: {e}"))?;
        Ok(KafkaPublisher {
            url: url.to_owned(),
            topic: options.topic.clone(),
            producer,
        })
    }
}

impl PublisherFactory for KafkaPublisher {
    fn url(&self) -> &str {
        &self.url
    }

    fn handle(self: Arc<Self>) -> Box<dyn Publisher> {
        Box::new(KafkaHandle {
            shared: self,
            failed_seen: 0,
            payload: Vec::new(),
        })
    }
}

struct KafkaHandle {
    shared: Arc<KafkaPublisher>,
    failed_seen: u64,
    payload: Vec<u8>,
}

impl KafkaHandle {
    fn error(&self, message: String) -> PublishError {
        PublishError {
            target: self.shared.url.clone(),
            message,
            retry: true,
        }
    }

    /// The oslo 2.0 envelope around a `metering` notification carrying `samples`.
    fn envelope(&mut self, samples: &[&Sample]) -> String {
        self.payload.clear();
        self.payload.extend_from_slice(b"[");
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                self.payload.extend_from_slice(b", ");
            }
            write_sample(s, EncodeOptions { message_id: true }, &mut self.payload);
            self.payload.pop(); // the line's newline
        }
        self.payload.extend_from_slice(b"]");
        oslo_envelope("metering", &String::from_utf8_lossy(&self.payload))
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    fn send(&self, key: Option<&str>, value: &str) -> Result<(), PublishError> {
        let mut record = BaseRecord::<str, str>::to(&self.shared.topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.shared.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(self.error(format!("cannot queue a message: {e}"))),
            }
        }
    }
}

/// An oslo 2.0 envelope around a notification of `event_type` (`metering` or `event`, as
/// Ceilometer's notifier publisher names them) with `payload` (JSON text).
fn oslo_envelope(event_type: &str, payload: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let inner = format!(
        r#"{{"message_id": "{}", "publisher_id": "meterflow.publisher", "event_type": "{event_type}", "priority": "SAMPLE", "timestamp": "{}", "payload": {payload}, "_context": {{}}}}"#,
        meterflow_engine::wire::encode::uuid4(),
        meterflow_engine::time::format_iso_naive(now).replacen('T', " ", 1),
    );
    serde_json::json!({"oslo.version": "2.0", "oslo.message": inner}).to_string()
}

impl Publisher for KafkaHandle {
    fn publish(&mut self, samples: &[Sample]) -> Result<(), PublishError> {
        // One message per resource, in first-appearance order, keyed by the resource.
        let mut groups: Vec<(Sym, Vec<&Sample>)> = Vec::new();
        for s in samples {
            match groups.iter_mut().find(|(r, _)| *r == s.resource_id) {
                Some((_, group)) => group.push(s),
                None => groups.push((s.resource_id, vec![s])),
            }
        }
        for (resource, group) in groups {
            let value = self.envelope(&group);
            self.send(Some(resource.as_str()), &value)?;
        }
        Ok(())
    }

    /// One `event` notification per event (payload: a list holding the serialized event, as
    /// Ceilometer's notifier publisher sends them), keyed by the instance or resource the event
    /// is about when it names one, so that resource's events stay in order.
    fn publish_events(&mut self, events: &[Arc<Event>]) -> Result<(), PublishError> {
        for e in events {
            let payload = serde_json::Value::Array(vec![e.serialize()]).to_string();
            let value = oslo_envelope("event", &payload);
            let key = e
                .text_trait("instance_id")
                .or_else(|| e.text_trait("resource_id"));
            self.send(key, &value)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        self.shared.producer.flush(FLUSH_TIMEOUT).map_err(|e| {
            self.error(format!(
                "messages not acknowledged within {}s: {e}",
                FLUSH_TIMEOUT.as_secs()
            ))
        })?;
        let failed = self
            .shared
            .producer
            .context()
            .failed
            .load(Ordering::Relaxed);
        if failed > self.failed_seen {
            let new = failed - self.failed_seen;
            self.failed_seen = failed;
            return Err(self.error(format!("{new} message(s) were rejected by the broker")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_publisher_urls() {
        let o = KafkaPublisherOptions::from_url(
            &Url::parse("kafka://a:9092,b:9092?topic=metering.sample").unwrap(),
        )
        .unwrap();
        assert_eq!(
            (o.brokers.as_str(), o.topic.as_str(), o.compression.as_str()),
            ("a:9092,b:9092", "metering.sample", "lz4")
        );
        for (bad, needle) in [
            ("kafka://a:9092", "needs ?topic"),
            ("kafka://a:9092?topic=t&compression=zstd", "not built"),
            ("kafka://a:9092?topic=t&compression=brotli", "use none"),
            ("kafka://?topic=t", "HOST:PORT"),
            ("kafka://a:9092?topic=t&acks=0", "unknown option"),
        ] {
            let err = KafkaPublisherOptions::from_url(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
