//! The brute-force throttle per account (ASVS 5.0 6.3.1; Keycloak's brute-force detector,
//! Authelia's regulation). Wrong passwords and wrong codes count alike against the account,
//! in the store, so the count holds across restarts, nodes and concurrent attempts; a new
//! password step resets nothing, only a successful login does. The record is keyed by a keyed
//! hash of the normalised email, whether or not an account has it: an unknown email locks
//! exactly like a real one, and a lockout says nothing about who exists.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::SessionError;
use crate::domain::{Email, FailureRule, Lockout};
use crate::store::{SessionStore, StoreError};

pub struct Throttle {
    key: [u8; 32],
    rule: FailureRule,
    /// Accounts with a password check under way on this node, each with the lock that the
    /// next check of the account waits on.
    checking: DashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>,
    /// How long an attempt waits for that lock: [`CHECK_WAIT`] (shorter in unit tests).
    wait: std::time::Duration,
}

impl Throttle {
    /// The HMAC key is derived from `secret` (the JWT secret: it is already the service's one
    /// secret, never in the repository for a real deployment).
    pub fn new(secret: &[u8], rule: FailureRule) -> Self {
        let mut derive = Sha256::new();
        derive.update(b"finsec account throttle\0");
        derive.update(secret);
        Self {
            key: derive.finalize().into(),
            rule,
            checking: DashMap::new(),
            wait: CHECK_WAIT,
        }
    }

    pub fn rule(&self) -> &FailureRule {
        &self.rule
    }

    /// The record key of the account named by `email`.
    pub fn account(&self, email: &Email) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(email.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// What the throttle holds for an account that is not locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No failure on record: a success has nothing to clear.
    Clean,
    /// Failures on record (too few to lock, or an expired lock): a success clears them.
    Failures,
}

impl Throttle {
    /// `Err(Throttled)` while the account is locked; else whether failures are on record.
    pub async fn check(
        &self,
        store: &dyn SessionStore,
        account: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Standing, SessionError> {
        standing(store.failure_record(account).await?, now)
    }

    /// Waits for the account's password check under way on this node, if any, then
    /// [`Throttle::check`]s it and holds the account until the returned [`Checking`] is
    /// dropped (after the failure, if any, is counted): one check per account at a time.
    /// Without it, guesses sent all at once each read the record before any had counted, and
    /// all were hashed and answered: 40 where the lock allows 5. Waiting (rather than
    /// refusing) keeps concurrent right logins working; the waits are short, since each
    /// check is one hash, and bounded by [`CHECK_WAIT`] and [`MAX_WAITING`]. Across nodes at
    /// most one check a node is in flight, so a lock comes within `max_failures` + nodes − 1
    /// guesses.
    pub async fn begin(
        &self,
        store: &dyn SessionStore,
        account: &[u8; 32],
    ) -> Result<(Standing, Checking<'_>), SessionError> {
        let read = async { Ok((store.failure_record(account).await?, ())) };
        let (standing, (), checking) = self.begin_reading(account, read).await?;
        Ok((standing, checking))
    }

    /// [`Throttle::begin`], with the record read by `read` in the account's turn along with
    /// whatever else the caller needs then (a login: the user's row, in the same statement).
    pub async fn begin_reading<T>(
        &self,
        account: &[u8; 32],
        read: impl Future<Output = Result<(Option<Lockout>, T), StoreError>>,
    ) -> Result<(Standing, T, Checking<'_>), SessionError> {
        let lock = self.checking.entry(*account).or_default().clone();
        // The map's, the holder's, ours and the waiters' (each holds one as it waits): a
        // flood on one account is shed at once, as the hashing queue sheds a flood on many
        // (`503 busy`, come back in a second).
        if Arc::strong_count(&lock) >= MAX_WAITING + 3 {
            return Err(crate::auth::AuthError::Busy.into());
        }
        let held = tokio::time::timeout(self.wait, lock.lock_owned())
            .await
            .map_err(|_| SessionError::Throttled(std::time::Duration::from_secs(1)))?;
        let checking = Checking {
            throttle: self,
            account: *account,
            _held: held,
        };
        // Read after the wait (and timed after it): the check before this one has counted.
        let (record, read) = read.await?;
        Ok((standing(record, Utc::now())?, read, checking))
    }

    /// Counts a wrong password or code; true when this failure locked the account (the
    /// moment the audit trail records, once per lockout). The attempt is refused whatever
    /// this does, so a store error is logged, not returned.
    pub async fn fail(
        &self,
        store: &dyn SessionStore,
        account: &[u8; 32],
        now: DateTime<Utc>,
    ) -> bool {
        match store.record_failure(account, &self.rule, now).await {
            Ok(record) if record.locked_until.is_some_and(|until| until > now) => {
                tracing::warn!(lockouts = record.lockouts, until = ?record.locked_until,
                    "account locked after too many failures");
                metrics::counter!("finsec_lockouts_total").increment(1);
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::warn!(error = %err, "failure not counted");
                false
            }
        }
    }

    /// A successful login: the count starts over.
    pub async fn succeed(&self, store: &dyn SessionStore, account: &[u8; 32]) {
        if let Err(err) = store.clear_failures(account).await {
            tracing::warn!(error = %err, "failure count not cleared");
        }
    }
}

/// How long an attempt waits for the account's check under way before it is refused
/// `429 throttled` (a second, then try again).
pub const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many attempts may wait on one account's check under way; more are refused at once.
pub const MAX_WAITING: usize = 16;

/// An account's password check under way ([`Throttle::begin`]); ends when dropped, however
/// the request ends (a client that hangs up gets no answer, so its guess teaches nothing).
pub struct Checking<'a> {
    throttle: &'a Throttle,
    account: [u8; 32],
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        // The map's and ours: nobody waits, so the entry goes (under the shard's lock, so an
        // attempt arriving now either holds a clone already or makes a new entry).
        self.throttle
            .checking
            .remove_if(&self.account, |_, lock| Arc::strong_count(lock) <= 2);
    }
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("key", &"[redacted]")
            .field("rule", &self.rule)
            .finish()
    }
}

