//! Fragmentation: a recorded session replayed into fresh connections split
//! at every byte boundary, one byte at a time and in random chunks, through
//! both input paths, must decode to the same events as the unsplit replay;
//! EOF at every offset fails cleanly; 10,000 frames in one read all count.
//!
//! How the replay stays valid: a replayed side is driven by the same
//! deterministic policy as in the recorded session. It issues its opening
//! commands (the server: `accept` and its own calls; the client: all its
//! calls, the subscription and publishes) right after the first frame of
//! the peer (HELLO or WELCOME), which the protocol forbids the peer to
//! pipeline past anyway, so every replay also cuts the input there. After
//! each chunk it reacts to new events (answering calls, acknowledging
//! subscriptions and publishes), commands that emit no events of their own
//! except the final `Closed`, so the event sequence does not depend on
//! where the input was split.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use support::Pair;
use wharf_core::wire::{Frame, FrameType, HEADER_LEN, Hello, Notify, PREAMBLE, Request, Welcome};
use wharf_core::{
    AckError, Bytes, CallError, CallKind, CallOptions, CancelReason, Code, Config, Connection, ConnectionError, Event,
    Metadata, RequestId, SubscribeOptions, Text, Timeout,
};

// ----------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------

/// Deterministic PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend_from_slice(&f.to_bytes().expect("encodable"));
    }
    v
}

/// The frames of a recorded stream, with the offset where each ends.
fn frames_with_ends(stream: &[u8]) -> Vec<(Frame, usize)> {
    assert_eq!(stream[..PREAMBLE.len()], PREAMBLE);
    let mut buf = Bytes::copy_from_slice(&stream[PREAMBLE.len()..]);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let f = Frame::decode_one(&mut buf, u32::MAX).expect("valid").expect("whole frames only");
        out.push((f, stream.len() - buf.len()));
    }
    out
}

