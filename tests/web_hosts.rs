//! The web plugin's hosts, TLS and logs over real connections: name-based virtual hosts,
//! HTTPS with `--https` and `ssl:` endpoints (certificates made by the openssl binary at run
//! time), SNI, HTTP/2 by ALPN, the combined access log and its reopening, and the weblog page
//! kept across a restart.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use util::{curl, raw_request, raw_status, Sandbox, Twistd, TIMEOUT};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("secret.txt", SECRET);
    sb.write("root/index.html", "default site\n");
    sb.write("root/a.txt", "aaa\n");
    sb.write("example/index.html", "example site\n");
    sb.write("example/only-here.txt", "example only\n");
    sb.write("other/index.html", "other site\n");
    std::os::unix::fs::symlink("../secret.txt", sb.join("example/escape.txt")).expect("symlink");
    sb
}

fn start(sb: &Sandbox, extra: &[String]) -> Twistd {
    let mut args = vec![
        "web".to_string(),
        "--path".into(),
        sb.join("root").display().to_string(),
        "--port".into(),
        "tcp:0:interface=127.0.0.1".into(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.twistd(&args)
}

fn vhost_args(sb: &Sandbox) -> Vec<String> {
    vec![
        "--vhost".into(),
        format!("example.org={}", sb.join("example").display()),
        "--vhost".into(),
        format!("Other.Example.NET={}", sb.join("other").display()),
    ]
}

#[test]
fn virtual_hosts_by_name_without_port_case_insensitive() {
    let sb = sandbox();
    let twistd = start(&sb, &vhost_args(&sb));
    let url = twistd.url(0, "/");
    for (host, want) in [
        ("example.org", "example site\n"),
        ("EXAMPLE.org:8080", "example site\n"),
        ("example.org.", "example site\n"),
        ("other.example.net", "other site\n"),
        ("unknown.example", "default site\n"),
        ("127.0.0.1", "default site\n"),
    ] {
        let r = curl(&url, &["-H", &format!("Host: {host}")]);
        assert_eq!(r.text(), want, "Host: {host}");
    }
    let r = curl(
        &twistd.url(0, "/only-here.txt"),
        &["-H", "Host: example.org"],
    );
    assert_eq!(r.status, 200);
    let r = curl(&twistd.url(0, "/only-here.txt"), &[]);
    assert_eq!(r.status, 404, "not on the default host");
}

#[test]
fn virtual_hosts_stay_inside_their_roots() {
    let sb = sandbox();
    let twistd = start(&sb, &vhost_args(&sb));
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/escape.txt",
        "/..%2fsecret.txt",
        "/../root/a.txt",
        "/%2e%2e/root/a.txt",
        "/./../other/index.html",
    ] {
        let answer = raw_request(
            twistd.addr(0),
            format!("GET {path} HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(!answer.contains(SECRET), "{path}: {answer}");
        assert!(!answer.contains("aaa"), "{path} reached another root");
        assert!(
            !answer.contains("other site"),
            "{path} reached another root"
        );
        assert!(matches!(raw_status(&answer), 400 | 404), "{path}: {answer}");
    }
}

/// A self-signed certificate for `names` made by the openssl binary: (cert, key).
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let san: Vec<String> = names
        .iter()
        .map(|n| {
            if n.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{n}")
            } else {
                format!("DNS:{n}")
            }
        })
        .collect();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={}", san.join(",")))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// curl over TLS: (exit success, HTTP version, body).
fn curl_tls(url: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "-w",
            "\n%{http_version}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or(("", ""));
    (out.status.success(), version.to_string(), body.to_string())
}

#[test]
fn https_serves_http2_and_http11_with_tls_12_and_13() {
    let sb = sandbox();
    let (cert, key) = certificate(sb.path(), "localhost", &["localhost", "127.0.0.1"]);
    let twistd = start(
        &sb,
        &[
            "--https".into(),
            "0".into(),
            "--certificate".into(),
            cert.display().to_string(),
            "--privkey".into(),
            key.display().to_string(),
        ],
    );
    assert_eq!(twistd.addrs.len(), 2, "{:?}", twistd.log);
    let port = twistd.addr(1).port();
    let url = format!("https://localhost:{port}/a.txt");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let base = [
        "--cacert",
        cert.to_str().expect("utf-8"),
        "--resolve",
        &resolve,
    ];
    let (ok, version, body) = curl_tls(&url, &[&base[..], &["--http2"]].concat());
    assert!(ok, "{body}");
    assert_eq!((version.as_str(), body.as_str()), ("2", "aaa\n"));
    let (ok, version, body) = curl_tls(&url, &[&base[..], &["--http1.1"]].concat());
    assert!(ok);
    assert_eq!((version.as_str(), body.as_str()), ("1.1", "aaa\n"));
    for tls in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, _, body) = curl_tls(&url, &[&base[..], &tls[..]].concat());
        assert!(ok, "{tls:?}: {body}");
        assert_eq!(body, "aaa\n");
    }
    // HTTP/2 gets the same headers and limits as HTTP/1.1.
    let (ok, _, body) = curl_tls(
        &format!("https://localhost:{port}/a.txt"),
        &[&base[..], &["--http2", "-r", "1-2"]].concat(),
    );
    assert!(ok);
    assert_eq!(body, "aa");
    // Plain HTTP still works on the other listener.
    assert_eq!(curl(&twistd.url(0, "/a.txt"), &[]).text(), "aaa\n");
    // Not TLS on the TLS port: the handshake fails, the server keeps serving.
    let answer = raw_request(twistd.addr(1), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(!answer.contains("aaa"));
    let (ok, _, _) = curl_tls(&url, &base);
    assert!(ok);
}

#[test]
fn ssl_endpoints_and_sni_certificates_per_host() {
    let sb = sandbox();
    let (cert, key) = certificate(sb.path(), "default", &["localhost"]);
    let (ex_cert, ex_key) = certificate(sb.path(), "example", &["example.org"]);
    let mut args = vhost_args(&sb);
    args.extend([
        "--listen".to_string(),
        format!(
            "ssl:0:privateKey={}:certKey={}:interface=127.0.0.1",
            key.display(),
            cert.display()
        ),
        "--sni".into(),
        format!("example.org={}:{}", ex_cert.display(), ex_key.display()),
    ]);
    let twistd = start(&sb, &args);
    let port = twistd.addr(1).port();
    for (host, ca, want) in [
        ("example.org", &ex_cert, "example site\n"),
        ("localhost", &cert, "default site\n"),
    ] {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let (ok, _, body) = curl_tls(
            &format!("https://{host}:{port}/"),
            &[
                "--cacert",
                ca.to_str().expect("utf-8"),
                "--resolve",
                &resolve,
            ],
        );
        assert!(ok, "{host}: {body}");
        assert_eq!(body, want, "{host}");
    }
    // The default certificate does not verify for example.org: SNI chose the other one.
    let resolve = format!("example.org:{port}:127.0.0.1");
    let (ok, _, _) = curl_tls(
        &format!("https://example.org:{port}/"),
        &[
            "--cacert",
            cert.to_str().expect("utf-8"),
            "--resolve",
            &resolve,
        ],
    );
    assert!(!ok, "example.org was given the default certificate");
}

#[test]
fn https_without_a_certificate_is_refused_at_start() {
    let sb = sandbox();
    let out = sb.twistd_output(&[
        "-n",
        "--pidfile",
        "",
        "web",
        "--path",
        sb.join("root").to_str().expect("utf-8"),
        "--https",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(78), "{}", util::stderr(&out));
    // One problem, said once, in the options' own words.
    assert!(
        util::stderr(&out).ends_with("web: --https 0: needs --privkey and --certificate\n"),
        "{}",
        util::stderr(&out)
    );
    let junk = sb.write("junk.pem", "not a certificate");
    let out = sb.twistd_output(&[
        "-n",
        "--pidfile",
        "",
        "web",
        "--path",
        sb.join("root").to_str().expect("utf-8"),
        "--listen",
        &format!("ssl:0:privateKey={}", junk.display()),
    ]);
    assert!(!out.status.success());
    assert!(
        util::stderr(&out).contains("junk.pem"),
        "{}",
        util::stderr(&out)
    );
}

fn wait_for_file(path: &Path, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; have:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[20/Nov/2026:23:21:47 +0000]`: checks the shape of nginx's $time_local.
fn is_time_local(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 28
        && b[0] == b'['
        && b[3] == b'/'
        && b[7] == b'/'
        && b[12] == b':'
        && s.ends_with(" +0000]")
        && b[1..3].iter().all(u8::is_ascii_digit)
        && b[8..12].iter().all(u8::is_ascii_digit)
}

#[test]
fn the_access_log_is_nginx_combined_flushed_and_reopened() {
    let sb = sandbox();
    let log = sb.join("access.log");
    let twistd = start(&sb, &["--logfile".into(), log.display().to_string()]);
    curl(
        &twistd.url(0, "/a.txt?x=1"),
        &["-e", "http://ref.example/page", "-A", "agent \"quoted\"/1"],
    );
    curl(&twistd.url(0, "/missing"), &["-A", ""]);
    curl(&twistd.url(0, "/a.txt"), &["-I"]);
    // Buffered, but flushed within a second without further traffic.
    let text = wait_for_file(&log, "three log lines", |t| t.lines().count() >= 3);
    let lines: Vec<&str> = text.lines().collect();
    let strip_time = |line: &str| -> String {
        let start = line.find('[').expect("time");
        let end = line.find(']').expect("time end");
        assert!(is_time_local(&line[start..=end]), "{line}");
        format!("{}[T]{}", &line[..start], &line[end + 1..])
    };
    assert_eq!(
        strip_time(lines[0]),
        "127.0.0.1 - - [T] \"GET /a.txt?x=1 HTTP/1.1\" 200 4 \"http://ref.example/page\" \"agent \\x22quoted\\x22/1\""
    );
    let not_found_len = curl(&twistd.url(0, "/missing"), &[]).body.len();
    assert_eq!(
        strip_time(lines[1]),
        format!("127.0.0.1 - - [T] \"GET /missing HTTP/1.1\" 404 {not_found_len} \"-\" \"-\"")
    );
    assert!(strip_time(lines[2]).contains("\"HEAD /a.txt HTTP/1.1\" 200 0 \"-\" \"curl/"));

    // logrotate moves the file, then SIGUSR1: the next lines go to a new file at the path.
    let rotated = sb.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let mut twistd = twistd;
    twistd.signal(nix::sys::signal::Signal::SIGUSR1);
    twistd.wait_for("SIGUSR1");
    curl(&twistd.url(0, "/a.txt?after=rotation"), &[]);
    let new = wait_for_file(&log, "the line after reopening", |t| {
        t.contains("after=rotation")
    });
    assert_eq!(new.lines().count(), 1, "{new}");
    let old = std::fs::read_to_string(&rotated).expect("rotated log");
    assert!(!old.contains("after=rotation"));
}

/// Requests hyper refuses while parsing (and answers itself) are logged as nginx logs them: the
/// request line as sent, the status, no body; so is a head the client left in the middle of
/// (400, not answered). Only a connection's first request is known by its line: where a later
/// one starts cannot be told from outside hyper, and a client could make text of its own
/// appear as that line (QA forged one behind a long header), so a later one is logged as `-`.
#[test]
fn requests_refused_while_parsing_are_access_logged() {
    let sb = sandbox();
    let log = sb.join("access.log");
    let twistd = start(&sb, &["--logfile".into(), log.display().to_string()]);
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let cases: [(&[u8], u16); 4] = [
        (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /\xff\x01 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /nocolon HTTP/1.1\r\nHost t\r\n\r\n", 400),
        (big.as_bytes(), 431),
    ];
    for (request, status) in cases {
        let answer = raw_request(twistd.addr(0), request);
        assert_eq!(raw_status(&answer), status, "{answer}");
    }
    let answer = raw_request(
        twistd.addr(0),
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /x y z HTTP/1.1\r\n\r\n",
    );
    assert!(answer.contains(" 400 Bad Request"), "{answer}");
    // Half a head, then the client leaves.
    let mut half = std::net::TcpStream::connect(twistd.addr(0)).expect("connect");
    std::io::Write::write_all(&mut half, b"GET /half HTTP/1.1\r\nHost: t\r\n").expect("send");
    half.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut half, &mut rest).expect("read");
    assert!(rest.is_empty(), "nothing is answered: {rest:?}");
    let text = wait_for_file(&log, "seven log lines", |t| t.lines().count() >= 7);
    // Lines come as connections end, which is not the order they were opened in.
    let mut logged: Vec<&str> = text
        .lines()
        .map(|l| {
            let (_, after) = l.split_once("] ").expect("a time");
            after
        })
        .collect();
    logged.sort_unstable();
    let mut expected = [
        "\"GET /a b HTTP/1.1\" 400 0 \"-\" \"-\"",
        "\"GET /\\xFF\\x01 HTTP/1.1\" 400 0 \"-\" \"-\"",
        "\"GET /nocolon HTTP/1.1\" 400 0 \"-\" \"-\"",
        "\"GET /big HTTP/1.1\" 431 0 \"-\" \"-\"",
        "\"GET /a.txt HTTP/1.1\" 200 4 \"-\" \"-\"",
        "\"-\" 400 0 \"-\" \"-\"",
        "\"GET /half HTTP/1.1\" 400 0 \"-\" \"-\"",
    ];
    expected.sort_unstable();
    assert_eq!(logged, expected, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("127.0.0.1 - - [")),
        "{text}"
    );
}

#[test]
fn the_weblog_shows_referred_hits_and_keeps_them_across_a_restart() {
    let sb = sandbox();
    sb.mktap_ok(&[
        "web",
        "--path",
        sb.join("root").to_str().expect("utf-8"),
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--weblog",
        "/weblog",
    ]);
    let twistd = sb.twistd(&["-f", "web.tap"]);
    curl(
        &twistd.url(0, "/a.txt"),
        &["-e", "http://friend.example/<links>"],
    );
    curl(
        &twistd.url(0, "/missing"),
        &["-e", "http://friend.example/broken"],
    );
    curl(&twistd.url(0, "/index.html"), &[]);
    let page = curl(&twistd.url(0, "/weblog"), &[]);
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("http-equiv=\"refresh\""), "{html}");
    assert!(
        html.contains("http://friend.example/&lt;links&gt;"),
        "{html}"
    );
    assert!(html.contains("<td>/a.txt</td>"), "{html}");
    assert!(!html.contains("broken"), "only status 200 counts");
    assert!(
        !html.contains("/index.html"),
        "only hits with a Referer count"
    );
    let (status, _) = twistd.stop();
    assert!(status.success());
    let saved = sb.read("web-shutdown.tap");
    assert!(saved.contains("friend.example"), "{saved}");

    let again = sb.twistd(&["-f", "web-shutdown.tap"]);
    let html = curl(&again.url(0, "/weblog"), &[]).text();
    assert!(
        html.contains("<td>/a.txt</td>"),
        "lost across the restart: {html}"
    );
}

#[test]
fn a_certificate_without_https_is_refused() {
    let sb = sandbox();
    let out = sb.mktap(&[
        "web",
        "--path",
        sb.join("root").to_str().expect("utf-8"),
        "--certificate",
        "cert.pem",
    ]);
    assert_eq!(out.status.code(), Some(78), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("need --https"),
        "{}",
        util::stderr(&out)
    );
}
