//! `guestbook`: a web resource written with the SDK, and the SDK's example of one. Mounted with
//! `web --resource /guestbook=guestbook`: a POST adds its body as an entry, a GET lists the
//! entries; the entries are its state, so the shutdown tap keeps them.

use std::sync::Mutex;

use taphost_sdk::{export_resource, Host, Request, ResourcePlugin, Response, Value};

/// The most entries kept; older ones are dropped first.
const KEEP: usize = 100;

struct Guestbook {
    entries: Mutex<Vec<String>>,
    host: Host,
}

impl ResourcePlugin for Guestbook {
    const NAME: &'static str = "guestbook";
    const DESCRIPTION: &'static str = "A guestbook page (Rust, built with the SDK)";

    fn open(state: Option<Value>, host: Host) -> Result<Self, String> {
        let entries: Vec<String> = state
            .as_ref()
            .and_then(|s| s.get("entries"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        host.info(&format!("guestbook opened with {} entries", entries.len()));
        Ok(Guestbook {
            entries: Mutex::new(entries),
            host,
        })
    }

    fn handle(&self, request: Request) -> Response {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match request.method.as_str() {
            "POST" => {
                let text = String::from_utf8_lossy(&request.body).trim().to_string();
                if text.is_empty() {
                    return Response::ok("text/plain", "empty entry\n").status(400);
                }
                if entries.len() >= KEEP {
                    entries.remove(0);
                }
                self.host.debug(&format!("entry {}", entries.len() + 1));
                entries.push(text);
                Response::ok("text/plain", format!("entry {}\n", entries.len())).status(201)
            }
            "GET" | "HEAD" => {
                let agent = request
                    .headers
                    .iter()
                    .find(|(name, _)| name == "user-agent")
                    .map_or("", |(_, value)| value.as_str());
                let mut page = format!("guestbook at {} for {agent}\n", request.prefix);
                for (i, entry) in entries.iter().enumerate() {
                    page.push_str(&format!("{}. {entry}\n", i + 1));
                }
                Response::ok("text/plain; charset=utf-8", page)
            }
            _ => Response::ok("text/plain", "use GET or POST\n").status(405),
        }
    }

    fn state(&self) -> Option<Value> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Some(serde_json::json!({ "entries": *entries }))
    }
}

export_resource!(Guestbook);
