//! The `mail` plugin: SMTP into Maildir domains, and POP3 out of them.
//!
//! # Layout
//!
//! - `lib.rs`: [`MailPlugin`] (the maker) and [`MailConfig`] (its options, the only serde type),
//!   with the command-line reading that keeps `-u` attached to the `-d` before it.
//! - [`users`]: domains and users: Argon2id password hashes, the password file, and resolving
//!   an address to a Maildir (with `--default` and `--bounce-to-postmaster`).
//! - [`aliases`]: the aliases(5) file with `:include:`, reloaded when a file changes.
//! - [`maildir`]: the Maildir layout, unique file names, and the [`maildir::Deliverer`], which
//!   only acknowledges a message once it is fsynced into `new/` (directory fsyncs are
//!   group-committed).
//! - [`smtp`]: the SMTP session (RFC 5321): commands, ESMTP extensions, the DATA reader that
//!   only ends at CRLF.CRLF.
//! - [`pop3`]: the POP3 session (RFC 1939, 2449): the mailbox lock, UIDL, deletions at QUIT.
//! - [`tls`]: the rustls acceptor from `--certificate`/`--privkey`, the connection type
//!   that STARTTLS and STLS upgrade in place, and the client connector of `--relay-tls`.
//! - [`relay`]: the relay queue (a Maildir of envelope + message files), its worker that
//!   retries with back-off, and bounces (RFC 3464 reports).
//! - [`outbound`]: offering a message to the next server: `--smarthost` or each domain's MX
//!   hosts (DNS from `--relay-resolver` or /etc/resolv.conf), and the SMTP client with
//!   STARTTLS.
//! - [`lines`]: reading CRLF lines with a length limit, shared by both protocols.
//! - [`service`]: [`MailService`], which matches each listener to its protocol and runs sessions.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgMatches, Args, Command, FromArgMatches};
use host::{Endpoint, Plugin, Service};
use serde::{Deserialize, Serialize};

pub mod aliases;
pub mod lines;
pub mod maildir;
pub mod outbound;
pub mod pop3;
pub mod relay;
pub mod service;
pub mod smtp;
pub mod tls;
pub mod users;

/// Runs file work on the runtime's blocking pool; a task that panicked or was cancelled is an
/// error like the work's own.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

pub use service::MailService;

/// Twisted's `mail` tap listens for SMTP on 8025 and POP3 on 8110 unless told otherwise.
pub const DEFAULT_SMTP_PORT: u16 = 8025;
pub const DEFAULT_POP3_PORT: u16 = 8110;
/// 25 MiB, as the issue and Postfix's `message_size_limit` (near enough) say.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;

/// The longest back-off or queue lifetime, in seconds: 100 days, as Postfix limits its own.
pub const MAX_QUEUE_TIME: u64 = 100 * 24 * 60 * 60;

/// Postfix's `minimal_backoff_time`, `maximal_backoff_time` and `maximal_queue_lifetime`.
pub const DEFAULT_MIN_BACKOFF: u64 = 300;
pub const DEFAULT_MAX_BACKOFF: u64 = 4000;
pub const DEFAULT_QUEUE_LIFETIME: u64 = 5 * 24 * 3600;

/// The protocol names a service's listeners are given in `protocols`.
pub const PROTOCOLS: [&str; 3] = ["smtp", "pop3", "pop3s"];

fn tcp(port: u16) -> Endpoint {
    Endpoint::Tcp {
        v6: false,
        port,
        interface: None,
        backlog: None,
    }
}

/// How relay deliveries use STARTTLS towards the next server (`--relay-tls`), after Postfix's
/// `smtp_tls_security_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain text, even when the next server offers STARTTLS.
    None,
    /// STARTTLS when the next server offers it, taking any certificate (opportunistic TLS);
    /// plain text when it offers none or the handshake fails.
    #[default]
    May,
    /// STARTTLS required, with a certificate for the host name that --relay-ca (or the
    /// system's CA certificates) vouches for; otherwise the delivery is deferred.
    Verify,
}

impl std::fmt::Display for RelayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RelayTls::None => "none",
            RelayTls::May => "may",
            RelayTls::Verify => "verify",
        })
    }
}

/// `--relay-resolver`: `IP:PORT`, `[IPv6]:PORT`, or an address alone for port 53.
fn parse_resolver(value: &str) -> Result<SocketAddr, String> {
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    value
        .parse::<SocketAddr>()
        .or_else(|_| bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| "expected IP or IP:PORT, the address of a DNS server".to_string())
}

