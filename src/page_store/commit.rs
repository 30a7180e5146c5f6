//! The commit record: the log entry payload that carries a transaction's page frames.
//!
//! Wire format, little-endian (docs/design.md, "Commit record"):
//! `tag:u8=1 version:u8=1 reserved:u16 frame_count:u32 db_id:u64 db_page_count:u32 reserved:u32`
//! then `frame_count` frames of `page_no:u32 crc32c:u32 page[4096]`. The frame CRC covers
//! `db_id || page_no || page`, so a frame read on its own (the page index points into the log) is verified
//! without reading the whole entry, and a frame of another database or page is refused.

use super::PageStoreError;

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;
/// Bytes before the first frame.
pub const COMMIT_HEADER_LEN: usize = 24;
/// Bytes of one frame: page number, checksum, page.
pub const FRAME_LEN: usize = 8 + PAGE_SIZE;
const TAG_COMMIT: u8 = 1;
const VERSION: u8 = 1;

/// The checksum of a page image of database `db` at `page_no` (frames and generation slots share it).
pub fn page_crc(db: u64, page_no: u32, page: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[0..8].copy_from_slice(&db.to_le_bytes());
    head[8..12].copy_from_slice(&page_no.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), page)
}

/// Offset, within the commit payload, of frame `i`'s page bytes.
pub fn frame_page_offset(i: usize) -> usize {
    COMMIT_HEADER_LEN + i * FRAME_LEN + 8
}

/// Encodes a commit of `frames` (page number, 4096-byte image) to database `db`, whose size after the
/// commit is `db_page_count` pages.
pub fn encode_commit(db: u64, db_page_count: u32, frames: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(COMMIT_HEADER_LEN + frames.len() * FRAME_LEN);
    out.push(TAG_COMMIT);
    out.push(VERSION);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&db.to_le_bytes());
    out.extend_from_slice(&db_page_count.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for (page_no, page) in frames {
        out.extend_from_slice(&page_no.to_le_bytes());
        out.extend_from_slice(&page_crc(db, *page_no, page).to_le_bytes());
        out.extend_from_slice(page);
    }
    out
}

/// The database a commit record names, read from its header alone (`None` if the header is short or not
/// a commit record's).
pub fn commit_db_id(payload: &[u8]) -> Option<u64> {
    let head = payload.get(..COMMIT_HEADER_LEN)?;
    if head[0] != TAG_COMMIT {
        return None;
    }
    Some(u64::from_le_bytes(head[8..16].try_into().ok()?))
}

/// The header of a decoded commit, with its frames' page numbers and checksums (page bytes stay in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHeader {
    /// Database id.
    pub db: u64,
    /// Database size in pages after the commit.
    pub db_page_count: u32,
    /// `(page_no, crc32c)` of each frame, in frame order.
    pub frames: Vec<(u32, u32)>,
}

/// Decodes a commit payload's header and frame table. Never panics.
pub fn decode_commit(payload: &[u8]) -> Result<CommitHeader, PageStoreError> {
    let corrupt = |reason: String| PageStoreError::Corrupt { what: "commit record".into(), reason };
    let Some(head) = payload.get(..COMMIT_HEADER_LEN) else {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {COMMIT_HEADER_LEN}-byte header",
            payload.len()
        )));
    };
    if head[0] != TAG_COMMIT || head[1] != VERSION {
        return Err(corrupt(format!("tag {} version {} (expected 1, 1)", head[0], head[1])));
    }
    let le32 = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let frame_count = le32(4) as usize;
    let mut db_raw = [0u8; 8];
    db_raw.copy_from_slice(&head[8..16]);
    let db = u64::from_le_bytes(db_raw);
    let db_page_count = le32(16);
    let expected_len = frame_count.checked_mul(FRAME_LEN).and_then(|f| f.checked_add(COMMIT_HEADER_LEN));
    if expected_len != Some(payload.len()) {
        return Err(corrupt(format!(
            "{frame_count} frames need {expected_len:?} bytes, record has {}",
            payload.len()
        )));
    }
    let mut frames = Vec::with_capacity(frame_count);
    for i in 0..frame_count {
        let at = COMMIT_HEADER_LEN + i * FRAME_LEN;
        let f = &payload[at..at + 8];
        frames.push((
            u32::from_le_bytes([f[0], f[1], f[2], f[3]]),
            u32::from_le_bytes([f[4], f[5], f[6], f[7]]),
        ));
    }
    Ok(CommitHeader { db, db_page_count, frames })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_round_trips_and_frames_sit_where_the_index_points() {
        let a = vec![1u8; PAGE_SIZE];
        let b = vec![2u8; PAGE_SIZE];
        let payload = encode_commit(7, 10, &[(3, &a), (9, &b)]);
        let header = decode_commit(&payload).expect("decodes");
        assert_eq!(header.db, 7);
        assert_eq!(header.db_page_count, 10);
        assert_eq!(header.frames, vec![(3, page_crc(7, 3, &a)), (9, page_crc(7, 9, &b))]);
        assert_eq!(&payload[frame_page_offset(1)..frame_page_offset(1) + PAGE_SIZE], &b[..]);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(decode_commit(&[]).is_err());
        assert!(decode_commit(&[
            1, 1, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ])
        .is_err());
        let mut payload = encode_commit(1, 1, &[(1, &[0u8; PAGE_SIZE])]);
        payload.pop();
        assert!(decode_commit(&payload).is_err());
    }
}
