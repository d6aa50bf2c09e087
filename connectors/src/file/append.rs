//! A file that several workers append whole buffers to: the one place that opens for
//! appending, writes without losing or repeating bytes when a write fails, and syncs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A file opened for appending, shared by every worker's buffer.
pub struct AppendFile {
    path: PathBuf,
    file: Mutex<File>,
    fsync: bool,
}

impl AppendFile {
    /// Opens (creating) `path` for appending; `what` names it in the error ("publisher X").
    pub fn open(path: &Path, fsync: bool, what: &str) -> Result<AppendFile, String> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
            format!(
                "{what}: cannot open {} for appending: {e}; check that the directory exists and is writable",
                path.display()
            )
        })?;
        Ok(AppendFile {
            path: path.to_owned(),
            file: Mutex::new(file),
            fsync,
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
}
