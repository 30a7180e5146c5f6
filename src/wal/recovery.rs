//! Opening a log directory: scanning segments, classifying damage, rebuilding the index, cutting a torn
//! tail. See docs/design.md, "Recovery".

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::format::{
    decode_record, encoded_len, plausible_batch_start, ChunkHeader, ChunkKind, DecodeError, RecordKind,
    FLAG_BATCH_START, RECORD_ALIGN, RECORD_HEADER_LEN,
};
use crate::io::{align_up, Io, OpenMode, BLOCK_SIZE};

use super::config::{RecoveryMode, WalConfig};
use super::error::CorruptionReason;
use super::index::{Loc, LogIndex, LogPos, Slot};
use super::segment::{self, SegmentHandle, FIRST_RECORD_OFFSET};
use super::WalError;

/// Sector size at which torn writes are assumed to happen (see docs/design.md, media assumptions).
const SECTOR_BYTES: usize = 512;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Records decoded (entries, truncations, purges).
    pub records: u64,
    /// The torn tail that was cut, if any: segment, offset, and why the bytes there did not decode.
    pub torn_tail: Option<(u64, u64, String)>,
    /// Segments removed because their creation never completed (no valid header), or because an
    /// interrupted purge had not yet deleted them.
    pub removed_segments: Vec<u64>,
}

pub(crate) struct Recovered {
    pub index: LogIndex,
    pub segments: BTreeMap<u64, SegmentHandle>,
    pub write_pos: u64,
    pub store_id: u64,
    pub next_lsn: u64,
    pub purge_seq: Option<u64>,
    pub report: RecoveryReport,
}

struct Scanned {
    kind: RecordKind,
    index: u64,
    term: u64,
    offset: u64,
    payload_len: u32,
}

enum Stop {
    Clean(u64),
    Bad { offset: u64, error: DecodeError },
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Decodes records from the data area of one segment until the written data ends or a record is bad.
fn scan(buf: &[u8], seq_low: u32, out: &mut Vec<Scanned>) -> Stop {
    let mut pos = FIRST_RECORD_OFFSET as usize;
    loop {
        let Some(rest) = buf.get(pos..).filter(|r| r.len() >= RECORD_HEADER_LEN) else {
            return Stop::Clean(pos as u64);
        };
        // Zeros up to the next block boundary followed by a batch start: the gap a direct-I/O batch leaves
        // so that the next batch starts block-aligned. Checked first: the gap may be shorter than a header.
        let next_block = align_up(pos as u64, BLOCK_SIZE as u64) as usize;
        if next_block > pos
            && buf.get(pos..next_block).is_some_and(is_zero)
            && buf.get(next_block..).is_some_and(|r| {
                matches!(decode_record(r, seq_low), Ok(Some(rec)) if rec.header.flags & FLAG_BATCH_START != 0)
            })
        {
            pos = next_block;
            continue;
        }
        match decode_record(rest, seq_low) {
            Ok(Some(rec)) => {
                out.push(Scanned {
                    kind: rec.header.kind,
                    index: rec.header.index,
                    term: rec.header.term,
                    offset: pos as u64,
                    payload_len: rec.payload.len() as u32,
                });
                pos += rec.encoded_len;
            }
            Ok(None) => return Stop::Clean(pos as u64),
            Err(error) => return Stop::Bad { offset: pos as u64, error },
        }
    }
}

/// After a bad record at `offset` in the last segment: is it the torn tail of the last batch (true), or
/// damage in the middle of the log (false)? See docs/design.md for the rule and its limits.
fn is_torn_tail(buf: &[u8], offset: usize, seq_low: u32) -> bool {
    // A later batch of this segment decodes: the bad record was not in the last batch.
    let mut q = offset + RECORD_ALIGN;
    while q + RECORD_HEADER_LEN <= buf.len() {
        if let Some(rest) = buf.get(q..) {
            if plausible_batch_start(rest, seq_low) && matches!(decode_record(rest, seq_low), Ok(Some(_))) {
                return false;
            }
        }
        q += RECORD_ALIGN;
    }
    // Every sector the record claims holds written bytes: nothing was left unwritten, so this is a
    // flipped bit, not a write that did not finish.
    let payload_len = crate::format::le_u32(buf, offset + 4) as usize;
    let end = offset.saturating_add(encoded_len(payload_len));
    if end <= buf.len() {
        let mut sector_start = offset - offset % SECTOR_BYTES;
        let mut all_landed = true;
        while sector_start < end {
            let from = sector_start.max(offset);
            let to = (sector_start + SECTOR_BYTES).min(end);
            if buf.get(from..to).is_none_or(is_zero) {
                all_landed = false;
                break;
            }
            sector_start += SECTOR_BYTES;
        }
        if all_landed {
            return false;
        }
    }
    true
}

fn random_store_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish() | 1
}

