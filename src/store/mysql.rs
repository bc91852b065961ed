//! MySQL/MariaDB store over a `mysql_async` pool. Times are stored as UTC `DATETIME(6)` and
//! always come from the service's clock, never the database's `NOW()`, so that the memory and
//! MySQL stores agree on every comparison.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use mysql_async::prelude::{Query, Queryable, WithParams};
use mysql_async::{
    Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, Transaction, TxOpts, params,
};

use super::{
    FactorChange, FactorOutcome, LoginCommit, LoginGate, SessionStore, StoreError, StoredChallenge,
};
use crate::crypto::{Keyring, Purpose};
use crate::domain::{
    AuthEvent, Device, Email, FailureRule, HashedCode, Lockout, NewUser, Origin, RecordedEvent,
    Revocation, RevokeReason, SealedSecret, Session, SessionId, User, UserId,
};

mod embedded {
    refinery::embed_migrations!("sql/migrations");
}

/// MySQL error number for a duplicate key.
const ER_DUP_ENTRY: u16 = 1062;

const USER_COLUMNS: &str = "id, email, password_hash, first_name, last_name, preferred_name, \
     phone_number, address, is_active, mfa_enabled, totp_key_id, totp_nonce, totp_ciphertext, \
     pending_key_id, pending_nonce, pending_ciphertext, pending_at, totp_last_step, created_at, \
     updated_at";

const EVENT_COLUMNS: &str = "at, kind, outcome, initiator, user_id, account_hash, session_id, reason, \
     note, node_id, ip, user_agent";

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at, revoked_at, \
     revoke_reason, revoke_note, user_agent, ip";

/// `columns` (a list as above) each qualified by `table`, for a statement that joins.
fn qualified(table: &str, columns: &str) -> String {
    joined(columns, |c| format!("{table}.{c}"))
}

/// Like [`qualified`], each column also renamed `<table>_<column>`: for a join whose tables
/// share column names (`id`, `created_at`).
fn qualified_as(table: &str, columns: &str) -> String {
    joined(columns, |c| format!("{table}.{c} AS {table}_{c}"))
}

fn joined(columns: &str, each: impl Fn(&str) -> String) -> String {
    columns
        .split(',')
        .map(|c| each(c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

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
            // READ COMMITTED: a locking read locks the rows it reads, not the gaps beside
            // them. Under REPEATABLE READ, two logins of neighbouring users locked the gap
            // between their sessions in `sessions_user_live` and deadlocked (seen at 32
            // concurrent logins: InnoDB error 1213, a 503). Every transaction that ends or
            // opens a user's sessions serialises on that user's row instead (`FOR UPDATE`),
            // so gap locks bought nothing. Once per connection (and after any reset).
            .setup(vec![
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ])
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

/// Inside a transaction: locks the caller's session `keep` of `user`; false when it is not
/// live at `at` (ended on another node, say, while the request was being worked on).
async fn lock_caller_session(
    tx: &mut Transaction<'_>,
    user: UserId,
    keep: SessionId,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let caller: Option<String> = tx
        .exec_first(
            "SELECT id FROM sessions WHERE id = ? AND user_id = ? \
             AND revoked_at IS NULL AND expires_at > ? FOR UPDATE",
            (keep.to_string(), user.get(), to_db(at)),
        )
        .await
        .map_err(unavailable)?;
    Ok(caller.is_some())
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

/// Inside a transaction: marks `ids` (live sessions of `user`, locked by the caller) revoked
/// and records a `session_ended` event for each.
async fn revoke_in(
    tx: &mut Transaction<'_>,
    user: UserId,
    ids: &[SessionId],
    revocation: &Revocation,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let (sql, params) = revoke_statement(ids, revocation);
    tx.exec_drop(sql, params).await.map_err(unavailable)?;
    let events: Vec<AuthEvent> = ids
        .iter()
        .map(|id| AuthEvent::session_ended(user, *id, revocation))
        .collect();
    insert_events(tx, &events).await
}

/// Appends events on a connection or inside a transaction.
async fn insert_events<Q: Queryable>(conn: &mut Q, events: &[AuthEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let placeholders = ["?"; 12].join(", ");
    conn.exec_batch(
        format!("INSERT INTO auth_events ({EVENT_COLUMNS}) VALUES ({placeholders})"),
        events.iter().map(event_params),
    )
    .await
    .map_err(unavailable)
}

fn event_params(e: &AuthEvent) -> Vec<mysql_async::Value> {
    vec![
        to_db(e.at).into(),
        e.kind.as_str().into(),
        e.kind.outcome().into(),
        e.origin.initiator.as_str().into(),
        e.user_id.map(UserId::get).into(),
        e.account_hash.map(|h| h.to_vec()).into(),
        e.session_id.map(|id| id.to_string()).into(),
        e.reason.clone().into(),
        e.note.clone().into(),
        e.origin.node.clone().into(),
        e.origin.ip.clone().into(),
        e.origin.user_agent.clone().into(),
    ]
}

fn event_from_row(mut row: Row) -> Result<RecordedEvent, StoreError> {
    let kind: String = take(&mut row, "kind")?;
    let initiator: String = take(&mut row, "initiator")?;
    let hash: Option<Vec<u8>> = take(&mut row, "account_hash")?;
    let session: Option<String> = take(&mut row, "session_id")?;
    Ok(RecordedEvent {
        id: take(&mut row, "id")?,
        event: AuthEvent {
            at: from_db(take(&mut row, "at")?),
            kind: kind
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("auth_events.kind: {e}")))?,
            user_id: take::<Option<u64>>(&mut row, "user_id")?.map(UserId::new),
            account_hash: hash.and_then(|h| h.try_into().ok()),
            session_id: session
                .map(|id| id.parse())
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("auth_events.session_id: {e}")))?,
            reason: take(&mut row, "reason")?,
            note: take(&mut row, "note")?,
            origin: Origin {
                initiator: initiator
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("auth_events.initiator: {e}")))?,
                node: take(&mut row, "node_id")?,
                ip: take(&mut row, "ip")?,
                user_agent: take(&mut row, "user_agent")?,
            },
        },
    })
}

