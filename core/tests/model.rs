//! Model-based property test (reliability-security.md §5 F3).
//!
//! Random operation sequences are applied to a connected client/server pair
//! on virtual time, and after every operation the observable behaviour of
//! both [`Connection`]s is checked against a small reference model of what
//! each call, notification, ping and pub/sub operation may still turn into.
//!
//! The driver in this file is a realistic event loop built on the
//! [`support::Pair`] harness: bounded pipes (like socket buffers), reads
//! only while `wants_read()`, timers fired whenever `next_timer()` is due,
//! the transport closed once a side is closed and its queue is written, an
//! application that may stop polling events, and partial reads and writes.
//!
//! Operations ([`Op`]): calls either way (unary or streaming, no / default /
//! random / huge timeout, payloads of 0 to 16 KiB, metadata, trace id) and
//! bursts of them; answers (success or error) and bursts of them; cancel;
//! stream send, consume, finish; notify; ping; subscribe, accept/refuse,
//! deliver, unsubscribe, publish, acknowledge; event-loop steps, drive to
//! idle, partial writes and reads, read sizes, zero-copy reads; virtual time
//! (0 to 30 s, driven or not); pausing reading or event polling on a side;
//! graceful close and abort from either side; EOF (crash) and transport
//! error on either side. Per case: small or default limits, keepalive on or
//! off, whether drivers close the transport of a closed connection, socket
//! buffer size, write size, `poll_transmit` or `transmit_slices` writers.
//!
//! Invariants (checked after every operation, and at the end after driving
//! to idle, advancing past every deadline and closing):
//!
//! - I1: every call made by either side gets exactly one `Event::Response`,
//!   never one for an id that was never issued; once a side is closed all of
//!   its calls have an outcome. Same for calls served (`Request`, then
//!   exactly one answer or `CallCancelled`) and for subscribe, unsubscribe
//!   and acknowledged publish operations.
//! - Outcomes agree with the model: `Ok(P)` only if the callee answered `P`
//!   (its stream data all arrived first) and the deadline had not passed;
//!   `Remote` only with the callee's own error, or a refusal (`BUSY`,
//!   `SHUTTING_DOWN`, `TOO_MANY_STREAMS`) of a call it never saw;
//!   `Cancelled` exactly for cancelled calls; `TimedOut(d)` with the call's
//!   timeout, at or after the deadline; `ConnectionLost(e)` only with
//!   `Closed(e)` in the same batch. Once the whole answer has been fed to
//!   the caller (tracked by byte position), the outcome is the answer unless
//!   the call was cancelled or timed out before; once a CANCEL has been fed
//!   to the callee, the call is no longer served.
//! - Streams, notifications, messages: received in order, a prefix of what
//!   was sent, complete once the pair is idle and healthy. Send credit is
//!   predicted exactly (window - sent + every CREDIT fed back), so
//!   `StreamBlocked` happens exactly at credit <= 0; `StreamWritable` never
//!   comes without a `StreamBlocked` and is not missing once the receiver
//!   consumed everything; `Writable` comes exactly when the queue drains
//!   below half after `Blocked`.
//! - I2: `inbound_buffered()` and `transmit_len()` stay within the limits
//!   (plus one read and one frame; twice the outbound limit for frames the
//!   core answers by itself).
//! - I4: after close, calls in flight / being served / subscriptions are 0;
//!   while open, those counters equal the model's.
//! - I5: no panic; `Closed` at most once and last; its error is one the
//!   operations allow (never a protocol error between two correct peers,
//!   never a keepalive or write-stall death while the pair talks freely).
//! - Timers: after `handle_timeout(t)`, `next_timer()` is `None` or `> t`,
//!   nothing is overdue (call and served-call deadlines, write stall,
//!   keepalive); `next_timer()` is never after a pending deadline; at idle,
//!   `poll_timeout()` equals `next_timer()`.
//! - Close: once both GOODBYEs are exchanged and nothing is in flight, the
//!   side is closed at once; a GOODBYE received is answered.
//! - Determinism: the same operations give the same events and bytes.
//!
//! Cases: 256 by default (`PROPTEST_CASES` overrides).

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use support::{Pair, Pipe, Side};
use wharf_core::{
    AckError, Bytes, CallError, CallKind, CallOptions, CancelReason, Code, Config, Connection, ConnectionError, Event,
    MAX_TIMEOUT, Metadata, RequestId, SendError, SubscribeOptions, SubscriptionId, Text, Timeout, TraceId,
};

type R<T = ()> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Largest single read of the driver (the adapter's read granularity).
const MAX_READ: usize = 8 * 1024;
/// Bytes the frame header and fixed fields of a REQUEST add to its payload (upper bound).
const FRAME_OVERHEAD: usize = 128;
/// Application error codes used by callees (never a code the core generates).
const APP_CODES: [u32; 3] = [1000, 1001, 4242];

// ----------------------------------------------------------------------
// Operations
// ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Client,
    Server,
}

impl Who {
    fn i(self) -> usize {
        match self {
            Who::Client => 0,
            Who::Server => 1,
        }
    }
    fn peer(self) -> Who {
        match self {
            Who::Client => Who::Server,
            Who::Server => Who::Client,
        }
    }
    const BOTH: [Who; 2] = [Who::Client, Who::Server];
}

#[derive(Clone, Copy, Debug)]
enum Tmo {
    Default,
    Never,
    Ms(u64),
    /// Longer than the wire's u32 milliseconds can carry (0: 100 days,
    /// 1: 1000 days, above `MAX_TIMEOUT`, 2: `Duration::MAX`).
    Huge(u8),
}

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok(usize),
    Err(u32, usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// `from` calls its peer.
    Call {
        from: Who,
        kind: CallKind,
        timeout: Tmo,
        size: usize,
        /// Metadata entries, trace id.
        extras: (u8, bool),
    },
    /// `count` small unary calls in a row (many timers: heap compaction).
    Calls {
        from: Who,
        timeout: Tmo,
        count: u8,
    },
    /// The callee answers one of the calls it has seen (possibly one already ended).
    Answer {
        by: Who,
        pick: Index,
        answer: Answer,
    },
    /// The callee answers up to `count` of the calls it serves, oldest first.
    AnswerMany {
        by: Who,
        count: u8,
    },
    /// The caller cancels one of its calls (possibly one already ended).
    Cancel {
        by: Who,
        pick: Index,
    },
    /// A sender on a streaming call sends one message.
    StreamSend {
        by: Who,
        pick: Index,
        size: usize,
        count: u8,
    },
    /// A receiver reports `count` received stream messages as consumed.
    StreamConsume {
        by: Who,
        count: usize,
    },
    /// The caller of a client-stream or bidi call finishes sending.
    StreamFinish {
        by: Who,
        pick: Index,
    },
    /// `count` notifications in a row (a burst fills the outbound queue).
    Notify {
        from: Who,
        size: usize,
        count: u8,
    },
    Ping {
        from: Who,
    },
    /// Client subscribes to one of a few topics.
    Subscribe {
        topic: u8,
        prefix: bool,
    },
    /// Server application accepts or refuses a subscription it has seen.
    SubAnswer {
        pick: Index,
        accept: bool,
    },
    /// Server delivers a message to a subscription it has seen.
    SubDeliver {
        pick: Index,
        size: usize,
    },
    /// Client unsubscribes.
    Unsubscribe {
        pick: Index,
    },
    /// Client publishes (payload always tagged, so publishes can be told apart).
    Publish {
        ack: bool,
        size: usize,
    },
    /// Server acknowledges a publish it has seen.
    AckPublish {
        pick: Index,
        ok: bool,
    },
    /// `rounds` rounds of the event loop (timers, write, read, poll events).
    Step {
        rounds: u8,
    },
    /// The event loop until nothing moves.
    Drive,
    /// `from` writes at most `bytes` into its pipe.
    FlushSome {
        from: Who,
        bytes: usize,
    },
    /// The peer of `to` writes what it can; `to` reads at most `bytes`.
    DeliverSome {
        to: Who,
        bytes: usize,
    },
    /// Read sizes from now on (empty: whole reads of up to `MAX_READ`).
    Chunking(Vec<usize>),
    ZeroCopy {
        who: Who,
        on: bool,
    },
    /// Virtual time passes; with `driven`, the loop runs at every timer on the way.
    Advance {
        ms: u64,
        driven: bool,
    },
    /// The driver of `who` stops or resumes reading its transport.
    Reading {
        who: Who,
        on: bool,
    },
    /// The application of `who` stops or resumes polling events.
    Polling {
        who: Who,
        on: bool,
    },
    Close {
        who: Who,
        hint: Option<u64>,
    },
    Abort {
        who: Who,
    },
    /// The write half of `who`'s transport ends (crash): the peer reads EOF.
    Eof {
        who: Who,
    },
    /// `who`'s transport fails.
    TransportError {
        who: Who,
    },
}

/// Per-case parameters.
#[derive(Clone, Debug)]
struct Setup {
    /// Small limits (backpressure, BUSY, stream credit, TooLarge) or the defaults.
    small: bool,
    keepalive: bool,
    /// The driver closes the transport once its connection is closed and written out.
    close_transport: bool,
    /// Bytes a pipe holds before writes stop (socket buffer).
    pipe_cap: usize,
    /// Largest single write.
    max_write: usize,
    /// Each driver writes with `poll_transmit` (whole chunks, while the pipe
    /// has room) instead of `transmit_slices` + `advance_transmit`.
    pop_chunks: [bool; 2],
    /// Who closes gracefully at the end.
    final_close: Who,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::Client), Just(Who::Server)]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(0usize),
        6 => 1usize..64,
        2 => 1000usize..1100,
        2 => 1025usize..9000,
        1 => 16_000usize..16_500,
    ]
}

fn count() -> impl Strategy<Value = u8> {
    prop_oneof![6 => Just(1u8), 3 => 2u8..8, 1 => 8u8..64]
}

/// Size of a burst of calls or answers: large bursts leave enough stale
/// deadlines in the timer heap to make it compact.
fn burst() -> impl Strategy<Value = u8> {
    8u8..128
}

/// Metadata entries and whether a trace id is sent.
fn extras() -> impl Strategy<Value = (u8, bool)> {
    prop_oneof![4 => Just((0u8, false)), 1 => (0u8..4, any::<bool>())]
}

fn tmo() -> impl Strategy<Value = Tmo> {
    prop_oneof![
        2 => Just(Tmo::Default),
        2 => Just(Tmo::Never),
        5 => (0u64..40_000).prop_map(Tmo::Ms),
        1 => (0u8..3).prop_map(Tmo::Huge),
    ]
}

