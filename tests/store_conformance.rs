//! One contract, two stores: every test here runs against the in-memory store and against
//! MySQL (a fresh MariaDB database per test), so the embedded default cannot drift from what
//! production does.

use chrono::{Duration, DurationRound, Utc};
use finsec::domain::{
    Device, Email, NewUser, Revocation, RevokeReason, Session, SessionId, UserId,
};
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

/// Ada, the user most tests need.
async fn ada(store: &DynStore) -> finsec::domain::User {
    store
        .insert_user(new_user("ada@example.com"))
        .await
        .unwrap()
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
    let user = ada(&store).await;
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
        .revoke_sessions(&[revoked.id], &Revocation::new(t, RevokeReason::Logout))
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

async fn revoking_is_idempotent_and_keeps_the_first_reason(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let a = session(user.id, t, Duration::hours(1));
    let b = session(user.id, t, Duration::hours(1));
    store.insert_session(&a).await.unwrap();
    store.insert_session(&b).await.unwrap();

    let first = Revocation {
        at: t,
        reason: RevokeReason::Admin,
        note: Some("card reported stolen".into()),
    };
    store.revoke_sessions(&[a.id], &first).await.unwrap();
    // Again, with another reason, and together with a live one and an unknown id: the first
    // revocation of `a` stands, `b` ends, the unknown id is ignored.
    let second = Revocation::new(t + Duration::seconds(5), RevokeReason::Logout);
    store
        .revoke_sessions(&[a.id, b.id, SessionId::random()], &second)
        .await
        .unwrap();
    store.revoke_sessions(&[], &second).await.unwrap();

    let a = store.session_by_id(a.id).await.unwrap().unwrap();
    assert_eq!(a.revoked_at, Some(t));
    assert_eq!(a.revoke_reason, Some(RevokeReason::Admin));
    assert_eq!(a.revoke_note.as_deref(), Some("card reported stolen"));
    let b = store.session_by_id(b.id).await.unwrap().unwrap();
    assert_eq!(b.revoke_reason, Some(RevokeReason::Logout));
    assert_eq!(b.revoked_at, Some(t + Duration::seconds(5)));
    assert!(store.live_sessions(user.id, t).await.unwrap().is_empty());
    assert_eq!(
        store.session_by_id(SessionId::random()).await.unwrap(),
        None
    );
}

async fn touches_move_last_seen(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let s = session(user.id, t, Duration::hours(1));
    store.insert_session(&s).await.unwrap();
    store
        .touch_session(s.id, t + Duration::minutes(3))
        .await
        .unwrap();
    let stored = store.session_by_id(s.id).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, t + Duration::minutes(3));
    assert_eq!(stored.created_at, t);
}

async fn the_sweep_ends_expired_and_idle_sessions_with_their_reasons(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let fresh = session(user.id, t, Duration::hours(1));
    let idle = session(user.id, t - Duration::minutes(30), Duration::hours(1));
    let old = session(user.id, t - Duration::hours(3), Duration::hours(1));
    for s in [&fresh, &idle, &old] {
        store.insert_session(s).await.unwrap();
    }
    let ended = store
        .expire_sessions(t, t - Duration::minutes(15))
        .await
        .unwrap();
    assert_eq!(ended, 2);
    let reason = |id| {
        let store = store.clone();
        async move {
            store
                .session_by_id(id)
                .await
                .unwrap()
                .unwrap()
                .revoke_reason
        }
    };
    assert_eq!(reason(fresh.id).await, None);
    assert_eq!(reason(idle.id).await, Some(RevokeReason::IdleTimeout));
    assert_eq!(reason(old.id).await, Some(RevokeReason::MaxLifetime));
    assert_eq!(
        store
            .expire_sessions(t, t - Duration::minutes(15))
            .await
            .unwrap(),
        0,
        "idempotent"
    );
}

async fn pruning_deletes_only_rows_that_ended_before_the_cutoff(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let live = session(user.id, t - Duration::days(40), Duration::days(60));
    let revoked_long_ago = session(user.id, t - Duration::days(40), Duration::days(60));
    let revoked_recently = session(user.id, t - Duration::days(40), Duration::days(60));
    let expired_long_ago = session(user.id, t - Duration::days(40), Duration::hours(1));
    for s in [
        &live,
        &revoked_long_ago,
        &revoked_recently,
        &expired_long_ago,
    ] {
        store.insert_session(s).await.unwrap();
    }
    store
        .revoke_sessions(
            &[revoked_long_ago.id],
            &Revocation::new(t - Duration::days(31), RevokeReason::Logout),
        )
        .await
        .unwrap();
    store
        .revoke_sessions(
            &[revoked_recently.id],
            &Revocation::new(t - Duration::days(1), RevokeReason::Logout),
        )
        .await
        .unwrap();
    assert_eq!(
        store.prune_sessions(t - Duration::days(30)).await.unwrap(),
        2
    );
    assert!(store.session_by_id(live.id).await.unwrap().is_some());
    assert!(
        store
            .session_by_id(revoked_recently.id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .session_by_id(revoked_long_ago.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .session_by_id(expired_long_ago.id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn password_hashes_can_be_replaced(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    store
        .set_password_hash(user.id, "$scrypt$new")
        .await
        .unwrap();
    let stored = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "$scrypt$new");
    assert!(
        store
            .set_password_hash(UserId::new(424_242), "$scrypt$x")
            .await
            .is_err()
    );
}

async fn duplicate_session_ids_conflict(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
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
    let user = ada(&store).await;
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
    revoking_is_idempotent_and_keeps_the_first_reason,
    touches_move_last_seen,
    the_sweep_ends_expired_and_idle_sessions_with_their_reasons,
    pruning_deletes_only_rows_that_ended_before_the_cutoff,
    password_hashes_can_be_replaced,
    duplicate_session_ids_conflict,
    a_session_needs_an_existing_user,
    totp_steps_only_move_forward,
    ping_answers,
);
