//! One live connection: the shared state, the driver task that owns the
//! core `Connection`, and the dispatch of its events.
//!
//! Handles (a [`Session`], call futures, streams, subscriptions) lock the
//! state briefly to issue a command on the core connection or to look at a
//! slot, then wake the driver. The driver reads into the core's buffer,
//! fires timers, dispatches events into slots (waking whoever waits on them)
//! and writes what the core queued, with vectored writes and no flush per
//! message. The socket lives in the state, and every read and write happens
//! under its lock: while the driver is idle, a handle that queued output on
//! an empty transmit queue writes it itself ("write-through", when the
//! stream offers [`ByteStream::try_write_vectored`]) and wakes the driver
//! only for what did not go out.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use wharf_core::{Code, Connection, ConnectionError, Event, SendError, Text};
use wharf_transport::PeerIdentity;

use crate::codec::Codec;
use crate::error::Error;
use crate::io::ByteStream;
use crate::router::Router;
use crate::runtime::{Runtime, Timer};
use crate::server::ServerLink;

/// The maps of operations by id. Ids on the serving side are chosen by the
/// peer, so the hasher is seeded per map (foldhash, as hashbrown's default),
/// not an identity hash a peer could aim at one bucket; and it is several
/// times cheaper than SipHash on the per-call path.
pub(crate) type IdMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// An [`IdMap`] made at its first insertion (one pointer until then), for
/// the slots of a kind of operation a connection may never use.
pub(crate) struct LazyMap<V>(Option<Box<IdMap<V>>>);

impl<V> Default for LazyMap<V> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<V> LazyMap<V> {
    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        self.0.as_ref()?.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(id)
    }

    pub(crate) fn insert(&mut self, id: u64, v: V) -> Option<V> {
        self.0.get_or_insert_with(Default::default).insert(id, v)
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        self.0.as_mut()?.remove(id)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().flat_map(|m| m.values_mut())
    }

    /// Whether the map was made (something was inserted once).
    #[cfg(test)]
    pub(crate) fn is_made(&self) -> bool {
        self.0.is_some()
    }
}

/// Recently used method names and topics as shared [`Text`], so that a
/// caller passing the same `&str` again does not allocate a new string per
/// call (a hit costs a reference-count increment). Made at the first name
/// (a session that sends no call or publish has none).
#[derive(Default)]
pub(crate) struct Names(Option<Box<(Vec<Text>, usize)>>);

impl Names {
    const CAP: usize = 16;

    /// The shared text for `s`, remembered for next time.
    pub(crate) fn get(&mut self, s: &str) -> Text {
        let (slots, next) = &mut **self.0.get_or_insert_with(Default::default);
        if let Some(t) = slots.iter().find(|t| t.as_str() == s) {
            return t.clone();
        }
        let t = Text::from(s.to_string());
        if slots.len() < Self::CAP {
            slots.push(t.clone());
        } else {
            slots[*next] = t.clone();
            *next = (*next + 1) % Self::CAP;
        }
        t
    }
}

/// A handler future created by dispatch, waiting to be polled once by the
/// driver after it releases the state lock: most handlers finish on their
/// first poll, and then need no task of their own.
pub(crate) enum Fresh {
    /// A call's handler and what answers it.
    Call(crate::router::HandlerFuture, crate::router::Responder),
    /// A notification's handler (nothing to answer).
    Notification(crate::runtime::BoxFuture),
}

/// Reads per round before the driver moves on to writing.
const READ_BUDGET: usize = 16;
/// Rounds of read/dispatch/write per wake-up before yielding.
const ROUND_BUDGET: usize = 16;

pub(crate) struct Inner {
    state: Mutex<State>,
    pub(crate) driver: AtomicWaker,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) router: Arc<Router>,
    peer: KeptPeer,
    pub(crate) codec: Codec,
    pub(crate) server: Option<ServerLink>,
    pub(crate) sub_queue_limit: usize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("peer", &self.peer()).finish_non_exhaustive()
    }
}

/// The peer's identity as a session keeps it: the ids (all that a Unix
/// socket gives) inline, and only when there is more (a TCP address, a
/// named pipe's SID) the whole [`PeerIdentity`] boxed, so that a Unix
/// connection does not carry a hundred bytes of empty fields.
struct KeptPeer {
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<u32>,
    full: Option<Box<PeerIdentity>>,
}

impl KeptPeer {
    fn new(p: PeerIdentity) -> Self {
        let full = (p.addr.is_some() || p.sid.is_some()).then(|| Box::new(p));
        KeptPeer { uid: p.uid, gid: p.gid, pid: p.pid, full }
    }

