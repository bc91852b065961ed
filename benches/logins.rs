//! The write path (issue 12, target 5): logins of many distinct users with hashing made
//! negligible (scrypt log_n 4), so what is measured is the service's own work per login and
//! what it asks of MySQL. Run through `scripts/bench logins`, or `cargo bench --bench logins`.
//!
//! `FINSEC_BENCH_USERS` users (default 100,000) are inserted in bulk into a fresh MySQL
//! database (`FINSEC_BENCH_SERVER_URL`; dropped after). The release `finsec` binary runs as a
//! child process; wrk (`-t2 -c32`) posts logins, each for a user not logged in before: a
//! warm-up over the first fifth of the users (the pool fills, the statements are prepared),
//! then the measured run over the rest, `FINSEC_BENCH_SECONDS` long (default 20). Every
//! login is a first one, so each also spawns the user's actor and loads the user from MySQL.
//! MariaDB's global counters (connections opened, statements prepared, statements, commits)
//! are read before and after the measured run, with both processes' CPU time, so the server
//! must be otherwise idle. Loopback only; every run is bounded in time.

#[path = "support/database.rs"]
mod database;
#[path = "support/service.rs"]
mod service;
#[path = "support/wrk.rs"]
mod wrk;

use std::path::Path;

use database::BenchDatabase;
use finsec::auth::PasswordHasher;
use finsec::config::PasswordSettings;
use service::{ServiceProcess, cpu_seconds};
use wrk::{env_or, wrk_args};

const PASSWORD: &str = "bench-password-0123456789";
const LOG_N: u8 = 4;
const SHAPE: [&str; 2] = ["-t2", "-c32"];
const WARM_UP_SECONDS: u64 = 5;

#[tokio::main]
async fn main() {
    let users: usize = env_or("FINSEC_BENCH_USERS", 100_000);
    let seconds: u64 = env_or("FINSEC_BENCH_SECONDS", 20);
    let database = BenchDatabase::create().await;
    let hasher = PasswordHasher::new(&PasswordSettings {
        log_n: LOG_N,
        r: 8,
        p: 1,
        max_concurrent_hashes: 2,
        max_queued_hashes: 64,
        min_length: 12,
    })
    .await
    .expect("hasher");
    let hash = hasher.hash(PASSWORD.to_owned().into()).await.unwrap();
    database.insert_users("login", 0..users, 0, &hash).await;

    let log_n = LOG_N.to_string();
    let service =
        ServiceProcess::start(&database.url, &[("FINSEC__PASSWORD__LOG_N", &log_n)]).await;
    let client = reqwest::Client::new();

    // Each wrk thread takes every other user of its range, from its own offset: every
    // request is a different user's first login until the range runs out.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-logins.lua");
    std::fs::write(
        &script,
        format!(
            r#"local threads = 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end
function init(args)
  first, count, stride = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  i = offset
end
request = function()
  local user = first + i % count
  i = i + stride
  return wrk.format("POST", "/api/auth/login", {{["Content-Type"] = "application/json"}},
    '{{"email": "login-' .. user .. '@example.com", "password": "{PASSWORD}"}}')
end
"#
        ),
    )
    .unwrap();
    let url = format!("{}/api/auth/login", service.base);
    let run = |first: usize, count: usize, seconds: u64| {
        let (url, script) = (url.clone(), script.clone());
        let args = [first.to_string(), count.to_string(), "2".to_owned()];
        tokio::task::spawn_blocking(move || {
            wrk_args(&url, Some(&script), &args, seconds, &SHAPE, true)
        })
    };

    // A fifth of the users: enough first logins to grow the pool to its size.
    let warm = users / 5;
    let warm_up = run(0, warm, WARM_UP_SECONDS).await.unwrap();
    let mariadb = database::server_pid();
    let cpu = |pid: Option<u32>| pid.map_or(f64::NAN, cpu_seconds);
    let (before, service_cpu, mariadb_cpu) = (
        database.counters().await,
        cpu(Some(service.pid())),
        cpu(mariadb),
    );
    let measured = run(warm, users - warm, seconds).await.unwrap();
    let counters = database.counters().await.since(before);
    let service_cpu = cpu(Some(service.pid())) - service_cpu;
    let mariadb_cpu = cpu(mariadb) - mariadb_cpu;
    let actors = service.metric(&client, "finsec_resident_actors").await;
    drop(service);
    database.drop().await;

    let logins = measured.requests as f64;
    let distinct = measured.requests.min((users - warm) as u64);
    println!(
        "{users} users, scrypt log_n {LOG_N}, wrk {} -d{seconds}s after a {WARM_UP_SECONDS} s \
         warm-up ({} logins); {} logins of {distinct} distinct users, {actors} actors resident \
         at the end; {} not answered 200",
        SHAPE.join(" "),
        warm_up.requests,
        measured.requests,
        measured.refused,
    );
    println!(
        "| logins/s | p50 (ms) | p99 (ms) | new connections / login | prepares / login | \
         statements / login | commits / login | service CPU / login | MariaDB CPU / login |\n\
         |----------|----------|----------|-------------------------|------------------|\
         --------------------|-----------------|---------------------|---------------------|\n\
         | **{:.0}** | {:.2} | {:.2} | {:.4} ({} in all) | {:.4} ({} in all) | {:.2} | {:.2} | \
         {:.0} µs | {:.0} µs |",
        measured.rps,
        measured.p50_ms,
        measured.p99_ms,
        counters.connections as f64 / logins,
        counters.connections,
        counters.prepares as f64 / logins,
        counters.prepares,
        counters.questions as f64 / logins,
        counters.commits as f64 / logins,
        service_cpu / logins * 1e6,
        mariadb_cpu / logins * 1e6,
    );
    println!("target 5: ≥ 3,000 logins/s, no new connection and no prepare in the steady state");
}
