//! Every file access bop makes goes through [`Io`] and [`IoFile`], so the simulated disk and fault
//! injection see all of it.
//!
//! Backends: [`BufferedIo`] (pwrite + fdatasync through the page cache), [`DirectIo`] (O_DIRECT with
//! aligned buffers, falling back to buffered where the filesystem refuses it) and [`SimDisk`] (in memory,
//! modelling what survives a crash). The trait is synchronous and positional; an io_uring backend would
//! implement the same calls, and batching of submissions would sit behind [`IoFile::write_at`] callers in
//! the WAL writer, which already issues one large write per batch.

mod aligned;
mod direct;
mod posix;
mod sim;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use aligned::{align_down, align_up, AlignedBuf, BLOCK_SIZE};
pub use direct::DirectIo;
pub use posix::BufferedIo;
pub use sim::{CrashMode, SimDisk};

/// Result of an I/O call.
pub type IoResult<T> = Result<T, IoError>;

/// An I/O failure, typed so that callers can tell a misuse from the OS saying no.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system (or the simulated disk, in the same terms) returned an error.
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed, e.g. `"pwrite"`, `"fdatasync"`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A direct-I/O call whose buffer address, length or offset is not a multiple of the alignment.
    #[error(
        "misaligned {op}: offset {offset}, len {len_bytes}, buffer address mod {alignment} = {addr_mod}"
    )]
    Misaligned {
        /// The call.
        op: &'static str,
        /// File offset asked for.
        offset: u64,
        /// Length asked for.
        len_bytes: usize,
        /// Buffer address modulo the alignment.
        addr_mod: usize,
        /// Required alignment in bytes.
        alignment: usize,
    },
    /// A read found fewer bytes than asked for before the end of the file.
    #[error("short read at offset {offset}: wanted {wanted_bytes} bytes, file ends after {got_bytes}")]
    UnexpectedEof {
        /// Offset of the read.
        offset: u64,
        /// Bytes asked for.
        wanted_bytes: usize,
        /// Bytes read.
        got_bytes: usize,
    },
}

impl IoError {
    pub(crate) fn os(op: &'static str, source: std::io::Error) -> Self {
        IoError::Os { op, source }
    }

    /// The `std::io::ErrorKind` of an OS error, if it is one.
    pub fn kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            IoError::Os { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The raw errno of an OS error, if it is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True for errors on which the same call may simply be made again (EINTR, EAGAIN).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), Some(std::io::ErrorKind::Interrupted) | Some(std::io::ErrorKind::WouldBlock))
    }

    /// True when the device is out of space (ENOSPC) or the quota is exhausted (EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self.kind(), Some(std::io::ErrorKind::StorageFull))
            || self.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
    }
}

/// How a file is opened. Files are always opened for reading and writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file; fail if it exists.
    CreateNew,
    /// Open a file that exists.
    Existing,
}

/// A file system as bop sees it.
pub trait Io: Send + Sync + fmt::Debug + 'static {
    /// Opens (or creates) a file.
    fn open(&self, path: &Path, mode: OpenMode) -> IoResult<Arc<dyn IoFile>>;
    /// Removes a file. Durable only after [`Io::sync_dir`] on its directory.
    fn remove_file(&self, path: &Path) -> IoResult<()>;
    /// Renames a file. Durable only after [`Io::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> IoResult<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> IoResult<()>;
    /// Names of the entries of a directory (not paths), in no particular order.
    fn list_dir(&self, path: &Path) -> IoResult<Vec<String>>;
    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, path: &Path) -> IoResult<()>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// An open file. All calls are positional; implementations are safe to share between threads.
#[allow(clippy::len_without_is_empty)] // `len` is the file size, as `std::fs::Metadata::len`.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<usize>;
    /// Writes up to `buf.len()` bytes at `offset`; returns how many were written.
    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<usize>;
    /// fdatasync: written data (and the size, if it changed) is durable when this returns `Ok`.
    fn sync_data(&self) -> IoResult<()>;
    /// fsync: data and all metadata are durable when this returns `Ok`.
    fn sync_all(&self) -> IoResult<()>;
    /// Starts writing `[offset, offset+len)` to the disk without waiting for it and without flushing the
    /// disk's cache (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`). Makes nothing durable: it only keeps
    /// a later fsync from having much left to write. A no-op where the bytes are not cached (direct I/O,
    /// the simulated disk).
    fn start_writeback(&self, offset: u64, len_bytes: u64) -> IoResult<()> {
        let _ = (offset, len_bytes);
        Ok(())
    }
    /// Reserves `[offset, offset+len)` (fallocate), growing the file if needed; the range reads as zeros.
    fn allocate(&self, offset: u64, len_bytes: u64) -> IoResult<()>;
    /// Truncates or extends the file to `len_bytes` (extension reads as zeros).
    fn set_len(&self, len_bytes: u64) -> IoResult<()>;
    /// The file's size in bytes.
    fn len(&self) -> IoResult<u64>;
    /// Required alignment of buffer address, length and offset for reads and writes (1 = none).
    fn alignment(&self) -> usize;
}

/// Creates the directory `path` (and any missing parents) and makes it durable: fsyncs the parent of
/// every directory this call created, outermost first, and the parent of `path` even if `path` already
/// existed (an earlier process may have created it and died before the fsync). A new directory is an
/// entry in its parent like a new file is, and is lost with everything in it if a crash comes before the
/// parent's fsync. Call it wherever bop creates a directory it will keep files in.
pub fn create_dir_durable(io: &dyn Io, path: &Path) -> IoResult<()> {
    let mut missing = Vec::new();
    let mut dir = Some(path);
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        match io.list_dir(d) {
            Ok(_) => break,
            Err(e) if e.kind() == Some(std::io::ErrorKind::NotFound) => {
                missing.push(d);
                dir = d.parent();
            }
            Err(e) => return Err(e),
        }
    }
    io.create_dir_all(path)?;
    if missing.is_empty() {
        missing.push(path);
    }
    // Outermost first: a directory's entry is only reachable once its own parent's entry is durable.
    let mut parents: Vec<&Path> = missing.iter().rev().filter_map(|d| d.parent()).collect();
    parents.dedup();
    for parent in parents {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        io.sync_dir(parent)?;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`, looping over short reads.
pub fn read_exact_at(file: &dyn IoFile, buf: &mut [u8], offset: u64) -> IoResult<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let got = file.read_at(&mut buf[done..], offset + done as u64)?;
        if got == 0 {
            return Err(IoError::UnexpectedEof { offset, wanted_bytes: buf.len(), got_bytes: done });
        }
        done += got;
    }
    Ok(())
}

pub(crate) fn check_alignment(
    op: &'static str,
    alignment: usize,
    addr: usize,
    len_bytes: usize,
    offset: u64,
) -> IoResult<()> {
    if alignment <= 1 {
        return Ok(());
    }
    let addr_mod = addr % alignment;
    if addr_mod != 0 || len_bytes % alignment != 0 || offset % alignment as u64 != 0 {
        return Err(IoError::Misaligned { op, offset, len_bytes, addr_mod, alignment });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::IoError;

    #[test]
    fn enospc_and_edquot_are_no_space() {
        for errno in [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT] {
            let error = IoError::os("pwrite", std::io::Error::from_raw_os_error(errno.raw_os_error()));
            assert!(error.is_no_space(), "{error}");
        }
        let eio =
            IoError::os("pwrite", std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()));
        assert!(!eio.is_no_space());
    }
}
