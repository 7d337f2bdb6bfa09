//! Every example in `configs/` loads, validates, and serves.

mod util;

use std::path::PathBuf;

use host::{tapfile, Endpoint};
use util::{curl, repo, Sandbox, Twistd};

fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join("configs"))
        .expect("configs/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("tap" | "tas")))
        .collect();
    found.sort();
    assert!(
        found.len() >= 2,
        "expected example taps in configs/, found {found:?}"
    );
    found
}

#[test]
fn every_example_loads_and_validates() {
    let registry = builtin::registry();
    // Relative paths in the examples are relative to the repository root, where the README's
    // command runs; cargo runs integration tests there too.
    assert_eq!(std::env::current_dir().expect("cwd"), repo());
    for path in examples() {
        let (app, _) = tapfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        registry
            .check(&app)
            .unwrap_or_else(|errors| panic!("{}: {errors:?}", path.display()));
    }
}

#[test]
fn the_two_web_examples_are_one_application() {
    let (json, _) = tapfile::load(&repo().join("configs/web.tap")).expect("web.tap");
    let (ron, _) = tapfile::load(&repo().join("configs/web.tas")).expect("web.tas");
    assert_eq!(json, ron);
}

#[test]
fn every_example_serves() {
    for path in examples() {
        let (mut app, format) = tapfile::load(&path).expect("load");
        // The examples listen on fixed ports; here every endpoint becomes a free loopback port.
        for service in &mut app.services {
            for endpoint in &mut service.listen {
                if let Endpoint::Tcp {
                    port, interface, ..
                } = endpoint
                {
                    *port = 0;
                    *interface = Some("127.0.0.1".parse().expect("ip"));
                }
            }
        }
        let sb = Sandbox::new();
        let copy = sb.join(&format!("example.{}", format.extension()));
        tapfile::save(&app, &copy, format, false).expect("save copy");
        let copy = copy.to_str().expect("utf-8 path").to_string();
        let twistd = Twistd::start(&repo(), &["-o", "-f", &copy]);
        let mut first_listener = 0;
        for service in &app.services {
            if service.plugin == "web" {
                let page = curl(&twistd.url(first_listener, "/"), &[]);
                assert_eq!(
                    page.status,
                    200,
                    "{} service {}",
                    path.display(),
                    service.name
                );
            }
            first_listener += service.listen.len();
        }
        let (status, _) = twistd.stop();
        assert!(status.success(), "{}: {status}", path.display());
    }
}
