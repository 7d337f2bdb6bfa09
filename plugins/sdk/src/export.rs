//! The `extern "C"` side of the SDK: the functions the export macros put in the plugin table.
//!
//! Each one turns raw pointers into Rust values, calls the author's safe trait inside
//! `catch_unwind`, and hands results back through the host's write callback (so no allocation
//! crosses the boundary). A panic becomes an error return with a message, never an unwind into
//! the host. This is the only module of the SDK with unsafe code.
#![allow(unsafe_code)]

use std::ffi::{c_void, CString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

use crate::abi::{self, Descriptor, HostApi, Kind, PluginTable, WriteFn};
use crate::{Host, Listener, Request, ResourcePlugin, Response, ServicePlugin, Socket, StartInput};

/// The table and the descriptor string it points into, kept together in the macro's static.
pub struct Table {
    table: PluginTable,
    _descriptor: CString,
}

/// Builds the table once; a panic while building it yields NULL, which the host refuses.
pub fn entry(
    cell: &'static OnceLock<Option<Table>>,
    make: fn() -> Option<Table>,
) -> *const PluginTable {
    let table = cell.get_or_init(|| catch_unwind(make).ok().flatten());
    match table {
        Some(t) => &t.table,
        None => std::ptr::null(),
    }
}

fn table(descriptor: &Descriptor, template: PluginTable) -> Option<Table> {
    let json = serde_json::to_string(descriptor).ok()?;
    let descriptor = CString::new(json).ok()?;
    Some(Table {
        table: PluginTable {
            descriptor: descriptor.as_ptr(),
            ..template
        },
        _descriptor: descriptor,
    })
}

pub fn service_table<P: ServicePlugin>() -> Option<Table> {
    let descriptor = Descriptor {
        name: P::NAME.into(),
        description: P::DESCRIPTION.into(),
        kind: Kind::Service,
        options: P::options(),
    };
    table(
        &descriptor,
        PluginTable {
            abi_version: abi::ABI_VERSION,
            descriptor: std::ptr::null(),
            validate: Some(validate::<P>),
            start: Some(start_service::<P>),
            stop: Some(stop::<P>),
            abort: Some(abort::<P>),
            state: Some(service_state::<P>),
            release: Some(release::<Instance<P>>),
            handle: None,
        },
    )
}

pub fn resource_table<R: ResourcePlugin>() -> Option<Table> {
    let descriptor = Descriptor {
        name: R::NAME.into(),
        description: R::DESCRIPTION.into(),
        kind: Kind::Resource,
        options: Vec::new(),
    };
    table(
        &descriptor,
        PluginTable {
            abi_version: abi::ABI_VERSION,
            descriptor: std::ptr::null(),
            validate: None,
            start: Some(open_resource::<R>),
            stop: None,
            abort: None,
            state: Some(resource_state::<R>),
            release: Some(release::<Instance<R>>),
            handle: Some(handle::<R>),
        },
    )
}

/// A plugin's value and the host handle it logs through.
struct Instance<T> {
    plugin: T,
}

/// The host's `taphost_host`, shared by an instance's threads.
#[derive(Clone, Copy)]
pub(crate) struct HostRef(*const HostApi);

// SAFETY: the ABI makes the host's log callback thread-safe and keeps the pointed-to struct
// alive until `release` returns, after which the plugin holds no threads (its Drop joined them).
unsafe impl Send for HostRef {}
// SAFETY: as above; the struct is only read.
unsafe impl Sync for HostRef {}

impl HostRef {
    pub(crate) fn log(&self, level: u32, message: &str) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: non-null and valid until release (see the Send impl); the callback copies
        // the bytes before it returns.
        unsafe {
            let api = &*self.0;
            (api.log)(api.log_ctx, level, message.as_ptr(), message.len());
        }
    }
}

/// Copies bytes handed in by the host; empty for a NULL pointer.
///
/// # Safety
/// `ptr` must be valid for `len` bytes when not NULL.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// Hands bytes to the host.
fn write(out: *mut c_void, write: WriteFn, data: &[u8]) {
    // SAFETY: `write` and `out` come together from the host, which copies the bytes at once.
    unsafe { write(out, data.as_ptr(), data.len()) }
}

fn write_json(out: *mut c_void, w: WriteFn, value: &impl Serialize) {
    match serde_json::to_vec(value) {
        Ok(bytes) => write(out, w, &bytes),
        Err(e) => write(out, w, format!("cannot encode JSON: {e}").as_bytes()),
    }
}

/// Runs `f`, turning a panic into an error message.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(format!("plugin panicked: {what}"))
    })
}

fn decode_input(input: *const u8, len: usize) -> Result<StartInput, String> {
    // SAFETY: the ABI passes `len` valid bytes.
    let input = unsafe { bytes(input, len) };
    serde_json::from_slice(input).map_err(|e| format!("the host's input: {e}"))
}

