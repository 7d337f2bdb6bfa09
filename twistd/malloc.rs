//! One allocator setting for the whole process.
//!
//! glibc's malloc moves its mmap threshold up to the size of any mmapped block that is freed
//! (up to 32 MiB). Argon2 password checks (POP3 and SMTP AUTH logins, at tens of milliseconds
//! by design) allocate 19 MiB each; after the first one is freed, later ones come from the
//! per-thread arenas of the blocking pool, which keep it: resident memory grew by about 19 MiB
//! per arena, to 224 MiB after 12 POP3 logins. With a fixed threshold, blocks that large are
//! always mapped on their own and go back to the system when freed.

#![allow(unsafe_code)]

/// Fixes the mmap threshold; to be called before any thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_mmap_threshold() {
    /// Blocks of this size or more are mapped on their own (glibc's dynamic maximum is 32 MiB).
    const MMAP_THRESHOLD: libc::c_int = 4 << 20;
    // SAFETY: mallopt only changes a tunable of the allocator; there is one thread yet, so no
    // allocation runs concurrently. nix does not wrap mallopt.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

/// Other C libraries have their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_mmap_threshold() {}
