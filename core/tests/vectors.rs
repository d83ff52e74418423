//! Checks every test vector in `PROTOCOL.md` against wharf-core.
//!
//! A vector is an HTML comment `<!-- vector: NAME -->` followed at once by a
//! fenced block whose info string is `hex`. Inside the block, `#` starts a
//! comment that runs to the end of the line; what remains is lowercase hex
//! digits and whitespace. Every `hex` block in the file must be a vector,
//! except inside a longer fence (an illustration of the format).
//!
//! Each vector is checked one of three ways:
//! - frame vectors: the bytes are exactly `Frame::to_bytes` of a value in
//!   [`frames`], and `Frame::decode_one` gives that value back;
//! - session vectors: the bytes are exactly what real client and server
//!   [`Connection`]s write at one step of a scripted session ([`session`],
//!   [`version_mismatch`]);
//! - invalid vectors: decoding them, or feeding them to a connection, fails
//!   with the [`ProtocolError`] listed in [`invalid_frames`] or
//!   [`invalid_handshakes`].
//!
//! The test fails if the file lacks a vector named here, holds one not named
//! here, or differs from the code in a single byte.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_core::wire::{
    ErrorBody, Frame, FrameType, Goodbye, HEADER_LEN, Hello, NO_HINT, Notify, PREAMBLE, Reject, Request, Welcome,
};
use wharf_core::{
    Bytes, CallKind, CallOptions, Code, Config, Connection, ConnectionError, Event, Metadata, ProtocolError, PublishId,
    RequestId, SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Text, Timeout,
};

const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");

/// The receive limit frame and invalid vectors are decoded with: the
/// default `max_frame_size` (16 MiB).
const LIMIT: u32 = 16 * 1024 * 1024;

/// The trace id used by the vectors.
const TRACE: [u8; 16] =
    [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c];

// ---------------------------------------------------------------------------
// Reading PROTOCOL.md
// ---------------------------------------------------------------------------

fn load() -> BTreeMap<String, Vec<u8>> {
    let text = std::fs::read_to_string(PROTOCOL_MD).unwrap_or_else(|e| panic!("cannot read {PROTOCOL_MD}: {e}"));
    parse_vectors(&text).unwrap_or_else(|e| panic!("PROTOCOL.md: {e}"))
}

/// Extracts the vectors of a PROTOCOL.md text, or says what is wrong with it.
fn parse_vectors(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut vectors = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let at = i + 1;
        let fence = line.len() - line.trim_start_matches('`').len();
        if fence >= 3 {
            // A fenced block that is not a vector (an example in prose) is
            // skipped whole; a hex block must always be a vector.
            if line[fence..].trim() == "hex" {
                return Err(format!("line {at}: a hex block that is not preceded by a vector marker"));
            }
            i += 1;
            while i < lines.len() {
                let l = lines[i].trim();
                i += 1;
                if l.len() >= fence && l.bytes().all(|c| c == b'`') {
                    break;
                }
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("<!-- vector:") else {
            i += 1;
            continue;
        };
        let name = rest.strip_suffix("-->").ok_or(format!("line {at}: a vector marker must end with -->"))?.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("line {at}: bad vector name {name:?}"));
        }
        if lines.get(i + 1).map(|l| l.trim()) != Some("```hex") {
            return Err(format!("line {at}: vector {name} must be followed at once by a ```hex block"));
        }
        let mut j = i + 2;
        let mut digits = String::new();
        loop {
            let l = *lines.get(j).ok_or(format!("vector {name}: unterminated hex block"))?;
            if l.trim() == "```" {
                break;
            }
            for c in l.split('#').next().unwrap_or_default().chars().filter(|c| !c.is_whitespace()) {
                if !(c.is_ascii_digit() || ('a'..='f').contains(&c)) {
                    return Err(format!("line {}: vector {name}: {c:?} is not a lowercase hex digit", j + 1));
                }
                digits.push(c);
            }
            j += 1;
        }
        if !digits.len().is_multiple_of(2) {
            return Err(format!("vector {name}: odd number of hex digits"));
        }
        let bytes = (0..digits.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&digits[k..k + 2], 16).expect("checked hex digits"))
            .collect();
        if vectors.insert(name.to_string(), bytes).is_some() {
            return Err(format!("vector {name} appears twice"));
        }
        i = j + 1;
    }
    Ok(vectors)
}

