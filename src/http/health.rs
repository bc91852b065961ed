//! `GET /`: liveness, as the original service answered it.

use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "healthy"})).into_response())
}
