//! The Manager: a node's data directory (manifest, WAL, generation files, page cache) and its databases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::io::{BufferedIo, Io};
use crate::manifest::{Batch, DatabaseConfig, DatabaseId, Generation, LogId, Manifest, ManifestConfig};
use crate::page_cache::{PageCache, PageCacheConfig, PageCacheMetrics, PageKey, PageRef};
use crate::wal::{LogPos, NewEntry, WalConfig, WalStore};

use super::commit::{
    decode_commit, encode_commit, frame_page_offset, page_crc, COMMIT_HEADER_LEN, FRAME_LEN, PAGE_SIZE,
};
use super::database::{DbState, Location};
use super::generation::{self, GenerationFile, GenerationMeta, PageImage};
use super::PageStoreError;

type Result<T> = std::result::Result<T, PageStoreError>;

/// The term local commits are written with (the Raft layer will write real terms).
const LOCAL_TERM: u64 = 1;
/// Bytes read from the log per step while replaying it at open.
const REPLAY_BATCH_BYTES: usize = 16 << 20;

/// Configuration of a [`Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The node's data directory: `manifest/` (LMDB, always on the real file system), `wal/` and `pages/`
    /// (through `io`).
    pub data_dir: PathBuf,
    /// File access for the WAL and the generation files.
    pub io: Arc<dyn Io>,
    /// WAL settings; its `dir` is replaced by `<data_dir>/wal`.
    pub wal: WalConfig,
    /// Manifest settings.
    pub manifest: ManifestConfig,
    /// Page cache settings.
    pub cache: PageCacheConfig,
    /// Most frames one commit may carry.
    pub commit_frames_max: usize,
    /// Longest generation chain (a full generation plus deltas) before a checkpoint writes a full one.
    pub generation_chain_max: usize,
}

impl ManagerConfig {
    /// Defaults for `data_dir` with buffered I/O.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        ManagerConfig {
            wal: WalConfig::new(data_dir.join("wal")),
            data_dir,
            io: Arc::new(BufferedIo::new()),
            manifest: ManifestConfig::default(),
            cache: PageCacheConfig::default(),
            commit_frames_max: 16_384,
            generation_chain_max: 4,
        }
    }
}

struct DbEntry {
    id: u64,
    name: String,
    state: RwLock<DbState>,
    /// One writer per database at a time.
    writer: Mutex<()>,
    dropped: AtomicBool,
}

impl DbEntry {
    fn new(id: u64, name: String, state: DbState) -> Arc<DbEntry> {
        Arc::new(DbEntry {
            id,
            name,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            dropped: AtomicBool::new(false),
        })
    }
}

struct Inner {
    config: ManagerConfig,
    pages_dir: PathBuf,
    wal: Arc<WalStore>,
    manifest: RwLock<Option<Arc<Manifest>>>,
    /// Commits arrive through Raft (`apply_*`); the WAL and manifest belong to the Raft log store.
    replicated: bool,
    cache: PageCache,
    dbs: RwLock<HashMap<u64, Arc<DbEntry>>>,
    names: RwLock<HashMap<String, u64>>,
    /// Next log index to assign.
    next_index: Mutex<u64>,
    /// Highest log index applied; commits apply strictly in index order.
    applied: Mutex<u64>,
    applied_cv: Condvar,
    poison: Mutex<Option<String>>,
    closed: AtomicBool,
    /// One checkpoint (and one drop) at a time.
    maintenance: Mutex<()>,
    /// The last `checkpoint_all` found no space for a generation file.
    space_alarm: AtomicBool,
    /// Set by [`Manager::stop_waiting_for_space`] (and `close`).
    stop_waiting_for_space: AtomicBool,
}

/// A node's storage: manifest, WAL and page store, with many databases.
///
/// Cloning gives another handle to the same Manager. [`Manager::close`] shuts everything down in order
/// (WAL flushed and closed, manifest marked cleanly shut down); handles still open afterwards get
/// [`PageStoreError::Closed`] from every call, and memory is released when the last handle is dropped.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

/// A handle on one database. Dropping it releases nothing shared; closing the Manager ends it.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
    entry: Arc<DbEntry>,
}

/// A read view pinned at one applied log index: sees exactly the page versions committed up to it, however
/// many commits and checkpoints follow. Dropping it unpins it.
pub struct ReadSnapshot {
    db: Db,
    index: u64,
}

/// What a commit became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The log index of the commit.
    pub index: u64,
}

/// One database of a Raft snapshot: its id, name and generation chain (with each file's CRC32C).
#[derive(Debug, Clone)]
pub struct SnapshotDatabase {
    /// Database id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Generation files in force, oldest first, with the CRC32C of each whole file.
    pub generations: Vec<(Arc<GenerationFile>, u32)>,
}

/// What a checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// The generation written.
    pub generation: u64,
    /// The log index it reflects.
    pub log_index: u64,
    /// Pages written.
    pub pages: usize,
    /// Whether it is a full generation (else a delta).
    pub full: bool,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// The log was purged up to this index afterwards, if it moved.
    pub log_purged_upto: Option<u64>,
    /// Time spent loading pages and writing + fsyncing the generation file.
    pub write_duration: std::time::Duration,
    /// Time spent publishing it (manifest commit) and putting it in force.
    pub publish_duration: std::time::Duration,
    /// Time spent deleting superseded files and purging the log.
    pub cleanup_duration: std::time::Duration,
}

/// A diagnostics snapshot of one database.
#[derive(Debug, Clone, PartialEq)]
pub struct DbDiagnostics {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Size in pages at the applied index.
    pub page_count: u32,
    /// Generations in force, oldest first: (generation, log index, pages).
    pub generations: Vec<(u64, u64, usize)>,
    /// Page versions held in the log index.
    pub log_versions: usize,
    /// Pinned readers and the oldest pinned index.
    pub pinned_readers: usize,
    /// Oldest pinned snapshot index.
    pub oldest_pinned: Option<u64>,
    /// The range of log indexes this database depends on (commits newer than its newest generation).
    pub log_range: Option<(u64, u64)>,
    /// The node's page cache.
    pub cache: PageCacheMetrics,
}

