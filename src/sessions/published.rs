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
//!
//! **Hibernation.** An actor with no message for `actors.idle_hibernate` stops and leaves its
//! publication behind, *hibernated* (no publisher): the user stays resident in a few hundred
//! bytes instead of an actor's ~11 KiB, and validations keep being answered from it. Nothing
//! can end a session without withdrawing it first: every write starts the user's actor, which
//! withdraws before its memory drops a session, and other nodes' news withdraws it on
//! arrival, and a write that reaches no actor withdraws it (`Registry::fail_closed`). The next
//! actor resumes from it (the sessions, their activity and the user's row the last actor
//! held) when its marks still hold, and reads nothing. The supervisor's tick drops a hibernated
//! publication once it can no longer answer, or once its user has been idle for
//! `actors.idle_passivate`. Nothing ticks a hibernated user's sessions: an expired one is
//! refused here by the snapshot's clock (handed to an actor, which ends it), and the database
//! sweep ends it in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::ActorId;

use super::messages::SessionGrant;
use crate::domain::{Session, SessionId, User, UserId, UserProfile};

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
    /// The actor that keeps it current, or the one that left it when it hibernated.
    pub publisher: Publisher,
    pub user: Arc<UserProfile>,
    /// When the user's row was read.
    pub user_read_at: DateTime<Utc>,
    /// The trust epoch the actor's memory was synced under.
    pub epoch: u64,
    /// `Residents::news_mark` when that memory was loaded.
    pub news_mark: u64,
    pub sessions: Box<[PublishedSession]>,
}

pub enum Publisher {
    /// A running actor: its publication goes when it stops, never a successor's.
    Actor(ActorId),
    /// An actor that stopped on purpose and left its publication to answer alone, with the
    /// user's row it held: the next actor resumes from both, and reads nothing.
    Hibernated { by: ActorId, user: Box<User> },
}

impl Publisher {
    pub fn is(&self, actor: ActorId) -> bool {
        matches!(self, Self::Actor(id) if *id == actor)
    }

    pub fn is_hibernated(&self) -> bool {
        matches!(self, Self::Hibernated { .. })
    }

    fn actor(&self) -> ActorId {
        match self {
            Self::Actor(id) | Self::Hibernated { by: id, .. } => *id,
        }
    }
}

#[derive(Clone)]
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

    /// A stopped actor's publication goes with it (a successor's, or one it left on purpose
    /// when it hibernated, stays).
    pub fn withdraw_if_from(&self, user: UserId, publisher: ActorId) {
        self.by_user
            .remove_if(&user, |_, publication| publication.publisher.is(publisher));
    }

    /// `publisher` is about to stop and leave its current publication to answer alone. False
    /// when it has none current (nothing to leave: it simply stops).
    pub fn hibernate(&self, user: &User, publisher: ActorId) -> bool {
        match self.by_user.get_mut(&user.id) {
            Some(mut current) if current.publisher.is(publisher) => {
                let hibernated = current.hibernated(user);
                *current = Arc::new(hibernated);
                true
            }
            _ => false,
        }
    }

    /// The publication a hibernated actor left for `user`, for its successor to resume from.
    pub fn hibernated(&self, user: UserId) -> Option<Arc<Publication>> {
        self.current(user).filter(|p| p.publisher.is_hibernated())
    }

    /// The hibernated publication of `user`, for a write that could not reach an actor: it
    /// may have been about to end what the publication grants, so memory stops vouching.
    pub fn withdraw_hibernated(&self, user: UserId) {
        self.by_user.remove_if(&user, |_, publication| {
            publication.publisher.is_hibernated()
        });
    }

    /// What a failed actor left when it hibernated (it may have failed while draining).
    /// Walks every publication: failures are rare.
    pub fn withdraw_left_by(&self, actor: ActorId) {
        self.by_user.retain(|_, publication| {
            !(publication.publisher.is_hibernated() && publication.publisher.actor() == actor)
        });
    }

    /// The hibernated publications, for the supervisor to judge outside the map's locks.
    pub fn all_hibernated(&self) -> Vec<(UserId, Arc<Publication>)> {
        self.by_user
            .iter()
            .filter(|entry| entry.value().publisher.is_hibernated())
            .map(|entry| (*entry.key(), entry.value().clone()))
            .collect()
    }

    /// Drops `publication` if it is still `user`'s current one.
    pub fn drop_if_current(&self, user: UserId, publication: &Arc<Publication>) -> bool {
        self.by_user
            .remove_if(&user, |_, current| Arc::ptr_eq(current, publication))
            .is_some()
    }

    pub fn current(&self, user: UserId) -> Option<Arc<Publication>> {
        self.by_user.get(&user).map(|entry| entry.value().clone())
    }

    pub(super) fn len(&self) -> usize {
        self.by_user.len()
    }
}

