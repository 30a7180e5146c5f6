//! bop's virtual WAL: SQLite reads every page from the page store and hands every committed page to a
//! [`FrameSink`].
//!
//! Frame numbers (what `find_frame` returns and `read_frame` takes):
//! - `page_no` (below 2^31) names page `page_no` of the page store at the read transaction's pinned snapshot;
//!   every page `1..=page_count` of the snapshot is "in the WAL", so SQLite never reads the main database
//!   file, which is a zero-filled placeholder.
//! - `PENDING_FRAME_BIT | slot` names slot `slot` of the current write transaction's held frames.
//! - `PENDING_FRAME_BIT | PIPELINE_FRAME_BIT | n` names the `n`th page this read transaction found among the
//!   proposed, not yet applied, commits of a pipelined connection (see `pipeline`).
//!
//! Pages above the snapshot's size are "found at frame 0", as SQLite's contract asks (SQLite does not read
//! pages past the database size). See docs/design.md (SQL layer) for the whole design.

use std::collections::HashMap;
use std::ffi::{c_int, CStr};
use std::num::NonZeroU32;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bop_storage::page_store::{Db, ReadSnapshot, PAGE_SIZE};
use libsql_sys::ffi;
use libsql_sys::wal::{
    BusyHandler, CheckpointCallback, CheckpointMode, PageHeaders, Sqlite3Db, Sqlite3File, UndoHandler, Vfs,
    Wal, WalManager,
};
use parking_lot::Mutex;

use crate::pipeline::{Found, Pipeline, PipelineView, Speculative};
use crate::sink::FrameSink;

type WalResult<T> = libsql_sys::wal::Result<T>;

/// Set in a frame number that names a held frame of the current write transaction.
pub(crate) const PENDING_FRAME_BIT: u32 = 1 << 31;
/// Set (with [`PENDING_FRAME_BIT`]) in a frame number that names a page of a pipelined commit.
const PIPELINE_FRAME_BIT: u32 = 1 << 30;
/// Largest page number a bop database may use (page numbers share the frame-number space with held frames).
pub(crate) const PAGE_NO_MAX: u32 = PENDING_FRAME_BIT - 1;

fn sqlite_error(code: c_int) -> libsql_sys::wal::Error {
    libsql_sys::wal::Error::new(code)
}

/// What every connection to one database shares: the page-store handle, the sink and the write lock.
pub(crate) struct DbShared {
    pub db: Db,
    pub sink: Arc<dyn FrameSink>,
    /// Most bytes of frames one write transaction may hold before commit; past it the WAL returns
    /// `SQLITE_FULL` and SQLite rolls the transaction back.
    pub pending_bytes_max: usize,
    /// Held frames of one write transaction kept in memory; later ones are spilled to a file.
    pub held_memory_frames_max: usize,
    /// Where spill files are made (each is unlinked as soon as it is open).
    pub spill_dir: PathBuf,
    /// Frames written to spill files, ever (rewrites of a spilled page included).
    pub frames_spilled: AtomicU64,
    pub writer: Mutex<WriterState>,
    /// Commits proposed by this database's pipelined connection and not applied yet.
    pub pipeline: Mutex<Pipeline>,
}

/// One writer per database at a time, and which commit was the newest through this process.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// A connection holds the write lock (between `begin_write_txn` and `end_write_txn`).
    pub active: bool,
    /// Log index of the newest commit made through the sink (diagnostics; staleness is judged by the page
    /// store, which also sees commits applied from Raft).
    pub last_commit_index: u64,
}

/// Per-connection state shared between the connection and its WAL: the reason of the last failure that
/// SQLite can only see as an error code.
#[derive(Debug, Default)]
pub(crate) struct ConnShared {
    pub last_error: Mutex<Option<String>>,
    /// How the sink refused the last commit, when it did (cleared with `last_error`).
    pub commit_failure: Mutex<Option<CommitFailure>>,
    /// Reads see, and commits are proposed on top of, the database's proposed commits
    /// ([`crate::Connection::set_pipelined`]).
    pub pipelined: std::sync::atomic::AtomicBool,
}

