//! The control handle: the running application, and the one way to change it.
//!
//! ```text
//! bind (Control::bind, blocking, before any thread) -> start in order (Control::start)
//!   -> run, changed only through Control -> stop in reverse, draining (Control::stop_all)
//! ```
//!
//! The shell (telnet plugin) and any later front end call [`Control`]: list, add, remove, stop,
//! start, reconfigure, listen, save. Changes are serialized (one at a time), validated before
//! anything happens, and applied whole or not at all, so the [`Application`] held here, which
//! `save` and the shutdown save write, always matches what runs.
//!
//! While a service restarts (a config change it cannot take live, or a new endpoint list), the
//! host keeps its own handle on each listening socket: the port stays bound and new connections
//! wait in the backlog rather than being refused.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{Application, ServiceSpec};
use crate::endpoint::{BindError, Endpoint};
use crate::net::BoundListener;
use crate::plugin::{ListenChange, Maker, PluginError, Registry};
use crate::service::{Service, ServiceContext};
use crate::tapfile::{self, Format};

/// Why an application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("service '{service}': {source}")]
    Bind {
        service: String,
        #[source]
        source: BindError,
    },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("service '{service}' failed to start: {message}")]
    Start { service: String, message: String },
}

/// Why a change was refused; nothing changed. One line each.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no service named '{0}'")]
    NoSuchService(String),
    #[error("a service named '{0}' exists already")]
    NameTaken(String),
    #[error("service '{0}' is already running")]
    AlreadyRunning(String),
    #[error("service '{0}' is already stopped")]
    AlreadyStopped(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Save(#[from] tapfile::TapError),
    #[error("{0}")]
    Unsupported(String),
}

/// Every listener of an application, bound, per service in the application's order.
pub type Bound = Vec<Vec<BoundListener>>;

/// How [`Control::reconfigure`] applied a new config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The running service took it without a restart.
    Live,
    /// The service restarted (drained) on the same sockets.
    Restarted,
    /// The service is stopped; it starts with the new config.
    AtStart,
}

/// What `services` shows of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub plugin: String,
    pub listen: Vec<Endpoint>,
    pub running: bool,
    pub connections: usize,
    /// Where a running service listens, one per endpoint (the kernel's port for `tcp:0`).
    pub addresses: Vec<String>,
}

/// What `status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub uptime: Duration,
    pub services: Vec<ServiceInfo>,
    /// Connections that instances replaced by restarts are still finishing.
    pub finishing: usize,
}

/// A function the binary provides to change the log filter (`log level debug`).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Running {
    ctx: ServiceContext,
    service: Arc<dyn Service>,
}

struct Slot {
    /// The host's own handles on the service's sockets while it exists; empty when stopped.
    listeners: Vec<BoundListener>,
    running: Option<Running>,
}

struct State {
    app: Application,
    /// Parallel to `app.services`.
    slots: Vec<Slot>,
}

struct Inner {
    registry: Registry,
    state: Mutex<State>,
    abort_all: CancellationToken,
    /// Instances a restart replaced, finishing their connections ([`ServiceContext::retire`]),
    /// and their contexts, for `stop_all` to ask them to stop.
    retiring: tokio_util::task::TaskTracker,
    retired: std::sync::Mutex<Vec<ServiceContext>>,
    shutdown: CancellationToken,
    started: Instant,
    drain: Duration,
    format: Format,
    /// Set when the application came from an encrypted tap: saves are encrypted again.
    key: std::sync::Mutex<Option<crate::crypt::Key>>,
    log_level: std::sync::Mutex<Option<LogLevelSetter>>,
}

/// A handle on the running application; cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

