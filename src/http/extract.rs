//! Request extraction: the guard that turns a bearer token into an [`Authenticated`] caller,
//! JSON bodies read under a size limit, and typed field access that answers every malformed
//! input with a 400 naming the field. Parse at the edge: handlers receive typed values.
//!
//! Field errors never echo the value sent: a mistyped password must not come back in a
//! response body or a log line.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};
use warp::{Filter, Rejection};

use super::AppState;
use crate::domain::{Device, Email, SessionId, UserId};
use crate::error::ApiError;
use crate::sessions::{Authenticated, SecondFactor};

/// Longest user agent we keep (the column's width); the rest is noise.
const MAX_USER_AGENT: usize = 512;

pub fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The caller, authenticated: signature, algorithm, issuer, audience, expiry, then the
/// session live in the user's actor. Rejects with a 401 otherwise.
pub fn authenticated(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Authenticated,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(device(state.clone()))
        .and(with_state(state))
        .and_then(
            |header: Option<String>, device: Device, state: Arc<AppState>| async move {
                let token = bearer_token(header.as_deref()).map_err(warp::reject::custom)?;
                state
                    .sessions
                    .authenticate(token, device)
                    .await
                    .map_err(|e| warp::reject::custom(ApiError::from(e)))
            },
        )
}

fn bearer_token(header: Option<&str>) -> Result<&str, ApiError> {
    let header = header.ok_or(ApiError::MissingToken)?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or(ApiError::InvalidToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::InvalidToken);
    }
    Ok(token.trim())
}

/// Where the request came from: user agent and client address (the socket peer, or behind a
/// trusted proxy the address it forwarded; see `http::rate`). Informational only: shown in
/// session lists and logged, never used for authorisation.
pub fn device(state: Arc<AppState>) -> impl Filter<Extract = (Device,), Error = Rejection> + Clone {
    warp::header::optional::<String>("user-agent")
        .and(warp::ext::optional::<super::server::ClientAddr>())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_state(state))
        .map(
            |agent: Option<String>,
             addr: Option<super::server::ClientAddr>,
             forwarded: Option<String>,
             state: Arc<AppState>| Device {
                user_agent: agent.map(truncate_user_agent),
                ip: addr.map(|a| {
                    state
                        .ip_rate
                        .client_ip(a.0.ip(), forwarded.as_deref())
                        .to_string()
                }),
            },
        )
}

/// At most [`MAX_USER_AGENT`] characters. Most agents are far shorter: those are kept as
/// they came, without a second copy char by char (4,500 instructions a request).
fn truncate_user_agent(agent: String) -> String {
    // No more bytes than the limit means no more characters either.
    if agent.len() <= MAX_USER_AGENT {
        return agent;
    }
    agent.chars().take(MAX_USER_AGENT).collect()
}

/// A request body's type: read from the JSON object field by field, each error a 400 that
/// names its field and never echoes its value. Handlers take the parsed type, so their
/// signatures say what they accept, and the same type's `ToSchema` documents it in
/// `/openapi.json`.
pub trait FromJson: Sized {
    fn from_json(body: &JsonObject) -> Result<Self, ApiError>;
}

/// A JSON object body of at most `limit` bytes, parsed into `T`; an empty body is a 400.
pub fn body<T: FromJson + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    json_body(limit, false).and_then(parse_into::<T>)
}

/// Like [`body`], but an empty body (or none) reads as `{}`: for bodies whose every field is
/// optional.
pub fn optional_body<T: FromJson + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    json_body(limit, true).and_then(parse_into::<T>)
}

async fn parse_into<T: FromJson>(body: JsonObject) -> Result<T, Rejection> {
    T::from_json(&body).map_err(warp::reject::custom)
}

fn json_body(
    limit: u64,
    optional: bool,
) -> impl Filter<Extract = (JsonObject,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            read_object(length, body, limit, optional)
                .await
                .map_err(warp::reject::custom)
        })
}

async fn read_object<S, B>(
    declared: Option<u64>,
    body: S,
    limit: u64,
    optional: bool,
) -> Result<JsonObject, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    parse_object(&read_limited(declared, body, limit).await?, optional)
}

/// A form body (`application/x-www-form-urlencoded`, as RFC 7662 asks) of at most `limit`
/// bytes, as its fields in order. Invalid percent-encoding decodes lossily, and fields are
/// then checked by the handler like any other input.
pub fn form_body(
    limit: u64,
) -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    raw_body(limit).map(|bytes: bytes::Bytes| {
        form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
}

/// A body of at most `limit` bytes as it came (the console passes it on to the API, which
/// parses it).
pub fn raw_body(limit: u64) -> impl Filter<Extract = (bytes::Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            let bytes = read_limited(length, body, limit)
                .await
                .map_err(warp::reject::custom)?;
            Ok::<_, Rejection>(bytes.freeze())
        })
}

