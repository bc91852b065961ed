//! Building and running the service: [`Application::build`] opens the store, starts the
//! session actors and binds the listener (port 0 picks a free port, which is how every test
//! runs its own server); [`Application::run_until_stopped`] serves until the shutdown future
//! resolves, then stops the actors and closes the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use warp::Filter;

use crate::auth::{AuthError, PasswordHasher, TokenIssuer};
use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::domain::FailureRule;
use crate::http::{self, AdminKey, AppState};
use crate::seed::{self, SeedError};
use crate::sessions::journal::Journal;
use crate::sessions::user_actor::OutageGrace;
use crate::sessions::{
    RemoteChanges, Residents, SessionError, SessionPolicy, Sessions, SessionsConfig, Throttle,
};
use crate::store::{
    Bounded, CLUSTER_PRESENCE, DynStore, MemoryStore, MySqlStore, Reachability, SingleNodeLock,
    StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("password hasher: {0}")]
    Hasher(#[from] AuthError),
    #[error("seeding demo users: {0}")]
    Seed(#[from] SeedError),
    #[error("session actors: {0}")]
    Sessions(#[from] SessionError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("config: {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("jwt signing keys: {0}")]
    Keys(#[from] crate::auth::keys::KeyError),
    #[error("{0}")]
    Journal(#[from] crate::sessions::journal::JournalError),
    /// Another single-node instance, or clustered nodes, already serve this database.
    #[error("{0}")]
    DatabaseInUse(String),
}

impl StartupError {
    /// Refusals to start beside other instances get their own exit code, so that scripts and
    /// orchestrators can tell "in use" from "broken".
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::DatabaseInUse(_) | Self::Cluster(ClusterError::ModeConflict(_)) => 3,
            _ => 1,
        }
    }
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    store: DynStore,
    /// Holds the single-node lock of an instance on MySQL without a bus, for its whole life.
    lock_keeper: Option<LockKeeper>,
    /// Set when another instance took the database from under us; the service then stops.
    database_lost: Arc<AtomicBool>,
    limits: http::server::Limits,
}

/// Keeps the single-node lock: a database restart or a dropped connection frees it silently,
/// so it is checked every few seconds (which also keeps its connection from idling out) and
/// taken again. If another instance got it meanwhile, this one stops: two single nodes on one
/// database would not hear each other's revocations.
struct LockKeeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    lost: Arc<tokio::sync::Notify>,
}

impl LockKeeper {
    const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn start(lock: SingleNodeLock, mysql: MySqlStore, lost_flag: Arc<AtomicBool>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let lost = Arc::new(tokio::sync::Notify::new());
        let notify = lost.clone();
        let task = tokio::spawn(async move {
            let mut lock = lock;
            let mut tick = tokio::time::interval(Self::CHECK_EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        lock.release().await;
                        return;
                    }
                    _ = tick.tick() => {}
                }
                if lock.is_held().await {
                    continue;
                }
                match mysql.hold_single_node_lock().await {
                    Ok(Some(again)) => {
                        tracing::warn!(
                            "the single-node lock was lost (database restart?) and is held again"
                        );
                        lock = again;
                    }
                    Ok(None) => {
                        tracing::error!(
                            "another instance took this database's single-node lock; stopping"
                        );
                        lost_flag.store(true, Ordering::SeqCst);
                        notify.notify_one();
                        return;
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot check the single-node lock"),
                }
            }
        });
        Self { stop, task, lost }
    }

    async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// How this process shares its database: the topology decided at start.
struct Topology {
    store: DynStore,
    /// When MySQL last answered (`None`: the embedded store, which always does).
    reachability: Option<Arc<Reachability>>,
    /// Revocations whose write failed, this node's and those other nodes told of.
    journal: Journal,
    residents: Arc<Residents>,
    cluster: Cluster,
    single_node_lock: Option<(SingleNodeLock, MySqlStore)>,
}

impl Topology {
    fn standalone(store: DynStore) -> Self {
        Self {
            store,
            reachability: None,
            journal: Journal::in_memory(),
            residents: Arc::new(Residents::default()),
            cluster: Cluster::standalone(),
            single_node_lock: None,
        }
    }

    /// Memory: one process, nothing to share. MySQL without a bus: the single-node lock, and
    /// no clustered node may be live. MySQL with a bus: a cluster member.
    async fn open(settings: &Settings) -> Result<Self, StartupError> {
        if settings.database.is_memory() {
            return Ok(Self::standalone(Arc::new(MemoryStore::new())));
        }
        let residents = Arc::new(Residents::default());
        let mysql = MySqlStore::connect(
            settings.database.url.expose_secret(),
            settings.database.max_connections,
        )
        .await?;
        mysql.migrate().await?;
        // Before the bus: what other nodes tell of goes into it from the first message.
        let journal = open_journal(settings).await?;
        let (cluster, single_node_lock) = match settings.cluster.bus_url() {
            Some(bus_url) => {
                let config = ClusterConfig {
                    bus_url: bus_url.to_owned(),
                    name: settings.cluster.name.clone(),
                    lease: settings.cluster.lease,
                };
                let applier = Arc::new(RemoteChanges {
                    residents: residents.clone(),
                    journal: journal.clone(),
                });
                (Cluster::join(&config, mysql.clone(), applier).await?, None)
            }
            None => (
                Cluster::standalone(),
                Some((hold_database_alone(&mysql).await?, mysql.clone())),
            ),
        };
        let reachability = Arc::new(Reachability::new());
        let bounded = Bounded::new(
            Arc::new(mysql),
            settings.database.timeout,
            reachability.clone(),
        );
        Ok(Self {
            store: Arc::new(bounded),
            reachability: Some(reachability),
            journal,
            residents,
            cluster,
            single_node_lock,
        })
    }
}

/// A single node takes the named lock, then checks that no clustered node is live (a
/// clustered node registers, then checks the lock: of two racing starts one sees the other).
async fn hold_database_alone(mysql: &MySqlStore) -> Result<SingleNodeLock, StartupError> {
    let Some(lock) = mysql.hold_single_node_lock().await? else {
        return Err(StartupError::DatabaseInUse(
            "another instance holds this database; set cluster.bus_url (e.g. \
             FINSEC__CLUSTER__BUS_URL=nats://127.0.0.1:4222) on every instance to run several"
                .into(),
        ));
    };
    // Running, not only leased: a clustered node in a bus outage holds no lease but still
    // serves, and would not hear this instance's revocations.
    if mysql.cluster_recently_seen(CLUSTER_PRESENCE).await? {
        lock.release().await;
        return Err(StartupError::DatabaseInUse(
            "clustered instances are live on this database; this one needs cluster.bus_url \
             to join them"
                .into(),
        ));
    }
    Ok(lock)
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let topology = Topology::open(settings).await?;
        Self::build_on(settings, topology).await
    }

    /// Like [`build`](Self::build), alone on a store that is already open (benchmarks, tools).
    pub async fn build_with_store(
        settings: &Settings,
        store: DynStore,
    ) -> Result<Self, StartupError> {
        Self::build_on(settings, Topology::standalone(store)).await
    }

    async fn build_on(settings: &Settings, topology: Topology) -> Result<Self, StartupError> {
        // First: what is built next records into it, and may take its metric handles once.
        let metrics = crate::metrics::install();
        let hasher = PasswordHasher::new(&settings.password).await?;
        let keyring = Arc::new(open_keyring(settings)?);
        let store = topology.store;
        // The second half of migration V6: secrets still in clear are sealed (SQL cannot).
        let sealed = store.reseal_secrets(&keyring, true).await?;
        if sealed > 0 {
            tracing::info!(sealed, "TOTP secrets found in clear were encrypted");
        }
        if settings.database.is_memory() {
            // The embedded store starts empty every time; give it the demo users.
            for line in seed::ensure_demo_users(store.as_ref(), &hasher, &keyring).await? {
                tracing::info!(email = %line.email, "demo user ready");
            }
        }
        let node_id = topology
            .cluster
            .node_id()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let session = &settings.session;
        let policy = SessionPolicy {
            max_lifetime: chrono_duration(session.max_lifetime, "session.max_lifetime")?,
            idle_timeout: chrono_duration(session.idle_timeout, "session.idle_timeout")?,
            touch_interval: chrono_duration(session.touch_interval, "session.touch_interval")?,
            max_per_user: session.max_per_user,
            mfa_challenge_ttl: chrono_duration(
                settings.auth.mfa_challenge_ttl,
                "auth.mfa_challenge_ttl",
            )?,
            mfa_max_attempts: settings.auth.mfa_max_attempts,
            revoke_retry: settings.actors.revoke_retry,
            idle_passivate: chrono_duration(
                settings.actors.idle_passivate,
                "actors.idle_passivate",
            )?,
            idle_hibernate: chrono_duration(
                settings.actors.idle_hibernate,
                "actors.idle_hibernate",
            )?,
            sweep_interval: session.sweep_interval,
            retention: chrono_duration(session.retention, "session.retention")?,
            user_refresh: chrono_duration(settings.cluster.user_refresh, "cluster.user_refresh")?,
            throttle: Arc::new(Throttle::new(
                settings.jwt.secret.expose_secret().as_bytes(),
                FailureRule {
                    max_failures: settings.security.max_failures,
                    window: chrono_duration(
                        settings.security.failure_window,
                        "security.failure_window",
                    )?,
                    first_lockout: chrono::Duration::minutes(1),
                    max_lockout: chrono_duration(
                        settings.security.max_lockout,
                        "security.max_lockout",
                    )?,
                },
            )),
            keyring,
            totp_skew: settings.auth.totp_skew_steps,
            audit_retention: chrono_duration(settings.audit.retention, "audit.retention")?,
            node_id,
            journal: topology.journal.clone(),
            outage: outage_grace(settings, topology.reachability.clone())?,
        };
        let idle_timeout = policy.idle_timeout;
        let sessions = Sessions::start(
            store.clone(),
            topology.residents,
            topology.cluster,
            hasher,
            TokenIssuer::new(&settings.jwt)?,
            SessionsConfig {
                policy,
                call_timeout: settings.actors.call_timeout,
                require_mfa_token: settings.auth.require_mfa_token,
                min_password_length: settings.password.min_length,
            },
        )
        .await?;

        let addr = format!("{}:{}", settings.http.host, settings.http.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;
        if let (Some(handle), false) = (&metrics, settings.metrics.listen.is_empty()) {
            serve_metrics_alone(&settings.metrics.listen, handle.clone()).await?;
        }
        let state = Arc::new(AppState {
            metrics: metrics.filter(|_| settings.metrics.listen.is_empty()),
            sessions,
            body_limit: settings.http.body_limit,
            idle_timeout,
            admin_key: settings.admin.api_key().map(AdminKey::new),
            console: http::console::Console::new(&settings.console, settings.admin.api_key()),
            introspection: http::IntrospectionClients::new(
                settings
                    .introspection
                    .clients
                    .iter()
                    .map(|client| client.expose_secret()),
            ),
            ip_rate: http::rate::IpRateLimit::new(
                settings.security.ip_rate,
                settings.security.ip_burst,
                settings.http.trusted_proxies.clone(),
            ),
        });
        // Rate-limit state is kept per recent address only.
        let pruned = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                match pruned.upgrade() {
                    Some(state) => state.ip_rate.prune(),
                    None => return,
                }
            }
        });
        let database_lost = Arc::new(AtomicBool::new(false));
        let lock_keeper = topology
            .single_node_lock
            .map(|(lock, mysql)| LockKeeper::start(lock, mysql, database_lost.clone()));
        let limits = http::server::Limits {
            header_read_timeout: settings.http.header_read_timeout,
            request_timeout: settings.http.request_timeout,
            max_connections: settings.http.max_connections,
            shutdown_grace: settings.http.shutdown_grace,
        };
        Ok(Self {
            listener,
            addr,
            state,
            store,
            lock_keeper,
            database_lost,
            limits,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running session machinery, for tests that reach behind the HTTP API.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Becomes true if another instance takes this single node's database (it then stops).
    pub fn database_lost(&self) -> Arc<AtomicBool> {
        self.database_lost.clone()
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tracing::info!(addr = %self.addr, "listening");
        let lost = self.lock_keeper.as_ref().map(|k| k.lost.clone());
        let stop = async move {
            match lost {
                Some(lost) => tokio::select! {
                    () = shutdown => {},
                    () = lost.notified() => {},
                },
                None => shutdown.await,
            }
        };
        let state = self.state.clone();
        let client_ip: http::server::ClientIp =
            Arc::new(move |peer, forwarded| state.ip_rate.client_ip(peer, forwarded));
        http::server::serve(
            self.listener,
            warp::service(http::routes(self.state.clone())),
            self.limits,
            client_ip,
            stop,
        )
        .await;
        self.state.sessions.shutdown().await;
        self.state.sessions.release_journal();
        if let Some(keeper) = self.lock_keeper {
            keeper.release().await;
        }
        if let Err(err) = self.store.close().await {
            tracing::warn!(error = %err, "closing the store failed");
        }
        tracing::info!("stopped");
    }
}

/// The sweeper asks the database every `session.sweep_interval`, so a grace no longer than
/// that would end a quiet, healthy node's trust in its memory.
fn outage_grace(
    settings: &Settings,
    reachability: Option<Arc<Reachability>>,
) -> Result<Option<OutageGrace>, StartupError> {
    let grace = settings.database.outage_grace;
    if grace <= settings.session.sweep_interval {
        return Err(StartupError::Config {
            key: "database.outage_grace",
            reason: "must be longer than session.sweep_interval".into(),
        });
    }
    Ok(reachability.map(|reachability| OutageGrace {
        reachability,
        grace,
    }))
}

/// This node's journal file (MySQL only: the embedded store cannot fail a write).
async fn open_journal(settings: &Settings) -> Result<Journal, StartupError> {
    let path = settings.database.pending_revocations.clone();
    // Settled ids stay dead past any store read that could have begun before the write.
    let keep_settled = settings.database.timeout * 4;
    let opened = tokio::task::spawn_blocking(move || Journal::open(&path, keep_settled)).await;
    let journal = opened.map_err(|e| StartupError::Config {
        key: "database.pending_revocations",
        reason: e.to_string(),
    })??;
    Ok(journal)
}

fn chrono_duration(
    d: std::time::Duration,
    key: &'static str,
) -> Result<chrono::Duration, StartupError> {
    chrono::Duration::from_std(d).map_err(|_| StartupError::Config {
        key,
        reason: "duration is too long".into(),
    })
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The encryption keys, saying loudly when they are the public demo key.
pub fn open_keyring(settings: &Settings) -> Result<Keyring, StartupError> {
    let keyring = settings.keyring().map_err(|e| match e {
        crate::config::ConfigError::Invalid { key, reason } => StartupError::Config { key, reason },
        other => StartupError::Config {
            key: "security.encryption_key",
            reason: other.to_string(),
        },
    })?;
    if keyring.is_demo() {
        tracing::warn!(
            "security.encryption_key is not set: TOTP secrets are sealed under the public demo \
             key (development only; production refuses to start without a key)"
        );
    }
    Ok(keyring)
}

/// `metrics.listen` names an address of its own: `GET /metrics` is served there only.
async fn serve_metrics_alone(
    addr: &str,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), StartupError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let route = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || http::metrics_response(&handle));
    let limits = http::server::Limits {
        header_read_timeout: std::time::Duration::from_secs(10),
        request_timeout: std::time::Duration::from_secs(10),
        max_connections: 64,
        shutdown_grace: std::time::Duration::from_secs(1),
    };
    let client_ip: http::server::ClientIp = Arc::new(|peer, _| peer);
    let service = warp::service(route.recover(|_| async {
        Ok::<_, std::convert::Infallible>(crate::error::ApiError::NotFound.to_response())
    }));
    tokio::spawn(http::server::serve(
        listener,
        service,
        limits,
        client_ip,
        std::future::pending(),
    ));
    Ok(())
}
