//! Offering a message to another server: where to (the smarthost, or each domain's MX hosts)
//! and the SMTP client conversation, with one outcome per recipient.
//!
//! MX routing follows RFC 5321 5.1: MX hosts in order of preference, the domain itself when it
//! has no MX record (the implicit MX), and nothing at all for a null MX (RFC 7505). The next
//! host is tried only when a host cannot be reached or refuses the session; once a host has
//! answered the transaction, its answer stands.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// How long to wait for the other server to answer one command (RFC 5321 4.5.3.2 gives 5 to 10
/// minutes; the connection itself gets less).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The SMTP port of MX hosts.
const SMTP_PORT: u16 = 25;

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later; the reply or error.
    Deferred(String),
    /// Bounce; the reply.
    Failed(String),
}

/// Where relayed mail goes.
pub enum Route {
    /// Everything to one `HOST:PORT` (`--smarthost`).
    Smarthost(String),
    /// Each domain's MX hosts; the resolver is made (from /etc/resolv.conf) on first use.
    Mx(Box<OnceCell<Result<TokioResolver, String>>>),
}

impl Route {
    pub fn mx() -> Route {
        Route::Mx(Box::default())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Smarthost(host) => f.write_str(host),
            Route::Mx(_) => f.write_str("MX"),
        }
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({self})")
    }
}

/// Offers a message (LF line endings) for `recipients`; one outcome each, in order.
pub async fn deliver(
    route: &Route,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    match route {
        Route::Smarthost(host) => {
            offer(
                std::slice::from_ref(host),
                hostname,
                sender,
                recipients,
                message,
            )
            .await
        }
        Route::Mx(resolver) => {
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
                    Ok(hosts) => offer(&hosts, hostname, sender, &group, message).await,
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

/// The `HOST:25` targets of a domain, or the outcome for all its recipients when there are none.
async fn mx_hosts(
    resolver: &OnceCell<Result<TokioResolver, String>>,
    domain: &str,
) -> Result<Vec<String>, Outcome> {
    let resolver = resolver
        .get_or_init(|| async {
            TokioResolver::builder_tokio()
                .map(|b| b.build())
                .map_err(|e| format!("cannot set up DNS: {e}"))
        })
        .await
        .as_ref()
        .map_err(|e| Outcome::Deferred(e.clone()))?;
    // A trailing dot: the domain is absolute, never tried under a search domain.
    let records = match resolver.mx_lookup(format!("{domain}.")).await {
        Ok(lookup) => lookup
            .iter()
            .map(|mx| (mx.preference(), mx.exchange().to_ascii()))
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(Outcome::Deferred(format!("MX lookup for {domain}: {e}"))),
    };
    mx_targets(domain, records).map_err(Outcome::Failed)
}

/// RFC 5321 5.1 and RFC 7505: MX hosts by preference; the domain itself without MX records;
/// an error (a permanent one) for a null MX.
fn mx_targets(domain: &str, mut records: Vec<(u16, String)>) -> Result<Vec<String>, String> {
    let host = |name: &str| format!("{}:{SMTP_PORT}", name.trim_end_matches('.'));
    if records.is_empty() {
        return Ok(vec![host(domain)]);
    }
    if records.len() == 1 && records[0].1.trim_end_matches('.').is_empty() {
        return Err(format!("550 5.1.10 {domain} accepts no mail (null MX)"));
    }
    records.sort_by_key(|(preference, _)| *preference);
    Ok(records
        .into_iter()
        .filter(|(_, name)| !name.trim_end_matches('.').is_empty())
        .map(|(_, name)| host(&name))
        .collect())
}

/// Tries each host in turn until one takes the session; the last host's trouble defers all.
async fn offer(
    hosts: &[String],
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    let mut trouble = String::from("no host to try");
    for host in hosts {
        match send(host, hostname, sender, recipients, message).await {
            Ok(outcomes) => return outcomes,
            Err(e) => trouble = e,
        }
    }
    recipients
        .iter()
        .map(|_| Outcome::Deferred(trouble.clone()))
        .collect()
}

/// An SMTP reply: its code and its text (lines joined).
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }
}

struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    async fn reply(&mut self) -> Result<Reply, String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.io.read_line(&mut line))
                .await
                .map_err(|_| "timeout waiting for the next server".to_string())?
                .map_err(|e| format!("connection to the next server: {e}"))?;
            if read == 0 {
                return Err("the next server closed the connection".into());
            }
            if line.len() > 2000 {
                return Err("the next server sent a line too long".into());
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
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("connection to the next server: {e}"))?;
        self.reply().await
    }
}

/// Offers the message to one host; one outcome per recipient, or an error that defers them all
/// (connection trouble, a refused greeting or sender with 4xx).
async fn send(
    host: &str,
    hostname: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<Outcome>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host))
        .await
        .map_err(|_| format!("timeout connecting to {host}"))?
        .map_err(|e| format!("cannot connect to {host}: {e}"))?;
    let mut client = Client {
        io: BufReader::new(stream),
    };
    let greeting = client.reply().await?;
    if greeting.class() != 2 {
        return Err(format!("greeting: {}", greeting.text));
    }
    let mut hello = client.command(&format!("EHLO {}", hostname)).await?;
    if hello.class() != 2 {
        hello = client.command(&format!("HELO {}", hostname)).await?;
        if hello.class() != 2 {
            return Err(format!("HELO: {}", hello.text));
        }
    }
    let everyone = |outcome: Outcome| recipients.iter().map(|_| outcome.clone()).collect();
    let mail = client.command(&format!("MAIL FROM:<{}>", sender)).await?;
    match mail.class() {
        2 => {}
        5 => return Ok(everyone(Outcome::Failed(mail.text))),
        _ => return Err(format!("MAIL: {}", mail.text)),
    }
    let mut outcomes = Vec::new();
    for rcpt in recipients {
        let reply = client.command(&format!("RCPT TO:<{rcpt}>")).await?;
        outcomes.push(match reply.class() {
            2 => None,
            5 => Some(Outcome::Failed(reply.text)),
            _ => Some(Outcome::Deferred(reply.text)),
        });
    }
    if outcomes.iter().all(Option::is_some) {
        let _ = client.command("QUIT").await;
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let data = client.command("DATA").await?;
    let verdict = if data.class() == 3 {
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
        client
            .io
            .get_mut()
            .write_all(&wire)
            .await
            .map_err(|e| format!("connection to the next server: {e}"))?;
        client.reply().await?
    } else {
        data
    };
    let accepted = match verdict.class() {
        2 => Outcome::Delivered,
        5 => Outcome::Failed(verdict.text),
        _ => Outcome::Deferred(verdict.text),
    };
    let _ = client.command("QUIT").await;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| accepted.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_targets_follow_rfc_5321_and_7505() {
        assert_eq!(
            mx_targets("a.test", vec![]).expect("implicit MX"),
            ["a.test:25"]
        );
        assert_eq!(
            mx_targets(
                "a.test",
                vec![(20, "backup.a.test.".into()), (10, "mx.a.test.".into())]
            )
            .expect("by preference"),
            ["mx.a.test:25", "backup.a.test:25"]
        );
        let null = mx_targets("a.test", vec![(0, ".".into())]).expect_err("null MX");
        assert!(null.starts_with("550 5.1.10"), "{null}");
    }
}