fn stream_kind() -> impl Strategy<Value = CallKind> {
    prop_oneof![Just(CallKind::ServerStream), Just(CallKind::ClientStream), Just(CallKind::Bidi)]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        3 => size().prop_map(Answer::Ok),
        1 => (prop::sample::select(APP_CODES.to_vec()), 0usize..32).prop_map(|(c, n)| Answer::Err(c, n)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        60 => (who(), tmo(), size(), extras()).prop_map(|(from, timeout, size, extras)| Op::Call { from, kind: CallKind::Unary, timeout, size, extras }),
        30 => (who(), stream_kind(), tmo(), size(), extras()).prop_map(|(from, kind, timeout, size, extras)| Op::Call { from, kind, timeout, size, extras }),
        60 => (who(), any::<Index>(), answer()).prop_map(|(by, pick, answer)| Op::Answer { by, pick, answer }),
        5 => (who(), tmo(), burst()).prop_map(|(from, timeout, count)| Op::Calls { from, timeout, count }),
        5 => (who(), burst()).prop_map(|(by, count)| Op::AnswerMany { by, count }),
        15 => (who(), any::<Index>()).prop_map(|(by, pick)| Op::Cancel { by, pick }),
        40 => (who(), any::<Index>(), size(), count()).prop_map(|(by, pick, size, count)| Op::StreamSend { by, pick, size, count }),
        20 => (who(), 1usize..8).prop_map(|(by, count)| Op::StreamConsume { by, count }),
        10 => (who(), any::<Index>()).prop_map(|(by, pick)| Op::StreamFinish { by, pick }),
        12 => (who(), size(), count()).prop_map(|(from, size, count)| Op::Notify { from, size, count }),
        6 => who().prop_map(|from| Op::Ping { from }),
        6 => (0u8..4, any::<bool>()).prop_map(|(topic, prefix)| Op::Subscribe { topic, prefix }),
        6 => (any::<Index>(), prop::bool::weighted(0.8)).prop_map(|(pick, accept)| Op::SubAnswer { pick, accept }),
        10 => (any::<Index>(), size()).prop_map(|(pick, size)| Op::SubDeliver { pick, size }),
        4 => any::<Index>().prop_map(|pick| Op::Unsubscribe { pick }),
        6 => (any::<bool>(), 0usize..64).prop_map(|(ack, size)| Op::Publish { ack, size }),
        6 => (any::<Index>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::AckPublish { pick, ok }),
        50 => (1u8..4).prop_map(|rounds| Op::Step { rounds }),
        30 => Just(Op::Drive),
        10 => (who(), 1usize..200).prop_map(|(from, bytes)| Op::FlushSome { from, bytes }),
        10 => (who(), 1usize..200).prop_map(|(to, bytes)| Op::DeliverSome { to, bytes }),
        4 => prop::collection::vec(prop_oneof![1usize..8, 8usize..100, 100usize..5000], 0..4).prop_map(Op::Chunking),
        2 => (who(), any::<bool>()).prop_map(|(who, on)| Op::ZeroCopy { who, on }),
        30 => (prop_oneof![0u64..50, 50u64..5_000, 5_000u64..30_000], prop::bool::weighted(0.8))
            .prop_map(|(ms, driven)| Op::Advance { ms, driven }),
        5 => (who(), any::<bool>()).prop_map(|(who, on)| Op::Reading { who, on }),
        5 => (who(), any::<bool>()).prop_map(|(who, on)| Op::Polling { who, on }),
        4 => (who(), prop::option::of(0u64..10_000)).prop_map(|(who, hint)| Op::Close { who, hint }),
        1 => who().prop_map(|who| Op::Abort { who }),
        1 => who().prop_map(|who| Op::Eof { who }),
        1 => who().prop_map(|who| Op::TransportError { who }),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.7),
        prop_oneof![Just(4 * 1024usize), Just(64 * 1024), Just(1 << 20)],
        prop_oneof![Just(usize::MAX), 1usize..64, 64usize..4096],
        [prop::bool::weighted(0.2), prop::bool::weighted(0.2)],
        who(),
    )
        .prop_map(|(small, keepalive, close_transport, pipe_cap, max_write, pop_chunks, final_close)| Setup {
            small,
            keepalive,
            close_transport,
            pipe_cap,
            max_write,
            pop_chunks,
            final_close,
        })
}

fn config(s: &Setup) -> Config {
    let mut c = Config::default();
    if s.small {
        c.max_frame_size = 16 * 1024;
        c.max_in_flight = 6;
        c.max_streams = 3;
        c.max_subscriptions = 4;
        c.initial_stream_window = 8 * 1024;
        c.max_inbound_buffered = 24 * 1024;
        c.max_outbound_buffered = 32 * 1024;
    }
    c.keepalive_interval = s.keepalive.then_some(Duration::from_secs(10));
    c
}

// ----------------------------------------------------------------------
// Reference model
// ----------------------------------------------------------------------

/// How a call ended at the callee.
#[derive(Clone, Debug)]
enum End {
    Answered(Result<Bytes, (Code, Text, Bytes)>),
    Cancelled(CancelReason),
}

/// One direction of a stream.
#[derive(Debug, Default)]
struct Flow {
    /// Messages `stream_send` accepted, in order.
    sent: Vec<Bytes>,
    /// How many of them the receiver has seen.
    recv: usize,
    /// Lengths of received messages not yet reported consumed.
    unconsumed: VecDeque<usize>,
    /// The sender got `StreamBlocked` and no `StreamWritable` since.
    blocked: bool,
    /// `StreamWritable` events that may still come: one per blocked
    /// episode. A `StreamBlocked` while the sender's application polls and
    /// is already blocked is the same episode; otherwise it may be a new one.
    writable_allowed: u32,
    /// Credit spent by the sender: the sum of max(len, 1) over `sent`.
    spent: i64,
    /// CREDIT frames the receiver queued: (end position in its stream, increment).
    grants: Vec<(u64, u64)>,
    /// The receiver's view: bytes received and not consumed, consumed and not granted.
    held: u64,
    grant: u64,
    /// The receiver reported consumption while the model could not know whether
    /// the call was still open there: credit is no longer predicted.
    credit_unknown: bool,
}

#[derive(Debug)]
struct CallM {
    caller: Who,
    kind: CallKind,
    payload: Bytes,
    metadata: Metadata,
    trace_id: Option<TraceId>,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    cancelled: bool,
    outcome: Option<Result<Bytes, CallError>>,
    /// The callee saw `Event::Request`.
    delivered: bool,
    in_deadline: Option<Instant>,
    callee_end: Option<End>,
    /// Position in the callee's byte stream where its answer ends.
    resp_end: Option<u64>,
    /// When the caller had been fed the whole answer.
    arrived_at: Option<Instant>,
    /// Position in the caller's byte stream where its CANCEL ends (an upper
    /// bound for CANCELs sent on timeout).
    cancel_end: Option<u64>,
    /// The callee answered while its application was not polling: events
    /// emitted before the answer (stream data, END) may still be queued.
    answered_unpolled: bool,
    /// Caller to callee.
    up: Flow,
    /// Callee to caller.
    down: Flow,
    finished: bool,
    end_seen: bool,
}

impl CallM {
    fn callee(&self) -> Who {
        self.caller.peer()
    }
    /// The flow `w` sends on, if any.
    fn send_flow(&mut self, w: Who) -> &mut Flow {
        if w == self.caller { &mut self.up } else { &mut self.down }
    }
    fn recv_flow(&mut self, w: Who) -> &mut Flow {
        if w == self.caller { &mut self.down } else { &mut self.up }
    }
}

#[derive(Debug)]
struct Unsub {
    /// The client's event queue was empty when it unsubscribed.
    clean: bool,
    /// UNSUBSCRIBE went on the wire (not closing): a result is due.
    wire: bool,
    result: Option<Result<(), AckError>>,
}

#[derive(Debug)]
struct SubM {
    topic: String,
    prefix: bool,
    result: Option<Result<(), AckError>>,
    server_seen: bool,
    server_answer: Option<Code>,
    server_unsub_seen: bool,
    unsub: Option<Unsub>,
    /// Messages the server delivered: (topic, payload).
    delivered: Vec<(Text, Bytes)>,
    received: usize,
}

#[derive(Debug)]
struct PubM {
    ack: Option<u64>,
    topic: String,
    payload: Bytes,
    server_seen: bool,
    server_answer: Option<Result<u32, Code>>,
    result: Option<Result<u32, AckError>>,
}

#[derive(Debug, Default)]
struct Model {
    calls: BTreeMap<u64, CallM>,
    closed: [Option<ConnectionError>; 2],
    goodbye_rx: [bool; 2],
    local_close: [bool; 2],
    aborted: [bool; 2],
    transport_err: [bool; 2],
    /// The side's transport ended abruptly (EOF op or transport error):
    /// what it wrote afterwards was lost.
    crashed: [bool; 2],
    /// A command returned `Blocked` and the queue has not drained below
    /// half the limit since.
    blocked: [bool; 2],
    /// Blocked episodes that ended (queue below half): `Writable` events due.
    writable_due: [usize; 2],
    /// Notifications sent by each side, not yet received.
    notes: [VecDeque<Bytes>; 2],
    /// User pings of each side: id -> pong seen.
    pings: [BTreeMap<u64, bool>; 2],
    /// Time the event queue of each side was last emptied.
    last_drain: [Option<Instant>; 2],
    subs: BTreeMap<u64, SubM>,
    pubs: Vec<PubM>,
    /// Publishes before this index were seen by the server or skipped.
    next_pub: usize,
}

impl Model {
    fn pending(&self, w: Who) -> usize {
        self.calls.values().filter(|c| c.caller == w && c.outcome.is_none()).count()
    }
    fn pending_streams(&self, w: Who) -> usize {
        self.calls.values().filter(|c| c.caller == w && c.outcome.is_none() && c.kind.is_stream()).count()
    }
    fn served(&self, w: Who) -> usize {
        self.calls.values().filter(|c| c.callee() == w && c.delivered && c.callee_end.is_none()).count()
    }
    /// Pub/sub operations of `w` still waiting for an answer.
    fn ops_pending(&self, w: Who) -> usize {
        match w {
            Who::Client => {
                self.subs.values().filter(|s| s.result.is_none()).count()
                    + self
                        .subs
                        .values()
                        .filter(|s| s.unsub.as_ref().is_some_and(|u| u.wire && u.result.is_none()))
                        .count()
                    + self.pubs.iter().filter(|p| p.ack.is_some() && p.result.is_none()).count()
            }
            Who::Server => {
                self.subs
                    .values()
                    .filter(|s| s.server_seen && s.server_answer.is_none() && !s.server_unsub_seen)
                    .count()
                    + self.pubs.iter().filter(|p| p.ack.is_some() && p.server_seen && p.server_answer.is_none()).count()
            }
        }
    }
    fn closing(&self, w: Who) -> bool {
        self.local_close[w.i()] || self.goodbye_rx[w.i()]
    }
    fn client_subs(&self) -> usize {
        if self.closed[0].is_some() {
            return 0;
        }
        self.subs
            .values()
            .filter(|s| match &s.unsub {
                Some(u) => u.wire && u.result.is_none(),
                None => !matches!(s.result, Some(Err(_))),
            })
            .count()
    }
    fn server_subs(&self) -> usize {
        if self.closed[1].is_some() {
            return 0;
        }
        self.subs
            .values()
            .filter(|s| s.server_seen && !s.server_unsub_seen && s.server_answer.is_none_or(|c| c == Code::OK))
            .count()
    }
}

fn is_refusal(c: Code) -> bool {
    c != Code::OK
}

// ----------------------------------------------------------------------
// The simulation: pair + driver + model
// ----------------------------------------------------------------------

struct Sim {
    p: Pair,
    base: Instant,
    cfg: Config,
    setup: Setup,
    chunking: Vec<usize>,
    chunk_pos: [usize; 2],
    polling: [bool; 2],
    seq: u64,
    m: Model,
    /// Bytes fed to each side's connection (a position in its peer's stream).
    fed: [u64; 2],
    /// Last time something kept the pair from talking freely (a side not
    /// reading or not polling, a transport ended, a side closed, time that
    /// passed without the driver running).
    last_impeded: Instant,
    /// Since when each writer (slices mode) has had bytes queued and made
    /// no write progress: the core's write-stall clock, as the driver sees it.
    stall_start: [Option<Instant>; 2],
    /// When each side last had proof of its peer's life: a byte fed to it
    /// (or, as the core counts it, a timer check while its application is
    /// behind and it does not read).
    last_alive: [Instant; 2],
    /// Everything observable, for the determinism check.
    trace: Vec<String>,
}

