//! The aliases file (aliases(5)): local names that expand to other addresses.
//!
//! ```text
//! # comment
//! postmaster: alice
//! staff:      alice, bob@example.com,
//!             :include:/etc/mail/staff.list
//! ```
//!
//! A name is a local part and applies in every local domain (`name@domain` limits it to one).
//! A target is a local user (in the domain of the address being expanded), `user@domain`
//! (in another domain it goes to the relay queue, `--relay`), another alias, or
//! `:include:FILE`, a file of targets (relative to the aliases file). A name that leads back
//! to itself is the mailbox of that name (`alice: alice, bob` keeps a copy for alice), as in
//! sendmail and Postfix. Pipes and file targets (`|cmd`, `/path`) are refused: this server
//! never runs programs or writes outside Maildirs. A name given twice keeps its first entry
//! (and is logged), as postalias does. The file and every included file are re-read when one
//! of them changes (checked by modification time and size at each lookup).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::users::{Directory, Mailbox, Route};

/// How deep aliases, and `:include:` files, may nest before expansion stops.
pub const MAX_DEPTH: usize = 10;

/// Where an alias leads: local mailboxes, and addresses in other domains (for the relay).
#[derive(Debug, Default, PartialEq)]
pub struct Expansion {
    pub mailboxes: Vec<Mailbox>,
    pub remote: Vec<String>,
    /// A target was skipped because aliases nest deeper than [`MAX_DEPTH`] (Postfix's
    /// "mail forwarding loop", 5.4.6, when nothing else is left).
    pub too_deep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AliasError {
    #[error("--aliases {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--aliases {}:{line}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// What an alias expands to, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A local part or a full address.
    Address(String),
    /// The targets of another file.
    Include(Vec<Target>),
}

/// One file's identity at load time, to notice a change.
type Stamp = (PathBuf, Option<(SystemTime, u64)>);

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    (path.to_path_buf(), meta)
}

#[derive(Debug, Default)]
struct Table {
    /// `name` or `name@domain`, lowercase, to its targets.
    entries: BTreeMap<String, Vec<Target>>,
    /// The aliases file and every file it includes.
    stamps: Vec<Stamp>,
    /// What the file has that is no error but worth a warning (a name given again), logged
    /// by whoever loads it for use: a check of the config stays quiet, so a warning comes once
    /// and under the service's name.
    warnings: Vec<String>,
}

impl Table {
    fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// The aliases of a service, reloaded when their files change.
#[derive(Debug)]
pub struct Aliases {
    path: PathBuf,
    table: Mutex<Table>,
}

impl Aliases {
    /// Loads the file now; its problems are errors naming the file and line.
    pub fn load(path: &Path) -> Result<Aliases, AliasError> {
        let table = parse_file(path)?;
        table.log_warnings();
        Ok(Aliases {
            path: path.to_path_buf(),
            table: Mutex::new(table),
        })
    }

    /// Whether the file loads, without logging what `load` would warn of.
    pub fn check(path: &Path) -> Result<(), AliasError> {
        parse_file(path).map(drop)
    }

    /// Re-reads the files if one changed since the last load. A file that no longer parses
    /// leaves the previous table in force (and is logged), so a half-edited file never
    /// bounces mail.
    fn refresh(&self, table: &mut Table) {
        if table.stamps.iter().all(|(path, old)| stamp(path).1 == *old) {
            return;
        }
        match parse_file(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), "aliases reloaded");
                fresh.log_warnings();
                *table = fresh;
            }
            Err(e) => {
                tracing::error!("{e}; keeping the aliases loaded before");
                // Remember the broken version, so the error is logged once per change.
                table.stamps = table.stamps.iter().map(|(p, _)| stamp(p)).collect();
            }
        }
    }

    /// Where `local@domain` leads, or `None` if it is not an alias. Targets that lead nowhere
    /// (unknown users) are logged and skipped; each mailbox and address comes once.
    pub fn expand(&self, directory: &Directory, local: &str, domain: &str) -> Option<Expansion> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut table);
        let (name, targets) = lookup(&table, directory, local, domain)?;
        let mut found = Expansion::default();
        let mut path = vec![name];
        expand_targets(&table, directory, targets, domain, &mut path, &mut found);
        found.mailboxes.sort();
        found.mailboxes.dedup();
        found.remote.sort();
        found.remote.dedup();
        Some(found)
    }
}

