//! Transcript tests: the exact sequence of events each side emits (and,
//! where it matters, the frames each side writes) for the handshake and its
//! failures, keepalive, graceful close, EOF and abort.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Pair, config};
use wharf_core::wire::{Frame, FrameType, Goodbye, Hello, NO_HINT, PREAMBLE, Reject, Request, Welcome};
use wharf_core::{
    AckError, Bytes, CallError, CallOptions, CancelReason, Code, Config, Connected, Connection, ConnectionError, Event,
    HandshakeRequest, PeerLimits, RequestId, SendError, SubscribeOptions, Text, Timeout,
};

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

/// Decodes everything a side wrote: the preamble, then whole frames only.
fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    assert!(bytes.len() >= PREAMBLE.len(), "fewer bytes than the preamble: {}", support::hex(bytes));
    assert_eq!(bytes[..PREAMBLE.len()], PREAMBLE, "stream does not start with the preamble");
    let mut buf = Bytes::copy_from_slice(&bytes[PREAMBLE.len()..]);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match Frame::decode_one(&mut buf, u32::MAX) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => panic!("a partial frame trails the stream ({} bytes)", buf.len()),
            Err(e) => panic!("undecodable frame: {e}"),
        }
    }
    out
}

fn types(frames: &[Frame]) -> Vec<FrameType> {
    frames.iter().map(Frame::frame_type).collect()
}

/// Frames written by a side after the first `skip` ones.
fn frames_after(bytes: &[u8], skip: usize) -> Vec<Frame> {
    frames_of(bytes).into_iter().skip(skip).collect()
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend_from_slice(&f.to_bytes().expect("encodable"));
    }
    v
}

/// Drains a lone connection: bytes written, then events.
fn drain(conn: &mut Connection, now: Instant) -> (Vec<u8>, Vec<Event>) {
    let mut out = Vec::new();
    while let Some(chunk) = conn.poll_transmit(now) {
        out.extend_from_slice(&chunk);
    }
    let mut events = Vec::new();
    while let Some(e) = conn.poll_event() {
        events.push(e);
    }
    (out, events)
}

fn hello(min_version: u16, max_version: u16) -> Frame {
    Frame::Hello(Hello {
        min_version,
        max_version,
        max_frame_size: 1 << 20,
        max_in_flight: 8,
        max_streams: 8,
        initial_stream_window: 65536,
        keepalive_ms: 0,
        client_name: Text::from("hand-built"),
        auth: Bytes::new(),
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn count_responses(events: &[Event], id: RequestId) -> usize {
    events.iter().filter(|e| matches!(e, Event::Response { id: i, .. } if *i == id)).count()
}

/// Advances the clock and fires only the client's timers: the server is
/// frozen (it neither reads nor runs its timers), like a hung process.
fn advance_client_only(p: &mut Pair, d: Duration) {
    p.now += d;
    let now = p.now;
    p.client.conn.handle_timeout(now);
    p.drive();
}

// ----------------------------------------------------------------------
// Handshake
// ----------------------------------------------------------------------

#[test]
fn handshake_success_is_handshake_request_then_connected_with_announced_limits() {
    let mut cc = config();
    cc.name = Text::from("client-a");
    cc.max_frame_size = 2 * 1024 * 1024;
    cc.max_in_flight = 17;
    cc.max_streams = 5;
    cc.initial_stream_window = 65536;
    cc.keepalive_interval = Some(Duration::from_secs(2));
    let mut sc = config();
    sc.name = Text::from("server-b");
    sc.max_frame_size = 4 * 1024 * 1024;
    sc.max_in_flight = 33;
    sc.max_streams = 9;
    sc.max_subscriptions = 44;
    sc.initial_stream_window = 131072;
    sc.keepalive_interval = Some(Duration::from_secs(10));
    let auth = Bytes::from_static(b"token");
    let mut p = Pair::with_auth(cc, sc, auth.clone());
    p.auto_accept = None;
    p.drive();

    let client_limits = PeerLimits {
        max_frame_size: 2 * 1024 * 1024,
        max_in_flight: 17,
        max_streams: 5,
        max_subscriptions: 0,
        initial_stream_window: 65536,
    };
    let server_limits = PeerLimits {
        max_frame_size: 4 * 1024 * 1024,
        max_in_flight: 33,
        max_streams: 9,
        max_subscriptions: 44,
        initial_stream_window: 131072,
    };

    // Before accept: the server announces the request; nobody is connected.
    assert_eq!(p.client.take(), vec![]);
    assert_eq!(
        p.server.take(),
        vec![Event::HandshakeRequest(HandshakeRequest {
            version: 1,
            client_name: Text::from("client-a"),
            auth: auth.clone(),
            limits: client_limits,
        })]
    );
    assert!(!p.server.conn.is_established());
    assert!(!p.client.conn.is_established());
    assert!(p.server.wrote.is_empty(), "the server must say nothing before accept/reject");
    assert_eq!(p.client.conn.request("m", Bytes::new(), CallOptions::new(), p.now), Err(SendError::NotConnected));

    assert_eq!(p.server.conn.accept(0), Err(SendError::Invalid { what: "connection id", reason: "must not be 0" }));
    let cid = 0x1234_5678_9abc;
    p.server.conn.accept(cid).unwrap();
    assert!(p.server.conn.accept(cid).is_err(), "a second accept must be refused");
    p.drive();

    // The client asked for a 2 s keepalive, shorter than the server's 10 s: both use 2 s.
    let keepalive = Some(Duration::from_secs(2));
    assert_eq!(
        p.client.take(),
        vec![Event::Connected(Connected {
            connection_id: cid,
            version: 1,
            peer_name: Text::from("server-b"),
            peer_limits: server_limits,
            keepalive,
        })]
    );
    assert_eq!(
        p.server.take(),
        vec![Event::Connected(Connected {
            connection_id: cid,
            version: 1,
            peer_name: Text::from("client-a"),
            peer_limits: client_limits,
            keepalive,
        })]
    );
    assert!(p.client.conn.is_established() && p.server.conn.is_established());

    assert_eq!(
        frames_of(&p.client.wrote),
        vec![Frame::Hello(Hello {
            min_version: 1,
            max_version: 1,
            max_frame_size: 2 * 1024 * 1024,
            max_in_flight: 17,
            max_streams: 5,
            initial_stream_window: 65536,
            keepalive_ms: 2000,
            client_name: Text::from("client-a"),
            auth,
        })]
    );
    assert_eq!(
        frames_of(&p.server.wrote),
        vec![Frame::Welcome(Welcome {
            connection_id: cid,
            version: 1,
            max_frame_size: 4 * 1024 * 1024,
            max_in_flight: 33,
            max_streams: 9,
            max_subscriptions: 44,
            initial_stream_window: 131072,
            keepalive_ms: 2000,
            server_name: Text::from("server-b"),
        })]
    );
}

#[test]
fn server_sees_the_clients_auth_payload_byte_for_byte() {
    // Binary, with NULs, larger than the copy threshold so it travels as its own chunk.
    let auth: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let auth = Bytes::from(auth);
    let mut p = Pair::with_auth(config(), config(), auth.clone());
    p.auto_accept = None;
    p.drive();
    let evs = p.server.take();
    let [Event::HandshakeRequest(h)] = evs.as_slice() else { panic!("{evs:?}") };
    assert_eq!(h.auth, auth);
    let Frame::Hello(sent) = &frames_of(&p.client.wrote)[0] else { panic!("first frame is not HELLO") };
    assert_eq!(sent.auth, auth);
}

#[test]
fn version_mismatch_server_rejects_hand_built_hello_7_to_9() {
    let now = Instant::now();
    let mut server = Connection::server(Arc::new(config()), now).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[hello(7, 9)]));
    server.handle_input(&input, now);
    let (out, events) = drain(&mut server, now);

    let err = ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: 7, peer_max: 9 };
    assert_eq!(events, vec![Event::Closed(err.clone())], "no HandshakeRequest may reach the application");
    let frames = frames_of(&out);
    let [Frame::Reject(r)] = frames.as_slice() else { panic!("{frames:?}") };
    assert_eq!(r.code, Code::VERSION_MISMATCH);
    assert_eq!((r.min_version, r.max_version), (1, 1), "the REJECT lists the versions we speak");
    assert_eq!(r.retry_after_ms, NO_HINT);
    assert!(server.is_closed());
    assert_eq!(server.accept(1), Err(SendError::Closed(err)));

    // A real client receiving that REJECT fails with VersionMismatch naming the server's range.
    let mut client = Connection::client(Arc::new(config()), Bytes::new(), now).unwrap();
    let _ = drain(&mut client, now);
    client.handle_input(&out, now);
    let (cout, cevents) = drain(&mut client, now);
    assert_eq!(
        cevents,
        vec![Event::Closed(ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: 1, peer_max: 1 })]
    );
    assert!(cout.is_empty(), "a rejected client writes nothing more");
}

