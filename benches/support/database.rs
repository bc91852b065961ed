//! One way for every bench to get its MySQL database: a fresh one per run on the server
//! `FINSEC_BENCH_SERVER_URL` (default `mysql://root@127.0.0.1:3306`), migrated, users
//! inserted in bulk, and dropped at the end. Each bench includes only what it uses.
#![allow(dead_code)]

use std::ops::Range;

use finsec::store::{MySqlStore, SessionStore};
use mysql_async::prelude::Queryable;

/// The bench's own database, dropped by [`BenchDatabase::drop`].
pub struct BenchDatabase {
    server: String,
    pub name: String,
    /// `mysql://…/name`, for the service's `database.url`.
    pub url: String,
}

impl BenchDatabase {
    /// A fresh, migrated database named `finsec_bench_<random>`.
    pub async fn create() -> Self {
        let server = std::env::var("FINSEC_BENCH_SERVER_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let name = format!(
            "finsec_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        admin(&server, &format!("CREATE DATABASE `{name}`")).await;
        let url = format!("{}/{name}", server.trim_end_matches('/'));
        let store = MySqlStore::connect(&url, 2).await.expect("bench database");
        store.migrate().await.expect("migrations");
        store.close().await.ok();
        Self { server, name, url }
    }

    /// A connection of the bench's own (not the service's pool).
    pub async fn connect(&self) -> mysql_async::Conn {
        mysql_async::Conn::from_url(self.url.as_str())
            .await
            .expect("the bench database answers")
    }

    /// Users `{prefix}-{i}@example.com` for every `i` in `range`, with ids `id_base + i + 1`,
    /// all with the password hash `hash`: one multi-row `INSERT` per thousand.
    pub async fn insert_users(&self, prefix: &str, range: Range<usize>, id_base: u64, hash: &str) {
        let mut db = self.connect().await;
        let at = chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string();
        for chunk in range.collect::<Vec<_>>().chunks(1000) {
            let rows: Vec<String> = chunk
                .iter()
                .map(|i| {
                    format!(
                        "({id}, '{prefix}-{i}@example.com', '{hash}', 'Bench', 'User {i}', \
                         '{at}', '{at}')",
                        id = id_base + *i as u64 + 1
                    )
                })
                .collect();
            db.query_drop(format!(
                "INSERT INTO users (id, email, password_hash, first_name, last_name, \
                 created_at, updated_at) VALUES {}",
                rows.join(",")
            ))
            .await
            .expect("bench users");
        }
        db.disconnect().await.ok();
    }

    pub async fn drop(self) {
        admin(&self.server, &format!("DROP DATABASE `{}`", self.name)).await;
    }

    /// MariaDB's global counters that say what the service asks of it: connections opened,
    /// statements prepared, statements run, transactions committed. Global, so the server
    /// must be otherwise idle while a bench compares two readings.
    pub async fn counters(&self) -> Counters {
        let mut db = mysql_async::Conn::from_url(self.server.as_str())
            .await
            .expect("the bench's MySQL server answers");
        let rows: Vec<(String, String)> = db
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('Connections', 'Com_stmt_prepare', 'Questions', 'Com_commit')",
            )
            .await
            .expect("SHOW GLOBAL STATUS");
        db.disconnect().await.ok();
        let get = |name: &str| {
            rows.iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        Counters {
            connections: get("Connections"),
            prepares: get("Com_stmt_prepare"),
            questions: get("Questions"),
            commits: get("Com_commit"),
        }
    }
}

/// A reading of MariaDB's global counters ([`BenchDatabase::counters`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub connections: u64,
    pub prepares: u64,
    pub questions: u64,
    pub commits: u64,
}

impl Counters {
    /// What happened between `before` and `self`, less the reading's own connection and
    /// statement (one each).
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            connections: (self.connections - before.connections).saturating_sub(1),
            prepares: self.prepares - before.prepares,
            questions: (self.questions - before.questions).saturating_sub(1),
            commits: self.commits - before.commits,
        }
    }
}

/// The local MariaDB server's process, when it runs on this machine (for its CPU time).
pub fn server_pid() -> Option<u32> {
    ["mariadbd", "mysqld"].iter().find_map(|name| {
        let out = std::process::Command::new("pidof")
            .arg(name)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

pub async fn admin(server: &str, sql: &str) {
    let mut conn = mysql_async::Conn::from_url(server)
        .await
        .expect("the bench's MySQL server answers (FINSEC_BENCH_SERVER_URL)");
    conn.query_drop(sql).await.expect(sql);
    conn.disconnect().await.ok();
}
