//! The taphost plugin SDK: write an external plugin (a shared library) without unsafe code.
//!
//! A plugin author implements [`ServicePlugin`] (a service with listeners, an mktap/twistd
//! subcommand) or [`ResourcePlugin`] (a dynamic page for `web --resource /path=NAME`), then
//! exports it with [`export_service!`] or [`export_resource!`] in a crate built as a `cdylib`.
//! The macros emit the two symbols of the C ABI (`include/taphost_plugin.h`); the functions
//! behind them decode JSON, catch every panic and turn it into an error, so none crosses the
//! boundary.
//!
//! ```
//! use taphost_sdk::{export_resource, Host, Request, ResourcePlugin, Response, Value};
//!
//! struct Hello;
//!
//! impl ResourcePlugin for Hello {
//!     const NAME: &'static str = "hello";
//!     const DESCRIPTION: &'static str = "Says hello";
//!     fn open(_state: Option<Value>, _host: Host) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn handle(&self, request: Request) -> Response {
//!         Response::ok("text/plain", format!("hello from {}\n", request.path))
//!     }
//! }
//!
//! export_resource!(Hello);
//! ```
//!
//! A plugin runs its work on its own threads (with tokio: its own runtime, made in `start`):
//! the host's runtime lives in another copy of tokio and cannot be shared across a shared
//! library's boundary.
//!
//! # Layout
//!
//! - [`abi`]: the `#[repr(C)]` table and the JSON descriptor, shared with the host.
//! - `export`: the `extern "C"` functions the macros point the table at (the SDK's only unsafe code).
//! - `lib.rs`: the traits, [`Host`] (logging into the host's log), [`Listener`], [`Request`],
//!   [`Response`].

pub mod abi;
#[doc(hidden)]
pub mod export;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use abi::OptionSpec;
pub use serde_json::Value;

/// A service plugin: the Rust face of the ABI's service kind.
pub trait ServicePlugin: Sized + Send + Sync + 'static {
    /// The subcommand of mktap and twistd and the tap's `plugin` field.
    const NAME: &'static str;
    /// One line for `mktap --help`.
    const DESCRIPTION: &'static str;
    /// The options as the plugin reads them; decode strictly (`#[serde(deny_unknown_fields)]`).
    /// Endpoint options are not in it: they arrive as [`Listener`]s.
    type Config: DeserializeOwned;

    /// The command line, as data the host builds its parser from.
    fn options() -> Vec<OptionSpec>;

    /// Every problem with a config, each naming its option. Pure: touches no socket.
    fn validate(_config: &Self::Config, _listen: &[String]) -> Vec<String> {
        Vec::new()
    }

    /// Starts serving on the host's listeners on the plugin's own threads; returns promptly.
    /// `state` is what [`ServicePlugin::state`] returned at the last shutdown.
    fn start(
        config: Self::Config,
        state: Option<Value>,
        listeners: Vec<Listener>,
        host: Host,
    ) -> Result<Self, String>;

    /// Stops accepting, lets open connections finish, closes the listeners; returns when done.
    fn stop(&self);

    /// The drain deadline passed: close open connections now (called while `stop` waits).
    fn abort(&self);

    /// What to keep across restarts (saved in the shutdown tap).
    fn state(&self) -> Option<Value> {
        None
    }
}

/// A dynamic web page (the successor of Twisted's `.rpy` resources).
pub trait ResourcePlugin: Sized + Send + Sync + 'static {
    /// The NAME of `web --resource /path=NAME`.
    const NAME: &'static str;
    const DESCRIPTION: &'static str;

    /// Opens the resource with what [`ResourcePlugin::state`] returned at the last shutdown.
    fn open(state: Option<Value>, host: Host) -> Result<Self, String>;

    /// Answers one request. The host never calls it concurrently on one instance.
    fn handle(&self, request: Request) -> Response;

    fn state(&self) -> Option<Value> {
        None
    }
}

/// The host's side of an instance: its log.
#[derive(Clone)]
pub struct Host {
    api: export::HostRef,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Host {
    /// Puts one line into the host's log, in the service's span. Lines logged after the
    /// instance was released are dropped by contract, so plugins must join their threads in
    /// `Drop` (a tokio runtime does).
    pub fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
        };
        self.api.log(level, message);
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }

    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }
}

/// A listening socket the host bound, with the endpoint it came from. The plugin owns it.
#[derive(Debug)]
pub struct Listener {
    pub endpoint: String,
    pub socket: Socket,
}

#[derive(Debug)]
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One request to a resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    /// The whole path, with the mount prefix.
    pub path: String,
    /// Where the resource is mounted (`/counter` for `--resource /counter=NAME`).
    pub prefix: String,
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// A resource's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 response with a body of the given type.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// The input of `validate` and `start`.
#[derive(Deserialize)]
#[doc(hidden)]
pub struct StartInput {
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default)]
    pub listen: Vec<String>,
}

/// Exports a [`ServicePlugin`] as the library's plugin: `export_service!(MyPlugin);`.
#[macro_export]
macro_rules! export_service {
    ($plugin:ty) => {
        $crate::__export_table!($crate::export::service_table::<$plugin>);
    };
}

/// Exports a [`ResourcePlugin`] as the library's plugin: `export_resource!(MyPage);`.
#[macro_export]
macro_rules! export_resource {
    ($plugin:ty) => {
        $crate::__export_table!($crate::export::resource_table::<$plugin>);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_table {
    ($make:expr) => {
        /// The ABI version this library speaks, read by the host before it calls anything.
        #[allow(unsafe_code, non_upper_case_globals)]
        #[no_mangle]
        pub static taphost_abi_version: u32 = $crate::abi::ABI_VERSION;

        /// The entry point: the plugin's table, built once.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn taphost_plugin_entry() -> *const $crate::abi::PluginTable {
            static TABLE: ::std::sync::OnceLock<Option<$crate::export::Table>> =
                ::std::sync::OnceLock::new();
            $crate::export::entry(&TABLE, $make)
        }
    };
}
