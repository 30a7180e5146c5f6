//! The page store: SQLite-compatible 4096-byte pages of many databases, kept as base generations plus a
//! page index that points into the log; checkpoints merge log versions into new generations.
//!
//! Applying a commit does not copy pages: the commit record in the WAL holds the page frames, and the page
//! index records where each frame lies. A read at a pinned snapshot goes cache → newest log frame at or
//! before the snapshot → generation chain. Formats and the checkpoint sequence are in docs/design.md.

mod commit;
mod database;
mod error;
mod generation;
mod manager;

pub use commit::{
    commit_db_id, decode_commit, encode_commit, page_crc, CommitHeader, COMMIT_HEADER_LEN, FRAME_LEN,
    PAGE_SIZE,
};
pub use error::PageStoreError;
pub use generation::{
    install as install_generation, open as open_generation, ExpectedGeneration, GenerationFile,
    GenerationMeta, GenerationStream, PageImage, STREAM_CHUNK_BYTES,
};
pub use manager::{
    CheckpointOutcome, CommitCheck, CommitInfo, Db, DbDiagnostics, Manager, ManagerConfig, ReadSnapshot,
    SnapshotDatabase,
};
