//! Write-through: a task that queues output on an idle connection writes it
//! to the socket itself (`ByteStream::try_write_vectored`) instead of
//! waking the connection's driver to do it. What it cannot write (the
//! socket would block, or took only part) is left to the driver; a write
//! that fails fails the connection as the driver's own write would.
//!
//! Each case runs on tokio and on smol (async-io), over Unix sockets and
//! TCP, with both ends' streams wrapped in a [`Probe`] that counts who
//! wrote what (the task writing through, or the driver) and can make the
//! writes through misbehave: would block, take only a few bytes, fail, or
//! not be offered at all.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{Either, select};
use wharf::core::{Bytes, BytesMut};
use wharf::{
    Backend, BindOptions, ByteListener, ByteStream, CallOptions, Client, ClientBuilder, Context, Endpoint, Error,
    PeerIdentity, Router, Server, ServerBuilder,
};

/// What the probe does with a write through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Passes it to the real stream.
    Pass,
    /// Says "would block" without writing.
    WouldBlock,
    /// Passes at most this many bytes to the real stream.
    Partial(usize),
    /// Fails it with `BrokenPipe` without writing.
    Fail,
    /// Does not offer writing through (`None`).
    Unsupported,
    /// Pass, would block or a partial write of 1 to 7 bytes, in a
    /// pseudo-random sequence.
    Mixed,
}

/// What one side's probes saw, and how they treat writes through.
#[derive(Debug)]
struct Probes {
    mode: Mutex<Mode>,
    /// Writes through asked of the probe.
    direct_attempts: AtomicUsize,
    /// Bytes the real stream took from writes through.
    direct_bytes: AtomicUsize,
    /// Errors other than "would block" returned to writes through
    /// (injected or from the real stream).
    direct_errors: AtomicUsize,
    /// Writes the driver asked for (`poll_write_vectored`).
    driver_attempts: AtomicUsize,
    /// Bytes the real stream took from the driver's writes.
    driver_bytes: AtomicUsize,
    /// State of the `Mixed` sequence.
    seed: AtomicUsize,
}

