//! Memory per resident user and per session, and the first request for a user whose actor is
//! not resident (issue 12, targets 3 and 4). Run through `scripts/bench`, or
//! `cargo bench --bench residents`.
//!
//! The real `finsec` binary (release) runs as a child process over a fresh MySQL database
//! (`FINSEC_BENCH_SERVER_URL`, default `mysql://root@127.0.0.1:3306`; dropped after), so its
//! RSS (`/proc/PID/status`) holds the service alone. Users and their live sessions are
//! inserted in bulk with SQL, tokens are signed here with the service's key, and one
//! `GET /api/auth/me` per user makes that user resident (its actor loads the user and every
//! live session from MySQL). Two populations of `FINSEC_BENCH_USERS` users each (default
//! 100,000): first with one session each, then with three, so the RSS each adds gives the cost
//! of a user and of a session. Each population is measured twice: while its actors run, and
//! once they have hibernated (`actors.idle_hibernate`: the users stay resident, their
//! publications answering alone). Then the hibernated users passivate
//! (`actors.idle_passivate`, shortened here) and the RSS is read again.

#[path = "support/database.rs"]
mod database;
#[path = "support/service.rs"]
mod service;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use finsec::auth::TokenIssuer;
use finsec::config::Settings;
use finsec::domain::{Device, Session, UserId};
use mysql_async::prelude::Queryable;

/// A browser's user agent, as most sessions carry one.
const USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
/// Concurrent first requests.
const CONCURRENCY: usize = 16;
/// Longer than a population's first requests take, so that its actors all run at once.
const HIBERNATE_AFTER: &str = "45s";
/// Longer than the time from the first population's requests to the second's hibernation.
const PASSIVATE_AFTER: &str = "240s";
/// Longest wait for the actors to hibernate, or for the hibernated users to passivate.
const WAIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    let users: usize = std::env::var("FINSEC_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let database = database::BenchDatabase::create().await;
    let url = database.url.clone();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let settings = Settings::from_figment(
        Settings::figment(&dir, None)
            .merge(("jwt.secret", service::SECRET))
            .merge(("security.encryption_key", service::KEY)),
    )
    .expect("bench settings");
    let issuer = TokenIssuer::new(&settings.jwt).expect("the service's signing keys");

    let started = Instant::now();
    let one = insert_population(&database, &issuer, 0, users, 1).await;
    let three = insert_population(&database, &issuer, users, users, 3).await;
    eprintln!(
        "inserted {} users and {} sessions in {:.1?}",
        2 * users,
        4 * users,
        started.elapsed()
    );

    let service = service::ServiceProcess::start(
        &url,
        &[
            ("FINSEC__ACTORS__IDLE_HIBERNATE", HIBERNATE_AFTER),
            ("FINSEC__ACTORS__IDLE_PASSIVATE", PASSIVATE_AFTER),
            ("FINSEC__SESSION__SWEEP_INTERVAL", "5s"),
        ],
    )
    .await;
    let base = service.base.clone();
    let client = reqwest::Client::new();
    // Warm: a few users resident, so allocator arenas and pools exist before the baseline.
    let warm = CONCURRENCY * 4;
    let _ = first_requests(&client, &base, &one[..warm]).await;
    let baseline = memory(&service, &client).await;

    let first_one = first_requests(&client, &base, &one[warm..]).await;
    let actors_one = memory(&service, &client).await;
    let hibernated_one = until_hibernated(&service, &client).await;
    let first_three = first_requests(&client, &base, &three).await;
    let actors_three = memory(&service, &client).await;
    let running = gauge(&service, &client, "finsec_resident_actors").await;
    let hibernated_three = until_hibernated(&service, &client).await;
    let hibernated_users = gauge(&service, &client, "finsec_hibernated_users").await;

    // Passivation: every hibernated user idle for PASSIVATE_AFTER is dropped by a later tick.
    let waited = Instant::now();
    while gauge(&service, &client, "finsec_hibernated_users").await > 0 && waited.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let passivated = memory(&service, &client).await;
    let left = gauge(&service, &client, "finsec_hibernated_users").await;

    drop(service);
    database.drop().await;

    let n = users as f64;
    // Per user with one session, per user with three, per session; from one kind of reading.
    let costs = |read: fn(&Memory) -> i64, points: [&Memory; 4]| {
        let [one_base, with_one, three_base, with_three] = points.map(read);
        let one = (with_one - one_base) as f64 * 1024.0 / (n - warm as f64);
        let three = (with_three - three_base) as f64 * 1024.0 / n;
        (one, three, (three - one) / 2.0)
    };
    let running_points = [&baseline, &actors_one, &hibernated_one, &actors_three];
    let hibernated_points = [
        &baseline,
        &hibernated_one,
        &hibernated_one,
        &hibernated_three,
    ];
    println!(
        "{users} users with one session, then {users} with three; the `finsec` binary's RSS and \
         heap in use (`finsec_heap_in_use_bytes`), KiB:\n\n\
         | KiB | at start | 1 session each: actors running | hibernated | + 3 sessions each: \
         actors running ({running} actors) | hibernated ({hibernated_users} users) | after \
         passivation ({left} left, {:.0} s) |\n\
         |---|---|---|---|---|---|---|",
        waited.elapsed().as_secs_f64()
    );
    let points = [
        &baseline,
        &actors_one,
        &hibernated_one,
        &actors_three,
        &hibernated_three,
        &passivated,
    ];
    for (name, read) in [
        ("RSS", Memory::rss as fn(&Memory) -> i64),
        ("heap in use", Memory::heap),
    ] {
        let row: Vec<String> = points.iter().map(|m| read(m).to_string()).collect();
        println!("| {name} | {} |", row.join(" | "));
    }
    println!(
        "\n| resident user | per user, 1 session | per user, 3 sessions | per session |\n\
         |---|---|---|---|"
    );
    for (name, read) in [
        ("RSS", Memory::rss as fn(&Memory) -> i64),
        ("heap in use", Memory::heap),
    ] {
        for (state, points) in [
            ("actor running", running_points),
            ("hibernated", hibernated_points),
        ] {
            let (one, three, session) = costs(read, points);
            println!("| {state}, {name} | {one:.0} B | {three:.0} B | {session:.0} B |");
        }
    }
    for (name, (latencies, refused)) in
        [("one session", first_one), ("three sessions", first_three)]
    {
        let (p50, p99) = percentiles(latencies);
        println!(
            "first request of a non-resident user ({name}, {CONCURRENCY} concurrent): \
             p50 {p50:.2} ms, p99 **{p99:.2} ms** (target ≤ 5 ms); {refused} not answered 200"
        );
    }
}

