//! Security defaults of the mio Server (reliability-security §4): the peer
//! policy (X5: a peer the policy refuses is closed at accept, before its
//! HELLO is read; the default admits the server's own user) and TCP
//! exposure (X15). (The foreign-uid version of this
//! test, with a client really running as another user, is the tokio
//! adapter's `tests/security.rs`: both servers call the same
//! `PeerPolicy::check` at accept.)
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use wharf_mio::{Client, Endpoint, PeerPolicy, Server, ServerOptions};

#[derive(Default)]
struct Seen {
    stop: AtomicBool,
    auth_calls: AtomicUsize,
    refused: AtomicU64,
    connections: AtomicUsize,
}

fn own_uid() -> u32 {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    wharf_transport::peer_credentials(&a).unwrap().uid.unwrap()
}

/// Runs a mio Server with `policy` on a thread until `seen.stop`.
fn run_server(endpoint: Endpoint, policy: PeerPolicy, seen: Arc<Seen>) -> (Endpoint, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let options = ServerOptions { peer_policy: policy, ..ServerOptions::default() };
        let mut server = Server::bind(&endpoint, options).unwrap();
        let s2 = seen.clone();
        server.set_auth(move |_req| {
            s2.auth_calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        server.register(poll.registry(), Token(0), 1..100).unwrap();
        tx.send(server.endpoint().clone()).unwrap();
        let mut events = Events::with_capacity(64);
        while !seen.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let timeout = server.timeout(now).map_or(Duration::from_millis(10), |t| t.min(Duration::from_millis(10)));
            poll.poll(&mut events, Some(timeout)).unwrap();
            let now = Instant::now();
            for e in events.iter() {
                server.handle(e, now);
            }
            server.handle_timeout(now);
            while server.poll_event(now).is_some() {}
            seen.refused.store(server.refused_peers(), Ordering::SeqCst);
            seen.connections.store(server.connection_count(), Ordering::SeqCst);
        }
    });
    (rx.recv().unwrap(), thread)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_refused_peer_is_closed_before_its_handshake_and_the_default_admits_our_user() {
    let dir = tempfile::Builder::new().prefix("wm").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // Neither us nor root: here we are the foreign peer.
    let seen = Arc::new(Seen::default());
    let policy = PeerPolicy::allow_list().allow_uid(own_uid().wrapping_add(1));
    let (ep, thread) = run_server(Endpoint::unix(dir.path().join("refuse.sock")), policy, seen.clone());
    let r = Client::builder().connect_timeout(Duration::from_secs(5)).connect(&ep);
    assert!(r.is_err(), "a refused peer connected");
    wait_for("the refusal to be counted", || seen.refused.load(Ordering::SeqCst) == 1);
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 0, "the refused peer's HELLO reached the auth hook");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0, "the refused peer holds a connection");
    seen.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();

    let seen = Arc::new(Seen::default());
    let (ep, thread) = run_server(Endpoint::unix(dir.path().join("ok.sock")), PeerPolicy::default(), seen.clone());
    let client = Client::connect(&ep).expect("the default policy admits the server's own user");
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 1);
    assert_eq!(seen.refused.load(Ordering::SeqCst), 0);
    drop(client);
    seen.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
}

#[test]
fn a_non_loopback_tcp_server_needs_the_opt_in_and_an_auth_hook_before_it_accepts() {
    use wharf_mio::BindOptions;
    use wharf_transport::{TcpOptions, TransportError};

    let wildcard = Endpoint::tcp("0.0.0.0:0");
    match Server::bind(&wildcard, ServerOptions::default()) {
        Err(wharf_mio::Error::Transport(TransportError::NonLoopback { .. })) => {}
        other => panic!("{other:?}"),
    }
    let remote = || ServerOptions {
        bind: BindOptions { tcp: TcpOptions { allow_remote: true }, ..Default::default() },
        ..ServerOptions::default()
    };
    let poll = Poll::new().unwrap();
    // Opted in but no auth hook: it never starts accepting.
    let mut server = Server::bind(&wildcard, remote()).unwrap();
    let e = server.register(poll.registry(), Token(0), 1..10).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("without authentication"), "{e}");
    // With one, it does.
    let mut server = Server::bind(&wildcard, remote()).unwrap();
    server.set_auth(|req| if req.auth == b"the-token" { Ok(()) } else { Err(wharf_mio::AuthReject::new("no")) });
    server.register(poll.registry(), Token(0), 1..10).unwrap();
}
