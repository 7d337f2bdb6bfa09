//! The admin shell over real sockets (and once through the real `telnet` client on a pty):
//! login and lockout, hidden passwords, every command and its errors, live changes to the
//! running application, and saving it.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use util::{curl, stderr, Sandbox, Twistd, TIMEOUT};

const PASSWORD: &str = "s3cret-Horse-battery";
const LOOPBACK0: &str = "tcp:0:interface=127.0.0.1";

/// The start of the Python scripts that drive a program on a pty: `until(text)` reads the
/// terminal (into `seen`) until `text` shows, bounded; the script sets `fd` to the pty master.
const PTY_PRELUDE: &str = r#"
import os, pty, select, sys, termios, time
seen = b""
def until(needle, limit=20):
    global seen
    end = time.time() + limit
    while needle.encode() not in seen:
        if time.time() > end:
            sys.stderr.write("timeout waiting for %r; saw %r\n" % (needle, seen)); sys.exit(2)
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
"#;

/// Removes telnet commands (IAC WILL/WONT/DO/DONT x) from what the server sent.
fn visible(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == 0xff && i + 2 < raw.len() && (0xfb..=0xfe).contains(&raw[i + 1]) {
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that talks to the shell as nc would (plain lines), keeping every byte it got.
struct Client {
    stream: TcpStream,
    raw: Vec<u8>,
    /// How much of `raw` the last read_until consumed.
    mark: usize,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the shell");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Client {
            stream,
            raw: Vec::new(),
            mark: 0,
        }
    }

    /// Reads until the visible text after the last mark contains `needle`; returns that text.
    fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = visible(&self.raw[self.mark..]);
            if let Some(end) = text.find(needle) {
                // Move the mark past the needle (in raw bytes: find it again there).
                let raw_end = find_raw_end(&self.raw[self.mark..], needle).expect("needle in raw");
                self.mark += raw_end;
                return text[..end + needle.len()].to_string();
            }
            assert!(Instant::now() < deadline, "no '{needle}' in {text:?}");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the shell closed the connection before '{needle}'; got {text:?}"),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading '{needle}': {e}; got {text:?}"),
            }
        }
    }

    /// Reads until these bytes (a telnet command, say) have come, anywhere.
    fn read_raw_until(&mut self, bytes: &[u8]) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.raw.windows(bytes.len()).any(|w| w == bytes) {
            assert!(Instant::now() < deadline, "no {bytes:?} in {:?}", self.raw);
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the shell closed the connection before {bytes:?}"),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading {bytes:?}: {e}; got {:?}", self.raw),
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
    }

    /// Reads what is left until the server closes the connection.
    fn rest(&mut self) -> String {
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
        self.raw.extend_from_slice(&rest);
        visible(&self.raw[self.mark..])
    }

    fn login(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr);
        client.read_until("username: ");
        client.send("admin");
        client.read_until("password: ");
        client.send(PASSWORD);
        client.read_until("web> ");
        client
    }

    /// Runs a command and returns its output, without the next prompt.
    fn run(&mut self, command: &str) -> String {
        self.send(command);
        let out = self.read_until("\r\nweb> ");
        out.trim_end_matches("web> ").trim().replace("\r\n", "\n")
    }
}

fn find_raw_end(raw: &[u8], needle: &str) -> Option<usize> {
    raw.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .map(|p| p + needle.len())
}

/// Adds the admin shell to `web.tap` (loopback, port 0), its password `PASSWORD` in pw.txt.
fn append_shell(sb: &Sandbox) {
    sb.write("pw.txt", format!("{PASSWORD}\n"));
    sb.mktap_ok(&[
        "--append",
        "web.tap",
        "telnet",
        "--port",
        LOOPBACK0,
        "--password-file",
        "pw.txt",
    ]);
}

/// A web service and a shell in one application; returns (sandbox, twistd) with addrs
/// [web, telnet].
fn app() -> (Sandbox, Twistd) {
    let sb = Sandbox::new();
    sb.write("www/index.html", "<h1>one</h1>\n");
    sb.write("www2/index.html", "<h1>two</h1>\n");
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    append_shell(&sb);
    let twistd = sb.twistd(&["-f", "web.tap"]);
    assert_eq!(twistd.addrs.len(), 2);
    (sb, twistd)
}

