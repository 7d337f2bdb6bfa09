//! `tapconvert` and encrypted taps: every example config survives tap -> source -> tap and
//! encryption unchanged; wrong passphrases and changed bytes are one clear error; `twistd -e`
//! serves an encrypted tap and saves its shutdown tap encrypted again.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use host::{crypt, tapfile, Application, Format};
use util::{curl, repo, stderr, stdout, Sandbox, TAPCONVERT};

fn load_any(path: &Path) -> Application {
    tapfile::load(path)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
        .0
}

fn files(sb: &Sandbox) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.path())
        .expect("list sandbox")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn convert_ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.run(TAPCONVERT, args);
    assert!(
        out.status.success(),
        "tapconvert {args:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn every_config_round_trips_through_both_formats_and_encryption() {
    let sb = Sandbox::new();
    sb.write("pass", "correct horse battery staple\n");
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("configs")).expect("configs/") {
        let path = entry.expect("entry").path();
        let Some(format) = Format::from_extension(&path) else {
            continue;
        };
        seen += 1;
        let original = load_any(&path);
        let input = path.to_str().expect("utf-8 path");
        let other = match format {
            Format::Json => "tas",
            Format::Ron => "tap",
        };
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let there = format!("{stem}-there.{other}");
        let back = format!("{stem}-back.{}", format.extension());
        convert_ok(&sb, &["-i", input, "-o", &there]);
        convert_ok(&sb, &["-i", &there, "-o", &back]);
        assert_eq!(load_any(&sb.join(&there)), original, "{input} -> {there}");
        assert_eq!(load_any(&sb.join(&back)), original, "{input} -> {back}");

        let sealed = format!("{stem}.{}", format.encrypted_extension());
        convert_ok(
            &sb,
            &[
                "-i",
                input,
                "-e",
                "--passphrase-file",
                "pass",
                "-o",
                &sealed,
            ],
        );
        let bytes = std::fs::read(sb.join(&sealed)).expect("read sealed");
        assert!(crypt::is_sealed(&bytes), "{sealed} is encrypted");
        let mode = std::fs::metadata(sb.join(&sealed))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{sealed}");
        let opened = format!("{stem}-opened.{}", format.extension());
        convert_ok(
            &sb,
            &[
                "-i",
                &sealed,
                "-d",
                "--passphrase-file",
                "pass",
                "-o",
                &opened,
            ],
        );
        assert_eq!(load_any(&sb.join(&opened)), original, "{input} encrypted");
        // Only the encryption changed: the text (comments included) is kept byte for byte.
        assert_eq!(
            std::fs::read(sb.join(&opened)).expect("read"),
            std::fs::read(&path).expect("read")
        );
    }
    assert!(seen >= 4, "only {seen} configs found");
}

