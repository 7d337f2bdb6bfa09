//! CGI/1.1 over real HTTP with real perl, python3 and sh scripts: meta-variables, bodies in
//! and out, the script's Status and Location, errors, the timeout and reaping.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use util::{curl, raw_request, raw_status, wait_until, Sandbox, Twistd, TWISTD};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

fn executable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// root/ with an index, cgi-bin/ with the scripts, secret.txt outside both.
fn sandbox() -> Sandbox {
    let sb = Sandbox::new();
    sb.write("secret.txt", SECRET);
    sb.write("root/index.html", "<h1>home</h1>\n");
    // Not executable: runs through --processor .pl=/usr/bin/perl.
    sb.write(
        "cgi-bin/env.pl",
        r#"binmode STDOUT;
my $body = do { local $/; <STDIN> };
print "Content-Type: text/plain\r\nX-Script: perl\r\n\r\n";
for my $k (sort keys %ENV) { print "$k=$ENV{$k}\n"; }
print "BODY=", (defined $body ? $body : ""), "\n";
"#,
    );
    sb.write(
        "cgi-bin/status.pl",
        "print \"Status: 404 Not Found\\nContent-Type: text/plain\\n\\nno such thing\\n\";\n",
    );
    sb.write(
        "cgi-bin/local.pl",
        "print \"Location: /index.html\\n\\n\";\n",
    );
    sb.write(
        "cgi-bin/client.pl",
        "print \"Location: http://example.org/elsewhere\\n\\n\";\n",
    );
    sb.write(
        "cgi-bin/garbage.pl",
        "print \"this is not a CGI response\\n\";\n",
    );
    sb.write(
        "cgi-bin/badhead.pl",
        "print \"no colon here\\n\\nbody\\n\";\n",
    );
    sb.write(
        "cgi-bin/stderr.pl",
        "print STDERR \"a complaint from the script\\n\"; print \"Content-Type: text/plain\\n\\nok\\n\";\n",
    );
    sb.write(
        "cgi-bin/big.pl",
        "binmode STDOUT; $| = 1; print \"Content-Type: application/octet-stream\\n\\n\"; for my $i (0..999) { print chr(65 + $i % 26) x 2000; }\n",
    );
    let upload = sb.write(
        "cgi-bin/upload.py",
        r#"#!/usr/bin/env python3
import email.parser, hashlib, os, sys
body = sys.stdin.buffer.read(int(os.environ.get("CONTENT_LENGTH") or 0))
msg = email.parser.BytesParser().parsebytes(
    b"Content-Type: " + os.environ["CONTENT_TYPE"].encode() + b"\r\n\r\n" + body)
sys.stdout.write("Content-Type: text/plain\r\n\r\n")
for part in msg.get_payload():
    data = part.get_payload(decode=True)
    name = part.get_param("name", header="content-disposition")
    filename = part.get_filename()
    sys.stdout.write(f"{name} {filename} {len(data)} {hashlib.sha256(data).hexdigest()}\n")
"#,
    );
    executable(&upload);
    let slow = sb.write(
        "cgi-bin/slow.sh",
        "#!/bin/sh\nsleep 1000 &\necho $! > \"$PIDFILE_DIR/grandchild.pid\"\necho $$ > \"$PIDFILE_DIR/script.pid\"\nsleep 1000\n",
    );
    executable(&slow);
    let silent = sb.write("cgi-bin/silent.sh", "#!/bin/sh\nexit 0\n");
    executable(&silent);
    sb.write("cgi-bin/not-executable.sh", "#!/bin/sh\necho hi\n");
    sb.write(
        "cgi-bin/sub/inner.pl",
        "print \"Content-Type: text/plain\\n\\ninner $ENV{PATH_INFO}\\n\";\n",
    );
    sb
}

