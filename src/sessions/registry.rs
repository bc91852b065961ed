//! Which user actors are resident: user id → `ActorRef`, spawning an actor on first use.
//!
//! Race-free get-or-spawn: each user's entry is a `OnceCell` created under the dashmap entry
//! lock, and the (async) spawn runs inside `get_or_try_init` after the lock is released. Two
//! concurrent first requests for one user share one cell, so exactly one actor is spawned and
//! both get it; requests for other users never wait on it. Actors are unnamed: ractor names
//! are global, and a name would only add a second way for two spawns to collide.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorRef, MessagingErr, SpawnErr};
use tokio::sync::OnceCell;

use super::SessionError;
use super::messages::{FreshRow, ReadMarks, Reply, SessionGrant, UserMsg};
use super::published::{Publications, ReadRules, to_micros};
use super::user_actor::{SessionPolicy, StartError, UserActor, UserActorArgs};
use crate::cluster::Cluster;
use crate::domain::{SessionId, UserId};
use crate::store::DynStore;

/// The resident actors, shared by the registry (which adds), the supervisor (which removes
/// an actor when it stops or fails) and the bus (which tells them of other nodes' changes).
#[derive(Default)]
pub struct Residents {
    by_user: DashMap<UserId, Arc<OnceCell<ActorRef<UserMsg>>>>,
    by_actor: DashMap<ActorId, UserId>,
    /// Users changed by another node lately, with the sessions it ended. An actor that was
    /// loading from the store when the news came may have read the state before the change,
    /// and missed the news in its mailbox: before it answers from memory it looks here.
    recent: DashMap<UserId, RecentChange>,
    /// Numbers the news; an actor remembers the number that was next when it loaded.
    next_news: AtomicU64,
    /// What each actor published for the read path (`sessions::published`).
    pub(super) publications: Publications,
}

struct RecentChange {
    at: Instant,
    number: u64,
    ended: VecDeque<SessionId>,
}

/// Ended ids kept per user for `recently_ended` (a hint check; the store is the truth).
const RECENT_ENDED: usize = 64;

impl Residents {
    /// Drops a stopped or failed actor. Only that actor's entry goes: if the user already has
    /// a newer actor, it stays.
    pub fn forget(&self, actor: ActorId) -> Option<UserId> {
        let (_, user) = self.by_actor.remove(&actor)?;
        self.publications.withdraw_if_from(user, actor);
        self.by_user.remove_if(&user, |_, cell| {
            cell.get().map(|a| a.get_id()) == Some(actor)
        });
        Some(user)
    }

    pub fn len(&self) -> usize {
        self.by_actor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_actor.is_empty()
    }

    /// The running actors of the users whose id is `slice` modulo `slices` (for the
    /// supervisor's ticks).
    pub fn actors_in_slice(&self, slice: u32, slices: u32) -> Vec<ActorRef<UserMsg>> {
        self.by_user
            .iter()
            .filter(|entry| in_slice(*entry.key(), slice, slices))
            .filter_map(|entry| entry.value().get().cloned())
            .collect()
    }

    pub(super) fn actor_of(&self, user: UserId) -> Option<ActorRef<UserMsg>> {
        self.by_user.get(&user).and_then(|cell| cell.get().cloned())
    }

    /// Leaves no empty cell behind for a user id that failed to load (it may not exist at all:
    /// an attacker's guess must not grow the map), unless another request holds the cell: it
    /// is waiting to try the start itself, and an actor it starts in a cell the map no longer
    /// holds would be an orphan, answering and publishing beside the user's registered actor,
    /// where no tick, news or revocation reaches it. Clones of a cell are taken only under the
    /// map's lock, as this check runs, so the count cannot grow while it is read.
    pub(super) fn drop_failed_cell(&self, user: UserId, cell: &Arc<OnceCell<ActorRef<UserMsg>>>) {
        self.by_user.remove_if(&user, |_, held| {
            Arc::ptr_eq(held, cell) && held.get().is_none() && Arc::strong_count(held) == 2
        });
    }

    /// True when `actor` is the one the registry routes `user`'s requests to.
    pub(super) fn is_registered(&self, user: UserId, actor: ActorId) -> bool {
        self.actor_of(user).is_some_and(|a| a.get_id() == actor)
    }

