//! `session_server` / `session_client` (and the engine behind the
//! `handshake_*` targets): one `Connection` driven like a real driver would,
//! by a list of fuzz-chosen steps, with a model of what the application has
//! seen checked against the connection after every step.
//!
//! The driver keeps the documented contract: it feeds input only while
//! `wants_read()` is true, never passes a `now` earlier than the last one,
//! and reacts to events the way an application does. Everything else is
//! up to the fuzzer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use wharf_core::wire::{CallKind, Frame, HEADER_LEN, PREAMBLE};
use wharf_core::{
    CallError, CallOptions, Config, Connection, Event, Metadata, PublishId, RequestId, Role, SendError,
    SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Timeout,
};

use crate::knobs::Knobs;
use crate::outbound::{Context, Outbound};
use crate::peer::{FrameSpec, IdBook, Len, Meta, Name, PeerParams, call_kind, code};
use crate::{lax, zeros};

/// Largest single `Feed` step.
pub const MAX_FEED: usize = 4096;
/// Most steps run from one input.
pub const MAX_STEPS: usize = 1024;
/// A GOODBYE the core writes itself (message truncated to 1024 bytes).
const GOODBYE_MAX: usize = HEADER_LEN + 10 + 1024;
/// Preamble + WELCOME or REJECT (name / reason at most 1024 bytes).
const HANDSHAKE_REPLY_MAX: usize = PREAMBLE.len() + HEADER_LEN + 28 + 1024;
/// Bytes the core may queue in reaction to one byte of peer input: the
/// worst case is a minimal REQUEST (18 bytes) refused with an ERROR frame
/// carrying a fixed message (at most 77 bytes).
const REACTION_RATIO: usize = 5;
/// Payload of a response sent from a `Poll` reaction (bit 6).
const RESPOND_BIG: usize = 2000;
/// Accounting overhead per event for the shadow check.
const EVENT_OVERHEAD: usize = 16;
/// What `inbound_buffered()` charges per queued event on top of its bytes.
const CORE_EVENT_CHARGE: usize = 64;
/// Bytes of `inbound_buffered()` one byte of peer input can cause: the
/// worst case is a 16-byte frame (empty DATA, CANCEL, END, PONG) that
/// becomes an event charged 64 bytes.
const INBOUND_RATIO: usize = 4;

/// How the session starts.
#[derive(Arbitrary, Debug, Clone)]
pub enum Start {
    /// Nothing: the fuzzer must produce the preamble and handshake itself
    /// (from `wire` or with `Inject`).
    Raw,
    /// A valid peer preamble + HELLO (server under test, which then
    /// accepts) or preamble + WELCOME (client under test).
    Handshake(PeerParams),
}

/// A whole `session_*` input.
#[derive(Arbitrary, Debug, Clone)]
pub struct SessionInput {
    pub knobs: Knobs,
    pub start: Start,
    /// Raw peer bytes, consumed by `Feed` steps.
    pub wire: Vec<u8>,
    pub steps: Vec<Step>,
}

/// How far the clock moves before `handle_timeout`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Advance {
    Ms(u16),
    Secs(u8),
    /// To the connection's next timer.
    ToNextTimer,
    /// A little past it.
    PastNextTimer(u8),
}

/// How the driver writes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Tx {
    /// `poll_transmit` until empty.
    All,
    /// One `poll_transmit` chunk.
    One,
    /// `transmit_slices`, then `advance_transmit` of at most `n` bytes.
    Write(u16),
    /// `transmit_slices` and nothing written (a stalled socket).
    ZeroWrite,
}

/// Deadline of a local call.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TimeoutSel {
    Default,
    Never,
    AfterMs(u16),
    /// `Duration::MAX` (the core clamps it).
    Huge,
}

/// One step of a session (see `Step::arbitrary` for how often each comes up).
#[derive(Debug, Clone)]
pub enum Step {
    /// Feed the next `1 + n % MAX_FEED` bytes of `wire` with `handle_input`.
    Feed(u16),
    /// The same through `recv_buffer` + `handle_received`.
    FeedZeroCopy(u16),
    /// Feed one encoded peer frame, split in two reads at `split`.
    Inject {
        frame: FrameSpec,
        split: u16,
    },
    /// Move the clock and call `handle_timeout`.
    Advance(Advance),
    /// Poll up to `max` events (0: all), reacting as `react` says (see `React`).
    Poll {
        max: u8,
        react: u8,
    },
    Transmit(Tx),
    Request {
        method: Name,
        kind: u8,
        payload: Len,
        timeout: TimeoutSel,
        meta: Meta,
        trace: bool,
    },
    Notify {
        method: Name,
        payload: Len,
        meta: Meta,
    },
    Ping,
    Cancel(u8),
    StreamSend {
        call: u8,
        payload: Len,
    },
    StreamFinish(u8),
    StreamConsumed {
        call: u8,
        len: u16,
    },
    StreamReset {
        call: u8,
        code: u8,
        message: Name,
    },
    Respond {
        call: u8,
        error: Option<u8>,
        message: Name,
        payload: Len,
    },
    Subscribe {
        topic: Name,
        prefix: bool,
        disconnect: bool,
    },
    Unsubscribe(u8),
    Publish {
        topic: Name,
        payload: Len,
        ack: bool,
    },
    AnswerSubscribe {
        sub: u8,
        refuse: Option<u8>,
    },
    AckPublish {
        publish: u8,
        refuse: Option<u8>,
    },
    Deliver {
        sub: u8,
        topic: Name,
        payload: Len,
    },
    DeliverLagged {
        sub: u8,
        dropped: u64,
    },
    Close {
        code: u8,
        message: Name,
        reconnect_ms: Option<u16>,
    },
    Abort {
        code: u8,
        message: Name,
    },
    Eof,
    TransportError,
}

