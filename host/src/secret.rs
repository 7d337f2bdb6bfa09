//! Secrets at rest: passwords are kept only as Argon2id PHC strings
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), never in plain text.
//!
//! Checking a password is slow on purpose: at the default parameters (m = 19 MiB, t = 2,
//! p = 1, OWASP's first Argon2id row) it fills 19 MiB of working memory twice. Freshly mapped
//! memory costs a page fault per 4 KiB page on first touch, about a third of a check's time
//! on the 2-core VM (24 ms against 16.4 ms with the memory already mapped), so checks reuse
//! their working memory ([`Scratch`]): it is wiped after every check, at most one buffer per
//! CPU the process may run on is kept, as many checks run at once and the others wait their
//! turn (first come, first served), and [`release_scratch`] gives it all back to the system
//! (the host calls it a second after the process's last connection closed). Nothing about a
//! password or its outcome is kept.

use std::num::NonZeroUsize;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use zeroize::Zeroize;

/// Hashes a password with Argon2id (the crate's default parameters) and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `phc` is an Argon2id PHC string this host can verify against.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC hash string: {e}"))?;
    if hash.algorithm.as_str() != Algorithm::Argon2id.ident().as_str() {
        return Err(format!(
            "hash algorithm is {}, not argon2id",
            hash.algorithm
        ));
    }
    Ok(())
}

/// Whether `phc` parses as a PHC string of any Argon2 variant (`argon2id`, and the older
/// `argon2i` and `argon2d`, which [`verify_password`] checks as well). Looser than
/// [`check_hash`], for configurations that have always accepted them.
pub fn is_argon2_hash(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| hash.algorithm.as_str().starts_with("argon2"))
}

/// Checks a password against a stored hash (any Argon2 variant, with the parameters, salt and
/// output length the hash names); anything malformed is a mismatch. Slow on purpose (tens of
/// milliseconds, and it may wait for another check to finish): call it off the async workers.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| matches(&hash, password.as_bytes()) == Some(true))
}

/// The check itself, as `argon2`'s `PasswordVerifier` does it but in reused working memory:
/// `None` when the hash cannot be checked.
fn matches(hash: &PasswordHash, password: &[u8]) -> Option<bool> {
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
    let version = match hash.version {
        Some(version) => Version::try_from(version).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(hash).ok()?;
    let salt = hash.salt.as_ref()?;
    let expected = hash.hash.as_ref()?;
    let mut buffer = [0u8; Output::MAX_LENGTH];
    let computed = buffer.get_mut(..expected.len())?;
    let mut scratch = Scratch::take(params.block_count())?;
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut *computed,
        scratch.blocks(),
    );
    drop(scratch);
    hashed.ok()?;
    // `Output`'s equality is constant-time.
    Some(Output::new(computed).ok()? == *expected)
}

/// Working memory larger than this (in 1 KiB blocks, so 64 MiB) is not kept after a check.
const MAX_KEPT_BLOCKS: usize = 64 * 1024;

/// The shared working memory of password checks.
/// Checks start in the order they asked (a ticket each), so a flood of logins delays every
/// other login by the same queue, never one login indefinitely.
struct Pool {
    /// Wiped buffers waiting for the next check.
    idle: Vec<Box<[Block]>>,
    /// Tickets handed out.
    tickets: u64,
    /// Checks that ended. Ticket `t` may start once `t < ended + concurrent_checks()`, so at
    /// most that many run, and in ticket order.
    ended: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    idle: Vec::new(),
    tickets: 0,
    ended: 0,
});

/// Signalled whenever a check ends.
static ENDED: Condvar = Condvar::new();

/// Counts a check as ended and wakes the waiting ones (each looks at its own ticket).
fn end_check(pool: &mut Pool) {
    pool.ended += 1;
    ENDED.notify_all();
}

fn lock_pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many checks run at once: the CPUs this process may use. More would only share the
/// same CPUs (each check taking longer) and each would need its own 19 MiB.
fn concurrent_checks() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// One check's working memory, taken from the pool (waiting, in turn, while as many checks
/// as there are CPUs run); wiped and given back when dropped.
struct Scratch {
    blocks: Box<[Block]>,
}

