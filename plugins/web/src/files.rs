//! A file's response: Content-Type, validators (ETag, Last-Modified), preconditions, ranges,
//! content codings, and the body.
//!
//! Small files are read with one blocking read on the worker thread: from the page cache that
//! costs less than a hop to tokio's blocking pool (measured in the core issue's notes), and a
//! request body that small is sent in one write anyway. On plain HTTP/1.1 connections, bodies
//! past [`ZERO_COPY_MIN`] go out with sendfile(2) ([`crate::zerocopy`]); over TLS and HTTP/2
//! larger files are streamed in chunks so memory stays flat however large the file is.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY,
};
use hyper::{Method, Response, StatusCode};
use tokio_util::io::poll_read_buf;

use crate::cache::CachedFile;
use crate::compress;
use crate::conditional::{self, Outcome};
use crate::ranges::{self, Ranges};
use crate::resolve::{contain, Opened, RootDir};
use crate::server::{error_response, Body};
use crate::zerocopy::{Queue, SendfileBody};

/// Files up to this size are read whole; larger ones are streamed.
pub const WHOLE_READ_LIMIT: u64 = 256 * 1024;
/// Bodies larger than this go out with sendfile(2) on plain HTTP/1.1 connections; smaller ones
/// are read (the head and the bytes then leave in one writev).
pub const ZERO_COPY_MIN: u64 = 16 * 1024;
/// The chunk size of a streamed file.
const CHUNK: usize = 64 * 1024;
/// A multipart/byteranges answer is built in memory; past this many selected bytes the whole
/// file is sent instead (a client wanting that much can ask for the ranges one by one).
const MULTIPART_LIMIT: u64 = 4 * 1024 * 1024;

/// How files are served: the part of the site's options that concern one file.
#[derive(Debug)]
pub struct FileOptions {
    pub default_type: HeaderValue,
    /// `--mime` overrides, by lowercase extension without the dot.
    pub mime: HashMap<String, HeaderValue>,
    /// Gzip compressible responses on the fly (not `--no-compress`).
    pub compress: bool,
}

