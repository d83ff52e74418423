//! Plain byte streams on async-io over every wharf endpoint: use them
//! directly when you only want the socket (they are `futures-io`
//! `AsyncRead`/`AsyncWrite`), or let the wharf endpoint run over them.
//! smol and async-std share them.
//!
//! Unix sockets and TCP are `async_io::Async` sockets on async-io's
//! reactor. Windows named pipes, which async-io cannot register, go
//! through `wharf-pipe-reactor` (one `wharf-pipe-reactor` thread per
//! process, started by the first pipe). Resolving a TCP host name (not an
//! IP address) runs `getaddrinfo` on smol's blocking pool.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use smol::io::{AsyncReadExt, AsyncWriteExt};
//! use wharf_smol::net::{Listener, Stream};
//!
//! let mut listener = Listener::bind(&"unix:/tmp/raw.sock".parse()?, &Default::default())?;
//! smol::spawn(async move {
//!     let (mut s, peer) = listener.accept().await.unwrap();
//!     println!("connection from uid {:?}", peer.uid);
//!     s.write_all(b"hello").await.unwrap();
//! })
//! .detach();
//! let (mut s, _) = Stream::connect(&"unix:/tmp/raw.sock".parse()?, std::time::Duration::from_secs(5)).await?;
//! let mut buf = [0; 5];
//! s.read_exact(&mut buf).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};
use wharf_async::{BindOptions, ByteListener, ByteStream, ConnectFuture, Error, Network};
use wharf_transport::{Endpoint, PeerIdentity, TransportError};

#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};

/// A connected byte stream: Unix socket, TCP, or a named pipe end.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// Unix domain socket.
    #[cfg(unix)]
    Unix(Async<UnixStream>),
    /// TCP.
    Tcp(Async<TcpStream>),
    /// Either end of a named pipe.
    #[cfg(windows)]
    Pipe(wharf_pipe_reactor::PipeStream),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            #[cfg(unix)]
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
            #[cfg(windows)]
            Stream::Pipe($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_close(cx))
    }
}

/// Runs `op` on the socket until it stops saying "would block", waiting
/// for readability on async-io's reactor in between.
fn poll_readable_op<T, R>(
    io: &Async<T>,
    cx: &mut Context<'_>,
    mut op: impl FnMut(&T) -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        match op(io.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return Poll::Ready(other),
        }
        ready!(io.poll_readable(cx))?;
    }
}

impl ByteStream for Stream {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        // Sockets: one recv straight into the spare capacity, no zeroing.
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => poll_readable_op(s, cx, |s| wharf_transport::recv_buf(s, buf)),
            Stream::Tcp(s) => poll_readable_op(s, cx, |s| wharf_transport::recv_buf(s, buf)),
            #[cfg(windows)]
            Stream::Pipe(p) => p.poll_read_buf(cx, buf),
        }
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write_vectored(Pin::new(self), cx, bufs)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_close(Pin::new(self), cx)
    }

    /// Sockets write through: one non-blocking `writev` on the socket
    /// (async-io keeps no readiness of its own to clear; the driver's
    /// write tries the socket before it waits); named pipes do not.
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => Some(s.get_ref().write_vectored(bufs)),
            Stream::Tcp(s) => Some(s.get_ref().write_vectored(bufs)),
            #[cfg(windows)]
            Stream::Pipe(_) => None,
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

/// `future`, or a typed time-out error naming `endpoint`.
async fn within<T>(
    endpoint: &Endpoint,
    timeout: Duration,
    future: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    let expire = async {
        smol::Timer::after(timeout).await;
        Err(TransportError::timed_out(endpoint, timeout))
    };
    smol::future::or(future, expire).await
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<(Stream, PeerIdentity), TransportError> {
    match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            wharf_transport::check_unix_path(path)?;
            let s = within(endpoint, timeout, async {
                Async::<UnixStream>::connect(path).await.map_err(|e| wharf_transport::connect_error::unix(path, e))
            })
            .await?;
            let peer = wharf_transport::peer_credentials(s.get_ref()).unwrap_or_default();
            Ok((Stream::Unix(s), peer))
        }
        Endpoint::Tcp(addr) => {
            let s = within(endpoint, timeout, connect_tcp(addr)).await?;
            wharf_transport::configure_tcp_stream(s.get_ref())
                .map_err(|e| TransportError::io("configure", endpoint, e))?;
            let peer = PeerIdentity { addr: s.get_ref().peer_addr().ok(), ..Default::default() };
            Ok((Stream::Tcp(s), peer))
        }
        #[cfg(windows)]
        Endpoint::Pipe(name) => {
            let sleep = |pause| async move {
                smol::Timer::after(pause).await;
            };
            let (pipe, peer) = wharf_pipe_reactor::connect(name, timeout, sleep).await?;
            Ok((Stream::Pipe(pipe), peer))
        }
        #[allow(unreachable_patterns)]
        other => Err(other.unsupported()),
    }
}

