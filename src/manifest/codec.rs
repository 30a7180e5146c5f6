//! Value encoding: `u16 LE record version` + bincode 2 (serde) payload.
//!
//! The payload uses `bincode::config::standard().with_fixed_int_encoding()` (little-endian,
//! fixed-width integers, `u64` lengths), so every value has a byte-exact layout that
//! docs/design.md (Manifest) tabulates. Decoding never panics: a short value, an unknown version,
//! a bad payload or trailing bytes is a typed error naming the table and the key.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{key_hex, ManifestError, Result, Table};
use super::records::{
    CommittedRecord, CounterRecord, CursorRecord, DatabaseRecord, FeedRecord, FormatRecord, Generation,
    LogId, Membership, NameRecord, Segment, Sentinel, Snapshot, Vote,
};

/// Upper bound of a decoded payload; bounds the allocation a corrupt length prefix can cause.
pub(crate) const VALUE_DECODE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Width of the record-version prefix.
pub(crate) const VERSION_PREFIX_BYTES: usize = 2;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<VALUE_DECODE_BYTES_MAX>()
}

/// Why a payload could not be decoded (before the table and key are known).
pub(crate) enum DecodeFailure {
    /// The version is not one this build reads.
    UnsupportedVersion { version: u16, supported_max: u16 },
    /// The payload is malformed.
    Malformed(String),
}

/// A value stored in the manifest, with its record version.
pub(crate) trait Record: Serialize + DeserializeOwned + Sized {
    /// The version written by this build.
    const VERSION: u16 = 1;

    /// Decodes a payload written with `version`. Versions older than `VERSION` are converted
    /// here once a layout changes.
    fn decode_version(version: u16, payload: &[u8]) -> std::result::Result<Self, DecodeFailure> {
        if version == Self::VERSION {
            decode_payload(payload)
        } else {
            Err(DecodeFailure::UnsupportedVersion { version, supported_max: Self::VERSION })
        }
    }
}

/// Decodes a bincode payload that must be consumed entirely.
pub(crate) fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> std::result::Result<T, DecodeFailure> {
    match bincode::serde::decode_from_slice::<T, _>(payload, bincode_config()) {
        Ok((value, read_bytes)) if read_bytes == payload.len() => Ok(value),
        Ok((_, read_bytes)) => Err(DecodeFailure::Malformed(format!(
            "{} trailing bytes after the value",
            payload.len() - read_bytes
        ))),
        Err(error) => Err(DecodeFailure::Malformed(error.to_string())),
    }
}

