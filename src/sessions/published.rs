//! The read path beside the actors: what each user actor publishes so that validating a
//! token's session needs no message round trip.
//!
//! Every authenticated request asks "is this session live?". Asking the user's actor costs a
//! mailbox send, a task wake-up and a reply channel, which is most of what `/api/auth/me`
//! costs beyond the bare route. So the actor, still the single writer of its user's sessions,
//! publishes an immutable snapshot of what a validation reads (the live session ids with their
//! absolute ends, the user's profile, and the conditions under which its memory was trusted),
//! and request handlers answer from it. Activity goes the other way through an atomic
//! last-seen time per session ([`Activity`]), which the actor takes in before it handles any
//! message.
//!
//! The snapshot answers exactly what the actor would answer from memory, and is withdrawn
//! before that memory changes towards "refused":
//! - a session leaves the snapshot *before* its revocation is written to the store (the actor
//!   withdraws the publication in `forget`, as it drops the session from memory), so a
//!   revocation takes effect on the very next request, as before;
//! - another node's change is recorded in [`Residents`](super::Residents)' news before the bus
//!   confirms it, and a snapshot older than the news about its user is not used;
//! - a snapshot names the trust epoch it was published under (see `cluster::trust`): once
//!   this node loses trust, or regains it under a new epoch, no snapshot of an older one
//!   answers;
//! - the user's row is read again every `cluster.user_refresh`: an older snapshot is not used;
//! - during a database outage the snapshot answers for no longer than the actor would
//!   (`database.outage_grace`);
//! - a session idle or past its end by the snapshot's clock, or whose touch is due to be
//!   written, is handed to the actor, which ends it or writes the touch as it always did.
//!
//! Whatever the snapshot cannot answer, the actor answers; a snapshot is never the only
//! place a refusal lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::ActorId;

use super::messages::SessionGrant;
use crate::domain::{Session, SessionId, UserId, UserProfile};

/// One session's activity, shared by its actor and the readers of its snapshot: the newest
/// request time, and the newest time written to the store (touches are coalesced).
/// Microseconds since the epoch; `fetch_max` keeps the newest whoever writes.
#[derive(Debug)]
pub struct Activity {
    last_seen: AtomicI64,
    persisted: AtomicI64,
}

impl Activity {
    /// A session as the store has it: seen last when it was last written.
    pub fn stored(last_seen: DateTime<Utc>) -> Arc<Self> {
        let at = last_seen.timestamp_micros();
        Arc::new(Self {
            last_seen: AtomicI64::new(at),
            persisted: AtomicI64::new(at),
        })
    }

    pub fn last_seen(&self) -> DateTime<Utc> {
        from_micros(self.last_seen.load(Ordering::Relaxed))
    }

    pub fn see(&self, at: DateTime<Utc>) {
        self.last_seen
            .fetch_max(at.timestamp_micros(), Ordering::Relaxed);
    }

    pub fn persisted(&self) -> DateTime<Utc> {
        from_micros(self.persisted.load(Ordering::Relaxed))
    }

    pub fn persist(&self, at: DateTime<Utc>) {
        self.persisted
            .fetch_max(at.timestamp_micros(), Ordering::Relaxed);
    }
}

/// `at` to the microsecond: the resolution of the store and of [`Activity`].
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(at.timestamp_micros())
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What one user's actor published: everything a validation reads, as of one moment of the
/// actor's memory.
pub struct Publication {
    /// The actor that published it: a stopped actor's publication is withdrawn, never a
    /// successor's.
    pub publisher: ActorId,
    pub user: Arc<UserProfile>,
    /// When the user's row was read.
    pub user_read_at: DateTime<Utc>,
    /// The trust epoch the actor's memory was synced under.
    pub epoch: u64,
    /// `Residents::news_mark` when that memory was loaded.
    pub news_mark: u64,
    pub sessions: Box<[PublishedSession]>,
}

pub struct PublishedSession {
    pub session: Session,
    pub activity: Arc<Activity>,
}

/// What a snapshot must be checked against at the moment it is read.
pub struct ReadRules {
    /// The node's trust epoch now (`None`: memory may not answer).
    pub epoch: Option<u64>,
    pub idle_timeout: chrono::Duration,
    pub touch_interval: chrono::Duration,
    pub user_refresh: chrono::Duration,
}

/// The current publication of every user whose actor has one.
#[derive(Default)]
pub struct Publications {
    by_user: DashMap<UserId, Arc<Publication>>,
}

impl Publications {
    pub fn publish(&self, user: UserId, publication: Publication) {
        self.by_user.insert(user, Arc::new(publication));
    }

    /// The actor's own withdrawal, before its memory drops a session or the user changes.
    pub fn withdraw(&self, user: UserId) {
        self.by_user.remove(&user);
    }

    /// A stopped actor's publication goes with it (a successor's stays).
    pub fn withdraw_if_from(&self, user: UserId, publisher: ActorId) {
        self.by_user
            .remove_if(&user, |_, publication| publication.publisher == publisher);
    }

    pub fn current(&self, user: UserId) -> Option<Arc<Publication>> {
        self.by_user.get(&user).map(|entry| entry.value().clone())
    }

    pub(super) fn len(&self) -> usize {
        self.by_user.len()
    }
}

