//! Write-through: nothing is acknowledged that did not reach MySQL, and a revocation takes
//! effect at once even when the write has to be retried.

use mysql_async::prelude::Queryable;
use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app_with};

#[tokio::test]
async fn a_login_whose_write_fails_is_not_acknowledged() {
    let app = spawn_app_with(|f| f.merge(("actors.revoke_retry", "100ms"))).await;
    let john = app.user().await;
    app.db
        .execute("RENAME TABLE sessions TO sessions_offline")
        .await;

    let response = app.login(&john.credentials()).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;

    app.db
        .execute("RENAME TABLE sessions_offline TO sessions")
        .await;
    let count = app.db.query_one("SELECT COUNT(*) FROM sessions").await;
    assert_eq!(count.as_deref(), Some("0"));
    let session = app.logged_in(&john).await;
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revocation_bites_at_once_and_its_write_is_retried_until_it_lands() {
    let mut app = spawn_app_with(|f| f.merge(("actors.revoke_retry", "100ms"))).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    app.db
        .execute("RENAME TABLE sessions TO sessions_offline")
        .await;

    // The client is told the logout did not complete...
    let response = app.logout(&session.token, None).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    // ...but the session is already refused: revocation fails closed.
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );

    app.db
        .execute("RENAME TABLE sessions_offline TO sessions")
        .await;
    let reason = app.eventual_revoke_reason(&session.session_id).await;
    assert_eq!(
        reason.as_deref(),
        Some("logout"),
        "the retried write landed"
    );

    app.restart().await;
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_database_call_that_hangs_is_answered_503_within_the_timeout() {
    let app = spawn_app_with(|f| f.merge(("database.timeout", "1s"))).await;
    let john = app.user().await;
    // Someone holds John's row locked: the login's transaction waits for it (InnoDB would
    // wait 50 s by default).
    let mut holder = app
        .hold_locks(&format!(
            "SELECT id FROM users WHERE id = {} FOR UPDATE",
            john.id
        ))
        .await;

    let started = std::time::Instant::now();
    let response = app.login(&john.credentials()).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;

    holder.query_drop("ROLLBACK").await.unwrap();
    drop(holder);
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_request_answered_503_is_not_carried_out_later() {
    use finsec::sessions::UserMsg;
    let app = spawn_app_with(|f| f.merge(("actors.call_timeout", "300ms"))).await;
    let john = app.user().await;
    let first = app.logged_in(&john).await;
    // John's actor is stuck (a slow database, say) for longer than a caller waits.
    app.actor_of(&john)
        .cast(UserMsg::Stall(std::time::Duration::from_secs(1)))
        .unwrap();
    let login = app.login(&john.credentials()).await;
    assert_error(
        login,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;

    // Once the actor is free, the abandoned login must not have opened a session.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(app.me(&first.token).await.status(), StatusCode::OK);
    let sessions = app
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE user_id = {}",
            john.id
        ))
        .await;
    assert_eq!(
        sessions.as_deref(),
        Some("1"),
        "only the first login's session"
    );
}

#[tokio::test]
async fn one_users_slow_writes_never_delay_another_users_validations() {
    // John's session rows are locked by someone else: every write that ends his sessions
    // waits for the lock until database.timeout. Jane's requests go through her own actor and
    // need no connection while her session is fresh.
    let app = spawn_app_with(|f| f.merge(("database.timeout", "3s"))).await;
    let john = app.user().await;
    let jane = app.user().await;
    let johns = app.logged_in(&john).await;
    let janes = app.logged_in(&jane).await;
    let mut holder = app.lock_sessions_of(&john).await;

    // Several of John's devices ask at once to end all his sessions; each waits on the lock.
    let slow: Vec<_> = (0..4).map(|_| app.spawn_logout_all(&johns.token)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        assert_eq!(app.me(&janes.token).await.status(), StatusCode::OK);
        slowest = slowest.max(asked.elapsed());
    }
    // Far below the 3 s John's writes wait: Jane never queued behind them.
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "Jane's slowest validation took {slowest:?} while John's writes hung"
    );

    assert!(
        slow.iter().all(|r| !r.is_finished()),
        "John's writes were not held up: the test proves nothing"
    );
    holder.query_drop("ROLLBACK").await.unwrap();
    for request in slow {
        let status = request.await.unwrap().unwrap();
        assert!(
            status == StatusCode::OK
                || status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::UNAUTHORIZED,
            "{status}"
        );
    }
}
