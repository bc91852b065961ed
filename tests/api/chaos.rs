//! The chaos test: three real `finsec` processes on one MariaDB database (reached through a
//! relay the test can take down or slow) and one `nats-server` of the test's own (each node
//! through a relay of its own), a mixed load from many concurrent clients recording every
//! acknowledged outcome, and faults injected at seeded random moments: `kill -9` a node and
//! restart it, take the database down, slow it, stop the bus, cut one node off the bus. Then a checker holds the record to the promise:
//!
//! - **lost**: a session whose login was answered 200, and that no request ever tried to end,
//!   is refused (during the run or at the end, on any node);
//! - **revived**: a session whose end was answered 200 (logout, logout-all, password change)
//!   is accepted by a request sent after that answer, on any node; or, once everything is
//!   healed, a session whose logout was answered 503 (the journal's promise);
//! - **5xx**: any server error other than 503;
//! - **memory**: any node above `MAX_RSS_MIB` at the end;
//! - a **journal** not drained once everything is healed.
//!
//! `scripts/test` runs a short seeded run (`FINSEC_CHAOS_SECONDS`, default 20;
//! `FINSEC_CHAOS_SEED`, default 1). `scripts/chaos --minutes 10 --seed N` runs a long one and
//! writes its figures to `FINSEC_CHAOS_REPORT` (docs/RELIABILITY.md records the last).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{LoggedIn, NatsServer, Partition, TestUser, spawn_app};
use crate::process::{ServiceProcess, TempJournal};

const NODES: usize = 3;
const WORKERS: usize = 12;
const MAX_RSS_MIB: u64 = 256;

/// SplitMix64: a small seeded generator, so a run can be repeated.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

/// One session the service acknowledged (a login answered 200).
struct Tracked {
    user: usize,
    session: LoggedIn,
    /// A request that may end it was sent (answered or not): a refusal is no longer a loss.
    ending_sent: bool,
    /// When a request that ended it was answered 200: from then on it must be refused.
    ended_acked: Option<Instant>,
    /// Which request that was, where, and when (for the report of a violation).
    ended_by: Option<String>,
    /// Its logout was answered 503: kept in a journal, it must be refused once all is healed.
    ended_unacked: bool,
}

struct Ledger {
    started: Instant,
    /// The faults as they were injected and healed, with their times (for the report).
    timeline: Vec<String>,
    sessions: Vec<Tracked>,
    operations: u64,
    acked_logins: u64,
    acked_ends: u64,
    shed: u64,
    unacked_logouts: u64,
    violations: Vec<String>,
}

impl Ledger {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            timeline: Vec::new(),
            sessions: Vec::new(),
            operations: 0,
            acked_logins: 0,
            acked_ends: 0,
            shed: 0,
            unacked_logouts: 0,
            violations: Vec::new(),
        }
    }

    /// Milliseconds into the run.
    fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.started).as_millis()
    }

    /// Records that a request sent at `sent` ended session `i` with a 200.
    fn ended(&mut self, i: usize, how: &str, url: &str, sent: Instant) {
        let now = Instant::now();
        let what = format!(
            "{how} on {url}, sent at {} ms, answered 200 at {} ms",
            self.ms(sent),
            self.ms(now)
        );
        let tracked = &mut self.sessions[i];
        if tracked.ended_acked.is_none() {
            tracked.ended_acked = Some(now);
            tracked.ended_by = Some(what);
        }
    }

    fn fault(&mut self, what: String) {
        let line = format!("{} ms: {what}", self.ms(Instant::now()));
        self.timeline.push(line);
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(what);
        }
    }
}

struct Cluster {
    nodes: Vec<tokio::sync::RwLock<ServiceProcess>>,
    urls: Vec<String>,
}

/// What a client sees: an answer, or nothing (a killed node, a timeout).
async fn send(request: reqwest::RequestBuilder) -> Option<(StatusCode, Value)> {
    let response = request.timeout(Duration::from_secs(5)).send().await.ok()?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// Checks a status against the rules every answer follows.
fn check_status(ledger: &Mutex<Ledger>, status: StatusCode, what: &str) {
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        ledger
            .lock()
            .unwrap()
            .violation(format!("{what}: {status}"));
    }
}

