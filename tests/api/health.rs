use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn the_root_says_healthy_as_the_original_did() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "healthy"}));
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;

    let response = app
        .client
        .get(app.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

async fn get(app: &crate::helpers::TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap()
}

#[tokio::test]
async fn alive_and_ready_on_a_single_node() {
    let app = spawn_app().await;
    let alive = get(&app, "/health/alive").await;
    assert_eq!(alive.status(), StatusCode::OK);
    assert_eq!(
        alive.json::<Value>().await.unwrap(),
        json!({"status": "alive"})
    );
    let ready = get(&app, "/health/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "database": "ok", "cluster": "standalone"})
    );
}

#[tokio::test]
async fn an_unreachable_database_makes_the_node_not_ready_within_the_timeout() {
    // The node reaches MariaDB through a relay the test can cut.
    let (app, relay) =
        crate::helpers::spawn_app_through_relay(|f| f.merge(("database.timeout", "500ms"))).await;
    assert_eq!(get(&app, "/health/ready").await.status(), StatusCode::OK);

    relay.cut();
    let started = std::time::Instant::now();
    let body = assert_error(
        get(&app, "/health/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "answered within the database timeout, not a hang"
    );
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    // The process is still alive: restarting it would not help.
    assert_eq!(get(&app, "/health/alive").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_schema_older_than_the_build_is_not_ready() {
    let app = spawn_app().await;
    app.db
        .execute(
            "DELETE FROM refinery_schema_history \
             WHERE version = (SELECT v FROM (SELECT MAX(version) AS v FROM refinery_schema_history) t)",
        )
        .await;
    let body = assert_error(
        get(&app, "/health/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("migrations"),
        "{body}"
    );
}

#[tokio::test]
async fn a_cluster_member_is_ready_while_it_holds_its_lease() {
    let cluster = crate::helpers::spawn_cluster(1).await;
    let ready = get(cluster.node(0), "/health/ready").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["cluster"], "member");
    // Without its bus the node loses its lease: not ready, and it says why.
    drop(cluster.nats);
    let not_ready = crate::helpers::eventually(|| async {
        let response = get(cluster.nodes.first().unwrap(), "/health/ready").await;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE)
            .then_some(response.json::<Value>().await.unwrap())
    })
    .await
    .expect("not ready once the lease is gone");
    assert!(
        not_ready["error"].as_str().unwrap().contains("lease"),
        "{not_ready}"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_every_log_line_of_the_request_names_it() {
    let app = spawn_app().await;
    let with = |id: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-request-id", id)
            .json(&json!({"email": "nobody-known@example.com", "password": "wrong-password-1"}))
            .send()
    };
    let echoed = with("trace-abc.123:4-5").await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc.123:4-5");
    // Not a sane token (a space, a quote): replaced by a fresh UUID.
    let replaced = with("evil\" id").await.unwrap();
    let new_id = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(new_id.parse::<uuid::Uuid>().is_ok(), "{new_id}");
    let none = get(&app, "/api/auth/me").await;
    let generated = none.headers()["x-request-id"].to_str().unwrap();
    assert!(generated.parse::<uuid::Uuid>().is_ok());
    assert_ne!(generated, new_id);

    let logs = crate::helpers::captured_logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("trace-abc.123:4-5"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authentication") && l.contains("refused")),
        "the handler's own line carries the id: {lines:?}"
    );
    let summary = lines
        .iter()
        .find(|l| l.contains("route=/api/auth/login"))
        .unwrap_or_else(|| panic!("one request line: {lines:?}"));
    for field in [
        "method=POST",
        "status=401",
        "latency_ms=",
        "client_ip=127.0.0.1",
    ] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    assert!(!logs.contains("wrong-password-1"));
}
