//! Encrypted taps (`.etap`, `.etas`): a tap's text sealed under a key derived from a passphrase.
//!
//! Twisted encrypted taps with a passphrase-derived key too; here the derivation is Argon2id
//! (random salt, parameters stored in the file so they can grow later) and the cipher
//! XChaCha20-Poly1305, whose 192-bit random nonces are safe to draw afresh for every save under
//! one key. The whole header is the AEAD's associated data, so a changed byte anywhere (header,
//! nonce, ciphertext or tag) and a wrong passphrase are the same single failure: the tag does not
//! verify, and no plaintext is ever returned.
//!
//! Layout, version 1 (integers little-endian):
//!
//! ```text
//! magic "TAPHOST-ETAP" (12) | version 1 (1) | kdf 1 = Argon2id v19 (1) | cipher 1 = XChaCha20-Poly1305 (1)
//! | m_cost KiB (4) | t_cost (4) | p_cost (4) | salt (16) | nonce (24) | ciphertext + tag (16)
//! ```

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Every encrypted tap starts with this; a plain tap (JSON or RON text) never can.
pub const MAGIC: &[u8; 12] = b"TAPHOST-ETAP";
const VERSION: u8 = 1;
const KDF_ARGON2ID: u8 = 1;
const CIPHER_XCHACHA20POLY1305: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + 3 + 12 + SALT_LEN;
const TAG_LEN: usize = 16;

/// Parameters read from a file are bounded: a crafted header must not make the reader allocate
/// gigabytes or spin for minutes before the tag check can fail.
const MAX_M_COST: u32 = 1024 * 1024; // 1 GiB
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("not an encrypted tap")]
    NotEncrypted,
    #[error("encrypted tap format version {0} is unknown (this taphost reads 1)")]
    UnknownVersion(u8),
    #[error("the file is truncated")]
    Truncated,
    #[error("unsupported encryption parameters: {0}")]
    Unsupported(String),
    #[error("wrong passphrase, or the file was changed")]
    Authentication,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("no random numbers from the system: {0}")]
    Random(String),
}

/// A derived key with the salt and parameters it came from. twistd keeps one of these (not the
/// passphrase) to encrypt the shutdown save again; its bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; 32]>,
    salt: [u8; SALT_LEN],
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| CryptError::Random(e.to_string()))?;
    Ok(buf)
}

impl Key {
    /// A new key for a new file: a random salt and Argon2id's recommended parameters
    /// (19 MiB, 2 passes, 1 lane: tens of milliseconds).
    pub fn generate(passphrase: &[u8]) -> Result<Key, CryptError> {
        let p = argon2::Params::DEFAULT;
        Key::derive(passphrase, random()?, p.m_cost(), p.t_cost(), p.p_cost())
    }

    fn derive(
        passphrase: &[u8],
        salt: [u8; SALT_LEN],
        m_cost: u32,
        t_cost: u32,
        p_cost: u32,
    ) -> Result<Key, CryptError> {
        if passphrase.is_empty() {
            return Err(CryptError::EmptyPassphrase);
        }
        if m_cost > MAX_M_COST || t_cost > MAX_T_COST || p_cost > MAX_P_COST {
            return Err(CryptError::Unsupported(format!(
                "m={m_cost} t={t_cost} p={p_cost} exceed m={MAX_M_COST} t={MAX_T_COST} p={MAX_P_COST}"
            )));
        }
        let params = argon2::Params::new(m_cost, t_cost, p_cost, Some(32))
            .map_err(|e| CryptError::Unsupported(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut bytes = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, &salt, bytes.as_mut())
            .map_err(|e| CryptError::Unsupported(e.to_string()))?;
        Ok(Key {
            bytes,
            salt,
            m_cost,
            t_cost,
            p_cost,
        })
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&[VERSION, KDF_ARGON2ID, CIPHER_XCHACHA20POLY1305]);
        h.extend_from_slice(&self.m_cost.to_le_bytes());
        h.extend_from_slice(&self.t_cost.to_le_bytes());
        h.extend_from_slice(&self.p_cost.to_le_bytes());
        h.extend_from_slice(&self.salt);
        h
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.bytes.as_ref().into())
    }
}

