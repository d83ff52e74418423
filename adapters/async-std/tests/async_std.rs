//! The async-std adapter end to end, over TCP and a Unix socket (a named
//! pipe on Windows, run under Wine in CI).

use std::time::Duration;

use wharf_async::{Context, Endpoint, Error, Router, SubscriptionEvent};

#[test]
fn calls_and_pubsub() {
    let dir = tempfile::Builder::new().prefix("wa").tempdir_in(std::env::temp_dir()).unwrap();
    let local = if cfg!(windows) {
        Endpoint::pipe(&format!("wharf-async-std-test-{}", std::process::id())).unwrap()
    } else {
        Endpoint::unix(dir.path().join("s.sock"))
    };
    let tcp = Endpoint::tcp(format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    ));
    async_std::task::block_on(async {
        for ep in [local, tcp] {
            let router =
                Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) });
            let server = wharf_async_std::server().router(router).bind(&ep).await.unwrap();
            let client = wharf_async_std::connect(&ep).await.unwrap();
            assert_eq!(client.call::<_, i64>("add", &(2, 40)).await.unwrap(), 42, "{ep}");
            let mut sub = client.subscribe::<u32>("t").await.unwrap();
            assert_eq!(server.publish("t", &7u32).unwrap().queued, 1);
            match async_std::future::timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
                Some(Ok(SubscriptionEvent::Message { value, .. })) => assert_eq!(value, 7),
                other => panic!("{ep}: {other:?}"),
            }
            server.shutdown("bye", None).await;
            client.closed().await;
        }
    });
}
