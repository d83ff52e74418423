//! The wire format: preamble, frame header, frame bodies and status codes.
//!
//! Everything here is a pure function of bytes; `PROTOCOL.md` at the
//! repository root is the language-neutral specification of the same format
//! and carries test vectors that the test suite checks against this module.
//!
//! All integers are little-endian. A frame is a 16-byte [`Header`] followed
//! by `len` body bytes. The header alone says whether the frame is
//! acceptable (known type, legal flags, legal length for its type, length
//! under the receiver's limit), so a receiver decides before allocating.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::text::Text;

/// The eight bytes each side sends before its first frame: `WHARF\0\r\n`.
pub const PREAMBLE: [u8; 8] = *b"WHARF\0\r\n";

/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// Oldest protocol version this implementation speaks.
pub const MIN_VERSION: u16 = 1;
/// Newest protocol version this implementation speaks.
pub const MAX_VERSION: u16 = 1;

/// `reconnect_after_ms` / `retry_after_ms` value meaning "no hint".
pub const NO_HINT: u32 = u32::MAX;

/// Largest frame body any configuration may allow (128 MiB).
pub const MAX_FRAME_SIZE_CEILING: u32 = 128 * 1024 * 1024;

/// Frame type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// Client's handshake opening.
    Hello = 0x01,
    /// Server accepts the handshake.
    Welcome = 0x02,
    /// Server refuses the handshake.
    Reject = 0x03,
    /// A call (unary or streaming).
    Request = 0x10,
    /// Successful outcome of a call.
    Response = 0x11,
    /// Failed outcome of a call.
    Error = 0x12,
    /// A one-way message; no reply.
    Notify = 0x13,
    /// The caller abandons a call (also resets a stream).
    Cancel = 0x14,
    /// One message on a streaming call.
    Data = 0x20,
    /// The caller finished sending on a streaming call.
    End = 0x21,
    /// Flow-control credit for a streaming call.
    Credit = 0x22,
    /// Client subscribes to a topic or topic prefix.
    Subscribe = 0x30,
    /// Client ends a subscription.
    Unsubscribe = 0x31,
    /// Client publishes a message.
    Publish = 0x32,
    /// Server delivers a published message to a subscription.
    Message = 0x33,
    /// Server delivers several messages of one topic to a subscription.
    Messages = 0x36,
    /// Server reports messages dropped for a slow subscription.
    Lagged = 0x34,
    /// Server acknowledges a subscribe, unsubscribe or publish.
    Ack = 0x35,
    /// Liveness probe.
    Ping = 0x40,
    /// Answer to a ping.
    Pong = 0x41,
    /// Graceful close with a reason and a reconnect hint.
    Goodbye = 0x50,
}

impl FrameType {
    /// Parses a type byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Welcome,
            0x03 => Reject,
            0x10 => Request,
            0x11 => Response,
            0x12 => Error,
            0x13 => Notify,
            0x14 => Cancel,
            0x20 => Data,
            0x21 => End,
            0x22 => Credit,
            0x30 => Subscribe,
            0x31 => Unsubscribe,
            0x32 => Publish,
            0x33 => Message,
            0x34 => Lagged,
            0x35 => Ack,
            0x36 => Messages,
            0x40 => Ping,
            0x41 => Pong,
            0x50 => Goodbye,
            _ => return None,
        })
    }

    /// The flag bits defined for this type; any other bit set is a violation.
    pub fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Request => flags::REQUEST_MASK,
            FrameType::Notify => flags::NOTIFY_MASK,
            FrameType::Subscribe => flags::SUBSCRIBE_MASK,
            FrameType::Publish => flags::PUBLISH_MASK,
            _ => 0,
        }
    }

    /// Body length bounds `(min, max)` that the type itself imposes.
    pub fn length_bounds(self) -> (u32, u32) {
        use FrameType::*;
        match self {
            Hello => (26, u32::MAX),
            Welcome => (28, u32::MAX),
            Reject => (14, u32::MAX),
            Request | Notify | Subscribe | Publish | Message => (2, u32::MAX),
            Error => (6, u32::MAX),
            Goodbye => (10, u32::MAX),
            Response | Data => (0, u32::MAX),
            Cancel | End | Ping | Pong => (0, 0),
            Credit => (4, 4),
            Unsubscribe | Lagged | Ack => (8, 8),
            Messages => (6, u32::MAX),
        }
    }

    /// What the header's `id` field must be for this type.
    fn id_rule(self) -> IdRule {
        use FrameType::*;
        match self {
            Hello | Reject | Notify | Goodbye => IdRule::Zero,
            Ping | Pong | Publish => IdRule::Any,
            _ => IdRule::NonZero,
        }
    }

    /// Upper-case name as used in PROTOCOL.md.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "HELLO",
            Welcome => "WELCOME",
            Reject => "REJECT",
            Request => "REQUEST",
            Response => "RESPONSE",
            Error => "ERROR",
            Notify => "NOTIFY",
            Cancel => "CANCEL",
            Data => "DATA",
            End => "END",
            Credit => "CREDIT",
            Subscribe => "SUBSCRIBE",
            Unsubscribe => "UNSUBSCRIBE",
            Publish => "PUBLISH",
            Message => "MESSAGE",
            Messages => "MESSAGES",
            Lagged => "LAGGED",
            Ack => "ACK",
            Ping => "PING",
            Pong => "PONG",
            Goodbye => "GOODBYE",
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum IdRule {
    Zero,
    NonZero,
    Any,
}

