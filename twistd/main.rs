//! `twistd`: loads an application (from a tap file, or from a plugin's options given as a
//! subcommand), binds every listener, becomes a daemon unless `-n`, runs every service on one
//! tokio runtime, and on SIGTERM or SIGINT stops them gracefully and saves
//! `<name>-shutdown.tap` in the run directory.
//!
//! The start-up order is design.md's:
//! flags -> load + validate -> pidfile lock -> bind -> chroot, chdir, umask -> fork, setsid,
//! fork -> write pidfile -> open logs -> drop privileges -> runtime -> start services -> ready.
//! No thread exists before the runtime is built.

mod daemon;
mod logging;
mod pidfile;
mod privileges;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use host::control::{Bound, StartError};
use host::crypt::Key;
use host::exit::{self, parse_args, Failure};
use host::{cli, passphrase, tapfile, Application, Control, Format, Principal, Registry};
use tokio::signal::unix::{signal, SignalKind};

use daemon::Notifier;
use logging::{Destination, Sink};
use pidfile::PidFile;
use privileges::Target;

fn command(registry: &Registry) -> Command {
    let octal = |s: &str| match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("'{s}' is not an octal mode like 022")),
    };
    let facility = |s: &str| {
        s.parse::<syslog::Facility>()
            .map_err(|()| format!("'{s}' is not a syslog facility like daemon or local0"))
    };
    let cmd = Command::new("twistd")
        .version(env!("CARGO_PKG_VERSION"))
        // As with most Unix tools, a later option overrides an earlier one.
        .args_override_self(true)
        .about("Run an application from a tap file, or a plugin directly")
        .after_help(
            "Run 'twistd PLUGIN --help' for a plugin's options; a plugin run directly is never saved.\n\
             Signals: SIGTERM/SIGINT stop gracefully (a second SIGINT at once), SIGUSR1 rotates the log \
             file, SIGHUP reopens it; both make services reopen their own logs.",
        )
        .subcommand_value_name("PLUGIN")
        .subcommand_help_heading("Plugins")
        .arg(flag("nodaemon", 'n', "Stay in the foreground"))
        .arg(path_arg("file", Some('f'), "FILE", "Read the application from this tap file [default: twistd.tap]"))
        .arg(
            path_arg("source", Some('s'), "FILE", "Read the application from this source (.tas) file")
                .conflicts_with("file"),
        )
        .arg(flag("encrypted", 'e', "The tap is encrypted: ask for its passphrase (the shutdown save is encrypted too)"))
        .arg(host::passphrase::file_arg())
        .arg(flag("no_save", 'o', "Do not save the application's state at shutdown").long("no-save").visible_alias("no_save"))
        .arg(path_arg(
            "logfile",
            Some('l'),
            "FILE",
            "Log to this file; '-' is standard output [default: twistd.log, standard output with -n]",
        ))
        .arg(
            Arg::new("pidfile")
                .long("pidfile")
                .value_name("FILE")
                .default_value("twistd.pid")
                .help("Write the server's PID here; an empty value writes none"),
        )
        .arg(path_arg("rundir", Some('d'), "DIR", "Change to this directory before running [default: .]"))
        .arg(path_arg("chroot", None, "DIR", "Chroot to this directory before running (needs root)"))
        .arg(
            Arg::new("uid")
                .short('u')
                .long("uid")
                .value_name("USER")
                .value_parser(Principal::parse)
                .help("Run as this user (name or number), once the listeners are bound [default: the tap's]"),
        )
        .arg(
            Arg::new("gid")
                .short('g')
                .long("gid")
                .value_name("GROUP")
                .value_parser(Principal::parse)
                .help("Run as this group [default: the tap's, or the --uid user's primary group]"),
        )
        .arg(
            Arg::new("umask")
                .long("umask")
                .value_name("MODE")
                .value_parser(octal)
                .help("File creation mask, in octal [default: 077 for a daemon, unchanged with -n]"),
        )
        .arg(flag("syslog", '\0', "Log to syslog instead of a file").conflicts_with("logfile"))
        .arg(
            Arg::new("prefix")
                .long("prefix")
                .value_name("NAME")
                .default_value("twistd")
                .help("Identity of syslog messages"),
        )
        .arg(
            Arg::new("facility")
                .long("facility")
                .value_name("FACILITY")
                .default_value("daemon")
                .value_parser(facility)
                .help("Syslog facility"),
        )
        .arg(
            Arg::new("log_max_size")
                .long("log-max-size")
                .value_name("BYTES")
                .default_value("1000000")
                .value_parser(clap::value_parser!(u64))
                .help("Rotate the log file when it would pass this size; 0 never"),
        )
        .arg(
            Arg::new("log_max_files")
                .long("log-max-files")
                .value_name("N")
                .default_value("10")
                .value_parser(clap::value_parser!(usize))
                .help("Rotated log files to keep (.1 to .N)"),
        )
        .arg(
            Arg::new("shutdown_timeout")
                .long("shutdown-timeout")
                .value_name("SECONDS")
                .default_value("10")
                // A day at most: the deadline is an instant, which a time centuries away
                // overflows.
                .value_parser(clap::value_parser!(u64).range(0..=86_400))
                .help("How long open requests may take to finish when stopping (at most 86400)"),
        );
    cli::with_plugins(cmd, registry)
}

