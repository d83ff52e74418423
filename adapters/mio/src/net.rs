//! mio streams and listeners over Unix sockets, TCP and Windows named pipes,
//! with the transport crate's safe bind, typed connect errors and peer
//! identity.

#[cfg(windows)]
use std::io::Read;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::event::Source;
use mio::{Interest, Registry, Token};
use wharf_transport::{Endpoint, PeerIdentity, PipeOptions, TcpOptions, TransportError};
#[cfg(unix)]
use wharf_transport::{SocketFileGuard, UnixBindOptions};

/// Both directions.
#[cfg(not(unix))]
pub(crate) const BOTH: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// The interest a connection is registered with while it is not blocked on
/// a write. On Unix, readable only: writable interest is added when a write
/// would block and removed when the queue drains (`Conn::update_interest`),
/// so a socket that is always writable causes no wake-ups. Windows pipes
/// and sockets keep both (mio there reports a completion only to the
/// interest registered when it happened).
#[cfg(unix)]
pub(crate) const CONN_INTEREST: Interest = Interest::READABLE;
/// See the Unix definition.
#[cfg(not(unix))]
pub(crate) const CONN_INTEREST: Interest = BOTH;

/// A connected byte stream: a Unix socket, a TCP socket or a named pipe.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// A Unix domain socket.
    #[cfg(unix)]
    Unix(mio::net::UnixStream),
    /// A TCP socket.
    Tcp(mio::net::TcpStream),
    /// A Windows named pipe (either end).
    #[cfg(windows)]
    Pipe(mio::windows::NamedPipe),
}

macro_rules! each {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            #[cfg(unix)]
            Stream::Unix($s) => $body,
            Stream::Tcp($s) => $body,
            #[cfg(windows)]
            Stream::Pipe($s) => $body,
        }
    };
}

/// Gather at most this much of a vectored write to a pipe into one buffer
/// (mio copies pipe writes into a buffer of its own anyway).
#[cfg(windows)]
const GATHER_LIMIT: usize = 64 * 1024;

/// Read at most this much from a pipe at once (pipe reads need initialised
/// memory).
#[cfg(windows)]
const PIPE_READ_LIMIT: usize = 16 * 1024;

impl Stream {
    /// Connects to `endpoint`, blocking for at most `timeout`, and returns
    /// a non-blocking stream (not yet registered) and the server's identity
    /// as far as the OS reports it. Busy named pipes are retried within
    /// the timeout, never beyond it.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<(Stream, PeerIdentity), TransportError> {
        let nonblocking = |r: io::Result<()>| r.map_err(|e| TransportError::io("set non-blocking", endpoint, e));
        match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                // Waits at most `timeout` when the server's listen backlog
                // is full (a blocking connect would wait without bound).
                let s = wharf_transport::connect_unix_within(path, timeout)?;
                nonblocking(s.set_nonblocking(true))?;
                let peer = wharf_transport::peer_credentials(&s).unwrap_or_default();
                Ok((Stream::Unix(mio::net::UnixStream::from_std(s)), peer))
            }
            Endpoint::Tcp(addr) => {
                let deadline = Instant::now() + timeout;
                let mut last = None;
                for a in wharf_transport::resolve(addr)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(TransportError::timed_out(endpoint, timeout));
                    }
                    match std::net::TcpStream::connect_timeout(&a, left) {
                        Ok(s) => {
                            wharf_transport::configure_tcp_stream(&s)
                                .map_err(|e| TransportError::io("configure", endpoint, e))?;
                            nonblocking(s.set_nonblocking(true))?;
                            let peer = PeerIdentity { addr: s.peer_addr().ok(), ..Default::default() };
                            return Ok((Stream::Tcp(mio::net::TcpStream::from_std(s)), peer));
                        }
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Err(TransportError::timed_out(endpoint, timeout));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let e = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"));
                Err(wharf_transport::connect_error::tcp(addr, e))
            }
            #[cfg(windows)]
            Endpoint::Pipe(name) => windows::connect(name, timeout),
            #[allow(unreachable_patterns)]
            other => Err(other.unsupported()),
        }
    }

    /// Reads into the spare capacity of `buf`, appending (one read).
    /// `Ok(0)` is end of stream.
    pub fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            // Through `try_io`: on Windows mio re-arms a socket's readiness
            // only when an operation it sees returns "would block".
            #[cfg(unix)]
            Stream::Unix(s) => s.try_io(|| wharf_transport::recv_buf(&*s, buf)),
            Stream::Tcp(s) => s.try_io(|| wharf_transport::recv_buf(&*s, buf)),
            #[cfg(windows)]
            Stream::Pipe(p) => {
                let start = buf.len();
                let room = (buf.capacity() - start).clamp(4096, PIPE_READ_LIMIT);
                buf.resize(start + room, 0);
                let r = p.read(&mut buf[start..]);
                buf.truncate(start + r.as_ref().map_or(0, |n| *n));
                r
            }
        }
    }

    /// Writes from `bufs` (gathered for pipes, vectored for sockets).
    pub fn write_slices(&mut self, bufs: &[IoSlice<'_>], _gather: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
            #[cfg(windows)]
            Stream::Pipe(p) => {
                let Some(first) = bufs.iter().find(|b| !b.is_empty()) else { return Ok(0) };
                let total: usize = bufs.iter().map(|b| b.len()).sum();
                if first.len() == total || first.len() >= GATHER_LIMIT {
                    return p.write(first);
                }
                _gather.clear();
                for b in bufs {
                    let take = b.len().min(GATHER_LIMIT - _gather.len());
                    _gather.extend_from_slice(&b[..take]);
                    if _gather.len() == GATHER_LIMIT {
                        break;
                    }
                }
                p.write(_gather)
            }
        }
    }

    /// Shuts down the writing half (sockets); pipes close when dropped.
    pub fn shutdown_write(&self) {
        let _ = match self {
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(windows)]
            Stream::Pipe(_) => Ok(()),
        };
    }
}

impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        each!(self, s => s.register(registry, token, interests))
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        each!(self, s => s.reregister(registry, token, interests))
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        each!(self, s => s.deregister(registry))
    }
}

/// How to bind a listener.
#[derive(Clone, Debug, Default)]
pub struct BindOptions {
    /// Unix sockets: file mode, stale-file reclaim, directory creation.
    #[cfg(unix)]
    pub unix: UnixBindOptions,
    /// TCP: whether non-loopback addresses are allowed.
    pub tcp: TcpOptions,
    /// Windows named pipes: how many instances (connected clients plus
    /// the one waiting) the pipe may have (default 254).
    pub pipe: PipeOptions,
}

/// A listener: a Unix socket, a TCP socket, or a named pipe server that
/// always has one instance waiting for the next client.
#[derive(Debug)]
pub struct Listener {
    endpoint: Endpoint,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    #[cfg(unix)]
    /// The guard removes the socket file (if still ours) when dropped.
    Unix(mio::net::UnixListener, #[allow(dead_code)] SocketFileGuard),
    Tcp(mio::net::TcpListener),
    #[cfg(windows)]
    Pipe(windows::PipeListener),
}

impl Listener {
    /// Binds `endpoint`. Unix sockets get the transport crate's safe bind:
    /// mode 0600 before the socket is reachable, a live server never
    /// displaced, a stale file reclaimed, the file removed when the
    /// listener is dropped. Named pipes: the first instance is created with
    /// `FILE_FLAG_FIRST_PIPE_INSTANCE` (fails if someone else holds the
    /// name) and remote clients are rejected. TCP: loopback only unless
    /// `options.tcp` allows more.
    pub fn bind(endpoint: &Endpoint, options: &BindOptions) -> Result<Listener, TransportError> {
        let kind = match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let (l, guard) = wharf_transport::bind_unix(path, &options.unix)?;
                l.set_nonblocking(true).map_err(|e| TransportError::io("set non-blocking", endpoint, e))?;
                Kind::Unix(mio::net::UnixListener::from_std(l), guard)
            }
            Endpoint::Tcp(addr) => {
                let l = wharf_transport::bind_tcp(addr, &options.tcp)?;
                l.set_nonblocking(true).map_err(|e| TransportError::io("set non-blocking", endpoint, e))?;
                Kind::Tcp(mio::net::TcpListener::from_std(l))
            }
            #[cfg(windows)]
            Endpoint::Pipe(name) => Kind::Pipe(windows::PipeListener::bind(name, &options.pipe)?),
            #[allow(unreachable_patterns)]
            other => return Err(other.unsupported()),
        };
        Ok(Listener { endpoint: endpoint.clone(), kind })
    }

    /// The endpoint it listens on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The local TCP address (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            Kind::Tcp(l) => l.local_addr().ok(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Registers the listener with `registry` under `token`: a readiness
    /// event on `token` means [`accept`](Self::accept) may have work.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match &mut self.kind {
            #[cfg(unix)]
            Kind::Unix(l, _) => l.register(registry, token, Interest::READABLE),
            Kind::Tcp(l) => l.register(registry, token, Interest::READABLE),
            #[cfg(windows)]
            Kind::Pipe(p) => p.register(registry, token),
        }
    }

    /// Deregisters the listener.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match &mut self.kind {
            #[cfg(unix)]
            Kind::Unix(l, _) => l.deregister(registry),
            Kind::Tcp(l) => l.deregister(registry),
            #[cfg(windows)]
            Kind::Pipe(p) => p.deregister(registry),
        }
    }

    /// Accepts one waiting connection, registers it with `registry` under
    /// `token` (edge-triggered; wrap it with [`Conn::registered`](crate::Conn::registered)), and returns it with
    /// the peer's identity as the kernel reports it. `Ok(None)`: nobody is
    /// waiting (the token was not used). Call it until it returns `None`
    /// after each event on the listener's token.
    ///
    /// No [`PeerPolicy`](wharf_transport::PeerPolicy) is applied here (the
    /// [`Server`](crate::Server) applies its own): check the returned
    /// identity with `PeerPolicy::check` before reading from the stream.
    ///
    /// A named pipe whose `max_instances` are all in use has no instance
    /// waiting: this then fails with
    /// [`TransportError::PipeFull`](wharf_transport::TransportError::PipeFull)
    /// (inside the `io::Error`; see `TransportError::from_io`), and no
    /// event comes for the listener's token until it is called again
    /// after one is freed: wait ([`wharf_transport::accept_pause`], as the
    /// [`Server`](crate::Server) does) and call it again.
    pub fn accept(&mut self, registry: &Registry, token: Token) -> io::Result<Option<(Stream, PeerIdentity)>> {
        let (mut stream, peer) = match &mut self.kind {
            #[cfg(unix)]
            Kind::Unix(l, _) => match l.accept() {
                Ok((s, _)) => {
                    let peer = wharf_transport::peer_credentials(&s).unwrap_or_default();
                    (Stream::Unix(s), peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            },
            Kind::Tcp(l) => match l.accept() {
                Ok((s, addr)) => {
                    if let Err(e) = wharf_transport::configure_accepted_tcp(&s) {
                        tracing::debug!(error = %e, peer = %addr, "wharf: configuring an accepted TCP connection failed");
                    }
                    (Stream::Tcp(s), PeerIdentity { addr: Some(addr), ..Default::default() })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            },
            #[cfg(windows)]
            Kind::Pipe(p) => match p.accept(registry, token)? {
                Some((pipe, peer)) => return Ok(Some((Stream::Pipe(pipe), peer))),
                None => return Ok(None),
            },
        };
        stream.register(registry, token, CONN_INTEREST)?;
        Ok(Some((stream, peer)))
    }
}

#[cfg(windows)]
mod windows {
    use std::io;
    use std::os::windows::io::{FromRawHandle, IntoRawHandle, OwnedHandle};
    use std::time::{Duration, Instant};

    use mio::event::Source;
    use mio::windows::NamedPipe;
    use mio::{Registry, Token};
    use wharf_transport::{PeerIdentity, PipeOptions, PipeRetry, TransportError};

    use super::{BOTH, Stream};

    /// `ERROR_NO_DATA`: the client closed its end before the server connected.
    const ERROR_NO_DATA: i32 = windows_sys::Win32::Foundation::ERROR_NO_DATA as i32;

    fn into_mio(handle: OwnedHandle) -> NamedPipe {
        // SAFETY: `handle` is an owned, valid named-pipe handle opened for
        // overlapped I/O (create_pipe_instance / open_pipe_client); its
        // ownership moves into the NamedPipe, which closes it.
        unsafe { NamedPipe::from_raw_handle(handle.into_raw_handle()) }
    }

    pub(super) fn connect(name: &str, timeout: Duration) -> Result<(Stream, PeerIdentity), TransportError> {
        let mut retry = PipeRetry::new(Instant::now(), timeout);
        loop {
            match wharf_transport::open_pipe_client(name) {
                Ok(handle) => {
                    let pipe = into_mio(handle);
                    let peer = wharf_transport::pipe_server_identity(&pipe).unwrap_or_default();
                    return Ok((Stream::Pipe(pipe), peer));
                }
                Err(e) => std::thread::sleep(retry.after_open_error(name, e, Instant::now())?),
            }
        }
    }

    /// A pipe server: one instance always waits for the next client; it is
    /// registered under the listener's token until a client connects, then
    /// re-registered under the connection's token. While `max_instances`
    /// are in use there is none waiting, and `accept` reports
    /// [`TransportError::PipeFull`] until one is freed.
    #[derive(Debug)]
    pub(super) struct PipeListener {
        name: String,
        options: PipeOptions,
        waiting: Option<NamedPipe>,
        token: Option<Token>,
    }

    impl PipeListener {
        pub(super) fn bind(name: &str, options: &PipeOptions) -> Result<PipeListener, TransportError> {
            let first = wharf_transport::create_pipe_instance(name, true, options)?;
            Ok(PipeListener {
                name: name.to_string(),
                options: options.clone(),
                waiting: Some(into_mio(first)),
                token: None,
            })
        }

        fn io(&self, e: io::Error) -> io::Error {
            io::Error::new(e.kind(), format!("pipe {}: {e}", self.name))
        }

        /// Registers the waiting instance and starts its connect.
        fn arm(&mut self, registry: &Registry) -> io::Result<()> {
            let Some(token) = self.token else { return Ok(()) };
            if self.waiting.is_none() {
                let next =
                    wharf_transport::create_pipe_instance(&self.name, false, &self.options).map_err(io::Error::from)?;
                self.waiting = Some(into_mio(next));
            }
            let pipe = self.waiting.as_mut().expect("an instance is waiting");
            pipe.register(registry, token, BOTH).map_err(|e| self.io(e))
        }

        pub(super) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
            self.token = Some(token);
            self.arm(registry)?;
            // Issue the first ConnectNamedPipe; its completion is the
            // listener's readiness event. A client that is already there is
            // picked up by the next `accept`.
            match self.waiting.as_ref().map(|p| p.connect()) {
                Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => Err(self.io(e)),
                _ => Ok(()),
            }
        }

        pub(super) fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
            self.token = None;
            match self.waiting.as_mut() {
                Some(p) => p.deregister(registry),
                None => Ok(()),
            }
        }

        pub(super) fn accept(
            &mut self,
            registry: &Registry,
            token: Token,
        ) -> io::Result<Option<(NamedPipe, PeerIdentity)>> {
            loop {
                if self.waiting.is_none() {
                    self.arm(registry)?;
                }
                let pipe = self.waiting.as_ref().expect("an instance is waiting");
                match pipe.connect() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.raw_os_error() == Some(ERROR_NO_DATA) => {
                        tracing::debug!(pipe = %self.name, "wharf: a pipe client left before it was accepted");
                        if let Some(mut p) = self.waiting.take() {
                            let _ = p.deregister(registry);
                        }
                        continue;
                    }
                    Err(e) => return Err(self.io(e)),
                }
                let mut connected = self.waiting.take().expect("an instance was waiting");
                connected.reregister(registry, token, BOTH)?;
                if let Err(e) = self.arm(registry) {
                    // At the instance limit, or a failure: the next accept tries again.
                    tracing::debug!(error = %e, pipe = %self.name, "wharf: no next pipe instance yet");
                }
                let peer = wharf_transport::pipe_client_identity(&connected).unwrap_or_default();
                return Ok(Some((connected, peer)));
            }
        }
    }
}
