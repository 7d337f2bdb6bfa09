//! The pidfile, held with an exclusive `flock` for as long as the server lives.
//!
//! The lock, not the PID written in the file, says whether a server runs: a file nobody holds
//! is stale, even when its PID now belongs to some other process, and is taken over.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("Another twistd server is running, PID {pid} (pidfile {})", path.display())]
    Running { pid: String, path: PathBuf },
    #[error("pidfile {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl PidFile {
    /// Takes the lock, before anything is bound: a second server stops here. The PID is
    /// written later, by the process that will live ([`PidFile::write_pid`]).
    pub fn lock(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(PidFileError::Running {
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                    path: path.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        let mut old = String::new();
        let _ = lock.read_to_string(&mut old);
        if !old.trim().is_empty() {
            tracing::info!(
                "replacing stale pidfile {} (PID {} no longer holds it)",
                path.display(),
                old.trim()
            );
        }
        Ok(PidFile {
            path: path.to_path_buf(),
            lock,
        })
    }

    /// Writes this process's PID (the daemon's, after the fork; the lock is inherited).
    pub fn write_pid(&mut self) -> Result<(), PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: self.path.clone(),
            source,
        };
        self.lock.set_len(0).map_err(io_err)?;
        self.lock.rewind().map_err(io_err)?;
        writeln!(self.lock, "{}", std::process::id()).map_err(io_err)?;
        self.lock.sync_all().map_err(io_err)
    }

    /// Removes the file by `path` (its name as seen now, inside any chroot), then lets go of
    /// the lock. A directory that no longer allows the removal gives a warning, not a failure.
    pub fn remove(self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("cannot remove pidfile {}: {e}", path.display());
        }
        drop(self.lock);
    }
}
