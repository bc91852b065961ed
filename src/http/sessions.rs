//! A signed-in user's control of their own sessions: list them, end one, end all (or all
//! but this one), and change the password, which ends every other session.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::Rejection;
use warp::reply::Response;

use super::extract::{FromJson, JsonObject, authenticated, body, optional_body, with_state};
use super::rate::within_rate;
use super::views::{JsonReply, Message, Revoked, SessionView};
use super::{AppState, respond};
use crate::error::{ApiError, ErrorBody};
use crate::sessions::{Authenticated, PasswordChange};

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    let auth = warp::path("api").and(warp::path("auth"));

    let list = auth
        .and(warp::path("sessions"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .then(list)
        .map(respond);

    let revoke = auth
        .and(warp::path("sessions"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .then(revoke)
        .map(respond);

    let logout_all = auth
        .and(warp::path("logout-all"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and(optional_body(limit))
        .then(logout_all)
        .map(respond);

    let change_password = auth
        .and(warp::path("change-password"))
        .and(warp::path::end())
        .and(warp::post())
        .and(within_rate(state.clone()))
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .and(body(limit))
        .then(change_password)
        .map(respond);

    list.or(revoke)
        .unify()
        .or(logout_all)
        .unify()
        .or(change_password)
        .unify()
}

/// `GET /api/auth/sessions`.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    /// Every live session of the caller, on every device.
    sessions: Vec<SessionView>,
}

/// `POST /api/auth/logout-all`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct LogoutAllRequest {
    /// Keep the caller's own session (default false: end that one too).
    keep_current: Option<bool>,
}

impl FromJson for LogoutAllRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            keep_current: body.optional_bool("keepCurrent")?,
        })
    }
}

/// `POST /api/auth/change-password`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password, min_length = 1)]
    current_password: SecretString,
    /// Checked against the password policy (at least `password.min_length` characters,
    /// default 12, and not guessable); a refusal names every rule it breaks.
    #[schema(value_type = String, format = Password, min_length = 12)]
    new_password: SecretString,
}

impl FromJson for ChangePasswordRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            current_password: SecretString::from(body.string("currentPassword")?),
            new_password: SecretString::from(body.string("newPassword")?),
        })
    }
}

/// The caller's live sessions.
#[utoipa::path(
    get, path = "/api/auth/sessions", tag = "sessions",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Newest first; `current` marks the caller's", body = SessionList),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
    )
)]
pub(super) async fn list(
    state: Arc<AppState>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    let sessions = state.sessions.sessions_of(&caller).await?;
    let sessions = sessions
        .iter()
        .map(|s| SessionView::new(s, state.idle_timeout, Some(caller.session_id)))
        .collect();
    Ok(SessionList { sessions }.reply())
}

/// End one of the caller's sessions (another device, or this one).
#[utoipa::path(
    delete, path = "/api/auth/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, format = Uuid, description = "The session's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended, on every node", body = Message),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
        (status = 404, description = "Not one of the caller's live sessions (`session_not_found`)", body = ErrorBody),
    )
)]
pub(super) async fn revoke(
    id: String,
    state: Arc<AppState>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    // Not a UUID, not one of yours, or not live: one answer, which says nothing of others.
    let session_id = id.parse().map_err(|_| ApiError::SessionNotFound)?;
    state.sessions.revoke_session(&caller, session_id).await?;
    Ok(Message::new("Session revoked").reply())
}

/// End every session of the caller (or every one but this).
#[utoipa::path(
    post, path = "/api/auth/logout-all", tag = "sessions",
    request_body(content = Option<LogoutAllRequest>, description = "Optional; an empty body ends every session"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended, on every node", body = Revoked),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
    )
)]
pub(super) async fn logout_all(
    state: Arc<AppState>,
    caller: Authenticated,
    request: LogoutAllRequest,
) -> Result<Response, ApiError> {
    let keep_current = request.keep_current.unwrap_or(false);
    let revoked = state.sessions.logout_all(&caller, keep_current).await?;
    Ok(Revoked::new("Logged out of all devices", revoked).reply())
}

/// Change the password; every other session ends.
#[utoipa::path(
    post, path = "/api/auth/change-password", tag = "sessions",
    request_body = ChangePasswordRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; `revoked` other sessions ended", body = Revoked),
        (status = 400, description = "Malformed body, or the new password breaks the policy (`invalid_request`, `weak_password`)", body = ErrorBody),
        (status = 401, description = "No valid token or session, or the current password is wrong (`invalid_credentials`, ...)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn change_password(
    state: Arc<AppState>,
    caller: Authenticated,
    request: ChangePasswordRequest,
) -> Result<Response, ApiError> {
    let change = PasswordChange {
        current: request.current_password,
        new: request.new_password,
    };
    let revoked = state.sessions.change_password(&caller, change).await?;
    Ok(Revoked::new("Password changed", revoked).reply())
}
