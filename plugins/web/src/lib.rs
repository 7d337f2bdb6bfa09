//! The `web` plugin: a static site over HTTP/1.1.
//!
//! # Layout
//!
//! - `lib.rs`: [`WebPlugin`] (the maker) and [`WebConfig`] (its options, the only serde type).
//! - [`resolve`]: turning a request path into a file under the root, refusing everything that
//!   could leave it (`..`, encoded separators, NUL bytes, symlinks pointing outside).
//! - [`files`]: a file's response: Content-Type, Content-Length, Last-Modified, HEAD.
//! - [`listing`]: the HTML listing of a directory without an index file.
//! - [`server`]: [`WebService`], the hyper connection loop and request dispatch.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use host::{Endpoint, Plugin, Service};
use serde::{Deserialize, Serialize};

pub mod files;
pub mod listing;
pub mod resolve;
pub mod server;

pub use server::WebService;

/// The Content-Type of files whose extension names no known type. Twisted's default was
/// text/html; a default that browsers render invites cross-site scripting through uploaded
/// files, so this one is what nginx ships with.
pub const DEFAULT_MIME_TYPE: &str = "application/octet-stream";

fn default_index() -> Vec<String> {
    vec!["index.html".into(), "index.htm".into()]
}

/// The web plugin's options, on the command line and in the tap.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// The directory to serve.
    #[arg(long, value_name = "DIR", required = true)]
    pub path: PathBuf,

    /// Where to listen: a port number or an endpoint (stored in the tap's listen list).
    #[arg(long, value_name = "PORT", value_parser = host::cli::parse_endpoint)]
    #[serde(skip)]
    pub port: Option<Endpoint>,

    /// Another endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 (repeatable).
    #[arg(long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    #[serde(skip)]
    pub listen: Vec<Endpoint>,

    /// A file name that serves a directory (repeatable; tried in order).
    #[arg(long = "index", value_name = "NAME", default_values_t = default_index())]
    pub index: Vec<String>,

    /// The Content-Type of files of unknown type.
    #[arg(long = "mime-type", value_name = "TYPE", default_value = DEFAULT_MIME_TYPE)]
    pub mime_type: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            path: PathBuf::new(),
            port: None,
            listen: Vec::new(),
            index: default_index(),
            mime_type: DEFAULT_MIME_TYPE.into(),
        }
    }
}

/// The maker of the web service.
pub struct WebPlugin;

impl Plugin for WebPlugin {
    const NAME: &'static str = "web";
    const DESCRIPTION: &'static str = "A static web server: files, indexes and directory listings";
    type Config = WebConfig;

    fn take_listen(config: &mut WebConfig) -> Vec<Endpoint> {
        let mut listen: Vec<Endpoint> = config.port.take().into_iter().collect();
        listen.append(&mut config.listen);
        listen
    }

    fn default_listen() -> Vec<Endpoint> {
        vec![Endpoint::Tcp {
            v6: false,
            port: 8080,
            interface: None,
            backlog: None,
        }]
    }

    fn validate(config: &WebConfig, listen: &[Endpoint]) -> Vec<String> {
        let mut problems = Vec::new();
        if config.path.as_os_str().is_empty() {
            problems.push("--path: no directory given".to_string());
        } else {
            match std::fs::metadata(&config.path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    problems.push(format!("--path {}: not a directory", config.path.display()))
                }
                Err(e) => problems.push(format!("--path {}: {e}", config.path.display())),
            }
        }
        for name in &config.index {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                problems.push(format!("--index '{name}': must be a plain file name"));
            }
        }
        if hyper::header::HeaderValue::from_str(&config.mime_type).is_err()
            || !config.mime_type.contains('/')
        {
            problems.push(format!(
                "--mime-type '{}': not a media type like text/plain",
                config.mime_type
            ));
        }
        if listen.is_empty() {
            problems.push("no endpoint to listen on (give --port or --listen)".to_string());
        }
        problems
    }

    fn build(
        config: WebConfig,
        _state: Option<serde_json::Value>,
    ) -> Result<Arc<dyn Service>, String> {
        Ok(Arc::new(WebService::new(&config)?))
    }
}
