//! Blocks of whole input lines, the unit sources hand to the dataflow.

use bytes::Bytes;

use crate::intern::Sym;

/// A block of complete lines from one input, with where it came from for error messages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Position of the chunk in the run (also its dataflow epoch).
    pub seq: u64,
    /// Which input it came from (index into the run's input list).
    pub input: u32,
    /// 1-based line number of the chunk's first line in that input.
    pub first_line: u64,
    /// The bytes: whole lines, each ending in `\n` except possibly the input's last.
    pub data: Bytes,
    /// Where each line came from, when the input has better positions than line numbers
    /// (Kafka: `topic/partition@offset`), indexed by line number − `first_line`.
    pub positions: Option<Positions>,
    /// Lines over the reader's size limit, skipped: each stands in `data` as an empty line
    /// (so numbering holds) and is reported from here.
    #[serde(default)]
    pub oversized: Vec<Oversized>,
}

/// A line longer than the reader's limit: its number, length and first bytes (the rest was
/// never held in memory).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Oversized {
    /// Its 1-based line number in the input.
    pub line: u64,
    /// Its length in bytes (without the newline).
    pub bytes: u64,
    /// Its first bytes (at most [`Oversized::HEAD`]).
    pub head: Bytes,
}

impl Oversized {
    /// How much of an oversized line is kept, for the log and the dead-letter file.
    pub const HEAD: usize = 4096;
}

/// The Kafka position (topic, partition, offset) of each line of a chunk, kept as numbers
/// and written out only when a line is reported (one entry per message, no allocation).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Positions {
    /// Interned once per topic a chunk holds (a chunk's lines carry them without copies).
    topics: Vec<Sym>,
    /// Per line: index into `topics`, partition, offset.
    lines: Vec<(u32, i32, i64)>,
}

impl Positions {
    /// Records the next line's position; the index its topic has here (see
    /// [`Positions::topic`]).
    pub fn push(&mut self, topic: &str, partition: i32, offset: i64) -> u32 {
        let t = match self.topics.iter().rposition(|t| t.as_str() == topic) {
            Some(t) => t,
            None => {
                self.topics.push(Sym::new(topic));
                self.topics.len() - 1
            }
        } as u32;
        self.lines.push((t, partition, offset));
        t
    }

    /// The topic [`Positions::push`] gave index `t`.
    pub fn topic(&self, t: u32) -> &'static str {
        self.topics[t as usize].as_str()
    }

    /// Line `i`'s position as `topic/partition@offset`.
    ///
    /// ```
    /// let mut p = meterflow_engine::chunk::Positions::default();
    /// p.push("notifications.info", 3, 41);
    /// assert_eq!(p.get(0).as_deref(), Some("notifications.info/3@41"));
    /// assert_eq!(p.get(1), None);
    /// ```
    pub fn get(&self, i: usize) -> Option<String> {
        let &(t, partition, offset) = self.lines.get(i)?;
        Some(format!("{}/{partition}@{offset}", self.topics[t as usize]))
    }
}

/// Where one line came from, in numbers: carried with each sample (32 bytes, no allocation)
/// so a later stage that rejects it can name its place as decoding would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Place {
    /// The input's index in the run's input list.
    pub input: u32,
    /// The Kafka topic, for a Kafka input.
    pub topic: Option<Sym>,
    /// The Kafka partition, or -1 for a file or stream.
    pub partition: i32,
    /// The Kafka offset, when there is a partition.
    pub offset: i64,
    /// The 1-based line number in the input (for Kafka: messages counted from the start).
    pub line: u64,
}

/// The name of input `index` among the run's `inputs` (`<input>` when there is none).
pub fn input_name(inputs: &[String], index: u32) -> &str {
    inputs.get(index as usize).map_or("<input>", String::as_str)
}

impl Place {
    /// `input:line`, or `input topic/partition@offset` for Kafka (as [`Chunk::place`]).
    pub fn describe(&self, inputs: &[String]) -> String {
        let input = input_name(inputs, self.input);
        match self.position() {
            Some(p) => format!("{input} {p}"),
            None => format!("{input}:{}", self.line),
        }
    }

