//! The caller's own second factor: set up (a new pending secret with its QR code), enable
//! (with a code of it; returns the recovery codes, once), disable, and new recovery codes.
//! Every change needs the password again (ASVS 5.0 7.5.1), and enabling or disabling ends the
//! user's other sessions unless `keepOtherSessions` is true.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{FromJson, JsonObject, authenticated, body, with_state};
use super::rate::within_rate;
use super::views::{JsonReply, Revoked};
use super::{AppState, respond};
use crate::error::{ApiError, ErrorBody};
use crate::sessions::{Authenticated, SecondFactor};

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
    };
    mfa("setup")
        .and(body(limit))
        .then(setup)
        .map(respond)
        .or(mfa("enable").and(body(limit)).then(enable).map(respond))
        .unify()
        .or(mfa("disable").and(body(limit)).then(disable).map(respond))
        .unify()
        .or(mfa("recovery-codes")
            .and(body(limit))
            .then(recovery_codes)
            .map(respond))
        .unify()
}

/// `POST /api/auth/mfa/setup`: the password, again.
#[derive(ToSchema)]
pub struct SetupRequest {
    #[schema(value_type = String, format = Password, min_length = 1)]
    password: SecretString,
}

impl FromJson for SetupRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            password: SecretString::from(body.string("password")?),
        })
    }
}

/// `POST /api/auth/mfa/enable`: a code of the pending secret.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EnableRequest {
    #[schema(example = "123456", min_length = 1)]
    otp_code: String,
    /// Keep the caller's other sessions (default false: they end).
    keep_other_sessions: Option<bool>,
}

impl FromJson for EnableRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            otp_code: body.string("otpCode")?,
            keep_other_sessions: body.optional_bool("keepOtherSessions")?,
        })
    }
}

/// The password and a proof of the factor: exactly one of `otpCode` and `recoveryCode`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct FactorProof {
    #[schema(value_type = String, format = Password, min_length = 1)]
    password: SecretString,
    #[schema(example = "123456", min_length = 1)]
    otp_code: Option<String>,
    #[schema(min_length = 1)]
    recovery_code: Option<String>,
    /// Keep the caller's other sessions (default false: they end). Ignored by
    /// recovery-codes, which ends none.
    keep_other_sessions: Option<bool>,
}

impl FromJson for FactorProof {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        let (otp_code, recovery_code) = body.second_factor()?.into_fields();
        Ok(Self {
            password: SecretString::from(body.string("password")?),
            otp_code,
            recovery_code,
            keep_other_sessions: body.optional_bool("keepOtherSessions")?,
        })
    }
}

impl FactorProof {
    fn into_parts(self) -> (SecretString, SecondFactor, bool) {
        (
            self.password,
            SecondFactor::from_fields(self.otp_code, self.recovery_code),
            self.keep_other_sessions.unwrap_or(false),
        )
    }
}

/// A new pending secret, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetupView {
    message: &'static str,
    /// Base32, for typing into an authenticator.
    secret: String,
    otpauth_url: String,
    /// The otpauth URL as a QR code, an SVG document.
    qr_svg: String,
}

/// The factor is on; the recovery codes are shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaEnabled {
    message: &'static str,
    recovery_codes: Vec<String>,
    /// Other sessions ended.
    revoked: usize,
}

/// New recovery codes, shown once.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCodes {
    message: &'static str,
    recovery_codes: Vec<String>,
}

/// Start enrolling a TOTP authenticator.
#[utoipa::path(
    post, path = "/api/auth/mfa/setup", tag = "mfa",
    request_body = SetupRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A pending secret: confirm it at mfa/enable", body = SetupView),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session, or a wrong password (`invalid_credentials`, ...)", body = ErrorBody),
        (status = 409, description = "Two-factor is on already (`mfa_already_enabled`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn setup(
    state: Arc<AppState>,
    caller: Authenticated,
    request: SetupRequest,
) -> Result<Response, ApiError> {
    let setup = state.sessions.mfa_setup(&caller, request.password).await?;
    Ok(SetupView {
        message: "Scan the QR code, then confirm with a code at mfa/enable",
        secret: setup.secret,
        otpauth_url: setup.otpauth_url,
        qr_svg: setup.qr_svg,
    }
    .reply())
}

/// Turn two-factor on with a code of the pending secret.
#[utoipa::path(
    post, path = "/api/auth/mfa/enable", tag = "mfa",
    request_body = EnableRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "On; the recovery codes, once", body = MfaEnabled),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session, or a wrong code (`invalid_mfa_code`, ...)", body = ErrorBody),
        (status = 409, description = "On already, or no setup pending (`mfa_already_enabled`, `mfa_setup_required`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn enable(
    state: Arc<AppState>,
    caller: Authenticated,
    request: EnableRequest,
) -> Result<Response, ApiError> {
    let keep = request.keep_other_sessions.unwrap_or(false);
    let (recovery_codes, revoked) = state
        .sessions
        .mfa_enable(&caller, request.otp_code, keep)
        .await?;
    Ok(MfaEnabled {
        message: "Two-factor authentication enabled; keep these recovery codes safe",
        recovery_codes,
        revoked,
    }
    .reply())
}

/// Turn two-factor off.
#[utoipa::path(
    post, path = "/api/auth/mfa/disable", tag = "mfa",
    request_body = FactorProof,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Off; `revoked` other sessions ended", body = Revoked),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session, or a wrong password or code (`invalid_credentials`, `invalid_mfa_code`, ...)", body = ErrorBody),
        (status = 409, description = "Two-factor is off (`mfa_not_enabled`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn disable(
    state: Arc<AppState>,
    caller: Authenticated,
    request: FactorProof,
) -> Result<Response, ApiError> {
    let (password, proof, keep) = request.into_parts();
    let revoked = state
        .sessions
        .mfa_disable(&caller, password, proof, keep)
        .await?;
    Ok(Revoked::new("Two-factor authentication disabled", revoked).reply())
}

/// Replace the recovery codes.
#[utoipa::path(
    post, path = "/api/auth/mfa/recovery-codes", tag = "mfa",
    request_body = FactorProof,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new codes, once; the old ones no longer work", body = RecoveryCodes),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session, or a wrong password or code (`invalid_credentials`, `invalid_mfa_code`, ...)", body = ErrorBody),
        (status = 409, description = "Two-factor is off (`mfa_not_enabled`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn recovery_codes(
    state: Arc<AppState>,
    caller: Authenticated,
    request: FactorProof,
) -> Result<Response, ApiError> {
    let (password, proof, _) = request.into_parts();
    let recovery_codes = state
        .sessions
        .mfa_new_recovery_codes(&caller, password, proof)
        .await?;
    Ok(RecoveryCodes {
        message: "New recovery codes; the previous ones no longer work",
        recovery_codes,
    }
    .reply())
}
