//! [`ReconnectingClient`]: a client that connects again when its
//! connection ends, written once over [`Backend`](crate::Backend).
//!
//! One supervisor task per client (spawned on the client's runtime) owns
//! the reconnection loop: it waits for the current [`Session`] to end, then
//! sleeps the policy's next delay (capped exponential backoff with jitter,
//! never less than the server's GOODBYE `reconnect_after` hint) and tries
//! again, until it connects, the policy gives up, or the handle is closed.
//! On each new connection it subscribes every live [`ReconnectingSubscription`]
//! again before their streams report the [`ReconnectEvent::Gap`].
//!
//! Calls never cross a connection silently: one that was sent on a
//! connection that then ended fails with [`Error::ConnectionLost`] (its
//! outcome is unknown), unless the caller made it with
//! [`ReconnectingClient::call_idempotent`], which sends it once more on the
//! next connection. A call that was *not* sent (the connection was down, or
//! the server refused it with `SHUTTING_DOWN`) waits for the next
//! connection within its own deadline.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::reconnect::{AttemptLog, is_permanent};
use wharf_core::{
    Backoff, CallKind, CallOptions, Code, ConnectionError, ConnectionState, ReconnectAttempt, ReconnectPolicy,
    SubscribeOptions, Text, Timeout,
};
use wharf_transport::Endpoint;

use crate::api::RawItem;
use crate::api::{Session, Subscription};
use crate::client::ConnectParts;
use crate::codec::Codec;
use crate::error::Error;
use crate::runtime::{Runtime, Timer};

/// An item of a [`ReconnectingSubscription`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectEvent<T> {
    /// A published message.
    Message {
        /// The topic it was published on.
        topic: Text,
        /// The decoded value.
        value: T,
    },
    /// This many messages were lost because this subscriber fell behind.
    Lagged(u64),
    /// The connection was lost and the subscription has been made again on
    /// connection `generation`: messages published in between are lost (how
    /// many is unknown). Comes before the first message of the new
    /// connection.
    Gap {
        /// The connection the subscription now lives on.
        generation: u64,
    },
}

struct SubEntry {
    topic: String,
    options: SubscribeOptions,
    /// The newest subscription made for it, and on which connection.
    latest: Option<(u64, Subscription<()>)>,
    /// Set when it cannot be made again (refused by the new server).
    failed: Option<Error>,
    waker: Option<Waker>,
}

struct St {
    session: Option<(u64, Session)>,
    generation: u64,
    state: ConnectionState,
    history: AttemptLog,
    last_error: Option<Error>,
    subs: std::collections::HashMap<u64, SubEntry>,
    next_sub: u64,
    waiters: Vec<Waker>,
    closing: bool,
    supervisor: Option<Waker>,
}

struct Shared {
    parts: ConnectParts,
    endpoint: Endpoint,
    state: Mutex<St>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.parts.backend.runtime
    }

    /// Sets the state and wakes everyone waiting on it.
    fn set_state(&self, st: &mut St, state: ConnectionState) -> Vec<Waker> {
        st.state = state;
        let mut wakers = std::mem::take(&mut st.waiters);
        wakers.extend(st.subs.values_mut().filter_map(|s| s.waker.take()));
        wakers
    }

    fn gave_up_error(st: &St) -> Option<Error> {
        match &st.state {
            ConnectionState::GaveUp { attempts } => {
                Some(Error::ReconnectGaveUp { attempts: *attempts, last: st.last_error.clone().map(Box::new) })
            }
            ConnectionState::Closed => Some(closed_error()),
            _ if st.closing => Some(closed_error()),
            _ => None,
        }
    }
}

