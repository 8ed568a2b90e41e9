//! Open multipart uploads: listed (for a resume, and for `era5 uploads`), their parts, and
//! aborted. An upload left open costs storage until it is completed or aborted; the copy
//! aborts those it abandons, and `era5 uploads --abort` those nobody will come back for.
//!
//! Pagination always ends: a marker that does not move, or more pages than
//! [`MAX_PAGES`], is an error.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use transport::retry::{RetryPolicy, chain, classify, retrying};

/// S3's error code for an upload id that is not (or no longer) open.
pub const NO_SUCH_UPLOAD: &str = "NoSuchUpload";

/// Most pages one listing may take (1,000 uploads or parts each).
pub const MAX_PAGES: usize = 10_000;

/// One open upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    /// Its key.
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it was started, as the server says (RFC 3339; empty if unsaid).
    pub initiated: String,
    /// The checksum algorithm it was created with (`CRC32C`...), if any.
    pub checksum_algorithm: Option<String>,
}

impl OpenUpload {
    /// Its age, when the server said when it started.
    pub fn age(&self) -> Option<std::time::Duration> {
        let started: jiff::Timestamp = self.initiated.parse().ok()?;
        let age = jiff::Timestamp::now().duration_since(started);
        std::time::Duration::try_from(age).ok()
    }
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPart {
    /// 1-based part number.
    pub number: u32,
    /// Its ETag, unquoted.
    pub etag: String,
    /// Its size.
    pub size: u64,
    /// Its CRC32C (base64), when the upload keeps one.
    pub checksum_crc32c: Option<String>,
}

/// The open uploads of keys starting with `prefix`, every page.
pub async fn list(
    client: &Client,
    bucket: &str,
    prefix: &str,
    retry: &RetryPolicy,
) -> Result<Vec<OpenUpload>, String> {
    let mut uploads = Vec::new();
    let mut markers: (Option<String>, Option<String>) = (None, None);
    for _ in 0..MAX_PAGES {
        let page = retrying(
            retry,
            |_| {
                let request = client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_key_marker(markers.0.clone())
                    .set_upload_id_marker(markers.1.clone());
                async move { request.send().await.map_err(|e| (classify(&e), chain(&e))) }
            },
            |_| {},
        )
        .await
        .map_err(|gave_up| gave_up.detail)?;
        uploads.extend(page.uploads().iter().map(|upload| {
            OpenUpload {
                key: upload.key().unwrap_or_default().to_string(),
                upload_id: upload.upload_id().unwrap_or_default().to_string(),
                initiated: upload
                    .initiated()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                checksum_algorithm: upload
                    .checksum_algorithm()
                    .map(|algorithm| algorithm.as_str().to_string()),
            }
        }));
        if page.is_truncated() != Some(true) {
            return Ok(uploads);
        }
        let next = (
            page.next_key_marker().map(str::to_string),
            page.next_upload_id_marker().map(str::to_string),
        );
        if next == markers || next.0.is_none() {
            return Err("the upload listing repeated its marker".into());
        }
        markers = next;
    }
    Err(format!("more than {MAX_PAGES} pages of open uploads"))
}

/// The parts of one upload, every page.
pub async fn parts(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    retry: &RetryPolicy,
) -> Result<Vec<ListedPart>, String> {
    let mut parts = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = retrying(
            retry,
            |_| {
                let request = client
                    .list_parts()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .set_part_number_marker(marker.clone());
                async move { request.send().await.map_err(|e| (classify(&e), chain(&e))) }
            },
            |_| {},
        )
        .await
        .map_err(|gave_up| gave_up.detail)?;
        for part in page.parts() {
            // A part without a number, ETag or size cannot be reused; it is uploaded again.
            let (Some(number), Some(etag), Some(size)) =
                (part.part_number(), part.e_tag(), part.size())
            else {
                continue;
            };
            let (Ok(number), Ok(size)) = (u32::try_from(number), u64::try_from(size)) else {
                continue;
            };
            parts.push(ListedPart {
                number,
                etag: etag.trim_matches('"').to_string(),
                size,
                checksum_crc32c: part.checksum_crc32_c().map(str::to_string),
            });
        }
        if page.is_truncated() != Some(true) {
            return Ok(parts);
        }
        let next = page.next_part_number_marker().map(str::to_string);
        if next.is_none() || next == marker {
            return Err("the part listing repeated its marker".into());
        }
        marker = next;
    }
    Err(format!("more than {MAX_PAGES} pages of parts"))
}

/// Aborts one upload; one that is already gone counts as aborted.
pub async fn abort(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    retry: &RetryPolicy,
) -> Result<(), String> {
    let aborted = retrying(
        retry,
        |_| {
            let request = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id);
            async move {
                match request.send().await {
                    Ok(_) => Ok(()),
                    Err(error) if error.code() == Some(NO_SUCH_UPLOAD) => Ok(()),
                    Err(error) => Err((classify(&error), chain(&error))),
                }
            }
        },
        |_| {},
    )
    .await;
    aborted.map_err(|gave_up| gave_up.detail)
}
