//! # wharf
//!
//! Local inter-process communication for Rust: request/response,
//! notifications, publish/subscribe and streaming calls between processes
//! on one machine, over Unix domain sockets, Windows named pipes or TCP,
//! on the runtime you already use.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo() -> Result<(), wharf::Error> {
//! use wharf::{Context, Error, Router};
//!
//! let router = Router::new().unary("greet", |name: String, _: Context| async move {
//!     Ok::<_, Error>(format!("hello, {name}"))
//! });
//! let server = wharf::tokio::server().router(router).bind("greeter").await?;
//!
//! let client = wharf::tokio::connect("greeter").await?;
//! let reply: String = client.call("greet", "world").await?;
//! assert_eq!(reply, "hello, world");
//! server.shutdown("done", None).await;
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - the endpoint API (this crate's top level, from `wharf-async`):
//!   [`Router`], [`Context`], [`Session`]/[`Client`], [`Server`],
//!   [`Subscription`], streaming [`Sender`]/[`Receiver`], [`Error`];
//! - one module per runtime: [`tokio`] (feature `tokio`, on by default),
//!   `smol` (feature `smol`), `async_std` (feature `async-std`); any
//!   of them can be enabled together, and a client of one runtime talks to
//!   a server of another;
//! - [`core`]: the sans-IO protocol state machine, for driving wharf from
//!   your own event loop;
//! - [`transport`]: endpoint names, safe socket binding, peer credentials.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use wharf_core as core;
pub use wharf_transport as transport;

#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub use wharf_async::*;

/// wharf on tokio: [`connect`](tokio::connect), [`client`](tokio::client),
/// [`server`](tokio::server), and plain byte streams in [`net`](tokio::net).
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use wharf_tokio::*;
}

/// wharf on smol: [`connect`](smol::connect), [`client`](smol::client),
/// [`server`](smol::server) on smol's global executor,
/// [`backend_on`](smol::backend_on) for an executor of yours, and plain byte
/// streams in [`net`](smol::net).
#[cfg(feature = "smol")]
pub mod smol {
    pub use wharf_smol::*;
}

/// wharf on async-std: [`connect`](async_std::connect),
/// [`client`](async_std::client), [`server`](async_std::server), and plain
/// byte streams in [`net`](async_std::net) (shared with `wharf::smol`).
#[cfg(feature = "async-std")]
pub mod async_std {
    pub use wharf_async_std::*;
}

/// wharf without an async runtime: a [`Server`](mio::Server) driven from
/// your own `mio::Poll`, single connections ([`Conn`](mio::Conn)), and the
/// blocking [`Client`](mio::Client).
#[cfg(feature = "mio")]
pub mod mio {
    pub use wharf_mio::*;
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(all(doctest, feature = "tokio", feature = "smol", feature = "async-std", feature = "mio"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
