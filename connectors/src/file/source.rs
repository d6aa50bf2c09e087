//! Reading JSONL from files and standard input as chunks of whole lines.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use meterflow_engine::chunk::{Chunk, ChunkSource, SourcePosition};

use crate::kafka::KafkaSpec;
use crate::poll::PollSpec;
use crate::{Scheme, Status, Url, INPUTS};

/// A validated `--input`.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSpec {
    /// A JSONL file.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// A built-in pollster (`poll://host?...`).
    Poll(PollSpec),
    /// Kafka topics (`kafka://HOST:PORT/TOPIC?group=...`).
    Kafka(KafkaSpec),
}

impl InputSpec {
    /// Parses `-`, a path, `file://PATH` or `poll://host?...`; other schemes say when they land.
    pub fn parse(text: &str) -> Result<InputSpec, String> {
        if text == "-" {
            return Ok(InputSpec::Stdin);
        }
        if !text.contains("://") {
            return Ok(InputSpec::File(PathBuf::from(text)));
        }
        let url = Url::parse(text)?;
        match INPUTS.iter().find(|s| s.scheme == url.scheme) {
            Some(s) if s.scheme == "poll" => PollSpec::from_url(&url).map(InputSpec::Poll),
            Some(s) if s.scheme == "kafka" => KafkaSpec::from_url(&url).map(InputSpec::Kafka),
            Some(s) if s.scheme == "file" => {
                url.reject_options(&[])?;
                if url.target.is_empty() {
                    return Err(format!("{text:?} has no path; write file:///abs/path or file://rel/path"));
                }
                Ok(InputSpec::File(PathBuf::from(&url.target)))
            }
            Some(Scheme { status: Status::Planned(by), .. }) => Err(format!(
                "input {text:?}: {}:// is not yet supported by this build; it lands with {by}. Supported now: a path, file://PATH, -, poll://host",
                url.scheme
            )),
            _ => Err(format!(
                "input {text:?}: unknown scheme {:?} (known: a path, file://PATH, -, poll://host)",
                url.scheme
            )),
        }
    }

    /// The name used in messages.
    pub fn display(&self) -> String {
        match self {
            InputSpec::File(p) => p.display().to_string(),
            InputSpec::Stdin => "<stdin>".into(),
            InputSpec::Poll(p) => p.display(),
            InputSpec::Kafka(k) => format!("kafka://{}/{}", k.brokers, k.topics.join(",")),
        }
    }

    /// The size in bytes when known (for progress).
    pub fn size_bytes(&self) -> Option<u64> {
        match self {
            InputSpec::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            InputSpec::Stdin | InputSpec::Poll(_) | InputSpec::Kafka(_) => None,
        }
    }

    /// Opens the input as a source of chunks of about `chunk_bytes`, reading on from `from`
    /// (a checkpoint's [`ChunkSource::position`]) when given.
    pub fn open(
        &self,
        input: u32,
        chunk_bytes: usize,
        from: Option<&SourcePosition>,
    ) -> io::Result<Box<dyn ChunkSource>> {
        match (self, from) {
            (InputSpec::Kafka(spec), _) => {
                let mut source = crate::kafka::source::KafkaSource::open(spec, input, chunk_bytes)?;
                if let Some(from) = from {
                    source.resume_from(from);
                }
                Ok(Box::new(source))
            }
            (InputSpec::File(path), Some(from)) => {
                let mut file = open_input(path)?;
                let size = file.metadata()?.len();
                if size < from.bytes {
                    return Err(io::Error::other(format!(
                        "input {} has {size} bytes, fewer than the {} the checkpoint read: it is not the file the state was saved for; give the same file, or start afresh without --resume",
                        path.display(),
                        from.bytes
                    )));
                }
                file.seek(SeekFrom::Start(from.bytes))?;
                let mut reader = ChunkReader::new(Box::new(file), input).with_target(chunk_bytes);
                reader.resumable = true;
                reader.bytes = from.bytes;
                reader.next_line = from.lines + 1;
                Ok(Box::new(reader))
            }
            (_, Some(_)) => Err(io::Error::other(format!(
                "input {} cannot be resumed from a checkpoint (only files and Kafka topics can)",
                self.display()
            ))),
            (_, None) => Ok(Box::new(self.open_reader(input)?.with_target(chunk_bytes))),
        }
    }

    /// Opens a byte-stream input (file, stdin, pollster) as a line chunker.
    pub fn open_reader(&self, input: u32) -> io::Result<ChunkReader> {
        let reader: Box<dyn Read + Send> = match self {
            InputSpec::File(p) => Box::new(open_input(p)?),
            InputSpec::Stdin => Box::new(io::stdin()),
            InputSpec::Poll(spec) => Box::new(spec.open()?),
            InputSpec::Kafka(_) => {
                return Err(io::Error::other(
                    "a Kafka input is not a byte stream; use InputSpec::open",
                ))
            }
        };
        let mut reader = ChunkReader::new(reader, input);
        reader.resumable = matches!(self, InputSpec::File(_));
        Ok(reader)
    }
}

/// Opens an input file, saying which when it cannot.
fn open_input(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open input {}: {e}", path.display()),
        )
    })
}

/// Cuts a byte stream into [`Chunk`]s of whole lines, counting lines as it goes.
pub struct ChunkReader {
    reader: Box<dyn Read + Send>,
    input: u32,
    carry: BytesMut,
    next_line: u64,
    eof: bool,
    target: usize,
    /// Bytes handed out in chunks.
    bytes: u64,
    /// Whether it reads a file (which a checkpoint can resume).
    resumable: bool,
}