    fn get(&self) -> PeerIdentity {
        match &self.full {
            Some(p) => **p,
            None => PeerIdentity { uid: self.uid, gid: self.gid, pid: self.pid, ..PeerIdentity::default() },
        }
    }
}

/// Data received on one streaming call, waiting for its reader.
#[derive(Default)]
pub(crate) struct StreamRx {
    pub(crate) queue: VecDeque<Bytes>,
    pub(crate) ended: bool,
    pub(crate) waker: Option<Waker>,
}

/// A call we made.
#[derive(Default)]
pub(crate) struct OutSlot {
    pub(crate) result: Option<Result<Bytes, Error>>,
    pub(crate) waker: Option<Waker>,
    pub(crate) rx: StreamRx,
    pub(crate) tx_waker: Option<Waker>,
    /// Nobody will read the outcome (the caller's handles are gone).
    pub(crate) abandoned: bool,
}

/// A call we serve.
#[derive(Default)]
pub(crate) struct InSlot {
    pub(crate) cancelled: bool,
    pub(crate) cancel_wakers: Vec<Waker>,
    /// The task running the handler (dropped on cancellation).
    pub(crate) abort_waker: Option<Waker>,
    pub(crate) rx: StreamRx,
    pub(crate) tx_waker: Option<Waker>,
}

/// One item of a subscription.
pub(crate) enum SubItem {
    Message(Text, Bytes),
    /// The messages of one MESSAGES frame, kept together (one queue entry
    /// for all of them); a subscription hands them out one at a time.
    Batch(Text, wharf_core::MessageBatch),
    Lagged(u64),
}

impl SubItem {
    /// What the item counts against the subscription's buffer limit: its
    /// messages (a lag report counts as one).
    fn weight(&self) -> usize {
        match self {
            SubItem::Batch(_, b) => b.len(),
            SubItem::Message(..) | SubItem::Lagged(_) => 1,
        }
    }
}

#[derive(Default)]
pub(crate) struct SubSlot {
    pub(crate) policy: wharf_core::SlowConsumerPolicy,
    pub(crate) queue: VecDeque<SubItem>,
    /// The weight of what `queue` holds ([`SubItem::weight`]).
    pub(crate) held: usize,
    pub(crate) ack: Option<Result<(), Error>>,
    pub(crate) ended: Option<Error>,
    pub(crate) waker: Option<Waker>,
}

pub(crate) struct AckSlot<T> {
    pub(crate) result: Option<Result<T, Error>>,
    pub(crate) waker: Option<Waker>,
}

impl<T> Default for AckSlot<T> {
    fn default() -> Self {
        AckSlot { result: None, waker: None }
    }
}

/// Tasks waiting for the connection to be made (the client's `connect`)
/// or to end (`Session::closed`).
#[derive(Default)]
pub(crate) struct Waiters {
    pub(crate) connect: Option<Waker>,
    pub(crate) finish: Vec<Waker>,
}

/// What the peer said in its GOODBYE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goodbye {
    /// Reason code.
    pub code: Code,
    /// Message.
    pub message: String,
    /// When the peer suggests reconnecting.
    pub reconnect_after: Option<Duration>,
}

/// The session's state, one per connection, behind its lock. What only
/// some connections ever use (calls, subscriptions, publishes, pings, the
/// end) is made when first needed, so that an idle connection is small.
pub(crate) struct State {
    pub(crate) conn: Connection,
    /// The peer's name, once the handshake completed.
    pub(crate) peer_name: Option<Text>,
    /// Who waits for the connection to be made or to end; made when the
    /// first does ([`State::waiters`]).
    pub(crate) waiters: Option<Box<Waiters>>,
    pub(crate) closed: Option<Box<ConnectionError>>,
    pub(crate) finished: bool,
    pub(crate) goodbye: Option<Box<Goodbye>>,
    pub(crate) calls: LazyMap<OutSlot>,
    pub(crate) serving: LazyMap<InSlot>,
    pub(crate) subs: LazyMap<SubSlot>,
    pub(crate) publishes: LazyMap<AckSlot<u32>>,
    pub(crate) pings: LazyMap<AckSlot<Duration>>,
    pub(crate) writable: Vec<Waker>,
    /// Wakers collected under the lock, woken once it is released.
    pub(crate) to_wake: Vec<Waker>,
    /// Handlers dispatched in this round, polled by the driver once it
    /// releases the lock.
    pub(crate) fresh: Vec<Fresh>,
    /// Method names and topics sent recently.
    pub(crate) names: Names,
    /// The driver is running (it writes and re-arms its timer before it
    /// sleeps, so other lock holders need not wake it).
    pub(crate) driver_active: bool,
    /// The deadline the sleeping driver's timer is set for (`None`: no
    /// deadline). A new earlier deadline wakes the driver to re-arm.
    pub(crate) timer_armed: Option<Instant>,
    /// The connection's byte stream, read and written only under this
    /// lock (by the driver, and by handles writing through); taken and
    /// closed when the session finishes.
    stream: Option<Box<dyn ByteStream>>,
    /// Whether the stream offers [`ByteStream::try_write_vectored`]
    /// (cleared the first time it says it does not).
    can_write_through: bool,
    /// A handle wrote through since the driver last ran: output queued
    /// after that waits for the driver, so that a burst (many tasks woken
    /// at once, or one task sending in a loop) still goes out in one write.
    pub(crate) wrote_through: bool,
    /// The driver woke more than one task since it last started running:
    /// they are likely to queue output together, so it waits for the
    /// driver (one write for all) instead of the first of them writing
    /// alone.
    pub(crate) driver_woke_many: bool,
}

