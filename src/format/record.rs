//! Log records: a 32-byte header, the payload, and zero padding to an 8-byte boundary.
//!
//! Wire format, little-endian (see docs/design.md):
//! `crc32c:u32 payload_len:u32 index:u64 term:u64 chunk_seq_low:u32 kind:u8 flags:u8 reserved:u16
//!  payload[payload_len] zero[pad to 8]` — the CRC covers header bytes 4..32 followed by the payload, so a
//! torn, stale (another chunk's) or misdirected record is detected, never returned.

use super::{le_u16, le_u32, le_u64, DecodeError};

/// Bytes in a record header.
pub const RECORD_HEADER_LEN: usize = 32;
/// Every record starts at a multiple of this offset within its chunk.
pub const RECORD_ALIGN: usize = 8;
/// Flag bit set on the first record of every group-commit batch.
pub const FLAG_BATCH_START: u8 = 1;
const FLAGS_KNOWN: u8 = FLAG_BATCH_START;

/// What a record means to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A log entry at `index` with `term` and an opaque payload.
    Entry,
    /// Every entry at or after `index` is removed (a Raft conflict truncation).
    Truncate,
    /// Every entry up to and including `index` (whose term is `term`) is purged; the payload, if any, is
    /// opaque bytes the purger attached (the generic Raft log store keeps the purged log id there).
    Purge,
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Entry => 1,
            RecordKind::Truncate => 2,
            RecordKind::Purge => 3,
        }
    }

    fn from_u8(raw: u8) -> Result<Self, DecodeError> {
        match raw {
            1 => Ok(RecordKind::Entry),
            2 => Ok(RecordKind::Truncate),
            3 => Ok(RecordKind::Purge),
            got => Err(DecodeError::UnknownKind { what: "record", got: u16::from(got) }),
        }
    }
}

/// The fields of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record means.
    pub kind: RecordKind,
    /// Raft index (entry), first removed index (truncate) or last purged index (purge).
    pub index: u64,
    /// Raft term of the entry, or of the last purged entry; 0 for truncate.
    pub term: u64,
    /// Low 32 bits of the sequence of the chunk the record was written to.
    pub chunk_seq_low: u32,
    /// Flag bits ([`FLAG_BATCH_START`]).
    pub flags: u8,
}

/// A record decoded in place: its header and a borrow of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The header fields.
    pub header: RecordHeader,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Bytes the record occupies including header and padding.
    pub encoded_len: usize,
}

/// Bytes a record with `payload_len` payload bytes occupies, padding included.
pub fn encoded_len(payload_len: usize) -> usize {
    (RECORD_HEADER_LEN + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Encodes the record (header, payload, zero padding) into `out`, which must be exactly
/// [`encoded_len`]`(payload.len())` bytes long.
///
/// The caller guarantees `payload.len() <= u32::MAX`; the WAL checks record sizes on append.
pub fn encode_record(out: &mut [u8], header: &RecordHeader, payload: &[u8]) {
    assert!(payload.len() <= u32::MAX as usize, "payload length checked on append");
    assert_eq!(out.len(), encoded_len(payload.len()), "output sized by encoded_len");
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[8..16].copy_from_slice(&header.index.to_le_bytes());
    head[16..24].copy_from_slice(&header.term.to_le_bytes());
    head[24..28].copy_from_slice(&header.chunk_seq_low.to_le_bytes());
    head[28] = header.kind.to_u8();
    head[29] = header.flags;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[4..]), payload);
    head[0..4].copy_from_slice(&crc.to_le_bytes());
    let (head_out, rest) = out.split_at_mut(RECORD_HEADER_LEN);
    head_out.copy_from_slice(&head);
    let (payload_out, padding) = rest.split_at_mut(payload.len());
    payload_out.copy_from_slice(payload);
    padding.fill(0);
}

/// Appends the encoded record to a `Vec`.
pub fn encode_record_to_vec(out: &mut Vec<u8>, header: &RecordHeader, payload: &[u8]) {
    let start = out.len();
    out.resize(start + encoded_len(payload.len()), 0);
    encode_record(&mut out[start..], header, payload);
}