/// The alias `local@domain` names, with its key: `name@domain`, else `name` when `domain`
/// is local (a bare name is not an alias in other domains).
fn lookup<'t>(
    table: &'t Table,
    directory: &Directory,
    local: &str,
    domain: &str,
) -> Option<(String, &'t Vec<Target>)> {
    let local = local.to_ascii_lowercase();
    let full = format!("{local}@{}", domain.to_ascii_lowercase());
    if let Some(targets) = table.entries.get(&full) {
        return Some((full, targets));
    }
    directory.local_domain(domain)?;
    let targets = table.entries.get(&local)?;
    Some((local, targets))
}

/// Resolves `targets` into `found`; `path` holds the aliases being expanded, outermost
/// first: a target naming one of them is that name's mailbox, not the alias again.
fn expand_targets(
    table: &Table,
    directory: &Directory,
    targets: &[Target],
    domain: &str,
    path: &mut Vec<String>,
    found: &mut Expansion,
) {
    for target in targets {
        match target {
            Target::Include(inner) => expand_targets(table, directory, inner, domain, path, found),
            Target::Address(address) => {
                let (local, target_domain) = address
                    .rsplit_once('@')
                    .unwrap_or((address.as_str(), domain));
                if let Some((name, nested)) = lookup(table, directory, local, target_domain) {
                    if !path.contains(&name) {
                        if path.len() >= MAX_DEPTH {
                            tracing::warn!(
                                "alias {}: aliases nest deeper than {MAX_DEPTH}; {address} skipped",
                                path[0]
                            );
                            found.too_deep = true;
                            continue;
                        }
                        path.push(name);
                        expand_targets(table, directory, nested, target_domain, path, found);
                        path.pop();
                        continue;
                    }
                }
                match directory.route(local, target_domain) {
                    Route::Local(mailbox) => found.mailboxes.push(mailbox),
                    Route::UnknownUser => {
                        tracing::warn!("alias {}: target {address}: no such user; skipped", path[0])
                    }
                    Route::Foreign => found.remote.push(format!("{local}@{target_domain}")),
                }
            }
        }
    }
}

fn parse_file(path: &Path) -> Result<Table, AliasError> {
    let mut table = Table::default();
    let text = read(path, &mut table.stamps)?;
    // Join continuation lines (starting with blank space) to the entry before.
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match logical.last_mut() {
                Some((_, entry)) => {
                    entry.push(' ');
                    entry.push_str(line.trim());
                }
                None => {
                    return Err(AliasError::Syntax {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason: "a continuation line before any alias".into(),
                    })
                }
            }
        } else {
            logical.push((i + 1, line.trim().to_string()));
        }
    }
    for (line, entry) in logical {
        let syntax = |reason: String| AliasError::Syntax {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let (name, targets) = entry
            .split_once(':')
            .ok_or_else(|| syntax("expected 'name: target, ...'".into()))?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(syntax(format!("'{name}' is not an alias name")));
        }
        let targets = parse_targets(path, line, targets, &mut table.stamps, 0)?;
        if targets.is_empty() {
            return Err(syntax(format!("alias '{name}' has no target")));
        }
        if table.entries.contains_key(&name) {
            table.warnings.push(format!(
                "--aliases {}:{line}: '{name}' is given again; the first entry is kept",
                path.display()
            ));
            continue;
        }
        table.entries.insert(name, targets);
    }
    Ok(table)
}

