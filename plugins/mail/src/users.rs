//! Domains and users: who has a Maildir, who may log in, and where an address delivers.
//!
//! Passwords exist in plain text only on their way in (the command line, the password file);
//! what is kept is an Argon2id PHC string, made and checked by `host::secret`. Verification is
//! slow on purpose, so callers run it off the async workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::MailConfig;

/// Whether `password` matches the hash `phc`. An empty password never does, whatever the hash
/// (as Dovecot refuses them): a tap made before `--user` refused empty passwords may hold
/// the hash of one.
pub fn verify_password(phc: &str, password: &str) -> bool {
    !password.is_empty() && host::secret::verify_password(phc, password)
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{0}")]
    Hash(String),
    #[error("--passwordfile {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--passwordfile {}:{line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// An Argon2id PHC string for `password`, with a fresh random salt (`host::secret`, as every
/// password of the host).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    host::secret::hash_password(password).map_err(UsersError::Hash)
}

/// Whether `phc` is an Argon2 PHC string [`verify_password`] can check (Argon2id, as this
/// module makes them, or an older variant written into a tap by hand).
pub fn is_password_hash(phc: &str) -> bool {
    host::secret::is_argon2_hash(phc)
}

/// A user name that is safe as a directory name: letters, digits and `. _ + -`, not starting
/// with a dot (so never `.` or `..`), at most 64 octets as RFC 5321 allows a local part.
pub fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// A DNS name: labels of letters, digits and hyphens (plus `localhost`-style single labels).
pub fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One user's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox {
    pub user: String,
    pub domain: String,
    /// The Maildir: the domain's path joined with the user name.
    pub path: PathBuf,
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

/// Where an address delivers, as SMTP's RCPT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local(Mailbox),
    /// A local domain without that user (and no `--bounce-to-postmaster`).
    UnknownUser,
    /// Not a domain of ours.
    Foreign,
}

/// Every domain and user of a service.
#[derive(Debug, Clone)]
pub struct Directory {
    domains: BTreeMap<String, PathBuf>,
    /// `user@domain` to a PHC string.
    passwords: BTreeMap<String, String>,
    default_domain: Option<String>,
    bounce_to_postmaster: bool,
}

impl Directory {
    /// The directory of a config, with the password file read (and hashed) now.
    pub fn load(config: &MailConfig) -> Result<Directory, UsersError> {
        let mut passwords = config.users.clone();
        if let Some(path) = &config.password_file {
            for (line, address, password) in read_password_file(path, &config.domains)? {
                if passwords.contains_key(&address) {
                    return Err(UsersError::BadLine {
                        path: path.to_path_buf(),
                        line,
                        reason: format!("{address} is also given by --user"),
                    });
                }
                passwords.insert(address, hash_password(&password)?);
            }
        }
        Ok(Directory {
            domains: config.domains.clone(),
            passwords,
            default_domain: config.default_domain.clone(),
            bounce_to_postmaster: config.bounce_to_postmaster,
        })
    }

    fn mailbox(&self, user: &str, domain: &str) -> Option<Mailbox> {
        let path = self.domains.get(domain)?.join(user);
        Some(Mailbox {
            user: user.to_string(),
            domain: domain.to_string(),
            path,
        })
    }

    /// Every mailbox that must exist: each user's, and each domain's postmaster.
    pub fn mailboxes(&self) -> Vec<Mailbox> {
        let mut boxes: Vec<Mailbox> = self
            .passwords
            .keys()
            .filter_map(|a| a.split_once('@'))
            .filter_map(|(u, d)| self.mailbox(u, d))
            .collect();
        boxes.extend(
            self.domains
                .keys()
                .filter_map(|d| self.mailbox("postmaster", d)),
        );
        boxes.sort();
        boxes.dedup();
        boxes
    }

    /// Where mail for `local@domain` goes. Case does not matter. Every local domain has a
    /// postmaster (RFC 5321 4.5.1: it MUST be accepted): the user of that name if there is
    /// one, else the domain's `postmaster` Maildir, which exists from the start (an alias of
    /// that name comes first, in the SMTP session).
    pub fn route(&self, local: &str, domain: &str) -> Route {
        let local = local.to_ascii_lowercase();
        let mut domain = domain.to_ascii_lowercase();
        if !self.domains.contains_key(&domain) {
            match &self.default_domain {
                Some(default) => domain = default.clone(),
                None => return Route::Foreign,
            }
        }
        if is_user_name(&local) && self.passwords.contains_key(&format!("{local}@{domain}")) {
            if let Some(mailbox) = self.mailbox(&local, &domain) {
                return Route::Local(mailbox);
            }
        }
        if self.bounce_to_postmaster || local == "postmaster" {
            if let Some(mailbox) = self.mailbox("postmaster", &domain) {
                return Route::Local(mailbox);
            }
        }
        Route::UnknownUser
    }

    /// The local domain mail for `domain` goes to: itself, or the default domain (`-D`).
    pub fn local_domain(&self, domain: &str) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        if self.domains.contains_key(&domain) {
            Some(domain)
        } else {
            self.default_domain.clone()
        }
    }

    /// The domain of plain `<postmaster>` (RFC 5321 4.5.1): the default domain, else the
    /// first by name (the only one, usually).
    pub fn postmaster_domain(&self) -> Option<String> {
        self.default_domain
            .clone()
            .or_else(|| self.domains.keys().next().cloned())
    }

    /// The mailbox and password hash of a POP3 login name: `user@domain`, or `user` when there
    /// is only one domain.
    pub fn login(&self, name: &str) -> Option<(Mailbox, &str)> {
        let name = name.to_ascii_lowercase();
        let (user, domain) = match name.split_once('@') {
            Some((u, d)) => (u.to_string(), d.to_string()),
            None if self.domains.len() == 1 => {
                let domain = self.domains.keys().next().expect("one domain").clone();
                (name.clone(), domain)
            }
            None => return None,
        };
        let hash = self.passwords.get(&format!("{user}@{domain}"))?;
        Some((self.mailbox(&user, &domain)?, hash.as_str()))
    }
}

