//! The manifest a process writes: loaded on open (dead journals compacted into the snapshot
//! first when they have grown), looked up by triage, and appended to in batches, each written
//! and fsynced at once, to the process's own journal (to the snapshot for `era5 sync`).

use rustix::fs::FlockOperation;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::merge::{compact_dead_journals, load, write_snapshot};
use super::slot::{EntryView, NO_SOURCE, Slot, key_hash};
use super::{
    BATCH_INTERVAL, BATCH_SIZE, COMPACT_LOCK, JOURNALS, ManifestEntry, Recorded, SNAPSHOT,
    dead_journals, flock, journal_files, sync_dir,
};

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
                flock(&compact_lock, FlockOperation::LockExclusive)?;
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
                flock(&compact_lock, FlockOperation::LockShared)?;
                let path = journals.join(format!(
                    "{}.{:x}-{:x}-{:016x}.jsonl",
                    sanitize(name),
                    jiff::Timestamp::now().as_second(),
                    std::process::id(),
                    rand::random::<u64>()
                ));
                let (journal, journal_len) = open_journal(&path)?;
                flock(&journal, FlockOperation::NonBlockingLockExclusive)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::testing::{dest, entry};

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
