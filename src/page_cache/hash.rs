//! Hashing of [`PageKey`]s: shard selection and the per-shard index hasher.
//!
//! Keys are chosen by bop itself (database ids, page numbers, versions), never by a client, so a
//! fast multiplicative hash is used instead of SipHash; flooding one shard would need control of
//! the key space.

use std::hash::{BuildHasher, Hasher};

/// Final avalanche step (the splitmix64 finaliser): every input bit affects every output bit.
fn mix64(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Shard of a key. Only `db` and `page_no` are hashed, so every version of a page lives in the
/// same shard and [`super::PageCache::remove_versions_upto`] scans one shard.
pub(crate) fn shard_index(db: u64, page_no: u32, shard_count: usize) -> usize {
    debug_assert!(shard_count > 0);
    let hash = mix64(db.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(page_no));
    // The high bits are the best mixed; `shard_count` is small, so the modulo bias is negligible.
    ((hash >> 32) as usize) % shard_count
}

/// Hasher of the per-shard index: folds each written integer in with a rotate-xor-multiply and
/// avalanches in `finish`, so both the high bits (hashbrown's control bytes) and the low bits
/// (bucket index) are well mixed.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher {
    state: u64,
}

impl KeyHasher {
    fn fold(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        mix64(self.state)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `PageKey` (derived `Hash` writes integers), kept correct for any key type.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.fold(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.fold(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.fold(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.fold(value as u64);
    }
}

/// [`BuildHasher`] for the per-shard index.
#[derive(Default, Clone, Copy)]
pub(crate) struct BuildKeyHasher;

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::PageKey;
    use super::*;

    #[test]
    fn all_versions_of_a_page_share_a_shard() {
        // Any version of the same (db, page_no) maps to the shard of version 0.
        for page_no in 0..1000u32 {
            let shard = shard_index(7, page_no, 16);
            assert!(shard < 16);
            assert_eq!(shard, shard_index(7, page_no, 16));
        }
    }

    #[test]
    fn consecutive_pages_spread_over_shards() {
        // 16,000 consecutive pages of one database: every shard gets between half and twice its share.
        let mut counts = [0usize; 16];
        for page_no in 0..16_000u32 {
            counts[shard_index(3, page_no, 16)] += 1;
        }
        for count in counts {
            assert!((500..2000).contains(&count), "uneven shard spread: {counts:?}");
        }
    }

    #[test]
    fn hasher_distinguishes_versions() {
        // Keys differing only in version hash differently.
        let hash = |version| BuildKeyHasher.hash_one(PageKey { db: 1, page_no: 2, version });
        assert_ne!(hash(1), hash(2));
    }
}
