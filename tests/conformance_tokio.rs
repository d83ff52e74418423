//! The conformance suite on the tokio adapter, over Unix sockets, TCP and
//! (on Windows, and under Wine in CI) named pipes.

#[macro_use]
mod conformance;

use std::future::Future;

use conformance::Adapter;

/// wharf on tokio: a fresh two-worker runtime per test.
struct TokioAdapter;

impl Adapter for TokioAdapter {
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

#[cfg(unix)]
conformance!(tokio_unix, TokioAdapter, Unix);
conformance!(tokio_tcp, TokioAdapter, Tcp);
#[cfg(windows)]
conformance!(tokio_pipe, TokioAdapter, Pipe);
