//! One contract, two stores: every test here runs against the in-memory store and against
//! MySQL (a fresh MariaDB database per test), so the embedded default cannot drift from what
//! production does.

use chrono::{Duration, DurationRound, Utc};
use finsec::domain::{Device, Email, NewUser, RevokeReason, Session, SessionId, UserId};
use finsec::store::{DynStore, MemoryStore, MySqlStore, StoreError};

#[path = "support/database.rs"]
#[allow(dead_code)] // this binary uses only part of the support module
mod database;
use database::TestDatabase;

/// A store under test; keeps the MySQL database alive (and drops it) with the store.
struct Subject {
    store: DynStore,
    _db: Option<TestDatabase>,
}

async fn memory() -> Subject {
    Subject {
        store: std::sync::Arc::new(MemoryStore::new()),
        _db: None,
    }
}

async fn mysql() -> Subject {
    let db = TestDatabase::create().await;
    let store = MySqlStore::connect(&db.url, 2)
        .await
        .expect("test database opens");
    Subject {
        store: std::sync::Arc::new(store),
        _db: Some(db),
    }
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: Email::parse(email).unwrap(),
        password_hash: "$scrypt$ln=4,r=8,p=1$c2FsdA$aGFzaA".into(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        phone_number: Some("+44 20 0000 0000".into()),
        is_active: true,
        mfa_enabled: true,
        totp_secret: Some("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into()),
    }
}

/// MySQL keeps microseconds; keep the test's instants at that precision so both stores
/// return exactly what they were given.
fn now() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap()
}

fn session(user: UserId, created: chrono::DateTime<Utc>, lifetime: Duration) -> Session {
    Session::open(
        user,
        Device {
            user_agent: Some("conformance/1.0".into()),
            ip: Some("192.0.2.1".into()),
        },
        created,
        lifetime,
    )
}

async fn users_round_trip(subject: Subject) {
    let store = subject.store;
    let created = store
        .insert_user(new_user("Ada@Example.com"))
        .await
        .unwrap();
    assert_eq!(created.email.as_str(), "ada@example.com");
    assert_eq!(created.totp_last_step, None);
    assert!(created.is_active && created.mfa_enabled);

    let by_email = store
        .user_by_email(&Email::parse("ada@example.com").unwrap())
        .await
        .unwrap();
    assert_eq!(by_email.as_ref(), Some(&created));
    let by_id = store.user_by_id(created.id).await.unwrap();
    assert_eq!(by_id, Some(created.clone()));

    assert_eq!(
        store
            .user_by_email(&Email::parse("bob@example.com").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .user_by_id(UserId::new(created.id.get() + 1000))
            .await
            .unwrap(),
        None
    );

    let second = store
        .insert_user(new_user("bob@example.com"))
        .await
        .unwrap();
    assert_ne!(second.id, created.id);
}

async fn duplicate_emails_conflict(subject: Subject) {
    let store = subject.store;
    store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap();
    let err = store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn sessions_live_until_revoked_or_expired(subject: Subject) {
    let store = subject.store;
    let user = store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap();
    let other = store
        .insert_user(new_user("bob@example.com"))
        .await
        .unwrap();
    let t = now();

    let live = session(user.id, t, Duration::hours(1));
    let revoked = session(user.id, t, Duration::hours(1));
    let expired = session(user.id, t - Duration::hours(2), Duration::hours(1));
    let someone_elses = session(other.id, t, Duration::hours(1));
    for s in [&live, &revoked, &expired, &someone_elses] {
        store.insert_session(s).await.unwrap();
    }
    store
        .revoke_session(revoked.id, t, RevokeReason::Logout)
        .await
        .unwrap();

    let found = store.live_sessions(user.id, t).await.unwrap();
    assert_eq!(
        found,
        vec![live.clone()],
        "only the live one, exactly as written"
    );

    // Past its end, the live one is no longer live either.
    assert!(
        store
            .live_sessions(user.id, t + Duration::hours(1))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn revoking_is_idempotent(subject: Subject) {
    let store = subject.store;
    let user = store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap();
    let t = now();
    let s = session(user.id, t, Duration::hours(1));
    store.insert_session(&s).await.unwrap();

    store
        .revoke_session(s.id, t, RevokeReason::Logout)
        .await
        .unwrap();
    store
        .revoke_session(s.id, t + Duration::seconds(5), RevokeReason::Admin)
        .await
        .unwrap();
    // Unknown ids are not an error either: a retried write must be able to land twice.
    store
        .revoke_session(SessionId::random(), t, RevokeReason::Logout)
        .await
        .unwrap();
    assert!(store.live_sessions(user.id, t).await.unwrap().is_empty());
}

async fn duplicate_session_ids_conflict(subject: Subject) {
    let store = subject.store;
    let user = store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap();
    let s = session(user.id, now(), Duration::hours(1));
    store.insert_session(&s).await.unwrap();
    let err = store.insert_session(&s).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn a_session_needs_an_existing_user(subject: Subject) {
    let store = subject.store;
    let s = session(UserId::new(424_242), now(), Duration::hours(1));
    assert!(store.insert_session(&s).await.is_err());
}

async fn totp_steps_only_move_forward(subject: Subject) {
    let store = subject.store;
    let user = store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap();
    assert!(store.advance_totp_step(user.id, 100).await.unwrap());
    assert!(
        !store.advance_totp_step(user.id, 100).await.unwrap(),
        "same step twice"
    );
    assert!(
        !store.advance_totp_step(user.id, 99).await.unwrap(),
        "older step"
    );
    assert!(store.advance_totp_step(user.id, 101).await.unwrap());
    let stored = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.totp_last_step, Some(101));
    assert!(
        !store
            .advance_totp_step(UserId::new(424_242), 1)
            .await
            .unwrap(),
        "no such user"
    );
}

async fn ping_answers(subject: Subject) {
    subject.store.ping().await.unwrap();
    subject.store.close().await.unwrap();
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $( #[tokio::test] async fn $case() { super::$case(super::memory().await).await } )*
        }
        mod mysql_store {
            $( #[tokio::test] async fn $case() { super::$case(super::mysql().await).await } )*
        }
    };
}

conformance!(
    users_round_trip,
    duplicate_emails_conflict,
    sessions_live_until_revoked_or_expired,
    revoking_is_idempotent,
    duplicate_session_ids_conflict,
    a_session_needs_an_existing_user,
    totp_steps_only_move_forward,
    ping_answers,
);
