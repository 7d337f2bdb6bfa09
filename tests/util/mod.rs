//! Shared test harness: each test gets its own temporary directory and runs the real `mktap`
//! and `twistd` binaries, learning twistd's ports from its log (no sleeps: every wait is for a
//! line or an exit, with a timeout).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const MKTAP: &str = env!("CARGO_BIN_EXE_mktap");
pub const TWISTD: &str = env!("CARGO_BIN_EXE_twistd");
pub const TAPCONVERT: &str = env!("CARGO_BIN_EXE_tapconvert");
pub const TAP2DEB: &str = env!("CARGO_BIN_EXE_tap2deb");
pub const TAP2RPM: &str = env!("CARGO_BIN_EXE_tap2rpm");

/// How long any single wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root (where `configs/` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Runs mktap in this directory.
    pub fn mktap(&self, args: &[&str]) -> Output {
        run(Command::new(MKTAP).args(args).current_dir(self.path()))
    }

    /// Runs mktap and insists that it succeeded.
    pub fn mktap_ok(&self, args: &[&str]) -> Output {
        let out = self.mktap(args);
        assert!(
            out.status.success(),
            "mktap {args:?} failed: {}",
            stderr(&out)
        );
        out
    }

    /// Runs any program in this directory, stdin closed, to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run(Command::new(program)
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null()))
    }

    /// Runs twistd to completion (for start-up failures).
    pub fn twistd_output(&self, args: &[&str]) -> Output {
        run(Command::new(TWISTD)
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null()))
    }

    /// Starts `twistd -n --pidfile '' ARGS` here and waits until it says it is ready.
    pub fn twistd(&self, args: &[&str]) -> Twistd {
        Twistd::start(self.path(), args)
    }
}

fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    // Bounded wait: a binary that hangs fails the test instead of the whole run.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `twistd -n`, killed when dropped.
pub struct Twistd {
    pub child: Child,
    lines: Receiver<String>,
    /// Every log line read so far.
    pub log: Vec<String>,
    /// The bound address of every listener, in the order they were logged.
    pub addrs: Vec<SocketAddr>,
}

impl Twistd {
    pub fn start(dir: &Path, args: &[&str]) -> Twistd {
        let mut cmd = Command::new(TWISTD);
        cmd.args(["-n", "--pidfile", ""])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Twistd::from_command(cmd)
    }

    /// Spawns a prepared command (its stdout and stderr piped) and waits for "ready:".
    pub fn from_command(mut cmd: Command) -> Twistd {
        let mut child = cmd.spawn().expect("spawn twistd");
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the reader threads hold senders, so an exit is seen as a disconnect at once.
        drop(tx);
        let mut twistd = Twistd {
            child,
            lines: rx,
            log: Vec::new(),
            addrs: Vec::new(),
        };
        twistd.wait_for("ready:");
        twistd
    }

    /// Reads log lines until one contains `needle`; panics with the log on timeout or exit.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        if let Some(addr) = rest.split(' ').next().and_then(|a| a.parse().ok()) {
                            self.addrs.push(addr);
                        }
                    }
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no '{needle}' from twistd within {TIMEOUT:?}; log:\n{}",
                        self.log.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    panic!(
                        "twistd exited ({status}) before '{needle}'; log:\n{}",
                        self.log.join("\n")
                    )
                }
            }
        }
    }

    /// The first log line with `needle`, read already (maybe before "ready:") or to come.
    pub fn logged(&mut self, needle: &str) -> String {
        match self.log.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.addrs[i])
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal twistd");
    }

    /// Sends SIGTERM and waits for the exit, reading the rest of the log.
    pub fn stop(self) -> (ExitStatus, Vec<String>) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.stop_waiting()
    }

    /// Waits for an exit already asked for, reading the rest of the log.
    pub fn stop_waiting(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + TIMEOUT;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll twistd") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "twistd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for Twistd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (polling, bounded by [`TIMEOUT`]) until `done` holds; panics naming `what` otherwise.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A response as curl saw it.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Fetches `url` with curl (`--path-as-is`, so the path goes out exactly as written).
pub fn curl(url: &str, extra: &[&str]) -> Fetched {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--path-as-is",
            "--max-time",
            "20",
        ])
        .arg("--dump-header")
        .arg(&headers)
        .arg("--output")
        .arg(&body)
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl (is it installed?)");
    assert!(out.status.success(), "curl {url} failed: {}", stderr(&out));
    let head = std::fs::read_to_string(&headers).expect("curl headers");
    // With redirects or 100-continue there may be several heads; the last one counts.
    let last = head
        .split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .last()
        .expect("a response head");
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Fetched {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// Sends raw bytes and reads the whole answer until the server closes the connection.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(request).expect("send request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in a raw answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}
