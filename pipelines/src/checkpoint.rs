//! Checkpoints of the engine's state at an epoch boundary, for exactly-once restarts.
//!
//! ```text
//! ROOT/c000000000007/w0.5f1c09a2b3d4e6f7.bin   worker 0's transformer state (bincode; the
//!                                              name carries a checksum of the bytes)
//! ROOT/c000000000007/w1.0c9d....bin            one part per worker
//! ROOT/c000000000007/manifest.json             written last: the commit point (inputs'
//!                                              positions, the parts, when)
//! ```
//! ROOT is `--state DIR`, or `STORE/checkpoints` when the run has a store. Worker 0 marks an
//! epoch as a checkpoint (a barrier); every Transform operator saves its chains' state before
//! it processes that epoch and writes its part; once every operator has passed the epoch
//! (so every part is written and everything before it is published and in the store),
//! worker 0 syncs the parts, writes the manifest (temp file, fsync, rename, directory
//! fsync) and only then commits the Kafka offsets the checkpoint covers. A crash before the
//! manifest leaves a directory without one, which is ignored and removed; a damaged
//! checkpoint (a part missing, short, or with another checksum) is skipped with a message
//! and the one before it is used. The newest two complete checkpoints are kept.
//!
//! **Incremental.** Most checkpoints hold only what changed since the one before (named in
//! the manifest as `previous`): transformers that can tell (rate_of_change's and delta's
//! previous samples) save the series changed and forgotten since, the others their whole
//! state. Every [`FULL_EVERY`]th checkpoint of a run, its first, and the one after a
//! checkpoint that could not be published are whole. Restoring reads the run of
//! checkpoints back to the last whole one and applies them in order; the checkpoints a kept
//! one builds on are kept with it.
//!
//! The store's aggregates, alarm states, alarm history, resource events and the notifier's
//! journal are durable in the store before the epochs that wrote them pass, so they are
//! never behind a checkpoint; measures replayed after a restart change nothing there (the
//! store ignores a batch it already holds).

use std::fs::{self, File};
use std::hash::Hasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meterflow_connectors::file::write_atomically;
use meterflow_engine::chunk::SourcePosition;
use meterflow_operators::transform::StageState;
use serde::{Deserialize, Serialize};

/// What `manifest.json` says it is.
const FORMAT: &str = "meterflow-checkpoint";
/// The layout version this build reads and writes.
const VERSION: u32 = 2;
/// Every this many checkpoints one is whole (bounds how many a restore reads).
pub const FULL_EVERY: u64 = 16;
const MANIFEST: &str = "manifest.json";

/// A barrier: checkpoint `number` is taken at the epoch it travels at, on worker `route`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Barrier {
    /// The worker it goes to.
    pub route: u64,
    /// The checkpoint's number.
    pub number: u64,
    /// Whether every transformer saves its whole state (else what changed since the
    /// checkpoint before, where it can tell).
    pub full: bool,
}

/// One sink's saved chain on one worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkState {
    /// The sink's name.
    pub name: String,
    /// Its transformers as configured (a state is restored only into the same chain).
    pub chain: String,
    /// Each transformer's state
    /// ([`meterflow_operators::transform::Chain::save_checkpoint`]).
    pub stages: Vec<StageState>,
}

/// One worker's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerState {
    /// Its sinks' chains, those with state.
    pub sinks: Vec<SinkState>,
}

/// Where one input stood at the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The input as given (`kafka://...`, a path).
    pub name: String,
    /// Where to read on from; `None` for an input that cannot resume.
    pub position: Option<SourcePosition>,
}

/// One worker's part file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartRecord {
    worker: usize,
    file: String,
    bytes: u64,
    checksum: u64,
}

/// `manifest.json`: a complete checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    number: u64,
    /// The checkpoint this one holds the changes since; `None` for a whole one.
    #[serde(default)]
    previous: Option<u64>,
    workers: usize,
    /// When it was published, ms since the Unix epoch.
    unix_ms: u64,
    inputs: Vec<InputRecord>,
    parts: Vec<PartRecord>,
}

/// A checkpoint read back and verified.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its number.
    pub number: u64,
    /// Where each input stood.
    pub inputs: Vec<InputRecord>,
    /// The checkpoints to restore, oldest (a whole one) first, this one last: each as every
    /// worker's part (as many as the run that wrote it had workers).
    pub chain: Vec<Vec<WorkerState>>,
    /// When it was published.
    pub published: SystemTime,
}

/// What publishing a checkpoint wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its number.
    pub number: u64,
    /// Bytes of its parts.
    pub bytes: u64,
}

/// The checkpoints under one directory (see the module doc).
#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    hasher.write(bytes);
    hasher.write_u64(bytes.len() as u64);
    hasher.finish()
}

