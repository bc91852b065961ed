//! Asymmetric signing keys for access tokens (`jwt.algorithm` = `EdDSA` or `ES256`): one
//! PKCS#8 PEM file per key in `jwt.keys_dir`, named `<kid>.pem`.
//!
//! A key id is the key's creation time and a random suffix (`20261207T214000Z-9f2c41d0`), so
//! the ids sort by age wherever the files are copied (modification times do not survive a
//! copy): the newest key signs, every key in the folder verifies. Rotation is adding a key
//! (`finsec keys generate --dir DIR`) and, once the tokens it signed have expired, removing
//! the old one. The public halves are published as a JWK Set (RFC 7517) for resource servers.
//!
//! Private keys never leave this module but as `jsonwebtoken` keys; the files are written
//! owner-only, and a folder that holds a key of the wrong algorithm, or a file that is not a
//! key, is refused at start (better than a node that silently cannot verify its peers).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Serialize;

use crate::config::SigningAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{dir}: no signing key (create one with `finsec keys generate --dir {dir}`)")]
    Empty { dir: PathBuf },
    #[error("jwt.keys_dir is required with {0} (make a key with `finsec keys generate --dir DIR`)")]
    NoFolder(&'static str),
    #[error("randomness unavailable: {0}")]
    Random(String),
}

impl KeyError {
    fn file(path: &Path, reason: impl ToString) -> Self {
        Self::File {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// One key: its id, when it was made, both halves as `jsonwebtoken` wants them, and its
/// public JWK.
pub struct SigningKey {
    pub kid: String,
    pub created: DateTime<Utc>,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    pub jwk: Jwk,
}

/// A public key as RFC 7517 (with RFC 8037 for Ed25519, RFC 7518 for P-256) writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
}

/// The JWK Set of `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Every key of `jwt.keys_dir`, oldest first.
pub struct KeySet {
    keys: Vec<SigningKey>,
    activation: chrono::Duration,
}

impl KeySet {
    /// Reads every `*.pem` in `dir` (other files are left alone: a README, say). Fails on a
    /// file that is not a key of `algorithm`, and on a folder with no key.
    pub fn load(
        dir: &Path,
        algorithm: SigningAlgorithm,
        activation: chrono::Duration,
    ) -> Result<Self, KeyError> {
        let entries = std::fs::read_dir(dir).map_err(|e| KeyError::file(dir, e))?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| KeyError::file(dir, e))?.path();
            if path.extension().is_none_or(|ext| ext != "pem") {
                continue;
            }
            let (kid, created) = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|kid| Some((kid.to_owned(), kid_time(kid)?)))
                .ok_or_else(|| KeyError::file(&path, "not named <kid>.pem"))?;
            let pem = std::fs::read_to_string(&path).map_err(|e| KeyError::file(&path, e))?;
            keys.push(parse(&pem, kid, created, algorithm).map_err(|e| KeyError::file(&path, e))?);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                dir: dir.to_owned(),
            });
        }
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        Ok(Self { keys, activation })
    }

    /// The key new tokens are signed with at `now`: the newest that is at least
    /// `activation` old, so that a key every instance has not read yet signs nothing (a
    /// rotation rolls through a cluster with nobody logged out). With none that old (a new
    /// deployment's first key), the oldest.
    pub fn signing(&self, now: DateTime<Utc>) -> &SigningKey {
        self.keys
            .iter()
            .rev()
            .find(|key| {
                key.created
                    .checked_add_signed(self.activation)
                    .is_some_and(|active| active <= now)
            })
            .or(self.keys.first())
            .expect("a key set is never empty")
    }

    /// The key a token names in its header, if it is one of ours.
    pub fn verifying(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|key| key.kid == kid)
            .map(|key| &key.decoding)
    }

    /// The public keys, newest first (where a client that takes the first looks).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().rev().map(|key| key.jwk.clone()).collect(),
        }
    }
}

