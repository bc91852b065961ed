//! One actor per active user on this node: the owner of that user's live sessions (all
//! devices) in this process. Because one actor handles one message at a time, its memory
//! never races with itself; rules that must also hold across nodes ("at most N sessions", "a
//! TOTP step is spent once", "five wrong codes void the challenge") are enforced in the store,
//! with transactions and conditional updates.
//!
//! Memory is a cache of the store that may be *incomplete* but never *permissive*:
//! - a session id the actor does not know is looked up in the store before it is refused
//!   (another node may have opened it), and a refused id is remembered in a small cache;
//! - a session ended anywhere leaves this memory before the ending node answers (the bus,
//!   see `cluster`); while this node cannot prove that it hears the bus, every validation
//!   reads the store instead, and memory loaded before trust was regained is reloaded.
//!
//! The write path is one readable sequence in each handler: validate → write to the store →
//! on success change memory → reply. Ending sessions is the one exception; see
//! [`UserState::end_sessions`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sha2::{Digest, Sha256};

use super::SessionError;
use super::journal::Journal;
use super::messages::{
    FactorRequest, FreshRow, LoginStep, MfaAttempt, Opened, ReadMarks, SecondFactor, SessionGrant,
    UserMsg,
};
use super::published::{Activity, Publication, PublishedSession, Publisher};
use super::registry::Residents;
use super::throttle::{Standing, Throttle};
use crate::auth::totp::TotpCode;
use crate::auth::{AuthError, recovery};
use crate::cluster::Cluster;
use crate::crypto::{Keyring, Purpose};
use crate::domain::{
    AuthEvent, Device, EventKind, Initiator, Origin, Revocation, RevokeReason, SealedSecret,
    Session, SessionId, User, UserId, UserProfile,
};
use crate::store::{
    DynStore, FactorChange, FactorOutcome, LoginGate, Reachability, StoreError, StoredChallenge,
};

/// The rules the session actors apply, from config; shared by all of them.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    pub max_lifetime: chrono::Duration,
    pub idle_timeout: chrono::Duration,
    /// Activity is persisted at most this often per session.
    pub touch_interval: chrono::Duration,
    pub max_per_user: usize,
    pub mfa_challenge_ttl: chrono::Duration,
    pub mfa_max_attempts: u32,
    pub revoke_retry: Duration,
    pub idle_passivate: chrono::Duration,
    /// An actor with no message this long hibernates: it stops and its publication stays.
    pub idle_hibernate: chrono::Duration,
    pub sweep_interval: Duration,
    pub retention: chrono::Duration,
    /// The user's row is read again when the actor's copy is older than this.
    pub user_refresh: chrono::Duration,
    /// Brute force: failures per account, lockouts.
    pub throttle: Arc<Throttle>,
    /// Seals and opens second-factor secrets.
    pub keyring: Arc<Keyring>,
    /// TOTP steps accepted either side of the current one (`auth.totp_skew_steps`).
    pub totp_skew: u8,
    /// Audit events older than this are pruned by the sweep (`audit.retention`).
    pub audit_retention: chrono::Duration,
    /// This node, as the audit trail names it.
    pub node_id: String,
    /// Revocations in force whose write has not committed yet (see `sessions::journal`).
    pub journal: Journal,
    /// How long memory may answer while MySQL is silent; `None` for the embedded store.
    pub outage: Option<OutageGrace>,
}

/// A database outage: sessions already live keep validating from memory for `grace` after the
/// database last answered, then every validation fails closed (503) until it answers again.
/// Memory may have missed a change made meanwhile (by an operator in SQL, say), so the time
/// it is trusted alone is bounded.
#[derive(Debug, Clone)]
pub struct OutageGrace {
    pub reachability: Arc<Reachability>,
    pub grace: Duration,
}

impl SessionPolicy {
    /// `Err` (503) once the database has been silent longer than the outage grace.
    pub(super) fn memory_may_answer(&self) -> Result<(), SessionError> {
        match &self.outage {
            Some(outage) if outage.reachability.silent_for() > outage.grace => {
                Err(SessionError::Store(StoreError::Unavailable(
                    format!(
                        "the database has not answered for longer than database.outage_grace ({:?})",
                        outage.grace
                    )
                    .into(),
                )))
            }
            _ => Ok(()),
        }
    }
}

impl SessionPolicy {
    /// A change this node makes on its own (expiry).
    pub fn node_origin(&self) -> Origin {
        Origin {
            initiator: Initiator::System,
            node: Some(self.node_id.clone()),
            ..Origin::default()
        }
    }

    /// A change a client asked for from `device`, made on this node.
    pub fn origin(&self, device: &Device) -> Origin {
        Origin {
            initiator: Initiator::User,
            node: Some(self.node_id.clone()),
            ip: device.ip.clone(),
            user_agent: device.user_agent.clone(),
        }
    }

    /// A change an operator asked for (the admin API) from `device`.
    pub fn operator_origin(&self, device: &Device) -> Origin {
        Origin {
            initiator: Initiator::Operator,
            ..self.origin(device)
        }
    }
}

/// Pending MFA challenges kept per user (one per password step: a login on the phone and one
/// on the laptop may overlap); older ones are dropped.
const PENDING_CHALLENGES: usize = 3;

/// A pending two-factor setup must be enabled within this long, or set up again: a secret
/// shown once should not wait indefinitely for whoever holds a session to confirm it.
const PENDING_SETUP_TTL: chrono::Duration = chrono::Duration::minutes(15);

/// How many refused session ids each actor remembers, so a replayed dead token costs no read.
const REFUSED_CACHE: usize = 32;

/// A session announced by another node older than this is not adopted: it may have ended
/// since, and the store will say so on first use.
const ADOPT_WINDOW: chrono::Duration = chrono::Duration::seconds(30);

pub struct UserActor;

pub struct UserActorArgs {
    pub user_id: UserId,
    /// The user's row when the caller has just read it ([`super::Registry::ask_having_read`]).
    pub row: Option<FreshRow>,
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
    pub cluster: Cluster,
    pub residents: Arc<Residents>,
}

pub struct UserState {
    myself: ActorRef<UserMsg>,
    user: User,
    /// When `user` was read from the store.
    user_read_at: DateTime<Utc>,
    sessions: HashMap<SessionId, LiveSession>,
    /// Started for a login, which reads the user's live sessions under its lock anyway
    /// (`LoginCommit::live`): `sessions` is empty until that read (or, when the login opens
    /// no session, a read right after it; or any message that comes first), and nothing is
    /// published meanwhile. Stays true only while those reads fail (the store down).
    sessions_unread: bool,
    refused: RefusedIds,
    /// The trust epoch this memory was loaded under; `None` when loaded while untrusted.
    synced_epoch: Option<u64>,
    /// `Residents::news_mark` when this memory was loaded: later news about this user that
    /// the mailbox may not have carried (it came while we were loading) means reload.
    news_mark: u64,
    /// The last message from a client (not a timer tick): hibernation counts from here, and
    /// passivation from here or the newest request the publication answered.
    last_activity: DateTime<Utc>,
    /// `user` as the API shows it, shared with the publication and every grant.
    profile: Arc<UserProfile>,
    /// Passivating or hibernating: answers what is queued, publishes nothing more.
    draining: bool,
    /// Stopping on purpose with its publication left to answer alone (see
    /// `sessions::published`): whatever may refuse withdraws it, nothing replaces it.
    hibernating: bool,
    store: DynStore,
    policy: Arc<SessionPolicy>,
    cluster: Cluster,
    residents: Arc<Residents>,
}

