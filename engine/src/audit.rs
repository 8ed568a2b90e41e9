//! Is the mirror complete? `era5 audit` compares three sets for a selection: the keys the
//! catalog's cadence says should exist, the objects the bucket lists, and what DEST holds
//! verified (a manifest record matching the listing, and the file at its path with that size).
//!
//! It only reads: the listing (no GET), the manifest journals and file metadata. It never
//! creates, locks or writes anything in DEST, so it can run beside a sync or a cluster.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use common::RemoteObject;
use common::paths::relative_path;
use common::selection::Selection;
use common::{ObjectKey, Product};
use serde::Serialize;

use crate::manifest::{Currency, FileIdentity, ManifestEntry, Recorded};

/// An object the bucket has and DEST does not hold verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// Object key.
    pub key: String,
    /// Why it does not count as held (`not in DEST`, `recorded but the file is gone`, ...).
    pub reason: String,
}

/// An object whose manifest record no longer matches the listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// Object key.
    pub key: String,
    /// Size recorded when it was verified.
    pub recorded_size: u64,
    /// ETag recorded when it was verified.
    pub recorded_etag: Option<String>,
    /// Size the bucket lists now.
    pub bucket_size: u64,
    /// ETag the bucket lists now.
    pub bucket_etag: Option<String>,
}

/// A product whose expected windows stop before the end of the range, because the bucket has
/// not published those months yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotYetPublished {
    /// Product.
    pub product: String,
    /// The latest month the bucket holds for it.
    pub latest_month: String,
}

/// The audit's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Keys the catalog expects.
    pub expected: u64,
    /// Objects the bucket lists for the selection.
    pub in_bucket: u64,
    /// Of those, objects DEST holds verified.
    pub held_verified: u64,
    /// Expected keys the bucket does not have: gaps in the archive itself.
    pub missing_upstream: Vec<String>,
    /// Objects the bucket has that DEST lacks (no file, or a file of another size).
    pub missing_in_dest: Vec<Missing>,
    /// Files at their path with the listed size but no manifest record, or a record of another
    /// file (changed since it was verified): not verified yet.
    pub unrecorded: Vec<String>,
    /// Recorded with a size or ETag that differs from the listing: replaced upstream.
    pub changed_upstream: Vec<Changed>,
    /// Files under the selection in DEST that the bucket no longer lists.
    pub not_in_bucket: Vec<String>,
    /// Products whose range runs past the bucket's latest month.
    pub not_yet_published: Vec<NotYetPublished>,
}

impl AuditReport {
    /// Whether DEST holds, verified, every object the bucket has for the selection.
    pub fn complete(&self) -> bool {
        self.missing_in_dest.is_empty()
            && self.unrecorded.is_empty()
            && self.changed_upstream.is_empty()
            && self.held_verified == self.in_bucket
    }
}

/// What the audit compares.
pub struct AuditInput<'a> {
    /// The selection.
    pub selection: &'a Selection,
    /// Keys the catalog expects ([`Selection::expected_keys`]).
    pub expected: Vec<String>,
    /// The bucket's objects for the selection.
    pub bucket: &'a [RemoteObject],
    /// What the destination holds: a directory and its manifest ([`LocalHoldings`]), or an
    /// object store's listing (`s3dest::audit`).
    pub holdings: &'a dyn Holdings,
    /// Each product's latest month in the bucket, when known.
    pub latest: &'a HashMap<Product, common::YearMonth>,
}

/// How a destination holds one listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// Held, verified, in the listed version.
    Verified,
    /// Held in another version than the bucket lists now.
    Changed(Changed),
    /// Not held, and why.
    Missing(String),
    /// Present with the listed size, but nothing vouches for its bytes yet.
    Unrecorded,
}

/// What a destination holds, as the audit asks it (read only).
pub trait Holdings {
    /// How `object` is held.
    fn held(&self, object: &RemoteObject) -> Held;
    /// The keys the destination holds under `selection`'s month folders that it selects,
    /// sorted (the audit reports those the bucket no longer lists).
    fn keys(&self, selection: &Selection) -> Vec<String>;
}

/// A mirror directory and its manifest's records.
pub struct LocalHoldings<'a> {
    /// The mirror directory.
    pub dest: &'a Path,
    /// The manifest's records.
    pub records: &'a HashMap<String, ManifestEntry>,
}

impl Holdings for LocalHoldings<'_> {
    fn held(&self, object: &RemoteObject) -> Held {
        held(self.dest, object, self.records.get(&object.key))
    }

    fn keys(&self, selection: &Selection) -> Vec<String> {
        local_files(self.dest, selection)
    }
}

/// Compares the three sets. Reads file metadata under DEST, nothing else.
pub fn audit(input: AuditInput<'_>) -> AuditReport {
    let listed: HashMap<&str, &RemoteObject> =
        input.bucket.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut report = AuditReport {
        expected: input.expected.len() as u64,
        in_bucket: input.bucket.len() as u64,
        missing_upstream: input
            .expected
            .iter()
            .filter(|key| !listed.contains_key(key.as_str()))
            .cloned()
            .collect(),
        ..AuditReport::default()
    };
    for object in input.bucket {
        match input.holdings.held(object) {
            Held::Verified => report.held_verified += 1,
            Held::Changed(changed) => report.changed_upstream.push(changed),
            Held::Missing(reason) => report.missing_in_dest.push(Missing {
                key: object.key.clone(),
                reason,
            }),
            Held::Unrecorded => report.unrecorded.push(object.key.clone()),
        }
    }
    report.not_in_bucket = input
        .holdings
        .keys(input.selection)
        .into_iter()
        .filter(|key| !listed.contains_key(key.as_str()))
        .collect();
    for product in &input.selection.products {
        if let Some(latest) = input.latest.get(product)
            && common::YearMonth::of(input.selection.range.end) > *latest
        {
            report.not_yet_published.push(NotYetPublished {
                product: product.name().to_string(),
                latest_month: latest.to_string(),
            });
        }
    }
    report
}

