//! Where the passphrase of an encrypted tap comes from: the terminal, without echo (as Twisted's
//! `getpass`), or `--passphrase-file` for a service started by systemd or a script, which has no
//! terminal. Shared by mktap, tapconvert and twistd so the flag reads the same everywhere.

use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches};
use zeroize::Zeroizing;

/// Passphrase files are one line; anything much larger is a mistake (a tap given by accident).
const MAX_FILE_SIZE: u64 = 64 * 1024;

/// `--passphrase-file FILE`, which also implies the flag that asks for encryption.
pub fn file_arg() -> Arg {
    Arg::new("passphrase_file")
        .long("passphrase-file")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("Read the passphrase from the first line of FILE instead of the terminal")
}

/// The `--passphrase-file` given, if any.
pub fn file_from(matches: &ArgMatches) -> Option<&Path> {
    matches
        .get_one::<PathBuf>("passphrase_file")
        .map(PathBuf::as_path)
}

/// Reads the passphrase from `file` (its first line, without the line end), or else from the
/// terminal after `prompt`, twice when `confirm` (a new file: a typo would lock it for good).
pub fn read(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<Zeroizing<String>, String> {
    let passphrase = match file {
        Some(path) => from_file(path)?,
        None => {
            let first = from_terminal(prompt)?;
            if confirm && *first != *from_terminal("Again: ")? {
                return Err("the passphrases differ".into());
            }
            first
        }
    };
    if passphrase.is_empty() {
        return Err(match file {
            Some(path) => format!(
                "--passphrase-file {}: the passphrase is empty",
                path.display()
            ),
            None => "the passphrase is empty".into(),
        });
    }
    Ok(passphrase)
}

fn from_terminal(prompt: &str) -> Result<Zeroizing<String>, String> {
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| {
            format!("cannot read a passphrase from the terminal ({e}); use --passphrase-file FILE")
        })
}

fn from_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let err = |e: &dyn std::fmt::Display| format!("--passphrase-file {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| err(&e))?;
    if !meta.is_file() || meta.len() > MAX_FILE_SIZE {
        return Err(err(&"not a passphrase file (a small regular file)"));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(&e))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| err(&"not UTF-8 text"))?;
    let line = text.split('\n').next().unwrap_or_default();
    Ok(Zeroizing::new(
        line.strip_suffix('\r').unwrap_or(line).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_without_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        for (content, want) in [
            ("s3cret\n", Ok("s3cret")),
            ("s3cret\r\nsecond line\n", Ok("s3cret")),
            ("with spaces ", Ok("with spaces ")),
            ("\n", Err(())),
        ] {
            std::fs::write(&path, content).expect("write");
            let got = read(Some(&path), "", false);
            match want {
                Ok(w) => assert_eq!(got.expect("read").as_str(), w),
                Err(()) => assert!(got.expect_err("empty").contains("empty")),
            }
        }
        let missing = read(Some(&dir.path().join("nope")), "", false).expect_err("missing");
        assert!(missing.starts_with("--passphrase-file "), "{missing}");
        assert!(missing.contains("nope"), "{missing}");
    }
}
