//! Health for people and for orchestrators: `GET /` as the original service answered it,
//! `GET /health/alive` (the process answers: restart it if not) and `GET /health/ready` (it
//! can serve: route traffic to it only then). Readiness is checked on each call, bounded by
//! `database.timeout`; a node that is not ready answers 503 in the error shape, the message
//! naming what is missing.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::AppState;
use super::extract::with_state;
use super::views::JsonReply;
use crate::error::{ApiError, ErrorBody};

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let root = warp::path::end().and(warp::get()).map(root);
    let health = warp::path("health");
    let alive = health
        .and(warp::path("alive"))
        .and(warp::path::end())
        .and(warp::get())
        .map(alive);
    let ready = health
        .and(warp::path("ready"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(ready);
    root.or(alive).unify().or(ready).unify()
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "healthy")]
    status: &'static str,
}

/// `GET /health/ready` when ready.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    #[schema(example = "ok")]
    database: &'static str,
    /// `standalone` on one node; `member` when clustered (bus connected, lease held).
    #[schema(example = "standalone")]
    cluster: &'static str,
}

/// The original service's health check.
#[utoipa::path(
    get, path = "/", tag = "health",
    responses((status = 200, description = "The process answers", body = Status))
)]
pub(super) fn root() -> Response {
    Status { status: "healthy" }.reply()
}

/// Liveness: restart the process if this does not answer.
#[utoipa::path(
    get, path = "/health/alive", tag = "health",
    responses((status = 200, description = "The process answers", body = Status))
)]
pub(super) fn alive() -> Response {
    Status { status: "alive" }.reply()
}

/// Readiness: route traffic here only when this answers 200.
#[utoipa::path(
    get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Store reachable, migrations applied, cluster joined", body = Ready),
        (status = 503, description = "Not ready; the message names what is missing (`not_ready`)", body = ErrorBody),
    )
)]
pub(super) async fn ready(state: Arc<AppState>) -> Response {
    match state.sessions.readiness().await {
        Ok(ready) => Ready {
            status: "ready",
            database: "ok",
            cluster: ready.cluster,
        }
        .reply(),
        Err(missing) => ApiError::NotReady(missing).to_response(),
    }
}
