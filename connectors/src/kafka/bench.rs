//! What `meterflow bench --kafka` needs of a broker besides the engine's own source and
//! publisher: fresh topics, loading a topic with notifications in oslo's envelope, and the raw
//! consume rate of a topic (a plain rdkafka consumer that only counts), the ceiling the
//! engine's end-to-end rate is compared with, and the raw copy rate (consume and produce again,
//! no processing), the most an engine could do on the same broker and machine.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// How long any one broker operation may take before the bench gives up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Creates `topics` with `partitions` partitions each.
pub fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("kafka://{brokers}: cannot create an admin client: {e}"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let results = runtime
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(TIMEOUT))))
        .map_err(|e| {
            format!("kafka://{brokers}: creating topics failed: {e}; is the broker up?")
        })?;
    for r in results {
        r.map_err(|(topic, e)| format!("kafka://{brokers}: cannot create topic {topic}: {e}"))?;
    }
    Ok(())
}

/// Wraps a notification (one JSON object) in oslo.messaging's Kafka envelope, with an empty
/// `_context`, as OpenStack services and Ceilometer's agents write them.
pub fn oslo_envelope(notification: &str) -> String {
    let inner = match notification.trim().strip_prefix('{') {
        Some(rest) => format!("{{\"_context\": {{}}, {rest}"),
        None => notification.to_owned(),
    };
    let mut value = Vec::with_capacity(inner.len() + inner.len() / 8 + 40);
    super::write_envelope(inner.as_bytes(), &mut value);
    String::from_utf8(value).expect("JSON text of UTF-8 text is UTF-8")
}

/// Produces each of `values` as one message to `topic` (lz4, round-robin over partitions)
/// and waits until the broker has them all.
pub fn produce<'a>(
    brokers: &str,
    topic: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<u64, String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .map_err(|e| format!("kafka://{brokers}: cannot create a producer: {e}"))?;
    let mut n = 0;
    for value in values {
        let record = BaseRecord::<(), str>::to(topic).payload(value);
        send(&producer, record).map_err(|e| format!("kafka://{brokers}/{topic}: {e}"))?;
        n += 1;
        if n % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(TIMEOUT)
        .map_err(|e| format!("kafka://{brokers}/{topic}: not acknowledged: {e}"))?;
    Ok(n)
}

/// Enqueues `record`, waiting for room while the producer's queue is full.
fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// What a raw consume (or copy) of a topic read.
#[derive(Clone, Copy, Debug)]
pub struct RawConsume {
    /// Messages read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// From the first message to the last (the group join before it is not counted); for a
    /// copy, to the broker's acknowledgement of the last message written.
    pub elapsed: Duration,
}

/// Reads `topic` from the start to its end with a plain consumer (a fresh group, the engine's
/// fetch settings) that only counts messages and bytes.
pub fn raw_consume(brokers: &str, topic: &str, group: &str) -> Result<RawConsume, String> {
    read_all(brokers, topic, group, |_| Ok(()))
}

/// Reads `topic` from the start to its end as [`raw_consume`] does and writes every message
/// unchanged to `to` with the `kafka://` publisher's producer settings (lz4), until the broker
/// has acknowledged them all: the Kafka side of an end-to-end run with no processing at all,
/// the most any engine can do on this broker and machine.
pub fn raw_copy(brokers: &str, topic: &str, to: &str, group: &str) -> Result<RawConsume, String> {
    let producer: BaseProducer = super::producer_config(brokers, "lz4")
        .create()
        .map_err(|e| format!("kafka://{brokers}: cannot create a producer: {e}"))?;
    let mut read = read_all(brokers, topic, group, |m| {
        let mut record = BaseRecord::<[u8], [u8]>::to(to).payload(m.payload().unwrap_or_default());
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        send(&producer, record).map_err(|e| format!("kafka://{brokers}/{to}: {e}"))?;
        producer.poll(Duration::ZERO);
        Ok(())
    })?;
    let flushing = Instant::now();
    producer
        .flush(TIMEOUT)
        .map_err(|e| format!("kafka://{brokers}/{to}: not acknowledged: {e}"))?;
    read.elapsed += flushing.elapsed();
    Ok(read)
}

/// Reads `topic` from the start to its end, passing each message to `each`.
fn read_all(
    brokers: &str,
    topic: &str,
    group: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), String>,
) -> Result<RawConsume, String> {
    let consumer: BaseConsumer<super::ConsumerLog> =
        super::consumer_config(brokers, group, "earliest", true)
            .create_with_context(super::ConsumerLog)
            .map_err(|e| format!("kafka://{brokers}: cannot create a consumer: {e}"))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| format!("kafka://{brokers}/{topic}: {e}"))?;
    let started = Instant::now();
    let mut first = None;
    let mut last = started;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut at_end = std::collections::HashSet::new();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                at_end.remove(&m.partition());
                messages += 1;
                bytes += m.payload_len() as u64;
                each(&m)?;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                let assigned = consumer.assignment().map_or(0, |a| a.count());
                if messages > 0 && assigned > 0 && at_end.len() >= assigned {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!("raw read of {topic}: {e}"),
            None if started.elapsed() > TIMEOUT && messages == 0 => {
                return Err(format!(
                    "kafka://{brokers}/{topic}: nothing read within {}s",
                    TIMEOUT.as_secs()
                ))
            }
            None => {}
        }
    }
    Ok(RawConsume {
        messages,
        bytes,
        elapsed: first.map_or(Duration::ZERO, |f| last.duration_since(f)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_the_notification_and_a_context() {
        let v: serde_json::Value =
            serde_json::from_str(&oslo_envelope(r#"{"event_type": "x", "payload": {}}"#)).unwrap();
        assert_eq!(v["oslo.version"], "2.0");
        let inner: serde_json::Value =
            serde_json::from_str(v["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner,
            serde_json::json!({"_context": {}, "event_type": "x", "payload": {}})
        );
    }
}
