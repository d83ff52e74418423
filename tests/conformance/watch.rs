//! [`Watch`]: a value shared between tasks and threads, waited on from
//! async code (any runtime) or from a plain thread. Shared by the
//! conformance harness and the wharf-mio cases (which use no runtime).

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A value shared between tasks (and threads), and a way to wait until it
/// satisfies a condition: gates, counters, flags, join handles. Written
/// here so the cases need no runtime's synchronisation types.
pub struct Watch<T> {
    inner: Arc<Mutex<(T, Vec<Waker>)>>,
}

impl<T> Clone for Watch<T> {
    fn clone(&self) -> Self {
        Watch { inner: self.inner.clone() }
    }
}

impl<T> Watch<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Watch { inner: Arc::new(Mutex::new((value, Vec::new()))) }
    }

    /// Changes the value and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let (r, wakers) = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let r = f(&mut g.0);
            (r, std::mem::take(&mut g.1))
        };
        for w in wakers {
            w.wake();
        }
        r
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        self.update(|v| *v = value);
    }

    /// Reads the value.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// Waits until `pred` holds, then returns what `take` makes of the value.
    pub async fn wait_map<R>(&self, mut pred: impl FnMut(&T) -> bool, mut take: impl FnMut(&mut T) -> R) -> R {
        std::future::poll_fn(|cx| {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if pred(&g.0) {
                return Poll::Ready(take(&mut g.0));
            }
            if !g.1.iter().any(|w| w.will_wake(cx.waker())) {
                g.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until `pred` holds.
    pub async fn wait(&self, pred: impl FnMut(&T) -> bool) {
        self.wait_map(pred, |_| ()).await
    }

    /// Blocks this thread until `pred` holds (true) or `limit` passes
    /// (false).
    pub fn wait_blocking(&self, mut pred: impl FnMut(&T) -> bool, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            {
                let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if pred(&g.0) {
                    return true;
                }
                if !g.1.iter().any(|w| w.will_wake(&waker)) {
                    g.1.push(waker.clone());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::park_timeout(left);
        }
    }
}

/// Wakes a thread parked in [`Watch::wait_blocking`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl<T: Clone> Watch<T> {
    /// A copy of the value.
    pub fn get(&self) -> T {
        self.with(T::clone)
    }
}

impl Watch<usize> {
    /// Adds one.
    pub fn incr(&self) {
        self.update(|n| *n += 1);
    }
}

impl Watch<bool> {
    /// Sets the flag (opens a gate).
    pub fn raise(&self) {
        self.set(true);
    }

    /// Waits until the flag is set.
    pub async fn raised(&self) {
        self.wait(|b| *b).await
    }
}
