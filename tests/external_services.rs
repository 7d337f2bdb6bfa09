//! External service plugins at work: `portforward` (Rust, built with the SDK) relaying to the
//! web service from a tap, as a twistd subcommand, through `Control::add` and the telnet shell's
//! `add`; its state in the shutdown tap; the drain deadline's abort.

#[path = "external/support.rs"]
mod support;
mod util;

use support::*;
use util::{curl, Sandbox};

#[test]
fn portforward_relays_to_the_web_service_and_keeps_its_count_across_restarts() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    let web = web_server(&sb, &plugins);
    let dest = web.addr(0).port().to_string();
    mktap_ok(
        &sb,
        &plugins,
        &[
            "portforward",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--host",
            "127.0.0.1",
            "--dest_port",
            &dest,
        ],
    );
    let mut forwarder = twistd(&sb, &plugins, &["-f", "portforward.tap"]);
    // The plugin's own log line lands in the host's log.
    forwarder.logged("forwarding tcp:0:interface=127.0.0.1 to 127.0.0.1:");
    let page = curl(&forwarder.url(0, "/"), &[]);
    assert_eq!(page.status, 200);
    assert_eq!(page.text(), "<h1>through the forwarder</h1>\n");
    let (status, _) = forwarder.stop();
    assert!(status.success());
    let saved = json(&sb, "portforward-shutdown.tap");
    assert_eq!(
        saved["services"][0]["state"],
        serde_json::json!({ "forwarded": 1 })
    );

    // Started again from the shutdown tap, it counts on from the saved state.
    let forwarder = twistd(&sb, &plugins, &["-f", "portforward-shutdown.tap"]);
    assert_eq!(curl(&forwarder.url(0, "/"), &[]).status, 200);
    assert_eq!(curl(&forwarder.url(0, "/"), &[]).status, 200);
    let (status, _) = forwarder.stop();
    assert!(status.success());
    let saved = json(&sb, "portforward-shutdown.tap");
    assert_eq!(
        saved["services"][0]["state"],
        serde_json::json!({ "forwarded": 3 })
    );
    drop(web);
}

#[test]
fn twistd_runs_an_external_plugin_as_a_subcommand() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    let web = web_server(&sb, &plugins);
    let dest = web.addr(0).port().to_string();
    let forwarder = twistd(
        &sb,
        &plugins,
        &[
            "portforward",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--host",
            "127.0.0.1",
            "--dest_port",
            &dest,
        ],
    );
    assert_eq!(curl(&forwarder.url(0, "/index.html"), &[]).status, 200);
    let (status, _) = forwarder.stop();
    assert!(status.success());
}

/// The admin shell's `add` (telnet plugin) goes through `Control::add` with a spec from the
/// maker's own command, exactly as here; an external plugin's maker works the same way.
#[test]
fn control_add_runs_an_external_plugin_like_a_built_in() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    let web = web_server(&sb, &plugins);
    let dest = web.addr(0).port().to_string();
    let found = host::external::discover(&[plugins]);
    assert!(found.refused.is_empty(), "{:?}", found.refused);
    let mut registry = builtin::registry();
    for maker in &found.services {
        registry.add(maker.clone()).expect("no clash");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let state = runtime.block_on(async {
        let app = host::Application::new("shell");
        let control = host::Control::start(
            &app,
            &registry,
            Vec::new(),
            std::time::Duration::from_secs(5),
            host::Format::Json,
        )
        .await
        .expect("an empty application starts");
        let maker = control
            .registry()
            .get("portforward")
            .expect("registered")
            .clone();
        let matches = maker
            .command()
            .try_get_matches_from([
                "portforward",
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--host",
                "127.0.0.1",
                "--dest_port",
                &dest,
            ])
            .expect("options parse");
        let spec = maker.spec_from_matches(&matches).expect("options validate");
        let addrs = control.add(spec).await.expect("added and started");
        let url = format!("http://{}/", addrs[0]);
        let page = tokio::task::spawn_blocking(move || curl(&url, &[]))
            .await
            .expect("curl ran");
        assert_eq!(page.status, 200);
        control.stop_all().await;
        control.application().await.services[0].state.clone()
    });
    assert_eq!(state, Some(serde_json::json!({ "forwarded": 1 })));
    drop(web);
}

