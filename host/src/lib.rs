//! The taphost framework: everything between a tap file and running services, and nothing
//! about any particular plugin.
//!
//! # Layout
//!
//! - [`app`]: the *Application*, the data a tap file holds (envelope version 1).
//! - [`tapfile`]: reading and writing taps: JSON (`.tap`) and RON (`.tas`), format detection,
//!   version checks, errors with file, line and column, atomic writes.
//! - [`endpoint`]: Twisted's strports strings (`tcp:8080:interface=127.0.0.1`, `unix:/run/x.sock`)
//!   and binding them to listening sockets before any thread exists.
//! - [`activation`]: sockets passed by systemd for `systemd:index=N` endpoints.
//! - [`net`]: bound listeners handed to services, and the stream type they accept.
//! - [`external`]: plugins from shared libraries: discovery in the plugin directories, the C
//!   ABI's checks and calls, external services as [`Maker`]s, and resource libraries for `web`.
//! - [`plugin`]: the plugin contract ([`Plugin`] for typed built-ins, [`Maker`] erased) and the
//!   [`Registry`] that binaries are given.
//! - [`service`]: the running side: [`Service`], its [`ServiceContext`] (graceful and hard stop,
//!   connection tracking), and [`service::serve`], the accept loop.
//! - [`control`]: [`Control`], the running application and the one way to change it: binds,
//!   starts in order, stops in reverse with a drain deadline; list, add, remove, stop, start,
//!   reconfigure, listen, save.
//! - [`crypt`]: encrypted taps: Argon2id key derivation, XChaCha20-Poly1305, the file header.
//! - [`passphrase`]: where a passphrase comes from: the terminal without echo, or a file.
//! - [`secret`]: passwords as Argon2id PHC strings: hash, check, verify.
//! - [`cli`]: building an Application from plugin command-line options, shared by `mktap` and
//!   `twistd` so both parse a plugin's options with the same code.
//! - [`exit`]: the process exit codes every binary uses, and `parse_args`.
//! - [`docs`]: man pages and shell completions from a binary's own clap command.

pub mod activation;
pub mod app;
pub mod cli;
pub mod control;
pub mod crypt;
pub mod docs;
pub mod endpoint;
pub mod exit;
pub mod external;
pub mod files;
pub mod locate;
pub mod memory;
pub mod net;
pub mod passphrase;
pub mod plugin;
pub mod sched;
pub mod secret;
pub mod service;
pub mod tapfile;

pub use app::{Application, Principal, ServiceSpec, TAP_VERSION};
pub use control::Control;
pub use endpoint::Endpoint;
pub use net::{BoundListener, Listener, Stream};
pub use plugin::{ListenChange, Maker, Plugin, PluginError, Registry};
pub use service::{Service, ServiceContext};
pub use tapfile::{Format, TapError};
