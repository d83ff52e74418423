//! [`Connection`]: one peer's protocol state, driven by bytes, time and commands.

mod block;
mod input;
mod queue;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Config, MAX_TIMEOUT, duration_ms};
use crate::error::{AckError, CallError, ConfigError, ConnectionError, ProtocolError, SendError};
use crate::event::{CancelReason, Connected, Event, PeerLimits, PublishId, RequestId, SubscriptionId};
use crate::stats::Stats;
use crate::text::Text;
use crate::wire::{
    CallKind, Code, ErrorBody, Frame, Goodbye, HEADER_LEN, Hello, MAX_VERSION, MIN_VERSION, MessageBatch, Metadata,
    NO_HINT, Notify, PREAMBLE, Reject, Request, SlowConsumerPolicy, TraceId, Welcome,
};

use block::SpareBlock;
use queue::SendQueue;

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connects, sends HELLO, uses odd ids.
    Client,
    /// Accepts, answers with WELCOME or REJECT, uses even ids.
    Server,
}

/// How long a call may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Timeout {
    /// [`Config::request_timeout`] for unary calls; none for streaming calls.
    #[default]
    Default,
    /// No deadline.
    Never,
    /// This long from when the call is made.
    After(Duration),
}

/// Options of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Shape of the call.
    pub kind: CallKind,
    /// Deadline.
    pub timeout: Timeout,
    /// Metadata sent with the call.
    pub metadata: Metadata,
    /// Trace id sent with the call.
    pub trace_id: Option<TraceId>,
}

impl CallOptions {
    /// A unary call with the default timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the call's shape.
    pub fn kind(mut self, kind: CallKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Timeout) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the trace id.
    pub fn trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }
}

/// Options of one subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Match every topic that starts with the given one.
    pub prefix: bool,
    /// What the server does when we fall behind.
    pub policy: SlowConsumerPolicy,
}

/// Hashes ids; deterministic (no random seed) and cheap. Maps keyed by
/// peer-chosen ids are bounded by configured limits, so collisions are
/// bounded too.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
enum State {
    ServerAwaitHello,
    /// HELLO received: the client's name, for `Connected`.
    ServerAwaitAccept(Text),
    ClientAwaitWelcome,
    Established,
    Closed(ConnectionError),
}

/// Receive-side flow control of one stream.
#[derive(Debug, Default)]
struct RecvWindow {
    /// Bytes the peer may still send.
    credit: i64,
    /// Bytes received and not yet reported consumed.
    held: u64,
    /// Bytes consumed and not yet granted back.
    grant: u64,
}

#[derive(Debug)]
struct OutCall {
    kind: CallKind,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    send_credit: i64,
    send_blocked: bool,
    sent_end: bool,
    recv: RecvWindow,
}

#[derive(Debug)]
struct InCall {
    kind: CallKind,
    deadline: Option<Instant>,
    peer_ended: bool,
    send_credit: i64,
    send_blocked: bool,
    recv: RecvWindow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SubState {
    /// Client: SUBSCRIBE sent, no ACK yet. Server: waiting for the application.
    Pending,
    Active,
    /// Client: UNSUBSCRIBE sent.
    Unsubscribing,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Client: waiting for the ACK of SUBSCRIBE. Server: waiting for the
    /// application to accept or refuse it.
    Subscribe,
    /// Client: waiting for the ACK of UNSUBSCRIBE of this subscription.
    Unsubscribe(u64),
    /// Client: waiting for the ACK of PUBLISH. Server: waiting for the
    /// application's `ack_publish`.
    Publish,
}

/// Pub/sub bookkeeping of a connection: its subscriptions (client: ours;
/// server: the client's) and the operations waiting for an ACK. A
/// connection that only makes calls never has one.
#[derive(Debug, Default)]
struct PubSub {
    subs: IdMap<SubState>,
    ops: IdMap<Op>,
}

/// What [`Connection::subs`] and [`Connection::ops`] show before there is
/// a [`PubSub`].
static NO_SUBS: IdMap<SubState> = HashMap::with_hasher(BuildHasherDefault::new());
static NO_OPS: IdMap<Op> = HashMap::with_hasher(BuildHasherDefault::new());

#[derive(Debug)]
struct Closing {
    /// We sent GOODBYE first (`close`), rather than answering the peer's.
    initiated_locally: bool,
    goodbye_sent: bool,
    local: Option<(Code, String)>,
    received: Option<(Code, Text, Option<Duration>)>,
    deadline: Instant,
}

/// An entry of the event queue.
#[derive(Debug)]
enum Queued {
    /// One event.
    One(Event),
    /// The messages of a MESSAGES frame not yet handed out (never empty).
    Batch { subscription: SubscriptionId, topic: Text, batch: MessageBatch },
}

/// A PING the application sent ([`Connection::ping`]).
#[derive(Debug)]
struct Ping {
    id: u64,
    sent: Instant,
}

/// Longest GOODBYE message or REJECT reason we send: with the fixed fields
/// the frame stays under the smallest `max_frame_size` a peer may announce.
const MAX_REASON: usize = 1000;
/// Longest ERROR message we send.
const MAX_ERROR_MESSAGE: usize = 4096;
/// Largest body of a MESSAGES frame the server builds: the size of a send
/// block, so that a batch grows in place.
const MAX_BATCH_BODY: u32 = 16 * 1024;
/// Most user pings outstanding at once.
const MAX_PINGS: usize = 64;
/// Smallest `max_frame_size` a peer may announce.
const MIN_PEER_FRAME: u32 = 1024;
/// Read granularity used to size the receive buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Between frames, a receive block still shared with frames handed out in
/// events is read into until less than this much room is left.
const MIN_READ: usize = 8 * 1024;

/// How much a large frame's receive buffer may grow at once, as a multiple
/// of what it already holds. A peer that declares a large frame and then
/// stalls has made the connection reserve at most this many times what it
/// sent (plus one [`READ_CHUNK`]), never the declared length; a 1 MiB frame
/// is then read with one growth after its first block instead of four
/// (each growth copies what arrived: doubling copied about the whole frame
/// again, this copies a sixteenth; docs/PERFORMANCE.md, *Bandwidth*).
const RECV_GROWTH: usize = 16;
/// The receive block of a connection that has not needed a full one yet
/// (new, or whose blocks were released): enough for a handshake or a
/// small message, and for a driver to find out whether anything arrived.
const SMALL_BLOCK: usize = 256;

/// The protocol state of one connection, client or server. Pure: it never
/// performs I/O, never reads a clock, never spawns.
///
/// # The contract
///
/// Methods fall into four groups:
///
/// 1. **Inputs**: [`handle_input`](Self::handle_input) (bytes read from the
///    transport), or the zero-copy pair [`recv_buffer`](Self::recv_buffer) +
///    [`handle_received`](Self::handle_received); [`handle_eof`](Self::handle_eof);
///    [`handle_timeout`](Self::handle_timeout); and
///    [`handle_transport_error`](Self::handle_transport_error).
/// 2. **Commands** from the application (`request`, `respond`, `notify`,
///    `subscribe`, `publish`, `stream_send`, `cancel`, `ping`, `close`, ...).
///    They only enqueue; they never block and never perform I/O.
/// 3. **Outputs**, drained after every input or command in this order:
///    transmit ([`transmit_slices`](Self::transmit_slices) +
///    [`advance_transmit`](Self::advance_transmit), or
///    [`poll_transmit`](Self::poll_transmit)), then
///    [`poll_timeout`](Self::poll_timeout), then
///    [`poll_event`](Self::poll_event) until it returns `None`.
/// 4. **Getters** ([`state`](Self::is_established), [`stats`](Self::stats),
///    [`wants_read`](Self::wants_read), ...).
///
/// Every `now` must come from a monotonic clock; an earlier `now` than one
/// already seen is treated as the later one. Extra `handle_timeout` calls
/// are harmless.
///
/// Backpressure: a command returns [`SendError::Blocked`] when the transmit
/// queue holds [`Config::max_outbound_buffered`] bytes, and
/// [`Event::Writable`] follows once it drains below half. The driver stops
/// reading while [`wants_read`](Self::wants_read) is false.
///
/// # Example: a client and a server wired together in memory
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use bytes::Bytes;
/// use wharf_core::{CallOptions, Config, Connection, Event};
///
/// let now = Instant::now();
/// let config = Arc::new(Config::default());
/// let mut client = Connection::client(config.clone(), Bytes::new(), now).unwrap();
/// let mut server = Connection::server(config, now).unwrap();
///
/// // Move bytes both ways until nothing is left to send.
/// fn pump(a: &mut Connection, b: &mut Connection, now: Instant) {
///     loop {
///         let mut moved = false;
///         while let Some(chunk) = a.poll_transmit(now) { b.handle_input(&chunk, now); moved = true; }
///         while let Some(chunk) = b.poll_transmit(now) { a.handle_input(&chunk, now); moved = true; }
///         if !moved { break; }
///     }
/// }
///
/// pump(&mut client, &mut server, now);
/// assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
/// server.accept(1).unwrap();
/// pump(&mut client, &mut server, now);
/// assert!(matches!(client.poll_event(), Some(Event::Connected(_))));
/// assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
///
/// let id = client.request("echo", Bytes::from_static(b"hi"), CallOptions::new(), now).unwrap();
/// pump(&mut client, &mut server, now);
/// let Some(Event::Request(call)) = server.poll_event() else { panic!() };
/// server.respond(call.id, call.payload).unwrap();
/// pump(&mut client, &mut server, now);
/// assert_eq!(
///     client.poll_event(),
///     Some(Event::Response { id, result: Ok(Bytes::from_static(b"hi")) })
/// );
/// ```
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    state: State,
    now: Instant,
    handshake_deadline: Instant,

