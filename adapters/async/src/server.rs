//! The server: accept loop, sessions registry, broker, auth hook, shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use wharf_core::broker::{Broker, BrokerConfig, BrokerEvent, BrokerStats, PublishReport, SubscriberId};
use wharf_core::{
    AuthReject, Code, Config, Connection, ConnectionError, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_HANDSHAKES,
    HandshakeGate, HandshakeRequest, PerUserLimit, PublishId, SlowConsumerPolicy, SubscriptionId, Text,
};
use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy};

use crate::api::Session;
use crate::backend::{Backend, BindOptions, IntoEndpoint};
use crate::codec::Codec;
use crate::error::Error;
use crate::io::{ByteListener, ByteStream};
use crate::router::Router;
use crate::session::{Driver, Inner, State};

/// What the auth hook is told about a client asking to connect.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    /// The id this connection will have.
    pub connection_id: u64,
    /// The client's name from its HELLO.
    pub client_name: Text,
    /// The client's authentication payload (opaque to wharf).
    pub auth: Bytes,
    /// Who connected, as the kernel reports it (never from the payload).
    pub peer: PeerIdentity,
}

type AuthFuture = Pin<Box<dyn Future<Output = Result<(), AuthReject>> + Send>>;
type AuthHook = Arc<dyn Fn(AuthRequest) -> AuthFuture + Send + Sync>;
type ConnectHook = Arc<dyn Fn(&SessionInfo) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&SessionInfo, &ConnectionError) + Send + Sync>;

/// A connection as the server's callbacks see it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Connection id.
    pub connection_id: u64,
    /// Client name.
    pub client_name: Text,
    /// Who connected.
    pub peer: PeerIdentity,
}

/// What other threads tell a session's driver, kept in its [`ServerLink`]
/// (in the session's own allocation).
#[derive(Default)]
pub(crate) struct Flags {
    /// The broker holds deliveries for this session.
    ready: AtomicBool,
    /// The broker asked to disconnect this session (slow consumer).
    slow: AtomicBool,
    /// Counted in `per_user` (released when the session ends). Set and
    /// read under the sessions lock.
    per_user: AtomicBool,
}

pub(crate) struct ServerShared {
    backend: Backend,
    endpoint: Endpoint,
    config: Arc<Config>,
    router: Arc<Router>,
    codec: Codec,
    sub_queue: usize,
    broker: Mutex<Broker>,
    /// Live sessions by connection id (their flags are in their link).
    sessions: Mutex<HashMap<u64, Arc<Inner>>>,
    next_id: AtomicU64,
    auth: Option<AuthHook>,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    max_connections: usize,
    /// Connections still owing their HELLO, oldest first.
    gate: Mutex<HandshakeGate<u64>>,
    /// Connections past their HELLO per peer uid.
    per_user: Mutex<PerUserLimit>,
    peer_policy: PeerPolicy,
    /// Peers closed at accept by the peer policy.
    refused: AtomicU64,
    stopping: AtomicBool,
    shutdown_hint: Mutex<Option<(String, Option<Duration>)>>,
    accept_waker: Mutex<Option<Waker>>,
    idle_wakers: Mutex<Vec<Waker>>,
    accepting: AtomicBool,
}

/// The server's half of a session: what the driver calls for server events.
pub(crate) struct ServerLink {
    shared: Arc<ServerShared>,
    id: u64,
    flags: Flags,
}