fn resolvers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    // Each element decoded by itself, so an error's path names it (`relay_resolver[1]`).
    struct Resolver(SocketAddr);
    impl<'de> Deserialize<'de> for Resolver {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = String::deserialize(d)?;
            parse_resolver(&v)
                .map(Resolver)
                .map_err(|e| serde::de::Error::custom(format!("'{v}': {e}")))
        }
    }
    Ok(Vec::<Resolver>::deserialize(d)?
        .into_iter()
        .map(|r| r.0)
        .collect())
}

/// An exclusive flock(2) on a directory, or `None` when someone else holds it: one POP3
/// session per Maildir, one relay worker per queue, across services and processes alike.
/// Held while the descriptor lives.
pub(crate) fn lock_dir(dir: &Path) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A text file read whole, or the line of its first byte that is not UTF-8 (read_to_string's
/// error names no line, and these files are edited by hand).
pub(crate) fn read_text_file(path: &Path) -> std::io::Result<Result<String, usize>> {
    let bytes = host::files::read_small(path)?;
    Ok(String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        e.as_bytes()[..valid]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }))
}

/// The mail plugin's options as the tap stores them.
///
/// The command line (`MailArgs`) is richer: `-d`/`-u` pairs become `domains` and `users`
/// (passwords hashed on the spot), and the endpoints of `--smtp`, `--pop3` and `--pop3s` move
/// into the tap's `listen` list, with `protocols` saying, position by position, which protocol
/// each listener speaks. Keeping the endpoints out of the config means the listen list can be
/// edited (or rewritten to port 0 by a test) without the two disagreeing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Domain name (lowercase) to the directory holding its users' Maildirs.
    pub domains: BTreeMap<String, PathBuf>,
    /// `user@domain` (lowercase) to an Argon2id PHC string. Never a plain password.
    pub users: BTreeMap<String, String>,
    /// `user@domain:password` lines, read when the service starts.
    pub password_file: Option<PathBuf>,
    /// Mail for unknown local users goes to the domain's `postmaster` instead of a 550.
    pub bounce_to_postmaster: bool,
    /// An aliases(5) file, re-read when it changes.
    pub aliases: Option<PathBuf>,
    /// The domain that takes mail for domains it does not know (`-D`).
    pub default_domain: Option<String>,
    /// The protocol of each listener, in the order of the tap's `listen` list: `smtp`, `pop3`
    /// or `pop3s` (POP3 inside TLS from the first byte).
    pub protocols: Vec<String>,
    /// A PEM certificate chain: enables STARTTLS, STLS and `pop3s`.
    pub certificate: Option<PathBuf>,
    /// The PEM private key (default: looked for in the certificate file).
    pub privkey: Option<PathBuf>,
    /// SMTP AUTH PLAIN and LOGIN against the users.
    pub auth: bool,
    /// Passwords without TLS: SMTP AUTH offered in plain text, POP3 USER/PASS before STLS.
    pub allow_plaintext_auth: bool,
    /// The relay queue directory: mail for other domains from local or authenticated clients.
    pub relay: Option<PathBuf>,
    /// Where relayed mail goes, `HOST:PORT`.
    pub smarthost: Option<String>,
    /// Seconds before the first retry of a deferred relay delivery; doubled each time.
    pub relay_min_backoff: u64,
    /// The longest wait between retries, in seconds.
    pub relay_max_backoff: u64,
    /// Seconds a message may stay in the relay queue before it is bounced.
    pub queue_lifetime: u64,
    /// STARTTLS towards the next server.
    pub relay_tls: RelayTls,
    /// PEM CA certificates that `relay_tls: verify` trusts instead of the system's.
    pub relay_ca: Option<PathBuf>,
    /// DNS servers for MX lookups instead of those of /etc/resolv.conf. Read as the option
    /// reads them (an address alone is port 53), so a hand-edited tap or the shell's `set`
    /// takes what `--relay-resolver` takes.
    #[serde(deserialize_with = "resolvers")]
    pub relay_resolver: Vec<SocketAddr>,
    /// The name in the greeting and Received headers; empty means the system's host name.
    pub hostname: String,
    /// The largest message SMTP accepts, in octets.
    pub max_message_size: u64,
    /// How deliveries are flushed to disk before the 250 (`--fsync`).
    pub fsync: maildir::Flush,
    /// Endpoints from the command line, on their way to the tap's listen list.
    #[serde(skip)]
    pub listen: Vec<Endpoint>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            domains: BTreeMap::new(),
            users: BTreeMap::new(),
            password_file: None,
            bounce_to_postmaster: false,
            aliases: None,
            default_domain: None,
            protocols: vec!["smtp".into(), "pop3".into()],
            certificate: None,
            privkey: None,
            relay: None,
            smarthost: None,
            relay_min_backoff: DEFAULT_MIN_BACKOFF,
            relay_max_backoff: DEFAULT_MAX_BACKOFF,
            queue_lifetime: DEFAULT_QUEUE_LIFETIME,
            relay_tls: RelayTls::May,
            relay_ca: None,
            relay_resolver: Vec::new(),
            auth: false,
            allow_plaintext_auth: false,
            hostname: String::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            fsync: maildir::Flush::default(),
            listen: Vec::new(),
        }
    }
}

