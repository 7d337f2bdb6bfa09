//! The mail plugin's relay queue against a second mail service on loopback as the smarthost:
//! the round trip, retries, bounces, expiry, a queue and a retry schedule that outlive a
//! restart, STARTTLS towards the next server; and delivery by MX through a DNS server of the
//! test's own (`tests/mail/dns.py`) to a mail service on 127.0.0.x:25.

#[path = "mail/support.rs"]
mod support;
mod util;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use support::*;

use util::{stderr, wait_until, Sandbox, Twistd};

/// `twistd mail` ([`serve_env`]) queueing mail for other domains in `queue/` and relaying it to
/// the smarthost at `smarthost`, with `extra` options.
fn relay_via(sb: &Sandbox, smarthost: &str, extra: &[&str], env: &[(&str, &Path)]) -> Twistd {
    let mut args = vec!["--relay", "queue", "--smarthost", smarthost];
    args.extend_from_slice(extra);
    serve_env(sb, &args, env)
}

#[test]
fn relay_queues_retries_with_backoff_and_delivers_to_the_smarthost() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let smarthost_addr = format!("127.0.0.1:{port}");
    let mut twistd = relay_via(&a, &smarthost_addr, &["--relay-min-backoff", "1"], &[]);
    send_from_alice(
        a.path(),
        twistd.addr(0),
        &["carol@remote.test", "bob@example.com"],
        "Subject: across\r\n\r\n.dotted line\r\nbye\r\n",
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
    // The deferral rewrites the queue file (its retry time); it stays private.
    wait_until("the queue file records the attempt", || {
        only_queue_file(&a).contains("X-Envelope-Attempts: ")
    });
    let queued: Vec<_> = std::fs::read_dir(a.join("queue/new"))
        .expect("queue/new")
        .map(|e| e.expect("entry").path())
        .collect();
    let mode = std::fs::metadata(&queued[0])
        .expect("queue file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

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
    // As Postfix logs it: how long it waited, and the next server's name for it.
    let relayed = twistd.wait_for("relayed");
    assert!(
        relayed.contains(" delay=") && relayed.contains("(250 2.0.0 Ok: queued as "),
        "{relayed}"
    );
}

#[test]
fn relay_bounces_failed_and_expired_recipients_to_the_sender() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let _remote = smarthost(&b, port);
    let mut twistd = relay_via(&a, &format!("127.0.0.1:{port}"), &[], &[]);
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
    // The log tells who refused what, and links the session's queue id to the bounce.
    let delivered = twistd.logged("delivered");
    let id = delivered
        .split_whitespace()
        .find_map(|f| f.strip_prefix("id="))
        .expect("an id");
    let failed = twistd.logged("relay failed");
    assert!(
        failed.contains(&format!("id={id}"))
            && failed.contains(&format!("host 127.0.0.1:{port} said: 550 5.1.1"))
            && failed.contains("(in reply to RCPT TO command)"),
        "{failed}"
    );
    let notified = twistd.logged("sender non-delivery notification");
    assert!(
        notified.contains(&format!("id={id}")) && notified.contains("nobody@remote.test"),
        "{notified}"
    );

    // A second sender whose smarthost never answers, with no time to wait: bounced at once.
    let c = Sandbox::new();
    let lonely = relay_via(
        &c,
        &format!("127.0.0.1:{}", free_port()),
        &["--queue-lifetime", "0"],
        &[],
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
        "--relay-min-backoff",
        "1",
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

    // Without --smarthost the relay looks up MX hosts (not exercised here: tests stay on
    // loopback); the tap records no smarthost.
    a.mktap_ok(&["-n", "mx", "mail", "-d", "e.com=md", "--relay", "q"]);
    let tap: serde_json::Value = serde_json::from_str(&a.read("mx.tap")).expect("json");
    assert_eq!(
        tap["services"][0]["config"]["smarthost"],
        serde_json::Value::Null
    );
    let out = a.mktap(&["mail", "-d", "e.com=md", "--smarthost", "h:25"]);
    assert!(!out.status.success());
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

/// An alias reaching another domain forwards through the relay queue (it was dropped with a
/// warning), a name that leads back to itself keeps a copy in its own Maildir, and a
/// recipient given twice (directly, by an alias, with another case of domain) is queued once.
#[test]
fn aliases_forward_through_the_relay_and_a_recipient_is_queued_once() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    std::fs::write(
        a.join("aliases"),
        "bob: bob, carol@remote.test\nlist: bob, Carol@REMOTE.test\n",
    )
    .expect("aliases");
    let port = free_port();
    let mut twistd = relay_via(
        &a,
        &format!("127.0.0.1:{port}"),
        &["-A", "aliases", "--relay-min-backoff", "1"],
        &[],
    );
    send_from_alice(
        a.path(),
        twistd.addr(0),
        &[
            "list@example.com",
            "bob@example.com",
            "carol@Remote.Test",
            "carol@remote.test",
        ],
        "Subject: listed\r\n\r\nbody\r\n",
    );
    assert_eq!(files(&a, "bob", "new").len(), 1, "bob keeps one copy");
    let queued = only_queue_file(&a);
    let to: Vec<_> = queued
        .lines()
        .filter(|l| l.starts_with("X-Envelope-To:"))
        .collect();
    assert_eq!(to, ["X-Envelope-To: <carol@remote.test>"], "{queued}");
    twistd.wait_for("relay deferred");
    let _remote = smarthost(&b, port);
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);
    assert_eq!(carol_subjects(&b), ["listed"]);
}

