//! The MD5 of a whole object whose parts complete out of order.
//!
//! A single-part ETag is the MD5 of the whole object, which cannot be computed per part. Rather
//! than reading the file again after the download, a blocking task follows the download: as
//! soon as parts `0..=i` are complete it hashes part `i` from the page cache, so hashing runs
//! alongside the remaining downloads and is finished shortly after the last part.

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

/// Starts following a download of `size` bytes in parts of `part_size`, `done` of which are
/// already complete (resumed). The task yields the MD5 once every part was hashed, or `None`
/// if the handles were dropped before that (the download failed).
pub fn follow(
    file: Arc<File>,
    part_size: u64,
    size: u64,
    done: impl IntoIterator<Item = u64>,
) -> (PartDone, tokio::task::JoinHandle<Option<[u8; 16]>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let done: BTreeSet<u64> = done.into_iter().collect();
    let task = tokio::task::spawn_blocking(move || hash_in_order(&file, part_size, size, done, rx));
    (PartDone(tx), task)
}

fn hash_in_order(
    file: &File,
    part_size: u64,
    size: u64,
    mut done: BTreeSet<u64>,
    mut rx: mpsc::UnboundedReceiver<u64>,
) -> Option<[u8; 16]> {
    let parts = size.div_ceil(part_size);
    let mut md5 = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut next = 0;
    loop {
        while done.remove(&next) {
            let (mut offset, end) = (next * part_size, ((next + 1) * part_size).min(size));
            while offset < end {
                let want = buffer.len().min((end - offset) as usize);
                let read = file.read_at(&mut buffer[..want], offset).ok()?;
                if read == 0 {
                    return None;
                }
                md5.update(&buffer[..read]);
                offset += read as u64;
            }
            next += 1;
        }
        if next >= parts {
            return Some(md5.finish());
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
        let (done, task) = follow(Arc::new(file), 7_000, data.len() as u64, [3, 0]);
        for index in [14, 1, 2, 5, 4, 8, 7, 6, 9, 11, 10, 13, 12] {
            done.send(index);
        }
        let expected: [u8; 16] = Md5::digest(&data);
        assert_eq!(task.await.unwrap(), Some(expected));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_download_yields_nothing() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(10_000).unwrap();
        let (done, task) = follow(Arc::new(file), 1_000, 10_000, []);
        done.send(0);
        drop(done);
        assert_eq!(task.await.unwrap(), None);
    }
}
