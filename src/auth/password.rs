//! scrypt password hashing, kept off the async runtime.
//!
//! Hashing costs tens of milliseconds of CPU by design. Run on a runtime worker it would stall
//! every request scheduled there, and run inside a user actor it would stall that user's every
//! request, so it runs on a pool of its own ([`HashingPool`]): at most as many threads as
//! cores, each at a lower scheduling priority (nice 10), so when a runtime worker and a hash
//! both want a core the worker gets it. Logins still use every core the requests leave idle,
//! and an authenticated request is not queued behind a burst of logins. A semaphore bounds how
//! many hashes are in the pool at once: a burst of logins queues here instead of piling jobs
//! onto the threads.
//!
//! The permit travels *into* the blocking job and is released when the hash is done, not when
//! the request goes away: a client that hangs up cannot free a slot while its scrypt (and its
//! memory) keeps running. The queue in front of the semaphore is bounded too
//! (`password.max_queued_hashes`); past it a login is refused at once with [`AuthError::Busy`]
//! rather than piling up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use scrypt::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use scrypt::phc::PasswordHash;
use scrypt::{Params, Scrypt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use super::AuthError;
use crate::config::PasswordSettings;

#[derive(Clone)]
pub struct PasswordHasher {
    pool: Arc<HashingPool>,
    scrypt: Scrypt,
    /// The cost new hashes get.
    params: Params,
    permits: Arc<Semaphore>,
    /// Hashes admitted (waiting for a permit or running), and the most that may be.
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    /// Hashes running right now on the blocking pool.
    running: Arc<AtomicUsize>,
    /// A hash of a random password, verified against when the email is unknown, so that an
    /// unknown email costs the same time as a wrong password and timing tells nothing.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub async fn new(settings: &PasswordSettings) -> Result<Self, AuthError> {
        let params = Params::new(settings.log_n, settings.r, settings.p)
            .map_err(|e| AuthError::Hashing(e.to_string()))?;
        let mut hasher = Self {
            pool: Arc::new(HashingPool::new(settings.max_concurrent_hashes)?),
            scrypt: Scrypt::new_with_params(params),
            params,
            permits: Arc::new(Semaphore::new(settings.max_concurrent_hashes)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: settings.max_concurrent_hashes + settings.max_queued_hashes,
            running: Arc::new(AtomicUsize::new(0)),
            dummy_hash: Arc::from(""),
        };
        let random = SecretString::from(uuid::Uuid::new_v4().to_string());
        hasher.dummy_hash = Arc::from(hasher.hash(random).await?);
        Ok(hasher)
    }

    /// A fresh salted PHC string (`$scrypt$ln=..,r=..,p=..$salt$hash`).
    pub async fn hash(&self, password: SecretString) -> Result<String, AuthError> {
        let scrypt = self.scrypt;
        self.run_blocking(move || {
            scrypt
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| AuthError::Hashing(e.to_string()))
        })
        .await
    }

    /// Checks `password` against a stored hash, or against the dummy hash when there is no
    /// user (`None`), in which case the answer is always false.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<&str>,
    ) -> Result<bool, AuthError> {
        let is_real = stored.is_some();
        let stored: String = stored.unwrap_or(&self.dummy_hash).to_owned();
        let scrypt = self.scrypt;
        let matches = self
            .run_blocking(move || {
                let hash =
                    PasswordHash::new(&stored).map_err(|e| AuthError::Hashing(e.to_string()))?;
                Ok(scrypt
                    .verify_password(password.expose_secret().as_bytes(), &hash)
                    .is_ok())
            })
            .await?;
        Ok(is_real && matches)
    }

    /// True when `stored` was made at a lower cost than new hashes get (or cannot be read):
    /// the next successful login should hash the password again.
    pub fn is_weaker_than_configured(&self, stored: &str) -> bool {
        let wanted = &self.params;
        match PasswordHash::new(stored)
            .ok()
            .and_then(|hash| Params::try_from(&hash).ok())
        {
            Some(params) => {
                params.log_n() < wanted.log_n()
                    || params.r() < wanted.r()
                    || params.p() < wanted.p()
            }
            None => false,
        }
    }

    /// Hashes running on the blocking pool right now (for tests and diagnostics).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let slot = Slot::take(&self.admitted, self.max_admitted).ok_or(AuthError::Busy)?;
        let queued = std::time::Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Hashing("hasher closed".into()))?;
        metrics::histogram!("finsec_password_hash_wait_seconds")
            .record(crate::metrics::seconds(queued.elapsed()));
        let running = self.running.clone();
        let admitted = self.admitted.clone();
        self.pool
            .run(move || {
                // Held until the hash is done, whatever becomes of the request that asked.
                let (_permit, _slot) = (permit, slot);
                running.fetch_add(1, Ordering::SeqCst);
                metrics::gauge!("finsec_password_hash_queue")
                    .set(admitted.load(Ordering::SeqCst) as f64);
                let started = std::time::Instant::now();
                let outcome = work();
                metrics::histogram!("finsec_password_hash_run_seconds")
                    .record(crate::metrics::seconds(started.elapsed()));
                running.fetch_sub(1, Ordering::SeqCst);
                outcome
            })
            .await?
    }
}