fn read(path: &Path, stamps: &mut Vec<Stamp>) -> Result<String, AliasError> {
    stamps.push(stamp(path));
    crate::read_text_file(path)
        .map_err(|source| AliasError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .map_err(|line| AliasError::Syntax {
            path: path.to_path_buf(),
            line,
            reason: "not UTF-8 text".to_string(),
        })
}

/// Comma-separated targets, from line `line` of `file` (errors name that line);
/// `:include:` files are read here, relative to the file that names them, a target list on
/// each line.
fn parse_targets(
    file: &Path,
    line: usize,
    text: &str,
    stamps: &mut Vec<Stamp>,
    depth: usize,
) -> Result<Vec<Target>, AliasError> {
    let syntax = |reason: String| AliasError::Syntax {
        path: file.to_path_buf(),
        line,
        reason,
    };
    let mut targets = Vec::new();
    for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if item.starts_with('#') {
            continue;
        }
        if let Some(included) = item.strip_prefix(":include:") {
            if depth >= MAX_DEPTH {
                return Err(syntax(format!(
                    "{included}: includes nest deeper than {MAX_DEPTH}"
                )));
            }
            let included = file
                .parent()
                .unwrap_or(Path::new("."))
                .join(included.trim());
            // Errors in an included file name the line that includes it too.
            let from = |e: AliasError| match e {
                AliasError::Read { path, source } if path == included => AliasError::Syntax {
                    path: file.to_path_buf(),
                    line,
                    reason: format!(":include:{}: {source}", path.display()),
                },
                AliasError::Syntax {
                    path,
                    line: at,
                    reason,
                } => AliasError::Syntax {
                    path,
                    line: at,
                    reason: format!("{reason} (included from {}:{line})", file.display()),
                },
                other => other,
            };
            let text = read(&included, stamps).map_err(from)?;
            let mut inner = Vec::new();
            for (i, text) in text.lines().enumerate() {
                if !text.trim_start().starts_with('#') {
                    inner.extend(
                        parse_targets(&included, i + 1, text, stamps, depth + 1).map_err(from)?,
                    );
                }
            }
            targets.push(Target::Include(inner));
        } else if item.starts_with(['|', '/']) || item.starts_with("\"|") {
            return Err(syntax(format!(
                "'{item}': program and file targets are not supported (Maildir delivery only)"
            )));
        } else if item.contains(char::is_whitespace) || item.contains(['<', '>']) {
            return Err(syntax(format!("'{item}' is not an address")));
        } else {
            targets.push(Target::Address(item.to_ascii_lowercase()));
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MailConfig;

    fn directory() -> Directory {
        let mut config = MailConfig::default();
        config.domains.insert("a.test".into(), "/m/a".into());
        config.domains.insert("b.test".into(), "/m/b".into());
        for user in ["al@a.test", "bo@a.test", "cy@b.test"] {
            config.users.insert(user.into(), "h".into());
        }
        Directory::load(&config).expect("no password file")
    }

    fn users(found: Option<Expansion>) -> Vec<String> {
        found
            .expect("an alias")
            .mailboxes
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    #[test]
    fn a_chain_deeper_than_the_limit_is_cut_and_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("aliases");
        let chain: String = (0..=MAX_DEPTH)
            .map(|i| format!("n{i}: n{}\n", i + 1))
            .chain([format!(
                "n{}: al\nshort: n{}\n",
                MAX_DEPTH + 1,
                MAX_DEPTH - 2
            )])
            .collect();
        std::fs::write(&path, chain).expect("write");
        let aliases = Aliases::load(&path).expect("parses");
        let d = directory();
        let deep = aliases.expand(&d, "n0", "a.test").expect("an alias");
        assert!(deep.mailboxes.is_empty() && deep.too_deep, "{deep:?}");
        let short = aliases.expand(&d, "short", "a.test").expect("an alias");
        assert_eq!(users(Some(short)), ["al@a.test"]);
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("aliases");
        std::fs::write(&path, b"# list\nstaff: al\nj\xfcrgen: bo\n").expect("write");
        let e = Aliases::load(&path).expect_err("latin-1").to_string();
        assert!(e.contains("aliases:3: not UTF-8 text"), "{e}");
    }

    #[test]
    fn expands_nests_includes_and_reloads() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("aliases");
        std::fs::write(
            dir.path().join("list"),
            "# the list\nbo\ncy@b.test, nobody\n",
        )
        .expect("write");
        std::fs::write(
            &path,
            "# aliases\npostmaster: al\nstaff: postmaster,\n  :include:list\nloop: loop\nx@b.test: cy\n",
        )
        .expect("write");
        let aliases = Aliases::load(&path).expect("parses");
        let d = directory();
        assert_eq!(
            users(aliases.expand(&d, "Postmaster", "a.test")),
            ["al@a.test"]
        );
        assert_eq!(
            users(aliases.expand(&d, "staff", "a.test")),
            ["al@a.test", "bo@a.test", "cy@b.test"]
        );
        assert_eq!(
            users(aliases.expand(&d, "loop", "a.test")),
            Vec::<String>::new()
        );
        assert_eq!(users(aliases.expand(&d, "x", "b.test")), ["cy@b.test"]);
        assert!(aliases.expand(&d, "x", "a.test").is_none());
        assert!(aliases.expand(&d, "al", "a.test").is_none());

        // A change to an included file is seen at the next lookup.
        std::fs::write(dir.path().join("list"), "cy@b.test\nextra: junk\n").expect("write");
        assert!(
            aliases.expand(&d, "staff", "a.test").is_some(),
            "bad include keeps the old table"
        );
        std::fs::write(dir.path().join("list"), "cy@b.test\n").expect("write");
        assert_eq!(
            users(aliases.expand(&d, "staff", "a.test")),
            ["al@a.test", "cy@b.test"]
        );
    }

    #[test]
    fn refuses_programs_files_and_junk() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("aliases");
        std::fs::write(dir.path().join("list"), "bo\nx y\n").expect("write");
        for (text, expected) in [
            ("a: |/bin/sh\n", ":1: '|/bin/sh': program and file targets"),
            ("a: /tmp/x\n", "program and file targets"),
            ("  b\n", ":1: a continuation line"),
            ("a b: c\n", "not an alias name"),
            ("a:\n", "has no target"),
            ("ok: x\nbad\n", ":2: expected"),
            // An included file's errors name the line that includes it.
            ("a: :include:missing\n", "aliases:1: :include:"),
            (
                "a: b,\n  :include:list\n",
                "list:2: 'x y' is not an address (included from ",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Aliases::load(&path).expect_err(text).to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn self_references_other_domains_and_duplicates() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("aliases");
        std::fs::write(
            &path,
            "al: al, bo\nla: lb\nlb: la, bo\nfwd: cy@remote.test, al, root@remote.test\n\
             root: bo\nal: cy@b.test\n",
        )
        .expect("write");
        let aliases = Aliases::load(&path).expect("parses");
        let d = directory();
        // A name that leads back to itself is its own mailbox; the first `al` entry is kept.
        assert_eq!(
            users(aliases.expand(&d, "al", "a.test")),
            ["al@a.test", "bo@a.test"]
        );
        // A loop ends at the name met again: la is no user, so only bo.
        assert_eq!(users(aliases.expand(&d, "la", "a.test")), ["bo@a.test"]);
        // Other domains are kept for the relay; a bare alias name (root) is no alias there.
        let fwd = aliases.expand(&d, "fwd", "a.test").expect("an alias");
        assert_eq!(fwd.remote, ["cy@remote.test", "root@remote.test"]);
        assert_eq!(users(Some(fwd)), ["al@a.test", "bo@a.test"]);
        assert!(aliases.expand(&d, "root", "remote.test").is_none());
    }
}
