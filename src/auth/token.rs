//! Access tokens: JWTs whose claims name a user (`sub`) and one session (`sid`), signed as
//! `jwt.algorithm` says: EdDSA or ES256 with the newest key of `jwt.keys_dir` (its id in the
//! header's `kid`; see `auth::keys`), or HS256 with `jwt.secret`.
//!
//! The algorithm is pinned: a token whose header says anything but the configured algorithm
//! (`none` included) is refused before its signature is looked at, and so is one whose `kid`
//! names no key of ours. Issuer, audience and expiry are checked with no
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
use super::keys::{JwkSet, KeyError, KeySet};
use crate::config::{JwtSettings, SigningAlgorithm};
use crate::domain::{Session, SessionId, UserId};

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

/// The identity a verified token asserts, and its times (seconds since the epoch, as in the
/// claims); the session actors still decide if it is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSubject {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub issued_at: i64,
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct TokenIssuer {
    keys: Keys,
    algorithm: Algorithm,
    validation: Validation,
    issuer: String,
    audience: String,
    /// Tokens that passed, by their text; `None` when `jwt.verified_tokens` is 0.
    verified: Option<Arc<quick_cache::sync::Cache<Box<str>, TokenSubject>>>,
}

/// What signs and verifies.
#[derive(Clone)]
enum Keys {
    /// HS256: one secret does both.
    Shared {
        encoding: EncodingKey,
        decoding: DecodingKey,
    },
    /// EdDSA or ES256: the newest key signs, each verifies the tokens that name it.
    Pairs(Arc<KeySet>),
}