fn get<'a>(vectors: &'a BTreeMap<String, Vec<u8>>, name: &str) -> &'a [u8] {
    vectors.get(name).unwrap_or_else(|| panic!("PROTOCOL.md has no vector {name}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[track_caller]
fn assert_bytes(name: &str, got: &[u8], want: &[u8]) {
    assert!(got == want, "vector {name} differs from the code\n  file: {}\n  code: {}", hex(want), hex(got));
}

// ---------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------

fn text(s: &'static str) -> Text {
    Text::from_static(s)
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// Valid frames: each vector is exactly the encoding of its frame.
fn frames() -> Vec<(&'static str, Frame)> {
    let mut md2 = Metadata::new();
    md2.insert("authorization", b(b"Bearer t0k3n")).insert("lang", b(b"en"));
    let mut md1 = Metadata::new();
    md1.insert("level", b(b"warn"));
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                min_version: 1,
                max_version: 1,
                max_frame_size: 1024 * 1024,
                max_in_flight: 16,
                max_streams: 8,
                initial_stream_window: 65536,
                keepalive_ms: 0,
                client_name: text("cli"),
                auth: Bytes::new(),
            }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                connection_id: 7,
                version: 1,
                max_frame_size: 16 * 1024 * 1024,
                max_in_flight: 128,
                max_streams: 128,
                max_subscriptions: 512,
                initial_stream_window: 256 * 1024,
                keepalive_ms: 10_000,
                server_name: text("srv"),
            }),
        ),
        (
            "reject",
            Frame::Reject(Reject {
                code: Code::AUTH_FAILED,
                retry_after_ms: 1000,
                min_version: 1,
                max_version: 1,
                reason: text("bad token"),
            }),
        ),
        (
            "request-unary",
            Frame::Request(Request {
                id: 1,
                kind: CallKind::Unary,
                method: text("echo"),
                deadline_ms: None,
                trace_id: None,
                metadata: Metadata::new(),
                payload: b(b"hi"),
            }),
        ),
        (
            "request-server-stream",
            Frame::Request(Request {
                id: 3,
                kind: CallKind::ServerStream,
                method: text("count"),
                deadline_ms: None,
                trace_id: None,
                metadata: Metadata::new(),
                payload: b(b"3"),
            }),
        ),
        (
            "request-all-options",
            Frame::Request(Request {
                id: 5,
                kind: CallKind::Bidi,
                method: text("chat.open"),
                deadline_ms: Some(5000),
                trace_id: Some(TRACE),
                metadata: md2,
                payload: b(b"hi"),
            }),
        ),
        ("response", Frame::Response { id: 1, payload: b(b"hi") }),
        ("response-empty", Frame::Response { id: 3, payload: Bytes::new() }),
        (
            "error",
            Frame::Error(ErrorBody {
                id: 1,
                code: Code::UNKNOWN_METHOD,
                message: text("no such method"),
                data: Bytes::new(),
            }),
        ),
        (
            "error-with-data",
            Frame::Error(ErrorBody { id: 5, code: Code(1001), message: text("quota exceeded"), data: b(b"retry=60") }),
        ),
        (
            "notify",
            Frame::Notify(Notify { method: text("log"), trace_id: None, metadata: Metadata::new(), payload: b(b"up") }),
        ),
        (
            "notify-metadata-trace",
            Frame::Notify(Notify {
                method: text("log"),
                trace_id: Some(TRACE),
                metadata: md1,
                payload: b(b"disk 91%"),
            }),
        ),
        ("cancel", Frame::Cancel { id: 5 }),
        ("data", Frame::Data { id: 5, payload: b(b"chunk") }),
        ("data-empty", Frame::Data { id: 5, payload: Bytes::new() }),
        ("end", Frame::End { id: 5 }),
        ("credit", Frame::Credit { id: 5, increment: 131_072 }),
        (
            "subscribe-exact",
            Frame::Subscribe {
                id: 7,
                topic: text("news/today"),
                prefix: false,
                policy: SlowConsumerPolicy::DropOldest,
            },
        ),
        (
            "subscribe-prefix-disconnect",
            Frame::Subscribe { id: 9, topic: text("sensors/"), prefix: true, policy: SlowConsumerPolicy::Disconnect },
        ),
        (
            "subscribe-everything",
            Frame::Subscribe { id: 11, topic: Text::new(), prefix: true, policy: SlowConsumerPolicy::DropOldest },
        ),
        ("unsubscribe", Frame::Unsubscribe { id: 13, subscription: 9 }),
        ("publish", Frame::Publish { id: 0, topic: text("news/today"), payload: b(b"sunny") }),
        ("publish-with-ack", Frame::Publish { id: 15, topic: text("sensors/t1"), payload: b(b"21.5") }),
        ("message", Frame::Message { subscription: 9, topic: text("sensors/t1"), payload: b(b"21.5") }),
        (
            "messages",
            Frame::Messages {
                subscription: 9,
                topic: text("sensors/t1"),
                batch: wharf_core::wire::MessageBatch::from_payloads([&b"21.5"[..], b"", b"22"]).expect("a batch"),
            },
        ),
        ("lagged", Frame::Lagged { subscription: 9, dropped: 42 }),
        ("ack-subscribe", Frame::Ack { id: 7, status: Code::OK, value: 0 }),
        ("ack-publish", Frame::Ack { id: 15, status: Code::OK, value: 2 }),
        ("ack-refused", Frame::Ack { id: 11, status: Code::TOO_MANY_SUBSCRIPTIONS, value: 0 }),
        ("ping", Frame::Ping { id: 1 }),
        ("pong", Frame::Pong { id: 1 }),
        (
            "goodbye",
            Frame::Goodbye(Goodbye { code: Code::SHUTTING_DOWN, reconnect_after_ms: 500, message: text("restart") }),
        ),
        (
            "goodbye-no-hint",
            Frame::Goodbye(Goodbye { code: Code::OK, reconnect_after_ms: NO_HINT, message: Text::new() }),
        ),
    ]
}

