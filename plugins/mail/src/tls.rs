//! TLS for SMTP's STARTTLS, POP3's STLS and `--pop3s`: the acceptor made from `--certificate`
//! and `--privkey`, and [`Conn`], a connection that starts in plain text and may become TLS.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3 only.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use host::Stream;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{option} {path}: {source}")]
    Read {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{option} {path}: {reason}")]
    Pem {
        option: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--certificate/--privkey: {0}")]
    Config(#[from] rustls::Error),
}

/// The server side of TLS from PEM files: the certificate chain, and its private key (which may
/// also sit in the certificate file, as Twisted's single-PEM convention has it).
pub fn acceptor(certificate: &Path, key: Option<&Path>) -> Result<TlsAcceptor, TlsError> {
    let read = |option: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            option,
            path: path.to_path_buf(),
            source,
        })
    };
    let pem = |option: &'static str, path: &Path, reason: String| TlsError::Pem {
        option,
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("--certificate", certificate)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("--certificate", certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(
            "--certificate",
            certificate,
            "no CERTIFICATE in it".into(),
        ));
    }
    let (key_option, key_path) = match key {
        Some(path) => ("--privkey", path),
        None => ("--certificate", certificate),
    };
    let key_pem = read(key_option, key_path)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| pem(key_option, key_path, e.to_string()))?
        .ok_or_else(|| pem(key_option, key_path, "no PRIVATE KEY in it".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection that is plain or TLS; [`Conn::Swapping`] only exists during the upgrade.
pub enum Conn {
    Plain(Stream),
    Tls(Box<TlsStream<Stream>>),
    Swapping,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
            Conn::Swapping => "Conn::Swapping",
        })
    }
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Runs the server handshake on a plain connection, within [`HANDSHAKE_TIMEOUT`].
    pub async fn upgrade(self, acceptor: &TlsAcceptor) -> io::Result<Conn> {
        let Conn::Plain(stream) = self else {
            return Err(io::Error::other("TLS is already active"));
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Ok(Conn::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Upgrades a session's buffered connection. Plain text the client sent after the command is
/// still in the buffer: it is dropped with it, never read as if it came over TLS
/// (the STARTTLS command injection of CVE-2011-0411).
pub async fn upgrade_buffered(io: &mut BufReader<Conn>, acceptor: &TlsAcceptor) -> io::Result<()> {
    let conn = std::mem::replace(io, BufReader::new(Conn::Swapping)).into_inner();
    *io = BufReader::new(conn.upgrade(acceptor).await?);
    Ok(())
}

fn swapping() -> io::Error {
    io::Error::other("connection used during a TLS upgrade")
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }
}