/// Whether DEST holds `object` verified, from its record and the file's size.
fn held(dest: &Path, object: &RemoteObject, record: Option<&ManifestEntry>) -> Held {
    if let Some(record) = record
        && Recorded::from(record).against(object) == Currency::Replaced
    {
        return Held::Changed(Changed {
            key: object.key.clone(),
            recorded_size: record.size,
            recorded_etag: record.etag.clone(),
            bucket_size: object.size,
            bucket_etag: object.etag.clone(),
        });
    }
    let Ok(relative) = relative_path(&object.key) else {
        return Held::Missing("its key cannot be a path under DEST".to_string());
    };
    let meta = match std::fs::metadata(dest.join(relative)) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Held::Missing("its path is not a file".to_string()),
        Err(_) if record.is_some() => {
            return Held::Missing("recorded as verified, but the file is gone".to_string());
        }
        Err(_) => return Held::Missing("not in DEST".to_string()),
    };
    if meta.len() != object.size {
        return Held::Missing(format!(
            "the file has {} bytes, the object {}",
            meta.len(),
            object.size
        ));
    }
    match record {
        // A record vouches only for the file it verified: another inode or mtime at the path
        // (a copy by hand, a rewrite) is a file not verified yet.
        Some(record)
            if record
                .file
                .is_some_and(|file| file != FileIdentity::of(&meta)) =>
        {
            Held::Unrecorded
        }
        Some(_) => Held::Verified,
        None => Held::Unrecorded,
    }
}

/// The keys of the files in DEST under the selection's month folders that the selection
/// selects, sorted.
fn local_files(dest: &Path, selection: &Selection) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for prefix in selection.list_prefixes() {
        let Ok(entries) = std::fs::read_dir(dest.join(&prefix)) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let key = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if ObjectKey::parse(&key).is_some_and(|k| selection.selects(&k)) {
                keys.insert(key);
            }
        }
    }
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VerifyMode;

    fn object(key: &str, size: u64, etag: &str) -> RemoteObject {
        RemoteObject {
            key: key.to_string(),
            size,
            etag: Some(etag.to_string()),
            last_modified: None,
        }
    }

    fn record(key: &str, size: u64, etag: &str) -> ManifestEntry {
        ManifestEntry {
            key: key.to_string(),
            size,
            etag: Some(etag.to_string()),
            last_modified: None,
            checksum: None,
            verified: VerifyMode::Full,
            verified_at: "2026-01-01T00:00:00Z".to_string(),
            file: None,
        }
    }

    fn key(month: u8, short: &str) -> String {
        format!(
            "e5.oper.an.sfc/2024{month:02}/e5.oper.an.sfc.128_167_{short}.ll025sc.2024{month:02}0100_2024{month:02}2823.nc"
        )
    }

    #[test]
    fn every_kind_of_difference_lands_in_its_list() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path();
        let write = |key: &str, size: usize| {
            let path = dest.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![0u8; size]).unwrap();
        };
        let selection = Selection::parse(
            &["e5.oper.an.sfc".into()],
            &[],
            &[],
            "2024-02",
            "2024-02",
            jiff::civil::date(2026, 12, 1),
        )
        .unwrap();
        let (held, changed, gone, absent, unrecorded, short, stale) = (
            key(2, "a"),
            key(2, "b"),
            key(2, "c"),
            key(2, "d"),
            key(2, "e"),
            key(2, "f"),
            key(2, "g"),
        );
        let bucket = vec![
            object(&held, 10, "1"),
            object(&changed, 12, "2"),
            object(&gone, 10, "1"),
            object(&absent, 10, "1"),
            object(&unrecorded, 10, "1"),
            object(&short, 10, "1"),
        ];
        for key in [&held, &changed, &unrecorded, &stale] {
            write(key, 10);
        }
        write(&short, 4);
        let records: HashMap<String, ManifestEntry> = [
            record(&held, 10, "1"),
            record(&changed, 10, "1"),
            record(&gone, 10, "1"),
            record(&short, 10, "1"),
        ]
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
        let upstream_gap = key(2, "z");
        let report = audit(AuditInput {
            selection: &selection,
            expected: vec![held.clone(), upstream_gap.clone()],
            bucket: &bucket,
            holdings: &LocalHoldings {
                dest,
                records: &records,
            },
            latest: &HashMap::new(),
        });
        assert_eq!(report.held_verified, 1);
        assert_eq!(report.missing_upstream, [upstream_gap]);
        assert_eq!(report.changed_upstream.len(), 1);
        assert_eq!(report.changed_upstream[0].key, changed);
        assert_eq!(report.changed_upstream[0].bucket_size, 12);
        let missing: Vec<(&str, &str)> = report
            .missing_in_dest
            .iter()
            .map(|m| (m.key.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            missing,
            [
                (gone.as_str(), "recorded as verified, but the file is gone"),
                (absent.as_str(), "not in DEST"),
                (short.as_str(), "the file has 4 bytes, the object 10"),
            ]
        );
        assert_eq!(report.unrecorded, [unrecorded]);
        assert_eq!(report.not_in_bucket, [stale]);
        assert!(!report.complete());
    }
}