impl Inner {
    fn check(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PageStoreError::Closed);
        }
        if let Some(reason) = self.poison.lock().clone() {
            return Err(PageStoreError::Poisoned { reason });
        }
        Ok(())
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, "page store poisoned; reopen to recover");
        self.poison.lock().get_or_insert(reason);
        let _guard = self.applied.lock();
        self.applied_cv.notify_all();
    }

    /// Deletes generation files no manifest entry names any more, then fsyncs the pages directory.
    fn delete_generations(&self, files: &[Arc<GenerationFile>]) -> Result<()> {
        let io = self.config.io.as_ref();
        for file in files {
            io.remove_file(&file.path).map_err(|e| PageStoreError::io("delete generation", &file.path, e))?;
        }
        if !files.is_empty() {
            io.sync_dir(&self.pages_dir)
                .map_err(|e| PageStoreError::io("fsync pages directory", &self.pages_dir, e))?;
        }
        Ok(())
    }

    fn with_manifest<T>(&self, f: impl FnOnce(&Manifest) -> Result<T>) -> Result<T> {
        let manifest = self.manifest.read();
        match manifest.as_ref() {
            Some(m) => f(m),
            None => Err(PageStoreError::Closed),
        }
    }

    /// Reads the page at `loc` (a log frame or a generation slot), through the cache, verifying its checksum.
    /// `Ok(None)` if a log frame vanished (purged after a checkpoint): the caller looks the page up again.
    fn read_location(&self, db: u64, page_no: u32, loc: &Location) -> Result<Option<PageRef>> {
        let version = match loc {
            Location::Log(frame) => frame.index,
            Location::Base { generation, .. } => generation.meta.log_index,
        };
        let key = PageKey { db, page_no, version };
        if let Some(page) = self.cache.get(&key) {
            return Ok(Some(page));
        }
        let page: PageRef = match loc {
            Location::Log(frame) => {
                let offset = frame.base as usize + frame_page_offset(frame.frame as usize) - 8;
                let Some(bytes) = self.wal.read_payload_range(frame.index, offset, FRAME_LEN)? else {
                    return Ok(None);
                };
                let stored_page_no = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let image = &bytes[8..];
                let got = page_crc(db, page_no, image);
                if stored_page_no != page_no || got != frame.crc {
                    return Err(PageStoreError::PageChecksum {
                        db,
                        page_no,
                        location: format!("log entry {} frame {}", frame.index, frame.frame),
                        expected: frame.crc,
                        got,
                    });
                }
                Arc::from(image)
            }
            Location::Base { generation, slot } => generation.read_slot(*slot)?,
        };
        self.cache.insert(key, Arc::clone(&page));
        Ok(Some(page))
    }
}

/// A log entry's commit-record offset and the `(frame, position in the chunk, crc)` triples to read from it.
type FramesToRead = (usize, Vec<(usize, usize, u32)>);

/// A generation and the `(slot, position in the chunk)` pairs to read from it.
type SlotsToRead = (Arc<GenerationFile>, Vec<(usize, usize)>);

/// Pages a checkpoint loads into memory at once (4 MiB).
const CHECKPOINT_CHUNK_PAGES: usize = 1024;
/// Unneeded frames or slots a checkpoint read may span to join two runs into one read.
const READ_GAP_PAGES_MAX: usize = 8;

/// Splits sorted positions into runs whose gaps are at most [`READ_GAP_PAGES_MAX`].
fn runs(sorted: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &pos in sorted {
        match out.last_mut() {
            Some((_, end)) if pos <= *end + 1 + READ_GAP_PAGES_MAX => *end = pos,
            _ => out.push((pos, pos)),
        }
    }
    out
}

impl Inner {
    /// Loads the pages of `chunk` (ascending page numbers) for a checkpoint: cached images as they are,
    /// the rest with one read per run of neighbouring frames (same log entry) or slots (same generation),
    /// each page verified against its checksum. Returns `(page_no, image, crc)` in the chunk's order.
    fn load_pages(&self, db: u64, chunk: &[(u32, Location)]) -> Result<Vec<(u32, PageImage, u32)>> {
        let mut out: Vec<Option<(u32, PageImage, u32)>> = vec![None; chunk.len()];
        let mut by_entry: HashMap<u64, FramesToRead> = HashMap::new();
        let mut by_generation: HashMap<u64, SlotsToRead> = HashMap::new();
        for (i, (page_no, loc)) in chunk.iter().enumerate() {
            match loc {
                Location::Log(frame) => {
                    let key = PageKey { db, page_no: *page_no, version: frame.index };
                    match self.cache.get(&key) {
                        Some(page) => out[i] = Some((*page_no, PageImage::Page(page), frame.crc)),
                        None => by_entry
                            .entry(frame.index)
                            .or_insert_with(|| (frame.base as usize, Vec::new()))
                            .1
                            .push((frame.frame as usize, i, frame.crc)),
                    }
                }
                Location::Base { generation, slot } => {
                    let group = by_generation
                        .entry(generation.meta.generation)
                        .or_insert_with(|| (Arc::clone(generation), Vec::new()));
                    group.1.push((*slot, i));
                }
            }
        }
        for (index, (base, mut frames)) in by_entry {
            frames.sort_unstable();
            let positions: Vec<usize> = frames.iter().map(|f| f.0).collect();
            for (first, last) in runs(&positions) {
                let offset = base + frame_page_offset(first) - 8;
                let len = (last - first + 1) * FRAME_LEN;
                let bytes = Arc::new(self.wal.read_payload_range(index, offset, len)?.ok_or_else(|| {
                    PageStoreError::invalid(format!("log entry {index} left the log during a checkpoint"))
                })?);
                for &(frame, i, crc) in frames.iter().filter(|f| f.0 >= first && f.0 <= last) {
                    let at = (frame - first) * FRAME_LEN;
                    let (page_no, _) = chunk[i];
                    let image = &bytes[at + 8..at + FRAME_LEN];
                    let got = page_crc(db, page_no, image);
                    let stored_page_no =
                        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                    if got != crc || stored_page_no != page_no {
                        return Err(PageStoreError::PageChecksum {
                            db,
                            page_no,
                            location: format!("log entry {index} frame {frame}"),
                            expected: crc,
                            got,
                        });
                    }
                    out[i] = Some((page_no, PageImage::InBuffer(Arc::clone(&bytes), at + 8), crc));
                }
            }
        }
        for (_, (generation, mut slots)) in by_generation {
            slots.sort_unstable();
            let positions: Vec<usize> = slots.iter().map(|s| s.0).collect();
            for (first, last) in runs(&positions) {
                let images = generation.read_slots(first, last)?;
                for &(slot, i) in slots.iter().filter(|s| s.0 >= first && s.0 <= last) {
                    let (page_no, image, crc) = images[slot - first].clone();
                    out[i] = Some((page_no, image, crc));
                }
            }
        }
        out.into_iter()
            .zip(chunk)
            .map(|(page, (page_no, _))| {
                page.ok_or_else(|| PageStoreError::invalid(format!("page {page_no} not loaded")))
            })
            .collect()
    }
}

