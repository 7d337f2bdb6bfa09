//! Shared by the external-plugin test binaries (`tests/external*.rs`): building the test
//! libraries once (cargo for the Rust ones, `cc` for the C ones in `tests/plugins/`), a plugin
//! directory per sandbox, and mktap/twistd run with `TAPHOST_PLUGIN_PATH` pointing at it.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::util::{self, stderr, Sandbox, Twistd, MKTAP, TWISTD};

/// Where the test libraries are built, once per test binary.
struct Built {
    _dir: tempfile::TempDir,
    libs: PathBuf,
}

/// Builds `portforward` and the SDK's `guestbook` example with cargo (into this build's target
/// directory) and compiles the C libraries of `tests/plugins/` with `cc`.
pub fn built() -> &'static Path {
    static BUILT: OnceLock<Built> = OnceLock::new();
    &BUILT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir for libraries");
            let libs = dir.path().to_path_buf();
            // target/<profile>/twistd: the same target directory and profile as this build.
            let profile_dir = Path::new(TWISTD).parent().expect("twistd's directory");
            let target_dir = profile_dir.parent().expect("the target directory");
            for (args, built, name) in [
                (
                    &["-p", "portforward"][..],
                    "libportforward.so",
                    "portforward",
                ),
                (
                    &["-p", "taphost-sdk", "--example", "guestbook"][..],
                    "examples/libguestbook.so",
                    "guestbook",
                ),
            ] {
                let mut cargo =
                    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
                cargo
                    .args(["build", "--quiet"])
                    .args(args)
                    .env("CARGO_TARGET_DIR", target_dir)
                    .current_dir(util::repo());
                if profile_dir.file_name().is_some_and(|n| n == "release") {
                    cargo.arg("--release");
                }
                let out = cargo.output().expect("run cargo");
                assert!(
                    out.status.success(),
                    "cargo build {args:?}: {}",
                    stderr(&out)
                );
                std::fs::copy(profile_dir.join(built), libs.join(format!("{name}.so")))
                    .unwrap_or_else(|e| panic!("copy {built}: {e}"));
            }

            let include = util::repo().join("plugins/sdk/include");
            for name in [
                "counter",
                "wrong_abi",
                "no_entry",
                "bad_descriptor",
                "bad_default",
                "web_clash",
                "dies_at_start",
            ] {
                let source = util::repo().join(format!("tests/plugins/{name}.c"));
                let out = Command::new("cc")
                    .args(["-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
                    .arg(&include)
                    .arg("-o")
                    .arg(libs.join(format!("{name}.so")))
                    .arg(&source)
                    .output()
                    .expect("run cc (is a C compiler installed?)");
                assert!(out.status.success(), "cc {name}.c: {}", stderr(&out));
            }
            Built { _dir: dir, libs }
        })
        .libs
}

/// A plugin directory in the sandbox holding the named libraries (symlinks to the built ones).
pub fn plugin_dir(sb: &Sandbox, libs: &[&str]) -> PathBuf {
    let dir = sb.join("plugins");
    std::fs::create_dir_all(&dir).expect("plugin dir");
    for lib in libs {
        std::os::unix::fs::symlink(
            built().join(format!("{lib}.so")),
            dir.join(format!("{lib}.so")),
        )
        .expect("link a library");
    }
    dir
}

pub fn mktap(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Output {
    Command::new(MKTAP)
        .args(args)
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", plugins)
        .env("HOME", sb.path())
        .output()
        .expect("run mktap")
}

pub fn mktap_ok(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Output {
    let out = mktap(sb, plugins, args);
    assert!(out.status.success(), "mktap {args:?}: {}", stderr(&out));
    out
}

pub fn twistd(sb: &Sandbox, plugins: &Path, args: &[&str]) -> Twistd {
    let mut cmd = Command::new(TWISTD);
    cmd.args(["-n", "--pidfile", ""])
        .args(args)
        .current_dir(sb.path())
        .env("TAPHOST_PLUGIN_PATH", plugins)
        .env("HOME", sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Twistd::from_command(cmd)
}

pub fn json(sb: &Sandbox, name: &str) -> Value {
    serde_json::from_str(&sb.read(name)).expect("a JSON tap")
}

/// A web service on a port of its own, serving `www/`.
pub fn web_server(sb: &Sandbox, plugins: &Path) -> Twistd {
    sb.write("www/index.html", "<h1>through the forwarder</h1>\n");
    twistd(
        sb,
        plugins,
        &[
            "-o",
            "web",
            "--path",
            sb.join("www").to_str().expect("utf-8"),
            "--port",
            "tcp:0:interface=127.0.0.1",
        ],
    )
}

/// Reads from the shell until `needle` has arrived; returns everything read since the last call.
pub fn read_until(conn: &mut std::net::TcpStream, needle: &str) -> String {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        // Telnet negotiation bytes are not UTF-8; lossy text still shows the words.
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        let n = conn.read(&mut buf).expect("read from the shell");
        assert!(n > 0, "the shell closed before '{needle}': {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}
