//! The shell's command language, executed against the host's [`Control`].
//!
//! Every command answers in lines; an error is one line and changes nothing. Arguments are
//! split like a POSIX shell's (quotes work), and `add` takes exactly mktap's options; `set`'s
//! value is the rest of its line as written (its quotes are JSON's).

use std::fmt::Write as _;
use std::time::Duration;

use host::control::{Applied, ControlError, ServiceInfo};
use host::{Control, Endpoint};

/// What the session does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Print this and read the next command.
    Reply(String),
    /// Print this and close the connection.
    Close(String),
}

const HELP: &str = "\
commands:
  help                          this list
  status                        application, uptime, services, connections, memory
  services (or ports)           each service: name, plugin, state, connections, endpoints
  show NAME                     a service's config and state, as RON
  add PLUGIN [--name N] [OPTS]  add and start a service, with mktap's options for PLUGIN
  remove NAME                   stop a service (draining it) and remove it
  stop NAME | start NAME        stop (draining) or start a service; it stays in the application
  set NAME FIELD VALUE          change one config field (VALUE: the rest of the line, as show prints
                                values); live when the service can, else it restarts
  listen NAME ENDPOINT [KIND]   add an endpoint to a service (mail: KIND is smtp, pop3 or pop3s)
  unlisten NAME ENDPOINT        remove an endpoint (or the ADDR:PORT it listens on) from a service
  save [TAG]                    write the running application to <name>.tap or <name>-<TAG>.tap
  log level LEVEL               change the log filter: error, warn, info, debug, trace, off, or
                                TARGET=LEVEL, comma-separated (warn,web=debug)
  shutdown                      stop every service gracefully, save the shutdown tap, exit
  quit                          leave the shell
";

/// One logged-in session's view of the application.
pub struct Shell {
    control: Control,
    /// The service this shell runs in: stopping or restarting it from here would cut the
    /// session off mid-command, so that is refused.
    own: String,
}

/// What `listen` and `unlisten` do to a service's endpoints.
enum Edit<'a> {
    /// Add one, with the kind of listener it is, if given.
    Add(Option<&'a str>),
    Remove,
}

fn error(e: impl std::fmt::Display) -> Outcome {
    Outcome::Reply(format!("error: {e}\n"))
}

/// clap's message without its usage and `--help` hint, on one line: `the following required
/// arguments were not provided: --path <DIR>`.
fn clap_message(text: &str) -> String {
    let message: Vec<&str> = text
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    match message.join(" ") {
        joined if joined.is_empty() => "bad options".to_string(),
        joined => joined.trim_start_matches("error: ").to_string(),
    }
}

/// The first `n` whitespace-separated words of `line` (fewer if it has fewer), and the rest of
/// the line after them, untouched.
fn split_words(line: &str, n: usize) -> (Vec<&str>, &str) {
    let mut words = Vec::with_capacity(n);
    let mut rest = line.trim_start();
    while words.len() < n && !rest.is_empty() {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (words, rest)
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, sec) => format!("{sec}s"),
        (0, 0, min, sec) => format!("{min}m{sec:02}s"),
        (0, h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
        (days, h, min, _) => format!("{days}d{h:02}h{min:02}m"),
    }
}

/// This process's resident memory, from /proc.
fn resident_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.1} MiB", kib / 1024.0))
}

fn services_table(services: &[ServiceInfo]) -> String {
    let rows: Vec<[String; 5]> = services
        .iter()
        .map(|s| {
            // Where the kernel chose the port, the address too: `unlisten` takes either.
            let endpoints: Vec<String> = s
                .listen
                .iter()
                .enumerate()
                .map(|(k, endpoint)| match s.addresses.get(k) {
                    Some(addr) if endpoint.port() == Some(0) => format!("{endpoint} ({addr})"),
                    _ => endpoint.to_string(),
                })
                .collect();
            [
                s.name.clone(),
                s.plugin.clone(),
                if s.running { "running" } else { "stopped" }.to_string(),
                s.connections.to_string(),
                endpoints.join(" "),
            ]
        })
        .collect();
    let header = ["NAME", "PLUGIN", "STATE", "CONNS", "ENDPOINTS"].map(String::from);
    // Each column as wide as its widest cell.
    let width = |column: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (name, plugin, state, conns) = (width(0), width(1), width(2), width(3));
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let _ = writeln!(
            out,
            "{:<name$}  {:<plugin$}  {:<state$}  {:>conns$}  {}",
            row[0], row[1], row[2], row[3], row[4]
        );
    }
    out
}