/// The command line of `mktap mail` / `twistd mail`, named as in Twisted's mail tap.
#[derive(Debug, Clone, Args)]
struct MailArgs {
    /// A domain and the directory of its users' Maildirs (repeatable).
    #[arg(short = 'd', long = "maildirdbmdomain", value_name = "NAME=PATH")]
    domains: Vec<String>,

    /// A user of the last domain given before it; their password is stored as an Argon2id hash
    /// (repeatable).
    #[arg(short = 'u', long = "user", value_name = "USER=PASS")]
    users: Vec<String>,

    /// A file of `user@domain:password` lines, read when the service starts.
    #[arg(long = "passwordfile", value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Deliver mail for unknown users to the domain's postmaster.
    #[arg(short = 'b', long = "bounce-to-postmaster")]
    bounce_to_postmaster: bool,

    /// An aliases(5) file (addresses and :include:), re-read when it changes.
    #[arg(short = 'A', long = "aliases", value_name = "FILE")]
    aliases: Option<PathBuf>,

    /// The last domain given takes mail for unknown domains.
    #[arg(short = 'D', long = "default")]
    default: bool,

    /// Where SMTP listens (default tcp:8025).
    #[arg(short = 's', long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    smtp: Option<Endpoint>,

    /// Where POP3 listens (default tcp:8110).
    #[arg(short = 'p', long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    pop3: Option<Endpoint>,

    /// Do not serve SMTP.
    #[arg(long = "no-smtp", conflicts_with = "smtp")]
    no_smtp: bool,

    /// Do not serve POP3.
    #[arg(long = "no-pop3", conflicts_with = "pop3")]
    no_pop3: bool,

    /// Where POP3 over TLS listens (needs --certificate).
    #[arg(long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    pop3s: Option<Endpoint>,

    /// A PEM certificate (chain) for STARTTLS, STLS and --pop3s; may hold the key too.
    #[arg(short = 'c', long, value_name = "PEM")]
    certificate: Option<PathBuf>,

    /// The PEM private key of --certificate.
    #[arg(long, value_name = "PEM", requires = "certificate")]
    privkey: Option<PathBuf>,

    /// Offer SMTP AUTH PLAIN and LOGIN against the users (under TLS only, unless
    /// --allow-plaintext-auth).
    #[arg(long)]
    auth: bool,

    /// Take passwords without TLS: SMTP AUTH before STARTTLS, and POP3 USER/PASS before STLS
    /// when a certificate is configured.
    #[arg(long = "allow-plaintext-auth")]
    allow_plaintext_auth: bool,

    /// Queue mail for other domains from local or authenticated clients in this directory and
    /// relay it (to --smarthost, or by MX lookup).
    #[arg(long, value_name = "QUEUEDIR")]
    relay: Option<PathBuf>,

    /// Where relayed mail is delivered, HOST:PORT (default: each domain's MX hosts, port 25).
    #[arg(long, value_name = "HOST:PORT", requires = "relay")]
    smarthost: Option<String>,

    /// Seconds before the first retry of a deferred relay delivery (doubled each time).
    #[arg(long = "relay-min-backoff", value_name = "SECONDS", default_value_t = DEFAULT_MIN_BACKOFF)]
    relay_min_backoff: u64,

