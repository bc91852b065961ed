//! The read path beside the actors (`sessions::published`): validations answered from what
//! the user's actor published, without a message, and never after the actor began to end
//! the session.

use std::time::Duration;

use reqwest::StatusCode;

use tokio::task::JoinHandle;

use crate::helpers::{
    ADMIN_KEY, LoggedIn, TestApp, TestUser, assert_error, eventually, spawn_app_with, spawn_request,
};

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

/// John on his phone and his laptop, both validated once (so published); his session rows
/// held locked by another connection while `end` (a request that ends the laptop's session)
/// waits on them. The laptop's session is never accepted meanwhile: its actor withdrew its
/// publication before the write began (at worst the busy actor answers 503). Once the lock
/// goes, the write commits and the store records `reason`.
async fn refused_from_the_moment_its_end_begins(
    end: impl FnOnce(&TestApp, &TestUser, &LoggedIn) -> JoinHandle<reqwest::Result<StatusCode>>,
    reason: &str,
) {
    let app = spawn_app_with(|f| {
        f.merge(("database.timeout", "3s"))
            .merge(("actors.call_timeout", "300ms"))
            .merge(("admin.api_key", ADMIN_KEY))
    })
    .await;
    let (john, phone, laptop) = on_two_devices(&app).await;
    assert_eq!(
        app.state.sessions.registry().published_count(),
        1,
        "john's actor published his sessions"
    );

    let mut holder = app.lock_sessions_of(&john).await;
    let ending = end(&app, &john, &phone);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(app.me(&laptop.token).await.status());
    }
    // Released before any assertion: a test that fails must not leave the lock held.
    use mysql_async::prelude::Queryable;
    holder.query_drop("ROLLBACK").await.unwrap();
    drop(holder);
    assert!(
        during.iter().all(|status| *status != StatusCode::OK),
        "accepted while its end was being written: {during:?}"
    );
    // The caller waited actors.call_timeout (503, not acknowledged) or the write was quick
    // enough; either way it commits once the lock is released.
    let status = ending.await.unwrap().unwrap();
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}"
    );
    app.assert_ended(&laptop, reason).await;
}

#[tokio::test]
async fn a_session_is_refused_from_the_moment_its_revocation_begins() {
    refused_from_the_moment_its_end_begins(
        |app, _, phone| app.spawn_logout_all(&phone.token),
        "logout_all",
    )
    .await;
}

#[tokio::test]
async fn a_password_change_refuses_the_other_sessions_before_it_is_written() {
    refused_from_the_moment_its_end_begins(
        |app, john, phone| {
            spawn_request(
                app.client
                    .post(app.url("/api/auth/change-password"))
                    .bearer_auth(&phone.token)
                    .json(&serde_json::json!({
                        "currentPassword": john.password,
                        "newPassword": "a-new-password-for-john-42",
                    })),
            )
        },
        "password_changed",
    )
    .await;
}

#[tokio::test]
async fn a_deactivation_refuses_every_session_before_it_is_written() {
    refused_from_the_moment_its_end_begins(
        |app, john, _| {
            spawn_request(
                app.admin(
                    reqwest::Method::POST,
                    &format!("/api/admin/users/{}/deactivate", john.id),
                    Some(ADMIN_KEY),
                )
                .json(&serde_json::json!({"reason": "card reported stolen"})),
            )
        },
        "account_disabled",
    )
    .await;
}

/// John logged in on his phone and his laptop, each validated once (so published).
pub async fn on_two_devices(app: &TestApp) -> (TestUser, LoggedIn, LoggedIn) {
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;
    for token in [&phone.token, &laptop.token] {
        assert_eq!(app.me(token).await.status(), StatusCode::OK);
    }
    (john, phone, laptop)
}

/// An actor hibernates on the first tick after 200 ms without a message.
pub fn quick_hibernation(figment: figment::Figment) -> figment::Figment {
    figment
        .merge(("session.sweep_interval", "100ms"))
        .merge(("actors.idle_hibernate", "200ms"))
}

