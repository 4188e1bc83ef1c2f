//! A fault-injecting HTTP proxy on loopback, between a program and the S3 server.
//!
//! Each request is forwarded on a connection of its own (the proxy adds
//! `Connection: close`), so faults can be placed on chosen requests:
//! - [`FaultProxy::set`]: every Nth request gets one fault;
//! - [`FaultProxy::set_rates`]: faults of several kinds at chosen rates (10 % throttling,
//!   5 % resets...), decided by a seeded hash of the request's number, so a run repeats;
//! - [`FaultProxy::pause_at`]: request N and every later one are held until the test
//!   decides (it SIGKILLs the program there: a deterministic kill point without sleeps).
//!
//! Requests are numbered in the order their heads arrive; with a program's parallel
//! uploads that order (not the decision for a given number) may vary between runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::gate::{Gate, Pause};

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
    /// Forward, but cut the response halfway through its body (mid-headers when it
    /// has none): the server did the work, the client sees a broken answer.
    TruncateBody,
    /// Forward after a delay.
    Delay(Duration),
    /// Read the request, then neither answer nor close: a server that accepts
    /// connections but is stopped or wedged (held until the proxy stops).
    Hang,
    /// Forward, send the response head and half the body, then hold the connection
    /// open without sending more: a transfer that stops moving.
    StallBody,
}

/// Faults at rates: each request gets at most one, chosen by a hash of (`seed`, its
/// number). Rates are shares of all requests (0.1 = 10 %) and add up to at most 1.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub seed: u64,
    pub slow_down: f64,
    pub internal_error: f64,
    pub reset: f64,
    pub truncate_body: f64,
    /// Share of requests delayed by `delay_by` (then forwarded).
    pub delay: f64,
    /// Share of requests left without an answer ([`Fault::Hang`]).
    pub hang: f64,
    /// Share of requests whose answer stops halfway ([`Fault::StallBody`]).
    pub stall_body: f64,
    pub delay_by: Duration,
    /// Only requests of this method (`GET`, `PUT`, `DELETE`...); `None`: all.
    pub method: Option<String>,
    /// Only requests whose target (path and query) contains this (`/data/`: pack
    /// files of a restic repository); `None`: all.
    pub path: Option<String>,
    /// At most this many faults in a row for one request (same method, target and
    /// range): a program that makes more attempts always gets through, so a test of
    /// "completes through retries" cannot flake. `None`: no limit.
    pub max_in_a_row: Option<u32>,
}

impl Rates {
    /// The mix: 10 % 503 SlowDown, 5 % resets, 5 % truncated bodies, 5 % of
    /// requests 200 ms late, at most two faults in a row per request.
    pub fn mix(seed: u64) -> Rates {
        Rates {
            seed,
            slow_down: 0.10,
            internal_error: 0.0,
            reset: 0.05,
            truncate_body: 0.05,
            delay: 0.05,
            hang: 0.0,
            stall_body: 0.0,
            delay_by: Duration::from_millis(200),
            method: None,
            path: None,
            max_in_a_row: Some(2),
        }
    }

    fn pick(&self, n: u64) -> Option<Fault> {
        let u = unit(self.seed, n);
        let mut edge = 0.0;
        for (rate, fault) in [
            (self.slow_down, Fault::SlowDown),
            (self.internal_error, Fault::InternalError),
            (self.reset, Fault::Reset),
            (self.truncate_body, Fault::TruncateBody),
            (self.delay, Fault::Delay(self.delay_by)),
            (self.hang, Fault::Hang),
            (self.stall_body, Fault::StallBody),
        ] {
            edge += rate;
            if u < edge {
                return Some(fault);
            }
        }
        None
    }
}

/// A uniform number in [0, 1) from (seed, n): splitmix64.
fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Faults injected so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub slow_down: u64,
    pub internal_error: u64,
    pub reset: u64,
    pub truncate: u64,
    pub delay: u64,
    /// Requests left hanging ([`Fault::Hang`], [`Fault::StallBody`]).
    pub hang: u64,
}

impl Injected {
    pub fn total(&self) -> u64 {
        self.slow_down + self.internal_error + self.reset + self.truncate + self.delay + self.hang
    }
}

#[derive(Default)]
enum Mode {
    #[default]
    Pass,
    Every(u64, Fault),
    Rates(Rates),
}

#[derive(Default)]
struct State {
    mode: Mode,
    /// Faults in a row per request key (rates with `max_in_a_row`).
    in_a_row: HashMap<String, u32>,
    /// Hold requests from this number on.
    pause: Option<(u64, Arc<Gate>)>,
}

struct Shared {
    state: Mutex<State>,
    requests: AtomicU64,
    injected: Mutex<Injected>,
}

impl Shared {
    fn count(&self, f: Fault) {
        let mut i = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        match f {
            Fault::SlowDown => i.slow_down += 1,
            Fault::InternalError => i.internal_error += 1,
            Fault::Reset => i.reset += 1,
            Fault::Truncate(_) | Fault::TruncateBody => i.truncate += 1,
            Fault::Delay(_) => i.delay += 1,
            Fault::Hang | Fault::StallBody => i.hang += 1,
        }
    }

