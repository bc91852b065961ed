//! One contract, two stores: every test here runs against the in-memory store and against
//! MySQL (a fresh MariaDB database per test), so the embedded default cannot drift from what
//! production does.

use chrono::{Duration, DurationRound, Utc};
use finsec::crypto::{Keyring, Purpose};
use finsec::domain::HashedCode;
use finsec::domain::{
    AuthEvent, Device, Email, EventKind, FailureRule, Initiator, NewUser, Origin, Revocation,
    RevokeReason, SealedSecret, Session, SessionId, UserId,
};
use finsec::store::{
    DynStore, FactorChange, FactorOutcome, LoginGate, MemoryStore, MySqlStore, StoreError,
    StoredChallenge,
};

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
        totp_secret: Some(sealed(1)),
    }
}

/// A sealed secret as the store sees it: opaque bytes (the stores never open one).
fn sealed(n: u8) -> SealedSecret {
    SealedSecret {
        key_id: format!("key{n}"),
        nonce: vec![n; 12],
        ciphertext: vec![n; 36],
    }
}

/// The event a login records with the session it opens.
fn login_event(session: &Session) -> AuthEvent {
    AuthEvent::new(
        session.created_at,
        EventKind::LoginSucceeded,
        Some(session.user_id),
        Origin::default(),
    )
    .session(session.id)
}

/// Ada has two-factor on: her sessions are opened by a second factor.
fn mfa_gate() -> LoginGate {
    LoginGate {
        mfa_enabled: true,
        password_hash: None,
    }
}

fn event(user: UserId, kind: EventKind, at: chrono::DateTime<Utc>) -> AuthEvent {
    AuthEvent::new(at, kind, Some(user), Origin::default())
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

    // An actor's load reads the same, with the user's row: one session, none, no such user.
    let second = session(user.id, t, Duration::hours(1));
    store.insert_session(&second).await.unwrap();
    let (loaded, mut sessions) = store
        .user_and_live_sessions(user.id, t)
        .await
        .unwrap()
        .expect("ada exists");
    assert_eq!(loaded, store.user_by_id(user.id).await.unwrap().unwrap());
    sessions.sort_by_key(|s| s.id.to_string());
    let mut expected = vec![live.clone(), second.clone()];
    expected.sort_by_key(|s| s.id.to_string());
    assert_eq!(sessions, expected);
    assert_eq!(
        store
            .user_and_live_sessions(user.id, t + Duration::hours(1))
            .await
            .unwrap()
            .map(|(u, sessions)| (u.id, sessions)),
        Some((user.id, vec![]))
    );
    assert_eq!(
        store
            .user_and_live_sessions(UserId::new(424_242), t)
            .await
            .unwrap()
            .map(|(u, _)| u.id),
        None
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

    let first =
        Revocation::new(t, RevokeReason::Admin).with_note(Some("card reported stolen".into()));
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

    // Several nodes touch one session, each with its own view: the newest time stays.
    store
        .touch_session(s.id, t + Duration::minutes(1))
        .await
        .unwrap();
    let stored = store.session_by_id(s.id).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, t + Duration::minutes(3));
}

