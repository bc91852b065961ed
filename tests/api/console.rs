//! The console's gateway over plain HTTP: where its credentials live (HttpOnly cookies, never
//! a body), which requests it refuses (cross-site, forged, unknown paths), and that its
//! cookies count nowhere but on its own routes. The browser tests (`browser.rs`) drive the
//! pages themselves.

use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, TestApp, TestUser, assert_error, spawn_app, spawn_app_with, spawn_cluster_with,
};

const CONSOLE: (&str, &str) = ("x-finsec-console", "1");

/// A console call as the pages make it (the console header, the cookies given).
fn console(app: &TestApp, method: Method, path: &str, cookies: &str) -> reqwest::RequestBuilder {
    let request = app
        .client
        .request(method, app.url(&format!("/console/api/{path}")))
        .header(CONSOLE.0, CONSOLE.1);
    if cookies.is_empty() {
        request
    } else {
        request.header("cookie", cookies)
    }
}

/// Whether an HTML text has an inline event handler attribute (` onclick=`, ` onload=`, …).
fn has_handler(html: &str) -> bool {
    html.split(" on").skip(1).any(|rest| {
        let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        !name.is_empty() && rest[name.len()..].starts_with('=')
    })
}

/// A console login of `user`, answered.
async fn sign_in(app: &TestApp, user: &TestUser) -> reqwest::Response {
    console(app, Method::POST, "auth/login", "")
        .json(&user.credentials())
        .send()
        .await
        .unwrap()
}

/// `user`'s console session, as the cookie a browser sends back.
async fn session_cookie(app: &TestApp, user: &TestUser) -> String {
    let login = sign_in(app, user).await;
    cookie_pair(&set_cookie(login.headers(), "finsec_session").expect("a session cookie"))
}

/// `GET auth/me` through the console with these cookies, as the pages ask it.
async fn console_me(app: &TestApp, cookies: &str) -> reqwest::Response {
    console(app, Method::GET, "auth/me", cookies)
        .send()
        .await
        .unwrap()
}

