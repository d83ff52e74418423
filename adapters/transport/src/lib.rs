//! # wharf-transport
//!
//! The operating-system side of wharf, with no async runtime: what every
//! adapter (tokio, smol, async-std, mio) needs and must not write twice.
//!
//! - [`Endpoint`]: Unix socket paths, Windows pipe names, TCP addresses and
//!   portable short names that map to a per-user private directory (Unix)
//!   or a per-user pipe name (Windows), with typed errors for names the OS
//!   would refuse or truncate ([`check_unix_path`]).
//! - [`bind_unix`] (Unix): mode 0600 before the socket is reachable, a lock
//!   so two servers never race, a live server never displaced, a stale file
//!   left by a crashed server reclaimed; [`peer_credentials`] read from the
//!   kernel at accept time, and the [`PeerPolicy`] servers judge them by
//!   (default: the server's own uid, or root).
//! - [`bind_tcp`]: loopback-only unless the caller opts in;
//!   [`require_auth_for_remote`]: servers on other addresses need an auth hook.
//! - [`PipeRetry`]: the bounded retry policy for busy named pipes;
//!   `create_pipe_instance` and `open_pipe_client` (Windows): pipe handles
//!   with wharf's security settings, for runtimes without pipe types of
//!   their own.
//! - [`recv_buf`]: one `recv` straight into a `BytesMut`'s spare capacity.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod endpoint;
mod error;
#[cfg(windows)]
mod pipe_security;
mod policy;
mod recv;
mod tcp;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[cfg(unix)]
pub use endpoint::runtime_dir;
pub use endpoint::{Endpoint, MAX_PIPE_NAME, PIPE_PREFIX, SUN_PATH_LEN, check_unix_path};
pub use error::TransportError;
#[cfg(windows)]
pub use pipe_security::{PipeSecurity, dacl_sddl, pipe_security, with_pipe_security_attributes};
pub use policy::PeerPolicy;
pub use recv::recv_buf;
pub use tcp::{TcpOptions, bind_tcp, configure_accepted_tcp, configure_tcp_stream, require_auth_for_remote, resolve};
#[cfg(unix)]
pub use unix::{SocketFileGuard, bind_unix, connect_unix_within, lock_path, peer_credentials};
#[cfg(windows)]
pub use windows::{
    ERROR_PIPE_BUSY, create_pipe_instance, open_pipe_client, pipe_client_identity, pipe_server_identity,
};

/// Typed errors for failed connects.
pub mod connect_error {
    pub use crate::tcp::connect_error as tcp;
    #[cfg(unix)]
    pub use crate::unix::connect_error as unix;
    #[cfg(windows)]
    pub use crate::windows::connect_error as pipe;
}

/// Who is at the other end, as the kernel reports it at accept time. Which
/// fields are known depends on the transport and OS: uid/gid (Unix
/// sockets), pid (Linux Unix sockets, Windows pipes), address (TCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// User id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
    /// Process id (advisory: ids are reused).
    pub pid: Option<u32>,
    /// Remote address (TCP).
    pub addr: Option<SocketAddr>,
}

/// Retry policy for `ERROR_PIPE_BUSY` (every pipe instance taken): retry
/// with growing pauses, never past the caller's deadline.
#[derive(Clone, Debug)]
pub struct PipeRetry {
    start: Instant,
    deadline: Instant,
    attempt: u32,
}

impl PipeRetry {
    /// Retries until `timeout` has passed since `now`.
    pub fn new(now: Instant, timeout: Duration) -> PipeRetry {
        PipeRetry { start: now, deadline: now + timeout, attempt: 0 }
    }

    /// How long to wait before the next attempt, or `None` when the
    /// deadline leaves no room for another one.
    pub fn next_delay(&mut self, now: Instant) -> Option<Duration> {
        if now >= self.deadline {
            return None;
        }
        let step = Duration::from_millis(1u64 << self.attempt.min(6)).min(Duration::from_millis(50));
        self.attempt += 1;
        Some(step.min(self.deadline - now))
    }

    /// Time spent so far.
    pub fn waited(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }
}

/// How to bind a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixBindOptions {
    /// Permission bits of the socket file, in force before any client can
    /// connect. Default `0o600` (owner only).
    pub mode: u32,
    /// `listen` backlog. Default 1024.
    pub backlog: i32,
    /// Remove a stale socket file (one nobody listens on) left by a server
    /// that died. A live server is never displaced. Default true.
    pub reclaim_stale: bool,
    /// Create the parent directory (mode 0700) if it is missing; only the
    /// last component is created. Default true.
    pub create_parent: bool,
}

impl Default for UnixBindOptions {
    fn default() -> Self {
        UnixBindOptions { mode: 0o600, backlog: 1024, reclaim_stale: true, create_parent: true }
    }
}
