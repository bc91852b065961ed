//! MySQL/MariaDB store over a `mysql_async` pool. Times are stored as UTC `DATETIME(6)` and
//! always come from the service's clock, never the database's `NOW()`, so that the memory and
//! MySQL stores agree on every comparison.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use mysql_async::prelude::{Query, Queryable, WithParams};
use mysql_async::{
    Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, Transaction, TxOpts, params,
};

use super::{SessionStore, StoreError, StoredChallenge};
use crate::domain::{
    Device, Email, FailureRule, Lockout, NewUser, Revocation, RevokeReason, Session, SessionId,
    User, UserId,
};

mod embedded {
    refinery::embed_migrations!("sql/migrations");
}

/// MySQL error number for a duplicate key.
const ER_DUP_ENTRY: u16 = 1062;

const USER_COLUMNS: &str = "id, email, password_hash, first_name, last_name, preferred_name, \
     phone_number, address, is_active, mfa_enabled, totp_secret, totp_last_step, created_at, updated_at";

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at, revoked_at, \
     revoke_reason, revoke_note, user_agent, ip";

#[derive(Clone)]
pub struct MySqlStore {
    pool: Pool,
    opts: Opts,
}

impl MySqlStore {
    /// Builds the pool; no connection is made until the first query.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        // `Pool::new` panics on a malformed URL; parse it ourselves so bad config is an error.
        let opts = Opts::from_url(url).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        // Keep connections warm: with no idle lifetime, mysql_async closes every connection
        // above `min` as soon as it returns to the pool, so each request would pay a new
        // connection and re-prepare its statements (each connection caches them).
        let max = max_connections.max(1);
        let constraints = PoolConstraints::new(1, max)
            .ok_or_else(|| StoreError::Unavailable("invalid pool size".into()))?;
        let opts: Opts = OptsBuilder::from_opts(opts)
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
                    // No session state outlives a call here (transactions end, the named lock
                    // has its own connection), so the reset on return, which MariaDB answers
                    // like a new login and which empties the statement cache, buys nothing.
                    .with_reset_connection(false),
            )
            .into();
        let store = Self {
            pool: Pool::new(opts.clone()),
            opts,
        };
        store.ping().await?;
        Ok(store)
    }

    /// Applies the embedded `sql/migrations` that this database has not seen yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut pool = self.pool.clone();
        embedded::migrations::runner()
            .run_async(&mut pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(())
    }

    pub(super) async fn conn(&self) -> Result<mysql_async::Conn, StoreError> {
        self.pool.get_conn().await.map_err(unavailable)
    }

    async fn transaction(&self) -> Result<Transaction<'static>, StoreError> {
        self.pool
            .start_transaction(TxOpts::default())
            .await
            .map_err(unavailable)
    }
}

/// Inside a transaction: locks `user`'s live sessions (all but `except`), least recently used
/// first, and returns their ids.
async fn lock_live_sessions(
    tx: &mut Transaction<'_>,
    user: UserId,
    except: Option<SessionId>,
    now: DateTime<Utc>,
) -> Result<Vec<SessionId>, StoreError> {
    let ids: Vec<String> = tx
        .exec(
            "SELECT id FROM sessions WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? \
             ORDER BY last_seen_at, created_at FOR UPDATE",
            (user.get(), to_db(now)),
        )
        .await
        .map_err(unavailable)?;
    ids.iter()
        .map(|id| {
            id.parse()
                .map_err(|e| StoreError::Corrupt(format!("sessions.id: {e}")))
        })
        .filter(|id| match (id, except) {
            (Ok(id), Some(except)) => *id != except,
            _ => true,
        })
        .collect()
}

/// Inside a transaction: locks the user's row (the lock that orders one user's changes across
/// nodes); `None` when there is no such user.
async fn lock_user(tx: &mut Transaction<'_>, user: UserId) -> Result<Option<u64>, StoreError> {
    tx.exec_first(
        "SELECT id FROM users WHERE id = ? FOR UPDATE",
        (user.get(),),
    )
    .await
    .map_err(unavailable)
}

/// Inside a transaction: voids the user's pending MFA challenges.
async fn void_challenges(tx: &mut Transaction<'_>, user: UserId) -> Result<(), StoreError> {
    tx.exec_drop(
        "DELETE FROM mfa_challenges WHERE user_id = ?",
        (user.get(),),
    )
    .await
    .map_err(unavailable)
}

/// Inside a transaction: marks `ids` revoked (first revocation wins).
async fn revoke_in(
    tx: &mut Transaction<'_>,
    ids: &[SessionId],
    revocation: &Revocation,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let (sql, params) = revoke_statement(ids, revocation);
    tx.exec_drop(sql, params).await.map_err(unavailable)
}

