//! `examples/resource_server.rs` against the real service: a resource server that verifies
//! tokens with the JWKS and asks introspection whether their sessions live.

use std::process::Stdio;

use reqwest::StatusCode;
use tokio::io::AsyncBufReadExt;

use crate::helpers::{TestApp, spawn_app_with};
use finsec::auth::keys;
use finsec::config::SigningAlgorithm;

const CLIENT: &str = "accounts-service";
const SECRET: &str = "the-accounts-service-introspection-secret";

/// The example's binary, built (or found up to date) in this test's own target folder.
fn example_binary() -> std::path::PathBuf {
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "resource_server"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(
        built.success(),
        "examples/resource_server.rs does not build"
    );
    // target/<profile>/deps/api-… → target/<profile>/examples/resource_server
    let profile = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_owned();
    profile.join("examples").join("resource_server")
}

struct ResourceServer {
    child: tokio::process::Child,
    url: String,
}

async fn start_resource_server(app: &TestApp) -> ResourceServer {
    let mut child = tokio::process::Command::new(example_binary())
        .env("FINSEC_URL", &app.address)
        .env("RS_CLIENT_ID", CLIENT)
        .env("RS_CLIENT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the example starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the example says where it listens within 20 s")
        .unwrap()
        .expect("a line");
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();
    ResourceServer { child, url }
}

#[tokio::test]
async fn a_resource_server_takes_a_live_token_and_refuses_it_after_logout() {
    let dir =
        std::env::temp_dir().join(format!("finsec-rs-keys-{}", uuid::Uuid::new_v4().simple()));
    keys::generate(&dir, SigningAlgorithm::EdDSA, chrono::Utc::now()).unwrap();
    let app = spawn_app_with(|f| {
        f.merge(("jwt.algorithm", "EdDSA"))
            .merge(("jwt.keys_dir", dir.clone()))
            .merge(("introspection.clients", vec![format!("{CLIENT}:{SECRET}")]))
    })
    .await;
    let mut accounts = start_resource_server(&app).await;
    let john = app.user().await;
    let session = app.logged_in(&john).await;
    let ask = |token: String| {
        let (client, url) = (app.client.clone(), format!("{}/accounts", accounts.url));
        async move { client.get(url).bearer_auth(token).send().await.unwrap() }
    };

    let response = ask(session.token.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["owner"], john.id.get().to_string());

    // Logged out here: the signature still verifies, and the resource server refuses it on
    // its very next request all the same.
    assert_eq!(
        app.logout(&session.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        ask(session.token.clone()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // And a token of no key it was shown.
    assert_eq!(
        ask("e30.e30.e30".into()).await.status(),
        StatusCode::UNAUTHORIZED
    );

    accounts.child.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
