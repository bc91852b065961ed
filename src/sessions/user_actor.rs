//! One actor per active user: the single owner of that user's live sessions (all devices) and
//! pending MFA challenge. Because one actor handles one message at a time, every rule about a
//! user's sessions ("a TOTP step is spent once", "five wrong codes void the challenge", "at
//! most N sessions") holds without locks.
//!
//! The write path is one readable sequence in each handler: validate → write to the store →
//! on success change memory → reply. If the write fails the client hears 503 and memory is
//! untouched, so nothing is acknowledged and then lost. Ending sessions is the one exception;
//! see [`UserState::end_sessions`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use subtle::ConstantTimeEq;

use super::SessionError;
use super::messages::{LoginStep, MfaAttempt, SessionGrant, UserMsg};
use crate::auth::AuthError;
use crate::auth::totp::TotpCode;
use crate::domain::{
    Device, Revocation, RevokeReason, Session, SessionId, User, UserId, UserProfile,
};
use crate::store::DynStore;

/// The rules the session actors apply, from config; shared by all of them.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub max_lifetime: chrono::Duration,
    pub idle_timeout: chrono::Duration,
    /// Activity is persisted at most this often per session.
    pub touch_interval: chrono::Duration,
    pub max_per_user: usize,
    pub mfa_challenge_ttl: chrono::Duration,
    pub mfa_max_attempts: u32,
    pub revoke_retry: Duration,
    pub idle_passivate: chrono::Duration,
    pub sweep_interval: Duration,
    pub retention: chrono::Duration,
}

pub struct UserActor;

pub struct UserActorArgs {
    pub user_id: UserId,
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
}

pub struct UserState {
    myself: ActorRef<UserMsg>,
    user: User,
    sessions: HashMap<SessionId, LiveSession>,
    challenge: Option<MfaChallenge>,
    /// Revocations applied in memory whose write has not committed yet.
    unwritten: Vec<(Vec<SessionId>, Revocation)>,
    retry_scheduled: bool,
    /// The last message from a client (not a timer tick): passivation counts from here.
    last_activity: DateTime<Utc>,
    store: DynStore,
    policy: Arc<SessionPolicy>,
}

/// A session and the last activity time the store has for it (touches are coalesced).
struct LiveSession {
    session: Session,
    persisted_last_seen: DateTime<Utc>,
}

/// The password step succeeded and a TOTP code is awaited. Lives only in memory: if the actor
/// restarts, the user simply logs in again.
struct MfaChallenge {
    token: String,
    expires_at: DateTime<Utc>,
    failures: u32,
}

/// Why an actor could not start; the registry turns it back into a [`SessionError`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no such user")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = UserActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UserActorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let user = args
            .store
            .user_by_id(args.user_id)
            .await
            .map_err(StartError::from)?
            .ok_or(StartError::UnknownUser)?;
        let now = Utc::now();
        let sessions = args
            .store
            .live_sessions(args.user_id, now)
            .await
            .map_err(StartError::from)?;
        tracing::debug!(user_id = %user.id, sessions = sessions.len(), "user actor started");
        Ok(UserState {
            myself,
            user,
            sessions: sessions
                .into_iter()
                .map(|session| {
                    let persisted_last_seen = session.last_seen_at;
                    (
                        session.id,
                        LiveSession {
                            session,
                            persisted_last_seen,
                        },
                    )
                })
                .collect(),
            challenge: None,
            unwritten: Vec::new(),
            retry_scheduled: false,
            last_activity: now,
            store: args.store,
            policy: args.policy,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Errors travel in the replies; returning Err here would kill the actor over a
        // client's wrong code. A dropped reply port only means the caller gave up waiting.
        let now = Utc::now();
        if message.is_from_client() {
            state.last_activity = now;
        }
        match message {
            UserMsg::Login { device, reply } => {
                let _ = reply.send(state.login(device, now).await);
            }
            UserMsg::VerifyMfa { attempt, reply } => {
                let _ = reply.send(state.verify_mfa(attempt, now).await);
            }
            UserMsg::Validate { session_id, reply } => {
                let _ = reply.send(state.validate(session_id, now).await);
            }
            UserMsg::ListSessions { reply } => {
                let _ = reply.send(Ok(state.live_sessions(now)));
            }
            UserMsg::Revoke {
                session_id,
                reason,
                reply,
            } => {
                let _ = reply.send(state.revoke(session_id, reason, now).await);
            }
            UserMsg::RevokeAll {
                except,
                reason,
                note,
                reply,
            } => {
                let _ = reply.send(state.revoke_all(except, reason, note, now).await);
            }
            UserMsg::ChangePassword {
                password_hash,
                keep,
                reply,
            } => {
                let _ = reply.send(state.change_password(password_hash, keep, now).await);
            }
            UserMsg::Tick => state.tick(now).await,
            UserMsg::RetryRevocations => {
                state.retry_scheduled = false;
                state.write_unwritten().await;
            }
            #[cfg(any(test, feature = "test-hooks"))]
            UserMsg::Crash => panic!("test hook: user actor {} told to crash", state.user.id),
        }
        Ok(())
    }

    /// Stopping (passivation never happens with unwritten revocations, so this is shutdown):
    /// one last attempt at the writes, and a loud log line if a revocation is still unwritten,
    /// because a restart would then find that session live.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !state.unwritten.is_empty() {
            state.write_unwritten().await;
            for (ids, revocation) in &state.unwritten {
                tracing::error!(user_id = %state.user.id, sessions = ?ids, reason = %revocation.reason,
                    "revocation could not be written before shutdown");
            }
        }
        Ok(())
    }
}