#[test]
fn version_mismatch_client_receiving_reject() {
    let now = Instant::now();
    let mut client = Connection::client(Arc::new(config()), Bytes::new(), now).unwrap();
    let (hello_bytes, _) = drain(&mut client, now);
    assert_eq!(types(&frames_of(&hello_bytes)), vec![FrameType::Hello]);
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[Frame::Reject(Reject {
        code: Code::VERSION_MISMATCH,
        retry_after_ms: NO_HINT,
        min_version: 3,
        max_version: 5,
        reason: Text::from("we speak 3..=5"),
    })]));
    client.handle_input(&input, now);
    let (out, events) = drain(&mut client, now);
    let err = ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: 3, peer_max: 5 };
    assert_eq!(events, vec![Event::Closed(err.clone())]);
    assert!(out.is_empty());
    assert!(client.is_closed());
    assert_eq!(client.request("m", Bytes::new(), CallOptions::new(), now), Err(SendError::Closed(err)));
}

#[test]
fn auth_rejected_client_gets_rejected_with_code_reason_and_retry_hint() {
    let auth = Bytes::from_static(b"user=alice;sig=bad");
    let mut p = Pair::with_auth(config(), config(), auth.clone());
    p.auto_accept = None;
    p.drive();
    let evs = p.server.take();
    let [Event::HandshakeRequest(h)] = evs.as_slice() else { panic!("{evs:?}") };
    assert_eq!(h.auth, auth, "the server sees the client's auth payload");

    p.server.conn.reject(Code::AUTH_FAILED, "bad signature", Some(ms(1500))).unwrap();
    p.drive();

    assert_eq!(
        p.server.take(),
        vec![Event::Closed(ConnectionError::LocallyClosed {
            code: Code::AUTH_FAILED,
            message: "bad signature".to_string()
        })]
    );
    let rejected = ConnectionError::Rejected {
        code: Code::AUTH_FAILED,
        reason: "bad signature".to_string(),
        retry_after: Some(ms(1500)),
    };
    assert_eq!(p.client.take(), vec![Event::Closed(rejected.clone())]);
    assert_eq!(rejected.reconnect_after(), Some(ms(1500)));
    assert_eq!(
        frames_of(&p.server.wrote),
        vec![Frame::Reject(Reject {
            code: Code::AUTH_FAILED,
            retry_after_ms: 1500,
            min_version: 1,
            max_version: 1,
            reason: Text::from("bad signature"),
        })]
    );
    assert_eq!(types(&frames_of(&p.client.wrote)), vec![FrameType::Hello]);
    assert_eq!(p.client.conn.request("m", Bytes::new(), CallOptions::new(), p.now), Err(SendError::Closed(rejected)));
}

// ----------------------------------------------------------------------
// Handshake timeouts
// ----------------------------------------------------------------------