const BAD_ID: &str = "id not allowed for this frame type";

/// Invalid frames: decoding fails with this error (receive limit [`LIMIT`]).
fn invalid_frames() -> Vec<(&'static str, ProtocolError)> {
    use FrameType::*;
    vec![
        ("invalid-unknown-type", ProtocolError::UnknownFrameType { ty: 0x60 }),
        ("invalid-reserved-bits", ProtocolError::ReservedBits { frame: Ping, value: 1 }),
        ("invalid-undefined-flag", ProtocolError::UnknownFlags { frame: Request, flags: 0x20 }),
        ("invalid-flag-on-response", ProtocolError::UnknownFlags { frame: Response, flags: 0x01 }),
        ("invalid-length-over-limit", ProtocolError::FrameTooLarge { frame: Data, len: LIMIT + 1, limit: LIMIT }),
        ("invalid-cancel-with-body", ProtocolError::BadLength { frame: Cancel, len: 4, min: 0, max: 0 }),
        ("invalid-error-too-short", ProtocolError::BadLength { frame: Error, len: 5, min: 6, max: u32::MAX }),
        ("invalid-request-id-zero", ProtocolError::BadId { frame: Request, id: 0, reason: BAD_ID }),
        ("invalid-goodbye-id-nonzero", ProtocolError::BadId { frame: Goodbye, id: 1, reason: BAD_ID }),
        ("invalid-publish-ack-without-id", ProtocolError::BadId { frame: Publish, id: 0, reason: BAD_ID }),
        (
            "invalid-welcome-trailing-byte",
            ProtocolError::Malformed { frame: Welcome, reason: "trailing bytes after the last field" },
        ),
        (
            "invalid-string-past-end",
            ProtocolError::Malformed { frame: Goodbye, reason: "a field runs past the end of the frame" },
        ),
        (
            "invalid-method-not-utf8",
            ProtocolError::InvalidString { frame: Request, field: "method", reason: "not valid UTF-8" },
        ),
        (
            "invalid-topic-with-nul",
            ProtocolError::InvalidString { frame: Subscribe, field: "topic", reason: "contains NUL" },
        ),
        (
            "invalid-metadata-zero-entries",
            ProtocolError::Malformed { frame: Notify, reason: "metadata flag set with 0 entries" },
        ),
        (
            "invalid-metadata-empty-key",
            ProtocolError::InvalidString { frame: Request, field: "metadata key", reason: "empty" },
        ),
        ("invalid-credit-zero", ProtocolError::Malformed { frame: Credit, reason: "credit increment is 0" }),
        ("invalid-unsubscribe-zero", ProtocolError::Malformed { frame: Unsubscribe, reason: "subscription id is 0" }),
        ("invalid-messages-no-item", ProtocolError::Malformed { frame: Messages, reason: "no message" }),
        (
            "invalid-messages-length-cut-short",
            ProtocolError::Malformed { frame: Messages, reason: "a message length runs past the end of the frame" },
        ),
        (
            "invalid-messages-item-past-end",
            ProtocolError::Malformed { frame: Messages, reason: "a message runs past the end of the frame" },
        ),
    ]
}

