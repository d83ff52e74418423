//! What a [`Connection`](crate::Connection) tells its driver.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{AckError, CallError, ConnectionError};
use crate::text::Text;
use crate::wire::{CallKind, Code, Metadata, SlowConsumerPolicy, TraceId};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type! {
    /// Identifies a call (unary or streaming). Calls we make and calls we
    /// serve never share an id: clients use odd ids, servers even ones.
    RequestId
}
id_type! {
    /// Identifies a subscription of one client connection.
    SubscriptionId
}
id_type! {
    /// Identifies a publish that asked for an acknowledgement.
    PublishId
}

/// The receive limits a peer announced in the handshake. We never send it
/// more than these allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest frame body the peer accepts.
    pub max_frame_size: u32,
    /// Calls the peer serves concurrently.
    pub max_in_flight: u32,
    /// Streaming calls the peer serves concurrently.
    pub max_streams: u32,
    /// Subscriptions the peer allows (0 when the peer is a client).
    pub max_subscriptions: u32,
    /// Credit the peer grants each new stream, in bytes.
    pub initial_stream_window: u32,
}

/// Why a server refuses a client's HELLO (an auth hook's verdict): the
/// code, reason and retry hint of the REJECT frame, as
/// [`Connection::reject`](crate::Connection::reject) sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthReject {
    /// Code sent in the REJECT (default `AUTH_FAILED`).
    pub code: Code,
    /// Reason sent to the client.
    pub reason: String,
    /// When the client may try again.
    pub retry_after: Option<Duration>,
}

impl AuthReject {
    /// `AUTH_FAILED` with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        AuthReject { code: Code::AUTH_FAILED, reason: reason.into(), retry_after: None }
    }

    /// Another code.
    pub fn with_code(mut self, code: Code) -> Self {
        self.code = code;
        self
    }

    /// A retry hint.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// A client's HELLO, for the server to accept or reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// Protocol version that will be used if accepted.
    pub version: u16,
    /// The client's name.
    pub client_name: Text,
    /// The client's authentication payload (opaque to wharf).
    pub auth: Bytes,
    /// The client's receive limits.
    pub limits: PeerLimits,
}

/// The handshake completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The id the server gave this connection.
    pub connection_id: u64,
    /// Protocol version in use.
    pub version: u16,
    /// The peer's name.
    pub peer_name: Text,
    /// The peer's receive limits.
    pub peer_limits: PeerLimits,
    /// Keepalive interval in use, if any.
    pub keepalive: Option<Duration>,
}

/// A call the peer made to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingCall {
    /// Call id; answer with [`respond`](crate::Connection::respond) or
    /// [`respond_error`](crate::Connection::respond_error).
    pub id: RequestId,
    /// Shape of the call.
    pub kind: CallKind,
    /// Method name.
    pub method: Text,
    /// Request payload.
    pub payload: Bytes,
    /// Metadata.
    pub metadata: Metadata,
    /// Trace id, if the caller sent one.
    pub trace_id: Option<TraceId>,
    /// When the caller stops waiting, on our clock (the relative deadline
    /// sent by the caller, counted from when the frame was read).
    pub deadline: Option<Instant>,
}

/// A notification (one-way message) from the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingNotification {
    /// Method name.
    pub method: Text,
    /// Payload.
    pub payload: Bytes,
    /// Metadata.
    pub metadata: Metadata,
    /// Trace id.
    pub trace_id: Option<TraceId>,
}

/// Why a call we were serving ended without our response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The caller sent CANCEL.
    Peer,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The connection ended.
    ConnectionLost(ConnectionError),
}

