//! The first-cut web plugin over real HTTP: files, HEAD, redirects, listings, errors, keep-alive,
//! and a table of path-traversal attempts that must never reach a file outside the root.

mod util;

use std::os::unix::fs::symlink;

use util::{curl, raw_request, raw_status, Sandbox, Twistd};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

/// A sandbox with `root/` served and `secret.txt` beside it (outside the root).
fn serve(extra: &[&str]) -> (Sandbox, Twistd) {
    let sb = Sandbox::new();
    sb.write("secret.txt", SECRET);
    sb.write("root/index.html", "<h1>home</h1>\n");
    sb.write("root/style.css", "body { color: red }\n");
    sb.write("root/data.unknownext", "???");
    sb.write("root/docs/b.txt", "bee\n");
    sb.write("root/docs/a & <b>.txt", "12345");
    sb.write("root/docs/.hidden", "dot");
    sb.write("root/docs/sub/x.txt", "x");
    sb.write("root/sub dir/file.txt", "spaced\n");
    symlink("../secret.txt", sb.join("root/escape.txt")).expect("symlink out");
    symlink(sb.path(), sb.join("root/escape-dir")).expect("symlink dir out");
    symlink("style.css", sb.join("root/alias.css")).expect("symlink in");
    let root = sb.join("root");
    let mut args = vec![
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--port",
        "tcp:0:interface=127.0.0.1",
    ];
    args.extend_from_slice(extra);
    let twistd = sb.twistd(&args);
    (sb, twistd)
}

#[test]
fn files_have_type_length_and_last_modified() {
    let (sb, twistd) = serve(&[]);
    let css = curl(&twistd.url(0, "/style.css"), &[]);
    assert_eq!(css.status, 200);
    assert_eq!(css.text(), "body { color: red }\n");
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(css.header("content-length"), Some("20"));
    let modified = std::fs::metadata(sb.join("root/style.css"))
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(
        css.header("last-modified"),
        Some(httpdate_of(modified).as_str())
    );
    assert!(css.header("date").is_some() && css.header("server").is_some());

    let unknown = curl(&twistd.url(0, "/data.unknownext"), &[]);
    assert_eq!(
        unknown.header("content-type"),
        Some("application/octet-stream")
    );
    let index = curl(&twistd.url(0, "/"), &[]);
    assert_eq!(
        (index.status, index.text().as_str()),
        (200, "<h1>home</h1>\n")
    );
    assert_eq!(index.header("content-type"), Some("text/html"));
    let spaced = curl(&twistd.url(0, "/sub%20dir/file.txt"), &[]);
    assert_eq!(spaced.text(), "spaced\n");
}

fn httpdate_of(t: std::time::SystemTime) -> String {
    // curl shows the header as sent; rebuild the IMF-fixdate from the file's mtime.
    let out = std::process::Command::new("date")
        .args(["-u", "-d"])
        .arg(format!(
            "@{}",
            t.duration_since(std::time::UNIX_EPOCH)
                .expect("after epoch")
                .as_secs()
        ))
        .arg("+%a, %d %b %Y %H:%M:%S GMT")
        .env("LC_ALL", "C")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mime_type_and_index_options() {
    let (_sb, twistd) = serve(&["--mime-type", "text/plain", "--index", "style.css"]);
    let unknown = curl(&twistd.url(0, "/data.unknownext"), &[]);
    assert_eq!(unknown.header("content-type"), Some("text/plain"));
    let index = curl(&twistd.url(0, "/"), &[]);
    assert_eq!(
        index.text(),
        "body { color: red }\n",
        "the --index name serves the directory"
    );
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let (_sb, twistd) = serve(&[]);
    let answer = raw_request(
        twistd.addr(0),
        b"HEAD /style.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 20"),
        "{head}"
    );
    assert_eq!(body, "", "HEAD sends no body");
}

#[test]
fn directories_without_a_slash_redirect_keeping_the_query() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/docs"), &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/docs/"));
    let r = curl(&twistd.url(0, "/docs?sort=name"), &[]);
    assert_eq!(r.header("location"), Some("/docs/?sort=name"));
    let followed = curl(&twistd.url(0, "/docs"), &["--location"]);
    assert_eq!(followed.status, 200);
}

