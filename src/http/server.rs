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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::http::Request;
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

/// Serves `service` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (within `shutdown_grace`).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
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
        let handler = warp::hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            let mut service = service.clone();
            async move {
                match tokio::time::timeout(request_timeout, service.call(request)).await {
                    Ok(response) => response,
                    Err(_) => Ok(ApiError::RequestTimeout.to_response()),
                }
            }
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
