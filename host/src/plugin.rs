//! The plugin contract.
//!
//! A built-in plugin implements [`Plugin`]: a name, a description, one config type that clap
//! reads from the command line and serde reads from and writes to the tap, `validate`, and
//! `build`. The host only sees plugins through the object-safe [`Maker`], so plugins loaded from
//! shared libraries can stand beside the built-ins in one [`Registry`].

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::app::{Application, ServiceSpec};
use crate::endpoint::Endpoint;
use crate::locate;
use crate::service::Service;
use crate::tapfile::Format;

/// A typed plugin, as built-ins write them.
pub trait Plugin: Send + Sync + 'static {
    /// The subcommand of mktap and twistd, the tap's `plugin` field and the tracing field.
    const NAME: &'static str;
    /// One line for `mktap --help`.
    const DESCRIPTION: &'static str;
    /// The only definition of the plugin's options. Unknown fields must be refused
    /// (`#[serde(deny_unknown_fields)]`); fields missing from a tap take their defaults.
    type Config: Args + Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// Endpoints the command-line options asked for (`--port`, `--listen`). They move into the
    /// tap's `listen` list; the config keeps none of them.
    fn take_listen(_config: &mut Self::Config) -> Vec<Endpoint> {
        Vec::new()
    }

    /// Finishes a config read from the command line (mktap, twistd's subcommands, the shell's
    /// `add`): reading files its options name, hashing passwords, asking on a terminal. Not
    /// called for configs read from a tap. Returns every problem.
    fn complete(_config: &mut Self::Config) -> Result<(), Vec<String>> {
        Ok(())
    }

    /// Where the service listens when the command line names no endpoint.
    fn default_listen() -> Vec<Endpoint> {
        Vec::new()
    }

    /// Every problem with a config, each a line naming the option. Pure: touches no socket.
    fn validate(config: &Self::Config, listen: &[Endpoint]) -> Vec<String>;

    /// Makes the service. `state` is what the service reported at the last shutdown.
    fn build(
        config: Self::Config,
        state: Option<serde_json::Value>,
    ) -> Result<Arc<dyn Service>, String>;

    /// Whether a tap holding this config must be private (mode 0600).
    fn holds_secrets(_config: &Self::Config) -> bool {
        false
    }

    /// Keeps the config in step with an endpoint added at the end of the listen list (the
    /// admin shell's `listen NAME ENDPOINT [KIND]`). `kind` is the shell's optional word, for
    /// plugins whose listeners speak different protocols; the default takes none.
    fn endpoint_added(_config: &mut Self::Config, kind: Option<&str>) -> Result<(), String> {
        kind.map_or(Ok(()), |kind| Err(no_kinds(kind)))
    }

    /// Keeps the config in step with the endpoint at `position` of the listen list removed.
    fn endpoint_removed(_config: &mut Self::Config, _position: usize) {}

    /// The files and directories the config names, each with the option that names it
    /// (`--path`, `--aliases`). tap2deb and tap2rpm refuse relative ones: the packaged service
    /// runs elsewhere than the tap was made. The default names none.
    fn paths(_config: &Self::Config) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }
}

/// Lets an option's value look like a negative number, so `--max-connections -1` is refused by
/// the option's own parser, which names the option, rather than read as an unknown flag `-1`.
pub fn values_may_be_negative(cmd: Command) -> Command {
    cmd.mut_args(|arg| {
        if arg.get_action().takes_values() {
            arg.allow_negative_numbers(true)
        } else {
            arg
        }
    })
}

/// The refusal of a kind of listener by a plugin that has none.
fn no_kinds(kind: &str) -> String {
    format!("'{kind}': this plugin's endpoints take no kind; give the endpoint alone")
}

/// A change to a service's listen list, as the admin shell makes it.
#[derive(Debug, Clone, Copy)]
pub enum ListenChange<'a> {
    /// An endpoint appended, with the kind of listener it is, when the plugin has kinds.
    Added { kind: Option<&'a str> },
    /// The endpoint at this position removed.
    Removed { position: usize },
}

