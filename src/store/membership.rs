//! Who may answer from memory, kept in MySQL (the one place every node and the CLI can see):
//! the `cluster_nodes` lease table for clustered nodes, and a named lock (`GET_LOCK`) held by
//! a single-node instance for its lifetime.
//!
//! Lease times use the database's clock (`UTC_TIMESTAMP(6)`), never a node's: one clock, so
//! skew between machines cannot make two nodes disagree about whose lease is live. A reader
//! gets each lease as *time remaining*, which it turns into a deadline on its own monotonic
//! clock.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::mysql::unavailable;
use super::{MySqlStore, StoreError};

/// A clustered node marks itself seen every quarter lease, bus or no bus; one seen within this
/// long is taken to be running (a single-node instance refuses to start beside it).
pub const CLUSTER_PRESENCE: Duration = Duration::from_secs(60);

/// The named lock is per database: `GET_LOCK` names are server-wide.
const LOCK_NAME: &str = "CONCAT('finsec.single-node.', DATABASE())";

/// A clustered node whose lease has not run out, and how long it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMember {
    pub node_id: String,
    pub remaining: Duration,
}

/// What became of a lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Another node fenced us: we missed a change it published. Stop trusting memory.
    Fenced,
    /// No row (pruned after a long silence).
    Missing,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl MySqlStore {
    /// Adds (or refreshes) this node's row with a lease of `lease` from now.
    pub async fn register_node(
        &self,
        node_id: &str,
        host: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "INSERT INTO cluster_nodes (node_id, host, started_at, lease_until, seen_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
             UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE lease_until = VALUES(lease_until), fenced = FALSE, \
             seen_at = VALUES(seen_at)",
            (node_id, host, micros(lease)),
        )
        .await
        .map_err(unavailable)
    }

    /// Extends this node's lease to `lease` from now, unless it has been fenced.
    pub async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<Renewal, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE cluster_nodes SET lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
             seen_at = UTC_TIMESTAMP(6) WHERE node_id = ? AND NOT fenced",
            (micros(lease), node_id),
        )
        .await
        .map_err(unavailable)?;
        if conn.affected_rows() == 1 {
            return Ok(Renewal::Renewed);
        }
        let fenced: Option<bool> = conn
            .exec_first(
                "SELECT fenced FROM cluster_nodes WHERE node_id = ?",
                (node_id,),
            )
            .await
            .map_err(unavailable)?;
        Ok(match fenced {
            Some(true) => Renewal::Fenced,
            _ => Renewal::Missing,
        })
    }

    /// "Still running", whatever the bus does (a node without a bus renews no lease).
    pub async fn mark_seen(&self, node_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE cluster_nodes SET seen_at = UTC_TIMESTAMP(6) WHERE node_id = ?",
            (node_id,),
        )
        .await
        .map_err(unavailable)
    }

    /// True when some clustered node was running within `within` (its lease may have lapsed
    /// in a bus outage, but it still serves requests).
    pub async fn cluster_recently_seen(&self, within: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let seen: Option<i64> = conn
            .exec_first(
                "SELECT 1 FROM cluster_nodes \
                 WHERE seen_at > UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT 1",
                (micros(within),),
            )
            .await
            .map_err(unavailable)?;
        Ok(seen.is_some())
    }

    /// Fences `nodes`: their leases can no longer be renewed. Returns how long each still
    /// holds (read after the fence, so no renewal can extend it any more).
    pub async fn fence(&self, nodes: &[String]) -> Result<Vec<LiveMember>, StoreError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; nodes.len()].join(", ");
        let params: Vec<mysql_async::Value> = nodes.iter().map(|n| n.as_str().into()).collect();
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!("UPDATE cluster_nodes SET fenced = TRUE WHERE node_id IN ({placeholders})"),
            params.clone(),
        )
        .await
        .map_err(unavailable)?;
        let rows: Vec<(String, i64)> = conn
            .exec(
                format!(
                    "SELECT node_id, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) \
                     FROM cluster_nodes WHERE node_id IN ({placeholders})"
                ),
                params,
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(member).collect())
    }

    /// Every node with a live lease, but `except` (the asker). Fenced nodes are included: until
    /// their lease runs out they may still answer from memory.
    pub async fn live_members(&self, except: &str) -> Result<Vec<LiveMember>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(String, i64)> = conn
            .exec(
                "SELECT node_id, TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), lease_until) \
                 FROM cluster_nodes WHERE lease_until > UTC_TIMESTAMP(6) AND node_id <> ?",
                (except,),
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(member).collect())
    }

    /// Removes this node's row (clean shutdown), so nobody waits for its confirmations.
    pub async fn leave_cluster(&self, node_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop("DELETE FROM cluster_nodes WHERE node_id = ?", (node_id,))
            .await
            .map_err(unavailable)?;
        // Rows of nodes that died long ago are noise for operators; a day is plenty.
        conn.query_drop(
            "DELETE FROM cluster_nodes WHERE lease_until < UTC_TIMESTAMP(6) - INTERVAL 1 DAY",
        )
        .await
        .map_err(unavailable)
    }

    /// Takes the single-node lock on a connection of its own, held until the guard is
    /// released. `None` when another process holds it.
    pub async fn hold_single_node_lock(&self) -> Result<Option<SingleNodeLock>, StoreError> {
        let mut conn = mysql_async::Conn::new(self.opts().clone())
            .await
            .map_err(unavailable)?;
        let got: Option<Option<i64>> = conn
            .query_first(format!("SELECT GET_LOCK({LOCK_NAME}, 0)"))
            .await
            .map_err(unavailable)?;
        if got.flatten() == Some(1) {
            Ok(Some(SingleNodeLock { conn }))
        } else {
            let _ = conn.disconnect().await;
            Ok(None)
        }
    }

    /// True when a single-node instance (or a CLI writing in its place) holds the lock.
    pub async fn single_node_lock_is_held(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let free: Option<Option<i64>> = conn
            .query_first(format!("SELECT IS_FREE_LOCK({LOCK_NAME})"))
            .await
            .map_err(unavailable)?;
        Ok(free.flatten() != Some(1))
    }
}

fn member((node_id, remaining): (String, i64)) -> LiveMember {
    LiveMember {
        node_id,
        remaining: Duration::from_micros(remaining.max(0).unsigned_abs()),
    }
}

/// The single-node lock, held by its own connection: MySQL frees it when that connection
/// ends, so a killed process never leaves it behind.
pub struct SingleNodeLock {
    conn: mysql_async::Conn,
}

impl SingleNodeLock {
    /// True while this connection still holds the lock (a database restart loses it).
    pub async fn is_held(&mut self) -> bool {
        let held: Result<Option<Option<i64>>, _> = self
            .conn
            .query_first(format!(
                "SELECT IS_USED_LOCK({LOCK_NAME}) = CONNECTION_ID()"
            ))
            .await;
        matches!(held, Ok(Some(Some(1))))
    }

    pub async fn release(mut self) {
        let _ = self
            .conn
            .query_drop(format!("DO RELEASE_LOCK({LOCK_NAME})"))
            .await;
        let _ = self.conn.disconnect().await;
    }
}