impl ChunkReader {
    /// Default chunk size: large enough to amortise per-chunk costs, small enough for latency.
    pub const TARGET_BYTES: usize = 1 << 20;

    /// A reader over `reader`, tagging chunks with input index `input`.
    pub fn new(reader: Box<dyn Read + Send>, input: u32) -> ChunkReader {
        ChunkReader {
            reader,
            input,
            carry: BytesMut::new(),
            next_line: 1,
            eof: false,
            target: Self::TARGET_BYTES,
            bytes: 0,
            resumable: false,
        }
    }

    /// Uses chunks of about `bytes` bytes (tests use small ones).
    pub fn with_target(mut self, bytes: usize) -> ChunkReader {
        self.target = bytes.max(1);
        self
    }

    /// The next chunk, or `None` at the end of input. Returns as soon as one read has produced
    /// at least one whole line, so a slow stdin still makes progress line by line.
    pub fn next_chunk(&mut self, seq: u64) -> io::Result<Option<Chunk>> {
        loop {
            if let Some(cut) = self.cut_point() {
                return Ok(Some(self.take(seq, cut)));
            }
            if self.eof {
                if self.carry.is_empty() {
                    return Ok(None);
                }
                let all = self.carry.len();
                return Ok(Some(self.take(seq, all)));
            }
            let start = self.carry.len();
            let want = self.target.max(start + 1);
            self.carry.resize(want, 0);
            let n = loop {
                match self.reader.read(&mut self.carry[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.carry.truncate(start);
                        return Err(e);
                    }
                }
            };
            self.carry.truncate(start + n);
            if n == 0 {
                self.eof = true;
            } else if self.carry.len() < self.target
                && memchr::memchr(b'\n', &self.carry[start..]).is_none()
            {
                // Not a single complete line yet: keep reading.
                continue;
            }
        }
    }

    /// Where to cut: after the last newline, once the buffer holds a full target or the
    /// last read ended with complete lines.
    fn cut_point(&self) -> Option<usize> {
        if self.carry.is_empty() {
            return None;
        }
        memchr::memrchr(b'\n', &self.carry).map(|i| i + 1)
    }

    fn take(&mut self, seq: u64, len: usize) -> Chunk {
        let data: Bytes = self.carry.split_to(len).freeze();
        let first_line = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', &data).count() as u64;
        self.bytes += data.len() as u64;
        Chunk {
            seq,
            input: self.input,
            first_line,
            data,
            positions: None,
        }
    }
}

impl ChunkSource for ChunkReader {
    fn next_chunk(&mut self, seq: u64) -> io::Result<Option<Chunk>> {
        ChunkReader::next_chunk(self, seq)
    }

    fn position(&self) -> Option<SourcePosition> {
        self.resumable.then(|| SourcePosition {
            bytes: self.bytes,
            lines: self.next_line - 1,
            offsets: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(text: &'static str, target: usize) -> Vec<(u64, String)> {
        let mut r = ChunkReader::new(Box::new(text.as_bytes()), 0).with_target(target);
        let mut out = Vec::new();
        let mut seq = 0;
        while let Some(c) = r.next_chunk(seq).unwrap() {
            out.push((c.first_line, String::from_utf8(c.data.to_vec()).unwrap()));
            seq += 1;
        }
        out
    }

    #[test]
    fn cuts_at_line_ends_and_keeps_every_byte() {
        let text = "aaaa\nbb\ncccccccccc\nd";
        for target in [1, 3, 5, 8, 100] {
            let got = chunks(text, target);
            let joined: String = got.iter().map(|(_, s)| s.as_str()).collect();
            assert_eq!(joined, text, "target {target}");
            for (_, s) in &got[..got.len() - 1] {
                assert!(s.ends_with('\n'));
            }
        }
        let got = chunks(text, 6);
        assert_eq!(got[0], (1, "aaaa\n".into()));
        assert_eq!(got.last().unwrap().0, 4);
    }

    #[test]
    fn a_file_resumes_where_its_position_says() {
        let dir = std::env::temp_dir().join(format!("meterflow-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        std::fs::write(&path, "one\ntwo\nthree\nfour\n").unwrap();
        let spec = InputSpec::File(path.clone());
        let mut first = spec.open(0, 6, None).unwrap();
        let chunk = first.next_chunk(0).unwrap().unwrap();
        assert_eq!(&chunk.data[..], b"one\n");
        let at = first.position().unwrap();
        assert_eq!((at.bytes, at.lines), (4, 1));
        let mut second = spec.open(0, 1 << 20, Some(&at)).unwrap();
        let chunk = second.next_chunk(0).unwrap().unwrap();
        assert_eq!(
            (chunk.first_line, &chunk.data[..]),
            (2, &b"two\nthree\nfour\n"[..])
        );
        assert_eq!(second.position().unwrap().bytes, 19);
        let past = SourcePosition { bytes: 100, ..at };
        let e = spec.open(0, 6, Some(&past)).err().unwrap().to_string();
        assert!(e.contains("not the file"), "{e}");
        assert!(InputSpec::Stdin.open(0, 6, Some(&past)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn parses_inputs() {
        assert_eq!(InputSpec::parse("-").unwrap(), InputSpec::Stdin);
        assert_eq!(
            InputSpec::parse("a/b.jsonl").unwrap(),
            InputSpec::File("a/b.jsonl".into())
        );
        assert_eq!(
            InputSpec::parse("file:///x").unwrap(),
            InputSpec::File("/x".into())
        );
        assert!(matches!(
            InputSpec::parse("kafka://h:9092/t?group=g"),
            Ok(InputSpec::Kafka(_))
        ));
        assert!(InputSpec::parse("ftp://x")
            .unwrap_err()
            .contains("unknown scheme"));
    }
}
