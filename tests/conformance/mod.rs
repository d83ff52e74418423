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
pub mod process;
#[cfg(unix)]
pub mod raw;
pub mod reconnect;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::{Either, select};
use wharf::{Backend, Client, ClientBuilder, Endpoint, Error, Server, ServerBuilder};

pub use process::{PEER_READY, Peer, under_wine};
pub use watch::Watch;

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
    let Some((role, endpoint)) = process::role() else { return };
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
        process::spawn(&self.peer_test, role, endpoint)
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
