//! What `tap2deb` and `tap2rpm` share: Twisted's options, their checks, and the files a package
//! of one tap holds (the tap, a systemd unit running `twistd -n -f` on it, an environment file).
//!
//! Every check runs before anything is built, and the package is built in a temporary directory
//! and only then copied next to the caller under a temporary name and renamed, so a failure
//! leaves no partial package behind.

// Compiled into each tool; each leaves a part unused (tap2rpm the Debian version string).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::{Arg, ArgMatches, Command};
use host::exit::{self, Failure};
use host::{tapfile, Application, Endpoint, Format, PluginError, Registry, TapError};

/// The options of both tools, after Twisted's `tap2deb`/`tap2rpm`. `package` is the option
/// naming the package: `-d/--debfile` or `-r/--rpmfile`.
pub fn command(name: &'static str, about: &'static str, package: Arg) -> Command {
    Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .args_override_self(true)
        .about(about)
        .arg(
            Arg::new("tapfile")
                .short('t')
                .long("tapfile")
                .value_name("FILE")
                .default_value("twistd.tap")
                .value_parser(clap::value_parser!(PathBuf))
                .help("The tap to package"),
        )
        .arg(
            Arg::new("maintainer")
                .short('m')
                .long("maintainer")
                .value_name("NAME <EMAIL>")
                .required(true)
                .help("The maintainer, as 'John Doe <johndoe@example.com>'"),
        )
        .arg(
            Arg::new("protocol")
                .short('p')
                .long("protocol")
                .value_name("NAME")
                .help("Names the installed tap and the package [default: the tap's file name]"),
        )
        .arg(
            Arg::new("description")
                .short('e')
                .long("description")
                .value_name("TEXT")
                .help("One-line summary [default: taphost application PROTOCOL]"),
        )
        .arg(
            Arg::new("long_description")
                .short('l')
                .long("long_description")
                .visible_alias("long-description")
                .value_name("TEXT")
                .help("Longer description; blank lines separate paragraphs"),
        )
        .arg(
            Arg::new("set_version")
                .short('V')
                .long("set-version")
                .value_name("VERSION")
                .default_value("1.0")
                .help("The package's version, as [EPOCH:]UPSTREAM[-REVISION]"),
        )
        .arg(package)
        .arg(
            Arg::new("type")
                .short('y')
                .long("type")
                .value_name("TYPE")
                .value_parser(["tap", "source"])
                .default_value("tap")
                .help("The tap's format: tap (JSON) or source (RON)"),
        )
        // Twisted's -V prints the version of the package to build; ours keeps -V for that too.
        .disable_version_flag(true)
        .arg(
            Arg::new("version")
                .long("version")
                .action(clap::ArgAction::Version)
                .help("Print the tool's version"),
        )
}

/// A package version, `[EPOCH:]UPSTREAM[-REVISION]` in Debian's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub epoch: Option<u32>,
    pub upstream: String,
    pub revision: Option<String>,
}

impl Version {
    /// Debian's rules (deb-version(5)), narrowed to what RPM also takes: the upstream part
    /// starts with a digit and uses letters, digits, `.`, `+` and `~`; the revision letters,
    /// digits, `.`, `+` and `~`. (No crate for Debian versions was in the dependency set; this
    /// is the small subset both formats agree on.)
    pub fn parse(s: &str) -> Result<Version, String> {
        let bad = |why: &str| format!("--set-version '{s}': {why}");
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => (
                Some(
                    e.parse::<u32>()
                        .map_err(|_| bad("the epoch before ':' must be a number"))?,
                ),
                rest,
            ),
            None => (None, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, Some(r)),
            None => (rest, None),
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~');
        if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad("the version must start with a digit"));
        }
        if !upstream.chars().all(allowed) {
            return Err(bad(
                "use only letters, digits, '.', '+' and '~' (and one '-' before a revision)",
            ));
        }
        if let Some(r) = revision {
            if r.is_empty() || !r.chars().all(allowed) {
                return Err(bad(
                    "the revision after '-' must be letters, digits, '.', '+' or '~'",
                ));
            }
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// As Debian writes it.
    pub fn debian(&self) -> String {
        let mut v = String::new();
        if let Some(e) = self.epoch {
            v.push_str(&format!("{e}:"));
        }
        v.push_str(&self.upstream);
        if let Some(r) = &self.revision {
            v.push('-');
            v.push_str(r);
        }
        v
    }
}

