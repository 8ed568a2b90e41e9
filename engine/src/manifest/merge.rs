//! Merging the snapshot and the journals into one record per key (the later line within a
//! file; across files, the record matching the file at the path), and compaction, which writes
//! that merge as the new snapshot.

use rustix::fs::FlockOperation;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::slot::{EntryView, NO_SOURCE, Slot};
use super::{BATCH_SIZE, COMPACT_FILES, FileIdentity, SNAPSHOT, dead_journals, flock, sync_dir};

/// A worker's compaction: if no one else is compacting, merges the journals of dead
/// processes into the snapshot once they are worth it.
pub(super) fn compact_dead_journals(
    dest: &Path,
    state_dir: &Path,
    lock: &File,
) -> std::io::Result<()> {
    if flock(lock, FlockOperation::NonBlockingLockExclusive).is_err() {
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
    flock(lock, FlockOperation::Unlock)
}

/// What loading found.
pub(super) struct Loaded {
    pub(super) index: Vec<Slot>,
    /// Readable lines per source.
    lines: Vec<usize>,
}

impl Loaded {
    /// Whether `era5 sync` should rewrite the snapshot: journals to merge, or a snapshot
    /// mostly made of superseded lines.
    pub(super) fn should_compact(&self, sources: &[PathBuf]) -> bool {
        let journals = sources.len() > 1;
        let snapshot_lines = self.lines.first().copied().unwrap_or(0);
        let journal_files = sources.len() - 1;
        let journal_lines: usize = self.lines[1..].iter().sum();
        (journals && (journal_files >= COMPACT_FILES || journal_lines * 8 >= snapshot_lines.max(1)))
            || snapshot_lines > 2 * self.index.len() + BATCH_SIZE
    }
}

/// Loads every source, in order, into one record per key (see the module doc for which).
pub(super) fn load(dest: &Path, sources: &[PathBuf]) -> std::io::Result<Loaded> {
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
            slots.push(Slot::new(view, source, offset));
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
                    tracing::warn!(path = %path.display(), line = number, %error, "skipping unreadable manifest line");
                }
            }
        }
        offset += read as u64;
    }
}

/// Writes the records of `index` (copied line for line from their sources) as the new
/// snapshot: a temporary file, fsynced, renamed over the old one.
pub(super) fn write_snapshot(
    snapshot: &Path,
    sources: &[PathBuf],
    index: &[Slot],
) -> std::io::Result<()> {
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
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
    }
    std::fs::rename(&temp, snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::testing::{dest, entry};
    use crate::manifest::{JOURNALS, Manifest, ManifestEntry, journal_files};

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
}
