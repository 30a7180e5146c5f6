//! A small tmpfs mounted by a test, to meet a real ENOSPC (the simulated disk cannot reach LMDB, which
//! does its own I/O). Mounting needs root (or CAP_SYS_ADMIN); where it is refused the test says so loudly
//! on stderr and skips.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted (lazily, so a file still open cannot keep it) when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `"8m"`) on a new temporary directory;
    /// `None`, after an `eprintln!` naming the test and why, where mounting is not permitted.
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                let why = String::from_utf8_lossy(&output.stderr);
                eprintln!(
                    "SKIPPED {test}: cannot mount a {size} tmpfs ({}: {}); it needs root or CAP_SYS_ADMIN",
                    output.status,
                    why.trim()
                );
                None
            }
            Err(error) => {
                eprintln!("SKIPPED {test}: cannot run mount ({error}); it needs mount(8) and root");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `ballast` (in this mount) until a write fails with ENOSPC: first in 1 MiB
    /// writes, then in 4 KiB ones, so that not one page is left. Returns the ballast's path.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("ballast");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("ballast");
        for chunk in [1usize << 20, 4096, 512] {
            let bytes = vec![0xa5u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(n) if n == bytes.len() => {}
                    Ok(_) => break,
                    Err(error) if error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                        break
                    }
                    Err(error) => panic!("filling {}: {error}", path.display()),
                }
            }
        }
        path
    }

    /// Fills the file system (as [`Tmpfs::fill`]), then gives `bytes` back by shortening the ballast.
    pub fn fill_leaving(&self, bytes: u64) -> PathBuf {
        let path = self.fill();
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("ballast");
        let len = file.metadata().expect("stat ballast").len();
        file.set_len(len.saturating_sub(bytes)).expect("shorten ballast");
        path
    }

    /// Free bytes on the file system.
    pub fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.path()).expect("statvfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
