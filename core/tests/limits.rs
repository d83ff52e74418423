//! Every limit in [`Config`] is enforced, and every hit is counted in
//! `stats()`: frame and handshake sizes (refused from the header, before
//! any allocation), outbound and inbound buffering, write stalls, request,
//! handshake, keepalive and close timeouts, calls in flight, method names,
//! metadata, notifications, and config validation itself.

mod support;

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::Pair;
use wharf_core::wire::{Frame, FrameType, HEADER_LEN, Header, Hello, MAX_VERSION, MIN_VERSION, PREAMBLE, Request};
use wharf_core::{
    Bytes, BytesMut, CallError, CallKind, CallOptions, CancelReason, Code, Config, Connection, ConnectionError, Event,
    MAX_TIMEOUT, Metadata, ProtocolError, RequestId, SendError, Text, Timeout,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

/// `Config::default()` with some fields changed.
fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out).expect("encodable test frame");
    }
    out.to_vec()
}

fn header(ty: FrameType, len: u32, id: u64) -> [u8; HEADER_LEN] {
    let mut out = Vec::with_capacity(HEADER_LEN);
    Header { len, ty, flags: 0, id }.encode(&mut out);
    out.try_into().unwrap()
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut b = Bytes::copy_from_slice(bytes);
    let mut frames = Vec::new();
    while let Some(f) = Frame::decode_one(&mut b, u32::MAX).expect("the connection wrote a valid frame") {
        frames.push(f);
    }
    assert!(b.is_empty(), "a partial frame was left: {} bytes", b.len());
    frames
}

fn take_output(conn: &mut Connection, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = conn.poll_transmit(now) {
        out.extend_from_slice(&chunk);
    }
    out
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn hello(auth: Bytes) -> Frame {
    Frame::Hello(Hello {
        min_version: MIN_VERSION,
        max_version: MAX_VERSION,
        max_frame_size: 1 << 20,
        max_in_flight: 128,
        max_streams: 128,
        initial_stream_window: 1 << 16,
        keepalive_ms: 0,
        client_name: Text::from_static("raw"),
        auth,
    })
}

fn raw_request(id: u64, method: &str, metadata: Metadata) -> Frame {
    Frame::Request(Request {
        id,
        kind: CallKind::Unary,
        method: Text::from(method.to_string()),
        deadline_ms: None,
        trace_id: None,
        metadata,
        payload: Bytes::new(),
    })
}

/// Appends `data` through the zero-copy path the way a real read does:
/// never more per read than the spare capacity `recv_buffer` offers.
/// Returns the largest capacity seen.
fn feed_zero_copy(conn: &mut Connection, mut data: &[u8], now: Instant) -> usize {
    let mut max_cap = 0;
    while !data.is_empty() && !conn.is_closed() {
        let buf = conn.recv_buffer();
        let spare = buf.capacity() - buf.len();
        assert!(spare > 0, "recv_buffer offered no room");
        let n = spare.min(data.len());
        buf.extend_from_slice(&data[..n]);
        max_cap = max_cap.max(buf.capacity());
        conn.handle_received(n, now);
        data = &data[n..];
    }
    max_cap
}

/// A server `Connection` whose client is hand-built bytes; input goes
/// through the zero-copy path.
struct RawClient {
    server: Connection,
    now: Instant,
}

impl RawClient {
    fn connect(config: Config) -> RawClient {
        let now = Instant::now();
        let mut server = Connection::server(Arc::new(config), now).unwrap();
        let mut input = PREAMBLE.to_vec();
        input.extend(encode(&[hello(Bytes::new())]));
        feed_zero_copy(&mut server, &input, now);
        assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
        server.accept(3).unwrap();
        assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
        let out = take_output(&mut server, now);
        assert_eq!(out[..8], PREAMBLE);
        assert!(matches!(decode_all(&out[8..]).as_slice(), [Frame::Welcome(_)]));
        RawClient { server, now }
    }

    fn send(&mut self, frames: &[Frame]) {
        let bytes = encode(frames);
        feed_zero_copy(&mut self.server, &bytes, self.now);
    }

    fn recv(&mut self) -> Vec<Frame> {
        decode_all(&take_output(&mut self.server, self.now))
    }

    fn events(&mut self) -> Vec<Event> {
        events(&mut self.server)
    }
}

fn closed_with(events: &[Event]) -> Option<ConnectionError> {
    events.iter().find_map(|e| match e {
        Event::Closed(err) => Some(err.clone()),
        _ => None,
    })
}

/// Writes what `conn` has queued into `pipe`, never letting the pipe hold
/// more than `cap` bytes (a socket buffer). Returns bytes written.
fn write_bounded(conn: &mut Connection, pipe: &mut VecDeque<u8>, cap: usize, now: Instant) -> usize {
    let mut total = 0;
    loop {
        let room = cap.saturating_sub(pipe.len());
        let mut slices = [IoSlice::new(&[]); 16];
        let n = conn.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            let take = s.len().min(room - written);
            pipe.extend(&s[..take]);
            written += take;
            if written == room {
                break;
            }
        }
        conn.advance_transmit(written, now);
        total += written;
        if written == 0 {
            break;
        }
    }
    total
}

/// Feeds `pipe` into `conn` while it wants to read.
fn read_all(conn: &mut Connection, pipe: &mut VecDeque<u8>, now: Instant) -> usize {
    let mut total = 0;
    while !pipe.is_empty() && conn.wants_read() {
        let n = pipe.len().min(64 * KIB);
        let chunk: Vec<u8> = pipe.drain(..n).collect();
        conn.handle_input(&chunk, now);
        total += n;
    }
    total
}

/// A client and a server joined by two bounded pipes; either side may
/// stop reading, and then the other side's writes stall once its pipe is
/// full (unlike `support::Pair`, whose pipes are unbounded).
struct Link {
    now: Instant,
    client: Connection,
    server: Connection,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    c2s: VecDeque<u8>,
    s2c: VecDeque<u8>,
    cap: usize,
    client_reading: bool,
    server_reading: bool,
}

