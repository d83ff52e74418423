//! The smol adapter end to end: the global executor, an executor of the
//! application's own (and what dropping it does), plain byte streams, and
//! the async-io timer. Over a Unix socket, or a named pipe on Windows (run
//! under Wine in CI), and TCP.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use smol::io::{AsyncReadExt, AsyncWriteExt};
use wharf_async::{
    BindOptions, CallOptions, ClientBuilder, Context, Endpoint, Error, Router, Runtime, Sender, ServerBuilder, Timer,
};
use wharf_smol::net::{Listener, Stream};
use wharf_smol::{AsyncIoTimer, SmolRuntime};

/// A fresh local endpoint: a Unix socket in a temporary directory, or a
/// named pipe on Windows. The directory lives as long as the returned guard.
fn local_endpoint(name: &str) -> (Endpoint, Option<tempfile::TempDir>) {
    if cfg!(windows) {
        let ep = Endpoint::pipe(&format!("wharf-smol-test-{}-{name}", std::process::id())).unwrap();
        (ep, None)
    } else {
        let dir = tempfile::Builder::new().prefix("ws").tempdir_in("/tmp").unwrap();
        (Endpoint::unix(dir.path().join(format!("{name}.sock"))), Some(dir))
    }
}

fn router() -> Router {
    Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) }).server_stream(
        "count",
        |n: u32, _: Context, mut tx: Sender<u32>| async move {
            for i in 0..n {
                tx.send(&i).await?;
            }
            Ok(())
        },
    )
}

#[test]
fn global_executor_end_to_end() {
    let (ep, _dir) = local_endpoint("global");
    smol::block_on(async {
        let server = wharf_smol::server().router(router()).bind(&ep).await.unwrap();
        let client = wharf_smol::connect(&ep).await.unwrap();
        assert_eq!(client.call::<_, i64>("add", &(2, 40)).await.unwrap(), 42);
        let mut rx = client.server_stream::<_, u32>("count", &3u32, CallOptions::new()).await.unwrap();
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item.unwrap());
        }
        assert_eq!(got, [0, 1, 2]);
        server.shutdown("bye", Some(Duration::from_millis(5))).await;
        assert_eq!(client.closed().await.reconnect_after(), Some(Duration::from_millis(5)));
    });
}

#[test]
fn own_executor_and_dropping_it() {
    let (ep, _dir) = local_endpoint("own");
    let executor = Arc::new(smol::Executor::new());
    let backend = wharf_smol::backend_on(&executor);
    let client = smol::block_on(executor.run(async {
        let server = ServerBuilder::new(backend.clone()).router(router()).bind(&ep).await.unwrap();
        let client = ClientBuilder::new(backend.clone()).connect(&ep).await.unwrap();
        assert_eq!(client.call::<_, i64>("add", &(1, 1)).await.unwrap(), 2);
        drop(server); // the handle only: the server keeps running on the executor
        client
    }));
    // Dropping the executor drops wharf's tasks: the server's listener
    // closes with them.
    drop(executor);
    drop(backend);
    smol::block_on(async {
        let other = wharf_smol::client().connect_timeout(Duration::from_secs(2)).connect(&ep).await;
        assert!(other.is_err(), "the server outlived its executor");
        // The client's own driver went with the executor: its session is
        // closed, and a call fails at once instead of waiting forever.
        assert!(client.is_closed(), "the session outlived its driver");
        let r = client.call::<_, i64>("add", &(1, 1)).await;
        assert!(matches!(r, Err(wharf_async::Error::ConnectionLost(_))), "{r:?}");
    });
    drop(client);
}

#[test]
fn spawning_on_a_dropped_executor_is_a_no_op() {
    let executor = Arc::new(smol::Executor::new());
    let runtime = SmolRuntime::with_executor(&executor);
    drop(executor);
    runtime.spawn(Box::pin(async { panic!("never polled") }));
}

#[test]
fn plain_byte_streams_over_tcp_and_local() {
    let (local, _dir) = local_endpoint("raw");
    smol::block_on(async {
        for ep in [local, Endpoint::tcp("127.0.0.1:0")] {
            let mut listener = Listener::bind(&ep, &BindOptions::default()).unwrap();
            let target = match listener.local_addr() {
                Some(addr) => Endpoint::tcp(addr.to_string()),
                None => ep.clone(),
            };
            let server = smol::spawn(async move {
                let (mut s, peer) = listener.accept().await.unwrap();
                let mut buf = [0; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                peer
            });
            let (mut s, peer) = Stream::connect(&target, Duration::from_secs(5)).await.unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut buf = [0; 5];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            let server_saw = server.await;
            match &target {
                Endpoint::Tcp(_) => {
                    assert!(peer.addr.is_some() && server_saw.addr.is_some(), "{peer:?} {server_saw:?}")
                }
                #[cfg(unix)]
                _ => assert_eq!(server_saw.uid, Some(rustix_uid()), "{server_saw:?}"),
                #[cfg(windows)]
                _ => assert_eq!(server_saw.pid, Some(std::process::id()), "{server_saw:?}"),
            }
        }
    });
}

#[cfg(unix)]
fn rustix_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

#[test]
fn connect_errors_are_typed() {
    smol::block_on(async {
        let missing = Endpoint::tcp(format!("127.0.0.1:{}", free_port()));
        let e = Stream::connect(&missing, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains(&missing.to_string()), "{e}");
        #[cfg(not(windows))]
        {
            let pipe = Endpoint::Pipe(r"\\.\pipe\nope".into());
            let e = Stream::connect(&pipe, Duration::from_secs(1)).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn poll_fire(timer: &mut Pin<Box<dyn Timer>>) -> Poll<()> {
    timer.as_mut().poll_fire(&mut TaskContext::from_waker(std::task::Waker::noop()))
}

#[test]
fn timer_fires_stays_ready_and_resets() {
    let runtime = SmolRuntime::global();
    let mut timer = runtime.timer(Instant::now() + Duration::from_millis(20));
    assert!(poll_fire(&mut timer).is_pending());
    smol::block_on(async {
        std::future::poll_fn(|cx| timer.as_mut().poll_fire(cx)).await;
    });
    assert!(poll_fire(&mut timer).is_ready(), "a fired timer stays ready");
    timer.as_mut().reset(Instant::now() + Duration::from_secs(60));
    assert!(poll_fire(&mut timer).is_pending(), "reset to the future");
    timer.as_mut().reset(Instant::now());
    assert!(poll_fire(&mut timer).is_ready(), "reset to now");
    let _ = AsyncIoTimer::at(Instant::now());
}
