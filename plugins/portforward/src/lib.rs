//! `portforward`: Twisted's portforward tap as an external plugin. Every connection to `--port`
//! is relayed to `--host`:`--dest_port`. Built as a shared library with the SDK, with no unsafe
//! code; it runs on its own tokio runtime (the host's cannot cross the library boundary).
//!
//! Its state, saved in the shutdown tap, is the number of connections forwarded so far.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use taphost_sdk::{export_service, Host, Listener, OptionSpec, ServicePlugin, Socket, Value};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    host: String,
    /// Wider than a port, so that a number out of range is told as such by `validate`.
    dest_port: i64,
}

pub struct PortForward {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    stopping: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    forwarded: Arc<AtomicU64>,
}

impl ServicePlugin for PortForward {
    const NAME: &'static str = "portforward";
    const DESCRIPTION: &'static str = "A simple port-forwarder";
    type Config = Config;

    fn options() -> Vec<OptionSpec> {
        vec![
            OptionSpec::endpoint("port", "Set the port number (or an endpoint) to listen on")
                .required(),
            OptionSpec::string("host", "Set the host to forward to").default("localhost"),
            OptionSpec::integer("dest_port", "Set the port number to forward to").required(),
        ]
    }

    fn validate(config: &Config, listen: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        if listen.is_empty() {
            problems.push("--port: an endpoint to listen on is required".to_string());
        }
        for endpoint in listen.iter().filter(|e| e.starts_with("unix:")) {
            problems.push(format!(
                "--port {endpoint}: only TCP endpoints can be forwarded"
            ));
        }
        let host = &config.host;
        if host.is_empty() {
            problems.push("--host: must not be empty".to_string());
        } else if host.parse::<std::net::IpAddr>().is_err()
            && !host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        {
            problems.push(format!("--host '{host}': not a host name or IP address"));
        }
        if !(1..=65535).contains(&config.dest_port) {
            problems.push(format!(
                "--dest_port {}: must be between 1 and 65535",
                config.dest_port
            ));
        }
        problems
    }

    fn start(
        config: Config,
        state: Option<Value>,
        listeners: Vec<Listener>,
        host: Host,
    ) -> Result<Self, String> {
        let forwarded = state
            .as_ref()
            .and_then(|s| s.get("forwarded"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portforward")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let plugin = PortForward {
            runtime: Mutex::new(None),
            stopping: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            forwarded: Arc::new(AtomicU64::new(forwarded)),
        };
        let target = match config.host.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, config.dest_port as u16).to_string(),
            Err(_) => format!("{}:{}", config.host, config.dest_port),
        };
        for listener in listeners {
            let Socket::Tcp(socket) = listener.socket else {
                return Err(format!(
                    "{}: only TCP endpoints can be forwarded",
                    listener.endpoint
                ));
            };
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("{}: {e}", listener.endpoint))?;
            let socket = {
                let _entered = runtime.enter();
                tokio::net::TcpListener::from_std(socket)
                    .map_err(|e| format!("{}: {e}", listener.endpoint))?
            };
            host.info(&format!("forwarding {} to {target}", listener.endpoint));
            plugin.tracker.spawn_on(
                accept_loop(
                    socket,
                    target.clone(),
                    host.clone(),
                    plugin.stopping.clone(),
                    plugin.abort.clone(),
                    plugin.tracker.clone(),
                    plugin.forwarded.clone(),
                ),
                runtime.handle(),
            );
        }
        *plugin
            .runtime
            .lock()
            .expect("not poisoned: no code panics holding it") = Some(runtime);
        Ok(plugin)
    }

    fn stop(&self) {
        self.stopping.cancel();
        self.tracker.close();
        let guard = self
            .runtime
            .lock()
            .expect("not poisoned: no code panics holding it");
        if let Some(runtime) = guard.as_ref() {
            runtime.block_on(self.tracker.wait());
        }
    }

    fn abort(&self) {
        self.abort.cancel();
    }

    fn state(&self) -> Option<Value> {
        Some(serde_json::json!({ "forwarded": self.forwarded.load(Ordering::Relaxed) }))
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    target: String,
    host: Host,
    stopping: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    forwarded: Arc<AtomicU64>,
) {
    loop {
        let accepted = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (mut inbound, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, most likely: wait for connections to close rather than spin.
                host.warn(&format!("accept failed: {e}"));
                tokio::select! {
                    () = stopping.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                }
            }
        };
        let target = target.clone();
        let host = host.clone();
        let abort = abort.clone();
        let forwarded = forwarded.clone();
        tracker.spawn(async move {
            let relay = async {
                let mut outbound = TcpStream::connect(&target)
                    .await
                    .map_err(|e| format!("cannot connect to {target}: {e}"))?;
                forwarded.fetch_add(1, Ordering::Relaxed);
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                    .await
                    .map_err(|e| format!("relay to {target}: {e}"))
            };
            tokio::select! {
                result = relay => match result {
                    Ok((up, down)) => host.debug(&format!("{peer}: {up} bytes up, {down} down")),
                    Err(e) => host.warn(&format!("{peer}: {e}")),
                },
                () = abort.cancelled() => host.debug(&format!("{peer}: closed by the drain deadline")),
            }
        });
    }
}

export_service!(PortForward);
