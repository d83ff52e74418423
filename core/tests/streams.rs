//! Streaming calls end to end: server-stream, client-stream and bidi calls,
//! credit-based flow control, stream protocol violations from a hand-built
//! peer, cancellation, errors, and the stream limit.

mod support;

use std::sync::Arc;
use std::time::Instant;

use support::{Pair, Side};
use wharf_core::wire::{Frame, Hello, MAX_VERSION, MIN_VERSION, PREAMBLE, Request};
use wharf_core::{
    Bytes, BytesMut, CallError, CallKind, CallOptions, CancelReason, Code, Config, Connection, ConnectionError, Event,
    IncomingCall, Metadata, ProtocolError, RequestId, SendError, Text,
};

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out).expect("encodable test frame");
    }
    out.to_vec()
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

/// Feeds hand-built frames straight into one side, as if its peer sent them.
fn inject(side: &mut Side, now: Instant, frames: &[Frame]) {
    side.conn.handle_input(&encode(frames), now);
}

fn opts(kind: CallKind) -> CallOptions {
    CallOptions::new().kind(kind)
}

/// Opens a call of `kind` from the client and returns its id with the
/// server's view of it.
fn open(p: &mut Pair, kind: CallKind) -> (RequestId, IncomingCall) {
    let now = p.now;
    let id = p.client.conn.request("stream", Bytes::from_static(b"open"), opts(kind), now).unwrap();
    p.drive();
    let evs = p.server.take();
    match evs.as_slice() {
        [Event::Request(call)] => {
            assert_eq!(call.id, id);
            assert_eq!(call.kind, kind);
            (id, call.clone())
        }
        other => panic!("expected one Request, got {other:?}"),
    }
}

fn data_of(events: &[Event], id: RequestId) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StreamData { id: i, payload } if *i == id => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

fn closed_with(events: &[Event]) -> Option<ConnectionError> {
    events.iter().find_map(|e| match e {
        Event::Closed(err) => Some(err.clone()),
        _ => None,
    })
}

fn protocol_error(events: &[Event]) -> ProtocolError {
    match closed_with(events) {
        Some(ConnectionError::Protocol(e)) => e,
        other => panic!("expected a protocol error, got {other:?} in {events:?}"),
    }
}

/// `Config::default()` with some fields changed.
fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

fn config_with_window(window: u32) -> Config {
    config_with(|c| c.initial_stream_window = window)
}

fn take_output(conn: &mut Connection, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = conn.poll_transmit(now) {
        out.extend_from_slice(&chunk);
    }
    out
}

/// A server `Connection` whose client is hand-built frames.
struct RawClient {
    server: Connection,
    now: Instant,
}

impl RawClient {
    fn connect(config: Config) -> RawClient {
        let now = Instant::now();
        let mut server = Connection::server(Arc::new(config), now).unwrap();
        let hello = Frame::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            max_frame_size: 1 << 20,
            max_in_flight: 128,
            max_streams: 128,
            initial_stream_window: 1 << 16,
            keepalive_ms: 0,
            client_name: Text::from_static("raw"),
            auth: Bytes::new(),
        });
        let mut input = PREAMBLE.to_vec();
        input.extend(encode(&[hello]));
        server.handle_input(&input, now);
        assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
        server.accept(9).unwrap();
        assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
        let out = take_output(&mut server, now);
        assert_eq!(out[..8], PREAMBLE);
        assert!(matches!(decode_all(&out[8..]).as_slice(), [Frame::Welcome(_)]));
        RawClient { server, now }
    }

    fn send(&mut self, frames: &[Frame]) {
        self.server.handle_input(&encode(frames), self.now);
    }

    fn recv(&mut self) -> Vec<Frame> {
        decode_all(&take_output(&mut self.server, self.now))
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

fn raw_request(id: u64, kind: CallKind) -> Frame {
    Frame::Request(Request {
        id,
        kind,
        method: Text::from_static("m"),
        deadline_ms: None,
        trace_id: None,
        metadata: Metadata::new(),
        payload: Bytes::new(),
    })
}

// ----------------------------------------------------------------------
// The three streaming shapes
// ----------------------------------------------------------------------

#[test]
fn server_stream_delivers_messages_in_order_then_the_response() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::ServerStream);
    assert_eq!(call.payload, Bytes::from_static(b"open"));
    assert_eq!(call.deadline, None, "streaming calls have no default deadline");

    // The caller of a server stream sends nothing.
    assert!(matches!(p.client.conn.stream_send(id, Bytes::from_static(b"x")), Err(SendError::InvalidState(_))));
    assert!(matches!(p.client.conn.stream_finish(id), Err(SendError::InvalidState(_))));

    for i in 0..3u8 {
        p.server.conn.stream_send(call.id, Bytes::from(vec![i; 10])).unwrap();
    }
    p.server.conn.respond(call.id, Bytes::from_static(b"done")).unwrap();
    p.drive();
    let evs = p.client.take();
    let expected: Vec<Event> = (0..3u8)
        .map(|i| Event::StreamData { id, payload: Bytes::from(vec![i; 10]) })
        .chain([Event::Response { id, result: Ok(Bytes::from_static(b"done")) }])
        .collect();
    assert_eq!(evs, expected);
    assert_eq!(p.client.conn.calls_in_flight(), 0);
    assert_eq!(p.server.conn.calls_being_served(), 0);
}

