//! Typed settings, built once at start and passed down (no global statics, so every test can
//! start a server with its own).
//!
//! Layers, later ones winning: `config/default.toml`, then `config/$FINSEC_ENV.toml` when
//! `FINSEC_ENV` is set, then environment variables `FINSEC__SECTION__KEY`. Secrets are
//! [`SecretString`]s: they never print, not even in a `Debug` of the whole settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::crypto::Keyring;

/// A resource server's introspection secret: as long as the production JWT secret.
const MIN_INTROSPECTION_SECRET_BYTES: usize = 32;

/// The JWT secret shipped in `config/default.toml` for local runs. Production refuses it.
pub const DEMO_JWT_SECRET: &str = "demo-only-jwt-secret-do-not-use-in-production";
/// HS256 keys shorter than this are guessable offline from any token; production refuses them.
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Which overlay was applied (`FINSEC_ENV`); `production` turns on the secret checks.
    #[serde(default = "default_environment")]
    pub environment: String,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub jwt: JwtSettings,
    pub password: PasswordSettings,
    pub auth: AuthSettings,
    pub session: SessionSettings,
    pub admin: AdminSettings,
    pub introspection: IntrospectionSettings,
    pub console: ConsoleSettings,
    pub actors: ActorSettings,
    pub cluster: ClusterSettings,
    pub security: SecuritySettings,
    pub audit: AuditSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served: empty for the main listener, or `host:port` of an
    /// internal address of its own (then the main listener does not serve it).
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Wrong passwords or codes for one account within `failure_window` that lock it.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// Lockouts start at a minute and double up to this.
    #[serde(with = "humantime_serde")]
    pub max_lockout: Duration,
    /// Requests per second per client IP on the endpoints that take credentials (0: off).
    pub ip_rate: u32,
    pub ip_burst: u32,
    #[serde(serialize_with = "masked")]
    pub encryption_key: SecretString,
    #[serde(serialize_with = "masked_all")]
    pub previous_encryption_keys: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Empty: a single node (MySQL named lock). `nats://host:4222`: a cluster member. Secret
    /// because a NATS URL may carry credentials.
    #[serde(serialize_with = "masked")]
    pub bus_url: SecretString,
    /// Prefix of the bus subjects: clusters sharing one NATS server stay apart.
    pub name: String,
    /// How long a node trusts its memory after its last proof of bus and lease; also the
    /// longest a silent member can delay another node's acknowledgement.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A user's row changed straight in SQL is seen by the actors within this long.
    #[serde(with = "humantime_serde")]
    pub user_refresh: Duration,
}

