//! Resource libraries: dynamic web pages, the successor of Twisted's `.rpy` resources. The web
//! plugin mounts one with `--resource /path=NAME`, opens an instance with the state it saved
//! last time, and hands it each request under the path. The host knows no web server: this
//! module only carries requests and responses across the ABI.

use std::sync::Mutex;

use serde_json::{json, Value};
pub use taphost_sdk::{Request, Response};

use super::library::{Instance, Library};

/// A resource library found in a plugin directory.
#[derive(Debug)]
pub struct Resource {
    library: &'static Library,
}

impl Resource {
    pub fn new(library: &'static Library) -> Self {
        Resource { library }
    }

    pub fn name(&self) -> &str {
        &self.library.descriptor().name
    }

    pub fn library(&self) -> &'static Library {
        self.library
    }

    /// Opens an instance with the state an earlier one reported. Logs go to `span`.
    pub fn open(
        &self,
        state: Option<Value>,
        span: tracing::Span,
    ) -> Result<ResourceInstance, String> {
        let input = json!({ "config": {}, "state": state, "listen": [] });
        let instance = self
            .library
            .start(&input, Vec::new(), span)
            .map_err(|e| format!("resource {}: {e}", self.name()))?;
        Ok(ResourceInstance {
            name: self.name().to_string(),
            instance: Mutex::new(instance),
        })
    }
}

/// An open resource. Calls are serialised (the ABI promises a plugin no concurrent `handle`).
#[derive(Debug)]
pub struct ResourceInstance {
    name: String,
    instance: Mutex<Instance>,
}

impl ResourceInstance {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers one request. Blocks on the plugin: call it off the runtime's worker threads.
    pub fn handle(&self, request: &Request) -> Result<Response, String> {
        let head = serde_json::to_vec(request).map_err(|e| format!("cannot encode: {e}"))?;
        let instance = self
            .instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (head, body) = instance.handle(&head, &request.body)?;
        let mut response: Response = serde_json::from_slice(&head)
            .map_err(|e| format!("its response head does not parse: {e}"))?;
        response.body = body;
        Ok(response)
    }

    /// What the resource wants kept across restarts; an error is logged and gives none.
    pub fn state(&self) -> Option<Value> {
        let instance = self
            .instance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        instance.state().unwrap_or_else(|e| {
            tracing::warn!("resource {}: cannot report its state: {e}", self.name);
            None
        })
    }
}
