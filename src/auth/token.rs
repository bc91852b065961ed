//! Access tokens: HS256 JWTs whose claims name a user (`sub`) and one session (`sid`).
//!
//! The algorithm is pinned: a token whose header says anything but HS256 (`none` included) is
//! refused before its signature is looked at. Issuer, audience and expiry are checked with no
//! leeway: we issue and verify on the same clock. A valid signature is not enough to get in:
//! the session actors must also find the `sid` live, which is what makes logout immediate.
//!
//! A token that passed is remembered by its exact text (`jwt.verified_tokens` of them, the
//! least useful forgotten first), so the same token on its next request skips the HMAC and
//! the claims' JSON: two thirds of what an authenticated request cost in instructions
//! (callgrind). Only tokens that passed every check are remembered, keyed by the whole token,
//! so no other text can match one; expiry is checked on every request, as before; and the
//! session check that follows is untouched, so a logout still bites on the next request.
//! Envoy's JWT filter (`jwt_cache_config`) does the same.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::config::JwtSettings;
use crate::domain::{Session, SessionId, UserId};

const ALGORITHM: Algorithm = Algorithm::HS256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id as a string, as RFC 7519 says `sub` is.
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
}

/// The identity a verified token asserts; the session actors still decide if it is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub user_id: UserId,
    pub session_id: SessionId,
}

#[derive(Clone)]
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    /// Tokens that passed, by their text; `None` when `jwt.verified_tokens` is 0.
    verified: Option<Arc<quick_cache::sync::Cache<Box<str>, Verified>>>,
}

/// What a remembered token asserts, and until when.
#[derive(Debug, Clone, Copy)]
struct Verified {
    subject: TokenSubject,
    exp: i64,
}