fn flag(id: &'static str, short: char, help: &'static str) -> Arg {
    let arg = Arg::new(id).long(id).action(ArgAction::SetTrue).help(help);
    if short == '\0' {
        arg
    } else {
        arg.short(short)
    }
}

fn path_arg(id: &'static str, short: Option<char>, value: &'static str, help: &'static str) -> Arg {
    let arg = Arg::new(id)
        .long(id)
        .value_name(value)
        .value_parser(clap::value_parser!(PathBuf))
        .help(help);
    match short {
        Some(c) => arg.short(c),
        None => arg,
    }
}

/// The files twistd keeps, as seen before and after any chroot.
struct Paths {
    /// Where to open the pidfile now (before chroot).
    pid_now: Option<PathBuf>,
    /// The pidfile's name once chrooted and in the run directory (for its removal).
    pid_later: Option<PathBuf>,
    /// The run directory, as seen after any chroot.
    rundir: PathBuf,
}

impl Paths {
    fn new(matches: &ArgMatches) -> Result<Paths, Failure> {
        let chroot = matches.get_one::<PathBuf>("chroot");
        let base = match chroot {
            Some(_) => PathBuf::from("/"),
            None => std::env::current_dir().map_err(|e| {
                Failure::internal(format!("cannot read the current directory: {e}"))
            })?,
        };
        let given = matches
            .get_one::<PathBuf>("rundir")
            .map_or(Path::new("."), |p| p.as_path());
        // `./x` and `x` name one place; keep messages free of `/./`.
        let rundir: PathBuf = base
            .join(given)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let pid_later = matches
            .get_one::<String>("pidfile")
            .filter(|p| !p.is_empty())
            .map(|p| rundir.join(p));
        let outside = |p: &Path| match chroot {
            Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        };
        // The directories first: a missing one would otherwise be told as a pidfile error.
        if let Some(root) = chroot.filter(|root| !root.is_dir()) {
            return Err(Failure::config(format!(
                "--chroot {}: not a directory (or none there)",
                root.display()
            )));
        }
        let rundir_now = outside(&rundir);
        if !rundir_now.is_dir() {
            return Err(Failure::config(format!(
                "--rundir {}: not a directory (or none there)",
                rundir_now.display()
            )));
        }
        Ok(Paths {
            pid_now: pid_later.as_deref().map(outside),
            pid_later,
            rundir,
        })
    }
}

/// What [`load`] found: the application, its format, whether its state is saved at shutdown,
/// and the key when it came from an encrypted tap.
/// The application, its format, whether to save it at the stop, its key, and where in its file
/// the tap names its uid and gid (`web.tas:5:10`), for messages about them.
type Loaded = (Application, Format, bool, Option<Key>, [Option<String>; 2]);

