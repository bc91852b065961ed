//! The parent of every user actor, and the keeper of time.
//!
//! Supervision: a user actor that panics or stops is reported here (ractor links children to
//! their supervisor); the supervisor logs it and drops it from the registry, so the next
//! request for that user spawns a fresh actor that reloads the user's sessions from the store.
//! Nothing is lost: every acknowledged change was written through before the reply. ractor's
//! default supervision stops the supervisor when any child stops; that would take every user
//! down with one, so it is overridden.
//!
//! Sweeps, every `session.sweep_interval`:
//! 1. in the store, end sessions past their absolute end, and sessions whose *stored*
//!    `last_seen_at` is older than `idle_timeout + touch_interval`: touches are written at
//!    most once per `touch_interval`, so only then is a session surely idle, even one whose
//!    actor holds a fresher time in memory;
//! 2. delete rows that ended more than `session.retention` ago;
//! 3. tick every resident user actor, which ends its own expired sessions exactly (it knows
//!    the true last activity) and passivates if it has been idle for `actors.idle_passivate`.

use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::{SupervisorMsg, UserMsg};
use super::registry::Residents;
use super::user_actor::SessionPolicy;
use crate::store::DynStore;

/// How long news from other nodes is kept for actors that were loading when it came.
const RECENT_NEWS: std::time::Duration = std::time::Duration::from_secs(120);

pub struct SessionSupervisor;

pub struct SupervisorArgs {
    pub residents: Arc<Residents>,
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
}

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorArgs;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The timer task ends by itself once this actor stops and sends start failing.
        myself.send_interval(args.policy.sweep_interval, || SupervisorMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Sweep => sweep(state).await,
            SupervisorMsg::CountResidents(reply) => {
                let _ = reply.send(state.residents.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, cause) => {
                let user = state.residents.forget(cell.get_id());
                tracing::error!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    error = %cause, "user actor failed; next request reloads it from the store");
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let user = state.residents.forget(cell.get_id());
                tracing::debug!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    reason = ?reason, "user actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}

async fn sweep(state: &SupervisorArgs) {
    let now = Utc::now();
    let policy = &state.policy;
    // A slow or unreachable database must not stall supervision for long: bound the wait.
    let limit = policy.sweep_interval;
    let idle_cutoff = now - policy.idle_timeout - policy.touch_interval;
    metrics::counter!("finsec_sweeps_total").increment(1);
    let origin = policy.node_origin();
    match tokio::time::timeout(
        limit,
        state.store.expire_sessions(now, idle_cutoff, &origin),
    )
    .await
    {
        Ok(Ok(0)) => {}
        Ok(Ok(ended)) => {
            metrics::counter!("finsec_sweep_sessions_ended_total").increment(ended);
            tracing::info!(ended, "sweep ended expired sessions");
        }
        Ok(Err(err)) => tracing::warn!(error = %err, "sweep could not expire sessions"),
        Err(_) => tracing::warn!("sweep timed out expiring sessions"),
    }
    match tokio::time::timeout(limit, state.store.prune_sessions(now - policy.retention)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(pruned)) => tracing::info!(pruned, "sweep pruned ended sessions past retention"),
        Ok(Err(err)) => tracing::warn!(error = %err, "sweep could not prune sessions"),
        Err(_) => tracing::warn!("sweep timed out pruning sessions"),
    }
    // Failure records outlive their window and any lockout by this much at most.
    let stale = now - policy.throttle.rule().window - policy.throttle.rule().max_lockout;
    match tokio::time::timeout(limit, state.store.prune_failures(stale)).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "sweep could not prune failure records"),
        Err(_) => tracing::warn!("sweep timed out pruning failure records"),
    }
    match tokio::time::timeout(
        limit,
        state.store.prune_events(now - policy.audit_retention),
    )
    .await
    {
        Ok(Ok(0)) => {}
        Ok(Ok(pruned)) => tracing::info!(pruned, "sweep pruned audit events past retention"),
        Ok(Err(err)) => tracing::warn!(error = %err, "sweep could not prune audit events"),
        Err(_) => tracing::warn!("sweep timed out pruning audit events"),
    }
    // Other nodes' news is needed only while an actor that was loading could have missed it.
    state.residents.prune_recent(RECENT_NEWS);
    for actor in state.residents.actors() {
        // A closed mailbox means the actor is already stopping; nothing to tick.
        let _ = actor.cast(UserMsg::Tick);
    }
}