/// QA: the relay queue's copy of a message whose first line is no header field had the
/// Received line glued to it as well (the next server then stored it without an empty line
/// after the header section), and the delivery log line of a message with only relayed
/// recipients said `to= relay=...`.
#[test]
fn a_relayed_message_without_header_fields_gets_its_empty_line_and_the_log_no_empty_to() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let _remote = smarthost(&b, port);
    let mut twistd = relay_via(&a, &format!("127.0.0.1:{port}"), &[], &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    raw.expect("EHLO client.test", "250");
    raw.expect("MAIL FROM:<alice@example.com>", "250");
    raw.expect("RCPT TO:<carol@remote.test>", "250 2.1.5");
    raw.expect("DATA", "354");
    raw.send(b"no header line\r\nsecond\r\n.\r\n");
    assert!(raw.reply().starts_with("250 2.0.0"));
    raw.expect("QUIT", "221");
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    let carol = files(&b, "carol", "new");
    assert!(
        carol[0].1.ends_with("\n\nno header line\nsecond\n"),
        "{}",
        carol[0].1
    );
    let out = python(
        b.path(),
        r#"
import mailbox
for m in mailbox.Maildir('maildir/carol', factory=None, create=False):
    print(repr((m.defects, m.get_payload())))
"#,
        &[],
    );
    assert_eq!(out, "([], 'no header line\\nsecond\\n')\n");
    let delivered = twistd.logged("delivered");
    let fields: Vec<&str> = delivered.split_whitespace().collect();
    assert!(
        fields.contains(&"relay=carol@remote.test") && !fields.iter().any(|f| f.starts_with("to=")),
        "{delivered}"
    );
}

/// Sends one message from alice to carol@remote.test through the relay at `addr`.
/// Two servers on one relay queue (two processes here; a restarted service's old and new
/// instances alike): one worker delivers from it at a time, the other waits, then takes over.
#[test]
fn one_worker_at_a_time_delivers_from_a_relay_queue() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let smarthost_addr = format!("127.0.0.1:{port}");
    let first = relay_via(&a, &smarthost_addr, &[], &[]);
    let mut second = relay_via(&a, &smarthost_addr, &[], &[]);
    // Its worker may say so before "ready:", which `relay_via` has already read past.
    second.logged("another worker delivers from the relay queue; waiting");
    let (status, _) = first.stop();
    assert!(status.success());
    second.wait_for("the other worker is done; delivering from the relay queue");
    let _remote = smarthost(&b, port);
    submit(a.path(), second.addr(0), "after the hand-over");
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    second.wait_for("relayed");
}