impl ClusterSettings {
    pub fn bus_url(&self) -> Option<&str> {
        Some(self.bus_url.expose_secret()).filter(|url| !url.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    pub body_limit: u64,
    /// A request's headers must arrive within this; also how long a kept-alive connection may
    /// idle before the next request.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The whole request, body and handling included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// At shutdown, in-flight requests may take this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Open connections at most; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// Proxies whose `X-Forwarded-For` names the client (the load balancer's addresses).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `memory` or a `mysql://` URL; secret because the URL carries the password.
    #[serde(serialize_with = "masked")]
    pub url: SecretString,
    pub max_connections: usize,
    /// Every store call answers within this, or the request gets 503.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// This instance's pending-revocation journal: revocations in force whose write has not
    /// committed yet, kept on disk until it does. One file per instance (it is locked).
    pub pending_revocations: std::path::PathBuf,
    /// In a database outage, live sessions keep validating from memory for this long after
    /// the database last answered; then they fail closed (503) until it answers again.
    #[serde(with = "humantime_serde")]
    pub outage_grace: Duration,
}

impl DatabaseSettings {
    pub fn is_memory(&self) -> bool {
        self.url.expose_secret() == "memory"
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    #[serde(serialize_with = "masked")]
    pub secret: SecretString,
    pub issuer: String,
    pub audience: String,
    /// How many verified tokens are remembered, so a token seen again skips the HMAC and
    /// the claims' JSON (expiry is still checked each time); 0 verifies every time.
    pub verified_tokens: usize,
    /// How access tokens are signed; the only algorithm verification accepts.
    pub algorithm: SigningAlgorithm,
    /// The signing keys (`<kid>.pem`, from `finsec keys generate`) for EdDSA and ES256.
    #[serde(default)]
    pub keys_dir: Option<std::path::PathBuf>,
    /// How long a new key is only published (and verifies) before it signs: every instance
    /// must have read it, and resource servers' copies of the JWKS expired, by then.
    #[serde(with = "humantime_serde")]
    pub key_activation: Duration,
}

/// `jwt.algorithm`. EdDSA (Ed25519) or ES256 (ECDSA on P-256): resource servers verify with
/// the public keys of `/.well-known/jwks.json` and hold nothing that can mint a token. HS256:
/// one shared secret signs and verifies (the original service's tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SigningAlgorithm {
    HS256,
    EdDSA,
    ES256,
}

impl SigningAlgorithm {
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    /// The name in a token's header and a JWK's `alg`.
    pub fn jwt_name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordSettings {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
    pub max_concurrent_hashes: usize,
    /// Hashes that may wait for a permit; beyond them a login is refused with 503 `busy`.
    pub max_queued_hashes: usize,
    pub min_length: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub require_mfa_token: bool,
    #[serde(with = "humantime_serde")]
    pub mfa_challenge_ttl: Duration,
    pub mfa_max_attempts: u32,
    pub totp_skew_steps: u8,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub touch_interval: Duration,
    pub max_per_user: usize,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Empty means the admin API is off.
    #[serde(serialize_with = "masked")]
    pub api_key: SecretString,
}

/// RFC 7662 token introspection for resource servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSettings {
    /// The resource servers allowed to ask, each `"id:secret"` (HTTP Basic); none turns
    /// `POST /api/auth/introspect` off (404).
    #[serde(serialize_with = "masked_all")]
    pub clients: Vec<SecretString>,
}

/// An operator's console cookie lives at most this long: it stands for the admin key.
const MAX_OPERATOR_TTL: Duration = Duration::from_secs(12 * 3600);

/// The browser console (`/account/`, `/admin/`; `http::console`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Off: every console path answers 404.
    pub enabled: bool,
    /// Cookies marked `Secure` (and named `__Host-…`): set it whenever the console is
    /// reached over HTTPS, which production requires.
    pub secure_cookies: bool,
    /// How long the console cookie an operator gets for the admin key stays good.
    #[serde(with = "humantime_serde")]
    pub operator_ttl: Duration,
}

impl AdminSettings {
    pub fn api_key(&self) -> Option<&str> {
        Some(self.api_key.expose_secret()).filter(|key| !key.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub revoke_retry: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_passivate: Duration,
    /// An actor with no message for this long stops and leaves its publication to answer
    /// validations alone (see `sessions::published`); at `idle_passivate` or longer, actors
    /// passivate before they would hibernate.
    #[serde(with = "humantime_serde")]
    pub idle_hibernate: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

fn default_environment() -> String {
    "development".to_owned()
}

/// Why the settings could not be built. Each message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        // figment's own message names the key ("for key `http.port`") and the file or env var
        // it came from; flatten it to one line for the operator.
        let message = err.to_string().replace('\n', " ");
        let key = err.path.join(".");
        if key.is_empty() || message.contains(&key) {
            Self::Load(message)
        } else {
            Self::Load(format!("{key}: {message}"))
        }
    }
}

impl Settings {
    /// Loads `dir/default.toml`, the `FINSEC_ENV` overlay and `FINSEC__*` variables from the
    /// process environment.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let environment = std::env::var("FINSEC_ENV").ok();
        Self::from_figment(Self::figment(dir, environment.as_deref()))
    }

