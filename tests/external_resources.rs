//! `web --resource /PATH=NAME`: dynamic pages served by resource libraries, one in C (`counter`,
//! compiled here with `cc`) and one in Rust (the SDK's `guestbook` example); their state kept in
//! the web service's state across restarts; unknown resources refused.

#[path = "external/support.rs"]
mod support;
mod util;

use support::*;
use util::{curl, stderr, Sandbox};

#[test]
fn a_c_resource_serves_pages_and_keeps_its_state_in_the_tap() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["counter"]);
    sb.write("www/index.html", "static\n");
    let www = sb.join("www");
    mktap_ok(
        &sb,
        &plugins,
        &[
            "web",
            "--path",
            www.to_str().expect("utf-8"),
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--resource",
            "/count=counter",
        ],
    );
    let mut server = twistd(&sb, &plugins, &["-f", "web.tap"]);
    server.logged("counter opened at 0 hits");
    let page = curl(&server.url(0, "/count/page?a=1&b=2"), &["--data", "hello"]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.text(),
        "hits=1 method=POST path=/count/page query=a=1&b=2 body=5\n"
    );
    assert_eq!(page.header("x-plugin"), Some("c"));
    assert_eq!(page.header("content-type"), Some("text/plain"));
    assert_eq!(
        curl(&server.url(0, "/count"), &[]).text().split(' ').next(),
        Some("hits=2")
    );
    // Other paths are still the static site's.
    assert_eq!(curl(&server.url(0, "/index.html"), &[]).text(), "static\n");
    // A failure inside the plugin is a 500 and a log line, never a crash.
    assert_eq!(curl(&server.url(0, "/count/fail"), &[]).status, 500);
    server.logged("asked to fail");
    let (status, _) = server.stop();
    assert!(status.success());
    let saved = json(&sb, "web-shutdown.tap");
    assert_eq!(
        saved["services"][0]["state"],
        serde_json::json!({ "resources": { "/count": { "hits": 2 } } })
    );

    let mut server = twistd(&sb, &plugins, &["-f", "web-shutdown.tap"]);
    server.logged("counter opened at 2 hits");
    assert_eq!(
        curl(&server.url(0, "/count"), &[]).text().split(' ').next(),
        Some("hits=3")
    );
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn an_unknown_resource_is_refused_by_mktap() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    sb.write("www/index.html", "x");
    let www = sb.join("www");
    let out = mktap(
        &sb,
        &plugins,
        &[
            "web",
            "--path",
            www.to_str().expect("utf-8"),
            "--resource",
            "/x=nothing",
        ],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("--resource '/x=nothing': no resource plugin named 'nothing'"),
        "{}",
        stderr(&out)
    );
    // A service plugin is no resource.
    let out = mktap(
        &sb,
        &plugins,
        &[
            "web",
            "--path",
            www.to_str().expect("utf-8"),
            "--resource",
            "/x=portforward",
        ],
    );
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
}

#[test]
fn a_rust_resource_built_with_the_sdk_keeps_its_entries_in_the_tap() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["guestbook", "counter"]);
    sb.write("www/index.html", "static\n");
    let www = sb.join("www");
    mktap_ok(
        &sb,
        &plugins,
        &[
            "web",
            "--path",
            www.to_str().expect("utf-8"),
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--resource",
            "/book=guestbook",
            "--resource",
            "/count=counter",
        ],
    );
    let server = twistd(&sb, &plugins, &["-f", "web.tap"]);
    let posted = curl(&server.url(0, "/book"), &["--data-binary", "first visit"]);
    assert_eq!((posted.status, posted.text().as_str()), (201, "entry 1\n"));
    assert_eq!(
        curl(&server.url(0, "/book"), &["--data-binary", "second"]).status,
        201
    );
    assert_eq!(
        curl(&server.url(0, "/book"), &["--data-binary", ""]).status,
        400
    );
    assert_eq!(curl(&server.url(0, "/count"), &[]).status, 200);
    let page = curl(&server.url(0, "/book/"), &["--user-agent", "tester/1"]);
    assert_eq!(
        page.text(),
        "guestbook at /book for tester/1\n1. first visit\n2. second\n"
    );
    assert_eq!(
        page.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let (status, _) = server.stop();
    assert!(status.success());
    let saved = json(&sb, "web-shutdown.tap");
    assert_eq!(
        saved["services"][0]["state"]["resources"],
        serde_json::json!({
            "/book": { "entries": ["first visit", "second"] },
            "/count": { "hits": 1 },
        })
    );

    let mut server = twistd(&sb, &plugins, &["-f", "web-shutdown.tap"]);
    server.logged("guestbook opened with 2 entries");
    assert!(curl(&server.url(0, "/book"), &[])
        .text()
        .ends_with("2. second\n"));
    let (status, _) = server.stop();
    assert!(status.success());
}
