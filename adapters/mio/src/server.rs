//! [`Server`]: a listener, its connections and a pub/sub broker, driven from
//! the application's own `mio::Poll`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Registry, Token};
use wharf_core::broker::{Broker, BrokerConfig, BrokerEvent, BrokerStats, PublishReport, SubscriberId};
use wharf_core::{
    AuthReject, Code, Config, Connection, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_HANDSHAKES, Event,
    HandshakeGate, PerUserLimit, RequestId, SendError, Text,
};
use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy};

use crate::conn::Conn;
use crate::error::Error;
use crate::net::{BindOptions, Listener};

/// Drives of one connection in one turn of [`Server::poll_event`]: the
/// first reads; each further one writes the answers to the events the
/// previous one produced (and reads on). A connection that keeps producing
/// events goes to the back of the queue after this many.
const MAX_DRIVES_PER_TURN: u32 = 4;

/// The turn of the connection at the front of the work queue.
#[derive(Clone, Copy, Debug, Default)]
struct FrontTurn {
    /// Drives so far in this turn.
    drives: u32,
    /// Events were handed out since the last drive.
    had_events: bool,
}

/// What the auth hook is told about a client asking to connect.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The id this connection will have.
    pub connection_id: u64,
    /// The client's name from its HELLO.
    pub client_name: &'a Text,
    /// The client's authentication payload (opaque to wharf).
    pub auth: &'a [u8],
    /// Who connected, as the kernel reports it (never from the payload).
    pub peer: &'a PeerIdentity,
}