async fn read_limited<S, B>(
    declared: Option<u64>,
    body: S,
    limit: u64,
) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    // Refuse a declared oversize body before reading a byte of it; count a chunked one as
    // it arrives.
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut bytes = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::InvalidRequest("Request body could not be read".into()))?;
        if (bytes.len() + chunk.remaining()) as u64 > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// A request body as a JSON object (`optional`: an empty body reads as `{}`). Public for the
/// fuzz target (`fuzz/`), which feeds it arbitrary bytes.
pub fn parse_object(bytes: &[u8], optional: bool) -> Result<JsonObject, ApiError> {
    if optional && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonObject(Map::new()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(JsonObject(map)),
        // `null` says "no body" as plainly as an empty one does.
        Ok(Value::Null) if optional => Ok(JsonObject(Map::new())),
        Ok(_) => Err(ApiError::InvalidRequest(
            "Request body must be a JSON object".into(),
        )),
        Err(_) => Err(ApiError::InvalidRequest(
            "Request body must be valid JSON".into(),
        )),
    }
}

/// How a user id may be sent: a positive integer, or its digits as a string (the original
/// clients sent both). For `#[schema(schema_with = ...)]`.
pub fn user_id_schema() -> utoipa::openapi::schema::Schema {
    user_id_shapes(false)
}

/// An optional user id: as [`user_id_schema`], or `null` (read as absent).
pub fn optional_user_id_schema() -> utoipa::openapi::schema::Schema {
    user_id_shapes(true)
}

fn user_id_shapes(nullable: bool) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let shapes = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(i64::MAX)),
        )
        .item(
            // Up to 18 digits: every such number is below `i64::MAX`.
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^0*[1-9][0-9]{0,17}$")),
        );
    let shapes = if nullable {
        shapes.item(ObjectBuilder::new().schema_type(Type::Null))
    } else {
        shapes
    };
    Schema::OneOf(shapes.build())
}

/// A float with no fractional part, as the integer it is (exactly representable: at most 2^53).
fn integral(f: f64) -> Option<u64> {
    const EXACT: f64 = (1u64 << 53) as f64;
    (f.fract() == 0.0 && (0.0..=EXACT).contains(&f)).then_some(f as u64)
}

/// A parsed JSON object with typed, validating accessors.
#[derive(Debug, Default)]
pub struct JsonObject(Map<String, Value>);

impl JsonObject {
    fn present(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// A required, non-empty string.
    pub fn string(&self, field: &str) -> Result<String, ApiError> {
        self.optional_string(field)?
            .ok_or_else(|| ApiError::InvalidRequest(format!("`{field}` is required")))
    }

    /// A string that may be absent or null; present but empty or not a string is an error.
    pub fn optional_string(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(ApiError::InvalidRequest(format!(
                "`{field}` must not be empty"
            ))),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::InvalidRequest(format!(
                "`{field}` must be a string"
            ))),
        }
    }

    pub fn email(&self, field: &str) -> Result<Email, ApiError> {
        Email::parse(&self.string(field)?)
            .map_err(|e| ApiError::InvalidRequest(format!("`{field}` {e}")))
    }

    pub fn optional_email(&self, field: &str) -> Result<Option<Email>, ApiError> {
        self.optional_string(field)?
            .map(|raw| {
                Email::parse(&raw).map_err(|e| ApiError::InvalidRequest(format!("`{field}` {e}")))
            })
            .transpose()
    }

    /// A user id: a positive integer, or a string of digits (the original clients sent both).
    pub fn optional_user_id(&self, field: &str) -> Result<Option<UserId>, ApiError> {
        let invalid = || ApiError::InvalidRequest(format!("`{field}` must be a positive integer"));
        let id = match self.present(field) {
            None => return Ok(None),
            // JSON does not tell 7 from 7.0, and JSON Schema's `integer` admits both.
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| integral(n.as_f64()?))
                .ok_or_else(invalid)?,
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map_err(|_| invalid())?
            }
            Some(_) => return Err(invalid()),
        };
        // The store's ids are signed 64-bit: 0 and anything larger name no one.
        if id == 0 || id > i64::MAX as u64 {
            return Err(invalid());
        }
        Ok(Some(UserId::new(id)))
    }

    pub fn user_id(&self, field: &str) -> Result<UserId, ApiError> {
        self.optional_user_id(field)?
            .ok_or_else(|| ApiError::InvalidRequest(format!("`{field}` is required")))
    }

    /// A boolean that may be absent or null.
    pub fn optional_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::InvalidRequest(format!(
                "`{field}` must be true or false"
            ))),
        }
    }

    /// The second factor: `otpCode` or `recoveryCode`, exactly one of them.
    pub fn second_factor(&self) -> Result<SecondFactor, ApiError> {
        match (
            self.optional_string("otpCode")?,
            self.optional_string("recoveryCode")?,
        ) {
            (Some(code), None) => Ok(SecondFactor::Totp(code)),
            (None, Some(code)) => Ok(SecondFactor::Recovery(code)),
            (None, None) => Err(ApiError::InvalidRequest(
                "`otpCode` or `recoveryCode` is required".into(),
            )),
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
                "send `otpCode` or `recoveryCode`, not both".into(),
            )),
        }
    }

    pub fn optional_session_id(&self, field: &str) -> Result<Option<SessionId>, ApiError> {
        self.optional_string(field)?
            .map(|raw| {
                raw.parse()
                    .map_err(|_| ApiError::InvalidRequest(format!("`{field}` must be a UUID")))
            })
            .transpose()
    }
}