impl State {
    pub(crate) fn new(conn: Connection) -> State {
        State {
            conn,
            peer_name: None,
            waiters: None,
            closed: None,
            finished: false,
            goodbye: None,
            calls: LazyMap::default(),
            serving: LazyMap::default(),
            subs: LazyMap::default(),
            publishes: LazyMap::default(),
            pings: LazyMap::default(),
            writable: Vec::new(),
            to_wake: Vec::new(),
            fresh: Vec::new(),
            names: Names::default(),
            driver_active: false,
            timer_armed: None,
            stream: None,
            can_write_through: true,
            wrote_through: false,
            driver_woke_many: false,
        }
    }

    /// The waiters, made if there were none.
    pub(crate) fn waiters(&mut self) -> &mut Waiters {
        self.waiters.get_or_insert_with(Default::default)
    }

    pub(crate) fn wake(&mut self, w: Option<Waker>) {
        if let Some(w) = w {
            self.to_wake.push(w);
        }
    }

    /// The error operations get once the connection is gone.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        self.closed.as_deref().cloned().map(Error::ConnectionLost)
    }

    /// Maps a refused command to the error the caller sees. A command
    /// refused because the connection is closing gets the same error as one
    /// that crossed the peer's GOODBYE: `SHUTTING_DOWN`, not processed.
    pub(crate) fn send_error(&self, e: SendError) -> Error {
        match e {
            SendError::Closing => Error::Remote {
                code: Code::SHUTTING_DOWN,
                message: match self.goodbye.as_deref() {
                    Some(g) if !g.message.is_empty() => format!("the connection is closing: {}", g.message),
                    _ => "the connection is closing; the operation was not sent".to_string(),
                },
                data: Bytes::new(),
            },
            other => other.into(),
        }
    }
}

impl State {
    /// Whether a handle releasing the lock with output queued (on a
    /// transmit queue that was empty when it locked) writes it through.
    fn may_write_through(&self) -> bool {
        !self.driver_active
            && self.can_write_through
            && !self.wrote_through
            && !self.driver_woke_many
            && self.conn.wants_write()
    }

    /// Writes what the connection queued straight to the stream, from the
    /// task that queued it, while the driver is idle (see [`Locked`]).
    /// Whatever does not go out (the stream would block, or took only
    /// part) stays queued for the driver, which the caller then wakes
    /// because output is left; a failed write fails the connection as a
    /// failed write of the driver does. One vectored write, another only
    /// while each took everything offered.
    fn write_through(&mut self, now: Instant) {
        let State { conn, stream, can_write_through, wrote_through, .. } = self;
        let Some(stream) = stream.as_mut() else { return };
        *wrote_through = true;
        loop {
            // What one holder queued: a frame or two (header and payload).
            let mut slices = [IoSlice::new(&[]); 8];
            let n = conn.transmit_slices(now, &mut slices);
            if n == 0 {
                return;
            }
            let offered: usize = slices[..n].iter().map(|s| s.len()).sum();
            match stream.try_write_vectored(&slices[..n]) {
                None => {
                    *can_write_through = false;
                    return;
                }
                Some(Ok(0)) => {
                    conn.handle_transport_error(&std::io::Error::from(std::io::ErrorKind::WriteZero), now);
                    return;
                }
                Some(Ok(k)) => {
                    conn.advance_transmit(k, now);
                    if k < offered {
                        // The socket's buffer is full: the driver waits
                        // for room.
                        return;
                    }
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Some(Err(e)) => {
                    // The core drops everything queued: the peer is gone.
                    conn.handle_transport_error(&e, now);
                    return;
                }
            }
        }
    }
}

/// The locked state. On drop, if the driver is idle and the transmit
/// queue was empty when the lock was taken but holds output now, it first
/// writes that output itself (write-through); then it releases the lock,
/// wakes what was collected, and wakes the sleeping driver if the core
/// still has output to write or a deadline earlier than the one its timer
/// is set for. The clock is read only to write through.
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    inner: &'a Inner,
    /// Whether to wake the driver (not when the driver itself holds it).
    kick: bool,
    /// The transmit queue was empty when the lock was taken: output queued
    /// since is this holder's, with nobody (driver or earlier holder)
    /// about to write or waiting for room.
    quiet: bool,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("guard present until drop")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("guard present until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.guard.take() else { return };
        if self.kick && self.quiet && g.may_write_through() {
            g.write_through(self.inner.runtime.now());
        }
        // `poll_timeout` is also "now" when events wait for dispatch.
        let kick = self.kick
            && !g.driver_active
            && (g.conn.wants_write()
                || match (g.conn.poll_timeout(), g.timer_armed) {
                    (Some(t), Some(armed)) => t < armed,
                    (Some(_), None) => true,
                    (None, _) => false,
                });
        if !self.kick && g.to_wake.len() > 1 {
            g.driver_woke_many = true;
        }
        // One waker (the usual case) is taken alone, so the vector keeps
        // its capacity: no allocation per operation.
        let (one, rest) = match g.to_wake.len() {
            0 => (None, Vec::new()),
            1 => (g.to_wake.pop(), Vec::new()),
            _ => (None, std::mem::take(&mut g.to_wake)),
        };
        drop(g);
        if let Some(w) = one {
            w.wake();
        }
        for w in rest {
            w.wake();
        }
        if kick {
            self.inner.driver.wake();
        }
    }
}

