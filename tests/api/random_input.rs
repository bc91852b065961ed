//! Property: whatever a client sends (random bodies, headers and tokens, on every route that
//! reads them), the real router answers with the JSON error shape or a success, never a 5xx
//! and never a dropped connection (a panic). Cases are drawn by proptest from a fixed seed, so
//! a failure names a reproducible input.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;

use crate::helpers::{ADMIN_KEY, spawn_app_with};

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    admin_key: Option<String>,
    body: Vec<u8>,
}

fn header_value() -> impl Strategy<Value = String> {
    // Visible ASCII and spaces: what a header value may hold at all.
    proptest::string::string_regex("[ -~]{0,80}").unwrap()
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // JSON-shaped noise reaches the field parsers, not just the JSON reader.
        (
            proptest::string::string_regex("[a-zA-Z]{0,12}").unwrap(),
            prop_oneof![
                Just("null".to_owned()),
                Just("true".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| format!("{n:?}")),
                proptest::string::string_regex("\"[ -~]{0,40}\"").unwrap(),
                Just("[]".to_owned()),
                Just("{}".to_owned()),
            ],
            prop_oneof![
                Just("email"),
                Just("password"),
                Just("userId"),
                Just("otpCode"),
                Just("mfaToken"),
                Just("sessionId"),
                Just("keepCurrent"),
                Just("currentPassword"),
                Just("newPassword"),
                Just("reason"),
                Just("recoveryCode"),
                Just("keepOtherSessions"),
            ],
        )
            .prop_map(|(extra, value, field)| {
                format!(r#"{{"{field}": {value}, "{extra}": {value}}}"#).into_bytes()
            }),
    ]
}

/// `token` is a live session's: with it, random bodies get past the bearer check to the
/// handlers' own parsing (the two-factor endpoints, the events query).
fn request(token: String) -> impl Strategy<Value = Request> {
    let route = prop_oneof![
        Just((Method::POST, "/api/auth/login".to_owned())),
        Just((Method::POST, "/api/auth/verify-mfa".to_owned())),
        Just((Method::POST, "/api/auth/logout".to_owned())),
        Just((Method::GET, "/api/auth/me".to_owned())),
        Just((Method::GET, "/api/auth/sessions".to_owned())),
        Just((Method::POST, "/api/auth/logout-all".to_owned())),
        Just((Method::POST, "/api/auth/change-password".to_owned())),
        Just((Method::POST, "/api/auth/mfa/setup".to_owned())),
        Just((Method::POST, "/api/auth/mfa/enable".to_owned())),
        Just((Method::POST, "/api/auth/mfa/disable".to_owned())),
        Just((Method::POST, "/api/auth/mfa/recovery-codes".to_owned())),
        proptest::string::string_regex("[a-z0-9=&%-]{0,40}")
            .unwrap()
            .prop_map(|query| (Method::GET, format!("/api/auth/events?{query}"))),
        proptest::string::string_regex("[0-9]{0,24}")
            .unwrap()
            .prop_map(|id| (
                Method::GET,
                format!("/api/admin/users/{id}/events?limit={id}")
            )),
        proptest::string::string_regex("[a-zA-Z0-9%-]{0,40}")
            .unwrap()
            .prop_map(|id| (Method::DELETE, format!("/api/auth/sessions/{id}"))),
        proptest::string::string_regex("[0-9a-z%-]{0,24}")
            .unwrap()
            .prop_map(|id| (Method::POST, format!("/api/admin/users/{id}/logout-all"))),
        proptest::string::string_regex("[0-9]{0,24}")
            .unwrap()
            .prop_map(|id| (Method::GET, format!("/api/admin/users/{id}/sessions"))),
    ];
    let authorization = proptest::option::of(prop_oneof![
        Just(format!("Bearer {token}")),
        header_value(),
        header_value().prop_map(|t| format!("Bearer {t}")),
        proptest::string::string_regex(
            "[A-Za-z0-9_-]{1,40}\\.[A-Za-z0-9_-]{1,80}\\.[A-Za-z0-9_-]{0,60}"
        )
        .unwrap()
        .prop_map(|t| format!("Bearer {t}")),
    ]);
    let content_type = proptest::option::of(prop_oneof![
        Just("application/json".to_owned()),
        header_value(),
    ]);
    let admin_key = proptest::option::of(prop_oneof![Just(ADMIN_KEY.to_owned()), header_value()]);
    (route, authorization, content_type, admin_key, body()).prop_map(
        |((method, path), authorization, content_type, admin_key, body)| Request {
            method,
            path,
            authorization,
            content_type,
            admin_key,
            body,
        },
    )
}

#[tokio::test]
async fn random_requests_never_get_a_5xx_or_break_the_server() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let owner = app.user().await;
    let session = app.logged_in(&owner).await;
    let strategy = request(session.token);
    for case in 0..400 {
        let request = strategy.new_tree(&mut runner).unwrap().current();
        let mut builder = app
            .client
            .request(request.method.clone(), app.url(&request.path))
            .body(request.body.clone());
        if let Some(value) = &request.authorization {
            builder = builder.header("authorization", value);
        }
        if let Some(value) = &request.content_type {
            builder = builder.header("content-type", value);
        }
        if let Some(value) = &request.admin_key {
            builder = builder.header("x-admin-key", value);
        }
        let response = builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {case}: no answer to {request:?}: {e}"));
        let status = response.status();
        assert!(
            !status.is_server_error(),
            "case {case}: {status} for {request:?}"
        );
        if status.is_client_error() {
            let body: serde_json::Value = response
                .json()
                .await
                .unwrap_or_else(|e| panic!("case {case}: not JSON for {request:?}: {e}"));
            assert!(
                body["code"].is_string() && body["error"].is_string(),
                "case {case}: {body} for {request:?}"
            );
        }
    }
    // And the server still serves.
    let john = app.user().await;
    assert!(app.login(&john.credentials()).await.status().is_success());
}
