//! Relaying: the durable queue for mail to other domains, its delivery (by [`outbound`]) with
//! retries and back-off, and the bounce (a delivery status notification, RFC 3464) when a
//! recipient fails for good or the message outlives the queue lifetime.
//!
//! The queue directory is laid out as a Maildir, so the same [`Deliverer`] puts messages into it
//! durably before SMTP says 250. A queue file is the envelope as `X-Envelope-*` lines, a blank
//! line, then the message (LF line endings):
//!
//! ```text
//! X-Envelope-Queued: 1795217143
//! X-Envelope-Attempts: 2
//! X-Envelope-Next-Attempt: 1795218043
//! X-Envelope-From: <alice@example.com>
//! X-Envelope-To: <carol@remote.test>
//!
//! Received: ...
//! ```
//!
//! A file leaves the queue only after every recipient was accepted by the next server or bounced,
//! and a bounce is on disk before the file goes: a crash can repeat a delivery, never lose one.
//!
//! The retry schedule lives in the queue file, so it survives a restart: after a deferred
//! attempt the file is rewritten (new file in `tmp/`, fsync, rename over, fsync `new/`) with the
//! number of attempts so far (`X-Envelope-Attempts`) and the Unix time before which it is not
//! tried again (`X-Envelope-Next-Attempt`); a fresh file has neither and is due at once. The
//! wait after the n-th deferred attempt is `--relay-min-backoff` × 2^(n-1), at most
//! `--relay-max-backoff`, so a restarted server continues the back-off where it was. Postfix
//! keeps only the next time, in the file's mtime, and derives its back-off from the message's
//! age; the attempt count needs a place of its own, and the rewrite (one per deferral, minutes
//! apart) is what makes both durable together, with the recipient list when that shrinks in the
//! same attempt. The worker reads the envelope of each file it has not seen yet (the first
//! 64 KiB, not the message) and keeps the due times in memory from then on. A recorded time
//! further ahead than `--relay-max-backoff` (the clock was set back, or the setting lowered)
//! counts as `--relay-max-backoff` from now.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use host::ServiceContext;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::maildir::Deliverer;
use crate::outbound::{self, Outcome};
use crate::users::{Directory, Route};

/// The relay's settings, from `--relay`, `--smarthost`, `--relay-resolver`, `--relay-tls`,
/// `--relay-ca`, `--relay-min-backoff`, `--relay-max-backoff` and `--queue-lifetime`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub queue: PathBuf,
    /// `HOST:PORT`; without it, each recipient domain's MX hosts on port 25.
    pub smarthost: Option<String>,
    /// DNS servers for the MX lookups; none: those of /etc/resolv.conf.
    pub resolver: Vec<SocketAddr>,
    /// STARTTLS towards the next server.
    pub tls: outbound::Tls,
    pub hostname: String,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub lifetime: Duration,
}

/// The relay as sessions see it: where to queue, and a bell to ring afterwards.
#[derive(Debug)]
pub struct Relay {
    settings: RelaySettings,
    route: outbound::Route,
    wake: Notify,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// How much of a queue file is read to learn its schedule: the envelope is far smaller (at most
/// 100 recipients of at most 256 octets each).
const ENVELOPE_READ_LIMIT: u64 = 64 * 1024;

/// A queue file's envelope: everything but the message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    /// The SMTP session's queue id, to find the message in the log (empty in files written
    /// before it was recorded).
    id: String,
    queued: u64,
    /// Delivery attempts that were deferred so far.
    attempts: u32,
    /// The Unix time before which the file is not tried again (0: at once).
    next_attempt: u64,
    sender: String,
    recipients: Vec<String>,
}