#[test]
fn mktap_refuses_a_shell_without_a_password_and_stores_only_a_hash() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "x");
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let before = sb.read("web.tap");
    let out = sb.mktap(&["--append", "web.tap", "telnet"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("no password"), "{}", stderr(&out));
    assert_eq!(sb.read("web.tap"), before);

    sb.write("pw.txt", format!("{PASSWORD}\n"));
    sb.mktap_ok(&["--append", "web.tap", "telnet", "--password-file", "pw.txt"]);
    let tap = sb.read("web.tap");
    assert!(!tap.contains(PASSWORD), "the password is in the tap");
    assert!(tap.contains("$argon2id$"), "{tap}");
    assert!(
        tap.contains("tcp:4040:interface=127.0.0.1"),
        "the default endpoint is loopback: {tap}"
    );
    let mode = std::fs::metadata(sb.join("web.tap"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a tap holding a hash is private");

    let out = sb.mktap(&["--append", "web.tap", "telnet", "--password"]);
    assert_eq!(out.status.code(), Some(78), "no terminal to ask on");
    assert!(stderr(&out).contains("--password-file"), "{}", stderr(&out));
}

#[test]
fn the_password_is_never_echoed_and_input_is_hidden_while_typed() {
    let (_sb, twistd) = app();
    let mut client = Client::login(twistd.addr(1));
    client.send("quit");
    assert!(client.rest().contains("bye"));
    let raw = client.raw.clone();
    let text = visible(&raw);
    assert!(!text.contains(PASSWORD), "the password came back: {text:?}");
    // WILL ECHO and WILL SGA before the password prompt, WONT after it.
    let prompt = find_raw_end(&raw, "password: ").expect("prompt");
    let before = &raw[..prompt];
    assert!(
        before.windows(3).any(|w| w == [0xff, 0xfb, 0x01]),
        "no WILL ECHO"
    );
    assert!(
        before.windows(3).any(|w| w == [0xff, 0xfb, 0x03]),
        "no WILL SGA"
    );
    assert!(
        raw[prompt..].windows(3).any(|w| w == [0xff, 0xfc, 0x01]),
        "no WONT ECHO"
    );
}

#[test]
fn three_failures_close_the_connection_and_are_logged() {
    let (_sb, twistd) = app();
    let mut client = Client::connect(twistd.addr(1));
    for attempt in 1..=3 {
        client.read_until("username: ");
        client.send("admin");
        client.read_until("password: ");
        client.send(&format!("wrong-{attempt}"));
        if attempt < 3 {
            client.read_until("login incorrect");
        }
    }
    let rest = client.rest();
    assert!(rest.contains("too many failures"), "{rest:?}");
    let mut twistd = twistd;
    twistd.wait_for("failed login for user 'admin' from 127.0.0.1 (try 3 of 3)");
    // Unknown users fail the same way, and nc-style bare LF lines work.
    let mut nc = Client::connect(twistd.addr(1));
    nc.read_until("username: ");
    nc.stream.write_all(b"mallory\n").expect("send");
    nc.read_until("password: ");
    nc.stream
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("send");
    nc.read_until("login incorrect");
}

#[test]
fn every_command_answers_and_errors_change_nothing() {
    let (_sb, twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    let help = shell.run("help");
    for command in [
        "status",
        "services",
        "show",
        "add",
        "remove",
        "stop",
        "start",
        "set",
        "listen",
        "unlisten",
        "save",
        "log level",
        "shutdown",
        "quit",
    ] {
        assert!(
            help.contains(command),
            "{command} missing from help: {help}"
        );
    }
    let status = shell.run("status");
    assert!(status.starts_with("application web, up "), "{status}");
    assert!(
        status.contains("2 service(s) (2 running)") && status.contains("memory "),
        "{status}"
    );
    let services = shell.run("ports");
    assert!(
        services.contains("web ") && services.contains("telnet "),
        "{services}"
    );
    assert_eq!(services.matches("running").count(), 2, "{services}");
    let show = shell.run("show web");
    assert!(
        show.contains("\"path\": \"www\"") && show.contains("listen:"),
        "{show}"
    );

    for (command, expected) in [
        ("frobnicate", "error: unknown command 'frobnicate'"),
        ("show nosuch", "error: no service named 'nosuch'"),
        ("show", "error: wrong arguments for 'show'"),
        ("set web colour blue", "unknown field `colour`"),
        ("set web path /no/such/dir", "--path /no/such/dir"),
        ("add gopher", "unknown plugin 'gopher'"),
        (
            "add web --path www --port tcpp:1",
            "unknown endpoint type 'tcpp'",
        ),
        (
            "remove telnet",
            "error: removing 'telnet' from its own shell",
        ),
        ("stop telnet", "error: stopping 'telnet' from its own shell"),
        (
            "listen telnet tcp:0",
            "error: restarting 'telnet' from its own shell",
        ),
        ("start web", "error: service 'web' is already running"),
        (
            "unlisten web tcp:1:interface=127.0.0.1",
            "does not listen on",
        ),
        ("save ../evil", "error: tag '../evil'"),
        ("log level not=a=filter", "error: bad log level"),
        ("show \"web", "error: unbalanced quotes"),
    ] {
        let out = shell.run(command);
        assert!(out.contains(expected), "{command}: {out}");
        assert_eq!(out.lines().count(), 1, "{command}: one line: {out}");
    }
    // Nothing changed.
    assert_eq!(shell.run("ports"), services);
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "<h1>one</h1>\n");
    assert!(shell
        .run("log level debug")
        .contains("log level is now debug"));
    assert!(shell
        .run("log level info, web=debug")
        .contains("log level is now info, web=debug"));
    assert!(shell
        .run("log level info")
        .contains("log level is now info"));
    // A list that does not parse is refused, not stored as text.
    assert_eq!(
        shell.run("set web index [a.html]"),
        "error: web.index: [a.html]: not a JSON value (expected value at line 1 column 2)"
    );
}

#[test]
fn add_stop_start_remove_a_web_service_live() {
    let (_sb, mut twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    let added = shell.run(&format!(
        "add web --name extra --path www2 --listen {LOOPBACK0}"
    ));
    let addr = added
        .strip_prefix("added extra: listening on ")
        .unwrap_or_else(|| panic!("{added}"))
        .trim();
    assert_eq!(
        curl(&format!("http://{addr}/"), &[]).text(),
        "<h1>two</h1>\n"
    );
    let services = shell.run("services");
    assert!(services.contains("extra"), "{services}");

    assert_eq!(shell.run("stop extra"), "stopped extra");
    assert!(
        TcpStream::connect(addr).is_err(),
        "a stopped service closes its port"
    );
    assert!(shell.run("services").contains("stopped"));
    // A change to a stopped service waits for its start, and says so.
    assert_eq!(
        shell.run("set extra path www"),
        "extra.path changed; extra is stopped and starts with it"
    );
    assert_eq!(shell.run("start extra"), "started extra");
    // What a service started from the shell logs is its own, not the shell's.
    let listening = twistd.wait_for("listening on");
    assert!(listening.contains("[extra] listening on"), "{listening}");
    assert_eq!(shell.run("remove extra"), "removed extra");
    assert!(!shell.run("services").contains("extra"));

    // A second add without --name gets web-2.
    let added = shell.run(&format!("add web --path www2 --port {LOOPBACK0}"));
    assert!(
        added.starts_with("added web-2: listening on 127.0.0.1:"),
        "{added}"
    );
}

/// After root is given up, a port below 1024 could not be bound again: `stop` keeps its
/// socket open (connections wait in the kernel's queue) and `start` serves it again.
/// A service the shell restarts logs under its own name, not the shell's, from the start: its
/// aliases file is read again while the new instance is built.
#[test]
fn what_a_service_logs_while_the_shell_restarts_it_is_its_own() {
    let sb = Sandbox::new();
    sb.write("aliases", "postmaster: alice\npostmaster: alice\n");
    #[rustfmt::skip]
    sb.mktap_ok(&[
        "-n", "web", "mail", "-d", "example.com=md", "-u", "alice=wonderland",
        "-A", "aliases", "-s", LOOPBACK0, "--no-pop3",
    ]);
    append_shell(&sb);
    let mut twistd = sb.twistd(&["-f", "web.tap"]);
    let first = twistd.logged("is given again");
    assert!(first.contains("[mail] warning: --aliases"), "{first}");
    let mut shell = Client::login(twistd.addr(1));
    let added = shell.run(&format!("listen mail {LOOPBACK0} pop3"));
    assert!(added.starts_with("mail listens on"), "{added}");
    let again = twistd.wait_for("is given again");
    assert!(again.contains("[mail] warning: --aliases"), "{again}");
}

#[test]
fn stop_and_start_keep_a_port_below_1024_after_dropping_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to bind below 1024 and switch user");
        return;
    }
    let sb = Sandbox::new();
    sb.write("www/index.html", "<h1>low</h1>\n");
    for dir in [sb.path().to_path_buf(), sb.join("www")] {
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(sb.join("www/index.html"), PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let port = (900..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let low = format!("tcp:{port}:interface=127.0.0.1");
    sb.mktap_ok(&["-u", "nobody", "web", "--path", "www", "--port", &low]);
    append_shell(&sb);
    let twistd = sb.twistd(&["-f", "web.tap"]);
    let mut shell = Client::login(twistd.addr(1));
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(curl(&url, &[]).text(), "<h1>low</h1>\n");

    let stopped = shell.run("stop web");
    assert_eq!(
        stopped,
        format!(
            "stopped web; {low} stays open (this process could not bind it again): \
             connections wait until start"
        )
    );
    assert_eq!(shell.run("start web"), "started web");
    assert_eq!(curl(&url, &[]).text(), "<h1>low</h1>\n");
    // A port it can bind again is closed at stop, as before.
    let added = shell.run(&format!(
        "add web --name high --path www --port {LOOPBACK0}"
    ));
    assert!(added.starts_with("added high"), "{added}");
    assert_eq!(shell.run("stop high"), "stopped high");
}

/// Mail's listeners speak a protocol each (`protocols` pairs with `listen`): `unlisten` takes
/// the protocol with the endpoint (POP3 off), `listen` needs one.
#[test]
fn mail_endpoints_change_with_their_protocols() {
    let sb = Sandbox::new();
    #[rustfmt::skip]
    sb.mktap_ok(&[
        "-n", "web", "mail", "-d", "example.com=md", "-u", "alice=wonderland",
        "-s", LOOPBACK0, "-p", LOOPBACK0,
    ]);
    append_shell(&sb);
    let twistd = sb.twistd(&["--shutdown-timeout", "60", "-f", "web.tap"]);
    let (smtp, pop3) = (twistd.addr(0), twistd.addr(1));
    let mut shell = Client::login(twistd.addr(2));
    let greeting = |addr: SocketAddr| {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).expect("greeting");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(greeting(pop3).starts_with("+OK"));

    for (command, expected) in [
        (
            format!("listen mail {LOOPBACK0}"),
            "error: mail: say what the endpoint speaks: smtp, pop3 or pop3s",
        ),
        (
            format!("listen mail {LOOPBACK0} imap"),
            "error: mail: unknown protocol 'imap'",
        ),
        (
            format!("listen telnet {LOOPBACK0} smtp"),
            "error: restarting 'telnet' from its own shell",
        ),
    ] {
        let out = shell.run(&command);
        assert!(out.starts_with(expected), "{command}: {out}");
    }

    // Both are tcp:0: `services` shows where each listens, and that address names one.
    let services = shell.run("services");
    assert!(
        services.contains(&format!("tcp:0:interface=127.0.0.1 ({pop3})")),
        "{services}"
    );
    // POP3 off: its port closes, SMTP goes on, and the config says so.
    let off = shell.run(&format!("unlisten mail {pop3}"));
    assert!(off.starts_with("mail no longer listens on"), "{off}");
    assert!(TcpStream::connect(pop3).is_err(), "POP3's port is closed");
    assert!(greeting(smtp).starts_with("220"));
    let show = shell.run("show mail");
    let protocols: String = show
        .split_once("\"protocols\": [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split_whitespace().collect())
        .unwrap_or_else(|| panic!("{show}"));
    assert_eq!(protocols, r#""smtp","#);
    // The last endpoint stays: closing it is stopping the service.
    let last = shell.run(&format!("unlisten mail {smtp}"));
    assert_eq!(
        last,
        format!("error: {smtp} is mail's only endpoint; to close it, stop or remove mail")
    );
    assert!(greeting(smtp).starts_with("220"));

    // A change that restarts mail cuts no session: one in the middle of a message finishes
    // on the old instance while the new one already serves (nginx's reload), even with a
    // long drain deadline that would otherwise hold the shell's answer.
    let mut session = TcpStream::connect(smtp).expect("connect");
    session.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut replies = std::io::BufReader::new(session.try_clone().expect("clone"));
    let mut reply = |expect: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut replies, &mut line).expect("a reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(line.starts_with(expect), "{line:?}, expected {expect}");
    };
    reply("220");
    for (command, expect) in [
        ("EHLO client.test", "250"),
        ("MAIL FROM:<a@remote.test>", "250"),
        ("RCPT TO:<alice@example.com>", "250"),
        ("DATA", "354"),
    ] {
        session
            .write_all(format!("{command}\r\n").as_bytes())
            .expect("send");
        reply(expect);
    }
    session
        .write_all(b"Subject: across a restart\r\n\r\nfirst half\r\n")
        .expect("send");
    // And back, on a new port.
    let on = shell.run(&format!("listen mail {LOOPBACK0} pop3"));
    let addrs = on
        .split_once("now listening on ")
        .unwrap_or_else(|| panic!("{on}"))
        .1;
    let pop3: SocketAddr = addrs
        .split(", ")
        .nth(1)
        .expect("two listeners")
        .parse()
        .expect("an address");
    assert!(greeting(pop3).starts_with("+OK"));
    assert!(
        greeting(smtp).starts_with("220"),
        "the new instance serves SMTP"
    );
    session.write_all(b"second half\r\n.\r\n").expect("send");
    reply("250 2.0.0");
    let new = sb.join("md/alice/new");
    let delivered: Vec<String> = std::fs::read_dir(&new)
        .expect("alice's new/")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).expect("read"))
        .collect();
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0].ends_with("first half\nsecond half\n"),
        "{delivered:?}"
    );

    // A POP3 session goes on across a restart too, and its deletions happen at its QUIT.
    let mut pop = TcpStream::connect(pop3).expect("connect");
    pop.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut pop_replies = std::io::BufReader::new(pop.try_clone().expect("clone"));
    let mut pop_line = |send: Option<&str>| {
        if let Some(command) = send {
            pop.write_all(format!("{command}\r\n").as_bytes())
                .expect("send");
        }
        let mut line = String::new();
        std::io::BufRead::read_line(&mut pop_replies, &mut line).expect("a reply");
        line
    };
    assert!(pop_line(None).starts_with("+OK"));
    for command in ["USER alice", "PASS wonderland", "DELE 1"] {
        let line = pop_line(Some(command));
        assert!(line.starts_with("+OK"), "{command}: {line}");
    }
    let changed = shell.run("set mail max_message_size 5000000");
    assert!(changed.contains("restarted"), "{changed}");
    let status = shell.run("status");
    assert!(
        status.contains("finishing on instances replaced by restarts"),
        "{status}"
    );
    let quit = pop_line(Some("QUIT"));
    assert!(quit.starts_with("+OK"), "{quit}");
    assert_eq!(std::fs::read_dir(&new).expect("new/").count(), 0);

    // Two endpoints written alike (`tcp:0`): the address names the one that goes.
    let added = shell.run(&format!("listen mail {LOOPBACK0} smtp"));
    let second: SocketAddr = added
        .rsplit(", ")
        .next()
        .expect("the new address")
        .parse()
        .expect("an address");
    let gone = shell.run(&format!("unlisten mail {smtp}"));
    assert!(gone.starts_with("mail no longer listens on"), "{gone}");
    assert!(
        TcpStream::connect(smtp).is_err(),
        "the first SMTP port is closed"
    );
    assert!(greeting(second).starts_with("220"), "the second stays");
}

#[test]
fn set_web_path_is_live_and_drops_no_keep_alive_connection() {
    let (_sb, twistd) = app();
    let web = twistd.addr(0);
    // Several clients hold keep-alive connections open across the change.
    let mut conns: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(web).expect("connect"))
        .collect();
    let get = |conn: &mut TcpStream| -> String {
        conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // One response: the head says its length.
        loop {
            let n = conn
                .read(&mut buf)
                .expect("a response, not a closed connection");
            assert!(n > 0, "the connection was closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return body.to_string();
                }
            }
        }
    };
    for conn in &mut conns {
        assert_eq!(get(conn), "<h1>one</h1>\n");
    }
    let mut shell = Client::login(twistd.addr(1));
    // Connections are counted for the status display (the web plugin accepts through the
    // host's capped accept loop).
    let web_line = shell
        .run("services")
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("a web line")
        .to_string();
    assert_eq!(web_line.split_whitespace().nth(3), Some("4"), "{web_line}");
    assert_eq!(shell.run("set web path www2"), "web.path changed, live");
    for conn in &mut conns {
        assert_eq!(
            get(conn),
            "<h1>two</h1>\n",
            "the same connection sees the new root"
        );
    }
    assert!(shell.run("show web").contains("\"path\": \"www2\""));
    // A field that shapes connections restarts the service (drained) on the same port.
    assert_eq!(
        shell.run("set web max_connections 50"),
        "web.max_connections changed; web restarted (open connections finish on the old instance)"
    );
    assert_eq!(
        curl(&twistd.url(0, "/"), &[]).text(),
        "<h1>two</h1>\n",
        "same port after the restart"
    );
    // listen and unlisten.
    let out = shell.run(&format!("listen web {LOOPBACK0}"));
    assert!(
        out.starts_with("web listens on tcp:0:interface=127.0.0.1; now listening on "),
        "{out}"
    );
    let second = out
        .rsplit(", ")
        .next()
        .expect("addresses")
        .trim()
        .to_string();
    assert_eq!(
        curl(&format!("http://{second}/"), &[]).text(),
        "<h1>two</h1>\n"
    );
    assert_eq!(
        curl(&twistd.url(0, "/"), &[]).text(),
        "<h1>two</h1>\n",
        "the first endpoint stays"
    );
}