#[test]
fn handshake_timeout_server_never_accepts() {
    let mut sc = config();
    sc.handshake_timeout = ms(500);
    let mut cc = config();
    cc.handshake_timeout = Duration::from_secs(2);
    let mut p = Pair::new(cc, sc);
    p.auto_accept = None;
    let t0 = p.now;
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::HandshakeRequest(_)]));
    assert_eq!(p.server.conn.poll_timeout(), Some(t0 + ms(500)));

    p.advance(ms(499));
    assert!(!p.server.conn.is_closed());
    assert_eq!(p.server.take(), vec![]);
    assert!(p.server.wrote.is_empty());

    p.advance(ms(1));
    assert_eq!(p.server.take(), vec![Event::Closed(ConnectionError::HandshakeTimeout(ms(500)))]);
    assert_eq!(p.server.conn.stats().handshake_timeouts, 1);
    let frames = frames_of(&p.server.wrote);
    let [Frame::Reject(r)] = frames.as_slice() else { panic!("{frames:?}") };
    assert_eq!(r.code, Code::HANDSHAKE_TIMEOUT);
    assert_eq!(r.retry_after_ms, NO_HINT);
    let reason = r.reason.to_string();
    assert_eq!(
        p.client.take(),
        vec![Event::Closed(ConnectionError::Rejected { code: Code::HANDSHAKE_TIMEOUT, reason, retry_after: None })]
    );
}

#[test]
fn handshake_timeout_client_when_server_never_answers() {
    let mut cc = config();
    cc.handshake_timeout = ms(300);
    let mut p = Pair::new(cc, config());
    p.server.reading = false; // the server never sees the HELLO, so never answers
    let t0 = p.now;
    p.drive();
    assert_eq!(p.client.conn.poll_timeout(), Some(t0 + ms(300)));
    p.advance(ms(299));
    assert!(!p.client.conn.is_closed());
    assert_eq!(p.client.take(), vec![]);
    p.advance(ms(1));
    assert_eq!(p.client.take(), vec![Event::Closed(ConnectionError::HandshakeTimeout(ms(300)))]);
    assert_eq!(p.client.conn.stats().handshake_timeouts, 1);
    assert_eq!(types(&frames_of(&p.client.wrote)), vec![FrameType::Hello], "the client only ever sent HELLO");
    assert_eq!(p.client.conn.poll_timeout(), None);
}

#[test]
fn handshake_timeout_server_that_hears_nothing_says_nothing() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.handshake_timeout = ms(200);
    let mut server = Connection::server(Arc::new(cfg), t0).unwrap();
    assert_eq!(server.poll_timeout(), Some(t0 + ms(200)));
    server.handle_timeout(t0 + ms(199));
    assert!(!server.is_closed());
    server.handle_timeout(t0 + ms(200));
    let (out, events) = drain(&mut server, t0 + ms(200));
    assert_eq!(events, vec![Event::Closed(ConnectionError::HandshakeTimeout(ms(200)))]);
    assert!(out.is_empty(), "nothing is written to a peer that never identified itself");
}

#[test]
fn handshake_timeout_server_with_partial_preamble() {
    let t0 = Instant::now();
    let mut cfg = config();
    cfg.handshake_timeout = ms(200);
    let cfg = Arc::new(cfg);
    let mut server = Connection::server(cfg.clone(), t0).unwrap();
    server.handle_input(&PREAMBLE[..3], t0 + ms(10));
    let (out, events) = drain(&mut server, t0 + ms(10));
    assert!(out.is_empty() && events.is_empty());
    server.handle_timeout(t0 + ms(199));
    assert!(!server.is_closed(), "bytes arriving must not extend or shorten the handshake deadline");
    server.handle_timeout(t0 + ms(200));
    let (out, events) = drain(&mut server, t0 + ms(200));
    assert_eq!(events, vec![Event::Closed(ConnectionError::HandshakeTimeout(ms(200)))]);
    assert!(out.is_empty(), "a peer that never completed the preamble is told nothing");

    // Same partial preamble, then EOF instead of a stall.
    let mut server = Connection::server(cfg.clone(), t0).unwrap();
    server.handle_input(&PREAMBLE[..3], t0);
    server.handle_eof(t0);
    let (out, events) = drain(&mut server, t0);
    assert_eq!(events, vec![Event::Closed(ConnectionError::UnexpectedEof { mid_frame: true })]);
    assert!(out.is_empty());

    // Whole preamble and half a HELLO, then a stall: the server does answer REJECT.
    let mut server = Connection::server(cfg, t0).unwrap();
    let mut input = PREAMBLE.to_vec();
    let h = encode(&[hello(1, 1)]);
    input.extend_from_slice(&h[..h.len() / 2]);
    server.handle_input(&input, t0);
    server.handle_timeout(t0 + ms(200));
    let (out, events) = drain(&mut server, t0 + ms(200));
    assert_eq!(events, vec![Event::Closed(ConnectionError::HandshakeTimeout(ms(200)))]);
    let frames = frames_of(&out);
    assert!(matches!(frames.as_slice(), [Frame::Reject(r)] if r.code == Code::HANDSHAKE_TIMEOUT), "{frames:?}");
}

// ----------------------------------------------------------------------
// Keepalive
// ----------------------------------------------------------------------

fn keepalive_config(interval: Duration) -> Config {
    let mut c = config();
    c.keepalive_interval = Some(interval);
    c
}

