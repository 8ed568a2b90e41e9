//! The mirror's manifest: every verified object (key, size, ETag, checksum, verification level,
//! time, and the identity of the file that was verified), one JSON object per line.
//!
//! ```text
//! DEST/.era5/manifest.jsonl                    the snapshot; `era5 sync` appends to it
//! DEST/.era5/journals/<worker>.<id>.jsonl      one journal per worker process incarnation
//! DEST/.era5/compact.lock                      taken to rewrite the snapshot
//! ```
//!
//! - **One journal per process incarnation.** A worker appends only to a journal of its own,
//!   named after its worker name and a random incarnation id, so two writers never share a
//!   file (not `w/1` and `w_1`, not two sources of one worker, not a restarted worker and its
//!   previous life). It holds an exclusive `flock` on it while it lives. `era5 sync`, which
//!   holds DEST exclusively, appends to the snapshot.
//! - **Batched.** Records are buffered and appended with one write and one `fdatasync` per batch
//!   ([`BATCH_SIZE`] records or [`BATCH_INTERVAL`]), not once per file. A failed append is cut
//!   back off the file, so a full disk never leaves a torn line in the middle.
//! - **Crash-safe.** A crash can only lose the unflushed tail or tear the last line; loading
//!   skips a torn line. A record is written only after its file was promoted.
//! - **A record is tied to the bytes at the path**: it carries the inode and mtime of the file
//!   it vouches for, and triage trusts it only while the file at the path still has them.
//!   **The manifest never vouches for bytes it did not see.**
//! - **Merges do not depend on wall clocks.** Within one file the later line wins (one writer,
//!   in order). When two files disagree about a key, the record whose identity matches the
//!   file at the path wins; if none does, the key is dropped and triage verifies the file.
//! - **Compaction** merges journals whose process is gone (their `flock` is free) into the
//!   snapshot, rewriting it atomically, when they add up to an eighth of it or number
//!   [`COMPACT_FILES`]; `era5 sync` also rewrites a snapshot that superseded lines dominate.
//! - **Bounded memory.** In memory a record is a fixed 80-byte slot (hashes instead of
//!   strings), sorted by the MD5 of its key: a million records take about 80 MiB, and loading
//!   them streams line by line.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fast_md5::Md5;
use crate::verify::{EtagForm, VerifyMode};

/// Records per appended batch.
pub const BATCH_SIZE: usize = 64;
/// Longest time a record waits in the buffer.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Dead journals that trigger a compaction whatever their size.
pub const COMPACT_FILES: usize = 16;

const SNAPSHOT: &str = "manifest.jsonl";
const JOURNALS: &str = "journals";
const COMPACT_LOCK: &str = "compact.lock";

/// The file a record vouches for: its inode and modification time (with the size, which the
/// record carries anyway). A rename onto the path, or a write into the file, changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Inode number.
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl FileIdentity {
    /// The identity of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// One verified object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Object key (also the path under DEST).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Unquoted ETag of the version verified.
    pub etag: Option<String>,
    /// Last-Modified of that version (RFC 3339), to recognise it in listings without ETags.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// Additional checksum verified (`algo:base64`), if any.
    #[serde(default)]
    pub checksum: Option<String>,
    /// The strongest check that passed.
    pub verified: VerifyMode,
    /// When (RFC 3339, UTC), for people; merges never look at it.
    pub verified_at: String,
    /// The file that was verified. Records written before identities existed have none and
    /// are trusted by size, as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileIdentity>,
}

/// What the manifest remembers of a record, for triage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Size in bytes.
    pub size: u64,
    /// The strongest check that passed.
    pub verified: VerifyMode,
    /// The file that was verified.
    pub file: Option<FileIdentity>,
    etag: Option<Tag>,
    modified: Option<u64>,
}

impl Recorded {
    /// Whether the record is of the version with this ETag.
    pub fn etag_is(&self, etag: &str) -> bool {
        self.etag == Some(Tag::of(etag))
    }

    /// Whether the record is of the version with this Last-Modified.
    pub fn modified_is(&self, last_modified: &str) -> bool {
        self.modified == Some(hash64(last_modified))
    }
}

/// An ETag in 20 bytes: the MD5 it states and its part count, or a hash of an opaque one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tag {
    digest: [u8; 16],
    /// Parts of a multipart ETag; 0 for a single MD5; `u32::MAX` for an opaque tag.
    parts: u32,
}

impl Tag {
    fn of(etag: &str) -> Self {
        match EtagForm::parse(etag) {
            Some(EtagForm::Single(digest)) => Tag { digest, parts: 0 },
            Some(EtagForm::Multipart { digest, parts }) if parts < u32::MAX as u64 => Tag {
                digest,
                parts: parts as u32,
            },
            _ => Tag {
                digest: Md5::digest(etag.as_bytes()),
                parts: u32::MAX,
            },
        }
    }
}

