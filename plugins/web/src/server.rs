//! The web service: the accept loop with its connection cap, one hyper connection per accepted
//! stream (HTTP/1.1, or HTTP/2 when TLS negotiated it), and the frame around every request:
//! the body-size check, `Server` and `--add-header` headers, the access log and the weblog.
//!
//! Timeouts: hyper's header read timeout runs from the moment the server waits for a request
//! head (on a kept-alive connection, from the end of the previous response) until the head is
//! complete. The keep-alive timeout watches the socket: a connection that moved no byte for that
//! long is closed gracefully (an answer in progress is finished first).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, REFERER, SERVER, TRANSFER_ENCODING, USER_AGENT,
};
use hyper::http::uri::Authority;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use host::net::Peer;
use host::service::{serve_limited, ServiceContext};
use host::{BoundListener, Endpoint, Service};

use crate::access_log::Entry;
use crate::site::{closing, html_response, Site};
use crate::zerocopy::{Queue, ZeroCopy};
use crate::{options, tls, WebConfig};
use arc_swap::ArcSwap;

/// Every response body.
pub type Body = BoxBody<Bytes, io::Error>;

pub const SERVER_NAME: &str = concat!("taphost/", env!("CARGO_PKG_VERSION"));

/// What a request needs to know about its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    /// The connection's queue of file chunks for sendfile, on plain HTTP/1.1 connections
    /// (see [`crate::zerocopy`]).
    pub zero_copy: Option<Queue>,
}

/// The connection limits, from the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_head_size: usize,
    max_connections: usize,
}

/// The running web service.
#[derive(Debug)]
pub struct WebService {
    /// The routing configuration. Every request loads the current one, so a live
    /// reconfigure (`set web path ...` in the admin shell) reaches open keep-alive connections
    /// at their next request, and no connection is dropped.
    site: Arc<ArcSwap<Site>>,
    limits: Limits,
    sni: Vec<(String, std::path::PathBuf, std::path::PathBuf)>,
    logfile: Option<std::path::PathBuf>,
}

fn limits(config: &WebConfig) -> Limits {
    Limits {
        header_timeout: Duration::from_secs(config.header_timeout),
        keepalive_timeout: Duration::from_secs(config.keepalive_timeout),
        max_head_size: config.max_head_size,
        max_connections: config.max_connections,
    }
}

fn sni(
    config: &WebConfig,
) -> Result<Vec<(String, std::path::PathBuf, std::path::PathBuf)>, String> {
    config.sni.iter().map(|v| options::sni(v)).collect()
}

impl WebService {
    pub fn new(config: &WebConfig, state: Option<serde_json::Value>) -> Result<Self, String> {
        Ok(WebService {
            site: Arc::new(ArcSwap::from_pointee(Site::new(
                config,
                state.as_ref(),
                None,
            )?)),
            limits: limits(config),
            sni: sni(config)?,
            logfile: config.logfile.clone(),
        })
    }
}

impl Service for WebService {
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String> {
        let sni = tls::load_sni(&self.sni)?;
        // One cap for the whole service, as nginx's worker_connections.
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        for bound in listeners {
            let acceptor = match &bound.endpoint {
                Endpoint::Ssl {
                    private_key,
                    cert_key,
                    ..
                } => Some(
                    tls::acceptor(cert_key, private_key, &sni)
                        .map_err(|e| format!("{}: {e}", bound.endpoint))?,
                ),
                _ => None,
            };
            let listener = bound.listener.into_async().map_err(|e| e.to_string())?;
            let (site, limits, conn_ctx) = (self.site.clone(), self.limits, ctx.clone());
            serve_limited(ctx, listener, permits.clone(), move |stream, peer| {
                connection(
                    site.clone(),
                    conn_ctx.clone(),
                    acceptor.clone(),
                    limits,
                    stream,
                    peer,
                )
            });
        }
        // The access log file is the same for the service's whole life: a new --logfile
        // restarts the service (see reconfigure).
        if let Some(log) = self.site.load().access_log.clone() {
            let ctx2 = ctx.clone();
            ctx.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => log.flush(),
                        () = ctx2.replaced() => break,
                    }
                }
                log.flush();
            });
        }
        Ok(())
    }

    fn state(&self) -> Option<serde_json::Value> {
        let site = self.site.load();
        if let Some(log) = &site.access_log {
            // Lines of requests that finished while draining.
            log.flush();
        }
        site_state(&site)
    }

    fn reopen_logs(&self) {
        if let Some(log) = &self.site.load().access_log {
            log.reopen();
        }
    }

    /// Everything that routes a request (roots, indexes, types, mounts, CGI, vhosts, headers,
    /// the weblog) changes live; connection limits, SNI certificates and the access log file
    /// shape connections and tasks made at start, so changing them restarts the service.
    fn reconfigure(&self, config: &serde_json::Value) -> Result<bool, String> {
        let config: WebConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        if limits(&config) != self.limits
            || sni(&config)? != self.sni
            || config.logfile != self.logfile
        {
            return Ok(false);
        }
        let current = self.site.load();
        // Weblog hits and resource states carry over into the new routing.
        let state = site_state(&current);
        let site = Site::new(&config, state.as_ref(), current.access_log.clone())?;
        self.site.store(Arc::new(site));
        Ok(true)
    }
}

