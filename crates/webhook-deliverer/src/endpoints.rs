//! Per-endpoint admission: how many requests an endpoint gets at once, how fast, and whether it
//! gets any (its circuit breaker).
//!
//! A burst of deliveries for one small receiver used to go out at once and overflow its listen
//! backlog; the failures opened the breaker, and the held deliveries came back as another burst.
//! Here each endpoint (a URL origin) has an adaptive in-flight limit ([`Aimd`]) enforced by a
//! fair semaphore, so deliveries wait their turn in arrival order and the receiver sees at most
//! what it has shown it can take. While a probe of a half-open circuit is out, the endpoint's
//! other deliveries wait for its answer instead of being held again; after a successful probe the
//! limit starts from one, so held deliveries coming back never arrive as a burst.
//!
//! Each replica keeps its own state: a struggling endpoint is learned by every replica within a
//! few requests, and the hot path needs no shared state.

use dispatcher_core::aimd::Aimd;
use dispatcher_core::circuit::{Admission, BreakerState, Circuit, Transition};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How one request ended, as far as the endpoint's limits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Success,
    /// A timeout, a connection error, or a 429/503: the receiver is overwhelmed.
    Overloaded,
    /// Any other answer: the receiver is up, but the delivery failed.
    Failed,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub initial_in_flight: usize,
    pub max_in_flight: usize,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Longest wait for a probe's answer before a delivery is held instead.
    pub probe_wait: Duration,
}

struct State {
    aimd: Aimd,
    circuit: Circuit,
    /// Permits currently issued to the semaphore (the limit it enforces).
    issued: usize,
    /// Permits to retire as they come back, when the limit fell below those in use.
    debt: usize,
    /// Held deliveries so far, to spread their return over the delay steps.
    held: usize,
    last_used: Instant,
}

pub struct Endpoint {
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    probe_answered: Notify,
    limits: Limits,
}

/// Admission to one endpoint: send now (holding a permit), or hold the delivery back.
pub enum Entry {
    Send(Permit),
    /// The circuit is open; `spread` (0, 1, 2, ...) numbers this endpoint's held deliveries, to
    /// spread their return.
    Hold {
        spread: usize,
    },
}

impl Endpoint {
    fn new(limits: Limits) -> Self {
        let aimd = Aimd::new(limits.initial_in_flight, limits.max_in_flight);
        let issued = aimd.limit();
        Self {
            semaphore: Arc::new(Semaphore::new(issued)),
            state: Mutex::new(State {
                aimd,
                circuit: Circuit::default(),
                issued,
                debt: 0,
                held: 0,
                last_used: Instant::now(),
            }),
            probe_answered: Notify::new(),
            limits,
        }
    }

    /// Waits for this endpoint's turn. Deliveries are admitted in the order they ask.
    pub async fn enter(self: &Arc<Self>) -> Entry {
        let deadline = Instant::now() + self.limits.probe_wait;
        loop {
            let answered = self.probe_answered.notified();
            {
                let mut s = self.state.lock().expect("endpoint state");
                let now = Instant::now();
                s.last_used = now;
                match s.circuit.admit(now) {
                    Admission::Attempt | Admission::Probe => break,
                    Admission::Hold if s.circuit.probing() && now < deadline => {}
                    Admission::Hold => {
                        s.held += 1;
                        return Entry::Hold { spread: s.held };
                    }
                }
            }
            // A probe is out: its answer decides.
            let _ = tokio::time::timeout_at(deadline.into(), answered).await;
        }
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Entry::Send(Permit {
            endpoint: self.clone(),
            permit: Some(permit),
            started: Instant::now(),
        })
    }

    /// Brings the semaphore to the current limit.
    fn resize(&self, s: &mut State) {
        let target = s.aimd.limit();
        if target > s.issued {
            let mut grow = target - s.issued;
            // Retire debt first: those permits are still out.
            let paid = grow.min(s.debt);
            s.debt -= paid;
            grow -= paid;
            self.semaphore.add_permits(grow);
        } else if target < s.issued {
            let shrink = s.issued - target;
            let forgotten = self.semaphore.forget_permits(shrink);
            s.debt += shrink - forgotten;
        }
        s.issued = target;
    }

    fn finish(&self, started: Instant, outcome: Outcome) -> Transition {
        let now = Instant::now();
        let mut s = self.state.lock().expect("endpoint state");
        match outcome {
            Outcome::Success => s.aimd.on_success(),
            Outcome::Overloaded => s.aimd.on_overload(started, now),
            Outcome::Failed => {}
        }
        let transition = s.circuit.record(
            outcome == Outcome::Success,
            now,
            self.limits.breaker_threshold,
            self.limits.breaker_cooldown,
        );
        if transition == Transition::Closed {
            // Back from an outage: one request at a time, growing with each success.
            s.aimd.restart_slowly();
            s.held = 0;
        }
        self.resize(&mut s);
        drop(s);
        self.probe_answered.notify_waiters();
        transition
    }

    fn give_back(&self, permit: OwnedSemaphorePermit) {
        let mut s = self.state.lock().expect("endpoint state");
        if s.debt > 0 {
            s.debt -= 1;
            permit.forget();
        }
    }