/// Flag bits, per frame type.
pub mod flags {
    /// REQUEST: the two low bits carry the [`CallKind`](super::CallKind).
    pub const KIND_MASK: u8 = 0x03;
    /// REQUEST: a relative deadline (u32 milliseconds) follows the method.
    pub const HAS_DEADLINE: u8 = 0x04;
    /// REQUEST, NOTIFY: a metadata block is present.
    pub const HAS_METADATA: u8 = 0x08;
    /// REQUEST, NOTIFY: a 16-byte trace id is present.
    pub const HAS_TRACE: u8 = 0x10;
    /// SUBSCRIBE: the topic is a prefix.
    pub const PREFIX: u8 = 0x01;
    /// SUBSCRIBE: disconnect instead of dropping when this subscriber lags.
    pub const POLICY_DISCONNECT: u8 = 0x02;
    /// PUBLISH: the publisher wants an ACK (the id is then non-zero).
    pub const WANT_ACK: u8 = 0x01;

    pub(crate) const REQUEST_MASK: u8 = KIND_MASK | HAS_DEADLINE | HAS_METADATA | HAS_TRACE;
    pub(crate) const NOTIFY_MASK: u8 = HAS_METADATA | HAS_TRACE;
    pub(crate) const SUBSCRIBE_MASK: u8 = PREFIX | POLICY_DISCONNECT;
    pub(crate) const PUBLISH_MASK: u8 = WANT_ACK;
}

/// A status code, as carried by ERROR, REJECT, ACK and GOODBYE.
///
/// Codes below 1000 are reserved for wharf; applications use 1000 and up.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u32);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $val:expr;)*) => {
        impl Code {
            $($(#[$doc])* pub const $name: Code = Code($val);)*

            /// The symbolic name of a reserved code, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// Success (ACK) or a normal close (GOODBYE).
    OK = 0;
    /// No handler for the method.
    UNKNOWN_METHOD = 1;
    /// The request could not be understood (bad payload, method name too long, ...).
    INVALID_REQUEST = 2;
    /// Too many calls in flight; the call was not processed.
    BUSY = 3;
    /// The call's deadline passed (local outcome; not sent by the core).
    DEADLINE_EXCEEDED = 4;
    /// The call was cancelled (local outcome; not sent by the core).
    CANCELLED = 5;
    /// The handler failed.
    INTERNAL = 6;
    /// The peer's policy forbids this operation.
    ACCESS_DENIED = 7;
    /// The peer is shutting down; the call was not processed and may be retried elsewhere.
    SHUTTING_DOWN = 8;
    /// The service is temporarily unavailable.
    UNAVAILABLE = 9;
    /// Subscription limit reached.
    TOO_MANY_SUBSCRIPTIONS = 10;
    /// Topic empty (for an exact subscription or a publish) or too long.
    INVALID_TOPIC = 11;
    /// No such subscription.
    UNKNOWN_SUBSCRIPTION = 12;
    /// Stream limit reached.
    TOO_MANY_STREAMS = 13;
    /// No protocol version in common (REJECT).
    VERSION_MISMATCH = 14;
    /// Authentication failed (REJECT).
    AUTH_FAILED = 15;
    /// The sender detected a protocol violation (GOODBYE).
    PROTOCOL_ERROR = 16;
    /// The subscriber could not keep up and its policy was to disconnect (GOODBYE).
    SLOW_CONSUMER = 17;
    /// No frame arrived within the keepalive timeout (GOODBYE).
    KEEPALIVE_TIMEOUT = 18;
    /// The server has too many connections (REJECT).
    TOO_MANY_CONNECTIONS = 19;
    /// The handshake did not complete in time (REJECT).
    HANDSHAKE_TIMEOUT = 20;
    /// The peer did not read what was sent to it (a local reason: the
    /// connection is dropped without a GOODBYE, since the peer is not reading).
    PEER_NOT_READING = 21;
    /// A message exceeded a size limit (sent by adapters when a response
    /// does not fit the caller's `max_frame_size`).
    TOO_LARGE = 22;
    /// The connection went away before the operation completed (local only).
    CONNECTION_LOST = 23;
}

impl Code {
    /// First code available to applications.
    pub const FIRST_APPLICATION: u32 = 1000;
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "Code({})", self.0),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "code {}", self.0),
        }
    }
}

/// The shape of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CallKind {
    /// One request, one response.
    #[default]
    Unary = 0,
    /// One request, a stream of DATA from the callee, then the response.
    ServerStream = 1,
    /// A stream of DATA from the caller ended by END, then one response.
    ClientStream = 2,
    /// DATA both ways; the caller ends with END, the callee with the response.
    Bidi = 3,
}