#[test]
fn save_known_good_then_start_from_it() {
    let (sb, twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    shell.run(&format!(
        "add web --name extra --path www2 --port {LOOPBACK0}"
    ));
    assert_eq!(shell.run("save known-good"), "saved web-known-good.tap");
    let mode = std::fs::metadata(sb.join("web-known-good.tap"))
        .expect("saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "it holds the shell's hash");
    let (saved, _) = host::tapfile::load(&sb.join("web-known-good.tap")).expect("loads");
    let names: Vec<&str> = saved.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "telnet", "extra"]);

    // `shutdown` from the shell stops the process gracefully and saves the shutdown tap.
    shell.send("shutdown");
    assert!(shell.rest().contains("shutting down"));
    let mut twistd = twistd;
    twistd.wait_for("saved web-shutdown.tap");
    let (status, _) = twistd.stop_waiting();
    assert!(status.success());

    let again = sb.twistd(&["-o", "-f", "web-known-good.tap"]);
    assert_eq!(again.addrs.len(), 3);
    assert_eq!(curl(&again.url(2, "/"), &[]).text(), "<h1>two</h1>\n");
    let mut shell = Client::login(again.addr(1));
    let services = shell.run("services");
    assert!(
        services.contains("extra") && services.contains("telnet"),
        "{services}"
    );
}

