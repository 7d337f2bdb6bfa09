//! The web plugin's static side over real HTTP: --ignore-ext, --mime, dotfiles, --add-header,
//! --mount, --user, ranges, conditional requests and compression.

mod util;

use util::{curl, raw_request, raw_status, Sandbox, Twistd};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

fn text(n: usize) -> String {
    (0..n)
        .map(|i| format!("line {i} of some compressible text\n"))
        .collect()
}

/// root/ with a few files, other/ to mount, secret.txt outside both.
fn serve(extra: &[&str]) -> (Sandbox, Twistd) {
    let sb = Sandbox::new();
    sb.write("secret.txt", SECRET);
    sb.write("root/index.html", "<h1>home</h1>\n");
    sb.write("root/about.html", "about us\n");
    sb.write("root/notes.md", "# notes\n");
    sb.write("root/style.css", "body { color: red }\n");
    sb.write("root/digits.txt", "0123456789");
    sb.write("root/big.txt", text(200));
    sb.write("root/app.js", text(100));
    sb.write("root/app.js.gz", "GZIP-BYTES");
    sb.write("root/app.js.br", "BROTLI-BYTES");
    sb.write("root/image.png", vec![0u8; 5000]);
    sb.write("root/.hidden", "dot");
    sb.write("root/.git/config", "[core]");
    sb.write("root/docs/.htpasswd", "user:hash");
    sb.write("root/.well-known/acme-challenge/token", "challenge");
    sb.write("other/doc.txt", "mounted doc\n");
    sb.write("other/sub/deep.txt", "deep\n");
    std::os::unix::fs::symlink("../secret.txt", sb.join("other/escape.txt")).expect("symlink");
    let root = sb.join("root");
    let mount = format!("/doc={}", sb.join("other").display());
    let mut args = vec![
        "web".to_string(),
        "--path".into(),
        root.to_str().expect("utf-8").into(),
        "--port".into(),
        "tcp:0:interface=127.0.0.1".into(),
        "--mount".into(),
        mount,
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let twistd = sb.twistd(&args);
    (sb, twistd)
}

#[test]
fn ignore_ext_finds_the_file_with_the_extension() {
    let (_sb, twistd) = serve(&["--ignore-ext", ".html"]);
    let r = curl(&twistd.url(0, "/about"), &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "about us\n"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(curl(&twistd.url(0, "/about.html"), &[]).status, 200);
    assert_eq!(curl(&twistd.url(0, "/nothing"), &[]).status, 404);
    let (_sb, plain) = serve(&[]);
    assert_eq!(
        curl(&plain.url(0, "/about"), &[]).status,
        404,
        "off by default"
    );
}

#[test]
fn mime_overrides_win_over_the_built_in_table() {
    let (_sb, twistd) = serve(&["--mime", ".md=text/markdown", "--mime", ".CSS=text/plain"]);
    let md = curl(&twistd.url(0, "/notes.md"), &[]);
    assert_eq!(md.header("content-type"), Some("text/markdown"));
    let css = curl(&twistd.url(0, "/style.css"), &[]);
    assert_eq!(css.header("content-type"), Some("text/plain"));
}

#[test]
fn listings_show_the_modified_column() {
    let (_sb, twistd) = serve(&[]);
    let html = curl(&twistd.url(0, "/doc/"), &[]).text();
    assert!(html.contains("<th>Last modified</th>"), "{html}");
    assert!(html.contains(" GMT</td>"), "{html}");
    assert!(html.contains("sub/") && html.contains("doc.txt"));
}

/// A file is no directory: `/about.html/` is 404 (twice, so the second may come from the
/// cache), as the OS and nginx say; a `%` that is no escape is 400.
#[test]
fn a_file_with_a_trailing_slash_and_bad_escapes_are_refused() {
    let (_sb, twistd) = serve(&[]);
    assert_eq!(curl(&twistd.url(0, "/about.html"), &[]).status, 200);
    for _ in 0..2 {
        assert_eq!(curl(&twistd.url(0, "/about.html/"), &[]).status, 404);
    }
    for path in ["/%zz", "/about.html%", "/a%4"] {
        assert_eq!(curl(&twistd.url(0, path), &[]).status, 400, "{path}");
    }
}

/// A file dated in the future (a clock set wrong) is stated as modified now: never later than
/// the response's Date (RFC 9110 §8.8.2.1).
#[test]
fn a_future_modification_time_is_stated_as_now() {
    let (sb, twistd) = serve(&[]);
    let future = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7_258_118_400);
    std::fs::File::options()
        .write(true)
        .open(sb.join("root/about.html"))
        .and_then(|f| f.set_modified(future))
        .expect("set the time");
    let r = curl(&twistd.url(0, "/about.html"), &[]);
    let date = |name: &str| {
        httpdate::parse_http_date(r.header(name).unwrap_or_else(|| panic!("no {name}")))
            .expect("an HTTP date")
    };
    assert!(date("last-modified") <= date("date"), "{:?}", r.headers);
}

#[test]
fn dotfiles_are_404_except_well_known() {
    let (_sb, twistd) = serve(&[]);
    for path in [
        "/.hidden",
        "/.git/config",
        "/.git/",
        "/docs/.htpasswd",
        "/%2ehidden",
    ] {
        let r = curl(&twistd.url(0, path), &[]);
        assert_eq!(r.status, 404, "{path}");
    }
    let r = curl(&twistd.url(0, "/.well-known/acme-challenge/token"), &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "challenge"));
    let listing = curl(&twistd.url(0, "/"), &["-H", "X: y"]);
    assert!(!listing.text().contains(".hidden"));

    let (_sb, open) = serve(&["--serve-dotfiles"]);
    assert_eq!(curl(&open.url(0, "/.hidden"), &[]).text(), "dot");
    assert_eq!(curl(&open.url(0, "/.git/config"), &[]).text(), "[core]");
}