fn parts(p: &mut Pair, w: Who) -> (&mut Side, &mut Pipe, &mut Pipe) {
    match w {
        Who::Client => (&mut p.client, &mut p.c2s, &mut p.s2c),
        Who::Server => (&mut p.server, &mut p.s2c, &mut p.c2s),
    }
}

fn timeout_of(t: Tmo) -> Timeout {
    match t {
        Tmo::Default => Timeout::Default,
        Tmo::Never => Timeout::Never,
        Tmo::Ms(ms) => Timeout::After(Duration::from_millis(ms)),
        Tmo::Huge(0) => Timeout::After(Duration::from_secs(100 * 86_400)),
        Tmo::Huge(1) => Timeout::After(Duration::from_secs(1000 * 86_400)),
        Tmo::Huge(_) => Timeout::After(Duration::MAX),
    }
}

impl Sim {
    fn new(setup: Setup) -> Sim {
        let cfg = config(&setup);
        let p = Pair::connected_with(cfg.clone(), cfg.clone());
        let base = p.now;
        assert!(p.c2s.bytes.is_empty() && p.s2c.bytes.is_empty());
        let fed = [p.server.wrote.len() as u64, p.client.wrote.len() as u64];
        let m = Model { last_drain: [Some(base); 2], ..Model::default() };
        Sim {
            p,
            base,
            cfg,
            setup,
            chunking: Vec::new(),
            chunk_pos: [0; 2],
            polling: [true; 2],
            seq: 0,
            m,
            fed,
            last_impeded: base,
            stall_start: [None; 2],
            last_alive: [base; 2],
            trace: Vec::new(),
        }
    }

    /// Bytes `w` has queued since it was created: the position in its
    /// stream just after the last frame it queued.
    fn queued_total(&self, w: Who) -> u64 {
        let c = self.conn_ref(w);
        c.stats().bytes_sent + c.transmit_len() as u64
    }

    fn note_impeded(&mut self) {
        let p = &self.p;
        let impeded = !p.client.reading
            || !p.server.reading
            || !self.polling.iter().all(|&b| b)
            || p.c2s.eof
            || p.s2c.eof
            || p.client.conn.is_closed()
            || p.server.conn.is_closed();
        if impeded {
            self.last_impeded = self.p.now;
        }
    }

    fn now(&self) -> Instant {
        self.p.now
    }

    fn t(&self) -> Duration {
        self.p.now - self.base
    }

    fn conn(&mut self, w: Who) -> &mut Connection {
        match w {
            Who::Client => &mut self.p.client.conn,
            Who::Server => &mut self.p.server.conn,
        }
    }

    fn conn_ref(&self, w: Who) -> &Connection {
        match w {
            Who::Client => &self.p.client.conn,
            Who::Server => &self.p.server.conn,
        }
    }

    /// A payload of `len` bytes, distinct from every other one of length >= 8.
    fn payload(&mut self, len: usize) -> Bytes {
        self.seq += 1;
        let tag = self.seq;
        let mut v: Vec<u8> = (0..len).map(|i| (tag as u8).wrapping_add(i as u8)).collect();
        let n = len.min(8);
        v[..n].copy_from_slice(&tag.to_le_bytes()[..n]);
        Bytes::from(v)
    }

    fn log(&mut self, s: String) {
        let t = self.t();
        self.trace.push(format!("{t:?} {s}"));
    }

    // ------------------------------------------------------------------
    // Driver
    // ------------------------------------------------------------------

    /// I2: buffered bytes within the configured limits.
    fn check_limits(&self, w: Who) -> R {
        let c = self.conn_ref(w);
        let frame = self.cfg.max_frame_size as usize + 16;
        // Reading stops at the limit; the last read (with a partial frame
        // before it) is processed whole. Each event is charged its payload
        // plus 64 bytes, and the smallest frame is 16 bytes: at most 5x.
        let inbound = self.cfg.max_inbound_buffered + 5 * (frame + MAX_READ);
        ensure!(
            c.inbound_buffered() <= inbound,
            "{w:?}: inbound_buffered {} above limit {} + one read and one frame",
            c.inbound_buffered(),
            self.cfg.max_inbound_buffered
        );
        // Commands stop at the limit (so at most one frame above it); frames
        // the core answers by itself stop with reading, at twice the limit.
        let outbound = 2 * self.cfg.max_outbound_buffered + frame + 4 * MAX_READ;
        ensure!(
            c.transmit_len() <= outbound,
            "{w:?}: transmit_len {} above 2 x {} + one frame",
            c.transmit_len(),
            self.cfg.max_outbound_buffered
        );
        Ok(())
    }

    /// `handle_timeout` on `w`, then the timer invariants.
    fn timeout(&mut self, w: Who) -> R {
        let now = self.now();
        if self.conn(w).inbound_buffered() >= self.cfg.max_inbound_buffered {
            self.last_alive[w.i()] = now;
        }
        self.conn(w).handle_timeout(now);
        let next = self.conn(w).next_timer();
        let c = self.conn_ref(w);
        if !c.is_closed() && c.transmit_len() > 0 && !self.setup.pop_chunks[w.i()] {
            let stalled = self.stall_start[w.i()].is_some_and(|s| now >= s + self.cfg.write_stall_timeout);
            ensure!(!stalled, "{w:?}: no write progress for write_stall_timeout, but not closed");
        }
        if let Some(k) = self.cfg.keepalive_interval
            && !c.is_closed()
        {
            ensure!(now < self.last_alive[w.i()] + 3 * k, "{w:?}: peer silent for 3 keepalive intervals, not closed");
        }
        ensure!(
            next.is_none_or(|t| t > now),
            "{w:?}: next_timer {:?} not after handle_timeout({:?})",
            next.map(|t| t - self.base),
            self.t()
        );
        self.drain(w)?;
        if self.polling[w.i()] && self.m.closed[w.i()].is_none() {
            for (id, c) in &self.m.calls {
                if c.caller == w && c.outcome.is_none() {
                    ensure!(
                        c.deadline.is_none_or(|d| d > now),
                        "{w:?}: call {id} still pending after handle_timeout past its deadline"
                    );
                }
                if c.callee() == w && c.delivered && c.callee_end.is_none() {
                    ensure!(
                        c.in_deadline.is_none_or(|d| d > now),
                        "{w:?}: served call {id} still open after handle_timeout past its deadline"
                    );
                }
            }
        }
        Ok(())
    }

    /// Fires due timers, as an event loop does before anything else.
    fn due_timers(&mut self) -> R<bool> {
        let now = self.now();
        let mut fired = false;
        for w in Who::BOTH {
            if self.conn(w).next_timer().is_some_and(|t| t <= now) {
                self.timeout(w)?;
                fired = true;
            }
        }
        Ok(fired)
    }

    /// Writes what `w` has queued into its pipe: at most `budget` bytes,
    /// in writes of at most `max_write`, while the pipe has room.
    fn flush(&mut self, w: Who, budget: usize) -> bool {
        let moved = self.write_out(w, budget);
        // A blocked episode ends when the queue drains below half the limit
        // (then `Writable` is due), or silently when the connection ends.
        let i = w.i();
        if self.m.blocked[i] {
            let c = self.conn_ref(w);
            if c.is_closed() {
                self.m.blocked[i] = false;
            } else if c.transmit_len() < self.cfg.max_outbound_buffered / 2 {
                self.m.blocked[i] = false;
                self.m.writable_due[i] += 1;
            }
        }
        moved
    }

    fn write_out(&mut self, w: Who, mut budget: usize) -> bool {
        let now = self.now();
        let (cap, max_write) = (self.setup.pipe_cap, self.setup.max_write);
        let (side, out, _) = parts(&mut self.p, w);
        if out.eof {
            // The transport is gone: what would be written is lost.
            let mut any = false;
            while side.conn.poll_transmit(now).is_some() {
                any = true;
            }
            self.stall_start[w.i()] = None;
            return any;
        }
        if self.setup.pop_chunks[w.i()] {
            let mut moved = false;
            while budget > 0 && out.bytes.len() < cap {
                let Some(chunk) = side.conn.poll_transmit(now) else { break };
                out.bytes.extend(&chunk[..]);
                side.wrote.extend_from_slice(&chunk);
                budget = budget.saturating_sub(chunk.len());
                moved = true;
            }
            return moved;
        }
        let mut moved = false;
        loop {
            let room = cap.saturating_sub(out.bytes.len()).min(budget).min(max_write);
            let mut slices = [IoSlice::new(&[]); 8];
            let n = side.conn.transmit_slices(now, &mut slices);
            if n == 0 {
                break;
            }
            let mut written = 0;
            for s in &slices[..n] {
                let take = s.len().min(room - written);
                out.bytes.extend(&s[..take]);
                side.wrote.extend_from_slice(&s[..take]);
                written += take;
                if written == room {
                    break;
                }
            }
            side.conn.advance_transmit(written, now);
            budget -= written;
            if written == 0 {
                break;
            }
            moved = true;
        }
        let stall = &mut self.stall_start[w.i()];
        *stall = match (side.conn.transmit_len(), moved) {
            (0, _) => None,
            (_, true) => Some(now),
            (_, false) => Some(stall.unwrap_or(now)),
        };
        moved
    }

    /// Reads at most `budget` bytes from `w`'s pipe into `w`, while it wants to read.
    fn deliver(&mut self, w: Who, mut budget: usize) -> R<bool> {
        let now = self.now();
        let mut moved = false;
        loop {
            let chunk = {
                let (side, _, inp) = parts(&mut self.p, w);
                if !side.reading || inp.bytes.is_empty() || budget == 0 || !side.conn.wants_read() {
                    break;
                }
                let want = if self.chunking.is_empty() {
                    MAX_READ
                } else {
                    let pos = &mut self.chunk_pos[w.i()];
                    *pos += 1;
                    self.chunking[*pos % self.chunking.len()]
                };
                let n = want.min(inp.bytes.len()).min(budget);
                budget -= n;
                inp.bytes.drain(..n).collect::<Vec<u8>>()
            };
            let (side, _, _) = parts(&mut self.p, w);
            if side.zero_copy {
                side.conn.recv_buffer().extend_from_slice(&chunk);
                side.conn.handle_received(chunk.len(), now);
            } else {
                side.conn.handle_input(&chunk, now);
            }
            moved = true;
            self.fed[w.i()] += chunk.len() as u64;
            self.last_alive[w.i()] = now;
            let (fed, now) = (self.fed[w.i()], self.now());
            for c in self.m.calls.values_mut() {
                if c.caller == w && c.arrived_at.is_none() && c.resp_end.is_some_and(|e| e <= fed) {
                    c.arrived_at = Some(now);
                }
            }
            self.check_limits(w)?;
        }
        let (side, _, inp) = parts(&mut self.p, w);
        if side.reading && inp.eof && inp.bytes.is_empty() && !inp.eof_delivered && side.conn.wants_read() {
            inp.eof_delivered = true;
            side.conn.handle_eof(now);
            moved = true;
        }
        Ok(moved)
    }

