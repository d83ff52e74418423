//! The fuzzed peer: structured frames (`FrameSpec`) encoded with the real
//! encoder, with ids picked from the ones actually in play so that the
//! interesting paths (answers to our calls, stream frames, ACKs) are reached
//! without guessing 64-bit numbers.

use arbitrary::Arbitrary;
use bytes::Bytes;
use wharf_core::wire::{
    CallKind, Code, ErrorBody, Frame, Goodbye, HEADER_LEN, Header, Hello, MessageBatch, Metadata, Notify, Reject,
    Request, SlowConsumerPolicy, Welcome,
};
use wharf_core::{Role, Text};

use crate::zeros;

/// Short names that matter to the core (topics with a common prefix,
/// multi-byte characters for prefix matching on char boundaries).
const WORDS: [&str; 9] = ["a", "echo", "news/", "news/a", "news/b", "x", "é/", "é/x", "stream"];

/// A method, topic, name or message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Name {
    /// "".
    Empty,
    /// One of a few short words.
    Word(u8),
    /// `5 * n` bytes of 'm' (crosses the configured length limits).
    Long(u8),
    /// Contains NUL (illegal on the wire).
    Nul,
}

impl Name {
    /// The text.
    pub fn text(self) -> Text {
        match self {
            Name::Empty => Text::new(),
            Name::Word(i) => Text::from_static(WORDS[usize::from(i) % WORDS.len()]),
            Name::Long(n) => Text::from("m".repeat(5 * usize::from(n))),
            Name::Nul => Text::from_static("a\0b"),
        }
    }
}

/// A payload length: mostly small (`n % 128` for three quarters of the
/// values), otherwise `n % 9000` (above every frame limit the knobs allow).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Len(pub u16);

impl Len {
    /// The length.
    pub fn get(self) -> usize {
        if self.0 < 0xC000 { usize::from(self.0) % 128 } else { usize::from(self.0) % 9000 }
    }
    /// The payload.
    pub fn bytes(self) -> Bytes {
        zeros(self.get())
    }
}

/// Metadata: `count % 6` entries of `value_len % 16` bytes each, or of
/// `8 * (value_len & 0x7f)` bytes when the top bit is set.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Meta {
    count: u8,
    value_len: u8,
    empty_key: bool,
}

const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

impl Meta {
    /// The metadata.
    pub fn metadata(self) -> Metadata {
        let mut m = Metadata::new();
        for (i, key) in KEYS.iter().enumerate().take(usize::from(self.count % 6)) {
            let key = if i == 0 && self.empty_key { "" } else { key };
            let len = if self.value_len & 0x80 != 0 {
                8 * usize::from(self.value_len & 0x7f)
            } else {
                usize::from(self.value_len % 16)
            };
            m.insert(Text::from_static(key), zeros(len));
        }
        m
    }
}

/// A status code: reserved codes and a few application ones.
pub fn code(x: u8) -> Code {
    if x < 32 { Code(u32::from(x)) } else { Code(1000 + u32::from(x)) }
}

/// The ids in play, as seen by the harness.
#[derive(Debug, Default)]
pub struct IdBook {
    /// Role of the connection under test (the peer has the other one).
    pub local_role: Option<Role>,
    /// Every operation id the connection under test issued (calls,
    /// subscriptions, acknowledged publishes, unsubscribe operations).
    pub ours: Vec<u64>,
    /// Client under test: its subscriptions.
    pub our_subs: Vec<u64>,
    /// Calls the connection under test made.
    pub our_calls: Vec<u64>,
    /// Calls the fuzzed peer made (REQUEST frames it sent).
    pub peer_calls: Vec<u64>,
    /// Every operation id the fuzzed peer used.
    pub peer: Vec<u64>,
    /// Server under test: subscriptions the peer asked for.
    pub peer_subs: Vec<u64>,
    /// Next operation id for the peer (right parity, increasing).
    pub next_peer: u64,
    /// Pings the connection under test sent through `ping()`.
    pub pings: Vec<u64>,
}

