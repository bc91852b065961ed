//! The embedded store: everything in process memory, gone at exit. It exists so that
//! `cargo run` works with no database, and it keeps the same contract as MySQL (the
//! conformance suite runs against both).
//!
//! A std `Mutex`, not a tokio one: no `.await` happens while it is held, and every
//! critical section is a few map operations.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SessionStore, StoreError};
use crate::domain::{Email, NewUser, RevokeReason, Session, SessionId, User, UserId};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    next_user_id: u64,
    users: HashMap<UserId, User>,
    sessions: HashMap<SessionId, Session>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is a
        // single insert), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        Ok(self
            .tables()
            .users
            .values()
            .find(|u| &u.email == email)
            .cloned())
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.tables().users.get(&id).cloned())
    }

    async fn insert_user(&self, new: NewUser) -> Result<User, StoreError> {
        let mut tables = self.tables();
        if tables.users.values().any(|u| u.email == new.email) {
            return Err(StoreError::Conflict(format!(
                "email {} is taken",
                new.email
            )));
        }
        tables.next_user_id += 1;
        let now = Utc::now();
        let user = User {
            id: UserId::new(tables.next_user_id),
            email: new.email,
            password_hash: new.password_hash,
            first_name: new.first_name,
            last_name: new.last_name,
            preferred_name: None,
            phone_number: new.phone_number,
            address: None,
            is_active: new.is_active,
            mfa_enabled: new.mfa_enabled,
            totp_secret: new.totp_secret,
            totp_last_step: None,
            created_at: now,
            updated_at: now,
        };
        tables.users.insert(user.id, user.clone());
        Ok(user)
    }

    async fn live_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        Ok(self
            .tables()
            .sessions
            .values()
            .filter(|s| s.user_id == user && s.is_live(now))
            .cloned()
            .collect())
    }

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut tables = self.tables();
        if !tables.users.contains_key(&session.user_id) {
            return Err(StoreError::Conflict(format!("no user {}", session.user_id)));
        }
        if tables.sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict(format!(
                "session {} exists",
                session.id
            )));
        }
        tables.sessions.insert(session.id, session.clone());
        Ok(())
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        at: DateTime<Utc>,
        reason: RevokeReason,
    ) -> Result<(), StoreError> {
        if let Some(session) = self.tables().sessions.get_mut(&id)
            && session.revoked_at.is_none()
        {
            session.revoked_at = Some(at);
            session.revoke_reason = Some(reason);
        }
        Ok(())
    }

    async fn advance_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let Some(user) = tables.users.get_mut(&user) else {
            return Ok(false);
        };
        if user.totp_last_step.is_some_and(|last| last >= step) {
            return Ok(false);
        }
        user.totp_last_step = Some(step);
        Ok(true)
    }
}