impl<'a> Arbitrary<'a> for Step {
    /// Weighted: peer frames a quarter of the time, polls and writes often,
    /// the steps that end a session (EOF, transport error, abort) rarely.
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let sel: u8 = u.arbitrary()?;
        Ok(match sel {
            0..=63 => Step::Inject { frame: u.arbitrary()?, split: u.arbitrary()? },
            64..=95 => Step::Poll { max: u.arbitrary()?, react: u.arbitrary()? },
            96..=111 => Step::Transmit(u.arbitrary()?),
            112..=127 => Step::Advance(u.arbitrary()?),
            128..=135 => Step::Feed(u.arbitrary()?),
            136..=139 => Step::FeedZeroCopy(u.arbitrary()?),
            140..=151 => Step::Request {
                method: u.arbitrary()?,
                kind: u.arbitrary()?,
                payload: u.arbitrary()?,
                timeout: u.arbitrary()?,
                meta: u.arbitrary()?,
                trace: u.arbitrary()?,
            },
            152..=155 => Step::Notify { method: u.arbitrary()?, payload: u.arbitrary()?, meta: u.arbitrary()? },
            156..=159 => Step::Ping,
            160..=165 => Step::Cancel(u.arbitrary()?),
            166..=173 => Step::StreamSend { call: u.arbitrary()?, payload: u.arbitrary()? },
            174..=177 => Step::StreamFinish(u.arbitrary()?),
            178..=183 => Step::StreamConsumed { call: u.arbitrary()?, len: u.arbitrary()? },
            184..=186 => Step::StreamReset { call: u.arbitrary()?, code: u.arbitrary()?, message: u.arbitrary()? },
            187..=196 => Step::Respond {
                call: u.arbitrary()?,
                error: u.arbitrary()?,
                message: u.arbitrary()?,
                payload: u.arbitrary()?,
            },
            197..=204 => Step::Subscribe { topic: u.arbitrary()?, prefix: u.arbitrary()?, disconnect: u.arbitrary()? },
            205..=209 => Step::Unsubscribe(u.arbitrary()?),
            210..=217 => Step::Publish { topic: u.arbitrary()?, payload: u.arbitrary()?, ack: u.arbitrary()? },
            218..=223 => Step::AnswerSubscribe { sub: u.arbitrary()?, refuse: u.arbitrary()? },
            224..=229 => Step::AckPublish { publish: u.arbitrary()?, refuse: u.arbitrary()? },
            230..=237 => Step::Deliver { sub: u.arbitrary()?, topic: u.arbitrary()?, payload: u.arbitrary()? },
            238..=240 => Step::DeliverLagged { sub: u.arbitrary()?, dropped: u.arbitrary()? },
            241..=248 => Step::Close { code: u.arbitrary()?, message: u.arbitrary()?, reconnect_ms: u.arbitrary()? },
            249..=250 => Step::Abort { code: u.arbitrary()?, message: u.arbitrary()? },
            251..=253 => Step::Eof,
            _ => Step::TransportError,
        })
    }
}

/// How the application reacts to polled events (bit set).
#[derive(Clone, Copy, Debug)]
pub struct React(pub u8);

impl React {
    /// Answer requests at once.
    const RESPOND: u8 = 1;
    /// ... with an error.
    const RESPOND_ERROR: u8 = 2;
    /// Answer subscriptions at once.
    const ANSWER_SUB: u8 = 4;
    /// ... refusing them.
    const REFUSE_SUB: u8 = 8;
    /// Acknowledge publishes at once.
    const ACK_PUBLISH: u8 = 16;
    /// Report stream data consumed.
    const CONSUME: u8 = 32;
    /// Big response payloads.
    const BIG: u8 = 64;
    /// Refuse acknowledged publishes.
    const REFUSE_PUBLISH: u8 = 128;

    /// Everything an eager application does.
    pub const EAGER: React = React(Self::RESPOND | Self::ANSWER_SUB | Self::ACK_PUBLISH | Self::CONSUME);
    /// No reaction at all.
    pub const NONE: React = React(0);

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

#[derive(Debug)]
struct OurCall {
    issued: Instant,
    timeout: Option<Duration>,
    responses: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Pending {
        deadline: Option<Instant>,
    },
    Answered,
    Cancelled,
    /// `respond` said `UnknownCall` while we thought it pending: a
    /// `CallCancelled` must already be queued.
    RespondRefused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientSub {
    Pending,
    Active,
    Unsubscribing,
}

/// What one step may add to the transmit queue.
enum TxBound {
    /// Nothing.
    None,
    /// At most this many bytes on top of what was queued.
    Add(usize),
    /// A command refused with `Blocked` at `max_outbound_buffered`: at most
    /// one frame of this size above the larger of that limit and what was queued.
    Gated(usize),
}

/// The driver plus the model of what the application saw.
pub struct Driver {
    pub conn: Connection,
    pub cfg: Arc<Config>,
    pub role: Role,
    pub now: Instant,
    pub book: IdBook,
    /// Next id the connection under test must allocate (ids rise by 2).
    next_our: u64,
    /// Largest single input so far.
    max_fed: usize,
    frame_max: usize,

    closed_seen: bool,
    handshake_seen: bool,
    connected_seen: bool,
    goodbye_seen: bool,
    /// The last poll returned `None` and nothing happened since.
    drained: bool,

    calls: BTreeMap<u64, OurCall>,
    served: BTreeMap<u64, Served>,
    /// Ids of calls both ways, in the order they appeared (stream ops pick from it).
    call_ids: Vec<u64>,
    user_pings: Vec<u64>,
    // Client pub/sub.
    sub_results: BTreeMap<u64, u32>,
    client_subs: BTreeMap<u64, ClientSub>,
    /// subscription -> (results expected, results seen)
    unsub_results: BTreeMap<u64, (u32, u32)>,
    pub_results: BTreeMap<u64, u32>,
    // Server pub/sub.
    pending_subs: Vec<u64>,
    active_subs: Vec<u64>,
    pending_pubs: Vec<u64>,
    acked_pubs: Vec<u64>,

