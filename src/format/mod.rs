//! The unified chunk format: one header for every file bop writes, and the log record layout.
//!
//! Everything here is laid out by hand as fixed-width little-endian fields; `docs/design.md` has the byte
//! tables. Decoding never panics on any input: every read is bounds-checked and every failure is a typed
//! [`DecodeError`].

mod chunk;
mod record;

pub use chunk::{ChunkHeader, ChunkKind, CHUNK_HEADER_LEN, CHUNK_MAGIC, DATA_OFFSET, FORMAT_VERSION};
pub use record::{
    decode_record, encode_record, encode_record_to_vec, encoded_len, plausible_batch_start, RecordHeader,
    RecordKind, RecordRef, FLAG_BATCH_START, RECORD_ALIGN, RECORD_HEADER_LEN,
};

/// Why bytes could not be decoded as a chunk header or a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were available.
        available: usize,
    },
    /// The chunk header does not start with [`CHUNK_MAGIC`].
    #[error("bad magic {got:02x?}")]
    BadMagic {
        /// The eight bytes found.
        got: [u8; 8],
    },
    /// The chunk was written by a newer format than this build understands.
    #[error("unsupported format version {got} (this build reads up to {supported})")]
    UnsupportedVersion {
        /// Version found in the header.
        got: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// A kind byte that no known structure uses.
    #[error("unknown {what} kind {got}")]
    UnknownKind {
        /// Which structure (`"chunk"` or `"record"`).
        what: &'static str,
        /// The value found.
        got: u16,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("checksum mismatch: stored {expected:#010x}, computed {got:#010x}")]
    ChecksumMismatch {
        /// Checksum stored in the bytes.
        expected: u32,
        /// Checksum computed over the bytes.
        got: u32,
    },
    /// A reserved field that must be zero is not.
    #[error("reserved field {field} is not zero")]
    ReservedNotZero {
        /// Name of the field.
        field: &'static str,
    },
    /// A length field larger than the space that can hold it.
    #[error("length {len_bytes} exceeds the {max_bytes} bytes available")]
    LengthOutOfRange {
        /// The length found.
        len_bytes: u64,
        /// The most it may be here.
        max_bytes: u64,
    },
    /// A record that belongs to another chunk (a stale or misdirected read).
    #[error("record carries chunk sequence {got:#010x}, expected {expected:#010x}")]
    WrongChunk {
        /// Low 32 bits of the sequence of the chunk being read.
        expected: u32,
        /// Low 32 bits found in the record.
        got: u32,
    },
}

pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    if let Some(src) = bytes.get(at..at + 2) {
        raw.copy_from_slice(src);
    }
    u16::from_le_bytes(raw)
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        raw.copy_from_slice(src);
    }
    u32::from_le_bytes(raw)
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        raw.copy_from_slice(src);
    }
    u64::from_le_bytes(raw)
}
