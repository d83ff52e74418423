//! The two things wharf needs from an async runtime: spawning and timers.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A boxed, sendable future, as spawned by [`Runtime::spawn`].
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What wharf asks of a runtime. Implemented by each adapter crate in a few
/// lines; everything else is written once in this crate.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture);

    /// A timer firing at `deadline`, reusable with [`Timer::reset`].
    fn timer(&self, deadline: Instant) -> Pin<Box<dyn Timer>>;

    /// The current time (the runtime's clock, which tests may pause).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A resettable one-shot timer.
pub trait Timer: Send + Sync + Debug {
    /// Moves the deadline.
    fn reset(self: Pin<&mut Self>, deadline: Instant);

    /// Ready once the deadline has passed.
    fn poll_fire(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}
