//! Buffer memory held by a connection: small while idle, full blocks only
//! while the traffic needs them, given back by `release_buffers` and by the
//! keepalive of a silent connection, and never at the expense of frames the
//! application still holds.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_core::{Bytes, CallOptions, Config, Connection, Event};

/// The small first block of each direction.
const SMALL: usize = 256;

/// Moves everything `from` has queued into `to` through `to`'s receive
/// buffer, as an adapter's vectored write and zero-copy read do.
fn flush(from: &mut Connection, to: &mut Connection, now: Instant) {
    let mut wire = Vec::new();
    loop {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = from.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            wire.extend_from_slice(s);
            written += s.len();
        }
        from.advance_transmit(written, now);
    }
    let mut pos = 0;
    while pos < wire.len() {
        let buf = to.recv_buffer();
        let n = (buf.capacity() - buf.len()).min(wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        to.handle_received(n, now);
        pos += n;
    }
}

fn pair(config: Config, now: Instant) -> (Connection, Connection) {
    let config = Arc::new(config);
    let mut client = Connection::client(config.clone(), Bytes::new(), now).unwrap();
    let mut server = Connection::server(config, now).unwrap();
    assert_eq!(server.buffered_capacity(), 0, "a new server connection holds no buffer");
    flush(&mut client, &mut server, now);
    assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
    server.accept(1).unwrap();
    flush(&mut server, &mut client, now);
    assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(client.poll_event(), Some(Event::Connected(_))));
    (client, server)
}