/// The wire's two optional fields, `otpCode` and `recoveryCode`, of which a request carries
/// exactly one ([`JsonObject::second_factor`] checks that before a body type holds them).
impl SecondFactor {
    pub fn into_fields(self) -> (Option<String>, Option<String>) {
        match self {
            Self::Totp(code) => (Some(code), None),
            Self::Recovery(code) => (None, Some(code)),
        }
    }

    pub fn from_fields(otp_code: Option<String>, recovery_code: Option<String>) -> Self {
        match (otp_code, recovery_code) {
            (Some(code), _) => Self::Totp(code),
            (None, code) => Self::Recovery(code.unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> JsonObject {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => JsonObject(map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn user_agents_are_cut_at_the_columns_width_in_characters() {
        let short = "Mozilla/5.0 (X11; Linux x86_64)".to_owned();
        assert_eq!(truncate_user_agent(short.clone()), short);
        assert_eq!(truncate_user_agent("a".repeat(600)), "a".repeat(512));
        // Multi-byte characters: 512 of them, whatever their bytes.
        let wide = "é".repeat(400);
        assert_eq!(truncate_user_agent(wide.clone()), wide);
        assert_eq!(truncate_user_agent("é".repeat(600)).chars().count(), 512);
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
        assert!(matches!(bearer_token(None), Err(ApiError::MissingToken)));
        assert!(matches!(
            bearer_token(Some("Basic abc")),
            Err(ApiError::InvalidToken)
        ));
        assert!(matches!(
            bearer_token(Some("Bearer")),
            Err(ApiError::InvalidToken)
        ));
        assert!(matches!(
            bearer_token(Some("Bearer  ")),
            Err(ApiError::InvalidToken)
        ));
    }

    #[test]
    fn user_ids_accept_numbers_and_digit_strings_only() {
        let body = object(
            r#"{"a": 5, "b": "6", "c": -1, "d": "x", "e": 1.5, "f": 0, "g": null, "h": 7.0,
                "i": 1e300, "j": 0.0, "k": -2.0, "l": 9223372036854775808}"#,
        );
        assert_eq!(body.optional_user_id("a").unwrap(), Some(UserId::new(5)));
        assert_eq!(body.optional_user_id("b").unwrap(), Some(UserId::new(6)));
        assert_eq!(body.optional_user_id("h").unwrap(), Some(UserId::new(7)));
        for field in ["c", "d", "e", "f", "i", "j", "k", "l"] {
            assert!(body.optional_user_id(field).is_err(), "{field}");
        }
        assert_eq!(body.optional_user_id("g").unwrap(), None);
        assert!(body.user_id("missing").is_err());
    }

    #[test]
    fn field_errors_do_not_echo_the_value() {
        let body = object(r#"{"password": 12345678, "email": "hunter2"}"#);
        let err = body.string("password").unwrap_err().to_string();
        assert!(!err.contains("12345678"), "{err}");
        let err = body.email("email").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_not() {
        let chunks = || {
            futures_util::stream::iter(vec![Ok::<_, warp::Error>(bytes::Bytes::from(vec![
                b' ';
                10
            ]))])
        };
        assert!(matches!(
            read_object(Some(11), chunks(), 10, true).await,
            Err(ApiError::PayloadTooLarge)
        ));
        assert!(matches!(
            read_object(None, chunks(), 9, true).await,
            Err(ApiError::PayloadTooLarge)
        ));
        assert!(read_object(None, chunks(), 10, true).await.is_ok());
        assert!(matches!(
            read_object(None, chunks(), 10, false).await,
            Err(ApiError::InvalidRequest(_))
        ));
    }
}
