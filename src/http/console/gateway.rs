//! `/console/api/*`: the console's way into the API. The browser's pages never hold a token;
//! this gateway holds it for them in a cookie and calls the API on their behalf:
//!
//! - `/console/api/auth/<x>` is `/api/auth/<x>` with the session cookie as the bearer token.
//!   A login's (or verify-mfa's) token goes into the cookie and out of the body; so does the
//!   `mfaToken` of a password step, which verify-mfa then gets back from its own cookie.
//! - `/console/api/admin/<x>` is `/api/admin/<x>` for the holder of an operator's pass
//!   (`operator`); `/console/api/admin/session` trades the admin key for one.
//!
//! Every call then runs through the very handlers, limits and error mapping of the bearer
//! API; the gateway only moves credentials between cookie and request. Anything sent as an
//! `Authorization`, `X-Admin-Key` or `Cookie` header is dropped first: here only the console's
//! own cookies count, and there (the API) no cookie does.
//!
//! Cross-site requests: the cookies are `SameSite=Strict`, and a call that changes anything
//! must carry `X-FinSec-Console` (which no form can send and no cross-origin script can
//! without a CORS preflight this service never grants) and, where the browser says where the
//! call came from (`Sec-Fetch-Site`, `Origin`), come from this origin.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower_service::Service;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, Request, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;

use super::cookies::Cookie;
use super::operator::OperatorPass;
use crate::error::ApiError;
use crate::http::extract::{parse_object, raw_body, with_state};
use crate::http::server::ClientAddr;
use crate::http::views::JsonReply;
use crate::http::{AppState, respond};

/// The API itself (every route but the console's, with its error mapping), called as a service.
pub type Api = BoxedFilter<(Response,)>;

/// The header a state-changing console call must carry.
pub const CONSOLE_HEADER: &str = "x-finsec-console";

/// Headers a console call may not pass on: credentials come from the console's cookies only.
const DROPPED: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::CONTENT_LENGTH,
    header::HeaderName::from_static("x-admin-key"),
];

/// What a console call is, by its path under `/console/api/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// `auth/login`: the token (or the challenge) the answer holds goes into a cookie.
    SignIn,
    /// `auth/verify-mfa`: the challenge comes from its cookie, the token goes into one.
    Verify,
    /// `auth/logout`, `auth/logout-all`: may end the session the cookie holds.
    SignOut,
    /// Any other `auth/*` call, with the session cookie as its bearer token.
    Account,
    /// `admin/session`: the operator's pass (get its state, trade the key, drop it).
    OperatorSession,
    /// Any other `admin/*` call, on an operator's pass.
    Admin,
}

impl Call {
    pub(super) fn of(path: &str) -> Option<Self> {
        // The API's paths have no dot, empty or encoded segments. Refusing them keeps a call
        // from walking out of its prefix, and from reaching a handler under a spelling the
        // matches below miss (warp routes `auth/login/` to the login too).
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('%'))
        {
            return None;
        }
        Some(match path {
            "auth/login" => Self::SignIn,
            "auth/verify-mfa" => Self::Verify,
            "auth/logout" | "auth/logout-all" => Self::SignOut,
            // Resource servers' endpoint: HTTP Basic, nothing a browser should ask.
            "auth/introspect" => return None,
            "admin/session" => Self::OperatorSession,
            p if p.starts_with("auth/") => Self::Account,
            p if p.starts_with("admin/") => Self::Admin,
            _ => return None,
        })
    }
}

/// A console call, as it came.
struct Incoming {
    call: Call,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    peer: Option<ClientAddr>,
    body: Bytes,
}