/// What the service keeps across restarts: `{"weblog": [...], "resources": {"/prefix": state}}`,
/// each part present when it has something to keep.
fn site_state(site: &Site) -> Option<serde_json::Value> {
    let mut state = serde_json::Map::new();
    if site.weblog_path.is_some() {
        if let serde_json::Value::Object(weblog) = site.weblog.state() {
            state.extend(weblog);
        }
    }
    if let Some(resources) = crate::resource::state(&site.resources) {
        state.insert("resources".into(), resources);
    }
    (!state.is_empty()).then_some(serde_json::Value::Object(state))
}

/// Serves one accepted connection: the TLS handshake for `ssl:` listeners (bounded by the
/// header timeout), then HTTP/1.1, or HTTP/2 when ALPN chose it.
async fn connection(
    site: Arc<ArcSwap<Site>>,
    ctx: ServiceContext,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
    stream: host::Stream,
    peer: host::net::Peer,
) {
    let local = match &stream {
        host::Stream::Tcp(s) => s.local_addr().ok(),
        host::Stream::Unix(_) => None,
    };
    let mut info = ConnInfo {
        peer,
        local,
        tls: acceptor.is_some(),
        zero_copy: None,
    };
    match acceptor {
        None => {
            let queue = Queue::default();
            info.zero_copy = Some(queue.clone());
            let io = ZeroCopy::new(stream, queue);
            serve_http(site, &ctx, io, info, false, limits).await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_http(site, &ctx, tls, info, h2, limits).await
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// How long a connection of a replaced instance may idle before it closes: long enough for a
/// request already on its way to arrive and be answered.
const REPLACED_IDLE: Duration = Duration::from_secs(1);

/// How long a connection that moved no byte for the keep-alive timeout may still take to
/// finish after being asked to close: an idle one closes at once, a stuck one is dropped.
const STALL_GRACE: Duration = Duration::from_secs(1);

/// A stream that notes when it last moved a byte, for the keep-alive timeout.
struct Watched<S> {
    inner: S,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last: Arc<AtomicU64>,
    /// With an access log, on HTTP/1: the start of the request being read.
    start: Option<Arc<RequestStart>>,
}

/// The first bytes of an HTTP/1 connection. A request hyper refuses while parsing (it answers
/// 400, 414 or 431 itself) never reaches the service, and hyper gives back none of its bytes;
/// these let it be access-logged with its request line, as nginx logs such requests.
///
/// Only the connection's first request is known this way. Where a later one starts cannot be
/// told from outside hyper (its buffer may hold part of it when a response is written, so the
/// bytes of a read need not start a request): a client could make any text of its own appear
/// as a refused request line. A later refused request is logged as `-`.
#[derive(Debug, Default)]
struct RequestStart {
    bytes: std::sync::Mutex<Vec<u8>>,
    /// `bytes` hold a whole line (or all that is kept): later reads leave them alone.
    complete: AtomicBool,
    /// A request was handed to the service: a refused one is not the first.
    parsed: AtomicBool,
}

/// How much of a refused request's first line is kept for the log.
const REQUEST_LINE_KEPT: usize = 2048;

impl RequestStart {
    fn read(&self, new: &[u8]) {
        if self.complete.load(Ordering::Relaxed) {
            return;
        }
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let room = REQUEST_LINE_KEPT - bytes.len();
        bytes.extend_from_slice(&new[..new.len().min(room)]);
        let complete = bytes.len() == REQUEST_LINE_KEPT || bytes.contains(&b'\n');
        self.complete.store(complete, Ordering::Relaxed);
    }

    fn parsed(&self) {
        self.parsed.store(true, Ordering::Relaxed);
    }

    /// The refused request's line, without its line end; `-` when it is not known. `None` when
    /// nothing at all was read (a connection closed or timed out idle is not a request).
    fn line(&self) -> Option<Vec<u8>> {
        let bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.is_empty() {
            return None;
        }
        if self.parsed.load(Ordering::Relaxed) {
            return Some(b"-".to_vec());
        }
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let line = &bytes[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
    }
}

/// The status to log for a request hyper ended the connection on before the service saw it,
/// and whether hyper answered it: what it answers a request it cannot parse with (see its
/// `on_error`); for a head that never came whole, what nginx logs without answering (400 when
/// the client left in the middle of it, 408 when it took too long). `None` for other errors.
fn refused_status(e: &hyper::Error) -> Option<(u16, bool)> {
    if e.is_parse_version_h2() {
        None
    } else if e.is_parse_too_large() {
        // hyper tells the two apart only in its message.
        let status = if e.to_string().contains("URI too long") {
            414
        } else {
            431
        };
        Some((status, true))
    } else if e.is_parse() {
        Some((400, true))
    } else if e.is_incomplete_message() {
        Some((400, false))
    } else if e.is_timeout() {
        Some((408, false))
    } else {
        None
    }
}

impl<S> Watched<S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
            if let Some(start) = &this.start {
                start.read(&buf.filled()[before..]);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one connection until the client leaves, the connection idles past the keep-alive
/// timeout, or the service stops. On stop (and idle), hyper finishes the request in flight and
/// closes the connection instead of waiting for another.
async fn serve_http<S>(
    site: Arc<ArcSwap<Site>>,
    ctx: &ServiceContext,
    stream: S,
    info: ConnInfo,
    h2: bool,
    limits: Limits,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let last = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let start = (!h2 && site.load().access_log.is_some()).then(Arc::<RequestStart>::default);
    let io = TokioIo::new(Watched {
        inner: stream,
        epoch,
        last: last.clone(),
        start: start.clone(),
    });
    let peer = info.peer;
    let log_site = site.clone();
    let parsed = start.clone();
    let service = service_fn(move |req| {
        if let Some(start) = &parsed {
            start.parsed();
        }
        let site = site.load_full();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(site, info, req).await) }
    });
    // The same loop for either protocol; only the connection type differs.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            // Replaced by a restart, a connection serves on until it idles a moment (a
            // request already sent is answered), then closes; asked to close, it finishes the
            // request in flight.
            let (mut replaced, mut closing) = (false, false);
            let result = loop {
                let limit = if replaced && !closing {
                    REPLACED_IDLE.min(limits.keepalive_timeout)
                } else {
                    limits.keepalive_timeout
                };
                let idle_until =
                    epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + limit;
                tokio::select! {
                    result = conn.as_mut() => break result,
                    () = ctx.stopping(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = ctx.replaced(), if !replaced => replaced = true,
                    () = tokio::time::sleep_until(idle_until) => {
                        let moved = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
                        if moved + limit > Instant::now() {
                            continue;
                        }
                        conn.as_mut().graceful_shutdown();
                        if replaced && !closing {
                            closing = true;
                            continue;
                        }
                        // Idle between requests, it closes at once. Stuck in a response
                        // (a client that stopped reading), graceful_shutdown would wait
                        // for ever: it gets a moment to finish, then goes, as nginx's
                        // send_timeout ends such a connection.
                        match tokio::time::timeout(STALL_GRACE, conn.as_mut()).await {
                            Ok(result) => break result,
                            Err(_) => {
                                tracing::info!(
                                    peer = %peer,
                                    "no byte moved for {:?}; connection closed",
                                    limits.keepalive_timeout
                                );
                                break Ok(());
                            }
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, "connection ended: {e}");
                if let (Some((status, answered)), Some(start)) = (refused_status(&e), &start) {
                    // A head cut off or timed out after the first request may be a body's
                    // end as well: only the first one is known to be a request's.
                    match start.line() {
                        Some(line) if answered || line != b"-" => {
                            log_refused(&log_site.load(), peer, line, status)
                        }
                        _ => {}
                    }
                }
            }
        }};
    }
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_head_size as u32);
        drive!(builder.serve_connection(io, service));
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // The head alone: hyper's read/write buffer limit stays at its default, so large
            // bodies are still queued several chunks at a time.
            .max_header_size(limits.max_head_size)
            .keep_alive(true);
        drive!(builder.serve_connection(io, service));
    }
}

/// Access-logs a request hyper refused while parsing and answered with `status` (no body).
fn log_refused(site: &Site, peer: Peer, request: Vec<u8>, status: u16) {
    if let Some(log) = &site.access_log {
        let entry = Entry {
            remote_addr: remote_addr(peer),
            request,
            referer: None,
            user_agent: None,
        };
        log.write(&entry.line(status, 0, SystemTime::now()));
    }
}

/// `$remote_addr`: the client's address, `unix:` on a Unix socket (as nginx writes it).
fn remote_addr(peer: Peer) -> String {
    peer.ip()
        .map_or_else(|| "unix:".to_string(), |ip| ip.to_string())
}

/// A short HTML error page; it never names a file system path.
pub fn error_response(status: StatusCode) -> Response<Body> {
    let text = format!(
        "<!DOCTYPE html>\n<html><head><title>{0}</title></head><body><h1>{0}</h1></body></html>\n",
        status
    );
    let mut response = html_response(text);
    *response.status_mut() = status;
    response
}

/// What hyper lets through and RFC 9112 refuses: an HTTP/1.1 request without exactly one
/// Host, or with one that is no host (§3.2: 400); a transfer coding other than one `chunked`
/// (§6.1: 501 for a coding this server does not decode, 400 for chunked given twice).
fn malformed(req: &Request<Incoming>) -> Option<StatusCode> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(HOST).iter().collect();
    match hosts.as_slice() {
        [] if req.version() == Version::HTTP_11 => return Some(StatusCode::BAD_REQUEST),
        [] => {}
        [host] => {
            // uri-host [":" port], without userinfo: what an authority is, less the `@`.
            let valid = host.to_str().ok().is_some_and(|h| {
                !h.contains('@') && (h.is_empty() || h.parse::<Authority>().is_ok())
            });
            if !valid {
                return Some(StatusCode::BAD_REQUEST);
            }
        }
        _ => return Some(StatusCode::BAD_REQUEST),
    }
    let codings: Vec<String> = req
        .headers()
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    match codings
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["chunked"] => None,
        all if all.iter().all(|c| *c == "chunked") => Some(StatusCode::BAD_REQUEST),
        _ => Some(StatusCode::NOT_IMPLEMENTED),
    }
}

