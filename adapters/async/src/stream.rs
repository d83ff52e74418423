//! Both ends of streaming calls: [`Sender`] (a `Sink`) and [`Receiver`]
//! (a `Stream`), and the response of a client-streaming call.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::{RequestId, SendError};

use crate::codec::Codec;
use crate::error::Error;
use crate::session::{Inner, abandon_call};

/// Cancels a call we made when every handle to it is gone before its
/// outcome was read (dropping a call cancels it on the peer too).
pub(crate) struct CallGuard {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: u64,
    pub(crate) done: AtomicBool,
}

impl CallGuard {
    pub(crate) fn new(inner: Arc<Inner>, id: u64) -> CallGuard {
        CallGuard { inner, id, done: AtomicBool::new(false) }
    }

    pub(crate) fn complete(&self) {
        self.done.store(true, Ordering::Release);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Acquire) {
            abandon_call(&self.inner, self.id);
        }
    }
}

/// Sends the items of a streaming call, respecting the receiver's credit:
/// `send` waits while the peer has not consumed enough. Also a
/// [`Sink`](futures_sink::Sink).
pub struct Sender<T> {
    inner: Arc<Inner>,
    id: u64,
    codec: Codec,
    caller: bool,
    guard: Option<Arc<CallGuard>>,
    pending: Option<Bytes>,
    finished: bool,
    _t: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("id", &self.id).field("caller", &self.caller).finish_non_exhaustive()
    }
}

impl<T: Serialize> Sender<T> {
    pub(crate) fn callee(inner: Arc<Inner>, id: u64, codec: Codec) -> Self {
        Sender { inner, id, codec, caller: false, guard: None, pending: None, finished: false, _t: PhantomData }
    }

    pub(crate) fn caller(inner: Arc<Inner>, id: u64, codec: Codec, guard: Arc<CallGuard>) -> Self {
        Sender { inner, id, codec, caller: true, guard: Some(guard), pending: None, finished: false, _t: PhantomData }
    }

    /// Sends one item, waiting for credit and queue room.
    pub async fn send(&mut self, item: &T) -> Result<(), Error> {
        let bytes = self.codec.encode(item)?;
        std::future::poll_fn(|cx| self.poll_send_bytes(cx, &bytes)).await
    }