/// Invalid handshakes: these bytes, sent to a fresh server, end it with this
/// error and make it write nothing at all.
fn invalid_handshakes() -> Vec<(&'static str, ProtocolError)> {
    vec![
        ("invalid-bad-preamble", ProtocolError::BadPreamble { offset: 6, found: 0x0a, expected: 0x0d }),
        ("invalid-http-instead-of-preamble", ProtocolError::BadPreamble { offset: 0, found: b'G', expected: b'W' }),
        (
            "invalid-frame-before-hello",
            ProtocolError::UnexpectedFrame { frame: FrameType::Ping, reason: "the first frame must be HELLO" },
        ),
        (
            "invalid-hello-frame-limit-too-small",
            ProtocolError::Malformed { frame: FrameType::Hello, reason: "max_frame_size below 1024" },
        ),
    ]
}

/// Vectors checked by driving connections: [`session`] and [`version_mismatch`].
const SESSION: &[&str] = &[
    "handshake-client",
    "handshake-server",
    "session-request",
    "session-response",
    "session-notify",
    "session-subscribe",
    "session-subscribe-ack-message",
    "session-publish",
    "session-publish-ack-message",
    "session-stream-request",
    "session-stream-data-response",
    "session-server-request",
    "session-client-error",
    "session-ping",
    "session-pong",
    "session-unsubscribe",
    "session-unsubscribe-ack",
    "session-goodbye",
    "session-goodbye-answer",
];

const VERSION_MISMATCH: &[&str] = &["version-mismatch-hello", "version-mismatch-reject"];

// ---------------------------------------------------------------------------
// Driving real connections
// ---------------------------------------------------------------------------

fn take_output(conn: &mut Connection, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = conn.poll_transmit(now) {
        out.extend_from_slice(&chunk);
    }
    out
}

fn take_events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn named(name: &'static str) -> Arc<Config> {
    Arc::new(Config { name: Text::from_static(name), ..Config::default() })
}