impl Link {
    fn connected(client: Config, server: Config, cap: usize) -> Link {
        let Pair { client, server, now, .. } = Pair::connected_with(client, server);
        Link {
            now,
            client: client.conn,
            server: server.conn,
            client_events: Vec::new(),
            server_events: Vec::new(),
            c2s: VecDeque::new(),
            s2c: VecDeque::new(),
            cap,
            client_reading: true,
            server_reading: true,
        }
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = write_bounded(&mut self.client, &mut self.c2s, self.cap, now) > 0;
        moved |= write_bounded(&mut self.server, &mut self.s2c, self.cap, now) > 0;
        if self.server_reading {
            moved |= read_all(&mut self.server, &mut self.c2s, now) > 0;
        }
        if self.client_reading {
            moved |= read_all(&mut self.client, &mut self.s2c, now) > 0;
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
            moved = true;
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
            moved = true;
        }
        moved
    }

    fn drive(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("link did not become idle");
    }

    fn advance_to(&mut self, t: Instant) {
        self.now = t;
        self.client.handle_timeout(t);
        self.server.handle_timeout(t);
        self.drive();
    }
}

// ----------------------------------------------------------------------
// max_frame_size and max_handshake_size: refused from the header alone
// ----------------------------------------------------------------------

#[test]
fn frame_one_byte_above_max_frame_size_is_refused_from_the_header_without_allocating() {
    let mut raw = RawClient::connect(Config::default());
    let limit = raw.server.config().max_frame_size;
    let cap_before = raw.server.recv_buffer().capacity();
    let max_cap = feed_zero_copy(&mut raw.server, &header(FrameType::Request, limit + 1, 1), raw.now);
    let evs = raw.events();
    assert_eq!(
        closed_with(&evs),
        Some(ConnectionError::Protocol(ProtocolError::FrameTooLarge {
            frame: FrameType::Request,
            len: limit + 1,
            limit
        }))
    );
    assert!(!evs.iter().any(|e| matches!(e, Event::Request(_))));
    assert_eq!(raw.server.stats().frames_too_large, 1);
    assert_eq!(raw.server.stats().protocol_errors, 1);
    assert!(max_cap <= cap_before.max(128 * KIB), "receive buffer grew to {max_cap} for a refused header");
    let cap_after = raw.server.recv_buffer().capacity();
    assert!(cap_after <= cap_before.max(128 * KIB), "receive buffer is {cap_after} after a refused header");
    // The peer is told why.
    let frames = raw.recv();
    assert!(
        matches!(frames.as_slice(), [Frame::Goodbye(g)] if g.code == Code::PROTOCOL_ERROR),
        "expected GOODBYE PROTOCOL_ERROR, got {frames:?}"
    );
}

#[test]
fn frame_of_exactly_max_frame_size_is_accepted_and_one_more_byte_is_refused() {
    let server = config_with(|c| c.max_frame_size = 4096);
    let mut p = Pair::connected_with(Config::default(), server);
    let now = p.now;
    // REQUEST body: u16 method length + "m" + payload.
    let never = || CallOptions::new().timeout(Timeout::Never);
    let id = p.client.conn.request("m", Bytes::from(vec![0; 4096 - 3]), never(), now).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Request(c)] if c.id == id && c.payload.len() == 4093));
    // The local API refuses what the peer would refuse.
    assert_eq!(
        p.client.conn.request("m", Bytes::from(vec![0; 4096 - 2]), never(), now),
        Err(SendError::TooLarge { frame: FrameType::Request, len: 4097, limit: 4096 })
    );
    // A hand-built frame of 4097 bytes is refused by the receiver.
    p.server.conn.handle_input(&header(FrameType::Request, 4097, 101), now);
    p.drive();
    assert_eq!(
        closed_with(&p.server.take()),
        Some(ConnectionError::Protocol(ProtocolError::FrameTooLarge {
            frame: FrameType::Request,
            len: 4097,
            limit: 4096
        }))
    );
    assert_eq!(p.server.conn.stats().frames_too_large, 1);
}

#[test]
fn hello_above_max_handshake_size_is_refused_before_its_body_arrives() {
    let now = Instant::now();
    let mut server = Connection::server(Arc::new(Config::default()), now).unwrap();
    let limit = server.config().max_handshake_size;
    let cap_before = server.recv_buffer().capacity();
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&header(FrameType::Hello, limit + 1, 0));
    let max_cap = feed_zero_copy(&mut server, &input, now);
    let evs = events(&mut server);
    assert!(!evs.iter().any(|e| matches!(e, Event::HandshakeRequest(_))));
    assert_eq!(
        closed_with(&evs),
        Some(ConnectionError::Protocol(ProtocolError::FrameTooLarge {
            frame: FrameType::Hello,
            len: limit + 1,
            limit
        }))
    );
    assert_eq!(server.stats().frames_too_large, 1);
    assert!(max_cap <= cap_before.max(128 * KIB));
}

#[test]
fn hello_of_exactly_max_handshake_size_is_accepted_end_to_end() {
    // HELLO body: 26 fixed bytes + the (empty) client name + auth.
    let fits = Bytes::from(vec![b'a'; 64 * KIB - 26]);
    let mut p = Pair::with_auth(Config::default(), Config::default(), fits.clone());
    p.drive();
    assert!(p.server.conn.is_established());
    assert!(p.server.take().iter().any(|e| matches!(e, Event::HandshakeRequest(h) if h.auth == fits)));

    let too_big = Bytes::from(vec![b'a'; 64 * KIB - 25]);
    let mut p = Pair::with_auth(Config::default(), Config::default(), too_big);
    p.drive();
    let evs = p.server.take();
    assert!(!evs.iter().any(|e| matches!(e, Event::HandshakeRequest(_))));
    assert!(matches!(
        closed_with(&evs),
        Some(ConnectionError::Protocol(ProtocolError::FrameTooLarge { frame: FrameType::Hello, .. }))
    ));
    assert_eq!(p.server.conn.stats().frames_too_large, 1);
}

/// The smallest valid `max_handshake_size` (4096) must still let a client
/// read the largest WELCOME a valid server config produces (a 1024-byte
/// server name makes a 1052-byte body).
#[test]
fn smallest_handshake_limit_accepts_the_largest_valid_welcome() {
    let client = config_with(|c| c.max_handshake_size = 4096);
    let server = config_with(|c| c.name = Text::from("s".repeat(1024)));
    assert_eq!(client.validate(), Ok(()));
    assert_eq!(server.validate(), Ok(()));
    let mut p = Pair::new(client, server);
    p.drive();
    assert!(p.client.conn.is_established(), "{:?}", p.client.conn.error());
    assert!(p.client.take().iter().any(|e| matches!(e, Event::Connected(c) if c.peer_name.len() == 1024)));
}