/// `len` deterministic bytes (slices of one shared buffer: replays run
/// thousands of times, so building payloads must be cheap).
fn payload(len: usize, seed: u8) -> Bytes {
    static POOL: OnceLock<Bytes> = OnceLock::new();
    let pool = POOL.get_or_init(|| Bytes::from((0..16_384u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()));
    let start = usize::from(seed) * 13;
    pool.slice(start..start + len)
}

fn reply(p: &Bytes) -> Bytes {
    let mut v = b"re:".to_vec();
    v.extend_from_slice(p);
    Bytes::from(v)
}

fn client_config() -> Config {
    let mut c = support::config();
    c.name = Text::from("frag-client");
    c
}

fn server_config() -> Config {
    let mut c = support::config();
    c.name = Text::from("frag-server");
    c
}

// ----------------------------------------------------------------------
// The session: what each side does, shared by the recording and replays
// ----------------------------------------------------------------------

/// Server, right after `accept`: one call to the client and a notification.
fn server_start(conn: &mut Connection, now: Instant) {
    conn.request("client.echo", payload(1200, 1), CallOptions::new(), now).unwrap();
    conn.notify("server.note", payload(2, 2), CallOptions::new()).unwrap();
}

/// Client, right after `Connected`: calls of several sizes and shapes, a
/// subscription, publishes and a notification. Returns the call ids.
fn client_start(conn: &mut Connection, now: Instant) -> Vec<RequestId> {
    let mut ids = Vec::new();
    for (method, len) in [("echo.small", 10), ("echo.empty", 0), ("echo.1024", 1024), ("echo.1025", 1025)] {
        ids.push(conn.request(method, payload(len, len as u8), CallOptions::new(), now).unwrap());
    }
    let mut md = Metadata::new();
    md.insert("k", Bytes::from_static(b"v"));
    let opts = CallOptions::new().metadata(md).trace_id([7; 16]).timeout(Timeout::After(Duration::from_secs(3)));
    ids.push(conn.request("echo.big", payload(5000, 9), opts, now).unwrap());
    ids.push(conn.request("feed", payload(3, 3), CallOptions::new().kind(CallKind::ServerStream), now).unwrap());
    let up = conn.request("upload", Bytes::new(), CallOptions::new().kind(CallKind::ClientStream), now).unwrap();
    conn.stream_send(up, payload(1, 4)).unwrap();
    conn.stream_send(up, payload(2000, 5)).unwrap();
    conn.stream_finish(up).unwrap();
    ids.push(up);
    conn.subscribe("news/", SubscribeOptions { prefix: true, ..Default::default() }).unwrap();
    conn.publish("events", payload(1100, 6), true).unwrap();
    conn.publish("events", payload(5, 7), false).unwrap();
    conn.notify("client.note", payload(1500, 8), CallOptions::new()).unwrap();
    ids
}

/// The server's reaction to one of its events.
fn server_react(conn: &mut Connection, e: &Event) {
    match e {
        Event::Request(c) => match c.kind {
            CallKind::Unary => conn.respond(c.id, reply(&c.payload)).unwrap(),
            CallKind::ServerStream => {
                for (i, n) in [0usize, 10, 3000].into_iter().enumerate() {
                    conn.stream_send(c.id, payload(n, i as u8)).unwrap();
                }
                conn.respond(c.id, Bytes::from_static(b"feed done")).unwrap();
            }
            // Answered on StreamEnd.
            CallKind::ClientStream | CallKind::Bidi => {}
        },
        Event::StreamEnd { id } => conn.respond(*id, Bytes::from_static(b"upload done")).unwrap(),
        Event::Subscribe { id, .. } => {
            conn.accept_subscription(*id).unwrap();
            conn.deliver(*id, &Text::from("news/a"), payload(1500, 10)).unwrap();
            conn.deliver(*id, &Text::from("news/b"), payload(3, 11)).unwrap();
            conn.deliver_lagged(*id, 3).unwrap();
        }
        Event::Publish { ack: Some(id), .. } => conn.ack_publish(*id, Ok(1)).unwrap(),
        _ => {}
    }
}

/// The client's reaction to one of its events.
fn client_react(conn: &mut Connection, e: &Event) {
    match e {
        Event::Request(c) => conn.respond(c.id, reply(&c.payload)).unwrap(),
        Event::StreamData { id, payload } => conn.stream_consumed(*id, payload.len()),
        _ => {}
    }
}

struct Recording {
    t0: Instant,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
}

/// Runs the session once, unsplit, and records both byte streams.
fn record() -> Recording {
    let mut p = Pair::new(client_config(), server_config());
    p.auto_accept = None;
    let t0 = p.now;
    p.drive();
    assert!(matches!(p.server.events.as_slice(), [Event::HandshakeRequest(_)]));
    p.server.conn.accept(7).unwrap();
    server_start(&mut p.server.conn, t0);
    p.drive();
    assert!(matches!(p.client.events.first(), Some(Event::Connected(_))));
    client_start(&mut p.client.conn, t0);
    let (mut cseen, mut sseen) = (0, 0);
    loop {
        p.drive();
        if cseen == p.client.events.len() && sseen == p.server.events.len() {
            break;
        }
        while cseen < p.client.events.len() {
            let e = p.client.events[cseen].clone();
            client_react(&mut p.client.conn, &e);
            cseen += 1;
        }
        while sseen < p.server.events.len() {
            let e = p.server.events[sseen].clone();
            server_react(&mut p.server.conn, &e);
            sseen += 1;
        }
    }
    assert_eq!(p.client.conn.calls_in_flight() + p.client.conn.calls_being_served(), 0);
    assert_eq!(p.server.conn.calls_in_flight() + p.server.conn.calls_being_served(), 0);
    // Crossing goodbyes: each direction ends with one.
    p.client.conn.close(Code::OK, "client done", None, t0);
    p.server.conn.close(Code::OK, "server done", Some(Duration::from_millis(250)), t0);
    p.drive();
    assert!(p.client.conn.is_closed() && p.server.conn.is_closed());
    Recording {
        t0,
        c2s: p.client.wrote.clone(),
        s2c: p.server.wrote.clone(),
        client_events: p.client.take(),
        server_events: p.server.take(),
    }
}

// ----------------------------------------------------------------------
// Replay
// ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// A fresh client fed the recorded server-to-client bytes.
    Client,
    /// A fresh server fed the recorded client-to-server bytes.
    Server,
}

#[derive(Clone, Copy, Debug)]
enum Path {
    /// `handle_input`.
    Copy,
    /// `recv_buffer` + `handle_received`.
    ZeroCopy,
}

struct Replay<'a> {
    side: Side,
    stream: &'a [u8],
    t0: Instant,
    /// End of the peer's first frame: where the replayed side starts.
    sync: usize,
}

