//! Secrets at rest: AES-256-GCM under `security.encryption_key`, with older keys kept for
//! opening what they sealed until `finsec keys rotate` has re-sealed it under the newest.
//!
//! Each sealing draws a fresh random 96-bit nonce. That is safe for far more secrets than one
//! deployment seals (NIST's bound is 2^32 sealings per key, and we seal one per enrolment).
//! The associated data names what is sealed (`totp`), so a ciphertext copied into another
//! column does not open as something else.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::domain::SealedSecret;

const NONCE_BYTES: usize = 12;
const KEY_BYTES: usize = 32;

/// What a sealed secret is, bound into its authentication tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Totp,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Self::Totp => b"finsec:totp:v1",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("{0}: not base64 for 32 bytes")]
    BadKey(&'static str),
    #[error("sealed under key {0}, which is not configured")]
    UnknownKey(String),
    #[error("sealed secret does not open (tampered, or sealed for another purpose)")]
    Tampered,
    #[error("no randomness: {0}")]
    Random(String),
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The service's encryption keys: the newest seals, every one opens.
pub struct Keyring {
    /// Newest first.
    keys: Vec<Key>,
    demo: bool,
}

/// The demo key's seed: development without `security.encryption_key` uses SHA-256 of it. It
/// is public, so it protects nothing; production refuses to start without a real key.
const DEMO_KEY_SEED: &[u8] = b"finsec demo encryption key: public, development only";

/// Key ids only: a key never reaches a log line.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .field("demo", &self.demo)
            .finish()
    }
}

impl Keyring {
    /// `current` seals; `previous` (older keys, base64) only open.
    pub fn new(current: &str, previous: &[String]) -> Result<Self, CryptoError> {
        let mut keys = vec![Key::from_base64(current, "security.encryption_key")?];
        for old in previous {
            keys.push(Key::from_base64(old, "security.previous_encryption_keys")?);
        }
        Ok(Self { keys, demo: false })
    }

    /// The fixed development key (see [`DEMO_KEY_SEED`]).
    pub fn demo() -> Self {
        let raw: [u8; KEY_BYTES] = Sha256::digest(DEMO_KEY_SEED).into();
        Self {
            keys: vec![Key::from_raw(&raw)],
            demo: true,
        }
    }

    /// True for the public development key.
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// The id of the key new secrets are sealed under.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Result<SealedSecret, CryptoError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: purpose.aad(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        Ok(SealedSecret {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// The plaintext, wiped from memory when dropped.
    pub fn open(
        &self,
        purpose: Purpose,
        sealed: &SealedSecret,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; NONCE_BYTES] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Tampered)?;
        key.cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: purpose.aad(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Tampered)
    }

    /// Opens `sealed` and seals it again under the current key; `None` when it already is.
    pub fn reseal(
        &self,
        purpose: Purpose,
        sealed: &SealedSecret,
    ) -> Result<Option<SealedSecret>, CryptoError> {
        if sealed.key_id == self.current_id() {
            return Ok(None);
        }
        let plaintext = self.open(purpose, sealed)?;
        self.seal(purpose, &plaintext).map(Some)
    }
}

impl Key {
    fn from_base64(encoded: &str, setting: &'static str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            BASE64
                .decode(encoded.trim())
                .map_err(|_| CryptoError::BadKey(setting))?,
        );
        let raw: &[u8; KEY_BYTES] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKey(setting))?;
        Ok(Self::from_raw(raw))
    }

    /// The key id is derived from the key (a truncated, domain-separated SHA-256): nothing to
    /// configure, and the same key always has the same id on every node.
    fn from_raw(raw: &[u8; KEY_BYTES]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"finsec key id v1:")
            .chain_update(raw)
            .finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id,
            cipher: Aes256Gcm::new(raw.into()),
        }
    }
}

/// A new random key, base64: what `finsec keys generate-encryption-key` prints.
pub fn generate_key() -> Result<String, CryptoError> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    getrandom::fill(raw.as_mut()).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(BASE64.encode(raw.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        generate_key().unwrap()
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let ring = Keyring::new(&key(), &[]).unwrap();
        let a = ring.seal(Purpose::Totp, b"JBSWY3DPEHPK3PXP").unwrap();
        let b = ring.seal(Purpose::Totp, b"JBSWY3DPEHPK3PXP").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a.ciphertext.windows(16).any(|w| w == b"JBSWY3DPEHPK3PXP"));
        assert_eq!(
            ring.open(Purpose::Totp, &a).unwrap().as_slice(),
            b"JBSWY3DPEHPK3PXP"
        );
    }

    #[test]
    fn a_tampered_or_foreign_secret_does_not_open() {
        let ring = Keyring::new(&key(), &[]).unwrap();
        let mut sealed = ring.seal(Purpose::Totp, b"secret").unwrap();
        sealed.ciphertext[0] ^= 1;
        assert_eq!(
            ring.open(Purpose::Totp, &sealed),
            Err(CryptoError::Tampered)
        );

        let other = Keyring::new(&key(), &[]).unwrap();
        let sealed = other.seal(Purpose::Totp, b"secret").unwrap();
        assert!(matches!(
            ring.open(Purpose::Totp, &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn old_keys_open_and_reseal_moves_to_the_newest() {
        let (old, new) = (key(), key());
        let before = Keyring::new(&old, &[]).unwrap();
        let sealed = before.seal(Purpose::Totp, b"secret").unwrap();
        let after = Keyring::new(&new, std::slice::from_ref(&old)).unwrap();
        assert_ne!(before.current_id(), after.current_id());
        assert_eq!(
            after.open(Purpose::Totp, &sealed).unwrap().as_slice(),
            b"secret"
        );
        let resealed = after.reseal(Purpose::Totp, &sealed).unwrap().unwrap();
        assert_eq!(resealed.key_id, after.current_id());
        assert_eq!(after.reseal(Purpose::Totp, &resealed).unwrap(), None);
        // Without the old key the old row would not open: rotate before removing it.
        let only_new = Keyring::new(&new, &[]).unwrap();
        assert!(only_new.open(Purpose::Totp, &sealed).is_err());
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(Keyring::new("not base64!", &[]).is_err());
        assert!(Keyring::new(&BASE64.encode([0u8; 16]), &[]).is_err());
        assert!(Keyring::demo().is_demo());
    }
}
