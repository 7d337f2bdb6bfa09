//! Offering a message to another server: where to (the smarthost, or each domain's MX hosts)
//! and the SMTP client conversation, with one outcome per recipient.
//!
//! MX routing follows RFC 5321 5.1: MX hosts in order of preference, the domain itself when it
//! has no MX record (the implicit MX), and nothing at all for a null MX (RFC 7505) or a domain
//! that does not exist (NXDOMAIN; a permanent failure, as in Postfix). The MX
//! lookups and the addresses of the MX hosts come from DNS (`--relay-resolver`, or the servers
//! of /etc/resolv.conf); a smarthost's name is resolved by the system (getaddrinfo). Every
//! address of a host is tried in turn, then the next host (five addresses in all at most, as
//! Postfix's `smtp_mx_address_limit`), only while a host cannot be reached or refuses the
//! session; once a host has answered the transaction, its answer stands.
//!
//! STARTTLS follows Postfix's `smtp_tls_security_level` (`--relay-tls`): `may` upgrades when
//! the EHLO reply offers STARTTLS and takes any certificate; when the next server refuses the
//! command the session goes on in plain text, and when the handshake fails the delivery is
//! tried again on a new plain-text connection to the same address. `verify` requires TLS with
//! a certificate for the host name (the smarthost's, or the MX host's as DNS named it) that
//! `--relay-ca` or the system's CAs vouch for, and anything less defers (or tries the next
//! address). `none` never upgrades. Plain text the server sent after its 220 to STARTTLS is
//! refused, never read as if it had come over TLS.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::tls::{TlsError, Trust, TrustCheck, HANDSHAKE_TIMEOUT};
use crate::RelayTls;

/// How long to wait for the other server to answer one command (RFC 5321 4.5.3.2 gives 5 to 10
/// minutes; the connection itself gets less).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest reply line taken from the next server, its CRLF included: RFC 5321 4.5.3.1.5
/// allows 512 octets, Postfix's client takes up to 2048 (`line_length_limit`).
const MAX_REPLY_LINE: usize = 2000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The SMTP port of MX hosts.
const SMTP_PORT: u16 = 25;
/// How many MX host addresses one delivery tries at most (Postfix's `smtp_mx_address_limit`):
/// a domain with hundreds of MX records costs a bounded time.
const MX_ADDRESS_LIMIT: usize = 5;

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next server, in this session.
    Delivered(Session),
    /// Try again later; the reply or error.
    Deferred(String),
    /// Bounce; the reply.
    Failed(String),
}

/// The session a message went out in, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `name[address]`, as Postfix logs its `relay=`.
    pub relay: String,
    /// The TLS version and cipher suite, when the session was encrypted.
    pub tls: Option<String>,
    /// Whether the certificate was verified (only with `--relay-tls verify`).
    pub verified: bool,
    /// With `--relay-tls may`, what the certificate taken unchecked would have been worth
    /// (when the system has CA certificates to tell).
    pub trust: Option<Trust>,
    /// The next server's reply to the message (`250 2.0.0 Ok: queued as ...`), which names
    /// it in that server's log.
    pub reply: String,
}

impl Session {
    /// `encrypted (TLSv1_3 TLS13_AES_256_GCM_SHA384), certificate verified`, or `plain text`.
    pub fn security(&self) -> String {
        match &self.tls {
            Some(tls) if self.verified => format!("encrypted ({tls}), certificate verified"),
            Some(tls) => {
                let trust = match self.trust {
                    Some(Trust::ForTheName) => " (trusted, for this name)",
                    Some(Trust::ForOtherNames) => " (trusted, for another name)",
                    Some(Trust::Untrusted) => " (untrusted)",
                    None => "",
                };
                format!("encrypted ({tls}), certificate not verified{trust}")
            }
            None => "plain text".to_string(),
        }
    }
}

