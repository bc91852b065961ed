//! Whether this node may answer from memory, as a few atomics read on every request.
//!
//! A clustered node trusts its memory only while both of these hold:
//! - **the bus is proven**: a heartbeat it sent, in the current connection, came back through
//!   its own subscription less than `cluster.lease` after it was sent. The echo proves the
//!   subscription is live at the server; anything the server routed before that heartbeat has
//!   reached us (one TCP stream, in order). Trust runs until *send time* + lease.
//! - **the lease is held**: its `cluster_nodes` row was renewed, and trust runs until the time
//!   the renewal was *sent* + lease, which is no later than the lease the database recorded.
//!   Other nodes read that row to know whose confirmation to wait for.
//!
//! A disconnect or a slow-consumer drop (a gap in what we received) ends trust at once.
//! Every time trust is regained the *epoch* moves on; a user actor whose memory was loaded
//! under an older epoch reloads it from MySQL before answering from it, because invalidations
//! may have been missed while the node was not trusted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Trust {
    base: Instant,
    lease: Duration,
    /// Nanoseconds since `base` until which the bus is proven (0: not proven).
    bus_until: AtomicU64,
    /// Nanoseconds since `base` until which the lease is held.
    lease_until: AtomicU64,
    /// Moves on each time trust is regained.
    epoch: AtomicU64,
    /// Moves on at each disconnect and reconnect; a heartbeat proves only its own connection.
    connection: AtomicU64,
    /// Writers (echo, renewal, gap) are rare; one at a time keeps the epoch rule exact.
    writer: Mutex<()>,
}

impl Trust {
    pub fn new(lease: Duration) -> Self {
        Self {
            base: Instant::now(),
            lease,
            bus_until: AtomicU64::new(0),
            lease_until: AtomicU64::new(0),
            epoch: AtomicU64::new(1),
            connection: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A point on this node's monotonic clock, as carried in heartbeats.
    pub fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The current epoch while memory may be trusted, `None` otherwise.
    pub fn current(&self) -> Option<u64> {
        let now = self.now();
        let until = self
            .bus_until
            .load(Ordering::SeqCst)
            .min(self.lease_until.load(Ordering::SeqCst));
        (now < until).then(|| self.epoch.load(Ordering::SeqCst))
    }

    /// How much longer the last heartbeat proves the subscription (zero: not proven).
    pub fn bus_remaining(&self) -> Duration {
        let left = self
            .bus_until
            .load(Ordering::SeqCst)
            .saturating_sub(self.now());
        Duration::from_nanos(left).min(self.lease)
    }

    /// The connection generation a heartbeat sent now belongs to.
    pub fn connection(&self) -> u64 {
        self.connection.load(Ordering::SeqCst)
    }

    /// Our own heartbeat came back. It proves the bus only if it was sent on the current
    /// connection and is still younger than a lease.
    pub fn heartbeat_echoed(&self, connection: u64, sent: u64) {
        let _writer = self.lock();
        if connection != self.connection() {
            return;
        }
        self.extend(&self.bus_until, sent.saturating_add(nanos(self.lease)));
    }

    /// The lease row was renewed for `granted` by a statement sent at `sent`: the database
    /// recorded an end no earlier than `sent + granted`.
    pub fn lease_renewed(&self, sent: u64, granted: Duration) {
        let _writer = self.lock();
        self.extend(&self.lease_until, sent.saturating_add(nanos(granted)));
    }

    /// The lease could not be renewed: stop trusting at once rather than at its end, since
    /// we no longer know whether other nodes count us in.
    pub fn lease_lost(&self) {
        let _writer = self.lock();
        self.lease_until.store(0, Ordering::SeqCst);
    }

    /// A disconnect, a reconnect or dropped messages: what we hold may be missing an
    /// invalidation. Trust ends now; only a heartbeat sent after this can restore it.
    pub fn gap(&self) {
        let _writer = self.lock();
        self.connection.fetch_add(1, Ordering::SeqCst);
        self.bus_until.store(0, Ordering::SeqCst);
    }

    /// Moves `field` forward to `until`; if that turns an untrusted node trusted, the epoch
    /// moves on *before* the new deadline is visible, so no reader can see trust with the
    /// old epoch.
    fn extend(&self, field: &AtomicU64, until: u64) {
        let now = self.now();
        let was_trusted = self.current().is_some();
        if until <= field.load(Ordering::SeqCst) {
            return;
        }
        let other = if std::ptr::eq(field, &self.bus_until) {
            &self.lease_until
        } else {
            &self.bus_until
        };
        let becomes_trusted = now < until.min(other.load(Ordering::SeqCst));
        if becomes_trusted && !was_trusted {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        field.store(until, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_needs_both_a_proven_bus_and_a_lease() {
        let trust = Trust::new(Duration::from_secs(2));
        assert_eq!(trust.current(), None);
        trust.lease_renewed(trust.now(), trust.lease());
        assert_eq!(trust.current(), None, "lease alone");
        trust.heartbeat_echoed(trust.connection(), trust.now());
        let epoch = trust.current().expect("both");
        trust.heartbeat_echoed(trust.connection(), trust.now());
        assert_eq!(
            trust.current(),
            Some(epoch),
            "staying trusted keeps the epoch"
        );
    }

    #[test]
    fn a_gap_ends_trust_and_regaining_it_moves_the_epoch() {
        let trust = Trust::new(Duration::from_secs(2));
        trust.lease_renewed(trust.now(), trust.lease());
        let connection = trust.connection();
        trust.heartbeat_echoed(connection, trust.now());
        let before = trust.current().unwrap();

        trust.gap();
        assert_eq!(trust.current(), None);
        // A heartbeat sent on the old connection (buffered across the reconnect) proves nothing.
        trust.heartbeat_echoed(connection, trust.now());
        assert_eq!(trust.current(), None);

        trust.heartbeat_echoed(trust.connection(), trust.now());
        let after = trust.current().unwrap();
        assert!(after > before, "epoch {after} after {before}");
    }

    #[test]
    fn an_old_heartbeat_or_a_lost_lease_does_not_trust() {
        let trust = Trust::new(Duration::from_millis(50));
        trust.lease_renewed(trust.now(), trust.lease());
        let sent = trust.now();
        std::thread::sleep(Duration::from_millis(60));
        trust.heartbeat_echoed(trust.connection(), sent);
        assert_eq!(
            trust.current(),
            None,
            "echo of a heartbeat older than the lease"
        );

        let trust = Trust::new(Duration::from_secs(2));
        trust.lease_renewed(trust.now(), trust.lease());
        trust.heartbeat_echoed(trust.connection(), trust.now());
        trust.lease_lost();
        assert_eq!(trust.current(), None);
    }
}
