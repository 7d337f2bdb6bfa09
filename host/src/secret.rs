//! Secrets at rest: passwords are kept only as Argon2id PHC strings
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), never in plain text.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2};

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

/// Checks a password against a stored hash. Slow on purpose (tens of milliseconds): call it
/// off the async workers.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
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
}
