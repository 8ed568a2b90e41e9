//! One upload part: its source range read, hashed, uploaded with the upload's digest
//! ([`PartDigest`]), and the store's answer checked against what was sent.

use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use engine::fast_md5::Md5;
use engine::verify::etag::EtagForm;
use transport::RemoteObject;
use transport::retry::retrying;

use super::{Copier, CopyError, OrderedHash, PartDone, base64_md5, failure, unquoted};
use crate::integrity::{PartDigest, crc32c, crc32c_header, parse_crc32c};
use crate::layout::SourceCheck;

/// One part of one upload.
pub(super) struct PartJob {
    pub(super) copier: Arc<Copier>,
    pub(super) object: RemoteObject,
    pub(super) etag: Option<String>,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) index: u64,
    pub(super) range: (u64, u64),
    pub(super) check: SourceCheck,
    pub(super) digest: PartDigest,
    pub(super) ordered: Arc<OrderedHash>,
}

impl PartJob {
    pub(super) async fn run(self) -> Result<PartDone, CopyError> {
        let copier = &self.copier;
        let (start, end) = self.range;
        let bytes = copier
            .read_source(&self.object, self.etag.as_deref(), start, end)
            .await?;
        // A multipart source is checked by its parts' MD5s; an upload part holds whole ones.
        let source_md5s: Vec<[u8; 16]> = match &self.check {
            SourceCheck::Multipart { part_size, .. } => {
                bytes.chunks(*part_size as usize).map(Md5::digest).collect()
            }
            _ => Vec::new(),
        };
        if matches!(self.check, SourceCheck::WholeMd5(_)) {
            self.ordered.feed(self.index, &bytes).await;
        }
        // The part's own MD5 only where it is free or the upload's digest: hashing a
        // single-part source's bytes a second time was its copy's cost.
        let mut part_md5 = match (source_md5s.as_slice(), self.digest) {
            ([only], _) => Some(*only),
            (_, PartDigest::Md5) => Some(Md5::digest(&bytes)),
            (_, PartDigest::Crc32c) => None,
        };
        let crc = (self.digest == PartDigest::Crc32c).then(|| crc32c(&bytes));
        let number = self.index as i32 + 1;
        let (answered, echoed) = retrying(
            &copier.retry,
            |_| {
                let request = copier
                    .dest
                    .upload_part()
                    .bucket(&copier.target.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(number)
                    .set_content_md5(part_md5.as_ref().map(base64_md5))
                    .set_checksum_crc32_c(crc.map(crc32c_header))
                    .content_length(bytes.len() as i64)
                    .body(ByteStream::from(bytes.clone()));
                let length = bytes.len() as u64;
                async move {
                    // Protected by its digest, which the store checks (see `put_whole`). The
                    // algorithm header is the one the SDK sends with a checksum it computed;
                    // some stores (moto) echo the checksum only with it.
                    let mut send = request.customize().disable_payload_signing();
                    if crc.is_some() {
                        send = send.mutate_request(|http| {
                            http.headers_mut()
                                .insert("x-amz-sdk-checksum-algorithm", PartDigest::CRC32C_NAME);
                        });
                    }
                    let send = send.send();
                    match copier.bounded(send, length).await? {
                        Ok(done) => Ok((
                            unquoted(done.e_tag()),
                            done.checksum_crc32_c().map(str::to_string),
                        )),
                        Err(error) => Err(failure(&error)),
                    }
                }
            },
            |reason| copier.progress.retry(reason),
        )
        .await
        .map_err(|gave_up| {
            CopyError::gave_up(&format!("UploadPart {number} of {}", self.key), &gave_up)
        })?;
        let lie = |what: String| {
            Err(CopyError::retryable(format!(
                "{}: part {number} stored with {what}",
                self.key
            )))
        };
        if let Some(crc) = crc {
            match echoed.as_deref() {
                Some(value) if parse_crc32c(value) == Some(crc) => {}
                Some(value) => {
                    return lie(format!("CRC32C {value}, not its {}", crc32c_header(crc)));
                }
                // Not echoed, so not checked: the part's MD5 checks the ETag instead.
                None => {
                    copier.note_checksums_ignored();
                    part_md5.get_or_insert_with(|| Md5::digest(&bytes));
                }
            }
        }
        // The store checked our digest; an ETag naming other bytes is a lie.
        if let Some(md5) = part_md5
            && EtagForm::parse(&answered).is_some()
            && answered != hex::encode(md5)
        {
            return lie(format!("ETag {answered}, not its MD5 {}", hex::encode(md5)));
        }
        let etag = match (answered.is_empty(), part_md5) {
            (false, _) => answered,
            (true, Some(md5)) => hex::encode(md5),
            (true, None) => return lie("no ETag".into()),
        };
        Ok(PartDone {
            etag,
            crc32c: crc,
            crc_checked: crc.is_some() && echoed.is_some(),
            source_md5s,
        })
    }
}
