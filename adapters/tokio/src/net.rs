//! Plain byte streams on tokio over every wharf endpoint: use them directly
//! when you only want the socket, or let the wharf endpoint run over them.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use wharf_tokio::net::{Listener, Stream};
//!
//! let mut listener = Listener::bind(&"unix:/tmp/raw.sock".parse()?, &Default::default())?;
//! tokio::spawn(async move {
//!     let (mut s, peer) = listener.accept().await.unwrap();
//!     println!("connection from uid {:?}", peer.uid);
//!     s.write_all(b"hello").await.unwrap();
//! });
//! let (mut s, _) = Stream::connect(&"unix:/tmp/raw.sock".parse()?, std::time::Duration::from_secs(5)).await?;
//! let mut buf = [0; 5];
//! s.read_exact(&mut buf).await?;
//! # Ok(()) }
//! ```

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wharf_async::{BindOptions, ByteListener, ByteStream, ConnectFuture, Error, Network};
use wharf_transport::{Endpoint, PeerIdentity, TransportError};

#[cfg(windows)]
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};

/// A connected byte stream: Unix socket, TCP, or a named pipe end.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// Unix domain socket.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Server end of a named pipe.
    #[cfg(windows)]
    PipeServer(NamedPipeServer),
    /// Client end of a named pipe.
    #[cfg(windows)]
    PipeClient(NamedPipeClient),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            #[cfg(unix)]
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
            #[cfg(windows)]
            Stream::PipeServer($s) => $e,
            #[cfg(windows)]
            Stream::PipeClient($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl ByteStream for Stream {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        // Reads straight into the spare capacity, without zeroing it first.
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }

    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read_ready(cx))
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write_vectored(Pin::new(self), cx, bufs)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(self), cx)
    }

    /// Sockets write through (`try_write_vectored`: a `WouldBlock` clears
    /// tokio's write readiness, so the driver's next write waits for room);
    /// named pipes do not.
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => Some(s.try_write_vectored(bufs)),
            Stream::Tcp(s) => Some(s.try_write_vectored(bufs)),
            #[cfg(windows)]
            Stream::PipeServer(_) | Stream::PipeClient(_) => None,
        }
    }
}

impl Stream {
    /// Connects to `endpoint`, giving up after `timeout`. Busy named pipes
    /// are retried within the timeout, never beyond it.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<(Stream, PeerIdentity)> {
        connect(endpoint, timeout).await.map_err(io::Error::from)
    }
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<(Stream, PeerIdentity), Error> {
    let timed_out = || TransportError::timed_out(endpoint, timeout);
    match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            wharf_transport::check_unix_path(path)?;
            let s = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| wharf_transport::connect_error::unix(path, e))?;
            let peer = wharf_transport::peer_credentials(&s).unwrap_or_default();
            Ok((Stream::Unix(s), peer))
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => Err(endpoint.unsupported().into()),
        Endpoint::Tcp(addr) => {
            let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| wharf_transport::connect_error::tcp(addr, e))?;
            s.set_nodelay(true).map_err(|e| TransportError::Io {
                op: "configure",
                endpoint: endpoint.to_string(),
                source: e,
            })?;
            let peer = PeerIdentity { addr: s.peer_addr().ok(), ..Default::default() };
            Ok((Stream::Tcp(s), peer))
        }
        #[cfg(windows)]
        Endpoint::Pipe(name) => {
            let mut retry = wharf_transport::PipeRetry::new(std::time::Instant::now(), timeout);
            loop {
                // The client opens with SECURITY_IDENTIFICATION (tokio's
                // default), so the server cannot impersonate it.
                match ClientOptions::new().open(name) {
                    Ok(c) => {
                        let peer = wharf_transport::pipe_server_identity(&c).unwrap_or_default();
                        return Ok((Stream::PipeClient(c), peer));
                    }
                    Err(e) => tokio::time::sleep(retry.after_open_error(name, e, std::time::Instant::now())?).await,
                }
            }
        }
        #[cfg(not(windows))]
        Endpoint::Pipe(_) => Err(endpoint.unsupported().into()),
    }
}

/// Accepts connections on any endpoint.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    endpoint: Endpoint,
}

