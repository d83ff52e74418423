//! [`ReconnectingClient`]: the blocking [`Client`] connected again when its
//! connection ends.
//!
//! Nothing runs between calls (no thread, no timer): a lost connection is
//! noticed by the next method, which reconnects within its own deadline.
//! The waits between attempts are wharf-core's [`Backoff`] (the same
//! policy, jitter and hint rule as wharf-async's reconnecting client),
//! counted from the moment the loss was noticed; a method called after a
//! wait has passed tries at once.
//!
//! Calls never cross a connection silently: one that reached the
//! connection before it ended fails with [`Error::ConnectionLost`] (its
//! outcome is unknown), unless it was made with
//! [`ReconnectingClient::call_idempotent`], which sends it once more on the
//! next connection. One that never reached it (the connection was already
//! gone, or the server answered `SHUTTING_DOWN`) waits for the next
//! connection within its deadline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::reconnect::{AttemptLog, is_permanent};
use wharf_core::{
    Backoff, CallOptions, Code, ConnectionError, ConnectionState, ReconnectAttempt, ReconnectPolicy, SendError,
    SlowConsumerPolicy, SubscribeOptions, SubscriptionId, Timeout,
};
use wharf_transport::Endpoint;

use crate::blocking::{Client, ClientBuilder, Incoming, decode, encode};
use crate::error::Error;

/// A subscription as the application knows it, across connections.
#[derive(Debug)]
struct Sub {
    topic: String,
    options: SubscribeOptions,
    /// Its id on the current connection, if it is made there.
    current: Option<SubscriptionId>,
    /// The connection it was last made on (0: never).
    generation: u64,
}

/// What a [`ReconnectMonitor`] sees.
#[derive(Debug)]
struct Observed {
    state: ConnectionState,
    history: AttemptLog,
}

#[derive(Debug)]
struct Shared {
    seen: Mutex<Observed>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Observed> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A view of a [`ReconnectingClient`]'s state for other threads (a
/// status display, a test): cheap to clone, `Send` and `Sync`.
#[derive(Clone, Debug)]
pub struct ReconnectMonitor(Arc<Shared>);

impl ReconnectMonitor {
    /// Where the client is now.
    pub fn state(&self) -> ConnectionState {
        self.0.lock().state.clone()
    }

    /// The waits before the most recent reconnection attempts (up to 64),
    /// oldest first, as the policy computed them.
    pub fn attempts(&self) -> Vec<ReconnectAttempt> {
        self.0.lock().history.to_vec()
    }

