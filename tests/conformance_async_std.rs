//! The conformance suite on the async-std adapter, over Unix sockets, TCP
//! and (on Windows, and under Wine in CI) named pipes through the pipe
//! reactor.

#[macro_use]
mod conformance;

conformance_everywhere!(async_std, conformance::adapters::AsyncStd);
