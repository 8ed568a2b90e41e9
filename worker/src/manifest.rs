//! The mirror's manifest: append-only journals of every verified object (key, size, ETag,
//! checksum, verification level and time), one JSON object per line. `era5 sync` writes
//! `DEST/.era5/manifest.jsonl`; each cluster worker writes its own `manifest.<worker>.jsonl`,
//! so writers never share a file. Reading merges them all; for a key, the newest record wins.
//!
//! - **Batched.** Records are buffered and appended with one write and one `fdatasync` per batch
//!   ([`BATCH_SIZE`] records or [`BATCH_INTERVAL`]), not once per file.
//! - **Crash-safe.** A crash can only lose the unflushed tail or tear the last line; loading
//!   skips a torn line. A record is written only after its file was promoted, so the manifest
//!   never vouches for a file that is not at its final path; a promoted file whose record was
//!   lost is re-verified from its bytes on the next run.
//! - **Compacted** on open when superseded lines outnumber live ones.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::verify::VerifyMode;

/// Records per appended batch.
pub const BATCH_SIZE: usize = 64;
/// Longest time a record waits in the buffer.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(2);

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
    /// When (RFC 3339, UTC).
    pub verified_at: String,
}

/// The loaded manifest with its write buffer.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    entries: HashMap<String, ManifestEntry>,
    pending: Vec<ManifestEntry>,
    journal: File,
    last_flush: Instant,
}

impl Manifest {
    /// Loads every journal in `state_dir` and opens `writer`'s own (`manifest.jsonl` for
    /// `None`) for appending, compacting it first if superseded lines dominate it.
    pub fn open(state_dir: &Path, writer: Option<&str>) -> std::io::Result<Self> {
        let path = match writer {
            None => state_dir.join("manifest.jsonl"),
            Some(name) => state_dir.join(format!("manifest.{}.jsonl", sanitize(name))),
        };
        let (own, lines) = load(&path)?;
        if lines > 2 * own.len() + BATCH_SIZE {
            rewrite(&path, own.values())?;
        }
        let mut entries = own;
        for other in journals(state_dir)?.into_iter().filter(|p| *p != path) {
            for (key, entry) in load(&other)?.0 {
                match entries.get(&key) {
                    Some(mine) if mine.verified_at >= entry.verified_at => {}
                    _ => {
                        entries.insert(key, entry);
                    }
                }
            }
        }
        let journal = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            entries,
            pending: Vec::new(),
            journal,
            last_flush: Instant::now(),
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record for `key`, including unflushed ones.
    pub fn get(&self, key: &str) -> Option<&ManifestEntry> {
        self.entries.get(key)
    }

    /// Number of objects recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a verified object; appends the batch when it is full or old enough.
    pub fn record(&mut self, entry: ManifestEntry) -> std::io::Result<()> {
        self.entries.insert(entry.key.clone(), entry.clone());
        self.pending.push(entry);
        if self.pending.len() >= BATCH_SIZE || self.last_flush.elapsed() >= BATCH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends every buffered record and makes it durable.
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
        self.journal.write_all(&batch)?;
        self.journal.sync_data()?;
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

/// A worker name as a file-name part: letters, digits, `-` and `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every manifest journal in `state_dir`.
fn journals(state_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(state_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("manifest") && name.ends_with(".jsonl") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn load(path: &Path) -> std::io::Result<(HashMap<String, ManifestEntry>, usize)> {
    let mut entries = HashMap::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((entries, 0)),
        Err(error) => return Err(error),
    };
    let mut lines = 0;
    for (number, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        match serde_json::from_slice::<ManifestEntry>(&line) {
            Ok(entry) => {
                entries.insert(entry.key.clone(), entry);
            }
            // A torn last line after a crash, or a damaged one: that object is re-verified
            // from its bytes, so skipping is safe.
            Err(error) => {
                tracing::warn!(path = %path.display(), line = number + 1, %error, "skipping unreadable manifest line")
            }
        }
    }
    Ok((entries, lines))
}

fn rewrite<'a>(
    path: &Path,
    entries: impl Iterator<Item = &'a ManifestEntry>,
) -> std::io::Result<()> {
    let temp = path.with_extension("jsonl.compact");
    {
        let mut out = std::io::BufWriter::new(File::create(&temp)?);
        for entry in entries {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// Every record of every journal in `state_dir` (newest per key), read without writing or
/// creating anything: for commands that inspect a mirror (`era5 audit`, `era5 verify`) while a
/// sync or workers may be writing it. A missing `state_dir` is an empty manifest.
pub fn read_records(state_dir: &Path) -> std::io::Result<HashMap<String, ManifestEntry>> {
    let mut entries: HashMap<String, ManifestEntry> = HashMap::new();
    let paths = match journals(state_dir) {
        Ok(paths) => paths,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(error) => return Err(error),
    };
    for path in paths {
        for (key, entry) in load(&path)?.0 {
            match entries.get(&key) {
                Some(known) if known.verified_at >= entry.verified_at => {}
                _ => {
                    entries.insert(key, entry);
                }
            }
        }
    }
    Ok(entries)
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
        }
    }

    #[test]
    fn records_survive_reopen_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut manifest = Manifest::open(dir.path(), None).unwrap();
            manifest.record(entry("a", "1")).unwrap();
            manifest.record(entry("a", "2")).unwrap();
            manifest.record(entry("b", "1")).unwrap();
        } // dropped: flushed
        let manifest = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(manifest.len(), 2);
        assert_eq!(manifest.get("a").unwrap().etag.as_deref(), Some("2"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut manifest = Manifest::open(dir.path(), None).unwrap();
            manifest.record(entry("a", "1")).unwrap();
            manifest.flush().unwrap();
        }
        let path = dir.path().join("manifest.jsonl");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"key\":\"b\",\"si").unwrap();
        let manifest = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(manifest.len(), 1);
        assert!(manifest.get("a").is_some());
    }

    #[test]
    fn records_are_written_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.jsonl");
        let mut manifest = Manifest::open(dir.path(), None).unwrap();
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
    fn every_writers_journal_is_read_and_the_newest_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sync = Manifest::open(dir.path(), None).unwrap();
            let mut old = entry("shared", "old");
            old.verified_at = "2026-01-01T00:00:00Z".into();
            sync.record(old).unwrap();
            sync.record(entry("only-sync", "1")).unwrap();
        }
        {
            let mut worker = Manifest::open(dir.path(), Some("w/1")).unwrap();
            worker.record(entry("shared", "new")).unwrap();
        }
        assert!(dir.path().join("manifest.w_1.jsonl").exists());
        let merged = Manifest::open(dir.path(), Some("w2")).unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!(merged.get("shared").unwrap().etag.as_deref(), Some("new"));
    }

    #[test]
    fn superseded_lines_are_compacted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut manifest = Manifest::open(dir.path(), None).unwrap();
            for i in 0..(3 * BATCH_SIZE) {
                manifest.record(entry("same", &i.to_string())).unwrap();
            }
        }
        let manifest = Manifest::open(dir.path(), None).unwrap();
        assert_eq!(
            manifest.get("same").unwrap().etag.as_deref(),
            Some(&*(3 * BATCH_SIZE - 1).to_string())
        );
        let lines = std::fs::read_to_string(dir.path().join("manifest.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 1);
    }
}
