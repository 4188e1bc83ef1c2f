//! A fault-injecting HTTP proxy on loopback, between a program and the S3 server.
//!
//! Each request is forwarded on a connection of its own (the proxy adds
//! `Connection: close`), so faults can be placed on chosen requests: every Nth request
//! gets the configured fault, the others pass. Deterministic, so tests are repeatable.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 SlowDown` (S3's throttling answer) without forwarding.
    SlowDown,
    /// Answer `500 InternalError` without forwarding.
    InternalError,
    /// Close the connection without an answer.
    Reset,
    /// Forward, but cut the response after this many bytes.
    Truncate(usize),
    /// Forward after a delay.
    Delay(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    every: u64,
    fault: Option<Fault>,
}

pub struct FaultProxy {
    pub endpoint: String,
    plan: Arc<Mutex<Plan>>,
    requests: Arc<AtomicU64>,
    faults: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (host:port) that injects nothing yet.
    pub fn start(upstream: &str) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let plan = Arc::new(Mutex::new(Plan {
            every: 0,
            fault: None,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicU64::new(0));
        let (p, r, f, up) = (
            plan.clone(),
            requests.clone(),
            faults.clone(),
            upstream.to_string(),
        );
        rt.spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (p, r, f, up) = (p.clone(), r.clone(), f.clone(), up.clone());
                tokio::spawn(async move {
                    let _ = handle(conn, &up, &p, &r, &f).await;
                });
            }
        });
        FaultProxy {
            endpoint,
            plan,
            requests,
            faults,
            _rt: rt,
        }
    }

    /// From now on every `every`-th request gets `fault` (None: all pass).
    pub fn set(&self, every: u64, fault: Option<Fault>) {
        *self.plan.lock().unwrap() = Plan { every, fault };
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }
}

async fn handle(
    mut client: TcpStream,
    upstream: &str,
    plan: &Mutex<Plan>,
    requests: &AtomicU64,
    faults: &AtomicU64,
) -> std::io::Result<()> {
    // Read the request head.
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
    let p = *plan.lock().unwrap();
    let fault = match p.fault {
        Some(f) if p.every > 0 && n.is_multiple_of(p.every) => {
            faults.fetch_add(1, Ordering::Relaxed);
            Some(f)
        }
        _ => None,
    };
    let answer = |status: &str, code: &str| {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::SlowDown) => {
            return client
                .write_all(answer("503 Slow Down", "SlowDown").as_bytes())
                .await;
        }
        Some(Fault::InternalError) => {
            return client
                .write_all(answer("500 Internal Server Error", "InternalError").as_bytes())
                .await;
        }
        Some(Fault::Reset) => return Ok(()),
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    // Forward with `Connection: close` so the next request comes on a new connection.
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let mut new_head = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(new_head.as_bytes()).await?;
    server.write_all(&head[body_start..]).await?;
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = tokio::io::copy(&mut cr, &mut sw);
    let down = async {
        match fault {
            Some(Fault::Truncate(limit)) => {
                let mut sent = 0;
                let mut b = [0u8; 8192];
                while sent < limit {
                    let n = sr.read(&mut b).await?;
                    if n == 0 {
                        break;
                    }
                    let k = n.min(limit - sent);
                    cw.write_all(&b[..k]).await?;
                    sent += k;
                }
                Ok::<_, std::io::Error>(())
            }
            _ => tokio::io::copy(&mut sr, &mut cw).await.map(|_| ()),
        }
    };
    // The response ends when the server closes; the request side may still be open.
    tokio::select! {
        r = down => r?,
        _ = async { let _ = up.await; std::future::pending::<()>().await } => {}
    }
    Ok(())
}
