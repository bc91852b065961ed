//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint, generated from the
//! handlers' `#[utoipa::path]` annotations and the request and response types' `ToSchema`.
//! The annotations sit on the very functions the router calls, so a route cannot be added
//! without the document seeing it unless this list misses it, and `tests/api/openapi.rs`
//! checks the list against [`super::ROUTES`] and against what the server answers.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use warp::reply::Response as HttpResponse;
use warp::{Filter, Rejection, Reply};

use super::{admin, auth, events, health, mfa, sessions};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FinSec Sessions",
        description = "Logins (password, then TOTP where enabled), live sessions on every device, \
                       and their end: logout, logout of all devices, expiry and revocation that \
                       takes effect on the very next request. Every error is \
                       `{\"error\": \"<message>\", \"code\": \"<stable_code>\"}`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        health::root,
        health::alive,
        health::ready,
        super::metrics,
        document,
        auth::login,
        auth::verify_mfa,
        auth::logout,
        auth::me,
        sessions::list,
        sessions::revoke,
        sessions::logout_all,
        sessions::change_password,
        mfa::setup,
        mfa::enable,
        mfa::disable,
        mfa::recovery_codes,
        events::own_events,
        admin::list,
        admin::events,
        admin::logout_all,
        admin::deactivate,
        admin::activate,
    ),
    tags(
        (name = "auth", description = "The FinSec Banking API's login, second factor and logout"),
        (name = "sessions", description = "The caller's sessions and password"),
        (name = "mfa", description = "The caller's second factor (TOTP) and recovery codes"),
        (name = "events", description = "The caller's security events"),
        (name = "admin", description = "Operators: any user's sessions, forced logout, deactivation"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    ),
    modifiers(&SecuritySchemes, &SharedResponses),
)]
pub struct ApiDoc;

/// The two ways a caller proves who it is.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access_token` of a login or verify-mfa, valid while its session lives",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Admin-Key",
                "The operators' key (`admin.key`); without one configured the admin API is off",
            ))),
        );
    }
}

/// Answers any operation can give, whatever it does: the request outlived
/// `http.request_timeout` (408), a body over `http.body_limit` (413, where a body is taken),
/// and a dependency that did not answer or too many logins at once (503). Declared once as
/// components and referenced from every operation.
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
                .into()
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.responses.extend([
            (
                "RequestTimeout".to_owned(),
                error("The request took longer than `http.request_timeout` (`request_timeout`)"),
            ),
            (
                "PayloadTooLarge".to_owned(),
                error("The body is over `http.body_limit` (`payload_too_large`)"),
            ),
            (
                "Unavailable".to_owned(),
                error(
                    "The database or a session actor did not answer in time \
                     (`service_unavailable`), or too many logins are waiting (`busy`, with \
                     Retry-After); retrying may work",
                ),
            ),
        ]);
        let shared = |operation: &mut Operation| {
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, name: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| Ref::new(format!("#/components/responses/{name}")).into());
            };
            add("408", "RequestTimeout");
            add("503", "Unavailable");
            if operation.request_body.is_some() {
                add("413", "PayloadTooLarge");
            }
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                shared(operation);
            }
        }
    }
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1, as JSON", content_type = "application/json"))
)]
fn document(json: String) -> HttpResponse {
    warp::reply::with_header(json, "content-type", "application/json").into_response()
}

/// `GET /openapi.json`, rendered once at start.
pub fn route() -> impl Filter<Extract = (HttpResponse,), Error = Rejection> + Clone {
    let json = ApiDoc::openapi()
        .to_json()
        .expect("the document serialises");
    warp::path("openapi.json")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || document(json.clone()))
}
