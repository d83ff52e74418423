//! [`Conn`]: one wharf-core `Connection` driven over one mio stream.

use std::io::{self, IoSlice};
use std::time::Instant;

use mio::event::Source;
use mio::{Interest, Registry, Token};
use wharf_core::{Connection, Event};
use wharf_transport::PeerIdentity;

use crate::net::{CONN_INTEREST, Stream};

/// Reads one [`Conn::drive`] does at most before it lets other connections
/// run (the connection stays marked as having work, see
/// [`Conn::has_work`]).
const READ_BUDGET: usize = 16;

/// Slices gathered into one vectored write.
const WRITE_SLICES: usize = 64;

/// A wharf connection on a mio stream: the core's [`Connection`] plus the
/// socket or pipe it talks over, and the readiness mio last reported.
///
/// mio sources are edge-triggered, so a `Conn` remembers whether the last
/// read or write stopped on "would block"; it reads and writes again only
/// when mio reports readiness for that direction ([`ready`](Self::ready))
/// or when it stopped for a reason of its own (the core stopped reading
/// while the application had not taken its events, or the read budget ran
/// out). The driving contract, after any input or command:
///
/// 1. [`drive`](Self::drive) (reads, feeds the core, fires due timers,
///    writes);
/// 2. take every event with [`poll_event`](Self::poll_event), answering
///    through [`core`](Self::core);
/// 3. `drive` again if you issued commands or took events (the core may
///    want to read again), then wait in `mio::Poll::poll` for at most
///    [`deadline`](Self::deadline). (A connection wrapped with
///    [`registered`](Self::registered) also needs
///    [`update_interest`](Self::update_interest) before the wait; one
///    registered with [`register`](Self::register) does it in `drive`.)
///
/// When [`is_finished`](Self::is_finished) is true the connection has
/// ended and everything it queued is written: deregister and drop it.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    core: Connection,
    peer: PeerIdentity,
    /// The last read did not end on "would block" (or mio said readable).
    readable: bool,
    /// The last write did not end on "would block" (or mio said writable).
    writable: bool,
    /// End of stream was read.
    eof: bool,
    /// The write half was shut down after the connection ended.
    shut: bool,
    gather: Vec<u8>,
    /// Where the stream is registered, and with which interest.
    token: Option<Token>,
    interest: Interest,
    /// A clone of the registry this connection registered itself with
    /// ([`Conn::register`]), so that `drive` keeps its interest right.
    registry: Option<Registry>,
}

impl Conn {
    /// Wraps a connected stream that is not registered yet (register it
    /// with [`register`](Self::register)) and a core connection.
    pub fn new(stream: Stream, core: Connection, peer: PeerIdentity) -> Conn {
        Conn {
            stream,
            core,
            peer,
            readable: true,
            writable: true,
            eof: false,
            shut: false,
            gather: Vec::new(),
            token: None,
            interest: CONN_INTEREST,
            registry: None,
        }
    }

    /// Wraps a stream that [`Listener::accept`](crate::Listener::accept)
    /// registered under `token`.
    pub fn registered(stream: Stream, core: Connection, peer: PeerIdentity, token: Token) -> Conn {
        let mut conn = Conn::new(stream, core, peer);
        conn.token = Some(token);
        conn
    }

