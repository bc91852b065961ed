//! What each `finsec` subcommand does, given loaded settings.

use secrecy::ExposeSecret;

use crate::auth::PasswordHasher;
use crate::config::Settings;
use crate::operator::{self, OperatorError};
use crate::seed;
use crate::startup::{Application, StartupError, open_keyring, shutdown_signal};
use crate::store::{self, MySqlStore, SessionStore};

pub async fn serve(settings: &Settings) -> Result<(), StartupError> {
    let app = Application::build(settings).await?;
    let lost = app.database_lost();
    app.run_until_stopped(shutdown_signal()).await;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(StartupError::DatabaseInUse(
            "another instance took this database while this one ran; stopped".into(),
        ));
    }
    Ok(())
}

pub async fn migrate(settings: &Settings) -> Result<(), StartupError> {
    if settings.database.is_memory() {
        println!("database.url is \"memory\": nothing to migrate");
        return Ok(());
    }
    let store = MySqlStore::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await?;
    store.migrate().await?;
    // V6's second half: SQL cannot encrypt under a key the database never sees.
    let sealed = store.reseal_secrets(&open_keyring(settings)?, true).await?;
    store.close().await?;
    println!("migrations applied; {sealed} TOTP secret(s) found in clear encrypted");
    Ok(())
}

pub async fn seed(settings: &Settings, i_know_demo: bool) -> Result<(), StartupError> {
    if settings.is_production() && !i_know_demo {
        return Err(StartupError::Config {
            key: "seed",
            reason: "the demo users' passwords and TOTP secrets are public (sql/seed); refused \
                     under FINSEC_ENV=production unless --i-know-demo is given"
                .into(),
        });
    }
    if settings.database.is_memory() {
        println!("database.url is \"memory\": `finsec serve` seeds these users itself at start");
    }
    let store = store::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await?;
    let hasher = PasswordHasher::new(&settings.password).await?;
    let keyring = open_keyring(settings)?;
    for line in seed::ensure_demo_users(store.as_ref(), &hasher, &keyring).await? {
        println!("{line}");
    }
    store.close().await?;
    Ok(())
}

pub fn check_config(settings: &Settings) -> Result<(), StartupError> {
    let database = if settings.database.is_memory() {
        "memory"
    } else {
        "mysql"
    };
    println!(
        "configuration ok: environment={} listen={}:{} database={} mfa_token_required={}",
        settings.environment,
        settings.http.host,
        settings.http.port,
        database,
        settings.auth.require_mfa_token
    );
    // Every effective value, after files and environment; secrets only as set or not.
    for (key, value) in settings.effective() {
        println!("{key} = {value}");
    }
    Ok(())
}

pub async fn sessions_list(settings: &Settings, email: &str) -> Result<(), OperatorError> {
    let outcome = operator::list(settings, email).await?;
    println!(
        "{} live session(s) of {email}, read {}",
        outcome.value.len(),
        outcome.via
    );
    for s in outcome.value {
        println!(
            "{}  created {}  last seen {}  expires {}  {}  {}",
            s.id,
            s.created_at,
            s.last_seen_at,
            s.expires_at,
            s.ip.as_deref().unwrap_or("-"),
            s.device
        );
    }
    Ok(())
}

pub async fn sessions_revoke_all(
    settings: &Settings,
    url: Option<String>,
    email: &str,
    reason: Option<String>,
) -> Result<(), OperatorError> {
    let outcome = operator::revoke_all(settings, url, email, reason).await?;
    println!(
        "revoked {} session(s) of {email} {}",
        outcome.value, outcome.via
    );
    Ok(())
}

/// `finsec keys generate-encryption-key`.
pub fn generate_encryption_key() -> Result<(), StartupError> {
    let key = crate::crypto::generate_key().map_err(|e| StartupError::Config {
        key: "security.encryption_key",
        reason: e.to_string(),
    })?;
    println!("{key}");
    Ok(())
}

/// `finsec keys generate`: a new token signing key in `dir` (or `jwt.keys_dir`).
pub fn generate_signing_key(
    settings: &Settings,
    dir: Option<std::path::PathBuf>,
    algorithm: Option<String>,
) -> Result<(), StartupError> {
    use crate::config::SigningAlgorithm;
    let invalid = |key, reason: &str| StartupError::Config {
        key,
        reason: reason.to_owned(),
    };
    let algorithm = match algorithm.as_deref() {
        Some("EdDSA") => SigningAlgorithm::EdDSA,
        Some("ES256") => SigningAlgorithm::ES256,
        Some(_) => return Err(invalid("--algorithm", "EdDSA or ES256")),
        None if settings.jwt.algorithm == SigningAlgorithm::ES256 => SigningAlgorithm::ES256,
        None => SigningAlgorithm::EdDSA,
    };
    let dir = dir
        .or_else(|| settings.jwt.keys_dir.clone())
        .ok_or_else(|| invalid("--dir", "name the folder (or set jwt.keys_dir)"))?;
    let path = crate::auth::keys::generate(&dir, algorithm, chrono::Utc::now())?;
    println!("{}", path.display());
    Ok(())
}

/// `finsec keys rotate`: every secret sealed under an older key is re-sealed under the
/// current one.
pub async fn rotate_keys(settings: &Settings) -> Result<(), StartupError> {
    if settings.database.is_memory() {
        println!("database.url is \"memory\": nothing is at rest to re-encrypt");
        return Ok(());
    }
    let keyring = open_keyring(settings)?;
    let store = store::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await?;
    let resealed = store.reseal_secrets(&keyring, false).await;
    store.close().await?;
    let resealed = resealed?;
    println!(
        "{resealed} secret(s) re-encrypted under key {}; keys listed in \
         security.previous_encryption_keys may now be removed",
        keyring.current_id()
    );
    Ok(())
}
