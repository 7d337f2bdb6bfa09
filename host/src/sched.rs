//! Scheduling of threads that do background work for a service.

use std::io;

/// Puts the calling thread in the `SCHED_BATCH` policy (sched(7)): its share of the CPU stays
/// that of a normal thread at its nice value, but its wake-ups no longer preempt the thread
/// that is running. For threads that do a service's disk work in rounds (the mail plugin's
/// delivery threads): the session threads go on answering clients while such a thread's disk
/// write completes, instead of handing the CPU over at every completion.
///
/// Needs no privilege; nix wraps neither sched_setscheduler nor its policies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn batch_this_thread() -> io::Result<()> {
    use nix::libc;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it; pid 0
    // is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no such policy; the thread keeps the default.
#[cfg(not(target_os = "linux"))]
pub fn batch_this_thread() -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_becomes_batch_and_others_do_not() {
        let policy = || {
            // SAFETY: sched_getscheduler takes a pid and touches no memory.
            #[allow(unsafe_code)]
            unsafe {
                nix::libc::sched_getscheduler(0)
            }
        };
        std::thread::spawn(move || {
            batch_this_thread().expect("SCHED_BATCH");
            assert_eq!(policy(), nix::libc::SCHED_BATCH);
        })
        .join()
        .expect("thread");
        assert_eq!(policy(), nix::libc::SCHED_OTHER);
    }
}