#[test]
fn client_stream_delivers_messages_then_end_then_the_caller_gets_the_response() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::ClientStream);

    // The callee of a client stream sends no DATA.
    assert!(matches!(p.server.conn.stream_send(call.id, Bytes::from_static(b"x")), Err(SendError::InvalidState(_))));

    for i in 0..3u8 {
        p.client.conn.stream_send(id, Bytes::from(vec![i; 5])).unwrap();
    }
    p.client.conn.stream_finish(id).unwrap();
    assert!(matches!(p.client.conn.stream_send(id, Bytes::from_static(b"late")), Err(SendError::InvalidState(_))));
    assert!(matches!(p.client.conn.stream_finish(id), Err(SendError::InvalidState(_))));
    p.drive();
    let evs = p.server.take();
    let expected: Vec<Event> = (0..3u8)
        .map(|i| Event::StreamData { id, payload: Bytes::from(vec![i; 5]) })
        .chain([Event::StreamEnd { id }])
        .collect();
    assert_eq!(evs, expected);

    p.server.conn.respond(call.id, Bytes::from_static(b"3")).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"3")) }]);
    assert_eq!(p.client.conn.calls_in_flight(), 0);
    assert_eq!(p.server.conn.calls_being_served(), 0);
}

#[test]
fn bidi_stream_carries_messages_both_ways_interleaved() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::Bidi);
    for round in 0..5u8 {
        p.client.conn.stream_send(id, Bytes::from(vec![round; 3])).unwrap();
        p.drive();
        let got = data_of(&p.server.take(), call.id);
        assert_eq!(got, vec![Bytes::from(vec![round; 3])]);
        p.server.conn.stream_consumed(call.id, 3);
        p.server.conn.stream_send(call.id, Bytes::from(vec![round + 100; 4])).unwrap();
        p.drive();
        let got = data_of(&p.client.take(), id);
        assert_eq!(got, vec![Bytes::from(vec![round + 100; 4])]);
        p.client.conn.stream_consumed(id, 4);
    }
    p.client.conn.stream_finish(id).unwrap();
    p.drive();
    assert_eq!(p.server.take(), vec![Event::StreamEnd { id }]);
    // After the caller's END the callee may still send until it responds.
    p.server.conn.stream_send(call.id, Bytes::from_static(b"tail")).unwrap();
    p.server.conn.respond(call.id, Bytes::new()).unwrap();
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![
            Event::StreamData { id, payload: Bytes::from_static(b"tail") },
            Event::Response { id, result: Ok(Bytes::new()) }
        ]
    );
}

// ----------------------------------------------------------------------
// Flow control
// ----------------------------------------------------------------------

