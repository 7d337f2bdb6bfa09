//! The mail plugin through the real binaries: mktap's tap, SMTP with Python's smtplib and a raw
//! socket (every rejection and smuggling shape), Maildirs read by Python's `mailbox`, POP3 with
//! poplib, graceful stop, and a kill -9 in the middle of 1000 deliveries.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{stderr, stdout, Sandbox, Twistd, TIMEOUT};

const LOOPBACK0: &str = "tcp:0:interface=127.0.0.1";

/// `twistd mail` on two loopback ports (SMTP first, then POP3) with alice and bob in
/// example.com, Maildirs under `maildir/`.
fn serve(sb: &Sandbox, extra: &[&str]) -> Twistd {
    let mut args = vec![
        "mail",
        "-d",
        "example.com=maildir",
        "-u",
        "alice=wonderland",
        "-u",
        "bob=hunter2",
        "-s",
        LOOPBACK0,
        "-p",
        LOOPBACK0,
        "-H",
        "mx.example.com",
    ];
    args.extend_from_slice(extra);
    sb.twistd(&args)
}

/// Runs a Python snippet with `args` in `sys.argv[1:]`; returns its stdout, failing on error.
fn python(dir: &Path, code: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

/// The files of a user's Maildir subdirectory (`new`, `cur` or `tmp`), as text.
fn files(sb: &Sandbox, user: &str, sub: &str) -> Vec<(PathBuf, String)> {
    let dir = sb.join(&format!("maildir/{user}/{sub}"));
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("entry").path();
            let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
            (path, text)
        })
        .collect();
    found.sort();
    found
}

/// A raw SMTP or POP3 client that speaks exactly the bytes it is given.
struct Raw {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Raw {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    /// Connects and reads the SMTP greeting.
    fn smtp(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let greeting = raw.reply();
        assert!(greeting.starts_with("220 mx.example.com"), "{greeting}");
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line
    }

    /// One SMTP reply, all its lines (up to the one with a space after the code).
    fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let line = self.line();
            assert!(
                line.ends_with("\r\n"),
                "a CRLF-terminated line, not {line:?}"
            );
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command and insists on the reply code.
    fn expect(&mut self, command: &str, code: &str) -> String {
        let reply = self.cmd(command);
        assert!(
            reply.starts_with(code),
            "{command:?} got {reply:?}, not {code}"
        );
        reply
    }

    /// Waits for the server to close the connection, returning what it said meanwhile.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }
}

/// A transaction up to the 354, for tests that then send raw DATA bytes.
fn start_data(raw: &mut Raw, rcpt: &str) {
    raw.expect("EHLO client.test", "250");
    raw.expect("MAIL FROM:<sender@remote.test>", "250 2.1.0");
    raw.expect(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5");
    raw.expect("DATA", "354");
}

#[test]
fn mktap_stores_argon2id_hashes_in_a_private_tap() {
    let sb = Sandbox::new();
    sb.mktap_ok(&[
        "mail",
        "-d",
        "example.com=md",
        "-u",
        "alice=wonderland",
        "-d",
        "Other.test=od",
        "-u",
        "carol=pass:with:colons",
        "-D",
        "-b",
        "--no-pop3",
    ]);
    let mode = std::fs::metadata(sb.join("mail.tap"))
        .expect("tap")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a tap with password hashes is private");
    let text = sb.read("mail.tap");
    assert!(
        !text.contains("wonderland") && !text.contains("pass:with"),
        "{text}"
    );
    let tap: serde_json::Value = serde_json::from_str(&text).expect("json");
    let service = &tap["services"][0];
    assert_eq!(service["listen"], serde_json::json!(["tcp:8025"]));
    let config = &service["config"];
    assert_eq!(config["protocols"], serde_json::json!(["smtp"]));
    assert_eq!(
        config["default_domain"], "other.test",
        "-D takes the last domain"
    );
    assert_eq!(config["bounce_to_postmaster"], true);
    for user in ["alice@example.com", "carol@other.test"] {
        let hash = config["users"][user].as_str().expect("a hash per user");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
    }

    // The defaults are Twisted's ports; a tap without users is not private.
    sb.mktap_ok(&["-n", "plain", "mail", "-d", "example.com=md"]);
    let plain: serde_json::Value = serde_json::from_str(&sb.read("plain.tap")).expect("json");
    assert_eq!(
        plain["services"][0]["listen"],
        serde_json::json!(["tcp:8025", "tcp:8110"])
    );
}

#[test]
fn bad_options_are_refused_naming_the_option() {
    let sb = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (&["mail", "-u", "alice=x"], "--user alice: give a domain"),
        (
            &["mail", "-d", "example.com"],
            "--maildirdbmdomain 'example.com': expected NAME=PATH",
        ),
        (
            &["mail", "-d", "example.com=md", "-u", "alice"],
            "--user: expected USER=PASS",
        ),
        (
            &["mail", "-d", "bad_domain!=md"],
            "--maildirdbmdomain 'bad_domain!': not a domain",
        ),
        (
            &["mail", "-d", "e.com=md", "-u", "../x=p"],
            "--user ../x@e.com: a user name",
        ),
        (
            &["mail", "-d", "e.com=md", "--no-smtp", "--no-pop3"],
            "nothing to serve",
        ),
        (
            &["mail", "-d", "e.com=md", "--max-message-size", "0"],
            "--max-message-size",
        ),
        (
            &["mail", "-d", "e.com=md", "--passwordfile", "nope"],
            "--passwordfile nope",
        ),
        (&["mail"], "no domain given"),
    ];
    for (args, message) in cases {
        let out = sb.mktap(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("alice=x"),
            "passwords are never echoed"
        );
    }
    assert!(!sb.join("mail.tap").exists());
}

#[test]
fn smtplib_delivers_durably_and_mailbox_reads_it() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let smtp = twistd.addr(0).to_string();
    python(
        sb.path(),
        r#"
import smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1].rsplit(':', 1)
m = EmailMessage()
m['From'] = 'sender@remote.test'
m['To'] = 'alice@example.com, bob@example.com'
m['Subject'] = 'greetings'
m.set_content('hello\n.a line starting with a dot\nbye\n')
with smtplib.SMTP(host, int(port)) as s:
    refused = s.send_message(m, to_addrs=['alice@example.com', 'BOB@Example.COM'])
    assert refused == {}, refused
"#,
        &[&smtp],
    );
    // Python's mailbox module reads both Maildirs.
    let seen = python(
        sb.path(),
        r#"
import mailbox
for user in ['alice', 'bob']:
    box = mailbox.Maildir('maildir/' + user, factory=None, create=False)
    msgs = list(box)
    assert len(msgs) == 1, (user, len(msgs))
    m = msgs[0]
    print(user, m['Subject'], m['Return-Path'], m.get_payload().splitlines()[1])
    assert 'by mx.example.com' in m['Received'], m['Received']
"#,
        &[],
    );
    assert_eq!(
        seen,
        "alice greetings <sender@remote.test> .a line starting with a dot\n\
         bob greetings <sender@remote.test> .a line starting with a dot\n"
    );
    for user in ["alice", "bob"] {
        let new = files(&sb, user, "new");
        assert_eq!(new.len(), 1);
        let mode = std::fs::metadata(&new[0].0)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!new[0].1.contains('\r'), "stored with LF line endings");
        assert!(files(&sb, user, "tmp").is_empty(), "nothing left in tmp/");
        let dir_mode = std::fs::metadata(sb.join(&format!("maildir/{user}")))
            .expect("maildir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    let (status, log) = twistd.stop();
    assert!(status.success(), "{log:?}");
    assert!(log.iter().any(|l| l.contains("delivered")), "{log:?}");
}