/// The `user@domain:password` lines of a password file, each with its line number; blank
/// lines and `#` comments are skipped. The password is everything after the first colon, so it
/// may hold colons itself. The file holds passwords in plain text: one that others may read is
/// logged.
fn read_password_file(
    path: &Path,
    domains: &BTreeMap<String, PathBuf>,
) -> Result<Vec<(usize, String, String)>, UsersError> {
    let text = crate::read_text_file(path).map_err(|source| UsersError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "--passwordfile {}: mode {:04o} lets others read the passwords; chmod 600 it",
                path.display(),
                mode & 0o7777
            );
        }
    }
    let bad = |line: usize, reason: &str| UsersError::BadLine {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    };
    let text = text.map_err(|line| bad(line, "not UTF-8 text"))?;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (address, password) = line
            .split_once(':')
            .ok_or_else(|| bad(n, "expected user@domain:password"))?;
        let address = address.trim().to_ascii_lowercase();
        let (user, domain) = address
            .split_once('@')
            .ok_or_else(|| bad(n, "expected user@domain before the colon"))?;
        if !is_user_name(user) {
            return Err(bad(n, "not a valid user name"));
        }
        if !domains.contains_key(domain) {
            return Err(bad(n, "not one of the --maildirdbmdomain domains"));
        }
        if password.is_empty() {
            return Err(bad(n, "empty password"));
        }
        if let Some((first, ..)) = entries.iter().find(|(_, known, _)| *known == address) {
            return Err(bad(
                n,
                &format!("{address} is given again (first on line {first})"),
            ));
        }
        entries.push((n, address.clone(), password.to_string()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_hide_the_password() {
        let phc = hash_password("s3cret:with colon").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("s3cret"));
        assert!(is_password_hash(&phc));
        assert!(verify_password(&phc, "s3cret:with colon"));
        assert!(!verify_password(&phc, "s3cret"));
        assert!(!verify_password("not a hash", "x"));
        let empty = host::secret::hash_password("").expect("hash");
        assert!(host::secret::verify_password(&empty, ""));
        assert!(
            !verify_password(&empty, ""),
            "an empty password never logs in"
        );
    }

    #[test]
    fn names() {
        assert!(is_user_name("alice.b+tag"));
        assert!(!is_user_name(".."));
        assert!(!is_user_name("a/b"));
        assert!(!is_user_name(""));
        assert!(is_domain_name("example.com"));
        assert!(is_domain_name("localhost"));
        assert!(!is_domain_name("-x.com"));
        assert!(!is_domain_name("a..b"));
    }

    fn directory(default: bool, bounce: bool) -> Directory {
        let mut config = MailConfig::default();
        config.domains.insert("a.test".into(), "/m/a".into());
        config.domains.insert("b.test".into(), "/m/b".into());
        config.users.insert("al@a.test".into(), "h".into());
        config.default_domain = default.then(|| "a.test".into());
        config.bounce_to_postmaster = bounce;
        Directory::load(&config).expect("no password file")
    }

    #[test]
    fn password_file_lines_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("passwords");
        let mut config = MailConfig::default();
        config.domains.insert("a.test".into(), "/m/a".into());
        config.users.insert("al@a.test".into(), "h".into());
        config.password_file = Some(path.clone());
        for (text, expected) in [
            ("bo@a.test:\n", ":1: empty password"),
            (
                "bo@a.test:x\n# c\nBO@a.test:y\n",
                ":3: bo@a.test is given again (first on line 1)",
            ),
            ("\nal@a.test:x\n", ":2: al@a.test is also given by --user"),
            ("bo@c.test:x\n", ":1: not one of the --maildirdbmdomain"),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Directory::load(&config).expect_err(text).to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
        std::fs::write(&path, b"bo@a.test:x\n\ncy@a.test:p\xe9\n").expect("write");
        let e = Directory::load(&config).expect_err("latin-1").to_string();
        assert!(e.contains("passwords:3: not UTF-8 text"), "{e}");
    }

    #[test]
    fn routes() {
        let d = directory(false, false);
        assert!(
            matches!(d.route("AL", "A.test"), Route::Local(m) if m.path == Path::new("/m/a/al"))
        );
        assert_eq!(d.route("bob", "a.test"), Route::UnknownUser);
        assert_eq!(d.route("../x", "a.test"), Route::UnknownUser);
        assert_eq!(d.route("al", "elsewhere.test"), Route::Foreign);
        // Every local domain has a postmaster, user or not, and it exists from the start.
        assert!(
            matches!(d.route("PostMaster", "b.test"), Route::Local(m) if m.path == Path::new("/m/b/postmaster"))
        );
        assert_eq!(d.postmaster_domain().as_deref(), Some("a.test"));
        assert_eq!(d.mailboxes().len(), 3);
        let d = directory(true, true);
        assert!(matches!(d.route("al", "elsewhere.test"), Route::Local(m) if m.user == "al"));
        assert!(
            matches!(d.route("bob", "b.test"), Route::Local(m) if m.path == Path::new("/m/b/postmaster"))
        );
        assert_eq!(d.mailboxes().len(), 3);
    }

    #[test]
    fn logins() {
        let d = directory(false, false);
        assert!(d.login("al@a.test").is_some());
        assert!(d.login("al").is_none(), "two domains: the domain is needed");
    }
}