    /// Records another node's change to `user`, before the news is cast to its actor.
    pub(super) fn note_change(&self, user: UserId, ended: &[SessionId]) {
        let number = self.next_news.fetch_add(1, Ordering::SeqCst);
        let mut entry = self.recent.entry(user).or_insert_with(|| RecentChange {
            at: Instant::now(),
            number,
            ended: VecDeque::new(),
        });
        entry.at = Instant::now();
        entry.number = number;
        entry.ended.extend(ended);
        while entry.ended.len() > RECENT_ENDED {
            entry.ended.pop_front();
        }
        // The news is recorded; its guard goes before the publications are touched, so no
        // thread ever holds one map's lock while it waits for the other's.
        drop(entry);
        // Readers would skip the publication anyway (it predates this news); it goes now.
        self.publications.withdraw(user);
    }

    /// The number the next news will get: an actor reads it before it loads from the store.
    pub fn news_mark(&self) -> u64 {
        self.next_news.load(Ordering::SeqCst)
    }

    /// True when news about `user` arrived since `mark` was read: memory loaded before then
    /// may predate the change.
    pub fn news_since(&self, user: UserId, mark: u64) -> bool {
        self.recent
            .get(&user)
            .is_some_and(|change| change.number >= mark)
    }

    /// True when another node ended `session` lately (an announcement of it may arrive late).
    pub fn recently_ended(&self, user: UserId, session: SessionId) -> bool {
        self.recent
            .get(&user)
            .is_some_and(|change| change.ended.contains(&session))
    }

    /// The answer `user`'s actor has published for `session` at `now`, if its publication
    /// alone may give it (see `sessions::published`); `None` means: ask the actor.
    pub fn published_grant(
        &self,
        user: UserId,
        session: SessionId,
        now: chrono::DateTime<chrono::Utc>,
        rules: &ReadRules,
    ) -> Option<SessionGrant> {
        let publication = self.publications.current(user)?;
        publication.grant(session, now, rules, |mark| self.news_since(user, mark))
    }

    /// How many users have a publication (diagnostics and tests).
    pub fn published_count(&self) -> usize {
        self.publications.len()
    }

    /// Drops the hibernated publications that can no longer answer or whose users have been
    /// idle for `idle_passivate` (the supervisor's tick; memory only). Returns how many stay,
    /// and the activity the dropped ones held that is not yet written.
    pub(super) fn prune_hibernated(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        rules: &ReadRules,
        idle_passivate: chrono::Duration,
    ) -> (usize, Vec<(SessionId, chrono::DateTime<chrono::Utc>)>) {
        // Judged outside the map's locks: `news_since` reads the news map, whose writer
        // (`note_change`) withdraws publications; nesting the two would invite a deadlock.
        let (mut left, mut unwritten) = (0, Vec::new());
        for (user, publication) in self.publications.all_hibernated() {
            if publication.worth_keeping(now, rules, idle_passivate, |mark| {
                self.news_since(user, mark)
            }) {
                left += 1;
            } else if self.publications.drop_if_current(user, &publication) {
                unwritten.extend(publication.unwritten_activity());
            }
        }
        (left, unwritten)
    }

    /// Forgets news older than `age` (the supervisor's sweep). Every actor looks at the news
    /// at least once per tick, far more often than this.
    pub fn prune_recent(&self, age: Duration) {
        self.recent.retain(|_, change| change.at.elapsed() < age);
    }
}

pub struct Registry {
    residents: Arc<Residents>,
    supervisor: ActorCell,
    store: DynStore,
    policy: Arc<SessionPolicy>,
    cluster: Cluster,
    call_timeout: Duration,
}

impl Registry {
    pub fn new(
        residents: Arc<Residents>,
        supervisor: ActorCell,
        store: DynStore,
        policy: Arc<SessionPolicy>,
        cluster: Cluster,
        call_timeout: Duration,
    ) -> Self {
        Self {
            residents,
            supervisor,
            store,
            policy,
            cluster,
            call_timeout,
        }
    }