/// Replaces every password hash in a config (an Argon2 PHC string) by a placeholder, for
/// `show`: as doveconf hides passwords, what can be cracked offline is not printed.
fn hide_hashes(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.starts_with("$argon2") => {
            *text = "[argon2 hash]".into()
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(hide_hashes),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(hide_hashes),
        _ => {}
    }
}

/// The value of `set NAME FIELD VALUE`, which is the rest of the line as written, read the way
/// `show` prints values: JSON when it parses as JSON (`3`, `true`, `["a.html"]`, `"quoted"`,
/// `null`), or as RON when it starts as a list, map or string does (`show` prints RON: `()` for
/// nothing, a comma after the last item), otherwise the text itself; for a list field, a plain
/// value is a comma-separated list. A bare `null` clears an optional field (a field that is
/// not one refuses it); the word itself is `"null"`.
fn field_value(
    current: Option<&serde_json::Value>,
    text: &str,
) -> Result<serde_json::Value, String> {
    if text == "null" || text == "()" {
        return Ok(serde_json::Value::Null);
    }
    let json = serde_json::from_str::<serde_json::Value>(text);
    let parsed = match json {
        Ok(value) => Some(value),
        Err(e) if text.starts_with(['[', '{', '"']) => match ron::from_str(text) {
            Ok(value) => Some(value),
            // A list, map or quoted string that does not parse is a typo (`[a.html]`), not
            // text to store as it is; a string field takes any text not in quotes.
            Err(_)
                if text.starts_with('"')
                    || !matches!(current, Some(serde_json::Value::String(_))) =>
            {
                return Err(format!("{text}: not a JSON value ({e})"));
            }
            Err(_) => None,
        },
        Err(_) => None,
    };
    if let Some(value) = parsed {
        // A bare word that happens to be JSON (a number for a string field) keeps its type
        // only where the field is not a string.
        if !matches!(current, Some(serde_json::Value::String(_))) || text.starts_with('"') {
            return Ok(value);
        }
    }
    Ok(match current {
        Some(serde_json::Value::Array(_)) => serde_json::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| serde_json::Value::String(s.to_string()))
                .collect(),
        ),
        _ => serde_json::Value::String(text.to_string()),
    })
}

impl Shell {
    pub fn new(control: Control, own: &str) -> Self {
        Shell {
            control,
            own: own.to_string(),
        }
    }

    fn refuse_own(&self, name: &str, what: &str) -> Option<Outcome> {
        (name == self.own).then(|| {
            error(format!(
                "{what} '{name}' from its own shell would end this session; use another shell or shutdown"
            ))
        })
    }