#[test]
fn keepalive_pings_after_interval_of_silence_and_pongs_answer() {
    let mut p =
        Pair::connected_with(keepalive_config(Duration::from_secs(1)), keepalive_config(Duration::from_secs(1)));
    let t0 = p.now;
    assert_eq!(p.client.conn.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(p.server.conn.poll_timeout(), Some(t0 + Duration::from_secs(1)));

    // At 0.5 s the client sends something: the server has heard from it since.
    p.advance(ms(500));
    p.client.conn.notify("tick", Bytes::new(), CallOptions::new()).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Notification(_)]));
    let (c0, s0) = (frames_of(&p.client.wrote).len(), frames_of(&p.server.wrote).len());
    assert_eq!(p.server.conn.poll_timeout(), Some(t0 + ms(1500)));

    p.advance(ms(499));
    assert_eq!(frames_of(&p.client.wrote).len(), c0, "no PING before a full interval of silence");
    assert_eq!(frames_of(&p.server.wrote).len(), s0);

    // 1 s: the client has heard nothing for an interval and pings; the server answers.
    p.advance(ms(1));
    assert_eq!(frames_after(&p.client.wrote, c0), vec![Frame::Ping { id: 1 }]);
    assert_eq!(frames_after(&p.server.wrote, s0), vec![Frame::Pong { id: 1 }], "the server had heard the notify");
    assert_eq!(p.client.conn.stats().keepalive_pings, 1);
    assert_eq!(p.server.conn.stats().keepalive_pings, 0);

    // 2 s: each side last heard something at 1 s: both ping, both answer.
    p.advance(ms(1000));
    assert_eq!(
        frames_after(&p.client.wrote, c0),
        vec![Frame::Ping { id: 1 }, Frame::Ping { id: 2 }, Frame::Pong { id: 1 }]
    );
    assert_eq!(
        frames_after(&p.server.wrote, s0),
        vec![Frame::Pong { id: 1 }, Frame::Ping { id: 1 }, Frame::Pong { id: 2 }]
    );

    // Keepalive traffic keeps both sides alive and never surfaces as events.
    p.advance_by_steps(Duration::from_secs(20), ms(100));
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
    assert_eq!(p.client.take(), vec![]);
    assert_eq!(p.server.take(), vec![]);
    assert!(p.client.conn.stats().keepalive_pings >= 10);

    // A user ping is answered and reported.
    let id = p.client.conn.ping(p.now).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Pong { id, rtt: Duration::ZERO }]);
}

#[test]
fn keepalive_timeout_after_three_intervals_when_peer_stops_answering() {
    let mut p =
        Pair::connected_with(keepalive_config(Duration::from_secs(1)), keepalive_config(Duration::from_secs(1)));
    let c0 = frames_of(&p.client.wrote).len();
    let id = p.client.conn.request("slow", Bytes::new(), CallOptions::new().timeout(Timeout::Never), p.now).unwrap();
    // The server freezes: it reads nothing and runs no timers.
    p.server.reading = false;
    p.drive();

    advance_client_only(&mut p, ms(999));
    assert_eq!(types(&frames_after(&p.client.wrote, c0)), vec![FrameType::Request]);
    advance_client_only(&mut p, ms(1));
    assert_eq!(frames_after(&p.client.wrote, c0)[1..], [Frame::Ping { id: 1 }]);
    advance_client_only(&mut p, ms(1999)); // 2.999 s
    assert!(p.client.conn.is_established());
    assert_eq!(p.client.take(), vec![]);
    assert_eq!(frames_after(&p.client.wrote, c0).len(), 2, "one keepalive PING per silence, not one per interval");

    advance_client_only(&mut p, ms(1)); // 3 s
    let err = ConnectionError::KeepaliveTimeout(Duration::from_secs(3));
    assert_eq!(
        p.client.take(),
        vec![Event::Response { id, result: Err(CallError::ConnectionLost(err.clone())) }, Event::Closed(err.clone()),]
    );
    assert_eq!(p.client.conn.stats().keepalive_timeouts, 1);
    assert_eq!(p.client.conn.stats().keepalive_pings, 1);
    assert_eq!(
        frames_after(&p.client.wrote, c0)[2..],
        [Frame::Goodbye(Goodbye {
            code: Code::KEEPALIVE_TIMEOUT,
            reconnect_after_ms: NO_HINT,
            message: Text::from("keepalive timeout")
        })]
    );

    // When the server thaws, it learns why.
    p.server.reading = true;
    p.drive();
    let evs = p.server.take();
    assert!(matches!(evs.first(), Some(Event::Request(_))), "{evs:?}");
    assert!(
        evs.iter().any(|e| matches!(e, Event::GoodbyeReceived { code, .. } if *code == Code::KEEPALIVE_TIMEOUT)),
        "{evs:?}"
    );
}

// ----------------------------------------------------------------------
// Graceful close
// ----------------------------------------------------------------------