impl Envelope {
    /// The envelope lines that open a queue file, with the blank line after them.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        if !self.id.is_empty() {
            out.push_str(&format!("X-Envelope-Id: {}\n", self.id));
        }
        out.push_str(&format!("X-Envelope-Queued: {}\n", self.queued));
        if self.attempts > 0 {
            out.push_str(&format!(
                "X-Envelope-Attempts: {}\nX-Envelope-Next-Attempt: {}\n",
                self.attempts, self.next_attempt
            ));
        }
        out.push_str(&format!("X-Envelope-From: <{}>\n", self.sender));
        for rcpt in &self.recipients {
            out.push_str(&format!("X-Envelope-To: <{rcpt}>\n"));
        }
        out.push('\n');
        out.into_bytes()
    }

    /// The envelope at the start of `bytes`, and where the message begins; `None` when the bytes
    /// do not start with a whole envelope.
    fn parse(bytes: &[u8]) -> Option<(Envelope, usize)> {
        let mut id = String::new();
        let mut queued = None;
        let mut attempts = 0;
        let mut next_attempt = 0;
        let mut sender = None;
        let mut recipients = Vec::new();
        let mut offset = 0;
        loop {
            let rest = &bytes[offset..];
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..end]).ok()?;
            offset += end + 1;
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once(": ")?;
            let address = || {
                value
                    .strip_prefix('<')
                    .and_then(|v| v.strip_suffix('>'))
                    .map(str::to_string)
            };
            match key {
                "X-Envelope-Id" => id = value.to_string(),
                "X-Envelope-Queued" => queued = Some(value.parse().ok()?),
                "X-Envelope-Attempts" => attempts = value.parse().ok()?,
                "X-Envelope-Next-Attempt" => next_attempt = value.parse().ok()?,
                "X-Envelope-From" => sender = address(),
                "X-Envelope-To" => recipients.push(address()?),
                _ => return None,
            }
        }
        let envelope = Envelope {
            id,
            queued: queued?,
            attempts,
            next_attempt,
            sender: sender?,
            recipients,
        };
        Some((envelope, offset))
    }
}

/// A queued message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    envelope: Envelope,
    message: Vec<u8>,
}

impl Queued {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.envelope.to_bytes();
        out.extend_from_slice(&self.message);
        out
    }

    fn parse(bytes: &[u8]) -> Option<Queued> {
        let (envelope, offset) = Envelope::parse(bytes)?;
        Some(Queued {
            envelope,
            message: bytes[offset..].to_vec(),
        })
    }
}

impl Relay {
    pub fn new(settings: RelaySettings) -> Relay {
        let route = match &settings.smarthost {
            Some(host) => outbound::Route::Smarthost(host.clone()),
            None => outbound::Route::mx(settings.resolver.clone()),
        };
        Relay {
            settings,
            route,
            wake: Notify::new(),
        }
    }

    pub fn queue(&self) -> &Path {
        &self.settings.queue
    }

