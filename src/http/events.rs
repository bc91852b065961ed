//! The audit trail, read back: `GET /api/auth/events` for the caller's own account and
//! `GET /api/admin/users/{id}/events` for operators (routed in `admin`). Newest first, a page
//! at a time: `limit` (1 to 100, default 50) and `before` (an event id: the page after the
//! one that ended there). Users see what operators did to their account, not from where or
//! with which internal note.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::extract::{authenticated, with_state};
use super::{AppState, respond};
use crate::domain::{Initiator, RecordedEvent, SessionId, UserId};
use crate::error::ApiError;
use crate::sessions::{Authenticated, MAX_EVENTS_PAGE};

const DEFAULT_PAGE: usize = 50;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("auth"))
        .and(warp::path("events"))
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |state: Arc<AppState>, caller: Authenticated, query| async move {
                page(&state, caller.user_id, &query, Audience::Owner).await
            },
        )
        .map(respond)
}

/// Who reads the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The account's owner: an operator's address, browser, node and note stay hidden.
    Owner,
    Operator,
}

/// One page of `user`'s events as the response body.
pub async fn page(
    state: &AppState,
    user: UserId,
    query: &HashMap<String, String>,
    audience: Audience,
) -> Result<Response, ApiError> {
    let (limit, before) = page_query(query)?;
    let events = state.sessions.events_of(user, before, limit).await?;
    // A full page may have more behind it; its last id is where the next one starts.
    let next_before = (events.len() == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let views: Vec<EventView> = events.iter().map(|e| EventView::new(e, audience)).collect();
    Ok(warp::reply::json(&json!({ "events": views, "next_before": next_before })).into_response())
}

fn page_query(query: &HashMap<String, String>) -> Result<(usize, Option<u64>), ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|raw| {
                raw.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::InvalidRequest(format!("`{name}` must be a positive integer"))
                })
            })
            .transpose()
    };
    let limit = match number("limit")? {
        None => DEFAULT_PAGE,
        Some(n) if n as usize <= MAX_EVENTS_PAGE => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "`limit` must be at most {MAX_EVENTS_PAGE}"
            )));
        }
    };
    Ok((limit, number("before")?))
}

/// An event as clients see it. Nothing in an event is secret: no field can hold a password,
/// code, token or key.
#[derive(Serialize)]
struct EventView<'a> {
    id: u64,
    at: DateTime<Utc>,
    kind: &'static str,
    outcome: &'static str,
    /// `user`, `operator` or `system`.
    initiator: &'static str,
    user_id: Option<UserId>,
    session_id: Option<SessionId>,
    reason: Option<&'a str>,
    note: Option<&'a str>,
    node_id: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
}

impl<'a> EventView<'a> {
    fn new(recorded: &'a RecordedEvent, audience: Audience) -> Self {
        let e = &recorded.event;
        let shown = audience == Audience::Operator || e.origin.initiator != Initiator::Operator;
        let shown = |value: Option<&'a str>| value.filter(|_| shown);
        Self {
            id: recorded.id,
            at: e.at,
            kind: e.kind.as_str(),
            outcome: e.kind.outcome(),
            initiator: e.origin.initiator.as_str(),
            user_id: e.user_id,
            session_id: e.session_id,
            reason: e.reason.as_deref(),
            note: shown(e.note.as_deref()),
            node_id: shown(e.origin.node.as_deref()),
            ip: shown(e.origin.ip.as_deref()),
            user_agent: shown(e.origin.user_agent.as_deref()),
        }
    }
}
