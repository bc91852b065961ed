//! The original service logged secrets. Here nothing secret reaches a log line or a response.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{captured_logs, spawn_app};

#[tokio::test]
async fn no_password_hash_secret_code_or_token_is_ever_logged() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;

    let response = app.login(&jane.credentials()).await;
    let body: Value = response.json().await.unwrap();
    let mfa_token = body["mfaToken"].as_str().unwrap().to_owned();
    let wrong = app
        .verify_mfa(&json!({"userId": jane.id.get(), "otpCode": "000000", "mfaToken": mfa_token}))
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let response = app.verify_with_password(&jane).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.logout(&token, None).await.status(), StatusCode::OK);
    let failed = app
        .login(&json!({"email": jane.email, "password": "a-wrong-guess-123"}))
        .await;
    assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);

    let hash = app
        .db
        .query_one(&format!(
            "SELECT password_hash FROM users WHERE id = {}",
            jane.id
        ))
        .await
        .unwrap();
    let logs = captured_logs();
    assert!(
        logs.contains(&jane.id.to_string()),
        "the flow was logged at all"
    );
    let secrets = [
        ("password", jane.password.as_str()),
        ("wrong password", "a-wrong-guess-123"),
        ("password hash", hash.as_str()),
        ("TOTP secret", jane.totp_secret.as_deref().unwrap()),
        ("MFA token", mfa_token.as_str()),
        ("access token", token.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    // Not in a response either: the profile carries no hash or secret.
    let user = body["user"].to_string();
    assert!(!user.contains(&hash) && !user.contains(jane.totp_secret.as_deref().unwrap()));
}

#[tokio::test]
async fn every_authentication_outcome_is_logged_without_the_email_typed() {
    let app = spawn_app().await;
    let ghost = format!("ghost-{}@example.com", uuid::Uuid::new_v4().simple());
    let refused = app
        .login(&json!({"email": ghost, "password": "whatever-it-is-123"}))
        .await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let john = app.user().await;
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );

    let logs = captured_logs();
    assert!(
        !logs.contains(&ghost),
        "the email typed for an unknown account is not logged"
    );
    let john_line = logs
        .lines()
        .find(|l| l.contains("authentication") && l.contains(&format!("Some({})", john.id)))
        .expect("John's login is logged with his id");
    assert!(
        john_line.contains("success") && john_line.contains("127.0.0.1"),
        "{john_line}"
    );
    assert!(
        logs.lines().any(|l| l.contains("authentication")
            && l.contains("refused")
            && l.contains("invalid_credentials")
            && l.contains("user_id=None")),
        "the unknown account's refusal is logged, without an id"
    );
}

#[tokio::test]
async fn the_two_factor_life_cycle_logs_no_secret_or_code() {
    let app = crate::helpers::spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let (secret, codes) = crate::mfa_lifecycle::enrol(&app, &user, &session, true).await;
    let step: Value = app.login(&user.credentials()).await.json().await.unwrap();
    let used = app
        .verify_mfa(
            &json!({"userId": user.id.get(), "mfaToken": step["mfaToken"],
            "recoveryCode": codes[0]}),
        )
        .await;
    assert_eq!(used.status(), StatusCode::OK);
    let renewed: Value = app
        .post_with_token(
            "/api/auth/mfa/recovery-codes",
            &session.token,
            &json!({"password": user.password, "recoveryCode": codes[1]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let new_codes: Vec<String> = renewed["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let disabled = app
        .post_with_token(
            "/api/auth/mfa/disable",
            &session.token,
            &json!({"password": user.password, "recoveryCode": new_codes[0]}),
        )
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);

    let logs = captured_logs();
    assert!(
        logs.contains("second factor changed"),
        "the flow was logged"
    );
    assert!(
        !logs.contains(&secret),
        "the TOTP secret appears in the logs"
    );
    assert!(
        !logs.contains(&user.password),
        "the password appears in the logs"
    );
    for code in codes.iter().chain(&new_codes) {
        assert!(
            !logs.contains(code.as_str()),
            "a recovery code appears in the logs"
        );
        assert!(!logs.contains(&code.replace('-', "")));
    }
}
