//! `mktap PLUGIN [options]`: turns one plugin's options into a tap file, or with `--append`
//! adds a service to an existing one. It never runs a service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use host::crypt::Key;
use host::exit::{parse_args, Failure};
use host::{app, cli, passphrase, tapfile, Application, Format, Principal, Registry, TapError};

fn command(registry: &Registry) -> Command {
    let cmd = Command::new("mktap")
        .version(env!("CARGO_PKG_VERSION"))
        // As with most Unix tools, a later option overrides an earlier one.
        .args_override_self(true)
        .about("Make an application (tap) file from a plugin's options")
        .after_help("Run 'mktap PLUGIN --help' for a plugin's options.")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand_value_name("PLUGIN")
        .subcommand_help_heading("Plugins")
        .arg(
            Arg::new("type")
                .short('t')
                .long("type")
                .value_name("TYPE")
                .value_parser(["tap", "source", "json", "ron"])
                .help("Output format: tap (JSON, .tap) or source (RON, .tas) [default: tap]"),
        )
        .arg(
            Arg::new("encrypted")
                .short('e')
                .long("encrypted")
                .action(ArgAction::SetTrue)
                .help("Encrypt the tap with a passphrase (.etap / .etas); with --append, the tap is encrypted"),
        )
        .arg(passphrase::file_arg())
        .arg(
            Arg::new("append")
                .short('a')
                .long("append")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Add the service to this existing tap file"),
        )
        .arg(
            Arg::new("uid")
                .short('u')
                .long("uid")
                .value_name("USER")
                .value_parser(Principal::parse)
                .help("User (name or number) that twistd runs the application as"),
        )
        .arg(
            Arg::new("gid")
                .short('g')
                .long("gid")
                .value_name("GROUP")
                .value_parser(Principal::parse)
                .help("Group (name or number) that twistd runs the application as"),
        )
        .arg(
            Arg::new("appname")
                .short('n')
                .long("appname")
                .value_name("NAME")
                .help("Application name, which names its files [default: the plugin's name]"),
        )
        .arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .action(ArgAction::Set)
                .help("Write here instead of <appname>.tap / .tas"),
        );
    cli::with_plugins(cmd, registry)
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<String, Failure> {
    let mut spec = cli::spec_from_subcommand(registry, matches)
        .expect("clap requires a subcommand")
        .map_err(Failure::config)?;
    let requested = matches
        .get_one::<String>("type")
        .map(|t| Format::from_name(t).expect("clap restricts --type"));
    let output = matches.get_one::<PathBuf>("output");
    let passphrase_file = passphrase::file_from(matches);
    let encrypted = matches.get_flag("encrypted") || passphrase_file.is_some();
    if let Some(o) = output.filter(|o| !encrypted && Format::is_encrypted_name(o)) {
        return Err(Failure::usage(format!(
            "--output {}: an encrypted tap's name, but -e was not given",
            o.display()
        )));
    }
    if let Some(o) = output.filter(|o| {
        encrypted && Format::from_extension(o).is_some() && !Format::is_encrypted_name(o)
    }) {
        return Err(Failure::usage(format!(
            "--output {}: a plain tap's name, but -e was given (.etap or .etas)",
            o.display()
        )));
    }

    // With --append, the text the tap was read from, to add the service to as it is written.
    let mut original = None;
    let (mut app, format, path, key) = match matches.get_one::<PathBuf>("append") {
        Some(existing) => {
            let secret = if encrypted {
                Some(
                    passphrase::read(
                        passphrase_file,
                        &format!("Passphrase for {}: ", existing.display()),
                        false,
                    )
                    .map_err(Failure::usage)?,
                )
            } else {
                None
            };
            let loaded = tapfile::open(existing, secret.as_ref().map(|s| s.as_bytes())).map_err(
                |e| match e {
                    TapError::Encrypted { path } => Failure::config(format!(
                        "{}: the tap is encrypted: give -e (or --passphrase-file)",
                        path.display()
                    )),
                    other => Failure::config(other),
                },
            )?;
            if let Some(requested) = requested.filter(|r| *r != loaded.format) {
                return Err(Failure::usage(format!(
                    "--type {requested} does not match {}, which is {}; convert it with tapconvert",
                    existing.display(),
                    loaded.format
                )));
            }
            original = Some(loaded.text);
            (
                loaded.app,
                loaded.format,
                output.unwrap_or(existing).clone(),
                loaded.key,
            )
        }
        None => {
            let name = matches
                .get_one::<String>("appname")
                .cloned()
                .unwrap_or_else(|| spec.plugin.clone());
            let format = requested
                .or_else(|| output.and_then(|o| Format::from_extension(o)))
                .unwrap_or(Format::Json);
            let path = output.cloned().unwrap_or_else(|| {
                PathBuf::from(format!("{name}.{}", format.file_extension(encrypted)))
            });
            let key = if encrypted {
                let secret = passphrase::read(
                    passphrase_file,
                    &format!("Passphrase for {}: ", path.display()),
                    true,
                )
                .map_err(Failure::usage)?;
                Some(Key::generate(secret.as_bytes()).map_err(Failure::internal)?)
            } else {
                None
            };
            (Application::new(name), format, path, key)
        }
    };
    if let Some(name) = matches.get_one::<String>("appname") {
        if !app::valid_name(name) {
            return Err(Failure::usage(format!(
                "--appname '{name}': use only letters, digits, '.', '-' and '_'"
            )));
        }
        app.name = name.clone();
    }
    if let Some(uid) = matches.get_one::<Principal>("uid") {
        app.uid = Some(uid.clone());
    }
    if let Some(gid) = matches.get_one::<Principal>("gid") {
        app.gid = Some(gid.clone());
    }
    spec.name = app.unique_service_name(&spec.plugin);
    let summary = format!("service '{}' (plugin {})", spec.name, spec.plugin);
    app.services.push(spec);

    let problems = app.envelope_problems();
    if !problems.is_empty() {
        return Err(Failure::config(format!(
            "{}: {}",
            path.display(),
            problems.join("; ")
        )));
    }
    let private = registry.holds_secrets(&app);
    // A hand-edited tap keeps its comments and layout when the new service can be added to its
    // text as written; else the application is written anew, and the comments are lost.
    let spliced = original
        .as_ref()
        .and_then(|text| tapfile::with_last_service_appended(text, format, &app));
    let kept = match (&spliced, &key) {
        (Some(text), Some(key)) => {
            tapfile::write_sealed(&path, text.as_bytes(), key).map_err(Failure::saving)?;
            true
        }
        (Some(text), None) => {
            tapfile::write_atomic(&path, text.as_bytes(), if private { 0o600 } else { 0o644 })
                .map_err(|source| {
                    Failure::saving(TapError::Write {
                        path: path.clone(),
                        source,
                    })
                })?;
            true
        }
        (None, _) => {
            tapfile::save_as(&app, &path, format, key.as_ref(), private)
                .map_err(Failure::saving)?;
            false
        }
    };
    // Said when the old text was not as mktap would have written it (comments, layout).
    let lost = !kept
        && original
            .as_ref()
            .is_some_and(|text| !as_generated(text, format));
    Ok(format!(
        "wrote {} with {summary}{}",
        path.display(),
        if lost {
            " (written anew: the old text's comments and layout are not kept)"
        } else {
            ""
        }
    ))
}

/// Whether `text` is exactly what writing its application would give.
fn as_generated(text: &str, format: Format) -> bool {
    tapfile::parse(text, format, std::path::Path::new(""))
        .and_then(|app| tapfile::to_string(&app, format))
        .is_ok_and(|generated| generated == text)
}

fn main() -> ExitCode {
    let (registry, refused) = builtin::registry_with_external();
    for message in refused {
        eprintln!("mktap: {message}");
    }
    let matches = parse_args(command(&registry));
    match run(&registry, &matches) {
        Ok(line) => {
            println!("mktap: {line}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("mktap: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
