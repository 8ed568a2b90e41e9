//! Keeps freed heap memory in the process instead of handing it back to the kernel.
//!
//! Every connection reads response bodies into buffers of up to 512 KiB (hyper's read buffer,
//! see `transport::pool`), and a body chunk is freed by the file's writer thread as soon
//! as it is written. With glibc's default settings those chunks churn through the kernel:
//! freed space at the top of an arena is trimmed (returned with `madvise`/`munmap`) once it
//! passes a threshold that adapts to the largest chunk seen, and the next chunk faults it back
//! in, zeroed page by page. One 2 GiB download took about 70 000 page faults this way. On a
//! VM with free page reporting each of those may also be a fault in the host.
//!
//! Fixing both thresholds above what the process ever holds (its memory is bounded by the
//! connection cap and the writers' queues, about 50-70 MiB) stops the trimming: the same
//! download takes about 11 000 page faults and 12% less CPU (`perf stat`, the binary before
//! and after this module in alternating runs). The heap keeps what it reached (peak RSS in
//! `bench/run.py` went from about 50 to 54-65 MiB) but never grows beyond the bounded working
//! set.

/// Chunks at least this large get their own mapping; the 512 KiB read buffers stay below it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 << 20;
/// Free space at the top of an arena is returned only beyond this, far above the process's
/// bounded working set, so in practice never while it runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// Sets glibc's allocator thresholds; call once from `main`, before any thread starts, for
/// the commands that download (`sync`, `worker`). Elsewhere (musl, other systems) it does
/// nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // exist. A refusal (return 0) leaves the defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
