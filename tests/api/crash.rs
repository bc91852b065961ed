//! Crash safety with the real binary: what was in force before a `kill -9` is in force after
//! the restart, even a revocation the client heard 503 for (the database was down).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{LoggedIn, TestUser, assert_error, fresh_journal, spawn_app};

/// One `finsec serve` process on a test database, with its own journal.
struct Process {
    child: tokio::process::Child,
    base: String,
    client: reqwest::Client,
}

impl Process {
    async fn start(db_url: &str, journal: &Path) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
            .arg("--config-dir")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .env("FINSEC__DATABASE__URL", db_url)
            .env("FINSEC__DATABASE__PENDING_REVOCATIONS", journal)
            .env("FINSEC__DATABASE__TIMEOUT", "1s")
            .env("FINSEC__JWT__SECRET", crate::helpers::JWT_SECRET)
            .env(
                "FINSEC__SECURITY__ENCRYPTION_KEY",
                crate::helpers::ENCRYPTION_KEY,
            )
            .env("FINSEC__SECURITY__IP_RATE", "0")
            .env("FINSEC__ACTORS__REVOKE_RETRY", "100ms")
            .env("FINSEC__HTTP__PORT", port.to_string())
            .env("FINSEC__LOG__LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("finsec starts");
        let process = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = process
                .client
                .get(format!("{}/health/ready", process.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return process;
            }
            assert!(Instant::now() < deadline, "finsec did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no shutdown, no last write; only what is on disk survives.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL is sent");
        self.child.wait().await.expect("the process is reaped");
    }

    async fn login(&self, user: &TestUser) -> LoggedIn {
        let response = self
            .client
            .post(format!("{}/api/auth/login", self.base))
            .json(&user.credentials())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        LoggedIn::from_body(&response.json::<Value>().await.unwrap())
    }

    async fn logout(&self, session: &LoggedIn) -> reqwest::Response {
        self.client
            .post(format!("{}/api/auth/logout", self.base))
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap()
    }

    async fn me(&self, session: &LoggedIn) -> StatusCode {
        self.client
            .get(format!("{}/api/auth/me", self.base))
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap()
            .status()
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_revocation_answered_503_survives_a_kill_and_lands_when_the_database_returns() {
    // The in-process app only makes the database and the user; the binary serves.
    let mut fixture = spawn_app().await;
    let john = fixture.user().await;
    let other = fixture.user().await;
    fixture.stop().await;
    let journal = RemoveOnDrop(fresh_journal());
    let db_url = fixture.db.url.clone();

    let node = Process::start(&db_url, &journal.0).await;
    let session = node.login(&john).await;
    let bystander = node.login(&other).await;
    // The sessions table is gone: every write to it fails, as in an outage.
    fixture
        .db
        .execute("RENAME TABLE sessions TO sessions_offline")
        .await;
    assert_error(
        node.logout(&session).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(node.me(&session).await, StatusCode::UNAUTHORIZED);
    node.kill().await;

    // The database is back, the row still says live; the restarted node must not believe it.
    fixture
        .db
        .execute("RENAME TABLE sessions_offline TO sessions")
        .await;
    let live = fixture
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE id = '{}' AND revoked_at IS NULL",
            session.session_id
        ))
        .await;
    assert_eq!(
        live.as_deref(),
        Some("1"),
        "the outage kept the write from landing"
    );

    let node = Process::start(&db_url, &journal.0).await;
    assert_eq!(
        node.me(&session).await,
        StatusCode::UNAUTHORIZED,
        "a revocation the client heard 503 for came back after kill -9"
    );
    assert_eq!(node.me(&bystander).await, StatusCode::OK);
    // And the journal's writer lands it in the store.
    assert_eq!(
        fixture
            .eventual_revoke_reason(&session.session_id)
            .await
            .as_deref(),
        Some("logout")
    );
    // Settled: once written, a later start has nothing to replay.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&journal.0).map_or(0, |m| m.len()) > 0 {
        assert!(Instant::now() < deadline, "the journal was not emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill().await;
}