/// The frame around routing: what every response gets, and what is recorded about it.
async fn handle(site: Arc<Site>, info: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let entry = site.access_log.as_ref().map(|_| Entry {
        remote_addr: remote_addr(info.peer),
        request: format!(
            "{} {} {:?}",
            req.method(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string()),
            req.version()
        )
        .into_bytes(),
        referer: req.headers().get(REFERER).map(|v| v.as_bytes().to_vec()),
        user_agent: req.headers().get(USER_AGENT).map(|v| v.as_bytes().to_vec()),
    });
    let weblog_hit = site
        .weblog_path
        .as_ref()
        .and_then(|_| header_string(&req, REFERER))
        .map(|referer| (referer, req.uri().path().to_string()));

    let too_large = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > site.max_body);
    let mut response = if let Some(status) = malformed(&req) {
        closing(status)
    } else if too_large {
        closing(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        site.route(req, &info).await
    };

    let bad_request = response.status() == StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    // After a request this server could not make sense of, nothing more on the connection
    // is taken as a request (the bytes of a CONNECT tunnel, say), as nginx closes after 400.
    if bad_request {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    headers.insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    for (name, value) in &site.add_headers {
        headers.insert(name.clone(), value.clone());
    }
    if head {
        // Headers as for GET, no body: hyper keeps the Content-Length we set.
        *response.body_mut() = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed();
    }
    let status = response.status();
    if let Some((referer, resource)) = weblog_hit {
        if status == StatusCode::OK {
            site.weblog.record(&referer, &resource);
        }
    }
    if let (Some(entry), Some(log)) = (entry, site.access_log.clone()) {
        let (parts, body) = response.into_parts();
        let logged = Logged {
            inner: body,
            sent: 0,
            line: Some((entry, status.as_u16(), log)),
        };
        response = Response::from_parts(parts, logged.boxed());
    }
    response
}

fn header_string(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A response body that counts what it sent and writes the access log line when it is done
/// (or dropped: a client that left is logged with what it got, as nginx does).
struct Logged {
    inner: Body,
    sent: u64,
    line: Option<(Entry, u16, Arc<crate::access_log::AccessLog>)>,
}

impl Logged {
    fn finish(&mut self) {
        if let Some((entry, status, log)) = self.line.take() {
            log.write(&entry.line(status, self.sent, SystemTime::now()));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