    /// The longest wait between relay retries, in seconds.
    #[arg(long = "relay-max-backoff", value_name = "SECONDS", default_value_t = DEFAULT_MAX_BACKOFF)]
    relay_max_backoff: u64,

    /// Seconds a message may wait in the relay queue before it is bounced to its sender.
    #[arg(long = "queue-lifetime", value_name = "SECONDS", default_value_t = DEFAULT_QUEUE_LIFETIME)]
    queue_lifetime: u64,

    /// STARTTLS towards the next server: none; may (when offered, any certificate); verify
    /// (required, the certificate checked against --relay-ca or the system's CAs).
    #[arg(long = "relay-tls", value_name = "LEVEL", value_enum, default_value_t = RelayTls::May)]
    relay_tls: RelayTls,

    /// PEM CA certificates that --relay-tls verify trusts (default: the system's, or those of
    /// $SSL_CERT_FILE and $SSL_CERT_DIR when set).
    #[arg(long = "relay-ca", value_name = "FILE", requires = "relay")]
    relay_ca: Option<PathBuf>,

    /// A DNS server for MX lookups, IP[:PORT], instead of those in /etc/resolv.conf
    /// (repeatable).
    #[arg(long = "relay-resolver", value_name = "IP:PORT", value_parser = parse_resolver, requires = "relay")]
    relay_resolver: Vec<SocketAddr>,

    /// The host name in the greeting and Received headers (default: the system's).
    #[arg(short = 'H', long, value_name = "NAME")]
    hostname: Option<String>,

    /// The largest message accepted, in octets.
    #[arg(long = "max-message-size", value_name = "OCTETS", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: u64,

    /// How a message is flushed to disk before its 250: `filesystem` (one syncfs for a group
    /// of deliveries) or `per-file` (fsync of each file, then of its directory, as Postfix;
    /// never makes other files' dirty data wait).
    #[arg(long, value_name = "HOW", value_enum, default_value_t = maildir::Flush::default())]
    fsync: maildir::Flush,
}

impl Args for MailConfig {
    fn augment_args(cmd: Command) -> Command {
        MailArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        MailArgs::augment_args_for_update(cmd)
    }
}

fn usage_error(message: String) -> clap::Error {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, message + "\n")
}

impl FromArgMatches for MailConfig {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let args = MailArgs::from_arg_matches(matches)?;
        let mut config = MailConfig {
            password_file: args.password_file,
            bounce_to_postmaster: args.bounce_to_postmaster,
            aliases: args.aliases,
            hostname: args.hostname.unwrap_or_default(),
            max_message_size: args.max_message_size,
            fsync: args.fsync,
            protocols: Vec::new(),
            relay: args.relay,
            smarthost: args.smarthost,
            relay_min_backoff: args.relay_min_backoff,
            relay_max_backoff: args.relay_max_backoff,
            queue_lifetime: args.queue_lifetime,
            relay_tls: args.relay_tls,
            relay_ca: args.relay_ca,
            relay_resolver: args.relay_resolver,
            certificate: args.certificate,
            privkey: args.privkey,
            auth: args.auth,
            allow_plaintext_auth: args.allow_plaintext_auth,
            ..MailConfig::default()
        };

