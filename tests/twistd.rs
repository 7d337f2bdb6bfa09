//! `twistd -n`: serving taps, the shutdown save and restart, the pidfile, and start-up failures.

mod util;

use std::net::TcpListener;

use host::{tapfile, Format};
use util::{curl, stderr, Sandbox, Twistd};

const LOOPBACK0: &str = "tcp:0:interface=127.0.0.1";

fn site(sb: &Sandbox) {
    sb.write("www/index.html", "<h1>home</h1>\n");
    sb.write("other/index.html", "<h1>other</h1>\n");
}

#[test]
fn serves_a_tap_and_saves_a_loadable_shutdown_tap_on_sigterm() {
    let sb = Sandbox::new();
    site(&sb);
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    sb.mktap_ok(&[
        "--append", "web.tap", "web", "--path", "other", "--listen", LOOPBACK0,
    ]);

    let twistd = sb.twistd(&["-f", "web.tap"]);
    assert_eq!(twistd.addrs.len(), 2);
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "<h1>home</h1>\n");
    assert_eq!(curl(&twistd.url(1, "/"), &[]).text(), "<h1>other</h1>\n");
    let (status, log) = twistd.stop();
    assert!(status.success(), "{status}: {log:?}");
    assert!(
        log.iter().any(|l| l.contains("saved web-shutdown.tap")),
        "{log:?}"
    );

    let (saved, format) = tapfile::load(&sb.join("web-shutdown.tap")).expect("shutdown tap loads");
    let (original, _) = tapfile::load(&sb.join("web.tap")).expect("tap loads");
    assert_eq!(format, Format::Json);
    assert_eq!(
        saved, original,
        "a stateless web service saves what it loaded"
    );

    // And the same application starts again from it.
    let again = sb.twistd(&["-f", "web-shutdown.tap"]);
    assert_eq!(curl(&again.url(1, "/"), &[]).text(), "<h1>other</h1>\n");
    assert!(again.stop().0.success());
}

#[test]
fn source_taps_run_with_s_and_save_as_source() {
    let sb = Sandbox::new();
    site(&sb);
    sb.mktap_ok(&[
        "-t", "source", "-n", "demo", "web", "--path", "www", "--port", LOOPBACK0,
    ]);
    let twistd = sb.twistd(&["-s", "demo.tas"]);
    assert_eq!(curl(&twistd.url(0, "/"), &[]).status, 200);
    assert!(twistd.stop().0.success());
    let (_, format) = tapfile::load(&sb.join("demo-shutdown.tas")).expect("saved as source");
    assert_eq!(format, Format::Ron);
}

#[test]
fn no_save_and_sigint() {
    let sb = Sandbox::new();
    site(&sb);
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    for flag in ["-o", "--no-save", "--no_save"] {
        let twistd = sb.twistd(&[flag, "-f", "web.tap"]);
        twistd.signal(nix::sys::signal::Signal::SIGINT);
        let (status, _) = twistd.stop();
        assert!(status.success());
        assert!(!sb.join("web-shutdown.tap").exists(), "{flag} saved anyway");
    }
}

#[test]
fn a_plugin_subcommand_runs_without_a_file_and_never_saves() {
    let sb = Sandbox::new();
    site(&sb);
    let twistd = sb.twistd(&["web", "--path", "www", "--port", LOOPBACK0]);
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "<h1>home</h1>\n");
    assert!(twistd.stop().0.success());
    let left: Vec<_> = std::fs::read_dir(sb.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), 2, "only www and other remain: {left:?}");
}

#[test]
fn unix_socket_endpoints_serve() {
    let sb = Sandbox::new();
    site(&sb);
    let sock = sb.join("web.sock");
    let endpoint = format!("unix:{}:mode=600", sock.display());
    let twistd = sb.twistd(&["web", "--path", "www", "--listen", &endpoint]);
    let page = curl(
        "http://localhost/",
        &["--unix-socket", sock.to_str().expect("utf-8")],
    );
    assert_eq!(page.text(), "<h1>home</h1>\n");
    assert!(twistd.stop().0.success());
}

#[test]
fn the_pidfile_holds_the_pid_and_refuses_a_second_server() {
    let sb = Sandbox::new();
    site(&sb);
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    // Twistd::start passes --pidfile '' first; a later --pidfile overrides it.
    let first = sb.twistd(&["-o", "--pidfile", "web.pid", "-f", "web.tap"]);
    assert_eq!(sb.read("web.pid").trim(), first.child.id().to_string());

    let second = sb.twistd_output(&["-n", "-o", "--pidfile", "web.pid", "-f", "web.tap"]);
    assert_eq!(second.status.code(), Some(69));
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "Another twistd server is running, PID {}",
            first.child.id()
        )),
        "{err}"
    );

    assert!(first.stop().0.success());
    assert!(!sb.join("web.pid").exists(), "pidfile removed at exit");

    // A pidfile nobody holds is stale, whatever PID it names.
    sb.write("web.pid", "1\n");
    let third = sb.twistd(&["-o", "--pidfile", "web.pid", "-f", "web.tap"]);
    assert_eq!(sb.read("web.pid").trim(), third.child.id().to_string());
    assert!(
        third.log.iter().any(|l| l.contains("stale pidfile")),
        "{:?}",
        third.log
    );
    assert!(third.stop().0.success());
}

