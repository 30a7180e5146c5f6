//! Base generation files: a database's pages as of one log index, in the unified chunk format.
//!
//! Layout (docs/design.md, "Generation file"): a 4096-byte chunk header block (kind 2), `slot_count`
//! page slots of 4096 bytes, a directory of `slot_count` × (`page_no:u32 crc32c:u32`) padded to the block
//! size, and a 4096-byte footer block. Every page carries its checksum (the same `page_crc` as log frames),
//! so a read verifies exactly the page it reads; the footer and directory carry their own checksums.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{ChunkHeader, ChunkKind, CHUNK_HEADER_LEN};
use crate::io::{read_exact_at, AlignedBuf, Io, IoFile, OpenMode, BLOCK_SIZE};

use super::commit::{page_crc, PAGE_SIZE};
use super::PageStoreError;

const FOOTER_MAGIC: [u8; 8] = *b"BOPGENFT";
/// Version 2 added the last commit index; version 1 files still open (see `open`).
const FOOTER_VERSION: u16 = 2;
const FOOTER_LEN: usize = 88;
const FOOTER_V1_LEN: usize = 80;
/// Pages buffered per write while a generation is written.
const WRITE_BATCH_PAGES: usize = 64;

/// What a generation file describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationMeta {
    /// Database id.
    pub db: u64,
    /// Generation number (1, 2, 3, … per database).
    pub generation: u64,
    /// The generation this one is a delta on, or 0 for a full generation.
    pub parent: u64,
    /// The log index whose effects the generation includes.
    pub log_index: u64,
    /// The term of that entry.
    pub log_term: u64,
    /// Database size in pages at `log_index`.
    pub db_page_count: u32,
    /// Smallest size the database had since the parent generation (equal to `db_page_count` for a full
    /// generation): pages of the chain above it were cut off by a shrink and are gone.
    pub db_page_floor: u32,
    /// Log index of the newest commit to the database at or before `log_index` (0 if none): what a
    /// replicated commit's staleness is judged by, identically on every node.
    pub last_commit_index: u64,
}

/// An open generation file with its directory in memory.
#[derive(Debug)]
pub struct GenerationFile {
    /// Path of the file.
    pub path: PathBuf,
    file: Arc<dyn IoFile>,
    /// Its description.
    pub meta: GenerationMeta,
    /// `(page_no, crc32c)` per slot, ascending by page number.
    pub slots: Vec<(u32, u32)>,
    /// Total file size.
    pub size_bytes: u64,
}

/// A page image handed to [`write`]: a cached page, or a page inside a larger buffer read in one go.
#[derive(Debug, Clone)]
pub enum PageImage {
    /// A whole page.
    Page(Arc<[u8]>),
    /// The page at `offset` of a shared buffer.
    InBuffer(Arc<Vec<u8>>, usize),
}

impl PageImage {
    /// The page's bytes (4096 for a well-formed image).
    pub fn bytes(&self) -> &[u8] {
        match self {
            PageImage::Page(page) => page,
            PageImage::InBuffer(buf, offset) => buf.get(*offset..*offset + PAGE_SIZE).unwrap_or(&[]),
        }
    }
}

/// File name of generation `generation` of database `db`.
pub fn file_name(db: u64, generation: u64) -> String {
    format!("{db:016x}-{generation:016x}.gen")
}

fn io_err<'a>(
    during: &'static str,
    path: &'a Path,
) -> impl FnOnce(crate::io::IoError) -> PageStoreError + 'a {
    move |e| PageStoreError::io(during, path, e)
}

fn corrupt(path: &Path, reason: impl Into<String>) -> PageStoreError {
    PageStoreError::Corrupt { what: format!("generation file {}", path.display()), reason: reason.into() }
}

/// Appends bytes to a file through a block-aligned buffer, tracking a CRC of everything written.
struct Writer<'a> {
    file: &'a dyn IoFile,
    path: &'a Path,
    buf: AlignedBuf,
    offset: u64,
    crc: u32,
}

