//! The conformance suite on the tokio adapter, over Unix sockets, TCP and
//! (on Windows, and under Wine in CI) named pipes.

#[macro_use]
mod conformance;

conformance_everywhere!(tokio, conformance::adapters::Tokio);
