//! `POST /api/auth/introspect` (RFC 7662): resource servers ask whether a token is live, as
//! one of `introspection.clients`, on any node.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use figment::Figment;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AUDIENCE, ISSUER, TestApp, assert_error, spawn_app, spawn_app_with, spawn_cluster_with,
};

const CLIENT: &str = "rs1";
const SECRET: &str = "a-resource-servers-secret-of-32-bytes-or-more";

fn with_a_client(figment: Figment) -> Figment {
    figment.merge((
        "introspection.clients",
        vec![
            format!("{CLIENT}:{SECRET}"),
            format!("rs2:{}", "s".repeat(40)),
        ],
    ))
}

async fn introspect(
    app: &TestApp,
    credentials: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/auth/introspect"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form.iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&"),
        );
    if let Some(credentials) = credentials {
        request = request.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(credentials)),
        );
    }
    request.send().await.unwrap()
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn asked(app: &TestApp, token: &str) -> Value {
    let response = introspect(
        app,
        Some(&format!("{CLIENT}:{SECRET}")),
        &[("token", token)],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

#[tokio::test]
async fn introspection_is_off_without_clients() {
    let app = spawn_app().await;
    assert_error(
        introspect(&app, Some(&format!("{CLIENT}:{SECRET}")), &[("token", "x")]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn only_configured_resource_servers_may_ask() {
    let app = spawn_app_with(with_a_client).await;
    for credentials in [
        None,
        Some(format!("{CLIENT}:wrong-secret")),
        Some(format!("rs2:{SECRET}")),
        Some(format!("nobody:{SECRET}")),
    ] {
        let response = introspect(&app, credentials.as_deref(), &[("token", "x")]).await;
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Basic realm="finsec introspection""#
        );
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }
    assert_error(
        introspect(
            &app,
            Some(&format!("{CLIENT}:{SECRET}")),
            &[("token_type_hint", "access_token")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // Two tokens: which one was meant is not for us to guess.
    assert_error(
        introspect(
            &app,
            Some(&format!("{CLIENT}:{SECRET}")),
            &[("token", "a"), ("token", "b")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn a_live_token_is_active_with_its_claims_and_a_logged_out_one_is_not() {
    let app = spawn_app_with(with_a_client).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&session.token)
        .unwrap()
        .claims;
    let answer = asked(&app, &session.token).await;
    assert_eq!(
        answer,
        json!({
            "active": true, "sub": john.id.get().to_string(), "sid": session.session_id,
            "exp": claims["exp"], "iat": claims["iat"], "iss": ISSUER, "aud": AUDIENCE,
            "token_type": "Bearer",
        })
    );
    assert_eq!(
        app.logout(&session.token, None).await.status(),
        StatusCode::OK
    );
    // Nothing but `active`: why is none of the asker's business.
    assert_eq!(asked(&app, &session.token).await, json!({"active": false}));
    for not_a_token in ["", "garbage", "a.b.c"] {
        assert_eq!(asked(&app, not_a_token).await, json!({"active": false}));
    }
}

#[tokio::test]
async fn any_node_answers_as_the_one_that_ended_the_session() {
    let cluster = spawn_cluster_with(2, with_a_client).await;
    let john = cluster.node(0).user().await;
    let session = cluster.node(0).logged_in(&john).await;
    assert_eq!(asked(cluster.node(1), &session.token).await["active"], true);
    assert_eq!(
        cluster.node(0).logout(&session.token, None).await.status(),
        StatusCode::OK
    );
    // An acknowledged logout is in force on every node on the next request.
    assert_eq!(
        asked(cluster.node(1), &session.token).await,
        json!({"active": false})
    );
}
