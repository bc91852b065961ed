//! `POST /api/auth/introspect` (RFC 7662): a resource server asks whether a token is live,
//! answered exactly as `GET /api/auth/me` decides (signature, claims, then the session live in
//! its user's actor or publication), on any node. Resource servers authenticate with HTTP
//! Basic, as one of `introspection.clients`; with none configured the route is not there (404).
//!
//! A token that is not live, for whatever reason, is `{"active": false}` and nothing more
//! (RFC 7662 §2.2: the reason is none of the asker's business, and would help a token thief).
//! Only a service that cannot tell (its store down past the grace, say) answers an error.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use subtle::Choice;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{form_body, with_state};
use super::views::JsonReply;
use super::{AppState, SecretDigest};
use crate::domain::Device;
use crate::error::ApiError;

/// The resource servers allowed to ask, each as the digests of its id and secret.
pub struct IntrospectionClients(Vec<(SecretDigest, SecretDigest)>);

impl IntrospectionClients {
    /// From `introspection.clients` (`"id:secret"` each, validated with the configuration).
    pub fn new<'a>(clients: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            clients
                .into_iter()
                .filter_map(|client| client.split_once(':'))
                .map(|(id, secret)| (SecretDigest::of(id), SecretDigest::of(secret)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an `Authorization: Basic …` header names one of the clients. Every client is
    /// compared, whichever matches: the time taken says nothing about which ids exist.
    fn admit(&self, header: Option<&str>) -> bool {
        let Some((id, secret)) = header.and_then(basic_credentials) else {
            return false;
        };
        let mut admitted = Choice::from(0);
        for (known_id, known_secret) in &self.0 {
            admitted |= known_id.ct_eq(&id) & known_secret.ct_eq(&secret);
        }
        admitted.into()
    }
}

/// `Basic base64(id:secret)` (RFC 7617), the scheme's name in any case: the digests of both.
fn basic_credentials(header: &str) -> Option<(SecretDigest, SecretDigest)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((SecretDigest::of(id), SecretDigest::of(secret)))
}

pub fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.body_limit;
    warp::path!("api" / "auth" / "introspect")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(warp::header::optional::<String>("authorization"))
        .and_then(|state: Arc<AppState>, header: Option<String>| async move {
            // Off unless configured; then only for a client, before the body is read.
            if state.introspection.is_empty() {
                return Err(warp::reject::custom(ApiError::NotFound));
            }
            if !state.introspection.admit(header.as_deref()) {
                return Err(warp::reject::custom(ApiError::InvalidClient));
            }
            Ok(state)
        })
        .and(form_body(limit))
        .then(introspect)
}

/// RFC 7662's request, as a form body.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the form; the handler reads the fields by name
pub struct IntrospectionRequest {
    /// The access token to ask about.
    token: String,
    /// Accepted and ignored: this service issues access tokens only.
    token_type_hint: Option<String>,
}

/// RFC 7662's answer. Only `active` when the token is not live (the default).
#[derive(Default, Serialize, ToSchema)]
pub struct Introspection {
    active: bool,
    /// The user id, as in the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    /// The session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
}

/// Is this token live? For resource servers.
#[utoipa::path(
    post, path = "/api/auth/introspect", tag = "tokens",
    request_body(content = IntrospectionRequest, content_type = "application/x-www-form-urlencoded"),
    security(("introspection_client" = [])),
    responses(
        (status = 200, description = "`active` and, when active, the token's claims", body = Introspection),
        (status = 400, description = "No `token` field (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 401, description = "Not one of `introspection.clients` (`invalid_client`)", body = crate::error::ErrorBody),
        (status = 404, description = "No introspection clients configured", body = crate::error::ErrorBody),
        (status = 503, description = "Liveness cannot be told now", body = crate::error::ErrorBody),
    )
)]
pub(super) async fn introspect(state: Arc<AppState>, form: Vec<(String, String)>) -> Response {
    let mut tokens = form.iter().filter(|(key, _)| key == "token");
    let (Some((_, token)), None) = (tokens.next(), tokens.next()) else {
        return ApiError::InvalidRequest("one token is required (form field `token`)".into())
            .to_response();
    };
    // The asker is a resource server: its address and agent are not the user's device.
    match state.sessions.authenticate(token, Device::default()).await {
        Ok(caller) => {
            let tokens = state.sessions.tokens();
            Introspection {
                active: true,
                sub: Some(caller.user_id.to_string()),
                sid: Some(caller.session_id.to_string()),
                exp: Some(caller.token.expires_at),
                iat: Some(caller.token.issued_at),
                iss: Some(tokens.issuer().to_owned()),
                aud: Some(tokens.audience().to_owned()),
                token_type: Some("Bearer"),
            }
            .reply()
        }
        Err(err) => match ApiError::from(err) {
            // Not live, whatever the reason: the asker hears no more than that.
            ApiError::InvalidToken
            | ApiError::TokenExpired
            | ApiError::SessionEnded
            | ApiError::MissingToken
            | ApiError::AccountInactive => Introspection::default().reply(),
            // Could not tell (the store down, a fault): neither "live" nor "not live", and a
            // fault is logged where every 5xx is.
            unknown => unknown.to_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> String {
        format!("Basic {}", STANDARD.encode(credentials))
    }

    #[test]
    fn only_a_configured_client_with_its_own_secret_is_admitted() {
        let clients = IntrospectionClients::new(["rs1:first-secret", "rs2:second-secret"]);
        assert!(clients.admit(Some(&basic("rs1:first-secret"))));
        assert!(clients.admit(Some(&basic("rs2:second-secret"))));
        assert!(clients.admit(Some(&format!(
            "bAsIc {}",
            STANDARD.encode("rs1:first-secret")
        ))));
        for refused in [
            basic("rs1:second-secret"),
            basic("rs2:first-secret"),
            basic("rs3:first-secret"),
            basic("rs1"),
            basic("rs1:first-secret "),
            "Bearer rs1:first-secret".into(),
            "Basic not-base64!".into(),
            String::new(),
        ] {
            assert!(!clients.admit(Some(&refused)), "{refused}");
        }
        assert!(!clients.admit(None));
        assert!(IntrospectionClients::new([]).is_empty());
    }
}