impl ServerLink {
    pub(crate) fn handshake(&self, inner: &Arc<Inner>, st: &mut State, req: HandshakeRequest) {
        let shared = &self.shared;
        shared.gate().hello_received(self.id);
        if shared.stopping.load(Ordering::Acquire) {
            let hint = shared.shutdown_hint.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let retry = hint.and_then(|h| h.1);
            let _ = st.conn.reject(Code::SHUTTING_DOWN, "the server is shutting down", retry);
            return;
        }
        if shared.count() > shared.max_connections {
            let _ = st.conn.reject(
                Code::TOO_MANY_CONNECTIONS,
                "the server has too many connections",
                Some(Duration::from_secs(1)),
            );
            return;
        }
        if !shared.per_user().try_admit(inner.peer().uid) {
            tracing::debug!(connection_id = self.id, uid = ?inner.peer().uid, "wharf: too many connections for this user");
            let _ = st.conn.reject(
                Code::TOO_MANY_CONNECTIONS,
                "too many connections for this user",
                Some(Duration::from_secs(1)),
            );
            return;
        }
        if let Ok(s) = shared.sessions.lock()
            && s.contains_key(&self.id)
        {
            self.flags.per_user.store(true, Ordering::Relaxed);
        } else {
            shared.per_user().release(inner.peer().uid);
        }
        match &shared.auth {
            None => {
                let _ = st.conn.accept(self.id);
            }
            Some(hook) => {
                let fut = hook(AuthRequest {
                    connection_id: self.id,
                    client_name: req.client_name,
                    auth: req.auth,
                    peer: inner.peer(),
                });
                let inner = inner.clone();
                let id = self.id;
                shared.backend.runtime.spawn(Box::pin(async move {
                    let verdict = fut.await;
                    let mut st = inner.lock();
                    let r = match verdict {
                        Ok(()) => st.conn.accept(id),
                        Err(rej) => st.conn.reject(rej.code, &rej.reason, rej.retry_after),
                    };
                    if let Err(e) = r {
                        tracing::debug!(connection_id = id, error = %e, "wharf: auth verdict came too late");
                    }
                }));
            }
        }
    }

    pub(crate) fn connected(&self, inner: &Arc<Inner>, st: &mut State) {
        if let Some(hook) = &self.shared.on_connect {
            let info = SessionInfo {
                connection_id: self.id,
                client_name: st.peer_name.clone().unwrap_or_default(),
                peer: inner.peer(),
            };
            hook(&info);
        }
    }

    pub(crate) fn subscribe(
        &self,
        st: &mut State,
        id: SubscriptionId,
        topic: Text,
        prefix: bool,
        policy: SlowConsumerPolicy,
    ) {
        let _ = self.shared.broker().subscribe_on(SubscriberId(self.id), &mut st.conn, id, topic, prefix, policy);
    }

    pub(crate) fn unsubscribe(&self, id: SubscriptionId) {
        self.shared.broker().unsubscribe(SubscriberId(self.id), id);
    }

    pub(crate) fn publish(&self, st: &mut State, ack: Option<PublishId>, topic: Text, payload: Bytes) {
        let report = self.shared.publish(|b| b.publish(&topic, &payload));
        if let Some(id) = ack {
            let _ = st.conn.ack_publish(id, Ok(report.queued));
        }
    }

    /// Publishes from a handler (no connection state is locked here).
    pub(crate) fn publish_local(&self, topic: &str, payload: Bytes) -> PublishReport {
        self.shared.publish(|b| b.publish_str(topic, &payload))
    }

    /// Moves deliveries from the broker into the connection while it has
    /// room. Returns whether anything moved.
    pub(crate) fn pump(&self, st: &mut State) -> bool {
        if self.flags.slow.swap(false, Ordering::AcqRel) && !st.conn.is_closed() {
            let now = self.shared.backend.runtime.now();
            st.conn.abort(Code::SLOW_CONSUMER, "subscriber too slow; disconnected by its subscription policy", now);
            return true;
        }
        if !self.flags.ready.load(Ordering::Acquire) || st.conn.is_closed() {
            return false;
        }
        let limit = self.shared.config.max_outbound_buffered / 2;
        // The flag is cleared under the broker's lock: a publish that
        // makes the queue non-empty again sets it after us, never before.
        let mut broker = self.shared.broker();
        let pumped = broker.deliver_into(SubscriberId(self.id), &mut st.conn, limit);
        if pumped.drained {
            self.flags.ready.store(false, Ordering::Release);
        }
        drop(broker);
        pumped.moved > 0
    }

