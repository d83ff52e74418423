//! Micro-benchmarks of `wharf-core`: the wire codec, connections driven by
//! hand in memory, and the broker's fan-out.
//!
//! Run with `cargo bench -p wharf-core` (add a filter to run a subset, for
//! example `cargo bench -p wharf-core -- conn/`). Nothing here touches a
//! socket: the figures are the cost of the protocol machine alone, the
//! floor under any adapter.
//!
//! Groups:
//!
//! - `encode/<FRAME>`, `decode/<FRAME>`: one frame of each kind through the
//!   public wire API ([`Frame::encode`], [`Frame::decode_one`]), 64-byte
//!   payloads where the frame has one (MESSAGES: 16 of them).
//! - `conn/...`: two `Connection`s in steady state after the handshake,
//!   bytes moved by hand the way an adapter moves them (`transmit_slices` +
//!   `advance_transmit` into a reused buffer, `recv_buffer` +
//!   `handle_received` on the other side, events polled): a unary request
//!   and its response, a notification, one stream DATA chunk with its
//!   credit returned.
//! - `broker/fanout/N`: `Broker::publish` of a 64-byte message to N
//!   subscribers and every subscriber's `next_delivery`.
//! - `pubsub/N`: the same end to end: a client's PUBLISH read by its server
//!   connection, the broker, and one MESSAGE delivered over each of N
//!   subscriber connections and read by each subscriber client.
//! - `pubsub_burst/N`: the server application publishes 64 messages by
//!   name, each subscriber's server connection takes them as MESSAGES
//!   batches and each client walks them (time per burst of 64).

use std::hint::black_box;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use wharf_core::broker::{Broker, BrokerConfig, Delivery, SubscriberId};
use wharf_core::wire::{
    ErrorBody, Frame, Goodbye, Hello, MAX_FRAME_SIZE_CEILING, MessageBatch, NO_HINT, Notify, Reject, Request, Welcome,
};
use wharf_core::{
    Bytes, BytesMut, CallKind, CallOptions, Code, Config, Connection, Event, Metadata, SlowConsumerPolicy,
    SubscribeOptions, SubscriptionId, Text, Timeout,
};

/// Payload size of the message benchmarks.
const PAYLOAD: usize = 64;

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

// ----------------------------------------------------------------------
// Wire
// ----------------------------------------------------------------------

/// Messages in the MESSAGES frame of the codec benchmarks.
const BATCH: usize = 16;

/// The items of a MESSAGES frame: `n` copies of `payload`, each after its
/// 4-byte little-endian length (PROTOCOL.md 6.14a).
fn batch_items(payload: &[u8], n: usize) -> Bytes {
    let mut items = BytesMut::with_capacity(n * (4 + payload.len()));
    for _ in 0..n {
        items.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        items.extend_from_slice(payload);
    }
    items.freeze()
}

/// One frame of every kind, named as in PROTOCOL.md.
fn frames() -> Vec<(&'static str, Frame)> {
    let p = payload(PAYLOAD);
    vec![
        (
            "HELLO",
            Frame::Hello(Hello {
                min_version: 1,
                max_version: 1,
                max_frame_size: 16 << 20,
                max_in_flight: 128,
                max_streams: 128,
                initial_stream_window: 256 << 10,
                keepalive_ms: 10_000,
                client_name: Text::from_static("bench-client"),
                auth: Bytes::from_static(b"token"),
            }),
        ),
        (
            "WELCOME",
            Frame::Welcome(Welcome {
                connection_id: 7,
                version: 1,
                max_frame_size: 16 << 20,
                max_in_flight: 128,
                max_streams: 128,
                max_subscriptions: 512,
                initial_stream_window: 256 << 10,
                keepalive_ms: 10_000,
                server_name: Text::from_static("bench-server"),
            }),
        ),
        (
            "REJECT",
            Frame::Reject(Reject {
                code: Code::AUTH_FAILED,
                retry_after_ms: NO_HINT,
                min_version: 1,
                max_version: 1,
                reason: Text::from_static("bad token"),
            }),
        ),
        (
            "REQUEST",
            Frame::Request(Request {
                id: 1,
                kind: CallKind::Unary,
                method: Text::from_static("echo"),
                deadline_ms: Some(25_000),
                trace_id: None,
                metadata: Metadata::new(),
                payload: p.clone(),
            }),
        ),
        ("RESPONSE", Frame::Response { id: 1, payload: p.clone() }),
        (
            "ERROR",
            Frame::Error(ErrorBody {
                id: 1,
                code: Code::UNKNOWN_METHOD,
                message: Text::from_static("no handler for this method"),
                data: Bytes::new(),
            }),
        ),
        (
            "NOTIFY",
            Frame::Notify(Notify {
                method: Text::from_static("tick"),
                trace_id: None,
                metadata: Metadata::new(),
                payload: p.clone(),
            }),
        ),
        ("CANCEL", Frame::Cancel { id: 1 }),
        ("DATA", Frame::Data { id: 1, payload: p.clone() }),
        ("END", Frame::End { id: 1 }),
        ("CREDIT", Frame::Credit { id: 1, increment: 128 << 10 }),
        (
            "SUBSCRIBE",
            Frame::Subscribe {
                id: 3,
                topic: Text::from_static("sensors/"),
                prefix: true,
                policy: SlowConsumerPolicy::DropOldest,
            },
        ),
        ("UNSUBSCRIBE", Frame::Unsubscribe { id: 5, subscription: 3 }),
        ("PUBLISH", Frame::Publish { id: 0, topic: Text::from_static("sensors/temp"), payload: p.clone() }),
        ("MESSAGE", Frame::Message { subscription: 3, topic: Text::from_static("sensors/temp"), payload: p.clone() }),
        (
            "MESSAGES",
            Frame::Messages {
                subscription: 3,
                topic: Text::from_static("sensors/temp"),
                batch: MessageBatch::new(batch_items(&p, BATCH)).expect("well-formed batch"),
            },
        ),
        ("LAGGED", Frame::Lagged { subscription: 3, dropped: 12 }),
        ("ACK", Frame::Ack { id: 5, status: Code::OK, value: 4 }),
        ("PING", Frame::Ping { id: 9 }),
        ("PONG", Frame::Pong { id: 9 }),
        (
            "GOODBYE",
            Frame::Goodbye(Goodbye {
                code: Code::OK,
                reconnect_after_ms: 1_000,
                message: Text::from_static("shutting down"),
            }),
        ),
    ]
}

