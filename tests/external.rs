//! External plugins from shared libraries: the Rust `portforward` built with the SDK, the C
//! `counter` resource compiled here with `cc`, and each library the host must refuse. Every
//! test points `TAPHOST_PLUGIN_PATH` at a plugin directory of its own.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use util::{curl, stderr, stdout, Sandbox, Twistd, MKTAP, TWISTD};

/// Where the test libraries are built, once per test binary.
struct Built {
    _dir: tempfile::TempDir,
    libs: PathBuf,
}

/// Builds `portforward` and the SDK's `guestbook` example with cargo (into this build's target
/// directory) and compiles the C libraries of `tests/plugins/` with `cc`.
fn built() -> &'static Path {
    static BUILT: OnceLock<Built> = OnceLock::new();
    &BUILT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir for libraries");
            let libs = dir.path().to_path_buf();
            // target/<profile>/twistd: the same target directory and profile as this build.
            let profile_dir = Path::new(TWISTD).parent().expect("twistd's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            for (args, built, name) in [
                (
                    &["-p", "portforward"][..],
                    "libportforward.so",
                    "portforward",
                ),
                (
                    &["-p", "taphost-sdk", "--example", "guestbook"][..],
                    "examples/libguestbook.so",
                    "guestbook",
                ),
            ] {
                let mut cargo =
                    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
                cargo
                    .args(["build", "--quiet"])
                    .args(args)
                    .env("CARGO_TARGET_DIR", target_dir)
                    .current_dir(util::repo());
                if profile_dir.file_name().is_some_and(|n| n == "release") {
                    cargo.arg("--release");
                }
                let out = cargo.output().expect("run cargo");
                assert!(
                    out.status.success(),
                    "cargo build {args:?}: {}",
                    stderr(&out)
                );
                std::fs::copy(profile_dir.join(built), libs.join(format!("{name}.so")))
                    .unwrap_or_else(|e| panic!("copy {built}: {e}"));
            }

            let include = util::repo().join("plugins/sdk/include");
            for name in [
                "counter",
                "wrong_abi",
                "no_entry",
                "bad_descriptor",
                "web_clash",
            ] {
                let source = util::repo().join(format!("tests/plugins/{name}.c"));
                let out = Command::new("cc")
                    .args(["-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
                    .arg(&include)
                    .arg("-o")
                    .arg(libs.join(format!("{name}.so")))
                    .arg(&source)
                    .output()
                    .expect("run cc (is a C compiler installed?)");
                assert!(out.status.success(), "cc {name}.c: {}", stderr(&out));
            }
            Built { _dir: dir, libs }
        })
        .libs
}

/// A plugin directory in the sandbox holding the named libraries (symlinks to the built ones).
fn plugin_dir(sb: &Sandbox, libs: &[&str]) -> PathBuf {
    let dir = sb.join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    for lib in libs {
        std::os::unix::fs::symlink(
            built().join(format!("{lib}.so")),
            dir.join(format!("{lib}.so")),
        )
        .expect("link a library");
    }
    dir
}