/// The sender is the client (client stream), the receiver the server with a
/// 1024-byte window: 4 × 256 bytes use it up.
#[test]
fn exhausted_credit_blocks_the_sender_until_the_receiver_reports_consumption() {
    let mut p = Pair::connected_with(Config::default(), config_with_window(1024));
    assert_eq!(p.client.conn.peer_limits().initial_stream_window, 1024);
    let (id, call) = open(&mut p, CallKind::ClientStream);
    let msg = Bytes::from(vec![7u8; 256]);
    for _ in 0..4 {
        p.client.conn.stream_send(id, msg.clone()).unwrap();
    }
    assert_eq!(p.client.conn.stream_send(id, msg.clone()), Err(SendError::StreamBlocked { id: id.0 }));
    p.drive();
    assert_eq!(data_of(&p.server.take(), call.id).len(), 4);

    // Delivery alone returns no credit: still blocked, no StreamWritable.
    p.drive();
    assert!(p.client.take().is_empty());
    assert_eq!(p.client.conn.stream_send(id, msg.clone()), Err(SendError::StreamBlocked { id: id.0 }));

    // Consuming less than half the window is batched: nothing yet.
    p.server.conn.stream_consumed(call.id, 256);
    p.drive();
    assert!(p.client.take().is_empty(), "credit must be batched until half the window is consumed");
    assert_eq!(p.client.conn.stream_send(id, msg.clone()), Err(SendError::StreamBlocked { id: id.0 }));

    // Half the window consumed: a CREDIT of 512 goes out, the sender resumes.
    p.server.conn.stream_consumed(call.id, 256);
    p.drive();
    assert_eq!(p.client.take(), vec![Event::StreamWritable { id }]);
    p.client.conn.stream_send(id, msg.clone()).unwrap();
    p.client.conn.stream_send(id, msg.clone()).unwrap();
    assert_eq!(p.client.conn.stream_send(id, msg.clone()), Err(SendError::StreamBlocked { id: id.0 }));
    p.drive();
    assert_eq!(data_of(&p.server.take(), call.id).len(), 2);
    assert!(p.server.conn.is_established() && p.client.conn.is_established());
}

/// Same as above with the roles swapped: the server sends on a server
/// stream and the client's window is the limit.
#[test]
fn exhausted_credit_blocks_a_server_stream_until_the_client_consumes() {
    let mut p = Pair::connected_with(config_with_window(1000), Config::default());
    let (id, call) = open(&mut p, CallKind::ServerStream);
    let msg = Bytes::from(vec![1u8; 500]);
    p.server.conn.stream_send(call.id, msg.clone()).unwrap();
    p.server.conn.stream_send(call.id, msg.clone()).unwrap();
    assert_eq!(p.server.conn.stream_send(call.id, msg.clone()), Err(SendError::StreamBlocked { id: id.0 }));
    p.drive();
    assert_eq!(data_of(&p.client.take(), id).len(), 2);
    assert!(p.server.take().is_empty());
    p.client.conn.stream_consumed(id, 500);
    p.drive();
    assert_eq!(p.server.take(), vec![Event::StreamWritable { id: call.id }]);
    p.server.conn.stream_send(call.id, msg.clone()).unwrap();
    assert_eq!(p.server.conn.stream_send(call.id, msg), Err(SendError::StreamBlocked { id: id.0 }));
}

