//! Hostile input: one test per malformed-input case of
//! `reliability-security.md` §2, at the sans-IO level.
//!
//! Every test builds the hostile bytes by hand from `PROTOCOL.md` (the raw
//! builders in `support`: `raw_header`, `raw_frame`, `str16`), feeds them to
//! a lone `Connection` (`support::Solo`) or a connected pair
//! (`support::Pair`) with `handle_input` / `handle_eof` / `handle_timeout` /
//! `handle_transport_error` on virtual time, and asserts the outcome exactly:
//!
//! - **D**: the connection ends with the specific `ProtocolError` (or
//!   `ConnectionError`) variant, no event is dispatched for the bad frame,
//!   and the transmit queue holds exactly one GOODBYE `PROTOCOL_ERROR` with
//!   no reconnect hint when the handshake had completed, nothing at all
//!   before it (PROTOCOL.md 1, 14);
//! - **E**: an ERROR / ACK with the right `Code` on the same id, and a
//!   following good call still completes;
//! - **I**: nothing is sent or dispatched, and the named `stats()` counter
//!   moves;
//! - **B**: `wants_read()` turns false or a command returns
//!   `SendError::Blocked`.
//!
//! Every test also checks that the per-connection state returns to zero
//! (`calls_in_flight`, `calls_being_served`, `subscription_count`,
//! `inbound_buffered`), and the length-prefix cases (5, 6, 7) measure the
//! largest single heap allocation made while the hostile bytes are handled,
//! with the counting global allocator below.
//!
//! Where the reference leaves a choice, PROTOCOL.md's rule is asserted and
//! the test says so (cases 9, 12, 24, 25, 29, 32).
//!
//! Not covered here, and why:
//!
//! - **36** (SCM_RIGHTS, `MSG_CTRUNC`): not applicable. wharf never
//!   negotiates fd passing, and the core only ever sees bytes; ancillary
//!   data is a matter for the Unix-socket adapter, which reads with plain
//!   `read`/`recv` (no `recvmsg` with a control buffer), so received fds are
//!   never accepted by the process in the first place.
//! - The real-socket halves of **34** (a kernel that accepts one byte per
//!   `write`, `EINTR`, `WouldBlock`), **35** (`ECONNRESET` / `EPIPE` raised
//!   by a real socket, `shutdown(WR)`) and **37** (a peer whose socket
//!   buffer fills up): the adapters' conformance and fault tests. Here the
//!   same situations are injected through the sans-IO boundary: partial and
//!   zero-progress `advance_transmit`, empty reads, `handle_transport_error`,
//!   `handle_eof` while responses are pending, and a driver that never
//!   collects what the connection writes.
//! - Case 14 is also covered exhaustively (every split point, every byte,
//!   random patterns, both input paths) by `fragmentation.rs`.

