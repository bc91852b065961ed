//! [`ApiError`]: the one place where an error becomes an HTTP status and a body.
//!
//! Every body is `{"error": "<human message>", "code": "<stable_code>"}`. Lower layers have
//! their own error types (`StoreError`, `AuthError`, `SessionError`); `From` impls fold them
//! in here, and [`ApiError::status_and_code`] is the single `match` that decides what a
//! client sees. A 5xx body is opaque; its cause goes to the log, never to the client.

use serde::Serialize;
use utoipa::ToSchema;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::auth::AuthError;
use crate::sessions::SessionError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Request body is too large")]
    PayloadTooLarge,
    #[error("Invalid credentials")]
    InvalidCredentials,
    #[error("Account is inactive")]
    AccountInactive,
    #[error("Invalid MFA code")]
    InvalidMfaCode,
    #[error("Missing bearer token")]
    MissingToken,
    #[error("Invalid token")]
    InvalidToken,
    #[error("Token has expired")]
    TokenExpired,
    #[error("Session has ended")]
    SessionEnded,
    #[error("Forbidden: {0}")]
    Forbidden(&'static str),
    #[error("Weak password: {0}")]
    WeakPassword(String),
    /// The second factor is not in the state the request needs; `code` says which.
    #[error("{message}")]
    MfaState {
        code: &'static str,
        message: &'static str,
    },
    /// A state-changing console call without the console's header, or sent from another
    /// site (`http::console`).
    #[error("Console requests must come from the console's own pages")]
    CsrfRejected,
    #[error("Missing X-Admin-Key header")]
    AdminKeyRequired,
    #[error("Invalid admin key")]
    InvalidAdminKey,
    /// Introspection asked by someone who is not one of `introspection.clients`.
    #[error("Unknown introspection client")]
    InvalidClient,
    #[error("User not found")]
    UserNotFound,
    #[error("Session not found")]
    SessionNotFound,
    #[error("Not found")]
    NotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// A dependency (the database, a user actor) did not answer; retrying may work.
    #[error("Service temporarily unavailable")]
    Unavailable(String),
    /// `GET /health/ready`: this node cannot serve yet; the text says what is missing.
    #[error("Not ready: {0}")]
    NotReady(&'static str),
    /// Too many requests from this address; the number is seconds to wait.
    #[error("Too many requests; slow down")]
    RateLimited(u64),
    /// Too many failed attempts for this account; the number is seconds to wait.
    #[error("Too many failed attempts; try again later")]
    Throttled(u64),
    /// The request (headers, body and handling) took longer than `http.request_timeout`.
    #[error("Request took too long")]
    RequestTimeout,
    /// Too many password checks are waiting already; retry after a moment.
    #[error("Too many logins at once; try again in a moment")]
    Busy,
    #[error("Internal server error")]
    Internal(String),
}

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// For people: what went wrong and, where it helps, what to fix. Never a value sent.
    #[schema(example = "Invalid credentials")]
    error: String,
    /// For programs: stable across versions.
    #[schema(example = "invalid_credentials")]
    code: &'static str,
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::AccountInactive => (StatusCode::FORBIDDEN, "account_inactive"),
            Self::InvalidMfaCode => (StatusCode::UNAUTHORIZED, "invalid_mfa_code"),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            Self::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            Self::SessionEnded => (StatusCode::UNAUTHORIZED, "session_ended"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
            Self::MfaState { code, .. } => (StatusCode::CONFLICT, code),
            Self::CsrfRejected => (StatusCode::FORBIDDEN, "csrf_rejected"),
            Self::AdminKeyRequired | Self::InvalidAdminKey => {
                (StatusCode::UNAUTHORIZED, "invalid_admin_key")
            }
            Self::InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
            Self::UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            Self::SessionNotFound => (StatusCode::NOT_FOUND, "session_not_found"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    pub fn to_response(&self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && !matches!(self, Self::Busy | Self::NotReady(_)) {
            // The cause is for operators only. (`busy` is load, not a fault: a flood of them
            // must not flood the error log.)
            tracing::error!(%code, cause = ?self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code,
        };
        let mut response = warp::reply::json(&body).into_response();
        *response.status_mut() = status;
        let retry_after = match self {
            // A hash takes well under a second: by then a slot is likely free.
            Self::Busy => Some(1),
            Self::Throttled(seconds) | Self::RateLimited(seconds) => Some(*seconds),
            _ => None,
        };
        if matches!(self, Self::InvalidClient) {
            // RFC 7617: a 401 names the scheme that would be accepted.
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Basic realm=\"finsec introspection\""),
            );
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl warp::reject::Reject for ApiError {}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::InvalidCredentials => Self::InvalidCredentials,
            AuthError::AccountInactive => Self::AccountInactive,
            AuthError::InvalidMfaCode => Self::InvalidMfaCode,
            AuthError::MissingToken => Self::MissingToken,
            AuthError::InvalidToken => Self::InvalidToken,
            AuthError::TokenExpired => Self::TokenExpired,
            AuthError::Busy => Self::Busy,
            AuthError::Hashing(cause) | AuthError::Signing(cause) => Self::Internal(cause),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err.to_string()),
            StoreError::Conflict(_) | StoreError::Corrupt(_) | StoreError::Migration(_) => {
                Self::Internal(err.to_string())
            }
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Auth(auth) => auth.into(),
            SessionError::NotFound => Self::SessionNotFound,
            SessionError::Ended => Self::SessionEnded,
            // Where a client must not learn whether an id exists (login, MFA, tokens), the
            // sessions layer has already turned this into the answer for a wrong credential;
            // what reaches here is an operator's question about a user id.
            SessionError::UnknownUser => Self::UserNotFound,
            SessionError::Forbidden(why) => Self::Forbidden(why),
            SessionError::WeakPassword(why) => Self::WeakPassword(why),
            SessionError::MfaState { code, message } => Self::MfaState { code, message },
            SessionError::Store(store) => store.into(),
            SessionError::Cluster(cluster) => Self::Unavailable(cluster.to_string()),
            // Whole seconds, rounded up: never tell a client to come back before the lock ends.
            SessionError::Throttled(left) => {
                Self::Throttled(left.as_secs() + u64::from(left.subsec_nanos() > 0))
            }
            SessionError::Unavailable(cause) => Self::Unavailable(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_cause() {
        let err = ApiError::from(StoreError::Unavailable(
            "password=hunter2 at db:3306".into(),
        ));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        );
        assert!(!err.to_string().contains("hunter2"));
        let err = ApiError::from(AuthError::Hashing("salt parse".into()));
        assert_eq!(err.to_string(), "Internal server error");
    }

    #[test]
    fn unknown_email_and_wrong_password_look_the_same() {
        let err = ApiError::from(SessionError::Auth(AuthError::InvalidCredentials));
        assert_eq!(
            err.status_and_code(),
            (StatusCode::UNAUTHORIZED, "invalid_credentials")
        );
        assert_eq!(err.to_string(), "Invalid credentials");
    }
}
