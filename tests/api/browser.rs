//! The console in a real browser (headless Chromium through chromedriver): what customers and
//! support staff do with it, end to end against a real service and MariaDB. Screenshots go to
//! `target/console-screenshots/` (two of them are in `docs/` for the README).

use fantoccini::Client;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::browser::{
    Browser, click, count, fill, run, screenshot, shown, text_containing, view,
};
use crate::helpers::{ADMIN_KEY, TestApp, TestUser, UserSpec, spawn_app, spawn_app_with};
use crate::mfa_lifecycle::decode_qr;

const LAPTOP: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
const PHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";

async fn named(app: &TestApp, first: &'static str, last: &'static str, mfa: bool) -> TestUser {
    app.create_user(UserSpec {
        mfa,
        name: Some((first, last)),
        ..UserSpec::default()
    })
    .await
}

/// Opens `/account/` and signs in with the password; the second factor, if any, is the
/// caller's.
async fn sign_in(app: &TestApp, window: &Client, user: &TestUser) {
    window.goto(&app.url("/account/")).await.unwrap();
    view(window, "sign-in").await;
    fill(window, "email", &user.email).await;
    fill(window, "password", &user.password).await;
    click(window, "#sign-in-button").await;
}

/// The page's own call to the API through the console, as its scripts make it: the status.
async fn console_status(window: &Client, path: &str) -> u64 {
    run(
        window,
        &format!(
            "const r = await fetch('/console/api/{path}', {{headers: {{'X-FinSec-Console': '1'}}}}); \
             return r.status;"
        ),
    )
    .await
    .as_u64()
    .unwrap()
}

/// Nothing a script can read holds a credential: no readable cookie, nothing stored.
async fn assert_no_readable_credentials(window: &Client) {
    let stored = run(
        window,
        "return {cookie: document.cookie, local: localStorage.length, session: sessionStorage.length};",
    )
    .await;
    assert_eq!(
        stored,
        json!({"cookie": "", "local": 0, "session": 0}),
        "a script can read nothing"
    );
}