/// A plugin as the host sees it.
pub trait Maker: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// The clap subcommand with the plugin's options.
    fn command(&self) -> Command;
    /// The service the parsed options describe, named after the plugin; the caller makes the
    /// name unique. Returns every problem if the options do not validate.
    fn spec_from_matches(&self, matches: &ArgMatches) -> Result<ServiceSpec, Vec<String>>;
    /// Decodes a service's config strictly and validates it; every problem, each naming the field.
    fn check(&self, spec: &ServiceSpec) -> Result<(), Vec<String>>;
    fn build(&self, spec: &ServiceSpec) -> Result<Arc<dyn Service>, String>;
    fn holds_secrets(&self, spec: &ServiceSpec) -> bool;
    /// The config as the plugin writes it (as mktap would have, and the shutdown save will):
    /// `set` shows what is kept, not what was typed. Plugins without a typed config keep theirs.
    fn normalize(&self, spec: &ServiceSpec) -> Result<serde_json::Value, String> {
        Ok(spec.config.clone())
    }

    /// The config that goes with a change to the listen list ([`Plugin::endpoint_added`],
    /// [`Plugin::endpoint_removed`]); plugins without kinds of listener keep theirs.
    fn relisten(
        &self,
        spec: &ServiceSpec,
        change: ListenChange<'_>,
    ) -> Result<serde_json::Value, String> {
        match change {
            ListenChange::Added { kind: Some(kind) } => Err(no_kinds(kind)),
            _ => Ok(spec.config.clone()),
        }
    }

    /// The paths the service's config names ([`Plugin::paths`]); none if it does not decode.
    fn paths(&self, _spec: &ServiceSpec) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }
}

/// The [`Maker`] of a typed [`Plugin`].
pub struct PluginMaker<P>(PhantomData<fn() -> P>);

impl<P> Default for PluginMaker<P> {
    fn default() -> Self {
        PluginMaker(PhantomData)
    }
}

impl<P: Plugin> PluginMaker<P> {
    fn decode(spec: &ServiceSpec) -> Result<P::Config, String> {
        serde_path_to_error::deserialize(&spec.config).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                format!("config: {}", e.inner())
            } else {
                format!("config.{path}: {}", e.inner())
            }
        })
    }
}

impl<P: Plugin> Maker for PluginMaker<P> {
    fn name(&self) -> &str {
        P::NAME
    }

    fn description(&self) -> &str {
        P::DESCRIPTION
    }

    fn command(&self) -> Command {
        // After augment_args: the config type's doc comment would otherwise replace the description.
        values_may_be_negative(P::Config::augment_args(Command::new(P::NAME)).about(P::DESCRIPTION))
    }

    fn spec_from_matches(&self, matches: &ArgMatches) -> Result<ServiceSpec, Vec<String>> {
        let mut config =
            P::Config::from_arg_matches(matches).map_err(|e| vec![clap_message(&e)])?;
        P::complete(&mut config)?;
        let mut listen = P::take_listen(&mut config);
        if listen.is_empty() {
            listen = P::default_listen();
        }
        let problems = P::validate(&config, &listen);
        if !problems.is_empty() {
            return Err(problems);
        }
        let config = serde_json::to_value(&config)
            .map_err(|e| vec![format!("cannot encode the config: {e}")])?;
        Ok(ServiceSpec {
            name: P::NAME.to_string(),
            plugin: P::NAME.to_string(),
            listen,
            config,
            state: None,
        })
    }

    fn check(&self, spec: &ServiceSpec) -> Result<(), Vec<String>> {
        let config = Self::decode(spec).map_err(|e| vec![e])?;
        let problems = P::validate(&config, &spec.listen);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Arc<dyn Service>, String> {
        P::build(Self::decode(spec)?, spec.state.clone())
    }

    fn holds_secrets(&self, spec: &ServiceSpec) -> bool {
        Self::decode(spec).is_ok_and(|c| P::holds_secrets(&c))
    }

    fn paths(&self, spec: &ServiceSpec) -> Vec<(&'static str, PathBuf)> {
        Self::decode(spec).map_or_else(|_| Vec::new(), |c| P::paths(&c))
    }

    fn normalize(&self, spec: &ServiceSpec) -> Result<serde_json::Value, String> {
        serde_json::to_value(Self::decode(spec)?)
            .map_err(|e| format!("cannot encode the config: {e}"))
    }

    fn relisten(
        &self,
        spec: &ServiceSpec,
        change: ListenChange<'_>,
    ) -> Result<serde_json::Value, String> {
        let mut config = Self::decode(spec)?;
        match change {
            ListenChange::Added { kind } => P::endpoint_added(&mut config, kind)?,
            ListenChange::Removed { position } => P::endpoint_removed(&mut config, position),
        }
        serde_json::to_value(&config).map_err(|e| format!("cannot encode the config: {e}"))
    }
}

/// A clap error as one problem among others: clap renders it as a whole message of its own
/// (`error: ...`, then a hint), which the caller already prefixes with the program and plugin.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    text.split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("unknown plugin '{name}' (known: {known}; {hint})", hint = crate::external::SEARCH_HINT)]
    Unknown {
        name: String,
        known: String,
        /// Line and column in the tap's text of the service's `plugin`, when the check was
        /// given the text.
        at: Option<(usize, usize)>,
    },
    #[error("service '{service}' (plugin {plugin}): {}", problems.join("; "))]
    Invalid {
        service: String,
        plugin: String,
        problems: Vec<String>,
        /// Line and column in the tap's text of the field the first problem names, when the
        /// check was given the text ([`Registry::check_source`]).
        at: Option<(usize, usize)>,
    },
    #[error("a plugin named '{0}' is already registered")]
    Duplicate(String),
}