// The one unsafe thing here is the `GlobalAlloc` impl, which only forwards
// to `System`; the core itself stays `#![forbid(unsafe_code)]`.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Pair, Solo, config, encode, hello_of, raw_frame, raw_header, str16, welcome_of};
use wharf_core::wire::{
    ErrorBody, Frame, FrameType, Goodbye, HEADER_LEN, Hello, MAX_FRAME_SIZE_CEILING, NO_HINT, Notify, PREAMBLE, Reject,
    Request,
};
use wharf_core::{
    AckError, Bytes, CallError, CallKind, CallOptions, CancelReason, Code, Config, Connection, ConnectionError, Event,
    Metadata, ProtocolError, RequestId, SendError, SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Text, Timeout,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ----------------------------------------------------------------------
// Counting allocator: the largest single allocation on this thread
// ----------------------------------------------------------------------

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

fn note(size: usize) {
    // `try_with`: never panic inside the allocator.
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            let _ = TOTAL.try_with(|t| t.set(t.get() + size));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping touches only const-initialised thread-locals,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged; `ptr` came from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`; returns its result, the largest single allocation (or
/// reallocation target) it made on this thread, and the bytes it requested
/// in total.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = config();
    f(&mut c);
    c
}

fn ty(t: FrameType) -> u8 {
    t as u8
}

/// Every frame type of PROTOCOL.md 5.1.
const ALL_TYPES: [FrameType; 21] = [
    FrameType::Hello,
    FrameType::Welcome,
    FrameType::Reject,
    FrameType::Request,
    FrameType::Response,
    FrameType::Error,
    FrameType::Notify,
    FrameType::Cancel,
    FrameType::Data,
    FrameType::End,
    FrameType::Credit,
    FrameType::Subscribe,
    FrameType::Unsubscribe,
    FrameType::Publish,
    FrameType::Message,
    FrameType::Lagged,
    FrameType::Ack,
    FrameType::Messages,
    FrameType::Ping,
    FrameType::Pong,
    FrameType::Goodbye,
];

fn request(id: u64, method: &'static str, payload: &'static [u8]) -> Frame {
    request_kind(id, CallKind::Unary, method, payload)
}

fn request_kind(id: u64, kind: CallKind, method: &'static str, payload: &'static [u8]) -> Frame {
    Frame::Request(Request {
        id,
        kind,
        method: Text::from(method),
        deadline_ms: None,
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::from_static(payload),
    })
}

fn notify(method: &'static str) -> Frame {
    Frame::Notify(Notify {
        method: Text::from(method),
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::from_static(b"n"),
    })
}

fn goodbye(code: Code) -> Frame {
    Frame::Goodbye(Goodbye { code, reconnect_after_ms: NO_HINT, message: Text::new() })
}

/// One well-formed frame of every type except HELLO, WELCOME and REJECT.
fn non_handshake_frames() -> Vec<Frame> {
    vec![
        request(1, "echo", b"x"),
        Frame::Response { id: 1, payload: Bytes::from_static(b"r") },
        Frame::Error(ErrorBody { id: 1, code: Code::INTERNAL, message: Text::from("e"), data: Bytes::new() }),
        notify("log"),
        Frame::Cancel { id: 1 },
        Frame::Data { id: 1, payload: Bytes::from_static(b"d") },
        Frame::End { id: 1 },
        Frame::Credit { id: 1, increment: 1 },
        Frame::Subscribe { id: 1, topic: Text::from("t"), prefix: false, policy: SlowConsumerPolicy::DropOldest },
        Frame::Unsubscribe { id: 3, subscription: 1 },
        Frame::Publish { id: 0, topic: Text::from("t"), payload: Bytes::from_static(b"p") },
        Frame::Message { subscription: 1, topic: Text::from("t"), payload: Bytes::from_static(b"m") },
        Frame::Lagged { subscription: 1, dropped: 1 },
        Frame::Ack { id: 1, status: Code::OK, value: 0 },
        Frame::Ping { id: 1 },
        Frame::Pong { id: 1 },
        goodbye(Code::OK),
    ]
}

/// Per-connection state is back to zero (after the events were polled).
fn assert_zero_state(conn: &Connection) {
    assert_eq!(conn.calls_in_flight(), 0, "calls_in_flight");
    assert_eq!(conn.calls_being_served(), 0, "calls_being_served");
    assert_eq!(conn.subscription_count(), 0, "subscription_count");
    assert_eq!(conn.inbound_buffered(), 0, "inbound_buffered");
}

/// D on an established connection: the events are exactly `before` then
/// `Closed(Protocol(expected))`; one GOODBYE `PROTOCOL_ERROR` with no hint
/// was sent; the error is counted; state is zero; reading stopped.
fn assert_d_after(s: &mut Solo, before: &[Event], expected: ProtocolError) {
    let evs = s.take();
    let mut want = before.to_vec();
    want.push(Event::Closed(ConnectionError::Protocol(expected.clone())));
    assert_eq!(evs, want, "events");
    assert_eq!(s.conn.error(), Some(&ConnectionError::Protocol(expected.clone())));
    assert_eq!(s.conn.stats().protocol_errors, 1);
    let sent = s.sent();
    match sent.as_slice() {
        [Frame::Goodbye(g)] => {
            assert_eq!(g.code, Code::PROTOCOL_ERROR);
            assert_eq!(g.reconnect_after_ms, NO_HINT);
            assert_eq!(g.message.as_str(), expected.to_string());
        }
        other => panic!("expected one GOODBYE PROTOCOL_ERROR, got {other:?}"),
    }
    assert!(!s.conn.wants_read());
    assert_zero_state(&s.conn);
}

fn assert_d(s: &mut Solo, expected: ProtocolError) {
    assert_d_after(s, &[], expected);
}

/// D before the handshake completed: closed silently (nothing written
/// since `s.read`), exactly `Closed(err)` emitted, state zero.
fn assert_silent(s: &mut Solo, err: ConnectionError) {
    assert_eq!(s.take(), [Event::Closed(err.clone())]);
    assert_eq!(s.conn.error(), Some(&err));
    assert_eq!(s.wrote.len(), s.read, "wrote {:02x?} while closing silently", &s.wrote[s.read..]);
    assert!(!s.conn.wants_read());
    assert_zero_state(&s.conn);
}

fn assert_silent_d(s: &mut Solo, expected: ProtocolError) {
    assert_silent(s, ConnectionError::Protocol(expected));
    assert_eq!(s.conn.stats().protocol_errors, 1);
}

/// The established server `s` still serves: a REQUEST with call id `id`
/// is dispatched and its RESPONSE goes out.
fn assert_serves(s: &mut Solo, id: u64) {
    s.feed(&[request(id, "echo", b"still here")]);
    let evs = s.take();
    let [Event::Request(call)] = evs.as_slice() else { panic!("expected one Request, got {evs:?}") };
    assert_eq!((call.id, call.payload.as_ref()), (RequestId(id), &b"still here"[..]));
    s.conn.respond(call.id, call.payload.clone()).unwrap();
    s.pump();
    assert_eq!(s.sent(), [Frame::Response { id, payload: Bytes::from_static(b"still here") }]);
    assert!(s.conn.is_established());
}

/// Another connection (a second pair) completes a call.
fn assert_other_peer_served() {
    let mut p = Pair::connected();
    let id = p.client.conn.request("echo", Bytes::from_static(b"other"), CallOptions::new(), p.now).unwrap();
    p.drive();
    let evs = p.server.take();
    let [Event::Request(call)] = evs.as_slice() else { panic!("{evs:?}") };
    p.server.conn.respond(call.id, call.payload.clone()).unwrap();
    p.drive();
    assert_eq!(p.client.take(), [Event::Response { id, result: Ok(Bytes::from_static(b"other")) }]);
}

/// Counts log events at WARN or above (the "no error log spam" check).
struct LoudLogs(Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for LoudLogs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if *e.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `f` and returns how many WARN/ERROR log events it produced.
fn loud_logs(f: impl FnOnce()) -> usize {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tracing::subscriber::with_default(LoudLogs(n.clone()), f);
    n.load(std::sync::atomic::Ordering::Relaxed)
}

/// A client's unary call to the hand-played server; the REQUEST written
/// is consumed.
fn client_call(c: &mut Solo) -> RequestId {
    let id = c.conn.request("m", Bytes::new(), CallOptions::new(), c.now).unwrap();
    c.pump();
    assert!(matches!(c.sent().as_slice(), [Frame::Request(r)] if r.id == id.0));
    id
}

fn hello_bytes() -> Vec<u8> {
    encode(&[hello_of(&config())])
}

// ----------------------------------------------------------------------
// Framing / decoder
// ----------------------------------------------------------------------

/// Case 1: 0 bytes, then EOF: a clean close (D), no error logged.
#[test]
fn case01_no_bytes_then_eof_is_a_clean_close() {
    let mut s = Solo::fresh_server(config());
    let loud = loud_logs(|| {
        s.feed_raw(&[]); // an empty read is no input at all
        assert!(s.take().is_empty());
        assert!(s.conn.wants_read());
        s.eof();
    });
    assert_silent(&mut s, ConnectionError::UnexpectedEof { mid_frame: false });
    assert_eq!(loud, 0, "EOF before any byte is not worth a warning");
    let st = s.conn.stats();
    assert_eq!((st.protocol_errors, st.bytes_received, st.frames_received), (0, 0, 0));

    // The same on an established connection, at a frame boundary.
    let mut s = Solo::server(config());
    let loud = loud_logs(|| s.eof());
    assert_eq!(s.take(), [Event::Closed(ConnectionError::UnexpectedEof { mid_frame: false })]);
    assert!(s.sent().is_empty(), "no GOODBYE to a peer that is gone");
    assert_eq!(loud, 0);
    assert_zero_state(&s.conn);
}

/// Case 2: a truncated header (k = 1..=15 bytes), then EOF: D
/// (`UnexpectedEof { mid_frame: true }`), in the preamble, in the HELLO
/// header and in a header after the handshake.
#[test]
fn case02_truncated_header_then_eof_for_every_k() {
    // Inside the preamble.
    for k in 1..PREAMBLE.len() {
        let mut s = Solo::fresh_server(config());
        s.feed_raw(&PREAMBLE[..k]);
        s.eof();
        assert_silent(&mut s, ConnectionError::UnexpectedEof { mid_frame: true });
    }
    let header = &hello_bytes()[..HEADER_LEN];
    for k in 1..HEADER_LEN {
        // The HELLO header, during the handshake: silent.
        let mut s = Solo::fresh_server(config());
        let mut input = PREAMBLE.to_vec();
        input.extend_from_slice(&header[..k]);
        s.feed_raw(&input);
        assert!(s.take().is_empty());
        s.eof();
        assert_silent(&mut s, ConnectionError::UnexpectedEof { mid_frame: true });

        // A REQUEST header on an established connection, with a call of
        // our own in flight: it fails once, nothing is sent.
        let mut s = Solo::server(config());
        s.feed(&[request(1, "slow", b"")]);
        assert!(matches!(s.take().as_slice(), [Event::Request(_)]));
        let raw = encode(&[request(3, "echo", b"hi")]);
        s.feed_raw(&raw[..k]);
        assert!(s.take().is_empty());
        s.eof();
        let err = ConnectionError::UnexpectedEof { mid_frame: true };
        assert_eq!(
            s.take(),
            [
                Event::CallCancelled { id: RequestId(1), reason: CancelReason::ConnectionLost(err.clone()) },
                Event::Closed(err)
            ]
        );
        assert!(s.sent().is_empty());
        assert_eq!(s.conn.stats().protocol_errors, 0);
        assert_zero_state(&s.conn);
    }
}

/// Case 3: a truncated header, then silence (slow loris): closed at the
/// handshake timeout (during the handshake) or at the keepalive timeout
/// (after it). Other peers are unaffected.
#[test]
fn case03_truncated_header_then_stall_is_closed_by_the_timeouts() {
    // During the handshake: handshake_timeout (10 s from creation). The
    // whole preamble arrived, so the server says why (PROTOCOL.md 7.1).
    let mut s = Solo::fresh_server(config());
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&hello_bytes()[..5]);
    s.feed_raw(&input);
    s.advance(Duration::from_millis(9_999));
    assert!(s.take().is_empty() && !s.conn.is_closed());
    s.advance(Duration::from_millis(1));
    assert_eq!(s.take(), [Event::Closed(ConnectionError::HandshakeTimeout(Duration::from_secs(10)))]);
    assert_eq!(s.wrote[..8], PREAMBLE);
    s.read = 8;
    assert!(matches!(s.sent().as_slice(), [Frame::Reject(r)] if r.code == Code::HANDSHAKE_TIMEOUT));
    assert_eq!(s.conn.stats().handshake_timeouts, 1);
    assert_zero_state(&s.conn);

    // After the handshake: a partial header is a sign of life once, then
    // nothing; the keepalive timeout (3 x 10 s) ends it with GOODBYE.
    let mut s = Solo::server(config());
    s.feed_raw(&raw_header(100, ty(FrameType::Request), 0, 0, 1)[..7]);
    s.advance(Duration::from_secs(10)); // keepalive PING goes out, unanswered
    assert!(matches!(s.sent().as_slice(), [Frame::Ping { .. }]));
    s.advance(Duration::from_secs(19));
    assert!(s.conn.is_established());
    s.advance(Duration::from_secs(1));
    assert_eq!(s.take(), [Event::Closed(ConnectionError::KeepaliveTimeout(Duration::from_secs(30)))]);
    assert!(matches!(s.sent().as_slice(), [Frame::Goodbye(g)] if g.code == Code::KEEPALIVE_TIMEOUT));
    assert_eq!(s.conn.stats().keepalive_timeouts, 1);
    assert_zero_state(&s.conn);

    assert_other_peer_served();
}

/// Case 4: declared length 0 where the type needs a body: D (`BadLength`).
/// Where 0 is allowed (PING, PONG, CANCEL, END, RESPONSE, DATA): accepted.
#[test]
fn case04_zero_length_refused_where_a_body_is_required_accepted_where_allowed() {
    for t in ALL_TYPES {
        let (min, max) = t.length_bounds();
        if min == 0 {
            continue;
        }
        let mut s = Solo::server(config());
        s.feed_raw(&raw_header(0, ty(t), 0, 0, 1));
        assert_d(&mut s, ProtocolError::BadLength { frame: t, len: 0, min, max });

        // Before the handshake, silently.
        let mut s = Solo::fresh_server(config());
        let mut input = PREAMBLE.to_vec();
        input.extend_from_slice(&raw_header(0, ty(t), 0, 0, 0));
        s.feed_raw(&input);
        assert_silent_d(&mut s, ProtocolError::BadLength { frame: t, len: 0, min, max });
    }

    // Allowed empty bodies, on a server with calls from the client in flight.
    let mut s = Solo::server(config());
    s.feed(&[request_kind(1, CallKind::ClientStream, "upload", b""), request(3, "slow", b"")]);
    assert_eq!(s.take().len(), 2);
    s.feed_raw(&raw_frame(ty(FrameType::Ping), 0, 0, b""));
    s.feed_raw(&raw_frame(ty(FrameType::Data), 0, 1, b""));
    s.feed_raw(&raw_frame(ty(FrameType::End), 0, 1, b""));
    s.feed_raw(&raw_frame(ty(FrameType::Cancel), 0, 3, b""));
    s.feed_raw(&raw_frame(ty(FrameType::Pong), 0, 99, b"")); // matches no PING: I
    assert_eq!(
        s.take(),
        [
            Event::StreamData { id: RequestId(1), payload: Bytes::new() },
            Event::StreamEnd { id: RequestId(1) },
            Event::CallCancelled { id: RequestId(3), reason: CancelReason::Peer },
        ]
    );
    assert_eq!(s.sent(), [Frame::Pong { id: 0 }]);
    assert_eq!(s.conn.stats().stale_frames_ignored, 1, "the unmatched PONG");
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    assert_eq!(s.sent(), [Frame::Response { id: 1, payload: Bytes::new() }]);
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 5);

    // An empty RESPONSE on a client.
    let mut c = Solo::client(config());
    let id = client_call(&mut c);
    c.feed_raw(&raw_frame(ty(FrameType::Response), 0, id.0, b""));
    assert_eq!(c.take(), [Event::Response { id, result: Ok(Bytes::new()) }]);
    assert_zero_state(&c.conn);
}

/// Case 5: declared length `max_frame_size + 1`: D (`FrameTooLarge`) from
/// the header alone, before any allocation for the body.
#[test]
fn case05_length_one_above_the_limit_is_refused_before_allocation() {
    // Established: the announced max_frame_size (16 MiB).
    let mut s = Solo::server(config());
    let limit = s.conn.config().max_frame_size;
    let header = raw_header(limit + 1, ty(FrameType::Request), 0, 0, 1);
    let ((), largest, _) = measure(|| s.conn.handle_input(&header, s.now));
    s.pump();
    assert_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Request, len: limit + 1, limit });
    assert_eq!(s.conn.stats().frames_too_large, 1);
    assert!(largest <= 64 * KIB, "allocated {largest} bytes for a refused header");

    // During the handshake: max_handshake_size (64 KiB), silently.
    let mut s = Solo::fresh_server(config());
    let limit = s.conn.config().max_handshake_size;
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&raw_header(limit + 1, ty(FrameType::Hello), 0, 0, 0));
    let ((), largest, _) = measure(|| s.conn.handle_input(&input, s.now));
    s.pump();
    assert_silent_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Hello, len: limit + 1, limit });
    assert_eq!(s.conn.stats().frames_too_large, 1);
    assert!(largest <= 64 * KIB, "allocated {largest} bytes for a refused HELLO header");

    // A client, for the server's first frame.
    let mut c = Solo::fresh_client(config());
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&raw_header(limit + 1, ty(FrameType::Welcome), 0, 0, 7));
    let ((), largest, _) = measure(|| c.conn.handle_input(&input, c.now));
    c.pump();
    assert_silent_d(&mut c, ProtocolError::FrameTooLarge { frame: FrameType::Welcome, len: limit + 1, limit });
    assert!(largest <= 64 * KIB);

    // The zero-copy input path offers no more room for it either.
    let mut s = Solo::server(config());
    let limit = s.conn.config().max_frame_size;
    let buf = s.conn.recv_buffer();
    buf.extend_from_slice(&raw_header(limit + 1, ty(FrameType::Data), 0, 0, 1));
    s.conn.handle_received(HEADER_LEN, s.now);
    assert!(s.conn.recv_buffer().capacity() <= 128 * KIB);
    s.pump();
    assert_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Data, len: limit + 1, limit });

    assert_other_peer_served();
}

/// Case 6: declared length `u32::MAX`. The length field is a u32 (there is
/// no u64 length in the protocol); the header check refuses it before
/// `HEADER_LEN + len` is ever computed, so nothing overflows even where
/// `usize` is 32 bits (the sum is only formed for `len` <= 128 MiB).
#[test]
fn case06_length_u32_max_is_refused_without_overflow_or_allocation() {
    // An unbounded type: above the frame limit, even at the protocol ceiling.
    for max_frame_size in [config().max_frame_size, MAX_FRAME_SIZE_CEILING] {
        let mut s = Solo::server(config_with(|c| c.max_frame_size = max_frame_size));
        let header = raw_header(u32::MAX, ty(FrameType::Data), 0, 0, 1);
        let ((), largest, _) = measure(|| s.conn.handle_input(&header, s.now));
        s.pump();
        assert_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Data, len: u32::MAX, limit: max_frame_size });
        assert!(largest <= 64 * KIB);
    }
    // A fixed-size type: a bad length for the type.
    let mut s = Solo::server(config());
    s.feed_raw(&raw_header(u32::MAX, ty(FrameType::Ping), 0, 0, 1));
    assert_d(&mut s, ProtocolError::BadLength { frame: FrameType::Ping, len: u32::MAX, min: 0, max: 0 });
    // During the handshake.
    let mut s = Solo::fresh_server(config());
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&raw_header(u32::MAX, ty(FrameType::Hello), 0, 0, 0));
    let ((), largest, _) = measure(|| s.conn.handle_input(&input, s.now));
    s.pump();
    assert_silent_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Hello, len: u32::MAX, limit: 65536 });
    assert!(largest <= 64 * KIB);

    // u64::MAX where the protocol has u64 fields (ids, LAGGED's count):
    // accepted as values, no arithmetic on them overflows.
    let mut s = Solo::server(config());
    s.feed_raw(&raw_frame(ty(FrameType::Ping), 0, u64::MAX, b""));
    assert_eq!(s.sent(), [Frame::Pong { id: u64::MAX }]);
    s.feed(&[request(u64::MAX, "last", b"")]);
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::Request(c)] if c.id == RequestId(u64::MAX)), "{evs:?}");
    // No operation id can follow u64::MAX: any later one is not increasing.
    s.feed(&[request(u64::MAX - 2, "next", b"")]);
    assert_d_after(
        &mut s,
        &[Event::CallCancelled {
            id: RequestId(u64::MAX),
            reason: CancelReason::ConnectionLost(ConnectionError::Protocol(ProtocolError::BadId {
                frame: FrameType::Request,
                id: u64::MAX - 2,
                reason: "operation ids must increase",
            })),
        }],
        ProtocolError::BadId { frame: FrameType::Request, id: u64::MAX - 2, reason: "operation ids must increase" },
    );
}

/// Case 7: declared 100 MiB (under a 128 MiB limit), then 10 bytes, then
/// silence: no up-front allocation of 100 MiB; the timeout ends it (D).
#[test]
fn case07_declared_100_mib_then_10_bytes_then_stall_reserves_nothing_and_times_out() {
    let declared = 100 * MIB as u32;
    // Established: the keepalive timeout (3 x 10 s) ends it.
    let mut s = Solo::server(config_with(|c| c.max_frame_size = 128 * MIB as u32));
    let header = raw_header(declared, ty(FrameType::Request), 0, 0, 1);
    let ((), largest, total) = measure(|| {
        s.conn.handle_input(&header, s.now);
        s.conn.handle_input(&[0u8; 10], s.now);
    });
    s.pump();
    assert!(largest <= 64 * KIB && total <= 128 * KIB, "allocated {total} bytes (largest {largest}) for 26");
    assert!(s.take().is_empty() && s.conn.is_established(), "a frame under the limit is legal so far");
    // Zero-copy reads grow the buffer with what arrives, not what is declared.
    let buf = s.conn.recv_buffer();
    assert!(buf.capacity() <= 128 * KIB, "recv_buffer reserved {}", buf.capacity());
    let ((), largest, _) = measure(|| {
        let buf = s.conn.recv_buffer();
        buf.extend_from_slice(&[0u8; 10]);
        s.conn.handle_received(10, s.now);
    });
    assert!(largest <= 128 * KIB, "largest allocation {largest}");
    s.advance(Duration::from_secs(29));
    assert!(s.conn.is_established());
    assert!(matches!(s.sent().as_slice(), [Frame::Ping { .. }]));
    s.advance(Duration::from_secs(1));
    assert_eq!(s.take(), [Event::Closed(ConnectionError::KeepaliveTimeout(Duration::from_secs(30)))]);
    assert!(matches!(s.sent().as_slice(), [Frame::Goodbye(g)] if g.code == Code::KEEPALIVE_TIMEOUT));
    assert_eq!(s.conn.stats().keepalive_timeouts, 1);
    assert_zero_state(&s.conn);

    // During the handshake (a 128 MiB handshake limit): handshake_timeout.
    let mut s = Solo::fresh_server(config_with(|c| c.max_handshake_size = 128 * MIB as u32));
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&raw_header(declared, ty(FrameType::Hello), 0, 0, 0));
    input.extend_from_slice(&[0u8; 10]);
    let ((), largest, total) = measure(|| s.conn.handle_input(&input, s.now));
    s.pump();
    assert!(largest <= 64 * KIB && total <= 128 * KIB, "allocated {total} bytes (largest {largest})");
    s.advance(Duration::from_secs(10));
    assert_eq!(s.take(), [Event::Closed(ConnectionError::HandshakeTimeout(Duration::from_secs(10)))]);
    s.read = 8;
    assert!(matches!(s.sent().as_slice(), [Frame::Reject(r)] if r.code == Code::HANDSHAKE_TIMEOUT));
    assert_zero_state(&s.conn);

    assert_other_peer_served();
}

/// Case 8: a wrong preamble byte, at any offset (D-Bus: a wrong first
/// byte): closed silently at that byte, as soon as it arrives, both
/// directions.
#[test]
fn case08_bad_magic_closes_silently_at_the_first_wrong_byte() {
    for offset in 0..PREAMBLE.len() {
        let mut bad = PREAMBLE.to_vec();
        bad[offset] ^= 0xff;
        // Server, fed one byte at a time: nothing happens before `offset`.
        let mut s = Solo::fresh_server(config());
        let loud = loud_logs(|| {
            for b in &bad[..offset] {
                s.feed_raw(std::slice::from_ref(b));
                assert!(s.take().is_empty());
            }
            s.feed_raw(&bad[offset..=offset]);
        });
        let e = ProtocolError::BadPreamble { offset, found: bad[offset], expected: PREAMBLE[offset] };
        assert_silent_d(&mut s, e.clone());
        assert_eq!(loud, 0, "a stranger on the port is not worth a warning");
        // Nothing after it is looked at.
        s.feed_raw(&hello_bytes());
        assert!(s.take().is_empty() && s.wrote.is_empty());

        // Client, for the server's preamble: nothing after its HELLO.
        let mut c = Solo::fresh_client(config());
        c.feed_raw(&bad);
        assert_silent_d(&mut c, e);
    }
    // A NUL first byte (D-Bus's credentials byte) and an HTTP request.
    for (input, found) in [(&b"\0AUTH EXTERNAL"[..], 0u8), (&b"GET / HTTP/1.1\r\n"[..], b'G')] {
        let mut s = Solo::fresh_server(config());
        s.feed_raw(input);
        assert_silent_d(&mut s, ProtocolError::BadPreamble { offset: 0, found, expected: b'W' });
    }
    assert_other_peer_served();
}

/// Case 9: unknown frame type: D (`UnknownFrameType`), for every one of the
/// 236 undefined type bytes. PROTOCOL.md 5.1 chose this one rule: there is
/// no reserved or negotiable range in version 1, so nothing is ignored.
#[test]
fn case09_every_unknown_frame_type_is_a_connection_error() {
    let mut unknown = 0;
    for t in 0..=u8::MAX {
        if FrameType::from_u8(t).is_some() {
            continue;
        }
        unknown += 1;
        // Established, with a body the receiver never reads.
        let mut s = Solo::server(config());
        let mut raw = raw_header(4, t, 0, 0, 1).to_vec();
        raw.extend_from_slice(b"body");
        s.feed_raw(&raw);
        assert_d(&mut s, ProtocolError::UnknownFrameType { ty: t });
        // As the first frame: silent.
        let mut s = Solo::fresh_server(config());
        let mut input = PREAMBLE.to_vec();
        input.extend_from_slice(&raw_header(0, t, 0, 0, 0));
        s.feed_raw(&input);
        assert_silent_d(&mut s, ProtocolError::UnknownFrameType { ty: t });
        // To a client.
        let mut c = Solo::client(config());
        c.feed_raw(&raw_header(0, t, 0, 0, 0));
        assert_d(&mut c, ProtocolError::UnknownFrameType { ty: t });
    }
    assert_eq!(unknown, 256 - ALL_TYPES.len());
}

/// Case 10: reserved header bits set, or flag bits the type does not
/// define: D (`ReservedBits`, `UnknownFlags`). PROTOCOL.md 5.1: no flag is
/// an extension point.
#[test]
fn case10_reserved_field_and_undefined_flag_bits_are_connection_errors() {
    for t in ALL_TYPES {
        for reserved in [1u16, 0x0100, 0x8000, 0xffff] {
            let mut s = Solo::server(config());
            s.feed_raw(&raw_header(0, ty(t), 0, reserved, 1));
            assert_d(&mut s, ProtocolError::ReservedBits { frame: t, value: reserved });
        }
        for bit in 0..8 {
            let flags = 1u8 << bit;
            if t.allowed_flags() & flags != 0 {
                continue;
            }
            let mut s = Solo::server(config());
            s.feed_raw(&raw_header(0, ty(t), flags, 0, 1));
            assert_d(&mut s, ProtocolError::UnknownFlags { frame: t, flags });
            // All undefined bits at once.
            let mut s = Solo::server(config());
            let all = !t.allowed_flags();
            s.feed_raw(&raw_header(0, ty(t), all, 0, 1));
            assert_d(&mut s, ProtocolError::UnknownFlags { frame: t, flags: all });
        }
    }
    // During the handshake: a HELLO with a flag, silently.
    let mut s = Solo::fresh_server(config());
    let mut input = PREAMBLE.to_vec();
    let mut hello = hello_bytes();
    hello[5] = 0x01;
    input.extend_from_slice(&hello);
    s.feed_raw(&input);
    assert_silent_d(&mut s, ProtocolError::UnknownFlags { frame: FrameType::Hello, flags: 0x01 });
}

/// Case 11: an inner length that runs past the end of the frame, or
/// trailing bytes after the last field of a body without a tail: D
/// (`Malformed`).
#[test]
fn case11_inner_lengths_past_the_frame_and_trailing_bytes_are_malformed() {
    const PAST_END: &str = "a field runs past the end of the frame";
    const TRAILING: &str = "trailing bytes after the last field";
    let ty_req = ty(FrameType::Request);

    // REQUEST: method length 0xffff in a 6-byte body.
    let mut body = 0xffffu16.to_le_bytes().to_vec();
    body.extend_from_slice(b"echo");
    // HAS_DEADLINE without the 4 deadline bytes.
    let deadline = [str16(b"echo"), b"\x01\x02".to_vec()].concat();
    // HAS_TRACE with 8 of the 16 trace bytes.
    let trace = [str16(b"echo"), vec![7; 8]].concat();
    // Metadata: count 1000 in a few bytes; a value running past the end.
    let count = [str16(b"echo"), 1000u16.to_le_bytes().to_vec(), vec![0; 6]].concat();
    let value =
        [str16(b"echo"), 1u16.to_le_bytes().to_vec(), str16(b"k"), 9u16.to_le_bytes().to_vec(), b"v".to_vec()].concat();
    for (flags, body) in [(0u8, body), (0x04, deadline), (0x10, trace), (0x08, count), (0x08, value)] {
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty_req, flags, 1, &body));
        assert_d(&mut s, ProtocolError::Malformed { frame: FrameType::Request, reason: PAST_END });
    }

    // GOODBYE whose message says 5 bytes with 3 left (the test vector).
    let gb = [0u32.to_le_bytes().to_vec(), NO_HINT.to_le_bytes().to_vec(), 5u16.to_le_bytes().to_vec(), b"bye".into()]
        .concat();
    let mut s = Solo::server(config());
    s.feed_raw(&raw_frame(ty(FrameType::Goodbye), 0, 0, &gb));
    assert_d(&mut s, ProtocolError::Malformed { frame: FrameType::Goodbye, reason: PAST_END });

    // ERROR whose message runs past the end, on a client with a call.
    let mut c = Solo::client(config());
    let id = client_call(&mut c);
    let err = [6u32.to_le_bytes().to_vec(), 200u16.to_le_bytes().to_vec(), b"oops".to_vec()].concat();
    c.feed_raw(&raw_frame(ty(FrameType::Error), 0, id.0, &err));
    let e = ProtocolError::Malformed { frame: FrameType::Error, reason: PAST_END };
    assert_d_after(
        &mut c,
        &[Event::Response { id, result: Err(CallError::ConnectionLost(ConnectionError::Protocol(e.clone()))) }],
        e,
    );

    // Trailing bytes: SUBSCRIBE, GOODBYE.
    let mut s = Solo::server(config());
    s.feed_raw(&raw_frame(ty(FrameType::Subscribe), 0, 1, &[str16(b"news"), vec![0]].concat()));
    assert_d(&mut s, ProtocolError::Malformed { frame: FrameType::Subscribe, reason: TRAILING });
    let mut s = Solo::server(config());
    let gb = [0u32.to_le_bytes().to_vec(), NO_HINT.to_le_bytes().to_vec(), str16(b""), vec![0]].concat();
    s.feed_raw(&raw_frame(ty(FrameType::Goodbye), 0, 0, &gb));
    assert_d(&mut s, ProtocolError::Malformed { frame: FrameType::Goodbye, reason: TRAILING });

    // Trailing bytes in WELCOME and REJECT, to a client: silent.
    let welcome = welcome_of(&config()).to_bytes().unwrap();
    let mut w = welcome[HEADER_LEN..].to_vec();
    w.push(0);
    let mut c = Solo::fresh_client(config());
    c.feed_raw(&[PREAMBLE.to_vec(), raw_frame(ty(FrameType::Welcome), 0, 7, &w)].concat());
    assert_silent_d(&mut c, ProtocolError::Malformed { frame: FrameType::Welcome, reason: TRAILING });
    let reject = Frame::Reject(Reject {
        code: Code::AUTH_FAILED,
        retry_after_ms: NO_HINT,
        min_version: 1,
        max_version: 1,
        reason: Text::from("no"),
    });
    let mut r = reject.to_bytes().unwrap()[HEADER_LEN..].to_vec();
    r.push(0);
    let mut c = Solo::fresh_client(config());
    c.feed_raw(&[PREAMBLE.to_vec(), raw_frame(ty(FrameType::Reject), 0, 0, &r)].concat());
    assert_silent_d(&mut c, ProtocolError::Malformed { frame: FrameType::Reject, reason: TRAILING });

    // A HELLO whose client_name runs past the end: silent.
    let hello = hello_bytes();
    let mut h = hello[HEADER_LEN..].to_vec();
    h[24..26].copy_from_slice(&100u16.to_le_bytes());
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), raw_frame(ty(FrameType::Hello), 0, 0, &h)].concat());
    assert_silent_d(&mut s, ProtocolError::Malformed { frame: FrameType::Hello, reason: PAST_END });
}

/// Case 12: invalid UTF-8 or an embedded NUL in a string field. PROTOCOL.md
/// 3 makes every str16 a D (`InvalidString`), the reference's "header
/// field" rule; payloads are opaque bytes that wharf never interprets, so
/// the reference's "E (payload)" has no counterpart: such bytes in a
/// payload are delivered unchanged.
#[test]
fn case12_invalid_utf8_or_nul_in_a_string_field_is_a_connection_error() {
    const NOT_UTF8: &str = "not valid UTF-8";
    const NUL: &str = "contains NUL";
    let bad: [(&[u8], &str); 7] = [
        (b"\xff\xfe", NOT_UTF8),
        (b"\xc0\x80", NOT_UTF8),         // overlong NUL
        (b"\xe0\x80\xaf", NOT_UTF8),     // overlong '/'
        (b"\xed\xa0\x80", NOT_UTF8),     // surrogate U+D800
        (b"\xf4\x90\x80\x80", NOT_UTF8), // above U+10FFFF
        (b"ec\xe2\x82", NOT_UTF8),       // truncated sequence
        (b"a\0b", NUL),
    ];
    for (s_bytes, reason) in bad {
        // REQUEST method.
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Request), 0, 1, &[str16(s_bytes), b"hi".to_vec()].concat()));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Request, field: "method", reason });
        // NOTIFY method.
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Notify), 0, 0, &str16(s_bytes)));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Notify, field: "method", reason });
        // SUBSCRIBE and PUBLISH topics.
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Subscribe), 0, 1, &str16(s_bytes)));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Subscribe, field: "topic", reason });
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Publish), 0, 0, &str16(s_bytes)));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Publish, field: "topic", reason });
        // A metadata key.
        let md = [str16(b"echo"), 1u16.to_le_bytes().to_vec(), str16(s_bytes), str16(b"v")].concat();
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Request), 0x08, 1, &md));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Request, field: "metadata key", reason });
        // A GOODBYE message.
        let gb = [0u32.to_le_bytes().to_vec(), NO_HINT.to_le_bytes().to_vec(), str16(s_bytes)].concat();
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Goodbye), 0, 0, &gb));
        assert_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Goodbye, field: "message", reason });
        // An ERROR message, to a client with that call in flight.
        let mut c = Solo::client(config());
        let id = client_call(&mut c);
        let body = [6u32.to_le_bytes().to_vec(), str16(s_bytes)].concat();
        c.feed_raw(&raw_frame(ty(FrameType::Error), 0, id.0, &body));
        let e = ProtocolError::InvalidString { frame: FrameType::Error, field: "message", reason };
        let lost = Event::Response { id, result: Err(CallError::ConnectionLost(ConnectionError::Protocol(e.clone()))) };
        assert_d_after(&mut c, &[lost], e);
        // The HELLO client_name, silently.
        let mut h = hello_of(&config()).to_bytes().unwrap()[HEADER_LEN..HEADER_LEN + 24].to_vec();
        h.extend_from_slice(&str16(s_bytes));
        let mut s = Solo::fresh_server(config());
        s.feed_raw(&[PREAMBLE.to_vec(), raw_frame(ty(FrameType::Hello), 0, 0, &h)].concat());
        assert_silent_d(&mut s, ProtocolError::InvalidString { frame: FrameType::Hello, field: "client_name", reason });
    }

    // Payloads are opaque: the same bytes there are delivered unchanged.
    let mut s = Solo::server(config());
    let payload = b"\xff\xfe\0\xc0\x80\xed\xa0\x80";
    s.feed_raw(&raw_frame(ty(FrameType::Request), 0, 1, &[str16(b"echo"), payload.to_vec()].concat()));
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::Request(c)] if c.payload.as_ref() == payload), "{evs:?}");
    s.conn.respond(RequestId(1), Bytes::from_static(payload)).unwrap();
    s.pump();
    assert_eq!(s.sent(), [Frame::Response { id: 1, payload: Bytes::from_static(payload) }]);
    assert_serves(&mut s, 3);
    assert_zero_state(&s.conn);
}

/// Case 13: nesting-depth bomb. wharf has no structured payloads: every
/// body is a fixed sequence of fields, and the one repeated structure, the
/// metadata block, is a flat count-prefixed list (no recursion anywhere in
/// the decoder). Its "bomb" is the largest count a u16 allows, 65535
/// entries: bounded by the frame, refused E (`INVALID_REQUEST`, above
/// `max_metadata_entries`) on a REQUEST and dropped (I) on a NOTIFY, and
/// decoding it stores no more than `max_metadata_entries + 1` entries (the
/// rest are validated, not kept): the largest allocation is the frame's
/// own receive buffer.
#[test]
fn case13_flat_metadata_bomb_is_refused_and_bounded() {
    let mut block = u16::MAX.to_le_bytes().to_vec();
    for _ in 0..u16::MAX {
        block.extend_from_slice(&str16(b"k"));
        block.extend_from_slice(&str16(b""));
    }
    let mut s = Solo::server(config());
    let req = raw_frame(ty(FrameType::Request), 0x08, 1, &[str16(b"echo"), block.clone()].concat());
    let ((), largest, _) = measure(|| s.conn.handle_input(&req, s.now));
    s.pump();
    // Not a Vec of 65535 (key, value) pairs (64 bytes each, 4 MiB): at
    // most the limit's 65 entries; the frame's bytes are the largest block.
    assert!(largest <= req.len().max(64 * KIB) + KIB, "largest allocation {largest} for a {}-byte frame", req.len());
    assert!(s.take().is_empty(), "not dispatched");
    let sent = s.sent();
    assert!(matches!(sent.as_slice(), [Frame::Error(e)] if e.id == 1 && e.code == Code::INVALID_REQUEST), "{sent:?}");
    assert_eq!(s.conn.stats().calls_refused_invalid, 1);
    // The same on a NOTIFY: dropped and counted.
    s.feed_raw(&raw_frame(ty(FrameType::Notify), 0x08, 0, &[str16(b"log"), block].concat()));
    assert!(s.take().is_empty() && s.sent().is_empty());
    assert_eq!(s.conn.stats().notifications_ignored, 1);
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 3);

    // A payload that looks nested is just bytes.
    let nested = vec![b'['; 100_000];
    let mut s = Solo::server(config());
    s.feed_raw(&raw_frame(ty(FrameType::Request), 0, 1, &[str16(b"echo"), nested.clone()].concat()));
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::Request(c)] if c.payload.as_ref() == nested.as_slice()));
}

/// Case 14: a valid stream cut at every byte boundary (1-byte reads, both
/// input paths) gives the same events and the same output as one read.
/// `fragmentation.rs` covers every split point of a longer session.
#[test]
fn case14_one_byte_reads_decode_the_same_as_one_read() {
    let mut md = Metadata::new();
    md.insert("k", Bytes::from_static(b"v"));
    let frames = vec![
        Frame::Request(Request {
            id: 1,
            kind: CallKind::Unary,
            method: Text::from("full"),
            deadline_ms: Some(5_000),
            trace_id: Some([9; 16]),
            metadata: md.clone(),
            payload: Bytes::from_static(b"payload"),
        }),
        Frame::Notify(Notify { method: Text::from("n"), trace_id: Some([1; 16]), metadata: md, payload: Bytes::new() }),
        Frame::Ping { id: 5 },
        request_kind(3, CallKind::ClientStream, "up", b""),
        Frame::Data { id: 3, payload: Bytes::from_static(b"d1") },
        Frame::Data { id: 3, payload: Bytes::new() },
        Frame::End { id: 3 },
        Frame::Cancel { id: 1 },
        Frame::Subscribe { id: 5, topic: Text::from("t/"), prefix: true, policy: SlowConsumerPolicy::Disconnect },
        Frame::Publish { id: 7, topic: Text::from("t/x"), payload: Bytes::from_static(b"p") },
        Frame::Unsubscribe { id: 9, subscription: 5 },
        goodbye(Code::SHUTTING_DOWN),
    ];
    let mut input = PREAMBLE.to_vec();
    input.extend(hello_bytes());
    let split = input.len();
    input.extend(encode(&frames));

    // One start time for every run, so that deadlines compare equal.
    let t0 = Instant::now();
    let run = |chunk: Option<usize>, zero_copy: bool| {
        let conn = Connection::server(Arc::new(config()), t0).unwrap();
        let mut s = Solo { conn, now: t0, events: vec![], wrote: vec![], read: 0 };
        let feed = |s: &mut Solo, bytes: &[u8]| {
            let step = chunk.unwrap_or(bytes.len()).max(1);
            for part in bytes.chunks(step) {
                if zero_copy {
                    s.conn.recv_buffer().extend_from_slice(part);
                    s.conn.handle_received(part.len(), s.now);
                } else {
                    s.conn.handle_input(part, s.now);
                }
                s.pump();
            }
        };
        feed(&mut s, &input[..split]);
        assert!(matches!(s.events.as_slice(), [Event::HandshakeRequest(_)]), "{:?}", s.events);
        s.conn.accept(7).unwrap();
        s.pump();
        feed(&mut s, &input[split..]);
        (s.take(), s.wrote)
    };
    let whole = run(None, false);
    assert!(whole.0.len() > 10, "{:?}", whole.0);
    assert!(matches!(whole.0.last(), Some(Event::GoodbyeReceived { .. })), "{:?}", whole.0);
    assert_eq!(run(Some(1), false), whole, "1-byte reads");
    assert_eq!(run(Some(1), true), whole, "1-byte zero-copy reads");
    assert_eq!(run(Some(7), false), whole, "7-byte reads");
}

/// Case 15: 10 000 valid frames in one write are all processed; a peer
/// cannot starve others: each read is bounded by the receive buffer's room
/// (at most 64 KiB between frames), and reading pauses (B) once undelivered
/// events hold `max_inbound_buffered`, so a driver goes round its peers.
#[test]
fn case15_ten_thousand_frames_in_one_write_are_all_processed_fairly() {
    const N: u64 = 10_000;
    let mut s = Solo::server(config_with(|c| c.max_in_flight = N as u32));
    let frames: Vec<Frame> = (0..N).map(|i| request(2 * i + 1, "echo", b"x")).collect();
    s.feed_raw(&encode(&frames));
    let evs = s.take();
    assert_eq!(evs.len(), N as usize);
    assert!(evs.iter().enumerate().all(|(i, e)| matches!(e, Event::Request(c) if c.id.0 == 2 * i as u64 + 1)));
    assert_eq!(s.conn.calls_being_served(), N as usize);
    for i in 0..N {
        s.conn.respond(RequestId(2 * i + 1), Bytes::from_static(b"y")).unwrap();
    }
    s.pump();
    let sent = s.sent();
    assert_eq!(sent.len(), N as usize);
    assert!(sent.iter().all(|f| matches!(f, Frame::Response { .. })));
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 2 * N + 1);

    // Fairness: a flood of notifications against a small inbound limit,
    // read the way an adapter reads (zero-copy, only while wants_read),
    // with another connection served at every pause.
    let mut s = Solo::server(config_with(|c| c.max_inbound_buffered = 64 * KIB));
    let flood = encode(&(0..N).map(|_| notify("n")).collect::<Vec<_>>());
    let mut other = Pair::connected();
    let (mut at, mut pauses, mut got, mut largest_read) = (0, 0, 0, 0);
    while at < flood.len() {
        if !s.conn.wants_read() {
            pauses += 1;
            // The driver serves someone else, then the application catches up.
            let id = other.client.conn.request("echo", Bytes::new(), CallOptions::new(), other.now).unwrap();
            other.drive();
            let evs = other.server.take();
            let [Event::Request(c)] = evs.as_slice() else { panic!("{evs:?}") };
            other.server.conn.respond(c.id, Bytes::new()).unwrap();
            other.drive();
            assert_eq!(other.client.take(), [Event::Response { id, result: Ok(Bytes::new()) }]);
            while let Some(e) = s.conn.poll_event() {
                assert!(matches!(e, Event::Notification(_)));
                got += 1;
            }
            continue;
        }
        let buf = s.conn.recv_buffer();
        let n = (buf.capacity() - buf.len()).min(flood.len() - at);
        buf.extend_from_slice(&flood[at..at + n]);
        s.conn.handle_received(n, s.now);
        largest_read = largest_read.max(n);
        at += n;
    }
    got += std::iter::from_fn(|| s.conn.poll_event()).filter(|e| matches!(e, Event::Notification(_))).count();
    assert_eq!(got, N as usize, "every notification processed");
    assert!(pauses >= 2, "reading paused {pauses} times");
    assert_eq!(s.conn.stats().reads_paused, pauses);
    assert!(largest_read <= 64 * KIB, "one read took {largest_read} bytes");
    assert_zero_state(&s.conn);
}

// ----------------------------------------------------------------------
// Handshake / auth
// ----------------------------------------------------------------------

/// Case 16: any frame other than HELLO before the handshake completes: D
/// (silent `UnexpectedFrame`), never dispatched: as the first frame, after
/// HELLO before WELCOME, and to a client waiting for WELCOME.
#[test]
fn case16_non_handshake_frames_before_the_handshake_are_never_dispatched() {
    let handshake_frames = [
        welcome_of(&config()),
        Frame::Reject(Reject {
            code: Code::OK,
            retry_after_ms: NO_HINT,
            min_version: 1,
            max_version: 1,
            reason: Text::new(),
        }),
    ];
    for f in non_handshake_frames().into_iter().chain(handshake_frames.clone()) {
        let t = f.frame_type();
        // First frame after the preamble.
        let mut s = Solo::fresh_server(config());
        s.feed_raw(&[PREAMBLE.to_vec(), encode(std::slice::from_ref(&f))].concat());
        assert_silent_d(&mut s, ProtocolError::UnexpectedFrame { frame: t, reason: "the first frame must be HELLO" });
        // After HELLO, before the application accepted: the HELLO was
        // announced, the frame is not.
        let mut s = Solo::fresh_server(config());
        s.feed_raw(&[PREAMBLE.to_vec(), hello_bytes(), encode(std::slice::from_ref(&f))].concat());
        let evs = s.take();
        assert!(matches!(evs.as_slice(), [Event::HandshakeRequest(_), Event::Closed(_)]), "{evs:?}");
        s.events = vec![evs[1].clone()];
        assert_silent_d(
            &mut s,
            ProtocolError::UnexpectedFrame { frame: t, reason: "nothing may follow HELLO before WELCOME" },
        );
        assert_eq!(s.conn.accept(7), Err(SendError::Closed(s.conn.error().unwrap().clone())));
    }
    // The client: the server's first frame must be WELCOME or REJECT.
    for f in non_handshake_frames().into_iter().chain([hello_of(&config())]) {
        let mut c = Solo::fresh_client(config());
        c.feed_raw(&[PREAMBLE.to_vec(), encode(std::slice::from_ref(&f))].concat());
        assert_silent_d(
            &mut c,
            ProtocolError::UnexpectedFrame { frame: f.frame_type(), reason: "expected WELCOME or REJECT" },
        );
    }
}

/// Case 17: a second handshake frame after establishment: D
/// (`UnexpectedFrame`, now with GOODBYE `PROTOCOL_ERROR`).
#[test]
fn case17_a_second_handshake_after_establishment_is_a_connection_error() {
    let reject = Frame::Reject(Reject {
        code: Code::AUTH_FAILED,
        retry_after_ms: NO_HINT,
        min_version: 1,
        max_version: 1,
        reason: Text::new(),
    });
    for f in [hello_of(&config()), welcome_of(&config()), reject] {
        let e = ProtocolError::UnexpectedFrame { frame: f.frame_type(), reason: "the handshake happens once" };
        let mut s = Solo::server(config());
        s.feed(std::slice::from_ref(&f));
        assert_d(&mut s, e.clone());
        let mut c = Solo::client(config());
        c.feed(std::slice::from_ref(&f));
        assert_d(&mut c, e);
    }
    // With a call in flight, it fails once.
    let mut s = Solo::server(config());
    s.feed(&[request(1, "m", b""), hello_of(&config())]);
    let e = ProtocolError::UnexpectedFrame { frame: FrameType::Hello, reason: "the handshake happens once" };
    let evs = s.take();
    assert!(matches!(evs.first(), Some(Event::Request(_))));
    s.events = evs[1..].to_vec();
    assert_d_after(
        &mut s,
        &[Event::CallCancelled {
            id: RequestId(1),
            reason: CancelReason::ConnectionLost(ConnectionError::Protocol(e.clone())),
        }],
        e,
    );
}

/// Case 18: major version mismatch: one REJECT `VERSION_MISMATCH` listing
/// the server's range (1..1), then close. wharf has no minor versions:
/// a client offering a wider range is negotiated down to the highest common
/// version.
#[test]
fn case18_version_mismatch_rejects_with_the_range_and_wider_ranges_negotiate_down() {
    let hello = |min, max| {
        let mut h = hello_of(&config());
        if let Frame::Hello(Hello { min_version, max_version, .. }) = &mut h {
            (*min_version, *max_version) = (min, max);
        }
        h
    };
    for (min, max) in [(2, 3), (0, 0), (3, 2), (u16::MAX, u16::MAX)] {
        let mut s = Solo::fresh_server(config());
        s.feed_raw(&[PREAMBLE.to_vec(), encode(&[hello(min, max)])].concat());
        let err = ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: min, peer_max: max };
        assert_eq!(s.take(), [Event::Closed(err.clone())], "{min}..{max}");
        assert_eq!(s.conn.error(), Some(&err));
        assert_eq!(s.wrote[..8], PREAMBLE);
        s.read = 8;
        let sent = s.sent();
        let [Frame::Reject(r)] = sent.as_slice() else { panic!("{sent:?}") };
        assert_eq!((r.code, r.retry_after_ms, r.min_version, r.max_version), (Code::VERSION_MISMATCH, NO_HINT, 1, 1));
        assert_zero_state(&s.conn);
    }
    // 1..=5: version 1 is used.
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), encode(&[hello(1, 5)])].concat());
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::HandshakeRequest(h)] if h.version == 1), "{evs:?}");
    s.conn.accept(7).unwrap();
    s.pump();
    s.read = 8;
    assert!(matches!(s.sent().as_slice(), [Frame::Welcome(w)] if w.version == 1));
    assert_eq!(s.conn.version(), 1);

    // A client given a version it did not offer: silent D.
    let mut w = welcome_of(&config());
    if let Frame::Welcome(w) = &mut w {
        w.version = 2;
    }
    let mut c = Solo::fresh_client(config());
    c.feed_raw(&[PREAMBLE.to_vec(), encode(&[w])].concat());
    assert_silent_d(
        &mut c,
        ProtocolError::Malformed { frame: FrameType::Welcome, reason: "the server chose a version we did not offer" },
    );
    // A client told VERSION_MISMATCH learns the server's range.
    let mut c = Solo::fresh_client(config());
    let reject = Frame::Reject(Reject {
        code: Code::VERSION_MISMATCH,
        retry_after_ms: NO_HINT,
        min_version: 4,
        max_version: 6,
        reason: Text::from("no common protocol version"),
    });
    c.feed_raw(&[PREAMBLE.to_vec(), encode(&[reject])].concat());
    assert_silent(&mut c, ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: 4, peer_max: 6 });
}

/// Case 19: an auth payload over 64 KiB (a HELLO over
/// `max_handshake_size`): D from the header, silently, before the payload
/// is read or allocated; exactly 64 KiB is accepted.
#[test]
fn case19_auth_payload_over_64_kib_is_refused_from_the_header() {
    let hello_with_auth = |n: usize| {
        let mut h = hello_of(&config());
        if let Frame::Hello(Hello { auth, .. }) = &mut h {
            *auth = Bytes::from(vec![0xa5; n]);
        }
        encode(&[h])
    };
    // Body = 26 fixed bytes + empty name + auth.
    let over = hello_with_auth(64 * KIB - 26 + 1);
    let mut s = Solo::fresh_server(config());
    let ((), largest, _) = measure(|| s.conn.handle_input(&[&PREAMBLE[..], &over[..HEADER_LEN]].concat(), s.now));
    s.pump();
    assert!(largest <= 64 * KIB);
    assert_silent_d(&mut s, ProtocolError::FrameTooLarge { frame: FrameType::Hello, len: 65537, limit: 65536 });
    assert_eq!(s.conn.stats().frames_too_large, 1);
    // The rest of it is not looked at.
    s.feed_raw(&over[HEADER_LEN..]);
    assert!(s.take().is_empty());

    let exact = hello_with_auth(64 * KIB - 26);
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), exact].concat());
    let evs = s.take();
    assert!(matches!(evs.as_slice(), [Event::HandshakeRequest(h)] if h.auth.len() == 64 * KIB - 26), "{evs:?}");
}

/// Case 20: the auth payload asserts one identity, the transport another:
/// the comparison (peer credentials against the payload) belongs to the
/// server application and the adapter that reads the credentials; the core
/// hands the payload over byte for byte and carries the application's
/// REJECT `AUTH_FAILED` + close.
#[test]
fn case20_auth_mismatch_is_rejected_by_the_application_and_closed() {
    let mut p = Pair::with_auth(config(), config(), Bytes::from_static(b"uid=0"));
    p.auto_accept = None;
    p.drive();
    let evs = p.server.take();
    let [Event::HandshakeRequest(h)] = evs.as_slice() else { panic!("{evs:?}") };
    assert_eq!(h.auth.as_ref(), b"uid=0");
    // The application compares with the kernel's answer (say uid 1000).
    p.server.conn.reject(Code::AUTH_FAILED, "uid mismatch", None).unwrap();
    p.drive();
    assert_eq!(
        p.server.take(),
        [Event::Closed(ConnectionError::LocallyClosed { code: Code::AUTH_FAILED, message: "uid mismatch".into() })]
    );
    let frames = support::frames_of(&p.server.wrote);
    assert!(matches!(frames.as_slice(), [Frame::Reject(r)] if r.code == Code::AUTH_FAILED), "{frames:?}");
    let err = ConnectionError::Rejected { code: Code::AUTH_FAILED, reason: "uid mismatch".into(), retry_after: None };
    assert_eq!(p.client.take(), [Event::Closed(err.clone())]);
    assert_eq!(err.io_kind(), io::ErrorKind::PermissionDenied);
    assert_zero_state(&p.server.conn);
    assert_zero_state(&p.client.conn);
}

/// Case 21: repeated bad auth. One connection gets exactly one attempt:
/// after REJECT it is closed and a retried HELLO is not even read, and a
/// second HELLO before the answer is D. (Limiting attempts across
/// connections, and comparing secrets in constant time, are the
/// application's: the core compares no secret.)
#[test]
fn case21_one_auth_attempt_per_connection() {
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), hello_bytes()].concat());
    assert!(matches!(s.take().as_slice(), [Event::HandshakeRequest(_)]));
    s.conn.reject(Code::AUTH_FAILED, "bad token", None).unwrap();
    s.pump();
    assert_eq!(
        s.take(),
        [Event::Closed(ConnectionError::LocallyClosed { code: Code::AUTH_FAILED, message: "bad token".into() })]
    );
    s.read = 8;
    assert!(matches!(s.sent().as_slice(), [Frame::Reject(r)] if r.code == Code::AUTH_FAILED));
    // The client tries again on the same byte stream: ignored entirely.
    s.feed_raw(&hello_bytes());
    assert!(s.take().is_empty() && s.sent().is_empty());
    assert_eq!(s.conn.stats().frames_received, 1);

    // Two HELLOs in a row: the second is D, the first was announced.
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), hello_bytes(), hello_bytes()].concat());
    let evs = s.take();
    assert!(matches!(evs.first(), Some(Event::HandshakeRequest(_))));
    s.events = evs[1..].to_vec();
    assert_silent_d(
        &mut s,
        ProtocolError::UnexpectedFrame { frame: FrameType::Hello, reason: "nothing may follow HELLO before WELCOME" },
    );
}

/// Case 22: handshake bytes dribbled one per second: D at
/// `handshake_timeout` (10 s from creation, however much trickles in).
/// 64 such peers do not keep a legitimate client from being served.
#[test]
fn case22_dribbled_handshakes_time_out_and_do_not_block_a_legitimate_client() {
    let input = [PREAMBLE.to_vec(), hello_bytes()].concat();
    let mut slow: Vec<Solo> = (0..64).map(|_| Solo::fresh_server(config())).collect();
    let mut good = Pair::new(config(), config());
    for second in 0..10u64 {
        for s in &mut slow {
            s.feed_raw(&input[second as usize..=second as usize]);
            s.advance(Duration::from_secs(1));
        }
        if second == 4 {
            // Meanwhile a legitimate client connects and is served.
            good.drive();
            assert!(good.client.conn.is_established() && good.server.conn.is_established());
            let id = good.client.conn.request("echo", Bytes::new(), CallOptions::new(), good.now).unwrap();
            good.drive();
            let evs = good.server.take();
            let Some(Event::Request(c)) = evs.last() else { panic!("{evs:?}") };
            good.server.conn.respond(c.id, Bytes::new()).unwrap();
            good.drive();
            assert_eq!(good.client.take().last(), Some(&Event::Response { id, result: Ok(Bytes::new()) }));
        }
    }
    for s in &mut slow {
        assert_eq!(s.take(), [Event::Closed(ConnectionError::HandshakeTimeout(Duration::from_secs(10)))]);
        assert_eq!(s.conn.stats().handshake_timeouts, 1);
        // The whole preamble had arrived: REJECT HANDSHAKE_TIMEOUT.
        s.read = 8;
        assert!(matches!(s.sent().as_slice(), [Frame::Reject(r)] if r.code == Code::HANDSHAKE_TIMEOUT));
        assert_zero_state(&s.conn);
    }
}

// ----------------------------------------------------------------------
// Correlation / state machine
// ----------------------------------------------------------------------

/// Case 23: id 0 where a non-zero id is required (and non-zero where 0 is
/// required), and ids of the wrong parity: D (`BadId`).
#[test]
fn case23_reserved_ids_are_connection_errors() {
    const NOT_ALLOWED: &str = "id not allowed for this frame type";
    for t in ALL_TYPES {
        let (min, _) = t.length_bounds();
        let nonzero_required = !matches!(
            t,
            FrameType::Hello
                | FrameType::Reject
                | FrameType::Notify
                | FrameType::Goodbye
                | FrameType::Ping
                | FrameType::Pong
                | FrameType::Publish
        );
        let (bad, zero_required) = if nonzero_required {
            (0, false)
        } else if matches!(t, FrameType::Ping | FrameType::Pong | FrameType::Publish) {
            continue; // any id (PUBLISH: see below)
        } else {
            (1, true)
        };
        let mut s = Solo::server(config());
        s.feed_raw(&raw_header(min, ty(t), 0, 0, bad));
        assert_d(&mut s, ProtocolError::BadId { frame: t, id: bad, reason: NOT_ALLOWED });
        assert!(zero_required || bad == 0);
    }
    // PUBLISH: WANT_ACK exactly when the id is non-zero.
    for (flags, id) in [(0x01u8, 0u64), (0x00, 1)] {
        let mut s = Solo::server(config());
        s.feed_raw(&raw_frame(ty(FrameType::Publish), flags, id, &str16(b"news/today")));
        assert_d(&mut s, ProtocolError::BadId { frame: FrameType::Publish, id, reason: NOT_ALLOWED });
    }
    // A client-started operation with a server id (even), and the reverse.
    let mut s = Solo::server(config());
    s.feed(&[request(2, "m", b"")]);
    assert_d(
        &mut s,
        ProtocolError::BadId { frame: FrameType::Request, id: 2, reason: "wrong parity for the sender's role" },
    );
    let mut c = Solo::client(config());
    c.feed(&[request(1, "m", b"")]);
    assert_d(
        &mut c,
        ProtocolError::BadId { frame: FrameType::Request, id: 1, reason: "wrong parity for the sender's role" },
    );
    // A HELLO with a non-zero id: silent.
    let mut h = hello_bytes();
    h[8] = 1;
    let mut s = Solo::fresh_server(config());
    s.feed_raw(&[PREAMBLE.to_vec(), h].concat());
    assert_silent_d(&mut s, ProtocolError::BadId { frame: FrameType::Hello, id: 1, reason: NOT_ALLOWED });
}

/// Case 24: a duplicate request id while the first is in flight.
/// PROTOCOL.md 8.1 picks D (ids must strictly increase, so a duplicate is a
/// `BadId`): the duplicate is never dispatched, and the original, which
/// cannot complete on a closed connection, gets exactly one outcome
/// (`CallCancelled` with the error) instead of completing.
#[test]
fn case24_duplicate_request_id_in_flight_is_a_connection_error() {
    let mut s = Solo::server(config());
    s.feed(&[request(5, "first", b"a")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(c)] if c.id == RequestId(5)));
    s.feed(&[request(5, "dup", b"b")]);
    let e = ProtocolError::BadId { frame: FrameType::Request, id: 5, reason: "operation ids must increase" };
    assert_d_after(
        &mut s,
        &[Event::CallCancelled {
            id: RequestId(5),
            reason: CancelReason::ConnectionLost(ConnectionError::Protocol(e.clone())),
        }],
        e,
    );
    assert_eq!(s.conn.stats().calls_received, 1);
    assert!(matches!(s.conn.respond(RequestId(5), Bytes::new()), Err(SendError::Closed(_))));
    assert_other_peer_served();
}

/// Case 25: a response for an unknown id, on the client. PROTOCOL.md 8.3
/// tells the two apart: an id never issued (or of the wrong parity) is D
/// (`BadId`), an issued call that already ended (timed out, cancelled) is
/// I (`late_responses_ignored`). Never a panic, never a mis-delivery: the
/// call in flight is not given the stray payload.
#[test]
fn case25_response_for_an_unknown_id_is_fatal_and_for_an_ended_call_ignored() {
    for stray in [5u64, 2, 4] {
        let mut c = Solo::client(config());
        let id = client_call(&mut c);
        c.feed(&[Frame::Response { id: stray, payload: Bytes::from_static(b"not yours") }]);
        let e = ProtocolError::BadId {
            frame: FrameType::Response,
            id: stray,
            reason: "answers a call the receiver never made",
        };
        let lost = Event::Response { id, result: Err(CallError::ConnectionLost(ConnectionError::Protocol(e.clone()))) };
        assert_d_after(&mut c, &[lost], e);
    }
    // Issued and ended: ignored and counted; the next call is unaffected.
    let mut c = Solo::client(config());
    let late =
        c.conn.request("m", Bytes::new(), CallOptions::new().timeout(Timeout::After(Duration::from_secs(1))), c.now);
    let late = late.unwrap();
    c.advance(Duration::from_secs(1));
    assert_eq!(c.take(), [Event::Response { id: late, result: Err(CallError::TimedOut(Duration::from_secs(1))) }]);
    assert_eq!(c.sent().last(), Some(&Frame::Cancel { id: late.0 }));
    let next = client_call(&mut c);
    c.feed(&[Frame::Response { id: late.0, payload: Bytes::from_static(b"late") }]);
    assert!(c.take().is_empty() && c.sent().is_empty());
    assert_eq!(c.conn.stats().late_responses_ignored, 1);
    c.feed(&[Frame::Response { id: next.0, payload: Bytes::from_static(b"mine") }]);
    assert_eq!(c.take(), [Event::Response { id: next, result: Ok(Bytes::from_static(b"mine")) }]);
    assert_zero_state(&c.conn);
}

/// Case 26: two responses (or a response and an error) for one id: the
/// caller sees exactly one outcome, the first; the rest are I
/// (`late_responses_ignored`).
#[test]
fn case26_second_response_for_the_same_id_is_ignored() {
    let mut c = Solo::client(config());
    let id = client_call(&mut c);
    c.feed(&[
        Frame::Response { id: id.0, payload: Bytes::from_static(b"one") },
        Frame::Response { id: id.0, payload: Bytes::from_static(b"two") },
        Frame::Error(ErrorBody { id: id.0, code: Code::INTERNAL, message: Text::from("three"), data: Bytes::new() }),
    ]);
    assert_eq!(c.take(), [Event::Response { id, result: Ok(Bytes::from_static(b"one")) }]);
    assert_eq!(c.conn.stats().late_responses_ignored, 2);
    assert!(c.sent().is_empty());
    assert_zero_state(&c.conn);
    let next = client_call(&mut c);
    c.feed(&[Frame::Response { id: next.0, payload: Bytes::new() }]);
    assert_eq!(c.take(), [Event::Response { id: next, result: Ok(Bytes::new()) }]);
}

/// Case 27: response-type frames in the wrong direction: a client
/// "answering" calls the server never made, acknowledging or delivering;
/// a server sending pub/sub commands; a callee sending END: all D.
#[test]
fn case27_frames_in_the_wrong_direction_are_connection_errors() {
    const NEVER: &str = "answers a call the receiver never made";
    // To the server.
    let cases: Vec<(Frame, ProtocolError)> = vec![
        (
            Frame::Response { id: 1, payload: Bytes::new() },
            ProtocolError::BadId { frame: FrameType::Response, id: 1, reason: NEVER },
        ),
        (
            Frame::Error(ErrorBody { id: 2, code: Code::INTERNAL, message: Text::new(), data: Bytes::new() }),
            ProtocolError::BadId { frame: FrameType::Error, id: 2, reason: NEVER },
        ),
        (
            Frame::Ack { id: 2, status: Code::OK, value: 0 },
            ProtocolError::UnexpectedFrame { frame: FrameType::Ack, reason: "only servers acknowledge" },
        ),
        (
            Frame::Message { subscription: 1, topic: Text::from("t"), payload: Bytes::new() },
            ProtocolError::UnexpectedFrame { frame: FrameType::Message, reason: "only servers deliver" },
        ),
        (
            Frame::Messages {
                subscription: 1,
                topic: Text::from("t"),
                batch: wharf_core::wire::MessageBatch::from_payloads([&b"x"[..], b"yz"]).expect("a batch"),
            },
            ProtocolError::UnexpectedFrame { frame: FrameType::Messages, reason: "only servers deliver" },
        ),
        (
            Frame::Lagged { subscription: 1, dropped: 3 },
            ProtocolError::UnexpectedFrame { frame: FrameType::Lagged, reason: "only servers deliver" },
        ),
    ];
    for (f, e) in cases {
        let mut s = Solo::server(config());
        s.feed(&[f]);
        assert_d(&mut s, e);
    }
    // To the client.
    let cases: Vec<(Frame, ProtocolError)> = vec![
        (
            Frame::Subscribe { id: 2, topic: Text::from("t"), prefix: false, policy: SlowConsumerPolicy::DropOldest },
            ProtocolError::UnexpectedFrame { frame: FrameType::Subscribe, reason: "only clients subscribe" },
        ),
        (
            Frame::Unsubscribe { id: 2, subscription: 1 },
            ProtocolError::UnexpectedFrame { frame: FrameType::Unsubscribe, reason: "only clients unsubscribe" },
        ),
        (
            Frame::Publish { id: 0, topic: Text::from("t"), payload: Bytes::new() },
            ProtocolError::UnexpectedFrame { frame: FrameType::Publish, reason: "only clients publish over the wire" },
        ),
    ];
    for (f, e) in cases {
        let mut c = Solo::client(config());
        c.feed(&[f]);
        assert_d(&mut c, e);
    }
    // END from the callee, on the caller's client-stream call.
    let mut c = Solo::client(config());
    let id = c.conn.request("up", Bytes::new(), CallOptions::new().kind(CallKind::ClientStream), c.now).unwrap();
    c.pump();
    c.sent();
    c.feed(&[Frame::End { id: id.0 }]);
    let e = ProtocolError::Stream { id: id.0, reason: "only the caller sends END" };
    let lost = Event::Response { id, result: Err(CallError::ConnectionLost(ConnectionError::Protocol(e.clone()))) };
    assert_d_after(&mut c, &[lost], e);
}

/// Case 28: request number 129 with `max_in_flight` = 128: E (`BUSY`) on
/// its id, not dispatched, not queued; once a call finishes a new one is
/// served.
#[test]
fn case28_request_over_max_in_flight_gets_busy_and_is_not_queued() {
    let mut s = Solo::server(config());
    assert_eq!(s.conn.config().max_in_flight, 128);
    let frames: Vec<Frame> = (0..129).map(|i| request(2 * i + 1, "slow", b"")).collect();
    s.feed(&frames);
    let evs = s.take();
    assert_eq!(evs.len(), 128);
    assert!(evs.iter().all(|e| matches!(e, Event::Request(c) if c.id.0 < 257)));
    let sent = s.sent();
    let [Frame::Error(e)] = sent.as_slice() else { panic!("{sent:?}") };
    assert_eq!((e.id, e.code), (257, Code::BUSY));
    assert_eq!(s.conn.stats().calls_refused_busy, 1);
    assert_eq!(s.conn.calls_being_served(), 128);
    // Finish one; the next call is dispatched.
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    assert_serves(&mut s, 259);
    for i in 1..128 {
        s.conn.respond(RequestId(2 * i + 1), Bytes::new()).unwrap();
    }
    s.pump();
    assert_eq!(s.sent().len(), 127);
    assert_zero_state(&s.conn);
}

/// Case 29: CANCEL for an already finished call: I
/// (`stale_frames_ignored`); for an id never issued PROTOCOL.md 9.5 picks
/// D (`BadId`). CANCEL racing the response: exactly one outcome each side.
#[test]
fn case29_cancel_for_finished_calls_is_ignored_and_racing_cancel_has_one_outcome() {
    let mut s = Solo::server(config());
    s.feed(&[request(1, "m", b"")]);
    s.take();
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[Frame::Cancel { id: 1 }, Frame::Cancel { id: 1 }]);
    assert!(s.take().is_empty() && s.sent().is_empty());
    assert_eq!(s.conn.stats().stale_frames_ignored, 2);
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 3);
    s.feed(&[Frame::Cancel { id: 9 }]);
    assert_d(
        &mut s,
        ProtocolError::BadId { frame: FrameType::Cancel, id: 9, reason: "cancels a call that was never made" },
    );

    // The race: the response and the CANCEL cross on the wire.
    let mut p = Pair::connected();
    let id = p.client.conn.request("m", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Request(_)]));
    p.server.conn.respond(id, Bytes::from_static(b"answer")).unwrap();
    p.client.conn.cancel(id).unwrap();
    p.drive();
    assert_eq!(p.client.take(), [Event::Response { id, result: Err(CallError::Cancelled) }]);
    assert!(p.server.take().is_empty(), "the CANCEL is late for the server");
    assert_eq!(p.client.conn.stats().late_responses_ignored, 1);
    assert_eq!(p.server.conn.stats().stale_frames_ignored, 1);
    assert_zero_state(&p.client.conn);
    assert_zero_state(&p.server.conn);
}

/// Case 30: stream frames for an unknown stream (D, `BadId`), for a closed
/// one (I, `stale_frames_ignored`), DATA after END and END twice (D,
/// `Stream`), DATA in a direction the call kind does not carry (D).
#[test]
fn case30_stream_frames_for_unknown_closed_and_finished_streams() {
    const NEVER: &str = "no such stream was ever opened";
    let upload = request_kind(1, CallKind::ClientStream, "up", b"");
    let lost = |e: &ProtocolError| Event::CallCancelled {
        id: RequestId(1),
        reason: CancelReason::ConnectionLost(ConnectionError::Protocol(e.clone())),
    };
    // Unknown.
    for (f, t) in
        [(Frame::Data { id: 7, payload: Bytes::new() }, FrameType::Data), (Frame::End { id: 7 }, FrameType::End)]
    {
        let mut s = Solo::server(config());
        s.feed(&[f]);
        assert_d(&mut s, ProtocolError::BadId { frame: t, id: 7, reason: NEVER });
    }
    // DATA after END.
    let mut s = Solo::server(config());
    s.feed(&[upload.clone(), Frame::Data { id: 1, payload: Bytes::from_static(b"a") }, Frame::End { id: 1 }]);
    assert_eq!(s.take().len(), 3);
    s.feed(&[Frame::Data { id: 1, payload: Bytes::from_static(b"b") }]);
    let e = ProtocolError::Stream { id: 1, reason: "DATA after END" };
    assert_d_after(&mut s, &[lost(&e)], e);
    // END twice.
    let mut s = Solo::server(config());
    s.feed(&[upload.clone(), Frame::End { id: 1 }]);
    assert_eq!(s.take().len(), 2);
    s.feed(&[Frame::End { id: 1 }]);
    let e = ProtocolError::Stream { id: 1, reason: "END sent twice" };
    assert_d_after(&mut s, &[lost(&e)], e);
    // DATA on a unary call.
    let mut s = Solo::server(config());
    s.feed(&[request(1, "m", b"")]);
    s.take();
    s.feed(&[Frame::Data { id: 1, payload: Bytes::new() }]);
    let e = ProtocolError::Stream { id: 1, reason: "the caller may not send DATA" };
    assert_d_after(&mut s, &[lost(&e)], e);
    // Closed (answered) stream: DATA, END and CREDIT are late.
    let mut s = Solo::server(config());
    s.feed(&[upload]);
    s.take();
    s.conn.respond(RequestId(1), Bytes::new()).unwrap();
    s.pump();
    s.sent();
    s.feed(&[
        Frame::Data { id: 1, payload: Bytes::from_static(b"late") },
        Frame::End { id: 1 },
        Frame::Credit { id: 1, increment: 5 },
    ]);
    assert!(s.take().is_empty() && s.sent().is_empty());
    assert_eq!(s.conn.stats().stale_frames_ignored, 3);
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 3);
}

/// Case 31: more stream bytes than granted (D, `CreditExceeded`) and
/// CREDIT pushing a window above 2^31 - 1 (D, `CreditOverflow`).
#[test]
fn case31_stream_credit_overflow_is_a_connection_error() {
    // The server grants 16 bytes per stream.
    let mut s = Solo::server(config_with(|c| c.initial_stream_window = 16));
    s.feed(&[
        request_kind(1, CallKind::ClientStream, "up", b""),
        Frame::Data { id: 1, payload: Bytes::from(vec![1; 10]) },
        // 6 left: one message may overshoot...
        Frame::Data { id: 1, payload: Bytes::from(vec![2; 100]) },
    ]);
    assert_eq!(s.take().len(), 3);
    // ...but nothing may follow without CREDIT.
    s.feed(&[Frame::Data { id: 1, payload: Bytes::new() }]);
    let e = ProtocolError::CreditExceeded { id: 1 };
    let lost = |e: &ProtocolError| Event::CallCancelled {
        id: RequestId(1),
        reason: CancelReason::ConnectionLost(ConnectionError::Protocol(e.clone())),
    };
    assert_d_after(&mut s, &[lost(&e)], e);

    // The client granted 256 KiB for the server's DATA; CREDIT up to
    // exactly 2^31 - 1 is fine, one more byte is not.
    let mut s = Solo::server(config());
    let window = i64::from(config().initial_stream_window);
    s.feed(&[
        request_kind(1, CallKind::ServerStream, "down", b""),
        Frame::Credit { id: 1, increment: u32::try_from(i64::from(i32::MAX) - window).unwrap() },
    ]);
    assert_eq!(s.take().len(), 1);
    s.feed(&[Frame::Credit { id: 1, increment: 1 }]);
    let e = ProtocolError::CreditOverflow { id: 1 };
    assert_d_after(&mut s, &[lost(&e)], e);
    // And the largest increment at once.
    let mut s = Solo::server(config());
    s.feed(&[request_kind(1, CallKind::Bidi, "both", b""), Frame::Credit { id: 1, increment: u32::MAX }]);
    let evs = s.take();
    assert!(matches!(evs.first(), Some(Event::Request(_))));
    s.events = evs[1..].to_vec();
    let e = ProtocolError::CreditOverflow { id: 1 };
    assert_d_after(&mut s, &[lost(&e)], e);
}

/// Case 32: SUBSCRIBE with an oversize topic (E `INVALID_TOPIC`),
/// subscription number 513 (E `TOO_MANY_SUBSCRIPTIONS`), UNSUBSCRIBE of an
/// unknown subscription: PROTOCOL.md 11.3 answers it E
/// (`UNKNOWN_SUBSCRIPTION`) rather than the reference's I, so that every
/// operation gets its one ACK.
#[test]
fn case32_subscription_limits_and_unknown_unsubscribe() {
    let mut s = Solo::server(config());
    let ack = |s: &mut Solo, id: u64, status: Code| {
        let sent = s.sent();
        assert_eq!(sent, [Frame::Ack { id, status, value: 0 }], "ACK for {id}");
    };
    for (id, n) in [(1u64, 1025usize), (3, usize::from(u16::MAX))] {
        let topic = Text::from("t".repeat(n));
        s.feed(&[Frame::Subscribe { id, topic, prefix: false, policy: SlowConsumerPolicy::DropOldest }]);
        assert!(s.take().is_empty(), "not dispatched");
        ack(&mut s, id, Code::INVALID_TOPIC);
    }
    assert_eq!(s.conn.stats().subscriptions_refused, 2);
    let mut next = 5;
    for i in 0..512 {
        let topic = Text::from(format!("topic/{i}"));
        s.feed(&[Frame::Subscribe { id: next, topic, prefix: false, policy: SlowConsumerPolicy::DropOldest }]);
        let evs = s.take();
        assert!(matches!(evs.as_slice(), [Event::Subscribe { id, .. }] if id.0 == next));
        s.conn.accept_subscription(SubscriptionId(next)).unwrap();
        s.pump();
        ack(&mut s, next, Code::OK);
        next += 2;
    }
    let first_sub = 5;
    let topic = Text::from("one/too/many");
    s.feed(&[Frame::Subscribe { id: next, topic, prefix: false, policy: SlowConsumerPolicy::DropOldest }]);
    assert!(s.take().is_empty());
    ack(&mut s, next, Code::TOO_MANY_SUBSCRIPTIONS);
    assert_eq!(s.conn.subscription_count(), 512);
    assert_eq!(s.conn.stats().subscriptions_refused, 3);
    next += 2;
    // The refused subscription does not exist; nor does one never made.
    for subscription in [next - 2, 999_999] {
        s.feed(&[Frame::Unsubscribe { id: next, subscription }]);
        assert!(s.take().is_empty());
        ack(&mut s, next, Code::UNKNOWN_SUBSCRIPTION);
        next += 2;
    }
    // Every real one goes away again.
    for i in 0..512 {
        s.feed(&[Frame::Unsubscribe { id: next, subscription: first_sub + 2 * i }]);
        assert_eq!(s.take(), [Event::Unsubscribe { id: SubscriptionId(first_sub + 2 * i) }]);
        ack(&mut s, next, Code::OK);
        next += 2;
    }
    assert_zero_state(&s.conn);
    assert_serves(&mut s, next);
}

/// Case 33: publish (or subscribe, or call) where this peer's policy
/// forbids it: E (`ACCESS_DENIED`). The policy is the server
/// application's (the core knows no ACL); the core hands each operation to
/// it undispatched elsewhere and carries the refusal on the same id.
#[test]
fn case33_forbidden_publish_subscribe_and_call_get_access_denied() {
    let mut s = Solo::server(config());
    s.feed(&[Frame::Publish { id: 1, topic: Text::from("admin/reboot"), payload: Bytes::from_static(b"now") }]);
    let evs = s.take();
    let [Event::Publish { ack: Some(pid), .. }] = evs.as_slice() else { panic!("{evs:?}") };
    s.conn.ack_publish(*pid, Err(Code::ACCESS_DENIED)).unwrap();
    s.feed(&[Frame::Subscribe {
        id: 3,
        topic: Text::from("admin/"),
        prefix: true,
        policy: SlowConsumerPolicy::DropOldest,
    }]);
    assert!(matches!(s.take().as_slice(), [Event::Subscribe { id, .. }] if id.0 == 3));
    s.conn.refuse_subscription(SubscriptionId(3), Code::ACCESS_DENIED).unwrap();
    s.feed(&[request(5, "admin.reboot", b"")]);
    assert!(matches!(s.take().as_slice(), [Event::Request(c)] if c.id.0 == 5));
    s.conn.respond_error(RequestId(5), Code::ACCESS_DENIED, "not allowed", Bytes::new()).unwrap();
    s.pump();
    assert_eq!(
        s.sent(),
        [
            Frame::Ack { id: 1, status: Code::ACCESS_DENIED, value: 0 },
            Frame::Ack { id: 3, status: Code::ACCESS_DENIED, value: 0 },
            Frame::Error(ErrorBody {
                id: 5,
                code: Code::ACCESS_DENIED,
                message: Text::from("not allowed"),
                data: Bytes::new()
            }),
        ]
    );
    assert_zero_state(&s.conn);
    assert_serves(&mut s, 7);

    // End to end, the client sees each refusal on its own operation.
    let mut p = Pair::connected();
    let pid = p.client.conn.publish("admin/reboot", Bytes::new(), true).unwrap().unwrap();
    let sid = p.client.conn.subscribe("admin/", SubscribeOptions { prefix: true, ..Default::default() }).unwrap();
    p.drive();
    for e in p.server.take() {
        match e {
            Event::Publish { ack: Some(id), .. } => p.server.conn.ack_publish(id, Err(Code::ACCESS_DENIED)).unwrap(),
            Event::Subscribe { id, .. } => p.server.conn.refuse_subscription(id, Code::ACCESS_DENIED).unwrap(),
            other => panic!("{other:?}"),
        }
    }
    p.drive();
    assert_eq!(
        p.client.take(),
        [
            Event::PublishResult { id: pid, result: Err(AckError::Refused(Code::ACCESS_DENIED)) },
            Event::SubscribeResult { id: sid, result: Err(AckError::Refused(Code::ACCESS_DENIED)) },
        ]
    );
    assert_zero_state(&p.client.conn);
}

// ----------------------------------------------------------------------
// Transport / syscalls, injected through the sans-IO boundary
// ----------------------------------------------------------------------

/// How a [`session`] moves bytes.
#[derive(Clone, Copy)]
enum Transport {
    /// Every write takes everything, every read delivers everything.
    Clean,
    /// Writes accept one byte, every other write makes no progress
    /// (`WouldBlock`, `EINTR`: `advance_transmit(0)`); reads deliver one
    /// byte, every other read delivers nothing (`EINTR`: an empty
    /// `handle_input` / `handle_received(0)`).
    Hostile,
}

/// A scripted session (handshake, three calls, a notification, a ping, a
/// graceful close) over `t`; returns what each side wrote and its events.
fn session(t: Transport, t0: Instant) -> [(Vec<u8>, Vec<Event>); 2] {
    let cfg = Arc::new(config());
    let mut sides = [
        Connection::client(cfg.clone(), Bytes::from_static(b"token"), t0).unwrap(),
        Connection::server(cfg, t0).unwrap(),
    ];
    let mut wrote: [Vec<u8>; 2] = [vec![], vec![]];
    let mut events: [Vec<Event>; 2] = [vec![], vec![]];
    let mut pipes: [Vec<u8>; 2] = [vec![], vec![]]; // pipes[i]: bytes to side i
    let mut tick = 0u64;
    let mut responses = 0;
    for _ in 0..1_000_000 {
        tick += 1;
        let hiccup = matches!(t, Transport::Hostile) && tick.is_multiple_of(2);
        let mut moved = false;
        for i in 0..2 {
            let conn = &mut sides[i];
            let mut slices = [IoSlice::new(&[]); 8];
            let n = conn.transmit_slices(t0, &mut slices);
            let mut buf = Vec::new();
            for s in &slices[..n] {
                buf.extend_from_slice(s);
            }
            let take = match t {
                Transport::Clean => buf.len(),
                Transport::Hostile if hiccup => 0,
                Transport::Hostile => buf.len().min(1),
            };
            conn.advance_transmit(take, t0);
            wrote[i].extend_from_slice(&buf[..take]);
            pipes[1 - i].extend_from_slice(&buf[..take]);
            moved |= take > 0;
        }
        for i in 0..2 {
            let conn = &mut sides[i];
            let take = match t {
                Transport::Clean => pipes[i].len(),
                Transport::Hostile if hiccup => 0,
                Transport::Hostile => pipes[i].len().min(1),
            };
            let data: Vec<u8> = pipes[i].drain(..take).collect();
            if tick % 4 < 2 {
                conn.handle_input(&data, t0);
            } else {
                conn.recv_buffer().extend_from_slice(&data);
                conn.handle_received(data.len(), t0);
            }
            moved |= take > 0;
            while let Some(e) = conn.poll_event() {
                moved = true;
                match (&e, i) {
                    (Event::Connected(_), 0) => {
                        // The PING first: then how reads are cut cannot
                        // change where the server's PONG lands among its
                        // responses, and the output can be compared bytewise.
                        conn.ping(t0).unwrap();
                        for p in [&b"a"[..], b"bb", b"ccc"] {
                            conn.request("echo", Bytes::copy_from_slice(p), CallOptions::new(), t0).unwrap();
                        }
                        conn.notify("log", Bytes::from_static(b"n"), CallOptions::new()).unwrap();
                    }
                    (Event::Response { .. }, 0) => {
                        responses += 1;
                        if responses == 3 {
                            conn.close(Code::OK, "done", None, t0);
                        }
                    }
                    (Event::HandshakeRequest(_), 1) => conn.accept(7).unwrap(),
                    (Event::Request(c), 1) => conn.respond(c.id, c.payload.clone()).unwrap(),
                    _ => {}
                }
                events[i].push(e);
            }
        }
        if !moved && !hiccup && sides.iter().all(Connection::is_closed) {
            break;
        }
    }
    let [w0, w1] = wrote;
    let [e0, e1] = events;
    [(w0, e0), (w1, e1)]
}

/// Case 34: partial writes (1 byte accepted), no progress on every other
/// write or read (`WouldBlock`, `EINTR`), 1-byte reads, alternating input
/// paths: byte-identical output and identical events.
#[test]
fn case34_partial_writes_and_interrupted_io_give_byte_identical_results() {
    let t0 = Instant::now();
    let clean = session(Transport::Clean, t0);
    let hostile = session(Transport::Hostile, t0);
    // The session really ran to its end.
    let [(_, client_events), (_, server_events)] = &clean;
    assert_eq!(client_events.iter().filter(|e| matches!(e, Event::Response { result: Ok(_), .. })).count(), 3);
    assert!(matches!(client_events.last(), Some(Event::Closed(ConnectionError::LocallyClosed { .. }))));
    assert!(matches!(server_events.last(), Some(Event::Closed(ConnectionError::PeerClosed { .. }))));
    assert!(server_events.iter().any(|e| matches!(e, Event::Notification(_))));
    assert!(client_events.iter().any(|e| matches!(e, Event::Pong { .. })));
    assert_eq!(hostile[0].0, clean[0].0, "client bytes");
    assert_eq!(hostile[1].0, clean[1].0, "server bytes");
    assert_eq!(hostile[0].1, clean[0].1, "client events");
    assert_eq!(hostile[1].1, clean[1].1, "server events");
}

/// Case 35: `ECONNRESET` / `EPIPE` in the middle of a frame, in both
/// directions; EOF in the middle of a frame; the peer's half-close while
/// responses are pending: what was already queued is still written, what
/// was not answered fails, and every caller has exactly one outcome.
#[test]
fn case35_reset_mid_frame_and_half_close_with_pending_responses() {
    // A server reset in the middle of a REQUEST, with a PONG queued.
    let mut s = Solo::server(config());
    s.conn.handle_input(&encode(&[Frame::Ping { id: 1 }]), s.now);
    assert!(s.conn.transmit_len() > 0);
    let req = encode(&[request(1, "echo", b"hello")]);
    s.conn.handle_input(&req[..req.len() - 3], s.now);
    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    s.conn.handle_transport_error(&reset, s.now);
    assert_eq!(s.conn.transmit_len(), 0, "nothing can be written any more");
    s.pump();
    assert_eq!(s.take(), [Event::Closed(ConnectionError::transport(&reset))]);
    assert!(s.sent().is_empty());
    assert_zero_state(&s.conn);

    // A client with two calls: one answer whole, the other half, then EPIPE.
    let mut c = Solo::client(config());
    let (a, b) = (client_call(&mut c), client_call(&mut c));
    let answers = encode(&[
        Frame::Response { id: a.0, payload: Bytes::from_static(b"A") },
        Frame::Response { id: b.0, payload: Bytes::from_static(b"B") },
    ]);
    c.feed_raw(&answers[..answers.len() - 1]);
    let pipe = io::Error::from(io::ErrorKind::BrokenPipe);
    c.conn.handle_transport_error(&pipe, c.now);
    c.pump();
    let err = ConnectionError::transport(&pipe);
    assert_eq!(
        c.take(),
        [
            Event::Response { id: a, result: Ok(Bytes::from_static(b"A")) },
            Event::Response { id: b, result: Err(CallError::ConnectionLost(err.clone())) },
            Event::Closed(err),
        ]
    );
    assert_zero_state(&c.conn);

    // EOF in the middle of a response, on the client.
    let mut c = Solo::client(config());
    let a = client_call(&mut c);
    let answer = encode(&[Frame::Response { id: a.0, payload: Bytes::from_static(b"AAAA") }]);
    c.feed_raw(&answer[..HEADER_LEN + 2]);
    c.eof();
    let err = ConnectionError::UnexpectedEof { mid_frame: true };
    assert_eq!(
        c.take(),
        [Event::Response { id: a, result: Err(CallError::ConnectionLost(err.clone())) }, Event::Closed(err)]
    );

    // Half-close: the client shuts down its sending side with two calls
    // pending; the server had answered one (queued, not yet written).
    let mut p = Pair::connected();
    let a = p.client.conn.request("a", Bytes::new(), CallOptions::new(), p.now).unwrap();
    let b = p.client.conn.request("b", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.drive();
    assert_eq!(p.server.take().len(), 2);
    p.server.conn.respond(a, Bytes::from_static(b"A")).unwrap();
    p.server.conn.handle_eof(p.now); // the client's shutdown(WR) arrives
    let eof = ConnectionError::UnexpectedEof { mid_frame: false };
    assert!(p.server.conn.transmit_len() > 0, "the queued response is still to be written");
    assert!(matches!(p.server.conn.respond(b, Bytes::new()), Err(SendError::Closed(_))));
    p.drive(); // the server writes what it had queued, the client reads it
    assert_eq!(
        p.server.take(),
        [Event::CallCancelled { id: b, reason: CancelReason::ConnectionLost(eof.clone()) }, Event::Closed(eof.clone())]
    );
    assert_eq!(p.client.take(), [Event::Response { id: a, result: Ok(Bytes::from_static(b"A")) }]);
    p.server_eof(); // then the server closes the transport
    assert_eq!(
        p.client.take(),
        [Event::Response { id: b, result: Err(CallError::ConnectionLost(eof.clone())) }, Event::Closed(eof)]
    );
    assert_zero_state(&p.client.conn);
    assert_zero_state(&p.server.conn);
}

/// Case 37: a peer that never reads its responses. Commands return
/// `Blocked` at `max_outbound_buffered` (B), reading stops at twice that
/// (B: `wants_read` false, however many PINGs it sends), memory stays
/// bounded, and after `write_stall_timeout` without progress the
/// connection ends (D, `PeerNotReading`) and frees its queue.
#[test]
fn case37_peer_that_never_reads_is_blocked_then_disconnected_with_flat_memory() {
    let limit = 64 * KIB;
    let mut s = Solo::server(config_with(|c| {
        c.max_outbound_buffered = limit;
        c.keepalive_interval = None;
    }));
    let (conn, now) = (&mut s.conn, s.now);
    let big = Bytes::from(vec![0x5a; 16 * KIB]);
    let mut id = 1;
    let blocked = loop {
        conn.handle_input(&encode(&[request(id, "get", b"")]), now);
        assert!(matches!(conn.poll_event(), Some(Event::Request(c)) if c.id.0 == id));
        match conn.respond(RequestId(id), big.clone()) {
            Ok(()) => id += 2,
            Err(e) => break e,
        }
    };
    assert!(matches!(blocked, SendError::Blocked { limit: l, .. } if l == limit), "{blocked:?}");
    assert_eq!(conn.stats().outbound_blocked, 1);
    assert_eq!(conn.calls_being_served(), 1, "the unanswered call is still the application's");
    // The peer keeps sending PINGs; each PONG adds 16 bytes until reading stops.
    let pings = encode(&(0..256).map(|i| Frame::Ping { id: i }).collect::<Vec<_>>());
    let mut fed = 0;
    while conn.wants_read() {
        conn.handle_input(&pings, now);
        fed += 1;
        assert!(fed < 1_000, "reading never paused");
    }
    assert!(conn.transmit_len() >= 2 * limit);
    assert!(conn.transmit_len() <= 2 * limit + pings.len() + 16 * KIB, "queue grew to {}", conn.transmit_len());
    assert_eq!(conn.stats().reads_paused, 1);
    // The driver tries to write; the socket takes nothing.
    let mut slices = [IoSlice::new(&[]); 4];
    assert!(conn.transmit_slices(now, &mut slices) > 0);
    conn.advance_transmit(0, now);
    let queued = conn.transmit_len();
    // Time passes; the driver never gets to write (no `pump` here).
    conn.handle_timeout(now + Duration::from_secs(29));
    assert!(conn.is_established());
    conn.handle_timeout(now + Duration::from_secs(30));
    let err = ConnectionError::PeerNotReading { stalled: Duration::from_secs(30), queued };
    assert_eq!(s.conn.error(), Some(&err));
    assert_eq!(s.conn.transmit_len(), 0, "the queue is freed; no GOODBYE for a peer that does not read");
    assert_eq!(s.conn.stats().write_stalls, 1);
    let evs: Vec<Event> = std::iter::from_fn(|| s.conn.poll_event()).collect();
    assert_eq!(
        evs,
        [
            Event::CallCancelled { id: RequestId(id), reason: CancelReason::ConnectionLost(err.clone()) },
            Event::Closed(err)
        ]
    );
    assert_zero_state(&s.conn);
    assert_other_peer_served();
}
