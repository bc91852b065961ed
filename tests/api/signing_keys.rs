//! Tokens signed with a key pair (`jwt.algorithm` = EdDSA or ES256, keys in `jwt.keys_dir`):
//! the public keys at `/.well-known/jwks.json` verify them, and a key rotation logs nobody out.

use std::path::{Path, PathBuf};

use figment::Figment;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{AUDIENCE, ISSUER, TestApp, spawn_app_with};
use finsec::auth::keys;
use finsec::config::SigningAlgorithm;

/// A fresh folder with one key of `algorithm`, created a day ago.
fn key_folder(algorithm: SigningAlgorithm) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("finsec-api-keys-{}", uuid::Uuid::new_v4().simple()));
    keys::generate(
        &dir,
        algorithm,
        chrono::Utc::now() - chrono::Duration::days(1),
    )
    .unwrap();
    dir
}

fn signed_with(algorithm: SigningAlgorithm, dir: &Path) -> impl FnOnce(Figment) -> Figment {
    let dir = dir.to_owned();
    move |figment| {
        figment
            .merge(("jwt.algorithm", algorithm.jwt_name()))
            .merge(("jwt.keys_dir", dir))
            // A new key signs once it is four seconds old: the rotation below sees it both ways.
            .merge(("jwt.key_activation", "4s"))
    }
}

async fn jwks(app: &TestApp) -> (JwkSet, String) {
    let response = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    (response.json().await.unwrap(), cache)
}

/// What a resource server does: the key the header names, from the published set.
fn verify_as_a_resource_server(token: &str, set: &JwkSet) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or("kid not published")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn tokens_signed_with_a_key_pair_verify_with_the_published_keys() {
    for algorithm in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
        let dir = key_folder(algorithm);
        let app = spawn_app_with(signed_with(algorithm, &dir)).await;
        let john = app.user().await;
        let session = app.logged_in(&john).await;
        let header = jsonwebtoken::decode_header(&session.token).unwrap();
        assert_eq!(header.alg, algorithm.jwt());

        let (set, cache) = jwks(&app).await;
        assert_eq!(cache, "public, max-age=300");
        assert_eq!(set.keys.len(), 1);
        let claims = verify_as_a_resource_server(&session.token, &set).unwrap();
        assert_eq!(claims["sid"], session.session_id.as_str());
        assert_eq!(claims["sub"], john.id.get().to_string());
        assert_eq!(app.me(&session.token).await.status(), StatusCode::OK);
        // Nothing private is published.
        let raw = serde_json::to_string(&set).unwrap();
        assert!(!raw.contains("\"d\""), "{raw}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn an_hs256_deployment_publishes_no_key() {
    let app = crate::helpers::spawn_app().await;
    let (set, _) = jwks(&app).await;
    assert!(set.keys.is_empty());
}

#[tokio::test]
async fn a_key_rotation_logs_nobody_out_and_a_removed_key_stops_verifying() {
    let algorithm = SigningAlgorithm::EdDSA;
    let dir = key_folder(algorithm);
    let mut app = spawn_app_with(signed_with(algorithm, &dir)).await;
    let john = app.user().await;
    let before = app.logged_in(&john).await;
    let old_kid = jsonwebtoken::decode_header(&before.token).unwrap().kid;

    // A new key, and the service restarted onto it: the live session's token still works.
    // The new key is published at once, but signs only once it has come of age
    // (`jwt.key_activation`), by when every instance has read it: until then new tokens
    // name the old key, which every instance knows.
    keys::generate(&dir, algorithm, chrono::Utc::now()).unwrap();
    app.restart_with(signed_with(algorithm, &dir)).await;
    assert_eq!(app.me(&before.token).await.status(), StatusCode::OK);
    let (set, _) = jwks(&app).await;
    assert_eq!(set.keys.len(), 2, "published before it signs");
    let early = app.logged_in(&john).await;
    assert_eq!(
        jsonwebtoken::decode_header(&early.token).unwrap().kid,
        old_kid
    );
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    let after = app.logged_in(&john).await;
    let new_kid = jsonwebtoken::decode_header(&after.token).unwrap().kid;
    assert_ne!(new_kid, old_kid);
    let (set, _) = jwks(&app).await;
    assert_eq!(set.keys.len(), 2);
    for token in [&before.token, &after.token] {
        assert!(verify_as_a_resource_server(token, &set).is_ok());
    }

    // The old key leaves the folder: tokens it signed stop verifying, here and for resource
    // servers; the new key's go on.
    std::fs::remove_file(dir.join(format!("{}.pem", old_kid.unwrap()))).unwrap();
    app.restart_with(signed_with(algorithm, &dir)).await;
    crate::helpers::assert_error(
        app.me(&before.token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(app.me(&after.token).await.status(), StatusCode::OK);
    let (set, _) = jwks(&app).await;
    assert!(verify_as_a_resource_server(&before.token, &set).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