/// How a commit the sink refused failed (see [`crate::SinkError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFailure {
    /// This commit's own failure: never visible; its parts committed separately may succeed.
    Specific,
    /// The sink takes no commits now: never visible; any other commit would fail alike.
    Unavailable,
    /// The commit may still become visible.
    Unknown,
}

/// Frames held by the current write transaction, in first-insert order; a later frame of the same page
/// replaces the earlier one in place (as stock SQLite does within a transaction). The first
/// `memory_frames_max` slots live in memory; later slots are spilled to the connection's spill file at
/// `(slot - memory_frames_max) * PAGE_SIZE`, so after a savepoint rollback (a truncation) later frames reuse
/// the file's space instead of growing it.
struct HeldFrames {
    page_nos: Vec<u32>,
    memory: Vec<Box<[u8]>>,
    slots: HashMap<u32, usize>,
    memory_frames_max: usize,
    /// Created at the first spill, unlinked at once (it vanishes with the connection, even after a crash).
    spill: Option<std::fs::File>,
    spill_dir: PathBuf,
}

/// Numbers spill files of this process.
static SPILL_FILES: AtomicU64 = AtomicU64::new(0);

/// Prefix of spill file names (a file that a crash left between creation and unlinking is removed when
/// the next engine starts).
pub(crate) const SPILL_PREFIX: &str = "spill-";

impl HeldFrames {
    fn new(memory_frames_max: usize, spill_dir: PathBuf) -> Self {
        HeldFrames {
            page_nos: Vec::new(),
            memory: Vec::new(),
            slots: HashMap::new(),
            memory_frames_max,
            spill: None,
            spill_dir,
        }
    }

    fn len(&self) -> usize {
        self.page_nos.len()
    }

    fn is_empty(&self) -> bool {
        self.page_nos.is_empty()
    }

    fn spill_offset(&self, slot: usize) -> u64 {
        ((slot - self.memory_frames_max) * PAGE_SIZE) as u64
    }

    fn spill_file(&mut self) -> std::io::Result<&std::fs::File> {
        if self.spill.is_none() {
            let n = SPILL_FILES.fetch_add(1, Ordering::Relaxed);
            let path = self.spill_dir.join(format!("{SPILL_PREFIX}{}-{n}.tmp", std::process::id()));
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            self.spill = Some(file);
        }
        Ok(self.spill.as_ref().expect("set above"))
    }

    /// Holds `page` as the newest image of `page_no`. Returns whether it went to the spill file.
    fn put(&mut self, page_no: u32, page: &[u8]) -> std::io::Result<bool> {
        let slot = match self.slots.get(&page_no) {
            Some(&slot) => slot,
            None => {
                let slot = self.page_nos.len();
                if slot < self.memory_frames_max {
                    self.memory.push(Box::from(page));
                } else {
                    // Written before the slot exists, so a failed write leaves nothing half-held.
                    let offset = self.spill_offset(slot);
                    self.spill_file()?.write_all_at(page, offset)?;
                }
                self.page_nos.push(page_no);
                self.slots.insert(page_no, slot);
                return Ok(slot >= self.memory_frames_max);
            }
        };
        if slot < self.memory_frames_max {
            self.memory[slot].copy_from_slice(page);
            Ok(false)
        } else {
            let offset = self.spill_offset(slot);
            self.spill_file()?.write_all_at(page, offset)?;
            Ok(true)
        }
    }

    fn read(&self, slot: usize, buffer: &mut [u8]) -> Result<(), String> {
        if slot >= self.len() {
            return Err(format!("no held frame in slot {slot}"));
        }
        if slot < self.memory_frames_max {
            buffer.copy_from_slice(&self.memory[slot]);
            return Ok(());
        }
        let Some(file) = &self.spill else { return Err(format!("held frame {slot} has no spill file")) };
        file.read_exact_at(buffer, self.spill_offset(slot))
            .map_err(|e| format!("reading held frame {slot} from the spill file: {e}"))
    }

    /// Reads every spilled frame back, in slot order (what a commit needs in memory).
    fn read_spilled(&self) -> std::io::Result<Vec<u8>> {
        let spilled = self.len().saturating_sub(self.memory_frames_max);
        let mut buffer = vec![0u8; spilled * PAGE_SIZE];
        if let (Some(file), true) = (&self.spill, spilled > 0) {
            file.read_exact_at(&mut buffer, 0)?;
        }
        Ok(buffer)
    }