fn hash64(text: &str) -> u64 {
    let digest = Md5::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

fn key_hash(key: &str) -> [u8; 16] {
    Md5::digest(key.as_bytes())
}

const HAS_ETAG: u8 = 1;
const HAS_MODIFIED: u8 = 2;
const HAS_FILE: u8 = 4;

/// A record in memory: 80 bytes, whatever its strings.
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: [u8; 16],
    size: u64,
    etag: [u8; 16],
    etag_parts: u32,
    flags: u8,
    verified: VerifyMode,
    /// Which loaded file it came from (for conflicts and compaction).
    source: u16,
    modified: u64,
    ino: u64,
    mtime_ns: i64,
    /// Where its line starts in that file.
    offset: u64,
}

/// No file: a record made by this process.
const NO_SOURCE: u16 = u16::MAX;

impl Slot {
    fn new(view: &EntryView<'_>, source: u16, offset: u64) -> Self {
        let mut flags = 0;
        let tag = view.etag.as_deref().map(|etag| {
            flags |= HAS_ETAG;
            Tag::of(etag)
        });
        let modified = view.last_modified.as_deref().map(|m| {
            flags |= HAS_MODIFIED;
            hash64(m)
        });
        if view.file.is_some() {
            flags |= HAS_FILE;
        }
        let file = view.file.unwrap_or(FileIdentity {
            ino: 0,
            mtime_ns: 0,
        });
        Slot {
            key: key_hash(&view.key),
            size: view.size,
            etag: tag.map_or([0; 16], |t| t.digest),
            etag_parts: tag.map_or(0, |t| t.parts),
            flags,
            verified: view.verified,
            source,
            modified: modified.unwrap_or(0),
            ino: file.ino,
            mtime_ns: file.mtime_ns,
            offset,
        }
    }

    fn recorded(&self) -> Recorded {
        Recorded {
            size: self.size,
            verified: self.verified,
            file: self.file(),
            etag: (self.flags & HAS_ETAG != 0).then_some(Tag {
                digest: self.etag,
                parts: self.etag_parts,
            }),
            modified: (self.flags & HAS_MODIFIED != 0).then_some(self.modified),
        }
    }

    fn file(&self) -> Option<FileIdentity> {
        (self.flags & HAS_FILE != 0).then_some(FileIdentity {
            ino: self.ino,
            mtime_ns: self.mtime_ns,
        })
    }
}

/// The fields of a line that memory keeps; the rest is skipped while parsing.
#[derive(Deserialize)]
struct EntryView<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    size: u64,
    #[serde(default, borrow)]
    etag: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    last_modified: Option<std::borrow::Cow<'a, str>>,
    verified: VerifyMode,
    #[serde(default)]
    file: Option<FileIdentity>,
}

/// The loaded manifest with its write buffer.
#[derive(Debug)]
pub struct Manifest {
    dest: PathBuf,
    path: PathBuf,
    /// Loaded records, sorted by key hash, one per key.
    index: Vec<Slot>,
    /// Records of keys this process added that were not loaded.
    added: HashMap<[u8; 16], Slot>,
    pending: Vec<ManifestEntry>,
    /// Appended to; for a worker, its own journal, locked while it lives.
    journal: File,
    /// The journal's length after the last complete append.
    journal_len: u64,
    last_flush: Instant,
}

