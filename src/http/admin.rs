//! The operators' API: any user's live sessions, forced logout of all their devices, and
//! deactivation (which ends every session) and reactivation of an account.
//! Authorised by `X-Admin-Key`, compared in constant time; with no key configured the whole
//! API is off and answers 404, as if it did not exist.

use std::sync::Arc;

use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::extract::{JsonObject, device, optional_json_object, with_state};
use super::rate::within_rate;
use super::server::ClientAddr;
use super::views::SessionView;
use super::{AppState, respond};
use crate::domain::session::MAX_REVOKE_NOTE as MAX_REASON;
use crate::domain::{Device, UserId};
use crate::error::ApiError;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    let user = warp::path("api")
        .and(warp::path("admin"))
        .and(warp::path("users"))
        .and(warp::path::param::<u64>());

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
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(|user_id: u64, state: Arc<AppState>, query| async move {
            super::events::page(
                &state,
                UserId::new(user_id),
                &query,
                super::events::Audience::Operator,
            )
            .await
        })
        .map(respond);

    let logout_all = user
        .and(warp::path("logout-all"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_json_object(limit))
        .and(device(state.clone()))
        .then(logout_all)
        .map(respond);

    let deactivate = user
        .and(warp::path("deactivate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_json_object(limit))
        .and(device(state.clone()))
        .then(|user_id, state, body, operator| set_active(user_id, state, body, operator, false))
        .map(respond);

    let activate = user
        .and(warp::path("activate"))
        .and(warp::path::end())
        .and(warp::post())
        .and(admin(state.clone()))
        .and(optional_json_object(limit))
        .and(device(state))
        .then(|user_id, state, body, operator| set_active(user_id, state, body, operator, true))
        .map(respond);

    list.or(events)
        .unify()
        .or(logout_all)
        .unify()
        .or(deactivate)
        .unify()
        .or(activate)
        .unify()
}

/// Passes with the state when `X-Admin-Key` matches the configured key. Guesses at the key
/// are rate limited per client address, and each wrong key is logged with that address.
fn admin(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Rejection> + Clone {
    within_rate(state.clone())
        .and(warp::header::optional::<String>("x-admin-key"))
        .and(warp::ext::optional::<ClientAddr>())
        .and(with_state(state))
        .and_then(
            |key: Option<String>, peer: Option<ClientAddr>, state: Arc<AppState>| async move {
                let Some(expected) = &state.admin_key else {
                    return Err(warp::reject::custom(ApiError::NotFound));
                };
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

async fn list(user_id: u64, state: Arc<AppState>) -> Result<Response, ApiError> {
    let user_id = UserId::new(user_id);
    let sessions = state.sessions.admin_sessions_of(user_id).await?;
    let views: Vec<SessionView> = sessions
        .iter()
        .map(|s| SessionView::new(s, state.idle_timeout, None))
        .collect();
    Ok(warp::reply::json(&json!({ "user_id": user_id, "sessions": views })).into_response())
}

/// The operator's `reason`, bounded by the column that records it.
fn reason(body: &JsonObject) -> Result<Option<String>, ApiError> {
    let reason = body.optional_string("reason")?;
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON)
    {
        return Err(ApiError::InvalidRequest(format!(
            "`reason` must be at most {MAX_REASON} characters"
        )));
    }
    Ok(reason)
}

async fn set_active(
    user_id: u64,
    state: Arc<AppState>,
    body: JsonObject,
    operator: Device,
    active: bool,
) -> Result<Response, ApiError> {
    let reason = reason(&body)?;
    let user_id = UserId::new(user_id);
    let revoked = state
        .sessions
        .admin_set_active(user_id, active, reason, &operator)
        .await?;
    let message = if active {
        "Account activated"
    } else {
        "Account deactivated; every session ended"
    };
    Ok(warp::reply::json(
        &json!({ "message": message, "user_id": user_id, "active": active, "revoked": revoked }),
    )
    .into_response())
}

async fn logout_all(
    user_id: u64,
    state: Arc<AppState>,
    body: JsonObject,
    operator: Device,
) -> Result<Response, ApiError> {
    let reason = reason(&body)?;
    let revoked = state
        .sessions
        .admin_logout_all(UserId::new(user_id), reason, &operator)
        .await?;
    Ok(
        warp::reply::json(&json!({ "message": "Logged out of all devices", "revoked": revoked }))
            .into_response(),
    )
}
