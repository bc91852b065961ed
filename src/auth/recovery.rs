//! Recovery codes: ten single-use codes handed out once when two-factor is turned on (or the
//! set is regenerated), for the day the phone is lost. Each is 24 characters of Crockford's
//! base32 (120 random bits), shown as four groups of six; only a salted SHA-256 is kept.
//! ASVS 5.0 6.5.2 allows a standard hash for look-up secrets of 112 bits or more; below that
//! it would take a password hash, which ten comparisons per attempt could not afford.
//!
//! Checking a code hashes it against every unused code of the user and compares each in
//! constant time without stopping at a match, so the time says nothing about which matched.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::HashedCode;

pub const CODES_PER_SET: usize = 10;

/// Crockford's base32: no I, L, O or U, so nothing reads as something else.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const CODE_CHARS: usize = 24;
const GROUP: usize = 6;

/// A new set: the codes to show (once) and what to store.
pub struct RecoveryCodes {
    pub shown: Vec<String>,
    pub stored: Vec<HashedCode>,
}

impl RecoveryCodes {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut shown = Vec::with_capacity(CODES_PER_SET);
        let mut stored = Vec::with_capacity(CODES_PER_SET);
        for id in 0..CODES_PER_SET as u8 {
            let mut random = [0u8; CODE_CHARS];
            getrandom::fill(&mut random)?;
            let code: String = random
                .iter()
                .map(|b| ALPHABET[usize::from(b & 31)] as char)
                .collect();
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt)?;
            stored.push(HashedCode {
                id,
                salt,
                hash: hash(&salt, &code),
            });
            shown.push(grouped(&code));
        }
        Ok(Self { shown, stored })
    }
}

/// The stored code `presented` matches, if any. Accepts any case, with or without the dashes
/// and spaces, and Crockford's look-alikes (O for 0, I and L for 1).
pub fn find(presented: &str, unused: &[HashedCode]) -> Option<u8> {
    let normalised = normalise(presented)?;
    let mut found = None;
    for code in unused {
        let candidate = hash(&code.salt, &normalised);
        if bool::from(candidate.ct_eq(&code.hash)) {
            found = Some(code.id);
        }
    }
    found
}

fn normalise(presented: &str) -> Option<String> {
    let code: String = presented
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_lowercase() {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        })
        .collect();
    (code.len() == CODE_CHARS && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

fn hash(salt: &[u8; 16], code: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"finsec recovery code v1:")
        .chain_update(salt)
        .chain_update(code.as_bytes())
        .finalize()
        .into()
}

fn grouped(code: &str) -> String {
    code.as_bytes()
        .chunks(GROUP)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_ten_distinct_codes_each_found_once() {
        let set = RecoveryCodes::generate().unwrap();
        assert_eq!(set.shown.len(), CODES_PER_SET);
        let distinct: std::collections::HashSet<_> = set.shown.iter().collect();
        assert_eq!(distinct.len(), CODES_PER_SET);
        for (i, code) in set.shown.iter().enumerate() {
            assert_eq!(code.len(), 27, "{code}");
            assert_eq!(find(code, &set.stored), Some(i as u8));
            assert!(
                !set.stored[i]
                    .hash
                    .windows(4)
                    .any(|w| code.as_bytes().starts_with(w))
            );
        }
    }

    #[test]
    fn typing_variations_are_accepted_and_others_refused() {
        let set = RecoveryCodes::generate().unwrap();
        let code = &set.shown[3];
        let sloppy = code
            .to_uppercase()
            .replace('-', " ")
            .replace('0', "O")
            .replace('1', "l");
        assert_eq!(find(&sloppy, &set.stored), Some(3));
        assert_eq!(find(&code.replace('-', ""), &set.stored), Some(3));
        assert_eq!(find("", &set.stored), None);
        assert_eq!(find(&code[..26], &set.stored), None);
        let other = RecoveryCodes::generate().unwrap();
        assert_eq!(find(&other.shown[0], &set.stored), None);
        // A spent code is no longer among the unused ones passed in.
        assert_eq!(find(code, &set.stored[4..]), None);
    }
}
