//! The second factor's life cycle over HTTP: setup (QR code), enable (recovery codes), use of
//! a recovery code at verify-mfa, new codes, disable; other sessions ended on each change; the
//! secret sealed in its row; and key rotation.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ENCRYPTION_KEY, LoggedIn, TestApp, TestUser, assert_error, spawn_app};
use finsec::auth::totp::TotpCode;

/// The TOTP code of `secret` for `offset_steps` steps from now.
pub fn code_of(secret: &str, offset_steps: i64) -> String {
    let now = chrono::Utc::now().timestamp() + offset_steps * 30;
    TotpCode::from_base32(secret).unwrap().generate(now as u64)
}

/// Decodes the QR code of the SVG `mfa/setup` returns: the modules are drawn as rectangles
/// (`M{x} {y}h{w}v{h}H{x}V{y}`) on a white ground, which rqrr reads from a greyscale grid.
pub fn decode_qr(svg: &str) -> String {
    let number_after = |key: &str| -> usize {
        let start = svg.find(key).unwrap() + key.len();
        svg[start..].split('"').next().unwrap().parse().unwrap()
    };
    let (width, height) = (number_after("width=\""), number_after("height=\""));
    let mut pixels = vec![255u8; width * height];
    let path = svg
        .split(" d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    for rect in path.split('M').filter(|r| !r.is_empty()) {
        let numbers: Vec<usize> = rect
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().unwrap())
            .collect();
        let (x, y, w, h) = (numbers[0], numbers[1], numbers[2], numbers[3]);
        for row in y..y + h {
            for col in x..x + w {
                pixels[row * width + col] = 0;
            }
        }
    }
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| pixels[y * width + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the SVG");
    grids[0].decode().expect("the QR code decodes").1
}

async fn post(app: &TestApp, path: &str, session: &LoggedIn, body: Value) -> reqwest::Response {
    app.post_with_token(path, &session.token, &body).await
}