#[test]
fn declared_100_mib_frame_followed_by_10_bytes_reserves_no_100_mib() {
    let config = config_with(|c| c.max_frame_size = 128 * MIB as u32);
    let mut raw = RawClient::connect(config);
    let declared = 100 * MIB as u32;
    let mut max_cap = feed_zero_copy(&mut raw.server, &header(FrameType::Request, declared, 1), raw.now);
    max_cap = max_cap.max(feed_zero_copy(&mut raw.server, &[0u8; 10], raw.now));
    assert!(raw.server.is_established(), "a frame under the limit is legal");
    let cap = raw.server.recv_buffer().capacity();
    assert!(max_cap <= 256 * KIB && cap <= 256 * KIB, "reserved {max_cap}/{cap} bytes for 26 received");

    // The buffer grows only with what actually arrives (1 MiB of 100):
    // one growth asks for at most 16 times what the buffer holds, so the
    // capacity stays within 17 times what arrived (plus a block and the
    // allocator's rounding), never near the 100 MiB declared.
    let mut received = HEADER_LEN + 10;
    let chunk = vec![0u8; 64 * KIB];
    for _ in 0..16 {
        max_cap = max_cap.max(feed_zero_copy(&mut raw.server, &chunk, raw.now));
        received += chunk.len();
        let cap = raw.server.recv_buffer().capacity();
        assert!(cap <= 17 * received + 256 * KIB, "capacity {cap} after {received} bytes received");
    }
    assert!(max_cap <= 17 * received + 256 * KIB);
    assert!(max_cap < 32 * MIB, "reserved {max_cap} of the 100 MiB declared after {received} bytes");

    // Then the peer stalls: the incomplete frame does not count as traffic,
    // and the keepalive timeout (3 × 10 s) ends the connection.
    let start = raw.now;
    raw.server.handle_timeout(start + Duration::from_secs(29));
    assert!(raw.server.is_established());
    raw.server.handle_timeout(start + Duration::from_secs(30));
    assert_eq!(raw.server.error(), Some(&ConnectionError::KeepaliveTimeout(Duration::from_secs(30))));
    assert_eq!(raw.server.stats().keepalive_timeouts, 1);
}

#[test]
fn declared_length_u32_max_is_refused() {
    // On a type whose length is otherwise unbounded: above the frame limit.
    let mut raw = RawClient::connect(Config::default());
    let limit = raw.server.config().max_frame_size;
    feed_zero_copy(&mut raw.server, &header(FrameType::Data, u32::MAX, 1), raw.now);
    assert_eq!(
        raw.server.error(),
        Some(&ConnectionError::Protocol(ProtocolError::FrameTooLarge { frame: FrameType::Data, len: u32::MAX, limit }))
    );
    assert_eq!(raw.server.stats().frames_too_large, 1);
    assert!(raw.server.recv_buffer().capacity() <= 128 * KIB);

    // On a fixed-size type: a bad length for the type.
    let mut raw = RawClient::connect(Config::default());
    feed_zero_copy(&mut raw.server, &header(FrameType::Ping, u32::MAX, 1), raw.now);
    assert!(matches!(
        raw.server.error(),
        Some(ConnectionError::Protocol(ProtocolError::BadLength { frame: FrameType::Ping, len: u32::MAX, .. }))
    ));
    assert_eq!(raw.server.stats().protocol_errors, 1);

    // During the handshake.
    let now = Instant::now();
    let mut server = Connection::server(Arc::new(Config::default()), now).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&header(FrameType::Hello, u32::MAX, 0));
    feed_zero_copy(&mut server, &input, now);
    assert!(matches!(
        server.error(),
        Some(ConnectionError::Protocol(ProtocolError::FrameTooLarge { frame: FrameType::Hello, len: u32::MAX, .. }))
    ));
}

// ----------------------------------------------------------------------
// max_outbound_buffered, max_inbound_buffered, write_stall_timeout
// ----------------------------------------------------------------------

