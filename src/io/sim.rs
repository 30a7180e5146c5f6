//! A simulated disk that models durability, for crash and fault tests.
//!
//! Each file keeps the bytes a reader sees now and the bytes that are durable. A write dirties the
//! 512-byte sectors it touches; `sync_data`/`sync_all` make the file's dirty sectors and size durable;
//! `sync_dir` makes a directory's entries (creations, removals, renames) durable. [`SimDisk::crash`]
//! throws away everything not durable — in [`CrashMode::TornSectors`] each dirty sector independently
//! survives or not, which models a write torn at 512-byte granularity — and returns a handle for the
//! "rebooted" disk; every handle from before the crash, and every file opened through one, fails with EIO
//! from then on, as the dead process would.
//!
//! Faults: an fsync or a write can be made to fail (EIO, ENOSPC), writes can be interrupted (EINTR), a
//! write can panic (to test worker panic handling), and a capacity makes the disk fill up.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Io, IoError, IoFile, IoResult, OpenMode};

/// Granularity at which the simulated disk tears writes.
pub const SECTOR_SIZE: u64 = 512;

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only durable bytes survive.
    LoseUnsynced,
    /// Durable bytes survive, and each dirty sector independently does or does not (a torn write).
    TornSectors,
}

#[derive(Debug, Default)]
struct FileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    dirty: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct Faults {
    sync_fail_in: Option<u64>,
    write_fail_in: Option<(u64, std::io::ErrorKind)>,
    write_panic_in: Option<u64>,
    write_interrupts: u32,
    capacity_bytes: Option<u64>,
}

#[derive(Debug)]
struct SimState {
    epoch: u64,
    next_file_id: u64,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    files: HashMap<u64, FileState>,
    faults: Faults,
    rng: u64,
    alignment: usize,
    syncs: u64,
    writes: u64,
}

impl SimState {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.current.len().max(f.durable.len()) as u64).sum()
    }
}

/// A handle on a simulated disk. Clones share the disk; a crash makes every existing handle dead.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
    gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    epoch: u64,
}

fn errno(kind: std::io::ErrorKind, op: &'static str) -> IoError {
    let raw = match kind {
        std::io::ErrorKind::StorageFull => 28,   // ENOSPC
        std::io::ErrorKind::Interrupted => 4,    // EINTR
        std::io::ErrorKind::NotFound => 2,       // ENOENT
        std::io::ErrorKind::AlreadyExists => 17, // EEXIST
        _ => 5,                                  // EIO
    };
    IoError::os(op, std::io::Error::from_raw_os_error(raw))
}

