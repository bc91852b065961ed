//! The FinSec Banking API's auth endpoints: login, verify-mfa, logout and me. Request and
//! response field names are the original service's (camelCase in, snake_case out), so its
//! clients keep working.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{
    FromJson, JsonObject, authenticated, body, device, optional_body, with_state,
};
use super::rate::within_rate;
use super::views::{JsonReply, Message, SessionView};
use super::{AppState, respond};
use crate::domain::{Device, Email, SessionId, UserId, UserProfile};
use crate::error::{ApiError, ErrorBody};
use crate::sessions::{Authenticated, Credentials, IssuedSession, LoginOutcome, SecondFactor};

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
        .and(body(limit))
        .and(device(state.clone()))
        .then(login)
        .map(respond);

    let verify_mfa = auth
        .and(warp::path("verify-mfa"))
        .and(warp::path::end())
        .and(warp::post())
        .and(within_rate(state.clone()))
        .and(with_state(state.clone()))
        .and(body(limit))
        .and(device(state.clone()))
        .then(verify_mfa)
        .map(respond);

    let logout = auth
        .and(warp::path("logout"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and(optional_body(limit))
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

/// `POST /api/auth/login`.
#[derive(ToSchema)]
pub struct LoginRequest {
    #[schema(value_type = String, format = Email, example = "john.doe@example.com")]
    email: Email,
    #[schema(value_type = String, format = Password, min_length = 1)]
    password: SecretString,
}

impl FromJson for LoginRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            email: body.email("email")?,
            password: SecretString::from(body.string("password")?),
        })
    }
}

impl From<LoginRequest> for Credentials {
    fn from(request: LoginRequest) -> Self {
        Credentials {
            email: request.email,
            password: request.password,
        }
    }
}

/// `POST /api/auth/verify-mfa`: the second step, with exactly one of `otpCode` and
/// `recoveryCode`. Clients send the `mfaToken` their login returned (production requires
/// it); the original clients' form resends `email` and `password` instead: both or neither.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct VerifyMfaRequest {
    #[schema(schema_with = super::extract::user_id_schema)]
    user_id: UserId,
    #[schema(example = "123456", min_length = 1)]
    otp_code: Option<String>,
    #[schema(min_length = 1)]
    recovery_code: Option<String>,
    #[schema(min_length = 1)]
    mfa_token: Option<String>,
    #[schema(value_type = Option<String>, format = Email, min_length = 1)]
    email: Option<Email>,
    #[schema(value_type = Option<String>, format = Password, min_length = 1)]
    password: Option<SecretString>,
}

impl FromJson for VerifyMfaRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        let user_id = body.user_id("userId")?;
        let (otp_code, recovery_code) = body.second_factor()?.into_fields();
        let mfa_token = body.optional_string("mfaToken")?;
        let email = body.optional_email("email")?;
        let password = body.optional_string("password")?.map(SecretString::from);
        if email.is_some() != password.is_some() {
            return Err(ApiError::InvalidRequest(
                "`email` and `password` must be sent together".into(),
            ));
        }
        Ok(Self {
            user_id,
            otp_code,
            recovery_code,
            mfa_token,
            email,
            password,
        })
    }
}

impl VerifyMfaRequest {
    fn factor(&mut self) -> SecondFactor {
        SecondFactor::from_fields(self.otp_code.take(), self.recovery_code.take())
    }

    fn credentials(&mut self) -> Option<Credentials> {
        Some(Credentials {
            email: self.email.take()?,
            password: self.password.take()?,
        })
    }
}

/// `POST /api/auth/logout`: the caller's own session unless the body names another of the
/// caller's sessions (`sessionId`); `userId`, when sent, must be the caller's.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct LogoutRequest {
    #[schema(schema_with = super::extract::optional_user_id_schema, required = false)]
    user_id: Option<UserId>,
    #[schema(value_type = Option<String>, format = Uuid, min_length = 1)]
    session_id: Option<SessionId>,
}

impl FromJson for LogoutRequest {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: body.optional_user_id("userId")?,
            session_id: body.optional_session_id("sessionId")?,
        })
    }
}

