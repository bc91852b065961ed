//! Persistence. [`SessionStore`] is everything the service keeps: users, their sessions and
//! their TOTP replay guard. Two implementations: [`MySqlStore`] for deployments and
//! [`MemoryStore`] for the embedded default; `tests/store_conformance.rs` holds both to the
//! same contract. This layer imports nothing above `domain`.

mod memory;
mod mysql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::crypto::Keyring;
use crate::domain::{
    AuthEvent, Email, FailureRule, HashedCode, Lockout, NewUser, Origin, RecordedEvent, Revocation,
    SealedSecret, Session, SessionId, User, UserId,
};

pub use bounded::{Bounded, Reachability};
pub use membership::{CLUSTER_PRESENCE, LiveMember, Renewal, SingleNodeLock};
pub use memory::MemoryStore;
pub use mysql::MySqlStore;

mod bounded;
mod membership;

/// A pending MFA challenge as stored: the token only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChallenge {
    pub token_hash: [u8; 32],
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub failures: u32,
}

/// What the step that opens a session checked about the account, required to be still true
/// when the session commits (under the user's row lock): a login must not race its way past
/// a factor enabled, a password changed or an account deactivated a moment before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginGate {
    /// Two-factor was on (the session is opened by a second factor) or off (by the password).
    pub mfa_enabled: bool,
    /// The stored hash the password was verified against, when this request verified one.
    pub password_hash: Option<String>,
}

/// What [`SessionStore::open_session_within_limit`] committed: the sessions the limit ended,
/// and the user's live sessions as the transaction left them (the new one among them), read
/// under the user's row lock. A user actor started for the login takes its sessions from
/// this read rather than reading them itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCommit {
    pub ended: Vec<SessionId>,
    pub live: Vec<Session>,
}

/// A change of a user's second factor, made by [`SessionStore::change_factor`].
#[derive(Debug, Clone)]
pub enum FactorChange {
    /// The pending secret (which must still be `pending`: a newer setup voids this one)
    /// becomes the one in force, `step` is spent, and `codes` replace any recovery codes.
    Enable {
        pending: SealedSecret,
        step: u64,
        codes: Vec<HashedCode>,
    },
    /// No second factor any more: secret, pending secret and recovery codes go.
    Disable,
    /// A new set of recovery codes; the old set is void.
    NewRecoveryCodes(Vec<HashedCode>),
}

