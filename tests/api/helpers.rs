//! `spawn_app()`: a real server on a random port over a fresh MariaDB database, and a client
//! with one method per endpoint, so tests read like a client's story.

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use figment::Figment;
use finsec::auth::PasswordHasher;
use finsec::auth::totp::TotpCode;
use finsec::config::Settings;
use finsec::crypto::Purpose;
use finsec::domain::{Email, NewUser, UserId};
use finsec::http::AppState;
use finsec::startup::Application;
use finsec::store::{MySqlStore, SessionStore};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../support/browser.rs"]
pub mod browser;
#[path = "../support/database.rs"]
mod database;
#[path = "../support/nats.rs"]
mod nats;
#[path = "../support/proxy.rs"]
mod proxy;
pub use database::TestDatabase;
pub use nats::{NatsServer, free_port};
pub use proxy::Partition;

pub const JWT_SECRET: &str = "test-jwt-secret-that-is-long-enough-0123456789";
/// The suite's encryption key for secrets at rest (32 bytes, base64): not the demo key, so the
/// suite runs the way production does.
pub const ENCRYPTION_KEY: &str = "Zmluc2VjIHRlc3Qgc3VpdGUga2V5OiAzMiBieXRlcyE=";
pub const ISSUER: &str = "finsec-sessions";
pub const AUDIENCE: &str = "finsec-banking-api";

/// Everything the service logs during the test run, so a test can prove what it never logs.
pub static CAPTURED_LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED_LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("finsec=trace,warp=debug,ractor=debug")
            .with_writer(|| CaptureWriter)
            .with_ansi(false)
            .init();
    });
}

pub fn captured_logs() -> String {
    String::from_utf8_lossy(&CAPTURED_LOGS.lock().unwrap()).into_owned()
}

/// A user created directly in the test's database.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub email: String,
    pub password: String,
    pub totp_secret: Option<String>,
}

impl TestUser {
    /// The TOTP code for `offset_steps` steps from now.
    pub fn totp_code(&self, offset_steps: i64) -> String {
        let secret = self.totp_secret.as_deref().expect("user has MFA");
        let now = chrono::Utc::now().timestamp() + offset_steps * 30;
        TotpCode::from_base32(secret).unwrap().generate(now as u64)
    }

    pub fn credentials(&self) -> Value {
        json!({"email": self.email, "password": self.password})
    }
}

#[derive(Debug, Clone, Default)]
pub struct UserSpec {
    pub mfa: bool,
    pub inactive: bool,
    /// First and last name ("Test User" when not given); the email is then
    /// `first.last@example.com` (each test has a database of its own).
    pub name: Option<(&'static str, &'static str)>,
}

pub struct TestApp {
    pub address: String,
    pub db: Arc<TestDatabase>,
    pub settings: Settings,
    pub state: Arc<AppState>,
    pub client: reqwest::Client,
    store: MySqlStore,
    hasher: PasswordHasher,
    server: Option<Server>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|figment| figment).await
}

/// Starts the service with test settings, adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(Figment) -> Figment) -> TestApp {
    let db = Arc::new(TestDatabase::create().await);
    let settings = test_settings(&db.url, &fresh_journal(), configure);
    start(db, settings).await
}

/// Like [`spawn_app_with`], but the service reaches MariaDB through a relay the test can
/// break (`cut`, `down`, `up`); the test's own fixture connections go straight to it.
pub async fn spawn_app_through_relay(
    configure: impl FnOnce(Figment) -> Figment,
) -> (TestApp, Partition) {
    let db = Arc::new(TestDatabase::create().await);
    let relay = Partition::relay_to(db.port()).await;
    let url = db.url_through(relay.port);
    let settings = test_settings(&url, &fresh_journal(), configure);
    (start(db, settings).await, relay)
}

/// Several instances of the service on one fresh database and one NATS server of the
/// test's own, each trusting its memory before this returns.
pub struct TestCluster {
    pub nodes: Vec<TestApp>,
    pub nats: NatsServer,
    pub db: Arc<TestDatabase>,
}

pub async fn spawn_cluster(nodes: usize) -> TestCluster {
    spawn_cluster_with(nodes, |figment| figment).await
}

