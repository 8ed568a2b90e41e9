//! The manifest a process writes: loaded on open (dead journals compacted into the snapshot
//! first when they have grown), looked up by triage, and appended to in batches, each written
//! and fsynced at once, to the process's own journal (to the snapshot for `era5 sync`).
//!
//! **Appends happen on a thread of their own** (the journal writer), never on the async
//! runtime's threads: a record enters the index at once (so triage sees it) and goes to the
//! writer, which appends a batch when it is full or when its oldest record has waited
//! [`BATCH_INTERVAL`], by a real timer. So a live worker's journal is never more than a few
//! seconds behind, and `era5 audit` and `era5 verify` see what it verified while it runs.

use rustix::fs::FlockOperation;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use common::sync::MutexExt;

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
    /// Appends to the journal (for a worker, its own, locked while it lives).
    writer: JournalWriter,
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
            writer: JournalWriter::start(&path, journal, journal_len),
            dest,
            path,
            index,
            added: HashMap::new(),
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

    /// Records a verified object: at once in the index, and in the journal with its batch (full,
    /// or old enough). An error is the last append's that failed since the previous call (a
    /// full disk): the records stay buffered and are appended again with the next batch.
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
        self.writer.send(Command::Record(entry));
        match self.writer.failure.lock_unpoisoned().take() {
            Some(failure) => Err(failure.error()),
            None => Ok(()),
        }
    }

    /// Appends every buffered record and makes it durable, waiting for the writer (a blocking
    /// call: async code awaits [`Manifest::flush_soon`] instead). A failed append (a full
    /// disk) is cut back off, and the records stay buffered.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.writer.send(Command::Flush(Reply::Blocking(reply)));
        answer.recv().unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Asks the writer to append every buffered record; the answer comes when it is durable.
    /// The manifest need not stay locked while it is awaited.
    pub fn flush_soon(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'static {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.send(Command::Flush(Reply::Async(reply)));
        async move { answer.await.unwrap_or_else(|_| Err(writer_gone())) }
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        // The writer appends what is buffered (and logs a failure) when its channel closes.
        self.writer.sender.take();
        if let Some(thread) = self.writer.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_gone() -> std::io::Error {
    std::io::Error::other("the manifest's journal writer has stopped")
}

/// What the journal writer is asked to do.
enum Command {
    Record(ManifestEntry),
    Flush(Reply),
    /// Tests: write through this descriptor from now on (a read-only one makes appends fail).
    #[cfg(test)]
    SwapJournal(File),
}

/// Where a flush's result goes.
enum Reply {
    Blocking(SyncSender<std::io::Result<()>>),
    Async(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

impl Reply {
    fn send(self, result: std::io::Result<()>) {
        match self {
            Reply::Blocking(sender) => {
                let _ = sender.send(result);
            }
            Reply::Async(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}

/// A failed append, kept for the next `record` to report (io errors do not clone; the error
/// number is what callers classify by).
#[derive(Debug)]
struct Failure {
    raw: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

impl Failure {
    fn of(error: &std::io::Error) -> Self {
        Self {
            raw: error.raw_os_error(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    fn error(&self) -> std::io::Error {
        match self.raw {
            Some(raw) => std::io::Error::from_raw_os_error(raw),
            None => std::io::Error::new(self.kind, self.message.clone()),
        }
    }
}

/// The handle of the journal writer thread.
#[derive(Debug)]
struct JournalWriter {
    sender: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// The last append that failed, until `record` reports it.
    failure: Arc<Mutex<Option<Failure>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl JournalWriter {
    fn start(path: &Path, journal: File, journal_len: u64) -> Self {
        let (sender, commands) = std::sync::mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let mut batches = Batches {
            path: path.to_path_buf(),
            journal,
            journal_len,
            pending: Vec::new(),
            due: None,
            failure: failure.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("era5-manifest".into())
            .spawn(move || batches.run(&commands))
            .ok();
        if thread.is_none() {
            tracing::error!(path = %path.display(), "could not start the manifest's journal writer");
        }
        Self {
            sender: Some(sender),
            thread,
            failure,
        }
    }

    fn send(&self, command: Command) {
        if let Some(sender) = &self.sender
            && sender.send(command).is_err()
        {
            self.failure
                .lock_unpoisoned()
                .get_or_insert(Failure::of(&writer_gone()));
        }
    }
}

/// The writer thread's state: the journal and the batch being gathered.
struct Batches {
    path: PathBuf,
    journal: File,
    /// The journal's length after the last complete append.
    journal_len: u64,
    pending: Vec<ManifestEntry>,
    /// When the oldest buffered record has waited long enough (or a failed append is tried
    /// again).
    due: Option<Instant>,
    failure: Arc<Mutex<Option<Failure>>>,
}

impl Batches {
    fn run(&mut self, commands: &Receiver<Command>) {
        loop {
            let command = match self.due {
                Some(due) => commands.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Record(entry)) => {
                    self.pending.push(entry);
                    self.due
                        .get_or_insert_with(|| Instant::now() + BATCH_INTERVAL);
                    if self.pending.len() >= BATCH_SIZE {
                        self.append_unasked();
                    }
                }
                Ok(Command::Flush(reply)) => reply.send(self.append()),
                #[cfg(test)]
                Ok(Command::SwapJournal(file)) => self.journal = file,
                Err(RecvTimeoutError::Timeout) => self.append_unasked(),
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = self.append() {
                        tracing::error!(path = %self.path.display(), %error, "could not write the manifest");
                    }
                    return;
                }
            }
        }
    }

    /// An append nobody waits for (a full batch, the timer): its failure is kept for the
    /// next `record` to report.
    fn append_unasked(&mut self) {
        if let Err(error) = self.append() {
            *self.failure.lock_unpoisoned() = Some(Failure::of(&error));
        }
    }

    /// Appends every buffered record with one write and one `fdatasync`. A failed append is
    /// cut back off (never half a batch: the next would glue a record onto it); the records
    /// stay buffered, to be tried again after [`BATCH_INTERVAL`].
    fn append(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.due = None;
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
            let _ = self.journal.set_len(self.journal_len);
            self.due = Some(Instant::now() + BATCH_INTERVAL);
            return Err(error);
        }
        self.journal_len += batch.len() as u64;
        self.pending.clear();
        self.due = None;
        Ok(())
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

    /// Lines in `path` once they reach `want`, or what is there after `within`.
    fn lines_within(path: &Path, want: usize, within: std::time::Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            if lines >= want || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
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
            lines_within(&path, 1, BATCH_INTERVAL / 4),
            0,
            "written before the batch filled or its time came"
        );
        manifest.record(entry("last", "1")).unwrap();
        // A full batch goes at once, well before its time.
        assert_eq!(
            lines_within(&path, BATCH_SIZE, BATCH_INTERVAL / 2),
            BATCH_SIZE
        );
    }

    /// A worker that records one object and then nothing more (a quiet job): its journal
    /// still holds the record within the batch interval, without a flush or an exit, so that
    /// audit and verify see it.
    #[test]
    fn a_lone_record_reaches_the_journal_by_the_timer() {
        let (_dir, state) = dest();
        let mut worker = Manifest::open(&state, Some("w1")).unwrap();
        let started = Instant::now();
        worker.record(entry("lonely", "1")).unwrap();
        assert_eq!(lines_within(worker.path(), 1, BATCH_INTERVAL * 3), 1);
        let waited = started.elapsed();
        assert!(
            waited >= BATCH_INTERVAL / 2,
            "appended at once ({waited:?})"
        );
        let seen = crate::manifest::read_records(&state, |_| true).unwrap();
        assert!(seen.contains_key("lonely"));
        drop(worker);
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
        manifest
            .writer
            .send(Command::SwapJournal(File::open(&path).unwrap()));
        manifest.record(entry("b", "1")).unwrap();
        assert!(manifest.flush().is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        // The record stayed buffered: with a writable journal again it is appended.
        let writable = OpenOptions::new().append(true).open(&path).unwrap();
        manifest.writer.send(Command::SwapJournal(writable));
        manifest.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