fn submit(dir: &Path, addr: SocketAddr, subject: &str) {
    send_from_alice(
        dir,
        addr,
        &["carol@remote.test"],
        &format!("Subject: {subject}\r\n\r\nbody\r\n"),
    );
}

/// Sends `message` from alice@example.com to `rcpts` through the server at `addr` (smtplib).
fn send_from_alice(dir: &Path, addr: SocketAddr, rcpts: &[&str], message: &str) {
    python(
        dir,
        r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.sendmail('alice@example.com', sys.argv[2].split(','), sys.argv[3])
"#,
        &[&addr.to_string(), &rcpts.join(","), message],
    );
}

/// The queue's only file, as text.
fn only_queue_file(sb: &Sandbox) -> String {
    let names: Vec<_> = std::fs::read_dir(sb.join("queue/new"))
        .expect("queue/new")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    String::from_utf8_lossy(&std::fs::read(&names[0]).expect("read")).into_owned()
}

/// An `X-Envelope-*` field of a queue file, as a number.
fn envelope_field(file: &str, name: &str) -> u64 {
    file.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("X-Envelope-{name}: ")))
        .unwrap_or_else(|| panic!("no X-Envelope-{name} in {file}"))
        .parse()
        .expect("a number")
}

/// The subjects of carol's messages at the smarthost, sorted.
fn carol_subjects(sb: &Sandbox) -> Vec<String> {
    let mut subjects: Vec<String> = files(sb, "carol", "new")
        .iter()
        .filter_map(|(_, text)| {
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    subjects.sort();
    subjects
}

/// Retry times used to live in memory only: a restart retried every queued message at once and
/// started the back-off again. The queue file records them now.
#[test]
fn the_retry_schedule_survives_a_restart() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let port = free_port();
    let smarthost_addr = format!("127.0.0.1:{port}");
    let relay = |min: &str, max: &str| {
        relay_via(
            &a,
            &smarthost_addr,
            &["--relay-min-backoff", min, "--relay-max-backoff", max],
            &[],
        )
    };

    // The smarthost is down: the first attempt is deferred, for an hour, in the file.
    let mut twistd = relay("3600", "7200");
    submit(a.path(), twistd.addr(0), "first");
    twistd.wait_for("relay deferred");
    // The log line comes before the rewrite.
    wait_until("the file records the first attempt", || {
        only_queue_file(&a).contains("\nX-Envelope-Attempts: 1\n")
    });
    let deferred = only_queue_file(&a);
    assert!(
        envelope_field(&deferred, "Next-Attempt") >= envelope_field(&deferred, "Queued") + 3600,
        "{deferred}"
    );
    let (status, _) = twistd.stop();
    assert!(status.success());

    // The smarthost is up, but the restarted relay keeps the recorded hour: a message queued
    // after the restart goes out, the first one stays as it was.
    let remote = smarthost(&b, port);
    let mut twistd = relay("3600", "7200");
    let waits = twistd.logged("wait for their recorded next attempt");
    assert!(waits.contains("1 deferred relay queue file(s)"), "{waits}");
    submit(a.path(), twistd.addr(0), "second");
    wait_until("carol has the second message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    wait_until("the second message left the queue", || {
        count(&a.join("queue/new")) == 1
    });
    assert_eq!(carol_subjects(&b), ["second"]);
    assert_eq!(only_queue_file(&a), deferred, "the first one was not tried");
    let (status, _) = twistd.stop();
    assert!(status.success());

    // A maximum back-off of 2 s brings the recorded time forward; with the smarthost down
    // again, that attempt is the second (2 s = 1 s doubled), not a first one.
    drop(remote);
    let mut twistd = relay("1", "2");
    // The attempt is due at once, so it may be logged before "ready:".
    let line = twistd.logged("relay deferred");
    assert!(line.contains("attempt=2"), "{line}");
    wait_until("the file records the second attempt", || {
        std::fs::read_dir(a.join("queue/new"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("\nX-Envelope-Attempts: 2\n"))
            })
    });
    let _remote = smarthost(&b, port);
    wait_until("carol has both messages", || {
        count(&b.join("maildir/carol/new")) == 2
    });
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);
    assert_eq!(carol_subjects(&b), ["first", "second"]);
    twistd.wait_for("relayed");
}