    /// Waits until the state satisfies `pred` and returns it, or `None`
    /// if `timeout` passes first.
    pub fn wait_state(
        &self,
        mut pred: impl FnMut(&ConnectionState) -> bool,
        timeout: Duration,
    ) -> Option<ConnectionState> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.0.lock();
        loop {
            if pred(&seen.state) {
                return Some(seen.state.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            seen = self.0.changed.wait_timeout(seen, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// The blocking [`Client`], connected again when its connection ends (see
/// [`ClientBuilder::connect_reconnecting`] and [`ReconnectPolicy`]).
///
/// - A method that finds the connection gone reconnects first, waiting as
///   the policy says (capped exponential backoff with jitter, never less
///   than the server's GOODBYE `reconnect_after` hint), within its own
///   deadline ([`Error::TimedOut`]), or fails with
///   [`Error::ReconnectGaveUp`] once the policy's `max_attempts` failed in
///   a row.
/// - A call that reached the connection before it ended is never sent
///   again: it fails with [`Error::ConnectionLost`], whose outcome is
///   unknown. [`call_idempotent`](Self::call_idempotent) marks a call safe
///   to repeat: it is then sent once more on the next connection.
/// - Subscriptions are made again on every new connection, and
///   [`next_incoming`](Self::next_incoming) reports [`Incoming::Gap`] for
///   each before the new connection's messages. Their ids stay the same.
/// - [`state`](Self::state), [`attempts`](Self::attempts) and, from other
///   threads, [`monitor`](Self::monitor) show where it is.
///
/// ```no_run
/// # fn main() -> Result<(), wharf_mio::Error> {
/// use wharf_mio::{Client, ReconnectPolicy};
/// let mut client = Client::builder().connect_reconnecting(&"calculator".parse()?, ReconnectPolicy::new())?;
/// let sum: i64 = client.call("add", &(2i64, 40i64))?; // reconnects first if the server restarted
/// # let _ = sum;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReconnectingClient {
    builder: ClientBuilder,
    endpoint: Endpoint,
    current: Option<Client>,
    generation: u64,
    backoff: Backoff,
    /// Once the connection has ended: the next attempt and when it is due.
    next: Option<(ReconnectAttempt, Instant)>,
    /// Attempts failed since the connection ended.
    failed: u32,
    last_error: Option<Arc<Error>>,
    shared: Arc<Shared>,
    subs: BTreeMap<SubscriptionId, Sub>,
    /// The current connection's subscription ids → ours.
    by_current: HashMap<SubscriptionId, SubscriptionId>,
    next_sub: u64,
    /// Gap notices, and what an ended connection had received and nobody
    /// read yet.
    pending: VecDeque<Incoming>,
    closed: bool,
}

impl ReconnectingClient {
    pub(crate) fn start(
        builder: ClientBuilder,
        endpoint: Endpoint,
        policy: ReconnectPolicy,
        first: Client,
    ) -> ReconnectingClient {
        let shared = Arc::new(Shared {
            seen: Mutex::new(Observed {
                state: ConnectionState::Connected { generation: 1 },
                history: AttemptLog::default(),
            }),
            changed: Condvar::new(),
        });
        ReconnectingClient {
            builder,
            endpoint,
            current: Some(first),
            generation: 1,
            backoff: Backoff::new(policy),
            next: None,
            failed: 0,
            last_error: None,
            shared,
            subs: BTreeMap::new(),
            by_current: HashMap::new(),
            next_sub: 1,
            pending: VecDeque::new(),
            closed: false,
        }
    }

    /// The endpoint it connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Where the client is now. It changes only while a method runs (or
    /// from [`Connected`](ConnectionState::Connected) to
    /// [`Reconnecting`](ConnectionState::Reconnecting) when a method finds
    /// the connection gone).
    pub fn state(&self) -> ConnectionState {
        self.shared.lock().state.clone()
    }

    /// A view of the state for other threads.
    pub fn monitor(&self) -> ReconnectMonitor {
        ReconnectMonitor(self.shared.clone())
    }

    /// The waits before the most recent reconnection attempts (up to 64),
    /// oldest first, as the policy computed them.
    pub fn attempts(&self) -> Vec<ReconnectAttempt> {
        self.shared.lock().history.to_vec()
    }

    /// Why the last reconnection attempt failed, if one did.
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_deref()
    }

    /// The current connection, if there is one (it may have ended without
    /// this client knowing yet): for what this wrapper does not wrap
    /// (streams through [`Client::core`], statistics, the server's
    /// identity). What is done on it directly is not made again on the
    /// next connection.
    pub fn current(&mut self) -> Option<&mut Client> {
        self.current.as_mut()
    }

    fn set_state(&self, state: ConnectionState, attempt: Option<ReconnectAttempt>) {
        let mut seen = self.shared.lock();
        seen.state = state;
        if let Some(a) = attempt {
            seen.history.push(a);
        }
        drop(seen);
        self.shared.changed.notify_all();
    }

    /// Why nothing can be done any more, if so.
    fn stopped(&self) -> Option<Error> {
        if self.closed {
            let closed = ConnectionError::LocallyClosed { code: Code::OK, message: "client closed".into() };
            return Some(Error::ConnectionLost(closed));
        }
        match self.state() {
            ConnectionState::GaveUp { attempts } => Some(Error::ReconnectGaveUp {
                endpoint: self.endpoint.to_string(),
                attempts,
                last: self.last_error.clone(),
            }),
            _ => None,
        }
    }

    /// Schedules attempt `attempt`, its wait counted from `from`.
    fn schedule(&mut self, attempt: u32, hint: Option<Duration>, from: Instant) {
        let record = self.backoff.next(attempt, hint);
        self.next = Some((record, from + record.delay));
        self.set_state(ConnectionState::Reconnecting { attempt, delay: record.delay }, Some(record));
    }

    /// The current connection ended (or is closing): keep what it
    /// received, and schedule the first attempt.
    fn lost(&mut self) {
        let Some(mut old) = self.current.take() else { return };
        let why = old.closed().cloned();
        let hint = why.as_ref().and_then(ConnectionError::reconnect_after);
        let hint = hint.or_else(|| old.goodbye().and_then(|g| g.reconnect_after));
        match &why {
            Some(e) => tracing::debug!(endpoint = %self.endpoint, error = %e, "wharf: connection lost; reconnecting"),
            None => tracing::debug!(endpoint = %self.endpoint, "wharf: the server is going away; reconnecting"),
        }
        while let Some(item) = old.take_queued() {
            if let Some(item) = self.ours(item) {
                self.pending.push_back(item);
            }
        }
        self.bound_pending();
        self.by_current.clear();
        for sub in self.subs.values_mut() {
            sub.current = None;
        }
        self.failed = 0;
        self.schedule(1, hint, Instant::now());
    }

    /// Keeps at most the builder's `max_queued` items waiting here (they
    /// pile up only if the application reads nothing across several
    /// reconnections): the oldest messages go first, reported as lag.
    fn bound_pending(&mut self) {
        let max = self.builder.queue_limit();
        let mut lost: BTreeMap<SubscriptionId, u64> = BTreeMap::new();
        while self.pending.len() > max {
            let Some(at) = self.pending.iter().position(|i| matches!(i, Incoming::Message { .. })) else { break };
            if let Some(Incoming::Message { subscription, .. }) = self.pending.remove(at) {
                *lost.entry(subscription).or_default() += 1;
            }
        }
        for (subscription, dropped) in lost.into_iter().rev() {
            self.pending.push_front(Incoming::Lagged { subscription, dropped });
        }
    }

    /// An item of the current connection with our subscription id (`None`:
    /// a subscription ended meanwhile).
    fn ours(&self, item: Incoming) -> Option<Incoming> {
        Some(match item {
            Incoming::Message { subscription, topic, payload } => {
                Incoming::Message { subscription: *self.by_current.get(&subscription)?, topic, payload }
            }
            Incoming::Lagged { subscription, dropped } => {
                Incoming::Lagged { subscription: *self.by_current.get(&subscription)?, dropped }
            }
            other => other,
        })
    }

    /// A live connection numbered at least `min_generation`, connecting
    /// again first if needed (within `deadline`; `what` and `after` name
    /// the operation in a time-out). Returns its generation.
    fn connection(
        &mut self,
        min_generation: u64,
        deadline: Option<Instant>,
        what: &'static str,
        after: Duration,
    ) -> Result<u64, Error> {
        loop {
            if let Some(e) = self.stopped() {
                return Err(e);
            }
            if let Some(c) = self.current.as_mut() {
                c.refresh();
                // A connection that said goodbye takes nothing new.
                if c.closed().is_none() && c.goodbye().is_none() && self.generation >= min_generation {
                    return Ok(self.generation);
                }
                self.lost();
                continue;
            }
            let Some((record, due)) = self.next else { unreachable!("a lost connection schedules an attempt") };
            let now = Instant::now();
            if due > now {
                let until = deadline.map_or(due, |d| d.min(due));
                std::thread::sleep(until.saturating_duration_since(now));
                if until < due {
                    return Err(Error::TimedOut { what, after });
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Error::TimedOut { what, after });
            }
            let full = self.builder.connect_time();
            let timeout = left.map_or(full, |l| l.min(full));
            match self.builder.clone().connect_within(&self.endpoint, timeout) {
                Ok(client) => self.connected(client),
                // Cut short by the caller's deadline: not the server's
                // fault, not counted; the attempt stays due.
                Err(Error::TimedOut { .. }) if timeout < full => return Err(Error::TimedOut { what, after }),
                Err(Error::Transport(t)) if timeout < full && t.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Error::TimedOut { what, after });
                }
                Err(e) => {
                    let attempt = record.attempt;
                    tracing::debug!(endpoint = %self.endpoint, attempt, error = %e, "wharf: reconnect attempt failed");
                    let hint = match &e {
                        Error::ConnectionLost(c) => c.reconnect_after(),
                        _ => None,
                    };
                    let stop = match &e {
                        Error::ConnectionLost(c) => is_permanent(c),
                        Error::Config(_) => true,
                        _ => false,
                    };
                    self.last_error = Some(Arc::new(e));
                    self.failed += 1;
                    if stop || self.backoff.policy().gives_up_after(self.failed) {
                        self.next = None;
                        self.set_state(ConnectionState::GaveUp { attempts: self.failed }, None);
                    } else {
                        self.schedule(self.failed + 1, hint, Instant::now());
                    }
                }
            }
        }
    }

    /// A new connection: make every subscription again, a gap notice for
    /// each that lived on an earlier one.
    fn connected(&mut self, mut client: Client) {
        self.generation += 1;
        let generation = self.generation;
        self.next = None;
        self.set_state(ConnectionState::Connected { generation }, None);
        tracing::debug!(endpoint = %self.endpoint, generation, "wharf: reconnected");
        let ids: Vec<SubscriptionId> = self.subs.keys().copied().collect();
        for id in ids {
            let sub = &self.subs[&id];
            match client.subscribe_with(&sub.topic, sub.options) {
                Ok(current) => {
                    self.by_current.insert(current, id);
                    let sub = self.subs.get_mut(&id).expect("listed above");
                    let before = std::mem::replace(&mut sub.generation, generation);
                    sub.current = Some(current);
                    if before > 0 {
                        self.pending.push_back(Incoming::Gap { subscription: id, generation });
                        self.bound_pending();
                    }
                }
                // This connection ended too: the next one makes them.
                Err(Error::ConnectionLost(_)) => break,
                Err(e) => {
                    tracing::debug!(endpoint = %self.endpoint, error = %e, "wharf: a subscription was refused on reconnection");
                    self.subs.remove(&id);
                    self.pending.retain(|i| !of(i, id));
                    self.pending.push_back(Incoming::Ended { subscription: id, code: e.code() });
                }
            }
        }
        self.current = Some(client);
    }

    /// Runs `op` on a live connection; again on the next one if it never
    /// reached this one (or the server refused it unprocessed as
    /// `SHUTTING_DOWN`), or, when `repeat` allows, once more if it did.
    fn on_connection<T>(
        &mut self,
        what: &'static str,
        timeout: Option<Duration>,
        repeat: bool,
        mut op: impl FnMut(&mut Client, Option<Duration>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let after = timeout.unwrap_or_default();
        let (mut min_generation, mut repeated) = (0, false);
        loop {
            let generation = self.connection(min_generation, deadline, what, after)?;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let client = self.current.as_mut().expect("connection() leaves a connection");
            client.sent = false;
            let result = op(client, left);
            match result {
                Ok(v) => return Ok(v),
                Err(Error::ConnectionLost(_)) if !client.sent => min_generation = generation + 1,
                Err(Error::Remote { code: Code::SHUTTING_DOWN, .. }) => min_generation = generation + 1,
                Err(Error::ConnectionLost(_)) if repeat && !repeated => {
                    repeated = true;
                    min_generation = generation + 1;
                }
                Err(Error::TimedOut { what, .. }) => return Err(Error::TimedOut { what, after }),
                Err(e) => return Err(e),
            }
        }
    }

    fn call_timeout(&self, options: &CallOptions) -> Option<Duration> {
        match options.timeout {
            Timeout::After(d) => Some(d),
            Timeout::Never => None,
            _ => Some(self.builder.call_time()),
        }
    }

    fn raw_call(&mut self, method: &str, payload: Bytes, options: CallOptions, repeat: bool) -> Result<Bytes, Error> {
        let timeout = self.call_timeout(&options);
        self.on_connection("call", timeout, repeat, |client, left| {
            let mut options = options.clone();
            if let Some(left) = left {
                options.timeout = Timeout::After(left);
            }
            client.call_raw_with(method, payload.clone(), options)
        })
    }

    /// Calls `method` with raw bytes and options (see
    /// [`Client::call_raw_with`]), reconnecting first if needed, within the
    /// call's deadline. Never sent twice: if the connection ends after the
    /// request reached it, this fails with [`Error::ConnectionLost`].
    pub fn call_raw_with(&mut self, method: &str, payload: Bytes, options: CallOptions) -> Result<Bytes, Error> {
        self.raw_call(method, payload, options, false)
    }

    /// [`call_raw_with`](Self::call_raw_with) for a call that is safe to
    /// repeat: if the connection ends after the request reached it, it is
    /// sent once more on the next connection (so the server may run it
    /// twice).
    pub fn call_raw_idempotent(&mut self, method: &str, payload: Bytes, options: CallOptions) -> Result<Bytes, Error> {
        self.raw_call(method, payload, options, true)
    }

    /// Calls `method` with raw bytes within the default call timeout.
    pub fn call_raw(&mut self, method: &str, payload: Bytes) -> Result<Bytes, Error> {
        self.raw_call(method, payload, CallOptions::new(), false)
    }

    /// Calls `method` with a postcard-encoded request and decodes the
    /// response, within the default call timeout; never sent twice.
    pub fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Error> {
        decode(&self.raw_call(method, encode(request)?, CallOptions::new(), false)?)
    }

    /// [`call`](Self::call) with its own deadline (the wait for a
    /// connection included).
    pub fn call_with_timeout<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let options = CallOptions::new().timeout(Timeout::After(timeout));
        decode(&self.raw_call(method, encode(request)?, options, false)?)
    }

    /// Calls `method`, marked idempotent: if the connection ends after the
    /// request reached it, it is sent once more on the next connection.
    pub fn call_idempotent<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &mut self,
        method: &str,
        request: &Req,
        options: CallOptions,
    ) -> Result<Resp, Error> {
        decode(&self.raw_call(method, encode(request)?, options, true)?)
    }

