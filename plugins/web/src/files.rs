//! A file's response.
//!
//! Small files are read with one blocking read on the worker thread: from the page cache that
//! costs less than a hop to tokio's blocking pool (measured in the core issue's notes), and a
//! request body that small is sent in one write anyway. Larger files are streamed in chunks so
//! memory stays flat however large the file is.

use std::fs::Metadata;
use std::io;
use std::path::Path;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LAST_MODIFIED};
use hyper::{Response, StatusCode};
use tokio_util::io::poll_read_buf;

use crate::server::{error_response, Body};

/// Files up to this size are read whole; larger ones are streamed.
pub const WHOLE_READ_LIMIT: u64 = 256 * 1024;
/// The chunk size of a streamed file.
const CHUNK: usize = 64 * 1024;

/// The Content-Type for `path`, from its extension, or `default`.
pub fn content_type(path: &Path, default: &HeaderValue) -> HeaderValue {
    mime_guess::from_path(path)
        .first_raw()
        .map(HeaderValue::from_static)
        .unwrap_or_else(|| default.clone())
}

/// Serves the regular file `path` (already checked to lie under the root).
pub async fn respond(
    path: &Path,
    meta: &Metadata,
    default_type: &HeaderValue,
    head: bool,
) -> Response<Body> {
    let len = meta.len();
    let body: Body = if head {
        Empty::new().map_err(|never| match never {}).boxed()
    } else if len <= WHOLE_READ_LIMIT {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() as u64 == len => Full::new(Bytes::from(bytes))
                .map_err(|never| match never {})
                .boxed(),
            // The file changed between stat and read; the client retries and sees the new one.
            Ok(_) => return error_response(StatusCode::SERVICE_UNAVAILABLE),
            Err(e) => return io_error_response(&e),
        }
    } else {
        match tokio::fs::File::open(path).await {
            Ok(file) => FileBody::new(file, len).boxed(),
            Err(e) => return io_error_response(&e),
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type(path, default_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(modified) = meta.modified() {
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
            headers.insert(LAST_MODIFIED, value);
        }
    }
    response
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
    match e.kind() {
        io::ErrorKind::PermissionDenied => error_response(StatusCode::FORBIDDEN),
        io::ErrorKind::NotFound => error_response(StatusCode::NOT_FOUND),
        _ => {
            tracing::warn!("file read failed: {e}");
            error_response(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
