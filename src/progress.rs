//! Progress of long work (recovering a large log, receiving a snapshot) in the log: sizes and rates, at
//! most once per [`PROGRESS_INTERVAL`], and a summary at the end.

use std::time::{Duration, Instant};

/// Least time between two progress lines of one piece of work.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Tracks how many bytes of a known (or unknown, 0) total are done.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total_bytes: u64,
    done_bytes: u64,
    started: Instant,
    last_report: Instant,
}

impl Progress {
    /// Starts tracking `what` of `total_bytes` (0 when unknown).
    pub fn new(what: &'static str, total_bytes: u64) -> Progress {
        let now = Instant::now();
        Progress { what, total_bytes, done_bytes: 0, started: now, last_report: now }
    }

    /// Counts `bytes` more as done; logs a line if the last one is older than [`PROGRESS_INTERVAL`].
    pub fn advance(&mut self, bytes: u64) {
        self.done_bytes = self.done_bytes.saturating_add(bytes);
        if self.last_report.elapsed() >= PROGRESS_INTERVAL {
            self.last_report = Instant::now();
            tracing::info!(
                done_mib = mib(self.done_bytes),
                total_mib = mib(self.total_bytes),
                percent = self.percent(),
                mib_per_s = self.rate(),
                "{} in progress",
                self.what
            );
        }
    }

    /// Bytes done so far.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    /// Logs the summary: bytes, time and rate.
    pub fn finish(&self) {
        tracing::info!(
            mib = mib(self.done_bytes),
            secs = self.started.elapsed().as_secs_f64(),
            mib_per_s = self.rate(),
            "{} done",
            self.what
        );
    }

    fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.done_bytes as f64 * 100.0 / self.total_bytes as f64
        }
    }

    fn rate(&self) -> f64 {
        mib(self.done_bytes) / self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_percent() {
        let mut p = Progress::new("test work", 400);
        p.advance(100);
        p.advance(u64::MAX);
        assert_eq!(p.done_bytes(), u64::MAX, "saturates instead of wrapping");
        let q = Progress { done_bytes: 100, ..Progress::new("test work", 400) };
        assert_eq!(q.percent(), 25.0);
        assert_eq!(Progress::new("unknown total", 0).percent(), 0.0);
        q.finish();
    }
}
