//! [`Session`]: what an application does with one live connection.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::{
    CallKind, CallOptions, Code, ConnectionError, PublishId, SendError, Stats, SubscribeOptions, SubscriptionId, Text,
};
use wharf_transport::PeerIdentity;

use crate::codec::Codec;
use crate::error::Error;
use crate::session::{AckSlot, Goodbye, Inner, OutSlot, SubItem, SubSlot};
use crate::stream::{CallGuard, Receiver, ResponseFuture, Sender, poll_outcome};

/// One live connection, client or server side. Cheap to clone; every clone
/// drives the same connection. The connection stays up while its driver
/// runs, not while handles exist: close it with [`close`](Self::close).
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

/// A client is a session it opened itself.
pub type Client = Session;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connection_id", &self.connection_id())
            .field("peer", &self.inner.peer())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The id the server gave this connection.
    pub fn connection_id(&self) -> u64 {
        self.inner.lock().conn.connection_id()
    }

    /// The peer's name from the handshake.
    pub fn peer_name(&self) -> Option<Text> {
        self.inner.lock().peer_name.clone()
    }

    /// Who is at the other end, as the kernel reported it.
    pub fn peer(&self) -> PeerIdentity {
        self.inner.peer()
    }

    /// The codec typed calls from this side use.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// The core connection's counters.
    pub fn stats(&self) -> Stats {
        self.inner.lock().conn.stats().clone()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// What the peer said when it started closing, if it did.
    pub fn goodbye(&self) -> Option<Goodbye> {
        self.inner.lock().goodbye.as_deref().cloned()
    }

    fn options(&self, mut opts: CallOptions, kind: CallKind) -> CallOptions {
        opts.kind = kind;
        self.inner.codec.tag(&mut opts.metadata);
        opts
    }

    async fn start(&self, method: &str, payload: Bytes, opts: CallOptions) -> Result<u64, Error> {
        let now = self.inner.runtime.now();
        self.inner
            .send_state(|st| {
                let method = st.names.get(method);
                let id = st.conn.request(method, payload.clone(), opts.clone(), now)?;
                st.calls.insert(id.0, OutSlot::default());
                Ok(id.0)
            })
            .await
    }

    /// Calls `method` with raw bytes. The deadline, metadata and trace id
    /// come from `opts`; dropping the future cancels the call on the peer.
    pub async fn call_raw(&self, method: &str, payload: Bytes, opts: CallOptions) -> Result<Bytes, Error> {
        self.call_raw_tracked(method, payload, opts).await.map_err(|(e, _sent)| e)
    }

    /// [`call_raw`](Self::call_raw), telling on failure whether the request
    /// was handed to the connection (`true`) or refused before that
    /// (`false`: the peer never saw it).
    pub(crate) async fn call_raw_tracked(
        &self,
        method: &str,
        payload: Bytes,
        opts: CallOptions,
    ) -> Result<Bytes, (Error, bool)> {
        let mut opts = opts;
        opts.kind = CallKind::Unary;
        let now = self.inner.runtime.now();
        // Sending the request and waiting for its outcome share one poll
        // function: the first poll sends and registers the waker in one
        // lock; the guard cancels the call if this future is dropped.
        let mut guard: Option<CallGuard> = None;
        std::future::poll_fn(|cx| {
            if let Some(guard) = &guard {
                return poll_outcome(&self.inner, guard.id, guard, cx).map_err(|e| (e, true));
            }
            let mut st = self.inner.lock();
            let method_text = st.names.get(method);
            match st.conn.request(method_text, payload.clone(), opts.clone(), now) {
                Ok(id) => {
                    st.calls.insert(id.0, OutSlot { waker: Some(cx.waker().clone()), ..OutSlot::default() });
                    guard = Some(CallGuard::new(self.inner.clone(), id.0));
                    Poll::Pending
                }
                Err(SendError::Blocked { .. }) => {
                    st.writable.push(cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err((st.send_error(e), false))),
            }
        })
        .await
    }

    /// Calls `method` with a typed request and the default options.
    pub async fn call<Req, Resp>(&self, method: &str, request: &Req) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_with(method, request, CallOptions::new()).await
    }

    /// Calls `method` with a typed request and options (deadline, metadata, trace id).
    pub async fn call_with<Req, Resp>(&self, method: &str, request: &Req, opts: CallOptions) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let codec = self.inner.codec;
        let payload = codec.encode(request)?;
        let bytes = self.call_raw(method, payload, self.options(opts, CallKind::Unary)).await?;
        codec.decode(&bytes)
    }

    /// Sends a notification (no reply).
    pub async fn notify<T: Serialize + ?Sized>(&self, method: &str, value: &T) -> Result<(), Error> {
        let payload = self.inner.codec.encode(value)?;
        self.notify_raw(method, payload, self.options(CallOptions::new(), CallKind::Unary)).await
    }

    /// Sends a notification of raw bytes.
    pub async fn notify_raw(&self, method: &str, payload: Bytes, opts: CallOptions) -> Result<(), Error> {
        self.inner
            .send_state(|st| {
                let method = st.names.get(method);
                st.conn.notify(method, payload.clone(), opts.clone())
            })
            .await
    }

    /// Starts a server-streaming call: the returned receiver yields the
    /// callee's items and ends when the callee returns.
    pub async fn server_stream<Req, Item>(
        &self,
        method: &str,
        request: &Req,
        opts: CallOptions,
    ) -> Result<Receiver<Item>, Error>
    where
        Req: Serialize + ?Sized,
        Item: DeserializeOwned,
    {
        let codec = self.inner.codec;
        let id = self.start(method, codec.encode(request)?, self.options(opts, CallKind::ServerStream)).await?;
        Ok(Receiver::caller(self.inner.clone(), id, codec, Arc::new(CallGuard::new(self.inner.clone(), id))))
    }

    /// Starts a client-streaming call: send items, finish the sender, then
    /// await the response.
    pub async fn client_stream<Req, Item, Resp>(
        &self,
        method: &str,
        request: &Req,
        opts: CallOptions,
    ) -> Result<(Sender<Item>, ResponseFuture<Resp>), Error>
    where
        Req: Serialize + ?Sized,
        Item: Serialize,
        Resp: DeserializeOwned,
    {
        let codec = self.inner.codec;
        let id = self.start(method, codec.encode(request)?, self.options(opts, CallKind::ClientStream)).await?;
        let guard = Arc::new(CallGuard::new(self.inner.clone(), id));
        Ok((
            Sender::caller(self.inner.clone(), id, codec, guard.clone()),
            ResponseFuture::new(self.inner.clone(), id, codec, guard),
        ))
    }

    /// Starts a bidirectional call.
    pub async fn bidi<Req, In, Out>(
        &self,
        method: &str,
        request: &Req,
        opts: CallOptions,
    ) -> Result<(Sender<In>, Receiver<Out>), Error>
    where
        Req: Serialize + ?Sized,
        In: Serialize,
        Out: DeserializeOwned,
    {
        let codec = self.inner.codec;
        let id = self.start(method, codec.encode(request)?, self.options(opts, CallKind::Bidi)).await?;
        let guard = Arc::new(CallGuard::new(self.inner.clone(), id));
        Ok((
            Sender::caller(self.inner.clone(), id, codec, guard.clone()),
            Receiver::caller(self.inner.clone(), id, codec, guard),
        ))
    }

    /// Subscribes to `topic` exactly and waits for the server to confirm.
    pub async fn subscribe<T: DeserializeOwned>(&self, topic: &str) -> Result<Subscription<T>, Error> {
        self.subscribe_with(topic, SubscribeOptions::default()).await
    }

    /// Subscribes to every topic starting with `prefix`.
    pub async fn subscribe_prefix<T: DeserializeOwned>(&self, prefix: &str) -> Result<Subscription<T>, Error> {
        self.subscribe_with(prefix, SubscribeOptions { prefix: true, ..Default::default() }).await
    }

    /// Subscribes with explicit options (prefix, slow-consumer policy).
    pub async fn subscribe_with<T: DeserializeOwned>(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription<T>, Error> {
        let id = self
            .inner
            .send_state(|st| {
                let topic = st.names.get(topic);
                let id = st.conn.subscribe(topic, options)?;
                st.subs.insert(id.0, SubSlot { policy: options.policy, ..SubSlot::default() });
                Ok(id)
            })
            .await?;
        let sub = Subscription {
            inner: self.inner.clone(),
            id,
            codec: self.inner.codec,
            ended: false,
            taken: VecDeque::new(),
            batch: None,
            _t: PhantomData,
        };
        std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            match st.subs.get_mut(&id.0) {
                Some(s) => match &s.ack {
                    Some(r) => Poll::Ready(r.clone()),
                    None => {
                        s.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                },
                None => Poll::Ready(Err(st.closed_error().unwrap_or(Error::Cancelled))),
            }
        })
        .await?;
        Ok(sub)
    }

    /// Subscribes and yields each message's payload as it arrived, without
    /// decoding it: the fastest way to read a subscription, for payloads
    /// that are not serde values (or that the application decodes itself).
    pub async fn subscribe_raw(&self, topic: &str, options: SubscribeOptions) -> Result<RawSubscription, Error> {
        self.subscribe_with::<()>(topic, options).await.map(RawSubscription)
    }

    /// Publishes a typed message through the server's broker and waits for
    /// the acknowledgement: the number of subscriptions it was queued for.
    pub async fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<u32, Error> {
        let payload = self.inner.codec.encode(value)?;
        self.publish_raw(topic, payload).await
    }

    /// Publishes raw bytes and waits for the acknowledgement.
    pub async fn publish_raw(&self, topic: &str, payload: Bytes) -> Result<u32, Error> {
        let id = self
            .inner
            .send_state(|st| {
                let topic = st.names.get(topic);
                let id = st.conn.publish(topic, payload.clone(), true)?.unwrap_or(PublishId(0));
                st.publishes.insert(id.0, AckSlot::default());
                Ok(id.0)
            })
            .await?;
        self.wait_ack(id, |st| &mut st.publishes).await
    }

    /// Publishes without waiting for (or asking for) an acknowledgement.
    pub async fn publish_nowait(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        self.inner
            .send_state(|st| {
                let topic = st.names.get(topic);
                st.conn.publish(topic, payload.clone(), false).map(|_| ())
            })
            .await
    }

    /// Measures the round-trip time to the peer.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let now = self.inner.runtime.now();
        let id = self
            .inner
            .send_state(|st| {
                let id = st.conn.ping(now)?;
                st.pings.insert(id, AckSlot::default());
                Ok(id)
            })
            .await?;
        self.wait_ack(id, |st| &mut st.pings).await
    }

    async fn wait_ack<T>(
        &self,
        id: u64,
        slots: impl Fn(&mut crate::session::State) -> &mut crate::session::LazyMap<AckSlot<T>>,
    ) -> Result<T, Error> {
        std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            let closed = st.closed_error();
            let map = slots(&mut st);
            match map.get_mut(&id) {
                Some(slot) => match slot.result.take() {
                    Some(r) => {
                        map.remove(&id);
                        Poll::Ready(r)
                    }
                    None => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                },
                None => Poll::Ready(Err(closed.unwrap_or(Error::Cancelled))),
            }
        })
        .await
    }

    /// Closes gracefully: sends GOODBYE with `Code::OK`, lets calls in flight
    /// in both directions finish, and waits until the connection has ended.
    pub async fn close(&self, reason: &str) -> ConnectionError {
        self.close_with(Code::OK, reason, None).await
    }

    /// Closes gracefully with a code and a reconnect hint for the peer.
    pub async fn close_with(&self, code: Code, reason: &str, reconnect_after: Option<Duration>) -> ConnectionError {
        {
            let now = self.inner.runtime.now();
            let mut st = self.inner.lock();
            st.conn.close(code, reason, reconnect_after, now);
        }
        self.inner.driver.wake();
        self.closed().await
    }

    /// Ends the connection at once; everything pending fails.
    pub fn abort(&self) {
        {
            let now = self.inner.runtime.now();
            let mut st = self.inner.lock();
            st.conn.abort(Code::OK, "aborted", now);
        }
        self.inner.driver.wake();
    }

    /// Waits until the connection has ended and its transport is closed.
    pub fn closed(&self) -> impl Future<Output = ConnectionError> + Send + 'static {
        let inner = self.inner.clone();
        std::future::poll_fn(move |cx| {
            let mut st = inner.lock();
            if st.finished {
                let e = st
                    .closed
                    .as_deref()
                    .cloned()
                    .unwrap_or(ConnectionError::LocallyClosed { code: Code::OK, message: "closed".into() });
                return Poll::Ready(e);
            }
            st.waiters().finish.push(cx.waker().clone());
            Poll::Pending
        })
    }
}

