//! The HTTP edge (warp). [`routes`] assembles every endpoint; handlers parse requests into
//! typed values, call [`Sessions`], and shape the FinSec API's JSON. Errors of any kind,
//! a handler's or warp's own (unknown path, wrong method, bad header), become an
//! [`ApiError`] and leave through its single mapping.

mod admin;
mod auth;
pub mod console;
mod events;
pub mod extract;
mod health;
mod introspect;
pub use introspect::IntrospectionClients;
mod jwks;
mod mfa;
pub mod openapi;
pub mod rate;
pub mod server;
mod sessions;
pub mod views;

use std::convert::Infallible;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::error::{ApiError, ErrorBody};
use crate::sessions::Sessions;

/// What every handler may use.
pub struct AppState {
    pub sessions: Sessions,
    pub body_limit: u64,
    /// For `idle_expires_at` in session views.
    pub idle_timeout: chrono::Duration,
    /// `None` turns the admin API off.
    pub admin_key: Option<AdminKey>,
    /// The resource servers that may introspect tokens; none turns the endpoint off.
    pub introspection: introspect::IntrospectionClients,
    /// The browser console's settings and operator passes.
    pub console: console::Console,
    /// The per-client-IP limit on endpoints that take credentials.
    pub ip_rate: rate::IpRateLimit,
    /// Renders `GET /metrics` on the main listener; `None` when `metrics.listen` names an
    /// address of its own (or another recorder owns the process).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// A secret kept as its SHA-256 digest: comparing digests in constant time reveals neither
/// the secret's bytes nor its length.
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

/// The operators' API key.
pub struct AdminKey(SecretDigest);

impl AdminKey {
    pub fn new(key: &str) -> Self {
        Self(SecretDigest::of(key))
    }

    pub fn matches(&self, presented: &str) -> bool {
        self.0.ct_eq(&SecretDigest::of(presented)).into()
    }
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let api = endpoints(state.clone());
    // The console calls the API as a service: the same handlers, limits and error mapping.
    let console = console::routes(state, api.clone().recover(recover).unify().boxed());
    let all = api.or(console).unify().recover(recover).unify();
    warp::path::full()
        .and(all)
        .map(with_allow)
        // Nothing this service returns may be cached (tokens, profiles, session lists) but
        // what says otherwise itself: the public keys.
        .with(warp::reply::with::default_header(
            "cache-control",
            "no-store",
        ))
        .with(warp::reply::with::header(
            "x-content-type-options",
            "nosniff",
        ))
        .map(Reply::into_response)
}

/// Every API endpoint, busiest first.
fn endpoints(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    // Each group is boxed: warp's `Or` keeps its alternatives' futures inline, so an unboxed
    // tree makes every request's future the size of the whole API, moved (memcpy) at each
    // poll; boxed, it is a few pointers (perf showed 15% of a request's CPU in memmove).
    // The busiest first: each group a request passes costs it a rejection.
    health::routes(state.clone())
        .boxed()
        .or(metrics_route(state.clone()).boxed())
        .unify()
        .or(auth::routes(state.clone()).boxed())
        .unify()
        .or(introspect::route(state.clone()).boxed())
        .unify()
        .or(sessions::routes(state.clone()).boxed())
        .unify()
        .or(mfa::routes(state.clone()).boxed())
        .unify()
        .or(events::routes(state.clone()).boxed())
        .unify()
        .or(admin::routes(state.clone()).boxed())
        .unify()
        .or(openapi::route().boxed())
        .unify()
        .or(jwks::route(state).boxed())
        .unify()
        .boxed()
}

/// Whether `template` (a [`route_template`]) is one the service serves: an API route, or a
/// console page, file or call.
pub fn is_route(template: &str) -> bool {
    ROUTES.contains(&template) || console::allowed_methods(template).is_some()
}

/// Every route template the service serves (metrics label only these; anything else is
/// `unmatched`).
pub const ROUTES: &[&str] = &[
    "/",
    "/health/alive",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/.well-known/jwks.json",
    "/api/auth/login",
    "/api/auth/verify-mfa",
    "/api/auth/logout",
    "/api/auth/me",
    "/api/auth/introspect",
    "/api/auth/sessions",
    "/api/auth/sessions/{id}",
    "/api/auth/logout-all",
    "/api/auth/change-password",
    "/api/auth/mfa/setup",
    "/api/auth/mfa/enable",
    "/api/auth/mfa/disable",
    "/api/auth/mfa/recovery-codes",
    "/api/auth/events",
    "/api/admin/users",
    "/api/admin/users/{id}/sessions",
    "/api/admin/users/{id}/logout-all",
    "/api/admin/users/{id}/deactivate",
    "/api/admin/users/{id}/activate",
    "/api/admin/users/{id}/events",
];

/// A path as its route template, for logs and metrics: every segment that is an id (digits,
/// or a UUID) becomes `{id}`, so `/api/auth/sessions/3f2a…` is `/api/auth/sessions/{id}`.
/// Paths of no route come out as they are, at most 64 characters.
pub fn route_template(path: &str) -> String {
    let is_id = |segment: &str| {
        (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
            || segment.parse::<uuid::Uuid>().is_ok()
    };
    let template = path
        .split('/')
        .map(|segment| if is_id(segment) { "{id}" } else { segment })
        .collect::<Vec<_>>()
        .join("/");
    template.chars().take(64).collect()
}

/// `GET /metrics`: the Prometheus text format, when served on this listener.
fn metrics_route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(extract::with_state(state))
        .and_then(metrics)
}

/// Prometheus metrics, all named `finsec_`.
///
/// Served here unless `metrics.listen` names an address of its own (then 404 here).
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "The Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 404, description = "Metrics are served on `metrics.listen` (`not_found`)", body = ErrorBody),
    )
)]
pub(super) async fn metrics(state: Arc<AppState>) -> Result<Response, Rejection> {
    match &state.metrics {
        Some(handle) => {
            state.sessions.record_gauges();
            Ok(metrics_response(handle))
        }
        None => Err(warp::reject::not_found()),
    }
}

