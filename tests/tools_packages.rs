//! `tap2deb`, `tap2rpm` and the host package (`cargo deb`): each package is built in its own
//! temporary directory and looked at with the real tools (dpkg-deb, rpm, lintian); the .deb is
//! unpacked and its unit's command line serves its tap on a loopback port. A tool that is not
//! installed makes its test say so and pass (`.ci/run` installs them all).

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use util::{curl, stderr, stdout, Sandbox, Twistd, TAP2DEB, TAP2RPM, TWISTD};

const MAINTAINER: &str = "Jane Doe <jane@example.org>";

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// lintian's errors ("E:" lines) for a package, or None when lintian is not installed.
fn lintian_errors(package: &Path) -> Option<Vec<String>> {
    if !have("lintian") {
        eprintln!("lintian is not installed: not checked");
        return None;
    }
    let out = Command::new("lintian")
        .arg("--allow-root")
        .arg(package)
        .output()
        .expect("run lintian");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("lintian {}:\n{text}", package.display());
    Some(
        text.lines()
            .filter(|l| l.starts_with("E:"))
            .map(str::to_string)
            .collect(),
    )
}

fn listing(sb: &Sandbox) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A web tap serving `www/` (by absolute path) on a free loopback port.
fn web_tap(sb: &Sandbox) {
    sb.write("www/index.html", "packaged site");
    let www = sb.join("www");
    let out = sb.mktap(&[
        "web",
        "--path",
        www.to_str().expect("utf-8"),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The unit's ExecStart with the package's paths moved under `root` and twistd the one built
/// here; systemd's RuntimeDirectory and StateDirectory are made as systemd would.
fn exec_start(unit: &str, root: &Path) -> Command {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart");
    let mut words = line.split_whitespace().filter(|w| *w != "$TWISTD_OPTS");
    assert_eq!(words.next(), Some("/usr/bin/twistd"));
    let mut cmd = Command::new(TWISTD);
    for word in words {
        if ["/etc/", "/run/", "/var/"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
        {
            let moved = root.join(word.trim_start_matches('/'));
            cmd.arg(moved);
        } else {
            cmd.arg(word);
        }
    }
    cmd.current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn tap2deb_builds_a_package_whose_unit_serves_the_tap() {
    if !have("dpkg-deb") {
        eprintln!("dpkg-deb is not installed: tap2deb not tested");
        return;
    }
    let sb = Sandbox::new();
    web_tap(&sb);
    let out = sb.run(
        TAP2DEB,
        &[
            "-t",
            "web.tap",
            "-m",
            MAINTAINER,
            "-V",
            "1.2-1",
            "-e",
            "The example site",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "tap2deb: wrote taphost-web_1.2-1_all.deb"
    );
    let deb = sb.join("taphost-web_1.2-1_all.deb");
    let deb_s = deb.to_str().expect("utf-8");

    let info = tool("dpkg-deb", &["-I", deb_s]);
    for field in [
        "Package: taphost-web",
        "Version: 1.2-1",
        "Architecture: all",
        "Maintainer: Jane Doe <jane@example.org>",
        "Depends: taphost",
        "Description: The example site",
    ] {
        assert!(info.contains(field), "{field} in:\n{info}");
    }
    let contents = tool("dpkg-deb", &["-c", deb_s]);
    for file in [
        "./etc/taphost/web.tap",
        "./etc/default/taphost-web",
        "./lib/systemd/system/taphost-web.service",
        "./usr/share/doc/taphost-web/copyright",
        "./usr/share/doc/taphost-web/changelog.Debian.gz",
    ] {
        assert!(contents.contains(file), "{file} in:\n{contents}");
    }
    assert!(contents.contains("root/root"), "{contents}");

    let control = sb.join("control");
    tool("dpkg-deb", &["-e", deb_s, control.to_str().expect("utf-8")]);
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert_eq!(
        conffiles,
        "/etc/taphost/web.tap\n/etc/default/taphost-web\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        tool("sh", &["-n", path.to_str().expect("utf-8")]);
        let text = std::fs::read_to_string(&path).expect("script");
        assert!(text.contains("taphost-web.service"), "{script}");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("deb-systemd-helper enable"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-invoke $_action"),
        "{postinst}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).expect("postrm");
    assert!(postrm.contains("deb-systemd-helper purge"), "{postrm}");

    // Unpack and run what systemd would run.
    let root = sb.join("root");
    tool("dpkg-deb", &["-x", deb_s, root.to_str().expect("utf-8")]);
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/taphost-web.service")).expect("unit");
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(
        unit.contains("EnvironmentFile=-/etc/default/taphost-web"),
        "{unit}"
    );
    assert!(!unit.contains("ExecStartPre"), "no user, no chown: {unit}");
    for dir in ["run/taphost-web", "var/lib/taphost-web"] {
        std::fs::create_dir_all(root.join(dir)).expect("systemd's directories");
    }
    let twistd = Twistd::from_command(exec_start(&unit, &root));
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "packaged site");
    assert!(root.join("run/taphost-web/twistd.pid").exists());
    let (status, log) = twistd.stop();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(root.join("var/lib/taphost-web/web-shutdown.tap").exists());

    if let Some(errors) = lintian_errors(&deb) {
        assert!(errors.is_empty(), "lintian errors: {errors:?}");
    }
}

/// Each bad input: its exit code, a message naming the problem, and no package left behind.
fn refuse(sb: &Sandbox, program: &str, args: &[&str], code: i32, needle: &str) {
    let before = listing(sb);
    let out = sb.run(program, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(listing(sb), before, "{args:?} left files behind");
}

fn bad_inputs(program: &str) {
    let sb = Sandbox::new();
    web_tap(&sb);
    sb.write("broken.tap", "{\"version\": 1, \"name\": \"web\",,}");
    std::fs::create_dir(sb.join("dir.tap")).expect("mkdir");
    sb.write("pass", "pw");
    let out = sb.run(
        util::TAPCONVERT,
        &["-i", "web.tap", "-e", "--passphrase-file", "pass"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m = MAINTAINER;
    refuse(
        &sb,
        program,
        &["-t", "missing.tap", "-m", m],
        78,
        "missing.tap: No such file",
    );
    refuse(
        &sb,
        program,
        &["-t", "dir.tap", "-m", m],
        78,
        "dir.tap: not a tap file",
    );
    refuse(
        &sb,
        program,
        &["-t", "broken.tap", "-m", m],
        78,
        "broken.tap:1:",
    );
    // A config twistd would refuse: the line and column of the value.
    sb.write(
        "config.tap",
        "{\"version\": 1, \"name\": \"web\", \"services\": [{\"name\": \"web\", \"plugin\": \"web\",\n  \"config\": {\"path\": 42}}]}",
    );
    refuse(
        &sb,
        program,
        &["-t", "config.tap", "-m", m],
        78,
        "config.tap:2:22: service 'web' (plugin web): config.path: invalid type",
    );
    // A relative path was checked here, but the service would run in /var/lib/taphost-rel.
    let out = sb.mktap(&["-o", "rel.tap", "web", "--path", "www"]);
    assert!(out.status.success(), "{}", stderr(&out));
    refuse(
        &sb,
        program,
        &["-t", "rel.tap", "-m", m],
        78,
        "service 'web': --path www: a relative path; the packaged service runs in \
         /var/lib/taphost-rel: give an absolute path",
    );
    // Said first: where a relative path is missing here, that is why too.
    std::fs::create_dir(sb.join("gone")).expect("mkdir");
    let out = sb.mktap(&["-o", "gone.tap", "web", "--path", "gone"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir(sb.join("gone")).expect("rmdir");
    refuse(
        &sb,
        program,
        &["-t", "gone.tap", "-m", m],
        78,
        "service 'web': --path gone: a relative path",
    );
    std::fs::copy(util::repo().join("configs/web.tas"), sb.join("ron.tas")).expect("copy");
    refuse(
        &sb,
        program,
        &["-t", "ron.tas", "-m", m],
        78,
        "(it looks like RON: -y source)",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.etap", "-m", m],
        78,
        "web.etap: the tap is encrypted",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.tap", "-m", "Jane Doe"],
        64,
        "--maintainer 'Jane Doe'",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.tap", "-m", "<jane@example.org>"],
        64,
        "--maintainer",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.tap", "-m", m, "-V", "one"],
        64,
        "--set-version 'one'",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.tap", "-m", m, "-V", "1.0-"],
        64,
        "--set-version",
    );
    refuse(
        &sb,
        program,
        &["-t", "web.tap", "-m", m, "-p", "Web_1"],
        64,
        "--protocol 'Web_1'",
    );
    // clap's own message (several lines) for a missing option; still nothing written.
    let before = listing(&sb);
    let out = sb.run(program, &["-t", "web.tap"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--maintainer"), "{}", stderr(&out));
    assert_eq!(listing(&sb), before);
    if !nix::unistd::geteuid().is_root() {
        sb.write("locked.tap", "{}");
        std::fs::set_permissions(
            sb.join("locked.tap"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .expect("chmod");
        refuse(
            &sb,
            program,
            &["-t", "locked.tap", "-m", m],
            78,
            "locked.tap: Permission denied",
        );
    }
}

#[test]
fn tap2deb_refuses_bad_input_and_leaves_no_package() {
    bad_inputs(TAP2DEB);
}

#[test]
fn tap2rpm_refuses_bad_input_and_leaves_no_package() {
    bad_inputs(TAP2RPM);
}

/// A tap holding password hashes is installed 0600, and lintian is told that is meant.
#[test]
fn tap2deb_keeps_a_tap_with_secrets_private() {
    if !have("dpkg-deb") {
        eprintln!("dpkg-deb is not installed: tap2deb not tested");
        return;
    }
    let sb = Sandbox::new();
    std::fs::create_dir(sb.join("md")).expect("mkdir");
    let md = format!("example.com={}", sb.join("md").display());
    #[rustfmt::skip]
    let out = sb.mktap(&[
        "mail", "-d", &md, "-u", "alice=wonderland",
        "-s", "tcp:0:interface=127.0.0.1", "-p", "tcp:0:interface=127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(TAP2DEB, &["-t", "mail.tap", "-m", MAINTAINER]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deb = sb.join("taphost-mail_1.0_all.deb");
    let contents = tool("dpkg-deb", &["-c", deb.to_str().expect("utf-8")]);
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rw------- root/root") && l.ends_with("./etc/taphost/mail.tap")),
        "{contents}"
    );
    assert!(
        contents.contains("./usr/share/lintian/overrides/taphost-mail"),
        "{contents}"
    );
    if have("lintian") {
        let out = Command::new("lintian").arg(&deb).output().expect("lintian");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("non-standard-file-perm"), "{text}");
    }
}

/// A tap that names a user: twistd binds as root and drops to it, so the unit gives that user
/// the state and runtime directories systemd made root's, and the shutdown save works.
#[test]
fn tap2deb_gives_the_taps_user_its_directories() {
    if !have("dpkg-deb") {
        eprintln!("dpkg-deb is not installed: tap2deb not tested");
        return;
    }
    let sb = Sandbox::new();
    sb.write("www/index.html", "packaged site");
    let www = sb.join("www");
    #[rustfmt::skip]
    let out = sb.mktap(&[
        "-u", "nobody", "-g", "nogroup", "web", "--path", www.to_str().expect("utf-8"),
        "--listen", "tcp:0:interface=127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sb.run(TAP2DEB, &["-t", "web.tap", "-m", MAINTAINER]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = sb.join("root");
    let deb = sb.join("taphost-web_1.0_all.deb");
    tool(
        "dpkg-deb",
        &[
            "-x",
            deb.to_str().expect("utf-8"),
            root.to_str().expect("utf-8"),
        ],
    );
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/taphost-web.service")).expect("unit");
    let chown = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .unwrap_or_else(|| panic!("no ExecStartPre in {unit}"));
    assert_eq!(
        chown,
        "/bin/chown nobody:nogroup /var/lib/taphost-web /run/taphost-web"
    );
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the unit's commands are not run");
        return;
    }
    // What systemd would do: make the directories (root's), run ExecStartPre, then ExecStart.
    for dir in [sb.path().to_path_buf(), www.clone(), root.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(
        www.join("index.html"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let mut chown_cmd = Command::new("chown");
    chown_cmd.arg("nobody:nogroup");
    for dir in ["var/lib/taphost-web", "run/taphost-web"] {
        std::fs::create_dir_all(root.join(dir)).expect("systemd's directories");
        chown_cmd.arg(root.join(dir));
    }
    assert!(chown_cmd.status().expect("chown").success());
    let twistd = Twistd::from_command(exec_start(&unit, &root));
    assert_eq!(curl(&twistd.url(0, "/"), &[]).text(), "packaged site");
    let (status, log) = twistd.stop();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(root.join("var/lib/taphost-web/web-shutdown.tap").exists());
    assert!(
        !root.join("run/taphost-web/twistd.pid").exists(),
        "the pidfile is removed by the user twistd became"
    );
}

#[test]
fn tap2rpm_builds_a_package_with_scripts() {
    if !have("rpmbuild") {
        eprintln!("rpmbuild is not installed (Debian's rpm package): tap2rpm not tested");
        return;
    }
    let sb = Sandbox::new();
    web_tap(&sb);
    let out = sb.run(
        TAP2RPM,
        &[
            "-t",
            "web.tap",
            "-m",
            MAINTAINER,
            "-V",
            "2.0",
            "-l",
            "Serves 100% of www.",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rpm = sb.join("taphost-web-2.0-1.noarch.rpm");
    assert_eq!(
        stdout(&out).trim(),
        "tap2rpm: wrote taphost-web-2.0-1.noarch.rpm"
    );
    let rpm_s = rpm.to_str().expect("utf-8");
    let info = tool("rpm", &["-qpi", rpm_s]);
    for field in [
        "Name        : taphost-web",
        "Version     : 2.0",
        "Release     : 1",
        "Architecture: noarch",
        "Packager    : Jane Doe <jane@example.org>",
        "Summary     : taphost application web",
        "Serves 100% of www.",
    ] {
        assert!(info.contains(field), "{field} in:\n{info}");
    }
    let files = tool("rpm", &["-qpl", rpm_s]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "/etc/sysconfig/taphost-web",
            "/etc/taphost/web.tap",
            "/usr/lib/systemd/system/taphost-web.service"
        ]
    );
    let requires = tool("rpm", &["-qp", "--requires", rpm_s]);
    assert!(
        requires.lines().any(|l| l.trim() == "taphost"),
        "{requires}"
    );
    let config = tool("rpm", &["-qpc", rpm_s]);
    assert!(config.contains("/etc/taphost/web.tap"), "{config}");
    let scripts = tool("rpm", &["-qp", "--scripts", rpm_s]);
    for needle in [
        "postinstall scriptlet",
        "systemctl enable --now taphost-web.service",
        "preuninstall scriptlet",
        "systemctl disable --now taphost-web.service",
        "postuninstall scriptlet",
    ] {
        assert!(scripts.contains(needle), "{needle} in:\n{scripts}");
    }
    assert!(listing(&sb).iter().all(|n| !n.starts_with(".tap2pkg")));
}

fn generate_docs(into: &Path) {
    for bin in [util::MKTAP, TWISTD, util::TAPCONVERT, TAP2DEB, TAP2RPM] {
        let out: Output = Command::new(bin)
            .arg("--generate-docs")
            .arg(into)
            .output()
            .expect("run --generate-docs");
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn cargo_deb_packages_the_host_with_man_pages_and_completions() {
    let has_cargo_deb = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_deb || !have("dpkg-deb") {
        eprintln!(
            "cargo-deb or dpkg-deb is not installed (cargo install cargo-deb --locked): \
             the host package is not tested"
        );
        return;
    }
    // cargo deb --no-build packages what is under <target>/release; the binaries this test
    // run built are put there (stripped: debug builds are large) in a private target
    // directory, so no release build is needed.
    let sb = Sandbox::new();
    let release = sb.join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    for bin in [util::MKTAP, TWISTD, util::TAPCONVERT, TAP2DEB, TAP2RPM] {
        let name = Path::new(bin).file_name().expect("bin name");
        let copy = release.join(name);
        tool("strip", &["-o", copy.to_str().expect("utf-8"), bin]);
    }
    generate_docs(&release.join("docs"));
    let deb = sb.join("taphost.deb");
    let out = Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "--no-strip", "--fast", "--output"])
        .arg(&deb)
        .current_dir(util::repo())
        .env("CARGO_TARGET_DIR", sb.join("target"))
        .output()
        .expect("run cargo deb");
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb_s = deb.to_str().expect("utf-8");
    let info = tool("dpkg-deb", &["-I", deb_s]);
    assert!(info.contains("Package: taphost"), "{info}");
    let contents = tool("dpkg-deb", &["-c", deb_s]);
    for file in [
        "./usr/bin/mktap",
        "./usr/bin/twistd",
        "./usr/bin/tapconvert",
        "./usr/bin/tap2deb",
        "./usr/bin/tap2rpm",
        "./usr/share/man/man1/twistd.1.gz",
        "./usr/share/man/man1/mktap-web.1.gz",
        "./usr/share/man/man1/tapconvert.1.gz",
        "./usr/share/bash-completion/completions/twistd",
        "./usr/share/zsh/vendor-completions/_mktap",
        "./usr/share/fish/vendor_completions.d/tap2deb.fish",
        "./lib/systemd/system/twistd@.service",
        "./usr/share/doc/taphost/examples/web.tas",
        "./usr/share/doc/taphost/examples/www/index.html",
        "./usr/share/doc/taphost/copyright",
        "./usr/share/doc/taphost/changelog.Debian.gz",
    ] {
        assert!(contents.contains(file), "{file} in:\n{contents}");
    }
    if let Some(errors) = lintian_errors(&deb) {
        assert!(errors.is_empty(), "lintian errors: {errors:?}");
    }
}