    /// Polls every event of `w` (if its application is polling) into the model.
    fn drain(&mut self, w: Who) -> R<bool> {
        if !self.polling[w.i()] {
            return Ok(false);
        }
        let mut any = false;
        while let Some(e) = self.conn(w).poll_event() {
            any = true;
            self.log(format!("{w:?} {}", norm(&e, self.base)));
            self.on_event(w, e)?;
        }
        self.m.last_drain[w.i()] = Some(self.now());
        self.after_drain(w)?;
        Ok(any)
    }

    /// The driver closes the transport of a closed connection once written out.
    fn close_transports(&mut self) {
        if !self.setup.close_transport {
            return;
        }
        for w in Who::BOTH {
            let (side, out, _) = parts(&mut self.p, w);
            if side.conn.is_closed() && side.conn.transmit_len() == 0 && !out.eof {
                out.eof = true;
            }
        }
    }

    /// One round of the event loop.
    fn step(&mut self) -> R<bool> {
        self.note_impeded();
        let mut moved = self.due_timers()?;
        for w in Who::BOTH {
            moved |= self.flush(w, usize::MAX);
        }
        for w in Who::BOTH {
            moved |= self.deliver(w, usize::MAX)?;
        }
        for w in Who::BOTH {
            moved |= self.drain(w)?;
        }
        self.close_transports();
        Ok(moved)
    }

    fn drive(&mut self) -> R {
        for _ in 0..100_000 {
            if !self.step()? {
                // Idle: a driver may sleep until `poll_timeout`, which must
                // not hide output or events, and no timer is overdue.
                let now = self.now();
                for w in Who::BOTH {
                    let c = self.conn_ref(w);
                    ensure!(c.next_timer().is_none_or(|t| t > now), "{w:?}: idle with an overdue timer");
                    // (A driver that pops whole chunks and is blocked writing one
                    // has output it has not collected: then `poll_timeout` is now.)
                    let collected = !self.setup.pop_chunks[w.i()] || c.transmit_len() == 0;
                    if self.polling[w.i()] && collected {
                        ensure!(c.poll_timeout() == c.next_timer(), "{w:?}: idle but poll_timeout is not next_timer");
                    }
                }
                return Ok(());
            }
        }
        Err("the pair did not become idle (livelock)".into())
    }

    /// Time passes by `d`. Driven: the loop wakes at every timer on the way.
    fn advance(&mut self, d: Duration, driven: bool) -> R {
        let end = self.now() + d;
        if !driven {
            self.p.now = end;
            self.last_impeded = end;
            for w in Who::BOTH {
                self.timeout(w)?;
            }
            return Ok(());
        }
        self.drive()?;
        for _ in 0..1_000_000 {
            let mut t = end;
            for w in Who::BOTH {
                if let Some(x) = self.conn(w).next_timer() {
                    t = t.min(x);
                }
            }
            self.p.now = t.max(self.now());
            for w in Who::BOTH {
                self.timeout(w)?;
            }
            self.drive()?;
            if self.now() >= end {
                return Ok(());
            }
        }
        Err("timers keep firing without time passing".into())
    }

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

    fn on_event(&mut self, w: Who, e: Event) -> R {
        let now = self.now();
        ensure!(self.m.closed[w.i()].is_none(), "{w:?}: event after Closed: {e:?}");
        match e {
            Event::Response { id, result } => self.on_response(w, id.0, result),
            Event::Request(call) => {
                let id = call.id.0;
                let c = self.m.calls.get_mut(&id).ok_or_else(|| format!("{w:?}: Request {id} never made"))?;
                ensure!(c.callee() == w, "{w:?}: Request {id} made by this side");
                ensure!(!c.delivered, "{w:?}: Request {id} delivered twice");
                ensure!(
                    call.kind == c.kind
                        && call.payload == c.payload
                        && call.method == "m"
                        && call.metadata == c.metadata
                        && call.trace_id == c.trace_id,
                    "{w:?}: Request {id} differs from what was sent"
                );
                ensure!(
                    matches!(
                        c.outcome,
                        None | Some(Err(CallError::Cancelled | CallError::TimedOut(_) | CallError::ConnectionLost(_)))
                    ),
                    "{w:?}: Request {id} delivered although the caller already has outcome {:?}",
                    c.outcome
                );
                // Beyond u32 milliseconds (49 days) the callee gets no deadline.
                let on_wire = c.timeout.filter(|t| t.as_nanos().div_ceil(1_000_000) < u128::from(u32::MAX));
                match (call.deadline, on_wire) {
                    (None, None) => {}
                    (Some(d), Some(t)) => ensure!(
                        d >= c.deadline.unwrap() && d <= now + t + Duration::from_millis(1),
                        "{w:?}: Request {id} deadline inconsistent with the caller's"
                    ),
                    (d, t) => return Err(format!("{w:?}: Request {id} deadline {d:?} but caller timeout {t:?}")),
                }
                c.delivered = true;
                c.in_deadline = call.deadline;
                Ok(())
            }
            Event::CallCancelled { id, reason } => {
                let id = id.0;
                let c = self.m.calls.get_mut(&id).ok_or_else(|| format!("{w:?}: CallCancelled {id} never made"))?;
                ensure!(c.callee() == w && c.delivered, "{w:?}: CallCancelled {id} for a call it does not serve");
                ensure!(c.callee_end.is_none(), "{w:?}: CallCancelled {id} after its end {:?}", c.callee_end);
                match &reason {
                    CancelReason::Peer => ensure!(
                        c.cancelled || c.deadline.is_some_and(|d| d <= now) || self.m.closed[c.caller.i()].is_some(),
                        "{w:?}: CallCancelled({id}, Peer) but the caller neither cancelled nor timed out"
                    ),
                    CancelReason::DeadlineExceeded => ensure!(
                        c.in_deadline.is_some_and(|d| d <= now),
                        "{w:?}: CallCancelled({id}, DeadlineExceeded) before the deadline"
                    ),
                    CancelReason::ConnectionLost(_) => {}
                    other => return Err(format!("unknown cancel reason {other:?}")),
                }
                c.callee_end = Some(End::Cancelled(reason));
                Ok(())
            }
            Event::StreamData { id, payload } => {
                let c = self.m.calls.get_mut(&id.0).ok_or_else(|| format!("{w:?}: StreamData {id} never made"))?;
                let live = if w == c.caller {
                    c.outcome.is_none() && c.kind.callee_sends()
                } else {
                    c.delivered
                        && (c.callee_end.is_none() || c.answered_unpolled)
                        && !c.end_seen
                        && c.kind.caller_sends()
                };
                ensure!(live, "{w:?}: StreamData on call {id} that is not open for receiving here");
                let f = c.recv_flow(w);
                ensure!(
                    f.sent.get(f.recv) == Some(&payload),
                    "{w:?}: StreamData #{} on call {id} ({} bytes) is not the next message sent",
                    f.recv,
                    payload.len()
                );
                f.recv += 1;
                f.unconsumed.push_back(payload.len());
                f.held += payload.len().max(1) as u64;
                Ok(())
            }
            Event::StreamEnd { id } => {
                let c = self.m.calls.get_mut(&id.0).ok_or_else(|| format!("{w:?}: StreamEnd {id} never made"))?;
                ensure!(
                    c.callee() == w && c.delivered && (c.callee_end.is_none() || c.answered_unpolled),
                    "{w:?}: StreamEnd {id} out of place"
                );
                ensure!(c.finished && !c.end_seen, "{w:?}: StreamEnd {id} without one finish");
                ensure!(c.up.recv == c.up.sent.len(), "{w:?}: StreamEnd {id} before all data");
                c.end_seen = true;
                Ok(())
            }
            Event::StreamWritable { id } => {
                let c = self.m.calls.get_mut(&id.0).ok_or_else(|| format!("{w:?}: StreamWritable {id} never made"))?;
                let f = c.send_flow(w);
                ensure!(f.writable_allowed > 0, "{w:?}: StreamWritable {id} without StreamBlocked");
                f.writable_allowed -= 1;
                f.blocked = false;
                Ok(())
            }
            Event::Notification(n) => {
                let exp = self.m.notes[w.peer().i()].pop_front();
                ensure!(n.method == "n" && exp.as_ref() == Some(&n.payload), "{w:?}: unexpected notification");
                Ok(())
            }
            Event::Pong { id, .. } => {
                let p = self.m.pings[w.i()].get_mut(&id).ok_or_else(|| format!("{w:?}: Pong {id} for no ping"))?;
                ensure!(!*p, "{w:?}: Pong {id} twice");
                *p = true;
                Ok(())
            }
            Event::Writable => {
                ensure!(self.m.writable_due[w.i()] > 0, "{w:?}: Writable without Blocked");
                self.m.writable_due[w.i()] -= 1;
                Ok(())
            }
            Event::GoodbyeReceived { .. } => {
                ensure!(!self.m.goodbye_rx[w.i()], "{w:?}: GoodbyeReceived twice");
                let p = w.peer().i();
                ensure!(
                    self.m.local_close[p] || self.m.aborted[p] || self.setup.keepalive || self.m.local_close[w.i()],
                    "{w:?}: GoodbyeReceived but the peer never said goodbye"
                );
                self.m.goodbye_rx[w.i()] = true;
                Ok(())
            }
            Event::Closed(err) => self.on_closed(w, err),
            Event::Subscribe { id, topic, prefix, .. } => {
                ensure!(w == Who::Server, "client got Subscribe");
                let s = self.m.subs.get_mut(&id.0).ok_or_else(|| format!("Subscribe {id} never made"))?;
                ensure!(!s.server_seen && topic == s.topic.as_str() && prefix == s.prefix, "Subscribe {id} mismatch");
                ensure!(!matches!(s.result, Some(Err(AckError::Refused(_)))), "Subscribe {id} seen but refused");
                s.server_seen = true;
                Ok(())
            }
            Event::Unsubscribe { id } => {
                ensure!(w == Who::Server, "client got Unsubscribe");
                let s = self.m.subs.get_mut(&id.0).ok_or_else(|| format!("Unsubscribe {id} never made"))?;
                ensure!(s.unsub.as_ref().is_some_and(|u| u.wire), "Unsubscribe {id} never sent");
                ensure!(s.server_seen && !s.server_unsub_seen, "Unsubscribe {id} out of place");
                ensure!(s.server_answer.is_none_or(|c| !is_refusal(c)), "Unsubscribe {id} of a refused subscription");
                s.server_unsub_seen = true;
                Ok(())
            }
            Event::Publish { ack, topic, payload } => {
                ensure!(w == Who::Server, "client got Publish");
                let from = self.m.next_pub;
                let i = (from..self.m.pubs.len())
                    .find(|&i| self.m.pubs[i].payload == payload)
                    .ok_or_else(|| "Publish never made".to_string())?;
                let p = &mut self.m.pubs[i];
                ensure!(p.ack == ack.map(|a| a.0) && topic == p.topic.as_str(), "Publish mismatch");
                ensure!(!matches!(p.result, Some(Err(AckError::Refused(_)))), "Publish seen but refused");
                p.server_seen = true;
                self.m.next_pub = i + 1;
                Ok(())
            }
            Event::SubscribeResult { id, result } => {
                ensure!(w == Who::Client, "server got SubscribeResult");
                let s = self.m.subs.get_mut(&id.0).ok_or_else(|| format!("SubscribeResult {id} never made"))?;
                ensure!(s.result.is_none(), "SubscribeResult {id} twice");
                match &result {
                    Ok(()) => ensure!(
                        s.server_answer == Some(Code::OK)
                            || (s.server_answer.is_none() && s.unsub.as_ref().is_some_and(|u| u.wire)),
                        "SubscribeResult {id} Ok but the server app answered {:?}",
                        s.server_answer
                    ),
                    Err(AckError::Refused(c)) => ensure!(
                        s.server_answer == Some(*c)
                            || (!s.server_seen && [Code::SHUTTING_DOWN, Code::TOO_MANY_SUBSCRIPTIONS].contains(c)),
                        "SubscribeResult {id} refused {c:?} but the server app answered {:?}",
                        s.server_answer
                    ),
                    Err(AckError::ConnectionLost(_)) => {}
                    Err(other) => return Err(format!("unknown AckError {other:?}")),
                }
                s.result = Some(result);
                Ok(())
            }
            Event::UnsubscribeResult { id, result } => {
                ensure!(w == Who::Client, "server got UnsubscribeResult");
                let s = self.m.subs.get_mut(&id.0).ok_or_else(|| format!("UnsubscribeResult {id} never made"))?;
                let sub_result = s.result.clone();
                let u = s.unsub.as_mut().filter(|u| u.wire).ok_or_else(|| format!("UnsubscribeResult {id} unasked"))?;
                ensure!(u.result.is_none(), "UnsubscribeResult {id} twice");
                match &result {
                    Ok(()) => {
                        ensure!(sub_result == Some(Ok(())), "Unsubscribe {id} Ok but subscribe was {sub_result:?}")
                    }
                    Err(AckError::Refused(c)) => ensure!(
                        *c == Code::UNKNOWN_SUBSCRIPTION && matches!(sub_result, Some(Err(AckError::Refused(_)))),
                        "Unsubscribe {id} refused {c:?} but subscribe was {sub_result:?}"
                    ),
                    _ => {}
                }
                u.result = Some(result);
                Ok(())
            }
            Event::PublishResult { id, result } => {
                ensure!(w == Who::Client, "server got PublishResult");
                let p = self
                    .m
                    .pubs
                    .iter_mut()
                    .find(|p| p.ack == Some(id.0))
                    .ok_or_else(|| format!("PublishResult {id} never made"))?;
                ensure!(p.result.is_none(), "PublishResult {id} twice");
                match &result {
                    Ok(n) => {
                        ensure!(p.server_answer == Some(Ok(*n)), "PublishResult {id} Ok({n}) vs {:?}", p.server_answer)
                    }
                    Err(AckError::Refused(c)) => ensure!(
                        p.server_answer == Some(Err(*c))
                            || (!p.server_seen && [Code::SHUTTING_DOWN, Code::BUSY].contains(c)),
                        "PublishResult {id} refused {c:?} vs {:?}",
                        p.server_answer
                    ),
                    _ => {}
                }
                p.result = Some(result);
                Ok(())
            }
            Event::Message { subscription, topic, payload } => {
                ensure!(w == Who::Client, "server got Message");
                let s = self.m.subs.get_mut(&subscription.0).ok_or_else(|| format!("Message for {subscription}"))?;
                ensure!(!s.unsub.as_ref().is_some_and(|u| u.clean), "Message for {subscription} after unsubscribe");
                ensure!(!matches!(s.result, Some(Err(_))), "Message for refused {subscription}");
                ensure!(
                    s.delivered.get(s.received) == Some(&(topic, payload)),
                    "Message #{} for {subscription} is not the next one delivered",
                    s.received
                );
                s.received += 1;
                Ok(())
            }
            other => Err(format!("{w:?}: unexpected event {other:?}")),
        }
    }