fn load(registry: &Registry, matches: &ArgMatches) -> Result<Loaded, Failure> {
    let no_save = matches.get_flag("no_save");
    let passphrase_file = passphrase::file_from(matches);
    let encrypted = matches.get_flag("encrypted") || passphrase_file.is_some();
    if let Some(spec) = cli::spec_from_subcommand(registry, matches) {
        if matches.contains_id("file") || matches.contains_id("source") || encrypted {
            return Err(Failure::usage(
                "give either a tap file (-f/-s, -e) or a plugin, not both",
            ));
        }
        let spec = spec.map_err(Failure::config)?;
        let mut app = Application::new(spec.plugin.clone());
        app.services.push(spec);
        // A plugin run directly has no file to come back to: never saved.
        return Ok((app, Format::Json, false, None, [None, None]));
    }
    let path = matches
        .get_one::<PathBuf>("file")
        .or_else(|| matches.get_one::<PathBuf>("source"))
        .cloned()
        .unwrap_or_else(|| {
            PathBuf::from(if encrypted {
                "twistd.etap"
            } else {
                "twistd.tap"
            })
        });
    // The passphrase is asked for here, before the fork, while there is a terminal. Only the
    // derived key is kept (in the Control, wiped when dropped) to encrypt the shutdown save
    // again; the passphrase itself is wiped as soon as the key is derived.
    let loaded = if encrypted {
        let secret = passphrase::read(
            passphrase_file,
            &format!("Passphrase for {}: ", path.display()),
            false,
        )
        .map_err(Failure::usage)?;
        // A plain file given a passphrase is refused (TapError::NotEncrypted), so key is Some.
        tapfile::open(&path, Some(secret.as_bytes())).map_err(Failure::config)?
    } else {
        tapfile::open(&path, None).map_err(Failure::config)?
    };
    registry
        .check_source(&loaded.app, Some((&loaded.text, loaded.format)))
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| e.in_file(&path)).collect();
            Failure::config(lines.join("\ntwistd: "))
        })?;
    let place = |field: &str| match host::locate::path_position(&loaded.text, loaded.format, field)
    {
        ((line, column), true) => Some(format!("{}:{line}:{column}", path.display())),
        (_, false) => None,
    };
    let places = [place("uid"), place("gid")];
    Ok((loaded.app, loaded.format, !no_save, loaded.key, places))
}