/// STARTTLS towards the next server: the level and, unless it is `none`, the client config.
#[derive(Clone)]
pub struct Tls {
    level: RelayTls,
    connector: Option<TlsConnector>,
    /// With `may`: the system's CAs, to log what each certificate would have been worth.
    check: Option<TrustCheck>,
}

impl Tls {
    /// The policy for `--relay-tls level` (with `--relay-ca ca` for `verify`).
    pub fn new(level: RelayTls, ca: Option<&Path>) -> Result<Tls, TlsError> {
        let connector = match level {
            RelayTls::None => None,
            RelayTls::May => Some(crate::tls::connector(false, None)?),
            RelayTls::Verify => Some(crate::tls::connector(true, ca)?),
        };
        let check = match level {
            RelayTls::May => TrustCheck::system(),
            RelayTls::None | RelayTls::Verify => None,
        };
        Ok(Tls {
            level,
            connector,
            check,
        })
    }

    /// No TLS at all.
    pub fn none() -> Tls {
        Tls {
            level: RelayTls::None,
            connector: None,
            check: None,
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls({})", self.level)
    }
}

/// Where relayed mail goes.
pub enum Route {
    /// Everything to one `HOST:PORT` (`--smarthost`).
    Smarthost(String),
    /// Each domain's MX hosts; the resolver is made on first use, from `servers`
    /// (`--relay-resolver`) or, when there are none, from /etc/resolv.conf.
    Mx {
        servers: Vec<SocketAddr>,
        resolver: Box<OnceCell<Result<TokioResolver, String>>>,
    },
}

impl Route {
    pub fn mx(servers: Vec<SocketAddr>) -> Route {
        Route::Mx {
            servers,
            resolver: Box::default(),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Smarthost(host) => f.write_str(host),
            Route::Mx { .. } => f.write_str("MX"),
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({self})")
    }
}

/// One place to connect to: a host's name (for TLS and the log) and how to reach it.
#[derive(Debug, Clone)]
struct Peer {
    name: String,
    address: Address,
}

#[derive(Debug, Clone)]
enum Address {
    /// `HOST:PORT`, resolved by the system when connecting (the smarthost).
    Named(String),
    /// An address DNS gave for an MX host.
    Resolved(SocketAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Named(host) => f.write_str(host),
            Address::Resolved(addr) => write!(f, "{}[{}]:{}", self.name, addr.ip(), addr.port()),
        }
    }
}

impl Peer {
    /// The smarthost `HOST:PORT` (`[v6]:PORT` too).
    fn smarthost(host: &str) -> Peer {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        Peer {
            name: name.to_string(),
            address: Address::Named(host.to_string()),
        }
    }
}

/// Offers a message (LF line endings) for `recipients`; one outcome each, in order.
pub async fn deliver(
    route: &Route,
    tls: &Tls,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    let transaction = Transaction {
        tls,
        hostname,
        sender,
        message,
    };
    match route {
        Route::Smarthost(host) => {
            let peers = vec![Ok(Peer::smarthost(host))];
            transaction.offer(peers, recipients).await
        }
        Route::Mx { servers, resolver } => {
            let resolver = match resolver
                .get_or_init(|| async { make_resolver(servers) })
                .await
            {
                Ok(resolver) => resolver,
                Err(e) => {
                    return recipients
                        .iter()
                        .map(|_| Outcome::Deferred(e.clone()))
                        .collect()
                }
            };
            // One transaction per domain, each to that domain's hosts.
            let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, rcpt) in recipients.iter().enumerate() {
                let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
                by_domain
                    .entry(domain.to_ascii_lowercase())
                    .or_default()
                    .push(i);
            }
            let mut outcomes = vec![Outcome::Deferred("not attempted".into()); recipients.len()];
            for (domain, indexes) in by_domain {
                let group: Vec<String> = indexes.iter().map(|&i| recipients[i].clone()).collect();
                let results = match mx_hosts(resolver, &domain).await {
                    Ok(hosts) => {
                        let peers = addresses(resolver, &hosts).await;
                        transaction.offer(peers, &group).await
                    }
                    Err(outcome) => vec![outcome; group.len()],
                };
                for (i, outcome) in indexes.into_iter().zip(results) {
                    outcomes[i] = outcome;
                }
            }
            outcomes
        }
    }
}

