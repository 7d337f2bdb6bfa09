//! Zero-copy file bodies (sendfile on plain HTTP/1.1, see `web::zerocopy`): large files, ranges,
//! HEAD, pipelining and keep-alive mixing small and large files on one connection, clients
//! that leave mid-body, a file that shrinks while it is sent, and TLS, which keeps the ordinary
//! path.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use util::{curl, Sandbox, Twistd, TIMEOUT};

/// `len` bytes of a pattern with no zero byte and no short period (placeholder bytes, which
/// are zeros, or a chunk sent twice would both show).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 24) as u8).max(1)
        })
        .collect()
}

struct Served {
    sb: Sandbox,
    twistd: Twistd,
    big: Vec<u8>,
    medium: Vec<u8>,
    small: Vec<u8>,
}

/// root/ with big.bin (5 MiB), medium.bin (100 KiB) and small.txt (1 KiB).
fn serve(extra: &[&str]) -> Served {
    let sb = Sandbox::new();
    let big = pattern(5 * 1024 * 1024 + 17, 1);
    let medium = pattern(100 * 1024, 2);
    let small = pattern(1024, 3);
    sb.write("root/big.bin", &big);
    sb.write("root/medium.bin", &medium);
    sb.write("root/small.txt", &small);
    let root = sb.join("root");
    let mut args = vec![
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ];
    args.extend_from_slice(extra);
    let twistd = sb.twistd(&args);
    Served {
        sb,
        twistd,
        big,
        medium,
        small,
    }
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    BufReader::new(stream)
}

/// Reads one response: (head, body), the body by its Content-Length (none after HEAD).
fn read_response(reader: &mut BufReader<TcpStream>, head_request: bool) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read a head line");
        assert!(n > 0, "connection closed inside a head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = content_length(&head);
    let mut body = vec![0; if head_request { 0 } else { len }];
    reader.read_exact(&mut body).expect("read the body");
    (head, body)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .expect("a digest")
        .to_string()
}

#[test]
fn a_large_file_arrives_whole_with_http_11_and_10() {
    let s = serve(&[]);
    let url = s.twistd.url(0, "/big.bin");
    for version in ["--http1.1", "--http1.0"] {
        let r = curl(&url, &[version]);
        assert_eq!(r.status, 200, "{version}");
        let out = s.sb.write("fetched.bin", &r.body);
        assert_eq!(
            r.header("content-length"),
            Some(s.big.len().to_string().as_str())
        );
        assert_eq!(
            sha256(&out),
            sha256(&s.sb.join("root/big.bin")),
            "{version}"
        );
        std::fs::remove_file(&out).expect("remove");
    }
    let r = curl(&s.twistd.url(0, "/medium.bin"), &[]);
    assert!(r.body == s.medium, "medium.bin differs");
}

#[test]
fn single_ranges_of_a_large_file_are_exact() {
    let s = serve(&[]);
    let url = s.twistd.url(0, "/big.bin");
    let len = s.big.len();
    for (range, start, end) in [
        ("1000000-4000000", 1_000_000, 4_000_001),
        ("-3000000", len - 3_000_000, len),
        ("5000000-", 5_000_000, len),
    ] {
        let r = curl(&url, &["-r", range]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{}/{len}", end - 1).as_str())
        );
        assert!(r.body == s.big[start..end], "range {range} differs");
    }
}

