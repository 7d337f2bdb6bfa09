//! The `web` plugin: a static, CGI and virtual-host web server over HTTP/1.1, and HTTP/2 over TLS.
//!
//! # Layout
//!
//! - `lib.rs`: [`WebPlugin`] (the maker) and [`WebConfig`] (its options, the only serde type).
//! - [`options`]: parsing the `NAME=VALUE` option values, shared by `validate` and `build`.
//! - [`server`]: [`WebService`], the accept loop with its connection cap, the hyper connection
//!   (limits, timeouts, HTTP/2 by ALPN), and the per-request frame: body limits, headers added
//!   to every response, the access log and the weblog.
//! - [`site`]: the immutable configuration a request is routed with, and routing: the weblog
//!   page, CGI prefixes, `/~user/`, mounts, virtual hosts, dotfiles, `--ignore-ext`.
//! - [`resolve`]: turning a request path into a file under a root, refusing everything that
//!   could leave it (`..`, encoded separators, NUL bytes, symlinks pointing outside).
//! - [`files`]: a file's response: type, validators, ranges, compression, streamed bodies.
//! - [`cache`]: small files' bytes and headers, revalidated by one stat per request.
//! - [`zerocopy`]: sendfile(2) for file bodies on plain HTTP/1.1 connections, behind hyper.
//! - [`conditional`]: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range.
//! - [`ranges`]: parsing `Range: bytes=` and deciding between 206, multipart, 416 and 200.
//! - [`compress`]: Accept-Encoding, precompressed siblings, gzip on the fly.
//! - [`listing`]: the HTML listing of a directory without an index file.
//! - [`resource`]: `--resource` pages served by resource libraries (host::external), and
//!   their state.
//! - [`cgi`]: CGI/1.1 scripts: meta-variables, streamed bodies, the script's headers, timeouts.
//! - [`access_log`]: the combined-format access log, buffered, flushed each second, reopenable.
//! - [`weblog`]: the latest referred hits, kept as the service's state across restarts.
//! - [`tls`]: rustls configuration: certificates, SNI, TLS 1.2 and 1.3, ALPN.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use host::{Endpoint, Plugin, Service};
use serde::{Deserialize, Serialize};

pub mod access_log;
pub mod cache;
pub mod cgi;
pub mod compress;
pub mod conditional;
pub mod files;
pub mod listing;
pub mod options;
pub mod ranges;
pub mod resolve;
pub mod resource;
pub mod server;
pub mod site;
pub mod tls;
pub mod weblog;
pub mod zerocopy;

pub use server::WebService;

/// The Content-Type of files whose extension names no known type. Twisted's default was
/// text/html; a default that browsers render invites cross-site scripting through uploaded
/// files, so this one is what nginx ships with.
pub const DEFAULT_MIME_TYPE: &str = "application/octet-stream";

fn default_index() -> Vec<String> {
    vec!["index.html".into(), "index.htm".into()]
}

/// The longest timeout the options take, in seconds: a day.
pub const MAX_TIMEOUT: u64 = 24 * 60 * 60;

