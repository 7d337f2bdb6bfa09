//! TLS for SMTP's STARTTLS, POP3's STLS and `--pop3s`: the acceptor made from `--certificate`
//! and `--privkey`, and [`Conn`], a connection that starts in plain text and may become TLS.
//! And the client side, for STARTTLS towards the next server (`--relay-tls`, `--relay-ca`):
//! [`connector`].
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
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

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
    #[error("{option}: {reason}")]
    Client {
        option: &'static str,
        reason: String,
    },
}

/// The server side of TLS from PEM files: the certificate chain, and its private key (which may
/// also sit in the certificate file, as Twisted's single-PEM convention has it).
pub fn acceptor(certificate: &Path, key: Option<&Path>) -> Result<TlsAcceptor, TlsError> {
    let read = |option: &'static str, path: &Path| {
        host::files::read_small(path).map_err(|source| TlsError::Read {
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

/// The trust anchors for `--relay-tls verify`: the PEM certificates of `ca`, or else the
/// system's ([`system_roots`]).
fn roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let Some(path) = ca else {
        return system_roots();
    };
    let option = "--relay-ca";
    let path = path.to_path_buf();
    let pem = host::files::read_small(&path).map_err(|source| TlsError::Read {
        option,
        path: path.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            option,
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Pem {
            option,
            path,
            reason: "no usable CERTIFICATE in it".into(),
        });
    }
    Ok(roots)
}

/// The system's CA certificates, found as OpenSSL finds them (rustls-native-certs): the
/// files `$SSL_CERT_FILE` and `$SSL_CERT_DIR` (hashed names, as `openssl rehash` makes them)
/// when either is set, else the system's bundle (`/etc/ssl/certs/ca-certificates.crt` on
/// Debian, and the like elsewhere).
fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let problems: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(TlsError::Client {
            option: "--relay-tls verify",
            reason: format!(
                "no system CA certificates ({}); give --relay-ca FILE",
                match problems.as_slice() {
                    [] => "none found".to_string(),
                    _ => problems.join("; "),
                }
            ),
        });
    }
    Ok(roots)
}

/// What a certificate taken unchecked (`--relay-tls may`) would have been worth, for the log:
/// Postfix tells "Trusted" and "Untrusted" TLS connections apart the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// A known CA signed it for the name connected to.
    ForTheName,
    /// A known CA signed it, for other names.
    ForOtherNames,
    /// No known CA vouches for it now (unknown issuer, expired, self-signed...).
    Untrusted,
}

/// Checks certificates against the system's CA certificates, only to tell the log
/// ([`Trust`]); `--relay-tls may` takes them whatever this says.
#[derive(Debug, Clone)]
pub struct TrustCheck(Arc<rustls::client::WebPkiServerVerifier>);

impl TrustCheck {
    /// `None` when the system has no CA certificates to check against.
    pub fn system() -> Option<TrustCheck> {
        let roots = system_roots().ok()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .ok()
            .map(TrustCheck)
    }

    /// The worth of the server's `chain` (its certificate first) for `name`.
    pub fn check(&self, chain: &[CertificateDer<'_>], name: &ServerName<'_>) -> Trust {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Trust::Untrusted;
        };
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
        {
            Ok(_) => Trust::ForTheName,
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Trust::ForOtherNames,
            Err(_) => Trust::Untrusted,
        }
    }
}

/// The client side of STARTTLS towards the next server. With `verify`, the server's chain must
/// lead to `ca` (or the system's CA certificates) and name the host; otherwise any certificate
/// is taken, as Postfix's `smtp_tls_security_level = may` does: the session is encrypted but
/// the peer not authenticated (the handshake's own signatures are still checked).
pub fn connector(verify: bool, ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |e: rustls::Error| TlsError::Client {
        option: "--relay-tls",
        reason: e.to_string(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(client)?;
    let config = if verify {
        builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `--relay-tls may`: every certificate is taken (opportunistic TLS, RFC 7435), while the
/// handshake signatures are verified as usual, so the session keys belong to whoever holds the
/// certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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
