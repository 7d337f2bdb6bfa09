//! Running services: what a service is given and how it accepts connections.
//!
//! The lifecycle itself (bind, start in order, stop in reverse) is [`crate::control`]'s.
//!
//! A service spawns its tasks through its [`ServiceContext`], which tracks them and carries two
//! signals: *stopping* (stop accepting, finish what is in flight, close idle connections) and
//! *abort* (the drain deadline passed: drop everything now). [`serve`] is the accept loop most
//! services need, with back-off when the process runs out of descriptors.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::{AsyncListener, BoundListener, Peer, Stream};

/// A running service, made by its plugin's `build`.
pub trait Service: Send + Sync + 'static {
    /// Starts serving on `listeners`, given in the order of the spec's `listen` list, each with
    /// its endpoint. Called on the runtime; spawns its tasks with [`ServiceContext::spawn`] and
    /// returns at once.
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String>;

    /// What to keep across restarts, saved in the shutdown tap (and by `save`).
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Applies a new, already validated config while running, without dropping connections.
    /// `Ok(false)` means this change needs a restart, which the host then does (draining the
    /// service first); the default says so for every change.
    fn reconfigure(&self, _config: &serde_json::Value) -> Result<bool, String> {
        Ok(false)
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
    /// Take no new connection (a restart replaced this instance, or it stops): cancelled
    /// with `stopping`, and alone by [`ServiceContext::retire`].
    replaced: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    /// The accept loops alone ([`serve`]): a retired instance's are waited for, so its ports
    /// close before a restart is said done.
    accepting: TaskTracker,
    span: tracing::Span,
    connections: Arc<AtomicUsize>,
    control: Option<crate::control::ControlRef>,
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
            replaced: CancellationToken::new(),
            abort: abort_all.child_token(),
            tracker: TaskTracker::new(),
            accepting: TaskTracker::new(),
            // A root span: a service started from the admin shell is not part of its session.
            span: tracing::info_span!(parent: None, "service", name = %name, plugin = %plugin),
            connections: Arc::new(AtomicUsize::new(0)),
            control: None,
        }
    }

    pub(crate) fn with_control(mut self, control: crate::control::ControlRef) -> Self {
        self.control = Some(control);
        self
    }

    /// The control handle of the running application (for admin front ends like the shell).
    pub fn control(&self) -> Option<crate::control::Control> {
        self.control.as_ref().and_then(|c| c.upgrade())
    }

    /// Connections open right now (those accepted through [`serve`]).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
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

    /// Resolves when the service is asked to stop gracefully: work in flight is finished,
    /// idle sessions are closed.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Resolves when the service is to take no new connection: it stops, or a restart
    /// replaced it ([`ServiceContext::retire`]). Accept loops and background work end here;
    /// sessions go on until they end by themselves or [`ServiceContext::stopping`] resolves.
    /// Request-response connections (HTTP keep-alive) close once idle.
    pub async fn replaced(&self) {
        self.replaced.cancelled().await
    }

    pub fn is_replaced(&self) -> bool {
        self.replaced.is_cancelled()
    }

    /// Both signals at once: what a stop sends, and what `stop_all` sends a retiring instance
    /// when the process stops.
    pub fn ask_to_stop(&self) {
        self.replaced.cancel();
        self.stopping.cancel();
    }

    /// Whether every task of a stopped or retired instance has ended.
    pub fn is_finished(&self) -> bool {
        self.tracker.is_closed() && self.tracker.is_empty()
    }

    /// Resolves when the drain deadline has passed and open work must be dropped.
    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Retires an instance that a restart replaced: it takes no new connection and finishes
    /// those it has, sessions included, with no deadline of its own (each protocol's timeouts
    /// bound them), as nginx's old workers and Postfix's smtpd do after a reload. Only the
    /// process stopping ([`ServiceContext::ask_to_stop`], then the abort) cuts it short.
    pub async fn retire(&self) {
        self.stop_accepting().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tells the service to take no new connection and waits until its accept loops have
    /// ended: no connection reaches it any more, through ports it no longer has or ones its
    /// successor now serves.
    pub async fn stop_accepting(&self) {
        self.replaced.cancel();
        self.accepting.close();
        self.accepting.wait().await;
    }

    /// Stops gracefully: signals, waits for the tracked tasks until `deadline`, then aborts
    /// what is left and waits for it to go. Idempotent.
    pub async fn stop(&self, deadline: Instant) {
        self.ask_to_stop();
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
    accept_loop(ctx, listener, None, handler);
}

/// [`serve`] with a connection cap shared by every listener given the same semaphore: past it,
/// new connections wait in the kernel's backlog rather than being accepted and starved (as
/// nginx's worker_connections). A permit is held for each connection's whole life.
pub fn serve_limited<H, F>(
    ctx: &ServiceContext,
    listener: AsyncListener,
    permits: Arc<Semaphore>,
    handler: H,
) where
    H: Fn(Stream, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    accept_loop(ctx, listener, Some(permits), handler);
}

fn accept_loop<H, F>(
    ctx: &ServiceContext,
    listener: AsyncListener,
    permits: Option<Arc<Semaphore>>,
    handler: H,
) where
    H: Fn(Stream, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let conn_ctx = ctx.clone();
    // Tracked apart too, so a retiring instance's ports can be known closed (the listener goes
    // with this loop).
    ctx.spawn(ctx.accepting.track_future(async move {
        let ctx = conn_ctx;
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = match &permits {
                None => None,
                Some(permits) => tokio::select! {
                    biased;
                    () = ctx.replaced() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                },
            };
            let accepted = tokio::select! {
                biased;
                () = ctx.replaced() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let work = handler(stream, peer);
                    let abort_ctx = ctx.clone();
                    let span = tracing::debug_span!("conn", %peer);
                    let open = OpenConnection::new(&ctx.connections);
                    ctx.spawn(
                        async move {
                            let _open = open;
                            let _permit = permit;
                            // The connection first: a handler that answers the abort
                            // itself (SMTP's 421) finishes in the poll that sees it, as
                            // long as its last words fit in the socket's buffer.
                            tokio::select! {
                                biased;
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
                    drop(permit);
                    tokio::select! {
                        () = ctx.replaced() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }));
}

/// Counts a connection as open for as long as it lives, in its service and in the process
/// (whose last one to close lets the allocator give memory back: [`crate::memory`]).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        crate::memory::connection_opened();
        OpenConnection(count.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        crate::memory::connection_closed();
    }
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
