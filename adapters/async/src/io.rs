//! The byte streams and listeners the endpoint runs over.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};
use wharf_transport::PeerIdentity;

/// A connected, reliable, ordered byte stream (Unix socket, named pipe, TCP).
pub trait ByteStream: Send + Unpin + 'static {
    /// Reads into the spare capacity of `buf`, appending; `Ok(0)` is end of
    /// stream.
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Whether a read would find something (data, end of stream or an
    /// error), registering `cx`'s waker if not. The driver asks before
    /// reading into a connection that holds no receive block, so that an
    /// idle connection does not take one just to hear "would block". The
    /// default says `Ready` (then the read itself waits).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Writes from `bufs` in order; returns how many bytes were taken.
    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;

    /// Shuts down the write side (the peer reads end of stream).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Writes from `bufs` in order now, without waiting and without
    /// registering a waker: `Some(Ok(n))` when `n` bytes were taken,
    /// `Some(Err(WouldBlock))` when none could be. `None` (the default)
    /// means the stream cannot write this way; it is then not asked again.
    ///
    /// This lets the task that queued a message write it itself while the
    /// connection's driver is idle ("write-through"), saving the driver a
    /// wake-up. The session calls it under the lock the driver does all its
    /// I/O under, so it never overlaps the driver's reads and writes; what
    /// it leaves (would block, partial write) the driver writes later with
    /// [`poll_write_vectored`](Self::poll_write_vectored), which must
    /// still be woken when room comes after a `WouldBlock` returned here.
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let _ = bufs;
        None
    }
}

impl ByteStream for Box<dyn ByteStream> {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        (**self).poll_read_buf(cx, buf)
    }
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        (**self).poll_write_vectored(cx, bufs)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_shutdown(cx)
    }
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        (**self).try_write_vectored(bufs)
    }
}

/// Accepts connections, reporting who connected as the kernel tells it.
pub trait ByteListener: Send + 'static {
    /// Waits for the next connection.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, PeerIdentity)>>;
}

/// Adapts a `futures-io` stream (smol, async-std, ...) to [`ByteStream`].
/// Reads go through a small scratch buffer because `futures-io` reads need
/// initialised memory.
#[derive(Debug)]
pub struct FuturesIo<T> {
    io: T,
    scratch: Box<[u8]>,
}

impl<T> FuturesIo<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        FuturesIo { io, scratch: vec![0; 64 * 1024].into_boxed_slice() }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for FuturesIo<T> {
    fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let want = (buf.capacity() - buf.len()).clamp(1, self.scratch.len());
        match Pin::new(&mut self.io).poll_read(cx, &mut self.scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&self.scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }
    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}
