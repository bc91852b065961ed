//! The operators' API: any user's live sessions, forced logout of all their devices, and
//! deactivation (which ends every session) and reactivation of an account.
//! Authorised by `X-Admin-Key`, compared in constant time; with no key configured the whole
//! API is off and answers 404, as if it did not exist.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::console::OperatorPass;
use super::events::{Audience, PageQuery};
use super::extract::{FromJson, JsonObject, device, optional_body, with_state};
use super::rate::within_rate;
use super::server::ClientAddr;
use super::views::{JsonReply, Revoked, SessionView};
use super::{AppState, respond};
use crate::domain::session::MAX_REVOKE_NOTE as MAX_REASON;
use crate::domain::{Device, Email, UserId, UserProfile};
use crate::error::{ApiError, ErrorBody};

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    let user = warp::path("api")
        .and(warp::path("admin"))
        .and(warp::path("users"))
        .and(warp::path::param::<u64>());

    let find = warp::path("api")
        .and(warp::path("admin"))
        .and(warp::path("users"))
        .and(warp::path::end())
        .and(warp::get())
        .and(admin(state.clone()))
        .and(warp::query::<FindQuery>())
        .then(find)
        .map(respond);

    let list = user
        .and(warp::path("sessions"))
        .and(warp::path::end())
        .and(warp::get())
        .and(admin(state.clone()))
        .then(list)
        .map(respond);

    let events = user
        .and(warp::path("events"))
        .and(warp::path::end())
        .and(warp::get())
        .and(admin(state.clone()))
        .and(warp::query::<PageQuery>())
        .then(events)
        .map(respond);

    let logout_all = user
        .and(warp::path("logout-all"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_body(limit))
        .and(device(state.clone()))
        .then(logout_all)
        .map(respond);

    let deactivate = user
        .and(warp::path("deactivate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_body(limit))
        .and(device(state.clone()))
        .then(deactivate)
        .map(respond);

    let activate = user
        .and(warp::path("activate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_body(limit))
        .and(device(state))
        .then(activate)
        .map(respond);

    find.or(list)
        .unify()
        .or(events)
        .unify()
        .or(logout_all)
        .unify()
        .or(deactivate)
        .unify()
        .or(activate)
        .unify()
}

/// Passes with the state when `X-Admin-Key` matches the configured key (or the console
/// vouches for an operator's pass, `console::OperatorPass`). Guesses at the key
/// are rate limited per client address, and each wrong key is logged with that address.
fn admin(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Rejection> + Clone {
    within_rate(state.clone())
        .and(warp::header::optional::<String>("x-admin-key"))
        .and(warp::ext::optional::<OperatorPass>())
        .and(warp::ext::optional::<ClientAddr>())
        .and(with_state(state))
        .and_then(
            |key: Option<String>,
             pass: Option<OperatorPass>,
             peer: Option<ClientAddr>,
             state: Arc<AppState>| async move {
                let Some(expected) = &state.admin_key else {
                    return Err(warp::reject::custom(ApiError::NotFound));
                };
                // The console checked an operator's pass, given for this key.
                if pass.is_some() {
                    return Ok(state);
                }
                match key {
                    None => Err(warp::reject::custom(ApiError::AdminKeyRequired)),
                    Some(key) if expected.matches(&key) => Ok(state),
                    Some(_) => {
                        tracing::warn!(peer = ?peer.map(|p| p.0.ip()), "wrong admin key presented");
                        Err(warp::reject::custom(ApiError::InvalidAdminKey))
                    }
                }
            },
        )
}

/// The user id in the path: the store's ids run from 1 to `i64::MAX`, and any other number
/// names no one.
fn user(id: u64) -> Result<UserId, ApiError> {
    if (1..=i64::MAX as u64).contains(&id) {
        Ok(UserId::new(id))
    } else {
        Err(ApiError::UserNotFound)
    }
}

/// An operator's request to end sessions or change an account: the reason, recorded in the
/// audit trail (never shown to the user).
#[derive(ToSchema)]
pub struct AdminRequest {
    /// At most 255 characters.
    #[schema(min_length = 1, max_length = 255, example = "card reported stolen")]
    reason: Option<String>,
}

impl FromJson for AdminRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        let reason = body.optional_string("reason")?;
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON)
        {
            return Err(ApiError::InvalidRequest(format!(
                "`reason` must be at most {MAX_REASON} characters"
            )));
        }
        Ok(Self { reason })
    }
}

/// `GET /api/admin/users?email=`: the query as sent (the handler parses the email, so a bad
/// one gets a message naming it).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FindQuery {
    /// The customer's email, matched case-insensitively.
    #[param(value_type = String, format = Email, example = "john.doe@example.com")]
    email: Option<String>,
}

/// The account an operator looked up.
#[derive(Serialize, ToSchema)]
pub struct FoundUser {
    user: UserProfile,
}

/// `GET /api/admin/users/{id}/sessions`.
#[derive(Serialize, ToSchema)]
pub struct AdminSessionList {
    user_id: UserId,
    sessions: Vec<SessionView>,
}

/// An account activated or deactivated.
#[derive(Serialize, ToSchema)]
pub struct AccountState {
    message: &'static str,
    user_id: UserId,
    active: bool,
    /// Sessions ended (deactivation ends them all).
    revoked: usize,
}

/// Find a customer's account by email.
#[utoipa::path(
    get, path = "/api/admin/users", tag = "admin",
    params(FindQuery),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The account", body = FoundUser),
        (status = 400, description = "No `email`, or not an email (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No account has that email (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn find(state: Arc<AppState>, query: FindQuery) -> Result<Response, ApiError> {
    let raw = query
        .email
        .filter(|e| !e.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest("`email` is required".into()))?;
    let email = Email::parse(&raw).map_err(|e| ApiError::InvalidRequest(format!("`email` {e}")))?;
    let user = state.sessions.admin_find_user(&email).await?;
    Ok(FoundUser { user }.reply())
}

/// Any user's live sessions.
#[utoipa::path(
    get, path = "/api/admin/users/{id}/sessions", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "The user's id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Every live session of the user", body = AdminSessionList),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn list(user_id: u64, state: Arc<AppState>) -> Result<Response, ApiError> {
    let user_id = user(user_id)?;
    let sessions = state.sessions.admin_sessions_of(user_id).await?;
    let sessions = sessions
        .iter()
        .map(|s| SessionView::new(s, state.idle_timeout, None))
        .collect();
    Ok(AdminSessionList { user_id, sessions }.reply())
}