#[test]
fn goodbye_with_reconnect_hint_drains_calls_in_both_directions_before_closed() {
    let mut p = Pair::connected();
    let now = p.now;
    let a = p.client.conn.request("c2s", Bytes::from_static(b"a"), CallOptions::new(), now).unwrap();
    let b = p.server.conn.request("s2c", Bytes::from_static(b"b"), CallOptions::new(), now).unwrap();
    p.drive();
    let sev = p.server.take();
    let [Event::Request(call_a)] = sev.as_slice() else { panic!("{sev:?}") };
    assert_eq!(call_a.id, a);
    let cev = p.client.take();
    let [Event::Request(call_b)] = cev.as_slice() else { panic!("{cev:?}") };
    assert_eq!(call_b.id, b);

    // The client starts call C while the server's GOODBYE is on its way.
    let c = p.client.conn.request("c2s", Bytes::from_static(b"c"), CallOptions::new(), now).unwrap();
    let s0 = frames_of(&p.server.wrote).len();
    p.server.conn.close(Code::SHUTTING_DOWN, "restart", Some(ms(2000)), now);
    assert_eq!(
        p.server.conn.request("x", Bytes::new(), CallOptions::new(), now),
        Err(SendError::Closing),
        "the closing side starts nothing new"
    );
    p.drive();

    // C reached the server after its GOODBYE: answered SHUTTING_DOWN, never
    // dispatched. The client answered the GOODBYE with its own.
    assert_eq!(p.server.take(), vec![goodbye_answer()]);
    assert_eq!(p.server.conn.stats().calls_refused_closing, 1);
    let cev = p.client.take();
    assert_eq!(cev.len(), 2, "{cev:?}");
    assert_eq!(
        cev[0],
        Event::GoodbyeReceived {
            code: Code::SHUTTING_DOWN,
            message: Text::from("restart"),
            reconnect_after: Some(ms(2000))
        }
    );
    assert!(
        matches!(&cev[1], Event::Response { id, result: Err(CallError::Remote { code, .. }) }
            if *id == c && *code == Code::SHUTTING_DOWN),
        "{cev:?}"
    );
    let sf = frames_after(&p.server.wrote, s0);
    assert_eq!(types(&sf), vec![FrameType::Goodbye, FrameType::Error]);
    assert_eq!(
        sf[0],
        Frame::Goodbye(Goodbye { code: Code::SHUTTING_DOWN, reconnect_after_ms: 2000, message: Text::from("restart") })
    );

    // The receiver of GOODBYE starts nothing new either.
    assert_eq!(p.client.conn.request("y", Bytes::new(), CallOptions::new(), now), Err(SendError::Closing));
    assert_eq!(p.client.conn.notify("n", Bytes::new(), CallOptions::new()), Err(SendError::Closing));
    assert_eq!(p.client.conn.subscribe("t", SubscribeOptions::default()), Err(SendError::Closing));
    assert!(!p.client.conn.is_closed() && !p.server.conn.is_closed());

    // In-flight calls still complete.
    p.server.conn.respond(a, Bytes::from_static(b"A")).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id: a, result: Ok(Bytes::from_static(b"A")) }]);
    assert!(!p.client.conn.is_closed(), "the client still serves call B");
    assert!(!p.server.conn.is_closed(), "the server still waits for B's response");

    p.client.conn.respond(b, Bytes::from_static(b"B")).unwrap();
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![Event::Closed(ConnectionError::PeerClosed {
            code: Code::SHUTTING_DOWN,
            message: "restart".to_string(),
            reconnect_after: Some(ms(2000)),
        })]
    );
    assert_eq!(
        p.server.take(),
        vec![
            Event::Response { id: b, result: Ok(Bytes::from_static(b"B")) },
            Event::Closed(ConnectionError::LocallyClosed { code: Code::SHUTTING_DOWN, message: "restart".to_string() }),
        ]
    );
    assert_eq!(p.client.conn.poll_timeout(), None);
    assert_eq!(p.server.conn.poll_timeout(), None);
}

#[test]
fn close_times_out_when_the_peer_never_answers() {
    let mut sc = config();
    sc.close_timeout = ms(1000);
    let mut cc = config();
    cc.close_timeout = ms(2000);
    let mut p = Pair::connected_with(cc, sc);
    let now = p.now;
    let b = p.server.conn.request("never", Bytes::new(), CallOptions::new().timeout(Timeout::Never), now).unwrap();
    p.drive();
    assert!(matches!(p.client.take().as_slice(), [Event::Request(_)]));
    p.server.conn.close(Code::OK, "done", None, p.now);
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![Event::GoodbyeReceived { code: Code::OK, message: Text::from("done"), reconnect_after: None }]
    );
    assert_eq!(p.server.take(), vec![goodbye_answer()]);

    p.advance(ms(999));
    assert!(!p.server.conn.is_closed());
    assert_eq!(p.server.take(), vec![]);
    p.advance(ms(1));
    let local = ConnectionError::LocallyClosed { code: Code::OK, message: "done".to_string() };
    assert_eq!(
        p.server.take(),
        vec![Event::Response { id: b, result: Err(CallError::ConnectionLost(local.clone())) }, Event::Closed(local)]
    );
    assert!(!p.client.conn.is_closed(), "the client's own close timeout is longer");

    p.advance(ms(999));
    assert!(!p.client.conn.is_closed());
    p.advance(ms(1));
    let peer = ConnectionError::PeerClosed { code: Code::OK, message: "done".to_string(), reconnect_after: None };
    assert_eq!(
        p.client.take(),
        vec![Event::CallCancelled { id: b, reason: CancelReason::ConnectionLost(peer.clone()) }, Event::Closed(peer)]
    );
}

// ----------------------------------------------------------------------
// EOF and abort
// ----------------------------------------------------------------------

#[test]
fn eof_without_goodbye_fails_every_pending_operation_exactly_once() {
    let mut p = Pair::connected();
    let now = p.now;
    let ids: Vec<RequestId> =
        (0..3).map(|i| p.client.conn.request("m", Bytes::from(vec![i; 4]), CallOptions::new(), now).unwrap()).collect();
    let served = p.server.conn.request("back", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    let sub = p.client.conn.subscribe("news", SubscribeOptions::default()).unwrap();
    p.server.reading = false; // the SUBSCRIBE stays unacknowledged
    p.drive();
    assert!(matches!(p.client.take().as_slice(), [Event::Request(_)]));

    p.server_eof();
    let err = ConnectionError::UnexpectedEof { mid_frame: false };
    let lost = CallError::ConnectionLost(err.clone());
    let evs = p.client.take();
    assert_eq!(
        evs,
        vec![
            Event::Response { id: ids[0], result: Err(lost.clone()) },
            Event::Response { id: ids[1], result: Err(lost.clone()) },
            Event::Response { id: ids[2], result: Err(lost.clone()) },
            Event::CallCancelled { id: served, reason: CancelReason::ConnectionLost(err.clone()) },
            Event::SubscribeResult { id: sub, result: Err(AckError::ConnectionLost(err.clone())) },
            Event::Closed(err.clone()),
        ]
    );
    for id in &ids {
        assert_eq!(count_responses(&evs, *id), 1);
    }

    // Nothing more, ever.
    p.advance(Duration::from_secs(60));
    p.client.conn.handle_eof(p.now);
    p.client.conn.handle_timeout(p.now);
    assert_eq!(p.client.conn.poll_event(), None);
    assert_eq!(p.client.take(), vec![]);
    assert_eq!(p.client.conn.cancel(ids[0]), Err(SendError::Closed(err.clone())));
    assert_eq!(p.client.conn.respond(served, Bytes::new()), Err(SendError::Closed(err)));
    assert_eq!(p.client.conn.calls_in_flight(), 0);
    assert_eq!(p.client.conn.calls_being_served(), 0);
}

#[test]
fn abort_fails_pending_calls_sends_goodbye_and_peer_sees_peer_closed() {
    let mut p = Pair::connected();
    let now = p.now;
    let a = p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::Request(_)]));
    let c0 = frames_of(&p.client.wrote).len();

    p.client.conn.abort(Code(1001), "bye now", p.now);
    let local = ConnectionError::LocallyClosed { code: Code(1001), message: "bye now".to_string() };
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![
            Event::Response { id: a, result: Err(CallError::ConnectionLost(local.clone())) },
            Event::Closed(local.clone())
        ]
    );
    assert_eq!(
        frames_after(&p.client.wrote, c0),
        vec![Frame::Goodbye(Goodbye { code: Code(1001), reconnect_after_ms: NO_HINT, message: Text::from("bye now") })]
    );
    assert_eq!(
        p.client.conn.request("m", Bytes::new(), CallOptions::new(), now),
        Err(SendError::Closed(local.clone()))
    );
    p.client.conn.abort(Code::OK, "again", p.now);
    assert_eq!(p.client.conn.poll_event(), None, "abort twice emits nothing");

    // The server learns of the goodbye, then the byte stream ends.
    assert_eq!(
        p.server.take(),
        vec![Event::GoodbyeReceived { code: Code(1001), message: Text::from("bye now"), reconnect_after: None }]
    );
    p.client_eof();
    let peer = ConnectionError::PeerClosed { code: Code(1001), message: "bye now".to_string(), reconnect_after: None };
    assert_eq!(
        p.server.take(),
        vec![Event::CallCancelled { id: a, reason: CancelReason::ConnectionLost(peer.clone()) }, Event::Closed(peer)]
    );
}