async fn opening_past_the_limit_ends_the_least_recently_used(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    // What a commit says is live is what the store then holds, the new session among it.
    let by_id = |mut sessions: Vec<Session>| {
        sessions.sort_by_key(|s| s.id.to_string());
        sessions
    };
    let mut opened = Vec::new();
    for i in 0..3 {
        let s = session(user.id, t + Duration::seconds(i), Duration::hours(1));
        let commit = store
            .open_session_within_limit(&s, 3, &mfa_gate(), &login_event(&s))
            .await
            .unwrap()
            .expect("opened");
        assert_eq!(commit.ended, vec![]);
        opened.push(s.clone());
        assert_eq!(by_id(commit.live), by_id(opened.clone()));
    }
    // The first is used again: the second is now the least recently used.
    store
        .touch_session(opened[0].id, t + Duration::minutes(5))
        .await
        .unwrap();
    let fourth = session(user.id, t + Duration::minutes(6), Duration::hours(1));
    let commit = store
        .open_session_within_limit(&fourth, 3, &mfa_gate(), &login_event(&fourth))
        .await
        .unwrap()
        .expect("opened");
    assert_eq!(commit.ended, vec![opened[1].id]);
    let live = store
        .live_sessions(user.id, fourth.created_at)
        .await
        .unwrap();
    assert_eq!(by_id(commit.live), by_id(live.clone()));
    assert!(
        live.iter()
            .any(|s| s.id == opened[0].id && s.last_seen_at == t + Duration::minutes(5))
    );
    let evicted = store.session_by_id(opened[1].id).await.unwrap().unwrap();
    assert_eq!(evicted.revoke_reason, Some(RevokeReason::SessionLimit));
    assert_eq!(evicted.revoked_at, Some(fourth.created_at));
    assert_eq!(
        store
            .live_sessions(user.id, fourth.created_at)
            .await
            .unwrap()
            .len(),
        3
    );
    let nobody = session(UserId::new(424_242), t, Duration::hours(1));
    assert!(matches!(
        store
            .open_session_within_limit(&nobody, 3, &mfa_gate(), &login_event(&nobody))
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn revoking_a_users_sessions_returns_what_it_ended(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let other = store
        .insert_user(new_user("grace@example.com"))
        .await
        .unwrap();
    let t = now();
    let [keep, a, b] =
        [0, 1, 2].map(|i| session(user.id, t + Duration::seconds(i), Duration::hours(1)));
    let theirs = session(other.id, t, Duration::hours(1));
    for s in [&keep, &a, &b, &theirs] {
        store.insert_session(s).await.unwrap();
    }
    let challenge = StoredChallenge {
        token_hash: [1; 32],
        created_at: t,
        expires_at: t + Duration::minutes(5),
        failures: 0,
    };
    store
        .put_mfa_challenge(user.id, &challenge, 3)
        .await
        .unwrap();
    let revocation = Revocation::new(t + Duration::minutes(1), RevokeReason::Admin)
        .with_note(Some("card stolen".into()));
    let mut ended = store
        .revoke_user_sessions(user.id, Some(keep.id), &revocation)
        .await
        .unwrap();
    ended.sort_by_key(|id| id.to_string());
    let mut expected = vec![a.id, b.id];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(ended, expected);
    let stored = store.session_by_id(a.id).await.unwrap().unwrap();
    assert_eq!(stored.revoke_note.as_deref(), Some("card stolen"));
    // A login half done by whoever is being logged out is voided with it.
    assert_eq!(store.mfa_challenge(user.id, None).await.unwrap(), None);
    // Nothing of the other user's, and nothing twice.
    assert!(
        store
            .session_by_id(theirs.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert_eq!(
        store
            .revoke_user_sessions(user.id, Some(keep.id), &revocation)
            .await
            .unwrap(),
        vec![]
    );
}

async fn changing_the_password_ends_the_other_sessions_together(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let keep = session(user.id, t, Duration::hours(1));
    let other = session(user.id, t, Duration::hours(1));
    store.insert_session(&keep).await.unwrap();
    store.insert_session(&other).await.unwrap();
    let challenge = StoredChallenge {
        token_hash: [1; 32],
        created_at: t,
        expires_at: t + Duration::minutes(5),
        failures: 0,
    };
    store
        .put_mfa_challenge(user.id, &challenge, 3)
        .await
        .unwrap();
    let revocation = Revocation::new(t + Duration::minutes(1), RevokeReason::PasswordChanged);
    let ended = store
        .change_password(
            user.id,
            "$scrypt$new",
            keep.id,
            &revocation,
            &event(user.id, EventKind::PasswordChanged, revocation.at),
        )
        .await
        .unwrap();
    assert_eq!(ended, Some(vec![other.id]));
    let hash = |store: &DynStore| {
        let store = store.clone();
        async move {
            store
                .user_by_id(user.id)
                .await
                .unwrap()
                .unwrap()
                .password_hash
        }
    };
    assert_eq!(hash(&store).await, "$scrypt$new");
    assert_eq!(
        store.mfa_challenge(user.id, None).await.unwrap(),
        None,
        "voided"
    );

    // Only from a session that is live at that moment: an ended caller changes nothing.
    store
        .revoke_sessions(&[keep.id], &Revocation::new(t, RevokeReason::LogoutAll))
        .await
        .unwrap();
    assert_eq!(
        store
            .change_password(
                user.id,
                "$scrypt$newer",
                keep.id,
                &revocation,
                &event(user.id, EventKind::PasswordChanged, revocation.at)
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(hash(&store).await, "$scrypt$new");
    assert!(matches!(
        store
            .change_password(
                UserId::new(424_242),
                "$scrypt$x",
                keep.id,
                &revocation,
                &event(
                    UserId::new(424_242),
                    EventKind::PasswordChanged,
                    revocation.at
                )
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn deactivation_ends_every_session(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let s = session(user.id, t, Duration::hours(1));
    store.insert_session(&s).await.unwrap();
    let revocation = Revocation::new(t, RevokeReason::AccountDisabled);
    let ended = store
        .set_user_active(
            user.id,
            false,
            &revocation,
            &event(user.id, EventKind::AccountDeactivated, revocation.at),
        )
        .await
        .unwrap();
    assert_eq!(ended, Some(vec![s.id]));
    assert!(!store.user_by_id(user.id).await.unwrap().unwrap().is_active);
    assert_eq!(
        store
            .session_by_id(s.id)
            .await
            .unwrap()
            .unwrap()
            .revoke_reason,
        Some(RevokeReason::AccountDisabled)
    );
    assert_eq!(
        store
            .set_user_active(
                user.id,
                true,
                &revocation,
                &event(user.id, EventKind::AccountDeactivated, revocation.at)
            )
            .await
            .unwrap(),
        Some(vec![])
    );
    assert!(store.user_by_id(user.id).await.unwrap().unwrap().is_active);
    assert_eq!(
        store
            .set_user_active(
                UserId::new(424_242),
                false,
                &revocation,
                &event(
                    UserId::new(424_242),
                    EventKind::AccountDeactivated,
                    revocation.at
                )
            )
            .await
            .unwrap(),
        None
    );
}

async fn idle_ends_only_when_the_stored_activity_agrees(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let s = session(user.id, t, Duration::hours(1));
    store.insert_session(&s).await.unwrap();
    store
        .touch_session(s.id, t + Duration::minutes(10))
        .await
        .unwrap();
    // Another node saw it at +10 min: a cutoff before that ends nothing.
    let at = t + Duration::minutes(20);
    assert!(
        !store
            .end_if_idle(
                s.id,
                t + Duration::minutes(5),
                &Revocation::new(at, RevokeReason::IdleTimeout)
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .session_by_id(s.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert!(
        store
            .end_if_idle(
                s.id,
                t + Duration::minutes(10),
                &Revocation::new(at, RevokeReason::IdleTimeout)
            )
            .await
            .unwrap()
    );
    let ended = store.session_by_id(s.id).await.unwrap().unwrap();
    assert_eq!(ended.revoke_reason, Some(RevokeReason::IdleTimeout));
    assert!(
        !store
            .end_if_idle(s.id, at, &Revocation::new(at, RevokeReason::IdleTimeout))
            .await
            .unwrap(),
        "once"
    );
}

async fn mfa_challenges_count_failures_and_are_answered_once(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let challenge = |byte: u8, age_secs: i64| StoredChallenge {
        token_hash: [byte; 32],
        created_at: t - Duration::seconds(age_secs),
        expires_at: t + Duration::minutes(5),
        failures: 0,
    };
    let failures = |store: &DynStore, hash: [u8; 32]| {
        let store = store.clone();
        async move {
            store
                .mfa_challenge(user.id, Some(&hash))
                .await
                .unwrap()
                .map(|c| c.failures)
        }
    };
    store
        .put_mfa_challenge(user.id, &challenge(7, 10), 3)
        .await
        .unwrap();
    store
        .put_mfa_challenge(user.id, &challenge(8, 5), 3)
        .await
        .unwrap();
    // Found by its hash; without one, the newest.
    assert_eq!(
        store.mfa_challenge(user.id, Some(&[7; 32])).await.unwrap(),
        Some(challenge(7, 10))
    );
    assert_eq!(
        store.mfa_challenge(user.id, None).await.unwrap(),
        Some(challenge(8, 5))
    );
    assert_eq!(
        store.mfa_challenge(user.id, Some(&[1; 32])).await.unwrap(),
        None
    );

    // A hash that matches nothing counts nothing; the right one counts until the limit voids
    // it, and leaves the other challenge alone.
    assert_eq!(
        store.count_mfa_failure(user.id, &[1; 32], 3).await.unwrap(),
        0
    );
    assert_eq!(
        store.count_mfa_failure(user.id, &[7; 32], 3).await.unwrap(),
        1
    );
    assert_eq!(
        store.count_mfa_failure(user.id, &[7; 32], 3).await.unwrap(),
        2
    );
    assert_eq!(failures(&store, [7; 32]).await, Some(2));
    assert_eq!(
        store.count_mfa_failure(user.id, &[7; 32], 3).await.unwrap(),
        0
    );
    assert_eq!(failures(&store, [7; 32]).await, None);
    assert_eq!(failures(&store, [8; 32]).await, Some(0));

    // Taken once, and only with its own hash.
    assert!(!store.take_mfa_challenge(user.id, &[7; 32]).await.unwrap());
    assert!(store.take_mfa_challenge(user.id, &[8; 32]).await.unwrap());
    assert!(!store.take_mfa_challenge(user.id, &[8; 32]).await.unwrap());

    // At most `keep` pending: the oldest go.
    for (byte, age) in [(1, 40), (2, 30), (3, 20), (4, 10)] {
        store
            .put_mfa_challenge(user.id, &challenge(byte, age), 3)
            .await
            .unwrap();
    }
    assert_eq!(failures(&store, [1; 32]).await, None, "the oldest went");
    for byte in [2, 3, 4] {
        assert_eq!(failures(&store, [byte; 32]).await, Some(0));
    }
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
        .expire_sessions(t, t - Duration::minutes(15), &Origin::default())
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
            .expire_sessions(t, t - Duration::minutes(15), &Origin::default())
            .await
            .unwrap(),
        0,
        "idempotent"
    );
}

async fn live_sessions_are_counted_until_they_end(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    assert_eq!(store.count_live_sessions().await.unwrap(), 0);
    let kept = session(user.id, t, Duration::days(1));
    let logged_out = session(user.id, t, Duration::days(1));
    let past_its_end = session(user.id, t - Duration::days(2), Duration::days(1));
    for s in [&kept, &logged_out, &past_its_end] {
        store.insert_session(s).await.unwrap();
    }
    assert_eq!(store.count_live_sessions().await.unwrap(), 3);
    store
        .revoke_sessions(&[logged_out.id], &Revocation::new(t, RevokeReason::Logout))
        .await
        .unwrap();
    assert_eq!(store.count_live_sessions().await.unwrap(), 2);
    // Past its end but not yet swept: counted until the sweep ends it.
    store
        .expire_sessions(t, t - Duration::days(30), &Origin::default())
        .await
        .unwrap();
    assert_eq!(store.count_live_sessions().await.unwrap(), 1);
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

async fn a_rehash_replaces_only_the_hash_it_read(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let original = user.password_hash.clone();
    assert!(
        store
            .replace_password_hash(user.id, &original, "$scrypt$stronger")
            .await
            .unwrap()
    );
    // The password changed meanwhile: a rehash of the old one must not undo it.
    assert!(
        !store
            .replace_password_hash(user.id, &original, "$scrypt$stale")
            .await
            .unwrap()
    );
    let stored = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, "$scrypt$stronger");
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
    assert!(
        store
            .advance_totp_step(user.id, &sealed(1), 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_totp_step(user.id, &sealed(1), 100)
            .await
            .unwrap(),
        "same step twice"
    );
    assert!(
        !store
            .advance_totp_step(user.id, &sealed(1), 99)
            .await
            .unwrap(),
        "older step"
    );
    assert!(
        store
            .advance_totp_step(user.id, &sealed(1), 101)
            .await
            .unwrap()
    );
    let stored = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.totp_last_step, Some(101));
    assert!(
        !store
            .advance_totp_step(UserId::new(424_242), &sealed(1), 1)
            .await
            .unwrap(),
        "no such user"
    );
}

async fn ping_answers(subject: Subject) {
    subject.store.ping().await.unwrap();
    subject.store.close().await.unwrap();
}

async fn concurrent_failures_all_count(subject: Subject) {
    let store = subject.store;
    let rule = locked_after(1000);
    let t = now();
    let key = [9u8; 32];
    // Many first failures at once, for a key with no record yet: each counts.
    let attempts = (0..200).map(|_| store.record_failure(&key, &rule, t));
    for outcome in futures_util::future::join_all(attempts).await {
        outcome.expect("every attempt is recorded");
    }
    let record = store.failure_record(&key).await.unwrap().expect("a record");
    assert_eq!(record.failures, 200, "concurrent failures were lost");
}

/// Locks for a minute after `max_failures` within 15 minutes.
fn locked_after(max_failures: u32) -> FailureRule {
    FailureRule {
        max_failures,
        window: Duration::minutes(15),
        first_lockout: Duration::minutes(1),
        max_lockout: Duration::minutes(15),
    }
}

async fn failures_lock_an_account_key_and_clear_on_success(subject: Subject) {
    let store = subject.store;
    let rule = locked_after(3);
    let t = now();
    let key = [5u8; 32];
    assert_eq!(store.failure_record(&key).await.unwrap(), None);
    for expected in [1, 2] {
        let record = store.record_failure(&key, &rule, t).await.unwrap();
        assert_eq!((record.failures, record.locked_until), (expected, None));
    }
    let locked = store.record_failure(&key, &rule, t).await.unwrap();
    assert_eq!(locked.locked_until, Some(t + Duration::minutes(1)));
    assert_eq!(store.failure_record(&key).await.unwrap(), Some(locked));
    // Another key is another account.
    assert_eq!(store.failure_record(&[6u8; 32]).await.unwrap(), None);
    // Pruning keeps what was touched since the cutoff, and takes the rest.
    assert_eq!(
        store
            .prune_failures(t - Duration::minutes(1))
            .await
            .unwrap(),
        0
    );
    store.clear_failures(&key).await.unwrap();
    assert_eq!(store.failure_record(&key).await.unwrap(), None);
    store.record_failure(&key, &rule, t).await.unwrap();
    assert_eq!(
        store
            .prune_failures(t + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.failure_record(&key).await.unwrap(), None);
}

async fn a_password_step_reads_the_record_and_the_user_together(subject: Subject) {
    let store = subject.store;
    let rule = locked_after(3);
    let (key, t) = ([7u8; 32], now());
    let email = |e: &str| Email::parse(e).unwrap();
    // Neither, either, both: each as the two reads alone would say.
    assert_eq!(
        store
            .failure_record_and_user(&key, &email("ada@example.com"))
            .await
            .unwrap(),
        (None, None)
    );
    let user = ada(&store).await;
    let (record, found) = store
        .failure_record_and_user(&key, &email("ada@example.com"))
        .await
        .unwrap();
    assert_eq!((record, found.map(|u| u.id)), (None, Some(user.id)));
    let failed = store.record_failure(&key, &rule, t).await.unwrap();
    let (record, found) = store
        .failure_record_and_user(&key, &email("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(record, Some(failed));
    assert_eq!(found, store.user_by_email(&user.email).await.unwrap());
    assert_eq!(
        store
            .failure_record_and_user(&key, &email("nobody@example.com"))
            .await
            .unwrap(),
        (Some(failed), None)
    );
}

fn codes(seed: u8) -> Vec<HashedCode> {
    (0..10)
        .map(|id| HashedCode {
            id,
            salt: [seed; 16],
            hash: [seed.wrapping_add(id); 32],
        })
        .collect()
}

async fn kinds_of(store: &DynStore, user: UserId) -> Vec<(EventKind, Option<String>)> {
    let mut events = store.events_of(user, None, 100).await.unwrap();
    events.reverse();
    events
        .into_iter()
        .map(|e| (e.event.kind, e.event.reason))
        .collect()
}

async fn factor_changes_commit_with_their_sessions_and_event(subject: Subject) {
    let store = subject.store;
    let mut fresh = new_user("grace@example.com");
    fresh.mfa_enabled = false;
    fresh.totp_secret = None;
    let user = store.insert_user(fresh).await.unwrap();
    let t = now();
    let caller = session(user.id, t, Duration::hours(1));
    let other = session(user.id, t, Duration::hours(1));
    store.insert_session(&caller).await.unwrap();
    store.insert_session(&other).await.unwrap();
    let challenge = StoredChallenge {
        token_hash: [3; 32],
        created_at: t,
        expires_at: t + Duration::minutes(5),
        failures: 0,
    };
    store
        .put_mfa_challenge(user.id, &challenge, 3)
        .await
        .unwrap();

    let setup = event(user.id, EventKind::MfaSetupStarted, t);
    assert!(
        store
            .set_pending_totp(user.id, &sealed(7), &setup)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_pending_totp(UserId::new(424_242), &sealed(7), &setup)
            .await
            .unwrap()
    );
    let row = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(row.totp_pending, Some(sealed(7)));
    assert!(!row.mfa_enabled && row.totp_secret.is_none());

    let ended_by = Revocation::new(t, RevokeReason::MfaChanged);
    let enabled = event(user.id, EventKind::MfaEnabled, t);
    let stale = FactorChange::Enable {
        pending: sealed(8),
        step: 50,
        codes: codes(1),
    };
    assert_eq!(
        store
            .change_factor(user.id, &stale, caller.id, Some(&ended_by), &enabled)
            .await
            .unwrap(),
        FactorOutcome::Stale,
        "a pending secret replaced since"
    );
    let enable = FactorChange::Enable {
        pending: sealed(7),
        step: 50,
        codes: codes(1),
    };
    assert_eq!(
        store
            .change_factor(user.id, &enable, other.id, Some(&ended_by), &enabled)
            .await
            .unwrap(),
        FactorOutcome::Changed(vec![caller.id])
    );
    // That ended `caller` (it was the other one); now `other` is the caller's own.
    let row = store.user_by_id(user.id).await.unwrap().unwrap();
    assert!(row.mfa_enabled);
    assert_eq!(row.totp_secret, Some(sealed(7)));
    assert_eq!(row.totp_pending, None);
    assert_eq!(row.totp_last_step, Some(50));
    assert_eq!(
        store.unused_recovery_codes(user.id).await.unwrap(),
        codes(1)
    );
    assert_eq!(
        store.mfa_challenge(user.id, None).await.unwrap(),
        None,
        "voided"
    );
    let ended = store.session_by_id(caller.id).await.unwrap().unwrap();
    assert_eq!(ended.revoke_reason, Some(RevokeReason::MfaChanged));
    assert_eq!(
        store
            .change_factor(user.id, &FactorChange::Disable, caller.id, None, &enabled)
            .await
            .unwrap(),
        FactorOutcome::CallerEnded
    );

    let renewed = FactorChange::NewRecoveryCodes(codes(2));
    let regenerated = event(user.id, EventKind::RecoveryCodesRegenerated, t);
    assert_eq!(
        store
            .change_factor(user.id, &renewed, other.id, None, &regenerated)
            .await
            .unwrap(),
        FactorOutcome::Changed(vec![])
    );
    assert_eq!(
        store.unused_recovery_codes(user.id).await.unwrap(),
        codes(2)
    );
    let disabled = event(user.id, EventKind::MfaDisabled, t);
    assert_eq!(
        store
            .change_factor(user.id, &FactorChange::Disable, other.id, None, &disabled)
            .await
            .unwrap(),
        FactorOutcome::Changed(vec![])
    );
    let row = store.user_by_id(user.id).await.unwrap().unwrap();
    assert!(!row.mfa_enabled && row.totp_secret.is_none());
    assert!(
        store
            .unused_recovery_codes(user.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .change_factor(user.id, &FactorChange::Disable, other.id, None, &disabled)
            .await
            .unwrap(),
        FactorOutcome::Stale,
        "already off"
    );
    assert_eq!(
        kinds_of(&store, user.id).await,
        vec![
            (EventKind::MfaSetupStarted, None),
            (EventKind::SessionEnded, Some("mfa_changed".into())),
            (EventKind::MfaEnabled, None),
            (EventKind::RecoveryCodesRegenerated, None),
            (EventKind::MfaDisabled, None),
        ]
    );
}

async fn recovery_codes_are_spent_once(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let caller = session(user.id, t, Duration::hours(1));
    store.insert_session(&caller).await.unwrap();
    let change = FactorChange::NewRecoveryCodes(codes(4));
    let regenerated = event(user.id, EventKind::RecoveryCodesRegenerated, t);
    store
        .change_factor(user.id, &change, caller.id, None, &regenerated)
        .await
        .unwrap();
    let set = codes(4);
    assert!(
        store
            .spend_recovery_code(user.id, &set[2], t)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_recovery_code(user.id, &set[2], t)
            .await
            .unwrap(),
        "once"
    );
    let mut forged = set[3].clone();
    forged.hash = [0; 32];
    assert!(
        !store
            .spend_recovery_code(user.id, &forged, t)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_recovery_code(UserId::new(424_242), &set[3], t)
            .await
            .unwrap()
    );
    let unused = store.unused_recovery_codes(user.id).await.unwrap();
    assert_eq!(unused.len(), 9);
    assert!(!unused.contains(&set[2]));
    // A code of a replaced set no longer spends.
    store
        .change_factor(
            user.id,
            &FactorChange::NewRecoveryCodes(codes(5)),
            caller.id,
            None,
            &regenerated,
        )
        .await
        .unwrap();
    assert!(
        !store
            .spend_recovery_code(user.id, &set[3], t)
            .await
            .unwrap()
    );
}

async fn events_page_newest_first_and_are_pruned(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    for minutes in 0..5 {
        let mut e = event(
            user.id,
            EventKind::LoginFailed,
            t + Duration::minutes(minutes),
        );
        e.reason = Some(format!("attempt {minutes}"));
        e.origin = Origin {
            initiator: Initiator::User,
            node: Some("node-a".into()),
            ip: Some("192.0.2.7".into()),
            user_agent: Some("conformance/1.0".into()),
        };
        store.record_event(&e).await.unwrap();
    }
    let mut stranger = event(user.id, EventKind::LoginFailed, t);
    stranger.user_id = None;
    stranger.account_hash = Some([9; 32]);
    store.record_event(&stranger).await.unwrap();

    let all = store.events_of(user.id, None, 100).await.unwrap();
    assert_eq!(all.len(), 5, "only this user's");
    assert_eq!(all[0].event.reason.as_deref(), Some("attempt 4"));
    assert_eq!(all[0].event.origin.ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(all[0].event.origin.initiator, Initiator::User);
    assert_eq!(all[0].event.at, t + Duration::minutes(4));
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let page = store.events_of(user.id, None, 2).await.unwrap();
    assert_eq!(page, all[..2]);
    let next = store.events_of(user.id, Some(page[1].id), 2).await.unwrap();
    assert_eq!(next, all[2..4]);

    assert_eq!(
        store.prune_events(t + Duration::minutes(2)).await.unwrap(),
        3
    );
    assert_eq!(store.events_of(user.id, None, 100).await.unwrap(), all[..3]);
}

async fn every_ended_session_gets_one_event(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let a = session(user.id, t, Duration::hours(1));
    let b = session(user.id, t - Duration::hours(2), Duration::hours(1));
    let c = session(user.id, t - Duration::minutes(30), Duration::hours(1));
    for s in [&a, &b, &c] {
        store.insert_session(s).await.unwrap();
    }
    let logout = Revocation::new(t, RevokeReason::Logout).by(Origin {
        initiator: Initiator::Operator,
        node: Some("node-b".into()),
        ip: Some("192.0.2.8".into()),
        user_agent: None,
    });
    store.revoke_sessions(&[a.id], &logout).await.unwrap();
    store.revoke_sessions(&[a.id], &logout).await.unwrap();
    let origin = Origin {
        node: Some("node-c".into()),
        ..Origin::default()
    };
    assert_eq!(
        store
            .expire_sessions(t, t - Duration::minutes(15), &origin)
            .await
            .unwrap(),
        2
    );
    let events = store.events_of(user.id, None, 100).await.unwrap();
    let mut ended: Vec<(Option<SessionId>, Option<String>, Option<String>)> = events
        .iter()
        .map(|e| {
            assert_eq!(e.event.kind, EventKind::SessionEnded);
            let expected = if e.event.reason.as_deref() == Some("logout") {
                Initiator::Operator
            } else {
                Initiator::System
            };
            assert_eq!(e.event.origin.initiator, expected);
            (
                e.event.session_id,
                e.event.reason.clone(),
                e.event.origin.node.clone(),
            )
        })
        .collect();
    ended.sort_by_key(|(id, _, _)| id.map(|id| id.to_string()));
    let mut expected = vec![
        (
            Some(a.id),
            Some("logout".to_owned()),
            Some("node-b".to_owned()),
        ),
        (
            Some(b.id),
            Some("max_lifetime".to_owned()),
            Some("node-c".to_owned()),
        ),
        (
            Some(c.id),
            Some("idle_timeout".to_owned()),
            Some("node-c".to_owned()),
        ),
    ];
    expected.sort_by_key(|(id, _, _)| id.map(|id| id.to_string()));
    assert_eq!(ended, expected, "one each, the repeated logout not twice");
}

async fn reseal_moves_secrets_to_the_current_key(subject: Subject) {
    let store = subject.store;
    let old_key = finsec::crypto::generate_key().unwrap();
    let old = Keyring::new(&old_key, &[]).unwrap();
    // One user with a secret in force, one with a pending one.
    let mut with_secret = new_user("ada@example.com");
    with_secret.totp_secret = Some(old.seal(Purpose::Totp, b"JBSWY3DPEHPK3PXP").unwrap());
    let ada = store.insert_user(with_secret).await.unwrap();
    let mut enrolling = new_user("grace@example.com");
    enrolling.mfa_enabled = false;
    enrolling.totp_secret = None;
    let grace = store.insert_user(enrolling).await.unwrap();
    let setup = event(grace.id, EventKind::MfaSetupStarted, now());
    let pending = old.seal(Purpose::Totp, b"KRSXG5CTMVRXEZLU").unwrap();
    assert!(
        store
            .set_pending_totp(grace.id, &pending, &setup)
            .await
            .unwrap()
    );
    // Two-factor is on for Ada: no pending secret beside it.
    assert!(
        !store
            .set_pending_totp(ada.id, &pending, &setup)
            .await
            .unwrap()
    );

    let new = Keyring::new(&finsec::crypto::generate_key().unwrap(), &[old_key]).unwrap();
    assert_eq!(
        store.reseal_secrets(&new, true).await.unwrap(),
        0,
        "none in clear"
    );
    assert_eq!(store.reseal_secrets(&new, false).await.unwrap(), 2);
    assert_eq!(
        store.reseal_secrets(&new, false).await.unwrap(),
        0,
        "done already"
    );
    let secret = store
        .user_by_id(ada.id)
        .await
        .unwrap()
        .unwrap()
        .totp_secret
        .unwrap();
    let pending = store
        .user_by_id(grace.id)
        .await
        .unwrap()
        .unwrap()
        .totp_pending
        .unwrap();
    assert_eq!(secret.key_id, new.current_id());
    assert_eq!(pending.key_id, new.current_id());
    assert_eq!(
        new.open(Purpose::Totp, &secret).unwrap().as_slice(),
        b"JBSWY3DPEHPK3PXP"
    );
    assert_eq!(
        new.open(Purpose::Totp, &pending).unwrap().as_slice(),
        b"KRSXG5CTMVRXEZLU"
    );
}

async fn a_session_opens_only_if_the_account_is_as_the_login_saw_it(subject: Subject) {
    let store = subject.store;
    let user = ada(&store).await;
    let t = now();
    let open = |gate: LoginGate| {
        let store = store.clone();
        async move {
            let s = session(user.id, t, Duration::hours(1));
            store
                .open_session_within_limit(&s, 10, &gate, &login_event(&s))
                .await
                .unwrap()
                .map(|_| s.id)
        }
    };
    // Two-factor is on: a password-only login (checked before it was turned on) is refused.
    let password_only = LoginGate {
        mfa_enabled: false,
        password_hash: Some(user.password_hash.clone()),
    };
    assert_eq!(open(password_only).await, None);
    let stale_password = LoginGate {
        mfa_enabled: true,
        password_hash: Some("$scrypt$an-older-hash".into()),
    };
    assert_eq!(open(stale_password).await, None);
    let opened = open(LoginGate {
        mfa_enabled: true,
        password_hash: Some(user.password_hash.clone()),
    })
    .await
    .expect("the account is as the login saw it");
    assert!(store.session_by_id(opened).await.unwrap().is_some());
    let off = Revocation::new(t, RevokeReason::AccountDisabled);
    store
        .set_user_active(
            user.id,
            false,
            &off,
            &event(user.id, EventKind::AccountDeactivated, t),
        )
        .await
        .unwrap();
    assert_eq!(open(mfa_gate()).await, None, "deactivated");
    assert_eq!(store.live_sessions(user.id, t).await.unwrap(), vec![]);
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
    live_sessions_are_counted_until_they_end,
    password_hashes_can_be_replaced,
    duplicate_session_ids_conflict,
    a_session_needs_an_existing_user,
    totp_steps_only_move_forward,
    ping_answers,
    opening_past_the_limit_ends_the_least_recently_used,
    revoking_a_users_sessions_returns_what_it_ended,
    changing_the_password_ends_the_other_sessions_together,
    deactivation_ends_every_session,
    idle_ends_only_when_the_stored_activity_agrees,
    mfa_challenges_count_failures_and_are_answered_once,
    failures_lock_an_account_key_and_clear_on_success,
    concurrent_failures_all_count,
    a_password_step_reads_the_record_and_the_user_together,
    a_rehash_replaces_only_the_hash_it_read,
    factor_changes_commit_with_their_sessions_and_event,
    recovery_codes_are_spent_once,
    events_page_newest_first_and_are_pruned,
    every_ended_session_gets_one_event,
    reseal_moves_secrets_to_the_current_key,
    a_session_opens_only_if_the_account_is_as_the_login_saw_it,
);
