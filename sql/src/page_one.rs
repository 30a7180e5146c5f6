//! The first page of an empty bop database, committed when the database is created.
//!
//! SQLite sizes a database by its main file until the WAL reports a size, and opens the WAL only for a
//! non-empty database; bop's main file is a placeholder that is never read for data. So every bop database
//! starts with page 1 already in the page store: the page SQLite itself would write first for a new
//! database (SQLite file format, "Database File Format" §1.3 and §1.6), with WAL read/write versions.

use bop_storage::page_store::PAGE_SIZE;

/// Offset of the b-tree page header on page 1 (after the 100-byte database header).
const BTREE_HEADER_OFFSET: usize = 100;
/// B-tree page type: leaf table b-tree (the empty `sqlite_schema` table).
const LEAF_TABLE_PAGE: u8 = 0x0d;
/// Database header: "write/read version 2" means the database is in WAL mode.
const WAL_FILE_FORMAT: u8 = 2;

/// Page 1 of an empty database with `PAGE_SIZE`-byte pages.
pub(crate) fn empty_database_page_one() -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page[0..16].copy_from_slice(b"SQLite format 3\0");
    page[16..18].copy_from_slice(&(PAGE_SIZE as u16).to_be_bytes());
    page[18] = WAL_FILE_FORMAT;
    page[19] = WAL_FILE_FORMAT;
    page[20] = 0; // reserved bytes per page
    page[21] = 64; // maximum embedded payload fraction
    page[22] = 32; // minimum embedded payload fraction
    page[23] = 32; // leaf payload fraction
    page[24..28].copy_from_slice(&1u32.to_be_bytes()); // file change counter
    page[28..32].copy_from_slice(&1u32.to_be_bytes()); // database size in pages
                                                       // 32..92: freelist, schema cookie, schema format, encoding, ... all zero: SQLite fills them in with
                                                       // the first schema change, as for a database it created itself.
    page[92..96].copy_from_slice(&1u32.to_be_bytes()); // version-valid-for = change counter
    let version = libsql_sys::ffi::SQLITE_VERSION_NUMBER as u32;
    page[96..100].copy_from_slice(&version.to_be_bytes());
    let header = &mut page[BTREE_HEADER_OFFSET..BTREE_HEADER_OFFSET + 8];
    header[0] = LEAF_TABLE_PAGE;
    // first freeblock 0, cell count 0, cell content area starts at the end of the page, 0 fragmented bytes
    header[5..7].copy_from_slice(&(PAGE_SIZE as u16).to_be_bytes());
    page
}
