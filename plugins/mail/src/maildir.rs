//! Maildirs: the layout, file names, durable delivery, and reading a mailbox for POP3.
//!
//! A Maildir is a directory with `tmp`, `new` and `cur` (mode 0700; messages 0600). Delivery
//! writes the message under `tmp/`, flushes it to disk, renames it into `new/` and fsyncs
//! `new/`, so a crash leaves either nothing or the whole message in `new/`, never part of one.
//! Files hold LF line endings, as mutt, Dovecot and Python's `mailbox` expect.
//!
//! The [`Deliverer`] does that work off the async workers, so they never block on the disk, in
//! one of two ways ([`Flush`], `--fsync`):
//! - `filesystem` (the default): two threads take the deliveries in groups, one syncfs flushes
//!   all the files of a group, one fsync each `new/` they went into ([`Committer`],
//!   [`Publisher`]): a few flushes per group instead of two per message;
//! - `per-file`: each delivery writes and fsyncs its own files on the blocking pool, and
//!   deliveries into one directory share its fsync ([`DirSync`]), as Postfix and Dovecot do.

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Creates a Maildir (and its parents) if it is missing. A new one is flushed to disk, parent
/// entry included, so that messages acknowledged into it cannot vanish with their directory.
/// Its `tmp/`, `new/` and `cur/` must be writable by this process (as it runs now, after
/// dropping privileges): a start that could not deliver fails here, not at each message. An
/// error names the directory at fault.
pub fn ensure(path: &Path) -> io::Result<()> {
    let subs = ["tmp", "new", "cur"];
    if !subs.iter().all(|sub| path.join(sub).is_dir()) {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in subs {
            let dir = path.join(sub);
            builder
                .create(&dir)
                .map_err(|e| match not_a_directory(&dir) {
                    Some(file) => io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: exists and is not a directory", file.display()),
                    ),
                    None => at(&dir, e),
                })?;
        }
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|e| at(path, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| at(parent, e))?;
        }
    }
    for sub in subs {
        let dir = path.join(sub);
        rustix::fs::accessat(
            rustix::fs::CWD,
            &dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            AtFlags::EACCESS,
        )
        .map_err(|e| {
            let e = io::Error::from(e);
            at(
                &dir,
                io::Error::new(e.kind(), format!("cannot write there: {e}")),
            )
        })?;
    }
    Ok(())
}

/// An error about `path`, naming it (of the same kind).
fn at(path: &Path, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The outermost ancestor of `dir` (or itself) that exists and is not a directory.
fn not_a_directory(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|p| !p.as_os_str().is_empty() && p.exists() && !p.is_dir())
        .last()
        .map(Path::to_path_buf)
}

/// How old a file in `tmp/` must be before [`clean_tmp`] removes it: the Maildir
/// specification's 36 hours, long past any delivery that could still be writing it.
pub const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);

/// Removes files in `tmp/` last modified more than `max_age` before `now` (what a crash
/// mid-delivery leaves behind); returns how many went.
pub fn clean_tmp(maildir: &Path, now: SystemTime, max_age: Duration) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(maildir.join("tmp"))? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > max_age);
        if meta.is_file() && stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deliveries made by this process, for unique names.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A host name as it goes into unique names: `/` and `:` escaped, as the Maildir specification
/// says.
fn escape_host(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// A standard Maildir name: `SECONDS.M<usec>P<pid>Q<n>.HOST,S=<size>,W=<size with CRLF>`.
/// `S=` and `W=` are Dovecot's: the file size and the size as POP3 counts it (CRLF lines),
/// which saves reading every message at login. The host name has `/` and `:` escaped as the
/// Maildir specification says.
pub fn unique_name(hostname: &str, size: usize, crlf_size: usize) -> String {
    name_for(&escape_host(hostname), std::process::id(), size, crlf_size)
}

/// [`unique_name`] with the host already escaped and the process id at hand.
fn name_for(host: &str, pid: u32, size: usize, crlf_size: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{pid}Q{}.{host},S={size},W={crlf_size}",
        now.as_secs(),
        now.subsec_micros(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
    )
}

/// How a delivery reaches stable storage before its 250 (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Flush {
    /// Deliveries are taken in groups by two threads ([`Committer`], [`Publisher`]): the
    /// files of a group are written under `tmp/` and flushed by one syncfs(2) (data, inodes
    /// and directory entries), then renamed into `new/`, and each `new/` is fsynced once.
    /// syncfs also writes whatever else is dirty on that file system, so while much else is
    /// ([`OTHERS_DIRTY_LIMIT`]) a group's files are fsynced each, several at once. Needs Linux
    /// 5.8 or later (syncfs reports write-back errors since); older kernels get `per-file`.
    #[default]
    #[value(
        help = "one syncfs(2) flushes a group of deliveries (Linux 5.8 or later, else per-file)"
    )]
    Filesystem,
    /// fsync(2) of every message file, then of `new/`, as Postfix and Dovecot do; concurrent
    /// deliveries into one directory share its fsync.
    #[value(help = "fsync(2) of each message file, then of new/, as Postfix and Dovecot")]
    PerFile,
}

/// The handle sessions deliver through; clones share one way of flushing: the [`Committer`]
/// threads ([`Flush::Filesystem`]), or else the [`DirSync`] ([`Flush::PerFile`]).
#[derive(Debug, Clone)]
pub struct Deliverer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    names: Namer,
    /// With [`Flush::Filesystem`]: deliveries queued for the committer thread, which ends
    /// when the last sender goes.
    committer: Option<mpsc::Sender<Job>>,
    /// The directory flushes of [`Flush::PerFile`] (unused with a committer).
    dirs: DirSync,
}

/// What unique names are made of, worked out once.
#[derive(Debug, Clone)]
struct Namer {
    /// The host name, escaped.
    host: String,
    /// This process's id (glibc makes every `getpid` a system call).
    pid: u32,
}

/// A Maildir's `tmp/` and `new/`, held open while deliveries go through them: files are
/// created, renamed and removed relative to these handles, so each costs one lookup in its
/// directory instead of a walk of the whole path. The [`Committer`] opens them once per round
/// for all of that round's files.
#[derive(Debug)]
struct Dirs {
    tmp: OwnedFd,
    new: OwnedFd,
    /// The path of `new/`: what [`DirSync`] groups flushes by.
    new_path: PathBuf,
}

