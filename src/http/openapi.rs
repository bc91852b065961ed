//! `GET /openapi.json`: the OpenAPI 3.1 document of every endpoint, generated from the
//! handlers' `#[utoipa::path]` annotations and the request and response types' `ToSchema`.
//! The annotations sit on the very functions the router calls, so a route cannot be added
//! without the document seeing it unless this list misses it, and `tests/api/openapi.rs`
//! checks the list against [`super::ROUTES`] and against what the server answers.

use std::collections::HashMap;
use std::sync::LazyLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
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
        super::jwks::jwks,
        super::introspect::introspect,
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
        admin::find,
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
        (name = "tokens", description = "What other services need to trust this service's tokens"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    ),
    modifiers(&SecuritySchemes, &SharedResponses, &FieldRules),
)]
pub struct ApiDoc;

/// The ways a caller proves who it is: a user's token, the operators' key, a resource server's
/// introspection credentials.
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
        components.add_security_scheme(
            "introspection_client",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A resource server's `id:secret` from `introspection.clients`",
                    ))
                    .build(),
            ),
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

/// Rules between fields that `ToSchema` cannot state, added to the derived schemas: a second
/// factor is exactly one of `otpCode` and `recoveryCode`
/// ([`super::extract::JsonObject::second_factor`]), and verify-mfa's `email` and `password`
/// come both or neither. Each rule is a `oneOf` of the shapes allowed, where absent and
/// `null` are the same (as the server reads them).
struct FieldRules;

impl Modify for FieldRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let one_factor = || {
            one_of([
                shape(&["otpCode"], &["recoveryCode"]),
                shape(&["recoveryCode"], &["otpCode"]),
            ])
        };
        let rules = [
            (
                "VerifyMfaRequest",
                vec![
                    one_factor(),
                    one_of([
                        shape(&["email", "password"], &[]),
                        shape(&[], &["email", "password"]),
                    ]),
                ],
            ),
            ("FactorProof", vec![one_factor()]),
        ];
        for (name, rules) in rules {
            let Some(fields) = components.schemas.remove(name) else {
                continue;
            };
            let schema = rules
                .into_iter()
                .fold(AllOfBuilder::new().item(fields), AllOfBuilder::item)
                .build();
            components
                .schemas
                .insert(name.to_owned(), Schema::AllOf(schema).into());
        }
    }
}

/// An object whose `present` fields are strings and whose `absent` ones are missing or null.
fn shape(present: &[&str], absent: &[&str]) -> Schema {
    let typed = |ty| ObjectBuilder::new().schema_type(ty);
    let object = present.iter().fold(ObjectBuilder::new(), |object, field| {
        object
            .property(*field, typed(Type::String))
            .required(*field)
    });
    let object = absent.iter().fold(object, |object, field| {
        object.property(*field, typed(Type::Null))
    });
    Schema::Object(object.build())
}

fn one_of(shapes: [Schema; 2]) -> Schema {
    Schema::OneOf(
        shapes
            .into_iter()
            .fold(OneOfBuilder::new(), OneOfBuilder::item)
            .build(),
    )
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1, as JSON", content_type = "application/json"))
)]
fn document(json: String) -> HttpResponse {
    warp::reply::with_header(json, "content-type", "application/json").into_response()
}

/// The document, built on first use.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// Each route template's methods, as a 405's `Allow` header lists them (RFC 9110 15.5.6):
/// read from the document, so the header and the document cannot disagree.
static ALLOWED: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
    DOCUMENT
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ]
            .into_iter()
            .filter(|(_, operation)| operation.is_some())
            .map(|(method, _)| method)
            .collect::<Vec<_>>()
            .join(", ");
            (path.clone(), methods)
        })
        .collect()
});

/// The methods `template` (a [`super::route_template`]) serves, for `Allow`.
pub fn allowed_methods(template: &str) -> Option<&'static str> {
    ALLOWED.get(template).map(String::as_str)
}

/// `GET /openapi.json`, rendered once at start.
pub fn route() -> impl Filter<Extract = (HttpResponse,), Error = Rejection> + Clone {
    let json = DOCUMENT.to_json().expect("the document serialises");
    warp::path("openapi.json")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || document(json.clone()))
}