    // The wire oracle.
    out: Outbound,
    our_kinds: BTreeMap<u64, CallKind>,
    served_kinds: BTreeMap<u64, CallKind>,
    seen_subs: BTreeSet<u64>,
    /// Credit the peer granted per call, while the peer's input is known
    /// frame by frame (only `Inject`ed frames, each fed whole).
    credits: Option<BTreeMap<u64, u64>>,
    /// Number of writes so far.
    out_written: u64,
}

fn meta_len(m: &Metadata) -> usize {
    if m.is_empty() { 0 } else { 2 + m.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>() }
}

fn pick<T: Copy>(list: &[T], i: u8) -> Option<T> {
    if list.is_empty() { None } else { Some(list[usize::from(i) % list.len()]) }
}

impl Driver {
    /// A driver around a new connection with `role`.
    pub fn new(role: Role, cfg: Arc<Config>) -> Self {
        let now = crate::t0();
        let conn = match role {
            Role::Client => Connection::client(cfg.clone(), Bytes::from_static(b"token"), now),
            Role::Server => Connection::server(cfg.clone(), now),
        }
        .expect("valid config");
        let frame_max = cfg.max_frame_size.max(cfg.max_handshake_size) as usize;
        Driver {
            conn,
            role,
            now,
            book: IdBook::new(role),
            next_our: if role == Role::Client { 1 } else { 2 },
            max_fed: 0,
            frame_max,
            closed_seen: false,
            handshake_seen: false,
            connected_seen: false,
            goodbye_seen: false,
            drained: true,
            calls: BTreeMap::new(),
            served: BTreeMap::new(),
            call_ids: Vec::new(),
            user_pings: Vec::new(),
            sub_results: BTreeMap::new(),
            client_subs: BTreeMap::new(),
            unsub_results: BTreeMap::new(),
            pub_results: BTreeMap::new(),
            pending_subs: Vec::new(),
            active_subs: Vec::new(),
            pending_pubs: Vec::new(),
            acked_pubs: Vec::new(),
            out: Outbound::default(),
            our_kinds: BTreeMap::new(),
            served_kinds: BTreeMap::new(),
            seen_subs: BTreeSet::new(),
            credits: Some(BTreeMap::new()),
            out_written: 0,
            cfg,
        }
    }

    fn max_out(&self) -> usize {
        self.cfg.max_outbound_buffered
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// Feeds `data` if the connection wants to read; returns bytes fed.
    pub fn feed(&mut self, data: &[u8], zero_copy: bool) -> usize {
        if data.is_empty() || !self.conn.wants_read() {
            return 0;
        }
        if zero_copy {
            let buf = self.conn.recv_buffer();
            buf.extend_from_slice(data);
            self.conn.handle_received(data.len(), self.now);
        } else {
            self.conn.handle_input(data, self.now);
        }
        self.max_fed = self.max_fed.max(data.len());
        data.len()
    }

    /// Runs a whole session input.
    pub fn run_session(role: Role, input: &SessionInput) {
        let mut d = Driver::new(role, input.knobs.config());
        if let Start::Handshake(p) = &input.start {
            d.start_handshake(p);
        }
        let mut wire = &input.wire[..];
        for step in input.steps.iter().take(MAX_STEPS) {
            d.step(step, &mut wire);
        }
        d.finish();
    }

    /// Completes a valid handshake with a peer described by `p`.
    pub fn start_handshake(&mut self, p: &PeerParams) {
        let frame = match self.role {
            Role::Server => p.hello(),
            Role::Client => {
                self.transmit(Tx::All);
                p.welcome()
            }
        };
        let mut bytes = PREAMBLE.to_vec();
        bytes.extend_from_slice(&frame.to_bytes().expect("handshake frame encodes"));
        self.guarded(|d| (d.feed(&bytes, false), TxBound::None));
        self.guarded(|d| {
            let n = d.poll(0, React::EAGER);
            (0, TxBound::Gated(RESPOND_BIG + HANDSHAKE_REPLY_MAX + 64 * n))
        });
        self.transmit(Tx::All);
    }

    fn transmit(&mut self, tx: Tx) {
        self.guarded(|d| {
            d.do_transmit(tx);
            (0, TxBound::None)
        });
    }

    fn do_transmit(&mut self, tx: Tx) {
        let now = self.now;
        match tx {
            Tx::All => {
                while let Some(c) = self.conn.poll_transmit(now) {
                    self.written(&c);
                }
                assert_eq!(self.conn.transmit_len(), 0, "poll_transmit returned None with bytes queued");
                assert!(!self.conn.wants_write());
            }
            Tx::One => {
                let before = self.conn.transmit_len();
                match self.conn.poll_transmit(now) {
                    Some(c) => {
                        assert_eq!(self.conn.transmit_len() + c.len(), before, "poll_transmit lost bytes");
                        self.written(&c);
                    }
                    None => assert_eq!(before, 0, "poll_transmit returned None with bytes queued"),
                }
            }
            Tx::Write(_) | Tx::ZeroWrite => {
                let queued = self.conn.transmit_len();
                let want = if let Tx::Write(n) = tx { usize::from(n) } else { 0 };
                let mut head = Vec::new();
                let (filled, total) = {
                    let mut slices = [IoSlice::new(&[]); 8];
                    let k = self.conn.transmit_slices(now, &mut slices);
                    for s in &slices[..k] {
                        let take = want.saturating_sub(head.len()).min(s.len());
                        head.extend_from_slice(&s[..take]);
                    }
                    (k, slices[..k].iter().map(|s| s.len()).sum::<usize>())
                };
                assert!(total <= queued, "transmit_slices shows {total} bytes, only {queued} queued");
                assert!(queued == 0 || (filled > 0 && total > 0), "bytes queued but no slice to write");
                let n = want.min(total);
                assert_eq!(head.len(), n);
                self.conn.advance_transmit(n, now);
                self.written(&head);
                assert_eq!(self.conn.transmit_len(), queued - n, "advance_transmit lost count");
            }
        }
    }

    fn written(&mut self, bytes: &[u8]) {
        self.out_written += 1;
        let credits = self.credits.as_ref();
        let cx = Context {
            role: self.role,
            peer: self.conn.peer_limits(),
            our_calls: &self.our_kinds,
            served_kinds: &self.served_kinds,
            peer_subs: credits.is_some().then_some(&self.seen_subs),
            credits,
        };
        self.out.written(bytes, &cx);
    }

    /// Runs `f` (which returns bytes fed and what it may queue) and checks
    /// every invariant afterwards.
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> (usize, TxBound)) {
        let tx_before = self.conn.transmit_len();
        let in_before = self.conn.inbound_buffered();
        // Events a step may emit without input (outcomes of everything
        // pending when the connection ends, Connected, Closed, Writable...).
        let pending = self.open_operations();
        let could_read = self.conn.wants_read();
        let was_closed = self.conn.is_closed();
        let wrote_before = self.out_written;
        // Anything may queue events; only a poll that reaches None clears this.
        self.drained = false;
        let (fed, bound) = f(self);
        let wrote = self.out_written != wrote_before;
        let tx = self.conn.transmit_len();
        let inbound = self.conn.inbound_buffered();
        let max_out = self.max_out();
        if was_closed {
            assert!(tx <= tx_before, "bytes queued after the connection closed ({tx_before} -> {tx})");
        }
        if !wrote && tx < tx_before {
            // The core dropped unwritten bytes (transport error, write stall).
            self.out.dead = true;
        }

        // Buffered bytes stay bounded.
        let tx_limit = if fed > 0 {
            assert!(could_read, "driver fed while wants_read() was false");
            assert!(tx_before < 2 * max_out, "wants_read() was true with {tx_before} bytes queued");
            tx_before + REACTION_RATIO * (fed + HEADER_LEN + self.frame_max) + GOODBYE_MAX + HANDSHAKE_REPLY_MAX
        } else {
            match bound {
                TxBound::None => tx_before,
                TxBound::Add(n) => tx_before + n,
                TxBound::Gated(n) => tx_before.max(max_out) + n,
            }
        };
        assert!(tx <= tx_limit, "transmit_len {tx} above the bound {tx_limit} (before: {tx_before}, fed {fed})");
        let spontaneous = CORE_EVENT_CHARGE * (pending + 4);
        if fed > 0 {
            assert!(in_before < self.cfg.max_inbound_buffered, "fed with inbound_buffered {in_before} at the limit");
            let limit =
                self.cfg.max_inbound_buffered + INBOUND_RATIO * (fed + HEADER_LEN + self.frame_max) + spontaneous;
            assert!(inbound <= limit, "inbound_buffered {inbound} above {limit} after feeding {fed}");
        } else {
            let limit = in_before + spontaneous;
            assert!(inbound <= limit, "inbound_buffered grew from {in_before} to {inbound} without input");
        }

        self.check_state();
    }