/// Randomish message sizes, a receiver that consumes one message per round:
/// what the receiver holds unconsumed never exceeds the window plus one
/// message, every message arrives in order, and the sender was blocked.
#[test]
fn receiver_buffer_never_exceeds_window_plus_one_message() {
    const WINDOW: usize = 4096;
    let sizes = [100usize, 3000, 1, 0, 700, 2500, 4095, 33];
    let max_msg = *sizes.iter().max().unwrap();
    let mut p = Pair::connected_with(Config::default(), config_with_window(WINDOW as u32));
    let (id, call) = open(&mut p, CallKind::ClientStream);

    let total = 300usize;
    let mut next = 0usize;
    let mut blocked_times = 0;
    let mut writable_events = 0;
    let mut received: std::collections::VecDeque<Bytes> = Default::default();
    let mut held = 0usize;
    let mut seen = 0usize;
    let mut rounds = 0;
    while seen < total {
        rounds += 1;
        assert!(rounds < 10_000, "no progress");
        // Sender: as many as credit allows.
        while next < total {
            let len = sizes[next % sizes.len()];
            let mut payload = vec![(next % 251) as u8; len];
            if len >= 2 {
                payload[..2].copy_from_slice(&(next as u16).to_le_bytes());
            }
            match p.client.conn.stream_send(id, Bytes::from(payload)) {
                Ok(()) => next += 1,
                Err(SendError::StreamBlocked { id: b }) => {
                    assert_eq!(b, id.0);
                    blocked_times += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        p.drive();
        writable_events += p.client.take().iter().filter(|e| matches!(e, Event::StreamWritable { .. })).count();
        for d in data_of(&p.server.take(), call.id) {
            held += d.len().max(1);
            received.push_back(d);
        }
        assert!(held <= WINDOW + max_msg, "receiver holds {held} bytes, window {WINDOW} + one message {max_msg}");
        // Receiver: consume one message per round.
        if let Some(d) = received.pop_front() {
            let n = seen;
            let len = sizes[n % sizes.len()];
            assert_eq!(d.len(), len, "message {n} has the wrong size");
            if len >= 2 {
                assert_eq!(u16::from_le_bytes([d[0], d[1]]) as usize, n, "out of order");
            }
            seen += 1;
            held -= d.len().max(1);
            p.server.conn.stream_consumed(call.id, d.len());
        }
    }
    assert!(blocked_times > 0, "the window never filled");
    assert!(writable_events > 0, "the sender was never told it could resume");
    assert!(p.server.conn.is_established());
}

#[test]
fn zero_length_messages_cost_one_credit() {
    let mut p = Pair::connected_with(Config::default(), config_with_window(4));
    let (id, call) = open(&mut p, CallKind::ClientStream);
    for _ in 0..4 {
        p.client.conn.stream_send(id, Bytes::new()).unwrap();
    }
    assert_eq!(p.client.conn.stream_send(id, Bytes::new()), Err(SendError::StreamBlocked { id: id.0 }));
    p.drive();
    let got = data_of(&p.server.take(), call.id);
    assert_eq!(got, vec![Bytes::new(); 4]);
    // Consuming one empty message returns one byte of credit; two reach
    // half the window of 4 and release a CREDIT of 2.
    p.server.conn.stream_consumed(call.id, 0);
    p.drive();
    assert!(p.client.take().is_empty());
    p.server.conn.stream_consumed(call.id, 0);
    p.drive();
    assert_eq!(p.client.take(), vec![Event::StreamWritable { id }]);
    p.client.conn.stream_send(id, Bytes::new()).unwrap();
    p.client.conn.stream_send(id, Bytes::new()).unwrap();
    assert_eq!(p.client.conn.stream_send(id, Bytes::new()), Err(SendError::StreamBlocked { id: id.0 }));

    // The receiver enforces the same cost: a hand-built peer that sends a
    // fifth empty message on a fresh stream without credit is cut off.
    let mut p = Pair::connected_with(Config::default(), config_with_window(4));
    let (id, _call) = open(&mut p, CallKind::ClientStream);
    let now = p.now;
    let empty = |_| Frame::Data { id: id.0, payload: Bytes::new() };
    inject(&mut p.server, now, &(0..4).map(empty).collect::<Vec<_>>());
    assert!(p.server.conn.is_established(), "four empty messages fit a window of 4");
    inject(&mut p.server, now, &[empty(4)]);
    p.drive();
    assert_eq!(protocol_error(&p.server.take()), ProtocolError::CreditExceeded { id: id.0 });
}

// ----------------------------------------------------------------------
// Violations by a hand-built peer
// ----------------------------------------------------------------------

#[test]
fn data_sent_without_credit_is_a_protocol_error() {
    let mut p = Pair::connected_with(Config::default(), config_with_window(1024));
    let (id, call) = open(&mut p, CallKind::ClientStream);
    let now = p.now;
    inject(
        &mut p.server,
        now,
        &[
            Frame::Data { id: id.0, payload: Bytes::from(vec![0; 1000]) },
            Frame::Data { id: id.0, payload: Bytes::from(vec![0; 24]) },
        ],
    );
    assert!(p.server.conn.is_established(), "exactly the window is allowed");
    inject(&mut p.server, now, &[Frame::Data { id: id.0, payload: Bytes::from_static(b"x") }]);
    p.drive();
    let evs = p.server.take();
    assert_eq!(data_of(&evs, call.id).len(), 2);
    assert_eq!(protocol_error(&evs), ProtocolError::CreditExceeded { id: id.0 });
    assert_eq!(p.server.conn.stats().protocol_errors, 1);
    // The offender is told why before the connection ends.
    assert!(
        p.client
            .take()
            .iter()
            .any(|e| matches!(e, Event::GoodbyeReceived { code, .. } if *code == Code::PROTOCOL_ERROR))
    );
}

#[test]
fn data_after_end_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::ClientStream);
    let now = p.now;
    inject(&mut p.server, now, &[Frame::End { id: id.0 }, Frame::Data { id: id.0, payload: Bytes::from_static(b"x") }]);
    p.drive();
    let evs = p.server.take();
    assert!(evs.contains(&Event::StreamEnd { id }), "{evs:?}");
    assert!(matches!(protocol_error(&evs), ProtocolError::Stream { id: i, .. } if i == id.0));
    assert!(data_of(&evs, id).is_empty(), "the DATA after END must not be delivered");
}

#[test]
fn end_sent_twice_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::Bidi);
    let now = p.now;
    inject(&mut p.server, now, &[Frame::End { id: id.0 }, Frame::End { id: id.0 }]);
    p.drive();
    let evs = p.server.take();
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::StreamEnd { .. })).count(), 1);
    assert_eq!(protocol_error(&evs), ProtocolError::Stream { id: id.0, reason: "END sent twice" });
}