impl IdBook {
    /// A book for a connection under test with `role`.
    pub fn new(role: Role) -> Self {
        IdBook {
            local_role: Some(role),
            next_peer: match role {
                Role::Server => 1, // the peer is a client: odd ids
                Role::Client => 2,
            },
            ..Default::default()
        }
    }

    fn pick(list: &[u64], i: u8, fallback: u64) -> u64 {
        if list.is_empty() { fallback } else { list[usize::from(i) % list.len()] }
    }

    fn resolve(&mut self, sel: IdSel) -> u64 {
        match sel {
            IdSel::Ours(i) => Self::pick(&self.ours, i, 1),
            IdSel::OurSub(i) => Self::pick(&self.our_subs, i, 1),
            IdSel::OurCall(i) => Self::pick(&self.our_calls, i, 1),
            IdSel::PeerCall(i) => Self::pick(&self.peer_calls, i, self.next_peer),
            IdSel::PeerNext => {
                let id = self.next_peer;
                self.next_peer += 2;
                self.peer.push(id);
                id
            }
            IdSel::PeerLast => self.peer.last().copied().unwrap_or(self.next_peer),
            IdSel::PeerOld(i) => Self::pick(&self.peer, i, self.next_peer),
            IdSel::PeerSub(i) => Self::pick(&self.peer_subs, i, self.next_peer),
            IdSel::Small(n) => u64::from(n % 16),
            IdSel::Raw(n) => n,
        }
    }
}

/// How the peer picks an id.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdSel {
    /// One of the ids the connection under test issued.
    Ours(u8),
    /// One of its subscriptions (client under test).
    OurSub(u8),
    /// One of its calls.
    OurCall(u8),
    /// One of the peer's calls.
    PeerCall(u8),
    /// A fresh peer operation id.
    PeerNext,
    /// The peer's latest operation id (reuse: a violation).
    PeerLast,
    /// Any earlier peer operation id.
    PeerOld(u8),
    /// A subscription the peer made (server under test).
    PeerSub(u8),
    /// 0..16.
    Small(u8),
    /// Anything.
    Raw(u64),
}

/// The peer's handshake parameters (HELLO or WELCOME).
#[derive(Arbitrary, Debug, Clone)]
pub struct PeerParams {
    /// Use the raw values below (often invalid) instead of sanitized ones.
    pub exact: bool,
    pub min_version: u16,
    pub max_version: u16,
    pub max_frame_size: u32,
    pub max_in_flight: u8,
    pub max_streams: u8,
    pub max_subscriptions: u8,
    pub window: u32,
    pub keepalive_ms: u16,
    pub connection_id: u64,
    pub name: Name,
    pub auth_len: u16,
}

impl PeerParams {
    fn versions(&self) -> (u16, u16) {
        if self.exact { (self.min_version, self.max_version) } else { (1, 1) }
    }
    fn frame(&self) -> u32 {
        match (self.exact, self.max_frame_size % 4) {
            (true, _) => self.max_frame_size,
            // The smallest frame limit a peer may announce.
            (false, 0) => 1024,
            (false, _) => 1024 + self.max_frame_size % 65536,
        }
    }
    fn window(&self) -> u32 {
        if self.exact { self.window } else { 1 + self.window % 65536 }
    }
    fn name(&self) -> Text {
        let n = self.name.text();
        if self.exact || !n.contains('\0') { n } else { Text::new() }
    }

    /// A HELLO from a fuzzed client.
    pub fn hello(&self) -> Frame {
        let (min_version, max_version) = self.versions();
        Frame::Hello(Hello {
            min_version,
            max_version,
            max_frame_size: self.frame(),
            max_in_flight: u32::from(self.max_in_flight),
            max_streams: u32::from(self.max_streams),
            initial_stream_window: self.window(),
            keepalive_ms: u32::from(self.keepalive_ms),
            client_name: self.name(),
            auth: zeros(usize::from(self.auth_len % 2048)),
        })
    }

