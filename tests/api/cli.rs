//! `finsec sessions list|revoke-all` on one node without a bus: reads from the database;
//! revocations on the database while no service runs, through the running service's admin
//! API while one holds the database, and never behind its back. (With a bus: tests/api/cluster.)

use std::process::Output;

use reqwest::StatusCode;

use crate::helpers::{ADMIN_KEY, ENCRYPTION_KEY, JWT_SECRET, TestApp, spawn_app, spawn_app_with};

async fn finsec(app: &TestApp, admin_key: Option<&str>, args: &[&str]) -> Output {
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"));
    command
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(args)
        .env("FINSEC__DATABASE__URL", &app.db.url)
        .env("FINSEC__JWT__SECRET", JWT_SECRET)
        .env("FINSEC__SECURITY__ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("FINSEC__HTTP__PORT", port)
        .env("FINSEC__PASSWORD__LOG_N", "4")
        .env("FINSEC__ADMIN__API_KEY", admin_key.unwrap_or(""));
    command.output().await.expect("finsec runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn revoke_all_goes_through_the_running_service_and_bites_at_once() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;

    let listed = finsec(
        &app,
        Some(ADMIN_KEY),
        &["sessions", "list", "--user", &john.email],
    )
    .await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let out = stdout(&listed);
    assert!(
        out.contains("2 live session(s)") && out.contains("in the database"),
        "{out}"
    );
    assert!(
        out.contains(&phone.session_id) && out.contains(&laptop.session_id),
        "{out}"
    );

    let revoked = finsec(
        &app,
        Some(ADMIN_KEY),
        &[
            "sessions",
            "revoke-all",
            "--user",
            &john.email,
            "--reason",
            "cli says so",
        ],
    )
    .await;
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(
        stdout(&revoked).contains("revoked 2 session(s)")
            && stdout(&revoked).contains("through the running service"),
        "{}",
        stdout(&revoked)
    );

    for device in [&phone, &laptop] {
        app.assert_ended(device, "admin").await;
    }
}

#[tokio::test]
async fn with_the_service_stopped_it_acts_on_the_database() {
    let mut app = spawn_app().await;
    let john = app.user().await;
    let phone = app.logged_in(&john).await;
    let laptop = app.logged_in(&john).await;
    app.stop().await;
    // Nothing listens on the discard port: the command must find no service there (and
    // cannot meet another test's server that happened to take this app's old port).
    let nobody = "http://127.0.0.1:9";

    let listed = finsec(
        &app,
        None,
        &["sessions", "list", "--user", &john.email, "--url", nobody],
    )
    .await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stdout(&listed).contains("2 live session(s)")
            && stdout(&listed).contains("in the database")
    );

    let revoked = finsec(
        &app,
        None,
        &[
            "sessions",
            "revoke-all",
            "--user",
            &john.email,
            "--url",
            nobody,
        ],
    )
    .await;
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(
        stdout(&revoked).contains("revoked 2 session(s)")
            && stdout(&revoked).contains("in the database")
    );

    app.restart().await;
    for device in [&phone, &laptop] {
        assert_eq!(
            app.me(&device.token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn it_refuses_to_write_behind_a_running_service_it_cannot_reach_as_admin() {
    let app = spawn_app().await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;

    let revoked = finsec(
        &app,
        None,
        &["sessions", "revoke-all", "--user", &john.email],
    )
    .await;
    assert!(!revoked.status.success());
    assert!(
        stderr(&revoked).contains("admin.api_key"),
        "{}",
        stderr(&revoked)
    );
    assert_eq!(
        app.me(&session.token).await.status(),
        StatusCode::OK,
        "nothing was revoked"
    );

    let unknown = finsec(
        &app,
        None,
        &["sessions", "list", "--user", "nobody@example.com"],
    )
    .await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no user with email"),
        "{}",
        stderr(&unknown)
    );
}

#[tokio::test]
async fn with_the_embedded_store_it_says_it_cannot_reach_it() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["sessions", "revoke-all", "--user", "john.doe@example.com"])
        .env("FINSEC__DATABASE__URL", "memory")
        .output()
        .await
        .expect("finsec runs");
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("\"memory\"") && err.contains("admin API"),
        "{err}"
    );
}

#[tokio::test]
async fn an_overlong_reason_is_refused_before_anything_happens() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let reason = "x".repeat(256);
    let output = finsec(
        &app,
        Some(ADMIN_KEY),
        &[
            "sessions",
            "revoke-all",
            "--user",
            &john.email,
            "--reason",
            &reason,
        ],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("at most 255"),
        "{}",
        stderr(&output)
    );
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn seed_refuses_production_unless_told_the_demo_accounts_are_public() {
    let app = spawn_app().await;
    let seed = |extra: &'static [&'static str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"));
        command
            .arg("--config-dir")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .arg("seed")
            .args(extra)
            .env("FINSEC_ENV", "production")
            .env("FINSEC__DATABASE__URL", &app.db.url)
            .env("FINSEC__JWT__SECRET", JWT_SECRET)
            .env("FINSEC__SECURITY__ENCRYPTION_KEY", ENCRYPTION_KEY)
            // The lowest cost production accepts, to keep the seven hashes quick.
            .env("FINSEC__PASSWORD__LOG_N", "15");
        command
    };
    let demo_users = "SELECT COUNT(*) FROM users WHERE email = 'john.doe@example.com'";

    let refused = seed(&[]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--i-know-demo"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(app.db.query_one(demo_users).await.as_deref(), Some("0"));

    let told = seed(&["--i-know-demo"]).output().await.unwrap();
    assert!(told.status.success(), "{}", stderr(&told));
    assert_eq!(app.db.query_one(demo_users).await.as_deref(), Some("1"));
}

#[tokio::test]
async fn config_check_prints_every_effective_value_with_secrets_masked() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["config", "check"])
        .env(
            "FINSEC__DATABASE__URL",
            "mysql://root:db-pass-7@db:3306/finsec",
        )
        .env("FINSEC__JWT__SECRET", JWT_SECRET)
        .env("FINSEC__SECURITY__ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("FINSEC__HTTP__PORT", "8088")
        .output()
        .await
        .expect("finsec runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("http.port = 8088"), "{out}");
    assert!(out.contains("database.url = \"<set>\""), "{out}");
    assert!(out.contains("session.idle_timeout = \"15m\""), "{out}");
    for secret in ["db-pass-7", JWT_SECRET, ENCRYPTION_KEY] {
        assert!(!out.contains(secret), "a secret is printed: {out}");
    }

    let typo = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["config", "check"])
        .env("FINSEC__HTTP__PROT", "8088")
        .output()
        .await
        .expect("finsec runs");
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("http.prot"), "{}", stderr(&typo));
}