    /// Operations the connection may still have to report on (an upper bound).
    fn open_operations(&self) -> usize {
        let c = &self.conn;
        c.calls_in_flight()
            + c.calls_being_served()
            + c.subscription_count()
            + self.calls.values().filter(|c| c.responses == 0).count()
            + self.served.values().filter(|s| matches!(s, Served::Pending { .. } | Served::RespondRefused)).count()
            + self.sub_results.values().filter(|n| **n == 0).count()
            + self.pub_results.values().filter(|n| **n == 0).count()
            + self.unsub_results.values().map(|(want, seen)| (want - seen) as usize).sum::<usize>()
            + self.pending_pubs.len()
    }

    fn check_state(&mut self) {
        let c = &self.conn;
        if self.closed_seen {
            assert!(c.is_closed(), "Closed was emitted but the connection is not closed");
        }
        if c.is_closed() {
            assert_eq!(c.calls_in_flight(), 0, "closed with calls in flight");
            assert_eq!(c.calls_being_served(), 0, "closed with calls being served");
            assert_eq!(c.subscription_count(), 0, "closed with subscriptions");
            assert!(!c.wants_read(), "closed but wants_read");
            // The only timer of a closed connection is the linger deadline
            // of output it could not write yet.
            if c.next_timer().is_some() {
                assert!(c.transmit_len() > 0, "closed with nothing to write but a timer is armed");
            }
            assert!(c.error().is_some());
        }
        // Our calls the core still tracks are ones whose outcome we have not seen.
        let open_calls = self.calls.values().filter(|c| c.responses == 0).count();
        assert!(c.calls_in_flight() <= open_calls, "core tracks {} calls, {open_calls} open", c.calls_in_flight());
        if self.drained {
            assert_eq!(c.calls_in_flight(), open_calls, "calls_in_flight disagrees with the outcomes seen");
            let pending = self.served.values().filter(|s| matches!(s, Served::Pending { .. })).count();
            assert_eq!(c.calls_being_served(), pending, "calls_being_served disagrees with the events seen");
            assert!(
                !self.served.values().any(|s| *s == Served::RespondRefused),
                "respond said UnknownCall but no CallCancelled followed"
            );
            let subs = match self.role {
                Role::Client => self.client_subs.len(),
                Role::Server => self.pending_subs.len() + self.active_subs.len(),
            };
            assert_eq!(c.subscription_count(), subs, "subscription_count disagrees with the events seen");
        }
    }

    // ------------------------------------------------------------------
    // Events
    // ------------------------------------------------------------------

    /// Polls up to `max` events (0: all), reacting; returns how many.
    pub fn poll(&mut self, max: u8, react: React) -> usize {
        let mut n = 0;
        let mut shadow = 0usize;
        loop {
            if max != 0 && n >= usize::from(max) {
                self.drained = false;
                break;
            }
            let Some(ev) = self.conn.poll_event() else {
                self.drained = true;
                break;
            };
            assert!(!self.closed_seen, "event after Closed: {ev:?}");
            if crate::trace() {
                eprintln!("    event: {ev:?}");
            }
            n += 1;
            shadow += shadow_bytes(&ev);
            self.on_event(ev, react);
        }
        if !lax() {
            // The bytes held by undelivered peer-initiated events are bounded by
            // max_inbound_buffered plus one read, as wants_read() promises.
            let limit =
                self.cfg.max_inbound_buffered + INBOUND_RATIO * (self.max_fed + HEADER_LEN + self.frame_max) + 1024;
            assert!(
                shadow <= limit,
                "undelivered events held {shadow} bytes (payload, names, metadata, {EVENT_OVERHEAD} per event), \
                 above max_inbound_buffered {} + one read ({limit}), while wants_read() stayed true",
                self.cfg.max_inbound_buffered
            );
        }
        n
    }

    fn respond_to(&mut self, id: RequestId, error: Option<(u8, &str)>, payload: Bytes) {
        let r = match error {
            None => self.conn.respond(id, payload),
            Some((c, message)) => self.conn.respond_error(id, code(c), message, payload),
        };
        self.after_respond(id.0, r);
    }

    fn after_respond(&mut self, id: u64, r: Result<(), SendError>) {
        let closed = self.conn.is_closed();
        match (self.served.get_mut(&id), r) {
            (Some(s @ Served::Pending { .. }), Ok(())) => *s = Served::Answered,
            (Some(s), Ok(())) => panic!("respond to call {id} succeeded in state {s:?}"),
            (None, Ok(())) => panic!("respond to call {id} succeeded, but no such Request was seen"),
            (Some(s @ Served::Pending { .. }), Err(SendError::UnknownCall { .. })) => *s = Served::RespondRefused,
            (_, Err(SendError::Closed(_))) => assert!(closed),
            (_, Err(_)) => {}
        }
    }

