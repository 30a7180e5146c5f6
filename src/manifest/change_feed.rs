//! The change feed: one entry per committed batch, durable cursors, truncation.
//!
//! Invariants (checked by the tests in `tests/manifest_feed.rs`):
//! - sequence numbers are 1, 2, 3, ... in commit order; the head is stored in `meta` in the same
//!   transaction as the batch, so a committed batch always has its entry and vice versa;
//! - the feed holds exactly the keys `oldest..=head` (appends at the top, truncation at the
//!   bottom);
//! - an entry is deleted only when every live cursor acknowledged it, or, with no live cursor,
//!   when more than `feed_retention_entries_max` newer entries exist;
//! - a cursor more than `feed_cursor_lag_entries_max` behind the head is marked stale in a
//!   commit and from then on neither holds truncation back nor reads.

use heed::{RoTxn, RwTxn};

use super::config::ManifestConfig;
use super::error::{ManifestError, Result, Table};
use super::keys::{self, u64_key};
use super::records::{Change, CursorInfo, CursorRecord, FeedEntry, FeedRecord};
use super::tables::Tables;

/// Where a new cursor starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// At the oldest entry still in the feed.
    Oldest,
    /// After the current head: only batches committed from now on.
    Latest,
    /// At this sequence, which must be in `[oldest available, head + 1]`.
    At(u64),
}

/// A page of feed entries read through a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// Entries after the cursor's acknowledged sequence, oldest first.
    pub entries: Vec<FeedEntry>,
    /// The feed head when the page was read.
    pub head_seq: u64,
}

/// A cursor operation, committed through the same group-commit pipeline as batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CursorOp {
    Register { name: String, start: FeedStart },
    Ack { name: String, seq: u64 },
    Remove { name: String },
}

/// Feed figures computed by [`maintain`], published as metrics after the commit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FeedStats {
    pub(crate) feed_len: u64,
    pub(crate) truncated_entries: u64,
    pub(crate) cursor_lag_max: u64,
    pub(crate) cursors_stale: u64,
}

/// Returns `(oldest available, head)`; `oldest == head + 1` when the feed is empty.
pub(crate) fn bounds(tables: &Tables, txn: &RoTxn<'_>) -> Result<(u64, u64)> {
    let head = tables.counter(txn, &keys::META_FEED_HEAD_SEQ)?;
    let oldest = match tables.first_key(txn, Table::Feed)? {
        Some(key) => keys::decode_u64_key(Table::Feed, &key)?,
        None => head.saturating_add(1),
    };
    Ok((oldest, head))
}

/// Appends the entry of one batch; returns its sequence.
pub(crate) fn append(tables: &Tables, txn: &mut RwTxn<'_>, changes: Vec<Change>) -> Result<u64> {
    let head = tables.counter(txn, &keys::META_FEED_HEAD_SEQ)?;
    let seq = head.checked_add(1).ok_or_else(|| ManifestError::Decode {
        table: Table::Meta,
        key: "0003".into(),
        reason: "feed head sequence is at u64::MAX".into(),
    })?;
    tables.put(txn, Table::Feed, &u64_key(seq), &FeedRecord { changes })?;
    tables.set_counter(txn, &keys::META_FEED_HEAD_SEQ, seq)?;
    Ok(seq)
}

fn cursor_record(tables: &Tables, txn: &RoTxn<'_>, name: &str) -> Result<CursorRecord> {
    tables
        .get::<CursorRecord>(txn, Table::FeedCursors, name.as_bytes())?
        .ok_or_else(|| ManifestError::CursorNotFound { name: name.to_owned() })
}

/// Applies one cursor operation.
pub(crate) fn apply_cursor_op(
    tables: &Tables,
    txn: &mut RwTxn<'_>,
    op: &CursorOp,
    config: &ManifestConfig,
) -> Result<()> {
    match op {
        CursorOp::Register { name, start } => {
            if tables.contains(txn, Table::FeedCursors, name.as_bytes())? {
                return Err(ManifestError::CursorExists { name: name.clone() });
            }
            let count = tables.len(txn, Table::FeedCursors)?;
            if count >= u64::try_from(config.cursors_max).unwrap_or(u64::MAX) {
                return Err(ManifestError::TooManyCursors { cursors_max: config.cursors_max });
            }
            let (oldest, head) = bounds(tables, txn)?;
            let acked_seq = match *start {
                FeedStart::Oldest => oldest - 1,
                FeedStart::Latest => head,
                FeedStart::At(seq) if seq >= oldest && seq <= head.saturating_add(1) => seq - 1,
                FeedStart::At(seq) => {
                    return Err(ManifestError::CursorStartOutOfRange {
                        name: name.clone(),
                        seq,
                        oldest_available: oldest,
                        head,
                    })
                }
            };
            let record = CursorRecord { acked_seq, stale: false };
            tables.put(txn, Table::FeedCursors, name.as_bytes(), &record)
        }
        CursorOp::Ack { name, seq } => {
            let mut record = cursor_record(tables, txn, name)?;
            let (oldest, head) = bounds(tables, txn)?;
            if record.stale {
                return Err(ManifestError::CursorStale {
                    name: name.clone(),
                    acked: record.acked_seq,
                    oldest_available: oldest,
                });
            }
            if *seq > head {
                return Err(ManifestError::CursorAckBeyondHead { name: name.clone(), seq: *seq, head });
            }
            // Acks are idempotent and monotonic: acking an older sequence again is a no-op.
            if *seq > record.acked_seq {
                record.acked_seq = *seq;
                tables.put(txn, Table::FeedCursors, name.as_bytes(), &record)?;
            }
            Ok(())
        }
        CursorOp::Remove { name } => {
            if !tables.delete(txn, Table::FeedCursors, name.as_bytes())? {
                return Err(ManifestError::CursorNotFound { name: name.clone() });
            }
            Ok(())
        }
    }
}

