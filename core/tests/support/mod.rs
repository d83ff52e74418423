//! Two-sided test harness on virtual time (the idea of quinn-proto's `Pair`).
//!
//! Two [`Connection`]s, a byte pipe each way, and a clock that only moves
//! when a test moves it. Bytes can be delivered whole, one at a time, or in
//! a repeating pattern of chunk sizes; writes can be made partial. Events
//! are collected per side.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_core::wire::{Frame, HEADER_LEN, Hello, PREAMBLE, Welcome};
use wharf_core::{Bytes, Config, Connection, Event};

/// How bytes move between the two sides.
#[derive(Clone, Debug)]
pub enum Chunking {
    /// Everything available in one `handle_input`.
    Whole,
    /// Repeating pattern of read sizes (each > 0).
    Pattern(Vec<usize>),
}

/// One direction of the pipe.
#[derive(Default)]
pub struct Pipe {
    pub bytes: VecDeque<u8>,
    /// Set once the writer shut down its side.
    pub eof: bool,
    pub eof_delivered: bool,
    pattern_pos: usize,
}

pub struct Side {
    pub conn: Connection,
    pub events: Vec<Event>,
    /// Everything this side ever wrote (for transcripts).
    pub wrote: Vec<u8>,
    /// When false, this side does not read (a peer that never reads).
    pub reading: bool,
    /// Use the zero-copy `recv_buffer` path instead of `handle_input`.
    pub zero_copy: bool,
}

impl Side {
    fn new(conn: Connection) -> Side {
        Side { conn, events: Vec::new(), wrote: Vec::new(), reading: true, zero_copy: false }
    }

    /// Takes the collected events.
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn drain_events(&mut self) -> bool {
        let mut any = false;
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
            any = true;
        }
        any
    }
}

pub struct Pair {
    pub client: Side,
    pub server: Side,
    pub c2s: Pipe,
    pub s2c: Pipe,
    pub now: Instant,
    pub chunking: Chunking,
    /// Largest single write (partial writes when small).
    pub max_write: usize,
    /// Accept the handshake automatically with this connection id.
    pub auto_accept: Option<u64>,
}

pub fn config() -> Config {
    Config::default()
}

impl Pair {
    /// Client and server with the given configs; nothing exchanged yet.
    pub fn new(client: Config, server: Config) -> Pair {
        Pair::with_auth(client, server, Bytes::new())
    }

    pub fn with_auth(client: Config, server: Config, auth: Bytes) -> Pair {
        let now = Instant::now();
        let c = Connection::client(Arc::new(client), auth, now).expect("client config");
        let s = Connection::server(Arc::new(server), now).expect("server config");
        Pair {
            client: Side::new(c),
            server: Side::new(s),
            c2s: Pipe::default(),
            s2c: Pipe::default(),
            now,
            chunking: Chunking::Whole,
            max_write: usize::MAX,
            auto_accept: Some(7),
        }
    }

    /// A pair with the handshake done and the `Connected` events consumed.
    pub fn connected() -> Pair {
        Pair::connected_with(config(), config())
    }

    pub fn connected_with(client: Config, server: Config) -> Pair {
        let mut p = Pair::new(client, server);
        p.drive();
        assert!(p.client.conn.is_established(), "client not established: {:?}", p.client.events);
        assert!(p.server.conn.is_established(), "server not established: {:?}", p.server.events);
        let ce = p.client.take();
        let se = p.server.take();
        assert!(matches!(ce.as_slice(), [Event::Connected(_)]), "{ce:?}");
        assert!(matches!(se.as_slice(), [Event::HandshakeRequest(_), Event::Connected(_)]), "{se:?}");
        p
    }

    /// Moves bytes and events until nothing changes. Panics on livelock.
    pub fn drive(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("pair did not become idle (livelock)");
    }

    /// One round: write, read, drain events each way. True if anything moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        moved |= flush(&mut self.client, &mut self.c2s, self.now, self.max_write);
        moved |= flush(&mut self.server, &mut self.s2c, self.now, self.max_write);
        moved |= deliver(&mut self.c2s, &mut self.server, self.now, &self.chunking);
        moved |= deliver(&mut self.s2c, &mut self.client, self.now, &self.chunking);
        moved |= self.client.drain_events();
        if self.server.drain_events() {
            moved = true;
            if let Some(id) = self.auto_accept
                && self.server.events.iter().any(|e| matches!(e, Event::HandshakeRequest(_)))
                && !self.server.conn.is_established()
                && !self.server.conn.is_closed()
            {
                self.server.conn.accept(id).expect("accept");
            }
        }
        moved
    }

    /// Advances the clock by `d`, fires timers on both sides, drives.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.conn.handle_timeout(self.now);
        self.server.conn.handle_timeout(self.now);
        self.drive();
    }

    /// Advances in steps of `step` until `total` has passed.
    pub fn advance_by_steps(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.advance(step.min(end - self.now));
        }
    }

    /// The client's side of the byte stream ends (as after a crash).
    pub fn client_eof(&mut self) {
        self.c2s.eof = true;
        self.drive();
    }

    pub fn server_eof(&mut self) {
        self.s2c.eof = true;
        self.drive();
    }
}