/// Runs the worked example of PROTOCOL.md between a real client and server
/// (default configurations apart from their names) and returns what was
/// written at each step, named after its vector. Each step's bytes are
/// delivered to the other side, and the events they cause are checked, so
/// the example's narrative is checked too.
fn session() -> Vec<(&'static str, Vec<u8>)> {
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut c = Connection::client(named("demo-client"), b(b"token"), t0).unwrap();
    let mut s = Connection::server(named("demo-server"), t0).unwrap();

    // Moves what `from` wrote to `to` and records it as step `name`.
    let mut step = |name: &'static str, from: &mut Connection, to: &mut Connection, now: Instant| {
        let bytes = take_output(from, now);
        assert!(!bytes.is_empty(), "step {name} wrote nothing");
        to.handle_input(&bytes, now);
        steps.push((name, bytes));
    };

    // Handshake.
    step("handshake-client", &mut c, &mut s, t0);
    let ev = take_events(&mut s);
    let [Event::HandshakeRequest(hello)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!((hello.version, hello.client_name.as_str(), &hello.auth[..]), (1, "demo-client", &b"token"[..]));
    s.accept(7).unwrap();
    step("handshake-server", &mut s, &mut c, t0);
    let ev = take_events(&mut c);
    let [Event::Connected(conn)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!((conn.connection_id, conn.peer_name.as_str()), (7, "demo-server"));
    assert_eq!(conn.keepalive, Some(Duration::from_secs(10)));
    assert!(matches!(take_events(&mut s).as_slice(), [Event::Connected(_)]));

    // A unary call with the default 25 s deadline.
    let t = t0 + Duration::from_millis(1);
    let call = c.request("echo", b(b"hello"), CallOptions::new(), t).unwrap();
    assert_eq!(call, RequestId(1));
    step("session-request", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    let [Event::Request(req)] = ev.as_slice() else { panic!("{ev:?}") };
    assert_eq!((req.id, req.method.as_str(), req.deadline), (call, "echo", Some(t + Duration::from_secs(25))));
    s.respond(req.id, req.payload.clone()).unwrap();
    step("session-response", &mut s, &mut c, t);
    assert_eq!(take_events(&mut c), vec![Event::Response { id: call, result: Ok(b(b"hello")) }]);

    // A notification.
    c.notify("log", b(b"client ready"), CallOptions::new()).unwrap();
    step("session-notify", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Notification(n)] if n.method == "log"), "{ev:?}");

    // A prefix subscription, confirmed, and a first message.
    let sub = c.subscribe("news/", SubscribeOptions { prefix: true, policy: SlowConsumerPolicy::DropOldest }).unwrap();
    assert_eq!(sub, SubscriptionId(3));
    step("session-subscribe", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Subscribe { id, prefix: true, .. }] if *id == sub), "{ev:?}");
    s.accept_subscription(sub).unwrap();
    s.deliver(sub, &text("news/today"), b(b"sunny")).unwrap();
    step("session-subscribe-ack-message", &mut s, &mut c, t);
    assert_eq!(
        take_events(&mut c),
        vec![
            Event::SubscribeResult { id: sub, result: Ok(()) },
            Event::Message { subscription: sub, topic: text("news/today"), payload: b(b"sunny") },
        ]
    );

    // An acknowledged publish that reaches the publisher's own subscription.
    let publish = c.publish("news/today", b(b"rain"), true).unwrap();
    assert_eq!(publish, Some(PublishId(5)));
    step("session-publish", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Publish { ack: Some(PublishId(5)), .. }]), "{ev:?}");
    s.ack_publish(PublishId(5), Ok(1)).unwrap();
    s.deliver(sub, &text("news/today"), b(b"rain")).unwrap();
    step("session-publish-ack-message", &mut s, &mut c, t);
    assert_eq!(
        take_events(&mut c),
        vec![
            Event::PublishResult { id: PublishId(5), result: Ok(1) },
            Event::Message { subscription: sub, topic: text("news/today"), payload: b(b"rain") },
        ]
    );

    // A server-streaming call (no deadline by default).
    let stream = c.request("count", b(b"2"), CallOptions::new().kind(CallKind::ServerStream), t).unwrap();
    assert_eq!(stream, RequestId(7));
    step("session-stream-request", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Request(r)] if r.kind == CallKind::ServerStream && r.deadline.is_none()));
    s.stream_send(stream, b(b"1")).unwrap();
    s.stream_send(stream, b(b"2")).unwrap();
    s.respond(stream, b(b"done")).unwrap();
    step("session-stream-data-response", &mut s, &mut c, t);
    assert_eq!(
        take_events(&mut c),
        vec![
            Event::StreamData { id: stream, payload: b(b"1") },
            Event::StreamData { id: stream, payload: b(b"2") },
            Event::Response { id: stream, result: Ok(b(b"done")) },
        ]
    );

    // The server calls the client; the client answers with an application error.
    let back =
        s.request("confirm", b(b"delete?"), CallOptions::new().timeout(Timeout::After(Duration::from_secs(5))), t);
    let back = back.unwrap();
    assert_eq!(back, RequestId(2));
    step("session-server-request", &mut s, &mut c, t);
    let ev = take_events(&mut c);
    assert!(matches!(ev.as_slice(), [Event::Request(r)] if r.id == back && r.method == "confirm"), "{ev:?}");
    c.respond_error(back, Code(1000), "declined by user", Bytes::new()).unwrap();
    step("session-client-error", &mut c, &mut s, t);
    let ev = take_events(&mut s);
    assert!(
        matches!(ev.as_slice(), [Event::Response { id, result: Err(e) }] if *id == back && e.code() == Code(1000)),
        "{ev:?}"
    );

    // Ping and pong.
    let ping = c.ping(t).unwrap();
    assert_eq!(ping, 1);
    step("session-ping", &mut c, &mut s, t);
    assert!(take_events(&mut s).is_empty());
    let t2 = t + Duration::from_millis(2);
    step("session-pong", &mut s, &mut c, t2);
    assert!(matches!(take_events(&mut c).as_slice(), [Event::Pong { id: 1, .. }]));

    // Unsubscribe.
    c.unsubscribe(sub).unwrap();
    step("session-unsubscribe", &mut c, &mut s, t2);
    assert_eq!(take_events(&mut s), vec![Event::Unsubscribe { id: sub }]);
    step("session-unsubscribe-ack", &mut s, &mut c, t2);
    assert_eq!(take_events(&mut c), vec![Event::UnsubscribeResult { id: sub, result: Ok(()) }]);

    // The server says goodbye; the client answers with its own GOODBYE and,
    // with nothing in flight, both ends close.
    s.close(Code::SHUTTING_DOWN, "restart", Some(Duration::from_millis(500)), t2);
    assert!(!s.is_closed(), "the server waits for the client's answer");
    step("session-goodbye", &mut s, &mut c, t2);
    let hint = Some(Duration::from_millis(500));
    assert_eq!(
        take_events(&mut c),
        vec![
            Event::GoodbyeReceived { code: Code::SHUTTING_DOWN, message: text("restart"), reconnect_after: hint },
            Event::Closed(ConnectionError::PeerClosed {
                code: Code::SHUTTING_DOWN,
                message: "restart".into(),
                reconnect_after: hint
            }),
        ]
    );
    step("session-goodbye-answer", &mut c, &mut s, t2);
    assert_eq!(
        take_events(&mut s),
        vec![
            Event::GoodbyeReceived { code: Code::OK, message: Text::new(), reconnect_after: None },
            Event::Closed(ConnectionError::LocallyClosed { code: Code::SHUTTING_DOWN, message: "restart".into() }),
        ]
    );
    assert!(take_output(&mut s, t2).is_empty(), "nothing follows the exchange of GOODBYEs");
    steps
}

