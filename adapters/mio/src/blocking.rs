//! [`Client`]: a blocking wharf client for scripts and synchronous programs.
//! One `mio::Poll` of its own, no threads, no async runtime.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Poll, Token};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::{
    CallOptions, Code, Config, Connected, Connection, ConnectionError, Event, ReconnectPolicy, SendError,
    SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Text, Timeout,
};
use wharf_transport::{Endpoint, PeerIdentity, PeerPolicy};

use crate::conn::Conn;
use crate::error::Error;
use crate::net::Stream;
use crate::reconnect::ReconnectingClient;

const TOKEN: Token = Token(0);

/// Extra time a blocking wait allows beyond a call's own deadline before it
/// gives up by itself (the core reports the deadline; this is a backstop).
const BACKSTOP: Duration = Duration::from_secs(1);

/// Something the server sent that no call was waiting for, queued until
/// [`Client::next`](Client::next_incoming) takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A message for one of our subscriptions.
    Message {
        /// The subscription it matched.
        subscription: SubscriptionId,
        /// The topic it was published on.
        topic: Text,
        /// The payload.
        payload: Bytes,
    },
    /// Messages for this subscription were lost because we fell behind
    /// (the server's queue, or this client's own queue, overflowed).
    Lagged {
        /// The subscription.
        subscription: SubscriptionId,
        /// How many messages were lost.
        dropped: u64,
    },
    /// A notification from the server.
    Notification {
        /// Method name.
        method: Text,
        /// Payload.
        payload: Bytes,
    },
    /// ([`ReconnectingClient`](crate::ReconnectingClient) only.) The
    /// connection was lost and this subscription has been made again on
    /// connection `generation`: messages published in between are lost
    /// (how many is unknown). Comes before the first message of the new
    /// connection.
    Gap {
        /// The subscription.
        subscription: SubscriptionId,
        /// The connection it now lives on (1 is the first).
        generation: u64,
    },
    /// ([`ReconnectingClient`](crate::ReconnectingClient) only.) The
    /// server of a new connection refused to make this subscription again
    /// (with `code`): it has ended.
    Ended {
        /// The subscription.
        subscription: SubscriptionId,
        /// The server's refusal.
        code: Code,
    },
}

impl Incoming {
    /// Decodes a message's or notification's payload (postcard).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match self {
            Incoming::Message { payload, .. } | Incoming::Notification { payload, .. } => decode(payload),
            Incoming::Lagged { dropped, .. } => Err(Error::Decode {
                what: std::any::type_name::<T>(),
                message: format!("a lag report ({dropped} messages lost) has no payload"),
            }),
            Incoming::Gap { generation, .. } => Err(Error::Decode {
                what: std::any::type_name::<T>(),
                message: format!("a gap notice (subscribed again on connection {generation}) has no payload"),
            }),
            Incoming::Ended { code, .. } => Err(Error::Decode {
                what: std::any::type_name::<T>(),
                message: format!("the end of a subscription (refused: {code}) has no payload"),
            }),
        }
    }
}

/// The server said goodbye: it is shutting down or closing this
/// connection, and may say when to come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goodbye {
    /// Reason code.
    pub code: Code,
    /// Message.
    pub message: String,
    /// When the server suggests reconnecting.
    pub reconnect_after: Option<Duration>,
}