    fn on_event(&mut self, ev: Event, react: React) {
        let now = self.now;
        match ev {
            Event::HandshakeRequest(h) => {
                assert_eq!(self.role, Role::Server, "HandshakeRequest on a client");
                assert!(!self.handshake_seen, "second HandshakeRequest");
                assert_eq!(h.version, 1);
                self.handshake_seen = true;
                let r = self.conn.accept(7);
                assert!(r.is_ok() || self.conn.is_closed(), "accept after HandshakeRequest failed: {r:?}");
            }
            Event::Connected(c) => {
                assert!(!self.connected_seen, "second Connected");
                assert!(self.role == Role::Client || self.handshake_seen, "server Connected without a handshake");
                self.connected_seen = true;
                if self.role == Role::Server {
                    assert_eq!(c.connection_id, 7);
                }
            }
            Event::Request(call) => {
                assert!(self.connected_seen, "Request before Connected");
                let id = call.id.0;
                assert_eq!(id & 1 == 1, self.role == Role::Server, "peer call {id} has our parity");
                assert!(!self.served.contains_key(&id), "call {id} dispatched twice");
                assert!(call.method.len() <= usize::from(self.cfg.max_method_len) && !call.method.is_empty());
                assert!(call.metadata.len() <= usize::from(self.cfg.max_metadata_entries));
                self.served.insert(id, Served::Pending { deadline: call.deadline });
                self.served_kinds.insert(id, call.kind);
                self.call_ids.push(id);
                if react.has(React::RESPOND) {
                    let err = react.has(React::RESPOND_ERROR).then_some((232, "fuzz error"));
                    let len = if react.has(React::BIG) { RESPOND_BIG } else { 3 };
                    self.respond_to(call.id, err, zeros(len));
                }
            }
            Event::Notification(n) => {
                assert!(self.connected_seen);
                assert!(!n.method.is_empty() && n.method.len() <= usize::from(self.cfg.max_method_len));
            }
            Event::CallCancelled { id, .. } => match self.served.get_mut(&id.0) {
                Some(s @ (Served::Pending { .. } | Served::RespondRefused)) => *s = Served::Cancelled,
                other => panic!("CallCancelled for call {id} in state {other:?}"),
            },
            Event::Response { id, result } => {
                let Some(call) = self.calls.get_mut(&id.0) else { panic!("Response for call {id} never made") };
                call.responses += 1;
                assert_eq!(call.responses, 1, "second Response for call {id}: {result:?}");
                if let Err(CallError::TimedOut(waited)) = result {
                    let t = call.timeout.expect("a call without a timeout timed out");
                    assert!(waited <= t, "call {id} reports waiting {waited:?}, its timeout is {t:?}");
                    assert!(t == Duration::MAX || waited == t, "call {id} timed out after {waited:?}, not {t:?}");
                    assert!(call.issued.checked_add(waited).is_some_and(|d| now >= d), "call {id} timed out early");
                }
            }
            Event::StreamData { id, payload } => {
                let ok = self.calls.contains_key(&id.0) || self.served.contains_key(&id.0);
                assert!(ok, "StreamData for unknown call {id}");
                if react.has(React::CONSUME) {
                    self.conn.stream_consumed(id, payload.len());
                }
            }
            Event::StreamEnd { id } => {
                assert!(self.served.contains_key(&id.0), "StreamEnd for a call we do not serve: {id}");
            }
            Event::StreamWritable { id } => {
                let ok = self.calls.contains_key(&id.0) || self.served.contains_key(&id.0);
                assert!(ok, "StreamWritable for unknown call {id}");
            }
            Event::Subscribe { id, topic, prefix, policy: _ } => {
                assert_eq!(self.role, Role::Server);
                assert!(!self.pending_subs.contains(&id.0) && !self.active_subs.contains(&id.0));
                assert!(topic.len() <= usize::from(self.cfg.max_topic_len) && (prefix || !topic.is_empty()));
                self.pending_subs.push(id.0);
                self.seen_subs.insert(id.0);
                if react.has(React::ANSWER_SUB) {
                    self.answer_subscribe(id, react.has(React::REFUSE_SUB).then_some(7));
                }
            }
            Event::Unsubscribe { id } => {
                assert_eq!(self.role, Role::Server);
                let known = self.pending_subs.contains(&id.0) || self.active_subs.contains(&id.0);
                assert!(known, "Unsubscribe for subscription {id} not known");
                self.pending_subs.retain(|s| *s != id.0);
                self.active_subs.retain(|s| *s != id.0);
            }
            Event::Publish { ack, topic, payload: _ } => {
                assert_eq!(self.role, Role::Server);
                assert!(!topic.is_empty() && topic.len() <= usize::from(self.cfg.max_topic_len));
                if let Some(p) = ack {
                    assert!(!self.pending_pubs.contains(&p.0) && !self.acked_pubs.contains(&p.0));
                    self.pending_pubs.push(p.0);
                    if react.has(React::ACK_PUBLISH) {
                        self.ack_publish(p, react.has(React::REFUSE_PUBLISH).then_some(3));
                    }
                }
            }
            Event::SubscribeResult { id, result } => {
                let Some(n) = self.sub_results.get_mut(&id.0) else { panic!("SubscribeResult for {id} never made") };
                *n += 1;
                assert_eq!(*n, 1, "second SubscribeResult for {id}");
                match (self.client_subs.get(&id.0), result.is_ok()) {
                    (Some(ClientSub::Pending), true) => {
                        self.client_subs.insert(id.0, ClientSub::Active);
                    }
                    (Some(ClientSub::Pending), false) => {
                        self.client_subs.remove(&id.0);
                    }
                    _ => {}
                }
            }
            Event::UnsubscribeResult { id, result: _ } => {
                let Some((want, seen)) = self.unsub_results.get_mut(&id.0) else {
                    panic!("UnsubscribeResult for {id}, never unsubscribed")
                };
                *seen += 1;
                assert!(*seen <= *want, "UnsubscribeResult for {id} not expected (or twice)");
                self.client_subs.remove(&id.0);
            }
            Event::PublishResult { id, result: _ } => {
                let Some(n) = self.pub_results.get_mut(&id.0) else { panic!("PublishResult for {id} never made") };
                *n += 1;
                assert_eq!(*n, 1, "second PublishResult for {id}");
            }
            Event::Message { subscription, .. } | Event::Lagged { subscription, .. } => {
                assert_eq!(self.role, Role::Client);
                assert!(self.sub_results.contains_key(&subscription.0), "delivery for unknown {subscription}");
            }
            Event::Pong { id, .. } => {
                assert!(self.user_pings.contains(&id), "Pong event for ping {id} we did not send");
            }
            Event::Writable => {}
            Event::GoodbyeReceived { .. } => {
                assert!(!self.goodbye_seen, "second GoodbyeReceived");
                self.goodbye_seen = true;
            }
            Event::Closed(_) => {
                self.closed_seen = true;
                self.check_all_resolved();
                // The connection forgets every subscription when it ends.
                self.client_subs.clear();
                self.pending_subs.clear();
                self.active_subs.clear();
            }
            _ => {}
        }
    }

