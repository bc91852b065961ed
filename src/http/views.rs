//! The shapes responses share: how a session looks to clients (the same in `/me`, the
//! session list and the admin list), a bare message, a message with a count of sessions
//! ended. Each derives `ToSchema`, so `/openapi.json` documents exactly what is sent.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use warp::Reply;
use warp::reply::Response;

use crate::domain::{Session, SessionId};

/// Any response body, sent as JSON with status 200.
pub trait JsonReply: Serialize + Sized {
    fn reply(&self) -> Response {
        warp::reply::json(self).into_response()
    }
}

impl<T: Serialize> JsonReply for T {}

/// A success that has nothing to return but what happened.
#[derive(Serialize, ToSchema)]
pub struct Message {
    message: &'static str,
}

impl Message {
    pub fn new(message: &'static str) -> Self {
        Self { message }
    }
}

/// A success that ended sessions: how many, on every node, before this answer.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    message: &'static str,
    revoked: usize,
}

impl Revoked {
    pub fn new(message: &'static str, revoked: usize) -> Self {
        Self { message, revoked }
    }
}

/// A live session as its owner (or an operator) sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: SessionId,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// A readable label ("Chrome on Mac OSX"), derived from the user agent.
    pub device: String,
    /// True for the session of the token making the request.
    pub current: bool,
}

impl SessionView {
    pub fn new(
        session: &Session,
        idle_timeout: chrono::Duration,
        current: Option<SessionId>,
    ) -> Self {
        Self {
            id: session.id,
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            expires_at: session.expires_at,
            idle_expires_at: session.idle_expires_at(idle_timeout),
            user_agent: session.device.user_agent.clone(),
            ip: session.device.ip.clone(),
            device: device_label(session.device.user_agent.as_deref()),
            current: current == Some(session.id),
        }
    }
}

/// "Browser on OS" from a user agent, via woothee's rules; "Unknown device" when it has none.
/// A label for people, never used for any decision.
pub fn device_label(user_agent: Option<&str>) -> String {
    let Some(parsed) = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua)) else {
        return "Unknown device".to_owned();
    };
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    match (known(parsed.name), known(parsed.os)) {
        (true, true) => format!("{} on {}", parsed.name, parsed.os),
        (true, false) => parsed.name.to_owned(),
        (false, true) => parsed.os.to_owned(),
        (false, false) => "Unknown device".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_like_a_device() {
        let chrome = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let label = device_label(Some(chrome));
        assert!(label.starts_with("Chrome on "), "{label}");
        assert_eq!(device_label(None), "Unknown device");
        assert_eq!(device_label(Some("")), "Unknown device");
    }
}