    // Inbound.
    recv: BytesMut,
    /// The previous receive block, while frames handed out in events may
    /// still share it. See [`Connection::make_recv_room`].
    recv_spare: SpareBlock,
    /// `recv` is a small block (at most [`SMALL_BLOCK`]), or none yet.
    recv_small: bool,
    /// The last input filled the small block: the traffic needs a full one.
    recv_filled: bool,
    /// The handshake is done and its small blocks (and the send queue's and
    /// event queue's first slots) are still held: they are given back the
    /// first time nothing is buffered (see [`Connection::settle`]).
    settle: bool,
    preamble_seen: usize,
    pending_header: Option<crate::wire::Header>,

    // Outbound.
    out: SendQueue,
    /// Backs the text of frames built from borrowed strings (see
    /// [`Connection::scratch_text`]).
    scratch: BytesMut,
    transmit_dirty: bool,
    stall_since: Option<Instant>,
    /// After the connection ended: when output still queued (a final
    /// GOODBYE a peer does not read) is given up.
    linger: Option<Instant>,
    blocked: bool,

    // Negotiated.
    version: u16,
    connection_id: u64,
    peer: PeerLimits,
    keepalive: Option<Duration>,
    last_recv: Instant,
    keepalive_outstanding: bool,

    // Calls and operations.
    next_op: u64,
    last_peer_op: u64,
    outgoing: IdMap<OutCall>,
    incoming: IdMap<InCall>,
    out_streams: u32,
    in_streams: u32,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Boxed: made at the first subscription or acknowledged publish.
    pubsub: Option<Box<PubSub>>,
    pending_publishes: u32,
    /// The application's PINGs waiting for their PONG.
    pings: VecDeque<Ping>,
    /// The keepalive's PING waiting for its PONG (0: none). Not in `pings`,
    /// so that a connection exchanging only keepalives never makes that
    /// queue, and a newer keepalive PING replaces an unanswered one.
    keepalive_ping: u64,
    next_ping: u64,

    // Events.
    events: VecDeque<Queued>,
    event_bytes: usize,
    read_paused: bool,

    /// Boxed: only a closing connection has one.
    close: Option<Box<Closing>>,
    stats: Stats,
}

