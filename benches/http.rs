//! `GET /api/auth/me` against the bare route `GET /`, on the same server, with `wrk`: the
//! ratio issue 12 sets a target for. Run through `scripts/bench` (which installs wrk from
//! Debian's packages when it is missing), or `cargo bench --bench http`.
//!
//! The server runs in this process (a release build) on 127.0.0.1 over a fresh MySQL database
//! of its own (`FINSEC_BENCH_SERVER_URL`, default `mysql://root@127.0.0.1:3306`; dropped
//! after). 1,000 users with three
//! sessions each; wrk (`-t2 -c32`, `FINSEC_BENCH_SECONDS` per run, default 10) spreads its
//! requests over the 3,000 tokens. Each route is measured `FINSEC_BENCH_RUNS` times (default
//! 3), alternating, and the medians are compared: the machine is shared and noisy, so only
//! ratios from one run mean anything. Loopback only; every run is bounded in time.

#[path = "support/chart.rs"]
mod chart;
#[path = "support/database.rs"]
mod database;
#[path = "support/wrk.rs"]
mod wrk;

use std::path::Path;
use std::time::Duration;

use database::BenchDatabase;
use finsec::auth::PasswordHasher;
use finsec::config::Settings;
use finsec::startup::Application;
use serde_json::{Value, json};
use wrk::{Run, env_or, median, median_run, wrk, wrk_with};

const USERS: usize = 1_000;
/// Users whose password hash has the production cost (log_n 15), for the login load.
const LOAD_USERS: usize = 100;
const PRODUCTION_LOG_N: u8 = 15;
const SESSIONS_PER_USER: usize = 3;
const PASSWORD: &str = "bench-password-0123456789";
/// Requests per second of the latency probe: light enough to leave the cores to the logins.
const PROBE_RATE: u32 = 200;
/// A resource server allowed to introspect (issue 13).
const INTROSPECTION_CLIENT: &str = "bench-rs:bench-introspection-secret-0123456789abcdef";
/// The concurrency sweep behind the chart: wrk connections per point.
const SWEEP: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Latency percentiles of a fixed-rate probe.
#[derive(Debug, Clone, Copy)]
struct Probe {
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
}

/// `GET /api/auth/me` at a fixed `rate` for `seconds`, open loop (a request every 1/rate s,
/// whatever the answers do, so a stall shows in the latencies instead of slowing the probe),
/// from a thread and runtime of its own. Unlike wrk, which sends as fast as the server
/// answers, the probe takes little CPU: it measures what a login load does to a request's
/// latency, not what two load generators do to each other.
fn probe(url: String, tokens: std::sync::Arc<Vec<String>>, rate: u32, seconds: u64) -> Probe {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut requests = Vec::new();
            for i in 0..(rate as u64 * seconds) as usize {
                tick.tick().await;
                let (client, url, latencies) = (client.clone(), url.clone(), latencies.clone());
                let token = tokens[i * 7919 % tokens.len()].clone();
                requests.push(tokio::spawn(async move {
                    let sent = std::time::Instant::now();
                    let ok = client
                        .get(url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    latencies.lock().unwrap().push(sent.elapsed());
                    ok
                }));
            }
            let mut failed = 0;
            for request in requests {
                failed += usize::from(!request.await.unwrap_or(false));
            }
            let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
            latencies.sort();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
            Probe {
                p50_ms: at(0.50).as_secs_f64() * 1e3,
                p99_ms: at(0.99).as_secs_f64() * 1e3,
                failed,
            }
        })
    })
    .join()
    .expect("the probe's thread")
}

