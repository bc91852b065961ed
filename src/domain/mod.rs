//! The service's vocabulary: values that are valid by construction. Each type can only be
//! built by parsing, so code deeper in the service never re-checks what it holds.

pub mod email;
pub mod event;
pub mod ids;
pub mod secrets;
pub mod session;
pub mod throttle;
pub mod timestamp;
pub mod user;

pub use email::Email;
pub use event::{AuthEvent, EventKind, Initiator, Origin, RecordedEvent};
pub use ids::{SessionId, UserId};
pub use secrets::{HashedCode, SealedSecret};
pub use session::{Device, Revocation, RevocationRecord, RevokeReason, Session};
pub use throttle::{FailureRule, Lockout};
pub use user::{NewUser, User, UserProfile};
