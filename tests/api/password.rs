//! Changing the password ends every other session.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_new_password_ends_every_other_session() {
    let app = spawn_app().await;
    let john = app.user().await;
    let here = app.logged_in(&john).await;
    let elsewhere = app.logged_in(&john).await;
    let stolen = app.logged_in(&john).await;

    let new_password = "a much longer new passphrase";
    let response = app
        .change_password(
            &here.token,
            &json!({"currentPassword": john.password, "newPassword": new_password}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"message": "Password changed", "revoked": 2}));

    assert_eq!(app.me(&here.token).await.status(), StatusCode::OK);
    for other in [&elsewhere, &stolen] {
        app.assert_ended(other, "password_changed").await;
    }

    let old = app.login(&john.credentials()).await;
    assert_error(old, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let new = app
        .login(&json!({"email": john.email, "password": new_password}))
        .await;
    assert_eq!(new.status(), StatusCode::OK);
}

#[tokio::test]
async fn weak_new_passwords_are_refused_with_the_reason() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;

    let short = app
        .change_password(
            &session.token,
            &json!({"currentPassword": john.password, "newPassword": "short"}),
        )
        .await;
    let body = assert_error(short, StatusCode::BAD_REQUEST, "weak_password").await;
    assert!(body["error"].as_str().unwrap().contains("12"), "{body}");

    let email = app
        .change_password(
            &session.token,
            &json!({"currentPassword": john.password, "newPassword": john.email.to_uppercase()}),
        )
        .await;
    let body = assert_error(email, StatusCode::BAD_REQUEST, "weak_password").await;
    assert!(body["error"].as_str().unwrap().contains("email"), "{body}");

    for (new, reason) in [
        ("password12345", "too easy to guess"),
        (&*"long enough ".repeat(11), "at most 128"),
        (&*john.password, "differ from the current"),
    ] {
        let refused = app
            .change_password(
                &session.token,
                &json!({"currentPassword": john.password, "newPassword": new}),
            )
            .await;
        let body = assert_error(refused, StatusCode::BAD_REQUEST, "weak_password").await;
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }

    // Nothing changed.
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_current_password_must_be_right() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let other = app.logged_in(&john).await;

    let response = app
        .change_password(
            &session.token,
            &json!({"currentPassword": "wrong", "newPassword": "a perfectly long password"}),
        )
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(
        app.me(&other.token).await.status(),
        StatusCode::OK,
        "nothing was revoked"
    );

    for body in [
        json!({"newPassword": "a perfectly long password"}),
        json!({"currentPassword": john.password}),
    ] {
        let response = app.change_password(&session.token, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let response = app
        .client
        .post(app.url("/api/auth/change-password"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn a_session_ended_while_the_new_password_is_hashed_cannot_change_it() {
    // A real hashing cost, so that the change is overtaken while it hashes.
    let app = spawn_app_with(|f| f.merge(("password.log_n", 16))).await;
    let john = app.user().await;
    let attacker = app.logged_in(&john).await;
    let owner = app.logged_in(&john).await;

    let change =
        json!({"currentPassword": john.password, "newPassword": "attacker-chose-this-one"});
    let (changed, logged_out) =
        tokio::join!(app.change_password(&attacker.token, &change), async {
            // The owner ends every other session while the attacker's change is hashing.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            app.logout_all(&owner.token, &json!({"keepCurrent": true}))
                .await
        });
    assert_eq!(logged_out.status(), StatusCode::OK);
    assert_error(changed, StatusCode::UNAUTHORIZED, "session_ended").await;
    // The owner's password still holds, and the owner is still in.
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.me(&owner.token).await.status(), StatusCode::OK);
}
