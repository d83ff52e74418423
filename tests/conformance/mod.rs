//! The conformance harness: one set of cases ([`cases`]), run against every
//! adapter (a runtime: tokio, smol, async-std, and cross-runtime pairs of
//! them; mio later) and every transport (Unix sockets, TCP, Windows named
//! pipes).
//!
//! Plugging in:
//! - a runtime: implement [`Adapter`] in [`adapters`] (a fresh runtime per
//!   test in `block_on` where the runtime allows it, and the wharf
//!   [`Backend`] of the runtime it runs; a different `client_backend` for a
//!   cross-runtime pair), then in a test file
//!   `tests/conformance_<adapter>.rs`: `#[macro_use] mod conformance;` and
//!   `conformance_everywhere!(name, Adapter)` (or one
//!   `conformance!(name, Adapter, Transport)` line per transport);
//! - a transport: a [`Transport`] variant with its fresh endpoints
//!   ([`Env::endpoint`]), its expected connect errors, and an arm in
//!   [`conformance!`] naming the cases that only make sense on it.
//!
//! The cases see only an [`Env`]: the backend, fresh endpoints, and
//! runtime-neutral helpers (spawn, sleep, timeouts, a waitable cell, peer
//! processes). They never name tokio, so they run unchanged on any runtime.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

pub mod adapters;
pub mod cases;
#[cfg(target_os = "linux")]
pub mod faults;
#[cfg(feature = "mio")]
pub mod mio_loop;
#[cfg(unix)]
pub mod raw;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use wharf::{Backend, Client, ClientBuilder, Endpoint, Error, Server, ServerBuilder};

/// What a runtime adapter provides to the suite.
pub trait Adapter: 'static {
    /// Shown in failure messages.
    fn name() -> &'static str;

    /// Runs `future` to completion on a fresh runtime (one per test), with
    /// timers and I/O enabled; everything it spawned is dropped afterwards.
    fn block_on<F: Future>(future: F) -> F::Output;

    /// The wharf backend of servers (and of the tasks a case spawns).
    /// Called inside `block_on`.
    fn backend() -> Backend;

    /// The wharf backend of clients: the server's, unless the adapter is a
    /// cross-runtime pair. Called inside `block_on`.
    fn client_backend() -> Backend {
        Self::backend()
    }
}

/// The transports a case can run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Unix domain sockets, in a fresh private directory under /tmp.
    Unix,
    /// TCP on 127.0.0.1, a free port per endpoint.
    Tcp,
    /// Windows named pipes, a fresh name per endpoint.
    Pipe,
}

/// Bound on one whole case, so a hang fails the test instead of the run.
const CASE_LIMIT: Duration = Duration::from_secs(30);

/// Environment variables of a peer process (see [`Env::spawn_peer`]).
pub const PEER_ROLE_VAR: &str = "WHARF_CONFORMANCE_PEER_ROLE";
/// The endpoint the peer process serves on or connects to.
pub const PEER_ENDPOINT_VAR: &str = "WHARF_CONFORMANCE_PEER_ENDPOINT";
/// What a peer process prints once it is ready.
pub const PEER_READY: &str = "WHARF-CONFORMANCE-PEER-READY";

/// What a case gets: the adapter's backend and fresh endpoints on one
/// transport, plus runtime-neutral helpers.
pub struct Env {
    /// The adapter's name.
    pub adapter: &'static str,
    /// The transport every endpoint of this env is on.
    pub transport: Transport,
    /// The adapter's backend (runtime and network): servers and spawned
    /// tasks run on it, and so do sleeps and time-outs.
    pub backend: Backend,
    /// The backend of clients (another runtime's in a cross-runtime pair).
    pub client_backend: Backend,
    dir: Option<tempfile::TempDir>,
    next: AtomicUsize,
    /// The libtest name of this (adapter, transport)'s peer-process test.
    peer_test: String,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("adapter", &self.adapter).field("transport", &self.transport).finish()
    }
}

/// Runs one case on a fresh runtime of `A` over `transport`.
pub fn run<A: Adapter>(
    transport: Transport,
    module: &str,
    case: &str,
    body: impl for<'a> FnOnce(&'a Env) -> Pin<Box<dyn Future<Output = ()> + 'a>>,
) {
    let peer_test = peer_test_name(module);
    A::block_on(async move {
        let env = Env::new::<A>(transport, peer_test, true);
        let what = format!("case {case} on {} over {:?}", A::name(), transport);
        env.within(CASE_LIMIT, &what, body(&env)).await;
    });
}

