//! Crash safety with the real binary: what was in force before a `kill -9` is in force after
//! the restart, even a revocation the client heard 503 for (the database was down).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app};
use crate::process::{ServiceProcess, TempJournal};

/// Makes every update of a session row fail, as a database that refuses writes would.
const REFUSE_REVOCATIONS: &str = "CREATE TRIGGER refuse_revocations BEFORE UPDATE ON sessions \
     FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'test: writes refused'";

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
    // Every revocation write fails (a trigger refuses updates of sessions); reads still work,
    // so after the restart the stale row is there to be believed.
    fixture.db.execute(REFUSE_REVOCATIONS).await;
    assert_error(
        node.logout(&session).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(node.me(&session).await, StatusCode::UNAUTHORIZED);
    node.kill().await;

    let live = fixture
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE id = '{}' AND revoked_at IS NULL",
            session.session_id
        ))
        .await;
    assert_eq!(live.as_deref(), Some("1"), "the write did not land");

    // Restarted while writes still fail: only the journal says the session has ended.
    node.restart().await;
    assert_eq!(
        node.me(&session).await,
        StatusCode::UNAUTHORIZED,
        "a revocation the client heard 503 for came back after kill -9"
    );
    assert_eq!(node.me(&bystander).await, StatusCode::OK);

    // Writes work again: the journal's writer lands it.
    fixture.db.execute("DROP TRIGGER refuse_revocations").await;
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
