//! The POP3 server session (RFC 1939, with CAPA and response codes from RFC 2449).
//!
//! A login takes the mailbox's lock (one session per mailbox: a second gets `-ERR [IN-USE]`)
//! and a snapshot of its messages. DELE only marks; the files go at QUIT, so a dropped
//! connection or a stopping service deletes nothing. UIDLs are the Maildir unique names, which
//! stay the same across sessions and across a move from `new/` to `cur/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::net::Peer;
use host::ServiceContext;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio_rustls::TlsAcceptor;

use crate::blocking;
use crate::lines::{read_line, trim_eol, write_all_within, Line};
use crate::maildir::{self, Message};
use crate::tls::{upgrade_buffered, Conn};
use crate::users::{verify_password, Directory};

/// RFC 2449 allows 255 octets of command; a little slack for clients that pad.
pub const MAX_LINE: usize = 512;
/// RFC 1939 section 3: an autologout timer of at least 10 minutes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a failed login waits before its answer, to slow down password guessing.
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);
/// Output buffer capacity a session keeps between replies.
const KEPT_OUTPUT: usize = 64 * 1024;
/// Pipelined replies are sent once this much is waiting, even with more commands in.
const FLUSH_AT: usize = 64 * 1024;
/// Failed logins one connection may make before it is closed.
pub const MAX_FAILED_LOGINS: u32 = 3;

/// What every POP3 session of a service shares.
pub struct Pop3 {
    pub directory: Directory,
    pub hostname: String,
    /// Sizes learnt by reading messages, per Maildir, for the next login (see
    /// [`maildir::SizeCache`]); a session takes its Maildir's out while it lists.
    pub sizes: Mutex<HashMap<PathBuf, maildir::SizeCache>>,
    /// A real hash to verify unknown users against, so they take as long as known ones.
    pub decoy_hash: String,
    /// STLS is offered when there is a certificate.
    pub tls: Option<TlsAcceptor>,
    /// With a certificate, passwords are only taken under TLS unless this is set
    /// (`--allow-plaintext-auth`), as Dovecot's `disable_plaintext_auth`.
    pub allow_plaintext_auth: bool,
}

impl Pop3 {
    fn sizes(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, maildir::SizeCache>> {
        self.sizes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn takes_passwords(&self, tls: bool) -> bool {
        tls || self.tls.is_none() || self.allow_plaintext_auth
    }
}

/// A mailbox held by one session: an flock(2) on its Maildir directory, so two services (or
/// two processes) serving one Maildir also keep to one session; closing it releases the
/// mailbox, whatever ends the session.
struct MailboxLock {
    _held: std::os::fd::OwnedFd,
}

impl MailboxLock {
    /// The lock, or `None` when another session holds it.
    fn take(maildir: &Path) -> std::io::Result<Option<MailboxLock>> {
        Ok(crate::lock_dir(maildir)?.map(|held| MailboxLock { _held: held }))
    }
}

/// The TRANSACTION state: the snapshot taken at login, and the deletion marks.
struct Transaction {
    _lock: MailboxLock,
    maildir: PathBuf,
    messages: Vec<Message>,
    deleted: Vec<bool>,
}

impl Transaction {
    /// The message numbered `arg` (1-based) if it exists and is not marked deleted.
    fn message(&self, arg: &str) -> Result<usize, String> {
        let n = number(arg).ok_or_else(|| format!("-ERR invalid message number '{arg}'"))?;
        if n == 0 || n > self.messages.len() {
            return Err(format!("-ERR no such message {n}"));
        }
        if self.deleted[n - 1] {
            return Err(format!("-ERR message {n} is deleted"));
        }
        Ok(n - 1)
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }
}

struct Session {
    io: BufReader<Conn>,
    out: Vec<u8>,
    line: Vec<u8>,
    peer: Peer,
    user: Option<String>,
    transaction: Option<Transaction>,
    failed_logins: u32,
}

/// Runs one POP3 session to its end.
pub async fn session(pop3: Arc<Pop3>, ctx: ServiceContext, stream: Conn, peer: Peer) {
    let mut s = Session {
        io: BufReader::new(stream),
        out: Vec::with_capacity(512),
        line: Vec::with_capacity(64),
        peer,
        user: None,
        transaction: None,
        failed_logins: 0,
    };
    s.reply(&format!("+OK {} POP3 server ready", pop3.hostname));
    loop {
        // Replies wait while more commands are in (pipelining), but not past FLUSH_AT: a
        // client pipelining RETRs without reading gets back-pressure, not a growing buffer.
        if (s.io.buffer().is_empty() || s.out.len() >= FLUSH_AT) && s.flush().await.is_err() {
            return;
        }
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut s.io, MAX_LINE, &mut s.line)) => read,
            () = ctx.stopping() => {
                s.reply("-ERR [SYS/TEMP] server shutting down; nothing was deleted");
                break;
            }
        };
        let line = match read {
            Err(_) => {
                s.reply("-ERR idle for too long; nothing was deleted");
                break;
            }
            Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => {
                s.reply("-ERR line too long");
                continue;
            }
            Ok(Ok(Line::Complete)) => String::from_utf8_lossy(trim_eol(&s.line)).into_owned(),
        };
        if !s.command(&pop3, &line).await {
            break;
        }
    }
    let _ = s.flush().await;
    let _ = s.io.get_mut().shutdown().await;
}

