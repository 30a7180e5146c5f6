//! The decoders never panic, on random bytes or on valid records with bytes mutated.

use bop_storage::format::{decode_record, encode_record_to_vec, ChunkHeader, RecordHeader, RecordKind};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), seq in any::<u32>()) {
        let _ = decode_record(&bytes, seq);
        let _ = ChunkHeader::decode(&bytes);
    }

    #[test]
    fn mutated_records_never_panic_and_never_decode_as_the_original(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        index in any::<u64>(),
        term in any::<u64>(),
        mutations in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
    ) {
        let header = RecordHeader { kind: RecordKind::Entry, index, term, chunk_seq_low: 3, flags: 1 };
        let mut bytes = Vec::new();
        encode_record_to_vec(&mut bytes, &header, &payload);
        bytes.extend_from_slice(&[0u8; 64]);
        let original_len = bytes.len() - 64;
        let mut seen = std::collections::BTreeSet::new();
        for (at, xor) in &mutations {
            let at = at % original_len;
            if seen.insert(at) {
                bytes[at] ^= xor;
            }
        }
        let truncated = &bytes[..cut % (bytes.len() + 1)];
        for candidate in [&bytes[..], truncated] {
            if let Ok(Some(rec)) = decode_record(candidate, 3) {
                prop_assert!(rec.header != header || rec.payload != &payload[..], "a mutation went unnoticed");
            }
        }
    }
}
