//! A small cache of small files: their bytes and precomputed headers, so a request for one
//! costs one stat instead of open, fstat, read and close.
//!
//! **Safety.** An entry is made only from a file opened the safe way ([`crate::resolve`]:
//! `openat2(RESOLVE_BENEATH)` under a held root), keyed by the path it was opened by. Every hit
//! is revalidated with one `fstatat(root, path, AT_SYMLINK_NOFOLLOW)` compared on
//! [`Identity`]: device, inode, size, mode, mtime and ctime to the nanosecond. Anything short
//! of an exact match falls back to the normal safe open. A rename, link, chmod, chown or write
//! changes the ctime, so a file made private, replaced, moved out of the root or rewritten is
//! seen at once; a symlink in the last component never matches (its own inode is compared), so
//! symlinked files simply are not served from here.
//!
//! **Racy timestamps.** File timestamps are coarse (a kernel tick, or seconds on some file
//! systems): two writes within one tick can leave size, mtime and ctime alike. As git does for
//! its index, a file whose mtime or ctime is less than [`SETTLE`] old is not cached; any later
//! change then gets timestamps that differ from the cached ones.
//!
//! **Content codings.** GET and HEAD without Range use an entry (see `Site::static_route`);
//! ranges take the normal path. With Accept-Encoding the normal path would first look for a
//! precompressed sibling (`x.css.br`, `x.css.gz`) the client accepts, and a sibling may appear
//! or vanish at any moment; so an entry answers such a request only after one more
//! `fstatat(root, sibling, AT_SYMLINK_NOFOLLOW)` per accepted sibling coding has failed with
//! ENOENT. Anything else there (a file, a symlink, a directory, another error) sends the
//! request down the normal path, which decides as it always does (these stats come before the
//! revalidating one, so a file that has a sibling costs one stat more than with no cache, not
//! two; and none are made for a path with no entry). Without a sibling the normal
//! path gzips a compressible file of more than [`compress::MIN_SIZE`] bytes on the fly; an
//! entry keeps that gzip (made once, when a request that accepts gzip fills the entry, with
//! the same function and level, so the same bytes) beside the file's bytes, valid exactly as
//! long as they are: same [`Identity`]. An entry filled for a client without gzip holds none
//! (a fill costs no compression nobody asked for); the first gzip client refills it.
//!
//! Memory is bounded: at most [`MAX_FILE`] bytes per file and [`BUDGET`] bytes in all
//! (identity and gzip bytes both count), with arbitrary entries dropped to make room.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use nix::sys::stat::FileStat;

use crate::compress;
use crate::files::FileOptions;
use crate::resolve::{Opened, RootDir};

/// The largest file kept.
pub const MAX_FILE: u64 = 64 * 1024;
/// The most file bytes kept in all.
pub const BUDGET: usize = 2 * 1024 * 1024;
/// How old a file's timestamps must be before it is cached.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What must not have changed for a cached file to still be the file at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: i64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub fn of_stat(st: &FileStat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mode: st.st_mode,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub fn of_meta(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size() as i64,
            mode: meta.mode(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether both timestamps are at least [`SETTLE`] in the past.
    fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let limit = now.as_secs() as i64 - SETTLE.as_secs() as i64;
        self.mtime.0 < limit && self.ctime.0 < limit
    }
}

/// A cached file: its bytes and what its response says about it.
#[derive(Debug)]
pub struct CachedFile {
    identity: Identity,
    pub bytes: Bytes,
    pub etag: String,
    pub etag_value: Option<HeaderValue>,
    pub modified: Option<SystemTime>,
    pub last_modified: Option<HeaderValue>,
    pub content_type: HeaderValue,
    pub content_length: HeaderValue,
    /// The bytes gzipped, for a client that accepts gzip, when the normal path would gzip them
    /// on the fly (compressible type, more than [`compress::MIN_SIZE`] bytes, compression on,
    /// and the gzip smaller than the file).
    pub gzip: Option<Gzipped>,
    /// The normal path would gzip these bytes, but the entry was filled without: a request
    /// that accepts gzip refills it ([`FileCache::fill`] with `want_gzip`).
    pub gzip_missing: bool,
}

/// A cached file's on-the-fly gzip and the headers that differ for it.
#[derive(Debug)]
pub struct Gzipped {
    pub bytes: Bytes,
    pub content_length: HeaderValue,
    /// `W/` and the file's ETag: the gzipped bytes are not the file's.
    pub weak_etag: Option<HeaderValue>,
}

impl CachedFile {
    /// The bytes this entry holds (counted in [`BUDGET`]).
    fn size(&self) -> usize {
        self.bytes.len() + self.gzip.as_ref().map_or(0, |g| g.bytes.len())
    }
}