#[derive(Debug)]
enum Kind {
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, #[allow(dead_code)] wharf_transport::SocketFileGuard),
    Tcp(tokio::net::TcpListener),
    #[cfg(windows)]
    Pipe(PipeListener),
}

impl Listener {
    /// Binds `endpoint` (inside a tokio runtime). Unix sockets get the
    /// transport crate's safe bind: mode 0600 before the socket is
    /// reachable, a live server never displaced, a stale file reclaimed.
    /// Named pipes: the first instance is created with
    /// `FILE_FLAG_FIRST_PIPE_INSTANCE` (fails if someone else holds the
    /// name) and remote clients are rejected. TCP: loopback only unless
    /// `options.tcp.allow_remote`.
    pub fn bind(endpoint: &Endpoint, options: &BindOptions) -> io::Result<Listener> {
        bind(endpoint, options).map_err(io::Error::from)
    }

    /// The endpoint it listens on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The local TCP address (useful after binding port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.kind {
            Kind::Tcp(l) => l.local_addr().ok(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Waits for the next connection. No
    /// [`PeerPolicy`](wharf_transport::PeerPolicy) is applied to a raw
    /// listener (servers apply theirs): check the identity with
    /// `PeerPolicy::check` before reading from the stream.
    ///
    /// A named pipe whose `max_instances` are all in use has no instance
    /// for the next client: this then fails with
    /// [`TransportError::PipeFull`]
    /// (inside the `io::Error`; see `TransportError::from_io`) until one
    /// is freed; wait ([`wharf_transport::accept_pause`]) and call again.
    pub async fn accept(&mut self) -> io::Result<(Stream, PeerIdentity)> {
        std::future::poll_fn(|cx| self.poll_accept_stream(cx)).await
    }

    /// Polls for the next connection.
    pub fn poll_accept_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerIdentity)>> {
        match &mut self.kind {
            #[cfg(unix)]
            Kind::Unix(l, _) => l.poll_accept(cx).map_ok(|(s, _)| {
                let peer = wharf_transport::peer_credentials(&s).unwrap_or_default();
                (Stream::Unix(s), peer)
            }),
            Kind::Tcp(l) => l.poll_accept(cx).map_ok(|(s, addr)| {
                // No Nagle delay; on Windows also not inheritable (Wine).
                let _ = wharf_transport::configure_accepted_tcp(&s);
                (Stream::Tcp(s), PeerIdentity { addr: Some(addr), ..Default::default() })
            }),
            #[cfg(windows)]
            Kind::Pipe(p) => p.poll_accept(cx),
        }
    }
}

impl ByteListener for Listener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, PeerIdentity)>> {
        self.poll_accept_stream(cx).map_ok(|(s, p)| (Box::new(s) as Box<dyn ByteStream>, p))
    }
}

fn bind(endpoint: &Endpoint, options: &BindOptions) -> Result<Listener, Error> {
    let kind = match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let (l, guard) = wharf_transport::bind_unix(path, &options.unix)?;
            l.set_nonblocking(true).map_err(|e| TransportError::Io {
                op: "configure",
                endpoint: endpoint.to_string(),
                source: e,
            })?;
            let l = tokio::net::UnixListener::from_std(l).map_err(|e| TransportError::Io {
                op: "register",
                endpoint: endpoint.to_string(),
                source: e,
            })?;
            Kind::Unix(l, guard)
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => return Err(endpoint.unsupported().into()),
        Endpoint::Tcp(addr) => {
            let l = wharf_transport::bind_tcp(addr, &options.tcp)?;
            l.set_nonblocking(true).map_err(|e| TransportError::Io {
                op: "configure",
                endpoint: endpoint.to_string(),
                source: e,
            })?;
            Kind::Tcp(tokio::net::TcpListener::from_std(l).map_err(|e| TransportError::Io {
                op: "register",
                endpoint: endpoint.to_string(),
                source: e,
            })?)
        }
        #[cfg(windows)]
        Endpoint::Pipe(name) => Kind::Pipe(PipeListener::bind(name, &options.pipe)?),
        #[cfg(not(windows))]
        Endpoint::Pipe(_) => return Err(endpoint.unsupported().into()),
    };
    Ok(Listener { kind, endpoint: endpoint.clone() })
}