/// A session and its activity: the newest request time (readers of the publication move it
/// too) and the newest one written to the store (touches are coalesced).
struct LiveSession {
    session: Session,
    activity: Arc<Activity>,
}

impl LiveSession {
    fn from_store(session: Session) -> Self {
        let activity = Activity::stored(session.last_seen_at);
        Self { session, activity }
    }

    /// A session a hibernated publication held: the same activity, which its readers kept
    /// moving, so no request they answered is lost.
    fn resumed(published: &PublishedSession) -> Self {
        let mut live = Self {
            session: published.session.clone(),
            activity: published.activity.clone(),
        };
        live.absorb();
        live
    }

    /// Takes in the requests the publication answered since the actor last looked.
    fn absorb(&mut self) {
        self.session.last_seen_at = self.session.last_seen_at.max(self.activity.last_seen());
    }

    fn see(&mut self, at: DateTime<Utc>) {
        self.session.last_seen_at = self.session.last_seen_at.max(at);
        self.activity.see(at);
    }
}

/// The newest refused ids, bounded.
#[derive(Default)]
struct RefusedIds {
    order: VecDeque<SessionId>,
    set: HashSet<SessionId>,
}

impl RefusedIds {
    fn insert(&mut self, id: SessionId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > REFUSED_CACHE
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &SessionId) -> bool {
        self.set.contains(id)
    }
}

/// Why an actor could not start; the registry turns it back into a [`SessionError`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no such user")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = UserState;
    type Arguments = UserActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UserActorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let residents = &args.residents;
        // A hibernated publication whose marks still hold is this user's sessions as memory
        // last knew them, never permissive (see `sessions::published`), with the row the
        // actor that left it held: resuming from it reads nothing, so a user resumes in a
        // database outage as a resident actor would have answered.
        let resumable = residents
            .publications
            .hibernated(args.user_id)
            .filter(|p| {
                p.marks_hold(args.cluster.trust_epoch(), |mark| {
                    residents.news_since(args.user_id, mark)
                })
            })
            .and_then(|p| Some((p.left_row()?.clone(), p)));
        let now = Utc::now();
        let (user, user_read_at, marks, resumed, loaded) = match (args.row, resumable) {
            // Read by the login before these marks would be taken here: its own marks, taken
            // before its read, say which news it may predate. Of the two news marks, the
            // older is kept.
            (Some(row), resumable) => {
                let resumed = resumable
                    .map(|(_, p)| p)
                    .filter(|p| row.marks.trust_epoch == Some(p.epoch));
                let marks = ReadMarks {
                    news: resumed
                        .as_ref()
                        .map_or(row.marks.news, |p| row.marks.news.min(p.news_mark)),
                    ..row.marks
                };
                (row.user, now, marks, resumed, None)
            }
            (None, Some((user, publication))) => {
                let marks = ReadMarks {
                    trust_epoch: Some(publication.epoch),
                    news: publication.news_mark,
                };
                (
                    user,
                    publication.user_read_at,
                    marks,
                    Some(publication),
                    None,
                )
            }
            // The epoch is read before the store: if trust is lost and regained during the
            // load, the epoch moves and the next request reloads.
            (None, None) => {
                let marks = ReadMarks {
                    trust_epoch: args.cluster.trust_epoch(),
                    news: residents.news_mark(),
                };
                let (user, sessions) = args
                    .store
                    .user_and_live_sessions(args.user_id, now)
                    .await
                    .map_err(StartError::from)?
                    .ok_or(StartError::UnknownUser)?;
                (user, now, marks, None, Some(sessions))
            }
        };
        // Neither resumed nor loaded: started for a login, whose transaction reads them.
        let sessions_unread = resumed.is_none() && loaded.is_none();
        let sessions: Vec<LiveSession> = match (&resumed, loaded) {
            (Some(publication), _) => publication
                .sessions
                .iter()
                .map(LiveSession::resumed)
                .collect(),
            (None, Some(loaded)) => loaded.into_iter().map(LiveSession::from_store).collect(),
            // Started for a login, whose transaction reads them (`sessions_unread`).
            (None, None) => Vec::new(),
        };
        tracing::debug!(user_id = %user.id, sessions = sessions.len(),
            resumed = resumed.is_some(), "user actor started");
        // A revocation whose write is still pending holds, whatever the store says.
        let journal = &args.policy.journal;
        Ok(UserState {
            myself,
            profile: Arc::new(UserProfile::from(&user)),
            draining: false,
            hibernating: false,
            user,
            user_read_at,
            sessions: sessions
                .into_iter()
                .filter(|l| {
                    let id = l.session.id;
                    !journal.is_pending(&id) && !residents.recently_ended(l.session.user_id, id)
                })
                .map(|l| (l.session.id, l))
                .collect(),
            sessions_unread,
            refused: RefusedIds::default(),
            synced_epoch: marks.trust_epoch,
            news_mark: marks.news,
            last_activity: now,
            store: args.store,
            policy: args.policy,
            cluster: args.cluster,
            residents: args.residents,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Errors travel in the replies; returning Err here would kill the actor over a
        // client's wrong code. A dropped reply port only means the caller gave up waiting.
        if message.caller_gone() {
            tracing::debug!(user_id = %state.user.id, "request dropped: its caller gave up waiting");
            return Ok(());
        }
        // To the microsecond, as the store and the activity atomics keep times: a time with
        // nanoseconds would always look newer than the same time persisted.
        let now = super::published::to_micros(Utc::now());
        if message.is_from_client() {
            state.last_activity = now;
        }
        if message.may_end_sessions() {
            state.withdraw();
        }
        state.absorb_activity();
        let mut handling = WithdrawUnlessFinished {
            residents: state.residents.clone(),
            user: state.user.id,
            finished: false,
        };
        // Boxed per message: ractor boxes each actor's processing loop once, sized for the
        // largest future the loop awaits, and the handlers' futures (a login's holds several
        // KiB across its awaits) would make every idle resident pay that size for life
        // (6.7 KiB of its ~16 KiB, measured with DHAT). A box per message costs less.
        Box::pin(state.handle(message, now)).await;
        state.publish();
        handling.finished = true;
        Ok(())
    }
}

/// Withdraws the user's publication if a message's handling never finishes: it panicked
/// (ractor catches the panic and the actor fails) or was dropped midway. Memory may then be
/// half changed, and a publication this actor left on hibernating must not wait for the
/// supervisor to hear of the failure: a request may resume from it first.
struct WithdrawUnlessFinished {
    residents: Arc<Residents>,
    user: UserId,
    finished: bool,
}

impl Drop for WithdrawUnlessFinished {
    fn drop(&mut self) {
        if !self.finished {
            self.residents.publications.withdraw(self.user);
        }
    }
}