/// What a service context holds: a weak handle, so no cycle keeps the application alive.
#[derive(Clone, Debug)]
pub struct ControlRef(Weak<Inner>);

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl ControlRef {
    pub(crate) fn upgrade(&self) -> Option<Control> {
        self.0.upgrade().map(|inner| Control { inner })
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// Binds every endpoint of one service; on failure drops those bound so far. Logs each real
/// address, which is how a port-0 endpoint's port is learned.
fn bind_service(
    spec: &ServiceSpec,
    endpoints: &[Endpoint],
) -> Result<Vec<BoundListener>, StartError> {
    let span =
        tracing::info_span!(parent: None, "service", name = %spec.name, plugin = %spec.plugin);
    endpoints
        .iter()
        .map(|endpoint| {
            let listener = endpoint.bind().map_err(|source| StartError::Bind {
                service: spec.name.clone(),
                source,
            })?;
            match listener.local_addr() {
                Ok(addr) => tracing::info!(parent: &span, "listening on {addr} ({endpoint})"),
                Err(e) => {
                    tracing::warn!(parent: &span, "listening on {endpoint}, address unknown: {e}")
                }
            }
            Ok(BoundListener {
                endpoint: endpoint.clone(),
                listener,
            })
        })
        .collect()
}

/// For each endpoint of `wanted`, the index of a listener in `current` bound for it, matched
/// one to one (two `tcp:0` endpoints are two sockets).
fn match_listeners(current: &[BoundListener], wanted: &[Endpoint]) -> Vec<Option<usize>> {
    let mut used = vec![false; current.len()];
    wanted
        .iter()
        .map(|endpoint| {
            let found = (0..current.len()).find(|&k| !used[k] && &current[k].endpoint == endpoint);
            if let Some(k) = found {
                used[k] = true;
            }
            found
        })
        .collect()
}

/// A listener for each endpoint of `spec`: a dup of the one `current` holds for it, else one
/// bound now. The binding comes first, so a failure changes nothing.
fn rebind(spec: &ServiceSpec, current: &[BoundListener]) -> Result<Vec<BoundListener>, StartError> {
    let plan = match_listeners(current, &spec.listen);
    let fresh: Vec<Endpoint> = spec
        .listen
        .iter()
        .zip(&plan)
        .filter(|(_, kept)| kept.is_none())
        .map(|(e, _)| e.clone())
        .collect();
    let mut fresh = bind_service(spec, &fresh)?.into_iter();
    plan.into_iter()
        .map(|kept| match kept {
            Some(k) => Ok(clones(std::slice::from_ref(&current[k]), &spec.name)?.remove(0)),
            None => Ok(fresh.next().expect("one bound listener per fresh endpoint")),
        })
        .collect()
}

/// Where each listener really listens (the kernel's port for a port-0 endpoint).
fn local_addrs(listeners: &[BoundListener]) -> Vec<String> {
    listeners
        .iter()
        .map(|l| match l.listener.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => l.endpoint.to_string(),
        })
        .collect()
}

fn clones(listeners: &[BoundListener], service: &str) -> Result<Vec<BoundListener>, StartError> {
    listeners
        .iter()
        .map(|l| {
            l.try_clone().map_err(|e| StartError::Start {
                service: service.to_string(),
                message: format!("cannot duplicate the listener on {}: {e}", l.endpoint),
            })
        })
        .collect()
}

impl Control {
    /// Binds every listener of every service with blocking calls, before any runtime exists.
    pub fn bind(app: &Application) -> Result<Bound, StartError> {
        app.services
            .iter()
            .map(|spec| bind_service(spec, &spec.listen))
            .collect()
    }

    /// Builds and starts each service in order, on the current runtime. If one fails, those
    /// already started are stopped (in reverse) before the error is returned.
    pub async fn start(
        app: &Application,
        registry: &Registry,
        bound: Bound,
        drain: Duration,
        format: Format,
    ) -> Result<Control, StartError> {
        let control = Control {
            inner: Arc::new(Inner {
                registry: registry.clone(),
                state: Mutex::new(State {
                    app: Application {
                        services: Vec::new(),
                        ..app.clone()
                    },
                    slots: Vec::new(),
                }),
                abort_all: CancellationToken::new(),
                retiring: tokio_util::task::TaskTracker::new(),
                retired: std::sync::Mutex::new(Vec::new()),
                shutdown: CancellationToken::new(),
                started: Instant::now(),
                drain,
                format,
                key: std::sync::Mutex::new(None),
                log_level: std::sync::Mutex::new(None),
            }),
        };
        {
            let mut state = control.inner.state.lock().await;
            for (spec, listeners) in app.services.iter().zip(bound) {
                let started = control.launch(spec, &listeners);
                match started {
                    Ok(running) => {
                        state.app.services.push(spec.clone());
                        state.slots.push(Slot {
                            listeners,
                            running: Some(running),
                        });
                    }
                    Err(e) => {
                        drop(state);
                        control.stop_all().await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(control)
    }

    /// Builds a service from `spec` and starts it on copies of `listeners`.
    fn launch(
        &self,
        spec: &ServiceSpec,
        listeners: &[BoundListener],
    ) -> Result<Running, StartError> {
        let fail = |message| StartError::Start {
            service: spec.name.clone(),
            message,
        };
        let maker = self.inner.registry.get(&spec.plugin)?;
        let ctx = ServiceContext::under(&spec.name, &spec.plugin, &self.inner.abort_all)
            .with_control(ControlRef(Arc::downgrade(&self.inner)));
        // What the plugin logs while it is built and started is the service's, also when the
        // shell asked for it (the shell's connection span would otherwise tag it).
        let service = ctx.span().in_scope(|| -> Result<_, StartError> {
            let service = maker.build(spec).map_err(fail)?;
            service
                .start(&ctx, clones(listeners, &spec.name)?)
                .map_err(fail)?;
            Ok(service)
        })?;
        tracing::info!(parent: ctx.span(), "started");
        Ok(Running { ctx, service })
    }

    async fn halt(&self, running: Running) -> Option<serde_json::Value> {
        running.ctx.stop(Instant::now() + self.inner.drain).await;
        tracing::info!(parent: running.ctx.span(), "stopped");
        running.service.state()
    }

    fn position(state: &State, name: &str) -> Result<usize, ControlError> {
        state
            .app
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ControlError::NoSuchService(name.to_string()))
    }

    /// Connects the binary's log filter so `log level` can change it.
    pub fn set_log_level_setter(&self, setter: LogLevelSetter) {
        *self
            .inner
            .log_level
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(setter);
    }

    /// Changes the log filter live (`info`, `debug`, `warn,web=debug`, ...). Only what
    /// [`check_log_filter`] accepts is passed on: anything else is refused, nothing changes.
    pub fn set_log_level(&self, level: &str) -> Result<(), ControlError> {
        check_log_filter(level)
            .map_err(|e| ControlError::Invalid(format!("bad log level '{level}': {e}")))?;
        // Blanks after commas are for reading; the filter underneath takes none.
        let level = level
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",");
        let level = level.as_str();
        match &*self
            .inner
            .log_level
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(set) => set(level).map_err(ControlError::Invalid),
            None => Err(ControlError::Unsupported(
                "this process cannot change its log level".into(),
            )),
        }
    }

    /// Asks the process to stop gracefully, as SIGTERM does.
    pub fn request_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Resolves when [`Control::request_shutdown`] was called.
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown.cancelled().await
    }

    /// A handle that drops every open connection now, even while draining (a second SIGINT).
    pub fn abort_handle(&self) -> CancellationToken {
        self.inner.abort_all.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn info(spec: &ServiceSpec, slot: &Slot) -> ServiceInfo {
        ServiceInfo {
            name: spec.name.clone(),
            plugin: spec.plugin.clone(),
            listen: spec.listen.clone(),
            running: slot.running.is_some(),
            connections: slot.running.as_ref().map_or(0, |r| r.ctx.connections()),
            addresses: match slot.running {
                Some(_) => local_addrs(&slot.listeners),
                None => Vec::new(),
            },
        }
    }

    pub async fn list(&self) -> Vec<ServiceInfo> {
        let state = self.inner.state.lock().await;
        state
            .app
            .services
            .iter()
            .zip(&state.slots)
            .map(|(spec, slot)| Self::info(spec, slot))
            .collect()
    }

    pub async fn status(&self) -> Status {
        let services = self.list().await;
        let name = self.inner.state.lock().await.app.name.clone();
        let finishing = self
            .inner
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|ctx| !ctx.is_finished())
            .map(ServiceContext::connections)
            .sum();
        Status {
            name,
            uptime: self.inner.started.elapsed(),
            services,
            finishing,
        }
    }

    /// One service's spec as it is now (its state included).
    pub async fn show(&self, name: &str) -> Result<ServiceSpec, ControlError> {
        let state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let mut spec = state.app.services[i].clone();
        if let Some(running) = &state.slots[i].running {
            spec.state = running.service.state();
        }
        Ok(spec)
    }

    /// Adds and starts a service. Its name must be free; its config and endpoints are checked
    /// and bound before it joins the application. Returns the addresses it listens on.
    pub async fn add(&self, spec: ServiceSpec) -> Result<Vec<String>, ControlError> {
        let mut state = self.inner.state.lock().await;
        if state.app.service(&spec.name).is_some() {
            return Err(ControlError::NameTaken(spec.name));
        }
        self.check(&state.app, None, &spec)?;
        let listeners = bind_service(&spec, &spec.listen)?;
        let addrs = local_addrs(&listeners);
        let running = self.launch(&spec, &listeners)?;
        state.app.services.push(spec);
        state.slots.push(Slot {
            listeners,
            running: Some(running),
        });
        Ok(addrs)
    }

    /// Validates `spec` against its plugin and the rest of the application (`replacing` is the
    /// index of the service it replaces, if any).
    fn check(
        &self,
        app: &Application,
        replacing: Option<usize>,
        spec: &ServiceSpec,
    ) -> Result<(), ControlError> {
        self.maker(spec)?.check(spec).map_err(|problems| {
            ControlError::Invalid(format!("{}: {}", spec.name, problems.join("; ")))
        })?;
        let mut candidate = app.clone();
        match replacing {
            Some(i) => candidate.services[i] = spec.clone(),
            None => candidate.services.push(spec.clone()),
        }
        let problems = candidate.envelope_problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ControlError::Invalid(problems.join("; ")))
        }
    }

    /// Stops a service (draining it) and removes it from the application.
    pub async fn remove(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let slot = state.slots.remove(i);
        state.app.services.remove(i);
        if let Some(running) = slot.running {
            self.halt(running).await;
        }
        Ok(())
    }

    /// Stops a service, draining it; it stays in the application. Its sockets close, except
    /// those this process could not bind again ([`Endpoint::can_bind_again`]: a port below
    /// 1024 after root was given up, a socket from systemd). Those stay open, as a systemd
    /// socket unit keeps its socket: the kernel queues connections until `start`. Returns the
    /// endpoints kept open.
    pub async fn stop(&self, name: &str) -> Result<Vec<Endpoint>, ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let running = state.slots[i]
            .running
            .take()
            .ok_or_else(|| ControlError::AlreadyStopped(name.to_string()))?;
        state.slots[i]
            .listeners
            .retain(|l| !l.endpoint.can_bind_again());
        let kept = state.slots[i]
            .listeners
            .iter()
            .map(|l| l.endpoint.clone())
            .collect();
        let saved = self.halt(running).await;
        state.app.services[i].state = saved;
        Ok(kept)
    }

    /// Starts a stopped service: on the sockets [`Control::stop`] kept, and others bound
    /// again. A failure changes nothing (the kept sockets stay).
    pub async fn start_service(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        if state.slots[i].running.is_some() {
            return Err(ControlError::AlreadyRunning(name.to_string()));
        }
        let spec = state.app.services[i].clone();
        let listeners = rebind(&spec, &state.slots[i].listeners)?;
        let running = self.launch(&spec, &listeners)?;
        state.slots[i] = Slot {
            listeners,
            running: Some(running),
        };
        Ok(())
    }

    /// Gives a service a new config. Applied live when the service can take it; otherwise the
    /// service restarts (drained) on the same sockets; a stopped service takes it when it
    /// starts. Refused whole if it does not validate.
    pub async fn reconfigure(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<Applied, ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let mut spec = state.app.services[i].clone();
        spec.config = config;
        self.check(&state.app, Some(i), &spec)?;
        spec.config = self
            .maker(&spec)?
            .normalize(&spec)
            .map_err(|e| ControlError::Invalid(format!("{}: {e}", spec.name)))?;
        let applied = match &state.slots[i].running {
            None => Applied::AtStart,
            Some(running) => {
                if running
                    .service
                    .reconfigure(&spec.config)
                    .map_err(ControlError::Invalid)?
                {
                    Applied::Live
                } else {
                    self.restart(&mut state, i, &spec).await?;
                    Applied::Restarted
                }
            }
        };
        state.app.services[i].config = spec.config;
        Ok(applied)
    }

    /// Replaces a service's endpoint list: new endpoints are bound first (a failure changes
    /// nothing), then the service restarts on the new set. Returns the addresses it now listens
    /// on (empty for a stopped service, which binds when it starts).
    pub async fn set_listen(
        &self,
        name: &str,
        listen: Vec<Endpoint>,
    ) -> Result<Vec<String>, ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let mut spec = state.app.services[i].clone();
        spec.listen = listen;
        self.relisten(&mut state, i, spec).await
    }

    /// Adds an endpoint to a service (the admin shell's `listen`); `kind` says what the
    /// listener speaks, for plugins with kinds (mail: smtp, pop3, pop3s). As
    /// [`Control::set_listen`], with the config changed to match.
    pub async fn listen(
        &self,
        name: &str,
        endpoint: Endpoint,
        kind: Option<&str>,
    ) -> Result<Vec<String>, ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let mut spec = state.app.services[i].clone();
        // Port 0 never conflicts: each such endpoint gets its own port.
        if spec.listen.iter().any(|e| e.conflicts_with(&endpoint)) {
            return Err(ControlError::Invalid(format!(
                "{name} already listens on {endpoint}"
            )));
        }
        if let Some(other) = state
            .app
            .services
            .iter()
            .find(|s| s.name != name && s.listen.iter().any(|e| e.conflicts_with(&endpoint)))
        {
            return Err(ControlError::Invalid(format!(
                "{endpoint} is already used by service '{}'",
                other.name
            )));
        }
        spec.config = self.relisten_config(&spec, ListenChange::Added { kind })?;
        spec.listen.push(endpoint);
        self.relisten(&mut state, i, spec).await
    }

    /// Removes an endpoint from a service (the admin shell's `unlisten`), named as written
    /// (the last one written that way: several `tcp:0` endpoints are several sockets) or by
    /// the address a running service listens on (`127.0.0.1:38255`, which tells those apart).
    /// A service's only endpoint stays: stopping it is `stop`. As [`Control::listen`].
    pub async fn unlisten(&self, name: &str, target: &str) -> Result<Vec<String>, ControlError> {
        let mut state = self.inner.state.lock().await;
        let i = Self::position(&state, name)?;
        let mut spec = state.app.services[i].clone();
        let written = target.parse::<Endpoint>();
        let position = match &written {
            Ok(endpoint) => spec.listen.iter().rposition(|e| e == endpoint),
            Err(_) => None,
        }
        .or_else(|| {
            let slot = &state.slots[i];
            slot.running.as_ref()?;
            local_addrs(&slot.listeners)
                .iter()
                .position(|a| a == target)
        })
        .ok_or_else(|| {
            ControlError::Invalid(match written {
                Ok(_) => format!("{name} does not listen on {target}"),
                Err(e) => format!("{e}, nor an address {name} listens on"),
            })
        })?;
        if spec.listen.len() == 1 {
            return Err(ControlError::Invalid(format!(
                "{target} is {name}'s only endpoint; to close it, stop or remove {name}"
            )));
        }
        spec.config = self.relisten_config(&spec, ListenChange::Removed { position })?;
        spec.listen.remove(position);
        // The socket at that position goes, not another written the same way (`tcp:0`): it
        // leaves the slot first, so the matching of what stays cannot pick it. (A running
        // service holds one socket per endpoint, in order; a stopped one only those kept.)
        let removed = (state.slots[i].listeners.len() == state.app.services[i].listen.len())
            .then(|| state.slots[i].listeners.remove(position));
        let result = self.relisten(&mut state, i, spec).await;
        if let (Err(_), Some(listener)) = (&result, removed) {
            state.slots[i].listeners.insert(position, listener);
        }
        result
    }

    /// The plugin of `spec`.
    fn maker(&self, spec: &ServiceSpec) -> Result<&Arc<dyn Maker>, ControlError> {
        self.inner
            .registry
            .get(&spec.plugin)
            .map_err(|e| ControlError::Invalid(e.to_string()))
    }

    fn relisten_config(
        &self,
        spec: &ServiceSpec,
        change: ListenChange<'_>,
    ) -> Result<serde_json::Value, ControlError> {
        self.maker(spec)?
            .relisten(spec, change)
            .map_err(|e| ControlError::Invalid(format!("{}: {e}", spec.name)))
    }

    /// Puts `spec` (a new listen list, and the config that goes with it) in place of service
    /// `i`: checked first, then its sockets matched and bound, then the service restarted.
    async fn relisten(
        &self,
        state: &mut State,
        i: usize,
        spec: ServiceSpec,
    ) -> Result<Vec<String>, ControlError> {
        self.check(&state.app, Some(i), &spec)?;
        if state.slots[i].running.is_none() {
            // A socket kept open while stopped goes when its endpoint does.
            let plan = match_listeners(&state.slots[i].listeners, &spec.listen);
            let old = std::mem::take(&mut state.slots[i].listeners);
            state.slots[i].listeners = old
                .into_iter()
                .enumerate()
                .filter(|(k, _)| plan.contains(&Some(*k)))
                .map(|(_, l)| l)
                .collect();
            state.app.services[i].listen = spec.listen;
            state.app.services[i].config = spec.config;
            return Ok(Vec::new());
        }
        let listeners = rebind(&spec, &state.slots[i].listeners)?;
        let old = std::mem::replace(&mut state.slots[i].listeners, listeners);
        if let Err(e) = self.restart(state, i, &spec).await {
            state.slots[i].listeners = old;
            return Err(e);
        }
        state.app.services[i].listen = spec.listen;
        state.app.services[i].config = spec.config;
        Ok(local_addrs(&state.slots[i].listeners))
    }

    /// Stops service `i` (draining) and starts `spec` in its place on the slot's sockets. The
    /// new service is built first, so a config the plugin cannot build stops nothing; if the
    /// new one then fails to start, the old config is started again.
    async fn restart(
        &self,
        state: &mut State,
        i: usize,
        spec: &ServiceSpec,
    ) -> Result<(), ControlError> {
        let mut spec = spec.clone();
        let old = state.slots[i].running.take();
        // The new instance starts first, on the same sockets, with the state the old one has
        // now; if it cannot, the old one goes on as if nothing happened. Then the old one
        // takes no new connection and finishes those it has, in the background, as nginx's
        // old workers do at a reload: no client is cut by a configuration change.
        if let Some(old) = &old {
            spec.state = old.service.state().or(spec.state);
        }
        match self.launch(&spec, &state.slots[i].listeners) {
            Ok(running) => {
                state.slots[i].running = Some(running);
                state.app.services[i].state = spec.state;
                if let Some(old) = old {
                    // Its accept loops end first: a port that went with the change is closed
                    // when the change is said done.
                    old.ctx.stop_accepting().await;
                    {
                        let mut retired =
                            self.inner.retired.lock().unwrap_or_else(|p| p.into_inner());
                        retired.retain(|ctx| !ctx.is_finished());
                        retired.push(old.ctx.clone());
                    }
                    self.inner.retiring.spawn(async move {
                        old.ctx.retire().await;
                        tracing::info!(parent: old.ctx.span(), "the replaced instance finished");
                    });
                }
                Ok(())
            }
            Err(e) => {
                state.slots[i].running = old;
                Err(e.into())
            }
        }
    }

    /// The application as it runs now, each running service's state included.
    pub async fn snapshot(&self) -> Application {
        let state = self.inner.state.lock().await;
        let mut app = state.app.clone();
        for (spec, slot) in app.services.iter_mut().zip(&state.slots) {
            if let Some(running) = &slot.running {
                spec.state = running.service.state();
            }
        }
        app
    }

    /// Writes the application as it runs now to `<name>.tap`, or `<name>-<tag>.tap` (`.tas` when
    /// it was loaded from a source file), in the run directory. Returns the path.
    pub async fn save(&self, tag: Option<&str>) -> Result<PathBuf, ControlError> {
        if let Some(problem) = tag.and_then(crate::app::name_problem) {
            let tag = tag.unwrap_or_default();
            // A tag too long to read is not printed whole.
            let shown: String = tag.chars().take(crate::app::MAX_NAME_LEN).collect();
            let cut = if shown.len() < tag.len() { "..." } else { "" };
            return Err(ControlError::Invalid(format!(
                "tag '{shown}{cut}': {problem}"
            )));
        }
        let app = self.snapshot().await;
        let key = self.save_key();
        let extension = self.inner.format.file_extension(key.is_some());
        let path = PathBuf::from(match tag {
            Some(tag) => format!("{}-{tag}.{extension}", app.name),
            None => format!("{}.{extension}", app.name),
        });
        tapfile::save_as(
            &app,
            &path,
            self.inner.format,
            key.as_ref(),
            self.inner.registry.holds_secrets(&app),
        )?;
        Ok(path)
    }

    /// Makes every later save (admin `save`, twistd's shutdown save) encrypted under `key`, as
    /// the tap the application came from was.
    pub fn encrypt_saves_with(&self, key: crate::crypt::Key) {
        *self.inner.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    /// The key saves are encrypted with, if the application came from an encrypted tap.
    pub fn save_key(&self) -> Option<crate::crypt::Key> {
        self.inner
            .key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks every running service to reopen its own log files.
    pub async fn reopen_logs(&self) {
        let state = self.inner.state.lock().await;
        for running in state.slots.iter().filter_map(|slot| slot.running.as_ref()) {
            running.service.reopen_logs();
        }
    }

    /// Stops every running service in reverse order, each draining until the shared deadline.
    pub async fn stop_all(&self) {
        let mut state = self.inner.state.lock().await;
        let deadline = Instant::now() + self.inner.drain;
        for i in (0..state.slots.len()).rev() {
            if let Some(running) = state.slots[i].running.take() {
                running.ctx.stop(deadline).await;
                tracing::info!(parent: running.ctx.span(), "stopped");
                state.app.services[i].state = running.service.state();
            }
            state.slots[i].listeners.clear();
        }
        // Instances replaced by restarts: their sessions are asked to end too, with the same
        // deadline.
        for ctx in self
            .inner
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            ctx.ask_to_stop();
        }
        self.inner.retiring.close();
        if tokio::time::timeout_at(deadline, self.inner.retiring.wait())
            .await
            .is_err()
        {
            self.inner.abort_all.cancel();
            self.inner.retiring.wait().await;
        }
    }

    /// The application after [`Control::stop_all`], with the states the services left.
    pub async fn application(&self) -> Application {
        self.inner.state.lock().await.app.clone()
    }
}

