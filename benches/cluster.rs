//! What several instances cost: the same service measured alone on MySQL and as three nodes
//! on one MySQL and one NATS server, in one run (the machine is shared; compare ratios).
//!
//! `cargo bench --bench cluster` needs MySQL (`FINSEC_BENCH_SERVER_URL`, default
//! mysql://root@127.0.0.1:3306; two fresh databases are created and dropped) and NATS
//! (`FINSEC_BENCH_BUS_URL`, default nats://127.0.0.1:4222). Results go to docs/BENCHMARKS.md
//! and docs/SCALING.md. Every loop is bounded in count; everything talks to 127.0.0.1 only.

use std::path::Path;
use std::time::{Duration, Instant};

use finsec::config::Settings;
use finsec::domain::{Email, NewUser};
use finsec::startup::Application;
use finsec::store::{MySqlStore, SessionStore};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const PASSWORD: &str = "bench-password-123";
const USERS: usize = 50;
const LOGOUTS: usize = 300;

struct Node {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(db_url: &str, bus_url: Option<&str>, cluster: &str) -> Node {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut figment = Settings::figment(&dir, None)
        .merge(("http.port", 0))
        .merge(("database.url", db_url))
        .merge(("log.level", "warn"))
        // Not the demo secret: it is refused with MySQL.
        .merge(("jwt.secret", "bench-jwt-secret-0123456789abcdef0123456789"))
        .merge((
            "security.encryption_key",
            "YmVuY2ggZW5jcnlwdGlvbiBrZXksIDMyIGJ5dGVzISE=",
        ))
        .merge(("password.log_n", 4))
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
    Node { url, stop, task }
}

impl Node {
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut latencies: Vec<Duration>, wall: Duration) -> Duration {
    latencies.sort();
    println!(
        "| {name:<52} | {:>5} | {:>9.1} | {:>8.2} | {:>8.2} |",
        latencies.len(),
        latencies.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    percentile(&latencies, 0.5)
}

/// A fresh database with migrations and `USERS` users; returns its URL.
async fn database(server: &str, name: &str) -> String {
    let mut admin = mysql_async::Conn::new(mysql_async::Opts::from_url(server).unwrap())
        .await
        .expect("MySQL for the benchmark (FINSEC_BENCH_SERVER_URL)");
    admin
        .query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap();
    admin.disconnect().await.ok();
    let url = format!("{}/{name}", server.trim_end_matches('/'));
    let store = MySqlStore::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let settings = finsec::config::PasswordSettings {
        log_n: 4,
        r: 8,
        p: 1,
        max_concurrent_hashes: 2,
        max_queued_hashes: 64,
        min_length: 12,
    };
    let hasher = finsec::auth::PasswordHasher::new(&settings).await.unwrap();
    let hash = hasher.hash(PASSWORD.to_owned().into()).await.unwrap();
    for i in 0..USERS {
        store
            .insert_user(NewUser {
                email: Email::parse(&format!("user-{i}@example.com")).unwrap(),
                password_hash: hash.clone(),
                first_name: "Bench".into(),
                last_name: format!("{i}"),
                phone_number: None,
                is_active: true,
                mfa_enabled: false,
                totp_secret: None,
            })
            .await
            .unwrap();
    }
    store.close().await.ok();
    url
}

async fn drop_database(server: &str, name: &str) {
    if let Ok(mut admin) =
        mysql_async::Conn::new(mysql_async::Opts::from_url(server).unwrap()).await
    {
        let _ = admin.query_drop(format!("DROP DATABASE `{name}`")).await;
        let _ = admin.disconnect().await;
    }
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
    body["access_token"].as_str().expect("token").to_owned()
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

#[tokio::main]
async fn main() {
    let server = std::env::var("FINSEC_BENCH_SERVER_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let bus =
        std::env::var("FINSEC_BENCH_BUS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (alone_db, cluster_db) = (
        format!("finsec_bench_a_{run}"),
        format!("finsec_bench_c_{run}"),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    println!(
        "| benchmark                                            |     n |   per sec | p50 (ms) | p99 (ms) |"
    );
    println!(
        "|------------------------------------------------------|-------|-----------|----------|----------|"
    );

    // One node on MySQL, no bus (single-node lock).
    let url = database(&server, &alone_db).await;
    let alone = start(&url, None, &run).await;
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
    let url = database(&server, &cluster_db).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start(&url, Some(&bus), &run).await);
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
    for node in nodes {
        node.finish().await;
    }
    drop_database(&server, &alone_db).await;
    drop_database(&server, &cluster_db).await;

    println!();
    println!(
        "validation, node of three / one node (p50): {:.2}",
        me_cluster.as_secs_f64() / me_alone.as_secs_f64()
    );
    println!(
        "an acknowledged logout costs {:.2} ms more (p50) on three nodes than on one",
        (logout_cluster.as_secs_f64() - logout_alone.as_secs_f64()) * 1e3
    );
    println!(
        "requests on the other two nodes right after a logout's 200: {} of {} accepted",
        accepted_after,
        LOGOUTS * 2
    );
}