    /// The layered sources, before extraction; tests merge their own values on top.
    pub fn figment(dir: &Path, environment: Option<&str>) -> Figment {
        let mut figment = Figment::new().merge(Toml::file_exact(dir.join("default.toml")));
        if let Some(env) = environment {
            figment = figment
                .merge(Toml::file_exact(overlay_path(dir, env)))
                .merge(("environment", env));
        }
        figment.merge(Env::prefixed("FINSEC__").split("__"))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    /// The embedded store on a loopback address: nothing persists and nobody else connects,
    /// so the published demo secrets protect nothing that matters.
    fn is_local_demo(&self) -> bool {
        self.database.is_memory() && is_loopback(&self.http.host)
    }

    /// The keys that seal second-factor secrets: `security.encryption_key` and the previous
    /// ones, or, with no key set, the public demo key: only where the demo JWT secret is
    /// allowed too (the embedded store on a loopback address, never production), since a
    /// secret sealed under a published key is a secret in clear.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        let current = self.security.encryption_key.expose_secret();
        let previous: Vec<String> = self
            .security
            .previous_encryption_keys
            .iter()
            .map(|k| k.expose_secret().to_owned())
            .collect();
        if current.is_empty() {
            if self.is_production() || !self.is_local_demo() {
                return Err(ConfigError::Invalid {
                    key: "security.encryption_key",
                    reason: "is required (32 random bytes, base64; `finsec keys \
                             generate-encryption-key`) everywhere but the embedded store on a \
                             loopback address; set FINSEC__SECURITY__ENCRYPTION_KEY"
                        .into(),
                });
            }
            return Ok(Keyring::demo());
        }
        Keyring::new(current, &previous).map_err(|e| ConfigError::Invalid {
            key: "security.encryption_key",
            reason: e.to_string(),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        let secret = self.jwt.secret.expose_secret();
        if secret.is_empty() {
            return invalid("jwt.secret", "must not be empty");
        }
        if self.is_production() && secret.len() < MIN_PRODUCTION_SECRET_BYTES {
            return invalid("jwt.secret", "must be at least 32 bytes in production");
        }
        for client in &self.introspection.clients {
            let (id, secret) = client.expose_secret().split_once(':').unwrap_or_default();
            if id.is_empty() || secret.len() < MIN_INTROSPECTION_SECRET_BYTES {
                return invalid(
                    "introspection.clients",
                    "each is \"id:secret\", the id not empty and the secret at least 32 bytes",
                );
            }
        }
        if self.jwt.algorithm != SigningAlgorithm::HS256 && self.jwt.keys_dir.is_none() {
            return invalid(
                "jwt.keys_dir",
                "is required with EdDSA and ES256 (make a key with `finsec keys generate --dir DIR`)",
            );
        }
        let url = self.database.url.expose_secret();
        if url != "memory" && !url.starts_with("mysql://") {
            return invalid("database.url", "must be \"memory\" or a mysql:// URL");
        }
        // The demo secret is published in this repository: anyone could mint tokens with it.
        // It is allowed only for the embedded store on a loopback address, i.e. a local demo.
        if secret == DEMO_JWT_SECRET && (self.is_production() || !self.is_local_demo()) {
            return invalid(
                "jwt.secret",
                "is the demo secret from config/default.toml, allowed only for the embedded \
                 store on a loopback address; set FINSEC__JWT__SECRET",
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if scrypt::Params::new(self.password.log_n, self.password.r, self.password.p).is_err()
            || !(1..=20).contains(&self.password.log_n)
        {
            return invalid(
                "password.log_n",
                "scrypt parameters out of range (log_n 1..=20, r and p at least 1)",
            );
        }
        if self.is_production() && self.password.log_n < 15 {
            return invalid(
                "password.log_n",
                "must be at least 15 in production (config/production.toml sets 17)",
            );
        }
        if self.password.max_concurrent_hashes == 0 {
            return invalid("password.max_concurrent_hashes", "must be at least 1");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1");
        }
        if self.http.body_limit == 0 {
            return invalid("http.body_limit", "must be at least 1 byte");
        }
        if self.auth.mfa_max_attempts == 0 {
            return invalid("auth.mfa_max_attempts", "must be at least 1");
        }
        for (key, duration) in [
            ("session.max_lifetime", self.session.max_lifetime),
            ("session.idle_timeout", self.session.idle_timeout),
            ("session.sweep_interval", self.session.sweep_interval),
            ("actors.idle_passivate", self.actors.idle_passivate),
            ("actors.idle_hibernate", self.actors.idle_hibernate),
            ("actors.revoke_retry", self.actors.revoke_retry),
            ("database.timeout", self.database.timeout),
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.request_timeout", self.http.request_timeout),
        ] {
            if duration.is_zero() {
                return invalid(key, "must be longer than zero");
            }
        }
        if self.session.max_per_user == 0 {
            return invalid("session.max_per_user", "must be at least 1");
        }
        if self.password.min_length == 0 {
            return invalid("password.min_length", "must be at least 1");
        }
        if let Some(key) = self.admin.api_key()
            && self.is_production()
            && key.len() < MIN_PRODUCTION_SECRET_BYTES
        {
            return invalid("admin.api_key", "must be at least 32 bytes in production");
        }
        if self.actors.call_timeout.is_zero() {
            return invalid("actors.call_timeout", "must be longer than zero");
        }
        if let Some(url) = self.cluster.bus_url() {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return invalid(
                    "cluster.bus_url",
                    "must be empty or a nats:// or tls:// URL",
                );
            }
            if self.database.is_memory() {
                return invalid(
                    "cluster.bus_url",
                    "needs a shared MySQL database; the embedded store is one process's own",
                );
            }
        }
        let name = &self.cluster.name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid("cluster.name", "must be letters, digits, - or _");
        }
        if self.cluster.lease < Duration::from_millis(100) {
            return invalid("cluster.lease", "must be at least 100ms");
        }
        if self.security.max_failures == 0 {
            return invalid("security.max_failures", "must be at least 1");
        }
        if self.security.failure_window.is_zero() || self.security.max_lockout.is_zero() {
            return invalid(
                "security.failure_window",
                "failure_window and max_lockout must be longer than zero",
            );
        }
        self.keyring()?;
        if self.auth.totp_skew_steps > 3 {
            return invalid(
                "auth.totp_skew_steps",
                "must be 0 to 3 (each step is 30 s either side)",
            );
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return invalid(
                "metrics.listen",
                "must be empty or host:port (an IP address)",
            );
        }
        if self.audit.retention.is_zero() {
            return invalid("audit.retention", "must be longer than zero");
        }
        if self.cluster.user_refresh.is_zero() {
            return invalid("cluster.user_refresh", "must be longer than zero");
        }
        if self.console.operator_ttl.is_zero() || self.console.operator_ttl > MAX_OPERATOR_TTL {
            return invalid("console.operator_ttl", "must be between 1s and 12h");
        }
        Ok(())
    }
}

/// A secret as `config check` prints it: whether it is set, never what it is. (`memory`, the
/// one database URL that holds nothing secret, shows as itself.)
fn masked<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    match secret.expose_secret() {
        "" => serializer.serialize_str(""),
        "memory" => serializer.serialize_str("memory"),
        _ => serializer.serialize_str("<set>"),
    }
}

fn masked_all<S: Serializer>(secrets: &[SecretString], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|_| "<set>"))
}