#[test]
fn ehlo_helo_and_the_simple_commands() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &["--max-message-size", "5000"]);
    let mut raw = Raw::smtp(twistd.addr(0));
    let ehlo = raw.expect("EHLO client.test", "250");
    for extension in ["SIZE 5000", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(extension), "{ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    raw.expect("HELO client.test", "250 mx.example.com");
    raw.expect("NOOP", "250 2.0.0");
    raw.expect("RSET", "250 2.0.0");
    raw.expect("VRFY alice", "252");
    raw.expect("HELP", "214");
    raw.expect("EXPN staff", "502");
    raw.expect("noop", "250");
    raw.expect("QUIT", "221 2.0.0");
    assert_eq!(raw.rest(), "", "the server closes after QUIT");
}

#[test]
fn every_rejection_has_its_code_and_the_session_goes_on() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &["--max-message-size", "2000"]);
    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect("MAIL FROM:<a@b.test>", "503 5.5.1");
    raw.expect("EHLO", "501");
    raw.expect("FROB", "500 5.5.2");
    raw.expect("EHLO client.test", "250");
    raw.expect("RCPT TO:<alice@example.com>", "503 5.5.1");
    raw.expect("DATA", "503 5.5.1");
    raw.expect("MAIL FROM:a@b.test", "501 5.1.7");
    raw.expect("MAIL FROM:<a@b.test> SIZE=2001", "552 5.3.4");
    raw.expect("MAIL FROM:<a@b.test> SIZE=big", "501");
    raw.expect("MAIL FROM:<a@b.test> SMTPUTF8", "555");
    raw.expect("MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME", "250 2.1.0");
    raw.expect("MAIL FROM:<c@d.test>", "503 5.5.1");
    raw.expect("DATA", "503 5.5.1");
    raw.expect("RCPT TO:<nobody@example.com>", "550 5.1.1");
    raw.expect("RCPT TO:<someone@elsewhere.test>", "550 5.7.1");
    raw.expect("RCPT TO:<alice@example.com", "501");
    raw.expect("RCPT TO:<alice>", "501");
    // A line over 1000 octets is a 500, and the session stays usable.
    let long = format!("NOOP {}", "x".repeat(1100));
    raw.expect(&long, "500 5.5.2");
    raw.expect("RCPT TO:<alice@example.com>", "250 2.1.5");
    for _ in 1..100 {
        raw.expect("RCPT TO:<bob@example.com>", "250");
    }
    raw.expect("RCPT TO:<bob@example.com>", "452 4.5.3");
    raw.expect("DATA", "354");
    let line = format!("{}\r\n", "y".repeat(900));
    raw.send(format!("Subject: big\r\n\r\n{line}{line}{line}.\r\n").as_bytes());
    let too_big = raw.reply();
    assert!(too_big.starts_with("552 5.3.4"), "{too_big}");
    // A message with a line over 1000 octets is refused whole.
    raw.expect("MAIL FROM:<>", "250");
    raw.expect("RCPT TO:<alice@example.com>", "250");
    raw.expect("DATA", "354");
    raw.send(
        format!(
            "Subject: long\r\n\r\n{}\r\nafter\r\n.\r\n",
            "z".repeat(1200)
        )
        .as_bytes(),
    );
    let long_line = raw.reply();
    assert!(long_line.starts_with("500 5.5.2"), "{long_line}");
    // Nothing was delivered, and the session still works.
    raw.expect("NOOP", "250");
    assert!(files(&sb, "alice", "new").is_empty());
    assert!(files(&sb, "bob", "new").is_empty());
    // A bounce (null sender) to plain <postmaster> needs a postmaster: none here.
    raw.expect("MAIL FROM:<>", "250");
    raw.expect("RCPT TO:<postmaster>", "550 5.1.1");
    raw.expect("QUIT", "221");
}