impl UserState {
    async fn handle(&mut self, message: UserMsg, now: DateTime<Utc>) {
        let state = self;
        if state.sessions_unread && !matches!(message, UserMsg::Login { .. }) {
            state.read_sessions(now).await;
        }
        match message {
            UserMsg::Login {
                row,
                failures,
                device,
                reply,
            } => {
                let _ = reply.send(state.login(*row, failures, device, now).await);
                // A login that opened no session (a challenge, a refusal) read none: read
                // them now, while the store has just answered, so that this actor knows them
                // before anything else asks (a revocation in an outage must find its session
                // in memory to journal it, as with any actor that started).
                if state.sessions_unread {
                    state.read_sessions(now).await;
                }
            }
            UserMsg::VerifyMfa { attempt, reply } => {
                let outcome = state.verify_mfa(attempt, now).await;
                // Anyone may send codes for any user id: only a success is the user's activity
                // (else guesses would keep the actor resident forever).
                if outcome.is_ok() {
                    state.last_activity = now;
                }
                let _ = reply.send(outcome);
            }
            UserMsg::Validate { session_id, reply } => {
                let _ = reply.send(state.validate(session_id, now).await);
            }
            UserMsg::ListSessions { reply } => {
                let _ = reply.send(state.list_sessions(now).await);
            }
            UserMsg::Revoke {
                session_id,
                reason,
                origin,
                reply,
            } => {
                let revocation = Revocation::new(now, reason).by(origin);
                let _ = reply.send(state.revoke(session_id, revocation, now).await);
            }
            UserMsg::RevokeAll {
                except,
                reason,
                note,
                origin,
                reply,
            } => {
                let revocation = Revocation::new(now, reason).with_note(note).by(origin);
                let _ = reply.send(state.revoke_all(except, revocation).await);
            }
            UserMsg::ChangePassword {
                password_hash,
                keep,
                origin,
                reply,
            } => {
                let _ = reply.send(
                    state
                        .change_password(password_hash, keep, origin, now)
                        .await,
                );
            }
            UserMsg::ChangeFactor {
                request,
                keep,
                origin,
                reply,
            } => {
                let _ = reply.send(state.change_factor(request, keep, origin, now).await);
            }
            UserMsg::SetActive {
                active,
                note,
                origin,
                reply,
            } => {
                let revocation = Revocation::new(now, RevokeReason::AccountDisabled)
                    .with_note(note)
                    .by(origin);
                let _ = reply.send(state.set_active(active, revocation).await);
            }
            UserMsg::Forget { ids } => state.forget(&ids),
            UserMsg::Adopt { session } => state.adopt(*session, now),
            UserMsg::ReloadUser => {
                if let Err(err) = state.reload_user(now).await {
                    // Fail closed: without the new row we cannot answer for this user.
                    tracing::warn!(user_id = %state.user.id, error = %err,
                        "user row not reloaded; memory dropped until the next request");
                    state.synced_epoch = None;
                }
            }
            UserMsg::Resync => {
                if let Err(err) = state.resync(state.cluster.trust_epoch(), now).await {
                    tracing::warn!(user_id = %state.user.id, error = %err, "resync failed");
                    state.synced_epoch = None;
                }
            }
            UserMsg::Tick => state.tick(now).await,
            #[cfg(any(test, feature = "test-hooks"))]
            UserMsg::Crash => panic!("test hook: user actor {} told to crash", state.user.id),
            #[cfg(any(test, feature = "test-hooks"))]
            UserMsg::Stall(how_long) => tokio::time::sleep(how_long).await,
        }
    }

    fn grant(&self, session: Session) -> SessionGrant {
        SessionGrant {
            session,
            user: self.profile.clone(),
        }
    }

    /// Activity the publication's readers recorded since the last message.
    fn absorb_activity(&mut self) {
        for live in self.sessions.values_mut() {
            live.absorb();
        }
    }

    /// After every message: publishes what a validation reads, when memory may answer (see
    /// `sessions::published`); else makes sure nothing stale is published. Unchanged memory
    /// keeps its publication.
    fn publish(&mut self) {
        let publications = &self.residents.publications;
        let user = self.user.id;
        let me = self.myself.get_id();
        if self.hibernating {
            // What it left answers alone until something may refuse, which withdraws it
            // first; memory that may no longer be trusted takes it back now.
            if self.synced_epoch.is_none() || !self.user.is_active {
                publications.withdraw(user);
            }
            return;
        }
        if !self.draining && !self.residents.is_registered(user, me) {
            // Not the actor requests are routed to (the registry forgot it): no news, tick
            // or revocation reaches this one, so it must neither answer nor stay.
            tracing::warn!(user_id = %user, "user actor not registered; stopping");
            publications.withdraw_if_from(user, me);
            self.draining = true;
            let _ = self.myself.drain();
            return;
        }
        let epoch = match self.synced_epoch {
            Some(epoch)
                if !self.draining
                    && !self.sessions_unread
                    && self.user.is_active
                    && self.cluster.trust_epoch() == Some(epoch)
                    && self.policy.memory_may_answer().is_ok()
                    // Readers would skip it; and once the news is pruned they could not.
                    && !self.residents.news_since(user, self.news_mark) =>
            {
                epoch
            }
            _ => return publications.withdraw(user),
        };
        if let Some(current) = publications.current(user)
            && current.publisher.is(me)
            && current.epoch == epoch
            && current.news_mark == self.news_mark
            && Arc::ptr_eq(&current.user, &self.profile)
            && current.user_read_at == self.user_read_at
            && current.sessions.len() == self.sessions.len()
            && current
                .sessions
                .iter()
                .all(|p| self.sessions.contains_key(&p.session.id))
        {
            return;
        }
        let sessions = self
            .sessions
            .values()
            .map(|live| PublishedSession {
                session: live.session.clone(),
                activity: live.activity.clone(),
            })
            .collect();
        publications.publish(
            user,
            Publication {
                publisher: Publisher::Actor(me),
                user: self.profile.clone(),
                user_read_at: self.user_read_at,
                epoch,
                news_mark: self.news_mark,
                sessions,
            },
        );
    }

    /// Nothing published for this user until the next `publish`: called before memory drops
    /// a session or takes a new user row, so no reader answers from what is about to change.
    fn withdraw(&self) {
        self.residents.publications.withdraw(self.user.id);
    }

    /// The user's row, as read at `now`.
    fn set_user(&mut self, user: User, now: DateTime<Utc>) {
        self.withdraw();
        self.profile = Arc::new(UserProfile::from(&user));
        self.user = user;
        self.user_read_at = now;
    }

    /// Makes memory fit to answer from, and says whether it may be trusted. Memory loaded
    /// under an older trust epoch is reloaded first: invalidations may have been missed.
    async fn sync(&mut self, now: DateTime<Utc>) -> Result<bool, SessionError> {
        match self.cluster.trust_epoch() {
            None => Ok(false),
            Some(epoch)
                if self.synced_epoch == Some(epoch)
                    && !self.residents.news_since(self.user.id, self.news_mark) =>
            {
                Ok(true)
            }
            Some(epoch) => {
                self.resync(Some(epoch), now).await?;
                Ok(true)
            }
        }
    }

