//! Heap allocations per message in the core's steady state.
//!
//! A counting global allocator (wrapping `System`) counts every `alloc`,
//! `alloc_zeroed` and `realloc` made on the measuring thread while a
//! measurement is running. Connections are driven the way an adapter
//! drives them: `transmit_slices` + `advance_transmit` into a reusable
//! "socket" buffer, then `recv_buffer` + `handle_received` on the other
//! side (one read per flush, so every message costs at least one read),
//! events polled and dropped at once. Each scenario warms up, then counts
//! over [`MESSAGES`] messages.
//!
//! One `#[test]` runs every counted scenario in sequence, and the counters
//! are thread-local, so neither the other test in this file (which checks
//! that recycled receive blocks never corrupt payloads still held) nor the
//! test harness's own threads pollute the counts. Run with
//! `cargo test -p wharf-core --test alloc -- --nocapture` to see the table.

// The one unsafe thing here is the `GlobalAlloc` impl, which only forwards
// to `System`; the core itself stays `#![forbid(unsafe_code)]`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_core::broker::{Broker, BrokerConfig, Delivery, SubscriberId};
use wharf_core::{
    Bytes, CallKind, CallOptions, Code, Config, Connection, Event, Metadata, SubscribeOptions, Text, Timeout,
};

/// Messages counted per scenario (after the warm-up).
const MESSAGES: u64 = 5_000;
/// Messages exchanged before counting starts: enough to go round the
/// receive blocks (64 KiB each) more than once in every scenario.
const WARMUP: u64 = 2_000;

thread_local! {
    /// Whether allocations on this thread are being counted.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Bytes requested by those allocations.
    static BYTES: Cell<u64> = const { Cell::new(0) };
    /// Bytes given back on this thread while counting (for [`held`]).
    static FREED: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn note_free(size: usize) {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = FREED.try_with(|f| f.set(f.get() + size as u64));
        }
    });
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator, even while thread-locals
    // are being torn down (these have no destructors, so it cannot fail).
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            let _ = BYTES.try_with(|b| b.set(b.get() + size as u64));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the bookkeeping touches
// only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        note_free(layout.size());
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (count, bytes) made on this thread by `f`.
fn count<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (a0, b0) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get) - a0, BYTES.with(Cell::get) - b0)
}

/// Runs `f`, adding to `held` the heap bytes it allocated and did not give
/// back (negative if it freed more than it took).
fn held<R>(held: &mut i64, f: impl FnOnce() -> R) -> R {
    let (b0, f0) = (BYTES.with(Cell::get), FREED.with(Cell::get));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    *held += (BYTES.with(Cell::get) - b0) as i64 - (FREED.with(Cell::get) - f0) as i64;
    r
}

/// Allocations attributed to one side of a scenario.
#[derive(Default, Clone, Copy)]
struct Tally {
    allocs: u64,
    bytes: u64,
}

impl Tally {
    fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let (r, a, b) = count(f);
        self.allocs += a;
        self.bytes += b;
        r
    }
}

/// One line of the table.
struct Row {
    scenario: &'static str,
    side: &'static str,
    messages: u64,
    /// Allocations per message the scenario needs by design (see there).
    allowed: u64,
    tally: Tally,
}

impl Row {
    fn per_msg(&self) -> f64 {
        self.tally.allocs as f64 / self.messages as f64
    }
}

// ----------------------------------------------------------------------
// The "adapter": moves bytes with reusable buffers.
// ----------------------------------------------------------------------

/// Capacity of the stand-in socket; large enough that it never grows.
const WIRE: usize = 4 << 20;
/// A mebibyte.
const MIB: usize = 1 << 20;

/// Writes everything `conn` has queued into `wire` (vectored, whole).
fn write_out(conn: &mut Connection, wire: &mut Vec<u8>, now: Instant) {
    loop {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = conn.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            assert!(wire.len() + s.len() <= wire.capacity(), "the test's wire buffer must not grow");
            wire.extend_from_slice(s);
            written += s.len();
        }
        conn.advance_transmit(written, now);
    }
}