impl Manifest {
    /// Loads the manifest of `state_dir` (`DEST/.era5`) and opens the journal of `writer`:
    /// the snapshot for `era5 sync` (`None`), a new journal of this incarnation for a worker.
    /// Journals of dead processes are compacted into the snapshot first when they have grown.
    pub fn open(state_dir: &Path, writer: Option<&str>) -> std::io::Result<Self> {
        let dest = state_dir.parent().unwrap_or(state_dir).to_path_buf();
        let journals = state_dir.join(JOURNALS);
        std::fs::create_dir_all(&journals)?;
        let snapshot = state_dir.join(SNAPSHOT);
        let compact_lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(COMPACT_LOCK))?;
        match writer {
            None => {
                // DEST is ours alone: every journal is dead, and legacy ones may go too.
                flock(&compact_lock, libc::LOCK_EX)?;
                let (dead, legacy) = dead_journals(state_dir, true)?;
                let mut sources = vec![snapshot.clone()];
                sources.extend(legacy.iter().cloned());
                sources.extend(dead.iter().map(|(path, _)| path.clone()));
                let loaded = load(&dest, &sources)?;
                if loaded.should_compact(&sources) {
                    write_snapshot(&snapshot, &sources, &loaded.index)?;
                    for path in sources.iter().skip(1) {
                        std::fs::remove_file(path)?;
                    }
                    sync_dir(state_dir)?;
                }
                let (journal, journal_len) = open_journal(&snapshot)?;
                Ok(Self::with(
                    dest,
                    snapshot,
                    loaded.index,
                    journal,
                    journal_len,
                ))
            }
            Some(name) => {
                compact_dead_journals(&dest, state_dir, &compact_lock)?;
                // From here until the load ends no compaction runs: none may take a journal
                // being read, nor mistake ours for a dead one before we lock it.
                flock(&compact_lock, libc::LOCK_SH)?;
                let path = journals.join(format!(
                    "{}.{:x}-{:x}-{:016x}.jsonl",
                    sanitize(name),
                    jiff::Timestamp::now().as_second(),
                    std::process::id(),
                    rand::random::<u64>()
                ));
                let (journal, journal_len) = open_journal(&path)?;
                flock(&journal, libc::LOCK_EX | libc::LOCK_NB)?;
                let (_, legacy) = dead_journals(state_dir, true)?;
                let mut sources = vec![snapshot];
                sources.extend(legacy);
                sources.extend(
                    journal_files(&journals)?
                        .into_iter()
                        .filter(|other| *other != path),
                );
                let loaded = load(&dest, &sources)?;
                drop(compact_lock);
                Ok(Self::with(dest, path, loaded.index, journal, journal_len))
            }
        }
    }

    fn with(
        dest: PathBuf,
        path: PathBuf,
        index: Vec<Slot>,
        journal: File,
        journal_len: u64,
    ) -> Self {
        Self {
            dest,
            path,
            index,
            added: HashMap::new(),
            pending: Vec::new(),
            journal,
            journal_len,
            last_flush: Instant::now(),
        }
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// DEST.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// What is recorded for `key`, including unflushed records.
    pub fn get(&self, key: &str) -> Option<Recorded> {
        let hash = key_hash(key);
        if let Some(slot) = self.added.get(&hash) {
            return Some(slot.recorded());
        }
        self.index
            .binary_search_by(|slot| slot.key.cmp(&hash))
            .ok()
            .map(|at| self.index[at].recorded())
    }

    /// Number of objects recorded.
    pub fn len(&self) -> usize {
        self.index.len() + self.added.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a verified object; appends the batch when it is full or old enough. On an
    /// error the record stays buffered for the next flush.
    pub fn record(&mut self, entry: ManifestEntry) -> std::io::Result<()> {
        let view = EntryView {
            key: entry.key.as_str().into(),
            size: entry.size,
            etag: entry.etag.as_deref().map(Into::into),
            last_modified: entry.last_modified.as_deref().map(Into::into),
            verified: entry.verified,
            file: entry.file,
        };
        let slot = Slot::new(&view, NO_SOURCE, 0);
        match self.index.binary_search_by(|s| s.key.cmp(&slot.key)) {
            Ok(at) => self.index[at] = slot,
            Err(_) => {
                self.added.insert(slot.key, slot);
            }
        }
        self.pending.push(entry);
        if self.pending.len() >= BATCH_SIZE || self.last_flush.elapsed() >= BATCH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends every buffered record and makes it durable. A failed append (a full disk) is
    /// cut back off, and the records stay buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(self.pending.len() * 256);
        for entry in &self.pending {
            serde_json::to_writer(&mut batch, entry)?;
            batch.push(b'\n');
        }
        let appended = self
            .journal
            .write_all(&batch)
            .and_then(|()| self.journal.sync_data());
        if let Err(error) = appended {
            // Never leave half a batch: the next append would glue a record onto it.
            let _ = self.journal.set_len(self.journal_len);
            return Err(error);
        }
        self.journal_len += batch.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::error!(path = %self.path.display(), %error, "could not write the manifest");
        }
    }
}

fn flock(file: &File, mode: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), mode) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens `path` for appending, cutting off a torn last line a crash may have left.
fn open_journal(path: &Path) -> std::io::Result<(File, u64)> {
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut len = journal.metadata()?.len();
    if len > 0 {
        let mut reader = BufReader::new(&journal);
        let mut last = [0u8; 1];
        use std::os::unix::fs::FileExt;
        journal.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            // Find the end of the last complete line.
            let mut complete = 0u64;
            let mut offset = 0u64;
            let mut line = Vec::new();
            reader.seek(SeekFrom::Start(0))?;
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line)?;
                if read == 0 {
                    break;
                }
                offset += read as u64;
                if line.last() == Some(&b'\n') {
                    complete = offset;
                }
            }
            journal.set_len(complete)?;
            len = complete;
        }
    }
    Ok((journal, len))
}

