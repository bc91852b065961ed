//! The shapes responses share: how a session looks to clients (the same in `/me`, the
//! session list and the admin list), a bare message, a message with a count of sessions
//! ended. Each derives `ToSchema`, so `/openapi.json` documents exactly what is sent.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use warp::Reply;
use warp::reply::Response;

use crate::domain::timestamp::rfc3339;
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
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub idle_expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// A readable label ("Chrome on Mac OSX"), derived from the user agent.
    #[schema(value_type = String)]
    pub device: Arc<str>,
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
/// A label for people, never used for any decision. Remembered per agent: [`DeviceLabels`].
pub fn device_label(user_agent: Option<&str>) -> Arc<str> {
    static LABELS: LazyLock<DeviceLabels> = LazyLock::new(|| DeviceLabels::new(4096));
    LABELS.label(user_agent)
}

/// Labels remembered by user agent: woothee takes ~16,000 instructions to parse one (a tenth
/// of all that `/api/auth/me` cost, measured with callgrind), a session's user agent never
/// changes, and the same few agents come back on every request. At most `max` are kept, the
/// least used forgotten first, so made-up agents can neither grow the memory nor crowd out
/// the real ones for good.
pub struct DeviceLabels {
    kept: quick_cache::sync::Cache<Box<str>, Arc<str>>,
    unknown: Arc<str>,
}

impl DeviceLabels {
    pub fn new(max: usize) -> Self {
        Self {
            kept: quick_cache::sync::Cache::new(max),
            unknown: Arc::from("Unknown device"),
        }
    }

    pub fn label(&self, user_agent: Option<&str>) -> Arc<str> {
        let Some(agent) = user_agent.filter(|a| !a.is_empty()) else {
            return self.unknown.clone();
        };
        if let Some(label) = self.kept.get(agent) {
            return label;
        }
        let label = parse_label(agent).map_or_else(|| self.unknown.clone(), Arc::from);
        self.kept.insert(agent.into(), label.clone());
        label
    }
}

fn parse_label(agent: &str) -> Option<String> {
    let parsed = woothee::parser::Parser::new().parse(agent)?;
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    match (known(parsed.name), known(parsed.os)) {
        (true, true) => Some(format!("{} on {}", parsed.name, parsed.os)),
        (true, false) => Some(parsed.name.to_owned()),
        (false, true) => Some(parsed.os.to_owned()),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_like_a_device() {
        let labels = DeviceLabels::new(10);
        let chrome = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let label = labels.label(Some(chrome));
        assert!(label.starts_with("Chrome on "), "{label}");
        assert_eq!(&*labels.label(None), "Unknown device");
        assert_eq!(&*labels.label(Some("")), "Unknown device");
        // Remembered: the same agent gives the same label, from memory the second time.
        assert!(Arc::ptr_eq(&label, &labels.label(Some(chrome))));
        assert_eq!(device_label(Some(chrome)), label);
    }

    /// Made-up agents cannot grow the memory without bound, and are labelled all the same.
    #[test]
    fn the_memory_of_labels_is_bounded() {
        let labels = DeviceLabels::new(8);
        let agent = |i| format!("Mozilla/5.0 (X11; Linux x86_64) Firefox/{i}.0");
        for i in 0..200 {
            assert!(labels.label(Some(&agent(i))).starts_with("Firefox on "));
        }
        assert!(labels.kept.len() <= 8, "{} kept", labels.kept.len());
        // A new agent is still remembered after the flood: nothing is locked out.
        let late = agent(1000);
        assert!(Arc::ptr_eq(
            &labels.label(Some(&late)),
            &labels.label(Some(&late))
        ));
    }
}
