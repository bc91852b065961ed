//! The periodic database sweep, an actor of its own so that a slow or unreachable database
//! delays nothing but the sweep: supervision (restarting failed user actors) and the ticks
//! that let resident actors expire their sessions exactly run in the supervisor, which never
//! waits on the store.
//!
//! Every `session.sweep_interval`, in the store:
//! 1. end sessions past their absolute end, and sessions whose *stored* `last_seen_at` is
//!    older than `idle_timeout + touch_interval`: touches are written at most once per
//!    `touch_interval`, so only then is a session surely idle, even one whose actor holds a
//!    fresher time in memory;
//! 2. delete sessions that ended more than `session.retention` ago, failure records past
//!    their window and lockout, and audit events past `audit.retention`;
//! 3. count the sessions not ended, for the `finsec_live_sessions` gauge.
//!
//! Each call is bounded by `sweep_interval`, and the next sweep is scheduled only when this
//! one has finished: a database that hangs makes sweeps rarer, never a queue of them.

use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::user_actor::SessionPolicy;
use crate::store::{DynStore, StoreError};

pub struct Sweeper;

/// The sweeper's one message: its own timer.
pub enum SweeperMsg {
    Sweep,
}

pub struct SweeperArgs {
    pub store: DynStore,
    pub policy: Arc<SessionPolicy>,
}

impl Actor for Sweeper {
    type Msg = SweeperMsg;
    type State = SweeperArgs;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SweeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(args.policy.sweep_interval, || SweeperMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweeperMsg::Sweep => {
                sweep(state).await;
                myself.send_after(state.policy.sweep_interval, || SweeperMsg::Sweep);
            }
        }
        Ok(())
    }
}

async fn sweep(state: &SweeperArgs) {
    let now = Utc::now();
    let policy = &state.policy;
    metrics::counter!("finsec_sweeps_total").increment(1);
    let idle_cutoff = now - policy.idle_timeout - policy.touch_interval;
    let origin = policy.node_origin();
    let limit = policy.sweep_interval;
    let store = &state.store;
    let ended = step(
        limit,
        "ended expired sessions",
        store.expire_sessions(now, idle_cutoff, &origin),
    )
    .await;
    metrics::counter!("finsec_sweep_sessions_ended_total").increment(ended);
    step(
        limit,
        "pruned ended sessions past retention",
        store.prune_sessions(now - policy.retention),
    )
    .await;
    // Failure records outlive their window and any lockout by this much at most.
    let stale = now - policy.throttle.rule().window - policy.throttle.rule().max_lockout;
    step(
        limit,
        "pruned stale failure records",
        store.prune_failures(stale),
    )
    .await;
    step(
        limit,
        "pruned audit events past retention",
        store.prune_events(now - policy.audit_retention),
    )
    .await;
    // Every node sets the same number (max() across instances in a dashboard).
    match tokio::time::timeout(limit, store.count_live_sessions()).await {
        Ok(Ok(live)) => metrics::gauge!("finsec_live_sessions").set(live as f64),
        Ok(Err(err)) => tracing::warn!(error = %err, "sweep could not count live sessions"),
        Err(_) => tracing::warn!("sweep timed out counting live sessions"),
    }
}

/// One store call of the sweep, at most `limit` long, that ends or deletes rows; returns how
/// many (0 when it failed: that is logged and the sweep goes on; the next one tries again).
async fn step(
    limit: std::time::Duration,
    done: &'static str,
    call: impl Future<Output = Result<u64, StoreError>>,
) -> u64 {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(0)) => 0,
        Ok(Ok(count)) => {
            tracing::info!(count, "sweep {done}");
            count
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "sweep failed ({done})");
            0
        }
        Err(_) => {
            tracing::warn!("sweep timed out ({done})");
            0
        }
    }
}