impl Inner {
    pub(crate) fn new(
        conn: Connection,
        runtime: Arc<dyn Runtime>,
        router: Arc<Router>,
        peer: PeerIdentity,
        codec: Codec,
        server: Option<ServerLink>,
        sub_queue_limit: usize,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            state: Mutex::new(State::new(conn)),
            driver: AtomicWaker::new(),
            runtime,
            router,
            peer: KeptPeer::new(peer),
            codec,
            server,
            sub_queue_limit,
        })
    }

    /// Who is at the other end, as the kernel reported it.
    pub(crate) fn peer(&self) -> PeerIdentity {
        self.peer.get()
    }

    pub(crate) fn lock(&self) -> Locked<'_> {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let quiet = !guard.conn.wants_write();
        Locked { guard: Some(guard), inner: self, kick: true, quiet }
    }

    /// The lock of cleanup in drop glue (a dropped responder, call,
    /// subscription or sender): what it queues is left to the driver,
    /// never written through. A runtime shutting down drops its tasks in
    /// any order; a frame written from one dropped before the driver would
    /// tell the peer more than that the connection ended (a handler
    /// dropped with its runtime reported as failed, where the caller
    /// should see the connection lost).
    pub(crate) fn lock_cleanup(&self) -> Locked<'_> {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Locked { guard: Some(guard), inner: self, kick: true, quiet: false }
    }

    /// The lock as the driver takes it: releasing it never wakes the driver
    /// (it arranged its own wake-ups before releasing) nor writes through.
    fn lock_driver(&self) -> Locked<'_> {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Locked { guard: Some(guard), inner: self, kick: false, quiet: false }
    }

    /// Runs `op` on the connection, waiting while the outbound queue is
    /// full (`SendError::Blocked`).
    pub(crate) fn poll_send<T>(
        &self,
        cx: &mut TaskContext<'_>,
        op: &mut impl FnMut(&mut Connection) -> Result<T, SendError>,
    ) -> Poll<Result<T, Error>> {
        let mut st = self.lock();
        match op(&mut st.conn) {
            Ok(v) => Poll::Ready(Ok(v)),
            Err(SendError::Blocked { .. }) => {
                st.writable.push(cx.waker().clone());
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(st.send_error(e))),
        }
    }

    /// [`poll_send`](Self::poll_send) as a future.
    pub(crate) async fn send<T>(
        &self,
        mut op: impl FnMut(&mut Connection) -> Result<T, SendError>,
    ) -> Result<T, Error> {
        std::future::poll_fn(|cx| self.poll_send(cx, &mut op)).await
    }
}

/// The task that runs one connection: it does the connection's I/O (on the
/// stream kept in the state) and finishes it.
pub(crate) struct Driver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) timer: Pin<Box<dyn Timer>>,
    pub(crate) timer_at: Option<Instant>,
    pub(crate) eof: bool,
    pub(crate) shutdown: bool,
    /// Handlers taken from the state to be polled outside the lock (kept
    /// here so its capacity is reused).
    fresh: Vec<Fresh>,
}