#[test]
fn outbound_backpressure_blocks_commands_and_writable_follows_below_half() {
    const LIMIT: usize = 16 * KIB;
    let client = config_with(|c| c.max_outbound_buffered = LIMIT);
    let mut link = Link::connected(client, Config::default(), 4 * KIB);
    link.server_reading = false;

    let payload = Bytes::from(vec![9u8; 1000]);
    let mut sent = 0usize;
    let blocked = loop {
        match link.client.notify("n", payload.clone(), CallOptions::new()) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        link.drive();
        assert!(sent < 1000, "never blocked");
    };
    let queued = link.client.transmit_len();
    assert_eq!(blocked, SendError::Blocked { queued, limit: LIMIT });
    assert!(queued >= LIMIT, "blocked early at {queued}");
    assert!(queued < LIMIT + payload.len() + 64, "queue overshot by more than one message: {queued}");
    assert_eq!(link.client.stats().outbound_blocked, 1);
    // Every command that would queue is refused and counted.
    let now = link.now;
    assert!(matches!(link.client.request("r", Bytes::new(), CallOptions::new(), now), Err(SendError::Blocked { .. })));
    assert_eq!(link.client.stats().outbound_blocked, 2);
    assert_eq!(link.client.transmit_len(), queued);
    assert!(link.client_events.is_empty(), "no Writable while nothing drains");

    // The peer reads again. Drain by hand, 512 bytes at a time, through the pipe.
    read_all(&mut link.server, &mut link.c2s, now);
    let mut writable_at = None;
    while link.client.transmit_len() > 0 {
        let before = link.client.transmit_len();
        let mut slices = [IoSlice::new(&[]); 16];
        let n = link.client.transmit_slices(now, &mut slices);
        let mut left = 512;
        for s in &slices[..n] {
            let take = s.len().min(left);
            link.c2s.extend(&s[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        link.client.advance_transmit(512 - left, now);
        read_all(&mut link.server, &mut link.c2s, now);
        let after = link.client.transmit_len();
        for e in std::iter::from_fn(|| link.client.poll_event()) {
            assert_eq!(e, Event::Writable);
            assert!(writable_at.is_none(), "Writable emitted twice");
            assert!(after < LIMIT / 2, "Writable at {after} bytes queued, not below half of {LIMIT}");
            assert!(before >= LIMIT / 2, "Writable late: it should come as the queue crosses half");
            writable_at = Some(after);
        }
    }
    assert!(writable_at.is_some(), "no Writable after draining");
    link.client.notify("n", payload.clone(), CallOptions::new()).unwrap();
    sent += 1;
    link.server_reading = true;
    link.drive();
    let got = link.server_events.iter().filter(|e| matches!(e, Event::Notification(_))).count();
    assert_eq!(got, sent, "every accepted notification arrives, no refused one does");
}

#[test]
fn wants_read_is_false_while_undelivered_events_hold_max_inbound_buffered() {
    let server = config_with(|c| c.max_inbound_buffered = 4000);
    let mut p = Pair::connected_with(Config::default(), server);
    let now = p.now;
    for _ in 0..5 {
        p.client.conn.notify("n", Bytes::from(vec![1u8; 1000]), CallOptions::new()).unwrap();
    }
    let bytes = take_output(&mut p.client.conn, now);
    assert!(p.server.conn.wants_read());
    p.server.conn.handle_input(&bytes, now);
    // Each event holds its payload, its method name and a fixed 64 bytes.
    const PER_EVENT: usize = 1000 + 1 + 64;
    assert_eq!(p.server.conn.inbound_buffered(), 5 * PER_EVENT);
    assert!(!p.server.conn.wants_read(), "5325 bytes held by events, limit 4000");
    assert_eq!(p.server.conn.stats().reads_paused, 1);
    assert!(matches!(p.server.conn.poll_event(), Some(Event::Notification(_))));
    assert_eq!(p.server.conn.inbound_buffered(), 4 * PER_EVENT);
    assert!(!p.server.conn.wants_read(), "still above the limit");
    assert!(matches!(p.server.conn.poll_event(), Some(Event::Notification(_))));
    assert_eq!(p.server.conn.inbound_buffered(), 3 * PER_EVENT);
    assert!(p.server.conn.wants_read(), "below the limit after poll_event");
    while p.server.conn.poll_event().is_some() {}
    assert_eq!(p.server.conn.inbound_buffered(), 0);
    assert!(p.server.conn.wants_read());
}

/// Events whose payload is empty still cost memory while they wait: a flood
/// of empty notifications (19 bytes each on the wire) must pause reading
/// too, or the event queue grows without bound while the application is
/// slow to poll.
#[test]
fn a_flood_of_empty_notifications_pauses_reading() {
    const LIMIT: usize = 64 * KIB;
    let config = config_with(|c| c.max_inbound_buffered = LIMIT);
    let mut raw = RawClient::connect(config);
    let notify = Frame::Notify(wharf_core::wire::Notify {
        method: Text::from_static("m"),
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::new(),
    });
    let chunk = encode(&vec![notify; 4 * KIB / 19]);
    let mut fed = 0;
    // A driver that honours wants_read, reading 4 KiB at a time; the
    // application polls nothing.
    while raw.server.wants_read() && fed < 16 * MIB {
        feed_zero_copy(&mut raw.server, &chunk, raw.now);
        fed += chunk.len();
    }
    assert!(!raw.server.wants_read(), "read {fed} bytes ({} undelivered events) without pausing", fed / 19);
    assert!(fed <= 16 * LIMIT, "paused only after {fed} bytes");
}

/// Reading is paused, resumed, and paused again: the counter says 2.
#[test]
fn every_read_pause_is_counted() {
    let server = config_with(|c| c.max_inbound_buffered = 4000);
    let mut p = Pair::connected_with(Config::default(), server);
    let now = p.now;
    for round in 1..=2 {
        for _ in 0..5 {
            p.client.conn.notify("n", Bytes::from(vec![1u8; 1000]), CallOptions::new()).unwrap();
        }
        let bytes = take_output(&mut p.client.conn, now);
        p.server.conn.handle_input(&bytes, now);
        assert!(!p.server.conn.wants_read());
        assert_eq!(p.server.conn.stats().reads_paused, round, "pause number {round} not counted");
        while p.server.conn.poll_event().is_some() {}
        assert!(p.server.conn.wants_read());
    }
}

#[test]
fn write_stall_ends_the_connection_with_peer_not_reading_and_frees_the_queue() {
    const STALL: Duration = Duration::from_secs(5);
    let client = config_with(|c| c.write_stall_timeout = STALL);
    let server = config_with(|c| c.keepalive_interval = None);
    let mut link = Link::connected(client, server, 8 * KIB);
    assert_eq!(link.client.next_timer(), None, "no timer while idle with keepalive off");
    link.server_reading = false;
    let now = link.now;
    let id = link.client.request("big", Bytes::from(vec![0u8; 100 * KIB]), CallOptions::new(), now).unwrap();
    link.drive();
    let start = link.now;
    assert!(link.client.transmit_len() > 0);
    assert_eq!(link.client.next_timer(), Some(start + STALL));

    // Progress resets the timer: the peer reads a little after 4 s.
    link.advance_to(start + Duration::from_secs(4));
    link.server.handle_input(&link.c2s.drain(..1024).collect::<Vec<_>>(), link.now);
    link.drive();
    let progress = link.now;
    link.advance_to(start + STALL);
    assert!(link.client.is_established(), "progress at 4 s must restart the stall timer");
    assert_eq!(link.client.next_timer(), Some(progress + STALL));

    link.advance_to(progress + STALL - Duration::from_millis(1));
    assert!(link.client.is_established());
    let queued = link.client.transmit_len();
    link.advance_to(progress + STALL);
    assert_eq!(
        link.client.error(),
        Some(&ConnectionError::PeerNotReading { stalled: STALL, queued }),
        "{:?}",
        link.client_events
    );
    assert_eq!(link.client.transmit_len(), 0, "the queue must be freed");
    assert!(!link.client.wants_write());
    assert_eq!(link.client.stats().write_stalls, 1);
    let evs = std::mem::take(&mut link.client_events);
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Response { id: i, result: Err(CallError::ConnectionLost(_)) } if *i == id))
    );
    assert!(matches!(evs.last(), Some(Event::Closed(ConnectionError::PeerNotReading { .. }))));
}