    /// Reloads the user and their live sessions from the store, keeping the fresher activity
    /// times memory holds and leaving out revocations not yet written.
    async fn resync(&mut self, epoch: Option<u64>, now: DateTime<Utc>) -> Result<(), SessionError> {
        let news_mark = self.residents.news_mark();
        let (user, stored) = self
            .store
            .user_and_live_sessions(self.user.id, now)
            .await?
            .ok_or(SessionError::UnknownUser)?;
        self.take_stored_user(user, now);
        if self.user.is_active {
            self.take_stored_sessions(stored);
        }
        self.synced_epoch = epoch;
        self.news_mark = news_mark;
        Ok(())
    }

    /// The sessions of an actor started for a login, when a message other than the login
    /// comes first or the login wrote nothing. A failed read leaves memory untrusted: the
    /// next message that needs it reloads everything.
    async fn read_sessions(&mut self, now: DateTime<Utc>) {
        match self.store.live_sessions(self.user.id, now).await {
            Ok(stored) => self.take_stored_sessions(stored),
            Err(err) => {
                tracing::warn!(user_id = %self.user.id, error = %err, "sessions not read");
                self.synced_epoch = None;
            }
        }
    }

    /// `stored`, the user's live sessions as the store holds them, becomes memory's: the
    /// fresher activity memory holds is kept, and revocations not yet written stay out.
    fn take_stored_sessions(&mut self, stored: Vec<Session>) {
        let mut sessions = HashMap::with_capacity(stored.len());
        for session in stored {
            if self.is_known_dead(&session.id) {
                continue;
            }
            let mut live = LiveSession::from_store(session);
            if let Some(old) = self.sessions.get(&live.session.id) {
                // The same activity cell: readers of the publication keep moving it.
                old.activity.see(live.session.last_seen_at);
                old.activity.persist(live.session.last_seen_at);
                live.activity = old.activity.clone();
                live.absorb();
            }
            sessions.insert(live.session.id, live);
        }
        self.withdraw();
        self.sessions = sessions;
        self.sessions_unread = false;
    }

    async fn reload_user(&mut self, now: DateTime<Utc>) -> Result<(), SessionError> {
        let user = self
            .store
            .user_by_id(self.user.id)
            .await?
            .ok_or(SessionError::UnknownUser)?;
        self.take_stored_user(user, now);
        Ok(())
    }

    /// `user`, as the store holds it at `now`, becomes memory's.
    fn take_stored_user(&mut self, user: User, now: DateTime<Utc>) {
        self.set_user(user, now);
        if !self.user.is_active {
            // Deactivated elsewhere: whatever ended its sessions did so in the store.
            self.forget_all_but(None);
        }
    }

    /// A row changed straight in SQL is seen within `cluster.user_refresh`. A failed read keeps
    /// the copy we have (the next request tries again).
    async fn refresh_user_if_stale(&mut self, now: DateTime<Utc>) {
        if now - self.user_read_at >= self.policy.user_refresh
            && let Err(err) = self.reload_user(now).await
        {
            tracing::warn!(user_id = %self.user.id, error = %err, "user row not refreshed");
        }
    }

    /// Refused here, held by the journal, or ended by another node lately (its news is
    /// recorded before the `Forget` reaches this mailbox, and before a reload could read the
    /// row of a revocation not yet written).
    fn is_known_dead(&self, id: &SessionId) -> bool {
        self.refused.contains(id)
            || self.policy.journal.is_pending(id)
            || self.residents.recently_ended(self.user.id, *id)
    }

    /// Reads one session from the store into memory, or out of it when it is not live.
    async fn reread_session(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        match self.store.session_by_id(id).await? {
            Some(stored) if stored.user_id == self.user.id && stored.is_live(now) => {
                if self.is_known_dead(&id) {
                    return Ok(());
                }
                let live = self
                    .sessions
                    .entry(id)
                    .or_insert_with(|| LiveSession::from_store(stored.clone()));
                live.see(stored.last_seen_at);
                live.activity.persist(stored.last_seen_at);
            }
            _ => self.forget(&[id]),
        }
        Ok(())
    }

    async fn login(
        &mut self,
        row: FreshRow,
        failures: Standing,
        device: Device,
        now: DateTime<Utc>,
    ) -> Result<LoginStep, SessionError> {
        // The row the password was just checked against is the freshest we can have, unless
        // another node changed the user since it was read: then read it again.
        let checked_hash = row.user.password_hash.clone();
        if self.residents.news_since(row.user.id, row.marks.news) {
            self.reload_user(now).await?;
        } else {
            self.set_user(row.user, now);
        }
        // Twice at most: once with that row, once more if the account changed under it.
        for _ in 0..2 {
            if self.user.password_hash != checked_hash {
                // Changed since the password was checked (a password change, or a rehash at a
                // higher cost by a concurrent login): not proven against the hash in force
                // now, and only a new check can tell which. The client tries again.
                return Err(SessionError::Unavailable(
                    "the password changed during the login".into(),
                ));
            }
            if !self.user.is_active {
                return Err(AuthError::AccountInactive.into());
            }
            if self.user.mfa_enabled {
                let mfa_token = self.begin_mfa(now).await?;
                let event = self.event(
                    EventKind::PasswordVerified,
                    self.policy.origin(&device),
                    now,
                );
                self.record(event).await;
                return Ok(LoginStep::MfaRequired { mfa_token });
            }
            // The store opens the session only if two-factor is still off and the password
            // unchanged at commit: a login racing `mfa/enable` must not slip past it.
            let gate = LoginGate {
                mfa_enabled: false,
                password_hash: Some(checked_hash.clone()),
            };
            let opened = self
                .open_session(
                    device.clone(),
                    EventKind::LoginSucceeded,
                    &gate,
                    failures,
                    now,
                )
                .await?;
            match opened {
                Some(opened) => return Ok(LoginStep::SessionOpened(Box::new(opened))),
                None => self.reload_user(now).await?,
            }
        }
        Err(SessionError::Unavailable(
            "the account kept changing during the login".into(),
        ))
    }

    /// Write-through: the row is inserted first, in a transaction that also ends the least
    /// recently used sessions past `session.max_per_user` (Keycloak's "terminate oldest"),
    /// wherever they were opened; only then does memory learn of it. `None` when the account
    /// no longer passes `gate` (see [`LoginGate`]). `failures`: what the throttle held when
    /// the login began; only failures on record are cleared.
    async fn open_session(
        &mut self,
        device: Device,
        kind: EventKind,
        gate: &LoginGate,
        failures: Standing,
        now: DateTime<Utc>,
    ) -> Result<Option<Opened>, SessionError> {
        if self.sessions.len() >= self.policy.max_per_user {
            // The store picks the least recently used; give it the activity only we know of.
            self.flush_touches().await;
        }
        let event = self.event(kind, self.policy.origin(&device), now);
        let session = Session::open(self.user.id, device, now, self.policy.max_lifetime);
        let Some(commit) = self
            .store
            .open_session_within_limit(
                &session,
                self.policy.max_per_user,
                gate,
                &event.session(session.id),
            )
            .await?
        else {
            return Ok(None);
        };
        let ended = commit.ended;
        self.forget(&ended);
        for id in &ended {
            tracing::info!(user_id = %self.user.id, session_id = %id,
                reason = %RevokeReason::SessionLimit, "session ended");
        }
        // What the transaction read under the user's lock, with the new session: as fresh
        // as memory can be, and the only read of them an actor started for this login makes.
        self.take_stored_sessions(commit.live);
        tracing::info!(user_id = %self.user.id, session_id = %session.id, "session opened");
        // A login completed: the account's failure count starts over. With none on record
        // when it began, there is nothing to clear (a statement saved on most logins); a
        // failure counted meanwhile by a concurrent wrong attempt then stays counted, which
        // errs on the side of the throttle.
        if failures == Standing::Failures {
            let account = self.policy.throttle.account(&self.user.email);
            self.policy
                .throttle
                .succeed(self.store.as_ref(), &account)
                .await;
        }
        Ok(Some(Opened {
            grant: self.grant(session),
            ended,
            recovery_codes_left: None,
        }))
    }