/// What [`SessionStore::change_factor`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactorOutcome {
    /// Done; these sessions ended with it.
    Changed(Vec<SessionId>),
    /// Nothing changed: the caller's own session is no longer live.
    CallerEnded,
    /// Nothing changed: the state it assumed moved on (another setup replaced the pending
    /// secret, MFA was turned off or on meanwhile, or the step was already spent).
    Stale,
}

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

    /// True when every migration this build carries has been applied (readiness: a node of a
    /// newer build must not serve an older schema). Nothing to migrate without a database.
    async fn schema_is_current(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Releases connections at shutdown. Nothing to do for stores without any.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;

    /// A user and their live sessions at `now` (as [`SessionStore::live_sessions`]), for an
    /// actor that loads or reloads them: one round trip where the store can make it one.
    /// `None` when there is no such user.
    async fn user_and_live_sessions(
        &self,
        id: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<(User, Vec<Session>)>, StoreError> {
        let Some(user) = self.user_by_id(id).await? else {
            return Ok(None);
        };
        Ok(Some((user, self.live_sessions(id, now).await?)))
    }

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

    /// Inserts `session` while keeping its user at most `max_live` live sessions: in one
    /// transaction that locks the user's row, the least recently used live sessions beyond
    /// the limit are revoked (`session_limit`, at the new session's creation time). Returns
    /// the ids it revoked and the live sessions it left. Concurrent logins on several nodes therefore never exceed the limit.
    /// `event` (the login's success) is recorded in the same transaction, and each session
    /// the limit ends gets its `session_ended` event (by `event.origin`). `None`, and nothing
    /// written, when the account no longer passes `gate` (or is inactive).
    async fn open_session_within_limit(
        &self,
        session: &Session,
        max_live: usize,
        gate: &LoginGate,
        event: &AuthEvent,
    ) -> Result<Option<LoginCommit>, StoreError>;

    /// Revokes every live session of `user` but `except`, and voids any pending MFA challenge
    /// (a login half done by whoever is being logged out), in one transaction; returns the ids
    /// it revoked (whichever node opened them).
    ///
    /// Every method that ends sessions records one `session_ended` event per session it
    /// actually ended (see [`AuthEvent::session_ended`]), in the same transaction.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        except: Option<SessionId>,
        revocation: &Revocation,
    ) -> Result<Vec<SessionId>, StoreError>;

    /// Stores a new password hash, revokes every other live session and voids pending MFA
    /// challenges, in one transaction: there is no state in which the new password holds and
    /// the old sessions live. Only while `keep` (the caller's session) is itself live at that
    /// moment: `None`, and nothing changed, when it has ended (say, a logout-all on another
    /// node while the new password was being hashed).
    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError>;

    /// Activates or deactivates an account; deactivation revokes every live session with
    /// `revocation` and voids pending MFA challenges in the same transaction. `None` when there
    /// is no such user.
    async fn set_user_active(
        &self,
        user: UserId,
        active: bool,
        revocation: &Revocation,
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError>;

    /// Ends a session as idle (`revocation`) only if its stored `last_seen_at` is at or
    /// before `idle_cutoff` (another node may have seen it since). True when this call ended it.
    async fn end_if_idle(
        &self,
        id: SessionId,
        idle_cutoff: DateTime<Utc>,
        revocation: &Revocation,
    ) -> Result<bool, StoreError>;

    /// Issues a pending TOTP secret (replacing any pending one) and records `event`. False
    /// when there is no such user.
    async fn set_pending_totp(
        &self,
        user: UserId,
        pending: &SealedSecret,
        event: &AuthEvent,
    ) -> Result<bool, StoreError>;

    /// Changes the second factor in one transaction that locks the user's row: only while
    /// `keep` (the caller's session) is live; voids pending MFA challenges; ends every other
    /// live session with `end_others` when given; records `event`.
    async fn change_factor(
        &self,
        user: UserId,
        change: &FactorChange,
        keep: SessionId,
        end_others: Option<&Revocation>,
        event: &AuthEvent,
    ) -> Result<FactorOutcome, StoreError>;

    /// The user's recovery codes not yet used.
    async fn unused_recovery_codes(&self, user: UserId) -> Result<Vec<HashedCode>, StoreError>;

    /// Marks `code` used if it is still unused and still the same code (a regeneration in
    /// between voids it). True for exactly one of several racing callers.
    async fn spend_recovery_code(
        &self,
        user: UserId,
        code: &HashedCode,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Appends one event on its own (attempts that change nothing else: failures, throttling).
    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError>;

    /// The user's events, newest first: at most `limit`, with ids below `before` when given.
    async fn events_of(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Deletes events older than `before` (audit retention); returns how many.
    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Seals every TOTP secret (active and pending) under the keyring's current key: a secret
    /// still in clear (from before secrets were sealed) when `clear_only`, every secret under
    /// an older key as well otherwise (`finsec keys rotate`). Returns how many it sealed.
    async fn reseal_secrets(&self, keyring: &Keyring, clear_only: bool) -> Result<u64, StoreError>;

    /// Adds a pending MFA challenge for the user, keeping only the newest `keep` (older
    /// password steps' challenges beyond them are dropped).
    async fn put_mfa_challenge(
        &self,
        user: UserId,
        challenge: &StoredChallenge,
        keep: usize,
    ) -> Result<(), StoreError>;

    /// The pending challenge whose token hash is `token_hash`, or, without one, the newest.
    async fn mfa_challenge(
        &self,
        user: UserId,
        token_hash: Option<&[u8; 32]>,
    ) -> Result<Option<StoredChallenge>, StoreError>;

    /// Counts a wrong code against the challenge whose token hash is `token_hash`; at
    /// `max_failures` the challenge is deleted. Returns the failures now recorded (0 when the
    /// challenge is gone).
    async fn count_mfa_failure(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
        max_failures: u32,
    ) -> Result<u32, StoreError>;

    /// Deletes the challenge if it is still the one with `token_hash`. True for exactly one of
    /// several racing callers: a challenge is answered once.
    async fn take_mfa_challenge(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError>;

    /// The brute-force record of one account key (see `sessions::throttle`).
    async fn failure_record(&self, key: &[u8; 32]) -> Result<Option<Lockout>, StoreError>;

    /// A login's password step reads both: the brute-force record of `key` and the user
    /// whose email is `email`. One round trip where the store can make it one.
    async fn failure_record_and_user(
        &self,
        key: &[u8; 32],
        email: &Email,
    ) -> Result<(Option<Lockout>, Option<User>), StoreError> {
        Ok((
            self.failure_record(key).await?,
            self.user_by_email(email).await?,
        ))
    }

    /// Counts one failure against `key` by `rule`, atomically (concurrent attempts on several
    /// nodes each count); returns the record as it now stands.
    async fn record_failure(
        &self,
        key: &[u8; 32],
        rule: &FailureRule,
        now: DateTime<Utc>,
    ) -> Result<Lockout, StoreError>;

    /// A successful login: the account's record goes.
    async fn clear_failures(&self, key: &[u8; 32]) -> Result<(), StoreError>;

    /// Deletes records untouched since `before`; returns how many.
    async fn prune_failures(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Records the latest activity of a live session (idle expiry reads it after a restart).
    /// Keeps the newest time: several nodes touch one session, each with its own view.
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
        origin: &Origin,
    ) -> Result<u64, StoreError>;

    /// Deletes session rows that ended before `ended_before` (retention). Returns the count.
    async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// How many sessions are not ended (not revoked), every user's and every node's: the
    /// `finsec_live_sessions` gauge, read right after a sweep has ended the expired ones.
    async fn count_live_sessions(&self) -> Result<u64, StoreError>;

    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), StoreError>;

    /// Replaces the hash only if it is still `old` (a rehash at a higher cost must not undo a
    /// password change that happened meanwhile). True when it replaced it.
    async fn replace_password_hash(
        &self,
        user: UserId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    /// Records `step` as the user's newest accepted TOTP step, only if it is newer than the
    /// stored one and the secret in force is still `secret` (a code for a secret just
    /// replaced or removed must not pass). Returns false otherwise (the code was already
    /// used), so that even two service instances racing on one code accept it once.
    async fn advance_totp_step(
        &self,
        user: UserId,
        secret: &SealedSecret,
        step: u64,
    ) -> Result<bool, StoreError>;
}

pub type DynStore = Arc<dyn SessionStore>;

/// Opens the store named by `database.url`, running migrations for MySQL.
///
/// (`startup` opens MySQL itself when it also needs the membership table and named lock.)
pub async fn connect(url: &str, max_connections: usize) -> Result<DynStore, StoreError> {
    if url == "memory" {
        Ok(Arc::new(MemoryStore::new()))
    } else {
        let store = MySqlStore::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    }
}
