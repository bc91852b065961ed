//! The parent of every user actor, of the sweeper and of the pending-revocation writer; it
//! supervises, and waits on nothing.
//!
//! Supervision: a user actor that panics or stops is reported here (ractor links children to
//! their supervisor); the supervisor logs it and drops it from the registry, so the next
//! request for that user spawns a fresh actor that reloads the user's sessions from the store.
//! Nothing is lost: every acknowledged change was written through before the reply. ractor's
//! default supervision stops the supervisor when any child stops; that would take every user
//! down with one, so it is overridden. A failed sweeper or pending-revocation writer is
//! started again.
//!
//! Ticks, every `session.sweep_interval`: every resident user actor is told to end its own
//! expired sessions (it knows their true last activity), to passivate if it has been idle
//! for `actors.idle_passivate` and to hibernate if no message came for
//! `actors.idle_hibernate`; hibernated publications that can no longer answer, or whose
//! users have been idle for `actors.idle_passivate`, are dropped. The database sweep is the
//! [`Sweeper`]'s, so a slow or unreachable database can never delay supervision or the ticks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::journal::{PendingWriter, PendingWriterArgs, PendingWriterMsg};
use super::messages::{SupervisorMsg, UserMsg};
use super::published::{ReadRules, to_micros};
use super::registry::Residents;
use super::sweeper::{Sweeper, SweeperArgs, SweeperMsg};
use super::user_actor::SessionPolicy;
use crate::cluster::Cluster;
use crate::domain::SessionId;
use crate::store::DynStore;

/// How long news from other nodes is kept for actors that were loading when it came.
const RECENT_NEWS: Duration = Duration::from_secs(120);

pub struct SessionSupervisor;

pub struct SupervisorArgs {
    pub residents: Arc<Residents>,
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
    /// For the pending-revocation writer, which tells other nodes what it wrote late.
    pub cluster: Cluster,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    sweeper: ActorRef<SweeperMsg>,
    pending_writer: ActorRef<PendingWriterMsg>,
    /// The most running actors seen since memory was last handed back.
    peak_residents: usize,
    /// The most hibernated users seen since memory was last handed back.
    peak_hibernated: usize,
    /// The slice of the actors the next tick reaches (see [`TICK_SLICES`]).
    next_slice: u32,
}

