use finsec::sessions::UserMsg;
use reqwest::StatusCode;

use crate::helpers::{eventually, spawn_app};

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