/// A worker name as a file-name part: letters, digits, `-` and `_`.
fn sanitize(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if clean.is_empty() {
        clean.push('w');
    }
    clean
}

/// A journal and its length.
type JournalLen = (PathBuf, u64);

/// Journals nobody writes any more (their `flock` is free), with their sizes, and the legacy
/// journals of older versions (`manifest.<worker>.jsonl`). With `all_dead`, every journal
/// counts as dead without a check (`era5 sync` holds DEST).
fn dead_journals(
    state_dir: &Path,
    all_dead: bool,
) -> std::io::Result<(Vec<JournalLen>, Vec<PathBuf>)> {
    let mut dead = Vec::new();
    for path in journal_files(&state_dir.join(JOURNALS))? {
        let file = File::open(&path)?;
        if all_dead || flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            let len = file.metadata()?.len();
            dead.push((path, len));
        }
    }
    let mut legacy = Vec::new();
    for entry in std::fs::read_dir(state_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("manifest.") && name.ends_with(".jsonl") && name != SNAPSHOT {
            legacy.push(path);
        }
    }
    legacy.sort();
    Ok((dead, legacy))
}

/// The journals in `dir`, sorted; none when there is no such folder (a mirror written before
/// journals existed, read by `audit` or `verify`, which create nothing).
fn journal_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// A worker's compaction: if no one else is compacting, merges the journals of dead
/// processes into the snapshot once they are worth it.
fn compact_dead_journals(dest: &Path, state_dir: &Path, lock: &File) -> std::io::Result<()> {
    if flock(lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return Ok(());
    }
    let snapshot = state_dir.join(SNAPSHOT);
    let (dead, _legacy) = dead_journals(state_dir, false)?;
    let dead_bytes: u64 = dead.iter().map(|(_, len)| len).sum();
    let snapshot_bytes = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    let worth_it =
        !dead.is_empty() && (dead.len() >= COMPACT_FILES || dead_bytes >= snapshot_bytes / 8);
    if worth_it {
        let mut sources = vec![snapshot.clone()];
        sources.extend(dead.iter().map(|(p, _)| p.clone()));
        let loaded = load(dest, &sources)?;
        write_snapshot(&snapshot, &sources, &loaded.index)?;
        for (path, _) in &dead {
            std::fs::remove_file(path)?;
        }
        sync_dir(state_dir)?;
        tracing::info!(
            journals = dead.len(),
            records = loaded.index.len(),
            "compacted finished manifest journals into the snapshot"
        );
    }
    flock(lock, libc::LOCK_UN)
}

/// What loading found.
struct Loaded {
    index: Vec<Slot>,
    /// Readable lines per source.
    lines: Vec<usize>,
}

impl Loaded {
    /// Whether `era5 sync` should rewrite the snapshot: journals to merge, or a snapshot
    /// mostly made of superseded lines.
    fn should_compact(&self, sources: &[PathBuf]) -> bool {
        let journals = sources.len() > 1;
        let snapshot_lines = self.lines.first().copied().unwrap_or(0);
        let journal_files = sources.len() - 1;
        let journal_lines: usize = self.lines[1..].iter().sum();
        (journals && (journal_files >= COMPACT_FILES || journal_lines * 8 >= snapshot_lines.max(1)))
            || snapshot_lines > 2 * self.index.len() + BATCH_SIZE
    }
}

/// Loads every source, in order, into one record per key (see the module doc for which).
fn load(dest: &Path, sources: &[PathBuf]) -> std::io::Result<Loaded> {
    // Lines are about 300 bytes; reserving for 160-byte ones never reallocates (a doubling
    // would hold the old and the new buffer at once), and untouched capacity costs nothing
    // resident. It is given back below.
    let bytes: u64 = sources
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut slots: Vec<Slot> = Vec::with_capacity((bytes / 160) as usize + 16);
    let mut lines = Vec::with_capacity(sources.len());
    for (number, path) in sources.iter().enumerate() {
        let source = number.min(NO_SOURCE as usize - 1) as u16;
        lines.push(scan(path, |offset, view| {
            slots.push(Slot::new(view, source, offset))
        })?);
    }
    // Within one key, records stay in load order (source, then position in it); an unstable
    // sort needs no buffer of half the records, as a stable one would.
    slots.sort_unstable_by_key(|slot| (slot.key, slot.source, slot.offset));
    // One record per key, kept in place.
    let mut kept = 0;
    let mut run_start = 0;
    while run_start < slots.len() {
        let key = slots[run_start].key;
        let run_end = slots[run_start..]
            .iter()
            .position(|s| s.key != key)
            .map_or(slots.len(), |n| run_start + n);
        let run = &slots[run_start..run_end];
        let last = run[run.len() - 1];
        let chosen = if run.iter().all(|s| s.source == last.source) {
            Some(last)
        } else {
            resolve(dest, sources, run)?
        };
        if let Some(chosen) = chosen {
            slots[kept] = chosen;
            kept += 1;
        }
        run_start = run_end;
    }
    slots.truncate(kept);
    slots.shrink_to_fit();
    Ok(Loaded {
        index: slots,
        lines,
    })
}

