//! The real `finsec` binary as a child process, for the tests that must kill it (`kill -9`)
//! or measure it (its memory): crash safety, overload, chaos.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{LoggedIn, TestUser};

/// Held by the tests that load the machine with processes of their own (overload, chaos), so
/// that they do not run at the same time and each measures its own load, not the other's.
pub static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One `finsec serve` process on a test database, with its own journal and port (kept across
/// restarts, as a real instance keeps its disk and address).
pub struct ServiceProcess {
    child: Option<tokio::process::Child>,
    pub base: String,
    pub client: reqwest::Client,
    port: u16,
    env: Vec<(String, String)>,
    journal: PathBuf,
}

impl ServiceProcess {
    /// Starts it and waits until it is ready. `env` adds or overrides `FINSEC__…` settings.
    pub async fn start(db_url: &str, journal: &Path, env: &[(&str, &str)]) -> Self {
        let port = crate::helpers::free_port();
        let mut process = Self {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            port,
            env: [
                ("FINSEC__DATABASE__URL", db_url),
                ("FINSEC__DATABASE__TIMEOUT", "1s"),
                ("FINSEC__JWT__SECRET", crate::helpers::JWT_SECRET),
                (
                    "FINSEC__SECURITY__ENCRYPTION_KEY",
                    crate::helpers::ENCRYPTION_KEY,
                ),
                ("FINSEC__SECURITY__IP_RATE", "0"),
                ("FINSEC__SECURITY__MAX_FAILURES", "1000000"),
                ("FINSEC__ACTORS__REVOKE_RETRY", "100ms"),
                ("FINSEC__LOG__LEVEL", "warn"),
            ]
            .iter()
            .chain(env)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
            journal: journal.to_owned(),
        };
        process.restart().await;
        process
    }

    /// Starts the process again (after [`kill`](Self::kill)) on the same port and journal.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
            .arg("--config-dir")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("FINSEC__DATABASE__PENDING_REVOCATIONS", &self.journal)
            .env("FINSEC__HTTP__PORT", self.port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("finsec starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ready().await {
                return;
            }
            assert!(Instant::now() < deadline, "finsec did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn ready(&self) -> bool {
        let ready = self
            .client
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        ready.is_ok_and(|r| r.status() == StatusCode::OK)
    }

    /// `kill -9`: no shutdown, no last write; only what is on disk survives.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL is sent");
            child.wait().await.expect("the process is reaped");
        }
    }

    /// Resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self, user: &TestUser) -> LoggedIn {
        let response = self
            .client
            .post(self.url("/api/auth/login"))
            .json(&user.credentials())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        LoggedIn::from_body(&response.json::<Value>().await.unwrap())
    }

    pub async fn logout(&self, session: &LoggedIn) -> reqwest::Response {
        self.client
            .post(self.url("/api/auth/logout"))
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn me(&self, session: &LoggedIn) -> StatusCode {
        self.client
            .get(self.url("/api/auth/me"))
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// A journal file that is deleted when the test ends.
pub struct TempJournal(pub PathBuf);

impl TempJournal {
    pub fn new() -> Self {
        Self(crate::helpers::fresh_journal())
    }
}

impl Drop for TempJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
