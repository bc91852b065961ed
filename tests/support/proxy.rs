//! A TCP relay between the service and a server (the bus, or MariaDB) that a test can break
//! three ways: [`cut`](Partition::cut) stops bytes both ways without closing anything, as a
//! network partition does, and nobody is told, until [`heal`](Partition::heal) lets them flow
//! again (held, not lost, as TCP would retransmit them); [`down`](Partition::down) closes
//! every connection and refuses new ones, as a server that has stopped does, until
//! [`up`](Partition::up); [`delay`](Partition::delay) adds latency to every chunk relayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Partition {
    pub port: u16,
    cut: watch::Sender<bool>,
    delay_ms: Arc<AtomicU64>,
    down: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Relays 127.0.0.1:`port` (returned) to 127.0.0.1:`target`.
    pub async fn relay_to(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay port");
        let port = listener.local_addr().unwrap().port();
        let (cut, is_cut) = watch::channel(false);
        let (down, is_down) = watch::channel(false);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *is_down.borrow() {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let faults = Faults {
                    cut: is_cut.clone(),
                    delay_ms: delay.clone(),
                    down: is_down.clone(),
                };
                tokio::spawn(pipe(cr, sw, faults.clone()));
                tokio::spawn(pipe(sr, cw, faults));
            }
        });
        Self {
            port,
            cut,
            delay_ms,
            down,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// From now on nothing gets through, in either direction.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// The partition ends: what was held flows on.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Every relayed connection is closed and new ones are closed as they arrive.
    pub fn down(&self) {
        self.down.send_replace(true);
    }

    /// New connections are relayed again.
    pub fn up(&self) {
        self.down.send_replace(false);
    }

    /// Every chunk relayed from now on waits this long first (zero: none).
    pub fn delay(&self, latency: std::time::Duration) {
        self.delay_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Faults {
    cut: watch::Receiver<bool>,
    delay_ms: Arc<AtomicU64>,
    down: watch::Receiver<bool>,
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Faults,
) {
    let Faults {
        mut cut,
        delay_ms,
        mut down,
    } = faults;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Returning drops both halves: the connection closes.
            _ = down.wait_for(|down| *down) => return,
        };
        // Cut: hold the bytes (and, by not reading, everything behind them) until healed.
        tokio::select! {
            _ = cut.wait_for(|cut| !*cut) => {}
            _ = down.wait_for(|down| *down) => return,
        }
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
