//! Other nodes' changes, as they arrive on the bus: applied to this node's resident actors
//! before the bus confirms them.
//!
//! Applying is a cast into the user's mailbox, so every request that reaches the actor after
//! the confirmation is answered after the change. No resident actor: nothing to do, the next
//! one loads the committed state. An actor still loading is covered by
//! [`Residents::note_change`].

use std::sync::Arc;

use super::journal::Journal;
use super::messages::UserMsg;
use super::registry::Residents;
use crate::cluster::{Apply, ClusterEvent};
use crate::domain::{SessionId, UserId};

/// The sessions layer's side of the bus.
pub struct RemoteChanges {
    pub residents: Arc<Residents>,
    /// Where another node's unwritten revocations are kept, as this node's own would be.
    pub journal: Journal,
}

impl RemoteChanges {
    fn forget(&self, user: UserId, ids: Vec<SessionId>) {
        self.residents.note_change(user, &ids);
        if let Some(actor) = self.residents.actor_of(user) {
            // A closed mailbox means the actor is stopping; its successor loads later.
            let _ = actor.cast(UserMsg::Forget { ids });
        }
    }
}

impl Apply for RemoteChanges {
    fn apply(&self, event: ClusterEvent) {
        let residents = &self.residents;
        match event {
            ClusterEvent::SessionsEnded { user, ids } => self.forget(user, ids),
            ClusterEvent::SessionsEndedUnwritten {
                user,
                ids,
                revocation,
            } => {
                // Kept here too (and written by this node's writer once the store answers,
                // idempotently): should the ending node die before it writes it, this node
                // must not reload the sessions from the stale rows, nor after a restart.
                let journal = self.journal.clone();
                let kept = ids.clone();
                tokio::spawn(async move {
                    if let Err(err) = journal.record(user, kept, revocation).await {
                        tracing::error!(user_id = %user, error = %err,
                            "another node's unwritten revocation could not be journalled here");
                    }
                });
                self.forget(user, ids);
            }
            ClusterEvent::UserChanged { user } => {
                residents.note_change(user, &[]);
                if let Some(actor) = residents.actor_of(user) {
                    let _ = actor.cast(UserMsg::ReloadUser);
                }
            }
            ClusterEvent::SessionOpened(session) => {
                if let Some(actor) = residents.actor_of(session.user_id) {
                    let _ = actor.cast(UserMsg::Adopt {
                        session: Box::new(session),
                    });
                }
            }
        }
    }
}