fn log_destination(matches: &ArgMatches, daemon: bool) -> Result<Destination, Failure> {
    if matches.get_flag("syslog") {
        return Ok(Destination::Syslog {
            prefix: matches
                .get_one::<String>("prefix")
                .expect("has a default")
                .clone(),
            facility: *matches
                .get_one::<syslog::Facility>("facility")
                .expect("has a default"),
        });
    }
    let file = |path: PathBuf| Destination::File {
        path,
        max_size: *matches
            .get_one::<u64>("log_max_size")
            .expect("has a default"),
        max_files: *matches
            .get_one::<usize>("log_max_files")
            .expect("has a default"),
    };
    Ok(match matches.get_one::<PathBuf>("logfile") {
        Some(p) if p.as_os_str() == "-" => {
            if daemon {
                return Err(Failure::usage(
                    "--logfile - (standard output) needs -n: a daemon has no terminal",
                ));
            }
            Destination::Stdout
        }
        Some(p) => file(p.clone()),
        None if daemon => file(PathBuf::from("twistd.log")),
        None => Destination::Stdout,
    })
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<(), Failure> {
    let daemon = !matches.get_flag("nodaemon");
    let destination = log_destination(matches, daemon)?;
    // A misspelt level would be read as a target's name, and nothing would be logged at all.
    // An empty one is as good as none, as RUST_LOG is read.
    if let Some(filter) = std::env::var("TAPHOST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
    {
        host::control::check_log_filter(&filter)
            .map_err(|e| Failure::usage(format!("TAPHOST_LOG '{}': {e}", filter.escape_debug())))?;
    }
    let sink = logging::install(&destination).map_err(|e| Failure::new(exit::UNAVAILABLE, e))?;
    let result = run_logged(registry, matches, daemon, &destination, &sink);
    if let Err(failure) = &result {
        tracing::error!("{failure}");
        // Start-up may have failed before the log file was opened: it still gets the story.
        if let Destination::File {
            path,
            max_size,
            max_files,
        } = &destination
        {
            let _ = sink.open_file_if_pending(path, *max_size, *max_files);
        }
    }
    result
}

fn run_logged(
    registry: &Registry,
    matches: &ArgMatches,
    daemon: bool,
    destination: &Destination,
    sink: &Sink,
) -> Result<(), Failure> {
    let (app, format, save, key, [uid_at, gid_at]) = load(registry, matches)?;
    // Flags override the tap, each on its own.
    let target = privileges::resolve(
        privileges::either(
            matches.get_one::<Principal>("uid"),
            app.uid.as_ref(),
            uid_at.as_deref(),
        ),
        privileges::either(
            matches.get_one::<Principal>("gid"),
            app.gid.as_ref(),
            gid_at.as_deref(),
        ),
    )?;
    let paths = Paths::new(matches)?;
    let mut pidfile = match &paths.pid_now {
        Some(path) => Some(PidFile::lock(path).map_err(|e| {
            // Another twistd holds it: unavailable; a file that cannot be made: cantcreat.
            let code = match e {
                pidfile::PidFileError::Running { .. } => exit::UNAVAILABLE,
                pidfile::PidFileError::Io { .. } => exit::CANTCREAT,
            };
            Failure::new(code, e)
        })?),
        None => None,
    };
    let mut notifier = Notifier::foreground();
    // Which name the pidfile has at the end depends on whether the chroot happened.
    let mut chrooted = false;
    let mut start_and_serve = || -> Result<(), Failure> {
        let bound = Control::bind(&app).map_err(start_failure)?;
        let null = daemon.then(daemon::open_dev_null).transpose()?;
        enter_environment(matches, &paths, daemon)?;
        chrooted = matches.contains_id("chroot");
        if let Some(null) = null {
            notifier = daemon::daemonize(null)?;
        }
        if let Some(pidfile) = &mut pidfile {
            pidfile
                .write_pid()
                .map_err(|e| Failure::new(exit::CANTCREAT, e))?;
        }
        if let Destination::File {
            path,
            max_size,
            max_files,
        } = destination
        {
            sink.open_file(
                path,
                *max_size,
                *max_files,
                target.as_ref().map(Target::owner),
            )
            .map_err(|e| Failure::new(exit::CANTCREAT, e))?;
        }
        if let Some(target) = &target {
            privileges::drop_to(target)?;
        }
        if save {
            warn_if_unsaveable(&app.name);
        }
        let settings = Settings {
            save,
            format,
            key: key.clone(),
            drain: Duration::from_secs(
                *matches
                    .get_one::<u64>("shutdown_timeout")
                    .expect("has a default"),
            ),
        };
        serve(registry, &app, bound, &settings, sink, &mut notifier)
    };
    let result = start_and_serve();
    // Removed by whichever process holds it at the end: the daemon, or this one if start-up
    // failed before the fork. (The first process of a daemon exits inside daemonize.) Before a
    // failure is reported: the waiting parent exits on hearing it, and by then the pidfile of
    // a daemon that never served must be gone.
    let name = if chrooted {
        &paths.pid_later
    } else {
        &paths.pid_now
    };
    if let (Some(pidfile), Some(name)) = (pidfile, name) {
        pidfile.remove(name);
    }
    if let Err(failure) = &result {
        notifier.failed(failure);
    }
    result
}

/// The shutdown save goes into the run directory, as the process runs then (after `-u/-g`):
/// one it cannot write there would lose every change made in the admin shell, so it is said
/// at start, where it can still be mended.
fn warn_if_unsaveable(name: &str) {
    use nix::fcntl::AtFlags;
    use nix::unistd::AccessFlags;
    let writable = nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        ".",
        AccessFlags::W_OK | AccessFlags::X_OK,
        AtFlags::AT_EACCESS,
    );
    if let Err(e) = writable {
        let dir = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| ".".into());
        tracing::warn!(
            "the shutdown save ({name}-shutdown.*) will fail: this process (uid {}) cannot \
             write the run directory {dir} ({e}); give --rundir a directory it can write, or \
             --no-save",
            nix::unistd::geteuid()
        );
    }
}