fn dir_name(number: u64) -> String {
    format!("c{number:012}")
}

impl Checkpoints {
    /// The checkpoints under `root` (created if missing).
    pub fn open(root: &Path) -> io::Result<Checkpoints> {
        fs::create_dir_all(root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the state directory {}: {e}; give a writable --state DIR",
                    root.display()
                ),
            )
        })?;
        Ok(Checkpoints {
            root: root.to_owned(),
        })
    }

    /// The directory they live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The numbers of the checkpoint directories present, complete or not, ascending.
    fn numbers(&self) -> Vec<u64> {
        let mut numbers: Vec<u64> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_prefix('c')?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers
    }

    /// The number the next checkpoint gets: after every one present, complete or not.
    pub fn next_number(&self) -> u64 {
        self.numbers().last().map_or(1, |n| n + 1)
    }

    /// Writes worker `worker`'s part of checkpoint `number` (not yet synced: see
    /// [`Checkpoints::publish`]). Returns its size.
    pub fn write_part(&self, number: u64, worker: usize, state: &WorkerState) -> io::Result<u64> {
        let dir = self.root.join(dir_name(number));
        fs::create_dir_all(&dir)?;
        let bytes = bincode::serialize(state).map_err(io::Error::other)?;
        let path = dir.join(format!("w{worker}.{:016x}.bin", checksum(&bytes)));
        fs::write(&path, &bytes).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        })?;
        Ok(bytes.len() as u64)
    }

    /// Makes checkpoint `number` complete: syncs its `workers` parts and writes its manifest
    /// with the inputs' positions and the checkpoint it holds the changes since (`previous`;
    /// `None` for a whole one); then removes all but it and the complete one before it (with
    /// the checkpoints they build on).
    pub fn publish(
        &self,
        number: u64,
        workers: usize,
        inputs: Vec<InputRecord>,
        previous: Option<u64>,
    ) -> io::Result<Published> {
        let dir = self.root.join(dir_name(number));
        let mut parts = Vec::with_capacity(workers);
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((worker, sum)) = parse_part_name(&name) else {
                continue;
            };
            let file = File::open(entry.path())?;
            file.sync_all()?;
            parts.push(PartRecord {
                worker,
                bytes: file.metadata()?.len(),
                file: name,
                checksum: sum,
            });
        }
        parts.sort_by_key(|p| p.worker);
        if parts.len() != workers || parts.iter().enumerate().any(|(i, p)| p.worker != i) {
            return Err(io::Error::other(format!(
                "checkpoint {} has parts of workers {:?}, expected 0..{workers}",
                dir.display(),
                parts.iter().map(|p| p.worker).collect::<Vec<_>>()
            )));
        }
        let bytes = parts.iter().map(|p| p.bytes).sum();
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            number,
            previous,
            workers,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            inputs,
            parts,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        write_atomically(&dir.join(MANIFEST), &text)?;
        // The checkpoint's directory entry, made when its first part was written.
        File::open(&self.root)?.sync_all()?;
        self.prune(number);
        Ok(Published { number, bytes })
    }

    /// Removes every checkpoint but `newest`, the complete one before it, and those they
    /// build on.
    fn prune(&self, newest: u64) {
        let mut keep = std::collections::BTreeSet::new();
        let mut kept = 0;
        for number in self.numbers().into_iter().rev() {
            if number > newest || kept == 2 {
                continue;
            }
            if let Ok(chain) = self.chain_of(number) {
                keep.extend(chain);
                kept += 1;
            }
        }
        for number in self.numbers() {
            if number >= newest || keep.contains(&number) {
                continue;
            }
            let dir = self.root.join(dir_name(number));
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove the old checkpoint {}: {e}", dir.display());
            }
        }
    }

    /// The checkpoints restoring `number` reads, oldest (a whole one) first, from their
    /// manifests; an error if one is missing or unreadable.
    fn chain_of(&self, number: u64) -> Result<Vec<u64>, String> {
        let mut chain = vec![number];
        let mut at = number;
        loop {
            let manifest = read_manifest(&self.root.join(dir_name(at)))?;
            match manifest.previous {
                None => break,
                Some(previous) if previous < at => {
                    chain.push(previous);
                    at = previous;
                }
                Some(previous) => {
                    return Err(format!(
                        "checkpoint {at} builds on {previous}, not an older one"
                    ))
                }
            }
        }
        chain.reverse();
        Ok(chain)
    }

    /// The newest complete checkpoint that reads back intact, with those it builds on;
    /// damaged ones are skipped with a message saying why.
    pub fn newest(&self) -> Option<Loaded> {
        for number in self.numbers().into_iter().rev() {
            let dir = self.root.join(dir_name(number));
            if !dir.join(MANIFEST).exists() {
                continue;
            }
            let loaded = self.chain_of(number).and_then(|chain| {
                let mut loaded = chain
                    .iter()
                    .map(|&n| {
                        load(&self.root.join(dir_name(n)))
                            .map_err(|why| format!("checkpoint {n}, which it builds on: {why}"))
                    })
                    .collect::<Result<Vec<Loaded>, String>>()?;
                let mut newest = loaded.pop().expect("a chain holds its checkpoint");
                let mut chain: Vec<Vec<WorkerState>> =
                    loaded.into_iter().flat_map(|l| l.chain).collect();
                chain.append(&mut newest.chain);
                newest.chain = chain;
                Ok(newest)
            });
            match loaded {
                Ok(loaded) => return Some(loaded),
                Err(why) => tracing::warn!(
                    "checkpoint {} is damaged ({why}); skipping it for the one before",
                    dir.display()
                ),
            }
        }
        None
    }
}