impl PluginError {
    /// This error as a line about the tap file `path`: `PATH:LINE:COLUMN: ...` when the field
    /// it names was found in the text, as syntax errors are written.
    pub fn in_file(&self, path: &std::path::Path) -> String {
        match self {
            PluginError::Invalid {
                at: Some((line, column)),
                ..
            }
            | PluginError::Unknown {
                at: Some((line, column)),
                ..
            } => format!("{}:{line}:{column}: {self}", path.display()),
            _ => format!("{}: {self}", path.display()),
        }
    }
}

/// The plugins a binary knows, in the order `--help` lists them.
#[derive(Clone, Default)]
pub struct Registry {
    makers: Vec<Arc<dyn Maker>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.makers.iter().map(|m| m.name()))
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a plugin; a name already taken is refused.
    pub fn add(&mut self, maker: Arc<dyn Maker>) -> Result<(), PluginError> {
        if self.makers.iter().any(|m| m.name() == maker.name()) {
            return Err(PluginError::Duplicate(maker.name().to_string()));
        }
        self.makers.push(maker);
        Ok(())
    }

    /// Adds a typed built-in plugin.
    pub fn with<P: Plugin>(mut self) -> Self {
        self.add(Arc::new(PluginMaker::<P>::default()))
            .expect("built-in plugin names are unique");
        self
    }

    pub fn makers(&self) -> impl Iterator<Item = &Arc<dyn Maker>> {
        self.makers.iter()
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn Maker>, PluginError> {
        self.makers
            .iter()
            .find(|m| m.name() == name)
            .ok_or_else(|| PluginError::Unknown {
                name: name.to_string(),
                known: self.names().join(", "),
                at: None,
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.makers.iter().map(|m| m.name()).collect()
    }

    /// Checks every service of an application against its plugin; all problems, not the first.
    pub fn check(&self, app: &Application) -> Result<(), Vec<PluginError>> {
        self.check_source(app, None)
    }

    /// [`Registry::check`] of an application read from `source` (its text and format): a
    /// problem that names a config field also gets that field's line and column.
    pub fn check_source(
        &self,
        app: &Application,
        source: Option<(&str, Format)>,
    ) -> Result<(), Vec<PluginError>> {
        let errors: Vec<PluginError> = app
            .services
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| match self.get(&spec.plugin) {
                Err(PluginError::Unknown { name, known, .. }) => Some(PluginError::Unknown {
                    name,
                    known,
                    at: source.and_then(|(text, format)| {
                        match locate::path_position(text, format, &format!("services[{i}].plugin"))
                        {
                            (at, true) => Some(at),
                            (_, false) => None,
                        }
                    }),
                }),
                Err(e) => Some(e),
                Ok(maker) => maker
                    .check(spec)
                    .err()
                    .map(|problems| PluginError::Invalid {
                        at: source
                            .zip(problems.first())
                            .and_then(|((text, format), first)| {
                                locate::config_field(text, format, i, first)
                            }),
                        service: spec.name.clone(),
                        plugin: spec.plugin.clone(),
                        problems,
                    }),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether any service of the application holds secrets, making its tap private.
    pub fn holds_secrets(&self, app: &Application) -> bool {
        app.services.iter().any(|spec| {
            self.get(&spec.plugin)
                .is_ok_and(|maker| maker.holds_secrets(spec))
        })
    }
}