pub fn route(state: Arc<AppState>, api: Api) -> BoxedFilter<(Response,)> {
    warp::path("console")
        .and(warp::path("api"))
        .and(warp::path::full())
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<ClientAddr>())
        .and(raw_body(state.body_limit))
        .and(with_state(state))
        .and(warp::any().map(move || api.clone()))
        .then(
            |full: FullPath,
             method: Method,
             query: String,
             headers: HeaderMap,
             peer: Option<ClientAddr>,
             body: Bytes,
             state: Arc<AppState>,
             api: Api| async move {
                // The path as sent: warp's tail would drop a trailing slash.
                let path = full
                    .as_str()
                    .strip_prefix("/console/api/")
                    .unwrap_or_default();
                let Some(call) = Call::of(path) else {
                    return Err(ApiError::NotFound);
                };
                let incoming = Incoming {
                    call,
                    method,
                    path: path.to_owned(),
                    query,
                    headers,
                    peer,
                    body,
                };
                same_origin(&incoming)?;
                if call == Call::OperatorSession {
                    return operator_session(&state, incoming).await;
                }
                forward(&state, api, incoming).await
            },
        )
        .map(respond)
        .boxed()
}

/// A console call must say it is the console's and, where the browser tells, come from this
/// origin. Reads too: `SameSite` is per site, so a sibling subdomain's `<img>` would carry
/// the cookies, and even a read keeps a session from idling out.
fn same_origin(incoming: &Incoming) -> Result<(), ApiError> {
    let headers = &incoming.headers;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text(CONSOLE_HEADER).is_none() {
        return Err(ApiError::CsrfRejected);
    }
    // Every current browser says where a call came from; its word decides.
    if let Some(site) = text("sec-fetch-site") {
        return if site == "same-origin" {
            Ok(())
        } else {
            Err(ApiError::CsrfRejected)
        };
    }
    // Older browsers still send Origin on a POST: it must name our host (and port, when the
    // Host says one).
    if let (Some(origin), Some(host)) = (text("origin"), text("host")) {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let same = authority.eq_ignore_ascii_case(host)
            || (!host.contains(':')
                && authority
                    .rsplit_once(':')
                    .is_some_and(|(name, _)| name.eq_ignore_ascii_case(host)));
        if !same {
            return Err(ApiError::CsrfRejected);
        }
    }
    Ok(())
}

async fn forward(state: &AppState, api: Api, incoming: Incoming) -> Result<Response, ApiError> {
    let cookies = state.console.cookies;
    let call = incoming.call;
    let mut body = incoming.body;
    if call == Call::Verify
        && let Some(challenge) = cookies.read(&incoming.headers, Cookie::Challenge)
    {
        body = with_challenge(body, challenge);
    }
    let ends_own_session = call == Call::SignOut && ends_own_session(&incoming.path, &body);

    let uri = match incoming.query.as_str() {
        "" => format!("/api/{}", incoming.path),
        query => format!("/api/{}?{query}", incoming.path),
    };
    let mut request = Request::builder()
        .method(incoming.method)
        .uri(uri)
        .body(Full::new(body.clone()))
        .map_err(|e| ApiError::Internal(format!("console request: {e}")))?;
    let incoming_headers = incoming.headers;
    let headers = request.headers_mut();
    for (name, value) in &incoming_headers {
        if !DROPPED.contains(name) {
            headers.append(name, value.clone());
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    match call {
        Call::Account | Call::SignOut => {
            if let Some(token) = cookies.read(&incoming_headers, Cookie::Session) {
                let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ApiError::InvalidToken)?;
                headers.insert(header::AUTHORIZATION, bearer);
            }
        }
        Call::Admin => {
            let pass = cookies.read(&incoming_headers, Cookie::Operator);
            if let Some(passes) = &state.console.operator
                && pass.is_some_and(|pass| passes.verify(pass, Utc::now()).is_some())
            {
                request.extensions_mut().insert(OperatorPass);
            }
        }
        Call::SignIn | Call::Verify | Call::OperatorSession => {}
    }
    if let Some(peer) = incoming.peer {
        request.extensions_mut().insert(peer);
    }

    let response = call_api(api, request).await?;
    let status = response.status();
    let mut response = match call {
        Call::SignIn | Call::Verify if status == StatusCode::OK => {
            keep_credentials(state, call, response).await?
        }
        _ => response,
    };
    let sent = |cookie| cookies.read(&incoming_headers, cookie).is_some();
    let cleared = match call {
        Call::SignOut if status == StatusCode::OK && ends_own_session => Some(Cookie::Session),
        Call::Account | Call::SignOut | Call::Admin if status == StatusCode::UNAUTHORIZED => {
            let (parts, body) = read_body(response).await?;
            let code = error_code(&body);
            response = Response::from_parts(parts, body.into());
            // The credential is over (or never was): the browser drops it. A wrong password
            // or code at re-authentication is a 401 too, and leaves the session be.
            match call {
                Call::Admin => (code == "invalid_admin_key").then_some(Cookie::Operator),
                _ => SESSION_OVER
                    .contains(&code.as_str())
                    .then_some(Cookie::Session),
            }
        }
        _ => None,
    };
    // Only what the browser sent is cleared: a call that carried no cookie changes none.
    if let Some(cookie) = cleared.filter(|&cookie| sent(cookie)) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookies.clear(cookie));
    }
    Ok(response)
}