/// How to connect a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    config: Config,
    auth: Bytes,
    connect_timeout: Duration,
    call_timeout: Duration,
    max_queued: usize,
    server_policy: Option<PeerPolicy>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// Defaults: the default [`Config`], no auth payload, 5 s to connect
    /// and complete the handshake, 25 s per call, 1,024 queued messages.
    pub fn new() -> ClientBuilder {
        ClientBuilder {
            config: Config::default(),
            auth: Bytes::new(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(25),
            max_queued: 1024,
            server_policy: None,
        }
    }

    /// Protocol limits and timeouts.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The authentication payload sent in HELLO (opaque to wharf; the
    /// server's auth hook sees it).
    pub fn auth(mut self, auth: impl Into<Bytes>) -> Self {
        self.auth = auth.into();
        self
    }

    /// Time allowed for connecting and the handshake together.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Default deadline of each call (see [`Client::call_with_timeout`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Messages and notifications kept while nobody reads them (while a
    /// call is waiting, say). When full, the oldest message is dropped and
    /// reported as [`Incoming::Lagged`]. Minimum 1.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n.max(1);
        self
    }

    /// Which servers this client trusts, judged on the kernel's identity
    /// of the server process when the connection is made, before anything
    /// is sent. A server that does not pass is left at once with
    /// [`TransportError::ServerRefused`](wharf_transport::TransportError::ServerRefused)
    /// naming the endpoint and the server's pid and SID (or uid).
    ///
    /// Default (no policy set): a **named-pipe** server must run as this
    /// process's own user or as LocalSystem (one whose SID cannot be read
    /// is refused), because any local user can create a pipe name;
    /// **Unix-socket** servers are not judged (the socket's directory says
    /// who could create it); TCP is never judged. See
    /// [`wharf_transport::check_server`].
    pub fn server_policy(mut self, policy: PeerPolicy) -> Self {
        self.server_policy = Some(policy);
        self
    }

    /// Connects to `endpoint` and completes the handshake, within the
    /// connect timeout.
    pub fn connect(self, endpoint: &Endpoint) -> Result<Client, Error> {
        let timeout = self.connect_timeout;
        self.connect_within(endpoint, timeout)
    }

    /// Connects to `endpoint` like [`connect`](Self::connect), then keeps
    /// the client connected: when the connection ends, the returned
    /// [`ReconnectingClient`] connects again with this builder's settings,
    /// waiting between attempts as `policy` says (capped exponential
    /// backoff with jitter, never less than the server's GOODBYE
    /// `reconnect_after` hint). The first connection is not retried: if it
    /// fails, this returns its error, as `connect` does.
    pub fn connect_reconnecting(
        self,
        endpoint: &Endpoint,
        policy: ReconnectPolicy,
    ) -> Result<ReconnectingClient, Error> {
        let first = self.clone().connect(endpoint)?;
        Ok(ReconnectingClient::start(self, endpoint.clone(), policy, first))
    }

    /// The time allowed for connecting and the handshake together.
    pub(crate) fn connect_time(&self) -> Duration {
        self.connect_timeout
    }

    /// The default deadline of each call.
    pub(crate) fn call_time(&self) -> Duration {
        self.call_timeout
    }

    /// How many messages and notifications are kept while nobody reads.
    pub(crate) fn queue_limit(&self) -> usize {
        self.max_queued
    }

    /// Connects and completes the handshake within `timeout`.
    pub(crate) fn connect_within(self, endpoint: &Endpoint, timeout: Duration) -> Result<Client, Error> {
        let start = Instant::now();
        let deadline = start + timeout;
        let (stream, peer) = Stream::connect(endpoint, timeout)?;
        // Before a byte is sent: is this a server we trust?
        wharf_transport::check_server(self.server_policy.as_ref(), endpoint, &peer)?;
        let config = Arc::new(self.config);
        let core = Connection::client(config, self.auth, Instant::now())?;
        let poll = Poll::new().map_err(|e| Error::io("create a mio poll", e))?;
        let mut conn = Conn::new(stream, core, peer);
        conn.register(poll.registry(), TOKEN).map_err(|e| Error::io(format!("register {endpoint}"), e))?;
        let mut client = Client {
            poll,
            events: Events::with_capacity(16),
            conn,
            connected: None,
            endpoint: endpoint.clone(),
            call_timeout: self.call_timeout,
            queue: VecDeque::new(),
            lag: HashMap::new(),
            max_queued: self.max_queued,
            goodbye: None,
            closed: None,
            dropped_notifications: 0,
            sent: false,
        };
        let ev = client.wait_for(Some(deadline), "connect", timeout, |e| matches!(e, Event::Connected(_)))?;
        if let Event::Connected(c) = ev {
            tracing::debug!(endpoint = %endpoint, connection_id = c.connection_id, "wharf: connected");
            client.connected = Some(c);
        }
        Ok(client)
    }
}