impl CallKind {
    fn from_bits(b: u8) -> CallKind {
        match b & flags::KIND_MASK {
            0 => CallKind::Unary,
            1 => CallKind::ServerStream,
            2 => CallKind::ClientStream,
            _ => CallKind::Bidi,
        }
    }

    /// Whether the call carries DATA frames at all.
    pub fn is_stream(self) -> bool {
        self != CallKind::Unary
    }

    /// Whether the caller sends DATA (and END).
    pub fn caller_sends(self) -> bool {
        matches!(self, CallKind::ClientStream | CallKind::Bidi)
    }

    /// Whether the callee sends DATA before its response.
    pub fn callee_sends(self) -> bool {
        matches!(self, CallKind::ServerStream | CallKind::Bidi)
    }
}

/// What the server does when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued message and report the gap with a LAGGED frame.
    #[default]
    DropOldest,
    /// Disconnect the subscriber with GOODBYE `SLOW_CONSUMER`.
    Disconnect,
}

/// Per-call metadata: ordered `(key, value)` pairs; keys may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(Vec<(Text, Bytes)>);

impl Metadata {
    /// Empty metadata (does not allocate).
    pub const fn new() -> Self {
        Metadata(Vec::new())
    }

    /// Appends an entry.
    pub fn insert(&mut self, key: impl Into<Text>, value: impl Into<Bytes>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.0.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    }

    /// All entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Text, &Bytes)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn encoded_len(&self) -> usize {
        2 + self.0.iter().map(|(k, v)| 2 + k.len() + 2 + v.len()).sum::<usize>()
    }
}

/// A 16-byte trace identifier (W3C trace-context `trace-id` layout).
pub type TraceId = [u8; 16];

/// The fixed 16-byte frame header.
///
/// ```text
/// offset 0  u32 len      body length in bytes (header excluded)
/// offset 4  u8  type     FrameType
/// offset 5  u8  flags    per-type flag bits
/// offset 6  u16 reserved must be 0
/// offset 8  u64 id       call / subscription / operation / ping id, or 0
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Body length.
    pub len: u32,
    /// Frame type.
    pub ty: FrameType,
    /// Flag bits.
    pub flags: u8,
    /// Identifier.
    pub id: u64,
}

impl Header {
    /// Validates a header before any body byte is read or any memory is
    /// reserved for it: type known, flags and reserved bits legal, length
    /// legal for the type and not above `max_len`, id legal for the type.
    pub fn decode(raw: &[u8; HEADER_LEN], max_len: u32) -> Result<Header, ProtocolError> {
        let mut b = &raw[..];
        let len = b.get_u32_le();
        let ty_byte = b.get_u8();
        let flags = b.get_u8();
        let reserved = b.get_u16_le();
        let id = b.get_u64_le();
        let ty = FrameType::from_u8(ty_byte).ok_or(ProtocolError::UnknownFrameType { ty: ty_byte })?;
        if reserved != 0 {
            return Err(ProtocolError::ReservedBits { frame: ty, value: reserved });
        }
        if flags & !ty.allowed_flags() != 0 {
            return Err(ProtocolError::UnknownFlags { frame: ty, flags });
        }
        let (min, max) = ty.length_bounds();
        if len < min || len > max {
            return Err(ProtocolError::BadLength { frame: ty, len, min, max });
        }
        if len > max_len {
            return Err(ProtocolError::FrameTooLarge { frame: ty, len, limit: max_len });
        }
        let id_ok = match ty.id_rule() {
            IdRule::Zero => id == 0,
            IdRule::NonZero => id != 0,
            IdRule::Any => {
                // PUBLISH: id is non-zero exactly when an ACK is wanted.
                ty != FrameType::Publish || ((flags & flags::WANT_ACK != 0) == (id != 0))
            }
        };
        if !id_ok {
            return Err(ProtocolError::BadId { frame: ty, id, reason: "id not allowed for this frame type" });
        }
        Ok(Header { len, ty, flags, id })
    }

    /// Writes the 16 header bytes.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.to_array());
    }

    /// The 16 header bytes (built in place: one copy into the output
    /// instead of one per field).
    fn to_array(self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(&self.len.to_le_bytes());
        raw[4] = self.ty as u8;
        raw[5] = self.flags;
        // raw[6..8]: reserved, 0.
        raw[8..16].copy_from_slice(&self.id.to_le_bytes());
        raw
    }
}

/// HELLO body: the client's opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Oldest version the client speaks.
    pub min_version: u16,
    /// Newest version the client speaks.
    pub max_version: u16,
    /// Largest frame body the client accepts.
    pub max_frame_size: u32,
    /// Calls from the server the client serves concurrently.
    pub max_in_flight: u32,
    /// Streaming calls from the server the client serves concurrently.
    pub max_streams: u32,
    /// Stream credit the client grants each stream at its start, in bytes.
    pub initial_stream_window: u32,
    /// Keepalive interval the client would like, in ms (0: no preference).
    pub keepalive_ms: u32,
    /// Free-form client name (for logs).
    pub client_name: Text,
    /// Opaque authentication payload (the rest of the body).
    pub auth: Bytes,
}

