//! The adapters the suite runs against, each compiled when the root
//! crate's feature for its runtime is on: one per runtime, and the
//! cross-runtime pairs (a server on one runtime, its clients on another,
//! both running in the same process at once).

#[cfg(feature = "smol")]
use std::cell::RefCell;
use std::future::Future;
#[cfg(feature = "smol")]
use std::sync::{Arc, Weak};

use super::Adapter;

/// wharf on tokio: a fresh two-worker runtime per test.
#[cfg(feature = "tokio")]
pub struct Tokio;

#[cfg(feature = "tokio")]
impl Adapter for Tokio {
    fn name() -> &'static str {
        "tokio"
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    }

    fn backend() -> wharf::Backend {
        wharf::tokio::backend()
    }
}

#[cfg(feature = "smol")]
thread_local! {
    /// The executor of the innermost [`with_smol_executor`] on this thread.
    static SMOL_EXECUTOR: RefCell<Weak<smol::Executor<'static>>> = const { RefCell::new(Weak::new()) };
}

/// Runs `main` while `threads` threads run a fresh smol executor (which
/// [`Smol::backend`] spawns on); then stops them and drops the executor,
/// and with it every task spawned on it.
#[cfg(feature = "smol")]
fn with_smol_executor<R>(threads: usize, main: impl FnOnce(&Arc<smol::Executor<'static>>) -> R) -> R {
    let executor = Arc::new(smol::Executor::new());
    let out = std::thread::scope(|scope| {
        // Dropped when `main` returns or unwinds: the threads then stop.
        let (_stop, stopped) = smol::channel::bounded::<()>(1);
        for _ in 0..threads {
            let (executor, stopped) = (executor.clone(), stopped.clone());
            scope.spawn(move || smol::block_on(executor.run(stopped.recv())));
        }
        let outer = SMOL_EXECUTOR.replace(Arc::downgrade(&executor));
        let out = main(&executor);
        SMOL_EXECUTOR.set(outer);
        out
    });
    drop(executor);
    out
}

/// wharf on smol with an executor of the test's own (`backend_on`): a fresh
/// executor per test, run by the test's thread and one more.
#[cfg(feature = "smol")]
pub struct Smol;

#[cfg(feature = "smol")]
impl Adapter for Smol {
    fn name() -> &'static str {
        "smol"
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        with_smol_executor(1, |executor| smol::block_on(executor.run(future)))
    }

    fn backend() -> wharf::Backend {
        let executor = SMOL_EXECUTOR.with(|e| e.borrow().upgrade()).expect("called inside Smol::block_on");
        wharf::smol::backend_on(&executor)
    }
}

/// wharf on async-std: its global executor (async-std has no other), so
/// tasks of one test may outlive it.
#[cfg(feature = "async-std")]
pub struct AsyncStd;

#[cfg(feature = "async-std")]
impl Adapter for AsyncStd {
    fn name() -> &'static str {
        "async-std"
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        async_std::task::block_on(future)
    }

    fn backend() -> wharf::Backend {
        wharf::async_std::backend()
    }
}

/// What `block_on` of a cross-runtime pair must provide for an adapter's
/// backend to work: a tokio runtime context, a smol executor.
#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
pub trait Needs: Adapter {
    /// `backend()` needs to be called inside a tokio runtime.
    const TOKIO: bool = false;
    /// `backend()` needs [`with_smol_executor`].
    const SMOL_EXECUTOR: bool = false;
}

#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
impl Needs for Tokio {
    const TOKIO: bool = true;
}

#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
impl Needs for Smol {
    const SMOL_EXECUTOR: bool = true;
}

#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
impl Needs for AsyncStd {}

/// Runs `future` with what both runtimes of a pair need: a tokio runtime,
/// a smol executor (run by two more threads beside tokio's), both, or
/// neither (async-std needs nothing).
#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
fn cross_block_on<S: Needs, C: Needs, F: Future>(future: F) -> F::Output {
    match (S::TOKIO || C::TOKIO, S::SMOL_EXECUTOR || C::SMOL_EXECUTOR) {
        (true, true) => with_smol_executor(2, |_| Tokio::block_on(future)),
        (true, false) => Tokio::block_on(future),
        (false, true) => Smol::block_on(future),
        (false, false) => AsyncStd::block_on(future),
    }
}

/// Defines a cross-runtime pair: servers (and the case's tasks) on the
/// first adapter, clients on the second.
#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
macro_rules! cross_pair {
    ($pair:ident: $server:ident server, $client:ident client) => {
        #[doc = concat!("A ", stringify!($server), " server, ", stringify!($client), " clients.")]
        pub struct $pair;

        impl Adapter for $pair {
            fn name() -> &'static str {
                concat!(stringify!($server), " server, ", stringify!($client), " client")
            }

            fn block_on<F: Future>(future: F) -> F::Output {
                cross_block_on::<$server, $client, F>(future)
            }

            fn backend() -> wharf::Backend {
                $server::backend()
            }

            fn client_backend() -> wharf::Backend {
                $client::backend()
            }
        }
    };
}

#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
mod pairs {
    use super::*;

    cross_pair!(TokioServerSmolClient: Tokio server, Smol client);
    cross_pair!(TokioServerAsyncStdClient: Tokio server, AsyncStd client);
    cross_pair!(SmolServerTokioClient: Smol server, Tokio client);
    cross_pair!(SmolServerAsyncStdClient: Smol server, AsyncStd client);
    cross_pair!(AsyncStdServerTokioClient: AsyncStd server, Tokio client);
    cross_pair!(AsyncStdServerSmolClient: AsyncStd server, Smol client);
}

// Only the cross-runtime test binary uses them.
#[cfg(all(feature = "tokio", feature = "smol", feature = "async-std"))]
#[allow(unused_imports)]
pub use pairs::*;