impl Writer<'_> {
    fn push(&mut self, bytes: &[u8]) -> Result<(), PageStoreError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BATCH_PAGES * PAGE_SIZE {
            // Only whole blocks go out: bytes that are not (the directory's) stay for the next write, so
            // every write starts and ends on a block boundary.
            let whole = self.buf.len() / BLOCK_SIZE * BLOCK_SIZE;
            let tail = self.buf[whole..].to_vec();
            self.buf.resize(whole);
            self.flush()?;
            self.buf.extend_from_slice(&tail);
        }
        Ok(())
    }

    fn pad_to_block(&mut self) {
        let len = self.buf.len();
        self.buf.resize(len.next_multiple_of(BLOCK_SIZE));
    }

    fn flush(&mut self) -> Result<(), PageStoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(self.buf.len() % BLOCK_SIZE, 0, "generation writes are whole blocks");
        let mut done = 0usize;
        while done < self.buf.len() {
            let n = self
                .file
                .write_at(&self.buf[done..], self.offset + done as u64)
                .map_err(io_err("write generation", self.path))?;
            if n == 0 {
                return Err(corrupt(self.path, "write returned 0 bytes"));
            }
            done += n;
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes a generation holding `pages` (ascending page numbers; each `(page_no, image, crc)` with the
/// crc already verified by the caller), fsyncs it, and moves it into place: `<dir>/<file_name>` exists
/// only complete and durable. Returns the open file and the CRC32C of its whole contents.
pub fn write(
    io: &dyn Io,
    dir: &Path,
    meta: &GenerationMeta,
    pages: impl Iterator<Item = Result<(u32, PageImage, u32), PageStoreError>>,
) -> Result<(GenerationFile, u32), PageStoreError> {
    let final_path = dir.join(file_name(meta.db, meta.generation));
    let tmp_path = dir.join(format!("{}.tmp", file_name(meta.db, meta.generation)));
    let _ = io.remove_file(&tmp_path);
    let written = write_file(io, dir, meta, pages, &tmp_path, &final_path);
    if written.is_err() {
        // The partial file would keep its space (on a full disk, the space the next try needs); it is
        // named by nothing, so it goes at once.
        let _ = io.remove_file(&tmp_path);
    }
    written
}

fn write_file(
    io: &dyn Io,
    dir: &Path,
    meta: &GenerationMeta,
    pages: impl Iterator<Item = Result<(u32, PageImage, u32), PageStoreError>>,
    tmp_path: &Path,
    final_path: &Path,
) -> Result<(GenerationFile, u32), PageStoreError> {
    let (tmp_path, final_path) = (tmp_path.to_path_buf(), final_path.to_path_buf());
    let file = io.open(&tmp_path, OpenMode::CreateNew).map_err(io_err("create generation", &tmp_path))?;
    let mut w = Writer { file: file.as_ref(), path: &tmp_path, buf: AlignedBuf::new(), offset: 0, crc: 0 };
    let header = ChunkHeader {
        kind: ChunkKind::PageGeneration,
        sequence: meta.generation,
        generation: meta.generation,
        store_id: meta.db,
        capacity_bytes: 0,
        base: meta.log_index,
    };
    w.push(&header.encode())?;
    w.pad_to_block();
    let mut slots: Vec<(u32, u32)> = Vec::new();
    for page in pages {
        let (page_no, image, crc) = page?;
        let image = image.bytes();
        if image.len() != PAGE_SIZE {
            return Err(PageStoreError::UnsupportedPageSize { got: image.len() });
        }
        if slots.last().is_some_and(|(last, _)| *last >= page_no) {
            return Err(PageStoreError::invalid(format!("generation pages out of order at page {page_no}")));
        }
        w.push(image)?;
        slots.push((page_no, crc));
    }
    let directory_offset = w.offset + w.buf.len() as u64;
    let mut directory = Vec::with_capacity(slots.len() * 8);
    for (page_no, crc) in &slots {
        directory.extend_from_slice(&page_no.to_le_bytes());
        directory.extend_from_slice(&crc.to_le_bytes());
    }
    w.push(&directory)?;
    w.pad_to_block();
    let mut footer = [0u8; FOOTER_LEN];
    footer[0..8].copy_from_slice(&FOOTER_MAGIC);
    footer[8..10].copy_from_slice(&FOOTER_VERSION.to_le_bytes());
    footer[12..16].copy_from_slice(&meta.db_page_floor.to_le_bytes());
    footer[16..24].copy_from_slice(&meta.db.to_le_bytes());
    footer[24..32].copy_from_slice(&meta.generation.to_le_bytes());
    footer[32..40].copy_from_slice(&meta.parent.to_le_bytes());
    footer[40..48].copy_from_slice(&meta.log_index.to_le_bytes());
    footer[48..56].copy_from_slice(&meta.log_term.to_le_bytes());
    footer[56..60].copy_from_slice(&meta.db_page_count.to_le_bytes());
    footer[60..64].copy_from_slice(&(slots.len() as u32).to_le_bytes());
    footer[64..72].copy_from_slice(&directory_offset.to_le_bytes());
    footer[72..76].copy_from_slice(&crc32c::crc32c(&directory).to_le_bytes());
    footer[76..84].copy_from_slice(&meta.last_commit_index.to_le_bytes());
    let footer_crc = crc32c::crc32c(&footer[..84]);
    footer[84..88].copy_from_slice(&footer_crc.to_le_bytes());
    w.push(&footer)?;
    w.pad_to_block();
    w.flush()?;
    let (size_bytes, checksum) = (w.offset, w.crc);
    file.sync_all().map_err(io_err("fsync generation", &tmp_path))?;
    io.rename(&tmp_path, &final_path).map_err(io_err("publish generation", &final_path))?;
    io.sync_dir(dir).map_err(io_err("fsync generation directory", dir))?;
    Ok((GenerationFile { path: final_path, file, meta: meta.clone(), slots, size_bytes }, checksum))
}

/// Opens a generation file, checking header, footer and directory (pages are checked when read).
pub fn open(io: &dyn Io, path: &Path) -> Result<GenerationFile, PageStoreError> {
    let file = io.open(path, OpenMode::Existing).map_err(io_err("open generation", path))?;
    let size_bytes = file.len().map_err(io_err("stat generation", path))?;
    if size_bytes < 2 * BLOCK_SIZE as u64 || size_bytes % BLOCK_SIZE as u64 != 0 {
        return Err(corrupt(path, format!("size {size_bytes} is not a whole number of blocks ≥ 2")));
    }
    let mut block = AlignedBuf::zeroed(BLOCK_SIZE);
    read_exact_at(file.as_ref(), &mut block, 0).map_err(io_err("read generation header", path))?;
    let header = ChunkHeader::decode(&block[..CHUNK_HEADER_LEN])
        .map_err(|source| PageStoreError::GenerationHeader { path: path.to_path_buf(), source })?;
    if header.kind != ChunkKind::PageGeneration {
        return Err(corrupt(path, format!("chunk kind {:?}, not a page generation", header.kind)));
    }
    read_exact_at(file.as_ref(), &mut block, size_bytes - BLOCK_SIZE as u64)
        .map_err(io_err("read generation footer", path))?;
    let f = &block[..FOOTER_LEN];
    let u64_at = |at: usize| {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&f[at..at + 8]);
        u64::from_le_bytes(raw)
    };
    let u32_at = |at: usize| u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    if f[0..8] != FOOTER_MAGIC {
        return Err(corrupt(path, "footer magic missing (incomplete or foreign file)"));
    }
    let version = u16::from_le_bytes([f[8], f[9]]);
    let crc_at = match version {
        FOOTER_VERSION => FOOTER_LEN - 4,
        1 => FOOTER_V1_LEN - 4,
        _ => {
            return Err(corrupt(
                path,
                format!("footer version {version} (this build reads 1 and {FOOTER_VERSION})"),
            ))
        }
    };
    let (expected, got) = (u32_at(crc_at), crc32c::crc32c(&f[..crc_at]));
    if expected != got {
        return Err(corrupt(
            path,
            format!("footer checksum mismatch: stored {expected:#010x}, computed {got:#010x}"),
        ));
    }
    let meta = GenerationMeta {
        db: u64_at(16),
        generation: u64_at(24),
        parent: u64_at(32),
        log_index: u64_at(40),
        log_term: u64_at(48),
        db_page_count: u32_at(56),
        db_page_floor: u32_at(12),
        // Version 1 did not record it: the generation's own index is an upper bound (a replicated commit
        // read before it is refused as stale, on every node that holds this file).
        last_commit_index: if version == 1 { u64_at(40) } else { u64_at(76) },
    };
    if meta.generation != header.generation || meta.db != header.store_id || meta.log_index != header.base {
        return Err(corrupt(path, "header and footer disagree"));
    }
    let slot_count = u32_at(60) as u64;
    let directory_offset = u64_at(64);
    let directory_len = slot_count * 8;
    let expected_offset = BLOCK_SIZE as u64 + slot_count * PAGE_SIZE as u64;
    let directory_blocks = directory_len.div_ceil(BLOCK_SIZE as u64) * BLOCK_SIZE as u64;
    if directory_offset != expected_offset
        || expected_offset + directory_blocks + BLOCK_SIZE as u64 != size_bytes
    {
        return Err(corrupt(path, format!("{slot_count} slots do not fit a {size_bytes}-byte file")));
    }
    let mut directory = AlignedBuf::zeroed(directory_blocks as usize);
    read_exact_at(file.as_ref(), &mut directory, directory_offset)
        .map_err(io_err("read generation directory", path))?;
    let directory = &directory[..directory_len as usize];
    let (expected, got) = (u32_at(72), crc32c::crc32c(directory));
    if expected != got {
        return Err(corrupt(
            path,
            format!("directory checksum mismatch: stored {expected:#010x}, computed {got:#010x}"),
        ));
    }
    let slots: Vec<(u32, u32)> = directory
        .chunks_exact(8)
        .map(|e| (u32::from_le_bytes([e[0], e[1], e[2], e[3]]), u32::from_le_bytes([e[4], e[5], e[6], e[7]])))
        .collect();
    if slots.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(corrupt(path, "directory page numbers are not ascending"));
    }
    Ok(GenerationFile { path: path.to_path_buf(), file, meta, slots, size_bytes })
}