/// chroot, chdir to the run directory, umask: the process's surroundings, set before the fork.
fn enter_environment(matches: &ArgMatches, paths: &Paths, daemon: bool) -> Result<(), Failure> {
    if let Some(root) = matches.get_one::<PathBuf>("chroot") {
        nix::unistd::chroot(root.as_path()).map_err(|e| {
            let code = if e == nix::errno::Errno::EPERM {
                exit::NOPERM
            } else {
                exit::CONFIG
            };
            Failure::new(code, format!("--chroot {}: {e}", root.display()))
        })?;
        std::env::set_current_dir("/")
            .map_err(|e| Failure::internal(format!("chdir / after chroot: {e}")))?;
    }
    std::env::set_current_dir(&paths.rundir)
        .map_err(|e| Failure::config(format!("--rundir {}: {e}", paths.rundir.display())))?;
    let umask = matches
        .get_one::<u32>("umask")
        .copied()
        .or(daemon.then_some(0o077));
    if let Some(mask) = umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

fn start_failure(e: StartError) -> Failure {
    let code = match &e {
        StartError::Bind { source, .. } if source.is_permission() => exit::NOPERM,
        StartError::Bind { .. } => exit::UNAVAILABLE,
        StartError::Plugin(_) => exit::CONFIG,
        // A service that cannot start (a Maildir that cannot be made, a certificate that
        // cannot be read) is a matter of its configuration and surroundings, not a bug.
        StartError::Start { .. } => exit::CONFIG,
    };
    Failure::new(code, e)
}

struct Settings {
    save: bool,
    format: Format,
    /// The encrypted tap's key: the shutdown and admin saves are encrypted again with it.
    key: Option<Key>,
    drain: Duration,
}

fn watch(kind: SignalKind, name: &str) -> Result<tokio::signal::unix::Signal, Failure> {
    signal(kind).map_err(|e| Failure::internal(format!("cannot watch {name}: {e}")))
}

fn serve(
    registry: &Registry,
    app: &Application,
    bound: Bound,
    settings: &Settings,
    sink: &Sink,
    notifier: &mut Notifier,
) -> Result<(), Failure> {
    // The first thread of the process is created here, after the fork and every blocking step.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twistd-worker")
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let mut terminate = watch(SignalKind::terminate(), "SIGTERM")?;
        let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
        let mut rotate = watch(SignalKind::user_defined1(), "SIGUSR1")?;
        let mut reopen = watch(SignalKind::hangup(), "SIGHUP")?;
        let control = Control::start(app, registry, bound, settings.drain, settings.format)
            .await
            .map_err(start_failure)?;
        control.set_log_level_setter(sink.level_setter());
        if let Some(key) = &settings.key {
            control.encrypt_saves_with(key.clone());
        }
        let status = format!(
            "application '{}' runs {} service(s)",
            app.name,
            app.services.len()
        );
        tracing::info!("ready: {status}");
        notifier.ready(&status);
        let cause = loop {
            tokio::select! {
                _ = terminate.recv() => break "SIGTERM",
                _ = interrupt.recv() => break "SIGINT",
                () = control.shutdown_requested() => break "shutdown requested",
                _ = rotate.recv() => {
                    match sink.rotate() {
                        Ok(()) => tracing::info!("SIGUSR1: log rotated"),
                        Err(e) => tracing::warn!("SIGUSR1: log rotation failed: {e}"),
                    }
                    // Services' own logs (a web access log) are reopened, as nginx does on USR1.
                    control.reopen_logs().await;
                }
                _ = reopen.recv() => {
                    match sink.reopen() {
                        Ok(()) => tracing::info!("SIGHUP: log reopened"),
                        Err(e) => tracing::warn!("SIGHUP: cannot reopen the log: {e}"),
                    }
                    control.reopen_logs().await;
                }
            }
        };
        daemon::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!(
            "{cause}: stopping; open requests have {:?} to finish",
            settings.drain
        );
        let abort = control.abort_handle();
        {
            let stop = control.stop_all();
            tokio::pin!(stop);
            tokio::select! {
                () = &mut stop => {}
                _ = interrupt.recv() => {
                    tracing::warn!("second SIGINT: closing open connections now");
                    abort.cancel();
                    stop.await;
                }
            }
        }
        if settings.save {
            let snapshot = control.application().await;
            let path = PathBuf::from(format!(
                "{}-shutdown.{}",
                app.name,
                settings.format.file_extension(settings.key.is_some())
            ));
            tapfile::save_as(
                &snapshot,
                &path,
                settings.format,
                settings.key.as_ref(),
                registry.holds_secrets(&snapshot),
            )
            .map_err(Failure::saving)?;
            tracing::info!("saved {}", path.display());
        }
        tracing::info!("stopped");
        Ok(())
    })
}

fn main() -> ExitCode {
    // Before anything of twistd's own is open.
    daemon::note_inherited_descriptors();
    host::memory::fix_mmap_threshold();
    let (registry, refused) = builtin::registry_with_external();
    for message in refused {
        eprintln!("twistd: {message}");
    }
    let matches = parse_args(command(&registry));
    match run(&registry, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("twistd: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
