//! One login on one device, and why it ended.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Origin, SessionId, UserId};

/// Where a session was opened from, as the client told us. Informational only: never trusted
/// for authorisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// Absolute end of the session; the access token's `exp` is this instant.
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<RevokeReason>,
    /// Free text an operator gave when forcing a logout.
    pub revoke_note: Option<String>,
    pub device: Device,
}

/// Longest operator note kept with a revocation (the `sessions.revoke_note` column).
pub const MAX_REVOKE_NOTE: usize = 255;

/// Why and when a session ends: what the store records with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub at: DateTime<Utc>,
    pub reason: RevokeReason,
    pub note: Option<String>,
    /// Who ended it, for the audit trail (one `session_ended` event per session it ends).
    pub origin: Origin,
}

impl Revocation {
    pub fn new(at: DateTime<Utc>, reason: RevokeReason) -> Self {
        Self {
            at,
            reason,
            note: None,
            origin: Origin::default(),
        }
    }

    pub fn by(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    pub fn with_note(mut self, note: Option<String>) -> Self {
        self.note = note;
        self
    }
}

/// A [`Revocation`] as it travels (on the bus) and rests (in the journal): plain names, as the
/// store keeps them. Read back with [`RevocationRecord::parse`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RevocationRecord {
    pub at: DateTime<Utc>,
    pub reason: String,
    pub note: Option<String>,
    pub initiator: String,
    pub node: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl From<&Revocation> for RevocationRecord {
    fn from(r: &Revocation) -> Self {
        Self {
            at: r.at,
            reason: r.reason.as_str().to_owned(),
            note: r.note.clone(),
            initiator: r.origin.initiator.as_str().to_owned(),
            node: r.origin.node.clone(),
            ip: r.origin.ip.clone(),
            user_agent: r.origin.user_agent.clone(),
        }
    }
}

impl RevocationRecord {
    /// `None` for names this build does not know (a newer build's, or a damaged record).
    pub fn parse(self) -> Option<Revocation> {
        let origin = Origin {
            initiator: self.initiator.parse().ok()?,
            node: self.node,
            ip: self.ip,
            user_agent: self.user_agent,
        };
        Some(
            Revocation::new(self.at, self.reason.parse().ok()?)
                .by(origin)
                .with_note(self.note),
        )
    }
}

impl Session {
    pub fn open(
        user_id: UserId,
        device: Device,
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> Self {
        Self {
            id: SessionId::random(),
            user_id,
            created_at: now,
            last_seen_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
            revoke_reason: None,
            revoke_note: None,
            device,
        }
    }

    /// Live means neither revoked nor past its absolute end. (Idle expiry depends on
    /// configuration; see [`Session::end_reason`].)
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }

    /// When the idle timer ends this session if no request comes first.
    pub fn idle_expires_at(&self, idle_timeout: chrono::Duration) -> DateTime<Utc> {
        (self.last_seen_at + idle_timeout).min(self.expires_at)
    }

    /// Why this session must end at `now`, if it must: its absolute lifetime is over, or it
    /// has been idle for `idle_timeout`.
    pub fn end_reason(
        &self,
        now: DateTime<Utc>,
        idle_timeout: chrono::Duration,
    ) -> Option<RevokeReason> {
        if now >= self.expires_at {
            Some(RevokeReason::MaxLifetime)
        } else if now >= self.last_seen_at + idle_timeout {
            Some(RevokeReason::IdleTimeout)
        } else {
            None
        }
    }
}

/// Why a session ended; stored as the snake_case name in `sessions.revoke_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    Admin,
    PasswordChanged,
    IdleTimeout,
    MaxLifetime,
    SessionLimit,
    /// The account was deactivated (ASVS 5.0 7.4.2: disabling an account ends its sessions).
    AccountDisabled,
    /// The second factor was enabled, disabled or its recovery codes replaced (ASVS 5.0 7.4.3).
    MfaChanged,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::Admin => "admin",
            Self::PasswordChanged => "password_changed",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxLifetime => "max_lifetime",
            Self::SessionLimit => "session_limit",
            Self::AccountDisabled => "account_disabled",
            Self::MfaChanged => "mfa_changed",
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revoke reason {0:?}")]
pub struct UnknownRevokeReason(pub String);

impl FromStr for RevokeReason {
    type Err = UnknownRevokeReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Logout,
            Self::LogoutAll,
            Self::Admin,
            Self::PasswordChanged,
            Self::IdleTimeout,
            Self::MaxLifetime,
            Self::SessionLimit,
            Self::AccountDisabled,
            Self::MfaChanged,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == s)
        .ok_or_else(|| UnknownRevokeReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_reasons_round_trip_through_their_names() {
        for reason in [
            RevokeReason::Logout,
            RevokeReason::SessionLimit,
            RevokeReason::Admin,
        ] {
            assert_eq!(reason.as_str().parse::<RevokeReason>(), Ok(reason));
        }
        assert!("nonsense".parse::<RevokeReason>().is_err());
    }

    #[test]
    fn a_session_dies_at_its_absolute_end_or_when_revoked() {
        let now = Utc::now();
        let mut session = Session::open(
            UserId::new(1),
            Device::default(),
            now,
            chrono::Duration::hours(1),
        );
        assert!(session.is_live(now));
        assert!(!session.is_live(now + chrono::Duration::hours(1)));
        session.revoked_at = Some(now);
        assert!(!session.is_live(now));
    }

    #[test]
    fn idle_and_absolute_limits_name_their_reason() {
        let now = Utc::now();
        let minutes = chrono::Duration::minutes;
        let mut session = Session::open(UserId::new(1), Device::default(), now, minutes(60));
        assert_eq!(session.end_reason(now + minutes(14), minutes(15)), None);
        assert_eq!(
            session.end_reason(now + minutes(15), minutes(15)),
            Some(RevokeReason::IdleTimeout)
        );
        assert_eq!(session.idle_expires_at(minutes(15)), now + minutes(15));

        // Activity pushes the idle end out, but never past the absolute end.
        session.last_seen_at = now + minutes(50);
        assert_eq!(session.end_reason(now + minutes(59), minutes(15)), None);
        assert_eq!(
            session.end_reason(now + minutes(60), minutes(15)),
            Some(RevokeReason::MaxLifetime)
        );
        assert_eq!(session.idle_expires_at(minutes(15)), now + minutes(60));
    }
}