impl Dirs {
    fn open(maildir: &Path) -> io::Result<Dirs> {
        let open = |path: &Path| {
            rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let (tmp_path, new_path) = (maildir.join("tmp"), maildir.join("new"));
        Ok(Dirs {
            tmp: open(&tmp_path).map_err(|e| at(&tmp_path, e))?,
            new: open(&new_path).map_err(|e| at(&new_path, e))?,
            new_path,
        })
    }
}

/// A message's file, written under `tmp/`, on its way to `new/`.
#[derive(Debug)]
struct Placed {
    dirs: Arc<Dirs>,
    name: String,
    /// The page cache the file takes, in bytes.
    pages: u64,
}

impl Placed {
    fn rename(&self) -> io::Result<()> {
        rustix::fs::renameat(&self.dirs.tmp, &self.name, &self.dirs.new, &self.name)
            .map_err(|e| at(&self.dirs.new_path, e))
    }

    /// Removes the file from `tmp/` (`false`) or `new/` (`true`), on the way back from a
    /// failure (one that is already gone is no matter).
    fn remove(&self, renamed: bool) {
        let dir = if renamed {
            &self.dirs.new
        } else {
            &self.dirs.tmp
        };
        let _ = rustix::fs::unlinkat(dir, &self.name, AtFlags::empty());
    }
}

/// Takes back the files of a failed delivery (see [`Placed::remove`]).
fn remove_all<'a>(files: impl IntoIterator<Item = &'a Placed>, renamed: bool) {
    files.into_iter().for_each(|file| file.remove(renamed));
}

/// A delivery for the committer thread.
struct Job {
    targets: Vec<(PathBuf, Arc<Vec<u8>>)>,
    done: oneshot::Sender<io::Result<()>>,
}

impl Deliverer {
    /// A deliverer flushing as `flush` says (`Filesystem` starts its thread here; if the
    /// kernel's syncfs cannot report errors, or the thread cannot start, it is `PerFile`).
    pub fn new(hostname: &str, flush: Flush) -> Deliverer {
        let names = Namer {
            host: escape_host(hostname),
            pid: std::process::id(),
        };
        let committer = match flush {
            Flush::Filesystem if !syncfs_reports_errors() => {
                tracing::warn!(
                    "--fsync filesystem needs Linux 5.8 or later (syncfs reports write-back \
                     errors since): flushing each file instead"
                );
                None
            }
            Flush::Filesystem => match start_committer(&names, OTHERS_DIRTY_LIMIT) {
                Ok(jobs) => Some(jobs),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the delivery threads ({e}): flushing each file instead"
                    );
                    None
                }
            },
            Flush::PerFile => None,
        };
        Deliverer {
            shared: Arc::new(Shared {
                names,
                committer,
                dirs: DirSync::default(),
            }),
        }
    }

    /// Delivers `content` (LF line endings) into each Maildir's `new/`; returns once it is
    /// flushed to disk there, or with the error that stopped it (then it is in none of them).
    pub async fn deliver(&self, maildirs: Vec<PathBuf>, content: Vec<u8>) -> io::Result<()> {
        let content = Arc::new(content);
        self.deliver_each(maildirs.into_iter().map(|m| (m, content.clone())).collect())
            .await
    }

    /// Like [`Deliverer::deliver`], with its own content for each Maildir; all or none.
    ///
    /// If the caller goes away midway, the delivery still finishes (or is taken back) on its
    /// thread; at worst a file is left in `tmp/` for [`clean_tmp`].
    pub async fn deliver_each(&self, targets: Vec<(PathBuf, Arc<Vec<u8>>)>) -> io::Result<()> {
        let (done, outcome) = oneshot::channel();
        if let Some(jobs) = &self.shared.committer {
            if jobs.send(Job { targets, done }).is_err() {
                return Err(io::Error::other("the delivery thread is gone"));
            }
            return finished(outcome).await;
        }
        if targets.len() < 2 {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || {
                match targets
                    .iter()
                    .map(|(maildir, content)| shared.names.place(maildir, content, true))
                    .collect::<io::Result<Vec<_>>>()
                {
                    Ok(placed) => shared.publish(placed, done),
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                }
            });
            return finished(outcome).await;
        }
        // Several files: each is written and flushed on its own thread, so their flushes
        // overlap instead of queueing one behind the other.
        let writes: Vec<_> = targets
            .into_iter()
            .map(|(maildir, content)| {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || shared.names.place(&maildir, &content, true))
            })
            .collect();
        let mut placed = Vec::with_capacity(writes.len());
        let mut failure = None;
        for write in writes {
            match write.await {
                Ok(Ok(file)) => placed.push(file),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(io::Error::other(format!("delivery task failed: {e}")));
                }
            }
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || match failure {
            Some(e) => {
                remove_all(&placed, false);
                let _ = done.send(Err(e));
            }
            None => shared.publish(placed, done),
        });
        finished(outcome).await
    }
}

/// The outcome a delivery's blocking work sends back; its end without one (a panic, or the
/// runtime shutting down before it ran) is an error.
async fn finished(outcome: oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
    outcome
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the delivery was abandoned")))
}

/// A copy of an error for each delivery it failed.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Namer {
    /// Writes `content` into a new file under `maildir/tmp/`, fsynced if `sync`; a failure
    /// leaves nothing behind.
    fn place(&self, maildir: &Path, content: &[u8], sync: bool) -> io::Result<Placed> {
        self.place_in(&Arc::new(Dirs::open(maildir)?), content, sync)
    }

    /// [`Namer::place`] into a Maildir already open.
    fn place_in(&self, dirs: &Arc<Dirs>, content: &[u8], sync: bool) -> io::Result<Placed> {
        let lines = memchr::memchr_iter(b'\n', content).count();
        let name = name_for(&self.host, self.pid, content.len(), content.len() + lines);
        let file = rustix::fs::openat(
            &dirs.tmp,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| at(&dirs.new_path.with_file_name("tmp"), e))?;
        let placed = Placed {
            dirs: dirs.clone(),
            name,
            pages: (content.len() as u64).next_multiple_of(4096),
        };
        let mut file = File::from(file);
        let written = file
            .write_all(content)
            .and_then(|()| if sync { file.sync_all() } else { Ok(()) });
        match written {
            Ok(()) => Ok(placed),
            Err(e) => {
                placed.remove(false);
                Err(e)
            }
        }
    }

    /// Writes every target's file under its `tmp/`, not flushed; all or none (a failure
    /// removes what was written). `open` holds the Maildirs opened so far this round.
    fn write_all(
        &self,
        targets: &[(PathBuf, Arc<Vec<u8>>)],
        open: &mut HashMap<PathBuf, Arc<Dirs>>,
    ) -> io::Result<Vec<Placed>> {
        let mut placed = Vec::with_capacity(targets.len());
        for (maildir, content) in targets {
            let dirs = match open.get(maildir) {
                Some(dirs) => Ok(dirs.clone()),
                None => Dirs::open(maildir).map(|dirs| {
                    let dirs = Arc::new(dirs);
                    open.insert(maildir.clone(), dirs.clone());
                    dirs
                }),
            };
            match dirs.and_then(|dirs| self.place_in(&dirs, content, false)) {
                Ok(file) => placed.push(file),
                Err(e) => {
                    remove_all(&placed, false);
                    return Err(e);
                }
            }
        }
        Ok(placed)
    }
}