    fn on_response(&mut self, w: Who, id: u64, result: Result<Bytes, CallError>) -> R {
        let now = self.now();
        let last_drain = self.m.last_drain[w.i()].unwrap_or(self.base);
        let callee_closing = self.m.local_close[w.peer().i()];
        let queued = self.queued_total(w);
        let caller_open = !self.conn_ref(w).is_closed();
        let c = self.m.calls.get_mut(&id).ok_or_else(|| format!("{w:?}: Response for call {id}, never issued"))?;
        ensure!(c.caller == w, "{w:?}: Response for call {id}, which the peer made");
        ensure!(c.outcome.is_none(), "{w:?}: second outcome for call {id}: {:?} then {result:?}", c.outcome);
        ensure!(
            c.cancelled == matches!(result, Err(CallError::Cancelled)),
            "{w:?}: call {id} cancelled={} but outcome {result:?}",
            c.cancelled
        );
        let answered = match &result {
            Ok(p) => {
                ensure!(
                    matches!(&c.callee_end, Some(End::Answered(Ok(q))) if q == p),
                    "{w:?}: call {id} Ok({} bytes) but the callee's end is {:?}",
                    p.len(),
                    c.callee_end
                );
                true
            }
            Err(CallError::Remote { code, message, data }) => match &c.callee_end {
                Some(End::Answered(Err((cc, mm, dd)))) if cc == code && mm == message && dd == data => true,
                _ => {
                    ensure!(
                        !c.delivered,
                        "{w:?}: call {id} got Remote({code:?}) but the callee saw it and ended it with {:?}",
                        c.callee_end
                    );
                    let ok = *code == Code::BUSY
                        || (*code == Code::SHUTTING_DOWN && callee_closing)
                        || (*code == Code::TOO_MANY_STREAMS && c.kind.is_stream());
                    ensure!(ok, "{w:?}: call {id} refused with unexpected {code:?} {message:?}");
                    false
                }
            },
            Err(CallError::TimedOut(d)) => {
                ensure!(c.timeout == Some(*d), "{w:?}: call {id} TimedOut({d:?}) but its timeout is {:?}", c.timeout);
                ensure!(c.deadline.is_some_and(|dl| dl <= now), "{w:?}: call {id} TimedOut before its deadline");
                false
            }
            Err(CallError::Cancelled | CallError::ConnectionLost(_)) => false,
            Err(other) => return Err(format!("unknown CallError {other:?}")),
        };
        if matches!(result, Ok(_) | Err(CallError::Remote { .. })) {
            ensure!(
                c.deadline.is_none_or(|d| d > last_drain),
                "{w:?}: call {id} answered after its deadline had passed"
            );
        }
        if let Some(a) = c.arrived_at {
            // The whole answer had been fed to the open caller: it decides,
            // unless the call was cancelled or timed out before.
            let ok = answered
                || matches!(result, Err(CallError::Cancelled))
                || (matches!(result, Err(CallError::TimedOut(_))) && c.deadline.is_some_and(|d| d <= a));
            ensure!(ok, "{w:?}: call {id}: the answer arrived at {:?} but the outcome is {result:?}", a - self.base);
            if answered {
                ensure!(c.deadline.is_none_or(|d| d > a), "{w:?}: call {id} answered after its deadline had passed");
            }
        }
        if matches!(result, Err(CallError::TimedOut(_))) && caller_open {
            c.cancel_end = Some(queued);
        }
        if answered {
            ensure!(
                c.down.recv == c.down.sent.len(),
                "{w:?}: call {id}'s response overtook stream data ({} of {} received)",
                c.down.recv,
                c.down.sent.len()
            );
        }
        c.outcome = Some(result);
        Ok(())
    }

    fn on_closed(&mut self, w: Who, err: ConnectionError) -> R {
        let i = w.i();
        let plausible = match &err {
            ConnectionError::LocallyClosed { .. } => self.m.local_close[i] || self.m.aborted[i],
            ConnectionError::PeerClosed { .. } => self.m.goodbye_rx[i],
            ConnectionError::UnexpectedEof { .. } => parts(&mut self.p, w).2.eof_delivered,
            // A pair that talks freely keeps itself alive.
            ConnectionError::KeepaliveTimeout(d) | ConnectionError::PeerNotReading { stalled: d, .. } => {
                let enabled = self.setup.keepalive || matches!(err, ConnectionError::PeerNotReading { .. });
                let since = self.now().checked_sub(*d).unwrap_or(self.base);
                enabled && self.last_impeded >= since
            }
            ConnectionError::Transport { .. } => self.m.transport_err[i],
            _ => false,
        };
        ensure!(plausible, "{w:?}: Closed({err:?}) cannot happen here");
        if matches!(err, ConnectionError::PeerNotReading { .. }) {
            // The transmit queue was dropped.
            self.m.crashed[i] = true;
        }
        for (id, c) in &self.m.calls {
            if c.caller == w {
                match &c.outcome {
                    None => return Err(format!("{w:?}: closed with call {id} still without outcome")),
                    Some(Err(CallError::ConnectionLost(e))) => {
                        ensure!(*e == err, "{w:?}: call {id} lost with {e:?}, closed with {err:?}")
                    }
                    _ => {}
                }
            }
            if c.callee() == w && c.delivered {
                match &c.callee_end {
                    None => return Err(format!("{w:?}: closed with served call {id} neither answered nor cancelled")),
                    Some(End::Cancelled(CancelReason::ConnectionLost(e))) => {
                        ensure!(*e == err, "{w:?}: served call {id} cancelled with {e:?}, closed with {err:?}")
                    }
                    _ => {}
                }
            }
        }
        if w == Who::Client {
            for (id, s) in &self.m.subs {
                ensure!(s.result.is_some(), "closed with subscribe {id} unanswered");
                if let Some(u) = &s.unsub {
                    ensure!(!u.wire || u.result.is_some(), "closed with unsubscribe {id} unanswered");
                }
            }
            for p in &self.m.pubs {
                ensure!(p.ack.is_none() || p.result.is_some(), "closed with publish {:?} unanswered", p.ack);
            }
        }
        self.m.closed[i] = Some(err);
        Ok(())
    }