/// Output of a [`Connection`](crate::Connection), drained with
/// [`poll_event`](crate::Connection::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Server only: a client asks to connect; answer with
    /// [`accept`](crate::Connection::accept) or
    /// [`reject`](crate::Connection::reject) before the handshake timeout.
    HandshakeRequest(HandshakeRequest),
    /// The handshake completed; commands may be issued.
    Connected(Connected),
    /// The peer made a call.
    Request(IncomingCall),
    /// The peer sent a notification.
    Notification(IncomingNotification),
    /// A call we were serving ended early; any later answer is discarded.
    CallCancelled {
        /// Call id.
        id: RequestId,
        /// Why.
        reason: CancelReason,
    },
    /// The one outcome of a call we made: emitted exactly once per call.
    Response {
        /// Call id.
        id: RequestId,
        /// The response payload, or why there is none.
        result: Result<Bytes, CallError>,
    },
    /// A message on a streaming call. Report consumption with
    /// [`stream_consumed`](crate::Connection::stream_consumed) to return credit.
    StreamData {
        /// Call id.
        id: RequestId,
        /// The message.
        payload: Bytes,
    },
    /// The caller of a call we serve finished sending.
    StreamEnd {
        /// Call id.
        id: RequestId,
    },
    /// A stream that returned [`SendError::StreamBlocked`](crate::SendError::StreamBlocked)
    /// has credit again.
    StreamWritable {
        /// Call id.
        id: RequestId,
    },
    /// Server only: a client subscribes. Register it with the broker, then
    /// call [`accept_subscription`](crate::Connection::accept_subscription)
    /// or [`refuse_subscription`](crate::Connection::refuse_subscription).
    Subscribe {
        /// Subscription id (chosen by the client).
        id: SubscriptionId,
        /// Topic or prefix.
        topic: Text,
        /// Whether `topic` is a prefix.
        prefix: bool,
        /// What to do when this subscriber falls behind.
        policy: SlowConsumerPolicy,
    },
    /// Server only: a client ended a subscription (already acknowledged);
    /// remove it from the broker.
    Unsubscribe {
        /// Subscription id.
        id: SubscriptionId,
    },
    /// Server only: a client published. Hand it to the broker; if `ack` is
    /// set, answer with [`ack_publish`](crate::Connection::ack_publish).
    Publish {
        /// Present when the client wants an acknowledgement.
        ack: Option<PublishId>,
        /// Topic.
        topic: Text,
        /// Payload.
        payload: Bytes,
    },
    /// Client only: the outcome of [`subscribe`](crate::Connection::subscribe).
    SubscribeResult {
        /// Subscription id.
        id: SubscriptionId,
        /// Accepted, or why not.
        result: Result<(), AckError>,
    },
    /// Client only: the outcome of [`unsubscribe`](crate::Connection::unsubscribe).
    UnsubscribeResult {
        /// Subscription id.
        id: SubscriptionId,
        /// Done, or why not.
        result: Result<(), AckError>,
    },
    /// Client only: the outcome of an acknowledged
    /// [`publish`](crate::Connection::publish).
    PublishResult {
        /// Publish id.
        id: PublishId,
        /// Number of subscriptions the message was queued for, or why not.
        result: Result<u32, AckError>,
    },
    /// Client only: a published message for one of our subscriptions.
    Message {
        /// Subscription id.
        subscription: SubscriptionId,
        /// The topic it was published on.
        topic: Text,
        /// Payload.
        payload: Bytes,
    },
    /// Client only: the server dropped `dropped` messages for this
    /// subscription because we fell behind.
    Lagged {
        /// Subscription id.
        subscription: SubscriptionId,
        /// Messages lost since the previous delivery.
        dropped: u64,
    },
    /// Answer to [`ping`](crate::Connection::ping).
    Pong {
        /// The ping's id.
        id: u64,
        /// Round-trip time on the caller's clock.
        rtt: Duration,
    },
    /// The outbound queue drained below half its limit after a command
    /// returned [`SendError::Blocked`](crate::SendError::Blocked).
    Writable,
    /// The peer is closing: it starts nothing new and drains what is in
    /// flight. Our own new operations are refused from now on.
    GoodbyeReceived {
        /// Reason code.
        code: Code,
        /// Message.
        message: Text,
        /// When the peer suggests reconnecting.
        reconnect_after: Option<Duration>,
    },
    /// The connection ended; always the last event, emitted once. Keep
    /// writing until the transmit queue is empty, then close the transport.
    Closed(ConnectionError),
}

impl Event {
    /// Fixed cost charged per queued event, so that events without payload
    /// (empty notifications, acknowledgements) are bounded too.
    pub(crate) const OVERHEAD: usize = 64;

    /// Bytes this event holds while queued (counted against
    /// `max_inbound_buffered` until the event is polled): its payload and
    /// received strings, plus [`OVERHEAD`](Self::OVERHEAD).
    pub(crate) fn held_bytes(&self) -> usize {
        let meta = |m: &Metadata| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        Self::OVERHEAD
            + match self {
                Event::Request(c) => c.payload.len() + c.method.len() + meta(&c.metadata),
                Event::Notification(n) => n.payload.len() + n.method.len() + meta(&n.metadata),
                Event::StreamData { payload, .. } => payload.len(),
                Event::Publish { payload, topic, .. } | Event::Message { payload, topic, .. } => {
                    payload.len() + topic.len()
                }
                Event::Subscribe { topic, .. } => topic.len(),
                Event::Response { result: Ok(p), .. } => p.len(),
                Event::Response { result: Err(CallError::Remote { message, data, .. }), .. } => {
                    message.len() + data.len()
                }
                Event::HandshakeRequest(h) => h.auth.len() + h.client_name.len(),
                _ => 0,
            }
    }
}