/// Runs the peer-process role named in the environment, if any (the
/// `peer` test of each instantiation; a no-op when run without the role).
pub fn peer_main<A: Adapter>(transport: Transport, module: &str) {
    let Ok(role) = std::env::var(PEER_ROLE_VAR) else { return };
    let endpoint: Endpoint =
        std::env::var(PEER_ENDPOINT_VAR).expect("peer endpoint variable").parse().expect("peer endpoint parses");
    let peer_test = peer_test_name(module);
    A::block_on(async move {
        // No directory: the process is killed, so it could not remove one.
        let env = Env::new::<A>(transport, peer_test, false);
        cases::peer_role(&env, &role, endpoint).await;
    });
}

/// `crate::module` → `module::peer` (libtest names tests without the crate).
fn peer_test_name(module: &str) -> String {
    let path = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{path}::peer")
}

impl Env {
    fn new<A: Adapter>(transport: Transport, peer_test: String, with_dir: bool) -> Env {
        let dir = match transport {
            Transport::Unix if with_dir => Some(private_dir()),
            _ => None,
        };
        Env {
            adapter: A::name(),
            transport,
            backend: A::backend(),
            client_backend: A::client_backend(),
            dir,
            next: AtomicUsize::new(0),
            peer_test,
        }
    }

    /// A fresh endpoint nobody uses yet.
    pub fn endpoint(&self) -> Endpoint {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.transport {
            Transport::Unix => Endpoint::unix(self.dir().join(format!("s{n}.sock"))),
            Transport::Tcp => Endpoint::tcp(format!("127.0.0.1:{}", free_port())),
            Transport::Pipe => {
                // Pipe names are global: number them per process, not per case.
                static PIPES: AtomicUsize = AtomicUsize::new(0);
                let k = PIPES.fetch_add(1, Ordering::Relaxed);
                let _ = n;
                Endpoint::pipe(&format!("wharf-conformance-{}-{k}", std::process::id())).expect("a valid pipe name")
            }
        }
    }

    /// The private directory of Unix endpoints (Unix only).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.as_ref().expect("a Unix transport has a private directory").path()
    }

    /// A server builder on this env's backend.
    pub fn server(&self) -> ServerBuilder {
        ServerBuilder::new(self.backend.clone())
    }

    /// A client builder on this env's client backend.
    pub fn client(&self) -> ClientBuilder {
        ClientBuilder::new(self.client_backend.clone())
    }

    /// Binds the server `make` builds on a fresh endpoint. A TCP port picked
    /// free can be taken before the bind; then another one is tried.
    pub async fn bind(&self, make: impl Fn() -> ServerBuilder) -> (Server, Endpoint) {
        let mut last = None;
        for _ in 0..20 {
            let ep = self.endpoint();
            match make().bind(&ep).await {
                Ok(server) => return (server, ep),
                Err(Error::Transport(t))
                    if self.transport == Transport::Tcp && t.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    last = Some(t);
                }
                Err(e) => panic!("binding {ep} failed: {e:?}"),
            }
        }
        panic!("no free TCP port after 20 tries: {last:?}");
    }

    /// Connects a default client to `endpoint`.
    pub async fn connect(&self, endpoint: &Endpoint) -> Client {
        match self.client().connect(endpoint).await {
            Ok(c) => c,
            Err(e) => panic!("connecting to {endpoint} failed: {e:?}"),
        }
    }

    /// Sleeps on the adapter's runtime.
    pub async fn sleep(&self, duration: Duration) {
        runtime_sleep(self.backend.clone(), duration).await
    }

    /// `future`, or `None` if `limit` passes first.
    pub async fn timeout<T>(&self, limit: Duration, future: impl Future<Output = T>) -> Option<T> {
        let future = std::pin::pin!(future);
        match select(future, std::pin::pin!(self.sleep(limit))).await {
            Either::Left((v, _)) => Some(v),
            Either::Right(((), _)) => None,
        }
    }

    /// `future`, failing the test with `what` if it hangs past `limit` (a
    /// guard against hangs, not a performance assertion).
    pub async fn within<T>(&self, limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
        match self.timeout(limit, future).await {
            Some(v) => v,
            None => panic!("{what}: still waiting after {limit:?}"),
        }
    }

    /// Runs `future` on the runtime; the handle's `join` gives its output.
    pub fn spawn<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Task<T> {
        spawn_on(&self.backend, future)
    }

    /// Runs `future` on the clients' runtime (another one in a
    /// cross-runtime pair): for client work such as connecting, which a
    /// runtime's network may do only on its own runtime.
    pub fn spawn_client<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Task<T> {
        spawn_on(&self.client_backend, future)
    }

    /// Starts this test binary again as a peer process running `role` (see
    /// [`cases::peer_role`]) on `endpoint`. The process is killed when the
    /// handle drops.
    pub fn spawn_peer(&self, role: &str, endpoint: &Endpoint) -> Peer {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([self.peer_test.as_str(), "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(PEER_ROLE_VAR, role)
            .env(PEER_ENDPOINT_VAR, endpoint.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the peer process");
        let lines: Watch<Vec<String>> = Watch::new(Vec::new());
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.update(|v| v.push(line));
            }
            sink.update(|v| v.push(String::from("<eof>")));
        });
        Peer { child, lines, killed: false }
    }
}

