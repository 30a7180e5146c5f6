//! Segment files: naming, creation (header, preallocation, fsync of file and directory), and reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{ChunkHeader, ChunkKind, CHUNK_HEADER_LEN, DATA_OFFSET};
use crate::io::{read_exact_at, AlignedBuf, Io, IoError, IoFile, OpenMode, BLOCK_SIZE};

use super::config::{Preallocate, WalConfig};
use super::metrics::Metrics;
use super::writer::write_all_retrying;
use super::WalError;

const SUFFIX: &str = ".wal";

/// `0000000000000001.wal`: sixteen hex digits, so that names sort in sequence order.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:016x}{SUFFIX}")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A segment as the store's shared state knows it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentHandle {
    pub file: Arc<dyn IoFile>,
    pub path: PathBuf,
    /// Highest entry index ever written into the segment (truncated ones included, so it is an upper
    /// bound: a purge deletes the segment only when this is purged).
    pub max_index: Option<u64>,
}

/// Name of the next segment while a background thread prepares it. Never parsed as a segment: recovery
/// ignores it and opening the store removes a leftover one.
pub(crate) const PREPARED_NAME: &str = "next-segment.prepare";

/// A failed creation, preparation or installation of a segment.
#[derive(Debug)]
pub(crate) struct SegmentError {
    pub during: &'static str,
    pub path: PathBuf,
    pub error: IoError,
    /// The call that failed was a sync (fsync, fdatasync, directory fsync).
    pub sync: bool,
}

impl SegmentError {
    /// Lack of space (ENOSPC, EDQUOT) in a call that is not a sync: nothing was lost, and the same
    /// operation may succeed once space is freed. A failed sync is never that, whatever its errno.
    pub(crate) fn is_no_space(&self) -> bool {
        !self.sync && self.error.is_no_space()
    }
}

impl From<SegmentError> for WalError {
    fn from(e: SegmentError) -> Self {
        WalError::Io { during: e.during, path: e.path, error: e.error }
    }
}

/// Tags a step's error with whether the step was a sync.
fn step(result: Result<(), IoError>, sync: bool) -> Result<(), (IoError, bool)> {
    result.map_err(|e| (e, sync))
}

/// Creates segment `seq`: header block, reserved space, then fsync of the file and of the directory, so
/// that a segment that exists after a crash has a valid header and its full size. On failure the file is
/// removed again (and, best effort, the removal made durable).
pub(crate) fn create(
    io: &dyn Io,
    config: &WalConfig,
    seq: u64,
    store_id: u64,
    metrics: &Metrics,
) -> Result<SegmentHandle, SegmentError> {
    let dir = config.dir.as_path();
    let path = dir.join(file_name(seq));
    let during = "create segment";
    let file = io.open(&path, OpenMode::CreateNew).map_err(|error| SegmentError {
        during,
        path: path.clone(),
        error,
        sync: false,
    })?;
    let result = (|| {
        reserve(file.as_ref(), config, metrics, &mut |_| ())?;
        step(write_header(file.as_ref(), config, seq, store_id, metrics), false)?;
        step(file.sync_all(), true)?;
        step(io.sync_dir(dir), true)
    })();
    if let Err((error, sync)) = result {
        // Do not leave a half-made segment behind: it would be read as a torn tail at the next open, and
        // its space would stay taken.
        drop(file);
        if io.remove_file(&path).is_ok() {
            let _ = io.sync_dir(dir);
        }
        return Err(SegmentError { during, path, error, sync });
    }
    Ok(SegmentHandle { file, path, max_index: None })
}

/// How many zeros [`Preallocate::ZeroFill`] writes at a time; after each chunk it starts the chunk's
/// writeback ([`IoFile::start_writeback`]), and after every [`ZERO_FILL_SYNC_CHUNKS`] chunks it
/// fdatasyncs the file.
///
/// Zero-filling a 64 MiB segment and syncing it once at the end makes the page cache flush 64 MiB in one
/// go; on a shared disk that one flush held every fdatasync of the log behind it for 80–113 ms (measured
/// on this machine's ext4 at 64 clients, every 1–2 s, and it was the whole p99 of a write). Writing each
/// MiB back as it is written keeps every flush small.
pub(crate) const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// The zero fill fdatasyncs after this many chunks (and fsyncs at the end). Each fdatasync also flushes
/// the disk's cache, which the log's own fdatasyncs then wait behind: one per MiB cost a single buffered
/// appender of 4 KiB records about a third of its rate (`cargo bench --bench wal`).
pub(crate) const ZERO_FILL_SYNC_CHUNKS: u64 = 8;