fn payload(n: usize, seed: u8) -> Bytes {
    Bytes::from((0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
}

/// One call of `n` bytes echoed; returns the request payload as the server
/// received it (a slice of the server's receive block) and the response.
fn echo(client: &mut Connection, server: &mut Connection, n: usize, seed: u8, now: Instant) -> (Bytes, Bytes) {
    let id = client.request("echo", payload(n, seed), CallOptions::new(), now).unwrap();
    flush(client, server, now);
    let Some(Event::Request(call)) = server.poll_event() else { panic!("no request") };
    let held = call.payload.clone();
    server.respond(call.id, call.payload).unwrap();
    flush(server, client, now);
    let Some(Event::Response { id: r, result: Ok(body) }) = client.poll_event() else { panic!("no response") };
    assert_eq!(r, id);
    assert_eq!(body, payload(n, seed));
    (held, body)
}

#[test]
fn an_idle_connection_holds_small_blocks_and_a_released_one_none() {
    let now = Instant::now();
    let (mut client, mut server) = pair(Config { keepalive_interval: None, ..Config::default() }, now);
    // After the handshake: a small block each way at most.
    assert!(server.buffered_capacity() <= 2 * SMALL, "{}", server.buffered_capacity());
    assert!(client.buffered_capacity() <= 2 * SMALL, "{}", client.buffered_capacity());

    // Idle wake-ups (a read that finds nothing) do not grow it.
    for _ in 0..10 {
        let _ = server.recv_buffer();
    }
    assert!(server.buffered_capacity() <= 2 * SMALL);

    // Small calls fit the small blocks.
    for i in 0..100 {
        echo(&mut client, &mut server, 64, i, now);
    }
    assert!(server.buffered_capacity() <= 2 * SMALL, "{}", server.buffered_capacity());

    // A larger one moves to full blocks...
    let (held, _) = echo(&mut client, &mut server, 4096, 7, now);
    assert!(server.buffered_capacity() > 16 * 1024, "{}", server.buffered_capacity());
    assert!(client.buffered_capacity() > 8 * 1024, "{}", client.buffered_capacity());

    // ...which an idle connection gives back, while the application still
    // holds a payload cut from the receive block.
    server.release_buffers();
    client.release_buffers();
    assert_eq!(server.buffered_capacity(), 0);
    assert_eq!(client.buffered_capacity(), 0);

    // The next calls work, of both sizes, and reuse no memory still held.
    for i in 0..50 {
        echo(&mut client, &mut server, 64, i, now);
        echo(&mut client, &mut server, 8192, i, now);
    }
    assert_eq!(held, payload(4096, 7), "a payload held across the release is intact");
}

#[test]
fn release_keeps_what_is_buffered() {
    let now = Instant::now();
    let (mut client, mut server) = pair(Config { keepalive_interval: None, ..Config::default() }, now);
    let id = client.request("echo", payload(1000, 3), CallOptions::new(), now).unwrap();
    let mut wire = Vec::new();
    while let Some(chunk) = client.poll_transmit(now) {
        wire.extend_from_slice(&chunk);
    }
    // Half a frame in the server's receive buffer: a release leaves it.
    let half = wire.len() / 2;
    server.handle_input(&wire[..half], now);
    server.release_buffers();
    assert!(server.buffered_capacity() >= half);
    server.handle_input(&wire[half..], now);
    let Some(Event::Request(call)) = server.poll_event() else { panic!("no request") };
    assert_eq!(call.payload, payload(1000, 3));

    // A response queued and not yet written: a release leaves it too.
    server.respond(call.id, call.payload).unwrap();
    server.release_buffers();
    assert!(server.wants_write());
    flush(&mut server, &mut client, now);
    let Some(Event::Response { id: r, result: Ok(body) }) = client.poll_event() else { panic!("no response") };
    assert_eq!((r, body), (id, payload(1000, 3)));
}

#[test]
fn keepalive_of_a_silent_connection_releases_full_blocks() {
    let k = Duration::from_secs(1);
    let mut now = Instant::now();
    let (mut client, mut server) = pair(Config { keepalive_interval: Some(k), ..Config::default() }, now);
    echo(&mut client, &mut server, 16 * 1024, 1, now);
    assert!(server.buffered_capacity() > 16 * 1024, "{}", server.buffered_capacity());

    // A keepalive interval of silence: the server's PING goes out of a small
    // block and its receive block is given back.
    now += k;
    server.handle_timeout(now);
    client.handle_timeout(now);
    assert!(server.wants_write());
    assert!(server.buffered_capacity() <= SMALL, "{}", server.buffered_capacity());
    assert!(client.buffered_capacity() <= SMALL, "{}", client.buffered_capacity());
    flush(&mut server, &mut client, now);
    flush(&mut client, &mut server, now);
    assert!(client.poll_event().is_none() && server.poll_event().is_none());
    assert!(server.buffered_capacity() <= 2 * SMALL, "{}", server.buffered_capacity());

    // And the connection goes on.
    echo(&mut client, &mut server, 64, 2, now);
    echo(&mut client, &mut server, 100_000, 3, now);
    assert!(client.is_established() && server.is_established());
}

#[test]
fn the_handshake_leaves_no_buffer_behind() {
    let now = Instant::now();
    let (mut client, mut server) = pair(Config { keepalive_interval: None, ..Config::default() }, now);
    // Once the handshake's frames are written and read and its events
    // taken, both sides give their small blocks back: an idle connection
    // holds no buffer, and a driver asking `has_recv_room` waits for data
    // before taking one.
    assert_eq!(server.buffered_capacity(), 0);
    assert_eq!(client.buffered_capacity(), 0);
    assert!(!server.has_recv_room() && !client.has_recv_room());

    // The first call takes small blocks again, not full ones.
    echo(&mut client, &mut server, 64, 1, now);
    assert!(server.buffered_capacity() <= 2 * SMALL, "{}", server.buffered_capacity());
    assert!(server.has_recv_room());
    // Only once: a connection that went on talking keeps its small blocks.
    for i in 0..10 {
        echo(&mut client, &mut server, 64, i, now);
        assert!(server.buffered_capacity() > 0 && client.buffered_capacity() > 0);
    }
}

#[test]
fn the_handshake_blocks_go_only_once_nothing_is_buffered() {
    let now = Instant::now();
    let config = Arc::new(Config { keepalive_interval: None, ..Config::default() });
    let mut client = Connection::client(config.clone(), Bytes::new(), now).unwrap();
    let mut server = Connection::server(config, now).unwrap();
    flush(&mut client, &mut server, now);
    assert!(matches!(server.poll_event(), Some(Event::HandshakeRequest(_))));
    server.accept(1).unwrap();
    // The server calls the client at once: its REQUEST reaches the client
    // in the same read as the WELCOME.
    let id = server.request("hello", payload(100, 9), CallOptions::new(), now).unwrap();
    flush(&mut server, &mut client, now);
    assert!(matches!(client.poll_event(), Some(Event::Connected(_))));
    // An event is still waiting: the blocks stay.
    assert!(client.buffered_capacity() > 0);
    let Some(Event::Request(call)) = client.poll_event() else { panic!("no request") };
    // Now nothing is buffered: they go, and the payload cut from the
    // receive block stays intact.
    assert_eq!(client.buffered_capacity(), 0);
    assert_eq!(call.payload, payload(100, 9));
    client.respond(call.id, call.payload.clone()).unwrap();
    flush(&mut client, &mut server, now);
    assert!(matches!(server.poll_event(), Some(Event::Connected(_))));
    let Some(Event::Response { id: r, result: Ok(body) }) = server.poll_event() else { panic!("no response") };
    assert_eq!((r, body), (id, payload(100, 9)));
    assert_eq!(call.payload, payload(100, 9));
}
