use std::io;
use std::path::PathBuf;

/// Why an endpoint could not be named, bound or reached. Every variant names
/// the path, pipe or address involved and, where one applies, the limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A Unix socket path is too long for `sockaddr_un`.
    #[error(
        "Unix socket path {path:?} is {len} bytes; on this OS it must be shorter than {limit} bytes \
         (use a shorter directory, or a relative path)"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// `sizeof(sun_path)` on this OS (the path needs one byte less, for the NUL).
        limit: usize,
    },
    /// An endpoint string or short name is not acceptable.
    #[error("invalid endpoint {input:?}: {reason}")]
    InvalidName {
        /// What was given.
        input: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A live server already listens on this path; it is never displaced.
    #[error("a server is already listening on {path:?}")]
    AddrInUse {
        /// The path.
        path: PathBuf,
    },
    /// Another process holds the bind lock (it is starting or serving).
    #[error("another server holds the lock {lock:?} for {path:?}")]
    Locked {
        /// The socket path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something that is not a socket sits at the path; it is never removed.
    #[error("{path:?} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A directory on the way is not safe to put a socket in.
    #[error("unsafe directory {path:?} for a socket: {reason}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing listens at the endpoint.
    #[error("no server at {endpoint}: {source}")]
    NotFound {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The endpoint exists but refused the connection (a stale socket file).
    #[error("connection refused at {endpoint} (a stale socket from a server that exited?): {source}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// Another process already owns this pipe name (creating the first
    /// instance with `FILE_FLAG_FIRST_PIPE_INSTANCE` was denied).
    #[error("pipe {pipe:?} is already in use by another server")]
    PipeInUse {
        /// The pipe name.
        pipe: String,
    },
    /// Every named-pipe instance stayed busy until the deadline.
    #[error("all instances of pipe {pipe:?} stayed busy for {waited:?}")]
    PipeBusy {
        /// The pipe name.
        pipe: String,
        /// How long we retried.
        waited: std::time::Duration,
    },
    /// A pipe server found every instance its
    /// [`PipeOptions::max_instances`](crate::PipeOptions::max_instances)
    /// allows in use (`ERROR_PIPE_BUSY` creating one more): it creates the
    /// next when one is freed, and clients wait meanwhile.
    #[error("every instance of pipe {pipe:?} is in use (max_instances reached); waiting for one to be freed")]
    PipeFull {
        /// The pipe name.
        pipe: String,
    },
    /// A pipe's instance limit is out of range.
    #[error("pipe {pipe:?}: max_instances {requested} is out of range (1 to 254, or PipeOptions::UNLIMITED)")]
    InvalidPipeInstances {
        /// The pipe name.
        pipe: String,
        /// The limit asked for.
        requested: usize,
    },
    /// A TCP listener would be reachable from other machines.
    #[error(
        "refusing to listen on non-loopback address {addr}: TCP carries no credentials; \
         opt in explicitly (TcpOptions::allow_remote) and require an auth token"
    )]
    NonLoopback {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// A server was asked to listen on a non-loopback TCP address without
    /// an auth hook to check a token.
    #[error(
        "refusing to serve non-loopback address {addr} without authentication: anyone who can reach it \
         could connect; set an auth hook that checks a token"
    )]
    RemoteWithoutAuth {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// A peer's kernel-reported credentials did not pass the server's
    /// [`PeerPolicy`](crate::PeerPolicy); it was closed before its
    /// handshake.
    #[error("peer refused on {endpoint}: uid {uid:?}, gid {gid:?}, pid {pid:?} is not allowed by the peer policy")]
    PeerRefused {
        /// The endpoint it connected to.
        endpoint: String,
        /// Its user id (`None`: the kernel reported none).
        uid: Option<u32>,
        /// Its primary group id.
        gid: Option<u32>,
        /// Its process id (advisory).
        pid: Option<u32>,
    },
    /// A named-pipe client's token user SID, read from the kernel at
    /// accept time, did not pass the server's
    /// [`PeerPolicy`](crate::PeerPolicy); it was closed before its
    /// handshake.
    #[error(
        "pipe client refused on {endpoint}: pid {pid:?}, user SID {} is not allowed by the peer policy",
        crate::policy::sid_text(sid)
    )]
    PipePeerRefused {
        /// The endpoint it connected to.
        endpoint: String,
        /// Its process id (advisory).
        pid: Option<u32>,
        /// Its user SID (`None`: it could not be read).
        sid: Option<crate::Sid>,
    },
    /// The server a client reached runs as an identity the client's
    /// server policy does not trust (see
    /// [`check_server`](crate::check_server)); the client closed the
    /// connection before sending anything.
    #[error(
        "refusing the server at {endpoint}: pid {pid:?}, uid {uid:?}, user SID {} is not an identity this client \
         trusts (set the client's server policy to accept it)",
        crate::policy::sid_text(sid)
    )]
    ServerRefused {
        /// The endpoint.
        endpoint: String,
        /// The server's process id (advisory).
        pid: Option<u32>,
        /// The server's user id (Unix sockets).
        uid: Option<u32>,
        /// The server's user SID (named pipes; `None`: it could not be read).
        sid: Option<crate::Sid>,
    },
    /// Any other I/O failure, with the endpoint it concerns.
    #[error("{op} {endpoint}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The endpoint or path.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
}

impl TransportError {
    /// An [`Io`](TransportError::Io) error: `op` (what was being done, e.g.
    /// `"register"`) failed on `endpoint`.
    pub fn io(op: &'static str, endpoint: impl std::fmt::Display, source: io::Error) -> Self {
        TransportError::Io { op, endpoint: endpoint.to_string(), source }
    }

    /// A connect to `endpoint` that did not complete within `timeout`.
    pub fn timed_out(endpoint: impl std::fmt::Display, timeout: std::time::Duration) -> Self {
        let source = io::Error::new(io::ErrorKind::TimedOut, format!("no connection within {timeout:?}"));
        TransportError::io("connect to", endpoint, source)
    }

    /// The `TransportError` an [`io::Error`] was made from (by the
    /// `From` conversion), if it was: lets code behind an `io::Error`
    /// interface (a listener's `poll_accept`) tell the cases apart.
    pub fn from_io(e: &io::Error) -> Option<&TransportError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<TransportError>())
    }

    /// The closest [`io::ErrorKind`].
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            TransportError::PathTooLong { .. } | TransportError::InvalidName { .. } => io::ErrorKind::InvalidInput,
            TransportError::AddrInUse { .. } | TransportError::Locked { .. } | TransportError::PipeInUse { .. } => {
                io::ErrorKind::AddrInUse
            }
            TransportError::InvalidPipeInstances { .. } => io::ErrorKind::InvalidInput,
            TransportError::PipeFull { .. } => io::ErrorKind::ResourceBusy,
            TransportError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            TransportError::UnsafeDirectory { .. }
            | TransportError::NonLoopback { .. }
            | TransportError::RemoteWithoutAuth { .. }
            | TransportError::PeerRefused { .. }
            | TransportError::PipePeerRefused { .. }
            | TransportError::ServerRefused { .. } => io::ErrorKind::PermissionDenied,
            TransportError::NotFound { .. } => io::ErrorKind::NotFound,
            TransportError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            TransportError::PipeBusy { .. } => io::ErrorKind::TimedOut,
            TransportError::Io { source, .. } => source.kind(),
        }
    }
}

impl From<TransportError> for io::Error {
    fn from(e: TransportError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}
