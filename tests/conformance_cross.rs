//! The conformance suite across runtimes: the server on one, its clients on
//! another, both runtimes running in the one test process at once; every
//! ordered pair of tokio, smol and async-std. Over Unix sockets, TCP and
//! (on Windows, and under Wine in CI) named pipes, where each side uses its
//! own adapter's pipes (tokio's, or the pipe reactor).

#[macro_use]
mod conformance;

use conformance::adapters::*;

conformance_everywhere!(tokio_server_smol_client, TokioServerSmolClient);
conformance_everywhere!(tokio_server_async_std_client, TokioServerAsyncStdClient);
conformance_everywhere!(smol_server_tokio_client, SmolServerTokioClient);
conformance_everywhere!(smol_server_async_std_client, SmolServerAsyncStdClient);
conformance_everywhere!(async_std_server_tokio_client, AsyncStdServerTokioClient);
conformance_everywhere!(async_std_server_smol_client, AsyncStdServerSmolClient);
