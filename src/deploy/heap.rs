//! Keeping freed volume-sized buffers in the process instead of returning them to the kernel.
//!
//! Why: glibc serves allocations above its mmap threshold (128 KB, rising to at most 32 MB as large
//! blocks are freed) with fresh `mmap`s and unmaps them on `free`. A 64×320×320 volume's buffers (the
//! tile batch, the blending sums and weights, the labels) are 6–26 MB each, so every volume paid for
//! hundreds of MB of page faults and zeroing: on an H200 machine's 16 cores, with the network at
//! 42 ms per volume, reading, preprocessing and blending took 160 ms, most of it faulting. With the
//! threshold at its 32 MB maximum and trimming off, the second and later volumes of a run reuse those
//! pages: measured on 2 cores, blending 240–274 ms → 82–101 ms, preprocessing 25 → 5–9 ms per warm
//! volume. The cost is that the process keeps its peak heap (which a worker needs again for the next
//! volume anyway).

/// Applies the policy above once, at start-up; a no-op where the C library is not glibc.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Hands what the process has freed back to the kernel, once (glibc's `malloc_trim`); a no-op where the
/// C library is not glibc. Why: with trimming off (above) `autopath demo` kept the training's freed heap
/// resident, and its benchmark, in the same process, reported 1.5 GB as the runtime's peak memory.
pub fn release_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; live allocations are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}