#[test]
fn request_frame_after_goodbye_is_a_protocol_error() {
    // A peer that keeps calling after its own GOODBYE violates the protocol.
    let mut p = Pair::connected();
    let mut bytes = encode(&[Frame::Goodbye(Goodbye {
        code: Code::OK,
        reconnect_after_ms: NO_HINT,
        message: Text::from("leaving"),
    })]);
    bytes.extend(encode(&[Frame::Request(Request {
        id: 1,
        kind: Default::default(),
        method: Text::from("late"),
        deadline_ms: None,
        trace_id: None,
        metadata: Default::default(),
        payload: Bytes::new(),
    })]));
    // Keep the server busy with an unanswered call of its own so the GOODBYE does not close it at once.
    let b = p.server.conn.request("hold", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.drive();
    p.client.reading = false;
    p.c2s.bytes.extend(bytes);
    p.drive();
    let evs = p.server.take();
    assert!(matches!(&evs[0], Event::GoodbyeReceived { .. }), "{evs:?}");
    assert!(
        matches!(evs.last(), Some(Event::Closed(ConnectionError::Protocol(_)))),
        "REQUEST after GOODBYE must close the connection: {evs:?}"
    );
    assert_eq!(count_responses(&evs, b), 1);
}

#[test]
fn keepalive_negotiation_never_goes_below_the_minimum_and_off_on_the_server_means_off() {
    let t0 = Instant::now();
    // A hand-built HELLO asking for 10 ms: the server agrees to 100 ms.
    let mut server = Connection::server(Arc::new(config()), t0).unwrap();
    let mut input = PREAMBLE.to_vec();
    let Frame::Hello(mut h) = hello(1, 1) else { unreachable!() };
    h.keepalive_ms = 10;
    input.extend(encode(&[Frame::Hello(h)]));
    server.handle_input(&input, t0);
    let _ = drain(&mut server, t0);
    server.accept(5).unwrap();
    let (out, events) = drain(&mut server, t0);
    assert!(matches!(events.as_slice(), [Event::Connected(c)] if c.keepalive == Some(ms(100))), "{events:?}");
    assert!(matches!(frames_of(&out).as_slice(), [Frame::Welcome(w)] if w.keepalive_ms == 100));

    // A hand-built WELCOME announcing 5 ms: the client uses 100 ms.
    let mut client = Connection::client(Arc::new(config()), Bytes::new(), t0).unwrap();
    let _ = drain(&mut client, t0);
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[Frame::Welcome(Welcome {
        connection_id: 3,
        version: 1,
        max_frame_size: 1 << 20,
        max_in_flight: 8,
        max_streams: 8,
        max_subscriptions: 8,
        initial_stream_window: 65536,
        keepalive_ms: 5,
        server_name: Text::new(),
    })]));
    client.handle_input(&input, t0);
    let (_, events) = drain(&mut client, t0);
    assert!(matches!(events.as_slice(), [Event::Connected(c)] if c.keepalive == Some(ms(100))), "{events:?}");

    // A server with keepalive off turns it off for both sides: no PING, ever.
    let mut sc = config();
    sc.keepalive_interval = None;
    let mut p = Pair::new(config(), sc);
    p.drive();
    assert!(matches!(p.client.take().as_slice(), [Event::Connected(c)] if c.keepalive.is_none()));
    assert!(matches!(p.server.take().as_slice(), [_, Event::Connected(c)] if c.keepalive.is_none()));
    p.advance_by_steps(Duration::from_secs(120), Duration::from_secs(1));
    assert_eq!(types(&frames_of(&p.client.wrote)), vec![FrameType::Hello]);
    assert_eq!(types(&frames_of(&p.server.wrote)), vec![FrameType::Welcome]);
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
    assert_eq!(p.client.conn.poll_timeout(), None);
}

