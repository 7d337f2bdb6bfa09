//! `tap2rpm -t web.tap -m "Name <mail>"`: an RPM that runs one tap as a systemd service,
//! `taphost-web-1.0-1.noarch.rpm`, built by `rpmbuild` from a generated spec in a temporary
//! top directory. The scriptlets are written out rather than taken from the `%systemd_*`
//! macros, which Debian's rpm package (what the tests use) does not ship.

#[path = "package.rs"]
mod package;

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use clap::{Arg, ArgMatches};
use host::exit::{parse_args, Failure};
use host::Registry;

use package::{run_tool, stage, Spec};

fn command() -> clap::Command {
    package::command(
        "tap2rpm",
        "Make an RPM package that runs a tap as a systemd service",
        Arg::new("rpmfile")
            .short('r')
            .long("rpmfile")
            .visible_short_alias('d')
            .visible_alias("debfile")
            .value_name("PACKAGE")
            .help("The package's name [default: taphost-PROTOCOL]"),
    )
}

/// RPM expands `%` in every spec field and section; a literal one is `%%`.
fn esc(s: &str) -> String {
    s.replace('%', "%%")
}

fn spec_file(spec: &Spec, release: &str) -> String {
    let p = &spec.package;
    let unit = format!("{p}.service");
    let tap = spec.installed_tap();
    let tap_name = Path::new(&tap)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tap_mode = if spec.private { "0600" } else { "0644" };
    let epoch = spec
        .version
        .epoch
        .map(|e| format!("Epoch: {e}\n"))
        .unwrap_or_default();
    let description = spec.long_lines().join("\n");
    format!(
        r#"Name: {p}
Version: {version}
Release: {release}
{epoch}Summary: {summary}
License: LicenseRef-maintainer
Packager: {maintainer}
BuildArch: noarch
Requires: taphost
Source0: {tap_name}
Source1: {unit}
Source2: {p}.sysconfig

%description
{description}

%prep

%build

%install
install -D -m {tap_mode} %{{SOURCE0}} %{{buildroot}}{tap}
install -D -m 0644 %{{SOURCE1}} %{{buildroot}}/usr/lib/systemd/system/{unit}
install -D -m 0644 %{{SOURCE2}} %{{buildroot}}/etc/sysconfig/{p}

%post
# First installation: enable and start, when systemd runs.
if [ $1 -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl enable --now {unit} >/dev/null 2>&1 || :
fi

%preun
# Erase (not upgrade): stop and disable before the files go.
if [ $1 -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now {unit} >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # Upgrade: run the new files.
    if [ $1 -ge 1 ]; then
        systemctl try-restart {unit} >/dev/null 2>&1 || :
    fi
fi
if [ $1 -eq 0 ]; then
    rm -rf /var/lib/{p}
fi

%files
%config(noreplace) {tap}
%config(noreplace) /etc/sysconfig/{p}
/usr/lib/systemd/system/{unit}
"#,
        version = spec.version.upstream,
        summary = esc(&spec.summary),
        maintainer = esc(&spec.maintainer),
        description = esc(&description),
    )
}

fn build(spec: &Spec, release: &str, dest: &Path) -> Result<(), Failure> {
    let tmp = tempfile::tempdir()
        .map_err(|e| Failure::internal(format!("cannot make a temporary directory: {e}")))?;
    let top = tmp.path();
    let p = &spec.package;
    let env_file = format!("/etc/sysconfig/{p}");
    let tap = spec.installed_tap();
    let tap_name = Path::new(&tap)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sources = "SOURCES";
    stage(top, &format!("{sources}/{tap_name}"), &spec.tap, 0o644)?;
    stage(
        top,
        &format!("{sources}/{p}.service"),
        spec.unit(&env_file).as_bytes(),
        0o644,
    )?;
    stage(
        top,
        &format!("{sources}/{p}.sysconfig"),
        spec.environment().as_bytes(),
        0o644,
    )?;
    let spec_path = format!("SPECS/{p}.spec");
    stage(top, &spec_path, spec_file(spec, release).as_bytes(), 0o644)?;
    let define = |k: &str, v: &Path| format!("{k} {}", v.display());
    run_tool(
        Process::new("rpmbuild")
            .arg("-bb")
            .arg("--quiet")
            .arg("--define")
            .arg(define("_topdir", top))
            // Debian's rpm has no database of build dependencies to check against.
            .arg("--nodeps")
            .arg(top.join(&spec_path))
            .env("HOME", top),
    )?;
    let built = top
        .join("RPMS")
        .join("noarch")
        .join(dest.file_name().expect("the destination is a file name"));
    package::publish(&built, dest)
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<String, Failure> {
    let spec = Spec::from_matches("tap2rpm", registry, matches, "rpmfile")?;
    let release = spec.version.revision.clone().unwrap_or_else(|| "1".into());
    let dest = PathBuf::from(format!(
        "{}-{}-{release}.noarch.rpm",
        spec.package, spec.version.upstream
    ));
    build(&spec, &release, &dest)?;
    Ok(format!("wrote {}", dest.display()))
}

fn main() -> ExitCode {
    let registry = builtin::registry();
    let matches = parse_args(command());
    match run(&registry, &matches) {
        Ok(line) => {
            println!("tap2rpm: {line}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("tap2rpm: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
