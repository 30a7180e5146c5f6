//! A simulated disk that models durability, for crash and fault tests.
//!
//! Each file keeps the bytes a reader sees now and the bytes that are durable. A write dirties the
//! 512-byte sectors it touches; `sync_data`/`sync_all` make the file's dirty sectors and size durable;
//! `sync_dir` makes a directory's entries (file creations, removals, renames, and the directories created
//! in it) durable. A directory is itself an entry of its parent: until the parent is synced, a crash may
//! take it away with everything in it (only the root, `/`, always exists).
//!
//! [`SimDisk::crash`] throws away everything not durable and returns a handle for the "rebooted" disk;
//! every handle from before the crash, and every file opened through one, fails with EIO from then on, as
//! the dead process would. In [`CrashMode::TornSectors`] two more things can happen, as on a real file
//! system: each dirty sector independently survives or not (a write torn at 512-byte granularity), and a
//! prefix, in call order, of the directory operations not yet made durable by `sync_dir` survives — as
//! when another file's fsync commits ext4's journal. Such an entry survives with the file's durable bytes
//! only, so a file can come back by name with none of its unsynced contents (zero length, say).
//!
//! A failed sync behaves as Linux does after a failed writeback: the file's dirty sectors are marked
//! clean without becoming durable. Readers keep seeing the bytes, later syncs succeed without writing
//! them, and a crash loses them ("fsyncgate").
//!
//! Faults: an fsync or a write can be made to fail (EIO, ENOSPC), a write can be cut short before the next
//! one fails, syncs can be held (a hung disk) and released, writes can be interrupted (EINTR), a
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
    /// Durable bytes survive, each dirty sector independently does or does not (a torn write), and a
    /// prefix of the directory operations not yet synced survives (an early journal commit).
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
    sync_fail_in: Option<(u64, std::io::ErrorKind)>,
    /// The write after this many writes only half happens (returns a short count); the next one fails.
    write_short_in: Option<(u64, std::io::ErrorKind)>,
    write_fail_in: Option<(u64, std::io::ErrorKind)>,
    write_panic_in: Option<u64>,
    write_interrupts: u32,
    /// The directory fsync after this many directory fsyncs fails with EIO (once).
    dir_sync_fail_in: Option<u64>,
    capacity_bytes: Option<u64>,
}

/// A directory operation not yet made durable by a `sync_dir` of the directory it changes.
#[derive(Debug, Clone)]
enum NameOp {
    Link { path: PathBuf, id: u64 },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf, id: u64 },
    Mkdir { path: PathBuf },
}

fn in_dir(path: &Path, dir: &Path) -> bool {
    path.parent() == Some(dir)
}

/// The root, or the parent of a relative path's first component: always there.
fn is_root(dir: &Path) -> bool {
    dir.parent().is_none() || dir.as_os_str().is_empty()
}

impl NameOp {
    /// What remains pending of this operation once `dir` is synced (a rename between two directories is
    /// durable in each only once each is synced).
    fn without_dir(self, dir: &Path) -> Option<NameOp> {
        match self {
            NameOp::Link { ref path, .. } | NameOp::Unlink { ref path } | NameOp::Mkdir { ref path } => {
                (!in_dir(path, dir)).then_some(self)
            }
            NameOp::Rename { from, to, id } => match (in_dir(&from, dir), in_dir(&to, dir)) {
                (true, true) => None,
                (true, false) => Some(NameOp::Link { path: to, id }),
                (false, true) => Some(NameOp::Unlink { path: from }),
                (false, false) => Some(NameOp::Rename { from, to, id }),
            },
        }
    }

    fn apply(&self, names: &mut HashMap<PathBuf, u64>, dirs: &mut BTreeSet<PathBuf>) {
        match self {
            NameOp::Link { path, id } => {
                names.insert(path.clone(), *id);
            }
            NameOp::Unlink { path } => {
                names.remove(path);
            }
            NameOp::Rename { from, to, id } => {
                names.remove(from);
                names.insert(to.clone(), *id);
            }
            NameOp::Mkdir { path } => {
                dirs.insert(path.clone());
            }
        }
    }
}

