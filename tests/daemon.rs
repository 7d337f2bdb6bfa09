//! twistd as a Unix daemon: the parent's exit code, the pidfile, signals, log rotation,
//! privileges, umask, the terminal, socket activation, sd_notify and syslog.
//!
//! These run as root where they must (binding a port below 1024, switching user); without root
//! those tests say so and return early.

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::{curl, stderr, Sandbox, Twistd, TIMEOUT, TWISTD};

const LOOPBACK0: &str = "tcp:0:interface=127.0.0.1";

/// A daemon started by a test, killed if the test ends while it still runs.
struct Daemon {
    pid: i32,
    dir: PathBuf,
}

impl Daemon {
    /// Runs `twistd ARGS` (no -n) in `sb`; the first process must exit 0, and then the pidfile
    /// names the daemon.
    fn start(sb: &Sandbox, args: &[&str]) -> Daemon {
        let out = sb.twistd_output(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "twistd {args:?}: {}",
            stderr(&out)
        );
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "a daemon that starts says nothing"
        );
        let pid = sb
            .read("twistd.pid")
            .trim()
            .parse()
            .expect("pid in the pidfile");
        Daemon {
            pid,
            dir: sb.path().to_path_buf(),
        }
    }

    fn alive(&self) -> bool {
        kill(Pid::from_raw(self.pid), None).is_ok() && !self.zombie()
    }

    fn zombie(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal the daemon");
    }

    fn status(&self, field: &str) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {status}"))
            .trim()
            .to_string()
    }

    /// Waits for the log to contain `needle` and returns the log.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = std::fs::read_to_string(self.dir.join("twistd.log")).unwrap_or_default();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        let log = self.wait_log("ready:");
        log.lines()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .nth(i)
            .expect("a listening line")
    }

    fn stop(&self) {
        self.signal(Signal::SIGTERM);
        self.wait_gone();
    }

    fn wait_gone(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.alive() {
            assert!(Instant::now() < deadline, "daemon {} still runs", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// Makes `fd` descriptor `onto` in the started process, open across exec.
fn pass_descriptor(cmd: &mut Command, fd: i32, onto: i32) {
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec only dup2 or fcntl runs, both async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            // dup2 onto itself would keep close-on-exec; clear the flag instead.
            let done = if fd == onto {
                nix::libc::fcntl(onto, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, onto)
            };
            if done == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn site(sb: &Sandbox) {
    sb.write("www/index.html", "<h1>home</h1>\n");
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
}

#[test]
fn the_parent_exits_0_once_the_daemon_serves() {
    let sb = Sandbox::new();
    site(&sb);
    let daemon = Daemon::start(&sb, &["-f", "web.tap"]);
    assert!(daemon.alive());
    // Ready means serving: no waiting needed before the first request.
    let page = curl(&format!("http://{}/", daemon.addr(0)), &[]);
    assert_eq!(page.text(), "<h1>home</h1>\n");

    // Detached: no controlling terminal, not a session leader, stdio on /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid)).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .expect("fields")
        .split_whitespace()
        .collect();
    let (session, tty) = (fields[3], fields[4]);
    assert_eq!(tty, "0", "the daemon has a controlling terminal");
    assert_ne!(
        session,
        daemon.pid.to_string(),
        "the daemon leads its session"
    );
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{}/fd/{fd}", daemon.pid)).expect("fd link");
        assert_eq!(target, PathBuf::from("/dev/null"), "fd {fd}");
    }
    assert_eq!(daemon.status("Umask"), "0077", "a daemon's default umask");

    let log = daemon.wait_log("ready:");
    let first = log.lines().next().expect("a line");
    let (stamp, rest) = first.split_once(' ').expect("time and message");
    assert_eq!(stamp.len(), "2026-11-20T12:00:00+0000".len(), "{first}");
    assert!(
        stamp.ends_with("+0000") && stamp.as_bytes()[10] == b'T',
        "{first}"
    );
    assert!(rest.starts_with("[web] listening on 127.0.0.1:"), "{first}");

    daemon.stop();
    assert!(
        !sb.join("twistd.pid").exists(),
        "SIGTERM removes the pidfile"
    );
    host::tapfile::load(&sb.join("web-shutdown.tap")).expect("the shutdown tap loads");
    assert!(sb.read("twistd.log").contains("saved web-shutdown.tap"));
}

#[test]
fn start_up_failures_reach_the_parent_with_their_code() {
    let sb = Sandbox::new();
    site(&sb);
    sb.write("bad.tap", "{\"version\": 1,\n \"name\": }");
    let out = sb.twistd_output(&["-f", "bad.tap"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("bad.tap:2:"), "{}", stderr(&out));

    let busy = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let endpoint = format!(
        "tcp:{}:interface=127.0.0.1",
        busy.local_addr().expect("addr").port()
    );
    sb.mktap_ok(&["-n", "busy", "web", "--path", "www", "--port", &endpoint]);
    let out = sb.twistd_output(&["-f", "busy.tap"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains(&endpoint), "{}", stderr(&out));
    assert!(
        !sb.join("twistd.pid").exists(),
        "a failed start leaves no pidfile"
    );
    assert!(
        sb.read("twistd.log").contains(&endpoint),
        "the log tells the story too"
    );

    let out = sb.twistd_output(&["-l", "-", "-f", "web.tap"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("needs -n"), "{}", stderr(&out));

    // A run directory or chroot that is not there is named as such, not as the pidfile's
    // problem; a pidfile that cannot be made is 73, as other files twistd cannot create.
    for (args, code, needle) in [
        (&["-d", "no-such-dir"][..], 78, "--rundir "),
        (
            &["--chroot", "no-such-dir"][..],
            78,
            "--chroot no-such-dir: not a directory",
        ),
        (&["--pidfile", "no-such-dir/x.pid"][..], 73, "pidfile "),
    ] {
        let tap = sb.join("web.tap");
        let mut all = args.to_vec();
        all.extend(["-f", tap.to_str().expect("utf-8")]);
        let out = sb.twistd_output(&all);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A user the tap names is the tap's, not an option's.
    sb.mktap_ok(&[
        "-n",
        "who",
        "-u",
        "no-such-user-here",
        "web",
        "--path",
        "www",
        "--port",
        "tcp:0:interface=127.0.0.1",
    ]);
    let out = sb.twistd_output(&["-f", "who.tap"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("the tap's uid no-such-user-here: no such user"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failure_after_the_fork_reaches_the_parent() {
    let sb = Sandbox::new();
    site(&sb);
    // The log file cannot be created (its directory does not exist): that happens in the
    // daemon, after the fork, and the waiting parent must report it.
    let out = sb.twistd_output(&["-l", "no/such/dir/twistd.log", "-f", "web.tap"]);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no/such/dir/twistd.log"),
        "{}",
        stderr(&out)
    );
    assert!(!sb.join("twistd.pid").exists());
}

#[test]
fn the_pidfile_refuses_a_second_server_and_replaces_a_stale_one() {
    let sb = Sandbox::new();
    site(&sb);
    let daemon = Daemon::start(&sb, &["-f", "web.tap"]);
    let out = sb.twistd_output(&["-f", "web.tap"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains(&format!(
            "Another twistd server is running, PID {}",
            daemon.pid
        )),
        "{}",
        stderr(&out)
    );
    daemon.stop();

    // Stale: the PID in it now belongs to another live process (this test), but nobody holds
    // the lock.
    sb.write("twistd.pid", format!("{}\n", std::process::id()));
    std::fs::remove_file(sb.join("twistd.log")).expect("clear log");
    let daemon = Daemon::start(&sb, &["-f", "web.tap"]);
    assert_ne!(daemon.pid, std::process::id() as i32);
    assert!(daemon.wait_log("ready:").contains("stale pidfile"));
    daemon.stop();
}

#[test]
fn sigusr1_and_size_rotate_sighup_reopens() {
    let sb = Sandbox::new();
    site(&sb);
    let daemon = Daemon::start(
        &sb,
        &[
            "--log-max-size",
            "400",
            "--log-max-files",
            "2",
            "-f",
            "web.tap",
        ],
    );
    daemon.wait_log("ready:");
    let inode = || {
        std::fs::metadata(sb.join("twistd.log"))
            .map(|m| m.ino())
            .unwrap_or(0)
    };
    for round in 1..=4 {
        let before = inode();
        daemon.signal(Signal::SIGUSR1);
        // Each rotation starts a new file (a new inode) and logs a line into it.
        let deadline = Instant::now() + TIMEOUT;
        while inode() == before
            || !std::fs::read_to_string(sb.join("twistd.log"))
                .unwrap_or_default()
                .contains("log rotated")
        {
            assert!(Instant::now() < deadline, "round {round}: no rotation");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sb.join("twistd.log.1").exists(), "round {round}");
    }
    assert!(sb.join("twistd.log.2").exists());
    assert!(
        !sb.join("twistd.log.3").exists(),
        "--log-max-files 2 keeps two"
    );
    for name in ["twistd.log", "twistd.log.1", "twistd.log.2"] {
        let len = std::fs::metadata(sb.join(name)).expect("meta").len();
        assert!(len <= 400, "{name} has {len} bytes");
    }

    // logrotate's way: move the file, then SIGHUP; the daemon writes to a new file by name.
    std::fs::rename(sb.join("twistd.log"), sb.join("moved.log")).expect("move");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_log("SIGHUP: log reopened");

    // A rotation after the file was deleted opens a new one and shifts nothing.
    let rotated = || -> Vec<String> {
        ["twistd.log.1", "twistd.log.2"]
            .iter()
            .map(|name| sb.read(name))
            .collect()
    };
    let before = rotated();
    std::fs::remove_file(sb.join("twistd.log")).expect("delete");
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_log("SIGUSR1: log rotated");
    assert_eq!(before, rotated(), "the old files stay where they were");
    daemon.stop();
}

#[test]
fn uid_nobody_still_serves_a_port_below_1024() {
    if !is_root() {
        eprintln!("skipped: needs root to bind below 1024 and switch user");
        return;
    }
    let sb = Sandbox::new();
    sb.write("www/index.html", "<h1>low</h1>\n");
    // nobody must be able to enter the run directory and read the site.
    for dir in [sb.path().to_path_buf(), sb.join("www")] {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    std::fs::set_permissions(
        sb.join("www/index.html"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let port = (900..1024)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let endpoint = format!("tcp:{port}:interface=127.0.0.1");
    // The tap names the user; no --uid flag overrides it here.
    sb.mktap_ok(&["-u", "nobody", "web", "--path", "www", "--port", &endpoint]);
    let daemon = Daemon::start(&sb, &["-f", "web.tap"]);
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("nobody exists");
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    assert_eq!(
        daemon.status("Uid").split_whitespace().collect::<Vec<_>>(),
        [&uid; 4]
    );
    assert_eq!(
        daemon.status("Gid").split_whitespace().collect::<Vec<_>>(),
        [&gid; 4]
    );
    assert!(
        !daemon.status("Groups").split_whitespace().any(|g| g == "0"),
        "root's groups dropped"
    );
    let page = curl(&format!("http://127.0.0.1:{port}/"), &[]);
    assert_eq!(page.text(), "<h1>low</h1>\n");
    let log = std::fs::metadata(sb.join("twistd.log")).expect("log");
    assert_eq!(
        log.uid(),
        nobody.uid.as_raw(),
        "the log belongs to the new user"
    );
    daemon.stop();
    let log = sb.read("twistd.log");
    assert!(
        log.contains("cannot remove pidfile"),
        "a root-owned run directory keeps the pidfile: a warning, not a failure"
    );
    // Nor can nobody write the shutdown save there: said at start, when it can be mended.
    let start = log.find("ready:").expect("ready");
    let warned = log
        .find("the shutdown save (web-shutdown.*) will fail")
        .expect("a warning");
    assert!(warned < start, "{log}");
    assert!(!sb.join("web-shutdown.tap").exists());
}

/// What the starting shell had open (`exec 7>file`) is not kept by the daemon (daemon(7)).
#[test]
fn the_daemon_keeps_no_inherited_descriptor() {
    let sb = Sandbox::new();
    site(&sb);
    let held = std::fs::File::create(sb.join("held-open")).expect("create");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    let mut cmd = Command::new(TWISTD);
    cmd.args(["-f", "web.tap"])
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // As a shell's `exec 7>file` leaves it.
    pass_descriptor(&mut cmd, fd, 7);
    let out = cmd.output().expect("run twistd");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let daemon = Daemon {
        pid: sb.read("twistd.pid").trim().parse().expect("a pid"),
        dir: sb.path().to_path_buf(),
    };
    let held_path = sb.join("held-open").canonicalize().expect("canonical");
    let open: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid))
        .expect("the daemon's descriptors")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(!open.contains(&held_path), "{open:?}");
    daemon.stop();
}

#[test]
fn umask_is_applied() {
    let sb = Sandbox::new();
    site(&sb);
    let daemon = Daemon::start(&sb, &["--umask", "027", "-f", "web.tap"]);
    assert_eq!(daemon.status("Umask"), "0027");
    daemon.stop();
    let mode = std::fs::metadata(sb.join("web-shutdown.tap"))
        .expect("saved")
        .mode();
    assert_eq!(
        mode & 0o777,
        0o644 & !0o027,
        "files are created under the umask"
    );
}

#[test]
fn rundir_holds_the_files() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "x");
    let www = sb.join("www");
    sb.mktap_ok(&[
        "web",
        "--path",
        www.to_str().expect("utf-8"),
        "--port",
        LOOPBACK0,
    ]);
    std::fs::create_dir(sb.join("run")).expect("mkdir");
    let tap = sb.join("web.tap");
    let out = sb.twistd_output(&["-d", "run", "-f", tap.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(sb.join("run/twistd.pid"))
        .expect("pidfile in rundir")
        .trim()
        .parse()
        .expect("pid");
    let daemon = Daemon {
        pid,
        dir: sb.join("run"),
    };
    daemon.wait_log("ready:");
    daemon.stop();
    assert!(
        sb.join("run/web-shutdown.tap").exists(),
        "the shutdown tap lands in the run directory"
    );
}

#[test]
fn socket_activation_uses_the_passed_descriptor() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "<h1>activated</h1>\n");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be twistd's own PID: sh's $$ survives the exec.
    cmd.arg("-c")
        .arg(format!("LISTEN_PID=$$ LISTEN_FDS=1 exec {TWISTD} -n -o --pidfile '' web --path www --listen systemd:index=0"))
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Descriptor 3 is where socket activation expects it.
    pass_descriptor(&mut cmd, fd, 3);
    let twistd = Twistd::from_command(cmd);
    assert_eq!(twistd.addrs, vec![addr], "it listens on the passed socket");
    drop(listener);
    let page = curl(&format!("http://{addr}/"), &[]);
    assert_eq!(page.text(), "<h1>activated</h1>\n");
    assert!(twistd.stop().0.success());

    // Without the variables, a systemd endpoint is a clear start-up error.
    let activated = [
        "-n",
        "--pidfile",
        "",
        "web",
        "--path",
        "www",
        "--listen",
        "systemd:index=0",
    ];
    let out: Output = sb.twistd_output(&activated);
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("systemd:index=0"), "{}", stderr(&out));
    // Variables meant for another process are named as the reason there are none.
    let out = Command::new(TWISTD)
        .args(activated)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .output()
        .expect("run twistd");
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("LISTEN_PID is 1, not this process"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn notify_socket_hears_ready_and_stopping() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "x");
    let socket_path = sb.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut cmd = Command::new(TWISTD);
    cmd.args([
        "-n",
        "-o",
        "--pidfile",
        "",
        "web",
        "--path",
        "www",
        "--port",
        LOOPBACK0,
    ])
    .env("NOTIFY_SOCKET", &socket_path)
    .current_dir(sb.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let twistd = Twistd::from_command(cmd);
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=application 'web' runs 1 service(s)"),
        "{ready}"
    );
    assert!(twistd.stop().0.success());
    let n = socket.recv(&mut buf).expect("a notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));

    // An abstract socket (`@name`, as sd_notify(3) reads it), and a daemon: it says which
    // process is the main one, since systemd started another.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("taphost-test-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("an abstract address");
    let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let out = Command::new(TWISTD)
        .args(["-o", "-f", "web.tap"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .output()
        .expect("run twistd");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let daemon = Daemon {
        pid: sb.read("twistd.pid").trim().parse().expect("a pid"),
        dir: sb.path().to_path_buf(),
    };
    let n = socket.recv(&mut buf).expect("a notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        ready.contains("READY=1") && ready.contains(&format!("MAINPID={}\n", daemon.pid)),
        "{ready}"
    );
    daemon.stop();
}

#[test]
fn syslog_receives_the_lines() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "x");
    let socket_path = sb.join("log.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind syslog socket");
    socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut cmd = Command::new(TWISTD);
    cmd.args([
        "-n",
        "-o",
        "--pidfile",
        "",
        "--syslog",
        "--prefix",
        "webhost",
        "--facility",
        "local3",
    ])
    .args(["web", "--path", "www", "--port", LOOPBACK0])
    .env("TAPHOST_SYSLOG_SOCKET", &socket_path)
    .current_dir(sb.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|l: &String| l.contains("ready:")) {
        let n = socket.recv(&mut buf).expect("a syslog line");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("stop");
    assert!(child.wait().expect("wait").success());
    // local3 (19) * 8 + info (6) = 158
    let listening = seen
        .iter()
        .find(|l| l.contains("listening on"))
        .expect("listening line");
    assert!(listening.starts_with("<158>"), "{listening}");
    assert!(
        listening.contains(&format!(
            "webhost[{}]: [web] listening on 127.0.0.1:",
            child.id()
        )),
        "{listening}"
    );

    // No socket there: exit 69, naming where it looked.
    let out = Command::new(TWISTD)
        .args(["-n", "-o", "--pidfile", "", "--syslog"])
        .args(["web", "--path", "www", "--port", LOOPBACK0])
        .env("TAPHOST_SYSLOG_SOCKET", sb.join("absent.sock"))
        .current_dir(sb.path())
        .output()
        .expect("run twistd");
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "twistd: cannot reach syslog at {}: ",
            sb.join("absent.sock").display()
        )),
        "{err}"
    );
}

#[test]
fn a_second_sigint_stops_at_once_and_the_timeout_bounds_a_drain() {
    let sb = Sandbox::new();
    site(&sb);
    for (args, expected) in [
        (vec!["-o", "-f", "web.tap"], "second SIGINT"),
        (
            vec!["-o", "--shutdown-timeout", "1", "-f", "web.tap"],
            "drain deadline passed",
        ),
    ] {
        let twistd = sb.twistd(&args);
        // A request head that never ends keeps its connection busy through the drain.
        let mut slow = std::net::TcpStream::connect(twistd.addr(0)).expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")
            .expect("half a request");
        // Make sure the server has accepted it before stopping.
        let probe = curl(&twistd.url(0, "/"), &[]);
        assert_eq!(probe.status, 200);
        twistd.signal(Signal::SIGINT);
        let mut twistd = twistd;
        twistd.wait_for("stopping");
        if expected == "second SIGINT" {
            twistd.signal(Signal::SIGINT);
        }
        let (status, log) = twistd.stop_waiting();
        assert!(status.success(), "{log:?}");
        assert!(
            log.iter().any(|l| l.contains(expected)),
            "{expected} not in {log:?}"
        );
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
    }
}

#[test]
fn chroot_confines_the_daemon() {
    if !is_root() {
        eprintln!("skipped: needs root to chroot");
        return;
    }
    let sb = Sandbox::new();
    sb.write("www/index.html", "<h1>jailed</h1>\n");
    // A relative --path names the same directory before the chroot (from the sandbox) and
    // after it (from the new root, where the run directory defaults to).
    sb.mktap_ok(&["web", "--path", "www", "--port", LOOPBACK0]);
    let root = sb.path().to_str().expect("utf-8").to_string();
    let daemon = Daemon::start(&sb, &["--chroot", &root, "-f", "web.tap"]);
    let jail = std::fs::read_link(format!("/proc/{}/root", daemon.pid)).expect("root link");
    assert_eq!(jail, sb.path().canonicalize().expect("canonical"));
    let page = curl(&format!("http://{}/", daemon.addr(0)), &[]);
    assert_eq!(page.text(), "<h1>jailed</h1>\n");
    daemon.stop();
    assert!(
        !sb.join("twistd.pid").exists(),
        "removed by its name inside the chroot"
    );
    assert!(
        sb.join("web-shutdown.tap").exists(),
        "saved in the run directory inside the chroot"
    );
}
