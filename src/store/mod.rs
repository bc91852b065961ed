//! Persistence. [`SessionStore`] is everything the service keeps: users, their sessions and
//! their TOTP replay guard. Two implementations: [`MySqlStore`] for deployments and
//! [`MemoryStore`] for the embedded default; `tests/store_conformance.rs` holds both to the
//! same contract. This layer imports nothing above `domain`.

mod memory;
mod mysql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Email, NewUser, Revocation, Session, SessionId, User, UserId};

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

    /// One session, live or ended (operators and tests read ended ones).
    async fn session_by_id(&self, id: SessionId) -> Result<Option<Session>, StoreError>;

    /// Records the latest activity of a live session (idle expiry reads it after a restart).
    async fn touch_session(
        &self,
        id: SessionId,
        last_seen_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Marks sessions revoked, all in one write. Idempotent: a session already revoked keeps
    /// its first `revoked_at`, reason and note, and unknown ids are ignored, so a retried
    /// write can never fail on what the first attempt did.
    async fn revoke_sessions(
        &self,
        ids: &[SessionId],
        revocation: &Revocation,
    ) -> Result<(), StoreError>;

    /// The sweep: revokes every live session past its absolute end (`max_lifetime`) or last
    /// seen at or before `idle_cutoff` (`idle_timeout`). Returns how many it ended.
    async fn expire_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Deletes session rows that ended before `ended_before` (retention). Returns the count.
    async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError>;

    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), StoreError>;

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
