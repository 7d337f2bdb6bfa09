//! From a request path to a file under the root, safely.
//!
//! The raw path is split on `/` before any decoding, so `%2f` can never become a separator.
//! Each segment is percent-decoded; a decoded `/`, `\` or NUL is refused (400). `.` segments
//! vanish and `..` removes the previous segment, as nginx does; a `..` that would climb above
//! the root is refused (400). The file is then opened beneath the (canonical) root with
//! `openat2(RESOLVE_BENEATH)` ([`open_beneath`]), so a symlink that points outside is refused by
//! the kernel (404) in the call that opens it; [`contain`] is the realpath-based check for roots
//! not held open and for kernels without openat2.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use percent_encoding::percent_decode;

/// Why a path was refused: `BadRequest` is 400, `NotFound` 404, `Forbidden` 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
    Forbidden,
}

/// The decoded segments of a request path, with `.` and `..` applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPath {
    pub segments: Vec<Vec<u8>>,
    /// Whether the request path ended with `/` (a directory is redirected when it does not).
    pub trailing_slash: bool,
}

impl UrlPath {
    pub fn parse(raw: &str) -> Result<UrlPath, Refusal> {
        let rest = raw.strip_prefix('/').ok_or(Refusal::BadRequest)?;
        let mut segments: Vec<Vec<u8>> = Vec::new();
        let mut trailing_slash = true;
        for raw_segment in rest.split('/') {
            // A `%` not followed by two hex digits is no URL (RFC 3986 §2.1): nginx says 400.
            let bytes = raw_segment.as_bytes();
            let malformed = bytes.iter().enumerate().any(|(i, &b)| {
                b == b'%'
                    && !bytes
                        .get(i + 1..i + 3)
                        .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            });
            if malformed {
                return Err(Refusal::BadRequest);
            }
            let segment: Vec<u8> = percent_decode(bytes).collect();
            if segment.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
                return Err(Refusal::BadRequest);
            }
            trailing_slash = segment.is_empty() || segment == b"." || segment == b"..";
            match segment.as_slice() {
                b"" | b"." => {}
                b".." => {
                    segments.pop().ok_or(Refusal::BadRequest)?;
                }
                _ => segments.push(segment),
            }
        }
        Ok(UrlPath {
            segments,
            trailing_slash,
        })
    }

    /// The path below `root` that the segments name (not yet checked for symlinks).
    pub fn under(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        for segment in &self.segments {
            path.push(OsStr::from_bytes(segment));
        }
        path
    }

    /// The decoded path for display, as `/a/b/`.
    pub fn display(&self) -> String {
        let mut out = String::from("/");
        for segment in &self.segments {
            out.push_str(&String::from_utf8_lossy(segment));
            out.push('/');
        }
        out
    }
}

/// A file (or directory) opened under a root, with its metadata from the open descriptor:
/// what is read later is what was checked, whatever is renamed or relinked meanwhile.
#[derive(Debug)]
pub struct Opened {
    /// The path as requested under the root (for the extension, listings and logs).
    pub path: PathBuf,
    pub file: File,
    pub meta: Metadata,
}

