//! The mail plugin's POP3 with Python's poplib and a raw socket: every command, UIDLs across
//! sessions, deletions only at QUIT, the mailbox lock, failed logins, the password file.

#[path = "mail/support.rs"]
mod support;
mod util;

use support::*;
use util::Sandbox;

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
    // The lock is the Maildir's: another server on the same Maildirs keeps to it too.
    let other = serve(&sb, &[]);
    let mut third = Raw::connect(other.addr(1));
    assert!(third.line().starts_with("+OK"));
    third.send(b"USER alice\r\nPASS wonderland\r\n");
    assert!(third.line().starts_with("+OK"));
    let in_use = third.line();
    assert!(in_use.starts_with("-ERR [IN-USE]"), "{in_use}");

    second.send(b"USER bob\r\nPASS not-his-password\r\n");
    assert!(second.line().starts_with("+OK"));
    let refused = second.line();
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    twistd.wait_for("pop3 login failed");

    // The third failure on one connection ends it.
    let mut guesser = Raw::connect(pop3);
    guesser.line();
    guesser.send(b"USER bob\r\nPASS a\r\nUSER bob\r\nPASS b\r\nUSER bob\r\nPASS c\r\n");
    let said = guesser.rest();
    assert_eq!(said.matches("-ERR [AUTH] invalid").count(), 3, "{said}");
    assert!(
        said.ends_with("-ERR [AUTH] too many failed logins, closing the connection\r\n"),
        "{said}"
    );

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

/// Messages as other programs leave them: names too long or too odd to be UIDLs, a message
/// moved to `cur/` by a mail client mid-session; and a client pipelining RETRs of a big message
/// gets back-pressure, not a server buffering every reply.
#[test]
fn pop3_lists_every_name_follows_moves_and_bounds_pipelined_output() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let pop3 = twistd.addr(1).to_string();
    let out = python(
        sb.path(),
        r#"
import os, poplib, socket, sys
host, port = sys.argv[1].rsplit(':', 1)
pid, root = sys.argv[2], 'maildir/alice'
def peak():
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
long = '1700000000.M1P2Q3.' + 'h' * 60 + ',S=14,W=17'
with open(f'{root}/new/{long}', 'w') as f:
    f.write('Subject: a\n\nx\n')
with open(os.path.join(root.encode(), b'new', b'1700000001.M1P2Q3.h\xf4te name'), 'wb') as f:
    f.write(b'Subject: b\n\ny\n')
big = 'Subject: big\n\n' + ('z' * 1023 + '\n') * 2048
with open(f'{root}/new/1700000002.M1P2Q3.big', 'w') as f:
    f.write(big)
p = poplib.POP3(host, int(port), timeout=20)
p.user('alice'); p.pass_('wonderland')
uids = [l.split()[1] for l in p.uidl()[1]]
assert len(uids) == 3 and len(set(uids)) == 3, uids
assert all(1 <= len(u) <= 70 and all(0x21 <= b <= 0x7e for b in u) for u in uids), uids
assert p.list()[1][0] == b'1 17', p.list()
# A mail client marks the first message seen: RETR finds it in cur/, QUIT deletes it there.
os.rename(f'{root}/new/{long}', f'{root}/cur/{long}:2,S')
assert p.retr(1)[1] == [b'Subject: a', b'', b'x'], p.retr(1)
assert b'octets' not in p.top(1, 0)[0]
for bad in ('LIST +1', 'LIST 1x', 'TOP 1 +1'):
    try:
        p._shortcmd(bad); raise SystemExit(f'{bad} accepted')
    except poplib.error_proto:
        pass
p.dele(1)
p.quit()
assert os.listdir(f'{root}/cur') == [], os.listdir(f'{root}/cur')
# 100 RETRs of a 2 MiB message in one packet, all read: the server's peak memory grows by
# what it sends at once, not by 200 MiB of replies.
before = peak()
s = socket.create_connection((host, int(port)), timeout=20)
f = s.makefile('rb')
f.readline()
s.sendall(b'USER alice\r\nPASS wonderland\r\n' + b'RETR 2\r\n' * 100 + b'QUIT\r\n')
retrieved = sum(1 for line in iter(f.readline, b'') if line == b'.\r\n')
assert retrieved == 100, retrieved
grown = peak() - before
assert grown < 64 << 20, f'peak memory grew by {grown >> 20} MiB'
p = poplib.POP3(host, int(port), timeout=20)
p.user('alice'); p.pass_('wonderland')
print(p.stat()[0], [l.split()[1] for l in p.uidl()[1]] == uids[1:])
p.quit()
"#,
        &[&pop3, &twistd.child.id().to_string()],
    );
    assert_eq!(out, "2 True\n");
    drop(twistd);
}

/// QA: QUIT said "(1 messages left)".
#[test]
fn quit_counts_the_messages_left_in_words() {
    let sb = Sandbox::new();
    let twistd = serve(&sb, &[]);
    let quit = |expected: &str| {
        let mut pop = Raw::connect(twistd.addr(1));
        pop.line();
        pop.send(b"USER alice\r\nPASS wonderland\r\nQUIT\r\n");
        pop.line();
        pop.line();
        assert_eq!(pop.line(), format!("+OK bye ({expected} left)\r\n"));
    };
    quit("0 messages");
    let mut raw = Raw::smtp(twistd.addr(0));
    for _ in 0..2 {
        start_data(&mut raw, "alice@example.com");
        raw.send(b"Subject: one more\r\n\r\nhi\r\n.\r\n");
        assert!(raw.reply().starts_with("250 2.0.0"));
        let left = files(&sb, "alice", "new").len();
        quit(if left == 1 { "1 message" } else { "2 messages" });
    }
}
