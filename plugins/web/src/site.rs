//! What a request is routed with, and routing.
//!
//! The order: a `--resource` mount, the weblog page, a CGI prefix, `/~user/`, a mount, then
//! the virtual host's root (or the default root). Dotfiles are refused before any of them (except `/.well-known/`),
//! so no route can serve `.git` or `.htpasswd` unless `--serve-dotfiles`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};

use crate::access_log::AccessLog;
use crate::cache::{FileCache, Lookup};
use crate::cgi::{self, CgiOptions};
use crate::files::{self, FileOptions};
use crate::resolve::{open_beneath, open_checked, Opened, Refusal, RootDir, UrlPath};
use crate::server::{error_response, Body, ConnInfo};
use crate::weblog::Weblog;
use crate::{listing, options, WebConfig};

/// How many local redirects (`Location: /path` from a CGI script) one request may follow.
const MAX_LOCAL_REDIRECTS: usize = 5;

/// Everything a request is routed with; built once, shared by every connection.
#[derive(Debug)]
pub struct Site {
    /// Canonical, so that containment checks compare canonical paths.
    pub root: PathBuf,
    /// Canonical roots by lowercase host name.
    pub vhosts: HashMap<String, PathBuf>,
    /// (URL prefix segments, canonical directory), longest prefix first.
    pub mounts: Vec<(Vec<Vec<u8>>, PathBuf)>,
    pub cgi_dirs: Vec<(Vec<Vec<u8>>, PathBuf)>,
    pub cgi: CgiOptions,
    pub user_dirs: bool,
    pub index: Vec<String>,
    /// `--ignore-ext`, each with its dot.
    pub ignore_ext: Vec<String>,
    pub serve_dotfiles: bool,
    pub files: FileOptions,
    pub add_headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    pub weblog_path: Option<String>,
    pub weblog: Weblog,
    /// `--resource` mounts, longest prefix first.
    pub resources: Vec<crate::resource::Mount>,
    pub access_log: Option<Arc<AccessLog>>,
    pub max_body: u64,
    /// The root, vhost roots and mounts, held open: requests resolve beneath them with one
    /// openat2 each. (User directories are looked up per request and use the realpath check.)
    /// Keyed by the path's bytes: hashing a `Path` walks its components, which showed in
    /// callgrind profiles of small requests.
    pub root_dirs: HashMap<OsString, RootDir>,
    /// Small files under the held roots (see [`crate::cache`]).
    pub cache: FileCache,
}

fn canonical(option: &str, dir: &Path) -> Result<PathBuf, String> {
    dir.canonicalize()
        .map_err(|e| format!("{option} {}: {e}", dir.display()))
}

impl Site {
    /// `access_log`, when given, is the open log to keep (a live reconfigure keeps the file the
    /// service opened at start); otherwise `--logfile` is opened.
    pub fn new(
        config: &WebConfig,
        state: Option<&serde_json::Value>,
        access_log: Option<Arc<AccessLog>>,
    ) -> Result<Site, String> {
        let root = canonical("--path", &config.path)?;
        let default_type = HeaderValue::from_str(&config.mime_type)
            .map_err(|_| format!("--mime-type '{}': not a header value", config.mime_type))?;
        let prefixed = |option: &str, values: &[String]| -> Result<Vec<_>, String> {
            let mut out = Vec::new();
            for v in values {
                let (prefix, dir) = options::prefix_dir(option, v)?;
                out.push((prefix, canonical(option, &dir)?));
            }
            out.sort_by_key(|(prefix, _): &(Vec<Vec<u8>>, PathBuf)| {
                std::cmp::Reverse(prefix.len())
            });
            Ok(out)
        };
        let mut vhosts = HashMap::new();
        for v in &config.vhost {
            let (name, dir) = options::vhost(v)?;
            vhosts.insert(name, canonical("--vhost", &dir)?);
        }
        let access_log = match (&config.logfile, access_log) {
            (Some(_), Some(open)) => Some(open),
            (Some(path), None) => Some(Arc::new(
                AccessLog::open(path).map_err(|e| format!("--logfile {}: {e}", path.display()))?,
            )),
            (None, _) => None,
        };
        let mounts = prefixed("--mount", &config.mount)?;
        let mut root_dirs = HashMap::new();
        for dir in std::iter::once(&root)
            .chain(vhosts.values())
            .chain(mounts.iter().map(|(_, dir)| dir))
        {
            let held = RootDir::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            root_dirs.insert(dir.clone().into_os_string(), held);
        }
        Ok(Site {
            root,
            vhosts,
            mounts,
            root_dirs,
            cgi_dirs: prefixed("--cgi", &config.cgi)?,
            cgi: CgiOptions {
                processors: config
                    .processor
                    .iter()
                    .map(|v| options::processor(v))
                    .collect::<Result<_, _>>()?,
                timeout: std::time::Duration::from_secs(config.cgi_timeout),
                max_body: config.max_body_size,
            },
            user_dirs: config.user,
            index: config.index.clone(),
            ignore_ext: config
                .ignore_ext
                .iter()
                .map(|e| format!(".{}", e.trim_start_matches('.')))
                .collect(),
            serve_dotfiles: config.serve_dotfiles,
            files: FileOptions {
                default_type,
                mime: config
                    .mime
                    .iter()
                    .map(|v| options::mime(v))
                    .collect::<Result<_, _>>()?,
                compress: !config.no_compress,
            },
            add_headers: config
                .add_header
                .iter()
                .map(|v| options::header(v))
                .collect::<Result<_, _>>()?,
            weblog_path: config.weblog.clone(),
            weblog: Weblog::from_state(state),
            resources: crate::resource::open(&config.resource, state)?,
            access_log,
            max_body: config.max_body_size,
            cache: FileCache::default(),
        })
    }

