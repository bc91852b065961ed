//! Live sessions: the per-user actors that own them, the registry that finds those actors,
//! the supervisor that watches them, the sweeper that expires and prunes rows in the store,
//! and [`Sessions`], the operations the HTTP layer calls.
//!
//! Flow of a login: `Sessions::login` looks the email up in the store (a read), verifies the
//! password on the hashing threads (never in an actor), then asks the user's actor to open a
//! session or an MFA challenge. Every change to a user's sessions happens inside that user's
//! actor, which writes it to the store before it answers.

pub mod journal;
pub mod messages;
mod published;
pub mod registry;
mod remote;
mod service;
pub mod supervisor;
mod sweeper;
pub mod throttle;
pub mod user_actor;

use crate::auth::AuthError;
use crate::cluster::ClusterError;
use crate::store::StoreError;
pub use messages::{
    FactorRequest, LoginStep, MfaAttempt, Opened, SecondFactor, SessionGrant, SupervisorMsg,
    UserMsg,
};
pub use registry::{Registry, Residents};
pub use remote::RemoteChanges;
pub use service::{
    Authenticated, Credentials, IssuedSession, LoginOutcome, MAX_EVENTS_PAGE, MfaSetup,
    PasswordChange, Readiness, Sessions, SessionsConfig,
};
pub use supervisor::{SessionSupervisor, SupervisorArgs};
pub use throttle::Throttle;
pub use user_actor::SessionPolicy;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The session named by a request is not a live session of this user.
    #[error("session not found")]
    NotFound,
    /// The session a token names has ended (logged out, revoked or expired).
    #[error("session has ended")]
    Ended,
    /// The user id names no account.
    #[error("unknown user")]
    UnknownUser,
    /// The caller may not act on that user's sessions.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The second factor is not in the state the request needs (`mfa_not_enabled`,
    /// `mfa_already_enabled`, `mfa_setup_required`); the message says what to do.
    #[error("{message}")]
    MfaState {
        code: &'static str,
        message: &'static str,
    },
    /// A new password that the policy refuses; the message says why.
    #[error("weak password: {0}")]
    WeakPassword(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Committed here, but the other nodes could not be told: not acknowledged.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Too many failures for this account: locked for this much longer.
    #[error("throttled for {0:?}")]
    Throttled(std::time::Duration),
    /// The user's actor could not answer in time, or could not start.
    #[error("sessions unavailable: {0}")]
    Unavailable(String),
}