/// A sealed secret from its three columns (`<prefix>_key_id`, `_nonce`, `_ciphertext`).
fn sealed_from_row(row: &mut Row, prefix: &str) -> Result<Option<SealedSecret>, StoreError> {
    let key_id: Option<String> = take(row, &format!("{prefix}_key_id"))?;
    let nonce: Option<Vec<u8>> = take(row, &format!("{prefix}_nonce"))?;
    let ciphertext: Option<Vec<u8>> = take(row, &format!("{prefix}_ciphertext"))?;
    match (key_id, nonce, ciphertext) {
        (Some(key_id), Some(nonce), Some(ciphertext)) => Ok(Some(SealedSecret {
            key_id,
            nonce,
            ciphertext,
        })),
        (None, None, None) => Ok(None),
        _ => Err(StoreError::Corrupt(format!(
            "users.{prefix}_*: a sealed secret is missing a part"
        ))),
    }
}

/// A sealed secret as the three column values (all NULL for none).
fn sealed_params(secret: Option<&SealedSecret>) -> [mysql_async::Value; 3] {
    match secret {
        Some(s) => [
            s.key_id.clone().into(),
            s.nonce.clone().into(),
            s.ciphertext.clone().into(),
        ],
        None => [
            mysql_async::Value::NULL,
            mysql_async::Value::NULL,
            mysql_async::Value::NULL,
        ],
    }
}