#[test]
fn too_many_errors_end_the_session() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    for _ in 0..19 {
        raw.expect("BOGUS", "500");
    }
    let last = raw.cmd("BOGUS");
    assert!(last.starts_with("500"), "{last}");
    assert!(raw.reply().starts_with("421 4.7.0"));
    assert_eq!(raw.rest(), "");
}

/// Each shape puts a fake end of DATA, then a whole smuggled transaction, then the real end.
#[test]
fn smuggling_shapes_never_end_data() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let shapes: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r.\r",
        b"\r\n.\r\r\n",
        b"\r\n\x00.\r\n",
    ];
    for shape in shapes {
        let mut raw = Raw::smtp(twistd.addr(0));
        start_data(&mut raw, "alice@example.com");
        let mut data = b"Subject: cover\r\n\r\ninnocent".to_vec();
        data.extend_from_slice(shape);
        data.extend_from_slice(
            b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n\
              Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
        );
        raw.send(&data);
        let reply = raw.reply();
        let shape_text = String::from_utf8_lossy(shape).escape_debug().to_string();
        // Either refused whole (bare CR/LF) or one message: never a second reply.
        assert!(
            reply.starts_with("554 5.6.0") || reply.starts_with("250 2.0.0"),
            "{shape_text}: {reply}"
        );
        raw.expect("NOOP", "250");
        assert!(
            files(&sb, "bob", "new").is_empty(),
            "{shape_text}: the smuggled message reached bob"
        );
        for (_, text) in files(&sb, "alice", "new") {
            assert!(text.contains("\nSubject: cover\n"), "{shape_text}: {text}");
        }
    }
    // The one shape without a bare CR or LF is a single, whole message.
    let delivered = files(&sb, "alice", "new");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0]
        .1
        .contains("innocent\n\0.\nMAIL FROM:<evil@attacker.test>\n"));
}

#[test]
fn dot_stuffing_is_undone_and_pipelined_commands_are_answered_in_order() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect("EHLO client.test", "250");
    raw.send(
        b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.com>\r\n\
          RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
    );
    for code in ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354"] {
        let reply = raw.reply();
        assert!(reply.starts_with(code), "{reply} instead of {code}");
    }
    raw.send(b"Subject: dots\r\n\r\n..leading\r\n...\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    raw.expect("QUIT", "221");
    let alice = files(&sb, "alice", "new");
    assert_eq!(alice.len(), 1);
    assert!(
        alice[0].1.ends_with("Subject: dots\n\n.leading\n..\n"),
        "{}",
        alice[0].1
    );
    assert!(alice[0].1.starts_with(
        "Return-Path: <sender@remote.test>\nReceived: from client.test ([127.0.0.1])\n"
    ));
    assert!(
        !alice[0].1.contains("\tfor <"),
        "two recipients: no 'for' clause"
    );
    assert_eq!(files(&sb, "bob", "new").len(), 1);
}

#[test]
fn pop3_with_poplib() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let smtp = twistd.addr(0).to_string();
    let pop3 = twistd.addr(1).to_string();
    python(
        sb.path(),
        r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    for i in range(3):
        s.sendmail('s@remote.test', ['alice@example.com'],
                   f'Subject: m{i}\r\n\r\nline one\r\n.starts with a dot\r\nline three\r\n')
"#,
        &[&smtp],
    );
    let out = python(
        sb.path(),
        r#"
import poplib, sys, time
host, port = sys.argv[1].rsplit(':', 1)
def login():
    # A dropped session releases the mailbox once the server has seen the close: retry while
    # it is still in use.
    for attempt in range(2000):
        p = poplib.POP3(host, int(port), timeout=20)
        p.user('alice@example.com')
        try:
            p.pass_('wonderland')
            return p
        except poplib.error_proto as e:
            if b'IN-USE' not in e.args[0]:
                raise
            p.quit()
            time.sleep(0.01)
    raise SystemExit('the mailbox stayed locked')
p = login()
caps = p.capa()
assert 'UIDL' in caps and 'TOP' in caps and 'RESP-CODES' in caps, caps
count, size = p.stat()
assert count == 3, count
listing = p.list()[1]
assert sum(int(l.split()[1]) for l in listing) == size
uids = p.uidl()[1]
resp, lines, octets = p.retr(2)
assert lines[-3:] == [b'line one', b'.starts with a dot', b'line three'], lines
assert b'Subject: m1' in lines
assert octets == int(listing[1].split()[1]), (octets, listing)
top = p.top(1, 1)[1]
assert top[-2:] == [b'', b'line one'], top
p.dele(1)
try:
    p.retr(1); raise SystemExit('deleted message retrieved')
except poplib.error_proto as e:
    assert b'deleted' in e.args[0]
assert p.stat()[0] == 2
p.rset()
assert p.stat()[0] == 3
p.dele(1)
# Dropped without QUIT: nothing is deleted.
p.file.close(); p.sock.close()
p = login()
assert p.uidl()[1] == uids, 'UIDLs are stable across sessions'
p.dele(1)
p.quit()
p = login()
assert p.uidl()[1] == [b'1 ' + uids[1].split()[1], b'2 ' + uids[2].split()[1]], p.uidl()[1]
p.quit()
print('ok')
"#,
        &[&pop3],
    );
    assert_eq!(out, "ok\n");
    assert_eq!(files(&sb, "alice", "new").len(), 2);
    drop(twistd);
}

