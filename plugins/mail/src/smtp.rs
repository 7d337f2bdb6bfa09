//! The SMTP server session (RFC 5321), with the ESMTP extensions SIZE, 8BITMIME, PIPELINING and
//! ENHANCEDSTATUSCODES.
//!
//! The session reads one line at a time with a length limit and answers every command, so no
//! input ends it except QUIT, a closed connection, a timeout, too many errors, or the service
//! stopping (a 421 to a session waiting for a command; a message in flight is finished first,
//! unless it is still arriving at the drain deadline: then a 421 too).
//!
//! DATA ends only at CRLF "." CRLF, with the CRLF before the dot really ending the previous line.
//! A message with a bare CR or bare LF anywhere is refused whole (as Postfix's
//! `smtpd_forbid_bare_newline = reject` does): every shape of SMTP smuggling depends on some
//! server reading one of those as a line end, and refusing them means nothing after a fake end
//! is ever taken as a command or delivered as a message.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use host::net::Peer;
use host::ServiceContext;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tracing::field::display;

use crate::aliases::Aliases;
use crate::lines::{buffered_line, read_line, trim_eol, write_all_within, Line};
use crate::maildir::Deliverer;
use crate::relay::Relay;
use crate::tls::{upgrade_buffered, Conn};
use crate::users::{is_domain_name, verify_password, Directory, Mailbox, Route};

/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF. Command lines get the
/// same limit (the RFC's 512 is a floor servers may exceed).
pub const MAX_LINE: usize = 1000;
/// RFC 5321 4.5.3.1.3: a reverse- or forward-path is at most 256 octets, brackets included.
pub const MAX_PATH: usize = 256;
/// RFC 5321 4.5.3.1.2: a domain is at most 255 octets (the longest EHLO/HELO name taken).
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients; more get 452.
pub const MAX_RECIPIENTS: usize = 100;
/// RFC 5321 4.5.3.2.7: at least five minutes for a command; the same for each line of DATA.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// A message that already passed this many Received headers is in a loop (Postfix's
/// `hopcount_limit`).
pub const MAX_HOPS: usize = 50;
/// After this many refused commands the client is cut off (Postfix's `smtpd_hard_error_limit`).
pub const MAX_ERRORS: u32 = 20;

/// What every SMTP session of a service shares.
pub struct Smtp {
    pub directory: Directory,
    pub aliases: Option<Aliases>,
    pub hostname: String,
    pub max_message_size: u64,
    pub deliverer: Deliverer,
    /// STARTTLS is offered when there is a certificate.
    pub tls: Option<TlsAcceptor>,
    /// AUTH PLAIN and LOGIN (`--auth`)...
    pub auth: bool,
    /// ...offered without TLS too (`--allow-plaintext-auth`).
    pub allow_plaintext_auth: bool,
    /// A real hash to verify unknown users against, so they take as long as known ones.
    pub decoy_hash: String,
    /// The relay queue (`--relay`) for loopback and authenticated clients.
    pub relay: Option<Arc<Relay>>,
}

impl Smtp {
    fn offers_auth(&self, tls: bool) -> bool {
        self.auth && (tls || self.allow_plaintext_auth)
    }
}

/// How long a failed AUTH waits before its answer, to slow down password guessing.
pub const FAILED_AUTH_DELAY: Duration = Duration::from_secs(1);

/// Base64 as SASL uses it; `=` alone is an empty response.
fn decode(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// The refusal of an AUTH response that is not base64 (or, for LOGIN, not of UTF-8 text).
const UNDECODABLE: &str = "501 5.5.2 cannot decode the response: base64 of UTF-8 text expected";

/// A PLAIN message (RFC 4616): authzid NUL authcid NUL password, as the user, the password,
/// and whether the authzid allows the login (empty, or the user itself: any other fails as a
/// wrong password does, 535 after the same wait).
fn parse_plain(plain: &[u8]) -> Option<(String, String, bool)> {
    let mut parts = plain.splitn(3, |&b| b == 0);
    let authzid = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let allowed = authzid.is_empty() || authzid.eq_ignore_ascii_case(&user);
    Some((user, password, allowed))
}

/// Queue ids for Received headers and logs: the time, the process and a counter, so two
/// servers on one host (a relay and its next hop) never write the same id.
static QUEUE_ID: AtomicU64 = AtomicU64::new(0);

pub(crate) fn queue_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{seconds:X}{:06X}{:06X}",
        std::process::id() & 0xFF_FFFF,
        QUEUE_ID.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF
    )
}

/// Why a session ended early.
enum End {
    /// The connection closed, failed or timed out; nothing more can be said.
    Gone,
    /// The session is over; the reply has been queued.
    Closing,
}

struct Session {
    io: BufReader<Conn>,
    out: Vec<u8>,
    /// The command line being read or handled.
    line: Vec<u8>,
    /// A line read while a command is handled: of a message, or an AUTH exchange.
    text: Vec<u8>,
    /// When the client has taken too long to send the line awaited ([`COMMAND_TIMEOUT`]). One
    /// timer for the session, moved on at each wait: moving a deadline later is a store, while
    /// a new timer for every line is an insertion into the runtime's timer wheel and a removal
    /// (and wakes the runtime's driver whenever the wheel was empty).
    deadline: Pin<Box<Sleep>>,
    /// Its service's stop signals: a line awaited in a message or an AUTH exchange is given up
    /// with a 421 when the drain deadline passes.
    ctx: ServiceContext,
    peer: Peer,
    helo: Option<String>,
    esmtp: bool,
    /// `Some("")` is the null reverse-path of bounces.
    sender: Option<String>,
    /// Each accepted RCPT's address and mailbox; an alias adds one entry per mailbox.
    recipients: Vec<(String, Mailbox)>,
    /// The address of each accepted RCPT (what the 100-recipient limit counts).
    accepted: Vec<String>,
    /// Accepted addresses in other domains, for the relay queue.
    relayed: Vec<String>,
    errors: u32,
    /// The user that passed AUTH, as `user@domain`.
    authenticated: Option<String>,
}

