//! Basic end-to-end flows through the harness, under several chunkings.

mod support;

use std::time::Duration;

use support::{Chunking, Pair};
use wharf_core::{Bytes, CallOptions, Code, Event, SubscribeOptions};

fn echo_round(p: &mut Pair) {
    let now = p.now;
    let id = p.client.conn.request("echo", Bytes::from_static(b"hello"), CallOptions::new(), now).unwrap();
    p.drive();
    let evs = p.server.take();
    let Some(Event::Request(call)) = evs.into_iter().next() else { panic!("no request") };
    assert_eq!(call.method, "echo");
    p.server.conn.respond(call.id, call.payload).unwrap();
    p.drive();
    assert_eq!(p.client.take(), vec![Event::Response { id, result: Ok(Bytes::from_static(b"hello")) }]);
}

#[test]
fn handshake_and_call_whole() {
    let mut p = Pair::connected();
    echo_round(&mut p);
}

#[test]
fn handshake_and_call_one_byte_at_a_time_with_partial_writes() {
    let mut p = Pair::new(support::config(), support::config());
    p.chunking = Chunking::Pattern(vec![1]);
    p.max_write = 3;
    p.client.zero_copy = true;
    p.drive();
    assert!(p.client.conn.is_established());
    p.client.take();
    p.server.take();
    echo_round(&mut p);
}

#[test]
fn pubsub_roundtrip_and_goodbye() {
    let mut p = Pair::connected();
    let sub = p.client.conn.subscribe("news/", SubscribeOptions { prefix: true, ..Default::default() }).unwrap();
    p.drive();
    let evs = p.server.take();
    let Some(Event::Subscribe { id, .. }) = evs.first().cloned() else { panic!("{evs:?}") };
    assert_eq!(id, sub);
    p.server.conn.accept_subscription(id).unwrap();
    p.server.conn.deliver(id, &"news/a".into(), Bytes::from_static(b"x")).unwrap();
    p.drive();
    let evs = p.client.take();
    assert!(matches!(evs[0], Event::SubscribeResult { result: Ok(()), .. }), "{evs:?}");
    assert!(matches!(evs[1], Event::Message { .. }), "{evs:?}");
    let now = p.now;
    p.server.conn.close(Code::SHUTTING_DOWN, "restart", Some(Duration::from_millis(500)), now);
    p.drive();
    let evs = p.client.take();
    assert!(
        matches!(&evs[0], Event::GoodbyeReceived { reconnect_after: Some(d), .. } if *d == Duration::from_millis(500)),
        "{evs:?}"
    );
    assert!(p.server.conn.is_closed());
}
