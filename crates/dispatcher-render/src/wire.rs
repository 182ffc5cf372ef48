//! The frames between a renderer and its PDF helper process, over the helper's stdin and stdout.
//!
//! Request: the template body and the data as JSON, each a big-endian `u32` length and the bytes.
//! Answer: one status byte (`OK` or `FAILED`), then a length and the PDF or the error message.

use std::io::{self, Read, Write};

pub(crate) const OK: u8 = 0;
pub(crate) const FAILED: u8 = 1;

/// Longest frame either side accepts: more than any template body or document within limits.
pub(crate) const MAX_FRAME: usize = 512 * 1024 * 1024;

pub(crate) fn encode_request(body: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len() + data.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub(crate) fn read_chunk(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

pub(crate) fn write_answer(w: &mut impl Write, status: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&[status])?;
    w.write_all(&(payload.len() as u32).to_be_bytes())?;
    w.write_all(payload)?;
    w.flush()
}
