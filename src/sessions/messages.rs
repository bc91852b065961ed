//! The actors' whole vocabulary. A handler talks to a user's sessions only through these
//! messages; every question carries an `RpcReplyPort` and is asked with a timeout.

use std::sync::Arc;

use ractor::RpcReplyPort;

use super::SessionError;
use super::throttle::Standing;
use crate::domain::{
    Device, HashedCode, Origin, RevokeReason, SealedSecret, Session, SessionId, User, UserProfile,
};

/// What a successful login, MFA check or token validation hands back: the session and the
/// profile of the user who owns it.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    pub session: Session,
    pub user: Arc<UserProfile>,
}

/// A session just opened, and the older sessions the per-user limit ended to make room
/// (other nodes must confirm those before the login is answered).
#[derive(Debug, Clone)]
pub struct Opened {
    pub grant: SessionGrant,
    pub ended: Vec<SessionId>,
    /// When a recovery code opened it: how many unused codes the user has left.
    pub recovery_codes_left: Option<usize>,
}

/// A second factor as a client presents it: a TOTP code or one of the recovery codes.
#[derive(Clone)]
pub enum SecondFactor {
    Totp(String),
    Recovery(String),
}

/// Never the code itself in a log line.
impl std::fmt::Debug for SecondFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Totp(_) => "Totp([redacted])",
            Self::Recovery(_) => "Recovery([redacted])",
        })
    }
}

/// A change of the caller's own second factor, after their password has been checked.
#[derive(Clone)]
pub enum FactorRequest {
    /// Issue `secret` as the pending one.
    Setup { secret: SealedSecret },
    /// Turn the pending secret on, proven by a code of it; `codes` become the recovery codes.
    Enable {
        code: String,
        codes: Vec<HashedCode>,
        end_others: bool,
    },
    /// Turn two-factor off, proven by the current factor.
    Disable {
        proof: SecondFactor,
        end_others: bool,
    },
    /// Replace the recovery codes, proven by the current factor.
    NewRecoveryCodes {
        proof: SecondFactor,
        codes: Vec<HashedCode>,
    },
}

/// What the password step leads to: a session, or (MFA users) a challenge to answer.
#[derive(Debug, Clone)]
pub enum LoginStep {
    SessionOpened(Box<Opened>),
    MfaRequired { mfa_token: String },
}

/// A second-factor attempt, as received by `verify-mfa`.
#[derive(Debug, Clone)]
pub struct MfaAttempt {
    pub factor: SecondFactor,
    /// The challenge token from the password step, if the client sent it.
    pub mfa_token: Option<String>,
    /// The user's row, read when this very request carried a verified email and password
    /// (the original FinSec clients' form), which stands in for a pending challenge.
    pub password_verified: Option<Box<User>>,
    pub device: Device,
}

pub type Reply<T> = RpcReplyPort<Result<T, SessionError>>;

/// Never a code or a secret in a log line.
impl std::fmt::Debug for FactorRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Setup { .. } => "Setup",
            Self::Enable { .. } => "Enable",
            Self::Disable { .. } => "Disable",
            Self::NewRecoveryCodes { .. } => "NewRecoveryCodes",
        })
    }
}

/// What a request knew before it read a user's row: the news mark and the trust epoch
/// ([`super::Registry::marks`]). Memory built from a row read after these knows which news
/// and which loss of trust it may predate, and reloads rather than trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMarks {
    pub news: u64,
    pub trust_epoch: Option<u64>,
}

/// A user's row as a login read it (by email, before hashing), with the marks taken before.
#[derive(Debug, Clone)]
pub struct FreshRow {
    pub user: User,
    pub marks: ReadMarks,
}