    /// A WELCOME from a fuzzed server.
    pub fn welcome(&self) -> Frame {
        Frame::Welcome(Welcome {
            connection_id: if self.exact { self.connection_id } else { self.connection_id.max(1) },
            version: self.versions().1,
            max_frame_size: self.frame(),
            max_in_flight: u32::from(self.max_in_flight),
            max_streams: u32::from(self.max_streams),
            max_subscriptions: u32::from(self.max_subscriptions),
            initial_stream_window: self.window(),
            keepalive_ms: u32::from(self.keepalive_ms),
            server_name: self.name(),
        })
    }
}

/// One frame from the fuzzed peer.
#[derive(Arbitrary, Debug, Clone)]
pub enum FrameSpec {
    /// The 8-byte preamble (not a frame).
    Preamble,
    Hello(PeerParams),
    Welcome(PeerParams),
    Reject {
        code: u8,
        retry_after_ms: u32,
        reason: Name,
    },
    Request {
        id: IdSel,
        kind: u8,
        method: Name,
        deadline_ms: Option<u16>,
        trace: bool,
        meta: Meta,
        payload: Len,
    },
    Response {
        id: IdSel,
        payload: Len,
    },
    Error {
        id: IdSel,
        code: u8,
        message: Name,
        data: Len,
    },
    Notify {
        method: Name,
        trace: bool,
        meta: Meta,
        payload: Len,
    },
    Cancel(IdSel),
    Data {
        id: IdSel,
        payload: Len,
    },
    End(IdSel),
    Credit {
        id: IdSel,
        increment: u32,
    },
    Subscribe {
        id: IdSel,
        topic: Name,
        prefix: bool,
        disconnect: bool,
    },
    Unsubscribe {
        id: IdSel,
        subscription: IdSel,
    },
    Publish {
        ack: Option<IdSel>,
        topic: Name,
        payload: Len,
    },
    Message {
        subscription: IdSel,
        topic: Name,
        payload: Len,
    },
    /// A MESSAGES frame with the first 16 of these payloads (one at least).
    Messages {
        subscription: IdSel,
        topic: Name,
        first: Len,
        more: Vec<Len>,
    },
    Lagged {
        subscription: IdSel,
        dropped: u64,
    },
    Ack {
        id: IdSel,
        status: u8,
        value: u32,
    },
    Ping(u64),
    /// Answers one of our pings (or a small id: keepalive pings count from 1).
    Pong(u8),
    Goodbye {
        code: u8,
        reconnect_after_ms: Option<u32>,
        message: Name,
    },
    /// Any type byte and flags with a correct length field.
    Raw {
        ty: u8,
        flags: u8,
        id: IdSel,
        body: Len,
    },
}

fn kind(k: u8) -> CallKind {
    match k % 4 {
        0 => CallKind::Unary,
        1 => CallKind::ServerStream,
        2 => CallKind::ClientStream,
        _ => CallKind::Bidi,
    }
}

/// Local call kinds use the same mapping.
pub fn call_kind(k: u8) -> CallKind {
    kind(k)
}