impl FileOptions {
    /// The Content-Type for `path`: an override, else from its extension, else the default.
    pub fn content_type(&self, path: &Path) -> HeaderValue {
        if !self.mime.is_empty() {
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                if let Some(v) = self.mime.get(&ext.to_ascii_lowercase()) {
                    return v.clone();
                }
            }
        }
        mime_guess::from_path(path)
            .first_raw()
            .map(HeaderValue::from_static)
            .unwrap_or_else(|| self.default_type.clone())
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A precompressed sibling the client accepts: (path, metadata, coding).
fn sibling(
    root: &Path,
    path: &Path,
    headers: &HeaderMap,
) -> Option<(PathBuf, Metadata, &'static str)> {
    for (coding, ext) in [("br", "br"), ("gzip", "gz")] {
        if !compress::accepts(headers, coding) {
            continue;
        }
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(ext);
        // One stat for the common case of no sibling; one that exists may be a symlink
        // leaving the root like any other file, so it is contained before use.
        match std::fs::metadata(&name) {
            Ok(meta) if meta.is_file() => {
                if let Ok(real) = contain(root, Path::new(&name)) {
                    return Some((real, meta, coding));
                }
            }
            _ => {}
        }
    }
    None
}

/// Serves the regular file `opened` (opened beneath `root`). With `zero_copy` (a plain
/// HTTP/1.1 connection), a body of more than [`ZERO_COPY_MIN`] bytes of the file as it is
/// (the whole file, a precompressed sibling, or one range) is sent with sendfile(2).
pub async fn respond(
    root: &Path,
    opened: Opened,
    method: &Method,
    headers: &HeaderMap,
    opts: &FileOptions,
    zero_copy: Option<&Queue>,
) -> Response<Body> {
    let Opened { path, file, meta } = opened;
    let (path, meta) = (path.as_path(), &meta);
    let head = method == Method::HEAD;
    let content_type = opts.content_type(path);
    // Only look for siblings when the client sends Accept-Encoding at all: most benchmarks
    // and API clients do not, and they pay no stat for it.
    let precompressed = if headers.contains_key(hyper::header::ACCEPT_ENCODING) {
        sibling(root, path, headers)
    } else {
        None
    };
    let (path, meta, coding, file) = match &precompressed {
        // The sibling is opened by its (contained) canonical path below.
        Some((p, m, c)) => (p.as_path(), m, Some(*c), None),
        None => (path, meta, None, Some(file)),
    };
    let len = meta.len();
    let modified = conditional::modified(meta);
    let etag = conditional::etag(
        meta,
        coding.map_or("", |c| if c == "br" { "-br" } else { "-gz" }),
    );

    let mut response = Response::new(empty());
    {
        let h = response.headers_mut();
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(ETAG, v);
        }
        if let Some(modified) = modified {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
                h.insert(LAST_MODIFIED, v);
            }
        }
    }
    let mut response = match preconditions(headers, &etag, modified, response) {
        ControlFlow::Continue(response) => response,
        ControlFlow::Break(answer) => return answer,
    };
    {
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, content_type.clone());
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(coding) = coding {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
    }

    let ranges = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if conditional::if_range_holds(headers, &etag, modified) => {
            ranges::parse(value, len)
        }
        _ => Ranges::Whole,
    };
    match ranges {
        Ranges::Whole => {}
        Ranges::Unsatisfiable => {
            let mut r = error_response(StatusCode::RANGE_NOT_SATISFIABLE);
            r.headers_mut().insert(
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .expect("digits are a header value"),
            );
            return r;
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let part = parts[0].clone();
            let body = if head {
                empty()
            } else {
                match range_body(file, path, len, part.clone(), zero_copy).await {
                    Ok(body) => body,
                    Err(e) => return io_error_response(&e),
                }
            };
            *response.body_mut() = body;
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            h.insert(CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
            h.insert(
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{len}", part.start, part.end - 1))
                    .expect("digits are a header value"),
            );
            return response;
        }
        Ranges::Parts(parts) => {
            let selected: u64 = parts.iter().map(|r| r.end - r.start).sum();
            if selected <= MULTIPART_LIMIT {
                return match multipart(path, len, &parts, &content_type, head) {
                    Ok((body_len, boundary, body)) => {
                        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                        *response.body_mut() = body;
                        let h = response.headers_mut();
                        h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
                        h.insert(
                            CONTENT_TYPE,
                            HeaderValue::from_str(&format!(
                                "multipart/byteranges; boundary={boundary}"
                            ))
                            .expect("the boundary is a header value"),
                        );
                        response
                    }
                    Err(e) => io_error_response(&e),
                };
            }
        }
    }

    // The whole file, gzipped on the fly when that is worth it.
    let gzip_on_the_fly = coding.is_none()
        && opts.compress
        && len > compress::MIN_SIZE
        && len <= WHOLE_READ_LIMIT
        && compress::compressible(&content_type)
        && compress::accepts(headers, "gzip");
    if head && !gzip_on_the_fly {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
        return response;
    }
    let body = if let (Some(queue), false) = (zero_copy, gzip_on_the_fly || len <= ZERO_COPY_MIN) {
        let file = match file {
            Some(file) => Ok(file),
            None => std::fs::File::open(path),
        };
        match file {
            Ok(file) => SendfileBody::new(queue, file, 0, len).boxed(),
            Err(e) => return io_error_response(&e),
        }
    } else if len <= WHOLE_READ_LIMIT {
        match read_whole(file, path, len) {
            Ok(bytes) if bytes.len() as u64 == len => {
                if gzip_on_the_fly {
                    if let Some(gz) = compress::gzip(&bytes) {
                        let h = response.headers_mut();
                        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                        h.insert(CONTENT_LENGTH, HeaderValue::from(gz.len()));
                        h.remove(ACCEPT_RANGES);
                        // The gzipped bytes are not the file's: the validator becomes weak,
                        // as nginx makes it.
                        if let Ok(v) = HeaderValue::from_str(&format!("W/{etag}")) {
                            h.insert(ETAG, v);
                        }
                        *response.body_mut() = if head { empty() } else { full(gz) };
                        return response;
                    }
                }
                full(bytes)
            }
            // The file changed between stat and read; the client retries and sees the new one.
            Ok(_) => return error_response(StatusCode::SERVICE_UNAVAILABLE),
            Err(e) => return io_error_response(&e),
        }
    } else {
        let file = match file {
            Some(file) => Ok(tokio::fs::File::from_std(file)),
            None => tokio::fs::File::open(path).await,
        };
        match file {
            Ok(file) => FileBody::new(file, len).boxed(),
            Err(e) => return io_error_response(&e),
        }
    };
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    *response.body_mut() = if head { empty() } else { body };
    response
}

