//! # wharf-async-std
//!
//! wharf on async-std. async-std is discontinued upstream (RUSTSEC-2025-0052);
//! this crate stays a thin layer so programs that still embed it can use
//! wharf: tasks are spawned with `async_std::task::spawn`, and everything
//! else (sockets, timers, Windows named pipes) is `wharf-smol`'s async-io
//! code, which async-std itself runs on.
//!
//! ## Threads
//!
//! wharf-async-std starts no thread of its own. async-std starts its global
//! executor's threads on the first spawn; async-io starts its `async-io`
//! reactor thread on the first socket or timer; on Windows the first named
//! pipe starts the `wharf-pipe-reactor` thread (see `wharf-smol`).
//!
//! ```no_run
//! # fn main() -> Result<(), wharf_async::Error> { async_std::task::block_on(async {
//! use wharf_async::{Context, Error, Router};
//!
//! let router = Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) });
//! let server = wharf_async_std::server().router(router).bind("calculator").await?;
//!
//! let client = wharf_async_std::connect("calculator").await?;
//! let sum: i64 = client.call("add", &(2, 3)).await?;
//! assert_eq!(sum, 5);
//! server.shutdown("bye", None).await;
//! # Ok(()) }) }
//! ```

#![deny(missing_docs)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use wharf_async::{Backend, BoxFuture, Runtime, Timer};
use wharf_smol::AsyncIoTimer;

/// Plain byte streams over every endpoint: `wharf-smol`'s async-io ones,
/// which async-std programs use as they are.
pub mod net {
    pub use wharf_smol::net::{AsyncIoNetwork, Listener, Stream};
}

/// [`Runtime`] on async-std: `async_std::task::spawn`, async-io timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

impl Runtime for AsyncStdRuntime {
    fn spawn(&self, future: BoxFuture) {
        // Dropping the handle detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn timer(&self, deadline: Instant) -> Pin<Box<dyn Timer>> {
        Box::pin(AsyncIoTimer::at(deadline))
    }
}

/// The async-std backend. Usable from any thread.
pub fn backend() -> Backend {
    Backend { runtime: Arc::new(AsyncStdRuntime), network: Arc::new(net::AsyncIoNetwork) }
}

wharf_smol::entry_points!("on async-std");