#[test]
fn end_from_the_callee_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::Bidi);
    let now = p.now;
    // The server (callee) sends END for the client's call.
    inject(&mut p.client, now, &[Frame::End { id: id.0 }]);
    p.drive();
    let evs = p.client.take();
    assert!(matches!(protocol_error(&evs), ProtocolError::Stream { id: i, .. } if i == id.0));
    // The call got its one outcome.
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::Response { id: i, result: Err(_) } if *i == id)).count(), 1);
}

#[test]
fn end_on_a_server_stream_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::ServerStream);
    let now = p.now;
    inject(&mut p.server, now, &[Frame::End { id: id.0 }]);
    p.drive();
    assert!(matches!(protocol_error(&p.server.take()), ProtocolError::Stream { id: i, .. } if i == id.0));
}

#[test]
fn data_from_the_callee_on_a_client_stream_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::ClientStream);
    let now = p.now;
    inject(&mut p.client, now, &[Frame::Data { id: id.0, payload: Bytes::from_static(b"x") }]);
    p.drive();
    let evs = p.client.take();
    assert!(data_of(&evs, id).is_empty());
    assert!(matches!(protocol_error(&evs), ProtocolError::Stream { id: i, .. } if i == id.0));
}

#[test]
fn data_from_the_caller_on_a_server_stream_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::ServerStream);
    let now = p.now;
    inject(&mut p.server, now, &[Frame::Data { id: id.0, payload: Bytes::from_static(b"x") }]);
    p.drive();
    let evs = p.server.take();
    assert!(data_of(&evs, id).is_empty());
    assert!(matches!(protocol_error(&evs), ProtocolError::Stream { id: i, .. } if i == id.0));
}

#[test]
fn data_on_a_unary_call_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::Unary);
    let now = p.now;
    inject(&mut p.server, now, &[Frame::Data { id: id.0, payload: Bytes::from_static(b"x") }]);
    p.drive();
    assert!(matches!(protocol_error(&p.server.take()), ProtocolError::Stream { .. }));
}

#[test]
fn data_for_a_stream_never_opened_is_a_protocol_error() {
    let mut p = Pair::connected();
    let now = p.now;
    inject(&mut p.server, now, &[Frame::Data { id: 41, payload: Bytes::new() }]);
    p.drive();
    assert!(matches!(protocol_error(&p.server.take()), ProtocolError::BadId { id: 41, .. }));
}