/// What checkpoints did in a run, for the summary and `/metrics`.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    completed: AtomicU64,
    failed: AtomicU64,
    last_number: AtomicU64,
    last_bytes: AtomicU64,
    last_micros: AtomicU64,
    /// When the last one was published, ms since the Unix epoch (0: none yet).
    last_unix_ms: AtomicU64,
    /// The checkpoint the run resumed from (0: none).
    restored: AtomicU64,
}

/// A copy of [`CheckpointStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointTotals {
    /// Checkpoints published.
    pub completed: u64,
    /// Checkpoints that could not be published.
    pub failed: u64,
    /// The newest one's number.
    pub last_number: u64,
    /// Its bytes.
    pub last_bytes: u64,
    /// From its barrier to its manifest.
    pub last_duration: Duration,
    /// When it was published.
    pub last_at: Option<SystemTime>,
    /// The checkpoint the run resumed from.
    pub restored: Option<u64>,
}

impl CheckpointStats {
    /// Counts a published checkpoint that took `took`.
    pub fn published(&self, published: Published, took: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.last_number.store(published.number, Ordering::Relaxed);
        self.last_bytes.store(published.bytes, Ordering::Relaxed);
        self.last_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_unix_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Counts a checkpoint that could not be published.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the checkpoint the run resumed from.
    pub fn restored(&self, number: u64) {
        self.restored.store(number, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn totals(&self) -> CheckpointTotals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let at = load(&self.last_unix_ms);
        let restored = load(&self.restored);
        CheckpointTotals {
            completed: load(&self.completed),
            failed: load(&self.failed),
            last_number: load(&self.last_number),
            last_bytes: load(&self.last_bytes),
            last_duration: Duration::from_micros(load(&self.last_micros)),
            last_at: (at > 0).then(|| UNIX_EPOCH + Duration::from_millis(at)),
            restored: (restored > 0).then_some(restored),
        }
    }
}

/// `w{worker}.{checksum}.bin` → (worker, checksum).
fn parse_part_name(name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix('w')?.strip_suffix(".bin")?;
    let (worker, sum) = rest.split_once('.')?;
    Some((worker.parse().ok()?, u64::from_str_radix(sum, 16).ok()?))
}

/// The manifest in `dir`, checked to be one this build reads.
fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| format!("manifest: {e}"))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| format!("manifest: {e}"))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(format!(
            "manifest: format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
            manifest.format, manifest.version
        ));
    }
    Ok(manifest)
}