/// The `Set-Cookie` header for `name`, if any.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// `name=value` from a `Set-Cookie`, as a browser sends it back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_console_sign_in_keeps_the_token_in_an_http_only_cookie() {
    let app = spawn_app().await;
    let user = app.user().await;
    let response = console(&app, Method::POST, "auth/login", "")
        .json(&user.credentials())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(response.headers(), "finsec_session").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console/api/auth"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP in tests: {cookie}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("access_token").is_none(),
        "no token in the body: {body}"
    );
    assert_eq!(body["user"]["email"], user.email.as_str());

    let session = cookie_pair(&cookie);
    let me = console_me(&app, &session).await;
    assert_eq!(me.status(), StatusCode::OK);

    // The cookie is the console's only: the bearer API does not take it.
    let api = app
        .client
        .get(app.url("/api/auth/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_error(api, StatusCode::UNAUTHORIZED, "missing_token").await;

    // And the console does not take a bearer token: only its cookie counts there.
    let token = app.logged_in(&user).await.token;
    let bearer = console(&app, Method::GET, "auth/me", "")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_error(bearer, StatusCode::UNAUTHORIZED, "missing_token").await;

    // Logging out through the console ends the session and drops the cookie.
    let logout = console(&app, Method::POST, "auth/logout", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::OK);
    let cleared = set_cookie(logout.headers(), "finsec_session").expect("cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let after = console_me(&app, &session).await;
    let cleared = set_cookie(after.headers(), "finsec_session").expect("cleared on 401");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_error(after, StatusCode::UNAUTHORIZED, "session_ended").await;
}

#[tokio::test]
async fn forged_and_cross_site_console_calls_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = session_cookie(&app, &user).await;

    // A form on another site cannot add the console's header.
    let no_header = app
        .client
        .post(app.url("/console/api/auth/logout-all"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_error(no_header, StatusCode::FORBIDDEN, "csrf_rejected").await;
    // The browser says the call came from another site.
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
    ] {
        let forged = console(&app, Method::POST, "auth/logout-all", &session)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_error(forged, StatusCode::FORBIDDEN, "csrf_rejected").await;
    }
    // None of them ended the session.
    let me = console_me(&app, &session).await;
    assert_eq!(me.status(), StatusCode::OK);
    // The pages' own calls pass.
    let origin = app.address.clone();
    let own = console(&app, Method::POST, "auth/logout-all", &session)
        .header("sec-fetch-site", "same-origin")
        .header("origin", origin)
        .json(&json!({"keepCurrent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);

    // Reads must be the console's too (a sibling subdomain's <img> carries SameSite cookies).
    let image = app
        .client
        .get(app.url("/console/api/auth/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_error(image, StatusCode::FORBIDDEN, "csrf_rejected").await;

    // Without an admin key there is nothing to trade for a pass.
    let no_key = console(&app, Method::POST, "admin/session", "")
        .json(&json!({"key": "anything"}))
        .send()
        .await
        .unwrap();
    assert_error(no_key, StatusCode::NOT_FOUND, "not_found").await;

    // The gateway reaches the account and admin API only.
    for path in ["health/ready", "metrics", "openapi.json"] {
        let response = console(&app, Method::GET, path, &session)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn the_mfa_challenge_waits_in_its_own_cookie() {
    // Production's setting: verify-mfa must name its challenge, so the cookie must supply it.
    let app = spawn_app_with(|f| f.merge(("auth.require_mfa_token", true))).await;
    let user = app.mfa_user().await;
    let login = sign_in(&app, &user).await;
    let challenge = set_cookie(login.headers(), "finsec_mfa").expect("a challenge cookie");
    assert!(
        challenge.contains("HttpOnly") && challenge.contains("Path=/console/api/auth/verify-mfa")
    );
    assert!(set_cookie(login.headers(), "finsec_session").is_none());
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["requireMfa"], true);
    assert!(body.get("mfaToken").is_none(), "{body}");

    // Without the cookie the code answers no challenge.
    let bare = console(&app, Method::POST, "auth/verify-mfa", "")
        .json(&json!({"userId": user.id, "otpCode": user.totp_code(0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);

    let verified = console(
        &app,
        Method::POST,
        "auth/verify-mfa",
        &cookie_pair(&challenge),
    )
    .json(&json!({"userId": user.id, "otpCode": user.totp_code(0)}))
    .send()
    .await
    .unwrap();
    assert_eq!(verified.status(), StatusCode::OK);
    let session = set_cookie(verified.headers(), "finsec_session").expect("a session cookie");
    let spent = set_cookie(verified.headers(), "finsec_mfa").expect("challenge cleared");
    assert!(spent.contains("Max-Age=0"), "{spent}");
    let body: Value = verified.json().await.unwrap();
    assert!(body.get("access_token").is_none(), "{body}");
    let me = console_me(&app, &cookie_pair(&session)).await;
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_admin_key_buys_a_short_lived_pass_that_only_the_console_takes() {
    let app = spawn_app_with(|f| {
        f.merge(("admin.api_key", ADMIN_KEY))
            .merge(("console.operator_ttl", "10m"))
    })
    .await;
    let user = app.user().await;
    let find = format!("admin/users?email={}", user.email);

    let none = console(&app, Method::GET, &find, "").send().await.unwrap();
    assert_error(none, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    // The key itself is no credential on the console: only a pass is.
    let key = console(&app, Method::GET, &find, "")
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_error(key, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    let wrong = console(&app, Method::POST, "admin/session", "")
        .json(&json!({"key": format!("{ADMIN_KEY}x")}))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(wrong.headers(), "finsec_operator").is_none());
    assert_error(wrong, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;

    let signed_in = console(&app, Method::POST, "admin/session", "")
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    let pass = set_cookie(signed_in.headers(), "finsec_operator").expect("a pass");
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console/api/admin",
        "Max-Age=600",
    ] {
        assert!(pass.contains(attribute), "{pass}");
    }
    assert!(!pass.contains(ADMIN_KEY), "the pass is not the key");
    let body = signed_in.text().await.unwrap();
    assert!(!body.contains(ADMIN_KEY), "{body}");
    let pass = cookie_pair(&pass);

    let found = console(&app, Method::GET, &find, &pass)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["user"]["id"], user.id.get());
    let status = console(&app, Method::GET, "admin/session", &pass)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);

    // The admin API itself wants the key: a pass is no key there.
    let api = app
        .client
        .get(app.url(&format!("/api/{find}")))
        .header("cookie", &pass)
        .send()
        .await
        .unwrap();
    assert_error(api, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    // A pass altered by hand is no pass.
    let (value, _) = pass.rsplit_once('.').unwrap();
    let forged = format!("{value}.{}", "0".repeat(64));
    let refused = console(&app, Method::GET, &find, &forged)
        .send()
        .await
        .unwrap();
    assert!(
        set_cookie(refused.headers(), "finsec_operator").is_some_and(|c| c.contains("Max-Age=0"))
    );
    assert_error(refused, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;
    // A user's session cookie is not a pass either (nor sent there by a browser: its Path).
    let session = session_cookie(&app, &user).await;
    let as_user = console(&app, Method::GET, &find, &session)
        .send()
        .await
        .unwrap();
    assert_error(as_user, StatusCode::UNAUTHORIZED, "invalid_admin_key").await;

    let signed_out = console(&app, Method::DELETE, "admin/session", &pass)
        .send()
        .await
        .unwrap();
    let cleared = set_cookie(signed_out.headers(), "finsec_operator").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test]
async fn console_pages_allow_no_inline_script_no_framing_and_no_other_origin() {
    let app = spawn_app().await;
    // Pages, files, and errors on console paths alike.
    for (page, status) in [
        ("/account/", StatusCode::OK),
        ("/admin/", StatusCode::OK),
        ("/account", StatusCode::OK),
        ("/console/assets/account.js", StatusCode::OK),
        ("/console/assets/secrets.toml", StatusCode::NOT_FOUND),
        ("/account/nothing-here", StatusCode::NOT_FOUND),
    ] {
        let response = app.client.get(app.url(page)).send().await.unwrap();
        assert_eq!(response.status(), status, "{page}");
        let headers = response.headers().clone();
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
            "img-src 'self' data:",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{page}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(headers["x-frame-options"], "DENY");
        let body = response.text().await.unwrap();
        if page.ends_with('/') {
            // Every script is a file of this origin; no handler attributes, nothing from a CDN.
            let scripts: Vec<&str> = body.split("<script").skip(1).collect();
            assert_eq!(scripts.len(), 1, "{page}: one module");
            for script in scripts {
                let tag = script.split('>').next().unwrap();
                assert!(
                    tag.contains(" src=\"/console/assets/") && script.contains("></script>"),
                    "{page}: a script with a body or from elsewhere: {tag}"
                );
            }
            assert!(!has_handler(&body), "{page}: an inline handler");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{page}"
            );
        }
    }
    let css = app
        .client
        .get(app.url("/console/assets/console.css"))
        .send()
        .await
        .unwrap();
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    // Pages answer HEAD like GET, and a 405 says what they do take.
    let head = app.client.head(app.url("/account/")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    for (path, allowed) in [
        ("/account/", "GET, HEAD"),
        ("/console/assets/api.js", "GET, HEAD"),
        ("/console/api/auth/me", "GET"),
    ] {
        let put = app.client.put(app.url(path)).header(CONSOLE.0, CONSOLE.1);
        let response = put.send().await.unwrap();
        assert_eq!(response.headers()["allow"], allowed, "{path}");
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    let unknown = app
        .client
        .get(app.url("/console/assets/secrets.toml"))
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_console_turned_off_is_not_there() {
    let app = spawn_app_with(|f| f.merge(("console.enabled", false))).await;
    let user = app.user().await;
    for path in ["/account/", "/admin/", "/console/assets/api.js"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let login = sign_in(&app, &user).await;
    assert_error(login, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn secure_cookies_are_host_prefixed_and_only_the_prefixed_name_counts() {
    let app = spawn_app_with(|f| f.merge(("console.secure_cookies", true))).await;
    let user = app.user().await;
    let login = sign_in(&app, &user).await;
    let cookie = set_cookie(login.headers(), "__Host-finsec_session").expect("prefixed");
    assert!(
        cookie.ends_with("; Secure") && cookie.contains("; Path=/;"),
        "{cookie}"
    );
    let pair = cookie_pair(&cookie);
    let me = console_me(&app, &pair).await;
    assert_eq!(me.status(), StatusCode::OK);
    // The same token under the plain name (planted over HTTP, say) is not the console's.
    let planted = pair.replacen("__Host-", "", 1);
    let me = console_me(&app, &planted).await;
    assert_error(me, StatusCode::UNAUTHORIZED, "missing_token").await;
}

#[tokio::test]
async fn the_gateway_takes_each_path_in_one_spelling_only() {
    let app = spawn_app_with(|f| {
        f.merge(("admin.api_key", ADMIN_KEY))
            .merge(("introspection.clients", vec![format!("rs:{ADMIN_KEY}")]))
    })
    .await;
    let user = app.user().await;
    // warp routes `login/` to the login: through the console it would skip the cookie and
    // hand the page its token.
    for path in [
        "auth/login/",
        "auth//login",
        "auth/verify-mfa/",
        "auth/introspect",
        "auth/introspect/",
        "auth/%6cogin",
    ] {
        let response = console(&app, Method::POST, path, "")
            .json(&user.credentials())
            .send()
            .await
            .unwrap();
        assert!(
            set_cookie(response.headers(), "finsec_session").is_none(),
            "{path}"
        );
        let body = assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
        assert!(body.get("access_token").is_none(), "{path}");
    }

    // Dot segments, sent as they are (an HTTP client library would resolve them first), with
    // a customer's session: they must not walk into the admin API.
    let session = session_cookie(&app, &user).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    for path in [
        format!("/console/api/auth/../admin/users/{}/sessions", user.id),
        "/console/api/auth/./sessions".to_owned(),
    ] {
        let head = raw_get(&host, &path, &session).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
    }
}

/// A GET sent byte for byte (no client library normalises its path); the response's head.
async fn raw_get(host: &str, path: &str, cookie: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-FinSec-Console: 1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_planted_twin_cookie_is_no_credential_and_clears_nothing() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = session_cookie(&app, &user).await;
    let twins = format!("finsec_session=planted; {session}");
    let response = console_me(&app, &twins).await;
    assert!(
        set_cookie(response.headers(), "finsec_session").is_none(),
        "a cookie not read is not cleared"
    );
    assert_error(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    let alone = console_me(&app, &session).await;
    assert_eq!(alone.status(), StatusCode::OK, "the real one still works");
}

#[tokio::test]
async fn guesses_at_the_admin_key_through_the_console_are_rate_limited() {
    let app = spawn_app_with(|f| {
        f.merge(("admin.api_key", ADMIN_KEY))
            .merge(("security.ip_rate", 1))
            .merge(("security.ip_burst", 3))
    })
    .await;
    let mut statuses = Vec::new();
    for guess in 0..6 {
        let response = console(&app, Method::POST, "admin/session", "")
            .json(&json!({"key": format!("guess-{guess}")}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_console_behind_a_load_balancer_acts_as_one() {
    let cluster = spawn_cluster_with(2, |f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let (first, second) = (cluster.node(0), cluster.node(1));
    let john = first.user().await;
    // Signed in on one instance, the cookie works on the other.
    let session = session_cookie(first, &john).await;
    let me = console_me(second, &session).await;
    assert_eq!(me.status(), StatusCode::OK);
    // A pass one instance gave, another takes: they share the admin key.
    let signed_in = console(first, Method::POST, "admin/session", "")
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    let pass = cookie_pair(&set_cookie(signed_in.headers(), "finsec_operator").unwrap());
    let forced = console(
        second,
        Method::POST,
        &format!("admin/users/{}/logout-all", john.id),
        &pass,
    )
    .json(&json!({"reason": "card reported stolen"}))
    .send()
    .await
    .unwrap();
    assert_eq!(forced.status(), StatusCode::OK);
    // And the customer's very next console call is refused, wherever it lands.
    for node in [first, second] {
        let me = console_me(node, &session).await;
        assert_error(me, StatusCode::UNAUTHORIZED, "session_ended").await;
    }
}
