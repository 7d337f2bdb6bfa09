//! `twistd`: loads an application (from a tap file, or from a plugin's options given as a
//! subcommand), binds every listener, runs every service on one tokio runtime, and on SIGTERM or
//! SIGINT stops them gracefully and saves `<name>-shutdown.tap`.
//!
//! The start-up order is design.md's: flags, tap, pidfile, bind, (daemonize: not built yet),
//! logs, runtime, services. No thread exists before the runtime is built.

mod pidfile;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use host::exit::{self, parse_args, Failure};
use host::service::StartError;
use host::{cli, tapfile, Application, Format, Registry, Runner};
use tokio::signal::unix::{signal, SignalKind};

use pidfile::PidFile;

/// How long stopping services may take to finish open requests before they are dropped.
const DRAIN: Duration = Duration::from_secs(10);

fn command(registry: &Registry) -> Command {
    let cmd = Command::new("twistd")
        .version(env!("CARGO_PKG_VERSION"))
        // As with most Unix tools, a later option overrides an earlier one.
        .args_override_self(true)
        .about("Run an application from a tap file, or a plugin directly")
        .after_help("Run 'twistd PLUGIN --help' for a plugin's options; a plugin run directly is never saved.")
        .subcommand_value_name("PLUGIN")
        .subcommand_help_heading("Plugins")
        .arg(
            Arg::new("nodaemon")
                .short('n')
                .long("nodaemon")
                .action(ArgAction::SetTrue)
                .help("Stay in the foreground"),
        )
        .arg(
            Arg::new("file")
                .short('f')
                .long("file")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Read the application from this tap file [default: twistd.tap]"),
        )
        .arg(
            Arg::new("source")
                .short('s')
                .long("source")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .conflicts_with("file")
                .help("Read the application from this source (.tas) file"),
        )
        .arg(
            Arg::new("no_save")
                .short('o')
                .long("no-save")
                .visible_alias("no_save")
                .action(ArgAction::SetTrue)
                .help("Do not save the application's state at shutdown"),
        )
        .arg(
            Arg::new("logfile")
                .short('l')
                .long("logfile")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Log to this file; '-' is standard output [default: standard output with -n]"),
        )
        .arg(
            Arg::new("pidfile")
                .long("pidfile")
                .value_name("FILE")
                .default_value("twistd.pid")
                .help("Write the server's PID here; an empty value writes none"),
        );
    cli::with_plugins(cmd, registry)
}

/// Installs the log subscriber. Plain writes, no background thread: threads must not exist
/// before the (future) fork.
fn init_logging(logfile: Option<&PathBuf>) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    match logfile.filter(|p| p.as_os_str() != "-") {
        None => builder.with_writer(std::io::stdout).init(),
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    Failure::new(exit::CANTCREAT, format!("logfile {}: {e}", path.display()))
                })?;
            builder.with_writer(Mutex::new(file)).init()
        }
    }
    Ok(())
}

/// The application to run, its format, and whether its state is saved at shutdown.
fn load(registry: &Registry, matches: &ArgMatches) -> Result<(Application, Format, bool), Failure> {
    let no_save = matches.get_flag("no_save");
    if let Some(spec) = cli::spec_from_subcommand(registry, matches) {
        if matches.contains_id("file") || matches.contains_id("source") {
            return Err(Failure::usage(
                "give either a tap file (-f/-s) or a plugin, not both",
            ));
        }
        let spec = spec.map_err(Failure::config)?;
        let mut app = Application::new(spec.plugin.clone());
        app.services.push(spec);
        // A plugin run directly has no file to come back to: never saved.
        return Ok((app, Format::Json, false));
    }
    let path = matches
        .get_one::<PathBuf>("file")
        .or_else(|| matches.get_one::<PathBuf>("source"))
        .cloned()
        .unwrap_or_else(|| PathBuf::from("twistd.tap"));
    let (app, format) = tapfile::load(&path).map_err(Failure::config)?;
    registry.check(&app).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect();
        Failure::config(lines.join("\ntwistd: "))
    })?;
    Ok((app, format, !no_save))
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<(), Failure> {
    if !matches.get_flag("nodaemon") {
        return Err(Failure::usage(
            "daemon mode is not built yet; run in the foreground with -n",
        ));
    }
    init_logging(matches.get_one::<PathBuf>("logfile"))?;
    let (app, format, save) = load(registry, matches)?;
    if app.uid.is_some() || app.gid.is_some() {
        tracing::warn!("the tap names a uid/gid; dropping privileges is not built yet, so this process keeps its own");
    }
    let pidfile = match matches
        .get_one::<String>("pidfile")
        .filter(|p| !p.is_empty())
    {
        Some(path) => Some(
            PidFile::acquire(Path::new(path)).map_err(|e| Failure::new(exit::UNAVAILABLE, e))?,
        ),
        None => None,
    };
    let result = serve(registry, &app, format, save);
    if let Some(pidfile) = pidfile {
        pidfile.remove();
    }
    result
}

fn start_failure(e: StartError) -> Failure {
    let code = match &e {
        StartError::Bind { source, .. } if source.is_permission() => exit::NOPERM,
        StartError::Bind { .. } => exit::UNAVAILABLE,
        StartError::Plugin(_) => exit::CONFIG,
        StartError::Start { .. } => exit::INTERNAL,
    };
    Failure::new(code, e)
}

fn serve(
    registry: &Registry,
    app: &Application,
    format: Format,
    save: bool,
) -> Result<(), Failure> {
    let bound = Runner::bind(app).map_err(start_failure)?;
    // The first thread of the process is created here, after every blocking step.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twistd-worker")
        .build()
        .map_err(|e| Failure::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|e| Failure::internal(format!("cannot watch SIGTERM: {e}")))?;
        let mut interrupt = signal(SignalKind::interrupt())
            .map_err(|e| Failure::internal(format!("cannot watch SIGINT: {e}")))?;
        let mut runner = Runner::start(app, registry, bound, DRAIN)
            .await
            .map_err(start_failure)?;
        tracing::info!(
            "ready: application '{}' runs {} service(s)",
            app.name,
            runner.len()
        );
        let cause = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("{cause}: stopping, open requests have {DRAIN:?} to finish");
        runner.stop(DRAIN).await;
        if save {
            let snapshot = runner.snapshot(app);
            let path = PathBuf::from(format!("{}-shutdown.{}", app.name, format.extension()));
            tapfile::save(&snapshot, &path, format, registry.holds_secrets(&snapshot))
                .map_err(Failure::internal)?;
            tracing::info!("saved {}", path.display());
        }
        tracing::info!("stopped");
        Ok(())
    })
}

fn main() -> ExitCode {
    let registry = builtin::registry();
    let matches = parse_args(command(&registry));
    match run(&registry, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!("{failure}");
            eprintln!("twistd: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