#[test]
fn pop3_locks_mailboxes_and_delays_and_logs_failed_logins() {
    let sb = Sandbox::new();
    let mut twistd = serve(&sb, &[]);
    let pop3 = twistd.addr(1);
    let mut first = Raw::connect(pop3);
    assert!(first.line().starts_with("+OK"));
    first.send(b"USER alice\r\nPASS wonderland\r\n");
    assert!(first.line().starts_with("+OK"));
    assert!(first
        .line()
        .starts_with("+OK alice@example.com has 0 messages"));

    let mut second = Raw::connect(pop3);
    assert!(second.line().starts_with("+OK"));
    second.send(b"USER alice@example.com\r\nPASS wonderland\r\n");
    assert!(second.line().starts_with("+OK"));
    let in_use = second.line();
    assert!(in_use.starts_with("-ERR [IN-USE]"), "{in_use}");

    second.send(b"USER bob\r\nPASS not-his-password\r\n");
    assert!(second.line().starts_with("+OK"));
    let refused = second.line();
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    twistd.wait_for("pop3 login failed");

    first.send(b"QUIT\r\n");
    assert!(first.line().starts_with("+OK"));
    // Released at QUIT: the second session may log in now.
    second.send(
        b"USER alice\r\nPASS wonderland\r\nSTAT\r\nUSER x\r\nFROB\r\nRETR 1\r\nLIST 7\r\nQUIT\r\n",
    );
    let said: Vec<String> = (0..8).map(|_| second.line()).collect();
    assert!(said[1].starts_with("+OK alice"), "{said:?}");
    assert_eq!(said[2], "+OK 0 0\r\n");
    assert!(said[3..7].iter().all(|l| l.starts_with("-ERR")), "{said:?}");
    assert!(said[7].starts_with("+OK bye"));
    let (_, log) = twistd.stop();
    assert!(!log.iter().any(|l| l.contains("not-his-password")));
    assert!(!log.iter().any(|l| l.contains("wonderland")));
}

#[test]
fn password_file_two_domains_default_domain_and_postmaster() {
    let sb = Sandbox::new();
    sb.write(
        "passwords",
        "# user@domain:password\ncarol@other.test:se:cret\n\npostmaster@other.test:pm\n",
    );
    let twistd = sb.twistd(&[
        "mail",
        "-d",
        "example.com=maildir",
        "-u",
        "alice=wonderland",
        "-d",
        "other.test=other",
        "--passwordfile",
        "passwords",
        "-D",
        "-b",
        "-s",
        LOOPBACK0,
        "-p",
        LOOPBACK0,
        "-H",
        "mx.example.com",
    ]);
    let smtp = twistd.addr(0).to_string();
    let pop3 = twistd.addr(1).to_string();
    let out = python(
        sb.path(),
        r#"
import smtplib, poplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.sendmail('x@remote.test', ['carol@other.test'], 'Subject: to carol\r\n\r\nhi\r\n')
    # Unknown user: the postmaster (-b). Unknown domain: the default domain (-D).
    s.sendmail('x@remote.test', ['nobody@example.com'], 'Subject: to nobody\r\n\r\nhi\r\n')
    s.sendmail('x@remote.test', ['carol@unknown.test'], 'Subject: via default\r\n\r\nhi\r\n')
    s.sendmail('', ['postmaster'], 'Subject: plain postmaster\r\n\r\nhi\r\n')
host, port = sys.argv[2].rsplit(':', 1)
p = poplib.POP3(host, int(port))
try:
    p.user('carol'); p.pass_('se:cret'); raise SystemExit('bare user name with two domains')
except poplib.error_proto:
    pass
p.user('carol@other.test'); p.pass_('se:cret')
print(p.stat()[0])
p.quit()
"#,
        &[&smtp, &pop3],
    );
    assert_eq!(out, "2\n", "carol's own and the one via the default domain");
    let postmaster: Vec<String> = std::fs::read_dir(sb.join("other/postmaster/new"))
        .expect("postmaster maildir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(postmaster.len(), 1, "{postmaster:?}");
    assert!(postmaster[0].contains("Subject: plain postmaster"));
    assert!(postmaster[0].contains("Return-Path: <>"));
    let bounced = files(&sb, "postmaster", "new");
    assert_eq!(
        bounced.len(),
        1,
        "example.com's postmaster takes its unknown users"
    );
    assert!(bounced[0].1.contains("Subject: to nobody"));
    assert!(files(&sb, "alice", "new").is_empty());
}

#[test]
fn stopping_says_421_to_idle_sessions_and_ends_pop3_without_deleting() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut smtp = Raw::smtp(twistd.addr(0));
    smtp.expect("EHLO client.test", "250");
    smtp.expect("MAIL FROM:<a@remote.test>", "250");
    smtp.expect("RCPT TO:<alice@example.com>", "250");
    smtp.expect("DATA", "354");
    smtp.send(b"Subject: before stop\r\n\r\nkept\r\n.\r\n");
    assert!(smtp.reply().starts_with("250 2.0.0"));

    let mut pop = Raw::connect(twistd.addr(1));
    pop.line();
    pop.send(b"USER alice\r\nPASS wonderland\r\nDELE 1\r\n");
    for _ in 0..3 {
        assert!(pop.line().starts_with("+OK"));
    }
    let (status, log) = twistd.stop();
    assert!(status.success(), "{log:?}");
    assert!(
        smtp.rest().starts_with("421 4.3.2"),
        "idle SMTP sessions hear 421"
    );
    assert!(pop.rest().starts_with("-ERR [SYS/TEMP]"));
    assert_eq!(
        files(&sb, "alice", "new").len(),
        1,
        "DELE without QUIT deletes nothing"
    );
}

