//! Second-factor secrets as they are kept at rest. A TOTP secret is sealed (encrypted) under
//! one of the service's keys: only [`crate::crypto::Keyring`] can open it; the store, the
//! actors' memory and any log line only ever hold the sealed form. A recovery code is kept
//! only as a salted hash: it is never needed again, only recognised.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Which key sealed it (see `Keyring::key_id`): rotation re-seals what is under old ones.
    pub key_id: String,
    /// AES-GCM's 96-bit nonce, random per sealing.
    pub nonce: Vec<u8>,
    /// Ciphertext with its 16-byte authentication tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// One recovery code as stored: SHA-256 over a random per-code salt and the code. Codes carry
/// 120 random bits, and the salt makes each hash unique (ASVS 5.0 6.5.2, look-up secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct HashedCode {
    /// Its place in the set (0..10): the handle a spend names.
    pub id: u8,
    pub salt: [u8; 16],
    pub hash: [u8; 32],
}

impl fmt::Debug for HashedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashedCode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