/// WELCOME body: the server's acceptance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Connection id assigned by the server (the header id; never 0).
    pub connection_id: u64,
    /// Chosen protocol version.
    pub version: u16,
    /// Largest frame body the server accepts.
    pub max_frame_size: u32,
    /// Calls from the client the server serves concurrently.
    pub max_in_flight: u32,
    /// Streaming calls from the client the server serves concurrently.
    pub max_streams: u32,
    /// Subscriptions the server allows this connection.
    pub max_subscriptions: u32,
    /// Stream credit the server grants each stream at its start, in bytes.
    pub initial_stream_window: u32,
    /// Keepalive interval both sides use, in ms (0: keepalive off).
    pub keepalive_ms: u32,
    /// Free-form server name (for logs).
    pub server_name: Text,
}

/// REJECT body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub code: Code,
    /// When to try again, in ms ([`NO_HINT`]: no hint).
    pub retry_after_ms: u32,
    /// Oldest version the server speaks.
    pub min_version: u16,
    /// Newest version the server speaks.
    pub max_version: u16,
    /// Human-readable reason.
    pub reason: Text,
}

/// REQUEST body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Call id (odd from clients, even from servers, increasing).
    pub id: u64,
    /// Shape of the call.
    pub kind: CallKind,
    /// Method name.
    pub method: Text,
    /// Time the caller will wait, in ms, counted from when the frame is read.
    pub deadline_ms: Option<u32>,
    /// Trace id.
    pub trace_id: Option<TraceId>,
    /// Metadata.
    pub metadata: Metadata,
    /// Opaque payload.
    pub payload: Bytes,
}

/// ERROR body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// Call id.
    pub id: u64,
    /// Error code.
    pub code: Code,
    /// Human-readable message.
    pub message: Text,
    /// Optional opaque error data.
    pub data: Bytes,
}

/// NOTIFY body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Method name.
    pub method: Text,
    /// Trace id.
    pub trace_id: Option<TraceId>,
    /// Metadata.
    pub metadata: Metadata,
    /// Opaque payload.
    pub payload: Bytes,
}

/// GOODBYE body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goodbye {
    /// Why.
    pub code: Code,
    /// When the peer may reconnect, in ms ([`NO_HINT`]: no hint).
    pub reconnect_after_ms: u32,
    /// Human-readable message.
    pub message: Text,
}

/// The messages of a MESSAGES frame: one or more items, each a `u32`
/// length followed by that many bytes, filling the rest of the body exactly
/// (PROTOCOL.md 6.14a). Built only from a byte string that has this shape,
/// so iterating it cannot fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageBatch {
    items: Bytes,
    count: u32,
}

impl MessageBatch {
    /// Checks that `items` is a well-formed sequence of at least one item.
    pub fn new(items: Bytes) -> Result<MessageBatch, ProtocolError> {
        let malformed = |reason| ProtocolError::Malformed { frame: FrameType::Messages, reason };
        let (mut at, mut count) = (0usize, 0u32);
        while at < items.len() {
            let Some(head) = items.get(at..at + 4) else {
                return Err(malformed("a message length runs past the end of the frame"));
            };
            let len = u32::from_le_bytes(head.try_into().expect("four bytes")) as usize;
            at += 4;
            if len > items.len() - at {
                return Err(malformed("a message runs past the end of the frame"));
            }
            at += len;
            count += 1;
        }
        if count == 0 {
            return Err(malformed("no message"));
        }
        Ok(MessageBatch { items, count })
    }

    /// A batch of these payloads, copied into one buffer; `None` if there
    /// is none, or one is longer than a `u32` length allows.
    pub fn from_payloads<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Option<MessageBatch> {
        let mut out = BytesMut::new();
        let mut count = 0u32;
        for p in payloads {
            out.put_u32_le(u32::try_from(p.len()).ok()?);
            out.put_slice(p);
            count += 1;
        }
        (count > 0).then(|| MessageBatch { items: out.freeze(), count })
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Always false: a batch holds at least one message.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded items, as they are on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.items
    }

    /// Takes the first message off the batch (a slice of it, no copy);
    /// `None` once every message was taken.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let len = u32::from_le_bytes(self.items[..4].try_into().expect("validated")) as usize;
        self.items.advance(4);
        self.count -= 1;
        Some(self.items.split_to(len))
    }

    /// The messages, in order (slices of the batch, no copy).
    pub fn iter(&self) -> impl Iterator<Item = Bytes> + '_ {
        let mut rest = self.clone();
        std::iter::from_fn(move || rest.pop_front())
    }
}

