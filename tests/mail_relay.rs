//! The mail plugin's relay queue against a second mail service on loopback as the smarthost:
//! the round trip, retries, bounces, expiry, and a queue that outlives a restart.

#[path = "mail/support.rs"]
mod support;
mod util;

use std::net::SocketAddr;
use support::*;

use util::{stderr, wait_until, Sandbox};

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

/// Sends one message from alice to carol@remote.test through the relay at `addr`.
fn submit(dir: &std::path::Path, addr: SocketAddr, subject: &str) {
    python(
        dir,
        r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
with smtplib.SMTP(host, int(port)) as s:
    s.sendmail('alice@example.com', ['carol@remote.test'],
               'Subject: %s\r\n\r\nbody\r\n' % sys.argv[2])
"#,
        &[&addr.to_string(), subject],
    );
}

/// The first log line with `needle`, logged already (maybe before "ready:") or to come.
fn logged(twistd: &mut util::Twistd, needle: &str) -> String {
    match twistd.log.iter().find(|l| l.contains(needle)) {
        Some(line) => line.clone(),
        None => twistd.wait_for(needle),
    }
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
        serve(
            &a,
            &[
                "--relay",
                "queue",
                "--smarthost",
                &smarthost_addr,
                "--relay-min-backoff",
                min,
                "--relay-max-backoff",
                max,
            ],
        )
    };

    // The smarthost is down: the first attempt is deferred, for an hour, in the file.
    let mut twistd = relay("3600", "7200");
    submit(a.path(), twistd.addr(0), "first");
    twistd.wait_for("relay deferred");
    let deferred = only_queue_file(&a);
    assert_eq!(envelope_field(&deferred, "Attempts"), 1, "{deferred}");
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
    let waits = logged(&mut twistd, "before its next attempt");
    assert!(waits.contains("attempts=1"), "{waits}");
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
    let line = twistd.wait_for("relay deferred");
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