/// One checkpoint, read and verified (its `chain` is its own parts only).
fn load(dir: &Path) -> Result<Loaded, String> {
    let manifest = read_manifest(dir)?;
    if manifest.parts.len() != manifest.workers {
        return Err(format!(
            "{} parts for {} workers",
            manifest.parts.len(),
            manifest.workers
        ));
    }
    let mut parts = Vec::with_capacity(manifest.parts.len());
    for part in &manifest.parts {
        let bytes = fs::read(dir.join(&part.file)).map_err(|e| format!("{}: {e}", part.file))?;
        if bytes.len() as u64 != part.bytes || checksum(&bytes) != part.checksum {
            return Err(format!(
                "{}: {} bytes, checksum {:016x}; the manifest says {} bytes, {:016x}",
                part.file,
                bytes.len(),
                checksum(&bytes),
                part.bytes,
                part.checksum
            ));
        }
        parts.push(
            bincode::deserialize::<WorkerState>(&bytes)
                .map_err(|e| format!("{}: {e}", part.file))?,
        );
    }
    Ok(Loaded {
        number: manifest.number,
        inputs: manifest.inputs,
        chain: vec![parts],
        published: UNIX_EPOCH + Duration::from_millis(manifest.unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meterflow-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn state(tag: u8) -> WorkerState {
        WorkerState {
            sinks: vec![SinkState {
                name: "s".into(),
                chain: "rate_of_change".into(),
                stages: vec![StageState {
                    whole: true,
                    bytes: vec![tag; 40],
                }],
            }],
        }
    }

    fn take(c: &Checkpoints, workers: usize, tag: u8) -> Published {
        take_after(c, workers, tag, None)
    }

    /// Takes a checkpoint holding the changes since `previous` (whole without).
    fn take_after(c: &Checkpoints, workers: usize, tag: u8, previous: Option<u64>) -> Published {
        let number = c.next_number();
        for w in 0..workers {
            c.write_part(number, w, &state(tag)).unwrap();
        }
        let inputs = vec![InputRecord {
            name: "in".into(),
            position: Some(SourcePosition {
                bytes: u64::from(tag),
                ..SourcePosition::default()
            }),
        }];
        c.publish(number, workers, inputs, previous).unwrap()
    }

    #[test]
    fn the_newest_complete_checkpoint_is_loaded_and_two_are_kept() {
        let root = temp("newest");
        let c = Checkpoints::open(&root).unwrap();
        assert!(c.newest().is_none());
        for tag in 1..=4 {
            assert_eq!(take(&c, 2, tag).number, u64::from(tag));
        }
        // An unfinished one (a crash before its manifest) is ignored.
        c.write_part(5, 0, &state(5)).unwrap();
        let loaded = c.newest().unwrap();
        assert_eq!(loaded.number, 4);
        assert_eq!(loaded.chain.len(), 1, "a whole checkpoint");
        assert_eq!(loaded.chain[0].len(), 2);
        assert_eq!(loaded.chain[0][1].sinks[0].stages[0].bytes, vec![4; 40]);
        assert_eq!(loaded.inputs[0].position.as_ref().unwrap().bytes, 4);
        assert_eq!(c.next_number(), 6);
        assert_eq!(take(&c, 2, 6).number, 6);
        assert_eq!(c.numbers(), [4, 6], "older and unfinished ones are removed");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_damaged_checkpoint_is_skipped_for_the_one_before() {
        let root = temp("damaged");
        let c = Checkpoints::open(&root).unwrap();
        take(&c, 2, 1);
        take(&c, 2, 2);
        let dir = root.join(dir_name(2));
        let part = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("w1."))
            .unwrap()
            .path();
        let mut bytes = fs::read(&part).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&part, &bytes).unwrap();
        assert_eq!(c.newest().unwrap().number, 1, "a flipped byte");
        fs::write(&part, &bytes[..5]).unwrap();
        assert_eq!(c.newest().unwrap().number, 1, "a short part");
        fs::write(dir.join(MANIFEST), b"{\"format\": ").unwrap();
        assert_eq!(c.newest().unwrap().number, 1, "a torn manifest");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn checkpoints_of_changes_load_with_those_they_build_on_which_are_kept() {
        let root = temp("changes");
        let c = Checkpoints::open(&root).unwrap();
        take(&c, 2, 1);
        take_after(&c, 2, 2, Some(1));
        take_after(&c, 2, 3, Some(2));
        let loaded = c.newest().unwrap();
        assert_eq!(loaded.number, 3);
        let tags: Vec<u8> = loaded
            .chain
            .iter()
            .map(|parts| parts[0].sinks[0].stages[0].bytes[0])
            .collect();
        assert_eq!(tags, [1, 2, 3], "oldest (the whole one) first");
        assert_eq!(loaded.inputs[0].position.as_ref().unwrap().bytes, 3);
        assert_eq!(
            c.numbers(),
            [1, 2, 3],
            "3 and 2 are kept, and 1 they build on"
        );
        // A new whole one: 3 and what it builds on stay as the one before.
        take(&c, 2, 4);
        assert_eq!(c.numbers(), [1, 2, 3, 4]);
        take_after(&c, 2, 5, Some(4));
        assert_eq!(c.numbers(), [4, 5], "only 5, 4, and what they build on");
        // 4, whole, damaged: neither it nor 5, which builds on it, can be restored.
        let part = fs::read_dir(root.join(dir_name(4)))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("w0."))
            .unwrap()
            .path();
        fs::write(&part, b"torn").unwrap();
        assert!(
            c.newest().is_none(),
            "4 is whole and damaged; 5 builds on it"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_missing_part_is_refused_at_publish() {
        let root = temp("missing");
        let c = Checkpoints::open(&root).unwrap();
        c.write_part(1, 0, &state(1)).unwrap();
        let e = c.publish(1, 2, Vec::new(), None).unwrap_err().to_string();
        assert!(e.contains("expected 0..2"), "{e}");
        assert!(c.newest().is_none());
        fs::remove_dir_all(root).unwrap();
    }
}