/// `Name <local@domain>`, as Debian's Maintainer field and RPM's Packager want it.
pub fn check_maintainer(s: &str) -> Result<(), String> {
    let bad = || format!("--maintainer '{s}': give it as 'John Doe <johndoe@example.com>'");
    let (name, rest) = s.split_once('<').ok_or_else(bad)?;
    let email = rest.strip_suffix('>').ok_or_else(bad)?;
    let name = name.trim_end();
    let plain = |t: &str| {
        !t.chars()
            .any(|c| c.is_control() || matches!(c, '<' | '>' | ','))
    };
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let word = |t: &str| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c == '@');
    if name.is_empty() || !plain(name) || !plain(email) || !word(local) || !word(domain) {
        return Err(bad());
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(bad());
    }
    Ok(())
}

/// Package and unit names: Debian's package name rules, which RPM and systemd also take.
fn check_name(option: &str, s: &str) -> Result<(), String> {
    let ok = s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{option} '{s}': use at least two lowercase letters, digits, '+', '-' or '.', starting with a letter or digit"
        ))
    }
}

/// Everything a package is made from, checked.
#[derive(Debug)]
pub struct Spec {
    /// The tap's bytes, copied as they are (a hand-edited `.tas` keeps its comments).
    pub tap: Vec<u8>,
    pub tap_path: PathBuf,
    pub format: Format,
    /// The tap holds secrets (password hashes): installed mode 0600.
    pub private: bool,
    /// The application's name: twistd saves `<app>-shutdown.tap` in the state directory.
    pub app: String,
    /// The tap's user and group as chown(1) takes them (`nobody:nogroup`, `nobody:`,
    /// `:nogroup`), when it names either: twistd drops to them, and must still write its
    /// state and runtime directories then.
    pub owner: Option<String>,
    pub protocol: String,
    pub package: String,
    pub maintainer: String,
    pub summary: String,
    /// Paragraphs of the long description, each a list of lines.
    pub long: String,
    pub version: Version,
}

