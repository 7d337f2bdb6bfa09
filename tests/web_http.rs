//! The web plugin's HTTP layer over real connections: headers every response carries, the
//! limits (timeouts, head and body sizes, the connection cap), pipelining, chunked bodies,
//! `Expect: 100-continue`, and the request-smuggling shapes.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use util::{curl, raw_request, raw_status, Sandbox, Twistd, TIMEOUT};

fn serve(extra: &[&str]) -> (Sandbox, Twistd) {
    let sb = Sandbox::new();
    sb.write("root/index.html", "<h1>home</h1>\n");
    sb.write("root/a.txt", "aaa\n");
    sb.write("root/secret-target.txt", "SMUGGLED\n");
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

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream
}

/// Reads one response head (through the blank line) from a buffered stream.
fn read_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read a head line");
        assert!(n > 0, "connection closed inside a head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
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

#[test]
fn every_response_has_server_and_date() {
    let (_sb, twistd) = serve(&[]);
    for path in ["/", "/missing"] {
        let r = curl(&twistd.url(0, path), &[]);
        assert!(
            r.header("server")
                .is_some_and(|s| s.starts_with("taphost/")),
            "{path}: {:?}",
            r.headers
        );
        assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    }
}

#[test]
fn a_slow_request_head_is_cut_at_the_header_timeout() {
    let (_sb, twistd) = serve(&["--header-timeout", "1", "--keepalive-timeout", "60"]);
    let mut stream = connect(twistd.addr(0));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .expect("send part of a head");
    // The server closes the connection by itself; read_to_end returns at its EOF (the
    // read timeout is only the test's safety net).
    let mut answer = Vec::new();
    let result = stream.read_to_end(&mut answer);
    assert!(result.is_ok(), "the server did not close: {result:?}");
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let (_sb, twistd) = serve(&["--keepalive-timeout", "1", "--header-timeout", "60"]);
    let mut stream = connect(twistd.addr(0));
    stream
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let result = stream.read_to_end(&mut answer);
    assert!(
        result.is_ok(),
        "the idle connection stayed open: {result:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("aaa\n"), "the answer came whole first");
}

/// A client that asks for a large file and stops reading holds no connection for ever: with
/// no byte moved for the keep-alive timeout, it is dropped (nginx's send_timeout).
#[test]
fn a_client_that_stops_reading_is_dropped() {
    let sb = Sandbox::new();
    let root = sb.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    const SIZE: u64 = 256 << 20;
    std::fs::File::create(root.join("big.bin"))
        .and_then(|f| f.set_len(SIZE))
        .expect("a big (sparse) file");
    #[rustfmt::skip]
    let mut twistd = sb.twistd(&[
        "web", "--path", root.to_str().expect("utf-8"), "--port", "tcp:0:interface=127.0.0.1",
        "--keepalive-timeout", "1",
    ]);
    let mut stream = connect(twistd.addr(0));
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &4096)
        .expect("a small receive buffer");
    stream
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    // Nothing is read until the server has given up. (Reading what the kernel still holds
    // would take minutes through a 4 KiB window, so the log is the witness.)
    let closed = twistd.wait_for("no byte moved for 1s; connection closed");
    assert!(closed.contains("127.0.0.1"), "{closed}");
    drop(stream);
    std::fs::write(root.join("small.txt"), "still serving\n").expect("write");
    assert_eq!(
        curl(&twistd.url(0, "/small.txt"), &[]).text(),
        "still serving\n"
    );
}

#[test]
fn a_head_past_the_limit_gets_431() {
    let (_sb, twistd) = serve(&["--max-head-size", "8192"]);
    let big = "x".repeat(9000);
    let answer = raw_request(
        twistd.addr(0),
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(raw_status(&answer), 431, "{answer}");
    // Under the limit is fine.
    let small = "x".repeat(4000);
    let answer = raw_request(
        twistd.addr(0),
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {small}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(raw_status(&answer), 200);
}

#[test]
fn a_body_past_the_limit_gets_413_and_the_connection_closes() {
    let (_sb, twistd) = serve(&["--max-body-size", "100"]);
    // Announced too large: refused before reading it.
    let answer = raw_request(
        twistd.addr(0),
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "closed after: {answer}"
    );
    // Chunked, found too large while reading.
    let chunk = "y".repeat(150);
    let answer = raw_request(
        twistd.addr(0),
        format!(
            "GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
        .as_bytes(),
    );
    assert_eq!(raw_status(&answer), 413, "{answer}");
    // Within the limit: served.
    let answer = raw_request(
        twistd.addr(0),
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

#[test]
fn past_the_connection_cap_new_connections_wait_then_are_served() {
    let (_sb, twistd) = serve(&["--max-connections", "1"]);
    let mut first = connect(twistd.addr(0));
    first
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(first.try_clone().expect("clone"));
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"));
    // The first connection stays open, holding the only permit.
    let mut second = connect(twistd.addr(0));
    second
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let early = second.read(&mut byte);
    assert!(
        early.is_err(),
        "the second connection was served while the first held the cap: {early:?}"
    );
    drop(reader);
    drop(first);
    second.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut answer = Vec::new();
    second
        .read_to_end(&mut answer)
        .expect("served once the first left");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_sb, twistd) = serve(&[]);
    let answer = raw_request(
        twistd.addr(0),
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "404", "200"], "{answer}");
    assert!(answer.find("aaa").expect("first") < answer.find("<h1>home").expect("last"));
}

#[test]
fn chunked_request_bodies_are_read_and_the_connection_goes_on() {
    let (_sb, twistd) = serve(&[]);
    let answer = raw_request(
        twistd.addr(0),
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (_sb, twistd) = serve(&[]);
    let mut stream = connect(twistd.addr(0));
    stream
        .write_all(
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .expect("send head");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let interim = read_head(&mut reader);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(b"hello").expect("send body");
    let head = read_head(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = vec![0; content_length(&head)];
    reader.read_exact(&mut body).expect("body");
    assert_eq!(body, b"aaa\n");
}

/// Each shape must be refused with 400 and the connection closed, so that a second request
/// hidden in the first one's body is never answered.
#[test]
fn request_smuggling_shapes_are_refused() {
    let (_sb, twistd) = serve(&[]);
    let hidden = "GET /secret-target.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    let shapes = [
        (
            "two different Content-Lengths",
            format!("POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}", hidden.len()),
        ),
        (
            "an obs-folded header",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n{hidden}"),
        ),
        (
            "an obs-folded Content-Length",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n 5\r\n\r\n{hidden}"),
        ),
        (
            "a chunk size that is not hex",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{hidden}\r\n0\r\n\r\n"),
        ),
        (
            "a chunk size that overflows",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{hidden}\r\n0\r\n\r\n"),
        ),
        (
            "a negative chunk size",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{hidden}\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding that does not end in chunked",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n{hidden}"),
        ),
        (
            "a space before the colon",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\n{hidden}"),
        ),
        (
            "a Content-Length that is not a number",
            format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\n{hidden}"),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("GET /a.txt HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
        ),
        // RFC 9112 §3.2: exactly one Host, and a host in it.
        ("no Host in HTTP/1.1", format!("GET /a.txt HTTP/1.1\r\n\r\n{hidden}")),
        (
            "two Hosts",
            format!("GET /a.txt HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n{hidden}"),
        ),
        (
            "a Host that is no host",
            format!("GET /a.txt HTTP/1.1\r\nHost: a b/c\r\n\r\n{hidden}"),
        ),
        (
            "chunked twice",
            format!("POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
        ),
        // What the server cannot make sense of ends the connection: a tunnel's bytes are
        // never read as a request.
        (
            "CONNECT",
            format!("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n{hidden}"),
        ),
        ("a path without its slash", format!("GET a.txt HTTP/1.1\r\nHost: t\r\n\r\n{hidden}")),
    ];
    for (what, request) in &shapes {
        let answer = raw_request(twistd.addr(0), request.as_bytes());
        assert_eq!(raw_status(&answer), 400, "{what}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.").count(),
            1,
            "{what}: more than one answer: {answer}"
        );
        assert!(!answer.contains("SMUGGLED"), "{what}: {answer}");
    }
    // A coding this server does not decode is 501 (RFC 9112 §6.1), and the connection ends.
    let answer = raw_request(
        twistd.addr(0),
        format!("POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{hidden}").as_bytes(),
    );
    assert_eq!(raw_status(&answer), 501, "{answer}");
    assert!(!answer.contains("SMUGGLED"), "{answer}");
    // HTTP/1.0 needs no Host; an IPv6 literal with a port is a host.
    for request in [
        "GET /a.txt HTTP/1.0\r\n\r\n",
        "GET /a.txt HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_request(twistd.addr(0), request.as_bytes());
        assert_eq!(raw_status(&answer), 200, "{request:?}: {answer}");
    }
}

/// Content-Length with Transfer-Encoding: hyper decodes the body as chunked (Transfer-Encoding
/// wins, RFC 9112 §6.1) and closes the connection after answering, so a request hidden after
/// the chunked body is never read.
#[test]
fn content_length_with_transfer_encoding_never_reaches_a_hidden_request() {
    let (_sb, twistd) = serve(&[]);
    let hidden = "GET /secret-target.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    for request in [
        format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
        format!("GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{hidden}"),
    ] {
        let answer = raw_request(twistd.addr(0), request.as_bytes());
        assert_eq!(answer.matches("HTTP/1.").count(), 1, "{answer}");
        assert!(!answer.contains("SMUGGLED"), "{answer}");
    }
}
