//! Where a node runs its blocking work (SQL transactions, which wait for Raft from inside SQLite).
//!
//! In production that is tokio's blocking pool, and a transaction waits for its Raft round with
//! `Handle::block_on`. In the deterministic simulation no thread may run beside the simulated hosts, so
//! [`Blocking::Lockstep`] runs the work on a thread of its own that takes turns with the async runtime like
//! a coroutine: while it runs the runtime thread waits, and while it waits for a future (handed to the
//! runtime to await) the runtime runs. At any moment exactly one of them runs, so a run's order of events
//! depends only on the simulation's seed.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Why blocking work did not produce its result.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    /// The work panicked.
    #[error("blocking work panicked: {0}")]
    Panicked(String),
    /// The caller went away (the request was dropped, or the host crashed) before a future the work
    /// waited for finished.
    #[error("cancelled")]
    Cancelled,
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(std::io::Error),
    /// `block_on` was called outside work started by [`Blocking::run`] in lockstep mode.
    #[error("block_on outside lockstep work")]
    NotInWorker,
}

/// How blocking work runs (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blocking {
    /// tokio's blocking pool; `block_on` through the runtime handle. The default.
    #[default]
    Threads,
    /// One thread per call, taking turns with the runtime thread.
    Lockstep,
}

type Value = Box<dyn Any + Send>;
type Waited = Pin<Box<dyn Future<Output = Value> + Send>>;

enum Phase {
    /// The worker runs (or the runtime is awaiting what the worker asked for).
    Running,
    /// The worker waits for this future.
    Await(Waited),
    /// The future's output (`None`: cancelled), for the worker to take.
    Resume(Option<Value>),
    /// The work finished.
    Done(Result<Value, String>),
}

struct Baton {
    phase: Mutex<Phase>,
    turn: Condvar,
}

enum RuntimeTurn {
    Await(Waited),
    Done(Result<Value, String>),
}

impl Baton {
    /// Runtime side: waits until the worker asks for a future or finishes.
    fn runtime_turn(&self) -> RuntimeTurn {
        let mut phase = self.phase.lock();
        loop {
            match std::mem::replace(&mut *phase, Phase::Running) {
                Phase::Await(fut) => return RuntimeTurn::Await(fut),
                Phase::Done(result) => return RuntimeTurn::Done(result),
                other => {
                    *phase = other;
                    self.turn.wait(&mut phase);
                }
            }
        }
    }

    /// Runtime side: hands the worker its future's output and lets it run.
    fn resume(&self, value: Option<Value>) {
        *self.phase.lock() = Phase::Resume(value);
        self.turn.notify_all();
    }

    /// Worker side: asks the runtime to await `fut`, and waits for the output.
    fn request(&self, fut: Waited) -> Option<Value> {
        let mut phase = self.phase.lock();
        *phase = Phase::Await(fut);
        self.turn.notify_all();
        loop {
            match std::mem::replace(&mut *phase, Phase::Running) {
                Phase::Resume(value) => return value,
                other => {
                    *phase = other;
                    self.turn.wait(&mut phase);
                }
            }
        }
    }

    fn finish(&self, result: Result<Value, String>) {
        *self.phase.lock() = Phase::Done(result);
        self.turn.notify_all();
    }
}

thread_local! {
    static WORKER: RefCell<Option<Arc<Baton>>> = const { RefCell::new(None) };
}

/// The runtime side of one lockstep call. Dropped early (the caller cancelled), it answers every further
/// request of the worker with "cancelled" and waits for the worker to finish, so no work outlives its
/// caller to run beside the runtime.
struct Turns {
    baton: Arc<Baton>,
    finished: bool,
    awaiting: bool,
}