#[test]
fn credit_overflow_is_a_protocol_error() {
    let mut p = Pair::connected();
    let (id, _call) = open(&mut p, CallKind::ClientStream);
    let window = p.client.conn.peer_limits().initial_stream_window;
    let now = p.now;
    // Up to 2^31 - 1 is fine ...
    inject(&mut p.client, now, &[Frame::Credit { id: id.0, increment: i32::MAX as u32 - window }]);
    p.drive();
    assert!(p.client.conn.is_established());
    assert!(p.client.take().is_empty());
    // ... one more byte is not.
    inject(&mut p.client, now, &[Frame::Credit { id: id.0, increment: 1 }]);
    p.drive();
    assert_eq!(protocol_error(&p.client.take()), ProtocolError::CreditOverflow { id: id.0 });
}

#[test]
fn data_and_credit_for_a_finished_stream_are_ignored_and_counted() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::Bidi);
    // The response and the caller's next message cross on the wire.
    p.server.conn.respond(call.id, Bytes::from_static(b"bye")).unwrap();
    p.client.conn.stream_send(id, Bytes::from_static(b"crossing")).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"bye")) }]);
    assert!(p.server.take().is_empty(), "DATA for an answered call must not be delivered");
    assert_eq!(p.server.conn.stats().stale_frames_ignored, 1);

    // Late DATA and CREDIT from the callee reach the caller after the response.
    let now = p.now;
    let before = p.client.conn.stats().stale_frames_ignored;
    inject(
        &mut p.client,
        now,
        &[Frame::Data { id: id.0, payload: Bytes::from_static(b"late") }, Frame::Credit { id: id.0, increment: 10 }],
    );
    p.drive();
    assert!(p.client.take().is_empty());
    assert_eq!(p.client.conn.stats().stale_frames_ignored, before + 2);
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
}

// ----------------------------------------------------------------------
// Ending a stream early
// ----------------------------------------------------------------------

#[test]
fn caller_cancels_a_stream() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::Bidi);
    // A message from the callee is already on its way when the caller cancels.
    p.server.conn.stream_send(call.id, Bytes::from_static(b"in flight")).unwrap();
    p.client.conn.cancel(id).unwrap();
    assert_eq!(p.client.conn.poll_event(), Some(Event::Response { id, result: Err(CallError::Cancelled) }));
    assert_eq!(p.client.conn.stream_send(id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    p.drive();
    assert!(p.client.take().is_empty(), "DATA after the cancel must not be delivered");
    assert_eq!(p.client.conn.stats().stale_frames_ignored, 1);
    assert_eq!(p.server.take(), vec![Event::CallCancelled { id: call.id, reason: CancelReason::Peer }]);
    assert_eq!(p.server.conn.stream_send(call.id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    assert_eq!(p.server.conn.respond(call.id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    assert_eq!(p.server.conn.calls_being_served(), 0);
    assert_eq!(p.client.conn.calls_in_flight(), 0);
}

#[test]
fn caller_stream_reset_is_a_cancel() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::ClientStream);
    p.client.conn.stream_reset(id, Code::CANCELLED, "ignored for a caller").unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Err(CallError::Cancelled) }]);
    assert_eq!(p.server.take(), vec![Event::CallCancelled { id: call.id, reason: CancelReason::Peer }]);
}