/// Whether a request can be answered from a cached file: no Range (ranges take the normal
/// path). The method is GET or HEAD by then.
pub fn cacheable_request(headers: &HeaderMap) -> bool {
    !headers.contains_key(RANGE)
}

/// Whether the normal path would find no precompressed sibling of the cached file at
/// `candidate` for this request: for each sibling coding the client accepts, in the order
/// [`sibling`] tries them, nothing at all is named `candidate.br` / `candidate.gz` (one
/// `fstatat` each; none without Accept-Encoding). `false` sends the request down the normal path.
pub fn no_sibling(root: &RootDir, candidate: &Path, headers: &HeaderMap) -> bool {
    if !headers.contains_key(ACCEPT_ENCODING) {
        return true;
    }
    [("br", ".br"), ("gzip", ".gz")]
        .into_iter()
        .all(|(coding, suffix)| {
            !compress::accepts(headers, coding) || root.absent(candidate, suffix)
        })
}

/// Whether the request accepts gzip (without Accept-Encoding, quickly no).
pub fn wants_gzip(headers: &HeaderMap) -> bool {
    headers.contains_key(ACCEPT_ENCODING) && compress::accepts(headers, "gzip")
}

/// A cached file's response to a [`cacheable_request`] for which [`no_sibling`] holds: the
/// same status, headers and body [`respond`] gives, with no file system call.
pub fn respond_cached(cached: &CachedFile, method: &Method, headers: &HeaderMap) -> Response<Body> {
    let mut response = Response::new(empty());
    // Room for these, Server, Date and a few --add-header without growing the map.
    *response.headers_mut() = HeaderMap::with_capacity(16);
    {
        let h = response.headers_mut();
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Some(v) = &cached.etag_value {
            h.insert(ETAG, v.clone());
        }
        if let Some(v) = &cached.last_modified {
            h.insert(LAST_MODIFIED, v.clone());
        }
    }
    let mut response = match preconditions(headers, &cached.etag, cached.modified, response) {
        ControlFlow::Continue(response) => response,
        ControlFlow::Break(answer) => return answer,
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, cached.content_type.clone());
    // As `respond` gzips on the fly (the entry holds a gzip only when it would).
    let gzipped = cached.gzip.as_ref().filter(|_| wants_gzip(headers));
    let body = match gzipped {
        Some(gz) => {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            h.insert(CONTENT_LENGTH, gz.content_length.clone());
            if let Some(v) = &gz.weak_etag {
                h.insert(ETAG, v.clone());
            }
            &gz.bytes
        }
        None => {
            h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(CONTENT_LENGTH, cached.content_length.clone());
            &cached.bytes
        }
    };
    if method != Method::HEAD {
        *response.body_mut() = full(body.clone());
    }
    response
}