pub(crate) fn recover(io: &dyn Io, config: &WalConfig) -> Result<Recovered, WalError> {
    let dir = config.dir.as_path();
    // The directory is an entry of its parent: fsynced there, or a crash could take the log away.
    crate::io::create_dir_durable(io, dir).map_err(|e| WalError::io("create log directory", dir, e))?;
    let names = io.list_dir(dir).map_err(|e| WalError::io("list log directory", dir, e))?;
    let mut seqs: Vec<u64> = names.iter().filter_map(|n| segment::parse_file_name(n)).collect();
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::Corruption {
                segment: pair[0] + 1,
                offset: 0,
                reason: CorruptionReason::MissingSegment { missing: pair[0] + 1 },
            });
        }
    }

    let mut report = RecoveryReport::default();
    let mut store_id = None;
    let mut segments = BTreeMap::new();
    let mut index = LogIndex::default();
    let mut next_lsn = 0u64;
    let mut purge_seq = None;
    let mut jumps = Vec::new();
    // Where the records of the last segment kept end, and whether any byte after them is not zero.
    let mut tail_end = FIRST_RECORD_OFFSET;
    let mut tail_dirty = false;
    let last_seq = seqs.last().copied();
    let mut progress =
        crate::progress::Progress::new("WAL recovery", seqs.len() as u64 * config.segment_size_bytes);

    for &seq in &seqs {
        let path = dir.join(segment::file_name(seq));
        let is_last = Some(seq) == last_seq;
        let file = io.open(&path, OpenMode::Existing).map_err(|e| WalError::io("open segment", &path, e))?;
        let buf = segment::read_all(file.as_ref(), &path)?;
        progress.advance(buf.len() as u64);
        let header = match ChunkHeader::decode(&buf) {
            Ok(header) => header,
            Err(error) if is_last && config.recovery_mode == RecoveryMode::TolerateTornTail => {
                // Creation fsyncs the header before any record is written: no record was ever here.
                tracing::warn!(segment = seq, %error, "removing a segment whose creation did not finish");
                io.remove_file(&path).map_err(|e| WalError::io("remove unfinished segment", &path, e))?;
                io.sync_dir(dir).map_err(|e| WalError::io("sync log directory", dir, e))?;
                report.removed_segments.push(seq);
                continue;
            }
            Err(error) => {
                let reason =
                    if is_last { CorruptionReason::TornTail(error) } else { CorruptionReason::Decode(error) };
                return Err(WalError::Corruption { segment: seq, offset: 0, reason });
            }
        };
        if header.kind != ChunkKind::LogSegment || header.sequence != seq {
            return Err(WalError::Corruption {
                segment: seq,
                offset: 0,
                reason: CorruptionReason::ForeignSegment(format!(
                    "file is a {:?} with sequence {}",
                    header.kind, header.sequence
                )),
            });
        }
        match store_id {
            None => store_id = Some(header.store_id),
            Some(id) if id != header.store_id => {
                return Err(WalError::Corruption {
                    segment: seq,
                    offset: 0,
                    reason: CorruptionReason::ForeignSegment(format!(
                        "store id {:#x}, other segments have {id:#x}",
                        header.store_id
                    )),
                })
            }
            Some(_) => {}
        }
        report.segments += 1;

        let seq_low = seq as u32;
        let mut records = Vec::new();
        let end = match scan(&buf, seq_low, &mut records) {
            Stop::Clean(end) => end,
            Stop::Bad { offset, error } => {
                let torn = is_last && is_torn_tail(&buf, offset as usize, seq_low);
                if !torn || config.recovery_mode == RecoveryMode::AbsoluteConsistency {
                    let reason = if torn {
                        CorruptionReason::TornTail(error)
                    } else {
                        CorruptionReason::Decode(error)
                    };
                    return Err(WalError::Corruption { segment: seq, offset, reason });
                }
                tracing::warn!(segment = seq, offset, %error, "cutting the torn tail of the log");
                report.torn_tail = Some((seq, offset, error.to_string()));
                offset
            }
        };

        let mut max_index = None;
        for rec in &records {
            report.records += 1;
            let lsn = next_lsn;
            next_lsn += 1;
            match rec.kind {
                RecordKind::Entry => {
                    if let Some(expected) = index.next_index() {
                        if rec.index > expected && index.first_index().is_none() {
                            // The entries in between were in segments a purge deleted; the purge record that
                            // covers them may come later in this segment. Checked once replay is done.
                            jumps.push((seq, rec.offset, expected, rec.index));
                        } else if rec.index != expected {
                            return Err(WalError::Corruption {
                                segment: seq,
                                offset: rec.offset,
                                reason: CorruptionReason::IndexGap { expected, got: rec.index },
                            });
                        }
                    }
                    max_index = max_index.max(Some(rec.index));
                    let loc = Loc::Disk { seq, offset: rec.offset, len: rec.payload_len };
                    index.push(rec.index, Slot { term: rec.term, lsn, loc });
                }
                RecordKind::Truncate => index.truncate_from(rec.index),
                RecordKind::Purge => {
                    let meta = (rec.payload_len > 0).then(|| {
                        let at = rec.offset as usize + RECORD_HEADER_LEN;
                        Arc::new(buf.get(at..at + rec.payload_len as usize).unwrap_or_default().to_vec())
                    });
                    index.purge_upto(LogPos { index: rec.index, term: rec.term }, meta);
                    purge_seq = Some(seq);
                }
            }
        }
        // Taken from every segment kept, not only the last file listed: when that one is removed (its
        // creation never finished), writing resumes after this segment's records, not over them.
        tail_end = end;
        tail_dirty = buf.get(end as usize..).is_some_and(|rest| !is_zero(rest));
        segments.insert(seq, SegmentHandle { file, path, max_index });
    }

    for (segment, offset, expected, got) in jumps {
        if index.purged().is_none_or(|p| got > p.index + 1) {
            return Err(WalError::Corruption {
                segment,
                offset,
                reason: CorruptionReason::IndexGap { expected, got },
            });
        }
    }

    let store_id = store_id.unwrap_or_else(random_store_id);
    let write_pos = match segments.values().next_back() {
        Some(last) => {
            let path = last.path.clone();
            let file = last.file.as_ref();
            if tail_dirty {
                // Zero everything after the last good record, so that no stale byte of the torn batch can
                // ever be read as a record once new batches are written over part of it.
                let size = config
                    .segment_size_bytes
                    .max(file.len().map_err(|e| WalError::io("stat segment", &path, e))?);
                file.set_len(tail_end).map_err(|e| WalError::io("cut torn tail", &path, e))?;
                file.allocate(tail_end, size - tail_end)
                    .map_err(|e| WalError::io("cut torn tail", &path, e))?;
                file.sync_all().map_err(|e| WalError::io("cut torn tail", &path, e))?;
            } else {
                // Records recovered from a batch whose fsync never returned become durable here.
                file.sync_data().map_err(|e| WalError::io("sync recovered tail", &path, e))?;
            }
            align_up(tail_end, file.alignment().max(1) as u64)
        }
        None => FIRST_RECORD_OFFSET,
    };
    progress.finish();
    Ok(Recovered { index, segments, write_pos, store_id, next_lsn, purge_seq, report })
}

/// Deletes segments before `keep_from` (finishing a purge that a crash interrupted) — used at open.
pub(crate) fn segments_fully_purged(
    segments: &BTreeMap<u64, SegmentHandle>,
    purged: Option<LogPos>,
    purge_seq: Option<u64>,
) -> Vec<u64> {
    let (Some(purged), Some(purge_seq)) = (purged, purge_seq) else { return Vec::new() };
    let last = segments.keys().next_back().copied();
    segments
        .iter()
        .take_while(|(seq, seg)| {
            Some(**seq) != last && **seq < purge_seq && seg.max_index.is_none_or(|m| m <= purged.index)
        })
        .map(|(seq, _)| *seq)
        .collect()
}
