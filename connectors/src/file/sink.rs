//! The `file://PATH` publisher: JSONL sample dicts (and, from an event sink, serialized events)
//! appended to a file.
//!
//! Every worker encodes into its own buffer and appends whole buffers under a lock, so lines
//! never interleave and the hot path takes no lock per sample. Options: `message_id=true`
//! also writes `message_id` (fresh UUIDs for built samples). Ceilometer's `max_bytes` and
//! `backup_count` (log rotation) are accepted and ignored with a warning.

use std::path::PathBuf;
use std::sync::Arc;

use meterflow_engine::component::{PublishError, Publisher, PublisherFactory};
use meterflow_engine::model::Event;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};
use meterflow_engine::Sample;

use super::append::AppendFile;
use crate::Url;

/// Options of a `file://` publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Where to append.
    pub path: PathBuf,
    /// Whether to write `message_id`.
    pub message_id: bool,
    /// Whether each flush also reaches the disk (`fsync=true`; always on when an input
    /// commits offsets, so a commit never runs ahead of the output).
    pub fsync: bool,
}

impl FileOptions {
    /// Reads the options from a `file://PATH?...` URL.
    pub fn from_url(url: &Url) -> Result<FileOptions, String> {
        url.reject_options(&["message_id", "fsync", "max_bytes", "backup_count"])?;
        if url.target.is_empty() {
            return Err(
                "file:// needs a path: file:///abs/path.jsonl or file://relative/path.jsonl".into(),
            );
        }
        if url.option("max_bytes").is_some() || url.option("backup_count").is_some() {
            tracing::warn!("file://{}: max_bytes/backup_count (rotation) are ignored; the file grows without rotation", url.target);
        }
        Ok(FileOptions {
            path: PathBuf::from(&url.target),
            message_id: url.flag("message_id")?,
            fsync: url.flag("fsync")?,
        })
    }
}

/// An open `file://` publisher.
pub struct FilePublisher {
    url: String,
    options: FileOptions,
    file: AppendFile,
}

impl FilePublisher {
    /// Opens (creating, appending) the file.
    pub fn open(url: &str, options: FileOptions) -> Result<FilePublisher, String> {
        let file = AppendFile::open(&options.path, options.fsync, &format!("publisher {url}"))?;
        Ok(FilePublisher {
            url: url.to_owned(),
            options,
            file,
        })
    }
}

impl PublisherFactory for FilePublisher {
    fn url(&self) -> &str {
        &self.url
    }

    fn handle(self: Arc<Self>) -> Box<dyn Publisher> {
        Box::new(FileHandle {
            encode: EncodeOptions {
                message_id: self.options.message_id,
            },
            shared: self,
            buffer: Vec::with_capacity(FileHandle::FLUSH_BYTES + 4096),
            written: 0,
        })
    }
}

struct FileHandle {
    shared: Arc<FilePublisher>,
    encode: EncodeOptions,
    buffer: Vec<u8>,
    /// How much of `buffer` a failed flush already wrote.
    written: usize,
}

impl FileHandle {
    const FLUSH_BYTES: usize = 256 * 1024;

    fn sync_failed(&self, e: &std::io::Error) -> PublishError {
        PublishError {
            target: self.shared.url.clone(),
            message: format!("syncing {} failed: {e}", self.shared.options.path.display()),
            retry: true,
        }
    }
}

impl Publisher for FileHandle {
    fn publish(&mut self, samples: &[Sample]) -> Result<(), PublishError> {
        for s in samples {
            write_sample(s, self.encode, &mut self.buffer);
        }
        if self.buffer.len() >= Self::FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// One line per event: Ceilometer's serialized event (`traits` as `[name, dtype, value]`).
    fn publish_events(&mut self, events: &[Arc<Event>]) -> Result<(), PublishError> {
        for e in events {
            serde_json::to_writer(&mut self.buffer, &e.serialize())
                .expect("writing JSON into memory cannot fail");
            self.buffer.push(b'\n');
        }
        if self.buffer.len() >= Self::FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffer; on failure keeps what was not written, so a retry neither loses nor
    /// repeats a byte.
    fn flush(&mut self) -> Result<(), PublishError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        match self.shared.file.append(&self.buffer, &mut self.written) {
            Ok(()) => {
                self.buffer.clear();
                self.written = 0;
                Ok(())
            }
            Err(e) => Err(PublishError {
                target: self.shared.url.clone(),
                message: format!("writing {} failed: {e}", self.shared.options.path.display()),
                retry: e.kind() != std::io::ErrorKind::PermissionDenied,
            }),
        }
    }

    fn sync(&mut self) -> Result<(), PublishError> {
        self.flush()?;
        self.shared.file.sync().map_err(|e| self.sync_failed(&e))
    }

    fn sync_async(&mut self) -> Result<Option<u64>, PublishError> {
        self.flush()?;
        Ok(Some(self.shared.file.sync_async()))
    }

    fn durable(&mut self, ticket: u64) -> Result<bool, PublishError> {
        self.shared
            .file
            .synced(ticket)
            .map_err(|e| self.sync_failed(&e))
    }
}

impl Drop for FileHandle {
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
    fn workers_append_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let url = format!("file://{}", path.display());
        let options = FileOptions::from_url(&Url::parse(&url).unwrap()).unwrap();
        let shared = Arc::new(FilePublisher::open(&url, options).unwrap());
        let mut a = shared.clone().handle();
        let mut b = shared.handle();
        let s = Sample::gauge("m", "r", 1.5, "2021-01-01T00:00:00");
        a.publish(&[s.clone(), s.clone()]).unwrap();
        b.publish(std::slice::from_ref(&s)).unwrap();
        b.flush().unwrap();
        drop(a);
        drop(b);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        for line in text.lines() {
            assert!(
                line.starts_with("{\"counter_name\": \"m\"") && line.ends_with('}'),
                "{line}"
            );
            assert!(line.contains("\"counter_volume\": 1.5"));
        }
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let url = "file:///nonexistent-dir/x.jsonl";
        let options = FileOptions::from_url(&Url::parse(url).unwrap()).unwrap();
        let err = FilePublisher::open(url, options).err().unwrap();
        assert!(err.contains("directory exists"), "{err}");
    }
}