/// Runs `future` on `backend`'s runtime; the handle's `join` gives its output.
fn spawn_on<T: Send + 'static>(backend: &Backend, future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    let cell = Watch::new(TaskState::Running);
    let mut guard = TaskGuard { cell: cell.clone(), done: false };
    backend.runtime.spawn(Box::pin(async move {
        let v = future.await;
        guard.finish(v);
    }));
    Task { cell }
}

/// A fresh 0700 directory under /tmp, short enough for any socket name.
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("wc").tempdir_in("/tmp").expect("temp dir under /tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    }
    dir
}

/// A port nobody listened on a moment ago (endpoint strings cannot say
/// "port 0"; [`Env::bind`] retries if it was taken since).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Sleeps through a wharf runtime's timer.
pub async fn runtime_sleep(backend: Backend, duration: Duration) {
    let mut timer = backend.runtime.timer(backend.runtime.now() + duration);
    std::future::poll_fn(|cx| timer.as_mut().poll_fire(cx)).await
}

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

/// Raises a flag when dropped: tells a case that a handler's future was
/// dropped (cancelled) rather than finished.
pub struct DropFlag(pub Watch<usize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.incr();
    }
}

enum TaskState<T> {
    Running,
    Done(T),
    Taken,
    /// Dropped before finishing: it panicked, or the runtime went away.
    Lost,
}

struct TaskGuard<T> {
    cell: Watch<TaskState<T>>,
    done: bool,
}

impl<T> TaskGuard<T> {
    fn finish(&mut self, value: T) {
        self.cell.set(TaskState::Done(value));
        self.done = true;
    }
}

impl<T> Drop for TaskGuard<T> {
    fn drop(&mut self) {
        if !self.done {
            self.cell.set(TaskState::Lost);
        }
    }
}

/// A spawned task's output.
pub struct Task<T> {
    cell: Watch<TaskState<T>>,
}

impl<T> Task<T> {
    /// Waits for the output. Panics if the task panicked.
    pub async fn join(self) -> T {
        let state =
            self.cell.wait_map(|s| !matches!(s, TaskState::Running), |s| std::mem::replace(s, TaskState::Taken)).await;
        match state {
            TaskState::Done(v) => v,
            _ => panic!("a spawned task panicked or was dropped"),
        }
    }

    /// Waits until it has finished, leaving the output for `join`.
    pub async fn finished(&self) {
        self.cell.wait(|s| !matches!(s, TaskState::Running)).await
    }

    /// Whether it has finished.
    pub fn is_finished(&self) -> bool {
        self.cell.with(|s| !matches!(s, TaskState::Running))
    }
}

/// A peer process: this test binary running one role of [`cases::peer_role`].
pub struct Peer {
    child: Child,
    lines: Watch<Vec<String>>,
    killed: bool,
}

impl Peer {
    /// Waits until the peer printed [`PEER_READY`] (true) or exited (false).
    pub async fn ready(&self) -> bool {
        self.lines.wait(|v| v.iter().any(|l| l.contains(PEER_READY) || l == "<eof>")).await;
        self.lines.with(|v| v.iter().any(|l| l.contains(PEER_READY)))
    }

    /// Waits for a line holding `marker` and returns it from the marker on
    /// (`None`: the peer's output ended without one).
    pub async fn line_with(&self, marker: &str) -> Option<String> {
        self.lines.wait(|v| v.iter().any(|l| l.contains(marker) || l == "<eof>")).await;
        self.lines.with(|v| v.iter().find_map(|l| l.find(marker).map(|at| l[at..].to_string())))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the peer printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.get()
    }

