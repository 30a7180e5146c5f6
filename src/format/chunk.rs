//! The chunk header that starts every file bop writes (log segments now, page generations later).
//!
//! Wire format, 64 bytes at offset 0, little-endian (see docs/design.md):
//! `magic[8] version:u16 kind:u16 header_len:u32 sequence:u64 generation:u64 store_id:u64 capacity:u64
//!  base:u64 reserved:u32 crc32c:u32` — the CRC covers bytes 0..60.
//! The rest of the first 4096-byte block is zero, so that data starts block-aligned for direct I/O.

use super::{le_u16, le_u32, le_u64, DecodeError};

/// The eight bytes every bop chunk starts with.
pub const CHUNK_MAGIC: [u8; 8] = *b"BOPCHUNK";
/// The newest chunk format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the header that carry fields (the rest of the first block is zero).
pub const CHUNK_HEADER_LEN: usize = 64;
/// Offset of the first data byte in every chunk: one 4096-byte block, so data is aligned for direct I/O.
pub const DATA_OFFSET: u64 = 4096;

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// A segment of the WAL chunk store (the Raft log).
    LogSegment,
    /// A base generation of a database's pages.
    PageGeneration,
}

impl ChunkKind {
    fn to_u16(self) -> u16 {
        match self {
            ChunkKind::LogSegment => 1,
            ChunkKind::PageGeneration => 2,
        }
    }

    fn from_u16(raw: u16) -> Result<Self, DecodeError> {
        match raw {
            1 => Ok(ChunkKind::LogSegment),
            2 => Ok(ChunkKind::PageGeneration),
            got => Err(DecodeError::UnknownKind { what: "chunk", got }),
        }
    }
}

/// The decoded fields of a chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// What the chunk holds.
    pub kind: ChunkKind,
    /// The chunk's sequence number; log segments are numbered 1, 2, 3, ... and named after it.
    pub sequence: u64,
    /// Generation number (page generations); 0 for log segments.
    pub generation: u64,
    /// Random identity of the store that wrote the chunk, so a file from another store is refused.
    pub store_id: u64,
    /// Size in bytes the chunk was created with (header block included).
    pub capacity_bytes: u64,
    /// Kind-specific base value (0 for log segments).
    pub base: u64,
}

impl ChunkHeader {
    /// Encodes the header into its 64-byte wire form.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut out = [0u8; CHUNK_HEADER_LEN];
        out[0..8].copy_from_slice(&CHUNK_MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&self.kind.to_u16().to_le_bytes());
        out[12..16].copy_from_slice(&(CHUNK_HEADER_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        out[24..32].copy_from_slice(&self.generation.to_le_bytes());
        out[32..40].copy_from_slice(&self.store_id.to_le_bytes());
        out[40..48].copy_from_slice(&self.capacity_bytes.to_le_bytes());
        out[48..56].copy_from_slice(&self.base.to_le_bytes());
        // 56..60 reserved, zero.
        let crc = crc32c::crc32c(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header from the first bytes of a chunk. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(raw) = bytes.get(0..CHUNK_HEADER_LEN) else {
            return Err(DecodeError::Truncated { needed: CHUNK_HEADER_LEN, available: bytes.len() });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&raw[0..8]);
        if magic != CHUNK_MAGIC {
            return Err(DecodeError::BadMagic { got: magic });
        }
        let expected = le_u32(raw, 60);
        let got = crc32c::crc32c(&raw[0..60]);
        if expected != got {
            return Err(DecodeError::ChecksumMismatch { expected, got });
        }
        let version = le_u16(raw, 8);
        if version > FORMAT_VERSION || version == 0 {
            return Err(DecodeError::UnsupportedVersion { got: version, supported: FORMAT_VERSION });
        }
        let kind = ChunkKind::from_u16(le_u16(raw, 10))?;
        let header_len = le_u32(raw, 12);
        if header_len as usize != CHUNK_HEADER_LEN {
            return Err(DecodeError::LengthOutOfRange {
                len_bytes: u64::from(header_len),
                max_bytes: CHUNK_HEADER_LEN as u64,
            });
        }
        if le_u32(raw, 56) != 0 {
            return Err(DecodeError::ReservedNotZero { field: "chunk.reserved" });
        }
        Ok(ChunkHeader {
            kind,
            sequence: le_u64(raw, 16),
            generation: le_u64(raw, 24),
            store_id: le_u64(raw, 32),
            capacity_bytes: le_u64(raw, 40),
            base: le_u64(raw, 48),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkHeader {
        ChunkHeader {
            kind: ChunkKind::LogSegment,
            sequence: 7,
            generation: 0,
            store_id: 0xfeed_beef,
            capacity_bytes: 1 << 20,
            base: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let header = sample();
        assert_eq!(ChunkHeader::decode(&header.encode()), Ok(header));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample().encode();
        for bit in 0..(CHUNK_HEADER_LEN * 8) {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(ChunkHeader::decode(&flipped).is_err(), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn newer_version_is_refused_with_its_number() {
        let mut bytes = sample().encode();
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            ChunkHeader::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { got: 2, supported: FORMAT_VERSION })
        );
    }
}
