//! The demo users of `sql/seed/demo_users.toml`, created idempotently: a user whose email
//! already exists is left as it is (its password may have been changed since).

use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{AuthError, PasswordHasher};
use crate::crypto::{Keyring, Purpose};
use crate::domain::{Email, NewUser};
use crate::store::{SessionStore, StoreError};

const DEMO_USERS: &str = include_str!("../sql/seed/demo_users.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct DemoUser {
    pub email: String,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    pub phone_number: Option<String>,
    /// Present for the users who have MFA enabled.
    pub totp_secret: Option<String>,
}

#[derive(Deserialize)]
struct DemoData {
    users: Vec<DemoUser>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("demo data is invalid: {0}")]
    Data(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hashing(#[from] AuthError),
}

/// One demo user, ensured.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub email: Email,
    pub created: bool,
    pub totp_secret: Option<String>,
}

impl std::fmt::Display for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.created { "created" } else { "exists" };
        write!(f, "{state:<8} {}", self.email)?;
        if let Some(secret) = &self.totp_secret {
            write!(f, "  mfa totp_secret={secret}")?;
        }
        Ok(())
    }
}

pub fn demo_users() -> Result<Vec<DemoUser>, SeedError> {
    Figment::from(Toml::string(DEMO_USERS))
        .extract::<DemoData>()
        .map(|data| data.users)
        .map_err(|e| SeedError::Data(e.to_string()))
}

pub async fn ensure_demo_users(
    store: &dyn SessionStore,
    hasher: &PasswordHasher,
    keyring: &Keyring,
) -> Result<Vec<Seeded>, SeedError> {
    let mut seeded = Vec::new();
    for demo in demo_users()? {
        let email = Email::parse(&demo.email)
            .map_err(|e| SeedError::Data(format!("{}: {e}", demo.email)))?;
        let created = match store.user_by_email(&email).await? {
            Some(_) => false,
            None => {
                let new = NewUser {
                    email: email.clone(),
                    password_hash: hasher.hash(SecretString::from(demo.password)).await?,
                    first_name: demo.first_name,
                    last_name: demo.last_name,
                    phone_number: demo.phone_number,
                    is_active: true,
                    mfa_enabled: demo.totp_secret.is_some(),
                    totp_secret: demo
                        .totp_secret
                        .as_ref()
                        .map(|secret| keyring.seal(Purpose::Totp, secret.as_bytes()))
                        .transpose()
                        .map_err(|e| SeedError::Data(e.to_string()))?,
                };
                match store.insert_user(new).await {
                    Ok(_) => true,
                    // Another seeder got there first: the user exists, which is the goal.
                    Err(StoreError::Conflict(_)) => false,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        seeded.push(Seeded {
            email,
            created,
            totp_secret: demo.totp_secret,
        });
    }
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::totp::TotpCode;

    #[test]
    fn the_demo_data_is_the_original_seven_users() {
        let users = demo_users().unwrap();
        assert_eq!(users.len(), 7);
        let mfa: Vec<_> = users
            .iter()
            .filter(|u| u.totp_secret.is_some())
            .map(|u| u.email.as_str())
            .collect();
        assert_eq!(
            mfa,
            [
                "jane.smith@example.com",
                "sarah.wilson@example.com",
                "emma.davis@example.com"
            ]
        );
        for user in &users {
            assert!(Email::parse(&user.email).is_ok());
            if let Some(secret) = &user.totp_secret {
                assert!(TotpCode::from_base32(secret).is_some(), "{secret}");
            }
        }
    }
}
