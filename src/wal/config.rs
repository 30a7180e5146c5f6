//! Configuration of the WAL chunk store.

use std::path::PathBuf;
use std::time::Duration;

use super::WalError;
use crate::format::{RECORD_ALIGN, RECORD_HEADER_LEN};
use crate::io::BLOCK_SIZE;

/// What reopening does with damage it finds in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Any damage, a torn tail included, is an error; nothing is cut.
    AbsoluteConsistency,
    /// A torn tail (the unfinished last batch of a crash) is cut; damage anywhere else is an error.
    TolerateTornTail,
}

/// How a new segment's space is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocate {
    /// `fallocate` the whole segment. Cheap to create, but the first write to each block converts an
    /// unwritten extent, so most fdatasyncs also commit the file system's journal (measured on ext4: a
    /// one-row SQL commit took 1.5× as long as on a zero-filled segment).
    Allocate,
    /// Write zeros over the whole segment, so that an fdatasync afterwards flushes data only. With the
    /// writer threads, the next segment is zero-filled by a background thread once the active one is half
    /// full, and a roll only writes the header and renames it into place; with the inline writer, a roll
    /// zero-fills synchronously. Each MiB of zeros is written back as it is written (and every 8 MiB
    /// fdatasynced), so that filling a segment never leaves the disk one large flush that the log's own
    /// fdatasyncs would wait behind, and the background fill is paced by the log's own appends (a few zero
    /// bytes per byte appended) so that it is spread over the active segment's second half. The default.
    ZeroFill,
}

/// Bounded retries with capped exponential backoff, for transient errors (EINTR, EAGAIN) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most retries of one call before the error is treated as permanent.
    pub attempts_max: u32,
    /// Backoff before the first retry.
    pub backoff_initial_us: u64,
    /// Largest backoff between two retries.
    pub backoff_max_us: u64,
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (1-based): doubling from the initial value, capped, and
    /// computed with saturating arithmetic so that no attempt count overflows.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(32);
        let us = self.backoff_initial_us.saturating_mul(1u64 << shift).min(self.backoff_max_us);
        Duration::from_micros(us)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts_max: 8, backoff_initial_us: 50, backoff_max_us: 10_000 }
    }
}

/// Configuration of a [`super::WalStore`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// Size of each segment file, header block included; a multiple of 4096, at least 64 KiB.
    pub segment_size_bytes: u64,
    /// Most records accepted but not yet durable; appenders beyond it wait or get `Backpressure`.
    pub queue_records_max: usize,
    /// Most payload bytes accepted but not yet durable (the in-flight memory bound).
    pub queue_bytes_max: usize,
    /// Most payload bytes the writer puts into one write + fdatasync.
    pub batch_bytes_max: usize,
    /// Longest the writer waits for more appenders to join a batch that is smaller than the previous one.
    /// 0 disables the wait. It never delays a lone appender (see docs/design.md, group commit).
    pub group_commit_wait_us_max: u64,
    /// How new segments reserve their space.
    pub preallocate: Preallocate,
    /// What reopening does with damage.
    pub recovery_mode: RecoveryMode,
    /// Retries of transient write errors.
    pub retry: RetryPolicy,
    /// Who writes batches: background threads, or the submitting thread itself.
    pub writer: WriterMode,
    /// First wait before the writer (or the preparer) retries an operation refused for lack of space
    /// (ENOSPC, EDQUOT); it doubles up to `no_space_backoff_max_us`. Default 10 ms.
    pub no_space_backoff_initial_us: u64,
    /// Longest wait between two retries after lack of space. Default 1 s; at most 60 s.
    pub no_space_backoff_max_us: u64,
}

/// Who writes and fsyncs batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriterMode {
    /// A writer thread (group commit with a bounded wait for stragglers) and a completer thread that runs
    /// large batches' callbacks. The default.
    #[default]
    Threads,
    /// No threads: every submission writes, fsyncs and runs its callbacks before it returns. Used by the
    /// deterministic simulation, where a background thread would make the order of events depend on the
    /// operating system's scheduler; appends then never group across submissions.
    ///
    /// A batch that cannot get disk space stays held (its callbacks do not fire; the submission returns
    /// `Ok`), later submissions queue behind it, and it is retried — deterministically, never on a timer —
    /// at the next submission (append, truncate, purge, flush) or [`super::WalStore::retry_now`]. A
    /// blocking [`super::Durable::wait`] on held work returns [`super::WalError::NoSpace`] instead of
    /// blocking forever; the work stays queued. There is no preparer thread, so the space alarm rises only
    /// when a roll or a write is refused.
    Inline,
}