/// reliability-security §2 case 37: a peer that sends PINGs and never reads
/// the PONGs. The server's queue is bounded (reading pauses at twice
/// `max_outbound_buffered`), then the write stall ends the connection.
#[test]
fn peer_that_never_reads_while_pinging_is_bounded_then_disconnected() {
    const OUT: usize = 64 * KIB;
    const STALL: Duration = Duration::from_secs(5);
    const CHUNK: usize = 4 * KIB;
    let config = config_with(|c| {
        c.max_outbound_buffered = OUT;
        c.write_stall_timeout = STALL;
    });
    let mut raw = RawClient::connect(config);
    let now = raw.now;
    let pings = encode(&(1..=(CHUNK / HEADER_LEN) as u64).map(|id| Frame::Ping { id }).collect::<Vec<_>>());
    assert_eq!(pings.len(), CHUNK);
    let mut socket = VecDeque::new();
    let mut fed = 0usize;
    let mut rounds = 0;
    while raw.server.wants_read() {
        rounds += 1;
        assert!(rounds < 10_000, "reading never paused");
        // The server writes what fits in the (never drained) socket buffer.
        write_bounded(&mut raw.server, &mut socket, 32 * KIB, now);
        feed_zero_copy(&mut raw.server, &pings, now);
        fed += pings.len();
        assert!(raw.server.transmit_len() <= 2 * OUT + CHUNK, "queue {} unbounded", raw.server.transmit_len());
    }
    write_bounded(&mut raw.server, &mut socket, 32 * KIB, now);
    assert!(raw.server.is_established());
    assert!(raw.server.transmit_len() >= 2 * OUT, "paused before the limit");
    assert!(raw.server.transmit_len() <= 2 * OUT + CHUNK);
    assert_eq!(raw.server.stats().reads_paused, 1);
    assert!(fed >= 2 * OUT);

    // The driver honours wants_read and stops reading; nothing drains.
    raw.server.handle_timeout(now + STALL - Duration::from_millis(1));
    assert!(raw.server.is_established());
    raw.server.handle_timeout(now + STALL);
    assert!(
        matches!(raw.server.error(), Some(ConnectionError::PeerNotReading { stalled, .. }) if *stalled == STALL),
        "{:?}",
        raw.server.error()
    );
    assert_eq!(raw.server.transmit_len(), 0, "queued PONGs must be freed");
    assert_eq!(raw.server.stats().write_stalls, 1);
    assert!(!raw.server.wants_read());
}

// ----------------------------------------------------------------------
// Config validation
// ----------------------------------------------------------------------

#[test]
fn invalid_config_values_are_rejected_with_the_field_named() {
    type Mutate = fn(&mut Config);
    let cases: &[(&str, Mutate)] = &[
        ("name", |c| c.name = Text::from("n".repeat(1025))),
        ("max_frame_size", |c| c.max_frame_size = 1023),
        ("max_frame_size", |c| c.max_frame_size = 128 * MIB as u32 + 1),
        ("max_handshake_size", |c| c.max_handshake_size = 4095),
        ("max_handshake_size", |c| c.max_handshake_size = 128 * MIB as u32 + 1),
        ("handshake_timeout", |c| c.handshake_timeout = Duration::ZERO),
        ("max_in_flight", |c| c.max_in_flight = 0),
        ("max_method_len", |c| c.max_method_len = 0),
        ("max_topic_len", |c| c.max_topic_len = 0),
        ("initial_stream_window", |c| c.initial_stream_window = 0),
        ("initial_stream_window", |c| c.initial_stream_window = i32::MAX as u32 + 1),
        ("max_inbound_buffered", |c| c.max_inbound_buffered = 0),
        ("max_outbound_buffered", |c| c.max_outbound_buffered = 0),
        ("request_timeout", |c| c.request_timeout = Some(Duration::ZERO)),
        ("keepalive_interval", |c| c.keepalive_interval = Some(Duration::from_millis(99))),
        ("keepalive_interval", |c| c.keepalive_interval = Some(Duration::from_secs(50 * 24 * 3600))),
        ("close_timeout", |c| c.close_timeout = Duration::ZERO),
        ("write_stall_timeout", |c| c.write_stall_timeout = Duration::ZERO),
        ("handshake_timeout", |c| c.handshake_timeout = MAX_TIMEOUT + Duration::from_secs(1)),
        ("close_timeout", |c| c.close_timeout = MAX_TIMEOUT + Duration::from_secs(1)),
        ("write_stall_timeout", |c| c.write_stall_timeout = MAX_TIMEOUT + Duration::from_secs(1)),
        ("request_timeout", |c| c.request_timeout = Some(MAX_TIMEOUT + Duration::from_secs(1))),
    ];
    let now = Instant::now();
    for (field, mutate) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let err = c.validate().expect_err(field);
        assert_eq!(err.field, *field);
        assert!(err.to_string().contains(field), "{err}");
        let c = Arc::new(c);
        assert_eq!(Connection::client(c.clone(), Bytes::new(), now).unwrap_err(), err);
        assert_eq!(Connection::server(c, now).unwrap_err(), err);
    }

    // The edges of each range are valid.
    let valid: &[Mutate] = &[
        |c| c.name = Text::from("n".repeat(1024)),
        |c| c.max_frame_size = 1024,
        |c| c.max_frame_size = 128 * MIB as u32,
        |c| c.max_handshake_size = 4096,
        |c| c.initial_stream_window = 1,
        |c| c.initial_stream_window = i32::MAX as u32,
        |c| c.request_timeout = None,
        |c| c.keepalive_interval = None,
        |c| c.keepalive_interval = Some(Duration::from_millis(100)),
        |c| c.request_timeout = Some(MAX_TIMEOUT),
        |c| c.write_stall_timeout = MAX_TIMEOUT,
    ];
    for mutate in valid {
        let mut c = Config::default();
        mutate(&mut c);
        assert_eq!(c.validate(), Ok(()), "{c:?}");
    }
    assert_eq!(Config::default().validate(), Ok(()));
}

