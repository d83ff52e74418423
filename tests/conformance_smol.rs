//! The conformance suite on the smol adapter (a fresh executor of the
//! test's own, `wharf::smol::backend_on`), over Unix sockets, TCP and (on
//! Windows, and under Wine in CI) named pipes through the pipe reactor.

#[macro_use]
mod conformance;

conformance_everywhere!(smol, conformance::adapters::Smol);
