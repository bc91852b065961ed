//! The audit trail: every step of a login, a second factor, a logout and a forced logout is
//! recorded, in order, with where it came from and never a secret; users read their own,
//! operators anyone's; pages go back in time.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, LoggedIn, TestApp, TestUser, assert_error, spawn_app, spawn_app_with,
};

async fn admin_events(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let response = app
        .admin(
            Method::GET,
            &format!("/api/admin/users/{}/events?limit=100", user.id),
            Some(ADMIN_KEY),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

fn mfa_step(body: &Value) -> String {
    body["mfaToken"].as_str().expect("mfaToken").to_owned()
}

#[tokio::test]
async fn a_whole_login_mfa_logout_and_forced_logout_is_recorded_in_order_without_secrets() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let jane = app.mfa_user().await;
    let ua = "events-test/1.0";
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move {
            app.client
                .post(app.url(path))
                .header("user-agent", ua)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let wrong = post(
        "/api/auth/login",
        json!({"email": jane.email, "password": "a-wrong-guess-123"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let step: Value = post("/api/auth/login", jane.credentials())
        .await
        .json()
        .await
        .unwrap();
    let bad_code = post(
        "/api/auth/verify-mfa",
        json!({"userId": jane.id.get(), "mfaToken": mfa_step(&step), "otpCode": "000000"}),
    )
    .await;
    assert_eq!(bad_code.status(), StatusCode::UNAUTHORIZED);
    let code = jane.totp_code(0);
    let first: Value = post(
        "/api/auth/verify-mfa",
        json!({"userId": jane.id.get(), "mfaToken": mfa_step(&step), "otpCode": code}),
    )
    .await
    .json()
    .await
    .unwrap();
    let first = LoggedIn::from_body(&first);
    let step: Value = post("/api/auth/login", jane.credentials())
        .await
        .json()
        .await
        .unwrap();
    let reused = post(
        "/api/auth/verify-mfa",
        json!({"userId": jane.id.get(), "mfaToken": mfa_step(&step), "otpCode": code}),
    )
    .await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    let second: Value = post(
        "/api/auth/verify-mfa",
        json!({"userId": jane.id.get(), "mfaToken": mfa_step(&step), "otpCode": jane.totp_code(1)}),
    )
    .await
    .json()
    .await
    .unwrap();
    let second = LoggedIn::from_body(&second);
    assert_eq!(
        app.logout(&first.token, None).await.status(),
        StatusCode::OK
    );
    let forced = app
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/logout-all", jane.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "card reported stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);

    let mut events = admin_events(&app, &jane).await;
    events.reverse(); // oldest first
    let seen: Vec<(String, Option<String>, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
                e["session_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        seen,
        vec![
            ("login_failed".into(), some("invalid_credentials"), None),
            ("password_verified".into(), None, None),
            ("mfa_failed".into(), some("invalid_code"), None),
            ("mfa_succeeded".into(), None, some(&first.session_id)),
            ("password_verified".into(), None, None),
            ("mfa_failed".into(), some("code_reused"), None),
            ("mfa_succeeded".into(), None, some(&second.session_id)),
            (
                "session_ended".into(),
                some("logout"),
                some(&first.session_id)
            ),
            (
                "session_ended".into(),
                some("admin"),
                some(&second.session_id)
            ),
        ]
    );
    // Ids and times grow; each names the node, the client and its outcome.
    for pair in events.windows(2) {
        assert!(pair[0]["id"].as_u64() < pair[1]["id"].as_u64());
        assert!(pair[0]["at"].as_str() <= pair[1]["at"].as_str());
    }
    for event in &events {
        assert_eq!(event["user_id"], jane.id.get(), "{event}");
        assert!(event["node_id"].is_string(), "{event}");
        assert_eq!(event["ip"], "127.0.0.1", "{event}");
        let expected = if event["kind"].as_str().unwrap().ends_with("failed") {
            "failure"
        } else {
            "success"
        };
        assert_eq!(event["outcome"], expected, "{event}");
    }
    assert_eq!(events[0]["user_agent"], ua);
    assert_eq!(events.last().unwrap()["note"], "card reported stolen");

    assert_eq!(events.last().unwrap()["initiator"], "operator");
    assert_eq!(events[0]["initiator"], "user");

    let all = serde_json::to_string(&events).unwrap();
    for secret in [
        jane.password.as_str(),
        "a-wrong-guess-123",
        jane.totp_secret.as_deref().unwrap(),
        code.as_str(),
        first.token.as_str(),
        second.token.as_str(),
        mfa_step(&step).as_str(),
    ] {
        assert!(!all.contains(secret), "an event holds a secret");
    }
}

#[tokio::test]
async fn users_page_through_their_own_events_newest_first() {
    let app = spawn_app().await;
    let user = app.user().await;
    let other = app.user().await;
    let session = app.logged_in(&user).await;
    for _ in 0..4 {
        let extra = app.logged_in(&user).await;
        assert_eq!(
            app.logout(&extra.token, None).await.status(),
            StatusCode::OK
        );
    }
    app.logged_in(&other).await;
    let get = |query: &str| {
        app.client
            .get(app.url(&format!("/api/auth/events{query}")))
            .bearer_auth(&session.token)
            .send()
    };

    // 1 + 4 logins and 4 logouts: 9 events, all this user's.
    let all: Value = get("").await.unwrap().json().await.unwrap();
    let all = all["events"].as_array().unwrap().clone();
    assert_eq!(all.len(), 9);
    assert!(all.iter().all(|e| e["user_id"] == user.id.get()));
    assert_eq!(all[0]["kind"], "session_ended");
    assert_eq!(all[8]["kind"], "login_succeeded");
    assert_eq!(all[8]["session_id"], session.session_id.as_str());

    let page: Value = get("?limit=4").await.unwrap().json().await.unwrap();
    assert_eq!(page["events"].as_array().unwrap()[..], all[..4]);
    let next = page["next_before"]
        .as_u64()
        .expect("a full page has a next");
    assert_eq!(Some(next), all[3]["id"].as_u64());
    let rest: Value = get(&format!("?limit=100&before={next}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["events"].as_array().unwrap()[..], all[4..]);
    assert!(rest["next_before"].is_null());

    for bad in ["?limit=0", "?limit=101", "?before=abc", "?limit=-1"] {
        assert_error(
            get(bad).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let anonymous = app
        .client
        .get(app.url("/api/auth/events"))
        .send()
        .await
        .unwrap();
    assert_error(anonymous, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn an_unknown_email_is_recorded_only_as_a_keyed_hash() {
    let app = spawn_app().await;
    let email = "nobody-here@example.com";
    let response = app
        .login(&json!({"email": email, "password": "whatever-it-is-1"}))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let row = app
        .db
        .query_one(
            "SELECT CONCAT_WS(',', kind, reason, user_id IS NULL, LENGTH(account_hash)) \
             FROM auth_events",
        )
        .await;
    assert_eq!(
        row.as_deref(),
        Some("login_failed,invalid_credentials,1,32")
    );
    let dump = app
        .db
        .query_one(
            "SELECT GROUP_CONCAT(CONCAT_WS(',', kind, reason, note, user_agent)) FROM auth_events",
        )
        .await
        .unwrap();
    assert!(!dump.contains(email) && !dump.contains("nobody-here"));
}

#[tokio::test]
async fn the_sweep_prunes_events_past_retention() {
    let app = spawn_app_with(|f| {
        f.merge(("audit.retention", "1h"))
            .merge(("session.sweep_interval", "100ms"))
    })
    .await;
    let user = app.user().await;
    app.logged_in(&user).await;
    app.db
        .execute(&format!(
            "INSERT INTO auth_events (at, kind, outcome, user_id) VALUES \
             (UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, 'login_succeeded', 'success', {})",
            user.id
        ))
        .await;
    let count = format!(
        "SELECT COUNT(*) FROM auth_events WHERE user_id = {}",
        user.id
    );
    let pruned = crate::helpers::eventually(|| async {
        (app.db.query_one(&count).await.as_deref() == Some("1")).then_some(())
    })
    .await;
    assert!(
        pruned.is_some(),
        "the old event is pruned, the new one kept"
    );
}

#[tokio::test]
async fn users_see_what_an_operator_did_but_not_from_where_or_the_internal_note() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let old = app.logged_in(&john).await;
    let forced = app
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/logout-all", john.id),
            Some(ADMIN_KEY),
        )
        .header("user-agent", "support-console/2.0")
        .json(&json!({"reason": "ticket 4711: card reported stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);
    let now = app.logged_in(&john).await;
    let own: Value = app
        .client
        .get(app.url("/api/auth/events"))
        .bearer_auth(&now.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_operator = own["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "admin")
        .expect("the forced logout is in John's own trail")
        .clone();
    assert_eq!(by_operator["initiator"], "operator");
    assert_eq!(by_operator["session_id"], old.session_id.as_str());
    for hidden in ["ip", "user_agent", "node_id", "note"] {
        assert!(
            by_operator[hidden].is_null(),
            "{hidden} shown to the user: {by_operator}"
        );
    }
    // His own login shows where it came from.
    let login = own["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "login_succeeded" && e["session_id"] == now.session_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(login["initiator"], "user");
    assert_eq!(login["ip"], "127.0.0.1");
    // The operators see all of it.
    let theirs = admin_events(&app, &john).await;
    let full = theirs.iter().find(|e| e["reason"] == "admin").unwrap();
    assert_eq!(full["note"], "ticket 4711: card reported stolen");
    assert_eq!(full["user_agent"], "support-console/2.0");
    assert_eq!(full["ip"], "127.0.0.1");
}