    /// After `w`'s event queue was emptied: counters agree with the model.
    fn after_drain(&mut self, w: Who) -> R {
        let i = w.i();
        for (id, c) in &self.m.calls {
            if c.caller == w && matches!(c.outcome, Some(Err(CallError::ConnectionLost(_)))) {
                ensure!(self.m.closed[i].is_some(), "{w:?}: call {id} ConnectionLost without Closed");
            }
        }
        let fed = self.fed[i];
        for (id, c) in &self.m.calls {
            if c.caller == w && c.arrived_at.is_some() {
                ensure!(c.outcome.is_some(), "{w:?}: call {id}'s answer arrived but it has no outcome");
            }
            if c.callee() == w && c.delivered && c.callee_end.is_none() {
                ensure!(
                    c.cancel_end.is_none_or(|e| e > fed),
                    "{w:?}: the CANCEL of call {id} arrived but the call is still being served"
                );
            }
        }
        if self.m.closed[i].is_none() {
            // Both goodbyes exchanged (ours is sent on receipt of the peer's
            // at the latest) and nothing in flight: the close completes at once.
            let idle = self.m.pending(w) == 0 && self.m.served(w) == 0 && self.m.ops_pending(w) == 0;
            ensure!(!(self.m.goodbye_rx[i] && idle), "{w:?}: goodbye received, nothing in flight, but not closed");
            let next = self.conn_ref(w).next_timer();
            for (id, c) in &self.m.calls {
                let d = if c.caller == w && c.outcome.is_none() {
                    c.deadline
                } else if c.callee() == w && c.delivered && c.callee_end.is_none() {
                    c.in_deadline
                } else {
                    None
                };
                if let Some(d) = d {
                    ensure!(next.is_some_and(|t| t <= d), "{w:?}: next_timer {next:?} is after call {id}'s deadline");
                }
            }
        }
        ensure!(self.m.writable_due[i] == 0, "{w:?}: the queue drained below half after Blocked, but no Writable");
        let c = self.conn_ref(w);
        ensure!(c.is_closed() == self.m.closed[i].is_some(), "{w:?}: is_closed() disagrees with the Closed event");
        let (inflight, served, subs) = (c.calls_in_flight(), c.calls_being_served(), c.subscription_count());
        ensure!(inflight == self.m.pending(w), "{w:?}: calls_in_flight {inflight}, model {}", self.m.pending(w));
        ensure!(served == self.m.served(w), "{w:?}: calls_being_served {served}, model {}", self.m.served(w));
        let msubs = if w == Who::Client { self.m.client_subs() } else { self.m.server_subs() };
        ensure!(subs == msubs, "{w:?}: subscription_count {subs}, model {msubs}");
        if c.is_closed() {
            ensure!(inflight == 0 && served == 0 && subs == 0, "{w:?}: I4 counters not 0 after close");
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------

    /// Common checks of a command's error.
    fn check_err(&mut self, w: Who, e: &SendError, before: usize) -> R {
        match e {
            SendError::Blocked { .. } => {
                ensure!(before >= self.cfg.max_outbound_buffered, "{w:?}: Blocked with {before} bytes queued");
                self.m.blocked[w.i()] = true;
            }
            SendError::Closed(err) => {
                ensure!(self.conn_ref(w).is_closed(), "{w:?}: Closed error on an open connection");
                if self.polling[w.i()] {
                    ensure!(self.m.closed[w.i()].as_ref() == Some(err), "{w:?}: Closed({err:?}) before the event");
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn stream_send(&mut self, w: Who, id: u64, size: usize) -> R {
        let payload = self.payload(size);
        let before = self.conn(w).transmit_len();
        let r = self.conn(w).stream_send(RequestId(id), payload.clone());
        self.log(format!("{w:?} stream_send {id} {size} -> {r:?}"));
        let (polled, fed, window) = (self.polling[w.i()], self.fed[w.i()], i64::from(self.cfg.initial_stream_window));
        let c = self.m.calls.get_mut(&id).unwrap();
        let live = if c.caller == w { c.outcome.is_none() } else { c.callee_end.is_none() };
        let finished = c.caller == w && c.finished;
        let f = c.send_flow(w);
        if polled && live && !finished && !f.credit_unknown && self.m.closed[w.i()].is_none() {
            // Credit: the window, less what was sent, plus every CREDIT fed to the sender.
            let credit = window - f.spent + f.grants.iter().filter(|g| g.0 <= fed).map(|g| g.1 as i64).sum::<i64>();
            match &r {
                Ok(()) | Err(SendError::Blocked { .. }) => {
                    ensure!(credit > 0, "{w:?}: stream {id} sent with credit {credit}")
                }
                Err(SendError::StreamBlocked { .. }) => {
                    ensure!(credit <= 0, "{w:?}: stream {id} blocked with credit {credit}")
                }
                _ => {}
            }
        }
        let c = self.m.calls.get_mut(&id).unwrap();
        match r {
            Ok(()) => {
                ensure!(live, "{w:?}: stream_send on ended call {id} accepted");
                ensure!(!(c.caller == w && c.finished), "{w:?}: stream_send after finish accepted");
                let f = c.send_flow(w);
                f.spent += payload.len().max(1) as i64;
                f.sent.push(payload);
            }
            Err(SendError::StreamBlocked { .. }) => {
                ensure!(live || !self.polling[w.i()], "{w:?}: StreamBlocked on ended call {id}");
                let polled = self.polling[w.i()];
                let f = c.send_flow(w);
                if !f.blocked || !polled {
                    f.writable_allowed += 1;
                }
                f.blocked = true;
            }
            Err(SendError::UnknownCall { .. }) => {
                ensure!(!live || !self.polling[w.i()], "{w:?}: stream_send({id}) UnknownCall on a live call")
            }
            Err(SendError::InvalidState(_)) => ensure!(c.caller == w && c.finished, "{w:?}: stream_send InvalidState"),
            Err(e) => {
                self.check_err(w, &e, before)?;
                match e {
                    SendError::Blocked { .. } => {} // noted by check_err
                    SendError::TooLarge { .. } => {
                        ensure!(size + FRAME_OVERHEAD > self.cfg.max_frame_size as usize, "DATA TooLarge")
                    }
                    SendError::Closed(_) => {}
                    other => return Err(format!("{w:?}: stream_send failed with {other:?}")),
                }
            }
        }
        Ok(())
    }

    fn notify(&mut self, w: Who, size: usize) -> R {
        let payload = self.payload(size);
        let before = self.conn(w).transmit_len();
        let r = self.conn(w).notify("n", payload.clone(), CallOptions::new());
        self.log(format!("{w:?} notify {size} -> {r:?}"));
        match r {
            Ok(()) => {
                ensure!(!self.m.closing(w), "{w:?}: notify accepted while closing");
                self.m.notes[w.i()].push_back(payload);
            }
            Err(SendError::Closing) => {
                ensure!(self.m.closing(w) || !self.polling[w.i()], "{w:?}: notify Closing")
            }
            Err(SendError::TooLarge { .. }) => {
                ensure!(size + FRAME_OVERHEAD > self.cfg.max_frame_size as usize, "notify TooLarge")
            }
            Err(e @ (SendError::Blocked { .. } | SendError::Closed(_))) => self.check_err(w, &e, before)?,
            Err(e) => return Err(format!("{w:?}: notify failed with {e:?}")),
        }
        Ok(())
    }

    fn answer(&mut self, w: Who, id: u64, answer: Answer) -> R {
        let before = self.conn(w).transmit_len();
        let (r, end) = match answer {
            Answer::Ok(size) => {
                let p = self.payload(size);
                (self.conn(w).respond(RequestId(id), p.clone()), Ok(p))
            }
            Answer::Err(code, size) => {
                let data = self.payload(size);
                let msg = format!("e{id}");
                let r = self.conn(w).respond_error(RequestId(id), Code(code), &msg, data.clone());
                (r, Err((Code(code), Text::from(msg), data)))
            }
        };
        self.log(format!("{w:?} answer {id} {answer:?} -> {r:?}"));
        let ended = self.m.calls[&id].callee_end.is_some();
        match r {
            Ok(()) => {
                ensure!(!ended, "{w:?}: answered call {id} that had already ended");
                let pos = self.queued_total(w);
                let c = self.m.calls.get_mut(&id).unwrap();
                c.resp_end = Some(pos);
                c.callee_end = Some(End::Answered(end));
                c.answered_unpolled = !self.polling[w.i()];
            }
            Err(e) => {
                self.check_err(w, &e, before)?;
                match e {
                    SendError::UnknownCall { .. } => ensure!(
                        ended || !self.polling[w.i()],
                        "{w:?}: respond({id}) UnknownCall on a call it still serves"
                    ),
                    SendError::Blocked { .. } => {} // noted by check_err
                    SendError::TooLarge { .. } => {
                        ensure!(
                            matches!(answer, Answer::Ok(n) if n + FRAME_OVERHEAD > self.cfg.max_frame_size as usize),
                            "{w:?}: response TooLarge"
                        )
                    }
                    SendError::Closed(_) => {}
                    other => return Err(format!("{w:?}: respond failed with {other:?}")),
                }
            }
        }

        Ok(())
    }

    fn apply(&mut self, op: &Op) -> R {
        let now = self.now();
        match *op {
            Op::Calls { from, timeout, count } => {
                for _ in 0..count {
                    self.apply(&Op::Call { from, kind: CallKind::Unary, timeout, size: 0, extras: (0, false) })?;
                }
            }
            Op::Call { from: w, kind, timeout, size, extras: (entries, trace) } => {
                let payload = self.payload(size);
                let before = self.conn(w).transmit_len();
                let mut metadata = Metadata::new();
                for k in 0..entries {
                    metadata.insert(format!("k{k}"), self.payload(usize::from(k) * 3));
                }
                let mut opts = CallOptions::new().kind(kind).timeout(timeout_of(timeout)).metadata(metadata.clone());
                if trace {
                    opts = opts.trace_id([self.seq as u8; 16]);
                }
                let trace_id = opts.trace_id;
                let r = self.conn(w).request("m", payload.clone(), opts, now);
                self.log(format!("{w:?} request {kind:?} {timeout:?} {size} -> {r:?}"));
                let polled = self.polling[w.i()];
                let limit = self.cfg.max_in_flight as usize;
                match r {
                    Ok(id) => {
                        let id = id.0;
                        ensure!((id % 2 == 1) == (w == Who::Client), "{w:?}: call id {id} of the wrong parity");
                        ensure!(!self.m.calls.contains_key(&id), "{w:?}: call id {id} reused");
                        ensure!(before < self.cfg.max_outbound_buffered, "{w:?}: request accepted while blocked");
                        ensure!(
                            !self.m.closing(w) && self.m.closed[w.i()].is_none(),
                            "{w:?}: request accepted while closing"
                        );
                        ensure!(size <= self.cfg.max_frame_size as usize, "{w:?}: oversized request accepted");
                        ensure!(!polled || self.m.pending(w) < limit, "{w:?}: request above max_in_flight accepted");
                        let t = match timeout_of(timeout) {
                            Timeout::Default if kind == CallKind::Unary => self.cfg.request_timeout,
                            Timeout::After(d) => Some(d.min(MAX_TIMEOUT)),
                            _ => None,
                        };
                        let c = CallM {
                            caller: w,
                            kind,
                            payload,
                            metadata,
                            trace_id,
                            timeout: t,
                            deadline: t.map(|t| now + t),
                            cancelled: false,
                            outcome: None,
                            delivered: false,
                            in_deadline: None,
                            callee_end: None,
                            answered_unpolled: false,
                            resp_end: None,
                            arrived_at: None,
                            cancel_end: None,
                            up: Flow::default(),
                            down: Flow::default(),
                            finished: false,
                            end_seen: false,
                        };
                        self.m.calls.insert(id, c);
                    }
                    Err(e) => {
                        self.check_err(w, &e, before)?;
                        match e {
                            SendError::Blocked { .. } => {} // noted by check_err
                            SendError::Closing => ensure!(
                                self.m.closing(w) || !polled,
                                "{w:?}: request refused as Closing on an open connection"
                            ),
                            SendError::TooManyInFlight { .. } => {
                                ensure!(self.m.pending(w) >= limit, "{w:?}: TooManyInFlight below the limit")
                            }
                            SendError::TooManyStreams { .. } => ensure!(
                                kind.is_stream() && self.m.pending_streams(w) >= self.cfg.max_streams as usize,
                                "{w:?}: TooManyStreams below the limit"
                            ),
                            SendError::TooLarge { .. } => ensure!(
                                size + FRAME_OVERHEAD > self.cfg.max_frame_size as usize,
                                "{w:?}: {size}-byte request TooLarge"
                            ),
                            SendError::Closed(_) => {}
                            other => return Err(format!("{w:?}: request failed with {other:?}")),
                        }
                    }
                }
            }
            Op::Answer { by: w, pick, answer } => {
                let ids: Vec<u64> =
                    self.m.calls.iter().filter(|(_, c)| c.callee() == w && c.delivered).map(|(id, _)| *id).collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                self.answer(w, id, answer)?;
            }
            Op::AnswerMany { by: w, count } => {
                let ids: Vec<u64> = self
                    .m
                    .calls
                    .iter()
                    .filter(|(_, c)| c.callee() == w && c.delivered && c.callee_end.is_none())
                    .map(|(id, _)| *id)
                    .take(usize::from(count))
                    .collect();
                for id in ids {
                    self.answer(w, id, Answer::Ok(0))?;
                }
            }
            Op::Cancel { by: w, pick } => {
                let ids: Vec<u64> = self.m.calls.iter().filter(|(_, c)| c.caller == w).map(|(id, _)| *id).collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                let r = self.conn(w).cancel(RequestId(id));
                self.log(format!("{w:?} cancel {id} -> {r:?}"));
                let done = self.m.calls[&id].outcome.is_some();
                match r {
                    Ok(()) => {
                        ensure!(!done, "{w:?}: cancelled call {id} which already had an outcome");
                        let pos = self.queued_total(w);
                        let c = self.m.calls.get_mut(&id).unwrap();
                        c.cancelled = true;
                        c.cancel_end = Some(pos);
                    }
                    Err(SendError::UnknownCall { .. }) => {
                        ensure!(done || !self.polling[w.i()], "{w:?}: cancel({id}) UnknownCall on a pending call")
                    }
                    Err(e @ SendError::Closed(_)) => self.check_err(w, &e, 0)?,
                    Err(e) => return Err(format!("{w:?}: cancel failed with {e:?}")),
                }
            }
            Op::StreamSend { by: w, pick, size, count } => {
                let ids: Vec<u64> = self
                    .m
                    .calls
                    .iter()
                    .filter(|(_, c)| {
                        (c.caller == w && c.kind.caller_sends())
                            || (c.callee() == w && c.delivered && c.kind.callee_sends())
                    })
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                for _ in 0..count {
                    self.stream_send(w, id, size)?;
                }
            }
            Op::StreamConsume { by: w, count } => {
                let mut left = count;
                let mut todo = Vec::new();
                for (id, c) in self.m.calls.iter_mut() {
                    let f = if c.caller == w { &mut c.down } else { &mut c.up };
                    while left > 0
                        && let Some(len) = f.unconsumed.pop_front()
                    {
                        todo.push((*id, len));
                        left -= 1;
                    }
                }
                let half = u64::from(self.cfg.initial_stream_window / 2).max(1);
                for (id, len) in todo {
                    self.conn(w).stream_consumed(RequestId(id), len);
                    self.log(format!("{w:?} consumed {id} {len}"));
                    let pos = self.queued_total(w);
                    let (polled, open) = (self.polling[w.i()], self.m.closed[w.i()].is_none());
                    let c = self.m.calls.get_mut(&id).unwrap();
                    let live = if c.caller == w { c.outcome.is_none() } else { c.callee_end.is_none() };
                    let f = c.recv_flow(w);
                    if !polled {
                        f.credit_unknown = true;
                    } else if live && open {
                        // The receiver's batching: a CREDIT once half the window is consumed.
                        let n = (len as u64).max(1).min(f.held);
                        f.held -= n;
                        f.grant += n;
                        if f.grant >= half {
                            f.grants.push((pos, f.grant));
                            f.grant = 0;
                        }
                    }
                }
            }
            Op::StreamFinish { by: w, pick } => {
                let ids: Vec<u64> = self
                    .m
                    .calls
                    .iter()
                    .filter(|(_, c)| c.caller == w && c.kind.caller_sends())
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                let r = self.conn(w).stream_finish(RequestId(id));
                self.log(format!("{w:?} finish {id} -> {r:?}"));
                let c = self.m.calls.get_mut(&id).unwrap();
                match r {
                    Ok(()) => {
                        ensure!(
                            c.outcome.is_none() && !c.finished,
                            "{w:?}: finish({id}) accepted on ended/finished call"
                        );
                        c.finished = true;
                    }
                    Err(SendError::InvalidState(_)) => ensure!(c.finished, "{w:?}: finish({id}) InvalidState"),
                    Err(SendError::UnknownCall { .. }) => {
                        ensure!(c.outcome.is_some() || !self.polling[w.i()], "{w:?}: finish({id}) UnknownCall")
                    }
                    Err(e @ SendError::Closed(_)) => self.check_err(w, &e, 0)?,
                    Err(e) => return Err(format!("{w:?}: finish failed with {e:?}")),
                }
            }
            Op::Notify { from: w, size, count } => {
                for _ in 0..count {
                    self.notify(w, size)?;
                }
            }
            Op::Ping { from: w } => {
                let r = self.conn(w).ping(now);
                self.log(format!("{w:?} ping -> {r:?}"));
                match r {
                    Ok(id) => {
                        ensure!(self.m.pings[w.i()].insert(id, false).is_none(), "{w:?}: ping id {id} reused");
                    }
                    Err(SendError::TooManyInFlight { .. }) => {}
                    Err(e @ SendError::Closed(_)) => self.check_err(w, &e, 0)?,
                    Err(e) => return Err(format!("{w:?}: ping failed with {e:?}")),
                }
            }
            Op::Subscribe { topic, prefix } => {
                let w = Who::Client;
                let topic =
                    if prefix { ["", "t", "t1", "x"][topic as usize] } else { ["t0", "t1", "t2", "x"][topic as usize] };
                let before = self.conn(w).transmit_len();
                let opts = SubscribeOptions { prefix, ..Default::default() };
                let r = self.conn(w).subscribe(topic, opts);
                self.log(format!("subscribe {topic:?} {prefix} -> {r:?}"));
                match r {
                    Ok(id) => {
                        ensure!(!self.m.closing(w), "subscribe accepted while closing");
                        let s = SubM {
                            topic: topic.to_string(),
                            prefix,
                            result: None,
                            server_seen: false,
                            server_answer: None,
                            server_unsub_seen: false,
                            unsub: None,
                            delivered: Vec::new(),
                            received: 0,
                        };
                        ensure!(self.m.subs.insert(id.0, s).is_none(), "subscription id {id} reused");
                    }
                    Err(SendError::Closing) => ensure!(self.m.closing(w) || !self.polling[0], "subscribe Closing"),
                    Err(SendError::TooManySubscriptions { .. }) => {}
                    Err(e) => {
                        self.check_err(w, &e, before)?;
                        match e {
                            SendError::Blocked { .. } => {} // noted by check_err
                            SendError::Closed(_) => {}
                            other => return Err(format!("subscribe failed with {other:?}")),
                        }
                    }
                }
            }
            Op::SubAnswer { pick, accept } => {
                let ids: Vec<u64> = self.m.subs.iter().filter(|(_, s)| s.server_seen).map(|(id, _)| *id).collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                let code = if accept { Code::OK } else { Code::ACCESS_DENIED };
                let c = self.conn(Who::Server);
                let r = if accept {
                    c.accept_subscription(SubscriptionId(id))
                } else {
                    c.refuse_subscription(SubscriptionId(id), code)
                };
                self.log(format!("sub answer {id} {accept} -> {r:?}"));
                let s = self.m.subs.get_mut(&id).unwrap();
                match r {
                    Ok(()) => {
                        ensure!(s.server_answer.is_none() && !s.server_unsub_seen, "subscription {id} answered twice");
                        s.server_answer = Some(code);
                    }
                    Err(SendError::UnknownCall { .. }) => ensure!(
                        s.server_answer.is_some() || s.server_unsub_seen || !self.polling[1],
                        "accept/refuse({id}) UnknownCall on a pending subscription"
                    ),
                    Err(e @ SendError::Closed(_)) => self.check_err(Who::Server, &e, 0)?,
                    Err(e) => return Err(format!("accept/refuse failed with {e:?}")),
                }
            }
            Op::SubDeliver { pick, size } => {
                let ids: Vec<u64> = self.m.subs.iter().filter(|(_, s)| s.server_seen).map(|(id, _)| *id).collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                let s = &self.m.subs[&id];
                let topic = Text::from(if s.prefix { format!("{}z", s.topic) } else { s.topic.clone() });
                let payload = self.payload(size);
                let before = self.conn(Who::Server).transmit_len();
                let r = self.conn(Who::Server).deliver(SubscriptionId(id), &topic, payload.clone());
                self.log(format!("deliver {id} {size} -> {r:?}"));
                let s = self.m.subs.get_mut(&id).unwrap();
                let live = !s.server_unsub_seen && s.server_answer.is_none_or(|c| !is_refusal(c));
                match r {
                    Ok(()) => {
                        ensure!(live, "deliver to ended subscription {id} accepted");
                        s.delivered.push((topic, payload));
                    }
                    Err(SendError::UnknownCall { .. }) => {
                        ensure!(!live || !self.polling[1], "deliver({id}) UnknownCall on a live subscription")
                    }
                    Err(e) => {
                        self.check_err(Who::Server, &e, before)?;
                        match e {
                            SendError::Blocked { .. } => {} // noted by check_err
                            SendError::TooLarge { .. } => {
                                ensure!(size + FRAME_OVERHEAD > self.cfg.max_frame_size as usize, "MESSAGE TooLarge")
                            }
                            SendError::Closed(_) => {}
                            other => return Err(format!("deliver failed with {other:?}")),
                        }
                    }
                }
            }
            Op::Unsubscribe { pick } => {
                let ids: Vec<u64> = self.m.subs.keys().copied().collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let id = ids[pick.index(ids.len())];
                let closing = self.conn(Who::Client).is_closing();
                let r = self.conn(Who::Client).unsubscribe(SubscriptionId(id));
                self.log(format!("unsubscribe {id} -> {r:?}"));
                let polled = self.polling[0];
                let s = self.m.subs.get_mut(&id).unwrap();
                let active = s.unsub.is_none() && !matches!(s.result, Some(Err(_)));
                match r {
                    Ok(()) => {
                        ensure!(active || !polled, "unsubscribe({id}) accepted on an ended subscription");
                        s.unsub = Some(Unsub { clean: polled, wire: !closing, result: None });
                    }
                    Err(SendError::UnknownCall { .. }) => {
                        ensure!(!active || !polled, "unsubscribe({id}) UnknownCall on an active subscription")
                    }
                    Err(e @ SendError::Closed(_)) => self.check_err(Who::Client, &e, 0)?,
                    Err(e) => return Err(format!("unsubscribe failed with {e:?}")),
                }
            }
            Op::Publish { ack, size } => {
                let w = Who::Client;
                let payload = self.payload(8 + size);
                let before = self.conn(w).transmit_len();
                let r = self.conn(w).publish("t1", payload.clone(), ack);
                self.log(format!("publish {ack} {size} -> {r:?}"));
                match r {
                    Ok(id) => {
                        ensure!(!self.m.closing(w), "publish accepted while closing");
                        ensure!(id.is_some() == ack, "publish id {id:?} for ack={ack}");
                        self.m.pubs.push(PubM {
                            ack: id.map(|i| i.0),
                            topic: "t1".into(),
                            payload,
                            server_seen: false,
                            server_answer: None,
                            result: None,
                        });
                    }
                    Err(SendError::Closing) => ensure!(self.m.closing(w) || !self.polling[0], "publish Closing"),
                    Err(SendError::TooManyInFlight { .. }) => {}
                    Err(e) => {
                        self.check_err(w, &e, before)?;
                        match e {
                            SendError::Blocked { .. } => {} // noted by check_err
                            SendError::Closed(_) => {}
                            other => return Err(format!("publish failed with {other:?}")),
                        }
                    }
                }
            }
            Op::AckPublish { pick, ok } => {
                let idx: Vec<usize> = (0..self.m.pubs.len())
                    .filter(|&i| self.m.pubs[i].server_seen && self.m.pubs[i].ack.is_some())
                    .collect();
                if idx.is_empty() {
                    return Ok(());
                }
                let i = idx[pick.index(idx.len())];
                let id = self.m.pubs[i].ack.unwrap();
                let result = if ok { Ok(id as u32 % 7) } else { Err(Code(1000)) };
                let r = self.conn(Who::Server).ack_publish(wharf_core::PublishId(id), result);
                self.log(format!("ack publish {id} {result:?} -> {r:?}"));
                let p = &mut self.m.pubs[i];
                match r {
                    Ok(()) => {
                        ensure!(p.server_answer.is_none(), "publish {id} acknowledged twice");
                        p.server_answer = Some(result);
                    }
                    Err(SendError::UnknownCall { .. }) => {
                        ensure!(p.server_answer.is_some() || !self.polling[1], "ack_publish({id}) UnknownCall")
                    }
                    Err(e @ SendError::Closed(_)) => self.check_err(Who::Server, &e, 0)?,
                    Err(e) => return Err(format!("ack_publish failed with {e:?}")),
                }
            }
            Op::Step { rounds } => {
                for _ in 0..rounds {
                    self.step()?;
                }
            }
            Op::Drive => {
                self.drive()?;
                if self.polling.iter().all(|&b| b) && self.p.client.reading && self.p.server.reading {
                    self.idle_checks()?;
                }
            }
            Op::FlushSome { from, bytes } => {
                self.due_timers()?;
                self.flush(from, bytes);
            }
            Op::DeliverSome { to, bytes } => {
                self.due_timers()?;
                self.flush(to.peer(), usize::MAX);
                self.deliver(to, bytes)?;
                self.close_transports();
            }
            Op::Chunking(ref v) => self.chunking = v.clone(),
            Op::ZeroCopy { who, on } => parts(&mut self.p, who).0.zero_copy = on,
            Op::Advance { ms, driven } => self.advance(Duration::from_millis(ms), driven)?,
            Op::Reading { who, on } => parts(&mut self.p, who).0.reading = on,
            Op::Polling { who, on } => self.polling[who.i()] = on,
            Op::Close { who: w, hint } => {
                if !self.conn(w).is_closed() {
                    self.m.local_close[w.i()] = true;
                }
                self.conn(w).close(Code::SHUTTING_DOWN, "bye", hint.map(Duration::from_millis), now);
                self.log(format!("{w:?} close"));
            }
            Op::Abort { who: w } => {
                if !self.conn(w).is_closed() {
                    self.m.aborted[w.i()] = true;
                }
                self.conn(w).abort(Code(1002), "abort", now);
                self.log(format!("{w:?} abort"));
            }
            Op::Eof { who } => {
                parts(&mut self.p, who).1.eof = true;
                self.m.crashed[who.i()] = true;
                self.log(format!("{who:?} eof"));
            }
            Op::TransportError { who: w } => {
                self.m.crashed[w.i()] = true;
                if !self.conn(w).is_closed() {
                    self.m.transport_err[w.i()] = true;
                }
                let e = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
                self.conn(w).handle_transport_error(&e, now);
                parts(&mut self.p, w).1.eof = true;
                self.log(format!("{w:?} transport error"));
            }
        }
        for w in Who::BOTH {
            self.drain(w)?;
            self.check_limits(w)?;
        }
        self.note_impeded();
        Ok(())
    }

    // ------------------------------------------------------------------
    // The end: idle, every deadline passed, closed
    // ------------------------------------------------------------------

    fn idle_checks(&mut self) -> R {
        let open = Who::BOTH.map(|w| self.m.closed[w.i()].is_none());
        let pipes_empty = self.p.c2s.bytes.is_empty() && self.p.s2c.bytes.is_empty();
        let no_eof = !self.p.c2s.eof && !self.p.s2c.eof;
        for w in Who::BOTH {
            let i = w.i();
            if open[i] && self.m.blocked[i] {
                let q = self.conn(w).transmit_len();
                ensure!(q >= self.cfg.max_outbound_buffered / 2, "{w:?}: queue drained to {q}, still blocked");
            }
            if open[0] && open[1] && pipes_empty && no_eof {
                for (id, done) in &self.m.pings[i] {
                    ensure!(*done, "{w:?}: ping {id} never answered on an idle, healthy pair");
                }
            }
        }
        for w in Who::BOTH {
            let i = w.i();
            let idle = self.m.pending(w) == 0 && self.m.served(w) == 0 && self.m.ops_pending(w) == 0;
            let both_said =
                self.m.goodbye_rx[i] || (self.m.local_close[i] && open[w.peer().i()] && pipes_empty && no_eof);
            ensure!(!(open[i] && idle && both_said), "{w:?}: closing with nothing in flight, but not closed");
        }
        for w in Who::BOTH {
            // The peer got our GOODBYE; its answer (or its own) reached us.
            let p = w.peer().i();
            if open[w.i()] && pipes_empty && self.m.goodbye_rx[p] && !self.m.crashed[p] {
                ensure!(self.m.goodbye_rx[w.i()], "{w:?}: the peer received our GOODBYE but never answered it");
            }
        }
        if open[0] && open[1] && pipes_empty && no_eof {
            for w in Who::BOTH {
                ensure!(self.m.notes[w.i()].is_empty(), "{w:?}: a notification never arrived");
            }
            for (id, c) in &self.m.calls {
                ensure!(c.outcome.is_some() || c.delivered, "call {id} never reached the callee");
                if c.delivered && c.callee_end.is_none() {
                    ensure!(c.up.recv == c.up.sent.len(), "call {id}: stream data never reached the callee");
                    ensure!(!c.finished || c.end_seen, "call {id}: END never reached the callee");
                }
                if c.outcome.is_none() {
                    ensure!(c.down.recv == c.down.sent.len(), "call {id}: stream data never reached the caller");
                }
            }
            for (id, s) in &self.m.subs {
                if s.unsub.is_none() && !matches!(s.result, Some(Err(_))) {
                    ensure!(s.received == s.delivered.len(), "subscription {id}: a message never arrived");
                }
            }
        }
        if open[0] && open[1] && pipes_empty {
            for (id, c) in &self.m.calls {
                let live = c.outcome.is_none() && c.delivered && c.callee_end.is_none();
                if live {
                    ensure!(
                        !(c.up.blocked && c.up.unconsumed.is_empty() && c.up.recv == c.up.sent.len()),
                        "call {id}: caller still stream-blocked after the callee consumed everything"
                    );
                    ensure!(
                        !(c.down.blocked && c.down.unconsumed.is_empty() && c.down.recv == c.down.sent.len()),
                        "call {id}: callee still stream-blocked after the caller consumed everything"
                    );
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> R {
        for w in Who::BOTH {
            parts(&mut self.p, w).0.reading = true;
            self.polling[w.i()] = true;
        }
        self.drive()?;
        self.idle_checks()?;
        // Consume all stream data, then check again.
        for w in Who::BOTH {
            self.apply(&Op::StreamConsume { by: w, count: usize::MAX })?;
        }
        self.drive()?;
        self.idle_checks()?;
        // Past every (reasonable) deadline.
        let horizon = self.now() + Duration::from_secs(3600);
        let last = self
            .m
            .calls
            .values()
            .flat_map(|c| [c.deadline, c.in_deadline])
            .flatten()
            .filter(|d| *d <= horizon)
            .max()
            .unwrap_or(self.now());
        if last >= self.now() {
            self.advance(last - self.now() + Duration::from_secs(1), true)?;
        }
        let now = self.now();
        for (id, c) in &self.m.calls {
            if c.deadline.is_some_and(|d| d < now) {
                ensure!(c.outcome.is_some(), "call {id} without outcome after its deadline");
            }
        }
        // Close and let everything end; from now on the drivers close the
        // transport of a closed connection (as every adapter does).
        self.setup.close_transport = true;
        let w = self.setup.final_close;
        self.apply(&Op::Close { who: w, hint: None })?;
        self.drive()?;
        self.advance(Duration::from_secs(60), true)?;
        for w in Who::BOTH {
            ensure!(self.m.closed[w.i()].is_some(), "{w:?}: not closed 60 s after the final close");
            let c = self.conn(w);
            ensure!(
                c.calls_in_flight() == 0 && c.calls_being_served() == 0 && c.subscription_count() == 0,
                "{w:?}: I4 counters not 0 after close"
            );
        }
        for (id, c) in &self.m.calls {
            ensure!(c.outcome.is_some(), "call {id} never got an outcome");
            ensure!(!c.delivered || c.callee_end.is_some(), "served call {id} never ended");
        }
        Ok(())
    }
}

/// An event with its `Instant`s made relative to `base`.
fn norm(e: &Event, base: Instant) -> String {
    match e {
        Event::Request(c) => {
            let mut c = c.clone();
            let d = c.deadline.take().map(|d| d - base);
            format!("{:?} deadline={d:?}", Event::Request(c))
        }
        e => format!("{e:?}"),
    }
}

/// Runs `ops`; returns the trace and both sides' bytes, or the first violation.
/// What a run shows: its trace, and the bytes each side wrote.
type Observed = (Vec<String>, Vec<u8>, Vec<u8>);

fn run(setup: &Setup, ops: &[Op]) -> Result<Observed, String> {
    let mut sim = Sim::new(setup.clone());
    for (n, op) in ops.iter().enumerate() {
        sim.apply(op).map_err(|e| format!("after op #{n} {op:?} at {:?}: {e}", sim.t()))?;
    }
    sim.finish().map_err(|e| format!("at the end ({:?}): {e}", sim.t()))?;
    let Sim { p, trace, .. } = sim;
    Ok((trace, p.client.wrote, p.server.wrote))
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn random_interaction(setup in setup(), ops in prop::collection::vec(op(), 1..200)) {
        let first = run(&setup, &ops).map_err(TestCaseError::fail)?;
        let second = run(&setup, &ops).map_err(TestCaseError::fail)?;
        prop_assert!(first.0 == second.0, "event traces differ between two identical runs");
        prop_assert!(first.1 == second.1 && first.2 == second.2, "bytes written differ between two identical runs");
    }
}

/// Regression, found by `random_interaction` (minimized): the timer heap's
/// compaction in `push_timer` ran after pushing the new deadline but before
/// the new call was inserted into `outgoing` / `incoming`, so when that push
/// triggered the compaction, the call's own timer was discarded and it never
/// timed out (fixed in ae025ae).
#[test]
fn timer_of_the_call_that_triggers_heap_compaction_is_kept() {
    let mut p = Pair::connected();
    // 64 calls answered at once leave 64 stale deadlines in the client's heap.
    let now = p.now;
    let ids: Vec<RequestId> =
        (0..64).map(|_| p.client.conn.request("m", Bytes::new(), CallOptions::new(), now).unwrap()).collect();
    p.drive();
    for e in p.server.take() {
        if let Event::Request(c) = e {
            p.server.conn.respond(c.id, Bytes::new()).unwrap();
        }
    }
    p.drive();
    let answered = p.client.take();
    assert_eq!(answered.len(), ids.len(), "{answered:?}");
    // The 65th deadline pushed makes the heap compact (65 > 2 * 0 + 64).
    let opts = CallOptions::new().timeout(Timeout::After(Duration::from_secs(1)));
    let id = p.client.conn.request("m", Bytes::new(), opts, now).unwrap();
    let next = p.client.conn.next_timer();
    assert!(
        next.is_some_and(|t| t <= now + Duration::from_secs(1)),
        "next_timer {:?} misses the deadline",
        next.map(|t| t - now)
    );
    p.advance(Duration::from_secs(2));
    let evs = p.client.take();
    assert!(
        evs.contains(&Event::Response { id, result: Err(CallError::TimedOut(Duration::from_secs(1))) }),
        "the call never timed out: {evs:?}"
    );
}