    /// The root for the request's host: Host compared without its port, case-insensitively.
    fn host_root(&self, parts: &Parts) -> &Path {
        if self.vhosts.is_empty() {
            return &self.root;
        }
        let host = parts
            .uri
            .host()
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .map(|h| options::host_name(strip_port(h)));
        host.and_then(|h| self.vhosts.get(&h))
            .map_or(&self.root, |p| p.as_path())
    }

    /// Routes a request to its response.
    pub async fn route(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let url = match UrlPath::parse(parts.uri.path()) {
            Ok(url) => url,
            Err(refusal) => return refusal_response(refusal),
        };
        if !self.serve_dotfiles && has_dotfile(&url) {
            return error_response(StatusCode::NOT_FOUND);
        }
        if let Some(mount) = self
            .resources
            .iter()
            .find(|m| url.segments.starts_with(&m.segments))
        {
            return crate::resource::serve(mount, &parts, body, self.max_body).await;
        }
        for (prefix, dir) in &self.cgi_dirs {
            if url.segments.starts_with(prefix) {
                let root = self.host_root(&parts).to_path_buf();
                let outcome = cgi::run(
                    cgi::Request {
                        parts: &parts,
                        body,
                        dir,
                        prefix,
                        rest: &url.segments[prefix.len()..],
                        conn,
                        document_root: &root,
                    },
                    &self.cgi,
                )
                .await;
                return match outcome {
                    cgi::Outcome::Response(r) => r,
                    cgi::Outcome::LocalRedirect(location) => {
                        Box::pin(self.local_redirect(location, &parts, conn, 1)).await
                    }
                };
            }
        }
        // Not a script: a body is read and discarded (within the limit), as nginx does, so
        // the connection stays in step and a malformed one is seen.
        if let Some(refused) = drain(body, self.max_body).await {
            return refused;
        }
        self.static_route(&parts, &url, conn).await
    }

    /// Answers a CGI local redirect: the resource at `location`, as a GET.
    async fn local_redirect(
        &self,
        location: String,
        parts: &Parts,
        conn: &ConnInfo,
        depth: usize,
    ) -> Response<Body> {
        if depth > MAX_LOCAL_REDIRECTS {
            return error_response(StatusCode::LOOP_DETECTED);
        }
        let Ok(uri) = location.parse::<Uri>() else {
            return error_response(StatusCode::BAD_GATEWAY);
        };
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .version(parts.version);
        for (name, value) in &parts.headers {
            if name != CONTENT_LENGTH && name != CONTENT_TYPE {
                req = req.header(name, value);
            }
        }
        let Ok(req) = req.body(()) else {
            return error_response(StatusCode::BAD_GATEWAY);
        };
        let (parts, ()) = req.into_parts();
        let url = match UrlPath::parse(parts.uri.path()) {
            Ok(url) => url,
            Err(refusal) => return refusal_response(refusal),
        };
        if !self.serve_dotfiles && has_dotfile(&url) {
            return error_response(StatusCode::NOT_FOUND);
        }
        // A local redirect never runs another script with this request's body; it names a
        // document.
        self.static_route(&parts, &url, conn).await
    }

