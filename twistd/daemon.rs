//! Becoming a daemon: fork, setsid, fork, with a pipe back to the first process, which exits
//! only when the daemon says it is ready (0) or failed (the cause's exit code and message).
//! Twisted's parent exited 0 even when start-up then failed; this one cannot.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use host::exit::{self, Failure};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, setsid, ForkResult};

/// The daemon's end of the status pipe; in the foreground, only systemd is told.
pub struct Notifier {
    pipe: Option<File>,
}

impl Notifier {
    pub fn foreground() -> Self {
        Notifier { pipe: None }
    }

    /// Every service runs: release the waiting parent, tell systemd (and, as a daemon, which
    /// process is the main one now: not the one systemd started).
    pub fn ready(&mut self, status: &str) {
        let pid = std::process::id();
        let mut states = vec![
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ];
        if self.pipe.is_some() {
            states.push(sd_notify::NotifyState::MainPid(pid));
        }
        notify(&states);
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"0\n");
        }
    }

    /// Start-up failed: the parent prints `failure` and exits with its code.
    pub fn failed(&mut self, failure: &Failure) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = write!(pipe, "{} {}", failure.code, failure.message);
        }
    }
}

/// Tells the service manager, if `NOTIFY_SOCKET` names one. sd-notify connects by path only;
/// a name starting with `@` is an abstract socket, as sd_notify(3) reads it, sent to here.
pub fn notify(states: &[sd_notify::NotifyState]) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(name) if name.as_bytes().starts_with(b"@") => {
            let message: String = states.iter().map(|s| format!("{s}\n")).collect();
            let socket = std::os::unix::net::UnixDatagram::unbound();
            let address = std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]);
            if let (Ok(socket), Ok(address)) = (socket, address) {
                let _ = socket.send_to_addr(message.as_bytes(), &address);
            }
        }
        _ => {
            let _ = sd_notify::notify(states);
        }
    }
}

/// Notes the descriptors twistd was started with beyond 0, 1 and 2, less those systemd passed
/// for socket activation: a daemon closes them (daemon(7)), so it keeps no file, pipe or
/// terminal of whoever started it. Called first thing in `main`, before twistd opens anything
/// of its own; they stay open until the daemon closes them, so none of twistd's own
/// descriptors can have one of their numbers.
pub fn note_inherited_descriptors() {
    let _ = INHERITED.set(inherited_descriptors());
}

static INHERITED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

fn inherited_descriptors() -> Vec<i32> {
    let me = std::process::id().to_string();
    let passed = match (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) {
        (Ok(pid), Ok(n)) if pid == me => n.parse::<i32>().unwrap_or(0),
        _ => 0,
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2 && !(3..3 + passed).contains(&fd))
        .collect();
    // The listing's own descriptor was among them, and is closed now.
    listed
        .into_iter()
        .filter(|&fd| nix::fcntl::fcntl(borrowed(fd), nix::fcntl::F_GETFD).is_ok())
        .collect()
}

/// A descriptor number as a borrowed descriptor, for fcntl.
fn borrowed(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only passed to fcntl(F_GETFD), which reports EBADF for a number that is not
    // open; the borrow never outlives that call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Closes what [`note_inherited_descriptors`] found, in the daemon.
fn close_inherited() {
    for &fd in INHERITED.get().map_or(&[][..], Vec::as_slice) {
        // SAFETY: these numbers were open when twistd started and are nothing twistd opened
        // (see inherited_descriptors); nothing else owns them, so taking and dropping them
        // closes them once.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
}

/// Opens /dev/null for the daemon's standard streams: before any chroot, which hides it.
pub fn open_dev_null() -> Result<File, Failure> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Failure::internal(format!("/dev/null: {e}")))
}

/// Forks twice. Returns in the daemon (no controlling terminal, not a session leader, standard
/// streams on `null`); the first process waits for the daemon's word and exits with it.
pub fn daemonize(null: File) -> Result<Notifier, Failure> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        pipe().map_err(|e| Failure::internal(format!("cannot create the status pipe: {e}")))?;
    // The daemon, orphaned when the middle process exits, becomes this process's child rather
    // than init's, so a daemon that dies before its word can be asked how (the flag is not
    // inherited by the children). If it cannot be set, that is all that is lost.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    // SAFETY: twistd has a single thread here: the runtime is built after this point and
    // nothing before it spawns threads (see ARCHITECTURE.md), so the child may run any code.
    match unsafe { fork() }.map_err(|e| Failure::internal(format!("cannot fork: {e}")))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            // The intermediate child exits at once; reap it so it is no zombie.
            let _ = waitpid(child, None);
            let mut word = String::new();
            let _ = File::from(read_end).read_to_string(&mut word);
            std::process::exit(match parse_word(&word, how_the_daemon_ended) {
                Ok(()) => 0,
                Err(failure) => {
                    eprintln!("twistd: {failure}");
                    failure.code
                }
            })
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    setsid().map_err(|e| Failure::internal(format!("setsid failed: {e}")))?;
    // SAFETY: still single-threaded (see above).
    match unsafe { fork() }.map_err(|e| Failure::internal(format!("cannot fork: {e}")))? {
        // The session leader leaves, so the daemon can never acquire a controlling terminal.
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    for dup in [
        nix::unistd::dup2_stdin,
        nix::unistd::dup2_stdout,
        nix::unistd::dup2_stderr,
    ] {
        dup(&null).map_err(|e| Failure::internal(format!("cannot redirect to /dev/null: {e}")))?;
    }
    close_inherited();
    Ok(Notifier {
        pipe: Some(File::from(write_end)),
    })
}

/// How the daemon, now this process's child, ended: "was killed by SIGKILL", "exited with
/// status 1", or `None` if that cannot be learned within a second.
fn how_the_daemon_ended() -> Option<String> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus};
    // The pipe closes as the daemon's descriptors are torn down, a moment before it can be
    // waited for; a daemon that closed the pipe and lives on is not waited for long.
    for _ in 0..100 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Some(format!("was killed by {signal}"))
            }
            Ok(WaitStatus::Exited(_, code)) => return Some(format!("exited with status {code}")),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// `0` is success; `CODE MESSAGE` a failure; nothing at all means the daemon died, and
/// `how_it_ended` may say how.
fn parse_word(word: &str, how_it_ended: impl FnOnce() -> Option<String>) -> Result<(), Failure> {
    let word = word.trim_end();
    if word == "0" {
        return Ok(());
    }
    match word.split_once(' ') {
        Some((code, message)) if code.parse::<i32>().is_ok() => {
            Err(Failure::new(code.parse().expect("checked above"), message))
        }
        _ => Err(Failure::new(
            exit::INTERNAL,
            match how_it_ended() {
                Some(how) => format!("the daemon {how} during start-up; see its log"),
                None => "the daemon exited during start-up without saying why; see its log".into(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words() {
        let untold = || None;
        assert!(parse_word("0\n", untold).is_ok());
        let failure =
            parse_word("69 cannot listen on tcp:80: in use", untold).expect_err("failure");
        assert_eq!(
            (failure.code, failure.message.as_str()),
            (69, "cannot listen on tcp:80: in use")
        );
        let silence = parse_word("", untold).expect_err("silence");
        assert_eq!(silence.code, exit::INTERNAL);
        assert!(silence.message.contains("without saying why"));
        let killed = parse_word("", || Some("was killed by SIGKILL".into())).expect_err("killed");
        assert_eq!(
            killed.message,
            "the daemon was killed by SIGKILL during start-up; see its log"
        );
    }
}
