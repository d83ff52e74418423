//! Handlers registered by method name, the context they receive, and how an
//! incoming call reaches them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::broker::PublishReport;
use wharf_core::{CallKind, Code, IncomingCall, IncomingNotification, Metadata, RequestId, SendError, Text, TraceId};
use wharf_transport::PeerIdentity;

use crate::Session;
use crate::codec::Codec;
use crate::error::Error;
use crate::runtime::BoxFuture;
use crate::session::{Fresh, InSlot, Inner, State};
use crate::stream::{Receiver, Sender};

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send + 'static>>;
type ErasedHandler = Arc<dyn Fn(Call) -> HandlerFuture + Send + Sync>;
type ErasedNotify = Arc<dyn Fn(Bytes, Context) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What an erased handler gets.
pub(crate) struct Call {
    payload: Bytes,
    ctx: Context,
    codec: Codec,
}

struct Route {
    kind: CallKind,
    handler: ErasedHandler,
}

/// Handlers by method name. Build one, then give it to a server (or to a
/// client, which then answers calls from the server).
///
/// A handler is first polled on the connection's own task, right after the
/// call is read: one that completes without waiting is answered with no task
/// spawned and no wake-up. One that waits continues as a task of its own.
/// Heavy synchronous work therefore belongs in a blocking pool (for example
/// `tokio::task::spawn_blocking`), not in the handler's first stretch, or it
/// delays the other calls of that connection.
///
/// ```
/// use wharf_async::{Context, Error, Router};
///
/// #[derive(serde::Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// let router = Router::new()
///     .unary("add", |req: Add, _ctx: Context| async move { Ok::<_, Error>(req.a + req.b) })
///     .unary("fail", |_: (), _ctx: Context| async move {
///         Err::<(), _>(Error::new(wharf_core::Code(1001), "always fails"))
///     });
/// assert_eq!(router.methods().count(), 2);
/// ```
#[derive(Default, Clone)]
pub struct Router {
    routes: HashMap<String, Arc<Route>, foldhash::fast::RandomState>,
    notifications: HashMap<String, ErasedNotify, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.routes.keys().collect::<Vec<_>>())
            .field("notifications", &self.notifications.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    /// An empty router: every call is answered `UNKNOWN_METHOD`.
    pub fn new() -> Router {
        Router::default()
    }

    /// Registered method names.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    fn add(mut self, method: &str, kind: CallKind, handler: ErasedHandler) -> Router {
        self.routes.insert(method.to_string(), Arc::new(Route { kind, handler }));
        self
    }

    /// A typed unary method: `async fn(Req, Context) -> Result<Resp, Error>`.
    pub fn unary<Req, Resp, F, Fut>(self, method: &str, f: F) -> Router
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            CallKind::Unary,
            Arc::new(move |call: Call| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = call.codec.decode(&call.payload)?;
                    let resp = f(req, call.ctx).await?;
                    call.codec.encode(&resp)
                })
            }),
        )
    }

    /// A unary method on raw bytes.
    pub fn raw<F, Fut>(self, method: &str, f: F) -> Router
    where
        F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            CallKind::Unary,
            Arc::new(move |call: Call| {
                let f = f.clone();
                Box::pin(async move { f(call.payload, call.ctx).await })
            }),
        )
    }

    /// A server-streaming method: the handler sends items on the
    /// [`Sender`]; returning ends the stream (an `Err` ends it with an error).
    pub fn server_stream<Req, Item, F, Fut>(self, method: &str, f: F) -> Router
    where
        Req: DeserializeOwned + Send + 'static,
        Item: Serialize + Send + 'static,
        F: Fn(Req, Context, Sender<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            CallKind::ServerStream,
            Arc::new(move |call: Call| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = call.codec.decode(&call.payload)?;
                    let tx = Sender::callee(call.ctx.inner.clone(), call.ctx.id.0, call.codec);
                    f(req, call.ctx, tx).await?;
                    Ok(Bytes::new())
                })
            }),
        )
    }

    /// A client-streaming method: the handler reads items from the
    /// [`Receiver`] (it ends when the caller finishes) and returns the response.
    pub fn client_stream<Req, Item, Resp, F, Fut>(self, method: &str, f: F) -> Router
    where
        Req: DeserializeOwned + Send + 'static,
        Item: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req, Context, Receiver<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            CallKind::ClientStream,
            Arc::new(move |call: Call| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = call.codec.decode(&call.payload)?;
                    let rx = Receiver::callee(call.ctx.inner.clone(), call.ctx.id.0, call.codec);
                    let resp = f(req, call.ctx, rx).await?;
                    call.codec.encode(&resp)
                })
            }),
        )
    }

    /// A bidirectional method: items both ways; returning ends the call.
    pub fn bidi<Req, In, Out, F, Fut>(self, method: &str, f: F) -> Router
    where
        Req: DeserializeOwned + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        F: Fn(Req, Context, Receiver<In>, Sender<Out>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            CallKind::Bidi,
            Arc::new(move |call: Call| {
                let f = f.clone();
                Box::pin(async move {
                    let req: Req = call.codec.decode(&call.payload)?;
                    let rx = Receiver::callee(call.ctx.inner.clone(), call.ctx.id.0, call.codec);
                    let tx = Sender::callee(call.ctx.inner.clone(), call.ctx.id.0, call.codec);
                    f(req, call.ctx, rx, tx).await?;
                    Ok(Bytes::new())
                })
            }),
        )
    }

    /// A notification handler (no reply). Undecodable notifications are
    /// logged and dropped.
    pub fn notification<T, F, Fut>(mut self, method: &str, f: F) -> Router
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let f = Arc::new(f);
        let name = method.to_string();
        self.notifications.insert(
            method.to_string(),
            Arc::new(move |payload: Bytes, ctx: Context| {
                let f = f.clone();
                let name = name.clone();
                Box::pin(async move {
                    let codec = Codec::from_metadata(&ctx.metadata).unwrap_or_default();
                    match codec.decode::<T>(&payload) {
                        Ok(v) => f(v, ctx).await,
                        // Not the decode error: a codec may quote the payload in it (X16).
                        Err(_) => tracing::warn!(method = %name, len = payload.len(), "wharf: dropped undecodable notification"),
                    }
                })
            }),
        );
        self
    }
}

