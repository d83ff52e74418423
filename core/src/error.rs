//! Error types.
//!
//! Three families, never mixed:
//! - [`SendError`]: the local application misused the API or hit a local
//!   limit; nothing was sent and the connection is unaffected.
//! - [`ProtocolError`]: the peer violated the protocol; the connection is
//!   closed with [`ConnectionError::Protocol`].
//! - [`ConnectionError`]: the terminal state of a connection. Sticky,
//!   `Clone`, delivered once as [`Event::Closed`](crate::Event::Closed) and
//!   then returned by every command; converts to [`std::io::Error`].
//!
//! Per-call failures are [`CallError`]; per-operation (subscribe, publish)
//! failures are [`AckError`].

use std::io;
use std::time::Duration;

use bytes::Bytes;

use crate::text::Text;
use crate::wire::{Code, FrameType};

/// The peer sent something the protocol forbids.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first eight bytes were not the wharf preamble.
    #[error("not a wharf peer: byte {offset} of the preamble is {found:#04x}, expected {expected:#04x}")]
    BadPreamble {
        /// Offset of the first wrong byte.
        offset: usize,
        /// The byte received.
        found: u8,
        /// The byte expected.
        expected: u8,
    },
    /// Unknown frame type byte.
    #[error("unknown frame type {ty:#04x}")]
    UnknownFrameType {
        /// The type byte.
        ty: u8,
    },
    /// The reserved header field was not zero.
    #[error("{frame} header has reserved field {value:#06x}, must be 0")]
    ReservedBits {
        /// Frame type.
        frame: FrameType,
        /// The reserved field's value.
        value: u16,
    },
    /// Flag bits not defined for the frame type were set.
    #[error("{frame} has undefined flag bits set ({flags:#04x})")]
    UnknownFlags {
        /// Frame type.
        frame: FrameType,
        /// The flags byte.
        flags: u8,
    },
    /// Body length outside the bounds of the frame type.
    #[error("{frame} body length {len} is outside {min}..={max}")]
    BadLength {
        /// Frame type.
        frame: FrameType,
        /// Declared length.
        len: u32,
        /// Minimum for the type.
        min: u32,
        /// Maximum for the type.
        max: u32,
    },
    /// Declared body length above the receiver's limit (refused before allocation).
    #[error("{frame} declares a {len}-byte body, above the limit of {limit} bytes")]
    FrameTooLarge {
        /// Frame type.
        frame: FrameType,
        /// Declared length.
        len: u32,
        /// The limit in force.
        limit: u32,
    },
    /// The body's fields do not fit its length, or bytes trail the last field.
    #[error("malformed {frame}: {reason}")]
    Malformed {
        /// Frame type.
        frame: FrameType,
        /// What is wrong.
        reason: &'static str,
    },
    /// A string field is not valid UTF-8 or contains NUL.
    #[error("{frame} field `{field}` is invalid: {reason}")]
    InvalidString {
        /// Frame type.
        frame: FrameType,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// An id is zero where forbidden, of the wrong parity, not increasing,
    /// or names something that never existed.
    #[error("{frame} has invalid id {id}: {reason}")]
    BadId {
        /// Frame type.
        frame: FrameType,
        /// The id.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A frame that is not allowed in the current state or direction.
    #[error("unexpected {frame}: {reason}")]
    UnexpectedFrame {
        /// Frame type.
        frame: FrameType,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// A stream rule was broken (data after END, END twice, wrong direction).
    #[error("stream {id}: {reason}")]
    Stream {
        /// Call id of the stream.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// DATA arrived while the sender had no credit left.
    #[error("stream {id}: DATA sent without credit")]
    CreditExceeded {
        /// Call id of the stream.
        id: u64,
    },
    /// CREDIT raised a stream's window above 2^31 - 1 bytes.
    #[error("stream {id}: credit window overflow")]
    CreditOverflow {
        /// Call id of the stream.
        id: u64,
    },
}

/// The terminal error of a connection. Sticky and cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The server refused the handshake.
    #[error("handshake rejected by the server ({code}): {reason}")]
    Rejected {
        /// Why.
        code: Code,
        /// The server's reason.
        reason: String,
        /// When the server suggests trying again.
        retry_after: Option<Duration>,
    },
    /// The two sides share no protocol version.
    #[error("no common protocol version: we speak {our_min}..={our_max}, the peer speaks {peer_min}..={peer_max}")]
    VersionMismatch {
        /// Our oldest version.
        our_min: u16,
        /// Our newest version.
        our_max: u16,
        /// Peer's oldest version.
        peer_min: u16,
        /// Peer's newest version.
        peer_max: u16,
    },
    /// The peer violated the protocol.
    #[error("peer violated the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer said goodbye.
    #[error("peer closed the connection ({code}): {message}")]
    PeerClosed {
        /// The peer's reason code.
        code: Code,
        /// The peer's message.
        message: String,
        /// When the peer suggests reconnecting.
        reconnect_after: Option<Duration>,
    },
    /// We closed the connection (graceful close or abort).
    #[error("connection closed locally ({code}): {message}")]
    LocallyClosed {
        /// Our reason code.
        code: Code,
        /// Our message.
        message: String,
    },
    /// The byte stream ended without a goodbye.
    #[error("peer closed the byte stream without a goodbye{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    UnexpectedEof {
        /// Whether a partial frame was buffered.
        mid_frame: bool,
    },
    /// The handshake did not complete within the configured timeout.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// Nothing arrived from the peer within the keepalive timeout.
    #[error("no frame from the peer for {0:?}: keepalive timeout")]
    KeepaliveTimeout(Duration),
    /// The peer stopped reading while we had data queued for it.
    #[error("peer read nothing for {stalled:?} while {queued} bytes were queued for it")]
    PeerNotReading {
        /// How long nothing was written.
        stalled: Duration,
        /// Bytes queued at the time.
        queued: usize,
    },
    /// The transport failed (reported by the adapter).
    #[error("transport error: {message}")]
    Transport {
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// The error's text.
        message: String,
    },
}

impl ConnectionError {
    /// Reports a transport error from an adapter.
    pub fn transport(err: &io::Error) -> Self {
        ConnectionError::Transport { kind: err.kind(), message: err.to_string() }
    }

    /// The reconnect hint, if the peer gave one.
    pub fn reconnect_after(&self) -> Option<Duration> {
        match self {
            ConnectionError::PeerClosed { reconnect_after, .. } => *reconnect_after,
            ConnectionError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The best [`io::ErrorKind`] for this error.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            ConnectionError::Rejected { code, .. } if *code == Code::AUTH_FAILED => io::ErrorKind::PermissionDenied,
            ConnectionError::Rejected { .. } => io::ErrorKind::ConnectionRefused,
            ConnectionError::VersionMismatch { .. } => io::ErrorKind::Unsupported,
            ConnectionError::Protocol(_) => io::ErrorKind::InvalidData,
            ConnectionError::PeerClosed { .. } => io::ErrorKind::ConnectionAborted,
            ConnectionError::LocallyClosed { .. } => io::ErrorKind::NotConnected,
            ConnectionError::UnexpectedEof { .. } => io::ErrorKind::ConnectionReset,
            ConnectionError::HandshakeTimeout(_)
            | ConnectionError::KeepaliveTimeout(_)
            | ConnectionError::PeerNotReading { .. } => io::ErrorKind::TimedOut,
            ConnectionError::Transport { kind, .. } => *kind,
        }
    }
}

impl From<ConnectionError> for io::Error {
    fn from(e: ConnectionError) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

/// A local command could not be carried out. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not completed yet.
    #[error("the connection is not established yet")]
    NotConnected,
    /// A goodbye was sent or received; no new operations may start.
    #[error("the connection is closing; no new operations may start")]
    Closing,
    /// The connection is closed.
    #[error("the connection is closed: {0}")]
    Closed(ConnectionError),
    /// The outbound queue is full; wait for [`Event::Writable`](crate::Event::Writable).
    #[error("outbound queue is full ({queued} bytes queued, limit {limit}); wait for Writable")]
    Blocked {
        /// Bytes queued.
        queued: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream has no credit; wait for [`Event::StreamWritable`](crate::Event::StreamWritable).
    #[error("stream {id} has no send credit; wait for StreamWritable")]
    StreamBlocked {
        /// Call id.
        id: u64,
    },
    /// The peer accepts no more concurrent calls.
    #[error("the peer accepts at most {limit} calls in flight")]
    TooManyInFlight {
        /// The peer's limit.
        limit: u32,
    },
    /// The peer accepts no more concurrent streams.
    #[error("the peer accepts at most {limit} concurrent streams")]
    TooManyStreams {
        /// The peer's limit.
        limit: u32,
    },
    /// Subscription limit reached.
    #[error("at most {limit} subscriptions are allowed")]
    TooManySubscriptions {
        /// The limit.
        limit: u32,
    },
    /// The frame would exceed the receiver's frame size limit.
    #[error("{frame} would be {len} bytes, above the peer's limit of {limit}")]
    TooLarge {
        /// Frame type.
        frame: FrameType,
        /// Body length.
        len: usize,
        /// The receiver's limit.
        limit: u32,
    },
    /// A method name, topic or metadata entry is not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// No call with this id is waiting for us.
    #[error("no call {id} is in a state that allows this")]
    UnknownCall {
        /// Call id.
        id: u64,
    },
    /// The operation is not valid on this side or in this state.
    #[error("{0}")]
    InvalidState(&'static str),
}

/// The outcome of a call that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The callee answered with an ERROR frame.
    #[error("remote error {code}: {message}")]
    Remote {
        /// Error code.
        code: Code,
        /// Error message.
        message: Text,
        /// Optional error data.
        data: Bytes,
    },
    /// The deadline passed before the response arrived.
    #[error("call timed out after {0:?}")]
    TimedOut(Duration),
    /// The caller cancelled the call.
    #[error("call cancelled")]
    Cancelled,
    /// The connection ended before the call completed.
    #[error("connection lost before the call completed: {0}")]
    ConnectionLost(ConnectionError),
}

impl CallError {
    /// The code that best describes this outcome.
    pub fn code(&self) -> Code {
        match self {
            CallError::Remote { code, .. } => *code,
            CallError::TimedOut(_) => Code::DEADLINE_EXCEEDED,
            CallError::Cancelled => Code::CANCELLED,
            CallError::ConnectionLost(_) => Code::CONNECTION_LOST,
        }
    }
}

/// A subscribe, unsubscribe or publish was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// The server refused it with this code.
    #[error("refused by the server: {0}")]
    Refused(Code),
    /// The connection ended first.
    #[error("connection lost before the acknowledgement: {0}")]
    ConnectionLost(ConnectionError),
}

/// A configuration value is out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: `{field}` is {value}, {requirement}")]
pub struct ConfigError {
    /// Field name.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What it must satisfy.
    pub requirement: &'static str,
}