    /// The driver ended: forget the session.
    pub(crate) fn finished(&self, inner: &Arc<Inner>, err: Option<ConnectionError>) {
        let shared = &self.shared;
        shared.broker().remove_subscriber(SubscriberId(self.id));
        shared.gate().forget(self.id);
        let entry = shared.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if entry.is_some() && self.flags.per_user.load(Ordering::Relaxed) {
            shared.per_user().release(inner.peer().uid);
        }
        // The client's name as the core copied it at the handshake (the
        // HELLO's own text is a slice of the receive block, not kept).
        let name = inner.lock().peer_name.clone();
        if let (Some(hook), Some(client_name), Some(_)) = (&shared.on_disconnect, name, entry) {
            let info = SessionInfo { connection_id: self.id, client_name, peer: inner.peer() };
            let err = err.unwrap_or(ConnectionError::LocallyClosed { code: Code::OK, message: String::new() });
            hook(&info, &err);
        }
        if shared.count() == 0 {
            let ws = std::mem::take(&mut *shared.idle_wakers.lock().unwrap_or_else(|e| e.into_inner()));
            for w in ws {
                w.wake();
            }
        }
    }
}

impl ServerShared {
    fn broker(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.broker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn per_user(&self) -> std::sync::MutexGuard<'_, PerUserLimit> {
        self.per_user.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, HandshakeGate<u64>> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Publishes (`publish` is one of the broker's publish calls) and wakes
    /// the sessions the broker has work for.
    fn publish(&self, publish: impl FnOnce(&mut Broker) -> PublishReport) -> PublishReport {
        let (report, events) = {
            let mut b = self.broker();
            let report = publish(&mut b);
            let mut events = Vec::new();
            while let Some(e) = b.poll_event() {
                events.push(e);
            }
            (report, events)
        };
        if !events.is_empty() {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            for e in events {
                let (sid, slow) = match e {
                    BrokerEvent::Ready(s) => (s, false),
                    BrokerEvent::Disconnect { subscriber, .. } => (subscriber, true),
                };
                if let Some(inner) = sessions.get(&sid.0)
                    && let Some(link) = &inner.server
                {
                    if slow {
                        link.flags.slow.store(true, Ordering::Release);
                    } else {
                        link.flags.ready.store(true, Ordering::Release);
                    }
                    inner.driver.wake();
                }
            }
        }
        report
    }

    /// Judges a freshly accepted peer by the peer policy, before any frame
    /// is read: a refused one is closed at once (dropped), counted and
    /// logged at debug level with its credentials only.
    /// Returns whether a pending handshake was evicted to make room.
    fn admit(self: &Arc<Self>, stream: Box<dyn ByteStream>, peer: PeerIdentity) -> bool {
        if let Err(e) = self.peer_policy.check(&self.endpoint, &peer) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(uid = ?peer.uid, gid = ?peer.gid, pid = ?peer.pid, sid = ?peer.sid, error = %e, "wharf: peer refused at accept");
            drop(stream);
            return false;
        }
        self.start_session(stream, peer)
    }

    fn start_session(self: &Arc<Self>, stream: Box<dyn ByteStream>, peer: PeerIdentity) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.backend.runtime.now();
        let conn = match Connection::server(self.config.clone(), now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "wharf: invalid server config");
                return false;
            }
        };
        let link = ServerLink { shared: self.clone(), id, flags: Flags::default() };
        let inner = Inner::new(
            conn,
            self.backend.runtime.clone(),
            self.router.clone(),
            peer,
            self.codec,
            Some(link),
            self.sub_queue,
        );
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id, inner.clone());
        tracing::debug!(connection_id = id, ?peer, "wharf: accepted a connection");
        // Counted as owing its HELLO before its driver exists: on a
        // multi-threaded executor the driver may read the HELLO (and call
        // `hello_received`) before the spawn returns, and a connection
        // entered after that would stay "pending" for good, to be evicted
        // later although it is established.
        let evict = self.gate().accepted(id);
        let evicted = match evict {
            Some(old) => {
                self.evict_handshake(old);
                true
            }
            None => false,
        };
        self.backend.runtime.spawn(Box::pin(Driver::new(inner, stream)));
        evicted
    }

    /// Closes a connection that still owes its HELLO because too many do
    /// (see [`ServerBuilder::max_pending_handshakes`]).
    fn evict_handshake(&self, id: u64) {
        let inner = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        let Some(inner) = inner else { return };
        tracing::debug!(connection_id = id, peer = ?inner.peer(), "wharf: too many pending handshakes; closing the oldest");
        let now = self.backend.runtime.now();
        inner.lock().conn.abort(Code::HANDSHAKE_TIMEOUT, "too many pending handshakes; the oldest is closed", now);
        inner.driver.wake();
    }

    fn snapshot(&self) -> Vec<Arc<Inner>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// A running server. Cheap to clone. Dropping the handles does not stop
