//! MySQL/MariaDB store over a `mysql_async` pool. Times are stored as UTC `DATETIME(6)` and
//! always come from the service's clock, never the database's `NOW()`, so that the memory and
//! MySQL stores agree on every comparison.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use mysql_async::prelude::{Query, Queryable, WithParams};
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row, params};

use super::{SessionStore, StoreError};
use crate::domain::{
    Device, Email, NewUser, Revocation, RevokeReason, Session, SessionId, User, UserId,
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
}

impl MySqlStore {
    /// Builds the pool; no connection is made until the first query.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        // `Pool::new` panics on a malformed URL; parse it ourselves so bad config is an error.
        let opts = Opts::from_url(url).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let constraints = PoolConstraints::new(0, max_connections.max(1))
            .ok_or_else(|| StoreError::Unavailable("invalid pool size".into()))?;
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(PoolOpts::default().with_constraints(constraints));
        let store = Self {
            pool: Pool::new(opts),
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

    async fn conn(&self) -> Result<mysql_async::Conn, StoreError> {
        self.pool.get_conn().await.map_err(unavailable)
    }
}

fn unavailable(err: mysql_async::Error) -> StoreError {
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
        format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) \
             VALUES (:id, :user_id, :created_at, :last_seen_at, :expires_at, :revoked_at, \
             :reason, :note, :user_agent, :ip)"
        )
        .with(params! {
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
        })
        .ignore(&mut conn)
        .await
        .map_err(|e| match e {
            mysql_async::Error::Server(ref server) if server.code == ER_DUP_ENTRY => {
                StoreError::Conflict(format!("session {} exists", s.id))
            }
            other => unavailable(other),
        })
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
            "UPDATE sessions SET last_seen_at = ? WHERE id = ? AND revoked_at IS NULL",
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
        let placeholders = vec!["?"; ids.len()].join(", ");
        let mut params: Vec<mysql_async::Value> = vec![
            to_db(revocation.at).into(),
            revocation.reason.as_str().into(),
            revocation.note.clone().into(),
        ];
        params.extend(ids.iter().map(|id| id.to_string().into()));
        let mut conn = self.conn().await?;
        conn.exec_drop(
            format!(
                "UPDATE sessions SET revoked_at = ?, revoke_reason = ?, revoke_note = ? \
                 WHERE revoked_at IS NULL AND id IN ({placeholders})"
            ),
            params,
        )
        .await
        .map_err(unavailable)
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
