//! The reactor thread and the readiness of each registered pipe.

use std::collections::HashMap;
use std::io;
use std::os::windows::io::{FromRawHandle, IntoRawHandle, OwnedHandle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mio::windows::NamedPipe;
use mio::{Events, Interest, Registry, Token};

/// The thread's name, as it shows in debuggers and thread lists.
const THREAD_NAME: &str = "wharf-pipe-reactor";

/// The process's pipe reactor: the registry of its `mio::Poll` and the
/// readiness of every registered pipe, by token.
struct Reactor {
    registry: Registry,
    sources: Mutex<HashMap<Token, Arc<Readiness>>>,
    next_token: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reactor {
    /// The reactor, started on first use.
    fn get() -> io::Result<&'static Reactor> {
        static REACTOR: OnceLock<&'static Reactor> = OnceLock::new();
        static STARTING: Mutex<()> = Mutex::new(());
        if let Some(r) = REACTOR.get() {
            return Ok(r);
        }
        let _one_at_a_time = lock(&STARTING);
        if let Some(r) = REACTOR.get() {
            return Ok(r);
        }
        let poll = mio::Poll::new()?;
        let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
            registry: poll.registry().try_clone()?,
            sources: Mutex::new(HashMap::new()),
            next_token: AtomicUsize::new(0),
        }));
        std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || reactor.run(poll))?;
        tracing::debug!("wharf: pipe reactor thread started");
        Ok(REACTOR.get_or_init(|| reactor))
    }

    /// The reactor thread: waits for completions and wakes the tasks.
    fn run(&self, mut poll: mio::Poll) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "wharf: pipe reactor poll failed; retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                let Some(readiness) = lock(&self.sources).get(&event.token()).cloned() else { continue };
                let error = event.is_error();
                readiness.set_ready(
                    event.is_readable() || event.is_read_closed() || error,
                    event.is_writable() || event.is_write_closed() || error,
                );
            }
        }
    }
}

/// Which half of a pipe an operation waits on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// Reads (data or end of stream available).
    Read = 0,
    /// Writes, and a server instance's connect.
    Write = 1,
}

#[derive(Debug)]
struct Half {
    /// An event arrived since the last operation found nothing to do.
    ready: bool,
    /// Counts events, so that an operation that found nothing to do only
    /// clears the readiness it saw, never an event that arrived meanwhile.
    tick: u64,
    waker: Option<Waker>,
}

/// The readiness of one pipe, set by the reactor thread, cleared by tasks.
#[derive(Debug)]
struct Readiness {
    halves: Mutex<[Half; 2]>,
}

impl Readiness {
    fn new() -> Readiness {
        // Ready at first: the first operation tries, which is also what makes
        // mio start its first overlapped read.
        let half = || Half { ready: true, tick: 0, waker: None };
        Readiness { halves: Mutex::new([half(), half()]) }
    }

    fn set_ready(&self, read: bool, write: bool) {
        let mut wake = [None, None];
        {
            let mut halves = lock(&self.halves);
            for (i, set) in [read, write].into_iter().enumerate() {
                if set {
                    halves[i].ready = true;
                    halves[i].tick = halves[i].tick.wrapping_add(1);
                    wake[i] = halves[i].waker.take();
                }
            }
        }
        for w in wake.into_iter().flatten() {
            w.wake();
        }
    }
}

/// A pipe handle registered with the reactor; deregistered on drop.
pub(crate) struct Registered {
    pipe: NamedPipe,
    token: Token,
    readiness: Arc<Readiness>,
    reactor: &'static Reactor,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("pipe", &self.pipe).field("token", &self.token).finish_non_exhaustive()
    }
}

impl Registered {
    /// Registers `handle`, a pipe opened or created for overlapped I/O,
    /// starting the reactor if this is the first pipe.
    pub(crate) fn new(handle: OwnedHandle) -> io::Result<Registered> {
        let reactor = Reactor::get()?;
        // SAFETY: the raw handle comes out of an `OwnedHandle`, so it is a
        // valid handle that nothing else owns or will close; every handle
        // given here was created with FILE_FLAG_OVERLAPPED, as mio requires.
        let mut pipe = unsafe { NamedPipe::from_raw_handle(handle.into_raw_handle()) };
        let token = Token(reactor.next_token.fetch_add(1, Ordering::Relaxed));
        let readiness = Arc::new(Readiness::new());
        // In the map before registering, so no event can come unclaimed.
        lock(&reactor.sources).insert(token, readiness.clone());
        if let Err(e) = reactor.registry.register(&mut pipe, token, Interest::READABLE | Interest::WRITABLE) {
            lock(&reactor.sources).remove(&token);
            return Err(e);
        }
        Ok(Registered { pipe, token, readiness, reactor })
    }

    /// The mio pipe (for identity queries).
    pub(crate) fn pipe(&self) -> &NamedPipe {
        &self.pipe
    }

    /// Runs `op` while the `direction` is ready; when it would block, clears
    /// the readiness it saw and waits for the reactor's next event.
    pub(crate) fn poll_io<R>(
        &self,
        direction: Direction,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&NamedPipe) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let i = direction as usize;
        loop {
            let tick = {
                let mut halves = lock(&self.readiness.halves);
                let half = &mut halves[i];
                if !half.ready {
                    match &half.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => half.waker = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                half.tick
            };
            match op(&self.pipe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut halves = lock(&self.readiness.halves);
                    if halves[i].tick == tick {
                        halves[i].ready = false;
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // mio keeps a pending write going after the pipe is dropped, so what
        // was written is delivered before the handle closes.
        if let Err(e) = self.reactor.registry.deregister(&mut self.pipe) {
            tracing::debug!(error = %e, "wharf: deregistering a pipe failed");
        }
        lock(&self.reactor.sources).remove(&self.token);
    }
}
