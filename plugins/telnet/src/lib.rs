//! The `telnet` plugin: a password-protected admin shell into the running application, in the
//! spirit of Twisted's telnet tap, as a small command language instead of a Python prompt.
//!
//! # Layout
//!
//! - `lib.rs`: [`TelnetPlugin`] (the maker) and [`TelnetConfig`] (its options, the only serde
//!   type). Passwords are turned into Argon2id hashes here, at `mktap` time; the tap holds only
//!   hashes and is written mode 0600.
//! - [`protocol`]: the telnet side of a connection: option negotiation (only ECHO and SGA are
//!   accepted, while the password is typed), IAC framing (interrupts, timing marks, AYT),
//!   CR LF / CR NUL / bare LF lines.
//! - [`auth`]: checking a login, the growing delay after failures per peer address, and the
//!   cap on connections logging in per address.
//! - [`shell`]: the command language, executed against the host's [`host::Control`].
//! - [`server`]: [`TelnetService`]: login, then the command loop.
//!
//! Safe by default: the default endpoint is loopback only, there is no default password, and
//! mktap refuses to make a shell without one.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use host::{secret, Endpoint, Plugin, Service};
use serde::{Deserialize, Serialize};

pub mod auth;
pub mod protocol;
pub mod server;
pub mod shell;

pub use server::TelnetService;

/// A user of the shell: a name and an Argon2id PHC hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub hash: String,
}

/// The telnet plugin's options, on the command line and in the tap.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelnetConfig {
    /// Where to listen: a port number (on 127.0.0.1) or an endpoint.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    #[serde(skip)]
    pub port: Option<Endpoint>,

    /// Another endpoint to listen on (repeatable). Anything but loopback exposes the shell.
    #[arg(long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    #[serde(skip)]
    pub listen: Vec<Endpoint>,

    /// The user that logs in with the password given.
    #[arg(long, value_name = "NAME", default_value = "admin")]
    #[serde(skip)]
    pub username: String,

    /// Read the password from the first line of this file.
    #[arg(long = "password-file", value_name = "FILE")]
    #[serde(skip)]
    pub password_file: Option<PathBuf>,

    /// The password; without a value it is asked for twice on the terminal. A value given
    /// here is visible to other local users in the process list: prefer --password-file.
    #[arg(long, value_name = "PASSWORD", num_args = 0..=1)]
    #[serde(skip)]
    pub password: Option<Option<String>>,

    /// A file of `user:hash` lines (Argon2id PHC hashes), adding those users.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub passwd: Option<PathBuf>,

    /// Users and their Argon2id hashes: what the tap stores.
    #[arg(skip)]
    pub users: Vec<User>,
}

impl Default for TelnetConfig {
    fn default() -> Self {
        TelnetConfig {
            port: None,
            listen: Vec::new(),
            username: "admin".into(),
            password_file: None,
            password: None,
            passwd: None,
            users: Vec::new(),
        }
    }
}

/// `--port 4040` means loopback: an admin shell is not exposed unless an endpoint says so.
fn parse_port(s: &str) -> Result<Endpoint, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return host::cli::parse_endpoint(&format!("tcp:{s}:interface=127.0.0.1"));
    }
    host::cli::parse_endpoint(s)
}

fn read_password_file(path: &PathBuf) -> Result<String, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(format!(
            "--password-file {}: the first line is empty",
            path.display()
        ));
    }
    Ok(password)
}

fn ask_password() -> Result<String, String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(
            "--password without a value asks on a terminal, and there is none; use --password-file"
                .into(),
        );
    }
    let first = rpassword::prompt_password("admin shell password: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let second = rpassword::prompt_password("again: ")
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if first != second {
        return Err("the two passwords differ".into());
    }
    if first.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(first)
}

fn read_passwd(path: &std::path::Path) -> Result<Vec<User>, Vec<String>> {
    let text = host::files::read_small(path)
        .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
        .map_err(|e| vec![format!("--passwd {}: {e}", path.display())])?;
    let mut users = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((name, hash)) => match secret::check_hash(hash) {
                Ok(()) => users.push(User {
                    name: name.to_string(),
                    hash: hash.to_string(),
                }),
                Err(e) => problems.push(format!("--passwd {}:{}: {e}", path.display(), n + 1)),
            },
            None => problems.push(format!(
                "--passwd {}:{}: not a user:hash line",
                path.display(),
                n + 1
            )),
        }
    }
    if problems.is_empty() {
        Ok(users)
    } else {
        Err(problems)
    }
}

/// The maker of the admin shell.
pub struct TelnetPlugin;

impl Plugin for TelnetPlugin {
    const NAME: &'static str = "telnet";
    const DESCRIPTION: &'static str =
        "An admin shell: log in, inspect and change the running application";
    type Config = TelnetConfig;

    fn complete(config: &mut TelnetConfig) -> Result<(), Vec<String>> {
        let password = match (&config.password_file, &config.password) {
            (Some(_), Some(_)) => {
                return Err(vec!["give --password-file or --password, not both".into()])
            }
            (Some(path), None) => Some(read_password_file(path).map_err(|e| vec![e])?),
            (None, Some(Some(value))) => Some(value.clone()),
            (None, Some(None)) => Some(ask_password().map_err(|e| vec![e])?),
            (None, None) => None,
        };
        if let Some(password) = password {
            let hash = secret::hash_password(&password).map_err(|e| vec![e])?;
            config.users.push(User {
                name: config.username.clone(),
                hash,
            });
        }
        if let Some(path) = &config.passwd {
            config.users.extend(read_passwd(path)?);
        }
        Ok(())
    }

    fn take_listen(config: &mut TelnetConfig) -> Vec<Endpoint> {
        let mut listen: Vec<Endpoint> = config.port.take().into_iter().collect();
        listen.append(&mut config.listen);
        listen
    }

    fn default_listen() -> Vec<Endpoint> {
        vec!["tcp:4040:interface=127.0.0.1"
            .parse()
            .expect("a valid endpoint")]
    }

    fn validate(config: &TelnetConfig, listen: &[Endpoint]) -> Vec<String> {
        let mut problems = Vec::new();
        if config.users.is_empty() {
            problems.push(
                "no password: give --password-file FILE, --passwd FILE or --password (there is no default password)"
                    .to_string(),
            );
        }
        for (i, user) in config.users.iter().enumerate() {
            if user.name.is_empty()
                || user.name.contains([':', ' ', '\t'])
                || user.name.chars().any(char::is_control)
            {
                problems.push(format!("user name '{}' is not a plain name", user.name));
            }
            if config.users[..i].iter().any(|u| u.name == user.name) {
                problems.push(format!("user '{}' is given twice", user.name));
            }
            if let Err(e) = secret::check_hash(&user.hash) {
                problems.push(format!("user '{}': {e}", user.name));
            }
        }
        if listen.is_empty() {
            problems.push("no endpoint to listen on (give --port or --listen)".to_string());
        }
        problems
    }

    fn build(
        config: TelnetConfig,
        _state: Option<serde_json::Value>,
    ) -> Result<Arc<dyn Service>, String> {
        Ok(Arc::new(TelnetService::new(config.users)))
    }

    fn holds_secrets(config: &TelnetConfig) -> bool {
        !config.users.is_empty()
    }
}