    async fn static_route(&self, parts: &Parts, url: &UrlPath, conn: &ConnInfo) -> Response<Body> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if let Some(weblog) = &self.weblog_path {
            if parts.uri.path() == weblog {
                return html_response(self.weblog.page());
            }
        }
        // (root, segments below it)
        let user_root;
        let (root, rest): (&Path, Cow<'_, UrlPath>) = match self.user_root(url) {
            Some(Ok(found)) => {
                user_root = found.0;
                (&user_root, Cow::Owned(found.1))
            }
            Some(Err(response)) => return response,
            None => match self
                .mounts
                .iter()
                .find(|(prefix, _)| url.segments.starts_with(prefix))
            {
                Some((prefix, dir)) => (
                    dir.as_path(),
                    Cow::Owned(UrlPath {
                        segments: url.segments[prefix.len()..].to_vec(),
                        trailing_slash: url.trailing_slash,
                    }),
                ),
                None => (self.host_root(parts), Cow::Borrowed(url)),
            },
        };
        // A small file: from the cache when one stat shows it unchanged and, if the client
        // accepts a coding, one more per accepted coding shows no precompressed sibling.
        let held = self.root_dirs.get(root.as_os_str());
        // `/file.txt/` names a directory: a file there is 404, as the OS (and nginx) say.
        let wants_dir = url.trailing_slash && !url.segments.is_empty();
        let cacheable = held.filter(|_| !wants_dir && files::cacheable_request(&parts.headers));
        let candidate = rest.under(root);
        // Whether the cache has no current entry (so one may be made below).
        let mut missed = true;
        if let Some(held) = cacheable {
            let usable = || files::no_sibling(held, &candidate, &parts.headers);
            match self.cache.get(held, &candidate, usable) {
                // (Filled for a client without gzip: this one refills it below.)
                Lookup::Hit(cached) if cached.gzip_missing && files::wants_gzip(&parts.headers) => {
                }
                Lookup::Hit(cached) => {
                    return files::respond_cached(&cached, &parts.method, &parts.headers)
                }
                Lookup::Miss => {}
                Lookup::Unusable => missed = false,
            }
        }
        let opened = match self.find(root, &candidate, &rest) {
            Ok(found) => found,
            Err(status) => return error_response(status),
        };
        if opened.meta.is_dir() {
            if !url.trailing_slash {
                return redirect_to_slash(&parts.uri);
            }
            return self.directory(root, opened, url, parts, conn).await;
        }
        if !opened.meta.is_file() || wants_dir {
            return error_response(StatusCode::NOT_FOUND);
        }
        if let Some(held) = cacheable.filter(|_| missed && opened.path == candidate) {
            if let Some(cached) = self.cache.fill(
                held,
                &opened,
                &self.files,
                files::wants_gzip(&parts.headers),
            ) {
                if files::no_sibling(held, &candidate, &parts.headers) {
                    return files::respond_cached(&cached, &parts.method, &parts.headers);
                }
            }
        }
        files::respond(
            root,
            opened,
            &parts.method,
            &parts.headers,
            &self.files,
            conn.zero_copy.as_ref(),
        )
        .await
    }

    /// `/~name/...` with `--user`: that user's canonical `public_html` and the rest of the path.
    fn user_root(&self, url: &UrlPath) -> Option<Result<(PathBuf, UrlPath), Response<Body>>> {
        if !self.user_dirs {
            return None;
        }
        let first = url.segments.first()?;
        let name = first.strip_prefix(b"~")?;
        let not_found = || Some(Err(error_response(StatusCode::NOT_FOUND)));
        let Ok(name) = std::str::from_utf8(name) else {
            return not_found();
        };
        if name.is_empty() {
            return not_found();
        }
        let user = match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => user,
            _ => return not_found(),
        };
        let Ok(dir) = user.dir.join("public_html").canonicalize() else {
            return not_found();
        };
        Some(Ok((
            dir,
            UrlPath {
                segments: url.segments[1..].to_vec(),
                trailing_slash: url.trailing_slash,
            },
        )))
    }

    /// Opens what `path` names under `root`, beneath its held descriptor when it has one.
    fn open(&self, root: &Path, path: &Path) -> Result<Opened, Refusal> {
        match self.root_dirs.get(root.as_os_str()) {
            Some(held) => open_beneath(held, path),
            None => open_checked(root, path),
        }
    }

    /// The file or directory `rest` names under `root`, opened, trying `--ignore-ext`
    /// extensions for a name that does not exist.
    /// `candidate` is `rest.under(root)`.
    fn find(&self, root: &Path, candidate: &Path, rest: &UrlPath) -> Result<Opened, StatusCode> {
        let refusal = match self.open(root, candidate) {
            Ok(opened) => return Ok(opened),
            Err(refusal) => refusal,
        };
        if refusal == Refusal::NotFound && !rest.trailing_slash && !rest.segments.is_empty() {
            for ext in &self.ignore_ext {
                let mut name = candidate.as_os_str().to_owned();
                name.push(ext);
                if let Ok(opened) = self.open(root, Path::new(&name)) {
                    if opened.meta.is_file() {
                        return Ok(opened);
                    }
                }
            }
        }
        Err(refusal_status(refusal))
    }

    async fn directory(
        &self,
        root: &Path,
        dir: Opened,
        url: &UrlPath,
        parts: &Parts,
        conn: &ConnInfo,
    ) -> Response<Body> {
        for name in &self.index {
            // The index may itself be a symlink: it must stay under the root too.
            if let Ok(opened) = self.open(root, &dir.path.join(name)) {
                if opened.meta.is_file() {
                    return files::respond(
                        root,
                        opened,
                        &parts.method,
                        &parts.headers,
                        &self.files,
                        conn.zero_copy.as_ref(),
                    )
                    .await;
                }
            }
        }
        // Listed from the descriptor that was checked, not by its path again.
        match listing::render(dir.file, &dir.path, root, url) {
            Ok(html) => html_response(html),
            Err(e) => files::io_error_response(&e),
        }
    }
}