/// The next server offers STARTTLS (a certificate made now): `may`, the default, takes it
/// without checking the certificate, `verify` with the right `--relay-ca` takes it and checks,
/// `verify` with other CAs defers, `none` stays in plain text.
#[test]
fn relay_uses_starttls_towards_the_next_server() {
    let b = Sandbox::new();
    certificate(&b);
    let port = free_port();
    let _remote = remote(
        &b,
        &format!("tcp:{port}:interface=127.0.0.1"),
        &["-c", "cert.pem", "--privkey", "key.pem"],
    );
    let smarthost_addr = format!("127.0.0.1:{port}");
    let ca_path = b.join("cert.pem");
    let ca = ca_path.to_str().expect("a UTF-8 path");
    // The "system" CAs of the verifying relay without --relay-ca: another certificate.
    let others = Sandbox::new();
    certificate(&others);

    // verify, with CAs that do not know the certificate: deferred, nothing reaches carol.
    let a = Sandbox::new();
    let mut relay = relay_via(
        &a,
        &smarthost_addr,
        &["--relay-tls", "verify"],
        &[("SSL_CERT_FILE", &others.join("cert.pem"))],
    );
    submit(a.path(), relay.addr(0), "unverifiable");
    let deferred = relay.wait_for("relay deferred");
    assert!(
        deferred.contains("TLS handshake: invalid peer certificate")
            && deferred.contains("--relay-tls verify"),
        "{deferred}"
    );
    assert_eq!(count(&a.join("queue/new")), 1);
    assert_eq!(count(&b.join("maildir/carol/new")), 0);

    // One message through a new relay with `tls` options, once carol has `nth` messages: the
    // relay's log line for it.
    let relay_one = |tls: &[&str], env: &[(&str, &Path)], subject: &str, nth: usize| {
        let a = Sandbox::new();
        let mut relay = relay_via(&a, &smarthost_addr, tls, env);
        submit(a.path(), relay.addr(0), subject);
        wait_until("carol has the message", || {
            count(&b.join("maildir/carol/new")) == nth
        });
        relay.wait_for("relayed")
    };

    // may (the default): encrypted, not verified; the log says what the certificate would
    // have been worth against the system's CAs: nothing (self-signed)...
    let relayed = relay_one(&[], &[], "opportunistic", 1);
    assert!(
        relayed.contains("tls=encrypted (TLSv1_3 ")
            && relayed.contains("certificate not verified (untrusted)"),
        "{relayed}"
    );
    // ...or, with the receiver's certificate among them, valid for the address connected to.
    let relayed = relay_one(
        &[],
        &[("SSL_CERT_FILE", &ca_path)],
        "opportunistic, trusted",
        2,
    );
    assert!(
        relayed.contains("certificate not verified (trusted, for this name)"),
        "{relayed}"
    );

    // verify with the receiver's certificate as the CA: encrypted and verified.
    let relayed = relay_one(
        &["--relay-tls", "verify", "--relay-ca", ca],
        &[],
        "verified",
        3,
    );
    assert!(
        relayed.contains("tls=encrypted (TLSv1_3 ") && relayed.contains(", certificate verified"),
        "{relayed}"
    );

    // verify with the "system" CAs in $SSL_CERT_DIR, under a name as `openssl rehash` gives:
    // verified too.
    let cert_dir = Sandbox::new();
    std::fs::copy(b.join("cert.pem"), cert_dir.join("0a1b2c3d.0")).expect("copy");
    let relayed = relay_one(
        &["--relay-tls", "verify"],
        &[("SSL_CERT_DIR", cert_dir.path())],
        "verified by the directory",
        4,
    );
    assert!(relayed.contains(", certificate verified"), "{relayed}");

    // none: plain text although STARTTLS is offered.
    let relayed = relay_one(&["--relay-tls", "none"], &[], "plain", 5);
    assert!(relayed.contains("tls=plain text"), "{relayed}");

    // What the receiver wrote down: ESMTPS for the sessions under TLS, ESMTP for the other.
    let mut received: Vec<(String, &str)> = files(&b, "carol", "new")
        .iter()
        .map(|(_, text)| {
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .expect("a subject")
                .to_string();
            let with = if text.contains("by mx.remote.test (taphost) with ESMTPS id") {
                "ESMTPS"
            } else if text.contains("by mx.remote.test (taphost) with ESMTP id") {
                "ESMTP"
            } else {
                "?"
            };
            (subject, with)
        })
        .collect();
    received.sort();
    assert_eq!(
        received,
        [
            ("opportunistic".to_string(), "ESMTPS"),
            ("opportunistic, trusted".to_string(), "ESMTPS"),
            ("plain".to_string(), "ESMTP"),
            ("verified".to_string(), "ESMTPS"),
            ("verified by the directory".to_string(), "ESMTPS"),
        ]
    );
}