impl FrameSpec {
    /// The bytes the peer sends, or `None` if the frame cannot be encoded.
    pub fn encode(&self, book: &mut IdBook) -> Option<Bytes> {
        let frame = match self {
            FrameSpec::Preamble => return Some(Bytes::from_static(&wharf_core::wire::PREAMBLE)),
            FrameSpec::Hello(p) => p.hello(),
            FrameSpec::Welcome(p) => p.welcome(),
            FrameSpec::Reject { code: c, retry_after_ms, reason } => Frame::Reject(Reject {
                code: code(*c),
                retry_after_ms: *retry_after_ms,
                min_version: 1,
                max_version: 1,
                reason: reason.text(),
            }),
            FrameSpec::Request { id, kind: k, method, deadline_ms, trace, meta, payload } => Frame::Request(Request {
                id: {
                    let id = book.resolve(*id);
                    book.peer_calls.push(id);
                    id
                },
                kind: kind(*k),
                method: method.text(),
                deadline_ms: deadline_ms.map(u32::from),
                trace_id: trace.then_some([7; 16]),
                metadata: meta.metadata(),
                payload: payload.bytes(),
            }),
            FrameSpec::Response { id, payload } => Frame::Response { id: book.resolve(*id), payload: payload.bytes() },
            FrameSpec::Error { id, code: c, message, data } => Frame::Error(ErrorBody {
                id: book.resolve(*id),
                code: code(*c),
                message: message.text(),
                data: data.bytes(),
            }),
            FrameSpec::Notify { method, trace, meta, payload } => Frame::Notify(Notify {
                method: method.text(),
                trace_id: trace.then_some([9; 16]),
                metadata: meta.metadata(),
                payload: payload.bytes(),
            }),
            FrameSpec::Cancel(id) => Frame::Cancel { id: book.resolve(*id) },
            FrameSpec::Data { id, payload } => Frame::Data { id: book.resolve(*id), payload: payload.bytes() },
            FrameSpec::End(id) => Frame::End { id: book.resolve(*id) },
            FrameSpec::Credit { id, increment } => Frame::Credit { id: book.resolve(*id), increment: *increment },
            FrameSpec::Subscribe { id, topic, prefix, disconnect } => {
                let id = book.resolve(*id);
                book.peer_subs.push(id);
                Frame::Subscribe {
                    id,
                    topic: topic.text(),
                    prefix: *prefix,
                    policy: if *disconnect { SlowConsumerPolicy::Disconnect } else { SlowConsumerPolicy::DropOldest },
                }
            }
            FrameSpec::Unsubscribe { id, subscription } => {
                let subscription = book.resolve(*subscription);
                Frame::Unsubscribe { id: book.resolve(*id), subscription }
            }
            FrameSpec::Publish { ack, topic, payload } => {
                Frame::Publish { id: ack.map_or(0, |s| book.resolve(s)), topic: topic.text(), payload: payload.bytes() }
            }
            FrameSpec::Message { subscription, topic, payload } => Frame::Message {
                subscription: book.resolve(*subscription),
                topic: topic.text(),
                payload: payload.bytes(),
            },
            FrameSpec::Messages { subscription, topic, first, more } => {
                let payloads: Vec<Bytes> =
                    std::iter::once(first).chain(more.iter().take(15)).map(|l| l.bytes()).collect();
                Frame::Messages {
                    subscription: book.resolve(*subscription),
                    topic: topic.text(),
                    batch: MessageBatch::from_payloads(payloads.iter().map(|b| &b[..])).expect("one payload at least"),
                }
            }
            FrameSpec::Lagged { subscription, dropped } => {
                Frame::Lagged { subscription: book.resolve(*subscription), dropped: *dropped }
            }
            FrameSpec::Ack { id, status, value } => {
                Frame::Ack { id: book.resolve(*id), status: code(*status), value: *value }
            }
            FrameSpec::Ping(id) => Frame::Ping { id: *id },
            FrameSpec::Pong(i) => {
                let id = if book.pings.is_empty() || i & 0x80 != 0 {
                    u64::from(i % 16)
                } else {
                    book.pings[usize::from(*i) % book.pings.len()]
                };
                Frame::Pong { id }
            }
            FrameSpec::Goodbye { code: c, reconnect_after_ms, message } => Frame::Goodbye(Goodbye {
                code: code(*c),
                reconnect_after_ms: reconnect_after_ms.unwrap_or(wharf_core::wire::NO_HINT),
                message: message.text(),
            }),
            FrameSpec::Raw { ty, flags, id, body } => {
                let body = body.bytes();
                let mut out = Vec::with_capacity(HEADER_LEN + body.len());
                let Some(ty) = wharf_core::wire::FrameType::from_u8(*ty) else {
                    // Unknown type: write the header by hand.
                    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                    out.push(*ty);
                    out.push(*flags);
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(&book.resolve(*id).to_le_bytes());
                    out.extend_from_slice(&body);
                    return Some(out.into());
                };
                Header { len: body.len() as u32, ty, flags: *flags, id: book.resolve(*id) }.encode(&mut out);
                out.extend_from_slice(&body);
                return Some(out.into());
            }
        };
        frame.to_bytes().ok()
    }
}