/// Whether a path names a dotfile or goes through a dot-directory (`/.well-known/` excepted).
fn has_dotfile(url: &UrlPath) -> bool {
    url.segments
        .iter()
        .enumerate()
        .any(|(i, s)| s.starts_with(b".") && !(i == 0 && s == b".well-known"))
}

/// `host:port` or `[v6]:port` without the port.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// Reads and discards a request body. Too large: 413; malformed (a bad chunk): 400; both
/// close the connection.
pub async fn drain(mut body: Incoming, max: u64) -> Option<Response<Body>> {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return None;
    }
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                    if total > max {
                        return Some(closing(StatusCode::PAYLOAD_TOO_LARGE));
                    }
                }
            }
            Err(_) => return Some(closing(StatusCode::BAD_REQUEST)),
        }
    }
    None
}

/// An error response after which the connection closes.
pub fn closing(status: StatusCode) -> Response<Body> {
    let mut r = error_response(status);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

pub fn html_response(text: impl Into<Bytes>) -> Response<Body> {
    let text = text.into();
    let len = text.len();
    let mut response = Response::new(Full::new(text).map_err(|never| match never {}).boxed());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

fn refusal_status(refusal: Refusal) -> StatusCode {
    match refusal {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
    }
}

fn refusal_response(refusal: Refusal) -> Response<Body> {
    error_response(refusal_status(refusal))
}

/// 301 to the same path with a slash, keeping the query, as nginx does for directories.
fn redirect_to_slash(uri: &Uri) -> Response<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.org:8080"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }

    #[test]
    fn dotfiles() {
        let p = |s| UrlPath::parse(s).expect("parses");
        assert!(has_dotfile(&p("/.git/config")));
        assert!(has_dotfile(&p("/a/.htpasswd")));
        assert!(has_dotfile(&p("/.well-known/.x")));
        assert!(!has_dotfile(&p("/.well-known/acme-challenge/t")));
        assert!(!has_dotfile(&p("/a/b.c")));
    }
}