// ----------------------------------------------------------------------
// Per-call limits: method, metadata, in flight; notifications
// ----------------------------------------------------------------------

#[test]
fn method_name_too_long_gets_invalid_request_and_is_counted() {
    let server = config_with(|c| c.max_method_len = 8);
    let mut p = Pair::connected_with(Config::default(), server);
    let now = p.now;
    let ok = p.client.conn.request("12345678", Bytes::new(), CallOptions::new(), now).unwrap();
    let long = p.client.conn.request("123456789", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    let evs = p.server.take();
    assert!(matches!(evs.as_slice(), [Event::Request(c)] if c.id == ok), "{evs:?}");
    let evs = p.client.take();
    assert!(
        matches!(evs.as_slice(), [Event::Response { id, result: Err(CallError::Remote { code, .. }) }]
            if *id == long && *code == Code::INVALID_REQUEST),
        "{evs:?}"
    );
    assert_eq!(p.server.conn.stats().calls_refused_invalid, 1);
    assert_eq!(p.server.conn.calls_being_served(), 1);
    assert!(p.server.conn.is_established());

    // Locally, the caller's own limit refuses before sending.
    let client = config_with(|c| c.max_method_len = 8);
    let mut p = Pair::connected_with(client, Config::default());
    let now = p.now;
    assert_eq!(
        p.client.conn.request("123456789", Bytes::new(), CallOptions::new(), now),
        Err(SendError::Invalid { what: "method", reason: "longer than the configured maximum" })
    );
    assert!(matches!(
        p.client.conn.notify("123456789", Bytes::new(), CallOptions::new()),
        Err(SendError::Invalid { what: "method", .. })
    ));
    assert!(matches!(
        p.client.conn.request("", Bytes::new(), CallOptions::new(), now),
        Err(SendError::Invalid { what: "method", .. })
    ));
    assert_eq!(p.client.conn.transmit_len(), 0);
}

#[test]
fn empty_method_from_a_hand_built_peer_gets_invalid_request() {
    let mut raw = RawClient::connect(Config::default());
    raw.send(&[raw_request(1, "", Metadata::new())]);
    assert!(raw.events().is_empty());
    assert!(matches!(raw.recv().as_slice(), [Frame::Error(e)] if e.id == 1 && e.code == Code::INVALID_REQUEST));
    assert_eq!(raw.server.stats().calls_refused_invalid, 1);
    assert!(raw.server.is_established());
}

fn metadata(n: usize) -> Metadata {
    let mut m = Metadata::new();
    for i in 0..n {
        m.insert(format!("k{i}"), Bytes::from_static(b"v"));
    }
    m
}

#[test]
fn too_many_metadata_entries_get_invalid_request_and_are_counted() {
    let client = config_with(|c| c.max_metadata_entries = 10);
    let server = config_with(|c| c.max_metadata_entries = 2);
    let mut p = Pair::connected_with(client, server);
    let now = p.now;
    let ok = p.client.conn.request("m", Bytes::new(), CallOptions::new().metadata(metadata(2)), now).unwrap();
    let bad = p.client.conn.request("m", Bytes::new(), CallOptions::new().metadata(metadata(3)), now).unwrap();
    p.drive();
    let evs = p.server.take();
    assert!(matches!(evs.as_slice(), [Event::Request(c)] if c.id == ok && c.metadata.len() == 2), "{evs:?}");
    let evs = p.client.take();
    assert!(
        matches!(evs.as_slice(), [Event::Response { id, result: Err(CallError::Remote { code, .. }) }]
            if *id == bad && *code == Code::INVALID_REQUEST),
        "{evs:?}"
    );
    assert_eq!(p.server.conn.stats().calls_refused_invalid, 1);

    // Locally: refused before sending.
    assert_eq!(
        p.client.conn.request("m", Bytes::new(), CallOptions::new().metadata(metadata(11)), now),
        Err(SendError::Invalid { what: "metadata", reason: "more entries than max_metadata_entries" })
    );
}

#[test]
fn notifications_with_a_bad_method_or_too_much_metadata_are_ignored_and_counted() {
    let client = config_with(|c| c.max_metadata_entries = 10);
    let server = config_with(|c| {
        c.max_method_len = 4;
        c.max_metadata_entries = 1;
    });
    let mut p = Pair::connected_with(client, server);
    p.client.conn.notify("long-name", Bytes::new(), CallOptions::new()).unwrap();
    p.client.conn.notify("ok", Bytes::new(), CallOptions::new().metadata(metadata(2))).unwrap();
    p.client.conn.notify("ok", Bytes::from_static(b"good"), CallOptions::new().metadata(metadata(1))).unwrap();
    p.drive();
    let evs = p.server.take();
    assert!(
        matches!(evs.as_slice(), [Event::Notification(n)] if n.method == "ok" && n.payload == Bytes::from_static(b"good")),
        "{evs:?}"
    );
    assert_eq!(p.server.conn.stats().notifications_ignored, 2);
    assert!(p.client.take().is_empty(), "notifications get no reply, not even an error");
    assert!(p.server.conn.is_established());
}

#[test]
fn max_in_flight_is_refused_locally_and_answered_busy_by_the_receiver() {
    let server = config_with(|c| c.max_in_flight = 2);
    let mut p = Pair::connected_with(Config::default(), server.clone());
    let now = p.now;
    p.client.conn.request("a", Bytes::new(), CallOptions::new(), now).unwrap();
    p.client.conn.request("b", Bytes::new(), CallOptions::new(), now).unwrap();
    assert_eq!(
        p.client.conn.request("c", Bytes::new(), CallOptions::new(), now),
        Err(SendError::TooManyInFlight { limit: 2 })
    );

    let mut raw = RawClient::connect(server);
    raw.send(&[
        raw_request(1, "a", Metadata::new()),
        raw_request(3, "b", Metadata::new()),
        raw_request(5, "c", Metadata::new()),
    ]);
    assert_eq!(raw.events().len(), 2);
    assert!(matches!(raw.recv().as_slice(), [Frame::Error(e)] if e.id == 5 && e.code == Code::BUSY));
    assert_eq!(raw.server.stats().calls_refused_busy, 1);
    assert_eq!(raw.server.calls_being_served(), 2);
    // Once one is answered, the next call is served.
    raw.server.respond(RequestId(1), Bytes::new()).unwrap();
    raw.recv();
    raw.send(&[raw_request(7, "d", Metadata::new())]);
    assert!(matches!(raw.events().as_slice(), [Event::Request(c)] if c.id == RequestId(7)));
    assert_eq!(raw.server.stats().calls_refused_busy, 1);
}

// ----------------------------------------------------------------------
// Timeouts
// ----------------------------------------------------------------------

#[test]
fn handshake_timeout_ends_a_silent_handshake_and_is_counted() {
    let mut p = Pair::new(Config::default(), Config::default());
    p.auto_accept = None;
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::HandshakeRequest(_)]));
    p.advance(Duration::from_secs(10) - Duration::from_millis(1));
    assert!(!p.server.conn.is_closed() && !p.client.conn.is_closed());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.server.conn.error(), Some(&ConnectionError::HandshakeTimeout(Duration::from_secs(10))));
    assert_eq!(p.server.conn.stats().handshake_timeouts, 1);
    assert!(matches!(p.client.conn.error(), Some(ConnectionError::HandshakeTimeout(_))));
}

