//! Reading and writing tap files.
//!
//! A tap is data only: loading one never runs code. JSON (`.tap`) is for machines, RON (`.tas`)
//! for hand editing. The format comes from the content when it is clear (`{` opens JSON, `(` or a
//! comment opens RON) and from the extension otherwise. Every error names the file, and syntax
//! or type errors also the line, the column and the field path.
//!
//! Encrypted taps (`.etap`, `.etas`) hold the same text sealed by [`crate::crypt`]; they are
//! recognised by their magic bytes, opened with [`load_encrypted`] and written with
//! [`save_encrypted`], always mode 0600.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use zeroize::Zeroizing;

use crate::app::{Application, TAP_VERSION};
use crate::crypt::{self, CryptError, Key};
use crate::files;
use crate::locate;

/// Taps are small; anything larger is not one, and is refused before it is read whole.
pub const MAX_TAP_SIZE: u64 = files::MAX_SMALL_FILE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `.tap`: JSON.
    Json,
    /// `.tas`: RON ("source"), for hand editing.
    Ron,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "tap",
            Format::Ron => "tas",
        }
    }

    /// The extension of an encrypted tap in this format: `etap` or `etas`.
    pub fn encrypted_extension(self) -> &'static str {
        match self {
            Format::Json => "etap",
            Format::Ron => "etas",
        }
    }

    /// `etap` or `tap`, as the file is encrypted or not.
    pub fn file_extension(self, encrypted: bool) -> &'static str {
        if encrypted {
            self.encrypted_extension()
        } else {
            self.extension()
        }
    }

    /// The format a file's name says (`.tap`, `.TAS`: in any case), if it says one.
    pub fn from_extension(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "tap" | "json" | "etap" => Some(Format::Json),
            "tas" | "ron" | "etas" => Some(Format::Ron),
            _ => None,
        }
    }

    /// Whether the name says the file is encrypted (`.etap`, `.etas`).
    pub fn is_encrypted_name(path: &Path) -> bool {
        path.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("etap") || e.eq_ignore_ascii_case("etas"))
    }

    /// Parses `mktap --type` values: Twisted's `tap` and `source`, or `json` and `ron`.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "tap" | "json" => Some(Format::Json),
            "source" | "ron" => Some(Format::Ron),
            _ => None,
        }
    }

    /// The content decides when its first character is unambiguous; otherwise the extension,
    /// and JSON when there is neither.
    pub fn detect(path: &Path, text: &str) -> Format {
        match text.trim_start().chars().next() {
            Some('{') => Format::Json,
            Some('(' | '/' | '#') => Format::Ron,
            _ => Format::from_extension(path).unwrap_or(Format::Json),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Ron => "RON",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: not a tap file: {reason}", path.display())]
    NotATap { path: PathBuf, reason: String },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: tap format version {found} is newer than this taphost reads (up to {TAP_VERSION}); upgrade taphost", path.display())]
    TooNew { path: PathBuf, found: u64 },
    #[error("{}: tap format version {found} is unknown (this taphost reads 1 to {TAP_VERSION})", path.display())]
    UnknownVersion { path: PathBuf, found: u64 },
    #[error("{}", located(path, problems))]
    Invalid {
        path: PathBuf,
        /// Each problem with the line and column of the value it is about, when found.
        problems: Vec<(Option<(usize, usize)>, String)>,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode the application as {format}: {message}")]
    Encode { format: Format, message: String },
    #[error("{}: the tap is encrypted: give its passphrase (-e, or --passphrase-file FILE)", path.display())]
    Encrypted { path: PathBuf },
    #[error("{}: the tap is not encrypted", path.display())]
    NotEncrypted { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Crypt { path: PathBuf, source: CryptError },
}

/// Only the version, read leniently first, so that a tap from a newer taphost gets a message
/// about versions rather than about whichever new field the strict decoder meets first.
#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Reads, decodes and checks the envelope of a tap file. Plugin configs are checked by the
/// [`crate::Registry`], which knows the plugins. An encrypted tap is refused with
/// [`TapError::Encrypted`]; open those with [`load_encrypted`].
pub fn load(path: &Path) -> Result<(Application, Format), TapError> {
    let loaded = open(path, None)?;
    Ok((loaded.app, loaded.format))
}

/// Reads, decrypts, decodes and checks an encrypted tap. Also returns the key, so the
/// application can be saved encrypted again without asking for the passphrase a second time.
pub fn load_encrypted(
    path: &Path,
    passphrase: &[u8],
) -> Result<(Application, Format, Key), TapError> {
    let loaded = open(path, Some(passphrase))?;
    let key = loaded.key.ok_or_else(|| TapError::NotEncrypted {
        path: path.to_path_buf(),
    })?;
    Ok((loaded.app, loaded.format, key))
}

/// A tap as [`open`] read it.
pub struct Loaded {
    pub app: Application,
    pub format: Format,
    /// The text it was decoded from, for positions in later errors
    /// ([`crate::Registry::check_source`]).
    pub text: Zeroizing<String>,
    /// The key of an encrypted tap, to save it encrypted again.
    pub key: Option<Key>,
}

/// [`load`], or with a passphrase [`load_encrypted`], keeping the text.
pub fn open(path: &Path, passphrase: Option<&[u8]>) -> Result<Loaded, TapError> {
    let (text, key) = read_text(path, passphrase)?;
    let format = Format::detect(path, &text);
    let app = parse(&text, format, path)?;
    Ok(Loaded {
        app,
        format,
        text,
        key,
    })
}

/// A tap's text as written, decrypted first when a passphrase is given (and then the key).
/// With a passphrase, a plain file is [`TapError::NotEncrypted`]; without one, an encrypted file
/// is [`TapError::Encrypted`].
pub fn read_text(
    path: &Path,
    passphrase: Option<&[u8]>,
) -> Result<(Zeroizing<String>, Option<Key>), TapError> {
    let read_err = |source| TapError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(TapError::NotATap {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    if meta.len() > MAX_TAP_SIZE {
        return Err(TapError::NotATap {
            path: path.to_path_buf(),
            reason: format!("it is larger than {} MiB", MAX_TAP_SIZE >> 20),
        });
    }
    let bytes = Zeroizing::new(files::read_limited(path, MAX_TAP_SIZE).map_err(
        |e| match e.kind() {
            io::ErrorKind::InvalidData => TapError::NotATap {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
            _ => read_err(e),
        },
    )?);
    let (plain, key) = match (crypt::is_sealed(&bytes), passphrase) {
        (false, None) => (bytes, None),
        (true, None) => {
            return Err(TapError::Encrypted {
                path: path.to_path_buf(),
            })
        }
        (false, Some(_)) => {
            return Err(TapError::NotEncrypted {
                path: path.to_path_buf(),
            })
        }
        (true, Some(passphrase)) => {
            let (plain, key) =
                crypt::open(passphrase, &bytes).map_err(|source| TapError::Crypt {
                    path: path.to_path_buf(),
                    source,
                })?;
            (plain, Some(key))
        }
    };
    let text = std::str::from_utf8(&plain).map_err(|e| {
        let upto = &plain[..e.valid_up_to()];
        let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
        TapError::NotATap {
            path: path.to_path_buf(),
            reason: format!("line {line} is not UTF-8 text"),
        }
    })?;
    // A byte order mark, as some Windows editors write one, is not part of the text.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok((Zeroizing::new(text.to_string()), key))
}

/// Decodes tap text; `path` is only used in error messages.
pub fn parse(text: &str, format: Format, path: &Path) -> Result<Application, TapError> {
    let probe = match format {
        Format::Json => serde_json::from_str::<VersionProbe>(text).ok(),
        Format::Ron => ron::from_str::<VersionProbe>(text).ok(),
    };
    if let Some(found) = probe.map(|p| p.version) {
        if found > u64::from(TAP_VERSION) {
            return Err(TapError::TooNew {
                path: path.to_path_buf(),
                found,
            });
        }
        if found == 0 {
            return Err(TapError::UnknownVersion {
                path: path.to_path_buf(),
                found,
            });
        }
    }
    let app = match format {
        Format::Json => parse_json(text, path)?,
        Format::Ron => parse_ron(text, path)?,
    };
    if let Some((line, column, message)) = locate::silent_loss(text, format) {
        return Err(TapError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message,
        });
    }
    // Version 1 is the only one so far; an upgrade from older versions would go here.
    let problems: Vec<_> = app
        .envelope_problems_at()
        .into_iter()
        .map(
            |(at, problem)| match locate::path_position(text, format, &at) {
                (position, true) => (Some(position), problem),
                (_, false) => (None, problem),
            },
        )
        .collect();
    if !problems.is_empty() {
        return Err(TapError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(app)
}

/// The text of a tap read from `text` with `app`'s last service added, everything else as it was
/// written: `mktap --append` to a hand-edited `.tas` keeps its comments and layout. The new
/// service is written where the last one ends; the result must decode to `app` exactly, else
/// (an envelope that changed too, a layout this cannot follow) `None`, and the caller writes
/// the whole application anew.
pub fn with_last_service_appended(text: &str, format: Format, app: &Application) -> Option<String> {
    let service = app.services.last()?;
    let alone = Application {
        services: vec![service.clone()],
        ..Application::new(app.name.clone())
    };
    let generated = to_string(&alone, format).ok()?;
    let written = *locate::list_members(&generated, format, "services")?.first()?;
    let written = &written[locate::code_span(written)];
    // Slices of their text: where they start in it.
    let offset = |within: &str, part: &str| part.as_ptr() as usize - within.as_ptr() as usize;
    let indent_at = |within: &str, at: usize| {
        let line = within[..at].rsplit('\n').next().unwrap_or_default();
        line.len() - line.trim_start().len()
    };
    let list = locate::value_at(text, format, "services")?;
    let list = &list[locate::code_span(list)];
    let members = locate::list_members(text, format, "services")?;
    // Where the new service goes, at what depth, and with a comma before it or not.
    let (at, indent, comma) = match members.last() {
        Some(last) => {
            let code = locate::code_span(last);
            let start = offset(text, last) + code.start;
            let end = offset(text, last) + code.end;
            let after = &text[end..];
            let skipped = after.len() - after.trim_start().len();
            match after[skipped..].starts_with(',') {
                true => (end + skipped + 1, indent_at(text, start), ""),
                false => (end, indent_at(text, start), ","),
            }
        }
        // An empty list: just inside its `[`, one step deeper than the line it is on.
        None if list.starts_with('[') => {
            let open = offset(text, list);
            (open + 1, indent_at(text, open) + 4, "")
        }
        None => return None,
    };
    let written_indent = indent_at(&generated, offset(&generated, written));
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    // The new service's lines, moved to the depth of the members already there.
    let written = written
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let own = line.len() - line.trim_start().len();
            let depth = if i == 0 {
                indent
            } else {
                (own + indent).saturating_sub(written_indent)
            };
            format!("{}{}", " ".repeat(depth), line.trim())
        })
        .collect::<Vec<_>>()
        .join(newline);
    let closing = if members.is_empty() { "," } else { "" };
    // A comment that ends the line stays with the member it follows.
    let line = &text[at..text[at..].find('\n').map_or(text.len(), |n| at + n)];
    let line = line.strip_suffix('\r').unwrap_or(line);
    let service_at = if locate::code_span(line).is_empty() {
        at + line.len()
    } else {
        at
    };
    let spliced = format!(
        "{}{comma}{}{newline}{written}{closing}{}",
        &text[..at],
        &text[at..service_at],
        &text[service_at..]
    );
    (parse(&spliced, format, Path::new("")).ok()? == *app).then_some(spliced)
}

/// `FILE:LINE:COLUMN: problem` for each problem (`FILE: problem` where its place is unknown),
/// as syntax errors are written, joined by `; `.
fn located(path: &Path, problems: &[(Option<(usize, usize)>, String)]) -> String {
    problems
        .iter()
        .map(|(at, problem)| match at {
            Some((line, column)) => format!("{}:{line}:{column}: {problem}", path.display()),
            None => format!("{}: {problem}", path.display()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn with_field(field: &serde_path_to_error::Path, message: String) -> String {
    let field = field.to_string();
    // `?` is serde_path_to_error's word for a place it could not name (a map key that is no
    // string): the path stops before it.
    let field = field.trim_end_matches('?').trim_end_matches('.');
    if field == "." || field.is_empty() {
        message
    } else {
        format!("{field}: {message}")
    }
}

/// Where a value the decoder refused starts, found by its path: the decoder's own position is
/// where it stopped reading, after the value.
fn value_position(
    text: &str,
    format: Format,
    field: &serde_path_to_error::Path,
) -> Option<(usize, usize)> {
    match locate::path_position(text, format, &field.to_string()) {
        (at, true) => Some(at),
        (_, false) => None,
    }
}

fn parse_json(text: &str, path: &Path) -> Result<Application, TapError> {
    let syntax = |e: &serde_json::Error, field: Option<&serde_path_to_error::Path>| {
        let (mut line, mut column) = (e.line(), e.column());
        if let Some(at) = field
            .filter(|_| e.classify() == serde_json::error::Category::Data)
            .and_then(|field| value_position(text, Format::Json, field))
        {
            (line, column) = at;
        }
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        TapError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: match field {
                Some(field) => with_field(field, message),
                None => message,
            },
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let app =
        serde_path_to_error::deserialize(&mut de).map_err(|e| syntax(e.inner(), Some(e.path())))?;
    de.end().map_err(|e| syntax(&e, None))?;
    Ok(app)
}

fn parse_ron(text: &str, path: &Path) -> Result<Application, TapError> {
    let syntax = |e: ron::error::SpannedError, field: Option<&serde_path_to_error::Path>| {
        use ron::error::Error as E;
        // ron's own wording suggests changing its options, which a user of taphost cannot.
        let message = match e.code {
            ron::error::Error::ExceededRecursionLimit => "nested too deeply".to_string(),
            ref code => code.to_string(),
        };
        let refused_value = matches!(
            e.code,
            E::Message(_)
                | E::InvalidValueForType { .. }
                | E::ExpectedDifferentLength { .. }
                | E::NoSuchEnumVariant { .. }
        );
        let (line, column) = field
            .filter(|_| refused_value)
            .and_then(|field| value_position(text, Format::Ron, field))
            .unwrap_or((e.span.start.line, e.span.start.col));
        TapError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: match field {
                Some(field) => with_field(field, message),
                None => message,
            },
        }
    };
    let mut de = ron::Deserializer::from_str(text).map_err(|e| syntax(e, None))?;
    let app = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().clone();
        syntax(de.span_error(e.into_inner()), Some(&field))
    })?;
    de.end().map_err(|e| syntax(de.span_error(e), None))?;
    Ok(app)
}

/// Encodes an application: pretty JSON, or RON laid out for hand editing.
pub fn to_string(app: &Application, format: Format) -> Result<String, TapError> {
    let encode = |message: String| TapError::Encode { format, message };
    let mut text = match format {
        Format::Json => serde_json::to_string_pretty(app).map_err(|e| encode(e.to_string()))?,
        Format::Ron => {
            let pretty = ron::ser::PrettyConfig::new()
                .struct_names(false)
                .indentor("    ")
                .compact_arrays(true);
            ron::ser::to_string_pretty(app, pretty).map_err(|e| encode(e.to_string()))?
        }
    };
    text.push('\n');
    Ok(text)
}

/// Writes an application atomically. `private` taps (those holding secrets) are mode 0600,
/// others 0644, both less the umask.
pub fn save(app: &Application, path: &Path, format: Format, private: bool) -> Result<(), TapError> {
    let text = to_string(app, format)?;
    write_atomic(path, text.as_bytes(), if private { 0o600 } else { 0o644 }).map_err(|source| {
        TapError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Writes an application encrypted under `key` (see [`crate::crypt`]), atomically, mode 0600.
pub fn save_encrypted(
    app: &Application,
    path: &Path,
    format: Format,
    key: &Key,
) -> Result<(), TapError> {
    let text = Zeroizing::new(to_string(app, format)?);
    write_sealed(path, text.as_bytes(), key)
}

/// Seals tap text as it is (a hand-edited `.tas` keeps its comments) and writes it, mode 0600.
pub fn write_sealed(path: &Path, text: &[u8], key: &Key) -> Result<(), TapError> {
    let sealed = crypt::seal(key, text).map_err(|source| TapError::Crypt {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &sealed, 0o600).map_err(|source| TapError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes plainly or encrypted, as `key` says: what a shutdown or admin save needs.
pub fn save_as(
    app: &Application,
    path: &Path,
    format: Format,
    key: Option<&Key>,
    private: bool,
) -> Result<(), TapError> {
    match key {
        Some(key) => save_encrypted(app, path, format, key),
        None => save(app, path, format, private),
    }
}

/// Temp file in the same directory, fsync, rename over the target, fsync the directory: a
/// reader sees the old file or the new one, never a mix, even across a power cut.
///
/// Only a regular file (or nothing) is replaced: the rename would put a regular file in place
/// of a device, pipe or socket (as root, `-o /dev/null` would have replaced the machine's
/// /dev/null), so a path that leads to one is refused. A symlink is replaced itself, never
/// written through: where the run directory is shared, following it would invite symlink
/// attacks on the shutdown save.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    if let Ok(meta) = fs::metadata(path) {
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            ));
        }
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (a device, pipe or socket); taps are written to regular files only",
            ));
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    // Created with `mode`, so the process's umask still applies (a daemon's 077 included).
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ServiceSpec;

    fn sample() -> Application {
        let mut app = Application::new("web");
        app.uid = Some(crate::Principal::Name("www-data".into()));
        app.gid = Some(crate::Principal::Id(33));
        app.services.push(ServiceSpec {
            name: "web".into(),
            plugin: "web".into(),
            listen: vec!["tcp:7777:interface=127.0.0.1".parse().expect("endpoint")],
            config: serde_json::json!({
                "path": "/var/www", "index": ["index.html", "index.htm"],
                "n": 3, "neg": -4, "f": 1.5, "t": true, "nothing": null, "nested": {"a": [1, {"b": "c"}]}
            }),
            state: Some(serde_json::json!({"hits": [1, 2]})),
        });
        app
    }

    #[test]
    fn round_trips_in_both_formats() {
        let app = sample();
        for format in [Format::Json, Format::Ron] {
            let text = to_string(&app, format).expect("encode");
            let back = parse(&text, format, Path::new("x")).expect("decode");
            assert_eq!(back, app, "{format} round trip of:\n{text}");
            assert_eq!(Format::detect(Path::new("x.bin"), &text), format);
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let bad_json = "{\n  \"version\": 1,\n  \"name\": \"web\",,\n}";
        match parse(bad_json, Format::Json, Path::new("web.tap")) {
            Err(e @ TapError::Syntax { line: 3, .. }) => {
                assert!(e.to_string().starts_with("web.tap:3:"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let bad_ron = "(\n    version: 1,\n    name: \"web\"\n    services: [],\n)";
        match parse(bad_ron, Format::Ron, Path::new("web.tas")) {
            Err(e @ TapError::Syntax { line: 4, .. }) => {
                assert!(e.to_string().starts_with("web.tas:4:"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let text = r#"{"version": 1, "name": "web", "services": [{"name": "web", "plugin": "web", "listen": ["tcp:http"]}]}"#;
        let e = parse(text, Format::Json, Path::new("a.tap")).expect_err("bad endpoint");
        let msg = e.to_string();
        assert!(msg.contains("services[0].listen[0]"), "{msg}");
        assert!(msg.contains("port 'http'"), "{msg}");

        let text = "(version: 1, name: \"web\", colour: \"blue\")";
        let msg = parse(text, Format::Ron, Path::new("a.tas"))
            .expect_err("unknown")
            .to_string();
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.starts_with("a.tas:1:"), "{msg}");
    }

    #[test]
    fn unnamed_places_and_deep_nesting_read_plainly() {
        let text = "(version: 1, name: \"web\", services: [(name: \"w\", plugin: \"web\", config: {5: \"x\"})])";
        let msg = parse(text, Format::Ron, Path::new("k.tas"))
            .expect_err("a key that is no string")
            .to_string();
        assert!(!msg.contains('?'), "{msg}");
        let deep = format!("(version: 1, name: \"web\", services: [(name: \"w\", plugin: \"web\", config: {}1{})])", "[".repeat(200), "]".repeat(200));
        let msg = parse(&deep, Format::Ron, Path::new("d.tas"))
            .expect_err("too deep")
            .to_string();
        assert!(
            msg.contains("nested too deeply") && !msg.contains("ron::"),
            "{msg}"
        );
    }

    #[test]
    fn versions() {
        let newer = r#"{"version": 2, "name": "web", "services": [], "future": true}"#;
        let msg = parse(newer, Format::Json, Path::new("n.tap"))
            .expect_err("newer")
            .to_string();
        assert!(msg.contains("version 2 is newer"), "{msg}");
        let zero = "(version: 0, name: \"web\")";
        assert!(matches!(
            parse(zero, Format::Ron, Path::new("z.tas")),
            Err(TapError::UnknownVersion { found: 0, .. })
        ));
    }

    #[test]
    fn an_endless_file_is_refused_without_reading_it_all() {
        match load(Path::new("/dev/zero")) {
            Err(TapError::NotATap { reason, .. }) => assert!(reason.contains("larger"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        for format in [Format::Json, Format::Ron] {
            let path = dir.path().join(format!("bom.{}", format.extension()));
            let text = to_string(&sample(), format).expect("encode");
            fs::write(&path, format!("\u{feff}{text}")).expect("write");
            let (app, found) = load(&path).expect("loads");
            assert_eq!((app, found), (sample(), format));
        }
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let text = to_string(&sample(), Format::Json).expect("encode") + "}";
        assert!(parse(&text, Format::Json, Path::new("t.tap")).is_err());
        let text = to_string(&sample(), Format::Ron).expect("encode") + ")";
        assert!(parse(&text, Format::Ron, Path::new("t.tas")).is_err());
    }

    #[test]
    fn atomic_save_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.tap");
        save(&sample(), &path, Format::Json, true).expect("save");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        save(&sample(), &path, Format::Json, false).expect("save again");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("web.tap")]);
        let (app, format) = load(&path).expect("load");
        assert_eq!((app, format), (sample(), Format::Json));
    }

    #[test]
    fn encrypted_taps_round_trip_and_name_the_file_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Key::generate(b"hunter2").expect("key");
        for format in [Format::Json, Format::Ron] {
            let path = dir
                .path()
                .join(format!("web.{}", format.encrypted_extension()));
            save_encrypted(&sample(), &path, format, &key).expect("save");
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let (app, found, _) = load_encrypted(&path, b"hunter2").expect("load");
            assert_eq!((app, found), (sample(), format));
            let e = load(&path).expect_err("needs a passphrase");
            assert!(matches!(e, TapError::Encrypted { .. }), "{e}");
            let e = load_encrypted(&path, b"hunter3").expect_err("wrong passphrase");
            let msg = e.to_string();
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            assert!(msg.contains("wrong passphrase"), "{msg}");
        }
        let plain = dir.path().join("plain.tap");
        save(&sample(), &plain, Format::Json, false).expect("save");
        assert!(matches!(
            load_encrypted(&plain, b"x"),
            Err(TapError::NotEncrypted { .. })
        ));
    }

    #[test]
    fn non_text_and_directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin.tap");
        fs::write(&bin, b"{\n\xff\xfe").expect("write");
        let msg = load(&bin).expect_err("binary").to_string();
        assert!(msg.contains("line 2 is not UTF-8"), "{msg}");
        assert!(load(dir.path())
            .expect_err("dir")
            .to_string()
            .contains("directory"));
        let missing = load(&dir.path().join("missing.tap"))
            .expect_err("missing")
            .to_string();
        assert!(
            msg.contains("bin.tap") && missing.contains("missing.tap"),
            "{missing}"
        );
    }
}