impl UserState {
    fn grant(&self, session: Session) -> SessionGrant {
        SessionGrant {
            session,
            user: UserProfile::from(&self.user),
        }
    }

    async fn login(
        &mut self,
        device: Device,
        now: DateTime<Utc>,
    ) -> Result<LoginStep, SessionError> {
        if !self.user.is_active {
            return Err(AuthError::AccountInactive.into());
        }
        if self.user.mfa_enabled {
            return Ok(LoginStep::MfaRequired {
                mfa_token: self.begin_mfa(now)?,
            });
        }
        let grant = self.open_session(device, now).await?;
        Ok(LoginStep::SessionOpened(Box::new(grant)))
    }

    /// Write-through: the row is inserted first; only then does memory learn of it. At the
    /// per-user limit the least recently used sessions end first (Keycloak's "terminate
    /// oldest"), so the newest login always wins.
    async fn open_session(
        &mut self,
        device: Device,
        now: DateTime<Utc>,
    ) -> Result<SessionGrant, SessionError> {
        let excess = (self.sessions.len() + 1).saturating_sub(self.policy.max_per_user);
        if excess > 0 {
            let mut by_use: Vec<_> = self.sessions.values().map(|l| &l.session).collect();
            by_use.sort_by_key(|s| s.last_seen_at);
            let evicted = by_use.iter().take(excess).map(|s| s.id).collect();
            self.end_sessions(evicted, Revocation::new(now, RevokeReason::SessionLimit))
                .await?;
        }
        let session = Session::open(self.user.id, device, now, self.policy.max_lifetime);
        self.store.insert_session(&session).await?;
        self.sessions.insert(
            session.id,
            LiveSession {
                session: session.clone(),
                persisted_last_seen: now,
            },
        );
        tracing::info!(user_id = %self.user.id, session_id = %session.id, "session opened");
        Ok(self.grant(session))
    }

    fn begin_mfa(&mut self, now: DateTime<Utc>) -> Result<String, SessionError> {
        // A new password step replaces any earlier challenge, and with it its failure count:
        // each challenge costs a full password verification, which is the throttle.
        let token = random_token()?;
        self.challenge = Some(MfaChallenge {
            token: token.clone(),
            expires_at: now + self.policy.mfa_challenge_ttl,
            failures: 0,
        });
        Ok(token)
    }