/// Logs in with the real telnet client, driven through a pty by a small Python script (pty is
/// the standard library's), then plays `dialogue` (Python, after the first `web> ` prompt, with
/// `fd`, `seen` and `until`); returns all the terminal showed. `None` without a telnet client.
fn real_telnet(dialogue: &str) -> Option<String> {
    if std::process::Command::new("telnet")
        .arg("-?")
        .output()
        .is_err()
    {
        eprintln!("skipped: the telnet client is not installed");
        return None;
    }
    let (sb, twistd) = app();
    let script = sb.write(
        "drive.py",
        format!(
            r#"{PTY_PRELUDE}
port, password = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("telnet", ["telnet", "127.0.0.1", port])
until("username: "); os.write(fd, b"admin\r")
until("password: "); os.write(fd, password.encode() + b"\r")
until("web> ")
{dialogue}
until("bye")
os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
"#
        ),
    );
    let port = twistd.addr(1).port().to_string();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([&port, PASSWORD])
        .output()
        .expect("python3");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(screen)
}

/// The real telnet client: the typed password must not appear on the terminal.
#[test]
fn the_real_telnet_client_on_a_pty() {
    let Some(screen) = real_telnet(
        r#"os.write(fd, b"services\r")
until("telnet"); until("web> "); os.write(fd, b"quit\r")"#,
    ) else {
        return;
    };
    assert!(
        screen.contains("admin"),
        "the user name is echoed: {screen}"
    );
    assert!(
        !screen.contains(PASSWORD),
        "the password was echoed on the terminal: {screen}"
    );
    assert!(screen.contains("running"), "{screen}");
}