#[derive(Debug)]
struct SimState {
    epoch: u64,
    next_file_id: u64,
    names: HashMap<PathBuf, u64>,
    durable_names: HashMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    /// Directory operations not yet durable, in call order.
    pending: Vec<NameOp>,
    files: HashMap<u64, FileState>,
    /// Open handles per file (of the current epoch): an unlinked file takes space until its last handle
    /// is dropped, as on POSIX.
    handles: HashMap<u64, usize>,
    faults: Faults,
    rng: u64,
    /// A second stream for the choice of surviving directory operations, so that which sectors tear
    /// stays what it was for a seed.
    names_rng: u64,
    alignment: usize,
    syncs: u64,
    writes: u64,
    /// `start_writeback` calls (hints only: the simulated disk has no cache to write back).
    writebacks: u64,
}

impl SimState {
    fn next_random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    /// Bytes taken by files that are linked or still open (an unlinked, closed file's space is free).
    fn used_bytes(&self) -> u64 {
        let linked: BTreeSet<u64> = self.names.values().copied().collect();
        self.files
            .iter()
            .filter(|(id, _)| linked.contains(id) || self.handles.get(id).is_some_and(|&n| n > 0))
            .map(|(_, f)| f.current.len().max(f.durable.len()) as u64)
            .sum()
    }
}

/// A handle on a simulated disk. Clones share the disk; a crash makes every existing handle dead.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
    gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    sync_gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    /// Sync calls now held at the paused sync gate.
    syncs_held: Arc<std::sync::atomic::AtomicUsize>,
    epoch: u64,
}