    /// Asks `user`'s actor a question and waits at most the configured call timeout.
    ///
    /// If the actor stopped taking messages after we looked it up (it crashed, or it is
    /// passivating and draining its queue), we wait for it to exit, forget it, and ask once
    /// more of a fresh actor loaded from the store. Waiting first matters: a draining actor
    /// may still be writing, and its successor must load what it wrote. If the actor died
    /// while handling our question, we do not ask again: the write may or may not have
    /// happened, and the caller hears 503.
    pub async fn ask<T: Send + 'static>(
        &self,
        user: UserId,
        question: impl Fn(Reply<T>) -> UserMsg,
    ) -> Result<T, SessionError> {
        self.ask_from(user, None, question).await
    }

    /// Marks to take before reading a user's row that will seed an actor's memory.
    pub fn marks(&self) -> ReadMarks {
        ReadMarks {
            trust_epoch: self.cluster.trust_epoch(),
            news: self.residents.news_mark(),
        }
    }

    /// [`Registry::ask`] for a caller that has just read the user's row (a login, after the
    /// password check): an actor started for the question starts from `row`, under the
    /// marks taken before it was read, instead of reading it again (one statement of a first
    /// login's eleven). News that arrived since then makes the actor reload, as for any row.
    pub async fn ask_having_read<T: Send + 'static>(
        &self,
        row: &FreshRow,
        question: impl Fn(Reply<T>) -> UserMsg,
    ) -> Result<T, SessionError> {
        self.ask_from(row.user.id, Some(row), question).await
    }

    async fn ask_from<T: Send + 'static>(
        &self,
        user: UserId,
        row: Option<&FreshRow>,
        question: impl Fn(Reply<T>) -> UserMsg,
    ) -> Result<T, SessionError> {
        match self.call(user, row, &question).await {
            Ok(answer) => answer,
            Err(unanswered) => {
                self.fail_closed(user, &question);
                Err(unanswered)
            }
        }
    }

    /// A question that may end sessions and reached no actor (its start failed, or the one
    /// draining was slow to stop): the user's hibernated publication may grant what the caller
    /// was ending, and the caller hears 503, so memory stops vouching for the user until an
    /// actor answers again. The question is built once more, with a port nobody reads, to be
    /// asked what it is.
    fn fail_closed<T>(&self, user: UserId, question: &impl Fn(Reply<T>) -> UserMsg) {
        let publications = &self.residents.publications;
        if publications.hibernated(user).is_some() {
            let (port, _) = ractor::concurrency::oneshot();
            if question(port.into()).may_end_sessions() {
                publications.withdraw_hibernated(user);
            }
        }
    }

    /// Asks the user's actor; the outer `Err` means no actor answered.
    async fn call<T: Send + 'static>(
        &self,
        user: UserId,
        row: Option<&FreshRow>,
        question: &impl Fn(Reply<T>) -> UserMsg,
    ) -> Result<Result<T, SessionError>, SessionError> {
        for _ in 0..2 {
            let actor = self.actor_for(user, row).await?;
            let started = std::time::Instant::now();
            let answer = actor.call(question, Some(self.call_timeout)).await;
            metrics::histogram!("finsec_actor_call_duration_seconds")
                .record(crate::metrics::seconds(started.elapsed()));
            match answer {
                Ok(CallResult::Success(answer)) => return Ok(answer),
                Ok(CallResult::Timeout) => {
                    return Err(SessionError::Unavailable("user actor timed out".into()));
                }
                Ok(CallResult::SenderError) => {
                    return Err(SessionError::Unavailable(
                        "user actor stopped mid-request".into(),
                    ));
                }
                Err(MessagingErr::SendErr(_) | MessagingErr::ChannelClosed) => {
                    if actor
                        .get_cell()
                        .wait(Some(self.call_timeout))
                        .await
                        .is_err()
                    {
                        return Err(SessionError::Unavailable(
                            "user actor is slow to stop".into(),
                        ));
                    }
                    self.residents.forget(actor.get_id());
                }
                Err(other) => return Err(SessionError::Unavailable(other.to_string())),
            }
        }
        Err(SessionError::Unavailable(
            "user actor keeps stopping".into(),
        ))
    }

    /// Validates `session` from its actor's publication, without a message, when that may
    /// answer (see `sessions::published`); `None` means: ask the actor.
    pub fn validate_published(&self, user: UserId, session: SessionId) -> Option<SessionGrant> {
        self.policy.memory_may_answer().ok()?;
        let rules = ReadRules {
            epoch: self.cluster.trust_epoch(),
            idle_timeout: self.policy.idle_timeout,
            touch_interval: self.policy.touch_interval,
            user_refresh: self.policy.user_refresh,
        };
        self.residents
            .published_grant(user, session, to_micros(chrono::Utc::now()), &rules)
    }

    /// How many users' actors have published for the read path on this node.
    pub fn published_count(&self) -> usize {
        self.residents.published_count()
    }

    /// Whether `user`'s actor hibernated and left its publication to answer alone.
    pub fn is_hibernated(&self, user: UserId) -> bool {
        self.residents.publications.hibernated(user).is_some()
    }

    /// How many user actors are resident on this node.
    pub fn resident_count(&self) -> usize {
        self.residents.len()
    }

    /// The user's resident actor, if any, without spawning one.
    pub fn resident(&self, user: UserId) -> Option<ActorRef<UserMsg>> {
        self.residents.actor_of(user)
    }

    async fn actor_for(
        &self,
        user: UserId,
        row: Option<&FreshRow>,
    ) -> Result<ActorRef<UserMsg>, SessionError> {
        // The entry guard is dropped at the end of this statement: never held across `.await`.
        let cell = self.residents.by_user.entry(user).or_default().clone();
        match cell
            .get_or_try_init(|| self.spawn(user, row.cloned()))
            .await
        {
            Ok(actor) => Ok(actor.clone()),
            Err(err) => {
                self.residents.drop_failed_cell(user, &cell);
                Err(err)
            }
        }
    }

    async fn spawn(
        &self,
        user: UserId,
        row: Option<FreshRow>,
    ) -> Result<ActorRef<UserMsg>, SessionError> {
        let args = UserActorArgs {
            user_id: user,
            row,
            store: self.store.clone(),
            policy: self.policy.clone(),
            cluster: self.cluster.clone(),
            residents: self.residents.clone(),
        };
        let (actor, _handle) = Actor::spawn_linked(None, UserActor, args, self.supervisor.clone())
            .await
            .map_err(start_error)?;
        self.residents.by_actor.insert(actor.get_id(), user);
        Ok(actor)
    }
}

