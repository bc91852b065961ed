//! The caller's own second factor: set up (a new pending secret with its QR code), enable
//! (with a code of it; returns the recovery codes, once), disable, and new recovery codes.
//! Every change needs the password again (ASVS 5.0 7.5.1), and enabling or disabling ends the
//! user's other sessions unless `keepOtherSessions` is true.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::extract::{JsonObject, authenticated, json_object, with_state};
use super::rate::within_rate;
use super::{AppState, respond};
use crate::error::ApiError;
use crate::sessions::Authenticated;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    // Each takes a password or a code: rate limited per client address like a login.
    let mfa = |name: &'static str| {
        warp::path("api")
            .and(warp::path("auth"))
            .and(warp::path("mfa"))
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::post())
            .and(within_rate(state.clone()))
            .and(with_state(state.clone()))
            .and(authenticated(state.clone()))
            .and(json_object(limit))
    };
    mfa("setup")
        .then(setup)
        .map(respond)
        .or(mfa("enable").then(enable).map(respond))
        .unify()
        .or(mfa("disable").then(disable).map(respond))
        .unify()
        .or(mfa("recovery-codes").then(recovery_codes).map(respond))
        .unify()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SetupView {
    message: &'static str,
    secret: String,
    otpauth_url: String,
    qr_svg: String,
}

fn password(body: &JsonObject) -> Result<SecretString, ApiError> {
    Ok(SecretString::from(body.string("password")?))
}

fn keep_other_sessions(body: &JsonObject) -> Result<bool, ApiError> {
    Ok(body.optional_bool("keepOtherSessions")?.unwrap_or(false))
}

async fn setup(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let setup = state.sessions.mfa_setup(&caller, password(&body)?).await?;
    Ok(warp::reply::json(&SetupView {
        message: "Scan the QR code, then confirm with a code at mfa/enable",
        secret: setup.secret,
        otpauth_url: setup.otpauth_url,
        qr_svg: setup.qr_svg,
    })
    .into_response())
}

async fn enable(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let code = body.string("otpCode")?;
    let keep = keep_other_sessions(&body)?;
    let (codes, revoked) = state.sessions.mfa_enable(&caller, code, keep).await?;
    Ok(warp::reply::json(&json!({
        "message": "Two-factor authentication enabled; keep these recovery codes safe",
        "recoveryCodes": codes,
        "revoked": revoked,
    }))
    .into_response())
}

async fn disable(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let password = password(&body)?;
    let proof = body.second_factor()?;
    let keep = keep_other_sessions(&body)?;
    let revoked = state
        .sessions
        .mfa_disable(&caller, password, proof, keep)
        .await?;
    Ok(warp::reply::json(&json!({
        "message": "Two-factor authentication disabled",
        "revoked": revoked,
    }))
    .into_response())
}

async fn recovery_codes(
    state: Arc<AppState>,
    caller: Authenticated,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let password = password(&body)?;
    let proof = body.second_factor()?;
    let codes = state
        .sessions
        .mfa_new_recovery_codes(&caller, password, proof)
        .await?;
    Ok(warp::reply::json(&json!({
        "message": "New recovery codes; the previous ones no longer work",
        "recoveryCodes": codes,
    }))
    .into_response())
}