/// Renames each file from `tmp/` into `new/`; on a failure, every file is taken back.
fn rename_all(placed: &[Placed]) -> io::Result<()> {
    for (renamed, file) in placed.iter().enumerate() {
        if let Err(e) = file.rename() {
            remove_all(&placed[..renamed], true);
            remove_all(&placed[renamed..], false);
            return Err(e);
        }
    }
    Ok(())
}

impl Shared {
    /// Renames flushed files into `new/`, then has each `new/` fsynced once; `done` hears the
    /// outcome. On any failure every file is taken back (the client will send the message
    /// again).
    fn publish(&self, placed: Vec<Placed>, done: oneshot::Sender<io::Result<()>>) {
        if let Err(e) = rename_all(&placed) {
            let _ = done.send(Err(e));
            return;
        }
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(placed.len());
        for file in &placed {
            if !dirs.contains(&file.dirs.new_path) {
                dirs.push(file.dirs.new_path.clone());
            }
        }
        self.dirs.sync(
            dirs,
            Ticket {
                left: 0,
                failure: None,
                files: placed,
                done,
            },
        );
    }
}

/// Starts the [`Committer`] and [`Publisher`] threads; each ends when its queue's last sender
/// goes (the publisher's is the committer's).
fn start_committer(names: &Namer, dirty_limit: u64) -> io::Result<mpsc::Sender<Job>> {
    let (published, publisher_queue) = mpsc::channel();
    std::thread::Builder::new()
        .name("maildir-publish".into())
        .spawn(move || {
            batch();
            Publisher::run(publisher_queue)
        })?;
    let (jobs, queue) = mpsc::channel();
    let committer = Committer {
        names: names.clone(),
        filesystems: HashMap::new(),
        dirty_limit,
        dirty_checked: None,
        slow_syncfs: false,
        publisher: published,
    };
    std::thread::Builder::new()
        .name("maildir-flush".into())
        .spawn(move || {
            batch();
            committer.run(queue)
        })?;
    Ok(jobs)
}

/// Both threads run as `SCHED_BATCH` ([`host::sched::batch_this_thread`]): when the disk
/// finishes a write they wait for their turn on the CPU instead of taking it from the
/// sessions. With the server on one CPU (1 KiB messages, 20 sessions of smtp-source) that
/// gave 15,131 instead of 14,529 messages a second (medians of three interleaved runs) and
/// 53 instead of 57 us of CPU per message: the clients were waiting for the sessions' replies
/// more than for the flushes, and a round that starts a little later is only larger.
fn batch() {
    if let Err(e) = host::sched::batch_this_thread() {
        tracing::debug!("delivery thread stays in the normal policy: {e}");
    }
}

/// Whether this kernel's syncfs(2) reports write-back errors: Linux 5.8 and later (before, it
/// returned success after a failed write, which would acknowledge a message that is not on
/// disk).
fn syncfs_reports_errors() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (5, 8)
}

/// From this much dirty page cache not of its own (`Dirty` + `Writeback` in /proc/meminfo),
/// the committer flushes a group file by file: syncfs would first write all of it (with a
/// build writing to the same file system, a syncfs took 8 ms here instead of 0.2).
const OTHERS_DIRTY_LIMIT: u64 = 4 << 20;

/// The files of a group's deliveries, each with the sender its delivery answers through.
type Group = Vec<Delivery>;
type Delivery = (Vec<Placed>, oneshot::Sender<io::Result<()>>);

/// The first of the two threads of [`Flush::Filesystem`]: it takes every delivery queued
/// since its last round, writes their files under `tmp/`, flushes them all at once
/// ([`Committer::flush`]), and hands them to the [`Publisher`], which renames them into `new/`,
/// fsyncs those directories, and answers. So a file is on disk before its name is in `new/`,
/// as with per-file fsyncs, and the publisher's directory fsyncs for one round overlap the
/// committer's flush of the next.
///
/// While it waits for the disk, sessions go on and queue the next round's deliveries, so
/// rounds grow with the load (group commit, as databases do), and the sessions hear back with
/// one wake-up per round, not one per message.
struct Committer {
    names: Namer,
    /// Each file system deliveries went to, by device number.
    filesystems: HashMap<u64, Filesystem>,
    /// [`OTHERS_DIRTY_LIMIT`], or another in tests.
    dirty_limit: u64,
    /// When /proc/meminfo was last read, and whether it said more than `dirty_limit`.
    dirty_checked: Option<(Instant, bool)>,
    /// Whether the last syncfs took over [`SLOW_SYNCFS`].
    slow_syncfs: bool,
    publisher: mpsc::Sender<Group>,
}

/// A file system as the [`Committer`] knows it.
struct Filesystem {
    /// A directory held open on it since its first delivery, to call syncfs through: syncfs
    /// reports the write-back errors on the file system since that handle's previous call (on
    /// its first, those nobody has seen), so a long-lived handle misses none between a write
    /// and its flush.
    handle: OwnedFd,
    /// Whether each syncfs must be followed by one more cache flush ([`flush_after_syncfs`]).
    flush_again: bool,
}

/// How long a reading of /proc/meminfo is trusted: reading it costs about as much as writing
/// a message file, and there may be a thousand rounds a second.
const DIRTY_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// A syncfs that took longer than this has the next round read /proc/meminfo whatever
/// [`DIRTY_CHECK_INTERVAL`] says: something else may have started writing.
const SLOW_SYNCFS: Duration = Duration::from_millis(2);

