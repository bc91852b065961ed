use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, LoggedIn, UserSpec, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_right_code_after_the_password_step_opens_a_session() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    let mfa_token = app.begin_mfa(&jane).await;

    let response = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": mfa_token}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "MFA verification successful");
    assert_eq!(body["user"]["id"], jane.id.get());
    assert_eq!(body["user"]["mfa_enabled"], true);
    assert!(body["user"].get("totp_secret").is_none());

    let session = LoggedIn::from_body(&body);
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_seed_request_without_mfa_token_still_works() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    app.begin_mfa(&jane).await;
    // The original README's request: userId (as a number or a string) and otpCode only.
    let response = app
        .verify_mfa(&json!({"userId": jane.id.to_string(), "otpCode": jane.totp_code(0)}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_code_is_accepted_once_ever() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    let code = jane.totp_code(0);

    app.begin_mfa(&jane).await;
    let first = app.verify_code(&jane, &code).await;
    assert_eq!(first.status(), StatusCode::OK);

    // A fresh password step does not make the spent code good again.
    app.begin_mfa(&jane).await;
    let replay = app.verify_code(&jane, &code).await;
    assert_error(replay, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;

    // Not even after a restart: the spent step lives in MySQL.
    let step = app
        .db
        .query_one(&format!(
            "SELECT totp_last_step FROM users WHERE id = {}",
            jane.id
        ))
        .await
        .expect("last step stored");
    assert!(step.parse::<u64>().unwrap() > 0);

    // The next code (next time step) works.
    let next = app.verify_code(&jane, &jane.totp_code(1)).await;
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_spent_code_stays_spent_across_a_restart() {
    let mut app = spawn_app().await;
    let jane = app.mfa_user().await;
    let code = jane.totp_code(0);
    app.begin_mfa(&jane).await;
    let first = app.verify_code(&jane, &code).await;
    assert_eq!(first.status(), StatusCode::OK);

    app.restart().await;
    app.begin_mfa(&jane).await;
    let replay = app.verify_code(&jane, &code).await;
    assert_error(replay, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
}

#[tokio::test]
async fn without_a_pending_challenge_even_the_right_code_fails() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    // The original let anyone who knew a user id guess codes; here the password step comes first.
    let response = app.verify_code(&jane, &jane.totp_code(0)).await;
    let body = assert_error(response, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    assert_eq!(body["error"], "Invalid MFA code");
}

#[tokio::test]
async fn five_wrong_codes_void_the_challenge() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    app.begin_mfa(&jane).await;
    let wrong = if jane.totp_code(0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..5 {
        let response = app.verify_code(&jane, wrong).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    }
    let right = app.verify_code(&jane, &jane.totp_code(0)).await;
    assert_error(right, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;

    // A new password step opens a new challenge.
    app.begin_mfa(&jane).await;
    let right = app.verify_code(&jane, &jane.totp_code(0)).await;
    assert_eq!(right.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_mfa_token_is_refused() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    app.begin_mfa(&jane).await;
    let response = app
        .verify_mfa(&json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": "f".repeat(64)}))
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
}

#[tokio::test]
async fn the_challenge_expires() {
    let app = spawn_app_with(|f| f.merge(("auth.mfa_challenge_ttl", "1s"))).await;
    let jane = app.mfa_user().await;
    app.begin_mfa(&jane).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = app.verify_code(&jane, &jane.totp_code(0)).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
}

#[tokio::test]
async fn the_mfa_token_can_be_made_mandatory() {
    let app = spawn_app_with(|f| f.merge(("auth.require_mfa_token", true))).await;
    let jane = app.mfa_user().await;
    let mfa_token = app.begin_mfa(&jane).await;

    let without = app.verify_code(&jane, &jane.totp_code(0)).await;
    assert_error(without, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;

    let with = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": mfa_token}),
        )
        .await;
    assert_eq!(with.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_original_clients_form_checks_the_password_instead_of_a_challenge() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    let other = app.mfa_user().await;

    let wrong_password = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0),
            "email": jane.email, "password": "wrong"}),
        )
        .await;
    assert_error(
        wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    // Another account's valid credentials do not open Jane's.
    let someone_else = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0),
            "email": other.email, "password": other.password}),
        )
        .await;
    assert_error(
        someone_else,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;

    let response = app.verify_with_password(&jane).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        app.me(body["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn guessing_codes_for_unknown_or_non_mfa_users_looks_like_a_wrong_code() {
    let app = spawn_app().await;
    let john = app.user().await;
    app.logged_in(&john).await;
    for user_id in [999_999_u64, john.id.get()] {
        let response = app
            .verify_mfa(&json!({"userId": user_id, "otpCode": "123456"}))
            .await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    }
    // Probing unknown ids leaves no actors behind.
    assert_eq!(app.resident_actors().await, 1);
}

#[tokio::test]
async fn malformed_verify_requests_get_400() {
    let app = spawn_app().await;
    for body in [
        json!({"otpCode": "123456"}),
        json!({"userId": 1}),
        json!({"userId": "abc", "otpCode": "123456"}),
        json!({"userId": -4, "otpCode": "123456"}),
        json!({"userId": 1, "otpCode": 123456}),
        json!({"userId": 1, "otpCode": "123456", "email": "a@example.com"}),
        json!({"userId": 1, "otpCode": "123456", "mfaToken": 7}),
    ] {
        let response = app.verify_mfa(&body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

#[tokio::test]
async fn a_forced_logout_voids_a_login_half_done() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let jane = app.mfa_user().await;
    // Someone with Jane's stolen password is between the two steps...
    let mfa_token = app.begin_mfa(&jane).await;
    // ...when the bank signs Jane out of everything.
    let forced = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/users/{}/logout-all", jane.id),
            Some(ADMIN_KEY),
        )
        .json(&json!({"reason": "card reported stolen"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);
    let finished = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": mfa_token}),
        )
        .await;
    assert_error(finished, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
}

#[tokio::test]
async fn a_guessed_code_does_not_tell_that_an_account_is_inactive() {
    let app = spawn_app().await;
    let inactive = app
        .create_user(UserSpec {
            mfa: true,
            inactive: true,
            ..UserSpec::default()
        })
        .await;
    let guess = app.verify_code(&inactive, &inactive.totp_code(0)).await;
    assert_error(guess, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
}

#[tokio::test]
async fn a_stranger_with_wrong_tokens_cannot_use_up_someone_elses_challenge() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    let mfa_token = app.begin_mfa(&jane).await;
    for _ in 0..10 {
        let guess = app
            .verify_mfa(
                &json!({"userId": jane.id.get(), "otpCode": "000000", "mfaToken": "f".repeat(64)}),
            )
            .await;
        assert_error(guess, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    }
    let jane_herself = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": mfa_token}),
        )
        .await;
    assert_eq!(jane_herself.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_password_steps_in_flight_each_answer_with_their_own_token() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;
    let phone = app.begin_mfa(&jane).await;
    let laptop = app.begin_mfa(&jane).await;
    let on_phone = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(0), "mfaToken": phone}),
        )
        .await;
    assert_eq!(on_phone.status(), StatusCode::OK);
    // The laptop's challenge is still pending (its code must be a newer step: codes are
    // single-use).
    let on_laptop = app
        .verify_mfa(
            &json!({"userId": jane.id.get(), "otpCode": jane.totp_code(1), "mfaToken": laptop}),
        )
        .await;
    assert_eq!(on_laptop.status(), StatusCode::OK);
}
