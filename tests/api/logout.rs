use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn a_token_is_refused_on_the_very_next_request_after_logout() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;

    let response = app
        .logout(
            &session.token,
            Some(&json!({"userId": john.id.get(), "sessionId": session.session_id})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"message": "Logged out successfully"}));

    assert_error(
        app.me(&session.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;
    assert_error(
        app.logout(&session.token, None).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;

    let reason = app
        .db
        .query_one(&format!(
            "SELECT revoke_reason FROM sessions WHERE id = '{}'",
            session.session_id
        ))
        .await;
    assert_eq!(reason.as_deref(), Some("logout"));
}

#[tokio::test]
async fn without_a_body_the_tokens_own_session_ends() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&session.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let session = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&session.token, Some(&json!({}))).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn ending_one_device_leaves_the_other_logged_in() {
    let app = spawn_app().await;
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;
    assert_ne!(phone.session_id, laptop.session_id);

    assert_eq!(
        app.logout(&phone.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&phone.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&laptop.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_user_can_end_their_other_device_by_session_id() {
    let app = spawn_app().await;
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;

    let response = app
        .logout(&laptop.token, Some(&json!({"sessionId": phone.session_id})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.me(&phone.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&laptop.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn nobody_can_end_someone_elses_session() {
    let app = spawn_app().await;
    let john = app.user().await;
    let mallory = app.user().await;
    let johns = app.logged_in(&john).await;
    let mallorys = app.logged_in(&mallory).await;

    // The original API let the body's userId override the token's identity.
    let response = app
        .logout(
            &mallorys.token,
            Some(&json!({"userId": john.id.get(), "sessionId": johns.session_id})),
        )
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;

    // Naming John's session under Mallory's own id finds nothing: it is not hers.
    let response = app
        .logout(
            &mallorys.token,
            Some(&json!({"userId": mallory.id.get(), "sessionId": johns.session_id})),
        )
        .await;
    let body = assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    assert_eq!(body["error"], "Session not found");

    assert_eq!(app.me(&johns.token).await.status(), StatusCode::OK);
    assert_eq!(app.me(&mallorys.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_needs_a_valid_token() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;

    let response = app.logout("not-a-jwt", None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let response = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("authorization", "Basic am9objpwdw==")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn unknown_or_malformed_session_ids() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;

    let unknown = uuid::Uuid::new_v4().to_string();
    let response = app
        .logout(&session.token, Some(&json!({"sessionId": unknown})))
        .await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;

    let response = app
        .logout(&session.token, Some(&json!({"sessionId": "nope"})))
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;

    let response = app
        .post_raw_with_token("/api/auth/logout", &session.token, "[]")
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;

    // None of that ended the caller's session.
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}