/// The resolver of `--relay-resolver`'s servers (UDP, and TCP for long answers), or the
/// system's.
fn make_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    if servers.is_empty() {
        return TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| format!("cannot set up DNS: {e}"));
    }
    let configs: Vec<NameServerConfig> = servers
        .iter()
        .flat_map(|&addr| {
            [
                NameServerConfig::new(addr, Protocol::Udp),
                NameServerConfig::new(addr, Protocol::Tcp),
            ]
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), configs);
    Ok(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).build())
}

/// The MX host names of a domain in order, or the outcome for all its recipients when there
/// are none.
async fn mx_hosts(resolver: &TokioResolver, domain: &str) -> Result<Vec<String>, Outcome> {
    // A trailing dot: the domain is absolute, never tried under a search domain.
    let records = match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(lookup) => lookup
            .iter()
            .map(|mx| (mx.preference(), mx.exchange().to_ascii()))
            .collect(),
        // The domain does not exist: a permanent failure, as in Postfix ("Host or domain name
        // not found"); a server failure or a timeout is a temporary one (below).
        Err(e) if e.is_nx_domain() => {
            return Err(Outcome::Failed(format!(
                "550 5.4.4 {domain}: no such domain (NXDOMAIN)"
            )))
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(Outcome::Deferred(format!("MX lookup for {domain}: {e}"))),
    };
    mx_targets(domain, records).map_err(Outcome::Failed)
}

/// RFC 5321 5.1 and RFC 7505: MX host names by preference; the domain itself without MX
/// records; an error (a permanent one) for a null MX.
fn mx_targets(domain: &str, mut records: Vec<(u16, String)>) -> Result<Vec<String>, String> {
    if records.is_empty() {
        return Ok(vec![domain.to_string()]);
    }
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return Err(format!("550 5.1.10 {domain} accepts no mail (null MX)"));
    }
    records.sort_by_key(|(preference, _)| *preference);
    Ok(records
        .into_iter()
        .map(|(_, name)| name.trim_end_matches('.').to_string())
        .filter(|name| !name.is_empty())
        .collect())
}

/// Every address of every host, in order, on port 25, up to [`MX_ADDRESS_LIMIT`]; a host
/// whose lookup failed is an error in its place, kept for the log if nothing else works.
async fn addresses(resolver: &TokioResolver, hosts: &[String]) -> Vec<Result<Peer, String>> {
    let mut peers = Vec::new();
    let mut found = 0;
    for host in hosts {
        if found >= MX_ADDRESS_LIMIT {
            break;
        }
        match resolver.lookup_ip(format!("{host}.")).await {
            Ok(ips) => {
                for ip in ips.iter().take(MX_ADDRESS_LIMIT - found) {
                    found += 1;
                    peers.push(Ok(Peer {
                        name: host.clone(),
                        address: Address::Resolved(SocketAddr::new(ip, SMTP_PORT)),
                    }));
                }
            }
            Err(e) => peers.push(Err(format!("{host}: {e}"))),
        }
    }
    peers
}

/// One message's transaction, the same for every host it is offered to.
struct Transaction<'a> {
    tls: &'a Tls,
    hostname: &'a str,
    sender: &'a str,
    message: &'a [u8],
}

/// Why a session gave no outcome; the next address may do better.
enum Trouble {
    /// Connection trouble, a refused greeting or sender (4xx), TLS required and not had.
    Defer(String),
    /// STARTTLS failed at `--relay-tls may`: worth a new session in plain text.
    Handshake(String),
}