impl Session {
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            write_all_within(self.io.get_mut(), &self.out, IDLE_TIMEOUT, &self.peer).await?;
            self.out.clear();
            // A big message's buffer is not kept for the rest of the session.
            self.out.shrink_to(KEPT_OUTPUT);
        }
        Ok(())
    }

    /// Handles one command; false ends the session.
    async fn command(&mut self, pop3: &Pop3, line: &str) -> bool {
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg),
            None => (line.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "CAPA" => {
                self.reply("+OK capability list follows");
                let tls = self.io.get_ref().is_tls();
                if pop3.takes_passwords(tls) {
                    self.reply("USER");
                }
                if pop3.tls.is_some() && !tls && self.transaction.is_none() {
                    self.reply("STLS");
                }
                for capability in [
                    "TOP",
                    "UIDL",
                    "PIPELINING",
                    "RESP-CODES",
                    "AUTH-RESP-CODE",
                    "EXPIRE NEVER",
                    "IMPLEMENTATION taphost",
                ] {
                    self.reply(capability);
                }
                self.reply(".");
            }
            "QUIT" => {
                self.quit().await;
                return false;
            }
            _ if self.transaction.is_none() => {
                self.authorization(pop3, &verb, arg).await;
                if self.failed_logins >= MAX_FAILED_LOGINS {
                    self.reply("-ERR [AUTH] too many failed logins, closing the connection");
                    return false;
                }
            }
            _ => self.transaction(&verb, arg).await,
        }
        true
    }

    async fn authorization(&mut self, pop3: &Pop3, verb: &str, arg: &str) {
        match verb {
            // RFC 2595 4: STLS takes no argument.
            "STLS" if !arg.is_empty() => self.reply("-ERR syntax: STLS takes no argument"),
            "STLS" => self.stls(pop3).await,
            "USER" | "PASS" if !pop3.takes_passwords(self.io.get_ref().is_tls()) => {
                self.reply("-ERR [AUTH] plaintext authentication is disallowed without TLS (STLS)")
            }
            "USER" if arg.is_empty() => self.reply("-ERR syntax: USER name"),
            "USER" => {
                self.user = Some(arg.trim().to_string());
                self.reply("+OK send PASS");
            }
            "PASS" => {
                let Some(user) = self.user.take() else {
                    return self.reply("-ERR USER first");
                };
                self.login(pop3, &user, arg).await;
            }
            _ => {
                // Only the commands that can work now.
                let tls = self.io.get_ref().is_tls();
                let mut valid = Vec::with_capacity(5);
                if pop3.takes_passwords(tls) {
                    valid.extend(["USER", "PASS"]);
                }
                if pop3.tls.is_some() && !tls {
                    valid.push("STLS");
                }
                valid.extend(["CAPA", "QUIT"]);
                self.reply(&format!(
                    "-ERR not valid before login ({})",
                    valid.join(", ")
                ));
            }
        }
    }

    /// RFC 2595 STLS: only before login; pipelined plain text after it is discarded.
    async fn stls(&mut self, pop3: &Pop3) {
        let Some(acceptor) = &pop3.tls else {
            return self.reply("-ERR STLS is not available");
        };
        if self.io.get_ref().is_tls() {
            return self.reply("-ERR TLS is already active");
        }
        self.reply("+OK begin TLS negotiation");
        if self.flush().await.is_err() {
            return;
        }
        self.user = None;
        if let Err(e) = upgrade_buffered(&mut self.io, acceptor).await {
            tracing::info!(peer = %self.peer, "TLS handshake failed: {e}");
        }
    }

    async fn login(&mut self, pop3: &Pop3, user: &str, password: &str) {
        let account = pop3.directory.login(user);
        let hash = account
            .as_ref()
            .map(|(_, hash)| hash.to_string())
            .unwrap_or_else(|| pop3.decoy_hash.clone());
        let password = password.to_string();
        let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        let mailbox = match account {
            Some((mailbox, _)) if verified => mailbox,
            _ => {
                tracing::warn!(peer = %self.peer, user = ?user, "pop3 login failed");
                self.failed_logins += 1;
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                return self.reply("-ERR [AUTH] invalid user name or password");
            }
        };
        let path = mailbox.path.clone();
        let locked = blocking(move || {
            maildir::ensure(&path)?;
            MailboxLock::take(&path)
        })
        .await;
        let lock = match locked {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return self.reply("-ERR [IN-USE] the mailbox is in use by another session")
            }
            Err(e) => {
                tracing::error!(mailbox = %mailbox, "cannot open the maildir: {e}");
                return self.reply("-ERR [SYS/TEMP] cannot open the mailbox");
            }
        };
        let path = mailbox.path.clone();
        let mut sizes = pop3.sizes().remove(&path).unwrap_or_default();
        let listed = blocking(move || {
            let listed = maildir::list(&path, &mut sizes)?;
            Ok((listed, sizes))
        })
        .await
        .map(|(listed, sizes)| {
            if !sizes.is_empty() {
                pop3.sizes().insert(mailbox.path.clone(), sizes);
            }
            listed
        });
        match listed {
            Ok(messages) => {
                let total: u64 = messages.iter().map(|m| m.size).sum();
                tracing::info!(peer = %self.peer, mailbox = %mailbox, "pop3 login");
                self.reply(&format!(
                    "+OK {} has {} messages ({total} octets)",
                    mailbox,
                    messages.len()
                ));
                self.transaction = Some(Transaction {
                    _lock: lock,
                    maildir: mailbox.path,
                    deleted: vec![false; messages.len()],
                    messages,
                });
            }
            Err(e) => {
                tracing::error!(mailbox = %mailbox, "cannot read the maildir: {e}");
                self.reply("-ERR [SYS/TEMP] cannot open the mailbox");
            }
        }
    }

    async fn transaction(&mut self, verb: &str, arg: &str) {
        let t = self.transaction.as_mut().expect("called in TRANSACTION");
        let mut args = arg.split_ascii_whitespace();
        let (first, second, extra) = (args.next(), args.next(), args.next().is_some());
        let result: Result<Vec<String>, String> = match (verb, first, second, extra) {
            (_, _, _, true) => Err("-ERR too many arguments".into()),
            ("STAT", None, _, _) => {
                let (n, size) = t.live().fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size));
                Ok(vec![format!("+OK {n} {size}")])
            }
            ("LIST", None, _, _) => {
                let mut lines = vec![format!("+OK {} messages", t.live().count())];
                lines.extend(t.live().map(|(i, m)| format!("{} {}", i + 1, m.size)));
                lines.push(".".into());
                Ok(lines)
            }
            ("LIST", Some(n), None, _) => t
                .message(n)
                .map(|i| vec![format!("+OK {} {}", i + 1, t.messages[i].size)]),
            ("UIDL", None, _, _) => {
                let mut lines = vec!["+OK unique-id listing follows".to_string()];
                lines.extend(t.live().map(|(i, m)| format!("{} {}", i + 1, m.uid)));
                lines.push(".".into());
                Ok(lines)
            }
            ("UIDL", Some(n), None, _) => t
                .message(n)
                .map(|i| vec![format!("+OK {} {}", i + 1, t.messages[i].uid)]),
            ("DELE", Some(n), None, _) => t.message(n).map(|i| {
                t.deleted[i] = true;
                vec![format!("+OK message {} deleted", i + 1)]
            }),
            ("RSET", None, _, _) => {
                t.deleted.iter_mut().for_each(|d| *d = false);
                Ok(vec![format!("+OK {} messages", t.messages.len())])
            }
            ("NOOP", None, _, _) => Ok(vec!["+OK".into()]),
            ("RETR", Some(n), None, _) => match t.message(n) {
                Ok(i) => return self.send_message(i, None).await,
                Err(e) => Err(e),
            },
            ("TOP", Some(n), Some(lines), _) => match (t.message(n), number(lines)) {
                (Ok(i), Some(lines)) => return self.send_message(i, Some(lines)).await,
                (Err(e), _) => Err(e),
                (_, None) => Err(format!("-ERR invalid line count '{lines}'")),
            },
            ("STAT" | "LIST" | "UIDL" | "DELE" | "RSET" | "NOOP" | "RETR" | "TOP", ..) => {
                Err(format!("-ERR syntax error in {verb}"))
            }
            ("USER" | "PASS" | "STLS", ..) => Err("-ERR already logged in".into()),
            _ => Err("-ERR unknown command".into()),
        };
        match result {
            Ok(lines) => lines.iter().for_each(|l| self.reply(l)),
            Err(e) => self.reply(&e),
        }
    }

    /// RETR (all of it) or TOP (the headers and `body_lines` lines of the body), dot-stuffed.
    /// A message another program has moved since the login (from `new/` to `cur/`, or to
    /// other flags) is found again by its unique name.
    async fn send_message(&mut self, index: usize, body_lines: Option<usize>) {
        let t = self.transaction.as_mut().expect("called in TRANSACTION");
        let message = &mut t.messages[index];
        let read = match maildir::read_message(&message.path, message.size).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (maildir, unique) = (t.maildir.clone(), message.unique.clone());
                match blocking(move || maildir::locate(&maildir, &unique)).await {
                    Ok(Some(path)) => {
                        message.path = path;
                        maildir::read_message(&message.path, message.size).await
                    }
                    Ok(None) => Err(e),
                    Err(e) => Err(e),
                }
            }
            read => read,
        };
        let (size, path) = (message.size, message.path.clone());
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.reply(&format!(
                    "-ERR message {} is gone: another client removed it",
                    index + 1
                ));
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot read a message: {e}");
                return self.reply("-ERR [SYS/TEMP] the message cannot be read");
            }
        };
        match body_lines {
            None => self.reply(&format!("+OK {size} octets")),
            // The size of what follows is not the message's: Dovecot says none either.
            Some(_) => self.reply("+OK top of message follows"),
        }
        stuff(&bytes, body_lines, &mut self.out);
        self.reply(".");
    }

    /// QUIT: in TRANSACTION, the UPDATE state removes the messages marked deleted.
    async fn quit(&mut self) {
        let Some(t) = self.transaction.take() else {
            return self.reply("+OK bye");
        };
        let doomed: Vec<(PathBuf, Vec<u8>)> = t
            .messages
            .iter()
            .zip(&t.deleted)
            .filter(|(_, &d)| d)
            .map(|(m, _)| (m.path.clone(), m.unique.clone()))
            .collect();
        let left = t.deleted.iter().filter(|d| !**d).count();
        let maildir = t.maildir.clone();
        let removed = tokio::task::spawn_blocking(move || remove_messages(&maildir, &doomed))
            .await
            .unwrap_or(false);
        drop(t);
        if removed {
            let plural = if left == 1 { "" } else { "s" };
            self.reply(&format!("+OK bye ({left} message{plural} left)"));
        } else {
            self.reply("-ERR [SYS/PERM] some deleted messages were not removed");
        }
    }
}