/// The level names a log filter takes.
pub const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a log filter for `log level`: a comma-separated list of directives, each a level
/// (`info`) or `TARGET=LEVEL` (`web=debug`), a level being one of [`LOG_LEVELS`] and a target
/// letters, digits, `_`, `:`, `.` and `-`. The filter underneath (tracing's `EnvFilter`) would
/// take a misspelt level as the name of a target and then log nothing at all, so anything else
/// is refused, with what is wrong with it.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |word: &str| LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word));
    let levels = LOG_LEVELS.join(", ");
    for directive in filter.split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            return Err("an empty directive (give LEVEL or TARGET=LEVEL between commas)".into());
        }
        match directive.split_once('=') {
            None if is_level(directive) => {}
            None => {
                return Err(format!(
                    "'{}' is not a level ({levels}); a target's level is TARGET=LEVEL",
                    directive.escape_debug()
                ))
            }
            Some((target, level)) => {
                if target.is_empty()
                    || !target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
                {
                    return Err(format!(
                        "'{}' is not a target name (letters, digits, '_', ':', '.', '-')",
                        target.escape_debug()
                    ));
                }
                if !is_level(level) {
                    return Err(format!(
                        "'{}' in '{}' is not a level ({levels})",
                        level.escape_debug(),
                        directive.escape_debug()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_log_filter;

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "OFF",
            "warn,web=debug",
            "web::server=trace, mail=off",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("inof", "'inof' is not a level"),
            ("bogus(", "'bogus(' is not a level"),
            ("\u{e9}", "'\u{e9}' is not a level"),
            ("web=inof", "'inof' in 'web=inof' is not a level"),
            (
                "not=a=filter",
                "'a=filter' in 'not=a=filter' is not a level",
            ),
            ("b@d=info", "'b@d' is not a target name"),
            ("=info", "'' is not a target name"),
            ("info,", "an empty directive"),
            ("", "an empty directive"),
        ] {
            let err = check_log_filter(bad).expect_err(bad);
            assert!(err.starts_with(why), "{bad}: {err}");
        }
    }
}