/// Runs one SMTP session to its end.
pub async fn session(smtp: Arc<Smtp>, ctx: ServiceContext, stream: Conn, peer: Peer) {
    let mut s = Session {
        io: BufReader::new(stream),
        out: Vec::with_capacity(512),
        line: Vec::with_capacity(128),
        text: Vec::with_capacity(128),
        deadline: Box::pin(tokio::time::sleep(COMMAND_TIMEOUT)),
        ctx: ctx.clone(),
        peer,
        helo: None,
        esmtp: false,
        sender: None,
        recipients: Vec::new(),
        accepted: Vec::new(),
        relayed: Vec::new(),
        errors: 0,
        authenticated: None,
    };
    s.reply(&format!("220 {} ESMTP taphost", smtp.hostname));
    loop {
        // A pipelined command already here is taken at once; the replies so far wait for
        // the last of the batch.
        let read = match buffered_line(&mut s.io, MAX_LINE, &mut s.line) {
            Some(line) => Ok(Ok(line)),
            None => {
                if s.io.buffer().is_empty() && s.flush().await.is_err() {
                    return;
                }
                let wait = wait_line(&mut s.io, s.deadline.as_mut(), MAX_LINE, &mut s.line, &ctx);
                tokio::select! {
                    biased;
                    read = wait => read,
                    () = ctx.stopping() => {
                        s.reply("421 4.3.2 service shutting down, try again later");
                        break;
                    }
                }
            }
        };
        match read {
            Err(stalled) => {
                s.reply(&stalled.reply("waiting for a command"));
                break;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => {
                s.refuse("500 5.5.2 line too long");
                continue;
            }
            Ok(Ok(Line::Complete)) => {}
        }
        // The line is lent out while its command runs (which reads others into `text`).
        let line = std::mem::take(&mut s.line);
        let outcome = s
            .command(&smtp, &String::from_utf8_lossy(trim_eol(&line)))
            .await;
        s.line = line;
        match outcome {
            Ok(()) => {}
            Err(End::Closing) => break,
            Err(End::Gone) => return,
        }
        if s.errors >= MAX_ERRORS {
            s.reply("421 4.7.0 too many errors, closing the connection");
            break;
        }
    }
    let _ = s.flush().await;
    let _ = s.io.get_mut().shutdown().await;
}

/// Why no line came.
enum Stalled {
    /// The client sent nothing for [`COMMAND_TIMEOUT`].
    TimedOut,
    /// The service's drain deadline passed (a session waiting for a command was already told
    /// at the stop itself).
    Aborted,
}

impl Stalled {
    /// The 421 that ends the session, for a wait on `what`.
    fn reply(&self, what: &str) -> String {
        match self {
            Stalled::TimedOut => format!("421 4.4.2 timeout {what}"),
            Stalled::Aborted => "421 4.3.2 service shutting down, try again later".to_string(),
        }
    }
}

/// Reads a line of at most `max` octets into `out` ([`read_line`]), for at most
/// [`COMMAND_TIMEOUT`] from now and no later than the service's drain deadline.
async fn wait_line(
    io: &mut BufReader<Conn>,
    mut deadline: Pin<&mut Sleep>,
    max: usize,
    out: &mut Vec<u8>,
    ctx: &ServiceContext,
) -> Result<std::io::Result<Line>, Stalled> {
    deadline
        .as_mut()
        .reset(tokio::time::Instant::now() + COMMAND_TIMEOUT);
    tokio::select! {
        biased;
        read = read_line(io, max, out) => Ok(read),
        () = deadline => Err(Stalled::TimedOut),
        () = ctx.aborted() => Err(Stalled::Aborted),
    }
}

/// The name of a header field that `line` starts (RFC 5322 2.2: printable ASCII but the colon,
/// then a colon; the obsolete syntax of 4.5.3 lets blanks come before the colon, and Postfix
/// keeps such a line a header field too); `None` when it is no header field.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let end = line
        .iter()
        .position(|&b| b == b':' || !(b'!'..=b'~').contains(&b))?;
    let colon = end
        + line[end..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    (end > 0 && line.get(colon) == Some(&b':')).then(|| &line[..end])
}

/// `verb` in upper case, in `buffer`; empty if longer than any verb.
fn uppercase_verb<'a>(verb: &str, buffer: &'a mut [u8; 8]) -> &'a str {
    let Some(upper) = buffer.get_mut(..verb.len()) else {
        return "";
    };
    upper.copy_from_slice(verb.as_bytes());
    upper.make_ascii_uppercase();
    std::str::from_utf8(upper).unwrap_or("")
}

/// Relay rights: a local client (loopback or a Unix socket), or an authenticated one.
fn may_relay(peer: &Peer, authenticated: bool) -> bool {
    authenticated || peer.ip().is_none_or(|ip| ip.is_loopback())
}

/// Splits `FROM:<addr> PARAMS` after its keyword; `None` if the keyword is missing.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start())
}