/// A client offering only versions 2..=3 meets this server (version 1 only).
fn version_mismatch(vectors: &BTreeMap<String, Vec<u8>>) {
    let now = Instant::now();
    let hello = get(vectors, "version-mismatch-hello");
    assert_bytes("version-mismatch-hello", &hello[..PREAMBLE.len()], &PREAMBLE);
    let mut frame = Bytes::copy_from_slice(&hello[PREAMBLE.len()..]);
    let decoded = Frame::decode_one(&mut frame, LIMIT).unwrap();
    let expected = Frame::Hello(Hello {
        min_version: 2,
        max_version: 3,
        max_frame_size: 1024 * 1024,
        max_in_flight: 16,
        max_streams: 8,
        initial_stream_window: 65536,
        keepalive_ms: 0,
        client_name: text("future"),
        auth: Bytes::new(),
    });
    assert_eq!(decoded, Some(expected));
    assert!(frame.is_empty());

    let mut s = Connection::server(Arc::new(Config::default()), now).unwrap();
    s.handle_input(hello, now);
    assert_bytes("version-mismatch-reject", &take_output(&mut s, now), get(vectors, "version-mismatch-reject"));
    assert!(matches!(s.error(), Some(ConnectionError::VersionMismatch { peer_min: 2, peer_max: 3, .. })));

    // The client's view of the same REJECT.
    let mut c = Connection::client(Arc::new(Config::default()), Bytes::new(), now).unwrap();
    take_output(&mut c, now);
    c.handle_input(get(vectors, "version-mismatch-reject"), now);
    assert_eq!(c.error(), Some(&ConnectionError::VersionMismatch { our_min: 1, our_max: 1, peer_min: 1, peer_max: 1 }));
}

