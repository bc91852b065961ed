//! `GET /openapi.json` documents exactly what the router serves: the same paths, and on each
//! path the methods the server answers (every other method gets 405).

use std::collections::BTreeSet;

use finsec::http::ROUTES;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{ADMIN_KEY, TestApp, assert_error, spawn_app, spawn_app_with};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_every_route_and_no_other() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served: BTreeSet<&str> = ROUTES.iter().copied().collect();
    assert_eq!(
        documented,
        served,
        "documented but not served: {:?}; served but not documented: {:?}",
        documented.difference(&served).collect::<Vec<_>>(),
        served.difference(&documented).collect::<Vec<_>>(),
    );

    // Every operation documents its responses with a description (OpenAPI requires one),
    // and every error response has the one error shape.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path} has no 200");
            assert!(responses.contains_key("503"), "{method} {path} has no 503");
            for (status, response) in responses {
                if let Some(reference) = response["$ref"].as_str() {
                    let name = reference.rsplit('/').next().unwrap();
                    assert!(
                        doc["components"]["responses"][name].is_object(),
                        "{method} {path} {status}: dangling {reference}"
                    );
                    continue;
                }
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    for scheme in ["bearer", "admin_key"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object());
    }
}

/// A concrete path for a template: `{id}` as a user id or a session id.
fn concrete(template: &str) -> String {
    let id = if template.starts_with("/api/admin/") {
        "1"
    } else {
        "3f2a8c1e-1b2c-4d5e-8f90-0123456789ab"
    };
    template.replace("{id}", id)
}

#[tokio::test]
async fn the_server_answers_exactly_the_documented_methods() {
    let app = spawn_app_with(|f| f.merge(("admin.api_key", ADMIN_KEY))).await;
    let doc = document(&app).await;
    for template in ROUTES {
        let item = &doc["paths"][template];
        for method in METHODS {
            let request = app
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&concrete(template)),
                )
                .header("x-admin-key", ADMIN_KEY)
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            if item[method].is_object() {
                // Served, and answered with one of the statuses its operation documents.
                let status = response.status();
                assert!(
                    item[method]["responses"][status.as_str()].is_object(),
                    "{method} {template} answered {status}, which it does not document: {}",
                    response.text().await.unwrap()
                );
            } else {
                // RFC 9110: a 405 lists what the path does serve.
                let documented: Vec<String> = METHODS
                    .iter()
                    .filter(|m| item[**m].is_object())
                    .map(|m| m.to_uppercase())
                    .collect();
                assert_eq!(
                    response.headers()["allow"].to_str().unwrap(),
                    documented.join(", "),
                    "{method} {template}"
                );
                assert_error(
                    response,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                )
                .await;
            }
        }
    }
}

#[tokio::test]
async fn an_optional_body_may_be_null() {
    // The document calls these bodies optional and nullable; the server agrees.
    let app = spawn_app().await;
    let user = app.user().await;
    let session = app.logged_in(&user).await;
    let response = app
        .client
        .post(app.url("/api/auth/logout-all"))
        .bearer_auth(&session.token)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], 1);

    // A required body may not.
    let response = app.post_raw("/api/auth/login", "null").await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
}
