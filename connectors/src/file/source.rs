//! Reading JSONL from files and standard input as chunks of whole lines.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use meterflow_engine::chunk::{Chunk, ChunkSource, Oversized, SourcePosition};

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

    /// Opens the input as a source of chunks of about `chunk_bytes` whose lines are at most
    /// `max_line` bytes (longer ones are skipped and reported), reading on from `from`
    /// (a checkpoint's [`ChunkSource::position`]) when given.
    pub fn open(
        &self,
        input: u32,
        (chunk_bytes, max_line): (usize, usize),
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
                let mut reader = ChunkReader::new(Box::new(file), input)
                    .with_target(chunk_bytes)
                    .with_max_line(max_line);
                reader.resumable = true;
                reader.bytes = from.bytes;
                reader.next_line = from.lines + 1;
                Ok(Box::new(reader))
            }
            (_, Some(_)) => Err(io::Error::other(format!(
                "input {} cannot be resumed from a checkpoint (only files and Kafka topics can)",
                self.display()
            ))),
            (_, None) => Ok(Box::new(
                self.open_reader(input)?
                    .with_target(chunk_bytes)
                    .with_max_line(max_line),
            )),
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
    let file = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open input {}: {e}", path.display()),
        )
    })?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::other(format!(
            "input {} is a directory; give the JSONL files in it as --input, one each",
            path.display()
        )));
    }
    Ok(file)
}

/// Cuts a byte stream into [`Chunk`]s of whole lines, counting lines as it goes. Work is
/// linear in the input whatever the line lengths; a line over the limit is skipped as it
/// streams by (never held whole) and reported in the chunk ([`Chunk::oversized`]).
pub struct ChunkReader {
    reader: Box<dyn Read + Send>,
    input: u32,
    carry: BytesMut,
    /// `carry[..scanned]` holds no newline.
    scanned: usize,
    next_line: u64,
    eof: bool,
    target: usize,
    max_line: usize,
    /// The oversized line being skipped, if any.
    skipping: Option<Oversized>,
    /// Oversized lines skipped, for the next chunk.
    oversized: Vec<Oversized>,
    /// Bytes handed out in chunks (skipped ones included).
    bytes: u64,
    /// Bytes skipped since the last chunk.
    skipped: u64,
    /// Whether it reads a file (which a checkpoint can resume).
    resumable: bool,
}

impl ChunkReader {
    /// Default chunk size: large enough to amortise per-chunk costs, small enough for latency.
    pub const TARGET_BYTES: usize = 1 << 20;
    /// Default longest line: 8 MiB (an oslo notification is rarely over a few KiB).
    pub const MAX_LINE_BYTES: usize = 8 << 20;

    /// A reader over `reader`, tagging chunks with input index `input`.
    pub fn new(reader: Box<dyn Read + Send>, input: u32) -> ChunkReader {
        ChunkReader {
            reader,
            input,
            carry: BytesMut::new(),
            scanned: 0,
            next_line: 1,
            eof: false,
            target: Self::TARGET_BYTES,
            max_line: Self::MAX_LINE_BYTES,
            skipping: None,
            oversized: Vec::new(),
            bytes: 0,
            skipped: 0,
            resumable: false,
        }
    }

    /// Uses chunks of about `bytes` bytes (tests use small ones).
    pub fn with_target(mut self, bytes: usize) -> ChunkReader {
        self.target = bytes.max(1);
        self
    }

    /// Skips lines longer than `bytes` (reported in [`Chunk::oversized`]).
    pub fn with_max_line(mut self, bytes: usize) -> ChunkReader {
        self.max_line = bytes.max(1);
        self
    }

