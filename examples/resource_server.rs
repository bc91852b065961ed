//! A resource server that trusts FinSec Sessions' tokens: the smallest shape of what the bank's
//! accounts, transfers or analytics services do with them.
//!
//! For each request it
//! 1. verifies the bearer token's signature locally, with the public key its `kid` names in
//!    FinSec's JWK Set (`/.well-known/jwks.json`, fetched again when a `kid` is new: how a
//!    rotated key reaches it), the algorithm pinned to the key's, `iss` and `aud` checked;
//! 2. asks FinSec whether the session still lives (`POST /api/auth/introspect`, RFC 7662, as
//!    one of `introspection.clients`): a signature outlives a logout, the session does not.
//!
//! ```sh
//! FINSEC_URL=http://127.0.0.1:5000 RS_CLIENT_ID=rs1 RS_CLIENT_SECRET=… \
//!     cargo run --example resource_server
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:<port>/accounts
//! ```
//!
//! Settings come from the environment: `FINSEC_URL`, `RS_CLIENT_ID`, `RS_CLIENT_SECRET`,
//! `RS_LISTEN` (default `127.0.0.1:0`: a free port, printed on the first line of output),
//! `FINSEC_ISSUER` and `FINSEC_AUDIENCE` (FinSec's defaults). It needs FinSec to sign with
//! EdDSA or ES256 (an HS256 deployment publishes no key).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::sync::RwLock;
use warp::Filter;
use warp::http::StatusCode;

struct Trust {
    finsec: String,
    client_id: String,
    client_secret: String,
    issuer: String,
    audience: String,
    http: reqwest::Client,
    keys: RwLock<JwkSet>,
}

impl Trust {
    async fn fetch_keys(&self) -> Result<(), String> {
        let request = self
            .http
            .get(format!("{}/.well-known/jwks.json", self.finsec));
        let set: JwkSet = json_of(request, "JWKS").await?;
        *self.keys.write().await = set;
        Ok(())
    }

    /// The key `kid` names, fetching the set again once if it is not known yet.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, jsonwebtoken::Algorithm), String> {
        for attempt in 0..2 {
            if let Some(jwk) = self.keys.read().await.find(kid) {
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse().ok())
                    .ok_or("a published key without its algorithm")?;
                return Ok((
                    DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?,
                    algorithm,
                ));
            }
            if attempt == 0 {
                self.fetch_keys().await?;
            }
        }
        Err("unknown key".into())
    }

    /// The user a live token is for; `Err` with why not.
    async fn check(&self, token: &str) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("no kid")?;
        let (key, algorithm) = self.key(&kid).await?;
        // Pinned to the key's own algorithm: never the one the token's header claims.
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| e.to_string())?
            .claims;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let request = self
            .http
            .post(format!("{}/api/auth/introspect", self.finsec))
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        let answer: Value = json_of(request, "introspection").await?;
        if answer["active"] != true || answer["sid"] != claims["sid"] {
            return Err("session not live".into());
        }
        claims["sub"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no sub".into())
    }
}

/// The JSON body of a successful answer to `request`; `Err` naming `what` otherwise.
async fn json_of<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, String> {
    let response = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("{what}: {e}"))?;
    response.json().await.map_err(|e| format!("{what}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str, default: Option<&str>| {
        std::env::var(name)
            .ok()
            .or(default.map(str::to_owned))
            .ok_or_else(|| format!("set {name}"))
    };
    let trust = Arc::new(Trust {
        finsec: var("FINSEC_URL", None)?.trim_end_matches('/').to_owned(),
        client_id: var("RS_CLIENT_ID", None)?,
        client_secret: var("RS_CLIENT_SECRET", None)?,
        issuer: var("FINSEC_ISSUER", Some("finsec-sessions"))?,
        audience: var("FINSEC_AUDIENCE", Some("finsec-banking-api"))?,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        keys: RwLock::new(JwkSet { keys: Vec::new() }),
    });
    trust.fetch_keys().await?;

    let accounts = warp::path!("accounts")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::any().map(move || trust.clone()))
        .then(|header: Option<String>, trust: Arc<Trust>| async move {
            let token = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or_default();
            match trust.check(token).await {
                Ok(user) => warp::reply::with_status(
                    warp::reply::json(&json!({
                        "owner": user,
                        "accounts": [{"id": "acc-1", "currency": "EUR", "balance": "1024.00"}],
                    })),
                    StatusCode::OK,
                ),
                Err(why) => {
                    eprintln!("refused: {why}");
                    warp::reply::with_status(
                        warp::reply::json(
                            &json!({"error": "Not authorised", "code": "unauthorized"}),
                        ),
                        StatusCode::UNAUTHORIZED,
                    )
                }
            }
        });
    let listen: std::net::SocketAddr = var("RS_LISTEN", Some("127.0.0.1:0"))?.parse()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    warp::serve(accounts).incoming(listener).run().await;
    Ok(())
}
