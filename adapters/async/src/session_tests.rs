//! The driver over an in-memory stream, polled by hand: what an idle
//! connection holds.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use wharf_core::{Config, Connection, Event};
use wharf_transport::PeerIdentity;

use super::{Driver, Inner};
use crate::codec::Codec;
use crate::io::ByteStream;
use crate::router::Router;
use crate::runtime::{BoxFuture, Runtime, Timer};

/// Nothing is spawned; timers never fire.
#[derive(Debug)]
struct Still;

#[derive(Debug)]
struct NeverFires;

impl Timer for NeverFires {
    fn reset(self: Pin<&mut Self>, _: Instant) {}
    fn poll_fire(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl Runtime for Still {
    fn spawn(&self, _: BoxFuture) {}
    fn timer(&self, _: Instant) -> Pin<Box<dyn Timer>> {
        Box::pin(NeverFires)
    }
}

/// One end of an in-memory byte pipe: `to_us` is what the peer wrote.
#[derive(Clone, Default)]
struct Pipe {
    to_us: Arc<Mutex<Vec<u8>>>,
    from_us: Arc<Mutex<Vec<u8>>>,
    /// Read readiness asked for while nothing had arrived.
    waits: Arc<Mutex<usize>>,
}

impl ByteStream for Pipe {
    fn poll_read_buf(&mut self, _: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let mut data = self.to_us.lock().unwrap();
        let n = data.len().min(buf.capacity() - buf.len());
        if n == 0 {
            return Poll::Pending;
        }
        buf.extend_from_slice(&data[..n]);
        data.drain(..n);
        Poll::Ready(Ok(n))
    }

    fn poll_read_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.to_us.lock().unwrap().is_empty() {
            *self.waits.lock().unwrap() += 1;
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_vectored(&mut self, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut out = self.from_us.lock().unwrap();
        let mut n = 0;
        for b in bufs {
            out.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Everything `conn` queued, written into `to`.
fn write_to(conn: &mut Connection, to: &Mutex<Vec<u8>>, now: Instant) {
    while let Some(chunk) = conn.poll_transmit(now) {
        to.lock().unwrap().extend_from_slice(&chunk);
    }
}

/// A client session, its driver, its pipe, and the core server connection
/// at the other end.
struct Rig {
    inner: Arc<Inner>,
    driver: Pin<Box<dyn Future<Output = ()>>>,
    pipe: Pipe,
    server: Connection,
}

/// A [`Rig`] with the handshake done.
fn connected() -> Rig {
    let now = Instant::now();
    let config = Arc::new(Config::default());
    let client = Connection::client(config.clone(), Bytes::new(), now).unwrap();
    let mut server = Connection::server(config, now).unwrap();
    let inner = Inner::new(
        client,
        Arc::new(Still),
        Arc::new(Router::new()),
        PeerIdentity::default(),
        Codec::default(),
        None,
        16,
    );
    let pipe = Pipe::default();
    let stream: Box<dyn ByteStream> = Box::new(pipe.clone());
    let mut driver: Pin<Box<dyn Future<Output = ()>>> = Box::pin(Driver::new(inner.clone(), stream));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(driver.as_mut().poll(&mut cx).is_pending());
    // The HELLO went out; the server answers.
    let hello = std::mem::take(&mut *pipe.from_us.lock().unwrap());
    server.handle_input(&hello, now);
    assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
    server.accept(7).unwrap();
    assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
    write_to(&mut server, &pipe.to_us, now);
    assert!(driver.as_mut().poll(&mut cx).is_pending());
    assert!(inner.lock().peer_name.is_some(), "the WELCOME was read");
    Rig { inner, driver, pipe, server }
}

#[test]
fn an_idle_session_holds_no_receive_block() {
    let Rig { inner, mut driver, pipe, mut server } = connected();
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(inner.lock().conn.buffered_capacity(), 0, "the handshake's blocks were given back");
    assert!(*pipe.waits.lock().unwrap() > 0, "the driver waits for data without a block");
    // Idle wake-ups take nothing.
    for _ in 0..5 {
        assert!(driver.as_mut().poll(&mut cx).is_pending());
        assert_eq!(inner.lock().conn.buffered_capacity(), 0);
    }
    // Data arriving is read as before.
    let now = Instant::now();
    server.notify("hi", Bytes::from_static(b"there"), Default::default()).unwrap();
    write_to(&mut server, &pipe.to_us, now);
    assert!(driver.as_mut().poll(&mut cx).is_pending());
    assert!(pipe.to_us.lock().unwrap().is_empty(), "the notification was read");
    assert!(inner.lock().conn.stats().frames_received >= 2);
}

#[test]
fn an_idle_session_makes_no_slot_maps_waiters_or_names_until_used() {
    let Rig { inner, mut driver, pipe, .. } = connected();
    let mut cx = Context::from_waker(Waker::noop());
    {
        let st = inner.lock();
        let made = [st.calls.is_made(), st.serving.is_made(), st.subs.is_made(), st.publishes.is_made()];
        assert_eq!(made, [false; 4], "calls, serving, subs, publishes");
        assert!(!st.pings.is_made() && st.closed.is_none() && st.goodbye.is_none());
        assert!(st.waiters.is_none() && st.names.0.is_none(), "no waiters, no names");
    }
    // A call makes its map (and only that one).
    let session = crate::Session { inner: inner.clone() };
    let mut call = Box::pin(session.call_raw("m", Bytes::from_static(b"x"), Default::default()));
    assert!(call.as_mut().poll(&mut cx).is_pending());
    assert!(driver.as_mut().poll(&mut cx).is_pending());
    assert!(!pipe.from_us.lock().unwrap().is_empty(), "the request went out");
    let st = inner.lock();
    assert!(st.calls.is_made() && st.calls.get(&1).is_some());
    assert!(!st.serving.is_made() && !st.subs.is_made());
    assert!(st.names.0.is_some(), "the method name is remembered");
}

#[test]
fn the_kept_peer_identity_is_the_kernels_and_small() {
    use super::KeptPeer;
    use wharf_transport::Sid;
    let unix = PeerIdentity { uid: Some(1000), gid: Some(100), pid: Some(42), ..PeerIdentity::default() };
    let tcp = PeerIdentity { addr: Some("127.0.0.1:9".parse().unwrap()), ..PeerIdentity::default() };
    let pipe = PeerIdentity { pid: Some(7), sid: Some(Sid::LOCAL_SYSTEM), ..PeerIdentity::default() };
    for p in [unix, tcp, pipe, PeerIdentity::default()] {
        assert_eq!(KeptPeer::new(p).get(), p);
    }
    assert!(KeptPeer::new(unix).full.is_none(), "a Unix peer's ids are kept inline");
    assert!(std::mem::size_of::<KeptPeer>() * 3 <= std::mem::size_of::<PeerIdentity>());
}