fn countdown(slot: &mut Option<u64>) -> bool {
    match slot {
        Some(0) => {
            *slot = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

impl SimDisk {
    /// An empty disk whose files demand direct-I/O alignment ([`crate::io::BLOCK_SIZE`]) of every read and
    /// write, so that tests cover the block-aligned batch layout.
    pub fn new_direct(seed: u64) -> Self {
        let disk = SimDisk::new(seed);
        disk.state.lock().alignment = super::BLOCK_SIZE;
        disk
    }

    /// An empty disk whose random choices (torn sectors) follow `seed`.
    pub fn new(seed: u64) -> Self {
        let state = SimState {
            epoch: 0,
            next_file_id: 1,
            names: HashMap::new(),
            durable_names: HashMap::new(),
            dirs: BTreeSet::new(),
            files: HashMap::new(),
            faults: Faults::default(),
            rng: seed | 1,
            alignment: 1,
            syncs: 0,
            writes: 0,
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
            gate: Arc::new((Mutex::new(false), parking_lot::Condvar::new())),
            epoch: 0,
        }
    }

    fn live(&self, op: &'static str) -> IoResult<parking_lot::MutexGuard<'_, SimState>> {
        let guard = self.state.lock();
        if guard.epoch != self.epoch {
            return Err(errno(std::io::ErrorKind::Other, op));
        }
        Ok(guard)
    }

    /// Crashes the machine: everything not durable is lost (or torn, per `mode`). Returns the handle of the
    /// restarted disk; this handle and all files opened through it fail with EIO from now on.
    pub fn crash(&self, mode: CrashMode) -> SimDisk {
        let mut st = self.state.lock();
        st.epoch += 1;
        st.faults = Faults { capacity_bytes: st.faults.capacity_bytes, ..Faults::default() };
        st.names = st.durable_names.clone();
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|id, _| live.contains(id));
        // In id order, so that which sectors tear is a function of the seed alone.
        let mut ids: Vec<u64> = st.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let dirty: Vec<u64> =
                st.files.get(&id).map(|f| f.dirty.iter().copied().collect()).unwrap_or_default();
            let mut keep = Vec::new();
            if mode == CrashMode::TornSectors {
                for sector in dirty {
                    if st.next_random() % 2 == 0 {
                        keep.push(sector);
                    }
                }
            }
            if let Some(file) = st.files.get_mut(&id) {
                let mut image = std::mem::take(&mut file.durable);
                for sector in keep {
                    let start = (sector * SECTOR_SIZE) as usize;
                    let end = (start + SECTOR_SIZE as usize).min(image.len()).min(file.current.len());
                    if start < end {
                        image[start..end].copy_from_slice(&file.current[start..end]);
                    }
                }
                file.current = image.clone();
                file.durable = image;
                file.dirty.clear();
            }
        }
        SimDisk { state: Arc::clone(&self.state), gate: Arc::clone(&self.gate), epoch: st.epoch }
    }

    /// Holds every write call at its start until [`SimDisk::resume_writes`] (to fill queues in tests).
    pub fn pause_writes(&self) {
        *self.gate.0.lock() = true;
    }

    /// Lets held and future writes proceed.
    pub fn resume_writes(&self) {
        *self.gate.0.lock() = false;
        self.gate.1.notify_all();
    }

    /// Disarms every injected fault not yet triggered (a capacity limit stays).
    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.faults = Faults { capacity_bytes: st.faults.capacity_bytes, ..Faults::default() };
    }

    /// The next `n` syncs succeed; the one after fails with EIO (once).
    pub fn fail_sync_after(&self, n: u64) {
        self.state.lock().faults.sync_fail_in = Some(n);
    }

    /// The next `n` writes succeed; the one after fails with `kind` (once).
    pub fn fail_write_after(&self, n: u64, kind: std::io::ErrorKind) {
        self.state.lock().faults.write_fail_in = Some((n, kind));
    }

    /// The next `n` writes succeed; the one after panics inside the write call.
    pub fn panic_on_write_after(&self, n: u64) {
        self.state.lock().faults.write_panic_in = Some(n);
    }

    /// The next `count` writes fail with EINTR and write nothing.
    pub fn interrupt_next_writes(&self, count: u32) {
        self.state.lock().faults.write_interrupts = count;
    }

    /// Limits the bytes all files may occupy; growth past it fails with ENOSPC. `None` removes the limit.
    pub fn set_capacity_bytes(&self, capacity_bytes: Option<u64>) {
        self.state.lock().faults.capacity_bytes = capacity_bytes;
    }

    /// Flips bits in both the visible and the durable bytes of a file (a bit rot on the medium).
    pub fn corrupt(&self, path: &Path, offset: u64, xor_mask: u8) -> bool {
        let mut st = self.state.lock();
        let Some(id) = st.names.get(path).copied() else { return false };
        let Some(file) = st.files.get_mut(&id) else { return false };
        let at = offset as usize;
        let mut hit = false;
        for image in [&mut file.current, &mut file.durable] {
            if let Some(byte) = image.get_mut(at) {
                *byte ^= xor_mask;
                hit = true;
            }
        }
        hit
    }

    /// The bytes a reader of `path` sees now.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let id = st.names.get(path)?;
        st.files.get(id).map(|f| f.current.clone())
    }

    /// Number of successful sync calls so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Number of successful write calls so far.
    pub fn write_count(&self) -> u64 {
        self.state.lock().writes
    }
}

