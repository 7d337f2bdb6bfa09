//! No acknowledged message is ever lost: kill -9 in the middle of 1000 deliveries, and a
//! graceful stop that finishes the message in flight and says 421 to idle sessions.

#[path = "mail/support.rs"]
mod support;
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use util::{Sandbox, TIMEOUT};

/// Sends 1000 numbered messages over four sessions, kills twistd with SIGKILL part-way, and
/// checks that every message that got its 250 is in the Maildir exactly once, and that every
/// file in `new/` is a whole message: with the default grouped flushes (`--fsync filesystem`)
/// and with `--fsync per-file`.
#[test]
fn kill_9_loses_no_acknowledged_message_and_leaves_no_partial_file() {
    kill_9_midway("filesystem");
}

#[test]
fn kill_9_with_per_file_fsync_loses_no_acknowledged_message() {
    kill_9_midway("per-file");
}

fn kill_9_midway(fsync: &str) {
    let sb = Sandbox::new();
    sb.mktap_ok(&[
        "mail",
        "--fsync",
        fsync,
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

#[test]
fn a_message_unfinished_at_the_drain_deadline_gets_421_and_is_not_delivered() {
    let sb = Sandbox::new();
    let mut twistd = serve_as(&sb, &["--shutdown-timeout", "1"], &[], &[]);
    let mut raw = Raw::smtp(twistd.addr(0));
    start_data(&mut raw, "alice@example.com");
    raw.send(b"Subject: too slow\r\n\r\nnever ends\r\n");
    twistd.signal(nix::sys::signal::Signal::SIGTERM);
    twistd.wait_for("stopping");
    // The client sends nothing more: at the deadline it is told, not just cut off.
    let told = raw.rest();
    assert!(told.starts_with("421 4.3.2"), "{told:?}");
    let (status, _) = twistd.stop_waiting();
    assert!(status.success());
    assert!(files(&sb, "alice", "new").is_empty());
    assert!(
        files(&sb, "alice", "tmp").is_empty(),
        "no partial file is left"
    );
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
