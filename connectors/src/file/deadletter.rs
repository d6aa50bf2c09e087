//! The dead-letter file: every input record meterflow could not use, with where it came from
//! and why, one JSON object per line, so nothing rejected is lost and it can be fixed and
//! replayed.
//!
//! A record: `{"input": "in.jsonl", "line": 12, "reason": "bad_json", "detail": "...",
//! "record": "<the input line as received>"}`, plus `"position": "topic/partition@offset"` for
//! Kafka inputs. For a sample rejected inside a notification the
//! record is the whole notification line and `detail` names the sample.

use std::io;
use std::path::Path;
use std::sync::Arc;

use meterflow_engine::metrics::DropReason;

use super::append::AppendFile;

/// An open dead-letter file shared by all workers.
pub struct DeadLetter {
    file: AppendFile,
}

impl DeadLetter {
    /// Opens (creating, appending) the file; `fsync` syncs every flush.
    pub fn open(path: &Path, fsync: bool) -> Result<Arc<DeadLetter>, String> {
        Ok(Arc::new(DeadLetter {
            file: AppendFile::open(path, fsync, "dead-letter file")?,
        }))
    }

    /// A worker's buffered handle.
    pub fn handle(self: &Arc<Self>) -> DeadLetterHandle {
        DeadLetterHandle {
            shared: self.clone(),
            buffer: Vec::new(),
            written: 0,
        }
    }
}

/// One worker's buffer of dead-letter records.
pub struct DeadLetterHandle {
    shared: Arc<DeadLetter>,
    buffer: Vec<u8>,
    written: usize,
}

impl DeadLetterHandle {
    /// Buffers one record; `position` is the input's own (Kafka `topic/partition@offset`).
    pub fn record(
        &mut self,
        input: &str,
        line: u64,
        position: Option<&str>,
        reason: DropReason,
        detail: &str,
        raw: &[u8],
    ) {
        let mut value = serde_json::json!({
            "input": input,
            "line": line,
            "reason": reason.as_str(),
            "detail": detail,
            "record": String::from_utf8_lossy(raw),
        });
        if let Some(p) = position {
            value["position"] = p.into();
        }
        if serde_json::to_writer(&mut self.buffer, &value).is_ok() {
            self.buffer.push(b'\n');
        }
    }

    /// Writes the buffered records (what a failed write left is tried again next time).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let file = &self.shared.file;
        file.append(&self.buffer, &mut self.written).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "writing dead-letter file {} failed: {e}",
                    file.path().display()
                ),
            )
        })?;
        self.buffer.clear();
        self.written = 0;
        Ok(())
    }
}

impl Drop for DeadLetterHandle {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_with_the_raw_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let dl = DeadLetter::open(&path, false).unwrap();
        let mut h = dl.handle();
        h.record(
            "in.jsonl",
            3,
            None,
            DropReason::BadJson,
            "not valid JSON",
            b"{oops\xff",
        );
        h.record(
            "kafka://b/t",
            4,
            Some("t/0@7"),
            DropReason::BadJson,
            "x",
            b"y",
        );
        drop(h);
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let k: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(k["position"], "t/0@7");
        assert!(v.get("position").is_none());
        assert_eq!(v["line"], 3);
        assert_eq!(v["reason"], "bad_json");
        assert!(v["record"].as_str().unwrap().starts_with("{oops"));
        assert!(DeadLetter::open(Path::new("/nonexistent-dir/x"), false).is_err());
    }
}