/// Reserves the whole segment's space in `file` as `config.preallocate` says. An error is tagged with
/// whether it came from a sync (see [`step`]). `pace` is called after each chunk of zeros but the last with the
/// bytes zeroed so far, and may hold the fill there (the preparer spreads it over the active segment's
/// filling).
fn reserve(
    file: &dyn IoFile,
    config: &WalConfig,
    metrics: &Metrics,
    pace: &mut dyn FnMut(u64),
) -> Result<(), (IoError, bool)> {
    let size_bytes = config.segment_size_bytes;
    match config.preallocate {
        Preallocate::Allocate => step(file.allocate(0, size_bytes), false),
        Preallocate::ZeroFill => {
            let zeros = AlignedBuf::zeroed(ZERO_FILL_CHUNK_BYTES);
            let mut offset = 0u64;
            while offset < size_bytes {
                let len = ((size_bytes - offset) as usize).min(zeros.len());
                step(write_all_retrying(file, &zeros[..len], offset, &config.retry, metrics), false)?;
                step(file.start_writeback(offset, len as u64), true)?;
                offset += len as u64;
                if (offset / ZERO_FILL_CHUNK_BYTES as u64) % ZERO_FILL_SYNC_CHUNKS == 0 && offset < size_bytes
                {
                    step(file.sync_data(), true)?;
                }
                if offset < size_bytes {
                    pace(offset);
                }
            }
            Ok(())
        }
    }
}

fn write_header(
    file: &dyn IoFile,
    config: &WalConfig,
    seq: u64,
    store_id: u64,
    metrics: &Metrics,
) -> Result<(), IoError> {
    let header = ChunkHeader {
        kind: ChunkKind::LogSegment,
        sequence: seq,
        generation: 0,
        store_id,
        capacity_bytes: config.segment_size_bytes,
        base: 0,
    };
    let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
    block[..CHUNK_HEADER_LEN].copy_from_slice(&header.encode());
    write_all_retrying(file, &block, 0, &config.retry, metrics)
}

/// Prepares the next segment's file under [`PREPARED_NAME`]: space reserved and fsynced, no header. Run
/// by the preparer thread, off the write path, with `pace` holding a zero fill between chunks (see
/// [`reserve`]); [`install`] turns it into a segment at a roll.
pub(crate) fn prepare(
    io: &dyn Io,
    config: &WalConfig,
    metrics: &Metrics,
    pace: &mut dyn FnMut(u64),
) -> Result<Arc<dyn IoFile>, SegmentError> {
    let dir = config.dir.as_path();
    let path = dir.join(PREPARED_NAME);
    let during = "prepare segment";
    remove_prepared_file(io, dir).map_err(|error| SegmentError {
        during,
        path: path.clone(),
        error,
        sync: false,
    })?;
    let file = io.open(&path, OpenMode::CreateNew).map_err(|error| SegmentError {
        during,
        path: path.clone(),
        error,
        sync: false,
    })?;
    let result = reserve(file.as_ref(), config, metrics, pace).and_then(|()| step(file.sync_all(), true));
    if let Err((error, sync)) = result {
        drop(file);
        let _ = io.remove_file(&path);
        return Err(SegmentError { during, path, error, sync });
    }
    Ok(file)
}

/// Turns a prepared file into segment `seq`: header written and fsynced, then renamed into place and the
/// directory fsynced. A crash before the rename leaves only the prepared file, which is not a segment; a
/// crash after it leaves a segment with a valid header and its full size, as [`create`] does.
/// If it fails before the rename (lack of space writing the header, say), the prepared file is still in
/// place and may be installed again.
pub(crate) fn install(
    io: &dyn Io,
    config: &WalConfig,
    file: &Arc<dyn IoFile>,
    seq: u64,
    store_id: u64,
    metrics: &Metrics,
) -> Result<SegmentHandle, SegmentError> {
    let dir = config.dir.as_path();
    let path = dir.join(file_name(seq));
    let result = (|| {
        step(write_header(file.as_ref(), config, seq, store_id, metrics), false)?;
        step(file.sync_data(), true)?;
        step(io.rename(&dir.join(PREPARED_NAME), &path), false)?;
        step(io.sync_dir(dir), true)
    })();
    result.map_err(|(error, sync)| SegmentError {
        during: "install prepared segment",
        path: path.clone(),
        error,
        sync,
    })?;
    Ok(SegmentHandle { file: Arc::clone(file), path, max_index: None })
}