/// One decoded frame. Payloads are slices of the received buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // field meanings are documented on the frame types and in PROTOCOL.md
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Reject(Reject),
    Request(Request),
    Response { id: u64, payload: Bytes },
    Error(ErrorBody),
    Notify(Notify),
    Cancel { id: u64 },
    Data { id: u64, payload: Bytes },
    End { id: u64 },
    Credit { id: u64, increment: u32 },
    Subscribe { id: u64, topic: Text, prefix: bool, policy: SlowConsumerPolicy },
    Unsubscribe { id: u64, subscription: u64 },
    Publish { id: u64, topic: Text, payload: Bytes },
    Message { subscription: u64, topic: Text, payload: Bytes },
    Messages { subscription: u64, topic: Text, batch: MessageBatch },
    Lagged { subscription: u64, dropped: u64 },
    Ack { id: u64, status: Code, value: u32 },
    Ping { id: u64 },
    Pong { id: u64 },
    Goodbye(Goodbye),
}

/// A frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string field is longer than a `u16` length prefix allows.
    #[error("{frame} field `{field}` is {len} bytes; the wire allows at most 65535")]
    FieldTooLong {
        /// Frame type.
        frame: FrameType,
        /// Field name.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The body is longer than a `u32` length allows.
    #[error("{frame} body is {len} bytes; the wire allows at most 4294967295")]
    BodyTooLong {
        /// Frame type.
        frame: FrameType,
        /// Body length.
        len: usize,
    },
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Reject(_) => FrameType::Reject,
            Frame::Request(_) => FrameType::Request,
            Frame::Response { .. } => FrameType::Response,
            Frame::Error(_) => FrameType::Error,
            Frame::Notify(_) => FrameType::Notify,
            Frame::Cancel { .. } => FrameType::Cancel,
            Frame::Data { .. } => FrameType::Data,
            Frame::End { .. } => FrameType::End,
            Frame::Credit { .. } => FrameType::Credit,
            Frame::Subscribe { .. } => FrameType::Subscribe,
            Frame::Unsubscribe { .. } => FrameType::Unsubscribe,
            Frame::Publish { .. } => FrameType::Publish,
            Frame::Message { .. } => FrameType::Message,
            Frame::Messages { .. } => FrameType::Messages,
            Frame::Lagged { .. } => FrameType::Lagged,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Goodbye(_) => FrameType::Goodbye,
        }
    }

    fn id_and_flags(&self) -> (u64, u8) {
        match self {
            Frame::Hello(_) | Frame::Reject(_) | Frame::Goodbye(_) => (0, 0),
            Frame::Welcome(w) => (w.connection_id, 0),
            Frame::Request(r) => {
                let mut f = r.kind as u8;
                if r.deadline_ms.is_some() {
                    f |= flags::HAS_DEADLINE;
                }
                if !r.metadata.is_empty() {
                    f |= flags::HAS_METADATA;
                }
                if r.trace_id.is_some() {
                    f |= flags::HAS_TRACE;
                }
                (r.id, f)
            }
            Frame::Notify(n) => {
                let mut f = 0;
                if !n.metadata.is_empty() {
                    f |= flags::HAS_METADATA;
                }
                if n.trace_id.is_some() {
                    f |= flags::HAS_TRACE;
                }
                (0, f)
            }
            Frame::Error(e) => (e.id, 0),
            Frame::Response { id, .. }
            | Frame::Cancel { id }
            | Frame::Data { id, .. }
            | Frame::End { id }
            | Frame::Credit { id, .. }
            | Frame::Unsubscribe { id, .. }
            | Frame::Ack { id, .. }
            | Frame::Ping { id }
            | Frame::Pong { id } => (*id, 0),
            Frame::Subscribe { id, prefix, policy, .. } => {
                let mut f = 0;
                if *prefix {
                    f |= flags::PREFIX;
                }
                if *policy == SlowConsumerPolicy::Disconnect {
                    f |= flags::POLICY_DISCONNECT;
                }
                (*id, f)
            }
            Frame::Publish { id, .. } => (*id, if *id != 0 { flags::WANT_ACK } else { 0 }),
            Frame::Message { subscription, .. }
            | Frame::Messages { subscription, .. }
            | Frame::Lagged { subscription, .. } => (*subscription, 0),
        }
    }

    /// The trailing opaque part of the body (payload, auth or error data),
    /// sent as-is after the fixed fields.
    pub fn tail(&self) -> Option<&Bytes> {
        match self {
            Frame::Hello(h) => Some(&h.auth),
            Frame::Request(r) => Some(&r.payload),
            Frame::Response { payload, .. }
            | Frame::Data { payload, .. }
            | Frame::Publish { payload, .. }
            | Frame::Message { payload, .. } => Some(payload),
            Frame::Messages { batch, .. } => Some(&batch.items),
            Frame::Error(e) => Some(&e.data),
            Frame::Notify(n) => Some(&n.payload),
            _ => None,
        }
    }

    fn check_str(&self, field: &'static str, s: &str) -> Result<(), EncodeError> {
        if s.len() > u16::MAX as usize {
            return Err(EncodeError::FieldTooLong { frame: self.frame_type(), field, len: s.len() });
        }
        Ok(())
    }

    fn check_metadata(&self, m: &Metadata) -> Result<(), EncodeError> {
        if m.len() > u16::MAX as usize {
            return Err(EncodeError::FieldTooLong { frame: self.frame_type(), field: "metadata", len: m.len() });
        }
        for (k, v) in m.iter() {
            self.check_str("metadata key", k)?;
            if v.len() > u16::MAX as usize {
                return Err(EncodeError::FieldTooLong {
                    frame: self.frame_type(),
                    field: "metadata value",
                    len: v.len(),
                });
            }
        }
        Ok(())
    }

    /// Length of the body up to (not including) [`tail`](Self::tail),
    /// after checking that every field fits its length prefix.
    pub fn head_body_len(&self) -> Result<usize, EncodeError> {
        Ok(match self {
            Frame::Hello(h) => {
                self.check_str("client_name", &h.client_name)?;
                26 + h.client_name.len()
            }
            Frame::Welcome(w) => {
                self.check_str("server_name", &w.server_name)?;
                28 + w.server_name.len()
            }
            Frame::Reject(r) => {
                self.check_str("reason", &r.reason)?;
                14 + r.reason.len()
            }
            Frame::Request(r) => {
                self.check_str("method", &r.method)?;
                let mut n = 2 + r.method.len();
                if r.deadline_ms.is_some() {
                    n += 4;
                }
                if r.trace_id.is_some() {
                    n += 16;
                }
                if !r.metadata.is_empty() {
                    self.check_metadata(&r.metadata)?;
                    n += r.metadata.encoded_len();
                }
                n
            }
            Frame::Notify(m) => {
                self.check_str("method", &m.method)?;
                let mut n = 2 + m.method.len();
                if m.trace_id.is_some() {
                    n += 16;
                }
                if !m.metadata.is_empty() {
                    self.check_metadata(&m.metadata)?;
                    n += m.metadata.encoded_len();
                }
                n
            }
            Frame::Error(e) => {
                self.check_str("message", &e.message)?;
                6 + e.message.len()
            }
            Frame::Goodbye(g) => {
                self.check_str("message", &g.message)?;
                10 + g.message.len()
            }
            Frame::Subscribe { topic, .. }
            | Frame::Publish { topic, .. }
            | Frame::Message { topic, .. }
            | Frame::Messages { topic, .. } => {
                self.check_str("topic", topic)?;
                2 + topic.len()
            }
            Frame::Response { .. } | Frame::Data { .. } => 0,
            Frame::Cancel { .. } | Frame::End { .. } | Frame::Ping { .. } | Frame::Pong { .. } => 0,
            Frame::Credit { .. } => 4,
            Frame::Unsubscribe { .. } | Frame::Lagged { .. } | Frame::Ack { .. } => 8,
        })
    }

    /// Total body length (the header's `len`).
    pub fn body_len(&self) -> Result<u32, EncodeError> {
        let n = self.head_body_len()? + self.tail().map_or(0, |t| t.len());
        u32::try_from(n).map_err(|_| EncodeError::BodyTooLong { frame: self.frame_type(), len: n })
    }

    /// Writes the header and every body field except the [`tail`](Self::tail).
    /// `body_len` must come from [`body_len`](Self::body_len) on this frame.
    pub fn encode_head(&self, body_len: u32, out: &mut BytesMut) {
        let (id, flags) = self.id_and_flags();
        Header { len: body_len, ty: self.frame_type(), flags, id }.encode(out);
        match self {
            Frame::Hello(h) => {
                out.put_u16_le(h.min_version);
                out.put_u16_le(h.max_version);
                out.put_u32_le(h.max_frame_size);
                out.put_u32_le(h.max_in_flight);
                out.put_u32_le(h.max_streams);
                out.put_u32_le(h.initial_stream_window);
                out.put_u32_le(h.keepalive_ms);
                put_str(out, &h.client_name);
            }
            Frame::Welcome(w) => {
                out.put_u16_le(w.version);
                out.put_u32_le(w.max_frame_size);
                out.put_u32_le(w.max_in_flight);
                out.put_u32_le(w.max_streams);
                out.put_u32_le(w.max_subscriptions);
                out.put_u32_le(w.initial_stream_window);
                out.put_u32_le(w.keepalive_ms);
                put_str(out, &w.server_name);
            }
            Frame::Reject(r) => {
                out.put_u32_le(r.code.0);
                out.put_u32_le(r.retry_after_ms);
                out.put_u16_le(r.min_version);
                out.put_u16_le(r.max_version);
                put_str(out, &r.reason);
            }
            Frame::Request(r) => {
                put_str(out, &r.method);
                if let Some(d) = r.deadline_ms {
                    out.put_u32_le(d);
                }
                if let Some(t) = &r.trace_id {
                    out.put_slice(t);
                }
                if !r.metadata.is_empty() {
                    put_metadata(out, &r.metadata);
                }
            }
            Frame::Notify(n) => {
                put_str(out, &n.method);
                if let Some(t) = &n.trace_id {
                    out.put_slice(t);
                }
                if !n.metadata.is_empty() {
                    put_metadata(out, &n.metadata);
                }
            }
            Frame::Error(e) => {
                out.put_u32_le(e.code.0);
                put_str(out, &e.message);
            }
            Frame::Goodbye(g) => {
                out.put_u32_le(g.code.0);
                out.put_u32_le(g.reconnect_after_ms);
                put_str(out, &g.message);
            }
            Frame::Subscribe { topic, .. }
            | Frame::Publish { topic, .. }
            | Frame::Message { topic, .. }
            | Frame::Messages { topic, .. } => put_str(out, topic),
            Frame::Credit { increment, .. } => out.put_u32_le(*increment),
            Frame::Unsubscribe { subscription, .. } => out.put_u64_le(*subscription),
            Frame::Lagged { dropped, .. } => out.put_u64_le(*dropped),
            Frame::Ack { status, value, .. } => {
                out.put_u32_le(status.0);
                out.put_u32_le(*value);
            }
            Frame::Response { .. }
            | Frame::Data { .. }
            | Frame::Cancel { .. }
            | Frame::End { .. }
            | Frame::Ping { .. }
            | Frame::Pong { .. } => {}
        }
    }

    /// Encodes the whole frame (header, fields and tail) into `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = self.body_len()?;
        out.reserve(HEADER_LEN + len as usize);
        self.encode_head(len, out);
        if let Some(t) = self.tail() {
            out.extend_from_slice(t);
        }
        Ok(())
    }

    /// Encodes the whole frame into a new buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    /// Decodes a body whose header already passed [`Header::decode`].
    /// `body.len()` must equal `header.len`. Payloads are slices of `body`.
    pub fn decode(header: &Header, body: Bytes) -> Result<Frame, ProtocolError> {
        Frame::decode_keeping(header, body, usize::MAX)
    }

    /// [`decode`](Self::decode), keeping at most `keep_metadata` metadata
    /// entries of a REQUEST or NOTIFY (the rest are still validated, but
    /// not stored). A receiver whose limit is `max_metadata_entries`
    /// passes `max_metadata_entries + 1`: a frame over the limit is still
    /// recognised as such (it decodes with one entry too many) while the
    /// memory it costs stays bounded by the limit, not by the 65,535
    /// entries the wire allows.
    pub fn decode_keeping(header: &Header, body: Bytes, keep_metadata: usize) -> Result<Frame, ProtocolError> {
        debug_assert_eq!(body.len(), header.len as usize);
        let mut r = Reader { buf: body, frame: header.ty };
        let id = header.id;
        let f = header.flags;
        let frame = match header.ty {
            FrameType::Hello => {
                let min_version = r.u16()?;
                let max_version = r.u16()?;
                let max_frame_size = r.u32()?;
                let max_in_flight = r.u32()?;
                let max_streams = r.u32()?;
                let initial_stream_window = r.u32()?;
                let keepalive_ms = r.u32()?;
                let client_name = r.str16("client_name")?;
                Frame::Hello(Hello {
                    min_version,
                    max_version,
                    max_frame_size,
                    max_in_flight,
                    max_streams,
                    initial_stream_window,
                    keepalive_ms,
                    client_name,
                    auth: r.rest(),
                })
            }
            FrameType::Welcome => {
                let w = Welcome {
                    connection_id: id,
                    version: r.u16()?,
                    max_frame_size: r.u32()?,
                    max_in_flight: r.u32()?,
                    max_streams: r.u32()?,
                    max_subscriptions: r.u32()?,
                    initial_stream_window: r.u32()?,
                    keepalive_ms: r.u32()?,
                    server_name: r.str16("server_name")?,
                };
                r.finish()?;
                Frame::Welcome(w)
            }
            FrameType::Reject => {
                let rj = Reject {
                    code: Code(r.u32()?),
                    retry_after_ms: r.u32()?,
                    min_version: r.u16()?,
                    max_version: r.u16()?,
                    reason: r.str16("reason")?,
                };
                r.finish()?;
                Frame::Reject(rj)
            }
            FrameType::Request => {
                let method = r.str16("method")?;
                let deadline_ms = if f & flags::HAS_DEADLINE != 0 { Some(r.u32()?) } else { None };
                let trace_id = if f & flags::HAS_TRACE != 0 { Some(r.array16()?) } else { None };
                let metadata = if f & flags::HAS_METADATA != 0 { r.metadata(keep_metadata)? } else { Metadata::new() };
                Frame::Request(Request {
                    id,
                    kind: CallKind::from_bits(f),
                    method,
                    deadline_ms,
                    trace_id,
                    metadata,
                    payload: r.rest(),
                })
            }
            FrameType::Response => Frame::Response { id, payload: r.rest() },
            FrameType::Error => {
                let code = Code(r.u32()?);
                let message = r.str16("message")?;
                Frame::Error(ErrorBody { id, code, message, data: r.rest() })
            }
            FrameType::Notify => {
                let method = r.str16("method")?;
                let trace_id = if f & flags::HAS_TRACE != 0 { Some(r.array16()?) } else { None };
                let metadata = if f & flags::HAS_METADATA != 0 { r.metadata(keep_metadata)? } else { Metadata::new() };
                Frame::Notify(Notify { method, trace_id, metadata, payload: r.rest() })
            }
            FrameType::Cancel => Frame::Cancel { id },
            FrameType::Data => Frame::Data { id, payload: r.rest() },
            FrameType::End => Frame::End { id },
            FrameType::Credit => {
                let increment = r.u32()?;
                if increment == 0 {
                    return Err(ProtocolError::Malformed { frame: FrameType::Credit, reason: "credit increment is 0" });
                }
                Frame::Credit { id, increment }
            }
            FrameType::Subscribe => {
                let topic = r.str16("topic")?;
                r.finish()?;
                let policy = if f & flags::POLICY_DISCONNECT != 0 {
                    SlowConsumerPolicy::Disconnect
                } else {
                    SlowConsumerPolicy::DropOldest
                };
                Frame::Subscribe { id, topic, prefix: f & flags::PREFIX != 0, policy }
            }
            FrameType::Unsubscribe => {
                let subscription = r.u64()?;
                if subscription == 0 {
                    return Err(ProtocolError::Malformed {
                        frame: FrameType::Unsubscribe,
                        reason: "subscription id is 0",
                    });
                }
                Frame::Unsubscribe { id, subscription }
            }
            FrameType::Publish => {
                let topic = r.str16("topic")?;
                Frame::Publish { id, topic, payload: r.rest() }
            }
            FrameType::Message => {
                let topic = r.str16("topic")?;
                Frame::Message { subscription: id, topic, payload: r.rest() }
            }
            FrameType::Messages => {
                let topic = r.str16("topic")?;
                Frame::Messages { subscription: id, topic, batch: MessageBatch::new(r.rest())? }
            }
            FrameType::Lagged => Frame::Lagged { subscription: id, dropped: r.u64()? },
            FrameType::Ack => Frame::Ack { id, status: Code(r.u32()?), value: r.u32()? },
            FrameType::Ping => Frame::Ping { id },
            FrameType::Pong => Frame::Pong { id },
            FrameType::Goodbye => {
                let g = Goodbye { code: Code(r.u32()?), reconnect_after_ms: r.u32()?, message: r.str16("message")? };
                r.finish()?;
                Frame::Goodbye(g)
            }
        };
        Ok(frame)
    }

    /// Decodes one complete frame (header and body) from the front of `buf`,
    /// with `max_len` as the body limit. Returns `Ok(None)` when `buf` holds
    /// less than one whole frame. A convenience for tests and tools; the
    /// connection uses [`Header::decode`] and [`Frame::decode`] directly.
    pub fn decode_one(buf: &mut Bytes, max_len: u32) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let raw: &[u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().expect("length checked");
        let header = Header::decode(raw, max_len)?;
        let total = HEADER_LEN + header.len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(HEADER_LEN);
        Frame::decode(&header, frame).map(Some)
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16_le(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_metadata(out: &mut BytesMut, m: &Metadata) {
    out.put_u16_le(m.len() as u16);
    for (k, v) in m.iter() {
        put_str(out, k);
        out.put_u16_le(v.len() as u16);
        out.put_slice(v);
    }
}

/// Cursor over a frame body; every read is bounds-checked.
struct Reader {
    buf: Bytes,
    frame: FrameType,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            Err(ProtocolError::Malformed { frame: self.frame, reason: "a field runs past the end of the frame" })
        } else {
            Ok(())
        }
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }

    fn array16(&mut self) -> Result<[u8; 16], ProtocolError> {
        self.need(16)?;
        let mut a = [0u8; 16];
        self.buf.copy_to_slice(&mut a);
        Ok(a)
    }

    fn bytes16(&mut self) -> Result<Bytes, ProtocolError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn str16(&mut self, field: &'static str) -> Result<Text, ProtocolError> {
        let raw = self.bytes16()?;
        if raw.contains(&0) {
            return Err(ProtocolError::InvalidString { frame: self.frame, field, reason: "contains NUL" });
        }
        Text::from_utf8(raw).map_err(|_| ProtocolError::InvalidString {
            frame: self.frame,
            field,
            reason: "not valid UTF-8",
        })
    }

    /// The metadata block, storing at most `keep` entries.
    fn metadata(&mut self, keep: usize) -> Result<Metadata, ProtocolError> {
        let count = self.u16()? as usize;
        if count == 0 {
            return Err(ProtocolError::Malformed { frame: self.frame, reason: "metadata flag set with 0 entries" });
        }
        // Each entry takes at least 4 bytes: refuse a count the body cannot hold
        // before reserving space for it.
        self.need(count * 4)?;
        let mut entries = Vec::with_capacity(count.min(keep));
        for _ in 0..count {
            let key = self.str16("metadata key")?;
            if key.is_empty() {
                return Err(ProtocolError::InvalidString { frame: self.frame, field: "metadata key", reason: "empty" });
            }
            let value = self.bytes16()?;
            if entries.len() < keep {
                entries.push((key, value));
            }
        }
        Ok(Metadata(entries))
    }

    fn rest(self) -> Bytes {
        self.buf
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed { frame: self.frame, reason: "trailing bytes after the last field" })
        }
    }
}