fn wire(c: &mut Criterion) {
    let frames = frames();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &frames {
        let mut out = BytesMut::with_capacity(4096);
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                black_box(frame).encode(&mut out).expect("encodable");
                black_box(out.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &frames {
        let bytes = frame.to_bytes().expect("encodable");
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut input = black_box(&bytes).clone();
                black_box(Frame::decode_one(&mut input, MAX_FRAME_SIZE_CEILING).expect("valid").expect("whole"))
            })
        });
    }
    g.finish();
}

// ----------------------------------------------------------------------
// Connections driven by hand
// ----------------------------------------------------------------------

/// Writes everything `conn` has queued into `wire`, vectored.
fn write_out(conn: &mut Connection, wire: &mut Vec<u8>, now: Instant) {
    loop {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = conn.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            wire.extend_from_slice(s);
            written += s.len();
        }
        conn.advance_transmit(written, now);
    }
}

/// Feeds `wire` to `conn` through `recv_buffer` + `handle_received`.
fn read_in(conn: &mut Connection, wire: &mut Vec<u8>, now: Instant) {
    let mut pos = 0;
    while pos < wire.len() {
        let buf = conn.recv_buffer();
        let n = (buf.capacity() - buf.len()).min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        conn.handle_received(n, now);
        pos += n;
    }
    wire.clear();
}

/// A client and a server connection with the handshake done.
fn pair(now: Instant, wire: &mut Vec<u8>) -> (Connection, Connection) {
    let config = Arc::new(Config::default());
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
    (client, server)
}

fn conn(c: &mut Criterion) {
    let mut g = c.benchmark_group("conn");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let body = payload(PAYLOAD);

    {
        let mut wire = Vec::with_capacity(1 << 20);
        let (mut client, mut server) = pair(now, &mut wire);
        g.bench_function("request_response_64B", |b| {
            b.iter(|| {
                client.request("echo", body.clone(), CallOptions::new(), now).expect("request");
                write_out(&mut client, &mut wire, now);
                read_in(&mut server, &mut wire, now);
                let Some(Event::Request(call)) = server.poll_event() else { panic!("expected a request") };
                server.respond(call.id, call.payload).expect("respond");
                write_out(&mut server, &mut wire, now);
                read_in(&mut client, &mut wire, now);
                black_box(client.poll_event().expect("the response"))
            })
        });
    }

    {
        let mut wire = Vec::with_capacity(1 << 20);
        let (mut client, mut server) = pair(now, &mut wire);
        g.bench_function("notify_64B", |b| {
            b.iter(|| {
                client.notify("tick", body.clone(), CallOptions::new()).expect("notify");
                write_out(&mut client, &mut wire, now);
                read_in(&mut server, &mut wire, now);
                black_box(server.poll_event().expect("the notification"))
            })
        });
    }

    for size in [PAYLOAD, 4096] {
        let mut wire = Vec::with_capacity(1 << 20);
        let (mut client, mut server) = pair(now, &mut wire);
        let options = CallOptions::new().kind(CallKind::ClientStream).timeout(Timeout::Never);
        let id = client.request("upload", Bytes::new(), options, now).expect("open the stream");
        write_out(&mut client, &mut wire, now);
        read_in(&mut server, &mut wire, now);
        assert!(matches!(server.poll_event(), Some(Event::Request(_))));
        let chunk = payload(size);
        g.bench_function(BenchmarkId::new("stream_data_with_credit", format!("{size}B")), |b| {
            b.iter(|| {
                client.stream_send(id, chunk.clone()).expect("credit keeps up");
                write_out(&mut client, &mut wire, now);
                read_in(&mut server, &mut wire, now);
                let Some(Event::StreamData { id, payload }) = server.poll_event() else { panic!("expected data") };
                server.stream_consumed(id, payload.len());
                // A CREDIT frame every half window (128 KiB by default).
                write_out(&mut server, &mut wire, now);
                if !wire.is_empty() {
                    read_in(&mut client, &mut wire, now);
                }
                black_box(payload)
            })
        });
    }
    g.finish();
}

