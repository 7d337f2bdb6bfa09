//! CGI/1.1 (RFC 3875): running a script for a request.
//!
//! The script is found by walking the request path below the CGI directory: the first segment
//! that names a regular file is the script, what follows is PATH_INFO. It runs in its own
//! process group with a clean environment (the meta-variables, a fixed PATH, never
//! HTTP_PROXY), its working directory its own. The request body is streamed to its stdin as it
//! arrives (so `Expect: 100-continue` is answered when the script is started), its stderr
//! goes to the log, its response head is parsed (`Status:`, `Location:`), and the rest of its
//! stdout is streamed to the client. A reaper task owns the child: it kills the whole process
//! group when the timeout passes (and any leftover members once the script exits) and always
//! waits for the child, so no zombie remains.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdout, Command};
use tokio_util::io::poll_read_buf;

use crate::resolve::{contain, Refusal};
use crate::server::{error_response, Body, ConnInfo, SERVER_NAME};

/// A script's response head may be at most this long.
const MAX_HEAD: usize = 64 * 1024;
/// Where scripts look for programs: nothing from the server's own environment leaks in.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The CGI options shared by every CGI prefix.
#[derive(Debug)]
pub struct CgiOptions {
    /// Interpreters by lowercase extension (`--processor .pl=/usr/bin/perl`).
    pub processors: HashMap<String, PathBuf>,
    pub timeout: Duration,
    pub max_body: u64,
}

/// What running a script came to.
pub enum Outcome {
    Response(Response<Body>),
    /// `Location: /local/path` alone: the server answers with that resource instead (RFC 3875
    /// §6.2.2), as a GET.
    LocalRedirect(String),
}

/// One CGI request: where the script directory is mounted and what the request was.
pub struct Request<'a> {
    pub parts: &'a Parts,
    pub body: Incoming,
    /// The canonical CGI directory.
    pub dir: &'a Path,
    /// The URL prefix the directory is mounted at, and the decoded segments after it.
    pub prefix: &'a [Vec<u8>],
    pub rest: &'a [Vec<u8>],
    pub conn: &'a ConnInfo,
    pub document_root: &'a Path,
}

fn lossy(segments: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(s));
    }
    out
}

/// The script and the index in `rest` after it.
fn locate(dir: &Path, rest: &[Vec<u8>]) -> Result<(PathBuf, usize), StatusCode> {
    let mut path = dir.to_path_buf();
    for (i, segment) in rest.iter().enumerate() {
        if segment.starts_with(b".") {
            return Err(StatusCode::NOT_FOUND);
        }
        path.push(OsStr::from_bytes(segment));
        let real = contain(dir, &path).map_err(|r| match r {
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        })?;
        let meta = std::fs::metadata(&real).map_err(|_| StatusCode::NOT_FOUND)?;
        if meta.is_file() {
            return Ok((real, i));
        }
        if !meta.is_dir() {
            return Err(StatusCode::NOT_FOUND);
        }
    }
    // A directory is not a script.
    Err(if rest.is_empty() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::NOT_FOUND
    })
}

/// The meta-variables of RFC 3875 §4.1, and the common extras (REQUEST_URI, DOCUMENT_ROOT,
/// SCRIPT_FILENAME, HTTPS).
/// A request body that came without a length (chunked, or HTTP/2 without content-length),
/// read whole before the script starts: RFC 3875 gives a script its body's length in
/// CONTENT_LENGTH, and a body over the limit is refused (413) before anything runs. It waits
/// in an unnamed temporary file, as nginx buffers such bodies, not in memory.
struct Spooled {
    file: std::fs::File,
    len: u64,
}

