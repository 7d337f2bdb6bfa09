//! TLS with rustls: the certificate of an `ssl:` endpoint, per-host certificates chosen by SNI
//! (`--sni`), TLS 1.2 and 1.3 only, and ALPN offering HTTP/2 before HTTP/1.1.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::options::host_name;

fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read =
        |path: &Path| host::files::read_small(path).map_err(|e| format!("{}: {e}", path.display()));
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let key_pem = read(key)?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in it", key.display()))?;
    let signing =
        ring::sign::any_supported_type(&key_der).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The endpoint's certificate unless the client named a host that has its own.
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|name| self.by_name.get(&host_name(name)));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// The per-host certificates of `--sni`, loaded once and shared by every TLS listener.
pub type SniCerts = HashMap<String, Arc<CertifiedKey>>;

pub fn load_sni(
    sni: &[(String, std::path::PathBuf, std::path::PathBuf)],
) -> Result<SniCerts, String> {
    sni.iter()
        .map(|(name, cert, key)| Ok((name.clone(), load_certified_key(cert, key)?)))
        .collect()
}

/// The acceptor of one `ssl:` listener.
pub fn acceptor(cert: &Path, key: &Path, sni: &SniCerts) -> Result<TlsAcceptor, String> {
    let default = load_certified_key(cert, key)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            default,
            by_name: sni.clone(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(result: Result<TlsAcceptor, String>) -> String {
        match result {
            Ok(_) => panic!("a bad file was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn certificates_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
        let sni = load_sni(&[("example.org".into(), cert.clone(), key.clone())]).expect("sni");
        assert!(acceptor(&cert, &key, &sni).is_ok());
        // One PEM holding both, as Twisted's certKey defaulting to privateKey expects.
        let both = dir.path().join("both.pem");
        std::fs::write(
            &both,
            format!("{}{}", made.key_pair.serialize_pem(), made.cert.pem()),
        )
        .expect("write both");
        assert!(acceptor(&both, &both, &SniCerts::new()).is_ok());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write junk");
        let err = error(acceptor(&junk, &key, &SniCerts::new()));
        assert!(
            err.contains("junk.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = error(acceptor(&cert, &junk, &SniCerts::new()));
        assert!(err.contains("junk.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(error(acceptor(&missing, &key, &SniCerts::new())).contains("missing.pem"));
    }
}