/// Feeds `wire` to `conn` through its receive buffer (zero-copy path).
fn read_in(conn: &mut Connection, wire: &mut Vec<u8>, now: Instant) {
    read_in_sized(conn, wire, usize::MAX, now)
}

/// As [`read_in`], at most `max_read` bytes per read (frames then straddle
/// reads), without polling events in between, as an adapter reading a few
/// times per round does.
fn read_in_sized(conn: &mut Connection, wire: &mut Vec<u8>, max_read: usize, now: Instant) {
    let mut pos = 0;
    while pos < wire.len() {
        let buf = conn.recv_buffer();
        let n = (buf.capacity() - buf.len()).min(wire.len() - pos).min(max_read);
        buf.extend_from_slice(&wire[pos..pos + n]);
        conn.handle_received(n, now);
        pos += n;
    }
    wire.clear();
}

/// Feeds `wire` to `conn` with `handle_input` from a fixed read buffer, as a
/// blocking loop over `Read::read` does (examples/hand_driven.rs).
fn read_in_copying(conn: &mut Connection, wire: &mut Vec<u8>, read_buf: &mut [u8], now: Instant) {
    for chunk in wire.chunks(read_buf.len()) {
        read_buf[..chunk.len()].copy_from_slice(chunk);
        conn.handle_input(&read_buf[..chunk.len()], now);
    }
    wire.clear();
}

/// A connected client/server pair with the `Connected` events consumed.
fn pair(config: Config, now: Instant, wire: &mut Vec<u8>) -> (Connection, Connection) {
    let config = Arc::new(config);
    let mut client = Connection::client(config.clone(), Bytes::new(), now).expect("client");
    let mut server = Connection::server(config, now).expect("server");
    write_out(&mut client, wire, now);
    read_in(&mut server, wire, now);
    assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
    server.accept(1).expect("accept");
    write_out(&mut server, wire, now);
    read_in(&mut client, wire, now);
    assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(client.poll_event(), Some(Event::Connected(_))));
    assert!(client.poll_event().is_none() && server.poll_event().is_none());
    (client, server)
}

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

// ----------------------------------------------------------------------
// Scenarios
// ----------------------------------------------------------------------

/// How the receiving side reads.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// `recv_buffer` + `handle_received`.
    ZeroCopy,
    /// `handle_input` from a fixed buffer.
    Copying,
}

/// Unary request + response; the server echoes the payload. With
/// `hold`, the server keeps each request payload until the next request has
/// been read (as a handler running on another task would), so the receive
/// buffer is still shared when the next read needs room.
fn rpc(read: Read, hold: bool, size: usize) -> (Tally, Tally) {
    rpc_read_by(read, hold, size, usize::MAX)
}

/// [`rpc`] with zero-copy reads of at most `max_read` bytes, as a socket
/// hands a large frame over in pieces of its buffer's size.
fn rpc_read_by(read: Read, hold: bool, size: usize, max_read: usize) -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let mut read_buf = vec![0u8; 64 * 1024];
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let body = payload(size);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    let mut held: Option<Bytes> = None;
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        let id = ct.run(|| {
            let id = client.request("echo", body.clone(), CallOptions::new(), now).expect("request");
            write_out(&mut client, &mut wire, now);
            id
        });
        st.run(|| {
            match read {
                Read::ZeroCopy => read_in_sized(&mut server, &mut wire, max_read, now),
                Read::Copying => read_in_copying(&mut server, &mut wire, &mut read_buf, now),
            }
            let Some(Event::Request(call)) = server.poll_event() else { panic!("expected a request") };
            server.respond(call.id, call.payload.clone()).expect("respond");
            if hold {
                // What was held across the read must be intact.
                if let Some(old) = held.replace(call.payload) {
                    assert_eq!(old, body);
                }
            }
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            match read {
                Read::ZeroCopy => read_in_sized(&mut client, &mut wire, max_read, now),
                Read::Copying => read_in_copying(&mut client, &mut wire, &mut read_buf, now),
            }
            match client.poll_event() {
                Some(Event::Response { id: got, result: Ok(p) }) => assert!(got == id && p == body),
                _ => panic!("expected the response"),
            }
        });
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    drop(held);
    (c, s)
}