/// Two files disagree about a key: the record matching the file at the path wins (the last
/// one per file); none matching, the key is dropped and triage verifies the file.
fn resolve(dest: &Path, sources: &[PathBuf], run: &[Slot]) -> std::io::Result<Option<Slot>> {
    let Some(key) = key_at(&sources[run[0].source as usize], run[0].offset)? else {
        return Ok(None);
    };
    let Ok(path) = common::paths::final_path(dest, &key) else {
        return Ok(None);
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(None);
    };
    let current = FileIdentity::of(&meta);
    // The last record of each file speaks for that file.
    let mut candidates: Vec<Slot> = Vec::new();
    for slot in run {
        match candidates.iter_mut().find(|c| c.source == slot.source) {
            Some(existing) => *existing = *slot,
            None => candidates.push(*slot),
        }
    }
    Ok(candidates
        .into_iter()
        .rev()
        .find(|c| c.file() == Some(current) && c.size == meta.len()))
}

/// The key of the record whose line starts at `offset` in `path`.
fn key_at(path: &Path, offset: u64) -> std::io::Result<Option<String>> {
    let mut reader = BufReader::new(File::open(path)?);
    reader.seek(SeekFrom::Start(offset))?;
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    Ok(serde_json::from_slice::<EntryView<'_>>(&line)
        .ok()
        .map(|view| view.key.into_owned()))
}

/// Calls `visit` with the start offset and the parsed fields of every readable line of
/// `path`; returns how many there were. A missing file has none.
fn scan(path: &Path, mut visit: impl FnMut(u64, &EntryView<'_>)) -> std::io::Result<usize> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    let (mut offset, mut number, mut readable) = (0u64, 0usize, 0usize);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(readable);
        }
        number += 1;
        if !line.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<EntryView<'_>>(&line) {
                Ok(view) => {
                    readable += 1;
                    visit(offset, &view);
                }
                // A torn last line after a crash, or a damaged one: that object is
                // re-verified from its bytes, so skipping is safe.
                Err(error) => {
                    tracing::warn!(path = %path.display(), line = number, %error, "skipping unreadable manifest line")
                }
            }
        }
        offset += read as u64;
    }
}

/// Writes the records of `index` (copied line for line from their sources) as the new
/// snapshot: a temporary file, fsynced, renamed over the old one.
fn write_snapshot(snapshot: &Path, sources: &[PathBuf], index: &[Slot]) -> std::io::Result<()> {
    let mut wanted: Vec<(u16, u64)> = index.iter().map(|s| (s.source, s.offset)).collect();
    wanted.sort_unstable();
    let temp = snapshot.with_extension("jsonl.compact");
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&temp)?);
        let mut next = wanted.iter().peekable();
        for (number, path) in sources.iter().enumerate() {
            let Ok(file) = File::open(path) else {
                continue;
            };
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut line = Vec::with_capacity(512);
            let mut offset = 0u64;
            while let Some(&&(source, at)) = next.peek() {
                if source as usize != number {
                    break;
                }
                // Skip to the wanted line.
                while offset < at {
                    line.clear();
                    let read = reader.read_until(b'\n', &mut line)?;
                    if read == 0 {
                        break;
                    }
                    offset += read as u64;
                }
                line.clear();
                let read = reader.read_until(b'\n', &mut line)?;
                offset += read as u64;
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                out.write_all(&line)?;
                next.next();
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&temp, snapshot)
}