#[test]
fn handshake_timeout_ends_a_slow_loris_hello() {
    let now = Instant::now();
    let mut server = Connection::server(Arc::new(Config::default()), now).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[hello(Bytes::new())]));
    // One byte per second: never completes within 10 s.
    for (i, b) in input.iter().take(11).enumerate() {
        let t = now + Duration::from_secs(i as u64);
        server.handle_input(&[*b], t);
        server.handle_timeout(t);
    }
    assert_eq!(server.error(), Some(&ConnectionError::HandshakeTimeout(Duration::from_secs(10))));
    assert_eq!(server.stats().handshake_timeouts, 1);
    // A server past the preamble tells the client why.
    let out = take_output(&mut server, now + Duration::from_secs(10));
    assert_eq!(out[..8], PREAMBLE);
    assert!(matches!(decode_all(&out[8..]).as_slice(), [Frame::Reject(r)] if r.code == Code::HANDSHAKE_TIMEOUT));
}

#[test]
fn request_timeout_gives_the_call_its_outcome_and_is_counted() {
    let client = config_with(|c| c.request_timeout = Some(Duration::from_secs(2)));
    let server = config_with(|c| c.keepalive_interval = None);
    let mut p = Pair::connected_with(client, server);
    let now = p.now;
    let id = p.client.conn.request("slow", Bytes::new(), CallOptions::new(), now).unwrap();
    let longer = p
        .client
        .conn
        .request("slower", Bytes::new(), CallOptions::new().timeout(Timeout::After(Duration::from_secs(3))), now)
        .unwrap();
    let never = p.client.conn.request("never", Bytes::new(), CallOptions::new().timeout(Timeout::Never), now).unwrap();
    p.drive();
    let calls = p.server.take();
    assert_eq!(calls.len(), 3);
    assert!(matches!(&calls[0], Event::Request(c) if c.deadline == Some(now + Duration::from_secs(2))));
    assert!(matches!(&calls[2], Event::Request(c) if c.deadline.is_none()));
    p.advance(Duration::from_millis(1999));
    assert!(p.client.take().is_empty());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Err(CallError::TimedOut(Duration::from_secs(2))) }]);
    assert_eq!(p.client.conn.stats().calls_timed_out, 1);
    // The server stopped serving it too (its own copy of the deadline, or the CANCEL).
    assert!(matches!(p.server.take().as_slice(), [Event::CallCancelled { id: i, .. }] if *i == id));
    p.advance(Duration::from_secs(1));
    assert_eq!(
        p.client.take(),
        vec![Event::Response { id: longer, result: Err(CallError::TimedOut(Duration::from_secs(3))) }]
    );
    assert_eq!(p.client.conn.stats().calls_timed_out, 2);
    p.advance(Duration::from_secs(3600));
    assert!(p.client.take().is_empty(), "Timeout::Never has no deadline");
    assert_eq!(p.client.conn.calls_in_flight(), 1);
    // A late answer to a timed-out call is ignored and counted.
    p.server.take();
    assert_eq!(p.server.conn.respond(id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    p.server.conn.respond(never, Bytes::new()).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id: never, result: Ok(Bytes::new()) }]);
}

#[test]
fn keepalive_timeout_ends_a_connection_that_hears_nothing() {
    let mut p = Pair::connected();
    // The client hears nothing from the server from now on (its own pings
    // still reach the server, which stays alive).
    p.client.reading = false;
    p.advance(Duration::from_secs(10));
    assert_eq!(p.client.conn.stats().keepalive_pings, 1);
    p.advance(Duration::from_secs(10));
    assert_eq!(p.client.conn.stats().keepalive_pings, 1, "one keepalive ping outstanding at a time");
    p.advance(Duration::from_secs(10) - Duration::from_millis(1));
    assert!(p.client.conn.is_established());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.client.conn.error(), Some(&ConnectionError::KeepaliveTimeout(Duration::from_secs(30))));
    assert_eq!(p.client.conn.stats().keepalive_timeouts, 1);
}

#[test]
fn close_timeout_bounds_a_graceful_close_with_calls_in_flight() {
    let mut p = Pair::connected();
    let now = p.now;
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    let Some(Event::Request(call)) = p.server.take().into_iter().next() else { panic!() };
    p.server.conn.close(Code::SHUTTING_DOWN, "bye", None, now);
    p.drive();
    assert!(p.server.conn.is_closing(), "the call in flight keeps the connection open");
    assert!(p.client.take().iter().any(|e| matches!(e, Event::GoodbyeReceived { .. })));
    p.advance(Duration::from_secs(5) - Duration::from_millis(1));
    assert!(!p.server.conn.is_closed());
    p.advance(Duration::from_millis(1));
    assert!(
        matches!(p.server.conn.error(), Some(ConnectionError::LocallyClosed { code, .. }) if *code == Code::SHUTTING_DOWN)
    );
    let evs = p.server.take();
    assert!(evs.contains(&Event::CallCancelled {
        id: call.id,
        reason: CancelReason::ConnectionLost(p.server.conn.error().unwrap().clone())
    }));
    // The caller's close timer runs from the GOODBYE too: its call gets its
    // one outcome.
    let outcomes: Vec<_> =
        p.client.take().into_iter().filter(|e| matches!(e, Event::Response { id: i, .. } if *i == id)).collect();
    assert!(
        matches!(outcomes.as_slice(), [Event::Response { result: Err(CallError::ConnectionLost(_)), .. }]),
        "{outcomes:?}"
    );
}

