//! Zero-copy file bodies for plain HTTP/1.1: the file's bytes go from the page cache to the
//! socket with sendfile(2), never through userspace.
//!
//! hyper has no sendfile hook: a body yields `Bytes` and hyper writes them. What it does
//! guarantee, with an IO that says `is_write_vectored()`, is its *queue* write strategy: body
//! chunks are queued as the very `Bytes` the body yielded, never copied into another buffer,
//! and handed to `poll_write_vectored` as slices, in order, after the head they follow (see
//! `WriteBuf` in hyper's `proto/h1/io.rs`). So a body can stand for file bytes with
//! *placeholders*, and the connection's IO can recognise them by address:
//!
//! - [`SendfileBody`] yields, for each chunk of the file, a slice of [`placeholder`] (a
//!   zeroed buffer that is never read nor sent), and at the same moment pushes a [`Pending`]
//!   entry (file, offset, length, tag) to the connection's [`Queue`].
//! - [`ZeroCopy`], the connection's IO, writes ordinary slices as usual. When the first slice
//!   it is given lies inside the placeholder buffer, it calls sendfile(2) from the front
//!   pending entry for that many bytes instead, and returns the count sent; hyper advances its
//!   chunk by exactly that much, and the entry by the same.
//!
//! > **Invariant: placeholder bytes are never written.** Each chunk's slice *ends* at a tag
//! > (`start = seq % TAGS`, so its end is `start + len`), which survives hyper advancing the
//! > chunk's front after a partial write. A placeholder slice is sent only when the front
//! > entry exists, has the same end tag and exactly as many bytes left as the slice; anything
//! > else (no entry, another tag, another length) fails the connection with an I/O error.
//! > [`ZeroCopy`] never passes a placeholder slice to write(2) or writev(2).
//!
//! Why the queue stays in step: an entry is pushed only when the body yields its chunk, which
//! hyper's dispatcher buffers at once (a non-empty data frame always reaches `write_body`);
//! HTTP/1.1 responses are written one after another, so entries are in the order of the
//! placeholder bytes in hyper's write buffer. A body that is never polled (HEAD, 304, a
//! response hyper drops) pushes nothing. A body whose bytes are not all written (the client
//! left, the file shrank) ends the connection, and the queue dies with it. The queue belongs to
//! one connection; nothing is shared between connections.
//!
//! Headers and the start of the body leave together: the head written just before a
//! placeholder goes with `MSG_MORE` (the `TCP_CORK` of one call), so the kernel holds it for
//! the sendfile that follows at once instead of sending a small packet of its own. A file that
//! shrinks while it is sent makes sendfile return 0 at the new end: the connection fails rather
//! than send fewer bytes than announced; one that grows is cut at the announced length.
//!
//! TLS and HTTP/2 never see any of this: their responses get ordinary bodies.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use host::Stream;

/// The largest placeholder chunk (and so the most one sendfile call is asked for), as nginx's
/// `sendfile_max_chunk`.
const CHUNK: usize = 2 * 1024 * 1024;
/// How many distinct end tags chunks get.
const TAGS: usize = 4096;

/// The buffer placeholder chunks point into: allocated zeroed (untouched pages cost no memory)
/// and never read.
fn placeholder() -> &'static [u8] {
    static BUF: OnceLock<&'static [u8]> = OnceLock::new();
    BUF.get_or_init(|| vec![0u8; CHUNK + TAGS].leak())
}

/// Where `slice` ends inside the placeholder buffer, if it lies inside it.
fn placeholder_end(slice: &[u8]) -> Option<usize> {
    let base = placeholder().as_ptr() as usize;
    let start = slice.as_ptr() as usize;
    let end = start.checked_add(slice.len())?;
    (!slice.is_empty() && start >= base && end <= base + CHUNK + TAGS).then(|| end - base)
}

/// File bytes that hyper holds as a placeholder chunk.
#[derive(Debug)]
struct Pending {
    file: Arc<File>,
    offset: u64,
    /// Bytes of this chunk not yet sent.
    left: usize,
    /// Where the chunk's placeholder slice ends in the buffer.
    end: usize,
}

#[derive(Debug, Default)]
struct Entries {
    pending: VecDeque<Pending>,
    seq: usize,
}

/// One connection's pending file chunks, shared by its [`ZeroCopy`] IO and its
/// [`SendfileBody`]s (which reach the service through the request's extensions).
#[derive(Debug, Clone, Default)]
pub struct Queue(Arc<Mutex<Entries>>);

impl Queue {
    /// Registers `len` (1..=CHUNK) bytes of `file` at `offset`; returns the placeholder.
    fn push(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let start = entries.seq % TAGS;
        entries.seq = entries.seq.wrapping_add(1);
        entries.pending.push_back(Pending {
            file: file.clone(),
            offset,
            left: len,
            end: start + len,
        });
        Bytes::from_static(&placeholder()[start..start + len])
    }
}

/// A whole file, or one range of it, sent with sendfile(2) by the connection's [`ZeroCopy`].
#[derive(Debug)]
pub struct SendfileBody {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
    queue: Queue,
}

impl SendfileBody {
    /// The `len` bytes of `file` from `offset`.
    pub fn new(queue: &Queue, file: File, offset: u64, len: u64) -> Self {
        SendfileBody {
            file: Arc::new(file),
            offset,
            remaining: len,
            queue: queue.clone(),
        }
    }
}

impl hyper::body::Body for SendfileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = this.remaining.min(CHUNK as u64) as usize;
        let chunk = this.queue.push(&this.file, this.offset, len);
        this.offset += len as u64;
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A plain connection's IO that sends placeholder chunks with sendfile(2).
#[derive(Debug)]
pub struct ZeroCopy {
    stream: Stream,
    queue: Queue,
}