/// Takes `keys` out of the manifest of `state_dir` (`era5 verify --repair`, for files that no
/// longer match their records): every journal is merged into a new snapshot without them,
/// written atomically. The caller must hold DEST exclusively (`Mirror::open`) and have no
/// [`Manifest`] open on it. Returns how many records were removed.
pub fn forget_records(
    state_dir: &Path,
    keys: &std::collections::HashSet<String>,
) -> std::io::Result<usize> {
    let dest = state_dir.parent().unwrap_or(state_dir).to_path_buf();
    let snapshot = state_dir.join(SNAPSHOT);
    let compact_lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state_dir.join(COMPACT_LOCK))?;
    flock(&compact_lock, libc::LOCK_EX)?;
    let (dead, legacy) = dead_journals(state_dir, true)?;
    let mut sources = vec![snapshot.clone()];
    sources.extend(legacy);
    sources.extend(dead.into_iter().map(|(path, _)| path));
    let mut loaded = load(&dest, &sources)?;
    let hashes: std::collections::HashSet<[u8; 16]> = keys.iter().map(|k| key_hash(k)).collect();
    let before = loaded.index.len();
    loaded.index.retain(|slot| !hashes.contains(&slot.key));
    let removed = before - loaded.index.len();
    write_snapshot(&snapshot, &sources, &loaded.index)?;
    for merged in sources.iter().skip(1) {
        std::fs::remove_file(merged)?;
    }
    sync_dir(state_dir)?;
    Ok(removed)
}

/// Every record of the manifest in `state_dir` whose key `keep` accepts, merged as [`Manifest`]
/// merges them (the later line within a file; across files, the record matching the file at
/// the path, none when no record does), read without writing, locking or creating anything:
/// for commands that inspect a mirror (`era5 audit`, `era5 verify`) while a sync or workers
/// may be writing it. A missing `state_dir` is an empty manifest. Only kept records are held
/// in memory, whole (ETags and checksums as written).
pub fn read_records(
    state_dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> std::io::Result<HashMap<String, ManifestEntry>> {
    let mut merged: HashMap<String, ManifestEntry> = HashMap::new();
    if !state_dir.is_dir() {
        return Ok(merged);
    }
    let dest = state_dir.parent().unwrap_or(state_dir);
    let (_, legacy) = dead_journals(state_dir, true)?;
    let journals = journal_files(&state_dir.join(JOURNALS))?;
    let mut dropped: std::collections::HashSet<String> = std::collections::HashSet::new();
    let sources = std::iter::once(state_dir.join(SNAPSHOT))
        .chain(legacy)
        .chain(journals);
    for source in sources {
        for (key, entry) in read_file_records(&source, &keep)? {
            if dropped.contains(&key) {
                continue;
            }
            let Some(known) = merged.get(&key) else {
                merged.insert(key, entry);
                continue;
            };
            if same_record(known, &entry) {
                continue;
            }
            let on_disk = common::paths::relative_path(&key)
                .ok()
                .and_then(|relative| std::fs::metadata(dest.join(relative)).ok())
                .map(|meta| FileIdentity::of(&meta));
            if on_disk.is_some() && entry.file == on_disk {
                merged.insert(key, entry);
            } else if on_disk.is_none() || known.file != on_disk {
                // Neither vouches for the file at the path: no record, as triage would see it.
                merged.remove(&key);
                dropped.insert(key);
            }
        }
    }
    Ok(merged)
}

/// Whether two records describe the same verification (the time aside).
fn same_record(a: &ManifestEntry, b: &ManifestEntry) -> bool {
    a.size == b.size && a.etag == b.etag && a.checksum == b.checksum && a.file == b.file
}

/// One file's kept records, the later line winning; a torn or damaged line is skipped.
fn read_file_records(
    path: &Path,
    keep: &impl Fn(&str) -> bool,
) -> std::io::Result<HashMap<String, ManifestEntry>> {
    let mut records = HashMap::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(error) => return Err(error),
    };
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if let Ok(entry) = serde_json::from_slice::<ManifestEntry>(&line)
            && keep(&entry.key)
        {
            records.insert(entry.key.clone(), entry);
        }
    }
    Ok(records)
}

