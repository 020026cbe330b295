//! The on-disk layout of segments and records.
//!
//! A segment file is named for the sequence number (LSN) of its first
//! record, `{lsn:020}.seg`, and starts with a header:
//!
//! ```text
//! magic "AGFDLOG1" (8) | first LSN u64 LE (8) | crc32c of the 16 bytes before (4) | zero (4)
//! ```
//!
//! Records follow back to back, each framed as
//!
//! ```text
//! length u32 LE | crc32c u32 LE | LSN u64 LE | batch offset u32 LE | payload (length bytes)
//! ```
//!
//! The checksum covers the length, the LSN, the batch offset and the
//! payload, so a flipped bit anywhere in a record is found. The *batch
//! offset* is how far the record is from the first record of the group
//! commit that wrote it: recovery uses it to tell a torn last batch (cut
//! it) from a damaged record that was once durable (a loud error).

/// The segment header's length.
pub const HEADER_LEN: u64 = 24;
/// A record's framing before its payload.
pub const FRAME_LEN: u64 = 20;
const MAGIC: &[u8; 8] = b"AGFDLOG1";

/// A segment file's name for its first LSN.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.seg")
}

/// The first LSN a segment file's name gives, if it is a segment's name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a segment starting at `first_lsn`.
pub fn encode_header(first_lsn: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The first LSN a header names, or why it is not a valid header.
pub fn decode_header(header: &[u8]) -> Result<u64, &'static str> {
    if header.len() < HEADER_LEN as usize {
        return Err("segment header is cut short");
    }
    if &header[..8] != MAGIC {
        return Err("segment header has the wrong magic");
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().unwrap_or_default());
    if crc != crc32c::crc32c(&header[..16]) {
        return Err("segment header checksum mismatch");
    }
    Ok(u64::from_le_bytes(
        header[8..16].try_into().unwrap_or_default(),
    ))
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, lsn: u64, batch_offset: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch_offset.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(len: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), rest)
}

/// A record's framing, read before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The payload's length.
    pub len: u32,
    /// The stored checksum.
    pub crc: u32,
    /// The record's sequence number.
    pub lsn: u64,
    /// How far the record is from the first record of its batch.
    pub batch_offset: u32,
}

impl FrameHead {
    /// Parses the first [`FRAME_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<FrameHead> {
        let head = bytes.get(..FRAME_LEN as usize)?;
        let u32_at =
            |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap_or_default());
        Some(FrameHead {
            len: u32_at(0),
            crc: u32_at(4),
            lsn: u64::from_le_bytes(head[8..16].try_into().unwrap_or_default()),
            batch_offset: u32_at(16),
        })
    }

    /// The LSN of the first record of this record's batch.
    pub fn batch_first(&self) -> Option<u64> {
        self.lsn.checked_sub(u64::from(self.batch_offset))
    }

    /// Whether `frame` (this head's bytes followed by the payload) checks.
    pub fn checks(&self, frame: &[u8]) -> bool {
        frame.len() == FRAME_LEN as usize + self.len as usize
            && record_crc(&frame[..4], &frame[8..]) == self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_headers_round_trip_and_every_flipped_bit_is_found() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 3, b"hello");
        let head = FrameHead::parse(&out).expect("a head");
        assert_eq!((head.len, head.lsn, head.batch_offset), (5, 42, 3));
        assert_eq!(head.batch_first(), Some(39));
        assert!(head.checks(&out));
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let head = FrameHead::parse(&bad).expect("a head");
            assert!(!head.checks(&bad), "flipped bit {bit} not found");
        }
        assert_eq!(decode_header(&encode_header(7)), Ok(7));
        assert_eq!(parse_segment_name(&segment_name(7)), Some(7));
        assert_eq!(parse_segment_name("7.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000007.tmp"), None);
    }
}