type AuthHook = Box<dyn FnMut(&AuthRequest<'_>) -> Result<(), AuthReject>>;

/// Settings of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Protocol limits and timeouts of every connection.
    pub config: Config,
    /// The broker's limits and per-subscriber queues.
    pub broker: BrokerConfig,
    /// How the endpoint is bound.
    pub bind: BindOptions,
    /// Established connections beyond this are refused in the handshake
    /// with `TOO_MANY_CONNECTIONS` and a retry hint. Default 16,384
    /// ([`DEFAULT_MAX_CONNECTIONS`]). The token range given to
    /// [`Server::register`] bounds the connections held (in handshake or
    /// established) too.
    pub max_connections: usize,
    /// Most connections accepted but still owing their HELLO (default 64,
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`]). When one more is accepted, the
    /// **oldest** of them is closed (REJECT `HANDSHAKE_TIMEOUT` once its
    /// preamble arrived, else a plain close) and counted in
    /// [`Server::evicted_handshakes`]: a flood of stalled or slow-loris
    /// peers holds at most this many tokens and descriptors, while a
    /// client that sends its HELLO promptly is served in the middle of it
    /// (see [`HandshakeGate`](wharf_core::HandshakeGate)).
    pub max_pending_handshakes: usize,
    /// Most connections one local user (one peer uid of a Unix socket)
    /// may hold at once; one more is rejected in the handshake with
    /// `TOO_MANY_CONNECTIONS` and a retry hint. Default: no per-user bound
    /// (`usize::MAX`; the default peer policy admits only the server's own
    /// user and root). Set it when `peer_policy` lets other users in.
    /// Peers without a uid (TCP, named pipes) are not counted.
    pub max_connections_per_user: usize,
    /// Which local users may connect, judged on the kernel's identity of
    /// the peer at accept time, before any frame is read: a refused peer
    /// is closed at once, without a handshake (counted in
    /// [`Server::refused_peers`]). Default: the server's own uid or root
    /// on a Unix socket; on a named pipe, the server's own user SID or
    /// LocalSystem (a client whose SID cannot be read is refused).
    /// Independent of the socket file's mode or the pipe's security
    /// descriptor (`bind`): another user needs both. Not applied to TCP
    /// (no uid).
    pub peer_policy: PeerPolicy,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            config: Config::default(),
            broker: BrokerConfig::default(),
            bind: BindOptions::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_connections_per_user: usize::MAX,
            peer_policy: PeerPolicy::default(),
        }
    }
}

/// An event of one of the server's connections.
#[derive(Debug)]
pub struct ServerEvent {
    /// The token the connection is registered under.
    pub token: Token,
    /// The connection's id (the one sent to the client in WELCOME).
    pub connection_id: u64,
    /// What happened. Pub/sub frames (subscribe, unsubscribe, publish) and
    /// the handshake are handled by the server itself and never appear;
    /// `Closed` is the last event of a connection. Its token is free again
    /// once the connection has finished (its last output written or given
    /// up, see [`Conn::is_finished`](crate::Conn::is_finished)), which can
    /// be after `Closed`: events for the token until then are still
    /// the old connection's.
    pub event: Event,
}

struct Peer {
    conn: Conn,
    id: u64,
    /// In the work queue.
    queued: bool,
    /// The timer this peer is filed under in `timers`.
    timer: Option<Instant>,
    /// The broker has deliveries for it.
    deliveries: bool,
    /// Its subscription policy says disconnect: abort it.
    slow: bool,
    /// Connected was seen and Closed not yet (counted in `established`).
    connected: bool,
    /// Counted in the server's `per_user` (released at removal).
    per_user: bool,
}

/// A wharf server driven by the application's `mio::Poll`: it owns the
/// listener, every accepted connection and the pub/sub broker, answers the
/// handshake (with an optional auth hook), subscriptions and publishes
/// itself, and hands every other event (calls, notifications, responses to
/// calls it made, stream data, closes) to the application with the token
/// of its connection.
///
/// The application chooses the tokens: one for the listener and a range
/// for connections, given to [`register`](Self::register). Its loop:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Instant;
/// use mio::{Events, Poll, Token};
/// use wharf_core::{Bytes, Event};
/// use wharf_mio::{Server, ServerOptions};
///
/// let mut poll = Poll::new()?;
/// let mut server = Server::bind(&"demo-loop".parse()?, ServerOptions::default())?;
/// server.register(poll.registry(), Token(0), 1..10_001)?;
/// let mut events = Events::with_capacity(256);
/// loop {
///     poll.poll(&mut events, server.timeout(Instant::now()))?;
///     let now = Instant::now();
///     for event in events.iter() {
///         server.handle(event, now); // ignores tokens that are not its own
///     }
///     server.handle_timeout(now);
///     while let Some(ev) = server.poll_event(now) {
///         if let Event::Request(call) = ev.event {
///             server.respond(ev.token, call.id, call.payload); // an echo
///         }
///     }
/// }
/// # }
/// ```
pub struct Server {
    listener: Option<Listener>,
    endpoint: Endpoint,
    registry: Option<Registry>,
    listener_token: Option<Token>,
    tokens: Range<usize>,
    next_unused: usize,
    free: Vec<usize>,
    config: Arc<Config>,
    max_connections: usize,
    /// Connections owing their HELLO (by connection id), oldest first.
    gate: HandshakeGate<u64>,
    /// Connections past their HELLO per peer uid.
    per_user: PerUserLimit,
    peer_policy: PeerPolicy,
    /// Peers closed at accept by the peer policy.
    refused: u64,
    broker: Broker,
    peers: HashMap<Token, Peer>,
    by_id: HashMap<u64, Token>,
    work: VecDeque<Token>,
    /// Turns left in the current pass of `poll_event` (`None`: no pass).
    turns_left: Option<usize>,
    front: FrontTurn,
    timers: BTreeSet<(Instant, Token)>,
    next_id: u64,
    established: usize,
    auth: Option<AuthHook>,
    stopping: Option<(String, Option<Duration>)>,
    /// Accepting waits until then (the OS ran out of descriptors).
    accept_paused: Option<Instant>,
    /// The listener may have connections waiting that were not taken (a
    /// pause, or no free token).
    accept_pending: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint)
            .field("connections", &self.peers.len())
            .field("stopping", &self.stopping.is_some())
            .finish()
    }
}

