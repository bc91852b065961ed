//! `GET /metrics`: Prometheus text, every name `finsec_…`, and the numbers move.

use reqwest::StatusCode;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The value of the sample `name{labels}` (labels as rendered, in order), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn validations_are_counted_by_the_path_that_answered_them() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let publication = r#"finsec_validations_total{answered_by="publication"}"#;
    let actor = r#"finsec_validations_total{answered_by="actor"}"#;
    let before = scrape(&app).await;
    for _ in 0..3 {
        assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
    }
    // A session that ended is not in the snapshot, which cannot vouch: the actor answers.
    let ended = app.logged_in(&user).await;
    assert_eq!(
        app.logout(&ended.token, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.me(&ended.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let after = scrape(&app).await;
    assert!(
        sample(&after, publication) >= sample(&before, publication) + 3.0,
        "{after}"
    );
    assert!(
        sample(&after, actor) >= sample(&before, actor) + 1.0,
        "{after}"
    );
}

#[tokio::test]
async fn metrics_are_exposed_and_move_after_a_login() {
    let app = spawn_app().await;
    let user = app.user().await;
    let logins = r#"finsec_logins_total{outcome="success"}"#;
    let requests =
        r#"finsec_http_requests_total{route="/api/auth/login",method="POST",status="200"}"#;
    // Metrics are per process and tests share one: compare before and after.
    let before = scrape(&app).await;
    app.logged_in(&user).await;
    app.logged_in(&user).await;
    let wrong = app
        .login(&serde_json::json!({"email": user.email, "password": "not-it-at-all-1"}))
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let after = scrape(&app).await;
    assert!(
        sample(&after, logins) >= sample(&before, logins) + 2.0,
        "{after}"
    );
    assert!(sample(&after, requests) >= sample(&before, requests) + 2.0);
    assert!(
        sample(
            &after,
            r#"finsec_logins_total{outcome="invalid_credentials"}"#
        ) >= 1.0
    );
    for name in [
        "finsec_http_request_duration_seconds_bucket",
        "finsec_store_call_duration_seconds_bucket",
        "finsec_password_hash_run_seconds_bucket",
        "finsec_actor_call_duration_seconds_bucket",
        "finsec_resident_actors",
        "finsec_heap_in_use_bytes",
        "finsec_cluster_trusted",
    ] {
        assert!(after.contains(name), "{name} missing");
    }
    // Every metric of ours is prefixed, and a path of no route is one label, not a new series.
    app.client
        .get(app.url("/no/such/path/12345"))
        .send()
        .await
        .unwrap();
    let last = scrape(&app).await;
    assert!(!last.contains("/no/such/path"));
    assert!(last.contains(r#"route="unmatched""#));
    for line in last
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("finsec_"), "{line}");
    }
}

#[tokio::test]
async fn ended_sessions_are_counted_by_reason_and_live_ones_by_the_sweep() {
    let app = spawn_app_with(|f| f.merge(("session.sweep_interval", "100ms"))).await;
    let user = app.user().await;
    let logouts = r#"finsec_sessions_ended_total{reason="logout"}"#;
    let all = r#"finsec_sessions_ended_total{reason="logout_all"}"#;
    let before = scrape(&app).await;
    let first = app.logged_in(&user).await;
    assert_eq!(
        app.logout(&first.token, None).await.status(),
        StatusCode::OK
    );
    let second = app.logged_in(&user).await;
    app.logged_in(&user).await;
    app.logged_in(&user).await;
    let ended = app
        .logout_all(&second.token, &serde_json::json!({"keepCurrent": true}))
        .await;
    assert_eq!(ended.status(), StatusCode::OK);
    let after = scrape(&app).await;
    assert!(
        sample(&after, logouts) >= sample(&before, logouts) + 1.0,
        "{after}"
    );
    assert!(sample(&after, all) >= sample(&before, all) + 2.0, "{after}");
    // The sweeper publishes the count of sessions not ended (a gauge; tests share one
    // process, so only its presence is asserted here; the store conformance counts).
    let swept = crate::helpers::eventually(|| async {
        scrape(&app)
            .await
            .contains("finsec_live_sessions ")
            .then_some(())
    })
    .await;
    assert!(swept.is_some(), "finsec_live_sessions never appeared");
}

/// The Grafana dashboard (deploy/grafana/finsec.json) charts only metrics the code records.
#[test]
fn the_dashboard_charts_only_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/finsec.json")).unwrap();
    let mut source = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut charted = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("finsec_") {
            let name = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                source.contains(&format!("\"finsec_{name}\"")),
                "the dashboard charts finsec_{name}, which nothing records"
            );
            charted += 1;
        }
    }
    assert!(charted >= 10, "{charted}");
}