impl From<String> for Trouble {
    fn from(e: String) -> Trouble {
        Trouble::Defer(e)
    }
}

impl Transaction<'_> {
    /// Tries each peer in turn until one takes the session; the last trouble defers all.
    async fn offer(&self, peers: Vec<Result<Peer, String>>, recipients: &[String]) -> Vec<Outcome> {
        let mut trouble = String::from("no host to try");
        for peer in peers {
            let peer = match peer {
                Ok(peer) => peer,
                Err(e) => {
                    trouble = e;
                    continue;
                }
            };
            let mut result = self.send(&peer, true, recipients).await;
            if let Err(Trouble::Handshake(e)) = &result {
                tracing::info!(relay = %peer, "STARTTLS failed ({e}); trying again in plain text");
                result = self.send(&peer, false, recipients).await;
            }
            match result {
                Ok(outcomes) => return outcomes,
                Err(Trouble::Defer(e) | Trouble::Handshake(e)) => trouble = format!("{peer}: {e}"),
            }
        }
        recipients
            .iter()
            .map(|_| Outcome::Deferred(trouble.clone()))
            .collect()
    }

    /// Offers the message to one peer, with STARTTLS when `starttls` and the policy say so;
    /// one outcome per recipient, or the trouble that defers them all.
    async fn send(
        &self,
        peer: &Peer,
        starttls: bool,
        recipients: &[String],
    ) -> Result<Vec<Outcome>, Trouble> {
        let connect = async {
            match &peer.address {
                Address::Named(host) => TcpStream::connect(host.as_str()).await,
                Address::Resolved(addr) => TcpStream::connect(addr).await,
            }
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| "timeout connecting".to_string())?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let peer_ip = stream.peer_addr().ok().map(|a| a.ip());
        let mut client = Client::new(Box::new(stream));
        let greeting = client.reply().await?;
        if greeting.class() != 2 {
            return Err(format!("greeting: {}", greeting.text).into());
        }
        let (hello, esmtp) = client.hello(self.hostname).await?;
        let mut session = Session {
            relay: peer.to_string(),
            tls: None,
            verified: false,
            trust: None,
            reply: String::new(),
        };
        let verify = self.tls.level == RelayTls::Verify;
        let offered = esmtp && hello.has_extension("STARTTLS");
        if let Some(connector) = self.tls.connector.as_ref().filter(|_| starttls) {
            if verify && !offered {
                let _ = client.command("QUIT").await;
                return Err(format!(
                    "no STARTTLS offered, and --relay-tls verify requires TLS ({})",
                    hello.text
                )
                .into());
            }
            if offered {
                let reply = client.command("STARTTLS").await?;
                if reply.class() == 2 {
                    let (upgraded, tls, trust) = client
                        .starttls(connector, peer, peer_ip, verify, self.tls.check.as_ref())
                        .await
                        .map_err(|e| match verify {
                            true => Trouble::Defer(format!("{e} (--relay-tls verify)")),
                            false => Trouble::Handshake(e),
                        })?;
                    client = upgraded;
                    session.tls = Some(tls);
                    session.verified = verify;
                    session.trust = trust;
                    // RFC 3207 4.2: what was learnt before TLS is forgotten; ask again.
                    client.hello(self.hostname).await?;
                } else if verify {
                    let _ = client.command("QUIT").await;
                    return Err(format!(
                        "STARTTLS: {}, and --relay-tls verify requires TLS",
                        reply.text
                    )
                    .into());
                } else {
                    tracing::info!(relay = %peer, "STARTTLS refused ({}); going on in plain text", reply.text);
                }
            }
        }
        let everyone = |outcome: Outcome| recipients.iter().map(|_| outcome.clone()).collect();
        // As Postfix words it, for the log and the bounce's text (its Diagnostic-Code takes
        // the reply alone).
        let said = |reply: &Reply, command: &str| {
            format!(
                "host {peer} said: {} (in reply to {command} command)",
                reply.text
            )
        };
        let mail = client
            .command(&format!("MAIL FROM:<{}>", self.sender))
            .await?;
        match mail.class() {
            2 => {}
            5 => return Ok(everyone(Outcome::Failed(said(&mail, "MAIL FROM")))),
            _ => return Err(format!("MAIL: {}", mail.text).into()),
        }
        let mut outcomes = Vec::new();
        for rcpt in recipients {
            let reply = client.command(&format!("RCPT TO:<{rcpt}>")).await?;
            outcomes.push(match reply.class() {
                2 => None,
                5 => Some(Outcome::Failed(said(&reply, "RCPT TO"))),
                _ => Some(Outcome::Deferred(said(&reply, "RCPT TO"))),
            });
        }
        if outcomes.iter().all(Option::is_some) {
            let _ = client.command("QUIT").await;
            return Ok(outcomes.into_iter().flatten().collect());
        }
        let data = client.command("DATA").await?;
        let (verdict, command) = if data.class() == 3 {
            client
                .write(&dot_stuffed(self.message))
                .await
                .map_err(|e| format!("{e} (while sending the message)"))?;
            // Postfix's warning: the next server may have taken the message and not said so.
            let reply = client.reply().await.map_err(|e| {
                format!("{e} (after the end of the message: it may be sent more than once)")
            })?;
            (reply, "end of DATA")
        } else {
            (data, "DATA")
        };
        let accepted = match verdict.class() {
            2 => {
                session.reply = verdict.text.clone();
                Outcome::Delivered(session)
            }
            5 => Outcome::Failed(said(&verdict, command)),
            _ => Outcome::Deferred(said(&verdict, command)),
        };
        let _ = client.command("QUIT").await;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| accepted.clone()))
            .collect())
    }
}

