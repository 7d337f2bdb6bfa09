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
//! X-Envelope-From: <alice@example.com>
//! X-Envelope-To: <carol@remote.test>
//!
//! Received: ...
//! ```
//!
//! A file leaves the queue only after every recipient was accepted by the next server or bounced,
//! and a bounce is on disk before the file goes: a crash can repeat a delivery, never lose one.
//! Retry times are kept in memory; after a restart every queued message is tried at once.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use host::ServiceContext;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::maildir::{self, Deliverer};
use crate::outbound::{self, Outcome};
use crate::users::{Directory, Route};

/// The relay's settings, from `--relay`, `--smarthost`, `--relay-min-backoff`,
/// `--relay-max-backoff` and `--queue-lifetime`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub queue: PathBuf,
    /// `HOST:PORT`; without it, each recipient domain's MX hosts on port 25.
    pub smarthost: Option<String>,
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

/// A queued message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    queued: u64,
    sender: String,
    recipients: Vec<String>,
    message: Vec<u8>,
}

impl Queued {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = envelope(&self.sender, &self.recipients, self.queued);
        out.extend_from_slice(&self.message);
        out
    }

    fn parse(bytes: &[u8]) -> Option<Queued> {
        let mut queued = None;
        let mut sender = None;
        let mut recipients = Vec::new();
        let mut rest = bytes;
        loop {
            let end = rest.iter().position(|&b| b == b'\n')?;
            let line = std::str::from_utf8(&rest[..end]).ok()?;
            rest = &rest[end + 1..];
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
                "X-Envelope-Queued" => queued = value.parse().ok(),
                "X-Envelope-From" => sender = address(),
                "X-Envelope-To" => recipients.push(address()?),
                _ => return None,
            }
        }
        Some(Queued {
            queued: queued?,
            sender: sender?,
            recipients,
            message: rest.to_vec(),
        })
    }
}

/// The envelope lines that open a queue file.
pub fn envelope(sender: &str, recipients: &[String], queued: u64) -> Vec<u8> {
    let mut out = format!("X-Envelope-Queued: {queued}\nX-Envelope-From: <{sender}>\n");
    for rcpt in recipients {
        out.push_str(&format!("X-Envelope-To: <{rcpt}>\n"));
    }
    out.push('\n');
    out.into_bytes()
}

impl Relay {
    pub fn new(settings: RelaySettings) -> Relay {
        let route = match &settings.smarthost {
            Some(host) => outbound::Route::Smarthost(host.clone()),
            None => outbound::Route::mx(),
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
    pub fn queue_file(&self, sender: &str, recipients: &[String], message: &[u8]) -> Vec<u8> {
        let mut out = envelope(sender, recipients, now_unix());
        out.extend_from_slice(message);
        out
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
            tokio::select! {
                () = relay.run(&ctx, &deliverer, &directory) => {}
                () = ctx.aborted() => {}
            }
        });
    }

    async fn run(&self, ctx: &ServiceContext, deliverer: &Deliverer, directory: &Directory) {
        // File name to (attempts so far, next attempt).
        let mut schedule: HashMap<String, (u32, Instant)> = HashMap::new();
        loop {
            let queue = self.settings.queue.join("new");
            let names = tokio::task::spawn_blocking(move || list_names(&queue))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
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
            for name in names {
                if ctx.is_stopping() {
                    return;
                }
                let now = Instant::now();
                let (attempts, due) = *schedule.entry(name.clone()).or_insert((0, now));
                if due > now {
                    next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
                    continue;
                }
                match self.attempt(&name, deliverer, directory).await {
                    Ok(true) => {
                        schedule.remove(&name);
                    }
                    Ok(false) => {
                        let backoff = self
                            .settings
                            .min_backoff
                            .saturating_mul(2u32.saturating_pow(attempts.min(20)))
                            .min(self.settings.max_backoff);
                        let due = Instant::now() + backoff;
                        schedule.insert(name, (attempts + 1, due));
                        next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
                    }
                    Err(e) => {
                        // The file itself is the problem (unreadable, not a queue file): leave
                        // it for an administrator, and look again only after the longest wait.
                        tracing::error!(file = %name, "relay queue file skipped: {e}");
                        let due = Instant::now() + self.settings.max_backoff;
                        schedule.insert(name, (attempts + 1, due));
                    }
                }
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
                () = ctx.stopping() => return,
            }
        }
    }