impl Committer {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut jobs = vec![first];
            jobs.extend(queue.try_iter());
            self.round(jobs);
        }
    }

    fn round(&mut self, jobs: Vec<Job>) {
        let mut written: Group = Vec::with_capacity(jobs.len());
        let mut open = HashMap::new();
        for job in jobs {
            match self.names.write_all(&job.targets, &mut open) {
                Ok(placed) => written.push((placed, job.done)),
                Err(e) => {
                    let _ = job.done.send(Err(e));
                }
            }
        }
        if written.is_empty() {
            return;
        }
        let failure = match self.flush(&written) {
            Ok(()) => match self.publisher.send(written) {
                Ok(()) => return,
                Err(mpsc::SendError(written)) => {
                    (io::Error::other("the delivery thread is gone"), written)
                }
            },
            Err(e) => (e, written),
        };
        let (e, written) = failure;
        for (placed, done) in written {
            remove_all(&placed, false);
            let _ = done.send(Err(copy_error(&e)));
        }
    }

    /// Flushes the files of `written` (under `tmp/`), with their inodes and directory entries:
    /// one syncfs per file system, then, where its syncfs leaves writes unflushed
    /// ([`flush_after_syncfs`]), an fsync of one of their `tmp/` directories, which flushes the
    /// device cache again; or, when much else is dirty, an fsync of each file ([`fsync_each`]).
    fn flush(&mut self, written: &[Delivery]) -> io::Result<()> {
        let files = files_of(written);
        let ours = files.iter().map(|file| file.pages).sum();
        if self.much_else_dirty(ours) {
            return fsync_each(&files);
        }
        // One `tmp/` on each file system: the handle its fsync goes through.
        let mut devices: Vec<(u64, &Dirs)> = Vec::new();
        for file in &files {
            let dirs = &*file.dirs;
            if devices.iter().any(|(_, seen)| std::ptr::eq(*seen, dirs)) {
                continue;
            }
            let device = rustix::fs::fstat(&dirs.tmp)?.st_dev;
            if devices.iter().all(|(seen, _)| *seen != device) {
                if let std::collections::hash_map::Entry::Vacant(entry) =
                    self.filesystems.entry(device)
                {
                    let flush_again = flush_after_syncfs(&dirs.tmp, device);
                    tracing::debug!(
                        "Maildirs on device {device:#x}: {}",
                        if flush_again {
                            "syncfs, then one more cache flush"
                        } else {
                            "syncfs alone (ext4 with a journal)"
                        }
                    );
                    entry.insert(Filesystem {
                        handle: dirs.tmp.try_clone()?,
                        flush_again,
                    });
                }
                devices.push((device, dirs));
            }
        }
        let started = Instant::now();
        for (device, _) in &devices {
            if let Some(filesystem) = self.filesystems.get(device) {
                rustix::fs::syncfs(&filesystem.handle)?;
            }
        }
        self.slow_syncfs = started.elapsed() > SLOW_SYNCFS;
        for (device, dirs) in &devices {
            if self.filesystems.get(device).is_none_or(|fs| fs.flush_again) {
                rustix::fs::fsync(&dirs.tmp)?;
            }
        }
        Ok(())
    }

    /// Whether more than the limit of dirty page cache is not ours ([`others_dirty`]), as
    /// last read: again after [`DIRTY_CHECK_INTERVAL`], or after a slow syncfs.
    fn much_else_dirty(&mut self, ours: u64) -> bool {
        match self.dirty_checked {
            Some((at, over)) if !self.slow_syncfs && at.elapsed() < DIRTY_CHECK_INTERVAL => over,
            _ => {
                let over = others_dirty(ours) >= self.dirty_limit;
                self.dirty_checked = Some((Instant::now(), over));
                over
            }
        }
    }
}

/// Whether a syncfs of the file system `dir` is on (device `device`) must be followed by one
/// more device cache flush before the files it wrote count as on disk. ext4 without a journal
/// needs it: its syncfs flushes the cache and then writes the inode tables (from the block
/// device's cache, after the file system's own sync). ext4 with a journal does not: its syncfs
/// ends with a journal commit and a cache flush after it (or a flush alone when a commit
/// already covered the round), so the round needs no other. Any other file system keeps it:
/// XFS and btrfs also end their syncfs with a flushed log or commit, but that was not tried
/// here, and one flush too many costs time where one too few could lose a message.
fn flush_after_syncfs(dir: &OwnedFd, device: u64) -> bool {
    /// ext2, ext3 and ext4 alike (statfs(2)).
    const EXT4_SUPER_MAGIC: u64 = 0xEF53;
    let ext4 = rustix::fs::fstatfs(dir).is_ok_and(|fs| fs.f_type as u64 == EXT4_SUPER_MAGIC);
    !(ext4 && ext4_journal(device) == Some(true))
}

/// Whether the ext4 file system on block device `device` has a journal, as
/// `/sys/fs/ext4/NAME/journal_task` tells (the journal thread's pid, or `<none>`); `None` when
/// that cannot be read.
fn ext4_journal(device: u64) -> Option<bool> {
    let name = block_device_name(device)?;
    let task = std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).ok()?;
    Some(task.trim().parse::<u32>().is_ok())
}

/// The kernel's name of a block device (`vda1`, `dm-0`, `loop0`), from the link
/// `/sys/dev/block/MAJOR:MINOR`; `None` for a device that is not a block device.
fn block_device_name(device: u64) -> Option<String> {
    let (major, minor) = (rustix::fs::major(device), rustix::fs::minor(device));
    let target = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

/// The second thread of [`Flush::Filesystem`]: renames flushed files into `new/`, fsyncs
/// each of those directories once for all the deliveries queued since its last round, and
/// answers them.
struct Publisher;

impl Publisher {
    fn run(queue: mpsc::Receiver<Group>) {
        while let Ok(first) = queue.recv() {
            let mut group = first;
            group.extend(queue.try_iter().flatten());
            Publisher::round(group);
        }
    }

    fn round(group: Group) {
        let mut renamed: Group = Vec::with_capacity(group.len());
        let mut dirs: Vec<Arc<Dirs>> = Vec::new();
        for (placed, done) in group {
            if let Err(e) = rename_all(&placed) {
                let _ = done.send(Err(e));
                continue;
            }
            for file in &placed {
                // Rounds of the committer merged here opened the same `new/` each.
                if dirs.iter().all(|seen| seen.new_path != file.dirs.new_path) {
                    dirs.push(file.dirs.clone());
                }
            }
            renamed.push((placed, done));
        }
        let flushed = dirs
            .iter()
            .try_for_each(|dirs| rustix::fs::fsync(&dirs.new));
        for (placed, done) in renamed {
            let outcome = match &flushed {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not known to be on disk: take it back, the client will send it again.
                    remove_all(&placed, true);
                    Err(io::Error::from(*e))
                }
            };
            let _ = done.send(outcome);
        }
    }
}

