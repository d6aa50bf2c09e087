//! Files and standard input: JSONL in ([`source`]), JSONL out ([`sink`]).

pub mod append;
pub mod deadletter;
pub mod sink;
pub mod source;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably: written to a temporary file beside
/// it, synced, renamed over it; then its directory is synced (where the file system allows)
/// so that the rename survives a crash. A reader sees the old file or the new one, never
/// half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}
