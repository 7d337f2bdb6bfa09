//! Shared by the mail test binaries (`tests/mail*.rs`): starting `twistd mail` on loopback,
//! running Python clients, a raw SMTP/POP3 client, Maildir inspection, generated certificates.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{stderr, stdout, Sandbox, Twistd, TIMEOUT};

pub const LOOPBACK0: &str = "tcp:0:interface=127.0.0.1";

/// `twistd mail` on two loopback ports (SMTP first, then POP3) with alice and bob in
/// example.com, Maildirs under `maildir/`.
pub fn serve(sb: &Sandbox, extra: &[&str]) -> Twistd {
    serve_env(sb, extra, &[])
}

/// [`serve`] with environment variables set for twistd.
pub fn serve_env(sb: &Sandbox, extra: &[&str], env: &[(&str, &Path)]) -> Twistd {
    serve_as(sb, &[], extra, env)
}

/// [`serve_env`] with twistd's own options (before the plugin's name) as well.
pub fn serve_as(sb: &Sandbox, twistd: &[&str], extra: &[&str], env: &[(&str, &Path)]) -> Twistd {
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
    let mut cmd = Command::new(crate::util::TWISTD);
    cmd.args(["-n", "--pidfile", ""])
        .args(twistd)
        .args(&args)
        .envs(env.iter().copied())
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Twistd::from_command(cmd)
}

/// Runs a Python snippet with `args` in `sys.argv[1:]`; returns its stdout, failing on error.
pub fn python(dir: &Path, code: &str, args: &[&str]) -> String {
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
pub fn files(sb: &Sandbox, user: &str, sub: &str) -> Vec<(PathBuf, String)> {
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
pub struct Raw {
    pub writer: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Raw {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    /// Connects and reads the SMTP greeting.
    pub fn smtp(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let greeting = raw.reply();
        assert!(greeting.starts_with("220 mx.example.com"), "{greeting}");
        raw
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        line
    }

    /// One SMTP reply, all its lines (up to the one with a space after the code).
    pub fn reply(&mut self) -> String {
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

    pub fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command and insists on the reply code.
    pub fn expect(&mut self, command: &str, code: &str) -> String {
        let reply = self.cmd(command);
        assert!(
            reply.starts_with(code),
            "{command:?} got {reply:?}, not {code}"
        );
        reply
    }

    /// Waits for the server to close the connection, returning what it said meanwhile.
    pub fn rest(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }
}

/// A transaction up to the 354, for tests that then send raw DATA bytes.
pub fn start_data(raw: &mut Raw, rcpt: &str) {
    raw.expect("EHLO client.test", "250");
    raw.expect("MAIL FROM:<sender@remote.test>", "250 2.1.0");
    raw.expect(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5");
    raw.expect("DATA", "354");
}

/// A self-signed certificate for localhost and 127.0.0.1, made now (never committed).
pub fn certificate(sb: &Sandbox) {
    certificate_for(sb, &["localhost", "127.0.0.1"]);
}

/// [`certificate`] for other names.
pub fn certificate_for(sb: &Sandbox, names: &[&str]) {
    let names = names
        .iter()
        .map(|name| name.to_string())
        .collect::<Vec<_>>();
    let generated = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
    sb.write("cert.pem", generated.cert.pem());
    sb.write("key.pem", generated.key_pair.serialize_pem());
}

/// A loopback port that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The smarthost: a second mail service for remote.test (carol) on a given loopback port.
pub fn smarthost(sb: &Sandbox, port: u16) -> Twistd {
    remote(sb, &format!("tcp:{port}:interface=127.0.0.1"), &[])
}

/// A second mail service for remote.test (carol), SMTP only, on `endpoint`.
pub fn remote(sb: &Sandbox, endpoint: &str, extra: &[&str]) -> Twistd {
    let mut args = vec![
        "mail",
        "-d",
        "remote.test=maildir",
        "-u",
        "carol=x",
        "-s",
        endpoint,
        "--no-pop3",
        "-H",
        "mx.remote.test",
    ];
    args.extend_from_slice(extra);
    sb.twistd(&args)
}

pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Deterministic noise: every byte value, NULs, bare CRs and LFs, invalid UTF-8.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}