async fn spool(body: &mut Incoming, max_body: u64) -> Result<Spooled, StatusCode> {
    let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(|e| {
        tracing::warn!("cgi: no temporary file for a request body: {e}");
        StatusCode::INTERNAL_SERVER_ERROR
    })?);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| StatusCode::BAD_REQUEST)?.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > max_body {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        file.write_all(&data).await.map_err(|e| {
            tracing::warn!("cgi: cannot keep a request body: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        })?;
    }
    let mut file = file.into_std().await;
    io::Seek::rewind(&mut file).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Spooled { file, len })
}

fn environment(
    req: &Request<'_>,
    script: &Path,
    script_end: usize,
    spooled: Option<u64>,
) -> Vec<(String, Vec<u8>)> {
    let parts = req.parts;
    let mut env: Vec<(String, Vec<u8>)> = Vec::with_capacity(32);
    let mut set = |k: &str, v: &[u8]| env.push((k.to_string(), v.to_vec()));
    set("GATEWAY_INTERFACE", b"CGI/1.1");
    set("SERVER_SOFTWARE", SERVER_NAME.as_bytes());
    set("SERVER_PROTOCOL", format!("{:?}", parts.version).as_bytes());
    set("REQUEST_METHOD", parts.method.as_str().as_bytes());
    set("PATH", PATH.as_bytes());
    let host = parts
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| crate::site::strip_port(h).to_string())
        })
        .or_else(|| req.conn.local.map(|a| a.ip().to_string()))
        .unwrap_or_default();
    set("SERVER_NAME", host.as_bytes());
    if let Some(local) = req.conn.local {
        set("SERVER_PORT", local.port().to_string().as_bytes());
    }
    if let Some(ip) = req.conn.peer.ip() {
        set("REMOTE_ADDR", ip.to_string().as_bytes());
        set("REMOTE_HOST", ip.to_string().as_bytes());
    }
    if let host::net::Peer::Tcp(addr) = req.conn.peer {
        set("REMOTE_PORT", addr.port().to_string().as_bytes());
    }
    if req.conn.tls {
        set("HTTPS", b"on");
        set("REQUEST_SCHEME", b"https");
    } else {
        set("REQUEST_SCHEME", b"http");
    }
    let mut script_segments: Vec<Vec<u8>> = req.prefix.to_vec();
    script_segments.extend_from_slice(&req.rest[..=script_end]);
    set("SCRIPT_NAME", lossy(&script_segments).as_bytes());
    set("SCRIPT_FILENAME", script.as_os_str().as_bytes());
    set("DOCUMENT_ROOT", req.document_root.as_os_str().as_bytes());
    let path_info = &req.rest[script_end + 1..];
    if !path_info.is_empty() {
        let info = lossy(path_info);
        set("PATH_INFO", info.as_bytes());
        let mut translated = req.document_root.as_os_str().as_bytes().to_vec();
        translated.extend_from_slice(info.as_bytes());
        set("PATH_TRANSLATED", &translated);
    }
    set("QUERY_STRING", parts.uri.query().unwrap_or("").as_bytes());
    let request_uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    set("REQUEST_URI", request_uri.as_bytes());
    if let Some(v) = parts.headers.get(CONTENT_TYPE) {
        set("CONTENT_TYPE", v.as_bytes());
    }
    if let Some(len) = spooled {
        set("CONTENT_LENGTH", len.to_string().as_bytes());
    } else if let Some(v) = parts.headers.get(CONTENT_LENGTH) {
        set("CONTENT_LENGTH", v.as_bytes());
    }
    // Request headers as HTTP_*; repeated ones joined with ", ". Never Proxy (httpoxy: it
    // would become HTTP_PROXY, which HTTP libraries read as their proxy), never credentials
    // (RFC 3875 §4.1.18), and only names of letters, digits and dashes: an underscore could
    // pose as a dash (nginx drops such names by default), other token characters make
    // variable names no shell can read.
    for name in parts.headers.keys() {
        let n = name.as_str();
        if matches!(
            n,
            "proxy" | "content-type" | "content-length" | "authorization" | "proxy-authorization"
        ) || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            continue;
        }
        let mut value = Vec::new();
        for (i, v) in parts.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(v.as_bytes());
        }
        let key = format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_"));
        set(&key, &value);
    }
    env
}