impl ZeroCopy {
    pub fn new(stream: Stream, queue: Queue) -> Self {
        ZeroCopy { stream, queue }
    }

    /// Runs a nonblocking send on the socket once it is writable, as tokio's own writes do.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        mut send: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let attempt = match &self.stream {
                Stream::Tcp(s) => {
                    ready!(s.poll_write_ready(cx))?;
                    s.try_io(Interest::WRITABLE, || send(s.as_fd()))
                }
                Stream::Unix(s) => {
                    ready!(s.poll_write_ready(cx))?;
                    s.try_io(Interest::WRITABLE, || send(s.as_fd()))
                }
            };
            match attempt {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Sends the placeholder slice `slice` (at the front of hyper's queue) from its file.
    /// `end` is where the slice ends in the placeholder buffer.
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        slice: &[u8],
        end: usize,
    ) -> Poll<io::Result<usize>> {
        let mut entries = self.queue.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = entries.pending.front_mut() else {
            return Poll::Ready(Err(out_of_step("no file is pending")));
        };
        if front.end != end || front.left != slice.len() {
            return Poll::Ready(Err(out_of_step("the pending file does not match")));
        }
        let sent = ready!(self.poll_send(cx, |sock| {
            let mut offset = i64::try_from(front.offset).map_err(io::Error::other)?;
            Ok(nix::sys::sendfile::sendfile64(
                sock,
                front.file.as_fd(),
                Some(&mut offset),
                front.left,
            )?)
        }))?;
        if sent == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was sent",
            )));
        }
        front.offset += sent as u64;
        front.left -= sent;
        if front.left == 0 {
            entries.pending.pop_front();
        }
        Poll::Ready(Ok(sent))
    }
}

/// The error that ends a connection whose placeholders and pending files disagree.
fn out_of_step(what: &str) -> io::Error {
    tracing::error!("zero-copy body out of step: {what}; closing the connection");
    io::Error::other(format!("zero-copy body out of step: {what}"))
}

impl AsyncRead for ZeroCopy {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopy {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Empty slices carry nothing (hyper gives none, but they would count for nothing).
        let skip = bufs.iter().take_while(|b| b.is_empty()).count();
        let bufs = &bufs[skip..];
        match bufs.iter().position(|b| placeholder_end(b).is_some()) {
            // Nothing of a file: an ordinary writev.
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
            Some(0) => match placeholder_end(&bufs[0]) {
                Some(end) => this.poll_sendfile(cx, &bufs[0], end),
                None => Poll::Ready(Err(out_of_step("lost the placeholder"))),
            },
            // The head (and whatever precedes the file) first, held back by MSG_MORE for the
            // sendfile that comes next. MSG_MORE is not among nix's MsgFlags, hence the bits.
            Some(n) => {
                let flags =
                    MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
                let ordinary = &bufs[..n];
                this.poll_send(cx, |sock| {
                    Ok(nix::sys::socket::sendmsg::<()>(
                        sock.as_raw_fd(),
                        ordinary,
                        &[],
                        flags,
                        None,
                    )?)
                })
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Required: it is what makes hyper queue body chunks as they are (see the module
        // comment).
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_by_address_and_end_tag() {
        let queue = Queue::default();
        let file = Arc::new(File::open("/dev/null").expect("open"));
        let a = queue.push(&file, 0, 10);
        let b = queue.push(&file, 10, 10);
        assert_eq!(placeholder_end(&a), Some(10));
        assert_eq!(placeholder_end(&b), Some(11));
        assert_eq!(placeholder_end(&a[3..]), Some(10));
        assert_eq!(placeholder_end(b"ordinary"), None);
        assert_eq!(placeholder_end(&[]), None);
    }

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut file, bytes).expect("write");
        Arc::new(file)
    }

    /// A placeholder the connection's queue does not know, or knows with another length, is
    /// an error; nothing is written.
    #[tokio::test]
    async fn placeholders_out_of_step_fail_and_send_nothing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut peer) = tokio::net::UnixStream::pair().expect("socket pair");
        let queue = Queue::default();
        let mut io = ZeroCopy::new(Stream::Unix(ours), queue.clone());
        let file = file_with(b"0123456789");

        // Registered with another connection's queue.
        let stray = Queue::default().push(&file, 0, 10);
        let err = io
            .write_vectored(&[IoSlice::new(&stray)])
            .await
            .expect_err("no pending file");
        assert!(err.to_string().contains("out of step"), "{err}");

        // Known, but hyper holds fewer bytes than are pending.
        let chunk = queue.push(&file, 0, 10);
        let err = io
            .write_vectored(&[IoSlice::new(&chunk[..4])])
            .await
            .expect_err("length mismatch");
        assert!(err.to_string().contains("out of step"), "{err}");

        drop(io);

        // In step: the head, then the file's bytes.
        let queue = Queue::default();
        let (ours2, mut peer2) = tokio::net::UnixStream::pair().expect("socket pair");
        let mut io = ZeroCopy::new(Stream::Unix(ours2), queue.clone());
        let chunk = queue.push(&file, 2, 5);
        let head = b"HEAD:";
        let n = io
            .write_vectored(&[IoSlice::new(head), IoSlice::new(&chunk)])
            .await
            .expect("head");
        assert_eq!(n, head.len());
        let n = io
            .write_vectored(&[IoSlice::new(&chunk)])
            .await
            .expect("file bytes");
        assert_eq!(n, 5);
        drop(io);
        let mut got = Vec::new();
        peer2.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"HEAD:23456");
        let mut nothing = Vec::new();
        peer.read_to_end(&mut nothing).await.expect("read");
        assert!(nothing.is_empty(), "placeholder bytes were sent");
    }
}
