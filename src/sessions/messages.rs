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
    /// Is this session live? Asked on every authenticated request.
    Validate {
        session_id: SessionId,
        reply: Reply<SessionGrant>,
    },
    /// End one session. Effective in memory at once; replies after the write commits.
    Revoke {
        session_id: SessionId,
        reason: RevokeReason,
        reply: Reply<()>,
    },
    /// Timer tick: retry revocations whose write failed.
    RetryRevocations,
    /// Test hook: make the actor panic, to exercise supervision.
    #[cfg(any(test, feature = "test-hooks"))]
    Crash,
}

/// Messages to the [`SessionSupervisor`](super::supervisor::SessionSupervisor). Its main work
/// arrives as supervision events from its children; this enum is its own timer ticks.
pub enum SupervisorMsg {
    /// How many user actors are resident (for tests and diagnostics).
    CountResidents(RpcReplyPort<usize>),
}