impl Connection {
    /// A client connection. Queues the preamble and HELLO (with `auth` as
    /// the authentication payload) at once.
    pub fn client(config: Arc<Config>, auth: Bytes, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut c = Connection::new(Role::Client, config, now);
        let hello = Frame::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            max_frame_size: c.config.max_frame_size,
            max_in_flight: c.config.max_in_flight,
            max_streams: c.config.max_streams,
            initial_stream_window: c.config.initial_stream_window,
            keepalive_ms: c.config.keepalive_interval.map_or(0, duration_ms),
            client_name: c.config.name.clone(),
            auth,
        });
        let len = hello.body_len().map_err(|_| ConfigError {
            field: "auth",
            value: "too long".into(),
            requirement: "the HELLO must fit in 4 GiB",
        })?;
        c.out.push_raw(&PREAMBLE);
        c.enqueue_len(&hello, len);
        Ok(c)
    }

    /// A server connection, waiting for the client's preamble and HELLO.
    pub fn server(config: Arc<Config>, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Connection::new(Role::Server, config, now))
    }

    fn new(role: Role, config: Arc<Config>, now: Instant) -> Self {
        let handshake_deadline = now + config.handshake_timeout;
        Connection {
            role,
            state: match role {
                Role::Client => State::ClientAwaitWelcome,
                Role::Server => State::ServerAwaitHello,
            },
            now,
            handshake_deadline,
            recv: BytesMut::new(),
            recv_spare: SpareBlock::default(),
            recv_small: true,
            recv_filled: false,
            settle: false,
            preamble_seen: 0,
            pending_header: None,
            out: SendQueue::default(),
            scratch: BytesMut::new(),
            transmit_dirty: false,
            stall_since: None,
            linger: None,
            blocked: false,
            version: 0,
            connection_id: 0,
            peer: PeerLimits {
                max_frame_size: MIN_PEER_FRAME,
                max_in_flight: 0,
                max_streams: 0,
                max_subscriptions: 0,
                initial_stream_window: 0,
            },
            keepalive: None,
            last_recv: now,
            keepalive_outstanding: false,
            next_op: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            last_peer_op: 0,
            outgoing: IdMap::default(),
            incoming: IdMap::default(),
            out_streams: 0,
            in_streams: 0,
            timers: BinaryHeap::new(),
            pubsub: None,
            pending_publishes: 0,
            pings: VecDeque::new(),
            keepalive_ping: 0,
            next_ping: 1,
            // No slot until the first event, which takes one (see
            // `queue_event`).
            events: VecDeque::new(),
            event_bytes: 0,
            read_paused: false,
            close: None,
            stats: Stats::default(),
            config,
        }
    }

    // ------------------------------------------------------------------
    // Getters
    // ------------------------------------------------------------------

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the handshake completed and the connection has not ended.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Whether a goodbye was sent or received (the connection is draining).
    pub fn is_closing(&self) -> bool {
        self.close.is_some() && !self.is_closed()
    }

    /// Whether the connection has ended. The transmit queue may still hold
    /// final bytes (a GOODBYE, last responses): write them, then close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// The terminal error, once closed.
    pub fn error(&self) -> Option<&ConnectionError> {
        match &self.state {
            State::Closed(e) => Some(e),
            _ => None,
        }
    }

    /// The id the server gave this connection (0 before the handshake).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// Protocol version in use (0 before the handshake).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The peer's announced receive limits.
    pub fn peer_limits(&self) -> PeerLimits {
        self.peer
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the driver should read more input. False while undelivered
    /// events hold [`Config::max_inbound_buffered`] bytes (payloads and
    /// strings, plus a fixed 64 bytes per event), while twice
    /// [`Config::max_outbound_buffered`] bytes wait to be written (the peer
    /// is not reading what we send), and once the connection has ended.
    pub fn wants_read(&self) -> bool {
        !self.is_closed()
            && self.event_bytes < self.config.max_inbound_buffered
            && self.out.len() < self.config.max_outbound_buffered.saturating_mul(2)
    }

    /// Whether there are bytes to write.
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn transmit_len(&self) -> usize {
        self.out.len()
    }

    /// Calls we made that have no outcome yet.
    pub fn calls_in_flight(&self) -> usize {
        self.outgoing.len()
    }

    /// Calls the peer made that we have not answered yet.
    pub fn calls_being_served(&self) -> usize {
        self.incoming.len()
    }

    /// Subscriptions known to this connection (client: ours; server: the client's).
    pub fn subscription_count(&self) -> usize {
        self.subs().len()
    }

    /// Bytes held by undelivered events (payloads and strings, plus 64 per event).
    pub fn inbound_buffered(&self) -> usize {
        self.event_bytes
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// Feeds bytes read from the transport (copied into the receive buffer).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.tick(now);
        if self.is_closed() {
            return;
        }
        self.make_recv_room(data.len(), data.len().max(READ_CHUNK));
        self.recv.extend_from_slice(data);
        self.note_small_filled();
        self.stats.bytes_received += data.len() as u64;
        self.note_received(data.len());
        self.process_input();
    }

    /// Whether the receive buffer has room to read into without taking a
    /// block. False for a new connection, for one whose blocks were given
    /// back (after its handshake, by [`release_buffers`](Self::release_buffers)
    /// or by the keepalive), and when the block in use is full:
    /// [`recv_buffer`](Self::recv_buffer) would then take one (or reclaim
    /// one in place). A driver that can wait for its transport to become
    /// readable should do so before calling it in that case, so that an
    /// idle connection holds no receive block.
    pub fn has_recv_room(&self) -> bool {
        self.recv.capacity() > self.recv.len()
    }

    /// The receive buffer, for reading from the transport without a copy:
    /// append bytes to it (into its spare capacity, which this call
    /// reserves), then call [`handle_received`](Self::handle_received).
    /// Bytes already in the buffer must not be modified.
    pub fn recv_buffer(&mut self) -> &mut BytesMut {
        let (need, want) = match self.pending_header {
            // Grow towards the declared frame, but never by more than
            // RECV_GROWTH times what has actually arrived (so a lying length
            // cannot make us reserve what was declared).
            Some(h) => {
                let len = self.recv.len();
                let remaining = (HEADER_LEN + h.len as usize).saturating_sub(len).max(1);
                let room = self.recv.capacity() - len;
                if len + remaining > READ_CHUNK && room >= remaining.min(MIN_READ) {
                    // A large frame with room left: read into it; grow
                    // only once it is (nearly) full.
                    return &mut self.recv;
                }
                let want = remaining.min(READ_CHUNK.max(RECV_GROWTH * len));
                (want, want)
            }
            // A small block: any room will do to see what arrives.
            None if self.recv_small => (1, SMALL_BLOCK),
            None => (MIN_READ, READ_CHUNK),
        };
        self.make_recv_room(need, want);
        &mut self.recv
    }

    /// Makes room in the receive buffer for at least `need` more bytes,
    /// and for `want` if that costs no allocation.
    ///
    /// Frames are split off the receive block and handed to the application
    /// as `Bytes` slices of it, so the block stays shared until every event
    /// payload and string cut from it is dropped. In the steady state this
    /// allocates nothing:
    ///
    /// - if the application dropped everything, the block is reclaimed in
    ///   place (the start of a partial frame moves to its front);
    /// - if it still holds something (a handler running elsewhere, events
    ///   not yet polled), reading goes on into the block's remaining room
    ///   down to `need`, then moves to the spare block (see [`SpareBlock`]).
    ///
    /// A frame larger than one block grows the one buffer instead.
    ///
    /// A new connection, or one whose blocks were released, starts with a
    /// small block ([`SMALL_BLOCK`]) and keeps it while what arrives fits in
    /// it and nothing cut from it is still held; otherwise it moves to a
    /// full block for good (until the next release).
    fn make_recv_room(&mut self, need: usize, want: usize) {
        if self.recv_small {
            if !self.small_recv_room(need) {
                self.leave_small_block(want);
            }
            return;
        }
        let len = self.recv.len();
        let room = self.recv.capacity() - len;
        if room >= want {
            return;
        }
        if len + need > READ_CHUNK {
            // A large frame: reclaim or grow the one buffer.
            self.recv.reserve(want);
            return;
        }
        let full = room < need;
        if self.recv.try_reclaim(want) || (full && self.recv.try_reclaim(need)) {
            if full {
                self.recv_spare.not_needed();
            }
            return;
        }
        if full {
            self.recv_spare.switch(&mut self.recv, need, len + want);
        }
    }

    /// Whether the small block can take `need` more bytes (reclaiming it in
    /// place if nothing cut from it is alive); takes it if there is none yet.
    fn small_recv_room(&mut self, need: usize) -> bool {
        let len = self.recv.len();
        if self.recv_filled || len + need > SMALL_BLOCK {
            return false;
        }
        if self.recv.capacity() == 0 && len == 0 {
            // No block yet (an exactly filled one sets `recv_filled`).
            self.recv = BytesMut::with_capacity(SMALL_BLOCK);
            return true;
        }
        self.recv.try_reclaim(SMALL_BLOCK - len) || self.recv.capacity() - len >= need
    }

    /// Moves what the small block holds to a full block; the small block is
    /// dropped (its memory stays with the frames still holding it).
    fn leave_small_block(&mut self, want: usize) {
        let mut block = BytesMut::with_capacity(READ_CHUNK.max(self.recv.len() + want));
        block.extend_from_slice(&self.recv);
        self.recv = block;
        self.recv_small = false;
        self.recv_filled = false;
    }

    /// Notes that the input just appended left no room in the small block.
    fn note_small_filled(&mut self) {
        if self.recv_small && self.recv.len() == self.recv.capacity() {
            self.recv_filled = true;
        }
    }

    /// Gives back the receive and send blocks, if nothing is buffered in
    /// them: the receive buffer holds no partial frame, and nothing waits to
    /// be written (the event queue's and the send queue's spare slots go
    /// too, when they are empty). The next read or command takes a small block again (see
    /// [`buffered_capacity`](Self::buffered_capacity)), which grows back to a
    /// full one only if the traffic needs it. A side with bytes buffered is
    /// left as it is. Frames and payloads already handed out in events stay
    /// valid: they own their share of the block, which is freed when the
    /// last of them is dropped.
    ///
    /// The connection does this by itself when its keepalive finds the peer
    /// silent for a keepalive interval (only blocks larger than the small
    /// one are released then, so a connection that exchanges nothing but
    /// keepalives allocates nothing). With keepalive off, a driver that
    /// wants idle connections to hold less can call this when it goes idle;
    /// calling it per message would allocate a block per message.
    pub fn release_buffers(&mut self) {
        if self.recv.is_empty() {
            self.recv = BytesMut::new();
            self.recv_small = true;
            self.recv_filled = false;
            self.recv_spare.clear();
        }
        self.out.release();
        self.scratch = BytesMut::new();
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
    }

    /// After the handshake, the first time nothing is buffered (no partial
    /// frame received, nothing to write, no event to hand out): gives back
    /// the small blocks the handshake took, the send queue's chunk list and
    /// the event queue's slot, so that a connection that goes idle right
    /// after its handshake holds no buffer at all. Called where output
    /// drains and where the last event is taken. If the traffic moved to
    /// full blocks before such a moment came, they are kept (a busy
    /// connection is not made to allocate them again); the keepalive gives
    /// them back once the peer falls silent.
    #[cold]
    fn settle(&mut self) {
        if !self.is_established() {
            self.settle = false;
            return;
        }
        if !self.recv.is_empty() || !self.out.is_empty() || !self.events.is_empty() {
            return;
        }
        self.settle = false;
        if self.recv_small && self.recv_spare.capacity() == 0 && !self.out.holds_full_block() {
            self.release_buffers();
        }
    }

    /// [`release_buffers`](Self::release_buffers), for full blocks only.
    fn release_full_blocks(&mut self) {
        if !self.recv_small || self.recv_spare.capacity() > 0 || self.out.holds_full_block() {
            self.release_buffers();
        }
    }

    /// Bytes of buffer capacity this connection holds: the room left in its
    /// receive block and its spare (what it can read without allocating),
    /// its coalescing send block and spare, and its scratch buffer for
    /// strings. Memory still held by frames handed out in events, or by
    /// chunks waiting to be written, is not counted: it belongs to them and
    /// is freed with them. A new connection holds nothing; after its first
    /// read, a small block (256 bytes); a busy one, full blocks (64 KiB for
    /// receiving, 16 KiB for sending, and a spare of each while the
    /// application holds frames); after
    /// [`release_buffers`](Self::release_buffers), nothing again.
    pub fn buffered_capacity(&self) -> usize {
        self.recv.capacity() + self.recv_spare.capacity() + self.out.block_capacity() + self.scratch.capacity()
    }

    /// Processes bytes appended to [`recv_buffer`](Self::recv_buffer) since
    /// the last input.
    pub fn handle_received(&mut self, appended: usize, now: Instant) {
        self.tick(now);
        self.stats.bytes_received += appended as u64;
        if self.is_closed() {
            self.recv.clear();
            return;
        }
        self.note_small_filled();
        self.note_received(appended);
        self.process_input();
    }

    /// The transport reached end of stream.
    pub fn handle_eof(&mut self, now: Instant) {
        self.tick(now);
        if self.is_closed() {
            return;
        }
        let mid_frame = (self.preamble_seen > 0 && self.preamble_seen < PREAMBLE.len()) || !self.recv.is_empty();
        // After the peer's GOODBYE, end of stream is the normal end.
        let err = if !mid_frame && self.close.as_ref().is_some_and(|c| c.received.is_some()) {
            self.close_error()
        } else {
            ConnectionError::UnexpectedEof { mid_frame }
        };
        self.fail(err, None);
    }

    /// The transport failed; every pending operation fails with this error.
    pub fn handle_transport_error(&mut self, error: &std::io::Error, now: Instant) {
        self.tick(now);
        // Nothing queued can be written any more, even if the connection had
        // already ended (a final GOODBYE that the peer will never read).
        self.out.clear();
        self.stall_since = None;
        if self.is_closed() {
            return;
        }
        self.fail(ConnectionError::transport(error), None);
    }

    /// Time passed. Fires every timer due at `now`: handshake timeout,
    /// call deadlines, keepalive, write stall, close drain.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        let now = self.now;
        if self.is_closed() {
            if !self.out.is_empty() && self.linger.is_some_and(|t| now >= t) {
                tracing::debug!(
                    role = ?self.role,
                    connection_id = self.connection_id,
                    bytes = self.out.len(),
                    "wharf: output left after the connection ended was not read; dropped"
                );
                self.out.clear();
            }
            return;
        }
        if !self.is_established() {
            if now >= self.handshake_deadline {
                self.stats.handshake_timeouts = 1;
                if self.role == Role::Server && self.preamble_seen == PREAMBLE.len() {
                    self.send_reject(Code::HANDSHAKE_TIMEOUT, "handshake timed out", NO_HINT);
                }
                self.fail(ConnectionError::HandshakeTimeout(self.config.handshake_timeout), None);
            }
            return;
        }
        if let Some(since) = self.stall_since
            && !self.out.is_empty()
            && now >= since + self.config.write_stall_timeout
        {
            self.stats.write_stalls = 1;
            let queued = self.out.len();
            self.out.clear();
            self.fail(ConnectionError::PeerNotReading { stalled: now - since, queued }, None);
            return;
        }
        if let Some(k) = self.keepalive {
            if self.event_bytes >= self.config.max_inbound_buffered {
                // We stopped reading (the application is behind): silence
                // from the peer proves nothing about it.
                self.last_recv = now;
                self.keepalive_outstanding = false;
            }
            if now >= self.last_recv + k * 3 {
                self.stats.keepalive_timeouts = 1;
                self.fail(
                    ConnectionError::KeepaliveTimeout(k * 3),
                    Some((Code::KEEPALIVE_TIMEOUT, "keepalive timeout".into())),
                );
                return;
            }
            if !self.keepalive_outstanding && now >= self.last_recv + k {
                // The peer has been silent for an interval: give back full
                // blocks before the PING takes a small one.
                self.release_full_blocks();
                self.keepalive_outstanding = true;
                self.stats.keepalive_pings += 1;
                let id = self.alloc_ping();
                self.keepalive_ping = id;
                self.enqueue(&Frame::Ping { id });
            }
        }
        self.fire_call_timers(now);
        if let Some(c) = &self.close
            && now >= c.deadline
        {
            let err = self.close_error();
            self.fail(err, None);
            return;
        }
        self.maybe_finish_close();
    }

    fn fire_call_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.is_ours(id) {
                if self.outgoing.get(&id).is_some_and(|c| c.deadline == Some(t)) {
                    let call = self.remove_outgoing(id);
                    self.stats.calls_timed_out += 1;
                    self.enqueue(&Frame::Cancel { id });
                    let waited = call.and_then(|c| c.timeout).unwrap_or_default();
                    self.emit(Event::Response { id: RequestId(id), result: Err(CallError::TimedOut(waited)) });
                }
            } else if self.incoming.get(&id).is_some_and(|c| c.deadline == Some(t)) {
                self.remove_incoming(id);
                self.emit(Event::CallCancelled { id: RequestId(id), reason: CancelReason::DeadlineExceeded });
            }
        }
    }

    /// Any byte from the peer proves it alive (a large frame may take a
    /// while to arrive whole).
    fn note_received(&mut self, n: usize) {
        if n > 0 && self.is_established() {
            self.last_recv = self.now;
            self.keepalive_outstanding = false;
        }
    }

    fn tick(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    // ------------------------------------------------------------------
    // Outputs
    // ------------------------------------------------------------------

    /// Fills `out` with slices of the queued bytes, oldest first, for one
    /// vectored write; returns how many slices were filled. Report what
    /// was written with [`advance_transmit`](Self::advance_transmit).
    pub fn transmit_slices<'a>(&'a mut self, now: Instant, out: &mut [IoSlice<'a>]) -> usize {
        self.tick(now);
        self.transmit_dirty = false;
        if !self.out.is_empty() && self.stall_since.is_none() {
            self.stall_since = Some(self.now);
        }
        self.out.slices(out)
    }

    /// Reports that `n` bytes from the front of the transmit queue were written.
    pub fn advance_transmit(&mut self, n: usize, now: Instant) {
        self.tick(now);
        if n == 0 {
            return;
        }
        self.out.advance(n);
        self.stats.bytes_sent += n as u64;
        self.wrote_some();
    }

    /// Takes the next chunk of bytes to write (the driver owns writing it
    /// whole). Simpler than [`transmit_slices`](Self::transmit_slices) but
    /// one write per chunk.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        self.tick(now);
        self.transmit_dirty = false;
        let chunk = self.out.pop()?;
        self.stats.bytes_sent += chunk.len() as u64;
        self.wrote_some();
        Some(chunk)
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    ///
    /// Returns the time of the latest input while events are waiting or
    /// bytes were queued that the driver has not yet collected with
    /// [`transmit_slices`](Self::transmit_slices) or
    /// [`poll_transmit`](Self::poll_transmit): a driver must never sleep
    /// with output it has not seen. Otherwise the earliest timer, or `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.events.is_empty() || (self.transmit_dirty && !self.out.is_empty()) {
            return Some(self.now);
        }
        self.next_timer()
    }

    /// The earliest timer, ignoring pending output.
    pub fn next_timer(&self) -> Option<Instant> {
        if self.is_closed() {
            // Output left after the end is written while the peer reads,
            // and dropped at the linger deadline if it does not.
            return if self.out.is_empty() { None } else { self.linger };
        }
        if !self.is_established() {
            return Some(self.handshake_deadline);
        }
        let mut t: Option<Instant> = None;
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(k) = self.keepalive {
            consider(self.last_recv + k * 3);
            if !self.keepalive_outstanding {
                consider(self.last_recv + k);
            }
        }
        if let Some(s) = self.stall_since
            && !self.out.is_empty()
        {
            consider(s + self.config.write_stall_timeout);
        }
        if let Some(Reverse((d, _))) = self.timers.peek() {
            consider(*d);
        }
        if let Some(c) = &self.close {
            consider(c.deadline);
        }
        t
    }

    /// Whether events are waiting for [`poll_event`](Self::poll_event).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Client: if the next event is a message that came in a MESSAGES
    /// frame, takes that frame's messages not handed out yet all at once:
    /// the subscription, the topic and the batch (iterate it, or take its
    /// messages with [`MessageBatch::pop_front`]). The same messages
    /// [`poll_event`](Self::poll_event) would give one [`Event::Message`]
    /// each, for drivers that move them on in bulk. `None`, taking nothing,
    /// when the next event is anything else (or there is none).
    pub fn poll_message_batch(&mut self) -> Option<(SubscriptionId, Text, MessageBatch)> {
        if !matches!(self.events.front(), Some(Queued::Batch { .. })) {
            return None;
        }
        let Some(Queued::Batch { subscription, topic, batch }) = self.events.pop_front() else { return None };
        self.event_bytes -= Event::OVERHEAD + topic.len() + batch.as_bytes().len();
        self.note_read_resume();
        if batch.is_empty() {
            // Never queued empty; nothing to hand out.
            return self.poll_message_batch();
        }
        Some((subscription, topic, batch))
    }

    /// The next event, if any.
    ///
    /// The messages of a MESSAGES frame come out one [`Event::Message`]
    /// each, in order, as if each had come in a MESSAGE frame of its own.
    pub fn poll_event(&mut self) -> Option<Event> {
        let (e, freed) = loop {
            match self.events.front_mut()? {
                Queued::Batch { subscription, topic, batch } => {
                    let Some(payload) = batch.pop_front() else {
                        // Never queued empty; a drained batch leaves below.
                        self.events.pop_front();
                        continue;
                    };
                    let subscription = *subscription;
                    let mut freed = 4 + payload.len();
                    let topic = if batch.is_empty() {
                        freed += Event::OVERHEAD + topic.len();
                        let t = std::mem::take(topic);
                        self.events.pop_front();
                        t
                    } else {
                        topic.clone()
                    };
                    break (Event::Message { subscription, topic, payload }, freed);
                }
                Queued::One(_) => match self.events.pop_front() {
                    Some(Queued::One(e)) => {
                        let freed = e.held_bytes();
                        break (e, freed);
                    }
                    _ => continue,
                },
            }
        };
        self.event_bytes -= freed;
        self.note_read_resume();
        if self.settle {
            self.settle();
        }
        Some(e)
    }

    // ------------------------------------------------------------------
    // Server handshake
    // ------------------------------------------------------------------

    /// Server: accepts the client announced by [`Event::HandshakeRequest`],
    /// giving the connection a non-zero id.
    pub fn accept(&mut self, connection_id: u64) -> Result<(), SendError> {
        let State::ServerAwaitAccept(peer_name) = &mut self.state else {
            return Err(self.state_error("accept is only valid after a HandshakeRequest"));
        };
        if connection_id == 0 {
            return Err(SendError::Invalid { what: "connection id", reason: "must not be 0" });
        }
        let peer_name = std::mem::take(peer_name);
        let welcome = Frame::Welcome(Welcome {
            connection_id,
            version: self.version,
            max_frame_size: self.config.max_frame_size,
            max_in_flight: self.config.max_in_flight,
            max_streams: self.config.max_streams,
            max_subscriptions: self.config.max_subscriptions,
            initial_stream_window: self.config.initial_stream_window,
            keepalive_ms: self.keepalive.map_or(0, duration_ms),
            server_name: self.config.name.clone(),
        });
        self.out.push_raw(&PREAMBLE);
        self.enqueue(&welcome);
        self.connection_id = connection_id;
        self.establish(peer_name);
        Ok(())
    }

    /// Server: refuses the client announced by [`Event::HandshakeRequest`]
    /// (or any client still in its handshake). The connection ends at once
    /// with [`ConnectionError::LocallyClosed`]; the REJECT stays in the
    /// transmit queue for the driver to write before closing.
    pub fn reject(&mut self, code: Code, reason: &str, retry_after: Option<Duration>) -> Result<(), SendError> {
        if self.role != Role::Server || self.is_established() || self.is_closed() {
            return Err(self.state_error("reject is only valid on a server during the handshake"));
        }
        let reason = free_text(reason, MAX_REASON);
        self.send_reject(code, &reason, retry_after.map_or(NO_HINT, duration_ms));
        self.fail(ConnectionError::LocallyClosed { code, message: reason.to_string() }, None);
        Ok(())
    }

    fn send_reject(&mut self, code: Code, reason: &str, retry_after_ms: u32) {
        self.out.push_raw(&PREAMBLE);
        self.enqueue(&Frame::Reject(Reject {
            code,
            retry_after_ms,
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            reason: Text::from(reason.to_string()),
        }));
    }

    /// The handshake is complete; `peer_name` is the peer's, copied out of
    /// its frame.
    fn establish(&mut self, peer_name: Text) {
        self.state = State::Established;
        self.settle = true;
        self.last_recv = self.now;
        self.emit(Event::Connected(Connected {
            connection_id: self.connection_id,
            version: self.version,
            peer_name,
            peer_limits: self.peer,
            keepalive: self.keepalive,
        }));
    }

    // ------------------------------------------------------------------
    // Calls
    // ------------------------------------------------------------------

    /// Makes a call. Its one outcome arrives as [`Event::Response`] with
    /// the returned id. Streaming calls then use
    /// [`stream_send`](Self::stream_send) / [`stream_finish`](Self::stream_finish).
    pub fn request(
        &mut self,
        method: impl Into<Text>,
        payload: Bytes,
        options: CallOptions,
        now: Instant,
    ) -> Result<RequestId, SendError> {
        self.tick(now);
        self.check_can_start()?;
        let method = method.into();
        self.check_name("method", &method, self.config.max_method_len)?;
        self.check_metadata(&options.metadata)?;
        if self.outgoing.len() >= self.peer.max_in_flight as usize {
            return Err(SendError::TooManyInFlight { limit: self.peer.max_in_flight });
        }
        if options.kind.is_stream() && self.out_streams >= self.peer.max_streams {
            return Err(SendError::TooManyStreams { limit: self.peer.max_streams });
        }
        let timeout = match options.timeout {
            Timeout::Default if options.kind == CallKind::Unary => self.config.request_timeout,
            Timeout::Default | Timeout::Never => None,
            Timeout::After(d) => Some(d.min(MAX_TIMEOUT)),
        };
        let id = self.next_op;
        let frame = Frame::Request(Request {
            id,
            kind: options.kind,
            method,
            // Beyond what a u32 of milliseconds holds (49 days), the callee
            // gets no deadline; the caller still enforces its own.
            deadline_ms: timeout.map(duration_ms).filter(|&ms| ms != u32::MAX),
            trace_id: options.trace_id,
            metadata: options.metadata,
            payload,
        });
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.next_op += 2;
        let deadline = timeout.map(|d| self.now + d);
        if let Some(d) = deadline {
            self.push_timer(d, id);
        }
        if options.kind.is_stream() {
            self.out_streams += 1;
        }
        self.outgoing.insert(
            id,
            OutCall {
                kind: options.kind,
                timeout,
                deadline,
                send_credit: i64::from(self.peer.initial_stream_window),
                send_blocked: false,
                sent_end: false,
                recv: RecvWindow { credit: i64::from(self.config.initial_stream_window), held: 0, grant: 0 },
            },
        );
        self.stats.calls_sent += 1;
        self.enqueue_len(&frame, len);
        Ok(RequestId(id))
    }

    /// Answers a call the peer made (this also ends a streaming call).
    pub fn respond(&mut self, id: RequestId, payload: Bytes) -> Result<(), SendError> {
        self.answer(id, Frame::Response { id: id.0, payload })
    }

    /// Answers a call the peer made with an error.
    pub fn respond_error(&mut self, id: RequestId, code: Code, message: &str, data: Bytes) -> Result<(), SendError> {
        let message = self.scratch_text(message, MAX_ERROR_MESSAGE);
        self.answer(id, Frame::Error(ErrorBody { id: id.0, code, message, data }))
    }

    /// `s` made fit for the wire as [`free_text`] does, in a `Text` backed
    /// by the reusable scratch buffer: encoding copies the text into the
    /// transmit queue and drops the frame, so the buffer is free again by
    /// the next call and nothing is allocated in the steady state.
    fn scratch_text(&mut self, s: &str, max: usize) -> Text {
        let replaced;
        let mut s = s;
        if s.contains('\0') {
            replaced = s.replace('\0', "\u{FFFD}");
            s = &replaced;
        }
        let s = truncate_str(s, max);
        self.scratch.reserve(s.len());
        self.scratch.extend_from_slice(s.as_bytes());
        // Valid UTF-8 by construction (a `str` cut at a character boundary).
        Text::from_utf8(self.scratch.split().freeze()).unwrap_or_default()
    }

    fn answer(&mut self, id: RequestId, frame: Frame) -> Result<(), SendError> {
        self.check_can_answer()?;
        if !self.incoming.contains_key(&id.0) {
            return Err(SendError::UnknownCall { id: id.0 });
        }
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.remove_incoming(id.0);
        self.enqueue_len(&frame, len);
        self.maybe_finish_close();
        Ok(())
    }

    /// Sends a notification (no reply, no outcome).
    pub fn notify(&mut self, method: impl Into<Text>, payload: Bytes, options: CallOptions) -> Result<(), SendError> {
        self.check_can_start()?;
        let method = method.into();
        self.check_name("method", &method, self.config.max_method_len)?;
        self.check_metadata(&options.metadata)?;
        let frame = Frame::Notify(Notify { method, trace_id: options.trace_id, metadata: options.metadata, payload });
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.enqueue_len(&frame, len);
        Ok(())
    }

    /// Abandons a call we made (and resets its stream). Its outcome,
    /// [`CallError::Cancelled`], is emitted at once; a late response is
    /// discarded.
    pub fn cancel(&mut self, id: RequestId) -> Result<(), SendError> {
        if let State::Closed(e) = &self.state {
            return Err(SendError::Closed(e.clone()));
        }
        if self.remove_outgoing(id.0).is_none() {
            return Err(SendError::UnknownCall { id: id.0 });
        }
        self.enqueue(&Frame::Cancel { id: id.0 });
        self.emit(Event::Response { id, result: Err(CallError::Cancelled) });
        self.maybe_finish_close();
        Ok(())
    }

    /// Ends a streaming call abruptly from either side: a caller cancels, a
    /// callee answers with an error carrying `code` and `message`.
    pub fn stream_reset(&mut self, id: RequestId, code: Code, message: &str) -> Result<(), SendError> {
        if self.is_ours(id.0) { self.cancel(id) } else { self.respond_error(id, code, message, Bytes::new()) }
    }

    /// Sends one message on a streaming call (from the caller of a
    /// client-stream or bidi call, or the callee of a server-stream or bidi
    /// call). Returns [`SendError::StreamBlocked`] when the stream's credit
    /// is used up; [`Event::StreamWritable`] follows when it returns.
    pub fn stream_send(&mut self, id: RequestId, payload: Bytes) -> Result<(), SendError> {
        self.check_can_answer()?;
        let credit = if self.is_ours(id.0) {
            match self.outgoing.get(&id.0) {
                Some(c) if c.kind.caller_sends() && !c.sent_end => c.send_credit,
                Some(c) if c.sent_end => return Err(SendError::InvalidState("the stream was already finished")),
                Some(_) => return Err(SendError::InvalidState("the caller does not send on this call kind")),
                None => return Err(SendError::UnknownCall { id: id.0 }),
            }
        } else {
            match self.incoming.get(&id.0) {
                Some(c) if c.kind.callee_sends() => c.send_credit,
                Some(_) => return Err(SendError::InvalidState("the callee does not send on this call kind")),
                None => return Err(SendError::UnknownCall { id: id.0 }),
            }
        };
        let cost = (payload.len() as i64).max(1);
        let frame = Frame::Data { id: id.0, payload };
        let len = self.check_frame(&frame)?;
        if credit <= 0 {
            self.set_send_blocked(id.0);
            return Err(SendError::StreamBlocked { id: id.0 });
        }
        self.check_room()?;
        if let Some(c) = self.outgoing.get_mut(&id.0) {
            c.send_credit -= cost;
        } else if let Some(c) = self.incoming.get_mut(&id.0) {
            c.send_credit -= cost;
        }
        self.enqueue_len(&frame, len);
        Ok(())
    }

    fn set_send_blocked(&mut self, id: u64) {
        if let Some(c) = self.outgoing.get_mut(&id) {
            c.send_blocked = true;
        } else if let Some(c) = self.incoming.get_mut(&id) {
            c.send_blocked = true;
        }
    }

    /// Caller of a client-stream or bidi call: no more messages will follow.
    pub fn stream_finish(&mut self, id: RequestId) -> Result<(), SendError> {
        self.check_can_answer()?;
        if !self.is_ours(id.0) {
            return Err(SendError::InvalidState("a callee finishes a stream by responding"));
        }
        match self.outgoing.get_mut(&id.0) {
            Some(c) if c.kind.caller_sends() && !c.sent_end => c.sent_end = true,
            Some(c) if c.sent_end => return Err(SendError::InvalidState("the stream was already finished")),
            Some(_) => return Err(SendError::InvalidState("the caller does not send on this call kind")),
            None => return Err(SendError::UnknownCall { id: id.0 }),
        }
        self.enqueue(&Frame::End { id: id.0 });
        Ok(())
    }

    /// Reports that the application consumed a [`Event::StreamData`]
    /// message of `len` payload bytes, returning its credit to the sender
    /// (batched: a CREDIT frame goes out once half the window is consumed).
    /// Unknown or finished ids are ignored.
    pub fn stream_consumed(&mut self, id: RequestId, len: usize) {
        if self.is_closed() {
            return;
        }
        let window = u64::from(self.config.initial_stream_window);
        let recv = if let Some(c) = self.outgoing.get_mut(&id.0) {
            &mut c.recv
        } else if let Some(c) = self.incoming.get_mut(&id.0) {
            &mut c.recv
        } else {
            return;
        };
        let n = (len as u64).max(1).min(recv.held);
        recv.held -= n;
        recv.grant += n;
        if recv.grant >= (window / 2).max(1) {
            let inc = recv.grant;
            recv.grant = 0;
            recv.credit += inc as i64;
            self.enqueue(&Frame::Credit { id: id.0, increment: inc as u32 });
        }
    }

    // ------------------------------------------------------------------
    // Pub/sub, client side
    // ------------------------------------------------------------------

    /// Client: subscribes to `topic` (or every topic starting with it).
    /// Messages may arrive at once; [`Event::SubscribeResult`] confirms.
    pub fn subscribe(
        &mut self,
        topic: impl Into<Text>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, SendError> {
        self.check_client("subscribe")?;
        self.check_can_start()?;
        let topic = topic.into();
        self.check_topic(&topic, options.prefix)?;
        let limit = self.config.max_subscriptions.min(self.peer.max_subscriptions);
        if self.subs().len() >= limit as usize {
            return Err(SendError::TooManySubscriptions { limit });
        }
        let id = self.next_op;
        let frame = Frame::Subscribe { id, topic, prefix: options.prefix, policy: options.policy };
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.next_op += 2;
        let p = self.pubsub();
        p.subs.insert(id, SubState::Pending);
        p.ops.insert(id, Op::Subscribe);
        self.enqueue_len(&frame, len);
        Ok(SubscriptionId(id))
    }

    /// Client: ends a subscription. No message for it is delivered after
    /// this call; [`Event::UnsubscribeResult`] confirms. While the
    /// connection is closing this only forgets the subscription locally.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), SendError> {
        self.check_client("unsubscribe")?;
        if let State::Closed(e) = &self.state {
            return Err(SendError::Closed(e.clone()));
        }
        match self.subs().get(&id.0) {
            Some(SubState::Pending | SubState::Active) => {}
            _ => return Err(SendError::UnknownCall { id: id.0 }),
        }
        if self.close.is_some() {
            self.remove_sub(id.0);
            return Ok(());
        }
        let op = self.next_op;
        self.next_op += 2;
        let p = self.pubsub();
        p.subs.insert(id.0, SubState::Unsubscribing);
        p.ops.insert(op, Op::Unsubscribe(id.0));
        self.enqueue(&Frame::Unsubscribe { id: op, subscription: id.0 });
        Ok(())
    }

    /// Client: publishes a message through the server's broker. With
    /// `want_ack`, returns the id whose [`Event::PublishResult`] reports how
    /// many subscriptions received it.
    pub fn publish(
        &mut self,
        topic: impl Into<Text>,
        payload: Bytes,
        want_ack: bool,
    ) -> Result<Option<PublishId>, SendError> {
        self.check_client("publish")?;
        self.check_can_start()?;
        let topic = topic.into();
        self.check_topic(&topic, false)?;
        if want_ack && self.pending_publishes >= self.peer.max_in_flight {
            return Err(SendError::TooManyInFlight { limit: self.peer.max_in_flight });
        }
        let id = if want_ack { self.next_op } else { 0 };
        let frame = Frame::Publish { id, topic, payload };
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.enqueue_len(&frame, len);
        if want_ack {
            self.next_op += 2;
            self.pending_publishes += 1;
            self.pubsub().ops.insert(id, Op::Publish);
            Ok(Some(PublishId(id)))
        } else {
            Ok(None)
        }
    }

    // ------------------------------------------------------------------
    // Pub/sub, server side
    // ------------------------------------------------------------------

    /// Server: confirms a subscription announced by [`Event::Subscribe`].
    pub fn accept_subscription(&mut self, id: SubscriptionId) -> Result<(), SendError> {
        self.finish_subscribe(id, Code::OK)
    }

    /// Server: refuses a subscription announced by [`Event::Subscribe`]
    /// (for example with [`Code::ACCESS_DENIED`]).
    pub fn refuse_subscription(&mut self, id: SubscriptionId, code: Code) -> Result<(), SendError> {
        if code == Code::OK {
            return Err(SendError::Invalid { what: "code", reason: "refusing needs a non-OK code" });
        }
        self.finish_subscribe(id, code)
    }

    fn finish_subscribe(&mut self, id: SubscriptionId, code: Code) -> Result<(), SendError> {
        self.check_server("accept or refuse a subscription")?;
        self.check_can_answer()?;
        if !matches!(self.ops().get(&id.0), Some(Op::Subscribe)) {
            return Err(SendError::UnknownCall { id: id.0 });
        }
        self.remove_op(id.0);
        if code == Code::OK {
            self.pubsub().subs.insert(id.0, SubState::Active);
        } else {
            self.out.end_batch();
            self.remove_sub(id.0);
        }
        self.enqueue(&Frame::Ack { id: id.0, status: code, value: 0 });
        self.maybe_finish_close();
        Ok(())
    }

    /// Server: acknowledges a publish announced by [`Event::Publish`]:
    /// `Ok(n)` queued for `n` subscriptions, or `Err(code)` refused.
    pub fn ack_publish(&mut self, id: PublishId, result: Result<u32, Code>) -> Result<(), SendError> {
        self.check_server("acknowledge a publish")?;
        self.check_can_answer()?;
        if !matches!(self.ops().get(&id.0), Some(Op::Publish)) {
            return Err(SendError::UnknownCall { id: id.0 });
        }
        let (status, value) = match result {
            Ok(n) => (Code::OK, n),
            Err(Code::OK) => return Err(SendError::Invalid { what: "code", reason: "refusing needs a non-OK code" }),
            Err(c) => (c, 0),
        };
        self.remove_op(id.0);
        self.pending_publishes -= 1;
        self.enqueue(&Frame::Ack { id: id.0, status, value });
        self.maybe_finish_close();
        Ok(())
    }

    /// Server: delivers a published message to one of this client's
    /// subscriptions. [`SendError::Blocked`] means the client is behind:
    /// keep the message in the broker's queue for this subscriber.
    ///
    /// Small messages (up to 1 KiB) delivered one after another to the same
    /// subscription and topic, with nothing else queued in between and no
    /// write in between, travel in one MESSAGES frame (up to 16 KiB of
    /// body, and never above the peer's `max_frame_size`); the client's
    /// connection hands them out one [`Event::Message`] each. Nothing waits
    /// for a batch to fill: it is whatever piled up since the last write.
    pub fn deliver(&mut self, subscription: SubscriptionId, topic: &Text, payload: Bytes) -> Result<(), SendError> {
        self.deliver_ref(subscription, topic, &payload)
    }

    /// [`deliver`](Self::deliver) of a payload the caller keeps (the
    /// broker's queue): small payloads are copied into the frame, a large
    /// one is shared.
    pub(crate) fn deliver_ref(
        &mut self,
        subscription: SubscriptionId,
        topic: &Text,
        payload: &Bytes,
    ) -> Result<(), SendError> {
        let small = payload.len() <= queue::COPY_MAX;
        if small && matches!(self.state, State::Established) {
            // Joining the open batch: its subscription and topic passed the
            // checks below when it began, and it ends before either can
            // change (every change queues a frame, or ends it explicitly).
            self.check_room()?;
            let max_body = self.peer.max_frame_size.min(MAX_BATCH_BODY);
            if self.out.join_batch(subscription.0, topic, payload, max_body) {
                self.transmit_dirty = true;
                self.note_read_pause();
                return Ok(());
            }
        }
        self.check_deliverable(subscription)?;
        if topic.as_bytes().contains(&0) {
            return Err(SendError::Invalid { what: "topic", reason: "contains NUL" });
        }
        if small && topic.len() <= u16::MAX as usize {
            self.check_room()?;
            let body_len = (2 + topic.len() + 4 + payload.len()) as u32;
            if body_len <= self.peer.max_frame_size {
                self.out.push_batch(subscription.0, topic, payload, body_len);
                self.stats.frames_sent += 1;
                self.transmit_dirty = true;
                self.note_read_pause();
                return Ok(());
            }
        }
        let frame = Frame::Message { subscription: subscription.0, topic: topic.clone(), payload: payload.clone() };
        let len = self.check_frame(&frame)?;
        self.check_room()?;
        self.enqueue_len(&frame, len);
        Ok(())
    }

    /// Server: tells the client that `dropped` messages for this
    /// subscription were discarded because it fell behind.
    pub fn deliver_lagged(&mut self, subscription: SubscriptionId, dropped: u64) -> Result<(), SendError> {
        self.check_deliverable(subscription)?;
        self.enqueue(&Frame::Lagged { subscription: subscription.0, dropped });
        Ok(())
    }

    fn check_deliverable(&self, subscription: SubscriptionId) -> Result<(), SendError> {
        self.check_server("deliver")?;
        self.check_can_answer()?;
        match self.subs().get(&subscription.0) {
            Some(SubState::Active | SubState::Pending) => Ok(()),
            _ => Err(SendError::UnknownCall { id: subscription.0 }),
        }
    }

    // ------------------------------------------------------------------
    // Ping and close
    // ------------------------------------------------------------------

    /// Sends a PING; [`Event::Pong`] reports the round-trip time.
    pub fn ping(&mut self, now: Instant) -> Result<u64, SendError> {
        self.tick(now);
        self.check_can_answer()?;
        if self.pings.len() >= MAX_PINGS {
            return Err(SendError::TooManyInFlight { limit: MAX_PINGS as u32 });
        }
        let id = self.alloc_ping();
        self.pings.push_back(Ping { id, sent: self.now });
        self.enqueue(&Frame::Ping { id });
        Ok(id)
    }

    fn alloc_ping(&mut self) -> u64 {
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1).max(1);
        id
    }

    /// Starts a graceful close: sends GOODBYE with `code`, `message` and
    /// the reconnect hint and refuses new local operations. Peer operations
    /// that cross our GOODBYE are answered `SHUTTING_DOWN`, unprocessed. The
    /// peer answers with its own GOODBYE; once both are exchanged and the
    /// calls in flight in both directions have finished, the connection ends
    /// with [`Event::Closed`] (or after [`Config::close_timeout`]). During
    /// the handshake a server rejects the client instead.
    pub fn close(&mut self, code: Code, message: &str, reconnect_after: Option<Duration>, now: Instant) {
        self.tick(now);
        match self.state {
            State::Closed(_) => return,
            State::Established => {}
            State::ServerAwaitAccept(_) | State::ServerAwaitHello => {
                let _ = self.reject(code, message, reconnect_after);
                return;
            }
            State::ClientAwaitWelcome => {
                self.fail(ConnectionError::LocallyClosed { code, message: message.to_string() }, None);
                return;
            }
        }
        let message = free_text(message, MAX_REASON);
        let message = message.as_str();
        match &mut self.close {
            Some(c) if c.goodbye_sent => return,
            Some(c) => {
                c.goodbye_sent = true;
                c.local = Some((code, message.to_string()));
            }
            None => {
                self.close = Some(Box::new(Closing {
                    initiated_locally: true,
                    goodbye_sent: true,
                    local: Some((code, message.to_string())),
                    received: None,
                    deadline: self.now + self.config.close_timeout,
                }));
            }
        }
        self.enqueue(&Frame::Goodbye(Goodbye {
            code,
            reconnect_after_ms: reconnect_after.map_or(NO_HINT, duration_ms),
            message: Text::from(message.to_string()),
        }));
        self.maybe_finish_close();
    }

    /// Ends the connection at once: sends GOODBYE if possible, fails every
    /// pending operation with [`ConnectionError::LocallyClosed`].
    pub fn abort(&mut self, code: Code, message: &str, now: Instant) {
        self.tick(now);
        if self.is_closed() {
            return;
        }
        let message = free_text(message, MAX_REASON).to_string();
        self.fail(ConnectionError::LocallyClosed { code, message: message.clone() }, Some((code, message)));
    }

    // ------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------

    /// The subscriptions (none before the first).
    fn subs(&self) -> &IdMap<SubState> {
        self.pubsub.as_ref().map_or(&NO_SUBS, |p| &p.subs)
    }

    /// The operations waiting for an ACK (none before the first).
    fn ops(&self) -> &IdMap<Op> {
        self.pubsub.as_ref().map_or(&NO_OPS, |p| &p.ops)
    }

    /// The pub/sub bookkeeping, made if there was none.
    fn pubsub(&mut self) -> &mut PubSub {
        self.pubsub.get_or_insert_with(Default::default)
    }

    /// The pub/sub bookkeeping, if any.
    fn pubsub_mut(&mut self) -> Option<&mut PubSub> {
        self.pubsub.as_deref_mut()
    }

    /// Forgets a subscription; its state if it was known.
    fn remove_sub(&mut self, id: u64) -> Option<SubState> {
        self.pubsub_mut()?.subs.remove(&id)
    }

    /// Forgets an operation waiting for an ACK; returns it if it was known.
    fn remove_op(&mut self, id: u64) -> Option<Op> {
        self.pubsub_mut()?.ops.remove(&id)
    }

    fn is_ours(&self, id: u64) -> bool {
        (id & 1 == 1) == (self.role == Role::Client)
    }

    fn emit(&mut self, e: Event) {
        self.queue_event(e.held_bytes(), Queued::One(e));
    }

    /// Queues the messages of a MESSAGES frame, held as one entry and handed
    /// out one [`Event::Message`] each by [`poll_event`](Self::poll_event).
    /// Held bytes: one event's overhead and the topic, plus each message
    /// with its length prefix (released as it is polled).
    fn emit_batch(&mut self, subscription: SubscriptionId, topic: Text, batch: MessageBatch) {
        let held = Event::OVERHEAD + topic.len() + batch.as_bytes().len();
        self.queue_event(held, Queued::Batch { subscription, topic, batch });
    }

    fn queue_event(&mut self, held: usize, q: Queued) {
        self.event_bytes += held;
        if self.events.capacity() == 0 {
            // One slot: a driver that polls events as they come never
            // needs more, and a first push would otherwise take four.
            self.events.reserve_exact(1);
        }
        self.events.push_back(q);
        if self.event_bytes >= self.config.max_inbound_buffered {
            self.note_read_pause();
        }
    }

    /// Adds a call's deadline. Call it before the call is in `outgoing` /
    /// `incoming`: the compaction below keeps only timers of known calls, so
    /// it runs first and the new timer is pushed after it.
    fn push_timer(&mut self, at: Instant, id: u64) {
        // Lazy deletion leaves entries of finished calls behind; compact
        // when they dominate so the heap stays proportional to live calls.
        let live = self.outgoing.len() + self.incoming.len();
        if self.timers.len() >= 2 * live + 64 {
            let (out, inc) = (&self.outgoing, &self.incoming);
            self.timers.retain(|Reverse((t, id))| {
                out.get(id).is_some_and(|c| c.deadline == Some(*t))
                    || inc.get(id).is_some_and(|c| c.deadline == Some(*t))
                    || *id == 0
            });
        }
        self.timers.push(Reverse((at, id)));
    }

    fn remove_outgoing(&mut self, id: u64) -> Option<OutCall> {
        let c = self.outgoing.remove(&id)?;
        if c.kind.is_stream() {
            self.out_streams -= 1;
        }
        Some(c)
    }

    fn remove_incoming(&mut self, id: u64) -> Option<InCall> {
        let c = self.incoming.remove(&id)?;
        if c.kind.is_stream() {
            self.in_streams -= 1;
        }
        Some(c)
    }

    fn state_error(&self, what: &'static str) -> SendError {
        match &self.state {
            State::Closed(e) => SendError::Closed(e.clone()),
            _ => SendError::InvalidState(what),
        }
    }

    /// New operations: established and not closing.
    fn check_can_start(&self) -> Result<(), SendError> {
        match &self.state {
            State::Closed(e) => Err(SendError::Closed(e.clone())),
            State::Established if self.close.is_some() => Err(SendError::Closing),
            State::Established => Ok(()),
            _ => Err(SendError::NotConnected),
        }
    }

    /// Work on existing operations: established, closing allowed.
    fn check_can_answer(&self) -> Result<(), SendError> {
        match &self.state {
            State::Closed(e) => Err(SendError::Closed(e.clone())),
            State::Established => Ok(()),
            _ => Err(SendError::NotConnected),
        }
    }

    fn check_client(&self, what: &'static str) -> Result<(), SendError> {
        if self.role != Role::Client {
            return Err(SendError::InvalidState(match what {
                "subscribe" => "only clients subscribe; a server registers subscribers with its broker",
                "unsubscribe" => "only clients unsubscribe",
                _ => "only clients publish over the wire; a server publishes through its broker",
            }));
        }
        Ok(())
    }

    fn check_server(&self, what: &'static str) -> Result<(), SendError> {
        if self.role != Role::Server {
            return Err(SendError::InvalidState(match what {
                "deliver" => "only servers deliver messages",
                "acknowledge a publish" => "only servers acknowledge publishes",
                _ => "only servers accept or refuse subscriptions",
            }));
        }
        Ok(())
    }

    fn check_name(&self, what: &'static str, s: &str, max: u16) -> Result<(), SendError> {
        if s.is_empty() {
            return Err(SendError::Invalid { what, reason: "empty" });
        }
        if s.len() > max as usize {
            return Err(SendError::Invalid { what, reason: "longer than the configured maximum" });
        }
        if s.as_bytes().contains(&0) {
            return Err(SendError::Invalid { what, reason: "contains NUL" });
        }
        Ok(())
    }

    fn check_topic(&self, topic: &str, prefix: bool) -> Result<(), SendError> {
        if topic.is_empty() && prefix {
            return Ok(());
        }
        self.check_name("topic", topic, self.config.max_topic_len)
    }

    fn check_metadata(&self, m: &Metadata) -> Result<(), SendError> {
        if m.len() > self.config.max_metadata_entries as usize {
            return Err(SendError::Invalid { what: "metadata", reason: "more entries than max_metadata_entries" });
        }
        for (k, v) in m.iter() {
            self.check_name("metadata key", k, u16::MAX)?;
            if v.len() > u16::MAX as usize {
                return Err(SendError::Invalid { what: "metadata value", reason: "longer than 65535 bytes" });
            }
        }
        Ok(())
    }

    /// Checks the frame against the peer's size limit; returns its body length.
    fn check_frame(&self, frame: &Frame) -> Result<u32, SendError> {
        let len = frame.body_len().map_err(|_| SendError::TooLarge {
            frame: frame.frame_type(),
            len: usize::MAX,
            limit: self.peer.max_frame_size,
        })?;
        if len > self.peer.max_frame_size {
            return Err(SendError::TooLarge {
                frame: frame.frame_type(),
                len: len as usize,
                limit: self.peer.max_frame_size,
            });
        }
        Ok(len)
    }

    fn check_room(&mut self) -> Result<(), SendError> {
        if self.out.len() >= self.config.max_outbound_buffered {
            self.blocked = true;
            self.stats.outbound_blocked += 1;
            return Err(SendError::Blocked { queued: self.out.len(), limit: self.config.max_outbound_buffered });
        }
        Ok(())
    }

    fn check_writable(&mut self) {
        if self.blocked && self.out.len() < self.config.max_outbound_buffered / 2 && !self.is_closed() {
            self.blocked = false;
            self.emit(Event::Writable);
        }
    }

    /// Queues a frame the core generated itself (control frames, always
    /// small and bounded by the input that caused them).
    fn enqueue(&mut self, frame: &Frame) {
        match frame.body_len() {
            Ok(len) => self.enqueue_len(frame, len),
            Err(e) => tracing::error!(error = %e, "wharf: dropped an unencodable control frame"),
        }
    }

    fn enqueue_len(&mut self, frame: &Frame, len: u32) {
        self.out.push_frame(frame, len);
        self.stats.frames_sent += 1;
        self.transmit_dirty = true;
        self.note_read_pause();
    }

    /// The driver wrote some of the queue: the stall clock restarts, and so
    /// does the linger of output left after the end (it is dropped only
    /// after `write_stall_timeout` without progress, like a stall).
    fn wrote_some(&mut self) {
        self.stall_since = if self.out.is_empty() { None } else { Some(self.now) };
        if self.linger.is_some() {
            self.linger = Some(self.now + self.config.write_stall_timeout);
        }
        self.check_writable();
        self.note_read_resume();
        if self.settle {
            self.settle();
        }
    }

    /// Counts the moment reading becomes paused (`wants_read` turns
    /// false), whatever caused it: input handled, events held, or the
    /// outbound queue grown by a command.
    pub(crate) fn note_read_pause(&mut self) {
        if !self.read_paused && !self.wants_read() && !self.is_closed() {
            self.read_paused = true;
            self.stats.reads_paused += 1;
        }
    }

    /// Notes that reading may resume (`wants_read` true again).
    fn note_read_resume(&mut self) {
        if self.read_paused && self.wants_read() {
            self.read_paused = false;
        }
    }

    /// The terminal error of a graceful close: ours if we started it, the
    /// peer's (with its reconnect hint) if it did.
    fn close_error(&self) -> ConnectionError {
        match self.close.as_deref() {
            Some(Closing { initiated_locally: false, received: Some((code, message, reconnect_after)), .. }) => {
                ConnectionError::PeerClosed {
                    code: *code,
                    message: message.to_string(),
                    reconnect_after: *reconnect_after,
                }
            }
            Some(Closing { local: Some((code, message)), .. }) => {
                ConnectionError::LocallyClosed { code: *code, message: message.clone() }
            }
            _ => ConnectionError::LocallyClosed { code: Code::OK, message: String::new() },
        }
    }

    /// While closing: ends the connection once both sides have said
    /// goodbye (so every operation that crossed ours has been answered) and
    /// nothing is in flight in either direction.
    fn maybe_finish_close(&mut self) {
        if self.close.as_ref().is_some_and(|c| c.goodbye_sent && c.received.is_some())
            && !self.is_closed()
            && self.outgoing.is_empty()
            && self.incoming.is_empty()
            && self.ops().is_empty()
        {
            let err = self.close_error();
            self.fail(err, None);
        }
    }

    /// Ends the connection: optionally sends GOODBYE, fails every pending
    /// operation with `err`, emits [`Event::Closed`].
    fn fail(&mut self, err: ConnectionError, goodbye: Option<(Code, String)>) {
        if self.is_closed() {
            return;
        }
        tracing::debug!(role = ?self.role, connection_id = self.connection_id, error = %err, "wharf connection ended");
        self.linger = Some(self.now + self.config.write_stall_timeout);
        if let Some((code, message)) = goodbye
            && self.is_established()
            && !self.close.as_ref().is_some_and(|c| c.goodbye_sent)
        {
            self.enqueue(&Frame::Goodbye(Goodbye {
                code,
                reconnect_after_ms: NO_HINT,
                message: Text::from(free_text(&message, MAX_REASON).to_string()),
            }));
        }
        let mut ids: Vec<u64> = self.outgoing.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.emit(Event::Response { id: RequestId(id), result: Err(CallError::ConnectionLost(err.clone())) });
        }
        let mut ids: Vec<u64> = self.incoming.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.emit(Event::CallCancelled { id: RequestId(id), reason: CancelReason::ConnectionLost(err.clone()) });
        }
        if self.role == Role::Client {
            let mut ops: Vec<(u64, Op)> = self.ops().iter().map(|(k, v)| (*k, *v)).collect();
            ops.sort_unstable_by_key(|(k, _)| *k);
            for (id, op) in ops {
                let lost = Err(AckError::ConnectionLost(err.clone()));
                self.emit(match op {
                    Op::Subscribe => Event::SubscribeResult { id: SubscriptionId(id), result: lost },
                    Op::Unsubscribe(sub) => Event::UnsubscribeResult { id: SubscriptionId(sub), result: lost },
                    Op::Publish => Event::PublishResult { id: PublishId(id), result: lost.map(|()| 0) },
                });
            }
        }
        self.outgoing.clear();
        self.incoming.clear();
        self.pubsub = None;
        self.pings.clear();
        self.keepalive_ping = 0;
        self.timers.clear();
        self.out_streams = 0;
        self.in_streams = 0;
        self.pending_publishes = 0;
        self.recv = BytesMut::new();
        self.recv_spare.clear();
        self.recv_small = true;
        self.recv_filled = false;
        self.pending_header = None;
        self.blocked = false;
        self.state = State::Closed(err.clone());
        self.emit(Event::Closed(err));
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.stats.protocol_errors = 1;
        if matches!(e, ProtocolError::FrameTooLarge { .. }) {
            self.stats.frames_too_large = 1;
        }
        tracing::debug!(role = ?self.role, error = %e, "wharf: peer violated the protocol");
        let msg = e.to_string();
        self.fail(ConnectionError::Protocol(e), Some((Code::PROTOCOL_ERROR, msg)));
    }

    /// The frame size limit in force for what we receive.
    fn frame_limit(&self) -> u32 {
        if self.is_established() { self.config.max_frame_size } else { self.config.max_handshake_size }
    }
}

/// Free text (messages, reasons) as the wire needs it: no NUL (replaced by
/// U+FFFD), at most `max` bytes, cut at a character boundary.
fn free_text(s: &str, max: usize) -> String {
    if s.contains('\0') {
        truncate_str(&s.replace('\0', "\u{FFFD}"), max).to_string()
    } else {
        truncate_str(s, max).to_string()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a
/// character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
