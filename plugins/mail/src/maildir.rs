//! Maildirs: the layout, file names, durable delivery, and reading a mailbox for POP3.
//!
//! A Maildir is a directory with `tmp`, `new` and `cur` (mode 0700; messages 0600). Delivery
//! writes the message under `tmp/`, fsyncs it, renames it into `new/` and fsyncs `new/`, so a
//! crash leaves either nothing or the whole message in `new/`, never part of one. Files hold
//! LF line endings, as mutt, Dovecot and Python's `mailbox` expect.
//!
//! The [`Deliverer`] is a dedicated thread doing that work for every session: whatever
//! deliveries queue up while it flushes one batch form the next batch, so concurrent sessions
//! share directory fsyncs (group commit) and the async workers never block on the disk.

use std::collections::BTreeSet;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// Creates a Maildir (and its parents) if it is missing. A new one is flushed to disk, parent
/// entry included, so that messages acknowledged into it cannot vanish with their directory.
pub fn ensure(path: &Path) -> io::Result<()> {
    if ["tmp", "new", "cur"]
        .iter()
        .all(|sub| path.join(sub).is_dir())
    {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        builder.create(path.join(sub))?;
    }
    File::open(path)?.sync_all()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
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

/// A standard Maildir name: `SECONDS.M<usec>P<pid>Q<n>.HOST,S=<size>,W=<size with CRLF>`.
/// `S=` and `W=` are Dovecot's: the file size and the size as POP3 counts it (CRLF lines),
/// which saves reading every message at login. The host name has `/` and `:` escaped as the
/// Maildir specification says.
pub fn unique_name(hostname: &str, size: usize, crlf_size: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host = hostname.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{host},S={size},W={crlf_size}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
    )
}

/// Files for one or more Maildirs (the relay queue is one too); `ack` hears whether every one
/// is durably in its `new/`.
struct Job {
    targets: Vec<(PathBuf, Arc<Vec<u8>>)>,
    ack: oneshot::Sender<io::Result<()>>,
}

/// The handle sessions deliver through; the writer thread ends when the last handle is gone.
#[derive(Debug, Clone)]
pub struct Deliverer {
    jobs: mpsc::Sender<Job>,
}

/// A batch flushes at most this many messages, so the first of them is not kept waiting long.
const MAX_BATCH: usize = 256;

impl Deliverer {
    /// Starts the writer thread.
    pub fn start(hostname: String) -> io::Result<Deliverer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("maildir-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    commit(&hostname, batch);
                }
            })?;
        Ok(Deliverer { jobs })
    }

    /// Delivers `content` (LF line endings) into each Maildir's `new/`; returns once it is
    /// flushed to disk there, or with the error that stopped it (then it is in none of them).
    pub async fn deliver(&self, maildirs: Vec<PathBuf>, content: Vec<u8>) -> io::Result<()> {
        let content = Arc::new(content);
        self.deliver_each(maildirs.into_iter().map(|m| (m, content.clone())).collect())
            .await
    }

    /// Like [`Deliverer::deliver`], with its own content for each Maildir; all or none.
    pub async fn deliver_each(&self, targets: Vec<(PathBuf, Arc<Vec<u8>>)>) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.jobs
            .send(Job { targets, ack })
            .map_err(|_| io::Error::other("the maildir writer has stopped"))?;
        done.await
            .unwrap_or_else(|_| Err(io::Error::other("the maildir writer has stopped")))
    }
}

/// A message's file on its way from `tmp/` to `new/`.
struct Placed {
    job: usize,
    file: Option<File>,
    tmp: PathBuf,
    new: PathBuf,
}