/// The service's memory at one moment, in KiB.
struct Memory {
    rss: i64,
    heap: i64,
}

impl Memory {
    fn rss(&self) -> i64 {
        self.rss
    }

    fn heap(&self) -> i64 {
        self.heap
    }
}

async fn memory(service: &service::ServiceProcess, client: &reqwest::Client) -> Memory {
    Memory {
        rss: service.rss_kib(),
        heap: (service.metric(client, "finsec_heap_in_use_bytes").await / 1024.0) as i64,
    }
}

/// Waits until no actor runs (every user hibernated), then reads the memory.
async fn until_hibernated(service: &service::ServiceProcess, client: &reqwest::Client) -> Memory {
    let waited = Instant::now();
    while gauge(service, client, "finsec_resident_actors").await > 0 && waited.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("hibernated after {:.0?}", waited.elapsed());
    // The tick that saw them stop asks the allocator to hand their memory back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    memory(service, client).await
}

/// `count` users from id `first + 1`, each with `sessions` live sessions; their tokens, one
/// per user.
async fn insert_population(
    database: &database::BenchDatabase,
    issuer: &TokenIssuer,
    first: usize,
    count: usize,
    sessions: usize,
) -> Vec<String> {
    // Nobody logs in: the users need no real password hash.
    database
        .insert_users("resident", first..first + count, 0, "x")
        .await;
    let mut db = database.connect().await;
    let now = Utc::now();
    let at = now.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let mut tokens = Vec::with_capacity(count);
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(1000) {
        let mut rows = Vec::new();
        for i in chunk {
            for s in 0..sessions {
                let device = Device {
                    user_agent: Some(USER_AGENT.into()),
                    ip: Some("203.0.113.7".into()),
                };
                let session = Session::open(
                    UserId::new(*i as u64 + 1),
                    device,
                    now,
                    chrono::Duration::hours(8),
                );
                if s == 0 {
                    tokens.push(issuer.issue(&session, now).unwrap());
                }
                rows.push(format!(
                    "('{}', {}, '{at}', '{at}', '{}', '{USER_AGENT}', '203.0.113.7')",
                    session.id,
                    i + 1,
                    session.expires_at.format("%Y-%m-%d %H:%M:%S%.6f")
                ));
            }
        }
        db.query_drop(format!(
            "INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at, \
             user_agent, ip) VALUES {}",
            rows.join(",")
        ))
        .await
        .unwrap();
    }
    db.disconnect().await.ok();
    tokens
}

/// One `GET /api/auth/me` per token, `CONCURRENCY` at a time: the latency of each answered
/// 200, and how many were not.
async fn first_requests(
    client: &reqwest::Client,
    base: &str,
    tokens: &[String],
) -> (Vec<Duration>, usize) {
    let tokens = Arc::new(tokens.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, tokens, next) = (client.clone(), tokens.clone(), next.clone());
            let url = format!("{base}/api/auth/me");
            tokio::spawn(async move {
                let (mut latencies, mut refused) = (Vec::new(), 0);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(token) = tokens.get(i) else {
                        return (latencies, refused);
                    };
                    let sent = Instant::now();
                    let response = client.get(&url).bearer_auth(token).send().await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        latencies.push(sent.elapsed());
                    } else {
                        refused += 1;
                    }
                }
            })
        })
        .collect();
    let (mut all, mut refused) = (Vec::with_capacity(tokens.len()), 0);
    for worker in workers {
        let (latencies, failed) = worker.await.unwrap();
        all.extend(latencies);
        refused += failed;
    }
    (all, refused)
}

fn percentiles(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

async fn gauge(service: &service::ServiceProcess, client: &reqwest::Client, name: &str) -> u64 {
    service.metric(client, name).await as u64
}