/// The web plugin's options, on the command line and in the tap. Defaults of the limits follow
/// nginx (keepalive_timeout 75s, client_max_body_size 1m, client_header_timeout 60s).
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

    /// Another endpoint to listen on, e.g. tcp:8080:interface=127.0.0.1 or
    /// ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable).
    #[arg(long, value_name = "ENDPOINT", value_parser = host::cli::parse_endpoint)]
    #[serde(skip)]
    pub listen: Vec<Endpoint>,

    /// Also serve HTTPS on this port (needs --certificate and --privkey).
    #[arg(long, value_name = "PORT")]
    #[serde(skip)]
    pub https: Option<u16>,

    /// The PEM certificate (chain) for --https.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub certificate: Option<PathBuf>,

    /// The PEM private key for --https.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub privkey: Option<PathBuf>,

    /// HOST=CERT.pem:KEY.pem: the certificate TLS clients asking for HOST get (repeatable).
    #[arg(long, value_name = "HOST=CERT:KEY")]
    pub sni: Vec<String>,

    /// A file name that serves a directory (repeatable; tried in order).
    #[arg(long = "index", value_name = "NAME", default_values_t = default_index())]
    pub index: Vec<String>,

    /// The Content-Type of files of unknown type.
    #[arg(long = "mime-type", value_name = "TYPE", default_value = DEFAULT_MIME_TYPE)]
    pub mime_type: String,

    /// .EXT=TYPE: the Content-Type of files with that extension (repeatable).
    #[arg(long, value_name = ".EXT=TYPE")]
    pub mime: Vec<String>,

    /// An extension tried when a path names no file: `/about` finds `about.html` (repeatable).
    #[arg(long = "ignore-ext", value_name = ".EXT")]
    pub ignore_ext: Vec<String>,

    /// Serve files and directories whose names start with a dot (/.well-known/ always is).
    #[arg(long = "serve-dotfiles")]
    pub serve_dotfiles: bool,

    /// "Name: value", a header added to every response (repeatable).
    #[arg(long = "add-header", value_name = "NAME: VALUE")]
    pub add_header: Vec<String>,

    /// /PREFIX=DIR: serve another directory at that path (repeatable).
    #[arg(long, value_name = "/PREFIX=DIR")]
    pub mount: Vec<String>,

    /// Serve /~name/ from that user's ~/public_html.
    #[arg(long)]
    pub user: bool,

    /// Do not gzip responses on the fly (precompressed .gz and .br files are still used).
    #[arg(long = "no-compress")]
    pub no_compress: bool,

    /// /PREFIX=DIR: run the executables in DIR as CGI scripts under that path (repeatable).
    #[arg(long, value_name = "/PREFIX=DIR")]
    pub cgi: Vec<String>,

    /// /PREFIX=NAME: serve that path with the resource library NAME from the plugin directories,
    /// a dynamic page whose state is kept across restarts (repeatable).
    #[arg(long, value_name = "/PREFIX=NAME")]
    pub resource: Vec<String>,

    /// .EXT=PROGRAM: run CGI scripts with that extension through PROGRAM (repeatable).
    #[arg(long, value_name = ".EXT=PROGRAM")]
    pub processor: Vec<String>,

    /// Seconds a CGI script may run before its process group is killed.
    #[arg(long = "cgi-timeout", value_name = "SECONDS", default_value_t = 60)]
    pub cgi_timeout: u64,

    /// HOST=DIR: serve requests for that host name from DIR (repeatable).
    #[arg(long, value_name = "HOST=DIR")]
    pub vhost: Vec<String>,

    /// Write an access log in the combined format to this file.
    #[arg(long, value_name = "PATH")]
    pub logfile: Option<PathBuf>,

    /// Show the latest referred hits at this path, e.g. /weblog.
    #[arg(long, value_name = "PATH")]
    pub weblog: Option<String>,

    /// Seconds a client may take to send a request head.
    #[arg(long = "header-timeout", value_name = "SECONDS", default_value_t = 60)]
    pub header_timeout: u64,

    /// Seconds an idle keep-alive connection stays open.
    #[arg(
        long = "keepalive-timeout",
        value_name = "SECONDS",
        default_value_t = 75
    )]
    pub keepalive_timeout: u64,

    /// Largest request head in bytes (431 past it; at least 8192).
    #[arg(long = "max-head-size", value_name = "BYTES", default_value_t = 32768)]
    pub max_head_size: usize,

    /// Largest request body in bytes (413 past it).
    #[arg(long = "max-body-size", value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub max_body_size: u64,

    /// Connections served at once; more wait in the listen backlog.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            path: PathBuf::new(),
            port: None,
            listen: Vec::new(),
            https: None,
            certificate: None,
            privkey: None,
            sni: Vec::new(),
            index: default_index(),
            mime_type: DEFAULT_MIME_TYPE.into(),
            mime: Vec::new(),
            ignore_ext: Vec::new(),
            serve_dotfiles: false,
            add_header: Vec::new(),
            mount: Vec::new(),
            user: false,
            no_compress: false,
            cgi: Vec::new(),
            resource: Vec::new(),
            processor: Vec::new(),
            cgi_timeout: 60,
            vhost: Vec::new(),
            logfile: None,
            weblog: None,
            header_timeout: 60,
            keepalive_timeout: 75,
            max_head_size: 32768,
            max_body_size: 1024 * 1024,
            max_connections: 1024,
        }
    }
}