#[tokio::main]
async fn main() {
    let seconds: u64 = env_or("FINSEC_BENCH_SECONDS", 10);
    let runs: usize = env_or("FINSEC_BENCH_RUNS", 3);
    let database = BenchDatabase::create().await;
    let url = database.url.clone();

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let figment = Settings::figment(&dir, None)
        .merge(("http.port", 0))
        .merge(("database.url", url.clone()))
        .merge(("database.pending_revocations", "target/bench-journal.log"))
        .merge(("log.level", "warn"))
        .merge(("jwt.secret", "bench-jwt-secret-0123456789abcdef0123456789"))
        .merge((
            "security.encryption_key",
            "YmVuY2ggZW5jcnlwdGlvbiBrZXksIDMyIGJ5dGVzISE=",
        ))
        .merge(("security.ip_rate", 0))
        .merge(("introspection.clients", vec![INTROSPECTION_CLIENT]))
        .merge(("password.log_n", 4));
    let settings = Settings::from_figment(figment).expect("bench settings");
    finsec::telemetry::init(&settings.log);
    let verify_cost;
    {
        let hasher = PasswordHasher::new(&settings.password)
            .await
            .expect("hasher");
        // One hash for every user: the bench measures validations, not hashing.
        let hash = hasher.hash(PASSWORD.to_owned().into()).await.unwrap();
        database.insert_users("bench", 0..USERS, 0, &hash).await;
        // The login load: real hashing cost, so logins compete for the cores as in production.
        let mut costly = settings.password.clone();
        costly.log_n = PRODUCTION_LOG_N;
        let costly = PasswordHasher::new(&costly).await.expect("hasher");
        let started = std::time::Instant::now();
        let hash = costly.hash(PASSWORD.to_owned().into()).await.unwrap();
        verify_cost = started.elapsed();
        database
            .insert_users("load", 0..LOAD_USERS, USERS as u64, &hash)
            .await;
    }

    let app = Application::build(&settings).await.expect("service starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(USERS * SESSIONS_PER_USER);
    for round in 0..SESSIONS_PER_USER {
        for i in 0..USERS {
            let body: Value = http
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"email": format!("bench-{i}@example.com"), "password": PASSWORD}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("login body");
            let token = body["access_token"].as_str().unwrap_or_else(|| {
                panic!("login {round}/{i} failed: {body}");
            });
            tokens.push(token.to_owned());
        }
    }
    let tokens_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tokens.txt");
    std::fs::write(&tokens_file, tokens.join("\n") + "\n").unwrap();
    // Each script sends the tokens in turn; `request` is the Lua expression of one request,
    // with the token in `tokens[i]`, after `setup` (run once).
    let token_script = |name: &str, setup: &str, request: &str| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-{name}.lua"));
        std::fs::write(
            &script,
            format!(
                r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
{setup}
request = function()
  i = i % #tokens + 1
  return {request}
end
"#,
                tokens_file.display()
            ),
        )
        .unwrap();
        script
    };
    // Both routes get the same requests from the same Lua function (a token each, rotating):
    // wrk's per-request Lua costs client CPU on these shared cores, so `/` without it would
    // be measured with a faster load generator. `/` ignores the header.
    let bearer_script = |route: &str| {
        token_script(
            &route.replace('/', "_"),
            "",
            &format!(
                r#"wrk.format("GET", "{route}", {{["Authorization"] = "Bearer " .. tokens[i]}})"#
            ),
        )
    };
    let script = bearer_script("/api/auth/me");
    let root_script = bearer_script("/");
    // Introspection (issue 13): the same tokens, asked by a resource server.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        INTROSPECTION_CLIENT,
    );
    let introspect_script = token_script(
        "introspect",
        &format!(
            r#"local headers = {{["Content-Type"] = "application/x-www-form-urlencoded",
                 ["Authorization"] = "Basic {basic}"}}"#
        ),
        r#"wrk.format("POST", "/api/auth/introspect", headers, "token=" .. tokens[i])"#,
    );

    let login_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-login.lua");
    std::fs::write(
        &login_script,
        format!(
            r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local i = math.random({LOAD_USERS})
request = function()
  i = i % {LOAD_USERS} + 1
  return wrk.format(nil, "/api/auth/login", nil,
    '{{"email": "load-' .. (i - 1) .. '@example.com", "password": "{PASSWORD}"}}')
end
"#
        ),
    )
    .unwrap();

    // wrk blocks its thread: run it off the runtime, which serves the requests.
    let mut bare = Vec::new();
    let mut me = Vec::new();
    let mut introspected = Vec::new();
    for _ in 0..runs {
        let (root, root_script) = (format!("{base}/"), root_script.clone());
        bare.push(
            tokio::task::spawn_blocking(move || wrk(&root, Some(&root_script), seconds))
                .await
                .unwrap(),
        );
        let (url, script) = (format!("{base}/api/auth/me"), script.clone());
        me.push(
            tokio::task::spawn_blocking(move || wrk(&url, Some(&script), seconds))
                .await
                .unwrap(),
        );
        let (url, script) = (
            format!("{base}/api/auth/introspect"),
            introspect_script.clone(),
        );
        introspected.push(
            tokio::task::spawn_blocking(move || wrk(&url, Some(&script), seconds))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // /me's latency at a fixed rate, idle and while 32 clients log in continuously at the
    // production hashing cost.
    let tokens = std::sync::Arc::new(tokens);
    let mut quiet = Vec::new();
    let mut loaded = Vec::new();
    let mut logins = Vec::new();
    for _ in 0..runs {
        let (url, probe_tokens) = (format!("{base}/api/auth/me"), tokens.clone());
        quiet.push(
            tokio::task::spawn_blocking(move || probe(url, probe_tokens, PROBE_RATE, seconds))
                .await
                .unwrap(),
        );
        let (login_url, login_script) = (format!("{base}/api/auth/login"), login_script.clone());
        let login_load = tokio::task::spawn_blocking(move || {
            wrk_with(
                &login_url,
                Some(&login_script),
                seconds + 2,
                &["-t1", "-c32"],
                true,
            )
        });
        // Let the hashing queue fill before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (url, probe_tokens) = (format!("{base}/api/auth/me"), tokens.clone());
        loaded.push(
            tokio::task::spawn_blocking(move || probe(url, probe_tokens, PROBE_RATE, seconds))
                .await
                .unwrap(),
        );
        logins.push(login_load.await.unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Throughput and p99 against concurrency, for the chart: each point the median of
    // `runs` short wrk runs, `/` and `/me` alternating at the same concurrency.
    let sweep_seconds: u64 = env_or("FINSEC_BENCH_SWEEP_SECONDS", 3);
    let mut sweep = Vec::new();
    for connections in SWEEP {
        let threads = connections.min(2);
        let mut pair = [Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, (route, script)) in [("/", &root_script), ("/api/auth/me", &script)]
                .into_iter()
                .enumerate()
            {
                let (url, script) = (format!("{base}{route}"), script.clone());
                let shape = [format!("-t{threads}"), format!("-c{connections}")];
                pair[i].push(
                    tokio::task::spawn_blocking(move || {
                        let shape: Vec<&str> = shape.iter().map(String::as_str).collect();
                        wrk_with(&url, Some(&script), sweep_seconds, &shape, false)
                    })
                    .await
                    .unwrap(),
                );
            }
        }
        sweep.push((connections, median_run(&pair[0]), median_run(&pair[1])));
    }

    let _ = stop.send(());
    let _ = server_task.await;
    database.drop().await;
    let _ = std::fs::remove_file(&tokens_file);

    let row = |name: &str, runs: &[Run]| {
        let rps: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rps)).collect();
        println!(
            "| {name:<28} | {:>24} | {:>9.0} | {:>8.2} | {:>8.2} |",
            rps.join(" · "),
            median(runs.iter().map(|r| r.rps).collect()),
            median(runs.iter().map(|r| r.p50_ms).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
        );
    };
    println!(
        "wrk -t2 -c32 -d{seconds}s, {runs} runs each, alternating; {} tokens over {USERS} users; \
         MySQL store",
        tokens.len(),
    );
    println!(
        "| route                        | req/s, each run          | median/s  | p50 (ms) | p99 (ms) |"
    );
    println!(
        "|------------------------------|--------------------------|-----------|----------|----------|"
    );
    row("GET /", &bare);
    row("GET /api/auth/me", &me);
    row("POST /api/auth/introspect", &introspected);
    row("POST /api/auth/login (load)", &logins);
    println!(
        "\n/me ÷ / (medians): **{:.2}** (target ≥ 0.80)",
        median(me.iter().map(|r| r.rps).collect()) / median(bare.iter().map(|r| r.rps).collect())
    );
    println!(
        "introspect ÷ /me (medians): **{:.2}** (issue 13: as fast as /me)",
        median(introspected.iter().map(|r| r.rps).collect())
            / median(me.iter().map(|r| r.rps).collect())
    );
    println!(
        "\n`GET /api/auth/me` at {PROBE_RATE}/s (open loop), {runs} runs each: \n\n\
         | probe                        | p50 (ms), each run       | p99 (ms), each run       | failed |\n\
         |------------------------------|--------------------------|--------------------------|--------|"
    );
    let probe_row = |name: &str, probes: &[Probe]| {
        let each = |f: fn(&Probe) -> f64| {
            probes
                .iter()
                .map(|p| format!("{:.2}", f(p)))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        println!(
            "| {name:<28} | {:>24} | {:>24} | {:>6} |",
            each(|p| p.p50_ms),
            each(|p| p.p99_ms),
            probes.iter().map(|p| p.failed).sum::<usize>()
        );
    };
    probe_row("idle", &quiet);
    probe_row("32 clients logging in", &loaded);
    let idle_p99 = median(quiet.iter().map(|p| p.p99_ms).collect());
    let loaded_p99 = median(loaded.iter().map(|p| p.p99_ms).collect());
    println!(
        "\n/me p99 with 32 clients logging in ÷ idle: **{:.1}×** ({loaded_p99:.2} ms ÷ \
         {idle_p99:.2} ms; target ≤ 3×)",
        loaded_p99 / idle_p99
    );
    println!(
        "\nConcurrency sweep (wrk -t≤2 -d{sweep_seconds}s, medians of {runs} runs a point):\n\n\
         | connections | GET / req/s | GET / p99 (ms) | /me req/s | /me p99 (ms) | /me ÷ / |\n\
         |-------------|-------------|----------------|-----------|--------------|---------|"
    );
    for (connections, bare, me) in &sweep {
        println!(
            "| {connections:>11} | {:>11.0} | {:>14.2} | {:>9.0} | {:>12.2} | {:>7.2} |",
            bare.rps,
            bare.p99_ms,
            me.rps,
            me.p99_ms,
            me.rps / bare.rps
        );
    }
    let svg = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-concurrency.svg");
    let line = |label, pick: fn(&(u32, Run, Run)) -> Run| chart::Line {
        label,
        points: sweep
            .iter()
            .map(|point| {
                let run = pick(point);
                (point.0, run.rps, run.p99_ms)
            })
            .collect(),
    };
    chart::draw(
        &svg,
        "GET / and GET /api/auth/me (MySQL store, release build, loopback, 2 shared cores)",
        &[line("GET /", |p| p.1), line("GET /api/auth/me", |p| p.2)],
    )
    .expect("the chart is written");
    println!("chart: {}", svg.display());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let capacity = cores / verify_cost.as_secs_f64();
    let login_rate = median(logins.iter().map(|r| r.rps).collect());
    println!(
        "logins: {login_rate:.1}/s against a hashing capacity of {capacity:.1}/s ({cores} cores \
         ÷ {:.1} ms a verify at log_n {PRODUCTION_LOG_N}): **{:.2}** (target ≥ 0.90)",
        verify_cost.as_secs_f64() * 1e3,
        login_rate / capacity
    );
}
