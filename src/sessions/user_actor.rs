//! One actor per active user: the single owner of that user's live sessions (all devices) and
//! pending MFA challenge. Because one actor handles one message at a time, every rule about a
//! user's sessions ("a TOTP step is spent once", "five wrong codes void the challenge") holds
//! without locks.
//!
//! The write path is one readable sequence in each handler: validate → write to the store →
//! on success change memory → reply. If the write fails the client hears 503 and memory is
//! untouched, so nothing is acknowledged and then lost. Revocation is the one exception; see
//! [`UserActor::revoke`].

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
use crate::domain::{Device, RevokeReason, Session, SessionId, User, UserId, UserProfile};
use crate::store::DynStore;

/// The rules a user actor applies, from config; shared by all user actors.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub max_lifetime: chrono::Duration,
    pub mfa_challenge_ttl: chrono::Duration,
    pub mfa_max_attempts: u32,
    pub revoke_retry: Duration,
}

pub struct UserActor;

pub struct UserActorArgs {
    pub user_id: UserId,
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
}

pub struct UserState {
    user: User,
    sessions: HashMap<SessionId, Session>,
    challenge: Option<MfaChallenge>,
    /// Revocations applied in memory whose write has not committed yet.
    unwritten_revocations: Vec<UnwrittenRevocation>,
    retry_scheduled: bool,
    store: DynStore,
    policy: Arc<SessionPolicy>,
}

/// The password step succeeded and a TOTP code is awaited. Lives only in memory: if the actor
/// restarts, the user simply logs in again.
struct MfaChallenge {
    token: String,
    expires_at: DateTime<Utc>,
    failures: u32,
}

struct UnwrittenRevocation {
    session_id: SessionId,
    at: DateTime<Utc>,
    reason: RevokeReason,
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
        _myself: ActorRef<Self::Msg>,
        args: UserActorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let user = args
            .store
            .user_by_id(args.user_id)
            .await
            .map_err(StartError::from)?
            .ok_or(StartError::UnknownUser)?;
        let sessions = args
            .store
            .live_sessions(args.user_id, Utc::now())
            .await
            .map_err(StartError::from)?;
        tracing::debug!(user_id = %user.id, sessions = sessions.len(), "user actor started");
        Ok(UserState {
            user,
            sessions: sessions.into_iter().map(|s| (s.id, s)).collect(),
            challenge: None,
            unwritten_revocations: Vec::new(),
            retry_scheduled: false,
            store: args.store,
            policy: args.policy,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Errors travel in the replies; returning Err here would kill the actor over a
        // client's wrong code. A dropped reply port only means the caller gave up waiting.
        match message {
            UserMsg::Login { device, reply } => {
                let _ = reply.send(state.login(device).await);
            }
            UserMsg::VerifyMfa { attempt, reply } => {
                let _ = reply.send(state.verify_mfa(attempt).await);
            }
            UserMsg::Validate { session_id, reply } => {
                let _ = reply.send(state.validate(session_id));
            }
            UserMsg::Revoke {
                session_id,
                reason,
                reply,
            } => {
                let result = UserActor::revoke(&myself, state, session_id, reason).await;
                let _ = reply.send(result);
            }
            UserMsg::RetryRevocations => {
                state.retry_scheduled = false;
                state.write_unwritten_revocations().await;
                UserActor::schedule_retry(&myself, state);
            }
            #[cfg(any(test, feature = "test-hooks"))]
            UserMsg::Crash => panic!("test hook: user actor {} told to crash", state.user.id),
        }
        Ok(())
    }
}

impl UserActor {
    /// Revocation fails closed, so it is the exception to "write, then change memory": the
    /// session leaves memory first and is refused from this instant, even if the database is
    /// down. The client hears 200 only once the write has committed; if it fails, the client
    /// hears 503 and the actor keeps retrying the write on a timer, so the row catches up.
    async fn revoke(
        myself: &ActorRef<UserMsg>,
        state: &mut UserState,
        session_id: SessionId,
        reason: RevokeReason,
    ) -> Result<(), SessionError> {
        if state.sessions.remove(&session_id).is_none() {
            return Err(SessionError::NotFound);
        }
        let at = Utc::now();
        match state.store.revoke_session(session_id, at, reason).await {
            Ok(()) => {
                tracing::info!(user_id = %state.user.id, %session_id, %reason, "session revoked");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(user_id = %state.user.id, %session_id, error = %err,
                    "revocation applied in memory; write failed, will retry");
                state.unwritten_revocations.push(UnwrittenRevocation {
                    session_id,
                    at,
                    reason,
                });
                Self::schedule_retry(myself, state);
                Err(SessionError::Store(err))
            }
        }
    }