fn files_of(group: &[Delivery]) -> Vec<&Placed> {
    group.iter().flat_map(|(placed, _)| placed).collect()
}

/// At most this many fsyncs at once when a group is flushed file by file.
const PARALLEL_FSYNCS: usize = 8;

/// fsyncs each file (under `tmp/`), a share of them on each of up to [`PARALLEL_FSYNCS`]
/// threads, so the disk works on them together instead of one after the other.
fn fsync_each(files: &[&Placed]) -> io::Result<()> {
    let fsync = |share: &[&Placed]| {
        share.iter().try_for_each(|file| {
            let fd = rustix::fs::openat(
                &file.dirs.tmp,
                &file.name,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Ok::<(), io::Error>(rustix::fs::fsync(fd)?)
        })
    };
    let share = files.len().div_ceil(PARALLEL_FSYNCS).max(1);
    std::thread::scope(|scope| {
        let mut threads = Vec::new();
        for chunk in files.chunks(share) {
            match std::thread::Builder::new().spawn_scoped(scope, move || fsync(chunk)) {
                Ok(thread) => threads.push(thread),
                // No thread to spare: this one does it.
                Err(_) => fsync(chunk)?,
            }
        }
        threads.into_iter().try_for_each(|thread| {
            thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("an fsync thread panicked")))
        })
    })
}

/// Dirty page cache (`Dirty` + `Writeback` in /proc/meminfo), in bytes, beyond `ours`; the
/// most there can be if /proc/meminfo cannot be read.
fn others_dirty(ours: u64) -> u64 {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return u64::MAX;
    };
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            line.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    match (kib("Dirty:"), kib("Writeback:")) {
        (Some(dirty), Some(writeback)) => ((dirty + writeback) << 10).saturating_sub(ours),
        _ => u64::MAX,
    }
}

/// Group commit of directory fsyncs.
///
/// A delivery whose files are renamed into `new/` queues a ticket on each of those
/// directories. A directory nobody is flushing is claimed by the thread that queued there: it
/// flushes it for every ticket queued so far, and again for those queued meanwhile, until none
/// is left. A ticket is never served by a flush that started before it was queued (its rename
/// may have been too late for it), and no thread ever waits for another: a thread that finds
/// the directory claimed leaves its ticket to the claimant. A ticket's sender hears the outcome
/// once all its directories are flushed. Different directories are flushed independently.
#[derive(Debug, Default)]
struct DirSync {
    state: Mutex<SyncState>,
}

#[derive(Debug, Default)]
struct SyncState {
    next_ticket: u64,
    /// Directories with queued tickets or a claimant; an entry goes when its claimant finds
    /// nothing more queued, so the map holds only what is in progress.
    dirs: HashMap<PathBuf, Vec<u64>>,
    /// Tickets still waiting for some of their directories.
    tickets: HashMap<u64, Ticket>,
}

/// A delivery waiting for its directories' flushes.
#[derive(Debug)]
struct Ticket {
    /// Directories not flushed for this ticket yet.
    left: usize,
    /// The first failure among them.
    failure: Option<io::Error>,
    /// The files in `new/`, removed if a flush fails.
    files: Vec<Placed>,
    done: oneshot::Sender<io::Result<()>>,
}

impl Ticket {
    fn complete(self) {
        let outcome = match self.failure {
            None => Ok(()),
            Some(e) => {
                remove_all(&self.files, true);
                Err(e)
            }
        };
        let _ = self.done.send(outcome);
    }
}

impl DirSync {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `ticket` on each of `dirs` (distinct), and flushes those nobody else is flushing.
    fn sync(&self, dirs: Vec<PathBuf>, mut ticket: Ticket) {
        if dirs.is_empty() {
            return ticket.complete();
        }
        ticket.left = dirs.len();
        let mut claimed = Vec::new();
        {
            let mut state = self.lock();
            let id = state.next_ticket;
            state.next_ticket += 1;
            state.tickets.insert(id, ticket);
            for dir in dirs {
                match state.dirs.get_mut(&dir) {
                    Some(queued) => queued.push(id),
                    None => {
                        state.dirs.insert(dir.clone(), vec![id]);
                        claimed.push(dir);
                    }
                }
            }
        }
        // Round-robin over the claimed directories, so none waits behind a busy one.
        while !claimed.is_empty() {
            claimed.retain(|dir| self.flush_once(dir));
        }
    }

    /// One flush of a claimed `dir` for the tickets queued on it; false (and the claim given
    /// up) if there were none.
    fn flush_once(&self, dir: &Path) -> bool {
        let served = {
            let mut state = self.lock();
            match state.dirs.get_mut(dir) {
                Some(queued) if !queued.is_empty() => std::mem::take(queued),
                _ => {
                    state.dirs.remove(dir);
                    return false;
                }
            }
        };
        let result = File::open(dir).and_then(|d| d.sync_all());
        let mut finished = Vec::new();
        {
            let mut state = self.lock();
            for id in served {
                let Some(ticket) = state.tickets.get_mut(&id) else {
                    continue;
                };
                ticket.left -= 1;
                if let Err(e) = &result {
                    ticket.failure.get_or_insert_with(|| copy_error(e));
                }
                if ticket.left == 0 {
                    finished.extend(state.tickets.remove(&id));
                }
            }
        }
        // Outside the lock: a failed ticket removes its files first.
        finished.into_iter().for_each(Ticket::complete);
        true
    }
}

/// A message as POP3 sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub path: PathBuf,
    /// The Maildir unique name: the file name up to the `:` of the info part. It survives the
    /// move from `new/` to `cur/` and flag changes, so it finds the message again after another
    /// program has moved it ([`locate`]).
    pub unique: Vec<u8>,
    /// The UIDL: the unique name where RFC 1939 allows it as one, else a digest ([`uidl`]).
    /// Either way the same across sessions.
    pub uid: String,
    /// Octets with CRLF line endings, as RFC 1939 counts them.
    pub size: u64,
}

