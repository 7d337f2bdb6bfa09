//! Logging in: checking a name and password against the Argon2id hashes, and slowing down
//! whoever keeps failing.
//!
//! Each failure from a peer address doubles that address's delay before the next answer
//! (250 ms, 500 ms, 1 s, ... up to 8 s); a success or 15 quiet minutes forget it. An unknown
//! user costs the same hash computation as a known one, so timing does not tell which names
//! exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use host::secret;

use crate::User;

const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// More peers than this are pruned of their old entries, so a scan cannot grow the table.
const MAX_PEERS: usize = 10_000;

/// Failed logins per peer address.
#[derive(Debug, Default)]
pub struct Failures {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Failures {
    /// Records a failure and returns how long to wait before answering.
    pub fn record(&self, peer: Option<IpAddr>) -> Duration {
        let Some(peer) = peer else { return FIRST_DELAY };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        let entry = peers.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
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
        let delays: Vec<Duration> = (0..7).map(|_| failures.record(Some(a))).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(delays[2], FIRST_DELAY * 4);
        assert_eq!(delays[6], MAX_DELAY);
        assert_eq!(
            failures.record(Some(b)),
            FIRST_DELAY,
            "another peer starts afresh"
        );
        failures.forget(Some(a));
        assert_eq!(failures.record(Some(a)), FIRST_DELAY);
    }
}