    /// Sends a notification (no reply), connecting again first if needed;
    /// never sent twice.
    pub fn notify<T: Serialize + ?Sized>(&mut self, method: &str, value: &T) -> Result<(), Error> {
        let payload = encode(value)?;
        let timeout = Some(self.builder.call_time());
        self.on_connection("notify", timeout, false, |client, _| client.notify_raw(method, payload.clone()))
    }

    /// Publishes a postcard-encoded value and waits for the
    /// acknowledgement (how many subscriptions it reached), connecting
    /// again first if needed; not sent twice: if the connection ends before
    /// the acknowledgement, this fails with [`Error::ConnectionLost`].
    pub fn publish<T: Serialize + ?Sized>(&mut self, topic: &str, value: &T) -> Result<u32, Error> {
        self.publish_raw(topic, encode(value)?)
    }

    /// Publishes raw bytes (see [`publish`](Self::publish)).
    pub fn publish_raw(&mut self, topic: &str, payload: Bytes) -> Result<u32, Error> {
        let timeout = Some(self.builder.call_time());
        self.on_connection("publish", timeout, false, |client, _| client.publish_raw(topic, payload.clone()))
    }

    /// Subscribes to exactly `topic` (drop-oldest); made again on every
    /// new connection.
    pub fn subscribe(&mut self, topic: &str) -> Result<SubscriptionId, Error> {
        self.subscribe_with(topic, SubscribeOptions { prefix: false, policy: SlowConsumerPolicy::DropOldest })
    }