    fn truncate(&mut self, mark: usize) {
        if mark < self.len() {
            self.page_nos.truncate(mark);
            self.memory.truncate(mark.min(self.memory_frames_max));
            self.slots.retain(|_, slot| *slot < mark);
        }
    }

    fn clear(&mut self) {
        let spilled = self.len() > self.memory_frames_max;
        self.page_nos.clear();
        self.memory.clear();
        self.slots.clear();
        if let (Some(file), true) = (&self.spill, spilled) {
            // Give the space back; the file itself stays for the connection's next transaction.
            if let Err(e) = file.set_len(0) {
                tracing::warn!(error = %e, "truncating a spill file failed; dropping it");
                self.spill = None;
            }
        }
    }
}

/// Opens a [`BopWal`] for each connection; never touches files.
pub(crate) struct BopWalManager {
    pub shared: Arc<DbShared>,
    pub conn: Arc<ConnShared>,
}

impl WalManager for BopWalManager {
    type Wal = BopWal;

    fn use_shared_memory(&self) -> bool {
        false
    }

    fn open(
        &self,
        _vfs: &mut Vfs,
        _file: &mut Sqlite3File,
        _no_shm_mode: c_int,
        _max_log_size: i64,
        _db_path: &CStr,
    ) -> WalResult<BopWal> {
        Ok(BopWal {
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            read: None,
            view: PipelineView::default(),
            last_seen_index: None,
            seen_proposed: None,
            writing: false,
            frames: HeldFrames::new(self.shared.held_memory_frames_max, self.shared.spill_dir.clone()),
        })
    }

    fn close(
        &self,
        _wal: &mut BopWal,
        _db: &mut Sqlite3Db,
        _sync_flags: c_int,
        _scratch: Option<&mut [u8]>,
    ) -> WalResult<()> {
        // Nothing to checkpoint: bop drives checkpoints. The WAL (and any snapshot it pins) is dropped by
        // the caller right after.
        Ok(())
    }

    fn destroy_log(&self, _vfs: &mut Vfs, _db_path: &CStr) -> WalResult<()> {
        // The "log" is the page store; SQLite must never delete it.
        Ok(())
    }

    fn log_exists(&self, _vfs: &mut Vfs, _db_path: &CStr) -> WalResult<bool> {
        // Always: this makes the pager open the WAL at the first read of every connection.
        Ok(true)
    }

    fn destroy(self) {}
}

struct ReadView {
    snapshot: ReadSnapshot,
    page_count: u32,
}

/// One connection's virtual WAL.
pub(crate) struct BopWal {
    shared: Arc<DbShared>,
    conn: Arc<ConnShared>,
    read: Option<ReadView>,
    /// The proposed commits this read transaction sees (none unless the connection is pipelined).
    view: PipelineView,
    /// Snapshot index of the previous read transaction (or of our own last commit): SQLite keeps its page
    /// cache only when the next read transaction is pinned at the same index.
    last_seen_index: Option<u64>,
    /// The proposed commit `last_seen_index` names, when it names one (our own commit, or the pipeline's
    /// newest entry): the same index later names the database's commit only if that was this entry, applied
    /// as proposed. A lost entry's index may be taken by another commit.
    seen_proposed: Option<(u64, Weak<Speculative>)>,
    writing: bool,
    frames: HeldFrames,
}

impl BopWal {
    fn fail(&self, code: c_int, reason: String) -> libsql_sys::wal::Error {
        tracing::warn!(db = self.shared.db.name(), code, %reason, "virtual WAL error");
        *self.conn.last_error.lock() = Some(reason);
        sqlite_error(code)
    }

    fn clear_frames(&mut self) {
        self.frames.clear();
    }

    fn pin(&mut self) -> WalResult<()> {
        let snapshot = self
            .shared
            .db
            .snapshot()
            .map_err(|e| self.fail(ffi::SQLITE_IOERR_READ, format!("pinning a read snapshot: {e}")))?;
        let page_count = snapshot.page_count();
        // SQLite may keep its page cache across read transactions that see the same version of this
        // database, even if the node applied commits to other databases in between.
        self.last_seen_index = Some(snapshot.last_change_index());
        self.read = Some(ReadView { snapshot, page_count });
        Ok(())
    }

