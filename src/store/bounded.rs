//! [`Bounded`]: every store call within `database.timeout`. A database that hangs (a lock
//! wait, a dead link that TCP has not noticed) must cost a request a 503, not a worker, an
//! actor's mailbox or a connection slot forever. Wraps any [`SessionStore`], so the rule
//! lives in one place and the two stores stay plain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    DynStore, FactorChange, FactorOutcome, LoginCommit, LoginGate, SessionStore, StoreError,
    StoredChallenge,
};
use crate::crypto::Keyring;
use crate::domain::{
    AuthEvent, Email, FailureRule, HashedCode, Lockout, NewUser, Origin, RecordedEvent, Revocation,
    RevokeReason, SealedSecret, Session, SessionId, User, UserId,
};

pub struct Bounded {
    inner: DynStore,
    limit: Duration,
    reachability: Arc<Reachability>,
}

/// When the database last answered (anything but "unavailable"), for the outage grace: a node
/// answers from memory only while its database answered recently (`database.outage_grace`).
#[derive(Debug)]
pub struct Reachability {
    /// Milliseconds since `epoch` at the last answer.
    last_answer_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl Reachability {
    pub fn new() -> Self {
        Self {
            last_answer_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    fn answered(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_answer_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since the database last answered (zero at start).
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Default for Reachability {
    fn default() -> Self {
        Self::new()
    }
}

impl Bounded {
    pub fn new(inner: DynStore, limit: Duration, reachability: Arc<Reachability>) -> Self {
        Self {
            inner,
            limit,
            reachability,
        }
    }

    /// The call `op`, bounded, timed (`finsec_store_call_duration_seconds`) and counted
    /// when it fails (`finsec_store_errors_total`).
    async fn within<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.limit, call)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("no answer within {:?}", self.limit).into())
            })
            .and_then(|result| result);
        metrics::histogram!("finsec_store_call_duration_seconds", "op" => op)
            .record(crate::metrics::seconds(started.elapsed()));
        if outcome.is_err() {
            metrics::counter!("finsec_store_errors_total", "op" => op).increment(1);
        }
        // A refusal (a conflict, say) is an answer too; only "unavailable" is silence.
        if !matches!(outcome, Err(StoreError::Unavailable(_))) {
            self.reachability.answered();
        }
        outcome
    }
}

/// Counts sessions this node's writes ended (`finsec_sessions_ended_total`), by reason, where
/// the write commits. Writes by session id (`revoke_sessions`) count the ids written, whether
/// or not each was still live: a journalled revocation that several nodes land, or a session
/// two nodes expire at once, counts more than once. A rate, not an exact tally.
fn ended(reason: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("finsec_sessions_ended_total", "reason" => reason)
            .increment(count as u64);
    }
}

#[async_trait]
impl SessionStore for Bounded {
    async fn ping(&self) -> Result<(), StoreError> {
        self.within("ping", self.inner.ping()).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.within("close", self.inner.close()).await
    }

    async fn schema_is_current(&self) -> Result<bool, StoreError> {
        self.within("schema_is_current", self.inner.schema_is_current())
            .await
    }