impl GenerationFile {
    /// Reads the page in `slot` and verifies its checksum.
    pub fn read_slot(&self, slot: usize) -> Result<Arc<[u8]>, PageStoreError> {
        let mut pages = self.read_slots(slot, slot)?;
        match pages.pop() {
            Some((_, image, _)) => Ok(Arc::from(image.bytes())),
            None => Err(corrupt(&self.path, format!("slot {slot} read nothing"))),
        }
    }

    /// Reads slots `first..=last` with one read, verifying each page: `(page_no, image, crc)` per slot.
    pub fn read_slots(
        &self,
        first: usize,
        last: usize,
    ) -> Result<Vec<(u32, PageImage, u32)>, PageStoreError> {
        if first > last || last >= self.slots.len() {
            return Err(corrupt(&self.path, format!("slots {first}..={last} out of range")));
        }
        let count = last - first + 1;
        let mut buf = AlignedBuf::zeroed(count * PAGE_SIZE);
        let offset = (BLOCK_SIZE + first * PAGE_SIZE) as u64;
        read_exact_at(self.file.as_ref(), &mut buf, offset)
            .map_err(io_err("read generation pages", &self.path))?;
        let mut out = Vec::with_capacity(count);
        let shared = Arc::new(buf.to_vec());
        for (i, image) in buf.chunks_exact(PAGE_SIZE).enumerate() {
            let slot = first + i;
            let (page_no, expected) = self.slots[slot];
            let got = page_crc(self.meta.db, page_no, image);
            if got != expected {
                return Err(PageStoreError::PageChecksum {
                    db: self.meta.db,
                    page_no,
                    location: format!(
                        "generation {} slot {slot} ({})",
                        self.meta.generation,
                        self.path.display()
                    ),
                    expected,
                    got,
                });
            }
            out.push((page_no, PageImage::InBuffer(Arc::clone(&shared), i * PAGE_SIZE), expected));
        }
        Ok(out)
    }