/// Encodes a value with its version prefix.
pub(crate) fn encode<T: Record>(table: Table, value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|error| ManifestError::Encode { table, reason: error.to_string() })?;
    let mut out = Vec::with_capacity(VERSION_PREFIX_BYTES + payload.len());
    out.extend_from_slice(&T::VERSION.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a stored value; errors name `table` and `key`.
pub(crate) fn decode<T: Record>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T> {
    let (prefix, payload) = match bytes.split_first_chunk::<VERSION_PREFIX_BYTES>() {
        Some(split) => split,
        None => {
            return Err(ManifestError::Decode {
                table,
                key: key_hex(key),
                reason: format!("value of {} bytes is shorter than the version prefix", bytes.len()),
            })
        }
    };
    let version = u16::from_le_bytes(*prefix);
    T::decode_version(version, payload).map_err(|failure| match failure {
        DecodeFailure::UnsupportedVersion { version, supported_max } => {
            ManifestError::UnsupportedRecordVersion { table, key: key_hex(key), version, supported_max }
        }
        DecodeFailure::Malformed(reason) => ManifestError::Decode { table, key: key_hex(key), reason },
    })
}

impl Record for FormatRecord {}
impl Record for CounterRecord {}
impl Record for Sentinel {}
impl Record for DatabaseRecord {}
impl Record for NameRecord {}
impl Record for Vote {}
impl Record for CommittedRecord {}
impl Record for crate::manifest::records::RaftBlobRecord {}
impl Record for LogId {}
impl Record for Membership {}
impl Record for Segment {}
impl Record for Generation {}
impl Record for Snapshot {}
impl Record for FeedRecord {}
impl Record for CursorRecord {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::records::{DatabaseConfig, DatabaseId, SegmentState};

    #[test]
    fn round_trip_and_exact_layout() {
        // A vote is 8 + 8 + 1 bytes of fixed-width little-endian after the version prefix.
        let vote = Vote { term: 3, node_id: 7, committed: true };
        let bytes = encode(Table::Raft, &vote).unwrap();
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.push(1);
        assert_eq!(bytes, expected);
        assert_eq!(decode::<Vote>(Table::Raft, b"k", &bytes).unwrap(), vote);

        // A string is a u64 LE length then its bytes; a Vec<u8> likewise.
        let record = DatabaseRecord {
            name: "a".into(),
            config: DatabaseConfig { page_size_bytes: 4096, options: vec![9] },
        };
        let bytes = encode(Table::Databases, &record).unwrap();
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(b'a');
        expected.extend_from_slice(&4096u32.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(9);
        assert_eq!(bytes, expected);

        // An enum is a u32 LE variant index.
        let segment = Segment { first_index: 1, last_index: None, state: SegmentState::Sealed };
        let bytes = encode(Table::Segments, &segment).unwrap();
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.push(0);
        expected.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn feed_and_sentinel_layouts_match_the_documentation() {
        use crate::manifest::records::{Change, GenerationRef, RunState};
        // Feed entry: u64 count, then per change a u32 variant index and its fields.
        let record = FeedRecord {
            changes: vec![
                Change::DatabaseCreated { id: DatabaseId(5) },
                Change::VoteSet,
                Change::GenerationAdded(GenerationRef { database_id: DatabaseId(5), generation: 2 }),
                Change::SnapshotRemoved { id: 9 },
            ],
        };
        let bytes = encode(Table::Feed, &record).unwrap();
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&5u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&9u32.to_le_bytes());
        expected.extend_from_slice(&5u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&12u32.to_le_bytes());
        expected.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(bytes, expected);

        // Sentinel: u32 state (0 Running, 1 Clean) then u64 open count.
        let sentinel = Sentinel { state: RunState::Clean, open_count: 3 };
        let bytes = encode(Table::Runtime, &sentinel).unwrap();
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(bytes, expected);

        // Committed log id: Option tag byte, then the log id when present.
        let none = encode(Table::Raft, &CommittedRecord { log_id: None }).unwrap();
        assert_eq!(none, vec![1, 0, 0]);
        let some =
            encode(Table::Raft, &CommittedRecord { log_id: Some(LogId { term: 2, index: 3 }) }).unwrap();
        assert_eq!(some.len(), 2 + 1 + 16);
        assert_eq!(some[2], 1);
    }

    #[test]
    fn bad_values_are_typed_errors() {
        // Short, newer version, truncated payload, trailing bytes: all errors, none panics.
        assert!(matches!(decode::<Vote>(Table::Raft, b"k", &[1]), Err(ManifestError::Decode { .. })));
        assert!(matches!(
            decode::<Vote>(Table::Raft, b"k", &[2, 0, 1]),
            Err(ManifestError::UnsupportedRecordVersion { version: 2, supported_max: 1, .. })
        ));
        assert!(matches!(
            decode::<Vote>(Table::Raft, b"k", &[1, 0, 1, 2, 3]),
            Err(ManifestError::Decode { .. })
        ));
        let mut long = encode(Table::Raft, &Vote { term: 1, node_id: 1, committed: false }).unwrap();
        long.push(0);
        assert!(matches!(decode::<Vote>(Table::Raft, b"k", &long), Err(ManifestError::Decode { .. })));
        // A huge length prefix fails without allocating it.
        let mut huge = vec![1, 0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode::<FeedRecord>(Table::Feed, b"k", &huge), Err(ManifestError::Decode { .. })));
    }
}