struct Outcome {
    events: Vec<Event>,
    /// Events emitted before `handle_eof` (all of them without EOF).
    before_eof: usize,
    /// Call ids the replayed side made.
    calls: Vec<RequestId>,
}

impl<'a> Replay<'a> {
    fn new(side: Side, stream: &'a [u8], t0: Instant) -> Self {
        let len_bytes: [u8; 4] = stream[PREAMBLE.len()..PREAMBLE.len() + 4].try_into().unwrap();
        let sync = PREAMBLE.len() + HEADER_LEN + u32::from_le_bytes(len_bytes) as usize;
        Replay { side, stream, t0, sync }
    }

    fn len(&self) -> usize {
        self.stream.len()
    }

    /// Feeds `stream[..end]` cut at `cuts` (and at `sync`), then EOF if asked.
    fn run(&self, cuts: &[usize], end: usize, path: Path, eof: bool) -> Outcome {
        let t0 = self.t0;
        let mut conn = match self.side {
            Side::Client => Connection::client(Arc::new(client_config()), Bytes::new(), t0).unwrap(),
            Side::Server => Connection::server(Arc::new(server_config()), t0).unwrap(),
        };
        let mut points: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < end).collect();
        if self.sync < end {
            points.push(self.sync);
        }
        points.push(end);
        points.sort_unstable();
        points.dedup();

        let mut events = Vec::new();
        let mut calls = Vec::new();
        let mut started = false;
        let mut pos = 0;
        for q in points {
            let chunk = &self.stream[pos..q];
            pos = q;
            if !chunk.is_empty() {
                assert!(conn.wants_read(), "the replayed side stopped reading");
                match path {
                    Path::Copy => conn.handle_input(chunk, t0),
                    Path::ZeroCopy => {
                        conn.recv_buffer().extend_from_slice(chunk);
                        conn.handle_received(chunk.len(), t0);
                    }
                }
            }
            self.settle(&mut conn, &mut events);
            if !started && pos >= self.sync {
                started = true;
                match self.side {
                    Side::Client => {
                        assert!(conn.is_established(), "WELCOME not processed at its end: {events:?}");
                        calls = client_start(&mut conn, t0);
                    }
                    Side::Server => {
                        assert!(matches!(events.as_slice(), [Event::HandshakeRequest(_)]), "{events:?}");
                        conn.accept(7).unwrap();
                        server_start(&mut conn, t0);
                    }
                }
                self.settle(&mut conn, &mut events);
            }
        }
        let before_eof = events.len();
        if eof {
            conn.handle_eof(t0);
            self.settle(&mut conn, &mut events);
        }
        Outcome { events, before_eof, calls }
    }

    /// Discards output, collects events and reacts to each.
    fn settle(&self, conn: &mut Connection, events: &mut Vec<Event>) {
        loop {
            while conn.poll_transmit(self.t0).is_some() {}
            let Some(e) = conn.poll_event() else { break };
            match self.side {
                Side::Client => client_react(conn, &e),
                Side::Server => server_react(conn, &e),
            }
            events.push(e);
        }
    }
}

/// Finds where two event sequences first differ, for readable failures.
fn assert_same(got: &[Event], want: &[Event], what: &str) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: event sequences differ at index {i} (got {} events, want {})\n got: {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        got.get(i),
        want.get(i)
    );
}

fn both_replays(rec: &Recording) -> [Replay<'_>; 2] {
    [Replay::new(Side::Client, &rec.s2c, rec.t0), Replay::new(Side::Server, &rec.c2s, rec.t0)]
}

// ----------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------

