//! Opening something that is not a manifest of this format fails with a typed error and leaves
//! the file byte-for-byte unmodified.

mod manifest_support;

use std::fs;
use std::path::Path;

use bop_storage::manifest::{Manifest, ManifestError, FORMAT_VERSION, MANIFEST_DIR_NAME};
use heed::types::Bytes;
use heed::EnvOpenOptions;
use manifest_support::{create, small_config};

fn data_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(MANIFEST_DIR_NAME).join("data.mdb")
}

#[test]
fn a_file_that_is_not_lmdb_is_refused_and_left_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(MANIFEST_DIR_NAME)).unwrap();
    let garbage: Vec<u8> = (0..16 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(data_file(dir.path()), &garbage).unwrap();

    let result = Manifest::open(dir.path(), small_config());

    assert!(matches!(result, Err(ManifestError::NotAnLmdbEnvironment { .. })), "{result:?}");
    assert_eq!(fs::read(data_file(dir.path())).unwrap(), garbage);
    // LMDB never ran: no lock file was created either.
    assert!(!dir.path().join(MANIFEST_DIR_NAME).join("lock.mdb").exists());
}

#[test]
fn a_short_file_is_refused_and_left_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(MANIFEST_DIR_NAME)).unwrap();
    fs::write(data_file(dir.path()), b"hello").unwrap();

    let result = Manifest::open(dir.path(), small_config());

    assert!(matches!(result, Err(ManifestError::NotAnLmdbEnvironment { .. })));
    assert_eq!(fs::read(data_file(dir.path())).unwrap(), b"hello");
}

#[test]
fn a_file_in_place_of_the_manifest_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MANIFEST_DIR_NAME);
    fs::write(&path, b"not a directory").unwrap();

    let result = Manifest::open(dir.path(), small_config());

    assert!(matches!(result, Err(ManifestError::NotADirectory { .. })));
    assert_eq!(fs::read(&path).unwrap(), b"not a directory");
}

#[test]
fn a_foreign_lmdb_environment_is_refused_and_left_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let env_dir = dir.path().join(MANIFEST_DIR_NAME);
    fs::create_dir(&env_dir).unwrap();
    {
        let env = unsafe { EnvOpenOptions::new().map_size(1024 * 1024).max_dbs(4).open(&env_dir).unwrap() };
        let mut txn = env.write_txn().unwrap();
        let db = env.create_database::<Bytes, Bytes>(&mut txn, Some("someone-else")).unwrap();
        db.put(&mut txn, b"k", b"v").unwrap();
        txn.commit().unwrap();
    }
    let before = fs::read(data_file(dir.path())).unwrap();

    let result = Manifest::open(dir.path(), small_config());

    assert!(matches!(result, Err(ManifestError::NotAManifest { .. })), "{result:?}");
    assert_eq!(fs::read(data_file(dir.path())).unwrap(), before);
}

#[test]
fn a_newer_format_is_refused_and_left_unmodified() {
    // A real manifest, closed cleanly.
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::open(dir.path(), small_config()).unwrap();
    manifest.commit(create("a")).unwrap();
    manifest.close().unwrap();

    // A future build bumps the format version: meta key 0x0001, value u16 LE record
    // version 1 then u32 LE format version.
    let newer = FORMAT_VERSION + 1;
    {
        let env_dir = dir.path().join(MANIFEST_DIR_NAME);
        let env = unsafe { EnvOpenOptions::new().map_size(1024 * 1024).max_dbs(16).open(&env_dir).unwrap() };
        let mut txn = env.write_txn().unwrap();
        let meta = env.open_database::<Bytes, Bytes>(&txn, Some("meta")).unwrap().unwrap();
        let mut value = 1u16.to_le_bytes().to_vec();
        value.extend_from_slice(&newer.to_le_bytes());
        meta.put(&mut txn, &0x0001u16.to_be_bytes(), &value).unwrap();
        txn.commit().unwrap();
    }
    let before = fs::read(data_file(dir.path())).unwrap();

    let result = Manifest::open(dir.path(), small_config());

    match result {
        Err(ManifestError::FormatTooNew { found, supported_max, .. }) => {
            assert_eq!(found, newer);
            assert_eq!(supported_max, FORMAT_VERSION);
        }
        other => panic!("expected FormatTooNew, got {other:?}"),
    }
    assert_eq!(fs::read(data_file(dir.path())).unwrap(), before);
}

#[test]
fn opening_twice_in_one_process_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Manifest::open(dir.path(), small_config()).unwrap();

    let second = Manifest::open(dir.path(), small_config());

    assert!(matches!(second, Err(ManifestError::AlreadyOpen { .. })));
}