/// The maker of the web service.
pub struct WebPlugin;

fn check_dir(problems: &mut Vec<String>, option: &str, dir: &std::path::Path) {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => problems.push(format!("{option} {}: not a directory", dir.display())),
        Err(e) => problems.push(format!("{option} {}: {e}", dir.display())),
    }
}

impl Plugin for WebPlugin {
    const NAME: &'static str = "web";
    const DESCRIPTION: &'static str = "A static web server, with CGI, virtual hosts and TLS";
    type Config = WebConfig;

    fn take_listen(config: &mut WebConfig) -> Vec<Endpoint> {
        let mut listen: Vec<Endpoint> = config.port.take().into_iter().collect();
        listen.append(&mut config.listen);
        // --https is Twisted's spelling of an ssl: endpoint; a missing file is left for
        // validate to report (the endpoint names an empty path).
        if let Some(port) = config.https.take() {
            let private_key = config.privkey.take().unwrap_or_default();
            let cert_key = config
                .certificate
                .take()
                .unwrap_or_else(|| private_key.clone());
            listen.push(Endpoint::Ssl {
                port,
                interface: None,
                backlog: None,
                private_key,
                cert_key,
            });
        }
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

    fn paths(config: &WebConfig) -> Vec<(&'static str, PathBuf)> {
        let mut paths = vec![("--path", config.path.clone())];
        for (option, path) in [
            ("--certificate", &config.certificate),
            ("--privkey", &config.privkey),
            ("--logfile", &config.logfile),
        ] {
            paths.extend(path.clone().map(|p| (option, p)));
        }
        for v in &config.sni {
            if let Ok((_, cert, key)) = options::sni(v) {
                paths.extend([("--sni", cert), ("--sni", key)]);
            }
        }
        for (option, values) in [("--mount", &config.mount), ("--cgi", &config.cgi)] {
            for v in values {
                paths.extend(options::prefix_dir(option, v).map(|(_, dir)| (option, dir)));
            }
        }
        for v in &config.vhost {
            paths.extend(options::vhost(v).map(|(_, dir)| ("--vhost", dir)));
        }
        // A program named by a bare name is looked for on $PATH; with a slash, it is a path.
        for v in &config.processor {
            if let Ok((_, program)) = options::processor(v) {
                if program.components().count() > 1 {
                    paths.push(("--processor", program));
                }
            }
        }
        paths
    }

    fn validate(config: &WebConfig, listen: &[Endpoint]) -> Vec<String> {
        let mut problems = Vec::new();
        if config.path.as_os_str().is_empty() {
            problems.push("--path: no directory given".to_string());
        } else {
            check_dir(&mut problems, "--path", &config.path);
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
        for ext in &config.ignore_ext {
            let bare = ext.strip_prefix('.').unwrap_or(ext);
            if bare.is_empty() || bare.contains('/') {
                problems.push(format!(
                    "--ignore-ext '{ext}': expected an extension like .html"
                ));
            }
        }
        let mut report = |r: Result<(), String>| {
            if let Err(e) = r {
                problems.push(e);
            }
        };
        for v in &config.mime {
            report(options::mime(v).map(drop));
        }
        for v in &config.processor {
            report(options::processor(v).and_then(|(_, program)| {
                options::find_program(&program).map_err(|e| format!("--processor {v}: {e}"))
            }));
        }
        for v in &config.add_header {
            report(options::header(v).map(drop));
        }
        for v in &config.sni {
            report(options::sni(v).and_then(|(_, cert, key)| {
                for (what, file) in [("certificate", cert), ("private key", key)] {
                    std::fs::metadata(&file)
                        .map_err(|e| format!("--sni '{v}': {what} {}: {e}", file.display()))?;
                }
                Ok(())
            }));
        }
        // The log is opened at start; a directory it cannot be made in is told now, as
        // `nginx -t` tells it.
        if let Some(logfile) = &config.logfile {
            if logfile.as_os_str().is_empty() || logfile.file_name().is_none() || logfile.is_dir() {
                problems.push(format!("--logfile '{}': names no file", logfile.display()));
            }
            let dir = match logfile.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => std::path::Path::new("."),
            };
            if !dir.is_dir() {
                problems.push(format!(
                    "--logfile {}: no directory {}",
                    logfile.display(),
                    dir.display()
                ));
            }
        }
        let mut dirs = Vec::new();
        for (option, values) in [("--mount", &config.mount), ("--cgi", &config.cgi)] {
            for v in values {
                match options::prefix_dir(option, v) {
                    Ok((_, dir)) => dirs.push((option, dir)),
                    Err(e) => problems.push(e),
                }
            }
        }
        for v in &config.resource {
            match options::resource(v) {
                Ok((_, name)) if host::external::resource(&name).is_none() => {
                    problems.push(format!(
                        "--resource '{v}': no resource plugin named '{name}' \
                         in the plugin directories"
                    ));
                }
                Ok(_) => {}
                Err(e) => problems.push(e),
            }
        }
        for v in &config.vhost {
            match options::vhost(v) {
                Ok((_, dir)) => dirs.push(("--vhost", dir)),
                Err(e) => problems.push(e),
            }
        }
        for (option, dir) in dirs {
            check_dir(&mut problems, option, &dir);
        }
        if let Some(weblog) = &config.weblog {
            if !weblog.starts_with('/') || weblog.len() < 2 || weblog.contains(['?', '#', '%']) {
                problems.push(format!("--weblog '{weblog}': expected a path like /weblog"));
            }
        }
        if config.max_head_size < 8192 {
            problems.push(format!(
                "--max-head-size {}: must be at least 8192",
                config.max_head_size
            ));
        }
        if config.max_connections == 0 {
            problems.push("--max-connections 0: must be at least 1".into());
        }
        for (option, seconds) in [
            ("--cgi-timeout", config.cgi_timeout),
            ("--header-timeout", config.header_timeout),
            ("--keepalive-timeout", config.keepalive_timeout),
        ] {
            // A bound above: the deadlines are instants, which a time centuries away overflows.
            if !(1..=MAX_TIMEOUT).contains(&seconds) {
                problems.push(format!(
                    "{option} {seconds}: must be from 1 to {MAX_TIMEOUT} seconds (a day)"
                ));
            }
        }
        // take_listen consumed them when --https was given; left over, they would be lost.
        if config.certificate.is_some() || config.privkey.is_some() {
            problems.push("--certificate and --privkey need --https PORT".to_string());
        }
        if listen.is_empty() {
            problems
                .push("no endpoint to listen on (give --port, --listen or --https)".to_string());
        }
        for endpoint in listen {
            if let Endpoint::Ssl {
                private_key,
                cert_key,
                ..
            } = endpoint
            {
                let missing: Vec<&str> = [("--privkey", private_key), ("--certificate", cert_key)]
                    .iter()
                    .filter(|(_, file)| file.as_os_str().is_empty())
                    .map(|(option, _)| *option)
                    .collect();
                // Only --https makes an ssl: endpoint without files (the parser refuses them).
                if !missing.is_empty() {
                    problems.push(format!(
                        "--https {}: needs {}",
                        endpoint.port().unwrap_or_default(),
                        missing.join(" and ")
                    ));
                }
                for (what, file) in [("private key", private_key), ("certificate", cert_key)] {
                    if file.as_os_str().is_empty() {
                        continue;
                    }
                    if let Err(e) = std::fs::metadata(file) {
                        problems.push(format!("{endpoint}: {what} {}: {e}", file.display()));
                    }
                }
            }
        }
        problems
    }

    fn build(
        config: WebConfig,
        state: Option<serde_json::Value>,
    ) -> Result<Arc<dyn Service>, String> {
        Ok(Arc::new(WebService::new(&config, state)?))
    }
}
