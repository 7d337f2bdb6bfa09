//! Logging in: checking a name and password against the Argon2id hashes, and slowing down
//! whoever keeps failing.
//!
//! Each failure from a peer address doubles that address's delay before the next answer
//! (250 ms, 500 ms, 1 s, ... up to 8 s); a success or 15 quiet minutes forget it. The delay
//! belongs to the address, not the connection: failures from several connections at once are
//! answered one delay after another, so parallel connections do not multiply the rate of
//! guesses. An unknown user costs the same hash computation as a known one, so timing does not
//! tell which names exist.
//!
//! At most [`MAX_UNAUTHENTICATED`] connections from one address may be logging in at once (as
//! sshd's per-source limits): each password check costs an Argon2 computation, and with the
//! delay this bounds what one address can make the server compute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use host::secret;

use crate::User;

const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Connections from one address that may be logging in at the same time (sessions that have
/// logged in do not count); one more is told so and closed. Local (Unix socket) peers count
/// as one address.
pub const MAX_UNAUTHENTICATED: usize = 3;
/// More peers than this are pruned of their old entries, so a scan cannot grow the table.
const MAX_PEERS: usize = 10_000;

/// Failed logins per peer address.
#[derive(Debug, Default)]
pub struct Failures {
    peers: Mutex<HashMap<IpAddr, Failed>>,
}

#[derive(Debug)]
struct Failed {
    count: u32,
    last: Instant,
    /// When the answer to the latest failure is due: the next one waits its delay after it.
    answered: Instant,
}

impl Failures {
    /// Records a failure and returns how long to wait before answering: the address's delay,
    /// counted from the answer to its previous failure if that is still to come.
    pub fn record(&self, peer: Option<IpAddr>) -> Duration {
        self.record_at(peer, Instant::now())
    }

    fn record_at(&self, peer: Option<IpAddr>, now: Instant) -> Duration {
        let Some(peer) = peer else { return FIRST_DELAY };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, failed| now.duration_since(failed.last) < FORGET_AFTER);
        }
        let entry = peers.entry(peer).or_insert(Failed {
            count: 0,
            last: now,
            answered: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let doublings = entry.count.saturating_sub(1).min(16);
        let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
        entry.answered = entry.answered.max(now) + delay;
        entry.answered.duration_since(now)
    }

    pub fn forget(&self, peer: Option<IpAddr>) {
        if let Some(peer) = peer {
            self.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        }
    }
}

/// The connections logging in now, per source address.
#[derive(Debug, Default)]
pub struct Unauthenticated {
    peers: Mutex<HashMap<Option<IpAddr>, usize>>,
}

/// A connection counted by [`Unauthenticated`] until this is dropped (at login or when the
/// connection ends).
#[derive(Debug)]
pub struct LoggingIn {
    table: Arc<Unauthenticated>,
    peer: Option<IpAddr>,
}

impl Unauthenticated {
    /// Counts a connection from `peer` that is about to log in, unless
    /// [`MAX_UNAUTHENTICATED`] from there are logging in already.
    pub fn enter(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<LoggingIn> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let count = peers.entry(peer).or_insert(0);
        if *count >= MAX_UNAUTHENTICATED {
            return None;
        }
        *count += 1;
        Some(LoggingIn {
            table: self.clone(),
            peer,
        })
    }
}

impl Drop for LoggingIn {
    fn drop(&mut self) {
        let mut peers = self.table.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = peers.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// A hash to verify against when the user does not exist.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| secret::hash_password("decoy password, never valid").unwrap_or_default())
}

/// Whether `name` and `password` match a user. Runs the hash on the blocking pool.
pub async fn check(users: &[User], name: &str, password: String) -> bool {
    let (hash, known) = match users.iter().find(|u| u.name == name) {
        Some(user) => (user.hash.clone(), true),
        None => (decoy().to_string(), false),
    };
    let matched = tokio::task::spawn_blocking(move || secret::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    known && matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_peer_and_are_forgotten_on_success() {
        let failures = Failures::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        // One failure after another, each once the previous one was answered.
        let mut now = Instant::now();
        let delays: Vec<Duration> = (0..7)
            .map(|_| {
                let delay = failures.record_at(Some(a), now);
                now += delay;
                delay
            })
            .collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(delays[2], FIRST_DELAY * 4);
        assert_eq!(delays[6], MAX_DELAY);
        assert_eq!(
            failures.record_at(Some(b), now),
            FIRST_DELAY,
            "another peer starts afresh"
        );
        failures.forget(Some(a));
        assert_eq!(failures.record_at(Some(a), now), FIRST_DELAY);
    }

    #[test]
    fn failures_from_one_address_at_once_are_answered_one_delay_apart() {
        let failures = Failures::default();
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let now = Instant::now();
        // As from several connections failing at the same moment: each waits its delay after
        // the answer to the one before.
        let waits: Vec<Duration> = (0..9).map(|_| failures.record_at(Some(a), now)).collect();
        let ms = |n: u64| Duration::from_millis(n);
        assert_eq!(
            waits,
            [
                ms(250),
                ms(750),
                ms(1_750),
                ms(3_750),
                ms(7_750),
                ms(15_750),
                ms(23_750),
                ms(31_750),
                ms(39_750)
            ]
        );
    }

    #[test]
    fn at_most_a_few_connections_per_address_log_in_at_once() {
        let table = Arc::new(Unauthenticated::default());
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let mut held: Vec<LoggingIn> = (0..MAX_UNAUTHENTICATED)
            .map(|_| table.enter(Some(a)).expect("under the cap"))
            .collect();
        assert!(table.enter(Some(a)).is_none(), "over the cap");
        assert!(
            table.enter(Some(b)).is_some(),
            "another address has its own"
        );
        held.pop();
        assert!(table.enter(Some(a)).is_some(), "a slot freed");
        drop(held);
        assert!(table.peers.lock().expect("lock").is_empty());
    }
}
