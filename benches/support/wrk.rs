//! wrk, the load generator of `scripts/bench` (Debian's package): one run and what it printed,
//! and the medians the benches compare.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// One wrk run: requests per second and the latency percentiles it printed.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests completed in the run.
    pub requests: u64,
    /// Of those, answered other than 2xx or 3xx.
    pub refused: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn wrk(url: &str, script: Option<&Path>, seconds: u64) -> Run {
    wrk_with(url, script, seconds, &["-t2", "-c32"], false)
}

pub fn wrk_with(
    url: &str,
    script: Option<&Path>,
    seconds: u64,
    shape: &[&str],
    refusals_allowed: bool,
) -> Run {
    wrk_args(url, script, &[], seconds, shape, refusals_allowed)
}

/// wrk with `script_args` passed to the script's `init(args)`.
pub fn wrk_args(
    url: &str,
    script: Option<&Path>,
    script_args: &[String],
    seconds: u64,
    shape: &[&str],
    refusals_allowed: bool,
) -> Run {
    let mut command = Command::new("wrk");
    command
        .args(shape)
        .args(["--latency", "--timeout", "5s"])
        .arg(format!("-d{seconds}s"));
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .arg("--")
        .args(script_args)
        .output()
        .expect("wrk runs (scripts/bench installs it: apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    assert!(
        refusals_allowed || !text.contains("Non-2xx"),
        "some requests were refused:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wrk printed Requests/sec");
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| millis(v.trim()))
            .expect("wrk printed the latency distribution")
    };
    // "  123456 requests in 20.00s, 41.20MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .expect("wrk printed the request count");
    let refused = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Run {
        requests,
        refused,
        rps,
        p50_ms: percentile("50%"),
        p99_ms: percentile("99%"),
    }
}

/// wrk's durations: `812.00us`, `1.20ms`, `2.01s`.
pub fn millis(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => f64::NAN,
    }
}

/// Each figure's median over the runs.
pub fn median_run(runs: &[Run]) -> Run {
    Run {
        requests: median(runs.iter().map(|r| r.requests as f64).collect()) as u64,
        refused: runs.iter().map(|r| r.refused).sum(),
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