/// Decodes the record at the start of `bytes`, which belongs to the chunk whose sequence has low 32 bits
/// `chunk_seq_low`. Returns `Ok(None)` when the header is all zero (the end of written data).
/// Never panics, whatever the bytes.
pub fn decode_record(bytes: &[u8], chunk_seq_low: u32) -> Result<Option<RecordRef<'_>>, DecodeError> {
    let Some(head) = bytes.get(..RECORD_HEADER_LEN) else {
        return Err(DecodeError::Truncated { needed: RECORD_HEADER_LEN, available: bytes.len() });
    };
    if head.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let payload_len = le_u32(head, 4) as usize;
    let total = encoded_len(payload_len);
    if total > bytes.len() {
        return Err(DecodeError::LengthOutOfRange {
            len_bytes: payload_len as u64,
            max_bytes: bytes.len().saturating_sub(RECORD_HEADER_LEN) as u64,
        });
    }
    let payload = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len];
    let expected = le_u32(head, 0);
    let got = crc32c::crc32c_append(crc32c::crc32c(&head[4..]), payload);
    if expected != got {
        return Err(DecodeError::ChecksumMismatch { expected, got });
    }
    let kind = RecordKind::from_u8(head[28])?;
    let flags = head[29];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::ReservedNotZero { field: "record.flags" });
    }
    if le_u16(head, 30) != 0 {
        return Err(DecodeError::ReservedNotZero { field: "record.reserved" });
    }
    if bytes[RECORD_HEADER_LEN + payload_len..total].iter().any(|&b| b != 0) {
        return Err(DecodeError::ReservedNotZero { field: "record.padding" });
    }
    let found_seq = le_u32(head, 24);
    if found_seq != chunk_seq_low {
        return Err(DecodeError::WrongChunk { expected: chunk_seq_low, got: found_seq });
    }
    Ok(Some(RecordRef {
        header: RecordHeader { kind, index: le_u64(head, 8), term: le_u64(head, 16), chunk_seq_low, flags },
        payload,
        encoded_len: total,
    }))
}

/// A cheap pre-check (no checksum) for "could a batch of this chunk start here": used when scanning past
/// a damaged record to tell corruption in the middle of the log from a torn tail.
pub fn plausible_batch_start(bytes: &[u8], chunk_seq_low: u32) -> bool {
    let Some(head) = bytes.get(..RECORD_HEADER_LEN) else {
        return false;
    };
    le_u32(head, 24) == chunk_seq_low
        && head[29] == FLAG_BATCH_START
        && (1..=3).contains(&head[28])
        && le_u16(head, 30) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> RecordHeader {
        RecordHeader { kind: RecordKind::Entry, index, term: 3, chunk_seq_low: 9, flags: FLAG_BATCH_START }
    }

    #[test]
    fn record_round_trips_with_padding() {
        for payload_len in [0usize, 1, 7, 8, 9, 100] {
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8 ^ 0x5a).collect();
            let mut out = Vec::new();
            encode_record_to_vec(&mut out, &entry(42), &payload);
            assert_eq!(out.len() % RECORD_ALIGN, 0);
            assert_eq!(out.len(), encoded_len(payload_len));
            let rec = decode_record(&out, 9).expect("valid").expect("not end");
            assert_eq!(rec.header, entry(42));
            assert_eq!(rec.payload, &payload[..]);
            assert_eq!(rec.encoded_len, out.len());
        }
    }

    #[test]
    fn zero_header_is_the_end() {
        assert_eq!(decode_record(&[0u8; 64], 9), Ok(None));
    }

    #[test]
    fn record_of_another_chunk_is_refused() {
        let mut out = Vec::new();
        encode_record_to_vec(&mut out, &entry(1), b"abc");
        assert_eq!(decode_record(&out, 10), Err(DecodeError::WrongChunk { expected: 10, got: 9 }));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode_record_to_vec(&mut out, &entry(5), b"hello, world");
        for bit in 0..(out.len() * 8) {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            match decode_record(&flipped, 9) {
                Ok(Some(rec)) => panic!("bit {bit} flip decoded as {rec:?}"),
                Ok(None) => panic!("bit {bit} flip decoded as end"),
                Err(_) => {}
            }
        }
    }
}