/// A blocking wharf client: calls, notifications, subscriptions read as an
/// iterator, publishes and pings, each with a deadline. It owns its
/// connection and a `mio::Poll`; nothing runs between calls, so keepalive
/// and incoming messages are handled whenever a method waits (an idle
/// client that calls nothing for longer than the server's keepalive allows
/// is closed by the server; the next call then reports it).
///
/// ```no_run
/// # fn main() -> Result<(), wharf_mio::Error> {
/// let mut client = wharf_mio::Client::connect(&"calculator".parse()?)?;
/// let sum: i64 = client.call("add", &(2i64, 40i64))?;
/// assert_eq!(sum, 42);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    poll: Poll,
    events: Events,
    conn: Conn,
    connected: Option<Connected>,
    endpoint: Endpoint,
    call_timeout: Duration,
    queue: VecDeque<Incoming>,
    /// Messages this client dropped from its own full queue, per
    /// subscription, reported before the next item.
    lag: HashMap<SubscriptionId, u64>,
    max_queued: usize,
    goodbye: Option<Goodbye>,
    closed: Option<ConnectionError>,
    /// Notifications dropped from the full local queue.
    dropped_notifications: u64,
    /// Whether the last command issued reached the connection (it may have
    /// been processed by the server): a [`ReconnectingClient`] never sends
    /// such an operation again on its own.
    pub(crate) sent: bool,
}

impl Client {
    /// Connects with the defaults of [`ClientBuilder::new`].
    pub fn connect(endpoint: &Endpoint) -> Result<Client, Error> {
        ClientBuilder::new().connect(endpoint)
    }

    /// A builder, to set the config, auth payload and timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// The endpoint this client connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// What the handshake established (connection id, server name, limits).
    pub fn connected(&self) -> Option<&Connected> {
        self.connected.as_ref()
    }

    /// The server's identity as the OS reported it when connecting (on a
    /// named pipe: its pid and token user SID, judged by the
    /// [server policy](ClientBuilder::server_policy)).
    pub fn server_identity(&self) -> &PeerIdentity {
        self.conn.peer()
    }

    /// The server's GOODBYE, if it sent one (shutting down, come back
    /// after the hint).
    pub fn goodbye(&self) -> Option<&Goodbye> {
        self.goodbye.as_ref()
    }

    /// Notifications dropped because the local queue was full of them (a
    /// full queue drops its oldest message first, reported as
    /// [`Incoming::Lagged`]; notifications only when it holds nothing else).
    pub fn dropped_notifications(&self) -> u64 {
        self.dropped_notifications
    }

    /// Why the connection ended, if it has.
    pub fn closed(&self) -> Option<&ConnectionError> {
        self.closed.as_ref().or(self.conn.core_ref().error())
    }

    /// The protocol state, for what this client does not wrap (streams,
    /// metadata, statistics). Commands issued here are written by the next
    /// method that waits, or by [`flush`](Self::flush).
    pub fn core(&mut self) -> &mut Connection {
        self.conn.core()
    }

    /// Calls `method` with a postcard-encoded request and decodes the
    /// response, within the default call timeout.
    pub fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Error> {
        let payload = encode(request)?;
        let bytes = self.call_raw(method, payload)?;
        decode(&bytes)
    }