impl Settings {
    /// Every effective value, secrets masked, as dotted keys (`http.port`): what `finsec
    /// config check` prints and what README's configuration table must list.
    pub fn effective(&self) -> Vec<(String, serde_json::Value)> {
        let mut flat = Vec::new();
        if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(self) {
            for (section, value) in sections {
                match value {
                    serde_json::Value::Object(keys) => {
                        for (key, value) in keys {
                            flat.push((format!("{section}.{key}"), value));
                        }
                    }
                    other => flat.push((section, other)),
                }
            }
        }
        flat.sort_by(|a, b| a.0.cmp(&b.0));
        flat
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn overlay_path(dir: &Path, environment: &str) -> PathBuf {
    dir.join(format!("{environment}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn the_shipped_defaults_load() {
        let settings = Settings::from_figment(Settings::figment(&repo_config(), None)).unwrap();
        assert_eq!(settings.http.port, 5000);
        assert!(settings.database.is_memory());
        assert_eq!(
            settings.session.max_lifetime,
            Duration::from_secs(12 * 3600)
        );
        assert!(!settings.is_production());
    }

    #[test]
    fn introspection_clients_need_an_id_and_a_long_secret_and_key_pairs_a_folder() {
        let with = |clients: Vec<&str>| {
            Settings::from_figment(
                Settings::figment(&repo_config(), None).merge(("introspection.clients", clients)),
            )
        };
        for bad in ["rs1", ":a-secret-of-thirty-two-bytes-or-more", "rs1:short"] {
            let err = with(vec![bad]).unwrap_err().to_string();
            assert!(err.starts_with("introspection.clients:"), "{bad}: {err}");
            assert!(!err.contains("short"), "the value is not echoed: {err}");
        }
        assert!(with(vec!["rs1:a-secret-of-thirty-two-bytes-or-more"]).is_ok());

        let eddsa = Settings::figment(&repo_config(), None).merge(("jwt.algorithm", "EdDSA"));
        let err = Settings::from_figment(eddsa.clone())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("jwt.keys_dir:"), "{err}");
        assert!(Settings::from_figment(eddsa.merge(("jwt.keys_dir", "/somewhere"))).is_ok());
        let unknown = Settings::figment(&repo_config(), None).merge(("jwt.algorithm", "RS256"));
        assert!(Settings::from_figment(unknown).is_err());
    }

    #[test]
    fn production_refuses_the_demo_secret_and_short_secrets() {
        let production = || Settings::figment(&repo_config(), Some("production"));
        let err = Settings::from_figment(production())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("jwt.secret:"), "{err}");

        let short = production().merge(("jwt.secret", "x".repeat(31)));
        let err = Settings::from_figment(short).unwrap_err().to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");

        let no_key = production().merge(("jwt.secret", "x".repeat(32)));
        let err = Settings::from_figment(no_key.clone())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("security.encryption_key:"), "{err}");
        let bad_key = no_key
            .clone()
            .merge(("security.encryption_key", "c2hvcnQ="));
        let err = Settings::from_figment(bad_key).unwrap_err().to_string();
        assert!(err.contains("not base64 for 32 bytes"), "{err}");

        let good = no_key.merge((
            "security.encryption_key",
            crate::crypto::generate_key().unwrap(),
        ));
        let settings = Settings::from_figment(good.clone()).unwrap();
        assert!(settings.is_production());
        assert_eq!(settings.password.log_n, 17);

        let cheap = good.merge(("password.log_n", 14));
        let err = Settings::from_figment(cheap).unwrap_err().to_string();
        assert!(err.starts_with("password.log_n:"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = || Settings::figment(&repo_config(), None);
        let cases = [
            (base().merge(("http.port", "abc")), "http.port"),
            (
                base().merge(("session.max_lifetime", "soon")),
                "session.max_lifetime",
            ),
            (
                base().merge(("database.url", "postgres://x")),
                "database.url",
            ),
            (base().merge(("password.log_n", 0)), "password.log_n"),
            (
                base().merge(("console.operator_ttl", "0s")),
                "console.operator_ttl",
            ),
            (
                base().merge(("console.operator_ttl", "13h")),
                "console.operator_ttl",
            ),
        ];
        for (figment, key) in cases {
            let err = Settings::from_figment(figment).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn the_demo_secret_is_only_for_a_local_embedded_demo() {
        let base = || Settings::figment(&repo_config(), None);
        assert!(
            Settings::from_figment(base()).is_ok(),
            "cargo run stays one command"
        );
        for figment in [
            base().merge(("database.url", "mysql://root@127.0.0.1:3306/finsec")),
            base().merge(("http.host", "0.0.0.0")),
        ] {
            let err = Settings::from_figment(figment).unwrap_err().to_string();
            assert!(err.starts_with("jwt.secret:"), "{err}");
        }
        let mysql_with_secret = base()
            .merge(("database.url", "mysql://root@127.0.0.1:3306/finsec"))
            .merge(("jwt.secret", "y".repeat(40)));
        // The demo encryption key is as public as the demo JWT secret: MySQL needs a real one.
        let err = Settings::from_figment(mysql_with_secret.clone())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("security.encryption_key:"), "{err}");
        let with_key = mysql_with_secret.merge((
            "security.encryption_key",
            crate::crypto::generate_key().unwrap(),
        ));
        assert!(Settings::from_figment(with_key).is_ok());
        assert!(
            Settings::from_figment(base())
                .unwrap()
                .keyring()
                .unwrap()
                .is_demo()
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let base = || Settings::figment(&repo_config(), None);
        let err = Settings::from_figment(base().merge(("http.colour", "blue")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.colour"), "{err}");
        let err = Settings::from_figment(base().merge(("sesion.idle_timeout", "5m")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sesion"), "{err}");
    }

    #[test]
    fn effective_values_mask_every_secret() {
        let settings = Settings::from_figment(
            Settings::figment(&repo_config(), None)
                .merge(("database.url", "mysql://root:hunter2@db:3306/finsec"))
                .merge(("jwt.secret", "s3cret-".repeat(6)))
                .merge(("admin.api_key", "admin-key-value"))
                .merge(("cluster.bus_url", "nats://u:natspw@bus:4222"))
                .merge((
                    "security.encryption_key",
                    crate::crypto::generate_key().unwrap(),
                ))
                .merge((
                    "security.previous_encryption_keys",
                    vec![crate::crypto::generate_key().unwrap()],
                )),
        )
        .unwrap();
        let effective = settings.effective();
        let printed = format!("{effective:?}");
        for secret in ["hunter2", "s3cret-", "admin-key-value", "natspw"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        let value = |key: &str| {
            effective
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{key} listed"))
        };
        assert_eq!(value("database.url"), "<set>");
        assert_eq!(value("http.port"), 5000);
        assert_eq!(value("session.idle_timeout"), "15m");
        assert_eq!(
            value("security.previous_encryption_keys"),
            serde_json::json!(["<set>"])
        );
    }

    /// README's configuration table is the reference: it lists every key there is and no key
    /// there is not (rows may name several keys: `http.host`, `http.port` or `password.log_n`,
    /// `.r`, `.p`).
    #[test]
    fn the_readme_documents_exactly_the_settings() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("## Configuration")
            .expect("a Configuration section");
        let mut documented = std::collections::BTreeSet::new();
        for line in readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| key"))
        {
            if !line.starts_with('|') {
                break;
            }
            let cell = line.split('|').nth(1).unwrap_or_default();
            let mut section = String::new();
            for name in cell.split(',').map(|n| n.trim().trim_matches('`')) {
                if let Some(key) = name.strip_prefix('.') {
                    documented.insert(format!("{section}.{key}"));
                } else if let Some((s, _)) = name.split_once('.') {
                    section = s.to_owned();
                    documented.insert(name.to_owned());
                }
            }
        }
        let settings = Settings::from_figment(Settings::figment(&repo_config(), None)).unwrap();
        let actual: std::collections::BTreeSet<String> = settings
            .effective()
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| key != "environment")
            .collect();
        let missing: Vec<_> = actual.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&actual).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "README configuration table: missing {missing:?}, not settings {stale:?}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let settings = Settings::from_figment(Settings::figment(&repo_config(), None)).unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains(DEMO_JWT_SECRET));
    }
}
