//! Safe mapping of object keys to paths under a destination directory. A key comes from a
//! remote listing, so it is untrusted: it must never name a file outside the destination.

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Why a key cannot be stored as a file.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UnsafeKey {
    /// Empty key or empty path segment (`a//b`, trailing `/`).
    #[error("key `{0}` has an empty path segment")]
    EmptySegment(String),
    /// `.` or `..` segment.
    #[error("key `{0}` has a `.` or `..` segment")]
    DotSegment(String),
    /// Leading `/`.
    #[error("key `{0}` is an absolute path")]
    Absolute(String),
    /// Backslash (a separator on Windows, and never in an ERA5 key).
    #[error("key `{0}` contains a backslash")]
    Backslash(String),
    /// NUL or another control character.
    #[error("key {0:?} contains a control character")]
    Control(String),
    /// `.era5` is the mirror's own state folder.
    #[error("key `{0}` would write into the mirror's .era5 state folder")]
    Reserved(String),
}

/// The relative path of `key` under a destination, or why it is unsafe. Only plain, non-empty
/// segments separated by `/` pass, so the result can always be joined to the destination.
pub fn relative_path(key: &str) -> Result<PathBuf, UnsafeKey> {
    let owned = || key.to_string();
    if key.starts_with('/') {
        return Err(UnsafeKey::Absolute(owned()));
    }
    if key.contains('\\') {
        return Err(UnsafeKey::Backslash(owned()));
    }
    if key.chars().any(char::is_control) {
        return Err(UnsafeKey::Control(owned()));
    }
    let mut path = PathBuf::new();
    for (index, segment) in key.split('/').enumerate() {
        match segment {
            "" => return Err(UnsafeKey::EmptySegment(owned())),
            "." | ".." => return Err(UnsafeKey::DotSegment(owned())),
            ".era5" if index == 0 => return Err(UnsafeKey::Reserved(owned())),
            _ => path.push(segment),
        }
    }
    // Belt and braces: whatever the platform's parsing, only normal components remain.
    debug_assert!(path.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(path)
}

/// `dest/<key>` for a safe key.
pub fn final_path(dest: &Path, key: &str) -> Result<PathBuf, UnsafeKey> {
    Ok(dest.join(relative_path(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn era5_keys_map_to_their_own_relative_path() {
        let key =
            "e5.oper.an.sfc/202201/e5.oper.an.sfc.128_167_2t.ll025sc.2022010100_2022013123.nc";
        assert_eq!(relative_path(key).unwrap(), PathBuf::from(key));
    }

    #[test]
    fn escaping_keys_are_rejected() {
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\..\\x",
            "a/./b",
            "a//b",
            "a/",
            "",
            "a\0b",
            "a\nb",
            ".era5/manifest.jsonl",
        ] {
            assert!(relative_path(key).is_err(), "{key:?} should be rejected");
        }
    }

    proptest! {
        /// Whatever the key, an accepted one stays strictly inside the destination.
        #[test]
        fn accepted_keys_never_leave_the_destination(key in "[a-z./\\\\\\x00.]{0,20}") {
            if let Ok(rel) = relative_path(&key) {
                let dest = Path::new("/dest");
                let joined = dest.join(&rel);
                prop_assert!(joined.starts_with(dest));
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
                prop_assert!(rel.components().count() >= 1);
            }
        }
    }
}
