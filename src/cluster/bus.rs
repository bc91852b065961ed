//! The wire: one core-NATS subject per cluster for events (`<name>.events`), one per node for
//! the confirmations it collects (`<name>.acks.<node>`). Messages are small JSON envelopes.
//!
//! Why core NATS and not a JetStream stream: MySQL already is the durable log. What a node
//! needs from the bus is "every change after my subscription became live", and proof that its
//! subscription *is* live; a missed message is repaired by reloading from MySQL (the trust
//! epoch, see [`super::trust`]), not by replaying a second log. Core NATS gives that with one
//! round trip and no disk on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::trust::Trust;
use super::{Apply, ClusterError, ClusterEvent};
use crate::domain::{Device, RevocationRecord, Session, SessionId, UserId};

/// What travels on `<name>.events`.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending node (or CLI run).
    from: String,
    /// Set when the sender waits for confirmations; receivers answer on the message's reply
    /// subject with this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<u64>,
    event: Wire,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    /// A heartbeat: only its sender reads it, as proof that its subscription is live.
    /// `connects` is the client's connection count when it was sent: a ping buffered across
    /// a reconnect proves nothing about the new connection.
    Ping {
        connection: u64,
        connects: u64,
        sent: u64,
    },
    SessionsEnded {
        user: UserId,
        ids: Vec<SessionId>,
    },
    UserChanged {
        user: UserId,
    },
    SessionOpened {
        session: WireSession,
    },
    SessionsEndedUnwritten {
        user: UserId,
        ids: Vec<SessionId>,
        revocation: RevocationRecord,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireSession {
    id: SessionId,
    user: UserId,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    user_agent: Option<String>,
    ip: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Ack {
    from: String,
    id: u64,
}

pub(super) struct Bus {
    client: async_nats::Client,
    node_id: String,
    events: String,
    acks: String,
    /// Broadcasts waiting for confirmations: id → where to report each confirming node.
    pending: DashMap<u64, mpsc::UnboundedSender<String>>,
    next_id: AtomicU64,
}

impl Bus {
    /// Connects and subscribes. The connection reconnects by itself forever; every
    /// disconnect, reconnect or dropped message is reported to `trust` as a gap.
    pub(super) async fn connect(
        url: &str,
        name: &str,
        node_id: &str,
        trust: Arc<Trust>,
        applier: Option<Arc<dyn Apply>>,
    ) -> Result<Arc<Self>, ClusterError> {
        let gaps = trust.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("finsec-{node_id}"))
            // A silent link is noticed within a lease or two, not NATS's default two minutes.
            .ping_interval(trust.lease().max(std::time::Duration::from_secs(1)))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let gaps = gaps.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            gaps.gap();
                            tracing::info!("cluster bus connected");
                        }
                        async_nats::Event::Disconnected => {
                            gaps.gap();
                            tracing::warn!("cluster bus disconnected; validating against MySQL");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            gaps.gap();
                            tracing::warn!("cluster bus dropped messages; resynchronising");
                        }
                        other => tracing::debug!(event = %other, "cluster bus event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let bus = Arc::new(Self {
            client,
            node_id: node_id.to_owned(),
            events: format!("{name}.events"),
            acks: format!("{name}.acks.{node_id}"),
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
        });
        let events = bus
            .client
            .subscribe(bus.events.clone())
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let acks = bus
            .client
            .subscribe(bus.acks.clone())
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        tokio::spawn(receive_events(bus.clone(), events, trust, applier));
        tokio::spawn(receive_acks(bus.clone(), acks));
        Ok(bus)
    }

    pub(super) async fn ping(&self, trust: &Trust) {
        let ping = Wire::Ping {
            connection: trust.connection(),
            connects: self.connects(),
            sent: trust.now(),
        };
        self.send(None, ping).await;
    }

    /// How many times the client has connected: it moves on at every reconnect, at once (the
    /// event callback that also reports it runs later, on another task).
    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Publishes `event` for confirmation; the ids of the nodes that confirm arrive on the
    /// receiver.
    pub(super) async fn publish_for_confirmation(
        &self,
        event: &ClusterEvent,
    ) -> (PendingGuard<'_>, mpsc::UnboundedReceiver<String>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending.insert(id, tx);
        self.send(Some(id), Wire::from(event)).await;
        (PendingGuard { bus: self, id }, rx)
    }

    /// Publishes `event` with nobody waiting (a new session: a hint that saves a read).
    pub(super) async fn announce(&self, event: &ClusterEvent) {
        self.send(None, Wire::from(event)).await;
    }

    async fn send(&self, ack: Option<u64>, event: Wire) {
        let envelope = Envelope {
            from: self.node_id.clone(),
            ack,
            event,
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "cluster message not encodable");
                return;
            }
        };
        let started = std::time::Instant::now();
        let sent = match ack {
            Some(_) => {
                self.client
                    .publish_with_reply(self.events.clone(), self.acks.clone(), payload.into())
                    .await
            }
            None => {
                self.client
                    .publish(self.events.clone(), payload.into())
                    .await
            }
        };
        metrics::histogram!("finsec_bus_publish_duration_seconds")
            .record(crate::metrics::seconds(started.elapsed()));
        if let Err(err) = sent {
            metrics::counter!("finsec_bus_publish_errors_total").increment(1);
            tracing::warn!(error = %err, "cluster publish failed");
        }
    }

    pub(super) async fn close(&self) {
        let _ = self.client.drain().await;
    }
}

