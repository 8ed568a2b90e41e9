//! Direct I/O for temporary files: bytes go from our buffers to the disk, not through the
//! page cache.
//!
//! Why: every object is fsynced before it is promoted, so a buffered download pays twice, once
//! to copy into freshly allocated page-cache pages (on a VM those pages may first have to be
//! faulted back in from the host) and once to write them back. On the benchmark machine (2
//! cores, ext4 on virtio) direct writes from huge-page stages took less wall time and CPU
//! than buffered ones for a month of eight 150 MiB files and for one 2 GiB object; the
//! figures are in the README.
//!
//! How:
//! - The file's writer copies each part's bytes into [`Stage`]s: [`STAGE`]-sized buffers in
//!   transparent huge pages, so each is one disk request. A full stage is handed to the
//!   engine's [`IoPool`] (one per source), whose threads keep up to [`IO_THREADS`] writes in flight.
//! - At most [`MAX_STAGES`] stages exist. When all are taken the bytes go buffered: memory
//!   stays bounded and nothing waits for a stage held by a part that waits to retry.
//! - Only aligned bytes go direct. The unaligned end of an object goes through the ordinary
//!   descriptor; the fsync before promotion covers both.
//! - It is used only where it is known to work well: ext4 and XFS on Linux, with transparent
//!   huge pages not off, a part size that is a multiple of [`ALIGN`], and a download that is
//!   never read back (a whole-object MD5 rereads each part from the page cache while the rest
//!   streams in). Anywhere else, and for any write the kernel refuses as misaligned, writes are
//!   buffered: the choice changes speed, never the bytes.

use common::sync::MutexExt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

/// Alignment of direct writes, in memory, in the file and in length: the page size, which is
/// also the largest logical block size of common disks.
pub const ALIGN: usize = 4096;
/// Bytes per stage and per direct write: one transparent huge page. A disk request holds a
/// limited number of memory segments (254 on the benchmark machine's virtio disk), so a write
/// from ordinary 4 KiB pages is cut into requests of 512 KiB at most, while one huge page is a
/// single segment and goes as one 2 MiB request. Buffered writeback, from the page cache's
/// large folios, sent about 1.6 MiB per request; with 512 KiB requests direct I/O lost to it.
pub const STAGE: usize = 2 << 20;
/// Threads writing stages, which is the number of direct writes in flight at most.
pub const IO_THREADS: usize = 4;
/// Stages waiting for a free thread; the writer blocks beyond that (back-pressure).
const QUEUE: usize = 2;
/// Stages that exist at most: one filling per part being downloaded (16 connections) plus
/// those queued or being written. **This bounds an engine's direct I/O memory at 48 MiB**: when
/// every stage is taken, the writer writes buffered instead of waiting.
pub const MAX_STAGES: usize = 24;

/// A [`STAGE`]-sized buffer aligned to [`STAGE`], in its own anonymous mapping marked for
/// transparent huge pages.
pub struct AlignedBuf {
    /// The whole mapping (one stage of slack in front, so the buffer can start aligned).
    mapping: *mut libc::c_void,
    /// Offset of the buffer in the mapping.
    start: usize,
}

// SAFETY: the mapping is owned by this value alone and freed once, in `drop`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    const MAPPING: usize = 2 * STAGE;

    /// Maps a new buffer; `None` if the kernel refuses.
    pub fn new() -> Option<Self> {
        // SAFETY: an anonymous private mapping that no other code knows of; it is unmapped
        // only in `drop`.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::MAPPING,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return None;
        }
        let start = (mapping as *const u8).align_offset(STAGE);
        // SAFETY: `start + STAGE <= MAPPING`, so the range is inside the mapping. Without huge
        // pages the buffer still works, only with more, smaller requests.
        unsafe {
            libc::madvise(
                mapping.cast::<u8>().add(start).cast(),
                STAGE,
                libc::MADV_HUGEPAGE,
            );
        }
        Some(Self { mapping, start })
    }

    /// The aligned window, [`STAGE`] bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the window lies inside the live mapping, which `&self` keeps alive.
        unsafe { std::slice::from_raw_parts(self.mapping.cast::<u8>().add(self.start), STAGE) }
    }

    /// The aligned window, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.cast::<u8>().add(self.start), STAGE) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping came from mmap with this length and is unmapped only here.
        unsafe {
            libc::munmap(self.mapping, Self::MAPPING);
        }
    }
}

/// Whether the kernel can back stages with transparent huge pages. Without them a direct
/// write is cut into small requests and buffered writes are faster.
fn huge_pages_available() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| !mode.contains("[never]"))
}

/// Part of one download's bytes, collected until a direct write can take them.
pub struct Stage {
    /// The part they belong to.
    pub part: u64,
    /// File offset of the first byte; always aligned.
    pub start: u64,
    /// Bytes held.
    pub len: usize,
    /// Where they are held.
    pub buf: AlignedBuf,
}

