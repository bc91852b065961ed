//! A database outage: logins answer 503 within `database.timeout`, live sessions keep
//! validating from memory for `database.outage_grace` and then fail closed, and the service
//! recovers by itself when the database returns, losing no write.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app_through_relay};

#[tokio::test]
async fn live_sessions_ride_out_an_outage_for_the_grace_then_fail_closed_and_all_recovers() {
    let grace = Duration::from_secs(3);
    let (app, relay) = spawn_app_through_relay(|f| {
        f.merge(("database.timeout", "500ms"))
            .merge(("database.outage_grace", "3s"))
            .merge(("session.sweep_interval", "500ms"))
            .merge(("actors.revoke_retry", "200ms"))
    })
    .await;
    let john = app.user().await;
    let jane = app.user().await;
    let johns = app.logged_in(&john).await;
    let johns_other_device = app.logged_in(&john).await;

    relay.down();
    let outage_began = Instant::now();

    // A login needs the database: 503 within the timeout, not a hang.
    let asked = Instant::now();
    assert_error(
        app.login(&jane.credentials()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // A logout in the outage: 503, in force at once, written later.
    assert_error(
        app.logout(&johns_other_device.token, None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(
        app.me(&johns_other_device.token).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A live session keeps working from memory...
    assert_eq!(app.me(&johns.token).await.status(), StatusCode::OK);
    // ...until the grace has run out; then it fails closed, promptly.
    let failed_closed = loop {
        let status = app.me(&johns.token).await.status();
        if status != StatusCode::OK {
            break (status, outage_began.elapsed());
        }
        assert!(
            outage_began.elapsed() < grace + Duration::from_secs(3),
            "memory kept answering long past database.outage_grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed_closed.0, StatusCode::SERVICE_UNAVAILABLE);
    // The grace counts from the last answer, which came at most a sweep before the outage.
    assert!(
        failed_closed.1 >= grace - Duration::from_millis(600),
        "failed closed after {:?}, before the grace",
        failed_closed.1
    );
    assert_error(
        app.me(&johns.token).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;

    // The database returns: no restart, everything works again, and no write was lost.
    relay.up();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.me(&johns.token).await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "did not recover by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.login(&jane.credentials()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&johns_other_device.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.eventual_revoke_reason(&johns_other_device.session_id)
            .await
            .as_deref(),
        Some("logout"),
        "the logout answered 503 in the outage was written when the database returned"
    );
}

/// A hibernated user (no actor, their publication answering alone) in an outage: the actor
/// that a write starts resumes from the publication without reading the database, so the
/// user is served as a resident actor would serve them, and a logout answered 503 is in force
/// at once and written when the database returns.
#[tokio::test]
async fn a_hibernated_user_rides_out_an_outage_and_a_logout_in_it_is_in_force() {
    let (app, relay) = spawn_app_through_relay(|f| {
        crate::read_path::quick_hibernation(f)
            .merge(("database.timeout", "500ms"))
            .merge(("database.outage_grace", "30s"))
            .merge(("actors.revoke_retry", "200ms"))
    })
    .await;
    let (_, phone, laptop) = crate::read_path::on_two_devices(&app).await;
    crate::read_path::hibernated(&app, 1).await;

    relay.down();
    assert_error(
        app.logout(&laptop.token, None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(
        app.me(&laptop.token).await.status(),
        StatusCode::UNAUTHORIZED,
        "a logout answered 503 must be in force at once"
    );
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);

    relay.up();
    assert_eq!(
        app.eventual_revoke_reason(&laptop.session_id)
            .await
            .as_deref(),
        Some("logout"),
        "written when the database returned"
    );
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);
}