/// Writes what `side` has queued into `pipe`, honouring `max_write`.
fn flush(side: &mut Side, pipe: &mut Pipe, now: Instant, max_write: usize) -> bool {
    if pipe.eof {
        // The writer is gone: drop what it would have written.
        while side.conn.poll_transmit(now).is_some() {}
        return false;
    }
    let mut moved = false;
    loop {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = side.conn.transmit_slices(now, &mut slices);
        if n == 0 {
            break;
        }
        let mut written = 0;
        for s in &slices[..n] {
            let take = s.len().min(max_write - written);
            pipe.bytes.extend(&s[..take]);
            side.wrote.extend_from_slice(&s[..take]);
            written += take;
            if written == max_write {
                break;
            }
        }
        side.conn.advance_transmit(written, now);
        moved = true;
        if written == 0 {
            break;
        }
    }
    moved
}

/// Feeds bytes from `pipe` into `side` according to `chunking`.
fn deliver(pipe: &mut Pipe, side: &mut Side, now: Instant, chunking: &Chunking) -> bool {
    if !side.reading {
        return false;
    }
    let mut moved = false;
    while !pipe.bytes.is_empty() && side.conn.wants_read() {
        let n = match chunking {
            Chunking::Whole => pipe.bytes.len(),
            Chunking::Pattern(p) => {
                let n = p[pipe.pattern_pos % p.len()];
                pipe.pattern_pos += 1;
                n.min(pipe.bytes.len())
            }
        };
        let chunk: Vec<u8> = pipe.bytes.drain(..n).collect();
        if side.zero_copy {
            let buf = side.conn.recv_buffer();
            buf.extend_from_slice(&chunk);
            side.conn.handle_received(chunk.len(), now);
        } else {
            side.conn.handle_input(&chunk, now);
        }
        moved = true;
    }
    if pipe.eof && pipe.bytes.is_empty() && !pipe.eof_delivered {
        pipe.eof_delivered = true;
        side.conn.handle_eof(now);
        moved = true;
    }
    moved
}

/// Splits `events` into those matching `f` and the rest.
pub fn find<T>(events: &[Event], f: impl Fn(&Event) -> Option<T>) -> Vec<T> {
    events.iter().filter_map(f).collect()
}

/// The message events among `events`, in order: subscription, topic, payload.
pub fn messages(events: &[Event]) -> Vec<(wharf_core::SubscriptionId, String, Bytes)> {
    find(events, |e| match e {
        Event::Message { subscription, topic, payload } => Some((*subscription, topic.to_string(), payload.clone())),
        _ => None,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ----------------------------------------------------------------------
// One connection whose peer is played by hand-built bytes
// ----------------------------------------------------------------------

/// Encodes well-formed frames back to back.
pub fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend_from_slice(&f.to_bytes().expect("encodable"));
    }
    v
}

/// Decodes a stream of whole frames; panics on anything else.
pub fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match Frame::decode_one(&mut buf, u32::MAX) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => panic!("a partial frame trails the stream"),
            Err(e) => panic!("undecodable frame: {e}"),
        }
    }
    out
}

/// Frames written by a side of a [`Pair`] after the preamble.
pub fn frames_of(wrote: &[u8]) -> Vec<Frame> {
    assert_eq!(wrote[..PREAMBLE.len()], PREAMBLE);
    decode_all(&wrote[PREAMBLE.len()..])
}