    /// The Kafka position as the dead-letter file records it (`topic/partition@offset`, as
    /// [`Positions::get`]), if any.
    ///
    /// ```
    /// let mut p = meterflow_engine::chunk::Positions::default();
    /// p.push("notifications.info", 3, 41);
    /// let chunk = meterflow_engine::chunk::Chunk {
    ///     seq: 0, input: 0, first_line: 7, data: Default::default(),
    ///     positions: Some(p), oversized: Vec::new(),
    /// };
    /// let place = chunk.place_of(7);
    /// assert_eq!(place.position(), chunk.position(7));
    /// assert_eq!(place.position().as_deref(), Some("notifications.info/3@41"));
    /// ```
    pub fn position(&self) -> Option<String> {
        let topic = self.topic.filter(|_| self.partition >= 0)?;
        Some(format!("{topic}/{}@{}", self.partition, self.offset))
    }
}

impl Chunk {
    /// The place of line `line_no` (as numbered by [`Chunk::lines`]).
    pub fn place_of(&self, line_no: u64) -> Place {
        let kafka = self.positions.as_ref().and_then(|p| {
            let i = usize::try_from(line_no.checked_sub(self.first_line)?).ok()?;
            p.lines
                .get(i)
                .map(|&(t, partition, offset)| (Some(p.topics[t as usize]), partition, offset))
        });
        let (topic, partition, offset) = kafka.unwrap_or((None, -1, 0));
        Place {
            input: self.input,
            topic,
            partition,
            offset,
            line: line_no,
        }
    }

    /// The input's own position of line `line_no`, when it has one (Kafka).
    pub fn position(&self, line_no: u64) -> Option<String> {
        self.positions
            .as_ref()?
            .get(line_no.checked_sub(self.first_line)? as usize)
    }

    /// Where line `line_no` (as numbered by [`Chunk::lines`]) came from: `input:line`, or the
    /// input's own position (`input topic/partition@offset`).
    pub fn place(&self, input: &str, line_no: u64) -> String {
        match self.position(line_no) {
            Some(p) => format!("{input} {p}"),
            None => format!("{input}:{line_no}"),
        }
    }

    /// Iterates over `(line number, line)` pairs, skipping blank lines; lines keep no `\n`/`\r`.
    pub fn lines(&self) -> impl Iterator<Item = (u64, Bytes)> + '_ {
        let mut start = 0usize;
        let mut number = self.first_line;
        std::iter::from_fn(move || loop {
            if start >= self.data.len() {
                return None;
            }
            let end =
                memchr::memchr(b'\n', &self.data[start..]).map_or(self.data.len(), |i| start + i);
            let mut line_end = end;
            if line_end > start && self.data[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            let line = self.data.slice(start..line_end);
            let this = number;
            start = end + 1;
            number += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some((this, line));
        })
    }
}

/// Where chunks come from: a file, stdin, a pollster, a Kafka consumer.
pub trait ChunkSource: Send {
    /// The next chunk, tagged `seq`; `None` at the end of a bounded input. A source with
    /// nothing new for a while may return an empty chunk, so the dataflow keeps moving.
    fn next_chunk(&mut self, seq: u64) -> std::io::Result<Option<Chunk>>;

    /// Every chunk up to and including `seq` has been processed and its output written by
    /// every publisher: a source with offsets commits them now. Called again with larger
    /// `seq`s; `u64::MAX` at the end of the run.
    fn processed_through(&mut self, seq: u64) -> std::io::Result<()> {
        let _ = seq;
        Ok(())
    }

    /// Where the source stands after every chunk it has handed out, for a checkpoint to
    /// resume from; `None` when it cannot resume (standard input, a pollster).
    fn position(&self) -> Option<SourcePosition> {
        None
    }
}

/// Where an input stands: what a checkpoint records so that a restarted run reads on from
/// there (see [`ChunkSource::position`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourcePosition {
    /// Bytes handed out from the start of a file.
    #[serde(default)]
    pub bytes: u64,
    /// Lines handed out from the start of a file (the next is line `lines + 1`).
    #[serde(default)]
    pub lines: u64,
    /// Per (topic, partition), the offset of the next message to read (Kafka).
    #[serde(default)]
    pub offsets: Vec<(String, i32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lines_and_skips_blanks() {
        let chunk = Chunk {
            seq: 0,
            input: 0,
            first_line: 7,
            data: Bytes::from_static(b"a\r\n\n  \nb\nc"),
            positions: None,
            oversized: Vec::new(),
        };
        let lines: Vec<_> = chunk.lines().map(|(n, l)| (n, l.to_vec())).collect();
        assert_eq!(
            lines,
            vec![(7, b"a".to_vec()), (10, b"b".to_vec()), (11, b"c".to_vec())]
        );
    }
}
