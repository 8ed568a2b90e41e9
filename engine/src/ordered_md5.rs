//! MD5s over an object's bytes in order, while its download parts complete out of order.
//!
//! A single-part ETag is the MD5 of the whole object, and a multipart ETag needs the MD5 of
//! each upload part; neither can be computed per download part when the download's ranges do
//! not coincide with the upload parts (ranges are sized by time, see `fetch::layout`, so on a
//! slow link they are smaller than the upload parts). Rather than reading the file again after
//! the download, a blocking task follows it: as soon as download parts `0..=i` are complete it
//! hashes part `i` from the page cache, closing an MD5 at every `boundary` bytes (the upload
//! part size, or the whole size for a single-part ETag). Hashing runs alongside the remaining
//! downloads and is finished shortly after the last part.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::fast_md5::Md5;
use tokio::sync::mpsc;

/// Handle of the follower; parts report their completion through it.
#[derive(Clone)]
pub struct PartDone(mpsc::UnboundedSender<u64>);

impl PartDone {
    /// Part `index` is written (its barrier passed).
    pub fn send(&self, index: u64) {
        // The follower only stops early when the download failed; nothing to do then.
        let _ = self.0.send(index);
    }
}

/// MD5s of consecutive `boundary`-byte segments of an object (the last one shorter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedMd5s {
    /// Segment size: an upload part size, or at least the object size for one whole MD5.
    pub boundary: u64,
    /// One MD5 per segment, in order.
    pub md5s: Vec<[u8; 16]>,
}

/// Starts following a download of `size` bytes in parts of `part_size`, `done` of which are
/// already complete (resumed), closing an MD5 every `boundary` bytes. The task yields the
/// MD5s once every part was hashed, or `None` if the handles were dropped before that (the
/// download failed).
pub fn follow(
    file: Arc<File>,
    part_size: u64,
    size: u64,
    boundary: u64,
    done: impl IntoIterator<Item = u64>,
) -> (PartDone, tokio::task::JoinHandle<Option<OrderedMd5s>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let done: BTreeSet<u64> = done.into_iter().collect();
    let boundary = boundary.max(1);
    let task = tokio::task::spawn_blocking(move || {
        hash_in_order(&file, part_size, size, boundary, done, rx)
            .map(|md5s| OrderedMd5s { boundary, md5s })
    });
    (PartDone(tx), task)
}

fn hash_in_order(
    file: &File,
    part_size: u64,
    size: u64,
    boundary: u64,
    mut done: BTreeSet<u64>,
    mut rx: mpsc::UnboundedReceiver<u64>,
) -> Option<Vec<[u8; 16]>> {
    let parts = size.div_ceil(part_size);
    let mut md5s = Vec::with_capacity(size.div_ceil(boundary).max(1) as usize);
    let mut md5 = Md5::new();
    // Small blocks, and no bigger than the object: see `READ_BLOCK` for why it matters.
    let mut buffer = vec![0u8; crate::verify::READ_BLOCK.min(size.max(1) as usize)];
    let mut next = 0;
    loop {
        while done.remove(&next) {
            let (mut offset, end) = (next * part_size, ((next + 1) * part_size).min(size));
            while offset < end {
                // Never read across a segment's end: its MD5 closes there.
                let segment_end = (offset / boundary + 1) * boundary;
                let want = (buffer.len() as u64)
                    .min(end - offset)
                    .min(segment_end - offset) as usize;
                let read = file.read_at(&mut buffer[..want], offset).ok()?;
                if read == 0 {
                    return None;
                }
                md5.update(&buffer[..read]);
                offset += read as u64;
                if offset % boundary == 0 && offset < size {
                    md5s.push(std::mem::replace(&mut md5, Md5::new()).finish());
                }
            }
            next += 1;
        }
        if next >= parts {
            md5s.push(md5.finish());
            return Some(md5s);
        }
        done.insert(rx.blocking_recv()?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_parts_give_the_md5_of_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let size = data.len() as u64;
        let (done, task) = follow(Arc::new(file), 7_000, size, size, [3, 0]);
        for index in [14, 1, 2, 5, 4, 8, 7, 6, 9, 11, 10, 13, 12] {
            done.send(index);
        }
        let expected: [u8; 16] = Md5::digest(&data);
        assert_eq!(task.await.unwrap().unwrap().md5s, vec![expected]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_close_at_every_boundary_whatever_the_download_parts() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        // Download parts of 7 000 bytes, upload parts of 16 384: boundaries inside parts.
        let (done, task) = follow(Arc::new(file), 7_000, data.len() as u64, 16_384, []);
        for index in (0..15).rev() {
            done.send(index);
        }
        let expected: Vec<[u8; 16]> = data.chunks(16_384).map(Md5::digest).collect();
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.boundary, 16_384);
        assert_eq!(got.md5s, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_download_yields_nothing() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(10_000).unwrap();
        let (done, task) = follow(Arc::new(file), 1_000, 10_000, 10_000, []);
        done.send(0);
        drop(done);
        assert_eq!(task.await.unwrap(), None);
    }
}
