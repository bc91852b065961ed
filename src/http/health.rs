//! Health for people and for orchestrators: `GET /` as the original service answered it,
//! `GET /health/alive` (the process answers: restart it if not) and `GET /health/ready` (it
//! can serve: route traffic to it only then). Readiness is checked on each call, bounded by
//! `database.timeout`; a node that is not ready answers 503 in the error shape, the message
//! naming what is missing.

use std::sync::Arc;

use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::AppState;
use super::extract::with_state;
use crate::error::ApiError;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let root = warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "healthy"})).into_response());
    let health = warp::path("health");
    let alive = health
        .and(warp::path("alive"))
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "alive"})).into_response());
    let ready = health
        .and(warp::path("ready"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(|state: Arc<AppState>| async move {
            match state.sessions.readiness().await {
                Ok(ready) => warp::reply::json(&json!({
                    "status": "ready",
                    "database": "ok",
                    "cluster": ready.cluster,
                }))
                .into_response(),
                Err(missing) => ApiError::NotReady(missing).to_response(),
            }
        });
    root.or(alive).unify().or(ready).unify()
}