/// A reverse- or forward-path: `<local@domain>` (a source route is dropped), or `<>` when
/// `allow_null`; returns the address and the parameters after it. The local part may be a
/// quoted string (RFC 5321 4.1.2, spaces and all); one that needs no quotes loses them, as
/// Postfix does (`"alice"@example.com` is alice's), and so does a trailing dot of the domain.
/// An address without the angle brackets is taken too, up to the first space, as Postfix
/// takes it by default (`strict_rfc821_envelopes = no`): RFC 5321 wants the brackets, but
/// some scripts and appliances leave them out. A path over RFC 5321 4.5.3.1.3's 256 octets
/// (brackets and source route included) is refused, which keeps the `Return-Path:` and
/// `for <...>` header lines made of it within RFC 5322's 998, and so is a domain that is an
/// address literal of no valid address (`[999.1.1.1]`).
fn parse_path(rest: &str, allow_null: bool) -> Result<(String, &str), PathError> {
    let (inside, params) = match rest.strip_prefix('<') {
        Some(rest) => {
            // The path ends at the first `>` outside a quoted string.
            let (mut quoted, mut escaped) = (false, false);
            let end = rest.bytes().position(|b| {
                match (escaped, quoted, b) {
                    (true, ..) => escaped = false,
                    (false, true, b'\\') => escaped = true,
                    (false, _, b'"') => quoted = !quoted,
                    (false, false, b'>') => return true,
                    _ => {}
                }
                false
            });
            let end = end.ok_or(PathError::Syntax)?;
            (&rest[..end], &rest[end + 1..])
        }
        None => {
            let end = rest.find(' ').unwrap_or(rest.len());
            let inside = &rest[..end];
            // `<>` has no bracket-less form, and a bracket of it is no address.
            if inside.is_empty() || inside.contains(['<', '>']) {
                return Err(PathError::Syntax);
            }
            (inside, &rest[end..])
        }
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(PathError::Syntax);
    }
    if inside.len() + 2 > MAX_PATH {
        return Err(PathError::TooLong);
    }
    let inside = match inside.strip_prefix('@') {
        Some(routed) => routed.split_once(':').ok_or(PathError::Syntax)?.1,
        None => inside,
    };
    if inside.is_empty() {
        return match allow_null {
            true => Ok((String::new(), params.trim())),
            false => Err(PathError::Syntax),
        };
    }
    let (local, domain) = match inside.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (inside, None),
    };
    let plain = |text: &str| {
        !text
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b"<>\"".contains(&b))
    };
    let local = match local.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(quoted) => unquote(quoted).ok_or(PathError::Syntax)?,
        None if plain(local) && !local.is_empty() => local.to_string(),
        None => return Err(PathError::Syntax),
    };
    let address = match domain {
        Some(domain) => {
            let domain = domain
                .strip_suffix('.')
                .filter(|d| !d.is_empty())
                .unwrap_or(domain);
            if domain.is_empty() || !plain(domain) {
                return Err(PathError::Syntax);
            }
            if domain.starts_with('[') && !is_address_literal(domain) {
                return Err(PathError::BadLiteral);
            }
            format!("{local}@{domain}")
        }
        None => local,
    };
    Ok((address, params.trim()))
}

/// Why [`parse_path`] refused a path.
#[derive(Debug, PartialEq, Eq)]
enum PathError {
    Syntax,
    /// Over [`MAX_PATH`].
    TooLong,
    /// A domain in brackets that is no IPv4 or `IPv6:` address.
    BadLiteral,
}

impl PathError {
    /// The reply, with the enhanced code for a bad sender (5.1.7) or recipient (5.1.3)
    /// address (RFC 3463), and `usage` for a syntax error.
    fn reply(&self, code: &str, usage: &str) -> String {
        match self {
            PathError::Syntax => format!("501 {code} syntax: {usage}"),
            PathError::TooLong => {
                format!("501 {code} path too long (at most {MAX_PATH} octets with the brackets)")
            }
            PathError::BadLiteral => format!(
                "501 {code} bad address literal after the @: [192.0.2.1] or [IPv6:2001:db8::1]"
            ),
        }
    }
}

/// An RFC 5321 4.1.3 address literal of an IPv4 or IPv6 address: `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]` (the general, tagged form names no address we could reach).
fn is_address_literal(text: &str) -> bool {
    let Some(inside) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    match inside.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inside[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inside.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// Why an EHLO/HELO name cannot be taken (it goes into `Received: from NAME`), as the reply;
/// `None` when it can: a name of letters, digits, '.', '-' and '_' (which real clients put in
/// their names, though DNS host names have none), or an address literal, of at most 255
/// octets (RFC 5321 4.5.3.1.2's longest domain).
fn helo_refusal(verb: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("501 5.5.4 syntax: {verb} hostname"));
    }
    if name.len() > MAX_DOMAIN {
        return Some(format!(
            "501 5.5.2 {verb} name too long (at most {MAX_DOMAIN} octets)"
        ));
    }
    if name.starts_with('[') {
        return (!is_address_literal(name)).then(|| {
            format!(
                "501 5.5.2 invalid address literal in {verb}: [192.0.2.1] or [IPv6:2001:db8::1]"
            )
        });
    }
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    (!name.bytes().all(valid)).then(|| {
        format!(
            "501 5.5.2 invalid {verb} name: a domain name (letters, digits, '.', '-', '_') \
             or an address literal"
        )
    })
}

/// The local part written by a quoted string's content (RFC 5321 qtextSMTP and
/// quoted-pairSMTP): bare if it is a dot-string that needs no quotes, else quoted again as it
/// came; `None` for characters a quoted string may not hold.
fn unquote(content: &str) -> Option<String> {
    let mut text = String::with_capacity(content.len());
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => chars.next()?,
            '"' => return None,
            c => c,
        };
        if !(' '..='~').contains(&c) {
            return None;
        }
        text.push(c);
    }
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_string = !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    Some(if dot_string {
        text
    } else {
        format!("\"{content}\"")
    })
}

