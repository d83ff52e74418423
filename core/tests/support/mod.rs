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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