/// Whether `user` belongs to `slice` of `slices` (the supervisor ticks one at a time).
fn in_slice(user: UserId, slice: u32, slices: u32) -> bool {
    user.get() % u64::from(slices) == u64::from(slice)
}

fn start_error(err: SpawnErr) -> SessionError {
    if let SpawnErr::StartupFailed(cause) = &err {
        match cause.downcast_ref::<StartError>() {
            Some(StartError::UnknownUser) => return SessionError::UnknownUser,
            Some(StartError::Store(store)) => {
                return SessionError::Unavailable(format!("loading user failed: {store}"));
            }
            None => {}
        }
    }
    SessionError::Unavailable(format!("user actor failed to start: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_is_in_exactly_one_tick_slice() {
        for id in 1..=1000 {
            let slices = (0..10).filter(|slice| in_slice(UserId::new(id), *slice, 10));
            assert_eq!(slices.count(), 1, "user {id}");
        }
        assert!(in_slice(UserId::new(10), 0, 10) && in_slice(UserId::new(13), 3, 10));
    }

    /// Two first requests for one user share a cell; the first one's start fails while the
    /// second waits to try its own. Removing the cell then would leave the second's actor
    /// outside the map: an orphan that keeps answering from memory no revocation reaches.
    #[test]
    fn a_failed_start_keeps_the_cell_another_request_is_waiting_on() {
        let residents = Residents::default();
        let user = UserId::new(7);
        let first = residents.by_user.entry(user).or_default().clone();
        let waiting = residents.by_user.entry(user).or_default().clone();
        residents.drop_failed_cell(user, &first);
        assert!(
            residents.by_user.contains_key(&user),
            "the waiting request's cell was dropped"
        );
        drop(waiting);
        residents.drop_failed_cell(user, &first);
        assert!(
            !residents.by_user.contains_key(&user),
            "an empty cell nobody waits on is not dropped"
        );
    }
}
