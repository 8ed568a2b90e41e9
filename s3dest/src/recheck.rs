//! `era5 verify --dest s3://...`: every copy read back from the destination and checked, as the
//! bytes stream (nothing is stored), against both what the store says it holds and the source
//! version the copy records:
//!
//! - the copy's own ETag: its MD5, or the multipart digest over its upload parts (part size as
//!   the copy planned it from the source's ETag, or inferred from the part count);
//! - the source's ETag it records (`x-amz-meta-era5-source-etag`), by the same digests the
//!   copy verified on its way in (`layout::SourceCheck`).
//!
//! A copy without a recorded source version is checked against its own ETag only.

use engine::fast_md5::Md5;
use engine::recheck::Problem;
use engine::verify::etag::{EtagForm, candidate_part_sizes, multipart_digest};

use crate::S3Target;
use crate::copy::SOURCE_ETAG_META;
use crate::layout::{SourceCheck, UploadLayout};
use crate::listing::ListedCopy;

/// MD5s of consecutive parts of one size, fed in order.
struct PartMd5s {
    part: u64,
    filled: u64,
    current: Md5,
    done: Vec<[u8; 16]>,
}

impl PartMd5s {
    fn new(part: u64) -> Self {
        Self {
            part: part.max(1),
            filled: 0,
            current: Md5::new(),
            done: Vec::new(),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (self.part - self.filled) as usize;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.update(now);
            self.filled += now.len() as u64;
            if self.filled == self.part {
                let full = std::mem::take(&mut self.current);
                self.done.push(full.finish());
                self.filled = 0;
            }
            bytes = rest;
        }
    }

    fn finish(mut self) -> Vec<[u8; 16]> {
        if self.filled > 0 {
            self.done.push(self.current.finish());
        }
        self.done
    }
}

/// Whether `etag` (either form) is what bytes hashed as `whole` and as `parts` give.
fn etag_matches(etag: &str, whole: [u8; 16], parts: &[[u8; 16]]) -> Result<(), String> {
    match EtagForm::parse(etag) {
        Some(EtagForm::Single(md5)) if md5 == whole => Ok(()),
        Some(EtagForm::Single(md5)) => Err(format!(
            "etag mismatch: expected {}, computed {}",
            hex::encode(md5),
            hex::encode(whole)
        )),
        Some(EtagForm::Multipart { digest, parts: n }) => {
            let computed = multipart_digest(parts);
            if computed == digest && parts.len() as u64 == n {
                Ok(())
            } else {
                Err(format!(
                    "etag mismatch: expected {etag}, computed {}-{}",
                    hex::encode(computed),
                    parts.len()
                ))
            }
        }
        // Not an MD5 form (an encrypting store): nothing to compare with.
        None => Ok(()),
    }
}

/// Reads the copy of `copy` back and checks it (see the module doc).
pub async fn recheck_copy(
    client: &aws_sdk_s3::Client,
    target: &S3Target,
    copy: &ListedCopy,
) -> Result<(), Problem> {
    let unreadable = |detail: String| Problem::Unreadable { detail };
    // Ranged: the pool bounds an unranged body to a listing's 16 MiB.
    let range = (copy.size > 0).then(|| format!("bytes=0-{}", copy.size - 1));
    let answer = client
        .get_object()
        .bucket(&target.bucket)
        .key(target.key_of(&copy.key))
        .set_range(range)
        .send()
        .await
        .map_err(|error| {
            if error
                .as_service_error()
                .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key)
            {
                Problem::Missing {
                    expected_size: copy.size,
                }
            } else {
                unreadable(transport::retry::chain(&error))
            }
        })?;
    let source_etag = answer
        .metadata()
        .and_then(|meta| meta.get(SOURCE_ETAG_META))
        .map(|etag| etag.trim_matches('"').to_string());
    // The copy's upload parts: as the copy planned them from the source's ETag, else inferred
    // from its own multipart ETag's part count.
    let planned = source_etag
        .as_deref()
        .and_then(|etag| UploadLayout::plan(copy.size, Some(etag)).ok());
    let upload_part = match (&planned, EtagForm::parse(&copy.etag)) {
        (Some(layout), _) if !layout.single_put => layout.part_size,
        (_, Some(EtagForm::Multipart { parts, .. })) => candidate_part_sizes(copy.size, parts)
            .into_iter()
            .next()
            .unwrap_or(copy.size.max(1)),
        _ => copy.size.max(1),
    };
    let source_part = match planned.as_ref().map(|layout| &layout.check) {
        Some(SourceCheck::Multipart { part_size, .. }) => Some(*part_size),
        _ => None,
    };
    let mut whole = Md5::new();
    let mut uploads = PartMd5s::new(upload_part);
    let mut sources = source_part.map(PartMd5s::new);
    let mut read = 0u64;
    let mut body = answer.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| unreadable(transport::retry::chain(&error)))?;
        read += chunk.len() as u64;
        whole.update(&chunk);
        uploads.update(&chunk);
        if let Some(sources) = &mut sources {
            sources.update(&chunk);
        }
    }
    if read != copy.size {
        return Err(Problem::Mismatch {
            detail: format!("size mismatch: listed {} bytes, read {read}", copy.size),
        });
    }
    let whole = whole.finish();
    etag_matches(&copy.etag, whole, &uploads.finish())
        .map_err(|detail| Problem::Mismatch { detail })?;
    if let (Some(source_etag), Some(layout)) = (&source_etag, &planned) {
        let source_parts = sources.map(PartMd5s::finish).unwrap_or_default();
        let checked = match &layout.check {
            SourceCheck::Multipart { .. } => etag_matches(source_etag, whole, &source_parts),
            SourceCheck::WholeMd5(_) => etag_matches(source_etag, whole, &[]),
            SourceCheck::SizeOnly => Ok(()),
        };
        checked.map_err(|detail| Problem::Mismatch {
            detail: format!("against the source's ETag: {detail}"),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_md5s_cut_at_part_boundaries_whatever_the_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut hasher = PartMd5s::new(4096);
        for chunk in data.chunks(1000) {
            hasher.update(chunk);
        }
        let expected: Vec<[u8; 16]> = data.chunks(4096).map(Md5::digest).collect();
        assert_eq!(hasher.finish(), expected);
    }

    #[test]
    fn etags_of_both_forms_are_checked() {
        let data = b"some bytes of an object";
        let whole = Md5::digest(data);
        assert!(etag_matches(&hex::encode(whole), whole, &[]).is_ok());
        let parts = [Md5::digest(&data[..10]), Md5::digest(&data[10..])];
        let multipart = format!("{}-2", hex::encode(multipart_digest(&parts)));
        assert!(etag_matches(&multipart, whole, &parts).is_ok());
        assert!(etag_matches(&multipart, whole, &parts[..1]).is_err());
        assert!(etag_matches(&hex::encode([0u8; 16]), whole, &[]).is_err());
        assert!(etag_matches("opaque-etag-of-a-store", whole, &[]).is_ok());
    }
}
