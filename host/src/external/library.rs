//! A loaded plugin library and the calls into it: the host's only unsafe code for plugins.
//!
//! Loading checks, in order, each before anything of the next step is touched: the file
//! loads (`RTLD_NOW`, so missing symbols fail here), the `taphost_abi_version` data symbol
//! equals ours (read, not called), the entry function exists, the table it returns repeats the
//! version, the descriptor parses, and the functions of its kind are present. The library is
//! leaked: never unloaded, since code of it may still run on its threads or be pointed to.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde_json::Value;
use taphost_sdk::abi::{
    self, Descriptor, HostApi, Kind, OptionType, PluginTable, ABI_VERSION, ENTRY_SYMBOL,
    VERSION_SYMBOL,
};

/// A plugin library that passed every check.
pub struct Library {
    path: PathBuf,
    descriptor: Descriptor,
    table: &'static PluginTable,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("name", &self.descriptor.name)
            .finish()
    }
}

type Entry = unsafe extern "C" fn() -> *const PluginTable;

impl Library {
    /// Loads and checks one library; the error says why it is refused.
    pub fn load(path: &Path) -> Result<Library, String> {
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
        // SAFETY: loading runs the library's initializers. A plugin directory holds code the
        // administrator installed to run in this process, as twistd's plugin packages were.
        let library = unsafe { libloading::os::unix::Library::open(Some(path), flags) }
            .map_err(|e| format!("cannot load it: {e}"))?;
        // Never unloaded: refused libraries too, since unloading would run their finalizers.
        let library: &'static libloading::os::unix::Library = Box::leak(Box::new(library));

        // SAFETY: the symbol, if present, is a `const uint32_t` by the ABI; only its address
        // is taken here.
        let version: *const u32 = unsafe { library.get::<*const u32>(VERSION_SYMBOL) }
            .map(|symbol| *symbol)
            .map_err(|_| "it exports no taphost_abi_version: not a taphost plugin".to_string())?;
        if version.is_null() {
            return Err("its taphost_abi_version is a null symbol".into());
        }
        // SAFETY: non-null, and the ABI makes it a `const uint32_t` (every ABI version keeps
        // this symbol's type, so a library of another version is read safely).
        let version = unsafe { version.read_unaligned() };
        if version != ABI_VERSION {
            return Err(format!(
                "it speaks plugin ABI version {version}; this host speaks version {ABI_VERSION}"
            ));
        }
        // SAFETY: the ABI (of the version just checked) makes this symbol
        // `const taphost_plugin *taphost_plugin_entry(void)`.
        let entry: Entry = unsafe { library.get::<Entry>(ENTRY_SYMBOL) }
            .map(|symbol| *symbol)
            .map_err(|_| "it exports no taphost_plugin_entry function".to_string())?;
        // SAFETY: the function's signature is the ABI's; it takes nothing.
        let table = unsafe { entry() };
        // SAFETY: the ABI says the table is static (lives as long as the library, which is
        // never unloaded) and laid out as PluginTable; NULL gives None.
        let table: &'static PluginTable = unsafe { table.as_ref() }
            .ok_or_else(|| "its entry function returned no table".to_string())?;
        if table.abi_version != ABI_VERSION {
            return Err(format!(
                "its table is of plugin ABI version {}; this host speaks version {ABI_VERSION}",
                table.abi_version
            ));
        }
        if table.descriptor.is_null() {
            return Err("its table has no descriptor".into());
        }
        // SAFETY: non-null and, by the ABI, a NUL-terminated static string.
        let text = unsafe { CStr::from_ptr(table.descriptor) };
        let descriptor: Descriptor = text
            .to_str()
            .map_err(|_| "its descriptor is not UTF-8".to_string())
            .and_then(|s| {
                serde_json::from_str(s).map_err(|e| format!("its descriptor does not parse: {e}"))
            })?;
        check_descriptor(&descriptor, table)?;
        Ok(Library {
            path: path.to_path_buf(),
            descriptor,
            table,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The plugin's problems with a config (service kind).
    pub fn validate(&self, input: &Value) -> Vec<String> {
        let Some(validate) = self.table.validate else {
            return Vec::new();
        };
        let input = input.to_string();
        let mut out = Vec::new();
        // SAFETY: the pointers are valid for the call; `collect` appends to `out`, which
        // outlives it.
        let code = unsafe { validate(input.as_ptr(), input.len(), sink(&mut out), collect) };
        if code == 0 {
            return Vec::new();
        }
        match serde_json::from_slice::<Vec<String>>(&out) {
            Ok(problems) if !problems.is_empty() => problems,
            Ok(_) => vec!["the plugin refused the config without saying why".into()],
            Err(_) => vec![String::from_utf8_lossy(&out).into_owned()],
        }
    }

    /// Starts an instance; the plugin owns `fds` from here on, also on failure.
    pub fn start(
        &'static self,
        input: &Value,
        fds: Vec<OwnedFd>,
        span: tracing::Span,
    ) -> Result<Instance, String> {
        let start = self.table.start.ok_or("the plugin has no start function")?;
        let input = input.to_string();
        let fds: Vec<i32> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
        let log = Box::new(LogTarget { span });
        let host = Box::new(HostApi {
            log_ctx: std::ptr::from_ref::<LogTarget>(&log).cast_mut().cast(),
            log: host_log,
        });
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut out = Vec::new();
        // SAFETY: every pointer is valid for the call; `host` and `log` are kept alive in the
        // Instance until after `release`; the fds are handed over (not closed here).
        let code = unsafe {
            start(
                input.as_ptr(),
                input.len(),
                fds.as_ptr(),
                fds.len(),
                &*host,
                &mut instance,
                sink(&mut out),
                collect,
            )
        };
        if code != 0 {
            let message = String::from_utf8_lossy(&out).into_owned();
            return Err(if message.is_empty() {
                format!("{}: start failed", self.descriptor.name)
            } else {
                message
            });
        }
        if instance.is_null() {
            return Err("the plugin started no instance".into());
        }
        Ok(Instance {
            library: self,
            ptr: instance,
            _host: host,
            _log: log,
        })
    }
}

fn check_descriptor(d: &Descriptor, table: &PluginTable) -> Result<(), String> {
    if !super::valid_name(&d.name) {
        return Err(format!(
            "its name '{}' is not letters, digits, '-' and '_'",
            d.name
        ));
    }
    let missing: Vec<&str> = match d.kind {
        Kind::Service => [
            ("validate", table.validate.is_none()),
            ("start", table.start.is_none()),
            ("stop", table.stop.is_none()),
            ("abort", table.abort.is_none()),
            ("state", table.state.is_none()),
            ("release", table.release.is_none()),
        ]
        .into_iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| name)
        .collect(),
        Kind::Resource => [
            ("start", table.start.is_none()),
            ("state", table.state.is_none()),
            ("release", table.release.is_none()),
            ("handle", table.handle.is_none()),
        ]
        .into_iter()
        .filter(|(_, absent)| *absent)
        .map(|(name, _)| name)
        .collect(),
    };
    if !missing.is_empty() {
        return Err(format!(
            "its table lacks the function(s) {}",
            missing.join(", ")
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for option in &d.options {
        if !super::valid_name(&option.name) || matches!(option.name.as_str(), "help" | "version") {
            return Err(format!("its option name '{}' is not usable", option.name));
        }
        if !seen.insert(option.name.as_str()) {
            return Err(format!("its option '{}' is declared twice", option.name));
        }
        if option.kind == OptionType::Boolean && option.repeatable {
            return Err(format!(
                "its boolean option '{}' cannot be repeatable",
                option.name
            ));
        }
        // A default the option's own parser would refuse would fail every use of the plugin
        // as if the user had typed it.
        if let Some(default) = &option.default {
            let usable = match option.kind {
                OptionType::String => true,
                OptionType::Integer => default.parse::<i64>().is_ok(),
                // A flag is off unless given; a default says nothing clap could use.
                OptionType::Boolean => false,
                OptionType::Endpoint => default.parse::<crate::Endpoint>().is_ok(),
            };
            if !usable {
                return Err(format!(
                    "its option '{}' has a default its type cannot hold: {default:?}",
                    option.name
                ));
            }
        }
    }
    // Shown one per line in --help: no line breaks or other control characters.
    for (what, text) in std::iter::once(("description", &d.description))
        .chain(d.options.iter().map(|o| ("help of an option", &o.help)))
    {
        if text.chars().any(char::is_control) {
            return Err(format!(
                "its {what} holds a line break or control character"
            ));
        }
    }
    Ok(())
}

/// A started instance of a plugin; released when dropped.
pub struct Instance {
    library: &'static Library,
    ptr: *mut c_void,
    _host: Box<HostApi>,
    _log: Box<LogTarget>,
}

// SAFETY: the ABI lets every function be called from any thread; the instance pointer is only
// passed back to the library that made it.
unsafe impl Send for Instance {}
// SAFETY: as above; concurrent calls the ABI allows (abort while stop runs) are the plugin's
// to synchronise; `handle` is serialised by the caller (ResourceInstance's mutex).
unsafe impl Sync for Instance {}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("library", &self.library)
            .finish()
    }
}

impl Instance {
    pub fn library(&self) -> &'static Library {
        self.library
    }

    /// Stops accepting and drains; blocks until the plugin is done (call off the runtime).
    pub fn stop(&self) {
        if let Some(stop) = self.library.table.stop {
            // SAFETY: the instance came from this library's start and is not released.
            unsafe { stop(self.ptr) }
        }
    }

    /// The drain deadline passed; may run while `stop` blocks on another thread.
    pub fn abort(&self) {
        if let Some(abort) = self.library.table.abort {
            // SAFETY: as for stop; the ABI allows abort concurrently with stop.
            unsafe { abort(self.ptr) }
        }
    }

    /// The state to keep, or the plugin's error message.
    pub fn state(&self) -> Result<Option<Value>, String> {
        let Some(state) = self.library.table.state else {
            return Ok(None);
        };
        let mut out = Vec::new();
        // SAFETY: as for stop; `out` outlives the call.
        let code = unsafe { state(self.ptr, sink(&mut out), collect) };
        if code != 0 {
            return Err(String::from_utf8_lossy(&out).into_owned());
        }
        if out.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&out)
            .map(Some)
            .map_err(|e| format!("its state is not JSON: {e}"))
    }

    /// One request to a resource: the head (JSON) and body in; the head (JSON bytes) and body
    /// out, or the plugin's error message. The caller serialises calls on one instance.
    pub fn handle(&self, head: &[u8], body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let handle = self
            .library
            .table
            .handle
            .ok_or("the plugin has no handle function")?;
        let mut head_out = Vec::new();
        let mut body_out = Vec::new();
        // SAFETY: as for stop; the buffers outlive the call.
        let code = unsafe {
            handle(
                self.ptr,
                head.as_ptr(),
                head.len(),
                body.as_ptr(),
                body.len(),
                sink(&mut head_out),
                collect,
                sink(&mut body_out),
                collect,
            )
        };
        if code != 0 {
            return Err(String::from_utf8_lossy(&body_out).into_owned());
        }
        Ok((head_out, body_out))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(release) = self.library.table.release {
            // SAFETY: released exactly once, here; `_host` and `_log` are dropped after.
            unsafe { release(self.ptr) }
        }
    }
}

/// Where a plugin's log lines go: its service's span.
#[derive(Debug)]
struct LogTarget {
    span: tracing::Span,
}

fn sink(out: &mut Vec<u8>) -> *mut c_void {
    std::ptr::from_mut(out).cast()
}

/// The write callback: appends the plugin's bytes to a `Vec<u8>`.
unsafe extern "C" fn collect(sink: *mut c_void, bytes: *const u8, len: usize) {
    if sink.is_null() || bytes.is_null() || len == 0 {
        return;
    }
    // SAFETY: `sink` is a `&mut Vec<u8>` the host passed for this call, `bytes` valid for `len`.
    let (out, bytes) = unsafe {
        (
            &mut *sink.cast::<Vec<u8>>(),
            std::slice::from_raw_parts(bytes, len),
        )
    };
    out.extend_from_slice(bytes);
}

/// The log callback: one event in the instance's span. Nothing unwinds out of it.
unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, message: *const u8, len: usize) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: `ctx` is the instance's LogTarget, alive until release returns; the message is
    // `len` bytes.
    let (target, message) = unsafe {
        (
            &*ctx.cast::<LogTarget>(),
            if message.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(message, len)
            },
        )
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let message = String::from_utf8_lossy(message);
        let message = message.trim_end();
        let span = &target.span;
        match level {
            abi::LOG_ERROR => tracing::error!(parent: span, "{message}"),
            abi::LOG_WARN => tracing::warn!(parent: span, "{message}"),
            abi::LOG_INFO => tracing::info!(parent: span, "{message}"),
            _ => tracing::debug!(parent: span, "{message}"),
        }
    }));
}
