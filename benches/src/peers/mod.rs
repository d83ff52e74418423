//! Other IPC stacks measured beside wharf and the floors, each behind its
//! cargo feature (off by default, so the default build needs no system
//! library):
//!
//! - [`tarpc`] (feature `tarpc`): tarpc over a Unix socket, bincode;
//! - [`zmq`] (feature `zmq`): ZeroMQ over `ipc://`, through the `zmq`
//!   crate and the system's libzmq (Debian: `libzmq3-dev`).

#[cfg(feature = "tarpc")]
pub mod tarpc;
#[cfg(feature = "zmq")]
pub mod zmq;
