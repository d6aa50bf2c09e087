//! The Kafka source: a consumer group member whose messages become chunks of lines, with
//! offsets committed only after the chunk holding them has been processed and published.
//!
//! Each message value is one notification (oslo.messaging's 2.0 envelope or plain JSON); raw
//! newlines in it (only legal as JSON whitespace) are turned into spaces so a message is
//! always one line. An idle poll yields an empty chunk so the dataflow keeps moving and
//! commits keep flowing.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meterflow_engine::chunk::{Chunk, ChunkSource, Positions, SourcePosition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{consumer_config, ConsumerLog, KafkaSpec};

/// How long a poll waits for a message.
const POLL: Duration = Duration::from_millis(100);
/// How long to wait for the group to assign partitions before giving up (bounded runs).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(60);

/// A Kafka consumer as a [`ChunkSource`].
pub struct KafkaSource {
    consumer: BaseConsumer<ConsumerLog>,
    spec: KafkaSpec,
    input: u32,
    target: usize,
    /// Highest offset per (topic, partition) in each chunk not yet known to be processed.
    pending: BTreeMap<u64, BTreeMap<(String, i32), i64>>,
    /// Per (topic, partition), the offset after the last message handed out.
    next: BTreeMap<(String, i32), i64>,
    /// Where a checkpoint said to read on from: earlier messages (delivered again because
    /// the group's commit did not reach the checkpoint) are skipped.
    resume: Vec<(String, i32, i64)>,
    /// Messages skipped for that reason.
    skipped: u64,
    /// Partitions read to their end since their last message.
    at_end: HashSet<i32>,
    messages: u64,
    started: Instant,
}

fn kafka_error(what: &str, e: KafkaError) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl KafkaSource {
    /// Joins the group and subscribes to the topics.
    pub fn open(spec: &KafkaSpec, input: u32, target: usize) -> io::Result<KafkaSource> {
        let consumer: BaseConsumer<ConsumerLog> =
            consumer_config(&spec.brokers, &spec.group, &spec.offset, spec.eof)
                .create_with_context(ConsumerLog)
                .map_err(|e| {
                    kafka_error(
                        &format!("cannot create a Kafka consumer for {}", spec.brokers),
                        e,
                    )
                })?;
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            kafka_error(&format!("cannot subscribe to {}", spec.topics.join(",")), e)
        })?;
        Ok(KafkaSource {
            consumer,
            spec: spec.clone(),
            input,
            target: target.max(1),
            pending: BTreeMap::new(),
            next: BTreeMap::new(),
            resume: Vec::new(),
            skipped: 0,
            at_end: HashSet::new(),
            messages: 0,
            started: Instant::now(),
        })
    }

    /// Reads on from a checkpoint's position: messages before it are skipped.
    pub fn resume_from(&mut self, from: &SourcePosition) {
        self.resume = from.offsets.clone();
        for (topic, partition, offset) in &from.offsets {
            self.next.insert((topic.clone(), *partition), *offset);
        }
    }

    /// Whether a message is before the checkpoint this run resumed from.
    fn before_resume_point(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.resume
            .iter()
            .any(|(t, p, o)| *p == partition && offset < *o && t == topic)
    }

    /// Whether every assigned partition has been read to its end (bounded mode).
    fn finished(&self) -> bool {
        let Ok(assignment) = self.consumer.assignment() else {
            return false;
        };
        let parts: Vec<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        !parts.is_empty() && parts.iter().all(|p| self.at_end.contains(p))
    }
}