/// A message number or line count: decimal digits only (Rust's parse would take a `+`).
fn number(arg: &str) -> Option<usize> {
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    arg.parse().ok()
}

/// Appends a stored message (LF or CRLF lines) to `out` as POP3 sends it: CRLF line endings,
/// a `.` doubled at the start of a line, a final CRLF if the last line had none; with
/// `body_lines`, only the headers and that many lines of the body (TOP). One pass, one copy.
fn stuff(message: &[u8], body_lines: Option<usize>, out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 16 + 2);
    let mut rest = message;
    let mut in_body = false;
    let mut left = body_lines.unwrap_or(usize::MAX);
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if in_body {
            if left == 0 {
                break;
            }
            left -= 1;
        } else if line.is_empty() {
            in_body = true;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = next;
    }
}

/// Unlinks the messages at `doomed` (path and unique name) and fsyncs the directories they were
/// in; false if any could not go. A message no longer at its path is looked for by its unique
/// name ([`maildir::locate`]: another program may have moved it); one in neither place
/// (another client's deletion) counts as removed.
fn remove_messages(maildir: &Path, doomed: &[(PathBuf, Vec<u8>)]) -> bool {
    // Whether the file was there to remove.
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    let mut ok = true;
    for (path, unique) in doomed {
        let removed = match remove(path) {
            Ok(false) => match maildir::locate(maildir, unique) {
                Ok(Some(moved)) => remove(&moved).map(drop),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            removed => removed.map(drop),
        };
        if let Err(e) = removed {
            tracing::error!(path = %path.display(), "cannot delete a message: {e}");
            ok = false;
        }
    }
    if !doomed.is_empty() {
        for sub in ["new", "cur"] {
            if let Err(e) = std::fs::File::open(maildir.join(sub)).and_then(|d| d.sync_all()) {
                tracing::error!(maildir = %maildir.display(), "cannot flush {sub}/: {e}");
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::stuff;

    fn stuffed(message: &[u8], body_lines: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        stuff(message, body_lines, &mut out);
        out
    }

    #[test]
    fn crlf_dot_stuffing_and_top() {
        let message = b"Subject: x\n.hidden: y\r\n\n.line one\nline two\r\n..\nlast";
        assert_eq!(
            stuffed(message, None),
            b"Subject: x\r\n..hidden: y\r\n\r\n..line one\r\nline two\r\n...\r\nlast\r\n"
        );
        assert_eq!(
            stuffed(message, Some(1)),
            b"Subject: x\r\n..hidden: y\r\n\r\n..line one\r\n"
        );
        assert_eq!(
            stuffed(message, Some(0)),
            b"Subject: x\r\n..hidden: y\r\n\r\n"
        );
        assert_eq!(stuffed(b"", None), b"");
    }
}