/// Inside a transaction: replaces the user's recovery codes with `codes`.
async fn replace_recovery_codes(
    tx: &mut Transaction<'_>,
    user: UserId,
    codes: &[HashedCode],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.exec_drop(
        "DELETE FROM recovery_codes WHERE user_id = ?",
        (user.get(),),
    )
    .await
    .map_err(unavailable)?;
    if codes.is_empty() {
        return Ok(());
    }
    tx.exec_batch(
        "INSERT INTO recovery_codes (user_id, code_id, salt, code_hash, created_at) \
         VALUES (?, ?, ?, ?, ?)",
        codes.iter().map(|c| {
            (
                user.get(),
                c.id,
                c.salt.to_vec(),
                c.hash.to_vec(),
                to_db(at),
            )
        }),
    )
    .await
    .map_err(unavailable)
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

impl MySqlStore {
    /// One attempt of [`SessionStore::open_session_within_limit`]'s transaction.
    async fn open_session_once(
        &self,
        session: &Session,
        max_live: usize,
        gate: &LoginGate,
        event: &AuthEvent,
    ) -> Result<Option<LoginCommit>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let (account, mut live) = lock_account_and_sessions(&mut tx, session).await?;
            let (active, mfa_enabled, hash) = account
                .ok_or_else(|| StoreError::Conflict(format!("no user {}", session.user_id)))?;
            if !active
                || mfa_enabled != gate.mfa_enabled
                || gate.password_hash.as_ref().is_some_and(|h| *h != hash)
            {
                return Ok(None);
            }
            let excess = (live.len() + 1).saturating_sub(max_live.max(1));
            let evicted: Vec<SessionId> = live.drain(..excess).map(|s| s.id).collect();
            revoke_in(
                &mut tx,
                session.user_id,
                &evicted,
                &Revocation::new(session.created_at, RevokeReason::SessionLimit)
                    .by(event.origin.clone()),
            )
            .await?;
            insert_session_on(&mut tx, session).await?;
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
            live.push(session.clone());
            Ok(Some(LoginCommit {
                ended: evicted,
                live,
            }))
        }
        .await;
        finish(tx, result).await
    }
}

/// The login's one locking read: the user's row (the lock that serialises logins of one user
/// across nodes, and orders this login against factor, password and status changes), then
/// their live sessions at the new session's creation, least recently used first. One
/// statement, not two: a login is a handful of round trips, and each costs both processes
/// about a tenth of its work. `users` is the outer table of the join, so its row is locked
/// before any session, the order every other transaction here takes them in. The index is
/// forced: in a join the optimizer may scan the whole table instead (seen on a small one), and
/// a locking read locks every row it scans, other users' sessions among them, which
/// deadlocked concurrent logins.
async fn lock_account_and_sessions(
    tx: &mut Transaction<'_>,
    session: &Session,
) -> Result<(Option<(bool, bool, String)>, Vec<Session>), StoreError> {
    static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT u.is_active, u.mfa_enabled, u.password_hash, {} \
             FROM users u LEFT JOIN sessions s FORCE INDEX (sessions_user_live) \
             ON s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > ? \
             WHERE u.id = ? ORDER BY s.last_seen_at, s.created_at FOR UPDATE",
            qualified("s", SESSION_COLUMNS)
        )
    });
    let rows: Vec<Row> = tx
        .exec(
            STATEMENT.as_str(),
            (to_db(session.created_at), session.user_id.get()),
        )
        .await
        .map_err(unavailable)?;
    let mut account = None;
    let mut live = Vec::with_capacity(rows.len());
    for mut row in rows {
        if account.is_none() {
            account = Some((
                take(&mut row, "is_active")?,
                take(&mut row, "mfa_enabled")?,
                take(&mut row, "password_hash")?,
            ));
        }
        // A user with no live session is one row of NULL session columns.
        if !is_null(&row, "id") {
            live.push(session_from_row(row)?);
        }
    }
    Ok((account, live))
}

/// InnoDB's "deadlock found": it rolled the whole transaction back, and its advice is to run
/// it again. Logins of users whose sessions sit side by side in `sessions_user_live` can still
/// meet this under READ COMMITTED (rarely: once in a CI run of the test that guards it), and a
/// login must not fail on it.
const ER_LOCK_DEADLOCK: u16 = 1213;
const DEADLOCK_RETRIES: usize = 3;

