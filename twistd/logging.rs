//! twistd's log: Twisted's line format, and a sink that is a file (rotated by size, on SIGUSR1,
//! reopened on SIGHUP), standard output, or syslog.
//!
//! Lines read `2026-11-20T12:00:00+0000 [web] message`: the bracket names the service whose span
//! the event is in, `-` outside any. A log file is opened only once the process is in its run
//! directory (after chroot and the fork) and before privileges are dropped; lines logged before
//! that wait in memory and are written first. Nothing here starts a thread.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::unistd::{Gid, Uid};
use syslog::{Facility, Formatter3164, LoggerBackend};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Lines kept while no destination is open; past this they are dropped (start-up is short).
const BUFFER_LIMIT: usize = 1 << 20;

/// Where the log goes, as the command line said.
#[derive(Debug, Clone)]
pub enum Destination {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate when a line would take the file past this many bytes; 0 never.
        max_size: u64,
        /// Rotated files kept: `.1` (newest) to `.N`.
        max_files: usize,
    },
    Syslog {
        prefix: String,
        facility: Facility,
    },
}

enum State {
    Buffer(Vec<u8>),
    Stdout,
    File(RotatingFile),
    Syslog(syslog::Logger<LoggerBackend, Formatter3164>),
}

/// The shared log destination behind the subscriber, and the handle that changes its filter.
#[derive(Clone)]
pub struct Sink {
    state: Arc<Mutex<State>>,
    filter: FilterHandle,
}

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a usable state: keep logging.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a file destination and writes what was buffered into it. `owner` is the user the
    /// process will become: the file is handed to it so that rotation keeps working.
    pub fn open_file(
        &self,
        path: &Path,
        max_size: u64,
        max_files: usize,
        owner: Option<(Uid, Gid)>,
    ) -> io::Result<()> {
        let mut file = RotatingFile::open(path, max_size, max_files, owner)?;
        let mut state = self.lock();
        if let State::Buffer(buffered) = &*state {
            file.write_all(buffered)?;
        }
        *state = State::File(file);
        Ok(())
    }

    /// Opens the file if lines are still waiting for it (start-up failed before its time).
    pub fn open_file_if_pending(
        &self,
        path: &Path,
        max_size: u64,
        max_files: usize,
    ) -> io::Result<()> {
        if matches!(&*self.lock(), State::Buffer(_)) {
            self.open_file(path, max_size, max_files, None)?;
        }
        Ok(())
    }

    /// A function that replaces the log filter (`info`, `debug`, `warn,web=debug`), for the
    /// admin shell's `log level`.
    pub fn level_setter(&self) -> host::control::LogLevelSetter {
        let handle = self.filter.clone();
        Box::new(move |level: &str| {
            let filter =
                EnvFilter::try_new(level).map_err(|e| format!("bad log level '{level}': {e}"))?;
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log level: {e}"))?;
            tracing::info!("log level is now {level}");
            Ok(())
        })
    }

    /// SIGUSR1: rotate the file now.
    pub fn rotate(&self) -> io::Result<()> {
        match &mut *self.lock() {
            State::File(file) => file.rotate(),
            _ => Ok(()),
        }
    }

    /// SIGHUP: reopen the file by name, for logrotate's move-then-signal.
    pub fn reopen(&self) -> io::Result<()> {
        match &mut *self.lock() {
            State::File(file) => file.reopen(),
            _ => Ok(()),
        }
    }
}

/// Installs the global subscriber. Standard output and syslog are open at once; a file waits
/// for [`Sink::open_file`].
pub fn install(destination: &Destination) -> Result<Sink, String> {
    let (state, timestamps) = match destination {
        Destination::Stdout => (State::Stdout, true),
        Destination::File { .. } => (State::Buffer(Vec::new()), true),
        Destination::Syslog { prefix, facility } => {
            let formatter = Formatter3164 {
                facility: *facility,
                hostname: None,
                process: prefix.clone(),
                pid: std::process::id(),
            };
            // The socket is connected now, before any chroot hides /dev/log.
            let logger = match std::env::var_os("TAPHOST_SYSLOG_SOCKET") {
                Some(path) => syslog::unix_custom(formatter, &path).map_err(|e| {
                    format!("cannot reach syslog at {}: {e}", Path::new(&path).display())
                }),
                // The places the syslog crate tries, in its order.
                None => syslog::unix(formatter).map_err(|e| {
                    format!("cannot reach syslog at /dev/log, /var/run/syslog or /var/run/log: {e}")
                }),
            }?;
            // syslog stamps its own time.
            (State::Syslog(logger), false)
        }
    };
    // Checked in `run` (host::control::check_log_filter); blanks after commas are for reading.
    let filter = std::env::var("TAPHOST_LOG")
        .ok()
        .map(|f| f.split(',').map(str::trim).collect::<Vec<_>>().join(","))
        .filter(|f| !f.is_empty())
        .map_or_else(|| EnvFilter::new("info"), EnvFilter::new);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let sink = Sink {
        state: Arc::new(Mutex::new(state)),
        filter: handle,
    };
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(LineFormat { timestamps })
        .with_writer(sink.clone());
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    Ok(sink)
}