fn mktap(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Output {
    Command::new(MKTAP)
        .args(args)
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", plugins)
        .env("HOME", sb.path())
        .output()
        .expect("run mktap")
}

fn mktap_ok(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Output {
    let out = mktap(sb, plugins, args);
    assert!(out.status.success(), "mktap {args:?}: {}", stderr(&out));
    out
}

fn twistd(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Twistd {
    let mut cmd = Command::new(TWISTD);
    cmd.args(["-n", "--pidfile", ""])
        .args(args)
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", plugins)
        .env("HOME", sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Twistd::from_command(cmd)
}

/// Waits for a log line, which may have come before "ready:".
fn logged(twistd: &mut Twistd, needle: &str) {
    if !twistd.log.iter().any(|l| l.contains(needle)) {
        twistd.wait_for(needle);
    }
}

fn json(sb: &Sandbox, name: &str) -> Value {
    serde_json::from_str(&sb.read(name)).expect("a JSON tap")
}

/// A web service on a port of its own, serving `www/`.
fn web_server(sb: &Sandbox, plugins: &Path) -> Twistd {
    sb.write("www/index.html", "<h1>through the forwarder</h1>\n");
    twistd(
        sb,
        plugins,
        &[
            "-o",
            "web",
            "--path",
            sb.join("www").to_str().expect("utf-8"),
            "--port",
            "tcp:0:interface=127.0.0.1",
        ],
    )
}

#[test]
fn help_lists_external_plugins_marked_and_shows_their_options() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward", "counter"]);
    for bin in [MKTAP, TWISTD] {
        let out = Command::new(bin)
            .arg("--help")
            .env("TAPHOST_PLUGIN_PATH", &plugins)
            .env("HOME", sb.path())
            .output()
            .expect("run --help");
        let help = stdout(&out);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("portforward"))
            .unwrap_or_else(|| panic!("{bin} --help lists no portforward:\n{help}"));
        assert!(line.contains("[external]"), "{line}");
        let web = help
            .lines()
            .find(|l| l.trim_start().starts_with("web "))
            .expect("web is listed");
        assert!(!web.contains("[external]"), "{web}");
        // A resource is no subcommand; the help names it for `web --resource`.
        assert!(
            help.contains("External web resources (web --resource /PATH=NAME):\n  counter  Counts its hits (written in C) [external]"),
            "{help}"
        );
        assert_eq!(stderr(&out), "", "no library is refused");
    }
    let out = mktap_ok(&sb, &plugins, &["portforward", "--help"]);
    let help = stdout(&out);
    for option in [
        "--port <ENDPOINT>",
        "--host <TEXT>",
        "--dest_port <N>",
        "[default: localhost]",
    ] {
        assert!(help.contains(option), "no {option} in:\n{help}");
    }
    assert!(
        help.contains(&format!("{}", plugins.join("portforward.so").display())),
        "{help}"
    );

    // Without the plugin path, the plugin is unknown.
    let out = Command::new(MKTAP)
        .args(["portforward", "--help"])
        .env_remove("TAPHOST_PLUGIN_PATH")
        .env("HOME", sb.path())
        .output()
        .expect("run mktap");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("unknown plugin 'portforward' (known: web, mail, telnet; external plugins are looked for in $TAPHOST_PLUGIN_PATH"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mktap_writes_an_external_plugins_options_and_refuses_bad_ones() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    mktap_ok(
        &sb,
        &plugins,
        &[
            "portforward",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--dest_port",
            "8080",
        ],
    );
    let tap = json(&sb, "portforward.tap");
    let service = &tap["services"][0];
    assert_eq!(service["plugin"], "portforward");
    assert_eq!(service["listen"][0], "tcp:0:interface=127.0.0.1");
    assert_eq!(
        service["config"],
        serde_json::json!({ "host": "localhost", "dest_port": 8080 })
    );

    // The plugin's own validation, through the ABI.
    let out = mktap(
        &sb,
        &plugins,
        &["portforward", "--port", "0", "--dest_port", "0"],
    );
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--dest_port: must be between 1 and 65535"),
        "{}",
        stderr(&out)
    );
    // clap's checks, from the descriptor's option data.
    let out = mktap(
        &sb,
        &plugins,
        &["portforward", "--port", "0", "--dest_port", "many"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("'many'"), "{}", stderr(&out));
    let out = mktap(&sb, &plugins, &["portforward", "--dest_port", "80"]);
    assert!(
        stderr(&out).contains("--port <ENDPOINT>"),
        "{}",
        stderr(&out)
    );

    // A tap with a config the plugin cannot decode is refused by twistd before anything runs.
    let mut tap = tap;
    tap["services"][0]["config"]["colour"] = "blue".into();
    sb.write("bad.tap", serde_json::to_string(&tap).expect("encode"));
    let out = Command::new(TWISTD)
        .args(["-n", "--pidfile", "", "-f", "bad.tap"])
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", &plugins)
        .output()
        .expect("run twistd");
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field `colour`"),
        "{}",
        stderr(&out)
    );
}

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
    logged(
        &mut forwarder,
        "forwarding tcp:0:interface=127.0.0.1 to 127.0.0.1:",
    );
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
    logged(&mut server, "counter opened at 0 hits");
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
    logged(&mut server, "asked to fail");
    let (status, _) = server.stop();
    assert!(status.success());
    let saved = json(&sb, "web-shutdown.tap");
    assert_eq!(
        saved["services"][0]["state"],
        serde_json::json!({ "resources": { "/count": { "hits": 2 } } })
    );

    let mut server = twistd(&sb, &plugins, &["-f", "web-shutdown.tap"]);
    logged(&mut server, "counter opened at 2 hits");
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
fn refused_libraries_are_named_and_never_called() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(
        &sb,
        &[
            "wrong_abi",
            "no_entry",
            "bad_descriptor",
            "web_clash",
            "portforward",
        ],
    );
    std::fs::write(plugins.join("text.so"), "this is not a shared library\n").expect("write");
    let out = mktap(&sb, &plugins, &["--help"]);
    assert!(out.status.success());
    let err = stderr(&out);
    let named = |lib: &str| format!("plugin {} refused: ", plugins.join(lib).display());
    for (lib, why) in [
        (
            "wrong_abi.so",
            "it speaks plugin ABI version 999; this host speaks version 1",
        ),
        ("no_entry.so", "it exports no taphost_abi_version"),
        ("bad_descriptor.so", "its descriptor does not parse"),
        ("text.so", "cannot load it"),
        (
            "web_clash.so",
            "the name 'web' belongs to a built-in plugin",
        ),
    ] {
        assert!(
            err.contains(&format!("{}{why}", named(lib))),
            "{lib}: {err}"
        );
    }
    // The library of another ABI version had its entry function left alone.
    assert!(!sb.join("WRONG_ABI_ENTRY_CALLED").exists());
    // The good one and the built-in `web` still work.
    let help = stdout(&out);
    assert!(help.contains("portforward"), "{help}");
    let web = mktap_ok(&sb, &plugins, &["web", "--help"]);
    assert!(stdout(&web).contains("--path"));
    assert!(!stdout(&web).contains("impostor"));
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
    logged(&mut server, "guestbook opened with 2 entries");
    assert!(curl(&server.url(0, "/book"), &[])
        .text()
        .ends_with("2. second\n"));
    let (status, _) = server.stop();
    assert!(status.success());
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

/// Reads from the shell until `needle` has arrived; returns everything read since the last call.
fn read_until(conn: &mut std::net::TcpStream, needle: &str) -> String {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // Telnet negotiation bytes are not UTF-8; lossy text still shows the words.
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        let n = conn.read(&mut buf).expect("read from the shell");
        assert!(n > 0, "the shell closed before '{needle}': {text}");
        seen.extend_from_slice(&buf[..n]);
    }
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