/// Why a run of rounds stopped.
enum Stop {
    /// Nothing more to do until the socket, a handle or the timer wakes us.
    Idle,
    /// The round budget is spent with work left.
    Budget,
    /// The connection is over and everything was written.
    Over,
    /// Handlers were dispatched: poll them outside the lock.
    Handlers,
}

impl Driver {
    /// The driver of `inner`'s connection over `stream`.
    pub(crate) fn new(inner: Arc<Inner>, stream: Box<dyn ByteStream>) -> Self {
        let far = inner.runtime.now() + Duration::from_secs(3600);
        let timer = inner.runtime.timer(far);
        inner.lock_driver().stream = Some(stream);
        Driver { inner, timer, timer_at: None, eof: false, shutdown: false, fresh: Vec::new() }
    }

    /// One round: read, timers, events, deliveries, write. Returns whether
    /// anything happened. `now` is read once per round: the core's clock
    /// only needs to be monotonic and current to within a round.
    fn round(&mut self, cx: &mut TaskContext<'_>, st: &mut State, now: Instant, check_timers: bool) -> bool {
        let inner = &self.inner;
        let mut progress = false;

        // The stream is there until the session finishes.
        if st.stream.is_none() {
            return false;
        }

        // Read.
        let mut reads = 0;
        while let Some(stream) = st.stream.as_mut()
            && !self.eof
            && st.conn.wants_read()
            && reads < READ_BUDGET
        {
            // No block to read into: wait for data before taking one, so
            // that an idle connection holds none.
            if !st.conn.has_recv_room() && stream.poll_read_ready(cx).is_pending() {
                break;
            }
            let buf = st.conn.recv_buffer();
            match stream.poll_read_buf(cx, buf) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    st.conn.handle_eof(now);
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    st.conn.handle_received(n, now);
                    progress = true;
                    reads += 1;
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => {
                    self.eof = true;
                    st.conn.handle_transport_error(&e, now);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }

        // Timers: on the first round of a poll and when the timer fired
        // (a deadline set since is in the future, or makes the timer fire
        // at once when the driver arms it).
        if check_timers && st.conn.next_timer().is_some_and(|t| t <= now) {
            st.conn.handle_timeout(now);
            progress = true;
        }

        // Events.
        progress |= drain_events(inner, st);

        // Pub/sub deliveries queued for this connection by the broker.
        if let Some(link) = &inner.server {
            progress |= link.pump(st);
            drain_events(inner, st);
        }

        // Write.
        while let Some(stream) = st.stream.as_mut()
            && !self.shutdown
            && st.conn.wants_write()
        {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = st.conn.transmit_slices(now, &mut slices);
            if n == 0 {
                break;
            }
            match stream.poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    st.conn.handle_transport_error(&e, now);
                    progress = true;
                    break;
                }
                Poll::Ready(Ok(k)) => {
                    st.conn.advance_transmit(k, now);
                    progress = true;
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => {
                    // The core drops everything queued: the peer is gone.
                    st.conn.handle_transport_error(&e, now);
                    progress = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        progress |= drain_events(inner, st);
        progress
    }

    /// Rounds until there is nothing to do, the budget is spent, the
    /// connection is over, or handlers wait to be polled.
    fn rounds(&mut self, cx: &mut TaskContext<'_>, st: &mut State, budget: &mut usize) -> Stop {
        let mut check_timers = true;
        loop {
            let now = self.inner.runtime.now();
            let progress = self.round(cx, st, now, check_timers);
            check_timers = false;
            *budget = budget.saturating_sub(1);
            if !st.fresh.is_empty() {
                return Stop::Handlers;
            }
            if st.conn.is_closed() && !st.conn.wants_write() {
                return Stop::Over;
            }
            if progress {
                if *budget == 0 {
                    return Stop::Budget;
                }
                continue;
            }
            // Sleep until the next deadline. The timer is moved only when
            // the deadline comes earlier: the keepalive deadline moves later
            // with every frame received, and chasing it would re-arm the
            // runtime's timer per message; instead the timer fires early
            // once and is armed again then.
            let next = st.conn.next_timer();
            let earlier = match (next, self.timer_at) {
                (Some(n), Some(armed)) => n < armed,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if earlier {
                self.timer_at = next;
                if let Some(at) = next {
                    self.timer.as_mut().reset(at);
                }
            }
            if self.timer_at.is_some() && self.timer.as_mut().poll_fire(cx).is_ready() {
                // Fired: handle what is due and arm for what comes next.
                self.timer_at = None;
                check_timers = true;
                continue;
            }
            st.timer_armed = self.timer_at;
            return Stop::Idle;
        }
    }

    /// Polls each handler dispatched in the last round once, outside the
    /// lock: one that finishes answers at once (no task, no wake-up); one
    /// that waits becomes a task of its own.
    fn run_fresh(&mut self, cx: &mut TaskContext<'_>) {
        // A handler that panics is caught here, as a runtime catches a
        // panicking task: the connection lives on, and the dropped
        // responder answers the call INTERNAL.
        let poll_caught = |poll: &mut dyn FnMut() -> bool| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(poll)).unwrap_or_else(|_| {
                tracing::error!("wharf: a handler panicked");
                true
            })
        };
        for fresh in self.fresh.drain(..) {
            match fresh {
                Fresh::Call(mut future, responder) => {
                    let mut outcome = None;
                    let done = poll_caught(&mut || match future.as_mut().poll(cx) {
                        Poll::Ready(r) => {
                            outcome = Some(r);
                            true
                        }
                        Poll::Pending => false,
                    });
                    match (done, outcome) {
                        (true, Some(outcome)) => responder.finish_now(outcome),
                        // Panicked: dropping the responder answers INTERNAL.
                        (true, None) => drop(responder),
                        (false, _) => {
                            let task = crate::router::serve_task(self.inner.clone(), future, responder);
                            self.inner.runtime.spawn(task);
                        }
                    }
                }
                Fresh::Notification(mut future) => {
                    if !poll_caught(&mut || future.as_mut().poll(cx).is_ready()) {
                        self.inner.runtime.spawn(future);
                    }
                }
            }
        }
    }
}

/// A driver dropped before the connection ended (its runtime or executor
/// was shut down): everything waiting on the session fails with
/// `ConnectionLost` instead of waiting forever.
impl Drop for Driver {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let mut st = inner.lock_driver();
        if st.finished {
            return;
        }
        if !st.conn.is_closed() {
            let e = std::io::Error::other("the runtime running this connection was shut down");
            let now = inner.runtime.now();
            st.conn.handle_transport_error(&e, now);
        }
        drain_events(&inner, &mut st);
        // Handlers dispatched but never polled: dropped once the lock is
        // released (a responder locks to answer; the connection is gone, so
        // nothing is sent).
        let fresh = std::mem::take(&mut st.fresh);
        finish(&inner, st);
        drop(fresh);
    }
}

/// Marks the session finished, closes its stream, wakes whoever waits for
/// that, and tells the server (if any) that this session is gone.
fn finish(inner: &Arc<Inner>, mut st: Locked<'_>) {
    st.finished = true;
    if let Some(w) = st.waiters.as_mut() {
        let wakers = std::mem::take(&mut w.finish);
        st.to_wake.extend(wakers);
    }
    // Closed before anyone learns that the session finished.
    drop(st.stream.take());
    let err = st.closed.as_deref().cloned();
    drop(st);
    if let Some(link) = &inner.server {
        link.finished(inner, err);
    }
}

/// The driver yields with work left: it is polled again at once, so no
/// handle needs to wake it and no timer is armed.
fn yield_now(st: &mut State, cx: &mut TaskContext<'_>) -> Poll<()> {
    st.driver_active = false;
    st.timer_armed = None;
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        this.inner.driver.register(cx.waker());
        let inner = this.inner.clone();
        let mut budget = ROUND_BUDGET;
        let mut first = true;
        let mut st = loop {
            let mut st = inner.lock_driver();
            st.driver_active = true;
            if first {
                // Handles may write through again once this poll is over,
                // unless it wakes several tasks.
                first = false;
                st.wrote_through = false;
                st.driver_woke_many = false;
            }
            match this.rounds(cx, &mut st, &mut budget) {
                Stop::Handlers => {
                    std::mem::swap(&mut st.fresh, &mut this.fresh);
                    drop(st);
                    this.run_fresh(cx);
                    if budget == 0 {
                        return yield_now(&mut inner.lock_driver(), cx);
                    }
                }
                Stop::Idle => {
                    st.driver_active = false;
                    return Poll::Pending;
                }
                Stop::Budget => return yield_now(&mut st, cx),
                Stop::Over => break st,
            }
        };

        // The connection is over and everything was written: close the
        // write side and finish.
        st.driver_active = false;
        if !this.shutdown {
            if let Some(stream) = st.stream.as_mut()
                && stream.poll_shutdown(cx).is_pending()
            {
                return Poll::Pending;
            }
            this.shutdown = true;
        }
        finish(&inner, st);
        Poll::Ready(())
    }
}