    fn event(&self, kind: EventKind, origin: Origin, now: DateTime<Utc>) -> AuthEvent {
        AuthEvent::new(now, kind, Some(self.user.id), origin)
    }

    /// Records an event that goes with no other write (a failure): a failed write is logged,
    /// and does not change the answer (the attempt was refused either way).
    async fn record(&self, event: AuthEvent) {
        if let Err(err) = self.store.record_event(&event).await {
            tracing::warn!(user_id = %self.user.id, kind = %event.kind, error = %err,
                "audit event not recorded");
        }
    }

    /// The TOTP generator of a sealed secret.
    fn totp(&self, secret: &SealedSecret) -> Result<TotpCode, SessionError> {
        let opened = self
            .policy
            .keyring
            .open(Purpose::Totp, secret)
            .map_err(|e| SessionError::Unavailable(format!("TOTP secret: {e}")))?;
        let base32 = std::str::from_utf8(&opened)
            .map_err(|_| SessionError::Unavailable("TOTP secret is not text".into()))?;
        TotpCode::with_skew(base32, self.policy.totp_skew)
            .ok_or_else(|| SessionError::Unavailable("TOTP secret is not base32".into()))
    }

    /// Opens an MFA challenge in the store (any node may receive the code), beside at most a
    /// couple of earlier ones; each costs a full password verification.
    async fn begin_mfa(&mut self, now: DateTime<Utc>) -> Result<String, SessionError> {
        let token = random_token()?;
        let challenge = StoredChallenge {
            token_hash: token_hash(&token),
            created_at: now,
            expires_at: now + self.policy.mfa_challenge_ttl,
            failures: 0,
        };
        self.store
            .put_mfa_challenge(self.user.id, &challenge, PENDING_CHALLENGES)
            .await?;
        Ok(token)
    }

    async fn verify_mfa(
        &mut self,
        attempt: MfaAttempt,
        now: DateTime<Utc>,
    ) -> Result<Opened, SessionError> {
        let invalid = || SessionError::from(AuthError::InvalidMfaCode);
        let password_verified = attempt.password_verified.is_some();
        match attempt.password_verified {
            Some(user) => self.set_user(*user, now),
            // The replay guard (totp_last_step) and the factor must be current.
            None => self.reload_user(now).await?,
        }
        if !self.user.is_active {
            // Only the right password may learn that an account is inactive; a code guessed
            // for a user id learns nothing.
            return Err(if password_verified {
                AuthError::AccountInactive.into()
            } else {
                invalid()
            });
        }
        let Some(secret) = self
            .user
            .totp_secret
            .clone()
            .filter(|_| self.user.mfa_enabled)
        else {
            return Err(invalid());
        };
        let origin = self.policy.origin(&attempt.device);
        // Wrong codes count against the account like wrong passwords, in both forms, and a
        // new password step resets nothing: MFA cannot be brute-forced one challenge at a time.
        let account = self.policy.throttle.account(&self.user.email);
        self.throttle_check(&account, now).await?;

        // Without the password in this request, the challenge of the password step stands in
        // for it: it lives in the store, so the step may have run on another node.
        let challenge = if !password_verified {
            // The challenge is found by its token's SHA-256 (an exact-match lookup on a hash of
            // 256 random bits: nothing to learn from its timing). A token that matches none
            // touches none: a stranger cannot use up someone else's challenge. Without a
            // token (the seed's clients, where `auth.require_mfa_token` is off), the newest.
            let sent = attempt.mfa_token.as_deref().map(token_hash);
            let challenge = self
                .store
                .mfa_challenge(self.user.id, sent.as_ref())
                .await?
                .ok_or_else(invalid)?;
            if now >= challenge.expires_at {
                let _ = self
                    .store
                    .take_mfa_challenge(self.user.id, &challenge.token_hash)
                    .await;
                return Err(invalid());
            }
            Some(challenge)
        } else {
            None
        };

        let spent = self
            .spend_factor(
                attempt.factor,
                &secret,
                challenge.as_ref(),
                &account,
                &origin,
                now,
            )
            .await?;
        // The challenge is answered once, whichever node got the code.
        if let Some(challenge) = &challenge
            && !self
                .store
                .take_mfa_challenge(self.user.id, &challenge.token_hash)
                .await?
        {
            return Err(invalid());
        }
        let (kind, left) = match spent {
            Spent::Totp => (EventKind::MfaSucceeded, None),
            Spent::RecoveryCode { left } => (EventKind::RecoveryCodeUsed, Some(left)),
        };
        // Two-factor must still be on when the session commits, and, in the original
        // clients' form, the password still the one just verified.
        let gate = LoginGate {
            mfa_enabled: true,
            password_hash: password_verified.then(|| self.user.password_hash.clone()),
        };
        let mut opened = self
            // Wrong codes may have counted since the password step: always cleared.
            .open_session(attempt.device, kind, &gate, Standing::Failures, now)
            .await?
            .ok_or_else(invalid)?;
        opened.recovery_codes_left = left;
        Ok(opened)
    }

    /// Refuses at once while the account is locked. A refusal while locked is not recorded
    /// (anyone can send codes for any user id: a flood of them must not flood the user's
    /// trail); the lock itself was, when it began.
    async fn throttle_check(
        &self,
        account: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        self.policy
            .throttle
            .check(self.store.as_ref(), account, now)
            .await
            .map(|_| ())
    }

    /// Checks a second factor against the secret in force (`secret`) and spends it: a TOTP
    /// code's step (in the store, so that two nodes racing on one code accept it once) or a
    /// recovery code. A refusal counts against `challenge` and the account, and is recorded
    /// with why (a reused TOTP code as `code_reused`).
    async fn spend_factor(
        &mut self,
        factor: SecondFactor,
        secret: &SealedSecret,
        challenge: Option<&StoredChallenge>,
        account: &[u8; 32],
        origin: &Origin,
        now: DateTime<Utc>,
    ) -> Result<Spent, SessionError> {
        let refused = match factor {
            SecondFactor::Totp(code) => {
                let totp = self.totp(secret)?;
                let unix_now = u64::try_from(now.timestamp()).unwrap_or_default();
                match totp.verify(&code, unix_now, self.user.totp_last_step) {
                    Some(step)
                        if self
                            .store
                            .advance_totp_step(self.user.id, secret, step)
                            .await? =>
                    {
                        self.user.totp_last_step = Some(step);
                        return Ok(Spent::Totp);
                    }
                    // Right code, but its step is spent (here or on another node).
                    Some(_) => "code_reused",
                    None if totp.step_of(&code, unix_now).is_some() => "code_reused",
                    None => "invalid_code",
                }
            }
            SecondFactor::Recovery(code) => {
                let unused = self.store.unused_recovery_codes(self.user.id).await?;
                let found = recovery::find(&code, &unused)
                    .and_then(|id| unused.iter().find(|c| c.id == id));
                match found {
                    Some(hashed)
                        if self
                            .store
                            .spend_recovery_code(self.user.id, hashed, now)
                            .await? =>
                    {
                        tracing::info!(user_id = %self.user.id, left = unused.len() - 1,
                            "recovery code used");
                        return Ok(Spent::RecoveryCode {
                            left: unused.len() - 1,
                        });
                    }
                    _ => "invalid_recovery_code",
                }
            }
        };
        self.code_refused(challenge, account, origin, refused, now)
            .await;
        Err(AuthError::InvalidMfaCode.into())
    }

