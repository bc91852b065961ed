//! Persistence. [`SessionStore`] is everything the service keeps: users, their sessions and
//! their TOTP replay guard. Two implementations: [`MySqlStore`] for deployments and
//! [`MemoryStore`] for the embedded default; `tests/store_conformance.rs` holds both to the
//! same contract. This layer imports nothing above `domain`.

mod memory;
mod mysql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Email, NewUser, RevokeReason, Session, SessionId, User, UserId};

pub use memory::MemoryStore;
pub use mysql::MySqlStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed the query; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A uniqueness rule was broken (an email already taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row could not be turned back into domain values: a bug or a hand-edited row.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Releases connections at shutdown. Nothing to do for stores without any.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;

    /// Creates a user; [`StoreError::Conflict`] when the email is taken.
    async fn insert_user(&self, user: NewUser) -> Result<User, StoreError>;

    /// The user's sessions that are neither revoked nor past `expires_at` at `now`.
    async fn live_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError>;

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;

    /// Marks a session revoked. Idempotent: revoking a revoked session keeps the first
    /// `revoked_at` and reason, and is not an error (a retried write must not fail).
    async fn revoke_session(
        &self,
        id: SessionId,
        at: DateTime<Utc>,
        reason: RevokeReason,
    ) -> Result<(), StoreError>;

    /// Records `step` as the user's newest accepted TOTP step, only if it is newer than the
    /// stored one. Returns false when it is not (the code was already used), so that even two
    /// service instances racing on one code accept it once.
    async fn advance_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError>;
}

pub type DynStore = Arc<dyn SessionStore>;

/// Opens the store named by `database.url`, running migrations for MySQL.
pub async fn connect(url: &str, max_connections: usize) -> Result<DynStore, StoreError> {
    if url == "memory" {
        Ok(Arc::new(MemoryStore::new()))
    } else {
        let store = MySqlStore::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    }
}