/// The threads that hash: `min(max_concurrent_hashes, cores)` of them (more would only
/// share the cores and make each hash slower), each lowered to nice 10 as it starts. Under
/// Linux's scheduler a nice-10 thread gets about a tenth of a core's share against a nice-0
/// one, so the runtime's workers preempt hashing whenever they have requests; when they are
/// idle, hashing has the cores to itself.
struct HashingPool {
    threads: rayon::ThreadPool,
}

/// The niceness of hashing threads: low enough that request handling always wins the CPU.
#[cfg(target_os = "linux")]
const HASHING_NICE: libc::c_int = 10;

impl HashingPool {
    fn new(max_concurrent: usize) -> Result<Self, AuthError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(max_concurrent.clamp(1, cores))
            .thread_name(|i| format!("finsec-hash-{i}"))
            .start_handler(|_| lower_priority())
            // A job's panic must not abort the process: its caller hears an error instead.
            .panic_handler(|_| tracing::error!("a password hashing job panicked"))
            .build()
            .map_err(|e| AuthError::Hashing(format!("hashing threads: {e}")))?;
        Ok(Self { threads })
    }

    /// Runs `work` on a hashing thread and waits for its result without blocking the runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let _ = done.send(work());
        });
        result
            .await
            .map_err(|_| AuthError::Hashing("the hashing job failed".into()))
    }
}

/// Lowers the calling thread's scheduling priority (on Linux `setpriority` with a thread id
/// acts on that thread alone). Raising niceness needs no privilege; if it fails anyway, hashing
/// runs at normal priority, as it did on tokio's blocking pool.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
        let outcome = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASHING_NICE)
        };
        if outcome != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(),
                "hashing thread left at normal priority");
        }
    }
}

/// One admitted hash; gives its place back when dropped (the request gave up while waiting,
/// or the blocking job finished).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(admitted: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(admitted.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordSettings {
        PasswordSettings {
            log_n: 4,
            r: 8,
            p: 1,
            max_concurrent_hashes: 2,
            max_queued_hashes: 4,
            min_length: 12,
        }
    }

    #[tokio::test]
    async fn verifies_the_right_password_only() {
        let hasher = PasswordHasher::new(&cheap()).await.unwrap();
        let hash = hasher
            .hash(SecretString::from("correct horse"))
            .await
            .unwrap();
        assert!(hash.starts_with("$scrypt$ln=4,r=8,p=1$"), "{hash}");
        assert!(
            hasher
                .verify("correct horse".into(), Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(&hash))
                .await
                .unwrap()
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_on_lowered_priority_threads_at_most_cores_wide() {
        let hasher = PasswordHasher::new(&PasswordSettings {
            max_concurrent_hashes: 64,
            ..cheap()
        })
        .await
        .unwrap();
        let niceness = hasher
            .pool
            .run(|| {
                // SAFETY: reads the calling thread's own priority.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
            })
            .await
            .unwrap();
        assert_eq!(niceness, HASHING_NICE);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(hasher.pool.threads.current_num_threads(), cores.min(64));
    }

    #[tokio::test]
    async fn the_dummy_hash_never_verifies() {
        let hasher = PasswordHasher::new(&cheap()).await.unwrap();
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
        assert!(!hasher.verify("".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_still_verifies() {
        let old = PasswordHasher::new(&cheap()).await.unwrap();
        let hash = old.hash("pw".into()).await.unwrap();
        let new = PasswordHasher::new(&PasswordSettings {
            log_n: 5,
            ..cheap()
        })
        .await
        .unwrap();
        assert!(new.verify("pw".into(), Some(&hash)).await.unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_error_not_a_match() {
        let hasher = PasswordHasher::new(&cheap()).await.unwrap();
        let err = hasher.verify("pw".into(), Some("not a phc string")).await;
        assert!(matches!(err, Err(AuthError::Hashing(_))));
    }
}
