//! Credentials toolbox, usable by any layer above `store`: password hashing, TOTP codes and
//! access tokens. None of it holds state about users; that is the session actors' job.

pub mod keys;
pub mod password;
pub mod policy;
pub mod recovery;
pub mod token;
pub mod totp;

pub use password::PasswordHasher;
pub use policy::PasswordPolicy;
pub use token::{AccessClaims, TokenIssuer, TokenSubject};

/// Why a credential was refused. Variants say nothing a client may not learn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong password or unknown email: deliberately one case.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("account is inactive")]
    AccountInactive,
    #[error("invalid MFA code")]
    InvalidMfaCode,
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token expired")]
    TokenExpired,
    /// Too many password checks are queued already: try again shortly.
    #[error("password hashing is busy")]
    Busy,
    /// The hashing machinery itself failed (a bad stored hash, a panicked worker).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// A token could not be signed (a key the crypto backend refuses).
    #[error("token signing failed: {0}")]
    Signing(String),
}
