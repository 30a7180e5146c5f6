//! Block-aligned, zero-initialised buffers for direct I/O.

use std::ops::{Deref, DerefMut};

/// The block size bop aligns direct I/O to (and the granularity of segment data alignment).
pub const BLOCK_SIZE: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK_SIZE]);

/// A growable byte buffer whose storage starts on a [`BLOCK_SIZE`] boundary.
///
/// Backed by a `Vec` of 4096-byte-aligned blocks, so allocation and release are ordinary safe `Vec`
/// operations; only the view as a byte slice needs `unsafe`.
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        AlignedBuf { blocks: Vec::new(), len: 0 }
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let mut buf = AlignedBuf::new();
        buf.resize(len);
        buf
    }

    /// Sets the length; new bytes are zero.
    pub fn resize(&mut self, len: usize) {
        let blocks_needed = len.div_ceil(BLOCK_SIZE);
        if blocks_needed > self.blocks.len() {
            self.blocks.resize(blocks_needed, Block([0u8; BLOCK_SIZE]));
        }
        if len < self.len {
            // Keep the invariant that bytes past `len` are zero, so growing again yields zeros.
            let old = self.len;
            self.bytes_all_mut()[len..old].fill(0);
        }
        self.len = len;
    }

    /// Clears the buffer to length 0 (keeping its allocation).
    pub fn clear(&mut self) {
        self.resize(0);
    }

    /// Appends bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.resize(start + bytes.len());
        self[start..].copy_from_slice(bytes);
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity of the current allocation in bytes.
    pub fn capacity(&self) -> usize {
        self.blocks.capacity() * BLOCK_SIZE
    }

    fn bytes_all_mut(&mut self) -> &mut [u8] {
        let total = self.blocks.len() * BLOCK_SIZE;
        // SAFETY: `Block` is `repr(C)` around `[u8; BLOCK_SIZE]`, so `blocks.len()` blocks are exactly
        // `total` initialised bytes with no padding, contiguous in the Vec's allocation, and the borrow of
        // `self` keeps the Vec alive and unaliased for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), total) }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::new()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: as in `bytes_all_mut`; `len <= blocks.len() * BLOCK_SIZE` is kept by `resize`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.bytes_all_mut()[..len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

/// Rounds `value` up to a multiple of `alignment` (a power of two, or 1).
pub fn align_up(value: u64, alignment: u64) -> u64 {
    debug_assert!(alignment.is_power_of_two());
    value.div_ceil(alignment) * alignment
}

/// Rounds `value` down to a multiple of `alignment` (a power of two, or 1).
pub fn align_down(value: u64, alignment: u64) -> u64 {
    debug_assert!(alignment.is_power_of_two());
    value - value % alignment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_block_aligned_and_zeroed() {
        let mut buf = AlignedBuf::zeroed(10_000);
        assert_eq!(buf.as_ptr() as usize % BLOCK_SIZE, 0);
        assert!(buf.iter().all(|&b| b == 0));
        buf.fill(7);
        buf.resize(5);
        buf.resize(9000);
        assert!(buf[..5].iter().all(|&b| b == 7));
        assert!(buf[5..].iter().all(|&b| b == 0), "bytes past a shrink come back as zero");
    }

    #[test]
    fn rounding() {
        assert_eq!(align_up(0, 4096), 0);
        assert_eq!(align_up(1, 4096), 4096);
        assert_eq!(align_up(4096, 4096), 4096);
        assert_eq!(align_down(4097, 4096), 4096);
        assert_eq!(align_up(13, 1), 13);
    }
}