    /// At `Closed`: every operation got exactly one outcome.
    fn check_all_resolved(&self) {
        for (id, c) in &self.calls {
            assert_eq!(c.responses, 1, "call {id} ended with {} Response events", c.responses);
        }
        for (id, s) in &self.served {
            assert!(matches!(s, Served::Answered | Served::Cancelled), "served call {id} left {s:?} at Closed");
        }
        for (id, n) in &self.sub_results {
            assert_eq!(*n, 1, "subscribe {id} ended with {n} SubscribeResult events");
        }
        for (id, n) in &self.pub_results {
            assert_eq!(*n, 1, "publish {id} ended with {n} PublishResult events");
        }
        for (id, (want, seen)) in &self.unsub_results {
            assert_eq!(want, seen, "unsubscribe {id}: {seen} UnsubscribeResult events, {want} expected");
        }
    }

    fn answer_subscribe(&mut self, id: SubscriptionId, refuse: Option<u8>) {
        let r = match refuse {
            None => self.conn.accept_subscription(id),
            Some(c) => self.conn.refuse_subscription(id, code(c)),
        };
        if r.is_ok() {
            assert!(self.pending_subs.contains(&id.0), "answering subscription {id} twice succeeded");
            self.pending_subs.retain(|s| *s != id.0);
            if refuse.is_none() {
                self.active_subs.push(id.0);
            }
        }
    }

    fn ack_publish(&mut self, id: PublishId, refuse: Option<u8>) {
        let r = self.conn.ack_publish(id, refuse.map_or(Ok(3), |c| Err(code(c))));
        if r.is_ok() {
            assert!(self.pending_pubs.contains(&id.0), "acknowledging publish {id} twice succeeded");
            self.pending_pubs.retain(|s| *s != id.0);
            self.acked_pubs.push(id.0);
        }
    }

    // ------------------------------------------------------------------
    // Steps
    // ------------------------------------------------------------------

    fn alloc_ours(&mut self, id: u64, what: &str) {
        assert_eq!(id, self.next_our, "{what} got id {id}, expected {}", self.next_our);
        self.next_our += 2;
        self.book.ours.push(id);
    }

    /// A call id in play (0, which never names a call, if there is none).
    fn pick_call(&self, i: u8) -> RequestId {
        RequestId(pick(&self.call_ids, i).unwrap_or(0))
    }