/// Any user's security events, with what operators did and from where.
#[utoipa::path(
    get, path = "/api/admin/users/{id}/events", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "The user's id"), PageQuery),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "A page, newest first", body = super::events::EventPage),
        (status = 400, description = "A bad `limit` or `before` (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn events(
    user_id: u64,
    state: Arc<AppState>,
    query: PageQuery,
) -> Result<Response, ApiError> {
    super::events::page(&state, user(user_id)?, &query, Audience::Operator).await
}

/// Deactivate an account: every session ends, and no login succeeds until reactivation.
#[utoipa::path(
    post, path = "/api/admin/users/{id}/deactivate", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "The user's id")),
    request_body(content = Option<AdminRequest>, description = "Optional"),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Deactivated, on every node", body = AccountState),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn deactivate(
    user_id: u64,
    state: Arc<AppState>,
    request: AdminRequest,
    operator: Device,
) -> Result<Response, ApiError> {
    set_active(user_id, state, request, operator, false).await
}

/// Reactivate an account.
#[utoipa::path(
    post, path = "/api/admin/users/{id}/activate", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "The user's id")),
    request_body(content = Option<AdminRequest>, description = "Optional"),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Active", body = AccountState),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn activate(
    user_id: u64,
    state: Arc<AppState>,
    request: AdminRequest,
    operator: Device,
) -> Result<Response, ApiError> {
    set_active(user_id, state, request, operator, true).await
}

async fn set_active(
    user_id: u64,
    state: Arc<AppState>,
    request: AdminRequest,
    operator: Device,
    active: bool,
) -> Result<Response, ApiError> {
    let user_id = user(user_id)?;
    let revoked = state
        .sessions
        .admin_set_active(user_id, active, request.reason, &operator)
        .await?;
    let message = if active {
        "Account activated"
    } else {
        "Account deactivated; every session ended"
    };
    Ok(AccountState {
        message,
        user_id,
        active,
        revoked,
    }
    .reply())
}

/// Sign a user out of every device: "card stolen".
#[utoipa::path(
    post, path = "/api/admin/users/{id}/logout-all", tag = "admin",
    params(("id" = i64, Path, minimum = 1, description = "The user's id")),
    request_body(content = Option<AdminRequest>, description = "Optional"),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Every session ended, on every node", body = Revoked),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No or a wrong `X-Admin-Key` (`invalid_admin_key`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`), or the admin API is off (`not_found`)", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (`rate_limited`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn logout_all(
    user_id: u64,
    state: Arc<AppState>,
    request: AdminRequest,
    operator: Device,
) -> Result<Response, ApiError> {
    let revoked = state
        .sessions
        .admin_logout_all(user(user_id)?, request.reason, &operator)
        .await?;
    Ok(Revoked::new("Logged out of all devices", revoked).reply())
}
