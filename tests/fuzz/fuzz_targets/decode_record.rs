//! Fuzzes the record and chunk-header decoders: they must never panic, and whatever decodes must
//! re-encode to the same bytes.
#![no_main]

use bop_storage::format::{decode_record, encode_record_to_vec, ChunkHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let seq = data.first().copied().map_or(0, u32::from);
    if let Ok(Some(rec)) = decode_record(data, seq) {
        let mut again = Vec::new();
        encode_record_to_vec(&mut again, &rec.header, rec.payload);
        assert_eq!(&again[..], &data[..rec.encoded_len]);
    }
    if let Ok(header) = ChunkHeader::decode(data) {
        assert_eq!(&header.encode()[..], &data[..64]);
    }
});