    fn schedule_retry(myself: &ActorRef<UserMsg>, state: &mut UserState) {
        if !state.unwritten_revocations.is_empty() && !state.retry_scheduled {
            state.retry_scheduled = true;
            myself.send_after(state.policy.revoke_retry, || UserMsg::RetryRevocations);
        }
    }
}

impl UserState {
    fn grant(&self, session: Session) -> SessionGrant {
        SessionGrant {
            session,
            user: UserProfile::from(&self.user),
        }
    }

    async fn login(&mut self, device: Device) -> Result<LoginStep, SessionError> {
        if !self.user.is_active {
            return Err(AuthError::AccountInactive.into());
        }
        if self.user.mfa_enabled {
            return Ok(LoginStep::MfaRequired {
                mfa_token: self.begin_mfa()?,
            });
        }
        let grant = self.open_session(device, Utc::now()).await?;
        Ok(LoginStep::SessionOpened(Box::new(grant)))
    }

    /// Write-through: the row is inserted first; only then does memory learn of it.
    async fn open_session(
        &mut self,
        device: Device,
        now: DateTime<Utc>,
    ) -> Result<SessionGrant, SessionError> {
        let session = Session::open(self.user.id, device, now, self.policy.max_lifetime);
        self.store.insert_session(&session).await?;
        self.sessions.insert(session.id, session.clone());
        tracing::info!(user_id = %self.user.id, session_id = %session.id, "session opened");
        Ok(self.grant(session))
    }

    fn begin_mfa(&mut self) -> Result<String, SessionError> {
        // A new password step replaces any earlier challenge, and with it its failure count:
        // each challenge costs a full password verification, which is the throttle.
        let token = random_token()?;
        self.challenge = Some(MfaChallenge {
            token: token.clone(),
            expires_at: Utc::now() + self.policy.mfa_challenge_ttl,
            failures: 0,
        });
        Ok(token)
    }

    async fn verify_mfa(&mut self, attempt: MfaAttempt) -> Result<SessionGrant, SessionError> {
        let now = Utc::now();
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

    fn validate(&mut self, session_id: SessionId) -> Result<SessionGrant, SessionError> {
        let now = Utc::now();
        match self.sessions.get(&session_id) {
            Some(session) if session.is_live(now) => Ok(self.grant(session.clone())),
            Some(_) => {
                // Past its absolute end. The row already says so by its `expires_at`, so
                // dropping it from memory needs no write.
                self.sessions.remove(&session_id);
                Err(SessionError::Ended)
            }
            None => Err(SessionError::Ended),
        }
    }

    async fn write_unwritten_revocations(&mut self) {
        let pending = std::mem::take(&mut self.unwritten_revocations);
        for revocation in pending {
            let written = self
                .store
                .revoke_session(revocation.session_id, revocation.at, revocation.reason)
                .await;
            match written {
                Ok(()) => tracing::info!(session_id = %revocation.session_id,
                    "delayed revocation written"),
                Err(_) => self.unwritten_revocations.push(revocation),
            }
        }
    }
}

/// 256 bits from the OS generator, hex-encoded: the opaque `mfaToken`.
fn random_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Unavailable(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
