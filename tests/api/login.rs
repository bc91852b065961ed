use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{UserSpec, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_user_without_mfa_logs_in_and_gets_a_working_token() {
    let app = spawn_app().await;
    let john = app.user().await;

    let response = app.login(&john.credentials()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();

    assert_eq!(body["message"], "Login successful");
    let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["access_token", "message", "session_id", "user"]);
    let user = body["user"].as_object().unwrap();
    let mut user_keys: Vec<_> = user.keys().cloned().collect();
    user_keys.sort();
    assert_eq!(
        user_keys,
        [
            "created_at",
            "email",
            "first_name",
            "id",
            "is_active",
            "last_name",
            "mfa_enabled",
            "phone_number"
        ]
    );
    assert_eq!(user["id"], john.id.get());
    assert_eq!(user["email"], john.email);
    assert_eq!(user["mfa_enabled"], false);
    assert!(uuid::Uuid::parse_str(body["session_id"].as_str().unwrap()).is_ok());

    let token = body["access_token"].as_str().unwrap();
    let me = app.me(token).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user"]["email"], john.email);
    assert_eq!(me["session"]["id"], body["session_id"]);
}

#[tokio::test]
async fn the_email_is_matched_case_insensitively() {
    let app = spawn_app().await;
    let user = app.user().await;
    let response = app
        .login(&json!({"email": user.email.to_uppercase(), "password": user.password}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_are_indistinguishable() {
    let app = spawn_app().await;
    let user = app.user().await;

    let wrong_password = app
        .login(&json!({"email": user.email, "password": "not-the-password"}))
        .await;
    let unknown_email = app
        .login(&json!({"email": "nobody@example.com", "password": "not-the-password"}))
        .await;

    let a = assert_error(
        wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let b = assert_error(
        unknown_email,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(a, b);
    assert_eq!(
        a,
        json!({"error": "Invalid credentials", "code": "invalid_credentials"})
    );
}

#[tokio::test]
async fn an_inactive_account_is_refused_only_after_the_right_password() {
    let app = spawn_app().await;
    let user = app
        .create_user(UserSpec {
            inactive: true,
            ..UserSpec::default()
        })
        .await;

    let response = app.login(&user.credentials()).await;
    let body = assert_error(response, StatusCode::FORBIDDEN, "account_inactive").await;
    assert_eq!(body["error"], "Account is inactive");

    // A wrong password does not reveal that the account exists but is inactive.
    let response = app
        .login(&json!({"email": user.email, "password": "wrong"}))
        .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

#[tokio::test]
async fn an_mfa_user_gets_a_challenge_and_no_token() {
    let app = spawn_app().await;
    let jane = app.mfa_user().await;

    let response = app.login(&jane.credentials()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message"], "MFA verification required");
    assert_eq!(body["userId"], jane.id.get());
    assert_eq!(body["requireMfa"], true);
    assert!(body["mfaToken"].as_str().is_some_and(|t| t.len() >= 32));
    assert!(body.get("access_token").is_none());
    assert!(body.get("session_id").is_none());
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_json_error() {
    let app = spawn_app().await;
    let cases: Vec<(&str, String)> = vec![
        ("not json", "{\"email\": ".into()),
        ("an array", "[1, 2]".into()),
        ("a string", "\"hello\"".into()),
        ("null", "null".into()),
        ("empty", String::new()),
        ("no email", r#"{"password": "x"}"#.into()),
        ("no password", r#"{"email": "a@example.com"}"#.into()),
        ("empty email", r#"{"email": "", "password": "x"}"#.into()),
        (
            "empty password",
            r#"{"email": "a@example.com", "password": ""}"#.into(),
        ),
        (
            "numeric password",
            r#"{"email": "a@example.com", "password": 12345}"#.into(),
        ),
        (
            "email not a string",
            r#"{"email": ["a@example.com"], "password": "x"}"#.into(),
        ),
        (
            "not an email",
            r#"{"email": "john", "password": "x"}"#.into(),
        ),
        ("null email", r#"{"email": null, "password": "x"}"#.into()),
    ];
    for (case, body) in cases {
        let response = app.post_raw("/api/auth/login", body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{case}: {body}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let app = spawn_app_with(|f| f.merge(("http.body_limit", 1024))).await;
    let big = json!({"email": "a@example.com", "password": "x".repeat(2048)});
    let response = app.login(&big).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // Streamed without a content-length, the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn login_works_at_the_production_scrypt_cost() {
    let app = spawn_app_with(|f| f.merge(("password.log_n", 15))).await;
    let user = app.user().await;
    let response = app.login(&user.credentials()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let hash = app
        .db
        .query_one(&format!(
            "SELECT password_hash FROM users WHERE id = {}",
            user.id
        ))
        .await
        .unwrap();
    assert!(hash.starts_with("$scrypt$ln=15,r=8,p=1$"), "{hash}");
}

#[tokio::test]
async fn concurrent_first_requests_for_one_user_share_one_actor() {
    let app = spawn_app().await;
    let user = app.user().await;
    let credentials = user.credentials();
    let logins = (0..8).map(|_| app.login(&credentials));
    for response in futures_util::future::join_all(logins).await {
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.resident_actors().await, 1);
    let live = app
        .db
        .query_one(&format!(
            "SELECT COUNT(*) FROM sessions WHERE user_id = {}",
            user.id
        ))
        .await;
    assert_eq!(live.as_deref(), Some("8"));
}

/// Hashing that costs real time, with room for two hashes and four waiting.
fn scarce_hashing(f: figment::Figment) -> figment::Figment {
    f.merge(("password.log_n", 17))
        .merge(("password.max_concurrent_hashes", 2))
        .merge(("password.max_queued_hashes", 4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_that_hang_up_cannot_run_more_hashes_than_the_limit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    let app = spawn_app_with(scarce_hashing).await;
    let john = app.user().await;
    let hasher = app.state.sessions.hasher().clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (hasher, peak, sampling) = (hasher.clone(), peak.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(hasher.running(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    });

    // 200 logins whose clients hang up while their password is being checked: 20 rounds of
    // 10 raw connections, each closed as soon as a hash is running.
    let addr = app.address.trim_start_matches("http://").to_owned();
    let body = john.credentials().to_string();
    let request = format!(
        "POST /api/auth/login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..20 {
        let mut connections = Vec::new();
        for _ in 0..10 {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                .await
                .unwrap();
            connections.push(stream);
        }
        for _ in 0..400 {
            if hasher.running() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(connections);
    }
    for _ in 0..200 {
        if hasher.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak >= 1, "the logins did reach the hasher");
    assert!(peak <= 2, "{peak} hashes ran at once; the limit is 2");
    assert_eq!(hasher.running(), 0);
    // And the service is fine afterwards.
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_flood_of_logins_is_told_to_come_back_later() {
    let app = spawn_app_with(scarce_hashing).await;
    let john = app.user().await;
    let credentials = john.credentials();
    let logins = (0..30).map(|_| app.login(&credentials));
    let responses = futures_util::future::join_all(logins).await;
    let mut ok = 0;
    let mut busy = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
}

#[tokio::test]
async fn a_client_sending_too_fast_is_told_to_slow_down() {
    let app = spawn_app_with(|f| {
        f.merge(("security.ip_rate", 1))
            .merge(("security.ip_burst", 3))
    })
    .await;
    let guess = json!({"email": "nobody@example.com", "password": "not-it-at-all-1"});
    for _ in 0..3 {
        assert_eq!(app.login(&guess).await.status(), StatusCode::UNAUTHORIZED);
    }
    let fourth = app.login(&guess).await;
    assert!(fourth.headers().contains_key("retry-after"));
    assert_error(fourth, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = spawn_app_with(|f| {
        f.merge(("security.ip_rate", 1))
            .merge(("security.ip_burst", 1))
            .merge(("http.trusted_proxies", vec!["127.0.0.1"]))
    })
    .await;
    let guess = json!({"email": "nobody@example.com", "password": "not-it-at-all-1"});
    let from = |client: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&guess)
            .send()
    };
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("198.51.100.2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_hash_made_at_a_lower_cost_is_redone_at_the_next_login() {
    use finsec::auth::PasswordHasher;
    use finsec::config::PasswordSettings;

    let app = spawn_app_with(|f| f.merge(("password.log_n", 5))).await;
    let john = app.user().await;
    // As if stored before the cost was raised: a hash at log_n 4.
    let cheaper = PasswordHasher::new(&PasswordSettings {
        log_n: 4,
        r: 8,
        p: 1,
        max_concurrent_hashes: 1,
        max_queued_hashes: 1,
        min_length: 12,
    })
    .await
    .unwrap();
    let old = cheaper.hash(john.password.clone().into()).await.unwrap();
    app.db
        .execute(&format!(
            "UPDATE users SET password_hash = '{old}' WHERE id = {}",
            john.id
        ))
        .await;

    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
    let sql = format!("SELECT password_hash FROM users WHERE id = {}", john.id);
    let rehashed = crate::helpers::eventually(|| async {
        app.db
            .query_one(&sql)
            .await
            .filter(|hash| hash.starts_with("$scrypt$ln=5,"))
    })
    .await;
    assert!(
        rehashed.is_some(),
        "the stored hash now has the configured cost"
    );
    assert_eq!(
        app.login(&john.credentials()).await.status(),
        StatusCode::OK
    );
}