/// `window` unary calls in flight at once, `size`-byte payloads echoed,
/// reads of at most `max_read` bytes, events polled once per batch (so the
/// frames of earlier reads are still held while later reads need room).
/// Counts are per call.
fn rpc_pipelined(window: usize, size: usize, max_read: usize) -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let body = payload(size);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    let rounds = (WARMUP + MESSAGES) / window as u64;
    for i in 0..rounds {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        ct.run(|| {
            for _ in 0..window {
                client.request("echo", body.clone(), CallOptions::new(), now).expect("request");
            }
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            read_in_sized(&mut server, &mut wire, max_read, now);
            while let Some(e) = server.poll_event() {
                let Event::Request(call) = e else { panic!("expected a request") };
                server.respond(call.id, call.payload).expect("respond");
            }
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            read_in_sized(&mut client, &mut wire, max_read, now);
            let mut n = 0;
            while let Some(e) = client.poll_event() {
                let Event::Response { result: Ok(p), .. } = e else { panic!("expected a response") };
                assert_eq!(p, body);
                n += 1;
            }
            assert_eq!(n, window);
        });
        if i >= WARMUP / window as u64 {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

/// Unary calls with one metadata entry, echoed. The application builds a
/// `Metadata` for each call (the API takes it by value) and the receiver
/// hands an owned `Metadata` to its application in the event.
fn rpc_metadata() -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let body = payload(64);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        ct.run(|| {
            let mut metadata = Metadata::new();
            metadata.insert("tenant", Bytes::from_static(b"blue"));
            client.request("echo", body.clone(), CallOptions::new().metadata(metadata), now).expect("request");
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            read_in(&mut server, &mut wire, now);
            let Some(Event::Request(call)) = server.poll_event() else { panic!("expected a request") };
            assert_eq!(call.metadata.get("tenant").map(|v| &v[..]), Some(&b"blue"[..]));
            server.respond(call.id, call.payload).expect("respond");
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            read_in(&mut client, &mut wire, now);
            let Some(Event::Response { result: Ok(p), .. }) = client.poll_event() else {
                panic!("expected a response")
            };
            assert_eq!(p, body);
        });
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

/// Unary calls answered with an error (`respond_error` with a borrowed
/// message), 64-byte requests.
fn rpc_error() -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let body = payload(64);
    let reason = String::from("no handler for this method");
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        ct.run(|| {
            client.request("missing", body.clone(), CallOptions::new(), now).expect("request");
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            read_in(&mut server, &mut wire, now);
            let Some(Event::Request(call)) = server.poll_event() else { panic!("expected a request") };
            server.respond_error(call.id, Code::UNKNOWN_METHOD, &reason, Bytes::new()).expect("respond_error");
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            read_in(&mut client, &mut wire, now);
            let Some(Event::Response { result: Err(_), .. }) = client.poll_event() else { panic!("expected an error") };
        });
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

fn add(total: &mut Tally, t: Tally) {
    total.allocs += t.allocs;
    total.bytes += t.bytes;
}

/// Client → server notifications.
fn notify() -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let body = payload(64);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        ct.run(|| {
            client.notify("tick", body.clone(), CallOptions::new()).expect("notify");
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            read_in(&mut server, &mut wire, now);
            let Some(Event::Notification(n)) = server.poll_event() else { panic!("expected a notification") };
            assert_eq!(n.payload, body);
        });
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

/// A client publishes 64-byte messages (no ack) through the server's
/// broker to `subscribers` subscribed clients, one connection each.
/// Client side: the publisher and every subscriber client; server side:
/// the publisher's server connection, the broker and the subscribers'
/// server connections.
/// A client publishes (PUBLISH through its connection), or with `by_name`
/// the server application publishes by topic name (`Broker::publish_str`),
/// to `subscribers` subscriptions of the topic.
fn publish(subscribers: usize, by_name: bool) -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut publisher, mut pub_server) = pair(Config::default(), now, &mut wire);
    let mut broker = Broker::new(BrokerConfig::default()).expect("broker");
    let mut subs = Vec::new();
    for n in 0..subscribers {
        let (mut client, mut server) = pair(Config::default(), now, &mut wire);
        let sid = SubscriberId(n as u64 + 100);
        broker.add_subscriber(sid);
        client.subscribe("sensors/temp", SubscribeOptions::default()).expect("subscribe");
        write_out(&mut client, &mut wire, now);
        read_in(&mut server, &mut wire, now);
        let Some(Event::Subscribe { id, topic, prefix, policy }) = server.poll_event() else { panic!("subscribe") };
        broker.subscribe(sid, id, topic, prefix, policy).expect("broker subscribe");
        server.accept_subscription(id).expect("accept subscription");
        write_out(&mut server, &mut wire, now);
        read_in(&mut client, &mut wire, now);
        assert!(matches!(client.poll_event(), Some(Event::SubscribeResult { result: Ok(()), .. })));
        subs.push((sid, client, server));
    }
    while broker.poll_event().is_some() {}
    let body = payload(64);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        if by_name {
            st.run(|| {
                let report = broker.publish_str("sensors/temp", &body);
                assert_eq!(report.queued as usize, subscribers);
                while broker.poll_event().is_some() {}
            });
        } else {
            ct.run(|| {
                publisher.publish("sensors/temp", body.clone(), false).expect("publish");
                write_out(&mut publisher, &mut wire, now);
            });
        }
        st.run(|| {
            if by_name {
                return;
            }
            read_in(&mut pub_server, &mut wire, now);
            let Some(Event::Publish { ack: None, topic, payload }) = pub_server.poll_event() else {
                panic!("expected a publish")
            };
            let report = broker.publish(&topic, &payload);
            assert_eq!(report.queued as usize, subscribers);
            while broker.poll_event().is_some() {}
        });
        for (sid, client, server) in &mut subs {
            st.run(|| {
                while let Some(d) = broker.next_delivery(*sid) {
                    let Delivery::Message { subscription, topic, payload } = d else { panic!("lagged") };
                    server.deliver(subscription, &topic, payload).expect("deliver");
                }
                write_out(server, &mut wire, now);
            });
            ct.run(|| {
                read_in(client, &mut wire, now);
                let Some(Event::Message { payload, .. }) = client.poll_event() else { panic!("expected a message") };
                assert_eq!(payload, body);
            });
        }
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

/// A client-stream call: the client sends `chunk`-byte DATA frames, the
/// server consumes each at once (`stream_consumed`), returning credit with
/// a CREDIT frame each half window.
fn stream(chunk: usize) -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let options = CallOptions::new().kind(CallKind::ClientStream).timeout(Timeout::Never);
    let id = client.request("upload", Bytes::new(), options, now).expect("open the stream");
    write_out(&mut client, &mut wire, now);
    read_in(&mut server, &mut wire, now);
    let Some(Event::Request(call)) = server.poll_event() else { panic!("expected the stream") };
    assert_eq!(call.id, id);
    let body = payload(chunk);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    let start = server.stats().frames_sent;
    for i in 0..WARMUP + MESSAGES {
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        ct.run(|| {
            client.stream_send(id, body.clone()).expect("stream_send (credit must keep up)");
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            read_in(&mut server, &mut wire, now);
            let Some(Event::StreamData { id: got, payload }) = server.poll_event() else { panic!("expected data") };
            assert_eq!(payload, body);
            server.stream_consumed(got, payload.len());
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            read_in(&mut client, &mut wire, now);
            while client.poll_event().is_some() {}
        });
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    let credits = server.stats().frames_sent - start;
    assert!(credits > 0, "the scenario must return credit");
    (c, s)
}

/// Keepalive must not cost anything either: a PING/PONG exchange driven
/// by `handle_timeout`, per round trip.
fn keepalive() -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let mut now = Instant::now();
    let config = Config { keepalive_interval: Some(Duration::from_secs(1)), ..Config::default() };
    let (mut client, mut server) = pair(config, now, &mut wire);
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        now += Duration::from_millis(1001);
        let (mut ct, mut st) = (Tally::default(), Tally::default());
        // Both sides' keepalive fires: each pings, the other answers.
        ct.run(|| {
            client.handle_timeout(now);
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| {
            server.handle_timeout(now);
            read_in(&mut server, &mut wire, now);
            write_out(&mut server, &mut wire, now);
        });
        ct.run(|| {
            read_in(&mut client, &mut wire, now);
            write_out(&mut client, &mut wire, now);
        });
        st.run(|| read_in(&mut server, &mut wire, now));
        assert!(client.poll_event().is_none() && server.poll_event().is_none());
        assert!(client.is_established() && server.is_established());
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    (c, s)
}

/// An idle connection whose blocks were released must not take them again
/// on every wake-up of its driver: each wake-up asks for the receive buffer
/// (a read that finds nothing), checks timers and drains output, as the
/// async driver does. The first wake-up takes a small block; the following
/// ones reuse it.
fn idle_wakeups() -> (Tally, Tally) {
    let mut wire = Vec::with_capacity(WIRE);
    let mut now = Instant::now();
    let config = Config { keepalive_interval: None, ..Config::default() };
    let (mut client, mut server) = pair(config, now, &mut wire);
    // Traffic large enough to move both sides to full blocks, then a release.
    let id = client.request("m", payload(8192), CallOptions::new(), now).unwrap();
    write_out(&mut client, &mut wire, now);
    read_in(&mut server, &mut wire, now);
    let Some(Event::Request(call)) = server.poll_event() else { panic!("no request") };
    server.respond(call.id, call.payload).unwrap();
    write_out(&mut server, &mut wire, now);
    read_in(&mut client, &mut wire, now);
    assert!(matches!(client.poll_event(), Some(Event::Response { id: r, result: Ok(_) }) if r == id));
    client.release_buffers();
    server.release_buffers();
    let (mut c, mut s) = (Tally::default(), Tally::default());
    for i in 0..WARMUP + MESSAGES {
        now += Duration::from_millis(10);
        let mut wake = |conn: &mut Connection| {
            let mut t = Tally::default();
            t.run(|| {
                let _ = conn.recv_buffer();
                conn.handle_timeout(now);
                write_out(conn, &mut wire, now);
                assert!(conn.poll_event().is_none());
            });
            t
        };
        let (ct, st) = (wake(&mut client), wake(&mut server));
        // The first wake-up takes the small block.
        if i == 0 {
            assert_eq!((ct.allocs, st.allocs), (1, 1), "one small receive block each");
        }
        if i >= WARMUP {
            add(&mut c, ct);
            add(&mut s, st);
        }
    }
    assert!(client.buffered_capacity() <= 256 && server.buffered_capacity() <= 256);
    (c, s)
}

// ----------------------------------------------------------------------
// Integrity of recycled receive blocks
// ----------------------------------------------------------------------

/// A small deterministic generator (64-bit LCG), for reproducible shapes.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Payload number `i`: its number, then a pattern derived from it.
fn numbered(i: u32, len: usize) -> Bytes {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((4..len).map(|j| (i as usize * 31 + j) as u8));
    Bytes::from(v)
}

fn check_numbered(p: &Bytes) -> u32 {
    let i = u32::from_le_bytes(p[..4].try_into().expect("4 bytes"));
    assert_eq!(*p, numbered(i, p.len()), "payload {i} was corrupted");
    i
}

/// Receive blocks are reused only once nothing cut from them is alive:
/// notifications of random sizes, read in random pieces through both input
/// paths, events polled at random moments, and payloads kept for random
/// lengths of time; every payload must arrive in order and stay intact.
#[test]
fn recycled_receive_blocks_keep_held_payloads_intact() {
    let mut rng = Lcg(0x5eed);
    let mut wire = Vec::with_capacity(WIRE);
    let mut read_buf = vec![0u8; 64 * 1024];
    let now = Instant::now();
    let (mut client, mut server) = pair(Config::default(), now, &mut wire);
    let mut kept: Vec<Bytes> = Vec::new();
    let (mut sent, mut next) = (0u32, 0u32);
    for _ in 0..1_000 {
        for _ in 0..1 + rng.below(8) {
            let big = rng.below(10) == 0;
            let len = 4 + rng.below(if big { 70_000 } else { 3_000 }) as usize;
            client.notify("n", numbered(sent, len), CallOptions::new()).expect("notify");
            sent += 1;
        }
        write_out(&mut client, &mut wire, now);
        let mut pos = 0;
        while pos < wire.len() {
            let max = 1 + rng.below(20_000) as usize;
            if rng.below(2) == 0 {
                let buf = server.recv_buffer();
                let n = (buf.capacity() - buf.len()).min(wire.len() - pos).min(max);
                buf.extend_from_slice(&wire[pos..pos + n]);
                server.handle_received(n, now);
                pos += n;
            } else {
                let n = (wire.len() - pos).min(max).min(read_buf.len());
                read_buf[..n].copy_from_slice(&wire[pos..pos + n]);
                server.handle_input(&read_buf[..n], now);
                pos += n;
            }
            if rng.below(3) == 0 {
                while let Some(e) = server.poll_event() {
                    let Event::Notification(n) = e else { panic!("unexpected {e:?}") };
                    assert_eq!(check_numbered(&n.payload), next, "out of order");
                    next += 1;
                    if rng.below(4) == 0 {
                        kept.push(n.payload);
                    }
                }
            }
            if !kept.is_empty() && rng.below(4) == 0 {
                let i = rng.below(kept.len() as u64) as usize;
                let p = kept.swap_remove(i);
                check_numbered(&p);
            }
        }
        wire.clear();
        assert!(server.is_established(), "{:?}", server.error());
    }
    while let Some(e) = server.poll_event() {
        let Event::Notification(n) = e else { panic!("unexpected {e:?}") };
        assert_eq!(check_numbered(&n.payload), next, "out of order");
        next += 1;
    }
    assert_eq!(next, sent);
    for p in &kept {
        check_numbered(p);
    }
}

// ----------------------------------------------------------------------
// The test
// ----------------------------------------------------------------------

#[test]
fn steady_state_allocations_per_message() {
    // The counter works, and counts only while asked to.
    let (v, allocs, _) = count(|| Vec::<u8>::with_capacity(100));
    assert_eq!(allocs, 1, "the counting allocator must see this allocation");
    drop(v);
    let (t, allocs, _) = count(|| Text::from("static"));
    assert_eq!(allocs, 0);
    drop(t);

    let mut rows = Vec::new();
    let mut push = |scenario, allowed: u64, (c, s): (Tally, Tally)| {
        rows.push(Row { scenario, side: "client", messages: MESSAGES, allowed, tally: c });
        rows.push(Row { scenario, side: "server", messages: MESSAGES, allowed, tally: s });
    };
    push("request+response, 64 B (zero-copy reads)", 0, rpc(Read::ZeroCopy, false, 64));
    push("request+response, 64 B (handle_input)", 0, rpc(Read::Copying, false, 64));
    push("request+response, 64 B, server holds payload (zero-copy reads)", 0, rpc(Read::ZeroCopy, true, 64));
    push("request+response, 64 B, server holds payload (handle_input)", 0, rpc(Read::Copying, true, 64));
    push("request+response, 4 KiB, server holds payload", 0, rpc(Read::ZeroCopy, true, 4096));
    push("request+response, 64 KiB payload", 0, rpc(Read::ZeroCopy, false, 64 * 1024));
    push("request+response, 64 KiB, server holds payload", 0, rpc(Read::ZeroCopy, true, 64 * 1024));
    // A 1 MiB frame read in pieces of a Unix socket's default buffer (214
    // KiB here): after the first frames, the block it was read into is
    // reclaimed in place (or the spare is, while the server still holds the
    // payload), so no frame allocates or grows a buffer.
    push("request+response, 1 MiB payload, 214 KiB reads", 0, rpc_read_by(Read::ZeroCopy, false, MIB, 214 * 1024));
    push(
        "request+response, 1 MiB, server holds payload, 214 KiB reads",
        0,
        rpc_read_by(Read::ZeroCopy, true, MIB, 214 * 1024),
    );
    push("request+error response, 64 B", 0, rpc_error());
    push("16 calls in flight, 64 B, 1000 B reads", 0, rpc_pipelined(16, 64, 1000));
    push("16 calls in flight, 4 KiB, 64 KiB reads", 0, rpc_pipelined(16, 4096, 64 * 1024));
    // By design, one allocation per call on each side: the client's
    // application builds a `Metadata` (a `Vec`) for every call, since
    // `CallOptions` takes it by value, and the server's connection hands its
    // application an owned `Metadata` in `IncomingCall` (one `Vec` of the
    // entries; keys and values stay zero-copy slices of the frame).
    push("request+response, 64 B + 1 metadata entry", 1, rpc_metadata());
    push("notification, 64 B", 0, notify());
    push("publish 64 B -> 1 subscriber", 0, publish(1, false));
    push("publish 64 B -> 4 subscribers", 0, publish(4, false));
    push("server publishes 64 B by topic name -> 1 subscriber", 0, publish(1, true));
    push("server publishes 64 B by topic name -> 4 subscribers", 0, publish(4, true));
    push("stream DATA 1 KiB + CREDIT", 0, stream(1024));
    push("stream DATA 4 KiB + CREDIT", 0, stream(4096));
    push("keepalive PING/PONG", 0, keepalive());
    push("idle wake-up after release_buffers (per wake-up)", 0, idle_wakeups());

    eprintln!();
    eprintln!("| scenario | side | messages | allocations | bytes | allocs/msg |");
    eprintln!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        eprintln!(
            "| {} | {} | {} | {} | {} | {:.4} |",
            r.scenario,
            r.side,
            r.messages,
            r.tally.allocs,
            r.tally.bytes,
            r.per_msg()
        );
    }

    let failures: Vec<String> = rows
        .iter()
        .filter(|r| r.tally.allocs != r.allowed * r.messages)
        .map(|r| {
            format!("{} / {}: {} allocations, expected {} per message", r.scenario, r.side, r.tally.allocs, r.allowed)
        })
        .collect();
    assert!(failures.is_empty(), "unexpected allocations in the steady state:\n{}", failures.join("\n"));
}

