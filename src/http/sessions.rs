//! A signed-in user's control of their own sessions: list them, end one, end all (or all
//! but this one), and change the password, which ends every other session.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::extract::{JsonObject, authenticated, json_object, optional_json_object, with_state};
use super::rate::within_rate;
use super::views::SessionView;
use super::{AppState, respond};
use crate::error::ApiError;
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
        .and(optional_json_object(limit))
        .then(logout_all)
        .map(respond);

    let change_password = auth
        .and(warp::path("change-password"))
        .and(warp::path::end())
        .and(warp::post())
        .and(within_rate(state.clone()))
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .and(json_object(limit))
        .then(change_password)
        .map(respond);

    list.or(revoke)
        .unify()
        .or(logout_all)
        .unify()
        .or(change_password)
        .unify()
}

async fn list(state: Arc<AppState>, caller: Authenticated) -> Result<Response, ApiError> {
    let sessions = state.sessions.sessions_of(&caller).await?;
    let views: Vec<SessionView> = sessions
        .iter()
        .map(|s| SessionView::new(s, state.idle_timeout, Some(caller.session_id)))
        .collect();
    Ok(warp::reply::json(&json!({ "sessions": views })).into_response())
}

async fn revoke(
    id: String,
    state: Arc<AppState>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    // Not a UUID, not one of yours, or not live: one answer, which says nothing of others.
    let session_id = id.parse().map_err(|_| ApiError::SessionNotFound)?;
    state.sessions.revoke_session(&caller, session_id).await?;
    Ok(warp::reply::json(&json!({ "message": "Session revoked" })).into_response())
}

async fn logout_all(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let keep_current = body.optional_bool("keepCurrent")?.unwrap_or(false);
    let revoked = state.sessions.logout_all(&caller, keep_current).await?;
    Ok(
        warp::reply::json(&json!({ "message": "Logged out of all devices", "revoked": revoked }))
            .into_response(),
    )
}

async fn change_password(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let change = PasswordChange {
        current: SecretString::from(body.string("currentPassword")?),
        new: SecretString::from(body.string("newPassword")?),
    };
    let revoked = state.sessions.change_password(&caller, change).await?;
    Ok(
        warp::reply::json(&json!({ "message": "Password changed", "revoked": revoked }))
            .into_response(),
    )
}