    async fn verify_mfa(
        &mut self,
        attempt: MfaAttempt,
        now: DateTime<Utc>,
    ) -> Result<SessionGrant, SessionError> {
        let invalid = || SessionError::from(AuthError::InvalidMfaCode);
        if !self.user.is_active {
            return Err(AuthError::AccountInactive.into());
        }
        let totp = match (&self.user.totp_secret, self.user.mfa_enabled) {
            (Some(secret), true) => TotpCode::from_base32(secret),
            _ => None,
        };
        let Some(totp) = totp else {
            return Err(invalid());
        };

        if !attempt.password_verified {
            let challenge = self.challenge.as_mut().ok_or_else(invalid)?;
            if now >= challenge.expires_at {
                self.challenge = None;
                return Err(invalid());
            }
            let token_matches = attempt
                .mfa_token
                .as_ref()
                .is_none_or(|sent| bool::from(sent.as_bytes().ct_eq(challenge.token.as_bytes())));
            if !token_matches {
                self.record_mfa_failure();
                return Err(invalid());
            }
        }

        let unix_now = u64::try_from(now.timestamp()).unwrap_or_default();
        let Some(step) = totp.verify(&attempt.code, unix_now, self.user.totp_last_step) else {
            self.record_mfa_failure();
            return Err(invalid());
        };

        // Spend the step first, in the database: if two requests (or two service instances)
        // race with one code, the conditional update lets exactly one through.
        if !self.store.advance_totp_step(self.user.id, step).await? {
            self.record_mfa_failure();
            return Err(invalid());
        }
        self.user.totp_last_step = Some(step);
        self.challenge = None;
        self.open_session(attempt.device, now).await
    }

    fn record_mfa_failure(&mut self) {
        if let Some(challenge) = self.challenge.as_mut() {
            challenge.failures += 1;
            if challenge.failures >= self.policy.mfa_max_attempts {
                tracing::warn!(user_id = %self.user.id, "MFA challenge voided after too many wrong codes");
                self.challenge = None;
            }
        }
    }