    /// One delivery attempt of one queue file. `Ok(true)`: the file is done (delivered or
    /// bounced) and gone; `Ok(false)`: recipients remain, try later.
    async fn attempt(
        &self,
        name: &str,
        deliverer: &Deliverer,
        directory: &Directory,
    ) -> io::Result<bool> {
        let path = self.settings.queue.join("new").join(name);
        let bytes = tokio::fs::read(&path).await?;
        let queued = Queued::parse(&bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a relay queue file"))?;
        drop(bytes);
        let outcomes = outbound::deliver(
            &self.route,
            &self.settings.hostname,
            &queued.sender,
            &queued.recipients,
            &queued.message,
        )
        .await;
        let expired = now_unix().saturating_sub(queued.queued) >= self.settings.lifetime.as_secs();
        let mut failed: Vec<(String, String, bool)> = Vec::new();
        let mut remaining = Vec::new();
        for (rcpt, outcome) in queued.recipients.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {
                    tracing::info!(file = %name, to = %rcpt, via = %self.route, "relayed");
                }
                Outcome::Failed(reply) => {
                    tracing::warn!(file = %name, to = %rcpt, "relay failed: {reply}");
                    failed.push((rcpt.clone(), reply, false));
                }
                Outcome::Deferred(reason) if expired => {
                    tracing::warn!(file = %name, to = %rcpt, "relay expired: {reason}");
                    failed.push((rcpt.clone(), reason, true));
                }
                Outcome::Deferred(reason) => {
                    tracing::info!(file = %name, to = %rcpt, "relay deferred: {reason}");
                    remaining.push(rcpt.clone());
                }
            }
        }
        if !failed.is_empty() {
            self.bounce(&queued, &failed, deliverer, directory).await?;
        }
        let queue = self.settings.queue.clone();
        let name = name.to_string();
        let finished = remaining.is_empty();
        let changed = remaining.len() != queued.recipients.len();
        let rest = Queued {
            recipients: remaining,
            ..queued
        };
        tokio::task::spawn_blocking(move || {
            if finished {
                std::fs::remove_file(&path)?;
                sync_dir(&queue.join("new"))
            } else if changed {
                rewrite(&queue, &name, &rest.to_bytes())
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        Ok(finished)
    }

    /// Sends a DSN for `failed` recipients to the sender: into a local Maildir or back into the
    /// queue. A bounce itself (null sender) is never bounced: it is dropped, with a log line.
    async fn bounce(
        &self,
        queued: &Queued,
        failed: &[(String, String, bool)],
        deliverer: &Deliverer,
        directory: &Directory,
    ) -> io::Result<()> {
        if queued.sender.is_empty() {
            tracing::warn!("a bounce could not be delivered and is dropped");
            return Ok(());
        }
        let report = dsn(&self.settings.hostname, queued, failed);
        let (local, domain) = queued
            .sender
            .rsplit_once('@')
            .unwrap_or((queued.sender.as_str(), ""));
        match directory.route(local, domain) {
            Route::Local(mailbox) => {
                let mut message = b"Return-Path: <>\n".to_vec();
                message.extend_from_slice(&report);
                deliverer.deliver(vec![mailbox.path], message).await
            }
            Route::UnknownUser => {
                tracing::warn!(sender = %queued.sender, "bounce to an unknown local user dropped");
                Ok(())
            }
            Route::Foreign => {
                let file = self.queue_file("", std::slice::from_ref(&queued.sender), &report);
                deliverer
                    .deliver(vec![self.settings.queue.clone()], file)
                    .await?;
                self.wake();
                Ok(())
            }
        }
    }
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

/// Replaces a queue file atomically: a new file in `tmp/`, fsync, rename over, fsync `new/`.
fn rewrite(queue: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = queue.join("tmp").join(name);
    let mut file = std::fs::File::create(&tmp)?;
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
    let arrival = time::OffsetDateTime::from_unix_timestamp(queued.queued as i64).unwrap_or(now);
    let boundary = format!("{}/{hostname}", maildir::unique_name(hostname, 0, 0));
    let mut text = format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\n\
         To: <{sender}>\n\
         Subject: Undelivered Mail Returned to Sender\n\
         Date: {date}\n\
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
        sender = queued.sender,
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
            enhanced_status(reason).unwrap_or_else(|| "5.0.0".into())
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
            text.push_str(&format!("Diagnostic-Code: smtp; {}\n", one_line(reason)));
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
        let queued = Queued {
            queued: 42,
            sender: String::new(),
            recipients: vec!["a@b.test".into(), "c@d.test".into()],
            message: b"Subject: x\n\nbody\n".to_vec(),
        };
        assert_eq!(Queued::parse(&queued.to_bytes()), Some(queued));
        assert_eq!(Queued::parse(b"Subject: x\n\nbody\n"), None);
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
            queued: 1_700_000_000,
            sender: "al@a.test".into(),
            recipients: vec![],
            message: b"Subject: hello\nFrom: al@a.test\n\nsecret body\n".to_vec(),
        };
        let report = String::from_utf8(dsn(
            "mx.a.test",
            &queued,
            &[
                (
                    "x@b.test".into(),
                    "550 5.1.1 <x@b.test>: user unknown".into(),
                    false,
                ),
                ("y@b.test".into(), "cannot connect".into(), true),
            ],
        ))
        .expect("ascii");
        assert!(
            report.contains("Final-Recipient: rfc822; x@b.test\nAction: failed\nStatus: 5.1.1\n")
        );
        assert!(
            report.contains("Final-Recipient: rfc822; y@b.test\nAction: failed\nStatus: 4.4.7\n")
        );
        assert!(report.contains("Subject: hello\n"));
        assert!(!report.contains("secret body"));
    }
}
