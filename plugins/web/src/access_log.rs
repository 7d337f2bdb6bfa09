//! The access log, in the combined format exactly as nginx writes it:
//!
//! ```text
//! $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//! ```
//!
//! with nginx's escaping (`"`, `\` and bytes outside printable ASCII as `\xHH`) and `-` for an
//! absent value, so goaccess and awstats read it unchanged. Times are UTC (`+0000`): the
//! process has no safe way to learn the local offset once threads run.
//!
//! Lines go to a buffer that a task flushes every second (and that is flushed when it fills);
//! [`AccessLog::reopen`] opens the path anew after logrotate moved the file (SIGUSR1).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use time::OffsetDateTime;

const BUFFER: usize = 64 * 1024;

/// One open access log.
#[derive(Debug)]
pub struct AccessLog {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
}

fn open(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(BUFFER, file))
}

impl AccessLog {
    pub fn open(path: &Path) -> io::Result<AccessLog> {
        Ok(AccessLog {
            path: path.to_path_buf(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Appends one line (without its newline) to the buffer.
    pub fn write(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file
            .write_all(line.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
        {
            tracing::warn!("access log {}: {e}", self.path.display());
        }
    }

    pub fn flush(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.flush() {
            tracing::warn!("access log {}: {e}", self.path.display());
        }
    }

    /// Flushes the old file and continues in a new one at the same path.
    pub fn reopen(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.flush();
        match open(&self.path) {
            Ok(new) => *file = new,
            Err(e) => tracing::warn!("access log {}: cannot reopen: {e}", self.path.display()),
        }
    }
}

/// What a log line says about a request, captured when it arrives.
#[derive(Debug, Clone)]
pub struct Entry {
    pub remote_addr: String,
    /// The request line as sent (also what hyper refused to parse, see `server::RequestStart`).
    pub request: Vec<u8>,
    /// Header values as sent: bytes outside ASCII are logged as `\xHH`, never replaced.
    pub referer: Option<Vec<u8>>,
    pub user_agent: Option<Vec<u8>>,
}

/// Appends `s` with nginx's default escaping of log variables.
fn escaped(out: &mut String, s: Option<&[u8]>) {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        out.push('-');
        return;
    };
    for &b in s {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `20/Nov/2026:23:21:47 +0000`.
pub fn time_local(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Entry {
    /// The finished line for a response of `status` that sent `bytes` body bytes.
    pub fn line(&self, status: u16, bytes: u64, at: SystemTime) -> String {
        let mut out = String::with_capacity(160);
        out.push_str(&self.remote_addr);
        out.push_str(" - - [");
        out.push_str(&time_local(at));
        out.push_str("] \"");
        escaped(&mut out, Some(&self.request));
        out.push_str(&format!("\" {status} {bytes} \""));
        escaped(&mut out, self.referer.as_deref());
        out.push_str("\" \"");
        escaped(&mut out, self.user_agent.as_deref());
        out.push('"');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_nginx_combined() {
        let entry = Entry {
            remote_addr: "127.0.0.1".into(),
            request: b"GET /a?b=\"c\" HTTP/1.1".to_vec(),
            referer: None,
            // A Latin-1 byte (not UTF-8) is logged as itself, not as a replacement character.
            user_agent: Some(b"curl/8 \\ \xc3\xa9 \xff".to_vec()),
        };
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_681_707);
        assert_eq!(
            entry.line(200, 12, at),
            "127.0.0.1 - - [20/Nov/2025:23:35:07 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\x5C \\xC3\\xA9 \\xFF\""
        );
    }

    #[test]
    fn reopen_continues_at_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).expect("open");
        log.write("one");
        log.flush();
        std::fs::rename(&path, dir.path().join("access.log.1")).expect("rename");
        log.write("two");
        log.reopen();
        log.write("three");
        log.flush();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("access.log.1")).expect("old"),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("new"), "three\n");
    }
}