#[derive(Debug, Default)]
struct Entries {
    /// By the path's bytes (hashing a `Path` walks its components).
    files: HashMap<OsString, Arc<CachedFile>>,
    bytes: usize,
}

/// What [`FileCache::get`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The file, unchanged.
    Hit(Arc<CachedFile>),
    /// No entry, or not the file there now: the normal path may fill one.
    Miss,
    /// An entry this request cannot use: the normal path, leaving the entry be.
    Unusable,
}

/// The cache of one [`crate::site::Site`] (a reconfigure starts an empty one).
#[derive(Debug, Default)]
pub struct FileCache {
    entries: Mutex<Entries>,
}

impl FileCache {
    /// The entry for `path` (under `root`), if the file there is still exactly the one cached
    /// and `usable` (called only when there is an entry, before the revalidating stat: the
    /// request's other conditions, such as no precompressed sibling) holds.
    pub fn get(&self, root: &RootDir, path: &Path, usable: impl FnOnce() -> bool) -> Lookup {
        let entry = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.files.get(path.as_os_str()) {
                Some(entry) => entry.clone(),
                None => return Lookup::Miss,
            }
        };
        if !usable() {
            return Lookup::Unusable;
        }
        match root.stat_nofollow(path) {
            Some(now) if Identity::of_stat(&now) == entry.identity => Lookup::Hit(entry),
            _ => Lookup::Miss,
        }
    }

    /// Reads the regular file `opened` (at most [`MAX_FILE`] bytes, opened beneath `root` by
    /// the path it is keyed by) and keeps it if it is settled and its path still names it
    /// without a symlink. `None`: not kept; serve it the normal way. With `want_gzip` (the
    /// request accepts gzip) the entry also holds the gzip the normal path would send.
    pub fn fill(
        &self,
        root: &RootDir,
        opened: &Opened,
        opts: &FileOptions,
        want_gzip: bool,
    ) -> Option<Arc<CachedFile>> {
        let identity = Identity::of_meta(&opened.meta);
        let len = opened.meta.len();
        if len > MAX_FILE || !identity.settled(SystemTime::now()) {
            return None;
        }
        let bytes = read_exactly(&opened.file, len as usize).ok()??;
        let at_path = root.stat_nofollow(&opened.path)?;
        if Identity::of_stat(&at_path) != identity {
            return None;
        }
        let modified = crate::conditional::modified(&opened.meta);
        let etag = crate::conditional::etag(&opened.meta, "");
        let content_type = opts.content_type(&opened.path);
        // The same test and the same function as `files::respond`, so the same bytes.
        let gzippable = opts.compress
            && len > compress::MIN_SIZE
            && len <= crate::files::WHOLE_READ_LIMIT
            && compress::compressible(&content_type);
        let gzip = (gzippable && want_gzip)
            .then(|| compress::gzip(&bytes))
            .flatten()
            .map(|gz| Gzipped {
                content_length: HeaderValue::from(gz.len()),
                bytes: Bytes::from(gz),
                weak_etag: HeaderValue::from_str(&format!("W/{etag}")).ok(),
            });
        let entry = Arc::new(CachedFile {
            identity,
            bytes: Bytes::from(bytes),
            etag_value: HeaderValue::from_str(&etag).ok(),
            etag,
            modified,
            last_modified: modified
                .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
            content_type,
            content_length: HeaderValue::from(len),
            gzip,
            gzip_missing: gzippable && !want_gzip,
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = entries.files.remove(opened.path.as_os_str()) {
            entries.bytes -= old.size();
        }
        while entries.bytes + entry.size() > BUDGET {
            let Some(victim) = entries.files.keys().next().cloned() else {
                break;
            };
            if let Some(old) = entries.files.remove(&victim) {
                entries.bytes -= old.size();
            }
        }
        entries.bytes += entry.size();
        entries
            .files
            .insert(opened.path.clone().into_os_string(), entry.clone());
        Some(entry)
    }
}

/// `len` bytes from the start of `file`; `None` if it has fewer now (it changed meanwhile).
fn read_exactly(file: &File, len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut bytes[filled..], filled as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settled_timestamps_count() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut id = Identity {
            dev: 1,
            ino: 2,
            size: 3,
            mode: 0o100644,
            mtime: (1_000_000 - 10, 0),
            ctime: (1_000_000 - 10, 0),
        };
        assert!(id.settled(now));
        id.ctime = (1_000_000 - 1, 999);
        assert!(!id.settled(now));
        id.ctime = (1_000_000 - 10, 0);
        id.mtime = (1_000_000, 0);
        assert!(!id.settled(now));
    }
}
