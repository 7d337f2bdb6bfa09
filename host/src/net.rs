//! Listening sockets as the host hands them to services, and the connections they accept.
//!
//! A [`Listener`] is bound with blocking calls before any runtime exists; a service turns it into
//! an [`AsyncListener`] once it runs on the runtime. [`Stream`] lets one accept loop serve TCP
//! and Unix sockets alike.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A listener together with the endpoint it was bound from, as a service receives it: the
/// endpoint tells a service what the socket is for (an `ssl:` one wants TLS, a plugin with
/// several protocols matches it against its options).
#[derive(Debug)]
pub struct BoundListener {
    pub endpoint: crate::Endpoint,
    pub listener: Listener,
}

/// A bound, listening socket that no runtime owns yet.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl BoundListener {
    /// Another handle on the same socket (dup): the host keeps one while a service restarts,
    /// so the port stays bound and new connections wait in the backlog.
    pub fn try_clone(&self) -> io::Result<BoundListener> {
        Ok(BoundListener {
            endpoint: self.endpoint.clone(),
            listener: match &self.listener {
                Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
                Listener::Unix(l) => Listener::Unix(l.try_clone()?),
            },
        })
    }
}

impl Listener {
    /// Where the socket really listens (the kernel's port when the endpoint said 0).
    pub fn local_addr(&self) -> io::Result<LocalAddr> {
        Ok(match self {
            Listener::Tcp(l) => LocalAddr::Tcp(l.local_addr()?),
            Listener::Unix(l) => LocalAddr::Unix(
                l.local_addr()?
                    .as_pathname()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(unnamed)".into()),
            ),
        })
    }

    /// Registers the socket with the current tokio runtime. Call from inside the runtime.
    pub fn into_async(self) -> io::Result<AsyncListener> {
        Ok(match self {
            Listener::Tcp(l) => AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?),
            Listener::Unix(l) => AsyncListener::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }
}

/// The address a listener is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    Tcp(SocketAddr),
    Unix(String),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(addr) => write!(f, "{addr}"),
            LocalAddr::Unix(path) => f.write_str(path),
        }
    }
}

/// A listener on the runtime.
#[derive(Debug)]
pub enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl Peer {
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Unix => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

impl AsyncListener {
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            AsyncListener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                // Small responses go out at once, as with nginx's tcp_nodelay.
                stream.set_nodelay(true)?;
                Ok((Stream::Tcp(stream), Peer::Tcp(addr)))
            }
            AsyncListener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok((Stream::Unix(stream), Peer::Unix))
            }
        }
    }
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}
