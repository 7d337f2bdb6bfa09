//! `tapconvert -i IN [-o OUT] [-f guess|tap|source] [-t tap|source] [-d] [-e]`: converts a tap
//! between JSON and RON, and into or out of encryption, with Twisted's option names.
//!
//! A conversion never changes meaning: the output is decoded again before it is written and must
//! give an Application equal to the input's. When only the encryption changes, the text is kept
//! byte for byte, so a hand-edited `.tas` keeps its comments.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use host::crypt::Key;
use host::exit::{self, parse_args, Failure};
use host::{passphrase, tapfile, Format, Registry, TapError};
use zeroize::Zeroizing;

fn command() -> Command {
    Command::new("tapconvert")
        .version(env!("CARGO_PKG_VERSION"))
        .args_override_self(true)
        .about("Convert a tap between JSON (tap) and RON (source), and to or from encryption")
        .after_help(
            "Without -o the output is <name>.tap, .tas, .etap or .etas after the application's name, \
             in the current directory.\nWithout -t the format is the one -o's name says (.tap, .tas, .etap, .etas); \
             else it changes (tap to source, source to tap), unless -e or -d is given: then it \
             stays.",
        )
        .arg(
            Arg::new("in")
                .short('i')
                .long("in")
                .value_name("FILE")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("The tap to read"),
        )
        .arg(
            Arg::new("out")
                .short('o')
                .long("out")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Where to write [default: after the application's name]"),
        )
        .arg(
            Arg::new("typein")
                .short('f')
                .long("typein")
                .value_name("TYPE")
                .value_parser(["guess", "tap", "source", "json", "ron"])
                .default_value("guess")
                .help("The input's format: guess (from its content and name), tap (JSON) or source (RON)"),
        )
        .arg(
            Arg::new("typeout")
                .short('t')
                .long("typeout")
                .value_name("TYPE")
                .value_parser(["tap", "source", "json", "ron"])
                .help("The output's format: tap (JSON) or source (RON)"),
        )
        .arg(
            Arg::new("decrypt")
                .short('d')
                .long("decrypt")
                .action(ArgAction::SetTrue)
                .help("The input is encrypted: ask for its passphrase"),
        )
        .arg(
            Arg::new("encrypt")
                .short('e')
                .long("encrypt")
                .action(ArgAction::SetTrue)
                .help("Encrypt the output with a passphrase (asked twice on the terminal)"),
        )
        .arg(passphrase::file_arg().help(
            "Read the passphrase from the first line of FILE (for both -d and -e) instead of the terminal",
        ))
}

fn run(registry: &Registry, matches: &ArgMatches) -> Result<String, Failure> {
    let input = matches
        .get_one::<PathBuf>("in")
        .expect("clap requires --in");
    let decrypt = matches.get_flag("decrypt");
    let encrypt = matches.get_flag("encrypt");
    let passphrase_file = passphrase::file_from(matches);
    if passphrase_file.is_some() && !decrypt && !encrypt {
        return Err(Failure::usage(
            "--passphrase-file needs -d (the input is encrypted) or -e (encrypt the output)",
        ));
    }

    let (text, _) = if decrypt {
        let secret = passphrase::read(
            passphrase_file,
            &format!("Passphrase for {}: ", input.display()),
            false,
        )
        .map_err(Failure::usage)?;
        tapfile::read_text(input, Some(secret.as_bytes()))
    } else {
        tapfile::read_text(input, None)
    }
    .map_err(|e| match e {
        TapError::Encrypted { path } => Failure::config(format!(
            "{}: the tap is encrypted: give -d to decrypt it",
            path.display()
        )),
        TapError::NotEncrypted { path } => Failure::config(format!(
            "{}: the tap is not encrypted: drop -d",
            path.display()
        )),
        other => Failure::config(other),
    })?;

    let typein = matches.get_one::<String>("typein").expect("has a default");
    let in_format = match typein.as_str() {
        "guess" => Format::detect(input, &text),
        name => Format::from_name(name).expect("clap restricts --typein"),
    };
    let app = tapfile::parse(&text, in_format, input).map_err(Failure::config)?;

    let out_named = matches
        .get_one::<PathBuf>("out")
        .and_then(|out| Some((out, Format::from_extension(out)?)));
    let out_format = match matches.get_one::<String>("typeout") {
        Some(name) => {
            let format = Format::from_name(name).expect("clap restricts --typeout");
            // As mktap: a file is never given a name that says another format.
            if let Some((out, named)) = out_named.filter(|(_, named)| *named != format) {
                return Err(Failure::usage(format!(
                    "--typeout {name} does not match --out {}, a name for {named}",
                    out.display()
                )));
            }
            format
        }
        None => match out_named {
            Some((_, named)) => named,
            None if decrypt || encrypt => in_format,
            None => match in_format {
                Format::Json => Format::Ron,
                Format::Ron => Format::Json,
            },
        },
    };
    let output = match matches.get_one::<PathBuf>("out") {
        Some(out) => {
            if !encrypt && Format::is_encrypted_name(out) {
                return Err(Failure::usage(format!(
                    "--out {}: an encrypted tap's name, but -e was not given",
                    out.display()
                )));
            }
            // The other way round: encrypted text under a name that says it is plain.
            if encrypt && Format::from_extension(out).is_some() && !Format::is_encrypted_name(out) {
                return Err(Failure::usage(format!(
                    "--out {}: a plain tap's name, but -e was given (.etap or .etas)",
                    out.display()
                )));
            }
            out.clone()
        }
        None => {
            let out = PathBuf::from(format!(
                "{}.{}",
                app.name,
                out_format.file_extension(encrypt)
            ));
            if same_file(&out, input) {
                return Err(Failure::usage(format!(
                    "the output would be the input, {}; give -o",
                    input.display()
                )));
            }
            out
        }
    };

    let out_text = if out_format == in_format {
        text.clone()
    } else {
        Zeroizing::new(tapfile::to_string(&app, out_format).map_err(Failure::internal)?)
    };
    // The promise of this tool, checked on every run rather than trusted.
    let back = tapfile::parse(&out_text, out_format, &output).map_err(Failure::internal)?;
    if back != app {
        return Err(Failure::internal(format!(
            "converting {} to {out_format} would change it; nothing written",
            input.display()
        )));
    }

    let write_err = |e: &dyn std::fmt::Display| Failure::new(exit::CANTCREAT, e);
    if encrypt {
        let secret = passphrase::read(
            passphrase_file,
            &format!("Passphrase for {}: ", output.display()),
            true,
        )
        .map_err(Failure::usage)?;
        let key = Key::generate(secret.as_bytes()).map_err(Failure::internal)?;
        tapfile::write_sealed(&output, out_text.as_bytes(), &key).map_err(|e| write_err(&e))?;
    } else {
        // A decrypted tap, or one whose input was private, stays private.
        let private = decrypt || registry.holds_secrets(&app) || is_private(input);
        let mode = if private { 0o600 } else { 0o644 };
        tapfile::write_atomic(&output, out_text.as_bytes(), mode)
            .map_err(|e| write_err(&format!("cannot write {}: {e}", output.display())))?;
    }
    Ok(format!(
        "wrote {} ({}{out_format}) from {} ({}{in_format})",
        output.display(),
        if encrypt { "encrypted " } else { "" },
        input.display(),
        if decrypt { "encrypted " } else { "" },
    ))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn is_private(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

fn main() -> ExitCode {
    let registry = builtin::registry();
    let matches = parse_args(command());
    match run(&registry, &matches) {
        Ok(line) => {
            println!("tapconvert: {line}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("tapconvert: {failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}