impl ChunkSource for KafkaSource {
    fn next_chunk(&mut self, seq: u64) -> io::Result<Option<Chunk>> {
        let mut data = BytesMut::new();
        let mut offsets: BTreeMap<(u32, i32), i64> = BTreeMap::new();
        let mut positions = Positions::default();
        let first_line = self.messages + 1;
        loop {
            match self.consumer.poll(POLL) {
                Some(Ok(m)) => {
                    self.at_end.remove(&m.partition());
                    if !self.resume.is_empty()
                        && self.before_resume_point(m.topic(), m.partition(), m.offset())
                    {
                        self.skipped += 1;
                        continue;
                    }
                    let payload = m.payload().unwrap_or_default();
                    let start = data.len();
                    data.extend_from_slice(payload);
                    for i in memchr::memchr2_iter(b'\n', b'\r', payload) {
                        data[start + i] = b' ';
                    }
                    data.extend_from_slice(b"\n");
                    self.messages += 1;
                    // The topic's index in this chunk's positions: no copy of its name.
                    let topic = positions.push(m.topic(), m.partition(), m.offset());
                    let offset = offsets.entry((topic, m.partition())).or_insert(m.offset());
                    *offset = (*offset).max(m.offset());
                    if data.len() >= self.target {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.at_end.insert(p);
                    if self.spec.eof && data.is_empty() && self.finished() {
                        return Ok(None);
                    }
                    if !data.is_empty() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    // Broker gone, rebalance, ...: librdkafka retries; say so and carry on.
                    tracing::warn!("kafka://{}: {e}; retrying", self.spec.brokers);
                    if !data.is_empty() {
                        break;
                    }
                }
                None => {
                    if !data.is_empty() {
                        break;
                    }
                    if self.spec.eof && self.finished() {
                        return Ok(None);
                    }
                    if self.spec.eof
                        && self.messages == 0
                        && self.started.elapsed() > ASSIGN_TIMEOUT
                    {
                        return Err(io::Error::other(format!(
                            "kafka://{}/{}: no partition assigned or no message within {}s; check that the topics exist",
                            self.spec.brokers,
                            self.spec.topics.join(","),
                            ASSIGN_TIMEOUT.as_secs()
                        )));
                    }
                    // Idle: hand the dataflow an empty chunk so it keeps processing and committing.
                    break;
                }
            }
        }
        if !offsets.is_empty() {
            let named: BTreeMap<(String, i32), i64> = offsets
                .into_iter()
                .map(|((t, p), o)| ((positions.topic(t).to_owned(), p), o))
                .collect();
            for (key, offset) in &named {
                let next = self.next.entry(key.clone()).or_insert(offset + 1);
                *next = (*next).max(offset + 1);
            }
            self.pending.insert(seq, named);
        }
        if self.skipped > 0 {
            tracing::info!(
                "kafka://{}: skipped {} messages the checkpoint had already taken in",
                self.spec.brokers,
                self.skipped
            );
            self.skipped = 0;
        }
        Ok(Some(Chunk {
            seq,
            input: self.input,
            first_line,
            data: data.freeze(),
            positions: Some(positions),
            oversized: Vec::new(),
        }))
    }

    fn position(&self) -> Option<SourcePosition> {
        Some(SourcePosition {
            offsets: self
                .next
                .iter()
                .map(|((t, p), o)| (t.clone(), *p, *o))
                .collect(),
            ..SourcePosition::default()
        })
    }

    fn processed_through(&mut self, seq: u64) -> io::Result<()> {
        let done: Vec<u64> = self.pending.range(..=seq).map(|(s, _)| *s).collect();
        if done.is_empty() {
            return Ok(());
        }
        let mut highest: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for s in &done {
            for (key, offset) in &self.pending[s] {
                let h = highest.entry(key.clone()).or_insert(*offset);
                *h = (*h).max(*offset);
            }
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &highest {
            list.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
                .map_err(|e| kafka_error("cannot build the commit", e))?;
        }
        match self.consumer.commit(&list, CommitMode::Sync) {
            Ok(()) => {
                for s in done {
                    self.pending.remove(&s);
                }
                Ok(())
            }
            Err(e) => {
                // Keep the offsets: the next call retries (at-least-once, never ahead of output).
                tracing::warn!(
                    "kafka://{}: committing offsets failed: {e}; will retry",
                    self.spec.brokers
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    fn drain(source: &mut KafkaSource) -> Vec<String> {
        let mut lines = Vec::new();
        let mut seq = 0;
        while let Some(chunk) = source.next_chunk(seq).unwrap() {
            lines.extend(
                String::from_utf8(chunk.data.to_vec())
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
            source.processed_through(seq).unwrap();
            seq += 1;
        }
        lines
    }

    #[test]
    fn consumes_to_the_end_commits_and_resumes() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("notifications.sample", 1, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..5 {
            let value = format!("{{\n\"n\": {i}}}");
            producer
                .send(BaseRecord::<(), _>::to("notifications.sample").payload(&value))
                .unwrap();
        }
        producer.flush(Duration::from_secs(5)).unwrap();
        let spec = KafkaSpec {
            brokers: cluster.bootstrap_servers(),
            topics: vec!["notifications.sample".into()],
            group: "g1".into(),
            eof: true,
            offset: "earliest".into(),
        };
        let mut first = KafkaSource::open(&spec, 0, 1 << 20).unwrap();
        let lines = drain(&mut first);
        assert_eq!(
            lines,
            (0..5)
                .map(|i| format!("{{ \"n\": {i}}}"))
                .collect::<Vec<_>>()
        );
        drop(first);
        producer
            .send(BaseRecord::<(), _>::to("notifications.sample").payload("{\"n\": 5}"))
            .unwrap();
        producer.flush(Duration::from_secs(5)).unwrap();
        let mut second = KafkaSource::open(&spec, 0, 1 << 20).unwrap();
        assert_eq!(
            drain(&mut second),
            ["{\"n\": 5}"],
            "resumes after the committed offset"
        );
        assert_eq!(
            second.position().unwrap().offsets,
            [("notifications.sample".to_owned(), 0, 6)]
        );
        // A group whose commit did not reach the checkpoint reads on from the checkpoint.
        let behind = KafkaSpec {
            group: "g2".into(),
            ..spec
        };
        let mut third = KafkaSource::open(&behind, 0, 1 << 20).unwrap();
        third.resume_from(&SourcePosition {
            offsets: vec![("notifications.sample".into(), 0, 3)],
            ..SourcePosition::default()
        });
        assert_eq!(
            third.position().unwrap().offsets,
            [("notifications.sample".to_owned(), 0, 3)],
            "a position before any message is the resume point"
        );
        assert_eq!(
            drain(&mut third),
            ["{ \"n\": 3}", "{ \"n\": 4}", "{\"n\": 5}"]
        );
    }
}