impl Session {
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn refuse(&mut self, text: &str) {
        self.errors += 1;
        self.reply(text);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            write_all_within(self.io.get_mut(), &self.out, COMMAND_TIMEOUT, &self.peer).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
        self.accepted.clear();
        self.relayed.clear();
    }

    async fn command(&mut self, smtp: &Smtp, line: &str) -> Result<(), End> {
        let (verb, args) = match line.split_once(' ') {
            Some((verb, args)) => (verb, args.trim()),
            None => (line, ""),
        };
        let mut buffer = [0; 8];
        let verb = uppercase_verb(verb, &mut buffer);
        // The name goes into Received headers: a domain or address literal only.
        if matches!(verb, "EHLO" | "HELO") {
            if let Some(refusal) = helo_refusal(verb, args) {
                self.refuse(&refusal);
                return Ok(());
            }
        }
        match verb {
            "EHLO" => {
                self.reset();
                self.helo = Some(args.to_string());
                self.esmtp = true;
                let tls = self.io.get_ref().is_tls();
                let mut lines = vec![
                    format!("{} greets {args}", smtp.hostname),
                    format!("SIZE {}", smtp.max_message_size),
                    "8BITMIME".into(),
                    "PIPELINING".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if smtp.tls.is_some() && !tls {
                    lines.push("STARTTLS".into());
                }
                if smtp.offers_auth(tls) {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                let last = lines.len() - 1;
                for (i, line) in lines.iter().enumerate() {
                    let dash = if i == last { ' ' } else { '-' };
                    self.reply(&format!("250{dash}{line}"));
                }
            }
            "HELO" => {
                self.reset();
                self.helo = Some(args.to_string());
                self.esmtp = false;
                self.reply(&format!("250 {}", smtp.hostname));
            }
            "MAIL" => self.mail(smtp, args),
            "RCPT" => self.rcpt(smtp, args),
            "DATA" if !args.is_empty() => self.refuse("501 5.5.4 syntax: DATA"),
            "DATA" => return self.data(smtp).await,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "VRFY" => self.reply("252 2.0.0 cannot verify the user, but will try delivery"),
            "EXPN" => self.refuse("502 5.5.1 EXPN is not available"),
            "HELP" => self.reply("214 2.0.0 see RFC 5321"),
            "QUIT" => {
                self.reply("221 2.0.0 bye");
                return Err(End::Closing);
            }
            "STARTTLS" => return self.starttls(smtp, args).await,
            "AUTH" => return self.auth(smtp, args).await,
            "BDAT" | "ETRN" | "TURN" => {
                self.refuse("502 5.5.1 command not implemented");
            }
            _ => self.refuse("500 5.5.2 command unrecognized"),
        }
        Ok(())
    }

    fn mail(&mut self, smtp: &Smtp, args: &str) {
        if self.helo.is_none() {
            return self.refuse("503 5.5.1 send HELO or EHLO first");
        }
        if self.sender.is_some() {
            return self.refuse("503 5.5.1 nested MAIL command");
        }
        let parsed = match after_keyword(args, "FROM:") {
            Some(rest) => parse_path(rest, true),
            None => Err(PathError::Syntax),
        };
        let (sender, params) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(&e.reply("5.1.7", "MAIL FROM:<address>")),
        };
        for param in params.split_ascii_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" if self.esmtp => match value.parse::<u64>() {
                    Ok(size) if size > smtp.max_message_size => {
                        return self.reply("552 5.3.4 message size exceeds fixed limit");
                    }
                    Ok(_) => {}
                    Err(_) => return self.refuse("501 5.5.4 bad SIZE parameter"),
                },
                // RFC 4954 5: the sender's own AUTH= is accepted and not passed on.
                "AUTH" if smtp.offers_auth(self.io.get_ref().is_tls()) => {}
                "BODY" if self.esmtp => {
                    if !value.eq_ignore_ascii_case("7BIT")
                        && !value.eq_ignore_ascii_case("8BITMIME")
                    {
                        return self.refuse("501 5.5.4 BODY is 7BIT or 8BITMIME");
                    }
                }
                _ => {
                    return self.refuse(&format!("555 5.5.4 unsupported parameter {key}"));
                }
            }
        }
        self.sender = Some(sender);
        self.reply("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, smtp: &Smtp, args: &str) {
        if self.sender.is_none() {
            return self.refuse("503 5.5.1 need MAIL before RCPT");
        }
        let parsed = match after_keyword(args, "TO:") {
            Some(rest) => parse_path(rest, false),
            None => Err(PathError::Syntax),
        };
        let (address, params) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(&e.reply("5.1.3", "RCPT TO:<address>")),
        };
        if !params.is_empty() {
            return self.refuse("555 5.5.4 RCPT parameters are not supported");
        }
        if self.accepted.len() >= MAX_RECIPIENTS {
            // Not an error of the client's: it sends the rest in another transaction.
            return self.reply("452 4.5.3 too many recipients");
        }
        // RFC 5321 4.5.1: plain <postmaster> must work.
        let (local, domain) = match address.rsplit_once('@') {
            Some((local, domain)) => (local.to_string(), domain.to_string()),
            None if address.eq_ignore_ascii_case("postmaster") => (
                "postmaster".to_string(),
                smtp.directory.postmaster_domain().unwrap_or_default(),
            ),
            None => return self.refuse("501 5.1.3 the address needs a domain"),
        };
        // Recipient refusals are not protocol errors: they do not count towards MAX_ERRORS.
        let unknown = format!("550 5.1.1 <{address}>: recipient address rejected: user unknown");
        let alias = match (&smtp.aliases, smtp.directory.local_domain(&domain)) {
            (Some(aliases), Some(local_domain)) => {
                aliases.expand(&smtp.directory, &local, &local_domain)
            }
            _ => None,
        };
        if let Some(expansion) = alias {
            // An alias forwards to other domains whoever the client is (it is this server's
            // own list, not relaying for the client), but only through a relay queue.
            let remote = match smtp.relay {
                Some(_) => expansion
                    .remote
                    .into_iter()
                    .filter(|target| {
                        let valid = target
                            .rsplit_once('@')
                            .is_some_and(|(_, d)| is_domain_name(d));
                        if !valid {
                            tracing::warn!(
                                "alias <{address}>: target {target}: not a domain name; skipped"
                            );
                        }
                        valid
                    })
                    .collect(),
                None => {
                    for target in &expansion.remote {
                        tracing::warn!(
                            "alias <{address}>: target {target} is in another domain, which \
                             needs --relay; skipped"
                        );
                    }
                    Vec::new()
                }
            };
            if expansion.mailboxes.is_empty() && remote.is_empty() {
                return self.reply(&if expansion.too_deep {
                    format!("550 5.4.6 <{address}>: aliases nest too deep (a forwarding loop?)")
                } else {
                    unknown
                });
            }
            self.recipients.extend(
                expansion
                    .mailboxes
                    .into_iter()
                    .map(|m| (address.clone(), m)),
            );
            for target in remote {
                self.relay_to(target);
            }
            self.accepted.push(address);
            return self.reply("250 2.1.5 Ok");
        }
        match smtp.directory.route(&local, &domain) {
            Route::Local(mailbox) => {
                self.recipients.push((address.clone(), mailbox));
                self.accepted.push(address);
                self.reply("250 2.1.5 Ok");
            }
            Route::Foreign if smtp.relay.is_some() && self.may_relay() => {
                if !is_domain_name(&domain) {
                    return self.refuse("501 5.1.3 not a domain name after the @");
                }
                self.relay_to(address.clone());
                self.accepted.push(address);
                self.reply("250 2.1.5 Ok");
            }
            Route::UnknownUser => self.reply(&unknown),
            Route::Foreign => self.reply(&format!("550 5.7.1 <{address}>: relay access denied")),
        }
    }

    /// RFC 3207. Whatever the client sent after STARTTLS in plain text is thrown away, and the
    /// session starts over (no HELO, no transaction): nothing said before the handshake can
    /// act after it.
    async fn starttls(&mut self, smtp: &Smtp, args: &str) -> Result<(), End> {
        let Some(acceptor) = &smtp.tls else {
            self.refuse("502 5.5.1 STARTTLS is not available");
            return Ok(());
        };
        if !args.is_empty() {
            self.refuse("501 5.5.4 syntax: STARTTLS");
            return Ok(());
        }
        if self.io.get_ref().is_tls() {
            self.refuse("503 5.5.1 TLS is already active");
            return Ok(());
        }
        // The handshake would throw the transaction away unseen (as Postfix, 503). Before EHLO
        // STARTTLS is taken: RFC 3207 does not ask for EHLO first, and neither does Postfix.
        if self.sender.is_some() {
            self.refuse("503 5.5.1 MAIL transaction in progress: RSET first");
            return Ok(());
        }
        self.reply("220 2.0.0 ready to start TLS");
        self.flush().await.map_err(|_| End::Gone)?;
        if !self.io.buffer().is_empty() {
            tracing::warn!(peer = %self.peer, "plain text pipelined after STARTTLS; discarded");
        }
        if let Err(e) = upgrade_buffered(&mut self.io, acceptor).await {
            tracing::info!(peer = %self.peer, "TLS handshake failed: {e}");
            return Err(End::Gone);
        }
        self.helo = None;
        self.esmtp = false;
        self.reset();
        Ok(())
    }

    /// RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN, against the users' password hashes.
    async fn auth(&mut self, smtp: &Smtp, args: &str) -> Result<(), End> {
        let tls = self.io.get_ref().is_tls();
        if !smtp.auth {
            self.refuse("502 5.5.1 AUTH is not available");
            return Ok(());
        }
        if !smtp.offers_auth(tls) {
            self.refuse("538 5.7.11 encryption required: use STARTTLS first");
            return Ok(());
        }
        if self.helo.is_none() || !self.esmtp {
            self.refuse("503 5.5.1 send EHLO first");
            return Ok(());
        }
        if self.authenticated.is_some() {
            self.refuse("503 5.5.1 already authenticated");
            return Ok(());
        }
        if self.sender.is_some() {
            self.refuse("503 5.5.1 AUTH is not allowed during a mail transaction");
            return Ok(());
        }
        let mut words = args.split_ascii_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            self.refuse("501 5.5.4 syntax: AUTH mechanism [initial-response]");
            return Ok(());
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(response) => response.to_string(),
                    None => match self.challenge("").await? {
                        Some(response) => response,
                        None => return Ok(()),
                    },
                };
                // `=` is an empty response (RFC 4954 4), which no PLAIN message is.
                match decode(&response) {
                    None => Err(UNDECODABLE),
                    Some(plain) => parse_plain(&plain).ok_or(
                        "501 5.5.2 malformed PLAIN message: \
                         authorization id NUL user NUL password, in UTF-8",
                    ),
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(response) => response.to_string(),
                    None => match self.challenge("VXNlcm5hbWU6").await? {
                        Some(response) => response,
                        None => return Ok(()),
                    },
                };
                let Some(password) = self.challenge("UGFzc3dvcmQ6").await? else {
                    return Ok(());
                };
                decode(&user)
                    .zip(decode(&password))
                    .and_then(|(u, p)| {
                        Some((String::from_utf8(u).ok()?, String::from_utf8(p).ok()?, true))
                    })
                    .ok_or(UNDECODABLE)
            }
            "" => {
                self.refuse("501 5.5.4 syntax: AUTH mechanism [initial-response]");
                return Ok(());
            }
            _ => {
                self.refuse("504 5.5.4 unrecognized authentication mechanism");
                return Ok(());
            }
        };
        let (user, password, allowed) = match credentials {
            Ok(credentials) => credentials,
            Err(refusal) => {
                self.refuse(refusal);
                return Ok(());
            }
        };
        let account = smtp
            .directory
            .login(&user)
            .map(|(mailbox, hash)| (mailbox.to_string(), hash.to_string()));
        let hash = account
            .as_ref()
            .map(|(_, hash)| hash.clone())
            .unwrap_or_else(|| smtp.decoy_hash.clone());
        let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        match account {
            Some((name, _)) if verified && allowed => {
                tracing::info!(peer = %self.peer, user = %name, "smtp auth");
                self.authenticated = Some(name);
                self.reply("235 2.7.0 authentication successful");
            }
            _ => {
                tracing::warn!(peer = %self.peer, user = ?user, "smtp auth failed");
                tokio::time::sleep(FAILED_AUTH_DELAY).await;
                self.refuse("535 5.7.8 authentication credentials invalid");
            }
        }
        Ok(())
    }

    /// Sends a 334 challenge and reads the answer; `None` when the client cancelled with `*`
    /// or sent a line too long (the reply is queued).
    async fn challenge(&mut self, text: &str) -> Result<Option<String>, End> {
        self.reply(&format!("334 {text}"));
        self.flush().await.map_err(|_| End::Gone)?;
        let read = self.read_text(MAX_LINE).await;
        match read {
            Err(stalled) => {
                self.reply(&stalled.reply("waiting for a command"));
                Err(End::Closing)
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => Err(End::Gone),
            Ok(Ok(Line::TooLong)) => {
                self.refuse("500 5.5.6 authentication exchange line too long");
                Ok(None)
            }
            Ok(Ok(Line::Complete)) => {
                let answer = String::from_utf8_lossy(trim_eol(&self.text)).into_owned();
                if answer == "*" {
                    self.refuse("501 5.7.0 authentication cancelled");
                    return Ok(None);
                }
                Ok(Some(answer))
            }
        }
    }

    async fn data(&mut self, smtp: &Smtp) -> Result<(), End> {
        if self.sender.is_none() {
            self.refuse("503 5.5.1 need MAIL before DATA");
            return Ok(());
        }
        if self.accepted.is_empty() {
            self.refuse("503 5.5.1 no valid recipients");
            return Ok(());
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        self.flush().await.map_err(|_| End::Gone)?;

        let id = queue_id();
        // Enough for most messages without growing, not so much that idle sessions matter.
        let mut body: Vec<u8> = Vec::with_capacity(8192);
        let (mut bare, mut too_long, mut too_big) = (false, false, false);
        // The message's size as RFC 1870 counts it (lines end in CRLF), as SIZE= declared it.
        let mut size = 0u64;
        // The line before ended with CRLF (true for the first line after 354).
        let mut after_crlf = true;
        let (mut in_headers, mut hops) = (true, 0usize);
        // A header field was seen, which a line starting with a space or tab continues.
        let mut in_field = false;
        loop {
            // One octet more than a line may have: the limit is on the line without its
            // stuffed dot (RFC 5321 4.5.2), checked below.
            match self.read_text(MAX_LINE + 1).await {
                Err(stalled) => {
                    self.reply(&stalled.reply("reading the message"));
                    return Err(End::Closing);
                }
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => return Err(End::Gone),
                Ok(Ok(Line::TooLong)) => {
                    too_long = true;
                    // Only its line ending is left: a CRLF.CRLF may follow it.
                    after_crlf = self.text.as_slice() == b"\r\n";
                    continue;
                }
                Ok(Ok(Line::Complete)) => {}
            }
            let line = &self.text;
            if after_crlf && line.as_slice() == b".\r\n" {
                break;
            }
            let text = match line.strip_suffix(b"\r\n") {
                Some(text) => {
                    after_crlf = true;
                    text
                }
                None => {
                    after_crlf = false;
                    bare = true;
                    line.strip_suffix(b"\n").unwrap_or(line)
                }
            };
            if text.contains(&b'\r') || text.contains(&b'\n') {
                bare = true;
            }
            let text = text.strip_prefix(b".").unwrap_or(text);
            if text.len() + 2 > MAX_LINE {
                too_long = true;
                continue;
            }
            // The line that is no header field ends the header section, and an empty line is
            // put before it (as Postfix's cleanup does): else the stored message would have
            // the header fields written here glued to a body without a separator.
            let mut separate = false;
            if in_headers {
                let folded = in_field && matches!(text.first(), Some(b' ' | b'\t'));
                if text.is_empty() {
                    in_headers = false;
                } else if !folded {
                    match field_name(text) {
                        Some(name) => {
                            in_field = true;
                            if name.eq_ignore_ascii_case(b"received") {
                                hops += 1;
                            }
                        }
                        None => {
                            in_headers = false;
                            separate = true;
                        }
                    }
                }
            }
            size += text.len() as u64 + 2;
            if too_big || size > smtp.max_message_size {
                too_big = true;
                body = Vec::new();
                continue;
            }
            if separate {
                body.push(b'\n');
            }
            body.extend_from_slice(text);
            body.push(b'\n');
        }

        let sender = self.sender.take().unwrap_or_default();
        let recipients = std::mem::take(&mut self.recipients);
        let accepted = std::mem::take(&mut self.accepted);
        let relayed = std::mem::take(&mut self.relayed);
        if bare {
            self.reply("554 5.6.0 message refused: bare CR or LF (lines must end with CRLF)");
            return Ok(());
        }
        if too_long {
            self.reply("500 5.5.2 message refused: a line is longer than 1000 octets");
            return Ok(());
        }
        if too_big {
            self.reply("552 5.3.4 message size exceeds fixed limit");
            return Ok(());
        }
        if hops > MAX_HOPS {
            self.reply("554 5.4.6 too many hops: a mail loop?");
            return Ok(());
        }

        let for_clause = match accepted.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        let received = self.received_header(smtp, &id, for_clause);
        let mut maildirs: Vec<_> = recipients.iter().map(|(_, m)| m.path.clone()).collect();
        maildirs.sort();
        maildirs.dedup();
        let mut targets = Vec::new();
        if !maildirs.is_empty() {
            let return_path = format!("Return-Path: <{sender}>\n");
            let mut local = Vec::with_capacity(return_path.len() + received.len() + body.len());
            for part in [return_path.as_bytes(), &received, &body] {
                local.extend_from_slice(part);
            }
            let local = Arc::new(local);
            targets.extend(maildirs.into_iter().map(|m| (m, local.clone())));
        }
        if let (Some(relay), false) = (&smtp.relay, relayed.is_empty()) {
            let mut message = received;
            message.extend_from_slice(&body);
            let file = relay.queue_file(&id, &sender, &relayed, &message);
            targets.push((relay.queue().to_path_buf(), Arc::new(file)));
        }
        drop(body);
        match smtp.deliverer.deliver_each(targets).await {
            Ok(()) => {
                // A field with nothing to say is left out (`to=` with only relayed recipients).
                let local = recipients
                    .iter()
                    .map(|(_, m)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let relay = relayed.join(",");
                let nonempty = |text: String| (!text.is_empty()).then(|| display(text));
                tracing::info!(
                    peer = %self.peer,
                    id = %id,
                    from = %sender,
                    to = nonempty(local),
                    relay = nonempty(relay),
                    "delivered"
                );
                if let (Some(relay), false) = (&smtp.relay, relayed.is_empty()) {
                    relay.wake();
                }
                self.reply(&format!("250 2.0.0 Ok: queued as {id}"));
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, id = %id, "delivery failed: {e}");
                self.reply("451 4.3.0 local delivery failed, try again later");
            }
        }
        Ok(())
    }

    /// The next line of a message or an AUTH exchange, into `text`: at once if the client
    /// already sent it, else within [`COMMAND_TIMEOUT`].
    async fn read_text(&mut self, max: usize) -> Result<std::io::Result<Line>, Stalled> {
        if let Some(line) = buffered_line(&mut self.io, max, &mut self.text) {
            return Ok(Ok(line));
        }
        wait_line(
            &mut self.io,
            self.deadline.as_mut(),
            max,
            &mut self.text,
            &self.ctx,
        )
        .await
    }

    /// Adds a recipient for the relay queue, once: addresses that differ only in the case
    /// of their domain are the same (the local part's case is the next server's business).
    fn relay_to(&mut self, address: String) {
        let key = |a: &str| match a.rsplit_once('@') {
            Some((local, domain)) => (local.to_string(), domain.to_ascii_lowercase()),
            None => (a.to_string(), String::new()),
        };
        let new = key(&address);
        if self.relayed.iter().all(|known| key(known) != new) {
            self.relayed.push(address);
        }
    }

    fn may_relay(&self) -> bool {
        may_relay(&self.peer, self.authenticated.is_some())
    }

    /// The Received header, with an LF line ending like the stored message.
    fn received_header(&self, smtp: &Smtp, id: &str, recipient: Option<&str>) -> Vec<u8> {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let helo = self.helo.as_deref().unwrap_or("unknown");
        // RFC 5321 4.1.3 address literals.
        let ip = match self.peer.ip().map(|ip| ip.to_canonical()) {
            Some(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Some(ip) => format!("[{ip}]"),
            None => "local".into(),
        };
        // RFC 3848's protocol names.
        let with = match (
            self.esmtp,
            self.io.get_ref().is_tls(),
            self.authenticated.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let rcpt = match recipient {
            Some(address) => format!("\n\tfor <{address}>"),
            None => String::new(),
        };
        format!(
            "Received: from {helo} ({ip})\n\tby {} (taphost) with {with} id {id}{rcpt};\n\t{date}\n",
            smtp.hostname
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_rights() {
        let outside = Peer::Tcp("192.0.2.7:2525".parse().expect("addr"));
        assert!(!may_relay(&outside, false));
        assert!(may_relay(&outside, true));
        assert!(may_relay(
            &Peer::Tcp("[::1]:2525".parse().expect("addr")),
            false
        ));
        assert!(may_relay(
            &Peer::Tcp("127.0.0.9:2525".parse().expect("addr")),
            false
        ));
        assert!(may_relay(&Peer::Unix, false));
    }

    #[test]
    fn helo_names() {
        for good in [
            "client.test",
            "mail_relay-1.example.com",
            "localhost",
            "[127.0.0.1]",
            "[IPv6:::1]",
            &"h".repeat(255),
        ] {
            assert_eq!(helo_refusal("EHLO", good), None, "{good}");
        }
        for (bad, code) in [
            ("", "501 5.5.4"),
            ("x)(y", "501 5.5.2"),
            ("(evil)", "501 5.5.2"),
            ("a b", "501 5.5.2"),
            ("x;by", "501 5.5.2"),
            ("j\u{f6}rg", "501 5.5.2"),
            ("[999.1.1.1]", "501 5.5.2"),
            ("[127.0.0.1", "501 5.5.2"),
            ("[tag:(x)]", "501 5.5.2"),
            (&"h".repeat(256), "501 5.5.2"),
        ] {
            let refusal = helo_refusal("EHLO", bad).unwrap_or_default();
            assert!(refusal.starts_with(code), "{bad:?}: {refusal}");
        }
    }

    #[test]
    fn header_fields() {
        assert_eq!(field_name(b"Subject: x"), Some(&b"Subject"[..]));
        assert_eq!(field_name(b"X-Odd!#:"), Some(&b"X-Odd!#"[..]));
        assert_eq!(field_name(b"Subject \t: x"), Some(&b"Subject"[..]));
        for line in [
            &b"no header line"[..],
            b"x",
            b": x",
            b"Subject x: y",
            b" cont: x",
            b"\xc3\xa9: x",
        ] {
            assert_eq!(field_name(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn verbs() {
        let mut buffer = [0; 8];
        assert_eq!(uppercase_verb("ehlo", &mut buffer), "EHLO");
        assert_eq!(uppercase_verb("StartTLS", &mut buffer), "STARTTLS");
        assert_eq!(uppercase_verb("", &mut buffer), "");
        assert_eq!(uppercase_verb("toolongverb", &mut buffer), "");
        assert_eq!(uppercase_verb("é", &mut buffer), "é");
    }

    fn path(rest: &str, allow_null: bool) -> Option<(String, &str)> {
        parse_path(rest, allow_null).ok()
    }

    #[test]
    fn paths() {
        assert_eq!(
            path("<a@b.c> SIZE=10", false),
            Some(("a@b.c".into(), "SIZE=10"))
        );
        assert_eq!(path("<>", true), Some((String::new(), "")));
        assert_eq!(path("<>", false), None);
        assert_eq!(path("<@relay.x:a@b.c>", false), Some(("a@b.c".into(), "")));
        // Without brackets: up to the first space, as Postfix takes it.
        assert_eq!(path("a@b.c", false), Some(("a@b.c".into(), "")));
        assert_eq!(
            path("a@b.c SIZE=10", true),
            Some(("a@b.c".into(), "SIZE=10"))
        );
        assert_eq!(path(r#""a"@b.c"#, false), Some(("a@b.c".into(), "")));
        assert_eq!(path("", true), None);
        assert_eq!(path("a@b.c>", false), None);
        assert_eq!(path(r#""a b"@c.d"#, false), None);
        assert_eq!(path("<a b@c>", false), None);
        // Quoted local parts: kept quoted when they must be, else plain; `>` and `@` inside.
        assert_eq!(
            path(r#"<"a b"@c.d> SIZE=1"#, false),
            Some((r#""a b"@c.d"#.into(), "SIZE=1"))
        );
        assert_eq!(
            path(r#"<"x>y@z"@c.d>"#, false),
            Some((r#""x>y@z"@c.d"#.into(), ""))
        );
        assert_eq!(
            path(r#"<"alice"@c.d>"#, false),
            Some(("alice@c.d".into(), ""))
        );
        assert_eq!(
            path(r#"<"a\"b"@c.d>"#, false),
            Some((r#""a\"b"@c.d"#.into(), ""))
        );
        assert_eq!(
            path(r#"<@r.x:"j.doe"@c.d>"#, false),
            Some(("j.doe@c.d".into(), ""))
        );
        assert_eq!(path("<\"a\u{7}b\"@c.d>", false), None);
        assert_eq!(path(r#"<"unterminated@c.d>"#, false), None);
        assert_eq!(path(r#"<a"b@c.d>"#, false), None);
        // A trailing dot of the domain goes, a lone one does not make a domain.
        assert_eq!(path("<a@c.d.>", false), Some(("a@c.d".into(), "")));
        assert_eq!(path("<a@.>", false), Some(("a@.".into(), "")));
        assert_eq!(path("<a@b>x", false), None);
        // RFC 5321 4.5.3.1.3: 256 octets with the brackets (and a source route).
        let local = "a".repeat(64);
        let fits = format!("<{local}@{}.test>", "d".repeat(254 - 64 - 6));
        assert_eq!(fits.len(), 256);
        assert!(path(&fits, false).is_some());
        let over = fits.replacen('<', "<x", 1);
        assert_eq!(parse_path(&over, false), Err(PathError::TooLong));
        let routed = format!("<@{}:a@b.c>", "r".repeat(250));
        assert_eq!(parse_path(&routed, false), Err(PathError::TooLong));
        // Address literals must hold an address.
        assert!(path("<x@[192.0.2.1]>", false).is_some());
        assert!(path("<x@[IPv6:2001:db8::1]>", false).is_some());
        assert!(path("<x@[ipv6:::1]>", false).is_some());
        for bad in [
            "<x@[999.1.1.1]>",
            "<x@[1.2.3]>",
            "<x@[IPv6:1.2.3.4]>",
            "<x@[::1]>",
            "<x@[]>",
        ] {
            assert_eq!(parse_path(bad, true), Err(PathError::BadLiteral), "{bad}");
        }
        assert_eq!(after_keyword("from:<x>", "FROM:"), Some("<x>"));
        assert_eq!(after_keyword("FROM: <x>", "FROM:"), Some("<x>"));
        assert_eq!(after_keyword("TO:<x>", "FROM:"), None);
        assert_eq!(after_keyword("é", "FROM:"), None);
    }
}