/// One event as one line: time, `[service]`, level word for warnings and errors, message.
struct LineFormat {
    timestamps: bool,
}

const TIME_FORMAT: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+0000");

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timestamps {
            let now = time::OffsetDateTime::now_utc();
            write!(
                writer,
                "{} ",
                now.format(TIME_FORMAT).map_err(|_| fmt::Error)?
            )?;
        }
        // The service span's fields are formatted as `name=web plugin=web`; its name is the
        // bracket, as Twisted's "system" was.
        let system = ctx.event_scope().and_then(|scope| {
            scope.from_root().find_map(|span| {
                let extensions = span.extensions();
                let fields = extensions.get::<FormattedFields<N>>()?;
                fields
                    .fields
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("name="))
                    .map(str::to_string)
            })
        });
        write!(writer, "[{}] ", system.as_deref().unwrap_or("-"))?;
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("error: ")?,
            Level::WARN => writer.write_str("warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// What the formatter writes one event through.
pub struct SinkWriter {
    sink: Sink,
    level: Level,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter {
            sink: self.clone(),
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SinkWriter {
        SinkWriter {
            sink: self.clone(),
            level: *meta.level(),
        }
    }
}

impl Write for SinkWriter {
    /// The formatter hands over a whole line in one call.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        match &mut *self.sink.lock() {
            State::Buffer(buffer) => {
                if buffer.len() + line.len() <= BUFFER_LIMIT {
                    buffer.extend_from_slice(line);
                }
            }
            State::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()?;
            }
            State::File(file) => file.write_all(line)?,
            State::Syslog(logger) => {
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end();
                // A lost syslog line must not become an error in the code that logged it.
                let _ = match self.level {
                    Level::ERROR => logger.err(text),
                    Level::WARN => logger.warning(text),
                    Level::INFO => logger.info(text),
                    _ => logger.debug(text),
                };
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A log file that rotates by size into `path.1` .. `path.N`.
struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: usize,
}

impl RotatingFile {
    fn open(
        path: &Path,
        max_size: u64,
        max_files: usize,
        owner: Option<(Uid, Gid)>,
    ) -> io::Result<Self> {
        let file = open_append(path)?;
        if let Some((uid, gid)) = owner {
            // Created as root, used after the drop: the new user must be able to rotate it.
            nix::unistd::fchown(&file, Some(uid), Some(gid)).map_err(io::Error::from)?;
        }
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        if self.max_size > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            if let Err(e) = self.rotate() {
                // Keep logging into the full file rather than lose lines.
                let _ = writeln!(self.file, "log rotation failed: {e}");
            }
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `path.N-1` becomes `path.N` (the oldest is dropped), ..., `path` becomes `path.1`.
    fn rotate(&mut self) -> io::Result<()> {
        // Deleted or moved away since it was opened: there is nothing to shift (doing so
        // would push the old files towards deletion with nothing new in front), only a new
        // file to open, as Twisted's rotate does nothing then.
        if matches!(fs::metadata(&self.path), Err(e) if e.kind() == io::ErrorKind::NotFound) {
            return self.reopen();
        }
        if self.max_files == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files).rev() {
            match fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.numbered(1))?;
        self.reopen()
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.log");
        let mut file = RotatingFile::open(&path, 100, 3, None).expect("open");
        for i in 0..40 {
            file.write_all(format!("line {i:04} of the log, padded out\n").as_bytes())
                .expect("write");
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["t.log", "t.log.1", "t.log.2", "t.log.3"]);
        for name in &names {
            let len = fs::metadata(dir.path().join(name)).expect("meta").len();
            assert!(len <= 100, "{name} is {len} bytes");
        }
        let newest = fs::read_to_string(&path).expect("read");
        assert!(newest.contains("line 0039"));
        let older = fs::read_to_string(dir.path().join("t.log.1")).expect("read");
        assert!(!older.contains("line 0039") && older.contains("line 003"));
    }
}
