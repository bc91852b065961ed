//! `finsec sessions …`: operators' session commands, and how they reach the truth.
//!
//! MySQL is the truth, so both commands work on it; what matters is that a revocation is in
//! force in every running service's memory when the command says it is done:
//!
//! - **with `cluster.bus_url`** the command revokes in one transaction, then publishes the same
//!   invalidation the services publish and waits for the same confirmations from every live
//!   node (see `cluster`). It prints success only after that.
//! - **without a bus** it may write only while no service runs on the database: it takes the
//!   single-node lock itself (so none can start meanwhile) and refuses when clustered nodes
//!   are live. When a single-node service holds the lock, the command goes through that
//!   service's admin API if it answers at `--url` with `admin.api_key`, and refuses otherwise.
//!
//! `list` only reads MySQL (a running node may hold fresher "last seen" times, never other
//! sessions).

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::cluster::{Cluster, ClusterConfig, ClusterError, ClusterEvent};
use crate::config::Settings;
use crate::domain::session::MAX_REVOKE_NOTE as MAX_REASON;
use crate::domain::{Email, Initiator, Origin, Revocation, RevokeReason, Session, UserId};
use crate::store::{CLUSTER_PRESENCE, MySqlStore, SessionStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Usage(String),
    #[error("no user with email {0}")]
    UnknownUser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the service at {url} answered: {message}")]
    Service { url: String, message: String },
    /// Written to MySQL, but the running nodes could not be told: not done.
    #[error(
        "the revocation is committed in MySQL, but the cluster did not confirm it ({0}); the \
         sessions may still be accepted by a running node: run the command again"
    )]
    NotConfirmed(ClusterError),
    #[error("cluster bus: {0}")]
    Bus(ClusterError),
    #[error("{0}")]
    Refused(String),
}

/// A session as the admin API returns it.
#[derive(Debug, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub ip: Option<String>,
    pub device: String,
}

pub struct Outcome<T> {
    pub value: T,
    /// How it was done: "in the database", "through the running service", "confirmed by …".
    pub via: String,
}

pub async fn list(
    settings: &Settings,
    email: &str,
) -> Result<Outcome<Vec<SessionRow>>, OperatorError> {
    let store = open_store(settings).await?;
    let user = resolve(&store, email).await?;
    let mut sessions = store.live_sessions(user, Utc::now()).await?;
    sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    store.close().await?;
    Ok(Outcome {
        value: sessions.iter().map(row).collect(),
        via: "in the database".into(),
    })
}

pub async fn revoke_all(
    settings: &Settings,
    url: Option<String>,
    email: &str,
    reason: Option<String>,
) -> Result<Outcome<usize>, OperatorError> {
    // The same bound the admin API applies (the column's width), checked before any work.
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(OperatorError::Usage(format!(
            "--reason must be at most {MAX_REASON} characters"
        )));
    }
    let store = open_store(settings).await?;
    let user = resolve(&store, email).await?;
    let origin = Origin {
        initiator: Initiator::Operator,
        node: Some("cli".to_owned()),
        ..Origin::default()
    };
    let revocation = Revocation::new(Utc::now(), RevokeReason::Admin)
        .with_note(reason.clone())
        .by(origin);
    let outcome = match settings.cluster.bus_url() {
        Some(bus_url) => revoke_on_cluster(settings, bus_url, &store, user, &revocation).await,
        None => revoke_alone(settings, url, &store, user, &revocation).await,
    };
    let _ = store.close().await;
    outcome
}

/// With a bus: commit, then the same confirmations a service waits for.
async fn revoke_on_cluster(
    settings: &Settings,
    bus_url: &str,
    store: &MySqlStore,
    user: UserId,
    revocation: &Revocation,
) -> Result<Outcome<usize>, OperatorError> {
    let config = ClusterConfig {
        bus_url: bus_url.to_owned(),
        name: settings.cluster.name.clone(),
        lease: settings.cluster.lease,
    };
    if store.single_node_lock_is_held().await? {
        return Err(OperatorError::Refused(
            "a single-node instance (no cluster.bus_url) holds this database; it does not \
             hear the bus: use its admin API, or stop it"
                .into(),
        ));
    }
    let cluster = Cluster::client(&config, store.clone())
        .await
        .map_err(OperatorError::Bus)?;
    let ids = store.revoke_user_sessions(user, None, revocation).await?;
    let count = ids.len();
    // Nothing left to revoke (a rerun after an unconfirmed attempt): the nodes still reload
    // the user from MySQL, so whatever the first attempt committed is in force everywhere.
    let event = if ids.is_empty() {
        ClusterEvent::UserChanged { user }
    } else {
        ClusterEvent::SessionsEnded { user, ids }
    };
    let confirmed = cluster.confirm(event).await;
    cluster.leave().await;
    confirmed.map_err(OperatorError::NotConfirmed)?;
    Ok(Outcome {
        value: count,
        via: "in the database, confirmed by every live node".into(),
    })
}