#[test]
fn default_names_follow_the_application_and_never_overwrite_the_input() {
    let sb = Sandbox::new();
    std::fs::copy(repo().join("configs/web.tap"), sb.join("copy.tap")).expect("copy");
    let out = convert_ok(&sb, &["-i", "copy.tap"]);
    assert!(out.contains("wrote web.tas (RON)"), "{out}");
    assert!(sb.read("web.tas").starts_with('('));
    // web.tas -> web.tap by default; then web.tap -t tap would rewrite itself: refused.
    convert_ok(&sb, &["-i", "web.tas"]);
    let before = sb.read("web.tap");
    let out = sb.run(TAPCONVERT, &["-i", "web.tap", "-t", "tap"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("would be the input"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.read("web.tap"), before);
    // -f forces the input's format: JSON read as RON is an error naming the file.
    let out = sb.run(
        TAPCONVERT,
        &["-i", "web.tap", "-f", "source", "-o", "x.tas"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).starts_with("tapconvert: web.tap:"),
        "{}",
        stderr(&out)
    );
    // An encrypted name without -e is refused rather than written in clear.
    let out = sb.run(TAPCONVERT, &["-i", "web.tap", "-o", "x.etap"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(!sb.join("x.tas").exists() && !sb.join("x.etap").exists());
    // -e keeps the format by default and names the file .etap.
    sb.write("pass", "pw");
    let out = convert_ok(&sb, &["-i", "copy.tap", "-e", "--passphrase-file", "pass"]);
    assert!(out.contains("wrote web.etap (encrypted JSON)"), "{out}");
    let out = sb.run(TAPCONVERT, &["-i", "web.etap"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("web.etap: the tap is encrypted: give -d"),
        "{}",
        stderr(&out)
    );
}

/// The output's name says its format, and only a regular file is written: a pipe or a link to
/// a device stays as it was (as root, `-o /dev/null` had replaced the machine's /dev/null).
#[test]
fn outputs_are_regular_files_in_the_format_their_names_say() {
    let sb = Sandbox::new();
    std::fs::copy(repo().join("configs/web.tap"), sb.join("web.tap")).expect("copy");
    // Without -t, RON in would become JSON out; a `.tas` output's name keeps it RON.
    convert_ok(&sb, &["-i", "web.tap"]);
    let out = convert_ok(&sb, &["-i", "web.tas", "-o", "copy.tas"]);
    assert!(out.contains("wrote copy.tas (RON)"), "{out}");
    assert!(sb.read("copy.tas").starts_with('('));
    let out = sb.run(TAPCONVERT, &["-i", "web.tap", "-t", "tap", "-o", "x.tas"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--typeout tap does not match --out x.tas, a name for RON"),
        "{}",
        stderr(&out)
    );
    let out = convert_ok(&sb, &["-i", "web.tap", "-o", "again.tap"]);
    assert!(out.contains("wrote again.tap (JSON)"), "{out}");
    // Names in capitals say the same; encrypted text under a plain tap's name is refused.
    let out = convert_ok(&sb, &["-i", "web.tas", "-o", "CAPS.TAS"]);
    assert!(out.contains("wrote CAPS.TAS (RON)"), "{out}");
    sb.write("pass", "pw");
    let out = sb.run(
        TAPCONVERT,
        &[
            "-i",
            "web.tap",
            "-e",
            "--passphrase-file",
            "pass",
            "-o",
            "plain.tap",
        ],
    );
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--out plain.tap: a plain tap's name, but -e was given"),
        "{}",
        stderr(&out)
    );

    nix::unistd::mkfifo(
        &sb.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    std::os::unix::fs::symlink("/dev/null", sb.join("null")).expect("symlink");
    for target in ["fifo", "null"] {
        let out = sb.run(TAPCONVERT, &["-i", "web.tap", "-o", target, "-t", "tap"]);
        assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "cannot write {target}: not a regular file (a device, pipe or socket)"
            )),
            "{}",
            stderr(&out)
        );
    }
    let fifo = std::fs::symlink_metadata(sb.join("fifo")).expect("fifo");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    let link = std::fs::symlink_metadata(sb.join("null")).expect("link");
    assert!(link.file_type().is_symlink());
}

#[test]
fn wrong_passphrase_and_changed_bytes_are_one_clear_error() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "hi");
    sb.write("pass", "right\n");
    sb.write("wrong", "wrong\n");
    let out = sb.mktap(&["-e", "--passphrase-file", "pass", "web", "--path", "www"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("wrote web.etap"), "{}", stdout(&out));
    let sealed = std::fs::read(sb.join("web.etap")).expect("read");
    assert!(crypt::is_sealed(&sealed));
    assert!(
        !String::from_utf8_lossy(&sealed).contains("www"),
        "no plain text"
    );

    let before = files(&sb);
    let expect_refused = |file: &str, bin: &str| {
        let out = match bin {
            "tapconvert" => sb.run(
                TAPCONVERT,
                &[
                    "-i",
                    file,
                    "-d",
                    "--passphrase-file",
                    "wrong",
                    "-o",
                    "out.tap",
                ],
            ),
            _ => sb.twistd_output(&[
                "-n",
                "--pidfile",
                "",
                "-e",
                "--passphrase-file",
                "wrong",
                "-f",
                file,
            ]),
        };
        assert_eq!(out.status.code(), Some(78), "{bin}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{file}: wrong passphrase, or the file was changed"
            )),
            "{bin}: {err}"
        );
    };
    expect_refused("web.etap", "tapconvert");
    expect_refused("web.etap", "twistd");
    // One flipped bit in the middle of the ciphertext, with the right passphrase.
    let mut flipped = sealed.clone();
    let middle = flipped.len() / 2 + 20;
    flipped[middle] ^= 0x10;
    std::fs::write(sb.join("flipped.etap"), &flipped).expect("write");
    let out = sb.run(
        TAPCONVERT,
        &[
            "-i",
            "flipped.etap",
            "-d",
            "--passphrase-file",
            "pass",
            "-o",
            "out.tap",
        ],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("flipped.etap: wrong passphrase, or the file was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
    let mut after = files(&sb);
    after.retain(|n| n != "flipped.etap");
    assert_eq!(after, before, "nothing written");

    // mktap --append on an encrypted tap keeps it encrypted under the same passphrase.
    let out = sb.mktap(&[
        "-e",
        "--passphrase-file",
        "pass",
        "--append",
        "web.etap",
        "web",
        "--path",
        "www",
        "--port",
        "7778",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (app, _, _) = tapfile::load_encrypted(&sb.join("web.etap"), b"right").expect("open");
    assert_eq!(app.services.len(), 2);
}

#[test]
fn no_terminal_and_no_passphrase_file_is_a_usage_error() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "hi");
    // setsid: no controlling terminal, even when the tests run in one.
    let out = sb.run("setsid", &["-w", util::MKTAP, "-e", "web", "--path", "www"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--passphrase-file"),
        "{}",
        stderr(&out)
    );
    assert!(!sb.join("web.etap").exists());
}

#[test]
fn twistd_serves_an_encrypted_tap_and_saves_it_encrypted() {
    let sb = Sandbox::new();
    sb.write("www/index.html", "secret site");
    sb.write("pass", "open sesame\n");
    let out = sb.mktap(&[
        "-e",
        "--passphrase-file",
        "pass",
        "-t",
        "source",
        "web",
        "--path",
        "www",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let twistd = sb.twistd(&["-e", "--passphrase-file", "pass", "-f", "web.etas"]);
    let page = curl(&twistd.url(0, "/"), &[]);
    assert_eq!(page.text(), "secret site");
    let (status, log) = twistd.stop();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("saved web-shutdown.etas")),
        "{}",
        log.join("\n")
    );
    assert!(!sb.join("web-shutdown.tas").exists());
    let saved = sb.join("web-shutdown.etas");
    let mode = std::fs::metadata(&saved)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bytes = std::fs::read(&saved).expect("read");
    assert!(crypt::is_sealed(&bytes));
    let (app, format, _) = tapfile::load_encrypted(&saved, b"open sesame").expect("open");
    assert_eq!(format, Format::Ron);
    assert_eq!(app.services[0].config["path"], "www");
    // Without -e, an encrypted tap is refused with a pointer to the flag.
    let out = sb.twistd_output(&["-n", "--pidfile", "", "-f", "web.etas"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("the tap is encrypted"),
        "{}",
        stderr(&out)
    );
}
