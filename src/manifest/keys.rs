//! Key encoding. Every key is fixed-width big-endian so that LMDB's byte order is numeric order;
//! the only variable-width keys are names (`database_names`, `feed_cursors`), ordered bytewise.

use super::error::{key_hex, ManifestError, Result, Table};
use super::records::{DatabaseId, GenerationRef};

/// Key of the format-version record in `meta`.
pub(crate) const META_FORMAT_VERSION: [u8; 2] = 0x0001u16.to_be_bytes();
/// Key of the next database id in `meta`.
pub(crate) const META_NEXT_DATABASE_ID: [u8; 2] = 0x0002u16.to_be_bytes();
/// Key of the change-feed head sequence in `meta`.
pub(crate) const META_FEED_HEAD_SEQ: [u8; 2] = 0x0003u16.to_be_bytes();

/// Key of the shutdown sentinel in `runtime`.
pub(crate) const RUNTIME_SENTINEL: [u8; 2] = 0x0001u16.to_be_bytes();

/// Key of the vote in `raft`.
pub(crate) const RAFT_VOTE: [u8; 2] = 0x0001u16.to_be_bytes();
/// Key of the committed log id in `raft`.
pub(crate) const RAFT_COMMITTED: [u8; 2] = 0x0002u16.to_be_bytes();
/// Key of the last purged log id in `raft`.
pub(crate) const RAFT_PURGED: [u8; 2] = 0x0003u16.to_be_bytes();
/// Key of the membership in `raft`.
pub(crate) const RAFT_MEMBERSHIP: [u8; 2] = 0x0004u16.to_be_bytes();
/// Key of the Raft log store's vote, in the embedder's own encoding, in `raft`.
pub(crate) const RAFT_LOG_STORE_VOTE: [u8; 2] = 0x0005u16.to_be_bytes();
/// Key of the Raft log store's committed log id, in the embedder's own encoding, in `raft`.
pub(crate) const RAFT_LOG_STORE_COMMITTED: [u8; 2] = 0x0006u16.to_be_bytes();
/// Key of the cluster id, in the embedder's own encoding, in `raft`.
pub(crate) const RAFT_CLUSTER_ID: [u8; 2] = 0x0007u16.to_be_bytes();

/// Key of an opaque Raft fact in `raft`.
pub(crate) fn raft_blob(which: crate::manifest::RaftBlob) -> [u8; 2] {
    match which {
        crate::manifest::RaftBlob::LogStoreVote => RAFT_LOG_STORE_VOTE,
        crate::manifest::RaftBlob::LogStoreCommitted => RAFT_LOG_STORE_COMMITTED,
        crate::manifest::RaftBlob::ClusterId => RAFT_CLUSTER_ID,
    }
}

/// An 8-byte big-endian key (database id, segment sequence, snapshot id, feed sequence).
pub(crate) fn u64_key(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

/// Decodes an 8-byte big-endian key.
pub(crate) fn decode_u64_key(table: Table, key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| ManifestError::MalformedKey {
        table,
        key: key_hex(key),
        reason: "expected 8 bytes",
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The 16-byte key of the `generations` table: database id then generation, both big-endian.
pub(crate) fn generation_key(database_id: DatabaseId, generation: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&database_id.0.to_be_bytes());
    key[8..].copy_from_slice(&generation.to_be_bytes());
    key
}

/// Decodes a `generations` key.
pub(crate) fn decode_generation_key(key: &[u8]) -> Result<GenerationRef> {
    let malformed = || ManifestError::MalformedKey {
        table: Table::Generations,
        key: key_hex(key),
        reason: "expected 16 bytes",
    };
    let (database, generation) =
        key.split_first_chunk::<8>().filter(|(_, rest)| rest.len() == 8).ok_or_else(malformed)?;
    let generation: [u8; 8] = (*generation).try_into().map_err(|_| malformed())?;
    Ok(GenerationRef {
        database_id: DatabaseId(u64::from_be_bytes(*database)),
        generation: u64::from_be_bytes(generation),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_numeric_order() {
        let values = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX];
        for pair in values.windows(2) {
            assert!(u64_key(pair[0]) < u64_key(pair[1]));
        }
        assert!(generation_key(DatabaseId(1), u64::MAX) < generation_key(DatabaseId(2), 0));
        assert!(generation_key(DatabaseId(1), 9) < generation_key(DatabaseId(1), 10));
    }

    #[test]
    fn keys_round_trip_and_reject_bad_widths() {
        assert_eq!(decode_u64_key(Table::Feed, &u64_key(77)).unwrap(), 77);
        assert!(decode_u64_key(Table::Feed, &[1, 2, 3]).is_err());
        let key = generation_key(DatabaseId(5), 6);
        let decoded = decode_generation_key(&key).unwrap();
        assert_eq!(decoded.database_id, DatabaseId(5));
        assert_eq!(decoded.generation, 6);
        assert!(decode_generation_key(&key[..15]).is_err());
        assert!(decode_generation_key(&[0u8; 17]).is_err());
    }
}