#[test]
fn recorded_session_covers_every_feature_and_replays_faithfully() {
    let rec = record();
    let s2c: Vec<FrameType> = frames_with_ends(&rec.s2c).iter().map(|(f, _)| f.frame_type()).collect();
    let c2s: Vec<FrameType> = frames_with_ends(&rec.c2s).iter().map(|(f, _)| f.frame_type()).collect();
    for t in [
        FrameType::Welcome,
        FrameType::Request,
        FrameType::Notify,
        FrameType::Response,
        FrameType::Data,
        FrameType::Ack,
        FrameType::Message,
        FrameType::Messages,
        FrameType::Lagged,
        FrameType::Goodbye,
    ] {
        assert!(s2c.contains(&t), "server-to-client stream lacks {t}: {s2c:?}");
    }
    for t in [
        FrameType::Hello,
        FrameType::Request,
        FrameType::Data,
        FrameType::End,
        FrameType::Subscribe,
        FrameType::Publish,
        FrameType::Notify,
        FrameType::Response,
        FrameType::Goodbye,
    ] {
        assert!(c2s.contains(&t), "client-to-server stream lacks {t}: {c2s:?}");
    }
    assert_eq!(s2c.first(), Some(&FrameType::Welcome));
    assert_eq!(s2c.last(), Some(&FrameType::Goodbye));
    assert_eq!(c2s.first(), Some(&FrameType::Hello));
    assert_eq!(c2s.last(), Some(&FrameType::Goodbye));
    let big = frames_with_ends(&rec.s2c).iter().filter(|(f, _)| f.tail().is_some_and(|t| t.len() > 1024)).count();
    assert!(big >= 4, "payloads above the 1024-byte copy threshold travel as separate chunks");

    let [client, server] = both_replays(&rec);

    // The replayed client sees what the recorded client saw, up to the
    // server's GOODBYE; the recorded client had closed too (crossing
    // goodbyes, so it ends LocallyClosed), the replayed one only answers
    // (so it ends PeerClosed).
    let out = client.run(&[], client.len(), Path::Copy, false);
    let n = rec.client_events.len();
    assert!(matches!(rec.client_events.last(), Some(Event::Closed(ConnectionError::LocallyClosed { .. }))));
    assert_same(&out.events[..out.events.len() - 1], &rec.client_events[..n - 1], "replayed client vs recording");
    assert_eq!(
        out.events[out.events.len() - 2..],
        [
            Event::GoodbyeReceived {
                code: Code::OK,
                message: Text::from("server done"),
                reconnect_after: Some(Duration::from_millis(250))
            },
            Event::Closed(ConnectionError::PeerClosed {
                code: Code::OK,
                message: "server done".to_string(),
                reconnect_after: Some(Duration::from_millis(250))
            })
        ]
    );
    let count = |evs: &[Event], f: fn(&Event) -> bool| evs.iter().filter(|e| f(e)).count();
    let ce = &out.events;
    assert_eq!(count(ce, |e| matches!(e, Event::Response { result: Ok(_), .. })), 7);
    assert_eq!(count(ce, |e| matches!(e, Event::StreamData { .. })), 3);
    assert_eq!(count(ce, |e| matches!(e, Event::Message { .. })), 2);
    assert_eq!(count(ce, |e| matches!(e, Event::Lagged { dropped: 3, .. })), 1);
    assert_eq!(count(ce, |e| matches!(e, Event::SubscribeResult { result: Ok(()), .. })), 1);
    assert_eq!(count(ce, |e| matches!(e, Event::PublishResult { result: Ok(1), .. })), 1);
    assert_eq!(count(ce, |e| matches!(e, Event::Request(_))), 1);
    assert_eq!(count(ce, |e| matches!(e, Event::Notification(_))), 1);

    let out = server.run(&[], server.len(), Path::Copy, false);
    let n = rec.server_events.len();
    assert_same(&out.events[..out.events.len() - 1], &rec.server_events[..n - 1], "replayed server vs recording");
    assert_eq!(
        out.events.last(),
        Some(&Event::Closed(ConnectionError::PeerClosed {
            code: Code::OK,
            message: "client done".to_string(),
            reconnect_after: None
        }))
    );
    let se = &out.events;
    assert_eq!(count(se, |e| matches!(e, Event::Request(_))), 7);
    assert_eq!(count(se, |e| matches!(e, Event::StreamData { .. })), 2);
    assert_eq!(count(se, |e| matches!(e, Event::StreamEnd { .. })), 1);
    assert_eq!(count(se, |e| matches!(e, Event::Subscribe { .. })), 1);
    assert_eq!(count(se, |e| matches!(e, Event::Publish { .. })), 2);
    assert_eq!(count(se, |e| matches!(e, Event::Notification(_))), 1);
    assert_eq!(count(se, |e| matches!(e, Event::Response { result: Ok(_), .. })), 1);
}