        // `-u` belongs to the `-d` before it, as in Twisted: interleave by argument position.
        let positions = |id: &str| -> Vec<usize> {
            matches
                .indices_of(id)
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        let mut events: Vec<(usize, bool, &String)> = positions("domains")
            .into_iter()
            .zip(&args.domains)
            .map(|(i, d)| (i, true, d))
            .chain(
                positions("users")
                    .into_iter()
                    .zip(&args.users)
                    .map(|(i, u)| (i, false, u)),
            )
            .collect();
        events.sort_by_key(|(i, _, _)| *i);
        let mut last_domain: Option<String> = None;
        for (_, is_domain, value) in events {
            if is_domain {
                let (name, path) = value.split_once('=').ok_or_else(|| {
                    usage_error(format!("--maildirdbmdomain '{value}': expected NAME=PATH"))
                })?;
                let name = name.to_ascii_lowercase();
                if config.domains.contains_key(&name) {
                    return Err(usage_error(format!(
                        "--maildirdbmdomain {name}: given twice"
                    )));
                }
                config.domains.insert(name.clone(), PathBuf::from(path));
                last_domain = Some(name);
            } else {
                let (user, password) = value.split_once('=').ok_or_else(|| {
                    // The value holds a password: name the option, never echo the value.
                    usage_error("--user: expected USER=PASS".to_string())
                })?;
                let domain = last_domain.as_ref().ok_or_else(|| {
                    usage_error(format!(
                        "--user {user}: give a domain (-d NAME=PATH) before its users"
                    ))
                })?;
                if password.is_empty() {
                    return Err(usage_error(format!("--user {user}: empty password")));
                }
                let address = format!("{}@{domain}", user.to_ascii_lowercase());
                if config.users.contains_key(&address) {
                    return Err(usage_error(format!("--user {address}: given twice")));
                }
                let hash = users::hash_password(password)
                    .map_err(|e| usage_error(format!("--user {user}: {e}")))?;
                config.users.insert(address, hash);
            }
        }
        if args.default {
            config.default_domain = Some(last_domain.ok_or_else(|| {
                usage_error("--default: give a domain (-d NAME=PATH) first".to_string())
            })?);
        }

        if !args.no_smtp {
            config.protocols.push("smtp".into());
            config
                .listen
                .push(args.smtp.unwrap_or_else(|| tcp(DEFAULT_SMTP_PORT)));
        }
        if !args.no_pop3 {
            config.protocols.push("pop3".into());
            config
                .listen
                .push(args.pop3.unwrap_or_else(|| tcp(DEFAULT_POP3_PORT)));
        }
        if let Some(endpoint) = args.pop3s {
            config.protocols.push("pop3s".into());
            config.listen.push(endpoint);
        }
        Ok(config)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = MailConfig::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Whether one of two directories is the other or inside it (lexically, made absolute
/// against the current directory, then through their real paths where they exist).
fn overlap(a: &Path, b: &Path) -> bool {
    let forms = |p: &Path| {
        let mut forms = Vec::new();
        if let Ok(absolute) = std::path::absolute(p) {
            forms.push(absolute.components().collect::<PathBuf>());
        }
        if let Ok(real) = p.canonicalize() {
            forms.push(real);
        }
        forms
    };
    let (a, b) = (forms(a), forms(b));
    a.iter()
        .any(|a| b.iter().any(|b| a.starts_with(b) || b.starts_with(a)))
}

/// The checks of `--relay-tls`, `--relay-ca` and `--relay-resolver`.
fn relay_problems(config: &MailConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if config.relay.is_none() {
        if config.relay_tls != RelayTls::May {
            problems.push("--relay-tls: needs --relay QUEUEDIR".to_string());
        }
        if config.relay_ca.is_some() {
            problems.push("--relay-ca: needs --relay QUEUEDIR".to_string());
        }
        if !config.relay_resolver.is_empty() {
            problems.push("--relay-resolver: needs --relay QUEUEDIR".to_string());
        }
        return problems;
    }
    if config.relay_ca.is_some() && config.relay_tls != RelayTls::Verify {
        problems.push(format!(
            "--relay-ca: only used with --relay-tls verify (not {})",
            config.relay_tls
        ));
    } else if config.relay_tls == RelayTls::Verify {
        if let Err(e) = tls::connector(true, config.relay_ca.as_deref()) {
            problems.push(e.to_string());
        }
    }
    if !config.relay_resolver.is_empty() && config.smarthost.is_some() {
        problems.push(
            "--relay-resolver: not used with --smarthost (it answers the MX lookups)".to_string(),
        );
    }
    for server in &config.relay_resolver {
        if server.port() == 0 {
            problems.push(format!("--relay-resolver {server}: port 0"));
        }
    }
    problems
}

/// The maker of the mail service.
pub struct MailPlugin;

impl Plugin for MailPlugin {
    const NAME: &'static str = "mail";
    const DESCRIPTION: &'static str = "An SMTP server delivering into Maildir domains, and POP3";
    type Config = MailConfig;

    fn take_listen(config: &mut MailConfig) -> Vec<Endpoint> {
        std::mem::take(&mut config.listen)
    }

    fn default_listen() -> Vec<Endpoint> {
        vec![tcp(DEFAULT_SMTP_PORT), tcp(DEFAULT_POP3_PORT)]
    }

    /// `protocols` pairs with the listen list, so a new endpoint says what it speaks.
    fn endpoint_added(config: &mut MailConfig, kind: Option<&str>) -> Result<(), String> {
        match kind {
            Some(kind @ ("smtp" | "pop3" | "pop3s")) => {
                config.protocols.push(kind.to_string());
                Ok(())
            }
            Some(other) => Err(format!(
                "unknown protocol '{other}' (known: smtp, pop3, pop3s)"
            )),
            None => Err("say what the endpoint speaks: smtp, pop3 or pop3s".to_string()),
        }
    }

    fn endpoint_removed(config: &mut MailConfig, position: usize) {
        if position < config.protocols.len() {
            config.protocols.remove(position);
        }
    }

    fn validate(config: &MailConfig, listen: &[Endpoint]) -> Vec<String> {
        let mut problems = Vec::new();
        if config.domains.is_empty() {
            problems.push("--maildirdbmdomain: no domain given (-d NAME=PATH)".to_string());
        }
        for (name, path) in &config.domains {
            if !users::is_domain_name(name) {
                problems.push(format!("--maildirdbmdomain '{name}': not a domain name"));
            }
            if path.as_os_str().is_empty() {
                problems.push(format!("--maildirdbmdomain {name}: no path"));
            } else if path.symlink_metadata().is_ok() && !path.is_dir() {
                problems.push(format!(
                    "--maildirdbmdomain {name}: {} is not a directory",
                    path.display()
                ));
            }
        }
        for (address, hash) in &config.users {
            match address.split_once('@') {
                Some((user, domain)) => {
                    if !users::is_user_name(user) {
                        problems.push(format!(
                            "--user {address}: a user name is letters, digits and . _ + - \
                             (not starting with a dot)"
                        ));
                    }
                    if !config.domains.contains_key(domain) {
                        problems.push(format!("--user {address}: no domain '{domain}'"));
                    }
                }
                None => problems.push(format!("--user {address}: expected user@domain")),
            }
            if !users::is_password_hash(hash) {
                problems.push(format!(
                    "--user {address}: the stored password is not an Argon2 PHC string"
                ));
            }
        }
        if let Some(domain) = &config.default_domain {
            if !config.domains.contains_key(domain) {
                problems.push(format!("--default: no domain '{domain}'"));
            }
        }
        for (option, path) in [
            ("--passwordfile", &config.password_file),
            ("--aliases", &config.aliases),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    problems.push(format!("{option} {}: not a readable file", path.display()));
                }
            }
        }
        if let Some(path) = config.aliases.as_deref().filter(|p| p.is_file()) {
            if let Err(e) = aliases::Aliases::check(path) {
                problems.push(e.to_string());
            }
        }
        if !config.hostname.is_empty() && !users::is_domain_name(&config.hostname) {
            problems.push(format!("--hostname '{}': not a host name", config.hostname));
        }
        if config.max_message_size == 0 {
            problems.push("--max-message-size: must be above 0".to_string());
        }
        for protocol in &config.protocols {
            if !PROTOCOLS.contains(&protocol.as_str()) {
                problems.push(format!(
                    "protocols: unknown protocol '{protocol}' (known: smtp, pop3, pop3s)"
                ));
            }
        }
        if config.protocols.iter().any(|p| p == "pop3s") && config.certificate.is_none() {
            problems.push("--pop3s: needs --certificate".to_string());
        }
        if config.auth && config.certificate.is_none() && !config.allow_plaintext_auth {
            problems.push(
                "--auth: AUTH is only offered under TLS: give --certificate (or \
                 --allow-plaintext-auth)"
                    .to_string(),
            );
        }
        if config.privkey.is_some() && config.certificate.is_none() {
            problems.push("--privkey: needs --certificate".to_string());
        }
        match (&config.relay, &config.smarthost) {
            (Some(queue), Some(smarthost)) => {
                if queue.as_os_str().is_empty() {
                    problems.push("--relay: no queue directory".to_string());
                }
                let port = smarthost
                    .rsplit_once(':')
                    .map(|(host, port)| (host, port.parse::<u16>()));
                if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                    problems.push(format!("--smarthost '{smarthost}': expected HOST:PORT"));
                }
            }
            (Some(queue), None) => {
                if queue.as_os_str().is_empty() {
                    problems.push("--relay: no queue directory".to_string());
                }
            }
            (None, Some(_)) => problems.push("--smarthost: needs --relay QUEUEDIR".to_string()),
            (None, None) => {}
        }
        if let Some(queue) = &config.relay {
            for (name, path) in &config.domains {
                if overlap(queue, path) {
                    problems.push(format!(
                        "--relay {}: shares files with domain {name}'s {}; the queue needs a \
                         directory of its own",
                        queue.display(),
                        path.display()
                    ));
                }
            }
            if config.default_domain.is_some() {
                problems.push(
                    "--relay: with --default every domain is delivered here, so nothing would \
                     be relayed; give one of them"
                        .to_string(),
                );
            }
        }
        if config.relay_min_backoff == 0 {
            problems.push("--relay-min-backoff: must be at least 1 second".to_string());
        }
        if config.relay_max_backoff < config.relay_min_backoff {
            problems.push("--relay-max-backoff: below --relay-min-backoff".to_string());
        }
        // Postfix's limit for its queue lifetimes; times much further off overflow a clock.
        for (option, seconds) in [
            ("--relay-min-backoff", config.relay_min_backoff),
            ("--relay-max-backoff", config.relay_max_backoff),
            ("--queue-lifetime", config.queue_lifetime),
        ] {
            if seconds > MAX_QUEUE_TIME {
                problems.push(format!(
                    "{option} {seconds}: must be at most {MAX_QUEUE_TIME} seconds (100 days)"
                ));
            }
        }
        problems.extend(relay_problems(config));
        if let Some(certificate) = &config.certificate {
            if let Err(e) = tls::acceptor(certificate, config.privkey.as_deref()) {
                problems.push(e.to_string());
            }
        }
        if config.protocols.is_empty() {
            problems.push("nothing to serve: both --no-smtp and --no-pop3".to_string());
        }
        // With nothing to serve, the endpoints left over are the same problem, said once.
        if !config.protocols.is_empty() && config.protocols.len() != listen.len() {
            problems.push(format!(
                "listen: {} endpoints for {} protocols ({}); they pair up in order",
                listen.len(),
                config.protocols.len(),
                config.protocols.join(", ")
            ));
        }
        problems
    }