/// `--password` without a value asks twice on the terminal (no echo), and refuses two answers
/// that differ.
#[test]
fn password_without_a_value_asks_twice_on_a_terminal() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "x");
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let script = sb.write(
        "ask.py",
        format!(
            r#"{PTY_PRELUDE}
mktap, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    os.execv(mktap, [mktap, "--append", "web.tap", "telnet", "--password"])
def echo_off(limit=20):
    # rpassword prints the prompt, then turns echo off: type only once it is off, as the
    # terminal would otherwise echo what a fast typist sends in between.
    end = time.time() + limit
    while termios.tcgetattr(fd)[3] & termios.ECHO:
        if time.time() > end:
            sys.stderr.write("timeout waiting for echo to go off\n"); sys.exit(2)
        time.sleep(0.01)
until("password: "); echo_off(); os.write(fd, first.encode() + b"\n")
until("again: "); echo_off(); os.write(fd, second.encode() + b"\n")
_, status = os.waitpid(pid, 0)
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk
except OSError:
    pass
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.WEXITSTATUS(status))
"#
        ),
    );
    let run = |first: &str, second: &str| {
        std::process::Command::new("python3")
            .arg(&script)
            .args([util::MKTAP, first, second])
            .current_dir(sb.path())
            .output()
            .expect("python3")
    };
    let differ = run("one-password", "another-one");
    assert_eq!(
        differ.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&differ.stdout)
    );
    assert!(String::from_utf8_lossy(&differ.stdout).contains("the two passwords differ"));
    assert!(!sb.read("web.tap").contains("telnet"), "nothing written");

    let same = run(PASSWORD, PASSWORD);
    let screen = String::from_utf8_lossy(&same.stdout).into_owned();
    assert_eq!(same.status.code(), Some(0), "{screen}");
    assert!(
        !screen.contains(PASSWORD),
        "the password was echoed: {screen}"
    );
    let tap = sb.read("web.tap");
    assert!(
        tap.contains("$argon2id$") && !tap.contains(PASSWORD),
        "{tap}"
    );
}

