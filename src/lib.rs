//! # wharf
//!
//! Local inter-process communication for Rust: request/response,
//! notifications, publish/subscribe and streaming calls between processes
//! on one machine.
//!
//! This facade re-exports the pieces by feature. Today it holds the
//! protocol core, [`core`] (also re-exported at the top level); the runtime
//! adapters (tokio, smol, async-std, mio) join it as they land.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use wharf_core as core;
pub use wharf_core::*;