/// Runs the script the request names.
pub async fn run(req: Request<'_>, opts: &CgiOptions) -> Outcome {
    let fail = |status| Outcome::Response(error_response(status));
    let (script, script_end) = match locate(req.dir, req.rest) {
        Ok(found) => found,
        Err(status) => return fail(status),
    };
    let ext = script
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let mut command = match ext.and_then(|e| opts.processors.get(&e)) {
        Some(interpreter) => {
            let mut c = Command::new(interpreter);
            c.arg(&script);
            c
        }
        None => {
            let executable = std::fs::metadata(&script)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !executable {
                return fail(StatusCode::FORBIDDEN);
            }
            Command::new(&script)
        }
    };
    let mut req = req;
    let spooled = if req.parts.headers.contains_key(CONTENT_LENGTH)
        || hyper::body::Body::is_end_stream(&req.body)
    {
        None
    } else {
        match spool(&mut req.body, opts.max_body).await {
            Ok(spooled) => Some(spooled),
            Err(status) => return Outcome::Response(crate::site::closing(status)),
        }
    };
    command
        .env_clear()
        .envs(
            environment(&req, &script, script_end, spooled.as_ref().map(|s| s.len))
                .into_iter()
                .map(|(k, v)| (k, std::ffi::OsString::from_vec(v))),
        )
        .current_dir(script.parent().unwrap_or(req.dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so the timeout can kill whatever the script started.
        .process_group(0)
        // Should the runtime go away first (twistd exiting), the script goes too.
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!("cgi {}: cannot start: {e}", script.display());
            return fail(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let name: Arc<str> = lossy(&req.rest[..=script_end]).into();
    let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let (Some(stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR);
    };

    // stderr to the log, a line at a time.
    let err_name = name.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!("cgi {err_name}: {line}");
        }
    });

    // The reaper: waits for the script, kills its group at the timeout.
    let killed = Arc::new(AtomicBool::new(false));
    let reaper_killed = killed.clone();
    let timeout = opts.timeout;
    let reaper_name = name.clone();
    tokio::spawn(async move {
        let kill = || {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
        };
        // Should this task be dropped first (the runtime ending as twistd exits), the group
        // goes with it: kill_on_drop reaches only the script, not what it started.
        let mut on_drop = GroupKill(pgid);
        let status = tokio::select! {
            status = child.wait() => status,
            () = tokio::time::sleep(timeout) => {
                tracing::warn!("cgi {reaper_name}: still running after {timeout:?}; killed");
                reaper_killed.store(true, Ordering::SeqCst);
                kill();
                child.wait().await
            }
        };
        // Background children the script left behind would hold its stdout open (and the
        // response with it): they go too. The group outlives its leader while any member
        // remains, and Linux hands out no PID still in use as a group ID, so this reaches
        // only the script's own processes; with none left it finds no group.
        kill();
        on_drop.0 = None;
        match status {
            Ok(s) if !s.success() && !reaper_killed.load(Ordering::SeqCst) => {
                tracing::warn!("cgi {reaper_name}: exited with {s}")
            }
            Err(e) => tracing::warn!("cgi {reaper_name}: wait failed: {e}"),
            _ => {}
        }
    });

    // The request body, streamed to stdin; a body too large or malformed ends the request.
    let (body_error_tx, mut body_error) = tokio::sync::oneshot::channel::<StatusCode>();
    let max_body = opts.max_body;
    let mut body = req.body;
    tokio::spawn(async move {
        let mut stdin = stdin;
        if let Some(spooled) = spooled {
            // Read whole and checked already; a script that stops reading just gets less.
            let mut file = tokio::fs::File::from_std(spooled.file);
            let _ = tokio::io::copy(&mut file, &mut stdin).await;
            drop(body_error_tx);
            return;
        }
        let mut total = 0u64;
        let mut open = true;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(_) => {
                    let _ = body_error_tx.send(StatusCode::BAD_REQUEST);
                    return;
                }
            };
            total += data.len() as u64;
            if total > max_body {
                let _ = body_error_tx.send(StatusCode::PAYLOAD_TOO_LARGE);
                return;
            }
            // A script that stops reading still gets the rest of the body read from the
            // client (discarded), so the connection stays usable.
            if open && stdin.write_all(&data).await.is_err() {
                open = false;
            }
        }
        drop(stdin);
    });

    let kill_now = || {
        if let Some(pgid) = pgid {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    };
    let mut buf = BytesMut::with_capacity(8192);
    let mut body_done = false;
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            kill_now();
            return fail(StatusCode::BAD_GATEWAY);
        }
        let read = tokio::select! {
            // A refusal of the body first: the script, whose input just ended, may be
            // answering already, and a truncated body must not get its 200.
            biased;
            status = &mut body_error, if !body_done => match status {
                Ok(status) => {
                    kill_now();
                    return Outcome::Response(crate::site::closing(status));
                }
                // The body was read to its end: only the script's answer is awaited now.
                Err(_) => {
                    body_done = true;
                    continue;
                }
            },
            read = stdout.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                return fail(if killed.load(Ordering::SeqCst) {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    tracing::warn!("cgi {name}: no complete response head");
                    StatusCode::BAD_GATEWAY
                });
            }
            Ok(_) => {}
        }
    };
    let (head_len, sep_len) = head_end;
    let head = buf.split_to(head_len);
    buf.advance(sep_len);
    let parsed = match parse_head(&head) {
        Ok(parsed) => parsed,
        Err(why) => {
            tracing::warn!("cgi {name}: bad response head: {why}");
            kill_now();
            return fail(StatusCode::BAD_GATEWAY);
        }
    };
    if let Some(location) = &parsed.local_redirect {
        kill_now();
        return Outcome::LocalRedirect(location.clone());
    }
    let mut response = Response::new(
        CgiBody {
            first: (!buf.is_empty()).then(|| buf.split().freeze()),
            stdout,
            buf,
            killed,
        }
        .boxed(),
    );
    *response.status_mut() = parsed.status;
    *response.headers_mut() = parsed.headers;
    Outcome::Response(response)
}

