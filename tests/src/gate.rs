//! A point where requests are held until the test decides what becomes of them: the
//! fault proxy's pause at request N ([`crate::proxy::FaultProxy::pause_at`]) and the
//! fake API's hold fault ([`crate::fakeapi::Fault::hold`]).
//!
//! The test waits for the first held request (an event, not a sleep), acts — typically
//! SIGKILLs the program that sent it, which is then stopped at a precise point of its
//! work — and then lets the held requests through ([`Pause::release`]) or drops them
//! (dropping the [`Pause`]): dropped requests are never executed. The decision ends the
//! pause: requests that arrive after it pass as usual (the next run of the program).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The server side of a pause (opaque outside the testkit).
pub struct Gate {
    held: Mutex<u64>,
    arrived: Condvar,
    /// `None` while holding; `Some(true)`: let through, `Some(false)`: drop.
    decision: tokio::sync::watch::Sender<Option<bool>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("decision", &*self.decision.borrow())
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub(crate) fn new() -> Arc<Gate> {
        Arc::new(Gate {
            held: Mutex::new(0),
            arrived: Condvar::new(),
            decision: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Whether the pause is still undecided (holding).
    pub(crate) fn holding(&self) -> bool {
        self.decision.borrow().is_none()
    }

    /// One request arrives: it waits for the decision. `true`: go on, `false`: drop it.
    pub(crate) async fn hold(&self) -> bool {
        let mut rx = self.decision.subscribe();
        if rx.borrow_and_update().is_some() {
            return true;
        }
        {
            let mut n = self.held.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            self.arrived.notify_all();
        }
        match rx.wait_for(Option::is_some).await {
            Ok(d) => d.unwrap_or(false),
            Err(_) => false,
        }
    }

    fn decide(&self, go: bool) {
        self.decision.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(go);
                true
            } else {
                false
            }
        });
    }
}

/// The test's handle on a pause. Dropped without [`Pause::release`], it drops the
/// held requests (their program was killed, or the test gave up).
pub struct Pause {
    gate: Arc<Gate>,
}

impl Pause {
    pub(crate) fn new(gate: Arc<Gate>) -> Pause {
        Pause { gate }
    }

    /// Requests held so far.
    pub fn held(&self) -> u64 {
        *self.gate.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until a request is held; `false` when none came within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        wait_on(&self.gate, timeout)
    }

    /// [`Pause::wait`] for async tests (on a blocking thread, so the runtime goes on).
    pub async fn wait_async(&self, timeout: Duration) -> bool {
        let gate = self.gate.clone();
        tokio::task::spawn_blocking(move || wait_on(&gate, timeout))
            .await
            .unwrap_or(false)
    }

    /// Lets the held requests go on; the pause is over.
    pub fn release(self) {
        self.gate.decide(true);
    }
}

fn wait_on(gate: &Gate, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut n = gate.held.lock().unwrap_or_else(|e| e.into_inner());
    while *n == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        n = gate
            .arrived
            .wait_timeout(n, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.gate.decide(false);
    }
}
