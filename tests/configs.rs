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

const SHELL_PASSWORD: &str = "example-test-password";

/// Logs into an admin shell and returns what `services` prints.
fn shell_services(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the shell");
    conn.set_read_timeout(Some(util::TIMEOUT)).expect("timeout");
    let mut seen = Vec::new();
    let mut until = |conn: &mut std::net::TcpStream, needle: &str| -> String {
        let start = seen.len();
        loop {
            let text = String::from_utf8_lossy(&seen[start..]).into_owned();
            if text.contains(needle) {
                return text;
            }
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).expect("read from the shell");
            assert!(n > 0, "the shell closed the connection; got {text:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    until(&mut conn, "username: ");
    conn.write_all(b"admin\r\n").expect("send");
    until(&mut conn, "password: ");
    conn.write_all(format!("{SHELL_PASSWORD}\r\n").as_bytes())
        .expect("send");
    until(&mut conn, "> ");
    conn.write_all(b"services\r\n").expect("send");
    let listing = until(&mut conn, "> ");
    conn.write_all(b"quit\r\n").expect("send");
    listing
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
        // Example shells ship with a hash nobody knows; the copy gets one of a test password.
        for service in app.services.iter_mut().filter(|s| s.plugin == "telnet") {
            let hash = host::secret::hash_password(SHELL_PASSWORD).expect("hash");
            service.config["users"] = serde_json::json!([{ "name": "admin", "hash": hash }]);
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
            if service.plugin == "telnet" {
                let listing = shell_services(twistd.addr(first_listener));
                for other in &app.services {
                    assert!(
                        listing.contains(&other.name),
                        "{}: {listing}",
                        path.display()
                    );
                }
            }
            first_listener += service.listen.len();
        }
        let (status, _) = twistd.stop();
        assert!(status.success(), "{}: {status}", path.display());
    }
}

/// The example units in configs/systemd pass `systemd-analyze verify` (with ExecStart pointed
/// at the binary under test, since /usr/bin/twistd is what a package installs).
#[test]
fn systemd_units_verify() {
    let Ok(found) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(found.status.success());
    let sb = Sandbox::new();
    for entry in std::fs::read_dir(repo().join("configs/systemd")).expect("configs/systemd") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace("@.", "@web.");
        let text = std::fs::read_to_string(&path)
            .expect("unit")
            .replace("/usr/bin/twistd", util::TWISTD);
        sb.write(&name, text);
    }
    let units: Vec<PathBuf> = std::fs::read_dir(sb.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(units.len(), 3, "{units:?}");
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("run systemd-analyze");
    let said = format!("{}{}", util::stdout(&out), util::stderr(&out));
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
