//! The listener loop. warp's own server builds hyper without a timer, so a client that sends
//! half its headers, stalls its body or idles on a kept-alive connection holds a connection
//! (and its task) forever. Here warp's routes are served through hyper with a timer:
//!
//! - `http.header_read_timeout`: the headers of each request must arrive within it. hyper also
//!   applies it to the wait for the next request on a kept-alive connection, so an idle
//!   connection is closed after it too.
//! - `http.request_timeout`: the whole request, body and handler included; past it the client
//!   gets `408 request_timeout`.
//! - `http.max_connections`: beyond it a new connection is closed at once (the kernel's backlog
//!   is no place to queue a flood).
//!
//! HTTP/1.1 only: no protocol sniffing, which has no timeout of its own.
//!
//! Every request gets a request id (`X-Request-Id`: the client's when it is a sane token, a
//! new UUID otherwise), echoed on the response and carried by every log line of the request
//! (a `request` span), and one log line when it ends: method, route template (ids replaced, so
//! a path never carries a secret or explodes a log index), status, latency, request id and
//! client address.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use tracing::Instrument;
use warp::http::{HeaderValue, Request};
use warp::hyper::body::Incoming;
use warp::hyper::server::conn::http1;

use crate::error::ApiError;

/// The peer of the connection a request came on; handlers read it as the client's address
/// (warp's `addr::remote` only works inside warp's own server).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The client's address from the connection's peer and its `X-Forwarded-For` (see
/// `http::rate`: only a trusted proxy's forwarding is believed).
pub type ClientIp = Arc<dyn Fn(IpAddr, Option<&str>) -> IpAddr + Send + Sync>;

const REQUEST_ID: &str = "x-request-id";

/// The client's request id when it is a sane token (1 to 64 of letters, digits and `._:-`),
/// a new UUID otherwise: a header value that would break a log line is never echoed.
fn request_id(request: &Request<Incoming>) -> HeaderValue {
    let sane = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned);
    let id = sane.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A request's method as a metrics label: the standard ones, else `OTHER` (hyper accepts any
/// token as a method, and each would mint a series).
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (within `shutdown_grace`).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    client_ip: ClientIp,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: back off a moment rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: http.max_connections reached");
            drop(tcp);
            continue;
        };
        let service = service.clone();
        let request_timeout = limits.request_timeout;
        let client_ip = client_ip.clone();
        let handler = warp::hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let id = request_id(&request);
            request.headers_mut().insert(REQUEST_ID, id.clone());
            let method = request.method().clone();
            let route = super::route_template(request.uri().path());
            let forwarded = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let client = client_ip(peer.ip(), forwarded.as_deref());
            let span =
                tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
            let mut service = service.clone();
            let started = Instant::now();
            async move {
                let mut response =
                    match tokio::time::timeout(request_timeout, service.call(request)).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => ApiError::RequestTimeout.to_response(),
                    };
                response.headers_mut().insert(REQUEST_ID, id);
                let status = response.status();
                // Paths of no route are one label, or a scanner would mint series at will.
                let label = if super::is_route(&route) {
                    route.clone()
                } else {
                    "unmatched".to_owned()
                };
                metrics::counter!("finsec_http_requests_total", "route" => label.clone(),
                    "method" => method_label(&method), "status" => status.as_str().to_owned())
                .increment(1);
                metrics::histogram!("finsec_http_request_duration_seconds", "route" => label)
                    .record(started.elapsed().as_secs_f64());
                tracing::info!(
                    method = %method,
                    route = %route,
                    status = response.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    client_ip = %client,
                    "request"
                );
                Ok::<_, Infallible>(response)
            }
            .instrument(span)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), handler));
        tokio::spawn(async move {
            // Errors here are clients going away or timing out: not ours to log loudly.
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running at shutdown");
    }
}