#[test]
fn listings_are_sorted_escaped_sized_and_hide_dotfiles() {
    let (_sb, twistd) = serve(&[]);
    let page = curl(&twistd.url(0, "/docs/"), &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("<title>Index of /docs/</title>"), "{html}");
    assert!(
        html.contains("a &amp; &lt;b&gt;.txt</a></td><td class=\"size\">5</td>"),
        "{html}"
    );
    assert!(html.contains("href=\"a%20%26%20%3Cb%3E.txt\""), "{html}");
    assert!(!html.contains("<b>"), "no raw markup from file names");
    assert!(!html.contains(".hidden"));
    let sub = html.find("sub/").expect("subdirectory listed");
    let a = html.find("a &amp;").expect("a listed");
    let b = html.find(">b.txt<").expect("b listed");
    assert!(sub < a && a < b, "directories first, then names in order");
    // Every link in the listing works.
    assert_eq!(
        curl(&twistd.url(0, "/docs/a%20%26%20%3Cb%3E.txt"), &[]).text(),
        "12345"
    );
}

#[test]
fn errors_are_plain_and_never_show_paths() {
    let (sb, twistd) = serve(&[]);
    let missing = curl(&twistd.url(0, "/nothing-here.html"), &[]);
    assert_eq!(missing.status, 404);
    let root = sb.path().to_string_lossy().into_owned();
    assert!(!missing.text().contains(&root));
    let post = curl(&twistd.url(0, "/"), &["-X", "POST", "-d", "x=1"]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let (_sb, twistd) = serve(&[]);
    let answer = raw_request(
        twistd.addr(0),
        b"GET /style.css HTTP/1.1\r\nHost: t\r\n\r\nGET /docs/b.txt HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    let css = answer.find("color: red").expect("first");
    let bee = answer.find("bee").expect("second");
    let home = answer.find("<h1>home").expect("third");
    assert!(css < bee && bee < home, "answered in order");
}

#[test]
fn large_files_stream_intact() {
    let sb = Sandbox::new();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    sb.write("root/big.bin", &data);
    let root = sb.join("root");
    let twistd = sb.twistd(&[
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--port",
        "tcp:0:interface=127.0.0.1",
    ]);
    let got = curl(&twistd.url(0, "/big.bin"), &[]);
    assert_eq!(got.header("content-length"), Some("3000000"));
    assert!(got.body == data, "the body differs from the file");
}

#[test]
fn symlinks_inside_the_root_work_and_those_leaving_it_do_not() {
    let (_sb, twistd) = serve(&[]);
    assert_eq!(
        curl(&twistd.url(0, "/alias.css"), &[]).text(),
        "body { color: red }\n"
    );
    for path in [
        "/escape.txt",
        "/escape-dir/secret.txt",
        "/escape-dir/",
        "/escape-dir",
    ] {
        let r = curl(&twistd.url(0, path), &[]);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains(SECRET), "{path} leaked the secret");
    }
}

/// Request paths that try to leave a root, each relative to where a route starts.
const ATTEMPTS: [&str; 44] = [
    "/../secret.txt",
    "/../../secret.txt",
    "/docs/../../secret.txt",
    "/docs/sub/../../../secret.txt",
    "/./../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt",
    "/%2e%2E/secret.txt",
    "/.%2e/secret.txt",
    "/%2e./secret.txt",
    "/docs/%2e%2e/%2e%2e/secret.txt",
    "/..%2fsecret.txt",
    "/..%2Fsecret.txt",
    "/%2e%2e%2fsecret.txt",
    "/%2e%2e%2Fsecret.txt",
    "/docs%2f..%2f..%2fsecret.txt",
    "/..%5csecret.txt",
    "/..%5Csecret.txt",
    "/%2e%2e%5csecret.txt",
    "/..\\secret.txt",
    "/docs\\..\\..\\secret.txt",
    "/%252e%252e/secret.txt",
    "/%25%32%65%25%32%65/secret.txt",
    "/..%00/secret.txt",
    "/secret.txt%00.html",
    "/%00",
    "/docs/%00../secret.txt",
    "/%c0%ae%c0%ae/secret.txt",
    "/%c0%af../secret.txt",
    "/%e0%80%ae%e0%80%ae/secret.txt",
    "/..;/secret.txt",
    "/....//secret.txt",
    "/.../secret.txt",
    "//../secret.txt",
    "/docs//..//..//secret.txt",
    "/%2f%2e%2e%2fsecret.txt",
    "/%2f../secret.txt",
    "/escape.txt",
    "/escape-dir/secret.txt",
    "/escape-dir/../secret.txt",
    "/docs/../escape.txt",
    "/%65scape.txt",
    "/escape-dir%2fsecret.txt",
    "/",
];

fn attempt(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = raw_request(addr, request.as_bytes());
    (raw_status(&answer), answer)
}

/// Requests that try to leave the root. Each must get 400 or 404, and never the secret.
#[test]
fn path_traversal_table() {
    let (_sb, twistd) = serve(&[]);
    for path in ATTEMPTS {
        let (status, answer) = attempt(twistd.addr(0), "t", path);
        assert!(
            !answer.contains(SECRET),
            "{path} leaked the secret:\n{answer}"
        );
        if path == "/" {
            assert_eq!(status, 200, "the control request works");
        } else {
            assert!(status == 400 || status == 404, "{path} gave {status}");
        }
    }
    // The service keeps serving after all of that.
    assert_eq!(curl(&twistd.url(0, "/style.css"), &[]).status, 200);
}

/// The same table below every other kind of route: a mount, a user directory, a CGI
/// directory, and a virtual host. Each of those roots holds the same traps (`escape.txt`,
/// `escape-dir`) as the main root.
#[test]
fn path_traversal_table_on_every_route() {
    let sb = Sandbox::new();
    sb.write("secret.txt", SECRET);
    sb.write("root/index.html", "home");
    for dir in ["mounted", "cgi-bin", "vhost"] {
        sb.write(&format!("{dir}/docs/sub/x.txt"), "x");
        symlink("../secret.txt", sb.join(&format!("{dir}/escape.txt"))).expect("symlink");
        symlink(sb.path(), sb.join(&format!("{dir}/escape-dir"))).expect("symlink dir");
    }
    sb.write("vhost/index.html", "vhost home");
    let args = [
        "web".to_string(),
        "--path".into(),
        sb.join("root").display().to_string(),
        "--port".into(),
        "tcp:0:interface=127.0.0.1".into(),
        "--mount".into(),
        format!("/doc={}", sb.join("mounted").display()),
        "--cgi".into(),
        format!("/cgis={}", sb.join("cgi-bin").display()),
        "--processor".into(),
        ".txt=/bin/cat".into(),
        "--vhost".into(),
        format!("example.org={}", sb.join("vhost").display()),
        "--user".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let twistd = sb.twistd(&args);
    let mut tried = 0;
    for (host, prefix) in [
        ("t", "/doc"),
        ("t", "/cgis"),
        ("t", "/~root"),
        ("t", "/~nobody"),
        ("example.org", ""),
        ("EXAMPLE.ORG:80", ""),
    ] {
        for path in ATTEMPTS.iter().filter(|p| **p != "/") {
            let full = format!("{prefix}{path}");
            let (status, answer) = attempt(twistd.addr(0), host, &full);
            tried += 1;
            assert!(
                !answer.contains(SECRET),
                "{host} {full} leaked the secret:\n{answer}"
            );
            assert!(
                status == 400 || status == 404,
                "{host} {full} gave {status}:\n{answer}"
            );
        }
    }
    assert!(tried >= 6 * 40);
    let vhost = attempt(twistd.addr(0), "example.org", "/");
    assert!(vhost.1.ends_with("vhost home"), "the control request works");
}

#[test]
fn absolute_form_request_targets_are_confined_too() {
    let (_sb, twistd) = serve(&[]);
    let answer = raw_request(
        twistd.addr(0),
        b"GET http://t/%2e%2e/secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(!answer.contains(SECRET));
    assert!(matches!(raw_status(&answer), 400 | 404));
}