impl Stage {
    /// The offset the next byte of this stream must have.
    pub fn next_offset(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Copies as much of `data` as fits and returns how much that was.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(STAGE - self.len);
        self.buf.as_mut_slice()[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Whether no byte fits any more.
    pub fn is_full(&self) -> bool {
        self.len == STAGE
    }
}

/// Where a finished direct write is reported.
pub trait WriteDone: Send + Sync {
    /// Stage `part`'s write ended with `result`.
    fn write_done(&self, part: u64, result: io::Result<()>);
}

/// One file's descriptors: the direct one for aligned stages and the ordinary one for the
/// rest, and for stages the kernel refuses as misaligned.
pub struct DirectFile {
    /// Opened with `O_DIRECT`.
    pub direct: File,
    /// The ordinary descriptor of the same file.
    pub buffered: Arc<File>,
    /// Told when each write ends.
    pub done: Arc<dyn WriteDone>,
}

impl DirectFile {
    fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self.direct.write_all_at(bytes, offset) {
            // A filesystem may want a larger alignment than ours: the same bytes, buffered.
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                self.buffered.write_all_at(bytes, offset)
            }
            other => other,
        }
    }
}

struct Job {
    file: Arc<DirectFile>,
    part: u64,
    offset: u64,
    len: usize,
    buf: AlignedBuf,
}

/// An engine's threads doing direct writes, and the stages they return.
pub struct IoPool {
    jobs: Mutex<Option<SyncSender<Job>>>,
    stages: Arc<Mutex<Stages>>,
    enabled: bool,
}

/// Stage buffers not in use, and how many exist.
#[derive(Default)]
struct Stages {
    spare: Vec<AlignedBuf>,
    created: usize,
}

impl IoPool {
    /// Starts [`IO_THREADS`] writer threads, which end when the pool is dropped. Direct I/O is
    /// disabled where transparent huge pages are off.
    pub fn start() -> Arc<Self> {
        Self::with_huge_pages(huge_pages_available())
    }

    fn with_huge_pages(enabled: bool) -> Arc<Self> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let stages = Arc::new(Mutex::new(Stages::default()));
        for n in 0..IO_THREADS {
            let (rx, stages) = (rx.clone(), stages.clone());
            // A pool that could not start a thread still works with the threads it has; with
            // none, `submit` writes on the caller's thread.
            let _ = std::thread::Builder::new()
                .name(format!("era5-io-{n}"))
                .spawn(move || run_jobs(&rx, &stages));
        }
        Arc::new(Self {
            jobs: Mutex::new(Some(tx)),
            stages,
            enabled,
        })
    }

    /// Whether downloads should write direct at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A buffer for a new stage, or `None` when all [`MAX_STAGES`] are taken (the caller then
    /// writes buffered: waiting could deadlock on stages held by parts waiting to retry).
    pub fn try_buffer(&self) -> Option<AlignedBuf> {
        let mut stages = self.stages.lock_unpoisoned();
        if let Some(buf) = stages.spare.pop() {
            return Some(buf);
        }
        if stages.created >= MAX_STAGES {
            return None;
        }
        let buf = AlignedBuf::new()?;
        stages.created += 1;
        Some(buf)
    }

    /// Takes back a buffer that was not written.
    pub fn recycle(&self, buf: AlignedBuf) {
        recycle(&self.stages, buf);
    }

    /// Writes the first `len` bytes of `stage` at its offset, later, on a pool thread;
    /// `file.done` hears of it. Blocks while the queue is full.
    pub fn submit(&self, file: &Arc<DirectFile>, stage: Stage, len: usize) {
        let job = Job {
            file: file.clone(),
            part: stage.part,
            offset: stage.start,
            len,
            buf: stage.buf,
        };
        let sender = self.jobs.lock_unpoisoned().clone();
        let job = match sender {
            Some(sender) => match sender.send(job) {
                Ok(()) => return,
                Err(returned) => returned.0,
            },
            None => job,
        };
        // No pool thread is left: write here.
        run_job(job, &self.stages);
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Closing the queue ends the threads once it is empty.
        self.jobs.lock_unpoisoned().take();
    }
}

fn run_jobs(rx: &Mutex<Receiver<Job>>, spare: &Mutex<Stages>) {
    loop {
        let Ok(job) = rx.lock_unpoisoned().recv() else {
            return;
        };
        run_job(job, spare);
    }
}

fn run_job(job: Job, spare: &Mutex<Stages>) {
    let Job {
        file,
        part,
        offset,
        len,
        buf,
    } = job;
    let result = file.write(offset, &buf.as_slice()[..len]);
    // The buffer and the descriptors are let go before the writer hears that its last write
    // ended: it may then take the file back for itself and expects to be its only holder.
    recycle(spare, buf);
    let done = file.done.clone();
    drop(file);
    done.write_done(part, result);
}

