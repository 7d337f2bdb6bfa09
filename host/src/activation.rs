//! Listening sockets passed by systemd (socket activation, `sd_listen_fds(3)`).
//!
//! The descriptors are collected once, the first time a `systemd:` endpoint is bound, and each
//! can be taken once. `sd-notify` reads `LISTEN_PID`/`LISTEN_FDS` and marks them close-on-exec;
//! turning a raw descriptor into an owned socket is the one step it leaves to us.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike, SockaddrStorage,
};

use crate::net::Listener;

static PASSED: OnceLock<Mutex<Vec<Option<OwnedFd>>>> = OnceLock::new();

fn passed() -> &'static Mutex<Vec<Option<OwnedFd>>> {
    PASSED.get_or_init(|| {
        let fds = match sd_notify::listen_fds() {
            Ok(fds) => fds
                .map(|raw| {
                    // SAFETY: LISTEN_PID names this process, so systemd (or whoever started
                    // it the same way) passed these descriptors to us, and nothing else in the
                    // process has claimed them: this is the only place that reads LISTEN_FDS,
                    // and it runs once, under the OnceLock.
                    Some(unsafe { OwnedFd::from_raw_fd(raw) })
                })
                .collect(),
            Err(e) => {
                tracing::warn!("ignoring socket activation variables: {e}");
                Vec::new()
            }
        };
        Mutex::new(fds)
    })
}

/// The `index`-th passed socket as a listener; `domain` (INET, INET6, UNIX), if given, must
/// match its address family.
pub fn take(index: usize, domain: Option<&str>) -> io::Result<Listener> {
    let fd = {
        let mut fds = passed().lock().unwrap_or_else(|p| p.into_inner());
        let count = fds.len();
        match fds.get_mut(index) {
            Some(slot) => slot.take().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "descriptor already used by another endpoint",
                )
            })?,
            None => {
                // sd_listen_fds(3) ignores LISTEN_FDS meant for another process: say so, or
                // the count of 0 would read as if the manager had passed none.
                let pid = std::env::var("LISTEN_PID").ok();
                let reason = match pid {
                    Some(pid) if pid != std::process::id().to_string() => format!(
                        "no passed descriptors: LISTEN_PID is {pid}, not this process ({})",
                        std::process::id()
                    ),
                    None if std::env::var_os("LISTEN_FDS").is_some() => {
                        "no passed descriptors: LISTEN_FDS is set without LISTEN_PID".to_string()
                    }
                    _ => format!("no such passed descriptor (LISTEN_FDS gave {count})"),
                };
                return Err(io::Error::new(io::ErrorKind::NotFound, reason));
            }
        }
    };
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(io::Error::from)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the passed descriptor is not a listening socket",
        ));
    }
    let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(io::Error::from)?
        .family();
    let actual = match family {
        Some(AddressFamily::Inet) => "INET",
        Some(AddressFamily::Inet6) => "INET6",
        Some(AddressFamily::Unix) => "UNIX",
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the passed socket is neither TCP nor Unix",
            ))
        }
    };
    if let Some(domain) = domain.filter(|d| *d != actual) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the passed socket is {actual}, not {domain}"),
        ));
    }
    let listener = if actual == "UNIX" {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        Listener::Unix(l)
    } else {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)?;
        Listener::Tcp(l)
    };
    Ok(listener)
}
