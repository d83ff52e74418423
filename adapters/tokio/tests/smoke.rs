//! First end-to-end checks of the tokio adapter over a real Unix socket
//! (a named pipe on Windows).

use std::time::Duration;

use futures_util::StreamExt;
use wharf_async::{CallOptions, Code, Context, Error, Router, SubscriptionEvent};

#[cfg(windows)]
fn sock(name: &str) -> String {
    format!("pipe:wharf-tokio-smoke-{}-{name}", std::process::id())
}

#[cfg(not(windows))]
fn sock(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("wharf-tokio-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("unix:{}", dir.join(name).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_error_pubsub_stream() {
    let router = Router::new()
        .unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) })
        .unary("fail", |_: (), _: Context| async move { Err::<(), _>(Error::new(Code(1001), "nope")) })
        .server_stream("count", |n: u32, _: Context, mut tx: wharf_async::Sender<u32>| async move {
            for i in 0..n {
                tx.send(&i).await?;
            }
            Ok(())
        });
    let ep = sock("a.sock");
    let server = wharf_tokio::server().router(router).bind(ep.as_str()).await.unwrap();
    let client = wharf_tokio::connect(ep.as_str()).await.unwrap();

    let sum: i64 = client.call("add", &(2i64, 40i64)).await.unwrap();
    assert_eq!(sum, 42);

    match client.call::<_, ()>("fail", &()).await {
        Err(Error::Remote { code, message, .. }) => {
            assert_eq!(code, Code(1001));
            assert_eq!(message, "nope");
        }
        other => panic!("{other:?}"),
    }

    let mut sub = client.subscribe_prefix::<String>("news/").await.unwrap();
    let report = server.publish("news/a", &"hello".to_string()).unwrap();
    assert_eq!(report.queued, 1);
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap() {
        Some(Ok(SubscriptionEvent::Message { topic, value })) => {
            assert_eq!(topic, "news/a");
            assert_eq!(value, "hello");
        }
        other => panic!("{other:?}"),
    }

    let mut rx = client.server_stream::<_, u32>("count", &1000u32, CallOptions::new()).await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = rx.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());

    let rtt = client.ping().await.unwrap();
    assert!(rtt < Duration::from_secs(5));

    server.shutdown("bye", Some(Duration::from_millis(100))).await;
    let err = client.closed().await;
    assert_eq!(err.reconnect_after(), Some(Duration::from_millis(100)), "{err}");
}
