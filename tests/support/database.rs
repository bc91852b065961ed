//! A fresh, uniquely named MariaDB/MySQL database per test, with migrations applied, dropped
//! again when the test ends (passed or failed).
//!
//! The server is `FINSEC_TEST_DATABASE_URL` (default `mysql://root@127.0.0.1:3306`, the local
//! MariaDB that `scripts/test` starts). If it cannot be reached the test fails and says so:
//! tests that need MySQL never skip silently.

use mysql_async::prelude::Queryable;

pub const DEFAULT_SERVER_URL: &str = "mysql://root@127.0.0.1:3306";

pub fn server_url() -> String {
    std::env::var("FINSEC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

pub struct TestDatabase {
    pub name: String,
    /// URL of this test's database, for the service under test.
    pub url: String,
    server: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let name = format!("finsec_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_connection(&server).await;
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        conn.disconnect().await.ok();
        let url = format!("{}/{name}", server.trim_end_matches('/'));
        let store = finsec::store::MySqlStore::connect(&url, 2)
            .await
            .unwrap_or_else(|e| panic!("cannot open test database {name}: {e}"));
        store
            .migrate()
            .await
            .expect("migrations apply to a fresh database");
        finsec::store::SessionStore::close(&store).await.ok();
        Self { name, url, server }
    }

    /// The server's TCP port (to put a relay in front of it).
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("the test database's URL names a port")
    }

    /// This database's URL through a relay listening on `relay_port` instead of the server.
    /// prefer_socket=false: mysql_async would otherwise switch a loopback connection to the
    /// server's Unix socket, around the relay.
    pub fn url_through(&self, relay_port: u16) -> String {
        let port = self.port();
        self.url
            .replacen(&format!(":{port}/"), &format!(":{relay_port}/"), 1)
            + "?prefer_socket=false"
    }

    /// Runs one statement against this database (tests use it to break and mend the schema).
    pub async fn execute(&self, sql: &str) {
        let mut conn = admin_connection(&self.url).await;
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.disconnect().await.ok();
    }

    /// A connection of the test's own to this database (it ends when dropped).
    pub async fn connection(&self) -> mysql_async::Conn {
        admin_connection(&self.url).await
    }

    /// The first column of the first row of `sql`, as a string (NULL as None).
    pub async fn query_one(&self, sql: &str) -> Option<String> {
        let mut conn = admin_connection(&self.url).await;
        let value: Option<Option<String>> = conn
            .query_first(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        conn.disconnect().await.ok();
        value.flatten()
    }
}

async fn admin_connection(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(url)
        .unwrap_or_else(|e| panic!("FINSEC_TEST_DATABASE_URL {url:?} is not a MySQL URL: {e}"));
    mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!(
            "These tests need MariaDB/MySQL and none could be reached at {url}: {e}.\n\
             Run the suite with scripts/test (it starts the local MariaDB), or point \
             FINSEC_TEST_DATABASE_URL at a server where the user may create databases."
        )
    })
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime does the clean-up.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("clean-up runtime");
            runtime.block_on(async move {
                let mut conn = admin_connection(&server).await;
                // A test that failed mid-transaction may leave a connection holding locks
                // in the database (its runtime is gone, its socket not yet closed): DROP
                // would wait on them for a year. Wait briefly, end those connections, drop.
                conn.query_drop("SET SESSION lock_wait_timeout = 5").await?;
                let drop = format!("DROP DATABASE IF EXISTS `{name}`");
                if conn.query_drop(&drop).await.is_ok() {
                    return Ok(());
                }
                let holders: Vec<u64> = conn
                    .exec(
                        "SELECT id FROM information_schema.processlist \
                         WHERE db = ? AND id <> CONNECTION_ID()",
                        (name.as_str(),),
                    )
                    .await?;
                for id in holders {
                    let _ = conn.query_drop(format!("KILL {id}")).await;
                }
                conn.query_drop(&drop).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}