/// Connects to the first address of `addr` that accepts. An IP address is
/// used as is; a host name is resolved on smol's blocking pool.
async fn connect_tcp(addr: &str) -> Result<Async<TcpStream>, TransportError> {
    let addrs = match addr.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => {
            let name = addr.to_string();
            smol::unblock(move || wharf_transport::resolve(&name)).await?
        }
    };
    let mut last = None;
    for a in addrs {
        match Async::<TcpStream>::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolves to no address"));
    Err(wharf_transport::connect_error::tcp(addr, e))
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
    Unix(Async<UnixListener>, #[allow(dead_code)] wharf_transport::SocketFileGuard),
    Tcp(Async<TcpListener>),
    #[cfg(windows)]
    Pipe(wharf_pipe_reactor::PipeListener),
}

impl Listener {
    /// Binds `endpoint`. Unix sockets get the transport crate's safe bind:
    /// mode 0600 before the socket is reachable, a live server never
    /// displaced, a stale file reclaimed. Named pipes: the first instance
    /// is created with `FILE_FLAG_FIRST_PIPE_INSTANCE` (fails if someone
    /// else holds the name) and remote clients are rejected. TCP: loopback
    /// only unless `options.tcp.allow_remote`.
    pub fn bind(endpoint: &Endpoint, options: &BindOptions) -> io::Result<Listener> {
        bind(endpoint, options).map_err(io::Error::from)
    }

    /// The endpoint it listens on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The local TCP address (useful after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            Kind::Tcp(l) => l.get_ref().local_addr().ok(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Waits for the next connection.
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
            Kind::Unix(l, _) => {
                let (s, _) = ready!(poll_readable_op(l, cx, |l| l.accept()))?;
                let s = Async::new(s)?;
                let peer = wharf_transport::peer_credentials(s.get_ref()).unwrap_or_default();
                Poll::Ready(Ok((Stream::Unix(s), peer)))
            }
            Kind::Tcp(l) => {
                let (s, addr) = ready!(poll_readable_op(l, cx, |l| l.accept()))?;
                if let Err(e) = wharf_transport::configure_accepted_tcp(&s) {
                    tracing::debug!(error = %e, peer = %addr, "wharf: configuring an accepted TCP connection failed");
                }
                let s = Async::new(s)?;
                Poll::Ready(Ok((Stream::Tcp(s), PeerIdentity { addr: Some(addr), ..Default::default() })))
            }
            #[cfg(windows)]
            Kind::Pipe(p) => p.poll_accept(cx).map_ok(|(s, peer)| (Stream::Pipe(s), peer)),
        }
    }
}

impl ByteListener for Listener {
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, PeerIdentity)>> {
        self.poll_accept_stream(cx).map_ok(|(s, p)| (Box::new(s) as Box<dyn ByteStream>, p))
    }
}

fn bind(endpoint: &Endpoint, options: &BindOptions) -> Result<Listener, TransportError> {
    let register = |e| TransportError::io("register", endpoint, e);
    let kind = match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let (l, guard) = wharf_transport::bind_unix(path, &options.unix)?;
            Kind::Unix(Async::new(l).map_err(register)?, guard)
        }
        Endpoint::Tcp(addr) => Kind::Tcp(Async::new(wharf_transport::bind_tcp(addr, &options.tcp)?).map_err(register)?),
        #[cfg(windows)]
        Endpoint::Pipe(name) => Kind::Pipe(wharf_pipe_reactor::PipeListener::bind(name, &options.pipe)?),
        #[allow(unreachable_patterns)]
        other => return Err(other.unsupported()),
    };
    Ok(Listener { kind, endpoint: endpoint.clone() })
}

/// The [`Network`] of the async-io adapters (smol, async-std): sockets on
/// async-io's reactor, named pipes on the pipe reactor. It needs no
/// executor of its own, so any runtime can use it.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncIoNetwork;

impl Network for AsyncIoNetwork {
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