/// The API's codes for a bearer token that no longer opens anything.
const SESSION_OVER: [&str; 4] = [
    "missing_token",
    "invalid_token",
    "token_expired",
    "session_ended",
];

/// The `code` of an error body.
fn error_code(body: &Bytes) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A response's head and its whole body (the API's answers are small JSON documents).
async fn read_body(response: Response) -> Result<(warp::http::response::Parts, Bytes), ApiError> {
    let (mut parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::Internal(format!("console: reading the API's answer: {e}")))?
        .to_bytes();
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((parts, bytes))
}

/// The API's answer to `request`. On a task of its own: warp keeps the route being served in
/// a thread-local, and a route served inside another one's poll would clobber it (warp
/// panics). Dropped with the console's request (a client gone, a timeout), it is aborted, as
/// the API's own request would have been.
async fn call_api(api: Api, request: Request<Full<Bytes>>) -> Result<Response, ApiError> {
    struct AbortOnDrop(tokio::task::JoinHandle<Result<Response, std::convert::Infallible>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(async move {
        // Called here, not before the spawn: the call itself sets warp's route.
        warp::service(api).call(request).await
    }));
    match (&mut task.0).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(never)) => match never {},
        Err(err) => Err(ApiError::Internal(format!(
            "console: the API call failed: {err}"
        ))),
    }
}

/// verify-mfa's body with the challenge of the cookie, unless it names one itself.
fn with_challenge(body: Bytes, challenge: &str) -> Bytes {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut fields)) if !fields.contains_key("mfaToken") => {
            fields.insert("mfaToken".into(), Value::String(challenge.to_owned()));
            Bytes::from(Value::Object(fields).to_string())
        }
        // The API answers a malformed body as it would anyone's.
        _ => body,
    }
}

/// Whether a logout ends the caller's own session (so its cookie goes too): logout without
/// a `sessionId`, or logout-all without `keepCurrent: true`.
fn ends_own_session(path: &str, body: &Bytes) -> bool {
    // Asked only of a 200, which the API gives only to a well-formed body.
    let Ok(fields) = parse_object(body, true) else {
        return false;
    };
    match path {
        "auth/logout" => matches!(fields.optional_string("sessionId"), Ok(None)),
        _ => !matches!(fields.optional_bool("keepCurrent"), Ok(Some(true))),
    }
}

/// A sign-in's answer with its credential moved into a cookie: the access token (a session
/// opened) or the `mfaToken` (a second factor is due).
async fn keep_credentials(
    state: &AppState,
    call: Call,
    response: Response,
) -> Result<Response, ApiError> {
    let cookies = state.console.cookies;
    let (mut parts, bytes) = read_body(response).await?;
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(ApiError::Internal(
            "console: the API's answer is not an object".into(),
        ));
    };
    let mut set = Vec::new();
    if let Some(Value::String(token)) = fields.remove("access_token") {
        set.push(cookies.set(Cookie::Session, &token, None)?);
        if call == Call::Verify {
            set.push(cookies.clear(Cookie::Challenge));
        }
    }
    if let Some(Value::String(challenge)) = fields.remove("mfaToken") {
        set.push(cookies.set(Cookie::Challenge, &challenge, None)?);
    }
    for cookie in set {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    let body = Bytes::from(Value::Object(fields).to_string());
    Ok(Response::from_parts(parts, body.into()))
}

