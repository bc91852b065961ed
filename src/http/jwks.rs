//! `GET /.well-known/jwks.json`: the public keys that verify this service's access tokens
//! (RFC 7517), for resource servers to check a token's signature without holding anything that
//! can mint one. Empty under HS256, whose key is a secret. Cacheable for five minutes: a
//! resource server that meets a `kid` it does not know fetches the set again, which is how a
//! new key reaches it before its cache expires.

use std::sync::Arc;

use warp::http::HeaderValue;
use warp::http::header::CACHE_CONTROL;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::AppState;
use super::extract::with_state;
use super::views::JsonReply;
use crate::auth::keys::JwkSet;

pub fn route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and(with_state(state))
        .map(jwks)
}

/// The public keys of the token signers.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "tokens",
    responses((status = 200, description = "The JWK Set: every key that verifies a live token, newest first (none under HS256)", body = JwkSet))
)]
pub(super) fn jwks(state: Arc<AppState>) -> Response {
    let mut response = state.sessions.tokens().jwks().reply();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