/// POP3 sizes of the messages whose names carry no `W=`, by UIDL: what [`list`] learnt by
/// reading them, for the next listing of the same Maildir (a message never changes under its
/// unique name). A listing keeps only the names it saw, so this never outgrows the Maildir.
pub type SizeCache = HashMap<String, u64>;

/// The messages of a Maildir (`new/` and `cur/`), oldest first. Files that vanish meanwhile and
/// dot files are skipped. A message's size comes from its name (`W=`), else from `sizes`, else
/// from reading it.
pub fn list(maildir: &Path, sizes: &mut SizeCache) -> io::Result<Vec<Message>> {
    use std::os::unix::ffi::OsStrExt;
    let mut found: Vec<((u64, u64), Message)> = Vec::new();
    let mut learnt = SizeCache::new();
    let mut uids = HashSet::new();
    for sub in ["new", "cur"] {
        let dir = maildir.join(sub);
        for entry in std::fs::read_dir(&dir).map_err(|e| at(&dir, e))? {
            let entry = entry.map_err(|e| at(&dir, e))?;
            let file_name = entry.file_name();
            let name = file_name.as_bytes();
            if name.starts_with(b".") {
                continue;
            }
            // The type comes with the directory entry on most file systems: no stat per file.
            if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
                continue;
            }
            let unique = unique_of(name);
            let mut uid = uidl(unique);
            if !uids.insert(uid.clone()) {
                // The same unique name twice (in `new/` and `cur/`, left so by a crash or
                // another program): RFC 1939 wants UIDLs unique, so this one is named by
                // its whole path in the Maildir.
                uid = digest(&[sub.as_bytes(), b"/", name].concat());
                uids.insert(uid.clone());
            }
            let path = entry.path();
            let text = String::from_utf8_lossy(unique);
            let size = match crlf_size_from_name(&text) {
                Some(size) => size,
                None => {
                    let size = match sizes.get(&uid) {
                        Some(&size) => size,
                        None => match std::fs::read(&path) {
                            Ok(bytes) => crlf_len(&bytes),
                            Err(_) => continue,
                        },
                    };
                    learnt.insert(uid.clone(), size);
                    size
                }
            };
            let message = Message {
                path,
                unique: unique.to_vec(),
                uid,
                size,
            };
            found.push((delivery_order(&text), message));
        }
    }
    found.sort_by(|a, b| (a.0, &a.1.unique).cmp(&(b.0, &b.1.unique)));
    *sizes = learnt;
    Ok(found.into_iter().map(|(_, m)| m).collect())
}

/// The unique name in a Maildir file name: all of it up to the `:` of the info part.
fn unique_of(file_name: &[u8]) -> &[u8] {
    match memchr::memchr(b':', file_name) {
        Some(end) => &file_name[..end],
        None => file_name,
    }
}

/// The UIDL of a message with the unique name `unique`: the name itself when it is one RFC 1939
/// allows (1 to 70 characters in 0x21..0x7E), else [`digest`]`(unique)`. Names are often
/// longer (a long host name, a big `S=` and `W=`) or hold other bytes (other programs'
/// files); the digest keeps such messages listed, under a UIDL as stable as their name.
fn uidl(unique: &[u8]) -> String {
    let allowed =
        (1..=70).contains(&unique.len()) && unique.iter().all(|b| (0x21..=0x7e).contains(b));
    match std::str::from_utf8(unique) {
        Ok(text) if allowed => text.to_owned(),
        _ => digest(unique),
    }
}

/// A UIDL made from `bytes`: `H` and 32 hex digits of their BLAKE2s-256 hash (128 bits: no two
/// names in a mailbox share one).
fn digest(bytes: &[u8]) -> String {
    use blake2::{Blake2s256, Digest};
    use std::fmt::Write as _;
    let hash = Blake2s256::digest(bytes);
    let mut uid = String::with_capacity(33);
    uid.push('H');
    for byte in &hash[..16] {
        let _ = write!(uid, "{byte:02x}");
    }
    uid
}

/// Where the message with the unique name `unique` is now (in `new/` or `cur/`, whatever its
/// info part): another program (a mail client, an IMAP server) may have moved it since it was
/// listed. `None` when it is in neither.
pub fn locate(maildir: &Path, unique: &[u8]) -> io::Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    for sub in ["new", "cur"] {
        let dir = maildir.join(sub);
        for entry in std::fs::read_dir(&dir).map_err(|e| at(&dir, e))? {
            let entry = entry.map_err(|e| at(&dir, e))?;
            if unique_of(entry.file_name().as_bytes()) == unique {
                return Ok(Some(entry.path()));
            }
        }
    }
    Ok(None)
}

/// When a unique name says its message arrived: the seconds, and the microseconds of a
/// `M<usec>` part (ours, Dovecot's, Courier's) compared as numbers (as text, `M99999` would
/// come after `M100000`); names without them go last.
fn delivery_order(uid: &str) -> (u64, u64) {
    let mut parts = uid.split('.');
    let seconds = parts.next().and_then(|s| s.parse().ok());
    let micros = parts.next().and_then(|middle| {
        let digits = middle.strip_prefix('M')?;
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    });
    (seconds.unwrap_or(u64::MAX), micros.unwrap_or(u64::MAX))
}

/// The length of [`to_crlf`]`(bytes)`, without making it.
fn crlf_len(bytes: &[u8]) -> u64 {
    let bare = memchr::memchr_iter(b'\n', bytes)
        .filter(|&i| i == 0 || bytes[i - 1] != b'\r')
        .count();
    (bytes.len() + bare) as u64
}

/// Reads a message file. One in the page cache is read right away, on the calling thread,
/// with `preadv2(RWF_NOWAIT)` (which never waits for the disk); one that needs the disk is
/// read on the blocking pool instead. `size_hint` (the POP3 size) sizes the buffer.
pub async fn read_message(path: &Path, size_hint: u64) -> io::Result<Vec<u8>> {
    if let Some(bytes) = read_cached(path, size_hint)? {
        return Ok(bytes);
    }
    let path = path.to_path_buf();
    crate::blocking(move || std::fs::read(path)).await
}