impl Server {
    /// Binds `endpoint` (see [`Listener::bind`] for what each transport
    /// guarantees) with `options`, which are validated here.
    pub fn bind(endpoint: &Endpoint, options: ServerOptions) -> Result<Server, Error> {
        options.config.validate()?;
        let broker = Broker::new(options.broker)?;
        let listener = Listener::bind(endpoint, &options.bind)?;
        // A TCP port of 0 becomes the port the OS chose.
        let endpoint = match listener.local_addr() {
            Some(addr) => Endpoint::Tcp(addr.to_string()),
            None => endpoint.clone(),
        };
        Ok(Server {
            listener: Some(listener),
            endpoint,
            registry: None,
            listener_token: None,
            tokens: 0..0,
            next_unused: 0,
            free: Vec::new(),
            config: Arc::new(options.config),
            max_connections: options.max_connections,
            gate: HandshakeGate::new(options.max_pending_handshakes),
            per_user: PerUserLimit::new(options.max_connections_per_user),
            peer_policy: options.peer_policy,
            refused: 0,
            broker,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            work: VecDeque::new(),
            turns_left: None,
            front: FrontTurn::default(),
            timers: BTreeSet::new(),
            next_id: 1,
            established: 0,
            auth: None,
            stopping: None,
            accept_paused: None,
            accept_pending: false,
        })
    }

