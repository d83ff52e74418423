//! # wharf-mio
//!
//! wharf for programs that own their event loop, and for plain synchronous
//! programs: no threads, no async runtime, only [mio](https://docs.rs/mio)
//! and the sans-IO protocol core.
//!
//! - [`Server`]: register a wharf listener with *your* `mio::Poll` under
//!   tokens you choose (one for the listener, a range for connections);
//!   hand it the readiness events of its tokens, ask it how long `poll` may
//!   sleep ([`Server::timeout`]), and take calls, notifications and the
//!   other events from [`Server::poll_event`]. It answers the handshake
//!   (with an optional auth hook), subscriptions and publishes itself,
//!   through the core's pub/sub broker shared by all its connections.
//! - [`Conn`]: one connection on one mio stream, for loops that manage
//!   their connections themselves (a client inside a game loop, say).
//! - [`Client`]: a blocking client (calls, notifications, subscriptions as
//!   an iterator, publishes, pings, each with a deadline) on a private
//!   `mio::Poll`; [`ReconnectingClient`] connects it again when its
//!   connection ends (capped exponential backoff with jitter, the server's
//!   hint as a lower bound, calls never re-sent unless marked idempotent,
//!   subscriptions made again with an [`Incoming::Gap`]), with the same
//!   [`ReconnectPolicy`] as the async clients.
//! - [`Listener`] and [`Stream`]: Unix sockets, TCP, and Windows named
//!   pipes (`mio::windows::NamedPipe`), bound and connected with the
//!   transport crate's safe defaults and typed errors.
//!
//! A hand-written loop serving calls and publishing:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant};
//! use mio::{Events, Poll, Token};
//! use wharf_core::{Bytes, Code, Event};
//! use wharf_mio::{Server, ServerOptions};
//!
//! let mut poll = Poll::new()?;
//! let mut server = Server::bind(&"clock".parse()?, ServerOptions::default())?;
//! server.register(poll.registry(), Token(0), 1..1025)?;
//! let mut events = Events::with_capacity(256);
//! let mut next_tick = Instant::now();
//! loop {
//!     let now = Instant::now();
//!     let until_tick = next_tick.saturating_duration_since(now);
//!     let timeout = server.timeout(now).map_or(until_tick, |t| t.min(until_tick));
//!     poll.poll(&mut events, Some(timeout))?;
//!     let now = Instant::now();
//!     for event in events.iter() {
//!         server.handle(event, now);
//!     }
//!     server.handle_timeout(now);
//!     if now >= next_tick {
//!         server.publish("clock/tick", Bytes::from_static(b"tick"));
//!         next_tick = now + Duration::from_secs(1);
//!     }
//!     while let Some(ev) = server.poll_event(now) {
//!         match ev.event {
//!             Event::Request(call) if call.method == "echo" => server.respond(ev.token, call.id, call.payload),
//!             Event::Request(call) => server.respond_error(ev.token, call.id, Code::UNKNOWN_METHOD, "no such method"),
//!             _ => {}
//!         }
//!     }
//! }
//! # }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod blocking;
mod conn;
mod error;
mod net;
mod reconnect;
mod server;

pub use blocking::{Client, ClientBuilder, Goodbye, Incoming, Messages, decode, encode};
pub use conn::Conn;
pub use error::Error;
pub use net::{BindOptions, Listener, Stream};
pub use reconnect::{ReconnectMonitor, ReconnectingClient, ReconnectingMessages};
pub use server::{AuthRequest, Server, ServerEvent, ServerOptions};
pub use wharf_core as core;
pub use wharf_core::AuthReject;
pub use wharf_core::{ConnectionState, ReconnectAttempt, ReconnectPolicy};
pub use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy, PipeOptions, Sid};