    fn build(
        config: MailConfig,
        _state: Option<serde_json::Value>,
    ) -> Result<Arc<dyn Service>, String> {
        Ok(Arc::new(MailService::new(&config)?))
    }

    fn holds_secrets(config: &MailConfig) -> bool {
        !config.users.is_empty()
    }

    fn paths(config: &MailConfig) -> Vec<(&'static str, PathBuf)> {
        let mut paths: Vec<(&'static str, PathBuf)> = config
            .domains
            .values()
            .map(|maildir| ("--maildirdbmdomain", maildir.clone()))
            .collect();
        for (option, path) in [
            ("--passwordfile", &config.password_file),
            ("--aliases", &config.aliases),
            ("--certificate", &config.certificate),
            ("--privkey", &config.privkey),
            ("--relay", &config.relay),
            ("--relay-ca", &config.relay_ca),
        ] {
            paths.extend(path.clone().map(|p| (option, p)));
        }
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_names_resolvers_as_the_option_does() {
        let config: MailConfig = serde_json::from_value(serde_json::json!({
            "relay_resolver": ["127.0.0.1", "[::1]", "127.0.0.2:5353"]
        }))
        .expect("decodes");
        let want: Vec<SocketAddr> = ["127.0.0.1:53", "[::1]:53", "127.0.0.2:5353"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        assert_eq!(config.relay_resolver, want);
        // Written back with their ports, and read again the same.
        let again: MailConfig =
            serde_json::from_value(serde_json::to_value(&config).expect("encodes"))
                .expect("decodes");
        assert_eq!(again.relay_resolver, want);
        let bad = serde_json::from_value::<MailConfig>(serde_json::json!({
            "relay_resolver": ["dns.example"]
        }))
        .expect_err("a name is not an address");
        assert!(
            bad.to_string().contains("'dns.example': expected IP"),
            "{bad}"
        );

        // What the shell's `set` keeps (and `show` prints) is the config as the plugin writes it.
        let spec = host::ServiceSpec {
            name: "mail".into(),
            plugin: "mail".into(),
            listen: Vec::new(),
            config: serde_json::json!({"relay_resolver": ["127.0.0.1"]}),
            state: None,
        };
        let maker = host::plugin::PluginMaker::<MailPlugin>::default();
        let kept = host::Maker::normalize(&maker, &spec).expect("normalizes");
        assert_eq!(kept["relay_resolver"], serde_json::json!(["127.0.0.1:53"]));
    }
}