    /// Runs one step and checks every invariant.
    pub fn step(&mut self, step: &Step, wire: &mut &[u8]) {
        if crate::trace() {
            eprintln!("step: {step:?}");
        }
        let drained_before = self.drained;
        let was_closed = self.conn.is_closed();
        match step {
            Step::Feed(n) | Step::FeedZeroCopy(n) => {
                let zero_copy = matches!(step, Step::FeedZeroCopy(_));
                let k = (1 + usize::from(*n) % MAX_FEED).min(wire.len());
                let chunk = &wire[..k];
                let mut fed = 0;
                self.guarded(|d| {
                    fed = d.feed(chunk, zero_copy);
                    (fed, TxBound::None)
                });
                if fed > 0 {
                    self.credits = None;
                }
                // Bytes leave `wire` only when the driver actually read them.
                *wire = &wire[fed..];
            }
            Step::Inject { frame, split } => {
                let Some(bytes) = frame.encode(&mut self.book) else { return };
                if let FrameSpec::Subscribe { .. } = frame {
                    // Known to the core as soon as it reads the frame.
                    self.seen_subs.extend(self.book.peer_subs.last());
                }
                let at = usize::from(*split) % (bytes.len() + 1);
                let mut fed = 0;
                self.guarded(|d| {
                    let n = d.feed(&bytes[..at], false);
                    fed += n;
                    (n, TxBound::None)
                });
                self.guarded(|d| {
                    let n = d.feed(&bytes[at..], false);
                    fed += n;
                    (n, TxBound::None)
                });
                if fed != bytes.len() {
                    self.credits = None;
                } else if let (Some(credits), FrameSpec::Credit { .. }) = (self.credits.as_mut(), frame)
                    && let Ok(Some(Frame::Credit { id, increment })) = Frame::decode_one(&mut bytes.clone(), u32::MAX)
                {
                    *credits.entry(id).or_default() += u64::from(increment);
                }
            }
            Step::Advance(a) => {
                let next = self.conn.next_timer();
                let now = match a {
                    Advance::Ms(ms) => self.now + Duration::from_millis(u64::from(*ms)),
                    Advance::Secs(s) => self.now + Duration::from_secs(u64::from(*s)),
                    Advance::ToNextTimer => next.unwrap_or(self.now).max(self.now),
                    Advance::PastNextTimer(ms) => {
                        next.unwrap_or(self.now).max(self.now) + Duration::from_millis(u64::from(*ms))
                    }
                };
                self.now = now;
                let open = self.calls.values().filter(|c| c.responses == 0).count();
                self.guarded(|d| {
                    d.conn.handle_timeout(now);
                    (0, TxBound::Add(HEADER_LEN * (open + 1) + GOODBYE_MAX + HANDSHAKE_REPLY_MAX))
                });
                if let Some(t) = self.conn.next_timer() {
                    assert!(t > now, "after handle_timeout({now:?}) a timer is still due at {t:?}");
                }
                let live = self
                    .calls
                    .values()
                    .filter(|c| {
                        c.responses == 0 && c.timeout.is_none_or(|t| c.issued.checked_add(t).is_none_or(|d| d > now))
                    })
                    .count();
                assert!(self.conn.calls_in_flight() <= live, "a call outlived its deadline");
                if drained_before {
                    let live = self
                        .served
                        .values()
                        .filter(|s| matches!(s, Served::Pending { deadline } if deadline.is_none_or(|d| d > now)))
                        .count();
                    assert!(self.conn.calls_being_served() <= live, "a served call outlived its deadline");
                }
            }
            Step::Poll { max, react } => {
                self.guarded(|d| {
                    let n = d.poll(*max, React(*react));
                    (0, TxBound::Gated(HEADER_LEN + RESPOND_BIG + 64 * n + HANDSHAKE_REPLY_MAX))
                });
            }
            Step::Transmit(tx) => self.transmit(*tx),
            Step::Request { method, kind, payload, timeout, meta, trace } => {
                let kind = call_kind(*kind);
                let mut opts = CallOptions::new().kind(kind).metadata(meta.metadata());
                opts.timeout = match timeout {
                    TimeoutSel::Default => Timeout::Default,
                    TimeoutSel::Never => Timeout::Never,
                    TimeoutSel::AfterMs(ms) => Timeout::After(Duration::from_millis(u64::from(*ms))),
                    TimeoutSel::Huge => Timeout::After(Duration::MAX),
                };
                if *trace {
                    opts = opts.trace_id([1; 16]);
                }
                let resolved = match opts.timeout {
                    Timeout::Default if kind == CallKind::Unary => self.cfg.request_timeout,
                    Timeout::Default | Timeout::Never => None,
                    Timeout::After(d) => Some(d),
                };
                let method = method.text();
                let payload = payload.bytes();
                let size = HEADER_LEN + 2 + method.len() + 4 + 16 + meta_len(&opts.metadata) + payload.len();
                let now = self.now;
                self.guarded(|d| {
                    let r = d.conn.request(method, payload, opts, now);
                    match r {
                        Ok(id) => {
                            assert!(!was_closed, "request succeeded on a closed connection");
                            d.alloc_ours(id.0, "request");
                            d.book.our_calls.push(id.0);
                            d.calls.insert(id.0, OurCall { issued: now, timeout: resolved, responses: 0 });
                            d.our_kinds.insert(id.0, kind);
                            d.call_ids.push(id.0);
                        }
                        Err(e) => assert!(!was_closed || matches!(e, SendError::Closed(_)), "{e:?}"),
                    }
                    (0, TxBound::Gated(size))
                });
            }
            Step::Notify { method, payload, meta } => {
                let method = method.text();
                let payload = payload.bytes();
                let m = meta.metadata();
                let size = HEADER_LEN + 2 + method.len() + meta_len(&m) + payload.len();
                self.guarded(|d| {
                    let r = d.conn.notify(method, payload, CallOptions::new().metadata(m));
                    assert!(!(was_closed && r.is_ok()), "notify succeeded on a closed connection");
                    (0, TxBound::Gated(size))
                });
            }
            Step::Ping => {
                let now = self.now;
                self.guarded(|d| {
                    if let Ok(id) = d.conn.ping(now) {
                        assert!(!was_closed);
                        d.user_pings.push(id);
                        d.book.pings.push(id);
                    }
                    (0, TxBound::Add(HEADER_LEN))
                });
            }
            Step::Cancel(i) => {
                let ours: Vec<u64> = self.calls.keys().copied().collect();
                let id = RequestId(pick(&ours, *i).unwrap_or(0));
                self.guarded(|d| {
                    if d.conn.cancel(id).is_ok() {
                        let c = d.calls.get(&id.0).expect("cancel succeeded on a call never made");
                        assert_eq!(c.responses, 0, "cancel succeeded on call {id} that already had its outcome");
                    }
                    (0, TxBound::Add(HEADER_LEN))
                });
            }
            Step::StreamSend { call, payload } => {
                let id = self.pick_call(*call);
                let payload = payload.bytes();
                let size = HEADER_LEN + payload.len();
                self.guarded(|d| {
                    let _ = d.conn.stream_send(id, payload);
                    (0, TxBound::Gated(size))
                });
            }
            Step::StreamFinish(i) => {
                let id = self.pick_call(*i);
                self.guarded(|d| {
                    let _ = d.conn.stream_finish(id);
                    (0, TxBound::Add(HEADER_LEN))
                });
            }
            Step::StreamConsumed { call, len } => {
                let id = self.pick_call(*call);
                self.guarded(|d| {
                    d.conn.stream_consumed(id, usize::from(*len));
                    (0, TxBound::Add(HEADER_LEN + 4))
                });
            }
            Step::StreamReset { call, code: c, message } => {
                let id = self.pick_call(*call);
                let message = local_text(*message);
                self.guarded(|d| {
                    let r = d.conn.stream_reset(id, code(*c), &message);
                    let ours = (id.0 & 1 == 1) == (d.role == Role::Client);
                    if ours {
                        if r.is_ok() {
                            let c = d.calls.get(&id.0).expect("stream_reset cancelled a call never made");
                            assert_eq!(c.responses, 0, "stream_reset cancelled call {id} after its outcome");
                        }
                    } else {
                        d.after_respond(id.0, r);
                    }
                    (0, TxBound::Gated(HEADER_LEN + 6 + 4096))
                });
            }
            Step::Respond { call, error, message, payload } => {
                let pending: Vec<u64> = self.served.keys().copied().collect();
                let id = RequestId(pick(&pending, *call).unwrap_or(0));
                let payload = payload.bytes();
                let message = local_text(*message);
                let size = HEADER_LEN + 6 + 4096 + payload.len();
                self.guarded(|d| {
                    d.respond_to(id, error.map(|c| (c, &*message)), payload);
                    (0, TxBound::Gated(size))
                });
            }
            Step::Subscribe { topic, prefix, disconnect } => {
                let topic = topic.text();
                let size = HEADER_LEN + 2 + topic.len();
                let policy = if *disconnect { SlowConsumerPolicy::Disconnect } else { SlowConsumerPolicy::DropOldest };
                self.guarded(|d| {
                    if let Ok(id) = d.conn.subscribe(topic, SubscribeOptions { prefix: *prefix, policy }) {
                        assert!(!was_closed);
                        d.alloc_ours(id.0, "subscribe");
                        d.book.our_subs.push(id.0);
                        d.sub_results.insert(id.0, 0);
                        d.client_subs.insert(id.0, ClientSub::Pending);
                    }
                    (0, TxBound::Gated(size))
                });
            }
            Step::Unsubscribe(i) => {
                let Some(sub) = pick(&self.book.our_subs, *i) else { return };
                self.guarded(|d| {
                    let closing = d.conn.is_closing();
                    if d.conn.unsubscribe(SubscriptionId(sub)).is_ok() {
                        let state = d.client_subs.get(&sub).copied();
                        assert!(
                            matches!(state, Some(ClientSub::Pending | ClientSub::Active)),
                            "unsubscribe of {sub} succeeded in state {state:?}"
                        );
                        if closing {
                            d.client_subs.remove(&sub);
                        } else {
                            let op = d.next_our;
                            d.alloc_ours(op, "unsubscribe");
                            d.client_subs.insert(sub, ClientSub::Unsubscribing);
                            d.unsub_results.entry(sub).or_default().0 += 1;
                        }
                    }
                    (0, TxBound::Add(HEADER_LEN + 8))
                });
            }
            Step::Publish { topic, payload, ack } => {
                let topic = topic.text();
                let payload = payload.bytes();
                let size = HEADER_LEN + 2 + topic.len() + payload.len();
                self.guarded(|d| {
                    match d.conn.publish(topic, payload, *ack) {
                        Ok(Some(id)) => {
                            assert!(*ack && !was_closed);
                            d.alloc_ours(id.0, "publish");
                            d.pub_results.insert(id.0, 0);
                        }
                        Ok(None) => assert!(!*ack && !was_closed),
                        Err(_) => {}
                    }
                    (0, TxBound::Gated(size))
                });
            }
            Step::AnswerSubscribe { sub, refuse } => {
                let all: Vec<u64> = self.pending_subs.iter().chain(&self.active_subs).copied().collect();
                let Some(id) = pick(&all, *sub) else { return };
                self.guarded(|d| {
                    d.answer_subscribe(SubscriptionId(id), *refuse);
                    (0, TxBound::Add(HEADER_LEN + 8))
                });
            }
            Step::AckPublish { publish, refuse } => {
                let all: Vec<u64> = self.pending_pubs.iter().chain(&self.acked_pubs).copied().collect();
                let Some(id) = pick(&all, *publish) else { return };
                self.guarded(|d| {
                    d.ack_publish(PublishId(id), *refuse);
                    (0, TxBound::Add(HEADER_LEN + 8))
                });
            }
            Step::Deliver { sub, topic, payload } => {
                let all: Vec<u64> = self.active_subs.iter().chain(&self.pending_subs).copied().collect();
                let id = SubscriptionId(pick(&all, *sub).unwrap_or(0));
                let topic = local_text(*topic);
                let payload = payload.bytes();
                let size = HEADER_LEN + 2 + topic.len() + payload.len();
                self.guarded(|d| {
                    let _ = d.conn.deliver(id, &topic, payload);
                    (0, TxBound::Gated(size))
                });
            }
            Step::DeliverLagged { sub, dropped } => {
                let all: Vec<u64> = self.active_subs.iter().chain(&self.pending_subs).copied().collect();
                let id = SubscriptionId(pick(&all, *sub).unwrap_or(0));
                self.guarded(|d| {
                    let _ = d.conn.deliver_lagged(id, *dropped);
                    (0, TxBound::Add(HEADER_LEN + 8))
                });
            }
            Step::Close { code: c, message, reconnect_ms } => {
                let now = self.now;
                let message = local_text(*message);
                self.guarded(|d| {
                    let reconnect = reconnect_ms.map(|ms| Duration::from_millis(u64::from(ms)));
                    d.conn.close(code(*c), &message, reconnect, now);
                    (0, TxBound::Add(GOODBYE_MAX + HANDSHAKE_REPLY_MAX))
                });
            }
            Step::Abort { code: c, message } => {
                let now = self.now;
                let message = local_text(*message);
                self.guarded(|d| {
                    d.conn.abort(code(*c), &message, now);
                    assert!(d.conn.is_closed(), "abort left the connection open");
                    (0, TxBound::Add(GOODBYE_MAX))
                });
            }
            Step::Eof => {
                let now = self.now;
                self.guarded(|d| {
                    d.conn.handle_eof(now);
                    assert!(d.conn.is_closed(), "EOF left the connection open");
                    (0, TxBound::None)
                });
            }
            Step::TransportError => {
                let now = self.now;
                self.guarded(|d| {
                    d.conn.handle_transport_error(&std::io::Error::other("fuzz"), now);
                    assert!(d.conn.is_closed(), "a transport error left the connection open");
                    if !was_closed {
                        assert_eq!(d.conn.transmit_len(), 0, "a transport error kept bytes to write");
                    }
                    (0, TxBound::None)
                });
            }
        }
    }

