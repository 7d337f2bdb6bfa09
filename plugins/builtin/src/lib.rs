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
