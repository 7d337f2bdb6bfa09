//! The running mail service: one per tap entry, serving SMTP and POP3 listeners side by side.
//!
//! The tap's `listen` list and the config's `protocols` pair up position by position, so each
//! [`BoundListener`] is matched to its protocol without looking at its address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use host::service::{serve, ServiceContext};
use host::{BoundListener, Service};

use crate::aliases::Aliases;
use crate::maildir::Flush;
use crate::maildir::{self, Deliverer};
use crate::pop3::Pop3;
use crate::relay::{Relay, RelaySettings};
use crate::smtp::Smtp;
use crate::tls::Conn;
use crate::users::{hash_password, Directory};
use crate::MailConfig;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The running mail service.
pub struct MailService {
    directory: Directory,
    aliases: Option<std::path::PathBuf>,
    hostname: String,
    max_message_size: u64,
    flush: Flush,
    protocols: Vec<String>,
    tls: Option<TlsAcceptor>,
    auth: bool,
    allow_plaintext_auth: bool,
    relay: Option<RelaySettings>,
}

/// The system's host name, for greetings when `--hostname` names none.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl MailService {
    pub fn new(config: &MailConfig) -> Result<Self, String> {
        let directory = Directory::load(config).map_err(|e| e.to_string())?;
        let hostname = if config.hostname.is_empty() {
            system_hostname()
        } else {
            config.hostname.clone()
        };
        let tls = match &config.certificate {
            Some(certificate) => Some(
                crate::tls::acceptor(certificate, config.privkey.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let relay_tls = match &config.relay {
            Some(_) => crate::outbound::Tls::new(config.relay_tls, config.relay_ca.as_deref())
                .map_err(|e| e.to_string())?,
            None => crate::outbound::Tls::none(),
        };
        let relay = config.relay.as_ref().map(|queue| RelaySettings {
            queue: queue.clone(),
            smarthost: config.smarthost.clone(),
            resolver: config.relay_resolver.clone(),
            tls: relay_tls,
            hostname: hostname.clone(),
            min_backoff: Duration::from_secs(config.relay_min_backoff),
            max_backoff: Duration::from_secs(config.relay_max_backoff),
            lifetime: Duration::from_secs(config.queue_lifetime),
        });
        Ok(MailService {
            relay,
            tls,
            auth: config.auth,
            allow_plaintext_auth: config.allow_plaintext_auth,
            directory,
            aliases: config.aliases.clone(),
            hostname,
            max_message_size: config.max_message_size,
            flush: config.fsync,
            protocols: config.protocols.clone(),
        })
    }
}

/// Removes what crashes left in a Maildir's `tmp/`; a failure only costs disk space.
fn clean(maildir: &std::path::Path) {
    match maildir::clean_tmp(maildir, std::time::SystemTime::now(), maildir::TMP_MAX_AGE) {
        Ok(0) => {}
        Ok(n) => tracing::info!(maildir = %maildir.display(), "removed {n} stale files from tmp/"),
        Err(e) => tracing::warn!(maildir = %maildir.display(), "cannot clean tmp/: {e}"),
    }
}

impl Service for MailService {
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String> {
        if listeners.len() != self.protocols.len() {
            return Err(format!(
                "{} listeners for {} protocols",
                listeners.len(),
                self.protocols.len()
            ));
        }
        // Every known user's Maildir exists before the first message or login arrives.
        for mailbox in self.directory.mailboxes() {
            maildir::ensure(&mailbox.path).map_err(|e| format!("maildir of {mailbox}: {e}"))?;
            clean(&mailbox.path);
        }
        let deliverer = Deliverer::new(&self.hostname, self.flush);
        let relay = match &self.relay {
            Some(settings) => {
                maildir::ensure(&settings.queue)
                    .map_err(|e| format!("--relay {}: {e}", settings.queue.display()))?;
                clean(&settings.queue);
                Some(Arc::new(Relay::new(settings.clone())))
            }
            None => None,
        };
        let decoy_hash = hash_password("decoy").map_err(|e| e.to_string())?;
        let aliases = match &self.aliases {
            Some(path) => Some(Aliases::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let smtp = Arc::new(Smtp {
            directory: self.directory.clone(),
            aliases,
            hostname: self.hostname.clone(),
            max_message_size: self.max_message_size,
            deliverer,
            tls: self.tls.clone(),
            auth: self.auth,
            allow_plaintext_auth: self.allow_plaintext_auth,
            decoy_hash: decoy_hash.clone(),
            relay,
        });
        let pop3 = Arc::new(Pop3 {
            directory: self.directory.clone(),
            hostname: self.hostname.clone(),
            sizes: Mutex::new(HashMap::new()),
            decoy_hash,
            tls: self.tls.clone(),
            allow_plaintext_auth: self.allow_plaintext_auth,
        });
        for (protocol, bound) in self.protocols.iter().zip(listeners) {
            let endpoint = bound.endpoint.to_string();
            let listener = bound
                .listener
                .into_async()
                .map_err(|e| format!("{protocol} on {endpoint}: {e}"))?;
            let conn_ctx = ctx.clone();
            match protocol.as_str() {
                "smtp" => {
                    let smtp = smtp.clone();
                    serve(ctx, listener, move |stream, peer| {
                        crate::smtp::session(
                            smtp.clone(),
                            conn_ctx.clone(),
                            Conn::Plain(stream),
                            peer,
                        )
                    });
                }
                "pop3" => {
                    let pop3 = pop3.clone();
                    serve(ctx, listener, move |stream, peer| {
                        crate::pop3::session(
                            pop3.clone(),
                            conn_ctx.clone(),
                            Conn::Plain(stream),
                            peer,
                        )
                    });
                }
                "pop3s" => {
                    let pop3 = pop3.clone();
                    let acceptor = self.tls.clone().ok_or("pop3s: no --certificate")?;
                    serve(ctx, listener, move |stream, peer| {
                        let (pop3, ctx, acceptor) =
                            (pop3.clone(), conn_ctx.clone(), acceptor.clone());
                        async move {
                            match Conn::Plain(stream).upgrade(&acceptor).await {
                                Ok(conn) => crate::pop3::session(pop3, ctx, conn, peer).await,
                                Err(e) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                            }
                        }
                    });
                }
                other => return Err(format!("protocols: '{other}' cannot be served")),
            }
            tracing::info!(parent: ctx.span(), "{protocol} on {endpoint}");
        }
        // Last, so a start that fails above leaves no worker behind.
        if let Some(relay) = &smtp.relay {
            relay.start(ctx, smtp.deliverer.clone(), self.directory.clone());
        }
        Ok(())
    }
}