    /// Sets up, enables or disables the caller's second factor, or replaces the recovery
    /// codes. The caller's password was checked by `Sessions`; enabling also needs a code of
    /// the pending secret, and disabling or new codes a proof of the factor in force. The
    /// change, the end of the other sessions and the event commit in one transaction.
    async fn change_factor(
        &mut self,
        request: FactorRequest,
        keep: SessionId,
        origin: Origin,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, SessionError> {
        if !self.sessions.contains_key(&keep) {
            return Err(SessionError::Ended);
        }
        // The factor's state must be current: another node may have changed it.
        self.reload_user(now).await?;
        let account = self.policy.throttle.account(&self.user.email);
        let mut proved = None;
        let (change, end_others, kind) = match request {
            FactorRequest::Setup { secret } => {
                self.require_mfa(false)?;
                let event = self.event(EventKind::MfaSetupStarted, origin, now);
                if !self
                    .store
                    .set_pending_totp(self.user.id, &secret, &event.session(keep))
                    .await?
                {
                    // Turned on by another node since the row was read.
                    return Err(SessionError::MfaState {
                        code: "mfa_already_enabled",
                        message: "Two-factor authentication is already on; turn it off first",
                    });
                }
                self.user.totp_pending = Some(secret);
                self.user.totp_pending_at = Some(now);
                return Ok(Vec::new());
            }
            FactorRequest::Enable {
                code,
                codes,
                end_others,
            } => {
                self.require_mfa(false)?;
                let pending_since = self.user.totp_pending_at.unwrap_or(now);
                let pending = self
                    .user
                    .totp_pending
                    .clone()
                    .filter(|_| now - pending_since < PENDING_SETUP_TTL);
                let Some(pending) = pending else {
                    return Err(SessionError::MfaState {
                        code: "mfa_setup_required",
                        message: "No two-factor setup is pending (or it is older than 15 \
                                  minutes): call mfa/setup first",
                    });
                };
                self.throttle_check(&account, now).await?;
                let unix_now = u64::try_from(now.timestamp()).unwrap_or_default();
                let Some(step) =
                    self.totp(&pending)?
                        .verify(&code, unix_now, self.user.totp_last_step)
                else {
                    self.code_refused(None, &account, &origin, "invalid_code", now)
                        .await;
                    return Err(AuthError::InvalidMfaCode.into());
                };
                (
                    FactorChange::Enable {
                        pending,
                        step,
                        codes,
                    },
                    end_others,
                    EventKind::MfaEnabled,
                )
            }
            FactorRequest::Disable { proof, end_others } => {
                proved = Some(self.prove_factor(proof, &account, &origin, now).await?);
                (FactorChange::Disable, end_others, EventKind::MfaDisabled)
            }
            FactorRequest::NewRecoveryCodes { proof, codes } => {
                proved = Some(self.prove_factor(proof, &account, &origin, now).await?);
                (
                    FactorChange::NewRecoveryCodes(codes),
                    false,
                    EventKind::RecoveryCodesRegenerated,
                )
            }
        };
        let revocation = Revocation::new(now, RevokeReason::MfaChanged).by(origin.clone());
        let mut event = self.event(kind, origin, now).session(keep);
        // Which proof was spent (a recovery code is worth knowing about).
        event.reason = proved.map(|spent| match spent {
            Spent::Totp => "totp".to_owned(),
            Spent::RecoveryCode { .. } => "recovery_code".to_owned(),
        });
        let outcome = self
            .store
            .change_factor(
                self.user.id,
                &change,
                keep,
                end_others.then_some(&revocation),
                &event,
            )
            .await?;
        match outcome {
            FactorOutcome::Changed(ended) => {
                if end_others {
                    self.forget_all_but(Some(keep));
                }
                self.forget(&ended);
                tracing::info!(user_id = %self.user.id, change = %kind, revoked = ended.len(),
                    "second factor changed");
                if let Err(err) = self.reload_user(now).await {
                    // Memory keeps the old row; the next request that needs it reloads.
                    tracing::warn!(user_id = %self.user.id, error = %err, "user row not reloaded");
                    self.user_read_at = now - self.policy.user_refresh;
                }
                Ok(ended)
            }
            FactorOutcome::CallerEnded => {
                self.forget(&[keep]);
                Err(SessionError::Ended)
            }
            // Another request changed the factor in between: this code was for a state
            // that no longer holds.
            FactorOutcome::Stale => Err(AuthError::InvalidMfaCode.into()),
        }
    }

    /// The factor change needs two-factor on (`enabled`) or off.
    fn require_mfa(&self, enabled: bool) -> Result<(), SessionError> {
        match (self.user.mfa_enabled, enabled) {
            (true, false) => Err(SessionError::MfaState {
                code: "mfa_already_enabled",
                message: "Two-factor authentication is already on; turn it off first",
            }),
            (false, true) => Err(SessionError::MfaState {
                code: "mfa_not_enabled",
                message: "Two-factor authentication is not on",
            }),
            _ => Ok(()),
        }
    }

    /// The caller proves the factor in force (a TOTP code or a recovery code), spending it.
    async fn prove_factor(
        &mut self,
        proof: SecondFactor,
        account: &[u8; 32],
        origin: &Origin,
        now: DateTime<Utc>,
    ) -> Result<Spent, SessionError> {
        self.require_mfa(true)?;
        let secret = self
            .user
            .totp_secret
            .clone()
            .ok_or_else(|| SessionError::from(AuthError::InvalidMfaCode))?;
        self.throttle_check(account, now).await?;
        self.spend_factor(proof, &secret, None, account, origin, now)
            .await
    }

    /// A wrong (or spent) code: counted against its challenge and against the account, and
    /// recorded with why (and, when it locked the account, that too).
    async fn code_refused(
        &self,
        challenge: Option<&StoredChallenge>,
        account: &[u8; 32],
        origin: &Origin,
        reason: &'static str,
        now: DateTime<Utc>,
    ) {
        if let Some(challenge) = challenge {
            self.record_mfa_failure(challenge).await;
        }
        let locked = self
            .policy
            .throttle
            .fail(self.store.as_ref(), account, now)
            .await;
        let event = self.event(EventKind::MfaFailed, origin.clone(), now);
        self.record(event.reason(reason)).await;
        if locked {
            let event = self.event(EventKind::LoginThrottled, origin.clone(), now);
            self.record(event.reason("account_locked")).await;
        }
    }

    /// Counts a wrong code in the store, where every node sees the same count.
    async fn record_mfa_failure(&self, challenge: &StoredChallenge) {
        match self
            .store
            .count_mfa_failure(
                self.user.id,
                &challenge.token_hash,
                self.policy.mfa_max_attempts,
            )
            .await
        {
            Ok(0) => tracing::warn!(user_id = %self.user.id,
                "MFA challenge voided after too many wrong codes"),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(user_id = %self.user.id, error = %err, "MFA failure not counted");
            }
        }
    }