#[test]
fn added_headers_are_on_every_response() {
    let (_sb, twistd) = serve(&[
        "--add-header",
        "X-Frame-Options: DENY",
        "--add-header",
        "Strict-Transport-Security: max-age=60",
    ]);
    for path in ["/", "/missing", "/doc"] {
        let r = curl(&twistd.url(0, path), &[]);
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=60"),
            "{path}"
        );
    }
}

#[test]
fn mounts_serve_another_directory_and_stay_inside_it() {
    let (sb, twistd) = serve(&[]);
    assert_eq!(
        curl(&twistd.url(0, "/doc/doc.txt"), &[]).text(),
        "mounted doc\n"
    );
    assert_eq!(
        curl(&twistd.url(0, "/doc/sub/deep.txt"), &[]).text(),
        "deep\n"
    );
    let r = curl(&twistd.url(0, "/doc"), &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("/doc/")));
    // The root's own files are still there.
    assert_eq!(curl(&twistd.url(0, "/about.html"), &[]).status, 200);
    for path in [
        "/doc/../secret.txt",
        "/doc/%2e%2e/secret.txt",
        "/doc/%2e%2e/%2e%2e/secret.txt",
        "/doc/escape.txt",
        "/doc/sub/../../secret.txt",
        "/doc%2f..%2fsecret.txt",
        "/doc/..%2fsecret.txt",
    ] {
        let answer = raw_request(
            twistd.addr(0),
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(!answer.contains(SECRET), "{path}: {answer}");
        assert!(matches!(raw_status(&answer), 400 | 404), "{path}: {answer}");
        assert!(
            !answer.contains(sb.path().to_str().expect("utf-8")),
            "{path} shows a path"
        );
    }
}

#[test]
fn user_directories_are_only_public_html_of_real_users() {
    let (sb, twistd) = serve(&["--user"]);
    for path in [
        "/~no-such-user-here/",
        "/~nobody/",
        "/~/",
        "/~root/../secret.txt",
        "/~nobody/%2e%2e/%2e%2e/etc/passwd",
    ] {
        let r = curl(&twistd.url(0, path), &[]);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert!(!r.text().contains("root:"), "{path}");
        assert!(!r.text().contains(sb.path().to_str().expect("utf-8")));
    }
    // Without --user, /~name/ is an ordinary (missing) path.
    let (_sb, plain) = serve(&[]);
    assert_eq!(curl(&plain.url(0, "/~nobody/"), &[]).status, 404);
}

