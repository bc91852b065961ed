//! Speed and memory of the session service, measured over real HTTP on loopback against an
//! in-process server (embedded store, so the numbers are the service's, not MySQL's; set
//! FINSEC_BENCH_DATABASE_URL=mysql://… to include the database).
//!
//! `cargo bench --bench sessions` prints a table; docs/BENCHMARKS.md records it. Request loops
//! are bounded in count, and everything talks to 127.0.0.1 only.

use std::path::Path;
use std::time::{Duration, Instant};

use figment::Figment;
use finsec::config::Settings;
use finsec::startup::Application;
use serde_json::{Value, json};

const DEMO_PASSWORD: &str = "password123";

struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Shuts the server down and waits for it (actors drained, store closed).
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start(configure: impl FnOnce(Figment) -> Figment) -> Running {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let url = std::env::var("FINSEC_BENCH_DATABASE_URL").unwrap_or_else(|_| "memory".into());
    let figment = Settings::figment(&dir, None)
        .merge(("http.port", 0))
        .merge(("database.url", url))
        .merge(("log.level", "warn"))
        // Not the demo secret: it is refused with MySQL.
        .merge(("jwt.secret", "bench-jwt-secret-0123456789abcdef0123456789"))
        .merge((
            "security.encryption_key",
            "YmVuY2ggZW5jcnlwdGlvbiBrZXksIDMyIGJ5dGVzISE=",
        ))
        .merge(("session.max_per_user", 100_000));
    let settings = Settings::from_figment(configure(figment)).expect("bench settings");
    finsec::telemetry::init(&settings.log);
    let app = Application::build(&settings).await.expect("service starts");
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Running { url, stop, task }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut latencies: Vec<Duration>, wall: Duration) {
    latencies.sort();
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    println!(
        "| {name:<44} | {:>6} | {:>9.1} | {:>8.2} | {:>8.2} |",
        latencies.len(),
        rate,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

/// Runs `total` requests from `clients` concurrent clients; returns each latency and the wall time.
async fn load<F, Fut>(clients: usize, total: usize, request: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let per_client = total / clients;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                request(client * per_client + i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    (all, started.elapsed())
}

async fn login(http: &reqwest::Client, url: &str, email: &str) -> Value {
    let response = http
        .post(format!("{url}/api/auth/login"))
        .json(&json!({"email": email, "password": DEMO_PASSWORD}))
        .send()
        .await
        .expect("login request");
    assert!(
        response.status().is_success(),
        "login: {}",
        response.status()
    );
    response.json().await.expect("login body")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    println!(
        "| benchmark                                    |      n |   per sec | p50 (ms) | p99 (ms) |"
    );
    println!(
        "|----------------------------------------------|--------|-----------|----------|----------|"
    );

    // 1. Logins at the production scrypt cost (log_n = 15), 4 hashes at a time.
    let app = start(|f| {
        f.merge(("password.log_n", 15))
            .merge(("password.max_concurrent_hashes", 4))
    })
    .await;
    let (latencies, wall) = load(8, 64, {
        let (http, url) = (http.clone(), app.url.clone());
        move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                login(&http, &url, "john.doe@example.com").await;
            }
        }
    })
    .await;
    report("login, scrypt log_n=15, 8 clients", latencies, wall);

    // 2. Authenticated requests: JWT check + one actor round trip.
    let token = login(&http, &app.url, "john.doe@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for clients in [1, 16] {
        let (latencies, wall) = load(clients, 4000, {
            let (http, url, token) = (http.clone(), app.url.clone(), token.clone());
            move |_| {
                let (http, url, token) = (http.clone(), url.clone(), token.clone());
                async move {
                    let r = http
                        .get(format!("{url}/api/auth/me"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
            }
        })
        .await;
        report(
            &format!("GET /api/auth/me, one session, {clients} client(s)"),
            latencies,
            wall,
        );
    }
    app.finish().await;

    // 3. Memory per active user: each login spawns that user's actor and opens one session.
    let users = 2000;
    let (app, emails) = start_with_users(users).await;
    let before = rss_kib();
    let (latencies, wall) = load(16, users, {
        let (http, url, emails) = (http.clone(), app.url.clone(), emails.clone());
        move |i| {
            let (http, url, email) = (http.clone(), url.clone(), emails[i].clone());
            async move {
                login(&http, &url, &email).await;
            }
        }
    })
    .await;
    report(
        &format!("first login of {users} users, log_n=4"),
        latencies,
        wall,
    );
    let after = rss_kib();
    println!();
    println!(
        "memory: {users} resident user actors with one session each added {} KiB of RSS ({:.2} KiB per user)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / users as f64
    );
    app.finish().await;
}

/// A server over a memory store holding `count` extra users (cheap hashes), and their emails.
async fn start_with_users(count: usize) -> (Running, std::sync::Arc<Vec<String>>) {
    use finsec::domain::{Email, NewUser};
    use finsec::store::{MemoryStore, SessionStore};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let settings = Settings::from_figment(
        Settings::figment(&dir, None)
            .merge(("http.port", 0))
            .merge(("log.level", "warn"))
            .merge(("password.log_n", 4)),
    )
    .expect("bench settings");
    let hasher = finsec::auth::PasswordHasher::new(&settings.password)
        .await
        .unwrap();
    let hash = hasher.hash(DEMO_PASSWORD.to_owned().into()).await.unwrap();
    let store = MemoryStore::new();
    let mut emails = Vec::with_capacity(count);
    for i in 0..count {
        let email = format!("bench-user-{i}@example.com");
        store
            .insert_user(NewUser {
                email: Email::parse(&email).unwrap(),
                password_hash: hash.clone(),
                first_name: "Bench".into(),
                last_name: format!("User {i}"),
                phone_number: None,
                is_active: true,
                mfa_enabled: false,
                totp_secret: None,
            })
            .await
            .unwrap();
        emails.push(email);
    }
    let app = Application::build_with_store(&settings, std::sync::Arc::new(store))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (Running { url, stop, task }, std::sync::Arc::new(emails))
}