impl Probes {
    fn new(mode: Mode) -> Arc<Probes> {
        Arc::new(Probes {
            mode: Mutex::new(mode),
            direct_attempts: AtomicUsize::new(0),
            direct_bytes: AtomicUsize::new(0),
            direct_errors: AtomicUsize::new(0),
            driver_attempts: AtomicUsize::new(0),
            driver_bytes: AtomicUsize::new(0),
            seed: AtomicUsize::new(0x9e37_79b9),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn direct_attempts(&self) -> usize {
        self.direct_attempts.load(Ordering::SeqCst)
    }

    fn direct_bytes(&self) -> usize {
        self.direct_bytes.load(Ordering::SeqCst)
    }

    fn direct_errors(&self) -> usize {
        self.direct_errors.load(Ordering::SeqCst)
    }

    fn driver_attempts(&self) -> usize {
        self.driver_attempts.load(Ordering::SeqCst)
    }

    fn driver_bytes(&self) -> usize {
        self.driver_bytes.load(Ordering::SeqCst)
    }

    /// The mode for the next write through (`Mixed` resolved).
    fn next_mode(&self) -> Mode {
        match *self.mode.lock().unwrap() {
            Mode::Mixed => {
                // xorshift over the seed: deterministic, no dependency.
                let mut x = self.seed.load(Ordering::Relaxed);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.seed.store(x, Ordering::Relaxed);
                match x % 3 {
                    0 => Mode::Pass,
                    1 => Mode::WouldBlock,
                    _ => Mode::Partial(1 + (x >> 8) % 7),
                }
            }
            m => m,
        }
    }
}

/// A stream that forwards to a real one and reports to its [`Probes`].
struct Probe {
    inner: Box<dyn ByteStream>,
    probes: Arc<Probes>,
}

/// The first `limit` bytes of `bufs`.
fn cut<'b>(bufs: &'b [IoSlice<'_>], limit: usize) -> Vec<IoSlice<'b>> {
    let mut left = limit;
    let mut out = Vec::new();
    for b in bufs {
        let b: &'b [u8] = b;
        let n = b.len().min(left);
        if n == 0 {
            break;
        }
        out.push(IoSlice::new(&b[..n]));
        left -= n;
    }
    out
}

impl ByteStream for Probe {
    fn poll_read_buf(&mut self, cx: &mut TaskContext<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        self.inner.poll_read_buf(cx, buf)
    }

    fn poll_write_vectored(&mut self, cx: &mut TaskContext<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.probes.driver_attempts.fetch_add(1, Ordering::SeqCst);
        let r = self.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.probes.driver_bytes.fetch_add(n, Ordering::SeqCst);
        }
        r
    }

    fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown(cx)
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let p = &self.probes;
        p.direct_attempts.fetch_add(1, Ordering::SeqCst);
        let r = match p.next_mode() {
            Mode::Unsupported => return None,
            Mode::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
            Mode::Fail => Err(io::ErrorKind::BrokenPipe.into()),
            Mode::Partial(k) => self.inner.try_write_vectored(&cut(bufs, k)).expect("sockets write through"),
            Mode::Pass | Mode::Mixed => self.inner.try_write_vectored(bufs).expect("sockets write through"),
        };
        match &r {
            Ok(n) => {
                p.direct_bytes.fetch_add(*n, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                p.direct_errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        Some(r)
    }
}

/// A listener whose connections are [`Probe`]s reporting to one [`Probes`].
struct ProbeListener {
    inner: Box<dyn ByteListener>,
    probes: Arc<Probes>,
}

impl ByteListener for ProbeListener {
    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<(Box<dyn ByteStream>, PeerIdentity)>> {
        self.inner.poll_accept(cx).map_ok(|(s, peer)| {
            (Box::new(Probe { inner: s, probes: self.probes.clone() }) as Box<dyn ByteStream>, peer)
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Rt {
    /// tokio `current_thread`: every task on one thread.
    TokioCurrent,
    /// tokio `multi_thread`, two workers.
    TokioMulti,
    /// smol: one executor run by one thread.
    Smol,
}

#[derive(Clone, Copy, Debug)]
enum Net {
    Unix,
    Tcp,
}

/// Runs `body` on a fresh runtime of `rt` with its backend.
fn run<F: Future<Output = ()>>(rt: Rt, body: impl FnOnce(Backend) -> F) {
    match rt {
        Rt::TokioCurrent | Rt::TokioMulti => {
            let mut b = match rt {
                Rt::TokioCurrent => tokio::runtime::Builder::new_current_thread(),
                _ => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(2);
                    b
                }
            };
            let runtime = b.enable_all().build().unwrap();
            runtime.block_on(async { body(wharf::tokio::backend()).await });
        }
        Rt::Smol => {
            let executor = Arc::new(smol::Executor::new());
            smol::block_on(executor.run(body(wharf::smol::backend_on(&executor))));
        }
    }
}

/// The transports of this platform (named pipes do not write through).
fn nets() -> Vec<Net> {
    if cfg!(unix) { vec![Net::Unix, Net::Tcp] } else { vec![Net::Tcp] }
}

/// Every (runtime, transport) pair with a single-threaded runtime, where
/// who writes what is deterministic.
fn single() -> Vec<(Rt, Net)> {
    [Rt::TokioCurrent, Rt::Smol].into_iter().flat_map(|rt| nets().into_iter().map(move |net| (rt, net))).collect()
}

/// Fails the test instead of hanging: `fut`, or a panic after 20 s.
async fn within<T>(backend: &Backend, what: &str, fut: impl Future<Output = T>) -> T {
    let mut timer = backend.runtime.timer(backend.runtime.now() + Duration::from_secs(20));
    let expired = std::future::poll_fn(move |cx| timer.as_mut().poll_fire(cx));
    match select(std::pin::pin!(fut), std::pin::pin!(expired)).await {
        Either::Left((v, _)) => v,
        Either::Right(_) => panic!("{what}: still waiting after 20 s"),
    }
}

/// A future that is pending once (waking itself), then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `echo` answers at once (on the driver's task); `echo-later` after
/// yielding once, so its answer comes from a task of its own; `hang`
/// never answers; `panic-later` panics in its own task.
fn router() -> Router {
    Router::new()
        .raw("echo", |payload: Bytes, _: Context| async move { Ok::<_, Error>(payload) })
        .raw("echo-later", |payload: Bytes, _: Context| async move {
            YieldOnce(false).await;
            Ok::<_, Error>(payload)
        })
        .raw("hang", |_: Bytes, _: Context| async move {
            std::future::pending::<()>().await;
            Ok::<_, Error>(Bytes::new())
        })
        .raw("panic-later", |_: Bytes, _: Context| async move {
            YieldOnce(false).await;
            panic!("a handler panicking in its own task (expected by the test)");
        })
}

/// One case's server and client, connected through probes.
struct Case {
    backend: Backend,
    /// Names the runtime and transport in failure messages.
    what: String,
    server: Server,
    client: Client,
    /// The client's stream.
    client_probes: Arc<Probes>,
    /// The server's streams.
    server_probes: Arc<Probes>,
    _dir: Option<tempfile::TempDir>,
}

impl Case {
    /// A server and a client connected to it over `net`, both through
    /// probes starting in `modes` (client, server).
    async fn new(backend: Backend, rt: Rt, net: Net, (client_mode, server_mode): (Mode, Mode)) -> Case {
        let (endpoint, dir) = match net {
            Net::Unix => {
                let dir = tempfile::tempdir().unwrap();
                (Endpoint::unix(dir.path().join("s.sock")), Some(dir))
            }
            Net::Tcp => {
                let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                (Endpoint::tcp(format!("127.0.0.1:{port}")), None)
            }
        };
        let server_probes = Probes::new(server_mode);
        let listener = backend.network.bind(&endpoint, &BindOptions::default()).unwrap();
        let listener = ProbeListener { inner: listener, probes: server_probes.clone() };
        let server =
            ServerBuilder::new(backend.clone()).router(router()).serve(endpoint.clone(), Box::new(listener)).unwrap();
        let client_probes = Probes::new(client_mode);
        let (stream, peer) = backend.network.connect(&endpoint, Duration::from_secs(10)).await.unwrap();
        let stream = Probe { inner: stream, probes: client_probes.clone() };
        let client = ClientBuilder::new(backend.clone()).connect_stream(Box::new(stream), peer).await.unwrap();
        Case { backend, what: format!("{rt:?} over {net:?}"), server, client, client_probes, server_probes, _dir: dir }
    }

    /// Fails the test instead of hanging: `fut`, or a panic after 20 s.
    async fn within<T>(&self, fut: impl Future<Output = T>) -> T {
        within(&self.backend, &self.what, fut).await
    }
}

/// Runs `body` once per (runtime, transport) of `cases`, on a fresh
/// runtime with a fresh [`Case`] whose probes start in `modes` (client,
/// server); shuts the server down afterwards.
fn each<F, Fut>(cases: Vec<(Rt, Net)>, modes: (Mode, Mode), body: F)
where
    F: Fn(Arc<Case>) -> Fut,
    Fut: Future<Output = ()>,
{
    for (rt, net) in cases {
        run(rt, |backend| async {
            let case = Arc::new(Case::new(backend, rt, net, modes).await);
            body(case.clone()).await;
            case.server.shutdown("bye", None).await;
        });
    }
}

/// A payload naming call `i` of task `task`, `len` bytes long.
fn payload(task: usize, i: usize, len: usize) -> Bytes {
    let head = format!("task {task} call {i};");
    let mut v = head.into_bytes();
    let fill = (task * 31 + i) as u8;
    while v.len() < len {
        v.push(fill);
    }
    v.truncate(len.max(1));
    Bytes::from(v)
}

/// Calls `method` `n` times in a row, checking each echo.
async fn calls(client: &Client, method: &str, task: usize, n: usize) {
    for i in 0..n {
        let p = payload(task, i, 64);
        let r = client.call_raw(method, p.clone(), CallOptions::new()).await.unwrap();
        assert_eq!(r, p, "call {i} of task {task}: the echo differs (frames out of order or torn)");
    }
}

#[test]
fn callers_write_their_requests_and_handler_tasks_their_responses() {
    each(single(), (Mode::Pass, Mode::Pass), |c| async move {
        let (c0, s0) = (c.client_probes.direct_attempts(), c.server_probes.direct_attempts());
        c.within(calls(&c.client, "echo-later", 0, 50)).await;
        let sent = c.client_probes.direct_attempts() - c0;
        let answered = c.server_probes.direct_attempts() - s0;
        // One runtime thread: the driver has always finished its poll
        // (read the previous response) when the caller makes the next
        // call, so every request goes out from the caller; every response
        // from the handler's own task.
        assert!(sent >= 50, "{}: {sent} of 50 requests written through by the caller", c.what);
        assert!(answered >= 50, "{}: {answered} of 50 responses written through by the handler's task", c.what);
        assert_eq!(c.client_probes.direct_errors(), 0, "{}", c.what);
        // A handler that finishes on its first poll is answered on the
        // driver's task, while the driver runs: the driver writes that
        // response in its round, with whatever else it has.
        let s1 = c.server_probes.direct_attempts();
        c.within(calls(&c.client, "echo", 1, 20)).await;
        assert_eq!(c.server_probes.direct_attempts(), s1, "{}: the driver's own answers", c.what);
    });
}

#[test]
fn writes_that_would_block_are_left_to_the_driver() {
    each(single(), (Mode::WouldBlock, Mode::WouldBlock), |c| async move {
        let driver_before = c.client_probes.driver_bytes();
        c.within(calls(&c.client, "echo-later", 0, 20)).await;
        assert!(c.client_probes.direct_attempts() >= 20, "{}: writes through were tried", c.what);
        assert_eq!(c.client_probes.direct_bytes(), 0, "{}", c.what);
        assert_eq!(c.server_probes.direct_bytes(), 0, "{}", c.what);
        let by_driver = c.client_probes.driver_bytes() - driver_before;
        assert!(by_driver >= 20 * 64, "{}: the driver wrote {by_driver} bytes of the requests", c.what);
    });
}

#[test]
fn partial_writes_through_keep_every_frame_whole_and_in_order() {
    each(single(), (Mode::Partial(3), Mode::Partial(5)), |c| async move {
        c.within(calls(&c.client, "echo-later", 0, 20)).await;
        // Each write through took its few bytes, the driver the rest.
        let direct = c.client_probes.direct_bytes();
        assert!(direct >= 20 * 3, "{}: {direct} bytes written through", c.what);
        assert!(c.client_probes.driver_bytes() >= 20 * 64, "{}", c.what);
        assert!(c.server_probes.direct_bytes() >= 20 * 5, "{}", c.what);
    });
}

/// A real partial write: a request larger than the socket's buffer. The
/// caller writes what fits and the driver the rest.
#[test]
fn a_request_larger_than_the_socket_buffer_is_finished_by_the_driver() {
    each(single(), (Mode::Pass, Mode::Pass), |c| async move {
        let big = payload(0, 0, 8 << 20);
        let direct_before = c.client_probes.direct_bytes();
        let r = c.within(c.client.call_raw("echo", big.clone(), CallOptions::new())).await.unwrap();
        assert!(r == big, "{}: the 8 MiB echo differs", c.what);
        let direct = c.client_probes.direct_bytes() - direct_before;
        assert!(direct > 0 && direct < big.len(), "{}: {direct} bytes of 8 MiB written through", c.what);
        c.within(calls(&c.client, "echo", 1, 5)).await;
    });
}

/// Many tasks, writes through that pass, would block or take a few bytes
/// at random, on runtimes with several threads too.
#[test]
fn mixed_outcomes_from_many_tasks_keep_every_call_intact() {
    let cases = [Rt::TokioMulti, Rt::TokioCurrent, Rt::Smol]
        .into_iter()
        .flat_map(|rt| nets().into_iter().map(move |net| (rt, net)))
        .collect();
    each(cases, (Mode::Mixed, Mode::Mixed), |c| async move {
        // tokio's channels work on any executor.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for task in 0..8 {
            let client = c.client.clone();
            let tx = tx.clone();
            c.backend.runtime.spawn(Box::pin(async move {
                let method = if task % 2 == 0 { "echo" } else { "echo-later" };
                calls(&client, method, task, 40).await;
                let _ = tx.send(task);
            }));
        }
        drop(tx);
        // A task that panicked never sends: the deadline reports it.
        for _ in 0..8 {
            c.within(rx.recv()).await.expect("every task finishes");
        }
        assert!(c.client_probes.direct_bytes() > 0, "{}: some requests went through", c.what);
        assert!(c.client_probes.driver_bytes() > 0, "{}", c.what);
    });
}

#[test]
fn a_failed_write_through_fails_the_connection() {
    each(single(), (Mode::Pass, Mode::Pass), |c| async move {
        c.within(calls(&c.client, "echo", 0, 3)).await;
        c.client_probes.set(Mode::Fail);
        let driver_before = c.client_probes.driver_attempts();
        match c.within(c.client.call_raw("echo", payload(0, 9, 64), CallOptions::new())).await {
            Err(Error::ConnectionLost(e)) => assert!(e.to_string().contains("pipe"), "{}: {e}", c.what),
            other => panic!("{}: {other:?}", c.what),
        }
        c.within(c.client.closed()).await;
        // The failure was the write through's: the driver never tried to
        // write the request again.
        assert_eq!(c.client_probes.direct_errors(), 1, "{}", c.what);
        assert_eq!(c.client_probes.driver_attempts(), driver_before, "{}", c.what);
        assert!(c.client.call_raw("echo", payload(0, 10, 64), CallOptions::new()).await.is_err(), "{}", c.what);
    });
}

#[test]
fn streams_that_cannot_write_through_are_asked_once() {
    each(single(), (Mode::Unsupported, Mode::Unsupported), |c| async move {
        c.within(calls(&c.client, "echo-later", 0, 20)).await;
        assert_eq!(c.client_probes.direct_attempts(), 1, "{}", c.what);
        assert_eq!(c.server_probes.direct_attempts(), 1, "{}", c.what);
        assert!(c.client_probes.driver_bytes() >= 20 * 64, "{}", c.what);
    });
}

/// Tasks started together leave their output to the driver, which writes
/// it in one go: only the first of them writes through.
#[test]
fn a_burst_of_calls_is_written_by_the_driver() {
    let cases = nets().into_iter().map(|net| (Rt::TokioCurrent, net)).collect();
    each(cases, (Mode::Pass, Mode::Pass), |c| async move {
        c.within(calls(&c.client, "echo", 99, 1)).await;
        let before = c.client_probes.direct_attempts();
        let mut handles = Vec::new();
        for task in 0..16 {
            let client = c.client.clone();
            handles.push(tokio::spawn(async move { calls(&client, "echo", task, 1).await }));
        }
        for h in handles {
            c.within(h).await.unwrap();
        }
        let direct = c.client_probes.direct_attempts() - before;
        assert_eq!(direct, 1, "{}: writes through among 16 calls started together", c.what);
    });
}

/// The peer has closed its end and the caller is the first to write: the
/// write through fails (EPIPE), and the call fails at once with the
/// connection, as when the driver's write fails.
#[cfg(unix)]
#[test]
fn a_write_through_to_a_closed_peer_fails_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Endpoint::unix(dir.path().join("s.sock"));
    let (to_server, server_rx) = tokio::sync::oneshot::channel::<()>();
    let (to_client, client_rx) = std::sync::mpsc::channel::<()>();
    let ep = endpoint.clone();
    // The server on a runtime of its own thread, so that closing it runs
    // while the client's runtime is stopped.
    let server_thread = std::thread::spawn(move || {
        run(Rt::TokioCurrent, |backend| async move {
            let server = ServerBuilder::new(backend).router(router()).bind(ep).await.unwrap();
            to_client.send(()).unwrap();
            server_rx.await.unwrap();
            // Ends every connection and returns once their sockets are closed.
            server.abort().await;
            to_client.send(()).unwrap();
        });
    });
    client_rx.recv().unwrap();
    run(Rt::TokioCurrent, |backend| async move {
        let probes = Probes::new(Mode::Pass);
        let (stream, peer) = backend.network.connect(&endpoint, Duration::from_secs(10)).await.unwrap();
        let client = ClientBuilder::new(backend.clone())
            .connect_stream(Box::new(Probe { inner: stream, probes: probes.clone() }), peer)
            .await
            .unwrap();
        within(&backend, "before", calls(&client, "echo", 0, 1)).await;
        // The server closes; this thread blocks, so the client's driver
        // cannot notice before the next call writes.
        to_server.send(()).unwrap();
        client_rx.recv().unwrap();
        let driver_before = probes.driver_attempts();
        let r = within(&backend, "after", client.call_raw("echo", payload(0, 1, 64), CallOptions::new())).await;
        assert!(matches!(r, Err(Error::ConnectionLost(_))), "{r:?}");
        assert_eq!(probes.direct_errors(), 1, "the write through met the closed peer");
        assert_eq!(probes.driver_attempts(), driver_before, "and the driver did not write after it");
    });
    server_thread.join().unwrap();
}

/// Cleanup in drop glue is left to the driver: a handler whose task is
/// dropped without answering (here it panics; a runtime shutting down
/// drops tasks the same way) is answered "the handler failed" by the
/// driver, never written through from the dropping task (so that during
/// a runtime's shutdown, when the driver does not run again, nothing is
/// written for it; that shutdown case itself is not run here).
#[test]
fn a_dropped_handler_is_answered_by_the_driver() {
    let cases = [Rt::TokioCurrent, Rt::TokioMulti]
        .into_iter()
        .flat_map(|rt| nets().into_iter().map(move |net| (rt, net)))
        .collect();
    each(cases, (Mode::Pass, Mode::Pass), |c| async move {
        c.within(calls(&c.client, "echo", 0, 2)).await;
        let before = c.server_probes.direct_attempts();
        match c.within(c.client.call_raw("panic-later", Bytes::new(), CallOptions::new())).await {
            Err(Error::Remote { message, .. }) => assert_eq!(message, "the handler failed", "{}", c.what),
            other => panic!("{}: {other:?}", c.what),
        }
        assert_eq!(c.server_probes.direct_attempts(), before, "{}: the answer was written through", c.what);
        c.within(calls(&c.client, "echo", 1, 2)).await;
    });
}

/// The other drop glue leaves its frames to the driver too: a dropped
/// call's CANCEL, a dropped subscription's UNSUBSCRIBE.
#[test]
fn dropped_calls_and_subscriptions_leave_their_frames_to_the_driver() {
    let cases = nets().into_iter().map(|net| (Rt::TokioCurrent, net)).collect();
    each(cases, (Mode::Pass, Mode::Pass), |c| async move {
        let call = c.client.call_raw("hang", Bytes::new(), CallOptions::new());
        let mut call = Box::pin(call);
        let sent = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_pending())).await;
        assert!(sent, "{}", c.what);
        let sub = c.within(c.client.subscribe_raw("t", Default::default())).await.unwrap();
        // Each drop after a ping and its pong: the driver has run since,
        // so a handle could write through again.
        c.within(c.client.ping()).await.unwrap();
        let before = c.client_probes.direct_attempts();
        drop(sub);
        assert_eq!(c.client_probes.direct_attempts(), before, "{}: UNSUBSCRIBE written through", c.what);
        // The driver sent it before the next ping: by its pong the server
        // has dropped the subscription.
        c.within(c.client.ping()).await.unwrap();
        assert_eq!(c.server.publish_raw("t", Bytes::from_static(b"x")).queued, 0, "{}", c.what);
        let before = c.client_probes.direct_attempts();
        let session = c.server.sessions().pop().expect("the client's session");
        let received = session.stats().frames_received;
        drop(call);
        assert_eq!(c.client_probes.direct_attempts(), before, "{}: CANCEL written through", c.what);
        // The driver sent it before the next ping: by its pong the server
        // has received two frames, the CANCEL and the PING.
        c.within(c.client.ping()).await.unwrap();
        assert_eq!(session.stats().frames_received, received + 2, "{}: the CANCEL never arrived", c.what);
        c.within(calls(&c.client, "echo", 0, 2)).await;
    });
}