#[test]
fn error_pages_never_show_filesystem_paths() {
    let (sb, twistd) = serve(&["--user"]);
    let base = sb.path().to_str().expect("utf-8").to_string();
    for (path, args) in [
        ("/missing", vec![]),
        ("/../x", vec![]),
        ("/doc/missing", vec![]),
        ("/", vec!["-X", "DELETE"]),
        ("/digits.txt", vec!["-r", "100-"]),
        ("/digits.txt", vec!["-H", "If-Match: \"nope\""]),
    ] {
        let r = curl(&twistd.url(0, path), &args);
        assert!(r.status >= 400, "{path}");
        assert!(!r.text().contains(&base), "{path}: {}", r.text());
        assert!(!r.text().contains("/tmp"), "{path}: {}", r.text());
    }
}

#[test]
fn single_ranges_get_206() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "2-5"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(r.header("content-length"), Some("4"));
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "-3"]);
    assert_eq!((r.status, r.text().as_str()), (206, "789"));
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "7-"]);
    assert_eq!(r.header("content-range"), Some("bytes 7-9/10"));
    let full = curl(&twistd.url(0, "/digits.txt"), &[]);
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
}

#[test]
fn a_range_of_a_large_file_is_streamed_exactly() {
    let sb = Sandbox::new();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    sb.write("root/big.bin", &data);
    let root = sb.join("root");
    let twistd = sb.twistd(&[
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--port",
        "tcp:0:interface=127.0.0.1",
    ]);
    let r = curl(&twistd.url(0, "/big.bin"), &["-r", "100000-899999"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 800_000);
    assert!(r.body == data[100_000..900_000], "the range differs");
}

#[test]
fn several_ranges_are_multipart_byteranges() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "0-1,5-6"]);
    assert_eq!(r.status, 206);
    let ctype = r.header("content-type").expect("content-type").to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{ctype}"));
    let body = r.text();
    assert_eq!(
        body,
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 5-6/10\r\n\r\n56\
             \r\n--{boundary}--\r\n"
        )
    );
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[test]
fn unsatisfiable_ranges_get_416_with_the_length() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "10-20"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
}

#[test]
fn overlapping_or_too_many_ranges_get_the_whole_body() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", "0-5,3-8"]);
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    let many: Vec<String> = (0..30).map(|i| format!("{}-{}", i % 10, i % 10)).collect();
    let r = curl(&twistd.url(0, "/digits.txt"), &["-r", &many.join(",")]);
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    let r = curl(
        &twistd.url(0, "/digits.txt"),
        &["-H", "Range: bytes=nonsense"],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn validators_and_conditional_requests() {
    let (_sb, twistd) = serve(&[]);
    let url = twistd.url(0, "/digits.txt");
    let r = curl(&url, &[]);
    let etag = r.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with('"'), "strong: {etag}");
    let modified = r
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();

    let r = curl(&url, &["-H", &format!("If-None-Match: \"other\", {etag}")]);
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.body.is_empty());
    let r = curl(&url, &["-H", &format!("If-Modified-Since: {modified}")]);
    assert_eq!(r.status, 304);
    let r = curl(
        &url,
        &["-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
    );
    assert_eq!(r.status, 200);
    let r = curl(&url, &["-H", "If-None-Match: \"other\""]);
    assert_eq!(r.status, 200);

    let r = curl(&url, &["-H", "If-Match: \"other\""]);
    assert_eq!(r.status, 412);
    let r = curl(&url, &["-H", &format!("If-Match: {etag}")]);
    assert_eq!(r.status, 200);
    let r = curl(
        &url,
        &["-H", "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
    );
    assert_eq!(r.status, 412);
    let r = curl(&url, &["-H", &format!("If-Unmodified-Since: {modified}")]);
    assert_eq!(r.status, 200);

    // If-Range: the range only while the validator still names this file.
    let r = curl(&url, &["-r", "0-1", "-H", &format!("If-Range: {etag}")]);
    assert_eq!((r.status, r.text().as_str()), (206, "01"));
    let r = curl(&url, &["-r", "0-1", "-H", &format!("If-Range: {modified}")]);
    assert_eq!(r.status, 206);
    let r = curl(&url, &["-r", "0-1", "-H", "If-Range: \"stale\""]);
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
}

#[test]
fn precompressed_siblings_are_served_when_accepted() {
    let (_sb, twistd) = serve(&[]);
    let url = twistd.url(0, "/app.js");
    let br = curl(&url, &["-H", "Accept-Encoding: gzip, br"]);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.text(), "BROTLI-BYTES");
    assert_eq!(br.header("content-type"), Some("text/javascript"));
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    let gz = curl(&url, &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.text(), "GZIP-BYTES");
    assert_ne!(
        gz.header("etag"),
        br.header("etag"),
        "each encoding its own ETag"
    );
    let plain = curl(&url, &[]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.text(), text(100));
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    let refused = curl(&url, &["-H", "Accept-Encoding: br;q=0, gzip;q=0"]);
    assert_eq!(refused.header("content-encoding"), None);
}