// ----------------------------------------------------------------------
// Broker
// ----------------------------------------------------------------------

/// A broker and `n` subscriber connection pairs (client, server), each
/// subscribed to `topic` and acknowledged, with the broker's events taken.
fn subscribed(
    n: usize,
    topic: &Text,
    now: Instant,
    wire: &mut Vec<u8>,
) -> (Broker, Vec<(SubscriberId, Connection, Connection)>) {
    let mut broker = Broker::new(BrokerConfig::default()).expect("broker");
    let mut subs = Vec::with_capacity(n);
    for s in 0..n as u64 {
        let (mut client, mut server) = pair(now, wire);
        broker.add_subscriber(SubscriberId(s));
        client.subscribe(topic.clone(), SubscribeOptions::default()).expect("subscribe");
        write_out(&mut client, wire, now);
        read_in(&mut server, wire, now);
        let Some(Event::Subscribe { id, topic, prefix, policy }) = server.poll_event() else { panic!("subscribe") };
        broker.subscribe(SubscriberId(s), id, topic, prefix, policy).expect("broker subscribe");
        server.accept_subscription(id).expect("accept");
        write_out(&mut server, wire, now);
        read_in(&mut client, wire, now);
        assert!(matches!(client.poll_event(), Some(Event::SubscribeResult { result: Ok(()), .. })));
        subs.push((SubscriberId(s), client, server));
    }
    while broker.poll_event().is_some() {}
    (broker, subs)
}

const FANOUT: [usize; 3] = [1, 4, 64];

fn broker(c: &mut Criterion) {
    let topic = Text::from_static("sensors/temp");
    let body = payload(PAYLOAD);

    let mut g = c.benchmark_group("broker/fanout");
    for n in FANOUT {
        let mut broker = Broker::new(BrokerConfig::default()).expect("broker");
        for s in 0..n as u64 {
            broker.add_subscriber(SubscriberId(s));
            broker
                .subscribe(SubscriberId(s), SubscriptionId(1), topic.clone(), false, SlowConsumerPolicy::DropOldest)
                .expect("subscribe");
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let report = broker.publish(black_box(&topic), &body);
                while broker.poll_event().is_some() {}
                for s in 0..n as u64 {
                    while let Some(d) = broker.next_delivery(SubscriberId(s)) {
                        black_box(d);
                    }
                }
                report
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pubsub");
    let now = Instant::now();
    for n in FANOUT {
        let mut wire = Vec::with_capacity(1 << 20);
        let (mut publisher, mut pub_server) = pair(now, &mut wire);
        let (mut broker, mut subs) = subscribed(n, &topic, now, &mut wire);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                publisher.publish(topic.clone(), body.clone(), false).expect("publish");
                write_out(&mut publisher, &mut wire, now);
                read_in(&mut pub_server, &mut wire, now);
                let Some(Event::Publish { topic, payload, .. }) = pub_server.poll_event() else {
                    panic!("expected a publish")
                };
                broker.publish(&topic, &payload);
                while broker.poll_event().is_some() {}
                for (sid, client, server) in &mut subs {
                    while let Some(d) = broker.next_delivery(*sid) {
                        let Delivery::Message { subscription, topic, payload } = d else { panic!("lagged") };
                        server.deliver(subscription, &topic, payload).expect("deliver");
                    }
                    write_out(server, &mut wire, now);
                    read_in(client, &mut wire, now);
                    black_box(client.poll_event().expect("the message"));
                }
            })
        });
    }
    g.finish();

    // The server application publishes BURST messages by topic name, then
    // each subscriber's connection takes them (one MESSAGES frame) and its
    // client takes the batch and walks it: the cost per message delivered.
    const BURST: usize = 64;
    let mut g = c.benchmark_group("pubsub_burst");
    for n in FANOUT {
        let mut wire = Vec::with_capacity(1 << 20);
        let (mut broker, mut subs) = subscribed(n, &topic, now, &mut wire);
        g.throughput(Throughput::Elements((n * BURST) as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                for _ in 0..BURST {
                    broker.publish_str("sensors/temp", &body);
                }
                while broker.poll_event().is_some() {}
                for (sid, client, server) in &mut subs {
                    broker.deliver_into(*sid, server, usize::MAX);
                    write_out(server, &mut wire, now);
                    read_in(client, &mut wire, now);
                    let mut got = 0;
                    while let Some((_, _, batch)) = client.poll_message_batch() {
                        for m in batch.iter() {
                            black_box(m);
                            got += 1;
                        }
                    }
                    assert_eq!(got, BURST);
                }
            })
        });
    }
    g.finish();
}

fn main() {
    // Short runs by default (about 2.5 s per benchmark); criterion's own
    // flags (`--warm-up-time`, `--measurement-time`, ...) override these.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    wire(&mut c);
    conn(&mut c);
    broker(&mut c);
    c.final_summary();
}
