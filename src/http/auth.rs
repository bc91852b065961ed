//! The FinSec Banking API's auth endpoints: login, verify-mfa, logout and me. Request and
//! response field names are the original service's (camelCase in, snake_case out), so its
//! clients keep working.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::extract::{
    JsonObject, authenticated, device, json_object, optional_json_object, with_state,
};
use super::rate::within_rate;
use super::views::SessionView;
use super::{AppState, respond};
use crate::domain::{Device, SessionId, UserId, UserProfile};
use crate::error::ApiError;
use crate::sessions::{Authenticated, Credentials, IssuedSession, LoginOutcome};

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    let auth = warp::path("api").and(warp::path("auth"));

    let login = auth
        .and(warp::path("login"))
        .and(warp::path::end())
        .and(warp::post())
        .and(within_rate(state.clone()))
        .and(with_state(state.clone()))
        .and(json_object(limit))
        .and(device(state.clone()))
        .then(login)
        .map(respond);

    let verify_mfa = auth
        .and(warp::path("verify-mfa"))
        .and(warp::path::end())
        .and(warp::post())
        .and(within_rate(state.clone()))
        .and(with_state(state.clone()))
        .and(json_object(limit))
        .and(device(state.clone()))
        .then(verify_mfa)
        .map(respond);

    let logout = auth
        .and(warp::path("logout"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and(optional_json_object(limit))
        .then(logout)
        .map(respond);

    let me = auth
        .and(warp::path("me"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .map(me);

    login
        .or(verify_mfa)
        .unify()
        .or(logout)
        .unify()
        .or(me)
        .unify()
}

#[derive(Serialize)]
struct SessionOpened {
    message: &'static str,
    access_token: String,
    session_id: SessionId,
    user: UserProfile,
    /// After a recovery code: how many unused ones are left (camelCase, as the MFA API).
    #[serde(rename = "recoveryCodesLeft", skip_serializing_if = "Option::is_none")]
    recovery_codes_left: Option<usize>,
}

impl SessionOpened {
    fn new(message: &'static str, issued: IssuedSession) -> Self {
        Self {
            message,
            access_token: issued.access_token,
            session_id: issued.session.id,
            user: issued.user,
            recovery_codes_left: issued.recovery_codes_left,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MfaRequired {
    message: &'static str,
    user_id: UserId,
    require_mfa: bool,
    mfa_token: String,
}

#[derive(Serialize)]
struct Message {
    message: &'static str,
}

fn credentials(body: &JsonObject) -> Result<Credentials, ApiError> {
    Ok(Credentials {
        email: body.email("email")?,
        password: SecretString::from(body.string("password")?),
    })
}

async fn login(
    state: Arc<AppState>,
    body: JsonObject,
    device: Device,
) -> Result<Response, ApiError> {
    let credentials = credentials(&body)?;
    Ok(match state.sessions.login(credentials, device).await? {
        LoginOutcome::LoggedIn(issued) => {
            warp::reply::json(&SessionOpened::new("Login successful", *issued)).into_response()
        }
        LoginOutcome::MfaRequired { user_id, mfa_token } => warp::reply::json(&MfaRequired {
            message: "MFA verification required",
            user_id,
            require_mfa: true,
            mfa_token,
        })
        .into_response(),
    })
}

async fn verify_mfa(
    state: Arc<AppState>,
    body: JsonObject,
    device: Device,
) -> Result<Response, ApiError> {
    let user_id = body.user_id("userId")?;
    let factor = body.second_factor()?;
    let mfa_token = body.optional_string("mfaToken")?;
    // The original clients' form: email and password resent with the code. Both or neither.
    let has_email = body.optional_string("email")?.is_some();
    let has_password = body.optional_string("password")?.is_some();
    let credentials = match (has_email, has_password) {
        (true, true) => Some(credentials(&body)?),
        (false, false) => None,
        _ => {
            return Err(ApiError::InvalidRequest(
                "`email` and `password` must be sent together".into(),
            ));
        }
    };
    let issued = state
        .sessions
        .verify_mfa(user_id, factor, mfa_token, credentials, device)
        .await?;
    Ok(
        warp::reply::json(&SessionOpened::new("MFA verification successful", issued))
            .into_response(),
    )
}

async fn logout(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let user_id = body.optional_user_id("userId")?;
    let session_id = body.optional_session_id("sessionId")?;
    state.sessions.logout(&caller, user_id, session_id).await?;
    Ok(warp::reply::json(&Message {
        message: "Logged out successfully",
    })
    .into_response())
}

fn me(state: Arc<AppState>, caller: Authenticated) -> Response {
    let session = SessionView::new(&caller.session, state.idle_timeout, Some(caller.session_id));
    warp::reply::json(&serde_json::json!({ "user": caller.user, "session": session }))
        .into_response()
}