// ----------------------------------------------------------------------
// What a connection keeps after its handshake
// ----------------------------------------------------------------------

/// Once the handshake is over and nothing is buffered, a connection gives
/// back what the handshake took (its small blocks, the send queue's chunk
/// list, the event queue's slot): what it keeps on the heap is the peer's
/// name, copied out of the receive block (a slice of it would keep the
/// whole block alive), and nothing else.
#[test]
fn the_handshake_leaves_only_the_peers_name_on_the_heap() {
    for name in ["", "a client with a name"] {
        let now = Instant::now();
        let config = Arc::new(Config { name: Text::from(name.to_string()), ..Config::default() });
        // The first clone of a `Text` made from a `String` allocates its
        // shared header once, for the config (every connection's HELLO
        // clones it): not the connection's.
        drop(config.name.clone());
        let mut wire = Vec::with_capacity(WIRE);
        let (mut c, mut s) = (0i64, 0i64);
        let mut client = held(&mut c, || Connection::client(config.clone(), Bytes::new(), now).expect("client"));
        let mut server = held(&mut s, || Connection::server(config.clone(), now).expect("server"));
        held(&mut c, || write_out(&mut client, &mut wire, now));
        held(&mut s, || {
            read_in(&mut server, &mut wire, now);
            assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
            server.accept(1).expect("accept");
            write_out(&mut server, &mut wire, now);
        });
        held(&mut c, || read_in(&mut client, &mut wire, now));
        // The `Connected` events are kept: they hold the peer's name.
        let server_side = held(&mut s, || server.poll_event());
        let client_side = held(&mut c, || client.poll_event());
        for (side, ev, bytes) in [("server", server_side, s), ("client", client_side, c)] {
            let Some(Event::Connected(connected)) = ev else { panic!("{side}: not connected") };
            assert_eq!(connected.peer_name.as_str(), name);
            assert_eq!(bytes, name.len() as i64, "{side} ({name:?}): heap bytes kept after the handshake");
        }
        assert!(client.is_established() && server.is_established());
    }
}

