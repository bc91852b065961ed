//! An account. [`User`] is the full record, secrets included, and only ever travels between
//! the store and the user's actor; [`UserProfile`] is what a client may see.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Email, SealedSecret, UserId};

#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// scrypt PHC string; it carries its own cost parameters.
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub preferred_name: Option<String>,
    pub phone_number: Option<String>,
    pub address: Option<String>,
    pub is_active: bool,
    pub mfa_enabled: bool,
    /// The TOTP secret in force (sealed); present when MFA has been enabled.
    pub totp_secret: Option<SealedSecret>,
    /// A secret issued by `mfa/setup` and not yet confirmed with a code (sealed), and when.
    pub totp_pending: Option<SealedSecret>,
    pub totp_pending_at: Option<DateTime<Utc>>,
    /// The newest TOTP time step ever accepted for this user: no code at or before it is
    /// accepted again.
    pub totp_last_step: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Hand-written so that a stray `{:?}` in a log line can never print a hash or a secret.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"[redacted]")
            .field("is_active", &self.is_active)
            .field("mfa_enabled", &self.mfa_enabled)
            .field("totp_secret", &self.totp_secret)
            .field("totp_pending", &self.totp_pending)
            .field("totp_last_step", &self.totp_last_step)
            .finish_non_exhaustive()
    }
}

/// A user to create (the seed and tests); the store assigns the id.
#[derive(Clone)]
pub struct NewUser {
    pub email: Email,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: Option<String>,
    pub is_active: bool,
    pub mfa_enabled: bool,
    pub totp_secret: Option<SealedSecret>,
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("email", &self.email)
            .field("mfa_enabled", &self.mfa_enabled)
            .finish_non_exhaustive()
    }
}

/// The `user` object of the FinSec API: never a hash or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UserProfile {
    pub id: UserId,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: Option<String>,
    pub mfa_enabled: bool,
    pub is_active: bool,
    #[serde(serialize_with = "crate::domain::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl From<&User> for UserProfile {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            email: user.email.to_string(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            phone_number: user.phone_number.clone(),
            mfa_enabled: user.mfa_enabled,
            is_active: user.is_active,
            created_at: user.created_at,
        }
    }
}
