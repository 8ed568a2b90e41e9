//! The manifest for commands that inspect or repair a mirror instead of writing it:
//! [`read_records`] reads every record without locking or creating anything, and
//! [`forget_records`] takes records out (`era5 verify --repair`).

use rustix::fs::FlockOperation;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::merge::{load, write_snapshot};
use super::slot::key_hash;
use super::{
    COMPACT_LOCK, FileIdentity, JOURNALS, ManifestEntry, SNAPSHOT, dead_journals, flock,
    journal_files, sync_dir,
};

/// Takes `keys` out of the manifest of `state_dir` (`era5 verify --repair`, for files that no
/// longer match their records): every journal is merged into a new snapshot without them,
/// written atomically. The caller must hold DEST exclusively (`Mirror::open`) and have no
/// [`Manifest`](super::Manifest) open on it. Returns how many records were removed.
pub fn forget_records(
    state_dir: &Path,
    keys: &std::collections::HashSet<String, impl std::hash::BuildHasher>,
) -> std::io::Result<usize> {
    let dest = state_dir.parent().unwrap_or(state_dir).to_path_buf();
    let snapshot = state_dir.join(SNAPSHOT);
    let compact_lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state_dir.join(COMPACT_LOCK))?;
    flock(&compact_lock, FlockOperation::LockExclusive)?;
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

/// Every record of the manifest in `state_dir` whose key `keep` accepts, merged as
/// [`Manifest`](super::Manifest) merges them (the later line within a file; across files, the
/// record matching the file at the path, none when no record does), read without writing,
/// locking or creating anything: for commands that inspect a mirror (`era5 audit`,
/// `era5 verify`) while a sync or workers may be writing it. A missing `state_dir` is an empty
/// manifest. Only kept records are held in memory, whole (ETags and checksums as written).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::manifest::testing::entry;

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
}