fn revoke_statement(
    ids: &[SessionId],
    revocation: &Revocation,
) -> (String, Vec<mysql_async::Value>) {
    let placeholders = vec!["?"; ids.len()].join(", ");
    let mut params: Vec<mysql_async::Value> = vec![
        to_db(revocation.at).into(),
        revocation.reason.as_str().into(),
        revocation.note.clone().into(),
    ];
    params.extend(ids.iter().map(|id| id.to_string().into()));
    (
        format!(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = ?, revoke_note = ? \
             WHERE revoked_at IS NULL AND id IN ({placeholders})"
        ),
        params,
    )
}

/// Commits what succeeded; rolls back what failed *now*, so that no lock outlives the call
/// (mysql_async would otherwise roll back only when the connection is next used).
async fn finish<T>(tx: Transaction<'_>, result: Result<T, StoreError>) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(unavailable)?;
            Ok(value)
        }
        Err(err) => {
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}

fn lockout_from_row(mut row: Row) -> Result<Lockout, StoreError> {
    Ok(Lockout {
        failures: take(&mut row, "failures")?,
        window_start: from_db(take(&mut row, "window_start")?),
        locked_until: take::<Option<NaiveDateTime>>(&mut row, "locked_until")?.map(from_db),
        lockouts: take(&mut row, "lockouts")?,
    })
}

fn challenge_from_row(mut row: Row) -> Result<StoredChallenge, StoreError> {
    let hash: Vec<u8> = take(&mut row, "token_hash")?;
    Ok(StoredChallenge {
        token_hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("mfa_challenges.token_hash: not 32 bytes".into()))?,
        created_at: from_db(take(&mut row, "created_at")?),
        expires_at: from_db(take(&mut row, "expires_at")?),
        failures: take(&mut row, "failures")?,
    })
}

impl MySqlStore {
    /// Connection options, for a connection outside the pool (the single-node lock's).
    pub(super) fn opts(&self) -> &Opts {
        &self.opts
    }
}

pub(super) fn unavailable(err: mysql_async::Error) -> StoreError {
    StoreError::Unavailable(Box::new(err))
}

fn to_db(time: DateTime<Utc>) -> NaiveDateTime {
    time.naive_utc()
}

fn from_db(time: NaiveDateTime) -> DateTime<Utc> {
    time.and_utc()
}

/// Takes a column out of a row, naming it when it is missing or of the wrong type.
fn take<T: mysql_async::prelude::FromValue>(row: &mut Row, column: &str) -> Result<T, StoreError> {
    row.take_opt::<T, _>(column)
        .ok_or_else(|| StoreError::Corrupt(format!("missing column {column}")))?
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

fn user_from_row(mut row: Row) -> Result<User, StoreError> {
    let email: String = take(&mut row, "email")?;
    Ok(User {
        id: UserId::new(take(&mut row, "id")?),
        email: Email::parse(&email)
            .map_err(|e| StoreError::Corrupt(format!("users.email: {e}")))?,
        password_hash: take(&mut row, "password_hash")?,
        first_name: take(&mut row, "first_name")?,
        last_name: take(&mut row, "last_name")?,
        preferred_name: take(&mut row, "preferred_name")?,
        phone_number: take(&mut row, "phone_number")?,
        address: take(&mut row, "address")?,
        is_active: take(&mut row, "is_active")?,
        mfa_enabled: take(&mut row, "mfa_enabled")?,
        totp_secret: take(&mut row, "totp_secret")?,
        totp_last_step: take(&mut row, "totp_last_step")?,
        created_at: from_db(take(&mut row, "created_at")?),
        updated_at: from_db(take(&mut row, "updated_at")?),
    })
}

fn session_from_row(mut row: Row) -> Result<Session, StoreError> {
    let id: String = take(&mut row, "id")?;
    let reason: Option<String> = take(&mut row, "revoke_reason")?;
    Ok(Session {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("sessions.id: {e}")))?,
        user_id: UserId::new(take(&mut row, "user_id")?),
        created_at: from_db(take(&mut row, "created_at")?),
        last_seen_at: from_db(take(&mut row, "last_seen_at")?),
        expires_at: from_db(take(&mut row, "expires_at")?),
        revoked_at: take::<Option<NaiveDateTime>>(&mut row, "revoked_at")?.map(from_db),
        revoke_reason: reason
            .map(|r| r.parse())
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("sessions.revoke_reason: {e}")))?,
        revoke_note: take(&mut row, "revoke_note")?,
        device: Device {
            user_agent: take(&mut row, "user_agent")?,
            ip: take(&mut row, "ip")?,
        },
    })
}