/// Without a bus: only while no service runs on the database, or through the one that does.
async fn revoke_alone(
    settings: &Settings,
    url: Option<String>,
    store: &MySqlStore,
    user: UserId,
    revocation: &Revocation,
) -> Result<Outcome<usize>, OperatorError> {
    match store.hold_single_node_lock().await? {
        Some(lock) => {
            // Lock first, then look for clustered nodes: the order a single-node start uses.
            if store.cluster_recently_seen(CLUSTER_PRESENCE).await? {
                lock.release().await;
                return Err(OperatorError::Refused(
                    "clustered instances are running on this database: set cluster.bus_url \
                     (e.g. FINSEC__CLUSTER__BUS_URL) so that they confirm the revocation"
                        .into(),
                ));
            }
            // No service can start while we hold it, and none is running.
            let ids = store.revoke_user_sessions(user, None, revocation).await;
            lock.release().await;
            Ok(Outcome {
                value: ids?.len(),
                via: "in the database (no service was running)".into(),
            })
        }
        None => {
            let revoked = through_service(settings, url, user, revocation).await?;
            Ok(Outcome {
                value: revoked,
                via: "through the running service".into(),
            })
        }
    }
}

/// A single-node service holds the database: its admin API is the only way in.
async fn through_service(
    settings: &Settings,
    url: Option<String>,
    user: UserId,
    revocation: &Revocation,
) -> Result<usize, OperatorError> {
    let refused = |why: &str| {
        OperatorError::Refused(format!(
            "a running service holds this database and {why}, so this command will not write \
             behind its back; set admin.api_key (FINSEC__ADMIN__API_KEY) for both and --url to \
             reach it, or use cluster.bus_url"
        ))
    };
    let Some(key) = settings.admin.api_key() else {
        return Err(refused("admin.api_key is not set"));
    };
    let url = url.unwrap_or_else(|| {
        let host = match settings.http.host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            host => host,
        };
        format!("http://{host}:{}", settings.http.port)
    });
    let url = url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| OperatorError::Usage(e.to_string()))?;
    if client.get(format!("{url}/")).send().await.is_err() {
        return Err(refused(&format!("does not answer at {url}")));
    }
    #[derive(Deserialize)]
    struct Revoked {
        revoked: usize,
    }
    let request = client
        .post(format!("{url}/api/admin/users/{user}/logout-all"))
        .json(&serde_json::json!({ "reason": revocation.note }));
    let revoked: Revoked = service_call(request, &url, key).await?;
    Ok(revoked.revoked)
}

/// The configured database, which must be a real one: the embedded store lives inside the
/// service's process, where this command cannot look up an email.
async fn open_store(settings: &Settings) -> Result<MySqlStore, OperatorError> {
    if settings.database.is_memory() {
        return Err(OperatorError::Usage(
            "database.url is \"memory\": the embedded store lives inside the service's process, \
             out of this command's reach; use the admin API (docs/API.md) or a MySQL database"
                .into(),
        ));
    }
    let store = MySqlStore::connect(settings.database.url.expose_secret(), 2).await?;
    store.migrate().await?;
    Ok(store)
}

async fn resolve(store: &MySqlStore, email: &str) -> Result<UserId, OperatorError> {
    let parsed = Email::parse(email).map_err(|e| OperatorError::Usage(format!("--user {e}")))?;
    let user = store
        .user_by_email(&parsed)
        .await?
        .ok_or_else(|| OperatorError::UnknownUser(email.to_owned()))?;
    Ok(user.id)
}

async fn service_call<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
    key: &str,
) -> Result<T, OperatorError> {
    let failed = |message: String| OperatorError::Service {
        url: url.to_owned(),
        message,
    };
    let response = request
        .header("x-admin-key", key)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("unexpected answer");
        return Err(failed(format!("{status}: {error}")));
    }
    serde_json::from_value(body).map_err(|e| failed(e.to_string()))
}

fn row(session: &Session) -> SessionRow {
    SessionRow {
        id: session.id.to_string(),
        created_at: session.created_at.to_rfc3339(),
        last_seen_at: session.last_seen_at.to_rfc3339(),
        expires_at: session.expires_at.to_rfc3339(),
        ip: session.device.ip.clone(),
        device: crate::http::views::device_label(session.device.user_agent.as_deref()).to_string(),
    }
}