/// `may`, with a certificate that a known CA (in `$SSL_CERT_FILE`) signed for another name than
/// the one connected to: taken, and logged as trusted for another name.
#[test]
fn relay_may_logs_a_certificate_for_another_name() {
    let b = Sandbox::new();
    certificate_for(&b, &["mx.elsewhere.test"]);
    let port = free_port();
    let _remote = remote(
        &b,
        &format!("tcp:{port}:interface=127.0.0.1"),
        &["-c", "cert.pem", "--privkey", "key.pem"],
    );
    let a = Sandbox::new();
    let smarthost_addr = format!("127.0.0.1:{port}");
    let mut relay = relay_via(
        &a,
        &smarthost_addr,
        &[],
        &[("SSL_CERT_FILE", &b.join("cert.pem"))],
    );
    submit(a.path(), relay.addr(0), "elsewhere");
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    let relayed = relay.wait_for("relayed");
    assert!(
        relayed.contains("certificate not verified (trusted, for another name)"),
        "{relayed}"
    );
}

/// A Python server of `tests/mail/` that prints its port, then a line per thing it saw;
/// killed when dropped.
struct Script {
    child: Child,
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn start(name: &str, args: &[&str]) -> Script {
        let mut child = Command::new("python3")
            .arg(util::repo().join("tests/mail").join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{name} prints its port"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines_seen = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                lines_seen.lock().expect("seen").push(line);
            }
        });
        Script { child, port, seen }
    }

    /// Whether it printed exactly `line`.
    fn saw(&self, line: &str) -> bool {
        self.seen.lock().expect("seen").iter().any(|l| l == line)
    }

    fn lines(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address in 127/8 whose port 25 is free (binding it needs root), or why there is none.
fn loopback_with_port_25_free() -> Result<Ipv4Addr, String> {
    // Start somewhere that depends on the process, so parallel runs rarely meet.
    let start = std::process::id() % 200;
    let mut last = String::new();
    for i in 0..200 {
        let ip = Ipv4Addr::new(127, 0, 0, 30 + ((start + i) % 200) as u8);
        match std::net::TcpListener::bind((ip, 25)) {
            Ok(_) => return Ok(ip),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!("binding port 25 needs root: {e}"))
            }
            Err(e) => last = format!("{ip}:25: {e}"),
        }
    }
    Err(format!("no 127.0.0.x with port 25 free (last: {last})"))
}