impl TokenIssuer {
    /// Reads the keys of `jwt.keys_dir` for EdDSA and ES256; refuses a folder with none.
    pub fn new(settings: &JwtSettings) -> Result<Self, KeyError> {
        let algorithm = settings.algorithm.jwt();
        let keys = match (settings.algorithm, &settings.keys_dir) {
            (SigningAlgorithm::HS256, _) => {
                let secret = settings.secret.expose_secret().as_bytes();
                Keys::Shared {
                    encoding: EncodingKey::from_secret(secret),
                    decoding: DecodingKey::from_secret(secret),
                }
            }
            (pair, Some(dir)) => {
                let activation = chrono::Duration::from_std(settings.key_activation)
                    .unwrap_or(chrono::Duration::MAX);
                Keys::Pairs(Arc::new(KeySet::load(dir, pair, activation)?))
            }
            (pair, None) => return Err(KeyError::NoFolder(pair.jwt_name())),
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        Ok(Self {
            keys,
            algorithm,
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            verified: (settings.verified_tokens > 0)
                .then(|| Arc::new(quick_cache::sync::Cache::new(settings.verified_tokens))),
        })
    }

    /// `iss` of the tokens issued here.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `aud` of the tokens issued here.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys resource servers verify with; none for HS256 (its key is a secret).
    pub fn jwks(&self) -> JwkSet {
        match &self.keys {
            Keys::Shared { .. } => JwkSet { keys: Vec::new() },
            Keys::Pairs(set) => set.jwks(),
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
        let mut header = Header::new(self.algorithm);
        let encoding = match &self.keys {
            Keys::Shared { encoding, .. } => encoding,
            Keys::Pairs(set) => {
                let key = set.signing(now);
                header.kid = Some(key.kid.clone());
                &key.encoding
            }
        };
        jsonwebtoken::encode(&header, &claims, encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Checks signature, algorithm, issuer, audience and expiry, then parses the subject.
    pub fn verify(&self, token: &str) -> Result<TokenSubject, AuthError> {
        if let Some(known) = self.verified.as_ref().and_then(|v| v.get(token)) {
            // jsonwebtoken's rule with no leeway: expired once `exp` is in the past.
            if known.expires_at < Utc::now().timestamp() {
                return Err(AuthError::TokenExpired);
            }
            return Ok(known);
        }
        let decoding = match &self.keys {
            Keys::Shared { decoding, .. } => decoding,
            Keys::Pairs(set) => {
                // The header picks the key, and is itself unverified: only a known kid of
                // the pinned algorithm gets as far as a signature check.
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken)?;
                if header.alg != self.algorithm {
                    return Err(AuthError::InvalidToken);
                }
                header
                    .kid
                    .as_deref()
                    .and_then(|kid| set.verifying(kid))
                    .ok_or(AuthError::InvalidToken)?
            }
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            })?;
        let claims = data.claims;
        let subject = TokenSubject {
            user_id: claims.sub.parse().map_err(|_| AuthError::InvalidToken)?,
            session_id: claims.sid.parse().map_err(|_| AuthError::InvalidToken)?,
            issued_at: claims.iat,
            expires_at: claims.exp,
        };
        if let Some(verified) = &self.verified {
            verified.insert(token.into(), subject);
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
            algorithm: SigningAlgorithm::HS256,
            keys_dir: None,
            key_activation: std::time::Duration::ZERO,
        }
    }

    fn issuer(settings: &JwtSettings) -> TokenIssuer {
        TokenIssuer::new(settings).expect("keys")
    }

    /// Settings for `algorithm` over a new folder holding `keys` keys, oldest first.
    fn pair_settings(algorithm: SigningAlgorithm, keys: usize) -> (JwtSettings, Vec<String>) {
        let dir = std::env::temp_dir().join(format!(
            "finsec-token-keys-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let now = Utc::now();
        let kids = (0..keys)
            .map(|i| {
                let at = now - chrono::Duration::days((keys - i) as i64);
                let path = super::super::keys::generate(&dir, algorithm, at).unwrap();
                path.file_stem().unwrap().to_str().unwrap().to_owned()
            })
            .collect();
        let mut settings = settings("the-secret-is-not-used-for-pairs");
        settings.algorithm = algorithm;
        settings.keys_dir = Some(dir);
        (settings, kids)
    }

    fn header_of(token: &str) -> Header {
        jsonwebtoken::decode_header(token).unwrap()
    }

    #[test]
    fn asymmetric_tokens_name_the_newest_key_and_any_key_of_the_folder_verifies() {
        for algorithm in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let (settings, kids) = pair_settings(algorithm, 1);
            let now = Utc::now();
            let old_token = issuer(&settings).issue(&session(now), now).unwrap();
            assert_eq!(header_of(&old_token).kid.as_deref(), Some(kids[0].as_str()));
            assert_eq!(header_of(&old_token).alg, algorithm.jwt());

            // A newer key arrives: it signs, and the older one's tokens still verify.
            let dir = settings.keys_dir.clone().unwrap();
            let newer = super::super::keys::generate(&dir, algorithm, now).unwrap();
            let rotated = issuer(&settings);
            let new_token = rotated.issue(&session(now), now).unwrap();
            assert_eq!(
                header_of(&new_token).kid.as_deref(),
                newer.file_stem().unwrap().to_str()
            );
            assert!(rotated.verify(&old_token).is_ok());
            assert!(rotated.verify(&new_token).is_ok());
            assert_eq!(rotated.jwks().keys.len(), 2);

            // The older key leaves the folder: its tokens stop verifying.
            std::fs::remove_file(dir.join(format!("{}.pem", kids[0]))).unwrap();
            let pruned = issuer(&settings);
            assert_eq!(pruned.verify(&old_token), Err(AuthError::InvalidToken));
            assert!(pruned.verify(&new_token).is_ok());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// The classic confusion: an HS256 token whose HMAC key is the public key everybody can
    /// fetch from the JWKS, or an unsigned one, or one naming no key of ours.
    #[test]
    fn asymmetric_verification_takes_no_other_algorithm_and_no_unknown_key() {
        let (settings, kids) = pair_settings(SigningAlgorithm::EdDSA, 1);
        let issuer = issuer(&settings);
        let now = Utc::now();
        let genuine = issuer.issue(&session(now), now).unwrap();
        let claims = jsonwebtoken::dangerous::insecure_decode::<AccessClaims>(&genuine)
            .unwrap()
            .claims;
        let public = issuer.jwks().keys[0].x.clone();
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(kids[0].clone());
        for secret in [
            public.as_bytes(),
            b"the-secret-is-not-used-for-pairs".as_slice(),
        ] {
            let forged =
                jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(secret)).unwrap();
            assert_eq!(issuer.verify(&forged), Err(AuthError::InvalidToken));
        }
        // The genuine signature under a header naming another kid, or none.
        let (_, rest) = genuine.split_once('.').unwrap();
        for header in [
            r#"{"alg":"EdDSA","typ":"JWT","kid":"20000101T000000Z-00000000"}"#,
            r#"{"alg":"EdDSA","typ":"JWT"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
        ] {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header);
            assert_eq!(
                issuer.verify(&format!("{encoded}.{rest}")),
                Err(AuthError::InvalidToken),
                "{header}"
            );
        }
        assert!(issuer.verify(&genuine).is_ok());
        std::fs::remove_dir_all(settings.keys_dir.unwrap()).unwrap();
    }

    #[test]
    fn a_key_pair_algorithm_without_keys_is_refused() {
        let mut settings = settings("x");
        settings.algorithm = SigningAlgorithm::EdDSA;
        let err = TokenIssuer::new(&settings).err().expect("refused");
        assert!(matches!(err, KeyError::NoFolder("EdDSA")), "{err}");
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
        let issuer = issuer(&settings("a-secret-of-reasonable-length!!!"));
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
        let token = issuer(&settings("key-one"))
            .issue(&session(now), now)
            .unwrap();
        assert_eq!(
            issuer(&settings("key-two")).verify(&token),
            Err(AuthError::InvalidToken)
        );

        let mut other = settings("key-one");
        other.issuer = "someone-else".into();
        assert_eq!(issuer(&other).verify(&token), Err(AuthError::InvalidToken));

        let mut other = settings("key-one");
        other.audience = "another-api".into();
        assert_eq!(issuer(&other).verify(&token), Err(AuthError::InvalidToken));
    }

    #[test]
    fn an_expired_token_says_so() {
        let issuer = issuer(&settings("key"));
        let then = Utc::now() - chrono::Duration::hours(2);
        let token = issuer.issue(&session(then), then).unwrap();
        assert_eq!(issuer.verify(&token), Err(AuthError::TokenExpired));
    }

    /// A remembered token is answered as the first check answered it, and only the exact
    /// text that passed is remembered: a token altered in any byte (its payload, its
    /// signature) is checked again and refused.
    #[test]
    fn a_remembered_token_is_the_exact_text_that_passed() {
        let issuer = issuer(&settings("a-secret-of-reasonable-length!!!"));
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
        let issuer = issuer(&settings("key"));
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
        let issuer = issuer(&off);
        let now = Utc::now();
        let token = issuer.issue(&session(now), now).unwrap();
        issuer.verify(&token).unwrap();
        assert!(issuer.verified.is_none());
        assert!(issuer.verify(&token).is_ok());
    }
}
