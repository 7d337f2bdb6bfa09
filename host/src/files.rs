//! Reading the small files that options name (taps, certificates, password and aliases files).

use std::io::{self, Read};
use std::path::Path;

/// Taps, PEM files and password lists are small; a file larger than this is not one of them.
pub const MAX_SMALL_FILE: u64 = 16 * 1024 * 1024;

/// Reads a whole file of at most `limit` bytes. A larger one is an `InvalidData` error saying
/// so, found without reading past the limit: a device or a FIFO named by mistake (`/dev/zero`)
/// reports no size and may never end, so the size the file reports is not enough.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is larger than {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read_limited`] to [`MAX_SMALL_FILE`].
pub fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    read_limited(path, MAX_SMALL_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_stops_at_the_limit() {
        let e = read_limited(Path::new("/dev/zero"), 1024).expect_err("endless");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 1024]).expect("write");
        assert_eq!(read_limited(&path, 1024).expect("at the limit").len(), 1024);
        assert!(read_limited(&path, 1023).is_err());
    }
}
