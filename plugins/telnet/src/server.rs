//! The telnet service: each connection logs in (three tries), then runs shell commands until
//! it quits, idles out, or the service stops.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use host::net::{Peer, Stream};
use host::service::{serve, ServiceContext};
use host::{BoundListener, Service};

use crate::auth::{self, Failures, Unauthenticated, MAX_UNAUTHENTICATED};
use crate::protocol::{Line, Telnet};
use crate::shell::{Outcome, Shell};
use crate::{TelnetConfig, User};

const TRIES: u32 = 3;
/// A logged-in session with no input for this long is closed.
const IDLE: Duration = Duration::from_secs(15 * 60);
/// Time to type a user name and password.
const LOGIN_TIME: Duration = Duration::from_secs(60);
/// Time for the whole login, every try (sshd's LoginGraceTime): a connection that keeps
/// interrupting its prompts cannot hold its place among [`MAX_UNAUTHENTICATED`] for ever.
const LOGIN_GRACE: Duration = Duration::from_secs(180);

/// The running admin shell.
#[derive(Debug)]
pub struct TelnetService {
    /// Swapped whole by a live reconfigure; each login reads the current list.
    users: Arc<RwLock<Arc<Vec<User>>>>,
    failures: Arc<Failures>,
    logging_in: Arc<Unauthenticated>,
}

impl TelnetService {
    pub fn new(users: Vec<User>) -> Self {
        TelnetService {
            users: Arc::new(RwLock::new(Arc::new(users))),
            failures: Arc::new(Failures::default()),
            logging_in: Arc::new(Unauthenticated::default()),
        }
    }
}

impl Service for TelnetService {
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String> {
        for bound in listeners {
            let listener = bound.listener.into_async().map_err(|e| e.to_string())?;
            let users = self.users.clone();
            let guards = Guards {
                failures: self.failures.clone(),
                logging_in: self.logging_in.clone(),
            };
            let conn_ctx = ctx.clone();
            serve(ctx, listener, move |stream, peer| {
                session(
                    conn_ctx.clone(),
                    users.clone(),
                    guards.clone(),
                    stream,
                    peer,
                )
            });
        }
        Ok(())
    }

    /// Every field of the shell's config can change live: only the users are kept.
    fn reconfigure(&self, config: &serde_json::Value) -> Result<bool, String> {
        let config: TelnetConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config.users);
        Ok(true)
    }
}

/// What every connection of the service shares to slow down password guessing.
#[derive(Debug, Clone)]
struct Guards {
    failures: Arc<Failures>,
    logging_in: Arc<Unauthenticated>,
}

/// Reads a line unless the service stops or `limit` passes first.
async fn next_line(
    telnet: &mut Telnet<Stream>,
    ctx: &ServiceContext,
    limit: Duration,
) -> Option<Line> {
    tokio::select! {
        line = tokio::time::timeout(limit, telnet.read_line()) => match line {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => None,
            Err(_) => {
                let _ = telnet.write("\nidle too long; goodbye\n").await;
                None
            }
        },
        () = ctx.stopping() => {
            let _ = telnet.write("\nthe server is stopping; goodbye\n").await;
            None
        }
    }
}

/// Options whose value holds a password or its hash, in any plugin's `add` line: mail's
/// `-u/--user USER=PASS`, telnet's `--passwd USER:HASH`.
const SECRET_OPTIONS: [&str; 3] = ["-u", "--user", "--passwd"];

/// A shell line for the log with secrets left out: the value of a [`SECRET_OPTIONS`] option
/// (`-u V`, `-uV`, `--user=V`), and whatever `set SERVICE FIELD ...` gives a field named for
/// users or passwords (mail's `users` holds Argon2 hashes).
fn redacted(line: &str) -> String {
    const HIDDEN: &str = "[not logged]";
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let set_field = |field: &str| {
        let field = field.to_ascii_lowercase();
        ["user", "pass", "secret", "hash"]
            .iter()
            .any(|s| field.contains(s))
    };
    if words.first().is_some_and(|w| w.eq_ignore_ascii_case("set"))
        && words.get(2).is_some_and(|field| set_field(field))
    {
        out.extend(words[..3].iter().map(|w| w.to_string()));
        if words.len() > 3 {
            out.push(HIDDEN.to_string());
        }
        return out.join(" ");
    }
    let mut hide_next = false;
    for word in words {
        if hide_next {
            out.push(HIDDEN.to_string());
            hide_next = false;
            continue;
        }
        if SECRET_OPTIONS.contains(&word) {
            hide_next = true;
            out.push(word.to_string());
        } else if let Some((option, _)) = word
            .split_once('=')
            .filter(|(option, _)| option.starts_with("--") && SECRET_OPTIONS.contains(option))
        {
            out.push(format!("{option}={HIDDEN}"));
        } else if word.starts_with("-u") && word.len() > 2 && !word.starts_with("--") {
            out.push(format!("-u{HIDDEN}"));
        } else {
            out.push(word.to_string());
        }
    }
    out.join(" ")
}

fn text(line: Line) -> Option<String> {
    match line {
        Line::Text(text) => Some(text),
        Line::TooLong | Line::Interrupted => None,
    }
}