/// Forgets a broadcast's pending entry when its waiter is done (or dropped).
pub(super) struct PendingGuard<'a> {
    bus: &'a Bus,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.bus.pending.remove(&self.id);
    }
}

async fn receive_events(
    bus: Arc<Bus>,
    mut events: async_nats::Subscriber,
    trust: Arc<Trust>,
    applier: Option<Arc<dyn Apply>>,
) {
    let mut connects = bus.connects();
    while let Some(message) = events.next().await {
        // A reconnect we have not been told of yet: whatever was published meanwhile is lost
        // to us. Noticed here, before this message is applied or a ping believed.
        let now_connects = bus.connects();
        if now_connects != connects {
            connects = now_connects;
            trust.gap();
        }
        let envelope: Envelope = match serde_json::from_slice(&message.payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(error = %err, "unreadable cluster message ignored");
                continue;
            }
        };
        if envelope.from == bus.node_id {
            if let Wire::Ping {
                connection,
                connects: sent_on,
                sent,
            } = envelope.event
                && sent_on == connects
            {
                trust.heartbeat_echoed(connection, sent);
            }
            continue;
        }
        let Some(event) = envelope.event.into_event() else {
            continue; // another node's heartbeat
        };
        // Applying is a few map operations and casts into actor mailboxes: once it returns,
        // every later request on this node is answered after the change.
        if let Some(applier) = &applier {
            applier.apply(event);
        }
        if let (Some(id), Some(reply)) = (envelope.ack, message.reply) {
            let ack = Ack {
                from: bus.node_id.clone(),
                id,
            };
            if let Ok(payload) = serde_json::to_vec(&ack)
                && let Err(err) = bus.client.publish(reply, payload.into()).await
            {
                tracing::warn!(error = %err, "cluster confirmation not sent");
            }
        }
    }
}

async fn receive_acks(bus: Arc<Bus>, mut acks: async_nats::Subscriber) {
    while let Some(message) = acks.next().await {
        let Ok(ack) = serde_json::from_slice::<Ack>(&message.payload) else {
            continue;
        };
        if let Some(waiter) = bus.pending.get(&ack.id) {
            let _ = waiter.send(ack.from);
        }
    }
}

impl From<&ClusterEvent> for Wire {
    fn from(event: &ClusterEvent) -> Self {
        match event {
            ClusterEvent::SessionsEnded { user, ids } => Self::SessionsEnded {
                user: *user,
                ids: ids.clone(),
            },
            ClusterEvent::SessionsEndedUnwritten {
                user,
                ids,
                revocation,
            } => Self::SessionsEndedUnwritten {
                user: *user,
                ids: ids.clone(),
                revocation: revocation.into(),
            },
            ClusterEvent::UserChanged { user } => Self::UserChanged { user: *user },
            ClusterEvent::SessionOpened(s) => Self::SessionOpened {
                session: WireSession {
                    id: s.id,
                    user: s.user_id,
                    created_at: s.created_at,
                    last_seen_at: s.last_seen_at,
                    expires_at: s.expires_at,
                    user_agent: s.device.user_agent.clone(),
                    ip: s.device.ip.clone(),
                },
            },
        }
    }
}

impl Wire {
    fn into_event(self) -> Option<ClusterEvent> {
        Some(match self {
            Self::Ping { .. } => return None,
            Self::SessionsEnded { user, ids } => ClusterEvent::SessionsEnded { user, ids },
            Self::SessionsEndedUnwritten {
                user,
                ids,
                revocation,
            } => match revocation.parse() {
                Some(revocation) => ClusterEvent::SessionsEndedUnwritten {
                    user,
                    ids,
                    revocation,
                },
                // Still ended, whatever the details: at least forget them.
                None => ClusterEvent::SessionsEnded { user, ids },
            },
            Self::UserChanged { user } => ClusterEvent::UserChanged { user },
            Self::SessionOpened { session: s } => ClusterEvent::SessionOpened(Session {
                id: s.id,
                user_id: s.user,
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                revoked_at: None,
                revoke_reason: None,
                revoke_note: None,
                device: Device {
                    user_agent: s.user_agent,
                    ip: s.ip,
                },
            }),
        })
    }
}
