//! A signed-in user's own sessions: list, end one, end all.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
                     (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const LAPTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                      (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

#[tokio::test]
async fn a_user_sees_their_live_sessions_newest_first_with_this_one_marked() {
    let app = spawn_app().await;
    let john = app.user().await;
    let other = app.user().await;
    let phone = app.logged_in_from(&john, PHONE).await;
    let laptop = app.logged_in_from(&john, LAPTOP).await;
    let ended = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&ended.token, None).await.status(),
        StatusCode::OK
    );
    app.logged_in(&other).await;

    let response = app.list_sessions(&phone.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let sessions = body["sessions"].as_array().unwrap();
    let ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [laptop.session_id.as_str(), phone.session_id.as_str()],
        "live, mine, newest first"
    );

    let current: Vec<bool> = sessions
        .iter()
        .map(|s| s["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current, [false, true]);
    let laptop_view = &sessions[0];
    assert_eq!(laptop_view["user_agent"], LAPTOP);
    assert_eq!(laptop_view["ip"], "127.0.0.1");
    assert!(
        laptop_view["device"]
            .as_str()
            .unwrap()
            .starts_with("Chrome"),
        "{laptop_view}"
    );
    for field in [
        "created_at",
        "last_seen_at",
        "expires_at",
        "idle_expires_at",
    ] {
        assert!(laptop_view[field].as_str().is_some(), "{field}");
    }
}

#[tokio::test]
async fn ending_another_device_by_id() {
    let app = spawn_app().await;
    let john = app.user().await;
    let phone = app.logged_in_from(&john, PHONE).await;
    let laptop = app.logged_in_from(&john, LAPTOP).await;

    let response = app.delete_session(&laptop.token, &phone.session_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"message": "Session revoked"}));
    assert_error(
        app.me(&phone.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;
    assert_eq!(app.me(&laptop.token).await.status(), StatusCode::OK);

    // Gone now, so a second try finds nothing.
    let again = app.delete_session(&laptop.token, &phone.session_id).await;
    assert_error(again, StatusCode::NOT_FOUND, "session_not_found").await;
}

#[tokio::test]
async fn someone_elses_or_a_malformed_session_id_is_just_not_found() {
    let app = spawn_app().await;
    let john = app.user().await;
    let mallory = app.user().await;
    let johns = app.logged_in(&john).await;
    let mallorys = app.logged_in(&mallory).await;

    let response = app.delete_session(&mallorys.token, &johns.session_id).await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    let response = app.delete_session(&mallorys.token, "not-a-uuid").await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    assert_eq!(app.me(&johns.token).await.status(), StatusCode::OK);

    let response = app
        .client
        .delete(app.url(&format!("/api/auth/sessions/{}", johns.session_id)))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn logout_all_ends_every_device_including_this_one() {
    let app = spawn_app().await;
    let john = app.user().await;
    let bystander = app.user().await;
    let devices: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| app.logged_in(&john))).await;
    let theirs = app.logged_in(&bystander).await;

    let response = app.logout_all(&devices[0].token, &json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "Logged out of all devices", "revoked": 5})
    );

    for device in &devices {
        app.assert_ended(device, "logout_all").await;
    }
    assert_eq!(app.me(&theirs.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_all_can_keep_the_current_device() {
    let app = spawn_app().await;
    let john = app.user().await;
    let devices: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| app.logged_in(&john))).await;

    let response = app
        .logout_all(&devices[2].token, &json!({"keepCurrent": true}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], 4);

    for (i, device) in devices.iter().enumerate() {
        let expected = if i == 2 {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(app.me(&device.token).await.status(), expected, "device {i}");
    }
    let listed: Value = app
        .list_sessions(&devices[2].token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn logout_all_rejects_a_malformed_body() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let response = app
        .logout_all(&session.token, &json!({"keepCurrent": "yes"}))
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn concurrent_logins_of_neighbouring_users_never_deadlock() {
    // Logins of users whose sessions sit side by side in the index, all at once, each past
    // the session limit (so older sessions are ended in the same transaction). Under
    // REPEATABLE READ their locking reads took the gaps between them, and InnoDB broke the
    // deadlocks by failing a login (a 503): `scripts/bench` showed 6 in about 1,200 logins.
    // Under READ COMMITTED a deadlock is rare but not impossible (one CI run saw one in the
    // 1,200 logins here); the login's transaction now runs again when chosen as a victim. This
    // test could not be made to fail on demand; it stands guard over the behaviour.
    let app = crate::helpers::spawn_app_with(|f| {
        // Every login of a round (80 of them) is admitted to hashing: a refusal here must be
        // the database's doing, not the admission limit's.
        f.merge(("database.max_connections", 32))
            .merge(("session.max_per_user", 2))
            .merge(("password.max_queued_hashes", 128))
            // Nor a slow machine's: on a loaded CI runner a login can wait past the usual
            // 2 s for one of the 32 connections, or 5 s for its actor. Only a deadlock or
            // an error may refuse it.
            .merge(("database.timeout", "30s"))
            .merge(("actors.call_timeout", "30s"))
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..40 {
        users.push(app.user().await);
    }
    let bodies: Vec<Value> = users
        .iter()
        .flat_map(|u| [u, u])
        .map(|u| u.credentials())
        .collect();
    let mut refused = Vec::new();
    for _ in 0..15 {
        let logins = bodies.iter().map(|body| app.login(body));
        for response in futures_util::future::join_all(logins).await {
            if response.status() != StatusCode::OK {
                refused.push(response.text().await.unwrap());
            }
        }
    }
    if !refused.is_empty() {
        let logs = crate::helpers::captured_logs();
        let warnings: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        panic!(
            "{} logins refused: {:?}\nthe service's warnings:\n{}",
            refused.len(),
            refused.first(),
            warnings.join("\n")
        );
    }
}