    /// Asked on every authenticated request. A session past its idle or absolute limit is
    /// refused (and ended) here even if the sweep has not reached it yet. A live one is
    /// touched; the touch is written at most once per `touch_interval`, and a failed touch
    /// write does not fail the request (it can only make idle expiry come sooner).
    async fn validate(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<SessionGrant, SessionError> {
        if self.sync(now).await? {
            self.policy.memory_may_answer()?;
            self.refresh_user_if_stale(now).await;
            if !self.sessions.contains_key(&id) {
                if self.is_known_dead(&id) {
                    return Err(SessionError::Ended);
                }
                // Perhaps opened on another node a moment ago.
                self.reread_session(id, now).await?;
            }
        } else {
            // Not trusted: the store answers every request (two primary-key reads).
            self.reload_user(now).await?;
            if self.is_known_dead(&id) {
                return Err(SessionError::Ended);
            }
            self.reread_session(id, now).await?;
        }
        if !self.user.is_active {
            return Err(SessionError::Ended);
        }
        let idle_timeout = self.policy.idle_timeout;
        let reason = match self.sessions.get(&id) {
            None => return Err(SessionError::Ended),
            Some(live) => live.session.end_reason(now, idle_timeout),
        };
        match reason {
            // Idle by this node's view; the store has every node's activity.
            Some(RevokeReason::IdleTimeout) if self.end_if_idle(id, now).await? => {
                return Err(SessionError::Ended);
            }
            Some(RevokeReason::IdleTimeout) | None => {}
            Some(reason) => {
                // The caller is refused whatever the write does; a failed write is retried.
                let revocation = Revocation::new(now, reason).by(self.policy.node_origin());
                let _ = self.end_sessions(vec![id], revocation).await;
                return Err(SessionError::Ended);
            }
        }
        let live = self.sessions.get_mut(&id).ok_or(SessionError::Ended)?;
        live.see(now);
        if now - live.activity.persisted() >= self.policy.touch_interval {
            match self.store.touch_session(id, now).await {
                Ok(()) => live.activity.persist(now),
                Err(err) => tracing::warn!(session_id = %id, error = %err, "touch not persisted"),
            }
        }
        let session = live.session.clone();
        Ok(self.grant(session))
    }

    /// Memory says `id` is idle; the store has the newest activity any node wrote. Ends it
    /// only if the store agrees (a conditional update), else takes the store's time. True when
    /// the session is over.
    async fn end_if_idle(
        &mut self,
        id: SessionId,
        now: DateTime<Utc>,
    ) -> Result<bool, SessionError> {
        let cutoff = now - self.policy.idle_timeout;
        let revocation =
            Revocation::new(now, RevokeReason::IdleTimeout).by(self.policy.node_origin());
        if self.store.end_if_idle(id, cutoff, &revocation).await? {
            self.forget(&[id]);
            tracing::info!(user_id = %self.user.id, session_id = %id,
                reason = %RevokeReason::IdleTimeout, "session ended");
            // Another node may hold a fresher time in memory than the store had: tell it.
            self.tell_cluster(vec![id]);
            return Ok(true);
        }
        // Busy on another node (or already ended there): the store decides.
        self.reread_session(id, now).await?;
        Ok(self.sessions.get(&id).is_none_or(|l| {
            l.session
                .end_reason(now, self.policy.idle_timeout)
                .is_some()
        }))
    }

    /// Live sessions, newest first, from the store (sessions opened on any node), with the
    /// fresher activity times this node holds.
    async fn list_sessions(&mut self, now: DateTime<Utc>) -> Result<Vec<Session>, SessionError> {
        let epoch = self.cluster.trust_epoch();
        self.resync(epoch, now).await?;
        let mut sessions: Vec<Session> = self
            .sessions
            .values()
            .filter(|l| {
                l.session
                    .end_reason(now, self.policy.idle_timeout)
                    .is_none()
            })
            .map(|l| l.session.clone())
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sessions)
    }

    async fn revoke(
        &mut self,
        id: SessionId,
        revocation: Revocation,
        now: DateTime<Utc>,
    ) -> Result<(), SessionError> {
        if !self.sessions.contains_key(&id) && !self.is_known_dead(&id) {
            self.reread_session(id, now).await?;
        }
        if !self.sessions.contains_key(&id) {
            return Err(SessionError::NotFound);
        }
        self.end_sessions(vec![id], revocation).await
    }

    /// Every session but `except` leaves memory first (fail closed), then one transaction
    /// ends every live one in the store, including any this node has not heard of yet.
    async fn revoke_all(
        &mut self,
        except: Option<SessionId>,
        revocation: Revocation,
    ) -> Result<Vec<SessionId>, SessionError> {
        let in_memory: Vec<SessionId> = self
            .sessions
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        self.forget(&in_memory);
        let reason = revocation.reason;
        match self
            .store
            .revoke_user_sessions(self.user.id, except, &revocation)
            .await
        {
            Ok(ended) => {
                self.forget(&ended);
                tracing::info!(user_id = %self.user.id, revoked = ended.len(), %reason, "sessions revoked");
                Ok(ended)
            }
            Err(err) => {
                self.keep_pending(in_memory, revocation).await;
                Err(SessionError::Store(err))
            }
        }
    }

