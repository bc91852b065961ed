//! Operators' forced logout, behind X-Admin-Key.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn without_a_configured_key_the_admin_api_does_not_exist() {
    let app = spawn_app().await;
    let john = app.user().await;
    for (method, path) in [
        (
            Method::GET,
            format!("/api/admin/users/{}/sessions", john.id),
        ),
        (
            Method::POST,
            format!("/api/admin/users/{}/logout-all", john.id),
        ),
    ] {
        let response = app
            .admin(method, &path, Some("anything"))
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_refused() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let path = format!("/api/admin/users/{}/logout-all", john.id);

    let response = app.admin(Method::POST, &path, None).send().await.unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    let wrong = format!("{ADMIN_KEY}x");
    let response = app
        .admin(Method::POST, &path, Some(&wrong))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    // A user's bearer token is not an admin key either.
    let response = app
        .admin(Method::POST, &path, None)
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;

    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_operator_lists_and_force_logs_out_every_device_with_a_reason() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let bystander = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;
    let theirs = app.logged_in(&bystander).await;

    let sessions_path = format!("/api/admin/users/{}/sessions", john.id);
    let response = app
        .admin(Method::GET, &sessions_path, Some(ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user_id"], john.id.get());
    assert_eq!(body["sessions"].as_array().unwrap().len(), 2);

    let response = app
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/logout-all", john.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "card reported stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "Logged out of all devices", "revoked": 2})
    );

    for device in [&phone, &laptop] {
        app.assert_ended(device, "admin").await;
        let note = app
            .db
            .query_one(&format!(
                "SELECT revoke_note FROM sessions WHERE id = '{}'",
                device.session_id
            ))
            .await;
        assert_eq!(note.as_deref(), Some("card reported stolen"));
    }
    assert_eq!(app.me(&theirs.token).await.status(), StatusCode::OK);

    let body: Value = app
        .admin(Method::GET, &sessions_path, Some(ADMIN_KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["sessions"], json!([]));
}

#[tokio::test]
async fn unknown_users_and_bad_bodies() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let response = app
        .admin(
            Method::GET,
            "/api/admin/users/987654/sessions",
            Some(ADMIN_KEY),
        )
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "user_not_found").await;

    let john = app.user().await;
    let response = app
        .admin(
            Method::POST,
            &format!("/api/admin/users/{}/logout-all", john.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "x".repeat(300)}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
}

#[tokio::test]
async fn an_operator_finds_a_customer_by_email() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let find = |query: String| {
        app.admin(
            Method::GET,
            &format!("/api/admin/users{query}"),
            Some(ADMIN_KEY),
        )
        .send()
    };

    let found = find(format!("?email={}", john.email.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["user"]["id"], john.id.get());
    assert_eq!(found["user"]["email"], john.email.as_str());
    assert!(found["user"].get("password_hash").is_none(), "{found}");

    let unknown = find("?email=nobody@example.com".into()).await.unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "user_not_found").await;
    for bad in ["", "?email=", "?email=not-an-email", "?name=x"] {
        let response = find(bad.into()).await.unwrap();
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let keyless = app
        .admin(
            Method::GET,
            &format!("/api/admin/users?email={}", john.email),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_error(keyless, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
}