/// Waits until no user actor runs on `app` and `users` publications answer alone.
pub async fn hibernated(app: &TestApp, users: usize) {
    let done = eventually(|| async {
        let registry = app.state.sessions.registry();
        (app.resident_actors().await == 0 && registry.published_count() == users).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "not hibernated: {} actors, {} publications",
        app.resident_actors().await,
        app.state.sessions.registry().published_count()
    );
}

#[tokio::test]
async fn a_hibernated_users_validations_need_no_actor_and_any_write_withdraws_them() {
    let app = spawn_app_with(quick_hibernation).await;
    let (john, phone, laptop) = on_two_devices(&app).await;
    hibernated(&app, 1).await;

    for _ in 0..3 {
        assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);
    }
    assert_eq!(app.resident_actors().await, 0, "answered without an actor");

    // A logout starts an actor, which resumes from the publication and withdraws it before
    // it writes: the laptop is refused at once, the phone is not.
    assert_eq!(
        app.logout(&laptop.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&laptop.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);

    // And once it hibernates again, what it leaves knows it.
    hibernated(&app, 1).await;
    assert_eq!(
        app.me(&laptop.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);

    // A login (whose actor starts from the row the password was checked against) too.
    let tablet = app.logged_in(&john).await;
    for token in [&phone.token, &tablet.token] {
        assert_eq!(app.me(token).await.status(), StatusCode::OK);
    }
    hibernated(&app, 1).await;
    assert_eq!(
        app.logout_all(&tablet.token, &serde_json::json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&phone.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.me(&tablet.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_actor_resumed_from_hibernation_keeps_the_activity_answered_meanwhile() {
    // Touches are written once a minute: the request answered while hibernated is in memory
    // only, and the store still has the login's time.
    let app = spawn_app_with(quick_hibernation).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
    hibernated(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let me: serde_json::Value = app.me(&session.token).await.json().await.unwrap();
    let seen = me["session"]["last_seen_at"].clone();
    assert!(seen.is_string(), "{me}");

    let listed: serde_json::Value = app
        .list_sessions(&session.token)
        .await
        .json()
        .await
        .unwrap();
    let listed = listed["sessions"]
        .as_array()
        .and_then(|sessions| {
            sessions
                .iter()
                .find(|s| s["id"] == session.session_id.as_str())
        })
        .unwrap_or_else(|| panic!("the session is listed: {listed}"))
        .clone();
    // The listing's own validation was answered from the publication too: at least as new.
    let time = |value: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(value.as_str().expect("a time")).expect("RFC 3339")
    };
    assert!(
        time(&listed["last_seen_at"]) >= time(&seen),
        "the resumed actor lost a request the publication answered: {listed} against {seen}"
    );
}

/// Hibernation as above, but the actors are ticked only when the test says.
fn ticked_by_hand(figment: figment::Figment) -> figment::Figment {
    quick_hibernation(figment)
        .merge(("session.sweep_interval", "1h"))
        .merge(("database.outage_grace", "2h"))
}

/// Once `user`'s actor has been idle long enough, makes it hibernate with `queued` already
/// in its mailbox: the message is handled while the actor drains.
fn hibernate_with_queued(app: &TestApp, user: &TestUser, queued: finsec::sessions::UserMsg) {
    let actor = app.actor_of(user);
    actor.cast(finsec::sessions::UserMsg::Tick).unwrap();
    actor.cast(queued).unwrap();
}

#[tokio::test]
async fn a_logout_that_reaches_no_actor_withdraws_the_hibernated_publication() {
    use finsec::sessions::UserMsg;
    // Callers give up on a slow actor after 300 ms.
    let app = spawn_app_with(|f| ticked_by_hand(f).merge(("actors.call_timeout", "300ms"))).await;
    let (john, _, laptop) = on_two_devices(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The actor hibernates, then drains a stall: for 2 s it neither takes messages nor stops.
    hibernate_with_queued(&app, &john, UserMsg::Stall(Duration::from_secs(2)));
    let registry = app.state.sessions.registry();
    let hibernating = eventually(|| async { registry.is_hibernated(john.id).then_some(()) }).await;
    assert!(hibernating.is_some(), "the actor did not hibernate");
    assert_eq!(
        app.me(&laptop.token).await.status(),
        StatusCode::OK,
        "the hibernated publication answers"
    );

    // The logout reaches no actor (503): what it was ending must not be granted meanwhile.
    assert_error(
        app.logout(&laptop.token, None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_ne!(app.me(&laptop.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_actor_that_fails_while_hibernating_leaves_nothing_answering() {
    use finsec::sessions::UserMsg;
    let app = spawn_app_with(ticked_by_hand).await;
    let (john, phone, _) = on_two_devices(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The actor hibernates, then fails on a message queued before it began to drain.
    hibernate_with_queued(&app, &john, UserMsg::Crash);
    let registry = app.state.sessions.registry();
    let gone = eventually(|| async { (registry.published_count() == 0).then_some(()) }).await;
    assert!(
        gone.is_some(),
        "a failed actor's publication kept answering"
    );
    // The next request starts an actor from the store, and the session still works.
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);
}

/// Crashes `user`'s actor and waits until neither it nor its publication is left.
async fn crashed(app: &TestApp, user: &TestUser) {
    app.actor_of(user)
        .cast(finsec::sessions::UserMsg::Crash)
        .unwrap();
    let registry = app.state.sessions.registry();
    let gone = eventually(|| async {
        (app.resident_actors().await == 0 && registry.published_count() == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the actor of user {} did not go", user.id);
}

#[tokio::test]
async fn an_actor_started_by_a_login_publishes_every_session_the_login_read() {
    use finsec::sessions::UserMsg;
    let app = spawn_app_with(|f| f.merge(("actors.call_timeout", "300ms"))).await;
    let (john, phone, laptop) = on_two_devices(&app).await;
    // John's actor goes; the next login starts one from the row the password was checked
    // against, and its sessions from what the login's transaction read under its lock.
    crashed(&app, &john).await;
    let tablet = app.logged_in(&john).await;

    // The new actor stalls: whatever it did not publish would wait 2 s and time out (503).
    app.actor_of(&john)
        .cast(UserMsg::Stall(Duration::from_secs(2)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for session in [&phone, &laptop, &tablet] {
        let me = app.me(&session.token).await;
        assert_eq!(
            me.status(),
            StatusCode::OK,
            "session {} not published by the actor the login started",
            session.session_id
        );
    }
}

#[tokio::test]
async fn an_actor_started_by_a_login_that_opened_no_session_reads_them_at_once() {
    use finsec::sessions::UserMsg;
    let app = spawn_app_with(|f| f.merge(("actors.call_timeout", "300ms"))).await;
    let jane = app.mfa_user().await;
    app.begin_mfa(&jane).await;
    let verified = app.verify_code(&jane, &jane.totp_code(0)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let phone = LoggedIn::from_body(&verified.json().await.unwrap());
    crashed(&app, &jane).await;
    // The password step opens no session, so its transaction read none: the actor it
    // started reads them as soon as the step is answered, and publishes them. A stalled
    // actor answers nothing (503 after 300 ms): the phone is answered from the publication.
    app.begin_mfa(&jane).await;
    app.actor_of(&jane)
        .cast(UserMsg::Stall(Duration::from_secs(2)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(app.me(&phone.token).await.status(), StatusCode::OK);
}