    /// Subscribes to every topic starting with `prefix`.
    pub fn subscribe_prefix(&mut self, prefix: &str) -> Result<SubscriptionId, Error> {
        self.subscribe_with(prefix, SubscribeOptions { prefix: true, policy: SlowConsumerPolicy::DropOldest })
    }

    /// Subscribes with explicit options, connecting again first if needed,
    /// and waits for the server's answer (within the call timeout). The id
    /// stays the same across connections.
    pub fn subscribe_with(&mut self, topic: &str, options: SubscribeOptions) -> Result<SubscriptionId, Error> {
        let id = SubscriptionId(self.next_sub);
        self.next_sub += 1;
        self.subs.insert(id, Sub { topic: topic.to_string(), options, current: None, generation: 0 });
        let timeout = self.builder.call_time();
        let deadline = Instant::now() + timeout;
        let result = loop {
            let generation = match self.connection(0, Some(deadline), "subscribe", timeout) {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            // A reconnection made it already.
            if self.subs[&id].current.is_some() {
                break Ok(id);
            }
            let client = self.current.as_mut().expect("connection() leaves a connection");
            match client.subscribe_with(topic, options) {
                Ok(current) => {
                    self.by_current.insert(current, id);
                    let sub = self.subs.get_mut(&id).expect("inserted above");
                    (sub.current, sub.generation) = (Some(current), generation);
                    break Ok(id);
                }
                // The next connection makes it.
                Err(Error::ConnectionLost(_)) => {}
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            self.subs.remove(&id);
        }
        result
    }

    /// Ends a subscription (on the server too, if connected); what is
    /// queued here for it is discarded.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), Error> {
        let Some(sub) = self.subs.remove(&id) else { return Err(Error::Send(SendError::UnknownCall { id: id.0 })) };
        self.pending.retain(|i| !of(i, id));
        let (Some(current), Some(client)) = (sub.current, self.current.as_mut()) else { return Ok(()) };
        self.by_current.remove(&current);
        match client.unsubscribe(current) {
            // Gone with the connection.
            Ok(()) | Err(Error::ConnectionLost(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The next message, lag report, gap notice or notification, waiting
    /// at most `timeout` (`None`: as long as it takes), reconnecting
    /// meanwhile if the connection ends. `Ok(None)`: the time ran out.
    pub fn next_incoming(&mut self, timeout: Option<Duration>) -> Result<Option<Incoming>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            match self.connection(0, deadline, "next message", timeout.unwrap_or_default()) {
                Ok(_) => {}
                Err(Error::TimedOut { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let client = self.current.as_mut().expect("connection() leaves a connection");
            match client.next_incoming(left) {
                Ok(Some(item)) => {
                    if let Some(item) = self.ours(item) {
                        return Ok(Some(item));
                    }
                }
                Ok(None) => return Ok(None),
                // Noticed by the next round.
                Err(Error::ConnectionLost(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Messages, lag reports, gap notices and notifications as a blocking
    /// iterator, across reconnections; it ends with the error that stopped
    /// the client (it gave up, or was closed).
    pub fn incoming(&mut self) -> ReconnectingMessages<'_> {
        ReconnectingMessages { client: self, ended: false }
    }

    /// Stops reconnecting and closes the current connection gracefully
    /// (see [`Client::close`]).
    pub fn close(mut self, reason: &str) -> Result<(), Error> {
        self.closed = true;
        self.set_state(ConnectionState::Closed, None);
        match self.current.take() {
            Some(c) if c.closed().is_none() => c.close(reason),
            _ => Ok(()),
        }
    }
}

/// Whether `item` belongs to subscription `id`.
fn of(item: &Incoming, id: SubscriptionId) -> bool {
    matches!(item,
        Incoming::Message { subscription, .. } | Incoming::Lagged { subscription, .. } | Incoming::Gap { subscription, .. }
        if *subscription == id)
}

/// The blocking iterator of [`ReconnectingClient::incoming`].
#[derive(Debug)]
pub struct ReconnectingMessages<'a> {
    client: &'a mut ReconnectingClient,
    ended: bool,
}

impl Iterator for ReconnectingMessages<'_> {
    type Item = Result<Incoming, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        match self.client.next_incoming(None) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.ended = self.client.stopped().is_some();
                Some(Err(e))
            }
        }
    }
}