/// The message as DATA sends it: CRLF line endings, leading dots doubled, the final dot.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + message.len() / 16 + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// An SMTP reply: its code, its text (lines joined) and each line's text after the code.
struct Reply {
    code: u16,
    text: String,
    lines: Vec<String>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    /// Whether an EHLO reply names the extension `keyword` (its lines after the first).
    fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// The connection to the next server, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: BufReader<Box<dyn Io>>,
}

impl Client {
    fn new(io: Box<dyn Io>) -> Client {
        Client {
            io: BufReader::new(io),
        }
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        let mut text = String::new();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            // At most one octet over the limit is read: a line without end must not grow.
            let mut limited = (&mut self.io).take(MAX_REPLY_LINE as u64 + 1);
            let read = tokio::time::timeout(REPLY_TIMEOUT, limited.read_line(&mut line))
                .await
                .map_err(|_| "timeout waiting for the next server".to_string())?
                .map_err(|e| format!("connection to the next server: {e}"))?;
            if read == 0 {
                return Err("the next server closed the connection".into());
            }
            if line.len() > MAX_REPLY_LINE || lines.len() > 100 {
                return Err("the next server sent a reply too long".into());
            }
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| format!("the next server said {:?}", line.trim_end()))?;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line.trim_end());
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text, lines });
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let io = self.io.get_mut();
        async {
            io.write_all(bytes).await?;
            io.flush().await
        }
        .await
        .map_err(|e| format!("connection to the next server: {e}"))
    }

    /// Sends a command and reads its reply; a failure names the command, as Postfix's "while
    /// sending RCPT TO" does (its arguments are left out: an address may be long).
    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        let verb = match line.split_once(':') {
            Some((verb, _)) if verb.len() <= 9 => verb,
            _ => line.split(' ').next().unwrap_or(line),
        };
        async {
            self.write(format!("{line}\r\n").as_bytes()).await?;
            self.reply().await
        }
        .await
        .map_err(|e| format!("{e} (while sending {verb})"))
    }

    /// EHLO, or HELO when EHLO is refused; the reply and whether it was EHLO's.
    async fn hello(&mut self, hostname: &str) -> Result<(Reply, bool), String> {
        let hello = self.command(&format!("EHLO {hostname}")).await?;
        if hello.class() == 2 {
            return Ok((hello, true));
        }
        let hello = self.command(&format!("HELO {hostname}")).await?;
        if hello.class() != 2 {
            return Err(format!("HELO: {}", hello.text));
        }
        Ok((hello, false))
    }

    /// The TLS handshake after the server's 220 to STARTTLS; the new client and a description
    /// of the session's TLS, and what `check` says of the certificate. With `verify` the
    /// certificate must be for the peer's name; without, a name that is no DNS name or address
    /// gives way to the address connected to.
    async fn starttls(
        self,
        connector: &TlsConnector,
        peer: &Peer,
        peer_ip: Option<IpAddr>,
        verify: bool,
        check: Option<&TrustCheck>,
    ) -> Result<(Client, String, Option<Trust>), String> {
        if !self.io.buffer().is_empty() {
            // Whatever came before the handshake is not protected by it (CVE-2011-0411's mirror).
            return Err("the next server sent more after its 220 to STARTTLS".into());
        }
        let name = match (ServerName::try_from(peer.name.clone()), peer_ip) {
            (Ok(name), _) => name,
            (Err(_), Some(ip)) if !verify => ServerName::from(ip),
            (Err(e), _) => return Err(format!("'{}' cannot be checked: {e}", peer.name)),
        };
        let stream = self.io.into_inner();
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), stream))
            .await
            .map_err(|_| "the TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        let description = match (conn.protocol_version(), conn.negotiated_cipher_suite()) {
            (Some(version), Some(suite)) => format!("{version:?} {:?}", suite.suite()),
            _ => "TLS".to_string(),
        };
        let trust = check.map(|check| check.check(conn.peer_certificates().unwrap_or(&[]), &name));
        Ok((Client::new(Box::new(tls)), description, trust))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_targets_follow_rfc_5321_and_7505() {
        assert_eq!(
            mx_targets("a.test", vec![]).expect("implicit MX"),
            ["a.test"]
        );
        assert_eq!(
            mx_targets(
                "a.test",
                vec![(20, "backup.a.test.".into()), (10, "mx.a.test.".into())]
            )
            .expect("by preference"),
            ["mx.a.test", "backup.a.test"]
        );
        let null = mx_targets("a.test", vec![(0, ".".into())]).expect_err("null MX");
        assert!(null.starts_with("550 5.1.10"), "{null}");
    }

    /// A reply line without end is refused once it is over the limit; nothing waits for its
    /// end (the next server here sends 8 MiB and keeps the connection open).
    #[tokio::test]
    async fn a_reply_line_without_end_is_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let flood = tokio::spawn(async move {
            theirs.write_all(b"220 ").await?;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                theirs.write_all(&chunk).await?;
            }
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        });
        let mut client = Client::new(Box::new(ours));
        let outcome = tokio::time::timeout(Duration::from_secs(30), client.reply())
            .await
            .expect("the reply is given up at the limit, not read to its end");
        let error = outcome.err().expect("a line over the limit is an error");
        assert!(error.contains("too long"), "{error}");
        flood.abort();
    }

    #[test]
    fn smarthost_names_and_extensions() {
        assert_eq!(
            Peer::smarthost("mail.example.net:587").name,
            "mail.example.net"
        );
        assert_eq!(Peer::smarthost("[::1]:25").name, "::1");
        let reply = Reply {
            code: 250,
            text: String::new(),
            lines: vec![
                "mx.test greets you".into(),
                "SIZE 100".into(),
                "starttls".into(),
            ],
        };
        assert!(reply.has_extension("STARTTLS"));
        assert!(!reply.has_extension("AUTH"));
        assert_eq!(dot_stuffed(b".a\nb\n"), b"..a\r\nb\r\n.\r\n");
    }
}
