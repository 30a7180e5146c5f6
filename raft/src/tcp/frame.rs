//! Frames: `len: u32 LE | crc32c(body): u32 LE | body[len]`, read with buffers that grow as bytes arrive.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FRAME_BYTES_MAX, FRAME_GROW_BYTES};

/// Writes one frame.
pub async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> io::Result<()> {
    if body.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("frame of {} bytes", body.len())));
    }
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    stream.write_all(&head).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Reads one frame, refusing oversized or corrupt ones with `InvalidData`.
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    let (len, expected) = frame_head(&head)?;
    // Grown as the bytes arrive: a head alone makes nobody allocate its claimed length.
    let mut body = Vec::with_capacity(len.min(FRAME_GROW_BYTES));
    (&mut *stream).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    check_body(&body, expected)?;
    Ok(body)
}

/// A frame head's body length and checksum; an oversized length is `InvalidData`.
pub(super) fn frame_head(head: &[u8; 8]) -> io::Result<(usize, u32)> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let expected = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}"),
        ));
    }
    Ok((len, expected))
}

/// A body whose checksum is not the head's is `InvalidData`.
pub(super) fn check_body(body: &[u8], expected: u32) -> io::Result<()> {
    let got = crc32c::crc32c(body);
    if got != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame checksum {got:#010x} != {expected:#010x}"),
        ));
    }
    Ok(())
}

/// Reads frames from a stream in a cancel-safe way: bytes read before a cancellation stay buffered.
#[derive(Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub(crate) async fn next(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            // `read_buf` is cancel-safe: it either read into the buffer or did nothing.
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
    }

    fn take_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(head) = self.buf.first_chunk::<8>() else {
            self.buf.reserve(8 << 10);
            return Ok(None);
        };
        let (len, expected) = frame_head(head)?;
        if self.buf.len() < 8 + len {
            self.buf.reserve((8 + len - self.buf.len()).min(FRAME_GROW_BYTES));
            return Ok(None);
        }
        let body = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        check_body(&body, expected)?;
        Ok(Some(body))
    }
}