#[test]
fn split_at_every_single_point_gives_identical_events() {
    let rec = record();
    for replay in both_replays(&rec) {
        for path in [Path::Copy, Path::ZeroCopy] {
            let want = replay.run(&[], replay.len(), path, false).events;
            for p in 1..replay.len() {
                let got = replay.run(&[p], replay.len(), path, false).events;
                assert_same(&got, &want, &format!("{:?} replay, {path:?} path, split at {p}", replay.side));
            }
        }
    }
}

#[test]
fn one_byte_at_a_time_gives_identical_events() {
    let rec = record();
    for replay in both_replays(&rec) {
        let every: Vec<usize> = (1..replay.len()).collect();
        for path in [Path::Copy, Path::ZeroCopy] {
            let want = replay.run(&[], replay.len(), path, false).events;
            let got = replay.run(&every, replay.len(), path, false).events;
            assert_same(&got, &want, &format!("{:?} replay, {path:?} path, one byte at a time", replay.side));
        }
    }
}

#[test]
fn random_chunk_patterns_give_identical_events() {
    let rec = record();
    for replay in both_replays(&rec) {
        let want = replay.run(&[], replay.len(), Path::Copy, false).events;
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            // Vary the scale: tiny reads, header-sized reads, and large ones.
            let max = [3, 17, 64, 700, 5000][seed as usize % 5];
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += rng.range(1, max);
                if at >= replay.len() {
                    break;
                }
                cuts.push(at);
            }
            let path = if seed % 2 == 0 { Path::Copy } else { Path::ZeroCopy };
            let got = replay.run(&cuts, replay.len(), path, false).events;
            assert_same(&got, &want, &format!("{:?} replay, {path:?} path, seed {seed}, cuts {cuts:?}", replay.side));
        }
    }
}

#[test]
fn eof_at_every_offset_fails_cleanly_mid_frame_flag_exact() {
    let rec = record();
    for replay in both_replays(&rec) {
        let full = replay.run(&[], replay.len(), Path::Copy, false).events;
        let mut boundaries = vec![0, PREAMBLE.len()];
        boundaries.extend(frames_with_ends(replay.stream).iter().map(|(_, end)| *end));
        for end in 0..=replay.len() {
            let what = format!("{:?} replay, EOF after {end} of {} bytes", replay.side, replay.len());
            let out = replay.run(&[], end, Path::Copy, true);
            if end == replay.len() {
                // The GOODBYE was read: the connection had already closed cleanly.
                assert_same(&out.events, &full, &what);
                continue;
            }
            // Before EOF: exactly what the whole stream produces up to there.
            assert_same(&out.events[..out.before_eof], &full[..out.before_eof], &what);
            let mid_frame = !boundaries.contains(&end);
            let err = ConnectionError::UnexpectedEof { mid_frame };
            assert_eq!(out.events.last(), Some(&Event::Closed(err.clone())), "{what}");
            assert_eq!(out.events.iter().filter(|e| matches!(e, Event::Closed(_))).count(), 1, "{what}");
            // Every call made has exactly one outcome.
            for id in &out.calls {
                let n = out.events.iter().filter(|e| matches!(e, Event::Response { id: i, .. } if i == id)).count();
                assert_eq!(n, 1, "{what}: call {id} has {n} outcomes");
            }
            // Everything EOF failed, failed with this error.
            for e in &out.events[out.before_eof..] {
                let ok = match e {
                    Event::Response { result: Err(CallError::ConnectionLost(x)), .. }
                    | Event::CallCancelled { reason: CancelReason::ConnectionLost(x), .. } => *x == err,
                    Event::SubscribeResult { result: Err(AckError::ConnectionLost(x)), .. } => *x == err,
                    Event::PublishResult { result: Err(AckError::ConnectionLost(x)), .. } => *x == err,
                    Event::Closed(x) => *x == err,
                    _ => false,
                };
                assert!(ok, "{what}: unexpected event after EOF: {e:?}");
            }
        }
    }
}

#[test]
fn eof_at_every_offset_through_the_zero_copy_path() {
    let rec = record();
    for replay in both_replays(&rec) {
        let mut boundaries = vec![0, PREAMBLE.len()];
        boundaries.extend(frames_with_ends(replay.stream).iter().map(|(_, end)| *end));
        for end in 0..replay.len() {
            // Also cut halfway, so a partial frame waits in the buffer across inputs.
            let out = replay.run(&[end / 2], end, Path::ZeroCopy, true);
            let err = ConnectionError::UnexpectedEof { mid_frame: !boundaries.contains(&end) };
            assert_eq!(out.events.last(), Some(&Event::Closed(err)), "{:?} replay, EOF after {end}", replay.side);
        }
    }
}

