//! The audit trail: one [`AuthEvent`] per security-relevant thing that happened to an account.
//! Events name the account (its id, or for an email with no account a keyed hash of it), the
//! session, and where the request came from; never a password, a code, a token or a secret
//! (there is no field that could hold one).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::{Revocation, SessionId, UserId};

/// Who made a change: the account's owner, an operator (the admin API or CLI), or the
/// service itself (expiry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Initiator {
    #[default]
    System,
    User,
    Operator,
}

impl Initiator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Operator => "operator",
        }
    }
}

impl FromStr for Initiator {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::System, Self::User, Self::Operator]
            .into_iter()
            .find(|actor| actor.as_str() == s)
            .ok_or_else(|| format!("unknown initiator {s:?}"))
    }
}

/// Where a change came from: who, the node that made it and the client that asked (absent
/// for the node's own timers: idle and lifetime expiry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub initiator: Initiator,
    pub node: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What happened. The names are stable: clients and alerting match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A session was opened by email and password alone.
    LoginSucceeded,
    /// The password was right and a second factor is now asked for.
    PasswordVerified,
    /// Wrong credentials, or an inactive account (`reason` says which).
    LoginFailed,
    /// The brute-force throttle locked the account (`reason`: `account_locked`); recorded
    /// once, when the lock begins, not for each request it refuses.
    LoginThrottled,
    /// A session was opened by the second factor (a TOTP code).
    MfaSucceeded,
    /// A wrong or reused second factor (`reason`: `invalid_code`, `code_reused`,
    /// `invalid_recovery_code`). Attempts with no valid challenge are not recorded: anyone can
    /// send them for any user id, and they touch nothing.
    MfaFailed,
    /// A session was opened with a recovery code (spent).
    RecoveryCodeUsed,
    /// A session ended; `reason` is why (`logout`, `logout_all`, `admin`, `idle_timeout`, …).
    SessionEnded,
    PasswordChanged,
    /// A new (pending) TOTP secret was issued; not in force until enabled.
    MfaSetupStarted,
    MfaEnabled,
    MfaDisabled,
    RecoveryCodesRegenerated,
    AccountDeactivated,
    AccountActivated,
}

const KINDS: [EventKind; 15] = [
    EventKind::LoginSucceeded,
    EventKind::PasswordVerified,
    EventKind::LoginFailed,
    EventKind::LoginThrottled,
    EventKind::MfaSucceeded,
    EventKind::MfaFailed,
    EventKind::RecoveryCodeUsed,
    EventKind::SessionEnded,
    EventKind::PasswordChanged,
    EventKind::MfaSetupStarted,
    EventKind::MfaEnabled,
    EventKind::MfaDisabled,
    EventKind::RecoveryCodesRegenerated,
    EventKind::AccountDeactivated,
    EventKind::AccountActivated,
];

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSucceeded => "login_succeeded",
            Self::PasswordVerified => "password_verified",
            Self::LoginFailed => "login_failed",
            Self::LoginThrottled => "login_throttled",
            Self::MfaSucceeded => "mfa_succeeded",
            Self::MfaFailed => "mfa_failed",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::SessionEnded => "session_ended",
            Self::PasswordChanged => "password_changed",
            Self::MfaSetupStarted => "mfa_setup_started",
            Self::MfaEnabled => "mfa_enabled",
            Self::MfaDisabled => "mfa_disabled",
            Self::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Self::AccountDeactivated => "account_deactivated",
            Self::AccountActivated => "account_activated",
        }
    }

    /// `failure` for an attempt that was refused; `success` for everything that took effect.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::LoginFailed | Self::LoginThrottled | Self::MfaFailed => "failure",
            _ => "success",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KINDS
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub user_id: Option<UserId>,
    /// For an email that names no account: its keyed hash (the throttle's account key), so
    /// attempts on it can be correlated without the table holding the email.
    pub account_hash: Option<[u8; 32]>,
    pub session_id: Option<SessionId>,
    /// A stable code saying why (the revoke reason, the failure).
    pub reason: Option<String>,
    /// An operator's free text (a forced logout's reason).
    pub note: Option<String>,
    pub origin: Origin,
}

impl AuthEvent {
    pub fn new(
        at: DateTime<Utc>,
        kind: EventKind,
        user_id: Option<UserId>,
        origin: Origin,
    ) -> Self {
        Self {
            at,
            kind,
            user_id,
            account_hash: None,
            session_id: None,
            reason: None,
            note: None,
            origin,
        }
    }

    pub fn session(mut self, id: SessionId) -> Self {
        self.session_id = Some(id);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }

    /// The record of one session ended by `revocation` (the stores write these in the
    /// transaction that ends the session).
    pub fn session_ended(user: UserId, id: SessionId, revocation: &Revocation) -> Self {
        Self::new(
            revocation.at,
            EventKind::SessionEnded,
            Some(user),
            revocation.origin.clone(),
        )
        .session(id)
        .reason(revocation.reason.as_str())
        .note(revocation.note.clone())
    }
}

/// An event as read back, with its id (the cursor for `before=`; ids grow with time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: u64,
    pub event: AuthEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in KINDS {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("nonsense".parse::<EventKind>().is_err());
        assert_eq!(EventKind::MfaFailed.outcome(), "failure");
        assert_eq!(EventKind::SessionEnded.outcome(), "success");
    }
}
