//! Prometheus metrics (`GET /metrics`), all named `finsec_…`. The `metrics` facade records;
//! one process-wide exporter renders. What each layer records:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `finsec_http_requests_total` | counter | `route` (template), `method`, `status` |
//! | `finsec_http_request_duration_seconds` | histogram | `route` |
//! | `finsec_logins_total` | counter | `outcome` (`success`, `mfa_required`, `invalid_credentials`, `throttled`, …) |
//! | `finsec_mfa_verifications_total` | counter | `outcome` |
//! | `finsec_lockouts_total` | counter | |
//! | `finsec_resident_actors` | gauge | user actors running |
//! | `finsec_hibernated_users` | gauge | users resident in their publication alone (each supervisor tick) |
//! | `finsec_heap_in_use_bytes` | gauge | bytes the allocator has handed out and not had back (RSS also holds what it keeps free) |
//! | `finsec_memory_trims_total` | counter | times freed memory was handed back to the system |
//! | `finsec_actor_call_duration_seconds` | histogram | (mailbox wait and handling) |
//! | `finsec_validations_total` | counter | `answered_by` (`publication`: the read path, no message; `actor`) |
//! | `finsec_password_hash_queue` | gauge | (admitted: waiting or running) |
//! | `finsec_password_hash_wait_seconds`, `_run_seconds` | histogram | |
//! | `finsec_store_call_duration_seconds` | histogram | `op` |
//! | `finsec_store_errors_total` | counter | `op` |
//! | `finsec_cluster_confirm_duration_seconds` | histogram | (publish to every ack) |
//! | `finsec_cluster_trusted` | gauge | 1 while this node may answer from memory |
//! | `finsec_bus_publish_duration_seconds` | histogram | (one publish on NATS) |
//! | `finsec_bus_publish_errors_total` | counter | |
//! | `finsec_sweeps_total`, `finsec_sweep_sessions_ended_total` | counter | |
//! | `finsec_sessions_ended_total` | counter | `reason` (`logout`, `logout_all`, `admin`, …, `expired` for the sweep) |
//! | `finsec_live_sessions` | gauge | sessions not ended, all nodes' (from the store, each sweep) |

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a memory answer (50 µs) to a timed-out call (10 s).
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls, as in tests that start several
/// services in one process, share it) and starts its upkeep. `None` if another recorder was
/// installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// Seconds, as histograms record them.
pub fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64()
}