/// `log level` takes levels and TARGET=LEVEL only: a misspelt level used to be read as a target
/// name, answered "log level is now inof", and then nothing at all was logged.
#[test]
fn a_log_level_that_is_no_level_is_refused_and_logging_goes_on() {
    let (_sb, mut twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    for (command, expected) in [
        (
            "log level inof",
            "error: bad log level 'inof': 'inof' is not a level (error, warn, info, debug, trace, off)",
        ),
        ("log level bogus(", "error: bad log level 'bogus(': 'bogus(' is not a level"),
        ("log level \u{e9}", "error: bad log level '\u{e9}': '\u{e9}' is not a level"),
        (
            "log level warn,web=inof",
            "error: bad log level 'warn,web=inof': 'inof' in 'web=inof' is not a level",
        ),
    ] {
        let out = shell.run(command);
        assert!(out.starts_with(expected), "{command}: {out}");
        assert_eq!(out.lines().count(), 1, "{command}: {out}");
    }
    // Still logging at info: the audit line of the next command shows.
    shell.run("status");
    twistd.wait_for("admin: status");
    assert_eq!(
        shell.run("log level warn,web=debug"),
        "log level is now warn,web=debug"
    );
}

/// Telnet's two-byte commands are two bytes: IP and BRK drop the line typed so far and give
/// a fresh prompt, AYT is answered, and DO TIMING-MARK gets WILL TIMING-MARK (telnet(1) sends
/// IAC IP IAC DO TM for Ctrl-C, then shows nothing until the mark is answered).
#[test]
fn interrupts_timing_marks_and_are_you_there() {
    let (_sb, twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    shell.stream.write_all(b"\xff\xf4status\r\n").expect("send");
    let out = shell.read_until("application web");
    assert!(!out.contains("unknown command"), "{out:?}");
    shell.read_until("web> ");
    shell
        .stream
        .write_all(b"remove web\xff\xf3\xff\xf4\xff\xfd\x06")
        .expect("send");
    shell.read_raw_until(&[0xff, 0xfb, 0x06]);
    shell.stream.write_all(b"\xff\xf6").expect("send");
    shell.read_until("[yes]");
    assert!(
        shell.run("services").contains("web "),
        "the interrupted line did nothing"
    );
}

/// Ctrl-C in the real telnet client: it sends IAC IP IAC DO TIMING-MARK and shows nothing more
/// until the mark is answered. The line typed so far goes, a fresh prompt comes, and the next
/// command's answer shows.
#[test]
fn ctrl_c_in_the_real_telnet_client() {
    let Some(screen) = real_telnet(
        r#"start = len(seen)
os.write(fd, b"remove web")
os.write(fd, b"\x03")
# A fresh prompt after the interrupt.
end = time.time() + 20
while b"web> " not in seen[start:]:
    if time.time() > end:
        sys.stderr.write("no prompt after Ctrl-C; saw %r\n" % seen); sys.exit(2)
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        seen += os.read(fd, 4096)
os.write(fd, b"status\r")
until("application web"); until("running)"); os.write(fd, b"quit\r")"#,
    ) else {
        return;
    };
    assert!(
        screen.contains("2 service(s) (2 running)"),
        "the interrupted line did nothing: {screen}"
    );
}

/// At most three connections from one address may be logging in at once (the Argon2 check
/// of each try is costly); one more is told so in a line and closed, and that is logged. A
/// session that has logged in does not count.
#[test]
fn connections_logging_in_from_one_address_are_capped() {
    let (_sb, mut twistd) = app();
    let shell = twistd.addr(1);
    let mut waiting: Vec<Client> = (0..3)
        .map(|_| {
            let mut client = Client::connect(shell);
            client.read_until("username: ");
            client
        })
        .collect();
    let mut over = Client::connect(shell);
    let refused = over.rest();
    assert_eq!(
        refused.trim(),
        "too many connections from your address are logging in (3 at most); try again later"
    );
    twistd.wait_for("refused a connection from 127.0.0.1:");
    // One of the three logs in: it no longer counts, so another may log in.
    let mut first = waiting.remove(0);
    first.send("admin");
    first.read_until("password: ");
    first.send(PASSWORD);
    first.read_until("web> ");
    let mut next = Client::login(shell);
    assert!(next.run("status").starts_with("application web"));
    assert!(first.run("status").starts_with("application web"));
}

/// `set` takes the rest of the line as the value, read as `show` prints values: quotes inside
/// are the value's own.
#[test]
fn set_values_are_written_as_show_prints_them() {
    let (sb, twistd) = app();
    sb.write("null/a.html", "<h1>null</h1>\n");
    sb.write("www/a.html", "<h1>a</h1>\n");
    let mut shell = Client::login(twistd.addr(1));
    assert_eq!(
        shell.run(r#"set web index ["a.html"]"#),
        "web.index changed, live"
    );
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "<h1>a</h1>\n");
    assert_eq!(
        shell.run(r#"set web add_header ["X-Test: 1"]"#),
        "web.add_header changed, live"
    );
    assert_eq!(curl(&twistd.url(0, "/"), &[]).header("x-test"), Some("1"));
    let out = shell.run(r#"set web index [""]"#);
    assert!(out.starts_with("error: web: --index ''"), "{out}");
    // `"null"` is the word, a directory named so.
    assert_eq!(
        shell.run(r#"set web path "null""#),
        "web.path changed, live"
    );
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "<h1>null</h1>\n");
    let show = shell.run("show web");
    assert!(
        show.contains(r#""path": "null""#) && show.contains(r#""logfile": ()"#),
        "{show}"
    );
    // What is already so changes nothing (and restarts nothing), `()` as show prints it too.
    for command in [
        "set web logfile null",
        "set web logfile ()",
        r#"set web path "null""#,
    ] {
        assert_eq!(
            shell.run(command),
            format!(
                "web.{} unchanged",
                command.split(' ').nth(2).expect("field")
            )
        );
    }
}

/// The small things: clap's whole message, help as help, who uses an endpoint, why a tag is
/// refused, columns that fit.
#[test]
fn shell_messages_say_what_is_wrong() {
    let (_sb, twistd) = app();
    let mut shell = Client::login(twistd.addr(1));
    let out = shell.run("add web");
    assert_eq!(
        out,
        "error: the following required arguments were not provided: --path <DIR>"
    );
    let help = shell.run("add web --help");
    assert!(
        !help.starts_with("error") && help.contains("Usage: web") && help.contains("--path"),
        "{help}"
    );
    // A port another service has: the message names that one.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let fixed = format!("tcp:{port}:interface=127.0.0.1");
    let added = shell.run(&format!("add web --name fixed --path www --port {fixed}"));
    assert!(added.starts_with("added fixed"), "{added}");
    assert_eq!(
        shell.run(&format!("listen web {fixed}")),
        format!("error: {fixed} is already used by service 'fixed'")
    );
    let out = shell.run(&format!("save {}", "a".repeat(300)));
    assert!(
        out.ends_with("it is 300 characters long, at most 64 are allowed"),
        "{out}"
    );
    let long = "a-service-with-a-long-name";
    shell.run(&format!(
        "add web --name {long} --path www --port {LOOPBACK0}"
    ));
    let table = shell.run("services");
    let plugin_column = |line: &str| {
        let rest = line.split_once(' ').expect("columns").1;
        line.len() - rest.trim_start().len()
    };
    let columns: Vec<usize> = table.lines().map(plugin_column).collect();
    assert!(columns.iter().all(|c| *c == columns[0]), "{table}");
}
