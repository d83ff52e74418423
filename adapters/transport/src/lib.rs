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
//!   [`PipeOptions`]: how many instances a pipe may have;
//!   `create_pipe_instance` and `open_pipe_client` (Windows): pipe handles
//!   with wharf's security settings, for runtimes without pipe types of
//!   their own.
//! - [`Sid`]: Windows security identifiers; `pipe_client_identity` and
//!   `pipe_server_identity` (Windows): the pid and token user SID of the
//!   process at the other end of a pipe, which the [`PeerPolicy`] judges
//!   (default: the server's own user, or LocalSystem).
//! - [`recv_buf`]: one `recv` straight into a `BytesMut`'s spare capacity.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod endpoint;
mod error;
#[cfg(windows)]
mod pipe_security;
mod policy;
mod recv;
mod sid;
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
pub use policy::check_server;
pub use recv::recv_buf;
pub use sid::Sid;
pub use tcp::{TcpOptions, bind_tcp, configure_accepted_tcp, configure_tcp_stream, require_auth_for_remote, resolve};
#[cfg(unix)]
pub use unix::{SocketFileGuard, bind_unix, connect_unix_within, lock_path, peer_credentials};
#[cfg(windows)]
pub use windows::{
    ERROR_PIPE_BUSY, create_pipe_instance, current_user_sid, open_pipe_client, pipe_client_identity, pipe_create_error,
    pipe_server_identity, process_identity, process_sid,
};

/// Typed errors for failed connects.
pub mod connect_error {
    pub use crate::tcp::connect_error as tcp;
    #[cfg(unix)]
    pub use crate::unix::connect_error as unix;
    #[cfg(windows)]
    pub use crate::windows::connect_error as pipe;
}

/// Who is at the other end, as the kernel reports it at accept (or
/// connect) time. Which fields are known depends on the transport and OS:
/// uid/gid (Unix sockets), pid (Linux Unix sockets, Windows pipes), user
/// SID (Windows pipes), address (TCP).
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
    /// The user SID of the peer process's token (Windows named pipes),
    /// read once when the connection is made; `None` when it could not be
    /// read (refused by every [`PeerPolicy`] but [`PeerPolicy::any`]).
    pub sid: Option<Sid>,
}

/// Retry policy for `ERROR_PIPE_BUSY` (every pipe instance taken): retry
/// with growing pauses, never past the caller's deadline. On Windows,
/// `after_open_error` applies it to a failed open.
#[derive(Clone, Debug)]
pub struct PipeRetry {
    start: Instant,
    deadline: Instant,
    attempt: u32,
    /// The pipe was found busy at least once: it existed, so finding it
    /// missing later means its server is restarting.
    #[cfg_attr(not(windows), allow(dead_code))]
    seen_busy: bool,
}

impl PipeRetry {
    /// Retries until `timeout` has passed since `now`.
    pub fn new(now: Instant, timeout: Duration) -> PipeRetry {
        PipeRetry { start: now, deadline: now + timeout, attempt: 0, seen_busy: false }
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

/// The largest instance limit Windows accepts for a named pipe
/// (`nMaxInstances`; 255 means unlimited).
pub const MAX_PIPE_INSTANCES: usize = 254;

/// How a named-pipe server creates its instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeOptions {
    /// Most instances of the pipe at once (`nMaxInstances`): every
    /// connected client holds one, and the server keeps one more waiting
    /// for the next client. When all are in use the server creates no
    /// more until one is freed, and clients get `ERROR_PIPE_BUSY`, which
    /// they retry until their connect deadline. 1 to
    /// [`MAX_PIPE_INSTANCES`] (the default, 254: the largest bound Windows
    /// offers, so the handles a pipe server holds are bounded without
    /// lowering the concurrency of ordinary local services), or
    /// [`PipeOptions::UNLIMITED`]. The limit is fixed by the pipe's first
    /// instance.
    pub max_instances: usize,
}

impl PipeOptions {
    /// No instance limit (`PIPE_UNLIMITED_INSTANCES`): deliberately loose;
    /// connections are then bounded only by the server's connection limits.
    pub const UNLIMITED: usize = usize::MAX;

    /// The `nMaxInstances` value for pipe `name`, or
    /// [`TransportError::InvalidPipeInstances`] naming it and the value.
    pub fn instance_limit(&self, name: &str) -> Result<u32, TransportError> {
        match self.max_instances {
            PipeOptions::UNLIMITED => Ok(255),
            n @ 1..=MAX_PIPE_INSTANCES => Ok(n as u32),
            requested => Err(TransportError::InvalidPipeInstances { pipe: name.to_string(), requested }),
        }
    }
}

impl Default for PipeOptions {
    fn default() -> Self {
        PipeOptions { max_instances: MAX_PIPE_INSTANCES }
    }
}

/// How long a pipe server whose instances are all in use
/// ([`TransportError::PipeFull`]) waits before trying to create the next
/// one again: it learns of a freed instance only by trying (handles close
/// asynchronously), so it retries at this pace instead of spinning.
pub const PIPE_FULL_RETRY: Duration = Duration::from_millis(20);

/// How long accepting pauses after the OS refused a connection for another
/// reason (EMFILE and the like), instead of spinning on the listener.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a server's accept loop pauses after accepting on `endpoint`
/// failed with `e` (then it tries again): [`PIPE_FULL_RETRY`] when every
/// pipe instance is in use (the normal state of a full pipe server,
/// logged at trace level), [`ACCEPT_BACKOFF`] otherwise (logged as a
/// warning).
pub fn accept_pause(endpoint: &Endpoint, e: &std::io::Error) -> Duration {
    if let Some(TransportError::PipeFull { .. }) = TransportError::from_io(e) {
        tracing::trace!(%endpoint, "wharf: every pipe instance in use; waiting for one to be freed");
        return PIPE_FULL_RETRY;
    }
    tracing::warn!(error = %e, %endpoint, "wharf: accept failed; pausing accepts");
    ACCEPT_BACKOFF
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
