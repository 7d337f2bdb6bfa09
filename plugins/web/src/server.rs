//! The web service: one hyper HTTP/1.1 connection per accepted stream, and the dispatch of a
//! request to a file, an index, a redirect or a listing.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use host::net::{Peer, Stream};
use host::service::{serve, ServiceContext};
use host::{BoundListener, Service};

use crate::resolve::{contain, Refusal, UrlPath};
use crate::{files, listing, WebConfig};

/// Every response body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

const SERVER_NAME: &str = concat!("taphost/", env!("CARGO_PKG_VERSION"));

/// What every connection of one service shares.
#[derive(Debug)]
struct Site {
    /// Canonical, so that containment checks compare canonical paths.
    root: PathBuf,
    index: Vec<String>,
    default_type: HeaderValue,
}

/// The running web service.
#[derive(Debug)]
pub struct WebService {
    site: Arc<Site>,
}

impl WebService {
    pub fn new(config: &WebConfig) -> Result<Self, String> {
        let root = config
            .path
            .canonicalize()
            .map_err(|e| format!("--path {}: {e}", config.path.display()))?;
        let default_type = HeaderValue::from_str(&config.mime_type)
            .map_err(|_| format!("--mime-type '{}': not a header value", config.mime_type))?;
        Ok(WebService {
            site: Arc::new(Site {
                root,
                index: config.index.clone(),
                default_type,
            }),
        })
    }
}

impl Service for WebService {
    fn start(&self, ctx: &ServiceContext, listeners: Vec<BoundListener>) -> Result<(), String> {
        for bound in listeners {
            let listener = bound.listener.into_async().map_err(|e| e.to_string())?;
            let site = self.site.clone();
            let conn_ctx = ctx.clone();
            serve(ctx, listener, move |stream, peer| {
                connection(site.clone(), conn_ctx.clone(), stream, peer)
            });
        }
        Ok(())
    }
}

/// Serves one connection until the client leaves or the service stops. On stop, hyper finishes
/// the request in flight and closes the connection instead of waiting for another.
async fn connection(site: Arc<Site>, ctx: ServiceContext, stream: Stream, peer: Peer) {
    let service = service_fn(move |req| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(site.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = ctx.stopping() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
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

fn html_response(text: String) -> Response<Body> {
    let len = text.len();
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

impl Site {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let mut response = self.route(&req).await;
        response
            .headers_mut()
            .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
        if req.method() == Method::HEAD {
            // Headers as for GET, no body: hyper keeps the Content-Length we set.
            *response.body_mut() = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed();
        }
        response
    }

    async fn route(&self, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        let url = match UrlPath::parse(req.uri().path()) {
            Ok(url) => url,
            Err(refusal) => return refusal_response(refusal),
        };
        let path = match contain(&self.root, &url.under(&self.root)) {
            Ok(path) => path,
            Err(refusal) => return refusal_response(refusal),
        };
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => return files::io_error_response(&e),
        };
        if meta.is_dir() {
            if !url.trailing_slash {
                return redirect_to_slash(req);
            }
            return self.directory(&path, &url, head).await;
        }
        if !meta.is_file() {
            return error_response(StatusCode::NOT_FOUND);
        }
        files::respond(&path, &meta, &self.default_type, head).await
    }

    async fn directory(&self, dir: &Path, url: &UrlPath, head: bool) -> Response<Body> {
        for name in &self.index {
            let candidate = dir.join(name);
            // The index may itself be a symlink: it must stay under the root too.
            if let Ok(real) = contain(&self.root, &candidate) {
                if let Ok(meta) = std::fs::metadata(&real) {
                    if meta.is_file() {
                        return files::respond(&real, &meta, &self.default_type, head).await;
                    }
                }
            }
        }
        match listing::render(dir, url) {
            Ok(html) => html_response(html),
            Err(e) => files::io_error_response(&e),
        }
    }
}

fn refusal_response(refusal: Refusal) -> Response<Body> {
    error_response(match refusal {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
    })
}

/// 301 to the same path with a slash, keeping the query, as nginx does for directories.
fn redirect_to_slash(req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let uri = req.uri();
    let location = match uri.query() {
        Some(query) => format!("{}/?{query}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut response = error_response(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
            response
        }
        Err(_) => error_response(StatusCode::BAD_REQUEST),
    }
}