    pub fn breaker(&self) -> BreakerState {
        self.state
            .lock()
            .expect("endpoint state")
            .circuit
            .state(Instant::now())
    }

    #[cfg(test)]
    fn limit(&self) -> usize {
        self.state.lock().expect("endpoint state").aimd.limit()
    }
}

/// The right to send one request to an endpoint. Report how it went with [`Permit::finish`];
/// dropped unreported (a cancelled request), it only frees its place.
pub struct Permit {
    endpoint: Arc<Endpoint>,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
}

impl Permit {
    pub fn finish(self, outcome: Outcome) -> Transition {
        self.endpoint.finish(self.started, outcome)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.endpoint.give_back(p);
        }
    }
}

/// Every endpoint this replica delivers to.
///
/// A map that forgets only what nothing depends on, not an evicting cache: an endpoint evicted
/// while deliveries hold or wait for its permits, or while its circuit is open, would be created
/// again beside the old one, and the receiver would get both semaphores' worth of requests (or a
/// burst the open circuit was holding back). Past `KEEP`, idle, healthy endpoints nobody holds
/// are dropped; the rest are in use and must stay, so the map is bounded by the endpoints in use.
pub struct Endpoints {
    map: Mutex<HashMap<String, Arc<Endpoint>>>,
    limits: Limits,
}

/// Endpoints kept before idle, healthy ones are forgotten.
const KEEP: usize = 10_000;
/// How long an endpoint must have been idle to be forgotten.
const IDLE: Duration = Duration::from_secs(600);

impl Endpoints {
    pub fn new(limits: Limits) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// The endpoint of `url`: its origin (scheme, host and port), the unit a receiver's capacity
    /// belongs to.
    pub fn get(&self, url: &str) -> Arc<Endpoint> {
        let key = url::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| url.to_owned());
        let mut map = self.map.lock().expect("endpoints");
        if map.len() >= KEEP && !map.contains_key(&key) {
            // Forget endpoints nobody is using, that are healthy and idle: their state is the
            // state a new endpoint starts with anyway, or close to it.
            let now = Instant::now();
            map.retain(|_, e| {
                Arc::strong_count(e) > 1 || {
                    let s = e.state.lock().expect("endpoint state");
                    s.circuit.is_open() || now.duration_since(s.last_used) < IDLE
                }
            });
        }
        map.entry(key)
            .or_insert_with(|| Arc::new(Endpoint::new(self.limits)))
            .clone()
    }

    /// Endpoints whose circuit is open or half-open.
    pub fn open(&self) -> usize {
        self.map
            .lock()
            .expect("endpoints")
            .values()
            .filter(|e| e.breaker() != BreakerState::Closed)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(initial: usize) -> Limits {
        Limits {
            initial_in_flight: initial,
            max_in_flight: 16,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(200),
            probe_wait: Duration::from_secs(2),
        }
    }

    async fn send(e: &Arc<Endpoint>) -> Permit {
        match e.enter().await {
            Entry::Send(p) => p,
            Entry::Hold { .. } => panic!("held"),
        }
    }

    #[tokio::test]
    async fn at_most_the_limit_is_in_flight_and_the_rest_wait_in_order() {
        let e = Arc::new(Endpoint::new(limits(2)));
        let a = send(&e).await;
        let _b = send(&e).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..3 {
            let e = e.clone();
            let order = order.clone();
            waiting.push(tokio::spawn(async move {
                let p = send(&e).await;
                order.lock().unwrap().push(i);
                p.finish(Outcome::Success);
            }));
            // Let each one queue before the next.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(order.lock().unwrap().is_empty(), "none passes the limit");
        a.finish(Outcome::Success);
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2], "in arrival order");
    }

    #[tokio::test]
    async fn an_overload_halves_the_permits_even_while_they_are_out() {
        let e = Arc::new(Endpoint::new(limits(8)));
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(send(&e).await);
        }
        let first = out.pop().unwrap();
        first.finish(Outcome::Overloaded);
        assert_eq!(e.limit(), 4);
        // The other seven come back; only four may be out afterwards.
        out.clear();
        let mut again = Vec::new();
        for _ in 0..4 {
            again.push(send(&e).await);
        }
        let fifth = tokio::time::timeout(Duration::from_millis(100), e.enter()).await;
        assert!(fifth.is_err(), "a fifth request waits");
    }

    #[tokio::test]
    async fn an_open_circuit_holds_then_one_probe_decides_for_the_waiting() {
        let e = Arc::new(Endpoint::new(limits(4)));
        for _ in 0..3 {
            send(&e).await.finish(Outcome::Failed);
        }
        assert_eq!(e.breaker(), BreakerState::Open);
        assert!(matches!(e.enter().await, Entry::Hold { spread: 1 }));
        assert!(matches!(e.enter().await, Entry::Hold { spread: 2 }));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let probe = send(&e).await;
        assert_eq!(e.breaker(), BreakerState::HalfOpen);
        // Others wait for the probe's answer rather than being held again.
        let e2 = e.clone();
        let waiter = tokio::spawn(async move { matches!(e2.enter().await, Entry::Send(_)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        assert_eq!(probe.finish(Outcome::Success), Transition::Closed);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap());
        assert_eq!(e.limit(), 1, "back from an outage one at a time");
    }
}
