//! The C ABI in Rust: the `#[repr(C)]` mirror of `include/taphost_plugin.h`, and the JSON
//! descriptor. The host and the SDK both use these definitions, so the two sides cannot drift;
//! the header stays the reference for C authors.

use std::ffi::{c_char, c_void};

use serde::{Deserialize, Serialize};

/// The version of this ABI. A library exporting another one is refused without being called.
pub const ABI_VERSION: u32 = 1;

/// The data symbol holding the library's ABI version (read before anything is called).
pub const VERSION_SYMBOL: &[u8] = b"taphost_abi_version\0";
/// The entry function's symbol.
pub const ENTRY_SYMBOL: &[u8] = b"taphost_plugin_entry\0";

pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;

/// Hands bytes to the host, which copies them during the call.
pub type WriteFn = unsafe extern "C" fn(sink: *mut c_void, bytes: *const u8, len: usize);

/// `taphost_host`: what the host gives an instance, valid until `release` returns.
#[repr(C)]
pub struct HostApi {
    pub log_ctx: *mut c_void,
    pub log: unsafe extern "C" fn(log_ctx: *mut c_void, level: u32, message: *const u8, len: usize),
}

pub type ValidateFn =
    unsafe extern "C" fn(input: *const u8, len: usize, out: *mut c_void, write: WriteFn) -> i32;
pub type StartFn = unsafe extern "C" fn(
    input: *const u8,
    len: usize,
    fds: *const i32,
    nfds: usize,
    host: *const HostApi,
    instance: *mut *mut c_void,
    out: *mut c_void,
    write: WriteFn,
) -> i32;
pub type InstanceFn = unsafe extern "C" fn(instance: *mut c_void);
pub type StateFn =
    unsafe extern "C" fn(instance: *mut c_void, out: *mut c_void, write: WriteFn) -> i32;
pub type HandleFn = unsafe extern "C" fn(
    instance: *mut c_void,
    head: *const u8,
    head_len: usize,
    body: *const u8,
    body_len: usize,
    head_out: *mut c_void,
    write_head: WriteFn,
    body_out: *mut c_void,
    write_body: WriteFn,
) -> i32;

/// `taphost_plugin`: the table the entry function returns. Function pointers are `Option`s
/// because C may leave those of the other kind NULL.
#[repr(C)]
pub struct PluginTable {
    pub abi_version: u32,
    pub descriptor: *const c_char,
    pub validate: Option<ValidateFn>,
    pub start: Option<StartFn>,
    pub stop: Option<InstanceFn>,
    pub abort: Option<InstanceFn>,
    pub state: Option<StateFn>,
    pub release: Option<InstanceFn>,
    pub handle: Option<HandleFn>,
}

/// The table lives in a `static`; it only holds pointers to static data and functions.
#[allow(unsafe_code)]
// SAFETY: every pointer in the table points at immutable static data or at a function.
unsafe impl Sync for PluginTable {}
#[allow(unsafe_code)]
// SAFETY: as for Sync: nothing in the table is owned by a thread.
unsafe impl Send for PluginTable {}

/// The descriptor: who the plugin is and the options it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub name: String,
    pub description: String,
    pub kind: Kind,
    #[serde(default)]
    pub options: Vec<OptionSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A service: an mktap/twistd subcommand with listeners.
    Service,
    /// A dynamic page mounted with `web --resource /path=NAME`.
    Resource,
}

/// One command-line option of a service plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: OptionType,
    #[serde(default)]
    pub help: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub repeatable: bool,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionType {
    String,
    Integer,
    Boolean,
    /// A strports endpoint; it goes to the tap's listen list and the host binds it.
    Endpoint,
}

impl OptionSpec {
    fn new(name: &str, kind: OptionType, help: &str) -> Self {
        OptionSpec {
            name: name.into(),
            kind,
            help: help.into(),
            default: None,
            repeatable: false,
            required: false,
        }
    }

    pub fn string(name: &str, help: &str) -> Self {
        Self::new(name, OptionType::String, help)
    }

    pub fn integer(name: &str, help: &str) -> Self {
        Self::new(name, OptionType::Integer, help)
    }

    pub fn boolean(name: &str, help: &str) -> Self {
        Self::new(name, OptionType::Boolean, help)
    }

    pub fn endpoint(name: &str, help: &str) -> Self {
        Self::new(name, OptionType::Endpoint, help)
    }

    pub fn default(mut self, value: &str) -> Self {
        self.default = Some(value.into());
        self
    }

    pub fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}