/// Runs setup and enable for `user` on `session`; returns the secret and the recovery codes.
pub async fn enrol(
    app: &TestApp,
    user: &TestUser,
    session: &LoggedIn,
    keep_others: bool,
) -> (String, Vec<String>) {
    let setup = post(
        app,
        "/api/auth/mfa/setup",
        session,
        json!({"password": user.password}),
    )
    .await;
    assert_eq!(setup.status(), StatusCode::OK);
    let setup: Value = setup.json().await.unwrap();
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let enabled = post(
        app,
        "/api/auth/mfa/enable",
        session,
        json!({"otpCode": code_of(&secret, 0), "keepOtherSessions": keep_others}),
    )
    .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    let enabled: Value = enabled.json().await.unwrap();
    let codes = enabled["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes)
}

/// The password step of a user with MFA: its challenge token.
async fn password_step(app: &TestApp, user: &TestUser) -> String {
    let response = app.login(&user.credentials()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["requireMfa"], true, "{body}");
    body["mfaToken"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, user: &TestUser, factor: Value) -> reqwest::Response {
    let token = password_step(app, user).await;
    let mut body = json!({"userId": user.id.get(), "mfaToken": token});
    body.as_object_mut()
        .unwrap()
        .extend(factor.as_object().unwrap().clone());
    app.verify_mfa(&body).await
}

#[tokio::test]
async fn a_user_enrols_with_the_qr_code_and_then_needs_the_second_factor() {
    let app = spawn_app().await;
    let user = app.user().await;
    let phone = app.logged_in_from(&user, "phone").await;
    let laptop = app.logged_in_from(&user, "laptop").await;

    let setup = post(
        &app,
        "/api/auth/mfa/setup",
        &laptop,
        json!({"password": user.password}),
    )
    .await;
    assert_eq!(setup.status(), StatusCode::OK);
    let setup: Value = setup.json().await.unwrap();
    let secret = setup["secret"].as_str().unwrap();
    let url = setup["otpauthUrl"].as_str().unwrap();
    assert!(url.starts_with("otpauth://totp/FinSec:"), "{url}");
    assert!(url.contains(&format!("secret={secret}")) && url.contains("issuer=FinSec"));
    assert!(url.contains(&user.email.replace('@', "%40")), "{url}");
    assert_eq!(decode_qr(setup["qrSvg"].as_str().unwrap()), url);

    // Pending is not in force: the password alone still logs in.
    let still_password_only = app.login(&user.credentials()).await;
    let body: Value = still_password_only.json().await.unwrap();
    assert!(body["access_token"].is_string(), "{body}");

    let wrong = post(
        &app,
        "/api/auth/mfa/enable",
        &laptop,
        json!({"otpCode": "000000"}),
    )
    .await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;

    let enabled = post(
        &app,
        "/api/auth/mfa/enable",
        &laptop,
        json!({"otpCode": code_of(secret, 0)}),
    )
    .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    let enabled: Value = enabled.json().await.unwrap();
    let codes = enabled["recoveryCodes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(
        enabled["revoked"], 2,
        "the phone and the password-only login"
    );

    // The factor changed: every other session ended at once, this one goes on.
    app.assert_ended(&phone, "mfa_changed").await;
    assert_eq!(app.me(&laptop.token).await.status(), StatusCode::OK);
    let me: Value = app.me(&laptop.token).await.json().await.unwrap();
    assert_eq!(me["user"]["mfa_enabled"], true);

    // The code that enabled it was spent; a login now needs a fresh one.
    let reused = verify(&app, &user, json!({"otpCode": code_of(secret, 0)})).await;
    assert_error(reused, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    let next = verify(&app, &user, json!({"otpCode": code_of(secret, 1)})).await;
    assert_eq!(next.status(), StatusCode::OK);

    // Setting up again while it is on is refused: turn it off first.
    let again = post(
        &app,
        "/api/auth/mfa/setup",
        &laptop,
        json!({"password": user.password}),
    )
    .await;
    assert_error(again, StatusCode::CONFLICT, "mfa_already_enabled").await;
}

#[tokio::test]
async fn setup_and_enable_refuse_bad_input_and_a_new_setup_replaces_a_pending_one() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;

    let no_token = app
        .post_json("/api/auth/mfa/setup", &json!({"password": user.password}))
        .await;
    assert_error(no_token, StatusCode::UNAUTHORIZED, "missing_token").await;
    let wrong = post(
        &app,
        "/api/auth/mfa/setup",
        &session,
        json!({"password": "not-the-password"}),
    )
    .await;
    assert_error(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let missing = post(&app, "/api/auth/mfa/setup", &session, json!({})).await;
    assert_error(missing, StatusCode::BAD_REQUEST, "invalid_request").await;
    let early = post(
        &app,
        "/api/auth/mfa/enable",
        &session,
        json!({"otpCode": "123456"}),
    )
    .await;
    assert_error(early, StatusCode::CONFLICT, "mfa_setup_required").await;
    let not_on = post(
        &app,
        "/api/auth/mfa/disable",
        &session,
        json!({"password": user.password, "otpCode": "123456"}),
    )
    .await;
    assert_error(not_on, StatusCode::CONFLICT, "mfa_not_enabled").await;

    let first: Value = post(
        &app,
        "/api/auth/mfa/setup",
        &session,
        json!({"password": user.password}),
    )
    .await
    .json()
    .await
    .unwrap();
    let second: Value = post(
        &app,
        "/api/auth/mfa/setup",
        &session,
        json!({"password": user.password}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_ne!(first["secret"], second["secret"]);
    let stale = post(
        &app,
        "/api/auth/mfa/enable",
        &session,
        json!({"otpCode": code_of(first["secret"].as_str().unwrap(), 0)}),
    )
    .await;
    assert_error(stale, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    let both = post(
        &app,
        "/api/auth/mfa/enable",
        &session,
        json!({"otpCode": code_of(second["secret"].as_str().unwrap(), 0), "keepOtherSessions": "yes"}),
    )
    .await;
    assert_error(both, StatusCode::BAD_REQUEST, "invalid_request").await;
    // A setup left pending for more than 15 minutes must be started again.
    app.db
        .execute(&format!(
            "UPDATE users SET pending_at = UTC_TIMESTAMP(6) - INTERVAL 16 MINUTE WHERE id = {}",
            user.id
        ))
        .await;
    let late = post(
        &app,
        "/api/auth/mfa/enable",
        &session,
        json!({"otpCode": code_of(second["secret"].as_str().unwrap(), 0)}),
    )
    .await;
    assert_error(late, StatusCode::CONFLICT, "mfa_setup_required").await;
    app.db
        .execute(&format!(
            "UPDATE users SET pending_at = UTC_TIMESTAMP(6) WHERE id = {}",
            user.id
        ))
        .await;
    let enabled = post(
        &app,
        "/api/auth/mfa/enable",
        &session,
        json!({"otpCode": code_of(second["secret"].as_str().unwrap(), 0)}),
    )
    .await;
    assert_eq!(enabled.status(), StatusCode::OK);
}

#[tokio::test]
async fn recovery_codes_work_once_and_a_new_set_voids_the_old() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let (secret, codes) = enrol(&app, &user, &session, false).await;
    let distinct: std::collections::HashSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);

    let used = verify(&app, &user, json!({"recoveryCode": codes[0]})).await;
    assert_eq!(used.status(), StatusCode::OK);
    let used: Value = used.json().await.unwrap();
    assert!(used["access_token"].is_string());
    assert_eq!(used["recoveryCodesLeft"], 9);
    // A TOTP login does not mention recovery codes.
    let by_code: Value = verify(&app, &user, json!({"otpCode": code_of(&secret, 1)}))
        .await
        .json()
        .await
        .unwrap();
    assert!(by_code.get("recoveryCodesLeft").is_none(), "{by_code}");

    let again = verify(&app, &user, json!({"recoveryCode": codes[0]})).await;
    assert_error(again, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    let made_up = verify(
        &app,
        &user,
        json!({"recoveryCode": "aaaaa-bbbbb-ccccc-ddddd"}),
    )
    .await;
    assert_error(made_up, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    let both = app
        .verify_mfa(
            &json!({"userId": user.id.get(), "otpCode": "123456", "recoveryCode": codes[1]}),
        )
        .await;
    assert_error(both, StatusCode::BAD_REQUEST, "invalid_request").await;

    // A new set needs the password and the factor; the old set is void after it.
    let wrong_password = post(
        &app,
        "/api/auth/mfa/recovery-codes",
        &session,
        json!({"password": "wrong-password-1", "recoveryCode": codes[1]}),
    )
    .await;
    assert_error(
        wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let renewed = post(
        &app,
        "/api/auth/mfa/recovery-codes",
        &session,
        json!({"password": user.password, "recoveryCode": codes[1]}),
    )
    .await;
    assert_eq!(renewed.status(), StatusCode::OK);
    let renewed: Value = renewed.json().await.unwrap();
    let new_codes: Vec<String> = renewed["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new_codes.len(), 10);
    assert!(new_codes.iter().all(|c| !codes.contains(c)));
    let old = verify(&app, &user, json!({"recoveryCode": codes[2]})).await;
    assert_error(old, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    let new = verify(&app, &user, json!({"recoveryCode": new_codes[9]})).await;
    assert_eq!(new.status(), StatusCode::OK);
    let new: Value = new.json().await.unwrap();
    assert_eq!(new["recoveryCodesLeft"], 9);
    // Regenerating ends no session.
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);

    // Only hashes are stored.
    let stored = app
        .db
        .query_one(&format!(
            "SELECT GROUP_CONCAT(HEX(code_hash), HEX(salt)) FROM recovery_codes WHERE user_id = {}",
            user.id
        ))
        .await
        .unwrap();
    for code in &new_codes {
        let plain = code.replace('-', "");
        assert!(!stored.to_lowercase().contains(&plain));
        assert!(!stored.contains(&hex(plain.as_bytes())));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::test]
async fn disabling_needs_password_and_factor_and_ends_the_other_sessions() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let (secret, codes) = enrol(&app, &user, &session, false).await;
    let other = LoggedIn::from_body(
        &verify(&app, &user, json!({"otpCode": code_of(&secret, 1)}))
            .await
            .json()
            .await
            .unwrap(),
    );

    let no_factor = post(
        &app,
        "/api/auth/mfa/disable",
        &session,
        json!({"password": user.password}),
    )
    .await;
    assert_error(no_factor, StatusCode::BAD_REQUEST, "invalid_request").await;
    let wrong_code = post(
        &app,
        "/api/auth/mfa/disable",
        &session,
        json!({"password": user.password, "otpCode": "000000"}),
    )
    .await;
    assert_error(wrong_code, StatusCode::UNAUTHORIZED, "invalid_mfa_code").await;
    assert_eq!(app.me(&other.token).await.status(), StatusCode::OK);

    let disabled = post(
        &app,
        "/api/auth/mfa/disable",
        &session,
        json!({"password": user.password, "recoveryCode": codes[3]}),
    )
    .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let disabled: Value = disabled.json().await.unwrap();
    assert_eq!(disabled["revoked"], 1);
    app.assert_ended(&other, "mfa_changed").await;
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);

    // Password alone logs in again; the old codes and secret are gone.
    let login: Value = app.login(&user.credentials()).await.json().await.unwrap();
    assert!(login["access_token"].is_string(), "{login}");
    let row = app
        .db
        .query_one(&format!(
            "SELECT CONCAT_WS(',', mfa_enabled, totp_ciphertext IS NULL, \
             (SELECT COUNT(*) FROM recovery_codes WHERE user_id = {0})) FROM users WHERE id = {0}",
            user.id
        ))
        .await;
    assert_eq!(row.as_deref(), Some("0,1,0"));
    let proof = app
        .db
        .query_one(&format!(
            "SELECT reason FROM auth_events WHERE kind = 'mfa_disabled' AND user_id = {}",
            user.id
        ))
        .await;
    assert_eq!(
        proof.as_deref(),
        Some("recovery_code"),
        "the proof spent is recorded"
    );
}

#[tokio::test]
async fn the_secret_is_sealed_in_its_row_and_never_returned_again() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let (secret, _) = enrol(&app, &user, &session, true).await;

    let row = app
        .db
        .query_one(&format!(
            "SELECT CONCAT_WS('|', totp_key_id, HEX(totp_nonce), HEX(totp_ciphertext), \
             COALESCE(totp_secret, 'none')) FROM users WHERE id = {}",
            user.id
        ))
        .await
        .unwrap();
    let parts: Vec<&str> = row.split('|').collect();
    assert_eq!(parts.len(), 4, "{row}");
    assert_eq!(parts[0].len(), 16, "a key id");
    assert_eq!(parts[1].len(), 24, "a 96-bit nonce");
    assert_eq!(parts[3], "none", "no clear secret");
    let raw = totp_rs::Secret::try_from_base32(&secret).unwrap();
    assert!(!row.contains(&secret));
    assert!(!row.contains(&hex(raw.as_bytes())));
    assert!(!row.contains(&hex(secret.as_bytes())));

    // No later response carries it.
    let me = app.me(&session.token).await.text().await.unwrap();
    let sessions = app
        .list_sessions(&session.token)
        .await
        .text()
        .await
        .unwrap();
    let events = app
        .client
        .get(app.url("/api/auth/events"))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for body in [me, sessions, events] {
        assert!(!body.contains(&secret), "{body}");
    }
}

#[tokio::test]
async fn clear_secrets_from_before_are_sealed_at_start_and_keep_working() {
    let app = spawn_app().await;
    let user = app.mfa_user().await;
    let secret = user.totp_secret.clone().unwrap();
    // A row as the original service left it: the secret in clear, nothing sealed.
    app.db
        .execute(&format!(
            "UPDATE users SET totp_secret = '{secret}', totp_key_id = NULL, totp_nonce = NULL, \
             totp_ciphertext = NULL WHERE id = {}",
            user.id
        ))
        .await;
    let mut app = app;
    app.restart().await;
    let clear = app
        .db
        .query_one(&format!(
            "SELECT CONCAT_WS(',', totp_secret IS NULL, totp_ciphertext IS NOT NULL) FROM users \
             WHERE id = {}",
            user.id
        ))
        .await;
    assert_eq!(clear.as_deref(), Some("1,1"), "sealed at start");
    let response = app.verify_with_password(&user).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn keys_rotate_re_seals_every_secret_and_nobody_is_logged_out() {
    let new_key = finsec::crypto::generate_key().unwrap();
    let app = spawn_app().await;
    let user = app.mfa_user().await;
    let session = LoggedIn::from_body(&app.verify_with_password(&user).await.json().await.unwrap());
    let key_of = |id: u64| format!("SELECT totp_key_id FROM users WHERE id = {id}");
    let old_id = app.db.query_one(&key_of(user.id.get())).await.unwrap();

    let rotated = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["keys", "rotate"])
        .env("FINSEC__DATABASE__URL", &app.db.url)
        .env("FINSEC__JWT__SECRET", crate::helpers::JWT_SECRET)
        .env("FINSEC__SECURITY__ENCRYPTION_KEY", &new_key)
        .env(
            "FINSEC__SECURITY__PREVIOUS_ENCRYPTION_KEYS",
            format!("[\"{ENCRYPTION_KEY}\"]"),
        )
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(out.contains("1 secret(s) re-encrypted"), "{out}");
    let new_id = app.db.query_one(&key_of(user.id.get())).await.unwrap();
    assert_ne!(new_id, old_id);

    // The service, restarted with only the new key, still opens the secret, and the session
    // opened before the rotation is still live.
    let mut app = app;
    app.restart_with(|f| f.merge(("security.encryption_key", new_key.clone())))
        .await;
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
    let response = app
        .verify_mfa(
            &json!({"userId": user.id.get(), "otpCode": user.totp_code(1),
            "email": user.email, "password": user.password}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Rotating again has nothing to do.
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .args(["keys", "rotate"])
        .env("FINSEC__DATABASE__URL", &app.db.url)
        .env("FINSEC__JWT__SECRET", crate::helpers::JWT_SECRET)
        .env("FINSEC__SECURITY__ENCRYPTION_KEY", &new_key)
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 secret(s) re-encrypted"));
}

#[tokio::test]
async fn a_password_login_racing_the_enabling_of_two_factor_does_not_slip_past_it() {
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    // The login's password step reads the row (two-factor off) and verifies the password;
    // then it waits in the user's (stalled) actor while two-factor is turned on.
    let actor = app
        .state
        .sessions
        .registry()
        .resident(user.id)
        .expect("the user's actor is resident");
    actor
        .cast(finsec::sessions::UserMsg::Stall(
            std::time::Duration::from_millis(700),
        ))
        .unwrap();
    let login = {
        let app = &app;
        let user = &user;
        async move { app.login(&user.credentials()).await }
    };
    let enable = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Turned on behind the actor's back, as another node would (the login's own actor
        // is busy): the store alone must stop the login.
        let secret = totp_rs::Secret::generate();
        let sealed = app
            .settings
            .keyring()
            .unwrap()
            .seal(finsec::crypto::Purpose::Totp, secret.to_base32().as_bytes())
            .unwrap();
        let hex = |b: &[u8]| hex(b);
        app.db
            .execute(&format!(
                "UPDATE users SET mfa_enabled = TRUE, totp_key_id = '{}', totp_nonce = X'{}', \
                 totp_ciphertext = X'{}' WHERE id = {}",
                sealed.key_id,
                hex(&sealed.nonce),
                hex(&sealed.ciphertext),
                user.id
            ))
            .await;
    };
    let (response, ()) = tokio::join!(login, enable);
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["access_token"].is_null(),
        "a session slipped past two-factor: {body}"
    );
    assert_eq!(body["requireMfa"], true, "{body}");
    assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
}