/// Sends 1000 numbered messages over four sessions, kills twistd with SIGKILL part-way, and
/// checks that every message that got its 250 is in the Maildir exactly once, and that every
/// file in `new/` is a whole message.
#[test]
fn kill_9_loses_no_acknowledged_message_and_leaves_no_partial_file() {
    let sb = Sandbox::new();
    sb.mktap_ok(&[
        "mail",
        "-d",
        "example.com=maildir",
        "-u",
        "alice=wonderland",
        "-s",
        LOOPBACK0,
        "--no-pop3",
        "-H",
        "mx.example.com",
    ]);
    let twistd = sb.twistd(&["-f", "mail.tap"]);
    let smtp = twistd.addr(0).to_string();
    let script = util::repo().join("tests/mail/flood.py");
    let mut flood = Command::new("python3")
        .arg(&script)
        .args([&smtp, "1000", "4", "acked"])
        .current_dir(sb.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flood.py");
    // Kill once a good share has been acknowledged (and flood.py has written that down).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let acked = std::fs::read_to_string(sb.join("acked")).unwrap_or_default();
        if acked.lines().count() >= 300 {
            break;
        }
        assert!(
            flood.try_wait().expect("poll flood").is_none(),
            "flood.py ended early"
        );
        assert!(Instant::now() < deadline, "too few messages acknowledged");
        std::thread::sleep(Duration::from_millis(10));
    }
    twistd.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = flood
        .wait()
        .expect("flood.py exits once the server is gone");
    drop(twistd);

    let acked: Vec<u32> = std::fs::read_to_string(sb.join("acked"))
        .expect("acked")
        .lines()
        .map(|l| l.parse().expect("a number"))
        .collect();
    assert!(acked.len() >= 300 && acked.len() < 1000, "{}", acked.len());

    // A restart serves the same Maildir; the stored messages are whole and unique.
    let again = sb.twistd(&["-f", "mail.tap"]);
    let mut seen = std::collections::BTreeMap::<u32, usize>::new();
    for (path, text) in files(&sb, "alice", "new") {
        let number: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Seq: "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no X-Seq header: {text:?}", path.display()));
        assert!(
            text.ends_with(&format!("end of message {number}\n")),
            "{}: a partial file in new/",
            path.display()
        );
        *seen.entry(number).or_default() += 1;
    }
    for number in &acked {
        assert_eq!(
            seen.get(number),
            Some(&1),
            "message {number} was acknowledged"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no message is stored twice");
    // And the restarted server accepts mail again.
    let mut raw = Raw::smtp(again.addr(0));
    raw.expect("QUIT", "221");
}

/// configs/mail.tas and configs/demo.tas work as their comments say: alice's documented
/// password logs in, and mail sent to her arrives (run here on free ports with the Maildirs in a
/// sandbox).
#[test]
fn the_example_taps_work_as_documented() {
    for example in ["configs/mail.tas", "configs/demo.tas"] {
        example_works(example);
    }
}

fn example_works(example: &str) {
    let sb = Sandbox::new();
    let (mut app, format) = host::tapfile::load(&util::repo().join(example)).expect(example);
    let mut mail_listener = 0;
    for service in &app.services {
        if service.plugin == "mail" {
            break;
        }
        mail_listener += service.listen.len();
    }
    for service in &mut app.services {
        for endpoint in &mut service.listen {
            if let host::Endpoint::Tcp { port, .. } = endpoint {
                *port = 0;
            }
        }
        if service.plugin == "mail" {
            service.config["domains"]["example.com"] =
                serde_json::Value::String(sb.join("maildir").display().to_string());
        }
    }
    let copy = sb.join(&format!("mail.{}", format.extension()));
    host::tapfile::save(&app, &copy, format, true).expect("save the copy");
    let twistd = Twistd::start(&util::repo(), &["-o", "-f", copy.to_str().expect("utf-8")]);
    let out = python(
        sb.path(),
        r#"
import smtplib, poplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.sendmail('bob@example.com', ['alice@example.com'], 'Subject: hi\r\n\r\nhello alice\r\n')
host, port = sys.argv[2].rsplit(':', 1)
p = poplib.POP3(host, int(port))
p.user('alice'); p.pass_('wonderland')
print(p.retr(1)[1][-1].decode())
p.quit()
"#,
        &[
            &twistd.addr(mail_listener).to_string(),
            &twistd.addr(mail_listener + 1).to_string(),
        ],
    );
    assert_eq!(out, "hello alice\n", "{example}");
}

#[test]
fn aliases_expand_include_and_reload_when_changed() {
    let sb = Sandbox::new();
    sb.write("staff.list", "bob\n# a comment\nalice@example.com\n");
    sb.write(
        "aliases",
        "# aliases(5)\npostmaster: alice\nstaff: postmaster,\n\t:include:staff.list\n",
    );
    let twistd = serve(&sb, &["-A", "aliases"]);
    let mut raw = Raw::smtp(twistd.addr(0));
    let send = |raw: &mut Raw, rcpt: &str, subject: &str| {
        start_data(raw, rcpt);
        raw.send(format!("Subject: {subject}\r\n\r\nhi\r\n.\r\n").as_bytes());
        let reply = raw.reply();
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    };
    send(&mut raw, "staff@example.com", "to staff");
    send(&mut raw, "postmaster", "to plain postmaster");
    assert_eq!(
        files(&sb, "alice", "new").len(),
        2,
        "alice once per message"
    );
    assert_eq!(files(&sb, "bob", "new").len(), 1);

    // Edited while running: the next RCPT sees the new file.
    sb.write("aliases", "staff: bob\nnowhere: ghost\n");
    send(&mut raw, "staff@example.com", "after the edit");
    assert_eq!(files(&sb, "alice", "new").len(), 2);
    assert_eq!(files(&sb, "bob", "new").len(), 2);
    raw.expect("MAIL FROM:<a@remote.test>", "250");
    raw.expect("RCPT TO:<postmaster@example.com>", "550 5.1.1");
    raw.expect("RCPT TO:<nowhere@example.com>", "550 5.1.1");
    raw.expect("QUIT", "221");

    // A bad aliases file is refused before anything starts, naming the line.
    sb.write("bad", "ok: alice\nrun: |/bin/sh -c evil\n");
    let out = sb.mktap(&["mail", "-d", "example.com=maildir", "-A", "bad"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--aliases bad line 2"),
        "{}",
        stderr(&out)
    );
}

/// A self-signed certificate for localhost and 127.0.0.1, made now (never committed).
fn certificate(sb: &Sandbox) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a certificate");
    sb.write("cert.pem", generated.cert.pem());
    sb.write("key.pem", generated.key_pair.serialize_pem());
}

#[test]
fn starttls_auth_stls_and_pop3s_with_real_clients() {
    let sb = Sandbox::new();
    certificate(&sb);
    let twistd = serve(
        &sb,
        &[
            "-c",
            "cert.pem",
            "--privkey",
            "key.pem",
            "--auth",
            "--pop3s",
            LOOPBACK0,
        ],
    );
    let addrs: Vec<String> = (0..3).map(|i| twistd.addr(i).to_string()).collect();
    let out = python(
        sb.path(),
        r#"
import smtplib, poplib, ssl, sys
ctx = ssl.create_default_context(cafile='cert.pem')
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.ehlo()
    assert s.has_extn('starttls') and not s.has_extn('auth'), s.esmtp_features
    try:
        s.login('alice@example.com', 'wonderland'); raise SystemExit('AUTH without TLS')
    except smtplib.SMTPNotSupportedError:
        pass
    code, _ = s.docmd('AUTH', 'PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHdvbmRlcmxhbmQ=')
    assert code == 538, code
    s.starttls(context=ctx)
    s.ehlo()
    assert s.has_extn('auth') and not s.has_extn('starttls'), s.esmtp_features
    try:
        s.login('alice@example.com', 'not-it'); raise SystemExit('a wrong password passed')
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login('alice@example.com', 'wonderland')
    s.sendmail('alice@example.com', ['bob@example.com'], 'Subject: over tls\r\n\r\nsecret\r\n')
with smtplib.SMTP(host, int(port)) as s:
    s.starttls(context=ctx)
    s.ehlo()
    # LOGIN, and a bare user name: there is only one domain.
    s.user, s.password = 'bob', 'hunter2'
    code, _ = s.auth('LOGIN', s.auth_login)
    assert code == 235, code
host, port = sys.argv[2].rsplit(':', 1)
p = poplib.POP3(host, int(port))
caps = p.capa()
assert 'STLS' in caps and 'USER' not in caps, caps
try:
    p.user('bob'); raise SystemExit('USER before STLS')
except poplib.error_proto as e:
    assert b'[AUTH]' in e.args[0], e
p.stls(context=ctx)
assert 'USER' in p.capa() and 'STLS' not in p.capa()
p.user('bob'); p.pass_('hunter2')
lines = p.retr(1)[1]
p.quit()
print([l.decode() for l in lines if l.startswith(b'\tby')][0])
print(lines[-1].decode())
host, port = sys.argv[3].rsplit(':', 1)
p = poplib.POP3_SSL(host, int(port), context=ctx)
p.user('bob@example.com'); p.pass_('hunter2')
print(p.stat()[0])
p.quit()
"#,
        &[&addrs[0], &addrs[1], &addrs[2]],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("with ESMTPSA"), "{out}");
    assert_eq!(&lines[1..], ["secret", "1"], "{out}");
    let (_, log) = twistd.stop();
    assert!(
        log.iter().any(|l| l.contains("smtp auth failed")),
        "{log:?}"
    );
    assert!(!log
        .iter()
        .any(|l| l.contains("not-it") || l.contains("wonderland")));
}

/// CVE-2011-0411: commands pipelined in plain text after STARTTLS must not run under TLS.
#[test]
fn plain_text_pipelined_after_starttls_is_discarded() {
    let sb = Sandbox::new();
    certificate(&sb);
    let twistd = serve(&sb, &["-c", "cert.pem", "--privkey", "key.pem"]);
    let out = python(
        sb.path(),
        r#"
import socket, ssl, sys
host, port = sys.argv[1].rsplit(':', 1)
ctx = ssl.create_default_context(cafile='cert.pem')
raw = socket.create_connection((host, int(port)), timeout=20)
f = raw.makefile('rb')
def reply(f):
    lines = []
    while True:
        line = f.readline()
        lines.append(line.decode().strip())
        if line[3:4] != b'-':
            return lines
reply(f)
raw.sendall(b'EHLO client.test\r\n'); reply(f)
raw.sendall(b'STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n')
assert reply(f)[0].startswith('220'), 'ready for TLS'
tls = ctx.wrap_socket(raw, server_hostname='127.0.0.1')
f = tls.makefile('rb')
tls.sendall(b'EHLO client.test\r\n'); reply(f)
tls.sendall(b'RCPT TO:<alice@example.com>\r\n')
print(reply(f)[0])
tls.sendall(b'STARTTLS\r\n')
print(reply(f)[0])
"#,
        &[&twistd.addr(0).to_string()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("503 5.5.1"),
        "the injected MAIL did not run: {out}"
    );
    assert!(
        lines[1].starts_with("503 5.5.1"),
        "no second STARTTLS: {out}"
    );
}

#[test]
fn plaintext_auth_when_allowed_and_its_refusals() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &["--auth", "--allow-plaintext-auth"]);
    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect(
        "AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHdvbmRlcmxhbmQ=",
        "503 5.5.1",
    );
    let ehlo = raw.expect("EHLO client.test", "250");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    raw.expect("AUTH CRAM-MD5", "504 5.5.4");
    raw.expect("AUTH PLAIN !!notbase64", "501 5.5.2");
    raw.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    raw.expect("*", "501 5.7.0");
    raw.expect("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8");
    // An authorization identity other than the user is refused.
    raw.expect(
        "AUTH PLAIN Ym9iQGV4YW1wbGUuY29tAGFsaWNlQGV4YW1wbGUuY29tAHdvbmRlcmxhbmQ=",
        "501 5.5.2",
    );
    raw.expect("AUTH PLAIN", "334");
    raw.expect("AGFsaWNlQGV4YW1wbGUuY29tAHdvbmRlcmxhbmQ=", "235 2.7.0");
    raw.expect("AUTH LOGIN YWxpY2U=", "503 5.5.1");
    raw.expect("MAIL FROM:<alice@example.com> AUTH=<>", "250");
    raw.expect("QUIT", "221");

    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect("EHLO client.test", "250");
    raw.expect("AUTH LOGIN YWxpY2U=", "334 UGFzc3dvcmQ6");
    raw.expect("d29uZGVybGFuZA==", "235 2.7.0");

    // Without the certificate or the permission, --auth is refused before anything runs.
    let out = sb.mktap(&["mail", "-d", "e.com=md", "--auth", "--pop3s", "tcp:995"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--auth: AUTH is only offered under TLS"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("--pop3s: needs --certificate"),
        "{}",
        stderr(&out)
    );
    let out = sb.mktap(&["mail", "-d", "e.com=md", "-c", "missing.pem"]);
    assert!(
        stderr(&out).contains("--certificate missing.pem"),
        "{}",
        stderr(&out)
    );
}

/// Waits (polling, bounded by TIMEOUT) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port that nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The smarthost: a second mail service for remote.test (carol) on a given loopback port.
fn smarthost(sb: &Sandbox, port: u16) -> Twistd {
    let endpoint = format!("tcp:{port}:interface=127.0.0.1");
    sb.twistd(&[
        "mail",
        "-d",
        "remote.test=maildir",
        "-u",
        "carol=x",
        "-s",
        &endpoint,
        "--no-pop3",
        "-H",
        "mx.remote.test",
    ])
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn relay_queues_retries_with_backoff_and_delivers_to_the_smarthost() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let smarthost_addr = format!("127.0.0.1:{port}");
    let mut twistd = serve(
        &a,
        &[
            "--relay",
            "queue",
            "--smarthost",
            &smarthost_addr,
            "--relay-min-backoff",
            "1",
        ],
    );
    python(
        a.path(),
        r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.sendmail('alice@example.com', ['carol@remote.test', 'bob@example.com'],
               'Subject: across\r\n\r\n.dotted line\r\nbye\r\n')
"#,
        &[&twistd.addr(0).to_string()],
    );
    assert_eq!(
        files(&a, "bob", "new").len(),
        1,
        "the local copy is delivered at once"
    );
    assert_eq!(
        count(&a.join("queue/new")),
        1,
        "the relayed copy waits in the queue"
    );
    twistd.wait_for("relay deferred");

    // The smarthost comes up; the next retry delivers.
    let _remote = smarthost(&b, port);
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);
    let carol = files(&b, "carol", "new");
    let text = &carol[0].1;
    assert!(
        text.starts_with("Return-Path: <alice@example.com>\nReceived: from mx.example.com"),
        "{text}"
    );
    assert!(
        text.contains("by mx.example.com (taphost)"),
        "both hops are recorded: {text}"
    );
    assert!(
        text.ends_with("Subject: across\n\n.dotted line\nbye\n"),
        "{text}"
    );
    assert!(!text.contains("X-Envelope"), "{text}");
    twistd.wait_for("relayed");
}