impl Scratch {
    /// At least `len` blocks; `None` if the memory cannot be allocated.
    fn take(len: usize) -> Option<Scratch> {
        let limit = concurrent_checks() as u64;
        let mut pool = lock_pool();
        let ticket = pool.tickets;
        pool.tickets += 1;
        while ticket >= pool.ended + limit {
            pool = ENDED
                .wait(pool)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let kept = pool.idle.pop();
        drop(pool);
        match kept {
            Some(blocks) if blocks.len() >= len => Some(Scratch { blocks }),
            _ => match allocate(len) {
                Some(blocks) => Some(Scratch { blocks }),
                None => {
                    end_check(&mut lock_pool());
                    None
                }
            },
        }
    }

    fn blocks(&mut self) -> &mut [Block] {
        &mut self.blocks
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // What a check leaves in its memory is derived from the password: never keep it.
        for block in self.blocks.iter_mut() {
            block.as_mut().zeroize();
        }
        let blocks = std::mem::take(&mut self.blocks);
        let mut pool = lock_pool();
        if blocks.len() <= MAX_KEPT_BLOCKS {
            pool.idle.push(blocks);
        }
        end_check(&mut pool);
    }
}

/// `len` zeroed blocks, or `None` if there is not that much memory.
fn allocate(len: usize) -> Option<Box<[Block]>> {
    let mut blocks = Vec::new();
    blocks.try_reserve_exact(len).ok()?;
    blocks.resize(len, Block::default());
    Some(blocks.into_boxed_slice())
}

/// Gives the kept working memory of password checks back to the system. Cheap when there is
/// none; a check running meanwhile keeps its own and returns it afterwards.
pub fn release_scratch() {
    let idle = std::mem::take(&mut lock_pool().idle);
    drop(idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        check_hash(&hash).expect("our own hash checks");
        assert!(is_argon2_hash(&hash));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsE"));
        assert!(!verify_password("garbage", "correct horse"));
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuu").is_err());
        assert!(!is_argon2_hash("$2b$12$abcdefghijklmnopqrstuu"));
        assert_ne!(
            hash,
            hash_password("correct horse").expect("hash"),
            "salted"
        );
    }

    /// Hashes made elsewhere keep verifying: by the `argon2` 0.5 crate (which the mail plugin
    /// used until it shared this module) and by the reference C implementation's `argon2` tool
    /// (Debian package `argon2`: `echo -n 'kept from C' | argon2 saltfromtheCcli -id -t 2
    /// -k 19456 -p 1 -e`, and `-i` for the Argon2i one).
    #[test]
    fn hashes_from_other_implementations_verify() {
        let from_05 = "$argon2id$v=19$m=19456,t=2,p=1$RuXnj9ttjCmJ526Qj8zu2g$\
                       VBGt+DnSfcXf5Hz07cci8YKGJI6ihOmKYe4YrNJVDu4";
        assert!(verify_password(from_05, "kept from 0.5"));
        assert!(!verify_password(from_05, "kept from 0.6"));
        let from_c = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdGZyb210aGVDY2xp$\
                      ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U";
        assert!(verify_password(from_c, "kept from C"));
        assert!(!verify_password(from_c, "kept from c"));
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$c2FsdGZyb210aGVDY2xp$\
                       WMxwvM7wWzdDk0yvW4No2TFrXLo74FGIHqVDTu5Gloo";
        assert!(is_argon2_hash(argon2i));
        assert!(check_hash(argon2i).is_err());
        assert!(verify_password(argon2i, "kept from C"));
        // The same hash under another variant's name is another function.
        assert!(!verify_password(
            &argon2i.replacen("argon2i", "argon2d", 1),
            "kept from C"
        ));
    }

    #[test]
    fn malformed_hashes_are_mismatches() {
        for phc in [
            "",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdGZyb210aGVDY2xp",
            "$argon2id$v=17$m=19456,t=2,p=1$c2FsdGZyb210aGVDY2xp$ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U",
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdGZyb210aGVDY2xp$ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U",
            "$argon2id$v=19$m=19456,t=0,p=1$c2FsdGZyb210aGVDY2xp$ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U",
            "$argon2id$v=19$m=19456,t=2,p=1$c2Fs$ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U",
            "$scrypt$ln=16,r=8,p=1$c2FsdGZyb210aGVDY2xp$ol3mzK3fq9l3JRvxDKp7YFQMtkpq+E631j7+FBUSb4U",
        ] {
            assert!(!verify_password(phc, "kept from C"), "{phc}");
        }
    }

    /// Checks from many threads at once each get their own wiped memory and the right answer,
    /// and what is kept afterwards can be given back.
    #[test]
    fn concurrent_checks_share_the_pool() {
        let hash = hash_password("many at once").expect("hash");
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let hash = hash.clone();
                std::thread::spawn(move || {
                    let password = if i % 2 == 0 { "many at once" } else { "wrong" };
                    verify_password(&hash, password) == (i % 2 == 0)
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().expect("thread"));
        }
        // Every buffer is either in a running check or idle, and no more than one per CPU.
        let kept = lock_pool().idle.len();
        assert!(kept <= concurrent_checks(), "{kept}");
        release_scratch();
        assert!(verify_password(&hash, "many at once"));
    }
}
