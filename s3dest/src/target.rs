//! `--dest s3://BUCKET[/PREFIX]`: the bucket and key prefix an S3 destination writes under.
//! Keys are preserved exactly: the object `e5.oper.an.sfc/202101/x.nc` lands at
//! `PREFIX/e5.oper.an.sfc/202101/x.nc`.

use std::fmt;

/// A destination bucket and the prefix every key is written under (empty, or ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Target {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix: empty, or ending in `/`.
    pub prefix: String,
}

/// Whether `--dest` names an object store rather than a directory.
pub fn is_s3_url(text: &str) -> bool {
    text.starts_with("s3://")
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| "expected s3://BUCKET[/PREFIX]".to_string())?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket: expected s3://BUCKET[/PREFIX]".into());
        }
        check_bucket_name(bucket)?;
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|segment| matches!(segment, "." | ".."))
        {
            return Err("the prefix may not contain `.` or `..` segments".into());
        }
        if prefix.contains("//") {
            return Err("the prefix may not contain an empty segment (`//`)".into());
        }
        // Keys are at most 1,024 bytes; leave most of them to the archive's own keys.
        if prefix.len() > 512 {
            return Err("the prefix is longer than 512 bytes".into());
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// Where the source key `key` lands.
    pub fn key_of(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl fmt::Display for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's bucket naming rules: 3-63 characters of lowercase letters, digits, `.` and `-`,
/// beginning and ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let valid_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !valid_chars
        || !ends_ok(bucket.bytes().next())
        || !ends_ok(bucket.bytes().last())
    {
        return Err(format!(
            "`{bucket}` is not a bucket name (3-63 lowercase letters, digits, `.` or `-`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let target = S3Target::parse("s3://my-era5/copies/era5/").unwrap();
        assert_eq!(target.bucket, "my-era5");
        assert_eq!(target.prefix, "copies/era5/");
        assert_eq!(
            target.key_of("e5.oper.an.sfc/202101/a.nc"),
            "copies/era5/e5.oper.an.sfc/202101/a.nc"
        );
        let bare = S3Target::parse("s3://my-era5").unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(bare.key_of("k"), "k");
    }

    #[test]
    fn refuses_what_is_not_a_destination() {
        for (text, why) in [
            ("s3://", "no bucket"),
            ("s3:///prefix", "no bucket"),
            ("s3://UPPER", "not a bucket name"),
            ("s3://ab", "not a bucket name"),
            ("s3://bucket/a/../b", "`..`"),
            ("s3://bucket/a//b", "empty segment"),
            ("/data/era5", "expected s3://"),
        ] {
            let error = S3Target::parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