/// The config as the plugin's type, or the problem with the field it names
/// (`config.dest_port: invalid value: ...`), which the host turns into the tap's line and
/// column.
fn decode_config<C: serde::de::DeserializeOwned>(config: Value) -> Result<C, String> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let field = e.path().to_string();
        match field.as_str() {
            "." | "" => format!("config: {}", e.inner()),
            _ => format!("config.{field}: {}", e.inner()),
        }
    })
}

unsafe extern "C" fn validate<P: ServicePlugin>(
    input: *const u8,
    len: usize,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    let problems = guarded(|| {
        let input = decode_input(input, len)?;
        let config: P::Config = decode_config(input.config)?;
        Ok(P::validate(&config, &input.listen))
    })
    .unwrap_or_else(|e| vec![e]);
    if problems.is_empty() {
        0
    } else {
        write_json(out, w, &problems);
        1
    }
}

/// Takes ownership of the host's descriptors at once, so they close even if start fails.
fn adopt(fds: *const i32, nfds: usize, listen: &[String]) -> Result<Vec<Listener>, String> {
    let raw: &[i32] = if fds.is_null() || nfds == 0 {
        &[]
    } else {
        // SAFETY: the ABI passes `nfds` descriptors.
        unsafe { std::slice::from_raw_parts(fds, nfds) }
    };
    let owned: Vec<OwnedFd> = raw
        .iter()
        // SAFETY: the host hands these open descriptors over; nothing else owns them now.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    owned
        .into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let socket = socket2::Socket::from(fd);
            let addr = socket
                .local_addr()
                .map_err(|e| format!("listener {i}: {e}"))?;
            let fd = OwnedFd::from(socket);
            let socket = if addr.as_socket().is_some() {
                Socket::Tcp(fd.into())
            } else {
                Socket::Unix(fd.into())
            };
            Ok(Listener {
                endpoint: listen.get(i).cloned().unwrap_or_default(),
                socket,
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn start_service<P: ServicePlugin>(
    input: *const u8,
    len: usize,
    fds: *const i32,
    nfds: usize,
    host: *const HostApi,
    instance: *mut *mut c_void,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    let started = guarded(|| {
        let input = decode_input(input, len);
        let listen = input.as_ref().map(|i| i.listen.clone()).unwrap_or_default();
        let listeners = adopt(fds, nfds, &listen)?;
        let input = input?;
        let config = decode_config(input.config)?;
        let host = Host { api: HostRef(host) };
        P::start(config, input.state, listeners, host)
    });
    finish_start(started, instance, out, w)
}

unsafe extern "C" fn open_resource<R: ResourcePlugin>(
    input: *const u8,
    len: usize,
    _fds: *const i32,
    _nfds: usize,
    host: *const HostApi,
    instance: *mut *mut c_void,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    let opened = guarded(|| {
        let input = decode_input(input, len)?;
        R::open(input.state, Host { api: HostRef(host) })
    });
    finish_start(opened, instance, out, w)
}

fn finish_start<T>(
    started: Result<T, String>,
    instance: *mut *mut c_void,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    match started {
        Ok(plugin) if !instance.is_null() => {
            let boxed = Box::into_raw(Box::new(Instance { plugin }));
            // SAFETY: checked non-null; the host passes a place for the pointer.
            unsafe { *instance = boxed.cast() };
            0
        }
        Ok(_) => {
            write(out, w, b"the host passed no place for the instance");
            1
        }
        Err(e) => {
            write(out, w, e.as_bytes());
            1
        }
    }
}

/// The instance behind the host's pointer.
///
/// # Safety
/// `instance` must come from this library's `start` and not be released.
unsafe fn instance<'a, T>(instance: *mut c_void) -> Option<&'a Instance<T>> {
    // SAFETY: the caller's contract; NULL gives None.
    unsafe { instance.cast::<Instance<T>>().as_ref() }
}

unsafe extern "C" fn stop<P: ServicePlugin>(ptr: *mut c_void) {
    // SAFETY: the host passes an instance it got from start.
    if let Some(i) = unsafe { instance::<P>(ptr) } {
        let _ = guarded(|| {
            i.plugin.stop();
            Ok(())
        });
    }
}

unsafe extern "C" fn abort<P: ServicePlugin>(ptr: *mut c_void) {
    // SAFETY: the host passes an instance it got from start.
    if let Some(i) = unsafe { instance::<P>(ptr) } {
        let _ = guarded(|| {
            i.plugin.abort();
            Ok(())
        });
    }
}

fn write_state(state: Result<Option<Value>, String>, out: *mut c_void, w: WriteFn) -> i32 {
    match state {
        Ok(Some(value)) => {
            write_json(out, w, &value);
            0
        }
        Ok(None) => 0,
        Err(e) => {
            write(out, w, e.as_bytes());
            1
        }
    }
}

unsafe extern "C" fn service_state<P: ServicePlugin>(
    ptr: *mut c_void,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    // SAFETY: the host passes an instance it got from start.
    let state = match unsafe { instance::<P>(ptr) } {
        Some(i) => guarded(|| Ok(i.plugin.state())),
        None => Ok(None),
    };
    write_state(state, out, w)
}

unsafe extern "C" fn resource_state<R: ResourcePlugin>(
    ptr: *mut c_void,
    out: *mut c_void,
    w: WriteFn,
) -> i32 {
    // SAFETY: the host passes an instance it got from start.
    let state = match unsafe { instance::<R>(ptr) } {
        Some(i) => guarded(|| Ok(i.plugin.state())),
        None => Ok(None),
    };
    write_state(state, out, w)
}

unsafe extern "C" fn release<T>(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the host releases an instance from start exactly once.
    let boxed = unsafe { Box::from_raw(ptr.cast::<T>()) };
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn handle<R: ResourcePlugin>(
    ptr: *mut c_void,
    head: *const u8,
    head_len: usize,
    body: *const u8,
    body_len: usize,
    head_out: *mut c_void,
    write_head: WriteFn,
    body_out: *mut c_void,
    write_body: WriteFn,
) -> i32 {
    // SAFETY: the host passes an instance it got from start.
    let Some(i) = (unsafe { instance::<R>(ptr) }) else {
        write(body_out, write_body, b"no instance");
        return 1;
    };
    let answered = guarded(|| {
        // SAFETY: the ABI passes `head_len` and `body_len` valid bytes.
        let (head, body) = unsafe { (bytes(head, head_len), bytes(body, body_len)) };
        let mut request: Request =
            serde_json::from_slice(head).map_err(|e| format!("the host's request: {e}"))?;
        request.body = body.to_vec();
        Ok(i.plugin.handle(request))
    });
    match answered {
        Ok(Response {
            status,
            headers,
            body,
        }) => {
            write_json(
                head_out,
                write_head,
                &Response {
                    status,
                    headers,
                    body: Vec::new(),
                },
            );
            write(body_out, write_body, &body);
            0
        }
        Err(e) => {
            write(body_out, write_body, e.as_bytes());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Host, Listener, OptionSpec, ServicePlugin};

    /// A plugin whose every method panics: none of it may unwind out of the table.
    struct Panicky;

    impl ServicePlugin for Panicky {
        const NAME: &'static str = "panicky";
        const DESCRIPTION: &'static str = "panics";
        type Config = serde_json::Map<String, Value>;

        fn options() -> Vec<OptionSpec> {
            vec![OptionSpec::integer("n", "a number")]
        }

        fn validate(_: &Self::Config, _: &[String]) -> Vec<String> {
            panic!("validate boom")
        }

        fn start(
            _: Self::Config,
            _: Option<Value>,
            _: Vec<Listener>,
            _: Host,
        ) -> Result<Self, String> {
            panic!("start boom")
        }

        fn stop(&self) {}

        fn abort(&self) {}
    }

    unsafe extern "C" fn into_vec(sink: *mut c_void, bytes: *const u8, len: usize) {
        // SAFETY: the tests pass a &mut Vec<u8> and the SDK passes `len` valid bytes.
        unsafe {
            (*sink.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(bytes, len))
        }
    }

    #[test]
    fn panics_become_errors_at_the_boundary() {
        let table = service_table::<Panicky>().expect("a table");
        let input = br#"{"config": {}, "listen": []}"#;
        let mut out = Vec::new();
        let out_ptr: *mut c_void = std::ptr::from_mut(&mut out).cast();
        let validate = table.table.validate.expect("validate");
        // SAFETY: valid input bytes and sink, as the host passes them.
        let code = unsafe { validate(input.as_ptr(), input.len(), out_ptr, into_vec) };
        assert_eq!(code, 1);
        let problems: Vec<String> = serde_json::from_slice(&out).expect("a JSON list");
        assert_eq!(problems, vec!["plugin panicked: validate boom".to_string()]);

        let mut out = Vec::new();
        let out_ptr: *mut c_void = std::ptr::from_mut(&mut out).cast();
        let mut instance: *mut c_void = std::ptr::null_mut();
        let start = table.table.start.expect("start");
        // SAFETY: as above; no descriptors, no host (the SDK tolerates NULL for logging).
        let code = unsafe {
            start(
                input.as_ptr(),
                input.len(),
                std::ptr::null(),
                0,
                std::ptr::null(),
                &mut instance,
                out_ptr,
                into_vec,
            )
        };
        assert_eq!(code, 1);
        assert_eq!(String::from_utf8_lossy(&out), "plugin panicked: start boom");
        assert!(instance.is_null());
    }

    #[test]
    fn the_descriptor_is_the_abis_json() {
        let table = service_table::<Panicky>().expect("a table");
        // SAFETY: the table's descriptor points into the CString it owns.
        let text = unsafe { std::ffi::CStr::from_ptr(table.table.descriptor) };
        let descriptor: Descriptor =
            serde_json::from_str(text.to_str().expect("utf-8")).expect("parses");
        assert_eq!(descriptor.name, "panicky");
        assert_eq!(descriptor.kind, Kind::Service);
        assert_eq!(descriptor.options[0].name, "n");
    }
}