/// A session opened: by a login without a second factor, or by verify-mfa.
#[derive(Serialize, ToSchema)]
pub struct SessionOpened {
    #[schema(example = "Login successful")]
    message: &'static str,
    /// The bearer token for every other call.
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

/// The password was right and the account has a second factor: send a code to verify-mfa
/// with this `mfaToken`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MfaRequired {
    #[schema(example = "MFA verification required")]
    message: &'static str,
    user_id: UserId,
    require_mfa: bool,
    mfa_token: String,
}

/// `POST /api/auth/login`'s answers.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    LoggedIn(SessionOpened),
    MfaRequired(MfaRequired),
}

/// `GET /api/auth/me`.
#[derive(Serialize, ToSchema)]
pub struct Me {
    #[schema(value_type = UserProfile)]
    user: Arc<UserProfile>,
    session: SessionView,
}

/// Log in with email and password.
///
/// Opens a session, or asks for the second factor when the account has one. Wrong email and
/// wrong password get the same answer, in the same time.
#[utoipa::path(
    post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A session, or the second factor is required", body = LoginResponse),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "Wrong email or password (`invalid_credentials`)", body = ErrorBody),
        (status = 403, description = "The account is deactivated (`account_inactive`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address (`rate_limited`) or for this account (`throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn login(
    state: Arc<AppState>,
    request: LoginRequest,
    device: Device,
) -> Result<Response, ApiError> {
    Ok(match state.sessions.login(request.into(), device).await? {
        LoginOutcome::LoggedIn(issued) => {
            LoginResponse::LoggedIn(SessionOpened::new("Login successful", *issued))
        }
        LoginOutcome::MfaRequired { user_id, mfa_token } => {
            LoginResponse::MfaRequired(MfaRequired {
                message: "MFA verification required",
                user_id,
                require_mfa: true,
                mfa_token,
            })
        }
    }
    .reply())
}

/// Complete a login with a TOTP code or a recovery code.
#[utoipa::path(
    post, path = "/api/auth/verify-mfa", tag = "auth",
    request_body = VerifyMfaRequest,
    responses(
        (status = 200, description = "The session", body = SessionOpened),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "Wrong, reused or expired code or challenge (`invalid_mfa_code`, `invalid_credentials`)", body = ErrorBody),
        (status = 403, description = "The account is deactivated (`account_inactive`)", body = ErrorBody),
        (status = 429, description = "Too many attempts (`rate_limited`, `throttled`); see Retry-After", body = ErrorBody),
    )
)]
pub(super) async fn verify_mfa(
    state: Arc<AppState>,
    mut request: VerifyMfaRequest,
    device: Device,
) -> Result<Response, ApiError> {
    let factor = request.factor();
    let credentials = request.credentials();
    let issued = state
        .sessions
        .verify_mfa(
            request.user_id,
            factor,
            request.mfa_token,
            credentials,
            device,
        )
        .await?;
    Ok(SessionOpened::new("MFA verification successful", issued).reply())
}

/// End the caller's session (or another of the caller's sessions).
#[utoipa::path(
    post, path = "/api/auth/logout", tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional; an empty body ends the caller's session"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended, on every node", body = Message),
        (status = 400, description = "Malformed body (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
        (status = 403, description = "`userId` is not the caller (`forbidden`)", body = ErrorBody),
        (status = 404, description = "`sessionId` is not one of the caller's live sessions (`session_not_found`)", body = ErrorBody),
    )
)]
pub(super) async fn logout(
    state: Arc<AppState>,
    caller: Authenticated,
    request: LogoutRequest,
) -> Result<Response, ApiError> {
    state
        .sessions
        .logout(&caller, request.user_id, request.session_id)
        .await?;
    Ok(Message::new("Logged out successfully").reply())
}

/// The caller's profile and session.
#[utoipa::path(
    get, path = "/api/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
    )
)]
pub(super) fn me(state: Arc<AppState>, caller: Authenticated) -> Response {
    let session = SessionView::new(&caller.session, state.idle_timeout, Some(caller.session_id));
    Me {
        user: caller.user,
        session,
    }
    .reply()
}
