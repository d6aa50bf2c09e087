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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
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
    /// `none`, `lz4`, `zstd`, `snappy` or `gzip`.
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
            c @ ("none" | "lz4" | "zstd" | "snappy" | "gzip") => c.to_owned(),
            other => {
                return Err(format!(
                "kafka:// publisher: compression={other:?}: use none, lz4, zstd, snappy or gzip"
            ))
            }
        };
        Ok(KafkaPublisherOptions {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            compression,
        })
    }
}

/// Hands each delivery report to the handle that sent the message.
struct Deliveries;

/// One worker handle's deliveries: each of its messages carries it, so a handle knows when
/// everything it sent is acknowledged without waiting for the other workers' messages.
#[derive(Default)]
struct Acks {
    /// Messages acknowledged or finally failed.
    done: AtomicU64,
    /// Of those, failed.
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Acks>;
    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, _)) = result {
            acks.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("kafka publisher: a message was not delivered: {e}");
        }
        acks.done.fetch_add(1, Ordering::Release);
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
        let producer = super::producer_config(&options.brokers, &options.compression)
            .create_with_context(Deliveries)
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
            payload: Vec::new(),
            inner: Vec::new(),
            value: Vec::new(),
            acks: Arc::default(),
            sent: 0,
            acks_failed_seen: 0,
        })
    }
}

struct KafkaHandle {
    shared: Arc<KafkaPublisher>,
    /// The notification's payload being built.
    payload: Vec<u8>,
    /// The notification (oslo's inner message) being built.
    inner: Vec<u8>,
    /// The message value being built (the envelope).
    value: Vec<u8>,
    /// This handle's deliveries.
    acks: Arc<Acks>,
    /// Messages this handle queued.
    sent: u64,
    /// Failures of this handle already reported by `durable`.
    acks_failed_seen: u64,
}

impl KafkaHandle {
    fn error(&self, message: String) -> PublishError {
        PublishError {
            target: self.shared.url.clone(),
            message,
            retry: true,
        }
    }

    /// The oslo 2.0 envelope around a `metering` notification carrying `samples`, into
    /// `self.value`; `timestamp` is the notification's.
    fn envelope(&mut self, samples: &[&Sample], timestamp: &str) {
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
        oslo_envelope(
            ("metering", timestamp),
            &self.payload,
            &mut self.inner,
            &mut self.value,
        );
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    fn send(&mut self, key: Option<&str>) -> Result<(), PublishError> {
        let value = self.value.as_slice();
        let mut record = BaseRecord::<str, [u8], Arc<Acks>>::with_opaque_to(
            &self.shared.topic,
            self.acks.clone(),
        )
        .payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.shared.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(self.error(format!("cannot queue a message: {e}"))),
            }
        }
    }
}

/// The time a notification is sent, as oslo writes it (`2024-05-01 12:00:00.123456`).
fn now() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    meterflow_engine::time::format_iso_naive(micros).replacen('T', " ", 1)
}

/// An oslo 2.0 envelope around a notification of `event_type` (`metering` or `event`, as
/// Ceilometer's notifier publisher names them) sent at `timestamp`, with `payload` (JSON),
/// written into `value` (`inner` holds the notification before it is quoted into it).
fn oslo_envelope(
    (event_type, timestamp): (&str, &str),
    payload: &[u8],
    inner: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    inner.clear();
    inner.extend_from_slice(b"{\"message_id\": \"");
    inner.extend_from_slice(meterflow_engine::wire::encode::uuid4().as_bytes());
    inner.extend_from_slice(b"\", \"publisher_id\": \"meterflow.publisher\", \"event_type\": \"");
    inner.extend_from_slice(event_type.as_bytes());
    inner.extend_from_slice(b"\", \"priority\": \"SAMPLE\", \"timestamp\": \"");
    inner.extend_from_slice(timestamp.as_bytes());
    inner.extend_from_slice(b"\", \"payload\": ");
    inner.extend_from_slice(payload);
    inner.extend_from_slice(b", \"_context\": {}}");
    value.clear();
    super::write_envelope(inner, value);
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
        let timestamp = now();
        for (resource, group) in groups {
            self.envelope(&group, &timestamp);
            self.send(Some(resource.as_str()))?;
        }
        Ok(())
    }

    /// One `event` notification per event (payload: a list holding the serialized event, as
    /// Ceilometer's notifier publisher sends them), keyed by the instance or resource the event
    /// is about when it names one, so that resource's events stay in order.
    fn publish_events(&mut self, events: &[Arc<Event>]) -> Result<(), PublishError> {
        let timestamp = now();
        for e in events {
            let payload = serde_json::Value::Array(vec![e.serialize()]).to_string();
            oslo_envelope(
                ("event", &timestamp),
                payload.as_bytes(),
                &mut self.inner,
                &mut self.value,
            );
            let key = e
                .text_trait("instance_id")
                .or_else(|| e.text_trait("resource_id"));
            self.send(key)?;
        }
        Ok(())
    }

    /// The messages are already queued (librdkafka sends them within `linger.ms`): the
    /// ticket is how many this handle has sent.
    fn flush_async(&mut self) -> Option<u64> {
        Some(self.sent)
    }

    fn durable(&mut self, ticket: u64) -> Result<bool, PublishError> {
        let failed = self.acks.failed.load(Ordering::Relaxed);
        if failed > self.acks_failed_seen {
            let new = failed - self.acks_failed_seen;
            self.acks_failed_seen = failed;
            return Err(self.error(format!("{new} message(s) were rejected by the broker")));
        }
        Ok(self.acks.done.load(Ordering::Acquire) >= ticket)
    }

    /// Waits until everything this handle sent is acknowledged (not the other workers'
    /// messages, as librdkafka's flush would).
    fn flush(&mut self) -> Result<(), PublishError> {
        let ticket = self.sent;
        let started = std::time::Instant::now();
        while !self.durable(ticket)? {
            if started.elapsed() >= FLUSH_TIMEOUT {
                return Err(self.error(format!(
                    "messages not acknowledged within {}s",
                    FLUSH_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_quote_the_notification() {
        let (mut inner, mut value) = (Vec::new(), Vec::new());
        oslo_envelope(
            ("metering", "2024-05-01 12:00:00.000001"),
            br#"[{"counter_name": "a\"b"}]"#,
            &mut inner,
            &mut value,
        );
        let outer: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        let message: serde_json::Value =
            serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(message["payload"][0]["counter_name"], "a\"b");
        assert_eq!(message["event_type"], "metering");
        assert_eq!(message["priority"], "SAMPLE");
        assert_eq!(message["timestamp"], "2024-05-01 12:00:00.000001");
        assert_eq!(message["_context"], serde_json::json!({}));
        assert_eq!(message["message_id"].as_str().unwrap().len(), 36);
    }

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
        let zstd = Url::parse("kafka://a:9092?topic=t&compression=zstd").unwrap();
        let o = KafkaPublisherOptions::from_url(&zstd).unwrap();
        assert_eq!(o.compression, "zstd");
        for (bad, needle) in [
            ("kafka://a:9092", "needs ?topic"),
            ("kafka://a:9092?topic=t&compression=brotli", "use none"),
            ("kafka://?topic=t", "HOST:PORT"),
            ("kafka://a:9092?topic=t&acks=0", "unknown option"),
        ] {
            let err = KafkaPublisherOptions::from_url(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
