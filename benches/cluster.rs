//! What several instances cost: the same service measured alone on MySQL and as three nodes
//! on one MySQL and one NATS server, in one run (the machine is shared; compare ratios).
//!
//! `cargo bench --bench cluster` needs MySQL (`FINSEC_BENCH_SERVER_URL`, default
//! mysql://root@127.0.0.1:3306; two fresh databases are created and dropped) and NATS
//! (`FINSEC_BENCH_BUS_URL`, default nats://127.0.0.1:4222). Results go to docs/BENCHMARKS.md
//! and docs/SCALING.md. Every loop is bounded in count; everything talks to 127.0.0.1 only.

#[path = "support/database.rs"]
mod database;

use std::path::Path;
use std::time::{Duration, Instant};

use database::BenchDatabase;
use finsec::config::Settings;
use finsec::startup::Application;
use serde_json::{Value, json};

const PASSWORD: &str = "bench-password-123";
const USERS: usize = 50;
const LOGOUTS: usize = 300;
const PROPAGATIONS: usize = 300;

struct Node {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    journal: std::path::PathBuf,
}

async fn start(db_url: &str, bus_url: Option<&str>, cluster: &str) -> Node {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // Each node its own journal of pending revocations: a node locks its file.
    let journal = std::env::temp_dir().join(format!(
        "finsec-bench-{}.journal",
        uuid::Uuid::new_v4().simple()
    ));
    let mut figment = Settings::figment(&dir, None)
        .merge(("http.port", 0))
        .merge(("database.url", db_url))
        .merge((
            "database.pending_revocations",
            journal.display().to_string(),
        ))
        .merge(("log.level", "warn"))
        // Not the demo secret: it is refused with MySQL.
        .merge(("jwt.secret", "bench-jwt-secret-0123456789abcdef0123456789"))
        .merge((
            "security.encryption_key",
            "YmVuY2ggZW5jcnlwdGlvbiBrZXksIDMyIGJ5dGVzISE=",
        ))
        .merge(("password.log_n", 4))
        // Every request comes from 127.0.0.1: no per-address limit.
        .merge(("security.ip_rate", 0))
        .merge(("session.max_per_user", 100_000))
        .merge(("cluster.name", cluster));
    if let Some(bus) = bus_url {
        figment = figment.merge(("cluster.bus_url", bus));
    }
    let settings = Settings::from_figment(figment).expect("bench settings");
    let app = Application::build(&settings).await.expect("service starts");
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Node {
        url,
        stop,
        task,
        journal,
    }
}