    /// Reads `len` bytes of the raw file at `offset` (block-aligned), for streaming it out as a snapshot.
    pub fn read_raw(&self, offset: u64, len_bytes: usize) -> Result<Vec<u8>, PageStoreError> {
        let mut buf = AlignedBuf::zeroed(len_bytes.next_multiple_of(BLOCK_SIZE));
        read_exact_at(self.file.as_ref(), &mut buf, offset).map_err(io_err("read generation", &self.path))?;
        buf.resize(len_bytes);
        Ok(buf.to_vec())
    }

    /// Streams the file out in chunks of at most [`STREAM_CHUNK_BYTES`] (what ships as a snapshot);
    /// memory is bounded by one chunk.
    pub fn stream(self: &Arc<Self>) -> GenerationStream {
        GenerationStream { file: Arc::clone(self), offset: 0 }
    }

    /// Reads every page and checks it, and the CRC32C of the whole file against `checksum`.
    pub fn verify(&self, checksum: u32) -> Result<(), PageStoreError> {
        let mut crc = 0u32;
        let chunk = (WRITE_BATCH_PAGES * PAGE_SIZE) as u64;
        let mut offset = 0u64;
        while offset < self.size_bytes {
            let len = chunk.min(self.size_bytes - offset) as usize;
            crc = crc32c::crc32c_append(crc, &self.read_raw(offset, len)?);
            offset += len as u64;
        }
        if crc != checksum {
            return Err(corrupt(&self.path, format!("file checksum {crc:#010x}, expected {checksum:#010x}")));
        }
        for slot in 0..self.slots.len() {
            self.read_slot(slot)?;
        }
        Ok(())
    }
}

