//! Security defaults of a wharf-tokio server (reliability-security §4):
//! the peer policy (X5, X6: peers are judged on the kernel's credentials at
//! accept, before any frame, and the auth payload never changes who the
//! server thinks the peer is), TCP exposure (X15) and what reaches the
//! logs (X16).
#![cfg(unix)]
//!
//! `another_uid_*` runs a client as another user (uid 65534, through
//! `setpriv`): it needs root (or CAP_SETUID) and `setpriv`, and prints
//! `SKIPPED` with the reason where the machine does not allow it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wharf_async::{AuthReject, BindOptions, Context, Error, PeerPolicy, Server, UnixBindOptions};

/// The uid (and gid) the foreign client runs as.
const OTHER_UID: u32 = 65534;
/// Set in the child process: the endpoint its client role connects to.
const CLIENT_ENDPOINT_VAR: &str = "WHARF_PEER_POLICY_CLIENT_ENDPOINT";
/// The auth payload the foreign client sends: it claims to be root.
const CLAIM: &[u8] = b"uid=0;gid=0;user=root";

fn own_uid() -> u32 {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    wharf_transport::peer_credentials(&a).unwrap().uid.unwrap()
}

/// A private directory for one test's sockets. With `open`, mode 0755 (so
/// that another user can reach a socket in it; still not writable by them).
fn test_dir(name: &str, open: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wharf-peer-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(if open { 0o755 } else { 0o700 })).unwrap();
    dir
}

/// What the server saw: auth hook calls and the kernel uid each one carried.
#[derive(Default)]
struct Seen {
    auth_calls: AtomicUsize,
    last_auth_uid: std::sync::Mutex<Option<u32>>,
    last_auth_payload: std::sync::Mutex<Vec<u8>>,
}

async fn server(endpoint: &str, policy: PeerPolicy, mode: u32, seen: Arc<Seen>) -> Server {
    let router =
        wharf_async::Router::new().unary("whoami", |(): (), cx: Context| async move { Ok::<_, Error>(cx.peer().uid) });
    let bind = BindOptions { unix: UnixBindOptions { mode, ..Default::default() }, ..Default::default() };
    wharf_tokio::server()
        .router(router)
        .bind_options(bind)
        .peer_policy(policy)
        .auth(move |req| {
            let seen = seen.clone();
            async move {
                seen.auth_calls.fetch_add(1, Ordering::SeqCst);
                *seen.last_auth_uid.lock().unwrap() = req.peer.uid;
                *seen.last_auth_payload.lock().unwrap() = req.auth.to_vec();
                Ok::<(), AuthReject>(())
            }
        })
        .bind(endpoint)
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_peer_is_closed_before_its_handshake() {
    let dir = test_dir("inproc", false);
    let ep = format!("unix:{}", dir.join("s.sock").display());
    let seen = Arc::new(Seen::default());
    // A policy that admits neither us nor root: we are a foreign peer here.
    let policy = PeerPolicy::allow_list().allow_uid(own_uid().wrapping_add(1));
    let server = server(&ep, policy, 0o600, seen.clone()).await;
    let r = wharf_tokio::client().connect_timeout(Duration::from_secs(5)).connect(ep.as_str()).await;
    assert!(r.is_err(), "a refused peer connected: {:?}", r.map(|_| ()));
    wait_for("the refusal to be counted", || server.refused_peers() == 1).await;
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 0, "the refused peer's HELLO reached the auth hook");
    assert_eq!(server.connection_count(), 0);
    server.abort().await;

    // The default policy admits the server's own user.
    let ep2 = format!("unix:{}", dir.join("t.sock").display());
    let server = self::server(&ep2, PeerPolicy::default(), 0o600, seen.clone()).await;
    let client = wharf_tokio::connect(ep2.as_str()).await.unwrap();
    let uid: Option<u32> = client.call("whoami", &()).await.unwrap();
    assert_eq!(uid, Some(own_uid()));
    assert_eq!(server.refused_peers(), 0);
    drop(client);
    server.abort().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client role of `another_uid_*`: a no-op unless the parent set the
/// endpoint variable. Prints one `RESULT:` line the parent reads.
#[test]
fn peer_policy_client_role() {
    let Ok(endpoint) = std::env::var(CLIENT_ENDPOINT_VAR) else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let connected =
            wharf_tokio::client().auth(CLAIM).connect_timeout(Duration::from_secs(5)).connect(endpoint.as_str()).await;
        match connected {
            Err(e) => println!("RESULT: refused ({e})"),
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(5), client.call::<_, Option<u32>>("whoami", &())).await {
                    Ok(Ok(uid)) => println!("RESULT: accepted uid={uid:?}"),
                    Ok(Err(e)) => println!("RESULT: refused ({e})"),
                    Err(_) => println!("RESULT: refused (no answer in 5 s)"),
                }
            }
        }
    });
}

