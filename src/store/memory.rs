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

use super::{
    FactorChange, FactorOutcome, LoginCommit, LoginGate, SessionStore, StoreError, StoredChallenge,
};
use crate::crypto::Keyring;
use crate::domain::{
    AuthEvent, Email, FailureRule, HashedCode, Lockout, NewUser, Origin, RecordedEvent, Revocation,
    RevokeReason, SealedSecret, Session, SessionId, User, UserId,
};

/// A recovery code and when it was used.
type RecoveryRow = (HashedCode, Option<DateTime<Utc>>);

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    next_user_id: u64,
    users: HashMap<UserId, User>,
    sessions: HashMap<SessionId, Session>,
    challenges: HashMap<UserId, Vec<StoredChallenge>>,
    failures: HashMap<[u8; 32], (Lockout, DateTime<Utc>)>,
    recovery: HashMap<UserId, Vec<RecoveryRow>>,
    events: Vec<RecordedEvent>,
    /// Like AUTO_INCREMENT: ids are never reused, even after the oldest are pruned.
    last_event_id: u64,
}

impl Tables {
    /// The user's live sessions but `except`, least recently used first (MySQL's order).
    fn live_ids(
        &self,
        user: UserId,
        except: Option<SessionId>,
        now: DateTime<Utc>,
    ) -> Vec<SessionId> {
        let mut live: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| s.user_id == user && s.is_live(now) && Some(s.id) != except)
            .collect();
        live.sort_by_key(|s| (s.last_seen_at, s.created_at));
        live.into_iter().map(|s| s.id).collect()
    }

    /// Ends each of `ids` still live, with a `session_ended` event for each it ended.
    fn revoke_all(&mut self, ids: &[SessionId], revocation: &Revocation) {
        for id in ids {
            if let Some(session) = self.sessions.get_mut(id)
                && session.revoked_at.is_none()
            {
                revoke(session, revocation);
                let event = AuthEvent::session_ended(session.user_id, *id, revocation);
                self.record(event);
            }
        }
    }

    fn record(&mut self, event: AuthEvent) {
        self.last_event_id += 1;
        let id = self.last_event_id;
        self.events.push(RecordedEvent { id, event });
    }

    fn caller_live(&self, user: UserId, keep: SessionId, at: DateTime<Utc>) -> bool {
        self.sessions
            .get(&keep)
            .is_some_and(|s| s.user_id == user && s.is_live(at))
    }
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
            totp_pending: None,
            totp_pending_at: None,
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

    async fn open_session_within_limit(
        &self,
        session: &Session,
        max_live: usize,
        gate: &LoginGate,
        event: &AuthEvent,
    ) -> Result<Option<LoginCommit>, StoreError> {
        // One lock for the whole step: the same atomicity as MySQL's transaction.
        let mut tables = self.tables();
        let Some(account) = tables.users.get(&session.user_id) else {
            return Err(StoreError::Conflict(format!("no user {}", session.user_id)));
        };
        if !account.is_active
            || account.mfa_enabled != gate.mfa_enabled
            || gate
                .password_hash
                .as_ref()
                .is_some_and(|h| *h != account.password_hash)
        {
            return Ok(None);
        }
        if tables.sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict(format!(
                "session {} exists",
                session.id
            )));
        }
        let live = tables.live_ids(session.user_id, None, session.created_at);
        let excess = (live.len() + 1).saturating_sub(max_live.max(1));
        let evicted = live[..excess].to_vec();
        tables.revoke_all(
            &evicted,
            &Revocation::new(session.created_at, RevokeReason::SessionLimit)
                .by(event.origin.clone()),
        );
        tables.sessions.insert(session.id, session.clone());
        tables.record(event.clone());
        let live = tables
            .live_ids(session.user_id, None, session.created_at)
            .iter()
            .filter_map(|id| tables.sessions.get(id).cloned())
            .collect();
        Ok(Some(LoginCommit {
            ended: evicted,
            live,
        }))
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        except: Option<SessionId>,
        revocation: &Revocation,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tables = self.tables();
        let ids = tables.live_ids(user, except, revocation.at);
        tables.revoke_all(&ids, revocation);
        tables.challenges.remove(&user);
        Ok(ids)
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let mut tables = self.tables();
        if !tables.users.contains_key(&user) {
            return Err(StoreError::Conflict(format!("no user {user}")));
        }
        if !tables.caller_live(user, keep, revocation.at) {
            return Ok(None);
        }
        if let Some(account) = tables.users.get_mut(&user) {
            account.password_hash = password_hash.to_owned();
            account.updated_at = revocation.at;
        }
        let ids = tables.live_ids(user, Some(keep), revocation.at);
        tables.revoke_all(&ids, revocation);
        tables.challenges.remove(&user);
        tables.record(event.clone());
        Ok(Some(ids))
    }

    async fn set_user_active(
        &self,
        user: UserId,
        active: bool,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let mut tables = self.tables();
        let Some(account) = tables.users.get_mut(&user) else {
            return Ok(None);
        };
        account.is_active = active;
        account.updated_at = revocation.at;
        let ids = if active {
            Vec::new()
        } else {
            let ids = tables.live_ids(user, None, revocation.at);
            tables.revoke_all(&ids, revocation);
            tables.challenges.remove(&user);
            ids
        };
        tables.record(event.clone());
        Ok(Some(ids))
    }

    async fn end_if_idle(
        &self,
        id: SessionId,
        idle_cutoff: DateTime<Utc>,
        revocation: &Revocation,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let idle = tables
            .sessions
            .get(&id)
            .is_some_and(|s| s.revoked_at.is_none() && s.last_seen_at <= idle_cutoff);
        if idle {
            tables.revoke_all(&[id], revocation);
        }
        Ok(idle)
    }

    async fn set_pending_totp(
        &self,
        user: UserId,
        pending: &SealedSecret,
        event: &AuthEvent,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let Some(account) = tables.users.get_mut(&user).filter(|a| !a.mfa_enabled) else {
            return Ok(false);
        };
        account.totp_pending = Some(pending.clone());
        account.totp_pending_at = Some(event.at);
        account.updated_at = event.at;
        tables.record(event.clone());
        Ok(true)
    }

    async fn change_factor(
        &self,
        user: UserId,
        change: &FactorChange,
        keep: SessionId,
        end_others: Option<&Revocation>,
        event: &AuthEvent,
    ) -> Result<FactorOutcome, StoreError> {
        let mut tables = self.tables();
        if !tables.users.contains_key(&user) {
            return Ok(FactorOutcome::Stale);
        }
        if !tables.caller_live(user, keep, event.at) {
            return Ok(FactorOutcome::CallerEnded);
        }
        let Some(account) = tables.users.get_mut(&user) else {
            return Ok(FactorOutcome::Stale);
        };
        let codes = match change {
            FactorChange::Enable {
                pending,
                step,
                codes,
            } => {
                if account.mfa_enabled || account.totp_pending.as_ref() != Some(pending) {
                    return Ok(FactorOutcome::Stale);
                }
                account.mfa_enabled = true;
                account.totp_secret = account.totp_pending.take();
                account.totp_pending_at = None;
                account.totp_last_step = Some(account.totp_last_step.unwrap_or(0).max(*step));
                codes.clone()
            }
            FactorChange::Disable => {
                if !account.mfa_enabled {
                    return Ok(FactorOutcome::Stale);
                }
                account.mfa_enabled = false;
                account.totp_secret = None;
                account.totp_pending = None;
                account.totp_pending_at = None;
                Vec::new()
            }
            FactorChange::NewRecoveryCodes(codes) => {
                if !account.mfa_enabled {
                    return Ok(FactorOutcome::Stale);
                }
                codes.clone()
            }
        };
        account.updated_at = event.at;
        tables
            .recovery
            .insert(user, codes.into_iter().map(|c| (c, None)).collect());
        let ended = match end_others {
            Some(revocation) => {
                let ids = tables.live_ids(user, Some(keep), event.at);
                tables.revoke_all(&ids, revocation);
                ids
            }
            None => Vec::new(),
        };
        tables.challenges.remove(&user);
        tables.record(event.clone());
        Ok(FactorOutcome::Changed(ended))
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<Vec<HashedCode>, StoreError> {
        Ok(self
            .tables()
            .recovery
            .get(&user)
            .map(|codes| {
                codes
                    .iter()
                    .filter(|(_, used)| used.is_none())
                    .map(|(code, _)| code.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn spend_recovery_code(
        &self,
        user: UserId,
        code: &HashedCode,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let stored = tables
            .recovery
            .get_mut(&user)
            .and_then(|codes| codes.iter_mut().find(|(c, _)| c == code));
        match stored {
            Some((_, used @ None)) => {
                *used = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        self.tables().record(event.clone());
        Ok(())
    }

    async fn events_of(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .tables()
            .events
            .iter()
            .rev()
            .filter(|e| e.event.user_id == Some(user) && before.is_none_or(|b| e.id < b))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tables = self.tables();
        let count = tables.events.len();
        tables.events.retain(|e| e.event.at >= before);
        Ok((count - tables.events.len()) as u64)
    }

    async fn reseal_secrets(&self, keyring: &Keyring, clear_only: bool) -> Result<u64, StoreError> {
        if clear_only {
            // Nothing here was ever in clear: secrets arrive sealed.
            return Ok(0);
        }
        let mut tables = self.tables();
        let mut sealed = 0;
        for user in tables.users.values_mut() {
            for secret in [&mut user.totp_secret, &mut user.totp_pending]
                .into_iter()
                .flatten()
            {
                if let Some(new) = keyring
                    .reseal(crate::crypto::Purpose::Totp, secret)
                    .map_err(|e| StoreError::Corrupt(format!("user {}: {e}", user.id)))?
                {
                    *secret = new;
                    sealed += 1;
                }
            }
        }
        Ok(sealed)
    }

    async fn put_mfa_challenge(
        &self,
        user: UserId,
        challenge: &StoredChallenge,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut tables = self.tables();
        if !tables.users.contains_key(&user) {
            return Err(StoreError::Conflict(format!("no user {user}")));
        }
        let pending = tables.challenges.entry(user).or_default();
        pending.push(challenge.clone());
        pending.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        pending.truncate(keep);
        Ok(())
    }

    async fn mfa_challenge(
        &self,
        user: UserId,
        token_hash: Option<&[u8; 32]>,
    ) -> Result<Option<StoredChallenge>, StoreError> {
        let tables = self.tables();
        let pending = tables
            .challenges
            .get(&user)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(match token_hash {
            Some(hash) => pending.iter().find(|c| &c.token_hash == hash).cloned(),
            None => pending.iter().max_by_key(|c| c.created_at).cloned(),
        })
    }

    async fn count_mfa_failure(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
        max_failures: u32,
    ) -> Result<u32, StoreError> {
        let mut tables = self.tables();
        let Some(pending) = tables.challenges.get_mut(&user) else {
            return Ok(0);
        };
        let Some(challenge) = pending.iter_mut().find(|c| &c.token_hash == token_hash) else {
            return Ok(0);
        };
        challenge.failures += 1;
        let failures = challenge.failures;
        if failures >= max_failures {
            pending.retain(|c| &c.token_hash != token_hash);
            return Ok(0);
        }
        Ok(failures)
    }

    async fn take_mfa_challenge(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let Some(pending) = tables.challenges.get_mut(&user) else {
            return Ok(false);
        };
        let before = pending.len();
        pending.retain(|c| &c.token_hash != token_hash);
        Ok(pending.len() < before)
    }

    async fn failure_record(&self, key: &[u8; 32]) -> Result<Option<Lockout>, StoreError> {
        Ok(self.tables().failures.get(key).map(|(record, _)| *record))
    }

    async fn record_failure(
        &self,
        key: &[u8; 32],
        rule: &FailureRule,
        now: DateTime<Utc>,
    ) -> Result<Lockout, StoreError> {
        let mut tables = self.tables();
        let previous = tables.failures.get(key).map(|(record, _)| *record);
        let record = rule.fail(previous, now);
        tables.failures.insert(*key, (record, now));
        Ok(record)
    }

    async fn clear_failures(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.tables().failures.remove(key);
        Ok(())
    }

    async fn prune_failures(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tables = self.tables();
        let count = tables.failures.len();
        tables.failures.retain(|_, (_, updated)| *updated >= before);
        Ok((count - tables.failures.len()) as u64)
    }

    async fn session_by_id(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.tables().sessions.get(&id).cloned())
    }

    async fn touch_session(
        &self,
        id: SessionId,
        last_seen_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(session) = self.tables().sessions.get_mut(&id)
            && session.revoked_at.is_none()
        {
            // Newest wins, as with MySQL's GREATEST: touches from several views never go back.
            session.last_seen_at = session.last_seen_at.max(last_seen_at);
        }
        Ok(())
    }

    async fn revoke_sessions(
        &self,
        ids: &[SessionId],
        revocation: &Revocation,
    ) -> Result<(), StoreError> {
        self.tables().revoke_all(ids, revocation);
        Ok(())
    }

    async fn expire_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<u64, StoreError> {
        let mut tables = self.tables();
        let mut expired: Vec<(SessionId, RevokeReason)> = Vec::new();
        for session in tables.sessions.values() {
            if session.revoked_at.is_some() {
                continue;
            }
            if session.expires_at <= now {
                expired.push((session.id, RevokeReason::MaxLifetime));
            } else if session.last_seen_at <= idle_cutoff {
                expired.push((session.id, RevokeReason::IdleTimeout));
            }
        }
        for (id, reason) in &expired {
            tables.revoke_all(&[*id], &Revocation::new(now, *reason).by(origin.clone()));
        }
        Ok(expired.len() as u64)
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tables = self.tables();
        let before = tables.sessions.len();
        tables.sessions.retain(|_, s| {
            let revoked_long_ago = s.revoked_at.is_some_and(|at| at < ended_before);
            !(revoked_long_ago || s.expires_at < ended_before)
        });
        Ok((before - tables.sessions.len()) as u64)
    }

    async fn count_live_sessions(&self) -> Result<u64, StoreError> {
        let tables = self.tables();
        let live = tables.sessions.values().filter(|s| s.revoked_at.is_none());
        Ok(live.count() as u64)
    }

    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), StoreError> {
        let mut tables = self.tables();
        let user = tables
            .users
            .get_mut(&user)
            .ok_or_else(|| StoreError::Conflict(format!("no user {user}")))?;
        user.password_hash = password_hash.to_owned();
        user.updated_at = Utc::now();
        Ok(())
    }

    async fn replace_password_hash(
        &self,
        user: UserId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        match tables.users.get_mut(&user) {
            Some(account) if account.password_hash == old => {
                account.password_hash = new.to_owned();
                account.updated_at = Utc::now();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn advance_totp_step(
        &self,
        user: UserId,
        secret: &SealedSecret,
        step: u64,
    ) -> Result<bool, StoreError> {
        let mut tables = self.tables();
        let Some(user) = tables.users.get_mut(&user) else {
            return Ok(false);
        };
        let current = user.mfa_enabled
            && user
                .totp_secret
                .as_ref()
                .is_some_and(|s| s.nonce == secret.nonce);
        if !current || user.totp_last_step.is_some_and(|last| last >= step) {
            return Ok(false);
        }
        user.totp_last_step = Some(step);
        Ok(true)
    }
}

/// The first revocation wins, as in MySQL's `WHERE revoked_at IS NULL`.
fn revoke(session: &mut Session, revocation: &Revocation) {
    if session.revoked_at.is_none() {
        session.revoked_at = Some(revocation.at);
        session.revoke_reason = Some(revocation.reason);
        session.revoke_note = revocation.note.clone();
    }
}
