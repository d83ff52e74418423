use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use smol::Executor;
use wharf_async::{BoxFuture, Runtime, Timer};

/// [`Runtime`] on smol: tasks go to smol's global executor or to an
/// executor of yours; timers are async-io timers.
///
/// - [`SmolRuntime::global`] spawns with `smol::spawn`. smol starts its
///   global executor's threads (`smol-1`.., `SMOL_THREADS` of them, default
///   one) the first time anything is spawned on it, and they live as long
///   as the process.
/// - [`SmolRuntime::with_executor`] spawns on an `Executor` you run (with
///   `executor.run(..)` on threads of yours); wharf starts no executor
///   thread. It holds the executor weakly: once you drop it, its tasks are
///   dropped (closing their connections) and further spawns are dropped.
///
/// Either way, sockets and timers live on async-io's reactor, which
/// async-io drives from its own `async-io` thread (started by async-io on
/// first use) whenever no thread is inside `smol::block_on`.
#[derive(Clone)]
pub struct SmolRuntime {
    spawner: Spawner,
}

#[derive(Clone)]
enum Spawner {
    Global,
    Shared(Weak<Executor<'static>>),
    Static(&'static Executor<'static>),
}

impl SmolRuntime {
    /// Spawns on smol's global executor (`smol::spawn`).
    pub fn global() -> SmolRuntime {
        SmolRuntime { spawner: Spawner::Global }
    }

    /// Spawns on `executor`, which you run.
    pub fn with_executor(executor: &Arc<Executor<'static>>) -> SmolRuntime {
        SmolRuntime { spawner: Spawner::Shared(Arc::downgrade(executor)) }
    }

    /// Spawns on a `static` executor, which you run.
    pub fn with_static_executor(executor: &'static Executor<'static>) -> SmolRuntime {
        SmolRuntime { spawner: Spawner::Static(executor) }
    }
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = match self.spawner {
            Spawner::Global => "global executor",
            Spawner::Shared(_) => "shared executor",
            Spawner::Static(_) => "static executor",
        };
        f.debug_tuple("SmolRuntime").field(&on).finish()
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, future: BoxFuture) {
        match &self.spawner {
            Spawner::Global => smol::spawn(future).detach(),
            Spawner::Static(executor) => executor.spawn(future).detach(),
            Spawner::Shared(executor) => match executor.upgrade() {
                Some(executor) => executor.spawn(future).detach(),
                None => tracing::debug!("wharf: the smol executor was dropped; not spawning"),
            },
        }
    }

    fn timer(&self, deadline: Instant) -> Pin<Box<dyn Timer>> {
        Box::pin(AsyncIoTimer::at(deadline))
    }
}

/// A wharf [`Timer`] on async-io's reactor: the timers of smol and of
/// async-std. Once the deadline has passed it stays ready until reset.
#[derive(Debug)]
pub struct AsyncIoTimer {
    timer: smol::Timer,
    deadline: Instant,
}

impl AsyncIoTimer {
    /// A timer firing at `deadline`.
    pub fn at(deadline: Instant) -> AsyncIoTimer {
        AsyncIoTimer { timer: smol::Timer::at(deadline), deadline }
    }
}

impl Timer for AsyncIoTimer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.deadline = deadline;
        self.timer.set_at(deadline);
    }

    fn poll_fire(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // async-io's timer fires once; the deadline check keeps it ready.
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}
