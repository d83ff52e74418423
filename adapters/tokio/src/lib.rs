//! # wharf-tokio
//!
//! wharf on tokio. Everything protocol- and endpoint-related lives in
//! `wharf-core` and `wharf-async`; this crate supplies tokio's spawn and
//! timers, and tokio sockets and pipes:
//!
//! - [`connect`], [`client`], [`server`]: the wharf endpoint on tokio;
//! - [`net::Listener`] and [`net::Stream`]: plain byte streams over the same
//!   endpoints (Unix sockets, TCP, Windows named pipes) for programs that
//!   only want the socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wharf_async::Error> {
//! use wharf_async::{Context, Error, Router};
//!
//! let router = Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) });
//! let server = wharf_tokio::server().router(router).bind("calculator").await?;
//!
//! let client = wharf_tokio::connect("calculator").await?;
//! let sum: i64 = client.call("add", &(2, 3)).await?;
//! assert_eq!(sum, 5);
//! server.shutdown("bye", None).await;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
// `unsafe` only in `net::create_pipe` (tokio's raw security-attributes
// pipe constructor); everything else is safe code.
#![deny(unsafe_code)]

pub mod net;
mod runtime;

use std::sync::Arc;

pub use runtime::TokioRuntime;
use wharf_async::{Backend, Client, ClientBuilder, Error, IntoEndpoint, ServerBuilder};

/// The tokio backend (runtime and network) bound to the current runtime.
///
/// # Panics
/// Outside a tokio runtime.
pub fn backend() -> Backend {
    Backend { runtime: Arc::new(TokioRuntime::current()), network: Arc::new(net::TokioNetwork) }
}

/// A client builder on the current tokio runtime.
pub fn client() -> ClientBuilder {
    ClientBuilder::new(backend())
}

/// Connects to `endpoint` with default settings.
pub async fn connect(endpoint: impl IntoEndpoint) -> Result<Client, Error> {
    client().connect(endpoint).await
}

/// A server builder on the current tokio runtime.
pub fn server() -> ServerBuilder {
    ServerBuilder::new(backend())
}