    /// [`call`](Self::call) with its own deadline.
    pub fn call_with_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let payload = encode(request)?;
        let bytes = self.call_raw_with(method, payload, CallOptions::new().timeout(Timeout::After(timeout)))?;
        decode(&bytes)
    }

    /// Calls `method` with raw payload bytes, within the default timeout.
    pub fn call_raw(&mut self, method: &str, payload: Bytes) -> Result<Bytes, Error> {
        let options = CallOptions::new().timeout(Timeout::After(self.call_timeout));
        self.call_raw_with(method, payload, options)
    }

    /// Calls `method` with raw bytes and options (timeout, metadata, trace
    /// id). Exactly one outcome: the response, the peer's error, a time-out
    /// ([`Error::TimedOut`]) or the connection's end.
    pub fn call_raw_with(&mut self, method: &str, payload: Bytes, mut options: CallOptions) -> Result<Bytes, Error> {
        if options.timeout == Timeout::Default {
            options.timeout = Timeout::After(self.call_timeout);
        }
        let (timeout, deadline) = match options.timeout {
            Timeout::After(d) => (d, Instant::now().checked_add(d + BACKSTOP)),
            _ => (Duration::ZERO, None),
        };
        let method = Text::from(method.to_string());
        let id = self.issue(deadline, timeout, |conn, now| {
            conn.request(method.clone(), payload.clone(), options.clone(), now)
        })?;
        let ev =
            self.wait_for(deadline, "call", timeout, |e| matches!(e, Event::Response { id: r, .. } if *r == id))?;
        match ev {
            Event::Response { result, .. } => result.map_err(Error::from),
            _ => unreachable!("wait_for returns the event it matched"),
        }
    }

    /// Sends a notification (no reply) with a postcard-encoded payload.
    pub fn notify<T: Serialize + ?Sized>(&mut self, method: &str, value: &T) -> Result<(), Error> {
        self.notify_raw(method, encode(value)?)
    }

    /// Sends a notification with raw bytes; returns once it is written to
    /// the socket, waiting at most the call timeout while the socket is
    /// full. A `TimedOut` then does not mean it was not sent: it stays
    /// queued and goes out when the server reads.
    pub fn notify_raw(&mut self, method: &str, payload: Bytes) -> Result<(), Error> {
        let method = Text::from(method.to_string());
        let timeout = self.call_timeout;
        self.issue(Instant::now() + timeout, timeout, |conn, _| {
            conn.notify(method.clone(), payload.clone(), CallOptions::new())
        })?;
        self.flush()
    }

    /// Subscribes to exactly `topic`, dropping the oldest message if this
    /// client falls behind; waits for the server's answer.
    pub fn subscribe(&mut self, topic: &str) -> Result<SubscriptionId, Error> {
        self.subscribe_with(topic, SubscribeOptions { prefix: false, policy: SlowConsumerPolicy::DropOldest })
    }

    /// Subscribes to every topic starting with `prefix`.
    pub fn subscribe_prefix(&mut self, prefix: &str) -> Result<SubscriptionId, Error> {
        self.subscribe_with(prefix, SubscribeOptions { prefix: true, policy: SlowConsumerPolicy::DropOldest })
    }

    /// Subscribes with explicit options (prefix, slow-consumer policy).
    pub fn subscribe_with(&mut self, topic: &str, options: SubscribeOptions) -> Result<SubscriptionId, Error> {
        let topic = Text::from(topic.to_string());
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        let id = self.issue(deadline, timeout, |conn, _| conn.subscribe(topic.clone(), options))?;
        let ev = self.wait_for(
            Some(deadline),
            "subscribe",
            timeout,
            |e| matches!(e, Event::SubscribeResult { id: s, .. } if *s == id),
        )?;
        match ev {
            Event::SubscribeResult { result, .. } => result.map(|()| id).map_err(Error::from),
            _ => unreachable!("wait_for returns the event it matched"),
        }
    }

    /// Ends a subscription and waits for the server to confirm; messages
    /// of it still queued here are discarded.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), Error> {
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        self.issue(deadline, timeout, |conn, _| conn.unsubscribe(id))?;
        let result = if self.conn.core_ref().is_closing() {
            Ok(())
        } else {
            let ev = self.wait_for(
                Some(deadline),
                "unsubscribe",
                timeout,
                |e| matches!(e, Event::UnsubscribeResult { id: s, .. } if *s == id),
            )?;
            match ev {
                Event::UnsubscribeResult { result, .. } => result.map_err(Error::from),
                _ => unreachable!("wait_for returns the event it matched"),
            }
        };
        // Everything the server sent before it confirmed is here now.
        self.absorb_all();
        self.queue.retain(|i| !matches!(i, Incoming::Message { subscription, .. } | Incoming::Lagged { subscription, .. } if *subscription == id));
        self.lag.remove(&id);
        result
    }

    /// Publishes a postcard-encoded value on `topic` and waits for the
    /// server's acknowledgement: the number of subscriptions it reached.
    pub fn publish<T: Serialize + ?Sized>(&mut self, topic: &str, value: &T) -> Result<u32, Error> {
        self.publish_raw(topic, encode(value)?)
    }

    /// Publishes raw bytes and waits for the acknowledgement.
    pub fn publish_raw(&mut self, topic: &str, payload: Bytes) -> Result<u32, Error> {
        let topic = Text::from(topic.to_string());
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        let id = self.issue(deadline, timeout, |conn, _| conn.publish(topic.clone(), payload.clone(), true))?;
        let Some(id) = id else { unreachable!("an acknowledged publish has an id") };
        let ev = self.wait_for(
            Some(deadline),
            "publish",
            timeout,
            |e| matches!(e, Event::PublishResult { id: p, .. } if *p == id),
        )?;
        match ev {
            Event::PublishResult { result, .. } => result.map_err(Error::from),
            _ => unreachable!("wait_for returns the event it matched"),
        }
    }

    /// Publishes without waiting for an acknowledgement; returns once the
    /// frame is written (see [`notify_raw`](Self::notify_raw) for a full
    /// socket).
    pub fn publish_nowait(&mut self, topic: &str, payload: Bytes) -> Result<(), Error> {
        let topic = Text::from(topic.to_string());
        let timeout = self.call_timeout;
        self.issue(Instant::now() + timeout, timeout, |conn, _| conn.publish(topic.clone(), payload.clone(), false))?;
        self.flush()
    }

    /// Measures a round trip with PING/PONG.
    pub fn ping(&mut self) -> Result<Duration, Error> {
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        let id = self.issue(deadline, timeout, |conn, now| conn.ping(now))?;
        let ev =
            self.wait_for(Some(deadline), "ping", timeout, |e| matches!(e, Event::Pong { id: p, .. } if *p == id))?;
        match ev {
            Event::Pong { rtt, .. } => Ok(rtt),
            _ => unreachable!("wait_for returns the event it matched"),
        }
    }

    /// The next message, lag report or notification, waiting at most
    /// `timeout` (`None`: as long as it takes). `Ok(None)`: the time ran
    /// out. An ended connection is an error.
    pub fn next_incoming(&mut self, timeout: Option<Duration>) -> Result<Option<Incoming>, Error> {
        if let Some(item) = self.take_queued() {
            return Ok(Some(item));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.wait_for(deadline, "next message", timeout.unwrap_or_default(), is_incoming) {
            // The matched event is the oldest: it comes before what
            // `wait_for` queued behind it.
            Ok(Event::Message { subscription, topic, payload }) => {
                Ok(Some(Incoming::Message { subscription, topic, payload }))
            }
            Ok(Event::Lagged { subscription, dropped }) => Ok(Some(Incoming::Lagged { subscription, dropped })),
            Ok(Event::Notification(n)) => Ok(Some(Incoming::Notification { method: n.method, payload: n.payload })),
            Ok(other) => {
                self.absorb(other);
                Ok(self.take_queued())
            }
            Err(Error::TimedOut { what: "next message", .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Messages, lag reports and notifications as a blocking iterator; it
    /// ends when the connection does (the reason is in
    /// [`closed`](Self::closed)).
    pub fn incoming(&mut self) -> Messages<'_> {
        Messages { client: self }
    }

    /// Writes what is queued, waiting for the socket while it is full (at
    /// most the call timeout).
    pub fn flush(&mut self) -> Result<(), Error> {
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.conn.drive(Instant::now());
            self.absorb_all();
            if self.conn.core_ref().transmit_len() == 0 {
                return Ok(());
            }
            if let Some(e) = &self.closed {
                return Err(Error::ConnectionLost(e.clone()));
            }
            self.wait_io(Some(deadline), "flush", timeout)?;
        }
    }

    /// Closes gracefully: GOODBYE with `reason`, waits (at most the call
    /// timeout) for calls in flight and the server's answer, then closes
    /// the socket.
    pub fn close(mut self, reason: &str) -> Result<(), Error> {
        self.conn.core().close(Code::OK, reason, None, Instant::now());
        let timeout = self.call_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.conn.drive(Instant::now());
            self.absorb_all();
            if self.conn.is_finished() {
                return Ok(());
            }
            self.wait_io(Some(deadline), "close", timeout)?;
        }
    }

    /// Issues a command, waiting for room while the outbound queue is full.
    fn issue<T>(
        &mut self,
        deadline: impl Into<Option<Instant>>,
        timeout: Duration,
        mut command: impl FnMut(&mut Connection, Instant) -> Result<T, SendError>,
    ) -> Result<T, Error> {
        let deadline = deadline.into();
        self.sent = false;
        loop {
            match command(self.conn.core(), Instant::now()) {
                Err(SendError::Blocked { .. }) => {
                    self.wait_for(deadline, "room to send", timeout, |e| matches!(e, Event::Writable))?;
                }
                Err(SendError::Closed(e)) => {
                    self.absorb_all();
                    return Err(Error::ConnectionLost(e));
                }
                Err(e) => {
                    // Refused (closing, too large, ...): take what explains it.
                    self.absorb_all();
                    return Err(Error::from(e));
                }
                Ok(v) => {
                    self.sent = true;
                    return Ok(v);
                }
            }
        }
    }

    /// Takes what the socket and the timers have for the connection now,
    /// without waiting: an end of stream or a GOODBYE that arrived while
    /// nobody was calling is then reflected in [`closed`](Self::closed) and
    /// [`goodbye`](Self::goodbye).
    pub(crate) fn refresh(&mut self) {
        self.conn.drive(Instant::now());
        self.absorb_all();
        if let Err(e) = self.poll_ready(Some(Duration::ZERO)) {
            // Nothing was taken: the next wait takes it.
            tracing::debug!(endpoint = %self.endpoint, error = %e, "wharf: poll failed");
        }
        self.conn.drive(Instant::now());
        self.absorb_all();
    }

    /// Drives the connection until an event `want` accepts arrives; every
    /// other event is absorbed (queued, answered or recorded).
    fn wait_for(
        &mut self,
        deadline: Option<Instant>,
        what: &'static str,
        after: Duration,
        mut want: impl FnMut(&Event) -> bool,
    ) -> Result<Event, Error> {
        loop {
            self.conn.drive(Instant::now());
            while let Some(ev) = self.conn.poll_event() {
                if want(&ev) {
                    // Events behind it (a GOODBYE, the close, messages) are
                    // taken too, so that the client's state is current when
                    // the method returns; what that made possible (credit, a
                    // resumed read) is written and read now.
                    self.absorb_all();
                    self.conn.drive(Instant::now());
                    self.absorb_all();
                    return Ok(ev);
                }
                self.absorb(ev);
            }
            if let Some(e) = &self.closed {
                return Err(Error::ConnectionLost(e.clone()));
            }
            self.wait_io(deadline, what, after)?;
        }
    }

    /// Sleeps in `mio::Poll::poll` until readiness, the connection's next
    /// timer, or `deadline` (then [`Error::TimedOut`]).
    fn wait_io(&mut self, deadline: Option<Instant>, what: &'static str, after: Duration) -> Result<(), Error> {
        // More to do without waiting: go on, unless the deadline has passed
        // (a server that keeps the socket full must not stretch it).
        if self.conn.has_work() && deadline.is_none_or(|d| d > Instant::now()) {
            return Ok(());
        }
        let now = Instant::now();
        let expired = deadline.is_some_and(|d| d <= now);
        let wake = match (self.conn.deadline(now), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Even when the deadline has passed, collect what mio has to say
        // (readiness is edge-triggered: an event not taken now is lost; the
        // next method reads it).
        let wait = if expired { Some(Duration::ZERO) } else { wake.map(|t| t.saturating_duration_since(now)) };
        match self.poll_ready(wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("poll on {}", self.endpoint), e)),
        }
        if expired {
            return Err(Error::TimedOut { what, after });
        }
        Ok(())
    }

    /// Waits in `mio::Poll::poll` at most `wait` and hands the readiness
    /// it reports to the connection.
    fn poll_ready(&mut self, wait: Option<Duration>) -> io::Result<()> {
        self.poll.poll(&mut self.events, wait)?;
        for event in self.events.iter() {
            self.conn.ready(event);
        }
        Ok(())
    }

    fn absorb_all(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            self.absorb(ev);
        }
    }

    /// Keeps what the application will ask for later; answers what it
    /// cannot (this client serves no methods).
    fn absorb(&mut self, ev: Event) {
        match ev {
            Event::Message { subscription, topic, payload } => {
                self.push(Incoming::Message { subscription, topic, payload })
            }
            Event::Lagged { subscription, dropped } => *self.lag.entry(subscription).or_default() += dropped,
            Event::Notification(n) => self.push(Incoming::Notification { method: n.method, payload: n.payload }),
            Event::Request(call) => {
                let msg = format!("this blocking client serves no methods (asked for {:?})", call.method.as_str());
                let _ = self.conn.core().respond_error(call.id, Code::UNKNOWN_METHOD, &msg, Bytes::new());
            }
            Event::StreamData { id, payload } => {
                // Data of a stream nobody reads through this client: return
                // the credit so the stream is not wedged.
                self.conn.core().stream_consumed(id, payload.len());
            }
            Event::GoodbyeReceived { code, message, reconnect_after } => {
                tracing::debug!(endpoint = %self.endpoint, %code, "wharf: the server said goodbye");
                self.goodbye = Some(Goodbye { code, message: message.to_string(), reconnect_after });
            }
            Event::Closed(e) => {
                tracing::debug!(endpoint = %self.endpoint, error = %e, "wharf: connection closed");
                self.closed = Some(e);
            }
            // Never the event itself: it may carry a payload (X16).
            _ => tracing::trace!("wharf: event not waited for"),
        }
    }

    fn push(&mut self, item: Incoming) {
        if self.queue.len() >= self.max_queued {
            // Drop the oldest message (not a notification if avoidable).
            let at = self.queue.iter().position(|i| matches!(i, Incoming::Message { .. })).unwrap_or(0);
            match self.queue.remove(at) {
                Some(Incoming::Message { subscription, .. }) => *self.lag.entry(subscription).or_default() += 1,
                Some(Incoming::Notification { .. }) => self.dropped_notifications += 1,
                _ => {}
            }
        }
        self.queue.push_back(item);
    }

    pub(crate) fn take_queued(&mut self) -> Option<Incoming> {
        if let Some(&subscription) = self.lag.keys().next() {
            let dropped = self.lag.remove(&subscription).unwrap_or_default();
            return Some(Incoming::Lagged { subscription, dropped });
        }
        self.queue.pop_front()
    }
}

/// The blocking iterator of [`Client::incoming`].
#[derive(Debug)]
pub struct Messages<'a> {
    client: &'a mut Client,
}

impl Iterator for Messages<'_> {
    type Item = Result<Incoming, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.client.next_incoming(None) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(Error::ConnectionLost(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

fn is_incoming(e: &Event) -> bool {
    matches!(e, Event::Message { .. } | Event::Lagged { .. } | Event::Notification(_))
}

/// Encodes with postcard, the wharf default codec.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, Error> {
    postcard::to_allocvec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Encode { what: std::any::type_name::<T>(), message: e.to_string() })
}

/// Decodes with postcard, the wharf default codec.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Decode { what: std::any::type_name::<T>(), message: e.to_string() })
}
