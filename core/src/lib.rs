//! # wharf-core
//!
//! The wharf protocol as a pure state machine. No sockets, no files, no
//! threads, no runtime, no clock: bytes and `now` go in; bytes, deadlines
//! and events come out. Adapters (tokio, smol, async-std, mio, or your own
//! loop) move the bytes; this crate decides what they mean.
//!
//! - [`Connection`]: one peer, client or server. Handshake, calls in both
//!   directions with deadlines and cancellation, notifications, streams
//!   with credit-based flow control, pub/sub (client side and the server's
//!   per-connection half), keepalive, graceful close with a reconnect hint.
//! - [`broker::Broker`]: the server's fan-out of publishes to every
//!   subscribed connection, with a bounded queue per subscriber and a
//!   slow-consumer policy per subscription.
//! - [`wire`]: the frame format, specified language-neutrally in
//!   `PROTOCOL.md`.
//! - [`Config`]: every limit, each with a safe default and enforced here.
//! - [`reconnect`]: when a reconnecting client tries again
//!   ([`ReconnectPolicy`], [`Backoff`]): the delays, the server's hint as a
//!   lower bound, when to give up; the clients that wait live in the
//!   adapters.
//!
//! See [`Connection`] for the driving contract and a complete in-memory
//! example.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admission;
pub mod broker;
mod config;
mod conn;
mod error;
mod event;
pub mod reconnect;
mod stats;
mod text;
pub mod wire;

pub use admission::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_HANDSHAKES, HandshakeGate, PerUserLimit};
pub use bytes::{Bytes, BytesMut};
pub use config::{Config, MAX_TIMEOUT, MIN_KEEPALIVE};
pub use conn::{CallOptions, Connection, Role, SubscribeOptions, Timeout};
pub use error::{AckError, CallError, ConfigError, ConnectionError, ProtocolError, SendError};
pub use event::{
    AuthReject, CancelReason, Connected, Event, HandshakeRequest, IncomingCall, IncomingNotification, PeerLimits,
    PublishId, RequestId, SubscriptionId,
};
pub use reconnect::{Backoff, ConnectionState, ReconnectAttempt, ReconnectPolicy};
pub use stats::Stats;
pub use text::Text;
pub use wire::{CallKind, Code, MessageBatch, Metadata, SlowConsumerPolicy, TraceId};