    pub async fn execute(&self, line: &str) -> Outcome {
        // `set` takes the rest of the line after the field name as it is: its quotes are the
        // value's own (JSON's), not the shell's.
        let (words, value) = split_words(line, 3);
        if let ["set", name, field] = words.as_slice() {
            return match value.trim() {
                "" => error("wrong arguments for 'set'; type help"),
                value => self.set(name, field, value).await,
            };
        }
        // `log level` takes the rest of the line too: a filter may have blanks after its commas.
        let (words, filter) = split_words(line, 2);
        let filter = filter.trim();
        if words == ["log", "level"] && !filter.is_empty() {
            return self.done(
                self.control.set_log_level(filter),
                format!("log level is now {filter}"),
            );
        }
        let Some(words) = shlex::split(line) else {
            return error("unbalanced quotes");
        };
        let Some((command, args)) = words.split_first() else {
            return Outcome::Reply(String::new());
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match (command.as_str(), args.as_slice()) {
            ("help" | "?", []) => Outcome::Reply(HELP.to_string()),
            ("quit" | "exit" | "logout", []) => Outcome::Close("bye\n".into()),
            ("status", []) => self.status().await,
            ("services" | "ports", []) => {
                Outcome::Reply(services_table(&self.control.list().await))
            }
            ("show", [name]) => match self.control.show(name).await {
                Ok(mut spec) => match ron::ser::to_string_pretty(
                    &{
                        hide_hashes(&mut spec.config);
                        spec
                    },
                    ron::ser::PrettyConfig::new().struct_names(false),
                ) {
                    Ok(text) => Outcome::Reply(text + "\n"),
                    Err(e) => error(e),
                },
                Err(e) => error(e),
            },
            ("add", [plugin, rest @ ..]) => self.add(plugin, rest).await,
            ("remove", [name]) => match self.refuse_own(name, "removing") {
                Some(refusal) => refusal,
                None => self.done(self.control.remove(name).await, format!("removed {name}")),
            },
            ("stop", [name]) => match self.refuse_own(name, "stopping") {
                Some(refusal) => refusal,
                None => match self.control.stop(name).await {
                    Ok(kept) if kept.is_empty() => Outcome::Reply(format!("stopped {name}\n")),
                    Ok(kept) => Outcome::Reply(format!(
                        "stopped {name}; {} {} open (this process could not bind {} again): \
                         connections wait until start\n",
                        kept.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        if kept.len() == 1 { "stays" } else { "stay" },
                        if kept.len() == 1 { "it" } else { "them" },
                    )),
                    Err(e) => error(e),
                },
            },
            ("start", [name]) => self.done(
                self.control.start_service(name).await,
                format!("started {name}"),
            ),
            ("listen", [name, endpoint]) => self.listen(name, endpoint, Edit::Add(None)).await,
            ("listen", [name, endpoint, kind]) => {
                self.listen(name, endpoint, Edit::Add(Some(kind))).await
            }
            ("unlisten", [name, endpoint]) => self.listen(name, endpoint, Edit::Remove).await,
            ("save", []) => self.save(None).await,
            ("save", [tag]) => self.save(Some(tag)).await,
            ("log", ["level", level]) => self.done(
                self.control.set_log_level(level),
                format!("log level is now {level}"),
            ),
            ("shutdown", []) => {
                self.control.request_shutdown();
                Outcome::Close(
                    "shutting down: services stop gracefully and the shutdown tap is saved\n"
                        .into(),
                )
            }
            (
                "help" | "quit" | "exit" | "logout" | "status" | "services" | "ports" | "show"
                | "add" | "remove" | "stop" | "start" | "set" | "listen" | "unlisten" | "save"
                | "log" | "shutdown",
                _,
            ) => error(format!("wrong arguments for '{command}'; type help")),
            _ => error(format!("unknown command '{command}'; type help")),
        }
    }

    fn done(&self, result: Result<(), ControlError>, ok: String) -> Outcome {
        match result {
            Ok(()) => Outcome::Reply(ok + "\n"),
            Err(e) => error(e),
        }
    }

    async fn status(&self) -> Outcome {
        let status = self.control.status().await;
        let running = status.services.iter().filter(|s| s.running).count();
        let connections: usize = status.services.iter().map(|s| s.connections).sum();
        let finishing = match status.finishing {
            0 => String::new(),
            n => format!(" (and {n} finishing on instances replaced by restarts)"),
        };
        Outcome::Reply(format!(
            "application {}, up {}, {} service(s) ({running} running), {connections} open connection(s){finishing}, memory {}\n",
            status.name,
            format_duration(status.uptime),
            status.services.len(),
            resident_memory().unwrap_or_else(|| "unknown".into()),
        ))
    }

    async fn add(&self, plugin: &str, rest: &[&str]) -> Outcome {
        let maker = match self.control.registry().get(plugin) {
            Ok(maker) => maker.clone(),
            Err(e) => return error(e),
        };
        // `--name N` belongs to the shell, everything else to the plugin.
        let mut name = None;
        let mut options = vec![plugin.to_string()];
        let mut words = rest.iter();
        while let Some(word) = words.next() {
            if *word == "--name" {
                match words.next() {
                    Some(n) => name = Some(n.to_string()),
                    None => return error("--name needs a value"),
                }
            } else if let Some(n) = word.strip_prefix("--name=") {
                name = Some(n.to_string());
            } else {
                options.push(word.to_string());
            }
        }
        let matches = match maker.command().try_get_matches_from(&options) {
            Ok(m) => m,
            // `--help` and `--version` are answers, not errors.
            Err(e)
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
            {
                return Outcome::Reply(e.to_string());
            }
            Err(e) => return error(clap_message(&e.to_string())),
        };
        let mut spec = match maker.spec_from_matches(&matches) {
            Ok(spec) => spec,
            Err(problems) => return error(problems.join("; ")),
        };
        let taken: Vec<String> = self
            .control
            .list()
            .await
            .into_iter()
            .map(|s| s.name)
            .collect();
        spec.name = match name {
            Some(name) => match host::app::name_problem(&name) {
                Some(problem) => return error(format!("--name '{name}': {problem}")),
                None => name,
            },
            None => {
                let base = spec.plugin.clone();
                std::iter::once(base.clone())
                    .chain((2..).map(|n| format!("{base}-{n}")))
                    .find(|candidate| !taken.contains(candidate))
                    .expect("an unbounded sequence has a free name")
            }
        };
        let added = spec.name.clone();
        match self.control.add(spec).await {
            Ok(addrs) => Outcome::Reply(format!(
                "added {added}: listening on {}\n",
                addrs.join(", ")
            )),
            Err(e) => error(e),
        }
    }

    async fn set(&self, name: &str, field: &str, value: &str) -> Outcome {
        let spec = match self.control.show(name).await {
            Ok(spec) => spec,
            Err(e) => return error(e),
        };
        let mut config = spec.config;
        let Some(object) = config.as_object_mut() else {
            return error(format!("service '{name}' has no fields to set"));
        };
        let new = match field_value(object.get(field), value) {
            Ok(new) => new,
            Err(e) => return error(format!("{name}.{field}: {e}")),
        };
        if object.get(field) == Some(&new) {
            return Outcome::Reply(format!("{name}.{field} unchanged\n"));
        }
        object.insert(field.to_string(), new);
        // The shell's own service takes every config change live (TelnetService::reconfigure),
        // so this never restarts the service the session runs in.
        match self.control.reconfigure(name, config).await {
            Ok(Applied::Live) => Outcome::Reply(format!("{name}.{field} changed, live\n")),
            Ok(Applied::Restarted) => Outcome::Reply(format!(
                "{name}.{field} changed; {name} restarted (open connections finish on the old instance)\n"
            )),
            Ok(Applied::AtStart) => Outcome::Reply(format!(
                "{name}.{field} changed; {name} is stopped and starts with it\n"
            )),
            Err(e) => error(e),
        }
    }

    /// `listen` or `unlisten`.
    async fn listen(&self, name: &str, endpoint: &str, edit: Edit<'_>) -> Outcome {
        if let Some(refusal) = self.refuse_own(name, "restarting") {
            return refusal;
        }
        let (done, verb) = match edit {
            Edit::Add(kind) => match endpoint.parse::<Endpoint>() {
                Ok(parsed) => (self.control.listen(name, parsed, kind).await, "listens on"),
                Err(e) => return error(e),
            },
            Edit::Remove => (
                self.control.unlisten(name, endpoint).await,
                "no longer listens on",
            ),
        };
        match done {
            Ok(addrs) if addrs.is_empty() => {
                Outcome::Reply(format!("{name} {verb} {endpoint} (stopped)\n"))
            }
            Ok(addrs) => Outcome::Reply(format!(
                "{name} {verb} {endpoint}; now listening on {}\n",
                addrs.join(", ")
            )),
            Err(e) => error(e),
        }
    }

    async fn save(&self, tag: Option<&str>) -> Outcome {
        match self.control.save(tag).await {
            Ok(path) => Outcome::Reply(format!("saved {}\n", path.display())),
            Err(e) => error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value_of(current: Option<&serde_json::Value>, text: &str) -> serde_json::Value {
        field_value(current, text).expect("a value")
    }

    #[test]
    fn malformed_lists_and_quotes_are_refused() {
        for text in ["[a.html]", "{a: 1", "\"open"] {
            assert!(field_value(Some(&json!(["a"])), text).is_err(), "{text}");
        }
        assert!(field_value(Some(&json!("a")), "\"open").is_err());
        // A string field takes text that starts with a bracket.
        assert_eq!(
            value_of(Some(&json!("a")), "[draft] notes"),
            json!("[draft] notes")
        );
    }

    #[test]
    fn field_values_follow_the_fields_type() {
        assert_eq!(value_of(Some(&json!("/a")), "/srv/www"), json!("/srv/www"));
        assert_eq!(
            value_of(Some(&json!("x")), "42"),
            json!("42"),
            "a string field stays a string"
        );
        assert_eq!(
            value_of(Some(&json!(["a"])), "x.html, y.htm"),
            json!(["x.html", "y.htm"])
        );
        assert_eq!(value_of(Some(&json!(["a"])), r#"["z"]"#), json!(["z"]));
        assert_eq!(value_of(Some(&json!(1)), "25"), json!(25));
        assert_eq!(value_of(None, "true"), json!(true));
        assert_eq!(value_of(Some(&json!("a.test")), "null"), json!(null));
        assert_eq!(value_of(Some(&json!("a")), r#""null""#), json!("null"));
        // As `show` prints them.
        assert_eq!(value_of(Some(&json!("a")), "()"), json!(null));
        assert_eq!(
            value_of(Some(&json!(["a"])), r#"["x.html", "y.htm",]"#),
            json!(["x.html", "y.htm"])
        );
        assert_eq!(value_of(None, r#"{"a@b": "c", }"#), json!({"a@b": "c"}));
        // Quotes inside a value are the value's.
        assert_eq!(
            value_of(Some(&json!(["a"])), r#"["a.html"]"#),
            json!(["a.html"])
        );
        assert_eq!(value_of(Some(&json!(["a"])), r#"[""]"#), json!([""]));
        assert_eq!(value_of(Some(&json!("a")), "my dir/x"), json!("my dir/x"));
    }

    #[test]
    fn set_takes_the_rest_of_the_line() {
        assert_eq!(
            split_words("  set web add_header [\"X-Test: 1\"] ", 3),
            (vec!["set", "web", "add_header"], "[\"X-Test: 1\"] ")
        );
        assert_eq!(split_words("set web", 3), (vec!["set", "web"], ""));
    }

    #[test]
    fn services_columns_fit_their_contents() {
        let info = |name: &str, plugin: &str| ServiceInfo {
            name: name.into(),
            plugin: plugin.into(),
            running: true,
            connections: 12345,
            listen: vec!["tcp:80".parse().expect("an endpoint")],
            addresses: Vec::new(),
        };
        let table = services_table(&[info("web", "web"), info("pf", "portforward")]);
        let columns: Vec<Vec<usize>> = table
            .lines()
            .map(|line| {
                // Where each column starts: after two spaces or more.
                let bytes = line.as_bytes();
                (2..bytes.len())
                    .filter(|&i| bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ')
                    .collect()
            })
            .collect();
        assert!(columns.iter().all(|c| c == &columns[0]), "{table}");
    }

    #[test]
    fn show_hides_password_hashes() {
        let mut config = json!({"users": {"a@b.test": "$argon2id$v=19$m=19456$x$y"},
                                "list": ["$argon2i$z", "plain"], "hostname": "mx"});
        hide_hashes(&mut config);
        assert_eq!(
            config,
            json!({"users": {"a@b.test": "[argon2 hash]"},
                   "list": ["[argon2 hash]", "plain"], "hostname": "mx"})
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_duration(Duration::from_secs(3_725)), "1h02m05s");
        assert_eq!(format_duration(Duration::from_secs(90_000)), "1d01h00m");
    }
}
