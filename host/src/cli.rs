//! Command-line pieces shared by `mktap` and `twistd`, so a plugin's options parse the same way
//! in both.

use clap::{ArgMatches, Command};

use crate::app::ServiceSpec;
use crate::endpoint::Endpoint;
use crate::plugin::Registry;

/// A clap value parser for endpoint options (`--listen tcp:8080`); its error names the bad part.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    s.parse::<Endpoint>().map_err(|e| e.reason)
}

/// Adds one subcommand per plugin, each with that plugin's options and description, and lists
/// the external web resources (not subcommands: `web --resource` mounts them) after the help.
pub fn with_plugins(mut cmd: Command, registry: &Registry) -> Command {
    for maker in registry.makers() {
        cmd = cmd.subcommand(maker.command());
    }
    let mut resources: Vec<_> = crate::external::discovered().resources.values().collect();
    if !resources.is_empty() {
        resources.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = cmd
            .get_after_help()
            .map(|h| format!("{h}\n\n"))
            .unwrap_or_default();
        text.push_str("External web resources (web --resource /PATH=NAME):");
        for resource in resources {
            text.push_str(&format!(
                "\n  {}  {} [external]",
                resource.name(),
                resource.library().descriptor().description
            ));
        }
        cmd = cmd.after_help(text);
    }
    cmd
}

/// The service spec of the plugin subcommand chosen on the command line, if any.
/// Errors are whole lines that name the plugin and the option.
pub fn spec_from_subcommand(
    registry: &Registry,
    matches: &ArgMatches,
) -> Option<Result<ServiceSpec, String>> {
    let (name, sub) = matches.subcommand()?;
    Some(match registry.get(name) {
        Err(e) => Err(e.to_string()),
        Ok(maker) => maker
            .spec_from_matches(sub)
            .map_err(|problems| format!("{name}: {}", problems.join("; "))),
    })
}