impl WalConfig {
    /// Defaults for a store in `dir`: 64 MiB segments, 64 MiB / 65536 records in flight, 4 MiB batches.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_size_bytes: 64 << 20,
            queue_records_max: 65_536,
            queue_bytes_max: 64 << 20,
            batch_bytes_max: 4 << 20,
            group_commit_wait_us_max: 100,
            preallocate: Preallocate::ZeroFill,
            recovery_mode: RecoveryMode::TolerateTornTail,
            retry: RetryPolicy::default(),
            writer: WriterMode::Threads,
            no_space_backoff_initial_us: 10_000,
            no_space_backoff_max_us: 1_000_000,
        }
    }

    /// The wait before retry number `attempt` (1-based) of an operation refused for lack of space.
    pub(crate) fn no_space_backoff(&self, attempt: u32) -> Duration {
        let policy = RetryPolicy {
            attempts_max: u32::MAX,
            backoff_initial_us: self.no_space_backoff_initial_us,
            backoff_max_us: self.no_space_backoff_max_us,
        };
        policy.backoff(attempt)
    }

    /// Largest payload one record may carry in a segment of this size.
    pub fn record_payload_max_bytes(&self) -> usize {
        let data = self.segment_size_bytes.saturating_sub(BLOCK_SIZE as u64) as usize;
        data.saturating_sub(RECORD_HEADER_LEN + RECORD_ALIGN).min(u32::MAX as usize)
    }

    pub(crate) fn validate(&self) -> Result<(), WalError> {
        let bad = |reason: String| Err(WalError::InvalidConfig { reason });
        if self.segment_size_bytes < 64 * 1024 || self.segment_size_bytes % BLOCK_SIZE as u64 != 0 {
            return bad(format!(
                "segment_size_bytes must be a multiple of {BLOCK_SIZE} and at least 65536, got {}",
                self.segment_size_bytes
            ));
        }
        if self.queue_records_max == 0 || self.queue_bytes_max == 0 || self.batch_bytes_max == 0 {
            return bad("queue_records_max, queue_bytes_max and batch_bytes_max must be positive".into());
        }
        if self.group_commit_wait_us_max > 1_000_000 {
            return bad(format!(
                "group_commit_wait_us_max must be at most 1000000, got {}",
                self.group_commit_wait_us_max
            ));
        }
        let (initial, max) = (self.no_space_backoff_initial_us, self.no_space_backoff_max_us);
        if initial == 0 || initial > max || max > 60_000_000 {
            return bad(format!(
                "no_space_backoff_initial_us must be positive and at most no_space_backoff_max_us, which is \
                 at most 60000000; got {initial} and {max}"
            ));
        }
        if self.retry.attempts_max > 1000 {
            return bad(format!("retry.attempts_max must be at most 1000, got {}", self.retry.attempts_max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_never_overflows() {
        let policy = RetryPolicy { attempts_max: 10, backoff_initial_us: 100, backoff_max_us: 1000 };
        assert_eq!(policy.backoff(1), Duration::from_micros(100));
        assert_eq!(policy.backoff(2), Duration::from_micros(200));
        assert_eq!(policy.backoff(4), Duration::from_micros(800));
        assert_eq!(policy.backoff(5), Duration::from_micros(1000));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_micros(1000));
        let huge = RetryPolicy { attempts_max: 1, backoff_initial_us: u64::MAX, backoff_max_us: u64::MAX };
        assert_eq!(huge.backoff(60), Duration::from_micros(u64::MAX));
    }

    #[test]
    fn bad_segment_size_is_a_clear_error() {
        let mut config = WalConfig::new("/x");
        config.segment_size_bytes = 5000;
        let err = config.validate().expect_err("rejected");
        assert!(err.to_string().contains("segment_size_bytes"), "{err}");
    }
}
