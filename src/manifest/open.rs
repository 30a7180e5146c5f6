//! Opening the environment: pre-checks that never modify a foreign file, the format-version
//! check, table creation, and the shutdown sentinel.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{EnvOpenOptions, WithoutTls};

use super::config::{ManifestConfig, MAP_SIZE_ALIGN_BYTES};
use super::error::{ManifestError, Result, Table};
use super::keys;
use super::records::{CounterRecord, FormatRecord, PreviousShutdown, RunState, Sentinel};
use super::store::Store;
use super::tables::Tables;

/// Format version written by this build (`meta` key 0x0001).
pub const FORMAT_VERSION: u32 = 1;

/// Name of the manifest directory inside the node data directory.
pub const MANIFEST_DIR_NAME: &str = "manifest";

/// LMDB's data file name inside the environment directory.
pub(crate) const DATA_FILE_NAME: &str = "data.mdb";

/// `MDB_MAGIC` from mdb.c, stored native-endian in `mm_magic` of both meta pages.
const LMDB_MAGIC: u32 = 0xBEEF_C0DE;

/// `PAGEHDRSZ` from mdb.c: `pgno_t` (size_t), `u16 mp_pad`, `u16 mp_flags`, `u32 mp_pb`.
const LMDB_PAGE_HEADER_BYTES: usize = std::mem::size_of::<usize>() + 8;

/// Named databases the environment may hold (10 tables and headroom).
const MAX_DBS: u32 = 16;

/// Checks an existing `data.mdb` for LMDB's magic before LMDB touches it, so that a foreign
/// file is reported and left byte-for-byte unmodified. An empty file is accepted: LMDB writes
/// the meta pages of a new environment into it, and a crash during the very first open can
/// leave it empty.
fn precheck_data_file(path: &Path) -> Result<()> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(ManifestError::io("open data file", path, error)),
    };
    let metadata = file.metadata().map_err(|error| ManifestError::io("stat data file", path, error))?;
    if !metadata.is_file() {
        return Err(ManifestError::NotAnLmdbEnvironment {
            path: path.to_owned(),
            reason: "data.mdb is not a regular file",
        });
    }
    if metadata.len() == 0 {
        return Ok(());
    }
    let mut header = [0u8; LMDB_PAGE_HEADER_BYTES + 4];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(ManifestError::NotAnLmdbEnvironment {
                path: path.to_owned(),
                reason: "data.mdb is shorter than an LMDB meta page header",
            })
        }
        Err(error) => return Err(ManifestError::io("read data file header", path, error)),
    }
    let magic_bytes = header.last_chunk::<4>().copied().unwrap_or_default();
    if u32::from_ne_bytes(magic_bytes) != LMDB_MAGIC {
        return Err(ManifestError::NotAnLmdbEnvironment {
            path: path.to_owned(),
            reason: "data.mdb does not start with an LMDB meta page (bad magic)",
        });
    }
    Ok(())
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| ManifestError::io("fsync directory", path, error))
}

fn map_open_error(dir: &Path, error: heed::Error) -> ManifestError {
    match error {
        heed::Error::EnvAlreadyOpened => ManifestError::AlreadyOpen { path: dir.to_owned() },
        heed::Error::Mdb(heed::MdbError::Invalid) => ManifestError::NotAnLmdbEnvironment {
            path: dir.join(DATA_FILE_NAME),
            reason: "LMDB reports MDB_INVALID",
        },
        heed::Error::Mdb(heed::MdbError::VersionMismatch) => ManifestError::NotAnLmdbEnvironment {
            path: dir.join(DATA_FILE_NAME),
            reason: "LMDB reports a version mismatch",
        },
        other => ManifestError::lmdb("open environment")(other),
    }
}

/// What [`open_store`] found.
pub(crate) struct Opened {
    pub(crate) store: Store,
    pub(crate) previous_shutdown: PreviousShutdown,
}