    /// Kills the process with SIGKILL (on Unix; `TerminateProcess` on
    /// Windows) and returns the moment it was sent.
    pub fn kill(&mut self) -> Instant {
        self.child.kill().expect("killing the peer process");
        let at = Instant::now();
        self.killed = true;
        let _ = self.child.wait();
        at
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Instantiates every case as a `#[test]` for one adapter and transport:
///
/// ```ignore
/// conformance!(tokio_unix, TokioAdapter, Unix);
/// ```
///
/// The transport is given by its [`Transport`] variant name; cases that only
/// make sense on one transport are listed in its arm below.
#[macro_export]
macro_rules! conformance {
    ($module:ident, $adapter:ty, $transport:ident) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_cases!(
                $adapter,
                $transport;
                // calls
                call_typed,
                call_unknown_method,
                call_raw,
                call_json_client_postcard_server,
                calls_1000_in_flight_from_16_tasks,
                error_reply_carries_code_message_data,
                handler_panic_is_internal_error,
                deadline_times_out_and_reaches_handler,
                deadline_and_time_left_seen_by_handler,
                dropped_call_cancels_handler,
                metadata_and_trace_id_reach_handler,
                notifications_reach_handler,
                server_calls_client,
                // pub/sub
                pubsub_exact_and_prefix_fan_out,
                raw_subscriptions_yield_the_published_bytes,
                slow_subscriber_told_of_lag_others_keep_up,
                unsubscribe_on_drop,
                client_side_disconnect_policy_ends_the_subscription,
                handler_publishes_through_the_broker,
                // streams
                server_stream,
                server_stream_error_after_items,
                client_stream,
                bidi_stream,
                dropped_stream_cancels_handler,
                client_stream_backpressure_slow_server,
                server_stream_backpressure_slow_client,
                // connections
                auth_reject_reaches_client,
                auth_accept_sees_payload_and_name,
                peer_credentials_seen_by_server,
                connect_and_disconnect_callbacks,
                graceful_shutdown_drains_and_hints,
                call_after_shutdown_began_is_shutting_down,
                client_close_is_graceful,
                client_abort_fails_calls_and_cancels_handlers,
                max_connections_rejects_extra_clients,
                pending_handshake_cap_never_evicts_established_clients,
                ping_both_ways,
                server_killed_mid_call_fails_every_call_within_a_second,
                client_killed_mid_call_cancels_handlers,
                // reconnecting client (S3)
                reconnecting_client_survives_server_restart,
                reconnecting_client_gives_up_after_max_attempts,
                // endpoint errors
                second_bind_refused_first_keeps_serving,
                connect_to_missing_endpoint,
            );
            $crate::conformance!(@transport $adapter, $transport);

            /// Not a test: the peer process of the kill cases, started by
            /// them (does nothing without its environment variables).
            #[test]
            #[ignore = "peer process of the kill cases; they start it"]
            fn peer() {
                $crate::conformance::peer_main::<$adapter>(
                    $crate::conformance::Transport::$transport,
                    module_path!(),
                );
            }
        }
    };
    (@transport $adapter:ty, Unix) => {
        $crate::conformance_cases!(
            $adapter,
            Unix;
            unix_path_too_long,
            unix_connect_to_stale_socket,
            unix_connect_to_a_full_backlog_times_out,
            max_connections_per_user_rejects_a_users_extra_clients,
            aborted_client_reported_to_on_disconnect,
            server_abort_ends_every_connection,
        );
    };
    (@transport $adapter:ty, Pipe) => {
        $crate::conformance_cases!(
            $adapter,
            Pipe;
            aborted_client_reported_to_on_disconnect,
            server_abort_ends_every_connection,
            pipe_peer_policy_judges_the_clients_sid_before_its_hello,
            pipe_client_verifies_the_servers_sid,
            pipe_busy_client_times_out_naming_the_pipe,
            pipe_busy_client_gets_in_when_an_instance_frees,
            pipe_server_restart_while_clients_wait,
        );
    };
    (@transport $adapter:ty, $other:ident) => {
        $crate::conformance_cases!(
            $adapter,
            $other;
            aborted_client_reported_to_on_disconnect,
            server_abort_ends_every_connection,
        );
    };
}

/// Instantiates every case for one adapter on every transport of this OS,
/// as modules `$module::unix` (Unix), `$module::tcp`, `$module::pipe`
/// (Windows):
///
/// ```ignore
/// conformance_everywhere!(smol, Smol);
/// ```
#[macro_export]
macro_rules! conformance_everywhere {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            #[cfg(unix)]
            $crate::conformance!(unix, $adapter, Unix);
            $crate::conformance!(tcp, $adapter, Tcp);
            #[cfg(windows)]
            $crate::conformance!(pipe, $adapter, Pipe);
        }
    };
}

/// One `#[test]` per case (used by [`conformance!`]).
#[macro_export]
macro_rules! conformance_cases {
    ($adapter:ty, $transport:ident; $($(#[$attr:meta])* $case:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $case() {
                $crate::conformance::run::<$adapter>(
                    $crate::conformance::Transport::$transport,
                    module_path!(),
                    stringify!($case),
                    |env| Box::pin($crate::conformance::cases::$case(env)),
                );
            }
        )*
    };
}

/// Whether this process runs under Wine (its ntdll exports `wine_get_version`).
#[cfg(windows)]
pub fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both strings are NUL-terminated literals; ntdll is always
    // loaded, and a null module handle is checked before use.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// Whether this process runs under Wine (never, off Windows).
#[cfg(not(windows))]
pub fn under_wine() -> bool {
    false
}