/// Routes one core event to whoever waits for it.
pub(crate) fn dispatch(inner: &Arc<Inner>, st: &mut State, ev: Event) {
    match ev {
        Event::HandshakeRequest(req) => match &inner.server {
            Some(link) => link.handshake(inner, st, req),
            None => tracing::error!("wharf: handshake request on a client connection"),
        },
        Event::Connected(c) => {
            st.peer_name = Some(c.peer_name);
            let w = st.waiters.as_mut().and_then(|w| w.connect.take());
            st.wake(w);
            if let Some(link) = &inner.server {
                link.connected(inner, st);
            }
        }
        Event::Request(call) => crate::router::dispatch_call(inner, st, call),
        Event::Notification(n) => crate::router::dispatch_notification(inner, st, n),
        Event::CallCancelled { id, .. } => {
            if let Some(slot) = st.serving.get_mut(&id.0) {
                slot.cancelled = true;
                slot.rx.ended = true;
                let mut ws = std::mem::take(&mut slot.cancel_wakers);
                ws.extend(slot.abort_waker.take());
                ws.extend(slot.rx.waker.take());
                ws.extend(slot.tx_waker.take());
                st.to_wake.extend(ws);
            }
        }
        Event::Response { id, result } => {
            if let Some(slot) = st.calls.get_mut(&id.0) {
                if slot.abandoned {
                    st.calls.remove(&id.0);
                } else {
                    slot.result = Some(result.map_err(Error::from));
                    slot.rx.ended = true;
                    let ws = [slot.waker.take(), slot.rx.waker.take(), slot.tx_waker.take()];
                    st.to_wake.extend(ws.into_iter().flatten());
                }
            }
        }
        Event::StreamData { id, payload } => {
            let rx = if let Some(s) = st.calls.get_mut(&id.0) {
                Some(&mut s.rx)
            } else {
                st.serving.get_mut(&id.0).map(|s| &mut s.rx)
            };
            match rx {
                Some(rx) => {
                    rx.queue.push_back(payload);
                    let w = rx.waker.take();
                    st.wake(w);
                }
                // Nobody reads this stream any more: return the credit.
                None => st.conn.stream_consumed(id, payload.len()),
            }
        }
        Event::StreamEnd { id } => {
            if let Some(s) = st.serving.get_mut(&id.0) {
                s.rx.ended = true;
                let w = s.rx.waker.take();
                st.wake(w);
            }
        }
        Event::StreamWritable { id } => {
            let w = match st.calls.get_mut(&id.0) {
                Some(s) => s.tx_waker.take(),
                None => st.serving.get_mut(&id.0).and_then(|s| s.tx_waker.take()),
            };
            st.wake(w);
        }
        Event::Subscribe { id, topic, prefix, policy } => {
            if let Some(link) = &inner.server {
                link.subscribe(st, id, topic, prefix, policy);
            }
        }
        Event::Unsubscribe { id } => {
            if let Some(link) = &inner.server {
                link.unsubscribe(id);
            }
        }
        Event::Publish { ack, topic, payload } => {
            if let Some(link) = &inner.server {
                link.publish(st, ack, topic, payload);
            }
        }
        Event::SubscribeResult { id, result } => {
            if let Some(s) = st.subs.get_mut(&id.0) {
                match result {
                    Ok(()) => s.ack = Some(Ok(())),
                    Err(e) => {
                        let e = Error::from(e);
                        s.ack = Some(Err(e.clone()));
                        s.ended = Some(e);
                    }
                }
                let w = s.waker.take();
                st.wake(w);
            }
        }
        Event::UnsubscribeResult { .. } => {}
        Event::PublishResult { id, result } => {
            if let Some(s) = st.publishes.get_mut(&id.0) {
                s.result = Some(result.map_err(Error::from));
                let w = s.waker.take();
                st.wake(w);
            }
        }
        Event::Message { subscription, topic, payload } => {
            push_sub_item(inner, st, subscription, SubItem::Message(topic, payload));
        }
        Event::Lagged { subscription, dropped } => {
            push_sub_item(inner, st, subscription, SubItem::Lagged(dropped));
        }
        Event::Pong { id, rtt } => {
            if let Some(s) = st.pings.get_mut(&id) {
                s.result = Some(Ok(rtt));
                let w = s.waker.take();
                st.wake(w);
            }
        }
        Event::Writable => {
            let ws = std::mem::take(&mut st.writable);
            st.to_wake.extend(ws);
        }
        Event::GoodbyeReceived { code, message, reconnect_after } => {
            tracing::debug!(%code, %message, ?reconnect_after, "wharf: peer said goodbye");
            st.goodbye = Some(Box::new(Goodbye { code, message: message.to_string(), reconnect_after }));
        }
        Event::Closed(err) => {
            tracing::debug!(error = %err, "wharf: connection closed");
            st.closed = Some(Box::new(err.clone()));
            let e = Error::ConnectionLost(err);
            let mut ws: Vec<Waker> = std::mem::take(&mut st.writable);
            ws.extend(st.waiters.as_mut().and_then(|w| w.connect.take()));
            for s in st.subs.values_mut() {
                if s.ended.is_none() {
                    s.ended = Some(e.clone());
                }
                if s.ack.is_none() {
                    s.ack = Some(Err(e.clone()));
                }
                ws.extend(s.waker.take());
            }
            for s in st.pings.values_mut() {
                s.result.get_or_insert_with(|| Err(e.clone()));
                ws.extend(s.waker.take());
            }
            for s in st.publishes.values_mut() {
                s.result.get_or_insert_with(|| Err(e.clone()));
                ws.extend(s.waker.take());
            }
            for s in st.calls.values_mut() {
                s.rx.ended = true;
                s.result.get_or_insert_with(|| Err(e.clone()));
                ws.extend(s.waker.take());
                ws.extend(s.rx.waker.take());
                ws.extend(s.tx_waker.take());
            }
            for s in st.serving.values_mut() {
                s.cancelled = true;
                s.rx.ended = true;
                ws.append(&mut s.cancel_wakers);
                ws.extend(s.abort_waker.take());
                ws.extend(s.rx.waker.take());
                ws.extend(s.tx_waker.take());
            }
            st.to_wake.extend(ws);
        }
        // Never the event itself: it may carry a payload (X16).
        _ => tracing::trace!("wharf: unhandled event"),
    }
}