    /// The queue file for a message SMTP accepted for `recipients`.
    pub fn queue_file(
        &self,
        id: &str,
        sender: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Vec<u8> {
        Queued {
            envelope: Envelope {
                id: id.to_string(),
                queued: now_unix(),
                attempts: 0,
                next_attempt: 0,
                sender: sender.to_string(),
                recipients: recipients.to_vec(),
            },
            message: message.to_vec(),
        }
        .to_bytes()
    }

    /// Tells the worker that the queue has something new.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the queue worker; it runs until the service stops (a delivery in progress is
    /// finished first, unless the drain deadline passes).
    pub fn start(
        self: &Arc<Self>,
        ctx: &ServiceContext,
        deliverer: Deliverer,
        directory: Directory,
    ) {
        let relay = self.clone();
        let task_ctx = ctx.clone();
        ctx.spawn(async move {
            let ctx = task_ctx;
            let Some(_worker) = relay.lock_queue(&ctx).await else {
                return;
            };
            tokio::select! {
                () = relay.run(&ctx, &deliverer, &directory) => {}
                () = ctx.aborted() => {}
            }
        });
    }

    /// The queue's worker lock ([`crate::lock_dir`] on the queue directory): one worker
    /// delivers from a queue at a time, so a file is never sent twice by two of them, whether
    /// a restarted service's old instance is still finishing a delivery or two processes share
    /// the queue. Waits for it (the other worker ends with its delivery in progress); `None`
    /// when the service stops first. A lock that cannot be taken at all (the file system has
    /// none) is not waited for.
    async fn lock_queue(&self, ctx: &ServiceContext) -> Option<Option<std::os::fd::OwnedFd>> {
        let mut told = false;
        loop {
            let queue = self.settings.queue.clone();
            match crate::blocking(move || crate::lock_dir(&queue)).await {
                Ok(Some(held)) => {
                    if told {
                        tracing::info!(
                            queue = %self.settings.queue.display(),
                            "the other worker is done; delivering from the relay queue"
                        );
                    }
                    return Some(Some(held));
                }
                Ok(None) if !told => {
                    tracing::info!(
                        queue = %self.settings.queue.display(),
                        "another worker delivers from the relay queue; waiting for it to finish"
                    );
                    told = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        queue = %self.settings.queue.display(),
                        "cannot lock the relay queue ({e}); delivering without the lock"
                    );
                    return Some(None);
                }
            }
            // Polled: flock(2) says nothing when it frees, and a blocking wait on the blocking
            // pool could not be called off at a stop (the runtime would wait for it at exit).
            tokio::select! {
                () = ctx.replaced() => return None,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// When a file not seen before is due, from the schedule recorded in its envelope. A file
    /// whose envelope cannot be read is due at once: the attempt reports the problem.
    /// Also the seconds it waits from now.
    async fn recorded(&self, name: &str) -> (Instant, u64) {
        let path = self.settings.queue.join("new").join(name);
        let head = crate::blocking(move || {
            let mut head = Vec::new();
            std::fs::File::open(path)?
                .take(ENVELOPE_READ_LIMIT)
                .read_to_end(&mut head)?;
            Ok(head)
        })
        .await;
        let now = Instant::now();
        let Some((envelope, _)) = head.ok().as_deref().and_then(Envelope::parse) else {
            return (now, 0);
        };
        let wait = envelope
            .next_attempt
            .saturating_sub(now_unix())
            .min(self.settings.max_backoff.as_secs());
        if wait > 0 {
            tracing::debug!(
                file = %name,
                attempts = envelope.attempts,
                "relay queue file waits {wait} s before its next attempt"
            );
        }
        (now + Duration::from_secs(wait), wait)
    }

    async fn run(&self, ctx: &ServiceContext, deliverer: &Deliverer, directory: &Directory) {
        // File name to its next attempt; the file's envelope has the same time, in Unix time.
        let mut schedule: HashMap<String, Instant> = HashMap::new();
        loop {
            let queue = self.settings.queue.join("new");
            let names = crate::blocking(move || list_names(&queue)).await;
            let names = match names {
                Ok(names) => names,
                Err(e) => {
                    tracing::error!(queue = %self.settings.queue.display(), "cannot read the relay queue: {e}");
                    Vec::new()
                }
            };
            let present: HashSet<&String> = names.iter().collect();
            schedule.retain(|name, _| present.contains(name));
            let mut next_wake: Option<Instant> = None;
            // Files first seen in this pass that wait for a recorded time: how many, how long.
            let mut waiting = (0usize, u64::MAX);
            for name in names {
                if ctx.is_replaced() {
                    return;
                }
                let due = match schedule.get(&name) {
                    Some(due) => *due,
                    None => {
                        let (due, wait) = self.recorded(&name).await;
                        if wait > 0 {
                            waiting = (waiting.0 + 1, waiting.1.min(wait));
                        }
                        schedule.insert(name.clone(), due);
                        due
                    }
                };
                if due > Instant::now() {
                    next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
                    continue;
                }
                match self.attempt(&name, deliverer, directory).await {
                    Ok(None) => {
                        schedule.remove(&name);
                    }
                    Ok(Some(due)) => {
                        schedule.insert(name, due);
                        next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
                    }
                    Err(e) => {
                        // The file itself is the problem (unreadable, not a queue file, cannot
                        // be rewritten): leave it for an administrator, and look again only
                        // after the longest wait.
                        tracing::error!(file = %name, "relay queue file skipped: {e}");
                        let due = Instant::now() + self.settings.max_backoff;
                        schedule.insert(name, due);
                    }
                }
            }
            if waiting.0 > 0 {
                tracing::info!(
                    queue = %self.settings.queue.display(),
                    "{} deferred relay queue file(s) wait for their recorded next attempt, \
                     the soonest in {} s",
                    waiting.0,
                    waiting.1
                );
            }
            let sleep = async {
                match next_wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep => {}
                () = ctx.replaced() => return,
            }
        }
    }

    /// One delivery attempt of one queue file. `Ok(None)`: the file is done (delivered or
    /// bounced) and gone; `Ok(Some(due))`: recipients remain, and the file now records the
    /// attempt and its next time, `due`.
    async fn attempt(
        &self,
        name: &str,
        deliverer: &Deliverer,
        directory: &Directory,
    ) -> io::Result<Option<Instant>> {
        let path = self.settings.queue.join("new").join(name);
        let bytes = tokio::fs::read(&path).await?;
        let queued = Queued::parse(&bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a relay queue file"))?;
        drop(bytes);
        let envelope = &queued.envelope;
        let outcomes = outbound::deliver(
            &self.route,
            &self.settings.tls,
            &self.settings.hostname,
            &envelope.sender,
            &envelope.recipients,
            &queued.message,
        )
        .await;
        // Seconds since the message was queued, as Postfix logs its delay=.
        let delay = now_unix().saturating_sub(envelope.queued);
        let expired = delay >= self.settings.lifetime.as_secs();
        let mut failed: Vec<(String, String, bool)> = Vec::new();
        let mut remaining = Vec::new();
        for (rcpt, outcome) in envelope.recipients.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered(session) => {
                    tracing::info!(
                        id = %envelope.id,
                        file = %name,
                        to = %rcpt,
                        relay = %session.relay,
                        delay,
                        tls = %session.security(),
                        "relayed ({})",
                        session.reply
                    );
                }
                Outcome::Failed(reply) => {
                    tracing::warn!(id = %envelope.id, file = %name, to = %rcpt, delay, "relay failed: {reply}");
                    failed.push((rcpt.clone(), reply, false));
                }
                Outcome::Deferred(reason) if expired => {
                    tracing::warn!(id = %envelope.id, file = %name, to = %rcpt, delay, "relay expired: {reason}");
                    failed.push((rcpt.clone(), reason, true));
                }
                Outcome::Deferred(reason) => {
                    tracing::info!(
                        id = %envelope.id,
                        file = %name,
                        to = %rcpt,
                        delay,
                        attempt = envelope.attempts + 1,
                        "relay deferred: {reason}"
                    );
                    remaining.push(rcpt.clone());
                }
            }
        }
        if !failed.is_empty() {
            self.bounce(name, &queued, &failed, deliverer, directory)
                .await?;
        }
        let queue = self.settings.queue.clone();
        let name = name.to_string();
        if remaining.is_empty() {
            crate::blocking(move || {
                std::fs::remove_file(&path)?;
                sync_dir(&queue.join("new"))
            })
            .await?;
            return Ok(None);
        }
        let attempts = envelope.attempts.saturating_add(1);
        let backoff = backoff(
            self.settings.min_backoff,
            self.settings.max_backoff,
            attempts,
        );
        let rest = Queued {
            envelope: Envelope {
                attempts,
                next_attempt: now_unix().saturating_add(backoff.as_secs()),
                recipients: remaining,
                ..queued.envelope
            },
            message: queued.message,
        };
        crate::blocking(move || rewrite(&queue, &name, &rest.to_bytes())).await?;
        Ok(Some(Instant::now() + backoff))
    }

    /// Sends a DSN for `failed` recipients to the sender: into a local Maildir or back into the
    /// queue. A bounce itself (null sender) is never bounced: it is dropped, with a log line.
    async fn bounce(
        &self,
        name: &str,
        queued: &Queued,
        failed: &[(String, String, bool)],
        deliverer: &Deliverer,
        directory: &Directory,
    ) -> io::Result<()> {
        let envelope = &queued.envelope;
        let sender = &envelope.sender;
        let to = failed
            .iter()
            .map(|(rcpt, ..)| rcpt.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if sender.is_empty() {
            tracing::warn!(
                id = %envelope.id,
                file = %name,
                to = %to,
                "a bounce could not be delivered and is dropped (a bounce is never bounced)"
            );
            return Ok(());
        }
        let report = dsn(&self.settings.hostname, queued, failed);
        let (local, domain) = sender.rsplit_once('@').unwrap_or((sender.as_str(), ""));
        let bounce_id = crate::smtp::queue_id();
        let sent_to = match directory.route(local, domain) {
            Route::Local(mailbox) => {
                let mut message = b"Return-Path: <>\n".to_vec();
                message.extend_from_slice(&report);
                deliverer.deliver(vec![mailbox.path], message).await?;
                "the sender's Maildir"
            }
            Route::UnknownUser => {
                tracing::warn!(
                    id = %envelope.id,
                    file = %name,
                    sender = %sender,
                    "bounce to an unknown local user dropped"
                );
                return Ok(());
            }
            Route::Foreign => {
                let file = self.queue_file(&bounce_id, "", std::slice::from_ref(sender), &report);
                deliverer
                    .deliver(vec![self.settings.queue.clone()], file)
                    .await?;
                self.wake();
                "the relay queue"
            }
        };
        tracing::info!(
            id = %envelope.id,
            file = %name,
            sender = %sender,
            to = %to,
            bounce = %bounce_id,
            "sender non-delivery notification into {sent_to}"
        );
        Ok(())
    }
}

/// The wait after `attempts` deferred attempts: `min` doubled for each one after the first, at
/// most `max`.
fn backoff(min: Duration, max: Duration, attempts: u32) -> Duration {
    min.saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(20)))
        .min(max)
}

fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces a queue file atomically: a new file in `tmp/` (mode 0600, as the first one),
/// fsync, rename over, fsync `new/`.
fn rewrite(queue: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = queue.join("tmp").join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, queue.join("new").join(name))?;
    sync_dir(&queue.join("new"))
}

