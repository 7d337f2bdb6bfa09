//! A service plugin from a library, as the host sees every plugin: a [`Maker`] whose clap
//! command is built from the descriptor's options, and the [`Service`] that drives an instance
//! through the ABI.
//!
//! Config crosses as JSON: `{option name: value}` from the command line, or the tap's `config`
//! as it stands; the plugin decodes it strictly itself (the SDK with serde). Endpoint options
//! go to the spec's listen list, which the host binds and hands over as descriptors.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{json, Map, Value};
use std::path::Path;

use taphost_sdk::abi::{Descriptor, OptionType};

use super::library::{Instance, Library};
use crate::app::ServiceSpec;
use crate::endpoint::Endpoint;
use crate::net::{BoundListener, Listener};
use crate::plugin::Maker;
use crate::service::{Service, ServiceContext};

/// A service plugin loaded from a library.
#[derive(Debug)]
pub struct ExternalMaker {
    library: &'static Library,
}

impl ExternalMaker {
    pub fn new(library: &'static Library) -> Self {
        ExternalMaker { library }
    }

    pub fn library(&self) -> &'static Library {
        self.library
    }

    fn validate(&self, config: &Value, listen: &[Endpoint]) -> Result<(), Vec<String>> {
        let listen: Vec<String> = listen.iter().map(ToString::to_string).collect();
        let problems = self
            .library
            .validate(&json!({ "config": config, "listen": listen }));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Maker for ExternalMaker {
    fn name(&self) -> &str {
        &self.library.descriptor().name
    }

    fn description(&self) -> &str {
        &self.library.descriptor().description
    }

    fn command(&self) -> Command {
        crate::plugin::values_may_be_negative(command(
            self.library.descriptor(),
            self.library.path(),
        ))
    }

    fn spec_from_matches(&self, matches: &ArgMatches) -> Result<ServiceSpec, Vec<String>> {
        let (config, listen) = config_from(self.library.descriptor(), matches);
        self.validate(&config, &listen)?;
        Ok(ServiceSpec {
            name: self.name().to_string(),
            plugin: self.name().to_string(),
            listen,
            config,
            state: None,
        })
    }

    fn check(&self, spec: &ServiceSpec) -> Result<(), Vec<String>> {
        self.validate(&spec.config, &spec.listen)
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Arc<dyn Service>, String> {
        Ok(Arc::new(ExternalService {
            library: self.library,
            config: spec.config.clone(),
            saved: spec.state.clone(),
            instance: Mutex::new(None),
        }))
    }

    fn holds_secrets(&self, _spec: &ServiceSpec) -> bool {
        false
    }
}

/// The subcommand of a descriptor: one long option per declared option, typed and checked by
/// clap (integers, endpoints), with its help, default, repeatability and requirement.
fn command(d: &Descriptor, path: &Path) -> Command {
    let mut cmd = Command::new(d.name.clone())
        .about(format!("{} [external]", d.description))
        .long_about(format!(
            "{}\n\nExternal plugin, loaded from {}",
            d.description,
            path.display()
        ));
    for option in &d.options {
        let mut arg = Arg::new(option.name.clone())
            .long(option.name.clone())
            .help(option.help.clone());
        arg = match option.kind {
            OptionType::Boolean => arg.action(ArgAction::SetTrue),
            OptionType::String => arg.value_name("TEXT"),
            OptionType::Integer => arg
                .value_name("N")
                .allow_negative_numbers(true)
                .value_parser(clap::value_parser!(i64)),
            OptionType::Endpoint => arg
                .value_name("ENDPOINT")
                .value_parser(crate::cli::parse_endpoint),
        };
        if option.kind != OptionType::Boolean {
            arg = arg.action(if option.repeatable {
                ArgAction::Append
            } else {
                ArgAction::Set
            });
            if let Some(default) = &option.default {
                arg = arg.default_value(default.clone());
            } else if option.required {
                arg = arg.required(true);
            }
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The config (`{option name: value}`, options not given and without a default left out) and
/// the endpoints the parsed options name.
fn config_from(d: &Descriptor, matches: &ArgMatches) -> (Value, Vec<Endpoint>) {
    let mut config = Map::new();
    let mut listen = Vec::new();
    for option in &d.options {
        let id = option.name.as_str();
        let value = match option.kind {
            OptionType::Boolean => Some(Value::Bool(matches.get_flag(id))),
            OptionType::String => values::<String>(matches, id, option.repeatable),
            OptionType::Integer => values::<i64>(matches, id, option.repeatable),
            OptionType::Endpoint => {
                if let Some(endpoints) = matches.get_many::<Endpoint>(id) {
                    listen.extend(endpoints.cloned());
                }
                None
            }
        };
        if let Some(value) = value {
            config.insert(option.name.clone(), value);
        }
    }
    (Value::Object(config), listen)
}

/// An option's value(s) as JSON; `None` when not given and without a default.
fn values<T>(matches: &ArgMatches, id: &str, repeatable: bool) -> Option<Value>
where
    T: Clone + Send + Sync + serde::Serialize + 'static,
{
    if repeatable {
        let all: Vec<Value> = matches
            .get_many::<T>(id)
            .map(|v| v.map(|x| json!(x)).collect())
            .unwrap_or_default();
        Some(Value::Array(all))
    } else {
        matches.get_one::<T>(id).map(|x| json!(x))
    }
}

/// A running external service: one plugin instance, driven through the ABI.
pub struct ExternalService {
    library: &'static Library,
    config: Value,
    /// The state it was built with: still the truth while no instance has started.
    saved: Option<Value>,
    instance: Mutex<Option<Arc<Instance>>>,
}

impl ExternalService {
    fn instance(&self) -> Option<Arc<Instance>> {
        self.instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Service for ExternalService {
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String> {
        let listen: Vec<String> = listeners.iter().map(|l| l.endpoint.to_string()).collect();
        let fds: Vec<OwnedFd> = listeners
            .into_iter()
            .map(|l| match l.listener {
                Listener::Tcp(l) => OwnedFd::from(l),
                Listener::Unix(l) => OwnedFd::from(l),
            })
            .collect();
        let input = json!({ "config": self.config, "state": self.saved, "listen": listen });
        let instance = Arc::new(self.library.start(&input, fds, ctx.span().clone())?);
        *self
            .instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(instance.clone());

        // The plugin drains on its own threads; this task only relays the host's two signals
        // and holds the host's stop until the plugin's `stop` returns.
        let signals = ctx.clone();
        ctx.spawn(async move {
            // A replaced instance stops too: its connections are the plugin's to finish.
            signals.replaced().await;
            let draining = instance.clone();
            let mut stop = tokio::task::spawn_blocking(move || draining.stop());
            tokio::select! {
                _ = &mut stop => {}
                () = signals.aborted() => {
                    let aborting = instance.clone();
                    let _ = tokio::task::spawn_blocking(move || aborting.abort()).await;
                    let _ = stop.await;
                }
            }
        });
        Ok(())
    }

    fn state(&self) -> Option<Value> {
        match self.instance() {
            None => self.saved.clone(),
            Some(instance) => match instance.state() {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(
                        "plugin {}: cannot report its state ({e}); keeping the previous one",
                        self.library.descriptor().name
                    );
                    self.saved.clone()
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taphost_sdk::abi::{Kind, OptionSpec};

    fn descriptor() -> Descriptor {
        Descriptor {
            name: "demo".into(),
            description: "a demo".into(),
            kind: Kind::Service,
            options: vec![
                OptionSpec::endpoint("listen", "where").repeatable(),
                OptionSpec::string("greeting", "what to say").default("hello"),
                OptionSpec::string("tag", "tags").repeatable(),
                OptionSpec::integer("count", "how many").required(),
                OptionSpec::boolean("loud", "shout"),
                OptionSpec::string("motto", "optional"),
            ],
        }
    }

    fn parse(args: &[&str]) -> Result<(Value, Vec<String>), clap::Error> {
        let d = descriptor();
        let matches = command(&d, Path::new("/x/demo.so")).try_get_matches_from(args)?;
        let (config, listen) = config_from(&d, &matches);
        Ok((config, listen.iter().map(ToString::to_string).collect()))
    }

    #[test]
    fn options_become_config_values_by_their_type() {
        let (config, listen) = parse(&[
            "demo",
            "--listen",
            "8080",
            "--listen",
            "unix:/tmp/s",
            "--tag",
            "a",
            "--tag",
            "b",
            "--count",
            "3",
            "--loud",
        ])
        .expect("parses");
        assert_eq!(
            config,
            json!({ "greeting": "hello", "tag": ["a", "b"], "count": 3, "loud": true })
        );
        assert_eq!(listen, ["tcp:8080", "unix:/tmp/s"]);

        let (config, listen) = parse(&["demo", "--count", "-1", "--motto", "m"]).expect("parses");
        assert_eq!(
            config,
            json!({ "greeting": "hello", "tag": [], "count": -1, "loud": false, "motto": "m" })
        );
        assert!(listen.is_empty());
    }

    #[test]
    fn clap_checks_types_and_required_options() {
        assert!(parse(&["demo"]).is_err(), "--count is required");
        assert!(parse(&["demo", "--count", "x"]).is_err());
        assert!(parse(&["demo", "--count", "1", "--listen", "bogus:1"]).is_err());
        assert!(parse(&["demo", "--count", "1", "--loud", "yes"]).is_err());
    }
}