impl Spec {
    /// Checks every option and the tap; the first problem is the error.
    pub fn from_matches(
        tool: &str,
        registry: &Registry,
        matches: &ArgMatches,
        package_id: &str,
    ) -> Result<Spec, Failure> {
        let tap_path = matches
            .get_one::<PathBuf>("tapfile")
            .expect("has a default")
            .clone();
        let maintainer = matches
            .get_one::<String>("maintainer")
            .expect("required")
            .clone();
        check_maintainer(&maintainer).map_err(Failure::usage)?;
        let version = Version::parse(matches.get_one::<String>("set_version").expect("default"))
            .map_err(Failure::usage)?;
        let protocol = match matches.get_one::<String>("protocol") {
            Some(p) => p.clone(),
            None => tap_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        check_name("--protocol", &protocol).map_err(Failure::usage)?;
        let package = matches
            .get_one::<String>(package_id)
            .cloned()
            .unwrap_or_else(|| format!("taphost-{protocol}"));
        check_name(&format!("--{package_id}"), &package).map_err(Failure::usage)?;
        let summary = matches
            .get_one::<String>("description")
            .cloned()
            .unwrap_or_else(|| format!("taphost application {protocol}"));
        if summary.trim().is_empty() || summary.contains('\n') || summary.chars().count() > 79 {
            return Err(Failure::usage(
                "--description: one line of at most 79 characters",
            ));
        }
        let long = matches
            .get_one::<String>("long_description")
            .cloned()
            .unwrap_or_else(|| format!("Automatically created by {tool} from {protocol}'s tap."));

        let format = match matches.get_one::<String>("type").map(String::as_str) {
            Some("source") => Format::Ron,
            _ => Format::Json,
        };
        let (text, _) = tapfile::read_text(&tap_path, None).map_err(|e| match e {
            TapError::Encrypted { path } => Failure::config(format!(
                "{}: the tap is encrypted; a package needs a plain one (tapconvert -d)",
                path.display()
            )),
            other => Failure::config(other),
        })?;
        let app = tapfile::parse(&text, format, &tap_path).map_err(|e| {
            // The usual cause: a RON tap without -y source, or JSON with it.
            let found = Format::detect(&tap_path, &text);
            if found == format {
                Failure::config(e)
            } else {
                let y = if found == Format::Ron {
                    "source"
                } else {
                    "tap"
                };
                Failure::config(format!("{e} (it looks like {found}: -y {y})"))
            }
        })?;
        // First, as it is the reason a path may also be missing here.
        let relative = relative_paths(registry, &app, &package);
        if !relative.is_empty() {
            return Err(Failure::config(relative.join(&format!("\n{tool}: "))));
        }
        // A package of a tap that twistd would refuse would only fail when the unit starts. A
        // plugin this machine lacks may be installed where the package goes: not checked here.
        if let Err(errors) = registry.check_source(&app, Some((&text, format))) {
            let lines: Vec<String> = errors
                .iter()
                .filter(|e| !matches!(e, PluginError::Unknown { .. }))
                .map(|e| e.in_file(&tap_path))
                .collect();
            if !lines.is_empty() {
                return Err(Failure::config(lines.join(&format!("\n{tool}: "))));
            }
        }
        // `user:` is the user and its login group, as twistd takes a uid alone.
        let owner = match (&app.uid, &app.gid) {
            (None, None) => None,
            (uid, gid) => Some(format!(
                "{}:{}",
                uid.as_ref().map(ToString::to_string).unwrap_or_default(),
                gid.as_ref().map(ToString::to_string).unwrap_or_default()
            )),
        };
        Ok(Spec {
            tap: text.as_bytes().to_vec(),
            private: registry.holds_secrets(&app),
            owner,
            app: app.name,
            tap_path,
            format,
            protocol,
            package,
            maintainer,
            summary,
            long,
            version,
        })
    }

    /// Where the tap is installed.
    pub fn installed_tap(&self) -> String {
        format!("/etc/taphost/{}.{}", self.protocol, self.format.extension())
    }

    /// The systemd unit; `env_file` is `/etc/default/NAME` or `/etc/sysconfig/NAME`.
    pub fn unit(&self, env_file: &str) -> String {
        let p = &self.package;
        // systemd expands `%` specifiers in Description; a literal one is `%%`.
        let description = self.summary.replace('%', "%%");
        format!(
            "# Made by tap2deb/tap2rpm: runs {tap} in the foreground; twistd tells systemd when\n\
             # every service runs (Type=notify). Extra twistd options: TWISTD_OPTS in {env_file}.\n\
             [Unit]\n\
             Description={description}\n\
             Documentation=man:twistd(1)\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=notify\n\
             NotifyAccess=main\n\
             EnvironmentFile=-{env_file}\n\
             RuntimeDirectory={p}\n\
             StateDirectory={p}\n\
             WorkingDirectory=/var/lib/{p}\n\
             {chown}ExecStart=/usr/bin/twistd -n --logfile - --pidfile /run/{p}/twistd.pid --rundir /var/lib/{p} --file {tap} $TWISTD_OPTS\n\
             ExecReload=/bin/kill -HUP $MAINPID\n\
             TimeoutStopSec=30\n\
             Restart=on-failure\n\
             # twistd binds as root, then drops to the tap's uid/gid.\n\
             NoNewPrivileges=true\n\
             PrivateTmp=true\n\
             ProtectSystem=full\n\
             ProtectHome=read-only\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            tap = self.installed_tap(),
            // systemd makes both directories root's at each start (the unit has no User=:
            // twistd binds as root); the user twistd drops to saves and removes files there.
            chown = match &self.owner {
                Some(owner) => format!("ExecStartPre=/bin/chown {owner} /var/lib/{p} /run/{p}\n"),
                None => String::new(),
            },
        )
    }

    /// The environment file's text.
    pub fn environment(&self) -> String {
        format!(
            "# Options for {p}'s twistd, added to its command line, e.g.\n\
             # TWISTD_OPTS=\"--uid www-data --shutdown-timeout 30\"\n\
             # (the shutdown tap lands in /var/lib/{p}/{app}-shutdown.{ext}; -o saves none).\n\
             TWISTD_OPTS=\"\"\n",
            p = self.package,
            app = self.app,
            ext = self.format.extension(),
        )
    }

    /// The long description as lines of at most 78 characters; "" stands for a blank line.
    pub fn long_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for line in self.long.lines() {
            if line.trim().is_empty() {
                lines.push(String::new());
            } else {
                lines.extend(
                    textwrap::wrap(line.trim_end(), 78)
                        .into_iter()
                        .map(|l| l.into_owned()),
                );
            }
        }
        lines
    }
}