    /// Caller only: no more items (the callee's reader ends). A callee ends
    /// its stream by returning from the handler.
    pub async fn finish(mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_flush_pending(cx)).await?;
        self.do_finish()
    }

    fn do_finish(&mut self) -> Result<(), Error> {
        if self.finished || !self.caller {
            self.finished = true;
            return Ok(());
        }
        self.finished = true;
        let mut st = self.inner.lock();
        match st.conn.stream_finish(RequestId(self.id)) {
            Ok(()) => Ok(()),
            Err(SendError::UnknownCall { .. }) => Ok(()), // the call already ended
            Err(e) => Err(e.into()),
        }
    }

    fn poll_send_bytes(&self, cx: &mut Context<'_>, bytes: &Bytes) -> Poll<Result<(), Error>> {
        if self.finished {
            return Poll::Ready(Err(Error::Send(SendError::InvalidState("the stream was finished"))));
        }
        let mut st = self.inner.lock();
        match st.conn.stream_send(RequestId(self.id), bytes.clone()) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(SendError::StreamBlocked { .. }) => {
                let w = Some(cx.waker().clone());
                if self.caller {
                    if let Some(s) = st.calls.get_mut(&self.id) {
                        s.tx_waker = w;
                    }
                } else if let Some(s) = st.serving.get_mut(&self.id) {
                    s.tx_waker = w;
                }
                Poll::Pending
            }
            Err(SendError::Blocked { .. }) => {
                st.writable.push(cx.waker().clone());
                Poll::Pending
            }
            Err(SendError::UnknownCall { .. }) => {
                // The call is over: report how it ended.
                let e = if self.caller {
                    match st.calls.get(&self.id).and_then(|s| s.result.as_ref()) {
                        Some(Err(e)) => e.clone(),
                        _ => Error::Send(SendError::InvalidState("the call has ended")),
                    }
                } else {
                    st.closed_error().unwrap_or(Error::Cancelled)
                };
                Poll::Ready(Err(e))
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(b) = self.pending.take() {
            match self.poll_send_bytes(cx, &b) {
                Poll::Pending => {
                    self.pending = Some(b);
                    return Poll::Pending;
                }
                Poll::Ready(r) => return Poll::Ready(r),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Serialize> Sink<T> for Sender<T> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Error> {
        let this = self.get_mut();
        this.pending = Some(this.codec.encode(&item)?);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        match this.poll_flush_pending(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(this.do_finish()),
            other => other,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A caller that drops its sender without finishing still ends its
        // half of the stream, so the callee's reader is not left waiting.
        if self.caller && !self.finished {
            let mut st = self.inner.lock_cleanup();
            let _ = st.conn.stream_finish(RequestId(self.id));
        }
        let _ = &self.guard;
    }
}

/// Receives the items of a streaming call. Ends (`None`) when the sender
/// finishes; a call that ends in an error yields that error first.
pub struct Receiver<T> {
    inner: Arc<Inner>,
    id: u64,
    codec: Codec,
    caller: bool,
    guard: Option<Arc<CallGuard>>,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("id", &self.id).field("caller", &self.caller).finish_non_exhaustive()
    }
}

enum Next {
    Item(Bytes),
    End(Option<Error>),
    Wait,
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn callee(inner: Arc<Inner>, id: u64, codec: Codec) -> Self {
        Receiver { inner, id, codec, caller: false, guard: None, done: false, _t: PhantomData }
    }

    pub(crate) fn caller(inner: Arc<Inner>, id: u64, codec: Codec, guard: Arc<CallGuard>) -> Self {
        Receiver { inner, id, codec, caller: true, guard: Some(guard), done: false, _t: PhantomData }
    }

    /// The next item, or `None` at the end.
    pub async fn recv(&mut self) -> Option<Result<T, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    fn next(&mut self, cx: &mut Context<'_>) -> Next {
        let mut st = self.inner.lock();
        let st = &mut *st;
        let (rx, result) = if self.caller {
            match st.calls.get_mut(&self.id) {
                Some(s) => (&mut s.rx, Some(&mut s.result)),
                None => return Next::End(None),
            }
        } else {
            match st.serving.get_mut(&self.id) {
                Some(s) => (&mut s.rx, None),
                None => return Next::End(None),
            }
        };
        if let Some(b) = rx.queue.pop_front() {
            st.conn.stream_consumed(RequestId(self.id), b.len());
            return Next::Item(b);
        }
        if rx.ended {
            let err = match result.and_then(|r| r.take()) {
                Some(Err(e)) => Some(e),
                _ => None,
            };
            if self.caller {
                st.calls.remove(&self.id);
                if let Some(g) = &self.guard {
                    g.complete();
                }
            }
            return Next::End(err);
        }
        rx.waker = Some(cx.waker().clone());
        Next::Wait
    }
}

impl<T: DeserializeOwned> Stream for Receiver<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.next(cx) {
            Next::Item(b) => Poll::Ready(Some(this.codec.decode(&b))),
            Next::End(err) => {
                this.done = true;
                Poll::Ready(err.map(Err))
            }
            Next::Wait => Poll::Pending,
        }
    }
}

/// The response of a client-streaming call.
pub struct ResponseFuture<T> {
    inner: Arc<Inner>,
    id: u64,
    codec: Codec,
    guard: Arc<CallGuard>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(inner: Arc<Inner>, id: u64, codec: Codec, guard: Arc<CallGuard>) -> Self {
        ResponseFuture { inner, id, codec, guard, _t: PhantomData }
    }
}

/// Waits for the outcome of call `id`, removing its slot once read.
pub(crate) fn poll_outcome(
    inner: &Inner,
    id: u64,
    guard: &CallGuard,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, Error>> {
    let mut st = inner.lock();
    let Some(slot) = st.calls.get_mut(&id) else {
        guard.complete();
        return Poll::Ready(Err(st.closed_error().unwrap_or(Error::Cancelled)));
    };
    if let Some(r) = slot.result.take() {
        st.calls.remove(&id);
        guard.complete();
        return Poll::Ready(r);
    }
    slot.waker = Some(cx.waker().clone());
    Poll::Pending
}

impl<T: DeserializeOwned> Future for ResponseFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let this = self.get_mut();
        poll_outcome(&this.inner, this.id, &this.guard, cx).map(|r| r.and_then(|b| this.codec.decode(&b)))
    }
}