fn is_deadlock(err: &StoreError) -> bool {
    let StoreError::Unavailable(cause) = err else {
        return false;
    };
    matches!(
        cause.downcast_ref::<mysql_async::Error>(),
        Some(mysql_async::Error::Server(server)) if server.code == ER_LOCK_DEADLOCK
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
    lockout_taken_from(&mut row)
}

/// The failure record's columns, taken out of a row that may hold others.
fn lockout_taken_from(row: &mut Row) -> Result<Lockout, StoreError> {
    Ok(Lockout {
        failures: take(row, "failures")?,
        window_start: from_db(take(row, "window_start")?),
        locked_until: take::<Option<NaiveDateTime>>(row, "locked_until")?.map(from_db),
        lockouts: take(row, "lockouts")?,
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

/// Whether `column` is NULL in `row` (or missing): the absent side of a LEFT JOIN. Reads it
/// as a raw value, which cannot fail to convert (a typed `get` would panic on a bad value).
fn is_null(row: &Row, column: &str) -> bool {
    !matches!(
        row.get_opt::<mysql_async::Value, _>(column),
        Some(Ok(value)) if value != mysql_async::Value::NULL
    )
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
        totp_secret: sealed_from_row(&mut row, "totp")?,
        totp_pending: sealed_from_row(&mut row, "pending")?,
        totp_pending_at: take::<Option<NaiveDateTime>>(&mut row, "pending_at")?.map(from_db),
        totp_last_step: take(&mut row, "totp_last_step")?,
        created_at: from_db(take(&mut row, "created_at")?),
        updated_at: from_db(take(&mut row, "updated_at")?),
    })
}

fn session_from_row(mut row: Row) -> Result<Session, StoreError> {
    session_taken_from(&mut row, "")
}

/// A session's columns, each named `prefix` + its column's name, taken out of a row that may
/// hold others (a join with `users`, whose `id` and `created_at` would otherwise collide).
fn session_taken_from(row: &mut Row, prefix: &str) -> Result<Session, StoreError> {
    let column = |name: &str| format!("{prefix}{name}");
    let id: String = take(row, &column("id"))?;
    let reason: Option<String> = take(row, &column("revoke_reason"))?;
    Ok(Session {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("sessions.id: {e}")))?,
        user_id: UserId::new(take(row, &column("user_id"))?),
        created_at: from_db(take(row, &column("created_at"))?),
        last_seen_at: from_db(take(row, &column("last_seen_at"))?),
        expires_at: from_db(take(row, &column("expires_at"))?),
        revoked_at: take::<Option<NaiveDateTime>>(row, &column("revoked_at"))?.map(from_db),
        revoke_reason: reason
            .map(|r| r.parse())
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("sessions.revoke_reason: {e}")))?,
        revoke_note: take(row, &column("revoke_note"))?,
        device: Device {
            user_agent: take(row, &column("user_agent"))?,
            ip: take(row, &column("ip"))?,
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

    async fn schema_is_current(&self) -> Result<bool, StoreError> {
        let newest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max()
            .unwrap_or_default();
        let mut conn = self.conn().await?;
        let applied: Option<i64> = conn
            .query_first("SELECT MAX(version) FROM refinery_schema_history")
            .await
            .map_err(unavailable)?;
        Ok(applied.unwrap_or_default() >= newest)
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

    async fn user_and_live_sessions(
        &self,
        id: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<(User, Vec<Session>)>, StoreError> {
        // One statement, so one snapshot: the row and the sessions as of one moment. A row per
        // live session (the user's columns repeated), or one with NULL session columns.
        static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {}, {} FROM users u \
                 LEFT JOIN sessions s FORCE INDEX (sessions_user_live) \
                 ON s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > ? \
                 WHERE u.id = ?",
                qualified("u", USER_COLUMNS),
                qualified_as("s", SESSION_COLUMNS)
            )
        });
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = conn
            .exec(STATEMENT.as_str(), (to_db(now), id.get()))
            .await
            .map_err(unavailable)?;
        let mut user = None;
        let mut sessions = Vec::with_capacity(rows.len());
        for mut row in rows {
            if !is_null(&row, "s_id") {
                sessions.push(session_taken_from(&mut row, "s_")?);
            }
            if user.is_none() {
                user = Some(user_from_row(row)?);
            }
        }
        Ok(user.map(|user| (user, sessions)))
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
        let [key_id, nonce, ciphertext] = sealed_params(new.totp_secret.as_ref());
        let inserted =
            "INSERT INTO users (email, password_hash, first_name, last_name, phone_number, \
             is_active, mfa_enabled, totp_key_id, totp_nonce, totp_ciphertext, created_at, \
             updated_at) VALUES (:email, :hash, :first, :last, :phone, :active, :mfa, :key_id, \
             :nonce, :ciphertext, :now, :now)"
                .with(params! {
                    "email" => new.email.as_str(),
                    "hash" => &new.password_hash,
                    "first" => &new.first_name,
                    "last" => &new.last_name,
                    "phone" => &new.phone_number,
                    "active" => new.is_active,
                    "mfa" => new.mfa_enabled,
                    "key_id" => key_id,
                    "nonce" => nonce,
                    "ciphertext" => ciphertext,
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
        gate: &LoginGate,
        event: &AuthEvent,
    ) -> Result<Option<LoginCommit>, StoreError> {
        let mut retries = 0;
        loop {
            match self.open_session_once(session, max_live, gate, event).await {
                Err(err) if is_deadlock(&err) && retries < DEADLOCK_RETRIES => {
                    retries += 1;
                    tracing::warn!(user_id = %session.user_id, retries,
                        "login transaction chosen as a deadlock's victim; running it again");
                }
                outcome => return outcome,
            }
        }
    }

    async fn revoke_user_sessions(
        &self,
        user: UserId,
        except: Option<SessionId>,
        revocation: &Revocation,
    ) -> Result<Vec<SessionId>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            // The user's row first, as a login takes it: one order, no deadlock, and a login
            // racing this one commits wholly before or after it.
            if lock_user(&mut tx, user).await?.is_none() {
                return Ok(Vec::new());
            }
            let ids = lock_live_sessions(&mut tx, user, except, revocation.at).await?;
            revoke_in(&mut tx, user, &ids, revocation).await?;
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
        event: &AuthEvent,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            lock_user(&mut tx, user)
                .await?
                .ok_or_else(|| StoreError::Conflict(format!("no user {user}")))?;
            if !lock_caller_session(&mut tx, user, keep, revocation.at).await? {
                return Ok(None);
            }
            tx.exec_drop(
                "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?",
                (password_hash, to_db(revocation.at), user.get()),
            )
            .await
            .map_err(unavailable)?;
            let ids = lock_live_sessions(&mut tx, user, Some(keep), revocation.at).await?;
            revoke_in(&mut tx, user, &ids, revocation).await?;
            void_challenges(&mut tx, user).await?;
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
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
        event: &AuthEvent,
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
                revoke_in(&mut tx, user, &ids, revocation).await?;
                void_challenges(&mut tx, user).await?;
                ids
            };
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
            Ok(Some(ids))
        }
        .await;
        finish(tx, result).await
    }

    async fn end_if_idle(
        &self,
        id: SessionId,
        idle_cutoff: DateTime<Utc>,
        revocation: &Revocation,
    ) -> Result<bool, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let user: Option<u64> = tx
                .exec_first(
                    "SELECT user_id FROM sessions \
                     WHERE id = ? AND revoked_at IS NULL AND last_seen_at <= ? FOR UPDATE",
                    (id.to_string(), to_db(idle_cutoff)),
                )
                .await
                .map_err(unavailable)?;
            let Some(user) = user else {
                return Ok(false);
            };
            revoke_in(&mut tx, UserId::new(user), &[id], revocation).await?;
            Ok(true)
        }
        .await;
        finish(tx, result).await
    }

    async fn set_pending_totp(
        &self,
        user: UserId,
        pending: &SealedSecret,
        event: &AuthEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let [key_id, nonce, ciphertext] = sealed_params(Some(pending));
            tx.exec_drop(
                "UPDATE users SET pending_key_id = ?, pending_nonce = ?, pending_ciphertext = ?, \
                 pending_at = ?, updated_at = ? WHERE id = ? AND NOT mfa_enabled",
                (
                    key_id,
                    nonce,
                    ciphertext,
                    to_db(event.at),
                    to_db(event.at),
                    user.get(),
                ),
            )
            .await
            .map_err(unavailable)?;
            if tx.affected_rows() != 1 {
                return Ok(false);
            }
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
            Ok(true)
        }
        .await;
        finish(tx, result).await
    }

    async fn change_factor(
        &self,
        user: UserId,
        change: &FactorChange,
        keep: SessionId,
        end_others: Option<&Revocation>,
        event: &AuthEvent,
    ) -> Result<FactorOutcome, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let row: Option<Row> = tx
                .exec_first(
                    format!("SELECT {USER_COLUMNS} FROM users WHERE id = ? FOR UPDATE"),
                    (user.get(),),
                )
                .await
                .map_err(unavailable)?;
            let Some(current) = row.map(user_from_row).transpose()? else {
                return Ok(FactorOutcome::Stale);
            };
            if !lock_caller_session(&mut tx, user, keep, event.at).await? {
                return Ok(FactorOutcome::CallerEnded);
            }
            let at = to_db(event.at);
            match change {
                FactorChange::Enable {
                    pending,
                    step,
                    codes,
                } => {
                    if current.mfa_enabled || current.totp_pending.as_ref() != Some(pending) {
                        return Ok(FactorOutcome::Stale);
                    }
                    let [key_id, nonce, ciphertext] = sealed_params(Some(pending));
                    tx.exec_drop(
                        "UPDATE users SET mfa_enabled = TRUE, totp_key_id = ?, totp_nonce = ?, \
                         totp_ciphertext = ?, totp_last_step = GREATEST(COALESCE(totp_last_step, 0), ?), \
                         pending_key_id = NULL, pending_nonce = NULL, pending_ciphertext = NULL, \
                         pending_at = NULL, updated_at = ? WHERE id = ?",
                        (key_id, nonce, ciphertext, *step, at, user.get()),
                    )
                    .await
                    .map_err(unavailable)?;
                    replace_recovery_codes(&mut tx, user, codes, event.at).await?;
                }
                FactorChange::Disable => {
                    if !current.mfa_enabled {
                        return Ok(FactorOutcome::Stale);
                    }
                    tx.exec_drop(
                        "UPDATE users SET mfa_enabled = FALSE, totp_key_id = NULL, \
                         totp_nonce = NULL, totp_ciphertext = NULL, pending_key_id = NULL, \
                         pending_nonce = NULL, pending_ciphertext = NULL, pending_at = NULL, \
                         updated_at = ? WHERE id = ?",
                        (at, user.get()),
                    )
                    .await
                    .map_err(unavailable)?;
                    replace_recovery_codes(&mut tx, user, &[], event.at).await?;
                }
                FactorChange::NewRecoveryCodes(codes) => {
                    if !current.mfa_enabled {
                        return Ok(FactorOutcome::Stale);
                    }
                    replace_recovery_codes(&mut tx, user, codes, event.at).await?;
                }
            }
            let ended = match end_others {
                Some(revocation) => {
                    let ids = lock_live_sessions(&mut tx, user, Some(keep), event.at).await?;
                    revoke_in(&mut tx, user, &ids, revocation).await?;
                    ids
                }
                None => Vec::new(),
            };
            void_challenges(&mut tx, user).await?;
            insert_events(&mut tx, std::slice::from_ref(event)).await?;
            Ok(FactorOutcome::Changed(ended))
        }
        .await;
        finish(tx, result).await
    }

    async fn unused_recovery_codes(&self, user: UserId) -> Result<Vec<HashedCode>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<(u8, Vec<u8>, Vec<u8>)> = conn
            .exec(
                "SELECT code_id, salt, code_hash FROM recovery_codes \
                 WHERE user_id = ? AND used_at IS NULL ORDER BY code_id",
                (user.get(),),
            )
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(id, salt, hash)| {
                Ok(HashedCode {
                    id,
                    salt: salt.try_into().map_err(|_| {
                        StoreError::Corrupt("recovery_codes.salt: not 16 bytes".into())
                    })?,
                    hash: hash.try_into().map_err(|_| {
                        StoreError::Corrupt("recovery_codes.code_hash: not 32 bytes".into())
                    })?,
                })
            })
            .collect()
    }

    async fn spend_recovery_code(
        &self,
        user: UserId,
        code: &HashedCode,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE recovery_codes SET used_at = ? \
             WHERE user_id = ? AND code_id = ? AND code_hash = ? AND used_at IS NULL",
            (to_db(at), user.get(), code.id, code.hash.to_vec()),
        )
        .await
        .map_err(unavailable)?;
        Ok(conn.affected_rows() == 1)
    }

    async fn record_event(&self, event: &AuthEvent) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        insert_events(&mut conn, std::slice::from_ref(event)).await
    }

    async fn events_of(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = conn
            .exec(
                format!(
                    "SELECT id, {EVENT_COLUMNS} FROM auth_events WHERE user_id = ? AND id < ? \
                     ORDER BY id DESC LIMIT ?"
                ),
                (user.get(), before.unwrap_or(u64::MAX), limit as u64),
            )
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(event_from_row).collect()
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        conn.exec_drop("DELETE FROM auth_events WHERE at < ?", (to_db(before),))
            .await
            .map_err(unavailable)?;
        Ok(conn.affected_rows())
    }

    async fn reseal_secrets(&self, keyring: &Keyring, clear_only: bool) -> Result<u64, StoreError> {
        let mut sealed = 0;
        // Secrets still in clear (rows from before V6): sealed, and the clear column emptied.
        let mut conn = self.conn().await?;
        let clear: Vec<(u64, String)> = conn
            .exec(
                "SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL",
                (),
            )
            .await
            .map_err(unavailable)?;
        for (id, secret) in clear {
            let [key_id, nonce, ciphertext] = sealed_params(Some(
                &keyring
                    .seal(Purpose::Totp, secret.as_bytes())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ));
            conn.exec_drop(
                "UPDATE users SET totp_key_id = ?, totp_nonce = ?, totp_ciphertext = ?, \
                 totp_secret = NULL WHERE id = ? AND totp_secret = ?",
                (key_id, nonce, ciphertext, id, secret),
            )
            .await
            .map_err(unavailable)?;
            sealed += conn.affected_rows();
        }
        if clear_only {
            return Ok(sealed);
        }
        for prefix in ["totp", "pending"] {
            let rows: Vec<Row> = conn
                .exec(
                    format!(
                        "SELECT id, {prefix}_key_id, {prefix}_nonce, {prefix}_ciphertext \
                         FROM users WHERE {prefix}_key_id IS NOT NULL AND {prefix}_key_id <> ?"
                    ),
                    (keyring.current_id(),),
                )
                .await
                .map_err(unavailable)?;
            for mut row in rows {
                let id: u64 = take(&mut row, "id")?;
                let Some(old) = sealed_from_row(&mut row, prefix)? else {
                    continue;
                };
                let Some(new) = keyring
                    .reseal(Purpose::Totp, &old)
                    .map_err(|e| StoreError::Corrupt(format!("user {id}: {e}")))?
                else {
                    continue;
                };
                let [key_id, nonce, ciphertext] = sealed_params(Some(&new));
                // Only if it is still the secret we opened (a concurrent setup or enable wins).
                conn.exec_drop(
                    format!(
                        "UPDATE users SET {prefix}_key_id = ?, {prefix}_nonce = ?, \
                         {prefix}_ciphertext = ? WHERE id = ? AND {prefix}_key_id = ? \
                         AND {prefix}_nonce = ?"
                    ),
                    (key_id, nonce, ciphertext, id, old.key_id, old.nonce),
                )
                .await
                .map_err(unavailable)?;
                sealed += conn.affected_rows();
            }
        }
        Ok(sealed)
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

    async fn failure_record_and_user(
        &self,
        key: &[u8; 32],
        email: &Email,
    ) -> Result<(Option<Lockout>, Option<User>), StoreError> {
        // Both outer-joined to one constant row, so either may be missing; their column names
        // do not overlap. Locks nothing: like the two reads it replaces.
        static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT f.failures, f.window_start, f.locked_until, f.lockouts, {} \
                 FROM (SELECT 1) AS one \
                 LEFT JOIN auth_failures f ON f.key_hash = ? \
                 LEFT JOIN users u ON u.email = ?",
                qualified("u", USER_COLUMNS)
            )
        });
        let mut conn = self.conn().await?;
        let mut row: Row = conn
            .exec_first(STATEMENT.as_str(), (key.to_vec(), email.as_str()))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| StoreError::Corrupt("a join to one row returned none".into()))?;
        let record = (!is_null(&row, "failures"))
            .then(|| lockout_taken_from(&mut row))
            .transpose()?;
        let user = (!is_null(&row, "id"))
            .then(|| user_from_row(row))
            .transpose()?;
        Ok((record, user))
    }

    async fn record_failure(
        &self,
        key: &[u8; 32],
        rule: &FailureRule,
        now: DateTime<Utc>,
    ) -> Result<Lockout, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            // The row lock makes read-count-write one step for concurrent attempts. The row
            // must exist to be locked: under READ COMMITTED a locking read of a missing row
            // locks nothing, and two first failures could both count from zero. An empty
            // record (no failures, window from now) counts exactly as no record does. `ON
            // DUPLICATE KEY UPDATE` takes the existing row's exclusive lock at once (`INSERT
            // IGNORE` would take a shared one, and two attempts upgrading it deadlock).
            tx.exec_drop(
                "INSERT INTO auth_failures \
                 (key_hash, failures, window_start, locked_until, lockouts, updated_at) \
                 VALUES (?, 0, ?, NULL, 0, ?) ON DUPLICATE KEY UPDATE key_hash = key_hash",
                (key.to_vec(), to_db(now), to_db(now)),
            )
            .await
            .map_err(unavailable)?;
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
        let mut tx = self.transaction().await?;
        let result = async {
            // Only the ones still live end here (and get an event); the rest keep their end.
            let placeholders = vec!["?"; ids.len()].join(", ");
            let live: Vec<(String, u64)> = tx
                .exec(
                    format!(
                        "SELECT id, user_id FROM sessions \
                         WHERE revoked_at IS NULL AND id IN ({placeholders}) FOR UPDATE"
                    ),
                    ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
                )
                .await
                .map_err(unavailable)?;
            for (id, user) in live {
                let id: SessionId = id
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("sessions.id: {e}")))?;
                revoke_in(&mut tx, UserId::new(user), &[id], revocation).await?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn expire_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<u64, StoreError> {
        let mut tx = self.transaction().await?;
        let result = async {
            let mut ended = 0;
            // Absolute lifetime first, so a session past both limits is recorded as
            // max_lifetime. The rows are locked as they are read, so the events name exactly
            // the sessions ended here (a logout committing meanwhile waits, then ends none).
            for (reason, condition, limit) in [
                (RevokeReason::MaxLifetime, "expires_at <= ?", now),
                (RevokeReason::IdleTimeout, "last_seen_at <= ?", idle_cutoff),
            ] {
                let rows: Vec<(String, u64)> = tx
                    .exec(
                        format!(
                            "SELECT id, user_id FROM sessions \
                             WHERE revoked_at IS NULL AND {condition} FOR UPDATE"
                        ),
                        (to_db(limit),),
                    )
                    .await
                    .map_err(unavailable)?;
                let mut by_user: std::collections::BTreeMap<u64, Vec<SessionId>> =
                    std::collections::BTreeMap::new();
                for (id, user) in rows {
                    let id = id
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("sessions.id: {e}")))?;
                    by_user.entry(user).or_default().push(id);
                }
                let revocation = Revocation::new(now, reason).by(origin.clone());
                for (user, ids) in by_user {
                    revoke_in(&mut tx, UserId::new(user), &ids, &revocation).await?;
                    ended += ids.len() as u64;
                }
            }
            Ok(ended)
        }
        .await;
        finish(tx, result).await
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

    async fn count_live_sessions(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        // Covered by the `sessions_idle (revoked_at, last_seen_at)` index: no row is read.
        let count: Option<u64> = conn
            .query_first("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL")
            .await
            .map_err(unavailable)?;
        Ok(count.unwrap_or(0))
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

    async fn advance_totp_step(
        &self,
        user: UserId,
        secret: &SealedSecret,
        step: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        // One conditional UPDATE: the database decides atomically whether the step is new
        // and the secret still the one the code was checked against.
        conn.exec_drop(
            "UPDATE users SET totp_last_step = ?, updated_at = ? \
             WHERE id = ? AND mfa_enabled AND totp_nonce = ? \
             AND (totp_last_step IS NULL OR totp_last_step < ?)",
            (
                step,
                to_db(Utc::now()),
                user.get(),
                secret.nonce.clone(),
                step,
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> StoreError {
        unavailable(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "from the server".into(),
            state: "40001".into(),
        }))
    }

    /// Only a deadlock (the transaction rolled back whole) is run again; a lock wait that
    /// timed out, or any other failure, is the caller's 503 as before.
    #[test]
    fn only_innodb_deadlocks_are_run_again() {
        assert!(is_deadlock(&server_error(ER_LOCK_DEADLOCK)));
        assert!(!is_deadlock(&server_error(1205)));
        assert!(!is_deadlock(&server_error(ER_DUP_ENTRY)));
        assert!(!is_deadlock(&StoreError::Conflict("taken".into())));
    }
}