    /// The endpoint clients connect to (for TCP, with the port the OS
    /// chose).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sets the auth hook: it sees every client's HELLO (name, auth
    /// payload) and the kernel's identity of the peer, and accepts or
    /// rejects. Without one, every client is accepted.
    pub fn set_auth(&mut self, hook: impl FnMut(&AuthRequest<'_>) -> Result<(), AuthReject> + 'static) {
        self.auth = Some(Box::new(hook));
    }

    /// Registers the listener under `listener` and gives the server the
    /// tokens `connections` for the connections it accepts (at most that
    /// many are held at once; the rest wait in the listen backlog). The
    /// registry is kept (cloned) to register and deregister connections.
    ///
    /// A server bound to a non-loopback TCP address (with
    /// `bind.tcp.allow_remote`) is refused here, with a
    /// `PermissionDenied` error wrapping
    /// [`TransportError::RemoteWithoutAuth`](wharf_transport::TransportError::RemoteWithoutAuth),
    /// unless an auth hook was set first: it never accepts a connection
    /// without one. A second `register` is refused (`AlreadyExists`): the
    /// connections hold tokens of the first range.
    pub fn register(&mut self, registry: &Registry, listener: Token, connections: Range<usize>) -> io::Result<()> {
        if connections.contains(&listener.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the listener token is inside the connection range",
            ));
        }
        // A second registration would reset the token range under the
        // connections that hold tokens from the first.
        if self.registry.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the server on {} is already registered", self.endpoint),
            ));
        }
        // A non-loopback TCP listener starts accepting only with an auth
        // hook (set it with `set_auth` before registering).
        wharf_transport::require_auth_for_remote(&self.endpoint, self.auth.is_some())?;
        let registry = registry.try_clone()?;
        if let Some(l) = self.listener.as_mut() {
            l.register(&registry, listener)?;
        }
        self.registry = Some(registry);
        self.listener_token = Some(listener);
        self.next_unused = connections.start;
        self.tokens = connections;
        self.free.clear();
        self.accept_pending = true;
        Ok(())
    }

    /// Whether `token` is the server's (its listener or one of its
    /// connection tokens).
    pub fn owns(&self, token: Token) -> bool {
        Some(token) == self.listener_token || self.tokens.contains(&token.0)
    }

    /// Hands the server a readiness event from `mio::Poll`. Events for
    /// tokens that are not the server's are ignored.
    pub fn handle(&mut self, event: &mio::event::Event, now: Instant) {
        let token = event.token();
        if Some(token) == self.listener_token {
            self.accept_pending = true;
            self.accept_all(now);
        } else if let Some(peer) = self.peers.get_mut(&token) {
            peer.conn.ready(event);
            Self::enqueue(&mut self.work, token, peer);
        }
    }

    /// Fires the timers due at `now` (call deadlines, keepalive, handshake
    /// and close timeouts) and resumes accepting after a pause.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, token)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&token) {
                peer.timer = None;
                Self::enqueue(&mut self.work, token, peer);
            }
        }
        if self.accept_paused.is_some_and(|t| t <= now) {
            self.accept_paused = None;
            self.accept_all(now);
        }
    }

    /// How long `mio::Poll::poll` may sleep: zero while work is pending,
    /// else until the earliest timer; `None` when nothing is scheduled.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.work.is_empty() {
            return Some(Duration::ZERO);
        }
        let timer = self.timers.first().map(|(t, _)| *t);
        let next = match (timer, self.accept_paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|t| t.saturating_duration_since(now))
    }

    /// The next event of any connection, after doing the I/O that is
    /// possible without waiting (writing what commands queued, reading
    /// what arrived). Connections take turns; one connection's events come
    /// in order. `None`: nothing more until mio reports readiness or a
    /// timer is due, or every connection had its turn in this pass and some
    /// still have work (then [`timeout`](Self::timeout) is zero): poll mio,
    /// then call again. So a connection that never stops sending cannot
    /// keep the loop from seeing the others, the listener and the timers.
    pub fn poll_event(&mut self, now: Instant) -> Option<ServerEvent> {
        let limit = self.config.max_outbound_buffered / 2;
        loop {
            if self.work.is_empty() {
                self.turns_left = None;
                return None;
            }
            // A pass gives every connection queued at its start one turn;
            // then `None`, so the loop polls mio (and sees the listener,
            // timers and the others) even if someone keeps us busy.
            let turns = *self.turns_left.get_or_insert(self.work.len());
            if turns == 0 {
                self.turns_left = None;
                return None;
            }
            let token = *self.work.front().expect("the queue is not empty");
            let Some(peer) = self.peers.get_mut(&token) else {
                self.work.pop_front();
                self.front = FrontTurn::default();
                continue;
            };
            if let Some(event) = peer.conn.poll_event() {
                let id = peer.id;
                self.front.had_events = true;
                if let Some(event) = self.intercept(token, id, event) {
                    return Some(ServerEvent { token, connection_id: id, event });
                }
                continue;
            }
            // No events: flush what the answers queued, pull deliveries,
            // read. Again after a drive whose events were handed out (to
            // write their answers), at most MAX_DRIVES_PER_TURN times.
            if self.front.drives == 0 || (self.front.had_events && self.front.drives < MAX_DRIVES_PER_TURN) {
                self.front.drives += 1;
                self.front.had_events = false;
                if peer.slow && !peer.conn.core_ref().is_closed() {
                    peer.slow = false;
                    let msg = "subscriber too slow; disconnected by its subscription policy";
                    peer.conn.core().abort(Code::SLOW_CONSUMER, msg, now);
                }
                if peer.deliveries {
                    let pumped = self.broker.deliver_into(SubscriberId(peer.id), peer.conn.core(), limit);
                    peer.deliveries = !pumped.drained;
                }
                peer.conn.drive(now);
                if let Some(r) = &self.registry
                    && let Err(e) = peer.conn.update_interest(r)
                {
                    tracing::debug!(error = %e, token = token.0, "wharf: re-registering a connection failed");
                }
                continue;
            }
            // The turn is over.
            self.front = FrontTurn::default();
            self.turns_left = Some(turns - 1);
            if peer.conn.is_finished() {
                self.remove(token);
                continue;
            }
            let more = peer.conn.has_work()
                || peer.conn.core_ref().has_events()
                || (peer.deliveries && peer.conn.core_ref().transmit_len() < limit);
            self.work.pop_front();
            if more {
                // Fairness: a busy connection goes to the back of the line.
                self.work.push_back(token);
            } else {
                peer.queued = false;
            }
            let next = peer.conn.core_ref().next_timer();
            if next != peer.timer {
                if let Some(old) = peer.timer.take() {
                    self.timers.remove(&(old, token));
                }
                if let Some(t) = next {
                    self.timers.insert((t, token));
                }
                peer.timer = next;
            }
        }
    }

    /// The connection registered under `token`, to issue commands on it
    /// (respond, request, notify, stream, close, ...). It is driven (its
    /// output written) by the next [`poll_event`](Self::poll_event).
    pub fn connection(&mut self, token: Token) -> Option<&mut Connection> {
        let peer = self.peers.get_mut(&token)?;
        Self::enqueue(&mut self.work, token, peer);
        Some(peer.conn.core())
    }

    /// The token of the connection with this id.
    pub fn token_of(&self, connection_id: u64) -> Option<Token> {
        self.by_id.get(&connection_id).copied()
    }

    /// Who is at the other end of `token`, as the kernel reported it.
    pub fn peer(&self, token: Token) -> Option<&PeerIdentity> {
        self.peers.get(&token).map(|p| p.conn.peer())
    }

    /// Answers call `id` on `token`'s connection. A connection that went
    /// away, or a call that ended (cancelled, deadline passed) is not an
    /// error here: the answer is dropped, as the caller is gone.
    pub fn respond(&mut self, token: Token, id: RequestId, payload: Bytes) {
        if let Some(conn) = self.connection(token)
            && let Err(e) = conn.respond(id, payload)
        {
            tracing::debug!(error = %e, token = token.0, "wharf: response dropped");
        }
    }

    /// Answers call `id` on `token`'s connection with an error.
    pub fn respond_error(&mut self, token: Token, id: RequestId, code: Code, message: &str) {
        if let Some(conn) = self.connection(token)
            && let Err(e) = conn.respond_error(id, code, message, Bytes::new())
        {
            tracing::debug!(error = %e, token = token.0, "wharf: error response dropped");
        }
    }

    /// Publishes `payload` on `topic` to every matching subscription of
    /// every connection. Never waits: each subscriber has a bounded queue
    /// and its subscription's slow-consumer policy.
    pub fn publish(&mut self, topic: &str, payload: Bytes) -> PublishReport {
        self.publish_text(&Text::from(topic.to_string()), &payload)
    }

    fn publish_text(&mut self, topic: &Text, payload: &Bytes) -> PublishReport {
        let report = self.broker.publish(topic, payload);
        while let Some(e) = self.broker.poll_event() {
            let (sid, slow) = match e {
                BrokerEvent::Ready(s) => (s, false),
                BrokerEvent::Disconnect { subscriber, .. } => (subscriber, true),
            };
            if let Some(&token) = self.by_id.get(&sid.0)
                && let Some(peer) = self.peers.get_mut(&token)
            {
                if slow {
                    peer.slow = true;
                } else {
                    peer.deliveries = true;
                }
                Self::enqueue(&mut self.work, token, peer);
            }
        }
        report
    }

    /// Messages queued for subscribers and not yet handed to their
    /// connections: a publisher can pace itself on this.
    pub fn backlog(&self) -> u64 {
        self.broker.backlog()
    }

    /// The broker's counters.
    pub fn broker_stats(&self) -> &BrokerStats {
        self.broker.stats()
    }

    /// Connections held (in handshake, established or closing).
    pub fn connection_count(&self) -> usize {
        self.peers.len()
    }

    /// Connections closed at accept because their peer did not pass the
    /// [peer policy](ServerOptions::peer_policy), since the server started.
    pub fn refused_peers(&self) -> u64 {
        self.refused
    }

    /// Connections closed before their HELLO arrived because
    /// [`max_pending_handshakes`](ServerOptions::max_pending_handshakes)
    /// others were waiting too, since the server started.
    pub fn evicted_handshakes(&self) -> u64 {
        self.gate.evicted()
    }

    /// Tokens of the connections held.
    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.peers.keys().copied()
    }

    /// Graceful shutdown: stop accepting (the listener is closed and, for a
    /// Unix socket, its file removed), and send every connection a GOODBYE
    /// with `SHUTTING_DOWN`, `reason` and the reconnect hint. Calls in
    /// flight are still answered. Keep running the loop until
    /// [`connection_count`](Self::connection_count) is 0.
    pub fn shutdown(&mut self, reason: &str, reconnect_after: Option<Duration>, now: Instant) {
        self.stopping = Some((reason.to_string(), reconnect_after));
        if let Some(mut l) = self.listener.take()
            && let Some(r) = &self.registry
        {
            let _ = l.deregister(r);
        }
        let tokens: Vec<Token> = self.peers.keys().copied().collect();
        for token in tokens {
            if let Some(conn) = self.connection(token) {
                conn.close(Code::SHUTTING_DOWN, reason, reconnect_after, now);
            }
        }
    }

    fn enqueue(work: &mut VecDeque<Token>, token: Token, peer: &mut Peer) {
        if !peer.queued {
            peer.queued = true;
            work.push_back(token);
        }
    }

    /// Handles the events the server answers itself; returns the others.
    fn intercept(&mut self, token: Token, id: u64, event: Event) -> Option<Event> {
        match event {
            Event::HandshakeRequest(req) => {
                self.gate.hello_received(id);
                let uid = self.peers.get(&token).and_then(|p| p.conn.peer().uid);
                let limits = if let Some((reason, hint)) = &self.stopping {
                    Err(AuthReject { code: Code::SHUTTING_DOWN, reason: reason.clone(), retry_after: *hint })
                } else if self.established >= self.max_connections {
                    Err(AuthReject {
                        code: Code::TOO_MANY_CONNECTIONS,
                        reason: "the server has too many connections".into(),
                        retry_after: Some(Duration::from_secs(1)),
                    })
                } else if !self.per_user.try_admit(uid) {
                    Err(AuthReject {
                        code: Code::TOO_MANY_CONNECTIONS,
                        reason: "too many connections for this user".into(),
                        retry_after: Some(Duration::from_secs(1)),
                    })
                } else {
                    // Counted: released when the connection is removed.
                    if let Some(p) = self.peers.get_mut(&token) {
                        p.per_user = true;
                    }
                    Ok(())
                };
                let verdict = match (limits, self.auth.as_mut()) {
                    (Err(rej), _) => Err(rej),
                    (Ok(()), None) => Ok(()),
                    (Ok(()), Some(hook)) => {
                        let peer = self.peers.get(&token).map(|p| *p.conn.peer()).unwrap_or_default();
                        hook(&AuthRequest {
                            connection_id: id,
                            client_name: &req.client_name,
                            auth: &req.auth,
                            peer: &peer,
                        })
                    }
                };
                let conn = self.peers.get_mut(&token)?.conn.core();
                let r = match verdict {
                    Ok(()) => conn.accept(id),
                    Err(rej) => {
                        tracing::debug!(connection_id = id, code = %rej.code, "wharf: handshake rejected");
                        conn.reject(rej.code, &rej.reason, rej.retry_after)
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(connection_id = id, error = %e, "wharf: handshake answer failed");
                }
                None
            }
            Event::Connected(c) => {
                if let Some(peer) = self.peers.get_mut(&token) {
                    peer.connected = true;
                    self.established += 1;
                }
                Some(Event::Connected(c))
            }
            Event::Subscribe { id: sub, topic, prefix, policy } => {
                let conn = self.peers.get_mut(&token)?.conn.core();
                let _ = self.broker.subscribe_on(SubscriberId(id), conn, sub, topic, prefix, policy);
                None
            }
            Event::Unsubscribe { id: sub } => {
                self.broker.unsubscribe(SubscriberId(id), sub);
                None
            }
            Event::Publish { ack, topic, payload } => {
                let report = self.publish_text(&topic, &payload);
                if let Some(ack) = ack
                    && let Some(peer) = self.peers.get_mut(&token)
                {
                    match peer.conn.core().ack_publish(ack, Ok(report.queued)) {
                        Ok(()) | Err(SendError::Closed(_)) => {}
                        Err(e) => tracing::debug!(error = %e, "wharf: publish acknowledgement dropped"),
                    }
                }
                None
            }
            Event::Closed(e) => {
                self.broker.remove_subscriber(SubscriberId(id));
                if let Some(peer) = self.peers.get_mut(&token)
                    && std::mem::take(&mut peer.connected)
                {
                    self.established -= 1;
                }
                Some(Event::Closed(e))
            }
            other => Some(other),
        }
    }

    fn remove(&mut self, token: Token) {
        self.work.retain(|t| *t != token);
        let Some(mut peer) = self.peers.remove(&token) else { return };
        if let Some(t) = peer.timer {
            self.timers.remove(&(t, token));
        }
        if peer.connected {
            self.established -= 1;
        }
        self.gate.forget(peer.id);
        if peer.per_user {
            self.per_user.release(peer.conn.peer().uid);
        }
        self.broker.remove_subscriber(SubscriberId(peer.id));
        self.by_id.remove(&peer.id);
        if let Some(r) = &self.registry {
            let _ = peer.conn.deregister(r);
        }
        self.free.push(token.0);
        tracing::trace!(connection_id = peer.id, token = token.0, "wharf: connection removed");
        if self.accept_pending {
            self.accept_all(Instant::now());
        }
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused.is_some() {
            return;
        }
        let (Some(listener), Some(registry)) = (self.listener.as_mut(), self.registry.as_ref()) else { return };
        loop {
            let token = match self.free.pop() {
                Some(t) => Token(t),
                None if self.next_unused < self.tokens.end => {
                    self.next_unused += 1;
                    Token(self.next_unused - 1)
                }
                None => {
                    tracing::debug!("wharf: every connection token is in use; accepting waits");
                    return;
                }
            };
            match listener.accept(registry, token) {
                Ok(Some((mut stream, peer))) => {
                    // Before any frame: a peer the policy refuses is closed
                    // at once, and its token is free again.
                    if let Err(e) = self.peer_policy.check(&self.endpoint, &peer) {
                        self.refused += 1;
                        let _ = registry.deregister(&mut stream);
                        drop(stream);
                        self.free.push(token.0);
                        tracing::debug!(uid = ?peer.uid, gid = ?peer.gid, pid = ?peer.pid, sid = ?peer.sid, error = %e, "wharf: peer refused at accept");
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let core = match Connection::server(self.config.clone(), now) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "wharf: invalid server config");
                            self.free.push(token.0);
                            return;
                        }
                    };
                    self.by_id.insert(id, token);
                    let mut peer = Peer {
                        conn: Conn::registered(stream, core, peer, token),
                        id,
                        queued: false,
                        timer: None,
                        deliveries: false,
                        slow: false,
                        connected: false,
                        per_user: false,
                    };
                    Self::enqueue(&mut self.work, token, &mut peer);
                    self.peers.insert(token, peer);
                    tracing::trace!(connection_id = id, token = token.0, "wharf: accepted");
                    if let Some(old) = self.gate.accepted(id)
                        && let Some(&t) = self.by_id.get(&old)
                        && let Some(p) = self.peers.get_mut(&t)
                    {
                        tracing::debug!(connection_id = old, peer = ?p.conn.peer(), "wharf: too many pending handshakes; closing the oldest");
                        p.conn.core().abort(
                            Code::HANDSHAKE_TIMEOUT,
                            "too many pending handshakes; the oldest is closed",
                            now,
                        );
                        Self::enqueue(&mut self.work, t, p);
                    }
                }
                Ok(None) => {
                    self.free.push(token.0);
                    self.accept_pending = false;
                    return;
                }
                Err(e) => {
                    // EMFILE and friends: pause instead of spinning on a
                    // listener that stays ready; every pipe instance in use
                    // (max_instances): try again until one is freed
                    // (clients meanwhile find the pipe busy).
                    self.free.push(token.0);
                    let pause = wharf_transport::accept_pause(&self.endpoint, &e);
                    self.accept_paused = Some(now + pause);
                    return;
                }
            }
        }
    }
}