/// Bytes per chunk when a generation is streamed.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;

/// The chunks of a generation file, in order (see [`GenerationFile::stream`]).
#[derive(Debug)]
pub struct GenerationStream {
    file: Arc<GenerationFile>,
    offset: u64,
}

impl Iterator for GenerationStream {
    type Item = Result<Vec<u8>, PageStoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.file.size_bytes {
            return None;
        }
        let len = (self.file.size_bytes - self.offset).min(STREAM_CHUNK_BYTES as u64) as usize;
        let chunk = self.file.read_raw(self.offset, len);
        self.offset += len as u64;
        Some(chunk)
    }
}

/// What a received generation must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedGeneration {
    /// Database id.
    pub db: u64,
    /// Generation number.
    pub generation: u64,
    /// CRC32C of the whole file (from the sender's manifest record).
    pub checksum: u32,
    /// Refuse streams longer than this.
    pub size_bytes_max: u64,
}

/// Installs a generation received as a stream of chunks (of any sizes) as `dir/name`: writes `<name>.tmp`, fsyncs it,
/// checks it completely — header, footer, directory, every page, the whole-file checksum, and that it is
/// the database and generation expected — then renames it into place and fsyncs the directory. Memory is
/// bounded by one chunk plus one buffer of [`STREAM_CHUNK_BYTES`]. On any error the temporary file is removed
/// and nothing is in place.
pub fn install(
    io: &dyn Io,
    dir: &Path,
    name: &str,
    expected: ExpectedGeneration,
    chunks: impl Iterator<Item = Result<Vec<u8>, PageStoreError>>,
) -> Result<GenerationFile, PageStoreError> {
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!("{name}.tmp"));
    let _ = io.remove_file(&tmp_path);
    let result = (|| {
        let file = io
            .open(&tmp_path, OpenMode::CreateNew)
            .map_err(io_err("create received generation", &tmp_path))?;
        let mut buf = AlignedBuf::new();
        let mut written = 0u64;
        let mut received = 0u64;
        let mut flush = |buf: &mut AlignedBuf, all: bool| -> Result<(), PageStoreError> {
            let len = if all { buf.len() } else { buf.len() - buf.len() % BLOCK_SIZE };
            if len == 0 {
                return Ok(());
            }
            if len % BLOCK_SIZE != 0 {
                return Err(corrupt(&tmp_path, "stream length is not a whole number of blocks"));
            }
            let mut done = 0usize;
            while done < len {
                let n = file
                    .write_at(&buf[done..len], written + done as u64)
                    .map_err(io_err("write received generation", &tmp_path))?;
                if n == 0 {
                    return Err(corrupt(&tmp_path, "write returned 0 bytes"));
                }
                done += n;
            }
            written += len as u64;
            let rest = buf[len..].to_vec();
            buf.clear();
            buf.extend_from_slice(&rest);
            Ok(())
        };
        for chunk in chunks {
            let chunk = chunk?;
            received += chunk.len() as u64;
            if received > expected.size_bytes_max {
                return Err(corrupt(&tmp_path, format!("stream exceeds {} bytes", expected.size_bytes_max)));
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= STREAM_CHUNK_BYTES {
                flush(&mut buf, false)?;
            }
        }
        flush(&mut buf, true)?;
        file.sync_all().map_err(io_err("fsync received generation", &tmp_path))?;
        let opened = open(io, &tmp_path)?;
        if opened.meta.db != expected.db || opened.meta.generation != expected.generation {
            return Err(corrupt(
                &tmp_path,
                format!(
                    "holds db {} generation {}, expected db {} generation {}",
                    opened.meta.db, opened.meta.generation, expected.db, expected.generation
                ),
            ));
        }
        opened.verify(expected.checksum)?;
        io.rename(&tmp_path, &final_path).map_err(io_err("publish received generation", &final_path))?;
        io.sync_dir(dir).map_err(io_err("fsync generation directory", dir))?;
        Ok(GenerationFile { path: final_path.clone(), ..opened })
    })();
    if result.is_err() {
        let _ = io.remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimDisk;

    fn meta() -> GenerationMeta {
        GenerationMeta {
            db: 3,
            generation: 2,
            parent: 1,
            log_index: 40,
            log_term: 2,
            db_page_count: 9,
            db_page_floor: 7,
            last_commit_index: 38,
        }
    }

    #[test]
    fn a_version_1_footer_opens_with_its_own_index_as_the_last_commit() {
        let disk = SimDisk::new(2);
        let dir = PathBuf::from("/pages");
        disk.create_dir_all(&dir).expect("mkdir");
        let image: Arc<[u8]> = Arc::from(vec![7u8; PAGE_SIZE]);
        let pages = vec![Ok((2u32, PageImage::Page(image.clone()), page_crc(3, 2, &image)))];
        let (written, _) = write(&disk, &dir, &meta(), pages.into_iter()).expect("write");
        // Rewrite the footer the way version 1 laid it out: no last commit, checksum at 76.
        let bytes = disk.file_bytes(&written.path).expect("bytes");
        let at = bytes.len() - BLOCK_SIZE;
        let mut footer = bytes[at..at + FOOTER_LEN].to_vec();
        footer[8..10].copy_from_slice(&1u16.to_le_bytes());
        footer[76..88].fill(0);
        let crc = crc32c::crc32c(&footer[..76]);
        footer[76..80].copy_from_slice(&crc.to_le_bytes());
        let file = disk.open(&written.path, OpenMode::Existing).expect("open for rewrite");
        file.write_at(&footer, at as u64).expect("rewrite footer");
        let opened = open(&disk, &written.path).expect("a version 1 file opens");
        assert_eq!(opened.meta.last_commit_index, meta().log_index);
        // Any other version is refused with a clear error.
        footer[8..10].copy_from_slice(&9u16.to_le_bytes());
        file.write_at(&footer, at as u64).expect("rewrite footer");
        let err = open(&disk, &written.path).expect_err("version 9");
        assert!(err.to_string().contains("footer version 9"), "{err}");
    }

    #[test]
    fn generation_round_trips_and_detects_a_flipped_page_bit() {
        let disk = SimDisk::new(1);
        let dir = PathBuf::from("/pages");
        disk.create_dir_all(&dir).expect("mkdir");
        let pages: Vec<_> = [2u32, 5, 9]
            .iter()
            .map(|&p| {
                let image: Arc<[u8]> = Arc::from(vec![p as u8; PAGE_SIZE]);
                let crc = page_crc(3, p, &image);
                Ok((p, PageImage::Page(image), crc))
            })
            .collect();
        let (written, checksum) = write(&disk, &dir, &meta(), pages.into_iter()).expect("write");
        let opened = open(&disk, &written.path).expect("open");
        assert_eq!(opened.meta, meta());
        assert_eq!(opened.slots.len(), 3);
        opened.verify(checksum).expect("verifies");
        assert_eq!(opened.read_slot(1).expect("page")[0], 5);

        assert!(disk.corrupt(&written.path, (BLOCK_SIZE + PAGE_SIZE + 100) as u64, 0x04));
        let err = opened.read_slot(1).expect_err("flipped");
        assert!(matches!(err, PageStoreError::PageChecksum { db: 3, page_no: 5, .. }), "{err}");
        assert!(opened.verify(checksum).is_err());
    }

    #[test]
    fn a_generation_streams_out_and_installs_elsewhere_in_bounded_chunks() {
        let disk = SimDisk::new(3);
        let (src, dst) = (PathBuf::from("/src"), PathBuf::from("/dst"));
        disk.create_dir_all(&src).expect("mkdir");
        disk.create_dir_all(&dst).expect("mkdir");
        // 600 pages: a 2.4 MiB file, so the stream has several chunks.
        let pages = (1..=600u32).map(|p| {
            let image: Arc<[u8]> = Arc::from(vec![(p % 251) as u8; PAGE_SIZE]);
            let crc = page_crc(3, p, &image);
            Ok((p, PageImage::Page(image), crc))
        });
        let (written, checksum) = write(&disk, &src, &meta(), pages).expect("write");
        let written = Arc::new(written);
        let chunks: Vec<_> = written.stream().collect::<Result<_, _>>().expect("stream");
        assert!(chunks.len() > 2 && chunks.iter().all(|c| c.len() <= STREAM_CHUNK_BYTES));

        let expected = ExpectedGeneration { db: 3, generation: 2, checksum, size_bytes_max: 8 << 20 };
        let installed = install(&disk, &dst, &file_name(3, 2), expected, chunks.clone().into_iter().map(Ok))
            .expect("install");
        assert_eq!(installed.meta, meta());
        match installed.read_slot(599).expect("page").first() {
            Some(&b) => assert_eq!(b, (600 % 251) as u8),
            None => panic!("empty page"),
        }

        // A damaged stream, a wrong checksum or an oversized stream installs nothing.
        let mut damaged = chunks.clone();
        damaged[1][5000] ^= 1;
        let other = ExpectedGeneration { generation: 2, ..expected };
        let _ = disk.remove_file(&installed.path);
        assert!(install(&disk, &dst, &file_name(3, 2), other, damaged.into_iter().map(Ok)).is_err());
        assert!(install(
            &disk,
            &dst,
            &file_name(3, 2),
            ExpectedGeneration { checksum: checksum ^ 1, ..expected },
            chunks.clone().into_iter().map(Ok)
        )
        .is_err());
        assert!(install(
            &disk,
            &dst,
            &file_name(3, 2),
            ExpectedGeneration { size_bytes_max: 1 << 20, ..expected },
            chunks.into_iter().map(Ok)
        )
        .is_err());
        assert!(disk.list_dir(&dst).expect("ls").is_empty(), "nothing left behind");
    }

    #[test]
    fn a_file_that_is_not_a_generation_is_a_clear_error() {
        let disk = SimDisk::new(2);
        let dir = PathBuf::from("/pages");
        disk.create_dir_all(&dir).expect("mkdir");
        let path = dir.join("junk.gen");
        let file = disk.open(&path, OpenMode::CreateNew).expect("create");
        file.write_at(&[7u8; 3 * BLOCK_SIZE], 0).expect("write");
        assert!(open(&disk, &path).is_err());
    }
}