/// The rules every commit's page numbers follow: distinct, and within `1..=db_page_count`.
fn validate_page_numbers(page_nos: impl Iterator<Item = u32>, db_page_count: u32) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for page_no in page_nos {
        if page_no == 0 || page_no > db_page_count {
            return Err(PageStoreError::invalid(format!("page {page_no} outside 1..={db_page_count}")));
        }
        if !seen.insert(page_no) {
            return Err(PageStoreError::invalid(format!("page {page_no} appears twice")));
        }
    }
    Ok(())
}

/// Creates `dir` if needed and fsyncs its parent (and those of any parents it created), so that the
/// directory and the files later made durable in it survive a crash.
fn ensure_dir(io: &dyn Io, dir: &Path) -> Result<()> {
    crate::io::create_dir_durable(io, dir).map_err(|e| PageStoreError::io("create directory", dir, e))
}

impl Manager {
    /// Opens (creating if needed) the node's data directory and recovers: the manifest says which
    /// databases and generations exist, the WAL's recovery gives the durable log, and every commit newer
    /// than a database's newest generation is re-applied from the log.
    pub fn open(config: ManagerConfig) -> Result<Manager> {
        let io = Arc::clone(&config.io);
        let pages_dir = config.data_dir.join("pages");
        ensure_dir(io.as_ref(), &config.data_dir)?;
        ensure_dir(io.as_ref(), &pages_dir)?;
        if !config.data_dir.exists() {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                PageStoreError::io(
                    "create data directory",
                    &config.data_dir,
                    crate::io::IoError::os("mkdir", e),
                )
            })?;
        }
        let manifest = Arc::new(Manifest::open(&config.data_dir, config.manifest.clone())?);
        let mut wal_config = config.wal.clone();
        wal_config.dir = config.data_dir.join("wal");
        let wal = Arc::new(WalStore::open(Arc::clone(&io), wal_config)?);
        Self::load(config, pages_dir, wal, manifest, false)
    }

    /// Opens the page store of a Raft node over the Raft log store's WAL and the node's manifest. Nothing
    /// is replayed here: the Raft state machine re-applies the log after its last snapshot. Local commits
    /// are refused; commits, creations and drops arrive through [`Manager::apply_commit`] and friends.
    pub fn open_replicated(
        config: ManagerConfig,
        wal: Arc<WalStore>,
        manifest: Arc<Manifest>,
    ) -> Result<Manager> {
        let io = Arc::clone(&config.io);
        let pages_dir = config.data_dir.join("pages");
        ensure_dir(io.as_ref(), &config.data_dir)?;
        ensure_dir(io.as_ref(), &pages_dir)?;
        Self::load(config, pages_dir, wal, manifest, true)
    }

    fn load(
        config: ManagerConfig,
        pages_dir: PathBuf,
        wal: Arc<WalStore>,
        manifest: Arc<Manifest>,
        replicated: bool,
    ) -> Result<Manager> {
        let io = Arc::clone(&config.io);
        // Databases and their generation chains, from the manifest.
        let mut dbs = HashMap::new();
        let mut names = HashMap::new();
        let mut referenced = std::collections::HashSet::new();
        let infos = manifest.read(|r| r.databases(DatabaseId(0), usize::MAX))?;
        for info in infos {
            let generations = manifest.read(|r| r.generations(info.id, usize::MAX))?;
            let mut state = DbState::default();
            for (number, record) in generations {
                let path = pages_dir.join(&record.file_name);
                let file = generation::open(io.as_ref(), &path)?;
                if file.meta.db != info.id.0 || file.meta.generation != number {
                    return Err(PageStoreError::Corrupt {
                        what: format!("generation file {}", path.display()),
                        reason: format!(
                            "holds db {} generation {}, manifest says db {} generation {number}",
                            file.meta.db, file.meta.generation, info.id
                        ),
                    });
                }
                referenced.insert(record.file_name.clone());
                state.push_generation(Arc::new(file));
            }
            names.insert(info.name.clone(), info.id.0);
            dbs.insert(info.id.0, DbEntry::new(info.id.0, info.name, state));
        }
        // Generation files the manifest does not know are leftovers of checkpoints or drops a crash
        // interrupted: never in force, so removed.
        let listed =
            io.list_dir(&pages_dir).map_err(|e| PageStoreError::io("list pages directory", &pages_dir, e))?;
        let mut removed_any = false;
        for name in listed {
            if !referenced.contains(&name) && (name.ends_with(".gen") || name.ends_with(".gen.tmp")) {
                tracing::info!(file = %name, "removing a generation file no manifest entry refers to");
                io.remove_file(&pages_dir.join(&name))
                    .map_err(|e| PageStoreError::io("remove orphan generation", pages_dir.join(&name), e))?;
                removed_any = true;
            }
        }
        if removed_any {
            io.sync_dir(&pages_dir)
                .map_err(|e| PageStoreError::io("fsync pages directory", &pages_dir, e))?;
        }

        // Replay the log: every commit newer than its database's newest generation.
        let log = wal.state();
        let mut applied = log.purged.map_or(0, |p| p.index);
        if replicated {
            applied = 0;
        } else if let (Some(first), Some(last)) = (log.first_index, log.last) {
            let mut index = first;
            while index <= last.index {
                let entries = wal.read_range(index, last.index + 1, REPLAY_BATCH_BYTES)?;
                if entries.is_empty() {
                    break;
                }
                for entry in entries {
                    let commit = decode_commit(&entry.payload).map_err(|e| PageStoreError::Corrupt {
                        what: format!("log entry {}", entry.index),
                        reason: e.to_string(),
                    })?;
                    if let Some(db) = dbs.get(&commit.db) {
                        let mut state = db.state.write();
                        if entry.index > state.checkpoint_index {
                            state.apply(entry.index, 0, &commit);
                        }
                    }
                    applied = entry.index;
                    index = entry.index + 1;
                }
            }
        }
        let next_index = log.next_index.unwrap_or(1).max(applied + 1);
        tracing::info!(databases = dbs.len(), applied, "page store opened");
        let inner = Inner {
            cache: PageCache::new(config.cache.clone()),
            config,
            pages_dir,
            wal,
            manifest: RwLock::new(Some(manifest)),
            replicated,
            dbs: RwLock::new(dbs),
            names: RwLock::new(names),
            next_index: Mutex::new(next_index),
            applied: Mutex::new(applied),
            applied_cv: Condvar::new(),
            poison: Mutex::new(None),
            closed: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            space_alarm: AtomicBool::new(false),
            stop_waiting_for_space: AtomicBool::new(false),
        };
        Ok(Manager { inner: Arc::new(inner) })
    }

    /// Creates a database. Names are exact (see the manifest's name rules); an existing name is an error.
    pub fn create_database(&self, name: &str) -> Result<Db> {
        let inner = &self.inner;
        inner.check()?;
        let config = DatabaseConfig { page_size_bytes: PAGE_SIZE as u32, options: Vec::new() };
        let mut batch = Batch::new();
        batch.create_database(name, config);
        let outcome = inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        let Some(id) = outcome.created_databases.first().map(|id| id.0) else {
            return Err(PageStoreError::invalid("the manifest allocated no id"));
        };
        Ok(self.insert_db(id, name))
    }

    /// Opens a database by its exact name.
    pub fn open_database(&self, name: &str) -> Result<Db> {
        self.inner.check()?;
        let id = self.inner.names.read().get(name).copied();
        let entry = id.and_then(|id| self.inner.dbs.read().get(&id).cloned());
        match entry {
            Some(entry) => Ok(Db { inner: Arc::clone(&self.inner), entry }),
            None => Err(PageStoreError::NoSuchDatabase { name: name.to_owned() }),
        }
    }

    /// Names and ids of the databases, sorted by name.
    pub fn list_databases(&self) -> Result<Vec<(String, u64)>> {
        self.inner.check()?;
        let mut out: Vec<_> = self.inner.names.read().iter().map(|(n, id)| (n.clone(), *id)).collect();
        out.sort();
        Ok(out)
    }

    /// Drops a database: its handles stop working, its generations and manifest entry are removed in one
    /// manifest commit, then its files are deleted. Its frames in the log are ignored from then on and go
    /// with the log's purges.
    pub fn drop_database(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check()?;
        let _one = inner.maintenance.lock();
        let db = self.open_database(name)?;
        let _writer = db.entry.writer.lock();
        db.entry.dropped.store(true, Ordering::Release);
        let chain: Vec<Arc<GenerationFile>> = db.entry.state.read().chain.clone();
        let mut batch = Batch::new();
        for generation in &chain {
            batch.remove_generation(DatabaseId(db.entry.id), generation.meta.generation);
        }
        batch.drop_database(DatabaseId(db.entry.id));
        inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        inner.names.write().remove(name);
        inner.dbs.write().remove(&db.entry.id);
        inner.cache.remove_db(db.entry.id);
        inner.delete_generations(&chain)
    }

    fn insert_db(&self, id: u64, name: &str) -> Db {
        let entry = DbEntry::new(id, name.to_owned(), DbState::default());
        self.inner.dbs.write().insert(id, Arc::clone(&entry));
        self.inner.names.write().insert(name.to_owned(), id);
        Db { inner: Arc::clone(&self.inner), entry }
    }

    /// Replicated mode: applies the creation of database `name` with id `id` (the index of the Raft entry
    /// that created it, so every node agrees). Re-applying it after a restart is a no-op.
    pub fn apply_create_database(&self, id: u64, name: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check()?;
        if inner.names.read().get(name) == Some(&id) {
            self.set_applied(id);
            return Ok(());
        }
        let config = DatabaseConfig { page_size_bytes: PAGE_SIZE as u32, options: Vec::new() };
        let mut batch = Batch::new();
        batch.create_database_with_id(DatabaseId(id), name, config);
        inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        self.insert_db(id, name);
        self.set_applied(id);
        Ok(())
    }

    /// Replicated mode: applies the drop, by the log entry at `index`, of database `name`. Dropping one that
    /// is not there, or one created after `index` (the drop is being re-applied after a restart), is a no-op.
    pub fn apply_drop_database(&self, index: u64, name: &str) -> Result<()> {
        let created = self.inner.names.read().get(name).copied();
        let result = match created {
            Some(id) if id < index => self.drop_database(name),
            _ => Ok(()),
        };
        self.set_applied(index);
        match result {
            Err(PageStoreError::NoSuchDatabase { .. }) => Ok(()),
            other => other,
        }
    }

    /// Replicated mode: applies the commit record `record` that sits at byte `base` of the payload of log
    /// entry `index`: the page index points at its frames inside that entry (nothing is copied to disk) and
    /// the pages warm the cache. A commit to a database that no longer exists, or one its generations
    /// already hold (re-applied after a restart), changes nothing. Returns the database it went to.
    ///
    /// `check` says what the commit was built on. [`CommitCheck::ReadAt`]: a commit to the database newer
    /// than the applied index the transaction read at refuses it as [`PageStoreError::StaleCommit`] (the
    /// record's pages were built on a view that misses that commit). [`CommitCheck::After`]: unless the
    /// database's newest commit is the one named, it is refused as [`PageStoreError::WrongBase`] (it was
    /// built on a commit that was refused, lost, or overtaken). The checks depend only on the applied log,
    /// so every node refuses alike.
    pub fn apply_commit(
        &self,
        index: u64,
        base: u32,
        record: &[u8],
        check: CommitCheck,
    ) -> Result<Option<u64>> {
        let inner = &self.inner;
        inner.check()?;
        let header = decode_commit(record)?;
        // The record came from a client through the log: check it like a local commit (every node refuses
        // a bad one the same way).
        validate_page_numbers(header.frames.iter().map(|(page_no, _)| *page_no), header.db_page_count)?;
        if header.frames.len() > inner.config.commit_frames_max {
            return Err(PageStoreError::invalid(format!(
                "{} frames exceed commit_frames_max {}",
                header.frames.len(),
                inner.config.commit_frames_max
            )));
        }
        let entry = inner.dbs.read().get(&header.db).cloned();
        let applied_to = entry.as_ref().map(|e| e.id);
        if let Some(entry) = entry {
            let mut state = entry.state.write();
            if index > state.checkpoint_index && state.page_counts.range(index..).next().is_none() {
                let last_commit = state.last_commit_at(index);
                let refusal = match check {
                    CommitCheck::None => None,
                    CommitCheck::ReadAt(read_index)
                        if last_commit > read_index && !crate::bugs::accept_stale_commits() =>
                    {
                        Some(PageStoreError::StaleCommit { db: header.db, read_index, last_commit })
                    }
                    CommitCheck::After(base) if last_commit != base && !crate::bugs::accept_wrong_base() => {
                        Some(PageStoreError::WrongBase { db: header.db, base, last_commit })
                    }
                    CommitCheck::ReadAt(_) | CommitCheck::After(_) => None,
                };
                if let Some(refusal) = refusal {
                    drop(state);
                    self.set_applied(index);
                    return Err(refusal);
                }
                state.apply(index, base, &header);
                drop(state);
                for (i, (page_no, _)) in header.frames.iter().enumerate() {
                    let at = frame_page_offset(i);
                    if let Some(page) = record.get(at..at + PAGE_SIZE) {
                        inner.cache.insert(
                            PageKey { db: header.db, page_no: *page_no, version: index },
                            Arc::from(page),
                        );
                    }
                }
            }
        }
        self.set_applied(index);
        Ok(applied_to)
    }

    /// Replicated mode: moves the applied index (every entry, whatever it carries, is applied in order).
    pub fn set_applied(&self, index: u64) {
        let mut applied = self.inner.applied.lock();
        if index > *applied {
            *applied = index;
        }
    }

    /// Checkpoints every database at the same log index — the applied index, or the oldest pinned reader if
    /// that is older — and returns that index with each database's generation chain: what a Raft snapshot
    /// of the node consists of.
    pub fn checkpoint_all(&self) -> Result<(u64, Vec<SnapshotDatabase>)> {
        let inner = &self.inner;
        inner.check()?;
        let dbs: Vec<Arc<DbEntry>> = inner.dbs.read().values().cloned().collect();
        let applied = *inner.applied.lock();
        let target = dbs
            .iter()
            .filter_map(|db| db.state.read().oldest_pinned())
            .min()
            .map_or(applied, |p| p.min(applied));
        for entry in dbs {
            let db = Db { inner: Arc::clone(inner), entry };
            if let Err(error) = db.checkpoint_at(target) {
                if error.is_no_space() && !inner.space_alarm.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "page store space alarm: a checkpoint found no space for its generation file");
                }
                return Err(error);
            }
        }
        if inner.space_alarm.swap(false, Ordering::Relaxed) {
            tracing::info!("page store space alarm cleared: a checkpoint was written");
        }
        Ok((target, self.snapshot_databases()?))
    }

    /// True from a [`Manager::checkpoint_all`] that failed for lack of space (ENOSPC or EDQUOT: its partial
    /// generation file was removed, nothing was published, nothing is poisoned) until one succeeds. The
    /// caller tries again later (the state machine's snapshot build waits and retries while
    /// [`Manager::waits_for_space`]).
    pub fn space_alarm(&self) -> bool {
        self.inner.space_alarm.load(Ordering::Relaxed)
    }

    /// Whether work that found no space should wait and try again: true until
    /// [`Manager::stop_waiting_for_space`] or `close`.
    pub fn waits_for_space(&self) -> bool {
        !self.inner.stop_waiting_for_space.load(Ordering::Relaxed)
            && !self.inner.closed.load(Ordering::Acquire)
    }

    /// For shutdown: from now on [`Manager::waits_for_space`] is false, so a snapshot build waiting for space
    /// gives up (with its lack-of-space error). `close` does this too.
    pub fn stop_waiting_for_space(&self) {
        self.inner.stop_waiting_for_space.store(true, Ordering::Relaxed);
    }

    /// Every database with its generation chain in force and each file's CRC32C.
    pub fn snapshot_databases(&self) -> Result<Vec<SnapshotDatabase>> {
        let inner = &self.inner;
        let dbs: Vec<Arc<DbEntry>> = inner.dbs.read().values().cloned().collect();
        let mut out = Vec::new();
        for entry in dbs {
            let db = Db { inner: Arc::clone(inner), entry };
            let checksums: HashMap<u64, u32> = inner
                .with_manifest(|m| Ok(m.read(|r| r.generations(DatabaseId(db.entry.id), usize::MAX))?))?
                .into_iter()
                .map(|(number, record)| (number, record.checksum))
                .collect();
            let generations = db
                .generation_chain()
                .into_iter()
                .map(|g| {
                    let checksum = checksums.get(&g.meta.generation).copied().unwrap_or_default();
                    (g, checksum)
                })
                .collect();
            out.push(SnapshotDatabase { id: db.entry.id, name: db.entry.name.clone(), generations });
        }
        out.sort_by_key(|db| db.id);
        Ok(out)
    }

    /// Adds to `batch` the replacement of every stored snapshot record by one holding `metadata`.
    fn replace_snapshot_record(&self, batch: &mut Batch, metadata: Vec<u8>) -> Result<u64> {
        let existing = self.inner.with_manifest(|m| Ok(m.read(|r| r.snapshots(0, usize::MAX))?))?;
        let id = existing.iter().map(|(id, _)| *id).max().map_or(1, |id| id + 1);
        for (old, _) in &existing {
            batch.remove_snapshot(*old);
        }
        batch.put_snapshot(id, crate::manifest::Snapshot { metadata, generations: Vec::new() });
        Ok(id)
    }

    /// Replicated mode: records the metadata of the snapshot the current generations form (replacing any
    /// older record), in one manifest commit. Returns the record's id.
    pub fn record_snapshot(&self, metadata: Vec<u8>) -> Result<u64> {
        let mut batch = Batch::new();
        let id = self.replace_snapshot_record(&mut batch, metadata)?;
        self.inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        Ok(id)
    }

    /// The newest snapshot record's id and metadata, if any.
    pub fn newest_snapshot_record(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let records = self.inner.with_manifest(|m| Ok(m.read(|r| r.snapshots(0, usize::MAX))?))?;
        Ok(records.into_iter().max_by_key(|(id, _)| *id).map(|(id, s)| (id, s.metadata)))
    }

    /// Replicated mode: replaces the whole page store with a snapshot's databases, atomically. Their
    /// generation files are streamed in (bounded memory) and verified first; then one manifest commit drops
    /// every local database and generation and records the snapshot's; then the old files go. A crash
    /// before that commit leaves the old page store (the new files are orphans, removed at the next open),
    /// after it the new one, together with the snapshot record holding `metadata`. The applied index becomes
    /// `index`.
    pub fn install_snapshot(
        &self,
        snapshot_id: u64,
        index: u64,
        databases: &[SnapshotDatabase],
        metadata: Vec<u8>,
    ) -> Result<()> {
        let inner = &self.inner;
        inner.check()?;
        let _one = inner.maintenance.lock();
        let io = inner.config.io.as_ref();
        // 1. Receive and verify every file under a name of its own.
        let mut installed: Vec<SnapshotDatabase> = Vec::new();
        let mut written: Vec<PathBuf> = Vec::new();
        let received = (|| {
            for db in databases {
                let mut chain = Vec::new();
                for (source, checksum) in &db.generations {
                    let name =
                        format!("{:016x}-{:016x}-s{snapshot_id:016x}.gen", db.id, source.meta.generation);
                    let expected = generation::ExpectedGeneration {
                        db: db.id,
                        generation: source.meta.generation,
                        checksum: *checksum,
                        size_bytes_max: source.size_bytes,
                    };
                    let file = generation::install(io, &inner.pages_dir, &name, expected, source.stream())?;
                    written.push(file.path.clone());
                    chain.push((Arc::new(file), *checksum));
                }
                installed.push(SnapshotDatabase { id: db.id, name: db.name.clone(), generations: chain });
            }
            Ok::<(), PageStoreError>(())
        })();
        if let Err(e) = received {
            for path in &written {
                let _ = io.remove_file(path);
            }
            return Err(e);
        }
        // 2. One manifest commit switches from the old page store to the new one.
        let old: Vec<Arc<DbEntry>> = inner.dbs.read().values().cloned().collect();
        let mut batch = Batch::new();
        for entry in &old {
            for generation in &entry.state.read().chain {
                batch.remove_generation(DatabaseId(entry.id), generation.meta.generation);
            }
            batch.drop_database(DatabaseId(entry.id));
        }
        for SnapshotDatabase { id, name, generations: chain } in &installed {
            let config = DatabaseConfig { page_size_bytes: PAGE_SIZE as u32, options: Vec::new() };
            batch.create_database_with_id(DatabaseId(*id), name, config);
            for (file, checksum) in chain {
                let file_name = file.path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                batch.add_generation(
                    DatabaseId(*id),
                    file.meta.generation,
                    Generation {
                        log_id: LogId { term: file.meta.log_term, index: file.meta.log_index },
                        file_name,
                        page_count: file.slots.len() as u64,
                        checksum: *checksum,
                    },
                );
            }
        }
        // The snapshot's metadata (last log id, membership) switches in the same commit.
        self.replace_snapshot_record(&mut batch, metadata)?;
        inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        // 3. The new page store is in force: swap it in memory, then delete the old files.
        let mut dbs = HashMap::new();
        let mut names = HashMap::new();
        for SnapshotDatabase { id, name, generations: chain } in installed {
            let mut state = DbState::default();
            for (file, _) in chain {
                state.push_generation(file);
            }
            names.insert(name.clone(), id);
            dbs.insert(id, DbEntry::new(id, name, state));
        }
        *inner.dbs.write() = dbs;
        *inner.names.write() = names;
        {
            let mut applied = inner.applied.lock();
            *applied = index;
        }
        let mut replaced = Vec::new();
        for entry in &old {
            entry.dropped.store(true, Ordering::Release);
            inner.cache.remove_db(entry.id);
            replaced.extend(entry.state.read().chain.iter().cloned());
        }
        inner.delete_generations(&replaced)
    }

    /// The WAL underneath (for diagnostics and tests).
    pub fn wal(&self) -> &WalStore {
        &self.inner.wal
    }

    /// The node's manifest (shared with the Raft log store), until [`Manager::close`].
    pub fn manifest(&self) -> Option<Arc<Manifest>> {
        self.inner.manifest.read().clone()
    }

    /// The node's page cache counters.
    pub fn cache_metrics(&self) -> PageCacheMetrics {
        self.inner.cache.metrics()
    }

    /// Highest applied log index.
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.lock()
    }

    /// Shuts down in order: no new work, the WAL drains and closes, the manifest records a clean shutdown.
    pub fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_waiting_for_space();
        {
            let _guard = inner.applied.lock();
            inner.applied_cv.notify_all();
        }
        if let Some(manifest) = inner.manifest.write().take() {
            if !inner.replicated {
                inner.wal.close()?;
                // The Manager owns its manifest in local mode; a shared one is closed by its owner.
                if let Ok(manifest) = Arc::try_unwrap(manifest) {
                    manifest.close()?;
                }
            }
        }
        Ok(())
    }
}

