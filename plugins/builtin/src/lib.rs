//! The built-in plugins: the one place that names them all, as Caddy's
//! `modules/standard/imports.go` does. Binaries get their [`Registry`] from here.

use host::Registry;

/// Every built-in plugin, in the order `--help` lists them.
pub fn registry() -> Registry {
    Registry::new()
        .with::<web::WebPlugin>()
        .with::<mail::MailPlugin>()
        .with::<telnet::TelnetPlugin>()
}

/// The built-in plugins, then the external service plugins of the plugin directories
/// (`host::external`), with one message for each library refused. A library whose plugin
/// name belongs to a built-in is refused; the built-in stays.
pub fn registry_with_external() -> (Registry, Vec<String>) {
    let mut registry = registry();
    let found = host::external::discovered();
    let mut refused: Vec<String> = found.refused.iter().map(ToString::to_string).collect();
    for maker in &found.services {
        if registry.add(maker.clone()).is_err() {
            refused.push(format!(
                "plugin {} refused: the name '{}' belongs to a built-in plugin",
                maker.library().path().display(),
                maker.library().descriptor().name
            ));
        }
    }
    (registry, refused)
}