/// A raw 16-byte frame header, any field any value (PROTOCOL.md 5):
/// `len` u32, `type` u8, `flags` u8, `reserved` u16, `id` u64, little-endian.
pub fn raw_header(len: u32, ty: u8, flags: u8, reserved: u16, id: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = ty;
    h[5] = flags;
    h[6..8].copy_from_slice(&reserved.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// A raw frame: a header whose `len` is the body's length, then the body.
pub fn raw_frame(ty: u8, flags: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = raw_header(u32::try_from(body.len()).expect("body fits u32"), ty, flags, 0, id).to_vec();
    v.extend_from_slice(body);
    v
}

/// A str16 field: u16 byte count, then the bytes (which need not be valid).
pub fn str16(s: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(s.len()).expect("fits u16").to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// The HELLO a default client would send for `c`, without keepalive wish.
pub fn hello_of(c: &Config) -> Frame {
    Frame::Hello(Hello {
        min_version: 1,
        max_version: 1,
        max_frame_size: c.max_frame_size,
        max_in_flight: c.max_in_flight,
        max_streams: c.max_streams,
        initial_stream_window: c.initial_stream_window,
        keepalive_ms: 0,
        client_name: c.name.clone(),
        auth: Bytes::new(),
    })
}

/// The WELCOME a server with config `c` would send (connection id 7).
pub fn welcome_of(c: &Config) -> Frame {
    Frame::Welcome(Welcome {
        connection_id: 7,
        version: 1,
        max_frame_size: c.max_frame_size,
        max_in_flight: c.max_in_flight,
        max_streams: c.max_streams,
        max_subscriptions: c.max_subscriptions,
        initial_stream_window: c.initial_stream_window,
        keepalive_ms: 0,
        server_name: c.name.clone(),
    })
}

/// One connection with the peer played by hand-built frames, on virtual
/// time. Events are collected; everything written is kept in `wrote`.
pub struct Solo {
    pub conn: Connection,
    pub now: Instant,
    pub events: Vec<Event>,
    pub wrote: Vec<u8>,
    /// How much of `wrote` [`sent`](Self::sent) has returned.
    pub read: usize,
}

impl Solo {
    /// A fresh server that has received nothing yet.
    pub fn fresh_server(cfg: Config) -> Solo {
        let now = Instant::now();
        Solo { conn: Connection::server(Arc::new(cfg), now).unwrap(), now, events: vec![], wrote: vec![], read: 0 }
    }

    /// A fresh client; its preamble and HELLO are written out (and
    /// skipped by [`sent`](Self::sent)).
    pub fn fresh_client(cfg: Config) -> Solo {
        let now = Instant::now();
        let mut s = Solo {
            conn: Connection::client(Arc::new(cfg), Bytes::new(), now).unwrap(),
            now,
            events: vec![],
            wrote: vec![],
            read: 8,
        };
        s.pump();
        assert!(matches!(s.sent().as_slice(), [Frame::Hello(_)]));
        s
    }

    /// An established server whose client is played by hand.
    pub fn server(cfg: Config) -> Solo {
        let mut s = Solo::fresh_server(cfg);
        let mut input = PREAMBLE.to_vec();
        input.extend(encode(&[hello_of(&config())]));
        s.conn.handle_input(&input, s.now);
        s.pump();
        assert!(matches!(s.take().as_slice(), [Event::HandshakeRequest(_)]));
        s.conn.accept(7).unwrap();
        s.pump();
        assert!(matches!(s.take().as_slice(), [Event::Connected(_)]));
        assert_eq!(s.wrote[..8], PREAMBLE);
        s.read = 8;
        assert!(matches!(s.sent().as_slice(), [Frame::Welcome(_)]));
        s
    }

    /// An established client whose server is played by hand.
    pub fn client(cfg: Config) -> Solo {
        let mut s = Solo::fresh_client(cfg);
        let mut input = PREAMBLE.to_vec();
        input.extend(encode(&[welcome_of(&config())]));
        s.conn.handle_input(&input, s.now);
        s.pump();
        assert!(matches!(s.take().as_slice(), [Event::Connected(_)]));
        s
    }

    /// Collects what the connection wrote and the events it emitted.
    pub fn pump(&mut self) {
        while let Some(chunk) = self.conn.poll_transmit(self.now) {
            self.wrote.extend_from_slice(&chunk);
        }
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
    }

    /// Feeds well-formed frames in one read.
    pub fn feed(&mut self, frames: &[Frame]) {
        self.conn.handle_input(&encode(frames), self.now);
        self.pump();
    }

    /// Feeds raw bytes in one read.
    pub fn feed_raw(&mut self, bytes: &[u8]) {
        self.conn.handle_input(bytes, self.now);
        self.pump();
    }

    /// The peer's byte stream ends.
    pub fn eof(&mut self) {
        self.conn.handle_eof(self.now);
        self.pump();
    }

    /// Moves the clock by `d` and fires the timers due.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.conn.handle_timeout(self.now);
        self.pump();
    }

    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Frames written since the last call.
    pub fn sent(&mut self) -> Vec<Frame> {
        let frames = decode_all(&self.wrote[self.read..]);
        self.read = self.wrote.len();
        frames
    }
}
