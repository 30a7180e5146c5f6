//! Direct I/O: O_DIRECT files that bypass the page cache; every read and write must be block-aligned.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::aligned::BLOCK_SIZE;
use super::posix::{self, open_posix, PosixFile};
use super::{Io, IoError, IoFile, IoResult, OpenMode};

/// O_DIRECT backend. Where the file system refuses O_DIRECT (tmpfs, some overlay file systems), files are
/// opened buffered instead, with one warning in the log; [`IoFile::alignment`] tells which one a file got.
#[derive(Debug, Default)]
pub struct DirectIo {
    fallback_logged: AtomicBool,
}

impl DirectIo {
    /// The direct backend.
    pub fn new() -> Self {
        DirectIo { fallback_logged: AtomicBool::new(false) }
    }
}

impl Io for DirectIo {
    fn open(&self, path: &Path, mode: OpenMode) -> IoResult<Arc<dyn IoFile>> {
        match open_posix(path, mode, OFlags::DIRECT) {
            Ok(fd) => Ok(Arc::new(PosixFile::new(fd, path, BLOCK_SIZE))),
            Err(e) if e == rustix::io::Errno::INVAL => {
                if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %path.display(),
                        "file system refuses O_DIRECT; falling back to buffered I/O for this store"
                    );
                }
                let fd = open_posix(path, mode, OFlags::empty())
                    .map_err(|e| IoError::os("open", std::io::Error::from(e)))?;
                Ok(Arc::new(PosixFile::new(fd, path, 1)))
            }
            Err(e) => Err(IoError::os("open", std::io::Error::from(e))),
        }
    }

    fn remove_file(&self, path: &Path) -> IoResult<()> {
        posix::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> IoResult<()> {
        posix::rename(from, to)
    }

    fn create_dir_all(&self, path: &Path) -> IoResult<()> {
        posix::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> IoResult<Vec<String>> {
        posix::list_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> IoResult<()> {
        posix::sync_dir(path)
    }

    fn name(&self) -> &'static str {
        "direct"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_exact_at, AlignedBuf};

    #[test]
    fn misaligned_calls_get_a_typed_error_and_aligned_ones_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = DirectIo::new();
        let file = io.open(&dir.path().join("f"), OpenMode::CreateNew).expect("open");
        if file.alignment() == 1 {
            // The test file system refuses O_DIRECT: the fallback is what we can check here.
            return;
        }
        let mut buf = AlignedBuf::zeroed(2 * BLOCK_SIZE);
        buf[..5].copy_from_slice(b"hello");
        let err = file.write_at(&buf[..100], 0).expect_err("short length");
        assert!(matches!(err, IoError::Misaligned { len_bytes: 100, .. }), "{err:?}");
        let err = file.write_at(&buf[..BLOCK_SIZE], 512).expect_err("odd offset");
        assert!(matches!(err, IoError::Misaligned { offset: 512, .. }), "{err:?}");
        let err = file.write_at(&buf[1..BLOCK_SIZE + 1], 0).expect_err("odd address");
        assert!(matches!(err, IoError::Misaligned { addr_mod: 1, .. }), "{err:?}");

        assert_eq!(file.write_at(&buf[..BLOCK_SIZE], 0).expect("aligned write"), BLOCK_SIZE);
        file.sync_data().expect("sync");
        let mut back = AlignedBuf::zeroed(BLOCK_SIZE);
        read_exact_at(file.as_ref(), &mut back, 0).expect("aligned read");
        assert_eq!(&back[..5], b"hello");
    }
}