/// `admin/session`: `GET` says whether the operator's pass is good and until when; `POST
/// {"key"}` trades the admin key for a pass (rate limited per address like the admin API);
/// `DELETE` drops it.
async fn operator_session(state: &AppState, incoming: Incoming) -> Result<Response, ApiError> {
    let Some(passes) = &state.console.operator else {
        return Err(ApiError::NotFound);
    };
    let cookies = state.console.cookies;
    let now = Utc::now();
    match incoming.method {
        Method::GET => {
            let until = cookies
                .read(&incoming.headers, Cookie::Operator)
                .and_then(|pass| passes.verify(pass, now))
                .ok_or(ApiError::AdminKeyRequired)?;
            Ok(json!({"message": "Signed in", "expires_at": until.to_rfc3339()}).reply())
        }
        Method::POST => {
            let forwarded = incoming
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            let client = state.ip_rate.admit(incoming.peer, forwarded)?;
            let key = parse_object(&incoming.body, false)?.string("key")?;
            let matches = state
                .admin_key
                .as_ref()
                .is_some_and(|expected| expected.matches(&key));
            if !matches {
                tracing::warn!(client = ?client, "wrong admin key presented to the console");
                return Err(ApiError::InvalidAdminKey);
            }
            let (pass, until) = passes.issue(now)?;
            tracing::info!(client = ?client, "operator signed in to the console");
            let mut response =
                json!({"message": "Signed in", "expires_at": until.to_rfc3339()}).reply();
            response.headers_mut().append(
                header::SET_COOKIE,
                cookies.set(Cookie::Operator, &pass, Some(passes.ttl().as_secs()))?,
            );
            Ok(response)
        }
        Method::DELETE => {
            let mut response = json!({"message": "Signed out"}).reply();
            response
                .headers_mut()
                .append(header::SET_COOKIE, cookies.clear(Cookie::Operator));
            Ok(response)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_map_to_the_api_and_nowhere_else() {
        assert_eq!(Call::of("auth/login"), Some(Call::SignIn));
        assert_eq!(Call::of("auth/sessions/abc"), Some(Call::Account));
        assert_eq!(Call::of("auth/logout-all"), Some(Call::SignOut));
        assert_eq!(Call::of("admin/users/7/sessions"), Some(Call::Admin));
        assert_eq!(Call::of("admin/session"), Some(Call::OperatorSession));
        for refused in [
            "auth/login/",
            "auth//login",
            "auth/%6cogin",
            "auth/introspect",
            "auth/../admin/users",
            "auth/%2e%2e/admin",
            "health/ready",
            "metrics",
            "",
        ] {
            assert_eq!(Call::of(refused), None, "{refused}");
        }
    }

    #[test]
    fn the_challenge_cookie_fills_in_a_missing_mfa_token_only() {
        let filled = with_challenge(Bytes::from(r#"{"userId":2,"otpCode":"123456"}"#), "abc");
        let filled: Value = serde_json::from_slice(&filled).unwrap();
        assert_eq!(filled["mfaToken"], "abc");
        let own = with_challenge(Bytes::from(r#"{"mfaToken":"mine"}"#), "abc");
        assert_eq!(own, Bytes::from(r#"{"mfaToken":"mine"}"#));
        let junk = with_challenge(Bytes::from("not json"), "abc");
        assert_eq!(junk, Bytes::from("not json"));
    }

    #[test]
    fn only_a_logout_of_this_session_drops_its_cookie() {
        assert!(ends_own_session("auth/logout", &Bytes::new()));
        assert!(!ends_own_session(
            "auth/logout",
            &Bytes::from(r#"{"sessionId":"5b0c6a2e-1b2c-4d5e-8f90-0123456789ab"}"#)
        ));
        assert!(ends_own_session("auth/logout-all", &Bytes::from("{}")));
        assert!(!ends_own_session(
            "auth/logout-all",
            &Bytes::from(r#"{"keepCurrent":true}"#)
        ));
    }
}