/// Opens (or creates) the manifest environment in `<data_dir>/manifest/`.
pub(crate) fn open_store(data_dir: &Path, config: &ManifestConfig) -> Result<Opened> {
    let dir: PathBuf = data_dir.join(MANIFEST_DIR_NAME);
    match fs::metadata(&dir) {
        Ok(metadata) if !metadata.is_dir() => {
            return Err(ManifestError::NotADirectory { path: dir });
        }
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(&dir)
                .map_err(|error| ManifestError::io("create manifest directory", &dir, error))?;
            sync_dir(data_dir)?;
        }
        Err(error) => return Err(ManifestError::io("stat manifest directory", &dir, error)),
    }
    let data_file = dir.join(DATA_FILE_NAME);
    precheck_data_file(&data_file)?;

    // Start at least as large as the existing file so a reopen does not regrow step by step.
    let file_len = fs::metadata(&data_file).map(|m| m.len()).unwrap_or(0);
    let file_len = usize::try_from(file_len).unwrap_or(usize::MAX);
    let map_size_bytes = config
        .map_size_initial_bytes
        .max(file_len.div_ceil(MAP_SIZE_ALIGN_BYTES).saturating_mul(MAP_SIZE_ALIGN_BYTES))
        .min(config.map_size_max_bytes.max(config.map_size_initial_bytes));

    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size_bytes).max_dbs(MAX_DBS);
    // SAFETY: no flags are set, in particular not NO_SYNC, NO_META_SYNC, NO_LOCK or WRITE_MAP:
    // commits are durable and LMDB's lock file coordinates access. The data file is only ever
    // modified through LMDB; bop never truncates or writes it behind LMDB's back (it only reserves
    // blocks for it, keeping its size and contents: Store::reserve_map_space).
    let env: heed::Env<WithoutTls> =
        unsafe { options.open(&dir) }.map_err(|error| map_open_error(&dir, error))?;

    let unsafe_flags = heed::EnvFlags::NO_SYNC
        | heed::EnvFlags::NO_META_SYNC
        | heed::EnvFlags::MAP_ASYNC
        | heed::EnvFlags::WRITE_MAP
        | heed::EnvFlags::NO_LOCK;
    let flags = env.get_flags().map_err(ManifestError::lmdb("read environment flags"))?;
    assert_eq!(
        flags & unsafe_flags.bits(),
        0,
        "the manifest environment must be opened with durable commits"
    );

    check_format(&env, &dir)?;

    // Tables and the format record are created in one transaction, so an environment either
    // has no manifest tables or has a format version.
    let mut wtxn = env.write_txn().map_err(ManifestError::lmdb("begin write transaction"))?;
    let tables = Tables::create(&env, &mut wtxn)?;
    let format = tables.get::<FormatRecord>(&wtxn, Table::Meta, &keys::META_FORMAT_VERSION)?;
    if format.is_none() {
        let record = FormatRecord { format_version: FORMAT_VERSION };
        tables.put(&mut wtxn, Table::Meta, &keys::META_FORMAT_VERSION, &record)?;
        let first_id = CounterRecord { value: 1 };
        tables.put(&mut wtxn, Table::Meta, &keys::META_NEXT_DATABASE_ID, &first_id)?;
        let empty_feed = CounterRecord { value: 0 };
        tables.put(&mut wtxn, Table::Meta, &keys::META_FEED_HEAD_SEQ, &empty_feed)?;
    }
    wtxn.commit().map_err(ManifestError::lmdb("commit manifest creation"))?;

    let store = Store::new(env, tables, config.map_size_max_bytes, config.reserve_map_space, dir.clone());
    store.reserve_map_space();
    let previous_shutdown = store.write(|txn| {
        let tables = &store.tables;
        let sentinel = tables.get::<Sentinel>(txn, Table::Runtime, &keys::RUNTIME_SENTINEL)?;
        let (previous, open_count) = match sentinel {
            None => (PreviousShutdown::FirstOpen, 1),
            Some(Sentinel { state: RunState::Clean, open_count }) => {
                (PreviousShutdown::Clean, open_count.saturating_add(1))
            }
            Some(Sentinel { state: RunState::Running, open_count }) => {
                (PreviousShutdown::Unclean, open_count.saturating_add(1))
            }
        };
        let running = Sentinel { state: RunState::Running, open_count };
        tables.put(txn, Table::Runtime, &keys::RUNTIME_SENTINEL, &running)?;
        Ok(previous)
    })?;
    sync_dir(&dir)?;
    Ok(Opened { store, previous_shutdown })
}

/// Refuses an environment that is not a manifest or whose format is newer, before anything is
/// written to it (this runs in a read transaction).
fn check_format(env: &heed::Env<WithoutTls>, dir: &Path) -> Result<()> {
    let rtxn = env.read_txn().map_err(ManifestError::lmdb("begin read transaction"))?;
    let meta = env
        .open_database::<Bytes, Bytes>(&rtxn, Some(Table::Meta.name()))
        .map_err(ManifestError::lmdb("open meta table"))?;
    let Some(meta) = meta else {
        // No meta table: a new environment has an empty main database; anything else belongs
        // to someone else.
        let main = env
            .open_database::<Bytes, Bytes>(&rtxn, None)
            .map_err(ManifestError::lmdb("open main database"))?;
        let empty = match main {
            Some(main) => main.is_empty(&rtxn).map_err(ManifestError::lmdb("main database length"))?,
            None => true,
        };
        return if empty { Ok(()) } else { Err(ManifestError::NotAManifest { path: dir.to_owned() }) };
    };
    let key = keys::META_FORMAT_VERSION;
    let bytes = meta.get(&rtxn, &key).map_err(ManifestError::lmdb("read format version"))?;
    let Some(bytes) = bytes else {
        return Err(ManifestError::NotAManifest { path: dir.to_owned() });
    };
    let record = super::codec::decode::<FormatRecord>(Table::Meta, &key, bytes)?;
    if record.format_version > FORMAT_VERSION {
        return Err(ManifestError::FormatTooNew {
            path: dir.to_owned(),
            found: record.format_version,
            supported_max: FORMAT_VERSION,
        });
    }
    Ok(())
}