impl Io for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> IoResult<Arc<dyn IoFile>> {
        let mut st = self.live("open")?;
        let id = match (mode, st.names.get(path).copied()) {
            (OpenMode::CreateNew, Some(_)) => return Err(errno(std::io::ErrorKind::AlreadyExists, "open")),
            (OpenMode::CreateNew, None) => {
                let parent_known = path.parent().is_some_and(|p| st.dirs.contains(p));
                if !parent_known {
                    return Err(errno(std::io::ErrorKind::NotFound, "open"));
                }
                let id = st.next_file_id;
                st.next_file_id += 1;
                st.files.insert(id, FileState::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
            (OpenMode::Existing, Some(id)) => id,
            (OpenMode::Existing, None) => return Err(errno(std::io::ErrorKind::NotFound, "open")),
        };
        Ok(Arc::new(SimFile { disk: self.clone(), id }))
    }

    fn remove_file(&self, path: &Path) -> IoResult<()> {
        let mut st = self.live("unlink")?;
        match st.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(errno(std::io::ErrorKind::NotFound, "unlink")),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> IoResult<()> {
        let mut st = self.live("rename")?;
        let Some(id) = st.names.remove(from) else {
            return Err(errno(std::io::ErrorKind::NotFound, "rename"));
        };
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> IoResult<()> {
        // Directories are modelled as durable as soon as they exist.
        let mut st = self.live("mkdir")?;
        let mut dir = Some(path);
        while let Some(d) = dir {
            if d.as_os_str().is_empty() {
                break;
            }
            st.dirs.insert(d.to_path_buf());
            dir = d.parent();
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> IoResult<Vec<String>> {
        let st = self.live("readdir")?;
        if !st.dirs.contains(path) {
            return Err(errno(std::io::ErrorKind::NotFound, "readdir"));
        }
        let files = st.names.keys().filter(|p| p.parent() == Some(path));
        let dirs = st.dirs.iter().filter(|p| p.parent() == Some(path));
        let mut entries: Vec<String> = files
            .chain(dirs)
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        // Any order is a valid directory order; a sorted one keeps simulations a function of their seed.
        entries.sort_unstable();
        Ok(entries)
    }

    fn sync_dir(&self, path: &Path) -> IoResult<()> {
        let mut st = self.live("fsync dir")?;
        let SimState { names, durable_names, .. } = &mut *st;
        durable_names.retain(|p, _| p.parent() != Some(path));
        for (p, id) in names.iter() {
            if p.parent() == Some(path) {
                durable_names.insert(p.clone(), *id);
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    id: u64,
}

impl SimFile {
    fn with_file<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut SimState, u64) -> IoResult<R>,
    ) -> IoResult<R> {
        let mut st = self.disk.live(op)?;
        if !st.files.contains_key(&self.id) {
            return Err(errno(std::io::ErrorKind::Other, op));
        }
        f(&mut st, self.id)
    }

    fn sync(&self, op: &'static str) -> IoResult<()> {
        self.with_file(op, |st, id| {
            if countdown(&mut st.faults.sync_fail_in) {
                return Err(errno(std::io::ErrorKind::Other, op));
            }
            st.syncs += 1;
            let Some(file) = st.files.get_mut(&id) else { return Err(errno(std::io::ErrorKind::Other, op)) };
            file.durable.resize(file.current.len(), 0);
            let len = file.current.len();
            for sector in std::mem::take(&mut file.dirty) {
                let start = (sector * SECTOR_SIZE) as usize;
                let end = (start + SECTOR_SIZE as usize).min(len);
                if start < end {
                    file.durable[start..end].copy_from_slice(&file.current[start..end]);
                }
            }
            Ok(())
        })
    }

    fn grow(st: &mut SimState, id: u64, new_len: usize, op: &'static str) -> IoResult<()> {
        let current_len = st.files.get(&id).map_or(0, |f| f.current.len());
        if new_len <= current_len {
            return Ok(());
        }
        if let Some(capacity) = st.faults.capacity_bytes {
            if st.used_bytes() + (new_len - current_len) as u64 > capacity {
                return Err(errno(std::io::ErrorKind::StorageFull, op));
            }
        }
        if let Some(file) = st.files.get_mut(&id) {
            file.current.resize(new_len, 0);
        }
        Ok(())
    }
}

impl IoFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> IoResult<usize> {
        self.with_file("pread", |st, id| {
            super::check_alignment("pread", st.alignment, buf.as_ptr() as usize, buf.len(), offset)?;
            let Some(file) = st.files.get(&id) else { return Ok(0) };
            let start = (offset as usize).min(file.current.len());
            let end = start.saturating_add(buf.len()).min(file.current.len());
            buf[..end - start].copy_from_slice(&file.current[start..end]);
            Ok(end - start)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> IoResult<usize> {
        {
            let (paused, cv) = &*self.disk.gate;
            let mut paused = paused.lock();
            while *paused {
                cv.wait(&mut paused);
            }
        }
        self.with_file("pwrite", |st, id| {
            super::check_alignment("pwrite", st.alignment, buf.as_ptr() as usize, buf.len(), offset)?;
            if st.faults.write_interrupts > 0 {
                st.faults.write_interrupts -= 1;
                return Err(errno(std::io::ErrorKind::Interrupted, "pwrite"));
            }
            if let Some((n, kind)) = st.faults.write_fail_in {
                if n == 0 {
                    st.faults.write_fail_in = None;
                    return Err(errno(kind, "pwrite"));
                }
                st.faults.write_fail_in = Some((n - 1, kind));
            }
            if countdown(&mut st.faults.write_panic_in) {
                panic!("simulated panic inside pwrite at offset {offset}");
            }
            if buf.is_empty() {
                return Ok(0);
            }
            let end = offset as usize + buf.len();
            Self::grow(st, id, end, "pwrite")?;
            st.writes += 1;
            let Some(file) = st.files.get_mut(&id) else { return Ok(0) };
            file.current[offset as usize..end].copy_from_slice(buf);
            let first = offset / SECTOR_SIZE;
            let last = (end as u64 - 1) / SECTOR_SIZE;
            file.dirty.extend(first..=last);
            Ok(buf.len())
        })
    }

    fn sync_data(&self) -> IoResult<()> {
        self.sync("fdatasync")
    }

    fn sync_all(&self) -> IoResult<()> {
        self.sync("fsync")
    }

    fn allocate(&self, offset: u64, len_bytes: u64) -> IoResult<()> {
        self.with_file("fallocate", |st, id| {
            Self::grow(st, id, offset.saturating_add(len_bytes) as usize, "fallocate")
        })
    }

    fn set_len(&self, len_bytes: u64) -> IoResult<()> {
        self.with_file("ftruncate", |st, id| {
            let new_len = len_bytes as usize;
            Self::grow(st, id, new_len, "ftruncate")?;
            if let Some(file) = st.files.get_mut(&id) {
                file.current.truncate(new_len);
                let sectors_kept = (new_len as u64).div_ceil(SECTOR_SIZE);
                file.dirty.retain(|&s| s < sectors_kept);
            }
            Ok(())
        })
    }

    fn len(&self) -> IoResult<u64> {
        self.with_file("fstat", |st, id| Ok(st.files.get(&id).map_or(0, |f| f.current.len() as u64)))
    }

    fn alignment(&self) -> usize {
        self.disk.state.lock().alignment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::read_exact_at;

    fn setup() -> (SimDisk, PathBuf) {
        let disk = SimDisk::new(7);
        let dir = PathBuf::from("/d");
        disk.create_dir_all(&dir).expect("mkdir");
        (disk, dir)
    }

    #[test]
    fn unsynced_writes_and_undurable_names_are_lost_at_crash() {
        let (disk, dir) = setup();
        let synced = disk.open(&dir.join("a"), OpenMode::CreateNew).expect("create a");
        synced.write_at(b"durable", 0).expect("write");
        synced.sync_data().expect("sync");
        disk.sync_dir(&dir).expect("sync dir");
        synced.write_at(b"LOST", 0).expect("write");
        let unnamed = disk.open(&dir.join("b"), OpenMode::CreateNew).expect("create b");
        unnamed.write_at(b"x", 0).expect("write");
        unnamed.sync_data().expect("sync");

        let disk = disk.crash(CrashMode::LoseUnsynced);

        let a = disk.open(&dir.join("a"), OpenMode::Existing).expect("a survives");
        let mut buf = [0u8; 7];
        read_exact_at(a.as_ref(), &mut buf, 0).expect("read");
        assert_eq!(&buf, b"durable");
        assert!(disk.open(&dir.join("b"), OpenMode::Existing).is_err(), "b's name was never synced");
        assert!(synced.write_at(b"z", 0).is_err(), "handles from before the crash are dead");
    }

    #[test]
    fn torn_crash_keeps_each_dirty_sector_or_not() {
        let (disk, dir) = setup();
        let file = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        file.allocate(0, 64 * SECTOR_SIZE).expect("allocate");
        file.sync_all().expect("sync");
        disk.sync_dir(&dir).expect("sync dir");
        file.write_at(&vec![0xab; 64 * SECTOR_SIZE as usize], 0).expect("write");

        let disk = disk.crash(CrashMode::TornSectors);

        let bytes = disk.file_bytes(&dir.join("f")).expect("file");
        let kept = bytes.chunks(SECTOR_SIZE as usize).filter(|s| s.iter().all(|&b| b == 0xab)).count();
        let lost = bytes.chunks(SECTOR_SIZE as usize).filter(|s| s.iter().all(|&b| b == 0)).count();
        assert_eq!(kept + lost, 64, "every sector is wholly old or wholly new");
        assert!(kept > 0 && lost > 0, "with 64 sectors both outcomes occur (kept {kept})");
    }

    #[test]
    fn injected_faults_fire_once_and_capacity_fills() {
        let (disk, dir) = setup();
        let file = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        disk.fail_sync_after(1);
        file.sync_data().expect("first sync ok");
        let err = file.sync_data().expect_err("second sync fails");
        assert_eq!(err.raw_os_error(), Some(5), "EIO");
        file.sync_data().expect("fault fires once");

        disk.interrupt_next_writes(1);
        assert!(file.write_at(b"a", 0).expect_err("EINTR").is_transient());
        file.write_at(b"a", 0).expect("then ok");

        disk.set_capacity_bytes(Some(100));
        assert!(file.write_at(&[1u8; 200], 0).expect_err("full").is_no_space());
    }
}
