//! Several instances on one MySQL behaving as one service.
//!
//! MySQL stays the source of truth; what a node keeps in its user actors is a cache that may
//! be *incomplete* (a session opened elsewhere a moment ago: the actor checks MySQL before it
//! refuses an unknown id) but must never be *permissive* (a session ended elsewhere). Three
//! parts keep it so:
//!
//! - **Invalidations on the bus** ([`bus`]): after a change commits, its node publishes it and
//!   waits, before answering 200, until every live member has confirmed that it applied it.
//! - **Leases** ([`trust`] and the `cluster_nodes` table): a node answers from memory only
//!   while its lease is held and its subscription is proven gap-free. Otherwise it validates
//!   against MySQL. A member that does not confirm is waited for only until its lease must
//!   have run out, so a partitioned node delays an acknowledgement by at most `cluster.lease`.
//! - **Modes that never mix**: a node without a bus holds a MySQL named lock instead, and
//!   refuses to start beside clustered nodes (and they beside it).
//!
//! Layering: `sessions` → `cluster` → `store`. The cluster never names the sessions layer;
//! received invalidations go to an [`Apply`] that `sessions` implements.

mod bus;
pub mod trust;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::domain::{Session, SessionId, UserId};
use crate::store::{MySqlStore, StoreError};
use bus::{Awaited, Bus, Heard};
use trust::Trust;

/// A change other nodes must learn about.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// These sessions ended (logout, revocation, password change, limit, deactivation).
    SessionsEnded { user: UserId, ids: Vec<SessionId> },
    /// The user's row changed (deactivated, reactivated; later: factors): reload it.
    UserChanged { user: UserId },
    /// A session was opened: a hint, so the first request elsewhere needs no read.
    SessionOpened(Session),
}

/// Where received events go: the sessions layer. Called on the bus's receive task; it must
/// not block. When it returns, the change must be in force for every later request.
pub trait Apply: Send + Sync + 'static {
    fn apply(&self, event: ClusterEvent);
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster bus: {0}")]
    Bus(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Our own message did not come back through the bus in time: we cannot know that any
    /// node received it.
    #[error("the cluster bus did not route the change within {0:?}")]
    NotRouted(Duration),
    /// Start-up refused: the database is held in the other mode.
    #[error("{0}")]
    ModeConflict(String),
}

/// How a process takes part.
pub struct ClusterConfig {
    pub bus_url: String,
    pub name: String,
    pub lease: Duration,
}

/// This process's view of the cluster: standalone (memory store, or MySQL with the
/// single-node lock) or a member.
#[derive(Clone)]
pub struct Cluster {
    node: Option<Arc<Node>>,
}

struct Node {
    id: String,
    store: MySqlStore,
    bus: Arc<Bus>,
    trust: Arc<Trust>,
    /// The lease keeper; `None` for a CLI run, which confirms but is not a member.
    keeper: Option<JoinHandle<()>>,
}

impl Cluster {
    /// One process alone with its store: memory is always the truth.
    pub fn standalone() -> Self {
        Self { node: None }
    }

    /// Joins as a member: refuses while a single-node instance holds the database, registers
    /// a lease, connects to the bus and starts renewing (only while the bus is proven).
    pub async fn join(
        config: &ClusterConfig,
        store: MySqlStore,
        applier: Arc<dyn Apply>,
    ) -> Result<Self, ClusterError> {
        let id = uuid::Uuid::new_v4().to_string();
        let trust = Arc::new(Trust::new(config.lease));
        // Subscribed before registering: once other nodes count us in, we hear them.
        let bus = Bus::connect(
            &config.bus_url,
            &config.name,
            &id,
            trust.clone(),
            Some(applier),
        )
        .await?;
        // Register first, then look at the lock: a single-node instance takes the lock first
        // and then looks at this table, so of two racing starts at least one sees the other.
        let sent = trust.now();
        store.register_node(&id, &host(), config.lease).await?;
        trust.lease_renewed(sent, config.lease);
        if store.single_node_lock_is_held().await? {
            let _ = store.leave_cluster(&id).await;
            bus.close().await;
            return Err(ClusterError::ModeConflict(
                "a single-node instance (no cluster.bus_url) holds this database; stop it, or \
                 give it cluster.bus_url too"
                    .into(),
            ));
        }
        let keeper = tokio::spawn(keep_lease(
            id.clone(),
            store.clone(),
            bus.clone(),
            trust.clone(),
        ));
        tracing::info!(node_id = %id, lease = ?config.lease, "joined the cluster");
        Ok(Self {
            node: Some(Arc::new(Node {
                id,
                store,
                bus,
                trust,
                keeper: Some(keeper),
            })),
        })
    }

    /// For the CLI: publishes and collects confirmations like a member, holds no lease.
    pub async fn client(config: &ClusterConfig, store: MySqlStore) -> Result<Self, ClusterError> {
        let id = format!("cli-{}", uuid::Uuid::new_v4());
        let trust = Arc::new(Trust::new(config.lease));
        let bus = Bus::connect(&config.bus_url, &config.name, &id, trust.clone(), None).await?;
        Ok(Self {
            node: Some(Arc::new(Node {
                id,
                store,
                bus,
                trust,
                keeper: None,
            })),
        })
    }