fn args(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "web".to_string(),
        "--path".into(),
        sb.join("root").display().to_string(),
        "--port".into(),
        "tcp:0:interface=127.0.0.1".into(),
        "--cgi".into(),
        format!("/cgis={}", sb.join("cgi-bin").display()),
        "--processor".into(),
        ".pl=/usr/bin/perl".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn serve(extra: &[&str]) -> (Sandbox, Twistd) {
    let sb = sandbox();
    let args = args(&sb, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let twistd = sb.twistd(&args);
    (sb, twistd)
}

/// The `K=V` lines of env.pl's answer.
fn env_of(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn meta_variables_follow_rfc_3875() {
    let (sb, twistd) = serve(&[]);
    let r = curl(
        &twistd.url(0, "/cgis/env.pl/extra/path?x=1&y=%20z"),
        &[
            "-H",
            "Proxy: http://evil.example:1",
            "-H",
            "X-Custom-Thing: hello",
            "-H",
            "Authorization: Basic c2VjcmV0",
            "-H",
            "X_Custom_Thing: spoofed",
            "-H",
            "X.Dotted: dropped",
            "-A",
            "test-agent/1",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-script"), Some("perl"));
    let env = env_of(&r.text());
    let addr = twistd.addr(0);
    for (key, want) in [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", "/cgis/env.pl"),
        ("PATH_INFO", "/extra/path"),
        ("QUERY_STRING", "x=1&y=%20z"),
        ("REQUEST_URI", "/cgis/env.pl/extra/path?x=1&y=%20z"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "127.0.0.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_X_CUSTOM_THING", "hello"),
        ("HTTP_USER_AGENT", "test-agent/1"),
    ] {
        assert_eq!(get(&env, key), Some(want), "{key} in {env:?}");
    }
    assert_eq!(
        get(&env, "SERVER_PORT"),
        Some(addr.port().to_string().as_str())
    );
    assert!(get(&env, "SERVER_SOFTWARE").is_some_and(|s| s.starts_with("taphost/")));
    assert!(get(&env, "REMOTE_PORT").is_some());
    let root = sb.join("root").canonicalize().expect("canonical");
    assert_eq!(
        get(&env, "DOCUMENT_ROOT"),
        Some(root.to_str().expect("utf-8"))
    );
    assert_eq!(get(&env, "CONTENT_LENGTH"), None, "no body, no length");
    assert_eq!(get(&env, "HTTP_PROXY"), None, "httpoxy");
    assert_eq!(
        get(&env, "HTTP_AUTHORIZATION"),
        None,
        "credentials stay out"
    );
    assert!(
        !r.text().contains("spoofed"),
        "an underscore name posed as a dash name"
    );
    assert!(!r.text().contains("dropped"));
    assert_eq!(get(&env, "BODY"), Some(""));
}

#[test]
fn the_server_environment_does_not_leak_into_scripts() {
    let sb = sandbox();
    let args = args(&sb, &[]);
    let mut cmd = Command::new(TWISTD);
    cmd.args(["-n", "--pidfile", ""])
        .args(&args)
        .current_dir(sb.path())
        .env("TAPHOST_TEST_SECRET", "do-not-pass-me")
        .env("HTTP_PROXY", "http://evil.example:1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let twistd = Twistd::from_command(cmd);
    let text = curl(&twistd.url(0, "/cgis/env.pl"), &[]).text();
    assert!(!text.contains("do-not-pass-me"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(text.contains("PATH=/usr/local/bin:/usr/bin:/bin"), "{text}");
}

#[test]
fn request_bodies_reach_stdin_with_their_type_and_length() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(
        &twistd.url(0, "/cgis/env.pl"),
        &[
            "--data-binary",
            "a=1&b=two",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
        ],
    );
    let env = env_of(&r.text());
    assert_eq!(get(&env, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(get(&env, "CONTENT_LENGTH"), Some("9"));
    assert_eq!(
        get(&env, "CONTENT_TYPE"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(get(&env, "BODY"), Some("a=1&b=two"));
    // Chunked: read whole first, so the script gets its length (RFC 3875 §4.1.2), as
    // nginx buffers such bodies; 100-continue answered first.
    let r = curl(
        &twistd.url(0, "/cgis/env.pl"),
        &[
            "--data-binary",
            "chunked body",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect: 100-continue",
        ],
    );
    let env = env_of(&r.text());
    assert_eq!(get(&env, "BODY"), Some("chunked body"), "{}", r.text());
    assert_eq!(get(&env, "CONTENT_LENGTH"), Some("12"));
}

#[test]
fn a_multipart_upload_reaches_a_python_script_intact() {
    let (sb, twistd) = serve(&[]);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = sb.write("upload.bin", &data);
    let r = curl(
        &twistd.url(0, "/cgis/upload.py"),
        &[
            "-F",
            "title=holiday pictures",
            "-F",
            &format!("photo=@{};filename=photo.bin", file.display()),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.text();
    let sha = {
        let o = Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&o.stdout)
            .split(' ')
            .next()
            .expect("hash")
            .to_string()
    };
    assert!(out.contains("title None 16 "), "{out}");
    assert!(
        out.contains(&format!("photo photo.bin 200000 {sha}")),
        "{out}"
    );
}

#[test]
fn large_uploads_past_the_limit_are_413() {
    let (_sb, twistd) = serve(&["--max-body-size", "1000"]);
    let body = "z".repeat(5000);
    let r = curl(&twistd.url(0, "/cgis/env.pl"), &["--data-binary", &body]);
    assert_eq!(r.status, 413);
    let r = curl(
        &twistd.url(0, "/cgis/env.pl"),
        &["--data-binary", &body, "-H", "Transfer-Encoding: chunked"],
    );
    assert_eq!(r.status, 413);
    // A script that answers as soon as its input ends never gets its 200 for a chunked body
    // cut at the limit: the body is refused before the script runs.
    let (sb, twistd) = serve(&["--max-body-size", "100000"]);
    let count = sb.write(
        "cgi-bin/count.sh",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nwc -c\n",
    );
    executable(&count);
    let big = sb.write("big.txt", "z".repeat(300_000));
    let big = format!("@{}", big.display());
    for _ in 0..5 {
        let r = curl(
            &twistd.url(0, "/cgis/count.sh"),
            &["--data-binary", &big, "-H", "Transfer-Encoding: chunked"],
        );
        assert_eq!(r.status, 413, "{}", r.text());
    }
    let small = sb.write("small.txt", "z".repeat(90_000));
    let small = format!("@{}", small.display());
    let r = curl(
        &twistd.url(0, "/cgis/count.sh"),
        &["--data-binary", &small, "-H", "Transfer-Encoding: chunked"],
    );
    assert_eq!((r.status, r.text().trim()), (200, "90000"));
}

#[test]
fn status_and_location_headers() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/cgis/status.pl"), &[]);
    assert_eq!((r.status, r.text().as_str()), (404, "no such thing\n"));
    let r = curl(&twistd.url(0, "/cgis/local.pl"), &[]);
    assert_eq!(r.status, 200, "a local redirect is served in place");
    assert_eq!(r.text(), "<h1>home</h1>\n");
    let r = curl(&twistd.url(0, "/cgis/client.pl"), &[]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://example.org/elsewhere"));
}

#[test]
fn scripts_in_subdirectories_get_path_info() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/cgis/sub/inner.pl/a/b"), &[]);
    assert_eq!(r.text(), "inner /a/b\n");
}

#[test]
fn large_output_is_streamed_whole() {
    let (_sb, twistd) = serve(&[]);
    let r = curl(&twistd.url(0, "/cgis/big.pl"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 2_000_000);
    assert!(r.body[..2000].iter().all(|&b| b == b'A'));
    assert!(r.body[r.body.len() - 2000..]
        .iter()
        .all(|&b| b == b'A' + (999 % 26) as u8));
}

#[test]
fn garbage_and_silence_are_502_and_unrunnable_scripts_403() {
    let (_sb, twistd) = serve(&[]);
    for path in ["/cgis/garbage.pl", "/cgis/badhead.pl", "/cgis/silent.sh"] {
        assert_eq!(curl(&twistd.url(0, path), &[]).status, 502, "{path}");
    }
    assert_eq!(
        curl(&twistd.url(0, "/cgis/not-executable.sh"), &[]).status,
        403
    );
    assert_eq!(curl(&twistd.url(0, "/cgis/missing.pl"), &[]).status, 404);
    assert_eq!(curl(&twistd.url(0, "/cgis/"), &[]).status, 403);
    // And the server is fine afterwards.
    assert_eq!(curl(&twistd.url(0, "/cgis/status.pl"), &[]).status, 404);
}

#[test]
fn stderr_goes_to_the_log() {
    let (_sb, mut twistd) = serve(&[]);
    assert_eq!(curl(&twistd.url(0, "/cgis/stderr.pl"), &[]).text(), "ok\n");
    let line = twistd.wait_for("a complaint from the script");
    assert!(line.contains("stderr.pl"), "{line}");
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose; its parent must reap it (checked separately).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn zombie_children(parent: u32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            zombies.push(pid);
        }
    }
    zombies
}

#[test]
fn the_timeout_kills_the_process_group_and_leaves_no_zombie() {
    let sb = sandbox();
    let args = args(&sb, &["--cgi-timeout", "1"]);
    let mut cmd = Command::new(TWISTD);
    cmd.args(["-n", "--pidfile", ""])
        .args(&args)
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The script writes its pids where the test can find them (the variable does not pass
    // through the server's environment: it is put in the script's own text).
    let script = std::fs::read_to_string(sb.join("cgi-bin/slow.sh")).expect("read");
    std::fs::write(
        sb.join("cgi-bin/slow.sh"),
        script.replace("$PIDFILE_DIR", &sb.path().display().to_string()),
    )
    .expect("write");
    let twistd = Twistd::from_command(cmd);
    let r = curl(&twistd.url(0, "/cgis/slow.sh"), &[]);
    assert_eq!(r.status, 504);
    let read_pid = |name: &str| -> i32 { sb.read(name).trim().parse().expect("a pid") };
    let (script, grandchild) = (read_pid("script.pid"), read_pid("grandchild.pid"));
    wait_until("the script and its background child are gone", || {
        !alive(script) && !alive(grandchild)
    });
    let server = twistd.child.id();
    wait_until("twistd has no zombie children", || {
        zombie_children(server).is_empty()
    });
    // Still serving.
    assert_eq!(curl(&twistd.url(0, "/cgis/status.pl"), &[]).status, 404);
}

#[test]
fn many_short_scripts_leave_no_zombies() {
    let (_sb, twistd) = serve(&[]);
    for _ in 0..20 {
        assert_eq!(curl(&twistd.url(0, "/cgis/status.pl"), &[]).status, 404);
    }
    let server = twistd.child.id();
    wait_until("twistd has no zombie children", || {
        zombie_children(server).is_empty()
    });
}

#[test]
fn cgi_paths_cannot_leave_the_script_directory() {
    let (_sb, twistd) = serve(&[]);
    for path in [
        "/cgis/../secret.txt",
        "/cgis/%2e%2e/secret.txt",
        "/cgis/%2e%2e/%2e%2e/secret.txt",
        "/cgis/..%2fsecret.txt",
        "/cgis/sub/../../secret.txt",
        "/cgis/.%2e/secret.txt",
        "/cgis/%2fetc%2fpasswd",
        "/cgis//etc/passwd",
        "/cgis/env.pl%00.txt",
        "/cgis/.hidden.pl",
    ] {
        let answer = raw_request(
            twistd.addr(0),
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(!answer.contains(SECRET), "{path}: {answer}");
        assert!(!answer.contains("root:x:"), "{path}: {answer}");
        assert!(matches!(raw_status(&answer), 400 | 404), "{path}: {answer}");
    }
}

/// A script still running when twistd exits (the drain deadline passed) goes with it, and so
/// does what it started: nothing is left to init.
#[test]
fn scripts_still_running_at_exit_are_killed_with_their_children() {
    let sb = sandbox();
    let script = std::fs::read_to_string(sb.join("cgi-bin/slow.sh")).expect("read");
    std::fs::write(
        sb.join("cgi-bin/slow.sh"),
        script.replace("$PIDFILE_DIR", &sb.path().display().to_string()),
    )
    .expect("write");
    let args = args(&sb, &[]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.splice(0..0, ["--shutdown-timeout", "1"]);
    let twistd = sb.twistd(&args);
    let url = twistd.url(0, "/cgis/slow.sh");
    let request = std::thread::spawn(move || curl(&url, &[]));
    let (script_pid, grandchild_pid) = (sb.join("script.pid"), sb.join("grandchild.pid"));
    wait_until("the script started", || {
        script_pid.exists() && grandchild_pid.exists()
    });
    let read_pid = |name: &str| -> i32 { sb.read(name).trim().parse().expect("a pid") };
    let (script, grandchild) = (read_pid("script.pid"), read_pid("grandchild.pid"));
    twistd.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, log) = twistd.stop_waiting();
    assert!(status.success(), "{log:?}");
    let _ = request.join();
    wait_until("the script and its background child are gone", || {
        !alive(script) && !alive(grandchild)
    });
}

#[test]
fn a_stop_lets_a_request_in_flight_finish() {
    let sb = sandbox();
    let dir = sb.path().display().to_string();
    let script = sb.write(
        "cgi-bin/wait.sh",
        format!(
            "#!/bin/sh\ntouch '{dir}/started'\nwhile [ ! -e '{dir}/release' ]; do sleep 0.02; done\nprintf 'Content-Type: text/plain\\n\\nfinished\\n'\n"
        ),
    );
    executable(&script);
    let args = args(&sb, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut twistd = sb.twistd(&args);
    let url = twistd.url(0, "/cgis/wait.sh");
    let request = std::thread::spawn(move || curl(&url, &[]));
    let started = sb.join("started");
    wait_until("the script started", || started.exists());
    twistd.signal(nix::sys::signal::Signal::SIGTERM);
    twistd.wait_for("stopping");
    sb.write("release", "");
    let r = request.join().expect("the request thread");
    assert_eq!((r.status, r.text().as_str()), (200, "finished\n"));
    let (status, log) = twistd.stop_waiting();
    assert!(status.success(), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("drain deadline passed")),
        "{log:?}"
    );
}