/// Writes a file of the staging tree with its mode, creating its directories.
pub fn stage(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let target = root.join(path.trim_start_matches('/'));
    let fail =
        |e: std::io::Error| Failure::internal(format!("cannot stage {}: {e}", target.display()));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::write(&target, contents).map_err(fail)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// Runs a packaging tool; its own message is the error when it fails or is missing.
pub fn run_tool(cmd: &mut Process) -> Result<(), Failure> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        Failure::new(
            exit::UNAVAILABLE,
            format!("cannot run {program}: {e} (is it installed?)"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failure::internal(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Copies the finished package to `dest` under a temporary name in its directory, then renames
/// it: the package appears whole or not at all.
pub fn publish(built: &Path, dest: &Path) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::CANTCREAT,
            format!("cannot write {}: {e}", dest.display()),
        )
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let bytes = std::fs::read(built).map_err(|e| fail(&e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tap2pkg.")
        .tempfile_in(dir)
        .map_err(|e| fail(&e))?;
    tmp.write_all(&bytes).map_err(|e| fail(&e))?;
    tmp.as_file().sync_all().map_err(|e| fail(&e))?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail(&e))?;
    tmp.persist(dest).map_err(|e| fail(&e.error))?;
    Ok(())
}

/// Refuses a tap whose services name relative paths: they were checked here, against this
/// directory, but the packaged service runs in /var/lib/PACKAGE, where they lead nowhere (or
/// into the state directory, which a purge deletes with whatever it holds).
fn relative_paths(registry: &Registry, app: &Application, package: &str) -> Vec<String> {
    let mut found = Vec::new();
    for service in &app.services {
        let mut paths = registry
            .get(&service.plugin)
            .map(|maker| maker.paths(service))
            .unwrap_or_default();
        for endpoint in &service.listen {
            if let Endpoint::Ssl {
                private_key,
                cert_key,
                ..
            } = endpoint
            {
                paths.push(("the ssl: endpoint's privateKey", private_key.clone()));
                // certKey defaults to privateKey: named only when it was given.
                if cert_key != private_key {
                    paths.push(("the ssl: endpoint's certKey", cert_key.clone()));
                }
            }
        }
        paths.sort();
        paths.dedup();
        // An empty path is no path (the plugin's check says what it makes of it).
        for (option, path) in paths
            .iter()
            .filter(|(_, p)| p.is_relative() && !p.as_os_str().is_empty())
        {
            found.push(format!(
                "service '{}': {option} {}: a relative path; the packaged service runs in \
                 /var/lib/{package}: give an absolute path",
                service.name,
                path.display()
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = Version::parse("2:1.0~rc1-3").expect("full");
        assert_eq!(
            (v.epoch, v.upstream.as_str(), v.revision.as_deref()),
            (Some(2), "1.0~rc1", Some("3"))
        );
        assert_eq!(v.debian(), "2:1.0~rc1-3");
        assert_eq!(Version::parse("1.0").expect("plain").debian(), "1.0");
        for bad in ["", "v1", "1.0-", "1 0", "x:1", "1.0_2", "1/2"] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn maintainers() {
        check_maintainer("John Doe <johndoe@example.com>").expect("good");
        for bad in [
            "",
            "John Doe",
            "<johndoe@example.com>",
            "John Doe <johndoe>",
            "John Doe <john doe@example.com>",
            "John, Doe <j@example.com>",
            "John Doe <j@example.com> extra",
            "John Doe <j@localhost>",
        ] {
            assert!(check_maintainer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        check_name("-p", "web").expect("good");
        check_name("-p", "web2.0+x-y").expect("good");
        for bad in ["", "w", "Web", "web_1", "-web", "we b"] {
            assert!(check_name("-p", bad).is_err(), "{bad}");
        }
    }
}
