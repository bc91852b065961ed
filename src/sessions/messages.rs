//! The actors' whole vocabulary. A handler talks to a user's sessions only through these
//! messages; every question carries an `RpcReplyPort` and is asked with a timeout.

use ractor::RpcReplyPort;

use super::SessionError;
use crate::domain::{Device, RevokeReason, Session, SessionId, UserProfile};

/// What a successful login, MFA check or token validation hands back: the session and the
/// profile of the user who owns it.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    pub session: Session,
    pub user: UserProfile,
}

/// What the password step leads to: a session, or (MFA users) a challenge to answer.
#[derive(Debug, Clone)]
pub enum LoginStep {
    SessionOpened(Box<SessionGrant>),
    MfaRequired { mfa_token: String },
}

/// A second-factor attempt, as received by `verify-mfa`.
#[derive(Debug, Clone)]
pub struct MfaAttempt {
    pub code: String,
    /// The challenge token from the password step, if the client sent it.
    pub mfa_token: Option<String>,
    /// True when this very request carried a verified email and password (the original
    /// FinSec clients' form), which stands in for a pending challenge.
    pub password_verified: bool,
    pub device: Device,
}

pub type Reply<T> = RpcReplyPort<Result<T, SessionError>>;

/// Messages to one user's [`UserActor`](super::user_actor::UserActor).
pub enum UserMsg {
    /// The password was verified: open a session on `device`, or, when the user has MFA,
    /// open a challenge and return its opaque token instead.
    Login {
        device: Device,
        reply: Reply<LoginStep>,
    },
    /// Check a TOTP code; on success, spend its time step and open a session.
    VerifyMfa {
        attempt: MfaAttempt,
        reply: Reply<SessionGrant>,
    },
    /// Is this session live? Asked on every authenticated request; touches the session.
    Validate {
        session_id: SessionId,
        reply: Reply<SessionGrant>,
    },
    /// The user's live sessions, newest first.
    ListSessions { reply: Reply<Vec<Session>> },
    /// End one session. Effective in memory at once; replies after the write commits.
    Revoke {
        session_id: SessionId,
        reason: RevokeReason,
        reply: Reply<()>,
    },
    /// End every session but `except`; replies with how many ended.
    RevokeAll {
        except: Option<SessionId>,
        reason: RevokeReason,
        note: Option<String>,
        reply: Reply<usize>,
    },
    /// Store a new password hash (already computed off the actor), then end every session
    /// but `keep`; replies with how many ended.
    ChangePassword {
        password_hash: String,
        keep: SessionId,
        reply: Reply<usize>,
    },
    /// From the supervisor's sweep: end expired sessions; passivate when idle.
    Tick,
    /// Timer: retry revocation writes that failed.
    RetryRevocations,
    /// Test hook: make the actor panic, to exercise supervision.
    #[cfg(any(test, feature = "test-hooks"))]
    Crash,
}

impl UserMsg {
    /// Client requests count as activity; timer ticks do not (or nothing would passivate).
    pub fn is_from_client(&self) -> bool {
        !matches!(self, Self::Tick | Self::RetryRevocations)
    }
}

/// Messages to the [`SessionSupervisor`](super::supervisor::SessionSupervisor). Its main work
/// arrives as supervision events from its children; these are its timer and its diagnostics.
pub enum SupervisorMsg {
    /// Timer: expire sessions and prune old rows in the store, and tick every resident actor.
    Sweep,
    /// How many user actors are resident (for tests and diagnostics).
    CountResidents(RpcReplyPort<usize>),
}
