//! Operators' passes: the admin console trades the admin key, once, for a pass in an
//! `HttpOnly` cookie, so the key never sits where a script could read it. A pass is
//! `<expiry>.<nonce>.<mac>`: its expiry (Unix seconds), 16 random bytes, and an HMAC-SHA256 of
//! both under a key derived from the admin key. Every instance with the same admin key accepts
//! it, and changing the admin key voids every pass at once. A pass cannot be revoked before
//! its expiry (`console.operator_ttl`, 15 minutes): signing out deletes the browser's cookie.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ApiError;

/// Put on a request by the console after it checked the operator's pass: the admin API then
/// needs no `X-Admin-Key`. A request extension, so no client can send one.
#[derive(Debug, Clone, Copy)]
pub struct OperatorPass;

pub struct OperatorPasses {
    key: [u8; 32],
    ttl: Duration,
}

/// Keeps a pass's key apart from any other use of the admin key.
const KEY_LABEL: &[u8] = b"finsec console operator pass v1";

impl OperatorPasses {
    pub fn new(admin_key: &str, ttl: Duration) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(admin_key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(KEY_LABEL);
        Self {
            key: mac.finalize().into_bytes().into(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new pass, good until the time returned.
    pub fn issue(&self, now: DateTime<Utc>) -> Result<(String, DateTime<Utc>), ApiError> {
        let expires = now.timestamp() + self.ttl.as_secs() as i64;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
        let body = format!("{expires}.{}", hex(&nonce));
        let pass = format!("{body}.{}", hex(&self.mac(&body).finalize().into_bytes()));
        let until = Utc
            .timestamp_opt(expires, 0)
            .single()
            .ok_or_else(|| ApiError::Internal("pass expiry out of range".into()))?;
        Ok((pass, until))
    }

    /// When the pass expires, if it is one of ours and has not yet.
    pub fn verify(&self, pass: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (body, mac) = pass.rsplit_once('.')?;
        let mac = unhex(mac)?;
        // Constant time: a forger learns nothing from how long a wrong MAC took.
        self.mac(body).verify_slice(&mac).ok()?;
        let expires: i64 = body.split_once('.')?.0.parse().ok()?;
        let until = Utc.timestamp_opt(expires, 0).single()?;
        (until > now).then_some(until)
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes a 32-byte key");
        mac.update(body.as_bytes());
        mac
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_works_until_it_expires_and_only_under_its_key() {
        let passes = OperatorPasses::new("the-admin-key", Duration::from_secs(900));
        let now = Utc::now();
        let (pass, until) = passes.issue(now).unwrap();
        assert_eq!(passes.verify(&pass, now), Some(until));
        assert_eq!(passes.verify(&pass, until), None, "expired at its expiry");
        let other = OperatorPasses::new("another-admin-key", Duration::from_secs(900));
        assert_eq!(other.verify(&pass, now), None, "a new admin key voids it");
    }

    #[test]
    fn a_tampered_pass_is_refused() {
        let passes = OperatorPasses::new("the-admin-key", Duration::from_secs(900));
        let now = Utc::now();
        let (pass, _) = passes.issue(now).unwrap();
        let (expires, rest) = pass.split_once('.').unwrap();
        let later: i64 = expires.parse::<i64>().unwrap() + 86_400;
        assert_eq!(passes.verify(&format!("{later}.{rest}"), now), None);
        for bad in ["", ".", "1.2.3", "x.y.zz", &pass[..pass.len() - 1], "é"] {
            assert_eq!(passes.verify(bad, now), None, "{bad}");
        }
    }
}