/// Marks lagging cursors stale and truncates the feed; runs inside every group commit.
pub(crate) fn maintain(tables: &Tables, txn: &mut RwTxn<'_>, config: &ManifestConfig) -> Result<FeedStats> {
    let (oldest, head) = bounds(tables, txn)?;
    let mut stats = FeedStats::default();
    let mut live_acked_min: Option<u64> = None;
    let mut newly_stale: Vec<(Vec<u8>, CursorRecord)> = Vec::new();
    // Bounded by `cursors_max` at registration.
    tables.scan::<CursorRecord>(txn, Table::FeedCursors, &[], None, usize::MAX, |key, record| {
        let lag = head.saturating_sub(record.acked_seq);
        if record.stale {
            stats.cursors_stale += 1;
        } else if lag > config.feed_cursor_lag_entries_max {
            stats.cursors_stale += 1;
            newly_stale.push((key.to_vec(), record));
        } else {
            stats.cursor_lag_max = stats.cursor_lag_max.max(lag);
            live_acked_min = Some(live_acked_min.map_or(record.acked_seq, |m| m.min(record.acked_seq)));
        }
        Ok(true)
    })?;
    for (key, mut record) in newly_stale {
        record.stale = true;
        tracing::warn!(
            cursor = %String::from_utf8_lossy(&key),
            acked_seq = record.acked_seq,
            head_seq = head,
            "change-feed cursor lags too far behind and is now stale"
        );
        tables.put(txn, Table::FeedCursors, &key, &record)?;
    }
    // Every entry at or below `floor` may go.
    let floor = match live_acked_min {
        Some(acked_min) => acked_min,
        None => head.saturating_sub(config.feed_retention_entries_max),
    };
    if floor >= oldest {
        let doomed = tables.keys(
            txn,
            Table::Feed,
            &u64_key(oldest),
            &u64_key(floor),
            config.feed_truncate_per_commit_max,
        )?;
        for key in &doomed {
            tables.delete(txn, Table::Feed, key)?;
        }
        stats.truncated_entries = doomed.len() as u64;
    }
    stats.feed_len = tables.len(txn, Table::Feed)?;
    Ok(stats)
}

/// Reads up to `page_entries_max` entries after the cursor's acknowledged sequence.
pub(crate) fn read_page(
    tables: &Tables,
    txn: &RoTxn<'_>,
    name: &str,
    page_entries_max: usize,
) -> Result<FeedPage> {
    let record = cursor_record(tables, txn, name)?;
    let (oldest, head) = bounds(tables, txn)?;
    let next = record.acked_seq.saturating_add(1);
    if record.stale || next < oldest {
        return Err(ManifestError::CursorStale {
            name: name.to_owned(),
            acked: record.acked_seq,
            oldest_available: oldest,
        });
    }
    let mut entries = Vec::new();
    if next <= head {
        tables.scan::<FeedRecord>(
            txn,
            Table::Feed,
            &u64_key(next),
            None,
            page_entries_max,
            |key, value| {
                let seq = keys::decode_u64_key(Table::Feed, key)?;
                entries.push(FeedEntry { seq, changes: value.changes });
                Ok(true)
            },
        )?;
    }
    Ok(FeedPage { entries, head_seq: head })
}

/// Reads one cursor.
pub(crate) fn cursor_info(tables: &Tables, txn: &RoTxn<'_>, name: &str) -> Result<Option<CursorInfo>> {
    let record = tables.get::<CursorRecord>(txn, Table::FeedCursors, name.as_bytes())?;
    Ok(record.map(|record| CursorInfo {
        name: name.to_owned(),
        acked_seq: record.acked_seq,
        stale: record.stale,
    }))
}