/// Writes a new private key for `algorithm` into `dir` (created if missing) as
/// `<kid>.pem`, readable by its owner only; returns its path.
pub fn generate(
    dir: &Path,
    algorithm: SigningAlgorithm,
    now: DateTime<Utc>,
) -> Result<PathBuf, KeyError> {
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| KeyError::Random(e.to_string()))?;
    let kid = format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // A folder of keys of another algorithm would make every instance refuse to start.
    if dir.is_dir()
        && let Err(err @ KeyError::File { .. }) =
            KeySet::load(dir, algorithm, chrono::Duration::zero())
    {
        return Err(err);
    }
    let pem = new_private_key(algorithm)?;
    create_private_dir(dir)?;
    let path = dir.join(format!("{kid}.pem"));
    // Written beside, then renamed: a node reading the folder never sees half a key.
    let partial = dir.join(format!(".{kid}.pem.partial"));
    write_private(&partial, pem.as_bytes())?;
    std::fs::rename(&partial, &path).map_err(|e| KeyError::file(&path, e))?;
    Ok(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| KeyError::file(dir, e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|e| KeyError::file(dir, e))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyError::file(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::file(path, e))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    std::fs::write(path, bytes).map_err(|e| KeyError::file(path, e))
}

fn new_private_key(algorithm: SigningAlgorithm) -> Result<String, KeyError> {
    let random =
        |bytes: &mut [u8; 32]| getrandom::fill(bytes).map_err(|e| KeyError::Random(e.to_string()));
    let line = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
    match algorithm {
        SigningAlgorithm::EdDSA => {
            let mut seed = [0u8; 32];
            random(&mut seed)?;
            // PKCS#8 v1 (no public key inside), as `openssl genpkey -algorithm ed25519` writes.
            let pair = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: seed,
                public_key: None,
            };
            let pem = pair.to_pkcs8_pem(line);
            seed.fill(0);
            pem.map(|pem| pem.to_string())
                .map_err(|e| KeyError::Random(e.to_string()))
        }
        SigningAlgorithm::ES256 => loop {
            let mut scalar = [0u8; 32];
            random(&mut scalar)?;
            // Out of range (zero, or past the group's order) about once in 2^32 draws.
            let key = p256::SecretKey::from_slice(&scalar);
            scalar.fill(0);
            if let Ok(key) = key {
                break p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, line)
                    .map(|pem| pem.to_string())
                    .map_err(|e| KeyError::Random(e.to_string()));
            }
        },
        SigningAlgorithm::HS256 => Err(KeyError::Random(
            "HS256 has no key file: it signs with jwt.secret".into(),
        )),
    }
}

fn parse(
    pem: &str,
    kid: String,
    created: DateTime<Utc>,
    algorithm: SigningAlgorithm,
) -> Result<SigningKey, String> {
    match algorithm {
        SigningAlgorithm::EdDSA => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| format!("not an Ed25519 private key (PKCS#8 PEM): {e}"))?;
            // jsonwebtoken reads the v1 form only: re-encode whatever form was given.
            let der = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_der()
            .map_err(|e| e.to_string())?;
            let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
            Ok(SigningKey {
                encoding: EncodingKey::from_ed_der(der.as_bytes()),
                decoding: DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?,
                jwk: Jwk {
                    kty: "OKP",
                    crv: "Ed25519",
                    x,
                    y: None,
                    kid: kid.clone(),
                    use_: "sig",
                    alg: "EdDSA",
                },
                kid,
                created,
            })
        }
        SigningAlgorithm::ES256 => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let key = <p256::SecretKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem)
                .map_err(|e| format!("not a P-256 private key (PKCS#8 PEM): {e}"))?;
            let der =
                p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key).map_err(|e| e.to_string())?;
            let point = key.public_key().to_encoded_point(false);
            let (x, y) = match (point.x(), point.y()) {
                (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
                _ => return Err("a P-256 public key without coordinates".into()),
            };
            Ok(SigningKey {
                encoding: EncodingKey::from_ec_der(der.as_bytes()),
                decoding: DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?,
                jwk: Jwk {
                    kty: "EC",
                    crv: "P-256",
                    x,
                    y: Some(y),
                    kid: kid.clone(),
                    use_: "sig",
                    alg: "ES256",
                },
                kid,
                created,
            })
        }
        SigningAlgorithm::HS256 => Err("HS256 signs with jwt.secret, not key files".into()),
    }
}

