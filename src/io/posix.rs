//! Files on a real file system through positional syscalls (rustix).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FallocateFlags, Mode, OFlags};

use super::{check_alignment, Io, IoError, IoFile, IoResult, OpenMode};

/// Buffered I/O: pwrite through the page cache, durability by fdatasync.
#[derive(Debug, Default, Clone, Copy)]
pub struct BufferedIo;

impl BufferedIo {
    /// The buffered backend.
    pub fn new() -> Self {
        BufferedIo
    }
}

/// A file opened through rustix; `alignment` is 1 for buffered files and the block size for O_DIRECT.
#[derive(Debug)]
pub(crate) struct PosixFile {
    fd: OwnedFd,
    path: PathBuf,
    alignment: usize,
}

pub(crate) fn open_posix(path: &Path, mode: OpenMode, extra: OFlags) -> Result<OwnedFd, rustix::io::Errno> {
    let mut flags = OFlags::RDWR | OFlags::CLOEXEC | extra;
    if mode == OpenMode::CreateNew {
        flags |= OFlags::CREATE | OFlags::EXCL;
    }
    rustix::fs::open(path, flags, Mode::from_raw_mode(0o644))
}

impl PosixFile {
    pub(crate) fn new(fd: OwnedFd, path: &Path, alignment: usize) -> Self {
        PosixFile { fd, path: path.to_path_buf(), alignment }
    }
}

fn os(op: &'static str, errno: rustix::io::Errno) -> IoError {
    IoError::os(op, std::io::Error::from(errno))
}

impl IoFile for PosixFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<usize> {
        check_alignment("pread", self.alignment, buf.as_ptr() as usize, buf.len(), offset)?;
        rustix::io::pread(self.fd.as_fd(), buf, offset).map_err(|e| os("pread", e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<usize> {
        check_alignment("pwrite", self.alignment, buf.as_ptr() as usize, buf.len(), offset)?;
        rustix::io::pwrite(self.fd.as_fd(), buf, offset).map_err(|e| os("pwrite", e))
    }

    fn sync_data(&self) -> IoResult<()> {
        rustix::fs::fdatasync(self.fd.as_fd()).map_err(|e| os("fdatasync", e))
    }

    fn sync_all(&self) -> IoResult<()> {
        rustix::fs::fsync(self.fd.as_fd()).map_err(|e| os("fsync", e))
    }

    fn start_writeback(&self, offset: u64, len_bytes: u64) -> IoResult<()> {
        if self.alignment > 1 {
            // O_DIRECT: the bytes went to the device already.
            return Ok(());
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len_bytes)) else {
            return Ok(());
        };
        // SAFETY: the descriptor is open for as long as `self.fd` lives; the call reads no memory.
        let rc =
            unsafe { libc::sync_file_range(self.fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(IoError::os("sync_file_range", std::io::Error::last_os_error()))
        }
    }

    fn allocate(&self, offset: u64, len_bytes: u64) -> IoResult<()> {
        match rustix::fs::fallocate(self.fd.as_fd(), FallocateFlags::empty(), offset, len_bytes) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                // The file system cannot reserve space; extend the size so the range still reads as zeros.
                tracing::debug!(path = %self.path.display(), "fallocate unsupported, extending with ftruncate");
                let end = offset.saturating_add(len_bytes);
                if self.len()? < end {
                    self.set_len(end)?;
                }
                Ok(())
            }
            Err(e) => Err(os("fallocate", e)),
        }
    }

    fn set_len(&self, len_bytes: u64) -> IoResult<()> {
        rustix::fs::ftruncate(self.fd.as_fd(), len_bytes).map_err(|e| os("ftruncate", e))
    }

    fn len(&self) -> IoResult<u64> {
        rustix::fs::fstat(self.fd.as_fd()).map(|st| st.st_size as u64).map_err(|e| os("fstat", e))
    }

    fn alignment(&self) -> usize {
        self.alignment
    }
}

pub(crate) fn std_err(op: &'static str) -> impl FnOnce(std::io::Error) -> IoError {
    move |source| IoError::os(op, source)
}

/// Directory operations shared by the real-file-system backends.
pub(crate) fn remove_file(path: &Path) -> IoResult<()> {
    std::fs::remove_file(path).map_err(std_err("unlink"))
}

pub(crate) fn rename(from: &Path, to: &Path) -> IoResult<()> {
    std::fs::rename(from, to).map_err(std_err("rename"))
}

pub(crate) fn create_dir_all(path: &Path) -> IoResult<()> {
    std::fs::create_dir_all(path).map_err(std_err("mkdir"))
}

pub(crate) fn list_dir(path: &Path) -> IoResult<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(std_err("readdir"))? {
        let entry = entry.map_err(std_err("readdir"))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

pub(crate) fn sync_dir(path: &Path) -> IoResult<()> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| os("open dir", e))?;
    rustix::fs::fsync(fd.as_fd()).map_err(|e| os("fsync dir", e))
}

impl Io for BufferedIo {
    fn open(&self, path: &Path, mode: OpenMode) -> IoResult<Arc<dyn IoFile>> {
        let fd = open_posix(path, mode, OFlags::empty()).map_err(|e| os("open", e))?;
        Ok(Arc::new(PosixFile::new(fd, path, 1)))
    }

    fn remove_file(&self, path: &Path) -> IoResult<()> {
        remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> IoResult<()> {
        rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> IoResult<()> {
        create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> IoResult<Vec<String>> {
        list_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> IoResult<()> {
        sync_dir(path)
    }

    fn name(&self) -> &'static str {
        "buffered"
    }
}