    /// Asked on every authenticated request. A session past its idle or absolute limit is
    /// refused (and ended) here even if the sweep has not reached it yet. A live one is
    /// touched; the touch is written at most once per `touch_interval`, and a failed touch
    /// write does not fail the request (it can only make idle expiry come sooner).
    async fn validate(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<SessionGrant, SessionError> {
        let idle_timeout = self.policy.idle_timeout;
        let Some(live) = self.sessions.get_mut(&id) else {
            return Err(SessionError::Ended);
        };
        if let Some(reason) = live.session.end_reason(now, idle_timeout) {
            // The caller is refused whatever the write does; a failed write is retried.
            let _ = self
                .end_sessions(vec![id], Revocation::new(now, reason))
                .await;
            return Err(SessionError::Ended);
        }
        live.session.last_seen_at = now;
        if now - live.persisted_last_seen >= self.policy.touch_interval {
            match self.store.touch_session(id, now).await {
                Ok(()) => live.persisted_last_seen = now,
                Err(err) => tracing::warn!(session_id = %id, error = %err, "touch not persisted"),
            }
        }
        let session = live.session.clone();
        Ok(self.grant(session))
    }

    /// Live sessions, newest first.
    fn live_sessions(&self, now: DateTime<Utc>) -> Vec<Session> {
        let mut sessions: Vec<Session> = self
            .sessions
            .values()
            .filter(|l| {
                l.session
                    .end_reason(now, self.policy.idle_timeout)
                    .is_none()
            })
            .map(|l| l.session.clone())
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        sessions
    }

    async fn revoke(
        &mut self,
        id: SessionId,
        reason: RevokeReason,
        now: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        if !self.sessions.contains_key(&id) {
            return Err(SessionError::NotFound);
        }
        self.end_sessions(vec![id], Revocation::new(now, reason))
            .await
    }

    async fn revoke_all(
        &mut self,
        except: Option<SessionId>,
        reason: RevokeReason,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<usize, SessionError> {
        let ids: Vec<SessionId> = self
            .sessions
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        let count = ids.len();
        let revocation = Revocation {
            at: now,
            reason,
            note,
        };
        self.end_sessions(ids, revocation).await?;
        tracing::info!(user_id = %self.user.id, revoked = count, %reason, "sessions revoked");
        Ok(count)
    }

    /// Write-through for the new hash, then every other session ends: whoever else held
    /// one may be the reason the password changed.
    async fn change_password(
        &mut self,
        password_hash: String,
        keep: SessionId,
        now: DateTime<Utc>,
    ) -> Result<usize, SessionError> {
        self.store
            .set_password_hash(self.user.id, &password_hash)
            .await?;
        self.user.password_hash = password_hash;
        tracing::info!(user_id = %self.user.id, "password changed");
        self.revoke_all(Some(keep), RevokeReason::PasswordChanged, None, now)
            .await
    }

    /// Ending sessions fails closed, so it is the exception to "write, then change memory":
    /// the sessions leave memory first and are refused from this instant, even if the
    /// database is down. The caller hears success only once the write has committed; if it
    /// fails, the caller hears 503 and the actor retries the write on a timer until it lands.
    async fn end_sessions(
        &mut self,
        ids: Vec<SessionId>,
        revocation: Revocation,
    ) -> Result<(), SessionError> {
        for id in &ids {
            self.sessions.remove(id);
        }
        if ids.is_empty() {
            return Ok(());
        }
        match self.store.revoke_sessions(&ids, &revocation).await {
            Ok(()) => {
                for id in &ids {
                    tracing::info!(user_id = %self.user.id, session_id = %id,
                        reason = %revocation.reason, "session ended");
                }
                Ok(())
            }
            Err(err) => {
                tracing::warn!(user_id = %self.user.id, sessions = ids.len(), error = %err,
                    "sessions ended in memory; write failed, will retry");
                self.unwritten.push((ids, revocation));
                self.schedule_retry();
                Err(SessionError::Store(err))
            }
        }
    }

    fn schedule_retry(&mut self) {
        if !self.unwritten.is_empty() && !self.retry_scheduled {
            self.retry_scheduled = true;
            self.myself
                .send_after(self.policy.revoke_retry, || UserMsg::RetryRevocations);
        }
    }

    async fn write_unwritten(&mut self) {
        for (ids, revocation) in std::mem::take(&mut self.unwritten) {
            match self.store.revoke_sessions(&ids, &revocation).await {
                Ok(()) => tracing::info!(user_id = %self.user.id, sessions = ids.len(),
                    "delayed revocation written"),
                Err(_) => self.unwritten.push((ids, revocation)),
            }
        }
        self.schedule_retry();
    }

    /// The supervisor's periodic tick: end what has expired, then passivate if idle.
    async fn tick(&mut self, now: DateTime<Utc>) {
        let mut expired: HashMap<RevokeReason, Vec<SessionId>> = HashMap::new();
        for live in self.sessions.values() {
            if let Some(reason) = live.session.end_reason(now, self.policy.idle_timeout) {
                expired.entry(reason).or_default().push(live.session.id);
            }
        }
        for (reason, ids) in expired {
            // On failure the retry timer owns the write; nothing more to do here.
            let _ = self.end_sessions(ids, Revocation::new(now, reason)).await;
        }
        if self.should_passivate(now) && self.flush_touches().await {
            tracing::debug!(user_id = %self.user.id, "user actor passivating");
            // Drain, not stop: messages already queued are still answered, later sends are
            // refused and the registry waits for this actor to exit before it spawns the
            // next one, so two actors never hold one user's sessions at once.
            let _ = self.myself.drain();
        }
    }

    fn should_passivate(&self, now: DateTime<Utc>) -> bool {
        let challenge_pending = self.challenge.as_ref().is_some_and(|c| now < c.expires_at);
        now - self.last_activity >= self.policy.idle_passivate
            && self.unwritten.is_empty()
            && !challenge_pending
    }

    /// Writes every touch not yet persisted, so the next actor loads exact activity times.
    async fn flush_touches(&mut self) -> bool {
        for live in self.sessions.values_mut() {
            if live.session.last_seen_at > live.persisted_last_seen {
                if self
                    .store
                    .touch_session(live.session.id, live.session.last_seen_at)
                    .await
                    .is_err()
                {
                    return false;
                }
                live.persisted_last_seen = live.session.last_seen_at;
            }
        }
        true
    }
}

/// 256 bits from the OS generator, hex-encoded: the opaque `mfaToken`.
fn random_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Unavailable(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