pub async fn spawn_cluster_with(
    count: usize,
    configure: impl Fn(Figment) -> Figment,
) -> TestCluster {
    let db = Arc::new(TestDatabase::create().await);
    let nats = NatsServer::start();
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        nodes.push(spawn_node(&db, &nats.url(), &configure).await);
    }
    TestCluster { nodes, nats, db }
}

/// One more clustered instance on `db`, reaching the bus at `bus_url`.
pub async fn spawn_node(
    db: &Arc<TestDatabase>,
    bus_url: &str,
    configure: impl Fn(Figment) -> Figment,
) -> TestApp {
    let settings = test_settings(&db.url, &fresh_journal(), |f| {
        configure(f.merge(("cluster.bus_url", bus_url)))
    });
    let node = start(db.clone(), settings).await;
    node.wait_until_trusted().await;
    node
}

impl TestCluster {
    pub fn node(&self, i: usize) -> &TestApp {
        &self.nodes[i]
    }
}

/// A pending-revocation journal of this instance's own (a restart keeps it, as a real
/// instance keeps its disk); deleted when the instance is dropped.
pub fn fresh_journal() -> std::path::PathBuf {
    std::env::temp_dir()
        .join("finsec-tests")
        .join(format!("{}.log", uuid::Uuid::new_v4()))
}

fn test_settings(
    url: &str,
    journal: &std::path::Path,
    configure: impl FnOnce(Figment) -> Figment,
) -> Settings {
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let figment = Settings::figment(&config_dir, None)
        .merge(("http.host", "127.0.0.1"))
        .merge(("http.port", 0))
        .merge(("database.url", url))
        .merge(("database.pending_revocations", journal))
        .merge(("database.max_connections", 4))
        .merge(("jwt.secret", JWT_SECRET))
        .merge(("security.encryption_key", ENCRYPTION_KEY))
        // Cheap hashing keeps the suite fast; one test runs at the production cost.
        .merge(("password.log_n", 4))
        // Tests that make many wrong attempts on purpose are about other rules; the throttle's
        // own tests set the real limit.
        .merge(("security.max_failures", 100))
        // Every test talks from 127.0.0.1 in bursts; the rate limit's own test turns it on.
        .merge(("security.ip_rate", 0));
    Settings::from_figment(configure(figment)).expect("test settings are valid")
}

async fn start(db: Arc<TestDatabase>, settings: Settings) -> TestApp {
    capture_logs();
    let store = MySqlStore::connect(&db.url, 2)
        .await
        .expect("fixture store");
    let hasher = PasswordHasher::new(&settings.password)
        .await
        .expect("hasher");
    let server = Server::launch(&settings).await;
    TestApp {
        address: server.address.clone(),
        state: server.state.clone(),
        db,
        settings,
        client: reqwest::Client::new(),
        store,
        hasher,
        server: Some(server),
    }
}

/// One running instance of the service.
struct Server {
    address: String,
    state: Arc<AppState>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn launch(settings: &Settings) -> Self {
        let app = Application::build(settings)
            .await
            .expect("application starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let state = app.state();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            state,
            shutdown,
            task,
        }
    }
}

impl TestApp {
    /// Stops this server and starts a new one with the same settings on the same database:
    /// all the new one knows is what the first wrote to MySQL.
    pub async fn restart(&mut self) {
        self.restart_with(|figment| figment).await;
    }

