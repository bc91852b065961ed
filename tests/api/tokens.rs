//! Forged and stale tokens. Every authenticated request checks the signature (algorithm
//! pinned), `iss`, `aud`, expiry, and that the `sid` is a live session of `sub`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AUDIENCE, ISSUER, JWT_SECRET, assert_error, spawn_app};

fn claims(user_id: u64, session_id: &str, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user_id.to_string(), "sid": session_id, "iat": now, "exp": now + exp_offset,
        "iss": ISSUER, "aud": AUDIENCE, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let app = spawn_app().await;
    let john = app.user().await;
    let real = app.logged_in(&john).await;
    let sid = real.session_id.as_str();
    let id = john.id.get();

    // alg: none, with claims that would otherwise be perfect.
    let response = app.me(&unsigned(&claims(id, sid, 600))).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // Signed with another key.
    let response = app
        .me(&sign(
            &claims(id, sid, 600),
            "some-other-secret-of-enough-length",
        ))
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // A real token whose payload was swapped for another user's: the signature no longer fits.
    let parts: Vec<&str> = real.token.split('.').collect();
    let tampered_payload = URL_SAFE_NO_PAD.encode(claims(id + 1, sid, 600).to_string());
    let tampered = format!("{}.{}.{}", parts[0], tampered_payload, parts[2]);
    let response = app.me(&tampered).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // HS512 with the right key: the algorithm is pinned to HS256.
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(id, sid, 600),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let response = app.me(&hs512).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // The real token still works: none of the above disturbed it.
    assert_eq!(app.me(&real.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn right_key_wrong_claims_are_refused() {
    let app = spawn_app().await;
    let john = app.user().await;
    let real = app.logged_in(&john).await;
    let id = john.id.get();

    let expired = sign(&claims(id, &real.session_id, -10), JWT_SECRET);
    assert_error(
        app.me(&expired).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    )
    .await;

    let unknown_sid = sign(
        &claims(id, &uuid::Uuid::new_v4().to_string(), 600),
        JWT_SECRET,
    );
    assert_error(
        app.me(&unknown_sid).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;

    // John's session id under another user's subject is not that user's session.
    let other = app.user().await;
    let borrowed = sign(&claims(other.id.get(), &real.session_id, 600), JWT_SECRET);
    assert_error(
        app.me(&borrowed).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;

    let mut wrong_issuer = claims(id, &real.session_id, 600);
    wrong_issuer["iss"] = json!("someone-else");
    assert_error(
        app.me(&sign(&wrong_issuer, JWT_SECRET)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let mut wrong_audience = claims(id, &real.session_id, 600);
    wrong_audience["aud"] = json!("another-api");
    assert_error(
        app.me(&sign(&wrong_audience, JWT_SECRET)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let mut no_exp = claims(id, &real.session_id, 600);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_error(
        app.me(&sign(&no_exp, JWT_SECRET)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let mut bad_sub = claims(id, &real.session_id, 600);
    bad_sub["sub"] = json!("john");
    assert_error(
        app.me(&sign(&bad_sub, JWT_SECRET)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn the_token_expires_with_the_session() {
    let app = spawn_app().await;
    let john = app.user().await;
    let real = app.logged_in(&john).await;
    let payload = real.token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let me: Value = app.me(&real.token).await.json().await.unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(me["session"]["expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap(), expires_at.timestamp());
    assert_eq!(claims["sub"], json!(john.id.to_string()));
    assert_eq!(claims["sid"], json!(real.session_id));
    for claim in ["iat", "iss", "aud", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim}");
    }
}