/// Output left when a connection ends (here: a slow consumer aborted while
/// its peer reads nothing) is written while the peer reads, and given up
/// at `write_stall_timeout` after the end when nothing is written, so a
/// driver waiting for the queue to drain always finishes.
#[test]
fn output_left_after_the_end_is_dropped_at_the_linger_deadline() {
    use support::Solo;
    let cfg = Config { write_stall_timeout: Duration::from_secs(3), ..support::config() };
    let mut s = Solo::server(cfg);
    s.conn.abort(Code::SLOW_CONSUMER, "too slow", s.now);
    // The GOODBYE is queued but the peer does not read: nothing collected.
    assert!(s.conn.is_closed());
    assert!(s.conn.transmit_len() > 0);
    let end = s.now;
    assert_eq!(s.conn.next_timer(), Some(end + Duration::from_secs(3)));
    s.now += Duration::from_secs(2);
    s.conn.handle_timeout(s.now);
    assert!(s.conn.transmit_len() > 0, "given up before the deadline");
    s.now += Duration::from_secs(1);
    s.conn.handle_timeout(s.now);
    assert_eq!(s.conn.transmit_len(), 0);
    assert_eq!(s.conn.next_timer(), None);
    assert_eq!(s.conn.poll_timeout().map(|_| ()), s.conn.has_events().then_some(()));
}

/// The linger after the end restarts whenever the driver writes some of
/// what is left: a peer that keeps reading, however slowly, gets all of it;
/// only `write_stall_timeout` without progress drops it.
#[test]
fn the_linger_after_the_end_restarts_on_progress() {
    let cfg = config_with(|c| c.write_stall_timeout = Duration::from_secs(3));
    let mut p = Pair::connected_with(Config::default(), cfg);
    let now = p.now;
    let id = p.client.conn.request("big", Bytes::new(), CallOptions::new(), now).unwrap();
    let bytes = take_output(&mut p.client.conn, now);
    p.server.conn.handle_input(&bytes, now);
    let call = match p.server.conn.poll_event() {
        Some(Event::Request(c)) => c,
        other => panic!("{other:?}"),
    };
    p.server.conn.respond(call.id, Bytes::from(vec![5u8; 100 * KIB])).unwrap();
    p.server.conn.abort(Code::SHUTTING_DOWN, "done", now);
    assert!(p.server.conn.is_closed(), "ended: what is left is lingering output");
    let mut t = now;
    let mut wrote = Vec::new();
    // 2 s per 10 KiB: far longer than the 3 s linger in all, never 3 s
    // without progress.
    while p.server.conn.transmit_len() > 0 {
        t += Duration::from_secs(2);
        p.server.conn.handle_timeout(t);
        assert!(p.server.conn.transmit_len() > 0 || wrote.len() >= 100 * KIB, "dropped while being written");
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        let n = p.server.conn.transmit_slices(t, &mut slices);
        let mut chunk = Vec::new();
        for s in &slices[..n] {
            chunk.extend_from_slice(s);
        }
        let take = chunk.len().min(10 * KIB);
        wrote.extend_from_slice(&chunk[..take]);
        p.server.conn.advance_transmit(take, t);
    }
    assert!(t - now > Duration::from_secs(10), "the test must outlast the linger");
    p.client.conn.handle_input(&wrote, t);
    let got = std::iter::from_fn(|| p.client.conn.poll_event()).find_map(|e| match e {
        Event::Response { id: r, result } if r == id => Some(result),
        _ => None,
    });
    assert!(matches!(got, Some(Ok(ref b)) if b.len() == 100 * KIB), "the whole response arrived: {got:?}");

    // Without progress, the rest is dropped 3 s after the last write.
    let mut s = support::Solo::server(config_with(|c| c.write_stall_timeout = Duration::from_secs(3)));
    s.conn.abort(Code::SLOW_CONSUMER, "too slow", s.now);
    let mut slices = [std::io::IoSlice::new(&[]); 4];
    let t0 = s.now + Duration::from_secs(2);
    let n = s.conn.transmit_slices(t0, &mut slices);
    assert!(n > 0);
    s.conn.advance_transmit(1, t0);
    s.conn.handle_timeout(t0 + Duration::from_millis(2_900));
    assert!(s.conn.transmit_len() > 0, "dropped before 3 s without progress");
    s.conn.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(s.conn.transmit_len(), 0, "dropped after 3 s without progress");
}

/// A pause caused by the outbound queue is counted too, even when it is a
/// command (a large response), not input, that fills the queue; writing
/// the queue out resumes reading, and the next pause is counted again.
#[test]
fn a_read_pause_caused_by_the_outbound_queue_is_counted() {
    let server = config_with(|c| c.max_outbound_buffered = 16 * KIB);
    let mut p = Pair::connected_with(Config::default(), server);
    let now = p.now;
    for round in 1..=2 {
        let id = p.client.conn.request("big", Bytes::new(), CallOptions::new(), now).unwrap();
        let bytes = take_output(&mut p.client.conn, now);
        p.server.conn.handle_input(&bytes, now);
        let call = match p.server.conn.poll_event() {
            Some(Event::Request(c)) => c,
            other => panic!("{other:?}"),
        };
        assert!(p.server.conn.wants_read());
        // Twice the outbound limit in one response: reading must pause.
        p.server.conn.respond(call.id, Bytes::from(vec![0u8; 40 * KIB])).unwrap();
        assert!(!p.server.conn.wants_read(), "40 KiB queued, pause at 32 KiB");
        assert_eq!(p.server.conn.stats().reads_paused, round, "pause number {round} not counted");
        let out = take_output(&mut p.server.conn, now);
        assert!(p.server.conn.wants_read(), "written out: reading resumes");
        p.client.conn.handle_input(&out, now);
        assert!(
            matches!(p.client.conn.poll_event(), Some(Event::Response { id: r, result: Ok(_) }) if r == id),
            "the response arrives"
        );
    }
}
