//! Running services: the lifecycle from bound listeners to a drained stop.
//!
//! ```text
//! bind (Runner::bind, blocking, before any thread) -> start in order (Runner::start)
//!   -> run -> stop in reverse order, draining until a deadline (Runner::stop)
//! ```
//!
//! A service spawns its tasks through its [`ServiceContext`], which tracks them and carries two
//! signals: *stopping* (stop accepting, finish what is in flight, close idle connections) and
//! *abort* (the drain deadline passed: drop everything now). [`serve`] is the accept loop most
//! services need, with back-off when the process runs out of descriptors.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::app::{Application, ServiceSpec};
use crate::endpoint::BindError;
use crate::net::{AsyncListener, BoundListener, Peer, Stream};
use crate::plugin::{PluginError, Registry};

/// A running service, made by its plugin's `build`.
pub trait Service: Send + Sync + 'static {
    /// Starts serving on `listeners`, given in the order of the spec's `listen` list, each with
    /// its endpoint. Called on the runtime; spawns its tasks with [`ServiceContext::spawn`] and
    /// returns at once.
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String>;

    /// What to keep across restarts, saved in the shutdown tap. Called after the service stopped.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Reopens the service's own log files (twistd calls it on SIGUSR1 and SIGHUP, after
    /// logrotate moved them). Most services keep no files: the default does nothing.
    fn reopen_logs(&self) {}
}

/// What a running service is given: its identity, its stop signals and its task tracker.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    name: Arc<str>,
    plugin: Arc<str>,
    stopping: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    span: tracing::Span,
}

impl ServiceContext {
    pub fn new(name: &str, plugin: &str) -> Self {
        Self::under(name, plugin, &CancellationToken::new())
    }

    /// A context whose abort also fires when `abort_all` does.
    pub fn under(name: &str, plugin: &str, abort_all: &CancellationToken) -> Self {
        ServiceContext {
            name: name.into(),
            plugin: plugin.into(),
            stopping: CancellationToken::new(),
            abort: abort_all.child_token(),
            tracker: TaskTracker::new(),
            span: tracing::info_span!("service", name = %name, plugin = %plugin),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The `service{name,plugin}` span; connection spans go below it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Spawns a task that the stop waits for, inside the service's span.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task.instrument(self.span.clone()));
    }

    /// Resolves when the service is asked to stop gracefully.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Resolves when the drain deadline has passed and open work must be dropped.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Stops gracefully: signals, waits for the tracked tasks until `deadline`, then aborts
    /// what is left and waits for it to go. Idempotent.
    pub async fn stop(&self, deadline: Instant) {
        self.stopping.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(parent: &self.span, "drain deadline passed; closing open connections");
            self.abort.cancel();
            self.tracker.wait().await;
        }
    }
}

/// Accepts connections until the service stops, running `handler` for each in its own tracked
/// task with a `conn{peer}` span. A connection is dropped when the drain deadline passes; the
/// handler only has to finish its work when [`ServiceContext::stopping`] resolves.
pub fn serve<H, F>(ctx: &ServiceContext, listener: AsyncListener, handler: H)
where
    H: Fn(Stream, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let conn_ctx = ctx.clone();
    ctx.spawn(async move {
        let ctx = conn_ctx;
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                biased;
                () = ctx.stopping() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let work = handler(stream, peer);
                    let abort_ctx = ctx.clone();
                    let span = tracing::debug_span!("conn", %peer);
                    ctx.spawn(
                        async move {
                            tokio::select! {
                                () = work => {}
                                () = abort_ctx.aborted() => {}
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to close rather than
                    // spin; the listener itself stays open.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        () = ctx.stopping() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
}

/// Errors that concern one connection that died before it was accepted, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

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

struct Running {
    spec_name: String,
    ctx: ServiceContext,
    service: Arc<dyn Service>,
}

/// The services of an application, started in order and stopped in reverse.
#[derive(Default)]
pub struct Runner {
    running: Vec<Running>,
    /// Parent of every service's abort signal: cancelling it ends every drain at once.
    abort_all: CancellationToken,
}

/// Every listener of an application, bound, per service in the application's order.
pub type Bound = Vec<Vec<BoundListener>>;

impl Runner {
    /// Binds every listener with blocking calls; on failure drops those bound so far. Logs each
    /// real address, which is how a port-0 endpoint's port is learned.
    pub fn bind(app: &Application) -> Result<Bound, StartError> {
        app.services
            .iter()
            .map(|spec| {
                let span = tracing::info_span!("service", name = %spec.name, plugin = %spec.plugin);
                spec.listen
                    .iter()
                    .map(|endpoint| {
                        let listener = endpoint.bind().map_err(|source| StartError::Bind {
                            service: spec.name.clone(),
                            source,
                        })?;
                        match listener.local_addr() {
                            Ok(addr) => {
                                tracing::info!(parent: &span, "listening on {addr} ({endpoint})")
                            }
                            Err(e) => tracing::warn!(
                                parent: &span,
                                "listening on {endpoint}, address unknown: {e}"
                            ),
                        }
                        Ok(BoundListener {
                            endpoint: endpoint.clone(),
                            listener,
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Builds and starts each service in order, on the current runtime. If one fails, those
    /// already started are stopped (in reverse) before the error is returned.
    pub async fn start(
        app: &Application,
        registry: &Registry,
        bound: Bound,
        drain: Duration,
    ) -> Result<Runner, StartError> {
        let mut runner = Runner::default();
        for (spec, listeners) in app.services.iter().zip(bound) {
            if let Err(e) = runner.start_one(spec, registry, listeners) {
                runner.stop(drain).await;
                return Err(e);
            }
        }
        Ok(runner)
    }

    fn start_one(
        &mut self,
        spec: &ServiceSpec,
        registry: &Registry,
        listeners: Vec<BoundListener>,
    ) -> Result<(), StartError> {
        let fail = |message| StartError::Start {
            service: spec.name.clone(),
            message,
        };
        let service = registry.get(&spec.plugin)?.build(spec).map_err(fail)?;
        let ctx = ServiceContext::under(&spec.name, &spec.plugin, &self.abort_all);
        service.start(&ctx, listeners).map_err(fail)?;
        tracing::info!(parent: ctx.span(), "started");
        self.running.push(Running {
            spec_name: spec.name.clone(),
            ctx,
            service,
        });
        Ok(())
    }

    /// A handle that drops every open connection now, even while [`Runner::stop`] is draining
    /// (twistd's answer to a second SIGINT).
    pub fn abort_handle(&self) -> CancellationToken {
        self.abort_all.clone()
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops every service in reverse order; all share one drain deadline.
    pub async fn stop(&mut self, drain: Duration) {
        let deadline = Instant::now() + drain;
        for running in self.running.iter().rev() {
            running.ctx.stop(deadline).await;
            tracing::info!(parent: running.ctx.span(), "stopped");
        }
    }

    /// Asks every running service to reopen its own log files.
    pub fn reopen_logs(&self) {
        for running in &self.running {
            running.service.reopen_logs();
        }
    }

    /// The application as it runs now: `app` with each service's current state.
    pub fn snapshot(&self, app: &Application) -> Application {
        let mut app = app.clone();
        for spec in &mut app.services {
            if let Some(running) = self.running.iter().find(|r| r.spec_name == spec.name) {
                spec.state = running.service.state();
            }
        }
        app
    }
}