/// MX routing for real: the relay asks a DNS server of the test's own (`--relay-resolver`)
/// for remote.test's MX, then for the MX host's address, and delivers there on port 25; a
/// recipient at a domain with a null MX (RFC 7505), or at one that does not exist (NXDOMAIN),
/// is bounced at once.
#[test]
fn relay_delivers_by_mx_through_the_resolver_given() {
    let mx_ip = match loopback_with_port_25_free() {
        Ok(ip) => ip,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let zone = format!(
        r#"{{"MX": {{"remote.test": [[20, "backup.remote.test"], [10, "mx.remote.test"]],
                    "nomail.test": [[0, ""]]}},
            "A": {{"mx.remote.test": ["{mx_ip}"]}}}}"#
    );
    let dns = Script::start("dns.py", &[&zone]);
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let _remote = remote(&b, &format!("tcp:25:interface={mx_ip}"), &[]);
    let resolver = format!("127.0.0.1:{}", dns.port);
    let mut relay = serve(&a, &["--relay", "queue", "--relay-resolver", &resolver]);
    send_from_alice(
        a.path(),
        relay.addr(0),
        &[
            "carol@remote.test",
            "nobody@nomail.test",
            "ghost@nowhere.test",
        ],
        "Subject: by mx\r\nMessage-ID: <mx1@example.com>\r\n\r\nbody\r\n",
    );
    wait_until("carol has the message", || {
        count(&b.join("maildir/carol/new")) == 1
    });
    let relayed = relay.wait_for("relayed");
    assert!(
        relayed.contains(&format!("relay=mx.remote.test[{mx_ip}]:25")),
        "{relayed}"
    );
    let carol = &files(&b, "carol", "new")[0].1;
    assert!(carol.contains("Subject: by mx\n"), "{carol}");
    assert!(dns.saw("MX remote.test") && dns.saw("A mx.remote.test"));

    // The null MX and the domain that does not exist: one bounce naming both recipients
    // (5.1.10 and 5.4.4), at once, and no address looked up for either domain.
    wait_until("alice has the bounce", || {
        count(&a.join("maildir/alice/new")) == 1
    });
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);
    let bounce = &files(&a, "alice", "new")[0].1;
    assert!(
        bounce.contains(
            "Final-Recipient: rfc822; nobody@nomail.test\nAction: failed\nStatus: 5.1.10\n"
        ),
        "{bounce}"
    );
    assert!(
        bounce.contains(
            "Final-Recipient: rfc822; ghost@nowhere.test\nAction: failed\nStatus: 5.4.4\n"
        ),
        "{bounce}"
    );
    assert!(!bounce.contains("carol@remote.test"), "{bounce}");
    assert!(dns.saw("MX nomail.test") && dns.saw("MX nowhere.test"));
    assert!(!dns.saw("A nomail.test"), "a null MX is no implicit MX");
    assert!(
        !dns.saw("A nowhere.test"),
        "a domain that does not exist has no implicit MX"
    );
}