/// Writes a batch: every file, then every file fsync, the renames, one fsync per touched `new/`
/// directory, and only then the acknowledgements.
fn commit(hostname: &str, batch: Vec<Job>) {
    let mut failed: Vec<Option<io::Error>> = batch.iter().map(|_| None).collect();
    let mut placed: Vec<Placed> = Vec::new();
    for (index, job) in batch.iter().enumerate() {
        for (maildir, content) in &job.targets {
            let crlf_size = content.len() + content.iter().filter(|&&b| b == b'\n').count();
            let name = unique_name(hostname, content.len(), crlf_size);
            let tmp = maildir.join("tmp").join(&name);
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut file| file.write_all(content).map(|()| file));
            match written {
                Ok(file) => placed.push(Placed {
                    job: index,
                    file: Some(file),
                    tmp,
                    new: maildir.join("new").join(&name),
                }),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    failed[index].get_or_insert(e);
                }
            }
        }
    }
    let files: Vec<(usize, File)> = placed
        .iter_mut()
        .filter(|p| failed[p.job].is_none())
        .filter_map(|p| Some((p.job, p.file.take()?)))
        .collect();
    for (job, e) in sync_files(files) {
        failed[job].get_or_insert(e);
    }
    let mut moved: Vec<&Placed> = Vec::new();
    for p in &placed {
        if failed[p.job].is_some() {
            continue;
        }
        match std::fs::rename(&p.tmp, &p.new) {
            Ok(()) => moved.push(p),
            Err(e) => {
                failed[p.job].get_or_insert(e);
            }
        }
    }
    let dirs: BTreeSet<&Path> = moved
        .iter()
        .filter_map(|p| p.new.parent())
        .collect::<BTreeSet<_>>();
    for dir in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            for p in &moved {
                if p.new.parent() == Some(dir) {
                    failed[p.job].get_or_insert(io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
    }
    // A message refused anywhere is taken back everywhere: the client will send it again.
    for p in &placed {
        if failed[p.job].is_some() {
            let _ = std::fs::remove_file(&p.tmp);
            let _ = std::fs::remove_file(&p.new);
        }
    }
    for (job, failure) in batch.into_iter().zip(failed) {
        let _ = job.ack.send(match failure {
            None => Ok(()),
            Some(e) => Err(e),
        });
    }
}

/// Threads that fsync one batch's files side by side. Concurrent fsyncs on one file system
/// can share a journal commit (ext4 and XFS group them), where one thread's fsyncs in a row
/// each wait for their own.
const SYNC_THREADS: usize = 8;

/// fsyncs every file, several at a time; returns the failures with their job index.
fn sync_files(files: Vec<(usize, File)>) -> Vec<(usize, io::Error)> {
    let sync = |chunk: &[(usize, File)]| -> Vec<(usize, io::Error)> {
        chunk
            .iter()
            .filter_map(|(job, file)| file.sync_all().err().map(|e| (*job, e)))
            .collect()
    };
    if files.len() < 2 {
        return sync(&files);
    }
    let per_thread = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| (chunk, scope.spawn(move || sync(chunk))))
            .collect();
        workers
            .into_iter()
            .flat_map(|(chunk, worker)| {
                // A worker that died says nothing about its files: none of them is acknowledged.
                worker.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|(job, _)| (*job, io::Error::other("fsync thread failed")))
                        .collect()
                })
            })
            .collect()
    })
}

/// A message as POP3 sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub path: PathBuf,
    /// The Maildir unique name: the file name up to the `:` of the info part. It survives the
    /// move from `new/` to `cur/` and flag changes, so it is the UIDL.
    pub uid: String,
    /// Octets with CRLF line endings, as RFC 1939 counts them.
    pub size: u64,
}

/// The messages of a Maildir (`new/` and `cur/`), oldest first. Files that vanish meanwhile,
/// dot files and names that are not valid UIDLs are skipped.
pub fn list(maildir: &Path) -> io::Result<Vec<Message>> {
    let mut found: Vec<(u64, String, Message)> = Vec::new();
    for sub in ["new", "cur"] {
        for entry in std::fs::read_dir(maildir.join(sub))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let uid = name.split(':').next().unwrap_or(name).to_string();
            // RFC 1939: 1 to 70 characters in 0x21..0x7E.
            if uid.is_empty() || uid.len() > 70 || !uid.bytes().all(|b| (0x21..=0x7e).contains(&b))
            {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let size = match crlf_size_from_name(&uid) {
                Some(size) => size,
                None => match std::fs::read(&path) {
                    Ok(bytes) => to_crlf(&bytes).len() as u64,
                    Err(_) => continue,
                },
            };
            let seconds = uid
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            found.push((seconds, uid.clone(), Message { path, uid, size }));
        }
    }
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(found.into_iter().map(|(_, _, m)| m).collect())
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

    #[test]
    fn crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc");
    }

    #[tokio::test]
    async fn delivery_lands_in_new_and_lists() {
        let dir = tempfile::tempdir().expect("tmp");
        let one = dir.path().join("one");
        let two = dir.path().join("two");
        ensure(&one).expect("maildir");
        ensure(&two).expect("maildir");
        let deliverer = Deliverer::start("h".into()).expect("writer");
        deliverer
            .deliver(
                vec![one.clone(), two.clone()],
                b"Subject: x\n\nhi\n".to_vec(),
            )
            .await
            .expect("delivered");
        for maildir in [&one, &two] {
            let messages = list(maildir).expect("list");
            assert_eq!(messages.len(), 1);
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
            list(&one).expect("list").len(),
            1,
            "a failed delivery is taken back"
        );
    }
}