    /// Like [`restart`](Self::restart), with the settings adjusted by `configure` (a rotated
    /// key, say).
    pub async fn restart_with(&mut self, configure: impl FnOnce(Figment) -> Figment) {
        self.stop().await;
        let journal = self.settings.database.pending_revocations.clone();
        self.settings = test_settings(&self.db.url, &journal, configure);
        let server = Server::launch(&self.settings).await;
        self.address = server.address.clone();
        self.state = server.state.clone();
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
            tokio::time::timeout(Duration::from_secs(10), server.task)
                .await
                .expect("server stops within 10 s")
                .expect("server task ends cleanly");
        }
    }

    /// True if the server stops by itself within `limit` (it was not told to).
    pub async fn stopped_within(&mut self, limit: Duration) -> bool {
        let Some(server) = self.server.as_mut() else {
            return true;
        };
        let finished = tokio::time::timeout(limit, &mut server.task).await.is_ok();
        if finished {
            self.server = None;
        }
        finished
    }

    pub async fn create_user(&self, spec: UserSpec) -> TestUser {
        let email = match spec.name {
            Some((first, last)) => format!("{first}.{last}@example.com").to_lowercase(),
            None => format!("user-{}@example.com", uuid::Uuid::new_v4().simple()),
        };
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let totp_secret = spec.mfa.then(random_totp_secret);
        let user = self
            .store
            .insert_user(NewUser {
                email: Email::parse(&email).unwrap(),
                password_hash: self.hasher.hash(password.clone().into()).await.unwrap(),
                first_name: spec.name.map_or("Test", |n| n.0).into(),
                last_name: spec.name.map_or("User", |n| n.1).into(),
                phone_number: Some("+1-555-0100".into()),
                is_active: !spec.inactive,
                mfa_enabled: spec.mfa,
                totp_secret: totp_secret.as_ref().map(|secret| {
                    self.settings
                        .keyring()
                        .expect("test keyring")
                        .seal(Purpose::Totp, secret.as_bytes())
                        .expect("sealed")
                }),
            })
            .await
            .expect("fixture user is created");
        TestUser {
            id: user.id,
            email,
            password,
            totp_secret,
        }
    }

    pub async fn user(&self) -> TestUser {
        self.create_user(UserSpec::default()).await
    }

    pub async fn mfa_user(&self) -> TestUser {
        self.create_user(UserSpec {
            mfa: true,
            ..UserSpec::default()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn login(&self, body: &Value) -> Response {
        self.post_json("/api/auth/login", body).await
    }

    pub async fn verify_mfa(&self, body: &Value) -> Response {
        self.post_json("/api/auth/verify-mfa", body).await
    }

    /// The original clients' verify-mfa request: the code with the email and password again.
    pub async fn verify_with_password(&self, user: &TestUser) -> Response {
        self.verify_mfa(
            &json!({"userId": user.id.get(), "otpCode": user.totp_code(0),
            "email": user.email, "password": user.password}),
        )
        .await
    }

    /// The seed's verify-mfa request: `{"userId", "otpCode"}`, against a pending challenge.
    pub async fn verify_code(&self, user: &TestUser, code: &str) -> Response {
        self.verify_mfa(&json!({"userId": user.id.get(), "otpCode": code}))
            .await
    }

    /// Logs `user` in (no MFA) and returns the token and session id.
    pub async fn logged_in(&self, user: &TestUser) -> LoggedIn {
        let response = self.login(&user.credentials()).await;
        assert_eq!(response.status(), StatusCode::OK);
        LoggedIn::from_body(&response.json().await.unwrap())
    }

    /// Runs `user`'s password step and returns the MFA token.
    pub async fn begin_mfa(&self, user: &TestUser) -> String {
        let response = self.login(&user.credentials()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["mfaToken"].as_str().expect("mfaToken").to_owned()
    }

    pub async fn logout(&self, token: &str, body: Option<&Value>) -> Response {
        let request = self
            .client
            .post(self.url("/api/auth/logout"))
            .bearer_auth(token);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        request.send().await.expect("request is sent")
    }

    pub async fn me(&self, token: &str) -> Response {
        self.client
            .get(self.url("/api/auth/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request is sent")
    }

    /// True while this node answers from memory (a standalone node always does).
    pub fn trusted(&self) -> bool {
        self.state.sessions.cluster().trust_epoch().is_some()
    }

    /// Waits (at most 10 s) until this node has proven its bus link and holds its lease.
    pub async fn wait_until_trusted(&self) {
        for _ in 0..200 {
            if self.trusted() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {} never came to trust its memory", self.address);
    }

    /// `user`'s actor, resident on this node (tests cast their hooks to it).
    pub fn actor_of(&self, user: &TestUser) -> ractor::ActorRef<finsec::sessions::UserMsg> {
        self.state
            .sessions
            .registry()
            .resident(user.id)
            .expect("the user's actor is resident")
    }

    /// Another connection holding `user`'s session rows locked (`SELECT … FOR UPDATE` in an
    /// open transaction) until it rolls back: every write that ends those sessions waits.
    pub async fn lock_sessions_of(&self, user: &TestUser) -> mysql_async::Conn {
        self.hold_locks(&format!(
            "SELECT id FROM sessions WHERE user_id = {} FOR UPDATE",
            user.id
        ))
        .await
    }

    /// Another connection that runs `locking_read` in a transaction it leaves open: the rows
    /// stay locked until the connection rolls back or is dropped.
    pub async fn hold_locks(&self, locking_read: &str) -> mysql_async::Conn {
        use mysql_async::prelude::Queryable;
        let mut holder = self.db.connection().await;
        holder.query_drop("BEGIN").await.unwrap();
        holder.query_drop(locking_read).await.unwrap();
        holder
    }

    /// `POST /api/auth/logout-all` with `token`, in a task of its own (it may have to wait).
    pub fn spawn_logout_all(
        &self,
        token: &str,
    ) -> tokio::task::JoinHandle<reqwest::Result<StatusCode>> {
        spawn_request(
            self.client
                .post(self.url("/api/auth/logout-all"))
                .bearer_auth(token)
                .json(&serde_json::json!({})),
        )
    }

    /// The number of user actors resident right now.
    pub async fn resident_actors(&self) -> usize {
        ractor::call_t!(
            self.state.sessions.supervisor(),
            finsec::sessions::SupervisorMsg::CountResidents,
            1000
        )
        .expect("supervisor answers")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown.send(());
        }
        let _ = std::fs::remove_file(&self.settings.database.pending_revocations);
    }
}

/// Sends `request` in a task of its own (it may have to wait); its status when it answers.
pub fn spawn_request(
    request: reqwest::RequestBuilder,
) -> tokio::task::JoinHandle<reqwest::Result<StatusCode>> {
    tokio::spawn(async move { request.send().await.map(|r| r.status()) })
}

#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub token: String,
    pub session_id: String,
}

impl LoggedIn {
    pub fn from_body(body: &Value) -> Self {
        Self {
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            session_id: body["session_id"].as_str().expect("session_id").to_owned(),
        }
    }
}

/// Asserts an error response: status, and the `{"error", "code"}` shape with this code.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status for expected code {code}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/json");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only error and code: {body}"
    );
    body
}

fn random_totp_secret() -> String {
    totp_rs::Secret::generate().to_base32()
}

impl TestApp {
    pub async fn post_raw_with_token(
        &self,
        path: &str,
        token: &str,
        body: &'static str,
    ) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is sent")
    }
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef0123456789";

impl TestApp {
    /// Logs `user` in from a device that says `user_agent`.
    pub async fn logged_in_from(&self, user: &TestUser, user_agent: &str) -> LoggedIn {
        let response = self
            .client
            .post(self.url("/api/auth/login"))
            .header("user-agent", user_agent)
            .json(&user.credentials())
            .send()
            .await
            .expect("request is sent");
        assert_eq!(response.status(), StatusCode::OK);
        LoggedIn::from_body(&response.json().await.unwrap())
    }

    pub async fn list_sessions(&self, token: &str) -> Response {
        self.client
            .get(self.url("/api/auth/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn delete_session(&self, token: &str, id: &str) -> Response {
        self.client
            .delete(self.url(&format!("/api/auth/sessions/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn post_with_token(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request is sent")
    }

    pub async fn logout_all(&self, token: &str, body: &Value) -> Response {
        self.post_with_token("/api/auth/logout-all", token, body)
            .await
    }

    pub async fn change_password(&self, token: &str, body: &Value) -> Response {
        self.post_with_token("/api/auth/change-password", token, body)
            .await
    }

    /// An admin API request, with the given `X-Admin-Key` (or none).
    pub fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match key {
            Some(key) => request.header("x-admin-key", key),
            None => request,
        }
    }

    /// Asserts that `session`'s token is refused and that the store recorded `reason` for it.
    pub async fn assert_ended(&self, session: &LoggedIn, reason: &str) {
        assert_eq!(
            self.me(&session.token).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let recorded = self.eventual_revoke_reason(&session.session_id).await;
        assert_eq!(
            recorded.as_deref(),
            Some(reason),
            "revoke reason of {}",
            session.session_id
        );
    }

    /// The stored revoke reason of a session, polled until the sweep or a retry has written
    /// one (at most ~5 s), or None if none came.
    pub async fn eventual_revoke_reason(&self, session_id: &str) -> Option<String> {
        let sql = format!("SELECT revoke_reason FROM sessions WHERE id = '{session_id}'");
        eventually(|| self.db.query_one(&sql)).await
    }
}

/// Polls `probe` every 50 ms until it yields `Some`, for at most 5 s.
pub async fn eventually<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..100 {
        if let Some(value) = probe().await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