/// Whether these bytes are an encrypted tap (by the magic alone).
pub fn is_sealed(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Encrypts `plaintext` under `key` with a fresh random nonce.
pub fn seal(key: &Key, plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
    let header = key.header();
    let nonce: [u8; NONCE_LEN] = random()?;
    let ciphertext = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &header,
            },
        )
        // Encryption fails only for messages past 256 GiB; taps are capped far below that.
        .map_err(|_| CryptError::Unsupported("the plaintext is too long".into()))?;
    let mut out = header;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts an encrypted tap. Returns the plaintext (wiped on drop) and the key, so that the
/// caller can write the file again without asking for the passphrase.
pub fn open(passphrase: &[u8], data: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Key), CryptError> {
    if !is_sealed(data) {
        return Err(CryptError::NotEncrypted);
    }
    let rest = &data[MAGIC.len()..];
    let version = *rest.first().ok_or(CryptError::Truncated)?;
    if version != VERSION {
        return Err(CryptError::UnknownVersion(version));
    }
    if data.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(CryptError::Truncated);
    }
    let (kdf, cipher) = (rest[1], rest[2]);
    if kdf != KDF_ARGON2ID || cipher != CIPHER_XCHACHA20POLY1305 {
        return Err(CryptError::Unsupported(format!(
            "key derivation {kdf}, cipher {cipher}"
        )));
    }
    let word = |at: usize| {
        let bytes: [u8; 4] = rest[at..at + 4].try_into().expect("four bytes in bounds");
        u32::from_le_bytes(bytes)
    };
    let (m_cost, t_cost, p_cost) = (word(3), word(7), word(11));
    let salt: [u8; SALT_LEN] = data[HEADER_LEN - SALT_LEN..HEADER_LEN]
        .try_into()
        .expect("salt in bounds");
    let key = Key::derive(passphrase, salt, m_cost, t_cost, p_cost)?;
    let (header, body) = data.split_at(HEADER_LEN);
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    let plaintext = key
        .cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: header,
            },
        )
        .map_err(|_| CryptError::Authentication)?;
    Ok((Zeroizing::new(plaintext), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonces() {
        let key = Key::generate(b"correct horse").expect("key");
        let a = seal(&key, b"{\"version\": 1}").expect("seal");
        let b = seal(&key, b"{\"version\": 1}").expect("seal");
        assert_ne!(a, b, "each save draws a new nonce");
        assert!(is_sealed(&a));
        let (plain, again) = open(b"correct horse", &a).expect("open");
        assert_eq!(plain.as_slice(), b"{\"version\": 1}");
        assert_eq!(again.salt, key.salt);
        assert_eq!(*again.bytes, *key.bytes);
    }

    #[test]
    fn every_changed_byte_and_a_wrong_passphrase_fail_the_same_way() {
        let key = Key::generate(b"pw").expect("key");
        let sealed = seal(&key, b"secret text").expect("seal");
        assert_eq!(open(b"pW", &sealed).err(), Some(CryptError::Authentication));
        // Past the magic and version (which have their own messages) and the cost words (which
        // would make some flips slow or refused), every byte is covered by the tag.
        for i in (MAGIC.len() + 3 + 12)..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(b"pw", &bad).err(),
                Some(CryptError::Authentication),
                "byte {i}"
            );
        }
        let mut bad = sealed.clone();
        bad[MAGIC.len() + 4] ^= 0x01; // m_cost: still a valid cost, but the header is the AAD
        assert!(open(b"pw", &bad).is_err());
        assert_eq!(
            open(b"pw", &sealed[..40]).err(),
            Some(CryptError::Truncated)
        );
        assert_eq!(open(b"pw", b"{}").err(), Some(CryptError::NotEncrypted));
        let mut newer = sealed.clone();
        newer[MAGIC.len()] = 2;
        assert_eq!(
            open(b"pw", &newer).err(),
            Some(CryptError::UnknownVersion(2))
        );
    }

    #[test]
    fn costs_from_a_file_are_bounded() {
        let key = Key::generate(b"pw").expect("key");
        let mut sealed = seal(&key, b"x").expect("seal");
        sealed[MAGIC.len() + 3..MAGIC.len() + 7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            open(b"pw", &sealed),
            Err(CryptError::Unsupported(_))
        ));
        assert_eq!(
            Key::generate(b"").err().map(|e| e.to_string()),
            Some("the passphrase is empty".into())
        );
    }
}