/// What a handler knows about the call it serves.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: RequestId,
    method: Text,
    metadata: Metadata,
    trace_id: Option<TraceId>,
    deadline: Option<Instant>,
    connection_id: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("connection_id", &self.connection_id)
            .field("peer", &self.inner.peer())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The call's id on this connection (0 for notifications).
    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Metadata sent with the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The caller's trace id.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace_id
    }

    /// When the caller stops waiting, on this process's clock.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (zero once passed), if there is one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(self.inner.runtime.now()))
    }

    /// Who called, as the kernel reported it when the connection was accepted.
    pub fn peer(&self) -> PeerIdentity {
        self.inner.peer()
    }

    /// The connection's id.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// The connection the call came on: use it to call the peer back.
    pub fn session(&self) -> Session {
        Session { inner: self.inner.clone() }
    }

    /// Server handlers: publishes a typed message through the server's
    /// broker (the codec is the server's). On a client's handlers (peer
    /// mode) use [`Session::publish`] instead.
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<PublishReport, Error> {
        let link = self.inner.server.as_ref().ok_or(Error::Send(SendError::InvalidState(
            "only a server's handlers publish through the broker; use Session::publish",
        )))?;
        Ok(link.publish_local(topic, self.inner.codec.encode(value)?))
    }

    /// Server handlers: publishes raw bytes through the server's broker.
    pub fn publish_raw(&self, topic: &str, payload: Bytes) -> Result<PublishReport, Error> {
        let link = self.inner.server.as_ref().ok_or(Error::Send(SendError::InvalidState(
            "only a server's handlers publish through the broker; use Session::publish_raw",
        )))?;
        Ok(link.publish_local(topic, payload))
    }

    /// Whether the call was cancelled (by the caller, its deadline, or the
    /// connection ending). The handler's future is dropped when that
    /// happens; spawned work can poll this.
    pub fn is_cancelled(&self) -> bool {
        let st = self.inner.lock();
        st.serving.get(&self.id.0).is_none_or(|s| s.cancelled)
    }

    /// Completes when the call is cancelled.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        let id = self.id.0;
        std::future::poll_fn(move |cx| {
            let mut st = inner.lock();
            match st.serving.get_mut(&id) {
                Some(s) if !s.cancelled => {
                    if !s.cancel_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        s.cancel_wakers.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
    }
}

/// Responds exactly once, even if the handler panics or is dropped.
pub(crate) struct Responder {
    inner: Arc<Inner>,
    id: u64,
    done: bool,
}

impl Responder {
    /// Answers a handler that finished on its first poll: in one lock when
    /// the response fits the queue (the common case), else through
    /// [`finish`](Self::finish) in a task of its own.
    pub(crate) fn finish_now(mut self, outcome: Result<Bytes, Error>) {
        let payload = match outcome {
            Ok(payload) => payload,
            Err(e) => {
                let inner = self.inner.clone();
                inner.runtime.spawn(Box::pin(self.finish(Some(Err(e)))));
                return;
            }
        };
        let mut st = self.inner.lock();
        match st.conn.respond(RequestId(self.id), payload.clone()) {
            Ok(()) => {
                st.serving.remove(&self.id);
                self.done = true;
            }
            // Wait for room, or answer "too large" instead: as `finish` does.
            Err(SendError::Blocked { .. } | SendError::TooLarge { .. }) => {
                drop(st);
                let inner = self.inner.clone();
                inner.runtime.spawn(Box::pin(self.finish(Some(Ok(payload)))));
            }
            // Cancelled meanwhile, or the connection is ending: nothing to
            // answer.
            Err(e) => {
                tracing::debug!(id = self.id, error = %e, "wharf: response not sent");
                st.serving.remove(&self.id);
                self.done = true;
            }
        }
    }

    async fn finish(mut self, result: Option<Result<Bytes, Error>>) {
        self.done = true;
        let id = RequestId(self.id);
        let Some(result) = result else {
            // Cancelled: nothing to send.
            self.inner.lock().serving.remove(&self.id);
            return;
        };
        let sent = match result {
            Ok(payload) => {
                let r = self.inner.send(|c| c.respond(id, payload.clone())).await;
                match r {
                    Err(Error::Send(SendError::TooLarge { len, limit, .. })) => {
                        let msg = format!("response of {len} bytes exceeds the caller's limit of {limit}");
                        self.inner.send(|c| c.respond_error(id, Code::TOO_LARGE, &msg, Bytes::new())).await
                    }
                    other => other,
                }
            }
            Err(e) => {
                let (code, message, data) = match e {
                    Error::Remote { code, message, data } => (code, message, data),
                    other => (other.code(), other.to_string(), Bytes::new()),
                };
                let r = self.inner.send(|c| c.respond_error(id, code, &message, data.clone())).await;
                match r {
                    Err(Error::Send(SendError::TooLarge { .. })) => {
                        self.inner.send(|c| c.respond_error(id, code, &message, Bytes::new())).await
                    }
                    other => other,
                }
            }
        };
        if let Err(e) = sent {
            tracing::debug!(id = self.id, error = %e, "wharf: response not sent");
        }
        self.inner.lock().serving.remove(&self.id);
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.inner.lock_cleanup();
        st.serving.remove(&self.id);
        let r = st.conn.respond_error(RequestId(self.id), Code::INTERNAL, "the handler failed", Bytes::new());
        if let Err(SendError::Blocked { .. }) = r {
            // Cannot wait here: end the call as cancelled on our side; the
            // caller will see its deadline or the connection's end.
            tracing::warn!(id = self.id, "wharf: could not report a failed handler (queue full)");
        }
    }
}

pub(crate) fn dispatch_call(inner: &Arc<Inner>, st: &mut State, call: IncomingCall) {
    let id = call.id;
    let route = inner.router.routes.get(call.method.as_str()).cloned();
    let refuse = |st: &mut State, code: Code, msg: String| {
        let _ = st.conn.respond_error(id, code, &msg, Bytes::new());
    };
    let Some(route) = route else {
        return refuse(st, Code::UNKNOWN_METHOD, format!("no method {:?}", call.method.as_str()));
    };
    if route.kind != call.kind {
        return refuse(
            st,
            Code::INVALID_REQUEST,
            format!("method {:?} is {:?}, called as {:?}", call.method.as_str(), route.kind, call.kind),
        );
    }
    let codec = match Codec::from_metadata(&call.metadata) {
        Ok(c) => c,
        Err(e) => return refuse(st, e.code(), e.to_string()),
    };
    st.serving.insert(id.0, InSlot::default());
    let connection_id = st.conn.connection_id();
    let ctx = Context {
        inner: inner.clone(),
        id,
        method: call.method,
        metadata: call.metadata,
        trace_id: call.trace_id,
        deadline: call.deadline,
        connection_id,
    };
    let fut = (route.handler)(Call { payload: call.payload, ctx, codec });
    let responder = Responder { inner: inner.clone(), id: id.0, done: false };
    // The driver polls it once after releasing the lock; it becomes a task
    // only if it does not finish then.
    st.fresh.push(Fresh::Call(fut, responder));
}

/// The task of a handler that did not finish on its first poll: races it
/// against cancellation (a cancelled call's handler is dropped, its work
/// moot, and nothing is sent), then answers.
pub(crate) fn serve_task(inner: Arc<Inner>, fut: HandlerFuture, responder: Responder) -> BoxFuture {
    let id = responder.id;
    Box::pin(async move {
        let mut fut = fut;
        let outcome = std::future::poll_fn(|cx| {
            {
                let mut st = inner.lock();
                match st.serving.get_mut(&id) {
                    Some(s) if s.cancelled => return Poll::Ready(None),
                    None => return Poll::Ready(None),
                    Some(s) => {
                        if !s.abort_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            s.abort_waker = Some(cx.waker().clone());
                        }
                    }
                }
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await;
        drop(fut);
        responder.finish(outcome).await;
    })
}

pub(crate) fn dispatch_notification(inner: &Arc<Inner>, st: &mut State, n: IncomingNotification) {
    let Some(handler) = inner.router.notifications.get(n.method.as_str()).cloned() else {
        tracing::debug!(method = %n.method, "wharf: notification for no handler");
        return;
    };
    let ctx = Context {
        inner: inner.clone(),
        id: RequestId(0),
        method: n.method,
        metadata: n.metadata,
        trace_id: n.trace_id,
        deadline: None,
        connection_id: st.conn.connection_id(),
    };
    st.fresh.push(Fresh::Notification(handler(n.payload, ctx)));
}
