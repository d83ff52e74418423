use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::time::Sleep;
use wharf_async::{BoxFuture, Runtime, Timer};

/// [`Runtime`] on a tokio runtime handle. Time comes from `tokio::time`,
/// so tests with a paused clock drive wharf's timers too.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Handle,
}

impl TokioRuntime {
    /// The runtime this code runs on.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        TokioRuntime { handle: Handle::current() }
    }

    /// A specific runtime.
    pub fn with_handle(handle: Handle) -> Self {
        TokioRuntime { handle }
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, future: BoxFuture) {
        self.handle.spawn(future);
    }

    fn timer(&self, deadline: Instant) -> Pin<Box<dyn Timer>> {
        let _guard = self.handle.enter();
        Box::pin(TokioTimer { sleep: tokio::time::sleep_until(deadline.into()) })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

pin_project_lite::pin_project! {
    /// A tokio `Sleep`, held in the timer's own allocation (one per
    /// connection, not two).
    #[derive(Debug)]
    struct TokioTimer {
        #[pin]
        sleep: Sleep,
    }
}

impl Timer for TokioTimer {
    fn reset(self: Pin<&mut Self>, deadline: Instant) {
        self.project().sleep.reset(deadline.into());
    }

    fn poll_fire(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}