#[test]
fn relay_bounces_failed_and_expired_recipients_to_the_sender() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let _remote = smarthost(&b, port);
    let twistd = serve(
        &a,
        &[
            "--relay",
            "queue",
            "--smarthost",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let send = |addr: SocketAddr, rcpts: &[&str]| {
        let mut raw = Raw::smtp(addr);
        raw.expect("EHLO client.test", "250");
        raw.expect("MAIL FROM:<alice@example.com>", "250");
        for rcpt in rcpts {
            raw.expect(&format!("RCPT TO:<{rcpt}>"), "250");
        }
        raw.expect("DATA", "354");
        raw.send(b"Subject: to remote\r\nMessage-ID: <m1@example.com>\r\n\r\nthe body\r\n.\r\n");
        assert!(raw.reply().starts_with("250"));
    };
    // The smarthost refuses nobody@ (550 5.1.1) and takes carol@.
    send(twistd.addr(0), &["nobody@remote.test", "carol@remote.test"]);
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    wait_until("alice has the bounce", || {
        count(&a.join("maildir/alice/new")) == 1
    });
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);

    // A second sender whose smarthost never answers, with no time to wait: bounced at once.
    let c = Sandbox::new();
    let lonely = serve(
        &c,
        &[
            "--relay",
            "queue",
            "--smarthost",
            &format!("127.0.0.1:{}", free_port()),
            "--queue-lifetime",
            "0",
        ],
    );
    send(lonely.addr(0), &["carol@remote.test"]);
    wait_until("alice has the expiry bounce", || {
        count(&c.join("maildir/alice/new")) == 1
    });

    let script = r#"
import mailbox, sys
box = mailbox.Maildir('maildir/alice', factory=None, create=False)
(m,) = list(box)
assert m['Return-Path'] == '<>', m['Return-Path']
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
parts = m.get_payload()
status = parts[1].get_payload()
fields = {k: v for block in status for k, v in block.items()}
print(fields['Final-Recipient'], fields['Status'], fields['Action'])
assert parts[2].get_content_type() == 'text/rfc822-headers'
print(parts[2].get_payload().strip().splitlines()[-1])
"#;
    let bounced = python(a.path(), script, &[]);
    assert_eq!(
        bounced, "rfc822; nobody@remote.test 5.1.1 failed\nMessage-ID: <m1@example.com>\n",
        "{bounced}"
    );
    let expired = python(c.path(), script, &[]);
    assert_eq!(
        expired, "rfc822; carol@remote.test 4.4.7 failed\nMessage-ID: <m1@example.com>\n",
        "{expired}"
    );
    assert!(
        !files(&a, "alice", "new")[0].1.contains("the body"),
        "the bounce returns the headers only"
    );
}

