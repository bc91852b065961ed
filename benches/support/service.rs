//! The release `finsec` binary as a child process of the bench, over the bench's database, so
//! its CPU and RSS are the service's alone. Loopback only.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";
pub const KEY: &str = "YmVuY2ggZW5jcnlwdGlvbiBrZXksIDMyIGJ5dGVzISE=";

pub struct ServiceProcess {
    child: std::process::Child,
    journal: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl ServiceProcess {
    /// `finsec` (this build's, or `FINSEC_BENCH_BINARY`: another build to compare) with the
    /// repository's `config/`, the bench's database and keys, no per-IP
    /// rate limit (every request comes from 127.0.0.1), warnings only, and `settings` as
    /// `FINSEC__…` variables on top; returns once it reports ready.
    pub async fn start(database_url: &str, settings: &[(&str, &str)]) -> Self {
        let port = free_port();
        let journal = std::env::temp_dir().join(format!("finsec-bench-{port}.journal"));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let binary = std::env::var("FINSEC_BENCH_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_finsec").to_owned());
        let mut command = std::process::Command::new(binary);
        command
            .arg("--config-dir")
            .arg(&dir)
            .env("FINSEC__DATABASE__URL", database_url)
            .env("FINSEC__DATABASE__PENDING_REVOCATIONS", &journal)
            .env("FINSEC__HTTP__PORT", port.to_string())
            .env("FINSEC__JWT__SECRET", SECRET)
            .env("FINSEC__SECURITY__ENCRYPTION_KEY", KEY)
            .env("FINSEC__SECURITY__IP_RATE", "0")
            .env("FINSEC__LOG__LEVEL", "warn");
        for (key, value) in settings {
            command.env(key, value);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("finsec starts");
        let service = Self {
            child,
            journal,
            base: format!("http://127.0.0.1:{port}"),
        };
        service.wait_ready().await;
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> i64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// A gauge or counter's value from `/metrics` (0 when absent).
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .find_map(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ready = client
                .get(format!("{}/health/ready", self.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("finsec did not become ready");
    }
}

/// Stopped when dropped, however the bench ends, a panic included: no service outlives its
/// bench.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.journal);
    }
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux for every architecture this runs on.
    ticks / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