#[test]
fn callee_error_ends_the_stream_with_a_remote_error() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::Bidi);
    p.server.conn.stream_send(call.id, Bytes::from_static(b"partial")).unwrap();
    p.server.conn.stream_reset(call.id, Code(1001), "boom").unwrap();
    assert_eq!(p.server.conn.stream_send(call.id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![
            Event::StreamData { id, payload: Bytes::from_static(b"partial") },
            Event::Response {
                id,
                result: Err(CallError::Remote {
                    code: Code(1001),
                    message: Text::from_static("boom"),
                    data: Bytes::new()
                })
            }
        ]
    );
    assert_eq!(p.client.conn.stream_send(id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    assert_eq!(p.client.conn.stream_finish(id), Err(SendError::UnknownCall { id: id.0 }));
}

#[test]
fn the_response_ends_the_call_and_later_stream_sends_fail() {
    let mut p = Pair::connected();
    let (id, call) = open(&mut p, CallKind::Bidi);
    p.server.conn.respond(call.id, Bytes::from_static(b"early")).unwrap();
    assert_eq!(p.server.conn.stream_send(call.id, Bytes::new()), Err(SendError::UnknownCall { id: id.0 }));
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"early")) }]);
    assert_eq!(p.client.conn.stream_send(id, Bytes::from_static(b"x")), Err(SendError::UnknownCall { id: id.0 }));
    assert_eq!(p.client.conn.stream_finish(id), Err(SendError::UnknownCall { id: id.0 }));
    assert_eq!(p.client.conn.cancel(id), Err(SendError::UnknownCall { id: id.0 }));
}

// ----------------------------------------------------------------------
// The stream limit
// ----------------------------------------------------------------------

#[test]
fn max_streams_is_refused_locally_with_too_many_streams() {
    let server = config_with(|c| c.max_streams = 2);
    let mut p = Pair::connected_with(Config::default(), server);
    assert_eq!(p.client.conn.peer_limits().max_streams, 2);
    let (a, a_call) = open(&mut p, CallKind::ServerStream);
    let (_b, _) = open(&mut p, CallKind::Bidi);
    let now = p.now;
    for kind in [CallKind::ServerStream, CallKind::ClientStream, CallKind::Bidi] {
        assert_eq!(
            p.client.conn.request("s", Bytes::new(), opts(kind), now),
            Err(SendError::TooManyStreams { limit: 2 })
        );
    }
    // Unary calls are not streams.
    p.client.conn.request("u", Bytes::new(), CallOptions::new(), now).unwrap();
    // When one stream ends, another may start.
    p.server.conn.respond(a_call.id, Bytes::new()).unwrap();
    p.drive();
    assert!(p.client.take().contains(&Event::Response { id: a, result: Ok(Bytes::new()) }));
    p.server.take();
    let (_c, _) = open(&mut p, CallKind::ClientStream);
}

#[test]
fn max_streams_is_enforced_by_the_receiver_with_too_many_streams() {
    let config = config_with(|c| c.max_streams = 2);
    let mut raw = RawClient::connect(config);
    raw.send(&[
        raw_request(1, CallKind::ServerStream),
        raw_request(3, CallKind::Bidi),
        raw_request(5, CallKind::ClientStream),
    ]);
    let evs = raw.events();
    let ids: Vec<u64> = evs
        .iter()
        .map(|e| match e {
            Event::Request(c) => c.id.0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![1, 3], "the third stream must not be dispatched");
    let frames = raw.recv();
    match frames.as_slice() {
        [Frame::Error(e)] => {
            assert_eq!(e.id, 5);
            assert_eq!(e.code, Code::TOO_MANY_STREAMS);
        }
        other => panic!("expected one ERROR, got {other:?}"),
    }
    assert_eq!(raw.server.stats().streams_refused, 1);
    assert!(raw.server.is_established(), "a refused stream is an error reply, not a disconnect");
    // What the caller sent on the refused stream before hearing so is ignored.
    raw.send(&[Frame::Data { id: 5, payload: Bytes::from_static(b"x") }, Frame::End { id: 5 }]);
    assert!(raw.events().is_empty());
    assert_eq!(raw.server.stats().stale_frames_ignored, 2);
    assert!(raw.server.is_established());

    // A unary call is still served, and a stream is accepted once one ends.
    raw.send(&[raw_request(7, CallKind::Unary)]);
    assert!(matches!(raw.events().as_slice(), [Event::Request(c)] if c.id == RequestId(7)));
    raw.server.respond(RequestId(1), Bytes::new()).unwrap();
    raw.recv();
    raw.send(&[raw_request(9, CallKind::Bidi)]);
    assert!(matches!(raw.events().as_slice(), [Event::Request(c)] if c.id == RequestId(9)));
    assert!(raw.recv().is_empty());
    assert_eq!(raw.server.stats().streams_refused, 1);
}
