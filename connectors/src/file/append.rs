//! A file that several workers append whole buffers to: the one place that opens for
//! appending, writes without losing or repeating bytes when a write fails, and syncs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Cuts an unterminated last line off the regular file at `path`; returns its length.
fn torn_tail(path: &Path) -> io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = meta.len();
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end == len {
        return Ok(None);
    }
    file.set_len(end)?;
    file.sync_all()?;
    Ok(Some(len - end))
}

/// A file opened for appending, shared by every worker's buffer.
pub struct AppendFile {
    path: PathBuf,
    file: Mutex<File>,
    fsync: bool,
    /// A regular file (a device or a pipe has nothing to sync).
    regular: bool,
}

impl AppendFile {
    /// Opens (creating) `path` for appending; `what` names it in the error ("publisher X").
    ///
    /// Every write is whole lines, so a last line without its newline is what a process
    /// killed in the middle of a write left: it is cut off (and logged), so that the next line
    /// does not run into it. Its data was never acknowledged (a Kafka input commits offsets
    /// only after a flush completes), so a replay writes it again in full.
    pub fn open(path: &Path, fsync: bool, what: &str) -> Result<AppendFile, String> {
        let cannot = |e: io::Error| {
            format!(
                "{what}: cannot open {} for appending: {e}; check that the directory exists and is writable",
                path.display()
            )
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(cannot)?;
        if let Some(torn) = torn_tail(path).map_err(cannot)? {
            tracing::warn!(
                "{what}: {} ended in an incomplete line ({} bytes, from a run that was killed while writing); cut it off: it is written again in full when its input is replayed",
                path.display(),
                torn
            );
        }
        // A device or a pipe (`/dev/null`, `/dev/stdout`) has nothing to sync.
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        Ok(AppendFile {
            path: path.to_owned(),
            file: Mutex::new(file),
            fsync: fsync && regular,
            regular,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `buffer[*written..]` (and syncs when asked). On failure `*written` says how far
    /// it got, so calling again with the same buffer neither loses nor repeats a byte; on
    /// success the caller clears the buffer and resets `*written`.
    pub fn append(&self, buffer: &[u8], written: &mut usize) -> io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        while *written < buffer.len() {
            match file.write(&buffer[*written..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable (nothing to do for a device or a pipe).
    pub fn sync(&self) -> io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_syncs_without_error() {
        // A checkpoint syncs every file publisher; /dev/null must not fail it.
        let null = AppendFile::open(Path::new("/dev/null"), false, "test").unwrap();
        null.append(b"x\n", &mut 0).unwrap();
        null.sync().unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        for (before, after) in [
            ("", ""),
            ("{\"a\": 1}\n", "{\"a\": 1}\n"),
            ("{\"a\": 1}\n{\"b\"", "{\"a\": 1}\n"),
            ("{\"b\"", ""),
        ] {
            std::fs::write(&path, before).unwrap();
            let file = AppendFile::open(&path, false, "test").unwrap();
            file.append(b"{\"c\": 3}\n", &mut 0).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("{after}{{\"c\": 3}}\n")
            );
        }
        // Long lines: the newline is found further back than one block.
        let long = format!("{}\n{}", "x".repeat(100_000), "y".repeat(70_000));
        std::fs::write(&path, &long).unwrap();
        AppendFile::open(&path, false, "test").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_001);
    }
}
