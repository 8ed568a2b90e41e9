//! Is every byte still right? Re-reads a mirrored file and checks it against its manifest
//! record with the strongest check the record allows: the MD5 or multipart ETag and the
//! additional checksum it was verified with, and always the size. Used by `era5 verify`, which
//! runs one check per core; a check only reads.

use std::path::{Path, PathBuf};

use common::paths::relative_path;
use serde::Serialize;

use crate::manifest::ManifestEntry;
use crate::verify::{Expected, ExpectedChecksum, VerifyError, VerifyMode, verify_file};

/// What is wrong with one mirrored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "lowercase")]
pub enum Problem {
    /// No file at the record's path.
    Missing {
        /// Bytes the record expects.
        expected_size: u64,
    },
    /// The bytes differ from the record.
    Mismatch {
        /// What was expected and what was found, e.g. `etag mismatch: expected .., computed ..`.
        detail: String,
    },
    /// The file could not be read, or the record cannot name a path under DEST.
    Unreadable {
        /// Why.
        detail: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { expected_size } => {
                write!(
                    f,
                    "missing: expected a file of {expected_size} bytes, found none"
                )
            }
            Problem::Mismatch { detail } => write!(f, "mismatch: {detail}"),
            Problem::Unreadable { detail } => write!(f, "unreadable: {detail}"),
        }
    }
}

/// A file that failed its check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Object key.
    pub key: String,
    /// The file's path.
    pub path: PathBuf,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: Problem,
}

/// What a record promises about its bytes, and the check it passed when it was written.
pub fn expected_of(record: &ManifestEntry) -> (Expected, VerifyMode) {
    let expected = Expected {
        size: record.size,
        etag: record.etag.clone(),
        checksum: record
            .checksum
            .as_deref()
            .and_then(ExpectedChecksum::parse_label),
    };
    (expected, record.verified)
}

/// Reads the file of `record` under `dest` once and checks it. Blocking: run it on a blocking
/// thread.
pub fn recheck(dest: &Path, record: &ManifestEntry) -> Result<(), Finding> {
    let finding = |path: PathBuf, problem| Finding {
        key: record.key.clone(),
        path,
        problem,
    };
    let path = match relative_path(&record.key) {
        Ok(relative) => dest.join(relative),
        Err(error) => {
            return Err(finding(
                dest.join(".era5"),
                Problem::Unreadable {
                    detail: error.to_string(),
                },
            ));
        }
    };
    if !path.exists() {
        return Err(finding(
            path,
            Problem::Missing {
                expected_size: record.size,
            },
        ));
    }
    let (expected, mode) = expected_of(record);
    match verify_file(&path, &expected, mode) {
        Ok(_) => Ok(()),
        Err(VerifyError::Io(detail)) => Err(finding(path, Problem::Unreadable { detail })),
        Err(mismatch) => Err(finding(
            path,
            Problem::Mismatch {
                detail: mismatch.to_string(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, data: &[u8]) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: data.len() as u64,
            etag: Some(hex::encode(crate::fast_md5::Md5::digest(data))),
            last_modified: None,
            checksum: None,
            verified: VerifyMode::Etag,
            verified_at: "2026-01-01T00:00:00Z".into(),
            file: None,
        }
    }

    #[test]
    fn a_flipped_byte_a_missing_file_and_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let key =
            "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t.ll025sc.2024010100_2024013123.nc";
        let data = b"\x89HDF\r\n\x1a\nsome bytes of a netcdf file".to_vec();
        let good = record(key, &data);
        std::fs::create_dir_all(dir.path().join("e5.oper.an.sfc/202401")).unwrap();
        std::fs::write(dir.path().join(key), &data).unwrap();
        assert_eq!(recheck(dir.path(), &good), Ok(()));

        let mut flipped = data.clone();
        flipped[10] ^= 1;
        std::fs::write(dir.path().join(key), &flipped).unwrap();
        let finding = recheck(dir.path(), &good).unwrap_err();
        assert_eq!(finding.path, dir.path().join(key));
        let Problem::Mismatch { detail } = &finding.problem else {
            panic!("{finding:?}")
        };
        assert!(
            detail.starts_with(&format!(
                "etag mismatch: expected {}",
                good.etag.as_ref().unwrap()
            )),
            "{detail}"
        );

        std::fs::remove_file(dir.path().join(key)).unwrap();
        assert_eq!(
            recheck(dir.path(), &good).unwrap_err().problem,
            Problem::Missing {
                expected_size: data.len() as u64
            }
        );
    }
}