/// Dispatches every event the connection has; the messages of a MESSAGES
/// frame go to their subscription in one piece. Whether there was any.
fn drain_events(inner: &Arc<Inner>, st: &mut State) -> bool {
    let mut any = false;
    loop {
        if let Some((subscription, topic, batch)) = st.conn.poll_message_batch() {
            push_sub_item(inner, st, subscription, SubItem::Batch(topic, batch));
        } else if let Some(ev) = st.conn.poll_event() {
            dispatch(inner, st, ev);
        } else {
            return any;
        }
        any = true;
    }
}

/// Queues a subscription item. Past the local buffer limit, the
/// subscription's policy decides, as it does in the server's broker: drop the
/// oldest message and report the loss as lag, or end the subscription with
/// [`Error::SlowConsumer`] (and unsubscribe).
fn push_sub_item(inner: &Inner, st: &mut State, id: wharf_core::SubscriptionId, item: SubItem) {
    let limit = inner.sub_queue_limit;
    let Some(s) = st.subs.get_mut(&id.0) else { return };
    if s.ended.is_some() {
        return;
    }
    if let SubItem::Lagged(n) = item
        && let Some(SubItem::Lagged(m)) = s.queue.back_mut()
    {
        *m += n;
        let w = s.waker.take();
        st.wake(w);
        return;
    }
    s.held += item.weight();
    s.queue.push_back(item);
    if s.held > limit && s.policy == wharf_core::SlowConsumerPolicy::Disconnect {
        s.queue.clear();
        s.held = 0;
        s.ended = Some(Error::SlowConsumer { buffered: limit });
        let w = s.waker.take();
        st.wake(w);
        let _ = st.conn.unsubscribe(id);
        return;
    }
    let mut dropped = 0u64;
    while s.held > limit {
        let excess = s.held - limit;
        match s.queue.front_mut() {
            // Drop only as many of a batch's oldest messages as needed.
            Some(SubItem::Batch(_, b)) if b.len() > excess => {
                for _ in 0..excess {
                    b.pop_front();
                }
                s.held -= excess;
                dropped += excess as u64;
            }
            Some(_) => {
                let Some(item) = s.queue.pop_front() else { break };
                s.held -= item.weight();
                dropped += match item {
                    SubItem::Lagged(n) => n,
                    SubItem::Batch(_, b) => b.len() as u64,
                    SubItem::Message(..) => 1,
                };
            }
            None => break,
        }
    }
    if dropped > 0 {
        s.queue.push_front(SubItem::Lagged(dropped));
        s.held += 1;
    }
    let w = s.waker.take();
    st.wake(w);
}

/// Marks a call's outcome as unwanted: cancels it if still running.
/// Called from drop glue, so the CANCEL is left to the driver.
pub(crate) fn abandon_call(inner: &Inner, id: u64) {
    let mut st = inner.lock_cleanup();
    match st.calls.get_mut(&id) {
        Some(slot) if slot.result.is_some() => {
            st.calls.remove(&id);
        }
        Some(slot) => {
            slot.abandoned = true;
            // The Cancelled outcome arrives as an event and removes the slot.
            if st.conn.cancel(wharf_core::RequestId(id)).is_err() {
                st.calls.remove(&id);
            }
        }
        None => {}
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
