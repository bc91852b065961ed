//! Other nodes' changes, as they arrive on the bus: applied to this node's resident actors
//! before the bus confirms them.
//!
//! Applying is a cast into the user's mailbox, so every request that reaches the actor after
//! the confirmation is answered after the change. No resident actor: nothing to do, the next
//! one loads the committed state. An actor still loading is covered by
//! [`Residents::note_change`].

use std::sync::Arc;

use super::messages::UserMsg;
use super::registry::Residents;
use crate::cluster::{Apply, ClusterEvent};

/// The sessions layer's side of the bus.
pub struct RemoteChanges(pub Arc<Residents>);

impl Apply for RemoteChanges {
    fn apply(&self, event: ClusterEvent) {
        let residents = &self.0;
        match event {
            ClusterEvent::SessionsEnded { user, ids } => {
                residents.note_change(user, &ids);
                if let Some(actor) = residents.actor_of(user) {
                    // A closed mailbox means the actor is stopping; its successor loads later.
                    let _ = actor.cast(UserMsg::Forget { ids });
                }
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
