//! Chunked streams over core NATS, which is at-most-once and drops messages for a
//! slow consumer. The rules:
//!
//! * The reader subscribes to its own data subject first and names it in the request
//!   header [`HDR_STREAM`], with its initial credit in [`HDR_CREDIT`].
//! * The writer answers the request with the typed reply; the reply header
//!   [`HDR_CTRL`] names the writer's control subject.
//! * The writer sends [`Frame`]s numbered from 0 and never has more frames
//!   unacknowledged than the credit the reader granted. The reader grants more with
//!   [`Control::Credit`] as it consumes, or stops the writer with [`Control::Cancel`].
//! * The last frame is [`Body::End`] or [`Body::Error`]. A gap in sequence numbers
//!   ends the stream with an error on the reader's side: nothing is silently lost.
//! * Duplex streams (stdin of attach/exec) run the same protocol the other way: the
//!   request names the caller's control subject in [`HDR_INPUT_CTRL`], the reply names
//!   the server's input data subject in [`HDR_INPUT`].

use serde::{Deserialize, Serialize};

use crate::BusError;

/// Request header: the reader's data subject.
pub const HDR_STREAM: &str = "Berth-Stream";
/// Request header: initial credit (frames) the writer may send.
pub const HDR_CREDIT: &str = "Berth-Credit";
/// Reply header: the writer's control subject for credits and cancel.
pub const HDR_CTRL: &str = "Berth-Stream-Ctrl";
/// Reply header (duplex): the server's data subject for the caller's input stream.
pub const HDR_INPUT: &str = "Berth-Input";
/// Request header (duplex): the caller's control subject for its input stream.
pub const HDR_INPUT_CTRL: &str = "Berth-Input-Ctrl";
/// Request header: the caller's deadline for the whole request, in milliseconds.
pub const HDR_TIMEOUT_MS: &str = "Berth-Timeout-Ms";

/// Request header: who asks, `<bus user>.<pid>`: a stream's writer stops when that
/// instance exits.
pub const HDR_CALLER: &str = "Berth-Caller";
/// Reply header: the pid of the instance that answered: a stream's reader fails when
/// it exits.
pub const HDR_INSTANCE: &str = "Berth-Instance";
/// Request or reply header: the payload was too large for one bus message. It is
/// fetched in chunks from the subject named here (see `berth_bus`'s `large` module);
/// [`HDR_LARGE_LEN`] gives its length in bytes.
pub const HDR_LARGE: &str = "Berth-Large";
pub const HDR_LARGE_LEN: &str = "Berth-Large-Len";

/// The window a reader grants by default.
pub const DEFAULT_CREDIT: u32 = 64;
/// Frames of raw bytes stay well under nats-server's 1 MiB max payload.
pub const MAX_CHUNK: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame<T> {
    pub seq: u64,
    pub body: Body<T>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body<T> {
    Item(T),
    End,
    Error(BusError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The reader has consumed frames; the writer may send `n` more.
    Credit(u32),
    /// The reader is gone; the writer stops.
    Cancel,
}

/// Raw bytes on a numbered stdio stream (0 stdin, 1 stdout, 2 stderr), Docker's ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioChunk {
    pub stream: u8,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Caller-to-server input on a duplex stream: bytes, a terminal resize, or close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdinChunk {
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Resize {
        height: u16,
        width: u16,
    },
    /// The caller closed its stdin.
    Close,
}

/// Raw bytes with no stream id (archives, exports, build contexts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteChunk(#[serde(with = "serde_bytes")] pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::roundtrip;

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame {
            seq: 0,
            body: Body::Item(StdioChunk {
                stream: 1,
                data: b"hi\n".to_vec(),
            }),
        });
        roundtrip(Frame::<StdioChunk> {
            seq: 9,
            body: Body::End,
        });
        roundtrip(Frame::<ByteChunk> {
            seq: 3,
            body: Body::Error(BusError::internal("x")),
        });
        roundtrip(Frame {
            seq: 1,
            body: Body::Item(ByteChunk(vec![0; 10])),
        });
        roundtrip(Control::Credit(64));
        roundtrip(Control::Cancel);
        roundtrip(StdinChunk::Data(b"abc".to_vec()));
        roundtrip(StdinChunk::Resize {
            height: 24,
            width: 80,
        });
        roundtrip(StdinChunk::Close);
    }

    #[test]
    fn bytes_are_compact() {
        // serde_bytes keeps a 128 KiB chunk a single bin object, not an array of ints.
        let f = Frame {
            seq: 1,
            body: Body::Item(ByteChunk(vec![7; MAX_CHUNK])),
        };
        let b = crate::encode(&f).unwrap();
        assert!(b.len() < MAX_CHUNK + 64, "{}", b.len());
    }
}