impl Db {
    /// The database's id.
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    fn check(&self) -> Result<()> {
        self.inner.check()?;
        if self.entry.dropped.load(Ordering::Acquire) {
            return Err(PageStoreError::NoSuchDatabase { name: self.entry.name.clone() });
        }
        Ok(())
    }

    /// Commits page images locally: appends one commit record to the WAL, waits until it is durable, then
    /// applies it (the page index points at the frames inside the log entry) in log order. `frames` are
    /// `(page_no, 4096-byte image)` with distinct page numbers in `1..=db_page_count`.
    pub fn commit(&self, frames: &[(u32, &[u8])], db_page_count: u32) -> Result<CommitInfo> {
        self.check()?;
        let inner = &*self.inner;
        if inner.replicated {
            return Err(PageStoreError::invalid("this page store is replicated: commits go through Raft"));
        }
        // A commit is one log record, so it must also fit a segment.
        let frames_max = inner
            .config
            .commit_frames_max
            .min(inner.wal.config().record_payload_max_bytes().saturating_sub(COMMIT_HEADER_LEN) / FRAME_LEN);
        if frames.len() > frames_max {
            return Err(PageStoreError::invalid(format!(
                "{} frames exceed the {frames_max} one commit may carry (commit_frames_max {}, WAL segment {} bytes)",
                frames.len(),
                inner.config.commit_frames_max,
                inner.wal.config().segment_size_bytes
            )));
        }
        if let Some((_, page)) = frames.iter().find(|(_, page)| page.len() != PAGE_SIZE) {
            return Err(PageStoreError::UnsupportedPageSize { got: page.len() });
        }
        validate_page_numbers(frames.iter().map(|(page_no, _)| *page_no), db_page_count)?;
        let _writer = self.entry.writer.lock();
        self.check()?;
        let payload = encode_commit(self.entry.id, db_page_count, frames);
        let header = decode_commit(&payload)?;
        let (ticket, index) = {
            let mut next = inner.next_index.lock();
            let index = *next;
            let ticket = inner.wal.append(vec![NewEntry { index, term: LOCAL_TERM, payload }])?;
            *next += 1;
            (ticket, index)
        };
        if let Err(e) = ticket.wait() {
            inner.poison(format!("commit at index {index} failed: {e}"));
            return Err(e.into());
        }
        // Apply strictly in log order, so that an applied index means every commit up to it is visible.
        let mut applied = inner.applied.lock();
        while *applied + 1 < index {
            if let Some(reason) = inner.poison.lock().clone() {
                return Err(PageStoreError::Poisoned { reason });
            }
            inner.applied_cv.wait(&mut applied);
        }
        self.entry.state.write().apply(index, 0, &header);
        for (page_no, page) in frames {
            inner
                .cache
                .insert(PageKey { db: self.entry.id, page_no: *page_no, version: index }, Arc::from(*page));
        }
        *applied = index;
        inner.applied_cv.notify_all();
        Ok(CommitInfo { index })
    }

