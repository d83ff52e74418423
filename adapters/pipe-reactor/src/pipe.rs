//! Pipe streams, the listener that accepts them, and connecting to one.

use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};
use wharf_transport::{PeerIdentity, PipeOptions, PipeRetry, TransportError};

use crate::reactor::{Direction, Registered};

/// Gather at most this much of a vectored write into one buffer.
const GATHER_LIMIT: usize = 64 * 1024;

/// Zero at most this much spare capacity for one read (mio reads need
/// initialised memory; one of its reads rarely holds more).
const READ_LIMIT: usize = 16 * 1024;

/// One end of a connected named pipe (server instance or client), driven by
/// the pipe reactor. Use it through `futures-io`'s `AsyncRead` and
/// `AsyncWrite`, or [`poll_read_buf`](PipeStream::poll_read_buf).
///
/// Pipes have no half-close: `poll_close` returns at once, and the handle
/// closes when the stream is dropped, after what was written has gone out.
#[derive(Debug)]
pub struct PipeStream {
    io: Registered,
    gather: Vec<u8>,
}

impl PipeStream {
    fn new(io: Registered) -> PipeStream {
        PipeStream { io, gather: Vec::new() }
    }

    /// Reads into the spare capacity of `buf`, appending; `Ok(0)` is end of
    /// stream (the other end closed).
    pub fn poll_read_buf(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let start = buf.len();
        let room = (buf.capacity() - start).clamp(4096, READ_LIMIT);
        // Zeroed only when the pipe is ready, not on every poll.
        self.io.poll_io(Direction::Read, cx, |mut pipe| {
            buf.resize(start + room, 0);
            let r = pipe.read(&mut buf[start..]);
            buf.truncate(start + r.as_ref().map_or(0, |n| *n));
            r
        })
    }

    fn poll_write_all_of(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else { return Poll::Ready(Ok(0)) };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if first.len() == total || first.len() >= GATHER_LIMIT {
            return self.io.poll_io(Direction::Write, cx, |mut pipe| pipe.write(first));
        }
        let gather = &mut self.gather;
        self.io.poll_io(Direction::Write, cx, |mut pipe| {
            gather.clear();
            for b in bufs {
                let take = b.len().min(GATHER_LIMIT - gather.len());
                gather.extend_from_slice(&b[..take]);
                if gather.len() == GATHER_LIMIT {
                    break;
                }
            }
            pipe.write(gather)
        })
    }
}

impl AsyncRead for PipeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.io.poll_io(Direction::Read, cx, |mut pipe| pipe.read(buf))
    }
}

impl AsyncWrite for PipeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_all_of(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_all_of(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A named-pipe server: always one instance waiting for the next client.
/// The first is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, remote
/// clients are rejected, and the next instance is created before a
/// connected one is handed off, so a client never finds none, unless
/// `max_instances` are in use: then accepting reports
/// [`TransportError::PipeFull`] until one is freed (try again later;
/// clients meanwhile find the pipe busy).
#[derive(Debug)]
pub struct PipeListener {
    name: String,
    options: PipeOptions,
    /// The instance waiting for a client; `None` after creating the next
    /// one failed (retried on the next accept).
    waiting: Option<Registered>,
}

impl PipeListener {
    /// Creates the first instance of pipe `name` (`\\.\pipe\...`), which
    /// fixes how many instances the pipe may have.
    pub fn bind(name: &str, options: &PipeOptions) -> Result<PipeListener, TransportError> {
        let first = wharf_transport::create_pipe_instance(name, true, options)?;
        let waiting = register(name, first)?;
        Ok(PipeListener { name: name.to_string(), options: options.clone(), waiting: Some(waiting) })
    }

    /// The pipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn next_instance(&self) -> Result<Registered, TransportError> {
        register(&self.name, wharf_transport::create_pipe_instance(&self.name, false, &self.options)?)
    }

    /// Polls for the next client, reporting its process id and user SID.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(PipeStream, PeerIdentity)>> {
        loop {
            if self.waiting.is_none() {
                self.waiting = Some(self.next_instance()?);
            }
            let waiting = self.waiting.as_ref().expect("an instance is waiting");
            match waiting.poll_io(Direction::Write, cx, |pipe| pipe.connect()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                // A client came and went before it was accepted: use a fresh
                // instance and keep waiting.
                Poll::Ready(Err(e)) if e.raw_os_error() == Some(ERROR_NO_DATA) => {
                    tracing::debug!(pipe = %self.name, "wharf: a pipe client left before it was accepted");
                    self.waiting = None;
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    self.waiting = None;
                    return Poll::Ready(Err(TransportError::io("accept on", format!("pipe:{}", self.name), e).into()));
                }
            }
            let connected = self.waiting.take().expect("an instance was waiting");
            match self.next_instance() {
                Ok(next) => self.waiting = Some(next),
                // At the instance limit, or a failure: the next accept tries again.
                Err(e) => tracing::debug!(error = %e, "wharf: no next pipe instance yet"),
            }
            let peer = wharf_transport::pipe_client_identity(connected.pipe()).unwrap_or_default();
            return Poll::Ready(Ok((PipeStream::new(connected), peer)));
        }
    }

    /// Waits for the next client.
    pub async fn accept(&mut self) -> io::Result<(PipeStream, PeerIdentity)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}

/// `ERROR_NO_DATA`: the client closed its end before the server connected.
const ERROR_NO_DATA: i32 = windows_sys::Win32::Foundation::ERROR_NO_DATA as i32;

fn register(name: &str, handle: std::os::windows::io::OwnedHandle) -> Result<Registered, TransportError> {
    Registered::new(handle).map_err(|e| TransportError::io("register", format!("pipe:{name}"), e))
}

/// Connects to pipe `name`, retrying while every instance is busy (and
/// through a moment when the pipe is missing once it was found busy: a
/// server restarting; see `PipeRetry::after_open_error`) until `timeout`
/// has passed, never beyond it, pausing with `sleep` (the runtime's
/// timer). Reports the server's process id and user SID.
pub async fn connect<S, F>(
    name: &str,
    timeout: Duration,
    mut sleep: S,
) -> Result<(PipeStream, PeerIdentity), TransportError>
where
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let mut retry = PipeRetry::new(Instant::now(), timeout);
    loop {
        match wharf_transport::open_pipe_client(name) {
            Ok(handle) => {
                let io = register(name, handle)?;
                let peer = wharf_transport::pipe_server_identity(io.pipe()).unwrap_or_default();
                return Ok((PipeStream::new(io), peer));
            }
            Err(e) => sleep(retry.after_open_error(name, e, Instant::now())?).await,
        }
    }
}
