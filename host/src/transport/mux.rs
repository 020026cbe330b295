//! Stream frames: the layout of every binary WebSocket message after the
//! handshake, and the priority classes.
//!
//! ```text
//! offset 0  type      u8   0x10 DATA | 0x11 RESET | 0x20 RENEW | 0x21 SESSION_UPDATE
//! offset 1  flags     u8   DATA only: 0x01 OPEN, 0x02 END, 0x04 REQUEST (with OPEN); else 0
//! offset 2  priority  u8   DATA only: 0 control, 1 interactive, 2 bulk; else 0
//! offset 3  reserved  u8   0
//! offset 4  stream id u32  big-endian; 0 for RENEW and SESSION_UPDATE, never 0 otherwise
//! offset 8  payload        DATA: 0..=65536 bytes of the message
//!                          RESET: u16 big-endian reset code
//!                          RENEW: empty
//!                          SESSION_UPDATE: u64 big-endian expires_at_ms
//! ```
//!
//! A stream carries one message from its opener (first frame OPEN, last
//! frame END; one frame may carry both) and, when the OPEN frame has
//! REQUEST, one reply on the same id in the other direction. Clients open
//! odd ids, servers even ids, each strictly increasing.

use bytes::{BufMut as _, Bytes, BytesMut};

use super::{MAX_CHUNK, TransportError};

/// Stream frame header length in bytes.
pub const HEADER_LEN: usize = 8;

/// Frame type: a chunk of a stream's message.
pub const FRAME_DATA: u8 = 0x10;
/// Frame type: abandon or refuse a stream.
pub const FRAME_RESET: u8 = 0x11;
/// Frame type: client asks the server to extend the session.
pub const FRAME_RENEW: u8 = 0x20;
/// Frame type: server announces the session's new expiry.
pub const FRAME_SESSION_UPDATE: u8 = 0x21;

/// DATA flag: first frame of the message (opens the stream / the reply).
pub const FLAG_OPEN: u8 = 0x01;
/// DATA flag: last frame of the message.
pub const FLAG_END: u8 = 0x02;
/// DATA flag (with OPEN, opener only): the opener expects a reply.
pub const FLAG_REQUEST: u8 = 0x04;

/// Scheduling class. The writer always sends from the highest non-empty
/// class (control before interactive before bulk) and round-robins frame
/// by frame among the streams of one class, so a bulk transfer delays a
/// ping by at most one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Session control, acknowledgements, pings (wire value 0).
    Control,
    /// Queries, responses, small messages (wire value 1).
    Interactive,
    /// Large transfers such as context shares (wire value 2).
    Bulk,
}

impl Priority {
    /// All classes, highest first.
    pub const ALL: [Priority; 3] = [Priority::Control, Priority::Interactive, Priority::Bulk];

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Priority::Control => 0,
            Priority::Interactive => 1,
            Priority::Bulk => 2,
        }
    }

    /// From the wire value.
    pub fn from_u8(b: u8) -> Option<Priority> {
        match b {
            0 => Some(Priority::Control),
            1 => Some(Priority::Interactive),
            2 => Some(Priority::Bulk),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        usize::from(self.as_u8())
    }
}

/// Why a stream was reset (u16 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResetCode(pub u16);

impl ResetCode {
    /// The sender abandoned the message, or the requester stopped waiting.
    pub const CANCELLED: ResetCode = ResetCode(1);
    /// The message exceeds the receiver's maximum message size.
    pub const MESSAGE_TOO_LARGE: ResetCode = ResetCode(2);
    /// The receiver already has its maximum of inbound streams.
    pub const TOO_MANY_STREAMS: ResetCode = ResetCode(3);
    /// The receiver's inbound buffer budget is exhausted.
    pub const RESOURCE_EXHAUSTED: ResetCode = ResetCode(4);
    /// The receiver will not reply to this request.
    pub const REFUSED: ResetCode = ResetCode(5);
    /// Local only, never sent: the connection ran out of stream ids.
    pub const IDS_EXHAUSTED: ResetCode = ResetCode(0xffff);