/// Messages to one user's [`UserActor`](super::user_actor::UserActor).
pub enum UserMsg {
    /// The password was verified against `user` (the row just read): open a session on
    /// `device`, or, when the user has MFA, open a challenge and return its token instead.
    Login {
        row: Box<FreshRow>,
        /// What the throttle held for the account before the password check.
        failures: Standing,
        device: Device,
        reply: Reply<LoginStep>,
    },
    /// Check a TOTP code; on success, spend its time step and open a session.
    VerifyMfa {
        attempt: MfaAttempt,
        reply: Reply<Opened>,
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
        origin: Origin,
        reply: Reply<()>,
    },
    /// End every session but `except` (wherever it was opened); replies with the ids ended.
    RevokeAll {
        except: Option<SessionId>,
        reason: RevokeReason,
        note: Option<String>,
        origin: Origin,
        reply: Reply<Vec<SessionId>>,
    },
    /// Store a new password hash (already computed off the actor) and end every session but
    /// `keep`, in one transaction; replies with the ids ended.
    ChangePassword {
        password_hash: String,
        keep: SessionId,
        origin: Origin,
        reply: Reply<Vec<SessionId>>,
    },
    /// Set up, enable or disable the second factor, or replace the recovery codes, for the
    /// caller on session `keep`; replies with the sessions that ended with it.
    ChangeFactor {
        request: FactorRequest,
        keep: SessionId,
        origin: Origin,
        reply: Reply<Vec<SessionId>>,
    },
    /// Operators: (de)activate the account; deactivation ends every session
    /// (`account_disabled`). Replies with the ids ended.
    SetActive {
        active: bool,
        note: Option<String>,
        origin: Origin,
        reply: Reply<Vec<SessionId>>,
    },
    /// From another node, through the bus: these sessions ended there.
    Forget { ids: Vec<SessionId> },
    /// From another node: a session it opened (a hint; adopted unless known to be dead).
    Adopt { session: Box<Session> },
    /// From another node: the user's row changed; read it again.
    ReloadUser,
    /// Reload everything from the store: a change arrived while this actor was loading.
    Resync,
    /// From the supervisor's tick: end expired sessions; passivate when idle.
    Tick,
    /// Test hook: make the actor panic, to exercise supervision.
    #[cfg(any(test, feature = "test-hooks"))]
    Crash,
    /// Test hook: keep the actor busy this long (a slow database, say).
    #[cfg(any(test, feature = "test-hooks"))]
    Stall(std::time::Duration),
}

impl UserMsg {
    /// True when the asker has stopped waiting (its call timed out and it answered 503): the
    /// request must then not be carried out at all, or a client told "unavailable" would find
    /// a session opened or a code spent after all.
    pub fn caller_gone(&self) -> bool {
        match self {
            Self::Login { reply, .. } => reply.is_closed(),
            Self::VerifyMfa { reply, .. } => reply.is_closed(),
            Self::Validate { reply, .. } => reply.is_closed(),
            Self::ListSessions { reply } => reply.is_closed(),
            Self::Revoke { reply, .. } => reply.is_closed(),
            Self::RevokeAll { reply, .. } => reply.is_closed(),
            Self::ChangePassword { reply, .. } => reply.is_closed(),
            Self::ChangeFactor { reply, .. } => reply.is_closed(),
            Self::SetActive { reply, .. } => reply.is_closed(),
            _ => false,
        }
    }

    /// Client requests count as activity; timer ticks and other nodes' news do not (or
    /// nothing would passivate), nor does a second-factor attempt, which anyone may send for
    /// any user id (a successful one counts, in the actor).
    pub fn is_from_client(&self) -> bool {
        !matches!(
            self,
            Self::VerifyMfa { .. }
                | Self::Tick
                | Self::Forget { .. }
                | Self::Adopt { .. }
                | Self::ReloadUser
                | Self::Resync
        )
    }
}

impl UserMsg {
    /// Messages whose handling may end sessions or change the user's row, and which write to
    /// the store before memory changes (a password change, a factor change, deactivation, a
    /// login past the session limit, …): the actor's publication is withdrawn before they
    /// are handled, so no validation is answered from what the write is about to end (see
    /// `sessions::published`). `Validate`, `ListSessions`, `Adopt` and `Tick` end sessions
    /// only through `forget`, which withdraws first itself.
    pub fn may_end_sessions(&self) -> bool {
        match self {
            Self::Validate { .. } | Self::ListSessions { .. } | Self::Adopt { .. } | Self::Tick => {
                false
            }
            #[cfg(any(test, feature = "test-hooks"))]
            Self::Crash | Self::Stall(_) => false,
            _ => true,
        }
    }
}

/// Messages to the [`SessionSupervisor`](super::supervisor::SessionSupervisor). Its main work
/// arrives as supervision events from its children; these are its timer and its diagnostics.
pub enum SupervisorMsg {
    /// Timer: tick every resident user actor (the database sweep is the sweeper's).
    Tick,
    /// How many user actors are resident (for tests and diagnostics).
    CountResidents(RpcReplyPort<usize>),
}
