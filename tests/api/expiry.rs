//! Idle timeout, absolute lifetime, the per-user limit, retention and passivation, driven by
//! short config values (no multi-minute sleeps).

use std::time::Duration;

use figment::Figment;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, eventually, spawn_app_with};

fn quick_sweeps(figment: Figment) -> Figment {
    figment
        .merge(("session.sweep_interval", "100ms"))
        .merge(("session.touch_interval", "100ms"))
}

#[tokio::test]
async fn activity_keeps_a_session_alive_and_idleness_ends_it() {
    let app = spawn_app_with(|f| quick_sweeps(f).merge(("session.idle_timeout", "1s"))).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;

    // Requests every 400 ms carry the session well past one idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_error(
        app.me(&session.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;
    assert_eq!(
        app.eventual_revoke_reason(&session.session_id)
            .await
            .as_deref(),
        Some("idle_timeout")
    );
}

#[tokio::test]
async fn the_sweep_ends_idle_sessions_nobody_asks_about() {
    let app = spawn_app_with(|f| quick_sweeps(f).merge(("session.idle_timeout", "500ms"))).await;
    let john = app.user().await;
    let forgotten = app.logged_in(&john).await;
    // No request ever comes for this session again; the sweep alone records its end.
    assert_eq!(
        app.eventual_revoke_reason(&forgotten.session_id)
            .await
            .as_deref(),
        Some("idle_timeout")
    );
}

#[tokio::test]
async fn the_absolute_lifetime_ends_even_a_busy_session() {
    let app = spawn_app_with(|f| {
        quick_sweeps(f)
            .merge(("session.max_lifetime", "2s"))
            .merge(("session.idle_timeout", "1h"))
    })
    .await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let me: Value = app.me(&session.token).await.json().await.unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(me["session"]["created_at"].as_str().unwrap())
            .unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(me["session"]["expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(expires - created, chrono::Duration::seconds(2));

    // Just past the end, the session is refused: the actor checks the instant itself.
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The token's `exp` is the session's end (whole seconds), so soon the token itself says so.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_error(
        app.me(&session.token).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    )
    .await;
    assert_eq!(
        app.eventual_revoke_reason(&session.session_id)
            .await
            .as_deref(),
        Some("max_lifetime")
    );
}

#[tokio::test]
async fn a_login_beyond_the_limit_ends_the_least_recently_used_session() {
    let app = spawn_app_with(|f| f.merge(("session.max_per_user", 3))).await;
    let john = app.user().await;
    let first = app.logged_in(&john).await;
    let second = app.logged_in(&john).await;
    let third = app.logged_in(&john).await;
    // The first device is used again, so the second is now the least recently used.
    assert_eq!(app.me(&first.token).await.status(), StatusCode::OK);

    let fourth = app.logged_in(&john).await;
    app.assert_ended(&second, "session_limit").await;
    for kept in [&first, &third, &fourth] {
        assert_eq!(app.me(&kept.token).await.status(), StatusCode::OK);
    }
    let listed: Value = app.list_sessions(&fourth.token).await.json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn ended_rows_are_kept_for_the_retention_period_then_pruned() {
    let app = spawn_app_with(|f| quick_sweeps(f).merge(("session.retention", "1s"))).await;
    let john = app.user().await;
    let ended = app.logged_in(&john).await;
    let live = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&ended.token, None).await.status(),
        StatusCode::OK
    );

    let row = |id: String| {
        let sql = format!("SELECT COUNT(*) FROM sessions WHERE id = '{id}'");
        let db = &app.db;
        async move { db.query_one(&sql).await }
    };
    assert_eq!(
        row(ended.session_id.clone()).await.as_deref(),
        Some("1"),
        "kept at first"
    );
    let pruned = eventually(|| async {
        (row(ended.session_id.clone()).await.as_deref() == Some("0")).then_some(())
    })
    .await;
    assert!(pruned.is_some(), "pruned after the retention period");
    assert_eq!(
        row(live.session_id.clone()).await.as_deref(),
        Some("1"),
        "live rows stay"
    );
}

#[tokio::test]
async fn an_idle_actor_passivates_and_comes_back_with_its_sessions() {
    let app = spawn_app_with(|f| quick_sweeps(f).merge(("actors.idle_passivate", "300ms"))).await;
    let john = app.user().await;
    let kept = app.logged_in(&john).await;
    let ended = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&ended.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.resident_actors().await, 1);

    let passivated =
        eventually(|| async { (app.resident_actors().await == 0).then_some(()) }).await;
    assert!(
        passivated.is_some(),
        "the idle actor stopped and left the registry"
    );

    assert_eq!(app.me(&kept.token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&ended.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.resident_actors().await, 1, "respawned on demand");
}

#[tokio::test]
async fn an_idle_session_is_refused_on_its_next_request_even_before_any_sweep() {
    let app = spawn_app_with(|f| {
        f.merge(("session.sweep_interval", "1h"))
            .merge(("database.outage_grace", "2h"))
            .merge(("session.idle_timeout", "500ms"))
    })
    .await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reason = format!(
        "SELECT revoke_reason FROM sessions WHERE id = '{}'",
        session.session_id
    );
    assert_eq!(app.db.query_one(&reason).await, None, "no sweep has run");

    assert_error(
        app.me(&session.token).await,
        StatusCode::UNAUTHORIZED,
        "session_ended",
    )
    .await;
    // The refusal itself recorded why the session ended.
    assert_eq!(
        app.db.query_one(&reason).await.as_deref(),
        Some("idle_timeout")
    );
}

#[tokio::test]
async fn activity_is_written_at_most_once_per_touch_interval() {
    let lazy = spawn_app_with(|f| f.merge(("session.touch_interval", "1h"))).await;
    let eager = spawn_app_with(|f| f.merge(("session.touch_interval", "100ms"))).await;
    for app in [&lazy, &eager] {
        let john = app.user().await;
        let session = app.logged_in(&john).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
        let sql = format!(
            "SELECT last_seen_at > created_at FROM sessions WHERE id = '{}'",
            session.session_id
        );
        let moved = app.db.query_one(&sql).await;
        let expected = if std::ptr::eq(app, &lazy) { "0" } else { "1" };
        assert_eq!(
            moved.as_deref(),
            Some(expected),
            "touch_interval {:?}",
            app.settings.session.touch_interval
        );
    }
}