    /// The constant name of the code (`UNKNOWN` for unassigned values).
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "CANCELLED",
            2 => "MESSAGE_TOO_LARGE",
            3 => "TOO_MANY_STREAMS",
            4 => "RESOURCE_EXHAUSTED",
            5 => "REFUSED",
            _ => "UNKNOWN",
        }
    }

    /// The error a local operation on the stream reports.
    pub fn to_error(self) -> TransportError {
        match self {
            ResetCode::MESSAGE_TOO_LARGE => TransportError::MessageTooLarge,
            ResetCode::IDS_EXHAUSTED => TransportError::StreamIdsExhausted,
            _ => TransportError::StreamReset(self.name()),
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxFrame {
    /// A chunk of a message.
    Data {
        /// Stream id (never 0).
        stream_id: u32,
        /// Scheduling class of the stream.
        priority: Priority,
        /// [`FLAG_OPEN`] | [`FLAG_END`] | [`FLAG_REQUEST`].
        flags: u8,
        /// At most [`MAX_CHUNK`] bytes.
        payload: Bytes,
    },
    /// Abandon or refuse a stream (both directions).
    Reset {
        /// Stream id (never 0).
        stream_id: u32,
        /// Why.
        code: ResetCode,
    },
    /// Client to server: extend the session.
    Renew,
    /// Server to client: the session now expires at this time.
    SessionUpdate {
        /// New expiry, ms since the epoch.
        expires_at_ms: u64,
    },
}

impl MuxFrame {
    /// Serialises to the wire layout.
    pub fn encode(&self) -> Bytes {
        let (kind, flags, prio, id, payload_len) = match self {
            MuxFrame::Data {
                stream_id,
                priority,
                flags,
                payload,
            } => (
                FRAME_DATA,
                *flags,
                priority.as_u8(),
                *stream_id,
                payload.len(),
            ),
            MuxFrame::Reset { stream_id, .. } => (FRAME_RESET, 0, 0, *stream_id, 2),
            MuxFrame::Renew => (FRAME_RENEW, 0, 0, 0, 0),
            MuxFrame::SessionUpdate { .. } => (FRAME_SESSION_UPDATE, 0, 0, 0, 8),
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + payload_len);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u8(prio);
        out.put_u8(0);
        out.put_u32(id);
        match self {
            MuxFrame::Data { payload, .. } => out.extend_from_slice(payload),
            MuxFrame::Reset { code, .. } => out.put_u16(code.0),
            MuxFrame::Renew => {}
            MuxFrame::SessionUpdate { expires_at_ms } => out.put_u64(*expires_at_ms),
        }
        out.freeze()
    }

    /// Parses peer bytes; never panics. Violations are `PROTOCOL_ERROR`;
    /// a DATA payload over [`MAX_CHUNK`] is `MESSAGE_TOO_LARGE`.
    pub fn decode(bytes: Bytes) -> Result<MuxFrame, TransportError> {
        if bytes.len() < HEADER_LEN {
            return Err(TransportError::ProtocolError("short stream frame"));
        }
        let (kind, flags, prio, reserved) = (bytes[0], bytes[1], bytes[2], bytes[3]);
        let stream_id = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if reserved != 0 {
            return Err(TransportError::ProtocolError("reserved byte set"));
        }
        let payload = bytes.slice(HEADER_LEN..);
        let control_shape = flags == 0 && prio == 0;
        match kind {
            FRAME_DATA => {
                let priority =
                    Priority::from_u8(prio).ok_or(TransportError::ProtocolError("bad priority"))?;
                if flags & !(FLAG_OPEN | FLAG_END | FLAG_REQUEST) != 0
                    || (flags & FLAG_REQUEST != 0 && flags & FLAG_OPEN == 0)
                {
                    return Err(TransportError::ProtocolError("bad DATA flags"));
                }
                if stream_id == 0 {
                    return Err(TransportError::ProtocolError("stream id 0"));
                }
                if payload.len() > MAX_CHUNK {
                    return Err(TransportError::MessageTooLarge);
                }
                Ok(MuxFrame::Data {
                    stream_id,
                    priority,
                    flags,
                    payload,
                })
            }
            FRAME_RESET if control_shape && stream_id != 0 && payload.len() == 2 => {
                Ok(MuxFrame::Reset {
                    stream_id,
                    code: ResetCode(u16::from_be_bytes([payload[0], payload[1]])),
                })
            }
            FRAME_RENEW if control_shape && stream_id == 0 && payload.is_empty() => {
                Ok(MuxFrame::Renew)
            }
            FRAME_SESSION_UPDATE if control_shape && stream_id == 0 && payload.len() == 8 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&payload);
                Ok(MuxFrame::SessionUpdate {
                    expires_at_ms: u64::from_be_bytes(raw),
                })
            }
            FRAME_DATA..=FRAME_RESET | FRAME_RENEW..=FRAME_SESSION_UPDATE => {
                Err(TransportError::ProtocolError("malformed control frame"))
            }
            _ => Err(TransportError::ProtocolError("unknown frame type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            MuxFrame::Data {
                stream_id: 7,
                priority: Priority::Bulk,
                flags: FLAG_OPEN | FLAG_REQUEST,
                payload: Bytes::from_static(b"hello"),
            },
            MuxFrame::Data {
                stream_id: u32::MAX,
                priority: Priority::Control,
                flags: FLAG_END,
                payload: Bytes::new(),
            },
            MuxFrame::Reset {
                stream_id: 2,
                code: ResetCode::MESSAGE_TOO_LARGE,
            },
            MuxFrame::Renew,
            MuxFrame::SessionUpdate {
                expires_at_ms: 1_800_000_000_000,
            },
        ];
        for f in frames {
            assert_eq!(MuxFrame::decode(f.encode()).ok(), Some(f));
        }
    }

    #[test]
    fn header_layout_is_exact() {
        let f = MuxFrame::Data {
            stream_id: 0x0102_0304,
            priority: Priority::Interactive,
            flags: FLAG_OPEN | FLAG_END,
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(&f.encode()[..], &[0x10, 0x03, 0x01, 0x00, 1, 2, 3, 4, b'x']);
        let r = MuxFrame::Reset {
            stream_id: 9,
            code: ResetCode::REFUSED,
        };
        assert_eq!(&r.encode()[..], &[0x11, 0, 0, 0, 0, 0, 0, 9, 0, 5]);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        (seed & 0xff) as u8
                    })
                    .collect();
                let _ = MuxFrame::decode(Bytes::from(bytes));
            }
        }
        let bad = [
            &[0x10, 0, 0, 0, 0, 0, 0, 0][..],    // stream 0
            &[0x10, 0, 3, 0, 0, 0, 0, 1][..],    // priority 3
            &[0x10, 0x04, 0, 0, 0, 0, 0, 1][..], // REQUEST without OPEN
            &[0x10, 0x80, 0, 0, 0, 0, 0, 1][..], // unknown flag
            &[0x10, 0, 0, 1, 0, 0, 0, 1][..],    // reserved
            &[0x11, 0, 0, 0, 0, 0, 0, 1, 0][..], // short reset
            &[0x20, 0, 0, 0, 0, 0, 0, 1][..],    // renew with id
            &[0x21, 0, 0, 0, 0, 0, 0, 0, 1][..], // short update
            &[0x99, 0, 0, 0, 0, 0, 0, 0][..],    // unknown type
            &[0x10, 0, 0][..],                   // short
        ];
        for b in bad {
            assert!(
                matches!(
                    MuxFrame::decode(Bytes::copy_from_slice(b)),
                    Err(TransportError::ProtocolError(_))
                ),
                "{b:?}"
            );
        }
        let mut huge = vec![0x10, 0x03, 0, 0, 0, 0, 0, 1];
        huge.resize(HEADER_LEN + MAX_CHUNK + 1, 0);
        assert_eq!(
            MuxFrame::decode(Bytes::from(huge)),
            Err(TransportError::MessageTooLarge)
        );
    }

    #[test]
    fn reset_codes_map_to_errors() {
        assert_eq!(
            ResetCode::MESSAGE_TOO_LARGE.to_error(),
            TransportError::MessageTooLarge
        );
        assert_eq!(
            ResetCode::REFUSED.to_error(),
            TransportError::StreamReset("REFUSED")
        );
        assert_eq!(ResetCode(999).name(), "UNKNOWN");
    }
}