    /// Log index of the newest change applied to this database.
    pub fn last_change_index(&self) -> u64 {
        self.entry.state.read().last_change_at(u64::MAX)
    }

    /// Log index of the newest commit applied to this database (what [`CommitCheck::After`] compares
    /// with); the same on every node for the same applied log.
    pub fn last_commit_index(&self) -> u64 {
        self.entry.state.read().last_commit_at(u64::MAX)
    }

    /// Pins a read view at the current applied index.
    pub fn snapshot(&self) -> Result<ReadSnapshot> {
        self.check()?;
        let applied = self.inner.applied.lock();
        let index = *applied;
        self.entry.state.write().pin(index);
        drop(applied);
        Ok(ReadSnapshot { db: self.clone(), index })
    }

    /// Writes a new generation of this database at the newest index no pinned reader precedes, publishes it
    /// in the manifest, and lets the log be purged up to what every database has checkpointed.
    /// `Ok(None)` when nothing is newer than the current generation.
    pub fn checkpoint(&self) -> Result<Option<CheckpointOutcome>> {
        self.checkpoint_at(u64::MAX)
    }

    /// Like [`Db::checkpoint`], at `min(limit, applied index, oldest pinned reader)`.
    pub fn checkpoint_at(&self, limit: u64) -> Result<Option<CheckpointOutcome>> {
        self.check()?;
        let inner = &*self.inner;
        let _one = inner.maintenance.lock();
        let applied = *inner.applied.lock();
        let (target, plan, full, generation_no, page_count, parent, old_chain, last_commit) = {
            let st = self.entry.state.read();
            let target = st.oldest_pinned().map_or(applied, |p| p.min(applied)).min(limit);
            if target <= st.checkpoint_index || st.page_counts.range(..=target).next().is_none() {
                return Ok(None);
            }
            let full = st.chain.is_empty() || st.chain.len() >= inner.config.generation_chain_max;
            let generation_no = st.chain.last().map_or(1, |g| g.meta.generation + 1);
            let parent = if full { 0 } else { st.chain.last().map_or(0, |g| g.meta.generation) };
            let page_count = st.page_count_at(target);
            // A delta records the smallest size since its parent, so that reopening drops the chain pages a
            // shrink cut off even if the database grew back.
            let floor = if full {
                page_count
            } else {
                st.shrunk_to(st.checkpoint_index, target).map_or(page_count, |c| c.min(page_count))
            };
            (
                target,
                st.checkpoint_plan(target, full),
                full,
                generation_no,
                (page_count, floor),
                parent,
                st.chain.clone(),
                st.last_commit_at(target),
            )
        };
        let (page_count, page_floor) = page_count;
        let term = inner.wal.term(target).unwrap_or(LOCAL_TERM);
        let meta = GenerationMeta {
            db: self.entry.id,
            generation: generation_no,
            parent,
            log_index: target,
            log_term: term,
            db_page_count: page_count,
            db_page_floor: page_floor,
            last_commit_index: last_commit,
        };
        let db = self.entry.id;
        let started = std::time::Instant::now();
        // Pages are loaded a bounded chunk at a time, with one read per run of neighbouring frames or slots.
        let pages = plan.chunks(CHECKPOINT_CHUNK_PAGES).flat_map(|chunk| match inner.load_pages(db, chunk) {
            Ok(loaded) => loaded.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
        let (file, checksum) = generation::write(inner.config.io.as_ref(), &inner.pages_dir, &meta, pages)?;
        let file = Arc::new(file);
        let written = std::time::Instant::now();
        let mut batch = Batch::new();
        batch.add_generation(
            DatabaseId(db),
            generation_no,
            Generation {
                log_id: LogId { term, index: target },
                file_name: generation::file_name(db, generation_no),
                page_count: file.slots.len() as u64,
                checksum,
            },
        );
        if full {
            for old in &old_chain {
                batch.remove_generation(DatabaseId(db), old.meta.generation);
            }
        }
        inner.with_manifest(|m| Ok(m.commit(batch)?))?;
        self.entry.state.write().install(target, Arc::clone(&file));
        let published = std::time::Instant::now();
        if full {
            inner.delete_generations(&old_chain)?;
        }
        // A replicated page store leaves purging to Raft (after the snapshot this checkpoint is part of).
        let log_purged_upto = if inner.replicated { None } else { self.purge_log(applied)? };
        Ok(Some(CheckpointOutcome {
            generation: generation_no,
            log_index: target,
            pages: file.slots.len(),
            full,
            size_bytes: file.size_bytes,
            log_purged_upto,
            write_duration: written - started,
            publish_duration: published - written,
            cleanup_duration: published.elapsed(),
        }))
    }

    /// Purges the log up to the newest index that no database still needs.
    fn purge_log(&self, applied: u64) -> Result<Option<u64>> {
        let inner = &*self.inner;
        let needed = inner.dbs.read().values().filter_map(|db| db.state.read().oldest_needed_index()).min();
        let limit = needed.map_or(applied, |n| n.saturating_sub(1)).min(applied);
        let log = inner.wal.state();
        if limit == 0 || log.purged.is_some_and(|p| p.index >= limit) {
            return Ok(None);
        }
        let Some(term) = inner.wal.term(limit) else { return Ok(None) };
        inner.wal.purge_upto(LogPos { index: limit, term })?;
        Ok(Some(limit))
    }

    /// The generation files in force, oldest first (a full generation, then deltas): what a snapshot of
    /// this database ships, each streamed with [`GenerationFile::stream`].
    pub fn generation_chain(&self) -> Vec<Arc<GenerationFile>> {
        self.entry.state.read().chain.clone()
    }

    /// A diagnostics snapshot.
    pub fn diagnostics(&self) -> DbDiagnostics {
        let applied = *self.inner.applied.lock();
        let st = self.entry.state.read();
        DbDiagnostics {
            id: self.entry.id,
            name: self.entry.name.clone(),
            page_count: st.page_count_at(applied),
            generations: st
                .chain
                .iter()
                .map(|g| (g.meta.generation, g.meta.log_index, g.slots.len()))
                .collect(),
            log_versions: st.version_count(),
            pinned_readers: st.pinned.values().sum(),
            oldest_pinned: st.oldest_pinned(),
            log_range: st.oldest_needed_index().zip(st.page_counts.keys().next_back().copied()),
            cache: self.inner.cache.metrics(),
        }
    }
}

impl ReadSnapshot {
    /// The log index the view is pinned at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Log index of the newest change to this database that this view sees: two views with the same value
    /// see the same pages of this database, whatever else the node applied in between.
    pub fn last_change_index(&self) -> u64 {
        self.db.entry.state.read().last_change_at(self.index)
    }

    /// Log index of the newest commit to this database that this view sees (the same on every node for
    /// the same applied log, unlike [`ReadSnapshot::last_change_index`], which a checkpoint moves).
    pub fn last_commit_index(&self) -> u64 {
        self.db.entry.state.read().last_commit_at(self.index)
    }

    /// The database size in pages in this view.
    pub fn page_count(&self) -> u32 {
        self.db.entry.state.read().page_count_at(self.index)
    }

    /// The page as of this view: cache, then the log frame the page index points at, then the base
    /// generation. `None` for page 0, pages past the size, and pages never written.
    pub fn read_page(&self, page_no: u32) -> Result<Option<PageRef>> {
        self.db.check()?;
        // A log frame can be purged between the lookup and the read, right after a checkpoint put its
        // page into a generation; the second lookup then finds the generation.
        for _ in 0..2 {
            let loc = self.db.entry.state.read().locate(page_no, self.index);
            let Some(loc) = loc else { return Ok(None) };
            if let Some(page) = self.db.inner.read_location(self.db.entry.id, page_no, &loc)? {
                return Ok(Some(page));
            }
        }
        Err(PageStoreError::invalid(format!("page {page_no} moved twice while being read")))
    }
}

impl Drop for ReadSnapshot {
    fn drop(&mut self) {
        self.db.entry.state.write().unpin(self.index);
    }
}

/// What a replicated commit was built on, checked when it is applied ([`Manager::apply_commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCheck {
    /// Nothing is checked.
    None,
    /// The transaction read the database at this applied index: refused if a commit to the database
    /// came after it.
    ReadAt(u64),
    /// The transaction was built on the commit at this log index (proposed, not yet applied, when it ran):
    /// refused unless that commit is the database's newest.
    After(u64),
}