/// The exposition, with Prometheus's content type.
pub fn metrics_response(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response {
    warp::reply::with_header(
        handle.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}

/// A 405 says which methods its path does serve (RFC 9110 requires `Allow` on it), and the
/// console's answers carry its security headers (`console::secure`).
fn with_allow(path: warp::path::FullPath, mut response: Response) -> Response {
    console::secure(path.as_str(), &mut response);
    if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = openapi::allowed_methods(&route_template(path.as_str()))
            .or_else(|| console::allowed_methods(path.as_str()))
    {
        response.headers_mut().insert(
            warp::http::header::ALLOW,
            warp::http::HeaderValue::from_static(methods),
        );
    }
    response
}

/// A handler's result as a response: success as is, failure through [`ApiError`].
fn respond<R: Reply>(result: Result<R, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(err) => err.to_response(),
    }
}

/// Turns any rejection into the JSON error shape.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(api) = rejection.find::<ApiError>() {
        return Ok(api.to_response());
    } else if rejection.is_not_found() {
        ApiError::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if let Some(header) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::InvalidRequest(format!("Invalid header `{}`", header.name()))
    } else if let Some(header) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::InvalidRequest(format!("Missing header `{}`", header.name()))
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::InvalidRequest("Invalid query string".into())
    } else {
        ApiError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(err.to_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_paths_become_placeholders() {
        assert_eq!(
            route_template("/api/admin/users/42/events"),
            "/api/admin/users/{id}/events"
        );
        assert_eq!(
            route_template("/api/auth/sessions/3f2a8c1e-1b2c-4d5e-8f90-0123456789ab"),
            "/api/auth/sessions/{id}"
        );
        assert_eq!(route_template("/api/auth/me"), "/api/auth/me");
        assert_eq!(route_template(&"/x".repeat(100)).len(), 64);
    }

    #[test]
    fn console_routes_are_its_pages_files_and_the_calls_it_passes_on() {
        for route in [
            "/account/",
            "/admin",
            "/console/assets/api.js",
            "/console/api/admin/session",
            "/console/api/auth/sessions/{id}",
            "/console/api/admin/users",
        ] {
            assert!(is_route(route), "{route}");
        }
        for route in [
            "/console/assets/secrets.toml",
            "/console/api/metrics",
            "/console/api/auth/introspect",
            "/console/api/auth/login/",
            "/console/openapi.json",
        ] {
            assert!(!is_route(route), "{route}");
        }
    }

    #[test]
    fn the_admin_key_matches_only_itself() {
        let key = AdminKey::new("correct-admin-key");
        assert!(key.matches("correct-admin-key"));
        assert!(!key.matches("correct-admin-kez"));
        assert!(!key.matches("correct-admin-key "));
        assert!(!key.matches(""));
    }
}
