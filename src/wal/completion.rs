//! Durability tickets: what an append hands back, resolved by the completer thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::writer::Shared;
use super::WalError;

/// A callback run once an operation is durable (`Ok`) or can never be (`Err`). Callbacks run on the
/// store's completer thread in submission order; they must be quick and must not wait on the store.
pub type DurableCallback = Box<dyn FnOnce(Result<(), WalError>) + Send + 'static>;

enum State {
    Waiting(Option<Waker>),
    Done(Result<(), WalError>),
    Taken,
}

struct Slot {
    state: Mutex<State>,
    cv: Condvar,
}

/// Resolves when the operation it was returned for is durable. Wait on it ([`Durable::wait`]) or await it.
#[must_use = "an append is only durable once its ticket resolves"]
pub struct Durable {
    slot: Arc<Slot>,
    /// The store, so that a blocking waiter can write the batch itself when no one else is.
    store: Weak<Shared>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("done", &self.is_done()).finish()
    }
}

impl Durable {
    /// A ticket and the callback that resolves it.
    pub(crate) fn new(store: Weak<Shared>) -> (Durable, DurableCallback) {
        let slot = Arc::new(Slot { state: Mutex::new(State::Waiting(None)), cv: Condvar::new() });
        let resolver = Arc::clone(&slot);
        let callback: DurableCallback = Box::new(move |result| {
            let waker = {
                let mut state = resolver.state.lock();
                let previous = std::mem::replace(&mut *state, State::Done(result));
                resolver.cv.notify_all();
                match previous {
                    State::Waiting(waker) => waker,
                    _ => None,
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        (Durable { slot, store }, callback)
    }

    /// True once the outcome is known.
    pub fn is_done(&self) -> bool {
        !matches!(*self.slot.state.lock(), State::Waiting(_))
    }

    /// Blocks until the outcome is known. Do not call from an async task; await the ticket instead.
    ///
    /// If no batch is being written when it is called, the calling thread writes the pending batch itself
    /// (leader/follower group commit), which saves the hand-offs to and from the writer thread.
    ///
    /// Under [`super::WriterMode::Inline`] nothing else would ever write the batch, so if it is held for
    /// lack of space, this returns [`WalError::NoSpace`] at once instead of blocking forever. The
    /// operation stays queued: a later submission or [`super::WalStore::retry_now`] may still make it
    /// durable (its callback, if it has one, then fires `Ok`). With the writer threads, it waits.
    pub fn wait(self) -> Result<(), WalError> {
        if let Some(shared) = self.store.upgrade() {
            shared.lead_until(|| self.is_done());
            if shared.config.writer == super::WriterMode::Inline && !self.is_done() && shared.writes_held() {
                if let Some(cause) = shared.metrics.last_no_space.lock().clone() {
                    return Err(WalError::NoSpace(cause));
                }
            }
        }
        let mut state = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return result,
                State::Taken => return Err(WalError::Closed),
                waiting @ State::Waiting(_) => {
                    *state = waiting;
                    self.slot.cv.wait(&mut state);
                }
            }
        }
    }

    /// Blocks for at most `timeout`; `None` if the outcome is not known by then (the ticket stays usable).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<(), WalError>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Done(result) => return Some(result),
                State::Taken => return Some(Err(WalError::Closed)),
                waiting @ State::Waiting(_) => {
                    *state = waiting;
                    if self.slot.cv.wait_until(&mut state, deadline).timed_out() {
                        if let State::Done(_) = &*state {
                            continue;
                        }
                        return None;
                    }
                }
            }
        }
    }
}

impl Future for Durable {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.state.lock();
        match std::mem::replace(&mut *state, State::Taken) {
            State::Done(result) => Poll::Ready(result),
            State::Taken => Poll::Ready(Err(WalError::Closed)),
            State::Waiting(_) => {
                *state = State::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}