impl TokenIssuer {
    pub fn new(settings: &JwtSettings) -> Self {
        let secret = settings.secret.expose_secret().as_bytes();
        let mut validation = Validation::new(ALGORITHM);
        validation.algorithms = vec![ALGORITHM];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            verified: (settings.verified_tokens > 0)
                .then(|| Arc::new(quick_cache::sync::Cache::new(settings.verified_tokens))),
        }
    }

    /// A token for `session`, expiring when the session's absolute lifetime ends.
    pub fn issue(&self, session: &Session, now: DateTime<Utc>) -> Result<String, AuthError> {
        let claims = AccessClaims {
            sub: session.user_id.to_string(),
            sid: session.id.to_string(),
            iat: now.timestamp(),
            exp: session.expires_at.timestamp(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Checks signature, algorithm, issuer, audience and expiry, then parses the subject.
    pub fn verify(&self, token: &str) -> Result<TokenSubject, AuthError> {
        if let Some(known) = self.verified.as_ref().and_then(|v| v.get(token)) {
            // jsonwebtoken's rule with no leeway: expired once `exp` is in the past.
            if known.exp < Utc::now().timestamp() {
                return Err(AuthError::TokenExpired);
            }
            return Ok(known.subject);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })?;
        let claims = data.claims;
        let subject = TokenSubject {
            user_id: claims.sub.parse().map_err(|_| AuthError::InvalidToken)?,
            session_id: claims.sid.parse().map_err(|_| AuthError::InvalidToken)?,
        };
        if let Some(verified) = &self.verified {
            let known = Verified {
                subject,
                exp: claims.exp,
            };
            verified.insert(token.into(), known);
        }
        Ok(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Device;

    fn settings(secret: &str) -> JwtSettings {
        JwtSettings {
            secret: secret.to_owned().into(),
            issuer: "iss".into(),
            audience: "aud".into(),
            verified_tokens: 16,
        }
    }

    fn session(now: DateTime<Utc>) -> Session {
        Session::open(
            UserId::new(7),
            Device::default(),
            now,
            chrono::Duration::hours(1),
        )
    }

    #[test]
    fn a_token_round_trips_to_its_session() {
        let issuer = TokenIssuer::new(&settings("a-secret-of-reasonable-length!!!"));
        let now = Utc::now();
        let session = session(now);
        let token = issuer.issue(&session, now).unwrap();
        let subject = issuer.verify(&token).unwrap();
        assert_eq!(subject.user_id, UserId::new(7));
        assert_eq!(subject.session_id, session.id);
    }

    #[test]
    fn another_key_issuer_or_audience_is_refused() {
        let now = Utc::now();
        let token = TokenIssuer::new(&settings("key-one"))
            .issue(&session(now), now)
            .unwrap();
        assert_eq!(
            TokenIssuer::new(&settings("key-two")).verify(&token),
            Err(AuthError::InvalidToken)
        );

        let mut other = settings("key-one");
        other.issuer = "someone-else".into();
        assert_eq!(
            TokenIssuer::new(&other).verify(&token),
            Err(AuthError::InvalidToken)
        );

        let mut other = settings("key-one");
        other.audience = "another-api".into();
        assert_eq!(
            TokenIssuer::new(&other).verify(&token),
            Err(AuthError::InvalidToken)
        );
    }

    #[test]
    fn an_expired_token_says_so() {
        let issuer = TokenIssuer::new(&settings("key"));
        let then = Utc::now() - chrono::Duration::hours(2);
        let token = issuer.issue(&session(then), then).unwrap();
        assert_eq!(issuer.verify(&token), Err(AuthError::TokenExpired));
    }

    /// A remembered token is answered as the first check answered it, and only the exact
    /// text that passed is remembered: a token altered in any byte (its payload, its
    /// signature) is checked again and refused.
    #[test]
    fn a_remembered_token_is_the_exact_text_that_passed() {
        let issuer = TokenIssuer::new(&settings("a-secret-of-reasonable-length!!!"));
        let now = Utc::now();
        let token = issuer.issue(&session(now), now).unwrap();
        let first = issuer.verify(&token).unwrap();
        assert_eq!(issuer.verify(&token).unwrap(), first);
        let cache = issuer.verified.as_ref().unwrap();
        assert!(cache.get(token.as_str()).is_some(), "not remembered");

        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut forged_sig = signature.to_owned();
        let last = forged_sig.pop().unwrap();
        forged_sig.push(if last == 'A' { 'B' } else { 'A' });
        let forged = format!("{signed}.{forged_sig}");
        assert_eq!(issuer.verify(&forged), Err(AuthError::InvalidToken));

        // Another valid token's payload under this token's signature.
        let other = issuer.issue(&session(now), now).unwrap();
        let other_payload = other.split('.').nth(1).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = other_payload;
        let spliced = parts.join(".");
        assert_eq!(issuer.verify(&spliced), Err(AuthError::InvalidToken));
        assert!(cache.get(forged.as_str()).is_none() && cache.get(spliced.as_str()).is_none());
    }

    /// Expiry is checked on every request, remembered or not.
    #[test]
    fn a_remembered_token_still_expires() {
        let issuer = TokenIssuer::new(&settings("key"));
        let now = Utc::now();
        let mut short = session(now);
        short.expires_at = now + chrono::Duration::seconds(1);
        let token = issuer.issue(&short, now).unwrap();
        issuer.verify(&token).unwrap();
        // Past `exp` (whole seconds): remembered, and refused all the same.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(
            issuer
                .verified
                .as_ref()
                .unwrap()
                .get(token.as_str())
                .is_some()
        );
        assert_eq!(issuer.verify(&token), Err(AuthError::TokenExpired));
    }

    #[test]
    fn zero_remembers_nothing() {
        let mut off = settings("key");
        off.verified_tokens = 0;
        let issuer = TokenIssuer::new(&off);
        let now = Utc::now();
        let token = issuer.issue(&session(now), now).unwrap();
        issuer.verify(&token).unwrap();
        assert!(issuer.verified.is_none());
        assert!(issuer.verify(&token).is_ok());
    }
}
