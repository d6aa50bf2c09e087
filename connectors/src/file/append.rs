//! A file that several workers append whole buffers to: the one place that opens for
//! appending, writes without losing or repeating bytes when a write fails, and syncs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

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
    /// The same file, for syncing without holding appenders back (`None` for a device or a
    /// pipe: nothing to sync).
    sync_fd: Option<File>,
    fsync: bool,
    /// The thread that syncs in the background ([`AppendFile::sync_async`]), once started.
    syncer: OnceLock<Arc<Syncs>>,
}

/// What the background sync thread and the appenders share.
#[derive(Default)]
struct Syncs {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Tickets handed out; every one up to `done` is synced (or failed).
    requested: u64,
    done: u64,
    /// The tickets the last failed sync covered, and why it failed.
    failed: Option<(u64, u64, String)>,
    /// The file was dropped: the thread ends.
    closed: bool,
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
        let sync_fd = if regular {
            Some(file.try_clone().map_err(cannot)?)
        } else {
            None
        };
        Ok(AppendFile {
            path: path.to_owned(),
            file: Mutex::new(file),
            sync_fd,
            fsync: fsync && regular,
            syncer: OnceLock::new(),
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
    /// Appenders go on meanwhile.
    pub fn sync(&self) -> io::Result<()> {
        match &self.sync_fd {
            Some(fd) => fd.sync_data(),
            None => Ok(()),
        }
    }

    /// Starts making everything appended so far durable on a thread of its own and returns
    /// at once: a ticket for [`AppendFile::synced`]. Syncs asked for while one runs are
    /// served by the next one.
    pub fn sync_async(&self) -> u64 {
        let Some(fd) = &self.sync_fd else {
            return 0;
        };
        let syncs = self.syncer.get_or_init(|| {
            let syncs = Arc::new(Syncs::default());
            match fd.try_clone() {
                Ok(fd) => {
                    let shared = syncs.clone();
                    let spawned = std::thread::Builder::new()
                        .name("meterflow-fsync".into())
                        .spawn(move || sync_loop(&fd, &shared));
                    if let Err(e) = spawned {
                        syncs.fail_all(format!("cannot start a thread to sync: {e}"));
                    }
                }
                Err(e) => syncs.fail_all(format!("cannot open the file again to sync it: {e}")),
            }
            syncs
        });
        let mut state = syncs.lock();
        state.requested += 1;
        let ticket = state.requested;
        drop(state);
        syncs.wake.notify_all();
        ticket
    }

    /// Whether the sync `ticket` of [`AppendFile::sync_async`] stands for is done; an error
    /// if it failed.
    pub fn synced(&self, ticket: u64) -> io::Result<bool> {
        let Some(syncs) = self.syncer.get() else {
            return Ok(true);
        };
        let state = syncs.lock();
        if state.done < ticket {
            return Ok(false);
        }
        match &state.failed {
            Some((from, through, why)) if (*from..=*through).contains(&ticket) => {
                Err(io::Error::other(why.clone()))
            }
            _ => Ok(true),
        }
    }
}

impl Drop for AppendFile {
    fn drop(&mut self) {
        if let Some(syncs) = self.syncer.get() {
            syncs.lock().closed = true;
            syncs.wake.notify_all();
        }
    }
}

impl Syncs {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every ticket, handed out or to come, fails with `why` (no thread can sync).
    fn fail_all(&self, why: String) {
        let mut state = self.lock();
        state.done = u64::MAX;
        state.failed = Some((0, u64::MAX, why));
    }
}

/// The sync thread: syncs whenever tickets wait, each sync serving every ticket handed out
/// before it started; a failed sync is tried three times before its tickets fail.
fn sync_loop(fd: &File, syncs: &Syncs) {
    loop {
        let target = {
            let mut state = syncs.lock();
            while state.done >= state.requested && !state.closed {
                state = syncs.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.done >= state.requested {
                return;
            }
            state.requested
        };
        let mut result = fd.sync_data();
        for delay in [10, 100] {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(delay));
            result = fd.sync_data();
        }
        let mut state = syncs.lock();
        if let Err(e) = result {
            state.failed = Some((state.done + 1, target, e.to_string()));
        }
        state.done = target;
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
        let ticket = null.sync_async();
        assert!(null.synced(ticket).unwrap());
    }

    #[test]
    fn syncs_in_the_background_serve_every_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let file = AppendFile::open(&dir.path().join("out"), false, "test").unwrap();
        let mut tickets = Vec::new();
        for i in 0..20 {
            file.append(format!("line {i}\n").as_bytes(), &mut 0)
                .unwrap();
            tickets.push(file.sync_async());
        }
        assert!(tickets.windows(2).all(|w| w[0] < w[1]));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !tickets.iter().all(|&t| file.synced(t).unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the syncs never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            !file.synced(tickets.last().unwrap() + 1).unwrap(),
            "not asked yet"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out"))
                .unwrap()
                .lines()
                .count(),
            20
        );
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