#[test]
fn compressible_files_are_gzipped_on_the_fly() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/big.txt"), &["--compressed"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.header("etag").is_some_and(|e| e.starts_with("W/")));
    let length: usize = r
        .header("content-length")
        .expect("length")
        .parse()
        .expect("number");
    assert!(length < text(200).len() / 2, "compressed to {length}");
    assert_eq!(r.text(), text(200), "curl decoded it back");
    // Small files, incompressible types and ranges are sent as they are.
    for (path, extra) in [
        ("/style.css", None),
        ("/image.png", None),
        ("/big.txt", Some("0-9")),
    ] {
        let mut args = vec!["--compressed"];
        if let Some(range) = extra {
            args.extend(["-r", range]);
        }
        let r = curl(&twistd.url(0, path), &args);
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{path}");
    }
    let (_sb, off) = serve(&["--no-compress"]);
    let r = curl(&off.url(0, "/big.txt"), &["--compressed"]);
    assert_eq!(r.header("content-encoding"), None);
    // Precompressed files are still used.
    let r = curl(&off.url(0, "/app.js"), &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

/// The headers of a response other than Date, for comparing two answers.
fn headers_but_date(r: &util::Fetched) -> Vec<(String, String)> {
    let mut h: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n != "date")
        .cloned()
        .collect();
    h.sort();
    h
}

/// Waits until the files' timestamps are old enough for web::cache to keep them: mtime and
/// ctime both more than two whole seconds in the past.
fn settled(sb: &Sandbox, files: &[impl AsRef<str>]) {
    use std::os::unix::fs::MetadataExt;
    util::wait_until("the files are old enough to be cached", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        files.iter().all(|f| {
            let meta = std::fs::metadata(sb.join(f.as_ref())).expect("stat");
            meta.mtime().max(meta.ctime()) < now - 2
        })
    });
}