    async fn user_and_live_sessions(
        &self,
        id: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<(User, Vec<Session>)>, StoreError> {
        self.within(
            "user_and_live_sessions",
            self.inner.user_and_live_sessions(id, now),
        )
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.within("user_by_email", self.inner.user_by_email(email))
            .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.within("user_by_id", self.inner.user_by_id(id)).await
    }

    async fn insert_user(&self, user: NewUser) -> Result<User, StoreError> {
        self.within("insert_user", self.inner.insert_user(user))
            .await
    }

    async fn live_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        self.within("live_sessions", self.inner.live_sessions(user, now))
            .await
    }

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        self.within("insert_session", self.inner.insert_session(session))
            .await
    }

    async fn session_by_id(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        self.within("session_by_id", self.inner.session_by_id(id))
            .await
    }

    async fn open_session_within_limit(
        &self,
        session: &Session,
        max_live: usize,
        gate: &LoginGate,
        event: &AuthEvent,
    ) -> Result<Option<LoginCommit>, StoreError> {
        let outcome = self
            .within(
                "open_session_within_limit",
                self.inner
                    .open_session_within_limit(session, max_live, gate, event),
            )
            .await;
        if let Ok(Some(commit)) = &outcome {
            ended(RevokeReason::SessionLimit.as_str(), commit.ended.len());
        }
        outcome
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        except: Option<SessionId>,
        revocation: &Revocation,
    ) -> Result<Vec<SessionId>, StoreError> {
        let outcome = self
            .within(
                "revoke_user_sessions",
                self.inner.revoke_user_sessions(user, except, revocation),
            )
            .await;
        if let Ok(ids) = &outcome {
            ended(revocation.reason.as_str(), ids.len());
        }
        outcome
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let outcome = self
            .within(
                "change_password",
                self.inner
                    .change_password(user, password_hash, keep, revocation, event),
            )
            .await;
        if let Ok(Some(ids)) = &outcome {
            ended(revocation.reason.as_str(), ids.len());
        }
        outcome
    }

    async fn set_user_active(
        &self,
        user: UserId,
        active: bool,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let outcome = self
            .within(
                "set_user_active",
                self.inner.set_user_active(user, active, revocation, event),
            )
            .await;
        if let Ok(Some(ids)) = &outcome {
            ended(revocation.reason.as_str(), ids.len());
        }
        outcome
    }

    async fn end_if_idle(
        &self,
        id: SessionId,
        idle_cutoff: DateTime<Utc>,
        revocation: &Revocation,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .within(
                "end_if_idle",
                self.inner.end_if_idle(id, idle_cutoff, revocation),
            )
            .await;
        if let Ok(true) = outcome {
            ended(revocation.reason.as_str(), 1);
        }
        outcome
    }

    async fn set_pending_totp(
        &self,
        user: UserId,
        pending: &SealedSecret,
        event: &AuthEvent,
    ) -> Result<bool, StoreError> {
        self.within(
            "set_pending_totp",
            self.inner.set_pending_totp(user, pending, event),
        )
        .await
    }

    async fn change_factor(
        &self,
        user: UserId,
        change: &FactorChange,
        keep: SessionId,
        end_others: Option<&Revocation>,
        event: &AuthEvent,
    ) -> Result<FactorOutcome, StoreError> {
        let outcome = self
            .within(
                "change_factor",
                self.inner
                    .change_factor(user, change, keep, end_others, event),
            )
            .await;
        if let (Ok(FactorOutcome::Changed(ids)), Some(revocation)) = (&outcome, end_others) {
            ended(revocation.reason.as_str(), ids.len());
        }
        outcome
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<Vec<HashedCode>, StoreError> {
        self.within(
            "unused_recovery_codes",
            self.inner.unused_recovery_codes(user),
        )
        .await
    }

    async fn spend_recovery_code(
        &self,
        user: UserId,
        code: &HashedCode,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.within(
            "spend_recovery_code",
            self.inner.spend_recovery_code(user, code, at),
        )
        .await
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        self.within("record_event", self.inner.record_event(event))
            .await
    }

    async fn events_of(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.within("events_of", self.inner.events_of(user, before, limit))
            .await
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.within("prune_events", self.inner.prune_events(before))
            .await
    }

    /// Not bounded by `database.timeout`: an operator's batch over every user, run by
    /// `finsec keys rotate` (each statement is bounded by the driver's own timeouts).
    async fn reseal_secrets(&self, keyring: &Keyring, clear_only: bool) -> Result<u64, StoreError> {
        self.inner.reseal_secrets(keyring, clear_only).await
    }

    async fn put_mfa_challenge(
        &self,
        user: UserId,
        challenge: &StoredChallenge,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.within(
            "put_mfa_challenge",
            self.inner.put_mfa_challenge(user, challenge, keep),
        )
        .await
    }

    async fn mfa_challenge(
        &self,
        user: UserId,
        token_hash: Option<&[u8; 32]>,
    ) -> Result<Option<StoredChallenge>, StoreError> {
        self.within("mfa_challenge", self.inner.mfa_challenge(user, token_hash))
            .await
    }

    async fn count_mfa_failure(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
        max_failures: u32,
    ) -> Result<u32, StoreError> {
        self.within(
            "count_mfa_failure",
            self.inner.count_mfa_failure(user, token_hash, max_failures),
        )
        .await
    }

    async fn take_mfa_challenge(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        self.within(
            "take_mfa_challenge",
            self.inner.take_mfa_challenge(user, token_hash),
        )
        .await
    }

    async fn failure_record(&self, key: &[u8; 32]) -> Result<Option<Lockout>, StoreError> {
        self.within("failure_record", self.inner.failure_record(key))
            .await
    }

    async fn failure_record_and_user(
        &self,
        key: &[u8; 32],
        email: &Email,
    ) -> Result<(Option<Lockout>, Option<User>), StoreError> {
        self.within(
            "failure_record_and_user",
            self.inner.failure_record_and_user(key, email),
        )
        .await
    }

    async fn record_failure(
        &self,
        key: &[u8; 32],
        rule: &FailureRule,
        now: DateTime<Utc>,
    ) -> Result<Lockout, StoreError> {
        self.within("record_failure", self.inner.record_failure(key, rule, now))
            .await
    }

    async fn clear_failures(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.within("clear_failures", self.inner.clear_failures(key))
            .await
    }

    async fn prune_failures(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.within("prune_failures", self.inner.prune_failures(before))
            .await
    }

    async fn touch_session(
        &self,
        id: SessionId,
        last_seen_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.within("touch_session", self.inner.touch_session(id, last_seen_at))
            .await
    }

    async fn revoke_sessions(
        &self,
        ids: &[SessionId],
        revocation: &Revocation,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            // Nothing to ask: and a call that asks nothing must not count as an answer.
            return Ok(());
        }
        let outcome = self
            .within(
                "revoke_sessions",
                self.inner.revoke_sessions(ids, revocation),
            )
            .await;
        if outcome.is_ok() {
            ended(revocation.reason.as_str(), ids.len());
        }
        outcome
    }

    async fn expire_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<u64, StoreError> {
        let outcome = self
            .within(
                "expire_sessions",
                self.inner.expire_sessions(now, idle_cutoff, origin),
            )
            .await;
        if let Ok(count) = outcome {
            // Idle or past its lifetime: the sweep's one statement ends both.
            ended("expired", count as usize);
        }
        outcome
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.within("prune_sessions", self.inner.prune_sessions(ended_before))
            .await
    }

    async fn count_live_sessions(&self) -> Result<u64, StoreError> {
        self.within("count_live_sessions", self.inner.count_live_sessions())
            .await
    }

    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), StoreError> {
        self.within(
            "set_password_hash",
            self.inner.set_password_hash(user, password_hash),
        )
        .await
    }

    async fn replace_password_hash(
        &self,
        user: UserId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.within(
            "replace_password_hash",
            self.inner.replace_password_hash(user, old, new),
        )
        .await
    }

    async fn advance_totp_step(
        &self,
        user: UserId,
        secret: &SealedSecret,
        step: u64,
    ) -> Result<bool, StoreError> {
        self.within(
            "advance_totp_step",
            self.inner.advance_totp_step(user, secret, step),
        )
        .await
    }
}