fn recycle(stages: &Mutex<Stages>, buf: AlignedBuf) {
    // Every buffer returns here, so there are never more spares than `MAX_STAGES`.
    stages.lock_unpoisoned().spare.push(buf);
}

/// Opens `path` again for direct writes, if its filesystem is one where that is known to work
/// well. `None` means: write buffered.
pub fn open_direct(path: &Path, buffered: &File) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;

        if !suits_direct_io(buffered) {
            return None;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, buffered);
        None
    }
}

/// Whether `file` is on a filesystem where direct writes are known to work well.
pub fn suits_direct_io(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(stats) = rustix::fs::fstatfs(file) else {
            return false;
        };
        // ext2/3/4 share one magic number. btrfs is left out: with data checksums, direct
        // writes are its slow path.
        // The field's width differs between targets; compare at the widest.
        #[allow(clippy::unnecessary_cast)]
        let magic = stats.f_type as i64;
        #[allow(clippy::unnecessary_cast)]
        let known = [libc::EXT4_SUPER_MAGIC as i64, libc::XFS_SUPER_MAGIC as i64];
        known.contains(&magic)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Reserves the file's blocks up front, so direct writes into it are overwrites, which ext4
/// runs in parallel under a shared inode lock (writes into holes take it exclusively).
/// A full disk (or quota, or a failing device) is an error, so the download stops before it
/// starts; a filesystem that cannot preallocate only loses speed.
pub fn preallocate(file: &File, size: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // Mode 0 (no flags) allocates and keeps the file's contents.
        if let Err(errno) =
            rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size)
        {
            let error = io::Error::from(errno);
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)
            ) {
                return Err(error);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, size);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    #[test]
    fn stages_are_bounded_and_come_back_when_recycled() {
        let pool = IoPool::with_huge_pages(true);
        let taken: Vec<AlignedBuf> = (0..MAX_STAGES)
            .map(|_| pool.try_buffer().unwrap())
            .collect();
        assert!(pool.try_buffer().is_none(), "more than MAX_STAGES stages");
        for buf in taken {
            pool.recycle(buf);
        }
        assert!(pool.try_buffer().is_some());
        assert_eq!(pool.stages.lock().unwrap().created, MAX_STAGES);
    }

    #[test]
    fn buffers_are_aligned_and_stages_fill_to_their_size() {
        let buf = AlignedBuf::new().unwrap();
        assert_eq!(buf.as_slice().as_ptr() as usize % STAGE, 0);
        assert_eq!(buf.as_slice().len(), STAGE);
        let mut stage = Stage {
            part: 0,
            start: 0,
            len: 0,
            buf,
        };
        let data = vec![7u8; STAGE - 10];
        assert_eq!(stage.fill(&data), STAGE - 10);
        assert!(!stage.is_full());
        assert_eq!(stage.fill(&data), 10);
        assert!(stage.is_full());
        assert_eq!(stage.next_offset(), STAGE as u64);
    }

    /// Counts finished writes so the test can wait for them.
    #[derive(Default)]
    struct Counter {
        done: Mutex<Vec<(u64, bool)>>,
        changed: Condvar,
    }

    impl WriteDone for Counter {
        fn write_done(&self, part: u64, result: io::Result<()>) {
            self.done.lock().unwrap().push((part, result.is_ok()));
            self.changed.notify_all();
        }
    }

    #[test]
    fn pool_writes_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let buffered = Arc::new(File::create(&path).unwrap());
        let size = 3 * STAGE as u64 + 100;
        buffered.set_len(size).unwrap();
        preallocate(&buffered, size).unwrap();
        // Direct where the test's filesystem allows it, else the same writes buffered.
        let direct = open_direct(&path, &buffered)
            .unwrap_or_else(|| std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        let counter = Arc::new(Counter::default());
        let file = Arc::new(DirectFile {
            direct,
            buffered: buffered.clone(),
            done: counter.clone(),
        });
        let pool = IoPool::start();
        for part in 0..3u64 {
            let mut stage = Stage {
                part,
                start: part * STAGE as u64,
                len: 0,
                buf: pool.try_buffer().unwrap(),
            };
            stage.fill(&vec![part as u8 + 1; STAGE]);
            pool.submit(&file, stage, STAGE);
        }
        let mut done = counter.done.lock().unwrap();
        while done.len() < 3 {
            done = counter.changed.wait(done).unwrap();
        }
        assert!(done.iter().all(|(_, ok)| *ok));
        drop(done);
        let bytes = std::fs::read(&path).unwrap();
        for part in 0..3usize {
            let chunk = &bytes[part * STAGE..(part + 1) * STAGE];
            assert!(chunk.iter().all(|&b| b == part as u8 + 1), "part {part}");
        }
        assert!(bytes[3 * STAGE..].iter().all(|&b| b == 0));
    }
}