    pub fn is_clustered(&self) -> bool {
        self.node.is_some()
    }

    pub fn node_id(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.id.as_str())
    }

    /// The trust epoch while this node may answer from memory; `None` while it must ask
    /// MySQL. A standalone process is always trusted (epoch 0).
    pub fn trust_epoch(&self) -> Option<u64> {
        match &self.node {
            None => Some(0),
            Some(node) => node.trust.current(),
        }
    }

    /// Publishes a committed change and returns once every live member has applied it, or
    /// could no longer be trusting its memory. `Err` when the bus did not even route it:
    /// then the caller must not acknowledge.
    pub async fn confirm(&self, event: ClusterEvent) -> Result<(), ClusterError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        // Whom to wait for: read after the commit. A node that registers later loads the
        // committed state (its actors reload when it gains trust), so it needs no message.
        let mut awaited: Awaited = node
            .store
            .live_members(&node.id)
            .await?
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        let lease = node.trust.lease();
        let (_pending, mut heard) = node.bus.publish_for_confirmation(&event).await;
        let started = Instant::now();
        let mut deadline = started + lease;
        let mut routed = false;
        loop {
            if routed && awaited.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, heard.recv()).await {
                Ok(Some(Heard::Echo)) => {
                    routed = true;
                    // The server routed it before we saw it come back. A member that never
                    // gets it receives nothing the server routes later, its own heartbeats
                    // included, so its trust ends within a lease from now.
                    deadline = Instant::now() + lease;
                }
                Ok(Some(Heard::Confirmed(from))) => {
                    awaited.remove(&from);
                }
                Ok(None) => return Err(ClusterError::Bus("confirmation channel closed".into())),
                Err(_) if !routed => return self.unrouted(node, lease).await,
                Err(_) => {
                    tracing::warn!(silent = ?awaited, waited = ?started.elapsed(),
                        "members did not confirm; their leases have run out, so they no longer answer from memory");
                    return Ok(());
                }
            }
        }
    }

    /// The bus did not route our message within a lease. If the bus is down for everyone, no
    /// node can renew its lease, so after a lease nobody answers from memory and the commit
    /// alone is in force everywhere. If some node still holds a lease, it hears a bus we
    /// cannot reach: we must not acknowledge.
    async fn unrouted(&self, node: &Node, lease: Duration) -> Result<(), ClusterError> {
        // A node's lease row ends with its proof of the bus (see `keep_lease`); one that lost
        // the bus a moment after we published may hold its row up to a lease longer.
        let give_up = Instant::now() + lease;
        loop {
            if node.store.live_members(&node.id).await?.is_empty() {
                tracing::warn!(
                    "bus down: no node holds a lease, so the change is in force through MySQL alone"
                );
                return Ok(());
            }
            if Instant::now() >= give_up {
                return Err(ClusterError::NotRouted(lease));
            }
            tokio::time::sleep(lease / 8).await;
        }
    }

    /// Publishes a hint nobody waits for.
    pub async fn announce(&self, event: ClusterEvent) {
        if let Some(node) = &self.node {
            node.bus.announce(&event).await;
        }
    }

    /// Clean shutdown: stop renewing, drop our row (nobody waits for us any more), close the
    /// bus connection.
    pub async fn leave(&self) {
        let Some(node) = &self.node else {
            return;
        };
        if let Some(keeper) = &node.keeper {
            keeper.abort();
            node.trust.lease_lost();
            if let Err(err) = node.store.leave_cluster(&node.id).await {
                tracing::warn!(error = %err, "could not remove this node's lease row");
            }
        }
        node.bus.close().await;
    }
}

/// Every quarter lease: a heartbeat through the bus, and a lease renewal in MySQL while the
/// bus is proven. A node cut off from the bus stops renewing, drops out of the membership
/// within a lease, and so stops delaying other nodes' acknowledgements.
async fn keep_lease(id: String, store: MySqlStore, bus: Arc<Bus>, trust: Arc<Trust>) {
    let mut tick = tokio::time::interval(trust.lease() / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = host();
    loop {
        tick.tick().await;
        bus.ping(trust.connection(), trust.now()).await;
        // The lease granted never outlives the proof of the bus: a node that stops hearing
        // the bus drops out of the membership when it stops trusting its memory, not later.
        let sent = trust.now();
        let grant = trust.bus_remaining();
        if grant.is_zero() {
            continue;
        }
        let renewed = tokio::time::timeout(trust.lease() / 2, async {
            if store.renew_lease(&id, grant).await? {
                Ok(())
            } else {
                store.register_node(&id, &host, grant).await
            }
        })
        .await;
        match renewed {
            Ok(Ok(())) => trust.lease_renewed(sent, grant),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "lease not renewed; validating against MySQL");
                trust.lease_lost();
            }
            Err(_) => {
                tracing::warn!("lease renewal timed out; validating against MySQL");
                trust.lease_lost();
            }
        }
    }
}

fn host() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into())
}