// ----------------------------------------------------------------------
// Many frames in one read
// ----------------------------------------------------------------------

fn established_client(t0: Instant) -> Connection {
    let mut c = Connection::client(Arc::new(client_config()), Bytes::new(), t0).unwrap();
    let s = server_config();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[Frame::Welcome(Welcome {
        connection_id: 1,
        version: 1,
        max_frame_size: s.max_frame_size,
        max_in_flight: s.max_in_flight,
        max_streams: s.max_streams,
        max_subscriptions: s.max_subscriptions,
        initial_stream_window: s.initial_stream_window,
        keepalive_ms: 0,
        server_name: Text::new(),
    })]));
    c.handle_input(&input, t0);
    while c.poll_transmit(t0).is_some() {}
    assert!(matches!(c.poll_event(), Some(Event::Connected(_))));
    c
}

#[test]
fn ten_thousand_frames_in_one_input_are_all_processed() {
    let t0 = Instant::now();
    for path in [Path::Copy, Path::ZeroCopy] {
        let mut c = established_client(t0);
        let mut frames = Vec::new();
        for i in 0..10_000u64 {
            if i % 2 == 0 {
                frames.push(Frame::Notify(Notify {
                    method: Text::from("n"),
                    trace_id: None,
                    metadata: Metadata::new(),
                    payload: Bytes::from(i.to_le_bytes().to_vec()),
                }));
            } else {
                frames.push(Frame::Ping { id: i });
            }
        }
        let input = encode(&frames);
        match path {
            Path::Copy => c.handle_input(&input, t0),
            Path::ZeroCopy => {
                c.recv_buffer().extend_from_slice(&input);
                c.handle_received(input.len(), t0);
            }
        }
        let mut out = Vec::new();
        while let Some(chunk) = c.poll_transmit(t0) {
            out.extend_from_slice(&chunk);
        }
        let mut buf = Bytes::from(out);
        let mut pongs = Vec::new();
        while let Some(f) = Frame::decode_one(&mut buf, u32::MAX).unwrap() {
            pongs.push(f);
        }
        assert!(buf.is_empty());
        let want: Vec<Frame> = (0..10_000u64).filter(|i| i % 2 == 1).map(|id| Frame::Pong { id }).collect();
        assert_eq!(pongs, want, "{path:?}: every PING answered, in order");
        let mut n = 0u64;
        while let Some(e) = c.poll_event() {
            match e {
                Event::Notification(note) => assert_eq!(note.payload, Bytes::from(n.to_le_bytes().to_vec())),
                other => panic!("{other:?}"),
            }
            n += 2;
        }
        assert_eq!(n, 10_000, "{path:?}: every NOTIFY delivered, in order");
        assert_eq!(c.stats().frames_received, 10_001);
        assert!(c.is_established());
    }

    // And 10,000 calls to a server that allows that many.
    let mut cfg = server_config();
    cfg.max_in_flight = 10_000;
    let mut s = Connection::server(Arc::new(cfg), t0).unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(encode(&[Frame::Hello(Hello {
        min_version: 1,
        max_version: 1,
        max_frame_size: 1 << 20,
        max_in_flight: 8,
        max_streams: 8,
        initial_stream_window: 65536,
        keepalive_ms: 0,
        client_name: Text::new(),
        auth: Bytes::new(),
    })]));
    s.handle_input(&input, t0);
    assert!(matches!(s.poll_event(), Some(Event::HandshakeRequest(_))));
    s.accept(1).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Connected(_))));
    let calls: Vec<Frame> = (0..10_000u64)
        .map(|i| {
            Frame::Request(Request {
                id: 2 * i + 1,
                kind: CallKind::Unary,
                method: Text::from("m"),
                deadline_ms: None,
                trace_id: None,
                metadata: Metadata::new(),
                payload: Bytes::new(),
            })
        })
        .collect();
    s.handle_input(&encode(&calls), t0);
    let mut ids = Vec::new();
    while let Some(e) = s.poll_event() {
        match e {
            Event::Request(c) => ids.push(c.id.0),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, (0..10_000u64).map(|i| 2 * i + 1).collect::<Vec<_>>());
    assert_eq!(s.calls_being_served(), 10_000);
}
