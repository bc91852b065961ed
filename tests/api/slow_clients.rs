//! Slow and greedy clients, over raw sockets: partial headers, a stalled body, an idle
//! kept-alive connection and a flood of connections each end instead of holding the server.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connects")
}

/// Reads until the server closes the connection (at most `limit`); returns what it sent and
/// how long it took.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn partial_headers_are_cut_off() {
    let app = spawn_app_with(|f| f.merge(("http.header_read_timeout", "1s"))).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let (_, took) = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let app = spawn_app_with(|f| f.merge(("http.header_read_timeout", "1s"))).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, took) = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took >= Duration::from_millis(900),
        "closed only when idle: {took:?}"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let app = spawn_app_with(|f| f.merge(("http.request_timeout", "1s"))).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"email\": ",
        )
        .await
        .unwrap();
    let (answer, took) = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_at_once() {
    let app = spawn_app_with(|f| {
        f.merge(("http.max_connections", 2))
            .merge(("http.header_read_timeout", "30s"))
    })
    .await;
    let first = connect(&app).await;
    let _second = connect(&app).await;
    // Both are accepted (and idle); the third is closed without a word.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect(&app).await;
    let (answer, took) = until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "{answer}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A slot freed is a slot for the next client.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = connect(&app).await;
    next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut next, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