impl Publication {
    /// The grant the actor would give for `id` at `now`, when this snapshot alone may say so;
    /// `None` hands the request to the actor. `news_since` tells whether another node changed
    /// this user after `news_mark` (checked last: it is the one lookup in a shared map).
    pub fn grant(
        &self,
        id: SessionId,
        now: DateTime<Utc>,
        rules: &ReadRules,
        news_since: impl FnOnce(u64) -> bool,
    ) -> Option<SessionGrant> {
        if rules.epoch != Some(self.epoch) || now - self.user_read_at >= rules.user_refresh {
            return None;
        }
        let published = self.sessions.iter().find(|p| p.session.id == id)?;
        let activity = &published.activity;
        let mut session = published.session.clone();
        session.last_seen_at = activity.last_seen();
        if session.end_reason(now, rules.idle_timeout).is_some()
            || now - activity.persisted() >= rules.touch_interval
            || news_since(self.news_mark)
        {
            return None;
        }
        activity.see(now);
        session.last_seen_at = session.last_seen_at.max(now);
        Some(SessionGrant {
            session,
            user: self.user.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Device;

    fn minutes(n: i64) -> chrono::Duration {
        chrono::Duration::minutes(n)
    }

    fn now() -> DateTime<Utc> {
        to_micros(Utc::now())
    }

    fn rules(epoch: u64) -> ReadRules {
        ReadRules {
            epoch: Some(epoch),
            idle_timeout: minutes(15),
            touch_interval: minutes(1),
            user_refresh: minutes(5),
        }
    }

    /// One user with one session opened at `now`, published under epoch 3, news mark 10.
    fn published(now: DateTime<Utc>) -> (Publication, SessionId) {
        let user = UserId::new(7);
        let session = Session::open(user, Device::default(), now, minutes(60));
        let id = session.id;
        let profile = UserProfile {
            id: user,
            email: "john@example.com".into(),
            first_name: "John".into(),
            last_name: "Doe".into(),
            phone_number: None,
            mfa_enabled: false,
            is_active: true,
            created_at: now,
        };
        let activity = Activity::stored(now);
        let publication = Publication {
            publisher: ActorId::Local(1),
            user: Arc::new(profile),
            user_read_at: now,
            epoch: 3,
            news_mark: 10,
            sessions: vec![PublishedSession { session, activity }].into(),
        };
        (publication, id)
    }

    #[test]
    fn a_live_session_is_granted_and_its_activity_recorded() {
        let now = now();
        let (publication, id) = published(now);
        let later = now + chrono::Duration::seconds(30);
        let grant = publication
            .grant(id, later, &rules(3), |_| false)
            .expect("live, trusted, fresh: granted");
        assert_eq!(grant.session.id, id);
        assert_eq!(grant.session.last_seen_at, later);
        assert_eq!(grant.user.email, "john@example.com");
        // The actor takes this in before its next message.
        assert_eq!(publication.sessions[0].activity.last_seen(), later);
    }

    #[test]
    fn anything_the_snapshot_cannot_vouch_for_goes_to_the_actor() {
        let now = now();
        let (publication, id) = published(now);
        let soon = now + chrono::Duration::seconds(30);
        let no_news = |_: u64| false;
        // Another session id (perhaps opened on another node): the actor reads the store.
        assert!(
            publication
                .grant(SessionId::random(), soon, &rules(3), no_news)
                .is_none()
        );
        // Trust lost, or regained under another epoch.
        let untrusted = ReadRules {
            epoch: None,
            ..rules(3)
        };
        assert!(publication.grant(id, soon, &untrusted, no_news).is_none());
        assert!(publication.grant(id, soon, &rules(4), no_news).is_none());
        // Another node changed this user after the snapshot's memory was loaded.
        assert!(
            publication
                .grant(id, soon, &rules(3), |mark| mark == 10)
                .is_none()
        );
        // The user's row is due to be read again.
        assert!(
            publication
                .grant(id, now + minutes(5), &rules(3), no_news)
                .is_none()
        );
        // The touch is due to be written: the actor writes it.
        assert!(
            publication
                .grant(id, now + chrono::Duration::seconds(61), &rules(3), no_news)
                .is_none()
        );
        // None of the refusals recorded activity.
        assert_eq!(publication.sessions[0].activity.last_seen(), now);
    }

    #[test]
    fn an_idle_or_expired_session_goes_to_the_actor_which_ends_it() {
        let now = now();
        let (publication, id) = published(now);
        let lax = ReadRules {
            touch_interval: minutes(600),
            user_refresh: minutes(600),
            ..rules(3)
        };
        assert!(
            publication
                .grant(id, now + minutes(15), &lax, |_| false)
                .is_none()
        );
        // Kept alive by requests, it still ends at its absolute end.
        for at in (10..60).step_by(10) {
            assert!(
                publication
                    .grant(id, now + minutes(at), &lax, |_| false)
                    .is_some()
            );
        }
        assert!(
            publication
                .grant(id, now + minutes(60), &lax, |_| false)
                .is_none()
        );
    }

    #[test]
    fn a_stopped_actor_withdraws_only_its_own_publication() {
        let now = now();
        let publications = Publications::default();
        let (publication, _) = published(now);
        let user = publication.user.id;
        publications.publish(user, publication);
        publications.withdraw_if_from(user, ActorId::Local(2));
        assert!(publications.current(user).is_some(), "a successor's stays");
        publications.withdraw_if_from(user, ActorId::Local(1));
        assert!(publications.current(user).is_none());
    }
}
