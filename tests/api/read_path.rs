//! The read path beside the actors (`sessions::published`): validations answered from what
//! the user's actor published, without a message, and never after the actor began to end
//! the session.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app_with};

#[tokio::test]
async fn validations_are_answered_while_the_users_actor_is_busy() {
    use finsec::sessions::UserMsg;
    let app = spawn_app_with(|f| f.merge(("actors.call_timeout", "300ms"))).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    // The first validation is the actor's; it publishes after answering.
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
    app.actor_of(&john)
        .cast(UserMsg::Stall(Duration::from_secs(2)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A message to the actor would wait 2 s and time out at 300 ms (503): these are
    // answered from the publication.
    for _ in 0..5 {
        let me = app.me(&session.token).await;
        assert_eq!(me.status(), StatusCode::OK);
        let body: serde_json::Value = me.json().await.unwrap();
        assert_eq!(body["user"]["email"], john.email.as_str());
        assert_eq!(body["session"]["id"], session.session_id.as_str());
    }
    // What the publication cannot vouch for still goes to the actor: a login is a write.
    assert_error(
        app.login(&john.credentials()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
}

#[tokio::test]
async fn a_session_is_refused_from_the_moment_its_revocation_begins() {
    // John's session rows are locked by someone else, so his logout's write waits (up to
    // database.timeout). The session left the publication before the write began: no request
    // meanwhile is accepted, though the write has not committed.
    let app = spawn_app_with(|f| {
        f.merge(("database.timeout", "3s"))
            .merge(("actors.call_timeout", "300ms"))
    })
    .await;
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;
    for token in [&phone.token, &laptop.token] {
        assert_eq!(app.me(token).await.status(), StatusCode::OK);
    }
    assert_eq!(
        app.state.sessions.registry().published_count(),
        1,
        "john's actor published his sessions"
    );

    let mut holder = app.lock_sessions_of(&john).await;
    let logout = app.spawn_logout_all(&phone.token);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The laptop's session is in the revocation under way: never accepted again (the actor,
    // busy with the write, answers 503 at worst; the publication no longer answers at all).
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(app.me(&laptop.token).await.status());
    }
    // Released before any assertion: a test that fails must not leave the lock held (the
    // test database could not be dropped).
    use mysql_async::prelude::Queryable;
    holder.query_drop("ROLLBACK").await.unwrap();
    drop(holder);
    assert!(
        during.iter().all(|status| *status != StatusCode::OK),
        "accepted during its revocation: {during:?}"
    );
    // The caller waited actors.call_timeout (503, not acknowledged); the actor's write
    // goes on and commits once the lock is released.
    let status = logout.await.unwrap().unwrap();
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}"
    );
    app.assert_ended(&laptop, "logout_all").await;
}