/// Removes a prepared file left by an earlier run (or a failed preparation), if there is one.
pub(crate) fn remove_prepared(io: &dyn Io, dir: &Path) -> Result<(), WalError> {
    remove_prepared_file(io, dir)
        .map_err(|e| WalError::io("remove prepared segment", dir.join(PREPARED_NAME), e))
}

fn remove_prepared_file(io: &dyn Io, dir: &Path) -> Result<(), IoError> {
    let names = io.list_dir(dir)?;
    if names.iter().any(|name| name == PREPARED_NAME) {
        io.remove_file(&dir.join(PREPARED_NAME))?;
    }
    Ok(())
}

/// Reads a whole segment (up to its size, rounded up to the block size for direct I/O).
pub(crate) fn read_all(file: &dyn IoFile, path: &Path) -> Result<AlignedBuf, WalError> {
    let len = file.len().map_err(|e| WalError::io("stat segment", path, e))?;
    let mut buf = AlignedBuf::zeroed(crate::io::align_up(len, BLOCK_SIZE as u64) as usize);
    let mut offset = 0usize;
    let chunk = 1 << 20;
    while (offset as u64) < len {
        let end = (offset + chunk).min(buf.len());
        let got = file
            .read_at(&mut buf[offset..end], offset as u64)
            .map_err(|e| WalError::io("read segment", path, e))?;
        if got == 0 {
            break;
        }
        offset += got;
    }
    buf.resize(len as usize);
    Ok(buf)
}

/// Reads `[offset, offset + len)` of a segment with the alignment the file needs.
pub(crate) fn read_span(
    file: &dyn IoFile,
    path: &Path,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, WalError> {
    let alignment = file.alignment().max(1) as u64;
    if alignment == 1 {
        // No alignment needed: read straight into the returned buffer.
        let mut buf = vec![0u8; len];
        read_exact_at(file, &mut buf, offset).map_err(|e| WalError::io("read entry", path, e))?;
        return Ok(buf);
    }
    let start = crate::io::align_down(offset, alignment);
    let end = crate::io::align_up(offset + len as u64, alignment);
    let mut buf = AlignedBuf::zeroed((end - start) as usize);
    read_exact_at(file, &mut buf, start).map_err(|e| WalError::io("read entry", path, e))?;
    let from = (offset - start) as usize;
    Ok(buf[from..from + len].to_vec())
}

pub(crate) const FIRST_RECORD_OFFSET: u64 = DATA_OFFSET;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Io;
    use crate::io::SimDisk;

    /// Regression test for the 64-client write tail: a prepared segment used to be zero-filled whole and
    /// synced once, one 64 MiB flush that stalled the log's fdatasyncs. Each MiB's writeback now starts as
    /// it is written and every 8 MiB are fdatasynced; a failing one of those syncs fails the preparation as
    /// a sync failure and leaves no file.
    #[test]
    fn zero_fill_writes_back_every_mebibyte_and_syncs_every_eight() {
        let disk = SimDisk::new(7);
        let mut config = WalConfig::new("/wal");
        config.segment_size_bytes = 20 << 20;
        config.preallocate = Preallocate::ZeroFill;
        disk.create_dir_all(&config.dir).unwrap();
        let metrics = Metrics::default();
        let (syncs, writes, writebacks) = (disk.sync_count(), disk.write_count(), disk.writeback_count());
        let mut paced = Vec::new();
        prepare(&disk, &config, &metrics, &mut |zeroed| paced.push(zeroed)).unwrap();
        let chunks = config.segment_size_bytes / ZERO_FILL_CHUNK_BYTES as u64;
        assert_eq!(chunks, 20);
        assert_eq!(disk.write_count() - writes, chunks, "one write per chunk");
        assert_eq!(disk.writeback_count() - writebacks, chunks, "each chunk's writeback started");
        // An fdatasync after 8 and 16 MiB, then the closing fsync.
        assert_eq!(disk.sync_count() - syncs, 3);
        // Asked to pace after each chunk but the last.
        assert_eq!(paced, (1..chunks).map(|i| i << 20).collect::<Vec<_>>());

        disk.fail_sync_after(1);
        let err = prepare(&disk, &config, &metrics, &mut |_| ()).unwrap_err();
        assert!(err.sync, "a failed zero-fill sync is reported as a sync failure: {err:?}");
        assert!(!disk.list_dir(&config.dir).unwrap().iter().any(|n| n == PREPARED_NAME));
    }

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name(1), "0000000000000001.wal");
        assert_eq!(parse_file_name(&file_name(0xabc)), Some(0xabc));
        assert_eq!(parse_file_name("0001.wal"), None);
        assert_eq!(parse_file_name("000000000000000g.wal"), None);
        assert!(file_name(9) < file_name(10));
    }
}