#[test]
fn crossing_goodbyes_drain_calls_in_both_directions_then_close_both() {
    let mut p = Pair::connected();
    let now = p.now;
    let a = p.client.conn.request("c2s", Bytes::new(), CallOptions::new(), now).unwrap();
    let b = p.server.conn.request("s2c", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    p.client.take();
    p.server.take();
    p.client.conn.close(Code::OK, "client leaving", None, now);
    p.server.conn.close(Code::SHUTTING_DOWN, "server leaving", Some(ms(100)), now);
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![Event::GoodbyeReceived {
            code: Code::SHUTTING_DOWN,
            message: Text::from("server leaving"),
            reconnect_after: Some(ms(100))
        }]
    );
    assert_eq!(
        p.server.take(),
        vec![Event::GoodbyeReceived { code: Code::OK, message: Text::from("client leaving"), reconnect_after: None }]
    );
    p.server.conn.respond(a, Bytes::new()).unwrap();
    p.client.conn.respond(b, Bytes::new()).unwrap();
    p.drive();
    let evs = p.client.take();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0], Event::Response { id: a, result: Ok(Bytes::new()) });
    // Both started closing: each side ends with its own reason.
    assert_eq!(
        evs[1],
        Event::Closed(ConnectionError::LocallyClosed { code: Code::OK, message: "client leaving".to_string() })
    );
    let evs = p.server.take();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0], Event::Response { id: b, result: Ok(Bytes::new()) });
    assert_eq!(
        evs[1],
        Event::Closed(ConnectionError::LocallyClosed {
            code: Code::SHUTTING_DOWN,
            message: "server leaving".to_string()
        })
    );
    // Each side sent exactly one GOODBYE.
    for wrote in [&p.client.wrote, &p.server.wrote] {
        assert_eq!(types(&frames_of(wrote)).iter().filter(|t| **t == FrameType::Goodbye).count(), 1);
    }
}

#[test]
fn goodbye_sender_refuses_a_racing_subscribe_with_shutting_down() {
    let mut p = Pair::connected();
    let now = p.now;
    // Keep the server draining (a call in flight) so it is still there to answer.
    let a = p.client.conn.request("c2s", Bytes::new(), CallOptions::new(), now).unwrap();
    p.drive();
    p.server.take();
    let sub = p.client.conn.subscribe("news", SubscribeOptions::default()).unwrap();
    p.server.conn.close(Code::SHUTTING_DOWN, "restart", None, now);
    p.drive();
    assert_eq!(p.server.take(), vec![goodbye_answer()], "the racing SUBSCRIBE is not dispatched");
    let evs = p.client.take();
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(evs[0], Event::GoodbyeReceived { .. }));
    assert_eq!(evs[1], Event::SubscribeResult { id: sub, result: Err(AckError::Refused(Code::SHUTTING_DOWN)) });
    p.server.conn.respond(a, Bytes::new()).unwrap();
    p.drive();
    let evs = p.client.take();
    assert_eq!(evs[0], Event::Response { id: a, result: Ok(Bytes::new()) });
    assert!(matches!(evs[1], Event::Closed(ConnectionError::PeerClosed { .. })));
}

/// With nothing in flight, the GOODBYE sender still waits for the peer's
/// GOODBYE before ending, so an operation that crossed its GOODBYE is
/// answered SHUTTING_DOWN (not processed, safe to retry) instead of being
/// lost with the connection.
#[test]
fn operations_crossing_goodbye_are_answered_even_with_nothing_else_in_flight() {
    let mut p = Pair::connected();
    let now = p.now;
    let call = p.client.conn.request("work", Bytes::new(), CallOptions::new(), now).unwrap();
    let sub = p.client.conn.subscribe("news", SubscribeOptions::default()).unwrap();
    let publ = p.client.conn.publish("news", Bytes::new(), true).unwrap().unwrap();
    p.server.conn.close(Code::SHUTTING_DOWN, "restart", Some(ms(50)), now);
    assert!(!p.server.conn.is_closed(), "waits for the client's GOODBYE");
    p.drive();
    let evs = p.client.take();
    assert!(matches!(evs[0], Event::GoodbyeReceived { .. }), "{evs:?}");
    assert!(
        evs.contains(&Event::Response {
            id: call,
            result: Err(CallError::Remote {
                code: Code::SHUTTING_DOWN,
                message: Text::from("the server is shutting down; the call was not processed"),
                data: Bytes::new()
            })
        }),
        "{evs:?}"
    );
    assert!(evs.contains(&Event::SubscribeResult { id: sub, result: Err(AckError::Refused(Code::SHUTTING_DOWN)) }));
    assert!(evs.contains(&Event::PublishResult { id: publ, result: Err(AckError::Refused(Code::SHUTTING_DOWN)) }));
    assert_eq!(
        evs.last(),
        Some(&Event::Closed(ConnectionError::PeerClosed {
            code: Code::SHUTTING_DOWN,
            message: "restart".to_string(),
            reconnect_after: Some(ms(50))
        }))
    );
    assert_eq!(
        p.server.take(),
        vec![
            goodbye_answer(),
            Event::Closed(ConnectionError::LocallyClosed { code: Code::SHUTTING_DOWN, message: "restart".to_string() })
        ]
    );
    assert_eq!(p.server.conn.stats().calls_refused_closing, 1);
}

#[test]
fn client_close_during_handshake_ends_at_once_and_writes_nothing_more() {
    let mut p = Pair::new(config(), config());
    p.auto_accept = None;
    p.drive();
    p.client.conn.close(Code::OK, "never mind", None, p.now);
    p.drive();
    assert_eq!(
        p.client.take(),
        vec![Event::Closed(ConnectionError::LocallyClosed { code: Code::OK, message: "never mind".to_string() })]
    );
    assert_eq!(types(&frames_of(&p.client.wrote)), vec![FrameType::Hello]);
}