    /// The next chunk, or `None` at the end of input. Returns as soon as one read has produced
    /// at least one whole line, so a slow stdin still makes progress line by line.
    pub fn next_chunk(&mut self, seq: u64) -> io::Result<Option<Chunk>> {
        loop {
            if self.skipping.is_none() {
                if let Some(cut) = self.cut_point() {
                    return Ok(Some(self.take(seq, cut)));
                }
                if self.carry.len() > self.max_line {
                    // No newline in the whole carry: one line, too long. Keep its head only.
                    let head = Bytes::copy_from_slice(
                        &self.carry[..Oversized::HEAD.min(self.carry.len())],
                    );
                    self.skipping = Some(Oversized {
                        line: self.next_line,
                        bytes: self.carry.len() as u64,
                        head,
                    });
                    self.skipped += self.carry.len() as u64;
                    self.carry.clear();
                    self.scanned = 0;
                }
            }
            if self.eof {
                if let Some(line) = self.skipping.take() {
                    self.oversized.push(line);
                    self.next_line += 1;
                }
                if self.carry.is_empty() && self.oversized.is_empty() {
                    return Ok(None);
                }
                let all = self.carry.len();
                return Ok(Some(self.take(seq, all)));
            }
            let start = self.carry.len();
            // Reads of a whole target each, so a long line costs linear time.
            let want = if start < self.target {
                self.target
            } else {
                start + self.target
            };
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
                continue;
            }
            if let Some(line) = &mut self.skipping {
                match memchr::memchr(b'\n', &self.carry) {
                    Some(i) => {
                        // The line ends here; its newline stays, as an empty line in its place.
                        line.bytes += i as u64;
                        self.skipped += i as u64;
                        let _ = self.carry.split_to(i);
                        self.oversized.push(self.skipping.take().expect("skipping"));
                    }
                    None => {
                        line.bytes += n as u64;
                        self.skipped += n as u64;
                        self.carry.clear();
                    }
                }
                self.scanned = 0;
            }
            // Back at the top: a read that completed a line is cut at once (so a slow stdin
            // makes progress line by line); one that did not reads on.
        }
    }

    /// Where to cut: after the last newline. Only bytes not scanned before are looked at.
    fn cut_point(&mut self) -> Option<usize> {
        let from = self.scanned.min(self.carry.len());
        let found = memchr::memrchr(b'\n', &self.carry[from..]).map(|i| from + i + 1);
        if found.is_none() {
            self.scanned = self.carry.len();
        }
        found
    }

    fn take(&mut self, seq: u64, len: usize) -> Chunk {
        let data: Bytes = self.carry.split_to(len).freeze();
        // What is left holds no newline (the cut was after the last one).
        self.scanned = self.carry.len();
        let first_line = self.next_line;
        self.next_line += memchr::memchr_iter(b'\n', &data).count() as u64;
        self.bytes += data.len() as u64 + std::mem::take(&mut self.skipped);
        Chunk {
            seq,
            input: self.input,
            first_line,
            data,
            positions: None,
            oversized: std::mem::take(&mut self.oversized),
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

    /// A reader that hands out at most `step` bytes per read (as pipes and sockets do).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// The reader skips a long line that does not arrive within one read (so memory stays
    /// bounded) and reports it; one that does arrive whole is left in the chunk, for the
    /// decoder to refuse by the same limit. Either way numbering holds.
    #[test]
    fn lines_over_the_limit_are_skipped_numbered_and_reported() {
        let long = "x".repeat(10_000);
        let text = format!("a\n{long}\nb\n{long}y\nc\n{long}");
        for (target, step) in [(64, 7), (1 << 20, 1 << 20), (100, 1), (4096, 5000)] {
            let reader = Trickle {
                data: text.clone().into_bytes(),
                at: 0,
                step,
            };
            let mut r = ChunkReader::new(Box::new(reader), 0)
                .with_target(target)
                .with_max_line(1000);
            r.resumable = true;
            let (mut kept, mut long_lines, mut seq) = (Vec::new(), Vec::new(), 0);
            while let Some(c) = r.next_chunk(seq).unwrap() {
                for (n, l) in c.lines() {
                    if l.len() > 1000 {
                        long_lines.push((n, l.len() as u64));
                    } else {
                        kept.push((n, String::from_utf8(l.to_vec()).unwrap()));
                    }
                }
                for o in &c.oversized {
                    // The head is what was read when the limit was passed, at most HEAD.
                    assert!(o.head.len() > 1000 && o.head.len() <= Oversized::HEAD);
                    assert!(o.head.iter().all(|&b| b == b'x'));
                    long_lines.push((o.line, o.bytes));
                }
                seq += 1;
            }
            long_lines.sort_unstable();
            let want = |n: u64, t: &str| (n, t.to_owned());
            assert_eq!(
                kept,
                [want(1, "a"), want(3, "b"), want(5, "c")],
                "{target} {step}"
            );
            assert_eq!(
                long_lines,
                [(2, 10_000), (4, 10_001), (6, 10_000)],
                "{target} {step}"
            );
            // Skipped bytes count toward the position a checkpoint resumes from.
            assert_eq!(r.position().unwrap().bytes, text.len() as u64);
            assert_eq!(r.position().unwrap().lines, 6);
        }
    }

    #[test]
    fn a_long_line_under_the_limit_reads_in_linear_time() {
        // 64 MiB in one line, read a byte at a time once past the target, took minutes when
        // each read fetched one byte and rescanned the whole line. Bounded work, not time:
        // count the reads.
        struct Counted(Trickle, std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Read for Counted {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.read(buf)
            }
        }
        let mut data = vec![b'x'; 64 << 20];
        data.push(b'\n');
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reader = Counted(
            Trickle {
                data,
                at: 0,
                step: usize::MAX,
            },
            reads.clone(),
        );
        let mut r = ChunkReader::new(Box::new(reader), 0).with_max_line(128 << 20);
        let chunk = r.next_chunk(0).unwrap().unwrap();
        assert_eq!(chunk.data.len(), (64 << 20) + 1);
        assert!(r.next_chunk(1).unwrap().is_none());
        let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(reads <= 66, "{reads} reads for 64 one-MiB targets");
    }

    #[test]
    fn a_file_resumes_where_its_position_says() {
        let dir = std::env::temp_dir().join(format!("meterflow-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        std::fs::write(&path, "one\ntwo\nthree\nfour\n").unwrap();
        let spec = InputSpec::File(path.clone());
        let mut first = spec.open(0, (6, 1 << 20), None).unwrap();
        let chunk = first.next_chunk(0).unwrap().unwrap();
        assert_eq!(&chunk.data[..], b"one\n");
        let at = first.position().unwrap();
        assert_eq!((at.bytes, at.lines), (4, 1));
        let mut second = spec.open(0, (1 << 20, 1 << 20), Some(&at)).unwrap();
        let chunk = second.next_chunk(0).unwrap().unwrap();
        assert_eq!(
            (chunk.first_line, &chunk.data[..]),
            (2, &b"two\nthree\nfour\n"[..])
        );
        assert_eq!(second.position().unwrap().bytes, 19);
        let past = SourcePosition { bytes: 100, ..at };
        let e = spec
            .open(0, (6, 1 << 20), Some(&past))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not the file"), "{e}");
        assert!(InputSpec::Stdin.open(0, (6, 1 << 20), Some(&past)).is_err());
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