/// Each `session.sweep_interval` is cut into this many ticks, each of which reaches the
/// running actors of one slice of the user ids: every actor is still ticked once an
/// interval, but 100,000 running actors no longer get their ticks in one burst on two cores
/// (which showed in the tail of the requests of that moment, docs/BENCHMARKS.md).
const TICK_SLICES: u32 = 10;

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The timer task ends by itself once this actor stops and sends start failing.
        // At least a millisecond: a zero period would make the timer panic.
        let period = (args.policy.sweep_interval / TICK_SLICES).max(Duration::from_millis(1));
        myself.send_interval(period, || SupervisorMsg::Tick);
        let sweeper = spawn_sweeper(&myself, &args).await?;
        let pending_writer = spawn_pending_writer(&myself, &args).await?;
        Ok(SupervisorState {
            args,
            sweeper,
            pending_writer,
            peak_residents: 0,
            peak_hibernated: 0,
            next_slice: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Tick => {
                let slice = state.next_slice;
                state.next_slice = (slice + 1) % TICK_SLICES;
                tick_actors(&state.args.residents, slice);
                if slice == 0 {
                    // Once an interval: what is not per actor.
                    let hibernated = tick_residents(&state.args);
                    // Actors that stopped (hibernated or passivated), or hibernated users
                    // dropped.
                    let (actors_gone, peak) =
                        trim_due(state.peak_residents, state.args.residents.len());
                    state.peak_residents = peak;
                    let (hibernated_gone, peak) = trim_due(state.peak_hibernated, hibernated);
                    state.peak_hibernated = peak;
                    if actors_gone || hibernated_gone {
                        give_back_memory();
                    }
                }
            }
            SupervisorMsg::CountResidents(reply) => {
                let _ = reply.send(state.args.residents.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, cause)
                if cell.get_id() == state.sweeper.get_id() =>
            {
                tracing::error!(error = %cause, "sweeper failed; starting it again");
                state.sweeper = spawn_sweeper(&myself, &state.args).await?;
            }
            SupervisionEvent::ActorFailed(cell, cause)
                if cell.get_id() == state.pending_writer.get_id() =>
            {
                tracing::error!(error = %cause, "pending-revocation writer failed; starting it again");
                state.pending_writer = spawn_pending_writer(&myself, &state.args).await?;
            }
            SupervisionEvent::ActorFailed(cell, cause) => {
                let residents = &state.args.residents;
                let user = residents.forget(cell.get_id());
                // It may have hibernated before it failed (while draining).
                residents.publications.withdraw_left_by(cell.get_id());
                tracing::error!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    error = %cause, "user actor failed; next request reloads it from the store");
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let user = state.args.residents.forget(cell.get_id());
                tracing::debug!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    reason = ?reason, "user actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn_sweeper(
    supervisor: &ActorRef<SupervisorMsg>,
    args: &SupervisorArgs,
) -> Result<ActorRef<SweeperMsg>, ActorProcessingErr> {
    let sweeper_args = SweeperArgs {
        store: args.store.clone(),
        policy: args.policy.clone(),
    };
    let (sweeper, _handle) =
        Actor::spawn_linked(None, Sweeper, sweeper_args, supervisor.get_cell()).await?;
    Ok(sweeper)
}

async fn spawn_pending_writer(
    supervisor: &ActorRef<SupervisorMsg>,
    args: &SupervisorArgs,
) -> Result<ActorRef<PendingWriterMsg>, ActorProcessingErr> {
    let writer_args = PendingWriterArgs {
        journal: args.policy.journal.clone(),
        store: args.store.clone(),
        cluster: args.cluster.clone(),
        interval: args.policy.revoke_retry,
    };
    let (writer, _handle) =
        Actor::spawn_linked(None, PendingWriter, writer_args, supervisor.get_cell()).await?;
    Ok(writer)
}

/// Once this many actors have stopped (hibernated or passivated), or this many hibernated
/// users have been dropped, since memory was last handed back, the allocator is asked to
/// return what they freed.
const TRIM_AFTER_STOPPED: usize = 1_000;

/// Whether enough actors stopped since the peak to hand memory back, and the peak to count
/// from next (the residents now, after a trim).
fn trim_due(peak: usize, residents: usize) -> (bool, usize) {
    if peak.saturating_sub(residents) >= TRIM_AFTER_STOPPED {
        (true, residents)
    } else {
        (false, peak.max(residents))
    }
}

/// The allocator returns free pages after its decay time anyway; once a thousand actors
/// or hibernated users are gone at once, it is told to return them now (`crate::allocator`).
fn give_back_memory() {
    metrics::counter!("finsec_memory_trims_total").increment(1);
    tokio::task::spawn_blocking(crate::allocator::give_back_free_pages);
}

/// Ticks the running actors of one slice of the user ids. Memory only: a cast each.
fn tick_actors(residents: &Residents, slice: u32) {
    for actor in residents.actors_in_slice(slice, TICK_SLICES) {
        // A closed mailbox means the actor is already stopping; nothing to tick.
        let _ = actor.cast(UserMsg::Tick);
    }
}

/// The hibernated publications and the news, once an interval. Memory only: nothing here
/// waits on the store or on an actor. Returns how many users are left hibernated.
fn tick_residents(args: &SupervisorArgs) -> usize {
    let residents = &args.residents;
    let policy = &args.policy;
    // Before the news is pruned: a hibernated publication older than some news must go
    // while the news is still there to say so.
    let rules = ReadRules {
        epoch: args.cluster.trust_epoch(),
        idle_timeout: policy.idle_timeout,
        touch_interval: policy.touch_interval,
        user_refresh: policy.user_refresh,
    };
    let now = to_micros(chrono::Utc::now());
    let (hibernated, unwritten) = residents.prune_hibernated(now, &rules, policy.idle_passivate);
    metrics::gauge!("finsec_hibernated_users").set(hibernated as f64);
    write_activity(args.store.clone(), unwritten);
    // Other nodes' news is needed only while an actor that was loading could have missed it.
    residents.prune_recent(RECENT_NEWS);
    hibernated
}

/// The last request times that dropped hibernated publications held, written in the
/// background (the supervisor waits on nothing), as a passivating actor writes its own. Each
/// write is bounded by `database.timeout`; one that fails only makes idle expiry come sooner.
fn write_activity(store: DynStore, unwritten: Vec<(SessionId, DateTime<Utc>)>) {
    if unwritten.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (id, seen) in unwritten {
            if let Err(err) = store.touch_session(id, seen).await {
                tracing::warn!(session_id = %id, error = %err, "touch not persisted");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_handed_back_once_enough_actors_have_stopped_since_the_peak() {
        // Growing: no trim, the peak follows.
        assert_eq!(trim_due(0, 5_000), (false, 5_000));
        // A few hundred passivated: not yet.
        assert_eq!(trim_due(5_000, 4_500), (false, 5_000));
        // A thousand below the peak: trim, and count from here.
        assert_eq!(trim_due(5_000, 4_000), (true, 4_000));
        assert_eq!(trim_due(4_000, 3_500), (false, 4_000));
        assert_eq!(trim_due(4_000, 0), (true, 0));
        // Idle: nothing to do.
        assert_eq!(trim_due(0, 0), (false, 0));
    }
}