/// A configured root, held open so each request resolves beneath it with one system call.
#[derive(Debug)]
pub struct RootDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl RootDir {
    /// `path` must be canonical (the root every containment check compares against).
    pub fn open(path: &Path) -> std::io::Result<RootDir> {
        Ok(RootDir {
            path: path.to_path_buf(),
            fd: File::open(path)?.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstatat(root, candidate, AT_SYMLINK_NOFOLLOW)` for a path under the root (one system
    /// call, for [`crate::cache`] to revalidate an entry; it proves nothing by itself). `None`
    /// for the root itself, a path outside it, or any error.
    pub fn stat_nofollow(&self, candidate: &Path) -> Option<nix::sys::stat::FileStat> {
        let relative = self.relative(candidate)?;
        nix::sys::stat::fstatat(
            &self.fd,
            OsStr::from_bytes(relative),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()
    }

    /// Whether nothing at all is named `candidate` + `suffix` (a path under the root): one
    /// `fstatat(AT_SYMLINK_NOFOLLOW)` that fails with ENOENT. Any other outcome, including a
    /// dangling symlink or another error, is `false`.
    pub fn absent(&self, candidate: &Path, suffix: &str) -> bool {
        let Some(relative) = self.relative(candidate) else {
            return false;
        };
        let mut name = Vec::with_capacity(relative.len() + suffix.len());
        name.extend_from_slice(relative);
        name.extend_from_slice(suffix.as_bytes());
        matches!(
            nix::sys::stat::fstatat(
                &self.fd,
                OsStr::from_bytes(&name),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
            Err(nix::errno::Errno::ENOENT)
        )
    }

    /// `candidate`'s bytes below the root; `None` for the root itself or a path outside it.
    fn relative<'a>(&self, candidate: &'a Path) -> Option<&'a [u8]> {
        // By bytes: `Path::strip_prefix` walks components. Candidates are built by pushing
        // segments onto the root, so the root's bytes and a `/` lead them.
        let root = self.path.as_os_str().as_bytes();
        let rest = candidate.as_os_str().as_bytes().strip_prefix(root)?;
        let relative = if root.ends_with(b"/") {
            rest
        } else {
            rest.strip_prefix(b"/")?
        };
        (!relative.is_empty()).then_some(relative)
    }
}

/// Opens `candidate` (a path under `root.path()`) with `openat2(RESOLVE_BENEATH)`: the kernel
/// refuses any `..` or symlink that would leave the root, in the same call that opens the file.
/// That replaces realpath's walk (an lstat or readlink per component) and the separate stat,
/// and leaves no window between the check and the open. O_NONBLOCK keeps a FIFO in the tree
/// from blocking the worker. Kernels without openat2 (before 5.6, or behind a seccomp filter
/// that refuses it) fall back to [`contain`] and an open by the canonical path.
pub fn open_beneath(root: &RootDir, candidate: &Path) -> Result<Opened, Refusal> {
    let relative = candidate
        .strip_prefix(&root.path)
        .map_err(|_| Refusal::NotFound)?;
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(&root.fd, relative, how) {
        Ok(fd) => {
            let file = File::from(fd);
            let meta = file.metadata().map_err(|_| Refusal::NotFound)?;
            Ok(Opened {
                path: candidate.to_path_buf(),
                file,
                meta,
            })
        }
        Err(Errno::ENOSYS | Errno::EPERM) if !openat2_works() => {
            open_checked(&root.path, candidate)
        }
        Err(Errno::EACCES | Errno::EPERM) => Err(Refusal::Forbidden),
        // EXDEV: the path would leave the root. ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG: nothing
        // to serve there.
        Err(_) => Err(Refusal::NotFound),
    }
}

/// Whether openat2 is usable here, asked once (on "/" beneath itself).
fn openat2_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let Ok(root) = File::open("/") else {
            return false;
        };
        openat2(
            &root,
            ".",
            OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH),
        )
        .is_ok()
    })
}

/// [`contain`], then an open by the canonical path: for roots that are not held open (user
/// directories) and kernels without openat2.
pub fn open_checked(root: &Path, candidate: &Path) -> Result<Opened, Refusal> {
    let real = contain(root, candidate)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&real)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Refusal::Forbidden,
            _ => Refusal::NotFound,
        })?;
    let meta = file.metadata().map_err(|_| Refusal::NotFound)?;
    Ok(Opened {
        path: candidate.to_path_buf(),
        file,
        meta,
    })
}

/// The canonical path of `candidate`, if it exists and lies under the canonical `root`.
pub fn contain(root: &Path, candidate: &Path) -> Result<PathBuf, Refusal> {
    match candidate.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(_) => Err(Refusal::NotFound),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Refusal::Forbidden),
        Err(_) => Err(Refusal::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(raw: &str) -> Result<Vec<String>, Refusal> {
        UrlPath::parse(raw).map(|p| {
            p.segments
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }

    #[test]
    fn dots_are_applied_within_the_root() {
        assert_eq!(segs("/a/./b/../c"), Ok(vec!["a".into(), "c".into()]));
        assert_eq!(segs("/a/%2e%2E/c"), Ok(vec!["c".into()]));
        assert_eq!(segs("//a//"), Ok(vec!["a".into()]));
        assert_eq!(segs("/"), Ok(vec![]));
    }

    #[test]
    fn escapes_above_the_root_are_refused() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2E%2fetc",
            "/a%2f..%2f..",
            "/a%5c..%5cb",
            "/a\\b",
            "/a%00b",
            "etc/passwd",
            "",
            "*",
            // Not percent-encoding at all (RFC 3986 §2.1).
            "/%zz",
            "/a%",
            "/a%4",
        ] {
            assert!(UrlPath::parse(raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn trailing_slash_is_seen_after_decoding() {
        assert!(UrlPath::parse("/a/").expect("ok").trailing_slash);
        assert!(!UrlPath::parse("/a").expect("ok").trailing_slash);
        assert!(UrlPath::parse("/a/.").expect("ok").trailing_slash);
        assert!(UrlPath::parse("/").expect("ok").trailing_slash);
    }

    #[test]
    fn symlinks_out_of_the_root_are_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(dir.path().join("secret"), "s").expect("write");
        std::fs::write(root.join("ok"), "o").expect("write");
        std::os::unix::fs::symlink("../secret", root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("ok", root.join("in")).expect("symlink");
        let root = root.canonicalize().expect("canonical root");
        assert!(contain(&root, &root.join("in")).is_ok());
        assert_eq!(contain(&root, &root.join("out")), Err(Refusal::NotFound));
        let held = RootDir::open(&root).expect("open root");
        assert!(open_beneath(&held, &root.join("in")).is_ok_and(|o| o.meta.is_file()));
        assert!(open_beneath(&held, &root).is_ok_and(|o| o.meta.is_dir()));
        assert_eq!(
            open_beneath(&held, &root.join("out")).map(|_| ()),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            open_beneath(&held, &root.join("missing")).map(|_| ()),
            Err(Refusal::NotFound)
        );
        assert!(open_checked(&root, &root.join("in")).is_ok());
        assert_eq!(
            open_checked(&root, &root.join("out")).map(|_| ()),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            contain(&root, &root.join("missing")),
            Err(Refusal::NotFound)
        );
    }
}