/// The delivery status notification (RFC 3464) for `failed` recipients, with the original
/// message's headers (not its body) attached.
fn dsn(hostname: &str, queued: &Queued, failed: &[(String, String, bool)]) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let rfc2822 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default()
    };
    let arrival =
        time::OffsetDateTime::from_unix_timestamp(queued.envelope.queued as i64).unwrap_or(now);
    // Unique to this report and short: a boundary may have 70 characters (RFC 2046 5.1.1).
    let token = format!(
        "{}.{:09}.{}",
        now.unix_timestamp(),
        now.nanosecond(),
        std::process::id()
    );
    let boundary = format!("{token}/report");
    let mut text = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\n\
         To: <{sender}>\n\
         Subject: Undelivered Mail Returned to Sender\n\
         Date: {date}\n\
         Message-ID: <{token}@{hostname}>\n\
         Auto-Submitted: auto-replied\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\
         \tboundary=\"{boundary}\"\n\
         \n\
         This is a MIME-encapsulated message.\n\
         \n\
         --{boundary}\n\
         Content-Type: text/plain; charset=us-ascii\n\
         \n\
         This is the mail system at host {hostname}.\n\
         \n\
         Your message could not be delivered to one or more recipients.\n\
         \n",
        sender = queued.envelope.sender,
        date = rfc2822(now),
    );
    for (rcpt, reason, _) in failed {
        text.push_str(&format!("<{rcpt}>: {}\n", one_line(reason)));
    }
    text.push_str(&format!(
        "\n--{boundary}\n\
         Content-Type: message/delivery-status\n\
         \n\
         Reporting-MTA: dns; {hostname}\n\
         Arrival-Date: {}\n",
        rfc2822(arrival)
    ));
    for (rcpt, reason, expired) in failed {
        let status = if *expired {
            "4.4.7".to_string()
        } else {
            enhanced_status(smtp_reply(reason)).unwrap_or_else(|| "5.0.0".into())
        };
        text.push_str(&format!(
            "\nFinal-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: {status}\n"
        ));
        if *expired {
            text.push_str(&format!(
                "Diagnostic-Code: X-taphost; delivery time expired: {}\n",
                one_line(reason)
            ));
        } else {
            // As Postfix writes it: which server said no.
            if let Some(remote) = remote_mta(reason) {
                text.push_str(&format!("Remote-MTA: dns; {remote}\n"));
            }
            text.push_str(&format!(
                "Diagnostic-Code: smtp; {}\n",
                one_line(smtp_reply(reason))
            ));
        }
    }
    text.push_str(&format!(
        "\n--{boundary}\nContent-Type: text/rfc822-headers\n\n"
    ));
    let mut out = text.into_bytes();
    let headers_end = queued
        .message
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(queued.message.len(), |i| i + 1);
    out.extend_from_slice(&queued.message[..headers_end]);
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    out
}

