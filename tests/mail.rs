//! The mail plugin through the real binaries: mktap's tap and its options, SMTP with Python's
//! smtplib and a raw socket (every rejection and smuggling shape, garbage), Maildirs read by
//! Python's `mailbox`, aliases, and the example taps. POP3, TLS, relaying and durability have
//! their own files (`tests/mail_*.rs`); the helpers are in `tests/mail/support.rs`.

#[path = "mail/support.rs"]
mod support;
mod util;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use support::*;
use util::{stderr, Sandbox, Twistd};

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
    sb.write("afile", "");
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
        (
            &["mail", "-d", "e.com=md", "-u", "alice="],
            "--user alice: empty password",
        ),
        (
            &["mail", "-d", "e.com=md", "-u", "alice=x", "-u", "Alice=y"],
            "--user alice@e.com: given twice",
        ),
        (
            &["mail", "-d", "E.com=md", "-d", "e.com=other"],
            "--maildirdbmdomain e.com: given twice",
        ),
        (
            &["mail", "-d", "e.com=md", "--relay", "md/alice"],
            "--relay md/alice: shares files with domain e.com's md",
        ),
        (
            &["mail", "-d", "e.com=md/e", "--relay", "md"],
            "--relay md: shares files",
        ),
        (
            &["mail", "-d", "e.com=afile"],
            "--maildirdbmdomain e.com: afile is not a directory",
        ),
        (
            &["mail", "-d", "e.com=md", "-D", "--relay", "queue"],
            "--relay: with --default every domain is delivered here",
        ),
    ];
    for (args, message) in cases {
        let out = sb.mktap(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        // One prefix: "mktap: mail: error: ..." had clap's own in the middle.
        assert!(
            stderr(&out).starts_with("mktap: mail: ") && !stderr(&out).contains("error:"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("alice=x"),
            "passwords are never echoed"
        );
    }
    let out = sb.mktap(&["mail", "-d", "e.com=md", "--no-smtp", "--no-pop3"]);
    assert!(
        !stderr(&out).contains("pair up"),
        "said once: {}",
        stderr(&out)
    );
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
    raw.expect("MAIL FROM:", "501 5.1.7");
    raw.expect("MAIL FROM:a@b.test>", "501 5.1.7");
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
    // A message refused whole at its end, the session going on.
    let refused = |raw: &mut Raw, message: String, code: &str| {
        raw.expect("MAIL FROM:<>", "250");
        raw.expect("RCPT TO:<alice@example.com>", "250");
        raw.expect("DATA", "354");
        raw.send(format!("{message}.\r\n").as_bytes());
        let reply = raw.reply();
        assert!(reply.starts_with(code), "{reply}");
    };
    // A line over 1000 octets: in the middle, or the last (the end of data still ends it).
    let z = "z".repeat(1200);
    refused(
        &mut raw,
        format!("Subject: long\r\n\r\n{z}\r\nafter\r\n"),
        "500 5.5.2",
    );
    refused(
        &mut raw,
        format!("Subject: long\r\n\r\n{z}\r\n"),
        "500 5.5.2",
    );
    // 999 octets once its stuffed dot is gone (a legal 998 is taken: see
    // a_dot_stuffed_line_of_998_octets_is_not_too_long).
    let dotted = format!("..{}\r\n", "z".repeat(998));
    refused(
        &mut raw,
        format!("Subject: long\r\n\r\n{dotted}"),
        "500 5.5.2",
    );
    // The size limit counts CRLF line endings, as SIZE= does (RFC 1870): 2014 octets here,
    // though 1962 with the LFs they are stored with.
    let lines = format!("{}\r\n", "w".repeat(38)).repeat(50);
    refused(&mut raw, format!("Subject: s\r\n\r\n{lines}"), "552 5.3.4");
    // Nothing was delivered, and the session still works.
    raw.expect("NOOP", "250");
    raw.expect("VRFY alice", "252 2.0.0");
    assert!(files(&sb, "alice", "new").is_empty());
    assert!(files(&sb, "bob", "new").is_empty());
    // A bounce (null sender) to plain <postmaster>: there is no user of that name, but every
    // domain has a postmaster (RFC 5321 4.5.1), whose Maildir was made at start.
    raw.expect("MAIL FROM:<>", "250");
    raw.expect("RCPT TO:<postmaster>", "250 2.1.5");
    raw.expect("RCPT TO:<PostMaster@Example.COM>", "250 2.1.5");
    raw.expect("DATA", "354");
    raw.send(b"Subject: to the postmaster\r\n\r\nhello\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    let postmaster = files(&sb, "postmaster", "new");
    assert_eq!(postmaster.len(), 1, "one copy for the one Maildir");
    assert!(postmaster[0].1.contains("Subject: to the postmaster"));
    // Quoted local parts (RFC 5321 4.1.2), needed or not, and a domain's trailing dot.
    raw.expect(r#"MAIL FROM:<"john q. public"@remote.test>"#, "250 2.1.0");
    raw.expect(r#"RCPT TO:<"alice"@example.com.>"#, "250 2.1.5");
    raw.expect(r#"RCPT TO:<"not alice"@example.com>"#, "550 5.1.1");
    raw.expect("DATA", "354");
    raw.send(b"Subject: quoted\r\n\r\nhello\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    let alice = files(&sb, "alice", "new");
    assert_eq!(alice.len(), 1);
    assert!(
        alice[0]
            .1
            .starts_with("Return-Path: <\"john q. public\"@remote.test>\n"),
        "{}",
        alice[0].1
    );
    // Paths without angle brackets, as Postfix takes them by default.
    raw.expect("MAIL FROM: bare@remote.test SIZE=100", "250 2.1.0");
    raw.expect("RCPT TO:bob@example.com", "250 2.1.5");
    raw.expect("DATA", "354");
    raw.send(b"Subject: bare\r\n\r\nhello\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    let bob = files(&sb, "bob", "new");
    assert_eq!(bob.len(), 1);
    assert!(bob[0].1.starts_with("Return-Path: <bare@remote.test>\n"));
    raw.expect("QUIT", "221");
}

/// QA: a 990-character EHLO name went into `Received: from NAME`, a header line over 998
/// octets, which the next server (taphost itself) refused, bouncing the relayed message; a name
/// with parentheses broke the Received comment; an address literal of no address was taken.
#[test]
fn ehlo_names_and_paths_that_would_spoil_header_lines_are_refused() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    let long = "h".repeat(990);
    for name in [
        long.as_str(),
        &"h".repeat(256),
        "x)(y",
        "(evil)",
        "x;by",
        "a b",
        "[999.1.1.1]",
        "[127.0.0.1",
        "j\u{f6}rg",
    ] {
        for verb in ["EHLO", "HELO"] {
            let reply = raw.expect(&format!("{verb} {name}"), "501 5.5.2");
            assert!(reply.contains(verb), "a clear text: {reply}");
        }
    }
    for name in [
        "[127.0.0.1]",
        "[IPv6:::1]",
        "mail_relay-1.client.test",
        "localhost",
    ] {
        raw.expect(&format!("EHLO {name}"), "250");
    }
    // A new session: the one above is near the error limit. The longest name taken, and the
    // longest paths (256 octets with the brackets).
    let mut raw = Raw::smtp(twistd.addr(0));
    let longest = "h".repeat(255);
    raw.expect(&format!("EHLO {longest}"), "250");
    let sender = format!("{}@{}.test", "s".repeat(64), "d".repeat(254 - 64 - 6));
    assert_eq!(sender.len(), 254);
    for path in [
        format!("<x{sender}>"),
        format!("<{}@b.test>", "a".repeat(600)),
    ] {
        let reply = raw.expect(&format!("MAIL FROM:{path}"), "501 5.1.7");
        assert!(reply.contains("path too long"), "{reply}");
    }
    let reply = raw.expect("MAIL FROM:<x@[999.1.1.1]>", "501 5.1.7");
    assert!(reply.contains("address literal"), "{reply}");
    raw.expect("MAIL FROM:<x@[IPv6:2001:db8::1]>", "250 2.1.0");
    raw.expect("RSET", "250");
    raw.expect(&format!("MAIL FROM:<{sender}>"), "250 2.1.0");
    let reply = raw.expect(
        &format!("RCPT TO:<{}@example.com>", "a".repeat(250)),
        "501 5.1.3",
    );
    assert!(reply.contains("path too long"), "{reply}");
    let reply = raw.expect("RCPT TO:<x@[1.2.3]>", "501 5.1.3");
    assert!(reply.contains("address literal"), "{reply}");
    raw.expect("RCPT TO:<alice@example.com>", "250 2.1.5");
    raw.expect("DATA", "354");
    raw.send(b"Subject: longest names\r\n\r\nhi\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    raw.expect("QUIT", "221");
    let alice = files(&sb, "alice", "new");
    let text = &alice[0].1;
    assert!(
        text.starts_with(&format!(
            "Return-Path: <{sender}>\nReceived: from {longest} ([127.0.0.1])\n"
        )),
        "{text}"
    );
    let widest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(widest <= 998, "a header line of {widest} octets");
}

/// QA: DATA whose first line is no header field was stored right after the Return-Path and
/// Received lines written here, with no empty line: the mailbox saw a header section without
/// an end (MissingHeaderBodySeparatorDefect). An empty line now goes before such a line, as
/// Postfix's cleanup puts one. A field in RFC 5322's obsolete syntax (blanks before the colon)
/// stays a header field, as Postfix keeps it.
#[test]
fn a_line_that_is_no_header_field_starts_the_body_after_an_empty_line() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    let messages: &[&[u8]] = &[
        b"x\r\n",
        b"no header line\r\nsecond\r\n",
        b"Subject: two\r\nnot a header\r\n\r\nafter\r\n",
        b"Subject: three\r\n folded: on\r\n\r\nbody three\r\n",
        b" leading space\r\n",
    ];
    for message in messages {
        start_data(&mut raw, "alice@example.com");
        raw.send(message);
        raw.send(b".\r\n");
        let reply = raw.reply();
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    raw.expect("QUIT", "221");
    let out = python(
        sb.path(),
        r#"
import mailbox
for m in mailbox.Maildir('maildir/alice', factory=None, create=False):
    print(repr((m.defects, m['Subject'], m.get_payload())))
"#,
        &[],
    );
    let mut seen: Vec<&str> = out.lines().collect();
    seen.sort();
    let mut expected = [
        r"([], None, 'x\n')",
        r"([], None, 'no header line\nsecond\n')",
        r"([], 'two', 'not a header\n\nafter\n')",
        r"([], 'three\n folded: on', 'body three\n')",
        r"([], None, ' leading space\n')",
    ];
    expected.sort();
    assert_eq!(seen, expected, "{out}");
    for (_, text) in files(&sb, "alice", "new") {
        let (head, _) = text.split_once("\n\n").expect("an empty line");
        assert!(
            head.lines()
                .all(|l| l.contains(':') || l.starts_with('\t') || l.starts_with(' ')),
            "{text}"
        );
    }

    // Python's parser reads no field with a blank before its colon; the text itself shows
    // that no empty line was put before it.
    let mut raw = Raw::smtp(twistd.addr(0));
    start_data(&mut raw, "alice@example.com");
    raw.send(b"Subject : obsolete space\r\n\r\nbody\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    raw.expect("QUIT", "221");
    let alice = files(&sb, "alice", "new");
    let (_, text) = alice
        .iter()
        .find(|(_, t)| t.contains("obsolete space"))
        .expect("delivered");
    let (head, body) = text.split_once("\n\n").expect("an empty line");
    assert!(head.ends_with("\nSubject : obsolete space"), "{text}");
    assert_eq!(body, "body\n");
}

/// QA: the 1000-octet limit was applied to the line as sent, so a legal 998-octet line starting
/// with a dot (999 octets once stuffed) was refused. RFC 5321 4.5.2: the limit is the line's.
#[test]
fn a_dot_stuffed_line_of_998_octets_is_not_too_long() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    start_data(&mut raw, "alice@example.com");
    let line = format!(".{}", "z".repeat(997));
    raw.send(format!("Subject: dotted\r\n\r\n.{line}\r\n.\r\n").as_bytes());
    let reply = raw.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    raw.expect("QUIT", "221");
    let alice = files(&sb, "alice", "new");
    assert!(
        alice[0].1.ends_with(&format!("\n\n{line}\n")),
        "{}",
        alice[0].1
    );
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
    odd.expect("EHLO \u{ff}\u{fe}", "501");
    odd.send(b"EHLO a\rb\r\n");
    assert!(
        odd.reply().starts_with("501"),
        "no bare CR into a Received header"
    );
    odd.expect("EHLO odd.test", "250");
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
    // The postmaster alias is gone: the domain's own postmaster Maildir takes its mail.
    raw.expect("RCPT TO:<postmaster@example.com>", "250 2.1.5");
    raw.expect("RCPT TO:<nowhere@example.com>", "550 5.1.1");
    raw.expect("QUIT", "221");

    // A bad aliases file is refused before anything starts, naming the line.
    sb.write("bad", "ok: alice\nrun: |/bin/sh -c evil\n");
    let out = sb.mktap(&["mail", "-d", "example.com=maildir", "-A", "bad"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--aliases bad:2:"),
        "{}",
        stderr(&out)
    );
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
