//! The process's dealings with glibc's allocator: freed heap memory goes back to the system
//! when the process goes idle, and large blocks are always mapped on their own.
//!
//! glibc's malloc keeps what connections free in its arenas, fragmented between the chunks
//! still in use, so a burst of connections leaves the resident size at its peak for good.
//! When the last open connection of the process closes, [`connection_closed`] asks the
//! allocator to return every whole free page (`malloc_trim`), at most once a second so that
//! a client opening one connection after another does not pay for it on each. Under steady
//! load some connection is always open and nothing is trimmed. The working memory kept for
//! password checks ([`crate::secret`]) goes back a second after the last connection closed,
//! if no other has opened meanwhile.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections open in the whole process, over every service.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// When the heap was last trimmed.
static LAST_TRIM: Mutex<Option<Instant>> = Mutex::new(None);

/// The least time between two trims.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn connection_opened() {
    OPEN.fetch_add(1, Ordering::AcqRel);
}

pub(crate) fn connection_closed() {
    if OPEN.fetch_sub(1, Ordering::AcqRel) == 1 {
        release_scratch_when_idle();
        if due(&LAST_TRIM, Instant::now()) {
            trim();
        }
    }
}

/// How long the process must stay without connections before the working memory kept for
/// password checks goes back to the system.
const SCRATCH_LINGER: Duration = Duration::from_secs(1);

/// A release of that memory is scheduled.
static RELEASE_PENDING: AtomicBool = AtomicBool::new(false);

/// Gives the password checks' kept working memory ([`crate::secret::release_scratch`]) back
/// [`SCRATCH_LINGER`] after the last connection closed, if none is open then. A client that
/// opens one connection after another (a POP3 login per session) keeps it; an idle process
/// does not. Outside a runtime (nothing to wait with), at once.
fn release_scratch_when_idle() {
    if RELEASE_PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async {
                tokio::time::sleep(SCRATCH_LINGER).await;
                RELEASE_PENDING.store(false, Ordering::Release);
                if OPEN.load(Ordering::Acquire) == 0 {
                    crate::secret::release_scratch();
                }
            });
        }
        Err(_) => {
            RELEASE_PENDING.store(false, Ordering::Release);
            crate::secret::release_scratch();
        }
    }
}

/// Whether a trim at `now` is due after the one recorded in `last`; if so, records `now`.
/// False while another thread holds `last` (it is deciding, or has just decided, to trim).
fn due(last: &Mutex<Option<Instant>>, now: Instant) -> bool {
    let Ok(mut last) = last.try_lock() else {
        return false;
    };
    if last.is_some_and(|t| now.saturating_duration_since(t) < TRIM_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

/// Returns free memory to the system. The `libc` crate binds `malloc_trim`, which nix does
/// not wrap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer; it walks glibc's own arenas under their locks and
    // may be called from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other allocators and C libraries manage their own release.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Fixes glibc's mmap threshold; to be called first thing in `main`, before any thread exists.
///
/// glibc moves its mmap threshold up to the size of any mmapped block that is freed (up to
/// 32 MiB). Argon2 password checks (POP3 and SMTP AUTH logins, tens of milliseconds by design)
/// allocate 19 MiB each; after the first one is freed, later ones came from the blocking pool's
/// per-thread arenas, which kept them: resident memory grew by about 19 MiB per arena, to
/// 224 MiB after 12 POP3 logins. With a fixed threshold, blocks that large are always mapped on
/// their own and go back to the system when freed (12.7 MiB after the same 12 logins).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn fix_mmap_threshold() {
    use nix::libc;
    /// Blocks of this size or more are mapped on their own.
    const MMAP_THRESHOLD: libc::c_int = 4 << 20;
    // SAFETY: mallopt only changes a tunable of the allocator; the caller runs it before any
    // other thread exists, so no allocation runs concurrently. nix does not wrap mallopt.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

/// Other C libraries have their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_mmap_threshold() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_a_second() {
        let last = Mutex::new(None);
        let start = Instant::now();
        assert!(due(&last, start), "the first is due");
        assert!(!due(&last, start + Duration::from_millis(500)), "too soon");
        assert!(due(&last, start + Duration::from_millis(1500)));
        assert!(!due(&last, start + Duration::from_millis(1600)));
        let held = last.lock().expect("lock");
        assert!(
            !due(&last, start + Duration::from_secs(60)),
            "another thread decides"
        );
        drop(held);
        trim();
    }
}
