//! Bounded plugin calls: every `init` and `process` ends by its deadline,
//! whatever the plugin does.
//!
//! Two ways a call can overrun, two mechanisms:
//! - **Running wasm** (a loop): compiled code checks the engine's epoch at
//!   loop heads and function entries. The [`Watchdog`] thread advances the
//!   epoch when the earliest in-flight deadline passes; the store's epoch
//!   callback (see `runtime`) then compares the clock with its own deadline
//!   and traps with [`wasmtime::Trap::Interrupt`].
//! - **Waiting in a host call** (WASI `poll`, a sleep): no epoch check runs
//!   there. WASI is linked asynchronously, so such a wait is a pending
//!   future; [`Calls::run`] drives the call on a small single-threaded tokio
//!   runtime under a timeout of the deadline plus [`WALL_MARGIN`], and drops
//!   the call when it fires. A dropped call leaves the store unusable, so the
//!   caller drops the instance, as after any trap.
//!
//! Nothing here wakes up between calls: the watchdog sleeps without a
//! timeout while no call is in flight, and the tokio runtime owns no thread
//! (it runs on the caller's thread inside `block_on`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How long past its CPU budget a call may wait in a host function before
/// it is abandoned. Loops stop at the budget itself (the watchdog); this
/// only bounds waits that no epoch check can reach.
pub(crate) const WALL_MARGIN: Duration = Duration::from_millis(100);

/// Runs plugin calls within their deadlines.
pub struct Calls {
    /// `None` only while dropping.
    executor: Option<tokio::runtime::Runtime>,
    watchdog: Arc<Watchdog>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        // A runtime must not be dropped where blocking is not allowed, and
        // the last plugin host may well be dropped on an async task.
        if let Some(executor) = self.executor.take() {
            executor.shutdown_background();
        }
        self.watchdog.stop();
    }
}

impl Calls {
    /// A runtime to drive calls and a watchdog thread for `engine`.
    pub fn new(engine: &Engine) -> std::io::Result<Calls> {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // WASI file reads (granted directories) run on blocking threads;
            // keeping them across a 10 s sampling interval saves a thread
            // start per sample and a wake-up to retire it.
            .thread_keep_alive(Duration::from_secs(60))
            .thread_name("plugin-io")
            .build()?;
        let watchdog = Watchdog::start(engine.clone())?;
        Ok(Calls {
            executor: Some(executor),
            watchdog,
        })
    }

    /// Drives `call` to completion on this thread, or gives up on it at
    /// `deadline` + [`WALL_MARGIN`] (`None`). The store the call runs on
    /// must have its own deadline set to `deadline` (`runtime::arm`), so
    /// that running wasm traps at `deadline` itself.
    ///
    /// Blocks the calling thread: call it where blocking is allowed (a
    /// plain thread, `spawn_blocking`, `block_in_place`), never on an async
    /// worker.
    pub fn run<F: Future>(&self, deadline: Instant, call: F) -> Option<F::Output> {
        let Some(executor) = &self.executor else {
            return None;
        };
        let _armed = self.watchdog.arm(deadline);
        let give_up = tokio::time::Instant::from_std(deadline + WALL_MARGIN);
        executor.block_on(async { tokio::time::timeout_at(give_up, call).await.ok() })
    }
}

/// Advances the engine's epoch when an in-flight call's deadline passes.
struct Watchdog {
    engine: Engine,
    state: Mutex<Deadlines>,
    wake: Condvar,
}

#[derive(Default)]
struct Deadlines {
    /// In-flight calls by (deadline, call number).
    armed: BTreeMap<(Instant, u64), ()>,
    next_id: u64,
    /// What the watchdog thread sleeps until; `None` while it sleeps
    /// without a timeout.
    sleeping_until: Option<Instant>,
    stopped: bool,
}

/// Removes its deadline when the call ends, however it ends.
struct Armed<'a> {
    watchdog: &'a Watchdog,
    key: (Instant, u64),
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let mut state = self.watchdog.lock();
        state.armed.remove(&self.key);
        // If the watchdog sleeps towards this deadline, let it plan again
        // now, while the call's tick is still going, rather than wake up
        // for nothing later, between ticks.
        if state.sleeping_until == Some(self.key.0) {
            self.watchdog.wake.notify_one();
        }
    }
}

impl Watchdog {
    fn start(engine: Engine) -> std::io::Result<Arc<Watchdog>> {
        let watchdog = Arc::new(Watchdog {
            engine,
            state: Mutex::new(Deadlines::default()),
            wake: Condvar::new(),
        });
        let thread = watchdog.clone();
        std::thread::Builder::new()
            .name("plugin-watchdog".into())
            .spawn(move || thread.watch())?;
        Ok(watchdog)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        // Every update is a single map operation; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, deadline: Instant) -> Armed<'_> {
        let mut state = self.lock();
        let key = (deadline, state.next_id);
        state.next_id += 1;
        state.armed.insert(key, ());
        // Wake the thread only when it would otherwise sleep past this
        // deadline.
        if state.sleeping_until.is_none_or(|t| deadline < t) {
            self.wake.notify_one();
        }
        Armed {
            watchdog: self,
            key,
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_one();
    }

    fn watch(&self) {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let due = state.armed.range(..=(now, u64::MAX)).count();
            if due > 0 {
                // One advance interrupts every store whose deadline epoch
                // has passed; each store's callback decides by the clock
                // whether its own call is over.
                self.engine.increment_epoch();
                state.armed.retain(|(deadline, _), ()| *deadline > now);
            }
            let next = state.armed.keys().next().map(|(deadline, _)| *deadline);
            state.sleeping_until = next;
            state = sleep_until(&self.wake, state, next, now);
        }
    }
}

/// Waits on `wake` until notified or until `until` (forever when `None`),
/// measured from `now`. A poisoned lock is taken over: the state it guards
/// is a schedule, valid after any panic. Shared by the watchdog here and the
/// file watcher (watch.rs), the plugin host's two sleeping threads.
pub(super) fn sleep_until<'a, T>(
    wake: &Condvar,
    state: MutexGuard<'a, T>,
    until: Option<Instant>,
    now: Instant,
) -> MutexGuard<'a, T> {
    match until {
        None => wake.wait(state).unwrap_or_else(|p| p.into_inner()),
        Some(at) => {
            wake.wait_timeout(state, at.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
    }
}