/// What a failure record says of the account at `now`: `Err(Throttled)` while it is locked.
fn standing(record: Option<Lockout>, now: DateTime<Utc>) -> Result<Standing, SessionError> {
    let Some(record) = record else {
        return Ok(Standing::Clean);
    };
    match record.locked_until.filter(|until| *until > now) {
        Some(until) => Err(SessionError::Throttled(
            (until - now).to_std().unwrap_or_default(),
        )),
        None => Ok(Standing::Failures),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_email_and_secret() {
        let rule = FailureRule {
            max_failures: 5,
            window: chrono::Duration::minutes(15),
            first_lockout: chrono::Duration::minutes(1),
            max_lockout: chrono::Duration::minutes(15),
        };
        let throttle = Throttle::new(b"secret", rule);
        let ada = Email::parse("Ada@Example.com").unwrap();
        assert_eq!(
            throttle.account(&ada),
            throttle.account(&Email::parse("ada@example.com").unwrap())
        );
        assert_ne!(
            throttle.account(&ada),
            throttle.account(&Email::parse("grace@example.com").unwrap())
        );
        assert_ne!(
            throttle.account(&ada),
            Throttle::new(b"other", rule).account(&ada)
        );
        assert!(!format!("{throttle:?}").contains("secret"));
    }

    fn throttle(wait: std::time::Duration) -> Arc<Throttle> {
        let rule = FailureRule {
            max_failures: 5,
            window: chrono::Duration::minutes(15),
            first_lockout: chrono::Duration::minutes(1),
            max_lockout: chrono::Duration::minutes(15),
        };
        let mut throttle = Throttle::new(b"secret", rule);
        throttle.wait = wait;
        Arc::new(throttle)
    }

    /// A second check of an account waits for the first; past the wait it is refused like a
    /// lock, for a second. The account's entry goes once nobody holds or waits on it.
    #[tokio::test]
    async fn a_second_check_waits_for_the_first_and_no_longer_than_the_wait() {
        let throttle = throttle(std::time::Duration::from_millis(50));
        let store = crate::store::MemoryStore::new();
        let account = [7; 32];
        let first = throttle.begin(&store, &account).await.unwrap();
        assert_eq!(first.0, Standing::Clean);
        assert!(matches!(
            throttle.begin(&store, &account).await,
            Err(SessionError::Throttled(wait)) if wait == std::time::Duration::from_secs(1)
        ));
        drop(first);
        let again = throttle.begin(&store, &account).await.unwrap();
        drop(again);
        assert!(throttle.checking.is_empty(), "the account's entry stayed");
    }

    /// Past [`MAX_WAITING`] waiting on one account, the next attempt is shed at once; the
    /// waiters still get their turns, one at a time.
    #[tokio::test]
    async fn a_flood_on_one_account_is_shed_at_once() {
        let throttle = throttle(std::time::Duration::from_secs(30));
        let store = Arc::new(crate::store::MemoryStore::new());
        let account = [9; 32];
        let first = throttle.begin(store.as_ref(), &account).await.unwrap();
        let waiters: Vec<_> = (0..MAX_WAITING)
            .map(|_| {
                let (throttle, store) = (throttle.clone(), store.clone());
                tokio::spawn(
                    async move { throttle.begin(store.as_ref(), &account).await.map(|_| ()) },
                )
            })
            .collect();
        while Arc::strong_count(&throttle.checking.get(&account).unwrap()) < MAX_WAITING + 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            throttle.begin(store.as_ref(), &account).await,
            Err(SessionError::Auth(crate::auth::AuthError::Busy))
        ));
        drop(first);
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_ok());
        }
        assert!(throttle.checking.is_empty(), "the account's entry stayed");
    }
}
