//! `tap2deb -t web.tap -m "Name <mail>"`: a Debian package that runs one tap as a systemd
//! service, `taphost-web_1.0_all.deb`, built with `dpkg-deb --build --root-owner-group` from a
//! staging tree in a temporary directory. Twisted's tap2deb made a source package and ran
//! dpkg-buildpackage; a tap needs no compiling, so the binary package is written directly.
//!
//! The package holds the tap as a conffile in `/etc/taphost/`, the unit in `/lib/systemd/system/`,
//! `/etc/default/PACKAGE`, the copyright and changelog lintian asks for, and maintainer scripts
//! in debhelper's patterns (deb-systemd-helper, deb-systemd-invoke), each tolerating a system
//! without systemd or without those helpers.

#[path = "package.rs"]
mod package;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use clap::{Arg, ArgMatches};
use host::exit::{parse_args, Failure};
use host::Registry;

use package::{run_tool, stage, Spec};

fn command() -> clap::Command {
    package::command(
        "tap2deb",
        "Make a Debian package that runs a tap as a systemd service",
        Arg::new("debfile")
            .short('d')
            .long("debfile")
            .value_name("PACKAGE")
            .help("The package's name [default: taphost-PROTOCOL]"),
    )
}

fn control(spec: &Spec, installed_kib: u64) -> String {
    let mut text = format!(
        "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: {}\nInstalled-Size: {installed_kib}\n\
         Depends: taphost\nSection: net\nPriority: optional\nDescription: {}\n",
        spec.package,
        spec.version.debian(),
        spec.maintainer,
        spec.summary,
    );
    for line in spec.long_lines() {
        if line.is_empty() {
            text.push_str(" .\n");
        } else {
            text.push(' ');
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

fn postinst(unit: &str) -> String {
    format!(
        r#"#!/bin/sh
# Enables and (re)starts {unit}, as debhelper's dh_installsystemd would.
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper unmask '{unit}' >/dev/null || true
        # was-enabled is true on a first installation, so new installations enable the unit.
        if deb-systemd-helper --quiet was-enabled '{unit}'; then
            deb-systemd-helper enable '{unit}' >/dev/null || true
        else
            deb-systemd-helper update-state '{unit}' >/dev/null || true
        fi
    fi
    if [ -z "${{DPKG_ROOT:-}}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            _action=restart
        else
            _action=start
        fi
        deb-systemd-invoke $_action '{unit}' >/dev/null || true
    fi
fi
exit 0
"#
    )
}

fn prerm(unit: &str) -> String {
    format!(
        r#"#!/bin/sh
# Stops {unit} before its files go.
set -e
if [ -z "${{DPKG_ROOT:-}}" ] && [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop '{unit}' >/dev/null || true
fi
exit 0
"#
    )
}

fn postrm(unit: &str, package: &str) -> String {
    format!(
        r#"#!/bin/sh
# Forgets {unit} on remove; on purge also its enablement state and the state directory
# (where twistd saved the shutdown tap).
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper mask '{unit}' >/dev/null || true
fi
if [ "$1" = "purge" ]; then
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge '{unit}' >/dev/null || true
        deb-systemd-helper unmask '{unit}' >/dev/null || true
    fi
    rm -rf '/var/lib/{package}'
fi
exit 0
"#
    )
}

fn changelog(spec: &Spec) -> Result<Vec<u8>, Failure> {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .map_err(|e| Failure::internal(format!("cannot format the date: {e}")))?;
    let text = format!(
        "{} ({}) unstable; urgency=medium\n\n  * Made by tap2deb from {}.\n\n -- {}  {now}\n",
        spec.package,
        spec.version.debian(),
        spec.tap_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        spec.maintainer,
    );
    // gzip -9n, as Debian policy asks: best compression, no name, no time stamp.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(text.as_bytes())
        .and_then(|()| gz.finish())
        .map_err(|e| Failure::internal(format!("cannot compress the changelog: {e}")))
}

fn copyright(spec: &Spec) -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {p}\n\
         Comment: Made by tap2deb from an application file (tap); the programs that run it are\n \
         in the taphost package.\n\
         \n\
         Files: *\n\
         Copyright: {year} {m}\n\
         License: other\n \
         The configuration in this package is provided by its maintainer, {m}.\n",
        p = spec.package,
        m = spec.maintainer,
        year = time::OffsetDateTime::now_utc().year(),
    )
}

fn build(spec: &Spec, dest: &Path) -> Result<(), Failure> {
    let tmp = tempfile::tempdir()
        .map_err(|e| Failure::internal(format!("cannot make a temporary directory: {e}")))?;
    let root = tmp.path().join("root");
    let p = &spec.package;
    let unit = format!("{p}.service");
    let env_file = format!("/etc/default/{p}");
    let tap_mode = if spec.private { 0o600 } else { 0o644 };
    stage(&root, &spec.installed_tap(), &spec.tap, tap_mode)?;
    stage(&root, &env_file, spec.environment().as_bytes(), 0o644)?;
    stage(
        &root,
        &format!("/lib/systemd/system/{unit}"),
        spec.unit(&env_file).as_bytes(),
        0o644,
    )?;
    if spec.private {
        // The mode is the point: the tap holds password hashes. Said to lintian, which would
        // otherwise warn non-standard-file-perm.
        let tap = spec.installed_tap();
        stage(
            &root,
            &format!("/usr/share/lintian/overrides/{p}"),
            format!(
                "# {} holds password hashes: only root may read it.\n\
                 {p}: non-standard-file-perm 0600 != 0644 [{}]\n",
                tap,
                tap.trim_start_matches('/')
            )
            .as_bytes(),
            0o644,
        )?;
    }
    let doc = format!("/usr/share/doc/{p}");
    stage(
        &root,
        &format!("{doc}/copyright"),
        copyright(spec).as_bytes(),
        0o644,
    )?;
    // A version without a Debian revision is a native package's, whose changelog has no
    // ".Debian" in its name.
    let changelog_name = match spec.version.revision {
        Some(_) => "changelog.Debian.gz",
        None => "changelog.gz",
    };
    stage(
        &root,
        &format!("{doc}/{changelog_name}"),
        &changelog(spec)?,
        0o644,
    )?;

    let installed_kib = dir_size(&root).div_ceil(1024);
    stage(
        &root,
        "DEBIAN/control",
        control(spec, installed_kib).as_bytes(),
        0o644,
    )?;
    let conffiles = format!("{}\n{env_file}\n", spec.installed_tap());
    stage(&root, "DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    stage(&root, "DEBIAN/postinst", postinst(&unit).as_bytes(), 0o755)?;
    stage(&root, "DEBIAN/prerm", prerm(&unit).as_bytes(), 0o755)?;
    stage(&root, "DEBIAN/postrm", postrm(&unit, p).as_bytes(), 0o755)?;
    // Directories as dpkg expects them whatever the umask: 0755.
    set_dir_modes(&root)?;

    let built = tmp.path().join("package.deb");
    run_tool(
        Process::new("dpkg-deb")
            .arg("--build")
            .arg("--root-owner-group")
            .arg(&root)
            .arg(&built),
    )?;
    package::publish(&built, dest)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn set_dir_modes(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| Failure::internal(format!("{}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        if entry.file_type().map_err(fail)?.is_dir() {
            set_dir_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<String, Failure> {
    let spec = Spec::from_matches("tap2deb", registry, matches, "debfile")?;
    // Debian's file name leaves the epoch out.
    let mut file_version = spec.version.upstream.clone();
    if let Some(r) = &spec.version.revision {
        file_version = format!("{file_version}-{r}");
    }
    let dest = PathBuf::from(format!("{}_{file_version}_all.deb", spec.package));
    build(&spec, &dest)?;
    Ok(format!("wrote {}", dest.display()))
}

fn main() -> ExitCode {
    let registry = builtin::registry();
    let matches = parse_args(command());
    match run(&registry, &matches) {
        Ok(line) => {
            println!("tap2deb: {line}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("tap2deb: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
