//! From a request path to a file under the root, safely.
//!
//! The raw path is split on `/` before any decoding, so `%2f` can never become a separator.
//! Each segment is percent-decoded; a decoded `/`, `\` or NUL is refused (400). `.` segments
//! vanish and `..` removes the previous segment, as nginx does; a `..` that would climb above
//! the root is refused (400). The result is then canonicalized and must still lie under the
//! (canonical) root, which catches symlinks that point outside (404).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
            let segment: Vec<u8> = percent_decode(raw_segment.as_bytes()).collect();
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
        assert_eq!(
            contain(&root, &root.join("missing")),
            Err(Refusal::NotFound)
        );
    }
}