/// When the key named `kid` was made (the time in its name); `None` when `kid` is not a name
/// [`generate`] gives.
fn kid_time(kid: &str) -> Option<DateTime<Utc>> {
    if !is_kid(kid) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(&kid[..16], "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|time| time.and_utc())
}

/// `YYYYMMDDTHHMMSSZ-` and 8 lowercase hex digits, as [`generate`] names keys. Other names are
/// refused: a kid travels in every token's header, and is matched byte for byte.
fn is_kid(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 25
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[16] == b'-'
        && bytes[..8].iter().all(u8::is_ascii_digit)
        && bytes[9..15].iter().all(u8::is_ascii_digit)
        && bytes[17..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "finsec-keys-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generated_keys_load_and_the_newest_signs() {
        for algorithm in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let dir = folder("newest");
            let now = Utc::now();
            let old = generate(&dir, algorithm, now - chrono::Duration::days(30)).unwrap();
            let new = generate(&dir, algorithm, now).unwrap();
            let set = KeySet::load(&dir, algorithm, chrono::Duration::zero()).unwrap();
            let stem = |p: &Path| p.file_stem().unwrap().to_str().unwrap().to_owned();
            assert_eq!(set.signing(now).kid, stem(&new));
            assert!(set.verifying(&stem(&old)).is_some());
            assert!(set.verifying("20000101T000000Z-00000000").is_none());
            let jwks = set.jwks();
            assert_eq!(jwks.keys.len(), 2);
            assert_eq!(jwks.keys[0].kid, stem(&new), "newest first");
            assert_eq!(jwks.keys[0].alg, algorithm.jwt_name());
            // A key younger than the activation delay is published and verifies, but the
            // older one signs until it comes of age; with no key old enough, the oldest signs.
            let hour = chrono::Duration::hours(1);
            let young = KeySet::load(&dir, algorithm, hour).unwrap();
            assert_eq!(young.signing(now).kid, stem(&old));
            assert_eq!(young.signing(now + hour).kid, stem(&new));
            assert!(young.verifying(&stem(&new)).is_some());
            let days = chrono::Duration::days(60);
            assert_eq!(
                KeySet::load(&dir, algorithm, days)
                    .unwrap()
                    .signing(now)
                    .kid,
                stem(&old)
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&new).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "private keys are the owner's alone");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_folder_with_no_key_or_a_stray_file_is_refused() {
        let dir = folder("refused");
        assert!(matches!(
            KeySet::load(&dir, SigningAlgorithm::EdDSA, chrono::Duration::zero()),
            Err(KeyError::Empty { .. })
        ));
        std::fs::write(dir.join("README"), "not a key").unwrap();
        assert!(matches!(
            KeySet::load(&dir, SigningAlgorithm::EdDSA, chrono::Duration::zero()),
            Err(KeyError::Empty { .. })
        ));
        // A P-256 key where Ed25519 keys are expected.
        generate(&dir, SigningAlgorithm::ES256, Utc::now()).unwrap();
        let err = KeySet::load(&dir, SigningAlgorithm::EdDSA, chrono::Duration::zero())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not an Ed25519"), "{err}");
        // Nor is a key of the other algorithm added to it.
        let err = generate(&dir, SigningAlgorithm::EdDSA, Utc::now()).expect_err("refused");
        assert!(err.to_string().contains("not an Ed25519"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();

        let dir = folder("misnamed");
        let key = generate(&dir, SigningAlgorithm::EdDSA, Utc::now()).unwrap();
        std::fs::rename(&key, dir.join("my key.pem")).unwrap();
        let err = KeySet::load(&dir, SigningAlgorithm::EdDSA, chrono::Duration::zero())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not named"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_openssl_key_in_the_v2_form_loads_too() {
        // ed25519-dalek writes PKCS#8 v2 (the public key inside); jsonwebtoken reads v1 only.
        let dir = folder("v2");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let v2 = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        std::fs::write(dir.join("20261207T000000Z-0000abcd.pem"), v2.as_bytes()).unwrap();
        let set = KeySet::load(&dir, SigningAlgorithm::EdDSA, chrono::Duration::zero()).unwrap();
        assert_eq!(
            set.signing(Utc::now()).jwk.x,
            URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_generated_names_are_key_ids() {
        assert!(is_kid("20261207T214000Z-9f2c41d0"));
        for name in [
            "",
            "key",
            "20261207T214000Z-9F2C41D0",
            "20261207T214000Z-9f2c41d",
            "2026120XT214000Z-9f2c41d0",
            "../20261207T214000Z-9f2c",
        ] {
            assert!(!is_kid(name), "{name}");
        }
    }
}
