//! `--resource /PREFIX=NAME`: dynamic pages served by resource libraries, the successor of
//! Twisted's `.rpy` resources. Each mount opens one instance of the library (through
//! `host::external`) with the state it reported at the last shutdown; the web service's state
//! keeps every mount's state under `"resources"`, keyed by its prefix.
//!
//! A request's body is read whole (within `--max-body-size`), then the plugin is called on
//! tokio's blocking pool: its code may block, and it must not stall a runtime worker.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value};

use host::external::{self, Request, ResourceInstance};

use crate::options;
use crate::server::{error_response, Body};
use crate::site::closing;

/// One mounted resource.
#[derive(Debug)]
pub struct Mount {
    pub segments: Vec<Vec<u8>>,
    /// As the option gave it (`/counter`): the key of its state.
    pub prefix: String,
    pub instance: Arc<ResourceInstance>,
}

/// Opens every `--resource`, longest prefix first, each with its saved state.
pub fn open(values: &[String], state: Option<&Value>) -> Result<Vec<Mount>, String> {
    let saved = state
        .and_then(|s| s.get("resources"))
        .and_then(Value::as_object);
    let mut mounts = Vec::new();
    for value in values {
        let (segments, name) = options::resource(value)?;
        let prefix = format!(
            "/{}",
            segments
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect::<Vec<_>>()
                .join("/")
        );
        let library = external::resource(&name).ok_or_else(|| {
            format!(
                "--resource '{value}': no resource plugin named '{name}' in the plugin directories"
            )
        })?;
        let span = tracing::info_span!("resource", name = %name, prefix = %prefix);
        let instance = library.open(saved.and_then(|s| s.get(&prefix)).cloned(), span)?;
        mounts.push(Mount {
            segments,
            prefix,
            instance: Arc::new(instance),
        });
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.segments.len()));
    Ok(mounts)
}

/// Every mount's state, for the web service's state; None when no mount has any.
pub fn state(mounts: &[Mount]) -> Option<Value> {
    let states: Map<String, Value> = mounts
        .iter()
        .filter_map(|m| m.instance.state().map(|s| (m.prefix.clone(), s)))
        .collect();
    (!states.is_empty()).then_some(Value::Object(states))
}

/// Answers a request under a mount.
pub async fn serve(mount: &Mount, parts: &Parts, body: Incoming, max_body: u64) -> Response<Body> {
    let body = match read_body(body, max_body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        prefix: mount.prefix.clone(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let instance = mount.instance.clone();
    let answered = tokio::task::spawn_blocking(move || instance.handle(&request)).await;
    let answer = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::warn!("resource {}: {e}", mount.instance.name());
            return error_response(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Err(e) => {
            tracing::warn!("resource {}: {e}", mount.instance.name());
            return error_response(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let Ok(status) = StatusCode::from_u16(answer.status) else {
        tracing::warn!(
            "resource {}: status {} is not valid",
            mount.instance.name(),
            answer.status
        );
        return error_response(StatusCode::BAD_GATEWAY);
    };
    let len = answer.body.len();
    let mut response = Response::new(
        Full::new(Bytes::from(answer.body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            // The host frames the body itself.
            (Ok(name), Ok(_)) if name == CONTENT_LENGTH => {}
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(
                "resource {}: header '{name}' is not valid; dropped",
                mount.instance.name()
            ),
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// The whole body, or the response refusing it.
async fn read_body(mut body: Incoming, max: u64) -> Result<Vec<u8>, Response<Body>> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    if (out.len() + data.len()) as u64 > max {
                        return Err(closing(StatusCode::PAYLOAD_TOO_LARGE));
                    }
                    out.extend_from_slice(data);
                }
            }
            Err(_) => return Err(closing(StatusCode::BAD_REQUEST)),
        }
    }
    Ok(out)
}