#[tokio::test]
async fn chaos_loses_and_revives_nothing() {
    let _machine = crate::process::MACHINE.lock().await;
    let seconds: u64 = std::env::var("FINSEC_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FINSEC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut fixture = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..WORKERS {
        // A third of the customers sign in with a second factor.
        users.push(if i % 3 == 0 {
            fixture.mfa_user().await
        } else {
            fixture.user().await
        });
    }
    fixture.stop().await;
    let database = Arc::new(Partition::relay_to(fixture.db.port()).await);
    let db_url = fixture.db.url_through(database.port);
    let bus = Arc::new(Mutex::new(NatsServer::start()));
    let bus_port = bus.lock().unwrap().port;
    // Each node reaches the bus through a relay of its own: one node can be partitioned.
    let mut links = Vec::new();
    for _ in 0..NODES {
        links.push(Partition::relay_to(bus_port).await);
    }
    let links = Arc::new(links);
    let journals: Vec<TempJournal> = (0..NODES).map(|_| TempJournal::new()).collect();
    let mut nodes = Vec::new();
    for (journal, link) in journals.iter().zip(links.iter()) {
        nodes.push(
            ServiceProcess::start(
                &db_url,
                &journal.0,
                &[
                    ("FINSEC__CLUSTER__BUS_URL", &link.url()),
                    ("FINSEC__SESSION__MAX_PER_USER", "100000"),
                    ("FINSEC__PASSWORD__LOG_N", "4"),
                ],
            )
            .await,
        );
    }
    let cluster = Arc::new(Cluster {
        urls: nodes.iter().map(|n| n.base.clone()).collect(),
        nodes: nodes.into_iter().map(tokio::sync::RwLock::new).collect(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);

    let mut workers = Vec::new();
    for (w, user) in users.into_iter().enumerate() {
        let rng = Rng(seed.wrapping_mul(1000).wrapping_add(w as u64));
        workers.push(tokio::spawn(worker(
            w,
            user,
            rng,
            cluster.clone(),
            ledger.clone(),
            deadline,
        )));
    }
    let faults = tokio::spawn(inject_faults(
        Rng(seed),
        cluster.clone(),
        ledger.clone(),
        Targets {
            database: database.clone(),
            bus: bus.clone(),
            links: links.clone(),
        },
        deadline,
    ));
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    let injected = faults.await.expect("the fault injector panicked");

    // Everything healed: every node up and ready, the journals drained.
    database.up();
    database.delay(Duration::ZERO);
    for link in links.iter() {
        link.heal();
    }
    let settle = Instant::now() + Duration::from_secs(30);
    for node in &cluster.nodes {
        while !node.read().await.ready().await {
            assert!(
                Instant::now() < settle,
                "a node did not recover after the run"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The final check, on every node.
    let client = reqwest::Client::new();
    // Must be dead: ended with a 200, or logged out with a 503 (journalled). Must be live:
    // never the target of a request that could end it.
    let checks: Vec<(String, LoggedIn, bool)> = {
        let ledger = ledger.lock().unwrap();
        ledger
            .sessions
            .iter()
            .filter(|t| t.ended_acked.is_some() || t.ended_unacked || !t.ending_sent)
            .map(|t| {
                let dead = t.ended_acked.is_some() || t.ended_unacked;
                let how = if t.ended_acked.is_none() && t.ended_unacked {
                    " (its logout answered 503)"
                } else {
                    ""
                };
                (format!("user {}{how}", t.user), t.session.clone(), dead)
            })
            .collect()
    };
    for (who, session, ended) in &checks {
        for url in &cluster.urls {
            let answer = send(
                client
                    .get(format!("{url}/api/auth/me"))
                    .bearer_auth(&session.token),
            )
            .await;
            let status = answer.map(|(s, _)| s);
            let mut ledger = ledger.lock().unwrap();
            match (ended, status) {
                (true, Some(StatusCode::OK)) => ledger.violation(format!(
                    "revived at the end: {who} session {} on {url}",
                    session.session_id
                )),
                (false, Some(s)) if s != StatusCode::OK => ledger.violation(format!(
                    "lost at the end: {who} session {} answered {s} on {url}",
                    session.session_id
                )),
                (_, None) => ledger.violation(format!("{url} did not answer after the run")),
                _ => {}
            }
        }
    }
    // And every journal drains once the database is back.
    for journal in &journals {
        let drained = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&journal.0).map_or(0, |m| m.len()) > 0 {
            if Instant::now() > drained {
                ledger
                    .lock()
                    .unwrap()
                    .violation(format!("journal {} not drained", journal.0.display()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut max_rss_mib = 0;
    for node in &cluster.nodes {
        max_rss_mib = max_rss_mib.max(node.read().await.rss_kib() / 1024);
    }

    let ledger = ledger.lock().unwrap();
    let lost = ledger
        .violations
        .iter()
        .filter(|v| v.starts_with("lost"))
        .count();
    let revived = ledger
        .violations
        .iter()
        .filter(|v| v.starts_with("revived"))
        .count();
    let summary = json!({
        "seed": seed,
        "seconds": seconds,
        "nodes": NODES,
        "clients": WORKERS,
        "operations": ledger.operations,
        "acknowledged_logins": ledger.acked_logins,
        "acknowledged_ends": ledger.acked_ends,
        "shed_503": ledger.shed,
        "logouts_answered_503": ledger.unacked_logouts,
        "sessions_checked_at_end": checks.len() * NODES,
        "faults": injected,
        "lost": lost,
        "revived": revived,
        "violations": ledger.violations.len(),
        "max_rss_mib": max_rss_mib,
    });
    eprintln!("chaos: {summary}");
    if let Ok(path) = std::env::var("FINSEC_CHAOS_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    }
    assert!(
        ledger.violations.is_empty(),
        "the record shows violations:\n{}\nthe faults:\n{}",
        ledger.violations.join("\n"),
        ledger.timeline.join("\n")
    );
    assert!(
        ledger.acked_logins > 0 && ledger.acked_ends > 0,
        "{summary}"
    );
    assert!(
        max_rss_mib < MAX_RSS_MIB,
        "a node uses {max_rss_mib} MiB after the run"
    );
    drop(bus);
}

/// One client: signs its own customer in (and out), changes that customer's password, and
/// validates and ends any recorded session, on random nodes. Only this worker signs its own
/// customer in or ends all their sessions, so the record of what a logout-all or a password
/// change ends is exact.
async fn worker(
    w: usize,
    mut user: TestUser,
    mut rng: Rng,
    cluster: Arc<Cluster>,
    ledger: Arc<Mutex<Ledger>>,
    deadline: Instant,
) {
    let client = reqwest::Client::new();
    let mut counter = 0u64;
    // A password change answered 503 may or may not have committed (one transaction): both
    // stay candidates until a login settles which.
    let mut password_candidates: Vec<String> = vec![user.password.clone()];
    while Instant::now() < deadline {
        let url = cluster.urls[rng.below(NODES)].clone();
        ledger.lock().unwrap().operations += 1;
        match rng.below(100) {
            0..=49 => validate(&client, &url, &mut rng, &ledger).await,
            50..=69 => {
                sign_in(
                    &client,
                    &url,
                    w,
                    &mut user,
                    &mut password_candidates,
                    &ledger,
                )
                .await
            }
            70..=84 => logout_one(&client, &url, &mut rng, &ledger).await,
            85..=92 => logout_all(&client, &url, w, &ledger).await,
            _ => {
                counter += 1;
                change_password(
                    &client,
                    &url,
                    w,
                    &user,
                    &mut password_candidates,
                    format!("chaos-{w}-{counter}-Quartz-Violet-{:x}", rng.next()),
                    &ledger,
                )
                .await
            }
        }
        tokio::time::sleep(rng.millis(5, 40)).await;
    }
}

async fn validate(client: &reqwest::Client, url: &str, rng: &mut Rng, ledger: &Mutex<Ledger>) {
    let picked = {
        let ledger = ledger.lock().unwrap();
        if ledger.sessions.is_empty() {
            return;
        }
        let i = rng.below(ledger.sessions.len());
        (i, ledger.sessions[i].session.clone())
    };
    let sent = Instant::now();
    let Some((status, _)) = send(
        client
            .get(format!("{url}/api/auth/me"))
            .bearer_auth(&picked.1.token),
    )
    .await
    else {
        return;
    };
    check_status(ledger, status, "GET /api/auth/me");
    let mut ledger = ledger.lock().unwrap();
    let tracked = &ledger.sessions[picked.0];
    let (ended_before, ending_sent, user) = (
        tracked.ended_acked.is_some_and(|at| at < sent),
        tracked.ending_sent,
        tracked.user,
    );
    match status {
        StatusCode::OK if ended_before => {
            let ended_by = tracked.ended_by.clone().unwrap_or_default();
            let (sent, answered) = (ledger.ms(sent), ledger.ms(Instant::now()));
            ledger.violation(format!(
                "revived: user {user} session {} accepted on {url} (sent at {sent} ms, \
                 answered at {answered} ms) after its end was acknowledged: {ended_by}",
                picked.1.session_id
            ))
        }
        StatusCode::UNAUTHORIZED if !ending_sent => ledger.violation(format!(
            "lost: user {user} session {} refused on {url}, never ended",
            picked.1.session_id
        )),
        StatusCode::SERVICE_UNAVAILABLE => ledger.shed += 1,
        _ => {}
    }
}

async fn sign_in(
    client: &reqwest::Client,
    url: &str,
    w: usize,
    user: &mut TestUser,
    candidates: &mut Vec<String>,
    ledger: &Mutex<Ledger>,
) {
    for password in candidates.clone() {
        let body = json!({"email": user.email, "password": password});
        let Some((status, body)) =
            send(client.post(format!("{url}/api/auth/login")).json(&body)).await
        else {
            return;
        };
        check_status(ledger, status, "POST /api/auth/login");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            ledger.lock().unwrap().shed += 1;
            return;
        }
        if status == StatusCode::UNAUTHORIZED {
            continue; // the other candidate, if any
        }
        if status != StatusCode::OK {
            return;
        }
        // The password is settled.
        *candidates = vec![password.clone()];
        user.password = password;
        let body = if body["requireMfa"] == json!(true) {
            let verify = json!({
                "userId": user.id.get(),
                "otpCode": user.totp_code(0),
                "mfaToken": body["mfaToken"],
            });
            let Some((status, body)) = send(
                client
                    .post(format!("{url}/api/auth/verify-mfa"))
                    .json(&verify),
            )
            .await
            else {
                return;
            };
            check_status(ledger, status, "POST /api/auth/verify-mfa");
            if status != StatusCode::OK {
                // A code already spent this step (401), or an outage (503): not acknowledged.
                return;
            }
            body
        } else {
            body
        };
        let mut ledger = ledger.lock().unwrap();
        ledger.acked_logins += 1;
        ledger.sessions.push(Tracked {
            user: w,
            session: LoggedIn::from_body(&body),
            ending_sent: false,
            ended_acked: None,
            ended_by: None,
            ended_unacked: false,
        });
        return;
    }
    if candidates.len() == 1 {
        ledger.lock().unwrap().violation(format!(
            "user {w}: the password last acknowledged was refused at {url}"
        ));
    }
}

async fn logout_one(client: &reqwest::Client, url: &str, rng: &mut Rng, ledger: &Mutex<Ledger>) {
    let picked = {
        let mut ledger = ledger.lock().unwrap();
        let open: Vec<usize> = (0..ledger.sessions.len())
            .filter(|&i| ledger.sessions[i].ended_acked.is_none())
            .collect();
        if open.is_empty() {
            return;
        }
        let i = open[rng.below(open.len())];
        ledger.sessions[i].ending_sent = true;
        (i, ledger.sessions[i].session.clone())
    };
    let sent = Instant::now();
    let Some((status, _)) = send(
        client
            .post(format!("{url}/api/auth/logout"))
            .bearer_auth(&picked.1.token),
    )
    .await
    else {
        return;
    };
    check_status(ledger, status, "POST /api/auth/logout");
    let mut ledger = ledger.lock().unwrap();
    match status {
        StatusCode::OK => {
            ledger.acked_ends += 1;
            ledger.ended(picked.0, "a logout", url, sent);
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            ledger.shed += 1;
            ledger.unacked_logouts += 1;
            ledger.sessions[picked.0].ended_unacked = true;
        }
        _ => {}
    }
}

/// Ends every session of this worker's customer, from one of them.
async fn logout_all(client: &reqwest::Client, url: &str, w: usize, ledger: &Mutex<Ledger>) {
    let (mine, from) = {
        let mut ledger = ledger.lock().unwrap();
        let mine: Vec<usize> = (0..ledger.sessions.len())
            .filter(|&i| ledger.sessions[i].user == w)
            .collect();
        let Some(&from) = mine
            .iter()
            .rev()
            .find(|&&i| ledger.sessions[i].ended_acked.is_none())
        else {
            return;
        };
        for &i in &mine {
            ledger.sessions[i].ending_sent = true;
        }
        (mine, ledger.sessions[from].session.clone())
    };
    let sent = Instant::now();
    let Some((status, _)) = send(
        client
            .post(format!("{url}/api/auth/logout-all"))
            .bearer_auth(&from.token)
            .json(&json!({})),
    )
    .await
    else {
        return;
    };
    check_status(ledger, status, "POST /api/auth/logout-all");
    let mut ledger = ledger.lock().unwrap();
    match status {
        StatusCode::OK => {
            ledger.acked_ends += 1;
            for i in mine {
                ledger.ended(i, "a logout-all", url, sent);
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => ledger.shed += 1,
        _ => {}
    }
}

/// Changes this worker's customer's password from one of their sessions: every other one ends.
async fn change_password(
    client: &reqwest::Client,
    url: &str,
    w: usize,
    user: &TestUser,
    candidates: &mut Vec<String>,
    new_password: String,
    ledger: &Mutex<Ledger>,
) {
    if candidates.len() != 1 {
        return; // settle the last change first (a login does)
    }
    let (others, from) = {
        let mut ledger = ledger.lock().unwrap();
        let mine: Vec<usize> = (0..ledger.sessions.len())
            .filter(|&i| ledger.sessions[i].user == w)
            .collect();
        let Some(&from) = mine
            .iter()
            .rev()
            .find(|&&i| !ledger.sessions[i].ending_sent)
        else {
            return;
        };
        let others: Vec<usize> = mine.into_iter().filter(|&i| i != from).collect();
        for &i in &others {
            ledger.sessions[i].ending_sent = true;
        }
        (others, ledger.sessions[from].session.clone())
    };
    let body = json!({"currentPassword": user.password, "newPassword": new_password});
    let sent = Instant::now();
    let Some((status, _)) = send(
        client
            .post(format!("{url}/api/auth/change-password"))
            .bearer_auth(&from.token)
            .json(&body),
    )
    .await
    else {
        // No answer: it may have committed.
        candidates.push(new_password);
        return;
    };
    check_status(ledger, status, "POST /api/auth/change-password");
    let mut ledger = ledger.lock().unwrap();
    match status {
        StatusCode::OK => {
            ledger.acked_ends += 1;
            *candidates = vec![new_password];
            for i in others {
                ledger.ended(i, "a password change", url, sent);
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            ledger.shed += 1;
            candidates.push(new_password);
        }
        _ => {}
    }
}

/// What the faults break: the database's relay, the bus, each node's link to the bus.
struct Targets {
    database: Arc<Partition>,
    bus: Arc<Mutex<NatsServer>>,
    links: Arc<Vec<Partition>>,
}

/// One fault at a time, at seeded random moments, each healed before the next. The kinds take
/// turns in a seeded order, so even a short run has each of them.
async fn inject_faults(
    mut rng: Rng,
    cluster: Arc<Cluster>,
    ledger: Arc<Mutex<Ledger>>,
    targets: Targets,
    deadline: Instant,
) -> Value {
    let log = |what: String| ledger.lock().unwrap().fault(what);
    let Targets {
        database,
        bus,
        links,
    } = targets;
    let (mut kills, mut outages, mut slowdowns, mut bus_stops, mut partitions) = (0, 0, 0, 0, 0);
    let mut kinds = [0, 1, 2, 3, 4];
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i + 1));
    }
    let mut turn = 0;
    while Instant::now() + Duration::from_secs(4) < deadline {
        tokio::time::sleep(rng.millis(1000, 2500)).await;
        turn += 1;
        match kinds[turn % kinds.len()] {
            0 => {
                let i = rng.below(NODES);
                log(format!("kill -9 {}", cluster.urls[i]));
                cluster.nodes[i].write().await.kill().await;
                tokio::time::sleep(rng.millis(300, 1500)).await;
                cluster.nodes[i].write().await.restart().await;
                log(format!("{} restarted", cluster.urls[i]));
                kills += 1;
            }
            1 => {
                log("database down".into());
                database.down();
                tokio::time::sleep(rng.millis(500, 2500)).await;
                database.up();
                log("database up".into());
                outages += 1;
            }
            2 => {
                let delay = rng.millis(50, 300);
                log(format!("database slowed by {delay:?}"));
                database.delay(delay);
                tokio::time::sleep(rng.millis(1000, 2500)).await;
                database.delay(Duration::ZERO);
                log("database at full speed".into());
                slowdowns += 1;
            }
            3 => {
                log("bus stopped".into());
                bus.lock().unwrap().stop();
                tokio::time::sleep(rng.millis(500, 2500)).await;
                bus.lock().unwrap().resume();
                log("bus resumed".into());
                bus_stops += 1;
            }
            _ => {
                // One node cut off from the bus, silently: the others must fence it.
                let i = rng.below(NODES);
                let link = &links[i];
                log(format!("{} cut off the bus", cluster.urls[i]));
                link.cut();
                tokio::time::sleep(rng.millis(1000, 3000)).await;
                link.heal();
                log(format!("{} back on the bus", cluster.urls[i]));
                partitions += 1;
            }
        }
    }
    json!({"kills": kills, "database_outages": outages, "database_slowdowns": slowdowns,
           "bus_stops": bus_stops, "bus_partitions": partitions})
}