/// Named-pipe server: always one instance waiting for the next client,
/// created before the connected one is handed off (no gap in which a
/// client would find no instance), unless `max_instances` are in use:
/// then accepting reports [`TransportError::PipeFull`] until an instance
/// is freed (the server's accept loop waits and tries again).
#[cfg(windows)]
struct PipeListener {
    name: String,
    /// `nMaxInstances` (255: unlimited).
    max_instances: u32,
    /// The instance waiting for a client; `None` while every instance
    /// allowed is in use.
    pending: Option<Pin<Box<dyn std::future::Future<Output = io::Result<NamedPipeServer>> + Send>>>,
}

#[cfg(windows)]
impl std::fmt::Debug for PipeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeListener").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Creates an instance of pipe `name` (the first one with
/// `FILE_FLAG_FIRST_PIPE_INSTANCE`), rejecting remote clients, with at
/// most `max_instances` instances and wharf's security descriptor (full
/// access for the current user and SYSTEM only; see
/// `wharf_transport::pipe_security`).
#[cfg(windows)]
#[allow(unsafe_code)]
fn create_pipe(name: &str, first: bool, max_instances: u32) -> Result<NamedPipeServer, TransportError> {
    let mut options = ServerOptions::new();
    options.first_pipe_instance(first).reject_remote_clients(true);
    if max_instances <= wharf_transport::MAX_PIPE_INSTANCES as u32 {
        // tokio panics above 254; unlimited is its default.
        options.max_instances(max_instances as usize);
    }
    wharf_transport::with_pipe_security_attributes(|attributes| {
        // SAFETY: `attributes` points at a SECURITY_ATTRIBUTES whose
        // descriptor lives in a process-wide static; both are valid for the
        // duration of this call, which is all tokio requires.
        unsafe { options.create_with_security_attributes_raw(name, attributes) }
    })
    .and_then(|r| r)
    .map_err(|e| wharf_transport::pipe_create_error(name, first, e))
}

#[cfg(windows)]
impl PipeListener {
    fn bind(name: &str, options: &wharf_transport::PipeOptions) -> Result<PipeListener, Error> {
        let max_instances = options.instance_limit(name)?;
        let first = create_pipe(name, true, max_instances)?;
        Ok(PipeListener { name: name.to_string(), max_instances, pending: Some(Self::wait(first)) })
    }

    fn wait(server: NamedPipeServer) -> Pin<Box<dyn std::future::Future<Output = io::Result<NamedPipeServer>> + Send>> {
        Box::pin(async move {
            server.connect().await?;
            Ok(server)
        })
    }

    /// Creates the instance the next client will connect to.
    fn next_instance(&mut self) -> Result<(), TransportError> {
        let next = create_pipe(&self.name, false, self.max_instances)?;
        self.pending = Some(Self::wait(next));
        Ok(())
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, PeerIdentity)>> {
        if self.pending.is_none() {
            // Every instance was in use: is one free now?
            self.next_instance()?;
        }
        let pending = self.pending.as_mut().expect("an instance is waiting");
        let connected = match pending.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.pending = None;
        // Create the next instance before handing this one off; at the
        // instance limit, the next accept tries again.
        if let Err(e) = self.next_instance() {
            tracing::debug!(error = %e, "wharf: no next pipe instance yet");
        }
        let server = connected.map_err(|e| TransportError::io("accept on", format!("pipe:{}", self.name), e))?;
        let peer = wharf_transport::pipe_client_identity(&server).unwrap_or_default();
        Poll::Ready(Ok((Stream::PipeServer(server), peer)))
    }
}

/// The [`Network`] of this adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNetwork;

impl Network for TokioNetwork {
    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> ConnectFuture {
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let (s, p) = connect(&endpoint, timeout).await?;
            Ok((Box::new(s) as Box<dyn ByteStream>, p))
        })
    }

    fn bind(&self, endpoint: &Endpoint, options: &BindOptions) -> Result<Box<dyn ByteListener>, Error> {
        Ok(Box::new(bind(endpoint, options)?))
    }
}
