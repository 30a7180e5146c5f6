//! Segment files: naming, creation (header, preallocation, fsync of file and directory), and reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{ChunkHeader, ChunkKind, CHUNK_HEADER_LEN, DATA_OFFSET};
use crate::io::{read_exact_at, AlignedBuf, Io, IoFile, OpenMode, BLOCK_SIZE};

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

/// Creates segment `seq`: header block, reserved space, then fsync of the file and of the directory, so
/// that a segment that exists after a crash has a valid header and its full size.
pub(crate) fn create(
    io: &dyn Io,
    config: &WalConfig,
    seq: u64,
    store_id: u64,
    metrics: &Metrics,
) -> Result<SegmentHandle, WalError> {
    let (dir, size_bytes, preallocate, retry) =
        (config.dir.as_path(), config.segment_size_bytes, config.preallocate, &config.retry);
    let path = dir.join(file_name(seq));
    let file = io.open(&path, OpenMode::CreateNew).map_err(|e| WalError::io("create segment", &path, e))?;
    let header = ChunkHeader {
        kind: ChunkKind::LogSegment,
        sequence: seq,
        generation: 0,
        store_id,
        capacity_bytes: size_bytes,
        base: 0,
    };
    let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
    block[..CHUNK_HEADER_LEN].copy_from_slice(&header.encode());
    let result = (|| {
        match preallocate {
            Preallocate::Allocate => file.allocate(0, size_bytes)?,
            Preallocate::ZeroFill => {
                let zeros = AlignedBuf::zeroed(1 << 20);
                let mut offset = 0u64;
                while offset < size_bytes {
                    let len = ((size_bytes - offset) as usize).min(zeros.len());
                    write_all_retrying(file.as_ref(), &zeros[..len], offset, retry, metrics)?;
                    offset += len as u64;
                }
            }
        }
        write_all_retrying(file.as_ref(), &block, 0, retry, metrics)?;
        file.sync_all()?;
        io.sync_dir(dir)
    })();
    if let Err(error) = result {
        // Do not leave a half-made segment behind: it would be read as a torn tail at the next open.
        let _ = io.remove_file(&path);
        return Err(WalError::io("create segment", &path, error));
    }
    Ok(SegmentHandle { file, path, max_index: None })
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

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(file_name(1), "0000000000000001.wal");
        assert_eq!(parse_file_name(&file_name(0xabc)), Some(0xabc));
        assert_eq!(parse_file_name("0001.wal"), None);
        assert_eq!(parse_file_name("000000000000000g.wal"), None);
        assert!(file_name(9) < file_name(10));
    }
}