impl Inner {
    /// Runs `op` on the state, waiting while the outbound queue is full.
    pub(crate) async fn send_state<T>(
        &self,
        mut op: impl FnMut(&mut crate::session::State) -> Result<T, SendError>,
    ) -> Result<T, Error> {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            match op(&mut st) {
                Ok(v) => Poll::Ready(Ok(v)),
                Err(SendError::Blocked { .. }) => {
                    st.writable.push(cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(st.send_error(e))),
            }
        })
        .await
    }
}

/// An item of a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionEvent<T> {
    /// A published message.
    Message {
        /// The topic it was published on.
        topic: Text,
        /// The decoded value.
        value: T,
    },
    /// This many messages were lost because this subscriber fell behind
    /// (dropped by the server's broker or by the local buffer).
    Lagged(u64),
}

/// Messages for one subscription, as a [`Stream`]. Dropping it
/// unsubscribes. A message that does not decode yields `Err(Decode)` and the
/// stream goes on; the end of the connection yields its error, then `None`.
pub struct Subscription<T> {
    inner: Arc<Inner>,
    id: SubscriptionId,
    codec: Codec,
    ended: bool,
    /// Items taken from the session's queue in one go, not yet yielded:
    /// one lock per batch instead of one per message.
    taken: VecDeque<SubItem>,
    /// The rest of a MESSAGES frame's messages being handed out.
    batch: Option<(Text, wharf_core::MessageBatch)>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<T> Subscription<T> {
    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }
}

