//! `finsec sessions …`: operators' session commands, and how they reach the truth.
//!
//! While the service runs, a user's live sessions are owned by that user's actor in the
//! service's memory; a revocation written to the database behind its back would not bite
//! until the actor reloaded. So these commands act **through the running service's admin
//! API** whenever the service answers, and **on the database directly** only when nothing
//! answers (then no actor holds the sessions, and the next one loads what we wrote). A
//! running service without an admin key is an error, not a silent database write.

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::Settings;
use crate::domain::session::MAX_REVOKE_NOTE as MAX_REASON;
use crate::domain::{Email, Revocation, RevokeReason, Session, UserId};
use crate::store::{self, DynStore, StoreError};

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
    #[error(
        "the service is running at {0} but admin.api_key is not set, so this command cannot act \
         through it; set FINSEC__ADMIN__API_KEY for both"
    )]
    AdminApiOff(String),
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

/// Where the command acts, and what it will say it did.
enum Target {
    Service {
        client: reqwest::Client,
        url: String,
        key: String,
    },
    Database(DynStore),
}

pub struct Outcome<T> {
    pub value: T,
    /// "through the running service" or "in the database".
    pub via: &'static str,
}

pub async fn list(
    settings: &Settings,
    url: Option<String>,
    email: &str,
) -> Result<Outcome<Vec<SessionRow>>, OperatorError> {
    let store = open_store(settings).await?;
    let user = resolve(&store, email).await?;
    match target(settings, url, store).await? {
        Target::Service { client, url, key } => {
            #[derive(Deserialize)]
            struct Listing {
                sessions: Vec<SessionRow>,
            }
            let listing: Listing = service_call(
                client.get(format!("{url}/api/admin/users/{user}/sessions")),
                &url,
                &key,
            )
            .await?;
            Ok(Outcome {
                value: listing.sessions,
                via: "through the running service",
            })
        }
        Target::Database(store) => {
            let mut sessions = store.live_sessions(user, Utc::now()).await?;
            sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
            store.close().await?;
            Ok(Outcome {
                value: sessions.iter().map(row).collect(),
                via: "in the database",
            })
        }
    }
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
    match target(settings, url, store).await? {
        Target::Service { client, url, key } => {
            #[derive(Deserialize)]
            struct Revoked {
                revoked: usize,
            }
            let request = client
                .post(format!("{url}/api/admin/users/{user}/logout-all"))
                .json(&serde_json::json!({ "reason": reason }));
            let revoked: Revoked = service_call(request, &url, &key).await?;
            Ok(Outcome {
                value: revoked.revoked,
                via: "through the running service",
            })
        }
        Target::Database(store) => {
            let ids: Vec<_> = store
                .live_sessions(user, Utc::now())
                .await?
                .iter()
                .map(|s| s.id)
                .collect();
            let revocation = Revocation {
                at: Utc::now(),
                reason: RevokeReason::Admin,
                note: reason,
            };
            store.revoke_sessions(&ids, &revocation).await?;
            store.close().await?;
            Ok(Outcome {
                value: ids.len(),
                via: "in the database",
            })
        }
    }
}

/// The configured database, which must be a real one: the embedded store lives inside the
/// service's process, where this command cannot look up an email.
async fn open_store(settings: &Settings) -> Result<DynStore, OperatorError> {
    if settings.database.is_memory() {
        return Err(OperatorError::Usage(
            "database.url is \"memory\": the embedded store lives inside the service's process, \
             out of this command's reach; use the admin API (docs/API.md) or a MySQL database"
                .into(),
        ));
    }
    Ok(store::connect(settings.database.url.expose_secret(), 1).await?)
}

async fn resolve(store: &DynStore, email: &str) -> Result<UserId, OperatorError> {
    let parsed = Email::parse(email).map_err(|e| OperatorError::Usage(format!("--user {e}")))?;
    let user = store
        .user_by_email(&parsed)
        .await?
        .ok_or_else(|| OperatorError::UnknownUser(email.to_owned()))?;
    Ok(user.id)
}

/// The running service when it answers, else the database; never the database behind the
/// back of a running service.
async fn target(
    settings: &Settings,
    url: Option<String>,
    store: DynStore,
) -> Result<Target, OperatorError> {
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
    let running = client.get(format!("{url}/")).send().await.is_ok();
    if !running {
        return Ok(Target::Database(store));
    }
    store.close().await?;
    match settings.admin.api_key() {
        Some(key) => Ok(Target::Service {
            client,
            url,
            key: key.to_owned(),
        }),
        None => Err(OperatorError::AdminApiOff(url)),
    }
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
        device: crate::http::views::device_label(session.device.user_agent.as_deref()),
    }
}
