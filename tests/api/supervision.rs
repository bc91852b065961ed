use std::time::{Duration, Instant};

use finsec::sessions::{SupervisorMsg, UserMsg};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;

use crate::helpers::{eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_crashed_user_actor_is_replaced_from_the_store_and_nobody_else_notices() {
    let app = spawn_app().await;
    let john = app.user().await;
    let jane = app.user().await;
    let johns_phone = app.logged_in(&john).await;
    let johns_laptop = app.logged_in(&john).await;
    assert_eq!(
        app.logout(&johns_laptop.token, None).await.status(),
        StatusCode::OK
    );
    let janes = app.logged_in(&jane).await;
    assert_eq!(app.resident_actors().await, 2);

    let actor = app
        .state
        .sessions
        .registry()
        .resident(john.id)
        .expect("john's actor is resident");
    actor.cast(UserMsg::Crash).expect("message is delivered");

    // The supervisor notices and drops the failed actor from the registry.
    let forgotten = eventually(|| async { (app.resident_actors().await == 1).then_some(()) }).await;
    assert!(forgotten.is_some(), "the failed actor is forgotten");
    assert!(app.state.sessions.registry().resident(john.id).is_none());

    // Jane never noticed; John's next request respawns his actor with exactly his live sessions.
    assert_eq!(app.me(&janes.token).await.status(), StatusCode::OK);
    assert_eq!(app.me(&johns_phone.token).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&johns_laptop.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.resident_actors().await, 2);
}

#[tokio::test]
async fn a_hung_database_never_delays_supervision() {
    // Sweeps every second, each store call bounded by that; the database answers nothing
    // that touches the sessions table while another connection holds it locked, so a sweep
    // hangs for two seconds (expiring, then pruning sessions). In the supervisor, that would
    // hold up its mailbox; in the sweeper, it holds up the next sweep only.
    let app = spawn_app_with(|f| {
        f.merge(("session.sweep_interval", "1s"))
            .merge(("database.timeout", "5s"))
    })
    .await;
    let john = app.user().await;
    let _johns = app.logged_in(&john).await;
    assert_eq!(app.resident_actors().await, 1);

    let mut lock = app.db.connection().await;
    lock.query_drop("LOCK TABLES sessions WRITE").await.unwrap();
    // Let a sweep start and hang on the lock.
    tokio::time::sleep(Duration::from_millis(1300)).await;

    // The supervisor answers at once, again and again, while sweep after sweep waits.
    for _ in 0..10 {
        let asked = Instant::now();
        let count = ractor::call_t!(
            app.state.sessions.supervisor(),
            SupervisorMsg::CountResidents,
            250
        );
        assert_eq!(count.ok(), Some(1), "the supervisor answered within 250 ms");
        assert!(asked.elapsed() < Duration::from_millis(250));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And it supervises: a failed user actor is forgotten promptly.
    let actor = app.state.sessions.registry().resident(john.id).unwrap();
    actor.cast(UserMsg::Crash).expect("message is delivered");
    let deadline = Instant::now() + Duration::from_millis(500);
    while app.state.sessions.registry().resident(john.id).is_some() {
        assert!(
            Instant::now() < deadline,
            "the failed actor was not forgotten in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    lock.query_drop("UNLOCK TABLES").await.unwrap();
}
