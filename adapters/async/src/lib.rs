//! # wharf-async
//!
//! The wharf endpoint for async Rust, written once: clients, servers,
//! routers of typed handlers, subscriptions as streams, streaming calls as
//! `Stream`/`Sink`, graceful shutdown. A runtime adapter (`wharf-tokio`,
//! `wharf-smol`, ...) supplies a [`Runtime`] (spawn, timers) and a
//! [`Network`] (connect, bind); nothing else here knows which runtime runs it.
//!
//! One driver task per connection runs the protocol state
//! ([`wharf_core::Connection`]) and the socket, both behind one lock;
//! handles lock the state for a moment to issue a command and wake the
//! driver, which writes with vectored writes, never flushing per message.
//! A handle that queues output while the driver is idle writes it itself
//! when the stream allows ([`ByteStream::try_write_vectored`]), sparing
//! the driver a wake-up.
//!
//! [`ReconnectingClient`] keeps a client connected across server restarts:
//! capped exponential backoff with jitter, calls never re-sent unless marked
//! idempotent, subscriptions made again with a [`ReconnectEvent::Gap`].

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod api;
mod backend;
mod client;
mod codec;
mod error;
mod io;
mod reconnect;
mod router;
mod runtime;
mod server;
mod session;
mod stream;

pub use api::{Client, RawSubscription, Session, Subscription, SubscriptionEvent};
pub use backend::{Backend, BindOptions, ConnectFuture, ConnectedStream, IntoEndpoint, Network};
pub use client::ClientBuilder;
pub use codec::{CONTENT_TYPE, Codec};
pub use error::Error;
pub use io::{ByteListener, ByteStream, FuturesIo};
pub use reconnect::{ReconnectEvent, ReconnectingClient, ReconnectingSubscription};
// The policy and its delays are wharf-core's (shared with wharf-mio's
// blocking `ReconnectingClient`).
pub use router::{Context, Router};
pub use runtime::{BoxFuture, Runtime, Timer};
pub use server::{AuthRequest, Server, ServerBuilder, SessionInfo};
pub use session::Goodbye;
pub use stream::{Receiver, ResponseFuture, Sender};
pub use wharf_core::AuthReject;
pub use wharf_core::{ConnectionState, ReconnectAttempt, ReconnectPolicy};
pub use wharf_core::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_HANDSHAKES};

pub use wharf_core::broker::{BrokerConfig, BrokerStats, PublishReport};
pub use wharf_core::{
    CallKind, CallOptions, Code, Config, ConnectionError, Metadata, SlowConsumerPolicy, SubscribeOptions, Timeout,
};
pub use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy, PipeOptions, Sid, TcpOptions, UnixBindOptions};