    /// Registers the stream with `registry` under `token` (edge-triggered)
    /// and keeps a clone of the registry (one descriptor), so that
    /// [`drive`](Self::drive) adds and removes writable interest itself.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = Some(token);
        self.interest = CONN_INTEREST;
        self.stream.register(registry, token, CONN_INTEREST)?;
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    /// Asks mio for writability only while a write is blocked (Unix; a
    /// no-op elsewhere). [`drive`](Self::drive) does it for a connection
    /// registered with [`register`](Self::register); one wrapped with
    /// [`registered`](Self::registered) must call this after `drive`,
    /// before waiting in `poll` (as [`Server`](crate::Server) does).
    pub fn update_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let want = if !self.writable && self.core.transmit_len() > 0 {
            CONN_INTEREST.add(Interest::WRITABLE)
        } else {
            CONN_INTEREST
        };
        match self.token {
            Some(token) if want != self.interest => {
                self.interest = want;
                self.stream.reregister(registry, token, want)
            }
            _ => Ok(()),
        }
    }

    /// Deregisters the stream.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }

    /// The protocol state: issue commands here (request, respond, publish,
    /// close, ...), then call [`drive`](Self::drive).
    pub fn core(&mut self) -> &mut Connection {
        &mut self.core
    }

    /// The protocol state, read-only.
    pub fn core_ref(&self) -> &Connection {
        &self.core
    }

    /// Who is at the other end, as the kernel reported it.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Records the readiness mio reported for this connection's token.
    pub fn ready(&mut self, event: &mio::event::Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.writable = true;
        }
    }

    /// The next event of the core, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.poll_event()
    }

    /// Whether the connection can make progress without waiting for mio:
    /// it has events for the application, output it can write, or input it
    /// stopped reading for a reason of its own.
    pub fn has_work(&self) -> bool {
        self.core.has_events() || (self.writable && self.core.transmit_len() > 0) || self.wants_to_read()
    }

    fn wants_to_read(&self) -> bool {
        self.readable && !self.eof && self.core.wants_read() && !self.core.is_closed()
    }

    /// When [`drive`](Self::drive) must next run even if mio reports
    /// nothing: the core's next timer, or `now` if work is pending.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        if self.has_work() {
            return Some(now);
        }
        if self.is_finished() {
            return None;
        }
        self.core.next_timer()
    }

    /// Whether the connection ended and everything it queued was written
    /// (or given up: the core drops output a peer does not read within
    /// `write_stall_timeout` of the end): deregister and drop it.
    pub fn is_finished(&self) -> bool {
        self.core.is_closed() && self.core.transmit_len() == 0
    }

    /// Does all the I/O that is possible now: fires the core's due timers,
    /// writes what it queued (one vectored write at a time, until the
    /// stream would block), reads while the core wants input (up to a
    /// budget), and writes again what the input caused. Never blocks.
    pub fn drive(&mut self, now: Instant) {
        if self.core.next_timer().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        let mut reads = 0;
        loop {
            self.write(now);
            if reads == READ_BUDGET || !self.wants_to_read() {
                break;
            }
            reads += 1;
            let buf = self.core.recv_buffer();
            let room = buf.capacity() - buf.len();
            let r = self.stream.read_buf(buf);
            match r {
                Ok(0) => {
                    self.eof = true;
                    self.core.handle_eof(now);
                }
                Ok(n) => {
                    // A read that did not fill the room it had drained the
                    // socket: the next bytes bring a new edge (Unix; mio on
                    // Windows re-arms only on a would-block it sees), so
                    // no read is spent to hear "would block". Exceptions
                    // the kernel makes, a read stopping early at TCP urgent
                    // data or at a Unix message carrying SCM_RIGHTS (which
                    // wharf peers never send), leave bytes unread until
                    // the peer's next write: only a peer doing that is
                    // slowed, and its calls still end by their deadlines.
                    if cfg!(unix) && n < room {
                        self.readable = false;
                    }
                    self.core.handle_received(n, now)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.eof = true;
                    self.core.handle_transport_error(&e, now);
                }
            }
        }
        if self.core.is_closed() && self.core.transmit_len() == 0 && !self.shut {
            self.shut = true;
            self.stream.shutdown_write();
        }
        if let Some(registry) = self.registry.take() {
            if let Err(e) = self.update_interest(&registry) {
                let e = io::Error::new(e.kind(), format!("re-registering the connection with mio: {e}"));
                self.core.handle_transport_error(&e, now);
            }
            self.registry = Some(registry);
        }
    }

    fn write(&mut self, now: Instant) {
        while self.writable && self.core.transmit_len() > 0 {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let n = self.core.transmit_slices(now, &mut slices);
            if n == 0 {
                return;
            }
            match self.stream.write_slices(&slices[..n], &mut self.gather) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "the stream accepted no bytes");
                    self.core.handle_transport_error(&e, now);
                    return;
                }
                Ok(written) => self.core.advance_transmit(written, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.core.handle_transport_error(&e, now);
                    return;
                }
            }
        }
    }
}