    /// The fault for request `n` (method, key), if any.
    fn decide(&self, n: u64, method: &str, target: &str, key: &str) -> Option<Fault> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fault = match &st.mode {
            Mode::Pass => None,
            Mode::Every(every, f) => (*every > 0 && n.is_multiple_of(*every)).then_some(*f),
            Mode::Rates(r) => {
                let limit = r.max_in_a_row;
                let wanted = r
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && r.path.as_deref().is_none_or(|p| target.contains(p));
                let picked = wanted.then(|| r.pick(n)).flatten();
                // Delays are no failure: they do not count towards the limit.
                let failing = picked.filter(|f| !matches!(f, Fault::Delay(_)));
                match (failing, limit) {
                    (Some(_), Some(max)) => {
                        let c = st.in_a_row.entry(key.to_string()).or_default();
                        if *c >= max {
                            *c = 0;
                            None
                        } else {
                            *c += 1;
                            picked
                        }
                    }
                    (None, Some(_)) => {
                        st.in_a_row.remove(key);
                        picked
                    }
                    _ => picked,
                }
            }
        };
        drop(st);
        if let Some(f) = fault {
            self.count(f);
        }
        fault
    }
}

/// The running proxy. Its runtime lives on a thread of its own, so it works from
/// `#[test]` and `#[tokio::test]` alike; dropping it stops the proxy.
pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (host:port) that injects nothing yet.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            injected: Mutex::new(Injected::default()),
        });
        let (s, up) = (shared.clone(), upstream.to_string());
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let Ok((conn, _)) = accepted else { break };
                                let (s, up) = (s.clone(), up.clone());
                                tokio::spawn(async move {
                                    let _ = handle(conn, &up, &s).await;
                                });
                            }
                            _ = &mut stop => break,
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .unwrap();
        FaultProxy {
            endpoint,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on every `every`-th request gets `fault` (None: all pass).
    pub fn set(&self, every: u64, fault: Option<Fault>) {
        self.state().mode = match fault {
            Some(f) if every > 0 => Mode::Every(every, f),
            _ => Mode::Pass,
        };
    }

    /// From now on faults at `rates` (replaces [`FaultProxy::set`]'s plan).
    pub fn set_rates(&self, rates: Rates) {
        let mut st = self.state();
        st.mode = Mode::Rates(rates);
        st.in_a_row.clear();
    }

    /// No more faults (a pause in effect stays).
    pub fn clear(&self) {
        self.state().mode = Mode::Pass;
    }

    /// Holds request number `n` (as counted by [`FaultProxy::requests`]; `requests() + 1`
    /// is the next one) and every later request, until the returned [`Pause`] is
    /// released or dropped (dropped: the held requests are never forwarded).
    pub fn pause_at(&self, n: u64) -> Pause {
        let gate = Gate::new();
        self.state().pause = Some((n, gate.clone()));
        Pause::new(gate)
    }

    /// Requests received so far (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Faults injected so far (all kinds).
    pub fn faults(&self) -> u64 {
        self.injected().total()
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> Injected {
        *self
            .shared
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// `Content-Length` of a response head, if given.
fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

async fn handle(mut client: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
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
    let n = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let text = String::from_utf8_lossy(&head[..body_start]).into_owned();
    let mut first = text.split("\r\n").next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let range = text
        .split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
        .unwrap_or("");
    let key = format!("{method} {target} {range}");

    let gate = {
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pause
            .as_ref()
            .filter(|(at, g)| n >= *at && g.holding())
            .map(|(_, g)| g.clone())
    };
    if let Some(g) = gate
        && !g.hold().await
    {
        // Dropped: the request never reaches the server.
        return Ok(());
    }

    let fault = shared.decide(n, &method, &target, &key);
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
        Some(Fault::Hang) => {
            // Keep the connection (the task owns it) and say nothing.
            std::future::pending::<()>().await;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    // Forward with `Connection: close` so the next request comes on a new connection.
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
            Some(Fault::TruncateBody | Fault::StallBody) => {
                let mut got = Vec::new();
                let mut b = [0u8; 8192];
                let mut cut = None;
                loop {
                    if let Some(c) = cut
                        && got.len() >= c
                    {
                        break;
                    }
                    let n = sr.read(&mut b).await?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                    if cut.is_none()
                        && let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n")
                    {
                        cut = Some(match content_length(&got[..i]) {
                            Some(len) if len > 1 => i + 4 + len / 2,
                            _ => i / 2,
                        });
                    }
                }
                let c = cut.unwrap_or(got.len() / 2).min(got.len());
                cw.write_all(&got[..c]).await?;
                if fault == Some(Fault::StallBody) {
                    cw.flush().await?;
                    std::future::pending::<()>().await;
                }
                Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_met_and_repeat_with_the_seed() {
        let r = Rates::mix(42);
        let picks: Vec<Option<Fault>> = (1..=20_000).map(|n| r.pick(n)).collect();
        let share = |f: fn(&Fault) -> bool| {
            picks.iter().flatten().filter(|p| f(p)).count() as f64 / picks.len() as f64
        };
        for (got, want) in [
            (share(|f| *f == Fault::SlowDown), r.slow_down),
            (share(|f| *f == Fault::Reset), r.reset),
            (share(|f| *f == Fault::TruncateBody), r.truncate_body),
            (share(|f| matches!(f, Fault::Delay(_))), r.delay),
        ] {
            assert!((got - want).abs() < 0.01, "{got} vs {want}");
        }
        let again: Vec<Option<Fault>> = (1..=20_000).map(|n| Rates::mix(42).pick(n)).collect();
        assert_eq!(picks, again, "same seed, same faults");
        let other: Vec<Option<Fault>> = (1..=20_000).map(|n| Rates::mix(43).pick(n)).collect();
        assert_ne!(picks, other);
    }
}
