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

use crate::domain::{Revocation, Session, SessionId, UserId};
use crate::store::{MySqlStore, Renewal, StoreError};
use std::collections::HashSet;

use bus::Bus;
use trust::Trust;

/// A change other nodes must learn about.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    /// These sessions ended (logout, revocation, password change, limit, deactivation).
    SessionsEnded { user: UserId, ids: Vec<SessionId> },
    /// These sessions ended, but the ending node could not write it to MySQL (it answered
    /// 503): every node that hears it keeps it in its own journal until it is written, so
    /// that no node reloads the sessions from the stale rows meanwhile.
    SessionsEndedUnwritten {
        user: UserId,
        ids: Vec<SessionId>,
        revocation: Revocation,
    },
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
        Ok(Self::of(Node {
            id,
            store,
            bus,
            trust,
            keeper: Some(keeper),
        }))
    }

    /// For the CLI: publishes and collects confirmations like a member, holds no lease.
    pub async fn client(config: &ClusterConfig, store: MySqlStore) -> Result<Self, ClusterError> {
        let id = format!("cli-{}", uuid::Uuid::new_v4());
        let trust = Arc::new(Trust::new(config.lease));
        let bus = Bus::connect(&config.bus_url, &config.name, &id, trust.clone(), None).await?;
        Ok(Self::of(Node {
            id,
            store,
            bus,
            trust,
            keeper: None,
        }))
    }

    fn of(node: Node) -> Self {
        Self {
            node: Some(Arc::new(node)),
        }
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
    /// can no longer be answering from memory. `Err` only when MySQL cannot be asked who the
    /// members are or fenced: then the caller must not acknowledge.
    ///
    /// The rule: publish; wait up to `ack_grace` for each live member's confirmation; fence
    /// the silent ones in MySQL (their leases can no longer be renewed), then wait until the
    /// lease each still holds has run out. A member that did not hear us, whether it is cut
    /// off, slow, or on a NATS server that lost its route, is thereby out of memory before
    /// we answer; a healthy one confirms in about a millisecond.
    pub async fn confirm(&self, event: ClusterEvent) -> Result<(), ClusterError> {
        if self.node.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let confirmed = self.confirm_on_bus(event).await;
        metrics::histogram!("finsec_cluster_confirm_duration_seconds")
            .record(crate::metrics::seconds(started.elapsed()));
        confirmed
    }

    async fn confirm_on_bus(&self, event: ClusterEvent) -> Result<(), ClusterError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let (_pending, mut heard) = node.bus.publish_for_confirmation(&event).await;
        // Whom to wait for, read after the commit (and after the publish: saves a round trip).
        // A node that registers later loads the committed state, as its actors reload when it
        // gains trust, so it needs no message.
        let lease = node.trust.lease();
        let mut awaited: HashSet<String> = bounded(lease, node.store.live_members(&node.id))
            .await?
            .into_iter()
            .map(|m| m.node_id)
            .collect();
        let grace = Instant::now() + ack_grace(lease);
        while !awaited.is_empty() {
            match tokio::time::timeout_at(grace, heard.recv()).await {
                Ok(Some(from)) => {
                    awaited.remove(&from);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if awaited.is_empty() {
            return Ok(());
        }
        let silent: Vec<String> = awaited.into_iter().collect();
        let fenced = bounded(lease, node.store.fence(&silent)).await?;
        let wait = fenced.iter().map(|m| m.remaining).max().unwrap_or_default();
        tracing::warn!(silent = ?silent, wait = ?wait,
            "members did not confirm; fenced, waiting out their leases");
        tokio::time::sleep(wait).await;
        Ok(())
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

/// A membership query within `limit`: a hanging database must not hang an acknowledgement.
async fn bounded<T>(
    limit: Duration,
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, query).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(ClusterError::Store(StoreError::Unavailable(
            format!("membership query took over {limit:?}").into(),
        ))),
    }
}

/// How long a confirmation is waited for before the silent member is fenced: far above a
/// healthy round trip (about a millisecond), far below a lease.
fn ack_grace(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_millis(500))
}

/// Every quarter lease: a heartbeat through the bus, and a lease renewal in MySQL for as long
/// as the bus stays proven (so a node cut off from the bus drops out of the membership when it
/// stops trusting its memory). Also: a fenced node stops trusting at once and rejoins (its
/// actors reload before they answer again), and a node that finds a single-node instance on
/// its database stops trusting memory and says so.
async fn keep_lease(id: String, store: MySqlStore, bus: Arc<Bus>, trust: Arc<Trust>) {
    let mut tick = tokio::time::interval(trust.lease() / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = host();
    let mut fenced = false;
    loop {
        tick.tick().await;
        bus.ping(&trust).await;
        let step = renew(&id, &host, &store, &trust, &mut fenced);
        match tokio::time::timeout(trust.lease() / 2, step).await {
            Ok(Ok(())) => {}
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

/// One renewal. `fenced` remembers that another node fenced us: we then forget our proof of
/// the bus (it missed a message) and rejoin only once a heartbeat sent after that has come
/// back, i.e. once the bus really carries our messages again.
async fn renew(
    id: &str,
    host: &str,
    store: &MySqlStore,
    trust: &Trust,
    fenced: &mut bool,
) -> Result<(), ClusterError> {
    if store.single_node_lock_is_held().await? {
        tracing::error!("a single-node instance holds this database; not answering from memory");
        trust.lease_lost();
        return Ok(store.mark_seen(id).await?);
    }
    // The lease granted never outlives the proof of the bus.
    let sent = trust.now();
    let grant = trust.bus_remaining();
    if grant.is_zero() {
        return Ok(store.mark_seen(id).await?);
    }
    match store.renew_lease(id, grant).await? {
        Renewal::Renewed => trust.lease_renewed(sent, grant),
        Renewal::Fenced if !*fenced => {
            tracing::warn!("fenced: another node's change did not reach us; resynchronising");
            *fenced = true;
            trust.lease_lost();
            trust.gap();
            store.mark_seen(id).await?;
        }
        // Fenced earlier, and the bus has been proven since: rejoin. Trust comes back with a
        // new epoch, so every actor reloads from MySQL before it answers from memory.
        Renewal::Fenced | Renewal::Missing => {
            *fenced = false;
            store.register_node(id, host, grant).await?;
            trust.lease_renewed(sent, grant);
        }
    }
    Ok(())
}

fn host() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into())
}
