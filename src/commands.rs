//! What each `finsec` subcommand does, given loaded settings.

use secrecy::ExposeSecret;

use crate::auth::PasswordHasher;
use crate::config::Settings;
use crate::seed;
use crate::startup::{Application, StartupError, shutdown_signal};
use crate::store::{self, MySqlStore, SessionStore};

pub async fn serve(settings: &Settings) -> Result<(), StartupError> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await;
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
    store.close().await?;
    println!("migrations applied");
    Ok(())
}

pub async fn seed(settings: &Settings) -> Result<(), StartupError> {
    if settings.database.is_memory() {
        println!("database.url is \"memory\": `finsec serve` seeds these users itself at start");
    }
    let store = store::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await?;
    let hasher = PasswordHasher::new(&settings.password).await?;
    for line in seed::ensure_demo_users(store.as_ref(), &hasher).await? {
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
    Ok(())
}