#[test]
fn head_and_304_leave_the_connection_in_step() {
    let s = serve(&[]);
    let mut conn = connect(s.twistd.addr(0));
    conn.get_mut()
        .write_all(b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let (head, _) = read_response(&mut conn, true);
    assert_eq!(status(&head), 200);
    assert_eq!(content_length(&head), s.big.len());
    let etag = header(&head, "etag").expect("an ETag").to_string();
    let request = format!("GET /big.bin HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes()).expect("send");
    let (head, body) = read_response(&mut conn, false);
    assert_eq!((status(&head), body.len()), (304, 0));
    conn.get_mut()
        .write_all(
            b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .expect("send");
    let (head, body) = read_response(&mut conn, false);
    assert_eq!(status(&head), 200);
    assert!(body == s.big, "big.bin after HEAD and 304 differs");
    let (_, body) = read_response(&mut conn, false);
    assert!(body == s.small, "small.txt after big.bin differs");
}

#[test]
fn pipelined_small_and_large_files_on_one_connection() {
    let s = serve(&[]);
    let mut conn = connect(s.twistd.addr(0));
    let requests: [(&str, &str, bool); 9] = [
        ("GET", "/small.txt", false),
        ("GET", "/big.bin", false),
        ("GET", "/medium.bin", false),
        ("HEAD", "/big.bin", true),
        ("GET", "/big.bin", false),
        ("GET", "/nope", false),
        ("GET", "/small.txt", false),
        ("GET", "/medium.bin", false),
        ("GET", "/big.bin", false),
    ];
    let mut all = String::new();
    for (method, path, _) in &requests {
        all.push_str(&format!("{method} {path} HTTP/1.1\r\nHost: t\r\n"));
        if *path == "/medium.bin" {
            all.push_str("Range: bytes=100-60099\r\n");
        }
        all.push_str("\r\n");
    }
    conn.get_mut().write_all(all.as_bytes()).expect("send");
    for (method, path, head_request) in requests {
        let (head, body) = read_response(&mut conn, head_request);
        let (want_status, want): (u16, &[u8]) = match (method, path) {
            ("HEAD", _) => (200, &[]),
            (_, "/small.txt") => (200, &s.small),
            (_, "/medium.bin") => (206, &s.medium[100..60_100]),
            (_, "/big.bin") => (200, &s.big),
            _ => {
                assert_eq!(status(&head), 404);
                continue;
            }
        };
        assert_eq!(status(&head), want_status, "{method} {path}");
        assert!(body == want, "{method} {path}: the body differs");
    }
}

#[test]
fn a_client_leaving_mid_body_does_not_disturb_others() {
    let s = serve(&[]);
    let url = s.twistd.url(0, "/big.bin");
    // One client takes the head and a little of the body, then stops reading.
    let mut leaving = connect(s.twistd.addr(0));
    leaving
        .get_mut()
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        leaving.read_line(&mut head).expect("head");
    }
    let mut some = vec![0; 10_000];
    leaving.read_exact(&mut some).expect("some body");
    assert!(some == s.big[..10_000]);
    // Others are served meanwhile, and after it left.
    let r = curl(&url, &[]);
    assert!(
        r.body == s.big,
        "big.bin differs while another client stalls"
    );
    drop(leaving);
    for _ in 0..3 {
        let r = curl(&url, &[]);
        assert!(r.body == s.big, "big.bin differs after a client left");
    }
    let r = curl(&s.twistd.url(0, "/small.txt"), &[]);
    assert!(r.body == s.small);
}

/// Regression guard for the zero-copy invariant: sendfile meets the new end of a file that
/// shrank; the response must end short with the connection closed, never padded with the
/// placeholder's zero bytes. (The file is cut on a page boundary past what socket buffers can
/// hold: bytes already queued reference the page cache, and the kernel zeroes the rest of a
/// page cut in the middle, as it does for nginx.)
#[test]
fn a_file_that_shrinks_while_sent_ends_the_connection_short() {
    let sb = Sandbox::new();
    let data = pattern(48 * 1024 * 1024, 4);
    let path = sb.write("root/huge.bin", &data);
    let root = sb.join("root");
    let twistd = sb.twistd(&[
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]);
    let mut conn = connect(twistd.addr(0));
    conn.get_mut()
        .write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        conn.read_line(&mut head).expect("head");
    }
    assert_eq!(content_length(&head), data.len());
    let cut = 32 * 1024 * 1024;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(cut as u64))
        .expect("truncate");
    let mut body = Vec::new();
    conn.read_to_end(&mut body)
        .expect("read until the server closes");
    assert!(body.len() <= cut, "more than the file's new length arrived");
    assert!(
        body == data[..body.len()],
        "the bytes sent are not the file's"
    );
    // The server goes on.
    std::fs::write(&path, b"again").expect("rewrite");
    assert_eq!(curl(&twistd.url(0, "/huge.bin"), &[]).text(), "again");
}

#[test]
fn tls_serves_large_files_and_ranges_intact() {
    let s_sb = Sandbox::new();
    let big = pattern(3 * 1024 * 1024 + 5, 5);
    s_sb.write("root/big.bin", &big);
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let cert_path = s_sb.write("cert.pem", cert.cert.pem());
    let key_path = s_sb.write("key.pem", cert.key_pair.serialize_pem());
    let root = s_sb.join("root");
    let twistd = s_sb.twistd(&[
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--https",
        "0",
        "--certificate",
        cert_path.to_str().expect("utf-8"),
        "--privkey",
        key_path.to_str().expect("utf-8"),
    ]);
    let port = twistd.addr(1).port();
    let url = format!("https://localhost:{port}/big.bin");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let base = [
        "--cacert",
        cert_path.to_str().expect("utf-8"),
        "--resolve",
        resolve.as_str(),
    ];
    for version in ["--http1.1", "--http2"] {
        let r = curl(&url, &[&base[..], &[version]].concat());
        assert_eq!(r.status, 200, "{version}");
        assert!(r.body == big, "{version}: big.bin differs over TLS");
        let r = curl(
            &url,
            &[&base[..], &[version, "-r", "1000-2000999"]].concat(),
        );
        assert_eq!(r.status, 206, "{version}");
        assert!(
            r.body == big[1000..2_001_000],
            "{version}: the range differs"
        );
    }
    // The plain listener of the same service sends with sendfile.
    let r = curl(&twistd.url(0, "/big.bin"), &[]);
    assert!(r.body == big, "big.bin differs over plain HTTP");
}

#[test]
fn unix_socket_listeners_send_files_with_sendfile_too() {
    let sb = Sandbox::new();
    let big = pattern(3 * 1024 * 1024, 6);
    sb.write("root/big.bin", &big);
    let root = sb.join("root");
    let socket = sb.join("web.sock");
    let listen = format!("unix:{}", socket.display());
    let _twistd = sb.twistd(&[
        "web",
        "--path",
        root.to_str().expect("utf-8"),
        "--listen",
        &listen,
    ]);
    let socket = socket.to_str().expect("utf-8");
    let r = curl("http://t/big.bin", &["--unix-socket", socket]);
    assert!(r.body == big, "big.bin differs over a Unix socket");
    let r = curl(
        "http://t/big.bin",
        &["--unix-socket", socket, "-r", "20000-"],
    );
    assert_eq!(r.status, 206);
    assert!(
        r.body == big[20_000..],
        "the range differs over a Unix socket"
    );
}