#[async_trait]
impl SessionStore for MySqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.ping().await.map_err(unavailable)
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.pool.clone().disconnect().await.map_err(unavailable)
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(
                format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?"),
                (email.as_str(),),
            )
            .await
            .map_err(unavailable)?;
        row.map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(
                format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"),
                (id.get(),),
            )
            .await
            .map_err(unavailable)?;
        row.map(user_from_row).transpose()
    }

    async fn insert_user(&self, new: NewUser) -> Result<User, StoreError> {
        let mut conn = self.conn().await?;
        let now = to_db(Utc::now());
        let inserted =
            "INSERT INTO users (email, password_hash, first_name, last_name, phone_number, \
             is_active, mfa_enabled, totp_secret, created_at, updated_at) \
             VALUES (:email, :hash, :first, :last, :phone, :active, :mfa, :secret, :now, :now)"
                .with(params! {
                    "email" => new.email.as_str(),
                    "hash" => &new.password_hash,
                    "first" => &new.first_name,
                    "last" => &new.last_name,
                    "phone" => &new.phone_number,
                    "active" => new.is_active,
                    "mfa" => new.mfa_enabled,
                    "secret" => &new.totp_secret,
                    "now" => now,
                })
                .ignore(&mut conn)
                .await;
        match inserted {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => {
                return Err(StoreError::Conflict(format!(
                    "email {} is taken",
                    new.email
                )));
            }
            Err(e) => return Err(unavailable(e)),
        }
        let id = conn
            .last_insert_id()
            .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?;
        drop(conn);
        self.user_by_id(UserId::new(id))
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("user {id} vanished after insert")))
    }

    async fn live_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = conn
            .exec(
                format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions \
                     WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?"
                ),
                (user.get(), to_db(now)),
            )
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(session_from_row).collect()
    }

    async fn insert_session(&self, s: &Session) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        insert_session_on(&mut conn, s).await
    }

    async fn open_session_within_limit(
        &self,
        session: &Session,
        max_live: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            // The user's row is the lock that serialises logins of one user across nodes.
            lock_user(&mut tx, session.user_id)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("no user {}", session.user_id)))?;
            let live =
                lock_live_sessions(&mut tx, session.user_id, None, session.created_at).await?;
            let excess = (live.len() + 1).saturating_sub(max_live.max(1));
            let evicted = live[..excess].to_vec();
            revoke_in(
                &mut tx,
                &evicted,
                &Revocation::new(session.created_at, RevokeReason::SessionLimit),
            )
            .await?;
            insert_session_on(&mut tx, session).await?;
            Ok(evicted)
        }
        .await;
        finish(tx, result).await
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        except: Option<SessionId>,
        revocation: &Revocation,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let ids = lock_live_sessions(&mut tx, user, except, revocation.at).await?;
            revoke_in(&mut tx, &ids, revocation).await?;
            void_challenges(&mut tx, user).await?;
            Ok(ids)
        }
        .await;
        finish(tx, result).await
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        revocation: &Revocation,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            lock_user(&mut tx, user)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("no user {user}")))?;
            let caller: Option<String> = tx
                .exec_first(
                    "SELECT id FROM sessions WHERE id = ? AND user_id = ? \
                     AND revoked_at IS NULL AND expires_at > ? FOR UPDATE",
                    (keep.to_string(), user.get(), to_db(revocation.at)),
                )
                .await
                .map_err(unavailable)?;
            if caller.is_none() {
                return Ok(None);
            }
            tx.exec_drop(
                "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
                (password_hash, to_db(revocation.at), user.get()),
            )
            .await
            .map_err(unavailable)?;
            let ids = lock_live_sessions(&mut tx, user, Some(keep), revocation.at).await?;
            revoke_in(&mut tx, &ids, revocation).await?;
            void_challenges(&mut tx, user).await?;
            Ok(Some(ids))
        }
        .await;
        finish(tx, result).await
    }

    async fn set_user_active(
        &self,
        user: UserId,
        active: bool,
        revocation: &Revocation,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            if lock_user(&mut tx, user).await?.is_none() {
                return Ok(None);
            }
            tx.exec_drop(
                "UPDATE users SET is_active = ?, updated_at = ? WHERE id = ?",
                (active, to_db(revocation.at), user.get()),
            )
            .await
            .map_err(unavailable)?;
            let ids = if active {
                Vec::new()
            } else {
                let ids = lock_live_sessions(&mut tx, user, None, revocation.at).await?;
                revoke_in(&mut tx, &ids, revocation).await?;
                void_challenges(&mut tx, user).await?;
                ids
            };
            Ok(Some(ids))
        }
        .await;
        finish(tx, result).await
    }

    async fn end_if_idle(
        &self,
        id: SessionId,
        idle_cutoff: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = 'idle_timeout' \
             WHERE id = ? AND revoked_at IS NULL AND last_seen_at <= ?",
            (to_db(at), id.to_string(), to_db(idle_cutoff)),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows() == 1)
    }

    async fn put_mfa_challenge(
        &self,
        user: UserId,
        challenge: &StoredChallenge,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            tx.exec_drop(
                "INSERT INTO mfa_challenges (user_id, token_hash, created_at, expires_at, failures) \
                 VALUES (?, ?, ?, ?, ?)",
                (
                    user.get(),
                    challenge.token_hash.to_vec(),
                    to_db(challenge.created_at),
                    to_db(challenge.expires_at),
                    challenge.failures,
                ),
            )
            .await
            .map_err(unavailable)?;
            // Keep the newest `keep`: a flood of password steps cannot grow the table.
            let older: Vec<Vec<u8>> = tx
                .exec(
                    "SELECT token_hash FROM mfa_challenges WHERE user_id = ? \
                     ORDER BY created_at DESC LIMIT 18446744073709551615 OFFSET ?",
                    (user.get(), keep as u64),
                )
                .await
                .map_err(unavailable)?;
            for hash in older {
                tx.exec_drop(
                    "DELETE FROM mfa_challenges WHERE user_id = ? AND token_hash = ?",
                    (user.get(), hash),
                )
                .await
                .map_err(unavailable)?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn mfa_challenge(
        &self,
        user: UserId,
        token_hash: Option<&[u8; 32]>,
    ) -> Result<Option<StoredChallenge>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = match token_hash {
            Some(hash) => conn
                .exec_first(
                    "SELECT token_hash, created_at, expires_at, failures FROM mfa_challenges \
                     WHERE user_id = ? AND token_hash = ?",
                    (user.get(), hash.to_vec()),
                )
                .await
                .map_err(unavailable)?,
            None => conn
                .exec_first(
                    "SELECT token_hash, created_at, expires_at, failures FROM mfa_challenges \
                     WHERE user_id = ? ORDER BY created_at DESC LIMIT 1",
                    (user.get(),),
                )
                .await
                .map_err(unavailable)?,
        };
        row.map(challenge_from_row).transpose()
    }

    async fn count_mfa_failure(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
        max_failures: u32,
    ) -> Result<u32, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let key = (user.get(), token_hash.to_vec());
            tx.exec_drop(
                "UPDATE mfa_challenges SET failures = failures + 1 \
             WHERE user_id = ? AND token_hash = ?",
                key.clone(),
            )
            .await
            .map_err(unavailable)?;
            let failures: Option<u32> = tx
                .exec_first(
                    "SELECT failures FROM mfa_challenges WHERE user_id = ? AND token_hash = ?",
                    key.clone(),
                )
                .await
                .map_err(unavailable)?;
            let failures = failures.unwrap_or(0);
            if failures >= max_failures {
                tx.exec_drop(
                    "DELETE FROM mfa_challenges WHERE user_id = ? AND token_hash = ?",
                    key,
                )
                .await
                .map_err(unavailable)?;
            }
            Ok(if failures >= max_failures {
                0
            } else {
                failures
            })
        }
        .await;
        finish(tx, result).await
    }

    async fn take_mfa_challenge(
        &self,
        user: UserId,
        token_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "DELETE FROM mfa_challenges WHERE user_id = ? AND token_hash = ?",
            (user.get(), token_hash.to_vec()),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows() == 1)
    }

    async fn failure_record(&self, key: &[u8; 32]) -> Result<Option<Lockout>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(
                "SELECT failures, window_start, locked_until, lockouts FROM auth_failures \
                 WHERE key_hash = ?",
                (key.to_vec(),),
            )
            .await
            .map_err(unavailable)?;
        row.map(lockout_from_row).transpose()
    }

    async fn record_failure(
        &self,
        key: &[u8; 32],
        rule: &FailureRule,
        now: DateTime<Utc>,
    ) -> Result<Lockout, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            // The row lock makes read-count-write one step for concurrent attempts.
            let row: Option<Row> = tx
                .exec_first(
                    "SELECT failures, window_start, locked_until, lockouts FROM auth_failures \
                     WHERE key_hash = ? FOR UPDATE",
                    (key.to_vec(),),
                )
                .await
                .map_err(unavailable)?;
            let record = rule.fail(row.map(lockout_from_row).transpose()?, now);
            tx.exec_drop(
                "INSERT INTO auth_failures \
                 (key_hash, failures, window_start, locked_until, lockouts, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE failures = VALUES(failures), \
                 window_start = VALUES(window_start), locked_until = VALUES(locked_until), \
                 lockouts = VALUES(lockouts), updated_at = VALUES(updated_at)",
                (
                    key.to_vec(),
                    record.failures,
                    to_db(record.window_start),
                    record.locked_until.map(to_db),
                    record.lockouts,
                    to_db(now),
                ),
            )
            .await
            .map_err(unavailable)?;
            Ok(record)
        }
        .await;
        finish(tx, result).await
    }

    async fn clear_failures(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "DELETE FROM auth_failures WHERE key_hash = ?",
            (key.to_vec(),),
        )
        .await
        .map_err(unavailable)
    }

    async fn prune_failures(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "DELETE FROM auth_failures WHERE updated_at < ?",
            (to_db(before),),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows())
    }

    async fn session_by_id(&self, id: SessionId) -> Result<Option<Session>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<Row> = conn
            .exec_first(
                format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"),
                (id.to_string(),),
            )
            .await
            .map_err(unavailable)?;
        row.map(session_from_row).transpose()
    }

    async fn touch_session(
        &self,
        id: SessionId,
        last_seen_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, ?) \
             WHERE id = ? AND revoked_at IS NULL",
            (to_db(last_seen_at), id.to_string()),
        )
        .await
        .map_err(unavailable)
    }

    async fn revoke_sessions(
        &self,
        ids: &[SessionId],
        revocation: &Revocation,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (sql, params) = revoke_statement(ids, revocation);
        let mut conn = self.conn().await?;
        conn.exec_drop(sql, params).await.map_err(unavailable)
    }

    async fn expire_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        // Absolute lifetime first, so a session past both limits is recorded as max_lifetime.
        conn.exec_drop(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = 'max_lifetime' \
             WHERE revoked_at IS NULL AND expires_at <= ?",
            (to_db(now), to_db(now)),
        )
        .await
        .map_err(unavailable)?;
        let mut ended = conn.affected_rows();
        conn.exec_drop(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = 'idle_timeout' \
             WHERE revoked_at IS NULL AND last_seen_at <= ?",
            (to_db(now), to_db(idle_cutoff)),
        )
        .await
        .map_err(unavailable)?;
        ended += conn.affected_rows();
        Ok(ended)
    }

    async fn prune_sessions(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "DELETE FROM sessions WHERE revoked_at < ? OR expires_at < ?",
            (to_db(ended_before), to_db(ended_before)),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows())
    }

    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
            (password_hash, to_db(Utc::now()), user.get()),
        )
        .await
        .map_err(unavailable)?;
        if conn.affected_rows() == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("no user {user}")))
        }
    }

    async fn replace_password_hash(
        &self,
        user: UserId,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE users SET password_hash = ?, updated_at = ? \
             WHERE id = ? AND password_hash = ?",
            (new, to_db(Utc::now()), user.get(), old),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows() == 1)
    }

    async fn advance_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        // One conditional UPDATE: the database decides atomically whether the step is new.
        conn.exec_drop(
            "UPDATE users SET totp_last_step = ?, updated_at = ? \
             WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)",
            (step, to_db(Utc::now()), user.get(), step),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows() == 1)
    }
}

/// Inserts on a given connection or transaction (`open_session_within_limit` runs it inside its
/// transaction).
async fn insert_session_on<Q: Queryable>(conn: &mut Q, s: &Session) -> Result<(), StoreError> {
    conn.exec_drop(
        format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) \
             VALUES (:id, :user_id, :created_at, :last_seen_at, :expires_at, :revoked_at, \
             :reason, :note, :user_agent, :ip)"
        ),
        params! {
        "id" => s.id.to_string(),
        "user_id" => s.user_id.get(),
        "created_at" => to_db(s.created_at),
        "last_seen_at" => to_db(s.last_seen_at),
        "expires_at" => to_db(s.expires_at),
        "revoked_at" => s.revoked_at.map(to_db),
        "reason" => s.revoke_reason.map(RevokeReason::as_str),
        "note" => &s.revoke_note,
        "user_agent" => &s.device.user_agent,
        "ip" => &s.device.ip,
        },
    )
    .await
    .map_err(|e| match e {
        mysql_async::Error::Server(ref server) if server.code == ER_DUP_ENTRY => {
            StoreError::Conflict(format!("session {} exists", s.id))
        }
        other => unavailable(other),
    })
}
