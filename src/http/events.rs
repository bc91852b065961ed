//! The audit trail, read back: `GET /api/auth/events` for the caller's own account and
//! `GET /api/admin/users/{id}/events` for operators (routed in `admin`). Newest first, a page
//! at a time: `limit` (1 to 100, default 50) and `before` (an event id: the page after the
//! one that ended there). Users see what operators did to their account, not from where or
//! with which internal note.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract::{authenticated, with_state};
use super::views::JsonReply;
use super::{AppState, respond};
use crate::domain::{Initiator, RecordedEvent, SessionId, UserId};
use crate::error::{ApiError, ErrorBody};
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
        .and(warp::query::<PageQuery>())
        .then(own_events)
        .map(respond)
}

/// The query of both event endpoints, as sent: [`page_query`] reads the numbers, so a bad
/// one gets a message naming it rather than warp's "invalid query string".
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Events per page, 1 to 100 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Start after this event id: the previous page's `next_before`.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
}

/// One page of events, newest first.
#[derive(Serialize, ToSchema)]
pub struct EventPage<'a> {
    events: Vec<EventView<'a>>,
    /// The `before` of the next page; null on the last.
    next_before: Option<u64>,
}

/// The caller's own security events.
#[utoipa::path(
    get, path = "/api/auth/events", tag = "events",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page, newest first", body = EventPage),
        (status = 400, description = "A bad `limit` or `before` (`invalid_request`)", body = ErrorBody),
        (status = 401, description = "No valid token or session (`missing_token`, `invalid_token`, `token_expired`, `session_ended`)", body = ErrorBody),
    )
)]
pub(super) async fn own_events(
    state: Arc<AppState>,
    caller: Authenticated,
    query: PageQuery,
) -> Result<Response, ApiError> {
    page(&state, caller.user_id, &query, Audience::Owner).await
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
    query: &PageQuery,
    audience: Audience,
) -> Result<Response, ApiError> {
    let (limit, before) = page_query(query)?;
    let events = state.sessions.events_of(user, before, limit).await?;
    // A full page may have more behind it; its last id is where the next one starts.
    let next_before = (events.len() == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let events = events.iter().map(|e| EventView::new(e, audience)).collect();
    Ok(EventPage {
        events,
        next_before,
    }
    .reply())
}

fn page_query(query: &PageQuery) -> Result<(usize, Option<u64>), ApiError> {
    let number = |name: &str, raw: &Option<String>| -> Result<Option<u64>, ApiError> {
        raw.as_ref()
            .map(|raw| {
                // Ids are signed 64-bit in the store: a larger number names nothing.
                raw.parse::<u64>()
                    .ok()
                    .filter(|n| (1..=i64::MAX as u64).contains(n))
                    .ok_or_else(|| {
                        ApiError::InvalidRequest(format!("`{name}` must be a positive integer"))
                    })
            })
            .transpose()
    };
    let limit = match number("limit", &query.limit)? {
        None => DEFAULT_PAGE,
        Some(n) if n as usize <= MAX_EVENTS_PAGE => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "`limit` must be at most {MAX_EVENTS_PAGE}"
            )));
        }
    };
    Ok((limit, number("before", &query.before)?))
}

/// An event as clients see it. Nothing in an event is secret: no field can hold a password,
/// code, token or key.
#[derive(Serialize, ToSchema)]
struct EventView<'a> {
    id: u64,
    at: DateTime<Utc>,
    /// What happened: `login_succeeded`, `session_ended`, `mfa_enabled`, ...
    #[schema(example = "login_succeeded")]
    kind: &'static str,
    /// `success` or `failure`.
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
