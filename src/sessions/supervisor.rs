//! The parent of every user actor. A user actor that panics or stops is reported here
//! (ractor links children to their supervisor); the supervisor logs it and drops it from the
//! registry, so the next request for that user spawns a fresh actor that reloads the user's
//! sessions from the store. Nothing is lost: every acknowledged change was written through
//! before the reply, and an in-memory-only revocation is what the retry timer is for.
//!
//! ractor's default supervision stops the supervisor when any child stops; that would take
//! every user down with one, so it is overridden.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::SupervisorMsg;
use super::registry::Residents;

pub struct SessionSupervisor;

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = Arc<Residents>;
    type Arguments = Arc<Residents>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        residents: Arc<Residents>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(residents)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        residents: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::CountResidents(reply) => {
                let _ = reply.send(residents.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        residents: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, cause) => {
                let user = residents.forget(cell.get_id());
                tracing::error!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    error = %cause, "user actor failed; next request reloads it from the store");
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let user = residents.forget(cell.get_id());
                tracing::debug!(actor = %cell.get_id(), user_id = ?user.map(|u| u.get()),
                    reason = ?reason, "user actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}