impl Drop for Turns {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.awaiting {
            self.baton.resume(None);
        }
        loop {
            match self.baton.runtime_turn() {
                RuntimeTurn::Done(_) => return,
                RuntimeTurn::Await(fut) => {
                    drop(fut);
                    self.baton.resume(None);
                }
            }
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

fn downcast<T: 'static>(value: Value) -> Result<T, BlockingError> {
    value
        .downcast::<T>()
        .map(|b| *b)
        .map_err(|_| BlockingError::Panicked("lockstep value of an unexpected type".into()))
}

impl Blocking {
    /// Runs `work` off the async runtime and returns its result.
    pub async fn run<R, F>(self, work: F) -> Result<R, BlockingError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Blocking::Threads => {
                tokio::task::spawn_blocking(work).await.map_err(|e| match e.try_into_panic() {
                    Ok(payload) => BlockingError::Panicked(panic_message(payload)),
                    Err(_) => BlockingError::Cancelled,
                })
            }
            Blocking::Lockstep => run_lockstep(work).await,
        }
    }

    /// From inside work started by [`Blocking::run`]: waits for `fut` on the runtime `handle` belongs to.
    pub fn block_on<F>(self, handle: &tokio::runtime::Handle, fut: F) -> Result<F::Output, BlockingError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Blocking::Threads => Ok(handle.block_on(fut)),
            Blocking::Lockstep => {
                let baton = WORKER.with(|w| w.borrow().clone()).ok_or(BlockingError::NotInWorker)?;
                let waited: Waited = Box::pin(async move { Box::new(fut.await) as Value });
                let value = baton.request(waited).ok_or(BlockingError::Cancelled)?;
                downcast(value)
            }
        }
    }
}

async fn run_lockstep<R, F>(work: F) -> Result<R, BlockingError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let baton = Arc::new(Baton { phase: Mutex::new(Phase::Running), turn: Condvar::new() });
    let worker = Arc::clone(&baton);
    std::thread::Builder::new()
        .name("bop-lockstep".into())
        .spawn(move || {
            WORKER.with(|w| *w.borrow_mut() = Some(Arc::clone(&worker)));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            WORKER.with(|w| w.borrow_mut().take());
            worker.finish(outcome.map(|r| Box::new(r) as Value).map_err(panic_message));
        })
        .map_err(BlockingError::Spawn)?;
    let mut turns = Turns { baton, finished: false, awaiting: false };
    loop {
        match turns.baton.runtime_turn() {
            RuntimeTurn::Done(result) => {
                turns.finished = true;
                return downcast(result.map_err(BlockingError::Panicked)?);
            }
            RuntimeTurn::Await(fut) => {
                turns.awaiting = true;
                let value = fut.await;
                turns.awaiting = false;
                turns.baton.resume(Some(value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn lockstep_work_waits_for_futures_the_runtime_completes() {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        // A task on the same (single) runtime thread answers; the worker can only get it if the runtime
        // runs while the worker waits.
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(41);
        });
        let got = Blocking::Lockstep
            .run(move || Blocking::Lockstep.block_on(&handle, async move { rx.await.unwrap_or(0) + 1 }))
            .await
            .expect("ran");
        assert_eq!(got.expect("awaited"), 42);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_runtime_does_not_run_while_lockstep_work_runs() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let observed = Arc::clone(&ticks);
        let (before, after) = Blocking::Lockstep
            .run(move || {
                let before = observed.load(Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                (before, observed.load(Ordering::SeqCst))
            })
            .await
            .expect("ran");
        ticker.abort();
        assert_eq!(before, after, "the runtime task ran beside the lockstep work");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_call_waits_for_its_worker_and_answers_cancelled() {
        let handle = tokio::runtime::Handle::current();
        let finished = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&finished);
        let call = Blocking::Lockstep.run(move || {
            let waited = Blocking::Lockstep.block_on(&handle, std::future::pending::<()>());
            assert!(matches!(waited, Err(BlockingError::Cancelled)));
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(10), call).await;
        assert!(timed_out.is_err());
        // The drop of the timed-out call waited for the worker to see the cancellation and finish.
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn threads_mode_runs_and_reports_panics() {
        assert_eq!(Blocking::Threads.run(|| 7).await.expect("ran"), 7);
        let panicked = Blocking::Threads.run(|| panic!("boom")).await;
        assert!(matches!(panicked, Err(BlockingError::Panicked(m)) if m == "boom"));
        let panicked = Blocking::Lockstep.run(|| panic!("bang")).await;
        assert!(matches!(panicked, Err(BlockingError::Panicked(m)) if m == "bang"));
    }
}
