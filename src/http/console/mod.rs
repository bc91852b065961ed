//! The browser console: `/account/` for customers (their devices, two-factor, password,
//! security activity) and `/admin/` for support staff (find a customer, see their sessions
//! and events, sign them out everywhere, deactivate). Plain HTML, CSS and JavaScript modules,
//! embedded in the binary (`assets/`), that call the API through the console's gateway
//! (`gateway`), which keeps their credentials in `HttpOnly` cookies (`cookies`, `operator`).
//!
//! Every console response forbids framing and inline script: the pages load only this
//! origin's own files, and with Trusted Types required, no script can write HTML from a
//! string (the pages build their DOM node by node, so text from the API is only ever text).

mod cookies;
mod gateway;
mod operator;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use cookies::Cookies;
pub use gateway::{Api, CONSOLE_HEADER};
pub use operator::{OperatorPass, OperatorPasses};

use super::AppState;
use crate::config::ConsoleSettings;

/// What the console needs at run time.
pub struct Console {
    pub enabled: bool,
    pub cookies: Cookies,
    /// `None` without an admin key: `/admin/` then has nothing to sign in to.
    pub operator: Option<OperatorPasses>,
}

impl Console {
    pub fn new(settings: &ConsoleSettings, admin_key: Option<&str>) -> Self {
        Self {
            enabled: settings.enabled,
            cookies: Cookies::new(settings.secure_cookies),
            operator: admin_key.map(|key| OperatorPasses::new(key, settings.operator_ttl)),
        }
    }
}

/// The console's files: path under `/console/assets/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    ("api.js", JS, include_str!("assets/api.js")),
    ("ui.js", JS, include_str!("assets/ui.js")),
    ("account.js", JS, include_str!("assets/account.js")),
    ("admin.js", JS, include_str!("assets/admin.js")),
];
const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// Only this origin's files; no inline script or style, no plugins, no framing, no form
/// posted anywhere (the pages send JSON with `fetch`), and DOM sinks take no strings.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; \
    trusted-types 'none'";

/// The console's pages, files and gateway; nothing when `console.enabled` is off.
pub fn routes(state: Arc<AppState>, api: Api) -> BoxedFilter<(Response,)> {
    if !state.console.enabled {
        return warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed();
    }
    let account = page("account", include_str!("assets/account.html"));
    let admin = page("admin", include_str!("assets/admin.html"));
    let assets = warp::path("console")
        .and(warp::path("assets"))
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(get_or_head())
        .and_then(|name: String| async move {
            ASSETS
                .iter()
                .find(|(file, _, _)| *file == name)
                .map(|(_, kind, content)| with_type(content, kind))
                .ok_or_else(warp::reject::not_found)
        });
    account
        .or(admin)
        .unify()
        .or(assets)
        .unify()
        .or(gateway::route(state, api))
        .unify()
        .boxed()
}

/// `/<name>/` (and `/<name>`): the page.
fn page(
    name: &'static str,
    html: &'static str,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path(name)
        .and(warp::path::end())
        .and(get_or_head())
        .map(move || with_type(html, HTML))
}

/// Pages and files answer `HEAD` as `GET` (hyper sends no body for it).
fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// The methods a console path (or its route template) serves, for `Allow` on a 405 and for
/// telling the console's routes in metrics; `None`: not a path the console serves.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    let page = ["/account", "/account/", "/admin", "/admin/"].contains(&path)
        || path
            .strip_prefix("/console/assets/")
            .is_some_and(|name| ASSETS.iter().any(|(file, _, _)| *file == name));
    if page {
        return Some("GET, HEAD");
    }
    let call = path.strip_prefix("/console/api/")?;
    match gateway::Call::of(call)? {
        gateway::Call::OperatorSession => Some("GET, POST, DELETE"),
        // The API's own route, as the gateway passes it on.
        _ => super::openapi::allowed_methods(&super::route_template(&format!("/api/{call}"))),
    }
}

fn with_type(content: &'static str, kind: &'static str) -> Response {
    warp::reply::with_header(content, header::CONTENT_TYPE, kind).into_response()
}

/// Whether `path` is the console's: its pages, files and gateway.
fn is_console_path(path: &str) -> bool {
    // Asked of every response: no allocation.
    ["/account", "/admin"].iter().any(|page| {
        path.strip_prefix(page)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }) || path.starts_with("/console/")
}

/// Every answer on a console path, errors included, forbids inline script and framing.
pub fn secure(path: &str, response: &mut Response) {
    if !is_console_path(path) {
        return;
    }
    static HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(security_headers);
    for (name, value) in HEADERS.iter() {
        response.headers_mut().insert(name, value.clone());
    }
}

fn security_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=()",
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_are_its_pages_files_and_gateway_only() {
        for path in [
            "/account",
            "/account/",
            "/admin/x",
            "/console/assets/api.js",
        ] {
            assert!(is_console_path(path), "{path}");
        }
        for path in [
            "/accounts",
            "/administrator",
            "/api/admin/users",
            "/console",
            "/",
        ] {
            assert!(!is_console_path(path), "{path}");
        }
    }
}