/// At a small phone's width (360 px) the page is one column: nothing scrolls sideways. The
/// window goes back to its size after.
async fn assert_fits_a_phone(window: &Client) {
    let (width, height) = (
        run(window, "return window.outerWidth;").await,
        run(window, "return window.outerHeight;").await,
    );
    window.set_window_size(360, 800).await.unwrap();
    let overflow = run(
        window,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    )
    .await;
    assert_eq!(overflow, json!(0), "no sideways scrolling on a phone");
    window
        .set_window_size(
            width.as_u64().unwrap() as u32,
            height.as_u64().unwrap() as u32,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn john_signs_his_phone_out_from_his_laptop() {
    let app = spawn_app().await;
    let john = named(&app, "John", "Doe", false).await;
    let browser = Browser::start().await;
    let laptop = browser.window(LAPTOP).await;
    let phone = browser.window(PHONE).await;

    // A wrong password first: the API's message, on the form.
    laptop.goto(&app.url("/account/")).await.unwrap();
    view(&laptop, "sign-in").await;
    fill(&laptop, "email", &john.email).await;
    fill(&laptop, "password", "not-his-password").await;
    click(&laptop, "#sign-in-button").await;
    text_containing(&laptop, "#sign-in-error", "Invalid credentials").await;

    sign_in(&app, &laptop, &john).await;
    view(&laptop, "account").await;
    sign_in(&app, &phone, &john).await;
    view(&phone, "account").await;
    assert_no_readable_credentials(&laptop).await;

    // The laptop lists both devices once its list refreshes, itself marked.
    let devices = text_containing(&laptop, "#devices", "iPhone").await;
    assert_fits_a_phone(&phone).await;
    assert!(devices.contains("This device"), "{devices}");
    assert_eq!(count(&laptop, "#devices > li").await, 2);
    let current = shown(&laptop, "#devices > li[data-current=true]").await;
    assert!(current.text().await.unwrap().contains("Windows"));
    screenshot(&laptop, "account-devices").await;

    click(&laptop, "#devices > li[data-current=false] button").await;
    text_containing(&laptop, "#account-notice", "That device is signed out").await;
    assert_eq!(count(&laptop, "#devices > li").await, 1);

    // The phone's very next call is refused, and its page goes back to signing in.
    assert_eq!(console_status(&phone, "auth/me").await, 401);
    view(&phone, "sign-in").await;
    text_containing(&phone, "#sign-in-notice", "Your session has ended").await;
    // The laptop is still in.
    assert_eq!(console_status(&laptop, "auth/me").await, 200);

    // A third device (signed in through the API), then "Sign out of all other devices".
    let tablet = app.logged_in(&john).await;
    text_containing(&laptop, "#devices", "Unknown device").await;
    click(&laptop, "#sign-out-others").await;
    text_containing(&laptop, "#account-notice", "Signed out of 1 other device").await;
    assert_eq!(
        app.me(&tablet.token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(count(&laptop, "#devices > li").await, 1);

    // Signing out of the laptop ends its session in the service, not just on the page.
    click(&laptop, "#sign-out").await;
    view(&laptop, "sign-in").await;
    assert_eq!(console_status(&laptop, "auth/me").await, 401);
    assert_eq!(
        app.state
            .sessions
            .admin_sessions_of(john.id)
            .await
            .unwrap()
            .len(),
        0
    );
    laptop.close().await.unwrap();
    phone.close().await.unwrap();
}

/// Every field has a label and every button a name, on whichever view shows.
async fn assert_labelled(window: &Client) {
    let unnamed = run(
        window,
        "return [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).map(i => i.id)
           .concat([...document.querySelectorAll('button')]
             .filter(b => !(b.getAttribute('aria-label') || b.textContent.trim())).map(b => b.id));",
    )
    .await;
    assert_eq!(
        unnamed,
        json!([]),
        "fields without a label, buttons without a name"
    );
}

#[tokio::test]
async fn the_sign_in_works_from_the_keyboard_alone() {
    let app = spawn_app().await;
    let john = named(&app, "John", "Doe", false).await;
    let browser = Browser::start().await;
    let window = browser.window(LAPTOP).await;
    window.goto(&app.url("/account/")).await.unwrap();
    view(&window, "sign-in").await;
    assert_labelled(&window).await;
    // The view's heading has the focus; Tab goes to the email, then the password, and Enter
    // signs in.
    let focused = run(&window, "return document.activeElement.id;").await;
    assert_eq!(focused, json!("sign-in-title"));
    let keys = |text: String| {
        let window = window.clone();
        async move {
            window
                .active_element()
                .await
                .unwrap()
                .send_keys(&text)
                .await
                .unwrap()
        }
    };
    keys("\u{E004}".into()).await; // Tab
    keys(john.email.clone()).await;
    keys("\u{E004}".into()).await;
    keys(format!("{}\u{E007}", john.password)).await; // Enter
    view(&window, "account").await;
    assert_labelled(&window).await;
    window.close().await.unwrap();
}

#[tokio::test]
async fn jane_signs_in_with_a_code_from_her_app() {
    let app = spawn_app_with(|f| {
        f.merge(("auth.require_mfa_token", true))
            .merge(("security.max_failures", 3))
    })
    .await;
    let jane = named(&app, "Jane", "Smith", true).await;
    let browser = Browser::start().await;
    let window = browser.window(LAPTOP).await;

    sign_in(&app, &window, &jane).await;
    view(&window, "second-factor").await;
    // The challenge's token is in an HttpOnly cookie, not in the page.
    assert_no_readable_credentials(&window).await;

    fill(&window, "second-factor-code", "000000").await;
    click(&window, "#verify-button").await;
    text_containing(&window, "#second-factor-error", "Invalid MFA code").await;

    fill(&window, "second-factor-code", &jane.totp_code(0)).await;
    click(&window, "#verify-button").await;
    view(&window, "account").await;
    text_containing(&window, "#greeting", "Jane").await;
    text_containing(&window, "#mfa-state", "Two-factor is on").await;
    text_containing(&window, "#events", "Signed in with two-factor code").await;
    text_containing(&window, "#events", "Wrong two-factor code").await;
    assert_no_readable_credentials(&window).await;

    // Signed out, then wrong passwords until the account is locked: the page says how long.
    click(&window, "#sign-out").await;
    view(&window, "sign-in").await;
    let mut said = String::new();
    for _ in 0..6 {
        fill(&window, "email", &jane.email).await;
        fill(&window, "password", "not-her-password").await;
        click(&window, "#sign-in-button").await;
        said = shown(&window, "#sign-in-error:not(:empty)")
            .await
            .text()
            .await
            .unwrap();
        if said.contains("Too many failed attempts") {
            break;
        }
        assert!(said.contains("Invalid credentials"), "{said}");
    }
    assert!(said.contains("Too many failed attempts"), "{said}");
    text_containing(&window, "#sign-in-error", "Try again in").await;

    assert_fits_a_phone(&window).await;
    window.close().await.unwrap();
}

#[tokio::test]
async fn a_new_customer_turns_on_two_factor_and_keeps_the_recovery_codes() {
    let app = spawn_app().await;
    let user = named(&app, "Maria", "Garcia", false).await;
    let browser = Browser::start().await;
    let window = browser.window(LAPTOP).await;

    sign_in(&app, &window, &user).await;
    view(&window, "account").await;
    text_containing(&window, "#mfa-state", "Two-factor is off").await;

    fill(&window, "mfa-setup-password", "wrong-password").await;
    click(&window, "#mfa-setup-button").await;
    text_containing(
        &window,
        "#mfa-setup-form [role=alert]",
        "Invalid credentials",
    )
    .await;
    // A wrong password is no reason to be signed out.
    assert_eq!(console_status(&window, "auth/me").await, 200);
    fill(&window, "mfa-setup-password", &user.password).await;
    click(&window, "#mfa-setup-button").await;

    // The QR code, read as an authenticator app reads it, carries the key shown beside it.
    let qr = shown(&window, "#mfa-qr").await;
    let src = qr.attr("src").await.unwrap().expect("the QR image");
    let svg = src
        .strip_prefix("data:image/svg+xml;charset=utf-8,")
        .expect("an SVG data URL");
    let svg = percent_decode(svg);
    let otpauth = decode_qr(&svg);
    let shown_key = shown(&window, "#mfa-secret")
        .await
        .text()
        .await
        .unwrap()
        .replace(' ', "");
    assert!(
        otpauth.contains(&format!("secret={shown_key}")),
        "{otpauth} vs {shown_key}"
    );
    let enrolled = TestUser {
        totp_secret: Some(shown_key),
        ..user.clone()
    };
    fill(&window, "mfa-enable-code", &enrolled.totp_code(0)).await;
    click(&window, "#mfa-enable-button").await;

    shown(&window, "#recovery").await;
    assert_eq!(count(&window, "#recovery-codes > li").await, 10);
    assert_no_readable_credentials(&window).await;
    let codes: Vec<String> = run(
        &window,
        "return [...document.querySelectorAll('#recovery-codes > li')].map(li => li.textContent);",
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .map(|c| c.as_str().unwrap().to_owned())
    .collect();
    screenshot(&window, "account-recovery-codes").await;
    click(&window, "#download-codes").await;
    text_containing(&window, "#recovery-status", "Downloaded").await;
    click(&window, "#codes-saved").await;
    text_containing(&window, "#mfa-state", "Two-factor is on").await;

    // The service agrees: a login now asks for the second factor, and a code the page showed
    // opens a session.
    let login: Value = app.login(&user.credentials()).await.json().await.unwrap();
    assert_eq!(login["requireMfa"], true, "{login}");
    let verified = app
        .verify_mfa(
            &json!({"userId": user.id, "mfaToken": login["mfaToken"], "recoveryCode": codes[3]}),
        )
        .await;
    assert_eq!(verified.status(), StatusCode::OK);
    window.close().await.unwrap();
}

#[tokio::test]
async fn support_signs_a_customer_out_of_everything() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let customer = named(&app, "John", "Doe", false).await;
    let browser = Browser::start().await;
    let customers_phone = browser.window(PHONE).await;
    let staff = browser.window(LAPTOP).await;

    sign_in(&app, &customers_phone, &customer).await;
    view(&customers_phone, "account").await;

    staff.goto(&app.url("/admin/")).await.unwrap();
    view(&staff, "sign-in").await;
    fill(&staff, "admin-key", "not-the-admin-key").await;
    click(&staff, "#sign-in-button").await;
    text_containing(&staff, "#sign-in-form [role=alert]", "Invalid admin key").await;
    fill(&staff, "admin-key", ADMIN_KEY).await;
    click(&staff, "#sign-in-button").await;
    view(&staff, "console").await;
    // The key went into an HttpOnly pass: nothing on the page holds it.
    assert_no_readable_credentials(&staff).await;
    let page = run(&staff, "return document.documentElement.outerHTML;").await;
    assert!(!page.as_str().unwrap().contains(ADMIN_KEY));

    fill(&staff, "find-email", "nobody@example.com").await;
    click(&staff, "#find-button").await;
    text_containing(&staff, "#find-form [role=alert]", "User not found").await;

    fill(&staff, "find-email", &customer.email).await;
    click(&staff, "#find-button").await;
    text_containing(&staff, "#customer-name", "John Doe").await;
    text_containing(&staff, "#customer-sessions", "iPhone").await;

    // A reason is required.
    click(&staff, "#logout-all-button").await;
    text_containing(&staff, "#actions-form [role=alert]", "Give a reason").await;
    fill(&staff, "reason", "card reported stolen, ticket 4711").await;
    screenshot(&staff, "admin-customer").await;
    click(&staff, "#logout-all-button").await;
    text_containing(&staff, "#console-notice", "1 session ended").await;
    text_containing(&staff, "#customer-sessions", "Not signed in anywhere").await;
    text_containing(&staff, "#customer-events", "card reported stolen").await;
    assert_fits_a_phone(&staff).await;

    // The customer's page drops to the sign-in screen on its own (its next refresh).
    view(&customers_phone, "sign-in").await;
    text_containing(
        &customers_phone,
        "#sign-in-notice",
        "Your session has ended",
    )
    .await;

    // Deactivation, then reactivation, from the same screen.
    fill(&staff, "reason", "customer asked to close").await;
    click(&staff, "#deactivate-button").await;
    text_containing(&staff, "#customer-status", "Deactivated").await;
    sign_in(&app, &customers_phone, &customer).await;
    text_containing(&customers_phone, "#sign-in-error", "inactive").await;
    fill(&staff, "reason", "customer came back").await;
    click(&staff, "#activate-button").await;
    text_containing(&staff, "#customer-status", "Active").await;

    // Signing out of the console drops the pass.
    click(&staff, "#sign-out").await;
    view(&staff, "sign-in").await;
    assert_eq!(
        run(
            &staff,
            "return (await fetch('/console/api/admin/session', {headers: {'X-FinSec-Console': '1'}})).status;"
        )
        .await,
        json!(401)
    );
    customers_phone.close().await.unwrap();
    staff.close().await.unwrap();
}

/// `%XX` escapes back into bytes (what `encodeURIComponent` wrote).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