fn closed_error() -> Error {
    Error::ConnectionLost(ConnectionError::LocallyClosed { code: Code::OK, message: "client closed".into() })
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// Closes the client when the last handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.0.lock();
            st.closing = true;
            st.supervisor.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A client that connects again when its connection ends (see
/// [`ClientBuilder::connect_reconnecting`](crate::ClientBuilder::connect_reconnecting)
/// and [`ReconnectPolicy`]).
///
/// - Calls made while disconnected wait for the next connection within
///   their own deadline ([`Error::TimedOut`]), or fail with
///   [`Error::ReconnectGaveUp`] when the policy gives up.
/// - A call sent on a connection that then ended is never sent again
///   silently: it fails with [`Error::ConnectionLost`], whose outcome is
///   unknown. [`call_idempotent`](Self::call_idempotent) marks a call safe
///   to repeat: it is then sent once more on the next connection.
/// - Subscriptions ([`subscribe`](Self::subscribe)) are made again on every
///   new connection; their stream reports [`ReconnectEvent::Gap`] first.
/// - [`state`](Self::state) and [`wait_state`](Self::wait_state) observe the
///   connection; [`close`](Self::close) (or dropping every clone) stops
///   reconnecting and closes the connection.
///
/// Streaming calls are not wrapped: take the current [`Session`] with
/// [`session`](Self::session) and make them on it.
#[derive(Clone)]
pub struct ReconnectingClient {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingClient")
            .field("endpoint", &self.shared.endpoint)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl ReconnectingClient {
    pub(crate) fn start(
        parts: ConnectParts,
        endpoint: Endpoint,
        policy: ReconnectPolicy,
        first: Session,
    ) -> ReconnectingClient {
        let shared = Arc::new(Shared {
            parts,
            endpoint,
            state: Mutex::new(St {
                session: Some((1, first.clone())),
                generation: 1,
                state: ConnectionState::Connected { generation: 1 },
                history: AttemptLog::default(),
                last_error: None,
                subs: Default::default(),
                next_sub: 0,
                waiters: Vec::new(),
                closing: false,
                supervisor: None,
            }),
        });
        let runtime = shared.runtime().clone();
        runtime.spawn(Box::pin(supervise(shared.clone(), Backoff::new(policy), first)));
        ReconnectingClient { _owner: Arc::new(Owner(shared.clone())), shared }
    }

    /// The endpoint it connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// Where the client is now.
    pub fn state(&self) -> ConnectionState {
        self.shared.lock().state.clone()
    }

    /// Waits until the state satisfies `pred` and returns it.
    pub async fn wait_state(&self, mut pred: impl FnMut(&ConnectionState) -> bool) -> ConnectionState {
        std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            if pred(&st.state) {
                return Poll::Ready(st.state.clone());
            }
            if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                st.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The waits before the most recent reconnection attempts (up to 64),
    /// oldest first, as the policy computed them.
    pub fn attempts(&self) -> Vec<ReconnectAttempt> {
        self.shared.lock().history.to_vec()
    }

    /// Why the last reconnection attempt failed, if one did.
    pub fn last_error(&self) -> Option<Error> {
        self.shared.lock().last_error.clone()
    }

    /// The current connection, if connected.
    pub fn session(&self) -> Option<Session> {
        let st = self.shared.lock();
        st.session.as_ref().filter(|(_, s)| !s.is_closed()).map(|(_, s)| s.clone())
    }

    /// The codec typed calls use.
    pub fn codec(&self) -> Codec {
        self.shared.parts.codec
    }

    /// Waits for a live connection numbered at least `min_generation`,
    /// until `deadline`.
    async fn connected(&self, min_generation: u64, deadline: Option<Instant>) -> Result<(u64, Session), Error> {
        let runtime = self.shared.runtime().clone();
        let started = runtime.now();
        let mut timer: Option<Pin<Box<dyn Timer>>> = deadline.map(|d| runtime.timer(d));
        std::future::poll_fn(|cx| {
            {
                let mut st = self.shared.lock();
                if let Some(e) = Shared::gave_up_error(&st) {
                    return Poll::Ready(Err(e));
                }
                if let Some((g, s)) = &st.session
                    && *g >= min_generation
                    && !s.is_closed()
                {
                    return Poll::Ready(Ok((*g, s.clone())));
                }
                if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    st.waiters.push(cx.waker().clone());
                }
            }
            if let Some(t) = timer.as_mut()
                && t.as_mut().poll_fire(cx).is_ready()
            {
                let waited = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(started));
                return Poll::Ready(Err(Error::TimedOut(waited)));
            }
            Poll::Pending
        })
        .await
    }

    fn deadline(&self, timeout: &Timeout) -> Option<Instant> {
        let limit = match timeout {
            Timeout::Default => self.shared.parts.config.request_timeout,
            Timeout::Never => None,
            Timeout::After(d) => Some(*d),
        };
        limit.map(|d| self.shared.runtime().now() + d)
    }

    async fn call_inner(
        &self,
        method: &str,
        payload: Bytes,
        opts: CallOptions,
        idempotent: bool,
    ) -> Result<Bytes, Error> {
        let deadline = self.deadline(&opts.timeout);
        let mut min_generation = 0;
        let mut resent = false;
        loop {
            let (generation, session) = self.connected(min_generation, deadline).await?;
            let mut opts = opts.clone();
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(self.shared.runtime().now());
                opts.timeout = Timeout::After(left);
            }
            match session.call_raw_tracked(method, payload.clone(), opts).await {
                Ok(v) => return Ok(v),
                // Never sent: the connection had ended under us.
                Err((Error::ConnectionLost(_), false)) => min_generation = generation + 1,
                // Refused unprocessed because the server is going away.
                Err((Error::Remote { code: Code::SHUTTING_DOWN, .. }, _)) => min_generation = generation + 1,
                // Sent, then the connection ended: the outcome is unknown.
                Err((Error::ConnectionLost(_), true)) if idempotent && !resent => {
                    resent = true;
                    min_generation = generation + 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Calls `method` with raw bytes (see [`Session::call_raw`]), waiting
    /// for a connection within the call's deadline. Never sent twice: if
    /// the connection ends after the request went out, this fails with
    /// [`Error::ConnectionLost`].
    pub async fn call_raw(&self, method: &str, payload: Bytes, opts: CallOptions) -> Result<Bytes, Error> {
        self.call_inner(method, payload, opts, false).await
    }

    /// [`call_raw`](Self::call_raw) for a call that is safe to repeat: if
    /// the connection ends after the request went out, it is sent once more
    /// on the next connection (so the handler may run twice).
    pub async fn call_raw_idempotent(&self, method: &str, payload: Bytes, opts: CallOptions) -> Result<Bytes, Error> {
        self.call_inner(method, payload, opts, true).await
    }

    /// Calls `method` with a typed request and the default options.
    pub async fn call<Req, Resp>(&self, method: &str, request: &Req) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with(method, request, CallOptions::new()).await
    }

    /// Calls `method` with a typed request and options; never sent twice
    /// (see [`call_raw`](Self::call_raw)).
    pub async fn call_with<Req, Resp>(&self, method: &str, request: &Req, opts: CallOptions) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.typed(method, request, opts, false).await
    }

    /// Calls `method`, marked idempotent: if the connection ends after the
    /// request went out, it is sent once more on the next connection (see
    /// [`call_raw_idempotent`](Self::call_raw_idempotent)).
    pub async fn call_idempotent<Req, Resp>(
        &self,
        method: &str,
        request: &Req,
        opts: CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.typed(method, request, opts, true).await
    }

    async fn typed<Req, Resp>(&self, method: &str, request: &Req, opts: CallOptions, idem: bool) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let codec = self.shared.parts.codec;
        let mut opts = opts;
        opts.kind = CallKind::Unary;
        codec.tag(&mut opts.metadata);
        let bytes = self.call_inner(method, codec.encode(request)?, opts, idem).await?;
        codec.decode(&bytes)
    }

    /// Publishes a typed message, waiting for a connection first (no
    /// deadline but the policy's). Not sent twice: if the connection ends
    /// before the acknowledgement, this fails with [`Error::ConnectionLost`].
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<u32, Error> {
        let payload = self.shared.parts.codec.encode(value)?;
        self.publish_raw(topic, payload).await
    }

    /// Publishes raw bytes (see [`publish`](Self::publish)).
    pub async fn publish_raw(&self, topic: &str, payload: Bytes) -> Result<u32, Error> {
        let (_, session) = self.connected(0, None).await?;
        session.publish_raw(topic, payload).await
    }

    /// Subscribes to `topic` exactly; made again on every new connection.
    pub async fn subscribe<T: DeserializeOwned>(&self, topic: &str) -> Result<ReconnectingSubscription<T>, Error> {
        self.subscribe_with(topic, SubscribeOptions::default()).await
    }

    /// Subscribes to every topic starting with `prefix`.
    pub async fn subscribe_prefix<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<ReconnectingSubscription<T>, Error> {
        self.subscribe_with(prefix, SubscribeOptions { prefix: true, ..Default::default() }).await
    }

    /// Subscribes with explicit options. Waits for a connection first (no
    /// deadline but the policy's), then for the server's confirmation.
    pub async fn subscribe_with<T: DeserializeOwned>(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<ReconnectingSubscription<T>, Error> {
        // Registering and reading the connection in one lock: the
        // supervisor subscribes every entry registered before it publishes
        // a new connection, so an entry is subscribed by exactly one side
        // per connection.
        let (id, now) = {
            let mut st = self.shared.lock();
            if let Some(e) = Shared::gave_up_error(&st) {
                return Err(e);
            }
            let id = st.next_sub;
            st.next_sub += 1;
            st.subs.insert(id, SubEntry { topic: topic.to_string(), options, latest: None, failed: None, waker: None });
            (id, st.session.clone().filter(|(_, s)| !s.is_closed()))
        };
        let mut sub = ReconnectingSubscription {
            shared: self.shared.clone(),
            id,
            current: None,
            generation: 0,
            codec: self.shared.parts.codec,
            ended: false,
            _t: PhantomData,
        };
        if let Some((generation, session)) = now {
            match session.subscribe_with::<()>(topic, options).await {
                Ok(s) => {
                    let mut st = self.shared.lock();
                    if let Some(e) = st.subs.get_mut(&id)
                        && e.latest.as_ref().is_none_or(|(g, _)| *g < generation)
                    {
                        e.latest = Some((generation, s));
                    }
                }
                Err(Error::ConnectionLost(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Wait for the first subscription (ours, or the supervisor's on the
        // next connection if ours was lost).
        std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            let stop = Shared::gave_up_error(&st);
            let Some(e) = st.subs.get_mut(&id) else { return Poll::Ready(Err(closed_error())) };
            if let Some(err) = e.failed.clone() {
                return Poll::Ready(Err(err));
            }
            if let Some((g, s)) = e.latest.take() {
                sub.generation = g;
                sub.current = Some(s);
                return Poll::Ready(Ok(()));
            }
            if let Some(err) = stop {
                return Poll::Ready(Err(err));
            }
            e.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(sub)
    }

    /// Stops reconnecting and closes the current connection gracefully
    /// (calls in flight finish); returns once the supervisor has stopped.
    /// Waiting calls then fail with [`Error::ConnectionLost`].
    pub async fn close(&self) {
        let waker = {
            let mut st = self.shared.lock();
            st.closing = true;
            st.supervisor.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.wait_state(|s| *s == ConnectionState::Closed || matches!(s, ConnectionState::GaveUp { .. })).await;
    }
}

/// Messages for one topic across reconnections, as a [`Stream`] of
/// [`ReconnectEvent`]s. After a reconnection it yields
/// [`ReconnectEvent::Gap`] once the subscription has been made again on the
/// new connection, then that connection's messages. It ends with an error
/// (then `None`) when the client gives up or is closed, or when the new
/// server refuses the subscription. Dropping it unsubscribes.
pub struct ReconnectingSubscription<T> {
    shared: Arc<Shared>,
    id: u64,
    current: Option<Subscription<()>>,
    generation: u64,
    codec: Codec,
    ended: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ReconnectingSubscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingSubscription")
            .field("generation", &self.generation)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<T> ReconnectingSubscription<T> {
    /// The connection the subscription currently lives on.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn end(&mut self, e: Error) -> Poll<Option<Result<ReconnectEvent<T>, Error>>> {
        self.ended = true;
        self.current = None;
        self.shared.lock().subs.remove(&self.id);
        Poll::Ready(Some(Err(e)))
    }
}

impl<T: DeserializeOwned> ReconnectingSubscription<T> {
    /// The next event, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<ReconnectEvent<T>, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<T: DeserializeOwned> Stream for ReconnectingSubscription<T> {
    type Item = Result<ReconnectEvent<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(cur) = this.current.as_mut() {
            match cur.poll_raw(cx) {
                Poll::Ready(Some(Ok(RawItem::Message(topic, payload)))) => {
                    return Poll::Ready(Some(
                        this.codec.decode(&payload).map(|value| ReconnectEvent::Message { topic, value }),
                    ));
                }
                Poll::Ready(Some(Ok(RawItem::Lagged(n)))) => return Poll::Ready(Some(Ok(ReconnectEvent::Lagged(n)))),
                // The connection ended: wait for the next one.
                Poll::Ready(Some(Err(Error::ConnectionLost(_)))) | Poll::Ready(None) => this.current = None,
                Poll::Ready(Some(Err(e))) => return this.end(e),
                Poll::Pending => {}
            }
        }
        let mut st = this.shared.lock();
        let stop = Shared::gave_up_error(&st);
        let Some(e) = st.subs.get_mut(&this.id) else {
            this.ended = true;
            return Poll::Ready(None);
        };
        if let Some((g, s)) = e.latest.take_if(|(g, _)| *g > this.generation) {
            this.generation = g;
            this.current = Some(s);
            return Poll::Ready(Some(Ok(ReconnectEvent::Gap { generation: g })));
        }
        if this.current.is_some() {
            e.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(err) = e.failed.take().or(stop) {
            drop(st);
            return this.end(err);
        }
        e.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for ReconnectingSubscription<T> {
    fn drop(&mut self) {
        let removed = self.shared.lock().subs.remove(&self.id);
        // Dropping the connection's subscription unsubscribes; outside the lock.
        drop(removed);
    }
}

/// Sleeps until `deadline`, or until the client is closing (returns false).
async fn sleep_unless_closing(shared: &Shared, deadline: Instant) -> bool {
    let mut timer = shared.runtime().timer(deadline);
    std::future::poll_fn(|cx| {
        {
            let mut st = shared.lock();
            if st.closing {
                return Poll::Ready(false);
            }
            st.supervisor = Some(cx.waker().clone());
        }
        timer.as_mut().poll_fire(cx).map(|()| true)
    })
    .await
}

/// `future`, or `None` as soon as the client is closing.
async fn unless_closing<T>(shared: &Shared, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        {
            let mut st = shared.lock();
            if st.closing {
                return Poll::Ready(None);
            }
            st.supervisor = Some(cx.waker().clone());
        }
        future.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Whether a failed connection attempt is worth repeating.
fn permanent(e: &Error) -> bool {
    match e {
        Error::ConnectionLost(c) => is_permanent(c),
        Error::Config(_) => true,
        _ => false,
    }
}

/// The supervisor: waits for the connection to end, then reconnects.
async fn supervise(shared: Arc<Shared>, mut backoff: Backoff, first: Session) {
    let mut session = Some(first);
    let mut failed: u32 = 0;
    let mut hint: Option<Duration> = None;
    let final_state = 'run: loop {
        if let Some(s) = session.take() {
            let Some(why) = unless_closing(&shared, s.closed()).await else {
                s.close("client closed").await;
                break 'run ConnectionState::Closed;
            };
            tracing::debug!(endpoint = %shared.endpoint, error = %why, "wharf: connection lost; reconnecting");
            hint = why.reconnect_after();
            failed = 0;
        }
        // Wait, then try to connect.
        let attempt = failed + 1;
        let record = backoff.next(attempt, hint.take());
        {
            let mut st = shared.lock();
            st.session = None;
            st.history.push(record);
            let w = shared.set_state(&mut st, ConnectionState::Reconnecting { attempt, delay: record.delay });
            drop(st);
            wake_all(w);
        }
        let until = shared.runtime().now() + record.delay;
        if !sleep_unless_closing(&shared, until).await {
            break 'run ConnectionState::Closed;
        }
        let Some(result) = unless_closing(&shared, shared.parts.connect(&shared.endpoint)).await else {
            break 'run ConnectionState::Closed;
        };
        match result {
            Ok(s) => {
                // Publish the connection and take the subscriptions to make
                // again in one lock (see `subscribe_with`).
                let (generation, todo) = {
                    let mut st = shared.lock();
                    st.generation += 1;
                    let generation = st.generation;
                    st.session = Some((generation, s.clone()));
                    let todo: Vec<(u64, String, SubscribeOptions)> =
                        st.subs.iter().map(|(id, e)| (*id, e.topic.clone(), e.options)).collect();
                    let w = shared.set_state(&mut st, ConnectionState::Connected { generation });
                    drop(st);
                    wake_all(w);
                    (generation, todo)
                };
                tracing::debug!(endpoint = %shared.endpoint, generation, "wharf: reconnected");
                for (id, topic, options) in todo {
                    let r = unless_closing(&shared, s.subscribe_with::<()>(&topic, options)).await;
                    let mut st = shared.lock();
                    let Some(e) = st.subs.get_mut(&id) else { continue };
                    match r {
                        Some(Ok(sub)) => e.latest = Some((generation, sub)),
                        Some(Err(Error::ConnectionLost(_))) | None => {}
                        Some(Err(err)) => e.failed = Some(err),
                    }
                    let w = e.waker.take();
                    drop(st);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                session = Some(s);
            }
            Err(e) => {
                tracing::debug!(endpoint = %shared.endpoint, attempt, error = %e, "wharf: reconnect attempt failed");
                hint = match &e {
                    Error::ConnectionLost(c) => c.reconnect_after(),
                    _ => None,
                };
                let stop = permanent(&e);
                shared.lock().last_error = Some(e);
                failed += 1;
                if stop || backoff.policy().gives_up_after(failed) {
                    break 'run ConnectionState::GaveUp { attempts: failed };
                }
            }
        }
    };
    let old = {
        let mut st = shared.lock();
        st.supervisor = None;
        let old = st.session.take();
        let w = shared.set_state(&mut st, final_state);
        drop(st);
        wake_all(w);
        old
    };
    drop(old);
}
