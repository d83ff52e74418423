//! Peers on the bare core over blocking Unix sockets, for cases that need
//! a peer doing exactly what the case says and nothing else (never
//! reading, going silent): [`RawClient`] and [`SilentServer`]. Shared by
//! the fault cases (`tests/conformance/faults.rs`) and
//! `tests/conformance_mio.rs`.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wharf::core::{Bytes, Config, Connection, Event};

/// A client on the bare core over a blocking socket: it completes the
/// handshake, then does only what the case makes it do; it vanishes on
/// drop.
pub struct RawClient {
    /// The socket (blocking).
    pub stream: UnixStream,
    /// The protocol state.
    pub conn: Connection,
}

impl RawClient {
    /// Connects to `path` and completes the handshake.
    pub fn connect(path: &std::path::Path) -> io::Result<RawClient> {
        let stream = UnixStream::connect(path)?;
        let conn = Connection::client(Arc::new(Config::default()), Bytes::new(), Instant::now()).expect("client");
        let mut c = RawClient { stream, conn };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            c.flush()?;
            while let Some(e) = c.conn.poll_event() {
                match e {
                    Event::Connected(_) => return Ok(c),
                    Event::Closed(e) => return Err(io::Error::other(format!("handshake failed: {e}"))),
                    _ => {}
                }
            }
            let n = c.stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("end of stream in the handshake"));
            }
            c.conn.handle_input(&buf[..n], Instant::now());
        }
    }

    /// Writes everything queued (blocking).
    pub fn flush(&mut self) -> io::Result<()> {
        write_all_queued(&mut self.stream, &mut self.conn)
    }
}

/// Writes everything `conn` has queued to `stream` (blocking).
fn write_all_queued(stream: &mut UnixStream, conn: &mut Connection) -> io::Result<()> {
    loop {
        let mut slices = [IoSlice::new(&[]); 32];
        let n = conn.transmit_slices(Instant::now(), &mut slices);
        if n == 0 {
            return Ok(());
        }
        let written = stream.write_vectored(&slices[..n])?;
        conn.advance_transmit(written, Instant::now());
    }
}

/// A server on the bare core over a blocking socket, one client, driven
/// step by step by the case: it answers, pings, notifies or keeps silent
/// exactly when the case says.
pub struct ScriptedServer {
    /// The socket (blocking, reads bounded by 20 s).
    pub stream: UnixStream,
    /// The protocol state.
    pub conn: Connection,
    buf: Vec<u8>,
}

impl ScriptedServer {
    /// Accepts one client on `listener` and completes its handshake with
    /// `config` (so the WELCOME carries its keepalive interval).
    pub fn accept(listener: &UnixListener, config: Config) -> ScriptedServer {
        let (stream, _) = listener.accept().expect("the scripted server accepts");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
        let conn = Connection::server(Arc::new(config), Instant::now()).expect("server");
        let mut s = ScriptedServer { stream, conn, buf: vec![0u8; 64 * 1024] };
        s.until(|e, conn| matches!(e, Event::HandshakeRequest(_)) && conn.accept(1).is_ok());
        s.flush();
        s
    }

    /// Writes what is queued, then reads until `want` accepts an event
    /// (given the connection, to answer it); other events are dropped.
    pub fn until(&mut self, mut want: impl FnMut(Event, &mut Connection) -> bool) {
        loop {
            while let Some(e) = self.conn.poll_event() {
                if want(e, &mut self.conn) {
                    return;
                }
            }
            self.flush();
            let n = self.stream.read(&mut self.buf).expect("the scripted server reads");
            assert!(n > 0, "the client left");
            self.conn.handle_input(&self.buf[..n], Instant::now());
        }
    }

    /// Writes everything queued (blocking).
    pub fn flush(&mut self) {
        write_all_queued(&mut self.stream, &mut self.conn).expect("the scripted server writes");
    }

    /// Waits until the client closes its end (or 20 s pass).
    pub fn until_closed(mut self) {
        while matches!(self.stream.read(&mut self.buf), Ok(n) if n > 0) {}
    }
}

/// A server on the bare core that accepts one client, completes its
/// handshake with its own `config` (so the WELCOME carries its keepalive
/// interval) and then answers nothing: it never reads or writes again,
/// its socket left open, until it is dropped. What a hung server process
/// looks like to its clients.
pub struct SilentServer {
    welcomed: Arc<Mutex<Option<Instant>>>,
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    /// Listens on `path` (a fresh name in a private directory).
    pub fn start(path: &Path, config: Config) -> SilentServer {
        let listener = UnixListener::bind(path).expect("the silent server binds");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let welcomed = Arc::new(Mutex::new(None));
        let (stop, stopped) = mpsc::channel::<()>();
        let at = welcomed.clone();
        let thread = std::thread::spawn(move || {
            // Until a client comes, or the case ends without one.
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if stopped.recv_timeout(Duration::from_millis(5)) != Err(mpsc::RecvTimeoutError::Timeout) {
                            return;
                        }
                    }
                    Err(e) => panic!("the silent server's accept: {e}"),
                }
            };
            stream.set_nonblocking(false).expect("blocking stream");
            stream.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
            let mut conn = Connection::server(Arc::new(config), Instant::now()).expect("server");
            let mut buf = vec![0u8; 64 * 1024];
            'handshake: loop {
                let n = stream.read(&mut buf).expect("the silent server reads the HELLO");
                assert!(n > 0, "the client left in the handshake");
                conn.handle_input(&buf[..n], Instant::now());
                while let Some(e) = conn.poll_event() {
                    if let Event::HandshakeRequest(_) = e {
                        conn.accept(1).expect("accept");
                        break 'handshake;
                    }
                }
            }
            write_all_queued(&mut stream, &mut conn).expect("the silent server writes its WELCOME");
            *at.lock().unwrap() = Some(Instant::now());
            // Silent from now on, the socket open.
            let _ = stopped.recv_timeout(Duration::from_secs(120));
            drop(stream);
        });
        SilentServer { welcomed, stop, thread: Some(thread) }
    }

    /// When it finished writing its WELCOME (the last bytes it ever sends).
    pub fn welcomed_at(&self) -> Option<Instant> {
        *self.welcomed.lock().unwrap()
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            // Its panic (a failed handshake) is the case's failure, unless
            // the case is failing already.
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the silent server's thread panicked");
            }
        }
    }
}