/// Why the foreign-uid test cannot run here, if it cannot.
fn cannot_switch_uid() -> Option<String> {
    if own_uid() != 0 {
        return Some(format!("running as uid {}, not root: cannot start a process as uid {OTHER_UID}", own_uid()));
    }
    let probe = Command::new("setpriv")
        .args([format!("--reuid={OTHER_UID}"), format!("--regid={OTHER_UID}"), "--clear-groups".into(), "true".into()])
        .status();
    match probe {
        Err(e) => Some(format!("setpriv is not available: {e}")),
        Ok(s) if !s.success() => Some(format!("setpriv cannot switch to uid {OTHER_UID}: {s}")),
        Ok(_) => None,
    }
}

/// Runs this test binary's client role as uid 65534 against `endpoint`;
/// returns its `RESULT:` line.
fn run_foreign_client(exe: &Path, endpoint: &str) -> String {
    let out = Command::new("setpriv")
        .args([format!("--reuid={OTHER_UID}"), format!("--regid={OTHER_UID}"), "--clear-groups".into()])
        .arg(exe)
        .args(["--exact", "peer_policy_client_role", "--nocapture", "--test-threads=1"])
        .env(CLIENT_ENDPOINT_VAR, endpoint)
        .output()
        .expect("start the foreign client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints its own text on the same line.
    let line = stdout.lines().find_map(|l| l.find("RESULT: ").map(|at| l[at..].to_string()));
    line.unwrap_or_else(|| {
        panic!(
            "the foreign client printed no result ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_refused_by_default_and_admitted_by_an_allow_list() {
    if let Some(why) = cannot_switch_uid() {
        println!("SKIPPED another_uid_is_refused_by_default_and_admitted_by_an_allow_list: {why}");
        return;
    }
    let dir = test_dir("other-uid", true);
    // A copy of this binary the other user can execute (the build
    // directory may sit under a home directory it cannot enter).
    let exe = dir.join("client");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let seen = Arc::new(Seen::default());

    // 1. The socket file is opened up to everyone (0666), the policy is
    //    the default: the kernel lets the foreign client connect, the
    //    policy closes it before its HELLO is read.
    let ep = format!("unix:{}", dir.join("default.sock").display());
    let server = server(&ep, PeerPolicy::default(), 0o666, seen.clone()).await;
    let ep_c = ep.clone();
    let exe_c = exe.clone();
    let result = tokio::task::spawn_blocking(move || run_foreign_client(&exe_c, &ep_c)).await.unwrap();
    assert!(result.starts_with("RESULT: refused"), "default policy: {result}");
    assert_eq!(server.refused_peers(), 1, "default policy: the refusal was not counted");
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 0, "a refused peer's HELLO reached the auth hook");
    server.abort().await;

    // 2. The same with an allow-list naming the uid: admitted, and the
    //    auth hook and the handler see the kernel's uid, not the root the
    //    payload claims (X6).
    let ep = format!("unix:{}", dir.join("allowed.sock").display());
    let server = self::server(&ep, PeerPolicy::default().allow_uid(OTHER_UID), 0o666, seen.clone()).await;
    let ep_c = ep.clone();
    let exe_c = exe.clone();
    let result = tokio::task::spawn_blocking(move || run_foreign_client(&exe_c, &ep_c)).await.unwrap();
    assert_eq!(result, format!("RESULT: accepted uid=Some({OTHER_UID})"), "allow-list");
    assert_eq!(server.refused_peers(), 0);
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.last_auth_uid.lock().unwrap(), Some(OTHER_UID), "the hook saw a uid other than the kernel's");
    assert_eq!(&seen.last_auth_payload.lock().unwrap()[..], CLAIM);
    server.abort().await;

    // 3. The two layers are independent: the policy lets everyone in but
    //    the socket keeps its default mode 0600: the kernel refuses the
    //    connect itself, and the server never sees the peer.
    let ep = format!("unix:{}", dir.join("private.sock").display());
    let server = self::server(&ep, PeerPolicy::any(), 0o600, seen.clone()).await;
    let ep_c = ep.clone();
    let exe_c = exe.clone();
    let result = tokio::task::spawn_blocking(move || run_foreign_client(&exe_c, &ep_c)).await.unwrap();
    assert!(result.starts_with("RESULT: refused") && result.contains("ermission"), "mode 0600: {result}");
    assert_eq!(server.refused_peers(), 0, "mode 0600: the peer should not have reached accept");
    assert_eq!(seen.auth_calls.load(Ordering::SeqCst), 1);
    server.abort().await;

    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_non_loopback_tcp_listener_needs_the_opt_in_and_an_auth_hook() {
    // Loopback by default: the wildcard address is refused.
    let r = wharf_tokio::server().bind("tcp:0.0.0.0:0").await;
    assert!(
        matches!(&r, Err(Error::Transport(t)) if matches!(**t, wharf_transport::TransportError::NonLoopback { .. })),
        "{:?}",
        r.map(|_| ())
    );
    // Opted in, but without an auth hook: still refused, before binding.
    let remote = BindOptions { tcp: wharf_async::TcpOptions { allow_remote: true }, ..Default::default() };
    let r = wharf_tokio::server().bind_options(remote.clone()).bind("tcp:0.0.0.0:0").await;
    assert!(
        matches!(&r, Err(Error::Transport(t)) if matches!(**t, wharf_transport::TransportError::RemoteWithoutAuth { .. })),
        "{:?}",
        r.map(|_| ())
    );
    // Opted in with an auth hook checking a token: it starts, and the
    // token decides.
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let server =
        wharf_tokio::server()
            .bind_options(remote)
            .auth(|req| async move {
                if &req.auth[..] == b"the-token" { Ok(()) } else { Err(AuthReject::new("wrong token")) }
            })
            .bind(format!("tcp:0.0.0.0:{port}"))
            .await
            .unwrap();
    let ep = format!("tcp:127.0.0.1:{port}");
    assert!(wharf_tokio::client().auth(&b"guess"[..]).connect(ep.as_str()).await.is_err());
    let ok = wharf_tokio::client().auth(&b"the-token"[..]).connect(ep.as_str()).await;
    assert!(ok.is_ok(), "{:?}", ok.map(|_| ()));
    drop(ok);
    server.abort().await;
    // Loopback needs neither.
    let server = wharf_tokio::server().bind("tcp:127.0.0.1:0").await.unwrap();
    server.abort().await;
}

/// Every field of every event and span, as text.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut self.0.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        out.push('\n');
        out.push_str(event.metadata().level().as_str());
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn secrets_and_payloads_never_reach_the_logs_even_at_trace_level() {
    const SECRET: &str = "hunter2-SECRET-token";
    const PAYLOAD: &str = "private-PAYLOAD-text";
    let capture = Capture::default();
    // This test's runtime is single-threaded: every task runs here.
    let _guard = tracing::subscriber::set_default(capture.clone());

    let dir = test_dir("logs", false);
    let ep = format!("unix:{}", dir.join("s.sock").display());
    let router = wharf_async::Router::new()
        .unary("echo", |s: String, _: Context| async move { Ok::<_, Error>(s) })
        .notification("note", |_: u32, _: Context| async move {});
    let server = wharf_tokio::server()
        .router(router)
        .codec(wharf_async::Codec::Json)
        .auth(|req| async move {
            if req.auth.starts_with(b"hunter2") && &req.auth[..] != SECRET.as_bytes() {
                Err(AuthReject::new("wrong token"))
            } else {
                Ok(())
            }
        })
        .bind(ep.as_str())
        .await
        .unwrap();
    // A rejected handshake carrying a near-miss of the secret.
    let wrong = format!("{SECRET}-wrong");
    assert!(wharf_tokio::client().auth(wrong.into_bytes()).connect(ep.as_str()).await.is_err());
    // An accepted one: a call, a notification the handler cannot decode
    // (JSON quotes it in its error), a method nobody serves.
    let client = wharf_tokio::client().codec(wharf_async::Codec::Json).auth(SECRET).connect(ep.as_str()).await.unwrap();
    let back: String = client.call("echo", &PAYLOAD.to_string()).await.unwrap();
    assert_eq!(back, PAYLOAD);
    client.notify("note", &PAYLOAD.to_string()).await.unwrap();
    assert!(client.call::<_, String>("missing", &PAYLOAD.to_string()).await.is_err());
    let _ = client.call::<_, String>("echo", &PAYLOAD.to_string()).await;
    drop(client);
    server.shutdown("bye", None).await;
    let _ = std::fs::remove_dir_all(&dir);

    let logs = capture.0.lock().unwrap().clone();
    if std::env::var_os("WHARF_SHOW_LOGS").is_some() {
        println!("{logs}");
    }
    assert!(logs.contains("wharf"), "nothing was captured: the test would prove nothing\n{logs}");
    for secret in [SECRET, "hunter2", PAYLOAD, "PAYLOAD", "104, 117, 110, 116"] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs:\n{logs}");
    }
}