/// Small files are cached once their timestamps are a few seconds old (web::cache); each hit
/// is revalidated by one stat, so every change is seen by the very next request, and a cached
/// answer is the same as the uncached one.
#[test]
fn cached_small_files_are_revalidated_on_every_request() {
    let (sb, twistd) = serve(&[]);
    sb.write("root/a.txt", "version 1");
    sb.write("root/b.txt", "bravo 1");
    sb.write("root/c.txt", "charlie 1");
    sb.write("root/d.txt", "delta 1");
    let url = |p: &str| twistd.url(0, p);
    // Too fresh to be cached: the normal path.
    let fresh = curl(&url("/a.txt"), &[]);
    let fresh_head = curl(&url("/a.txt"), &["--head"]);
    // Settled (the rule wants both timestamps over two whole seconds old), then cached by the
    // first request and served from the cache by the next ones.
    settled(
        &sb,
        &["root/a.txt", "root/b.txt", "root/c.txt", "root/d.txt"],
    );
    for path in ["/a.txt", "/b.txt", "/c.txt", "/d.txt"] {
        for _ in 0..2 {
            assert_eq!(curl(&url(path), &[]).status, 200, "{path}");
        }
    }
    let cached = curl(&url("/a.txt"), &[]);
    assert_eq!(cached.text(), "version 1");
    assert_eq!(headers_but_date(&cached), headers_but_date(&fresh));
    let cached_head = curl(&url("/a.txt"), &["--head"]);
    assert_eq!(
        headers_but_date(&cached_head),
        headers_but_date(&fresh_head)
    );
    let etag = cached.header("etag").expect("an ETag").to_string();
    let r = curl(&url("/a.txt"), &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!((r.status, r.body.len()), (304, 0));

    // Rewritten in place with the same size.
    sb.write("root/a.txt", "version 2");
    assert_eq!(curl(&url("/a.txt"), &[]).text(), "version 2");
    // Replaced by a rename.
    sb.write("b.new", "bravo 2");
    std::fs::rename(sb.join("b.new"), sb.join("root/b.txt")).expect("rename");
    assert_eq!(curl(&url("/b.txt"), &[]).text(), "bravo 2");
    // Replaced by a symlink leaving the root.
    std::fs::remove_file(sb.join("root/c.txt")).expect("remove");
    std::os::unix::fs::symlink("../secret.txt", sb.join("root/c.txt")).expect("symlink");
    let r = curl(&url("/c.txt"), &[]);
    assert_eq!(r.status, 404);
    assert!(!r.text().contains(SECRET));
    // Removed.
    std::fs::remove_file(sb.join("root/d.txt")).expect("remove");
    assert_eq!(curl(&url("/d.txt"), &[]).status, 404);
    // A range takes the normal path, from the same file; an Accept-Encoding sees it too.
    let r = curl(&url("/a.txt"), &["-r", "0-6"]);
    assert_eq!((r.status, r.text().as_str()), (206, "version"));
    let r = curl(&url("/a.txt"), &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(r.text(), "version 2");
}

/// With Accept-Encoding a cached file's answer is the normal path's answer (web::cache):
/// identity or gzipped on the fly alike, and a precompressed sibling that appears, changes or
/// goes away after caching is seen by the very next request.
#[test]
fn cached_small_files_answer_accept_encoding_as_uncached() {
    let (sb, twistd) = serve(&[]);
    sb.write("root/c/small.css", "body { color: blue }\n");
    sb.write("root/c/big.css", text(100));
    sb.write("root/c/pic.png", vec![7u8; 3000]);
    sb.write("root/c/pre.js", text(50));
    sb.write("root/c/pre.js.gz", "PRE-GZ");
    sb.write("root/c/pre.js.br", "PRE-BR");
    let url = |p: &str| twistd.url(0, p);
    let paths = ["/c/small.css", "/c/big.css", "/c/pic.png", "/c/pre.js"];
    let codings = [
        "gzip",
        "br",
        "gzip, br",
        "gzip, deflate, br, zstd",
        "identity",
        "*",
        "*;q=0",
        "gzip;q=0, br",
        "br;q=0, *",
        "",
    ];
    let fetch_all = || {
        let mut all = Vec::new();
        for path in paths {
            for coding in codings {
                let ae = format!("Accept-Encoding: {coding}");
                for head in [false, true] {
                    let mut args = vec!["-H", ae.as_str()];
                    if head {
                        args.push("--head");
                    }
                    let r = curl(&url(path), &args);
                    // (With --head curl writes the head, Date and all, as the body.)
                    let body = if head { Vec::new() } else { r.body.clone() };
                    all.push((path, coding, head, r.status, headers_but_date(&r), body));
                }
            }
        }
        all
    };
    // Too fresh to be cached: the normal path's answers.
    let fresh = fetch_all();
    settled(&sb, &paths.map(|p| format!("root{p}")));
    for path in paths {
        for _ in 0..2 {
            assert_eq!(curl(&url(path), &[]).status, 200, "{path}");
        }
    }
    // Cached (filled above, or by the first of these): the same answers.
    let cached = fetch_all();
    for (f, c) in fresh.iter().zip(&cached) {
        assert_eq!(f, c, "{} with Accept-Encoding: {}, head {}", f.0, f.1, f.2);
    }
    let gz = cached
        .iter()
        .find(|r| r.0 == "/c/big.css" && r.1 == "gzip" && !r.2)
        .expect("fetched");
    assert!(gz.4.contains(&("content-encoding".into(), "gzip".into())));
    let r = curl(&url("/c/big.css"), &["--compressed"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.text(), text(100), "curl decoded the cached gzip back");

    // Siblings appearing, changing and going away after caching.
    let both = ["-H", "Accept-Encoding: gzip, br"];
    sb.write("root/c/big.css.br", "BR-1");
    let r = curl(&url("/c/big.css"), &both);
    assert_eq!(
        (r.header("content-encoding"), r.text().as_str()),
        (Some("br"), "BR-1")
    );
    sb.write("root/c/big.css.br", "BR-2");
    assert_eq!(curl(&url("/c/big.css"), &both).text(), "BR-2");
    sb.write("root/c/big.css.br", "BR-three");
    assert_eq!(curl(&url("/c/big.css"), &both).text(), "BR-three");
    std::fs::remove_file(sb.join("root/c/big.css.br")).expect("remove");
    sb.write("root/c/big.css.gz", "GZ-1");
    let r = curl(&url("/c/big.css"), &both);
    assert_eq!(
        (r.header("content-encoding"), r.text().as_str()),
        (Some("gzip"), "GZ-1")
    );
    std::fs::remove_file(sb.join("root/c/big.css.gz")).expect("remove");
    let r = curl(&url("/c/big.css"), &["--compressed"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.text(), text(100));
    sb.write("root/c/small.css.gz", "SMALL-GZ");
    let r = curl(&url("/c/small.css"), &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(
        (r.header("content-encoding"), r.text().as_str()),
        (Some("gzip"), "SMALL-GZ")
    );
    // Not a sibling for the normal path (a dangling symlink, a directory): the same answers
    // as before they appeared.
    std::fs::remove_file(sb.join("root/c/small.css.gz")).expect("remove");
    std::os::unix::fs::symlink("nowhere", sb.join("root/c/big.css.br")).expect("symlink");
    std::fs::create_dir(sb.join("root/c/big.css.gz")).expect("mkdir");
    let after = fetch_all();
    for (f, a) in fresh.iter().zip(&after) {
        assert_eq!(f, a, "{} with Accept-Encoding: {}, head {}", f.0, f.1, f.2);
    }
}

#[test]
fn files_dated_before_1970_are_served_without_last_modified() {
    use std::time::{Duration, UNIX_EPOCH};
    let (sb, twistd) = serve(&[]);
    let stamp = |name: &str, when| {
        sb.write(&format!("root/old/{name}"), name);
        std::fs::File::options()
            .write(true)
            .open(sb.join(&format!("root/old/{name}")))
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
    };
    stamp(
        "1960.txt",
        UNIX_EPOCH - Duration::from_secs(10 * 365 * 86_400),
    );
    // (ext4 cannot store a time after 2446, so the other end, past 9999, is not tried here.)
    let r = curl(&twistd.url(0, "/old/1960.txt"), &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "1960.txt"));
    assert_eq!(r.header("last-modified"), None);
    assert!(r.header("etag").is_some());
    let since = curl(
        &twistd.url(0, "/old/1960.txt"),
        &["-H", "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT"],
    );
    assert_eq!(since.status, 200);
    let listing = curl(&twistd.url(0, "/old/"), &[]);
    assert_eq!(listing.status, 200);
    assert!(listing.text().contains("1960.txt"));
}