impl<T> Subscription<T> {
    /// The next undecoded item, or the end of the subscription.
    ///
    /// Everything the session has queued for the subscription is taken at
    /// once (the two queues swap, so neither allocates) and then yielded
    /// without locking; the session's buffer limit applies to what it holds,
    /// so a reader that keeps up holds at most twice that in all.
    pub(crate) fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RawItem, Error>>> {
        if let Some(item) = self.next_taken() {
            return Poll::Ready(Some(Ok(item)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let mut st = self.inner.lock();
        let Some(s) = st.subs.get_mut(&self.id.0) else {
            self.ended = true;
            return Poll::Ready(None);
        };
        std::mem::swap(&mut s.queue, &mut self.taken);
        s.held = 0;
        if self.taken.is_empty() {
            return match s.ended.clone() {
                Some(e) => {
                    self.ended = true;
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
        drop(st);
        match self.next_taken() {
            Some(item) => Poll::Ready(Some(Ok(item))),
            // Only empty batches were taken (never queued): look again.
            None => self.poll_raw(cx),
        }
    }

    /// The next message or lag report already taken from the session.
    fn next_taken(&mut self) -> Option<RawItem> {
        loop {
            if let Some((topic, batch)) = &mut self.batch {
                if let Some(payload) = batch.pop_front() {
                    let topic = if batch.is_empty() {
                        let (t, _) = self.batch.take()?;
                        t
                    } else {
                        topic.clone()
                    };
                    return Some(RawItem::Message(topic, payload));
                }
                self.batch = None;
            }
            match self.taken.pop_front()? {
                SubItem::Message(topic, payload) => return Some(RawItem::Message(topic, payload)),
                SubItem::Lagged(n) => return Some(RawItem::Lagged(n)),
                SubItem::Batch(topic, batch) => self.batch = Some((topic, batch)),
            }
        }
    }
}

/// A subscription item as [`Subscription::poll_raw`] yields it.
pub(crate) enum RawItem {
    Message(Text, Bytes),
    Lagged(u64),
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next event, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<SubscriptionEvent<T>, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<SubscriptionEvent<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = match this.poll_raw(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(item))) => item,
        };
        Poll::Ready(Some(match item {
            RawItem::Lagged(n) => Ok(SubscriptionEvent::Lagged(n)),
            RawItem::Message(topic, payload) => {
                this.codec.decode(&payload).map(|value| SubscriptionEvent::Message { topic, value })
            }
        }))
    }
}

/// Messages for one subscription as the bytes that were published, as a
/// [`Stream`] ([`Client::subscribe_raw`]). Otherwise like [`Subscription`]:
/// dropping it unsubscribes; the end of the connection yields its error,
/// then `None`. The payloads share the connection's receive buffer (no
/// copy); holding many of them for long keeps that buffer alive.
#[derive(Debug)]
pub struct RawSubscription(Subscription<()>);

impl RawSubscription {
    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.0.id
    }

    /// The next event, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<SubscriptionEvent<Bytes>, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RawSubscription {
    type Item = Result<SubscriptionEvent<Bytes>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_raw(cx).map(|item| {
            item.map(|r| {
                r.map(|item| match item {
                    RawItem::Lagged(n) => SubscriptionEvent::Lagged(n),
                    RawItem::Message(topic, payload) => SubscriptionEvent::Message { topic, value: payload },
                })
            })
        })
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let mut st = self.inner.lock_cleanup();
        st.subs.remove(&self.id.0);
        let _ = st.conn.unsubscribe(self.id);
    }
}