/// The next server's reply in an outcome's text (`host H said: REPLY (in reply to C
/// command)`), or the whole text when it is not one.
fn smtp_reply(reason: &str) -> &str {
    match reason.split_once(" said: ") {
        Some((_, reply)) => reply
            .rsplit_once(" (in reply to ")
            .map_or(reply, |(r, _)| r),
        None => reason,
    }
}

/// The server named in a reason `host NAME[ADDRESS]:PORT said: ...` (or `host HOST:PORT`, the
/// smarthost), without its address and port.
fn remote_mta(reason: &str) -> Option<&str> {
    let (peer, _) = reason.strip_prefix("host ")?.split_once(" said: ")?;
    let peer = match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    };
    let name = match peer.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']')?,
        None => peer.split('[').next()?,
    };
    (!name.is_empty()).then_some(name)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `5.1.1` from a reply like `550 5.1.1 <x>: user unknown`.
fn enhanced_status(reply: &str) -> Option<String> {
    let code = reply.split_whitespace().nth(1)?;
    let parts: Vec<&str> = code.split('.').collect();
    (parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_files_round_trip() {
        let mut queued = Queued {
            envelope: Envelope {
                id: "6B0171A1000000".into(),
                queued: 42,
                attempts: 0,
                next_attempt: 0,
                sender: String::new(),
                recipients: vec!["a@b.test".into(), "c@d.test".into()],
            },
            message: b"Subject: x\n\nbody\n".to_vec(),
        };
        let fresh = queued.to_bytes();
        assert!(!String::from_utf8_lossy(&fresh).contains("Attempts"));
        assert_eq!(Queued::parse(&fresh), Some(queued.clone()));
        queued.envelope.attempts = 3;
        queued.envelope.next_attempt = 1_795_218_043;
        let retried = queued.to_bytes();
        assert!(retried.starts_with(
            b"X-Envelope-Id: 6B0171A1000000\nX-Envelope-Queued: 42\nX-Envelope-Attempts: 3\n\
              X-Envelope-Next-Attempt: 1795218043\nX-Envelope-From: <>\n"
        ));
        assert_eq!(Queued::parse(&retried), Some(queued.clone()));
        // Files queued before the id was recorded have none.
        let old = &retried[b"X-Envelope-Id: 6B0171A1000000\n".len()..];
        queued.envelope.id.clear();
        assert_eq!(Queued::parse(old), Some(queued));
        assert_eq!(Queued::parse(b"Subject: x\n\nbody\n"), None);
        assert_eq!(
            Queued::parse(
                b"X-Envelope-Queued: 1\nX-Envelope-Attempts: many\nX-Envelope-From: <>\n\n"
            ),
            None
        );
        // The envelope alone, as the worker reads it from a file's first bytes.
        let (envelope, offset) = Envelope::parse(&retried).expect("an envelope");
        assert_eq!(
            (envelope.attempts, &retried[offset..]),
            (3, &b"Subject: x\n\nbody\n"[..])
        );
        assert_eq!(
            Envelope::parse(b"X-Envelope-Queued: 1\nX-Envelope-Fr"),
            None
        );
    }

    #[test]
    fn backoff_doubles_from_the_first_deferral_up_to_the_maximum() {
        let s = Duration::from_secs;
        let waits: Vec<u64> = (1..=6)
            .map(|n| backoff(s(300), s(4000), n).as_secs())
            .collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 4000, 4000]);
        assert_eq!(backoff(s(300), s(4000), u32::MAX), s(4000));
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            enhanced_status("550 5.1.1 <x>: no").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(enhanced_status("550 user unknown"), None);
    }

    #[test]
    fn dsn_names_every_failed_recipient() {
        let queued = Queued {
            envelope: Envelope {
                id: String::new(),
                queued: 1_700_000_000,
                attempts: 0,
                next_attempt: 0,
                sender: "al@a.test".into(),
                recipients: vec![],
            },
            message: b"Subject: hello\nFrom: al@a.test\n\nsecret body\n".to_vec(),
        };
        let hostname = format!("{}.a.test", "long-host-name".repeat(10));
        let report = String::from_utf8(dsn(
            &hostname,
            &queued,
            &[
                (
                    "x@b.test".into(),
                    "host mx.b.test[192.0.2.1]:25 said: 550 5.1.1 <x@b.test>: user unknown \
                     (in reply to RCPT TO command)"
                        .into(),
                    false,
                ),
                ("y@b.test".into(), "cannot connect".into(), true),
            ],
        ))
        .expect("ascii");
        assert!(report.contains(
            "Final-Recipient: rfc822; x@b.test\nAction: failed\nStatus: 5.1.1\n\
             Remote-MTA: dns; mx.b.test\n\
             Diagnostic-Code: smtp; 550 5.1.1 <x@b.test>: user unknown\n"
        ));
        assert!(report.contains(
            "<x@b.test>: host mx.b.test[192.0.2.1]:25 said: 550 5.1.1 <x@b.test>: user \
             unknown (in reply to RCPT TO command)\n"
        ));
        assert!(
            report.contains("Final-Recipient: rfc822; y@b.test\nAction: failed\nStatus: 4.4.7\n")
        );
        assert!(report.contains("Subject: hello\n"));
        assert!(!report.contains("secret body"));
        let boundary = report
            .split_once("boundary=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .expect("a boundary")
            .0;
        assert!(boundary.len() <= 70, "{boundary}");
        assert!(report.ends_with(&format!("\n--{boundary}--\n")));
        let id = report
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .expect("a Message-ID");
        assert!(id.ends_with(&format!("@{hostname}>")), "{id}");
    }

    #[test]
    fn remote_mtas_are_named_without_address_and_port() {
        for (reason, name) in [
            (
                "host mx.b.test[192.0.2.1]:25 said: 550 no",
                Some("mx.b.test"),
            ),
            ("host 127.0.0.1:2525 said: 550 no", Some("127.0.0.1")),
            ("host [::1]:25 said: 550 no", Some("::1")),
            ("cannot connect", None),
        ] {
            assert_eq!(remote_mta(reason), name, "{reason}");
        }
    }
}