#[test]
fn keepalive_timeout_on_the_side_that_hears_nothing_tells_the_peer() {
    let mut p =
        Pair::connected_with(keepalive_config(Duration::from_secs(1)), keepalive_config(Duration::from_secs(1)));
    let s0 = frames_of(&p.server.wrote).len();
    // The server stops reading: from its point of view the client went silent.
    p.server.reading = false;
    p.advance(ms(1000));
    assert_eq!(frames_after(&p.server.wrote, s0), vec![Frame::Ping { id: 1 }]);
    p.advance(ms(1999));
    assert!(p.server.conn.is_established());
    assert_eq!(p.client.take(), vec![], "the client hears the server's PINGs and stays up");
    p.advance(ms(1));
    let err = ConnectionError::KeepaliveTimeout(Duration::from_secs(3));
    assert_eq!(p.server.take(), vec![Event::Closed(err)]);
    assert_eq!(p.server.conn.stats().keepalive_timeouts, 1);
    let sent = frames_after(&p.server.wrote, s0);
    assert!(matches!(sent.last(), Some(Frame::Goodbye(g)) if g.code == Code::KEEPALIVE_TIMEOUT), "{sent:?}");
    let message = Text::from("keepalive timeout");
    assert_eq!(
        p.client.take(),
        vec![
            Event::GoodbyeReceived { code: Code::KEEPALIVE_TIMEOUT, message: message.clone(), reconnect_after: None },
            Event::Closed(ConnectionError::PeerClosed {
                code: Code::KEEPALIVE_TIMEOUT,
                message: message.to_string(),
                reconnect_after: None
            }),
        ]
    );
}

#[test]
fn handshake_order_violations_close_silently_before_and_with_goodbye_after() {
    let t0 = Instant::now();
    let ping = encode(&[Frame::Ping { id: 1 }]);
    let is_unexpected = |evs: &[Event], ty: FrameType| matches!(evs, [.., Event::Closed(ConnectionError::Protocol(wharf_core::ProtocolError::UnexpectedFrame { frame, .. }))] if *frame == ty);

    // A frame before HELLO: silent close.
    let mut server = Connection::server(Arc::new(config()), t0).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&ping);
    server.handle_input(&input, t0);
    let (out, events) = drain(&mut server, t0);
    assert!(is_unexpected(&events, FrameType::Ping), "{events:?}");
    assert_eq!(events.len(), 1);
    assert!(out.is_empty(), "nothing is sent before the handshake completes");

    // A frame after HELLO, before WELCOME: silent close, the HandshakeRequest goes nowhere.
    let mut server = Connection::server(Arc::new(config()), t0).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[hello(1, 1)]));
    input.extend_from_slice(&ping);
    server.handle_input(&input, t0);
    let (out, events) = drain(&mut server, t0);
    assert!(matches!(events.first(), Some(Event::HandshakeRequest(_))), "{events:?}");
    assert!(is_unexpected(&events, FrameType::Ping), "{events:?}");
    assert!(out.is_empty());
    assert!(server.accept(1).is_err());

    // The server's first frame is not WELCOME or REJECT: silent close.
    let mut client = Connection::client(Arc::new(config()), Bytes::new(), t0).unwrap();
    let _ = drain(&mut client, t0);
    let mut input = PREAMBLE.to_vec();
    input.extend_from_slice(&ping);
    client.handle_input(&input, t0);
    let (out, events) = drain(&mut client, t0);
    assert!(is_unexpected(&events, FrameType::Ping), "{events:?}");
    assert!(out.is_empty());

    // HELLO after the handshake: GOODBYE PROTOCOL_ERROR.
    let mut p = Pair::connected();
    let s0 = frames_of(&p.server.wrote).len();
    p.c2s.bytes.extend(encode(&[hello(1, 1)]));
    p.drive();
    assert!(is_unexpected(&p.server.take(), FrameType::Hello));
    assert!(
        matches!(frames_after(&p.server.wrote, s0).as_slice(), [Frame::Goodbye(g)] if g.code == Code::PROTOCOL_ERROR)
    );
    assert!(
        matches!(p.client.take().last(), Some(Event::Closed(ConnectionError::PeerClosed { code, .. })) if *code == Code::PROTOCOL_ERROR)
    );
}

#[test]
fn second_goodbye_from_the_same_side_is_a_protocol_error() {
    let mut p = Pair::connected();
    // The server has a call of its own in flight, so the first GOODBYE does not close it.
    p.server.conn.request("hold", Bytes::new(), CallOptions::new(), p.now).unwrap();
    p.client.reading = false;
    p.drive();
    let bye = Frame::Goodbye(Goodbye { code: Code::OK, reconnect_after_ms: NO_HINT, message: Text::from("bye") });
    p.c2s.bytes.extend(encode(std::slice::from_ref(&bye)));
    p.drive();
    assert!(matches!(p.server.take().as_slice(), [Event::GoodbyeReceived { .. }]));
    assert!(!p.server.conn.is_closed());
    p.c2s.bytes.extend(encode(&[bye]));
    p.drive();
    let evs = p.server.take();
    assert!(
        matches!(
            evs.last(),
            Some(Event::Closed(ConnectionError::Protocol(wharf_core::ProtocolError::UnexpectedFrame {
                frame: FrameType::Goodbye,
                ..
            })))
        ),
        "{evs:?}"
    );
}

/// The GOODBYE a peer sends in answer to ours, as our side reports it.
fn goodbye_answer() -> Event {
    Event::GoodbyeReceived { code: Code::OK, message: Text::new(), reconnect_after: None }
}

/// A side that read the peer's GOODBYE and its end of stream in one batch
/// ends with its answering GOODBYE still queued. When writing it then fails
/// (the peer is gone), the queue must be dropped, or a driver that writes
/// until the queue is empty would retry forever.
#[test]
fn a_write_error_after_the_end_drops_what_is_queued() {
    let mut p = Pair::connected();
    let now = p.now;
    p.server.conn.abort(Code::OK, "gone", now);
    // Deliver the server's GOODBYE and its EOF to the client in one go,
    // without letting the client write.
    while let Some(c) = p.server.conn.poll_transmit(now) {
        p.client.conn.handle_input(&c, now);
    }
    p.client.conn.handle_eof(now);
    assert!(p.client.conn.is_closed());
    assert!(p.client.conn.wants_write(), "the answering GOODBYE is queued");
    let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
    p.client.conn.handle_transport_error(&broken, now);
    assert!(!p.client.conn.wants_write(), "a failed write must drop the queue");
    assert_eq!(p.client.conn.transmit_len(), 0);
    assert!(matches!(p.client.conn.error(), Some(ConnectionError::PeerClosed { .. })), "the first ending stays");
}