#[test]
fn relaying_is_refused_without_relay_and_queued_mail_survives_a_restart() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    a.mktap_ok(&[
        "mail",
        "-d",
        "example.com=maildir",
        "-u",
        "alice=wonderland",
        "--relay",
        "queue",
        "--smarthost",
        &format!("127.0.0.1:{port}"),
        "-s",
        LOOPBACK0,
        "--no-pop3",
        "-H",
        "mx.example.com",
    ]);
    let mut twistd = a.twistd(&["-f", "mail.tap"]);
    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect("EHLO client.test", "250");
    raw.expect("MAIL FROM:<alice@example.com>", "250");
    raw.expect("RCPT TO:<carol@not_a_domain!>", "501");
    raw.expect("RCPT TO:<carol@remote.test>", "250");
    raw.expect("DATA", "354");
    raw.send(b"Subject: later\r\n\r\nkept\r\n.\r\n");
    assert!(raw.reply().starts_with("250"));
    twistd.wait_for("relay deferred");
    let (status, _) = twistd.stop();
    assert!(status.success());
    assert_eq!(count(&a.join("queue/new")), 1);

    let _remote = smarthost(&b, port);
    let _again = a.twistd(&["-f", "mail.tap"]);
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);

    let out = a.mktap(&["mail", "-d", "e.com=md", "--relay", "q"]);
    assert!(
        stderr(&out).contains("--relay: give --smarthost"),
        "{}",
        stderr(&out)
    );
    let out = a.mktap(&[
        "mail",
        "-d",
        "e.com=md",
        "--relay",
        "q",
        "--smarthost",
        "nope",
    ]);
    assert!(
        stderr(&out).contains("--smarthost 'nope': expected HOST:PORT"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_message_with_too_many_received_headers_is_a_loop() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    let hops = |n: usize| "Received: from somewhere\r\n".repeat(n);
    start_data(&mut raw, "alice@example.com");
    raw.send(format!("{}Subject: loop\r\n\r\nx\r\n.\r\n", hops(51)).as_bytes());
    let looped = raw.reply();
    assert!(looped.starts_with("554 5.4.6"), "{looped}");
    // Fifty is still fine, and Received lines in the body do not count.
    raw.expect("MAIL FROM:<a@remote.test>", "250");
    raw.expect("RCPT TO:<alice@example.com>", "250");
    raw.expect("DATA", "354");
    raw.send(format!("{}Subject: ok\r\n\r\n{}.\r\n", hops(50), hops(10)).as_bytes());
    assert!(raw.reply().starts_with("250 2.0.0"));
    assert_eq!(files(&sb, "alice", "new").len(), 1);
}

/// Deterministic noise: every byte value, NULs, bare CRs and LFs, invalid UTF-8.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

#[test]
fn garbage_never_disturbs_another_session() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let (smtp, pop3) = (twistd.addr(0), twistd.addr(1));
    // A well-behaved client opens a transaction and waits while the others misbehave.
    let mut good = Raw::smtp(smtp);
    good.expect("EHLO good.test", "250");
    good.expect("MAIL FROM:<a@remote.test>", "250");
    good.expect("RCPT TO:<alice@example.com>", "250");

    for seed in 0..8 {
        for addr in [smtp, pop3] {
            let mut bad = Raw::connect(addr);
            bad.line();
            // SMTP hangs up after 20 bad commands: a failed write is part of the game.
            let _ = bad.writer.write_all(&noise(20_000, seed));
            let _ = bad.writer.write_all(b"\r\n");
        }
    }
    // A line that never ends, then a close; invalid UTF-8 and absurd numbers.
    let mut endless = Raw::connect(smtp);
    endless.line();
    let _ = endless.writer.write_all(&vec![b'x'; 300_000]);
    drop(endless);
    let mut odd = Raw::smtp(smtp);
    odd.expect("EHLO \u{ff}\u{fe}", "250");
    odd.send(b"MAIL FROM:<\xff\xfe@x.test>\r\n");
    assert!(odd.reply().starts_with("501"));
    odd.expect("MAIL FROM:<a@b.test> SIZE=99999999999999999999999", "501");
    odd.expect("QUIT", "221");
    let mut pop = Raw::connect(pop3);
    pop.line();
    pop.send(b"USER \xff\x00\r\nPASS \x00\r\nUSER alice\r\nPASS wonderland\r\n");
    for _ in 0..4 {
        pop.line();
    }
    for command in [
        "RETR 99999999999999999999999",
        "TOP 1 -1",
        "LIST 0",
        "DELE -1",
        "UIDL x",
        "TOP",
        "STAT 1 2 3",
    ] {
        pop.send(format!("{command}\r\n").as_bytes());
        let reply = pop.line();
        assert!(reply.starts_with("-ERR"), "{command}: {reply}");
    }
    pop.send(b"QUIT\r\n");
    assert!(pop.line().starts_with("+OK"));

    // The patient client finishes, and the server is still whole.
    good.expect("DATA", "354");
    good.send(b"Subject: still here\r\n\r\nfine\r\n.\r\n");
    assert!(good.reply().starts_with("250 2.0.0"));
    good.expect("QUIT", "221");
    assert_eq!(files(&sb, "alice", "new").len(), 1);
    let (status, log) = twistd.stop();
    assert!(status.success(), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:?}");
}

#[test]
fn a_message_in_flight_when_stopping_is_finished_and_acknowledged() {
    let sb = Sandbox::new();
    let mut twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    start_data(&mut raw, "alice@example.com");
    raw.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    twistd.signal(nix::sys::signal::Signal::SIGTERM);
    twistd.wait_for("stopping");
    raw.send(b"second half\r\n.\r\n");
    let reply = raw.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert!(
        raw.rest().starts_with("421 4.3.2"),
        "then the session is closed"
    );
    let (status, _) = twistd.stop_waiting();
    assert!(status.success());
    let alice = files(&sb, "alice", "new");
    assert_eq!(alice.len(), 1);
    assert!(alice[0].1.ends_with("first half\nsecond half\n"));
}