/// Now, RFC 3339 UTC, for `verified_at`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, etag: &str) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: 10,
            etag: Some(etag.into()),
            last_modified: None,
            checksum: None,
            verified: VerifyMode::Full,
            verified_at: now_rfc3339(),
            file: None,
        }
    }

    /// A DEST with its state folder; returns (dest, state_dir).
    fn dest() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".era5");
        std::fs::create_dir_all(&state).unwrap();
        (dir, state)
    }

    /// Writes `bytes` at `DEST/key` and returns a record vouching for that file.
    fn promoted(dest: &Path, key: &str, etag: &str, bytes: &[u8]) -> ManifestEntry {
        let path = dest.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let temp = dest.join(format!(".tmp-{}", rand::random::<u32>()));
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, &path).unwrap();
        ManifestEntry {
            size: bytes.len() as u64,
            file: Some(FileIdentity::of(&std::fs::metadata(&path).unwrap())),
            ..entry(key, etag)
        }
    }

    #[test]
    fn records_survive_reopen_and_the_last_one_wins() {
        let (_dir, state) = dest();
        {
            let mut manifest = Manifest::open(&state, None).unwrap();
            manifest.record(entry("a", "1")).unwrap();
            manifest.record(entry("a", "2")).unwrap();
            manifest.record(entry("b", "1")).unwrap();
        } // dropped: flushed
        let manifest = Manifest::open(&state, None).unwrap();
        assert_eq!(manifest.len(), 2);
        assert!(manifest.get("a").unwrap().etag_is("2"));
        assert!(!manifest.get("a").unwrap().etag_is("1"));
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_cut_before_the_next_append() {
        let (_dir, state) = dest();
        {
            let mut manifest = Manifest::open(&state, None).unwrap();
            manifest.record(entry("a", "1")).unwrap();
            manifest.flush().unwrap();
        }
        let path = state.join(SNAPSHOT);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"key\":\"b\",\"si").unwrap();
        {
            let mut manifest = Manifest::open(&state, None).unwrap();
            assert_eq!(manifest.len(), 1);
            assert!(manifest.get("a").is_some());
            manifest.record(entry("c", "1")).unwrap();
        }
        let manifest = Manifest::open(&state, None).unwrap();
        assert_eq!(manifest.len(), 2, "the record after the torn line was lost");
        assert!(manifest.get("c").is_some());
    }

    #[test]
    fn records_are_written_in_batches() {
        let (_dir, state) = dest();
        let path = state.join(SNAPSHOT);
        let mut manifest = Manifest::open(&state, None).unwrap();
        for i in 0..BATCH_SIZE - 1 {
            manifest.record(entry(&format!("k{i}"), "1")).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            0,
            "written before the batch filled"
        );
        manifest.record(entry("last", "1")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            BATCH_SIZE
        );
    }

    #[test]
    fn journal_names_never_collide() {
        let (_dir, state) = dest();
        // Names that sanitise alike, and two journals of one worker in one process.
        let a = Manifest::open(&state, Some("w/1")).unwrap();
        let b = Manifest::open(&state, Some("w_1")).unwrap();
        let c = Manifest::open(&state, Some("w_1")).unwrap();
        let paths = [a.path(), b.path(), c.path()];
        for (i, p) in paths.iter().enumerate() {
            for q in &paths[i + 1..] {
                assert_ne!(p, q);
            }
        }
    }

    #[test]
    fn a_conflict_between_writers_is_won_by_the_record_of_the_file_at_the_path() {
        let (dir, state) = dest();
        let key = "p/1/x.nc";
        // The newer file is written first by a worker whose clock is ahead...
        let mut newer = promoted(dir.path(), key, "new", b"new bytes");
        newer.verified_at = "2099-01-01T00:00:00Z".into();
        let mut older = Manifest::open(&state, Some("slow")).unwrap();
        let mut fast = Manifest::open(&state, Some("fast")).unwrap();
        // ...then a stale holder renames older bytes over it and records them with an old
        // clock. Wall clocks would pick "new"; the bytes at the path are "old".
        fast.record(newer).unwrap();
        let mut stale = promoted(dir.path(), key, "old", b"old bytes");
        stale.verified_at = "2000-01-01T00:00:00Z".into();
        older.record(stale).unwrap();
        drop((older, fast));
        let merged = Manifest::open(&state, Some("reader")).unwrap();
        assert!(merged.get(key).unwrap().etag_is("old"));
    }

    /// Writes a dead journal holding `entries` (as a worker that is gone would have left it).
    fn dead_journal(state: &Path, name: &str, entries: &[ManifestEntry]) {
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry).unwrap());
            text.push('\n');
        }
        std::fs::write(state.join(JOURNALS).join(format!("{name}.jsonl")), text).unwrap();
    }

    #[test]
    fn a_mirror_with_a_snapshot_alone_is_read_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".era5");
        std::fs::create_dir_all(&state).unwrap();
        let line = serde_json::to_string(&entry("a", "1")).unwrap();
        std::fs::write(state.join(SNAPSHOT), format!("{line}\n")).unwrap();
        let records = read_records(&state, |_| true).unwrap();
        assert_eq!(records.len(), 1);
        assert!(
            !state.join(JOURNALS).exists(),
            "reading created the journals folder"
        );
        assert!(
            read_records(&dir.path().join("nowhere"), |_| true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn forgotten_records_are_gone_from_every_journal_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".era5");
        std::fs::create_dir_all(&state).unwrap();
        {
            let mut sync = Manifest::open(&state, None).unwrap();
            sync.record(entry("b", "1")).unwrap();
        }
        {
            let mut worker = Manifest::open(&state, Some("w1")).unwrap();
            worker.record(entry("c", "1")).unwrap();
            worker.record(entry("a", "1")).unwrap();
        }
        let gone: std::collections::HashSet<String> = ["a".to_string()].into();
        assert_eq!(forget_records(&state, &gone).unwrap(), 1);
        let manifest = Manifest::open(&state, None).unwrap();
        assert!(manifest.get("a").is_none());
        assert!(manifest.get("b").is_some() && manifest.get("c").is_some());
        assert!(!read_records(&state, |_| true).unwrap().contains_key("a"));
    }

    #[test]
    fn a_conflict_that_matches_no_file_is_dropped_for_triage_to_verify() {
        let (dir, state) = dest();
        std::fs::create_dir_all(state.join(JOURNALS)).unwrap();
        let key = "p/1/x.nc";
        let a = promoted(dir.path(), key, "a", b"version a");
        let b = promoted(dir.path(), key, "b", b"version b");
        dead_journal(&state, "one", &[a]);
        dead_journal(&state, "two", &[b]);
        // Neither record is of the bytes now at the path.
        std::fs::write(dir.path().join(key), b"version c").unwrap();
        let merged = Manifest::open(&state, Some("reader")).unwrap();
        assert!(merged.get(key).is_none());
    }

    #[test]
    fn dead_journals_are_compacted_into_the_snapshot_and_live_ones_are_kept() {
        let (dir, state) = dest();
        std::fs::create_dir_all(state.join(JOURNALS)).unwrap();
        for i in 0..COMPACT_FILES {
            let key = format!("p/1/{i}.nc");
            dead_journal(
                &state,
                &format!("w{i}"),
                &[promoted(dir.path(), &key, "e", b"bytes")],
            );
        }
        let live = Manifest::open(&state, Some("live")).unwrap();
        assert_eq!(live.len(), COMPACT_FILES);
        let left = journal_files(&state.join(JOURNALS)).unwrap();
        assert_eq!(left, vec![live.path().to_path_buf()]);
        let snapshot = std::fs::read_to_string(state.join(SNAPSHOT)).unwrap();
        assert_eq!(snapshot.lines().count(), COMPACT_FILES);
        // A live journal is read by others but never compacted away.
        let mut live = live;
        live.record(promoted(dir.path(), "p/1/live.nc", "e", b"x"))
            .unwrap();
        live.flush().unwrap();
        for i in 0..COMPACT_FILES {
            dead_journal(&state, &format!("again{i}"), &[]);
        }
        let reader = Manifest::open(&state, Some("reader")).unwrap();
        assert_eq!(reader.len(), COMPACT_FILES + 1);
        let left = journal_files(&state.join(JOURNALS)).unwrap();
        assert!(left.contains(&live.path().to_path_buf()), "{left:?}");
        assert!(left.contains(&reader.path().to_path_buf()), "{left:?}");
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_sync_merges_every_journal_and_legacy_ones() {
        let (dir, state) = dest();
        std::fs::write(
            state.join("manifest.w_1.jsonl"),
            serde_json::to_string(&entry("legacy", "1")).unwrap() + "\n",
        )
        .unwrap();
        {
            let mut worker = Manifest::open(&state, Some("w2")).unwrap();
            worker
                .record(promoted(dir.path(), "p/1/a.nc", "e", b"bytes"))
                .unwrap();
        }
        let sync = Manifest::open(&state, None).unwrap();
        assert_eq!(sync.len(), 2);
        assert!(sync.get("legacy").is_some());
        assert!(!state.join("manifest.w_1.jsonl").exists());
        assert!(journal_files(&state.join(JOURNALS)).unwrap().is_empty());
    }

    #[test]
    fn superseded_lines_are_compacted_on_open() {
        let (_dir, state) = dest();
        {
            let mut manifest = Manifest::open(&state, None).unwrap();
            for i in 0..(3 * BATCH_SIZE) {
                manifest.record(entry("same", &i.to_string())).unwrap();
            }
        }
        let manifest = Manifest::open(&state, None).unwrap();
        assert!(
            manifest
                .get("same")
                .unwrap()
                .etag_is(&(3 * BATCH_SIZE - 1).to_string())
        );
        let lines = std::fs::read_to_string(state.join(SNAPSHOT))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 1);
    }

    #[test]
    fn a_failed_append_leaves_no_torn_line() {
        let (_dir, state) = dest();
        let mut manifest = Manifest::open(&state, None).unwrap();
        manifest.record(entry("a", "1")).unwrap();
        manifest.flush().unwrap();
        // A write that cannot happen: the journal's descriptor swapped for a read-only one.
        let path = manifest.path().to_path_buf();
        manifest.journal = File::open(&path).unwrap();
        manifest.record(entry("b", "1")).unwrap();
        assert!(manifest.flush().is_err());
        assert_eq!(manifest.pending.len(), 1, "the record stays buffered");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
    }
}