/// Up to [`TRIES`] tries; an interrupt (Ctrl-C) at a prompt starts the try again, costing
/// none.
async fn login(
    telnet: &mut Telnet<Stream>,
    ctx: &ServiceContext,
    users: &RwLock<Arc<Vec<User>>>,
    failures: &Failures,
    peer: Option<IpAddr>,
) -> Option<String> {
    let mut attempt = 1;
    while attempt <= TRIES {
        telnet.write("username: ").await.ok()?;
        let name = match next_line(telnet, ctx, LOGIN_TIME).await? {
            Line::Interrupted => {
                telnet.write("\n").await.ok()?;
                continue;
            }
            line => text(line).unwrap_or_default(),
        };
        telnet.hide_input(true).await.ok()?;
        telnet.write("password: ").await.ok()?;
        let password = next_line(telnet, ctx, LOGIN_TIME).await;
        telnet.hide_input(false).await.ok()?;
        telnet.write("\n").await.ok()?;
        let password = match password? {
            Line::Interrupted => continue,
            line => text(line).unwrap_or_default(),
        };
        let current = users.read().unwrap_or_else(|p| p.into_inner()).clone();
        if auth::check(&current, &name, password).await {
            failures.forget(peer);
            return Some(name);
        }
        let delay = failures.record(peer);
        tracing::warn!(
            "failed login for user '{}' from {} (try {attempt} of {TRIES})",
            name.escape_debug(),
            peer.map_or_else(|| "a local socket".to_string(), |p| p.to_string())
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.stopping() => return None,
        }
        telnet.write("login incorrect\n").await.ok()?;
        attempt += 1;
    }
    let _ = telnet.write("too many failures; goodbye\n").await;
    None
}

async fn session(
    ctx: ServiceContext,
    users: Arc<RwLock<Arc<Vec<User>>>>,
    guards: Guards,
    stream: Stream,
    peer: Peer,
) {
    let mut telnet = Telnet::new(stream);
    // Held until the login ends: a session that has logged in is not counted.
    let Some(logging_in) = guards.logging_in.enter(peer.ip()) else {
        tracing::warn!(
            "refused a connection from {peer}: {MAX_UNAUTHENTICATED} connections from that address are logging in already"
        );
        let _ = telnet
            .write(&format!(
                "too many connections from your address are logging in ({MAX_UNAUTHENTICATED} at most); try again later\n"
            ))
            .await;
        return;
    };
    let Some(control) = ctx.control() else {
        let _ = telnet
            .write("this shell has no application to control\n")
            .await;
        return;
    };
    let app = control.status().await.name;
    if telnet
        .write(&format!("taphost admin shell for application '{app}'\n"))
        .await
        .is_err()
    {
        return;
    }
    let login = tokio::time::timeout(
        LOGIN_GRACE,
        login(&mut telnet, &ctx, &users, &guards.failures, peer.ip()),
    )
    .await;
    drop(logging_in);
    let user = match login {
        Ok(Some(user)) => user,
        Ok(None) => return,
        Err(_) => {
            let _ = telnet.write("\nlogin took too long; goodbye\n").await;
            return;
        }
    };
    tracing::info!("user '{user}' logged in from {peer}");
    let shell = Shell::new(control, ctx.name());
    let prompt = format!("{app}> ");
    if telnet.write("type help for the commands\n").await.is_err() {
        return;
    }
    loop {
        if telnet.write(&prompt).await.is_err() {
            return;
        }
        let Some(line) = next_line(&mut telnet, &ctx, IDLE).await else {
            break;
        };
        let line = match line {
            Line::Text(line) => line,
            // Ctrl-C: the line typed so far is gone; a fresh prompt.
            Line::Interrupted => {
                if telnet.write("\n").await.is_err() {
                    return;
                }
                continue;
            }
            Line::TooLong => {
                if telnet.write("error: line too long\n").await.is_err() {
                    return;
                }
                continue;
            }
        };
        // An audit line per command; one that carries a password is logged by its name only,
        // and the values of options that take one are left out ([`redacted`]).
        if line.to_ascii_lowercase().contains("password") {
            let command = line.split_whitespace().next().unwrap_or("");
            tracing::info!(
                "{user}: {} [rest not logged: it holds a password]",
                command.escape_debug()
            );
        } else {
            tracing::info!("{user}: {}", redacted(&line).escape_debug());
        }
        match shell.execute(&line).await {
            Outcome::Reply(reply) => {
                if telnet.write(&reply).await.is_err() {
                    return;
                }
            }
            Outcome::Close(reply) => {
                let _ = telnet.write(&reply).await;
                break;
            }
        }
    }
    tracing::info!("user '{user}' from {peer} left");
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn secrets_stay_out_of_the_audit_line() {
        for (line, logged) in [
            (
                "add mail --name m2 -d e.net=/m -u erin=Plain55 -s tcp:25",
                "add mail --name m2 -d e.net=/m -u [not logged] -s tcp:25",
            ),
            (
                "add mail -d e.net=/m --user erin=Plain55 -uerin=x --user=erin=y",
                "add mail -d e.net=/m --user [not logged] -u[not logged] --user=[not logged]",
            ),
            (
                "add telnet --passwd admin:$argon2id$v=19$x",
                "add telnet --passwd [not logged]",
            ),
            (
                "set mail users {\"a@b\": \"$argon2id$...\"}",
                "set mail users [not logged]",
            ),
            ("set mail hostname mx.e.net", "set mail hostname mx.e.net"),
            ("status", "status"),
        ] {
            assert_eq!(redacted(line), logged, "{line}");
        }
    }
}