#[test]
fn a_port_in_use_exits_69_naming_the_address() {
    let sb = Sandbox::new();
    site(&sb);
    let busy = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = busy.local_addr().expect("addr").port();
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let endpoint = format!("tcp:{port}:interface=127.0.0.1");
    sb.mktap_ok(&[
        "--append", "web.tap", "web", "--path", "other", "--port", &endpoint,
    ]);
    let out = sb.twistd_output(&["-n", "--pidfile", "", "-f", "web.tap"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&endpoint) && err.contains("web-2"), "{err}");
    assert!(
        !sb.join("web-shutdown.tap").exists(),
        "nothing ran, nothing is saved"
    );
}

#[test]
fn version_and_help() {
    let sb = Sandbox::new();
    let out = sb.twistd_output(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = sb.twistd_output(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for needle in [
        "--nodaemon",
        "--file",
        "--source",
        "--no-save",
        "--logfile",
        "--pidfile",
        "web",
    ] {
        assert!(help.contains(needle), "{needle} not in {help}");
    }
    // A misspelt level in TAPHOST_LOG would have silenced the log: refused, saying why.
    let out = std::process::Command::new(util::TWISTD)
        .args(["-n", "--pidfile", "", "web", "--path", "."])
        .env("TAPHOST_LOG", "inof")
        .current_dir(sb.path())
        .output()
        .expect("run twistd");
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        util::stderr(&out).trim_end(),
        "twistd: TAPHOST_LOG 'inof': 'inof' is not a level (error, warn, info, debug, trace, off); a target's level is TARGET=LEVEL"
    );
    // An empty one is no filter, as RUST_LOG is read: the default level.
    let out = std::process::Command::new(util::TWISTD)
        .args(["-n", "--pidfile", "", "-f", "absent.tap"])
        .env("TAPHOST_LOG", "")
        .current_dir(sb.path())
        .output()
        .expect("run twistd");
    assert!(
        util::stderr(&out).contains("twistd: absent.tap: No such file"),
        "{}",
        util::stderr(&out)
    );
    // A drain deadline centuries away overflowed at the stop, which then saved nothing.
    let out = sb.twistd_output(&["--shutdown-timeout", "18446744073709551615", "-f", "x.tap"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        util::stderr(&out).contains(
            "for '--shutdown-timeout <SECONDS>': 18446744073709551615 is not in 0..=86400"
        ),
        "{}",
        util::stderr(&out)
    );
}

#[test]
fn logfile_option_writes_the_log_there() {
    let sb = Sandbox::new();
    site(&sb);
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let out = sb.twistd_output(&["-n", "--pidfile", "", "-l", "twistd.log", "-f", "nope.tap"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        sb.read("twistd.log").contains("nope.tap"),
        "the failure is logged too"
    );
}

/// Each bad tap exits 78 with one line that names the file and the problem, and starts nothing.
#[test]
fn bad_taps_are_refused_with_a_clear_line() {
    let sb = Sandbox::new();
    site(&sb);
    let service = |plugin: &str, listen: &str, config: &str| {
        format!(
            r#"{{"version": 1, "name": "web", "services": [{{"name": "web", "plugin": "{plugin}", "listen": ["{listen}"], "config": {config}}}]}}"#
        )
    };
    // Config errors name the line and column of the value, found in the text after the plugin
    // refused the decoded value.
    let field = service("web", LOOPBACK0, r#"{"path": "www", "colour": "blue"}"#);
    let field_at = format!(
        "field.tap:1:{}: ",
        field.find(r#""colour""#).expect("in") + 1
    );
    let typed = service(
        "web",
        LOOPBACK0,
        r#"{"path": "www", "index": "index.html"}"#,
    );
    let typed_at = format!(
        "type.tap:1:{}: ",
        typed.find(r#""index.html""#).expect("in") + 1
    );
    let source = format!(
        "// hand edited\n(\n    version: 1,\n    name: \"web\",\n    services: [(\n        name: \"web\",\n        plugin: \"web\",\n        listen: [\"{LOOPBACK0}\"],\n        config: {{\n            \"path\": \"www\",\n            \"index\": \"index.html\",\n        }},\n    )],\n)\n"
    );
    let endpoint = service("web", "tcp:80:interface=localhost", r#"{"path": "www"}"#);
    let endpoint_at = format!(
        "endpoint.tap:1:{}: ",
        endpoint.find(r#""tcp:80"#).expect("in") + 1
    );
    let gopher = service("gopher", LOOPBACK0, "{}");
    let plugin_at = format!(
        "plugin.tap:1:{}: ",
        gopher.find(r#""gopher""#).expect("in") + 1
    );
    // The hand-edited tap without its mistake, and a second service like the first: same name,
    // an endpoint given twice.
    let good = source.replace(r#""index": "index.html""#, r#""index": ["index.html"]"#);
    let twins = good.replace(
        "    )],\n)",
        &format!("    ), (\n        name: \"web\",\n        plugin: \"web\",\n        listen: [\"{LOOPBACK0}\", \"tcp:8080\", \"tcp:8080\"],\n        config: {{\"path\": \"www\"}},\n    )],\n)"),
    );
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax.tap", "{\n  \"version\": 1,\n  \"name\": \"web\"\n  \"services\": []\n}\n".into(), vec!["syntax.tap:4:3", "expected"]),
        ("syntax.tas", "(\n    version: 1,\n    name: \"web\",\n    services: [(name: \"web\" plugin: \"web\")],\n)\n".into(), vec!["syntax.tas:4:"]),
        ("plugin.tap", service("gopher", LOOPBACK0, "{}"), vec![&plugin_at, "unknown plugin 'gopher'", "known: web"]),
        // The envelope's own problems, where their values start.
        ("names.tas", good.replace(r#"name: "web","#, r#"name: "a b","#), vec!["names.tas:4:11: application name 'a b'", "names.tas:6:15: service name 'a b'"]),
        ("twins.tas", twins, vec!["twins.tas:14:15: two services are named 'web'", "twins.tas:16:59: service 'web' listens on tcp:8080"]),
        ("user.tas", good.replace("    name: \"web\",\n    services", "    name: \"web\",\n    uid: Some(\"no-such-user\"),\n    services"), vec!["user.tas:5:10: the tap's uid no-such-user: no such user"]),
        ("field.tap", field.clone(), vec![&field_at, "unknown field `colour`"]),
        ("type.tap", typed.clone(), vec![&typed_at, "config.index", "expected a sequence"]),
        ("type.tas", source.clone(), vec!["type.tas:11:22: ", "config.index", "expected a sequence"]),
        // What decoding would lose without a word is refused: a bare word (RON reads it as
        // null), a key given twice (the last would win).
        ("bare.tas", source.replace(r#""index.html""#, "index"), vec!["bare.tas:11:22: ", "config.index: index is a bare word"]),
        ("twice.tas", source.replace(r#""path": "www","#, r#""path": "www", "path": "/etc","#), vec!["twice.tas:10:36: ", r#"key "path" given twice"#]),
        // A value refused after it was read is pointed at where it starts.
        ("version.tap", r#"{"version": "one", "name": "web", "services": []}"#.into(), vec!["version.tap:1:13: version: invalid type"]),
        ("type2.tap", service("web", LOOPBACK0, r#"{"path": 42}"#), vec!["config.path", "integer `42`"]),
        ("missing.tap", service("web", LOOPBACK0, r#"{"path": "no-such-dir"}"#), vec!["--path no-such-dir"]),
        ("endpoint.tap", endpoint.clone(), vec![&endpoint_at, "services[0].listen[0]", "interface 'localhost'"]),
        ("newer.tap", r#"{"version": 7, "name": "web", "services": [], "hologram": true}"#.into(), vec!["version 7 is newer"]),
        ("envelope.tap", r#"{"version": 1, "name": "web", "servces": []}"#.into(), vec!["envelope.tap:1:", "unknown field `servces`"]),
    ];
    for (file, text, needles) in cases {
        sb.write(file, &text);
        let out = sb.twistd_output(&["-n", "--pidfile", "", "-f", file]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{file}: {err}");
        assert!(err.starts_with(&format!("twistd: {file}")), "{file}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{file}: '{needle}' not in: {err}");
        }
        assert!(!err.contains("ready:"), "{file} started something");
    }
}

#[test]
fn a_missing_tap_is_named() {
    let sb = Sandbox::new();
    let out = sb.twistd_output(&["-n", "--pidfile", ""]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("twistd.tap"),
        "the default file is twistd.tap"
    );
}

#[test]
fn keep_alive_connections_do_not_hold_up_a_stop() {
    let sb = Sandbox::new();
    site(&sb);
    let twistd: Twistd = sb.twistd(&["web", "--path", "www", "--port", LOOPBACK0]);
    // An idle keep-alive connection is open when SIGTERM arrives.
    let answer_and_conn = {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(twistd.addr(0)).expect("connect");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut buf = [0u8; 4096];
        let n = conn.read(&mut buf).expect("read");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), conn)
    };
    assert!(answer_and_conn.0.starts_with("HTTP/1.1 200"));
    let (status, log) = twistd.stop();
    assert!(status.success());
    assert!(
        !log.iter().any(|l| l.contains("drain deadline passed")),
        "{log:?}"
    );
}