impl Node {
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.journal);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints a table row; returns (p50, p99).
fn report(name: &str, mut latencies: Vec<Duration>, wall: Duration) -> (Duration, Duration) {
    latencies.sort();
    println!(
        "| {name:<52} | {:>5} | {:>9.1} | {:>8.2} | {:>8.2} |",
        latencies.len(),
        latencies.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

/// A fresh database with `USERS` users whose password is `PASSWORD`.
async fn database(hash: &str) -> BenchDatabase {
    let database = BenchDatabase::create().await;
    database.insert_users("user", 0..USERS, 0, hash).await;
    database
}

async fn login(http: &reqwest::Client, url: &str, user: usize) -> String {
    let body: Value = http
        .post(format!("{url}/api/auth/login"))
        .json(&json!({"email": format!("user-{user}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login of user-{user} on {url}: {body}"))
        .to_owned()
}

async fn me(http: &reqwest::Client, url: &str, token: &str) -> reqwest::StatusCode {
    http.get(format!("{url}/api/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// 16 clients, 8000 validations over `USERS` users' sessions on `url`.
async fn validations(
    http: &reqwest::Client,
    url: &str,
    tokens: &[String],
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..16 {
        let (http, url, tokens) = (http.clone(), url.to_owned(), tokens.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(500);
            for i in 0..500 {
                let token = &tokens[(client * 500 + i) % tokens.len()];
                let t = Instant::now();
                assert!(me(&http, &url, token).await.is_success());
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all, started.elapsed())
}

/// `LOGOUTS` sequential logouts on `nodes[0]` of sessions every node has validated; after each
/// 200, the other nodes are asked at once. Returns the logout latencies and how many of the
/// follow-up requests were (wrongly) accepted.
async fn logouts(http: &reqwest::Client, nodes: &[&str]) -> (Vec<Duration>, Duration, usize) {
    let mut latencies = Vec::with_capacity(LOGOUTS);
    let mut accepted_after = 0;
    let mut spent = Duration::ZERO;
    for i in 0..LOGOUTS {
        let token = login(http, nodes[i % nodes.len()], i % USERS).await;
        for node in nodes {
            assert!(me(http, node, &token).await.is_success());
        }
        let t = Instant::now();
        let status = http
            .post(format!("{}/api/auth/logout", nodes[0]))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        let took = t.elapsed();
        assert!(status.is_success());
        latencies.push(took);
        spent += took;
        for node in &nodes[1..] {
            if me(http, node, &token).await.is_success() {
                accepted_after += 1;
            }
        }
    }
    (latencies, spent, accepted_after)
}

/// `PROPAGATIONS` logouts on `nodes[0]`; while each is in flight, one client per other node
/// asks it in a loop until it refuses the token. Returns, per other node and logout, the time
/// from sending the logout to that node's first refusal: how long a revocation takes to be
/// seen elsewhere. (The logout's 200 waits for every node's confirmation, so it bounds this;
/// the loop measures it directly.)
async fn propagation(http: &reqwest::Client, nodes: &[&str]) -> Vec<Duration> {
    let mut seen = Vec::with_capacity(PROPAGATIONS * (nodes.len() - 1));
    for i in 0..PROPAGATIONS {
        let token = login(http, nodes[i % nodes.len()], i % USERS).await;
        for node in nodes {
            assert!(me(http, node, &token).await.is_success());
        }
        let (go, _) = tokio::sync::watch::channel(None::<Instant>);
        let watchers: Vec<_> = nodes[1..]
            .iter()
            .map(|node| {
                let (http, url, token) = (http.clone(), node.to_string(), token.clone());
                let mut sent = go.subscribe();
                tokio::spawn(async move {
                    let sent = *sent.wait_for(Option::is_some).await.unwrap();
                    let sent = sent.unwrap();
                    while sent.elapsed() < Duration::from_secs(2) {
                        if !me(&http, &url, &token).await.is_success() {
                            return Some(sent.elapsed());
                        }
                    }
                    None
                })
            })
            .collect();
        let request = http
            .post(format!("{}/api/auth/logout", nodes[0]))
            .bearer_auth(&token);
        go.send_replace(Some(Instant::now()));
        assert!(request.send().await.unwrap().status().is_success());
        for watcher in watchers {
            let took = watcher.await.unwrap();
            seen.push(took.expect("the revocation was seen within 2 s"));
        }
    }
    seen
}

#[tokio::main]
async fn main() {
    let bus =
        std::env::var("FINSEC_BENCH_BUS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let hash = {
        let settings = finsec::config::PasswordSettings {
            log_n: 4,
            r: 8,
            p: 1,
            max_concurrent_hashes: 2,
            max_queued_hashes: 64,
            min_length: 12,
        };
        let hasher = finsec::auth::PasswordHasher::new(&settings).await.unwrap();
        hasher.hash(PASSWORD.to_owned().into()).await.unwrap()
    };

    println!(
        "| benchmark                                            |     n |   per sec | p50 (ms) | p99 (ms) |"
    );
    println!(
        "|------------------------------------------------------|-------|-----------|----------|----------|"
    );

    // One node on MySQL, no bus (single-node lock).
    let alone_db = database(&hash).await;
    let alone = start(&alone_db.url, None, &run).await;
    let mut tokens = Vec::new();
    for user in 0..USERS {
        tokens.push(login(&http, &alone.url, user).await);
    }
    let (latencies, wall) = validations(&http, &alone.url, &tokens).await;
    let me_alone = report("GET /api/auth/me, one node, 16 clients", latencies, wall);
    let (latencies, wall, _) = logouts(&http, &[&alone.url]).await;
    let logout_alone = report("logout, one node", latencies, wall);
    alone.finish().await;

    // Three nodes on one MySQL and one NATS server.
    let cluster_db = database(&hash).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(&cluster_db.url, Some(&bus), &run).await);
    }
    // Let every node prove its bus link and take its lease.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let mut tokens = Vec::new();
    for user in 0..USERS {
        tokens.push(login(&http, urls[user % 3], user).await);
    }
    for token in &tokens {
        assert!(me(&http, urls[0], token).await.is_success());
    }
    let (latencies, wall) = validations(&http, urls[0], &tokens).await;
    let me_cluster = report(
        "GET /api/auth/me, node of three, 16 clients",
        latencies,
        wall,
    );
    let (latencies, wall, accepted_after) = logouts(&http, &urls).await;
    let logout_cluster = report("logout acknowledged by three nodes", latencies, wall);
    let started = Instant::now();
    let seen = propagation(&http, &urls).await;
    let wall = started.elapsed();
    let (_, seen_p99) = report("logout on one node, first refusal on another", seen, wall);
    for node in nodes {
        node.finish().await;
    }
    alone_db.drop().await;
    cluster_db.drop().await;

    println!();
    println!(
        "validation, node of three / one node (p50): {:.2}",
        me_cluster.0.as_secs_f64() / me_alone.0.as_secs_f64()
    );
    println!(
        "an acknowledged logout costs {:.2} ms more at p50 and {:.2} ms more at p99 on three \
         nodes than on one (target ≤ 2 ms)",
        (logout_cluster.0.as_secs_f64() - logout_alone.0.as_secs_f64()) * 1e3,
        (logout_cluster.1.as_secs_f64() - logout_alone.1.as_secs_f64()) * 1e3,
    );
    println!(
        "a revocation is seen by the other nodes within {:.2} ms (p99; target ≤ 10 ms)",
        seen_p99.as_secs_f64() * 1e3
    );
    println!(
        "requests on the other two nodes right after a logout's 200: {} of {} accepted",
        accepted_after,
        LOGOUTS * 2
    );
}
