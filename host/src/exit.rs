//! Exit codes shared by every binary, after BSD's sysexits.h, so scripts and service managers
//! can tell a typo from a busy port.

/// Command-line usage error (EX_USAGE).
pub const USAGE: i32 = 64;
/// A service could not be had: a listener failed to bind (EX_UNAVAILABLE).
pub const UNAVAILABLE: i32 = 69;
/// A bug or an unexpected failure inside taphost (EX_SOFTWARE).
pub const INTERNAL: i32 = 70;
/// Not allowed: a privilege the process lacks (EX_NOPERM).
pub const NOPERM: i32 = 77;
/// A tap file or plugin configuration is wrong (EX_CONFIG).
pub const CONFIG: i32 = 78;
/// A file the server must write (log, pid) cannot be created (EX_CANTCREAT).
pub const CANTCREAT: i32 = 73;

/// An error on its way to becoming one line on stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl std::fmt::Display) -> Self {
        Failure {
            code,
            message: message.to_string(),
        }
    }

    pub fn usage(message: impl std::fmt::Display) -> Self {
        Failure::new(USAGE, message)
    }

    pub fn config(message: impl std::fmt::Display) -> Self {
        Failure::new(CONFIG, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Failure::new(INTERNAL, message)
    }

    /// A tap that could not be written: [`CANTCREAT`] when the file could not be, else (it
    /// could not be encoded) [`INTERNAL`].
    pub fn saving(e: crate::tapfile::TapError) -> Self {
        match e {
            crate::tapfile::TapError::Write { .. } => Failure::new(CANTCREAT, e),
            other => Failure::internal(other),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Parses the command line; `--help` and `--version` print and exit 0, anything else that clap
/// refuses prints clap's message and exits [`USAGE`]. An unknown subcommand is reported as an
/// unknown plugin, with the list of the known ones.
///
/// `BIN --generate-docs DIR` (hidden, for packaging) writes the man pages and completions of
/// this command into DIR and exits; see [`crate::docs`].
pub fn parse_args(cmd: clap::Command) -> clap::ArgMatches {
    let bin = cmd.get_name().to_string();
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "--generate-docs") {
        let Some(dir) = args.next() else {
            eprintln!("{bin}: --generate-docs needs a directory");
            std::process::exit(USAGE);
        };
        if let Err(e) = crate::docs::write(cmd, std::path::Path::new(&dir)) {
            eprintln!("{bin}: --generate-docs {}: {e}", dir.to_string_lossy());
            std::process::exit(CANTCREAT);
        }
        std::process::exit(0);
    }
    let plugins: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    cmd.try_get_matches().unwrap_or_else(|e| {
        if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
            if let Some(name) = e.get(clap::error::ContextKind::InvalidSubcommand) {
                eprintln!(
                    "{bin}: unknown plugin '{name}' (known: {}; {})",
                    plugins.join(", "),
                    crate::external::SEARCH_HINT
                );
                std::process::exit(USAGE);
            }
        }
        let code = if e.use_stderr() { USAGE } else { 0 };
        // Printing can only fail when stdout/stderr is gone; the exit code still tells.
        let _ = e.print();
        std::process::exit(code)
    })
}
