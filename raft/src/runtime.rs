//! bop's async runtime for openraft: tokio, with a random number generator that a simulation can seed.
//!
//! openraft draws election timeouts and tick phases from its runtime's `thread_rng`. With tokio's own
//! generator those come from the operating system, so no two runs of a simulated cluster would elect the
//! same leaders at the same moments. [`BopRuntime`] is tokio in every respect except that its generator is
//! a per-thread SplitMix64 sequence: seeded from the clock and the thread in production, and from
//! [`seed_thread_rng`] in the simulation, where every simulated host runs on one thread in a fixed order.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft_rt::{OptionalSend, Select2};
use openraft_rt_tokio::TokioRuntime;
use rand::rngs::SmallRng;
use rand::SeedableRng;

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// SplitMix64's output function for the state `state` (one step of the sequence).
pub fn splitmix64(state: u64) -> u64 {
    let z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Restarts this thread's generator from `seed`: every draw after it (on this thread) is a function of
/// `seed` and the order of the draws.
pub fn seed_thread_rng(seed: u64) {
    SEED.with(|s| s.set(Some(seed)));
}

fn next_seed() -> u64 {
    SEED.with(|s| {
        let state = s.get().unwrap_or_else(|| {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = &clock as *const u64 as u64;
            clock ^ here.rotate_left(32)
        });
        let next = splitmix64(state);
        s.set(Some(next));
        next
    })
}

/// tokio with a seedable per-thread generator (see the module documentation).
pub struct BopRuntime {
    inner: TokioRuntime,
}

impl std::fmt::Debug for BopRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BopRuntime").finish_non_exhaustive()
    }
}

impl AsyncRuntime for BopRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(a: A, b: B) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(next_seed())
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        BopRuntime { inner: TokioRuntime::new(threads) }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    fn draws() -> Vec<u64> {
        (0..8).map(|_| BopRuntime::thread_rng().random_range(0..1_000_000u64)).collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        seed_thread_rng(42);
        let first = draws();
        seed_thread_rng(42);
        assert_eq!(draws(), first);
        seed_thread_rng(43);
        assert_ne!(draws(), first);
    }
}
