//! `--weblog /weblog`: a page of the latest hits that came from another page (status 200 and a
//! Referer), newest first, refreshing itself. The hits are the service's state: saved in the
//! shutdown tap and shown again after a restart.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::listing::escape_html;

/// How many hits the page keeps.
pub const KEEP: usize = 35;

#[derive(Debug, Default)]
pub struct Weblog {
    /// (referrer, resource), oldest first.
    hits: Mutex<VecDeque<(String, String)>>,
}

impl Weblog {
    /// The weblog as saved in `state` (`{"weblog": [{"referrer": .., "resource": ..}]}`);
    /// anything else in the state is ignored rather than refused, so a damaged state never
    /// stops the service from starting.
    pub fn from_state(state: Option<&Value>) -> Weblog {
        let mut hits = VecDeque::new();
        if let Some(list) = state
            .and_then(|s| s.get("weblog"))
            .and_then(Value::as_array)
        {
            for hit in list.iter().rev().take(KEEP).rev() {
                if let (Some(referrer), Some(resource)) = (
                    hit.get("referrer").and_then(Value::as_str),
                    hit.get("resource").and_then(Value::as_str),
                ) {
                    hits.push_back((referrer.to_string(), resource.to_string()));
                }
            }
        }
        Weblog {
            hits: Mutex::new(hits),
        }
    }

    pub fn record(&self, referrer: &str, resource: &str) {
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        if hits.len() >= KEEP {
            hits.pop_front();
        }
        hits.push_back((referrer.to_string(), resource.to_string()));
    }

    pub fn state(&self) -> Value {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<Value> = hits
            .iter()
            .map(|(referrer, resource)| json!({ "referrer": referrer, "resource": resource }))
            .collect();
        json!({ "weblog": list })
    }

    /// The page, newest hit first; it reloads itself every 10 seconds.
    pub fn page(&self) -> String {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let mut html = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"10\"><title>Weblog</title></head><body>\n\
             <h1>Latest referred hits</h1>\n<table>\n<tr><th>Referrer</th><th>Resource</th></tr>\n",
        );
        for (referrer, resource) in hits.iter().rev() {
            // Clients write the Referer: only a web address becomes a link (a `javascript:`
            // one would run in the reader's browser); anything else is shown as text.
            let web = ["http://", "https://"].iter().any(|scheme| {
                referrer
                    .get(..scheme.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            });
            let text = escape_html(referrer);
            let cell = if web {
                format!("<a href=\"{text}\">{text}</a>")
            } else {
                text
            };
            html.push_str(&format!(
                "<tr><td>{cell}</td><td>{}</td></tr>\n",
                escape_html(resource)
            ));
        }
        html.push_str("</table>\n</body></html>\n");
        html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_round_trips() {
        let log = Weblog::default();
        for i in 0..40 {
            log.record(&format!("http://r/{i}"), &format!("/p{i}"));
        }
        let state = log.state();
        assert_eq!(state["weblog"].as_array().expect("list").len(), KEEP);
        let again = Weblog::from_state(Some(&state));
        let page = again.page();
        assert!(page.contains("http://r/39") && !page.contains(">/p4<"));
        assert!(page.find("/p39").expect("newest") < page.find("/p5<").expect("oldest"));
        let log = Weblog::default();
        log.record("javascript:alert(document.cookie)", "/x");
        log.record("HTTPS://ok.test/", "/y");
        let page = log.page();
        assert!(!page.contains("href=\"javascript:"), "{page}");
        assert!(
            page.contains("<td>javascript:alert(document.cookie)</td>"),
            "{page}"
        );
        assert!(page.contains("<a href=\"HTTPS://ok.test/\">"), "{page}");
        assert!(Weblog::from_state(Some(&json!("junk")))
            .page()
            .contains("<table>"));
    }
}
