//! A clean stop: on SIGTERM the service stops accepting, lets the request in flight finish,
//! then stops its actors and exits 0.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // The embedded store: the demo users, nothing to set up.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_finsec"))
        .arg("--config-dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
        .env("FINSEC__HTTP__PORT", port.to_string())
        .env("FINSEC__PASSWORD__LOG_N", "4")
        .env("FINSEC__HTTP__SHUTDOWN_GRACE", "5s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("finsec starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the service did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A login whose body is half sent when SIGTERM arrives: it is in flight.
    let body = br#"{"email": "john.doe@example.com", "password": "password123"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // No longer accepting.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    // The request in flight completes.
    stream.write_all(&body[20..]).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if response.windows(12).any(|w| w == b"access_token") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the request in flight");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("access_token"), "{response}");
    drop(stream);

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the service exits after the grace")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