#[test]
fn relay_options_are_checked() {
    let sb = Sandbox::new();
    let refused = |args: &[&str], message: &str| {
        let mut all = vec!["mail", "-d", "e.com=md"];
        all.extend_from_slice(args);
        let out = sb.mktap(&all);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    };
    refused(
        &["--relay", "q", "--relay-ca", "ca.pem"],
        "--relay-ca: only used with --relay-tls verify (not may)",
    );
    refused(
        &[
            "--relay",
            "q",
            "--relay-tls",
            "verify",
            "--relay-ca",
            "missing.pem",
        ],
        "--relay-ca missing.pem:",
    );
    refused(&["--relay", "q", "--relay-tls", "sometimes"], "--relay-tls");
    refused(
        &["--relay-tls", "verify"],
        "--relay-tls: needs --relay QUEUEDIR",
    );
    refused(
        &["--relay", "q", "--relay-resolver", "dns.example"],
        "expected IP or IP:PORT",
    );
    refused(
        &[
            "--relay",
            "q",
            "--smarthost",
            "h:25",
            "--relay-resolver",
            "127.0.0.53",
        ],
        "--relay-resolver: not used with --smarthost",
    );
    sb.mktap_ok(&[
        "-n",
        "relay",
        "mail",
        "-d",
        "e.com=md",
        "--relay",
        "q",
        "--relay-resolver",
        "127.0.0.53",
        "--relay-resolver",
        "[::1]:5353",
    ]);
    let tap: serde_json::Value = serde_json::from_str(&sb.read("relay.tap")).expect("json");
    let config = &tap["services"][0]["config"];
    assert_eq!(config["relay_tls"], "may");
    assert_eq!(
        config["relay_resolver"],
        serde_json::json!(["127.0.0.53:53", "[::1]:5353"])
    );
}

/// A next server that closes the connection after the whole message, without a word: the
/// delivery is deferred, and the log says where it broke off and that the message may arrive
/// twice (Postfix: "message may be sent more than once").
#[test]
fn a_connection_lost_after_the_message_is_deferred_with_a_warning() {
    let broken = Script::start("broken_smtp.py", &["data"]);
    let a = Sandbox::new();
    let mut relay = relay_via(&a, &format!("127.0.0.1:{}", broken.port), &[], &[]);
    submit(a.path(), relay.addr(0), "lost");
    let deferred = relay.wait_for("relay deferred");
    assert!(
        deferred.contains(
            "the next server closed the connection (after the end of the message: it may be sent more than once)"
        ),
        "{deferred}"
    );
    assert_eq!(count(&a.join("queue/new")), 1, "still queued");
}

/// `--relay-tls may` when the handshake fails: the delivery is made again in plain text on a
/// new connection, as Postfix does; `verify` defers when STARTTLS is not offered at all.
#[test]
fn relay_tls_may_falls_back_to_plain_text_and_verify_does_not() {
    let broken = Script::start("broken_smtp.py", &["tls"]);
    let a = Sandbox::new();
    let mut relay = relay_via(&a, &format!("127.0.0.1:{}", broken.port), &[], &[]);
    submit(a.path(), relay.addr(0), "fallback");
    let fallback = relay.wait_for("trying again in plain text");
    assert!(fallback.contains("STARTTLS failed"), "{fallback}");
    let relayed = relay.wait_for("relayed");
    assert!(relayed.contains("tls=plain text"), "{relayed}");
    wait_until("the queue is empty", || count(&a.join("queue/new")) == 0);
    wait_until("the server saw QUIT", || broken.saw("QUIT"));
    let commands: Vec<String> = broken
        .lines()
        .into_iter()
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        commands,
        ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "MESSAGE", "QUIT"],
        "one TLS try, then one plain session"
    );

    // A receiver without STARTTLS, and verify: deferred, nothing sent.
    let b = Sandbox::new();
    let port = free_port();
    let _plain = smarthost(&b, port);
    let c = Sandbox::new();
    certificate(&c);
    let mut strict = relay_via(
        &c,
        &format!("127.0.0.1:{port}"),
        // Any CA will do: the session never gets as far as a certificate.
        &["--relay-tls", "verify", "--relay-ca", "cert.pem"],
        &[],
    );
    submit(c.path(), strict.addr(0), "strict");
    let deferred = strict.wait_for("relay deferred");
    assert!(
        deferred.contains("no STARTTLS offered, and --relay-tls verify requires TLS"),
        "{deferred}"
    );
    assert_eq!(count(&b.join("maildir/carol/new")), 0);
    assert_eq!(count(&c.join("queue/new")), 1);
}
