//! Crash safety with the real binary: what was in force before a `kill -9` is in force after
//! the restart, even a revocation the client heard 503 for (the database was down).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app};
use crate::process::{ServiceProcess, TempJournal};

#[tokio::test]
async fn a_revocation_answered_503_survives_a_kill_and_lands_when_the_database_returns() {
    // The in-process app only makes the database and the user; the binary serves.
    let mut fixture = spawn_app().await;
    let john = fixture.user().await;
    let other = fixture.user().await;
    fixture.stop().await;
    let journal = TempJournal::new();
    let db_url = fixture.db.url.clone();

    let mut node = ServiceProcess::start(&db_url, &journal.0, &[]).await;
    let session = node.login(&john).await;
    let bystander = node.login(&other).await;
    // The sessions table is gone: every write to it fails, as in an outage.
    fixture
        .db
        .execute("RENAME TABLE sessions TO sessions_offline")
        .await;
    assert_error(
        node.logout(&session).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(node.me(&session).await, StatusCode::UNAUTHORIZED);
    node.kill().await;

    // The database is back, the row still says live; the restarted node must not believe it.
    fixture
        .db
        .execute("RENAME TABLE sessions_offline TO sessions")
        .await;
    let live = fixture
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE id = '{}' AND revoked_at IS NULL",
            session.session_id
        ))
        .await;
    assert_eq!(
        live.as_deref(),
        Some("1"),
        "the outage kept the write from landing"
    );

    node.restart().await;
    assert_eq!(
        node.me(&session).await,
        StatusCode::UNAUTHORIZED,
        "a revocation the client heard 503 for came back after kill -9"
    );
    assert_eq!(node.me(&bystander).await, StatusCode::OK);
    // And the journal's writer lands it in the store.
    assert_eq!(
        fixture
            .eventual_revoke_reason(&session.session_id)
            .await
            .as_deref(),
        Some("logout")
    );
    // Settled: once written, a later start has nothing to replay.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&journal.0).map_or(0, |m| m.len()) > 0 {
        assert!(Instant::now() < deadline, "the journal was not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill().await;
}
