//! A fixed number of render threads, fed from one queue.
//!
//! Rendering is CPU-bound, so it stays off the async runtime, whose threads must keep answering
//! requests and acknowledging messages. The time limit starts when a render starts, not while it
//! waits in the queue.
//!
//! Neither engine can be interrupted from outside: minijinja stops itself when its fuel runs out,
//! but a Typst compilation runs until it ends. So a render that passes its time limit is answered
//! with an error at once, and its thread is written off: a replacement thread is started so the
//! pool keeps its full capacity, and the overdue thread exits as soon as its render returns
//! (Typst's own limits, such as 10 000 iterations per loop and a call depth of 80, end every
//! compilation eventually). At most `MAX_OVERDUE_FACTOR` times the pool's size can be overdue at
//! once; beyond that no replacement is started, so runaway templates cannot add threads without
//! bound.

use dispatcher_core::RenderError;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

struct Job {
    run: Box<dyn FnOnce() + Send>,
    state: Arc<AtomicU8>,
}

/// A job's state, changed with compare-and-swap by whichever side gets there first: the thread
/// that finishes it (`DONE`), or the waiter whose time limit ran out (`WRITTEN_OFF`, and only
/// after it reserved a place for a replacement thread). A written-off job's thread leaves the
/// pool when the render returns; a job that finished first keeps its thread.
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const WRITTEN_OFF: u8 = 2;

const MAX_OVERDUE_FACTOR: usize = 4;
/// Typst recurses deeply on nested content; give its threads room.
const STACK_SIZE: usize = 16 * 1024 * 1024;

struct Shared {
    jobs: Mutex<mpsc::Receiver<Job>>,
    /// Threads that take work: the pool's size.
    size: usize,
    /// Threads alive, including overdue ones that will exit when their render returns.
    alive: AtomicUsize,
}

#[derive(Clone)]
pub struct RenderPool {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl RenderPool {
    /// `threads` render threads (0: one per available core), each render limited to `timeout`.
    pub fn new(threads: usize, timeout: Duration) -> Self {
        let size = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            jobs: Mutex::new(rx),
            size,
            alive: AtomicUsize::new(0),
        });
        for _ in 0..size {
            shared.alive.fetch_add(1, Ordering::SeqCst);
            spawn_thread(&shared);
        }
        Self {
            tx,
            shared,
            timeout,
        }
    }

    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// Runs `f` on a render thread and waits for its result, at most `timeout` once it started.
    pub async fn run<T, F>(&self, f: F) -> Result<T, RenderError>
    where
        F: FnOnce() -> Result<T, RenderError> + Send + 'static,
        T: Send + 'static,
    {
        let (started_tx, started_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let run = Box::new(move || {
            // A waiter that has gone away (its request was cancelled) needs no render.
            if started_tx.send(()).is_err() {
                return;
            }
            let out = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(crate::error(format!("the renderer failed: {what}")))
            });
            let _ = done_tx.send(out);
        });
        self.tx
            .send(Job {
                run,
                state: state.clone(),
            })
            .map_err(|_| crate::error("the renderer has stopped"))?;
        started_rx
            .await
            .map_err(|_| crate::error("the renderer has stopped"))?;
        match tokio::time::timeout(self.timeout, done_rx).await {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => Err(crate::error("the renderer has stopped")),
            Err(_) => {
                self.write_off(&state);
                Err(crate::error(format!(
                    "rendering took longer than its limit of {:?}",
                    self.timeout
                )))
            }
        }
    }

    /// The thread running an overdue render is lost to the pool until it returns: start another.
    fn write_off(&self, state: &AtomicU8) {
        metrics::counter!("dispatcher_render_timeouts_total").increment(1);
        let cap = self.shared.size * (1 + MAX_OVERDUE_FACTOR);
        // Reserve the replacement's place first, so the cap holds however many waiters race.
        let reserved = self
            .shared
            .alive
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            tracing::warn!(
                cap,
                "too many overdue renders; not replacing another render thread"
            );
            return;
        }
        if state
            .compare_exchange(RUNNING, WRITTEN_OFF, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            spawn_thread(&self.shared);
        } else {
            // The render finished just now: its thread stays, no replacement is needed.
            self.shared.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Starts a render thread whose place in `alive` the caller has already counted.
fn spawn_thread(shared: &Arc<Shared>) {
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("render".into())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let shared = thread_shared;
            loop {
                let job = {
                    let jobs = shared.jobs.lock().unwrap_or_else(|p| p.into_inner());
                    jobs.recv()
                };
                let Ok(job) = job else { break };
                (job.run)();
                if job
                    .state
                    .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    // Written off while it ran: a replacement has taken this thread's place.
                    break;
                }
            }
            shared.alive.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        shared.alive.fetch_sub(1, Ordering::SeqCst);
        tracing::error!(error = %e, "could not start a render thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime() {
        let pool = RenderPool::new(2, Duration::from_secs(5));
        let name = pool
            .run(|| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("render"));
    }

    #[tokio::test]
    async fn an_overdue_render_fails_and_the_pool_keeps_its_capacity() {
        let pool = RenderPool::new(1, Duration::from_millis(200));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let slow = pool.run(move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
            Ok(())
        });
        let err = tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(err.message.contains("limit"), "{}", err.message);
        // The single thread is still stuck, yet the next job runs on its replacement.
        let fast = tokio::time::timeout(Duration::from_secs(10), pool.run(|| Ok(7)))
            .await
            .expect("the replacement thread runs it");
        assert_eq!(fast.unwrap(), 7);
        assert_eq!(pool.shared.alive.load(Ordering::SeqCst), 2);
        // Once the stuck render returns, its thread leaves and the pool is back to its size.
        release_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.shared.alive.load(Ordering::SeqCst) != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "surplus thread did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.run(|| Ok(8)).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn a_panicking_render_is_an_error_and_the_thread_survives() {
        let pool = RenderPool::new(1, Duration::from_secs(5));
        let err = pool.run::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert!(err.message.contains("boom"), "{}", err.message);
        assert_eq!(pool.run(|| Ok(1)).await.unwrap(), 1);
    }
}