    /// The new hash and the end of every other session commit together, and only if the
    /// caller's session is still live at that moment (checked by the store, in the same
    /// transaction: it may have been ended on another node while the hash was computed).
    async fn change_password(
        &mut self,
        password_hash: String,
        keep: SessionId,
        origin: Origin,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, SessionError> {
        if !self.sessions.contains_key(&keep) {
            return Err(SessionError::Ended);
        }
        let revocation = Revocation::new(now, RevokeReason::PasswordChanged).by(origin.clone());
        let event = self
            .event(EventKind::PasswordChanged, origin, now)
            .session(keep);
        let Some(ended) = self
            .store
            .change_password(self.user.id, &password_hash, keep, &revocation, &event)
            .await?
        else {
            self.forget(&[keep]);
            return Err(SessionError::Ended);
        };
        self.user.password_hash = password_hash;
        self.forget_all_but(Some(keep));
        self.forget(&ended);
        tracing::info!(user_id = %self.user.id, revoked = ended.len(), "password changed");
        Ok(ended)
    }

    async fn set_active(
        &mut self,
        active: bool,
        revocation: Revocation,
    ) -> Result<Vec<SessionId>, SessionError> {
        let now = revocation.at;
        let kind = if active {
            EventKind::AccountActivated
        } else {
            EventKind::AccountDeactivated
        };
        let event = self
            .event(kind, revocation.origin.clone(), now)
            .note(revocation.note.clone());
        let ended = self
            .store
            .set_user_active(self.user.id, active, &revocation, &event)
            .await?
            .ok_or(SessionError::UnknownUser)?;
        let mut user = self.user.clone();
        user.is_active = active;
        self.set_user(user, now);
        if !active {
            self.forget_all_but(None);
        }
        self.forget(&ended);
        tracing::info!(user_id = %self.user.id, active, revoked = ended.len(), "account status changed");
        Ok(ended)
    }

    /// Every session in memory but `keep` leaves it: a change that ends all of the user's
    /// sessions, or all but the caller's.
    fn forget_all_but(&mut self, keep: Option<SessionId>) {
        let others: Vec<SessionId> = self
            .sessions
            .keys()
            .copied()
            .filter(|id| Some(*id) != keep)
            .collect();
        self.forget(&others);
    }

    /// Sessions that ended (here or on another node) leave memory and are remembered as dead.
    fn forget(&mut self, ids: &[SessionId]) {
        if ids.is_empty() {
            return;
        }
        self.withdraw();
        for id in ids {
            self.sessions.remove(id);
            self.refused.insert(*id);
        }
    }

    /// Sessions this actor ended without a confirmed answer (idle, or a revocation whose write
    /// failed): the other nodes are told in the background, since nobody waits for their
    /// answer and this mailbox must not wait on the network.
    fn tell_cluster(&self, ids: Vec<SessionId>) {
        super::journal::tell_cluster(&self.cluster, self.user.id, ids);
    }

    /// Another node opened `session`: keep it unless we know it is dead or the news is old.
    fn adopt(&mut self, session: Session, now: DateTime<Utc>) {
        let id = session.id;
        if session.user_id != self.user.id
            || !session.is_live(now)
            || now - session.created_at > ADOPT_WINDOW
            || self.is_known_dead(&id)
            || self.residents.recently_ended(session.user_id, id)
            || self.sessions.contains_key(&id)
        {
            return;
        }
        self.sessions.insert(id, LiveSession::from_store(session));
    }

    /// Ending sessions fails closed, so it is the exception to "write, then change memory":
    /// the sessions leave memory first and are refused from this instant, even if the
    /// database is down. The caller hears success only once the write has committed; if it
    /// fails, the revocation goes to the journal (on disk) before the caller hears 503, and
    /// the journal's writer lands it once the store answers.
    async fn end_sessions(
        &mut self,
        ids: Vec<SessionId>,
        revocation: Revocation,
    ) -> Result<(), SessionError> {
        self.forget(&ids);
        if ids.is_empty() {
            return Ok(());
        }
        match self.store.revoke_sessions(&ids, &revocation).await {
            Ok(()) => {
                for id in &ids {
                    tracing::info!(user_id = %self.user.id, session_id = %id,
                        reason = %revocation.reason, "session ended");
                }
                Ok(())
            }
            Err(err) => {
                self.keep_pending(ids, revocation).await;
                Err(SessionError::Store(err))
            }
        }
    }

    /// A revocation in force whose write failed: durable in the journal before the caller
    /// hears 503, so neither a crash nor a restart can bring the sessions back; and told to
    /// the other nodes at once, so that their memory refuses the sessions too (the bus may be
    /// up while the database is not; their confirmations cannot be collected without it, so
    /// this is best effort, and the journal's writer tells them again once it lands).
    async fn keep_pending(&self, ids: Vec<SessionId>, revocation: Revocation) {
        if ids.is_empty() {
            return;
        }
        super::journal::tell_cluster_unwritten(
            &self.cluster,
            self.user.id,
            ids.clone(),
            revocation.clone(),
        );
        let count = ids.len();
        match self
            .policy
            .journal
            .record(self.user.id, ids, revocation)
            .await
        {
            Ok(_) => tracing::warn!(user_id = %self.user.id, sessions = count,
                "sessions ended in memory; write failed, kept in the journal until it lands"),
            Err(err) => tracing::error!(user_id = %self.user.id, sessions = count, error = %err,
                "sessions ended in memory; write failed and the journal could not keep it: \
                 a crash before the store returns would revive them"),
        }
    }

    /// The supervisor's periodic tick: catch up on news the mailbox may have missed, end what
    /// has expired, then passivate if idle, or hibernate if only validations came.
    async fn tick(&mut self, now: DateTime<Utc>) {
        if let Err(err) = self.sync(now).await {
            // Fail closed, as on the other failed resyncs: memory that missed news must not
            // be published, nor trusted once the news is pruned.
            tracing::warn!(user_id = %self.user.id, error = %err, "resync on tick failed");
            self.synced_epoch = None;
        }
        let mut past_lifetime = Vec::new();
        let mut idle = Vec::new();
        for live in self.sessions.values() {
            match live.session.end_reason(now, self.policy.idle_timeout) {
                Some(RevokeReason::IdleTimeout) => idle.push(live.session.id),
                Some(_) => past_lifetime.push(live.session.id),
                None => {}
            }
        }
        // On failure the retry timer owns the write; nothing more to do here.
        let revocation =
            Revocation::new(now, RevokeReason::MaxLifetime).by(self.policy.node_origin());
        let _ = self.end_sessions(past_lifetime, revocation).await;
        for id in idle {
            if let Err(err) = self.end_if_idle(id, now).await {
                tracing::warn!(session_id = %id, error = %err, "idle check failed");
            }
        }
        if self.should_passivate(now) && self.flush_touches().await {
            tracing::debug!(user_id = %self.user.id, "user actor passivating");
            // Drain, not stop: messages already queued are still answered, later sends are
            // refused and the registry waits for this actor to exit before it spawns the
            // next one, so two actors never hold one user's sessions at once. Its
            // publication goes first: the successor loads what this one wrote.
            self.draining = true;
            self.withdraw();
            let _ = self.myself.drain();
        } else if now - self.last_activity >= self.policy.idle_hibernate {
            // No message for a while: the publication answers this user's validations alone,
            // for a fraction of an actor's memory; the next write starts an actor that resumes
            // from it. Drained like a passivation, so two actors never overlap.
            self.publish();
            if self
                .residents
                .publications
                .hibernate(&self.user, self.myself.get_id())
            {
                tracing::debug!(user_id = %self.user.id, "user actor hibernating");
                self.draining = true;
                self.hibernating = true;
                let _ = self.myself.drain();
            }
        }
    }

    fn should_passivate(&self, now: DateTime<Utc>) -> bool {
        // Requests the publication answered are activity too.
        let last_request = self.sessions.values().map(|l| l.session.last_seen_at).max();
        let last_activity =
            last_request.map_or(self.last_activity, |at| at.max(self.last_activity));
        now - last_activity >= self.policy.idle_passivate
    }

    /// Writes every touch not yet persisted, so the next actor loads exact activity times.
    async fn flush_touches(&mut self) -> bool {
        for live in self.sessions.values_mut() {
            if live.session.last_seen_at > live.activity.persisted() {
                if self
                    .store
                    .touch_session(live.session.id, live.session.last_seen_at)
                    .await
                    .is_err()
                {
                    return false;
                }
                live.activity.persist(live.session.last_seen_at);
            }
        }
        true
    }
}

/// What a second factor spent.
enum Spent {
    Totp,
    RecoveryCode { left: usize },
}

/// The challenge token as stored: its SHA-256 (a leaked table gives nobody a token).
fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 256 bits from the OS generator, hex-encoded: the opaque `mfaToken`.
fn random_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| SessionError::Unavailable(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