fn wait_at(gate: &(Mutex<bool>, parking_lot::Condvar), held: Option<&std::sync::atomic::AtomicUsize>) {
    let (paused, cv) = gate;
    let mut paused = paused.lock();
    if !*paused {
        return;
    }
    if let Some(held) = held {
        held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    while *paused {
        cv.wait(&mut paused);
    }
    if let Some(held) = held {
        held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn set_gate(gate: &(Mutex<bool>, parking_lot::Condvar), paused: bool) {
    *gate.0.lock() = paused;
    gate.1.notify_all();
}

/// xorshift64*: deterministic from the seed.
fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
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
            durable_dirs: BTreeSet::new(),
            pending: Vec::new(),
            files: HashMap::new(),
            handles: HashMap::new(),
            faults: Faults::default(),
            rng: seed | 1,
            names_rng: (seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1,
            alignment: 1,
            syncs: 0,
            writes: 0,
            writebacks: 0,
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
            gate: Arc::new((Mutex::new(false), parking_lot::Condvar::new())),
            sync_gate: Arc::new((Mutex::new(false), parking_lot::Condvar::new())),
            syncs_held: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
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
        let mut names = st.durable_names.clone();
        let mut dirs = st.durable_dirs.clone();
        let pending = std::mem::take(&mut st.pending);
        if mode == CrashMode::TornSectors && !pending.is_empty() {
            // The journal committed the operations up to some point, in the order they were made.
            let survive = (xorshift(&mut st.names_rng) % (pending.len() as u64 + 1)) as usize;
            for op in &pending[..survive] {
                op.apply(&mut names, &mut dirs);
            }
        }
        // A directory is there only if its parent is, and a name only if its directory is.
        let all = dirs.clone();
        dirs.retain(|d| d.ancestors().skip(1).all(|a| is_root(a) || all.contains(a)));
        names.retain(|p, _| p.parent().is_some_and(|d| is_root(d) || dirs.contains(d)));
        st.durable_names = names.clone();
        st.names = names;
        st.durable_dirs = dirs.clone();
        st.dirs = dirs;
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|id, _| live.contains(id));
        // The dead process's handles are gone.
        st.handles.clear();
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
        SimDisk {
            state: Arc::clone(&self.state),
            gate: Arc::clone(&self.gate),
            sync_gate: Arc::clone(&self.sync_gate),
            syncs_held: Arc::clone(&self.syncs_held),
            epoch: st.epoch,
        }
    }

    /// Holds every write call at its start until [`SimDisk::resume_writes`] (to fill queues in tests).
    pub fn pause_writes(&self) {
        set_gate(&self.gate, true);
    }

    /// Lets held and future writes proceed.
    pub fn resume_writes(&self) {
        set_gate(&self.gate, false);
    }

    /// Holds every file sync call (`sync_data`, `sync_all`; not `sync_dir`) at its start until
    /// [`SimDisk::resume_syncs`]: the caller blocks, as on a hung disk, and then the sync runs normally
    /// (it succeeds, or fails if a fault says so). Lets a test crash the disk between a write and its
    /// fsync, or watch a long fdatasync ([`SimDisk::syncs_held`] says when one is held).
    pub fn pause_syncs(&self) {
        set_gate(&self.sync_gate, true);
    }

    /// Lets held and future syncs proceed.
    pub fn resume_syncs(&self) {
        set_gate(&self.sync_gate, false);
    }

    /// Number of sync calls now blocked by [`SimDisk::pause_syncs`].
    pub fn syncs_held(&self) -> usize {
        self.syncs_held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Bytes the files on the disk take now (what [`SimDisk::set_capacity_bytes`] limits): linked files,
    /// and unlinked ones still open.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used_bytes()
    }

    /// Disarms every injected fault not yet triggered (a capacity limit stays).
    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.faults = Faults { capacity_bytes: st.faults.capacity_bytes, ..Faults::default() };
    }

    /// The next `n` directory fsyncs succeed; the one after fails with EIO (once), and the directory's
    /// pending entries stay pending (not durable).
    pub fn fail_dir_sync_after(&self, n: u64) {
        self.state.lock().faults.dir_sync_fail_in = Some(n);
    }

    /// The next `n` syncs succeed; the one after fails with EIO (once).
    pub fn fail_sync_after(&self, n: u64) {
        self.fail_sync_after_with(n, std::io::ErrorKind::Other);
    }

    /// The next `n` syncs succeed; the one after fails with `kind` (EIO for kinds other than
    /// `StorageFull`, `Interrupted`), once, with Linux's failed-writeback semantics.
    pub fn fail_sync_after_with(&self, n: u64, kind: std::io::ErrorKind) {
        self.state.lock().faults.sync_fail_in = Some((n, kind));
    }

    /// The next `n` writes succeed; the one after writes only the first half of its buffer (rounded
    /// down to the alignment) and returns that short count; the write after that fails with `kind`
    /// (once). Models a write that ran out of space part-way.
    pub fn fail_write_partially_after(&self, n: u64, kind: std::io::ErrorKind) {
        self.state.lock().faults.write_short_in = Some((n, kind));
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

    /// Number of `start_writeback` calls so far (they change nothing on the simulated disk).
    pub fn writeback_count(&self) -> u64 {
        self.state.lock().writebacks
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
                st.pending.push(NameOp::Link { path: path.to_path_buf(), id });
                id
            }
            (OpenMode::Existing, Some(id)) => id,
            (OpenMode::Existing, None) => return Err(errno(std::io::ErrorKind::NotFound, "open")),
        };
        *st.handles.entry(id).or_insert(0) += 1;
        Ok(Arc::new(SimFile { disk: self.clone(), id }))
    }

    fn remove_file(&self, path: &Path) -> IoResult<()> {
        let mut st = self.live("unlink")?;
        match st.names.remove(path) {
            Some(_) => {
                st.pending.push(NameOp::Unlink { path: path.to_path_buf() });
                Ok(())
            }
            None => Err(errno(std::io::ErrorKind::NotFound, "unlink")),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> IoResult<()> {
        let mut st = self.live("rename")?;
        let Some(id) = st.names.remove(from) else {
            return Err(errno(std::io::ErrorKind::NotFound, "rename"));
        };
        st.names.insert(to.to_path_buf(), id);
        st.pending.push(NameOp::Rename { from: from.to_path_buf(), to: to.to_path_buf(), id });
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> IoResult<()> {
        // A new directory is durable once its parent is synced; the root always is.
        let mut st = self.live("mkdir")?;
        let mut created = Vec::new();
        let mut dir = Some(path);
        while let Some(d) = dir {
            if d.as_os_str().is_empty() {
                break;
            }
            if st.names.contains_key(d) {
                return Err(errno(std::io::ErrorKind::AlreadyExists, "mkdir"));
            }
            if !st.dirs.contains(d) {
                created.push(d.to_path_buf());
            }
            dir = d.parent();
        }
        // Parents first, as mkdir -p makes them.
        for d in created.into_iter().rev() {
            st.dirs.insert(d.clone());
            if is_root(&d) {
                st.durable_dirs.insert(d);
            } else {
                st.pending.push(NameOp::Mkdir { path: d });
            }
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
        if countdown(&mut st.faults.dir_sync_fail_in) {
            return Err(errno(std::io::ErrorKind::Other, "fsync dir"));
        }
        // "." names the directory a relative path's first component is in.
        let path = if path == Path::new(".") { Path::new("") } else { path };
        let SimState { names, durable_names, dirs, durable_dirs, pending, .. } = &mut *st;
        durable_names.retain(|p, _| !in_dir(p, path));
        for (p, id) in names.iter() {
            if in_dir(p, path) {
                durable_names.insert(p.clone(), *id);
            }
        }
        durable_dirs.retain(|d| !in_dir(d, path));
        durable_dirs.extend(dirs.iter().filter(|d| in_dir(d, path)).cloned());
        *pending = std::mem::take(pending).into_iter().filter_map(|op| op.without_dir(path)).collect();
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
        wait_at(&self.disk.sync_gate, Some(&self.disk.syncs_held));
        self.with_file(op, |st, id| {
            let fail = match st.faults.sync_fail_in {
                Some((0, kind)) => {
                    st.faults.sync_fail_in = None;
                    Some(kind)
                }
                Some((n, kind)) => {
                    st.faults.sync_fail_in = Some((n - 1, kind));
                    None
                }
                None => None,
            };
            if let Some(kind) = fail {
                // As Linux after a failed writeback: the pages are clean, their bytes never reached the
                // disk, and no later sync writes them.
                if let Some(file) = st.files.get_mut(&id) {
                    file.dirty.clear();
                }
                return Err(errno(kind, op));
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

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut st = self.disk.state.lock();
        if st.epoch != self.disk.epoch {
            return;
        }
        if let Some(n) = st.handles.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.handles.remove(&self.id);
            }
        }
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
        wait_at(&self.disk.gate, None);
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
            let mut buf = buf;
            if let Some((n, kind)) = st.faults.write_short_in {
                if n == 0 {
                    st.faults.write_short_in = None;
                    let half = buf.len() / 2 / st.alignment.max(1) * st.alignment.max(1);
                    if half > 0 {
                        buf = &buf[..half];
                    }
                    st.faults.write_fail_in = Some((0, kind));
                } else {
                    st.faults.write_short_in = Some((n - 1, kind));
                }
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

    fn start_writeback(&self, _offset: u64, _len_bytes: u64) -> IoResult<()> {
        self.with_file("sync_file_range", |st, _| {
            st.writebacks += 1;
            Ok(())
        })
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
        crate::io::create_dir_durable(&disk, &dir).expect("mkdir");
        (disk, dir)
    }

    #[test]
    fn a_directory_is_durable_only_once_its_parent_is_synced() {
        let disk = SimDisk::new(1);
        disk.create_dir_all(Path::new("/a/b")).expect("mkdir");
        let file = disk.open(Path::new("/a/b/f"), OpenMode::CreateNew).expect("create");
        file.write_at(b"x", 0).expect("write");
        file.sync_all().expect("sync");
        disk.sync_dir(Path::new("/a/b")).expect("sync b");
        disk.sync_dir(Path::new("/a")).expect("sync a");
        // "/a" itself is still only an entry of "/" that was never synced.
        let after = disk.crash(CrashMode::LoseUnsynced);
        assert!(after.list_dir(Path::new("/a")).is_err(), "/a was never made durable");
        assert!(after.open(Path::new("/a/b/f"), OpenMode::Existing).is_err());

        // The helper syncs every parent it needs to.
        crate::io::create_dir_durable(&after, Path::new("/a/b")).expect("mkdir durable");
        let file = after.open(Path::new("/a/b/f"), OpenMode::CreateNew).expect("create");
        file.write_at(b"x", 0).expect("write");
        file.sync_all().expect("sync");
        after.sync_dir(Path::new("/a/b")).expect("sync b");
        let again = after.crash(CrashMode::LoseUnsynced);
        assert_eq!(again.file_bytes(Path::new("/a/b/f")), Some(b"x".to_vec()));
    }

    #[test]
    fn a_torn_crash_can_keep_a_new_name_without_its_contents() {
        // Creation and rename of files whose directory was never synced: some seeds keep a prefix of
        // those operations, with only the files' durable bytes.
        let mut outcomes = BTreeSet::new();
        for seed in 0..32u64 {
            let (disk, dir) = {
                let disk = SimDisk::new(seed);
                let dir = PathBuf::from("/d");
                crate::io::create_dir_durable(&disk, &dir).expect("mkdir");
                (disk, dir)
            };
            let first = disk.open(&dir.join("first"), OpenMode::CreateNew).expect("create");
            first.write_at(b"unsynced", 0).expect("write");
            let second = disk.open(&dir.join("second"), OpenMode::CreateNew).expect("create");
            second.write_at(b"synced", 0).expect("write");
            second.sync_data().expect("sync");
            disk.rename(&dir.join("second"), &dir.join("renamed")).expect("rename");
            let after = disk.crash(CrashMode::TornSectors);
            let names = after.list_dir(&dir).expect("list");
            // Journal order: a later operation survives only with every earlier one.
            let outcome = match names.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                [] => 0,
                ["first"] => 1,
                ["first", "second"] => 2,
                ["first", "renamed"] => 3,
                other => panic!("seed {seed}: {other:?} is not a prefix of the operations"),
            };
            if outcome >= 1 {
                assert_eq!(
                    after.file_bytes(&dir.join("first")),
                    Some(Vec::new()),
                    "no unsynced byte survives"
                );
            }
            if outcome >= 2 {
                let name = if outcome == 2 { "second" } else { "renamed" };
                assert_eq!(after.file_bytes(&dir.join(name)), Some(b"synced".to_vec()));
            }
            outcomes.insert(outcome);
        }
        assert_eq!(outcomes.len(), 4, "every prefix occurs over 32 seeds: {outcomes:?}");
        // Losing unsynced state is never random.
        let (disk, dir) = setup();
        let _ = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        let after = disk.crash(CrashMode::LoseUnsynced);
        assert_eq!(after.list_dir(&dir).expect("list"), Vec::<String>::new());
    }

    #[test]
    fn a_failed_sync_leaves_the_bytes_visible_but_never_durable() {
        let (disk, dir) = setup();
        let file = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        file.write_at(&[1u8; 1024], 0).expect("write");
        file.sync_data().expect("sync");
        disk.sync_dir(&dir).expect("sync dir");
        file.write_at(&[2u8; 512], 512).expect("write");
        disk.fail_sync_after(0);
        file.sync_data().expect_err("the sync fails");
        // Readers still see the new bytes, and a later sync succeeds...
        let mut buf = [0u8; 512];
        read_exact_at(file.as_ref(), &mut buf, 512).expect("read");
        assert_eq!(buf, [2u8; 512]);
        file.sync_data().expect("a later sync succeeds");
        // ...but the bytes written before the failed sync never reached the disk.
        let after = disk.crash(CrashMode::TornSectors);
        let bytes = after.file_bytes(&dir.join("f")).expect("file");
        assert_eq!(bytes, vec![1u8; 1024], "the failed write is lost");
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

    #[test]
    fn an_unlinked_file_frees_its_space_once_closed() {
        let (disk, dir) = setup();
        let file = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        file.write_at(&[1u8; 1000], 0).expect("write");
        assert_eq!(disk.used_bytes(), 1000);
        disk.remove_file(&dir.join("f")).expect("unlink");
        assert_eq!(disk.used_bytes(), 1000, "still open");
        drop(file);
        assert_eq!(disk.used_bytes(), 0, "unlinked and closed");
    }

    #[test]
    fn a_short_write_then_a_failure_and_a_held_sync() {
        let (disk, dir) = setup();
        let file = disk.open(&dir.join("f"), OpenMode::CreateNew).expect("create");
        disk.fail_write_partially_after(0, std::io::ErrorKind::StorageFull);
        assert_eq!(file.write_at(&[7u8; 1000], 0).expect("short"), 500);
        assert!(file.write_at(&[7u8; 500], 500).expect_err("then full").is_no_space());
        file.write_at(&[7u8; 500], 500).expect("once");

        disk.fail_sync_after_with(0, std::io::ErrorKind::StorageFull);
        assert!(file.sync_data().expect_err("ENOSPC").is_no_space());

        // A paused sync blocks its caller until resumed, then succeeds.
        disk.pause_syncs();
        let syncer = {
            let file = disk.open(&dir.join("f"), OpenMode::Existing).expect("open");
            std::thread::spawn(move || file.sync_data())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while disk.syncs_held() == 0 {
            assert!(std::time::Instant::now() < deadline, "the sync is held");
            std::thread::yield_now();
        }
        assert!(!syncer.is_finished());
        disk.resume_syncs();
        syncer.join().expect("thread").expect("the held sync succeeds");
        assert_eq!(disk.syncs_held(), 0);
    }
}
