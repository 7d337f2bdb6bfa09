//! The HTML listing of a directory that has no index file: directories first, then files,
//! each sorted by name, with sizes and modification times; dotfiles are not listed. Every name
//! is escaped for HTML and percent-encoded in its link.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, SFlag};
use percent_encoding::{percent_encode, AsciiSet, CONTROLS};

use crate::resolve::UrlPath;

/// Characters escaped in a link to one path segment (RFC 3986 pchar, minus a few that confuse
/// HTML attributes or relative references).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Escapes text for HTML element content and quoted attributes. Five replacements do not
/// warrant a crate.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    out
}

/// Appends `s` to `out`, escaped as [`escape_html`] does, copying the runs between special
/// characters whole.
fn push_escaped(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let replacement = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        out.push_str(replacement);
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

/// One listed name: where it lies in the names buffer, and what its stat said.
struct Entry {
    /// `names[start..end]` is the name; `names[end]` its NUL.
    start: usize,
    end: usize,
    /// The sort key: directories first, then the name's first eight bytes (big-endian, so
    /// integer order is byte order); names only compare whole when their keys tie.
    key: (bool, u64),
    is_dir: bool,
    size: u64,
    /// Seconds since the epoch; `None` when the entry could not be stat'ed.
    modified: Option<i64>,
}

/// The latest second an IMF-fixdate can show (the end of year 9999). An mtime outside
/// `0..=LAST_HTTP_DATE` (a file dated before 1970, say) leaves its column empty.
const LAST_HTTP_DATE: i64 = 253_402_300_799;

/// Renders the listing of the directory open as `dir`, shown as the URL path `url`: the
/// bytes of a UTF-8 HTML page.
///
/// The names are read from the descriptor the request resolved (not looked up again by path),
/// and each is stat'ed relative to it with `fstatat`, so the kernel walks one component per
/// entry instead of the whole path. The names share one buffer; the page is written straight
/// into the response's bytes.
/// `path` is where `dir` is (canonical), under the canonical `root`: a symlink that leads out
/// of the root is not listed, as following it is 404 (its target's size and time stay unsaid).
pub fn render(dir: File, path: &Path, root: &Path, url: &UrlPath) -> io::Result<Vec<u8>> {
    let mut dir = Dir::from_fd(OwnedFd::from(dir))?;
    let mut names: Vec<u8> = Vec::with_capacity(4096);
    let mut entries: Vec<Entry> = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes_with_nul();
        if name.starts_with(b".") {
            continue;
        }
        // d_type says symlink, or nothing (some file systems): then ask where it leads.
        if matches!(entry.file_type(), Some(Type::Symlink) | None) {
            let target = path.join(OsStr::from_bytes(entry.file_name().to_bytes()));
            if target.is_symlink()
                && !target
                    .canonicalize()
                    .is_ok_and(|real| real.starts_with(root))
            {
                continue;
            }
        }
        let start = names.len();
        names.extend_from_slice(name);
        let mut prefix = [0u8; 8];
        let head = &name[..name.len() - 1];
        let n = head.len().min(8);
        prefix[..n].copy_from_slice(&head[..n]);
        entries.push(Entry {
            start,
            end: names.len() - 1,
            key: (true, u64::from_be_bytes(prefix)),
            is_dir: false,
            size: 0,
            modified: None,
        });
    }
    for entry in &mut entries {
        // Follow symlinks for type and size, as a browser user expects (those that dangle or
        // lead out of the root were left out above).
        let Ok(name) = CStr::from_bytes_with_nul(&names[entry.start..=entry.end]) else {
            continue;
        };
        if let Ok(st) = fstatat(&dir, name, AtFlags::empty()) {
            entry.is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
            entry.key.0 = !entry.is_dir;
            entry.size = u64::try_from(st.st_size).unwrap_or(0);
            entry.modified = Some(st.st_mtime);
        }
    }
    let name = |e: &Entry| &names[e.start..e.end];
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key).then_with(|| name(a).cmp(name(b))));

    let title = escape_html(&format!("Index of {}", url.display()));
    let mut html: Vec<u8> = Vec::with_capacity(512 + entries.len() * 128);
    html.extend_from_slice(b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
    html.extend_from_slice(title.as_bytes());
    html.extend_from_slice(
        b"</title>\n<style>body{font-family:sans-serif}td{padding:0 1em}\
          td.size{text-align:right}</style>\n</head><body>\n<h1>",
    );
    html.extend_from_slice(title.as_bytes());
    html.extend_from_slice(
        b"</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Last modified</th></tr>\n",
    );
    if !url.segments.is_empty() {
        html.extend_from_slice(b"<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    let mut dates = DateMemo::default();
    for entry in &entries {
        let bytes = name(entry);
        let slash: &[u8] = if entry.is_dir { b"/" } else { b"" };
        html.extend_from_slice(b"<tr><td><a href=\"");
        // The link carries the name's own bytes, so a name that is not UTF-8 still links.
        for chunk in percent_encode(bytes, SEGMENT) {
            html.extend_from_slice(chunk.as_bytes());
        }
        html.extend_from_slice(slash);
        html.extend_from_slice(b"\">");
        push_name(&mut html, bytes);
        html.extend_from_slice(slash);
        html.extend_from_slice(b"</a></td><td class=\"size\">");
        if entry.is_dir {
            html.push(b'-');
        } else {
            push_decimal(&mut html, entry.size);
        }
        html.extend_from_slice(b"</td><td>");
        if let Some(secs) = entry.modified.filter(|s| (0..=LAST_HTTP_DATE).contains(s)) {
            dates.push(&mut html, secs);
        }
        html.extend_from_slice(b"</td></tr>\n");
    }
    html.extend_from_slice(b"</table>\n</body></html>\n");
    Ok(html)
}

/// Appends a file name for display: escaped for HTML; a name that is not UTF-8 is shown with
/// U+FFFD in place of the bad bytes, so the page stays UTF-8. An ASCII name (the usual case)
/// is copied in runs without a UTF-8 check.
fn push_name(out: &mut Vec<u8>, name: &[u8]) {
    if !name.is_ascii() {
        let mut text = String::new();
        push_escaped(&mut text, &String::from_utf8_lossy(name));
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut run = 0;
    for (i, &b) in name.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&name[run..i]);
        out.extend_from_slice(replacement);
        run = i + 1;
    }
    out.extend_from_slice(&name[run..]);
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` (below 100) as two digits.
fn push_two(out: &mut Vec<u8>, n: i64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// Formats modification times as IMF-fixdates (`Sun, 06 Nov 1994 08:49:37 GMT`), the format
/// of the `Date` header, remembering the last day's `Sun, 06 Nov 1994 ` since the entries of
/// a directory often share a day. Written here because `httpdate` formats one date at a time
/// through `SystemTime` and panics outside 1970..=9999.
#[derive(Default)]
struct DateMemo {
    day: Option<i64>,
    prefix: Vec<u8>,
}

impl DateMemo {
    /// `secs` must lie in `0..=LAST_HTTP_DATE`.
    fn push(&mut self, out: &mut Vec<u8>, secs: i64) {
        let days = secs.div_euclid(86_400);
        let time = secs.rem_euclid(86_400);
        if self.day != Some(days) {
            self.day = Some(days);
            self.prefix.clear();
            day_prefix(&mut self.prefix, days);
        }
        out.extend_from_slice(&self.prefix);
        push_two(out, time / 3600);
        out.push(b':');
        push_two(out, time / 60 % 60);
        out.push(b':');
        push_two(out, time % 60);
        out.extend_from_slice(b" GMT");
    }
}

/// Appends `Sun, 06 Nov 1994 ` for the day `days` after 1970-01-01 (the proleptic Gregorian
/// calendar, by Howard Hinnant's `civil_from_days`).
fn day_prefix(out: &mut Vec<u8>, days: i64) {
    const WEEKDAYS: [&[u8]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7);
    out.extend_from_slice(WEEKDAYS.get(weekday as usize).copied().unwrap_or(b"Sun"));
    out.extend_from_slice(b", ");
    push_two(out, day);
    out.push(b' ');
    out.extend_from_slice(MONTHS.get(month as usize - 1).copied().unwrap_or(b"Jan"));
    out.push(b' ');
    push_two(out, year / 100);
    push_two(out, year % 100);
    out.push(b' ');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn names_are_escaped_sorted_and_dotfiles_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("b<script>.txt"), "12345").expect("write");
        fs::write(dir.path().join("a & b"), "").expect("write");
        fs::write(dir.path().join(".hidden"), "").expect("write");
        fs::create_dir(dir.path().join("zdir")).expect("mkdir");
        // Links: within the root listed (as what they lead to), out of it not at all.
        std::os::unix::fs::symlink("zdir", dir.path().join("inside")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("outside")).expect("link");
        std::os::unix::fs::symlink("nowhere", dir.path().join("dangling")).expect("link");
        let url = UrlPath::parse("/x/").expect("url");
        let root = dir.path().canonicalize().expect("canonical");
        let html =
            render(File::open(dir.path()).expect("open"), &root, &root, &url).expect("render");
        let html = String::from_utf8(html).expect("UTF-8");
        assert!(html.contains("<a href=\"b%3Cscript%3E.txt\">b&lt;script&gt;.txt</a></td><td class=\"size\">5</td>"), "{html}");
        assert!(
            html.contains("href=\"a%20%26%20b\">a &amp; b</a>"),
            "{html}"
        );
        assert!(!html.contains("hidden"));
        let zdir = html.find("zdir/").expect("dir listed");
        let a = html.find("a &amp; b").expect("file listed");
        assert!(zdir < a, "directories come first");
        assert!(html.contains("href=\"../\""));
        assert!(html.contains("href=\"inside/\""), "{html}");
        assert!(
            !html.contains("outside") && !html.contains("dangling"),
            "{html}"
        );
    }

    #[test]
    fn dates_match_httpdate_from_1970_to_9999() {
        let mut memo = DateMemo::default();
        let mut secs = 0i64;
        while secs <= LAST_HTTP_DATE {
            for t in [secs, secs + 86_399, (secs + 1_234_567).min(LAST_HTTP_DATE)] {
                let mut ours = Vec::new();
                memo.push(&mut ours, t);
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.unsigned_abs());
                assert_eq!(
                    String::from_utf8(ours).expect("ASCII"),
                    httpdate::fmt_http_date(when),
                    "{t}"
                );
            }
            secs += 86_400 * 97 + 3_601;
        }
        let mut last = Vec::new();
        DateMemo::default().push(&mut last, LAST_HTTP_DATE);
        assert_eq!(last, b"Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn numbers_and_odd_names() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        push_name(&mut out, b"caf\xc3\xa9 <\xff>");
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "café &lt;\u{fffd}&gt;"
        );
    }

    #[test]
    fn names_not_utf8_and_dates_before_1970_are_listed() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"odd\xff.txt"));
        fs::write(&odd, "x").expect("write");
        let old = fs::File::options().write(true).open(&odd).expect("open");
        old.set_modified(std::time::UNIX_EPOCH - std::time::Duration::from_secs(86_400 * 400))
            .expect("set mtime before 1970");
        fs::write(dir.path().join("ok.txt"), "").expect("write");
        let url = UrlPath::parse("/").expect("url");
        let root = dir.path().canonicalize().expect("canonical");
        let html =
            render(File::open(dir.path()).expect("open"), &root, &root, &url).expect("render");
        let html = String::from_utf8(html).expect("UTF-8");
        assert!(
            html.contains(
                "<a href=\"odd%FF.txt\">odd\u{fffd}.txt</a></td><td class=\"size\">1</td><td></td>"
            ),
            "{html}"
        );
        assert!(html.contains(">ok.txt</a>"), "{html}");
        assert!(!html.contains("href=\"../\""), "no parent link at the root");
    }
}