/// A client and server that completed the handshake (default configs).
fn established() -> (Connection, Connection, Instant) {
    let now = Instant::now();
    let mut c = Connection::client(Arc::new(Config::default()), Bytes::new(), now).unwrap();
    let mut s = Connection::server(Arc::new(Config::default()), now).unwrap();
    s.handle_input(&take_output(&mut c, now), now);
    take_events(&mut s);
    s.accept(1).unwrap();
    c.handle_input(&take_output(&mut s, now), now);
    take_events(&mut c);
    take_events(&mut s);
    assert!(c.is_established() && s.is_established());
    (c, s, now)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn the_file_holds_exactly_the_known_vectors() {
    let vectors = load();
    let mut known = BTreeSet::new();
    let names = frames()
        .into_iter()
        .map(|(n, _)| n)
        .chain(invalid_frames().into_iter().map(|(n, _)| n))
        .chain(invalid_handshakes().into_iter().map(|(n, _)| n))
        .chain(SESSION.iter().copied())
        .chain(VERSION_MISMATCH.iter().copied());
    for name in names {
        assert!(known.insert(name), "the test names vector {name} twice");
    }
    let in_file: BTreeSet<&str> = vectors.keys().map(String::as_str).collect();
    let missing: Vec<_> = known.difference(&in_file).collect();
    let unknown: Vec<_> = in_file.difference(&known).collect();
    assert!(missing.is_empty(), "vectors missing from PROTOCOL.md: {missing:?}");
    assert!(unknown.is_empty(), "vectors in PROTOCOL.md that this test does not know: {unknown:?}");
}

#[test]
fn every_frame_type_has_a_valid_vector() {
    let types: BTreeSet<u8> = frames().iter().map(|(_, f)| f.frame_type() as u8).collect();
    for ty in 0..=u8::MAX {
        if FrameType::from_u8(ty).is_some() {
            assert!(types.contains(&ty), "no vector for frame type {ty:#04x}");
        }
    }
}

#[test]
fn valid_frames_encode_and_decode() {
    let vectors = load();
    for (name, frame) in frames() {
        let want = get(&vectors, name);
        let got = frame.to_bytes().unwrap();
        assert_bytes(name, &got, want);
        assert_eq!(want.len(), HEADER_LEN + frame.body_len().unwrap() as usize, "vector {name}: length");
        let mut buf = Bytes::copy_from_slice(want);
        let decoded = Frame::decode_one(&mut buf, LIMIT).unwrap_or_else(|e| panic!("vector {name}: {e}"));
        assert_eq!(decoded.as_ref(), Some(&frame), "vector {name} decodes to another frame");
        assert!(buf.is_empty(), "vector {name}: bytes left after the frame");
    }
}

#[test]
fn invalid_frames_are_refused() {
    let vectors = load();
    for (name, expected) in invalid_frames() {
        let mut buf = Bytes::copy_from_slice(get(&vectors, name));
        assert_eq!(Frame::decode_one(&mut buf, LIMIT), Err(expected.clone()), "vector {name}");

        // On an established connection the same bytes end the connection
        // with GOODBYE PROTOCOL_ERROR (no reconnect hint).
        let (_c, mut s, now) = established();
        s.handle_input(get(&vectors, name), now);
        assert_eq!(s.error(), Some(&ConnectionError::Protocol(expected)), "vector {name}");
        let mut out = Bytes::from(take_output(&mut s, now));
        match Frame::decode_one(&mut out, LIMIT) {
            Ok(Some(Frame::Goodbye(g))) => {
                assert_eq!((g.code, g.reconnect_after_ms), (Code::PROTOCOL_ERROR, NO_HINT), "vector {name}")
            }
            other => panic!("vector {name}: expected a GOODBYE, got {other:?}"),
        }
        assert!(out.is_empty(), "vector {name}: more than a GOODBYE was sent");
    }
}

#[test]
fn invalid_handshakes_close_silently() {
    let vectors = load();
    for (name, expected) in invalid_handshakes() {
        let now = Instant::now();
        let mut s = Connection::server(Arc::new(Config::default()), now).unwrap();
        s.handle_input(get(&vectors, name), now);
        assert_eq!(s.error(), Some(&ConnectionError::Protocol(expected)), "vector {name}");
        assert!(take_output(&mut s, now).is_empty(), "vector {name}: the server must write nothing");
    }
}

#[test]
fn bad_preamble_is_refused_at_the_first_wrong_byte() {
    let vectors = load();
    let bytes = get(&vectors, "invalid-bad-preamble");
    let now = Instant::now();
    let mut s = Connection::server(Arc::new(Config::default()), now).unwrap();
    // Up to the wrong byte, nothing happens; the wrong byte ends it.
    s.handle_input(&bytes[..6], now);
    assert!(s.error().is_none());
    s.handle_input(&bytes[6..7], now);
    assert!(s.is_closed());
}

#[test]
fn handshake_and_worked_example_match_the_code() {
    let vectors = load();
    let steps = session();
    let produced: Vec<&str> = steps.iter().map(|(n, _)| *n).collect();
    assert_eq!(produced, SESSION, "the session script and SESSION disagree");
    for (name, bytes) in &steps {
        assert_bytes(name, bytes, get(&vectors, name));
    }
}

#[test]
fn version_mismatch_is_rejected() {
    version_mismatch(&load());
}

/// The table of section 18.6 names every invalid vector with the variant of
/// its error.
#[test]
fn invalid_outcome_table_matches() {
    let text = std::fs::read_to_string(PROTOCOL_MD).unwrap();
    let mut table = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("| `invalid-") else { continue };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = format!("invalid-{}", cells[0].trim_end_matches('`'));
        let variant = cells[2].trim_start_matches('`').split('`').next().unwrap_or_default().to_string();
        assert!(table.insert(name.clone(), variant).is_none(), "{name} is twice in the table");
    }
    let expected: BTreeMap<String, String> = invalid_frames()
        .into_iter()
        .chain(invalid_handshakes())
        .map(|(name, e)| {
            let debug = format!("{e:?}");
            let variant = debug.split([' ', '{', '(']).next().unwrap_or_default().to_string();
            (name.to_string(), variant)
        })
        .collect();
    assert_eq!(table, expected, "the table of section 18.6 disagrees with the test");
}

#[test]
fn vector_parser_rejects_bad_input() {
    let ok = "<!-- vector: a-1 -->\n```hex\n0a 0b # comment\n0c\n```\n\
              ````text\n<!-- vector: b -->\n```hex\n00\n```\n````\n";
    let parsed = parse_vectors(ok).unwrap();
    assert_eq!(parsed.get("a-1").map(Vec::as_slice), Some(&[0x0a, 0x0b, 0x0c][..]));
    assert_eq!(parsed.len(), 1, "a vector inside another fenced block is only an example");
    for bad in [
        "<!-- vector: a -->\n```hex\n0A\n```\n",
        "<!-- vector: Big -->\n```hex\n00\n```\n",
        "<!-- vector: a -->\n```hex\n0\n```\n",
        "<!-- vector: a -->\n\n```hex\n00\n```\n",
        "```hex\n00\n```\n",
        "<!-- vector: a -->\n```hex\n00\n",
        "<!-- vector: a -->\n```hex\n00\n```\n<!-- vector: a -->\n```hex\n00\n```\n",
    ] {
        assert!(parse_vectors(bad).is_err(), "accepted {bad:?}");
    }
}