    fn commit(&mut self, size_after: u32) -> WalResult<usize> {
        let spilled = self
            .frames
            .read_spilled()
            .map_err(|e| self.fail(ffi::SQLITE_IOERR_READ, format!("reading spilled frames back: {e}")))?;
        let held = &self.frames;
        // Pages above the new size were cut off (e.g. by VACUUM); they are not part of the database.
        let frames: Vec<(u32, &[u8])> = held
            .page_nos
            .iter()
            .enumerate()
            .filter(|(_, page_no)| **page_no <= size_after)
            .map(|(slot, page_no)| {
                let page = match held.memory.get(slot) {
                    Some(page) => &page[..],
                    None => {
                        let start = held.spill_offset(slot) as usize;
                        &spilled[start..start + PAGE_SIZE]
                    }
                };
                (*page_no, page)
            })
            .collect();
        let frame_count = frames.len();
        let pipelined = self.conn.pipelined.load(Ordering::Relaxed);
        let result = if pipelined {
            // Built on the newest commit this view sees: the newest proposed one, or the applied one.
            let base = match self.view.tip() {
                Some((index, _)) => index,
                None => self.read.as_ref().map_or(0, |read| read.snapshot.last_commit_index()),
            };
            if self.shared.pipeline.lock().epoch != self.view.epoch {
                Err(crate::SinkError::Rejected {
                    reason: "a commit this transaction was built on failed or may have; not proposed".into(),
                })
            } else {
                self.shared.sink.propose_after(&self.shared.db, &frames, size_after, base).inspect(|&index| {
                    let pages =
                        frames.iter().map(|(page_no, page)| (*page_no, Box::<[u8]>::from(*page))).collect();
                    let entry = Arc::new(Speculative { index, pages, page_count: size_after });
                    let mut pipeline = self.shared.pipeline.lock();
                    if pipeline.epoch == self.view.epoch {
                        pipeline.push(entry.clone(), base);
                    }
                    drop(pipeline);
                    self.seen_proposed = Some((index, Arc::downgrade(&entry)));
                    self.view.entries.push(entry);
                })
            }
        } else {
            let read_index = self.read.as_ref().map_or(0, |read| read.snapshot.index());
            self.shared.sink.commit(&self.shared.db, &frames, size_after, read_index)
        };
        drop(frames);
        drop(spilled);
        match result {
            Ok(index) if pipelined => {
                self.shared.writer.lock().last_commit_index = index;
                // The commit is proposed, not applied: this read transaction goes on seeing it through the
                // view (the page store does not have it yet), and so does the next one while it is pending.
                self.view.forget_lookups();
                self.last_seen_index = Some(index);
                self.clear_frames();
                Ok(frame_count)
            }
            Ok(index) => {
                self.shared.writer.lock().last_commit_index = index;
                // Our own commit is the database's newest version and SQLite's page cache holds it: re-pin
                // at it so that reads for the rest of this read transaction see it, and the next read
                // transaction at the same index keeps the cache.
                self.read = None;
                if let Err(e) = self.pin() {
                    // The commit is durable; only the re-pin failed. Later reads report the error.
                    tracing::warn!(db = self.shared.db.name(), error = ?e, "re-pin after commit failed");
                } else if let Some(read) = &self.read {
                    debug_assert!(read.snapshot.index() >= index);
                    debug_assert_eq!(read.page_count, size_after);
                }
                self.clear_frames();
                Ok(frame_count)
            }
            Err(e) => {
                if pipelined && !matches!(e, crate::SinkError::Rejected { .. }) {
                    // Proposed or not, its fate is unknown: nothing may be built on the pipeline any more.
                    self.shared.pipeline.lock().fail();
                }
                let failure = match &e {
                    _ if e.is_commit_specific() => CommitFailure::Specific,
                    crate::SinkError::OutcomeUnknown { .. } => CommitFailure::Unknown,
                    _ => CommitFailure::Unavailable,
                };
                *self.conn.commit_failure.lock() = Some(failure);
                Err(self.fail(ffi::SQLITE_IOERR_WRITE, format!("commit failed: {e}")))
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Run once right after a pipelined read transaction pinned its snapshot: a test's seam for what another
    /// thread (the node's state machine, the writer's answerer) may do at that moment.
    pub(crate) static AFTER_PIN: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

impl Wal for BopWal {
    fn limit(&mut self, _size: i64) {}

    fn begin_read_txn(&mut self) -> WalResult<bool> {
        let previous = self.last_seen_index;
        let previous_proposed = self.seen_proposed.take();
        // Whether SQLite's cache may hold pages of a proposed commit that is not the database's version
        // at its index (it was lost, and another commit took the index): then it must be emptied.
        let mut stale = false;
        self.read = None;
        self.view = PipelineView::default();
        if self.conn.pipelined.load(Ordering::Relaxed) {
            // The snapshot is pinned under the pipeline's lock: a commit is reported applied to the pipeline
            // (which drops it) only once the page store shows it, so each commit of the pipeline is either
            // still in it or in this snapshot. Pinned before taking the lock, a commit applied in between
            // would be in neither, and this transaction would build on a view without it.
            let shared = Arc::clone(&self.shared);
            let mut pipeline = shared.pipeline.lock();
            self.pin()?;
            #[cfg(test)]
            if let Some(hook) = AFTER_PIN.with(|hook| hook.borrow_mut().take()) {
                hook();
            }
            if let Some(read) = &self.read {
                pipeline.reconcile(&read.snapshot);
                self.view = PipelineView::new(pipeline.entries.iter().cloned().collect(), pipeline.epoch);
            }
            if let Some((index, entry)) = &previous_proposed {
                stale = !self.view.holds(entry) && pipeline.confirmed < *index;
            }
            drop(pipeline);
            if let Some(entry) = self.view.newest() {
                self.last_seen_index = Some(entry.index);
                self.seen_proposed = Some((entry.index, Arc::downgrade(entry)));
            }
        } else {
            self.pin()?;
            // A connection that stopped pipelining: its last proposed commit may have been lost.
            stale = previous_proposed.is_some();
        }
        Ok(stale || self.last_seen_index != previous)
    }

    fn end_read_txn(&mut self) {
        // Ending the read transaction ends a write transaction still open, as in stock SQLite's WAL: the
        // pager does that when an error put it in its error state (a spill refused as too large), and the
        // database's write lock must not stay held.
        if self.writing {
            self.writing = false;
            self.shared.writer.lock().active = false;
            self.clear_frames();
        }
        self.read = None;
        self.view = PipelineView::default();
    }

    fn find_frame(&mut self, page_no: NonZeroU32) -> WalResult<Option<NonZeroU32>> {
        let page_no = page_no.get();
        if page_no > PAGE_NO_MAX {
            return Err(
                self.fail(ffi::SQLITE_IOERR_READ, format!("page {page_no} is past bop's largest page"))
            );
        }
        if let Some(&slot) = self.frames.slots.get(&page_no) {
            if slot >= PIPELINE_FRAME_BIT as usize {
                return Err(self.fail(ffi::SQLITE_IOERR_READ, format!("held frame {slot} out of range")));
            }
            return Ok(NonZeroU32::new(PENDING_FRAME_BIT | slot as u32));
        }
        let Some(read) = &self.read else {
            return Err(self.fail(ffi::SQLITE_IOERR_READ, "find_frame outside a read transaction".into()));
        };
        if let Some((_, tip_pages)) = self.view.tip() {
            if page_no > tip_pages {
                return Ok(None);
            }
            let snapshot_pages = read.page_count;
            if let Found::Frame(n) = self.view.find(page_no, snapshot_pages) {
                if n >= PIPELINE_FRAME_BIT {
                    return Err(
                        self.fail(ffi::SQLITE_IOERR_READ, format!("pipelined frame {n} out of range"))
                    );
                }
                return Ok(NonZeroU32::new(PENDING_FRAME_BIT | PIPELINE_FRAME_BIT | n));
            }
            return Ok(NonZeroU32::new(page_no));
        }
        Ok(if page_no <= read.page_count { NonZeroU32::new(page_no) } else { None })
    }

    fn read_frame(&mut self, frame_no: NonZeroU32, buffer: &mut [u8]) -> WalResult<()> {
        let frame_no = frame_no.get();
        if buffer.len() != PAGE_SIZE {
            return Err(self.fail(
                ffi::SQLITE_IOERR_READ,
                format!("bop pages are {PAGE_SIZE} bytes, SQLite asked for {}", buffer.len()),
            ));
        }
        if frame_no & PENDING_FRAME_BIT != 0 && frame_no & PIPELINE_FRAME_BIT != 0 {
            let n = frame_no & !(PENDING_FRAME_BIT | PIPELINE_FRAME_BIT);
            return self.view.read(n, buffer).map_err(|reason| self.fail(ffi::SQLITE_IOERR_READ, reason));
        }
        if frame_no & PENDING_FRAME_BIT != 0 {
            let slot = (frame_no & !PENDING_FRAME_BIT) as usize;
            return self
                .frames
                .read(slot, buffer)
                .map_err(|reason| self.fail(ffi::SQLITE_IOERR_READ, reason));
        }
        let Some(read) = &self.read else {
            return Err(self.fail(ffi::SQLITE_IOERR_READ, "read_frame outside a read transaction".into()));
        };
        match read.snapshot.read_page(frame_no) {
            Ok(Some(page)) if page.len() == PAGE_SIZE => buffer.copy_from_slice(&page),
            Ok(Some(page)) => {
                let len = page.len();
                return Err(self.fail(ffi::SQLITE_IOERR_READ, format!("page {frame_no} has {len} bytes")));
            }
            // A page inside the database that was never written (cut off by a shrink, then the database
            // grew back) reads as zeros, exactly as a stock database file's hole would.
            Ok(None) => buffer.fill(0),
            Err(e) => return Err(self.fail(ffi::SQLITE_IOERR_READ, format!("reading page {frame_no}: {e}"))),
        }
        Ok(())
    }

    fn read_frame_raw(&mut self, _frame_no: NonZeroU32, _buffer: &mut [u8]) -> WalResult<()> {
        Err(self.fail(ffi::SQLITE_MISUSE, "bop's WAL has no raw frames".into()))
    }

    fn db_size(&self) -> u32 {
        match self.view.tip() {
            Some((_, page_count)) => page_count,
            None => self.read.as_ref().map_or(0, |read| read.page_count),
        }
    }

    fn begin_write_txn(&mut self) -> WalResult<()> {
        let Some(read) = &self.read else {
            return Err(self.fail(ffi::SQLITE_MISUSE, "write transaction outside a read transaction".into()));
        };
        let mut writer = self.shared.writer.lock();
        if writer.active {
            return Err(sqlite_error(ffi::SQLITE_BUSY));
        }
        // Whoever committed after our snapshot — this node's SQL or a commit applied from Raft — writing on
        // top of it would lose that commit.
        if self.conn.pipelined.load(Ordering::Relaxed) {
            // Compared by commits (a checkpoint moves the last change, not the last commit): a commit that
            // is one of the view's own proposed ones, applied since, changes nothing the view sees.
            let newest = self.shared.db.last_commit_index();
            if newest != read.snapshot.last_commit_index()
                && !self.view.entries.iter().any(|e| e.index == newest)
            {
                return Err(sqlite_error(ffi::SQLITE_BUSY_SNAPSHOT));
            }
        } else {
            let newest = self.shared.db.last_change_index();
            if newest > read.snapshot.last_change_index() {
                return Err(sqlite_error(ffi::SQLITE_BUSY_SNAPSHOT));
            }
        }
        writer.active = true;
        drop(writer);
        self.writing = true;
        debug_assert!(self.frames.is_empty());
        Ok(())
    }

    fn end_write_txn(&mut self) -> WalResult<()> {
        if self.writing {
            self.writing = false;
            self.shared.writer.lock().active = false;
        }
        self.clear_frames();
        Ok(())
    }

    fn undo<U: UndoHandler>(&mut self, handler: Option<&mut U>) -> WalResult<()> {
        // Forget the held frames first: the handler makes the pager reload pages, which must then come from
        // the snapshot, not from the rolled-back frames.
        let page_nos = self.frames.page_nos.clone();
        self.clear_frames();
        if let Some(handler) = handler {
            for page_no in page_nos {
                handler.handle_undo(page_no)?;
            }
        }
        Ok(())
    }

    fn savepoint(&mut self, rollback_data: &mut [u32]) {
        rollback_data.fill(0);
        if let Some(first) = rollback_data.first_mut() {
            *first = self.frames.len() as u32;
        }
    }

    fn savepoint_undo(&mut self, rollback_data: &mut [u32]) -> WalResult<()> {
        let mark = rollback_data.first().copied().unwrap_or(0) as usize;
        self.frames.truncate(mark);
        Ok(())
    }

    fn frame_count(&self, _locked: i32) -> WalResult<u32> {
        Ok(0)
    }

    fn insert_frames(
        &mut self,
        page_size: c_int,
        page_headers: &mut PageHeaders,
        size_after: u32,
        is_commit: bool,
        _sync_flags: c_int,
    ) -> WalResult<usize> {
        if !self.writing {
            return Err(self.fail(ffi::SQLITE_MISUSE, "frames outside a write transaction".into()));
        }
        if page_size as usize != PAGE_SIZE {
            return Err(self.fail(
                ffi::SQLITE_IOERR_WRITE,
                format!("bop databases use {PAGE_SIZE}-byte pages; SQLite wrote {page_size}-byte pages"),
            ));
        }
        for (page_no, page) in page_headers.iter() {
            if page_no == 0 || page_no > PAGE_NO_MAX {
                return Err(self.fail(ffi::SQLITE_IOERR_WRITE, format!("page number {page_no} out of range")));
            }
            if page.len() != PAGE_SIZE {
                let len = page.len();
                return Err(self.fail(ffi::SQLITE_IOERR_WRITE, format!("page {page_no} has {len} bytes")));
            }
            let is_new = !self.frames.slots.contains_key(&page_no);
            if is_new && (self.frames.len() + 1) * PAGE_SIZE > self.shared.pending_bytes_max {
                return Err(self.fail(
                    ffi::SQLITE_FULL,
                    format!(
                        "transaction too large: {} bytes of pages, more than the limit of {} \
                         (pending_bytes_max)",
                        (self.frames.len() + 1) * PAGE_SIZE,
                        self.shared.pending_bytes_max
                    ),
                ));
            }
            match self.frames.put(page_no, page) {
                Ok(true) => {
                    self.shared.frames_spilled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    return Err(self.fail(ffi::SQLITE_IOERR_WRITE, format!("spilling page {page_no}: {e}")))
                }
            }
        }
        if !is_commit {
            return Ok(0);
        }
        if size_after == 0 {
            return Err(self.fail(ffi::SQLITE_IOERR_WRITE, "commit without a database size".into()));
        }
        self.commit(size_after)
    }

    fn checkpoint(
        &mut self,
        _db: &mut Sqlite3Db,
        _mode: CheckpointMode,
        _busy_handler: Option<&mut dyn BusyHandler>,
        _sync_flags: u32,
        _buf: &mut [u8],
        _checkpoint_cb: Option<&mut dyn CheckpointCallback>,
        in_wal: Option<&mut i32>,
        backfilled: Option<&mut i32>,
    ) -> WalResult<()> {
        // bop drives checkpoints (Db::checkpoint); SQLite's requests change nothing.
        if let Some(in_wal) = in_wal {
            *in_wal = 0;
        }
        if let Some(backfilled) = backfilled {
            *backfilled = 0;
        }
        Ok(())
    }

    fn exclusive_mode(&mut self, _op: c_int) -> WalResult<()> {
        Ok(())
    }

    fn uses_heap_memory(&self) -> bool {
        true
    }

    fn set_db(&mut self, _db: &mut Sqlite3Db) {}

    fn callback(&self) -> i32 {
        0
    }

    fn frames_in_wal(&self) -> u32 {
        0
    }
}

impl Drop for BopWal {
    fn drop(&mut self) {
        if self.writing {
            self.shared.writer.lock().active = false;
        }
    }
}