impl Publication {
    /// Requests it answered whose time is not yet written (touches are coalesced): the
    /// newest per session, for whoever drops it to write.
    pub fn unwritten_activity(&self) -> impl Iterator<Item = (SessionId, DateTime<Utc>)> + '_ {
        self.sessions.iter().filter_map(|p| {
            let seen = p.activity.last_seen();
            (seen > p.activity.persisted()).then_some((p.session.id, seen))
        })
    }

    /// The same snapshot, left by its actor with the user's row it held.
    fn hibernated(&self, user: &User) -> Self {
        Self {
            publisher: Publisher::Hibernated {
                by: self.publisher.actor(),
                user: Box::new(user.clone()),
            },
            user: self.user.clone(),
            user_read_at: self.user_read_at,
            epoch: self.epoch,
            news_mark: self.news_mark,
            sessions: self.sessions.clone(),
        }
    }

    /// The user's row its actor left with it, if it is hibernated.
    pub fn left_row(&self) -> Option<&User> {
        match &self.publisher {
            Publisher::Hibernated { user, .. } => Some(user),
            Publisher::Actor(_) => None,
        }
    }

    /// Whether the marks this snapshot was published under still hold: the node's trust
    /// epoch is the same, and no news about its user came since. Only then may it answer, or
    /// may a new actor resume from it.
    pub fn marks_hold(&self, epoch: Option<u64>, news_since: impl FnOnce(u64) -> bool) -> bool {
        epoch == Some(self.epoch) && !news_since(self.news_mark)
    }

    /// Whether a hibernated snapshot is worth its memory at `now`: its marks hold, some
    /// session is still live by its clock, and a request came within `idle_passivate`.
    pub fn worth_keeping(
        &self,
        now: DateTime<Utc>,
        rules: &ReadRules,
        idle_passivate: chrono::Duration,
        news_since: impl FnOnce(u64) -> bool,
    ) -> bool {
        let last_request = self.sessions.iter().map(|p| p.activity.last_seen()).max();
        let live = self.sessions.iter().any(|p| {
            let last_seen = p.session.last_seen_at.max(p.activity.last_seen());
            now < p.session.expires_at && now < last_seen + rules.idle_timeout
        });
        live && last_request.is_some_and(|at| now - at < idle_passivate)
            && self.marks_hold(rules.epoch, news_since)
    }

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

    /// John's row, as his actor holds it.
    fn john(now: DateTime<Utc>) -> User {
        User {
            id: UserId::new(7),
            email: crate::domain::Email::parse("john@example.com").unwrap(),
            password_hash: "$scrypt$…".into(),
            first_name: "John".into(),
            last_name: "Doe".into(),
            preferred_name: None,
            phone_number: None,
            address: None,
            is_active: true,
            mfa_enabled: false,
            totp_secret: None,
            totp_pending: None,
            totp_pending_at: None,
            totp_last_step: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// One user with one session opened at `now`, published under epoch 3, news mark 10.
    fn published(now: DateTime<Utc>) -> (Publication, SessionId) {
        let user = UserId::new(7);
        let session = Session::open(user, Device::default(), now, minutes(60));
        let id = session.id;
        let profile = UserProfile::from(&john(now));
        let activity = Activity::stored(now);
        let publication = Publication {
            publisher: Publisher::Actor(ActorId::Local(1)),
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
    fn a_hibernated_publication_answers_alone_and_outlives_its_actor() {
        let now = now();
        let publications = Publications::default();
        let (publication, id) = published(now);
        let user = publication.user.id;
        publications.publish(user, publication);
        let row = john(now);
        assert!(
            !publications.hibernate(&row, ActorId::Local(2)),
            "only its publisher may leave it"
        );
        assert!(publications.hibernated(user).is_none());
        assert!(publications.hibernate(&row, ActorId::Local(1)));
        // The actor stops: what it left stays, and answers as before.
        publications.withdraw_if_from(user, ActorId::Local(1));
        let hibernated = publications.hibernated(user).expect("left to answer");
        let soon = now + chrono::Duration::seconds(30);
        assert!(hibernated.grant(id, soon, &rules(3), |_| false).is_some());
        assert!(
            matches!(&hibernated.publisher, Publisher::Hibernated { user, .. } if **user == row),
            "the row travels with it, for the next actor"
        );
        // Anything that may refuse still withdraws it.
        publications.withdraw(user);
        assert!(publications.current(user).is_none());
        // So does the failure of the actor that left it, and only of that one.
        let (publication, _) = published(now);
        publications.publish(user, publication);
        assert!(publications.hibernate(&row, ActorId::Local(1)));
        publications.withdraw_left_by(ActorId::Local(2));
        assert!(publications.hibernated(user).is_some());
        publications.withdraw_left_by(ActorId::Local(1));
        assert!(publications.current(user).is_none());
    }

    #[test]
    fn a_hibernated_publication_is_dropped_once_it_cannot_answer_or_its_user_is_idle() {
        let now = now();
        let (publication, id) = published(now);
        let passivate = minutes(10);
        let soon = now + chrono::Duration::seconds(30);
        let no_news = |_: u64| false;
        assert!(publication.worth_keeping(soon, &rules(3), passivate, no_news));
        // Its marks no longer hold: another epoch, or news about its user.
        assert!(!publication.worth_keeping(soon, &rules(4), passivate, no_news));
        assert!(!publication.worth_keeping(soon, &rules(3), passivate, |m| m == 10));
        // Every session idle by its clock.
        let lax = ReadRules {
            idle_timeout: minutes(5),
            ..rules(3)
        };
        assert!(!publication.worth_keeping(now + minutes(5), &lax, minutes(60), no_news));
        // Its user idle for idle_passivate, though a session would still be live.
        assert!(!publication.worth_keeping(now + minutes(10), &rules(3), passivate, no_news));
        // Requests it answered move that on, and are handed over unwritten when it goes.
        assert_eq!(publication.unwritten_activity().count(), 0);
        let answered = now + minutes(9);
        let touch_later = ReadRules {
            touch_interval: minutes(60),
            user_refresh: minutes(60),
            ..rules(3)
        };
        assert!(
            publication
                .grant(id, answered, &touch_later, no_news)
                .is_some()
        );
        assert!(publication.worth_keeping(now + minutes(10), &rules(3), passivate, no_news));
        let unwritten: Vec<_> = publication.unwritten_activity().collect();
        assert_eq!(unwritten, vec![(id, answered)]);

        let publications = Publications::default();
        let user = publication.user.id;
        publications.publish(user, publication);
        assert!(
            publications.all_hibernated().is_empty(),
            "a running actor's publication is its own to withdraw"
        );
        assert!(publications.hibernate(&john(now), ActorId::Local(1)));
        let hibernated = publications.all_hibernated();
        assert_eq!(hibernated.len(), 1);
        let (_, candidate) = &hibernated[0];
        // Replaced meanwhile (an actor resumed and published): the new one stays.
        let (newer, _) = published(now);
        publications.publish(user, newer);
        assert!(!publications.drop_if_current(user, candidate));
        let current = publications.current(user).expect("the newer one stays");
        assert!(publications.drop_if_current(user, &current));
        assert!(publications.current(user).is_none());
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
