//! # wharf-smol
//!
//! wharf on smol (async-io). Everything protocol- and endpoint-related
//! lives in `wharf-core` and `wharf-async`; this crate supplies spawning
//! (smol's global executor, or an executor of yours), async-io timers, and
//! async-io sockets, plus Windows named pipes through `wharf-pipe-reactor`:
//!
//! - [`connect`], [`client`], [`server`]: the wharf endpoint, spawning on
//!   smol's global executor ([`backend`]);
//! - [`backend_on`]: the same on an `Executor` you run;
//! - [`net::Listener`] and [`net::Stream`]: plain byte streams over the same
//!   endpoints for programs that only want the socket.
//!
//! ## Threads
//!
//! wharf-smol starts no thread of its own on Unix. What does start:
//! - smol's global executor threads (`smol-1`.., `SMOL_THREADS`, default
//!   one), by smol, the first time [`backend`]'s runtime spawns; none with
//!   [`backend_on`];
//! - async-io's `async-io` reactor thread, by async-io, the first time a
//!   socket or timer is used; it drives I/O while no thread is inside
//!   `smol::block_on`;
//! - smol's blocking pool, only to resolve a TCP host name (an IP address
//!   needs none);
//! - on Windows, the `wharf-pipe-reactor` thread (one per process) the
//!   first time a named pipe is bound or connected.
//!
//! None of them needs a "current runtime": the backend works from any
//! thread, inside tokio or async-std as well.
//!
//! ```no_run
//! # fn main() -> Result<(), wharf_async::Error> { smol::block_on(async {
//! use wharf_async::{Context, Error, Router};
//!
//! let router = Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) });
//! let server = wharf_smol::server().router(router).bind("calculator").await?;
//!
//! let client = wharf_smol::connect("calculator").await?;
//! let sum: i64 = client.call("add", &(2, 3)).await?;
//! assert_eq!(sum, 5);
//! server.shutdown("bye", None).await;
//! # Ok(()) }) }
//! ```

#![deny(missing_docs)]

pub mod net;
mod runtime;

use std::sync::Arc;

pub use runtime::{AsyncIoTimer, SmolRuntime};
use smol::Executor;
use wharf_async::Backend;

/// The smol backend: spawns on smol's global executor, async-io sockets
/// and timers. Usable from any thread.
pub fn backend() -> Backend {
    Backend { runtime: Arc::new(SmolRuntime::global()), network: Arc::new(net::AsyncIoNetwork) }
}

/// The smol backend spawning on `executor`, which you run (for example
/// `smol::block_on(executor.run(main))`). Held weakly: dropping the
/// executor drops wharf's tasks with it.
pub fn backend_on(executor: &Arc<Executor<'static>>) -> Backend {
    Backend { runtime: Arc::new(SmolRuntime::with_executor(executor)), network: Arc::new(net::AsyncIoNetwork) }
}

entry_points!("on smol's global executor");

/// Defines an async-io adapter's `client`, `connect` and `server` over the
/// `backend()` in scope (written once for wharf-smol and wharf-async-std).
#[doc(hidden)]
#[macro_export]
macro_rules! entry_points {
    ($on:literal) => {
        #[doc = concat!("A client builder ", $on, ".")]
        pub fn client() -> $crate::__private::ClientBuilder {
            $crate::__private::ClientBuilder::new(backend())
        }

        #[doc = concat!("Connects to `endpoint` with default settings, ", $on, ".")]
        pub async fn connect(
            endpoint: impl $crate::__private::IntoEndpoint,
        ) -> Result<$crate::__private::Client, $crate::__private::Error> {
            client().connect(endpoint).await
        }

        #[doc = concat!("A server builder ", $on, ".")]
        pub fn server() -> $crate::__private::ServerBuilder {
            $crate::__private::ServerBuilder::new(backend())
        }
    };
}

/// What [`entry_points!`] names, for the crates that use it.
#[doc(hidden)]
pub mod __private {
    pub use wharf_async::{Client, ClientBuilder, Error, IntoEndpoint, ServerBuilder};
}