/// it: call [`shutdown`](Self::shutdown) or [`abort`](Self::abort).
#[derive(Clone)]
pub struct Server {
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("endpoint", &self.shared.endpoint).finish_non_exhaustive()
    }
}

impl Server {
    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Publishes a typed message to every matching subscription.
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<PublishReport, Error> {
        let payload = self.shared.codec.encode(value)?;
        Ok(self.publish_raw(topic, payload))
    }

    /// Publishes raw bytes to every matching subscription. Never waits for
    /// a subscriber: slow ones lose old messages or are disconnected,
    /// following their subscription's policy.
    pub fn publish_raw(&self, topic: &str, payload: Bytes) -> PublishReport {
        self.shared.publish(|b| b.publish_str(topic, &payload))
    }

    /// The broker's counters.
    pub fn broker_stats(&self) -> BrokerStats {
        self.shared.broker().stats().clone()
    }

    /// Live connections (including those still in their handshake).
    pub fn connection_count(&self) -> usize {
        self.shared.count()
    }

    /// Connections closed at accept because their peer did not pass the
    /// [peer policy](ServerBuilder::peer_policy), since the server started.
    pub fn refused_peers(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections closed before their HELLO arrived because
    /// [`max_pending_handshakes`](ServerBuilder::max_pending_handshakes)
    /// others were waiting too, since the server started.
    pub fn evicted_handshakes(&self) -> u64 {
        self.shared.gate().evicted()
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared.snapshot().into_iter().map(|inner| Session { inner }).collect()
    }

    /// One session by connection id.
    pub fn session(&self, connection_id: u64) -> Option<Session> {
        let s = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get(&connection_id).map(|inner| Session { inner: inner.clone() })
    }

    fn stop_accepting(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(w) = self.shared.accept_waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// Graceful shutdown: stops accepting (the socket file is removed),
    /// sends every client GOODBYE `SHUTTING_DOWN` with `reason` and the
    /// reconnect hint, lets calls in flight finish (each connection gives up
    /// after the config's `close_timeout`), and returns once every
    /// connection has ended.
    pub async fn shutdown(&self, reason: &str, reconnect_after: Option<Duration>) {
        *self.shared.shutdown_hint.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((reason.to_string(), reconnect_after));
        self.stop_accepting();
        let now = self.shared.backend.runtime.now();
        for inner in self.shared.snapshot() {
            {
                let mut st = inner.lock();
                st.conn.close(Code::SHUTTING_DOWN, reason, reconnect_after, now);
            }
            inner.driver.wake();
        }
        self.idle().await;
    }

    /// Ends every connection at once and stops accepting.
    pub async fn abort(&self) {
        self.stop_accepting();
        let now = self.shared.backend.runtime.now();
        for inner in self.shared.snapshot() {
            {
                let mut st = inner.lock();
                st.conn.abort(Code::SHUTTING_DOWN, "server aborted", now);
            }
            inner.driver.wake();
        }
        self.idle().await;
    }

    /// Waits until no connection is left and the listener is closed.
    async fn idle(&self) {
        let shared = self.shared.clone();
        std::future::poll_fn(move |cx| {
            let mut ws = shared.idle_wakers.lock().unwrap_or_else(|e| e.into_inner());
            if shared.count() == 0 && !shared.accepting.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            ws.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Configures and starts a [`Server`].
pub struct ServerBuilder {
    backend: Backend,
    config: Config,
    broker: BrokerConfig,
    router: Router,
    codec: Codec,
    sub_queue: usize,
    auth: Option<AuthHook>,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    max_connections: usize,
    max_pending_handshakes: usize,
    max_per_user: usize,
    bind: BindOptions,
    peer_policy: PeerPolicy,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// A builder on this runtime backend.
    pub fn new(backend: Backend) -> Self {
        ServerBuilder {
            backend,
            config: Config::default(),
            broker: BrokerConfig::default(),
            router: Router::new(),
            codec: Codec::default(),
            sub_queue: 1024,
            auth: None,
            on_connect: None,
            on_disconnect: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_per_user: usize::MAX,
            bind: BindOptions::default(),
            peer_policy: PeerPolicy::default(),
        }
    }

    /// Connection limits and timeouts (see [`Config`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Pub/sub queue limits.
    pub fn broker_config(mut self, config: BrokerConfig) -> Self {
        self.broker = config;
        self
    }

    /// The handlers.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// The codec of typed [`Server::publish`] and of calls from the server.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Most connections at once (further clients are rejected with
    /// `TOO_MANY_CONNECTIONS`). Default 16,384
    /// ([`DEFAULT_MAX_CONNECTIONS`]): an idle connection costs the server
    /// a few KiB, so the limit mostly guards file descriptors; the process's
    /// open-file limit (`RLIMIT_NOFILE`, often 1024 by default) usually binds
    /// first, and a failed accept then backs off instead of spinning.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most connections that were accepted but have not sent their HELLO
    /// yet (default 64, [`DEFAULT_MAX_PENDING_HANDSHAKES`]). When one more
    /// connects, the **oldest** of them is closed (REJECT
    /// `HANDSHAKE_TIMEOUT` if its preamble arrived, else a plain close) and
    /// counted in [`Server::evicted_handshakes`]: a flood of stalled or
    /// slow-loris peers holds at most this many descriptors, and a client
    /// that sends its HELLO promptly is served in the middle of one.
    /// Connections past their HELLO count against
    /// [`max_connections`](Self::max_connections) only.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n;
        self
    }

    /// Most connections one local user (one peer uid of a Unix socket)
    /// may hold at once; one more is rejected in the handshake with
    /// `TOO_MANY_CONNECTIONS` and a retry hint. Default: no per-user bound
    /// (the default [peer policy](Self::peer_policy) admits only the
    /// server's own user and root, so `max_connections` already is one).
    /// Set it when the policy lets other users in, so that one of them
    /// cannot take every slot. Peers without a uid (TCP, named pipes) are
    /// not counted.
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.max_per_user = n;
        self
    }

    /// Socket file mode, stale-file reclaim, TCP exposure.
    pub fn bind_options(mut self, options: BindOptions) -> Self {
        self.bind = options;
        self
    }

    /// Which local users may connect, judged on the kernel's identity of
    /// the peer at accept time, before any frame is read: a refused peer
    /// is closed at once, without a handshake (counted in
    /// [`Server::refused_peers`]). Default [`PeerPolicy::default`]: the
    /// server's own uid or root on a Unix socket; on a named pipe, the
    /// server's own user SID or LocalSystem (a client whose SID cannot be
    /// read is refused). Independent of the socket file's mode or the
    /// pipe's security descriptor ([`bind_options`](Self::bind_options)):
    /// another user needs both. Not applied to TCP (no uid).
    pub fn peer_policy(mut self, policy: PeerPolicy) -> Self {
        self.peer_policy = policy;
        self
    }

    /// Decides, for each client, whether it may connect: sees its auth
    /// payload and its kernel-reported identity.
    pub fn auth<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AuthRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), AuthReject>> + Send + 'static,
    {
        self.auth = Some(Arc::new(move |r| Box::pin(f(r))));
        self
    }

    /// Called when a client completes its handshake.
    pub fn on_connect(mut self, f: impl Fn(&SessionInfo) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// Called when a connected client's connection ends, with the reason.
    pub fn on_disconnect(mut self, f: impl Fn(&SessionInfo, &ConnectionError) + Send + Sync + 'static) -> Self {
        self.on_disconnect = Some(Arc::new(f));
        self
    }

    /// Binds `endpoint` and starts serving. TCP listens on loopback only
    /// unless [`BindOptions::tcp`]`.allow_remote` is set, and then only
    /// with an [auth hook](Self::auth) (checking a token): without one a
    /// non-loopback address is refused before anything is bound.
    pub async fn bind(self, endpoint: impl IntoEndpoint) -> Result<Server, Error> {
        let endpoint = endpoint.into_endpoint()?;
        if self.bind.tcp.allow_remote {
            // Before the listener exists: no auth hook, no remote listener.
            wharf_transport::require_auth_for_remote(&endpoint, self.auth.is_some())?;
        }
        let listener = self.backend.network.bind(&endpoint, &self.bind)?;
        self.serve(endpoint, listener)
    }

    /// Serves connections from an existing listener. A non-loopback TCP
    /// `endpoint` is refused without an [auth hook](Self::auth)
    /// ([`TransportError::RemoteWithoutAuth`](wharf_transport::TransportError::RemoteWithoutAuth)).
    pub fn serve(self, endpoint: Endpoint, listener: Box<dyn ByteListener>) -> Result<Server, Error> {
        self.config.validate()?;
        wharf_transport::require_auth_for_remote(&endpoint, self.auth.is_some())?;
        let broker = Broker::new(self.broker)?;
        let shared = Arc::new(ServerShared {
            backend: self.backend,
            endpoint,
            config: Arc::new(self.config),
            router: Arc::new(self.router),
            codec: self.codec,
            sub_queue: self.sub_queue,
            broker: Mutex::new(broker),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            auth: self.auth,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            max_connections: self.max_connections,
            gate: Mutex::new(HandshakeGate::new(self.max_pending_handshakes)),
            per_user: Mutex::new(PerUserLimit::new(self.max_per_user)),
            peer_policy: self.peer_policy,
            refused: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            shutdown_hint: Mutex::new(None),
            accept_waker: Mutex::new(None),
            idle_wakers: Mutex::new(Vec::new()),
            accepting: AtomicBool::new(true),
        });
        shared.backend.runtime.spawn(Box::pin(accept_loop(shared.clone(), listener)));
        Ok(Server { shared })
    }
}

/// Lets the executor run other tasks once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if std::mem::replace(&mut yielded, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

async fn accept_loop(shared: Arc<ServerShared>, mut listener: Box<dyn ByteListener>) {
    let mut streak = 0u32;
    loop {
        let next = std::future::poll_fn(|cx| {
            if shared.stopping.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            *shared.accept_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            if shared.stopping.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        match next {
            None => break,
            Some(Ok((stream, peer))) => {
                // A burst of connections (a flood of them) must not keep
                // the sessions' drivers, which close the evicted ones,
                // from running: yield after an eviction and every 32.
                streak += 1;
                if shared.admit(stream, peer) || streak.is_multiple_of(32) {
                    yield_now().await;
                }
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning; every
                // pipe instance in use (max_instances): wait for one to be
                // freed (clients meanwhile find the pipe busy and retry
                // within their deadline).
                let pause = wharf_transport::accept_pause(&shared.endpoint, &e);
                let at = shared.backend.runtime.now() + pause;
                let mut timer = shared.backend.runtime.timer(at);
                std::future::poll_fn(|cx| timer.as_mut().poll_fire(cx)).await;
            }
        }
    }
    drop(listener);
    shared.accepting.store(false, Ordering::Release);
    if shared.count() == 0 {
        let ws = std::mem::take(&mut *shared.idle_wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in ws {
            w.wake();
        }
    }
    tracing::debug!(endpoint = %shared.endpoint, "wharf: stopped accepting");
}