/// The whole file if every byte of it is in the page cache; `None` if some of it is not, or
/// the file system cannot tell.
fn read_cached(path: &Path, size_hint: u64) -> io::Result<Option<Vec<u8>>> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    // Opening walks cached directory entries: the login has just listed them.
    let file = File::open(path)?;
    // One spare byte, so that a file of exactly the hinted size ends with one read of 0.
    let hint = usize::try_from(size_hint).unwrap_or(0).min(1 << 26);
    let mut buf = vec![0u8; hint + 1];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2 + 4096, 0);
        }
        let mut slices = [io::IoSliceMut::new(&mut buf[len..])];
        match preadv2(&file, &mut slices, len as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Dovecot's `,W=<n>` in a unique name.
fn crlf_size_from_name(uid: &str) -> Option<u64> {
    uid.split(',')
        .skip(1)
        .find_map(|part| part.strip_prefix("W="))
        .and_then(|n| n.parse().ok())
}

/// A stored message with CRLF line endings (lines already ending in CRLF are left alone).
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_carry_sizes() {
        let a = unique_name("host/x:y", 10, 12);
        let b = unique_name("host/x:y", 10, 12);
        assert_ne!(a, b);
        assert!(a.contains(".host\\057x\\072y,S=10,W=12"), "{a}");
        assert_eq!(crlf_size_from_name(&a), Some(12));
    }

    /// A Maildir this process cannot write is refused when it is made ready, naming the
    /// directory; so is one under a file. Root writes whatever the mode says, so as root
    /// `new/` is made immutable (chattr, from e2fsprogs) instead of read-only.
    #[test]
    fn a_maildir_that_cannot_be_written_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let maildir = dir.path().join("alice");
        ensure(&maildir).expect("made");
        let new = maildir.join("new");
        let root = rustix::process::geteuid().is_root();
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(&new)
                .status()
                .is_ok_and(|s| s.success())
        };
        if root {
            assert!(chattr("+i"), "chattr +i {}", new.display());
        } else {
            std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o500))
                .expect("chmod");
        }
        let refused = ensure(&maildir).expect_err("new/ cannot be written");
        if root {
            chattr("-i");
        }
        assert!(
            refused
                .to_string()
                .starts_with(&format!("{}: cannot write there", new.display())),
            "{refused}"
        );
        std::fs::write(dir.path().join("file"), "").expect("write");
        let under_a_file = ensure(&dir.path().join("file/bob")).expect_err("under a file");
        assert_eq!(
            under_a_file.to_string(),
            format!(
                "{}: exists and is not a directory",
                dir.path().join("file").display()
            )
        );
    }

    #[test]
    fn stale_tmp_files_are_cleaned() {
        let dir = tempfile::tempdir().expect("tmp");
        ensure(dir.path()).expect("maildir");
        std::fs::write(dir.path().join("tmp/left-by-a-crash"), "partial").expect("write");
        let now = SystemTime::now();
        assert_eq!(clean_tmp(dir.path(), now, TMP_MAX_AGE).expect("clean"), 0);
        let later = now + TMP_MAX_AGE + Duration::from_secs(60);
        assert_eq!(clean_tmp(dir.path(), later, TMP_MAX_AGE).expect("clean"), 1);
    }

    /// The journal as `/sys/fs/ext4` tells it agrees with `/proc/fs/jbd2`, which lists a
    /// `NAME-INODE` directory for each journal in use; with one, syncfs needs no second flush.
    #[test]
    fn the_second_flush_follows_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = rustix::fs::open(dir.path(), OFlags::RDONLY, Mode::empty()).expect("open");
        let device = rustix::fs::fstat(&handle).expect("fstat").st_dev;
        match ext4_journal(device) {
            Some(journal) => {
                let name = block_device_name(device).expect("a block device");
                let listed = std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|entries| {
                    entries.flatten().any(|entry| {
                        let entry = entry.file_name();
                        let entry = entry.to_string_lossy();
                        entry
                            .strip_prefix(&format!("{name}-"))
                            .is_some_and(|inode| {
                                !inode.is_empty() && inode.bytes().all(|b| b.is_ascii_digit())
                            })
                    })
                });
                assert_eq!(journal, listed, "{name}");
                assert_eq!(flush_after_syncfs(&handle, device), !journal);
            }
            // Not ext4 on a block device (tmpfs, say): the second flush stays.
            None => assert!(flush_after_syncfs(&handle, device)),
        }
    }

    #[test]
    fn messages_are_listed_in_delivery_order() {
        let (_dir, one, _) = two_maildirs();
        for name in [
            "1700000001.M5P1Q3.h",
            "1700000000.M100500P1Q2.h",
            "1700000000.M99000P1Q1.h",
            "1700000000.M99000P1Q0.h",
            "1699999999.other.h",
            "unnumbered",
        ] {
            std::fs::write(one.join("new").join(name), "x\n").expect("write");
        }
        let uids: Vec<String> = list(&one, &mut SizeCache::new())
            .expect("list")
            .into_iter()
            .map(|m| m.uid)
            .collect();
        assert_eq!(
            uids,
            [
                "1699999999.other.h",
                "1700000000.M99000P1Q0.h",
                "1700000000.M99000P1Q1.h",
                "1700000000.M100500P1Q2.h",
                "1700000001.M5P1Q3.h",
                "unnumbered",
            ]
        );
    }

    #[test]
    fn every_message_is_listed_under_a_valid_unique_uidl() {
        use std::os::unix::ffi::OsStrExt;
        let (_dir, one, _) = two_maildirs();
        let long = format!("1700000000.M1P2Q3.{},S=2130208,W=2160215", "h".repeat(60));
        std::fs::write(one.join("new").join(&long), "x\n").expect("write");
        let odd = std::ffi::OsStr::from_bytes(b"1700000001.M1P2Q3.h\xf4te name");
        std::fs::write(one.join("new").join(odd), "x\n").expect("write");
        // The same unique name twice, as a crash between link and unlink can leave it.
        std::fs::write(one.join("new/1700000002.M1P2Q3.h"), "x\n").expect("write");
        std::fs::write(one.join("cur/1700000002.M1P2Q3.h:2,S"), "x\n").expect("write");
        let listed = list(&one, &mut SizeCache::new()).expect("list");
        assert_eq!(listed.len(), 4);
        let uids: Vec<&str> = listed.iter().map(|m| m.uid.as_str()).collect();
        for uid in &uids {
            assert!((1..=70).contains(&uid.len()), "{uid}");
            assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uid}");
        }
        assert_eq!(uids.iter().collect::<HashSet<_>>().len(), 4, "{uids:?}");
        // The long name keeps its size (W=) and its UIDL across listings.
        assert_eq!(listed[0].size, 2160215);
        assert_eq!(
            list(&one, &mut SizeCache::new()).expect("list")[0].uid,
            uids[0]
        );
        // A message moved by another program is found again by its unique name.
        let moved = one.join("cur").join(format!("{long}:2,S"));
        std::fs::rename(one.join("new").join(&long), &moved).expect("move");
        assert_eq!(locate(&one, long.as_bytes()).expect("locate"), Some(moved));
        assert_eq!(locate(&one, b"1700000000.M1P2Q").expect("locate"), None);
    }

    #[test]
    fn crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc");
        for text in [&b""[..], b"\n", b"a\nb\r\nc", b"\r\n\n\r", b"x\n\n"] {
            assert_eq!(crlf_len(text), to_crlf(text).len() as u64);
        }
    }

    /// Two Maildirs, `one` and `two`, in a temporary directory.
    fn two_maildirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        ensure(&one).expect("maildir");
        ensure(&two).expect("maildir");
        (dir, one, two)
    }

    /// Delivers messages 0 to `count - 1` (`Subject: i`) all at once: to `one`, to `two` and
    /// to both, in turn.
    async fn deliver_numbered(deliverer: &Deliverer, one: &Path, two: &Path, count: u32) {
        let sends: Vec<_> = (0..count)
            .map(|i| {
                let deliverer = deliverer.clone();
                let targets = match i % 3 {
                    0 => vec![one.to_path_buf()],
                    1 => vec![two.to_path_buf()],
                    _ => vec![one.to_path_buf(), two.to_path_buf()],
                };
                tokio::spawn(async move {
                    deliverer
                        .deliver(targets, format!("Subject: {i}\n\n{i}\n").into_bytes())
                        .await
                })
            })
            .collect();
        for send in sends {
            send.await.expect("task").expect("delivered");
        }
    }

    /// The whole file comes back whatever the size hint says: right, too small, too large, or
    /// none.
    #[tokio::test]
    async fn messages_read_whole_whatever_the_hint() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m");
        let text = b"Subject: x\n\nline\r\n.dot\nlast".repeat(300);
        std::fs::write(&path, &text).expect("write");
        let size = crlf_len(&text);
        for hint in [size, size - 1, size + 1, text.len() as u64, 0, u64::MAX] {
            let read = read_message(&path, hint).await.expect("read");
            assert!(read == text, "hint {hint}: {} bytes", read.len());
        }
        assert!(read_message(&dir.path().join("gone"), size).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_deliveries_share_directory_flushes() {
        let (_dir, one, two) = two_maildirs();
        let deliverer = Deliverer::new("h", Flush::PerFile);
        deliver_numbered(&deliverer, &one, &two, 64).await;
        assert_eq!(
            list(&one, &mut SizeCache::new()).expect("list").len(),
            22 + 21
        );
        assert_eq!(
            list(&two, &mut SizeCache::new()).expect("list").len(),
            21 + 21
        );
        // A claimant lets go of its directory just after its last acknowledgement.
        for _ in 0..1000 {
            if deliverer.shared.dirs.lock().dirs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let state = deliverer.shared.dirs.lock();
        assert!(
            state.dirs.is_empty() && state.tickets.is_empty(),
            "{state:?}"
        );
    }

    #[tokio::test]
    async fn delivery_lands_in_new_and_lists() {
        for flush in [Flush::Filesystem, Flush::PerFile] {
            let (dir, one, two) = two_maildirs();
            let deliverer = Deliverer::new("h", flush);
            deliverer
                .deliver(
                    vec![one.clone(), two.clone()],
                    b"Subject: x\n\nhi\n".to_vec(),
                )
                .await
                .expect("delivered");
            for maildir in [&one, &two] {
                let messages = list(maildir, &mut SizeCache::new()).expect("list");
                assert_eq!(messages.len(), 1, "{flush:?}");
                assert_eq!(messages[0].size, 18);
                assert!(std::fs::read_dir(maildir.join("tmp"))
                    .expect("tmp")
                    .next()
                    .is_none());
            }
            let missing = dir.path().join("missing");
            assert!(deliverer
                .deliver(vec![one.clone(), missing], b"x\n".to_vec())
                .await
                .is_err());
            assert_eq!(
                list(&one, &mut SizeCache::new()).expect("list").len(),
                1,
                "{flush:?}: a failed delivery is taken back"
            );
            assert!(
                std::fs::read_dir(one.join("tmp"))
                    .expect("tmp")
                    .next()
                    .is_none(),
                "{flush:?}: nothing is left in tmp/"
            );
        }
    }

    /// Many deliveries at once, to one Maildir, the other, and both: each lands once, whole,
    /// and nothing stays in `tmp/` (the committer's rounds, and its publisher's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_deliveries_each_land_once() {
        grouped_deliveries(OTHERS_DIRTY_LIMIT).await;
    }

    /// The same with every group fsynced file by file, as when much else is dirty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_deliveries_flushed_file_by_file_each_land_once() {
        grouped_deliveries(0).await;
    }

    async fn grouped_deliveries(dirty_limit: u64) {
        let (_dir, one, two) = two_maildirs();
        let names = Namer {
            host: "h".into(),
            pid: std::process::id(),
        };
        let deliverer = Deliverer {
            shared: Arc::new(Shared {
                committer: Some(start_committer(&names, dirty_limit).expect("threads")),
                names,
                dirs: DirSync::default(),
            }),
        };
        deliver_numbered(&deliverer, &one, &two, 300).await;
        for (maildir, expected) in [(&one, 200), (&two, 200)] {
            let mut subjects: Vec<u32> = list(maildir, &mut SizeCache::new())
                .expect("list")
                .iter()
                .map(|m| {
                    let text = std::fs::read_to_string(&m.path).expect("read");
                    text.strip_prefix("Subject: ")
                        .and_then(|t| t.split('\n').next())
                        .and_then(|n| n.parse().ok())
                        .expect("a numbered message")
                })
                .collect();
            subjects.sort_unstable();
            subjects.dedup();
            assert_eq!(subjects.len(), expected);
            assert!(std::fs::read_dir(maildir.join("tmp"))
                .expect("tmp")
                .next()
                .is_none());
        }
    }
}