    /// Ends the session: drains, signals EOF, and checks that everything
    /// got its outcome and that a closed connection stays inert.
    pub fn finish(&mut self) {
        self.guarded(|d| {
            let n = d.poll(0, React::NONE);
            (0, TxBound::Gated(64 * n))
        });
        if !self.conn.is_closed() {
            let now = self.now;
            self.guarded(|d| {
                d.conn.handle_eof(now);
                (0, TxBound::None)
            });
        }
        self.guarded(|d| {
            d.poll(0, React::NONE);
            (0, TxBound::None)
        });
        assert!(self.closed_seen, "no Closed event after EOF");
        // The final bytes (GOODBYE, last answers) are written, then the transport closes.
        self.transmit(Tx::All);
        self.out.finish();
        // A closed connection ignores everything.
        self.now += Duration::from_secs(3600);
        let now = self.now;
        self.conn.handle_input(&PREAMBLE, now);
        self.conn.handle_timeout(now);
        self.conn.handle_eof(now);
        assert!(self.conn.poll_event().is_none(), "event after Closed");
        assert!(self.conn.request("m", Bytes::new(), CallOptions::new(), now).is_err());
        self.check_state();
    }
}

/// Bytes an event holds that `inbound_buffered()` may not count: for the
/// events a peer can cause without limit (notifications, publishes,
/// messages, lag reports), payload + names + metadata + a fixed overhead.
fn shadow_bytes(ev: &Event) -> usize {
    match ev {
        Event::Notification(n) => {
            EVENT_OVERHEAD + n.method.len() + n.payload.len() + meta_len(&n.metadata) + n.trace_id.map_or(0, |_| 16)
        }
        Event::Publish { topic, payload, .. } | Event::Message { topic, payload, .. } => {
            EVENT_OVERHEAD + topic.len() + payload.len()
        }
        Event::Lagged { .. } => EVENT_OVERHEAD,
        _ => 0,
    }
}

/// A string the application passes to `close`, `abort`, `reject`,
/// `respond_error`, `stream_reset` or `deliver` (NUL included: the core
/// must keep it off the wire, which the oracle checks).
fn local_text(name: Name) -> wharf_core::Text {
    name.text()
}