/// A connected pair with a one-second keepalive: the interval, the time,
/// the wire and the two sides.
fn keepalive_pair() -> (Duration, Instant, Vec<u8>, Connection, Connection) {
    let k = Duration::from_secs(1);
    let now = Instant::now();
    let mut wire = Vec::with_capacity(WIRE);
    let (client, server) = pair(Config { keepalive_interval: Some(k), ..Config::default() }, now, &mut wire);
    (k, now, wire, client, server)
}

/// After its handshake, a connection holds nothing but the peer's name
/// (above); a keepalive round (the server's PING, the client's PONG) then
/// takes one small block each way and nothing else: no chunk list (the
/// coalescing block is written from as it is), no shared header for either
/// block (nothing is cut from them: a PING or PONG has no body), no queue
/// of pings (the keepalive's PING is tracked apart from the application's).
#[test]
fn a_keepalive_round_takes_only_the_small_blocks() {
    let (k, mut now, mut wire, mut client, mut server) = keepalive_pair();
    let (mut c, mut s) = (0i64, 0i64);
    now += k;
    held(&mut s, || {
        server.handle_timeout(now);
        write_out(&mut server, &mut wire, now);
    });
    held(&mut c, || {
        read_in(&mut client, &mut wire, now);
        write_out(&mut client, &mut wire, now);
    });
    held(&mut s, || read_in(&mut server, &mut wire, now));
    assert!(client.poll_event().is_none() && server.poll_event().is_none());
    assert_eq!(server.stats().keepalive_pings, 1);
    assert_eq!(s, 2 * 256, "server: a small send block and a small receive block");
    assert_eq!(c, 2 * 256, "client: the same, for the PING it read and the PONG it sent");
}

/// A peer that keeps talking but never answers PING: each keepalive
/// interval of its silence sends a new PING, and the connection remembers
/// only the latest, not one more per interval.
#[test]
fn unanswered_keepalive_pings_do_not_pile_up() {
    let (k, mut now, mut wire, mut client, mut server) = keepalive_pair();
    let mut s = 0i64;
    let mut after_first = 0;
    let mut lost = Vec::with_capacity(WIRE);
    for round in 0..200 {
        now += k;
        held(&mut s, || {
            server.handle_timeout(now);
            // Its PING never reaches the client.
            write_out(&mut server, &mut lost, now);
        });
        lost.clear();
        now += Duration::from_millis(10);
        client.notify("still here", payload(8), CallOptions::new()).expect("notify");
        write_out(&mut client, &mut wire, now);
        held(&mut s, || {
            read_in(&mut server, &mut wire, now);
            while server.poll_event().is_some() {}
        });
        if round == 0 {
            after_first = s;
        }
    }
    assert_eq!(server.stats().keepalive_pings, 200);
    assert!(server.is_established());
    assert_eq!(s, after_first, "server heap after 200 unanswered PINGs");
}