/// A small file's bytes, `len` of them, read from the descriptor already open (one read, where
/// `fs::read` would stat again and read once more to see the end), or by path for a
/// precompressed sibling. A file that shrank since its stat gives a short count: the caller
/// answers 503 rather than send fewer bytes than announced.
fn read_whole(file: Option<std::fs::File>, path: &Path, len: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = match file {
        Some(file) => file,
        None => std::fs::File::open(path)?,
    };
    let mut bytes = vec![0; len as usize];
    let mut filled = 0;
    while filled < bytes.len() {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// The bytes of one range of the file already open (or of `path`, a precompressed sibling):
/// sendfile for a large range on a plain connection, one positioned read for a small range, a
/// stream otherwise.
async fn range_body(
    file: Option<std::fs::File>,
    path: &Path,
    len: u64,
    part: std::ops::Range<u64>,
    zero_copy: Option<&Queue>,
) -> io::Result<Body> {
    let file = match file {
        // Its metadata is the one `len` came from.
        Some(file) => file,
        None => {
            let file = std::fs::File::open(path)?;
            if file.metadata()?.len() != len {
                return Err(io::Error::other("the file changed while it was served"));
            }
            file
        }
    };
    let want = part.end - part.start;
    if let Some(queue) = zero_copy.filter(|_| want > ZERO_COPY_MIN) {
        return Ok(SendfileBody::new(queue, file, part.start, want).boxed());
    }
    if want <= WHOLE_READ_LIMIT {
        let mut buf = vec![0; want as usize];
        file.read_exact_at(&mut buf, part.start)?;
        return Ok(full(buf));
    }
    let mut file = tokio::fs::File::from_std(file);
    tokio::io::AsyncSeekExt::seek(&mut file, io::SeekFrom::Start(part.start)).await?;
    Ok(FileBody::new(file, want).boxed())
}

/// A multipart/byteranges body: (length, boundary, body).
fn multipart(
    path: &Path,
    len: u64,
    parts: &[std::ops::Range<u64>],
    content_type: &HeaderValue,
    head: bool,
) -> io::Result<(usize, String, Body)> {
    use std::hash::{BuildHasher, Hasher};
    // A boundary that no file can be expected to contain.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(len);
    let boundary = format!("taphost-{:016x}", hasher.finish());
    let file = std::fs::File::open(path)?;
    let ctype = content_type.to_str().unwrap_or("application/octet-stream");
    let mut out = BytesMut::new();
    for part in parts {
        out.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
                part.start,
                part.end - 1
            )
            .as_bytes(),
        );
        let at = out.len();
        out.resize(at + (part.end - part.start) as usize, 0);
        file.read_exact_at(&mut out[at..], part.start)?;
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let body_len = out.len();
    Ok((
        body_len,
        boundary,
        if head { empty() } else { full(out.freeze()) },
    ))
}

/// A file streamed in chunks of [`CHUNK`] bytes, exactly `remaining` of them: a file that
/// grows is cut at the announced length, one that shrinks ends the body with an error (hyper
/// then closes the connection rather than send a short response).
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
}

impl FileBody {
    pub fn new(file: tokio::fs::File, len: u64) -> Self {
        FileBody {
            file,
            remaining: len,
            buf: BytesMut::new(),
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.buf.capacity() < CHUNK {
            this.buf.reserve(CHUNK);
        }
        match ready!(poll_read_buf(Pin::new(&mut this.file), cx, &mut this.buf)) {
            Err(e) => Poll::Ready(Some(Err(e))),
            Ok(0) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was sent",
            )))),
            Ok(_) => {
                let mut chunk = this.buf.split().freeze();
                if chunk.len() as u64 > this.remaining {
                    chunk.truncate(this.remaining as usize);
                }
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// 403 for a permission problem, 404 when the file vanished, 500 otherwise; never the path.
pub fn io_error_response(e: &io::Error) -> Response<Body> {
    error_response(io_status(e))
}

/// The status for a failed file operation.
pub fn io_status(e: &io::Error) -> StatusCode {
    match e.kind() {
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StatusCode::NOT_FOUND,
        _ => {
            tracing::warn!("file read failed: {e}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The request's preconditions against a file's validators: `Continue(response)` to go on, or
/// `Break` with the 304 (`response` itself, its validators kept) or 412 (with `response`'s
/// headers) to send instead.
fn preconditions(
    headers: &HeaderMap,
    etag: &str,
    modified: Option<std::time::SystemTime>,
    mut response: Response<Body>,
) -> ControlFlow<Response<Body>, Response<Body>> {
    match conditional::evaluate(headers, etag, modified, true) {
        Outcome::Proceed => ControlFlow::Continue(response),
        Outcome::NotModified => {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            ControlFlow::Break(response)
        }
        Outcome::PreconditionFailed => {
            let mut failed = error_response(StatusCode::PRECONDITION_FAILED);
            failed.headers_mut().extend(response.headers_mut().drain());
            ControlFlow::Break(failed)
        }
    }
}