/// A connection that never ends holds the plugin's `stop` until the drain deadline; then the
/// host calls `abort` and the plugin closes it, and twistd still saves the state and exits.
#[test]
fn portforward_closes_a_connection_left_open_at_the_drain_deadline() {
    use std::io::{Read, Write};

    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dest = holder.local_addr().expect("addr").port().to_string();
    let (accepted, held) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = holder.accept().expect("accept");
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).expect("the client's byte");
        accepted.send(()).expect("the test waits");
        // Held open until the forwarder closes its side.
        let _ = conn.read_to_end(&mut Vec::new());
    });
    let forwarder = twistd(
        &sb,
        &plugins,
        &[
            "--shutdown-timeout",
            "1",
            "portforward",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--host",
            "127.0.0.1",
            "--dest_port",
            &dest,
        ],
    );
    let mut client = std::net::TcpStream::connect(forwarder.addr(0)).expect("connect");
    client.write_all(b"x").expect("send");
    held.recv_timeout(util::TIMEOUT)
        .expect("the connection reached the holder");
    let (status, log) = forwarder.stop();
    assert!(status.success(), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("drain deadline passed")),
        "{log:?}"
    );
    client
        .set_read_timeout(Some(util::TIMEOUT))
        .expect("timeout");
    assert_eq!(client.read(&mut [0u8; 16]).expect("EOF, not a timeout"), 0);
}

/// The telnet admin shell's `add` takes an external plugin like a built-in one.
#[test]
fn the_admin_shell_adds_an_external_service() {
    use std::io::Write;

    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    let web = web_server(&sb, &plugins);
    let dest = web.addr(0).port().to_string();
    let shell = twistd(
        &sb,
        &plugins,
        &[
            "telnet",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--password",
            "secret",
        ],
    );
    let mut conn = std::net::TcpStream::connect(shell.addr(0)).expect("connect");
    conn.set_read_timeout(Some(util::TIMEOUT)).expect("timeout");
    read_until(&mut conn, "username: ");
    conn.write_all(b"admin\r\n").expect("send");
    read_until(&mut conn, "password: ");
    conn.write_all(b"secret\r\n").expect("send");
    read_until(&mut conn, "> ");
    let add = format!(
        "add portforward --port tcp:0:interface=127.0.0.1 --host 127.0.0.1 --dest_port {dest}\r\n"
    );
    conn.write_all(add.as_bytes()).expect("send");
    let answer = read_until(&mut conn, "> ");
    let addr = answer
        .split("added portforward: listening on ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no address in {answer:?}"))
        .trim()
        .to_string();
    let page = curl(&format!("http://{addr}/"), &[]);
    assert_eq!(page.text(), "<h1>through the forwarder</h1>\n");
    conn.write_all(b"services\r\n").expect("send");
    assert!(read_until(&mut conn, "> ").contains("portforward"));
    conn.write_all(b"quit\r\n").expect("send");
    let (status, _) = shell.stop();
    assert!(status.success());
    drop(web);
}

/// A plugin that kills the process while it starts (a crash, the OOM killer): the daemon dies
/// before it can say anything, and the parent twistd, still waiting, says how.
#[test]
fn a_daemon_killed_during_start_up_is_reported_with_its_signal() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["dies_at_start"]);
    mktap_ok(&sb, &plugins, &["dies"]);
    let out = std::process::Command::new(util::TWISTD)
        .args(["-f", "dies.tap"])
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", &plugins)
        .output()
        .expect("run twistd");
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert_eq!(
        err.trim_end(),
        "twistd: the daemon was killed by SIGKILL during start-up; see its log"
    );
}