/// (length of the head, length of the blank line after it).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i + 1, 1));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i + 2, 2));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

struct Head {
    status: StatusCode,
    headers: hyper::HeaderMap,
    local_redirect: Option<String>,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut headers = hyper::HeaderMap::new();
    let mut status = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("a line without a colon")?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"status") {
            let code = value.get(..3).ok_or("a short Status")?;
            let code = std::str::from_utf8(code)
                .ok()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .ok_or("a bad Status")?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "a bad header name")?;
        let value = HeaderValue::from_bytes(value).map_err(|_| "a bad header value")?;
        if matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "keep-alive" | "upgrade" | "trailer"
        ) {
            continue;
        }
        headers.append(name, value);
    }
    // hyper frames the answer by it: one, and a number, or the script's answer is no answer.
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    if !lengths.is_empty() {
        let valid = lengths.len() == 1
            && lengths[0]
                .to_str()
                .is_ok_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
        if !valid {
            return Err("a bad or repeated Content-Length".into());
        }
    }
    let location = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(location) = location {
        if location.starts_with('/')
            && !location.starts_with("//")
            && status.is_none()
            && headers.len() == 1
        {
            return Ok(Head {
                status: StatusCode::OK,
                headers,
                local_redirect: Some(location),
            });
        }
        return Ok(Head {
            status: status.unwrap_or(StatusCode::FOUND),
            headers,
            local_redirect: None,
        });
    }
    if status.is_none() && !headers.contains_key(CONTENT_TYPE) {
        return Err("neither Content-Type, Location nor Status".into());
    }
    Ok(Head {
        status: status.unwrap_or(StatusCode::OK),
        headers,
        local_redirect: None,
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Kills a script's process group when dropped, unless emptied first.
struct GroupKill(Option<nix::unistd::Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The rest of the script's stdout. If the script was killed at the timeout, the body ends
/// with an error so the client sees a cut response, not a complete one.
struct CgiBody {
    first: Option<Bytes>,
    stdout: ChildStdout,
    buf: BytesMut,
    killed: Arc<AtomicBool>,
}

impl hyper::body::Body for CgiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.buf.capacity() < 16 * 1024 {
            this.buf.reserve(16 * 1024);
        }
        match ready!(poll_read_buf(Pin::new(&mut this.stdout), cx, &mut this.buf)) {
            Err(e) => Poll::Ready(Some(Err(e))),
            Ok(0) if this.killed.load(Ordering::SeqCst) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the CGI script was killed at its timeout",
            )))),
            Ok(0) => Poll::Ready(None),
            Ok(_) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(find_head_end(b"A: b\n\nbody"), Some((5, 1)));
        assert_eq!(find_head_end(b"A: b\r\n\r\nbody"), Some((6, 2)));
        assert_eq!(find_head_end(b"A: b\r\n"), None);
        let h = parse_head(b"Status: 404 Not Found\nContent-Type: text/plain\n").expect("ok");
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        let h = parse_head(b"Location: /other?x=1\n").expect("ok");
        assert_eq!(h.local_redirect.as_deref(), Some("/other?x=1"));
        let h = parse_head(b"Location: http://example.org/\n").expect("ok");
        assert_eq!((h.status, h.local_redirect), (StatusCode::FOUND, None));
        assert!(parse_head(b"garbage\n").is_err());
        assert!(parse_head(b"Content-Length: 3\nContent-Length: 4\n").is_err());
        assert!(parse_head(b"Content-Length: abc\n").is_err());
        assert!(parse_head(b"Content-Length: 3\nContent-Type: text/plain\n").is_ok());
        assert!(parse_head(b"Status: abc\n").is_err());
        assert!(parse_head(b"X-Only: 1\n").is_err());
    }
}
